//! Test helpers for identity: scratch directories that remove themselves.

use std::path::{Path, PathBuf};

pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "meshd-identity-{tag}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {path:?}: {e}"));
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// PEM text of DER blocks with the given label.
pub fn pem(label: &str, ders: &[&[u8]]) -> String {
    let mut out = String::new();
    for der in ders {
        out.push_str(&format!("-----BEGIN {label}-----\n"));
        let b64 = base64(der);
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap());
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
    }
    out
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Writes `cert` (chain and key) where an [`super::ExternalDir`] at `root` looks for it, and
/// `bundle` as the trust bundle.
pub fn write_external(root: &Path, bundle: &super::Ca, cert: &super::WorkloadCert) {
    write_external_for(root, bundle, cert, cert.id());
}

/// Like [`write_external`], but in the directory of `id` whatever `cert` is for.
pub fn write_external_for(
    root: &Path,
    bundle: &super::Ca,
    cert: &super::WorkloadCert,
    id: &super::SpiffeId,
) {
    let dir = root.join(id.namespace()).join(id.service_account());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(root.join("ca.pem"), bundle.cert_pem()).unwrap();
    let chain: Vec<&[u8]> = cert.chain().iter().map(|c| c.as_ref()).collect();
    std::fs::write(dir.join("cert.pem"), pem("CERTIFICATE", &chain)).unwrap();
    let key = pem("PRIVATE KEY", &[cert.key().secret_der()]);
    std::fs::write(dir.join("key.pem"), key).unwrap();
}

#[test]
fn base64_pads() {
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
}
