//! Istio's TCP byte counters of a connection while it is open: every reporting interval (5 s
//! by default, as Istio's stats filter reports) the bytes carried since the last report go to
//! `istio_tcp_received_bytes_total` and `istio_tcp_sent_bytes_total`, and the rest at close,
//! so a long-lived connection's traffic shows while it flows, not only when it ends.

use std::{future::Future, os::fd::RawFd, time::Duration};

use tokio::time::{Instant, MissedTickBehavior};

use crate::proxy::sockopt::{self, Payload};

/// Istio's default interval between reports of an open TCP connection.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// Bytes of one connection: to its destination (the request) and from it (the response).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Carried {
    pub to_destination: u64,
    pub from_destination: u64,
}

impl Carried {
    /// What a connection has carried, from the payload counters of meshd's sockets: the
    /// client's (accepted), and the destination's (connected) when meshd holds it; each
    /// direction as the socket that saw more of it counts, since with the sockmap one of them
    /// sees none of it. `None` when the client's socket (or, without one, the destination's)
    /// cannot be read.
    pub fn of_sockets(client: Option<RawFd>, destination: Option<RawFd>) -> Option<Carried> {
        let d = destination.and_then(|fd| sockopt::payload(&fd, true));
        let c = match client {
            Some(fd) => sockopt::payload(&fd, false)?,
            None => d.map(|_| Payload::default())?,
        };
        let d = d.unwrap_or_default();
        Some(Carried {
            to_destination: c.received.max(d.acked),
            from_destination: c.acked.max(d.received),
        })
    }

    /// The two directions, `(to_destination, from_destination)`.
    pub fn pair(self) -> (u64, u64) {
        (self.to_destination, self.from_destination)
    }

    /// What `self` has beyond `before`, in each direction (never negative).
    fn beyond(self, before: Carried) -> Carried {
        Carried {
            to_destination: self.to_destination.saturating_sub(before.to_destination),
            from_destination: self
                .from_destination
                .saturating_sub(before.from_destination),
        }
    }

    fn is_zero(self) -> bool {
        self == Carried::default()
    }
}

/// What a connection has reported of its bytes so far.
#[derive(Debug, Default)]
pub struct Reported(Carried);

impl Reported {
    /// Runs `carry` to its end. Every `every` (never when `None`), what `read` says the
    /// connection has carried beyond what was reported goes to `report`.
    pub async fn during<T>(
        &mut self,
        carry: impl Future<Output = T>,
        every: Option<Duration>,
        read: impl Fn() -> Option<Carried>,
        mut report: impl FnMut(Carried),
    ) -> T {
        let Some(every) = every.filter(|e| !e.is_zero()) else {
            return carry.await;
        };
        tokio::pin!(carry);
        let mut tick = tokio::time::interval_at(Instant::now() + every, every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                out = &mut carry => return out,
                _ = tick.tick() => {
                    if let Some(now) = read() {
                        let new = now.beyond(self.0);
                        if !new.is_zero() {
                            report(new);
                            self.0 = Carried {
                                to_destination: self.0.to_destination.max(now.to_destination),
                                from_destination: self.0.from_destination.max(now.from_destination),
                            };
                        }
                    }
                }
            }
        }
    }

    /// The part of a connection's final bytes not reported yet.
    pub fn rest(&self, total: Carried) -> Carried {
        total.beyond(self.0)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        cell::RefCell,
        sync::{
            Arc,
            atomic::{AtomicU64, Ordering},
        },
    };

    use super::*;

    fn carried(to: u64, from: u64) -> Carried {
        Carried {
            to_destination: to,
            from_destination: from,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_connection_reports_what_it_carried_each_interval_and_the_rest_at_close() {
        let to = Arc::new(AtomicU64::new(0));
        let reports = RefCell::new(Vec::new());
        let mut reported = Reported::default();
        let carry = {
            let to = to.clone();
            async move {
                to.store(100, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(6)).await;
                to.store(150, Ordering::SeqCst);
                // Nothing moves for two intervals: nothing is reported for them.
                tokio::time::sleep(Duration::from_secs(12)).await;
                to.store(400, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(1)).await;
                "ended"
            }
        };
        let read = || Some(carried(to.load(Ordering::SeqCst), 7));
        let out = reported
            .during(carry, Some(DEFAULT_INTERVAL), read, |c| {
                reports.borrow_mut().push(c)
            })
            .await;
        assert_eq!(out, "ended");
        // At 5 s: 100 and 7; at 10 s: 50 more; at 15 s nothing new; at 19 s it ended.
        assert_eq!(reports.into_inner(), vec![carried(100, 7), carried(50, 0)]);
        // The close adds what is left of the final count, whatever counted it.
        assert_eq!(reported.rest(carried(400, 9)), carried(250, 2));
        // A final count below what was reported (it was counted by another view) adds nothing.
        assert_eq!(reported.rest(carried(120, 3)), carried(0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_connection_and_a_disabled_interval_report_nothing_before_close() {
        let reports = RefCell::new(Vec::new());
        let mut reported = Reported::default();
        let short = tokio::time::sleep(Duration::from_secs(4));
        let read = || Some(carried(10, 10));
        let push = |c| reports.borrow_mut().push(c);
        reported
            .during(short, Some(DEFAULT_INTERVAL), read, push)
            .await;
        let long = tokio::time::sleep(Duration::from_secs(60));
        reported.during(long, None, read, push).await;
        let zero = tokio::time::sleep(Duration::from_secs(60));
        reported
            .during(zero, Some(Duration::ZERO), read, push)
            .await;
        assert!(reports.borrow().is_empty());
        assert_eq!(reported.rest(carried(10, 10)), carried(10, 10));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreadable_count_is_skipped_not_reported_as_zero() {
        let reports = RefCell::new(Vec::new());
        let mut reported = Reported::default();
        let carry = tokio::time::sleep(Duration::from_secs(11));
        reported
            .during(
                carry,
                Some(DEFAULT_INTERVAL),
                || None,
                |c| reports.borrow_mut().push(c),
            )
            .await;
        assert!(reports.borrow().is_empty());
    }
}
