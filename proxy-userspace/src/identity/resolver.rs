//! Which certificate the tunnel server presents: the one of the workload the client asked for.

use std::sync::Arc;

use rustls::{
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use super::{CertManager, SpiffeId};

/// Picks the server certificate by SNI: a client sends `expected.server_name()` (a hash of the
/// SPIFFE ID it expects) and gets the current certificate of that identity from the manager.
/// A hello without SNI, or with a name of no local identity, gets the `fallback` identity's
/// certificate (typically the node's own), or fails the handshake if there is none.
#[derive(Debug)]
pub struct IdentityResolver {
    manager: CertManager,
    fallback: Option<SpiffeId>,
}

impl IdentityResolver {
    pub fn new(manager: CertManager, fallback: Option<SpiffeId>) -> Self {
        IdentityResolver { manager, fallback }
    }
}

impl ResolvesServerCert for IdentityResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name();
        let cert = sni
            .and_then(|name| self.manager.by_server_name(name))
            .or_else(|| {
                self.fallback
                    .as_ref()
                    .and_then(|id| self.manager.current(id))
            });
        if cert.is_none() {
            tracing::warn!(
                server_name = sni.unwrap_or("-"),
                "no local workload certificate for the requested identity; refusing the handshake"
            );
        }
        cert.map(|c| c.certified_key())
    }
}
