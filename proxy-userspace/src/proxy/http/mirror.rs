//! Traffic mirroring: a copy of the request goes to the mirror destination with `-shadow`
//! appended to its authority, as Envoy does. The copy's response is discarded, its latency and
//! failures never touch the primary request, and at most `MAX_IN_FLIGHT` copies are in flight:
//! beyond that, mirrors are dropped and counted.

use std::sync::Arc;

use hyper::header::{self, HeaderValue};
use tokio::sync::Semaphore;

use super::{
    Pool,
    pool::{ClusterPool, Limits, Target},
    replay::Replayable,
};
use crate::metrics::Metrics;

pub const MAX_IN_FLIGHT: usize = 256;

pub struct Mirrors {
    slots: Arc<Semaphore>,
}

impl Default for Mirrors {
    fn default() -> Self {
        Mirrors {
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }
}

/// `reviews:9080` → `reviews-shadow:9080`.
pub fn shadow(authority: &str) -> String {
    match authority.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{host}-shadow:{port}")
        }
        _ => format!("{authority}-shadow"),
    }
}

/// Where a copy goes: an endpoint of the mirror destination's cluster, under its limits.
pub struct Copy {
    pub pool: Arc<Pool>,
    pub cluster: Arc<ClusterPool>,
    pub limits: Limits,
    pub target: Target,
}

impl Mirrors {
    /// Sends a copy of `req` to `to` in the background, or drops it when too many copies
    /// are already in flight.
    pub fn send(
        &self,
        to: Copy,
        metrics: &Metrics,
        h2: bool,
        mut req: Replayable,
        authority: &str,
    ) {
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            metrics.mirror("dropped");
            return;
        };
        let shadow = shadow(authority);
        if let Ok(v) = HeaderValue::from_str(&shadow) {
            req.headers.insert(header::HOST, v);
        }
        if h2
            && let Ok(uri) = format!(
                "http://{shadow}{}",
                req.uri.path_and_query().map_or("/", |p| p.as_str())
            )
            .parse()
        {
            req.uri = uri;
            req.headers.remove(header::HOST);
        }
        metrics.mirror("sent");
        tokio::spawn(async move {
            let _permit = permit;
            let Copy {
                pool,
                cluster,
                limits,
                target,
            } = to;
            let once = super::replay::Outgoing::Buffered {
                req: &req,
                attempt: None,
                grpc_timeout: None,
                client_cert: None,
            };
            match pool.send(&cluster, &limits, &target, h2, || once).await {
                Ok(resp) => {
                    // Drain and discard the body so the pooled connection can be reused.
                    use http_body_util::BodyExt;
                    let _ = resp.into_body().collect().await;
                }
                Err(e) => {
                    tracing::debug!(error = %e, target = %target.addr, "mirrored request failed")
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn shadow_hosts() {
        assert_eq!(super::shadow("reviews:9080"), "reviews-shadow:9080");
        assert_eq!(super::shadow("reviews"), "reviews-shadow");
        assert_eq!(
            super::shadow("reviews.default.svc.cluster.local"),
            "reviews.default.svc.cluster.local-shadow"
        );
    }
}
