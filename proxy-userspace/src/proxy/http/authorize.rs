//! AuthorizationPolicy for connections and requests to workloads on this node, decided where
//! they start: the source's identity is that of its enrolled workload (known from its cgroup),
//! so no tunnel is needed to know who is calling. Destinations on other nodes are authorized
//! by the meshd there, when the tunnel stream arrives; but one reached in plaintext (its port's
//! PeerAuthentication is DISABLE) is decided here, without a principal, as Istio's server-side
//! sidecar decides a plaintext caller.

use std::net::SocketAddr;

use hyper::{HeaderMap, Method, Uri};

use super::{Downstream, HttpContext};
use crate::{
    config::Snapshot,
    metrics::Metrics,
    security::{
        Workload,
        authz::{Decision, HttpAttrs, RequestContext},
    },
    tunnel,
};

/// Why the request with this head from `down` to the endpoint `target` is denied, if it is.
pub fn request(
    ctx: &HttpContext,
    snap: &Snapshot,
    down: &Downstream,
    target: SocketAddr,
    (method, uri, headers): (&Method, &Uri, &HeaderMap),
) -> Option<String> {
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

/// Whether the policies of `snap` deny an open connection they did not deny when it opened
/// (looked at again after a reload); AUDIT and dry-run policies are not logged again.
pub fn connection_revoked(
    ctx: &HttpContext,
    snap: &Snapshot,
    down: &Downstream,
    target: SocketAddr,
) -> Option<String> {
    evaluate(ctx, snap, down, target, None).and_then(|d| (!d.allowed).then_some(d.reason))
}

fn decide(
    ctx: &HttpContext,
    snap: &Snapshot,
    down: &Downstream,
    target: SocketAddr,
    http: Option<&HttpAttrs<'_>>,
) -> Option<String> {
    let d = evaluate(ctx, snap, down, target, http)?;
    report(&ctx.metrics, &d, Caller(down), target, http);
    (!d.allowed).then_some(d.reason)
}

/// The caller as the AUDIT and dry-run lines name it: its workload, and its address (every
/// caller on one node is 127.0.0.1 or the node's address, so the address alone says little).
struct Caller<'a>(&'a Downstream);

impl std::fmt::Display for Caller<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0.workload {
            Some(w) => write!(f, "{w} at {}", self.0.peer),
            None => write!(f, "{}", self.0.peer),
        }
    }
}

/// The decision on a connection or request (`http`) from `down` to `target`; None when meshd
/// does not decide it here (no policy, or the destination's node does).
fn evaluate(
    ctx: &HttpContext,
    snap: &Snapshot,
    down: &Downstream,
    target: SocketAddr,
    http: Option<&HttpAttrs<'_>>,
) -> Option<Decision> {
    let authorizer = &snap.compiled.authorizer;
    if authorizer.is_empty() {
        return None;
    }
    let e = snap.compiled.endpoints.get(target)?;
    let local = tunnel::on_this_node(e, ctx.node_address, ctx.inbound_port);
    // Through the tunnel, the meshd of the destination's node decides with the tunnel's
    // identity; in plaintext nobody else would.
    let plaintext = tunnel::mtls_disabled(snap, e, target.port());
    if !local && !plaintext {
        return None;
    }
    // The caller's identity is known on this node, but where its PeerAuthentication turns mTLS
    // off (DISABLE) Istio's destination sees plaintext and no peer: rules on principals or
    // namespaces cannot match it there, nor here, as across nodes.
    let proven = local && !plaintext;
    let principal = match proven {
        true => tunnel::source_identity(&ctx.trust_domain, snap, down.workload.as_deref())
            .ok()
            .map(|id| id.to_string()),
        false => None,
    };
    let rc = RequestContext::new(principal, down.peer.ip(), target.ip(), target.port());
    let rc = match http {
        Some(h) => rc.with_http(h),
        None => rc,
    };
    let workload = Workload {
        namespace: &e.namespace,
        labels: &e.labels,
    };
    Some(authorizer.evaluate(&workload, &rc))
}

/// Logs and counts what decides nothing in `d` for a connection or request (`http`) from
/// `source` to `target`: what the dry-run policies would have decided, and the AUDIT policies
/// that matched (Envoy's RBAC `LOG` action, which marks the request for the access log).
pub fn report(
    metrics: &Metrics,
    d: &Decision,
    source: impl std::fmt::Display,
    target: SocketAddr,
    http: Option<&HttpAttrs<'_>>,
) {
    for policy in &d.audited {
        metrics.authorization_audit(policy);
        let outcome = if d.allowed { "allowed" } else { "denied" };
        match http {
            Some(h) => tracing::info!(
                %source, %target, method = h.method, path = h.path, outcome,
                "audited by AUDIT policy {policy}"
            ),
            None => tracing::info!(%source, %target, outcome, "audited by AUDIT policy {policy}"),
        }
    }
    for shadow in &d.dry_run {
        metrics.authorization_dry_run(shadow);
        match http {
            Some(h) => tracing::info!(
                %source, %target, method = h.method, path = h.path, enforced = %d.reason,
                "{shadow}"
            ),
            None => tracing::info!(%source, %target, enforced = %d.reason, "{shadow}"),
        }
    }
}
