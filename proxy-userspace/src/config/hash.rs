//! The content hash of a set of policy files, shown in /config_dump so operators can tell which
//! configuration is active.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

/// SHA-256 over each file's path and contents, in the given (sorted) order, as hex.
pub fn content_hash(files: &[(PathBuf, Vec<u8>)]) -> String {
    let mut h = Sha256::new();
    for (path, bytes) in files {
        h.update(path.as_os_str().as_encoded_bytes());
        h.update([0]);
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_depends_on_names_and_contents() {
        let a = content_hash(&[("a.yaml".into(), b"x".to_vec())]);
        assert_eq!(a, content_hash(&[("a.yaml".into(), b"x".to_vec())]));
        assert_ne!(a, content_hash(&[("b.yaml".into(), b"x".to_vec())]));
        assert_ne!(a, content_hash(&[("a.yaml".into(), b"y".to_vec())]));
        assert_eq!(a.len(), 64);
    }
}
