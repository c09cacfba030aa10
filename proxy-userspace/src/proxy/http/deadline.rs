//! The route timeout over the response body: Envoy's route `timeout` lasts until the response
//! is complete, so a response still streaming when it expires is cut off (flag UT).

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::body::{Body, BoxError};

/// The error a response body ends with when the route timeout expires during it.
#[derive(Debug, thiserror::Error)]
#[error("the route timeout expired during the response")]
pub struct RouteTimeout;

/// A response body that fails with [`RouteTimeout`] if it has not ended by `deadline`.
pub struct Deadline {
    inner: Body,
    expires: Pin<Box<Sleep>>,
}

impl Deadline {
    pub fn new(inner: Body, deadline: Instant) -> Deadline {
        Deadline {
            inner,
            expires: Box::pin(tokio::time::sleep_until(deadline)),
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
        if self.expires.as_mut().poll(cx).is_ready() {
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
        let mut body = Deadline::new(stalled(), start + Duration::from_secs(2));
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "first");
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is::<RouteTimeout>(), "{err}");
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_ends_in_time_is_untouched() {
        let full = super::super::body::full("all of it");
        let mut body = Deadline::new(full, Instant::now() + Duration::from_secs(2));
        let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(data, "all of it");
        assert!(body.frame().await.is_none());
    }
}
