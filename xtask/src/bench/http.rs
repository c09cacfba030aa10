//! `cargo xtask bench http`: small HTTP GETs through meshd (with a VirtualService's retries and
//! 90/10 subset split) against nginx and HAProxy as proxies in front of the same nginx backend:
//! HTTP/1.1 throughput (wrk), HTTP/1.1 latency at a fixed 1000 req/s (this binary's fixed-rate
//! client), meshd's CPU and memory, and HTTP/2 throughput (h2load). Writes target/bench/http.md.

mod rate;
mod rounds;
pub(super) mod tools;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use self::{
    rounds::Round,
    tools::{Group, H2load, Wrk},
};
use super::procs::{field, helper, run_json};
use crate::{
    build,
    daemon::{Layout, Meshd, ensure_free},
    util::{output, require_root, root, run as run_cmd, step},
};

/// The nginx backend: HTTP/1.1 and h2c (prior knowledge).
const BACKEND_H1: u16 = 25210;
const BACKEND_H2: u16 = 25211;
/// The peers: nginx as an HTTP/1.1 proxy, HAProxy, nginx as an HTTP/2 proxy.
const NGINX_H1: u16 = 25212;
const HAPROXY: u16 = 25213;
const NGINX_H2: u16 = 25214;
/// The engine's floor: a minimal hyper proxy (proxy-userspace/examples/hyper_floor.rs).
const HYPER_FLOOR: u16 = 25215;

/// The benchmark's own meshd ports and attach cgroup.
const LAYOUT: Layout = Layout {
    admin_port: 25220,
    outbound_port: 25221,
    inbound_port: 25228,
    cgroup: "meshd-bench-http",
};

/// meshd's settings in this benchmark, matched to the peers'.
const MESHD_ARGS: [&str; 4] = ["--worker-threads", "1", "--access-log", "off"];

const WORKLOAD: &str = "bench/client";
const HOST: &str = "bench.default.svc.cluster.local";

/// The fixed-rate client: 8 connections, one GET every 8 ms each (1000 req/s in total).
const RATE_CONNS: u32 = 8;
const RATE_INTERVAL_MS: u64 = 8;
const RATE_WARMUP_SECS: u64 = 1;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    helper: Option<Helper>,
    /// Seconds per measurement [default: 10; 3 with --quick].
    #[arg(long)]
    secs: Option<u64>,
    /// A short, noisier run.
    #[arg(long)]
    quick: bool,
    /// Rounds of every measurement; the report gives medians and paired ratios [default: 1].
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Use the meshd binary and the hyper floor already built (target/release, or under
    /// CARGO_TARGET_DIR) instead of building them.
    #[arg(long)]
    no_build: bool,
    /// Run meshd with MESHD_LOG=meshd=debug, to check its routing in its log (not for numbers).
    #[arg(long)]
    meshd_debug: bool,
}

#[derive(Subcommand)]
enum Helper {
    /// Fixed-rate HTTP/1.1 GETs over keep-alive connections; one JSON line on stdout.
    #[command(hide = true)]
    RateClient {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = RATE_CONNS)]
        conns: u32,
        #[arg(long, default_value_t = RATE_INTERVAL_MS)]
        interval_ms: u64,
        #[arg(long)]
        secs: u64,
        #[arg(long, default_value_t = RATE_WARMUP_SECS)]
        warmup_secs: u64,
    },
}

impl Args {
    fn secs(&self) -> u64 {
        self.secs.unwrap_or(if self.quick { 3 } else { 10 }).max(1)
    }
}

/// Latency at a fixed rate, from the fixed-rate client.
#[derive(Clone, Copy, Debug, Default)]
struct Rate {
    count: u64,
    errors: u64,
    late_starts: u64,
    secs: u64,
    median_ns: u64,
    p99_ns: u64,
    max_ns: u64,
}

/// One HTTP/1.1 path's results.
#[derive(Clone, Copy, Debug, Default)]
struct H1 {
    wrk: Wrk,
    rate: Rate,
    /// The proxy's CPU time (user + system) per request during the wrk run, in µs; 0 for the
    /// direct path.
    cpu_us: f64,
    /// The user-space part of `cpu_us`; the rest is the kernel's.
    cpu_user_us: f64,
}

/// meshd's own resource use.
#[derive(Clone, Debug, Default)]
struct Usage {
    cpu_s_per_1000: f64,
    rss_idle: u64,
    rss_loaded: u64,
    metrics: Vec<String>,
}

struct Results {
    secs: u64,
    machine: String,
    versions: Vec<String>,
    /// Each number's median over the rounds.
    median: Round,
    rounds: Vec<Round>,
}

pub fn run(args: &Args) -> Result<()> {
    if let Some(Helper::RateClient {
        addr,
        conns,
        interval_ms,
        secs,
        warmup_secs,
    }) = args.helper
    {
        return rate::client(addr, conns, interval_ms, secs, warmup_secs);
    }
    require_root("bench http")?;
    crate::setup::debian_packages(&["nginx", "haproxy", "wrk", "nghttp2-client"])?;
    if !args.no_build {
        build::all()?;
        build::hyper_floor()?;
    }
    let binary = build::meshd_release();
    let floor_binary = build::hyper_floor_release();
    if !floor_binary.exists() {
        bail!(
            "{} does not exist: run without --no-build, or build it with `cargo build --release \
             -p meshd --example hyper_floor`",
            floor_binary.display()
        );
    }
    let dir = root().join("target/bench/http");
    for d in ["tmp-backend", "tmp-proxy", "policies"] {
        let d = dir.join(d);
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    for port in [
        BACKEND_H1,
        BACKEND_H2,
        NGINX_H1,
        HAPROXY,
        NGINX_H2,
        HYPER_FLOOR,
    ] {
        ensure_free(port)?;
    }
    let secs = args.secs();

    step("meshd policies: ServiceEntry + DestinationRule + VirtualService (retries, 90/10 split)");
    let policies = dir.join("policies");
    write(
        &policies.join("bench.yaml"),
        &policies_yaml(BACKEND_H1, BACKEND_H2),
    )?;
    run_cmd(Command::new(&binary).arg("analyze").arg(&policies))?;

    step("starting the backend (nginx) and the peers (nginx proxy, HAProxy)");
    let backend_conf = dir.join("backend.conf");
    write(
        &backend_conf,
        &tools::nginx_backend(&dir, BACKEND_H1, BACKEND_H2),
    )?;
    let _backend = Group::start(
        "nginx backend",
        nginx(&backend_conf, &dir),
        &dir.join("backend.log"),
        &[BACKEND_H1, BACKEND_H2],
    )?;
    let proxy_conf = dir.join("proxy.conf");
    write(
        &proxy_conf,
        &tools::nginx_proxy(&dir, NGINX_H1, NGINX_H2, BACKEND_H1),
    )?;
    let nginx = Group::start(
        "nginx proxy",
        nginx(&proxy_conf, &dir),
        &dir.join("proxy.log"),
        &[NGINX_H1, NGINX_H2],
    )?;
    let haproxy_conf = dir.join("haproxy.cfg");
    write(&haproxy_conf, &tools::haproxy(HAPROXY, BACKEND_H1))?;
    let mut cmd = Command::new("haproxy");
    cmd.arg("-db").arg("-f").arg(&haproxy_conf);
    let haproxy = Group::start("haproxy", cmd, &dir.join("haproxy.log"), &[HAPROXY])?;
    let mut cmd = Command::new(&floor_binary);
    cmd.arg(HYPER_FLOOR.to_string()).arg(BACKEND_H1.to_string());
    let floor = Group::start(
        "hyper floor",
        cmd,
        &dir.join("hyper-floor.log"),
        &[HYPER_FLOOR],
    )?;
    let peers = Peers {
        nginx: &nginx,
        haproxy: &haproxy,
        floor: &floor,
    };

    let total = args.rounds.max(1);
    let mut all = Vec::with_capacity(total);
    for n in 0..total {
        if total > 1 {
            step(&format!("round {} of {total}", n + 1));
        }
        all.push(round(&binary, &dir, &policies, secs, args, n, &peers)?);
    }
    let results = Results {
        secs,
        machine: machine(),
        versions: versions(&binary),
        median: rounds::combine(&all),
        rounds: all,
    };
    let text = results.markdown();
    let path = root().join("target/bench/http.md");
    write(&path, &text)?;
    println!("\n{text}");
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// The peer proxies, running for the whole benchmark.
struct Peers<'a> {
    nginx: &'a Group,
    haproxy: &'a Group,
    floor: &'a Group,
}

/// Every path once. The HTTP/1.1 paths take turns going first, one place later each round.
fn round(
    binary: &Path,
    dir: &Path,
    policies: &Path,
    secs: u64,
    args: &Args,
    n: usize,
    peers: &Peers<'_>,
) -> Result<Round> {
    let no_wrap = |argv: Vec<String>| argv;
    let mut r = Round::default();
    for path in 0..5 {
        match (path + n) % 5 {
            0 => {
                step("HTTP/1.1: direct to the backend");
                r.direct = h1(secs, BACKEND_H1, no_wrap, None)?;
            }
            1 => {
                step("HTTP/1.1 and HTTP/2: through meshd (clients under `meshd exec`)");
                (r.meshd, r.usage, r.h2_meshd) = through_meshd(binary, dir, policies, secs, args)?;
            }
            2 => {
                step("HTTP/1.1: through nginx (proxy_pass, upstream keep-alive)");
                r.nginx = h1(secs, NGINX_H1, no_wrap, Some(peers.nginx))?;
            }
            3 => {
                step("HTTP/1.1: through HAProxy (nbthread 1)");
                r.haproxy = h1(secs, HAPROXY, no_wrap, Some(peers.haproxy))?;
            }
            _ => {
                step("HTTP/1.1: through the hyper floor (a minimal hyper proxy, no policy)");
                r.floor = h1(secs, HYPER_FLOOR, no_wrap, Some(peers.floor))?;
            }
        }
    }
    step("HTTP/2: direct to the backend (h2c)");
    r.h2_direct = h2load(secs, BACKEND_H2, no_wrap)?;
    step("HTTP/2: through nginx (h2c in, HTTP/1.1 to the backend)");
    r.h2_nginx = h2load(secs, NGINX_H2, no_wrap)?;
    Ok(r)
}

/// Starts meshd, measures through it, reads its counters and stops it.
fn through_meshd(
    binary: &Path,
    dir: &Path,
    policies: &Path,
    secs: u64,
    args: &Args,
) -> Result<(H1, Usage, H2load)> {
    let pidfile = dir.join("meshd.pid");
    let _ = std::fs::remove_file(&pidfile);
    let log = dir.join("meshd.log");
    let debug = args.meshd_debug;
    // `sh` records its pid and execs meshd, so the pid is meshd's.
    // Matched to the peers: one thread (nginx's 1 worker, HAProxy's nbthread 1) and no access
    // log (both have theirs off).
    let meshd = Meshd::start(
        binary,
        LAYOUT,
        policies,
        &MESHD_ARGS,
        |prog, a| {
            let mut cmd = Command::new("sh");
            cmd.arg("-c")
                .arg("echo $$ > \"$0\"; exec \"$@\"")
                .arg(&pidfile)
                .arg(prog)
                .args(a);
            if debug {
                cmd.env("MESHD_LOG", "meshd=debug");
            }
            cmd
        },
        &log,
    )?;
    let result = (|| {
        let pid: u32 = std::fs::read_to_string(&pidfile)
            .context("reading meshd's pid file")?
            .trim()
            .parse()
            .context("meshd's pid file")?;
        std::thread::sleep(Duration::from_secs(1));
        let rss_idle = tools::rss_bytes(pid)?;
        let redirects_before = meshd.counters()?.redirect;

        let wrap = |argv: Vec<String>| meshd.exec(WORKLOAD, &argv);
        let ticks_before = tools::cpu_ticks(pid)?;
        let w = wrk(secs, BACKEND_H1, wrap)?;
        let (cpu_us, cpu_user_us) =
            (tools::cpu_ticks(pid)? - ticks_before).per_request_us(w.requests);
        let r = rate(secs, BACKEND_H1, wrap)?;
        let rss_loaded = tools::rss_bytes(pid)?;
        let h2 = h2load(secs, BACKEND_H2, wrap)?;

        let redirects = meshd.counters()?.redirect - redirects_before;
        if redirects == 0 {
            bail!("meshd's eBPF redirect counter did not move: the clients bypassed meshd");
        }
        // The compiled routes, to check the VirtualService applies to the VIP.
        let (_, dump) = meshd.get("/config_dump")?;
        write(&dir.join("meshd-config-dump.json"), &dump)?;
        let (_, metrics) = meshd.get("/metrics")?;
        let metrics = metrics
            .lines()
            .filter(|l| {
                l.starts_with("meshd_connections_total")
                    || l.starts_with("meshd_http_retries_total")
                    || l.starts_with("meshd_ebpf_events_total{event=\"redirect\"}")
            })
            .map(str::to_string)
            .collect();
        let usage = Usage {
            cpu_s_per_1000: cpu_us / 1000.0,
            rss_idle,
            rss_loaded,
            metrics,
        };
        Ok((
            H1 {
                wrk: w,
                rate: r,
                cpu_us,
                cpu_user_us,
            },
            usage,
            h2,
        ))
    })()
    .with_context(|| format!("through meshd (its log: {})", log.display()));
    let stopped = meshd.stop();
    let result = result?;
    stopped?;
    Ok(result)
}

/// Throughput, then latency at a fixed rate; with `proxy`, its CPU time during the wrk run.
fn h1(
    secs: u64,
    port: u16,
    wrap: impl Fn(Vec<String>) -> Vec<String>,
    proxy: Option<&Group>,
) -> Result<H1> {
    let ticks = || proxy.map_or(Ok(tools::CpuTicks::default()), Group::cpu_ticks);
    let before = ticks()?;
    let wrk = wrk(secs, port, &wrap)?;
    let (cpu_us, cpu_user_us) = (ticks()? - before).per_request_us(wrk.requests);
    Ok(H1 {
        cpu_us,
        cpu_user_us,
        wrk,
        rate: rate(secs, port, &wrap)?,
    })
}

pub(super) fn wrk(secs: u64, port: u16, wrap: impl Fn(Vec<String>) -> Vec<String>) -> Result<Wrk> {
    let argv = wrap(
        [
            "wrk".to_string(),
            "-t1".into(),
            "-c32".into(),
            format!("-d{secs}s"),
            "--latency".into(),
            format!("http://127.0.0.1:{port}/"),
        ]
        .to_vec(),
    );
    let text = super::procs::run_text(cmd(&argv), Duration::from_secs(secs + 60))?;
    let w = tools::parse_wrk(&text)?;
    eprintln!(
        "    {:.0} req/s, p50 {} p99 {}, {} errors",
        w.rps,
        us(w.p50_ns),
        us(w.p99_ns),
        w.errors
    );
    Ok(w)
}

fn rate(secs: u64, port: u16, wrap: impl Fn(Vec<String>) -> Vec<String>) -> Result<Rate> {
    let argv = wrap(helper(
        "http",
        &[
            "rate-client".into(),
            format!("--addr=127.0.0.1:{port}"),
            format!("--secs={secs}"),
        ],
    )?);
    let json = run_json(cmd(&argv), Duration::from_secs(secs + 60))?;
    let r = Rate {
        count: field(&json, "count")?,
        errors: field(&json, "errors")?,
        late_starts: field(&json, "late_starts")?,
        secs: field(&json, "secs")?,
        median_ns: field(&json, "median_ns")?,
        p99_ns: field(&json, "p99_ns")?,
        max_ns: field(&json, "max_ns")?,
    };
    eprintln!(
        "    fixed rate: {} requests, p50 {} p99 {}, {} errors",
        r.count,
        us(r.median_ns),
        us(r.p99_ns),
        r.errors
    );
    Ok(r)
}

fn h2load(secs: u64, port: u16, wrap: impl Fn(Vec<String>) -> Vec<String>) -> Result<H2load> {
    let argv = wrap(
        [
            "h2load".to_string(),
            "-c".into(),
            "8".into(),
            "-m".into(),
            "16".into(),
            "-D".into(),
            secs.to_string(),
            format!("http://127.0.0.1:{port}/"),
        ]
        .to_vec(),
    );
    let text = super::procs::run_text(cmd(&argv), Duration::from_secs(secs + 60))?;
    let h = tools::parse_h2load(&text)?;
    eprintln!("    {:.0} req/s, {} failed", h.rps, h.failed);
    if h.succeeded == 0 {
        bail!("h2load: no request succeeded; its output:\n{text}");
    }
    Ok(h)
}

pub(super) fn cmd(argv: &[String]) -> Command {
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..]);
    c
}

pub(super) fn nginx(conf: &Path, prefix: &Path) -> Command {
    let mut c = Command::new("nginx");
    c.arg("-c")
        .arg(conf)
        .arg("-p")
        .arg(prefix)
        .args(["-g", "daemon off;"]);
    c
}

pub(super) fn write(path: &PathBuf, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The benchmark's service on the nginx backend's ports `h1` (HTTP/1.1) and `h2` (h2c).
pub(super) fn policies_yaml(h1: u16, h2: u16) -> String {
    let endpoint = |version: &str| {
        format!(
            "  - address: 127.0.0.1\n    ports:\n      http: {h1}\n      http2: {h2}\n    labels:\n      version: {version}\n"
        )
    };
    format!(
        "# The benchmark's service: the VIP 127.0.0.1 on the backend's ports, two endpoints (v1, v2)\n\
         # that are the same nginx.\n\
         apiVersion: networking.istio.io/v1\n\
         kind: ServiceEntry\n\
         metadata:\n  name: bench\n  namespace: default\n\
         spec:\n  hosts:\n  - {HOST}\n  addresses:\n  - 127.0.0.1\n  ports:\n\
         \x20 - number: {h1}\n    name: http\n    protocol: HTTP\n\
         \x20 - number: {h2}\n    name: http2\n    protocol: HTTP2\n\
         \x20 location: MESH_INTERNAL\n  resolution: STATIC\n  endpoints:\n{v1}{v2}\
         ---\n\
         apiVersion: networking.istio.io/v1\n\
         kind: DestinationRule\n\
         metadata:\n  name: bench\n  namespace: default\n\
         spec:\n  host: {HOST}\n  subsets:\n\
         \x20 - name: v1\n    labels:\n      version: v1\n\
         \x20 - name: v2\n    labels:\n      version: v2\n\
         ---\n\
         apiVersion: networking.istio.io/v1\n\
         kind: VirtualService\n\
         metadata:\n  name: bench\n  namespace: default\n\
         spec:\n  hosts:\n  - {HOST}\n  http:\n\
         \x20 - retries:\n      attempts: 2\n      retryOn: 5xx,connect-failure\n\
         \x20   route:\n\
         \x20   - destination:\n        host: {HOST}\n        subset: v1\n      weight: 90\n\
         \x20   - destination:\n        host: {HOST}\n        subset: v2\n      weight: 10\n",
        v1 = endpoint("v1"),
        v2 = endpoint("v2"),
    )
}

pub(super) fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("{cpus} vCPU ({model}), Linux {kernel}")
}

pub(super) fn versions(binary: &Path) -> Vec<String> {
    let first_line = |c: &mut Command| {
        c.stderr(std::process::Stdio::null());
        output(c)
            .ok()
            .and_then(|o| o.lines().next().map(str::to_string))
            .unwrap_or_default()
    };
    // nginx -v and h2load --version print on stderr/stdout respectively.
    let nginx = Command::new("nginx")
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .unwrap_or_default();
    vec![
        first_line(Command::new(binary).arg("--version")),
        nginx,
        first_line(Command::new("haproxy").arg("-v")),
        first_line(Command::new("wrk").arg("-v")),
        first_line(Command::new("h2load").arg("--version")),
    ]
    .into_iter()
    .filter(|v| !v.is_empty())
    .collect()
}

pub(super) fn us(ns: u64) -> String {
    format!("{:.0} µs", ns as f64 / 1e3)
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}

impl Results {
    fn markdown(&self) -> String {
        let s = self.secs;
        let mut t = String::new();
        t.push_str("# meshd HTTP benchmark\n\n");
        t.push_str(&format!(
            "Machine: {}. Everything (clients, meshd, the peers and the nginx backend) runs on \
             this machine, unpinned, sharing its CPUs, so each number includes the client's and \
             the backend's share of the same CPUs. Traffic stays on 127.0.0.1. Backend: nginx, 1 \
             worker, `return 200 \"ok\\n\"`. Peers: nginx (1 worker, proxy_pass with upstream \
             keep-alive, access_log off) and HAProxy (nbthread 1, http mode, http-reuse always, \
             no log). meshd runs with one worker thread and its access log off, as the peers do \
             (`--worker-threads 1 --access-log off`; its metrics stay on), and routes with a \
             VirtualService (retries: 2 on 5xx,connect-failure; 90/10 split over subsets v1/v2 \
             of the same backend); its clients run under `meshd exec`, captured by eBPF.\n\n",
            self.machine
        ));
        if !self.versions.is_empty() {
            t.push_str(&format!("Versions: {}.\n\n", self.versions.join("; ")));
        }

        t.push_str(&format!(
            "## HTTP/1.1 throughput (`wrk -t1 -c32 -d{s}s --latency`, keep-alive)\n\n\
             The proxy's CPU time per request is its processes' user and system time during the \
             wrk run over the requests served; in brackets, the part spent in user space and \
             the part in the kernel (system calls and the TCP work they do).\n\n\
             | path | req/s | p50 | p99 | errors | proxy CPU µs/request (user + kernel) |\n\
             |---|---:|---:|---:|---:|---:|\n"
        ));
        for (name, r) in self.h1_rows() {
            let cpu = if r.cpu_us > 0.0 {
                format!(
                    "{:.1} ({:.1} + {:.1})",
                    r.cpu_us,
                    r.cpu_user_us,
                    r.cpu_us - r.cpu_user_us
                )
            } else {
                "-".into()
            };
            t.push_str(&format!(
                "| {name} | {:.0} | {} | {} | {} | {cpu} |\n",
                r.wrk.rps,
                us(r.wrk.p50_ns),
                us(r.wrk.p99_ns),
                r.wrk.errors
            ));
        }

        t.push_str(&format!(
            "\n## HTTP/1.1 latency at a fixed 1000 req/s\n\n\
             {RATE_CONNS} keep-alive connections, one GET every {RATE_INTERVAL_MS} ms each, \
             {s} s timed after {RATE_WARMUP_SECS} s of warm-up; latency from each request's \
             scheduled send time (no coordinated omission). \"late\" counts requests that were \
             due while their connection was still waiting for an earlier response by more than \
             one interval.\n\n\
             | path | req/s achieved | p50 | p99 | max | errors | late |\n\
             |---|---:|---:|---:|---:|---:|---:|\n"
        ));
        for (name, r) in self.h1_rows() {
            let rr = r.rate;
            t.push_str(&format!(
                "| {name} | {:.0} | {} | {} | {} | {} | {} |\n",
                rr.count as f64 / rr.secs.max(1) as f64,
                us(rr.median_ns),
                us(rr.p99_ns),
                us(rr.max_ns),
                rr.errors,
                rr.late_starts
            ));
        }

        let u = &self.median.usage;
        t.push_str(&format!(
            "\n## meshd resources\n\n\
             | measure | value |\n|---|---:|\n\
             | CPU seconds per 1000 requests (utime+stime during the wrk run) | {:.4} |\n\
             | RSS at idle (after start, before load) | {} |\n\
             | RSS after load (after the wrk and fixed-rate runs) | {} |\n",
            u.cpu_s_per_1000,
            mb(u.rss_idle),
            mb(u.rss_loaded)
        ));
        if !u.metrics.is_empty() {
            t.push_str("\nmeshd's counters after its cases:\n\n```\n");
            for m in &u.metrics {
                t.push_str(m);
                t.push('\n');
            }
            t.push_str("```\n");
        }

        t.push_str(&format!(
            "\n## HTTP/2 throughput (`h2load -c 8 -m 16 -D {s}`, h2c prior knowledge)\n\n\
             | path | req/s | succeeded | failed+errored+timeout |\n|---|---:|---:|---:|\n"
        ));
        for (name, h) in [
            ("direct (backend h2c)", self.median.h2_direct),
            ("meshd", self.median.h2_meshd),
            ("nginx (h2c → HTTP/1.1)", self.median.h2_nginx),
        ] {
            t.push_str(&format!(
                "| {name} | {:.0} | {} | {} |\n",
                h.rps, h.succeeded, h.failed
            ));
        }

        let (m, n, h) = (&self.median.meshd, &self.median.nginx, &self.median.haproxy);
        let all = &self.rounds;
        let pair = |a: fn(&Round) -> f64, b: fn(&Round) -> f64| {
            format!("{:.2}×", rounds::paired(all, a, b))
        };
        t.push_str(&format!(
            "\n## Ratios\n\n\
             Paired: in each of the {} round(s), meshd's number over the peer's from the same \
             round; the median of those.\n\n\
             | measure | meshd/nginx | meshd/HAProxy |\n|---|---:|---:|\n\
             | HTTP/1.1 req/s (higher is better for meshd) | {} | {} |\n\
             | p99 at 1000 req/s (lower is better for meshd) | {} | {} |\n\
             | p50 at 1000 req/s | {} | {} |\n\
             | HTTP/2 req/s | {} | n/a |\n",
            all.len(),
            pair(|r| r.meshd.wrk.rps, |r| r.nginx.wrk.rps),
            pair(|r| r.meshd.wrk.rps, |r| r.haproxy.wrk.rps),
            pair(
                |r| r.meshd.rate.p99_ns as f64,
                |r| r.nginx.rate.p99_ns as f64
            ),
            pair(
                |r| r.meshd.rate.p99_ns as f64,
                |r| r.haproxy.rate.p99_ns as f64
            ),
            pair(
                |r| r.meshd.rate.median_ns as f64,
                |r| r.nginx.rate.median_ns as f64
            ),
            pair(
                |r| r.meshd.rate.median_ns as f64,
                |r| r.haproxy.rate.median_ns as f64
            ),
            pair(|r| r.h2_meshd.rps, |r| r.h2_nginx.rps),
        ));
        t.push_str(&format!(
            "\nThe engine's share: the hyper floor is a minimal hyper proxy with no policy \
             (`proxy-userspace/examples/hyper_floor.rs`), on the same hyper and tokio as meshd.\n\n\
             | measure | meshd/floor | floor/nginx | floor/HAProxy |\n|---|---:|---:|---:|\n\
             | HTTP/1.1 req/s | {} | {} | {} |\n\
             | CPU µs per request | {} | {} | {} |\n",
            pair(|r| r.meshd.wrk.rps, |r| r.floor.wrk.rps),
            pair(|r| r.floor.wrk.rps, |r| r.nginx.wrk.rps),
            pair(|r| r.floor.wrk.rps, |r| r.haproxy.wrk.rps),
            pair(|r| r.meshd.cpu_us, |r| r.floor.cpu_us),
            pair(|r| r.floor.cpu_us, |r| r.nginx.cpu_us),
            pair(|r| r.floor.cpu_us, |r| r.haproxy.cpu_us),
        ));
        if all.len() > 1 {
            t.push_str(
                "\nPer round (HTTP/1.1 req/s and p99 at 1000 req/s; HTTP/2 req/s):\n\n\
                 | round | meshd | nginx | HAProxy | meshd p99 | nginx p99 | HAProxy p99 | meshd h2 | nginx h2 |\n\
                 |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            );
            for (i, r) in all.iter().enumerate() {
                t.push_str(&format!(
                    "| {} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {:.0} | {:.0} |\n",
                    i + 1,
                    r.meshd.wrk.rps,
                    r.nginx.wrk.rps,
                    r.haproxy.wrk.rps,
                    us(r.meshd.rate.p99_ns),
                    us(r.nginx.rate.p99_ns),
                    us(r.haproxy.rate.p99_ns),
                    r.h2_meshd.rps,
                    r.h2_nginx.rps
                ));
            }
        }

        let tput_n = rounds::paired(all, |r| r.meshd.wrk.rps, |r| r.nginx.wrk.rps);
        let tput_h = rounds::paired(all, |r| r.meshd.wrk.rps, |r| r.haproxy.wrk.rps);
        let p99_n = rounds::paired(
            all,
            |r| r.meshd.rate.p99_ns as f64,
            |r| r.nginx.rate.p99_ns as f64,
        );
        let p99_h = rounds::paired(
            all,
            |r| r.meshd.rate.p99_ns as f64,
            |r| r.haproxy.rate.p99_ns as f64,
        );
        t.push_str(&format!(
            "\n## Targets\n\nJudged on the paired ratios.\n\n\
             | target | measured (medians; paired ratio) | result |\n|---|---|---|\n\
             | meshd HTTP/1.1 throughput ≥ nginx's | {:.0} vs {:.0} req/s; {tput_n:.2}× | {} |\n\
             | meshd HTTP/1.1 throughput ≥ HAProxy's | {:.0} vs {:.0} req/s; {tput_h:.2}× | {} |\n\
             | meshd p99 at 1000 req/s ≤ nginx's | {} vs {}; {p99_n:.2}× | {} |\n\
             | meshd p99 at 1000 req/s ≤ HAProxy's | {} vs {}; {p99_h:.2}× | {} |\n\
             | meshd RSS at idle < 20 MB | {} | {} |\n",
            m.wrk.rps,
            n.wrk.rps,
            verdict(tput_n >= 1.0),
            m.wrk.rps,
            h.wrk.rps,
            verdict(tput_h >= 1.0),
            us(m.rate.p99_ns),
            us(n.rate.p99_ns),
            verdict(p99_n <= 1.0),
            us(m.rate.p99_ns),
            us(h.rate.p99_ns),
            verdict(p99_h <= 1.0),
            mb(u.rss_idle),
            verdict(u.rss_idle < 20_000_000),
        ));
        t
    }

    fn h1_rows(&self) -> [(&'static str, H1); 5] {
        [
            ("direct", self.median.direct),
            ("meshd", self.median.meshd),
            ("nginx", self.median.nginx),
            ("HAProxy", self.median.haproxy),
            ("hyper floor (no policy)", self.median.floor),
        ]
    }
}
