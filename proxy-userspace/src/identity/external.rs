//! Workload certificates written to a directory by SPIRE (spiffe-helper), cert-manager (a
//! mounted Secret or its CSI driver) or an operator, instead of issued by the built-in CA.
//!
//! Layout of the directory:
//!
//! ```text
//! <dir>/ca.pem                               trust bundle: one or more PEM CA certificates
//! <dir>/<namespace>/<serviceAccount>/cert.pem  the leaf first, then any intermediates (PEM)
//! <dir>/<namespace>/<serviceAccount>/key.pem   the leaf's private key: PEM PKCS#8, SEC1
//!                                              ("EC PRIVATE KEY") or PKCS#1 ("RSA PRIVATE KEY")
//! ```
//!
//! The trust domain is not part of the path: the leaf's one URI SAN must equal the SPIFFE ID
//! asked for, trust domain included, and its chain must lead to `ca.pem`. With cert-manager,
//! map the Secret's keys onto these names (`tls.crt` → `cert.pem`, `tls.key` → `key.pem`,
//! `ca.crt` → `../../ca.pem` or a separate bundle mount); with spiffe-helper, set
//! `svid_file_name`, `svid_key_file_name` and `svid_bundle_file_name` accordingly.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject},
};

use super::{IdentityError, SpiffeId, WorkloadCert, ca::read_text, verify};

pub const BUNDLE_FILE: &str = "ca.pem";
pub const CERT_FILE: &str = "cert.pem";
pub const KEY_FILE: &str = "key.pem";

/// A directory of certificates in the layout above.
#[derive(Clone, Debug)]
pub struct ExternalDir {
    root: PathBuf,
}

impl ExternalDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ExternalDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn bundle_path(&self) -> PathBuf {
        self.root.join(BUNDLE_FILE)
    }

    pub fn cert_path(&self, id: &SpiffeId) -> PathBuf {
        self.identity_dir(id).join(CERT_FILE)
    }

    pub fn key_path(&self, id: &SpiffeId) -> PathBuf {
        self.identity_dir(id).join(KEY_FILE)
    }

    fn identity_dir(&self, id: &SpiffeId) -> PathBuf {
        self.root.join(id.namespace()).join(id.service_account())
    }

    /// The trust bundle `ca.pem`.
    pub fn load_bundle(&self) -> Result<RootCertStore, IdentityError> {
        let path = self.bundle_path();
        let certs = read_certs(&path)?;
        let mut roots = RootCertStore::empty();
        for (i, cert) in certs.into_iter().enumerate() {
            roots.add(cert).map_err(|e| {
                IdentityError::bad_file(&path, format!("certificate #{} unusable: {e}", i + 1))
            })?;
        }
        Ok(roots)
    }

    /// The certificate of `id`, checked as of `now`: it names `id`, matches its key, is within
    /// its validity and chains to the trust bundle.
    pub fn load(&self, id: &SpiffeId, now: SystemTime) -> Result<WorkloadCert, IdentityError> {
        let roots = Arc::new(self.load_bundle()?);
        let (cert_path, key_path) = (self.cert_path(id), self.key_path(id));
        let chain = read_certs(&cert_path)?;
        let key_pem = read_text(&key_path)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
            IdentityError::bad_file(&key_path, format!("no usable PEM private key ({e})"))
        })?;
        let cert = WorkloadCert::new(chain, key).map_err(|e| match e {
            IdentityError::KeyMismatch => IdentityError::bad_file(
                &key_path,
                format!("the private key does not belong to the certificate in {CERT_FILE}"),
            ),
            IdentityError::UnusableKey(_) => IdentityError::bad_file(&key_path, e),
            e => IdentityError::bad_file(&cert_path, e),
        })?;
        if cert.id() != id {
            return Err(IdentityError::bad_file(
                &cert_path,
                format!("the certificate is for {} but {id} was expected", cert.id()),
            ));
        }
        let unix = UnixTime::since_unix_epoch(
            now.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        );
        verify::check_own_chain(&cert, roots, unix).map_err(|e| match e {
            IdentityError::UntrustedIssuer { .. } => IdentityError::bad_file(
                &cert_path,
                format!("{e} ({})", self.bundle_path().display()),
            ),
            e => IdentityError::bad_file(&cert_path, e),
        })?;
        Ok(cert)
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let text = read_text(path)?;
    let certs = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::bad_file(path, format!("bad PEM ({e})")))?;
    if certs.is_empty() {
        return Err(IdentityError::bad_file(
            path,
            "holds no PEM CERTIFICATE block",
        ));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests;
