//! Kubernetes discovery end to end: the real daemon against a stand-in API server
//! (support/kube_api.rs, not Kubernetes: only its list/watch protocol), with pod cgroups and
//! /proc as fixture trees. Test slots 140–149.

#[path = "support/kube_api.rs"]
mod kube_api;
mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use kube_api::KubeApi;
use serde_json::{Value, json};
use support::{Daemon, MESHD, ebpf_available, eventually, http_backend::HttpBackend};

const NODE: &str = "node-a";

#[test]
fn kubernetes_discovery_needs_a_node_name() {
    let out = Command::new(MESHD)
        .args([
            "run",
            "--discovery",
            "kubernetes",
            "--admin",
            "127.0.0.1:22410",
        ])
        .env_remove("MESHD_NODE_NAME")
        .output()
        .expect("run meshd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("--node-name") && stderr.contains("MESHD_NODE_NAME"),
        "{stderr}"
    );
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("meshd-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A v2 cgroup directory as the kernel shows it, holding `pids`.
fn cgroup_dir(dir: &Path, pids: &[u32]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
    let procs: String = pids.iter().map(|p| format!("{p}\n")).collect();
    std::fs::write(dir.join("cgroup.procs"), procs).unwrap();
}

fn namespace(name: &str, enabled: bool) -> Value {
    let labels = if enabled {
        json!({ "meshd.io/enabled": "true" })
    } else {
        json!({})
    };
    json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name, "labels": labels } })
}

fn pod(ns: &str, name: &str, uid: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": ns, "uid": uid, "labels": { "app": "reviews" } },
        "spec": { "nodeName": NODE, "serviceAccountName": "reviews", "containers": [{ "name": "app" }] },
        "status": { "phase": "Running", "podIP": ip, "qosClass": "Burstable" },
    })
}

fn service(name: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": name, "namespace": "shop" },
        "spec": { "clusterIP": ip, "clusterIPs": [ip], "ports": [{ "name": "http", "port": 9080, "protocol": "TCP" }] },
    })
}

fn virtual_service(name: &str, weight_key: &str) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": { "name": name, "namespace": "shop", "resourceVersion": "1", "managedFields": [] },
        "spec": { "hosts": [format!("{name}.shop.svc.cluster.local")], "http": [{ "route": [{
            "destination": { "host": "reviews.shop.svc.cluster.local" }, weight_key: 100,
        }] }] },
    })
}

fn dump(d: &Daemon) -> Value {
    let all: Value = serde_json::from_str(&d.get("/config_dump")).expect("config_dump is JSON");
    all["snapshot"].clone()
}

fn files(d: &Daemon) -> Vec<String> {
    dump(d)["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn daemon_serves_what_the_api_holds_and_keeps_it_through_outages() {
    if !ebpf_available("daemon_serves_what_the_api_holds_and_keeps_it_through_outages") {
        return;
    }
    let tmp = TempDir::new("discovery");
    let (cgroups, proc_root) = (tmp.0.join("cgroup"), tmp.0.join("proc"));
    // reviews-1's cgroup (systemd driver) with its sandbox process and that process's netns.
    let uid = "5e5e5e5e-1111-4111-8111-000000000001";
    let pod_cg = cgroups.join(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod5e5e5e5e_1111_4111_8111_000000000001.slice",
    );
    cgroup_dir(&pod_cg, &[]);
    cgroup_dir(&pod_cg.join("cri-containerd-abc.scope"), &[4321]);
    std::fs::create_dir_all(proc_root.join("4321/ns")).unwrap();
    std::os::unix::fs::symlink("net:[4026532999]", proc_root.join("4321/ns/net")).unwrap();

    let api = KubeApi::start();
    api.install_istio();
    api.apply(namespace("shop", true));
    api.apply(pod("shop", "reviews-1", uid, "10.1.0.5"));
    api.apply(pod(
        "shop",
        "ghost-1",
        "5e5e5e5e-2222-4222-8222-000000000002",
        "10.1.0.6",
    ));
    api.apply(service("reviews", "10.96.0.20"));
    api.apply(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": "reviews-x1", "namespace": "shop", "labels": { "kubernetes.io/service-name": "reviews" } },
        "addressType": "IPv4",
        "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
        "endpoints": [{ "addresses": ["10.1.0.5"], "conditions": { "ready": true }, "nodeName": NODE,
                        "targetRef": { "kind": "Pod", "namespace": "shop", "name": "reviews-1" } }],
    }));
    api.apply(virtual_service("ratings", "weight"));
    api.apply(virtual_service("broken", "wieght"));

    let url = api.url();
    let d = Daemon::start(
        "discovery",
        140,
        &[
            "--discovery",
            "kubernetes",
            "--node-name",
            NODE,
            "--kube-api",
            &url,
            "--kube-cgroup-root",
            cgroups.to_str().unwrap(),
            "--host-proc",
            proc_root.to_str().unwrap(),
        ],
    );
    let want = [
        "k8s://Pod/shop/ghost-1",
        "k8s://Pod/shop/reviews-1",
        "k8s://Service/shop/reviews",
        "k8s://VirtualService/shop/ratings",
    ];
    eventually(Duration::from_secs(15), || {
        let f = files(&d);
        want.iter().all(|w| f.iter().any(|x| x == w)).then_some(())
    })
    .unwrap_or_else(|| panic!("config_dump files: {:?}\nlog:\n{}", files(&d), d.log_text()));
    assert!(!files(&d).iter().any(|f| f.contains("broken")));
    let se = dump(&d)["resources"]["serviceEntries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["metadata"]["name"] == "reviews")
        .cloned()
        .expect("reviews ServiceEntry");
    assert_eq!(se["spec"]["addresses"], json!(["10.96.0.20"]));
    assert_eq!(se["spec"]["endpoints"][0]["address"], "10.1.0.5");
    assert_eq!(se["spec"]["endpoints"][0]["ports"]["http"], 8080);

    // The malformed object is reported with its namespace and name, and counted once.
    assert!(
        d.log_shows("k8s://VirtualService/shop/broken:"),
        "{}",
        d.log_text()
    );
    assert!(
        d.log_text()
            .contains("k8s://VirtualService/shop/broken:19:13: error: spec.http[0].route[0]: unknown field \"wieght\""),
        "{}",
        d.log_text()
    );
    assert_eq!(
        d.metric("meshd_discovery_objects_rejected_total{kind=\"VirtualService\"}"),
        1.0
    );
    // The pod with a cgroup reached enrolment, which refuses this fixture directory because
    // it is outside meshd's attach cgroup, and says so (real pods are enrolled in
    // `discovered_pods_are_enrolled_in_their_network_namespace_and_removed_when_deleted`); the
    // pod without a cgroup is skipped with what was probed.
    assert!(
        d.log_text().contains("pod not enrolled pod=shop/reviews-1")
            && d.log_text().contains("is not under meshd's attach cgroup"),
        "{}",
        d.log_text()
    );
    assert!(
        d.log_shows("no cgroup for pod shop/ghost-1"),
        "{}",
        d.log_text()
    );
    assert!(
        d.log_text()
            .contains("kubepods-burstable-pod5e5e5e5e_2222_4222_8222_000000000002.slice")
    );

    // The API fails for a while: meshd keeps serving the last state.
    let generation = dump(&d)["generation"].clone();
    api.fail_with(Some(500));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(d.admin_get("/ready").unwrap().0, 200);
    assert_eq!(dump(&d)["generation"], generation);
    assert!(files(&d).iter().any(|f| f == "k8s://Service/shop/reviews"));
    assert!(
        d.log_shows("Kubernetes API watch failed"),
        "{}",
        d.log_text()
    );

    // It comes back: discovery resumes and sees what changed meanwhile.
    api.fail_with(None);
    api.apply(service("ratings", "10.96.0.21"));
    eventually(Duration::from_secs(40), || {
        files(&d)
            .iter()
            .any(|f| f == "k8s://Service/shop/ratings")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no ratings after the outage; log:\n{}", d.log_text()));
}

/// Traffic follows what the API says: a managed curl reaches a Service's endpoint through its
/// ClusterIP (here a loopback address), and a VirtualService created later in the API answers
/// for the same host.
#[test]
fn captured_traffic_follows_discovered_services_and_virtual_services() {
    if !ebpf_available("captured_traffic_follows_discovered_services_and_virtual_services") {
        return;
    }
    let backend = HttpBackend::start("127.0.0.1:0");
    let api = KubeApi::start();
    api.install_istio();
    api.apply(namespace("default", false));
    api.apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": "reviews", "namespace": "default" },
        "spec": { "clusterIP": "127.0.0.61", "clusterIPs": ["127.0.0.61"],
                  "ports": [{ "name": "http", "port": 9080, "protocol": "TCP", "targetPort": 8080 }] },
    }));
    api.apply(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": "reviews-x1", "namespace": "default", "labels": { "kubernetes.io/service-name": "reviews" } },
        "addressType": "IPv4",
        "ports": [{ "name": "http", "port": backend.addr.port(), "protocol": "TCP" }],
        "endpoints": [{ "addresses": ["127.0.0.1"], "conditions": { "ready": true }, "nodeName": NODE }],
    }));
    let url = api.url();
    let d = Daemon::start(
        "discovery-traffic",
        141,
        &[
            "--discovery",
            "kubernetes",
            "--node-name",
            NODE,
            "--kube-api",
            &url,
        ],
    );
    eventually(Duration::from_secs(15), || {
        files(&d)
            .iter()
            .any(|f| f == "k8s://Service/default/reviews")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no reviews ServiceEntry; log:\n{}", d.log_text()));
    let curl = |path: &str| {
        let out = d
            .exec(
                "default/productpage",
                &[
                    "curl",
                    "-sS",
                    "--max-time",
                    "10",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--resolve",
                    "reviews:9080:127.0.0.61",
                    &format!("http://reviews:9080{path}"),
                ],
            )
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(curl("/"), "200", "log:\n{}", d.log_text());
    assert_eq!(backend.requests(), 1);

    // A VirtualService from the API answers /health itself.
    api.apply(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": { "name": "reviews", "namespace": "default" },
        "spec": { "hosts": ["reviews"], "http": [
            { "match": [{ "uri": { "exact": "/health" } }], "directResponse": { "status": 418 } },
            { "route": [{ "destination": { "host": "reviews" } }] },
        ] },
    }));
    eventually(Duration::from_secs(15), || {
        (curl("/health") == "418").then_some(())
    })
    .unwrap_or_else(|| panic!("the VirtualService never applied; log:\n{}", d.log_text()));
    // Until it applied, /health went to the backend; from now on only / does.
    let before = backend.requests();
    assert_eq!(curl("/health"), "418");
    assert_eq!(curl("/"), "200");
    assert_eq!(backend.requests(), before + 1);
}

/// This node's pod, discovered through the API, is enrolled with its own cgroup and network
/// namespace: meshd listens inside the pod, its traffic is captured and attributed to it, and
/// the pod's deletion removes the listener and the enrolment.
#[test]
fn discovered_pods_are_enrolled_in_their_network_namespace_and_removed_when_deleted() {
    if !ebpf_available("discovered_pods_are_enrolled") {
        return;
    }
    use support::netns::Lan;
    let lan = Lan::new("disc-pods", 142, 1);
    let node = lan.node(0);
    node.pod_network(142);
    let (client, server) = (node.add_pod(142, 10), node.add_pod(142, 11));
    let backend = server.run(|| HttpBackend::start("0.0.0.0:8080"));
    // The stand-in API runs in the node's namespace, where meshd reaches it on 127.0.0.1.
    let api = node.run(KubeApi::start);
    api.apply(namespace("shop", true));
    api.apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": "reviews", "namespace": "shop" },
        "spec": { "clusterIP": "10.96.0.61", "clusterIPs": ["10.96.0.61"],
                  "ports": [{ "name": "http", "port": 9080, "protocol": "TCP", "targetPort": 8080 }] },
    }));
    api.apply(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": "reviews-x1", "namespace": "shop", "labels": { "kubernetes.io/service-name": "reviews" } },
        "addressType": "IPv4",
        "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
        "endpoints": [{ "addresses": [server.addr.to_string()], "conditions": { "ready": true }, "nodeName": NODE }],
    }));

    // The kubelet's cgroups for the pod, under meshd's attach cgroup (its --kube-cgroup-root).
    let name = "disc-pods";
    let attach = support::cgroup2_mount()
        .unwrap()
        .join(format!("meshd-test-{name}"));
    let url = api.url();
    let root = attach.display().to_string();
    let d = Daemon::start_on(
        node,
        name,
        142,
        &[
            "--discovery",
            "kubernetes",
            "--node-name",
            NODE,
            "--kube-api",
            &url,
            "--kube-cgroup-root",
            &root,
        ],
    );
    let uid = "5e1f0c2a-1b2c-4d3e-8f90-a1b2c3d4e5f6";
    let pod_cgroup = attach.join(format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
        uid.replace('-', "_")
    ));
    let container = pod_cgroup.join("cri-containerd-app.scope");
    std::fs::create_dir_all(&container).unwrap();
    let in_container = |mut cmd: Command| {
        let procs = container.join("cgroup.procs");
        // SAFETY: the closure writes a file between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || std::fs::write(&procs, "0"));
        }
        cmd
    };
    // The pod's main process: where discovery finds the pod's network namespace.
    let mut sleeper = in_container(client.command("sleep"));
    let mut sleeper = sleeper.arg("60").spawn().unwrap();
    api.apply(pod("shop", "productpage", uid, &client.addr.to_string()));

    let enrolled = eventually(Duration::from_secs(15), || {
        let list: Value = serde_json::from_str(&d.get("/workloads")).ok()?;
        let w = list
            .as_array()?
            .iter()
            .find(|w| w["workload"] == "shop/productpage")?
            .clone();
        (w["adopted"] == true && w["netns"].is_string()).then_some(w)
    })
    .unwrap_or_else(|| {
        panic!(
            "pod not enrolled: {}\nlog:\n{}",
            d.get("/workloads"),
            d.log_text()
        )
    });
    assert_eq!(enrolled["cgroup"], pod_cgroup.display().to_string());
    assert_eq!(d.metric("meshd_workloads_enrolled"), 1.0);

    let mut curl = in_container(client.command("curl"));
    curl.args([
        "-sS",
        "--max-time",
        "10",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
    ])
    .arg("http://10.96.0.61:9080/whoami");
    let out = curl.output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "{}\nlog:\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log_text()
    );
    assert_eq!(backend.requests(), 1);
    let attributed = eventually(Duration::from_secs(3), || {
        d.log_text()
            .contains("\"source_workload\":\"shop/productpage\"")
            .then_some(())
    });
    assert!(attributed.is_some(), "{}", d.log_text());

    // Deleted in the API: unenrolled, and nothing listens in the pod any more.
    api.delete(&pod("shop", "productpage", uid, &client.addr.to_string()));
    let gone = eventually(Duration::from_secs(15), || {
        (d.get("/workloads").trim() == "[]").then_some(())
    });
    assert!(gone.is_some(), "{}", d.get("/workloads"));
    assert_eq!(d.metric("meshd_workloads_enrolled"), 0.0);
    let port = support::ports(142).1;
    assert!(!client.listens_on(port), "the pod's listener is closed");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let _ = std::fs::remove_dir(&container);
    let mut dir = pod_cgroup.clone();
    while dir != attach {
        let _ = std::fs::remove_dir(&dir);
        dir = dir.parent().unwrap().to_path_buf();
    }
}
