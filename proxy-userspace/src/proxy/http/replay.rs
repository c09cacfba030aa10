//! Requests that can be sent more than once (retries and mirrors): the head plus a body
//! buffered up to a limit. A body that outgrows the limit, or is still arriving, is streamed
//! instead, once.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::{
    HeaderMap, Method, Request, Uri, Version,
    body::Frame,
    header::{HeaderName, HeaderValue},
};

use super::{
    Body,
    body::{BoxError, boxed},
    recording::{Recorder, Recording},
};

/// The largest request body kept for retries and mirrors (64 KiB).
pub const RETRY_BUFFER: usize = 64 * 1024;

/// A request whose body is in memory.
#[derive(Clone)]
pub struct Replayable {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

/// Envoy's header telling the upstream which attempt of a request this is.
pub const ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
/// Envoy's `x-forwarded-client-cert`: the identity of the client a request came from over mTLS.
pub const FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// One attempt of a request, as the pool sends it.
pub enum Outgoing<'r> {
    /// Buffered, and borrowed: the HTTP/1.1 client writes the head without copying it.
    /// `attempt` replaces the request's `x-envoy-attempt-count`, `grpc_timeout` its
    /// `grpc-timeout` and `expected_timeout` its `x-envoy-expected-rq-timeout-ms` (the time a
    /// retry has left), and `client_cert` its `x-forwarded-client-cert` (set for the tunnel).
    Buffered {
        req: &'r Replayable,
        attempt: Option<HeaderValue>,
        grpc_timeout: Option<HeaderValue>,
        expected_timeout: Option<HeaderValue>,
        client_cert: Option<HeaderValue>,
    },
    Owned(Request<Body>),
}

impl Outgoing<'_> {
    pub fn head(&self) -> (&Method, &Uri, &HeaderMap) {
        match self {
            Outgoing::Buffered { req, .. } => (&req.method, &req.uri, &req.headers),
            Outgoing::Owned(r) => (r.method(), r.uri(), r.headers()),
        }
    }
}

pub enum Prepared {
    Replayable(Replayable),
    /// Too big to keep, or still arriving: sent as it streams, never mirrored. One still
    /// arriving is recorded as it streams, so a retry can replay it once it has ended within
    /// the limit.
    Streaming(Request<Body>, Option<Recording>),
}

/// Keeps the body for retries when all of it is known: a declared length (Content-Length) up to
/// `limit`, which the client has committed to send and is awaited, or a body of unknown length
/// that has arrived whole by now. Anything else streams upstream from its first byte, sent
/// once: a body declared or found larger than `limit`, and one still arriving (a gRPC stream
/// that waits for replies must not wait for meshd).
pub async fn prepare(
    req: Request<super::body::Inbound>,
    limit: usize,
) -> Result<Prepared, BoxError> {
    let (parts, mut body) = req.into_parts();
    let hint = hyper::body::Body::size_hint(&body);
    if hint.upper().unwrap_or(0) > limit as u64 {
        return Ok(Prepared::Streaming(
            Request::from_parts(parts, boxed(body)),
            None,
        ));
    }
    let declared = hint.exact().is_some();
    let mut data = BytesMut::new();
    let mut trailers = None;
    loop {
        let next = if declared {
            body.frame().await
        } else {
            match super::body::ready_frame(&mut body).await {
                Poll::Ready(next) => next,
                Poll::Pending => {
                    let head = (
                        parts.method.clone(),
                        parts.uri.clone(),
                        parts.version,
                        parts.headers.clone(),
                    );
                    let recording = Recording::new(head, limit);
                    let rest = Recorder {
                        inner: Prefixed {
                            prefix: Some(data.freeze()).filter(|d| !d.is_empty()),
                            rest: body,
                        },
                        recording: recording.clone(),
                    };
                    let req = Request::from_parts(parts, boxed(rest));
                    return Ok(Prepared::Streaming(req, Some(recording)));
                }
            }
        };
        let Some(frame) = next else { break };
        let frame = frame?;
        match frame.into_data() {
            Ok(chunk) => {
                data.extend_from_slice(&chunk);
                if data.len() > limit {
                    let rest = Prefixed {
                        prefix: Some(data.freeze()),
                        rest: body,
                    };
                    let req = Request::from_parts(parts, boxed(rest));
                    return Ok(Prepared::Streaming(req, None));
                }
            }
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    Ok(Prepared::Replayable(Replayable {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        body: data.freeze(),
        trailers,
    }))
}

/// What was read while buffering, followed by the rest of the downstream body.
struct Prefixed {
    prefix: Option<Bytes>,
    rest: super::body::Inbound,
}

impl hyper::body::Body for Prefixed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(p) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }
}
