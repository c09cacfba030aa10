//! Kubernetes objects as the API serves them, for tests.

use serde_json::{Value, json};

pub fn namespace(name: &str, enabled: bool) -> Value {
    let labels = if enabled {
        json!({ "meshd.io/enabled": "true", "kubernetes.io/metadata.name": name })
    } else {
        json!({ "kubernetes.io/metadata.name": name })
    };
    json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": { "name": name, "uid": format!("ns-{name}"), "labels": labels },
    })
}

pub fn node(name: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": { "name": name, "uid": format!("node-{name}") },
        "status": { "addresses": [
            { "type": "Hostname", "address": name },
            { "type": "InternalIP", "address": ip },
        ] },
    })
}

/// A running pod.
pub fn pod(ns: &str, name: &str, uid: &str, node: &str, ip: &str, qos: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": ns, "uid": uid,
            "labels": { "app": name.split('-').next().unwrap(), "version": "v1" },
        },
        "spec": {
            "nodeName": node,
            "serviceAccountName": format!("sa-{}", name.split('-').next().unwrap()),
            "containers": [{ "name": "app", "image": "example/app:1" }],
        },
        "status": { "phase": "Running", "podIP": ip, "hostIP": "192.0.2.1", "qosClass": qos },
    })
}

pub fn service(ns: &str, name: &str, cluster_ip: &str, ports: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": name, "namespace": ns, "uid": format!("svc-{ns}-{name}") },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "ports": ports,
            "selector": { "app": name },
        },
    })
}

/// An EndpointSlice of `svc`; each endpoint is (ip, pod name, node, ready).
pub fn slice(ns: &str, svc: &str, ports: Value, endpoints: &[(&str, &str, &str, bool)]) -> Value {
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|(ip, pod, node, ready)| {
            json!({
                "addresses": [ip],
                "conditions": { "ready": ready, "serving": ready, "terminating": false },
                "nodeName": node,
                "targetRef": { "kind": "Pod", "namespace": ns, "name": pod, "uid": format!("uid-{pod}") },
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{svc}-abcde"), "namespace": ns, "uid": format!("eps-{ns}-{svc}"),
            "labels": { "kubernetes.io/service-name": svc },
        },
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": eps,
    })
}

pub fn virtual_service(ns: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {
            "name": name, "namespace": ns, "uid": format!("vs-{ns}-{name}"),
            "resourceVersion": "1", "generation": 1,
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "annotations": { "kubectl.kubernetes.io/last-applied-configuration": "{}" },
            "managedFields": [{ "manager": "kubectl", "operation": "Update" }],
        },
        "spec": spec,
        "status": { "observedGeneration": 1 },
    })
}
