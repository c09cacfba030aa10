//! A workload's certificate: its chain, private key and validity, ready for rustls.

use std::{
    fmt,
    sync::Arc,
    time::{Duration, SystemTime},
};

use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer},
    sign::CertifiedKey,
};

use super::{IdentityError, SpiffeId, tls::crypto_provider, x509};

/// Lifetime of the certificates the built-in CA issues.
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// A leaf certificate for one SPIFFE ID with its private key. Built only through
/// [`WorkloadCert::new`], which checks that the leaf names a SPIFFE ID and matches the key.
pub struct WorkloadCert {
    id: SpiffeId,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    not_before: SystemTime,
    not_after: SystemTime,
    /// The chain and the parsed signing key, built once for every handshake to share.
    certified: Arc<CertifiedKey>,
    /// The leaf's part of an `x-forwarded-client-cert` element (all but `By`).
    forwarded: String,
}

impl WorkloadCert {
    /// `chain` is the leaf followed by any intermediates (not the root).
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, IdentityError> {
        let leaf = chain.first().ok_or_else(|| {
            IdentityError::BadCertificate("the certificate chain is empty".into())
        })?;
        let info = x509::leaf_info(leaf)?;
        let signing_key = crypto_provider()
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| IdentityError::UnusableKey(e.to_string()))?;
        if signing_key
            .public_key()
            .is_some_and(|spki| spki.as_ref() != info.spki.as_slice())
        {
            return Err(IdentityError::KeyMismatch);
        }
        let certified = Arc::new(CertifiedKey::new(chain.clone(), signing_key));
        let forwarded = x509::forwarded_details(leaf)?;
        Ok(WorkloadCert {
            forwarded,
            id: info.id,
            chain,
            key,
            not_before: info.not_before,
            not_after: info.not_after,
            certified,
        })
    }

    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// The leaf followed by any intermediates.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    pub fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// What rustls presents in a handshake.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified.clone()
    }

    /// The `x-forwarded-client-cert` element a server of identity `by` reports for a client
    /// presenting this certificate, in Envoy's form as Istio configures it:
    /// `By=<server>;Hash=<sha256>;Subject="";URI=<client>`.
    pub fn forwarded_client_cert(&self, by: &SpiffeId) -> String {
        x509::forwarded_element(by, &self.forwarded)
    }

    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or_default()
    }

    /// When to replace this certificate: half way through its lifetime.
    pub fn rotate_at(&self) -> SystemTime {
        self.not_before + self.lifetime() / 2
    }

    /// From when an unrenewed certificate is an emergency: the last 10% of its lifetime.
    pub fn critical_at(&self) -> SystemTime {
        self.not_after - self.lifetime() / 10
    }

    /// Time left until expiry (zero once expired).
    pub fn expires_in(&self) -> Duration {
        self.expires_in_at(SystemTime::now())
    }

    pub fn expires_in_at(&self, now: SystemTime) -> Duration {
        self.not_after.duration_since(now).unwrap_or_default()
    }
}

impl fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("id", &self.id.to_string())
            .field("chain_len", &self.chain.len())
            .field("not_before", &super::error::timestamp(self.not_before))
            .field("not_after", &super::error::timestamp(self.not_after))
            .finish_non_exhaustive()
    }
}
