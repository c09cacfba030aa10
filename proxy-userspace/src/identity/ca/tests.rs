use std::{os::unix::fs::PermissionsExt, sync::Arc};

use rustls::pki_types::UnixTime;

use super::*;
use crate::identity::{DEFAULT_CERT_LIFETIME, testutil::TempDir};

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "shop", sa).unwrap()
}

#[test]
fn init_then_load_round_trips() {
    let dir = TempDir::new("ca-init");
    let ca = Ca::init(dir.path(), "cluster.local", false).unwrap();
    let mode = |f: &str| {
        let meta = std::fs::metadata(dir.path().join(f)).unwrap();
        meta.permissions().mode() & 0o777
    };
    assert_eq!(mode(CA_KEY_FILE), 0o600);
    assert_eq!(mode(CA_CERT_FILE), 0o644);
    let pem = std::fs::read_to_string(dir.path().join(CA_CERT_FILE)).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));

    let loaded = Ca::load(dir.path()).unwrap();
    assert_eq!(loaded.trust_domain(), "cluster.local");
    assert_eq!(loaded.cert(), ca.cert());
    // The loaded CA signs certificates that chain to the root written by init.
    let cert = loaded
        .issue(&id("checkout"), DEFAULT_CERT_LIFETIME)
        .unwrap();
    let roots = Arc::new(ca.roots());
    let now = UnixTime::now();
    crate::identity::verify::check_own_chain(&cert, roots, now).unwrap();
}

#[test]
fn root_is_a_ten_year_p256_ca() {
    let ca = Ca::generate("example.org").unwrap();
    let parsed = x509::parse(ca.cert()).unwrap();
    assert!(parsed.is_ca());
    assert_eq!(x509::uri_sans(&parsed).unwrap(), ["spiffe://example.org"]);
    let validity = parsed.validity();
    let years = (validity.not_after.timestamp() - validity.not_before.timestamp()) / 86_400 / 365;
    assert_eq!(years, 10);
    assert_eq!(
        parsed.public_key().algorithm.algorithm.to_id_string(),
        "1.2.840.10045.2.1",
        "ecPublicKey"
    );
}

#[test]
fn init_refuses_to_overwrite_unless_forced() {
    let dir = TempDir::new("ca-overwrite");
    let first = Ca::init(dir.path(), "cluster.local", false).unwrap();
    let err = Ca::init(dir.path(), "cluster.local", false)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("refusing to overwrite"), "{err}");
    assert!(err.contains(CA_KEY_FILE), "{err}");
    assert_eq!(Ca::load(dir.path()).unwrap().cert(), first.cert());

    let second = Ca::init(dir.path(), "cluster.local", true).unwrap();
    assert_ne!(second.cert(), first.cert());
    assert_eq!(Ca::load(dir.path()).unwrap().cert(), second.cert());
}

#[test]
fn init_refuses_when_only_the_certificate_exists() {
    let dir = TempDir::new("ca-half");
    std::fs::write(dir.path().join(CA_CERT_FILE), "x").unwrap();
    let err = Ca::init(dir.path(), "cluster.local", false)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains(CA_CERT_FILE), "{err}");
}

#[test]
fn load_names_the_file_and_the_reason() {
    let dir = TempDir::new("ca-load");
    let err = Ca::load(dir.path()).err().unwrap().to_string();
    assert!(
        err.contains(CA_KEY_FILE) && err.contains("No such file"),
        "{err}"
    );

    Ca::init(dir.path(), "cluster.local", false).unwrap();
    std::fs::write(dir.path().join(CA_CERT_FILE), "garbage").unwrap();
    let err = Ca::load(dir.path()).err().unwrap().to_string();
    assert!(
        err.contains(CA_CERT_FILE) && err.contains("not a PEM certificate"),
        "{err}"
    );

    // A certificate that does not belong to the key.
    let other = Ca::generate("cluster.local").unwrap();
    std::fs::write(dir.path().join(CA_CERT_FILE), other.cert_pem()).unwrap();
    let err = Ca::load(dir.path()).err().unwrap().to_string();
    assert!(
        err.contains("does not belong to the key in ca.key"),
        "{err}"
    );

    std::fs::write(dir.path().join(CA_KEY_FILE), "garbage").unwrap();
    let err = Ca::load(dir.path()).err().unwrap().to_string();
    assert!(
        err.contains(CA_KEY_FILE) && err.contains("not a PEM private key"),
        "{err}"
    );
}

#[test]
fn init_rejects_a_bad_trust_domain() {
    let dir = TempDir::new("ca-td");
    let err = Ca::init(dir.path(), "Bad Domain", false).err().unwrap();
    assert!(err.to_string().contains("invalid trust domain"), "{err}");
    assert!(!dir.path().join(CA_KEY_FILE).exists());
}

#[test]
fn issued_certificate_names_the_identity_and_its_lifetime() {
    let ca = Ca::generate("cluster.local").unwrap();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
    let cert = ca
        .issue_at(&id("checkout"), now, DEFAULT_CERT_LIFETIME)
        .unwrap();
    assert_eq!(cert.id(), &id("checkout"));
    assert_eq!(cert.not_before(), now - CLOCK_SKEW);
    assert_eq!(cert.not_after(), now + DEFAULT_CERT_LIFETIME);
    assert_eq!(cert.rotate_at(), cert.not_before() + cert.lifetime() / 2);
    assert_eq!(cert.chain().len(), 1);

    let parsed = x509::parse(cert.leaf()).unwrap();
    assert_eq!(
        x509::uri_sans(&parsed).unwrap(),
        ["spiffe://cluster.local/ns/shop/sa/checkout"]
    );
    assert!(!parsed.is_ca());
    let eku = parsed.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert_eq!(parsed.issuer(), x509::parse(ca.cert()).unwrap().subject());
}

#[test]
fn issue_refuses_another_trust_domain() {
    let ca = Ca::generate("cluster.local").unwrap();
    let foreign = SpiffeId::new("example.org", "shop", "checkout").unwrap();
    let err = ca.issue(&foreign, DEFAULT_CERT_LIFETIME).err().unwrap();
    assert_eq!(
        err.to_string(),
        "the CA of trust domain cluster.local cannot issue a certificate for \
         spiffe://example.org/ns/shop/sa/checkout"
    );
}

#[test]
fn expires_in_counts_down_to_zero() {
    let ca = Ca::generate("cluster.local").unwrap();
    let now = SystemTime::now();
    let cert = ca
        .issue_at(&id("a"), now, Duration::from_secs(3600))
        .unwrap();
    assert!(cert.expires_in() <= Duration::from_secs(3600));
    assert_eq!(
        cert.expires_in_at(now + Duration::from_secs(7200)),
        Duration::ZERO
    );
}

#[test]
fn a_workload_certificate_gives_envoys_forwarded_client_cert_element() {
    use sha2::{Digest, Sha256};
    let ca = Ca::generate("cluster.local").unwrap();
    let cert = ca.issue(&id("productpage"), DEFAULT_CERT_LIFETIME).unwrap();
    let hash: String = Sha256::digest(cert.leaf().as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        cert.forwarded_client_cert(&id("reviews")),
        format!(
            "By=spiffe://cluster.local/ns/shop/sa/reviews;Hash={hash};Subject=\"\";URI=spiffe://cluster.local/ns/shop/sa/productpage"
        )
    );
    // A subject in RFC 2253 order, most specific first.
    let root = crate::identity::x509::forwarded_details(ca.cert()).unwrap();
    assert!(
        root.contains(";Subject=\"CN=meshd root CA,O=cluster.local\";URI=spiffe://cluster.local"),
        "{root}"
    );
}
