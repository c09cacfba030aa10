//! Certificate verifiers for mesh mTLS: the chain must lead to the trust bundle and the peer is
//! known by its SPIFFE ID (URI SAN), never by a DNS name.

use std::{
    sync::Arc,
    time::{Duration, UNIX_EPOCH},
};

use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, RootCertStore,
    SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
};
use webpki::KeyUsage;

use super::{IdentityError, SpiffeId, tls::crypto_provider, x509};

/// Checks a peer's chain against `roots` and returns its SPIFFE ID; with `expected`, also
/// that the peer is that identity.
#[derive(Debug)]
struct PeerCheck {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl PeerCheck {
    fn new(roots: Arc<RootCertStore>) -> Self {
        PeerCheck {
            roots,
            provider: crypto_provider(),
        }
    }

    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: KeyUsage,
        expected: Option<&SpiffeId>,
    ) -> Result<SpiffeId, IdentityError> {
        let info = x509::leaf_info(end_entity)?;
        let id = info.id;
        // Validity first: it has the clearest message and needs no trusted chain to explain.
        let now_wall = UNIX_EPOCH + Duration::from_secs(now.as_secs());
        if now_wall > info.not_after {
            return Err(IdentityError::Expired {
                id,
                not_after: info.not_after,
            });
        }
        if now_wall < info.not_before {
            return Err(IdentityError::NotYetValid {
                id,
                not_before: info.not_before,
            });
        }
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
        if let Err(e) = cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &self.roots.roots,
            intermediates,
            now,
            usage,
            None,
            None,
        ) {
            return Err(chain_error(e, id));
        }
        match expected {
            Some(expected) if *expected != id => Err(IdentityError::WrongPeer {
                presented: Box::new(id),
                expected: Box::new(expected.clone()),
            }),
            _ => Ok(id),
        }
    }
}

fn chain_error(e: webpki::Error, id: SpiffeId) -> IdentityError {
    use webpki::Error as E;
    match e {
        E::UnknownIssuer
        | E::InvalidSignatureForPublicKey
        | E::CaUsedAsEndEntity
        | E::EndEntityUsedAsCa => IdentityError::UntrustedIssuer { id },
        // The leaf's own validity was checked first, so this is a CA certificate's.
        E::CertExpired { not_after, .. } => IdentityError::BadChain {
            id,
            reason: format!(
                "a CA certificate of the chain expired at {}",
                super::error::timestamp(UNIX_EPOCH + Duration::from_secs(not_after.as_secs()))
            ),
        },
        E::RequiredEkuNotFoundContext(_) => IdentityError::BadChain {
            id,
            reason: "the certificate does not allow this use (extended key usage)".into(),
        },
        other => IdentityError::BadChain {
            id,
            reason: format!("{other:?}"),
        },
    }
}

/// The rustls error that carries an identity error to the handshake's caller (see
/// [`super::tls::rejection`]) and sends the peer a `certificate_unknown` alert.
pub(crate) fn reject(e: IdentityError) -> Error {
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// The client's check of the server: trusted chain, then exactly the expected SPIFFE ID.
#[derive(Debug)]
pub(crate) struct ServerIdentityVerifier {
    check: PeerCheck,
    expected: SpiffeId,
}

impl ServerIdentityVerifier {
    pub(crate) fn new(roots: Arc<RootCertStore>, expected: SpiffeId) -> Self {
        ServerIdentityVerifier {
            check: PeerCheck::new(roots),
            expected,
        }
    }
}

impl ServerCertVerifier for ServerIdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let usage = KeyUsage::server_auth();
        self.check
            .verify(end_entity, intermediates, now, usage, Some(&self.expected))
            .map(|_| ServerCertVerified::assertion())
            .map_err(reject)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        super::tls::tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        super::tls::tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        super::tls::signature_schemes()
    }
}

/// The server's check of a client: a certificate is mandatory, its chain must be trusted and it
/// must name a SPIFFE ID. Which identities may connect is authorization's business, not this.
#[derive(Debug)]
pub(crate) struct ClientIdentityVerifier {
    check: PeerCheck,
}

impl ClientIdentityVerifier {
    pub(crate) fn new(roots: Arc<RootCertStore>) -> Self {
        ClientIdentityVerifier {
            check: PeerCheck::new(roots),
        }
    }
}

impl ClientCertVerifier for ClientIdentityVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let usage = KeyUsage::client_auth();
        self.check
            .verify(end_entity, intermediates, now, usage, None)
            .map(|_| ClientCertVerified::assertion())
            .map_err(reject)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        super::tls::tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        super::tls::tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        super::tls::signature_schemes()
    }
}

/// Checks a certificate of our own the way a peer will: validity and chain to `roots`, for
/// both client and server use.
pub(crate) fn check_own_chain(
    cert: &super::WorkloadCert,
    roots: Arc<RootCertStore>,
    now: UnixTime,
) -> Result<(), IdentityError> {
    let check = PeerCheck::new(roots);
    let (leaf, intermediates) = (cert.leaf(), &cert.chain()[1..]);
    for usage in [KeyUsage::server_auth(), KeyUsage::client_auth()] {
        check.verify(leaf, intermediates, now, usage, Some(cert.id()))?;
    }
    Ok(())
}
