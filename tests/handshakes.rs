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
    Daemon, cpus, ebpf_available, has_series,
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
fn two_nodes(name: &str, subnet: u8, slots: (u16, u16), more: &[&str]) -> TwoNodes {
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
        let mut args = vec!["--access-log", "off"];
        args.extend_from_slice(more);
        Daemon::start_mesh_node(n, &name, slot, &dir, &ca, &args)
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
    let m = two_nodes("hs-reuse", 154, (154, 155), &[]);
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
        has_series(
            &metrics,
            "istio_requests_total",
            &[r#"connection_security_policy="mutual_tls""#],
            Some("300")
        ),
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
    let m = two_nodes("hs-bench", 156, (156, 157), &[]);
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

/// Where the throughput benchmark runs its processes.
#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// Each simulated node on a CPU of its own, as two machines would be: node a's meshd and
    /// wrk on CPU 0; node b's meshd and the backends (threads of this test) on CPU 1.
    PerNode,
    /// Every process on every CPU: both nodes' meshd, wrk and the backends share the CPUs.
    Shared,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::PerNode => "one CPU per node",
            Layout::Shared => "shared CPUs",
        }
    }

    /// Pins the daemons and this process (whose threads serve the backends); returns the
    /// `taskset` CPU list for wrk.
    fn apply(self, m: &TwoNodes) -> &'static str {
        let me = std::process::id() as i32;
        match self {
            Layout::PerNode => {
                cpus::pin(m.d_a.pid(), Some(&[0]));
                cpus::pin(m.d_b.pid(), Some(&[1]));
                cpus::pin(me, Some(&[1]));
                "0"
            }
            Layout::Shared => {
                for pid in [m.d_a.pid(), m.d_b.pid(), me] {
                    cpus::pin(pid, None);
                }
                "0-1023"
            }
        }
    }
}

/// One wrk run of the throughput benchmark.
struct Run {
    round: usize,
    layout: Layout,
    tunnel: bool,
    rps: f64,
    p50: String,
    /// CPU seconds node a's and node b's meshd spent during the run.
    cpu: (f64, f64),
}

/// HTTP/1.1 throughput and latency (wrk, 16 connections, 5 s) from web on node a to node b,
/// through the tunnel (the VIP .50 in front of api on 8080) and through meshd in plaintext (the
/// VIP .51 in front of an unlabelled backend on 8090), alternating over `MESHD_BENCH_ROUNDS`
/// rounds (default 3), each with one CPU per simulated node and with shared CPUs. Both meshd run
/// one worker thread. Writes target/bench/tunnel-throughput.md.
#[test]
#[ignore = "a benchmark: run it on purpose"]
fn tunnel_throughput_benchmark() {
    if !ebpf_available("tunnel_throughput") {
        return;
    }
    let m = two_nodes("hs-tput", 158, (158, 159), &["--worker-threads", "1"]);
    let b = m.lan.node(1).clone();
    let _plain = b.run(|| HttpBackend::start(&format!("{}:8090", b.addr)));
    let rounds: usize = std::env::var("MESHD_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let layouts: &[Layout] = if cpus::online() >= 2 {
        &[Layout::PerNode, Layout::Shared]
    } else {
        &[Layout::Shared]
    };
    let wrk = |url: &str, cpus: &str| -> (f64, String) {
        let args = [
            "taskset",
            "-c",
            cpus,
            "wrk",
            "-t1",
            "-c16",
            "-d5s",
            "--latency",
            url,
        ];
        let out = m.d_a.exec("default/web", &args).output().unwrap();
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
    let mut runs = Vec::new();
    for round in 1..=rounds {
        for &layout in layouts {
            let cpus = layout.apply(&m);
            for tunnel in [false, true] {
                let vip = if tunnel { 50 } else { 51 };
                let before = (cpus::seconds(m.d_a.pid()), cpus::seconds(m.d_b.pid()));
                let (rps, p50) = wrk(&format!("http://10.213.158.{vip}:9080/whoami"), cpus);
                let cpu = (
                    cpus::seconds(m.d_a.pid()) - before.0,
                    cpus::seconds(m.d_b.pid()) - before.1,
                );
                let path = if tunnel { "mTLS tunnel" } else { "plaintext" };
                eprintln!(
                    "round {round}, {}: {path}: {rps:.0} req/s, p50 {p50}",
                    layout.name()
                );
                runs.push(Run {
                    round,
                    layout,
                    tunnel,
                    rps,
                    p50,
                    cpu,
                });
            }
        }
    }
    Layout::Shared.apply(&m);
    let text = throughput_report(&runs, layouts, m.d_b.metric(HANDSHAKES));
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tunnel-throughput.md"), &text).unwrap();
    println!("{text}");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The benchmark's Markdown report: every run, then per layout the medians, the median of the
/// per-round ratios, and each meshd's CPU time per request.
fn throughput_report(runs: &[Run], layouts: &[Layout], handshakes: f64) -> String {
    let mut text = String::from(
        "# mTLS tunnel vs plaintext through meshd\n\nwrk -t1 -c16, 5 s per run, HTTP/1.1 keep-alive; both meshd with one worker thread. \"One CPU per node\": node a's meshd and wrk on CPU 0, node b's meshd and the backends on CPU 1, as two machines would be. \"Shared CPUs\": everything on every CPU.\n\n| round | CPUs | path | req/s | p50 |\n| --- | --- | --- | ---: | ---: |\n",
    );
    for r in runs {
        let path = if r.tunnel { "mTLS tunnel" } else { "plaintext" };
        text.push_str(&format!(
            "| {} | {} | {path} | {:.0} | {} |\n",
            r.round,
            r.layout.name(),
            r.rps,
            r.p50
        ));
    }
    text.push('\n');
    for &layout in layouts {
        let of = |tunnel: bool| -> Vec<&Run> {
            runs.iter()
                .filter(|r| r.layout == layout && r.tunnel == tunnel)
                .collect()
        };
        let (plain, tunnel) = (of(false), of(true));
        let rps = |v: &[&Run]| median(v.iter().map(|r| r.rps).collect());
        let paired = median(
            plain
                .iter()
                .zip(&tunnel)
                .map(|(p, t)| t.rps / p.rps.max(1.0))
                .collect(),
        );
        // CPU seconds per request over all runs of one path, in microseconds.
        let per_request = |v: &[&Run], side: fn(&Run) -> f64| {
            let requests: f64 = v.iter().map(|r| r.rps * 5.0).sum();
            v.iter().map(|r| side(r)).sum::<f64>() / requests.max(1.0) * 1e6
        };
        text.push_str(&format!(
            "**{}**: tunnel {:.0} req/s, plaintext {:.0} req/s (medians); tunnel / plaintext, median of the rounds: **{paired:.2}x**. CPU per tunnelled request: node a's meshd {:.1} us, node b's meshd {:.1} us; per plaintext request: node a's meshd {:.1} us.\n\n",
            layout.name(),
            rps(&tunnel),
            rps(&plain),
            per_request(&tunnel, |r| r.cpu.0),
            per_request(&tunnel, |r| r.cpu.1),
            per_request(&plain, |r| r.cpu.0),
        ));
    }
    text.push_str(&format!("TLS handshakes on node b: {handshakes}.\n"));
    text
}
