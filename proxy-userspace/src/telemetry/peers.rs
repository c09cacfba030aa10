//! What Istio's metrics say about each end of a request besides its workload: the app, version,
//! canonical service and revision from the workload's labels, its principal, and the service's
//! name and namespace. Read from the WorkloadEntries and ServiceEntries of the active
//! configuration, and looked up only when a label set is first seen, never per request.

use std::collections::HashMap;

use crate::policy::PolicySet;

/// Istio's cluster name when none is configured (`CLUSTER_ID`).
pub const CLUSTER: &str = "Kubernetes";
const UNKNOWN: &str = "unknown";

/// One workload's labels as Istio's metrics name them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub app: String,
    pub version: String,
    pub canonical_service: String,
    pub canonical_revision: String,
    pub service_account: String,
}

impl Peer {
    /// As Istio's proxy derives them: `app` from `app.kubernetes.io/name`, else `app`;
    /// `version` from `app.kubernetes.io/version`, else `version`; the canonical service from
    /// `service.istio.io/canonical-name`, `app.kubernetes.io/name`, `app`, else the workload's
    /// name; the canonical revision from `service.istio.io/canonical-revision`,
    /// `app.kubernetes.io/version`, `version`, else `latest`.
    fn of(name: &str, labels: &std::collections::BTreeMap<String, String>, sa: &str) -> Peer {
        let first = |keys: &[&str]| keys.iter().find_map(|k| labels.get(*k)).cloned();
        Peer {
            app: first(&["app.kubernetes.io/name", "app"]).unwrap_or_else(|| UNKNOWN.into()),
            version: (first(&["app.kubernetes.io/version", "version"]))
                .unwrap_or_else(|| UNKNOWN.into()),
            canonical_service: first(&[
                "service.istio.io/canonical-name",
                "app.kubernetes.io/name",
                "app",
            ])
            .unwrap_or_else(|| name.to_string()),
            canonical_revision: first(&[
                "service.istio.io/canonical-revision",
                "app.kubernetes.io/version",
                "version",
            ])
            .unwrap_or_else(|| "latest".into()),
            service_account: sa.to_string(),
        }
    }

    /// A workload meshd knows nothing more of.
    fn unknown() -> Peer {
        Peer {
            app: UNKNOWN.into(),
            version: UNKNOWN.into(),
            canonical_service: UNKNOWN.into(),
            canonical_revision: UNKNOWN.into(),
            service_account: String::new(),
        }
    }
}

/// The workloads and services of one configuration.
#[derive(Debug, Default)]
pub struct Peers {
    /// `(namespace, name)` of a WorkloadEntry → what its labels say.
    workloads: HashMap<(String, String), Peer>,
    /// A ServiceEntry host → its namespace.
    services: HashMap<String, String>,
}

/// The labels Istio's metrics derive from the two ends of a request or connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Derived {
    pub source: Peer,
    pub destination: Peer,
    pub destination_principal: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
}

impl Peers {
    pub fn of(set: &PolicySet) -> Peers {
        let mut p = Peers::default();
        for we in &set.workload_entries {
            let (ns, name) = (&we.metadata.namespace, &we.metadata.name);
            let sa = we.spec.service_account.as_deref().unwrap_or("default");
            let peer = Peer::of(name, &we.spec.labels, sa);
            p.workloads.insert((ns.clone(), name.clone()), peer);
        }
        for se in &set.service_entries {
            for host in &se.spec.hosts {
                (p.services.entry(host.clone())).or_insert_with(|| se.metadata.namespace.clone());
            }
        }
        p
    }

    fn peer(&self, namespace: &str, name: &str) -> Peer {
        let key = (namespace.to_string(), name.to_string());
        match self.workloads.get(&key) {
            Some(p) => p.clone(),
            None if name == UNKNOWN || name.is_empty() => Peer::unknown(),
            // A workload without a WorkloadEntry: its name is all Istio would know of it.
            None => Peer {
                canonical_service: name.to_string(),
                canonical_revision: "latest".into(),
                ..Peer::unknown()
            },
        }
    }

    /// The service name Istio's proxies give their spans (`APP_LABEL_AND_NAMESPACE`): the
    /// workload's canonical service (its `app` label, else its name) and its namespace.
    pub fn tracing_service(&self, namespace: &str, name: &str) -> String {
        format!(
            "{}.{namespace}",
            self.peer(namespace, name).canonical_service
        )
    }

    /// The derived labels of a request or connection from `source` to `destination`
    /// (`(namespace, name)` each) of the service `service`. `mutual_tls`: the destination
    /// proved its identity, which names its principal (as Istio's client side reports the
    /// peer certificate's); otherwise the principal is `unknown`.
    pub fn derive(
        &self,
        source: (&str, &str),
        destination: (&str, &str),
        service: &str,
        mutual_tls: bool,
        trust_domain: &str,
    ) -> Derived {
        let destination_peer = self.peer(destination.0, destination.1);
        let destination_principal = match (mutual_tls, destination_peer.service_account.as_str()) {
            (true, sa) if !sa.is_empty() => {
                format!("spiffe://{trust_domain}/ns/{}/sa/{sa}", destination.0)
            }
            _ => UNKNOWN.into(),
        };
        let (name, namespace) = self.service_name(service);
        Derived {
            source: self.peer(source.0, source.1),
            destination: destination_peer,
            destination_principal,
            destination_service_name: name,
            destination_service_namespace: namespace,
        }
    }

    /// Istio's `destination_service_name` and `_namespace`: a Kubernetes-style host
    /// (`name.namespace.svc...`) gives both; another ServiceEntry host is its own name, in the
    /// ServiceEntry's namespace; anything else is its own name, namespace unknown.
    fn service_name(&self, host: &str) -> (String, String) {
        let mut parts = host.split('.');
        if let (Some(name), Some(ns), Some("svc")) = (parts.next(), parts.next(), parts.next()) {
            return (name.to_string(), ns.to_string());
        }
        let namespace = self.services.get(host).map_or(UNKNOWN, String::as_str);
        (host.to_string(), namespace.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers() -> Peers {
        let yaml = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: reviews-v2, namespace: shop}\nspec:\n  address: 127.0.0.2\n  serviceAccount: reviews\n  labels: {app: reviews, version: v2}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: ratings, namespace: shop}\nspec:\n  address: 127.0.0.4\n  labels: {app: ratings-old, app.kubernetes.io/name: ratings, version: v0, app.kubernetes.io/version: v1}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: web, namespace: shop}\nspec:\n  address: 127.0.0.3\n  labels: {service.istio.io/canonical-name: storefront, app.kubernetes.io/version: '1.4'}\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: pay, namespace: billing}\nspec:\n  hosts: [pay.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: DNS\n";
        let set = crate::policy::load_str("t.yaml".as_ref(), yaml)
            .unwrap_or_else(|_| panic!("valid policies"));
        Peers::of(&set)
    }

    #[test]
    fn labels_come_from_the_workloads_as_istio_derives_them() {
        let p = peers();
        let d = p.derive(
            ("shop", "web"),
            ("shop", "reviews-v2"),
            "reviews.shop.svc.cluster.local",
            true,
            "cluster.local",
        );
        assert_eq!(
            (d.source.app.as_str(), d.source.version.as_str()),
            ("unknown", "1.4"),
            "the qualified version label"
        );
        assert_eq!(d.source.canonical_service, "storefront");
        assert_eq!(d.source.canonical_revision, "1.4");
        assert_eq!(
            (d.destination.app.as_str(), d.destination.version.as_str()),
            ("reviews", "v2")
        );
        assert_eq!(
            (
                d.destination.canonical_service.as_str(),
                d.destination.canonical_revision.as_str()
            ),
            ("reviews", "v2")
        );
        assert_eq!(
            d.destination_principal,
            "spiffe://cluster.local/ns/shop/sa/reviews"
        );
        assert_eq!(
            (
                d.destination_service_name.as_str(),
                d.destination_service_namespace.as_str()
            ),
            ("reviews", "shop")
        );
    }

    #[test]
    fn the_qualified_app_labels_come_first() {
        let d = peers().derive(
            ("shop", "ratings"),
            ("shop", "reviews-v2"),
            "reviews.shop.svc.cluster.local",
            false,
            "cluster.local",
        );
        assert_eq!(
            (d.source.app.as_str(), d.source.version.as_str()),
            ("ratings", "v1")
        );
    }

    #[test]
    fn unknown_ends_and_plaintext_say_unknown() {
        let p = peers();
        let d = p.derive(
            ("default", "curl"),
            ("unknown", "unknown"),
            "pay.example.com",
            false,
            "cluster.local",
        );
        assert_eq!(
            d.source.canonical_service, "curl",
            "its name, with no entry"
        );
        assert_eq!(d.source.canonical_revision, "latest");
        assert_eq!(d.destination, Peer::unknown());
        assert_eq!(d.destination_principal, "unknown");
        assert_eq!(
            (
                d.destination_service_name.as_str(),
                d.destination_service_namespace.as_str()
            ),
            ("pay.example.com", "billing")
        );
        let plaintext = p.derive(
            ("shop", "web"),
            ("shop", "reviews-v2"),
            "10.0.0.1:80",
            false,
            "td",
        );
        assert_eq!(plaintext.destination_principal, "unknown");
        assert_eq!(plaintext.destination_service_namespace, "unknown");
    }
}
