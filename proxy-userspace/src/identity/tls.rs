//! rustls configs for the mesh tunnel: TLS 1.3 only, ring crypto, ALPN `h2`, both ends
//! authenticated by SPIFFE certificates chained to the trust bundle.
//!
//! Server certificate choice: the client sends as SNI the name derived from the identity it
//! expects ([`SpiffeId::server_name`]) and the server's [`super::IdentityResolver`] answers with
//! that workload's certificate, falling back to one default identity (the node's) when the name
//! is absent or unknown.

use std::{
    io,
    sync::{Arc, OnceLock},
};

use rustls::{
    CertificateError, ClientConfig, CommonState, DigitallySignedStruct, Error, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
    client::{ResolvesClientCert, danger::HandshakeSignatureValid},
    crypto::CryptoProvider,
    pki_types::CertificateDer,
    server::ResolvesServerCert,
    sign::CertifiedKey,
    version::TLS13,
};

use super::{
    IdentityError, SpiffeId, WorkloadCert,
    verify::{ClientIdentityVerifier, ServerIdentityVerifier},
    x509,
};

/// The one application protocol of the tunnel: HTTP/2 CONNECT.
pub const ALPN_H2: &[u8] = b"h2";

/// ring's provider, shared by every config (aws-lc-rs is not built).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The handshake's TLS 1.2 signature check, with ring's algorithms: every verifier of meshd's
/// (the tunnel's, TLS origination's) delegates to these three.
pub fn tls12_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, Error> {
    let algs = &crypto_provider().signature_verification_algorithms;
    rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
}

/// The handshake's TLS 1.3 signature check, with ring's algorithms.
pub fn tls13_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, Error> {
    let algs = &crypto_provider().signature_verification_algorithms;
    rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
}

/// The signature schemes those checks accept.
pub fn signature_schemes() -> Vec<SignatureScheme> {
    crypto_provider()
        .signature_verification_algorithms
        .supported_schemes()
}

/// A client that presents `cert` and accepts only a server that proves `expected_peer` with a
/// chain to `roots`. Connect with `expected_peer.server_name()` as the server name.
pub fn client_config(
    cert: &WorkloadCert,
    roots: Arc<RootCertStore>,
    expected_peer: SpiffeId,
) -> Arc<ClientConfig> {
    let verifier = ServerIdentityVerifier::new(roots, expected_peer);
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&TLS13])
        .expect("ring supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(FixedClientCert(cert.certified_key())));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Arc::new(config)
}

/// A server that presents the certificate `resolver` picks and requires a client certificate
/// chained to `roots`. Read the client's identity with [`peer_identity`] after the handshake.
pub fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
    roots: Arc<RootCertStore>,
) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&TLS13])
        .expect("ring supports TLS 1.3")
        .with_client_cert_verifier(Arc::new(ClientIdentityVerifier::new(roots)))
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Arc::new(config)
}

/// The SPIFFE ID of the authenticated peer of a finished handshake (a `&ServerConnection` or
/// `&ClientConnection` coerces to `&CommonState`).
pub fn peer_identity(conn: &CommonState) -> Result<SpiffeId, IdentityError> {
    match conn.peer_certificates() {
        Some([leaf, ..]) => x509::spiffe_id(leaf),
        _ => Err(IdentityError::NoPeerCertificate),
    }
}

/// The identity check that failed a handshake, if that is why it failed.
pub fn rejection(err: &io::Error) -> Option<&IdentityError> {
    match err.get_ref()?.downcast_ref::<Error>()? {
        Error::InvalidCertificate(CertificateError::Other(OtherError(e))) => e.downcast_ref(),
        _ => None,
    }
}

/// An operator-readable reason for a failed handshake: the identity check's message when it
/// was one, otherwise rustls' own.
pub fn describe_handshake_error(err: &io::Error) -> String {
    if let Some(e) = rejection(err) {
        return e.to_string();
    }
    match err.get_ref().and_then(|e| e.downcast_ref::<Error>()) {
        Some(Error::NoCertificatesPresented) => IdentityError::NoPeerCertificate.to_string(),
        Some(e) => e.to_string(),
        None => err.to_string(),
    }
}

/// A client always presenting its one workload certificate.
#[derive(Debug)]
struct FixedClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for FixedClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests;
