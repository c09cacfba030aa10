//! The route timeout over the response body: Envoy's route `timeout` lasts until the response
//! is complete, so a response still streaming when it expires is cut off (flag UT). A gRPC
//! request's own deadline (`grpc-timeout`), when shorter, is that timeout.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use tokio::time::Instant;

use super::body::{Body, BoxError};

/// The error a response body ends with when the route timeout expires during it.
#[derive(Debug, thiserror::Error)]
#[error("the route timeout expired during the response")]
pub struct RouteTimeout;

/// The header a gRPC request's deadline travels in.
pub const GRPC_TIMEOUT: hyper::header::HeaderName =
    hyper::header::HeaderName::from_static("grpc-timeout");

/// Whether a message is gRPC, by its `content-type`.
pub fn is_grpc(headers: &hyper::HeaderMap) -> bool {
    (headers.get(hyper::header::CONTENT_TYPE))
        .is_some_and(|c| c.as_bytes().starts_with(b"application/grpc"))
}

/// The deadline a gRPC request carries: its `grpc-timeout` header (1 to 8 digits and a unit:
/// `H`, `M`, `S`, `m`, `u`, `n`), as Istio's routes honour it (uncapped). Zero is none, as
/// Envoy reads it (its default, infinity).
pub fn grpc_timeout(headers: &hyper::HeaderMap) -> Option<Duration> {
    // Looked up first: most requests have none, and are done with after one lookup.
    let value = headers.get(GRPC_TIMEOUT)?.as_bytes();
    if !is_grpc(headers) {
        return None;
    }
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
    .filter(|t| !t.is_zero())
}

/// `t` as a `grpc-timeout` value, as Envoy writes it: milliseconds, or a coarser unit when
/// that takes more than the 8 digits allowed.
pub fn grpc_timeout_value(t: Duration) -> hyper::header::HeaderValue {
    const MAX: u128 = 99_999_999;
    let mut n = t.as_millis();
    let mut unit = 'm';
    for (divisor, coarser) in [(1000, 'S'), (60, 'M'), (60, 'H')] {
        if n <= MAX {
            break;
        }
        n /= divisor;
        unit = coarser;
    }
    let value = format!("{}{unit}", n.min(MAX));
    hyper::header::HeaderValue::try_from(value).expect("digits and a letter")
}

/// Envoy's header telling the upstream how long the attempt has: the per-try timeout, or the
/// route timeout (or what is left of it) when that is shorter, in milliseconds.
pub const EXPECTED_TIMEOUT: hyper::header::HeaderName =
    hyper::header::HeaderName::from_static("x-envoy-expected-rq-timeout-ms");

/// `t` as an `x-envoy-expected-rq-timeout-ms` value: whole milliseconds, at least 1 (0 would
/// say no timeout).
pub fn expected_timeout_value(t: Duration) -> hyper::header::HeaderValue {
    let ms = u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1);
    hyper::header::HeaderValue::from(ms)
}

/// The time a retry has, as Envoy recomputes its `grpc-timeout` and
/// `x-envoy-expected-rq-timeout-ms` for each retry: the per-try timeout, or what is left
/// until `deadline` when that is shorter (1 ms once it has passed, the least a header can
/// say). None when neither bounds the attempt.
pub fn retry_timeout(
    now: Instant,
    deadline: Option<Instant>,
    per_try: Option<Duration>,
) -> Option<Duration> {
    let left = deadline.map(|d| {
        d.saturating_duration_since(now)
            .max(Duration::from_millis(1))
    });
    shorter(left, per_try)
}

/// The shorter of two limits, either of which may be unset.
pub fn shorter(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Sleeps until `limit` after the request's end, which may not have come yet (pending for ever
/// if the request's body fails instead).
pub async fn after_request_end(received: &super::body::Received, limit: std::time::Duration) {
    tokio::time::sleep_until(received.ended().await + limit).await;
}

/// When a [`Deadline`] expires: at an instant, or a while after the request's end.
type Expiry = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A response body that fails with [`RouteTimeout`] if it has not ended by its deadline.
pub struct Deadline {
    inner: Body,
    /// Only reached through `get_mut`: the Mutex makes the body `Sync`.
    expires: std::sync::Mutex<Expiry>,
}

impl Deadline {
    pub fn of(inner: Body, deadline: Instant) -> Deadline {
        Deadline::until(inner, Box::pin(tokio::time::sleep_until(deadline)))
    }

    /// `limit` after the request's end, which has not come yet (the response began before the
    /// request ended, as Envoy's route timeout is armed at the request's end even then).
    pub fn after_end(
        inner: Body,
        received: std::sync::Arc<super::body::Received>,
        limit: std::time::Duration,
    ) -> Deadline {
        let expiry = async move { after_request_end(&received, limit).await };
        Deadline::until(inner, Box::pin(expiry))
    }

    fn until(inner: Body, expires: Expiry) -> Deadline {
        Deadline {
            inner,
            expires: std::sync::Mutex::new(expires),
        }
    }
}

impl hyper::body::Body for Deadline {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let expires = self.expires.get_mut().unwrap_or_else(|p| p.into_inner());
        if expires.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(RouteTimeout.into())));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;
    use http_body_util::BodyExt;

    use super::*;

    /// A body that sends one frame and then never ends.
    fn stalled() -> Body {
        let first: Result<Frame<Bytes>, BoxError> = Ok(Frame::data(Bytes::from_static(b"first")));
        let frames = futures::stream::iter([first]).chain(futures::stream::pending());
        super::super::body::boxed(http_body_util::StreamBody::new(frames))
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_still_streaming_at_the_deadline_fails_with_route_timeout() {
        let start = Instant::now();
        let mut body = Deadline::of(stalled(), start + Duration::from_secs(2));
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "first");
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is::<RouteTimeout>(), "{err}");
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_limit_from_the_requests_end_waits_for_that_end() {
        use super::super::body::{Counted, Received};
        let start = Instant::now();
        let received = std::sync::Arc::new(Received::default());
        let limit = Duration::from_secs(2);
        let mut body = Deadline::after_end(stalled(), received.clone(), limit);
        let _ = body.frame().await.unwrap().unwrap();
        // The request's body ends 5 s in, long after the response began.
        let upload = Counted::new(http_body_util::Full::new(Bytes::from("x")), received);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upload.collect().await.unwrap();
        });
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is::<RouteTimeout>(), "{err}");
        assert_eq!(start.elapsed(), Duration::from_secs(7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_ends_in_time_is_untouched() {
        let full = super::super::body::full("all of it");
        let mut body = Deadline::of(full, Instant::now() + Duration::from_secs(2));
        let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(data, "all of it");
        assert!(body.frame().await.is_none());
    }

    #[test]
    fn a_retry_has_its_per_try_timeout_or_what_is_left() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        let retry = |deadline: Option<Duration>, per_try| {
            retry_timeout(now, deadline.map(|d| now + d), per_try)
        };
        assert_eq!(retry(Some(ms(1200)), Some(ms(1500))), Some(ms(1200)));
        assert_eq!(retry(Some(ms(1200)), Some(ms(500))), Some(ms(500)));
        assert_eq!(retry(Some(ms(1200)), None), Some(ms(1200)));
        assert_eq!(retry(None, Some(ms(500))), Some(ms(500)));
        assert_eq!(retry(None, None), None);
        // Out of time: the least a header can say.
        let passed = retry_timeout(now + ms(10), Some(now), Some(ms(500)));
        assert_eq!(passed, Some(ms(1)));
    }

    #[test]
    fn expected_timeouts_are_whole_milliseconds_and_never_zero() {
        let v = |t: Duration| expected_timeout_value(t).to_str().unwrap().to_string();
        assert_eq!(v(Duration::from_millis(1500)), "1500");
        assert_eq!(v(Duration::from_micros(2_999)), "2");
        assert_eq!(v(Duration::from_micros(300)), "1");
    }

    #[test]
    fn grpc_timeout_values_are_written_as_envoy_writes_them() {
        let v = |t: Duration| grpc_timeout_value(t).to_str().unwrap().to_string();
        assert_eq!(v(Duration::from_millis(2000)), "2000m");
        assert_eq!(v(Duration::from_millis(99_999_999)), "99999999m");
        assert_eq!(v(Duration::from_millis(100_000_000)), "100000S");
        assert_eq!(v(Duration::from_secs(10_000_000_000)), "2777777H");
        assert_eq!(v(Duration::from_secs(u64::MAX)), "99999999H");
    }

    #[test]
    fn a_grpc_timeout_is_read_from_grpc_requests_only() {
        let h = |ct: &str, t: &str| {
            let mut h = hyper::HeaderMap::new();
            h.insert(hyper::header::CONTENT_TYPE, ct.parse().unwrap());
            h.insert("grpc-timeout", t.parse().unwrap());
            grpc_timeout(&h)
        };
        assert_eq!(
            h("application/grpc", "250m"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            h("application/grpc+proto", "2S"),
            Some(Duration::from_secs(2))
        );
        assert_eq!(h("application/grpc", "1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            h("application/grpc", "99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S"] {
            assert_eq!(h("application/grpc", bad), None, "{bad:?}");
        }
        assert_eq!(h("application/json", "250m"), None, "not gRPC");
        for zero in ["0m", "0S", "00H"] {
            assert_eq!(
                h("application/grpc", zero),
                None,
                "{zero}: no deadline, as in Envoy"
            );
        }
    }
}
