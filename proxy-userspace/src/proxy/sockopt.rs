//! Socket options meshd reads from its accepted sockets: the original destination (answered by
//! the cgroup/getsockopt program) and the socket cookie that keys the kernel counters.

use std::{
    io,
    mem::{MaybeUninit, size_of},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
};

use proxy_common::{SO_ORIGINAL_DST, SOL_IP, SOL_IPV6};

fn getsockopt<T>(fd: &impl AsRawFd, level: i32, name: i32) -> io::Result<T> {
    let mut val = MaybeUninit::<T>::zeroed();
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: val has room for len bytes; the kernel writes at most len bytes.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            val.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zero-initialised plain-old-data, possibly partly overwritten by the kernel.
    Ok(unsafe { val.assume_init() })
}

/// The destination a redirected connection was originally headed for.
pub fn original_dst(sock: &impl AsRawFd, ipv6: bool) -> io::Result<SocketAddr> {
    if ipv6 {
        let sa: libc::sockaddr_in6 = getsockopt(sock, SOL_IPV6, SO_ORIGINAL_DST)?;
        let ip = Ipv6Addr::from(sa.sin6_addr.s6_addr);
        let port = u16::from_be(sa.sin6_port);
        Ok(match ip.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), port),
            None => SocketAddr::new(ip.into(), port),
        })
    } else {
        let sa: libc::sockaddr_in = getsockopt(sock, SOL_IP, SO_ORIGINAL_DST)?;
        let ip = Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr));
        Ok(SocketAddr::new(ip.into(), u16::from_be(sa.sin_port)))
    }
}

/// The kernel's socket cookie (SO_COOKIE), the key of the per-connection counters.
pub fn cookie(sock: &impl AsRawFd) -> io::Result<u64> {
    getsockopt::<u64>(sock, libc::SOL_SOCKET, libc::SO_COOKIE)
}

/// Makes close() send RST instead of FIN: how an L4 proxy reports a refused upstream.
pub fn set_reset_on_close(sock: &impl AsRawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: passes a valid linger struct of the stated size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}
