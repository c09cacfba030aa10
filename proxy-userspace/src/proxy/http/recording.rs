//! A copy of a streamed request body kept as it streams upstream, up to the retry buffer, so
//! a retry can replay the request once its body has ended within it, as Envoy's router
//! buffers a request it streams for its retries, and a mirror can send its copy then.

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
    /// The body was dropped before its end: the request was abandoned.
    abandoned: bool,
    /// Woken (their senders dropped) when the recording settles: whole, overflowed or
    /// abandoned.
    waiters: Vec<tokio::sync::oneshot::Sender<()>>,
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
            abandoned: false,
            waiters: Vec::new(),
        })))
    }

    /// The whole request once the recording settles: `None` when the body passed the limit
    /// or was dropped before its end.
    pub async fn settled(&self) -> Option<Replayable> {
        let wait = {
            let mut r = self.0.lock().expect("recording lock");
            if r.settled() {
                None
            } else {
                let (tx, rx) = tokio::sync::oneshot::channel();
                r.waiters.push(tx);
                Some(rx)
            }
        };
        if let Some(rx) = wait {
            let _ = rx.await;
        }
        self.whole()
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
        r.take(frame);
        if r.settled() {
            r.waiters.clear();
        }
    }
}

impl Recorded {
    fn settled(&self) -> bool {
        self.ended || self.overflowed || self.abandoned
    }

    /// Notes one frame, or the end (`None`).
    fn take(&mut self, frame: Option<&Frame<Bytes>>) {
        match frame {
            None => self.ended = true,
            Some(f) => {
                if let Some(data) = f.data_ref() {
                    if self.body.len() + data.len() > self.limit {
                        self.overflowed = true;
                        self.body = BytesMut::new();
                        return;
                    }
                    self.body.extend_from_slice(data);
                } else if let Some(t) = f.trailers_ref() {
                    self.trailers = Some(t.clone());
                    self.ended = true;
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

impl<B> Drop for Recorder<B> {
    fn drop(&mut self) {
        let mut r = self.recording.0.lock().expect("recording lock");
        if !r.settled() {
            r.abandoned = true;
        }
        r.waiters.clear();
    }
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
            Poll::Ready(Some(Ok(frame))) => {
                self.recording.note(Some(frame));
                // A reader may stop at the last frame without asking for the end.
                if self.inner.is_end_stream() {
                    self.recording.note(None);
                }
            }
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

    use std::convert::Infallible;

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

    #[tokio::test]
    async fn settled_waits_for_the_end_and_gives_up_on_an_abandoned_body() {
        let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Frame<Bytes>, Infallible>>();
        let recording = Recording::new(head(), 64);
        let mut body = Recorder {
            inner: StreamBody::new(rx),
            recording: recording.clone(),
        };
        let waiting = tokio::spawn({
            let recording = recording.clone();
            async move { recording.settled().await }
        });
        tx.unbounded_send(Ok(Frame::data(Bytes::from_static(b"late"))))
            .unwrap();
        let _ = body.frame().await;
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the body has not ended");
        drop(tx);
        assert!(body.frame().await.is_none());
        let whole = waiting.await.unwrap().expect("whole once ended");
        assert_eq!(whole.body, Bytes::from_static(b"late"));

        let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Frame<Bytes>, Infallible>>();
        let recording = Recording::new(head(), 64);
        let body = Recorder {
            inner: StreamBody::new(rx),
            recording: recording.clone(),
        };
        let waiting = tokio::spawn({
            let recording = recording.clone();
            async move { recording.settled().await }
        });
        tokio::task::yield_now().await;
        drop(body);
        assert!(waiting.await.unwrap().is_none(), "abandoned before its end");
        drop(tx);
    }
}
