//! What goes into the kernel's policy maps: STRICT ports with portLevelMtls exceptions, and
//! only the DENY pairs that identity and port decide.

use std::net::SocketAddr;

use proxy_common::{PEER_AUTH_OPEN, PEER_AUTH_STRICT, PeerAuthKey};

use super::{NodeView, deny_entries, peer_auth_entries};
use crate::{config::Snapshot, ebpf::socket_addr_of, policy::load_str};

const WORKLOADS: &str = r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: client, namespace: default}
spec: {address: 10.0.0.1, serviceAccount: client, labels: {app: client}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: intruder, namespace: other}
spec: {address: 10.0.0.1, serviceAccount: intruder, labels: {app: intruder}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: db, namespace: default}
spec:
  address: 10.0.0.1
  serviceAccount: db
  ports: {tcp: 5432, metrics: 9100}
  labels: {app: db}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: remote, namespace: default}
spec:
  address: 10.0.0.2
  ports: {tcp: 5432}
  labels: {app: db, meshd.io/node: "10.0.0.2"}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: default}
spec:
  hosts: [db.default.svc.cluster.local]
  addresses: ["10.96.0.10"]
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  resolution: STATIC
  workloadSelector: {labels: {app: db}}
---
"#;

fn snapshot(extra: &str) -> Snapshot {
    let set = load_str("t.yaml".as_ref(), &format!("{WORKLOADS}{extra}"))
        .unwrap_or_else(|e| panic!("invalid test policies: {e:?}"));
    Snapshot::of(set)
}

fn node() -> NodeView {
    NodeView {
        trust_domain: "cluster.local".into(),
        node: Some("10.0.0.1".parse().unwrap()),
        inbound_port: 15008,
    }
}

fn pa(id: u32, port: u32, v: u32) -> (PeerAuthKey, u32) {
    (
        PeerAuthKey {
            workload_id: id,
            port,
        },
        v,
    )
}

#[test]
fn strict_namespace_with_a_port_exception() {
    let snap = snapshot(
        r#"apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: db, namespace: default}
spec:
  selector: {matchLabels: {app: db}}
  portLevelMtls: {9100: {mode: PERMISSIVE}, 5432: {mode: STRICT}}
"#,
    );
    assert_eq!(
        peer_auth_entries(&snap, 3, "default/db"),
        [pa(3, 0, PEER_AUTH_STRICT), pa(3, 9100, PEER_AUTH_OPEN)]
    );
    assert_eq!(
        peer_auth_entries(&snap, 1, "default/client"),
        [pa(1, 0, PEER_AUTH_STRICT)]
    );
    assert_eq!(peer_auth_entries(&snap, 2, "other/intruder"), []);
}

#[test]
fn a_strict_port_in_a_permissive_workload() {
    let snap = snapshot(
        r#"apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: mesh, namespace: istio-system}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: db, namespace: default}
spec:
  selector: {matchLabels: {app: db}}
  portLevelMtls: {5432: {mode: STRICT}}
"#,
    );
    assert_eq!(
        peer_auth_entries(&snap, 3, "default/db"),
        [pa(3, 5432, PEER_AUTH_STRICT)]
    );
    // DISABLE is not STRICT: nothing to refuse in the kernel.
    let snap = snapshot(
        r#"apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: mesh, namespace: istio-system}
spec: {mtls: {mode: DISABLE}}
"#,
    );
    assert_eq!(peer_auth_entries(&snap, 3, "default/db"), []);
}

/// The denied destinations, IPv4 ones once (the v4-mapped IPv6 twin is checked here).
fn denied(snap: &Snapshot, id: u32, workload: &str) -> Vec<SocketAddr> {
    let keys = deny_entries(snap, &node(), id, workload);
    let (v6, v4): (Vec<&proxy_common::DenyKey>, Vec<_>) = keys
        .iter()
        .inspect(|k| assert_eq!(k.workload_id, id))
        .partition(|k| k.dst.family == proxy_common::AF_INET6);
    assert_eq!(v6.len(), v4.len(), "a v4-mapped entry for each IPv4 one");
    let mut v: Vec<SocketAddr> = v4.iter().map(|k| socket_addr_of(&k.dst).unwrap()).collect();
    v.sort();
    v
}

#[test]
fn identity_only_deny_reaches_the_kernel_for_local_endpoints_and_their_vip() {
    let snap = snapshot(
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-other, namespace: default}
spec:
  selector: {matchLabels: {app: db}}
  action: DENY
  rules:
  - from: [{source: {namespaces: [other]}}]
    to: [{operation: {ports: ["5432"]}}]
"#,
    );
    let addrs: Vec<SocketAddr> = vec!["10.0.0.1:5432".parse().unwrap()];
    // The VIP also leads to the endpoint on node 10.0.0.2, which decides for itself: only the
    // local address is refused at connect.
    assert_eq!(denied(&snap, 2, "other/intruder"), addrs);
    assert_eq!(denied(&snap, 1, "default/client"), []);
}

#[test]
fn a_vip_whose_every_endpoint_refuses_is_refused_too() {
    let local_only = WORKLOADS.replace("meshd.io/node: \"10.0.0.2\"", "app2: x");
    let set = load_str(
        "t.yaml".as_ref(),
        &format!(
            "{local_only}{}",
            r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-other, namespace: default}
spec:
  selector: {matchLabels: {app: db}}
  action: DENY
  rules:
  - from: [{source: {notPrincipals: ["cluster.local/ns/default/sa/client"]}}]
"#
        ),
    )
    .unwrap();
    let snap = Snapshot::of(set);
    let got = denied(&snap, 2, "other/intruder");
    for want in [
        "10.0.0.1:5432",
        "10.0.0.1:9100",
        "10.0.0.2:5432",
        "10.96.0.10:5432",
    ] {
        assert!(got.contains(&want.parse().unwrap()), "{want} in {got:?}");
    }
    assert_eq!(denied(&snap, 1, "default/client"), []);
}

#[test]
fn rules_that_need_more_than_identity_stay_in_userspace() {
    let snap = snapshot(
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-other-get, namespace: default}
spec:
  selector: {matchLabels: {app: db}}
  action: DENY
  rules:
  - from: [{source: {namespaces: [other], ipBlocks: ["10.0.0.0/8"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-get, namespace: default}
spec:
  selector: {matchLabels: {app: db}}
  action: ALLOW
  rules:
  - to: [{operation: {methods: [GET]}}]
"#,
    );
    assert_eq!(denied(&snap, 2, "other/intruder"), []);
}

#[test]
fn an_allow_policy_that_identity_decides_denies_the_rest() {
    let snap = snapshot(
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-client, namespace: default}
spec:
  selector: {matchLabels: {app: db}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/client"]}}]
"#,
    );
    assert_eq!(
        denied(&snap, 2, "other/intruder"),
        [
            "10.0.0.1:5432".parse::<SocketAddr>().unwrap(),
            "10.0.0.1:9100".parse().unwrap()
        ]
    );
    assert_eq!(denied(&snap, 1, "default/client"), []);
}
