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

/// Istio kinds that meshd knows of but does not apply, each with why skipping it is safe: the
/// document is skipped with a warning, as a sidecar ignores what is not for it.
const SKIPPED: &[(&str, &str)] = &[
    (
        "Gateway",
        "meshd is not a gateway; VirtualServices bound only to gateways are not applied either",
    ),
    (
        "Sidecar",
        "meshd does not scope a workload's configuration; every resource applies to it (its outboundTrafficPolicy is meshd's --outbound-traffic-policy, for the whole node)",
    ),
    (
        "WorkloadGroup",
        "it is a template for registering VMs; meshd reads the WorkloadEntries themselves",
    ),
    ("ProxyConfig", "it tunes Envoy, which meshd does not run"),
    (
        "Telemetry",
        "meshd's metrics, access logs and tracing are set by its own flags (see meshd run --help)",
    ),
    (
        "IstioOperator",
        "it configures an Istio installation, not traffic",
    ),
];

/// Istio kinds meshd refuses: each can deny traffic, and skipping it would let through what
/// its author meant to stop.
const REFUSED: &[(&str, &str)] = &[
    (
        "RequestAuthentication",
        "meshd does not validate JWTs, and skipping the resource would let requests with \
         invalid tokens through; AuthorizationPolicy requestPrincipals never match in meshd",
    ),
    (
        "EnvoyFilter",
        "meshd has no Envoy to patch. Write rate limits as a meshd.io/v1alpha1 RateLimitPolicy \
         (see policies/ratelimit.yaml); other Envoy patches have no meshd equivalent",
    ),
    (
        "WasmPlugin",
        "meshd runs no Wasm filters, and skipping one could skip a check it makes",
    ),
];

/// Why a document is not read: an error (the configuration is refused), or a kind meshd
/// skips with a warning.
#[derive(Debug, PartialEq, Eq)]
pub enum NotRead {
    Error(String),
    Skipped(String),
}

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

/// Finds the kind for an `apiVersion`/`kind` pair, or says why it is not one meshd reads. As
/// `istioctl analyze` does, resources of other APIs (a Deployment, a Service, a ConfigMap
/// beside the Istio resources) are skipped; an unknown kind of Istio's or meshd's own API
/// groups is an error, most likely a typo.
pub fn resolve(api_version: &str, kind: &str) -> Result<&'static KindInfo, NotRead> {
    if let Some(info) = KINDS.iter().find(|k| k.name == kind) {
        let ok = api_version
            .split_once('/')
            .is_some_and(|(g, v)| g == info.group && info.versions.contains(&v));
        if ok {
            return Ok(info);
        }
        return Err(NotRead::Error(format!(
            "{kind} is not served as apiVersion {api_version:?}; use {}",
            info.api_versions()
        )));
    }
    if let Some((_, why)) = REFUSED.iter().find(|(k, _)| *k == kind) {
        return Err(NotRead::Error(format!("{kind} is not supported: {why}")));
    }
    if let Some((_, why)) = SKIPPED.iter().find(|(k, _)| *k == kind) {
        return Err(NotRead::Skipped(format!(
            "{kind} is not read by meshd and is skipped: {why}"
        )));
    }
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    if group.ends_with("istio.io") || group == "meshd.io" {
        let known: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
        return Err(NotRead::Error(format!(
            "unknown kind {}: meshd reads {}",
            super::node::quote(kind),
            known.join(", ")
        )));
    }
    Err(NotRead::Skipped(format!(
        "{} {} is not a resource meshd reads; skipped",
        super::node::quote(kind),
        match group {
            "" => "of the core API".to_string(),
            g => format!("of API group {g}"),
        }
    )))
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
        let error = |api, kind| match resolve(api, kind) {
            Err(NotRead::Error(e)) => e,
            other => panic!("{kind}: {other:?}"),
        };
        let skipped = |api, kind| match resolve(api, kind) {
            Err(NotRead::Skipped(e)) => e,
            other => panic!("{kind}: {other:?}"),
        };
        let e = error("security.istio.io/v1alpha3", "PeerAuthentication");
        assert!(
            e.contains("use security.istio.io/v1, security.istio.io/v1beta1"),
            "{e}"
        );
        let e = error("networking.istio.io/v1beta1", "EnvoyFilter");
        assert!(e.contains("meshd.io/v1alpha1 RateLimitPolicy"), "{e}");
        assert!(error("security.istio.io/v1", "RequestAuthentication").contains("JWT"));
        // A typo in an Istio kind is an error; other APIs' resources are skipped.
        assert!(error("networking.istio.io/v1", "VirtualServce").starts_with("unknown kind"));
        assert_eq!(
            skipped("v1", "ConfigMap"),
            "\"ConfigMap\" of the core API is not a resource meshd reads; skipped"
        );
        assert_eq!(
            skipped("apps/v1", "Deployment"),
            "\"Deployment\" of API group apps is not a resource meshd reads; skipped"
        );
        assert!(skipped("networking.istio.io/v1", "Gateway").contains("not a gateway"));
    }
}
