//! Typed resources, deserialized only after validation passed, each kept with where it came from.

use std::{collections::BTreeMap, ops::Deref, path::PathBuf, sync::Arc};

use serde::{Deserialize, Serialize};

use super::{
    finding::{Finding, Pos, Severity},
    node::Node,
};

pub mod common;
pub mod destination_rule;
pub mod rate_limit;
pub mod security;
pub mod service_entry;
pub mod virtual_service;

pub use common::*;
pub use destination_rule::*;
pub use rate_limit::*;
pub use security::*;
pub use service_entry::*;
pub use virtual_service::*;

/// Any resource: `apiVersion`, `kind`, `metadata` and a kind-specific `spec`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource<S> {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: S,
}

pub type VirtualService = Resource<VirtualServiceSpec>;

impl ServiceEntry {
    /// The service's `trafficDistribution`: the spec's field, else Istio's annotation; `None`
    /// when neither holds a value meshd knows (validation warns of those).
    pub fn traffic_distribution(&self) -> Option<TrafficDistribution> {
        let value = (self.spec.traffic_distribution.as_deref()).or_else(|| {
            self.metadata
                .annotations
                .get(TRAFFIC_DISTRIBUTION)
                .map(String::as_str)
        })?;
        TrafficDistribution::parse(value)
    }
}
pub type DestinationRule = Resource<DestinationRuleSpec>;
pub type ServiceEntry = Resource<ServiceEntrySpec>;
pub type WorkloadEntry = Resource<WorkloadEntrySpec>;
pub type PeerAuthentication = Resource<PeerAuthenticationSpec>;
pub type AuthorizationPolicy = Resource<AuthorizationPolicySpec>;
pub type RateLimitPolicy = Resource<RateLimitPolicySpec>;

pub const DEFAULT_NAMESPACE: &str = "default";

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_string()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// When the API server created the resource (RFC 3339, UTC), for a resource taken from
    /// the cluster or dumped from it: where Istio keeps the oldest of competing resources, so
    /// does meshd. Files written by hand have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
}

impl Default for Metadata {
    fn default() -> Self {
        Metadata {
            name: String::new(),
            namespace: default_namespace(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            creation_timestamp: None,
        }
    }
}

impl Metadata {
    /// The order Istio gives competing resources: the oldest first (one without a creation
    /// time counts as the oldest, as Go's zero time), then by name, then by namespace.
    pub fn age_order(&self, other: &Metadata) -> std::cmp::Ordering {
        fn key(m: &Metadata) -> (Option<&str>, &str, &str) {
            (m.creation_timestamp.as_deref(), &m.name, &m.namespace)
        }
        key(self).cmp(&key(other))
    }
}

impl<S> Resource<S> {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.metadata.namespace, self.metadata.name)
    }

    /// Whether this is the resource `namespace/name`, without building its id: lookups on the
    /// request path compare many resources.
    pub fn is(&self, id: &str) -> bool {
        id.split_once('/')
            .is_some_and(|(ns, name)| ns == self.metadata.namespace && name == self.metadata.name)
    }
}

/// Where a resource was read from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Origin {
    pub file: PathBuf,
    /// 0-based index of the document in its file.
    pub document: usize,
    /// Where the document starts.
    pub line: usize,
    pub col: usize,
}

/// A typed resource with its origin and its YAML tree, so that later checks can point at any of
/// its fields.
#[derive(Clone, Debug)]
pub struct Located<T> {
    pub resource: T,
    pub origin: Origin,
    tree: Arc<Node>,
}

impl<T> Located<T> {
    pub fn new(resource: T, origin: Origin, tree: Arc<Node>) -> Located<T> {
        Located {
            resource,
            origin,
            tree,
        }
    }

    /// Keeps only the root position of the YAML tree. A runtime snapshot holds the resources,
    /// not the trees their findings were located in, which take many times the memory.
    pub fn forget_tree(&mut self) {
        let pos = self.tree.pos;
        self.tree = Arc::new(Node {
            pos,
            value: super::node::Value::Null,
        });
    }

    /// The position of a field, e.g. `spec.http[0].route[1].destination.subset` (the nearest
    /// existing ancestor when the field is absent).
    pub fn pos(&self, path: &str) -> Pos {
        self.tree.locate(path)
    }

    /// A finding about the field at `path`, prefixed with the path.
    pub fn finding(&self, severity: Severity, path: &str, msg: impl std::fmt::Display) -> Finding {
        let message = if path.is_empty() {
            msg.to_string()
        } else {
            format!("{path}: {msg}")
        };
        Finding::new(self.origin.file.clone(), self.pos(path), severity, message)
    }

    /// `file:line` of the resource, for messages that point at another resource.
    pub fn at(&self) -> String {
        format!("{}:{}", self.origin.file.display(), self.origin.line)
    }
}

impl<T> Deref for Located<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.resource
    }
}

impl<T: Serialize> Serialize for Located<T> {
    fn serialize<Se: serde::Serializer>(&self, s: Se) -> Result<Se::Ok, Se::Error> {
        self.resource.serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resource_is_known_by_namespace_and_name() {
        let we = Resource::<()> {
            api_version: "networking.istio.io/v1".into(),
            kind: "WorkloadEntry".into(),
            metadata: Metadata {
                name: "web".into(),
                namespace: "shop".into(),
                ..Metadata::default()
            },
            spec: (),
        };
        assert!(we.is("shop/web"));
        assert_eq!(we.id(), "shop/web");
        for other in ["shop/we", "sho/web", "web", "shop/web/x", "", "/"] {
            assert!(!we.is(other), "{other}");
        }
    }
}
