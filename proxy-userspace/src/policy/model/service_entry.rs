//! ServiceEntry and WorkloadEntry: the services and workloads of a node without Kubernetes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServiceEntrySpec {
    pub hosts: Vec<String>,
    pub addresses: Vec<String>,
    pub ports: Vec<ServicePort>,
    /// `MESH_EXTERNAL` or `MESH_INTERNAL`.
    pub location: Option<String>,
    /// `NONE`, `STATIC`, `DNS` or `DNS_ROUND_ROBIN`.
    pub resolution: Option<String>,
    pub endpoints: Vec<WorkloadEntrySpec>,
    pub workload_selector: Option<WorkloadSelector>,
    pub export_to: Vec<String>,
    pub subject_alt_names: Vec<String>,
    /// `PreferSameZone` (or its older name `PreferClose`) or `PreferSameNode`, as Kubernetes
    /// Services have it; Istio reads the annotation [`TRAFFIC_DISTRIBUTION`] on a ServiceEntry.
    pub traffic_distribution: Option<String>,
}

/// The annotation by which meshd's discovery records, on the ServiceEntry it renders from a
/// Kubernetes Service, the Service's selector (JSON): the workloads behind the Service.
pub const SERVICE_SELECTOR: &str = "meshd.io/service-selector";

/// The annotation by which a ServiceEntry (or a Service) asks for endpoints near the client.
pub const TRAFFIC_DISTRIBUTION: &str = "networking.istio.io/traffic-distribution";

/// Which endpoints a service's clients prefer, by `trafficDistribution`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum TrafficDistribution {
    /// The closest by locality: same region, zone and subzone, then same zone, then region.
    PreferSameZone,
    /// Those on the client's node, then any.
    PreferSameNode,
}

impl TrafficDistribution {
    /// The value as Kubernetes and Istio spell it; `None` for any other.
    pub fn parse(value: &str) -> Option<TrafficDistribution> {
        match value {
            "PreferSameZone" | "PreferClose" => Some(TrafficDistribution::PreferSameZone),
            "PreferSameNode" => Some(TrafficDistribution::PreferSameNode),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServicePort {
    pub number: u16,
    /// As written; Istio compares protocols without regard to case.
    pub protocol: Option<String>,
    pub name: String,
    pub target_port: Option<u16>,
}

impl ServicePort {
    /// Whether the port carries opaque TCP, by its `protocol` or else its name's prefix
    /// (`tcp-db`), as Istio reads them: TCP, MONGO, MYSQL or REDIS (not TLS or HTTPS, which
    /// Istio routes by server name).
    pub fn is_opaque_tcp(&self) -> bool {
        let declared = match &self.protocol {
            Some(p) => p.as_str(),
            None => self.name.split('-').next().unwrap_or(""),
        };
        ["TCP", "MONGO", "MYSQL", "REDIS"]
            .iter()
            .any(|p| declared.eq_ignore_ascii_case(p))
    }
}

/// `workloadSelector: {labels: ...}` of a ServiceEntry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkloadSelector {
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WorkloadEntrySpec {
    pub address: String,
    pub ports: BTreeMap<String, u16>,
    pub labels: BTreeMap<String, String>,
    pub network: Option<String>,
    pub locality: Option<String>,
    pub weight: Option<u32>,
    pub service_account: Option<String>,
}
