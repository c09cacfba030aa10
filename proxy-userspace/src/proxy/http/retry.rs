//! Retries: which outcomes a route retries (Envoy's retry_on conditions), how many times, with
//! what per-try timeout and exponential backoff with full jitter. The loop is generic over the
//! attempt so it can be tested under paused time.

use std::{future::Future, time::Duration};

use crate::policy::model::HttpRetry;

/// How an attempt ended, as far as retry conditions are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A response arrived; `grpc` is its `grpc-status` header when present.
    Response { status: u16, grpc: Option<u32> },
    /// The upstream connection could not be opened.
    ConnectFailure,
    /// The upstream reset or closed before answering.
    Reset,
    /// HTTP/2 REFUSED_STREAM: the upstream did not process the request.
    RefusedStream,
    /// The per-try timeout expired.
    Timeout,
}

/// Envoy's retry_on conditions meshd implements.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conditions {
    pub five_xx: bool,
    pub gateway_error: bool,
    pub reset: bool,
    /// A reset before the request went out: a connect failure or a refused stream.
    pub reset_before_request: bool,
    pub connect_failure: bool,
    pub refused_stream: bool,
    pub retriable_4xx: bool,
    /// The status codes in retryOn (Istio turns them into `retriable-status-codes`); with
    /// `retriable-status-codes` and no code, none (503 only in Istio's default policy).
    pub status_codes: Vec<u16>,
    /// Whether `retriable-status-codes` is a condition (written, or implied by a code): only
    /// then do a request's `x-envoy-retriable-status-codes` count.
    pub any_status_code: bool,
    /// gRPC status codes: cancelled 1, deadline-exceeded 4, resource-exhausted 8, internal 13,
    /// unavailable 14.
    pub grpc: Vec<u32>,
}

impl Conditions {
    pub fn parse(retry_on: &str) -> Conditions {
        let mut c = Conditions::default();
        for token in retry_on.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            match token {
                "5xx" => c.five_xx = true,
                "gateway-error" => c.gateway_error = true,
                "reset" => c.reset = true,
                "reset-before-request" => c.reset_before_request = true,
                "connect-failure" => c.connect_failure = true,
                "refused-stream" => c.refused_stream = true,
                "retriable-4xx" => c.retriable_4xx = true,
                // The codes are the numbers listed beside it.
                "retriable-status-codes" => c.any_status_code = true,
                "cancelled" => c.grpc.push(1),
                "deadline-exceeded" => c.grpc.push(4),
                "resource-exhausted" => c.grpc.push(8),
                "internal" => c.grpc.push(13),
                "unavailable" => c.grpc.push(14),
                code => {
                    if let Ok(n) = code.parse() {
                        c.status_codes.push(n);
                        c.any_status_code = true;
                    }
                }
            }
        }
        c
    }

    pub fn matches(&self, o: Outcome) -> bool {
        match o {
            Outcome::Response { status, grpc } => {
                (self.five_xx && status >= 500)
                    || (self.gateway_error && matches!(status, 502..=504))
                    || (self.retriable_4xx && status == 409)
                    || self.status_codes.contains(&status)
                    || grpc.is_some_and(|g| self.grpc.contains(&g))
            }
            // As Envoy's wouldRetryFromReset: 5xx, gateway-error and reset retry any reset.
            Outcome::ConnectFailure => {
                self.any_reset() || self.connect_failure || self.reset_before_request
            }
            Outcome::Reset => self.any_reset(),
            Outcome::RefusedStream => {
                self.any_reset() || self.refused_stream || self.reset_before_request
            }
            Outcome::Timeout => self.any_reset(),
        }
    }

    /// Adds `other`'s conditions to these, as Envoy merges `x-envoy-retry-on` into a route's.
    pub fn merge(&mut self, other: Conditions) {
        self.five_xx |= other.five_xx;
        self.gateway_error |= other.gateway_error;
        self.reset |= other.reset;
        self.reset_before_request |= other.reset_before_request;
        self.connect_failure |= other.connect_failure;
        self.refused_stream |= other.refused_stream;
        self.retriable_4xx |= other.retriable_4xx;
        self.status_codes.extend(other.status_codes);
        self.any_status_code |= other.any_status_code;
        self.grpc.extend(other.grpc);
    }

    /// Whether any reset of the upstream request (or its per-try timeout) is retried.
    fn any_reset(&self) -> bool {
        self.five_xx || self.gateway_error || self.reset
    }

    /// Istio's conditions when a route sets no `retryOn`, with 503 as the retriable status.
    fn istio_default() -> Conditions {
        Conditions {
            status_codes: vec![503],
            ..Conditions::parse(ISTIO_DEFAULT_RETRY_ON)
        }
    }
}

/// Backoff bounds when a route does not configure them.
pub const BASE_BACKOFF: Duration = Duration::from_millis(25);
pub const MAX_BACKOFF: Duration = Duration::from_millis(250);

/// Istio's default when a route sets no retries: 2 retries on these conditions.
const ISTIO_DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";

#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub retries: u32,
    pub per_try_timeout: Option<Duration>,
    pub on: Conditions,
    pub base: Duration,
    pub max: Duration,
    /// Whether the route configured retries itself (false: Istio's default applies).
    pub explicit: bool,
}

impl RetryPolicy {
    pub fn from_spec(spec: Option<&HttpRetry>) -> RetryPolicy {
        match spec {
            None => RetryPolicy {
                retries: 2,
                per_try_timeout: None,
                on: Conditions::istio_default(),
                base: BASE_BACKOFF,
                max: MAX_BACKOFF,
                explicit: false,
            },
            Some(r) => {
                let base = r
                    .backoff
                    .map(|d| d.0)
                    .filter(|d| !d.is_zero())
                    .unwrap_or(BASE_BACKOFF);
                RetryPolicy {
                    retries: r.attempts,
                    per_try_timeout: r.per_try_timeout.map(|d| d.0).filter(|d| !d.is_zero()),
                    // Istio: attempts without retryOn retry on Envoy's default set.
                    on: r
                        .retry_on
                        .as_deref()
                        .map_or_else(Conditions::istio_default, Conditions::parse),
                    base,
                    max: if r.backoff.is_some() {
                        base * 10
                    } else {
                        MAX_BACKOFF
                    },
                    explicit: true,
                }
            }
        }
    }

    pub fn tries(&self) -> u32 {
        self.retries + 1
    }

    /// Full jitter: uniform in [0, min(max, base * 2^retry)).
    pub fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32.checked_shl(retry.min(16)).unwrap_or(u32::MAX))
            .min(self.max);
        let ms = ceiling.as_millis().max(1) as u64;
        Duration::from_millis(fastrand::u64(0..ms))
    }
}

/// The last attempt's result, how many attempts ran, and whether retries ran out while the
/// outcome was still retriable (flag URX).
pub struct Attempts<T, E> {
    pub last: Result<T, E>,
    pub tries: u32,
    pub exhausted: bool,
    /// A retry was due but the cluster's retry budget (`maxRetries`) was spent.
    pub overflow: bool,
}

/// Runs `attempt(n)` (n = 1, 2, ...) until an outcome is not retriable or retries run out,
/// sleeping the backoff between attempts and bounding each by the per-try timeout. A retry is
/// made only while `can_retry` says the request can be sent again (its body held, or not sent
/// yet). Each retry first takes a token from `budget` and holds it through its backoff and
/// attempt; without one, the last outcome stands.
pub async fn run<T, E, F, Fut, G>(
    policy: &RetryPolicy,
    can_retry: impl Fn() -> bool,
    outcome: impl Fn(&Result<T, E>) -> Outcome,
    on_timeout: impl Fn() -> E,
    mut budget: impl FnMut() -> Option<G>,
    dispatch: &Dispatch,
    mut attempt: F,
) -> Attempts<T, E>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let tries = policy.tries();
    let mut n = 1;
    let mut _token: Option<G> = None;
    loop {
        dispatch.clear();
        // Pinned once: awaited in two places, the attempt's state would otherwise take two
        // slots of this future (and of every future that awaits it).
        let this_try = std::pin::pin!(attempt(n));
        let result = match policy.per_try_timeout {
            Some(t) => {
                (within_per_try(t, this_try, dispatch).await).unwrap_or_else(|| Err(on_timeout()))
            }
            None => this_try.await,
        };
        let retriable = policy.on.matches(outcome(&result)) && can_retry();
        if !retriable || n >= tries {
            return Attempts {
                last: result,
                tries: n,
                exhausted: retriable && n > 1,
                overflow: false,
            };
        }
        _token = None;
        _token = budget();
        if _token.is_none() {
            return Attempts {
                last: result,
                tries: n,
                exhausted: false,
                overflow: true,
            };
        }
        tokio::time::sleep(policy.backoff(n - 1)).await;
        n += 1;
    }
}

/// When the attempt under way got its connection or stream. Its per-try timeout runs from then,
/// as Envoy arms it when the pool is ready: the wait for a connection, which the connect timeout
/// and the route timeout bound, is not part of it, and a connect that times out is a connect
/// failure (retried under `connect-failure`), not a per-try timeout.
#[derive(Debug, Default)]
pub struct Dispatch(std::sync::Mutex<Option<tokio::time::Instant>>);

impl Dispatch {
    /// The attempt has its connection or stream, now.
    pub fn mark(&self) {
        *self.0.lock().expect("dispatch lock") = Some(tokio::time::Instant::now());
    }

    fn clear(&self) {
        *self.0.lock().expect("dispatch lock") = None;
    }

    fn at(&self) -> Option<tokio::time::Instant> {
        *self.0.lock().expect("dispatch lock")
    }
}

/// The attempt's result, or None when `limit` passed from its dispatch first. The timer is set
/// in the same poll that saw the attempt dispatched, so no wake-up is missed.
async fn within_per_try<T>(
    limit: Duration,
    mut attempt: std::pin::Pin<&mut impl Future<Output = T>>,
    dispatch: &Dispatch,
) -> Option<T> {
    let mut timer = std::pin::pin!(tokio::time::sleep(limit));
    let mut armed = false;
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(r) = attempt.as_mut().poll(cx) {
            return std::task::Poll::Ready(Some(r));
        }
        if !armed && let Some(at) = dispatch.at() {
            timer.as_mut().reset(at + limit);
            armed = true;
        }
        if armed && timer.as_mut().poll(cx).is_ready() {
            return std::task::Poll::Ready(None);
        }
        std::task::Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests;
