//! TLS origination: a DestinationRule `tls` with mode `SIMPLE` (or `MUTUAL`, presenting a
//! client certificate) makes meshd open TLS to the upstream itself, as Istio's sidecar does for
//! "egress TLS origination". The server is verified against `caCertificates` (else the
//! system's bundle), by the names in `subjectAltNames` or else the server name sent, which is
//! `sni` or else the request's host, and against the revocation lists in `caCrl`;
//! `insecureSkipVerify` checks nothing but the handshake.

use std::{
    fmt,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use rustls::{
    ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    pki_types::{
        CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
        pem::PemObject,
    },
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{TlsConnector, client::TlsStream};

use crate::{
    identity::tls::{crypto_provider, signature_schemes, tls12_signature, tls13_signature},
    policy::model::ClientTls,
};

/// Where Debian keeps the system's trusted certificates.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How one connection is originated: the client config and the server name to send.
#[derive(Clone)]
pub struct Originate {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    /// The pool's key: the server name as written and the config's build. Connections
    /// verified for one name are pooled apart from another's, as Envoy keys its pools by the
    /// SNI it sends, and connections opened under one `tls` block (its CA, client
    /// certificate, protocols) apart from another's, as Envoy's clusters of different TLS
    /// contexts never share connections.
    key: Arc<str>,
}

impl fmt::Debug for Originate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Originate({:?})", self.server_name)
    }
}

impl PartialEq for Originate {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.config, &other.config) && self.server_name == other.server_name
    }
}

impl Eq for Originate {}

impl Originate {
    /// The name the server was verified for and the config it was opened with: part of the
    /// pool's key.
    pub fn pool_key(&self) -> &Arc<str> {
        &self.key
    }

    /// Opens TLS over `io` (a TCP connection, or a stream through the mTLS tunnel).
    pub async fn wrap<IO>(&self, io: IO) -> std::io::Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        TlsConnector::from(self.config.clone())
            .connect(self.server_name.clone(), io)
            .await
    }
}

/// The application protocol a client config offers (ALPN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Alpn {
    Http1,
    H2,
    /// An opaque TCP connection offers none, as Envoy's TCP proxy.
    None,
}

/// How often the files of a `tls` block are looked at again: a rotated certificate or a
/// reissued revocation list is read within this long.
const RECHECK: Duration = Duration::from_secs(10);

/// Client configs built from DestinationRule `tls` blocks, each built once (reading its files)
/// and rebuilt when one of its files changes (checked every [`RECHECK`]), so a renewed
/// certificate, a reissued `caCrl` or a file that was missing at first is picked up; a later
/// edit of the block builds a new one.
pub struct Originations {
    built: Mutex<Vec<Built>>,
    recheck: Duration,
}

impl Default for Originations {
    fn default() -> Self {
        Originations {
            built: Mutex::new(Vec::new()),
            recheck: RECHECK,
        }
    }
}

/// A `tls` block, the protocol offered, and the config built from it (or why there is none).
struct Built {
    tls: ClientTls,
    alpn: Alpn,
    config: Result<Arc<ClientConfig>, String>,
    /// Which block this is, unique in the process: the pool's key for its connections. A
    /// config rebuilt from changed files keeps it, so the connections already open stay in
    /// use (as Envoy keeps them when a secret rotates) and new ones use the new files.
    id: u64,
    /// When the block's files were last modified, as the config was built.
    stamps: Vec<Option<SystemTime>>,
    checked: Instant,
}

/// When each file the block names was last modified (`None`: unreadable or not named).
fn stamps(tls: &ClientTls) -> Vec<Option<SystemTime>> {
    [
        &tls.ca_certificates,
        &tls.ca_crl,
        &tls.client_certificate,
        &tls.private_key,
    ]
    .iter()
    .map(|path| {
        let path = path.as_deref()?;
        std::fs::metadata(path).and_then(|m| m.modified()).ok()
    })
    .collect()
}

/// The next [`Built::id`].
fn next_block() -> u64 {
    static BUILDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The client config for `tls`, its failure logged.
fn build(tls: &ClientTls, alpn: Alpn) -> Result<Arc<ClientConfig>, String> {
    let c = client_config(tls, alpn).map(Arc::new);
    if let Err(e) = &c {
        tracing::error!(error = %e, "DestinationRule tls: cannot originate TLS");
    }
    c
}

impl Originations {
    /// How to originate TLS under `tls` for a request to `host` (HTTP/2 upstream: `h2`);
    /// `Ok(None)` for a mode that originates nothing; `Err` says what in the block is wrong.
    pub fn for_request(
        &self,
        tls: Option<&ClientTls>,
        host: &str,
        h2: bool,
    ) -> Result<Option<Originate>, String> {
        self.originate(tls, host, if h2 { Alpn::H2 } else { Alpn::Http1 })
    }

    /// How to originate TLS under `tls` for an opaque TCP connection to the service `host`:
    /// as for a request, offering no application protocol.
    pub fn for_connection(
        &self,
        tls: Option<&ClientTls>,
        host: &str,
    ) -> Result<Option<Originate>, String> {
        self.originate(tls, host, Alpn::None)
    }

    fn originate(
        &self,
        tls: Option<&ClientTls>,
        host: &str,
        alpn: Alpn,
    ) -> Result<Option<Originate>, String> {
        let Some(tls) = tls.filter(|t| matches!(t.mode.as_str(), "SIMPLE" | "MUTUAL")) else {
            return Ok(None);
        };
        let (config, id) = self.config(tls, alpn)?;
        let name = tls.sni.as_deref().unwrap_or(host);
        let server_name = ServerName::try_from(name.to_string())
            .map_err(|_| format!("tls: {name:?} is not a server name to send"))?;
        Ok(Some(Originate {
            config,
            server_name,
            key: format!("{name}#{id}").into(),
        }))
    }
}

impl Originations {
    /// The config built for `tls` and its build's id, rebuilt when its files changed since.
    fn config(&self, tls: &ClientTls, alpn: Alpn) -> Result<(Arc<ClientConfig>, u64), String> {
        let mut built = self.built.lock().expect("originations lock");
        let now = Instant::now();
        let Some(b) = built.iter_mut().find(|b| b.tls == *tls && b.alpn == alpn) else {
            let b = Built {
                tls: tls.clone(),
                alpn,
                config: build(tls, alpn),
                id: next_block(),
                stamps: stamps(tls),
                checked: now,
            };
            let config = b.config.clone().map(|c| (c, b.id));
            built.push(b);
            return config;
        };
        if now.duration_since(b.checked) >= self.recheck {
            b.checked = now;
            let current = stamps(tls);
            if current != b.stamps {
                tracing::info!(
                    "DestinationRule tls: a file changed; building the TLS config again"
                );
                b.config = build(tls, alpn);
                b.stamps = current;
            }
        }
        b.config.clone().map(|c| (c, b.id))
    }
}

fn client_config(tls: &ClientTls, alpn: Alpn) -> Result<ClientConfig, String> {
    let builder = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = if tls.insecure_skip_verify == Some(true) {
        Arc::new(SkipVerify)
    } else {
        let (roots, trusted) = roots(tls.ca_certificates.as_deref())?;
        // With revocation lists, every certificate needs its issuer's list: a self-signed
        // certificate is not trusted as itself there.
        let anchors = match tls.ca_crl {
            None => super::self_signed::anchors(&trusted),
            Some(_) => Vec::new(),
        };
        let roots = Arc::new(roots);
        let mut webpki = WebPkiServerVerifier::builder_with_provider(roots, crypto_provider());
        if let Some(path) = &tls.ca_crl {
            // An expired list is refused, as BoringSSL refuses it for Envoy.
            webpki = webpki
                .with_crls(revocation_lists(path)?)
                .enforce_revocation_expiration();
        }
        let webpki = webpki
            .build()
            .map_err(|e| format!("tls.caCertificates: {e}"))?;
        let names = tls
            .subject_alt_names
            .iter()
            .map(|n| {
                ServerName::try_from(n.clone())
                    .map_err(|_| format!("tls.subjectAltNames: {n:?} is not a DNS name or address"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Arc::new(ByNames {
            webpki,
            names,
            anchors,
        })
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match (tls.mode.as_str(), &tls.client_certificate, &tls.private_key) {
        ("MUTUAL", Some(cert), Some(key)) => {
            let chain = certificates(cert, "tls.clientCertificate")?;
            let key = PrivateKeyDer::from_pem_file(Path::new(key))
                .map_err(|e| format!("tls.privateKey {key}: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("tls.clientCertificate: {e}"))?
        }
        ("MUTUAL", _, _) => {
            return Err(
                "tls: MUTUAL needs clientCertificate and privateKey (credentialName is \
                        not read by meshd)"
                    .into(),
            );
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = match alpn {
        Alpn::H2 => vec![b"h2".to_vec()],
        Alpn::Http1 => vec![b"http/1.1".to_vec()],
        Alpn::None => Vec::new(),
    };
    Ok(config)
}

fn certificates(path: &str, field: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(Path::new(path))
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{field} {path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{field} {path}: no certificate in the file"));
    }
    Ok(certs)
}

/// `caCrl`: the certificate revocation lists (PEM) the server's chain is checked against. As in
/// Envoy, every certificate of the chain needs a list from its issuer, or it is refused.
fn revocation_lists(path: &str) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let crls = CertificateRevocationListDer::pem_file_iter(Path::new(path))
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("tls.caCrl {path}: {e}"))?;
    if crls.is_empty() {
        return Err(format!(
            "tls.caCrl {path}: no certificate revocation list in the file"
        ));
    }
    Ok(crls)
}

/// `caCertificates`, else the system's bundle: the store, and the certificates read.
fn roots(ca: Option<&str>) -> Result<(RootCertStore, Vec<CertificateDer<'static>>), String> {
    let (path, field) = match ca {
        Some(p) => (p, "tls.caCertificates"),
        None => (SYSTEM_BUNDLE, "tls (no caCertificates; the system bundle)"),
    };
    let certs = certificates(path, field)?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs.iter().cloned());
    if added == 0 {
        return Err(format!("{field} {path}: no usable certificate"));
    }
    Ok((roots, certs))
}

/// The web PKI check, against the `subjectAltNames` when given, else the server name sent;
/// a presented certificate that is one of the trusted self-signed ones is trusted as itself.
#[derive(Debug)]
struct ByNames {
    webpki: Arc<WebPkiServerVerifier>,
    names: Vec<ServerName<'static>>,
    /// The self-signed certificates of `caCertificates` (none under `caCrl`).
    anchors: Vec<CertificateDer<'static>>,
}

impl ServerCertVerifier for ByNames {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let names: Vec<&ServerName<'_>> = if self.names.is_empty() {
            vec![server_name]
        } else {
            self.names.iter().collect()
        };
        if let Some(verdict) = super::self_signed::verify(&self.anchors, end_entity, &names, now) {
            return verdict;
        }
        let mut last = Error::General("no subjectAltNames".into());
        for name in names {
            match (self.webpki).verify_server_cert(
                end_entity,
                intermediates,
                name,
                ocsp_response,
                now,
            ) {
                Ok(v) => return Ok(v),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// `insecureSkipVerify: true`: any certificate, but the handshake's signatures still checked.
#[derive(Debug)]
struct SkipVerify;

impl ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signature_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(mode: &str) -> ClientTls {
        ClientTls {
            mode: mode.into(),
            ..ClientTls::default()
        }
    }

    #[test]
    fn only_simple_and_mutual_originate() {
        let o = Originations::default();
        for mode in ["DISABLE", "ISTIO_MUTUAL"] {
            assert_eq!(
                o.for_request(Some(&tls(mode)), "a.example", false),
                Ok(None)
            );
        }
        assert_eq!(o.for_request(None, "a.example", false), Ok(None));
    }

    #[test]
    fn a_misconfigured_block_names_the_field_and_the_file() {
        let o = Originations::default();
        let mut t = tls("SIMPLE");
        t.ca_certificates = Some("/nonexistent/ca.pem".into());
        let e = o.for_request(Some(&t), "a.example", false).unwrap_err();
        assert!(
            e.starts_with("tls.caCertificates /nonexistent/ca.pem:"),
            "{e}"
        );
        let e = o
            .for_request(Some(&tls("MUTUAL")), "a.example", false)
            .unwrap_err();
        assert!(
            e.contains("MUTUAL needs clientCertificate and privateKey"),
            "{e}"
        );
        let mut t = tls("SIMPLE");
        t.insecure_skip_verify = Some(true);
        t.sni = Some("bad name!".into());
        let e = o.for_request(Some(&t), "a.example", false).unwrap_err();
        assert!(e.contains("\"bad name!\" is not a server name"), "{e}");
        let mut t = tls("SIMPLE");
        t.ca_certificates = Some("/etc/ssl/certs/ca-certificates.crt".into());
        t.ca_crl = Some("/nonexistent/crl.pem".into());
        let e = o.for_request(Some(&t), "a.example", false).unwrap_err();
        assert!(e.starts_with("tls.caCrl /nonexistent/crl.pem:"), "{e}");
    }

    #[test]
    fn a_changed_or_late_file_is_read_again() {
        let dir = std::env::temp_dir().join(format!("meshd-originate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        let _ = std::fs::remove_file(&ca);
        let o = Originations {
            recheck: Duration::ZERO,
            ..Originations::default()
        };
        let mut t = tls("SIMPLE");
        t.ca_certificates = Some(ca.display().to_string());
        let request = || o.for_request(Some(&t), "a.example", false);
        // Missing at first: an error, until the file appears.
        assert!(request().is_err());
        std::fs::copy(SYSTEM_BUNDLE, &ca).unwrap();
        let config = || request().unwrap().unwrap().config;
        let first = config();
        let key = request().unwrap().unwrap().pool_key().clone();
        assert!(Arc::ptr_eq(&first, &config()), "unchanged: kept");
        // Rewritten (a renewed bundle): built again, its open connections kept in use.
        let later = SystemTime::now() + Duration::from_secs(5);
        let f = std::fs::File::options().write(true).open(&ca).unwrap();
        f.set_modified(later).unwrap();
        assert!(!Arc::ptr_eq(&first, &config()));
        assert_eq!(request().unwrap().unwrap().pool_key(), &key);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_config_is_built_once_per_block_and_protocol() {
        let o = Originations::default();
        let mut t = tls("SIMPLE");
        t.insecure_skip_verify = Some(true);
        let a = o
            .for_request(Some(&t), "a.example", false)
            .unwrap()
            .unwrap();
        let b = o
            .for_request(Some(&t), "b.example", false)
            .unwrap()
            .unwrap();
        assert!(Arc::ptr_eq(&a.config, &b.config));
        assert_eq!(b.server_name, ServerName::try_from("b.example").unwrap());
        let h2 = o.for_request(Some(&t), "a.example", true).unwrap().unwrap();
        assert!(!Arc::ptr_eq(&a.config, &h2.config));
        assert_eq!(h2.config.alpn_protocols, [b"h2".to_vec()]);
        let tcp = o.for_connection(Some(&t), "a.example").unwrap().unwrap();
        assert!(!Arc::ptr_eq(&a.config, &tcp.config));
        assert!(tcp.config.alpn_protocols.is_empty());
        let ip = o.for_connection(Some(&t), "127.0.0.9").unwrap().unwrap();
        assert_eq!(ip.server_name, ServerName::try_from("127.0.0.9").unwrap());
    }

    #[test]
    fn connections_of_different_blocks_or_names_are_pooled_apart() {
        let o = Originations::default();
        let mut t = tls("SIMPLE");
        t.insecure_skip_verify = Some(true);
        let key = |t: &ClientTls, host: &str| {
            let made = o.for_request(Some(t), host, false).unwrap().unwrap();
            made.pool_key().clone()
        };
        let a = key(&t, "a.example");
        assert_eq!(a, key(&t, "a.example"), "one block, one name: one pool");
        assert_ne!(a, key(&t, "b.example"), "another name");
        // Another workload's DestinationRule for the same host, with a client certificate
        // or another CA: its connections never carry this block's requests.
        let mut other = t.clone();
        other.insecure_skip_verify = None;
        other.ca_certificates = Some(SYSTEM_BUNDLE.into());
        assert_ne!(a, key(&other, "a.example"), "another tls block");
        assert_eq!(key(&other, "a.example"), key(&other.clone(), "a.example"));
    }
}
