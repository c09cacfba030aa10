//! Carrying an opaque connection that the kernel splices both ways. meshd forwards only what
//! the kernel hands it, publishes its running totals so the kernel can take each direction over,
//! and watches the upstream socket for its end alone: replies the kernel splices do not wake it.

use std::{
    io::{self, Read, Write},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{Arc, OnceLock},
    time::Duration,
};

use tokio::{
    io::{Interest, unix::AsyncFd},
    net::TcpStream,
    time::Instant,
};
use tracing::{debug, warn};

use super::{
    copy::{self, Buffer, COPY_BUF, Carried, write_all},
    sockopt,
};
use crate::ebpf::{RawUp, Splice, SpliceMaps};

/// How long meshd sleeps on an upstream socket without looking at it. Replies reach meshd
/// only when the kernel cannot splice them, which wakes nothing; this bounds how long the first
/// of them can wait (after it, meshd watches the socket for data as usual).
const LOOK_AGAIN: Duration = Duration::from_secs(2);

/// How long a closing connection waits for the kernel to send its last spliced replies.
const SEND_DEADLINE: Duration = Duration::from_secs(10);

/// The kernel counts a spliced reply as sent just before it queues it for the workload; this
/// long after the count is complete, meshd passes the end on.
const SEND_SETTLE: Duration = Duration::from_millis(1);

/// Carries the connection until both sides have closed, with the kernel splicing what it can
/// (meshd copies alone when the kernel does not take the connection). On an error both sockets
/// close with a reset, so the workload never mistakes a cut-short stream for a whole one.
pub async fn carry(
    down: &TcpStream,
    up: TcpStream,
    maps: &Arc<SpliceMaps>,
    zero_copy: bool,
) -> io::Result<(Carried, Carried)> {
    let raw = match RawUp::of(&up) {
        Ok(raw) => raw,
        Err(e) => {
            debug!(error = %e, "no cookie for the upstream socket; no splicing");
            return copy::relay(down, &up, zero_copy).await;
        }
    };
    let up = match Upstream::new(up) {
        Ok(up) => up,
        Err(Unwatched::Relay(e, up)) => {
            debug!(error = %e, "no watch on the upstream socket; no splicing");
            return copy::relay(down, &up, zero_copy).await;
        }
        Err(Unwatched::Lost(e)) => {
            sockopt::set_reset_on_close(down);
            return Err(e);
        }
    };
    let Some(splice) = maps.offer(down, raw) else {
        let up = TcpStream::from_std(up.io.into_inner())?;
        return copy::relay(down, &up, zero_copy).await;
    };
    debug!("spliced by the kernel");
    let carried = tokio::try_join!(requests(down, &up, &splice), replies(&up, down, &splice));
    if let Err(e) = &carried {
        debug!(error = %e, "spliced connection failed; resetting both sides");
        sockopt::set_reset_on_close(down);
        sockopt::set_reset_on_close(up.io.get_ref());
    }
    carried
}

/// meshd's upstream socket of a spliced connection, out of tokio's usual registration (which
/// would wake meshd for every reply the kernel splices).
struct Upstream {
    /// Registered for writability only: bytes arriving do not wake it.
    io: AsyncFd<std::net::TcpStream>,
    /// An epoll instance watching `io` for its end only (RDHUP, HUP, ERR).
    ends: AsyncFd<OwnedFd>,
    /// A second descriptor of the socket registered for reading, once meshd carries the
    /// replies itself.
    reads: OnceLock<AsyncFd<std::net::TcpStream>>,
}

/// Why an upstream socket could not be watched: with the socket back as it was, or lost.
enum Unwatched {
    Relay(io::Error, TcpStream),
    Lost(io::Error),
}

impl Upstream {
    fn new(up: TcpStream) -> Result<Upstream, Unwatched> {
        let ends = match end_watch(up.as_raw_fd()) {
            Ok(ends) => ends,
            Err(e) => return Err(Unwatched::Relay(e, up)),
        };
        let up = up.into_std().map_err(Unwatched::Lost)?;
        // SAFETY: each AsyncFd owns its descriptor (a std TcpStream, an OwnedFd), which stays
        // open and the same until it is dropped or taken back with into_inner.
        let io = unsafe { AsyncFd::register_with_interest(up, Interest::WRITABLE) }
            .map_err(|e| back(e.into_parts()))?;
        match unsafe { AsyncFd::register_with_interest(ends, Interest::READABLE) } {
            Ok(ends) => Ok(Upstream {
                io,
                ends,
                reads: OnceLock::new(),
            }),
            Err(e) => Err(back((io.into_inner(), e.into_parts().1))),
        }
    }

    /// Waits until the upstream socket may have ended, or `LOOK_AGAIN` has passed.
    async fn changed(&self) -> io::Result<()> {
        let ended = async {
            let mut ready = self.ends.readable().await?;
            drain(self.ends.get_ref().as_raw_fd());
            ready.clear_ready();
            io::Result::Ok(())
        };
        tokio::time::timeout(LOOK_AGAIN, ended)
            .await
            .unwrap_or(Ok(()))
    }

    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut s: &std::net::TcpStream = self.io.get_ref();
        s.read(buf)
    }

    /// Reads what the socket has, waiting for data: once meshd carries the replies itself.
    async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        if self.reads.get().is_none() {
            let dup = self.io.get_ref().try_clone()?;
            // SAFETY: as in `new`.
            let reads = unsafe { AsyncFd::register_with_interest(dup, Interest::READABLE) }
                .map_err(|e| e.into_parts().1)?;
            let _ = self.reads.set(reads);
        }
        let reads = self.reads.get().expect("set above");
        loop {
            let mut ready = reads.readable().await?;
            if let Ok(read) = ready.try_io(|_| self.try_read(buf)) {
                return read;
            }
        }
    }

    async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut ready = self.io.writable().await?;
            if let Ok(written) = ready.try_io(|io| {
                let mut s: &std::net::TcpStream = io.get_ref();
                s.write(data)
            }) {
                data = &data[written?..];
            }
        }
        Ok(())
    }
}

/// The socket back into tokio's usual registration, to be relayed without splicing.
fn back((up, e): (std::net::TcpStream, io::Error)) -> Unwatched {
    match TcpStream::from_std(up) {
        Ok(up) => Unwatched::Relay(e, up),
        Err(e) => Unwatched::Lost(e),
    }
}

/// An epoll instance with `sock` registered for its end only: the wake-ups of arriving data do
/// not match it.
fn end_watch(sock: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked before use.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `ep` is a new descriptor owned by nobody else.
    let ep = unsafe { OwnedFd::from_raw_fd(ep) };
    let mut event = libc::epoll_event {
        events: (libc::EPOLLRDHUP | libc::EPOLLET) as u32,
        u64: 0,
    };
    // SAFETY: both descriptors are open; `event` is a valid epoll_event.
    if unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, sock, &mut event) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ep)
}

/// Takes the ready events off an end watch, without waiting.
fn drain(ep: RawFd) {
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
    // SAFETY: `events` has room for the 4 events asked for; a timeout of 0 never blocks.
    unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 0) };
}

/// The workload's bytes that sk_msg handed meshd (its first sends, before meshd caught up).
async fn requests(down: &TcpStream, up: &Upstream, splice: &Splice) -> io::Result<Carried> {
    let mut buf = Buffer::default();
    let mut total = 0;
    loop {
        let n = buf.read(down).await?;
        if n == 0 {
            break;
        }
        up.write_all(buf.filled()).await?;
        total += n as u64;
        splice.forwarded(total);
    }
    super::copy::half_close(up.io.get_ref())?;
    Ok(Carried {
        bytes: total + splice.spliced(),
        zero_copy: 0,
    })
}

/// The replies: none reach meshd while the kernel splices them; when the kernel hands meshd
/// one (it could not send it on), meshd carries the rest itself. Then the end.
async fn replies(up: &Upstream, down: &TcpStream, splice: &Splice) -> io::Result<Carried> {
    let mut buf = Vec::new();
    let mut total = 0;
    let mut carrying = false;
    loop {
        if buf.is_empty() {
            buf = vec![0u8; COPY_BUF];
        }
        let read = if carrying {
            up.read(&mut buf).await
        } else {
            up.try_read(&mut buf)
        };
        match read {
            Ok(0) => break,
            Ok(n) => {
                if !carrying {
                    debug!(
                        "the kernel handed meshd a reply; meshd carries the replies from now on"
                    );
                    splice.stop_replies();
                    // Spliced replies still on their way go first.
                    all_sent(splice, splice.reply_spliced()).await?;
                    carrying = true;
                }
                write_all(down, &buf[..n]).await?;
                total += n as u64;
                splice.reply_forwarded(total);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => up.changed().await?,
            Err(e) => return Err(e),
        }
    }
    let spliced = splice.reply_spliced();
    if !carrying && spliced > 0 {
        all_sent(splice, spliced).await?;
    }
    super::copy::half_close(down)?;
    Ok(Carried {
        bytes: total + spliced,
        zero_copy: 0,
    })
}

/// Waits until the kernel has sent `want` spliced reply bytes out of meshd's accepted socket (its
/// socket work may still be sending some), so the workload gets them before meshd's own bytes
/// or the end. meshd writes no reply while the kernel splices them, so every byte sk_msg counts
/// there until then is a spliced one. An error after `SEND_DEADLINE`: the connection is then
/// reset, not ended.
async fn all_sent(splice: &Splice, want: u64) -> io::Result<()> {
    let deadline = Instant::now() + SEND_DEADLINE;
    let mut yields = 0;
    while splice.sent_to_workload().is_none_or(|sent| sent < want) {
        if Instant::now() >= deadline {
            warn!(
                want,
                sent = splice.sent_to_workload(),
                "the kernel had not sent every spliced reply after {SEND_DEADLINE:?}; resetting"
            );
            return Err(io::ErrorKind::TimedOut.into());
        }
        // The socket work usually runs right away; after a few turns, sleep.
        if yields < 16 {
            yields += 1;
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    tokio::time::sleep(SEND_SETTLE).await;
    Ok(())
}
