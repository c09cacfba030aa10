//! VirtualService `tcp` and `tls` routes: where an opaque connection to a service goes. The
//! first route whose match holds (port, destination subnet, the client's labels and namespace,
//! and for `tls` the server name of the ClientHello) takes the connection, and its destinations
//! share connections by weight. A connection no route matches goes to the service itself, as
//! with Istio's default route.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use foldhash::HashMap;

use crate::{
    policy::{
        PolicySet, age,
        hosts::{covers, fqdn},
        model,
    },
    routes::{Client, Destination},
    security::authz::matchers::IpBlock,
};

/// One compiled `tcp` or `tls` route.
#[derive(Clone, Debug)]
pub struct TcpRoute {
    /// `namespace/name` of the VirtualService and the route's index (`tls` routes: `#tls`).
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
    /// `tls` matches: server names (exact, or `*.suffix`), one of which the SNI must be.
    sni_hosts: Vec<String>,
}

impl L4Match {
    fn holds(&self, dst: SocketAddr, client: &Client<'_>, sni: Option<&str>) -> bool {
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
            && (self.sni_hosts.is_empty()
                || sni.is_some_and(|name| self.sni_hosts.iter().any(|p| covers(p, name))))
    }
}

/// The `tcp` routes of every host a VirtualService names, and the `tls` routes by host pattern.
#[derive(Clone, Debug, Default)]
pub struct TcpRoutes {
    by_host: HashMap<String, Arc<[TcpRoute]>>,
    /// Oldest VirtualService first, as Istio orders them; a pattern may be a wildcard
    /// (`*.example.com`).
    tls: Vec<(String, Arc<[TcpRoute]>)>,
}

impl TcpRoutes {
    pub fn compile(set: &PolicySet) -> TcpRoutes {
        let mut by_host: HashMap<String, Arc<[TcpRoute]>> = HashMap::default();
        let mut tls = Vec::new();
        for vs in age::oldest_first(&set.virtual_services)
            .into_iter()
            .filter(|v| v.spec.applies_to_mesh())
        {
            let ns = &vs.metadata.namespace;
            let name = &vs.metadata.name;
            if !vs.spec.tcp.is_empty() {
                let routes = compile_routes(ns, name, "", &vs.spec.tcp, |r| {
                    let matches = model::mesh_matches(&r.matches)?.into_iter().map(|m| {
                        let (sub, labels) = (&m.destination_subnets, &m.source_labels);
                        L4Match::compile(m.port, sub, labels, &m.source_namespace, &[])
                    });
                    Some((matches.collect(), &r.route))
                });
                for host in &vs.spec.hosts {
                    // The oldest VirtualService for a host wins, as for HTTP routes.
                    by_host
                        .entry(fqdn(host, ns))
                        .or_insert_with(|| routes.clone());
                }
            }
            if !vs.spec.tls.is_empty() {
                let routes = compile_routes(ns, name, "tls", &vs.spec.tls, |r| {
                    let matches = model::mesh_matches(&r.matches)?.into_iter().map(|m| {
                        let (sub, labels) = (&m.destination_subnets, &m.source_labels);
                        L4Match::compile(m.port, sub, labels, &m.source_namespace, &m.sni_hosts)
                    });
                    Some((matches.collect(), &r.route))
                });
                tls.extend(vs.spec.hosts.iter().map(|h| (fqdn(h, ns), routes.clone())));
            }
        }
        TcpRoutes { by_host, tls }
    }

    /// Whether any VirtualService has `tls` routes (only then is a ClientHello read).
    pub fn has_tls(&self) -> bool {
        !self.tls.is_empty()
    }

    /// The route a connection to `host`, dialled at `dst`, takes; `None` when no route of the
    /// host's VirtualService matches (or it has none).
    pub fn decide(&self, host: &str, dst: SocketAddr, client: &Client<'_>) -> Option<&TcpRoute> {
        first_match(self.by_host.get(host)?, dst, client, None)
    }

    /// The `tls` route a connection naming `sni` takes: from the VirtualService of the service
    /// dialled (`host`), else of the first one (oldest first) whose hosts cover the server name.
    pub fn decide_tls(
        &self,
        host: Option<&str>,
        sni: &str,
        dst: SocketAddr,
        client: &Client<'_>,
    ) -> Option<&TcpRoute> {
        let of = |wanted: &str| {
            self.tls
                .iter()
                .filter(move |(pattern, _)| covers(pattern, wanted))
                .find_map(|(_, routes)| first_match(routes, dst, client, Some(sni)))
        };
        host.and_then(of).or_else(|| of(sni))
    }
}

fn first_match<'r>(
    routes: &'r [TcpRoute],
    dst: SocketAddr,
    client: &Client<'_>,
    sni: Option<&str>,
) -> Option<&'r TcpRoute> {
    routes
        .iter()
        .find(|r| r.matches.is_empty() || r.matches.iter().any(|m| m.holds(dst, client, sni)))
}

impl L4Match {
    fn compile(
        port: Option<u16>,
        subnets: &[String],
        source_labels: &BTreeMap<String, String>,
        source_namespace: &Option<String>,
        sni_hosts: &[String],
    ) -> L4Match {
        L4Match {
            port,
            // Validation checked every subnet.
            subnets: subnets.iter().filter_map(|s| IpBlock::parse(s)).collect(),
            source_labels: source_labels.clone(),
            source_namespace: source_namespace.clone(),
            sni_hosts: sni_hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
        }
    }
}

/// The `tcp` or `tls` (`kind`) routes of the VirtualService `ns/name`, each split by `parts`
/// into its compiled matches and its destinations (`None`: the route is not for the mesh).
fn compile_routes<R>(
    ns: &str,
    name: &str,
    kind: &str,
    routes: &[R],
    parts: impl Fn(&R) -> Option<(Vec<L4Match>, &Vec<model::RouteDestination>)>,
) -> Arc<[TcpRoute]> {
    routes
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let (matches, route) = parts(r)?;
            let only = route.len() == 1;
            Some(TcpRoute {
                origin: format!("{ns}/{name}#{kind}{i}"),
                matches,
                destinations: route
                    .iter()
                    .map(|d| Destination::of(&d.destination, d.weight, only, ns))
                    .collect(),
            })
        })
        .collect()
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

    /// Two VirtualServices with `tcp` routes for one host: the oldest applies, as for HTTP
    /// routes, whatever order they load in.
    #[test]
    fn the_oldest_virtual_service_for_a_host_takes_its_connections() {
        let vs = |name: &str, created: &str| {
            format!(
                "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: default, creationTimestamp: \"{created}\"}}\nspec:\n  hosts: [tcp-echo]\n  tcp:\n  - route: [{{destination: {{host: tcp-echo}}}}]\n"
            )
        };
        let origin = |yaml: String| {
            let routes = TcpRoutes::compile(&load_str("t.yaml".as_ref(), &yaml).expect("valid"));
            let none = BTreeMap::new();
            let client = Client {
                labels: &none,
                namespace: Some("default"),
            };
            let host = "tcp-echo.default.svc.cluster.local";
            let dst = "10.96.0.5:9000".parse().unwrap();
            routes.decide(host, dst, &client).map(|r| r.origin.clone())
        };
        let (jan, feb) = ("2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z");
        let yaml = format!("{}{}", vs("a", feb), vs("b", jan));
        assert_eq!(origin(yaml).as_deref(), Some("default/b#0"));
        let yaml = format!("{}{}", vs("b", jan), vs("a", jan));
        assert_eq!(
            origin(yaml).as_deref(),
            Some("default/a#0"),
            "same age: by name"
        );
    }

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

    const TLS: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge, namespace: default}
spec:
  hosts: ["*.example.com"]
  tls:
  - match:
    - sniHosts: [api.example.com]
      port: 443
    route:
    - destination: {host: api-v2.default.svc.cluster.local}
  - match:
    - sniHosts: ["*.example.com"]
    route:
    - destination: {host: wild.default.svc.cluster.local}
"#;

    #[test]
    fn tls_routes_match_the_server_name() {
        let routes = TcpRoutes::compile(&load_str("t.yaml".as_ref(), TLS).expect("valid"));
        assert!(routes.has_tls());
        let none = BTreeMap::new();
        let c = Client {
            labels: &none,
            namespace: Some("default"),
        };
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        let to = |sni: &str, dst: &str| {
            routes
                .decide_tls(None, sni, at(dst), &c)
                .map(|r| r.destinations[0].host.clone())
        };
        assert_eq!(
            to("api.example.com", "10.0.0.1:443").as_deref(),
            Some("api-v2.default.svc.cluster.local")
        );
        assert_eq!(
            to("api.example.com", "10.0.0.1:8443").as_deref(),
            Some("wild.default.svc.cluster.local"),
            "the first route's port does not match"
        );
        assert_eq!(
            to("www.example.com", "10.0.0.1:443").as_deref(),
            Some("wild.default.svc.cluster.local")
        );
        assert_eq!(to("example.org", "10.0.0.1:443"), None);
        assert!(
            routes
                .decide("api.example.com", at("10.0.0.1:443"), &c)
                .is_none(),
            "no tcp routes"
        );
    }

    #[test]
    fn routes_bound_to_gateways_only_are_not_for_the_mesh() {
        let yaml = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ingress, namespace: default}
spec:
  hosts: [tcp-echo, "*.example.com"]
  gateways: [istio-system/edge]
  tcp:
  - route:
    - destination: {host: ingress-only}
  tls:
  - match:
    - sniHosts: [api.example.com]
    route:
    - destination: {host: ingress-only}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tcp-echo, namespace: default}
spec:
  hosts: [tcp-echo]
  gateways: [istio-system/edge, mesh]
  tcp:
  - match:
    - gateways: [istio-system/edge]
    route:
    - destination: {host: edge-only}
  - match:
    - gateways: [istio-system/edge]
    - port: 9000
      gateways: [mesh]
    route:
    - destination: {host: v9000}
  - route:
    - destination: {host: tcp-echo}
"#;
        let routes = TcpRoutes::compile(&load_str("t.yaml".as_ref(), yaml).expect("valid"));
        assert!(!routes.has_tls(), "the tls routes are the gateway's");
        let none = BTreeMap::new();
        let c = Client {
            labels: &none,
            namespace: Some("default"),
        };
        let to = |dst: &str| {
            let dst = dst.parse::<SocketAddr>().unwrap();
            routes
                .decide("tcp-echo.default.svc.cluster.local", dst, &c)
                .map(|r| (r.origin.clone(), r.destinations[0].host.clone()))
        };
        let (origin, host) = to("10.0.0.1:9000").expect("a mesh route");
        assert_eq!(origin, "default/tcp-echo#1", "indexes keep the YAML's");
        assert_eq!(host, "v9000.default.svc.cluster.local");
        let (_, host) = to("10.0.0.1:9001").expect("the default route");
        assert_eq!(host, "tcp-echo.default.svc.cluster.local");
    }
}
