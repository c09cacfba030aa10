//! A copy of a streamed request body kept as it streams upstream, up to the retry buffer, so
//! a retry can replay the request once its body has ended within it, as Envoy's router
//! buffers a request it streams for its retries.

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use hyper::{HeaderMap, Method, Uri, Version, body::Frame};

use super::replay::Replayable;

/// The request's head and what of its body has passed, shared with the body that records it.
#[derive(Clone)]
pub struct Recording(Arc<Mutex<Recorded>>);

struct Recorded {
    head: (Method, Uri, Version, HeaderMap),
    body: BytesMut,
    trailers: Option<HeaderMap>,
    limit: usize,
    /// The body's last frame has passed.
    ended: bool,
    /// More than `limit` passed: the copy was dropped.
    overflowed: bool,
}

impl Recording {
    pub fn new(head: (Method, Uri, Version, HeaderMap), limit: usize) -> Recording {
        Recording(Arc::new(Mutex::new(Recorded {
            head,
            body: BytesMut::new(),
            trailers: None,
            limit,
            ended: false,
            overflowed: false,
        })))
    }

    /// The whole request, once its body has ended within the limit.
    pub fn whole(&self) -> Option<Replayable> {
        let r = self.0.lock().expect("recording lock");
        if !r.ended || r.overflowed {
            return None;
        }
        let (method, uri, version, headers) = r.head.clone();
        Some(Replayable {
            method,
            uri,
            version,
            headers,
            body: Bytes::copy_from_slice(&r.body),
            trailers: r.trailers.clone(),
        })
    }

    fn note(&self, frame: Option<&Frame<Bytes>>) {
        let mut r = self.0.lock().expect("recording lock");
        if r.overflowed {
            return;
        }
        match frame {
            None => r.ended = true,
            Some(f) => {
                if let Some(data) = f.data_ref() {
                    if r.body.len() + data.len() > r.limit {
                        r.overflowed = true;
                        r.body = BytesMut::new();
                        return;
                    }
                    r.body.extend_from_slice(data);
                } else if let Some(t) = f.trailers_ref() {
                    r.trailers = Some(t.clone());
                    r.ended = true;
                }
            }
        }
    }
}

/// A body that passes `inner` through, noting each frame in its recording.
pub struct Recorder<B> {
    pub inner: B,
    pub recording: Recording,
}

impl<B> hyper::body::Body for Recorder<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let next = Pin::new(&mut self.inner).poll_frame(cx);
        match &next {
            Poll::Ready(Some(Ok(frame))) => self.recording.note(Some(frame)),
            Poll::Ready(None) => self.recording.note(None),
            _ => {}
        }
        next
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    type Frames = Vec<Result<Frame<Bytes>, std::convert::Infallible>>;

    fn head() -> (Method, Uri, Version, HeaderMap) {
        (
            Method::POST,
            Uri::from_static("/upload"),
            Version::HTTP_2,
            HeaderMap::new(),
        )
    }

    async fn pass(frames: Frames, limit: usize) -> Recording {
        let recording = Recording::new(head(), limit);
        let body = Recorder {
            inner: StreamBody::new(futures::stream::iter(frames)),
            recording: recording.clone(),
        };
        let _ = body.collect().await;
        recording
    }

    #[tokio::test]
    async fn a_body_that_ended_within_the_limit_replays_whole() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-timeout", "1S".parse().unwrap());
        let frames = vec![
            Ok(Frame::data(Bytes::from_static(b"hello "))),
            Ok(Frame::data(Bytes::from_static(b"world"))),
            Ok(Frame::trailers(trailers)),
        ];
        let whole = pass(frames, 64).await.whole().expect("whole");
        assert_eq!(whole.body, Bytes::from_static(b"hello world"));
        assert_eq!(whole.method, Method::POST);
        assert!(
            whole
                .trailers
                .is_some_and(|t| t.contains_key("grpc-timeout"))
        );
        let plain = vec![Ok(Frame::data(Bytes::from_static(b"x")))];
        assert!(
            pass(plain, 64).await.whole().is_some(),
            "ended without trailers"
        );
    }

    #[tokio::test]
    async fn a_body_past_the_limit_or_not_ended_does_not_replay() {
        let big = vec![
            Ok(Frame::data(Bytes::from_static(b"12345"))),
            Ok(Frame::data(Bytes::from_static(b"678"))),
        ];
        assert!(pass(big, 6).await.whole().is_none());
        let recording = Recording::new(head(), 64);
        let half = Recorder {
            inner: StreamBody::new(futures::stream::iter(vec![
                Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"part"))),
            ])),
            recording: recording.clone(),
        };
        let mut half = half;
        let _ = half.frame().await;
        assert!(recording.whole().is_none(), "still streaming");
    }
}
