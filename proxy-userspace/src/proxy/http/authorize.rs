//! AuthorizationPolicy for connections and requests to workloads on this node, decided where
//! they start: the source's identity is that of its enrolled workload (known from its cgroup),
//! so no tunnel is needed to know who is calling. Destinations on other nodes are authorized
//! by the meshd there, when the tunnel stream arrives.

use std::net::SocketAddr;

use super::{Downstream, HttpContext, replay::Outgoing};
use crate::{
    config::Snapshot,
    security::{
        Workload,
        authz::{HttpAttrs, RequestContext},
    },
    tunnel,
};

/// Why `req` from `down` to the endpoint `target` is denied, if it is.
pub fn request(
    ctx: &HttpContext,
    snap: &Snapshot,
    down: &Downstream,
    target: SocketAddr,
    req: &Outgoing<'_>,
) -> Option<String> {
    let (method, uri, headers) = req.head();
    decide(
        ctx,
        snap,
        down,
        target,
        Some(&HttpAttrs::of_head(method, uri, headers)),
    )
}

/// Why an opaque connection from `down` to `target` is denied, if it is (Istio's L4 rules).
pub fn connection(
    ctx: &HttpContext,
    snap: &Snapshot,
    down: &Downstream,
    target: SocketAddr,
) -> Option<String> {
    decide(ctx, snap, down, target, None)
}

fn decide(
    ctx: &HttpContext,
    snap: &Snapshot,
    down: &Downstream,
    target: SocketAddr,
    http: Option<&HttpAttrs<'_>>,
) -> Option<String> {
    let authorizer = &snap.compiled.authorizer;
    if authorizer.is_empty() {
        return None;
    }
    let e = tunnel::local_destination(snap, target, ctx.node_address, ctx.inbound_port)?;
    let principal = tunnel::source_identity(&ctx.trust_domain, snap, down.workload.as_deref())
        .ok()
        .map(|id| id.to_string());
    let rc = RequestContext::new(principal, down.peer.ip(), target.ip(), target.port());
    let rc = match http {
        Some(h) => rc.with_http(h),
        None => rc,
    };
    let workload = Workload {
        namespace: &e.namespace,
        labels: &e.labels,
    };
    let d = authorizer.evaluate(&workload, &rc);
    (!d.allowed).then_some(d.reason)
}
