//! Several meshd nodes on one machine, each in its own network namespace on a bridged LAN:
//! traffic between nodes crosses a real wire that the tests can capture.

mod support;

use std::os::unix::fs::MetadataExt;

use support::{
    Daemon, ebpf_available,
    http_backend::HttpBackend,
    http_get,
    netns::{Lan, capture::contains},
};

const REDIRECTS: &str = r#"meshd_ebpf_events_total{event="redirect"}"#;

#[test]
fn two_nodes_talk_over_the_lan() {
    if !ebpf_available("nodes") {
        return;
    }
    let lan = Lan::new("two-nodes", 100, 2);
    let (a, b) = (lan.node(0), lan.node(1));
    let backend = b.run(|| HttpBackend::start("0.0.0.0:8080"));
    let d = Daemon::start_on(a, "netns-two-nodes", 100, &[]);
    assert!(
        http_get(d.admin, "/ready").is_err(),
        "the admin API lives in node a, not on the host"
    );
    let redirects = d.metric(REDIRECTS);
    let wire = lan.capture(b);

    let url = format!("http://{}:8080/whoami", b.addr);
    let out = d
        .exec(
            "default/client",
            &[
                "curl",
                "-sS",
                "--max-time",
                "20",
                "-w",
                "\n%{http_code}",
                &url,
            ],
        )
        .output()
        .expect("run meshd exec");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.ends_with("\n200"),
        "curl {url}: {stdout} {}; meshd log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log_text()
    );
    assert!(
        stdout.contains(&format!("\"peer\":\"{}:", a.addr)),
        "the backend saw node a's address: {stdout}"
    );
    assert_eq!(backend.requests(), 1);
    assert!(
        d.metric(REDIRECTS) > redirects,
        "the connect was captured by meshd on node a"
    );
    // Access-log lines are written within about 100 ms.
    let logged = support::eventually(std::time::Duration::from_secs(3), || {
        d.log_text()
            .lines()
            .any(|l| {
                l.contains("\"path\":\"/whoami\"")
                    && l.contains("\"source_workload\":\"default/client\"")
            })
            .then_some(())
    });
    assert!(
        logged.is_some(),
        "meshd on node a logged the request:\n{}",
        d.log_text()
    );
    // No tunnel yet: the request crosses the LAN in plaintext.
    let bytes = wire.stop();
    assert!(
        contains(&bytes, b"GET /whoami"),
        "plaintext request on b's wire ({} bytes captured)",
        bytes.len()
    );
}

/// The harness itself: a tokio runtime built inside a node keeps its workers there, even once
/// the thread that built it is gone, so backends and clients started with `Node::run` live on
/// that node.
#[test]
fn a_runtime_started_in_a_node_keeps_its_workers_there() {
    if !ebpf_available("nodes_runtime") {
        return;
    }
    let lan = Lan::new("netns-rt", 101, 1);
    let node = lan.node(0);
    let want = std::fs::metadata(format!("/run/netns/{}", node.ns))
        .unwrap()
        .ino();
    let here = || std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
    let host = here();
    assert_ne!(host, want);
    let (rt, on_thread) = node.run(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        (rt, here())
    });
    assert_eq!(on_thread, want, "the run thread is in the node");
    for _ in 0..8 {
        let on_worker = rt.block_on(rt.spawn(async move { here() })).unwrap();
        assert_eq!(on_worker, want, "a worker is in the node");
    }
    assert_eq!(here(), host, "the caller stayed on the host");
}
