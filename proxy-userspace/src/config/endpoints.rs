//! Who stands behind each endpoint address: the workload (WorkloadEntry or ServiceEntry
//! endpoint), its namespace, service account and labels, and the meshd node that fronts it
//! (label `meshd.io/node`), so meshd knows when to use the mTLS tunnel and which identity the
//! far side must prove.

use std::{
    collections::{BTreeMap, HashSet},
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

/// Endpoint identities by address and port, and by address alone: policies apply to every port
/// of a workload's address, as a pod's sidecar captures every port (the first entry without
/// `ports` stands for the address, else the first with them), while telemetry names a
/// workload only on its ports, or at the address of one without `ports` (see `workload`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Endpoints {
    by_addr: HashMap<SocketAddr, EndpointIdentity>,
    by_ip: HashMap<IpAddr, EndpointIdentity>,
    /// The addresses whose entry in `by_ip` is an endpoint without `ports`, which serves every
    /// port of its address; an endpoint that names its ports is only known on those.
    #[serde(skip)]
    portless: HashSet<IpAddr>,
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
        e.add_service_ports(set);
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
        if spec.ports.is_empty() && !self.by_ip.contains_key(&ip) {
            self.portless.insert(ip);
        }
        self.by_ip.entry(ip).or_insert(id);
    }

    /// Each endpoint on the ports its services send to it that it does not name: the service
    /// port's `targetPort`, else its number, as Istio gives such an endpoint. Several workloads
    /// may share an address (every workload of a node without pods is on 127.0.0.1), and the
    /// port their services reach them on tells them apart. An address and port named in
    /// `ports` stays that entry's.
    fn add_service_ports(&mut self, set: &PolicySet) {
        for se in &set.service_entries {
            let ns = &se.metadata.namespace;
            let selected = super::compile::selected_workloads(set, se)
                .map(|we| (&we.spec, EndpointIdentity::of(&we.spec, ns, Some(we.id()))));
            let inline =
                (se.spec.endpoints.iter()).map(|ep| (ep, EndpointIdentity::of(ep, ns, None)));
            for (spec, id) in selected.chain(inline) {
                let Ok(ip) = spec.address.parse::<IpAddr>() else {
                    continue;
                };
                for port in &se.spec.ports {
                    let target = (spec.ports.get(&port.name).copied())
                        .or(port.target_port)
                        .unwrap_or(port.number);
                    (self.by_addr.entry(SocketAddr::new(ip, target))).or_insert_with(|| id.clone());
                }
            }
        }
    }

    pub fn get(&self, addr: SocketAddr) -> Option<&EndpointIdentity> {
        self.by_addr
            .get(&addr)
            .or_else(|| self.by_ip.get(&addr.ip()))
    }

    /// `namespace/name` of the WorkloadEntry behind `addr`: the one known on that port, else
    /// one without `ports` at its address (it serves every port there).
    pub fn workload(&self, addr: SocketAddr) -> Option<&String> {
        match self.by_addr.get(&addr) {
            Some(e) => e.workload.as_ref(),
            None => (self.by_ip.get(&addr.ip()))
                .filter(|_| self.portless.contains(&addr.ip()))
                .and_then(|e| e.workload.as_ref()),
        }
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
        let e = Endpoints::compile(&set);
        let at = |a: &str| e.workload(a.parse().unwrap()).map(String::as_str);
        assert_eq!(at("127.0.21.1:43210"), Some("shop/web-v1"));
        assert_eq!(at("127.0.21.1:80"), Some("shop/web-v1"));
        assert_eq!(at("127.0.0.1:5432"), Some("shop/db"));
        // An entry with ports names only those: another port of its address is not it.
        assert_eq!(at("127.0.0.1:9000"), None);
    }

    #[test]
    fn workloads_sharing_an_address_are_told_apart_by_the_ports_their_services_reach() {
        // Neither entry names its ports: each is known by its service's target port, whichever
        // comes first in the files; the address alone stays the first entry's.
        let yaml = r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: a, namespace: shop}
spec: {address: 127.0.0.1, labels: {app: a}, serviceAccount: a}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: z, namespace: shop}
spec: {address: 127.0.0.1, labels: {app: z}, serviceAccount: z, ports: {metrics: 9090}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: z, namespace: shop}
spec:
  hosts: [z.shop.internal]
  ports: [{number: 80, name: http, targetPort: 41102}, {number: 81, name: admin}]
  resolution: STATIC
  workloadSelector: {labels: {app: z}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: inline, namespace: shop}
spec:
  hosts: [inline.shop.internal]
  ports: [{number: 7000, name: tcp}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, serviceAccount: inline}]
"#;
        let set =
            crate::policy::load_str("t.yaml".as_ref(), yaml).unwrap_or_else(|_| panic!("valid"));
        let e = Endpoints::compile(&set);
        let sa = |a: &str| e.get(a.parse().unwrap()).map(|i| i.service_account.clone());
        let workload = |a: &str| e.workload(a.parse().unwrap()).cloned();
        assert_eq!(sa("127.0.0.1:41102").as_deref(), Some("z"));
        assert_eq!(workload("127.0.0.1:41102").as_deref(), Some("shop/z"));
        // A port with no targetPort reaches the endpoint on its own number.
        assert_eq!(sa("127.0.0.1:81").as_deref(), Some("z"));
        assert_eq!(sa("127.0.0.1:9090").as_deref(), Some("z"));
        assert_eq!(sa("127.0.0.1:7000").as_deref(), Some("inline"));
        assert_eq!(workload("127.0.0.1:7000"), None);
        assert_eq!(sa("127.0.0.1:5000").as_deref(), Some("a"));
        assert_eq!(workload("127.0.0.1:5000").as_deref(), Some("shop/a"));
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
