//! A hyper backend for the L7 tests: HTTP/1.1 and h2c on one port. It answers
//! `/status/NNN` with that status, `/whoami` with the HTTP version and the upstream connection's
//! peer address, and an `Upgrade: echo` request with 101 and then echoes bytes. It counts the
//! connections it accepted, so tests can see meshd's connection reuse.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct HttpBackend {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    _rt: tokio::runtime::Runtime,
}

impl HttpBackend {
    pub fn start(bind: &str) -> HttpBackend {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind(bind)).unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (acc, reqs) = (accepted.clone(), requests.clone());
        rt.spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                acc.fetch_add(1, Ordering::SeqCst);
                let reqs = reqs.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        reqs.fetch_add(1, Ordering::SeqCst);
                        answer(req, peer)
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        HttpBackend {
            addr,
            accepted,
            requests,
            _rt: rt,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn answer(
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    if req.headers().get("upgrade").is_some_and(|v| v == "echo") {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
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
            .header("upgrade", "echo")
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
    let body = format!(
        "{{\"version\":\"{:?}\",\"peer\":\"{peer}\",\"host\":\"{}\"}}\n",
        req.version(),
        req.headers()
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or_else(|| req.uri().authority().map(|a| a.as_str()).unwrap_or(""))
    );
    Ok(Response::new(Full::new(Bytes::from(body))))
}
