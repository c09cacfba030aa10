//! Security policy enforced in the kernel, computed from the configuration and the enrolled
//! workloads and written into the eBPF maps:
//! - PeerAuthentication: the ports of each enrolled workload whose mode is STRICT (cgroup_skb
//!   ingress drops a SYN to them unless meshd sent it);
//! - AuthorizationPolicy: the (source workload, destination address) pairs on this node that a
//!   DENY refuses whatever else is true of the connection (connect4/6 fail with EPERM). Only
//!   identity and port decide those; every other rule stays with meshd's userspace check.
//!
//! The maps are rewritten on every applied configuration and for each workload when it is
//! enrolled, before its process starts.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use proxy_common::{DenyKey, PEER_AUTH_OPEN, PEER_AUTH_STRICT, PeerAuthKey};

use super::{MtlsMode, Workload};
use crate::{
    config::{ConfigStore, Snapshot},
    ebpf::{PolicyMaps, endpoint_of, socket_addr_of},
    tunnel,
    workloads::{Registry, Workload as Enrolled},
};

#[cfg(test)]
mod tests;

/// How often the configuration generation is checked for a reload.
const POLL: Duration = Duration::from_millis(200);

/// Where this node is, to tell its own endpoints from other nodes'.
#[derive(Clone, Debug)]
pub struct NodeView {
    pub trust_domain: String,
    pub node: Option<IpAddr>,
    pub inbound_port: u16,
}

/// The labels of the WorkloadEntry `namespace/name`; none when it is not declared.
fn labels_of(snap: &Snapshot, workload: &str) -> BTreeMap<String, String> {
    snap.policies
        .workload_entries
        .iter()
        .find(|we| we.is(workload))
        .map(|we| we.spec.labels.clone())
        .unwrap_or_default()
}

/// The PEER_AUTH entries of one enrolled workload: port 0 when it is STRICT as a whole, and
/// each `portLevelMtls` port whose STRICTness differs.
pub fn peer_auth_entries(snap: &Snapshot, id: u32, workload: &str) -> Vec<(PeerAuthKey, u32)> {
    let Some((namespace, _)) = workload.split_once('/') else {
        return Vec::new();
    };
    let labels = labels_of(snap, workload);
    let w = Workload {
        namespace,
        labels: &labels,
    };
    let mtls = &snap.compiled.mtls;
    let strict = |port| mtls.resolve(&w, port).mode == MtlsMode::Strict;
    let base = strict(0);
    let mut out = Vec::new();
    if base {
        out.push((
            PeerAuthKey {
                workload_id: id,
                port: 0,
            },
            PEER_AUTH_STRICT,
        ));
    }
    for port in mtls.listed_ports(&w) {
        let s = strict(port);
        if s != base {
            let v = if s { PEER_AUTH_STRICT } else { PEER_AUTH_OPEN };
            out.push((
                PeerAuthKey {
                    workload_id: id,
                    port: port as u32,
                },
                v,
            ));
        }
    }
    out
}

/// Whether the endpoint's workload runs on this node.
fn is_local(e: &crate::config::endpoints::EndpointIdentity, node: &NodeView) -> bool {
    match e.node_addr(node.inbound_port) {
        None => true,
        Some(n) => Some(n.ip()) == node.node,
    }
}

/// Whether an identity-only DENY refuses `principal` at the endpoint `addr` of this node.
fn denied_at(snap: &Snapshot, node: &NodeView, principal: &str, addr: SocketAddr) -> Option<bool> {
    let e = snap
        .compiled
        .endpoints
        .get(addr)
        .filter(|e| is_local(e, node))?;
    let w = Workload {
        namespace: &e.namespace,
        labels: &e.labels,
    };
    // A port whose PeerAuthentication is DISABLE sees plaintext and no identity, as Istio's
    // destination does: rules on the caller's identity cannot match there.
    let principal = (!tunnel::mtls_disabled(snap, e, addr.port())).then_some(principal);
    Some(
        snap.compiled
            .authorizer
            .identity_denied(&w, principal, addr.port()),
    )
}

/// Whether Istio reads a port as HTTP (`HTTP`, `HTTP2`, `GRPC`, or such a name): a denial
/// there is its sidecar's 403 `RBAC: access denied`, which meshd's L7 path answers, so it is
/// not refused at connect time.
fn is_http(protocol: Option<crate::proxy::sniff::Detected>) -> bool {
    use crate::proxy::sniff::Detected;
    matches!(protocol, Some(Detected::Http1 | Detected::Http2))
}

/// The endpoint addresses behind the ports their services declare HTTP.
fn http_endpoints(snap: &Snapshot) -> std::collections::HashSet<SocketAddr> {
    let mut out = std::collections::HashSet::new();
    for (host, cluster) in &snap.compiled.clusters {
        for &port in cluster.ports.keys() {
            if !is_http(cluster.port_protocol(port)) {
                continue;
            }
            let d = crate::routes::Destination {
                host: host.clone(),
                subset: None,
                port: Some(port),
                weight: 100,
                headers: None,
            };
            let dialled = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), port);
            if let Ok((endpoints, _)) =
                crate::proxy::http::destination_endpoints(snap, &d, &[], dialled, None)
            {
                out.extend(endpoints);
            }
        }
    }
    out
}

/// The CONNECT_DENY entries of one source workload: each declared address of a workload on
/// this node that refuses it, and each service address (VIP and port) none of whose endpoints
/// would take it, when no VirtualService routes that host elsewhere. Ports declared HTTP are
/// left to the L7 path, which answers 403 as Istio's sidecar does.
pub fn deny_entries(snap: &Snapshot, node: &NodeView, id: u32, workload: &str) -> Vec<DenyKey> {
    if snap.compiled.authorizer.is_empty() {
        return Vec::new();
    }
    let Ok(principal) = tunnel::source_identity(&node.trust_domain, snap, Some(workload)) else {
        return Vec::new();
    };
    let principal = principal.to_string();
    let key = |addr: SocketAddr| DenyKey {
        workload_id: id,
        _pad: 0,
        dst: endpoint_of(addr),
    };
    let http = http_endpoints(snap);
    let mut out: Vec<DenyKey> = snap
        .compiled
        .endpoints
        .by_address()
        .filter(|(addr, _)| !http.contains(addr))
        .filter(|(addr, _)| denied_at(snap, node, &principal, *addr) == Some(true))
        .map(|(addr, _)| key(addr))
        .collect();
    for (&dst, host) in &snap.compiled.vips {
        if snap.compiled.routes.lookup(host).is_some()
            || !snap.compiled.clusters.contains_key(host)
            || is_http(snap.compiled.declared_protocol(dst))
        {
            continue;
        }
        let d = crate::routes::Destination {
            host: host.clone(),
            subset: None,
            port: Some(dst.port()),
            weight: 100,
            headers: None,
        };
        let Ok((endpoints, _)) =
            crate::proxy::http::destination_endpoints(snap, &d, &[], dst, None)
        else {
            continue;
        };
        let all_denied = !endpoints.is_empty()
            && endpoints
                .iter()
                .all(|a| denied_at(snap, node, &principal, *a) == Some(true));
        if all_denied {
            out.push(key(dst));
        }
    }
    // An IPv6 socket reaches an IPv4 address as its v4-mapped form, which is what connect6
    // sees.
    let mapped: Vec<DenyKey> = out
        .iter()
        .filter_map(|k| match socket_addr_of(&k.dst)? {
            SocketAddr::V4(a) => Some(key(SocketAddr::new(
                IpAddr::V6(a.ip().to_ipv6_mapped()),
                a.port(),
            ))),
            SocketAddr::V6(_) => None,
        })
        .collect();
    out.extend(mapped);
    out
}

/// Whether the kernel checks PeerAuthentication for a workload. The check recognises meshd as
/// the sender by finding its socket, in the receiving namespace or, for a pod in its own, in
/// meshd's by the id the pod's namespace gives it. Without that id (it could not be assigned)
/// meshd's own connections to the pod would be refused, so the pod is not checked.
fn strict_checked(w: &Enrolled) -> bool {
    w.netns.is_none() || w.meshd_nsid.is_some()
}

/// Keeps the kernel's policy maps in step with the configuration and the workloads.
pub struct KernelPolicy {
    maps: Arc<PolicyMaps>,
    config: Arc<ConfigStore>,
    node: NodeView,
    /// Serialises full and per-workload rewrites.
    lock: Mutex<()>,
}

impl KernelPolicy {
    pub fn new(maps: Arc<PolicyMaps>, config: Arc<ConfigStore>, node: NodeView) -> KernelPolicy {
        KernelPolicy {
            maps,
            config,
            node,
            lock: Mutex::new(()),
        }
    }

    /// Writes one newly enrolled workload's entries.
    pub fn enrolled(&self, w: &Enrolled) {
        let _one = self.lock.lock().expect("kernel policy lock");
        let snap = self.config.current();
        let pa: BTreeMap<_, _> = if strict_checked(w) {
            peer_auth_entries(&snap, w.id, &w.workload)
                .into_iter()
                .collect()
        } else {
            BTreeMap::new()
        };
        let deny = deny_entries(&snap, &self.node, w.id, &w.workload);
        self.write(&pa, &deny, |id| id == w.id);
    }

    /// Rewrites every entry for the enrolled workloads under the current configuration.
    /// Workload ids only grow: entries of ids above the highest listed belong to workloads
    /// enrolled since the list was taken, and are left alone (entries of removed workloads
    /// match no cgroup any more, and go at a later rewrite).
    pub fn sync(&self, workloads: &[Enrolled]) {
        let _one = self.lock.lock().expect("kernel policy lock");
        let snap = self.config.current();
        let mut pa = BTreeMap::new();
        let mut deny = Vec::new();
        for w in workloads {
            if strict_checked(w) {
                pa.extend(peer_auth_entries(&snap, w.id, &w.workload));
            }
            deny.extend(deny_entries(&snap, &self.node, w.id, &w.workload));
        }
        let newest = workloads.iter().map(|w| w.id).max().unwrap_or(0);
        self.write(&pa, &deny, |id| id <= newest);
        let strict = pa.values().filter(|v| **v == PEER_AUTH_STRICT).count();
        tracing::info!(
            generation = snap.generation,
            strict_ports = strict,
            connect_denies = deny.len(),
            "kernel policy maps updated"
        );
    }

    fn write(
        &self,
        pa: &BTreeMap<PeerAuthKey, u32>,
        deny: &[DenyKey],
        touch: impl Fn(u32) -> bool + Copy,
    ) {
        if let Err(e) = self.maps.set_peer_auth(pa, touch) {
            tracing::error!(error = %e, "could not write the PeerAuthentication map; STRICT is not enforced in the kernel for some workloads");
        }
        if let Err(e) = self.maps.set_deny(deny, touch) {
            tracing::error!(error = %e, "could not write the connect-time DENY map; those denials fall back to meshd's own check");
        }
    }
}

/// Rewrites the maps at start and after every applied configuration.
pub fn spawn(policy: Arc<KernelPolicy>, workloads: Arc<Registry>) {
    tokio::spawn(async move {
        let mut seen = 0;
        loop {
            let generation = policy.config.current().generation;
            if generation != seen {
                seen = generation;
                let p = policy.clone();
                let list = workloads.list();
                let _ = tokio::task::spawn_blocking(move || p.sync(&list)).await;
            }
            tokio::time::sleep(POLL).await;
        }
    });
}
