//! Tunnel handshakes: reused tunnel connections add no TLS handshake per request, and (as
//! ignored benchmarks) how many new mTLS connections per second a node's inbound port accepts,
//! and the tunnel's HTTP throughput against plaintext through meshd.

mod support;

use std::{
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use meshd::identity::{Ca, SpiffeId, tls};
use support::{
    Daemon, ebpf_available,
    http_backend::HttpBackend,
    netns::{Lan, Node},
};

const HANDSHAKES: &str = r#"meshd_tunnel_events_total{event="handshake_ok"}"#;

struct TwoNodes {
    d_a: Daemon,
    d_b: Daemon,
    backend: HttpBackend,
    ca: PathBuf,
    lan: Lan,
}

fn labels(n: &Node, slot: u16) -> String {
    format!(
        "meshd.io/node: \"{}\", meshd.io/tunnel-port: \"{}\"",
        n.addr,
        support::ports(slot).2
    )
}

/// web and intruder (namespace other) on node a; an HTTP backend `api` on node b at 8080, whose
/// AuthorizationPolicy denies namespace other by identity alone.
fn two_nodes(name: &str, subnet: u8, slots: (u16, u16)) -> TwoNodes {
    let lan = Lan::new(name, subnet, 2);
    let (a, b) = (lan.node(0).clone(), lan.node(1).clone());
    let ca = support::ca_dir(name);
    let yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: web, namespace: default}}
spec: {{address: {a}, serviceAccount: web, labels: {{app: web, {la}}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: intruder, namespace: other}}
spec: {{address: {a}, serviceAccount: intruder, labels: {{app: intruder, {la}}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: api-deny-other, namespace: default}}
spec:
  selector: {{matchLabels: {{app: api}}}}
  action: DENY
  rules: [{{from: [{{source: {{namespaces: [other]}}}}]}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: api, namespace: default}}
spec:
  address: {b}
  serviceAccount: api
  ports: {{http: 8080}}
  labels: {{app: api, {lb}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: default}}
spec:
  hosts: [api.default.svc.cluster.local]
  addresses: ["{net}.50"]
  ports: [{{number: 9080, name: http, protocol: HTTP, targetPort: 8080}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: api}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: plain, namespace: default}}
spec:
  hosts: [plain.default.svc.cluster.local]
  addresses: ["{net}.51"]
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: {b}, ports: {{http: 8090}}}}]
"#,
        net = format!("10.213.{subnet}"),
        a = a.addr,
        b = b.addr,
        la = labels(&a, slots.0),
        lb = labels(&b, slots.1),
    );
    let dir = std::env::temp_dir().join(format!("meshd-test-{name}-policies"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("mesh.yaml"), yaml).unwrap();
    let backend = b.run(|| HttpBackend::start(&format!("{}:8080", b.addr)));
    let start = |n: &Node, who: &str, slot: u16| {
        let name = format!("{name}-{who}");
        Daemon::start_mesh_node(n, &name, slot, &dir, &ca, &["--access-log", "off"])
    };
    let d_b = start(&b, "b", slots.1);
    let d_a = start(&a, "a", slots.0);
    TwoNodes {
        d_a,
        d_b,
        backend,
        ca,
        lan,
    }
}

/// `n` HTTP requests from web, each on a new connection of its own, 8 at a time.
fn requests(m: &TwoNodes, n: usize) -> String {
    let b = m.lan.node(1).addr;
    let script = format!(
        "import concurrent.futures, urllib.request\n\
         def get(i):\n\
         \x20   with urllib.request.urlopen('http://{b}:8080/whoami', timeout=10) as r:\n\
         \x20       return r.status\n\
         with concurrent.futures.ThreadPoolExecutor(8) as ex:\n\
         \x20   codes = list(ex.map(get, range({n})))\n\
         print(sum(1 for c in codes if c == 200))\n"
    );
    let out = m
        .d_a
        .exec("default/web", &["python3", "-c", &script])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn reused_tunnel_connections_add_no_handshake_per_request() {
    if !ebpf_available("handshakes_reuse") {
        return;
    }
    let m = two_nodes("hs-reuse", 154, (154, 155));
    assert_eq!(requests(&m, 300), "300", "node a:\n{}", m.d_a.log_text());
    assert_eq!(m.backend.requests(), 300);
    // 300 downstream connections, 8 at a time, one TLS handshake between the nodes; the
    // requests ride pooled upstream connections, each a CONNECT stream on that one connection.
    assert_eq!(m.d_b.metric(HANDSHAKES), 1.0);
    let streams = m
        .d_b
        .metric(r#"meshd_tunnel_events_total{event="stream_opened"}"#);
    assert!((1.0..=8.0).contains(&streams), "{streams} streams");
    // With only identity-based policies, node b copies allowed streams as bytes; a denied
    // stream is still served as HTTP, so each request gets Istio's 403.
    let b = m.lan.node(1).addr;
    let out = m
        .d_a
        .exec(
            "other/intruder",
            &[
                "curl",
                "-sS",
                "--max-time",
                "10",
                "-w",
                " %{http_code}",
                &format!("http://{b}:8080/whoami"),
            ],
        )
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "RBAC: access denied 403"
    );
    assert_eq!(m.backend.requests(), 300);
    assert_eq!(
        m.d_b.metric(r#"meshd_tunnel_events_total{event="denied"}"#),
        1.0,
        "node b decided"
    );
    // The source side labels the requests as mTLS.
    let metrics = m.d_a.get("/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_requests_total{")
                && l.contains(r#"connection_security_policy="mutual_tls""#)
                && l.ends_with(" 300")),
        "{metrics}"
    );
}

/// One full mTLS handshake with node b's inbound port, presenting web's certificate and
/// requiring api's identity, as node a's meshd does.
fn handshake(config: &Arc<rustls::ClientConfig>, to: SocketAddr, server: &SpiffeId) -> bool {
    let Ok(mut sock) = TcpStream::connect_timeout(&to, Duration::from_secs(2)) else {
        return false;
    };
    let _ = sock.set_nodelay(true);
    let _ = sock.set_read_timeout(Some(Duration::from_secs(5)));
    let Ok(mut conn) = rustls::ClientConnection::new(config.clone(), server.server_name()) else {
        return false;
    };
    while conn.is_handshaking() {
        if conn.complete_io(&mut sock).is_err() {
            return false;
        }
    }
    // Flush the client's Finished so the server completes too.
    while conn.wants_write() {
        if conn.write_tls(&mut sock).is_err() {
            return false;
        }
    }
    conn.send_close_notify();
    let _ = conn.write_tls(&mut sock);
    true
}

/// New mTLS connections per second to a node's tunnel port: `threads` clients, each handshaking
/// in a loop for 5 s, from node a's namespace (the clients are plain threads of this test; the
/// server is node b's meshd). Writes target/bench/handshakes.md.
#[test]
#[ignore = "a benchmark: run it on purpose"]
fn tunnel_handshakes_benchmark() {
    if !ebpf_available("handshakes_bench") {
        return;
    }
    let m = two_nodes("hs-bench", 156, (156, 157));
    let (a, b) = (m.lan.node(0).clone(), m.lan.node(1).clone());
    let ca = Ca::load(&m.ca).unwrap();
    let web = SpiffeId::new("cluster.local", "default", "web").unwrap();
    let api = SpiffeId::new("cluster.local", "default", "api").unwrap();
    let cert = ca.issue(&web, Duration::from_secs(3600)).unwrap();
    let config = tls::client_config(&cert, Arc::new(ca.roots()), api.clone());
    let to: SocketAddr = (b.addr, support::ports(157).2).into();
    let mut text = String::from(
        "# Tunnel handshakes per second\n\nNew TLS 1.3 connections with a client certificate to node b's inbound port (meshd, debug or release as built), from node a; each client handshakes in a loop for 5 s.\n\n| clients | handshakes | failed | per second |\n| ---: | ---: | ---: | ---: |\n",
    );
    for threads in [1usize, 4, 16] {
        let before = m.d_b.metric(HANDSHAKES);
        let started = Instant::now();
        let (ok, failed) = a.run(|| {
            std::thread::scope(|s| {
                let workers: Vec<_> = (0..threads)
                    .map(|_| {
                        let (config, api) = (config.clone(), api.clone());
                        s.spawn(move || {
                            let (mut ok, mut failed) = (0u64, 0u64);
                            while started.elapsed() < Duration::from_secs(5) {
                                if handshake(&config, to, &api) {
                                    ok += 1;
                                } else {
                                    failed += 1;
                                }
                            }
                            (ok, failed)
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .map(|w| w.join().unwrap())
                    .fold((0, 0), |acc, (o, f)| (acc.0 + o, acc.1 + f))
            })
        });
        let secs = started.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(300));
        let counted = m.d_b.metric(HANDSHAKES) - before;
        eprintln!(
            "{threads} clients: {ok} handshakes ({counted} counted by node b), {failed} failed, {:.0}/s",
            ok as f64 / secs
        );
        text.push_str(&format!(
            "| {threads} | {ok} | {failed} | {:.0} |\n",
            ok as f64 / secs
        ));
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("handshakes.md"), &text).unwrap();
    println!("{text}");
}

/// HTTP/1.1 throughput and latency (wrk, 16 connections, 5 s) from web on node a to node b,
/// through the tunnel (the VIP .50 in front of api on 8080) and through meshd in plaintext (the
/// VIP .51 in front of an unlabelled backend on 8090), alternating over `MESHD_BENCH_ROUNDS` rounds (default 3). Writes
/// target/bench/tunnel-throughput.md.
#[test]
#[ignore = "a benchmark: run it on purpose"]
fn tunnel_throughput_benchmark() {
    if !ebpf_available("tunnel_throughput") {
        return;
    }
    let m = two_nodes("hs-tput", 158, (158, 159));
    let b = m.lan.node(1).clone();
    let _plain = b.run(|| HttpBackend::start(&format!("{}:8090", b.addr)));
    let rounds: usize = std::env::var("MESHD_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let wrk = |url: &str| -> (f64, String) {
        let out = m
            .d_a
            .exec(
                "default/web",
                &["wrk", "-t1", "-c16", "-d5s", "--latency", url],
            )
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let field = |prefix: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(prefix))
                .and_then(|l| l.split_whitespace().nth(1))
                .unwrap_or("?")
                .to_string()
        };
        (field("Requests/sec:").parse().unwrap_or(0.0), field("50%"))
    };
    let mut rows = Vec::new();
    // CPU time each meshd spends per request in the tunnel runs: steadier than req/s on a
    // shared machine.
    let (mut cpu_a, mut cpu_b, mut tunnelled) = (0.0, 0.0, 0.0);
    let (mut plain_cpu_a, mut plain_requests) = (0.0, 0.0);
    for round in 1..=rounds {
        for (name, vip) in [("plaintext through meshd", 51), ("mTLS tunnel", 50)] {
            let before = (cpu_seconds(m.d_a.pid()), cpu_seconds(m.d_b.pid()));
            let (rps, p50) = wrk(&format!("http://10.213.158.{vip}:9080/whoami"));
            if vip == 50 {
                cpu_a += cpu_seconds(m.d_a.pid()) - before.0;
                cpu_b += cpu_seconds(m.d_b.pid()) - before.1;
                tunnelled += rps * 5.0;
            } else {
                plain_cpu_a += cpu_seconds(m.d_a.pid()) - before.0;
                plain_requests += rps * 5.0;
            }
            eprintln!("round {round}: {name}: {rps:.0} req/s, p50 {p50}");
            rows.push((round, name, rps, p50));
        }
    }
    let median = |name: &str| {
        let mut v: Vec<f64> = rows.iter().filter(|r| r.1 == name).map(|r| r.2).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (plain, tunnel) = (median("plaintext through meshd"), median("mTLS tunnel"));
    let mut text = String::from(
        "# mTLS tunnel vs plaintext through meshd\n\n| round | path | req/s | p50 |\n| --- | --- | ---: | ---: |\n",
    );
    for (round, name, rps, p50) in &rows {
        text.push_str(&format!("| {round} | {name} | {rps:.0} | {p50} |\n"));
    }
    text.push_str(&format!(
        "\nMedian: tunnel {tunnel:.0} req/s, plaintext {plain:.0} req/s: **{:.2}x**; handshakes on node b: {}.\n",
        tunnel / plain,
        m.d_b.metric(HANDSHAKES)
    ));
    text.push_str(&format!(
        "CPU per tunnelled request: node a's meshd {:.1} us, node b's meshd {:.1} us; per plaintext request: node a's meshd {:.1} us.\n",
        cpu_a / tunnelled * 1e6,
        cpu_b / tunnelled * 1e6,
        plain_cpu_a / plain_requests * 1e6
    ));
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tunnel-throughput.md"), &text).unwrap();
    println!("{text}");
}

/// User plus system CPU seconds a process has used so far.
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}
