//! Real TLS 1.3 handshakes over an in-memory duplex pipe.

use std::time::{Duration, SystemTime};

use rustls::{ProtocolVersion, pki_types::ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;
use crate::identity::{Ca, CertManager, DEFAULT_CERT_LIFETIME, IdentityResolver};

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "shop", sa).unwrap()
}

/// A server on the mesh's CA holding `local` identities, defaulting to the first.
fn server(ca: &Arc<Ca>, local: &[&str]) -> Arc<ServerConfig> {
    let manager = CertManager::with_ca(ca.clone());
    for sa in local {
        manager.ensure(&id(sa)).unwrap();
    }
    let fallback = local.first().map(|sa| id(sa));
    let resolver = Arc::new(IdentityResolver::new(manager.clone(), fallback));
    server_config(resolver, manager.roots())
}

struct Outcome {
    client: Result<SpiffeId, String>,
    server: Result<SpiffeId, String>,
}

/// Runs one handshake and, when both ends succeed, a one-byte exchange each way.
async fn handshake(
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    name: ServerName<'static>,
) -> Outcome {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let connect = TlsConnector::from(client).connect(name, c);
    let accept = TlsAcceptor::from(server).accept(s);
    let (c, s) = tokio::join!(connect, accept);
    let client = c.map_err(|e| describe_handshake_error(&e));
    let server = s.map_err(|e| describe_handshake_error(&e));
    let (client, server) = match (client, server) {
        (Ok(mut c), Ok(mut s)) => {
            for conn in [
                c.get_ref().1.protocol_version(),
                s.get_ref().1.protocol_version(),
            ] {
                assert_eq!(conn, Some(ProtocolVersion::TLSv1_3));
            }
            assert_eq!(c.get_ref().1.alpn_protocol(), Some(ALPN_H2));
            c.write_all(b"?").await.unwrap();
            let mut byte = [0u8; 1];
            s.read_exact(&mut byte).await.unwrap();
            s.write_all(b"!").await.unwrap();
            c.read_exact(&mut byte).await.unwrap();
            (
                peer_identity(c.get_ref().1).map_err(|e| e.to_string()),
                peer_identity(s.get_ref().1).map_err(|e| e.to_string()),
            )
        }
        (c, s) => (c.map(|_| id("-")), s.map(|_| id("-"))),
    };
    Outcome { client, server }
}

#[tokio::test]
async fn both_ends_learn_each_others_identity() {
    let ca = Arc::new(Ca::generate("cluster.local").unwrap());
    let frontend = ca.issue(&id("frontend"), DEFAULT_CERT_LIFETIME).unwrap();
    let client = client_config(&frontend, Arc::new(ca.roots()), id("checkout"));
    let out = handshake(
        client,
        server(&ca, &["node", "checkout"]),
        id("checkout").server_name(),
    )
    .await;
    assert_eq!(
        out.client.unwrap(),
        id("checkout"),
        "chosen by SNI, not the fallback"
    );
    assert_eq!(out.server.unwrap(), id("frontend"));
}

#[tokio::test]
async fn wrong_identity_is_rejected_by_name() {
    let ca = Arc::new(Ca::generate("cluster.local").unwrap());
    let frontend = ca.issue(&id("frontend"), DEFAULT_CERT_LIFETIME).unwrap();
    let client = client_config(&frontend, Arc::new(ca.roots()), id("payments"));
    // The server has no payments certificate and answers with its fallback, checkout.
    let out = handshake(
        client,
        server(&ca, &["checkout"]),
        id("payments").server_name(),
    )
    .await;
    assert_eq!(
        out.client.unwrap_err(),
        "peer presented spiffe://cluster.local/ns/shop/sa/checkout \
         but spiffe://cluster.local/ns/shop/sa/payments was expected"
    );
    assert!(out.server.is_err());
}

#[tokio::test]
async fn server_certificate_of_another_ca_is_rejected() {
    let ca = Arc::new(Ca::generate("cluster.local").unwrap());
    let rogue = Arc::new(Ca::generate("cluster.local").unwrap());
    let frontend = ca.issue(&id("frontend"), DEFAULT_CERT_LIFETIME).unwrap();
    let client = client_config(&frontend, Arc::new(ca.roots()), id("checkout"));
    let out = handshake(
        client,
        server(&rogue, &["checkout"]),
        id("checkout").server_name(),
    )
    .await;
    assert_eq!(
        out.client.unwrap_err(),
        "certificate of spiffe://cluster.local/ns/shop/sa/checkout not signed by the trust bundle"
    );
}

#[tokio::test]
async fn client_certificate_of_another_ca_is_rejected() {
    let ca = Arc::new(Ca::generate("cluster.local").unwrap());
    let rogue = Arc::new(Ca::generate("cluster.local").unwrap());
    let intruder = rogue.issue(&id("frontend"), DEFAULT_CERT_LIFETIME).unwrap();
    // The intruder trusts the real CA so that only the server's check can fail.
    let client = client_config(&intruder, Arc::new(ca.roots()), id("checkout"));
    let out = handshake(
        client,
        server(&ca, &["checkout"]),
        id("checkout").server_name(),
    )
    .await;
    assert_eq!(
        out.server.unwrap_err(),
        "certificate of spiffe://cluster.local/ns/shop/sa/frontend not signed by the trust bundle"
    );
}

#[tokio::test]
async fn expired_certificates_are_rejected_on_both_sides() {
    let ca = Arc::new(Ca::generate("cluster.local").unwrap());
    let long_ago = SystemTime::now() - Duration::from_secs(2 * 24 * 3600);
    let hour = Duration::from_secs(3600);
    let stale = ca.issue_at(&id("frontend"), long_ago, hour).unwrap();
    let expected_at = crate::identity::error::timestamp(stale.not_after());

    let client = client_config(&stale, Arc::new(ca.roots()), id("checkout"));
    let out = handshake(
        client,
        server(&ca, &["checkout"]),
        id("checkout").server_name(),
    )
    .await;
    assert_eq!(
        out.server.unwrap_err(),
        format!(
            "certificate of spiffe://cluster.local/ns/shop/sa/frontend expired at {expected_at}"
        )
    );

    // A server whose only certificate has expired.
    let manager = CertManager::with_ca(ca.clone());
    let fresh = ca.issue(&id("checkout"), DEFAULT_CERT_LIFETIME).unwrap();
    let resolver = Arc::new(StaticResolver(stale.certified_key()));
    let client = client_config(&fresh, Arc::new(ca.roots()), id("frontend"));
    let out = handshake(
        client,
        server_config(resolver, manager.roots()),
        id("frontend").server_name(),
    )
    .await;
    let err = out.client.unwrap_err();
    assert!(err.contains("expired at"), "{err}");
}

#[tokio::test]
async fn client_without_certificate_is_rejected() {
    let ca = Arc::new(Ca::generate("cluster.local").unwrap());
    let verifier = ServerIdentityVerifier::new(Arc::new(ca.roots()), id("checkout"));
    let mut anonymous = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    anonymous.alpn_protocols = vec![ALPN_H2.to_vec()];
    let out = handshake(
        Arc::new(anonymous),
        server(&ca, &["checkout"]),
        id("checkout").server_name(),
    )
    .await;
    assert_eq!(out.server.unwrap_err(), "peer presented no certificate");
}

#[tokio::test]
async fn server_without_a_matching_certificate_refuses() {
    let ca = Arc::new(Ca::generate("cluster.local").unwrap());
    let frontend = ca.issue(&id("frontend"), DEFAULT_CERT_LIFETIME).unwrap();
    let client = client_config(&frontend, Arc::new(ca.roots()), id("checkout"));
    let out = handshake(client, server(&ca, &[]), id("checkout").server_name()).await;
    assert!(out.server.is_err());
    assert!(out.client.is_err());
}

/// Serves one fixed certificate whatever the client asks for.
#[derive(Debug)]
struct StaticResolver(Arc<CertifiedKey>);

impl ResolvesServerCert for StaticResolver {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}
