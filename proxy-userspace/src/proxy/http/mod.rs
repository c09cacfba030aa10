//! The L7 pipeline for captured HTTP/1.x and HTTP/2 connections: a hyper server per downstream
//! connection, each request forwarded over a pooled upstream connection.

mod body;
mod fault;
mod flags;
mod forward;
mod framing;
mod headers;
mod lb;
mod mirror;
pub mod outlier;
mod pool;
mod ratelimit;
mod record;
mod replay;
mod retry;
mod route;
mod send;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpStream;

use crate::{config::ConfigStore, metrics::Metrics};

pub use body::Body;
pub use flags::ResponseFlags;
pub use pool::Pool;

/// Settings and shared state of the L7 pipeline.
pub struct HttpContext {
    pub pool: Arc<Pool>,
    pub mirrors: mirror::Mirrors,
    pub metrics: Arc<Metrics>,
    /// Largest request head (request line and headers) accepted; bigger gets 431.
    pub max_header_bytes: usize,
    /// The active policy snapshot; each request reads it once and keeps it to the end.
    pub config: Arc<ConfigStore>,
    /// Endpoint selection state (round-robin position, in-flight requests per endpoint).
    pub lb: lb::Balancer,
    /// Consecutive failures and ejections per endpoint.
    pub outliers: outlier::Detector,
    /// Local rate-limit buckets and the global limit's Redis connections.
    pub buckets: ratelimit::local::Buckets,
    pub global: ratelimit::global::Global,
    pub access: Arc<crate::telemetry::AccessLog>,
    pub tracer: Arc<crate::telemetry::trace::Tracer>,
}

impl HttpContext {
    pub fn new(
        connect_timeout: Duration,
        max_header_bytes: usize,
        config: Arc<ConfigStore>,
        metrics: Arc<Metrics>,
        redis_timeout: Duration,
        access: Arc<crate::telemetry::AccessLog>,
        tracer: Arc<crate::telemetry::trace::Tracer>,
    ) -> Arc<HttpContext> {
        Arc::new(HttpContext {
            pool: Arc::new(Pool::new(connect_timeout)),
            mirrors: mirror::Mirrors::default(),
            metrics,
            max_header_bytes,
            config,
            lb: lb::Balancer::default(),
            outliers: outlier::Detector::default(),
            buckets: ratelimit::local::Buckets::default(),
            global: ratelimit::global::Global::new(redis_timeout),
            access,
            tracer,
        })
    }
}

impl HttpContext {
    /// Where an L4 (opaque) connection to `dst` goes: an endpoint of the service whose VIP it
    /// is (round robin), or `dst` itself.
    pub fn l4_target(&self, dst: SocketAddr) -> SocketAddr {
        let snap = self.config.current();
        let Some(host) = snap.compiled.vips.get(&dst.ip()) else {
            return dst;
        };
        let d = crate::routes::Destination {
            host: host.clone(),
            subset: None,
            port: Some(dst.port()),
            weight: 100,
            headers: None,
        };
        match route::endpoints(&snap, &d, &[], dst) {
            Ok((e, _)) => self.lb.choose(&lb::Algorithm::RoundRobin, &e, None),
            Err(_) => dst,
        }
    }
}

/// The captured connection a request arrived on.
#[derive(Clone, Debug)]
pub struct Downstream {
    pub peer: SocketAddr,
    pub dst: SocketAddr,
    pub workload: Option<String>,
}

/// Serves HTTP on a captured connection until the client closes it.
pub async fn serve(stream: TcpStream, down: Downstream, ctx: Arc<HttpContext>) {
    let down = Arc::new(down);
    let (stream, verdicts) = framing::Guarded::new(stream);
    let svc = {
        let ctx = ctx.clone();
        service_fn(move |req| forward::handle(req, down.clone(), ctx.clone(), verdicts.clone()))
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(ctx.max_header_bytes.max(8192))
        .keep_alive(true);
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
        .await
    {
        tracing::debug!(error = %e, "downstream HTTP connection ended with an error");
    }
}
