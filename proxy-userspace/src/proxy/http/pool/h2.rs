//! meshd's HTTP/2 upstream client, on the h2 crate. A request's own task opens its stream,
//! writes a buffered body, and awaits the response; only the connection (and a streamed upload)
//! runs as a task of its own. hyper's client spawned a task per request to await the response
//! and passed each request to the connection's task through a channel.

use std::{
    future::poll_fn,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use h2::{
    RecvStream, SendStream,
    client::{self, SendRequest},
};
use hyper::body::Body as _;
use hyper::{
    HeaderMap, Method, Request, Response,
    body::{Frame, SizeHint},
    header::{self, HeaderValue},
};

use super::{Io, Slot};
use crate::proxy::http::{
    Body,
    body::BoxError,
    deadline::{EXPECTED_TIMEOUT, GRPC_TIMEOUT},
    headers::strip_for_http2,
    replay::{ATTEMPT_COUNT, FORWARDED_CLIENT_CERT, Outgoing},
};

// hyper's client defaults, which meshd's HTTP/2 upstreams had before.
const CONN_WINDOW: u32 = 5 * 1024 * 1024;
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const MAX_FRAME: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;
/// The largest response head accepted, as from an HTTP/1.1 upstream (`h1::decode::MAX_HEAD`).
const MAX_HEADER_LIST: u32 = 80 * 1024;
/// Streams opened before the upstream's SETTINGS say how many it allows (RFC 9113 section
/// 6.5.2 recommends no fewer than 100).
pub const INITIAL_MAX_SEND_STREAMS: usize = 100;

/// A connection's sender, ready to open a stream.
pub type Ready = SendRequest<Bytes>;

/// An HTTP/2 connection's sending side; clones share the connection.
#[derive(Clone)]
pub struct Conn {
    sender: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

/// Opens HTTP/2 on `io`. The connection runs as a task of its own, holding `slot` (one of its
/// cluster's connections) until it ends.
pub async fn handshake(io: Box<dyn Io>, slot: Slot) -> Result<Conn, h2::Error> {
    let (sender, conn) = client::Builder::new()
        .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_header_list_size(MAX_HEADER_LIST)
        .enable_push(false)
        // A write to a server that has gone does not end the connection: its last frames,
        // still in the socket, are read first.
        .handshake::<_, Bytes>(super::ends_by_reading::EndsByReading::new(io))
        .await?;
    let closed = Arc::new(AtomicBool::new(false));
    let ended = closed.clone();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
        }
        ended.store(true, Ordering::Release);
        drop(slot);
    });
    Ok(Conn { sender, closed })
}

impl Conn {
    /// Whether the connection has ended, or was found going away by [`Conn::ready`]. A
    /// connection told to go away still carries the streams it has.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// How many streams the upstream allows at once (its SETTINGS_MAX_CONCURRENT_STREAMS);
    /// h2 would queue more, so the pool opens another connection instead.
    pub fn stream_limit(&self) -> u32 {
        u32::try_from(self.sender.current_max_send_streams()).unwrap_or(u32::MAX)
    }

    /// The connection's sender, ready to open a stream. On an error (the upstream sent
    /// GOAWAY, or the connection failed) the connection is marked closed, so the pool drops
    /// it; no stream was opened, so the request may go elsewhere.
    pub async fn ready(&self) -> Result<Ready, h2::Error> {
        let ready = self.sender.clone().ready().await;
        if ready.is_err() {
            self.closed.store(true, Ordering::Release);
        }
        ready
    }
}

/// Sends one request on a ready connection and waits for its response head.
pub async fn send(mut sender: Ready, req: Outgoing<'_>) -> Result<Response<RecvBody>, BoxError> {
    let (head, body) = split(req);
    let head_request = head.method() == Method::HEAD;
    let eos = match &body {
        Outbound::Buffered(data, trailers) => data.is_empty() && trailers.is_none(),
        Outbound::Streamed(b) => b.is_end_stream(),
    };
    let (response, mut tx) = sender.send_request(head, eos)?;
    if !eos {
        match body {
            // At most the retry buffer: h2 holds what the stream's window does not take yet,
            // and sends it as the upstream opens the window.
            Outbound::Buffered(data, trailers) => {
                if !data.is_empty() {
                    tx.send_data(data, trailers.is_none())?;
                }
                if let Some(t) = trailers {
                    tx.send_trailers(t)?;
                }
            }
            Outbound::Streamed(b) => {
                tokio::spawn(async move {
                    if let Err(e) = pipe(b, &mut tx).await {
                        tracing::debug!(error = %e, "streaming a request body upstream failed");
                        tx.send_reset(h2::Reason::CANCEL);
                    }
                });
            }
        }
    }
    let (parts, recv) = response.await?.into_parts();
    let body = RecvBody::new(recv, &parts.headers, head_request);
    Ok(Response::from_parts(parts, body))
}

enum Outbound {
    Buffered(Bytes, Option<HeaderMap>),
    Streamed(Body),
}

/// The request head h2 sends (the URI in absolute form gives `:scheme` and `:authority`), and
/// its body.
fn split(req: Outgoing<'_>) -> (Request<()>, Outbound) {
    let (mut head, body) = match req {
        Outgoing::Buffered {
            req,
            attempt,
            grpc_timeout,
            expected_timeout,
            client_cert,
        } => {
            let mut head = Request::new(());
            *head.method_mut() = req.method.clone();
            *head.uri_mut() = req.uri.clone();
            *head.headers_mut() = req.headers.clone();
            if let Some(a) = attempt {
                head.headers_mut().insert(ATTEMPT_COUNT, a);
            }
            if let Some(t) = grpc_timeout {
                head.headers_mut().insert(GRPC_TIMEOUT, t);
            }
            if let Some(t) = expected_timeout {
                head.headers_mut().insert(EXPECTED_TIMEOUT, t);
            }
            if let Some(c) = client_cert {
                head.headers_mut().insert(FORWARDED_CLIENT_CERT, c);
            }
            (
                head,
                Outbound::Buffered(req.body.clone(), req.trailers.clone()),
            )
        }
        Outgoing::Owned(r) => {
            let (parts, body) = r.into_parts();
            (Request::from_parts(parts, ()), Outbound::Streamed(body))
        }
    };
    *head.version_mut() = hyper::Version::HTTP_2;
    strip_for_http2(head.headers_mut());
    // A body of known length declares it, as hyper's client did: HTTP/2 clients often send
    // none, and some upstreams need it (an HTTP/1.1 hop behind them, or a 411).
    let length = match &body {
        Outbound::Buffered(data, _) => Some(data.len() as u64),
        Outbound::Streamed(b) => b.size_hint().exact(),
    };
    if let Some(n) = length
        && (n > 0 || !matches!(*head.method(), Method::GET | Method::HEAD | Method::DELETE))
        && !head.headers().contains_key(header::CONTENT_LENGTH)
    {
        head.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    (head, body)
}

/// Streams a body too large to buffer, within the stream's flow control, as hyper's client
/// does: a chunk waits until the upstream has opened some window, and the upload stops when
/// the upstream resets the stream.
async fn pipe(mut body: Body, tx: &mut SendStream<Bytes>) -> Result<(), BoxError> {
    loop {
        let frame = poll_fn(|cx| match tx.poll_reset(cx) {
            Poll::Ready(reset) => Poll::Ready(Err(reset)),
            Poll::Pending => Pin::new(&mut body).poll_frame(cx).map(Ok),
        })
        .await;
        let frame = match frame {
            Ok(frame) => frame,
            // The upstream answered without the rest of the body, and asks for no more (RFC
            // 9113 section 8.1).
            Err(Ok(h2::Reason::NO_ERROR)) => return Ok(()),
            Err(Ok(reason)) => return Err(h2::Error::from(reason).into()),
            Err(Err(e)) => return Err(e.into()),
        };
        let Some(frame) = frame else {
            tx.send_data(Bytes::new(), true)?;
            return Ok(());
        };
        match frame?.into_data() {
            Ok(data) => {
                let eos = body.is_end_stream();
                if !data.is_empty() {
                    // A claim of one byte, not the chunk's length: h2 raises it to what is
                    // buffered, and a full claim could pin the connection's window.
                    tx.reserve_capacity(1);
                    while tx.capacity() == 0 {
                        match poll_fn(|cx| tx.poll_capacity(cx)).await {
                            Some(Ok(_)) => {}
                            Some(Err(e)) => return Err(e.into()),
                            None => return Err("the upstream stream closed".into()),
                        }
                    }
                }
                if !data.is_empty() || eos {
                    tx.send_data(data, eos)?;
                }
                if eos {
                    return Ok(());
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    tx.reserve_capacity(0);
                    tx.send_trailers(t)?;
                    return Ok(());
                }
            }
        }
    }
}

/// A response body from an HTTP/2 upstream: its data, with the window given back as it is
/// read, then its trailers.
pub struct RecvBody {
    recv: RecvStream,
    data_done: bool,
    /// Content-Length less what has arrived, when the response declared one.
    remaining: Option<u64>,
}

impl RecvBody {
    /// `head_request`: the response to a HEAD, whose Content-Length describes no body here.
    fn new(recv: RecvStream, head: &HeaderMap, head_request: bool) -> RecvBody {
        let remaining = if head_request || recv.is_end_stream() {
            Some(0)
        } else {
            head.get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        };
        RecvBody {
            recv,
            data_done: false,
            remaining,
        }
    }
}

impl hyper::body::Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match self.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    if let Some(r) = self.remaining.as_mut() {
                        *r = r.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => self.data_done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        match self.recv.poll_trailers(cx) {
            Poll::Ready(Ok(Some(t))) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Poll::Ready(Ok(None)) => Poll::Ready(None),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.remaining
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::http::replay::Replayable;
    use hyper::header::HeaderName;

    fn buffered(method: Method, body: &'static str, headers: &[(&str, &str)]) -> Replayable {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        Replayable {
            method,
            uri: "http://reviews:9080/x".parse().unwrap(),
            version: hyper::Version::HTTP_2,
            headers: h,
            body: Bytes::from_static(body.as_bytes()),
            trailers: None,
        }
    }

    fn head_of(r: &Replayable) -> Request<()> {
        split(Outgoing::Buffered {
            req: r,
            attempt: None,
            grpc_timeout: None,
            expected_timeout: None,
            client_cert: None,
        })
        .0
    }

    #[test]
    fn a_buffered_body_declares_its_length() {
        let post = head_of(&buffered(Method::POST, "abc", &[]));
        assert_eq!(post.headers()[header::CONTENT_LENGTH], "3");
        let empty_post = head_of(&buffered(Method::POST, "", &[]));
        assert_eq!(empty_post.headers()[header::CONTENT_LENGTH], "0");
        let get = head_of(&buffered(Method::GET, "", &[]));
        assert!(!get.headers().contains_key(header::CONTENT_LENGTH));
        let declared = head_of(&buffered(Method::PUT, "abc", &[("content-length", "3")]));
        assert_eq!(
            declared
                .headers()
                .get_all(header::CONTENT_LENGTH)
                .iter()
                .count(),
            1
        );
    }

    #[test]
    fn what_http2_forbids_is_removed_and_the_rest_stays() {
        let head = head_of(&buffered(
            Method::GET,
            "",
            &[
                ("connection", "x-hop"),
                ("x-hop", "1"),
                ("keep-alive", "timeout=5"),
                ("transfer-encoding", "chunked"),
                ("upgrade", "websocket"),
                ("te", "gzip"),
                ("proxy-authorization", "Basic set-by-a-virtualservice"),
                ("x-end-to-end", "1"),
            ],
        ));
        let names: Vec<&str> = head.headers().keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["proxy-authorization", "x-end-to-end"]);
        let grpc = head_of(&buffered(Method::POST, "", &[("te", "trailers")]));
        assert_eq!(grpc.headers()[header::TE], "trailers");
    }

    #[test]
    fn the_attempt_count_and_client_certificate_replace_the_requests_own() {
        let r = buffered(
            Method::GET,
            "",
            &[
                ("x-envoy-attempt-count", "1"),
                ("x-forwarded-client-cert", "forged"),
            ],
        );
        let (head, _) = split(Outgoing::Buffered {
            req: &r,
            attempt: Some(HeaderValue::from_static("2")),
            grpc_timeout: Some(HeaderValue::from_static("750m")),
            expected_timeout: None,
            client_cert: Some(HeaderValue::from_static("By=spiffe://b")),
        });
        assert_eq!(head.headers()[ATTEMPT_COUNT], "2");
        assert_eq!(head.headers()[GRPC_TIMEOUT], "750m");
        let certs: Vec<_> = head
            .headers()
            .get_all(FORWARDED_CLIENT_CERT)
            .iter()
            .collect();
        assert_eq!(certs, ["By=spiffe://b"]);
    }
}
