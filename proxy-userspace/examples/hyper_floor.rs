//! A minimal hyper reverse proxy with no policy, the floor of meshd's HTTP engine: one thread,
//! HTTP/1.1 in, and hyper-util's pooled keep-alive client out to one upstream. `cargo xtask bench
//! http` runs it beside meshd, nginx and HAProxy, to show how much of meshd's cost per request
//! is the engine's (hyper and tokio) and how much is meshd's own (routing, retries, telemetry).
//!
//! Usage: `hyper_floor LISTEN_PORT UPSTREAM_PORT` (both on 127.0.0.1).

use std::net::{Ipv4Addr, SocketAddr};

use hyper::{Request, Uri, body::Incoming, service::service_fn};
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
};
use tokio::net::TcpListener;

fn main() -> std::io::Result<()> {
    let port = |i: usize| -> u16 {
        std::env::args()
            .nth(i)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                eprintln!("usage: hyper_floor LISTEN_PORT UPSTREAM_PORT");
                std::process::exit(2)
            })
    };
    let (listen, upstream) = (port(1), port(2));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, listen))).await?;
        let client: Client<_, Incoming> = Client::builder(TokioExecutor::new()).build_http();
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let client = client.clone();
            tokio::spawn(async move {
                let proxy = service_fn(move |mut req: Request<Incoming>| {
                    let client = client.clone();
                    async move {
                        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
                        let uri = format!("http://127.0.0.1:{upstream}{pq}");
                        *req.uri_mut() = uri.parse::<Uri>().expect("a valid URI");
                        client.request(req).await
                    }
                });
                let io = TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, proxy)
                    .await;
            });
        }
    })
}
