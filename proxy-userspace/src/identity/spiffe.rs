//! SPIFFE IDs of workloads: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

use std::{fmt, str::FromStr};

use rustls::pki_types::ServerName;
use sha2::{Digest, Sha256};

use super::IdentityError;
use crate::policy::model::WorkloadEntry;

/// Trust domain of a mesh that names none, as in Istio.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// Service account of a workload that names none, as in Kubernetes.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// Suffix of the TLS server names derived from identities (see [`SpiffeId::server_name`]).
pub const SNI_SUFFIX: &str = "spiffe.meshd.invalid";

const SCHEME: &str = "spiffe://";
/// The SPIFFE standard's limits on a trust domain and on a whole ID.
const MAX_TRUST_DOMAIN: usize = 255;
const MAX_ID: usize = 2048;

/// The identity of a workload. Always valid: every constructor checks its parts.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

impl SpiffeId {
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        validate_trust_domain(trust_domain)?;
        let id = SpiffeId {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        };
        let invalid = |reason: String| IdentityError::InvalidSpiffeId {
            input: id.to_string(),
            reason,
        };
        check_segment("namespace", namespace).map_err(invalid)?;
        check_segment("service account", service_account).map_err(invalid)?;
        if id.to_string().len() > MAX_ID {
            return Err(invalid(format!("longer than {MAX_ID} bytes")));
        }
        Ok(id)
    }

    /// The identity of a workload from its namespace and (optional) service account.
    pub fn for_workload(
        trust_domain: &str,
        namespace: &str,
        service_account: Option<&str>,
    ) -> Result<Self, IdentityError> {
        let sa = service_account
            .filter(|sa| !sa.is_empty())
            .unwrap_or(DEFAULT_SERVICE_ACCOUNT);
        SpiffeId::new(trust_domain, namespace, sa)
    }

    /// The identity of a WorkloadEntry: its namespace and `serviceAccount`.
    pub fn for_workload_entry(
        trust_domain: &str,
        entry: &WorkloadEntry,
    ) -> Result<Self, IdentityError> {
        let sa = entry.spec.service_account.as_deref();
        SpiffeId::for_workload(trust_domain, &entry.metadata.namespace, sa)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The TLS server name (SNI) a client sends to reach this identity:
    /// `<first 16 bytes of SHA-256 of the ID, hex>.spiffe.meshd.invalid`. A hash keeps the name
    /// a valid DNS name whatever the ID's length; the server maps it back among the identities
    /// it holds. Nothing resolves or checks it as a DNS name.
    pub fn server_name(&self) -> ServerName<'static> {
        ServerName::try_from(self.sni()).expect("a hex label is a DNS name")
    }

    /// [`SpiffeId::server_name`] as text.
    pub fn sni(&self) -> String {
        let digest = Sha256::digest(self.to_string().as_bytes());
        let label: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("{label}.{SNI_SUFFIX}")
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for SpiffeId {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| IdentityError::InvalidSpiffeId {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| invalid("must start with spiffe://"))?;
        if rest.contains(['?', '#']) {
            return Err(invalid("must have no query or fragment"));
        }
        let (td, path) = rest.split_once('/').unwrap_or((rest, ""));
        validate_trust_domain(td).map_err(|e| match e {
            IdentityError::InvalidTrustDomain { reason, .. } => invalid(&reason),
            other => other,
        })?;
        match path.split('/').collect::<Vec<_>>()[..] {
            ["ns", ns, "sa", sa] => SpiffeId::new(td, ns, sa).map_err(|e| match e {
                IdentityError::InvalidSpiffeId { reason, .. } => invalid(&reason),
                other => other,
            }),
            _ => Err(invalid("path must be /ns/<namespace>/sa/<service-account>")),
        }
    }
}

/// A trust domain: lowercase letters, digits, `.`, `-` and `_`, at most 255 bytes.
pub fn validate_trust_domain(td: &str) -> Result<(), IdentityError> {
    let invalid = |reason: &str| IdentityError::InvalidTrustDomain {
        input: td.to_string(),
        reason: reason.to_string(),
    };
    if td.is_empty() {
        return Err(invalid("trust domain is empty"));
    }
    if td.len() > MAX_TRUST_DOMAIN {
        return Err(invalid("trust domain is longer than 255 bytes"));
    }
    if let Some(c) = td
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        return Err(invalid(&format!(
            "trust domain has {c:?}; only lowercase letters, digits, '.', '-' and '_' are allowed"
        )));
    }
    Ok(())
}

/// A path segment: letters, digits, `.`, `-` and `_`; not empty, `.` or `..`.
fn check_segment(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if s == "." || s == ".." {
        return Err(format!("{what} cannot be {s:?}"));
    }
    match s
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_'))
    {
        Some(c) => Err(format!(
            "{what} {s:?} has {c:?}; only letters, digits, '.', '-' and '_' are allowed"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let id = SpiffeId::new("cluster.local", "shop", "checkout").unwrap();
        let text = "spiffe://cluster.local/ns/shop/sa/checkout";
        assert_eq!(id.to_string(), text);
        assert_eq!(text.parse::<SpiffeId>().unwrap(), id);
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "shop");
        assert_eq!(id.service_account(), "checkout");
    }

    #[test]
    fn rejects_malformed_ids() {
        for (input, reason) in [
            (
                "http://cluster.local/ns/a/sa/b",
                "must start with spiffe://",
            ),
            ("spiffe:///ns/a/sa/b", "trust domain is empty"),
            ("spiffe://Cluster.local/ns/a/sa/b", "trust domain has 'C'"),
            ("spiffe://td:8080/ns/a/sa/b", "trust domain has ':'"),
            (
                "spiffe://td",
                "path must be /ns/<namespace>/sa/<service-account>",
            ),
            ("spiffe://td/ns/a", "path must be"),
            ("spiffe://td/ns/a/sa/b/extra", "path must be"),
            ("spiffe://td/ns/a/sa/b/", "path must be"),
            ("spiffe://td/ns//sa/b", "namespace is empty"),
            ("spiffe://td/ns/a/sa/", "service account is empty"),
            ("spiffe://td/ns/../sa/b", "namespace cannot be \"..\""),
            ("spiffe://td/ns/a/sa/b c", "service account \"b c\" has ' '"),
            ("spiffe://td/ns/a/sa/b?x=1", "no query or fragment"),
            ("spiffe://td/ns/a/sa/b#f", "no query or fragment"),
        ] {
            let err = input.parse::<SpiffeId>().unwrap_err().to_string();
            assert!(
                err.contains(reason) && err.contains(&format!("{input:?}")),
                "{input}: {err}"
            );
        }
    }

    #[test]
    fn workload_entry_defaults_to_the_default_service_account() {
        let mut entry = WorkloadEntry::default();
        entry.metadata.name = "vm-1".into();
        entry.metadata.namespace = "shop".into();
        let id = SpiffeId::for_workload_entry(DEFAULT_TRUST_DOMAIN, &entry).unwrap();
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/default");
        entry.spec.service_account = Some("payments".into());
        let id = SpiffeId::for_workload_entry("example.org", &entry).unwrap();
        assert_eq!(id.to_string(), "spiffe://example.org/ns/shop/sa/payments");
    }

    #[test]
    fn server_names_are_distinct_dns_names() {
        let a = SpiffeId::new("td", "ns", "a").unwrap().server_name();
        let b = SpiffeId::new("td", "ns", "b").unwrap().server_name();
        assert_ne!(a, b);
        let ServerName::DnsName(name) = a else {
            panic!("not a DNS name: {a:?}")
        };
        assert!(name.as_ref().ends_with(".spiffe.meshd.invalid"));
        assert_eq!(name.as_ref().split('.').next().unwrap().len(), 32);
    }
}
