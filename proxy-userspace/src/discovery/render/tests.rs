use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::discovery::testdata;

fn typed<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<T> {
    Arc::new(serde_json::from_value(v).unwrap())
}

fn view() -> View {
    let ports = json!([
        { "name": "http-web", "port": 9080, "protocol": "TCP", "targetPort": "web" },
        { "name": "grpc", "port": 9090, "protocol": "TCP", "targetPort": 9090 },
        { "name": "metrics", "port": 15020, "protocol": "TCP", "appProtocol": "http" },
        { "name": "sctp", "port": 7, "protocol": "SCTP" },
    ]);
    let slice_ports = json!([
        { "name": "http-web", "port": 8080, "protocol": "TCP" },
        { "name": "grpc", "port": 9090, "protocol": "TCP" },
        { "name": "metrics", "port": 15020, "protocol": "TCP" },
    ]);
    View::new(
        "node-a",
        &[
            typed(testdata::namespace("shop", true)),
            typed(testdata::namespace("legacy", false)),
        ],
        &[
            typed(testdata::node("node-a", "192.168.50.1")),
            typed(testdata::node("node-b", "192.168.50.2")),
        ],
        &[
            typed(testdata::pod(
                "shop",
                "reviews-1",
                "u1",
                "node-a",
                "10.1.0.5",
                "Burstable",
            )),
            typed(testdata::pod(
                "shop",
                "reviews-2",
                "u2",
                "node-b",
                "10.1.1.7",
                "Burstable",
            )),
            typed(testdata::pod(
                "shop",
                "reviews-3",
                "u3",
                "node-c",
                "10.1.2.9",
                "Burstable",
            )),
            typed(testdata::pod(
                "legacy",
                "db-1",
                "u4",
                "node-b",
                "10.1.1.9",
                "BestEffort",
            )),
        ],
        &[
            typed({
                let mut svc = testdata::service("shop", "reviews", "10.96.0.20", ports);
                svc["spec"]["trafficDistribution"] = json!("PreferSameZone");
                svc
            }),
            typed({
                let mut svc = testdata::service(
                    "legacy",
                    "db",
                    "10.96.0.30",
                    json!([{ "port": 5432, "protocol": "TCP" }]),
                );
                svc["metadata"]["annotations"] =
                    json!({ "networking.istio.io/traffic-distribution": "PreferSameNode" });
                svc
            }),
        ],
        &[
            typed(testdata::slice(
                "shop",
                "reviews",
                slice_ports,
                &[
                    ("10.1.0.5", "reviews-1", "node-a", true),
                    ("10.1.1.7", "reviews-2", "node-b", true),
                    // node-c has no known address: left out rather than dialled in plaintext.
                    ("10.1.2.9", "reviews-3", "node-c", true),
                    ("10.1.1.8", "reviews-4", "node-b", false),
                ],
            )),
            typed(testdata::slice(
                "legacy",
                "db",
                json!([{ "port": 5432, "protocol": "TCP" }]),
                &[("10.1.1.9", "db-1", "node-b", true)],
            )),
        ],
    )
}

fn parsed(d: &Document) -> serde_json::Value {
    serde_json::from_str(&d.text).unwrap()
}

#[test]
fn a_service_and_its_slices_become_a_service_entry() {
    let v = view();
    let docs = v.documents();
    let se = docs
        .iter()
        .find(|d| d.path.to_str() == Some("k8s://Service/shop/reviews"))
        .expect("reviews");
    let se = parsed(se);
    assert_eq!(se["kind"], "ServiceEntry");
    assert_eq!(
        se["spec"]["hosts"],
        json!(["reviews.shop.svc.cluster.local"])
    );
    assert_eq!(se["spec"]["addresses"], json!(["10.96.0.20"]));
    assert_eq!(se["spec"]["resolution"], "STATIC");
    assert_eq!(se["spec"]["trafficDistribution"], "PreferSameZone");
    // The Service's selector, for AuthorizationPolicies whose targetRefs name the Service.
    assert_eq!(
        se["metadata"]["annotations"]["meshd.io/service-selector"],
        r#"{"app":"reviews"}"#
    );
    assert_eq!(
        se["spec"]["ports"],
        json!([
            { "number": 9080, "name": "http-web", "protocol": "HTTP" },
            { "number": 9090, "name": "grpc", "protocol": "GRPC" },
            { "number": 15020, "name": "metrics", "protocol": "HTTP" },
        ])
    );
    let eps = se["spec"]["endpoints"].as_array().unwrap();
    assert_eq!(eps.len(), 2, "{eps:?}");
    // This node's endpoint: no node label; the target port comes from the slice.
    assert_eq!(eps[0]["address"], "10.1.0.5");
    assert_eq!(eps[0]["ports"]["http-web"], 8080);
    assert_eq!(
        eps[0]["labels"],
        json!({ "app": "reviews", "version": "v1" })
    );
    assert_eq!(eps[0]["serviceAccount"], "sa-reviews");
    // Another node's: tunnelled to that node's InternalIP.
    assert_eq!(eps[1]["address"], "10.1.1.7");
    assert_eq!(eps[1]["labels"]["meshd.io/node"], "192.168.50.2");

    // Outside the mesh: reached directly, no node label; an unnamed port gets a name.
    let db = parsed(
        docs.iter()
            .find(|d| d.path.to_str() == Some("k8s://Service/legacy/db"))
            .unwrap(),
    );
    assert_eq!(
        db["spec"]["ports"],
        json!([{ "number": 5432, "name": "port-5432" }])
    );
    // Istio's annotation on the Service stands for the field.
    assert_eq!(db["spec"]["trafficDistribution"], "PreferSameNode");
    // A value meshd does not know is left out: the Service is still rendered.
    let mut odd = testdata::service("legacy", "odd", "10.96.0.31", json!([{ "port": 80 }]));
    odd["spec"]["trafficDistribution"] = json!("PreferSameRack");
    let odd = parsed(&v.service_entry(&typed(odd)).unwrap());
    assert!(odd["spec"].get("trafficDistribution").is_none(), "{odd}");
    assert_eq!(
        db["spec"]["endpoints"][0]["ports"],
        json!({ "port-5432": 5432 })
    );
    assert!(
        db["spec"]["endpoints"][0]["labels"]
            .get("meshd.io/node")
            .is_none()
    );
}

#[test]
fn meshd_enabled_pods_become_workload_entries() {
    let v = view();
    let docs = v.documents();
    let names: Vec<&str> = docs
        .iter()
        .filter_map(|d| d.path.to_str())
        .filter(|p| p.starts_with("k8s://Pod/"))
        .collect();
    // reviews-3's node is unknown; db-1's namespace is not in the mesh.
    assert_eq!(
        names,
        ["k8s://Pod/shop/reviews-1", "k8s://Pod/shop/reviews-2"]
    );
    let we = parsed(&docs[docs.len() - 1]);
    assert_eq!(we["kind"], "WorkloadEntry");
    assert_eq!(we["spec"]["address"], "10.1.1.7");
    assert_eq!(we["spec"]["serviceAccount"], "sa-reviews");
    assert_eq!(we["spec"]["labels"]["meshd.io/node"], "192.168.50.2");
}

#[test]
fn istio_objects_lose_server_side_fields() {
    let obj: DynamicObject = serde_json::from_value(crate::discovery::testdata::virtual_service(
        "shop",
        "reviews",
        json!({ "hosts": ["reviews"], "http": [{ "route": [{ "destination": { "host": "reviews" } }] }] }),
    ))
    .unwrap();
    // The annotations meshd reads are kept, the others dropped.
    let mut dry: DynamicObject = obj.clone();
    (dry.metadata.annotations.get_or_insert_default())
        .insert("istio.io/dry-run".into(), "true".into());
    let d = istio_document("security.istio.io/v1", "AuthorizationPolicy", &dry).unwrap();
    assert_eq!(
        parsed(&d)["metadata"]["annotations"],
        json!({ "istio.io/dry-run": "true" })
    );
    let d = istio_document("networking.istio.io/v1", "VirtualService", &obj).unwrap();
    assert_eq!(d.path.to_str(), Some("k8s://VirtualService/shop/reviews"));
    let v = parsed(&d);
    // The creation time stays: competing resources are ordered by it, as in Istio.
    assert_eq!(
        v["metadata"],
        json!({ "name": "reviews", "namespace": "shop", "creationTimestamp": "2026-01-01T00:00:00Z" })
    );
    assert!(v.get("status").is_none());
    assert_eq!(v["apiVersion"], "networking.istio.io/v1");
}

#[test]
fn node_addresses_are_ipv4_internal_ips() {
    let node: Node = serde_json::from_value(json!({
        "metadata": { "name": "n" },
        "status": { "addresses": [
            { "type": "ExternalIP", "address": "203.0.113.9" },
            { "type": "InternalIP", "address": "fd00::9" },
            { "type": "InternalIP", "address": "192.168.50.9" },
        ] },
    }))
    .unwrap();
    assert_eq!(internal_ip(&node), Some("192.168.50.9".parse().unwrap()));
    let v6: Node = serde_json::from_value(json!({
        "metadata": { "name": "n" },
        "status": { "addresses": [{ "type": "InternalIP", "address": "fd00::9" }] },
    }))
    .unwrap();
    assert_eq!(internal_ip(&v6), None);
}
