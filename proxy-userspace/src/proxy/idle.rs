//! `connectionPool.tcp.idleTimeout` for opaque connections: when neither direction of a
//! connection has moved a byte for the timeout (Istio's default: one hour), both sockets are
//! shut down and the carry ends, as Envoy's TCP proxy closes an idle connection.

use std::{future::Future, os::fd::RawFd, time::Duration};

use tokio::time::Instant;

/// Istio's default idle timeout of TCP connections.
pub const DEFAULT: Duration = Duration::from_secs(3600);

/// How often activity is looked at: an eighth of the timeout, within 50 ms and 60 s.
fn check_every(idle: Duration) -> Duration {
    (idle / 8).clamp(Duration::from_millis(50), Duration::from_secs(60))
}

/// Runs `carry` to its end. When `activity` (a count that grows with every byte either way)
/// stays still for `idle`, shuts `sockets` down so the carry ends. Returns the carry's output
/// and whether the connection timed out. The sockets must stay open while `carry` runs (it
/// owns or borrows them). While `activity` is unknown (`None`) the connection counts as busy:
/// a connection is never closed for lack of a counter.
pub async fn bounded<T>(
    carry: impl Future<Output = T>,
    idle: Option<Duration>,
    sockets: [RawFd; 2],
    activity: impl Fn() -> Option<u64>,
) -> (T, bool) {
    let Some(idle) = idle else {
        return (carry.await, false);
    };
    tokio::pin!(carry);
    tokio::select! {
        out = &mut carry => return (out, false),
        () = quiet_for(idle, activity) => {}
    }
    shut(sockets);
    (carry.await, true)
}

/// `connectionPool.tcp.maxConnectionDuration` of an opaque connection: once `max` has passed,
/// shuts `sockets` down so the carry ends, as Envoy's TCP proxy closes a connection at its
/// maximum duration. Returns the carry's output and whether it was cut short.
pub async fn at_most<T>(
    carry: impl Future<Output = T>,
    max: Option<Duration>,
    sockets: [RawFd; 2],
) -> (T, bool) {
    let Some(max) = max else {
        return (carry.await, false);
    };
    let (out, cut) = until(carry, sockets, tokio::time::sleep(max)).await;
    (out, cut.is_some())
}

/// Runs `carry` to its end, unless `cut` ends first: then shuts `sockets` down so the carry
/// ends, and returns `cut`'s output beside the carry's.
pub async fn until<T, R>(
    carry: impl Future<Output = T>,
    sockets: [RawFd; 2],
    cut: impl Future<Output = R>,
) -> (T, Option<R>) {
    tokio::pin!(carry);
    let why = tokio::select! {
        out = &mut carry => return (out, None),
        why = cut => why,
    };
    shut(sockets);
    (carry.await, Some(why))
}

/// Shuts both sockets down, so the carry between them ends.
fn shut(sockets: [RawFd; 2]) {
    for fd in sockets {
        // SAFETY: the carry keeps both sockets open until it ends, and it has not ended;
        // shutdown(2) neither closes nor frees the descriptor.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    }
}

/// Like [`bounded`], for a carry with no socket of its own to shut down (a stream inside TLS
/// or the tunnel): an idle carry is dropped, which closes what it owns. `None` when it was.
pub async fn or_dropped<T>(
    carry: impl Future<Output = T>,
    idle: Option<Duration>,
    activity: impl Fn() -> Option<u64>,
) -> Option<T> {
    let Some(idle) = idle else {
        return Some(carry.await);
    };
    tokio::select! {
        out = carry => Some(out),
        () = quiet_for(idle, activity) => None,
    }
}

/// Ends once `activity` has stayed still for `idle`; never while it is unknown.
async fn quiet_for(idle: Duration, activity: impl Fn() -> Option<u64>) {
    let mut tick = tokio::time::interval(check_every(idle));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut seen, mut since) = (activity(), Instant::now());
    loop {
        tick.tick().await;
        let now = activity();
        if now != seen || now.is_none() {
            (seen, since) = (now, Instant::now());
        } else if since.elapsed() >= idle {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    };

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
    };

    use super::*;

    #[test]
    fn checks_often_enough_and_not_too_often() {
        assert_eq!(
            check_every(Duration::from_secs(3600)),
            Duration::from_secs(60)
        );
        assert_eq!(check_every(Duration::from_secs(8)), Duration::from_secs(1));
        assert_eq!(
            check_every(Duration::from_millis(100)),
            Duration::from_millis(50)
        );
    }

    /// A connected pair on loopback: (what meshd holds, the peer).
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (s, c)
    }

    #[tokio::test]
    async fn a_quiet_connection_is_shut_down_and_a_busy_one_is_not() {
        use std::os::fd::AsRawFd;
        let (held, mut peer) = pair().await;
        let (held2, _peer2) = pair().await;
        let moved = Arc::new(AtomicU64::new(0));
        // The "carry": reads until the held socket ends, counting bytes.
        let carry = {
            let moved = moved.clone();
            let mut held = held;
            let fds = [held.as_raw_fd(), held2.as_raw_fd()];
            let counter = moved.clone();
            let work = async move {
                let mut buf = [0u8; 64];
                while let Ok(n) = held.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    moved.fetch_add(n as u64, Ordering::Relaxed);
                }
            };
            bounded(work, Some(Duration::from_secs(1)), fds, move || {
                Some(counter.load(Ordering::Relaxed))
            })
        };
        let talk = async {
            // Busy for a second and a half: a byte every 100 ms keeps it open.
            for _ in 0..15 {
                peer.write_all(b"x").await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let ((_, timed_out), ()) = tokio::join!(carry, talk);
        assert!(timed_out, "then quiet: shut down");
        assert_eq!(
            moved.load(Ordering::Relaxed),
            15,
            "open while busy: every byte arrived"
        );
        let mut rest = [0u8; 1];
        assert_eq!(
            peer.read(&mut rest).await.unwrap(),
            0,
            "the peer sees the close"
        );
    }

    #[tokio::test]
    async fn no_timeout_waits_for_the_carry() {
        let (out, timed_out) = bounded(async { 7 }, None, [-1, -1], || Some(0)).await;
        assert_eq!((out, timed_out), (7, false));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_counter_a_connection_is_never_idle() {
        let carry = tokio::time::sleep(Duration::from_secs(10));
        let (_, timed_out) = bounded(carry, Some(Duration::from_secs(1)), [-1, -1], || None).await;
        assert!(!timed_out);
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_stream_carry_is_dropped_and_a_busy_one_finishes() {
        let moved = Arc::new(AtomicU64::new(0));
        // Busy for three seconds (a byte every 500 ms), then done.
        let busy = {
            let moved = moved.clone();
            async move {
                for _ in 0..6 {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    moved.fetch_add(1, Ordering::Relaxed);
                }
                "done"
            }
        };
        let counter = moved.clone();
        let out = or_dropped(busy, Some(Duration::from_secs(1)), move || {
            Some(counter.load(Ordering::Relaxed))
        })
        .await;
        assert_eq!(out, Some("done"));
        let started = Instant::now();
        let quiet = std::future::pending::<()>();
        let out = or_dropped(quiet, Some(Duration::from_secs(1)), || Some(0)).await;
        assert_eq!(out, None);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(1) && waited < Duration::from_millis(1200),
            "{waited:?}"
        );
        assert_eq!(or_dropped(async { 7 }, None, || Some(0)).await, Some(7));
    }
}
