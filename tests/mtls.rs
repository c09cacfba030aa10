//! Zero trust between nodes: two meshd nodes in their own network namespaces on a bridged LAN,
//! each fronting its workloads. Traffic between them crosses the wire only inside the mTLS
//! tunnel (TLS 1.3, HTTP/2 CONNECT), each side proves its workload's SPIFFE identity, and the
//! far side applies AuthorizationPolicy per connection (TCP) or per request (HTTP).

mod support;

use std::{path::PathBuf, time::Duration};

use support::{
    Daemon,
    backend::Backend,
    ebpf_available, has_series,
    http_backend::HttpBackend,
    netns::{Lan, Node, capture::contains},
};

/// The raw HTTP client: sends bytes, then more after the first response (upgrades).
const RAW: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/clients/raw_http.py");

fn ca(name: &str) -> PathBuf {
    support::ca_dir(name)
}

/// The mesh both nodes read: productpage (namespace default) and ratings (namespace other) on
/// node a, reviews on node b behind the VIP .50 (HTTP on 9080, TCP echo on 9090), plus `extra`.
fn policies(a: &Node, b: &Node, slots: (u16, u16), extra: &str) -> String {
    // Each node's tunnel listener is on its test slot's inbound port.
    let node_a = format!(
        "meshd.io/node: \"{}\", meshd.io/tunnel-port: \"{}\"",
        a.addr,
        support::ports(slots.0).2
    );
    let node_b = format!(
        "meshd.io/node: \"{}\", meshd.io/tunnel-port: \"{}\"",
        b.addr,
        support::ports(slots.1).2
    );
    let vip = format!("{}.50", b.addr.to_string().rsplit_once('.').unwrap().0);
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: productpage, namespace: default}}
spec:
  address: {a}
  serviceAccount: productpage
  labels: {{app: productpage, {node_a}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: ratings, namespace: other}}
spec:
  address: {a}
  serviceAccount: ratings
  labels: {{app: ratings, {node_a}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: reviews, namespace: default}}
spec:
  address: {b}
  serviceAccount: reviews
  ports: {{http: 8080, echo: 8081}}
  labels: {{app: reviews, {node_b}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  addresses: ["{vip}"]
  ports:
  - {{number: 9080, name: http, protocol: HTTP}}
  - {{number: 9090, name: echo, protocol: TCP}}
  resolution: STATIC
  workloadSelector:
    labels: {{app: reviews}}
{extra}"#,
        a = a.addr,
        b = b.addr,
    )
}

fn config(name: &str, yaml: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("meshd-test-{name}-policies"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("mesh.yaml"), yaml).unwrap();
    dir
}

/// One curl by `workload` on node a; returns `CODE BODY`.
fn curl(d: &Daemon, workload: &str, vip: &str, args: &[&str], path: &str) -> String {
    let resolve = format!("reviews:9080:{vip}");
    let url = format!("http://reviews:9080{path}");
    let mut full = vec!["curl", "-sS", "--max-time", "10", "--resolve", &resolve];
    full.extend_from_slice(args);
    full.extend(["-w", " %{http_code}", &url]);
    let out = d.exec(workload, &full).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once(' ').unwrap_or(("", &text));
    format!("{code} {}", body.trim())
}

struct Mesh {
    // Dropped last: everything below runs inside its namespaces.
    d_a: Daemon,
    d_b: Daemon,
    backend: HttpBackend,
    _echo: Backend,
    vip: String,
    lan: Lan,
}

/// How a test's two nodes differ from the plain mesh.
#[derive(Default)]
struct Options<'a> {
    /// Policies appended on both nodes.
    extra: &'a str,
    /// Policies appended on node a only.
    extra_a: &'a str,
    /// Node b gets a CA of its own.
    other_ca: bool,
    /// Flags for both daemons.
    args: &'a [&'a str],
}

fn mesh(name: &str, subnet: u8, slots: (u16, u16), extra: &str, same_ca: bool) -> Mesh {
    mesh_with(
        name,
        subnet,
        slots,
        Options {
            extra,
            other_ca: !same_ca,
            ..Options::default()
        },
    )
}

fn mesh_with(name: &str, subnet: u8, slots: (u16, u16), o: Options<'_>) -> Mesh {
    let (extra, same_ca) = (o.extra, !o.other_ca);
    let lan = Lan::new(name, subnet, 2);
    let (a, b) = (lan.node(0).clone(), lan.node(1).clone());
    let ca_a = ca(&format!("{name}-a"));
    let ca_b = if same_ca {
        ca_a.clone()
    } else {
        ca(&format!("{name}-b"))
    };
    let yaml = policies(&a, &b, slots, extra);
    let dir = config(name, &yaml);
    let dir_a = config(&format!("{name}-a"), &format!("{yaml}{}", o.extra_a));
    let backend = b.run(|| HttpBackend::start(&format!("{}:8080", b.addr)));
    let echo = b.run(|| Backend::echo(&format!("{}:8081", b.addr)));
    let d_b = Daemon::start_mesh_node(&b, &format!("{name}-b"), slots.1, &dir, &ca_b, o.args);
    let d_a = Daemon::start_mesh_node(&a, &format!("{name}-a"), slots.0, &dir_a, &ca_a, o.args);
    let vip = format!("{}.50", b.addr.to_string().rsplit_once('.').unwrap().0);
    Mesh {
        d_a,
        d_b,
        backend,
        _echo: echo,
        vip,
        lan,
    }
}

/// Sends `text` and a newline over TCP from productpage on node a to `addr` (`IP:PORT`): what
/// came back first, and the client's stderr.
fn send_line_from_a(m: &Mesh, addr: &str, text: &str) -> (String, String) {
    let (ip, port) = addr.rsplit_once(':').unwrap();
    let script = format!(
        "import socket\ns=socket.create_connection(('{ip}',{port}), timeout=5)\n\
         s.sendall(b'{text}\\n')\nprint(s.recv(200).decode())"
    );
    let out = m
        .d_a
        .exec("default/productpage", &["python3", "-c", &script])
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn traffic_between_nodes_is_mutual_tls_on_one_reused_connection() {
    if !ebpf_available("mtls_wire") {
        return;
    }
    let m = mesh("mtls-wire", 110, (102, 103), "", true);
    let wire = m.lan.capture(m.lan.node(1));
    for i in 0..5 {
        let r = curl(&m.d_a, "default/productpage", &m.vip, &[], "/whoami");
        assert!(r.starts_with("200 "), "{r}\nnode a:\n{}", m.d_a.log_text());
        // The first request of all, on the tunnel connection it opens, too.
        assert!(
            client_cert(&r).starts_with("By=spiffe://"),
            "request {i}: {r}"
        );
    }
    assert_eq!(m.backend.requests(), 5);
    // The source reporter labels the tunnelled requests mutual_tls.
    let metrics_a = m.d_a.get("/metrics");
    assert!(
        has_series(
            &metrics_a,
            "istio_requests_total",
            &[
                r#"connection_security_policy="mutual_tls""#,
                r#"reporter="source""#
            ],
            Some("5")
        ),
        "{metrics_a}"
    );
    // An opaque TCP connection crosses too.
    let echo = m
        .d_a
        .exec(
            "default/productpage",
            &[
                "python3",
                "-c",
                &format!("import socket; s=socket.create_connection(('{}',9090)); s.sendall(b'opaque-bytes-xyz'); print(s.recv(64).decode())", m.vip),
            ],
        )
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&echo.stdout).trim(),
        "opaque-bytes-xyz"
    );
    // Node b logs the stream it carried, with its bytes, under Istio's inbound cluster name.
    let line = support::eventually(Duration::from_secs(5), || {
        (m.d_b.log_text().lines())
            .find(|l| {
                l.contains(r#""protocol":"tcp","response_code":0"#)
                    && l.contains(r#""bytes_received":16,"bytes_sent":16"#)
            })
            .map(str::to_string)
    })
    .unwrap_or_else(|| panic!("no TCP line on node b:\n{}", m.d_b.log_text()));
    let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
    let cluster = entry["upstream_cluster"].as_str().unwrap();
    let port = (cluster.strip_prefix("inbound|"))
        .and_then(|rest| rest.strip_suffix("||"))
        .unwrap_or_else(|| panic!("not inbound|PORT||: {line}"));
    assert!(
        entry["upstream_host"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{port}")),
        "{line}"
    );
    // As its HTTP requests' lines: the workload's address, the peer, and both identities.
    assert_eq!(
        entry["downstream_local_address"], entry["upstream_host"],
        "{line}"
    );
    assert!(entry["downstream_remote_address"].is_string(), "{line}");
    assert!(
        (entry["destination_principal"].as_str()).is_some_and(|p| p.starts_with("spiffe://")),
        "{line}"
    );
    // Node b reports the stream under the service its endpoint serves, as the source does.
    let metrics_b = m.d_b.get("/metrics");
    assert!(
        has_series(
            &metrics_b,
            "istio_tcp_connections_opened_total",
            &[
                r#"reporter="destination""#,
                r#"destination_service="reviews.default.svc.cluster.local""#,
                r#"destination_workload="reviews""#,
                r#"source_workload="productpage""#,
                r#"source_canonical_service="productpage""#,
            ],
            None
        ),
        "{metrics_b}"
    );
    let bytes = wire.stop();
    assert!(bytes.len() > 1000, "the capture saw the traffic");
    assert!(
        !contains(&bytes, b"whoami"),
        "no plaintext HTTP on the wire"
    );
    assert!(
        !contains(&bytes, b"opaque-bytes-xyz"),
        "no plaintext TCP on the wire"
    );
    // The workload learns its caller's certificate as from Istio's inbound sidecar; a
    // header the caller forged is dropped.
    let r = curl(
        &m.d_a,
        "default/productpage",
        &m.vip,
        &["-H", "x-forwarded-client-cert: By=spiffe://forged"],
        "/whoami",
    );
    let (by, rest) = client_cert(&r).split_once(";Hash=").unwrap_or_default();
    assert_eq!(by, "By=spiffe://cluster.local/ns/default/sa/reviews", "{r}");
    let (hash, rest) = rest.split_once(';').unwrap_or_default();
    assert!(
        hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{r}"
    );
    assert_eq!(
        rest, "Subject=\\\"\\\";URI=spiffe://cluster.local/ns/default/sa/productpage",
        "{r}"
    );
    // One TLS connection from productpage's identity carried every stream.
    assert_eq!(
        m.d_b
            .metric(r#"meshd_tunnel_events_total{event="handshake_ok"}"#),
        1.0
    );
    assert_eq!(
        m.d_b
            .metric(r#"meshd_tunnel_events_total{event="stream_opened"}"#),
        2.0
    );
    // An upgrade crosses on a stream of its own, with the same certificate details; the
    // backend's first line on the upgraded connection is what the request carried.
    let raw = m
        .d_a
        .exec(
            "default/productpage",
            &[
                "python3",
                RAW,
                "--addr",
                &format!("{}:9080", m.vip),
                "--send",
                "GET /ws HTTP/1.1\\r\\nHost: reviews:9080\\r\\nConnection: Upgrade\\r\\n\
                 Upgrade: websocket\\r\\nx-forwarded-client-cert: By=spiffe://forged\\r\\n\\r\\n",
                "--then",
                "upgraded-bytes",
            ],
        )
        .output()
        .unwrap();
    let got = String::from_utf8_lossy(&raw.stdout);
    assert!(got.contains(r#""status": 101"#), "{got}");
    assert!(got.contains("upgraded-bytes"), "{got}");
    let xfcc = got.replace(r#"\""#, "\"");
    assert!(
        xfcc.contains("\"xfcc\":\"By=spiffe://cluster.local/ns/default/sa/reviews;Hash="),
        "{got}"
    );
    assert!(
        xfcc.contains(";URI=spiffe://cluster.local/ns/default/sa/productpage\""),
        "{got}"
    );
    assert!(!got.contains("forged"), "{got}");
}

/// The `x-forwarded-client-cert` the backend saw, from its `/whoami` answer.
fn client_cert(body: &str) -> &str {
    body.split("\"xfcc\":\"")
        .nth(1)
        // The field after it in the answer.
        .and_then(|v| v.split("\",\"cookie\":\"").next())
        .unwrap_or_default()
}

const POLICY: &str = r#"---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-viewer, namespace: default}
spec:
  selector:
    matchLabels: {app: reviews}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/productpage"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/whoami", "/status/*"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-other-namespace, namespace: default}
spec:
  selector:
    matchLabels: {app: reviews}
  action: DENY
  rules:
  - from:
    - source:
        namespaces: ["other"]
"#;

/// Istio's dry-run example: a DENY policy for `/headers` that is evaluated, never enforced.
const DRY_RUN: &str = r#"---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-path-headers
  namespace: default
  annotations:
    "istio.io/dry-run": "true"
spec:
  selector:
    matchLabels: {app: reviews}
  action: DENY
  rules:
  - to:
    - operation:
        paths: ["/headers"]
"#;

#[test]
fn authorization_by_principal_namespace_path_and_method() {
    if !ebpf_available("mtls_authz") {
        return;
    }
    let m = mesh(
        "mtls-authz",
        111,
        (104, 105),
        &format!("{POLICY}{DRY_RUN}"),
        true,
    );
    let get =
        |workload: &str, args: &[&str], path: &str| curl(&m.d_a, workload, &m.vip, args, path);
    assert!(get("default/productpage", &[], "/whoami").starts_with("200 "));
    assert!(get("default/productpage", &[], "/status/201").starts_with("201 "));
    // Node b parses these requests (its policy reads paths) and sets the client certificate
    // from its own handshake: one value, naming the verified caller.
    let forged = ["-H", "x-forwarded-client-cert: By=spiffe://forged"];
    let r = get("default/productpage", &forged, "/whoami");
    let cert = client_cert(&r);
    assert!(
        cert.starts_with("By=spiffe://cluster.local/ns/default/sa/reviews;Hash=")
            && cert.ends_with(";URI=spiffe://cluster.local/ns/default/sa/productpage")
            && !cert.contains(" | "),
        "{r}"
    );
    assert_eq!(
        get("default/productpage", &["-X", "POST"], "/whoami"),
        "403 RBAC: access denied",
        "method not allowed"
    );
    assert_eq!(
        get("default/productpage", &[], "/admin"),
        "403 RBAC: access denied",
        "path not allowed"
    );
    // To a gRPC request, node b's denial is a gRPC answer, as a local one is.
    let grpc = ["-i", "-H", "content-type: application/grpc"];
    let r = get("default/productpage", &grpc, "/admin");
    assert!(
        r.starts_with("200 ") && r.to_ascii_lowercase().contains("grpc-status: 7"),
        "{r}"
    );
    assert_eq!(
        get("other/ratings", &[], "/whoami"),
        "403 RBAC: access denied",
        "namespace denied (and principal not allowed)"
    );
    assert_eq!(
        m.backend.requests(),
        3,
        "denied requests never reach the workload"
    );
    assert!(
        m.d_b.log_shows("\"reason\":\"authorization: "),
        "{}",
        m.d_b.log_text()
    );
    assert!(m.d_b.metric(r#"meshd_tunnel_events_total{event="denied"}"#) >= 3.0);
    // The far side also evaluates the dry-run policy, and only reports it.
    assert!(get("default/productpage", &[], "/headers").starts_with("403 "));
    let dry_denied = r#"meshd_authorization_dry_run_total{action="DENY",result="denied"}"#;
    assert_eq!(m.d_b.metric(dry_denied), 1.0);
    // Node b read these requests, so it reports them as Istio's inbound sidecar does
    // (`reporter="destination"`), the service named from the endpoint the stream reached, the
    // source from its certificate.
    let destination =
        |metrics_b: &str, principal: &str, protocol: &str, code: &str, value: &str| {
            // The caller's workload, as the source's CONNECT named it.
            let (_, caller) = principal.rsplit_once('/').unwrap();
            let workload = format!(r#"source_workload="{caller}""#);
            let principal = format!(r#"source_principal="spiffe://cluster.local/{principal}""#);
            let protocol = format!(r#"request_protocol="{protocol}""#);
            let code = format!(r#"response_code="{code}""#);
            let labels = [
                r#"reporter="destination""#,
                r#"destination_service="reviews.default.svc.cluster.local""#,
                r#"destination_workload="reviews""#,
                r#"destination_workload_namespace="default""#,
                r#"connection_security_policy="mutual_tls""#,
                &principal,
                &workload,
                &protocol,
                &code,
            ];
            has_series(metrics_b, "istio_requests_total", &labels, Some(value))
        };
    // Recorded as each response body ends, just after the client has read it.
    let metrics_b = support::eventually(Duration::from_secs(5), || {
        let text = m.d_b.get("/metrics");
        destination(&text, "ns/default/sa/productpage", "http", "403", "3").then_some(text)
    })
    .unwrap_or_else(|| m.d_b.get("/metrics"));
    assert!(
        destination(&metrics_b, "ns/default/sa/productpage", "http", "200", "2"),
        "{metrics_b}"
    );
    assert!(
        destination(&metrics_b, "ns/default/sa/productpage", "http", "201", "1"),
        "{metrics_b}"
    );
    assert!(
        destination(&metrics_b, "ns/default/sa/productpage", "http", "403", "3"),
        "{metrics_b}"
    );
    assert!(
        destination(&metrics_b, "ns/default/sa/productpage", "grpc", "200", "1"),
        "{metrics_b}"
    );
    assert!(
        destination(&metrics_b, "ns/other/sa/ratings", "http", "403", "1"),
        "{metrics_b}"
    );
    assert!(
        has_series(
            &metrics_b,
            "istio_requests_total",
            &[
                r#"reporter="destination""#,
                r#"grpc_response_status="7""#,
                r#"source_workload_namespace="default""#
            ],
            Some("1")
        ),
        "{metrics_b}"
    );
    assert!(
        !metrics_b.contains(r#"reporter="source""#),
        "node b sent no request of its own: {metrics_b}"
    );
    // And logs each of them, under Istio's inbound cluster name.
    let line = |path: &str, code: u16| {
        support::eventually(Duration::from_secs(5), || {
            (m.d_b.log_text().lines())
                .find(|l| {
                    l.contains(&format!(r#""path":"{path}""#))
                        && l.contains(&format!(r#""response_code":{code},"#))
                })
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no {path} {code} line on node b:\n{}", m.d_b.log_text()))
    };
    let ok: serde_json::Value = serde_json::from_str(&line("/status/201", 201)).unwrap();
    assert_eq!(ok["upstream_cluster"], "inbound|8080||", "{ok}");
    assert_eq!(ok["method"], "GET", "{ok}");
    assert_eq!(ok["authority"], "reviews:9080", "{ok}");
    assert_eq!(
        ok["source_principal"], "spiffe://cluster.local/ns/default/sa/productpage",
        "{ok}"
    );
    assert_eq!(
        ok["destination_principal"], "spiffe://cluster.local/ns/default/sa/reviews",
        "{ok}"
    );
    assert_eq!(ok["destination_workload"], "default/reviews", "{ok}");
    assert_eq!(ok["source_workload"], "default/productpage", "{ok}");
    assert_eq!(ok["response_flags"], "-", "{ok}");
    let denied: serde_json::Value = serde_json::from_str(&line("/admin", 403)).unwrap();
    assert!(
        denied["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("authorization: ")),
        "{denied}"
    );
    // At L4 the same policies apply without HTTP fields: the ALLOW rule needs a path, so no
    // TCP connection matches it, and the stream is closed before a byte reaches the workload.
    let out = m
        .d_a
        .exec(
            "default/productpage",
            &[
                "python3",
                "-c",
                &format!("import socket; s=socket.create_connection(('{}',9090)); s.sendall(b'x'); print(repr(s.recv(8)))", m.vip),
            ],
        )
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!said.contains("b'x'"), "the TCP stream was refused: {said}");
    // Node b logs the refused stream, as Istio's inbound sidecar logs its connections.
    let refused = support::eventually(Duration::from_secs(5), || {
        (m.d_b.log_text().lines())
            .find(|l| {
                l.contains(r#""protocol":"tcp""#) && l.contains("denied by authorization policy")
            })
            .map(str::to_string)
    })
    .unwrap_or_else(|| panic!("no line on node b:\n{}", m.d_b.log_text()));
    assert!(
        refused
            .contains(r#""source_principal":"spiffe://cluster.local/ns/default/sa/productpage""#),
        "{refused}"
    );
    // HTTP sent to the port declared TCP is TCP all the same, as on Istio's inbound sidecar:
    // the same L4 rules refuse it (node b used to read it as HTTP, and allow GET /whoami).
    let http = format!(
        "import socket; s=socket.create_connection(('{}',9090)); s.sendall(b'GET /whoami HTTP/1.1\\r\\nHost: reviews\\r\\n\\r\\n'); print(repr(s.recv(64)))",
        m.vip
    );
    let out = m
        .d_a
        .exec("default/productpage", &["python3", "-c", &http])
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !said.contains("GET /whoami"),
        "the TCP stream was refused: {said}"
    );
    assert!(!said.contains("HTTP/1.1"), "not served as HTTP: {said}");
    // A WebSocket upgrade node b reads, as its policy reads paths: authorized as a request,
    // then spliced through to the workload.
    let upgrade = |path: &str| {
        let send = format!(
            "GET {path} HTTP/1.1\\r\\nHost: reviews:9080\\r\\nConnection: Upgrade\\r\\n\
             Upgrade: websocket\\r\\n\\r\\n"
        );
        let addr = format!("{}:9080", m.vip);
        let args = [
            "python3",
            RAW,
            "--addr",
            &addr,
            "--send",
            &send,
            "--then",
            "upgraded-bytes",
        ];
        let out = m.d_a.exec("default/productpage", &args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let got = upgrade("/whoami");
    assert!(got.contains(r#""status": 101"#), "{got}");
    assert!(got.ends_with("upgraded-bytes\"}\n"), "{got}");
    let got = upgrade("/admin");
    assert!(got.contains(r#""status": 403"#), "{got}");
    // Node b logs the upgraded connection once it ends, with the bytes it carried.
    let tunnelled: serde_json::Value = serde_json::from_str(&line("/whoami", 101)).unwrap();
    assert_eq!(tunnelled["bytes_received"], 14, "{tunnelled}");
}

#[test]
fn a_peer_from_another_ca_is_rejected() {
    if !ebpf_available("mtls_untrusted") {
        return;
    }
    let m = mesh("mtls-untrusted", 112, (106, 107), "", false);
    let r = curl(&m.d_a, "default/productpage", &m.vip, &[], "/whoami");
    assert!(r.starts_with("503"), "{r}");
    assert_eq!(m.backend.requests(), 0);
    let a = m.d_a.log_text();
    assert!(
        a.contains("not signed by the trust bundle"),
        "node a says why:\n{a}"
    );
    assert!(
        m.d_b
            .metric(r#"meshd_tunnel_events_total{event="handshake_failed"}"#)
            >= 1.0
    );
}

#[test]
fn endpoints_on_other_nodes_without_certificates_fail_the_start() {
    if !ebpf_available("mtls_noca") {
        return;
    }
    let lan = Lan::new("mtls-noca", 113, 2);
    let (a, b) = (lan.node(0), lan.node(1));
    let dir = config("mtls-noca", &policies(a, b, (108, 109), ""));
    let mut d = Daemon::spawn("mtls-noca", 108, &["--config", dir.to_str().unwrap()]);
    let status = d.wait_failed(Duration::from_secs(20));
    assert!(!status.success());
    let log = d.log_text();
    assert!(
        log.contains("no workload certificates for the mTLS tunnel") && log.contains("--ca-dir"),
        "{log}"
    );
}

/// productpage and reviews (HTTP and a TCP echo behind the VIP .70) on one node, with no
/// meshd.io/node labels, so no certificates are needed; and `policy`.
fn one_node(backend: &HttpBackend, echo: &Backend, policy: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: productpage, namespace: default}}
spec: {{address: 127.0.0.1, serviceAccount: productpage, labels: {{app: productpage}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: reviews, namespace: default}}
spec:
  address: 127.0.0.1
  serviceAccount: reviews
  ports: {{http: {http}, echo: {echo}}}
  labels: {{app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  addresses: ["127.0.0.70"]
  ports:
  - {{number: 9080, name: http, protocol: HTTP}}
  - {{number: 9090, name: echo, protocol: TCP}}
  resolution: STATIC
  workloadSelector:
    labels: {{app: reviews}}
{policy}"#,
        http = backend.addr.port(),
        echo = echo.addr.port(),
    )
}

/// An opaque connection to a workload on this node that a policy applied later denies is
/// closed, as ztunnel closes the connections a new policy no longer allows (and as meshd's
/// tunnel does for other nodes); it does not run on under the policy it opened with.
#[test]
fn an_open_connection_a_new_policy_denies_is_closed() {
    if !ebpf_available("authz_revoke_local") {
        return;
    }
    let backend = HttpBackend::start("127.0.0.1:0");
    let echo = Backend::echo("127.0.0.1:0");
    let dir = config("authz-revoke-local", &one_node(&backend, &echo, ""));
    let d = Daemon::start(
        "authz-revoke-local",
        288,
        &["--config", dir.to_str().unwrap()],
    );
    let go = dir.join("go");
    let script = format!(
        "import os, socket, time\ns = socket.create_connection(('127.0.0.70', 9090))\ns.sendall(b'one')\nprint(s.recv(8), flush=True)\nwhile not os.path.exists({go:?}):\n    time.sleep(0.05)\ns.settimeout(5)\ntry:\n    s.sendall(b'two')\n    print(s.recv(8) or 'closed')\nexcept OSError as e:\n    print('closed', type(e).__name__)\n",
        go = go.to_str().unwrap()
    );
    let client = d
        .exec("default/productpage", &["python3", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    support::eventually(Duration::from_secs(10), || {
        d.get("/connections")
            .contains("127.0.0.70:9090")
            .then_some(())
    })
    .expect("the connection is open");
    std::thread::sleep(Duration::from_millis(300));
    let allow_nothing = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-nothing, namespace: default}\nspec:\n  selector: {matchLabels: {app: reviews}}\n";
    std::fs::write(
        dir.join("mesh.yaml"),
        one_node(&backend, &echo, allow_nothing),
    )
    .unwrap();
    support::eventually(Duration::from_secs(5), || {
        (d.metric(r#"meshd_config_reload_total{result="success"}"#) >= 1.0).then_some(())
    })
    .expect("reload applied");
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&go, "").unwrap();
    let out = client.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines.first(), Some(&"b'one'"), "{said}");
    assert!(
        lines.get(1).is_some_and(|l| l.starts_with("closed")),
        "the connection is closed, not echoed: {said}\n{}",
        d.log_text()
    );
    assert!(
        d.log_shows("closed after a policy change: denied by authorization policy"),
        "the access log says why: {}",
        d.log_text()
    );
}

#[test]
fn requests_to_a_workload_on_the_same_node_are_authorized_where_they_start() {
    if !ebpf_available("authz_local") {
        return;
    }
    let backend = HttpBackend::start("127.0.0.1:0");
    let echo = Backend::echo("127.0.0.1:0");
    let yaml = one_node(&backend, &echo, POLICY);
    let dir = config("authz-local", &yaml);
    let d = Daemon::start("authz-local", 109, &["--config", dir.to_str().unwrap()]);
    let get =
        |workload: &str, args: &[&str], path: &str| curl(&d, workload, "127.0.0.70", args, path);
    assert!(get("default/productpage", &[], "/whoami").starts_with("200 "));
    // In plaintext on one node, no client certificate is reported, and a forged one is
    // dropped.
    let forged = ["-H", "x-forwarded-client-cert: By=spiffe://forged"];
    let r = get("default/productpage", &forged, "/whoami");
    assert!(r.contains("\"xfcc\":\"\""), "{r}");
    assert_eq!(
        get("default/productpage", &["-X", "POST"], "/whoami"),
        "403 RBAC: access denied"
    );
    // The namespace rule of the DENY policy depends on identity alone. On the port declared
    // HTTP the caller gets Istio's 403; on the TCP port it is enforced at connect time, in the
    // kernel, so the caller cannot even connect (EPERM, errno 1).
    assert_eq!(
        get("other/ratings", &[], "/whoami"),
        "403 RBAC: access denied"
    );
    let connect = "import socket\ntry:\n    socket.create_connection(('127.0.0.70', 9090))\n    print('connected')\nexcept OSError as e:\n    print(type(e).__name__, e.errno)";
    let out = d
        .exec("other/ratings", &["python3", "-c", connect])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "PermissionError 1"
    );
    assert_eq!(d.metric("meshd_authorization_connect_denied_total"), 1.0);
    assert_eq!(backend.requests(), 2, "denied requests never left meshd");
    assert!(
        d.log_shows("\"reason\":\"authorization: "),
        "the access log says why"
    );
    let log = d.log_text();
    assert!(
        log.contains("\"source_principal\":\"spiffe://cluster.local/ns/default/sa/productpage\"")
            && log.contains(
                "\"destination_principal\":\"spiffe://cluster.local/ns/default/sa/reviews\""
            ),
        "the access log names both identities"
    );
    // TCP: the ALLOW rule needs HTTP fields, so no connection matches it: reset before a byte.
    let out = d
        .exec(
            "default/productpage",
            &[
                "python3",
                "-c",
                "import socket; s=socket.create_connection(('127.0.0.70',9090)); s.sendall(b'x'); print(repr(s.recv(8)))",
            ],
        )
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!said.contains("b'x'"), "{said}");
    assert_eq!(echo.accepted(), 0, "the workload never saw the connection");
    assert!(
        d.log_text()
            .contains("connection denied by authorization policy")
    );
}

/// Workloads of one node often share its address (127.0.0.1 without pods) and name no ports in
/// their WorkloadEntries. Each is then known by the port its ServiceEntry reaches it on (the
/// port's `targetPort`), as Istio gives such an endpoint its service's target port, so a policy
/// that selects one applies to its traffic and to nobody else's.
#[test]
fn workloads_sharing_an_address_are_authorized_as_the_one_their_service_reaches() {
    if !ebpf_available("authz_shared_address") {
        return;
    }
    let reviews = HttpBackend::start("127.0.0.1:0");
    let ratings = HttpBackend::start("127.0.0.1:0");
    let ratings_echo = Backend::echo("127.0.0.1:0");
    // ratings comes first in the file, so the address alone would name it.
    let yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: ratings, namespace: default}}
spec: {{address: 127.0.0.1, serviceAccount: ratings, labels: {{app: ratings}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: reviews, namespace: default}}
spec: {{address: 127.0.0.1, serviceAccount: reviews, labels: {{app: reviews}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  addresses: ["127.0.0.71"]
  ports: [{{number: 9080, name: http, protocol: HTTP, targetPort: {reviews}}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: reviews}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ratings, namespace: default}}
spec:
  hosts: [ratings.default.svc.cluster.local]
  addresses: ["127.0.0.72"]
  ports:
  - {{number: 9080, name: http, protocol: HTTP, targetPort: {ratings}}}
  - {{number: 9090, name: echo, protocol: TCP, targetPort: {echo}}}
  resolution: STATIC
  workloadSelector: {{labels: {{app: ratings}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ratings-deny-all, namespace: default}}
spec:
  selector: {{matchLabels: {{app: ratings}}}}
  action: DENY
  rules: [{{}}]
"#,
        reviews = reviews.addr.port(),
        ratings = ratings.addr.port(),
        echo = ratings_echo.addr.port(),
    );
    let dir = config("authz-shared-address", &yaml);
    let d = Daemon::start(
        "authz-shared-address",
        298,
        &["--config", dir.to_str().unwrap()],
    );
    let get = |url: &str| {
        let args = [
            "curl",
            "-sS",
            "--max-time",
            "10",
            "-w",
            " %{http_code}",
            url,
        ];
        let out = d.exec("default/productpage", &args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        get("http://127.0.0.71:9080/").ends_with(" 200"),
        "{}",
        d.log_text()
    );
    assert_eq!(get("http://127.0.0.72:9080/"), "RBAC: access denied 403");
    // Dialled at its own address and port, the workload is still the one denied.
    let direct = format!("http://127.0.0.1:{}/", ratings.addr.port());
    assert_eq!(get(&direct), "RBAC: access denied 403");
    assert_eq!(
        ratings.requests(),
        0,
        "no request reached the denied workload"
    );
    assert_eq!(reviews.requests(), 1);
    let connect = "import socket\ntry:\n    s = socket.create_connection(('127.0.0.72', 9090))\n    s.sendall(b'x')\n    print(repr(s.recv(8)))\nexcept OSError as e:\n    print(type(e).__name__)";
    let out = d
        .exec("default/productpage", &["python3", "-c", connect])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!said.contains("b'x'"), "the TCP port is denied too: {said}");
    assert_eq!(ratings_echo.accepted(), 0);
    let log = d.log_text();
    assert!(
        log.contains("\"destination_workload\":\"default/reviews\"")
            && log.contains("\"destination_workload\":\"default/ratings\""),
        "each request is logged with the workload it reached: {log}"
    );
}

/// A client that dials a workload's own address on a port its ServiceEntry declares HTTP, and
/// waits before it writes (a pool that opens connections ahead of use), is still served as HTTP
/// and authorized per request, as the workload's inbound sidecar would know its port: the
/// declared protocol wins over sniffing, whose timeout would have made it opaque TCP.
#[test]
fn a_workload_dialled_directly_keeps_its_declared_protocol_for_a_slow_client() {
    if !ebpf_available("authz_direct_declared") {
        return;
    }
    let backend = HttpBackend::start("127.0.0.1:0");
    let echo = Backend::echo("127.0.0.1:0");
    let deny_admin = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-admin, namespace: default}\nspec:\n  selector: {matchLabels: {app: reviews}}\n  action: DENY\n  rules: [{to: [{operation: {paths: [\"/admin*\"]}}]}]\n";
    let dir = config(
        "authz-direct-declared",
        &one_node(&backend, &echo, deny_admin),
    );
    let d = Daemon::start(
        "authz-direct-declared",
        299,
        &["--config", dir.to_str().unwrap()],
    );
    let slow = |path: &str| {
        let script = format!(
            "import socket, time\ns = socket.create_connection(('127.0.0.1', {port}))\ntime.sleep(0.5)\ns.sendall(b'GET {path} HTTP/1.1\\r\\nHost: reviews\\r\\nConnection: close\\r\\n\\r\\n')\ns.settimeout(10)\nout = b''\nwhile True:\n    b = s.recv(4096)\n    if not b:\n        break\n    out += b\nprint(out.split(b'\\r\\n')[0].decode())",
            port = backend.addr.port()
        );
        let out = d
            .exec("default/productpage", &["python3", "-c", &script])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(slow("/other"), "HTTP/1.1 200 OK", "{}", d.log_text());
    assert_eq!(slow("/admin/users"), "HTTP/1.1 403 Forbidden");
    assert_eq!(backend.requests(), 1, "the denied request never left meshd");
    assert!(
        d.log_shows("\"path\":\"/other\",\"protocol\":\"HTTP/1.1\""),
        "served as HTTP, not passed through as TCP: {}",
        d.log_text()
    );
}

/// A CUSTOM policy names an external authorization provider meshd cannot call: as istiod does
/// when it cannot use the provider, it denies everything to the workloads it selects, rather
/// than leave open what it was written to protect.
#[test]
fn a_custom_policy_fails_closed() {
    if !ebpf_available("authz_custom") {
        return;
    }
    let backend = HttpBackend::start("127.0.0.1:0");
    let echo = Backend::echo("127.0.0.1:0");
    let custom = r#"---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: ext-authz
  namespace: default
spec:
  selector:
    matchLabels: {app: reviews}
  action: CUSTOM
  provider:
    name: my-ext-authz
  rules:
  - to:
    - operation:
        paths: ["/admin*"]
"#;
    let dir = config("authz-custom", &one_node(&backend, &echo, custom));
    let d = Daemon::start("authz-custom", 258, &["--config", dir.to_str().unwrap()]);
    for path in ["/admin/secret", "/whoami"] {
        let r = curl(&d, "default/productpage", "127.0.0.70", &[], path);
        assert!(!r.starts_with("200"), "{path}: {r}");
    }
    assert_eq!(backend.requests(), 0, "nothing reached the workload");
    assert!(
        d.log_shows("denied by CUSTOM policy default/ext-authz (meshd cannot call its provider"),
        "the denial names the CUSTOM policy: {}",
        d.log_text()
    );
}

/// An AUDIT policy (Envoy's RBAC `LOG` action): requests and connections it matches are
/// logged and counted, and nothing is decided by it.
const AUDIT: &str = r#"---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: audit-headers
  namespace: default
spec:
  selector:
    matchLabels: {app: reviews}
  action: AUDIT
  rules:
  - to:
    - operation:
        paths: ["/headers"]
"#;

/// Istio's dry-run task: a DENY policy annotated `istio.io/dry-run` is evaluated and its
/// verdict logged and counted, but the requests it would deny go through; so does TCP. An AUDIT
/// policy beside it reports the requests it matches, and decides nothing either.
#[test]
fn dry_run_and_audit_policies_report_and_enforce_nothing() {
    if !ebpf_available("authz_dry_run") {
        return;
    }
    let backend = HttpBackend::start("127.0.0.1:0");
    let echo = Backend::echo("127.0.0.1:0");
    let dir = config(
        "authz-dry-run",
        &one_node(&backend, &echo, &format!("{DRY_RUN}{AUDIT}")),
    );
    let d = Daemon::start("authz-dry-run", 194, &["--config", dir.to_str().unwrap()]);
    let get = |path: &str| curl(&d, "default/productpage", "127.0.0.70", &[], path);
    assert!(get("/headers").starts_with("200 "), "not enforced");
    assert!(get("/whoami").starts_with("200 "));
    assert_eq!(backend.requests(), 2);
    let series = |result: &str| {
        d.metric(&format!(
            r#"meshd_authorization_dry_run_total{{action="DENY",result="{result}"}}"#
        ))
    };
    assert_eq!((series("denied"), series("allowed")), (1.0, 1.0));
    let log = d.log_text();
    assert!(
        log.contains("dry-run DENY policy default/deny-path-headers would deny"),
        "{log}"
    );
    let audited = r#"meshd_authorization_audit_total{policy="default/audit-headers"}"#;
    assert_eq!(d.metric(audited), 1.0, "only /headers is audited");
    assert!(
        log.contains("audited by AUDIT policy default/audit-headers"),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("audited by AUDIT policy")
            && l.contains("source=default/productpage at 127.0.0.1:")),
        "the line names the caller's workload: {log}"
    );
    // TCP: a DENY rule's HTTP fields are ignored there, so the dry run would deny it, and the
    // connection goes through.
    let out = d
        .exec(
            "default/productpage",
            &[
                "python3",
                "-c",
                "import socket; s=socket.create_connection(('127.0.0.70',9090)); s.sendall(b'x'); print(repr(s.recv(8)))",
            ],
        )
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("b'x'"), "echoed: {said}");
    assert_eq!(series("denied"), 2.0);
    // The AUDIT rule's path is HTTP-only, ignored on TCP as in a DENY rule: it matches.
    assert_eq!(d.metric(audited), 2.0);
}

#[test]
fn certificates_rotate_under_a_live_connection() {
    if !ebpf_available("mtls_rotate") {
        return;
    }
    // 4 s certificates are renewed every 2 s; a TCP connection through the tunnel lives 9 s.
    let m = mesh_with(
        "mtls-rotate",
        114,
        (110, 111),
        Options {
            args: &["--cert-lifetime", "4s"],
            ..Options::default()
        },
    );
    let script = format!(
        "import socket,time\ns=socket.create_connection(('{}',9090))\nok=0\nfor i in range(18):\n    m=b'ping-%d' % i\n    s.sendall(m)\n    got=b''\n    while len(got)<len(m):\n        got+=s.recv(64)\n    ok+=got==m\n    time.sleep(0.5)\nprint(ok)",
        m.vip
    );
    let out = m
        .d_a
        .exec("default/productpage", &["python3", "-c", &script])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "18",
        "every echo arrived: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (node, d) in [("a", &m.d_a), ("b", &m.d_b)] {
        let renewals = d
            .log_text()
            .matches("renewed the workload certificate")
            .count();
        assert!(
            renewals >= 2,
            "node {node} renewed its certificate during the connection"
        );
    }
    // New connections after the rotation work too.
    let r = curl(&m.d_a, "default/productpage", &m.vip, &[], "/whoami");
    assert!(r.starts_with("200 "), "{r}");
}

#[test]
fn garbage_truncated_handshakes_and_stray_connects_fail_cleanly() {
    if !ebpf_available("mtls_garbage") {
        return;
    }
    // Node a believes two more workloads run on node b; node b knows nothing of them.
    let se = |name: &str, vip: &str, addr: &str, port: u16, sa: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  hosts: [{name}.default.svc.cluster.local]\n  addresses: [\"{vip}\"]\n  ports:\n  - {{number: 80, name: http, protocol: HTTP}}\n  resolution: STATIC\n  endpoints:\n  - address: {addr}\n    ports: {{http: {port}}}\n    serviceAccount: {sa}\n    labels: {{meshd.io/node: \"10.213.115.2\", meshd.io/tunnel-port: \"22132\"}}\n"
        )
    };
    // `ghost` is an address node b does not front; `imposter` is reviews' address under an
    // identity node b does not hold.
    let ghost = se("ghost", "10.213.115.60", "10.213.115.3", 9999, "reviews")
        + &se(
            "imposter",
            "10.213.115.61",
            "10.213.115.2",
            8082,
            "imposter",
        );
    let m = mesh_with(
        "mtls-garbage",
        115,
        (112, 113),
        Options {
            extra_a: &ghost,
            ..Options::default()
        },
    );
    let b = m.lan.node(1).clone();
    let port = support::ports(113).2;
    assert_eq!(port, 22132, "the slot layout the ghost's labels assume");
    // Raw bytes from node a's namespace straight to node b's tunnel port (not through meshd).
    let send = |bytes: &str| {
        let out = m
            .lan
            .node(0)
            .command("python3")
            .args([
                "-c",
                &format!("import socket; s=socket.create_connection(('{}',{port})); s.sendall({bytes}); s.settimeout(5)\ntry: print(repr(s.recv(64)))\nexcept Exception as e: print(type(e).__name__)", b.addr),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let garbage = send("b'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' * 10");
    assert!(!garbage.contains("HTTP/1.1 200"), "{garbage}");
    // A ClientHello cut after its first bytes.
    send("bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03])");
    let failed = m
        .d_b
        .metric(r#"meshd_tunnel_events_total{event="handshake_failed"}"#);
    assert!(failed >= 2.0, "both were counted: {failed}");
    assert!(m.d_b.log_text().contains("tunnel handshake rejected"));
    // Node b's meshd is unharmed.
    let r = curl(&m.d_a, "default/productpage", &m.vip, &[], "/whoami");
    assert!(r.starts_with("200 "), "{r}");
    // A CONNECT to an address that is no workload of node b is refused, and both sides say so.
    let out = m
        .d_a
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
                "http://10.213.115.60/",
            ],
        )
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "503");
    assert!(
        m.d_b
            .metric(r#"meshd_tunnel_events_total{event="stream_refused"}"#)
            >= 1.0
    );
    assert!(m.d_a.log_text().contains("is not a workload on this node"));
    assert!(
        m.d_b
            .log_text()
            .contains("tunnel CONNECT refused: not a workload on this node")
    );
    // A peer asking for an identity node b does not hold gets no certificate: the handshake
    // fails, and both sides say why.
    let out = m
        .d_a
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
                "http://10.213.115.61/",
            ],
        )
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "503");
    assert!(m.d_a.log_text().contains("TLS handshake failed"));
    assert!(
        m.d_b
            .log_text()
            .contains("no local workload certificate for the requested identity")
    );
}

/// `connectionPool.tcp.idleTimeout` closes an opaque connection that crosses to another node
/// once it has been quiet that long, as it does on one node; a busy one stays open.
#[test]
fn an_idle_tcp_connection_through_the_tunnel_is_closed_at_its_idle_timeout() {
    if !ebpf_available("mtls_idle") {
        return;
    }
    let idle = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: default}\nspec:\n  host: reviews.default.svc.cluster.local\n  trafficPolicy:\n    connectionPool:\n      tcp: {idleTimeout: 1s}\n";
    let m = mesh("mtls-idle", 116, (231, 232), idle, true);
    // Busy for 2 s (a ping every 250 ms), then quiet: the echo of every ping, then the close,
    // well before the client's own 8 s limit.
    let script = format!(
        "import socket,time\n\
         s=socket.create_connection(('{}',9090), timeout=8)\n\
         ok=0\n\
         for i in range(8):\n    s.sendall(b'p'); ok+=s.recv(1)==b'p'; time.sleep(0.25)\n\
         t=time.time()\n\
         try:\n    end=s.recv(1)\nexcept OSError as e:\n    end=repr(e)\n\
         print(ok, end, round(time.time()-t))",
        m.vip
    );
    let out = m
        .d_a
        .exec("default/productpage", &["python3", "-c", &script])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = said.split_whitespace().collect();
    assert_eq!(
        fields.get(..2).unwrap_or_default(),
        ["8", "b''"],
        "{said} {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        m.d_a.log_text()
    );
    let waited: u64 = fields[2].parse().unwrap();
    assert!(waited <= 3, "closed after about a second of quiet: {said}");
    // The access log is written in the background: its line may come a moment later.
    let logged = support::eventually(Duration::from_secs(5), || {
        (m.d_a.log_text())
            .contains("idle timeout (connectionPool.tcp.idleTimeout)")
            .then_some(())
    });
    assert!(logged.is_some(), "{}", m.d_a.log_text());
}

/// An AuthorizationPolicy that names its service with `targetRefs` (as one written for an
/// ambient waypoint does) applies to the workloads behind that service, not to the whole
/// namespace as a policy without a selector would.
#[test]
fn a_policy_with_target_refs_applies_to_the_service_it_names() {
    if !ebpf_available("authz_target_refs") {
        return;
    }
    let backend = HttpBackend::start("127.0.0.1:0");
    let details = HttpBackend::start("127.0.0.1:0");
    let echo = Backend::echo("127.0.0.1:0");
    let policy = format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: details, namespace: default}}
spec:
  address: 127.0.0.1
  serviceAccount: details
  ports: {{http: {port}}}
  labels: {{app: details}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: details, namespace: default}}
spec:
  hosts: [details.default.svc.cluster.local]
  addresses: ["127.0.0.71"]
  ports:
  - {{number: 9080, name: http, protocol: HTTP}}
  resolution: STATIC
  workloadSelector:
    labels: {{app: details}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: reviews-read-only, namespace: default}}
spec:
  targetRefs:
  - kind: ServiceEntry
    group: networking.istio.io
    name: reviews
  action: ALLOW
  rules:
  - to:
    - operation:
        methods: ["GET"]
"#,
        port = details.addr.port()
    );
    let dir = config("authz-target", &one_node(&backend, &echo, &policy));
    let d = Daemon::start("authz-target", 236, &["--config", dir.to_str().unwrap()]);
    let reviews = |args: &[&str]| curl(&d, "default/productpage", "127.0.0.70", args, "/whoami");
    assert!(reviews(&[]).starts_with("200 "), "{}", d.log_text());
    assert_eq!(reviews(&["-X", "POST"]), "403 RBAC: access denied");
    // details, in the same namespace, is not the policy's target.
    let posted = support::mesh::curl(
        &d,
        &[
            "-X",
            "POST",
            "--resolve",
            "details:9080:127.0.0.71",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://details:9080/whoami",
        ],
    );
    assert_eq!(posted, "200");
    assert_eq!(details.requests(), 1);
}

/// A DestinationRule's `tls: SIMPLE` on a TCP service on another node: the TLS meshd
/// originates runs inside the mTLS tunnel, end to end with the workload (`openssl s_server
/// -rev` on node b, which answers each line reversed), verified against the test CA by the
/// service's host. The client on node a speaks plain TCP.
#[test]
fn tls_originated_to_another_node_runs_inside_the_tunnel() {
    if !ebpf_available("mtls_originate") {
        return;
    }
    let (slots, subnet) = ((243, 244), 117);
    let net = format!("10.213.{subnet}");
    let certs = support::tls::certificates(
        &std::env::temp_dir().join("meshd-test-mtls-originate-certs"),
        "secure.default.svc.cluster.local",
    );
    let extra = format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: secure, namespace: default}}
spec:
  hosts: [secure.default.svc.cluster.local]
  addresses: ["{net}.51"]
  ports:
  - {{number: 9443, name: tcp, protocol: TCP}}
  resolution: STATIC
  endpoints:
  - address: {net}.2
    ports: {{tcp: 8443}}
    serviceAccount: reviews
    labels: {{app: secure, meshd.io/node: "{net}.2", meshd.io/tunnel-port: "{port}"}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: secure, namespace: default}}
spec:
  host: secure.default.svc.cluster.local
  trafficPolicy:
    tls:
      mode: SIMPLE
      caCertificates: {ca}
"#,
        port = support::ports(slots.1).2,
        ca = certs.join("ca.pem").display(),
    );
    let m = mesh("mtls-originate", subnet, slots, &extra, true);
    let b = m.lan.node(1).clone();
    let addr: std::net::SocketAddr = format!("{}:8443", b.addr).parse().unwrap();
    let _server =
        support::tls::TlsServer::spawn(b.command("openssl"), &certs, "-rev", addr, || {
            b.run(|| std::net::TcpStream::connect(addr).is_ok())
        });
    let wire = m.lan.capture(m.lan.node(1));
    let (answer, stderr) = send_line_from_a(&m, &format!("{net}.51:9443"), "across-in-tls");
    assert_eq!(
        answer,
        "slt-ni-ssorca",
        "{stderr}\nnode a:\n{}\nnode b:\n{}",
        m.d_a.log_text(),
        m.d_b.log_text()
    );
    let bytes = wire.stop();
    assert!(
        !contains(&bytes, b"across-in-tls"),
        "no plaintext on the wire"
    );
    assert_eq!(
        m.d_b
            .metric(r#"meshd_tunnel_events_total{event="stream_opened"}"#),
        1.0
    );
}

/// `trafficDistribution: PreferSameNode` (Istio's annotation) on a service with an endpoint on
/// each node: a client on node a is served by node a's endpoint; without it, node b's (through
/// the tunnel) takes a share too.
#[test]
fn prefer_same_node_keeps_requests_on_the_clients_node() {
    if !ebpf_available("mtls_same_node") {
        return;
    }
    let (slots, subnet) = ((245, 246), 118);
    let net = format!("10.213.{subnet}");
    let service = |annotation: &str| {
        format!(
            r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: spread
  namespace: default
{annotation}spec:
  hosts: [spread.default.svc.cluster.local]
  addresses: ["{net}.52"]
  ports:
  - {{number: 9080, name: http, protocol: HTTP}}
  resolution: STATIC
  endpoints:
  - address: {net}.1
    ports: {{http: 8090}}
    labels: {{app: spread, meshd.io/node: "{net}.1", meshd.io/tunnel-port: "{a}"}}
  - address: {net}.2
    ports: {{http: 8080}}
    serviceAccount: reviews
    labels: {{app: spread, meshd.io/node: "{net}.2", meshd.io/tunnel-port: "{b}"}}
"#,
            a = support::ports(slots.0).2,
            b = support::ports(slots.1).2,
        )
    };
    let annotated = "  annotations: {networking.istio.io/traffic-distribution: PreferSameNode}\n";
    for (annotation, name) in [(annotated, "mtls-same-node"), ("", "mtls-any-node")] {
        let m = mesh(name, subnet, slots, &service(annotation), true);
        let a = m.lan.node(0).clone();
        let local = a.run(|| HttpBackend::start(&format!("{}:8090", a.addr)));
        let vip = format!("{net}.52");
        for _ in 0..20 {
            let code = support::mesh::status(&m.d_a, &format!("http://{vip}:9080/whoami"));
            assert_eq!(code, "200", "{}", m.d_a.log_text());
        }
        let (here, there) = (local.requests(), m.backend.requests());
        match annotation.is_empty() {
            false => assert_eq!((here, there), (20, 0), "all on node a"),
            true => assert!(here > 0 && there > 0, "both nodes: {here} and {there}"),
        }
    }
}

/// DestinationRule `tunnel` to a forward proxy on another node: the CONNECT goes inside the mTLS
/// tunnel to node b, whose meshd hands it to tinyproxy there, and tinyproxy carries the bytes to
/// node b's echo server. Neither the CONNECT nor the payload crosses the wire in plaintext.
#[test]
fn a_connect_tunnel_to_a_proxy_on_another_node_runs_inside_the_mtls_tunnel() {
    if !ebpf_available("mtls_http_connect") {
        return;
    }
    let (slots, subnet) = ((249, 250), 119);
    let net = format!("10.213.{subnet}");
    let extra = format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: corp-proxy, namespace: default}}
spec:
  hosts: [proxy.corp.example]
  addresses: ["{net}.53"]
  ports:
  - {{number: 3128, name: tcp, protocol: TCP}}
  resolution: STATIC
  endpoints:
  - address: {net}.2
    ports: {{tcp: 8888}}
    serviceAccount: reviews
    labels: {{role: tunnel, meshd.io/node: "{net}.2", meshd.io/tunnel-port: "{port}"}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: corp-proxy, namespace: default}}
spec:
  host: proxy.corp.example
  subsets:
  - name: tunnel
    labels: {{role: tunnel}}
    trafficPolicy:
      tunnel: {{protocol: CONNECT, targetHost: "{net}.2", targetPort: 8081}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: partner, namespace: default}}
spec:
  hosts: [api.partner.example]
  addresses: ["{net}.54"]
  ports:
  - {{number: 9000, name: tcp, protocol: TCP}}
  resolution: STATIC
  location: MESH_EXTERNAL
  endpoints:
  - address: 127.0.0.1
    ports: {{tcp: 9}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: partner-through-proxy, namespace: default}}
spec:
  hosts: [api.partner.example]
  tcp:
  - route:
    - destination:
        host: proxy.corp.example
        subset: tunnel
        port: {{number: 3128}}
"#,
        port = support::ports(slots.1).2,
    );
    let m = mesh("mtls-connect", subnet, slots, &extra, true);
    let b = m.lan.node(1).clone();
    let addr: std::net::SocketAddr = format!("{}:8888", b.addr).parse().unwrap();
    let proxy = support::tinyproxy::Tinyproxy::spawn(
        "mtls-connect",
        b.command("tinyproxy"),
        addr,
        &[&format!("{net}.0/24"), "127.0.0.1"],
        || b.run(|| std::net::TcpStream::connect(addr).is_ok()),
    );
    let wire = m.lan.capture(m.lan.node(1));
    let (answer, stderr) =
        send_line_from_a(&m, &format!("{net}.54:9000"), "across-through-the-proxy");
    assert_eq!(
        answer,
        "across-through-the-proxy",
        "{stderr}\nproxy:\n{}\nnode a:\n{}\nnode b:\n{}",
        proxy.log_text(),
        m.d_a.log_text(),
        m.d_b.log_text()
    );
    assert!(
        proxy
            .log_text()
            .contains(&format!("CONNECT {net}.2:8081 HTTP/1.1")),
        "{}",
        proxy.log_text()
    );
    let bytes = wire.stop();
    assert!(
        !contains(&bytes, format!("CONNECT {net}").as_bytes()),
        "no CONNECT in plaintext on the wire"
    );
    assert!(
        !contains(&bytes, b"across-through-the-proxy"),
        "no payload in plaintext on the wire"
    );
    assert_eq!(
        m.d_b
            .metric(r#"meshd_tunnel_events_total{event="stream_opened"}"#),
        1.0
    );
}

#[test]
fn a_policy_added_later_applies_to_the_streams_already_open() {
    if !ebpf_available("mtls_revoke") {
        return;
    }
    let m = mesh("mtls-revoke", 160, (264, 265), "", true);
    let get = |path: &str| curl(&m.d_a, "default/productpage", &m.vip, &[], path);
    // No policy reads requests: node b copies the stream's bytes, unread.
    assert!(get("/whoami").starts_with("200 "));
    assert!(!get("/admin").starts_with("403 "));
    // The policies arrive on node b: the open stream may no longer be carried unread, and the
    // next requests are authorized one by one (they kept reaching the workload before).
    let file = std::env::temp_dir().join("meshd-test-mtls-revoke-policies/mesh.yaml");
    let yaml = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("{yaml}{POLICY}")).unwrap();
    support::eventually(Duration::from_secs(5), || {
        m.d_b
            .log_text()
            .contains("configuration applied")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("not reloaded; log:\n{}", m.d_b.log_text()));
    // The stream closes as the change is applied, a moment after it is logged.
    support::eventually(Duration::from_secs(5), || {
        (get("/admin") == "403 RBAC: access denied").then_some(())
    })
    .unwrap_or_else(|| panic!("/admin still served; log:\n{}", m.d_b.log_text()));
    assert!(get("/whoami").starts_with("200 "));
}

#[test]
fn a_tunnel_stream_is_carried_through_the_destination_nodes_drain() {
    if !ebpf_available("mtls_drain") {
        return;
    }
    let mut m = mesh("mtls-drain", 161, (266, 267), "", true);
    // An echo over the tunnel, one line per line of stdin.
    let script = format!(
        "import socket, sys\ns = socket.create_connection(('{}', 9090), timeout=5)\nwhile True:\n    line = sys.stdin.readline()\n    if not line:\n        break\n    s.sendall(line.encode())\n    try:\n        print(s.recv(200).decode().strip() or 'eof', flush=True)\n    except OSError as e:\n        print('error', e, flush=True)\n",
        m.vip
    );
    let mut client = support::LineClient::spawn(
        m.d_a
            .exec("default/productpage", &["python3", "-c", &script]),
    );
    assert_eq!(client.ask("before"), "before");
    m.d_b.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(500));
    // Node b drains: its tunnel stream carries on (it was cut at once).
    assert_eq!(client.ask("during"), "during", "log:\n{}", m.d_b.log_text());
    client.finish();
    let status = m.d_b.stop();
    assert!(status.success(), "{}", m.d_b.log_text());
}

/// A mirrored copy is a request to the mirror's workload like any other: its
/// AuthorizationPolicy decides it, as the inbound sidecar of Istio's mirror target does. A
/// caller denied by reviews cannot reach it through a service that mirrors there.
#[test]
fn a_mirrored_copy_is_authorized_as_a_request_to_its_workload() {
    if !ebpf_available("authz_mirror") {
        return;
    }
    let backend = HttpBackend::start("127.0.0.1:0");
    let open = HttpBackend::start("127.0.0.1:0");
    let echo = Backend::echo("127.0.0.1:0");
    let extra = format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: open, namespace: default}}
spec:
  hosts: [open.default.svc.cluster.local]
  addresses: ["127.0.0.71"]
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: open, namespace: default}}
spec:
  hosts: [open]
  http:
  - route: [{{destination: {{host: open}}}}]
    mirror: {{host: reviews}}
    mirrorPercentage: {{value: 100}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow-nothing, namespace: default}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
"#,
        port = open.addr.port()
    );
    let dir = config("authz-mirror", &one_node(&backend, &echo, &extra));
    let d = Daemon::start("authz-mirror", 345, &["--config", dir.to_str().unwrap()]);
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
                "-X",
                "POST",
                "-d",
                "secret=1",
                "--resolve",
                "open:9080:127.0.0.71",
                "http://open:9080/admin",
            ],
        )
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    assert_eq!(open.requests(), 1);
    support::eventually(Duration::from_secs(5), || {
        (d.metric(r#"meshd_http_mirror_total{result="denied"}"#) >= 1.0).then_some(())
    })
    .unwrap_or_else(|| panic!("no denied copy: {}", d.get("/metrics")));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        backend.requests(),
        0,
        "the copy never reached the denying workload"
    );
    assert_eq!(backend.shadow_requests(), 0);
}

/// Where a workload's PeerAuthentication turns mTLS off (DISABLE), Istio's destination sees
/// plaintext and no peer, so rules on the caller's identity cannot match it: an ALLOW on a
/// principal denies, as it does for a DISABLE destination on another node.
#[test]
fn a_disable_port_proves_no_identity_on_this_node_either() {
    if !ebpf_available("authz_disable_local") {
        return;
    }
    let backend = HttpBackend::start("127.0.0.1:0");
    let echo = Backend::echo("127.0.0.1:0");
    let policy = r#"---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: productpage-only, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  rules: [{from: [{source: {principals: ["cluster.local/ns/default/sa/productpage"]}}]}]
"#;
    let dir = config("authz-disable-local", &one_node(&backend, &echo, policy));
    let d = Daemon::start(
        "authz-disable-local",
        346,
        &["--config", dir.to_str().unwrap()],
    );
    let get = || curl(&d, "default/productpage", "127.0.0.70", &[], "/whoami");
    assert!(
        get().starts_with("200 "),
        "with mTLS possible, the identity counts"
    );
    let disable = "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: reviews, namespace: default}\nspec: {selector: {matchLabels: {app: reviews}}, mtls: {mode: DISABLE}}\n";
    std::fs::write(
        dir.join("mesh.yaml"),
        one_node(&backend, &echo, &format!("{policy}{disable}")),
    )
    .unwrap();
    support::eventually(Duration::from_secs(5), || {
        (d.metric(r#"meshd_config_reload_total{result="success"}"#) >= 1.0).then_some(())
    })
    .expect("reload applied");
    assert_eq!(get(), "403 RBAC: access denied");
}
