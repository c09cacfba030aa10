//! Discovery against the stand-in API server (tests/support/kube_api.rs), with pod cgroups and
//! /proc in fixture trees and a real configuration store.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde_json::{Value, json};

use super::{
    Options, RecordingSink, SinkEvent,
    cgroup::{Qos, fixture::*, systemd_path},
    kube_api::KubeApi,
    pods::HostPaths,
    testdata as t,
};
use crate::{config::ConfigStore, metrics::Metrics};

const NODE: &str = "node-a";

/// Waits up to 15 s for `cond`.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !cond() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Rig {
    api: KubeApi,
    sink: Arc<RecordingSink>,
    store: Arc<ConfigStore>,
    dir: TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Rig {
    /// Discovery of node-a against a fresh stand-in; `policies` is the policy files' text.
    async fn start(tag: &str, policies: &str, istio: bool) -> Rig {
        let dir = TempDir::new(tag);
        v2_dir(&dir.0.join("cgroup"), &[1]);
        std::fs::create_dir_all(dir.0.join("proc")).unwrap();
        let config = dir.0.join("policies");
        std::fs::create_dir_all(&config).unwrap();
        std::fs::write(config.join("files.yaml"), policies).unwrap();
        let store =
            ConfigStore::initial(vec![config], Default::default(), Metrics::new(false, None))
                .unwrap();
        let api = KubeApi::start();
        if istio {
            api.install_istio();
        }
        let sink = RecordingSink::new();
        let options = Options {
            debounce: Duration::from_millis(50),
            resync: Duration::from_millis(100),
            istio_retry: Duration::from_millis(200),
            ..Options::new(
                NODE.into(),
                Some(api.url()),
                HostPaths {
                    cgroup_root: dir.0.join("cgroup"),
                    host_proc: dir.0.join("proc"),
                },
            )
        };
        let client = super::client(Some(&api.url())).await.unwrap();
        let task = super::spawn(client, options, store.clone(), sink.clone());
        Rig {
            api,
            sink,
            store,
            dir,
            task,
        }
    }

    fn cgroup_root(&self) -> PathBuf {
        self.dir.0.join("cgroup")
    }

    /// Lays out a pod's cgroup (systemd driver) with one process, and that process's netns.
    fn pod_cgroup(&self, uid: &str, qos: Qos, pid: u32) -> (PathBuf, PathBuf) {
        let pod = self.cgroup_root().join(systemd_path(uid, qos));
        let mut dir = self.cgroup_root();
        for c in systemd_path(uid, qos).components() {
            dir.push(c);
            v2_dir(&dir, &[]);
        }
        v2_dir(&pod.join(format!("cri-containerd-{pid}.scope")), &[pid]);
        let netns = proc_netns(&self.dir.0.join("proc"), pid, 4026530000 + pid as u64);
        (pod, netns)
    }

    fn pods(&self) -> Vec<String> {
        self.sink.pods().keys().cloned().collect()
    }

    fn names(&self, kind: &str) -> Vec<String> {
        let s = self.store.current();
        let p = &s.policies;
        let mut v: Vec<String> = match kind {
            "VirtualService" => p.virtual_services.iter().map(|r| r.id()).collect(),
            "ServiceEntry" => p.service_entries.iter().map(|r| r.id()).collect(),
            "WorkloadEntry" => p.workload_entries.iter().map(|r| r.id()).collect(),
            "AuthorizationPolicy" => p.authorization_policies.iter().map(|r| r.id()).collect(),
            _ => unreachable!(),
        };
        v.sort();
        v
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn cluster(api: &KubeApi) {
    api.apply(t::namespace("shop", true));
    api.apply(t::namespace("legacy", false));
    api.apply(t::node("node-a", "192.168.50.1"));
    api.apply(t::node("node-b", "192.168.50.2"));
}

const UID1: &str = "0a0a0a0a-1111-4111-8111-000000000001";
const UID2: &str = "0a0a0a0a-2222-4222-8222-000000000002";
const UID3: &str = "0a0a0a0a-3333-4333-8333-000000000003";

#[tokio::test]
async fn pods_of_this_node_in_enabled_namespaces_reach_the_sink() {
    let rig = Rig::start("pods", "", false).await;
    cluster(&rig.api);
    let (cg1, ns1) = rig.pod_cgroup(UID1, Qos::Burstable, 1001);
    rig.pod_cgroup(UID3, Qos::BestEffort, 1003);
    let reviews = t::pod("shop", "reviews-1", UID1, NODE, "10.1.0.5", "Burstable");
    rig.api.apply(reviews.clone());
    // On another node; in a namespace without the label; without a cgroup yet.
    rig.api.apply(t::pod(
        "shop",
        "reviews-2",
        UID2,
        "node-b",
        "10.1.1.7",
        "Burstable",
    ));
    rig.api.apply(t::pod(
        "legacy",
        "db-1",
        UID3,
        NODE,
        "10.1.0.9",
        "BestEffort",
    ));
    let ghost = t::pod(
        "shop",
        "ghost-1",
        "0a0a0a0a-4444-4444-8444-000000000004",
        NODE,
        "10.1.0.6",
        "Guaranteed",
    );
    rig.api.apply(ghost.clone());

    eventually("reviews-1", || rig.pods() == ["shop/reviews-1"]).await;
    let p = &rig.sink.pods()["shop/reviews-1"];
    assert_eq!(p.cgroup, cg1);
    assert_eq!(p.netns, ns1);
    assert_eq!(p.uid, UID1);
    assert_eq!(p.service_account, "sa-reviews");
    assert_eq!(p.ip, Some("10.1.0.5".parse().unwrap()));
    assert_eq!(p.labels["app"], "reviews");

    // The ghost's cgroup appears later: the resync picks it up.
    rig.pod_cgroup(
        "0a0a0a0a-4444-4444-8444-000000000004",
        Qos::Guaranteed,
        1004,
    );
    eventually("ghost-1 after its cgroup appeared", || {
        rig.pods() == ["shop/ghost-1", "shop/reviews-1"]
    })
    .await;

    // A label change is sent again; a deleted pod is removed.
    let mut relabelled = reviews.clone();
    relabelled["metadata"]["labels"]["version"] = json!("v2");
    rig.api.apply(relabelled);
    eventually("relabelled", || {
        rig.sink.pods()["shop/reviews-1"].labels["version"] == "v2"
    })
    .await;
    rig.api.delete(&reviews);
    eventually("reviews-1 removed", || rig.pods() == ["shop/ghost-1"]).await;
    assert!(rig.sink.events().contains(&SinkEvent::Remove {
        namespace: "shop".into(),
        name: "reviews-1".into()
    }));

    // The namespace loses its label: its pods leave; the legacy namespace gains it: db-1 joins.
    rig.api.apply(t::namespace("shop", false));
    rig.api.apply(t::namespace("legacy", true));
    eventually("namespace labels applied", || rig.pods() == ["legacy/db-1"]).await;
    // Every upsert was of a pod on this node.
    for e in rig.sink.events() {
        if let SinkEvent::Upsert(p) = e {
            assert_ne!(p.name, "reviews-2");
        }
    }
    // The pod watch used the node's field selector.
    assert!(
        rig.api
            .requests()
            .iter()
            .any(|r| r.contains("/api/v1/pods?") && r.contains("spec.nodeName%3Dnode-a")),
        "{:?}",
        rig.api.requests()
    );
}

fn reviews_service(api: &KubeApi) {
    api.apply(t::service(
        "shop",
        "reviews",
        "10.96.0.20",
        json!([{ "name": "http-web", "port": 9080, "protocol": "TCP", "targetPort": 8080 }]),
    ));
    api.apply(t::pod(
        "shop",
        "reviews-1",
        UID1,
        NODE,
        "10.1.0.5",
        "Burstable",
    ));
    api.apply(t::pod(
        "shop",
        "reviews-2",
        UID2,
        "node-b",
        "10.1.1.7",
        "Burstable",
    ));
    api.apply(t::slice(
        "shop",
        "reviews",
        json!([{ "name": "http-web", "port": 8080, "protocol": "TCP" }]),
        &[
            ("10.1.0.5", "reviews-1", NODE, true),
            ("10.1.1.7", "reviews-2", "node-b", true),
        ],
    ));
}

const FILE_VS: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  http:
  - route:
    - destination: {host: reviews.shop.svc.cluster.local}
";

fn vs(name: &str, spec: Value) -> Value {
    t::virtual_service("shop", name, spec)
}

#[tokio::test]
async fn services_and_istio_objects_reach_the_config_store() {
    let rig = Rig::start("services", FILE_VS, true).await;
    cluster(&rig.api);
    reviews_service(&rig.api);
    eventually("the reviews ServiceEntry", || {
        rig.names("ServiceEntry") == ["shop/reviews"]
    })
    .await;
    let snap = rig.store.current();
    let se = &snap.policies.service_entries[0];
    assert_eq!(se.spec.addresses, ["10.96.0.20"]);
    assert_eq!(se.spec.ports[0].protocol.as_deref(), Some("HTTP"));
    let eps: Vec<(&str, Option<&String>)> = se
        .spec
        .endpoints
        .iter()
        .map(|e| (e.address.as_str(), e.labels.get("meshd.io/node")))
        .collect();
    assert_eq!(
        eps,
        [
            ("10.1.0.5", None),
            ("10.1.1.7", Some(&"192.168.50.2".to_string()))
        ]
    );
    assert_eq!(se.origin.file, Path::new("k8s://Service/shop/reviews"));
    // The compiled view knows the remote endpoint's node and the VIP.
    let remote = snap
        .compiled
        .endpoints
        .get("10.1.1.7:8080".parse().unwrap())
        .expect("remote endpoint");
    assert_eq!(remote.node.as_deref(), Some("192.168.50.2"));
    assert_eq!(
        rig.names("WorkloadEntry"),
        ["shop/reviews-1", "shop/reviews-2"]
    );

    // A burst of changes makes one rebuild (or two, if it straddles one), not one per event.
    let before = rig.store.current().generation;
    for i in 0..20 {
        rig.api.apply(t::service(
            "legacy",
            &format!("svc-{i}"),
            &format!("10.96.1.{i}"),
            json!([{ "name": "tcp", "port": 5432, "protocol": "TCP" }]),
        ));
    }
    eventually("the burst", || rig.names("ServiceEntry").len() == 21).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rebuilt = rig.store.current().generation - before;
    assert!(
        (1..=2).contains(&rebuilt),
        "{rebuilt} generations for one burst"
    );

    // Istio objects: a good one applies; a malformed one is left out on its own; one that a
    // policy file also defines loses to the file.
    let route = json!({ "hosts": ["ratings"], "http": [{ "route": [{ "destination": { "host": "ratings" } }] }] });
    rig.api.apply(vs("ratings", route));
    rig.api.apply(vs(
        "broken",
        json!({ "hosts": ["x"], "http": [{ "route": [{ "destination": { "host": "x" }, "wieght": 100 }] }] }),
    ));
    rig.api.apply(vs(
        "reviews",
        json!({ "hosts": ["reviews"], "http": [{ "fault": { "abort": { "httpStatus": 500, "percentage": { "value": 100 } } }, "route": [{ "destination": { "host": "reviews" } }] }] }),
    ));
    rig.api.apply(json!({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": { "name": "allow-web", "namespace": "shop" },
        "spec": { "selector": { "matchLabels": { "app": "reviews" } }, "rules": [{}] },
    }));
    eventually("the good Istio objects", || {
        rig.names("VirtualService") == ["shop/ratings", "shop/reviews"]
            && rig.names("AuthorizationPolicy") == ["shop/allow-web"]
    })
    .await;
    let snap = rig.store.current();
    let reviews = snap
        .policies
        .virtual_services
        .iter()
        .find(|v| v.metadata.name == "reviews")
        .unwrap();
    assert!(
        reviews.origin.file.ends_with("files.yaml"),
        "the file's VirtualService wins: {:?}",
        reviews.origin.file
    );
    assert!(
        snap.files
            .contains(&PathBuf::from("k8s://VirtualService/shop/ratings"))
    );
    assert!(
        !snap
            .files
            .contains(&PathBuf::from("k8s://VirtualService/shop/broken"))
    );

    // The broken object is fixed: it applies.
    rig.api.apply(vs(
        "broken",
        json!({ "hosts": ["x"], "http": [{ "route": [{ "destination": { "host": "x" }, "weight": 100 }] }] }),
    ));
    eventually("the fixed object", || {
        rig.names("VirtualService") == ["shop/broken", "shop/ratings", "shop/reviews"]
    })
    .await;
}

#[tokio::test]
async fn istio_not_installed_is_looked_up_again() {
    let rig = Rig::start("no-istio", "", false).await;
    cluster(&rig.api);
    reviews_service(&rig.api);
    eventually("the reviews ServiceEntry", || {
        rig.names("ServiceEntry") == ["shop/reviews"]
    })
    .await;
    assert!(rig.names("VirtualService").is_empty());
    // Istio is installed later: its objects are watched once the group is found again.
    rig.api.install_istio();
    rig.api.apply(vs(
        "ratings",
        json!({ "hosts": ["ratings"], "http": [{ "route": [{ "destination": { "host": "ratings" } }] }] }),
    ));
    eventually("the VirtualService after Istio's install", || {
        rig.names("VirtualService") == ["shop/ratings"]
    })
    .await;
    let asked = rig.api.requests();
    assert!(
        asked
            .iter()
            .filter(|r| r.as_str() == "GET /apis/networking.istio.io/v1")
            .count()
            >= 2,
        "{asked:?}"
    );
}

#[tokio::test]
async fn api_failures_keep_the_last_state_and_discovery_resumes() {
    let rig = Rig::start("failures", "", true).await;
    cluster(&rig.api);
    reviews_service(&rig.api);
    rig.pod_cgroup(UID1, Qos::Burstable, 1001);
    eventually("first state", || {
        rig.names("ServiceEntry") == ["shop/reviews"] && rig.pods() == ["shop/reviews-1"]
    })
    .await;
    let generation = rig.store.current().generation;

    // The API answers 500 for a while: nothing is lost meanwhile.
    rig.api.fail_with(Some(500));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rig.names("ServiceEntry"), ["shop/reviews"]);
    assert_eq!(rig.pods(), ["shop/reviews-1"]);
    assert_eq!(rig.store.current().generation, generation);

    // Meanwhile the reviews Service is deleted and the API compacts its history: the watches
    // get 410 Gone when they come back, list again, and the deletion is seen.
    rig.api
        .delete(&t::service("shop", "reviews", "10.96.0.20", json!([])));
    rig.api.compact();

    // It comes back, and changes made since are seen.
    rig.api.fail_with(None);
    rig.api.apply(t::service(
        "shop",
        "ratings",
        "10.96.0.21",
        json!([{ "name": "http", "port": 9080, "protocol": "TCP" }]),
    ));
    eventually(
        "a Service created, and one deleted, during the outage",
        || rig.names("ServiceEntry") == ["shop/ratings"],
    )
    .await;

    // Watches cut by the server are resumed; what they list again is what meshd has, so no new
    // generation is made.
    let generation = rig.store.current().generation;
    rig.api.drop_watches();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(rig.store.current().generation, generation);
    rig.api.apply(vs(
        "ratings",
        json!({ "hosts": ["ratings"], "http": [{ "route": [{ "destination": { "host": "ratings" } }] }] }),
    ));
    eventually("a VirtualService after the watches were cut", || {
        rig.names("VirtualService") == ["shop/ratings"]
    })
    .await;
}
