//! Which `apiVersion`/`kind` pairs meshd reads, and what it says about the ones it does not.

use super::schema::{Obj, destination_rule, rate_limit, security, service_entry, virtual_service};

/// A resource kind meshd understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Kind {
    VirtualService,
    DestinationRule,
    ServiceEntry,
    WorkloadEntry,
    PeerAuthentication,
    AuthorizationPolicy,
    RateLimitPolicy,
}

pub struct KindInfo {
    pub kind: Kind,
    pub name: &'static str,
    pub group: &'static str,
    pub versions: &'static [&'static str],
    pub spec: &'static Obj,
    /// Whether a document without `spec` is valid (an empty spec has a meaning).
    pub spec_optional: bool,
}

const NETWORKING: &str = "networking.istio.io";
const NETWORKING_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];
const SECURITY: &str = "security.istio.io";
const SECURITY_VERSIONS: &[&str] = &["v1", "v1beta1"];

pub static KINDS: &[KindInfo] = &[
    KindInfo {
        kind: Kind::VirtualService,
        name: "VirtualService",
        group: NETWORKING,
        versions: NETWORKING_VERSIONS,
        spec: &virtual_service::SPEC,
        spec_optional: false,
    },
    KindInfo {
        kind: Kind::DestinationRule,
        name: "DestinationRule",
        group: NETWORKING,
        versions: NETWORKING_VERSIONS,
        spec: &destination_rule::SPEC,
        spec_optional: false,
    },
    KindInfo {
        kind: Kind::ServiceEntry,
        name: "ServiceEntry",
        group: NETWORKING,
        versions: NETWORKING_VERSIONS,
        spec: &service_entry::SPEC,
        spec_optional: false,
    },
    KindInfo {
        kind: Kind::WorkloadEntry,
        name: "WorkloadEntry",
        group: NETWORKING,
        versions: NETWORKING_VERSIONS,
        spec: service_entry::WORKLOAD_ENTRY_SPEC,
        spec_optional: false,
    },
    KindInfo {
        kind: Kind::PeerAuthentication,
        name: "PeerAuthentication",
        group: SECURITY,
        versions: SECURITY_VERSIONS,
        spec: &security::PEER_AUTHENTICATION,
        spec_optional: true,
    },
    KindInfo {
        kind: Kind::AuthorizationPolicy,
        name: "AuthorizationPolicy",
        group: SECURITY,
        versions: SECURITY_VERSIONS,
        spec: &security::AUTHORIZATION_POLICY,
        spec_optional: true,
    },
    KindInfo {
        kind: Kind::RateLimitPolicy,
        name: "RateLimitPolicy",
        group: "meshd.io",
        versions: &["v1alpha1"],
        spec: &rate_limit::SPEC,
        spec_optional: false,
    },
];

/// Istio kinds that meshd knows of but does not implement.
const UNSUPPORTED: &[&str] = &[
    "Gateway",
    "Sidecar",
    "WorkloadGroup",
    "ProxyConfig",
    "Telemetry",
    "RequestAuthentication",
    "WasmPlugin",
];

impl KindInfo {
    pub fn api_versions(&self) -> String {
        let all: Vec<String> = self
            .versions
            .iter()
            .map(|v| format!("{}/{v}", self.group))
            .collect();
        all.join(", ")
    }
}

impl std::fmt::Debug for KindInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name, self.api_versions())
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Finds the kind for an `apiVersion`/`kind` pair, or explains why it is not one meshd reads.
pub fn resolve(api_version: &str, kind: &str) -> Result<&'static KindInfo, String> {
    if let Some(info) = KINDS.iter().find(|k| k.name == kind) {
        let ok = api_version
            .split_once('/')
            .is_some_and(|(g, v)| g == info.group && info.versions.contains(&v));
        if ok {
            return Ok(info);
        }
        return Err(format!(
            "{kind} is not served as apiVersion {api_version:?}; use {}",
            info.api_versions()
        ));
    }
    if kind == "EnvoyFilter" {
        return Err(
            "EnvoyFilter is not supported: meshd has no Envoy to patch. Write rate limits \
                    as a meshd.io/v1alpha1 RateLimitPolicy (see policies/ratelimit.yaml); other \
                    Envoy patches have no meshd equivalent"
                .into(),
        );
    }
    if kind == "IstioOperator" {
        return Err(
            "IstioOperator configures an Istio installation, not traffic; meshd has nothing to \
             install, remove it from the policy files"
                .into(),
        );
    }
    if UNSUPPORTED.contains(&kind) {
        return Err(format!("{kind} is not supported by meshd"));
    }
    let known: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
    Err(format!(
        "unknown kind {}: meshd reads {}",
        super::node::quote(kind),
        known.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_every_served_version() {
        for v in ["v1", "v1beta1", "v1alpha3"] {
            let api = format!("networking.istio.io/{v}");
            assert_eq!(
                resolve(&api, "VirtualService").unwrap().kind,
                Kind::VirtualService
            );
        }
        assert!(resolve("security.istio.io/v1", "PeerAuthentication").is_ok());
        assert!(resolve("meshd.io/v1alpha1", "RateLimitPolicy").is_ok());
    }

    #[test]
    fn explains_wrong_versions_and_unknown_kinds() {
        let e = resolve("security.istio.io/v1alpha3", "PeerAuthentication").unwrap_err();
        assert!(
            e.contains("use security.istio.io/v1, security.istio.io/v1beta1"),
            "{e}"
        );
        let e = resolve("networking.istio.io/v1beta1", "EnvoyFilter").unwrap_err();
        assert!(e.contains("meshd.io/v1alpha1 RateLimitPolicy"), "{e}");
        assert!(
            resolve("v1", "ConfigMap")
                .unwrap_err()
                .starts_with("unknown kind")
        );
        assert!(
            resolve("networking.istio.io/v1", "Gateway")
                .unwrap_err()
                .contains("not supported")
        );
    }
}
