//! Socket options meshd reads from its accepted sockets: the original destination (answered by
//! the cgroup/getsockopt program) and the socket cookie that keys the kernel counters; and a
//! look at the bytes waiting in one, without waiting.

use std::{
    io,
    mem::{MaybeUninit, size_of},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
};

use proxy_common::{SO_ORIGINAL_DST, SOL_IP, SOL_IPV6};

/// Copies the bytes waiting in `fd`'s receive queue into `buf`, without taking them and
/// without waiting (nor asking the runtime, whose readiness may not know of them yet).
pub fn peek_waiting(fd: &impl AsRawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf has room for buf.len() bytes; the kernel writes at most that many.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

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

/// The payload bytes a TCP socket has carried, from the kernel's TCP_INFO: what meshd read of
/// what it received in order from its peer (what still waits unread in the socket is not
/// counted: meshd has not carried it), and what it sent that the peer acknowledged. Unlike the
/// packet counters, they do not move for headers, keepalive probes or retransmissions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Payload {
    pub received: u64,
    pub acked: u64,
}

// TCP states (`tcpi_state`, the kernel's `enum tcp_state`).
const FIN_WAIT2: u8 = 5;
const TIME_WAIT: u8 = 6;
const CLOSE: u8 = 7;
const CLOSE_WAIT: u8 = 8;
const LAST_ACK: u8 = 9;
const CLOSING: u8 = 11;

/// Whether the peer of a TCP socket has ended its side (its FIN arrived, or a reset): it sends
/// nothing more, whatever waits unread.
pub fn peer_ended(sock: &impl AsRawFd) -> bool {
    let info: io::Result<libc::tcp_info> = getsockopt(sock, libc::SOL_TCP, libc::TCP_INFO);
    info.is_ok_and(|i| {
        matches!(
            i.tcpi_state,
            TIME_WAIT | CLOSE | CLOSE_WAIT | LAST_ACK | CLOSING
        )
    })
}

/// The payload counters of a TCP socket (`connected`: meshd opened it, rather than accepted
/// it); `None` when it has none (not TCP, or closed). The kernel's counters also hold one for
/// the SYN the connecting side sent and one for each FIN; these are taken off. Where a state
/// leaves open whether a FIN was counted (closed by a reset or by both FINs), it is taken off,
/// so the count is never above the payload.
pub fn payload(sock: &impl AsRawFd, connected: bool) -> Option<Payload> {
    let info: libc::tcp_info = getsockopt(sock, libc::SOL_TCP, libc::TCP_INFO).ok()?;
    let state = info.tcpi_state;
    let fin_received = matches!(state, TIME_WAIT | CLOSE | CLOSE_WAIT | LAST_ACK | CLOSING);
    let fin_acked = matches!(state, FIN_WAIT2 | TIME_WAIT | CLOSE);
    let sequence_only = u64::from(connected) + u64::from(fin_acked);
    let mut unread: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int, the bytes waiting unread in the receive queue.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::FIONREAD, &mut unread) } != 0 {
        unread = 0;
    }
    let received = info.tcpi_bytes_received.saturating_sub(fin_received.into());
    Some(Payload {
        received: received.saturating_sub(u64::try_from(unread).unwrap_or(0)),
        acked: info.tcpi_bytes_acked.saturating_sub(sequence_only),
    })
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::{Shutdown, TcpListener, TcpStream},
        thread::sleep,
        time::Duration,
    };

    use super::*;

    fn settle() {
        sleep(Duration::from_millis(50));
    }

    #[test]
    fn payload_counts_bytes_not_the_syn_or_fins() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut a, _) = l.accept().unwrap();
        let both = |c: &TcpStream, a: &TcpStream| (payload(c, true), payload(a, false));
        let p = |received, acked| Some(Payload { received, acked });
        settle();
        assert_eq!(both(&c, &a), (p(0, 0), p(0, 0)), "only the handshake");
        c.write_all(&[1; 1000]).unwrap();
        a.read_exact(&mut [0; 1000]).unwrap();
        a.write_all(&[2; 500]).unwrap();
        c.read_exact(&mut [0; 500]).unwrap();
        settle();
        assert_eq!(both(&c, &a), (p(500, 1000), p(1000, 500)));
        // Received but not read yet: not counted until read.
        c.write_all(&[3; 300]).unwrap();
        settle();
        assert_eq!(payload(&a, false), p(1000, 500), "300 bytes wait unread");
        a.read_exact(&mut [0; 300]).unwrap();
        assert_eq!(payload(&a, false), p(1300, 500));
        // Half-closed, then closed both ways: the FINs are not payload.
        c.shutdown(Shutdown::Write).unwrap();
        settle();
        assert_eq!(both(&c, &a), (p(500, 1300), p(1300, 500)), "one FIN");
        a.shutdown(Shutdown::Write).unwrap();
        settle();
        assert_eq!(both(&c, &a), (p(500, 1300), p(1300, 500)), "both FINs");
    }
}
