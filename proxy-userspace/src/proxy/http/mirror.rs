//! Traffic mirroring: a copy of the request goes to the mirror destination with `-shadow`
//! appended to its authority, as Envoy does. The copy's response is discarded, its latency and
//! failures never touch the primary request, and it has the route's timeout, as Envoy gives
//! its shadows. At most `MAX_IN_FLIGHT` copies are in flight, `MAX_PER_CLUSTER` of them to
//! one destination, so a destination that hangs cannot stop the others' mirrors: beyond that,
//! mirrors are dropped and counted.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use hyper::header::{self, HeaderValue};
use tokio::sync::Semaphore;

use super::{
    Pool,
    pool::{ClusterPool, Limits, Target},
    recording::Recording,
    replay::Replayable,
};
use crate::metrics::Metrics;

pub const MAX_IN_FLIGHT: usize = 256;
/// Copies in flight to one destination cluster.
pub const MAX_PER_CLUSTER: usize = MAX_IN_FLIGHT / 4;

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

/// What a copy carries: the request held whole, or one still streaming to the primary, whose
/// copy goes once its body has ended within the retry buffer (and is dropped otherwise).
pub enum Copied {
    Now(Box<Replayable>),
    Later(Recording),
}

/// One copy counted against its cluster's share until dropped.
struct ClusterShare(Arc<ClusterPool>);

impl ClusterShare {
    fn take(cluster: &Arc<ClusterPool>) -> Option<ClusterShare> {
        let previous = cluster.mirrors_in_flight.fetch_add(1, Ordering::AcqRel);
        let share = ClusterShare(cluster.clone());
        (previous < MAX_PER_CLUSTER).then_some(share)
    }
}

impl Drop for ClusterShare {
    fn drop(&mut self) {
        self.0.mirrors_in_flight.fetch_sub(1, Ordering::AcqRel);
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

/// Points the copy at `shadow`: its Host, or for HTTP/2 its `:authority`.
fn shadow_authority(req: &mut Replayable, shadow: &str, h2: bool) {
    if let Ok(v) = HeaderValue::from_str(shadow) {
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
}

/// Where a copy goes: an endpoint of the mirror destination's cluster, under its limits.
pub struct Copy {
    pub pool: Arc<Pool>,
    pub cluster: Arc<ClusterPool>,
    pub limits: Limits,
    pub target: Target,
}

impl Mirrors {
    /// Sends a copy of the request to `to` in the background, within `timeout` (the route's)
    /// from when it goes, or drops it when too many copies are already in flight.
    pub fn send(
        &self,
        to: Copy,
        metrics: &Arc<Metrics>,
        h2: bool,
        copied: Copied,
        authority: &str,
        timeout: Option<Duration>,
    ) {
        let slots = self.slots.clone();
        let shadow = shadow(authority);
        let metrics = metrics.clone();
        tokio::spawn(async move {
            // A streamed body is awaited before a slot is taken: a long upload (a gRPC client
            // stream) holds none of the copies' room while it runs.
            let mut req = match copied {
                Copied::Now(req) => *req,
                Copied::Later(recording) => match recording.settled().await {
                    Some(req) => req,
                    None => {
                        metrics.mirror("dropped");
                        return;
                    }
                },
            };
            let Ok(permit) = slots.try_acquire_owned() else {
                metrics.mirror("dropped");
                return;
            };
            let Some(share) = ClusterShare::take(&to.cluster) else {
                metrics.mirror("dropped");
                return;
            };
            let _held = (permit, share);
            shadow_authority(&mut req, &shadow, h2);
            metrics.mirror("sent");
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
                expected_timeout: None,
                client_cert: None,
            };
            let exchange = async {
                match pool.send(&cluster, &limits, &target, h2, || once).await {
                    Ok(resp) => {
                        // Drain and discard the body so the pooled connection can be reused.
                        use http_body_util::BodyExt;
                        let _ = resp.into_body().collect().await;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, target = %target.addr, "mirrored request failed");
                        metrics.mirror("failed");
                    }
                }
            };
            match timeout {
                Some(t) => {
                    if tokio::time::timeout(t, exchange).await.is_err() {
                        tracing::debug!(target = %target.addr, "mirrored request timed out");
                        metrics.mirror("failed");
                    }
                }
                None => exchange.await,
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
