//! A client connection's requests in flight and when the last one ended: what Envoy's
//! downstream `idle_timeout` (1 h under Istio) closes an idle HTTP connection by.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Requests in flight on one client connection, and when the last one ended.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    in_flight: AtomicU32,
    /// When the last request ended (or the connection opened), in nanoseconds since `opened`.
    last_end_ns: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            opened: Instant::now(),
            in_flight: AtomicU32::new(0),
            last_end_ns: AtomicU64::new(0),
        }
    }
}

impl Activity {
    /// A request has begun; it counts as in flight until [`Activity::ended`].
    pub fn began(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A request [`Activity::began`] has ended: its response was sent whole, or it failed.
    pub fn ended(&self) {
        let ns = u64::try_from(self.opened.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_end_ns.fetch_max(ns, Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Release);
    }

    /// Resolves once the connection has had no request in flight for `timeout`: since it
    /// opened, or since its last request ended. A request that begins before then puts it off.
    pub async fn idle_for(&self, timeout: Duration) {
        loop {
            let deadline = if self.in_flight.load(Ordering::Acquire) > 0 {
                // Looked at again once this long has passed; a request in flight then may
                // have ended by then, and the time counts from its end.
                Instant::now() + timeout
            } else {
                let last = Duration::from_nanos(self.last_end_ns.load(Ordering::Relaxed));
                let deadline = self.opened + last + timeout;
                if deadline <= Instant::now() {
                    return;
                }
                deadline
            };
            tokio::time::sleep_until(deadline).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn is_idle(a: &Activity, timeout: Duration) -> bool {
        tokio::time::timeout(Duration::ZERO, a.idle_for(timeout))
            .await
            .is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_requests_is_idle_after_the_timeout() {
        let a = Activity::default();
        let t = Duration::from_secs(3600);
        let idle = a.idle_for(t);
        let start = Instant::now();
        idle.await;
        assert_eq!(start.elapsed(), t);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_keeps_the_connection_busy_however_long_it_takes() {
        let a = Activity::default();
        let t = Duration::from_secs(10);
        a.began();
        tokio::time::advance(Duration::from_secs(35)).await;
        assert!(!is_idle(&a, t).await);
        a.ended();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!is_idle(&a, t).await, "counted from the request's end");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(is_idle(&a, t).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_sees_a_request_that_began_and_ended_while_it_slept() {
        let a = std::sync::Arc::new(Activity::default());
        let t = Duration::from_secs(10);
        let waiter = tokio::spawn({
            let a = a.clone();
            async move {
                let start = Instant::now();
                a.idle_for(t).await;
                start.elapsed()
            }
        });
        // The waiter starts waiting at second 0.
        tokio::task::yield_now().await;
        tokio::time::advance(Duration::from_secs(4)).await;
        a.began();
        tokio::time::advance(Duration::from_secs(2)).await;
        a.ended();
        // Idle from second 6 on: the waiter resolves at 16, not at 10.
        assert_eq!(waiter.await.unwrap(), Duration::from_secs(16));
    }

    #[tokio::test(start_paused = true)]
    async fn overlapping_requests_count_until_the_last_ends() {
        let a = Activity::default();
        let t = Duration::from_secs(5);
        a.began();
        a.began();
        tokio::time::advance(Duration::from_secs(1)).await;
        a.ended();
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!is_idle(&a, t).await, "one request is still in flight");
        a.ended();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(is_idle(&a, t).await);
    }
}
