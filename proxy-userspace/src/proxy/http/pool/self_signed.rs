//! A self-signed server certificate trusted as itself: a `caCertificates` file may hold the
//! very certificate the server presents (a self-signed one, often marked as a CA). The web PKI
//! refuses a CA certificate as a server's (`CaUsedAsEndEntity`); OpenSSL and BoringSSL, and so
//! Envoy, accept a presented certificate that is itself one of the trusted self-signed ones.
//! So does meshd, still checking the server's name and the certificate's validity period.

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

    #[test]
    fn outside_its_validity_it_is_refused() {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["a.example".to_string()]).unwrap();
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2021, 1, 1);
        let cert = params.self_signed(&key).unwrap().der().clone();
        let anchors = anchors(std::slice::from_ref(&cert));
        let a = ServerName::try_from("a.example").unwrap();
        assert!(matches!(
            verify(&anchors, &cert, &[&a], now()),
            Some(Err(Error::InvalidCertificate(CertificateError::Expired)))
        ));
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
        let certs = [ca_cert.der().clone(), leaf.der().clone()];
        assert_eq!(anchors(&certs), [ca_cert.der().clone()]);
        assert_eq!(anchors(&[self_signed("b.example", false)]).len(), 1);
    }
}
