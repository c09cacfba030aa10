use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::PrivatePkcs8KeyDer;

use super::*;
use crate::identity::{
    Ca, DEFAULT_CERT_LIFETIME,
    testutil::{TempDir, pem, write_external, write_external_for},
};

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "shop", sa).unwrap()
}

fn setup(tag: &str) -> (TempDir, Ca, ExternalDir) {
    let tmp = TempDir::new(tag);
    let ca = Ca::generate("cluster.local").unwrap();
    let dir = ExternalDir::new(tmp.path());
    (tmp, ca, dir)
}

fn load_err(dir: &ExternalDir, sa: &str) -> String {
    dir.load(&id(sa), SystemTime::now())
        .err()
        .unwrap()
        .to_string()
}

#[test]
fn loads_the_certificate_of_an_identity() {
    let (_tmp, ca, dir) = setup("ext-ok");
    let cert = ca.issue(&id("checkout"), DEFAULT_CERT_LIFETIME).unwrap();
    write_external(dir.root(), &ca, &cert);
    let loaded = dir.load(&id("checkout"), SystemTime::now()).unwrap();
    assert_eq!(loaded.id(), &id("checkout"));
    assert_eq!(loaded.leaf(), cert.leaf());
    assert_eq!(dir.load_bundle().unwrap().len(), 1);
    assert!(
        dir.cert_path(&id("checkout"))
            .ends_with("shop/checkout/cert.pem")
    );
}

#[test]
fn a_certificate_for_another_identity_is_refused() {
    let (_tmp, ca, dir) = setup("ext-san");
    let other = ca.issue(&id("other"), DEFAULT_CERT_LIFETIME).unwrap();
    write_external_for(dir.root(), &ca, &other, &id("checkout"));
    let err = load_err(&dir, "checkout");
    assert!(err.contains("shop/checkout/cert.pem: the certificate is for spiffe://cluster.local/ns/shop/sa/other but spiffe://cluster.local/ns/shop/sa/checkout was expected"), "{err}");
}

#[test]
fn a_key_of_another_certificate_is_refused() {
    let (_tmp, ca, dir) = setup("ext-key");
    let cert = ca.issue(&id("checkout"), DEFAULT_CERT_LIFETIME).unwrap();
    let other = ca.issue(&id("checkout"), DEFAULT_CERT_LIFETIME).unwrap();
    write_external(dir.root(), &ca, &cert);
    let key = pem("PRIVATE KEY", &[other.key().secret_der()]);
    std::fs::write(dir.key_path(&id("checkout")), key).unwrap();
    let err = load_err(&dir, "checkout");
    assert!(
        err.contains(
            "checkout/key.pem: the private key does not belong to the certificate in cert.pem"
        ),
        "{err}"
    );
}

#[test]
fn missing_and_malformed_files_are_named() {
    let (_tmp, ca, dir) = setup("ext-missing");
    let err = load_err(&dir, "checkout");
    assert!(
        err.contains("ca.pem") && err.contains("No such file"),
        "{err}"
    );
    let cert = ca.issue(&id("checkout"), DEFAULT_CERT_LIFETIME).unwrap();
    write_external(dir.root(), &ca, &cert);
    std::fs::write(dir.cert_path(&id("checkout")), "not pem").unwrap();
    let err = load_err(&dir, "checkout");
    assert!(
        err.contains("checkout/cert.pem: holds no PEM CERTIFICATE block"),
        "{err}"
    );
    write_external(dir.root(), &ca, &cert);
    std::fs::remove_file(dir.key_path(&id("checkout"))).unwrap();
    let err = load_err(&dir, "checkout");
    assert!(
        err.contains("checkout/key.pem") && err.contains("No such file"),
        "{err}"
    );
}

#[test]
fn certificates_outside_the_trust_bundle_or_expired_are_refused() {
    let (_tmp, ca, dir) = setup("ext-trust");
    let rogue = Ca::generate("cluster.local").unwrap();
    let cert = rogue.issue(&id("checkout"), DEFAULT_CERT_LIFETIME).unwrap();
    write_external_for(dir.root(), &ca, &cert, &id("checkout"));
    let err = load_err(&dir, "checkout");
    assert!(err.contains("cert.pem: certificate of spiffe://cluster.local/ns/shop/sa/checkout not signed by the trust bundle"), "{err}");
    assert!(err.ends_with("ca.pem)"), "{err}");

    let long_ago = SystemTime::now() - Duration::from_secs(3 * 24 * 3600);
    let stale = ca
        .issue_at(&id("checkout"), long_ago, DEFAULT_CERT_LIFETIME)
        .unwrap();
    write_external(dir.root(), &ca, &stale);
    let err = load_err(&dir, "checkout");
    assert!(
        err.contains(
            "cert.pem: certificate of spiffe://cluster.local/ns/shop/sa/checkout expired at"
        ),
        "{err}"
    );
}

/// cert.pem may hold the leaf and an intermediate; ca.pem holds only the root.
#[test]
fn a_chain_through_an_intermediate_loads() {
    let tmp = TempDir::new("ext-chain");
    let ca_params = |name: &str| {
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p
    };
    let root_key = KeyPair::generate().unwrap();
    let root_params = ca_params("root");
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root_params, root_key);
    let mid_key = KeyPair::generate().unwrap();
    let mid_params = ca_params("intermediate");
    let mid = mid_params.signed_by(&mid_key, &root_issuer).unwrap();
    let mid_issuer = Issuer::new(mid_params, mid_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params = CertificateParams::default();
    leaf_params.distinguished_name = DistinguishedName::new();
    let uri = id("checkout").to_string().try_into().unwrap();
    leaf_params.subject_alt_names = vec![SanType::URI(uri)];
    leaf_params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let leaf = leaf_params.signed_by(&leaf_key, &mid_issuer).unwrap();

    let dir = ExternalDir::new(tmp.path());
    let sa_dir = tmp.path().join("shop/checkout");
    std::fs::create_dir_all(&sa_dir).unwrap();
    std::fs::write(dir.bundle_path(), root.pem()).unwrap();
    std::fs::write(sa_dir.join(CERT_FILE), leaf.pem() + &mid.pem()).unwrap();
    std::fs::write(sa_dir.join(KEY_FILE), leaf_key.serialize_pem()).unwrap();
    let cert = dir.load(&id("checkout"), SystemTime::now()).unwrap();
    assert_eq!(cert.chain().len(), 2);
    let key = PrivatePkcs8KeyDer::from(leaf_key.serialize_der());
    assert_eq!(cert.key().secret_der(), key.secret_pkcs8_der());

    // Without the intermediate the leaf does not chain to the bundle.
    std::fs::write(sa_dir.join(CERT_FILE), leaf.pem()).unwrap();
    let err = load_err(&dir, "checkout");
    assert!(err.contains("not signed by the trust bundle"), "{err}");
}
