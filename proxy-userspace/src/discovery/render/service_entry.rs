//! A Kubernetes Service and its EndpointSlices → one ServiceEntry: host
//! `<svc>.<ns>.svc.cluster.local`, the ClusterIPs, the ports with their protocols, resolution
//! STATIC, and the ready endpoints with their pods' labels and service accounts.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use k8s_openapi::api::core::v1::Service;
use serde_json::{Map, Value, json};

use super::{DOMAIN, View, annotated};
use crate::{
    config::{Document, endpoints::NODE_LABEL},
    discovery::protocol,
    policy::model::{SERVICE_SELECTOR, TrafficDistribution},
};

impl View {
    /// The ServiceEntry for a Service: hosts `<name>.<namespace>.svc.cluster.local`, its
    /// cluster IPs, its ports, and its EndpointSlices' ready endpoints. None for ExternalName
    /// services (no endpoints meshd could balance over).
    pub fn service_entry(&self, svc: &Service) -> Option<Document> {
        let ns = svc.metadata.namespace.as_deref()?;
        let name = svc.metadata.name.as_deref()?;
        let spec = svc.spec.as_ref()?;
        if spec.type_.as_deref() == Some("ExternalName") {
            return None;
        }
        let addresses: Vec<&String> = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter(|ip| ip.parse::<IpAddr>().is_ok())
            .fold(Vec::new(), |mut v, ip| {
                if !v.contains(&ip) {
                    v.push(ip);
                }
                v
            });
        let mut ports = Vec::new();
        // Service port name → the name used in the ServiceEntry (unnamed ports get one).
        let mut port_names: HashMap<String, String> = HashMap::new();
        for p in spec.ports.iter().flatten() {
            if p.protocol.as_deref() == Some("SCTP") {
                continue;
            }
            let given = p.name.clone().unwrap_or_default();
            let se_name = if given.is_empty() {
                format!("port-{}", p.port)
            } else {
                given.clone()
            };
            let mut port = json!({ "number": p.port, "name": se_name });
            if let Some(proto) = protocol::detect(
                p.name.as_deref(),
                p.app_protocol.as_deref(),
                p.protocol.as_deref(),
            ) {
                port["protocol"] = json!(proto);
            }
            port_names.insert(given, se_name);
            ports.push(port);
        }
        let mut endpoints = Vec::new();
        let key = (ns.to_string(), name.to_string());
        for slice in self.slices.get(&key).into_iter().flatten() {
            if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
                continue;
            }
            // Slice port name → the port number on the endpoints.
            let mut eports = Map::new();
            for p in slice.ports.iter().flatten() {
                let given = p.name.clone().unwrap_or_default();
                if let (Some(se_name), Some(num)) = (port_names.get(&given), p.port) {
                    eports.insert(se_name.clone(), json!(num));
                }
            }
            for ep in &slice.endpoints {
                // `ready` unset means ready, as the API documents.
                let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if !ready {
                    continue;
                }
                let pod = ep
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| {
                        Some((
                            r.namespace.clone().unwrap_or_else(|| ns.to_string()),
                            r.name.clone()?,
                        ))
                    });
                let mut labels = BTreeMap::new();
                let mut service_account = None;
                if let Some(p) = pod.as_ref().and_then(|k| self.pods.get(k)) {
                    labels.extend(p.metadata.labels.clone().unwrap_or_default());
                    service_account = p.spec.as_ref().and_then(|s| s.service_account_name.clone());
                }
                if let Some((pod_ns, pod_name)) = &pod
                    && self.enabled.contains(pod_ns)
                    && ep.node_name.as_deref() != Some(self.node.as_str())
                {
                    match self.node_label(ep.node_name.as_deref()) {
                        Some(ip) => {
                            labels.insert(NODE_LABEL.to_string(), ip);
                        }
                        None => {
                            // Dialling it directly would bypass the mTLS tunnel.
                            tracing::debug!(
                                service = %format!("{ns}/{name}"),
                                pod = %format!("{pod_ns}/{pod_name}"),
                                node = ?ep.node_name,
                                "endpoint left out until its node's InternalIP is known"
                            );
                            continue;
                        }
                    }
                }
                for addr in &ep.addresses {
                    let mut e = json!({ "address": addr });
                    if !eports.is_empty() {
                        e["ports"] = Value::Object(eports.clone());
                    }
                    if !labels.is_empty() {
                        e["labels"] = json!(labels);
                    }
                    if let Some(sa) = &service_account {
                        e["serviceAccount"] = json!(sa);
                    }
                    endpoints.push(e);
                }
            }
        }
        let mut spec = json!({
            "hosts": [format!("{name}.{ns}.{DOMAIN}")],
            "location": "MESH_INTERNAL",
            "resolution": "STATIC",
            "ports": ports,
            "endpoints": endpoints,
        });
        if !addresses.is_empty() {
            spec["addresses"] = json!(addresses);
        }
        // The Service's own field, else Istio's annotation on it.
        let by_annotation = (svc.metadata.annotations.as_ref())
            .and_then(|a| a.get(crate::policy::model::TRAFFIC_DISTRIBUTION));
        let field = svc
            .spec
            .as_ref()
            .and_then(|s| s.traffic_distribution.as_ref());
        match field.or(by_annotation) {
            Some(d) if TrafficDistribution::parse(d).is_some() => {
                spec["trafficDistribution"] = json!(d);
            }
            // Kubernetes checks neither the annotation nor (for a newer value) the field: one
            // meshd does not know leaves the endpoints unranked, never the service unserved.
            Some(d) => tracing::warn!(
                service = %format!("{ns}/{name}"),
                value = %d,
                "trafficDistribution is not PreferSameZone, PreferClose or PreferSameNode; ignored"
            ),
            None => {}
        }
        // The Service's selector: the workloads an AuthorizationPolicy's `targetRefs` to the
        // Service stands for, ready or not (the endpoints list only the ready ones).
        let selector = (svc.spec.as_ref())
            .and_then(|s| s.selector.as_ref())
            .filter(|s| !s.is_empty());
        let annotations = match selector {
            Some(s) => json!({ SERVICE_SELECTOR: serde_json::to_string(s).unwrap_or_default() }),
            None => Value::Null,
        };
        Some(annotated(
            "Service",
            "ServiceEntry",
            ns,
            name,
            annotations,
            spec,
        ))
    }
}
