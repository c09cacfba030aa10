//! Binding listening sockets inside another network namespace: a short-lived thread enters the
//! namespace, creates and binds the sockets, and exits; the sockets stay in that namespace and
//! are served from the host process like any other.

use std::{
    fs::File,
    io,
    net::{SocketAddr, TcpListener},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use socket2::{Domain, Socket, Type};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("opening network namespace {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error(
        "entering network namespace {path} (is it a netns file such as /run/netns/NAME or /proc/PID/ns/net?): {source}"
    )]
    Enter { path: PathBuf, source: io::Error },
    #[error("opening meshd's own network namespace: {0}")]
    Own(io::Error),
    #[error(
        "giving meshd's network namespace an id inside {path} (rtnetlink RTM_NEWNSID): {source}"
    )]
    Nsid { path: PathBuf, source: io::Error },
    #[error("binding {addr} in network namespace {path}: {source}")]
    Bind {
        addr: SocketAddr,
        path: PathBuf,
        source: io::Error,
    },
}

/// Runs `f` on a thread of its own inside the network namespace at `path`.
fn inside<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce(PathBuf) -> Result<T, NetnsError> + Send + 'static,
) -> Result<T, NetnsError> {
    let ns = File::open(path).map_err(|source| NetnsError::Open {
        path: path.into(),
        source,
    })?;
    let path = path.to_path_buf();
    // setns changes only the calling thread's namespace: a thread of its own keeps the
    // runtime's threads in the host's.
    std::thread::spawn(move || {
        // SAFETY: setns on a valid descriptor; it affects only this thread, which exits below.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(NetnsError::Enter {
                path,
                source: io::Error::last_os_error(),
            });
        }
        f(path)
    })
    .join()
    .expect("netns thread does not panic")
}

/// The id the network namespace at `path` gives meshd's own (assigned when it has none), with
/// which eBPF programs look meshd's sockets up from there.
pub fn meshd_id_in(path: &Path) -> Result<i32, NetnsError> {
    let own = File::open("/proc/thread-self/ns/net").map_err(NetnsError::Own)?;
    inside(path, move |path| {
        super::nsid::of(&own).map_err(|source| NetnsError::Nsid { path, source })
    })
}

/// Binds a listener on each address inside the network namespace at `path`. An address family
/// the namespace lacks (no IPv6 loopback) is skipped; every other failure is an error.
pub fn listen_in(path: &Path, addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, NetnsError> {
    let addrs = addrs.to_vec();
    inside(path, move |path| {
        let mut out = Vec::with_capacity(addrs.len());
        for addr in addrs {
            match bind(addr) {
                Ok(l) => out.push(l),
                Err(e) if addr.is_ipv6() && skippable(&e) => {
                    tracing::debug!(%addr, netns = %path.display(), "no IPv6 loopback in the namespace");
                }
                Err(source) => return Err(NetnsError::Bind { addr, path, source }),
            }
        }
        Ok(out)
    })
}

fn skippable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EADDRNOTAVAIL) | Some(libc::EAFNOSUPPORT)
    )
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())?;
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Whether two paths name the same namespace (the same inode on the same nsfs device).
pub fn same(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => a == b,
    }
}

/// The kernel's cookie for a socket's network namespace (SO_NETNS_COOKIE).
pub fn cookie(sock: &impl AsRawFd) -> io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let mut val: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: val has room for len bytes.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut val as *mut u64).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(val)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_namespace_works_like_a_plain_bind() {
        let ls = listen_in(
            Path::new("/proc/self/ns/net"),
            &["127.0.0.1:0".parse().unwrap()],
        )
        .unwrap();
        assert_eq!(ls.len(), 1);
        let addr = ls[0].local_addr().unwrap();
        let c = std::net::TcpStream::connect(addr).unwrap();
        assert!(cookie(&c).unwrap() > 0);
        assert_eq!(cookie(&c).unwrap(), cookie(&ls[0]).unwrap());
    }

    #[test]
    fn the_same_namespace_is_recognised_under_another_path() {
        let own = Path::new("/proc/self/ns/net");
        assert!(same(own, Path::new("/proc/thread-self/ns/net")));
        assert!(!same(own, Path::new("/proc/self/ns/uts")));
    }

    #[test]
    fn a_missing_namespace_is_named() {
        let e = listen_in(
            Path::new("/run/netns/meshd-no-such-ns"),
            &["127.0.0.1:0".parse().unwrap()],
        )
        .unwrap_err();
        assert!(e.to_string().contains("/run/netns/meshd-no-such-ns"), "{e}");
    }

    #[test]
    fn a_file_that_is_no_namespace_is_refused() {
        let e = listen_in(
            Path::new("/proc/self/status"),
            &["127.0.0.1:0".parse().unwrap()],
        )
        .unwrap_err();
        assert!(matches!(e, NetnsError::Enter { .. }), "{e}");
    }
}
