//! VirtualService `tcp` routes: where an opaque TCP connection to a service goes. The first
//! route whose match holds (port, destination subnet, the client's labels and namespace) takes
//! the connection, and its destinations share connections by weight. A connection no route
//! matches goes to the service itself, as with Istio's default route.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use foldhash::HashMap;

use crate::{
    policy::{PolicySet, hosts::fqdn, model},
    routes::Destination,
    security::authz::matchers::IpBlock,
};

/// One compiled `tcp` route.
#[derive(Clone, Debug)]
pub struct TcpRoute {
    /// `namespace/name` of the VirtualService and the route's index.
    pub origin: String,
    /// Any of these matches selects the route; empty means "every connection".
    matches: Vec<L4Match>,
    pub destinations: Vec<Destination>,
}

#[derive(Clone, Debug, Default)]
struct L4Match {
    port: Option<u16>,
    subnets: Vec<IpBlock>,
    source_labels: BTreeMap<String, String>,
    source_namespace: Option<String>,
}

/// The client of a connection, as `tcp` matches see it.
pub struct Client<'a> {
    pub labels: &'a BTreeMap<String, String>,
    pub namespace: Option<&'a str>,
}

impl L4Match {
    fn holds(&self, dst: SocketAddr, client: &Client<'_>) -> bool {
        self.port.is_none_or(|p| p == dst.port())
            && (self.subnets.is_empty() || self.subnets.iter().any(|b| b.contains(dst.ip())))
            && self
                .source_labels
                .iter()
                .all(|(k, v)| client.labels.get(k) == Some(v))
            && self
                .source_namespace
                .as_deref()
                .is_none_or(|ns| client.namespace == Some(ns))
    }
}

/// The `tcp` routes of every host a VirtualService names.
#[derive(Clone, Debug, Default)]
pub struct TcpRoutes {
    by_host: HashMap<String, Arc<[TcpRoute]>>,
}

impl TcpRoutes {
    pub fn compile(set: &PolicySet) -> TcpRoutes {
        let mut by_host: HashMap<String, Arc<[TcpRoute]>> = HashMap::default();
        for vs in &set.virtual_services {
            if vs.spec.tcp.is_empty() {
                continue;
            }
            let ns = &vs.metadata.namespace;
            let routes: Arc<[TcpRoute]> = vs
                .spec
                .tcp
                .iter()
                .enumerate()
                .map(|(i, r)| tcp_route(ns, &format!("{ns}/{}#{i}", vs.metadata.name), r))
                .collect();
            for host in &vs.spec.hosts {
                // The first VirtualService for a host wins, as for HTTP routes.
                by_host
                    .entry(fqdn(host, ns))
                    .or_insert_with(|| routes.clone());
            }
        }
        TcpRoutes { by_host }
    }

    /// The route a connection to `host`, dialled at `dst`, takes; `None` when no route of the
    /// host's VirtualService matches (or it has none).
    pub fn decide(&self, host: &str, dst: SocketAddr, client: &Client<'_>) -> Option<&TcpRoute> {
        self.by_host
            .get(host)?
            .iter()
            .find(|r| r.matches.is_empty() || r.matches.iter().any(|m| m.holds(dst, client)))
    }
}

fn tcp_route(ns: &str, origin: &str, r: &model::TcpRoute) -> TcpRoute {
    let only = r.route.len() == 1;
    TcpRoute {
        origin: origin.to_string(),
        matches: r
            .matches
            .iter()
            .map(|m| L4Match {
                port: m.port,
                // Validation checked every subnet.
                subnets: m
                    .destination_subnets
                    .iter()
                    .filter_map(|s| IpBlock::parse(s))
                    .collect(),
                source_labels: m.source_labels.clone(),
                source_namespace: m.source_namespace.clone(),
            })
            .collect(),
        destinations: r
            .route
            .iter()
            .map(|d| Destination::of(&d.destination, d.weight, only, ns))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::load_str;

    const VS: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tcp-echo, namespace: default}
spec:
  hosts: [tcp-echo]
  tcp:
  - match:
    - port: 9000
      sourceLabels: {app: admin}
    route:
    - destination: {host: tcp-echo, subset: v2}
  - match:
    - destinationSubnets: [10.96.0.0/16]
      sourceNamespace: default
    route:
    - destination: {host: tcp-echo, subset: v1, port: {number: 9000}}
      weight: 80
    - destination: {host: tcp-echo, subset: v2, port: {number: 9000}}
      weight: 20
"#;

    #[test]
    fn the_first_matching_route_takes_the_connection() {
        let routes = TcpRoutes::compile(&load_str("t.yaml".as_ref(), VS).expect("valid"));
        let host = "tcp-echo.default.svc.cluster.local";
        let admin: BTreeMap<String, String> = [("app".to_string(), "admin".to_string())].into();
        let none = BTreeMap::new();
        let client = |labels, namespace| Client { labels, namespace };
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        let origin =
            |dst: &str, c: &Client<'_>| routes.decide(host, at(dst), c).map(|r| r.origin.clone());
        assert_eq!(
            origin("10.96.0.5:9000", &client(&admin, Some("default"))).as_deref(),
            Some("default/tcp-echo#0")
        );
        let r = routes
            .decide(host, at("10.96.0.5:9000"), &client(&none, Some("default")))
            .expect("the subnet route");
        assert_eq!(r.origin, "default/tcp-echo#1");
        let weights: Vec<u32> = r.destinations.iter().map(|d| d.weight).collect();
        assert_eq!(weights, [80, 20]);
        assert_eq!(r.destinations[0].port, Some(9000));
        assert_eq!(
            origin("10.97.0.5:9000", &client(&none, Some("default"))),
            None
        );
        assert_eq!(
            origin("10.96.0.5:9000", &client(&none, Some("other"))),
            None
        );
        assert_eq!(origin("10.96.0.5:9000", &client(&none, None)), None);
        assert!(
            routes
                .decide(
                    "other.default.svc.cluster.local",
                    at("10.96.0.5:9000"),
                    &client(&admin, None)
                )
                .is_none()
        );
    }
}
