//! Workload identity for the mTLS tunnel: SPIFFE IDs, a built-in CA or certificates from SPIRE
//! or cert-manager, rotation, and the TLS 1.3 configs that authenticate both ends.
//!
//! How the pieces fit:
//! - [`SpiffeId`] names a workload (`spiffe://<td>/ns/<ns>/sa/<sa>`).
//! - [`Ca`] issues [`WorkloadCert`]s; [`ExternalDir`] reads them from files instead.
//! - [`CertManager`] holds the current certificate of each local identity, renews it at half
//!   its lifetime and reloads changed files.
//! - [`tls::client_config`] and [`tls::server_config`] build rustls configs that check chains
//!   against the trust bundle and peers by SPIFFE ID (never by DNS name).

pub mod ca;
pub mod cert;
pub mod clock;
pub mod command;
pub mod error;
pub mod external;
pub mod manager;
pub mod resolver;
pub mod spiffe;
pub mod tls;
mod verify;
pub mod x509;

#[cfg(test)]
mod testutil;

pub use ca::Ca;
pub use cert::{DEFAULT_CERT_LIFETIME, WorkloadCert};
pub use clock::{Clock, SystemClock, TokioClock};
pub use error::IdentityError;
pub use external::ExternalDir;
pub use manager::{CertManager, CertSource};
pub use resolver::IdentityResolver;
pub use spiffe::{DEFAULT_SERVICE_ACCOUNT, DEFAULT_TRUST_DOMAIN, SpiffeId};
