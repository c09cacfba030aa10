//! Endpoints named by DNS: the names in the endpoints of ServiceEntries with `resolution: DNS`
//! or `DNS_ROUND_ROBIN` (their own, or the WorkloadEntries they select), and the hosts of such
//! ServiceEntries without endpoints that have a VIP or that a route sends other hosts' requests
//! to, resolved when the configuration is built. The watcher rebuilds every `REFRESH` while any
//! are in use, and the addresses are part of the configuration's hash, so a change of address
//! applies like an edit.
//! A name the resolver says is gone loses its addresses; one without an answer keeps its last.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, ToSocketAddrs},
    sync::mpsc,
    time::Duration,
};

use crate::policy::{PolicySet, hosts::fqdn, model};

/// Name → its addresses (empty: the name did not resolve).
pub type Resolved = BTreeMap<String, Vec<IpAddr>>;

/// How often names in use are resolved again.
pub const REFRESH: Duration = Duration::from_secs(30);

/// How long one name may take to resolve before it counts as unresolved.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Whether a ServiceEntry resolves its endpoints' names.
pub fn resolves(resolution: Option<&str>) -> bool {
    matches!(resolution, Some("DNS" | "DNS_ROUND_ROBIN"))
}

/// The endpoint names `set` asks to resolve.
pub fn names(set: &PolicySet) -> BTreeSet<String> {
    let is_name =
        |a: &str| !a.is_empty() && a.parse::<IpAddr>().is_err() && !a.starts_with("unix:");
    let mut out = BTreeSet::new();
    for se in set
        .service_entries
        .iter()
        .filter(|se| resolves(se.spec.resolution.as_deref()))
    {
        out.extend(
            se.spec
                .endpoints
                .iter()
                .map(|e| e.address.as_str())
                .filter(|a| is_name(a))
                .map(str::to_string),
        );
        out.extend(
            super::compile::selected_workloads(set, se)
                .map(|w| w.spec.address.as_str())
                .filter(|a| is_name(a))
                .map(str::to_string),
        );
    }
    out.extend(routed_hosts(set));
    out
}

/// Whether `se` is a DNS ServiceEntry with no endpoints of its own: Istio resolves its hosts.
pub fn resolves_own_hosts(se: &model::ServiceEntry) -> bool {
    resolves(se.spec.resolution.as_deref())
        && se.spec.endpoints.is_empty()
        && se.spec.workload_selector.is_none()
}

/// The hosts of DNS ServiceEntries without endpoints that are not reached at the address
/// their clients dialled: those with a VIP in `addresses` (the VIP only picks the service), and
/// those some VirtualService routes (or mirrors) requests for another host to. A request for
/// such a host itself, at no VIP, goes where its client dialled (the client resolved the name),
/// so a route from a host to itself, the usual egress VirtualService, resolves nothing.
fn routed_hosts(set: &PolicySet) -> BTreeSet<String> {
    let hosts = |se: &model::ServiceEntry| -> Vec<String> {
        (se.spec.hosts.iter())
            .map(|h| fqdn(h, &se.metadata.namespace))
            .filter(|h| !h.ends_with(".svc.cluster.local"))
            .collect()
    };
    let entries = || (set.service_entries.iter()).filter(|se| resolves_own_hosts(se));
    let behind_vips = entries()
        .filter(|se| !se.spec.addresses.is_empty())
        .flat_map(|se| hosts(se));
    let resolvable: BTreeSet<String> = entries().flat_map(|se| hosts(se)).collect();
    let mut out: BTreeSet<String> = behind_vips.collect();
    for vs in set
        .virtual_services
        .iter()
        .filter(|v| v.spec.applies_to_mesh())
    {
        let ns = &vs.metadata.namespace;
        let own: BTreeSet<String> = vs.spec.hosts.iter().map(|h| fqdn(h, ns)).collect();
        for (_, d) in vs.spec.destinations() {
            let host = fqdn(&d.host, ns);
            let only_itself = own.len() == 1 && own.contains(&host);
            if !only_itself && resolvable.contains(&host) {
                out.insert(host);
            }
        }
    }
    out
}

/// Why a name has no addresses now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// The resolver answered that the name has no addresses (NXDOMAIN, or no A/AAAA record):
    /// the name's addresses are gone, as Envoy's DNS cluster empties on such an answer.
    NotFound,
    /// No answer (a timeout, a resolver that failed): the last addresses are kept.
    NoAnswer,
}

/// Resolves every name with the system resolver, each within `TIMEOUT`. A name the resolver
/// says does not exist (or has no address) has no addresses; one that gets no answer keeps
/// the addresses it had in `last`, as Envoy's DNS cluster keeps its hosts when a resolution
/// fails. Either is logged.
pub fn resolve(names: &BTreeSet<String>, last: &Resolved) -> Resolved {
    resolve_with(names, last, lookup)
}

fn resolve_with(
    names: &BTreeSet<String>,
    last: &Resolved,
    lookup: impl Fn(&str) -> Result<Vec<IpAddr>, Failure>,
) -> Resolved {
    names
        .iter()
        .map(|name| {
            let kept = last.get(name).filter(|k| !k.is_empty());
            match (lookup(name), kept) {
                (Ok(addrs), _) if !addrs.is_empty() => (name.clone(), addrs),
                (Err(Failure::NoAnswer), Some(kept)) => {
                    tracing::warn!(
                        name,
                        "endpoint name got no answer from the resolver; it keeps its last addresses"
                    );
                    (name.clone(), kept.clone())
                }
                (found, _) => {
                    let why = match found {
                        Err(Failure::NoAnswer) => "got no answer from the resolver",
                        _ => "does not resolve",
                    };
                    tracing::warn!(name, "endpoint name {why}; it has no addresses");
                    (name.clone(), Vec::new())
                }
            }
        })
        .collect()
}

/// glibc's texts for EAI_NONAME and EAI_NODATA, which std's lookup error carries: the
/// resolver's answer that the name has no address.
const NOT_FOUND: [&str; 2] = [
    "Name or service not known",
    "No address associated with hostname",
];

/// What a lookup's error says.
fn failure(e: &std::io::Error) -> Failure {
    let text = e.to_string();
    match NOT_FOUND.iter().any(|n| text.contains(n)) {
        true => Failure::NotFound,
        false => Failure::NoAnswer,
    }
}

fn lookup(name: &str) -> Result<Vec<IpAddr>, Failure> {
    let (tx, rx) = mpsc::channel();
    let owned = name.to_string();
    // getaddrinfo cannot be given a deadline: it runs on a thread of its own, which is left
    // to finish on its own if it takes too long.
    std::thread::spawn(move || {
        let found = (owned.as_str(), 0)
            .to_socket_addrs()
            .map(|a| a.map(|s| s.ip()).collect::<Vec<IpAddr>>())
            .map_err(|e| failure(&e));
        let _ = tx.send(found);
    });
    let mut addrs = rx.recv_timeout(TIMEOUT).map_err(|_| Failure::NoAnswer)??;
    // IPv4 when the name has any, as Istio's default lookup family (V4_PREFERRED).
    if addrs.iter().any(IpAddr::is_ipv4) {
        addrs.retain(IpAddr::is_ipv4);
    }
    // Stable order, one entry per address: the hash sees a change only when the set changes.
    addrs.sort();
    addrs.dedup();
    Ok(addrs)
}

/// The text the configuration hash covers for `resolved`.
pub fn hash_text(resolved: &Resolved) -> Vec<u8> {
    let mut text = String::new();
    for (name, addrs) in resolved {
        text.push_str(name);
        for a in addrs {
            text.push(' ');
            text.push_str(&a.to_string());
        }
        text.push('\n');
    }
    text.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::load_str;

    const SET: &str = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: default}
spec:
  hosts: [ext.example]
  ports: [{number: 80, name: http}]
  resolution: DNS
  endpoints: [{address: localhost}, {address: 127.0.0.9}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vm, namespace: default}
spec:
  hosts: [vm.example]
  ports: [{number: 80, name: http}]
  resolution: DNS_ROUND_ROBIN
  workloadSelector: {labels: {app: vm}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm1, namespace: default}
spec: {address: ip6-localhost, labels: {app: vm}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: static, namespace: default}
spec:
  hosts: [static.example]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.8}]
"#;

    #[test]
    fn a_name_without_an_answer_keeps_its_last_addresses() {
        let names: BTreeSet<String> = ["gone.example".into(), "new.example".into()].into();
        let last: Resolved = [("gone.example".into(), vec!["127.0.0.7".parse().unwrap()])].into();
        let got = resolve_with(&names, &last, |_| Err(Failure::NoAnswer));
        assert_eq!(got["gone.example"], last["gone.example"]);
        assert!(
            got["new.example"].is_empty(),
            "never resolved: no addresses"
        );
        let moved = |_: &str| Ok(vec!["127.0.0.8".parse().unwrap()]);
        let got = resolve_with(&names, &last, moved);
        assert_eq!(
            got["gone.example"],
            moved("").unwrap(),
            "a new answer replaces the last"
        );
    }

    #[test]
    fn a_name_the_resolver_says_is_gone_loses_its_addresses() {
        let names: BTreeSet<String> = ["gone.example".into(), "empty.example".into()].into();
        let last: Resolved = [
            ("gone.example".into(), vec!["127.0.0.7".parse().unwrap()]),
            ("empty.example".into(), vec!["127.0.0.6".parse().unwrap()]),
        ]
        .into();
        let got = resolve_with(&names, &last, |n| match n {
            "gone.example" => Err(Failure::NotFound),
            _ => Ok(Vec::new()),
        });
        assert!(got["gone.example"].is_empty(), "NXDOMAIN: {got:?}");
        assert!(got["empty.example"].is_empty(), "no records: {got:?}");
    }

    #[test]
    fn the_resolvers_not_found_is_told_from_no_answer() {
        // The texts std's lookup error carries from glibc (tests resolve no real name: that
        // would leave loopback).
        let err = |detail: &str| {
            std::io::Error::other(format!("failed to lookup address information: {detail}"))
        };
        assert_eq!(
            failure(&err("Name or service not known")),
            Failure::NotFound
        );
        assert_eq!(
            failure(&err("No address associated with hostname")),
            Failure::NotFound
        );
        assert_eq!(
            failure(&err("Temporary failure in name resolution")),
            Failure::NoAnswer
        );
    }

    #[test]
    fn hosts_of_dns_entries_behind_a_vip_are_resolved() {
        let set = load_str(
            "t.yaml".as_ref(),
            r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: default}
spec:
  hosts: [db.example, db.default.svc.cluster.local]
  addresses: [10.9.0.1]
  ports: [{number: 5432, name: tcp}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.example]
  ports: [{number: 80, name: http}]
  resolution: DNS
"#,
        )
        .expect("valid");
        let n: Vec<String> = names(&set).into_iter().collect();
        assert_eq!(
            n,
            ["db.example"],
            "not the wildcard, nor a host reached where dialled"
        );
    }

    #[test]
    fn names_come_from_dns_entries_and_the_workloads_they_select() {
        let set = load_str("t.yaml".as_ref(), SET).expect("valid");
        let n: Vec<String> = names(&set).into_iter().collect();
        assert_eq!(n, ["ip6-localhost", "localhost"]);
    }

    #[test]
    fn every_address_is_an_endpoint_with_dns_and_the_first_with_round_robin() {
        let set = load_str("t.yaml".as_ref(), SET).expect("valid");
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let resolved: Resolved = [
            (
                "localhost".to_string(),
                vec![ip("127.0.0.1"), ip("127.0.0.2")],
            ),
            ("ip6-localhost".to_string(), vec![ip("::1"), ip("::2")]),
        ]
        .into();
        let c = super::super::compile_resolved(&set, resolved);
        let ips = |host: &str| -> Vec<Option<IpAddr>> {
            c.clusters[host].endpoints.iter().map(|e| e.ip).collect()
        };
        assert_eq!(
            ips("ext.example"),
            [
                Some(ip("127.0.0.1")),
                Some(ip("127.0.0.2")),
                Some(ip("127.0.0.9"))
            ]
        );
        assert_eq!(ips("vm.example"), [Some(ip("::1"))]);
        let unresolved = super::super::compile(&set);
        assert_eq!(
            unresolved.clusters["ext.example"].endpoints[0].ip, None,
            "a name with no addresses stays, and routing skips it"
        );
    }

    const ROUTED: &str = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: partner, namespace: default}
spec:
  hosts: [api.partner.example, backup.partner.example]
  ports: [{number: 80, name: http, targetPort: 8080}]
  resolution: DNS_ROUND_ROBIN
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: egress, namespace: default}
spec:
  hosts: [egress.example]
  ports: [{number: 80, name: http}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: front, namespace: default}
spec:
  hosts: [front.example]
  http:
  - route: [{destination: {host: api.partner.example}}]
    mirror: {host: backup.partner.example}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: egress, namespace: default}
spec:
  hosts: [egress.example]
  http:
  - timeout: 3s
    route: [{destination: {host: egress.example}}]
"#;

    #[test]
    fn hosts_without_endpoints_resolve_only_where_other_hosts_route_to_them() {
        let set = load_str("t.yaml".as_ref(), ROUTED).expect("valid");
        let n: Vec<String> = names(&set).into_iter().collect();
        // egress.example routes only to itself: its clients resolve it.
        assert_eq!(n, ["api.partner.example", "backup.partner.example"]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let resolved: Resolved = [(
            "api.partner.example".to_string(),
            vec![ip("127.0.0.61"), ip("127.0.0.62")],
        )]
        .into();
        let c = super::super::compile_resolved(&set, resolved);
        let api = &c.clusters["api.partner.example"];
        let ports: Vec<u16> = api.host_addresses.keys().copied().collect();
        assert!(!ports.is_empty());
        for port in ports {
            assert_eq!(
                api.host_addresses[&port],
                [ip("127.0.0.61")],
                "DNS_ROUND_ROBIN: the first"
            );
        }
        assert!(api.endpoints.is_empty());
        assert!(
            c.clusters["backup.partner.example"]
                .host_addresses
                .is_empty()
        );
        assert!(c.clusters["egress.example"].host_addresses.is_empty());
    }

    /// Two DNS entries of one host keep their resolution to their own ports: the port of the
    /// DNS_ROUND_ROBIN entry gets the first address, the DNS entry's port every one (the last
    /// entry's resolution took every port).
    #[test]
    fn two_dns_entries_of_one_host_keep_their_resolution_to_their_ports() {
        let entry = |name: &str, vip: &str, port: u16, resolution: &str| {
            format!(
                "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  hosts: [svc.partner.example]\n  addresses: [{vip}]\n  ports: [{{number: {port}, name: http-{port}, protocol: HTTP}}]\n  resolution: {resolution}\n"
            )
        };
        let yaml =
            entry("a", "240.0.0.1", 80, "DNS") + &entry("b", "240.0.0.2", 8080, "DNS_ROUND_ROBIN");
        let set = load_str("t.yaml".as_ref(), &yaml).expect("valid");
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let both = vec![ip("127.0.0.61"), ip("127.0.0.62")];
        let resolved: Resolved = [("svc.partner.example".to_string(), both.clone())].into();
        let c = super::super::compile_resolved(&set, resolved);
        let svc = &c.clusters["svc.partner.example"];
        assert_eq!(svc.host_addresses[&80], both);
        assert_eq!(svc.host_addresses[&8080], [ip("127.0.0.61")]);
    }

    #[test]
    fn localhost_resolves_from_the_hosts_file() {
        let r = resolve(&["localhost".to_string()].into(), &Resolved::new());
        assert_eq!(
            r["localhost"],
            [IpAddr::from([127, 0, 0, 1])],
            "IPv4 preferred"
        );
        assert!(hash_text(&r).starts_with(b"localhost "));
    }
}
