//! TLS servers for tests: a CA and a server certificate made with rcgen (with revocation
//! lists), and `openssl s_server` serving with them.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, IsCa, Issuer,
    KeyIdMethod, KeyPair, RevocationReason, RevokedCertParams, SerialNumber, date_time_ymd,
};

/// A CA and a server certificate for `name` it signed, written to `dir`: `ca.pem`,
/// `server.pem`, `server.key`; and the CA's revocation lists: `crl.pem` revoking the server's
/// certificate, `crl-empty.pem` revoking nothing, `crl-expired.pem` revoking nothing but past
/// its next update.
pub fn certificates(dir: &Path, name: &str) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
    let serial = SerialNumber::from_slice(&[0x42, 0x17]);
    params.serial_number = Some(serial.clone());
    let server = params.signed_by(&key, &issuer).unwrap();
    let crl = |revoked: Vec<SerialNumber>, from: i32, to: i32| {
        let list = CertificateRevocationListParams {
            this_update: date_time_ymd(from, 1, 1),
            next_update: date_time_ymd(to, 1, 1),
            crl_number: SerialNumber::from_slice(&[1]),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .into_iter()
                .map(|serial_number| RevokedCertParams {
                    serial_number,
                    revocation_time: date_time_ymd(2025, 6, 1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        list.signed_by(&issuer).unwrap().pem().unwrap()
    };
    std::fs::write(dir.join("crl.pem"), crl(vec![serial], 2025, 2035)).unwrap();
    std::fs::write(dir.join("crl-empty.pem"), crl(Vec::new(), 2025, 2035)).unwrap();
    std::fs::write(dir.join("crl-expired.pem"), crl(Vec::new(), 2020, 2021)).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    dir.to_path_buf()
}

/// A self-signed certificate for `name`, marked as a CA as such certificates often are,
/// written to `dir` as the server's (`server.pem`, `server.key`) and as the one to trust
/// (`ca.pem`, the same certificate).
pub fn self_signed_certificate(dir: &Path, name: &str) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    dir.to_path_buf()
}

/// `openssl s_server` on a free loopback port: with `-www` a TLS server that answers any GET,
/// with `-rev` one that sends each line back reversed.
pub struct TlsServer {
    child: Child,
    pub port: u16,
}

impl TlsServer {
    pub fn start(certs: &Path) -> TlsServer {
        TlsServer::serving(certs, "-www")
    }

    pub fn serving(certs: &Path, mode: &str) -> TlsServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let ready = move || std::net::TcpStream::connect(addr).is_ok();
        TlsServer::spawn(Command::new("openssl"), certs, mode, addr, ready)
    }

    /// `cmd` (openssl, perhaps set to run in a node's namespace) serving at `addr`, once
    /// `ready` says it listens.
    pub fn spawn(
        mut cmd: Command,
        certs: &Path,
        mode: &str,
        addr: std::net::SocketAddr,
        ready: impl Fn() -> bool,
    ) -> TlsServer {
        let child = cmd
            .args(["s_server", "-quiet", mode, "-accept"])
            .arg(addr.to_string())
            .arg("-cert")
            .arg(certs.join("server.pem"))
            .arg("-key")
            .arg(certs.join("server.key"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        let up = super::eventually(Duration::from_secs(10), || ready().then_some(()));
        assert!(up.is_some(), "s_server listening on {addr}");
        TlsServer {
            child,
            port: addr.port(),
        }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
