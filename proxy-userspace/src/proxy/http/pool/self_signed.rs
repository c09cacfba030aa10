//! A self-signed server certificate trusted as itself: a `caCertificates` file may hold the
//! very certificate the server presents (a self-signed one, often marked as a CA). The web PKI
//! refuses a CA certificate as a server's (`CaUsedAsEndEntity`); OpenSSL and BoringSSL, and so
//! Envoy, accept a presented certificate that is itself one of the trusted self-signed ones.
//! So does meshd, still checking the server's name, the certificate's validity period and that
//! it may serve TLS (its key and extended key usages, as OpenSSL's `ssl_server` purpose).

use rustls::{
    CertificateError, Error,
    client::danger::ServerCertVerified,
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use x509_parser::{certificate::X509Certificate, prelude::FromDer, time::ASN1Time};

/// The self-signed certificates (issuer is subject, signed by its own key) among `certs`: the
/// only trusted certificates a server may present as its own.
pub fn anchors(certs: &[CertificateDer<'static>]) -> Vec<CertificateDer<'static>> {
    certs
        .iter()
        .filter(|der| {
            X509Certificate::from_der(der).is_ok_and(|(_, c)| {
                c.issuer().as_raw() == c.subject().as_raw() && c.verify_signature(None).is_ok()
            })
        })
        .cloned()
        .collect()
}

/// Verified when `end_entity` is byte for byte one of `anchors`, valid at `now` and for one
/// of `names`; `None` when it is none of them, so the web PKI's verdict stands.
pub fn verify(
    anchors: &[CertificateDer<'static>],
    end_entity: &CertificateDer<'_>,
    names: &[&ServerName<'_>],
    now: UnixTime,
) -> Option<Result<ServerCertVerified, Error>> {
    if !anchors.iter().any(|a| a.as_ref() == end_entity.as_ref()) {
        return None;
    }
    Some(check(end_entity, names, now))
}

fn check(
    der: &CertificateDer<'_>,
    names: &[&ServerName<'_>],
    now: UnixTime,
) -> Result<ServerCertVerified, Error> {
    let (_, parsed) = X509Certificate::from_der(der)
        .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let at = ASN1Time::from_timestamp(secs)
        .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
    if at < parsed.validity().not_before {
        return Err(Error::InvalidCertificate(CertificateError::NotValidYet));
    }
    if at > parsed.validity().not_after {
        return Err(Error::InvalidCertificate(CertificateError::Expired));
    }
    if !serves_tls(&parsed) {
        return Err(Error::InvalidCertificate(CertificateError::InvalidPurpose));
    }
    let cert = webpki::EndEntityCert::try_from(der)
        .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
    if names
        .iter()
        .any(|name| cert.verify_is_valid_for_subject_name(name).is_ok())
    {
        Ok(ServerCertVerified::assertion())
    } else {
        Err(Error::InvalidCertificate(CertificateError::NotValidForName))
    }
}

/// BoringSSL's and OpenSSL's `ssl_server` purpose: an extended key usage, when present, names
/// serverAuth (anyExtendedKeyUsage alone does not do); a key usage, when present, allows
/// signing or key exchange.
fn serves_tls(cert: &X509Certificate<'_>) -> bool {
    let eku = match cert.extended_key_usage() {
        Ok(Some(e)) => e.value.server_auth,
        Ok(None) => true,
        Err(_) => false,
    };
    let ku = match cert.key_usage() {
        Ok(Some(k)) => {
            k.value.digital_signature() || k.value.key_encipherment() || k.value.key_agreement()
        }
        Ok(None) => true,
        Err(_) => false,
    };
    eku && ku
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, date_time_ymd};

    fn self_signed(name: &str, ca: bool) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        if ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        params.self_signed(&key).unwrap().der().clone()
    }

    fn now() -> UnixTime {
        UnixTime::now()
    }

    #[test]
    fn only_the_trusted_certificate_itself_for_its_name() {
        let cert = self_signed("a.example", true);
        let anchors = anchors(std::slice::from_ref(&cert));
        assert_eq!(anchors.len(), 1);
        let a = ServerName::try_from("a.example").unwrap();
        let b = ServerName::try_from("b.example").unwrap();
        assert!(matches!(verify(&anchors, &cert, &[&a], now()), Some(Ok(_))));
        assert!(matches!(
            verify(&anchors, &cert, &[&b], now()),
            Some(Err(Error::InvalidCertificate(
                CertificateError::NotValidForName
            )))
        ));
        assert!(matches!(
            verify(&anchors, &cert, &[&b, &a], now()),
            Some(Ok(_))
        ));
        // Another certificate for the same name, not the trusted one: not this check's.
        let other = self_signed("a.example", true);
        assert!(verify(&anchors, &other, &[&a], now()).is_none());
    }

    /// A self-signed certificate for a.example, `edit` applied to its parameters, checked as a
    /// trusted one.
    fn checked(edit: impl Fn(&mut CertificateParams)) -> Result<ServerCertVerified, Error> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["a.example".to_string()]).unwrap();
        edit(&mut params);
        let cert = params.self_signed(&key).unwrap().der().clone();
        let anchors = anchors(std::slice::from_ref(&cert));
        let a = ServerName::try_from("a.example").unwrap();
        verify(&anchors, &cert, &[&a], now()).expect("a trusted certificate")
    }

    fn refused(r: Result<ServerCertVerified, Error>) -> Option<CertificateError> {
        match r {
            Err(Error::InvalidCertificate(e)) => Some(e),
            _ => None,
        }
    }

    #[test]
    fn outside_its_validity_it_is_refused() {
        let expired = checked(|p| {
            p.not_before = date_time_ymd(2020, 1, 1);
            p.not_after = date_time_ymd(2021, 1, 1);
        });
        assert_eq!(refused(expired), Some(CertificateError::Expired));
        let early = checked(|p| {
            p.not_before = date_time_ymd(2090, 1, 1);
            p.not_after = date_time_ymd(2091, 1, 1);
        });
        assert_eq!(refused(early), Some(CertificateError::NotValidYet));
    }

    #[test]
    fn a_certificate_not_for_servers_is_refused() {
        use rcgen::{ExtendedKeyUsagePurpose as Eku, KeyUsagePurpose as Ku};
        let client_only = checked(|p| p.extended_key_usages = vec![Eku::ClientAuth]);
        assert_eq!(refused(client_only), Some(CertificateError::InvalidPurpose));
        let any_use = checked(|p| p.extended_key_usages = vec![Eku::Any]);
        assert_eq!(refused(any_use), Some(CertificateError::InvalidPurpose));
        let signing_certs_only = checked(|p| p.key_usages = vec![Ku::KeyCertSign, Ku::CrlSign]);
        assert_eq!(
            refused(signing_certs_only),
            Some(CertificateError::InvalidPurpose)
        );
        assert!(checked(|p| p.extended_key_usages = vec![Eku::ServerAuth]).is_ok());
        assert!(checked(|p| p.key_usages = vec![Ku::DigitalSignature, Ku::KeyCertSign]).is_ok());
    }

    #[test]
    fn a_certificate_signed_by_another_is_no_anchor() {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["a.example".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        // rcgen gives both the same distinguished name, so the leaf's issuer is its subject:
        // only its signature, by the CA's key, tells it is not self-signed.
        let certs = [ca_cert.der().clone(), leaf.der().clone()];
        assert_eq!(anchors(&certs), [ca_cert.der().clone()]);
        assert_eq!(anchors(&[self_signed("b.example", false)]).len(), 1);
    }
}
