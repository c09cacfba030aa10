//! The body type the pipeline forwards: any streaming body, boxed, so downstream and synthetic
//! bodies share one type.

use std::{future::poll_fn, pin::Pin, task::Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

pub fn boxed<B>(b: B) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    b.map_err(Into::into).boxed()
}

pub fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A body that keeps `T` (a guard) alive until the body is done with or dropped.
pub struct Holding<B, T> {
    inner: B,
    _held: T,
}

impl<B, T> Holding<B, T> {
    pub fn new(inner: B, held: T) -> Self {
        Holding { inner, _held: held }
    }
}

impl<B, T> hyper::body::Body for Holding<B, T>
where
    B: hyper::body::Body + Unpin,
    T: Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// What a response body tells whoever records its request: each data frame's length, the
/// trailers, how it failed, and whether it was dropped before its end (the client left).
pub trait Observer {
    fn data(&mut self, len: usize);
    /// A data frame's bytes (for what reads into them, a gRPC message count); its length by
    /// default.
    fn data_frame(&mut self, data: &[u8]) {
        self.data(data.len());
    }
    fn trailers(&mut self, trailers: &hyper::HeaderMap);
    fn failed(&mut self, error: &BoxError);
    fn abandoned(&mut self);
}

/// A response body that reports to its observer as it is read; the observer is dropped with
/// the body, when it is done or abandoned, so a record written on drop covers the whole body.
pub struct Observed<O: Observer> {
    inner: Body,
    observer: O,
    done: bool,
}

impl<O: Observer> Observed<O> {
    pub fn new(inner: Body, observer: O) -> Observed<O> {
        let done = hyper::body::Body::is_end_stream(&inner);
        Observed {
            inner,
            observer,
            done,
        }
    }
}

impl<O: Observer + Unpin> hyper::body::Body for Observed<O> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.observer.data_frame(d);
                } else if let Some(t) = frame.trailers_ref() {
                    this.observer.trailers(t);
                }
            }
            Poll::Ready(None) => this.done = true,
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                this.observer.failed(e);
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl<O: Observer> Drop for Observed<O> {
    fn drop(&mut self) {
        if !self.done && !hyper::body::Body::is_end_stream(&self.inner) {
            self.observer.abandoned();
        }
    }
}

/// The downstream request body as the pipeline reads it: counted as it is read, so a record
/// has the bytes received whether or not the request declared a Content-Length.
pub type Inbound = Counted<hyper::body::Incoming>;

/// How the client failed its request body: a failure that is the client's, never the
/// upstream's (no 503 UC, no outlier detection strike).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientFailure {
    /// The client went away (closed or reset) before the body ended.
    Disconnected,
    /// The body broke the protocol: a bad chunk, a length mismatch, an HTTP/2 stream error.
    Malformed,
}

impl ClientFailure {
    /// Reads a request body's error: a malformed body is an I/O error of kind `InvalidInput`
    /// or `InvalidData` (hyper's HTTP/1 decoder) or an HTTP/2 protocol error; anything else
    /// (end of file, reset, cancel) is the client leaving.
    pub fn of(e: &(dyn std::error::Error + 'static)) -> ClientFailure {
        let mut next = Some(e);
        while let Some(e) = next {
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && matches!(
                    io.kind(),
                    std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
                )
            {
                return ClientFailure::Malformed;
            }
            if let Some(h2) = e.downcast_ref::<h2::Error>()
                && h2
                    .reason()
                    .is_some_and(|r| r != h2::Reason::CANCEL && r != h2::Reason::NO_ERROR)
            {
                return ClientFailure::Malformed;
            }
            next = e.source();
        }
        ClientFailure::Disconnected
    }
}

/// What the client's request body has delivered: its bytes so far, and whether it failed.
#[derive(Default)]
pub struct Received {
    bytes: std::sync::atomic::AtomicU64,
    /// The gRPC messages whose prefix passed, when counted (`Counted::counting_messages`).
    messages: std::sync::atomic::AtomicU64,
    /// 0 while the body is sound, else 1 + the `ClientFailure`.
    failure: std::sync::atomic::AtomicU8,
    /// When the body ended (its last frame read), once it has.
    ended: std::sync::OnceLock<tokio::time::Instant>,
    ending: tokio::sync::Notify,
    /// Whether anyone waits for the end: most requests' bodies end unwatched, without a lock.
    watched: std::sync::atomic::AtomicBool,
}

impl Received {
    pub fn bytes(&self) -> u64 {
        self.bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The gRPC messages the body carried so far (0 unless counted).
    pub fn messages(&self) -> u64 {
        self.messages.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts bytes the request delivered past its body: an upgraded connection's.
    pub fn add(&self, n: u64) {
        self.bytes
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// When the body ended, if it has.
    pub fn ended_at(&self) -> Option<tokio::time::Instant> {
        self.ended.get().copied()
    }

    /// Waits for the body's end; pending for ever if it fails instead.
    pub async fn ended(&self) -> tokio::time::Instant {
        self.watched
            .store(true, std::sync::atomic::Ordering::SeqCst);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        loop {
            let ending = self.ending.notified();
            tokio::pin!(ending);
            ending.as_mut().enable();
            if let Some(end) = self.ended_at() {
                return end;
            }
            ending.await;
        }
    }

    fn end(&self) {
        // The end is set before `watched` is read, and `watched` before a waiter reads the
        // end: either this wakes the waiter or the waiter sees the end.
        if self.ended.set(tokio::time::Instant::now()).is_ok() {
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            if self.watched.load(std::sync::atomic::Ordering::SeqCst) {
                self.ending.notify_waiters();
            }
        }
    }

    /// How the body failed, once it has.
    pub fn failure(&self) -> Option<ClientFailure> {
        match self.failure.load(std::sync::atomic::Ordering::Acquire) {
            0 => None,
            1 => Some(ClientFailure::Disconnected),
            _ => Some(ClientFailure::Malformed),
        }
    }
}

/// A body that adds the length of every data frame it yields to a shared counter, and records
/// how it failed, if it does.
pub struct Counted<B> {
    inner: B,
    received: std::sync::Arc<Received>,
    /// A gRPC request's message framing, when its messages are counted.
    messages: Option<Box<super::grpc_messages::GrpcMessages>>,
}

impl<B> Counted<B> {
    pub fn new(inner: B, received: std::sync::Arc<Received>) -> Self {
        Counted {
            inner,
            received,
            messages: None,
        }
    }

    /// Counts the body's gRPC messages too (`Received::messages`).
    pub fn counting_messages(mut self) -> Self {
        self.messages = Some(Box::default());
        self
    }

    /// What this body has delivered, shared.
    pub fn received(&self) -> &std::sync::Arc<Received> {
        &self.received
    }
}

impl<B> hyper::body::Body for Counted<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::error::Error + 'static,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, B::Error>>> {
        let mut polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &mut polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.received
                        .bytes
                        .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    let this = &mut *self;
                    if let Some(m) = &mut this.messages {
                        let before = m.count;
                        m.feed(data);
                        (this.received.messages)
                            .fetch_add(m.count - before, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                // Trailers are the body's last frame, whether or not the body says so yet.
                let trailers = frame.trailers_mut();
                let is_trailers = trailers.is_some();
                if let Some(t) = trailers {
                    super::headers::strip_from_trailers(t);
                }
                if is_trailers || self.inner.is_end_stream() {
                    self.received.end();
                }
            }
            std::task::Poll::Ready(None) => self.received.end(),
            std::task::Poll::Ready(Some(Err(e))) => {
                let code = 1 + ClientFailure::of(e) as u8;
                self.received
                    .failure
                    .store(code, std::sync::atomic::Ordering::Release);
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The body's next frame if one is ready now, without waiting for more to arrive: `Pending`
/// when none is.
pub async fn ready_frame<B>(
    body: &mut B,
) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>>
where
    B: hyper::body::Body + Unpin,
{
    poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Frames handed out one per poll.
    struct Frames(std::collections::VecDeque<hyper::body::Frame<Bytes>>);

    impl hyper::body::Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    #[tokio::test]
    async fn counted_bodies_count_every_data_frame() {
        let frames = Frames(
            [
                hyper::body::Frame::data(Bytes::from_static(b"hello ")),
                hyper::body::Frame::data(Bytes::from_static(b"world")),
                hyper::body::Frame::trailers(Default::default()),
            ]
            .into(),
        );
        let received = Arc::new(Received::default());
        let collected = Counted::new(frames, received.clone())
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&collected[..], b"hello world");
        assert_eq!(received.bytes(), 11);
        assert_eq!(received.failure(), None);
    }

    #[tokio::test]
    async fn trailers_end_the_body_without_what_must_not_be_in_them() {
        let mut t = hyper::HeaderMap::new();
        t.insert("x-checksum", "abc".parse().unwrap());
        t.insert("content-length", "50".parse().unwrap());
        t.insert("host", "evil.test".parse().unwrap());
        let frames = Frames(
            [
                hyper::body::Frame::data(Bytes::from_static(b"x")),
                hyper::body::Frame::trailers(t),
            ]
            .into(),
        );
        let received = Arc::new(Received::default());
        let mut body = Counted::new(frames, received.clone());
        let _ = body.frame().await.unwrap().unwrap();
        assert_eq!(received.ended_at(), None);
        let last = body.frame().await.unwrap().unwrap();
        // Ended at the trailers, before the body is polled for its end.
        assert!(received.ended_at().is_some());
        let t = last.into_trailers().unwrap();
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(t["x-checksum"], "abc");
    }

    #[tokio::test]
    async fn a_waiter_learns_when_the_body_ends() {
        let received = Arc::new(Received::default());
        let waiter = tokio::spawn({
            let received = received.clone();
            async move { received.ended().await }
        });
        tokio::task::yield_now().await;
        assert_eq!(received.ended_at(), None);
        let frames = Frames([hyper::body::Frame::data(Bytes::from_static(b"x"))].into());
        Counted::new(frames, received.clone())
            .collect()
            .await
            .unwrap();
        let end = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(received.ended_at(), Some(end));
    }

    /// A body that fails with `e` after one data frame.
    struct Failing(Option<std::io::Error>);

    impl hyper::body::Body for Failing {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Ready(self.0.take().map(Err))
        }
    }

    #[tokio::test]
    async fn counted_bodies_record_how_the_client_failed_them() {
        use std::io::{Error, ErrorKind};
        for (kind, failure) in [
            (ErrorKind::InvalidInput, ClientFailure::Malformed),
            (ErrorKind::InvalidData, ClientFailure::Malformed),
            (ErrorKind::UnexpectedEof, ClientFailure::Disconnected),
            (ErrorKind::ConnectionReset, ClientFailure::Disconnected),
        ] {
            let received = Arc::new(Received::default());
            let body = Counted::new(Failing(Some(Error::new(kind, "x"))), received.clone());
            assert!(body.collect().await.is_err());
            assert_eq!(received.failure(), Some(failure), "{kind:?}");
        }
        // Wrapped, as hyper wraps its decoder's errors: the cause is the source.
        #[derive(Debug)]
        struct Wrapped(Error);
        impl std::fmt::Display for Wrapped {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("error reading a body from connection")
            }
        }
        impl std::error::Error for Wrapped {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let outer = Wrapped(Error::new(ErrorKind::InvalidInput, "bad chunk size"));
        assert_eq!(ClientFailure::of(&outer), ClientFailure::Malformed);
        let cancel = h2::Error::from(h2::Reason::CANCEL);
        assert_eq!(ClientFailure::of(&cancel), ClientFailure::Disconnected);
        let protocol = h2::Error::from(h2::Reason::PROTOCOL_ERROR);
        assert_eq!(ClientFailure::of(&protocol), ClientFailure::Malformed);
    }
}
