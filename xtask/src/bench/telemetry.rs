//! `cargo xtask bench telemetry`: what meshd's telemetry costs in HTTP/1.1 throughput. meshd
//! daemons with the same routes front the same nginx backend, one with telemetry off (no Istio
//! metrics, no access log, no span export) and one with it on as a node would run it (Istio
//! metrics, the access log sampled at 1% to a file, 1% of new traces exported to a Zipkin
//! sink). Each round starts fresh daemons, rotating the configurations over the daemon slots,
//! and wrk alternates between them, so drift and load on a shared machine hit both alike.
//! Writes target/bench/telemetry.md with the on/off throughput ratio (target ≥ 0.9) and
//! meshd's CPU time per request.

mod sink;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use self::sink::Sink;
use super::http::{
    machine, nginx, policies_yaml,
    tools::{self, Group, Wrk},
    us, versions, write, wrk,
};
use crate::{
    build,
    daemon::{Layout, Meshd, ensure_free},
    util::{require_root, root, run as run_cmd, step},
};

/// The nginx backend (HTTP/1.1 and h2c) and the span sink.
const BACKEND_H1: u16 = 25240;
const BACKEND_H2: u16 = 25241;
const SINK: u16 = 25242;

const WORKLOAD: &str = "bench/client";

/// The ratio the telemetry issue asks for: on/off throughput.
const TARGET: f64 = 0.9;

#[derive(clap::Args)]
pub struct Args {
    /// Seconds per wrk run [default: 5; 3 with --quick].
    #[arg(long)]
    secs: Option<u64>,
    /// Rounds; each measures every configuration once [default: 10; 3 with --quick].
    #[arg(long)]
    rounds: Option<u32>,
    /// A short, noisier run.
    #[arg(long)]
    quick: bool,
    /// Also measure Istio metrics alone and the access log unsampled, to see what each part
    /// costs.
    #[arg(long)]
    breakdown: bool,
    /// Run telemetry off in every daemon (an A/A run): the ratios then show the noise floor
    /// and any bias between the daemons' slots.
    #[arg(long)]
    aa: bool,
    /// Use the meshd binary already built (target/release, or under CARGO_TARGET_DIR) instead of
    /// running `cargo xtask build`.
    #[arg(long)]
    no_build: bool,
    /// The meshd binary to measure, instead of building one (a copy of your build keeps the
    /// run safe from other builds sharing the target directory).
    #[arg(long, value_name = "PATH")]
    meshd: Option<PathBuf>,
    /// Another meshd build (e.g. an earlier commit's), run with telemetry on as one more
    /// daemon, to compare two builds in the same run.
    #[arg(long, value_name = "PATH")]
    compare: Option<PathBuf>,
}

/// One telemetry configuration, served by its own meshd.
struct Config {
    name: &'static str,
    /// `meshd run` flags; `{log}` (the daemon's access-log file) and `{sink}` are filled in.
    flags: &'static [&'static str],
}

const OFF: Config = Config {
    name: "off",
    flags: &[
        "--istio-metrics",
        "off",
        "--access-log",
        "off",
        "--trace-sample",
        "0",
    ],
};

const ON: Config = Config {
    name: "on",
    flags: &[
        "--istio-metrics",
        "on",
        "--access-log",
        "{log}",
        "--access-log-sample",
        "0.01",
        "--trace-zipkin",
        "http://{sink}/api/v2/spans",
        "--trace-sample",
        "0.01",
    ],
};

const METRICS_ONLY: Config = Config {
    name: "metrics only",
    flags: &[
        "--istio-metrics",
        "on",
        "--access-log",
        "off",
        "--trace-sample",
        "0",
    ],
};

const FULL_LOG: Config = Config {
    name: "on, access log unsampled",
    flags: &[
        "--istio-metrics",
        "on",
        "--access-log",
        "{log}",
        "--access-log-sample",
        "1",
        "--trace-zipkin",
        "http://{sink}/api/v2/spans",
        "--trace-sample",
        "0.01",
    ],
};

/// `--compare`'s build, with telemetry on.
const COMPARED: Config = Config {
    name: "on, compared build",
    flags: ON.flags,
};

/// A configuration: its build, its flags, and what was measured through it.
struct Measured {
    config: &'static Config,
    binary: PathBuf,
    /// `meshd run` flags with the access-log path and the sink filled in.
    flags: Vec<String>,
    log: PathBuf,
    runs: Vec<Run>,
    /// meshd_access_log_dropped_total and meshd_trace_spans_dropped_total, over all rounds.
    dropped: (u64, u64),
}

/// A meshd started for one round.
struct Running {
    meshd: Meshd,
    pid: u32,
}

#[derive(Clone, Copy, Debug)]
struct Run {
    wrk: Wrk,
    /// meshd's CPU time per request (all its threads).
    cpu_us_per_request: f64,
}

pub fn run(args: &Args) -> Result<()> {
    require_root("bench telemetry")?;
    crate::setup::debian_packages(&["nginx", "wrk"])?;
    let binary = match &args.meshd {
        Some(path) => path.clone(),
        None => {
            if !args.no_build {
                build::all()?;
            }
            build::meshd_release()
        }
    };
    if !binary.exists() {
        bail!(
            "{} does not exist; run without --no-build",
            binary.display()
        );
    }
    let secs = args.secs.unwrap_or(if args.quick { 3 } else { 5 }).max(1);
    let rounds = args
        .rounds
        .unwrap_or(if args.quick { 3 } else { 10 })
        .max(1);
    let dir = root().join("target/bench/telemetry");
    for d in ["tmp-backend", "policies"] {
        let d = dir.join(d);
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    for port in [BACKEND_H1, BACKEND_H2, SINK] {
        ensure_free(port)?;
    }

    step("meshd policies: ServiceEntry + DestinationRule + VirtualService (retries, 90/10 split)");
    let policies = dir.join("policies");
    write(
        &policies.join("bench.yaml"),
        &policies_yaml(BACKEND_H1, BACKEND_H2),
    )?;
    run_cmd(Command::new(&binary).arg("analyze").arg(&policies))?;

    step("starting the backend (nginx) and the span sink");
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
    let sink = Sink::start(SINK)?;

    let mut configs: Vec<(&'static Config, &Path)> = vec![(&OFF, &binary), (&ON, &binary)];
    if args.breakdown {
        configs.extend([(&METRICS_ONLY, binary.as_path()), (&FULL_LOG, &binary)]);
    }
    if let Some(other) = &args.compare {
        configs.push((&COMPARED, other));
    }
    if args.aa {
        for c in &mut configs {
            c.0 = &OFF;
        }
    }
    let mut measured: Vec<Measured> = configs
        .into_iter()
        .enumerate()
        .map(|(i, (config, binary))| {
            let log = dir.join(format!("access-{i}.log"));
            let _ = std::fs::remove_file(&log);
            let flags = config
                .flags
                .iter()
                .map(|f| {
                    f.replace("{log}", &log.display().to_string())
                        .replace("{sink}", &format!("127.0.0.1:{SINK}"))
                })
                .collect();
            Measured {
                config,
                binary: binary.to_path_buf(),
                flags,
                log,
                runs: Vec::new(),
                dropped: (0, 0),
            }
        })
        .collect();

    let n = measured.len();
    for round in 0..rounds {
        // Fresh daemons every round, and each configuration in another slot (ports, cgroup,
        // start order) than the round before: whatever favours one daemon over another
        // becomes noise that averages out, not a bias.
        step(&format!(
            "round {}/{rounds}: starting one meshd per configuration",
            round + 1
        ));
        let mut daemons = Vec::new();
        for slot in 0..n {
            let c = (slot + round as usize) % n;
            let d = start(&measured[c], &dir, &policies, slot)?;
            daemons.push((c, d));
        }
        for (c, d) in &daemons {
            let wrap = |argv: Vec<String>| d.meshd.exec(WORKLOAD, &argv);
            wrk(1, BACKEND_H1, wrap)?;
            if d.meshd.counters()?.redirect == 0 {
                bail!(
                    "meshd ({}) did not redirect wrk's connections: the client bypassed it",
                    measured[*c].config.name
                );
            }
        }
        // Alternate the order (ABBA), so a trend over the run affects each configuration alike.
        let mut order: Vec<usize> = (0..n).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for slot in order {
            let (c, d) = &daemons[slot];
            step(&format!(
                "round {}/{rounds}: telemetry {}",
                round + 1,
                measured[*c].config.name
            ));
            let r = measure(d, secs, measured[*c].config.name)?;
            measured[*c].runs.push(r);
        }
        // Let the access-log writer and the span exporter (batches up to 1 s) flush.
        std::thread::sleep(Duration::from_millis(1200));
        for (c, d) in daemons {
            let (_, metrics) = d.meshd.get("/metrics")?;
            // The sum of the series named `name` (the span counter has one per collector).
            let counter = |name: &str| -> u64 {
                (metrics.lines())
                    .filter(|l| l.starts_with(name))
                    .filter_map(|l| l.rsplit_once(' '))
                    .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
                    .map(|v| v as u64)
                    .sum()
            };
            measured[c].dropped.0 += counter("meshd_access_log_dropped_total ");
            measured[c].dropped.1 += counter("meshd_trace_spans_dropped_total{");
            d.meshd.stop()?;
        }
    }

    let text = markdown(&measured, sink.received(), secs, &binary);
    let path = root().join("target/bench/telemetry.md");
    write(&path, &text)?;
    println!("\n{text}");
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// Starts a configuration's meshd in `slot` (its ports and cgroup).
fn start(m: &Measured, dir: &Path, policies: &Path, slot: usize) -> Result<Running> {
    let base = 25250 + 10 * slot as u16;
    let layout = Layout {
        admin_port: base,
        outbound_port: base + 1,
        inbound_port: base + 2,
        cgroup: [
            "meshd-bench-tel-0",
            "meshd-bench-tel-1",
            "meshd-bench-tel-2",
            "meshd-bench-tel-3",
            "meshd-bench-tel-4",
        ][slot],
    };
    let pidfile = dir.join(format!("meshd-{slot}.pid"));
    let _ = std::fs::remove_file(&pidfile);
    let extra: Vec<&str> = m.flags.iter().map(String::as_str).collect();
    // `sh` records its pid and execs meshd, so the pid is meshd's.
    let meshd = Meshd::start(
        &m.binary,
        layout,
        policies,
        &extra,
        |prog, a| {
            let mut cmd = Command::new("sh");
            cmd.arg("-c")
                .arg("echo $$ > \"$0\"; exec \"$@\"")
                .arg(&pidfile)
                .arg(prog)
                .args(a);
            cmd
        },
        &dir.join(format!("meshd-{slot}.log")),
    )?;
    let pid = std::fs::read_to_string(&pidfile)
        .context("reading meshd's pid file")?
        .trim()
        .parse()
        .context("meshd's pid file")?;
    Ok(Running { meshd, pid })
}

/// Nanoseconds PID's threads have run (the scheduler's count, finer than clock ticks).
fn cpu_ns(pid: u32) -> Result<u64> {
    let mut total = 0;
    let dir = format!("/proc/{pid}/task");
    for task in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let stat = std::fs::read_to_string(task?.path().join("schedstat")).unwrap_or_default();
        total += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

/// One wrk run through a daemon, with the daemon's CPU time over it.
fn measure(d: &Running, secs: u64, name: &str) -> Result<Run> {
    let wrap = |argv: Vec<String>| d.meshd.exec(WORKLOAD, &argv);
    let before = cpu_ns(d.pid)?;
    let w = wrk(secs, BACKEND_H1, wrap)?;
    let ns = cpu_ns(d.pid)?.saturating_sub(before);
    if w.errors > 0 {
        bail!("wrk saw {} errors through meshd ({name})", w.errors);
    }
    Ok(Run {
        wrk: w,
        cpu_us_per_request: ns as f64 / 1e3 / w.requests.max(1) as f64,
    })
}

fn median(v: &[f64]) -> f64 {
    quantile(v, 0.5)
}

/// The `q` quantile of `v`, interpolating between neighbours.
fn quantile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n => {
            let pos = q * (n - 1) as f64;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
        }
    }
}

/// `median (p25–p75; min–max)` of per-round values.
fn spread(v: &[f64]) -> String {
    format!(
        "{:.3} ({:.3}–{:.3}; {:.3}–{:.3})",
        median(v),
        quantile(v, 0.25),
        quantile(v, 0.75),
        quantile(v, 0.0),
        quantile(v, 1.0)
    )
}

fn markdown(daemons: &[Measured], spans: (u64, u64), secs: u64, binary: &Path) -> String {
    let mut t = String::new();
    t.push_str("# meshd telemetry cost\n\n");
    t.push_str(&format!(
        "Machine: {}. Everything (wrk, the meshd daemons and the nginx backend) runs on this \
         machine, unpinned, sharing its CPUs. Traffic stays on 127.0.0.1. Backend: nginx, 1 \
         worker, `return 200 \"ok\\n\"`. Each meshd routes with the same VirtualService as \
         `bench http` (retries: 2 on 5xx,connect-failure; 90/10 split over subsets v1/v2 of the \
         same backend); wrk (`-t1 -c32 -d{secs}s`, keep-alive) runs under `meshd exec`, \
         captured by eBPF. Every round starts a fresh meshd per configuration, each in another \
         slot (ports, cgroup, start order) than the round before, warms each up for 1 s, then \
         runs wrk through them in turn, reversing the order every other round; each ratio \
         compares runs of the same round. meshd's \
         CPU time per request is its threads' run time (from the scheduler) over the run, \
         divided by the requests wrk completed: it is far less sensitive than throughput to \
         other load on the machine.\n\n",
        machine()
    ));
    let v = versions(binary);
    if !v.is_empty() {
        t.push_str(&format!("Versions: {}.\n\n", v.join("; ")));
    }
    t.push_str("| telemetry | meshd flags |\n|---|---|\n");
    for d in daemons {
        t.push_str(&format!(
            "| {} | `{}` |\n",
            d.config.name,
            d.flags
                .join(" ")
                .replace(&root().display().to_string(), ".")
        ));
    }

    t.push_str("\n## Per round: req/s (meshd CPU µs per request)\n\n| round |");
    for d in daemons {
        t.push_str(&format!(" {} |", d.config.name));
    }
    for d in &daemons[1..] {
        t.push_str(&format!(" {} / off |", d.config.name));
    }
    t.push_str("\n|---:|");
    for _ in 0..(2 * daemons.len() - 1) {
        t.push_str("---:|");
    }
    t.push('\n');
    let off = &daemons[0];
    let rounds = off.runs.len();
    for r in 0..rounds {
        t.push_str(&format!("| {} |", r + 1));
        for d in daemons {
            let run = d.runs[r];
            t.push_str(&format!(
                " {:.0} ({:.1}) |",
                run.wrk.rps, run.cpu_us_per_request
            ));
        }
        for d in &daemons[1..] {
            t.push_str(&format!(
                " {:.3} |",
                d.runs[r].wrk.rps / off.runs[r].wrk.rps
            ));
        }
        t.push('\n');
    }

    let ratios = |d: &Measured| -> Vec<f64> {
        d.runs
            .iter()
            .zip(&off.runs)
            .map(|(a, b)| a.wrk.rps / b.wrk.rps)
            .collect()
    };
    let cpu = |d: &Measured| -> Vec<f64> { d.runs.iter().map(|r| r.cpu_us_per_request).collect() };
    // Paired like the throughput: the load on the machine moves both runs of a round alike.
    let cpu_ratios = |d: &Measured| -> Vec<f64> {
        d.runs
            .iter()
            .zip(&off.runs)
            .map(|(a, b)| b.cpu_us_per_request / a.cpu_us_per_request)
            .collect()
    };
    t.push_str(
        "\n## Summary\n\n\
         | telemetry | median req/s | median p99 | meshd CPU µs per request (median) | \
         throughput / off, per round: median (p25–p75; min–max) | \
         off's CPU per request / this one's, per round: median (p25–p75; min–max) |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for d in daemons {
        let rps: Vec<f64> = d.runs.iter().map(|r| r.wrk.rps).collect();
        let p99: Vec<f64> = d.runs.iter().map(|r| r.wrk.p99_ns as f64).collect();
        t.push_str(&format!(
            "| {} | {:.0} | {} | {:.2} | {} | {} |\n",
            d.config.name,
            median(&rps),
            us(median(&p99) as u64),
            median(&cpu(d)),
            spread(&ratios(d)),
            spread(&cpu_ratios(d)),
        ));
    }

    let on = &daemons[1];
    let ratio = median(&ratios(on));
    t.push_str(&format!(
        "\n## Target\n\n| target | measured | result |\n|---|---|---|\n\
         | throughput with metrics, sampled access log and 1% tracing ≥ {TARGET}× telemetry off | \
         {ratio:.3}× (median of {rounds} rounds; meshd's CPU per request off/on: {:.3}) | {} |\n",
        median(&cpu_ratios(on)),
        if ratio >= TARGET { "PASS" } else { "MISS" }
    ));

    t.push_str("\n## Telemetry produced\n\n");
    for d in daemons {
        let lines = std::fs::read_to_string(&d.log)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if d.flags.iter().any(|f| f.ends_with(".log")) {
            t.push_str(&format!(
                "- {}: {lines} access-log lines written; dropped: {} lines, {} spans\n",
                d.config.name, d.dropped.0, d.dropped.1
            ));
        }
    }
    t.push_str(&format!(
        "- the span sink received {} spans in {} batches (all configurations exporting)\n",
        spans.1, spans.0
    ));
    t
}
