//! Reading what identity needs out of an X.509 certificate: its SPIFFE ID and validity window.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::{
    certificate::X509Certificate, extensions::GeneralName, prelude::FromDer, time::ASN1Time,
};

use super::{IdentityError, SpiffeId};

/// What a leaf certificate says about its workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafInfo {
    pub id: SpiffeId,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// DER of the SubjectPublicKeyInfo, to match against a private key.
    pub spki: Vec<u8>,
}

pub fn parse(der: &[u8]) -> Result<X509Certificate<'_>, IdentityError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(IdentityError::BadCertificate(
            "trailing data after the certificate".into(),
        )),
        Err(e) => Err(IdentityError::BadCertificate(format!(
            "not a DER X.509 certificate ({e})"
        ))),
    }
}

/// The SPIFFE ID and validity of a workload (leaf) certificate. A SPIFFE certificate has exactly
/// one URI SAN, the ID.
pub fn leaf_info(der: &[u8]) -> Result<LeafInfo, IdentityError> {
    let cert = parse(der)?;
    let uris = uri_sans(&cert)?;
    let id = match uris[..] {
        [] => return Err(IdentityError::NoSpiffeId),
        [uri] => uri.parse::<SpiffeId>()?,
        _ => {
            return Err(IdentityError::BadCertificate(format!(
                "certificate has {} URI SANs ({}); a SPIFFE certificate has exactly one",
                uris.len(),
                uris.join(", ")
            )));
        }
    };
    let validity = cert.validity();
    Ok(LeafInfo {
        id,
        not_before: system_time(validity.not_before),
        not_after: system_time(validity.not_after),
        spki: cert.public_key().raw.to_vec(),
    })
}

/// The SPIFFE ID of a certificate, whatever else it has, for peers' certificates.
pub fn spiffe_id(der: &[u8]) -> Result<SpiffeId, IdentityError> {
    leaf_info(der).map(|info| info.id)
}

/// URI SANs of a certificate.
pub fn uri_sans<'a>(cert: &'a X509Certificate<'_>) -> Result<Vec<&'a str>, IdentityError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::BadCertificate(format!("bad subjectAltName extension: {e}")))?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// The client-certificate details Envoy puts in `x-forwarded-client-cert` as Istio configures
/// it (`Hash`, `Subject`, `URI`, `DNS`): the certificate's SHA-256 in hex, its subject in RFC
/// 2253 form (empty for Istio's and meshd's workload certificates), and its SANs.
pub fn forwarded_details(der: &[u8]) -> Result<String, IdentityError> {
    use sha2::{Digest, Sha256};
    use std::fmt::Write;
    let cert = parse(der)?;
    let mut out = String::from("Hash=");
    for b in Sha256::digest(der) {
        let _ = write!(out, "{b:02x}");
    }
    let mut rdns: Vec<String> = cert
        .subject()
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|a| {
                    let name = x509_parser::objects::oid2abbrev(
                        a.attr_type(),
                        x509_parser::objects::oid_registry(),
                    )
                    .map_or_else(|_| a.attr_type().to_id_string(), str::to_string);
                    format!("{name}={}", a.as_str().unwrap_or_default())
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.reverse();
    let _ = write!(out, ";Subject=\"{}\"", rdns.join(","));
    for uri in uri_sans(&cert)? {
        let _ = write!(out, ";URI={uri}");
    }
    let dns = (cert.subject_alternative_name().ok().flatten()).into_iter();
    for name in dns.flat_map(|ext| ext.value.general_names.iter()) {
        if let GeneralName::DNSName(d) = name {
            let _ = write!(out, ";DNS={d}");
        }
    }
    Ok(out)
}

/// An `x-forwarded-client-cert` element: the server `by` and a client certificate's details
/// (from [`forwarded_details`]).
pub fn forwarded_element(by: &SpiffeId, details: &str) -> String {
    format!("By={by};{details}")
}

pub fn system_time(t: ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}
