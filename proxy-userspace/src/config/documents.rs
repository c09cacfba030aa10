//! Policies that come from memory rather than files: objects read from the Kubernetes API,
//! rendered as text under a pseudo-path such as `k8s://VirtualService/default/reviews`, so
//! their findings name the object.
//!
//! Unlike a file, a bad document never rejects the configuration: it is dropped on its own, and
//! every other file and document still applies. Where a document and a file define the same
//! kind, namespace and name, the file wins and a warning names both; two documents with one
//! identity keep the first in path order.

use std::{collections::HashMap, path::PathBuf};

use sha2::{Digest, Sha256};

use crate::policy::{self, Finding, LoadFailure, PolicySet};

/// The scheme of documents' pseudo-paths.
pub const SCHEME: &str = "k8s://";

/// One in-memory policy document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    /// `k8s://<Kind>/<namespace>/<name>`: what findings name.
    pub path: PathBuf,
    /// YAML (JSON is YAML too).
    pub text: String,
}

impl Document {
    pub fn new(kind: &str, namespace: &str, name: &str, text: String) -> Document {
        Document {
            path: PathBuf::from(format!("{SCHEME}{kind}/{namespace}/{name}")),
            text,
        }
    }

    fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.text.as_bytes()).into()
    }
}

/// Whether a finding or resource origin is an in-memory document.
pub fn is_document(path: &std::path::Path) -> bool {
    path.to_str().is_some_and(|p| p.starts_with(SCHEME))
}

/// Whether a resource origin is the ServiceEntry discovery rendered from a Kubernetes Service.
pub fn is_service(path: &std::path::Path) -> bool {
    (path.to_str().and_then(|p| p.strip_prefix(SCHEME))).is_some_and(|p| p.starts_with("Service/"))
}

/// A document dropped from the configuration, with every finding about it.
#[derive(Clone, Debug)]
pub struct Rejected {
    pub path: PathBuf,
    pub findings: Vec<Finding>,
    digest: [u8; 32],
}

/// How many times cross-resource analysis is re-run after dropping documents it found errors
/// in; a document's removal can only remove findings, so this settles quickly.
const MAX_ANALYSIS_ROUNDS: usize = 4;

/// Adds the valid documents to `set` (the files' policies) and returns the findings of the
/// merged set. Documents with validation or analysis errors are left out and returned as
/// rejected; errors that remain are the files' own.
pub fn merge(set: &mut PolicySet, docs: &[Document]) -> (Vec<Finding>, Vec<Rejected>) {
    let mut rejected = Vec::new();
    let mut sorted: Vec<&Document> = docs.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    for doc in sorted {
        match policy::load_str(&doc.path, &doc.text) {
            Ok(one) => {
                for (kind, id, kept, dropped) in set.absorb(one) {
                    if kept.starts_with(SCHEME) {
                        tracing::warn!(
                            "{dropped}: {kind:?} {id} is also defined by {kept}; the first one applies"
                        );
                    } else {
                        tracing::warn!(
                            "{dropped}: {kind:?} {id} from the Kubernetes API is ignored: the policy file {kept} defines it, and files win"
                        );
                    }
                }
            }
            Err(e) => rejected.push(Rejected {
                path: doc.path.clone(),
                findings: match e {
                    LoadFailure::Invalid(f) => f,
                    LoadFailure::Unreadable(_) => Vec::new(),
                },
                digest: doc.digest(),
            }),
        }
    }
    let digests: HashMap<&PathBuf, [u8; 32]> = docs.iter().map(|d| (&d.path, d.digest())).collect();
    let mut findings = policy::analyze(set);
    for _ in 0..MAX_ANALYSIS_ROUNDS {
        let mut bad: HashMap<PathBuf, Vec<Finding>> = HashMap::new();
        for f in findings
            .iter()
            .filter(|f| f.is_error() && is_document(&f.file))
        {
            bad.entry(f.file.clone()).or_default().push(f.clone());
        }
        if bad.is_empty() {
            break;
        }
        for (path, mut found) in bad {
            set.remove_file(&path);
            // Keep the document's warnings with its errors.
            found.extend(
                findings
                    .iter()
                    .filter(|f| f.file == path && !f.is_error())
                    .cloned(),
            );
            policy::finding::sort(&mut found);
            rejected.push(Rejected {
                digest: digests.get(&path).copied().unwrap_or_default(),
                path,
                findings: found,
            });
        }
        findings = policy::analyze(set);
    }
    rejected.sort_by(|a, b| a.path.cmp(&b.path));
    (findings, rejected)
}

/// Remembers which documents were rejected, so that one that stays bad is logged and counted
/// once, not at every rebuild.
#[derive(Default)]
pub struct RejectLog {
    seen: HashMap<PathBuf, [u8; 32]>,
}

impl RejectLog {
    /// Logs the newly rejected documents (every finding, as `path:line:col`) and returns how
    /// many of them there are, by kind (the first segment of the pseudo-path).
    pub fn record(&mut self, rejected: &[Rejected]) -> Vec<String> {
        let mut new = Vec::new();
        let mut seen = HashMap::new();
        for r in rejected {
            if self.seen.get(&r.path) != Some(&r.digest) {
                tracing::error!(
                    object = %r.path.display(),
                    "object from the Kubernetes API rejected; it is not applied, everything else is:"
                );
                for f in &r.findings {
                    tracing::error!("  {f}");
                }
                new.push(kind_of(&r.path));
            }
            seen.insert(r.path.clone(), r.digest);
        }
        self.seen = seen;
        new
    }
}

fn kind_of(path: &std::path::Path) -> String {
    path.to_str()
        .and_then(|p| p.strip_prefix(SCHEME))
        .and_then(|p| p.split('/').next())
        .unwrap_or("unknown")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vs(name: &str, http: &str) -> Document {
        Document::new(
            "VirtualService",
            "shop",
            name,
            format!(
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  hosts: [{name}]\n  http:\n{http}"
            ),
        )
    }

    const ROUTE: &str = "  - route:\n    - destination: {host: x}\n";

    fn ids(set: &PolicySet) -> Vec<String> {
        set.virtual_services.iter().map(|v| v.at()).collect()
    }

    #[test]
    fn bad_documents_are_dropped_alone() {
        let mut set =
            policy::load_str(std::path::Path::new("files.yaml"), &vs("a", ROUTE).text).unwrap();
        let docs = [
            vs("b", ROUTE),
            // Invalid on its own.
            vs(
                "c",
                "  - route:\n    - destination: {host: x}\n      wieght: 100\n",
            ),
            // Valid alone, but its subset is defined nowhere: found by the analysis.
            vs(
                "d",
                "  - route:\n    - destination: {host: x, subset: v9}\n",
            ),
            // Same identity as the file's: the file wins.
            vs("a", ROUTE),
        ];
        let (findings, rejected) = merge(&mut set, &docs);
        assert!(!findings.iter().any(Finding::is_error), "{findings:?}");
        assert_eq!(ids(&set), ["files.yaml:1", "k8s://VirtualService/shop/b:1"]);
        let paths: Vec<&str> = rejected.iter().map(|r| r.path.to_str().unwrap()).collect();
        assert_eq!(
            paths,
            ["k8s://VirtualService/shop/c", "k8s://VirtualService/shop/d"]
        );
        let c = rejected[0].findings[0].to_string();
        assert!(
            c.starts_with("k8s://VirtualService/shop/c:9:7: error: spec.http[0].route[0]: unknown field \"wieght\""),
            "{c}"
        );
        let d = &rejected[1].findings;
        assert!(
            d.iter()
                .any(|f| f.is_error() && f.message.contains("subset \"v9\" is not defined")),
            "{d:?}"
        );
    }

    #[test]
    fn rejections_are_logged_once_per_content() {
        let bad = |text: &str| Rejected {
            path: "k8s://VirtualService/shop/c".into(),
            findings: Vec::new(),
            digest: Sha256::digest(text.as_bytes()).into(),
        };
        let mut log = RejectLog::default();
        assert_eq!(log.record(&[bad("1")]), ["VirtualService"]);
        assert!(log.record(&[bad("1")]).is_empty());
        assert_eq!(log.record(&[bad("2")]), ["VirtualService"]);
        assert!(log.record(&[]).is_empty());
        assert_eq!(log.record(&[bad("2")]), ["VirtualService"]);
    }
}
