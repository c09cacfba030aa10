//! The mTLS tunnel between meshd nodes (like Istio ambient's HBONE): when the chosen endpoint
//! sits behind another meshd, the connection is carried as an HTTP/2 CONNECT stream inside a
//! TLS 1.3 connection to that meshd's inbound port. The client presents the source workload's
//! certificate and requires the destination workload's identity; the far side authorizes the
//! stream and connects to its local workload. One TLS connection per (node, source identity,
//! destination identity) carries many streams.

mod baggage;
mod client;
mod error;
mod prefixed;
mod request_log;
mod serve_http;
mod server;
mod stream_log;

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

pub use self::{
    client::Stream,
    error::TunnelError,
    server::{Inbound, connect_target, serve as serve_inbound},
};
use crate::{
    config::{Snapshot, endpoints::EndpointIdentity},
    identity::{Ca, CertManager, CertSource, ExternalDir, IdentityError, SpiffeId, SystemClock},
    settings::Settings,
};

/// How an upstream connection to one endpoint is made.
#[derive(Clone, Debug)]
pub struct Via {
    /// The tunnel listener of the meshd fronting the endpoint.
    pub node: SocketAddr,
    pub source: SpiffeId,
    pub destination: SpiffeId,
    /// The source workload (`namespace/name`), named to the far node in the CONNECT's
    /// `baggage` so that its metrics and access log name the caller.
    pub workload: Option<Arc<str>>,
}

impl Via {
    /// Tells tunnelled connections apart in the upstream pool: they are per source workload
    /// (and so per source identity), since each stream names its caller to the far node.
    pub fn pool_key(&self) -> Arc<str> {
        let workload = self.workload.as_deref().unwrap_or_default();
        Arc::from(format!("{}>{workload}>{}", self.source, self.node))
    }
}

pub struct Tunnel {
    pub manager: CertManager,
    pub trust_domain: String,
    pub node: Option<IpAddr>,
    pub inbound_port: u16,
    pub connect_timeout: Duration,
    clients: client::Clients,
}

impl Tunnel {
    /// The identity source the settings name, or `None` when meshd runs without certificates.
    pub fn from_settings(s: &Settings) -> Result<Option<Arc<Tunnel>>, IdentityError> {
        let source = match (&s.ca_dir, &s.cert_dir) {
            (Some(dir), _) => CertSource::Ca(Arc::new(Ca::load(dir)?)),
            (None, Some(dir)) => CertSource::External(ExternalDir::new(dir)),
            (None, None) => return Ok(None),
        };
        let manager = CertManager::new(source, s.cert_lifetime, Arc::new(SystemClock))?;
        manager.spawn()?;
        Ok(Some(Arc::new(Tunnel {
            manager,
            trust_domain: s.trust_domain.clone(),
            node: s.node_address,
            inbound_port: s.inbound_port,
            connect_timeout: s.connect_timeout,
            clients: client::Clients::default(),
        })))
    }

    pub fn identity_of(&self, e: &EndpointIdentity) -> Result<SpiffeId, IdentityError> {
        endpoint_identity(&self.trust_domain, e)
    }

    /// The `x-forwarded-client-cert` a request through the tunnel `via` carries: the
    /// element the far side's server would add for the source's certificate, as Istio's
    /// inbound sidecar adds it. `None` when the source has no certificate yet (the stream's
    /// handshake would fail anyway).
    pub fn forwarded_client_cert(&self, via: &Via) -> Option<hyper::header::HeaderValue> {
        let cert = self.manager.current(&via.source)?;
        cert.forwarded_client_cert(&via.destination).parse().ok()
    }

    pub fn source_identity(
        &self,
        snap: &Snapshot,
        workload: Option<&str>,
    ) -> Result<SpiffeId, TunnelError> {
        source_identity(&self.trust_domain, snap, workload)
    }

    /// Whether an endpoint's `meshd.io/node` names this node.
    pub fn is_local(&self, node: SocketAddr) -> bool {
        self.node == Some(node.ip())
    }
}

/// The identity of a source workload (`namespace/name`): its WorkloadEntry's service account,
/// or `default` in its namespace.
pub fn source_identity(
    trust_domain: &str,
    snap: &Snapshot,
    workload: Option<&str>,
) -> Result<SpiffeId, TunnelError> {
    let w = workload.ok_or(TunnelError::NoSourceIdentity)?;
    let (ns, _) = w.split_once('/').ok_or(TunnelError::NoSourceIdentity)?;
    let sa = snap
        .policies
        .workload_entries
        .iter()
        .find(|we| we.is(w))
        .and_then(|we| we.spec.service_account.clone())
        .unwrap_or_else(|| "default".into());
    Ok(SpiffeId::new(trust_domain, ns, &sa)?)
}

/// The SPIFFE identity of the workload behind an endpoint.
pub fn endpoint_identity(
    trust_domain: &str,
    e: &EndpointIdentity,
) -> Result<SpiffeId, IdentityError> {
    SpiffeId::new(trust_domain, &e.namespace, &e.service_account)
}

/// The endpoint's workload when it runs on this node (its `meshd.io/node` names this node, or
/// it has no such label): this node's AuthorizationPolicies for it are decided here.
pub fn local_destination(
    snap: &Snapshot,
    target: SocketAddr,
    own_node: Option<IpAddr>,
    inbound_port: u16,
) -> Option<&EndpointIdentity> {
    let e = snap.compiled.endpoints.get(target)?;
    on_this_node(e, own_node, inbound_port).then_some(e)
}

/// The mesh workload (`namespace/name` of its WorkloadEntry) at the endpoint `target`, when it
/// runs on this node: no other proxy reports what reaches it, so meshd reports it as its
/// destination too.
pub fn local_workload(
    snap: &Snapshot,
    target: SocketAddr,
    own_node: Option<IpAddr>,
    inbound_port: u16,
) -> Option<&String> {
    local_destination(snap, target, own_node, inbound_port)?;
    snap.compiled.endpoints.workload(target)
}

/// Whether the endpoint's `meshd.io/node` names this node, or it has no such label.
pub fn on_this_node(e: &EndpointIdentity, own_node: Option<IpAddr>, inbound_port: u16) -> bool {
    e.node_addr(inbound_port)
        .is_none_or(|n| Some(n.ip()) == own_node)
}

/// Whether the endpoint's workload has PeerAuthentication DISABLE on `port`: it is reached
/// in plaintext, without the tunnel.
pub fn mtls_disabled(snap: &Snapshot, e: &EndpointIdentity, port: u16) -> bool {
    let w = crate::security::Workload {
        namespace: &e.namespace,
        labels: &e.labels,
    };
    snap.compiled.mtls.resolve(&w, port).mode == crate::security::MtlsMode::Disable
}

/// How to reach `target`, an endpoint in `snap`, for a connection of `workload`: directly, or
/// through the tunnel when a meshd on another node fronts it (unless PeerAuthentication
/// DISABLEs mTLS for that workload port).
pub fn route(
    tunnel: Option<&Tunnel>,
    snap: &Snapshot,
    target: SocketAddr,
    workload: Option<&str>,
    inbound_port: u16,
) -> Result<Option<Via>, TunnelError> {
    let Some(e) = snap.compiled.endpoints.get(target) else {
        return Ok(None);
    };
    let Some(node) = e.node_addr(inbound_port) else {
        return Ok(None);
    };
    if mtls_disabled(snap, e, target.port()) {
        return Ok(None);
    }
    let Some(t) = tunnel else {
        return Err(TunnelError::NoCertificates { target, node });
    };
    if t.is_local(node) {
        return Ok(None);
    }
    Ok(Some(Via {
        node,
        source: t.source_identity(snap, workload)?,
        destination: t.identity_of(e)?,
        workload: workload.map(Arc::from),
    }))
}
