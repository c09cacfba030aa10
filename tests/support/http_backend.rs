//! A hyper backend for the L7 tests: HTTP/1.1 and h2c on one port. It answers
//! `/status/NNN` with that status, `/sleep/MS` after MS milliseconds, `/slow-503/MS` with 503
//! after MS milliseconds, `/drip/MS` with one line at once and another MS milliseconds later,
//! `/whoami` with the HTTP version and the upstream connection's
//! peer address, `/echo` with the length and byte sum of the request body (kept for a mirrored
//! copy), `/bytes/N` with N
//! bytes, `/goaway` by shutting its connection down gracefully (HTTP/2 GOAWAY) after the
//! streams open on it, and an `Upgrade: echo` request with 101, then the `/whoami` line of that
//! request, then echoes bytes. It counts the
//! connections it accepted and those open, so tests can see meshd's connection reuse and
//! closes.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct HttpBackend {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// Connections open now.
    open: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    state: Arc<State>,
    _rt: tokio::runtime::Runtime,
}

/// One open connection, counted while it lives.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(count: &Arc<AtomicUsize>) -> Open {
        count.fetch_add(1, Ordering::SeqCst);
        Open(count.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the backend saw, for assertions.
#[derive(Default)]
struct State {
    /// Requests per path, for `/fail-first/N`.
    per_path: Mutex<HashMap<String, usize>>,
    shadow: AtomicUsize,
    /// The `/echo` answers to mirrored copies.
    shadow_echoes: Mutex<Vec<String>>,
    max_attempt: AtomicUsize,
    /// `/sleep/MS` requests being answered now, and the most at once.
    sleeping: AtomicUsize,
    most_sleeping: AtomicUsize,
}

impl HttpBackend {
    pub fn start(bind: &str) -> HttpBackend {
        HttpBackend::start_with(bind, None)
    }

    /// A backend whose HTTP/2 SETTINGS allow `streams` concurrent streams per connection.
    pub fn with_h2_stream_limit(bind: &str, streams: u32) -> HttpBackend {
        HttpBackend::start_with(bind, Some(streams))
    }

    fn start_with(bind: &str, h2_streams: Option<u32>) -> HttpBackend {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind(bind)).unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (acc, reqs, opened) = (accepted.clone(), requests.clone(), open.clone());
        let state = Arc::new(State::default());
        let st = state.clone();
        rt.spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                acc.fetch_add(1, Ordering::SeqCst);
                let reqs = reqs.clone();
                let st = st.clone();
                let open = Open::new(&opened);
                tokio::spawn(async move {
                    let _open = open;
                    let goaway = Arc::new(tokio::sync::Notify::new());
                    let told = goaway.clone();
                    let svc = service_fn(move |req| {
                        reqs.fetch_add(1, Ordering::SeqCst);
                        if req.uri().path() == "/goaway" {
                            told.notify_one();
                        }
                        answer(req, peer, st.clone())
                    });
                    let mut builder = auto::Builder::new(TokioExecutor::new());
                    // Large headers are for meshd to judge, not this backend (h2's default
                    // is 16 KiB).
                    builder.http2().max_header_list_size(1 << 20);
                    // Unlimited streams unless a test asks for a limit (hyper's default is
                    // 200).
                    builder.http2().max_concurrent_streams(h2_streams);
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        // A graceful shutdown: HTTP/2 GOAWAY, and the streams already open
                        // are still answered.
                        _ = goaway.notified() => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            }
        });
        HttpBackend {
            addr,
            accepted,
            open,
            requests,
            state,
            _rt: rt,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections open now (closed by either side once the backend has seen the close).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Requests whose Host ended in `-shadow` (mirrored copies).
    pub fn shadow_requests(&self) -> usize {
        self.state.shadow.load(Ordering::SeqCst)
    }

    /// What `/echo` answered each mirrored copy: `{"length":..,"sum":..,"trailers":[..]}`.
    pub fn shadow_echoes(&self) -> Vec<String> {
        self.state.shadow_echoes.lock().unwrap().clone()
    }

    /// `/sleep/MS` requests being answered now.
    pub fn sleeping(&self) -> usize {
        self.state.sleeping.load(Ordering::SeqCst)
    }

    /// The most `/sleep/MS` requests it was answering at once.
    pub fn most_concurrent_sleeps(&self) -> usize {
        self.state.most_sleeping.load(Ordering::SeqCst)
    }

    /// The highest `x-envoy-attempt-count` seen.
    pub fn max_attempt(&self) -> usize {
        self.state.max_attempt.load(Ordering::SeqCst)
    }
}

type Reply = Response<BoxBody<Bytes, Infallible>>;

/// A gRPC reply: one empty length-prefixed message, then trailers with `grpc-status`.
fn grpc_reply(code: u32) -> Reply {
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("grpc-status", code.into());
    trailers.insert("grpc-message", "from the backend".parse().unwrap());
    let body = Full::new(Bytes::from_static(&[0, 0, 0, 0, 0]))
        .with_trailers(async move { Some(Ok(trailers)) });
    Response::builder()
        .header("content-type", "application/grpc")
        .body(body.boxed())
        .unwrap()
}

async fn answer(
    req: Request<Incoming>,
    peer: SocketAddr,
    st: Arc<State>,
) -> Result<Reply, Infallible> {
    if let Some(code) = req
        .uri()
        .path()
        .strip_prefix("/grpc/")
        .and_then(|c| c.parse::<u32>().ok())
    {
        return Ok(grpc_reply(code));
    }
    // A trailers-only gRPC answer: grpc-status in the head, no body.
    if let Some(code) = req
        .uri()
        .path()
        .strip_prefix("/grpc-only/")
        .and_then(|c| c.parse::<u32>().ok())
    {
        return Ok(Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", code)
            .header("grpc-message", "from the backend")
            .body(Full::new(Bytes::new()).boxed())
            .unwrap());
    }
    // `/bytes-echo`: the request body's bytes, as they came (a gRPC request's messages come
    // back as its response's).
    if req.uri().path() == "/bytes-echo" {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Ok(Response::new(Full::new(body).boxed()));
    }
    if req.uri().path() == "/echo" {
        let shadow = is_shadow(&req);
        let reply = echo(req).await;
        if shadow {
            st.shadow.fetch_add(1, Ordering::SeqCst);
            let text = reply.into_body().collect().await.unwrap().to_bytes();
            let text = String::from_utf8_lossy(&text).trim().to_string();
            st.shadow_echoes.lock().unwrap().push(text.clone());
            return Ok(Response::new(Full::new(Bytes::from(text)).boxed()));
        }
        return Ok(reply);
    }
    // `/echo-fail-first/N`: the echo, after reading the whole body, with 503 for the first N.
    if let Some(n) =
        (req.uri().path().strip_prefix("/echo-fail-first/")).and_then(|n| n.parse::<usize>().ok())
    {
        let seen = {
            let mut m = st.per_path.lock().unwrap();
            let c = m.entry(req.uri().path().to_string()).or_default();
            *c += 1;
            *c
        };
        let mut reply = echo(req).await;
        if seen <= n {
            *reply.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
        }
        return Ok(reply);
    }
    if let Some(ms) = req
        .uri()
        .path()
        .strip_prefix("/drip/")
        .and_then(|n| n.parse::<u64>().ok())
    {
        return Ok(Response::new(Drip::new(ms).boxed()));
    }
    if let Some(n) = req
        .uri()
        .path()
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<usize>().ok())
    {
        let body: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
        return Ok(Response::new(Full::new(Bytes::from(body)).boxed()));
    }
    let resp = answer_plain(req, peer, st).await?;
    Ok(resp.map(|b| b.boxed()))
}

/// `/drip/MS`: "first" at once, then "second" MS milliseconds later, then the end.
struct Drip {
    sent: u8,
    pause: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl Drip {
    fn new(ms: u64) -> Drip {
        Drip {
            sent: 0,
            pause: Box::pin(tokio::time::sleep(std::time::Duration::from_millis(ms))),
        }
    }
}

impl hyper::body::Body for Drip {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        use std::{future::Future, task::Poll};
        let chunk = match self.sent {
            0 => "first\n",
            1 => match self.pause.as_mut().poll(cx) {
                Poll::Ready(()) => "second\n",
                Poll::Pending => return Poll::Pending,
            },
            _ => return Poll::Ready(None),
        };
        self.sent += 1;
        Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from_static(
            chunk.as_bytes(),
        )))))
    }
}

/// Reads the whole request body: answers its length, a checksum (the sum of its bytes), and
/// the names of its trailers.
async fn echo(req: Request<Incoming>) -> Reply {
    let (mut len, mut sum, mut trailers) = (0u64, 0u64, Vec::new());
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Response::builder()
                .status(400)
                .body(Full::new(Bytes::from("body failed\n")).boxed())
                .unwrap();
        };
        match frame.into_data() {
            Ok(d) => {
                len += d.len() as u64;
                sum += d.iter().map(|b| u64::from(*b)).sum::<u64>();
            }
            Err(f) => {
                if let Ok(t) = f.into_trailers() {
                    trailers.extend(t.keys().map(|k| k.to_string()));
                }
            }
        }
    }
    let text = format!("{{\"length\":{len},\"sum\":{sum},\"trailers\":{trailers:?}}}\n");
    Response::new(Full::new(Bytes::from(text)).boxed())
}

/// Whether the request's Host (or HTTP/2 authority) ends in `-shadow`: a mirrored copy.
fn is_shadow(req: &Request<Incoming>) -> bool {
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    host.split(':').next().unwrap_or("").ends_with("-shadow")
}

async fn answer_plain(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    st: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    if is_shadow(&req) {
        st.shadow.fetch_add(1, Ordering::SeqCst);
    }
    if let Some(n) = req
        .headers()
        .get("x-envoy-attempt-count")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
    {
        st.max_attempt.fetch_max(n, Ordering::SeqCst);
    }
    let seen = {
        let mut m = st.per_path.lock().unwrap();
        let c = m.entry(path.clone()).or_default();
        *c += 1;
        *c
    };
    if let Some(ms) = path
        .strip_prefix("/sleep/")
        .or_else(|| path.strip_prefix("/slow-503/"))
        .and_then(|m| m.parse::<u64>().ok())
    {
        let now = st.sleeping.fetch_add(1, Ordering::SeqCst) + 1;
        st.most_sleeping.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        st.sleeping.fetch_sub(1, Ordering::SeqCst);
    }
    if path.starts_with("/slow-503/") {
        return Ok(Response::builder()
            .status(503)
            .body(Full::new(Bytes::from("failing slowly on purpose\n")))
            .unwrap());
    }
    // The first request waits the given milliseconds and fails; the rest are answered.
    if let Some(ms) = (path.strip_prefix("/slow-fail-first/")).and_then(|m| m.parse::<u64>().ok())
        && seen == 1
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        return Ok(Response::builder()
            .status(503)
            .body(Full::new(Bytes::from("failing slowly once on purpose\n")))
            .unwrap());
    }
    if let Some(n) = path
        .strip_prefix("/fail-first/")
        .and_then(|n| n.parse::<usize>().ok())
        && seen <= n
    {
        return Ok(Response::builder()
            .status(503)
            .body(Full::new(Bytes::from("failing on purpose\n")))
            .unwrap());
    }
    // Any upgrade is accepted, echoing its protocol: what is refused, meshd refuses.
    if let Some(protocol) = req.headers().get("upgrade").cloned() {
        let seen = whoami(&req, peer);
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                // What the upgrade request carried, then the echo.
                if io.write_all(seen.as_bytes()).await.is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        return Ok(Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", protocol)
            .body(Full::new(Bytes::new()))
            .unwrap());
    }
    if let Some(code) = path
        .strip_prefix("/status/")
        .and_then(|c| c.parse::<u16>().ok())
    {
        return Ok(Response::builder()
            .status(code)
            .body(Full::new(Bytes::from(format!("status {code}\n"))))
            .unwrap());
    }
    Ok(Response::new(Full::new(Bytes::from(whoami(&req, peer)))))
}

/// The `/whoami` answer: one JSON line of what the request looked like on arrival.
fn whoami<B>(req: &Request<B>, peer: SocketAddr) -> String {
    format!(
        "{{\"version\":\"{:?}\",\"peer\":\"{peer}\",\"uri\":\"{}\",\"path\":\"{}\",\"x_route\":\"{}\",\"traceparent\":\"{}\",\"host\":\"{}\",\"expect\":\"{}\",\"x_envoy\":\"{}\",\"xfcc\":\"{}\",\"cookie\":\"{}\",\"grpc_timeout\":\"{}\",\"expected_timeout\":\"{}\",\"original_path\":\"{}\"}}\n",
        req.version(),
        // The request target as received: origin-form for HTTP/1.1 through a proxy.
        req.uri(),
        req.uri().path_and_query().map(|p| p.as_str()).unwrap_or(""),
        req.headers()
            .get("x-route")
            .and_then(|h| h.to_str().ok())
            .unwrap_or(""),
        req.headers()
            .get("traceparent")
            .and_then(|h| h.to_str().ok())
            .unwrap_or(""),
        req.headers()
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or_else(|| req.uri().authority().map(|a| a.as_str()).unwrap_or("")),
        req.headers()
            .get("expect")
            .and_then(|h| h.to_str().ok())
            .unwrap_or(""),
        // The x-envoy-* headers that reached the upstream, besides meshd's attempt count.
        req.headers()
            .keys()
            .map(|k| k.as_str())
            .filter(|k| k.starts_with("x-envoy-") && *k != "x-envoy-attempt-count")
            .collect::<Vec<_>>()
            .join(","),
        // Every x-forwarded-client-cert value, quotes escaped for JSON.
        req.headers()
            .get_all("x-forwarded-client-cert")
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).replace('"', "\\\""))
            .collect::<Vec<_>>()
            .join(" | "),
        // Every Cookie field, as received.
        req.headers()
            .get_all("cookie")
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(" | "),
        req.headers()
            .get("grpc-timeout")
            .and_then(|h| h.to_str().ok())
            .unwrap_or(""),
        req.headers()
            .get("x-envoy-expected-rq-timeout-ms")
            .and_then(|h| h.to_str().ok())
            .unwrap_or(""),
        req.headers()
            .get("x-envoy-original-path")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
    )
}
