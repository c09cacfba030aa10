//! Pods in their own network namespaces, as on a Kubernetes node: meshd runs in the node's
//! namespace and opens its outbound listener inside each enrolled pod's, so a connect that eBPF
//! rewrites to 127.0.0.1:15001 lands on meshd although 127.0.0.1 is the pod's own loopback.

mod support;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use support::{
    Daemon, MESHD, ebpf_available, eventually,
    http_backend::HttpBackend,
    netns::{Lan, Node, capture::contains, pods::Pod},
};

const REDIRECTS: &str = r#"meshd_ebpf_events_total{event="redirect"}"#;
const SOCKMAP: &str = r#"meshd_ebpf_events_total{event="sockmap_redirect"}"#;
const VIP: &str = "10.96.0.50";

/// A WorkloadEntry `default/NAME` for a pod, serving `http` on 8080, with `labels`.
fn entry(name: &str, pod: &Pod, labels: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  address: {}\n  serviceAccount: {name}\n  ports: {{http: 8080}}\n  labels: {{{labels}}}\n---\n",
        pod.addr
    )
}

/// `reviews` behind the VIP, selecting the workloads labelled `app: reviews`.
const REVIEWS: &str = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  addresses: ["10.96.0.50"]
  ports:
  - {number: 9080, name: http, protocol: HTTP}
  resolution: STATIC
  workloadSelector:
    labels: {app: reviews}
"#;

/// reviews v1 and v2 as pods behind the VIP, productpage as a pod, and `routes` as the
/// VirtualService's `http:` list.
fn policies(client: &Pod, v1: &Pod, v2: &Pod, routes: &str) -> String {
    format!(
        r#"{}{}{}{REVIEWS}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: reviews.default.svc.cluster.local
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  http:
{routes}"#,
        entry("productpage", client, "app: productpage"),
        entry("reviews-v1", v1, "app: reviews, version: v1"),
        entry("reviews-v2", v2, "app: reviews, version: v2"),
    )
}

const JASON_TO_V2: &str = r#"  - match:
    - headers:
        end-user: {exact: jason}
    route:
    - destination: {host: reviews.default.svc.cluster.local, subset: v2}
  - route:
    - destination: {host: reviews.default.svc.cluster.local, subset: v1}
"#;

fn config(name: &str, yaml: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("meshd-test-{name}-policies"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("mesh.yaml"), yaml).unwrap();
    dir
}

fn start(node: &Node, name: &str, slot: u16, config: &Path) -> Daemon {
    let config = config.display().to_string();
    Daemon::start_on(node, name, slot, &["--config", &config, "--sockmap", "on"])
}

/// A pod's cgroup as a kubelet makes it (`kubepods/pod-NAME` under meshd's attach cgroup, with
/// a container in a child cgroup), adopted through the admin API.
struct Adopted {
    cgroup: PathBuf,
    container: PathBuf,
    /// The enrolment request, as sent.
    request: String,
    /// meshd's answer: the enrolled workload.
    answer: serde_json::Value,
}

/// Adopts the cgroup of pod `name` as `workload`, living in `pod`'s namespace.
fn adopt(d: &Daemon, workload: &str, name: &str, pod: &Pod) -> Adopted {
    let cgroup = d.cgroup.join("kubepods").join(format!("pod-{name}"));
    let container = cgroup.join("container-1");
    std::fs::create_dir_all(&container).unwrap();
    let request = serde_json::json!({
        "workload": workload,
        "cgroup": cgroup,
        "netns": pod.netns(),
    })
    .to_string();
    let (status, text) = d.admin_request("POST", "/workloads", &request).unwrap();
    assert_eq!(status, 201, "{text}");
    Adopted {
        cgroup,
        container,
        request,
        answer: serde_json::from_str(&text).unwrap(),
    }
}

impl Drop for Adopted {
    /// Removes the cgroups, as the kubelet does once the pod is gone.
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.container);
        let _ = std::fs::remove_dir(&self.cgroup);
        let _ = self.cgroup.parent().map(std::fs::remove_dir);
    }
}

/// Makes `cmd` start in the cgroup `dir` (it moves itself there between fork and exec).
fn in_cgroup(cmd: &mut std::process::Command, dir: &Path) {
    let procs = dir.join("cgroup.procs");
    // SAFETY: the closure writes to a file between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || std::fs::write(&procs, "0"));
    }
}

/// curl from `pod` as `workload`; returns `CODE BODY`.
fn curl(d: &Daemon, workload: &str, pod: &Pod, args: &[&str]) -> String {
    let url = format!("http://{VIP}:9080/whoami");
    let mut full = vec!["curl", "-sS", "--max-time", "10"];
    full.extend_from_slice(args);
    full.extend(["-w", " %{http_code}", &url]);
    let out = d.exec_in(workload, &pod.netns(), &full).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once(' ').unwrap_or(("", &text));
    format!(
        "{code} {} {}",
        body.trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

#[test]
fn two_pods_talk_through_meshd_with_l7_policy() {
    if !ebpf_available("pods") {
        return;
    }
    let lan = Lan::new("pods-l7", 120, 1);
    let node = lan.node(0);
    node.pod_network(120);
    let (client, p1, p2) = (
        node.add_pod(120, 10),
        node.add_pod(120, 11),
        node.add_pod(120, 12),
    );
    let v1 = p1.run(|| HttpBackend::start("0.0.0.0:8080"));
    let v2 = p2.run(|| HttpBackend::start("0.0.0.0:8080"));
    let cfg = config("pods-l7", &policies(&client, &p1, &p2, JASON_TO_V2));
    let d = start(node, "pods-l7", 120, &cfg);
    let (redirects, sockmap) = (d.metric(REDIRECTS), d.metric(SOCKMAP));

    let jason = curl(
        &d,
        "default/productpage",
        &client,
        &["-H", "end-user: jason"],
    );
    assert!(jason.starts_with("200 "), "{jason}\n{}", d.log_text());
    assert_eq!((v1.requests(), v2.requests()), (0, 1), "jason goes to v2");
    let other = curl(&d, "default/productpage", &client, &[]);
    assert!(other.starts_with("200 "), "{other}");
    assert_eq!(
        (v1.requests(), v2.requests()),
        (1, 1),
        "everyone else to v1"
    );
    // Upstream connections leave from the node's namespace: the backend sees the node's
    // address on the pod network, not the client pod's.
    assert!(
        other.contains("\"peer\":\"10.214.120.1:"),
        "the backend saw the node's pod-network address: {other}"
    );
    assert!(d.metric(REDIRECTS) >= redirects + 2.0);
    assert!(
        d.metric(SOCKMAP) > sockmap,
        "the pod↔meshd hop went through the sockmap inside the pod's namespace"
    );
    let logged = eventually(Duration::from_secs(3), || {
        d.log_text()
            .lines()
            .any(|l| {
                l.contains("\"path\":\"/whoami\"")
                    && l.contains("\"source_workload\":\"default/productpage\"")
            })
            .then_some(())
    });
    assert!(logged.is_some(), "the pod is the source:\n{}", d.log_text());
    // Loopback inside the pod is the pod's own: a managed connect to 127.0.0.1 stays there.
    let sidecar = client.run(|| HttpBackend::start("127.0.0.1:7070"));
    let redirects = d.metric(REDIRECTS);
    let out = d
        .exec_in(
            "default/productpage",
            &client.netns(),
            &[
                "curl",
                "-sS",
                "--max-time",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "http://127.0.0.1:7070/whoami",
            ],
        )
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sidecar.requests(), 1);
    assert_eq!(
        d.metric(REDIRECTS),
        redirects,
        "pod loopback is not redirected"
    );
    // The listener is gone with the workload: the pod's loopback has nothing on meshd's port.
    let port = support::ports(120).1;
    assert!(!client.listens_on(port), "no listener left in the pod");
}

#[test]
fn enrolment_api_adopts_a_pod_cgroup_and_removal_cleans_up() {
    if !ebpf_available("pods") {
        return;
    }
    let lan = Lan::new("pods-api", 121, 1);
    let node = lan.node(0);
    node.pod_network(121);
    let (client, server) = (node.add_pod(121, 10), node.add_pod(121, 11));
    let v1 = server.run(|| HttpBackend::start("0.0.0.0:8080"));
    let cfg = config(
        "pods-api",
        &policies(&client, &server, &server, JASON_TO_V2),
    );
    let d = start(node, "pods-api", 121, &cfg);
    let port = support::ports(121).1;

    // The pod's cgroup, as a kubelet would make it: with the containers in child cgroups.
    let pod = adopt(&d, "default/productpage", "productpage", &client);
    let w = &pod.answer;
    assert_eq!(w["adopted"], true, "{w}");
    assert!(client.listens_on(port), "meshd listens in the pod");

    // A process in the container's cgroup, in the pod's namespace, is captured.
    let mut curl = client.command("curl");
    curl.args(["-sS", "--max-time", "10", "-w", " %{http_code}"])
        .arg(format!("http://{VIP}:9080/whoami"));
    in_cgroup(&mut curl, &pod.container);
    let out = curl.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with(" 200"), "{text}\n{}", d.log_text());
    assert_eq!(v1.requests(), 1);

    // Bad enrolments are refused with the reason, and change nothing.
    let missing = serde_json::json!({"workload": "default/x", "netns": "/run/netns/meshd-nope"});
    let (status, text) = d
        .admin_request("POST", "/workloads", &missing.to_string())
        .unwrap();
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("/run/netns/meshd-nope"), "{text}");
    let outside =
        serde_json::json!({"workload": "default/x", "cgroup": d.cgroup.parent().unwrap()});
    let (status, text) = d
        .admin_request("POST", "/workloads", &outside.to_string())
        .unwrap();
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("attach cgroup"), "{text}");
    let (status, text) = d.admin_request("POST", "/workloads", &pod.request).unwrap();
    assert_eq!(status, 400, "a cgroup is enrolled once: {text}");

    // Pod deleted: listener and enrolment go, the kubelet's cgroup stays.
    let id = w["id"].as_u64().unwrap();
    let (status, text) = d
        .admin_request("DELETE", &format!("/workloads/{id}"), "")
        .unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(!client.listens_on(port), "the pod's listener is closed");
    assert_eq!(d.get("/workloads").trim(), "[]");
    assert!(
        pod.cgroup.exists(),
        "an adopted cgroup is left to its owner"
    );
    // The cgroup is no longer managed: its connects go straight to their destination.
    let redirects = d.metric(REDIRECTS);
    let mut direct = client.command("curl");
    direct
        .args([
            "-sS",
            "--max-time",
            "3",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg(format!("http://{}:8080/whoami", server.addr));
    in_cgroup(&mut direct, &pod.container);
    let out = direct.output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    assert_eq!(
        d.metric(REDIRECTS),
        redirects,
        "not redirected after removal"
    );
}

#[test]
fn fifty_pods_enrolled_at_once_stay_correct_and_bounded() {
    if !ebpf_available("pods") {
        return;
    }
    const PODS: u8 = 50;
    let lan = Lan::new("pods-fifty", 122, 1);
    let node = lan.node(0);
    node.pod_network(122);
    let server = node.add_pod(122, 2);
    let backend = server.run(|| HttpBackend::start("0.0.0.0:8080"));
    let pods: Vec<Pod> = (0..PODS).map(|i| node.add_pod(122, 10 + i)).collect();
    let cfg = config(
        "pods-fifty",
        &policies(&pods[0], &server, &server, JASON_TO_V2),
    );
    let d = start(node, "pods-fifty", 122, &cfg);
    let rss_before = rss_kib(d.pid());

    // Every pod waits for the go file, then makes one request through its own listener.
    let go = std::env::temp_dir().join("meshd-test-pods-fifty-go");
    let _ = std::fs::remove_file(&go);
    let script = format!(
        "while [ ! -e {go} ]; do sleep 0.05; done; \
         curl -sS --max-time 20 -o /dev/null -w '%{{http_code}}' http://{VIP}:9080/whoami",
        go = go.display()
    );
    let children: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let workload = format!("default/pod-{i}");
            let mut c = d.exec_in(&workload, &p.netns(), &["sh", "-c", &script]);
            c.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            c.spawn().unwrap()
        })
        .collect();
    let enrolled = eventually(Duration::from_secs(30), || {
        let list: serde_json::Value = serde_json::from_str(&d.get("/workloads")).ok()?;
        (list.as_array()?.len() == PODS as usize).then_some(())
    });
    assert!(enrolled.is_some(), "{}", d.get("/workloads"));
    assert_eq!(d.metric("meshd_workloads_enrolled"), PODS as f64);
    let rss_enrolled = rss_kib(d.pid());
    std::fs::write(&go, "").unwrap();
    for (i, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "200",
            "pod {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_file(&go);
    assert_eq!(backend.requests(), PODS as usize);
    // Each request is attributed to the pod it came from.
    let attributed = eventually(Duration::from_secs(3), || {
        let log = d.log_text();
        (0..PODS)
            .all(|i| log.contains(&format!("\"source_workload\":\"default/pod-{i}\"")))
            .then_some(())
    });
    assert!(attributed.is_some(), "{}", d.log_text());
    // Every exec unenrolled its pod on exit: nothing is left listening.
    let emptied = eventually(Duration::from_secs(10), || {
        (d.get("/workloads").trim() == "[]").then_some(())
    });
    assert!(emptied.is_some(), "{}", d.get("/workloads"));
    assert_eq!(d.metric("meshd_workloads_enrolled"), 0.0);
    let port = support::ports(122).1;
    assert!(pods.iter().all(|p| !p.listens_on(port)));
    let per_pod = rss_enrolled.saturating_sub(rss_before) / PODS as u64;
    eprintln!(
        "meshd RSS: {rss_before} KiB idle, {rss_enrolled} KiB with {PODS} pods ({per_pod} KiB per pod)"
    );
    assert!(
        rss_enrolled < rss_before + 64 * 1024,
        "50 pods cost {} KiB",
        rss_enrolled - rss_before
    );
}

/// Resident memory of a process in KiB.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn a_pod_reaches_a_pod_on_another_node_through_the_tunnel() {
    if !ebpf_available("pods") {
        return;
    }
    let lan = Lan::new("pods-nodes", 123, 2);
    let (a, b) = (lan.node(0), lan.node(1));
    a.pod_network(123);
    b.pod_network(123);
    let (client, server) = (a.add_pod(123, 10), b.add_pod(123, 20));
    let backend = server.run(|| HttpBackend::start("0.0.0.0:8080"));
    let (slot_a, slot_b) = (123, 124);
    let on = |node: &Node, slot: u16| {
        format!(
            "meshd.io/node: \"{}\", meshd.io/tunnel-port: \"{}\"",
            node.addr,
            support::ports(slot).2
        )
    };
    let yaml = format!(
        "{}{}{REVIEWS}",
        entry(
            "productpage",
            &client,
            &format!("app: productpage, {}", on(a, slot_a))
        ),
        entry(
            "reviews",
            &server,
            &format!("app: reviews, {}", on(b, slot_b))
        ),
    );
    let cfg = config("pods-nodes", &yaml);
    let ca = support::ca_dir("pods-nodes");
    let daemon = |node: &Node, name: &str, slot: u16| {
        Daemon::start_mesh_node(node, name, slot, &cfg, &ca, &[])
    };
    let d_a = daemon(a, "pods-nodes-a", slot_a);
    let _d_b = daemon(b, "pods-nodes-b", slot_b);
    let wire = lan.capture(b);

    let got = curl(&d_a, "default/productpage", &client, &[]);
    assert!(got.starts_with("200 "), "{got}\n{}", d_a.log_text());
    assert_eq!(backend.requests(), 1);
    let bytes = wire.stop();
    assert!(!bytes.is_empty(), "the request crossed b's wire");
    assert!(
        !contains(&bytes, b"GET /whoami"),
        "no plaintext on the wire between the nodes"
    );
    let logged = eventually(Duration::from_secs(3), || {
        d_a.log_text()
            .lines()
            .any(|l| {
                l.contains("\"path\":\"/whoami\"")
                    && l.contains("spiffe://cluster.local/ns/default/sa/reviews")
            })
            .then_some(())
    });
    assert!(
        logged.is_some(),
        "the peer's identity was verified:\n{}",
        d_a.log_text()
    );
}

#[test]
fn exec_refuses_a_missing_namespace() {
    if !ebpf_available("pods") {
        return;
    }
    let out = std::process::Command::new(MESHD)
        .args([
            "exec",
            "--admin",
            "127.0.0.1:1",
            "--workload",
            "default/x",
            "--netns",
            "/run/netns/meshd-no-such-pod",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/run/netns/meshd-no-such-pod"), "{err}");
}

/// Under PeerAuthentication STRICT, a pod that is itself an enrolled workload takes meshd's
/// connections, which come from the node's namespace (the kernel finds meshd's socket there by
/// the id the pod's namespace gives it), and the kernel refuses plaintext from anyone else. The
/// server pod is enrolled as a kubelet's would be: by its cgroup, with its process in a
/// container's child cgroup.
#[test]
fn a_strict_pod_takes_meshds_connections_and_refuses_plaintext() {
    if !ebpf_available("pods") {
        return;
    }
    let lan = Lan::new("pods-strict", 125, 1);
    let node = lan.node(0);
    node.pod_network(125);
    let (client, server) = (node.add_pod(125, 10), node.add_pod(125, 11));
    let yaml = format!(
        "{}{}{}---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
         metadata: {{name: default, namespace: default}}\nspec:\n  mtls: {{mode: STRICT}}\n",
        entry("productpage", &client, "app: productpage"),
        entry("reviews", &server, "app: reviews"),
        REVIEWS,
    );
    let cfg = config("pods-strict", &yaml);
    let d = start(node, "pods-strict", 125, &cfg);
    // The server pod: its cgroup adopted as default/reviews, and a container in a child cgroup
    // serving /whoami in the pod's namespace.
    let pod = adopt(&d, "default/reviews", "reviews", &server);
    let site = std::env::temp_dir().join("meshd-test-pods-strict-site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("whoami"), "reviews\n").unwrap();
    let mut web = server.command("python3");
    web.args(["-m", "http.server", "8080", "--directory"])
        .arg(&site)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    in_cgroup(&mut web, &pod.container);
    let mut web = web.spawn().unwrap();
    let up = eventually(Duration::from_secs(10), || {
        server.listens_on(8080).then_some(())
    });
    assert!(up.is_some(), "the server pod never listened");
    let got = curl(&d, "default/productpage", &client, &[]);
    assert!(got.starts_with("200 "), "{got}\n{}", d.log_text());
    let workloads = d.get("/workloads");
    assert!(workloads.contains("\"meshd_nsid\""), "{workloads}");
    // Plaintext from unmanaged processes, in another pod and in the node's namespace (where
    // meshd's sockets are, but these are not meshd's): the SYN is dropped, the connect times
    // out.
    let target = std::net::SocketAddr::from((server.addr, 8080));
    let plain = || {
        std::net::TcpStream::connect_timeout(&target, Duration::from_millis(1500))
            .map(|_| ())
            .map_err(|e| e.kind())
    };
    assert_eq!(client.run(plain), Err(std::io::ErrorKind::TimedOut));
    assert_eq!(node.run(plain), Err(std::io::ErrorKind::TimedOut));
    let refused = d.metric("meshd_peer_authentication_refused_total");
    assert!(refused >= 2.0, "{refused}");
    // meshd's own connections still pass.
    let again = curl(&d, "default/productpage", &client, &[]);
    let _ = web.kill();
    let _ = web.wait();
    assert!(again.starts_with("200 "), "{again}\n{}", d.log_text());
}
