//! Kubernetes objects → the documents the policy files would hold: a ServiceEntry per Service
//! (with its EndpointSlices' ready endpoints) and a WorkloadEntry per pod in a meshd-enabled
//! namespace. Istio's own objects pass through with their metadata trimmed.
//!
//! Endpoints (and WorkloadEntries) of meshd-enabled pods on other nodes carry the label
//! `meshd.io/node: <that node's InternalIP>`, from the Nodes watch, so meshd tunnels to them.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
};

use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::api::DynamicObject;
use serde_json::{Value, json};

use crate::config::{Document, endpoints::NODE_LABEL};

/// The label that puts a namespace's pods in the mesh.
pub const ENABLED_LABEL: &str = "meshd.io/enabled";
/// The label EndpointSlices name their Service with.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const DOMAIN: &str = "svc.cluster.local";

/// What discovery knows of the cluster at one moment, indexed for rendering.
pub struct View {
    pub node: String,
    pub enabled: HashSet<String>,
    pub node_ips: HashMap<String, IpAddr>,
    pub pods: HashMap<(String, String), Arc<Pod>>,
    pub services: Vec<Arc<Service>>,
    pub slices: HashMap<(String, String), Vec<Arc<EndpointSlice>>>,
}

impl View {
    pub fn new(
        node: &str,
        namespaces: &[Arc<Namespace>],
        nodes: &[Arc<Node>],
        pods: &[Arc<Pod>],
        services: &[Arc<Service>],
        slices: &[Arc<EndpointSlice>],
    ) -> View {
        let enabled = namespaces
            .iter()
            .filter(|n| namespace_enabled(n))
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        let node_ips = nodes
            .iter()
            .filter_map(|n| Some((n.metadata.name.clone()?, internal_ip(n)?)))
            .collect();
        let pods = pods
            .iter()
            .filter_map(|p| {
                Some((
                    (p.metadata.namespace.clone()?, p.metadata.name.clone()?),
                    p.clone(),
                ))
            })
            .collect();
        let mut by_service: HashMap<(String, String), Vec<Arc<EndpointSlice>>> = HashMap::new();
        for s in slices {
            let svc = s
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL));
            if let (Some(ns), Some(svc)) = (&s.metadata.namespace, svc) {
                by_service
                    .entry((ns.clone(), svc.clone()))
                    .or_default()
                    .push(s.clone());
            }
        }
        for v in by_service.values_mut() {
            v.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        }
        let mut services = services.to_vec();
        services.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        View {
            node: node.to_string(),
            enabled,
            node_ips,
            pods,
            services,
            slices: by_service,
        }
    }

    /// The `meshd.io/node` label value for a meshd-enabled workload on `node`: None on this
    /// node, or for a node whose address is not known (yet).
    fn node_label(&self, node: Option<&str>) -> Option<String> {
        let node = node?;
        if node == self.node {
            return None;
        }
        self.node_ips.get(node).map(IpAddr::to_string)
    }

    /// Every document: ServiceEntries, then WorkloadEntries.
    pub fn documents(&self) -> Vec<Document> {
        let mut out: Vec<Document> = self
            .services
            .iter()
            .filter_map(|s| self.service_entry(s))
            .collect();
        let mut pods: Vec<&Arc<Pod>> = self.pods.values().collect();
        pods.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        out.extend(pods.into_iter().filter_map(|p| self.workload_entry(p)));
        out
    }

    /// The WorkloadEntry of a running pod with an IP in a meshd-enabled namespace.
    pub fn workload_entry(&self, pod: &Pod) -> Option<Document> {
        let ns = pod.metadata.namespace.as_deref()?;
        let name = pod.metadata.name.as_deref()?;
        if !self.enabled.contains(ns) {
            return None;
        }
        let spec = pod.spec.as_ref()?;
        let status = pod.status.as_ref()?;
        if spec.host_network == Some(true) || status.phase.as_deref() != Some("Running") {
            return None;
        }
        let ip = status.pod_ip.as_deref()?;
        let mut labels = pod.metadata.labels.clone().unwrap_or_default();
        if spec.node_name.as_deref() != Some(self.node.as_str()) {
            // A remote pod is reached through its node's meshd, once that node's address is known.
            labels.insert(
                NODE_LABEL.to_string(),
                self.node_label(spec.node_name.as_deref())?,
            );
        }
        let mut we = json!({ "address": ip });
        if !labels.is_empty() {
            we["labels"] = json!(labels);
        }
        if let Some(sa) = &spec.service_account_name {
            we["serviceAccount"] = json!(sa);
        }
        Some(rendered("Pod", "WorkloadEntry", ns, name, we))
    }
}

/// The annotations meshd reads on Istio objects; the others are dropped.
const READ_ANNOTATIONS: &[&str] = &[
    "istio.io/dry-run",
    crate::policy::model::TRAFFIC_DISTRIBUTION,
];

/// An Istio object from the API as a document: apiVersion, kind, name, namespace, labels, the
/// annotations meshd reads, the creation time (by which Istio orders competing resources), and
/// spec; other server-side fields (status, managedFields, other annotations...) are dropped.
/// `api_version` and `kind` are the watched ones (list items need not carry their own).
pub fn istio_document(api_version: &str, kind: &str, obj: &DynamicObject) -> Option<Document> {
    let name = obj.metadata.name.as_deref()?;
    let ns = obj.metadata.namespace.as_deref().unwrap_or("default");
    let mut meta = json!({ "name": name, "namespace": ns });
    if let Some(l) = obj.metadata.labels.as_ref().filter(|l| !l.is_empty()) {
        meta["labels"] = json!(l);
    }
    let read: std::collections::BTreeMap<&String, &String> = (obj.metadata.annotations.iter())
        .flatten()
        .filter(|(k, _)| READ_ANNOTATIONS.contains(&k.as_str()))
        .collect();
    if !read.is_empty() {
        meta["annotations"] = json!(read);
    }
    if let Some(created) = &obj.metadata.creation_timestamp {
        meta["creationTimestamp"] = json!(created);
    }
    let mut doc = json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": meta,
    });
    if let Some(spec) = obj.data.get("spec") {
        doc["spec"] = spec.clone();
    }
    Some(Document::new(kind, ns, name, pretty(&doc)))
}

/// A networking.istio.io/v1 `kind` rendered from the Kubernetes object `source` (its kind,
/// namespace and name).
fn rendered(source: &str, kind: &str, ns: &str, name: &str, spec: Value) -> Document {
    annotated(source, kind, ns, name, Value::Null, spec)
}

/// [`rendered`], with `annotations` (a JSON object, or null for none) in its metadata.
fn annotated(
    source: &str,
    kind: &str,
    ns: &str,
    name: &str,
    annotations: Value,
    spec: Value,
) -> Document {
    let mut meta = json!({ "name": name, "namespace": ns });
    if annotations.is_object() {
        meta["annotations"] = annotations;
    }
    let doc = json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": kind,
        "metadata": meta,
        "spec": spec,
    });
    Document::new(source, ns, name, pretty(&doc))
}

/// JSON over several lines, so findings point at a line of their own.
fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).expect("JSON values serialize")
}

pub fn namespace_enabled(ns: &Namespace) -> bool {
    ns.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(ENABLED_LABEL))
        .is_some_and(|v| v == "true")
}

/// A node's first IPv4 InternalIP. `meshd.io/node` is a label, and a label value cannot hold
/// an IPv6 address's colons, so an IPv6-only node counts as one whose address is unknown.
pub fn internal_ip(node: &Node) -> Option<IpAddr> {
    node.status
        .as_ref()?
        .addresses
        .iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse::<IpAddr>().ok())
        .find(IpAddr::is_ipv4)
}

mod service_entry;
#[cfg(test)]
mod tests;
