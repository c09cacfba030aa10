//! The errors of workload identity: SPIFFE IDs, the CA, certificate files and peer verification.

use std::{
    path::PathBuf,
    time::{SystemTime, UNIX_EPOCH},
};

use thiserror::Error;

use super::SpiffeId;

#[derive(Debug, Error)]
pub enum IdentityError {
    #[error("invalid SPIFFE ID {input:?}: {reason}")]
    InvalidSpiffeId { input: String, reason: String },
    #[error("invalid trust domain {input:?}: {reason}")]
    InvalidTrustDomain { input: String, reason: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "refusing to overwrite {}: a CA already exists there (use --force to replace it; \
         certificates it issued will stop being trusted)",
        path.display()
    )]
    AlreadyExists { path: PathBuf },
    /// A file that exists but cannot be used; `reason` says why.
    #[error("{}: {reason}", path.display())]
    BadFile { path: PathBuf, reason: String },
    #[error("cannot generate a certificate: {0}")]
    Generate(String),
    #[error("the CA of trust domain {trust_domain} cannot issue a certificate for {id}")]
    ForeignTrustDomain { trust_domain: String, id: SpiffeId },
    /// A certificate that cannot be parsed or is not a SPIFFE certificate.
    #[error("bad certificate: {0}")]
    BadCertificate(String),
    #[error("the private key does not belong to the certificate")]
    KeyMismatch,
    #[error("unusable private key: {0}")]
    UnusableKey(String),
    #[error("certificate has no spiffe:// URI SAN, so it names no workload identity")]
    NoSpiffeId,
    #[error("peer presented {presented} but {expected} was expected")]
    WrongPeer {
        presented: Box<SpiffeId>,
        expected: Box<SpiffeId>,
    },
    #[error("certificate of {id} expired at {}", timestamp(*not_after))]
    Expired { id: SpiffeId, not_after: SystemTime },
    #[error("certificate of {id} is not valid before {} (is a clock wrong?)", timestamp(*not_before))]
    NotYetValid {
        id: SpiffeId,
        not_before: SystemTime,
    },
    #[error("certificate of {id} not signed by the trust bundle")]
    UntrustedIssuer { id: SpiffeId },
    #[error("certificate chain of {id} rejected: {reason}")]
    BadChain { id: SpiffeId, reason: String },
    #[error("peer presented no certificate")]
    NoPeerCertificate,
    #[error("no certificate for {0} on this node")]
    NoCertificate(SpiffeId),
    #[error("cannot watch {}: {reason}", path.display())]
    Watch { path: PathBuf, reason: String },
}

impl IdentityError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        IdentityError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn bad_file(path: impl Into<PathBuf>, reason: impl ToString) -> Self {
        IdentityError::BadFile {
            path: path.into(),
            reason: reason.to_string(),
        }
    }
}

/// RFC 3339 UTC time for messages.
pub fn timestamp(t: SystemTime) -> String {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    crate::telemetry::access_log::rfc3339(ms)
}
