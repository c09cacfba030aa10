//! Carrying an opaque connection that the kernel splices both ways. meshd forwards only what
//! the kernel hands it, publishes its running totals so the kernel can take each direction over,
//! and watches the upstream socket for its end alone: replies the kernel splices do not wake it.

use std::{
    io::{self, Read, Write},
    net::Shutdown,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    time::Duration,
};

use tokio::{
    io::{Interest, unix::AsyncFd},
    net::TcpStream,
    time::Instant,
};
use tracing::{debug, warn};

use super::copy::{COPY_BUF, Carried, read_some, write_all};
use crate::ebpf::Splice;

/// How long meshd sleeps on an upstream socket without looking at it. Replies reach meshd only
/// when the kernel cannot splice them, which wakes nothing; this bounds how long they can wait.
const LOOK_AGAIN: Duration = Duration::from_secs(2);

/// How long a closing connection waits for the kernel to send its last spliced replies.
const SEND_DEADLINE: Duration = Duration::from_secs(10);

/// meshd's upstream socket of a spliced connection, out of tokio's usual registration (which
/// would wake meshd for every reply the kernel splices).
struct Upstream {
    /// Registered for writability only: bytes arriving do not wake it.
    io: AsyncFd<std::net::TcpStream>,
    /// An epoll instance watching `io` for its end only (RDHUP, HUP, ERR).
    ends: AsyncFd<OwnedFd>,
}

impl Upstream {
    fn new(up: TcpStream) -> io::Result<Upstream> {
        let up = up.into_std()?;
        let ends = end_watch(up.as_raw_fd())?;
        // SAFETY: both AsyncFds own their descriptor (a std TcpStream, an OwnedFd), which stays
        // open and the same until they are dropped.
        let (io, ends) = unsafe {
            (
                AsyncFd::register_with_interest(up, Interest::WRITABLE)?,
                AsyncFd::register_with_interest(ends, Interest::READABLE)?,
            )
        };
        Ok(Upstream { io, ends })
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

/// Carries the connection until both sides have closed: what was carried to the upstream and to
/// the downstream, the kernel's spliced bytes included. On a reset, `up` is closed with a reset
/// too.
pub async fn both_ways(
    down: &TcpStream,
    up: TcpStream,
    splice: &Splice,
) -> io::Result<(Carried, Carried)> {
    let up = Upstream::new(up)?;
    let carried = tokio::try_join!(requests(down, &up, splice), replies(&up, down, splice));
    if let Err(e) = &carried
        && e.kind() == io::ErrorKind::ConnectionReset
    {
        super::sockopt::set_reset_on_close(up.io.get_ref());
    }
    carried
}

/// The workload's bytes that sk_msg handed meshd (its first sends, before meshd caught up).
async fn requests(down: &TcpStream, up: &Upstream, splice: &Splice) -> io::Result<Carried> {
    let mut buf = vec![0u8; COPY_BUF];
    let mut total = 0;
    loop {
        let n = read_some(down, &mut buf).await?;
        if n == 0 {
            break;
        }
        up.write_all(&buf[..n]).await?;
        total += n as u64;
        splice.forwarded(total);
    }
    socket2::SockRef::from(up.io.get_ref()).shutdown(Shutdown::Write)?;
    Ok(Carried {
        bytes: total + splice.spliced(),
        zero_copy: 0,
    })
}

/// The replies the verdict handed meshd (none while it can splice them), then the end.
async fn replies(up: &Upstream, down: &TcpStream, splice: &Splice) -> io::Result<Carried> {
    let mut buf = Vec::new();
    let mut total = 0;
    loop {
        if buf.is_empty() {
            buf = vec![0u8; COPY_BUF];
        }
        match up.try_read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                write_all(down, &buf[..n]).await?;
                total += n as u64;
                splice.reply_forwarded(total);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => up.changed().await?,
            Err(e) => return Err(e),
        }
    }
    let spliced = splice.reply_spliced();
    if spliced > 0 {
        // The kernel's socket work may still be sending spliced replies: the workload gets
        // them all before the end.
        all_sent(splice, total + spliced).await;
    }
    socket2::SockRef::from(down).shutdown(Shutdown::Write)?;
    Ok(Carried {
        bytes: total + spliced,
        zero_copy: 0,
    })
}

/// Waits until `want` bytes have left meshd's accepted socket, or `SEND_DEADLINE` has passed.
async fn all_sent(splice: &Splice, want: u64) {
    let deadline = Instant::now() + SEND_DEADLINE;
    let mut yields = 0;
    loop {
        match splice.sent_to_workload() {
            Some(sent) if sent < want => {}
            Some(_) => return,
            None => {
                debug!("no send count for the accepted socket; closing without waiting");
                return;
            }
        }
        if Instant::now() >= deadline {
            warn!(
                want,
                "the kernel had not sent every spliced reply after {SEND_DEADLINE:?}; closing"
            );
            return;
        }
        // The socket work usually runs right away; after a few turns, sleep.
        if yields < 16 {
            yields += 1;
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}
