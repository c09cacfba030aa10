//! In-process backends for the end-to-end tests: a TCP echo server and a tiny HTTP responder.
//! Each counts the connections it accepted, so tests can tell who reached it.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
};

/// `len` bytes counting 0..=250 over and over: data whose every byte depends on its offset.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

pub struct Backend {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl Backend {
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn spawn(bind: &str, serve: fn(TcpStream)) -> Backend {
        let listener = TcpListener::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                count.fetch_add(1, Ordering::SeqCst);
                let _ = stream.set_nodelay(true);
                thread::spawn(move || serve(stream));
            }
        });
        Backend { addr, accepted }
    }

    /// Echoes every byte back until the client half-closes, then closes.
    pub fn echo(bind: &str) -> Backend {
        Backend::spawn(bind, |mut s| {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = s.shutdown(std::net::Shutdown::Write);
        })
    }

    /// Speaks first: sends `len` bytes of `pattern` as soon as it accepts, then half-closes and
    /// waits for the client to close.
    pub fn speaks_first(bind: &str, len: usize) -> Backend {
        let listener = TcpListener::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                count.fetch_add(1, Ordering::SeqCst);
                thread::spawn(move || {
                    let _ = s.write_all(&pattern(len));
                    let _ = s.shutdown(std::net::Shutdown::Write);
                    let _ = s.read_to_end(&mut Vec::new());
                });
            }
        });
        Backend { addr, accepted }
    }

    /// Answers every HTTP request with `200 hello from the backend`.
    pub fn http(bind: &str) -> Backend {
        Backend::spawn(bind, |mut s| {
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let body = "hello from the backend\n";
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        })
    }
}

impl Backend {
    /// Reads a request and resets the connection (SO_LINGER 0), every time: an endpoint that
    /// fails with `reset`.
    pub fn resetting(bind: &str) -> Backend {
        Backend::spawn(bind, |mut s| {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                )
            };
            drop(s);
        })
    }
}

impl Backend {
    /// Answers every HTTP request with 503: an endpoint that keeps failing.
    pub fn http_503(bind: &str) -> Backend {
        Backend::spawn(bind, |mut s| {
            let mut buf = [0u8; 4096];
            loop {
                let mut req = Vec::new();
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                if s.write_all(
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 5\r\n\r\nbusy\n",
                )
                .is_err()
                {
                    return;
                }
            }
        })
    }
}

impl Backend {
    /// Reads each request and never answers, holding the connection until the peer closes it:
    /// an endpoint that hangs.
    pub fn silent(bind: &str) -> Backend {
        Backend::spawn(bind, |mut s| {
            let mut buf = [0u8; 4096];
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        })
    }
}
