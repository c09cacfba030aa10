//! Who stands behind each endpoint address: the workload (WorkloadEntry or ServiceEntry
//! endpoint), its namespace, service account and labels, and the meshd node that fronts it
//! (label `meshd.io/node`), so meshd knows when to use the mTLS tunnel and which identity the
//! far side must prove.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use foldhash::HashMap;

use serde::Serialize;

use crate::policy::{PolicySet, model::WorkloadEntrySpec};

/// The label that names the meshd node fronting an endpoint: that node's IP address.
pub const NODE_LABEL: &str = "meshd.io/node";
/// The port of that node's tunnel listener, when it is not this node's `--inbound-port`.
pub const TUNNEL_PORT_LABEL: &str = "meshd.io/tunnel-port";

#[derive(Clone, Debug, Serialize)]
pub struct EndpointIdentity {
    /// `namespace/name` of the WorkloadEntry, if the endpoint is one.
    pub workload: Option<String>,
    pub namespace: String,
    /// The service account; Istio's default is `default`.
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    /// The `meshd.io/node` label as written.
    pub node: Option<String>,
    /// The `meshd.io/tunnel-port` label as written.
    pub tunnel_port: Option<String>,
}

impl EndpointIdentity {
    fn of(spec: &WorkloadEntrySpec, namespace: &str, workload: Option<String>) -> Self {
        EndpointIdentity {
            workload,
            namespace: namespace.to_string(),
            service_account: spec
                .service_account
                .clone()
                .unwrap_or_else(|| "default".into()),
            labels: spec.labels.clone(),
            node: spec.labels.get(NODE_LABEL).cloned(),
            tunnel_port: spec.labels.get(TUNNEL_PORT_LABEL).cloned(),
        }
    }

    /// The tunnel address of the fronting node; `inbound_port` when no port label is set.
    pub fn node_addr(&self, inbound_port: u16) -> Option<SocketAddr> {
        let ip = self.node.as_deref()?.parse::<IpAddr>().ok()?;
        let port = self
            .tunnel_port
            .as_deref()
            .and_then(|p| p.parse().ok())
            .unwrap_or(inbound_port);
        Some(SocketAddr::new(ip, port))
    }
}

/// Endpoint identities by address and port, and by address alone for endpoints whose port is
/// the service's.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Endpoints {
    by_addr: HashMap<SocketAddr, EndpointIdentity>,
    by_ip: HashMap<IpAddr, EndpointIdentity>,
}

impl Endpoints {
    pub fn compile(set: &PolicySet) -> Endpoints {
        let mut e = Endpoints::default();
        // Entries without `ports` first: they serve every port of their address, so an address
        // they share with an entry that names its ports is theirs on any port not named.
        for portless in [true, false] {
            for we in &set.workload_entries {
                if we.spec.ports.is_empty() == portless {
                    let id = EndpointIdentity::of(&we.spec, &we.metadata.namespace, Some(we.id()));
                    e.add(&we.spec, id);
                }
            }
            for se in &set.service_entries {
                for ep in se
                    .spec
                    .endpoints
                    .iter()
                    .filter(|ep| ep.ports.is_empty() == portless)
                {
                    e.add(ep, EndpointIdentity::of(ep, &se.metadata.namespace, None));
                }
            }
        }
        e
    }

    fn add(&mut self, spec: &WorkloadEntrySpec, id: EndpointIdentity) {
        let Ok(ip) = spec.address.parse::<IpAddr>() else {
            return;
        };
        for port in spec.ports.values() {
            self.by_addr
                .entry(SocketAddr::new(ip, *port))
                .or_insert_with(|| id.clone());
        }
        self.by_ip.entry(ip).or_insert(id);
    }

    pub fn get(&self, addr: SocketAddr) -> Option<&EndpointIdentity> {
        self.by_addr
            .get(&addr)
            .or_else(|| self.by_ip.get(&addr.ip()))
    }

    /// Every endpoint declared with its port, by address.
    pub fn by_address(&self) -> impl Iterator<Item = (SocketAddr, &EndpointIdentity)> {
        self.by_addr.iter().map(|(a, e)| (*a, e))
    }

    /// Every endpoint identity (an identity may appear more than once).
    pub fn all(&self) -> impl Iterator<Item = &EndpointIdentity> {
        self.by_addr.values().chain(self.by_ip.values())
    }

    /// Whether any endpoint is fronted by a meshd node (which needs workload certificates).
    pub fn any_on_nodes(&self) -> bool {
        self.by_ip.values().any(|e| e.node.is_some())
    }
}

/// The WorkloadEntry behind each endpoint address, for telemetry: by address and port for
/// entries that name their ports, and by address alone for entries without `ports`, which
/// serve every port of their services (Istio's endpoint then takes the service's port).
#[derive(Clone, Debug, Default)]
pub struct EndpointWorkloads {
    by_addr: HashMap<SocketAddr, String>,
    by_ip: HashMap<IpAddr, String>,
}

impl EndpointWorkloads {
    pub fn compile(set: &PolicySet) -> EndpointWorkloads {
        let mut w = EndpointWorkloads::default();
        for we in &set.workload_entries {
            let Ok(ip) = we.spec.address.parse::<IpAddr>() else {
                continue;
            };
            if we.spec.ports.is_empty() {
                w.by_ip.entry(ip).or_insert_with(|| we.id());
            }
            for port in we.spec.ports.values() {
                (w.by_addr.entry(SocketAddr::new(ip, *port))).or_insert_with(|| we.id());
            }
        }
        w
    }

    /// `namespace/name` of the WorkloadEntry behind `addr`.
    pub fn get(&self, addr: &SocketAddr) -> Option<&String> {
        (self.by_addr.get(addr)).or_else(|| self.by_ip.get(&addr.ip()))
    }

    pub fn contains_key(&self, addr: &SocketAddr) -> bool {
        self.get(addr).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_shared_with_an_entry_naming_its_ports_is_the_portless_entrys_elsewhere() {
        // The entry naming its port comes first in the files: it keeps that port only.
        let yaml = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: db, namespace: shop}\nspec: {address: 127.0.0.1, serviceAccount: db, ports: {tcp: 5432}}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: web, namespace: shop}\nspec: {address: 127.0.0.1, serviceAccount: web}\n";
        let set =
            crate::policy::load_str("t.yaml".as_ref(), yaml).unwrap_or_else(|_| panic!("valid"));
        let e = Endpoints::compile(&set);
        let sa = |a: &str| e.get(a.parse().unwrap()).map(|i| i.service_account.clone());
        assert_eq!(sa("127.0.0.1:5432").as_deref(), Some("db"));
        assert_eq!(sa("127.0.0.1:8080").as_deref(), Some("web"));
    }

    #[test]
    fn workloads_without_ports_answer_for_every_port_of_their_address() {
        let yaml = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: web-v1, namespace: shop}\nspec: {address: 127.0.21.1}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: db, namespace: shop}\nspec: {address: 127.0.0.1, ports: {tcp: 5432}}\n";
        let set =
            crate::policy::load_str("t.yaml".as_ref(), yaml).unwrap_or_else(|_| panic!("valid"));
        let w = EndpointWorkloads::compile(&set);
        let at = |a: &str| w.get(&a.parse().unwrap()).map(String::as_str);
        assert_eq!(at("127.0.21.1:43210"), Some("shop/web-v1"));
        assert_eq!(at("127.0.21.1:80"), Some("shop/web-v1"));
        assert_eq!(at("127.0.0.1:5432"), Some("shop/db"));
        // An entry with ports names only those: another port of its address is not it.
        assert_eq!(at("127.0.0.1:9000"), None);
    }

    #[test]
    fn node_addresses() {
        let mut id = EndpointIdentity {
            workload: None,
            namespace: "default".into(),
            service_account: "default".into(),
            labels: BTreeMap::new(),
            node: Some("10.0.0.2".into()),
            tunnel_port: None,
        };
        assert_eq!(id.node_addr(15008), Some("10.0.0.2:15008".parse().unwrap()));
        id.tunnel_port = Some("16008".into());
        assert_eq!(id.node_addr(15008), Some("10.0.0.2:16008".parse().unwrap()));
        id.node = Some("node-b".into());
        assert_eq!(id.node_addr(15008), None);
    }
}
