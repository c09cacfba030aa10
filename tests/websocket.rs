//! WebSocket upgrades through eBPF capture, as an Istio sidecar's router takes them: until the
//! upstream's 101 an upgrade is authorized, retried and bounded by its route's timeout like any
//! request; after it, its access-log line covers the whole upgraded connection.

mod support;

use std::time::Duration;

use support::{Daemon, ebpf_available, eventually, http_backend::HttpBackend};

const RAW: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/clients/raw_http.py");

/// A WebSocket upgrade to `path` on ws:9080 from the managed client, then `then` on the
/// upgraded connection: (status, everything received).
fn upgrade(d: &Daemon, path: &str, then: &str) -> (u64, String) {
    raw_result(&upgrade_command(d, path, then, "6").output().unwrap())
}

/// The managed client's upgrade to `path` on ws:9080, sending `then` on the upgraded
/// connection and reading until `timeout` seconds pass without a byte or the connection ends.
fn upgrade_command(d: &Daemon, path: &str, then: &str, timeout: &str) -> std::process::Command {
    let send = format!(
        "GET {path} HTTP/1.1\\r\\nHost: ws:9080\\r\\nConnection: Upgrade\\r\\nUpgrade: websocket\\r\\n\\r\\n"
    );
    let args = [
        "python3",
        RAW,
        "--addr",
        "127.0.0.51:9080",
        "--send",
        &send,
        "--then",
        then,
        "--timeout",
        timeout,
    ];
    d.exec("default/client", &args)
}

/// The raw client's result: (status, everything received).
fn raw_result(out: &std::process::Output) -> (u64, String) {
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value =
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("raw client: {e}: {text}"));
    (
        v["status"].as_u64().unwrap(),
        v["received"].as_str().unwrap().to_string(),
    )
}

/// `reviews` (the support mesh's v1 and v2) with `policy` as its DestinationRule's
/// `trafficPolicy` and `routes` as its VirtualService's.
fn reviews_with(v1: &HttpBackend, v2: &HttpBackend, policy: &str, routes: &str) -> String {
    support::mesh::policies(v1, v2, routes).replace(
        "spec:\n  host: reviews\n  subsets:",
        &format!("spec:\n  host: reviews\n  trafficPolicy:\n{policy}  subsets:"),
    )
}

/// A WebSocket to reviews:9080 from the managed client, held open until the client's own
/// timeout of `held` seconds.
fn hold_websocket(d: &Daemon, held: &str) -> std::process::Child {
    let send = "GET /ws HTTP/1.1\\r\\nHost: reviews:9080\\r\\nConnection: Upgrade\\r\\nUpgrade: websocket\\r\\n\\r\\n";
    let args = [
        "python3",
        RAW,
        "--addr",
        "127.0.0.50:9080",
        "--send",
        send,
        "--timeout",
        held,
    ];
    d.exec("default/productpage", &args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn policies(live: u16, dead: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ws, namespace: default}}
spec:
  hosts: [ws.default.svc.cluster.local]
  addresses: [127.0.0.51]
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  location: MESH_INTERNAL
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {dead}}}}}
  - {{address: 127.0.0.1, ports: {{http: {live}}}, labels: {{app: ws}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: ws, namespace: default}}
spec: {{address: 127.0.0.1, serviceAccount: ws, ports: {{http: {live}}}, labels: {{app: ws}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: ws, namespace: default}}
spec:
  host: ws
  trafficPolicy: {{loadBalancer: {{simple: ROUND_ROBIN}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: ws, namespace: default}}
spec:
  hosts: [ws]
  http:
  - match: [{{uri: {{prefix: /sleep/}}}}]
    timeout: 1s
    route: [{{destination: {{host: ws}}}}]
  - route: [{{destination: {{host: ws}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-admin, namespace: default}}
spec:
  selector: {{matchLabels: {{app: ws}}}}
  action: DENY
  rules: [{{to: [{{operation: {{paths: ["/admin*"]}}}}]}}]
"#
    )
}

#[test]
fn websocket_upgrades_are_authorized_retried_timed_and_logged_whole() {
    if !ebpf_available("websocket_policy") {
        return;
    }
    let live = HttpBackend::start("127.0.0.1:0");
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = support::mesh::config_dir("websocket-policy", &policies(live.addr.port(), dead));
    let d = Daemon::start(
        "websocket-policy",
        310,
        &["--config", dir.to_str().unwrap()],
    );

    // Round robin sends every other upgrade to the endpoint that refuses connections: Istio's
    // default retry policy (connect-failure) takes each to the live one, its attempt counted.
    for i in 0..4 {
        let (status, got) = upgrade(&d, "/ws", "hello");
        assert_eq!(status, 101, "upgrade {i}: {got}");
        assert!(got.ends_with("hello"), "{got}");
    }
    assert_eq!(live.requests(), 4);
    assert_eq!(
        live.max_attempt(),
        2,
        "a retried upgrade says it is attempt 2"
    );

    // The workload's AuthorizationPolicy applies to an upgrade as to any request.
    let (status, got) = upgrade(&d, "/admin/ws", "hello");
    assert_eq!(status, 403, "{got}");
    assert_eq!(
        live.requests(),
        4,
        "the denied upgrade never reached the workload"
    );

    // The route timeout bounds the wait for the 101 (the backend answers after 3 s).
    let (status, got) = upgrade(&d, "/sleep/3000", "hello");
    assert_eq!(status, 504, "{got}");

    // Each upgraded connection is logged once it ends: its bytes both ways, the endpoint.
    let lines = eventually(Duration::from_secs(10), || {
        let lines: Vec<serde_json::Value> = d
            .log_text()
            .lines()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["response_code"] == 101)
            .collect();
        (lines.len() == 4).then_some(lines)
    })
    .expect("four access-log lines for the upgrades");
    for l in &lines {
        assert_eq!(l["bytes_received"], 5, "{l}");
        // The backend's line about the request, then the echo.
        assert!(l["bytes_sent"].as_u64().unwrap() > 5, "{l}");
        assert_eq!(l["upstream_host"], live.addr.to_string(), "{l}");
    }
    let timed_out = r#""response_code":504,"response_flags":"UT""#;
    let logged = eventually(Duration::from_secs(5), || {
        d.log_text().contains(timed_out).then_some(())
    });
    assert!(logged.is_some(), "{}", d.log_text());
}

/// As Envoy counts an upgrade: an open WebSocket holds a connection and an active request of
/// its cluster for its whole life, so `maxConnections` makes the next one wait as a pending
/// request, and one past `http1MaxPendingRequests` is shed (503 UO).
#[test]
fn open_websockets_count_against_the_connection_pool() {
    if !ebpf_available("websocket_pool") {
        return;
    }
    let (v1, v2) = support::mesh::two_backends();
    let routes = "  - route:\n    - destination:\n        host: reviews\n        subset: v1\n";
    let policy = "    connectionPool:\n      tcp:\n        maxConnections: 1\n      http:\n        http1MaxPendingRequests: 1\n";
    let d = support::mesh::start(
        "websocket-pool",
        313,
        &reviews_with(&v1, &v2, policy, routes),
    );
    let status = |c: std::process::Child| raw_result(&c.wait_with_output().unwrap());
    let first = hold_websocket(&d, "2");
    let upgraded = eventually(Duration::from_secs(5), || {
        (v1.requests() == 1).then_some(())
    });
    assert!(upgraded.is_some(), "the first upgrade reached the workload");
    // Waits for the first one's connection, then gets its own.
    let second = hold_websocket(&d, "4");
    let pending = eventually(Duration::from_secs(5), || {
        let metrics = d.get("/metrics");
        let waiting = ["cluster=\"outbound|9080|v1|"];
        support::has_series(
            &metrics,
            "meshd_upstream_rq_pending_active",
            &waiting,
            Some("1"),
        )
        .then_some(())
    });
    assert!(pending.is_some(), "the second waits: {}", d.get("/metrics"));
    let (code, got) = status(hold_websocket(&d, "2"));
    assert_eq!(code, 503, "the third is shed: {got}");
    assert!(
        got.to_lowercase().contains("x-envoy-overloaded: true"),
        "{got}"
    );
    assert_eq!(status(first).0, 101);
    assert_eq!(status(second).0, 101, "the pending one got through");
    assert_eq!(v1.requests(), 2);
}

/// An open WebSocket is load on its endpoint for least request, as Envoy counts an upgrade as
/// an active request until it ends: plain requests meanwhile go to the other endpoint.
#[test]
fn an_open_websocket_is_load_for_least_request() {
    if !ebpf_available("websocket_least_request") {
        return;
    }
    let (v1, v2) = support::mesh::two_backends();
    let routes = "  - route:\n    - destination:\n        host: reviews\n";
    let policy = "    loadBalancer:\n      simple: LEAST_REQUEST\n";
    let d = support::mesh::start(
        "websocket-least-request",
        314,
        &reviews_with(&v1, &v2, policy, routes),
    );
    let ws = hold_websocket(&d, "4");
    let upgraded = eventually(Duration::from_secs(3), || {
        (v1.requests() + v2.requests() == 1).then_some(())
    });
    assert!(upgraded.is_some(), "the upgrade reached an endpoint");
    let (busy, idle) = if v1.requests() == 1 {
        (&v1, &v2)
    } else {
        (&v2, &v1)
    };
    for _ in 0..6 {
        assert_eq!(
            support::mesh::status(&d, "http://reviews:9080/whoami"),
            "200"
        );
    }
    assert_eq!(
        (busy.requests(), idle.requests()),
        (1, 6),
        "every request went to the endpoint without the WebSocket"
    );
    ws.wait_with_output().unwrap();
}

/// An upgrade whose 101 does not come within its route's timeout counts against the endpoint
/// for outlier detection, as a timed-out request does in Envoy (a gateway error): the silent
/// endpoint is ejected, and the upgrades after it all reach the one that answers.
#[test]
fn an_upgrade_that_times_out_counts_against_its_endpoint_for_outlier_detection() {
    if !ebpf_available("websocket_outlier") {
        return;
    }
    let live = HttpBackend::start("127.0.0.1:0");
    // Accepts connections and never answers on them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let held: Vec<_> = silent.incoming().collect();
        drop(held);
    });
    let outlier = "trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}, outlierDetection: {consecutiveGatewayErrors: 1, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 100}}";
    let yaml = policies(live.addr.port(), silent_port).replace(
        "trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}",
        outlier,
    );
    assert!(yaml.contains("consecutiveGatewayErrors"));
    let dir = support::mesh::config_dir("websocket-outlier", &yaml);
    let d = Daemon::start(
        "websocket-outlier",
        315,
        &["--config", dir.to_str().unwrap()],
    );

    // Round robin reaches the silent endpoint within two upgrades; its wait ends at the
    // route's 1 s timeout.
    let mut timed_out = false;
    for _ in 0..2 {
        let (status, got) = upgrade(&d, "/sleep/1", "hello");
        if status == 504 {
            timed_out = true;
            break;
        }
        assert_eq!(status, 101, "{got}");
    }
    assert!(timed_out, "an upgrade reached the silent endpoint");
    let ejected = r#"meshd_outlier_events_total{cluster="outbound|9080||ws.default.svc.cluster.local",event="ejected"}"#;
    assert_eq!(d.metric(ejected), 1.0, "{}", d.get("/stats/outliers"));
    for i in 0..4 {
        let (status, got) = upgrade(&d, "/sleep/1", "hello");
        assert_eq!(status, 101, "upgrade {i} after the ejection: {got}");
    }
}

/// A WebSocket still open when the drain's deadline cuts it is logged with the bytes it
/// carried until then, as Envoy logs a stream it resets at the end of its drain.
#[test]
fn a_websocket_cut_at_the_drain_deadline_is_logged_with_its_bytes() {
    if !ebpf_available("websocket_drain") {
        return;
    }
    let live = HttpBackend::start("127.0.0.1:0");
    let dir = support::mesh::config_dir(
        "websocket-drain",
        &policies(live.addr.port(), live.addr.port()),
    );
    let mut d = Daemon::start(
        "websocket-drain",
        316,
        &["--config", dir.to_str().unwrap(), "--drain-timeout", "1s"],
    );
    let mut client = upgrade_command(&d, "/ws", "hello", "15")
        .arg("--hold")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The client says when the echo came back through the upgraded connection (or ends).
    let mut said = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(client.stderr.as_mut().unwrap()),
        &mut said,
    )
    .unwrap();
    assert_eq!(said, "echoed\n", "the upgraded connection echoed");
    let stopping = std::time::Instant::now();
    assert!(d.stop().success());
    assert!(
        stopping.elapsed() < Duration::from_secs(8),
        "the drain's deadline ended the open WebSocket"
    );
    let (status, got) = raw_result(&client.wait_with_output().unwrap());
    assert_eq!(status, 101, "{got}");
    assert!(got.ends_with("hello"), "{got}");
    let line = d
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["response_code"] == 101)
        .unwrap_or_else(|| panic!("no line for the WebSocket: {}", d.log_text()));
    assert!(
        line["duration_ms"].as_f64().unwrap() >= 1000.0,
        "open until the drain's deadline: {line}"
    );
    assert_eq!(line["bytes_received"], 5, "{line}");
    assert!(line["bytes_sent"].as_u64().unwrap() > 5, "{line}");
    assert_eq!(line["upstream_host"], live.addr.to_string(), "{line}");
}
