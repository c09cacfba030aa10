//! DestinationRule connection pools on captured traffic: Istio's circuit-breaking task, pending
//! and request overflow (503, flag UO, `x-envoy-overloaded`), the cluster-wide retry budget,
//! connect timeout, keepalive, idle timeout and requests per connection, lowering a limit
//! under load, and outlier detection's panic mode.

mod support;

use std::{
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use support::{
    Daemon, ebpf_available,
    http_backend::HttpBackend,
    mesh::{config_dir, curl_many, policies, start, two_backends},
};

/// The raw client's JSON result of sending `send` (Python escapes) to reviews' VIP as the
/// managed workload `default/raw`, reading for up to `timeout` seconds.
fn raw_to_reviews(d: &Daemon, send: &str, timeout: &str) -> String {
    const RAW: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/clients/raw_http.py");
    let args = [
        "python3",
        RAW,
        "--addr",
        "127.0.0.50:9080",
        "--send",
        send,
        "--timeout",
        timeout,
    ];
    let out = d.exec("default/raw", &args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const TO_ALL: &str = "  - route:\n    - destination:\n        host: reviews\n";

/// `policies` with `pool` (indented under `trafficPolicy:`) as the DestinationRule's policy.
fn with_policy(v1: &HttpBackend, v2: &HttpBackend, routes: &str, policy: &str) -> String {
    policies(v1, v2, routes).replace(
        "spec:\n  host: reviews\n  subsets:",
        &format!("spec:\n  host: reviews\n  trafficPolicy:\n{policy}  subsets:"),
    )
}

/// Only v1 serves: v2's endpoint is dropped from the ServiceEntry.
fn only_v1(yaml: String, v2: &HttpBackend) -> String {
    yaml.replace(
        &format!(
            "  - address: 127.0.0.1\n    ports:\n      http: {}\n    labels:\n      version: v2\n",
            v2.addr.port()
        ),
        "",
    )
}

/// Starts `n` managed curls at once, each sending `per_client` GETs to `url` over one
/// keep-alive connection.
fn clients(d: &Daemon, n: usize, per_client: usize, url: &str) -> Vec<Child> {
    (0..n)
        .map(|_| {
            let mut args = vec![
                "curl",
                "-sS",
                "--max-time",
                "30",
                "--resolve",
                "reviews:9080:127.0.0.50",
                "-w",
                "%{http_code} %header{x-envoy-overloaded}\\n",
            ];
            for _ in 0..per_client {
                args.extend(["-o", "/dev/null", url]);
            }
            d.exec("default/productpage", &args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect()
}

/// Every client's output lines: `CODE OVERLOADED-HEADER`.
fn results(children: Vec<Child>) -> Vec<String> {
    children
        .into_iter()
        .flat_map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "curl: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| l.trim().to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn count(lines: &[String], prefix: &str) -> usize {
    lines.iter().filter(|l| l.starts_with(prefix)).count()
}

/// A WorkloadEntry for v1's endpoint: a mesh workload on this node, which meshd reports as
/// the destination too.
fn workload_entry(v1: &HttpBackend) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: reviews-v1, namespace: default}}\nspec: {{address: 127.0.0.1, ports: {{http: {}}}, labels: {{app: reviews}}}}\n",
        v1.addr.port()
    )
}

/// The requests `istio_requests_total` counts by `reporter` with `flags`.
fn reported(text: &str, reporter: &str, flags: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .filter(|l| l.contains(&format!(r#"reporter="{reporter}""#)))
        .filter(|l| l.contains(&format!(r#"response_flags="{flags}""#)))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>()
}

const ISTIO_CIRCUIT_BREAKER: &str = "    connectionPool:\n      tcp:\n        maxConnections: 1\n      http:\n        http1MaxPendingRequests: 1\n        maxRequestsPerConnection: 1\n";

#[test]
fn istios_circuit_breaking_task() {
    if !ebpf_available("cb_task") {
        return;
    }
    let (v1, v2) = two_backends();
    let yaml = only_v1(with_policy(&v1, &v2, TO_ALL, ISTIO_CIRCUIT_BREAKER), &v2);
    let d = start("cb-task", 90, &yaml);
    // One client never overflows: one request in flight at a time.
    let one = results(clients(&d, 1, 30, "http://reviews:9080/whoami"));
    assert_eq!(count(&one, "200"), 30, "{one:?}");
    // Two callers: a request that arrives while the other caller's request still waits for
    // its new connection (one per request) is the second pending one, and is shed with 503
    // and x-envoy-overloaded, as in Istio's task.
    // On a loaded host the two callers may not overlap at all; a batch is tried up to three
    // times, and every request of every batch must be served or shed.
    let mut shed_total = 0;
    for _ in 0..3 {
        let many = results(clients(&d, 2, 100, "http://reviews:9080/whoami"));
        let shed = count(&many, "503 true");
        assert_eq!(count(&many, "200") + shed, 200, "{many:?}");
        shed_total += shed;
        if shed > 0 {
            break;
        }
    }
    assert!(shed_total > 0, "some requests overflow");
    assert!(
        d.metric(r#"meshd_overflow_total{limit="http1MaxPendingRequests",name="outbound|9080||reviews.default.svc.cluster.local",scope="cluster"}"#)
            >= shed_total as f64
    );
    // Every request got its own upstream connection (maxRequestsPerConnection: 1).
    assert_eq!(v1.accepted(), v1.requests());
    assert!(d.log_shows("\"response_flags\":\"UO\""));
    assert_eq!(v2.requests(), 0);
}

/// A reload that raises `maxConnections` under load: requests that began under the old limit
/// keep to the new one. They used to close every idle connection the new requests had
/// opened (counting them over the old limit), churning thousands of connections a second.
#[test]
fn a_raised_connection_limit_applies_to_requests_already_waiting() {
    if !ebpf_available("cb_raise") {
        return;
    }
    let (v1, v2) = two_backends();
    let pool = |n: u32| {
        let policy = format!("    connectionPool:\n      tcp:\n        maxConnections: {n}\n");
        only_v1(with_policy(&v1, &v2, TO_ALL, &policy), &v2)
    };
    let dir = config_dir("cb-raise", &pool(4));
    let d = Daemon::start("cb-raise", 281, &["--config", dir.to_str().unwrap()]);
    let load = d
        .exec(
            "default/productpage",
            &[
                "wrk",
                "-t1",
                "-c32",
                "-d3s",
                "-H",
                "Host: reviews",
                "http://127.0.0.50:9080/sleep/5",
            ],
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    std::fs::write(dir.join("reviews.yaml"), pool(64)).unwrap();
    support::eventually(Duration::from_secs(5), || {
        (d.metric(r#"meshd_config_reload_total{result="success"}"#) >= 1.0).then_some(())
    })
    .expect("reload applied");
    let out = load.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("requests in"), "{text}");
    // At most 4 connections, then at most 32 more (one per wrk connection), and a few a
    // closed connection's request may replace.
    let opened = v1.accepted();
    assert!(
        opened <= 48,
        "{opened} upstream connections for 32 clients:\n{text}"
    );
}

/// A reload's new `http.idleTimeout` applies at once: the idle connection opened under the
/// hour is closed by the reload, and the next one closes when idle for the new timeout.
#[test]
fn a_new_idle_timeout_applies_after_a_reload() {
    if !ebpf_available("cb_new_idle") {
        return;
    }
    let (v1, v2) = two_backends();
    let with_idle = |idle: &str| {
        let policy = format!("    connectionPool:\n      http:\n        idleTimeout: {idle}\n");
        only_v1(with_policy(&v1, &v2, TO_ALL, &policy), &v2)
    };
    let dir = config_dir("cb-new-idle", &with_idle("1h"));
    let d = Daemon::start("cb-new-idle", 282, &["--config", dir.to_str().unwrap()]);
    let get = || support::mesh::status(&d, "http://reviews:9080/whoami");
    assert_eq!(get(), "200");
    std::fs::write(dir.join("reviews.yaml"), with_idle("1s")).unwrap();
    support::eventually(Duration::from_secs(5), || {
        (d.metric(r#"meshd_config_reload_total{result="success"}"#) >= 1.0).then_some(())
    })
    .expect("reload applied");
    // The idle connection went with the reload (as Envoy drains a changed cluster); the one
    // opened now lives under the new timeout.
    support::eventually(Duration::from_secs(2), || {
        (get() == "200" && v1.accepted() == 2).then_some(())
    })
    .unwrap_or_else(|| panic!("accepted {}", v1.accepted()));
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(get(), "200");
    assert_eq!(
        v1.accepted(),
        3,
        "idle past the new timeout: closed, and a new one opened"
    );
}

/// As Envoy's connection pool: an endpoint without any connection gets one even when the
/// cluster is at `maxConnections`, so a request the balancer sent there does not wait for
/// another endpoint's connection; the limit still holds for endpoints that have one.
#[test]
fn an_endpoint_without_a_connection_gets_one_past_max_connections() {
    if !ebpf_available("cb_per_endpoint") {
        return;
    }
    let (v1, v2) = two_backends();
    let policy = "    loadBalancer:\n      simple: ROUND_ROBIN\n    connectionPool:\n      tcp:\n        maxConnections: 1\n      http:\n        http1MaxPendingRequests: 1\n";
    let dir = config_dir("cb-per-endpoint", &with_policy(&v1, &v2, TO_ALL, policy));
    let d = Daemon::start("cb-per-endpoint", 312, &["--config", dir.to_str().unwrap()]);
    // Round robin: v1, v2, v1. Each endpoint gets its connection; the third request waits
    // for v1's, the one pending request allowed.
    let lines = results(clients(&d, 3, 1, "http://reviews:9080/sleep/600"));
    assert_eq!(count(&lines, "200"), 3, "{lines:?}");
    assert_eq!((v1.accepted(), v2.accepted()), (1, 1));
    // A fourth at once finds both endpoints' connections busy and the pending place taken.
    let lines = results(clients(&d, 4, 1, "http://reviews:9080/sleep/600"));
    assert_eq!(count(&lines, "200"), 3, "{lines:?}");
    assert_eq!(count(&lines, "503 true"), 1, "{lines:?}");
}

#[test]
fn a_full_pool_sheds_at_once_and_a_lower_limit_applies_without_dropping_requests() {
    if !ebpf_available("cb_limits") {
        return;
    }
    let (v1, v2) = two_backends();
    let policy = "    connectionPool:\n      tcp:\n        maxConnections: 1\n      http:\n        http1MaxPendingRequests: 1\n";
    // v1 is a mesh workload on this node: meshd reports what reaches it as its destination.
    let yaml = only_v1(with_policy(&v1, &v2, TO_ALL, policy), &v2) + &workload_entry(&v1);
    let dir = config_dir("cb-limits", &yaml);
    let d = Daemon::start("cb-limits", 91, &["--config", dir.to_str().unwrap()]);
    // Four slow requests at once: one is served, one waits for the connection, two are shed
    // without waiting.
    let start = Instant::now();
    let lines = results(clients(&d, 4, 1, "http://reviews:9080/sleep/600"));
    one_served_and_one_waiting(&lines);
    assert!(start.elapsed() < Duration::from_secs(5));
    // The shed requests never left meshd: the source reports them (UO), the workload's
    // destination side only the two it served.
    let text = support::eventually(Duration::from_secs(5), || {
        let text = d.get("/metrics");
        (reported(&text, "destination", "-") == 2.0).then_some(text)
    })
    .unwrap_or_else(|| d.get("/metrics"));
    assert_eq!(reported(&text, "source", "UO"), 2.0, "{text}");
    assert_eq!(reported(&text, "destination", "UO"), 0.0, "{text}");
    assert_eq!(reported(&text, "destination", "-"), 2.0, "{text}");

    // Without limits, then a reload lowers http2MaxRequests to 1 while 3 requests are in
    // flight: those finish, and new requests meet the new limit.
    let free = only_v1(
        with_policy(
            &v1,
            &v2,
            TO_ALL,
            "    loadBalancer:\n      simple: ROUND_ROBIN\n",
        ),
        &v2,
    );
    std::fs::write(dir.join("reviews.yaml"), &free).unwrap();
    support::eventually(Duration::from_secs(5), || {
        (d.metric(r#"meshd_config_reload_total{result="success"}"#) >= 1.0).then_some(())
    })
    .expect("reload applied");
    let in_flight = clients(&d, 3, 1, "http://reviews:9080/sleep/1500");
    std::thread::sleep(Duration::from_millis(400));
    let limited = "    connectionPool:\n      http:\n        http2MaxRequests: 1\n";
    std::fs::write(
        dir.join("reviews.yaml"),
        only_v1(with_policy(&v1, &v2, TO_ALL, limited), &v2),
    )
    .unwrap();
    support::eventually(Duration::from_secs(5), || {
        (d.metric(r#"meshd_config_reload_total{result="success"}"#) >= 2.0).then_some(())
    })
    .expect("reload applied");
    let later = results(clients(&d, 3, 1, "http://reviews:9080/sleep/300"));
    let first = results(in_flight);
    assert_eq!(
        count(&first, "200"),
        3,
        "in-flight requests survive: {first:?}"
    );
    assert!(
        count(&later, "503 true") >= 1,
        "the lower limit applies: {later:?}"
    );
    assert!(
        d.metric(r#"meshd_overflow_total{limit="http2MaxRequests",name="outbound|9080||reviews.default.svc.cluster.local",scope="cluster"}"#)
            >= 1.0
    );

    // The three connections of the requests above sit idle in the pool. A reload back to one
    // connection and one pending request applies to them too: they are closed rather than
    // reused past the limit, and four requests at once meet it as at the start.
    std::fs::write(dir.join("reviews.yaml"), &yaml).unwrap();
    support::eventually(Duration::from_secs(5), || {
        (d.metric(r#"meshd_config_reload_total{result="success"}"#) >= 3.0).then_some(())
    })
    .expect("reload applied");
    let lines = results(clients(&d, 4, 1, "http://reviews:9080/sleep/600"));
    one_served_and_one_waiting(&lines);
}

/// Four requests at once under one connection and one pending request: one is served, one
/// waits for the connection and is served after it, the others are shed.
fn one_served_and_one_waiting(lines: &[String]) {
    assert_eq!(count(lines, "200"), 2, "{lines:?}");
    assert_eq!(count(lines, "503 true"), 2, "{lines:?}");
}

/// As Envoy's pool, `http2MaxRequests` bounds the requests that have a connection: requests
/// waiting for one are pending, bounded by `http1MaxPendingRequests` alone, and are served in
/// turn.
#[test]
fn requests_waiting_for_a_connection_are_pending_not_active() {
    if !ebpf_available("cb_pending") {
        return;
    }
    let (v1, v2) = two_backends();
    let policy = "    connectionPool:\n      tcp:\n        maxConnections: 1\n      http:\n        http1MaxPendingRequests: 10\n        http2MaxRequests: 1\n";
    let yaml = only_v1(with_policy(&v1, &v2, TO_ALL, policy), &v2);
    let dir = config_dir("cb-pending", &yaml);
    let d = Daemon::start("cb-pending", 342, &["--config", dir.to_str().unwrap()]);
    let lines = results(clients(&d, 3, 1, "http://reviews:9080/sleep/300"));
    assert_eq!(count(&lines, "200"), 3, "served in turn: {lines:?}");
    assert_eq!(v1.most_concurrent_sleeps(), 1, "one at a time");
}

/// Requests waiting in the pool for the one connection `maxConnections` allows have not reached
/// the endpoint: as in Envoy, their per-try timeout starts once they have the connection, and
/// no timeout of theirs counts against the endpoint's health. Five 250 ms requests at once under
/// a 400 ms per-try timeout are served in turn, and the endpoint is not ejected.
#[test]
fn waiting_for_a_pooled_connection_is_not_part_of_the_per_try_timeout() {
    if !ebpf_available("cb_pool_wait") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = "  - retries:\n      attempts: 1\n      perTryTimeout: 400ms\n      retryOn: 5xx\n    route:\n    - destination:\n        host: reviews\n";
    let policy = "    connectionPool:\n      tcp:\n        maxConnections: 1\n    outlierDetection:\n      consecutive5xxErrors: 2\n      interval: 1s\n      baseEjectionTime: 30s\n      maxEjectionPercent: 100\n";
    let yaml = only_v1(with_policy(&v1, &v2, routes, policy), &v2);
    let dir = config_dir("cb-pool-wait", &yaml);
    let d = Daemon::start("cb-pool-wait", 349, &["--config", dir.to_str().unwrap()]);
    let lines = results(clients(&d, 5, 1, "http://reviews:9080/sleep/250"));
    assert_eq!(count(&lines, "200"), 5, "served in turn: {lines:?}");
    assert_eq!(v1.requests(), 5, "one attempt each");
    let outliers = d.get("/stats/outliers");
    assert!(!outliers.contains("\"ejected\":true"), "{outliers}");
    let lines = results(clients(&d, 1, 1, "http://reviews:9080/whoami"));
    assert_eq!(count(&lines, "200"), 1, "still served: {lines:?}");
}

#[test]
fn max_retries_bounds_retries_in_flight_across_the_cluster() {
    if !ebpf_available("cb_retries") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = "  - retries:\n      attempts: 2\n      retryOn: 5xx\n    route:\n    - destination:\n        host: reviews\n";
    let policy = "    connectionPool:\n      http:\n        maxRetries: 1\n";
    let d = start(
        "cb-retries",
        92,
        &(only_v1(with_policy(&v1, &v2, routes, policy), &v2) + &workload_entry(&v1)),
    );
    // Three requests fail slowly at the same time: one of them gets the single retry token
    // (and keeps it for its second retry); the others give up with their first answer.
    let lines = results(clients(&d, 3, 1, "http://reviews:9080/slow-503/400"));
    assert_eq!(count(&lines, "503"), 3, "{lines:?}");
    assert_eq!(v1.requests(), 5, "3 first attempts and 2 retries");
    assert_eq!(
        d.metric(r#"meshd_overflow_total{limit="maxRetries",name="outbound|9080||reviews.default.svc.cluster.local",scope="cluster"}"#),
        2.0
    );
    assert!(d.log_text().contains("retry not attempted"));
    // A retry the breaker refused is flagged UO, as Envoy's router flags it.
    support::eventually(Duration::from_secs(5), || {
        let uo = d
            .log_text()
            .matches(r#""response_code":503,"response_flags":"UO""#)
            .count();
        (uo == 2).then_some(())
    })
    .unwrap_or_else(|| panic!("two UO lines: {}", d.log_text()));
    // The breaker was the client side's: the workload, as the destination, saw plain 503s,
    // one per attempt it answered (the replaced ones too).
    let text = d.get("/metrics");
    assert_eq!(reported(&text, "source", "UO"), 2.0, "{text}");
    assert_eq!(reported(&text, "destination", "UO"), 0.0, "{text}");
    assert_eq!(reported(&text, "destination", "-"), 5.0, "{text}");
}

/// A `retryBudget` bounds the retries in flight by a share of the active requests (at least
/// `minRetryConcurrency`), in place of `maxRetries`, as Envoy's retry budget does.
#[test]
fn a_retry_budget_bounds_retries_by_the_active_requests() {
    if !ebpf_available("cb_retry_budget") {
        return;
    }
    let routes = "  - retries:\n      attempts: 2\n      retryOn: 5xx\n    route:\n    - destination:\n        host: reviews\n";
    // Three requests failing slowly at once, under a budget: how many attempts v1 saw.
    let run = |name: &str, slot: u16, percent: u32, min: u32| {
        let budget = format!(
            "    connectionPool:\n      http:\n        maxRetries: 100\n    retryBudget:\n      percent: {percent}\n      minRetryConcurrency: {min}\n"
        );
        let (v1, v2) = two_backends();
        let d = start(
            name,
            slot,
            &only_v1(with_policy(&v1, &v2, routes, &budget), &v2),
        );
        let lines = results(clients(&d, 3, 1, "http://reviews:9080/slow-503/400"));
        assert_eq!(count(&lines, "503"), 3, "{lines:?}");
        (v1.requests(), d)
    };
    // 20% of three active requests is none, so the minimum of one applies, and maxRetries
    // (100) does not: one request gets the single retry, as under `maxRetries: 1`.
    let (attempts, d) = run("cb-retry-budget", 212, 20, 1);
    assert_eq!(attempts, 5, "3 first attempts and 2 retries");
    assert_eq!(
        d.metric(r#"meshd_overflow_total{limit="retryBudget",name="outbound|9080||reviews.default.svc.cluster.local",scope="cluster"}"#),
        2.0
    );
    assert!(
        d.log_text()
            .contains("is at its retryBudget (20% of active requests, at least 1)")
    );
    drop(d);
    // Room for each of the three: every request retries twice. (100% alone would not be
    // enough: as in Envoy, a request waiting out its backoff is not active, so how many are at
    // the moment a retry is decided depends on timing; the share itself is unit-tested.)
    let (attempts, _d) = run("cb-retry-budget-all", 213, 100, 3);
    assert_eq!(attempts, 9, "every request retried twice");
}

#[test]
fn connection_settings_connect_timeout_requests_per_connection_and_idle_timeout() {
    if !ebpf_available("cb_conn") {
        return;
    }
    let (v1, v2) = two_backends();
    // v1: one request per connection; v2: connections idle for more than 1 s are closed.
    let routes = "  - match:\n    - headers:\n        x-subset:\n          exact: v2\n    route:\n    - destination:\n        host: reviews\n        subset: v2\n  - route:\n    - destination:\n        host: reviews\n        subset: v1\n";
    let yaml = policies(&v1, &v2, routes).replace(
        "  - name: v1\n    labels:\n      version: v1\n  - name: v2\n    labels:\n      version: v2\n",
        "  - name: v1\n    labels:\n      version: v1\n    trafficPolicy:\n      connectionPool:\n        http:\n          maxRequestsPerConnection: 1\n  - name: v2\n    labels:\n      version: v2\n    trafficPolicy:\n      connectionPool:\n        http:\n          idleTimeout: 1s\n        tcp:\n          maxConnectionDuration: 1s\n",
    );
    // A third service whose endpoint never completes a handshake: a listener with a full
    // accept queue that never accepts drops further SYNs.
    let black_hole =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    black_hole
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    black_hole.listen(0).unwrap();
    let hole = black_hole.local_addr().unwrap().as_socket().unwrap();
    let _fillers: Vec<_> = (0..3)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&hole, Duration::from_millis(200)).ok()
        })
        .collect();
    let yaml = format!(
        "{yaml}---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: slow\nspec:\n  hosts: [slow.example]\n  addresses: [127.0.0.51]\n  ports:\n  - {{number: 80, name: http, protocol: HTTP}}\n  resolution: STATIC\n  endpoints:\n  - address: 127.0.0.1\n    ports: {{http: {}}}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: slow\nspec:\n  host: slow.example\n  trafficPolicy:\n    connectionPool:\n      tcp:\n        connectTimeout: 300ms\n",
        hole.port()
    );
    let d = start("cb-conn", 93, &yaml);

    curl_many(&d, "http://reviews:9080/whoami", 5, "%{http_code}\\n");
    assert_eq!(
        (v1.requests(), v1.accepted()),
        (5, 5),
        "one request per connection"
    );

    let v2_twice = |d: &Daemon| {
        support::mesh::curl(
            d,
            &[
                "-H",
                "x-subset: v2",
                "-o",
                "/dev/null",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}\\n",
                "http://reviews:9080/whoami",
                "http://reviews:9080/whoami",
            ],
        )
    };
    v2_twice(&d);
    assert_eq!(
        (v2.requests(), v2.accepted()),
        (2, 1),
        "keep-alive reuses the connection"
    );
    std::thread::sleep(Duration::from_millis(2500));
    v2_twice(&d);
    assert_eq!(v2.accepted(), 2, "the idle connection was closed after 1 s");
    // v2 is also under tcp.maxConnectionDuration: 1s. With requests every 300 ms it is never
    // idle for a second, yet its connection is replaced once it is a second old.
    let aged = v2.accepted();
    let began = Instant::now();
    while began.elapsed() < Duration::from_millis(3500) {
        v2_twice(&d);
        std::thread::sleep(Duration::from_millis(300));
    }
    let opened = v2.accepted() - aged;
    assert!(
        opened >= 2,
        "a new connection about every second over 3.5 s of steady use: {opened}"
    );

    let start = Instant::now();
    let code = support::mesh::curl(
        &d,
        &[
            "--resolve",
            "slow.example:80:127.0.0.51",
            "-w",
            "\n%{http_code}",
            "http://slow.example/",
        ],
    );
    // Envoy's reset reason for a connect that timed out.
    assert!(
        code.ends_with("reset reason: connection timeout\n503"),
        "{code}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "the DestinationRule's 300ms connect timeout applied, not the 10s default"
    );
    assert!(d.log_text().contains("timed out after 300ms"));
}

#[test]
fn tcp_max_connections_and_keepalive_apply_to_opaque_tcp() {
    if !ebpf_available("cb_tcp") {
        return;
    }
    let echo = support::backend::Backend::echo("127.0.0.1:0");
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: db\nspec:\n  hosts: [db.example]\n  addresses: [127.0.0.52]\n  ports:\n  - {{number: 5432, name: tcp, protocol: TCP}}\n  resolution: STATIC\n  endpoints:\n  - address: 127.0.0.1\n    ports: {{tcp: {}}}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: db\nspec:\n  host: db.example\n  trafficPolicy:\n    connectionPool:\n      tcp:\n        maxConnections: 1\n        tcpKeepalive:\n          time: 77s\n          interval: 5s\n",
        echo.addr.port()
    );
    let d = start("cb-tcp", 94, &yaml);
    // The first connection stays open (the client holds it for 3 s) ...
    let mut holder = d
        .exec(
            "default/client",
            &["python3", "-c", "import socket,time; s=socket.create_connection(('127.0.0.52',5432)); s.sendall(b'hi'); s.recv(2); time.sleep(3); s.sendall(b'ok'); print(s.recv(2).decode())"],
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    // ... meshd's upstream socket carries the keepalive timer ...
    let ss = std::process::Command::new("ss")
        .args([
            "-tno",
            "state",
            "established",
            &format!("( dport = :{} )", echo.addr.port()),
        ])
        .output()
        .unwrap();
    let ss = String::from_utf8_lossy(&ss.stdout);
    assert!(
        ss.contains("timer:(keepalive,1min"),
        "keepalive of 77s on the upstream socket: {ss}"
    );
    // ... and a second connection is over maxConnections: reset.
    let second = d
        .exec(
            "default/client",
            &["python3", "-c", "import socket; s=socket.create_connection(('127.0.0.52',5432)); s.sendall(b'hi'); print(repr(s.recv(2)))"],
        )
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&second.stdout),
        String::from_utf8_lossy(&second.stderr)
    );
    // Reset before any byte is echoed. (With the sockmap on, the kernel reports the reset to a
    // blocking recv() as EAGAIN rather than ECONNRESET.)
    assert!(
        !said.contains("b'hi'")
            && ["b''", "ConnectionResetError", "BlockingIOError"]
                .iter()
                .any(|e| said.contains(e)),
        "{said}"
    );
    let out = holder.wait().unwrap();
    assert!(out.success());
    assert!(
        d.metric(r#"meshd_overflow_total{limit="maxConnections",name="outbound|5432||db.example",scope="cluster"}"#)
            >= 1.0
    );
    // Refused by the breaker before an endpoint was chosen, as Envoy's TCP proxy: no host.
    assert!(
        (d.log_text().lines()).any(
            |l| l.contains(r#""response_flags":"UO""#) && l.contains(r#""upstream_host":null"#)
        ),
        "{}",
        d.log_text()
    );
    let _ = holder.kill();
}

#[test]
fn panic_mode_ignores_ejections_below_min_health_percent() {
    if !ebpf_available("panic") {
        return;
    }
    let failing = support::backend::Backend::http_503("127.0.0.1:0");
    let (healthy, v2) = two_backends();
    // Ejecting the failing endpoint would leave 50% healthy, under minHealthPercent 60: panic
    // mode, so both endpoints keep getting traffic.
    let policy = "    loadBalancer:\n      simple: ROUND_ROBIN\n    outlierDetection:\n      consecutive5xxErrors: 2\n      interval: 1s\n      baseEjectionTime: 30s\n      maxEjectionPercent: 100\n      minHealthPercent: 60\n";
    let routes =
        "  - retries:\n      attempts: 0\n    route:\n    - destination:\n        host: reviews\n";
    let yaml = with_policy(&healthy, &v2, routes, policy).replace(
        &format!("http: {}\n", v2.addr.port()),
        &format!("http: {}\n", failing.addr.port()),
    );
    let d = start("panic", 95, &yaml);
    let codes = curl_many(&d, "http://reviews:9080/whoami", 20, "%{http_code}\\n");
    let failures = codes.iter().filter(|c| *c == "503").count();
    assert!(
        (8..=12).contains(&failures),
        "round robin over both endpoints despite the ejection: {codes:?}"
    );
    assert_eq!(healthy.requests(), 20 - failures);
    assert!(
        d.metric(r#"meshd_outlier_events_total{cluster="outbound|9080||reviews.default.svc.cluster.local",event="ejected"}"#)
            >= 1.0,
        "the endpoint was ejected, and the ejection ignored"
    );
}

/// The 99th percentile and the number of non-200 answers of `n` sequential GETs by the quiet
/// workload, each timed by curl.
fn quiet_run(d: &Daemon, n: usize) -> (f64, usize) {
    let mut args = vec![
        "curl",
        "-sS",
        "--max-time",
        "30",
        "-w",
        "%{http_code} %{time_total}\\n",
    ];
    for _ in 0..n {
        args.extend(["-o", "/dev/null", "http://127.0.0.50:9080/whoami"]);
    }
    let out = d.exec("default/quiet", &args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut times = Vec::new();
    let mut errors = 0;
    for line in text.lines() {
        let (code, t) = line.split_once(' ').unwrap();
        if code != "200" {
            errors += 1;
        }
        times.push(t.parse::<f64>().unwrap() * 1e3);
    }
    assert_eq!(times.len(), n, "{text}");
    times.sort_by(f64::total_cmp);
    (times[n * 99 / 100 - 1], errors)
}

#[test]
fn a_flooding_workload_cannot_starve_its_neighbour() {
    if !ebpf_available("fairness") {
        return;
    }
    // Both workloads call one service whose pool admits 60 requests at a time. Without
    // fairness the flood takes all 60 and the quiet workload's requests overflow (UO); with
    // each workload held to 40 requests in flight, the quiet one always finds room.
    let (v1, v2) = two_backends();
    let policy = "    connectionPool:\n      http:\n        http2MaxRequests: 60\n";
    let yaml = only_v1(with_policy(&v1, &v2, TO_ALL, policy), &v2);
    let dir = config_dir("fairness", &yaml);
    let limits = std::env::var("MESHD_TEST_FAIRNESS").unwrap_or("64,40".into());
    let (conns, reqs) = limits.split_once(',').unwrap();
    let d = Daemon::start(
        "fairness",
        96,
        &[
            "--config",
            dir.to_str().unwrap(),
            "--workload-max-connections",
            conns,
            "--workload-max-requests",
            reqs,
        ],
    );
    quiet_run(&d, 20);
    let (baseline, baseline_errors) = quiet_run(&d, 300);
    assert_eq!(baseline_errors, 0);
    // The noisy workload keeps 200 connections busy with slow requests.
    let flood = d
        .exec(
            "default/noisy",
            &[
                "wrk",
                "-t1",
                "-c200",
                "-d8s",
                "http://127.0.0.50:9080/sleep/200",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let (flooded, errors) = quiet_run(&d, 300);
    let flood = flood.wait_with_output().unwrap();
    eprintln!(
        "fairness: quiet p99 {baseline:.2} ms alone, {flooded:.2} ms under the flood; {errors} errors\n{}",
        String::from_utf8_lossy(&flood.stdout)
    );
    let shed = |kind: &str, w: &str| {
        d.metric(&format!(
            r#"meshd_overflow_total{{limit="{kind}",name="{w}",scope="workload"}}"#
        ))
    };
    assert!(shed("requests", "default/noisy") + shed("connections", "default/noisy") > 0.0);

    assert_eq!(shed("requests", "default/quiet"), 0.0);
    assert_eq!(errors, 0, "the quiet workload sees no errors");
    // The flood shares the machine's CPUs with the quiet client, meshd and the backend, and
    // wrk reconnects at once when its excess connections are reset, so latency rises. The
    // stated bound: p99 within 20x the quiet baseline or 150 ms, whichever is more. (Without
    // fairness the same flood fails about 40% of the quiet workload's requests with UO.)
    assert!(
        flooded <= (baseline * 20.0).max(150.0),
        "quiet p99 {flooded:.2} ms under the flood vs {baseline:.2} ms alone"
    );
}

/// At `maxConnections: 1` with one stream per HTTP/2 connection, a second request waits as
/// a pending one and a third overflows (503 UO), as with Envoy; the waiting one must not keep
/// a worker busy (it spun, starving the admin API and every other request).
#[test]
fn requests_waiting_at_the_http2_connection_limit_wait_without_spinning() {
    if !ebpf_available("cb_h2_wait") {
        return;
    }
    let (v1, v2) = two_backends();
    let policy = "    connectionPool:\n      tcp:\n        maxConnections: 1\n      http:\n        maxConcurrentStreams: 1\n        http1MaxPendingRequests: 1\n";
    let yaml = only_v1(with_policy(&v1, &v2, TO_ALL, policy), &v2)
        .replace("protocol: HTTP\n", "protocol: HTTP2\n");
    // One worker thread: a spinning request would take it from everything else.
    let dir = support::mesh::config_dir("cb-h2-wait", &yaml);
    let config = dir.to_str().unwrap();
    let d = Daemon::start(
        "cb-h2-wait",
        278,
        &["--config", config, "--worker-threads", "1"],
    );
    let cpu_seconds = || support::cpus::seconds(d.pid());
    let cpu_before = cpu_seconds();
    let mut children = clients(&d, 1, 1, "http://reviews:9080/sleep/1500");
    std::thread::sleep(Duration::from_millis(200));
    children.extend(clients(&d, 1, 1, "http://reviews:9080/sleep/1500"));
    std::thread::sleep(Duration::from_millis(200));
    // While the second waits: the admin API answers, and a third request overflows.
    let ready_at = Instant::now();
    assert!(d.get("/ready").contains("ready"), "the admin API answers");
    assert!(ready_at.elapsed() < Duration::from_millis(500));
    let third = results(clients(&d, 1, 1, "http://reviews:9080/sleep/1500"));
    assert_eq!(third, ["503 true"], "the third overflows");
    let mut served = results(children);
    served.sort();
    assert_eq!(
        served,
        ["200", "200"],
        "the first and the waiting one are served"
    );
    let cpu = cpu_seconds() - cpu_before;
    assert!(
        cpu < 1.5,
        "meshd used {cpu:.2} CPU seconds over about 3 s of waiting"
    );
}

/// Many requests waiting at `maxConnections` for HTTP/2 streams: each that found no stream
/// claims the opening of a connection it cannot open, and waits. Claims dropped after a wait
/// used to wake the others, which dropped theirs, without end: both cores busy until the
/// queue drained.
#[test]
fn many_requests_waiting_for_http2_streams_wait_without_spinning() {
    if !ebpf_available("cb_h2_many") {
        return;
    }
    let (v1, v2) = two_backends();
    let policy = "    connectionPool:\n      tcp:\n        maxConnections: 1\n      http:\n        maxConcurrentStreams: 2\n        http1MaxPendingRequests: 1000\n";
    let yaml = only_v1(with_policy(&v1, &v2, TO_ALL, policy), &v2)
        .replace("protocol: HTTP\n", "protocol: HTTP2\n");
    let d = start("cb-h2-many", 285, &yaml);
    let cpu_seconds = || support::cpus::seconds(d.pid());
    let before = cpu_seconds();
    // 30 streams of 300 ms, two at a time: about 4.5 s of waiting.
    let out = d
        .exec(
            "default/productpage",
            &[
                "h2load",
                "-n",
                "30",
                "-c",
                "1",
                "-m",
                "30",
                "http://127.0.0.50:9080/sleep/300",
            ],
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("30 succeeded, 0 failed"), "{text}");
    let cpu = cpu_seconds() - before;
    assert!(
        cpu < 2.0,
        "meshd used {cpu:.2} CPU seconds while requests waited:\n{text}"
    );
}

#[test]
fn max_concurrent_streams_idle_timeout_and_max_duration_apply_to_http2_upstreams() {
    if !ebpf_available("cb_h2") {
        return;
    }
    let (v1, v2) = two_backends();
    let policy = "    connectionPool:\n      tcp:\n        maxConnectionDuration: 1s\n      http:\n        maxConcurrentStreams: 2\n        idleTimeout: 1s\n";
    // An HTTP2 port: its upstream requests go as HTTP/2.
    let yaml = only_v1(with_policy(&v1, &v2, TO_ALL, policy), &v2)
        .replace("protocol: HTTP\n", "protocol: HTTP2\n");
    let d = start("cb-h2", 115, &yaml);
    // Ten streams at once on one HTTP/2 client connection, each held 300 ms by the backend:
    // with two streams per upstream connection, meshd opens at least five.
    let url = "http://reviews:9080/sleep/300";
    let mut args = vec![
        "--http2-prior-knowledge",
        "--parallel",
        "--parallel-immediate",
        "--parallel-max",
        "10",
        "-w",
        "%{http_code} %{http_version}\\n",
    ];
    for _ in 0..10 {
        args.extend(["-o", "/dev/null", url]);
    }
    let out = support::mesh::curl(&d, &args);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 10, "{out}");
    assert!(lines.iter().all(|l| *l == "200 2"), "{out}");
    assert_eq!(v1.requests(), 10);
    let opened = v1.accepted();
    assert!(
        (5..=10).contains(&opened),
        "at most 2 streams per upstream connection: {opened} connections for 10 streams"
    );
    // Reused while busy, closed when idle for more than 1 s.
    std::thread::sleep(Duration::from_millis(2500));
    let one = support::mesh::curl(
        &d,
        &[
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            url,
        ],
    );
    assert_eq!(one, "200");
    assert_eq!(
        v1.accepted(),
        opened + 1,
        "every idle HTTP/2 connection was closed; the request opened a new one"
    );
    // tcp.maxConnectionDuration: 1s. With a request every 300 ms the connection never idles
    // for a second, yet it takes no new stream once it is a second old.
    let aged = v1.accepted();
    let began = Instant::now();
    while began.elapsed() < Duration::from_millis(3500) {
        let code = support::mesh::curl(
            &d,
            &[
                "--http2-prior-knowledge",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "http://reviews:9080/whoami",
            ],
        );
        assert_eq!(code, "200");
        std::thread::sleep(Duration::from_millis(300));
    }
    let renewed = v1.accepted() - aged;
    assert!(
        renewed >= 2,
        "a new HTTP/2 connection about every second over 3.5 s of steady use: {renewed}"
    );
}

/// An HTTP/2 request cancelled while its stream is open (here by the route's timeout) gives
/// the stream back: with one connection allowed and one stream on it, the requests after it
/// still get through, on that same connection.
#[test]
fn cancelled_http2_requests_give_their_stream_back() {
    if !ebpf_available("cb_h2_cancel") {
        return;
    }
    let (v1, v2) = two_backends();
    // An HTTP port whose DestinationRule keeps the client's protocol (HTTP/2) upstream.
    let policy = "    connectionPool:\n      tcp:\n        maxConnections: 1\n      http:\n        maxConcurrentStreams: 1\n        useClientProtocol: true\n";
    let routes = "  - route:\n    - destination:\n        host: reviews\n    timeout: 300ms\n";
    let yaml = only_v1(with_policy(&v1, &v2, routes, policy), &v2);
    let d = start("cb-h2-cancel", 169, &yaml);
    let get = |path: &str| {
        support::mesh::curl(
            &d,
            &[
                "--http2-prior-knowledge",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("http://reviews:9080{path}"),
            ],
        )
    };
    for _ in 0..3 {
        assert_eq!(
            get("/sleep/2000"),
            "504",
            "the route timeout cancels the request"
        );
    }
    assert_eq!(get("/whoami"), "200");
    assert_eq!(v1.accepted(), 1, "one upstream connection throughout");
}

/// The route timeout lasts until the response is complete, as Envoy's does: a response still
/// streaming when it expires is cut off, over HTTP/1.1 and HTTP/2, and logged with flag UT; one
/// that ends in time is untouched.
#[test]
fn the_route_timeout_cuts_off_a_response_still_streaming() {
    if !ebpf_available("timeout_body") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = "  - route:\n    - destination:\n        host: reviews\n        subset: v1\n    timeout: 1s\n";
    let d = start("timeout-body", 179, &policies(&v1, &v2, routes));
    let get = |path: &str, h2: bool| {
        let url = format!("http://reviews:9080{path}");
        let mut args = vec!["curl", "-sS", "--max-time", "10"];
        args.extend(["--resolve", "reviews:9080:127.0.0.50"]);
        if h2 {
            args.push("--http2-prior-knowledge");
        }
        args.push(&url);
        let t = Instant::now();
        let out = d.exec("default/productpage", &args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            t.elapsed(),
        )
    };
    for h2 in [false, true] {
        let (ok, body, took) = get("/drip/100", h2);
        assert!(ok, "h2={h2}: a response that ends in time: {body}");
        assert_eq!(body, "first\nsecond\n");
        let (ok, body, took_cut) = get("/drip/3000", h2);
        assert!(!ok, "h2={h2}: cut off, not complete: {body}");
        assert_eq!(body, "first\n", "h2={h2}: what came before the timeout");
        assert!(
            took_cut >= Duration::from_millis(900) && took_cut < Duration::from_millis(2500),
            "h2={h2}: cut at the route timeout, not at the body's end: {took_cut:?} ({took:?})"
        );
    }
    let log = d.log_text();
    assert!(
        log.contains("the route timeout expired during the response"),
        "{log}"
    );
    assert!(log.contains("\"response_flags\":\"UT\""), "{log}");
}

/// `connectionPool.tcp.idleTimeout` on an opaque connection (a port declared TCP): open while
/// it has been quiet for less, closed on both sides once quiet for longer. TCP keepalive
/// probes carry no data, so a client's probes do not keep a quiet connection open.
#[test]
fn a_quiet_tcp_connection_is_closed_after_its_idle_timeout() {
    if !ebpf_available("tcp_idle") {
        return;
    }
    let (v1, v2) = two_backends();
    let policy = "    connectionPool:\n      tcp:\n        idleTimeout: 2s\n";
    let yaml = only_v1(with_policy(&v1, &v2, TO_ALL, policy), &v2)
        .replace("protocol: HTTP\n", "protocol: TCP\n");
    let d = start("tcp-idle", 191, &yaml);
    // One request on a connection, then quiet for `wait` seconds (with keepalive probes every
    // second when asked): is it still open?
    let script = r#"
import socket, sys, time
s = socket.create_connection(("127.0.0.50", 9080), timeout=10)
if len(sys.argv) > 2:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
s.sendall(b"GET /whoami HTTP/1.1\r\nHost: reviews\r\n\r\n")
assert s.recv(65536).startswith(b"HTTP/1.1 200")
time.sleep(float(sys.argv[1]))
s.settimeout(0.2)
try:
    print("closed" if s.recv(1) == b"" else "data")
except socket.timeout:
    print("open")
except ConnectionResetError:
    print("closed")
"#;
    let after = |args: &[&str]| {
        let mut argv = vec!["python3", "-c", script];
        argv.extend_from_slice(args);
        let out = d.exec("default/productpage", &argv).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(after(&["0.5"]), "open", "quiet for less than the timeout");
    assert_eq!(
        after(&["3.5"]),
        "closed",
        "quiet for longer: meshd closed it"
    );
    assert_eq!(
        after(&["3.5", "keepalive"]),
        "closed",
        "keepalive probes are not traffic"
    );
    assert!(d.log_text().contains("idle timeout"), "{}", d.log_text());
}

#[test]
fn a_busy_tcp_connection_is_closed_at_its_maximum_duration() {
    if !ebpf_available("tcp_max_duration") {
        return;
    }
    let (v1, v2) = two_backends();
    let policy = "    connectionPool:\n      tcp:\n        maxConnectionDuration: 1s\n";
    let yaml = only_v1(with_policy(&v1, &v2, TO_ALL, policy), &v2)
        .replace("protocol: HTTP\n", "protocol: TCP\n");
    let d = start("tcp-max-duration", 271, &yaml);
    // A request every 200 ms for 3 s on one connection: never idle, closed at 1 s.
    let script = r#"
import socket, time
s = socket.create_connection(("127.0.0.50", 9080), timeout=5)
start = time.time()
try:
    while time.time() - start < 3:
        s.sendall(b"GET /whoami HTTP/1.1\r\nHost: reviews\r\n\r\n")
        if not s.recv(65536):
            break
        time.sleep(0.2)
except OSError:
    pass
print(round(time.time() - start, 1))
"#;
    let out = d
        .exec("default/productpage", &["python3", "-c", script])
        .output()
        .unwrap();
    let lived: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(lived < 2.5, "open {lived} s under a 1 s maximum");
    support::eventually(Duration::from_secs(5), || {
        (d.log_text())
            .contains("maximum duration (connectionPool.tcp.maxConnectionDuration)")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("{}", d.log_text()));
    // Flagged DT, as Envoy flags a connection past its maximum duration.
    assert!(d.log_shows("\"response_flags\":\"DT\""), "{}", d.log_text());
}

/// A gRPC request's own deadline (`grpc-timeout`), as Envoy takes it under Istio's routes
/// (`max_grpc_timeout`): the route's timeout when shorter, so a call still unanswered when it
/// passes gets the route timeout's answer (trailers-only UNAVAILABLE, `upstream request
/// timeout`, flag UT); one answered in time is untouched, and a deadline of 0 is none.
#[test]
fn a_grpc_deadline_ends_the_call_as_the_route_timeout() {
    if !ebpf_available("grpc_deadline") {
        return;
    }
    let (v1, v2) = two_backends();
    let yaml =
        only_v1(policies(&v1, &v2, TO_ALL), &v2).replace("protocol: HTTP\n", "protocol: GRPC\n");
    let d = start("grpc-deadline", 192, &yaml);
    let call = |timeout: &str, path: &str| {
        support::mesh::curl(
            &d,
            &[
                "--http2-prior-knowledge",
                "-H",
                "content-type: application/grpc",
                "-H",
                &format!("grpc-timeout: {timeout}"),
                "-D",
                "-",
                "-o",
                "/dev/null",
                &format!("http://reviews:9080{path}"),
            ],
        )
        .to_ascii_lowercase()
    };
    let begun = Instant::now();
    let late = call("300m", "/sleep/3000");
    assert!(
        begun.elapsed() < Duration::from_millis(2500),
        "cut at the deadline, not after the backend's 3 s"
    );
    assert!(late.starts_with("http/2 200"), "{late}");
    assert!(late.contains("grpc-status: 14"), "UNAVAILABLE: {late}");
    assert!(late.contains("upstream request timeout"), "{late}");
    assert!(d.log_text().contains("flags=UT"), "{}", d.log_text());
    let in_time = call("5S", "/sleep/100");
    assert!(in_time.starts_with("http/2 200"), "{in_time}");
    assert!(!in_time.contains("grpc-status: 14"), "{in_time}");
    let none = call("0m", "/sleep/300");
    assert!(
        none.starts_with("http/2 200") && !none.contains("grpc-status"),
        "a deadline of 0 is none: {none}"
    );
}

/// As Envoy under Istio (whose routes set `max_grpc_timeout` to their timeout), the server of a
/// gRPC request learns the time it has in `grpc-timeout`: the shorter of the caller's deadline
/// and the route timeout, or the per-try timeout when shorter still; a retry, what is left.
#[test]
fn a_grpc_request_tells_its_server_the_time_it_has() {
    if !ebpf_available("grpc_timeout_header") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = "  - match:\n    - uri:\n        prefix: /try\n    rewrite:\n      uri: /whoami\n    timeout: 2s\n    retries:\n      attempts: 1\n      perTryTimeout: 500ms\n    route:\n    - destination:\n        host: reviews\n  - match:\n    - uri:\n        prefix: /again\n    rewrite:\n      uri: /slow-fail-first/800\n    timeout: 2s\n    retries:\n      attempts: 2\n      perTryTimeout: 1500ms\n      retryOn: 5xx\n    route:\n    - destination:\n        host: reviews\n  - timeout: 2s\n    route:\n    - destination:\n        host: reviews\n";
    let yaml =
        only_v1(policies(&v1, &v2, routes), &v2).replace("protocol: HTTP\n", "protocol: GRPC\n");
    let d = start("grpc-timeout-header", 276, &yaml);
    let seen = |path: &str, headers: &[&str]| {
        let mut args = vec![
            "--http2-prior-knowledge",
            "-H",
            "content-type: application/grpc",
        ];
        for h in headers {
            args.extend(["-H", h]);
        }
        let url = format!("http://reviews:9080{path}");
        args.push(&url);
        let out = support::mesh::curl(&d, &args);
        let v: serde_json::Value =
            serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
        v["grpc_timeout"].as_str().unwrap_or_default().to_string()
    };
    assert_eq!(
        seen("/whoami", &["grpc-timeout: 60S"]),
        "2000m",
        "the route's is shorter"
    );
    assert_eq!(
        seen("/whoami", &["grpc-timeout: 1S"]),
        "1000m",
        "the caller's is shorter"
    );
    assert_eq!(
        seen("/whoami", &[]),
        "2000m",
        "a call without a deadline gets the route's"
    );
    assert_eq!(
        seen("/try", &["grpc-timeout: 60S"]),
        "500m",
        "the per-try timeout"
    );
    // A retry has what is left of the route's 2 s once its first attempt took 800 ms, less
    // than its 1.5 s per-try timeout, as Envoy recomputes it for each retry.
    let retried: u64 = seen("/again", &[])
        .strip_suffix('m')
        .and_then(|ms| ms.parse().ok())
        .expect("milliseconds");
    assert!(
        (900..1200).contains(&retried),
        "2000 ms less the first attempt's 800: {retried}"
    );
}

/// Without `http.idleTimeout`, Istio lets `tcp.idleTimeout` bound an idle HTTP upstream
/// connection too: after 1 s idle the next request opens a new one.
#[test]
fn tcp_idle_timeout_also_closes_idle_http_upstream_connections() {
    if !ebpf_available("cb_tcp_idle") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = "  - route:\n    - destination:\n        host: reviews\n";
    let policy = "    connectionPool:\n      tcp:\n        idleTimeout: 1s\n";
    let d = start(
        "cb-tcp-idle",
        221,
        &only_v1(with_policy(&v1, &v2, routes, policy), &v2),
    );
    assert_eq!(
        support::mesh::status(&d, "http://reviews:9080/whoami"),
        "200"
    );
    assert_eq!(
        support::mesh::status(&d, "http://reviews:9080/whoami"),
        "200"
    );
    assert_eq!(v1.accepted(), 1, "reused while fresh");
    std::thread::sleep(Duration::from_millis(1800));
    assert_eq!(
        support::mesh::status(&d, "http://reviews:9080/whoami"),
        "200"
    );
    assert_eq!(v1.accepted(), 2, "closed after 1 s idle");
}

/// A DestinationRule changed at a reload closes its idle upstream connections, as Envoy drains
/// a replaced cluster's pool: a lowered `idleTimeout` cannot be outlived by a connection that
/// sat idle under the old one, and the next request opens one under the new settings.
#[test]
fn a_changed_destination_rule_closes_its_idle_upstream_connections() {
    if !ebpf_available("idle_reload") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = "  - route:\n    - destination:\n        host: reviews\n";
    let policy =
        |idle: &str| format!("    connectionPool:\n      http:\n        idleTimeout: {idle}\n");
    let before = only_v1(with_policy(&v1, &v2, routes, &policy("1h")), &v2);
    let after = only_v1(with_policy(&v1, &v2, routes, &policy("1s")), &v2);
    let dir = support::mesh::config_dir("idle-reload", &before);
    let d = support::Daemon::start("idle-reload", 286, &["--config", dir.to_str().unwrap()]);
    let whoami = || support::mesh::status(&d, "http://reviews:9080/whoami");
    assert_eq!(whoami(), "200");
    assert_eq!(whoami(), "200");
    assert_eq!(v1.accepted(), 1, "reused while idle under 1h");
    std::fs::write(dir.join("reviews.yaml"), &after).unwrap();
    support::eventually(Duration::from_secs(5), || {
        (d.metric(r#"meshd_config_reload_total{result="success"}"#) >= 1.0).then_some(())
    })
    .expect("reload applied");
    // The reload's own task closes the idle connection; the next request opens another.
    support::eventually(Duration::from_secs(2), || {
        (whoami() == "200" && v1.accepted() == 2).then_some(())
    })
    .unwrap_or_else(|| panic!("accepted {}\n{}", v1.accepted(), d.log_text()));
    assert_eq!(whoami(), "200");
    assert_eq!(v1.accepted(), 2, "the new connection is reused while fresh");
}

/// A request body the client breaks (a malformed chunk, or the client leaving mid-upload) is
/// the client's failure: 400 with flag DPE, or DC, never 503 UC, and never a strike against
/// the endpoint for outlier detection, which would let any client eject a healthy backend.
#[test]
fn a_request_body_the_client_breaks_is_not_held_against_the_endpoint() {
    if !ebpf_available("client_body") {
        return;
    }
    let (v1, v2) = two_backends();
    let policy = "    outlierDetection:\n      consecutive5xxErrors: 1\n      interval: 1s\n      baseEjectionTime: 30s\n      maxEjectionPercent: 100\n";
    let yaml = only_v1(with_policy(&v1, &v2, TO_ALL, policy), &v2);
    let d = start("client-body", 251, &yaml);
    let head = "POST /whoami HTTP/1.1\\r\\nHost: reviews:9080\\r\\n";
    let malformed =
        format!("{head}Transfer-Encoding: chunked\\r\\n\\r\\n3\\r\\nabcXX0\\r\\n\\r\\n");
    // More than the retry buffer, so it streams upstream, then the client goes quiet and
    // leaves.
    let cut_short = format!(
        "{}Content-Length: 200000\\r\\n\\r\\n{}",
        head.replace("/whoami", "/echo"),
        "a".repeat(100_000)
    );
    // Within the retry buffer, so meshd waits for all of it, and the client leaves first.
    let buffered_cut_short = format!("{head}Content-Length: 100\\r\\n\\r\\nhello");
    for (send, timeout) in [
        (&malformed, "3"),
        (&malformed, "3"),
        (&cut_short, "1"),
        (&buffered_cut_short, "1"),
    ] {
        let got = raw_to_reviews(&d, send, timeout);
        assert!(!got.contains("\"status\": 503"), "{got}");
    }
    support::eventually(Duration::from_secs(5), || {
        d.log_text().contains("flags=DPE").then_some(())
    })
    .unwrap_or_else(|| panic!("no DPE line; log:\n{}", d.log_text()));
    support::eventually(Duration::from_secs(5), || {
        d.log_text().contains("flags=DC").then_some(())
    })
    .unwrap_or_else(|| panic!("no DC line; log:\n{}", d.log_text()));
    // The client that left gets no answer: code 0, as Envoy records it, not the 400 meshd
    // would have written.
    support::eventually(Duration::from_secs(5), || {
        d.log_shows(
            r#""path":"/whoami","protocol":"HTTP/1.1","response_code":0,"response_flags":"DC""#,
        )
        .then_some(())
    })
    .unwrap_or_else(|| panic!("no code-0 DC record; log:\n{}", d.log_text()));
    assert!(!d.log_text().contains("flags=UC"), "{}", d.log_text());
    assert_eq!(
        d.metric(r#"meshd_outlier_events_total{cluster="outbound|9080||reviews.default.svc.cluster.local",event="ejected"}"#),
        0.0
    );
    let codes = curl_many(&d, "http://reviews:9080/whoami", 3, "%{http_code}\\n");
    assert_eq!(codes, ["200", "200", "200"], "the endpoint still serves");
}

/// As Envoy's circuit breaker: an endpoint the balancer picks gets one HTTP/2 connection even
/// past `tcp.maxConnections`. HTTP/2 connections stay open while idle, so without it every
/// request to the second endpoint waited for the first one's connection to close, forever.
#[test]
fn each_endpoint_gets_an_http2_connection_past_max_connections() {
    if !ebpf_available("cb_h2_first") {
        return;
    }
    let (v1, v2) = two_backends();
    let policy = "    loadBalancer:\n      simple: ROUND_ROBIN\n    connectionPool:\n      tcp:\n        maxConnections: 1\n";
    let yaml =
        with_policy(&v1, &v2, TO_ALL, policy).replace("protocol: HTTP\n", "protocol: HTTP2\n");
    let d = start("cb-h2-first", 253, &yaml);
    let codes = curl_many(&d, "http://reviews:9080/whoami", 6, "%{http_code}\\n");
    assert_eq!(codes, ["200"; 6], "round robin over both endpoints");
    assert_eq!((v1.requests(), v2.requests()), (3, 3));
    assert_eq!(
        (v1.accepted(), v2.accepted()),
        (1, 1),
        "one connection each"
    );
}

/// As Envoy's, the route timeout and the per-try timeout run from the end of the request: an
/// upload slower than the timeout, held whole for retries (60 KB) or streamed (300 KB), is
/// answered, over HTTP/1.1 and HTTP/2. The upstream's answer then still has the full timeout.
#[test]
fn the_route_timeout_starts_when_the_request_has_arrived() {
    if !ebpf_available("timeout_upload") {
        return;
    }
    let (v1, v2) = two_backends();
    // `/per-try` has a per-try timeout instead, which runs from the request's end too.
    let routes = "  - match:\n    - uri:\n        prefix: /per-try\n    rewrite:\n      uri: /echo\n    retries:\n      attempts: 2\n      perTryTimeout: 1s\n    route:\n    - destination:\n        host: reviews\n        subset: v1\n  - route:\n    - destination:\n        host: reviews\n        subset: v1\n    timeout: 1s\n";
    let d = start("timeout-upload", 254, &policies(&v1, &v2, routes));
    let dir = std::env::temp_dir().join("meshd-timeout-upload");
    std::fs::create_dir_all(&dir).unwrap();
    for (size, rate, path) in [
        (60_000, "30K", "/echo"),
        (300_000, "150K", "/echo"),
        (60_000, "30K", "/per-try"),
        (300_000, "150K", "/per-try"),
    ] {
        let file = dir.join(format!("{size}.bin"));
        std::fs::write(&file, vec![b'x'; size]).unwrap();
        for h2 in [false, true] {
            let upload = format!("@{}", file.display());
            let mut args = vec!["curl", "-sS", "--max-time", "20", "-o", "/dev/null"];
            args.extend(["-w", "%{http_code}", "--limit-rate", rate]);
            args.extend(["--resolve", "reviews:9080:127.0.0.50", "--data-binary"]);
            args.push(&upload);
            if h2 {
                args.push("--http2-prior-knowledge");
            }
            let url = format!("http://reviews:9080{path}");
            args.push(&url);
            let t = Instant::now();
            let out = d.exec("default/uploader", &args).output().unwrap();
            let code = String::from_utf8_lossy(&out.stdout).into_owned();
            assert_eq!(
                code,
                "200",
                "{path}, {size} bytes, h2={h2}, {:?}: {}",
                t.elapsed(),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                t.elapsed() > Duration::from_millis(1500),
                "slower than the timeout"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// gRPC as Envoy treats it: a trailers-only answer counts for outlier detection as the HTTP
/// status its grpc-status stands for (UNAVAILABLE as 503), so an endpoint failing every call
/// is ejected; and meshd's own error answer to a gRPC call (here "no healthy upstream") is a
/// trailers-only gRPC answer a gRPC client can read, not an HTTP 503.
#[test]
fn grpc_failures_eject_endpoints_and_local_errors_answer_in_grpc() {
    if !ebpf_available("grpc_outlier") {
        return;
    }
    let (v1, v2) = two_backends();
    let policy = "    outlierDetection:\n      consecutive5xxErrors: 2\n      interval: 1s\n      baseEjectionTime: 30s\n      maxEjectionPercent: 100\n";
    let routes =
        "  - retries:\n      attempts: 0\n    route:\n    - destination:\n        host: reviews\n";
    let yaml = only_v1(with_policy(&v1, &v2, routes, policy), &v2);
    let d = start("grpc-outlier", 255, &yaml);
    let call = || {
        support::mesh::curl(
            &d,
            &[
                "-i",
                "--http2-prior-knowledge",
                "-H",
                "content-type: application/grpc",
                "-H",
                "te: trailers",
                "http://reviews:9080/grpc-only/14",
            ],
        )
        .to_lowercase()
    };
    for _ in 0..2 {
        let head = call();
        assert!(head.contains("grpc-message: from the backend"), "{head}");
    }
    assert_eq!(v1.requests(), 2);
    support::eventually(Duration::from_secs(3), || {
        (d.metric(r#"meshd_outlier_events_total{cluster="outbound|9080||reviews.default.svc.cluster.local",event="ejected"}"#) >= 1.0)
            .then_some(())
    })
    .expect("the endpoint failing every call is ejected");
    let head = call();
    assert_eq!(v1.requests(), 2, "the ejected endpoint gets no call");
    assert!(head.starts_with("http/2 200"), "{head}");
    assert!(head.contains("grpc-status: 14"), "{head}");
    assert!(head.contains("grpc-message: no healthy upstream"), "{head}");
}

/// A burst of HTTP/2 requests to a cold pool shares one upstream connection, as Envoy's
/// pending streams wait for the connection being opened, instead of opening one each.
#[test]
fn a_burst_to_a_cold_pool_shares_one_http2_connection() {
    if !ebpf_available("cb_h2_burst") {
        return;
    }
    let (v1, v2) = two_backends();
    let yaml =
        only_v1(policies(&v1, &v2, TO_ALL), &v2).replace("protocol: HTTP\n", "protocol: HTTP2\n");
    let d = start("cb-h2-burst", 257, &yaml);
    let mut args = vec![
        "--http2-prior-knowledge",
        "--parallel",
        "--parallel-immediate",
        "--parallel-max",
        "20",
        "-w",
        "%{http_code}\\n",
    ];
    for _ in 0..20 {
        args.extend(["-o", "/dev/null", "http://reviews:9080/sleep/200"]);
    }
    let out = support::mesh::curl(&d, &args);
    assert_eq!(out.lines().filter(|l| *l == "200").count(), 20, "{out}");
    assert_eq!(v1.requests(), 20);
    assert_eq!(v1.accepted(), 1, "one upstream connection for the burst");
}

#[test]
fn a_connection_past_the_workloads_share_is_shed_and_logged() {
    if !ebpf_available("fairness_shed_log") {
        return;
    }
    let echo = support::backend::Backend::echo("127.0.0.1:0");
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: db\nspec:\n  hosts: [db.example]\n  addresses: [127.0.0.53]\n  ports:\n  - {{number: 5432, name: tcp, protocol: TCP}}\n  resolution: STATIC\n  endpoints:\n  - address: 127.0.0.1\n    ports: {{tcp: {}}}\n",
        echo.addr.port()
    );
    let dir = support::mesh::config_dir("fairness-shed-log", &yaml);
    let d = Daemon::start(
        "fairness-shed-log",
        270,
        &[
            "--config",
            dir.to_str().unwrap(),
            "--workload-max-connections",
            "1",
        ],
    );
    // One connection held open, then a second to the service's VIP: it waits for the share
    // (10 s), then is reset.
    let script = "import socket\na = socket.create_connection(('127.0.0.53', 5432))\na.sendall(b'a'); a.recv(10)\nb = socket.create_connection(('127.0.0.53', 5432), timeout=20)\ntry:\n    b.sendall(b'b'); print(b.recv(10) or b'eof')\nexcept OSError as e:\n    print('error', e.errno)\n";
    let out = d
        .exec("default/greedy", &["python3", "-c", script])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        !said.contains("b'b'"),
        "the second connection was carried: {said}"
    );
    let line = support::eventually(Duration::from_secs(5), || {
        (d.log_text().lines())
            .find(|l| l.contains(r#""response_flags":"UO""#))
            .map(str::to_string)
    })
    .unwrap_or_else(|| panic!("no UO line:\n{}", d.log_text()));
    assert!(
        line.contains("default/greedy") && line.contains("connection shed"),
        "{line}"
    );
    // Logged as the service's connection, from its accept: the wait for a share is in its
    // duration.
    let entry: serde_json::Value = serde_json::from_str(&line[line.find('{').unwrap()..]).unwrap();
    assert_eq!(
        entry["upstream_cluster"], "outbound|5432||db.example",
        "{line}"
    );
    assert_eq!(
        entry["downstream_local_address"], "127.0.0.53:5432",
        "{line}"
    );
    let waited = entry["duration_ms"].as_f64().unwrap();
    assert!(waited >= 9_000.0, "{line}");
}

/// A chunked HTTP/1.1 request that ends with trailers, to an HTTP/2 upstream: its end is its
/// trailers, so the route timeout runs from there (504 UT, not an answer 3 s later logged as a
/// client that left), and trailer fields that must not be in a trailer section (Host,
/// Content-Length) are dropped, the others passed on.
#[test]
fn a_request_that_ends_with_trailers_is_timed_from_its_end() {
    if !ebpf_available("request_trailers") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = "  - timeout: 1s\n    route:\n    - destination:\n        host: reviews\n";
    let yaml =
        only_v1(policies(&v1, &v2, routes), &v2).replace("protocol: HTTP\n", "protocol: HTTP2\n");
    let d = start("request-trailers", 337, &yaml);
    let send = |path: &str| {
        let request = format!(
            "POST {path} HTTP/1.1\\r\\nHost: reviews:9080\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n\
             5\\r\\nhello\\r\\n0\\r\\nx-checksum: abc\\r\\nhost: evil.test\\r\\ncontent-length: 50\\r\\n\\r\\n"
        );
        raw_to_reviews(&d, &request, "3")
    };
    let got = send("/sleep/3000");
    assert!(got.contains("\"status\": 504"), "{got}");
    let line = (d.log_text().lines())
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["path"] == "/sleep/3000")
        .unwrap_or_else(|| panic!("no line: {}", d.log_text()));
    assert_eq!(line["response_flags"], "UT", "{line}");
    assert!(line["duration_ms"].as_f64().unwrap() < 2900.0, "{line}");
    // The trailers that may be there reach the upstream; the others do not.
    let got = send("/echo");
    assert!(got.contains("\"status\": 200"), "{got}");
    // The echo's JSON, as the raw client quotes it: the trailer names that arrived.
    assert!(
        got.contains(r#"\"length\":5"#) && got.contains(r#"\"trailers\":[\"x-checksum\"]"#),
        "{got}"
    );
}

/// A retry goes to an endpoint no earlier attempt of the request tried, while one is left, as
/// Istio's routes ask of Envoy (`previous_hosts`): with two of three endpoints refusing
/// connections and two retries, every request reaches the live one. Avoiding only the
/// endpoint that failed last, a third attempt could go back to the first dead one: about one
/// request in six failed.
#[test]
fn a_retry_avoids_every_endpoint_the_request_tried() {
    if !ebpf_available("retry_previous_hosts") {
        return;
    }
    let live = HttpBackend::start("127.0.0.1:0");
    let dead = |_| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (d1, d2) = (dead(()), dead(()));
    let yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: tri
spec:
  hosts: [tri.test]
  addresses: [127.0.0.81]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {d1}}}}}
  - {{address: 127.0.0.1, ports: {{http: {d2}}}}}
  - {{address: 127.0.0.1, ports: {{http: {live}}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: tri
spec:
  hosts: [tri.test]
  http:
  - route:
    - destination:
        host: tri.test
    retries:
      attempts: 2
      retryOn: connect-failure
"#,
        live = live.addr.port()
    );
    let mut args = vec![
        "--resolve",
        "tri.test:80:127.0.0.81",
        "-w",
        "%{http_code}\\n",
    ];
    for _ in 0..60 {
        args.extend(["-o", "/dev/null", "http://tri.test/whoami"]);
    }
    let codes = |d: &Daemon| -> Vec<String> {
        let out = support::mesh::curl(d, &args);
        out.lines().map(str::to_string).collect()
    };
    let d = start("retry-previous-hosts", 338, &yaml);
    let got = codes(&d);
    assert_eq!(got.len(), 60);
    assert!(got.iter().all(|c| c == "200"), "{got:?}");
    assert_eq!(live.requests(), 60);
    drop(d);
    // `retryIgnorePreviousHosts: false` turns the predicate off: a retry may go back to a
    // dead endpoint, and some requests run out of retries on them (each did with p = 8/27).
    let off = yaml.replace(
        "      retryOn: connect-failure\n",
        "      retryOn: connect-failure\n      retryIgnorePreviousHosts: false\n",
    );
    let d = start("retry-previous-hosts-off", 340, &off);
    let got = codes(&d);
    assert!(got.iter().any(|c| c == "503"), "{got:?}");
}

/// An HTTP/2 upstream connection's `idleTimeout` counts from the end of its last stream, as
/// Envoy's: after a 1.5 s request, a connection idle for 0.5 s of its 1 s is reused, and one
/// idle for longer than 1 s is not (a new one opens), however recently the sweep ran.
#[test]
fn an_http2_connection_is_idle_from_the_end_of_its_last_stream() {
    if !ebpf_available("h2_idle_timeout") {
        return;
    }
    let (v1, v2) = two_backends();
    let policy = "    connectionPool:\n      http:\n        idleTimeout: 1s\n";
    let yaml = only_v1(with_policy(&v1, &v2, TO_ALL, policy), &v2)
        .replace("protocol: HTTP\n", "protocol: HTTP2\n");
    let d = start("h2-idle-timeout", 339, &yaml);
    let get = |path: &str| support::mesh::status(&d, &format!("http://reviews:9080{path}"));
    assert_eq!(get("/sleep/1500"), "200");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(get("/whoami"), "200");
    assert_eq!(
        v1.accepted(),
        1,
        "idle for 0.5 s after a long stream: reused"
    );
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(get("/whoami"), "200");
    assert_eq!(v1.accepted(), 2, "idle for 1.3 s of 1 s: a new connection");
}

/// As Envoy's, a per-try timeout bounds the wait for an answer's head, never a response
/// already under way: a streamed request's answer that streams longer than `perTryTimeout`
/// (a gRPC server stream, say) runs to its end. (It was cut at the per-try timeout.)
#[test]
fn a_per_try_timeout_never_cuts_a_response_under_way() {
    if !ebpf_available("per_try_stream") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = "  - retries:\n      attempts: 2\n      perTryTimeout: 500ms\n    route:\n    - destination:\n        host: reviews\n        subset: v1\n";
    let d = start("per-try-stream", 347, &policies(&v1, &v2, routes));
    // A chunked body is streamed upstream (not held for retries); so is an HTTP/2 one of no
    // declared length, read from stdin.
    for h2 in [false, true] {
        let mut args = vec!["curl", "-sS", "--max-time", "10"];
        args.extend(["--resolve", "reviews:9080:127.0.0.50"]);
        if h2 {
            args.extend(["--http2-prior-knowledge", "-T", "-", "-X", "POST"]);
        } else {
            args.extend(["-H", "Transfer-Encoding: chunked", "--data-binary", "hello"]);
        }
        args.push("http://reviews:9080/drip/1500");
        let mut child = d
            .exec("default/productpage", &args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(b"hello").unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "first\nsecond\n",
            "h2={h2}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
