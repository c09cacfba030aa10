//! The built-in certificate authority: a self-signed ECDSA P-256 root kept in a directory
//! (`ca.key`, mode 0600, and `ca.crt`, both PEM) that issues short-lived workload certificates.

use std::{
    fs,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
};
use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, pem::PemObject},
};

use super::{IdentityError, SpiffeId, WorkloadCert, spiffe, x509};

pub const CA_KEY_FILE: &str = "ca.key";
pub const CA_CERT_FILE: &str = "ca.crt";
/// Validity of the root the CA generates.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How far back certificates start, so that peers whose clocks lag still accept them.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// A CA that can sign. Its root is the trust anchor of every certificate it issues.
pub struct Ca {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    cert_pem: String,
}

impl Ca {
    /// A new root for `trust_domain`, in memory only.
    pub fn generate(trust_domain: &str) -> Result<Ca, IdentityError> {
        spiffe::validate_trust_domain(trust_domain)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate_error)?;
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(DnType::CommonName, "meshd root CA");
        params.distinguished_name = dn;
        params.subject_alt_names = vec![uri_san(&format!("spiffe://{trust_domain}"))?];
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = (now + CA_VALIDITY).into();
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).map_err(generate_error)?;
        Ok(Ca {
            trust_domain: trust_domain.to_string(),
            cert: cert.der().clone(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Generates a root and writes it to `dir` (created if missing). Existing files are kept
    /// and reported unless `force`.
    pub fn init(dir: &Path, trust_domain: &str, force: bool) -> Result<Ca, IdentityError> {
        let (key_path, cert_path) = (dir.join(CA_KEY_FILE), dir.join(CA_CERT_FILE));
        if !force {
            for path in [&key_path, &cert_path] {
                if path.exists() {
                    return Err(IdentityError::AlreadyExists { path: path.clone() });
                }
            }
        }
        let ca = Ca::generate(trust_domain)?;
        fs::create_dir_all(dir).map_err(|e| IdentityError::io(dir, e))?;
        write_file(&key_path, ca.issuer.key().serialize_pem().as_bytes(), 0o600)?;
        write_file(&cert_path, ca.cert_pem.as_bytes(), 0o644)?;
        Ok(ca)
    }

    /// Reads the CA that [`Ca::init`] wrote. The trust domain comes from the root's
    /// `spiffe://<trust-domain>` URI SAN.
    pub fn load(dir: &Path) -> Result<Ca, IdentityError> {
        let (key_path, cert_path) = (dir.join(CA_KEY_FILE), dir.join(CA_CERT_FILE));
        let key_pem = read_text(&key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| {
            IdentityError::bad_file(&key_path, format!("not a PEM private key ({e})"))
        })?;
        let cert_pem = read_text(&cert_path)?;
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| {
            IdentityError::bad_file(&cert_path, format!("not a PEM certificate ({e})"))
        })?;
        let bad_cert = |reason: String| IdentityError::bad_file(&cert_path, reason);
        let parsed = x509::parse(&cert).map_err(|e| bad_cert(e.to_string()))?;
        if !parsed.is_ca() {
            return Err(bad_cert(
                "not a CA certificate (basicConstraints CA is not set)".into(),
            ));
        }
        if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(bad_cert(format!(
                "does not belong to the key in {CA_KEY_FILE}"
            )));
        }
        let not_after = x509::system_time(parsed.validity().not_after);
        if not_after <= SystemTime::now() {
            let at = super::error::timestamp(not_after);
            return Err(bad_cert(format!("the CA certificate expired at {at}")));
        }
        let trust_domain = x509::uri_sans(&parsed)?
            .iter()
            .find_map(|uri| uri.strip_prefix("spiffe://"))
            .map(str::to_string)
            .ok_or_else(|| bad_cert("has no spiffe://<trust-domain> URI SAN".into()))?;
        spiffe::validate_trust_domain(&trust_domain).map_err(|e| bad_cert(e.to_string()))?;
        let issuer = Issuer::from_ca_cert_der(&cert, key)
            .map_err(|e| bad_cert(format!("cannot sign with it ({e})")))?;
        Ok(Ca {
            trust_domain,
            issuer,
            cert,
            cert_pem,
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root certificate, DER.
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A trust store holding this CA's root.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.cert.clone())
            .expect("the CA's own root is a valid trust anchor");
        roots
    }

    /// A certificate for `id`, valid from a minute ago for `lifetime`.
    pub fn issue(&self, id: &SpiffeId, lifetime: Duration) -> Result<WorkloadCert, IdentityError> {
        self.issue_at(id, SystemTime::now(), lifetime)
    }

    /// A certificate for `id` as if issued at `now` (for injected clocks and tests).
    pub fn issue_at(
        &self,
        id: &SpiffeId,
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<WorkloadCert, IdentityError> {
        if id.trust_domain() != self.trust_domain {
            return Err(IdentityError::ForeignTrustDomain {
                trust_domain: self.trust_domain.clone(),
                id: id.clone(),
            });
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate_error)?;
        let mut params = CertificateParams::default();
        // An empty subject, as in Istio: the URI SAN (then marked critical) is the identity.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![uri_san(&id.to_string())?];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        // Backdated for lagging clocks, but never by more than a quarter of a short lifetime,
        // which would move its half-life renewal into the past.
        params.not_before = (now - CLOCK_SKEW.min(lifetime / 4)).into();
        params.not_after = (now + lifetime).into();
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(generate_error)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        WorkloadCert::new(vec![cert.der().clone()], key)
    }
}

fn uri_san(uri: &str) -> Result<SanType, IdentityError> {
    let uri = uri.try_into().map_err(generate_error)?;
    Ok(SanType::URI(uri))
}

/// 16 random bytes with the top bit clear, so the serial is a positive integer.
fn random_serial() -> SerialNumber {
    let mut bytes = fastrand::u128(..).to_be_bytes();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn generate_error(e: rcgen::Error) -> IdentityError {
    IdentityError::Generate(e.to_string())
}

pub(crate) fn read_text(path: &Path) -> Result<String, IdentityError> {
    fs::read_to_string(path).map_err(|e| IdentityError::io(path, e))
}

/// Writes through a temporary file and a rename, so a reader never sees half a file.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), IdentityError> {
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let _ = fs::remove_file(&tmp);
    let io = |e| IdentityError::io(path, e);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    // The umask may have narrowed the mode; the key must be exactly 0600.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests;
