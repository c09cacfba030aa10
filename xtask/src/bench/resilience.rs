//! `cargo xtask bench resilience`: the throughput cost of each resilience feature when it is
//! configured but not hit: a connection-pool limit, outlier detection, a local rate limit and a
//! global (Redis) rate limit. One meshd serves every configuration, switched by hot reload, and
//! the configurations alternate over several rounds so drift affects them alike. Writes
//! target/bench/resilience.md with each feature's throughput against the baseline's, and the
//! Redis calls per request of the global limit.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context, Result, bail};

use super::http::{machine, nginx, tools, write, wrk};
use crate::{
    build,
    daemon::{Layout, Meshd, ensure_free},
    util::{output, require_root, root, step},
};

const BACKEND_H1: u16 = 25310;
const BACKEND_H2: u16 = 25311;
const REDIS: u16 = 25330;
const LAYOUT: Layout = Layout {
    admin_port: 25320,
    outbound_port: 25321,
    inbound_port: 25328,
    cgroup: "meshd-bench-resilience",
};
const HOST: &str = "bench.default.svc.cluster.local";
const WORKLOAD: &str = "bench/client";

#[derive(clap::Args)]
pub struct Args {
    /// Seconds per measurement [default: 5; 2 with --quick].
    #[arg(long)]
    secs: Option<u64>,
    /// Rounds over all configurations, each starting one configuration later [default: 5; 1
    /// with --quick].
    #[arg(long)]
    rounds: Option<u32>,
    #[arg(long)]
    quick: bool,
    /// Use the meshd binary already in target/release.
    #[arg(long)]
    no_build: bool,
}

/// A configuration: its name and the YAML appended to the baseline policies.
const FEATURES: &[(&str, &str)] = &[
    ("baseline", ""),
    (
        "pool limit (not hit)",
        "  trafficPolicy:\n    connectionPool:\n      tcp:\n        maxConnections: 10000\n      http:\n        http1MaxPendingRequests: 10000\n        http2MaxRequests: 10000\n        maxRetries: 100\n",
    ),
    (
        "outlier detection",
        "  trafficPolicy:\n    outlierDetection:\n      consecutive5xxErrors: 5\n      interval: 5s\n      baseEjectionTime: 30s\n",
    ),
    ("local rate limit (not hit)", "LOCAL"),
    ("global rate limit (Redis, not hit)", "GLOBAL"),
];

fn policies(feature: &str) -> String {
    let (dr_extra, limit) = match feature {
        "LOCAL" => (
            "",
            "  local:\n    maxTokens: 1000000\n    tokensPerFill: 1000000\n    fillInterval: 1s\n"
                .to_string(),
        ),
        "GLOBAL" => (
            "",
            format!(
                "  global:\n    redis: 127.0.0.1:{REDIS}\n    requestsPerUnit: 1000000\n    unit: second\n"
            ),
        ),
        other => (other, String::new()),
    };
    let mut yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: bench\n  namespace: default\n\
         spec:\n  hosts:\n  - {HOST}\n  addresses:\n  - 127.0.0.1\n  ports:\n  - number: {BACKEND_H1}\n    name: http\n    protocol: HTTP\n\
         \x20 location: MESH_INTERNAL\n  resolution: STATIC\n  endpoints:\n  - address: 127.0.0.1\n\
         ---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: bench\n  namespace: default\n\
         spec:\n  host: {HOST}\n{dr_extra}\
         ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: bench\n  namespace: default\n\
         spec:\n  hosts:\n  - {HOST}\n  http:\n  - route:\n    - destination:\n        host: {HOST}\n"
    );
    if !limit.is_empty() {
        yaml.push_str(&format!(
            "---\napiVersion: meshd.io/v1alpha1\nkind: RateLimitPolicy\nmetadata:\n  name: bench\n  namespace: default\n\
             spec:\n  target:\n    host: {HOST}\n{limit}"
        ));
    }
    yaml
}

/// The active snapshot's generation, from /config_dump.
fn generation(meshd: &Meshd) -> Result<u64> {
    let (_, dump) = meshd.get("/config_dump")?;
    dump.split_once("\"generation\":")
        .and_then(|(_, rest)| {
            let digits: String = rest
                .trim_start()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .context("no generation in /config_dump")
}

/// Writes `yaml` as the policy and waits for meshd to apply it.
fn apply(meshd: &Meshd, file: &Path, yaml: &str) -> Result<()> {
    if std::fs::read_to_string(file).is_ok_and(|t| t == yaml) {
        return Ok(());
    }
    let before = generation(meshd)?;
    write(&file.to_path_buf(), yaml)?;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(100));
        if generation(meshd)? > before {
            return Ok(());
        }
    }
    bail!("meshd did not apply {}", file.display())
}

/// Redis calls made so far (EVALSHA and EVAL).
fn redis_calls() -> Result<u64> {
    let text =
        output(Command::new("redis-cli").args(["-p", &REDIS.to_string(), "info", "commandstats"]))?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split([':', ','])
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum())
}

pub fn run(args: &Args) -> Result<()> {
    require_root("bench resilience")?;
    crate::setup::debian_packages(&["nginx", "wrk", "redis-server"])?;
    if !args.no_build {
        build::all()?;
    }
    let secs = args.secs.unwrap_or(if args.quick { 2 } else { 5 }).max(1);
    let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 5 }).max(1);
    let binary = build::meshd_release();
    let dir = root().join("target/bench/resilience");
    let policies_dir = dir.join("policies");
    for d in [dir.join("tmp-backend"), policies_dir.clone()] {
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    for port in [BACKEND_H1, BACKEND_H2, REDIS] {
        ensure_free(port)?;
    }

    step("starting the backend (nginx) and Redis");
    let backend_conf = dir.join("backend.conf");
    write(
        &backend_conf,
        &tools::nginx_backend(&dir, BACKEND_H1, BACKEND_H2),
    )?;
    let _backend = tools::Group::start(
        "nginx backend",
        nginx(&backend_conf, &dir),
        &dir.join("backend.log"),
        &[BACKEND_H1, BACKEND_H2],
    )?;
    let mut redis = Command::new("redis-server");
    redis.args([
        "--port",
        &REDIS.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]);
    let _redis = tools::Group::start("redis", redis, &dir.join("redis.log"), &[REDIS])?;

    step("starting meshd (access log off, so the features' own cost shows)");
    let file = policies_dir.join("bench.yaml");
    write(&file, &policies(""))?;
    let meshd = Meshd::start(
        &binary,
        LAYOUT,
        &policies_dir,
        &["--access-log", "off"],
        |prog, a| {
            let mut c = Command::new(prog);
            c.args(a);
            c
        },
        &dir.join("meshd.log"),
    )?;
    let wrap = |argv: Vec<String>| meshd.exec(WORKLOAD, &argv);

    let mut rps: Vec<Vec<f64>> = vec![Vec::new(); FEATURES.len()];
    let mut redis_per_request = 0.0;
    for round in 1..=rounds {
        // Each round starts one configuration later, so every configuration takes every place in
        // the order over the rounds and drift within a round does not favour one of them.
        let n = FEATURES.len();
        for i in (0..n).map(|k| (k + round as usize - 1) % n) {
            let (name, extra) = FEATURES[i];
            step(&format!("round {round}/{rounds}: {name}"));
            apply(&meshd, &file, &policies(extra))?;
            let calls = redis_calls()?;
            let w = wrk(secs, BACKEND_H1, wrap)?;
            if w.errors > 0 {
                bail!("{name}: {} requests failed; see the meshd log", w.errors);
            }
            if extra == "GLOBAL" {
                redis_per_request = (redis_calls()? - calls) as f64 / w.requests.max(1) as f64;
            }
            rps[i].push(w.rps);
        }
    }
    meshd.stop()?;

    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let base = median(&rps[0]);
    let mut text = format!(
        "# Resilience features: throughput cost\n\n{}. wrk -t1 -c32, {secs} s per run, {rounds} \
         round(s), each starting one configuration later; median req/s. One meshd, switched by hot \
         reload; access log off. \"Paired\" is the median over rounds of each round's ratio to \
         that round's baseline run, which cancels drift between rounds.\n\n| configuration | \
         req/s (median) | runs | vs baseline | paired |\n| --- | ---: | --- | ---: | ---: |\n",
        machine()
    );
    for (i, (name, _)) in FEATURES.iter().enumerate() {
        let runs: Vec<String> = rps[i].iter().map(|r| format!("{r:.0}")).collect();
        let m = median(&rps[i]);
        let paired: Vec<f64> = rps[i].iter().zip(&rps[0]).map(|(f, b)| f / b).collect();
        text.push_str(&format!(
            "| {name} | {m:.0} | {} | {:.3} | {:.3} |\n",
            runs.join(", "),
            m / base,
            median(&paired)
        ));
    }
    text.push_str(&format!(
        "\nGlobal limit: {redis_per_request:.3} Redis calls per request (one EVALSHA of the GCRA \
         script per request).\n"
    ));
    let path = root().join("target/bench/resilience.md");
    write(&path, &text)?;
    println!("\n{text}");
    eprintln!("wrote {}", path.display());
    Ok(())
}
