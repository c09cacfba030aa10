//! Telemetry end to end: Istio's standard metrics scraped by a real Prometheus, `promtool check
//! metrics` on the exposition, and JSON access-log lines with the right flags and reasons for a
//! retry, a fault, a rate limit and a request no route matches.

mod support;

use std::time::Duration;

use support::{
    Daemon,
    backend::Backend,
    client_ok, ebpf_available, eventually,
    mesh::{curl, policies, start, status, two_backends},
    prometheus::Prometheus,
};

/// The JSON access-log lines in a daemon's output.
fn access_lines(d: &Daemon) -> Vec<serde_json::Value> {
    d.log_text()
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn istio_metrics_reach_a_real_prometheus_and_pass_promtool() {
    if !ebpf_available("prometheus") {
        return;
    }
    let (v1, v2) = two_backends();
    // The client's WorkloadEntry: its labels give the derived source labels.
    let client = "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: productpage\n  namespace: default\nspec:\n  address: 127.0.0.9\n  labels:\n    app: productpage\n    version: v3\n";
    let routes = "  - route:\n    - destination:\n        host: reviews\n        subset: v1\n";
    let d = start(
        "prometheus",
        81,
        &format!("{}{client}", policies(&v1, &v2, routes)),
    );
    for _ in 0..5 {
        assert_eq!(status(&d, "http://reviews:9080/whoami"), "200");
    }
    // L4 traffic too: an echo through meshd.
    let echo = Backend::echo("127.0.0.1:0");
    d.echo("default/productpage", echo.addr, 4096);

    let text = d.get("/metrics");
    let check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(text.as_bytes())?;
            c.wait_with_output()
        })
        .expect("promtool (Debian package prometheus) must be installed");
    // promtool parses the exposition and lints names. Istio's own metric name
    // istio_request_duration_milliseconds and meshd_tcp_rtt_microseconds (named after the
    // kernel's srtt_us) trip its "use seconds" lint; dashboards depend on those names, so those
    // findings are expected, and anything else fails the test.
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let unexpected: Vec<&str> = report
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !l.starts_with("istio_request_duration_milliseconds use base unit \"seconds\""))
        .filter(|l| !l.starts_with("meshd_tcp_rtt_microseconds use base unit \"seconds\""))
        .collect();
    assert!(unexpected.is_empty(), "promtool: {report}");
    assert!(
        check.status.success() || !report.is_empty(),
        "promtool failed without a finding"
    );

    let prom = Prometheus::scraping("prometheus", d.admin);
    let q = r#"istio_requests_total{source_workload="productpage",source_workload_namespace="default",destination_service="reviews.default.svc.cluster.local",response_code="200",response_flags="-",reporter="source"}"#;
    let series = eventually(Duration::from_secs(20), || {
        let r = prom.query(q);
        (!r.is_empty()).then_some(r)
    })
    .unwrap_or_else(|| {
        panic!(
            "prometheus never returned {q}; /metrics:\n{}",
            d.get("/metrics")
        )
    });
    assert_eq!(series[0]["value"][1], "5", "{series:?}");
    let tcp = prom.query(r#"istio_tcp_sent_bytes_total{source_workload="productpage"}"#);
    assert_eq!(tcp[0]["value"][1], "4096", "{tcp:?}");
    // The labels Istio derives from the two ends, on request and TCP metrics alike.
    let derived = r#"source_app="productpage",source_version="v3",source_canonical_service="productpage",source_canonical_revision="v3",source_cluster="Kubernetes",destination_cluster="Kubernetes""#;
    let q = format!(
        r#"istio_requests_total{{{derived},destination_service_name="reviews",destination_service_namespace="default",destination_canonical_service="unknown",destination_principal="unknown"}}"#
    );
    let series = prom.query(&q);
    assert_eq!(series[0]["value"][1], "5", "{q}: {series:?}");
    let q = format!(r#"istio_tcp_sent_bytes_total{{{derived},request_protocol="tcp"}}"#);
    let tcp = prom.query(&q);
    assert_eq!(tcp[0]["value"][1], "4096", "{q}: {tcp:?}");
    // The echo's access-log line names its source's identity, as an HTTP request's does.
    let tcp_line = eventually(Duration::from_secs(5), || {
        access_lines(&d)
            .into_iter()
            .find(|l| l["protocol"] == "tcp")
    })
    .unwrap_or_else(|| panic!("no TCP line: {}", d.log_text()));
    assert!(
        tcp_line["source_principal"]
            .as_str()
            .is_some_and(|p| p.starts_with("spiffe://")),
        "{tcp_line}"
    );
    let hist =
        prom.query(r#"istio_request_duration_milliseconds_count{source_workload="productpage"}"#);
    assert_eq!(hist[0]["value"][1], "5");
}

/// A WorkloadEntry relabelled at a reload (a canary's `version` flipped) changes the derived
/// labels of the requests counted from then on; what was counted stays under the old labels.
#[test]
fn a_relabelled_workload_entry_changes_the_derived_labels_of_new_requests() {
    if !ebpf_available("relabel") {
        return;
    }
    let (v1, v2) = two_backends();
    let client = |version: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: productpage\n  namespace: default\nspec:\n  address: 127.0.0.9\n  labels:\n    app: productpage\n    version: {version}\n"
        )
    };
    let routes = "  - route:\n    - destination:\n        host: reviews\n        subset: v1\n";
    let yaml = |version: &str| format!("{}{}", policies(&v1, &v2, routes), client(version));
    let dir = support::mesh::config_dir("relabel", &yaml("v3"));
    let d = Daemon::start("relabel", 287, &["--config", dir.to_str().unwrap()]);
    for _ in 0..2 {
        assert_eq!(status(&d, "http://reviews:9080/whoami"), "200");
    }
    std::fs::write(dir.join("reviews.yaml"), yaml("v4")).unwrap();
    eventually(Duration::from_secs(5), || {
        (d.metric(r#"meshd_config_reload_total{result="success"}"#) >= 1.0).then_some(())
    })
    .expect("reload applied");
    for _ in 0..3 {
        assert_eq!(status(&d, "http://reviews:9080/whoami"), "200");
    }
    let text = d.get("/metrics");
    for (version, count) in [("v3", "2"), ("v4", "3")] {
        let labels = [
            r#"source_workload="productpage""#,
            r#"response_code="200""#,
            &format!(r#"source_version="{version}""#),
            &format!(r#"source_canonical_revision="{version}""#),
        ];
        assert!(
            support::has_series(&text, "istio_requests_total", &labels, Some(count)),
            "{version}: {count}\n{text}"
        );
    }
}

#[test]
fn access_log_lines_carry_flags_and_reasons() {
    if !ebpf_available("access_log") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = "  - match:\n    - uri:\n        prefix: /retry\n    rewrite:\n      uri: /status\n    retries:\n      attempts: 1\n      retryOn: 5xx\n    route:\n    - destination:\n        host: reviews\n        subset: v1\n  - match:\n    - uri:\n        prefix: /fault\n    fault:\n      abort:\n        httpStatus: 503\n        percentage:\n          value: 100\n    route:\n    - destination:\n        host: reviews\n        subset: v1\n  - match:\n    - uri:\n        prefix: /limited\n    name: limited\n    route:\n    - destination:\n        host: reviews\n        subset: v1\n";
    let limit = "---\napiVersion: meshd.io/v1alpha1\nkind: RateLimitPolicy\nmetadata:\n  name: one\nspec:\n  target:\n    host: reviews\n    route: limited\n  local:\n    maxTokens: 1\n    fillInterval: 1h\n";
    let d = start(
        "access-log",
        82,
        &format!("{}{limit}", policies(&v1, &v2, routes)),
    );
    let get = |path: &str| status(&d, &format!("http://reviews:9080{path}"));
    assert_eq!(get("/retry/503"), "503");
    assert_eq!(get("/fault"), "503");
    assert_eq!(get("/limited"), "200");
    assert_eq!(get("/limited"), "429");
    assert_eq!(get("/nowhere?q=1"), "404");
    // UTF-8 beyond ASCII is logged as sent, as Envoy's JSON formatter writes it.
    curl(
        &d,
        &[
            "-o",
            "/dev/null",
            "-H",
            "User-Agent: café",
            "-H",
            "X-Forwarded-For: ünï",
            "http://reviews:9080/unicode",
        ],
    );
    let lines = eventually(Duration::from_secs(5), || {
        let l = access_lines(&d);
        (l.len() >= 6).then_some(l)
    })
    .unwrap_or_else(|| panic!("access log lines missing; output:\n{}", d.log_text()));
    let find = |path: &str, code: u64| {
        lines
            .iter()
            .find(|l| {
                l["path"].as_str().is_some_and(|p| p.starts_with(path))
                    && l["response_code"] == code
            })
            .unwrap_or_else(|| panic!("no line for {path} {code}: {lines:?}"))
            .clone()
    };
    let retry = find("/retry", 503);
    assert_eq!(
        (retry["response_flags"].as_str(), retry["retries"].as_u64()),
        (Some("URX"), Some(1)),
        "{retry}"
    );
    assert!(
        retry["reason"]
            .as_str()
            .unwrap()
            .contains("retries exhausted"),
        "{retry}"
    );
    assert_eq!(retry["source_workload"], "default/productpage");
    // Istio's cluster name and request fields.
    assert_eq!(
        retry["upstream_cluster"], "outbound|9080|v1|reviews.default.svc.cluster.local",
        "{retry}"
    );
    assert_eq!(retry["authority"], "reviews:9080", "{retry}");
    assert!(
        retry["user_agent"].as_str().unwrap().starts_with("curl/"),
        "{retry}"
    );
    assert_eq!(
        retry["downstream_local_address"], "127.0.0.50:9080",
        "{retry}"
    );
    assert!(
        (retry["downstream_remote_address"].as_str().unwrap()).starts_with("127."),
        "{retry}"
    );
    let fault = find("/fault", 503);
    assert_eq!(fault["response_flags"], "FI", "{fault}");
    assert_eq!(
        fault["upstream_cluster"], "outbound|9080|v1|reviews.default.svc.cluster.local",
        "{fault}"
    );
    let limited = find("/limited", 429);
    assert_eq!(limited["response_flags"], "RL", "{limited}");
    assert!(limited["reason"].as_str().unwrap().contains("rate limited"));
    // Istio's default fields: the route's name, the upstream's time, the whole milliseconds.
    assert_eq!(limited["route_name"], "limited", "{limited}");
    let served = find("/limited", 200);
    assert_eq!(served["route_name"], "limited", "{served}");
    assert!(served["upstream_service_time"].is_u64(), "{served}");
    assert!(
        limited["upstream_service_time"].is_null(),
        "no upstream answered: {limited}"
    );
    let unicode = find("/unicode", 404);
    assert_eq!(unicode["user_agent"], "café", "{unicode}");
    assert_eq!(unicode["x_forwarded_for"], "ünï", "{unicode}");
    let nr = find("/nowhere", 404);
    assert_eq!(nr["response_flags"], "NR", "{nr}");
    assert!(
        nr["upstream_cluster"].is_null(),
        "no cluster was chosen: {nr}"
    );
    assert_eq!(
        nr["path"], "/nowhere?q=1",
        "the query, as Istio's format logs it"
    );
    assert!(nr["reason"].as_str().unwrap().contains("no route"), "{nr}");
    for l in &lines {
        assert!(
            l["start_time"].as_str().unwrap().ends_with('Z')
                && l["duration_ms"].is_number()
                && l["duration"].as_u64() == Some(l["duration_ms"].as_f64().unwrap() as u64),
            "{l}"
        );
    }
}

#[test]
fn the_log_level_changes_at_run_time() {
    if !ebpf_available("logging") {
        return;
    }
    let (v1, v2) = two_backends();
    let d = start(
        "logging",
        83,
        &policies(
            &v1,
            &v2,
            "  - route:\n    - destination:\n        host: reviews\n        subset: v1\n",
        ),
    );
    let send = |method: &str, target: &str| {
        let mut s = std::net::TcpStream::connect(d.admin).unwrap();
        use std::io::{Read, Write};
        write!(s, "{method} {target} HTTP/1.0\r\nContent-Length: 0\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let post = |q: &str| send("POST", &format!("/logging?level={q}"));
    // Envoy's level names are read as tracing's.
    assert!(post("warning").contains(" 200 "), "the level is accepted");
    assert_eq!(d.get("/logging").trim(), "warn");
    let before = d.log_text().matches("request method=").count();
    curl(&d, &["-o", "/dev/null", "http://reviews:9080/"]);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        d.log_text().matches("request method=").count(),
        before,
        "debug lines are off at warn"
    );
    post("debug");
    curl(&d, &["-o", "/dev/null", "http://reviews:9080/"]);
    eventually(Duration::from_secs(2), || {
        (d.log_text().matches("request method=").count() > before).then_some(())
    })
    .expect("debug lines are back");
    assert!(
        post("not%3D%3Dvalid").contains("400"),
        "an invalid filter is refused"
    );
    // A word that is no level would turn every log off: refused, and the level kept.
    assert!(
        post("verbose").contains("400"),
        "an unknown level is refused"
    );
    assert_eq!(d.get("/logging").trim(), "debug");
    // A method the endpoint does not take: 405 with the methods it does; no such endpoint: 404.
    let put = send("PUT", "/logging?level=info").to_ascii_lowercase();
    assert!(
        put.contains(" 405 ") && put.contains("allow: get, post"),
        "{put}"
    );
    assert!(send("GET", "/nowhere").contains(" 404 "));
    assert_eq!(d.get("/logging").trim(), "debug");
}

/// A test collector (not a real Zipkin): accepts POSTs and keeps their JSON bodies.
struct Collector {
    addr: std::net::SocketAddr,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Collector {
    fn start() -> Collector {
        Collector::answering("202 Accepted")
    }

    /// A collector that keeps what it is sent and answers every POST with `status`.
    fn answering(status: &'static str) -> Collector {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = bodies.clone();
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                let (head_end, len) = loop {
                    let Ok(n) = s.read(&mut chunk) else {
                        break (0, 0);
                    };
                    if n == 0 {
                        break (0, 0);
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        break (i + 4, len);
                    }
                };
                while buf.len() < head_end + len {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                keep.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[head_end..]).into_owned());
                let answer =
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = s.write_all(answer.as_bytes());
            }
        });
        Collector { addr, bodies }
    }

    fn spans(&self) -> Vec<serde_json::Value> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .filter_map(|b| serde_json::from_str::<serde_json::Value>(b).ok())
            .flat_map(|v| v.as_array().cloned().unwrap_or_default())
            .collect()
    }
}

#[test]
fn spans_reach_a_collector_with_parent_links_across_two_hops() {
    if !ebpf_available("tracing") {
        return;
    }
    let collector = Collector::start();
    let (v1, v2) = two_backends();
    let dir = support::mesh::config_dir(
        "tracing",
        &policies(
            &v1,
            &v2,
            "  - route:\n    - destination:\n        host: reviews\n        subset: v1\n",
        ),
    );
    let zipkin = format!("http://{}/api/v2/spans", collector.addr);
    let d = Daemon::start(
        "tracing",
        84,
        &[
            "--config",
            dir.to_str().unwrap(),
            "--trace-zipkin",
            &zipkin,
            "--trace-sample",
            "0",
        ],
    );
    // Hop 1: a caller's sampled trace enters meshd.
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let body = curl(
        &d,
        &[
            "-H",
            &format!("traceparent: {caller}"),
            "http://reviews:9080/whoami",
        ],
    );
    let seen: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    let hop1 = seen["traceparent"].as_str().unwrap().to_string();
    assert!(
        hop1.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && hop1.ends_with("-01"),
        "{hop1}"
    );
    let span1_id = hop1.split('-').nth(2).unwrap().to_string();
    assert_ne!(
        span1_id, "00f067aa0ba902b7",
        "meshd's own span is the upstream's parent"
    );
    // Hop 2: the backend's own outgoing call carries the context it received.
    curl(
        &d,
        &[
            "-H",
            &format!("traceparent: {hop1}"),
            "http://reviews:9080/whoami",
        ],
    );
    // Unsampled traffic (sample rate 0, no caller decision) exports nothing.
    curl(&d, &["http://reviews:9080/whoami"]);
    let spans = eventually(Duration::from_secs(5), || {
        let s = collector.spans();
        (s.len() >= 2).then_some(s)
    })
    .unwrap_or_else(|| panic!("no spans; log:\n{}", d.log_text()));
    assert_eq!(spans.len(), 2, "{spans:?}");
    let one = spans
        .iter()
        .find(|s| s["id"] == span1_id.as_str())
        .expect("hop 1's span");
    let two = spans
        .iter()
        .find(|s| s["id"] != span1_id.as_str())
        .expect("hop 2's span");
    assert_eq!(one["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(one["parentId"], "00f067aa0ba902b7");
    assert_eq!(two["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        two["parentId"],
        span1_id.as_str(),
        "hop 2 is a child of hop 1"
    );
    assert_eq!(one["tags"]["http.status_code"], "200");
    assert_eq!(one["tags"]["http.url"], "http://reviews:9080/whoami");
    assert_eq!(one["name"], "reviews.default.svc.cluster.local:9080/*");
    // Under the source workload's service, as Istio's proxies name theirs (`app.namespace`).
    assert_eq!(one["localEndpoint"]["serviceName"], "productpage.default");
    // The access log carries the same trace id and a generated request id.
    let lines = access_lines(&d);
    assert!(
        lines
            .iter()
            .any(|l| l["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
                && l["request_id"].as_str().is_some_and(|r| r.len() == 36))
    );
}

/// With both `--trace-zipkin` and `--trace-otlp`, spans go to both collectors; a collector
/// that refuses them (a 5xx) loses them, counted in `meshd_trace_spans_dropped_total` under
/// its own URL and warned about once, while the other still gets every span (and loses none).
#[test]
fn spans_go_to_both_collectors_and_a_refusing_one_counts_them_dropped() {
    if !ebpf_available("tracing_two_collectors") {
        return;
    }
    let refusing = Collector::answering("503 Service Unavailable");
    let otlp = Collector::start();
    let (v1, v2) = two_backends();
    let routes = "  - route:\n    - destination:\n        host: reviews\n        subset: v1\n";
    let dir = support::mesh::config_dir("tracing-two", &policies(&v1, &v2, routes));
    let zipkin_url = format!("http://{}/api/v2/spans", refusing.addr);
    let otlp_url = format!("http://{}/v1/traces", otlp.addr);
    let d = Daemon::start(
        "tracing-two",
        317,
        &[
            "--config",
            dir.to_str().unwrap(),
            "--trace-zipkin",
            &zipkin_url,
            "--trace-otlp",
            &otlp_url,
            "--trace-sample",
            "1",
        ],
    );
    for _ in 0..5 {
        curl(&d, &["http://reviews:9080/whoami"]);
    }
    let dropped =
        format!("meshd_trace_spans_dropped_total{{collector=\"{zipkin_url}\",format=\"zipkin\"}}");
    let counted = eventually(Duration::from_secs(10), || {
        (d.metric(&dropped) == 5.0).then_some(())
    });
    assert!(
        counted.is_some(),
        "{dropped} = {}; log:\n{}",
        d.metric(&dropped),
        d.log_text()
    );
    let kept =
        format!("meshd_trace_spans_dropped_total{{collector=\"{otlp_url}\",format=\"otlp\"}}");
    assert!(
        d.get("/metrics").contains(&format!("{kept} 0\n")),
        "the OTLP collector lost none: {}",
        d.get("/metrics")
    );
    assert!(
        !refusing.bodies.lock().unwrap().is_empty(),
        "zipkin was tried"
    );
    let spans = eventually(Duration::from_secs(5), || {
        let bodies = otlp.bodies.lock().unwrap().clone();
        let spans: usize = bodies
            .iter()
            .filter_map(|b| serde_json::from_str::<serde_json::Value>(b).ok())
            .map(|v| {
                v["resourceSpans"][0]["scopeSpans"][0]["spans"]
                    .as_array()
                    .map_or(0, Vec::len)
            })
            .sum();
        (spans == 5).then_some(spans)
    });
    assert_eq!(spans, Some(5), "every span reached the OTLP collector");
    let body: serde_json::Value = serde_json::from_str(&otlp.bodies.lock().unwrap()[0]).unwrap();
    let resource = &body["resourceSpans"][0];
    assert_eq!(
        resource["resource"]["attributes"][0]["value"]["stringValue"],
        "productpage.default"
    );
    let span = &resource["scopeSpans"][0]["spans"][0];
    let status = (span["attributes"].as_array().unwrap().iter())
        .find(|a| a["key"] == "http.status_code")
        .unwrap();
    assert_eq!(status["value"]["intValue"], "200", "{span}");
    let warned = d.log_text().matches("span export failed").count();
    assert_eq!(
        warned,
        1,
        "one warning for a failing collector:\n{}",
        d.log_text()
    );
}

#[test]
fn kernel_byte_counters_match_the_bytes_transferred() {
    if !ebpf_available("bpf_bytes") {
        return;
    }
    // Sockmap off, so both of meshd's sockets carry the payload as packets the cgroup_skb
    // programs count (IP and TCP headers included).
    let backend = Backend::echo("127.0.0.1:0");
    let d = Daemon::start("bpf-bytes", 85, &["--sockmap", "off"]);
    let payload: u64 = 2 * 1024 * 1024;
    let client = support::spawn_quiet(d.exec(
        "default/counted",
        &[
            "python3",
            support::CLIENT,
            "echo",
            "--addr",
            &backend.addr.to_string(),
            "--bytes",
            &payload.to_string(),
            "--hold",
            "2",
        ],
    ));
    let c = eventually(Duration::from_secs(10), || {
        let v: serde_json::Value = serde_json::from_str(&d.get("/connections")).ok()?;
        let c = v.as_array()?.first()?.clone();
        (c["upstream"]["rx_bytes"].as_u64()? >= payload
            && c["downstream"]["tx_bytes"].as_u64()? >= payload)
            .then_some(c)
    })
    .unwrap_or_else(|| {
        panic!(
            "counters never reached the payload: {}",
            d.get("/connections")
        )
    });
    // Each counter is the payload plus per-packet headers: IPv4 (20) + TCP with options (≤ 60).
    for (side, dir) in [
        ("upstream", "tx"),
        ("upstream", "rx"),
        ("downstream", "rx"),
        ("downstream", "tx"),
    ] {
        let bytes = c[side][format!("{dir}_bytes")].as_u64().unwrap();
        let packets = c[side][format!("{dir}_packets")].as_u64().unwrap();
        assert!(
            bytes >= payload,
            "{side} {dir}: {bytes} < payload {payload}"
        );
        // A segment the kernel retransmits (loopback drops under CPU pressure) is counted again:
        // allow each of the socket's retransmissions one full-size (64 KiB GSO) segment. What a
        // socket receives also counts the segments its peer sent again, which its own counter
        // does not see: two of those are allowed.
        let retransmits = c[side]["retransmits"].as_u64().unwrap_or(0);
        let resent = retransmits + if dir == "rx" { 2 } else { 0 };
        assert!(
            bytes - payload <= packets * 80 + resent * 65_536,
            "{side} {dir}: {bytes} bytes in {packets} packets ({retransmits} retransmissions) for {payload} of payload"
        );
    }
    client_ok(&client.wait_with_output().unwrap(), "counted echo");
}

#[test]
fn request_bytes_count_bodies_with_and_without_a_length() {
    if !ebpf_available("request-bytes") {
        return;
    }
    let (v1, v2) = two_backends();
    let d = start(
        "request-bytes",
        119,
        &policies(
            &v1,
            &v2,
            "  - route:\n    - destination:\n        host: reviews\n        subset: v1\n",
        ),
    );
    let body = "x".repeat(3000);
    // Chunked (no Content-Length), then with a Content-Length: 3000 bytes each.
    for extra in [&["-H", "Transfer-Encoding: chunked"][..], &[][..]] {
        let mut args = vec![
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--data-binary",
            &body,
        ];
        args.extend_from_slice(extra);
        args.push("http://reviews:9080/whoami");
        assert_eq!(curl(&d, &args), "200");
    }
    let series = "istio_request_bytes_sum{";
    let sum = eventually(Duration::from_secs(3), || {
        let text = d.get("/metrics");
        let v: f64 = text
            .lines()
            .filter(|l| l.starts_with(series) && l.contains("response_code=\"200\""))
            .filter(|l| l.contains("source_workload=\"productpage\""))
            // The source's SPIFFE identity (no WorkloadEntry: the namespace's default account).
            .filter(|l| {
                l.contains("source_principal=\"spiffe://cluster.local/ns/default/sa/default\"")
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum();
        (v >= 6000.0).then_some(v)
    });
    assert_eq!(sum, Some(6000.0), "{}", d.get("/metrics"));
    let logged: Vec<u64> = eventually(Duration::from_secs(3), || {
        let v: Vec<u64> = access_lines(&d)
            .iter()
            .filter(|l| l["path"] == "/whoami")
            .filter_map(|l| l["bytes_received"].as_u64())
            .collect();
        (v.len() == 2).then_some(v)
    })
    .unwrap_or_default();
    assert_eq!(logged, vec![3000, 3000], "{}", d.log_text());
    // A grpc-status in the answer to a plain HTTP request is no gRPC status: Istio's stats
    // label it only for gRPC requests.
    let plain = ["-o", "/dev/null", "-w", "%{http_code}"];
    let url = "http://reviews:9080/grpc-only/13";
    assert_eq!(curl(&d, &[&plain[..], &[url]].concat()), "200");
    let grpc = [
        "-H",
        "content-type: application/grpc",
        "--http2-prior-knowledge",
    ];
    assert_eq!(curl(&d, &[&plain[..], &grpc[..], &[url]].concat()), "200");
    let series = |text: &str, status: &str| {
        support::has_series(
            text,
            "istio_requests_total",
            &[
                &format!("grpc_response_status=\"{status}\""),
                r#"request_protocol="grpc""#,
            ],
            None,
        )
    };
    let text = eventually(Duration::from_secs(3), || {
        let text = d.get("/metrics");
        series(&text, "13").then_some(text)
    })
    .unwrap_or_else(|| d.get("/metrics"));
    assert!(series(&text, "13"), "the gRPC request's status: {text}");
    // A gRPC request answered without any grpc-status (an upstream's plain 503) has the
    // status its HTTP code stands for, as Envoy's `getGrpcStatus` reads it: 14.
    let url = "http://reviews:9080/status/503";
    assert_eq!(curl(&d, &[&plain[..], &grpc[..], &[url]].concat()), "503");
    let text = eventually(Duration::from_secs(3), || {
        let text = d.get("/metrics");
        series(&text, "14").then_some(text)
    })
    .unwrap_or_else(|| d.get("/metrics"));
    assert!(series(&text, "14"), "a plain 503 to a gRPC request: {text}");
    // Istio's gRPC message counters: two messages each way, the second cut across frames by
    // nothing but its own length prefix.
    let framed = std::env::temp_dir().join("meshd-test-grpc-messages.bin");
    let mut messages = vec![0, 0, 0, 0, 3];
    messages.extend(b"abc");
    messages.extend([0, 0, 0, 0, 2]);
    messages.extend(b"de");
    std::fs::write(&framed, &messages).unwrap();
    let data = format!("@{}", framed.display());
    let echo = ["--data-binary", &data, "http://reviews:9080/bytes-echo"];
    assert_eq!(
        curl(&d, &[&plain[..], &grpc[..], &echo[..]].concat()),
        "200"
    );
    let counted = |text: &str, family: &str| {
        support::has_series(
            text,
            family,
            &[
                r#"request_protocol="grpc""#,
                r#"response_code="200""#,
                r#"grpc_response_status="2""#,
            ],
            Some("2"),
        )
    };
    let text = eventually(Duration::from_secs(3), || {
        let text = d.get("/metrics");
        counted(&text, "istio_response_messages_total").then_some(text)
    })
    .unwrap_or_else(|| d.get("/metrics"));
    assert!(counted(&text, "istio_request_messages_total"), "{text}");
    assert!(counted(&text, "istio_response_messages_total"), "{text}");
    // Plain HTTP requests have no message series.
    assert!(
        !text
            .lines()
            .any(|l| l.contains("_messages_total{") && l.contains(r#"request_protocol="http""#)),
        "{text}"
    );
    assert!(
        !text.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains(r#"request_protocol="http""#)
            && l.contains(r#"grpc_response_status="13""#)),
        "{text}"
    );
}

/// A VirtualService match's `statPrefix` gives its route statistics of its own, as Envoy's
/// per-route stats: upstream requests (each attempt) by response code class, and retries and
/// time per request, for the requests that match selected, labelled with the virtual host
/// (`host:port`) as Envoy's are; the route's other match, without a prefix, counts in none, nor
/// does a route's fault abort, which never goes upstream.
#[test]
fn a_stat_prefix_gives_a_route_its_own_statistics() {
    if !ebpf_available("stat_prefix") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = "  - match:\n    - uri:\n        prefix: /whoami\n      statPrefix: reviews-read\n    - uri:\n        prefix: /status\n      statPrefix: reviews-status\n    - uri:\n        prefix: /echo\n    retries:\n      attempts: 2\n      retryOn: 5xx\n    route:\n    - destination:\n        host: reviews\n        subset: v1\n  - match:\n    - uri:\n        prefix: /fault\n      statPrefix: reviews-fault\n    fault:\n      abort:\n        httpStatus: 503\n        percentage:\n          value: 100\n    route:\n    - destination:\n        host: reviews\n        subset: v1\n";
    let d = start("stat-prefix", 239, &policies(&v1, &v2, routes));
    let get = |path: &str| status(&d, &format!("http://reviews:9080{path}"));
    for _ in 0..3 {
        assert_eq!(get("/whoami"), "200");
    }
    assert_eq!(get("/status/503"), "503");
    assert_eq!(get("/echo"), "200");
    assert_eq!(get("/fault"), "503");
    let metrics = d.get("/metrics");
    for (series, value) in [
        (
            r#"meshd_route_upstream_rq_total{response_code_class="2xx",stat_prefix="reviews-read",virtual_host="reviews.default.svc.cluster.local:9080"}"#,
            3.0,
        ),
        (
            r#"meshd_route_upstream_rq_total{response_code_class="5xx",stat_prefix="reviews-status",virtual_host="reviews.default.svc.cluster.local:9080"}"#,
            3.0,
        ),
        (
            r#"meshd_route_upstream_rq_retry_total{stat_prefix="reviews-status",virtual_host="reviews.default.svc.cluster.local:9080"}"#,
            2.0,
        ),
        (
            r#"meshd_route_upstream_rq_time_milliseconds_count{stat_prefix="reviews-read",virtual_host="reviews.default.svc.cluster.local:9080"}"#,
            3.0,
        ),
    ] {
        assert_eq!(
            support::parse_metric(&metrics, series),
            value,
            "{series}\n{metrics}"
        );
    }
    let counted: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("meshd_route_upstream_rq_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(
        counted, 6.0,
        "three reads and three attempts of /status/503; /echo and /fault count in none"
    );
    assert!(!metrics.contains("reviews-fault"), "{metrics}");
    assert!(!metrics.contains("meshd_route_upstream_rq_retry_total{stat_prefix=\"reviews-read\""));
}

/// Route statistics of timeouts and delays, as Envoy keeps them: an attempt a per-try or route
/// timeout ends counts as an upstream request without a response (`none`); the route's
/// `upstream_rq_timeout` counts the route timeout only, not attempts run out by per-try
/// timeouts; and `upstream_rq_time` is taken from after a fault delay, for answered requests.
#[test]
fn route_statistics_count_timeouts_and_leave_out_fault_delays() {
    if !ebpf_available("stat_prefix_timeouts") {
        return;
    }
    let (v1, v2) = two_backends();
    let to_v1 = "    route:\n    - destination:\n        host: reviews\n        subset: v1\n";
    let routes = [
        format!(
            "  - match:\n    - uri:\n        prefix: /per-try\n      statPrefix: per-try\n    rewrite:\n      uri: /sleep\n    timeout: 5s\n    retries:\n      attempts: 1\n      perTryTimeout: 150ms\n      retryOn: 5xx\n{to_v1}"
        ),
        format!(
            "  - match:\n    - uri:\n        prefix: /route\n      statPrefix: route\n    rewrite:\n      uri: /sleep\n    timeout: 150ms\n{to_v1}"
        ),
        format!(
            "  - match:\n    - uri:\n        prefix: /delayed\n      statPrefix: delayed\n    rewrite:\n      uri: /sleep\n    fault:\n      delay:\n        fixedDelay: 1s\n        percentage:\n          value: 100\n{to_v1}"
        ),
    ]
    .concat();
    let d = start("stat-prefix-timeouts", 307, &policies(&v1, &v2, &routes));
    let get = |path: &str| status(&d, &format!("http://reviews:9080{path}"));
    assert_eq!(get("/per-try/1000"), "504");
    assert_eq!(get("/route/1000"), "504");
    assert_eq!(get("/delayed/10"), "200");
    let metrics = d.get("/metrics");
    let series = |name: &str, prefix: &str, extra: &str| {
        let s = format!(
            "{name}{{{extra}stat_prefix=\"{prefix}\",virtual_host=\"reviews.default.svc.cluster.local:9080\"}}"
        );
        support::parse_metric(&metrics, &s)
    };
    let none = "response_code_class=\"none\",";
    assert_eq!(
        series("meshd_route_upstream_rq_total", "per-try", none),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        series("meshd_route_upstream_rq_total", "route", none),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        series("meshd_route_upstream_rq_timeout_total", "route", ""),
        1.0
    );
    assert!(
        !metrics.contains("meshd_route_upstream_rq_timeout_total{stat_prefix=\"per-try\""),
        "per-try timeouts are not the route timeout:\n{metrics}"
    );
    // Timed-out requests have no upstream time; the delayed one's leaves out the delay.
    let time = "meshd_route_upstream_rq_time_milliseconds";
    assert_eq!(series(&format!("{time}_count"), "delayed", ""), 1.0);
    let took = series(&format!("{time}_sum"), "delayed", "");
    assert!(
        took < 900.0,
        "the 1 s delay is not upstream time: {took} ms"
    );
    assert!(!metrics.contains(&format!("{time}_count{{stat_prefix=\"route\"")));
}

#[test]
fn a_tcp_connection_ended_by_a_reset_is_logged_with_the_bytes_it_carried() {
    use std::io::{Read, Write};
    if !ebpf_available("tcp_reset_bytes") {
        return;
    }
    // A server that answers 13 bytes, then resets the connection.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut got = [0u8; 2];
            let _ = s.read_exact(&mut got);
            let _ = s.write_all(b"thirteen byte");
            std::thread::sleep(std::time::Duration::from_millis(200));
            let _ = socket2::SockRef::from(&s).set_linger(Some(std::time::Duration::ZERO));
        }
    });
    let d = Daemon::start("tcp-reset-bytes", 269, &[]);
    let script = format!(
        "import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=5)\ns.sendall(b'hi')\nn = 0\ntry:\n    while True:\n        d = s.recv(100)\n        if not d:\n            break\n        n += len(d)\nexcept OSError as e:\n    print('error', e.errno)\nprint(n)"
    );
    let out = d
        .exec("default/client", &["python3", "-c", &script])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.trim_end().ends_with("13"), "{said}");
    let line = support::eventually(std::time::Duration::from_secs(5), || {
        (d.log_text().lines())
            .find(|l| l.contains(r#""protocol":"tcp""#) || l.contains(r#""protocol":"TCP""#))
            .map(str::to_string)
    })
    .unwrap_or_else(|| panic!("no TCP line:\n{}", d.log_text()));
    assert!(
        line.contains(r#""bytes_received":2,"bytes_sent":13"#),
        "{line}"
    );
}

/// Istio reports an open TCP connection's bytes every few seconds (`tcp_reporting_duration`),
/// so a long-lived connection shows on dashboards while it flows, and its close adds only the
/// rest: the totals are exact either way.
#[test]
fn an_open_tcp_connection_reports_its_bytes_while_it_flows() {
    if !ebpf_available("tcp_report") {
        return;
    }
    let backend = Backend::echo("127.0.0.1:0");
    let d = Daemon::start(
        "tcp-report",
        272,
        &["--tcp-reporting-interval", "1s", "--access-log", "off"],
    );
    // Sends as many bytes as each line of stdin says, reads their echo, and says `ok`.
    let script = format!(
        "import socket, sys\ns = socket.create_connection(('127.0.0.1', {}), timeout=10)\nfor line in sys.stdin:\n    n = int(line)\n    s.sendall(b'x' * n)\n    got = 0\n    while got < n:\n        got += len(s.recv(65536))\n    print('ok', flush=True)\ns.close()\n",
        backend.addr.port()
    );
    let mut client =
        support::LineClient::spawn(d.exec("default/talker", &["python3", "-c", &script]));
    let metric = |name: &str| -> Option<u64> {
        let text = d.get("/metrics");
        let line = text
            .lines()
            .find(|l| l.starts_with(name) && l.contains(r#"source_workload="talker""#))?;
        line.rsplit(' ').next()?.parse().ok()
    };
    let both_at = |n: u64| {
        eventually(Duration::from_secs(5), || {
            let to = metric("istio_tcp_received_bytes_total{")?;
            let from = metric("istio_tcp_sent_bytes_total{")?;
            (to == n && from == n).then_some(())
        })
    };
    assert_eq!(client.ask("1000"), "ok");
    both_at(1000).unwrap_or_else(|| panic!("no report while open:\n{}", d.get("/metrics")));
    assert_eq!(
        metric("istio_tcp_connections_closed_total{"),
        None,
        "the connection is still open"
    );
    assert_eq!(client.ask("2345"), "ok");
    both_at(3345).unwrap_or_else(|| panic!("no second report:\n{}", d.get("/metrics")));
    // The close adds the rest, and nothing twice.
    assert_eq!(client.ask("7"), "ok");
    client.finish();
    eventually(Duration::from_secs(5), || {
        (metric("istio_tcp_connections_closed_total{") == Some(1)).then_some(())
    })
    .unwrap_or_else(|| panic!("never closed:\n{}", d.get("/metrics")));
    both_at(3352).unwrap_or_else(|| panic!("totals at close:\n{}", d.get("/metrics")));
}

/// A mesh workload on meshd's own node has no other proxy to report what reached it: meshd
/// reports those requests as their destination too (`reporter="destination"`), as the
/// workload's inbound sidecar would, denials by its AuthorizationPolicy and answers a retry
/// replaced included; a request to an endpoint that is no mesh workload has the source's
/// series only.
#[test]
fn requests_to_a_workload_on_this_node_are_reported_by_the_destination_too() {
    if !ebpf_available("same_node_destination") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = "  - match:\n    - headers:\n        x-to:\n          exact: v2\n    route:\n    \
                  - destination:\n        host: reviews\n        subset: v2\n  \
                  - route:\n    - destination:\n        host: reviews\n        subset: v1\n";
    let mesh = format!(
        "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: reviews-v1, namespace: default}}\n\
         spec: {{address: 127.0.0.1, serviceAccount: reviews, ports: {{http: {p1}}}, labels: {{app: reviews, version: v1}}}}\n\
         ---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: no-admin, namespace: default}}\n\
         spec: {{selector: {{matchLabels: {{app: reviews}}}}, action: DENY, rules: [{{to: [{{operation: {{paths: [/admin]}}}}]}}]}}\n",
        p1 = v1.addr.port()
    );
    let d = start(
        "same-node-destination",
        296,
        &format!("{}{mesh}", policies(&v1, &v2, routes)),
    );
    for _ in 0..3 {
        assert_eq!(status(&d, "http://reviews:9080/status/200"), "200");
    }
    assert_eq!(status(&d, "http://reviews:9080/status/404"), "404");
    assert_eq!(status(&d, "http://reviews:9080/admin"), "403");
    // Istio's default retry policy retries a 503: the workload answered twice.
    assert_eq!(status(&d, "http://reviews:9080/fail-first/1"), "200");
    let to_v2 = curl(
        &d,
        &[
            "-H",
            "x-to: v2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://reviews:9080/",
        ],
    );
    assert_eq!(to_v2, "200");
    let series = |text: &str, reporter: &str, code: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("istio_requests_total{")
                    && l.contains(&format!(r#"reporter="{reporter}""#))
                    && l.contains(&format!(r#"response_code="{code}""#))
                    && l.contains(r#"destination_workload="reviews-v1""#)
                    && l.contains(r#"source_workload="productpage""#)
                    && l.contains(r#"destination_service="reviews.default.svc.cluster.local""#)
            })
            .and_then(|l| l.rsplit_once(' '))
            .map(|(_, v)| v.to_string())
    };
    let text = eventually(Duration::from_secs(5), || {
        let text = d.get("/metrics");
        (series(&text, "destination", "403").is_some()).then_some(text)
    })
    .unwrap_or_else(|| panic!("no destination series:\n{}", d.get("/metrics")));
    for reporter in ["source", "destination"] {
        assert_eq!(
            series(&text, reporter, "200").as_deref(),
            Some("4"),
            "{text}"
        );
        assert_eq!(
            series(&text, reporter, "404").as_deref(),
            Some("1"),
            "{text}"
        );
        assert_eq!(
            series(&text, reporter, "403").as_deref(),
            Some("1"),
            "{text}"
        );
    }
    // The answer the retry replaced, as the workload's sidecar would have counted it.
    assert_eq!(
        series(&text, "destination", "503").as_deref(),
        Some("1"),
        "{text}"
    );
    assert_eq!(series(&text, "source", "503"), None, "{text}");
    // v2 has no WorkloadEntry: no workload of the mesh received that request.
    let destination_series = text
        .lines()
        .filter(|l| {
            l.starts_with("istio_requests_total{") && l.contains(r#"reporter="destination""#)
        })
        .count();
    assert_eq!(destination_series, 4, "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains(r#"reporter="source""#)
            && l.contains(r#"destination_workload="unknown""#)),
        "{text}"
    );
}

/// An opaque TCP connection to a mesh workload on this node is reported by its destination
/// too, as the workload's inbound sidecar would report it (Istio's TCP panels read
/// `reporter="destination"`): opened, closed and its bytes, in plaintext.
#[test]
fn tcp_to_a_workload_on_this_node_is_reported_by_the_destination_too() {
    if !ebpf_available("tcp_same_node_destination") {
        return;
    }
    let echo = Backend::echo("127.0.0.1:0");
    let external_echo = Backend::echo("127.0.0.1:0");
    let yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: db, namespace: default}}
spec: {{address: 127.0.0.1, serviceAccount: db, labels: {{app: db}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db, namespace: default}}
spec:
  hosts: [db.default.svc.cluster.local]
  addresses: ["127.0.0.73"]
  ports: [{{number: 5432, name: tcp, protocol: TCP, targetPort: {port}}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: db}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: external-db, namespace: default}}
spec:
  hosts: [db.partner.example]
  addresses: ["127.0.0.74"]
  ports: [{{number: 5432, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{tcp: {external}}}}}]
"#,
        port = echo.addr.port(),
        external = external_echo.addr.port()
    );
    let dir = support::mesh::config_dir("tcp-same-node-destination", &yaml);
    let d = Daemon::start(
        "tcp-same-node-destination",
        301,
        &["--config", dir.to_str().unwrap()],
    );
    let script = "import socket\ns = socket.create_connection(('127.0.0.73', 5432), timeout=5)\ns.sendall(b'ping')\nprint(s.recv(16).decode())";
    let out = d
        .exec("default/client", &["python3", "-c", script])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ping");
    // An endpoint no WorkloadEntry names (an external database) has no inbound side to
    // report: the source alone reports it.
    let external = script.replace("127.0.0.73", "127.0.0.74");
    let out = d
        .exec("default/client", &["python3", "-c", &external])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ping");
    let value = |text: &str, name: &str, reporter: &str| {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter(|l| l.contains(&format!(r#"reporter="{reporter}""#)))
            .filter(|l| l.contains(r#"destination_workload="db""#))
            .filter(|l| l.contains(r#"destination_service="db.default.svc.cluster.local""#))
            .filter(|l| reporter == "source" || l.contains(r#"connection_security_policy="none""#))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>()
    };
    let text = eventually(Duration::from_secs(5), || {
        let text = d.get("/metrics");
        let external = text.contains(r#"destination_service="db.partner.example""#);
        (value(&text, "istio_tcp_connections_closed_total", "destination") == 1.0 && external)
            .then_some(text)
    })
    .unwrap_or_else(|| panic!("no destination series:\n{}", d.get("/metrics")));
    for reporter in ["source", "destination"] {
        for name in [
            "istio_tcp_connections_opened_total",
            "istio_tcp_connections_closed_total",
        ] {
            assert_eq!(
                value(&text, name, reporter),
                1.0,
                "{name} {reporter}: {text}"
            );
        }
        assert_eq!(
            value(&text, "istio_tcp_sent_bytes_total", reporter),
            4.0,
            "{text}"
        );
        assert_eq!(
            value(&text, "istio_tcp_received_bytes_total", reporter),
            4.0,
            "{text}"
        );
    }
    let external = |reporter: &str| {
        text.lines().any(|l| {
            l.starts_with("istio_tcp_connections_closed_total{")
                && l.contains(r#"destination_service="db.partner.example""#)
                && l.contains(&format!(r#"reporter="{reporter}""#))
        })
    };
    assert!(external("source") && !external("destination"), "{text}");
}

/// A request and a TCP connection to an address no service describes go to Istio's
/// `PassthroughCluster`, and are labelled so, as Istio's stats label them: the Host as
/// `destination_service`, `PassthroughCluster` as its name, its namespace unknown.
#[test]
fn passthrough_traffic_is_labelled_passthrough_cluster() {
    if !ebpf_available("passthrough_labels") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = "  - route:\n    - destination:\n        host: reviews\n        subset: v1\n";
    let d = start("passthrough-labels", 324, &policies(&v1, &v2, routes));
    let outside = support::http_backend::HttpBackend::start("127.0.0.69:0");
    let url = format!("http://{}/whoami", outside.addr);
    let out = curl(
        &d,
        &["-H", "Host: example.org", "-w", "\n%{http_code}", &url],
    );
    assert!(out.ends_with("\n200"), "{out}");
    let echo = Backend::echo("127.0.0.70:0");
    d.echo("default/productpage", echo.addr, 100);
    let name = r#"destination_service_name="PassthroughCluster""#;
    let unknown_ns = r#"destination_service_namespace="unknown""#;
    let text = d.get("/metrics");
    let http = [r#"destination_service="example.org""#, name, unknown_ns];
    assert!(
        support::has_series(&text, "istio_requests_total", &http, Some("1")),
        "{text}"
    );
    let tcp = [r#"destination_service="127.0.0.70:"#, name, unknown_ns];
    assert!(
        support::has_series(&text, "istio_tcp_connections_opened_total", &tcp, Some("1")),
        "{text}"
    );
    // A request to a service keeps the service's name.
    assert_eq!(status(&d, "http://reviews:9080/whoami"), "200");
    let text = d.get("/metrics");
    let service = [r#"destination_service_name="reviews""#];
    assert!(support::has_series(
        &text,
        "istio_requests_total",
        &service,
        Some("1")
    ));
}

/// Log rotation as logrotate does it for Envoy: the file is moved away, SIGUSR1 reopens it by
/// its path, and the next lines go to a new file; meshd keeps running (the signal's default
/// action would end it without a drain).
#[test]
fn sigusr1_reopens_the_access_log_file() {
    if !ebpf_available("access_log_rotation") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = "  - route:\n    - destination:\n        host: reviews\n        subset: v1\n";
    let dir = support::mesh::config_dir("access-log-rotation", &policies(&v1, &v2, routes));
    let log = dir.join("access.json");
    let rotated = dir.join("access.json.1");
    let d = Daemon::start(
        "access-log-rotation",
        343,
        &[
            "--config",
            dir.to_str().unwrap(),
            "--access-log",
            log.to_str().unwrap(),
        ],
    );
    let lines = |p: &std::path::Path| {
        let text = std::fs::read_to_string(p).unwrap_or_default();
        text.lines()
            .filter(|l| l.contains("/first") || l.contains("/second"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(status(&d, "http://reviews:9080/first"), "200");
    eventually(Duration::from_secs(5), || {
        (lines(&log).len() == 1).then_some(())
    })
    .expect("the first line is written");
    std::fs::rename(&log, &rotated).unwrap();
    d.signal(libc::SIGUSR1);
    eventually(Duration::from_secs(5), || {
        d.log_text().contains("access log reopened").then_some(())
    })
    .unwrap_or_else(|| panic!("not reopened: {}", d.log_text()));
    assert_eq!(status(&d, "http://reviews:9080/second"), "200");
    eventually(Duration::from_secs(5), || {
        (lines(&log).len() == 1).then_some(())
    })
    .unwrap_or_else(|| panic!("no new file: {}", d.log_text()));
    assert!(lines(&log)[0].contains("/second"));
    let old = lines(&rotated);
    assert_eq!(old.len(), 1, "{old:?}");
    assert!(old[0].contains("/first"));
    assert_eq!(support::http_get(d.admin, "/ready").unwrap().0, 200);
}
