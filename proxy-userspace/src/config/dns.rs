//! Endpoints named by DNS: the names in the endpoints of ServiceEntries with `resolution: DNS`
//! or `DNS_ROUND_ROBIN` (their own, or the WorkloadEntries they select), resolved when the
//! configuration is built. The watcher rebuilds every `REFRESH` while any are in use, and the
//! addresses are part of the configuration's hash, so a change of address applies like an edit.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, ToSocketAddrs},
    sync::mpsc,
    time::Duration,
};

use crate::policy::PolicySet;

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
    out
}

/// Resolves every name with the system resolver, each within `TIMEOUT`; a name that fails is
/// logged and kept with no addresses.
pub fn resolve(names: &BTreeSet<String>) -> Resolved {
    names
        .iter()
        .map(|name| {
            let addrs = lookup(name);
            if addrs.is_empty() {
                tracing::warn!(name, "endpoint name does not resolve; it has no addresses");
            }
            (name.clone(), addrs)
        })
        .collect()
}

fn lookup(name: &str) -> Vec<IpAddr> {
    let (tx, rx) = mpsc::channel();
    let owned = name.to_string();
    // getaddrinfo cannot be given a deadline: it runs on a thread of its own, which is left
    // to finish on its own if it takes too long.
    std::thread::spawn(move || {
        let addrs: Vec<IpAddr> = (owned.as_str(), 0)
            .to_socket_addrs()
            .map(|a| a.map(|s| s.ip()).collect())
            .unwrap_or_default();
        let _ = tx.send(addrs);
    });
    let mut addrs = rx.recv_timeout(TIMEOUT).unwrap_or_default();
    // IPv4 when the name has any, as Istio's default lookup family (V4_PREFERRED).
    if addrs.iter().any(IpAddr::is_ipv4) {
        addrs.retain(IpAddr::is_ipv4);
    }
    // Stable order, one entry per address: the hash sees a change only when the set changes.
    addrs.sort();
    addrs.dedup();
    addrs
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

    #[test]
    fn localhost_resolves_from_the_hosts_file() {
        let r = resolve(&["localhost".to_string()].into());
        assert_eq!(
            r["localhost"],
            [IpAddr::from([127, 0, 0, 1])],
            "IPv4 preferred"
        );
        assert!(hash_text(&r).starts_with(b"localhost "));
    }
}
