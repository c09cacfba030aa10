//! `cargo xtask bench telemetry`: what meshd's telemetry costs in HTTP/1.1 throughput. meshd
//! daemons with the same routes front the same nginx backend, one with telemetry off (no Istio
//! metrics, no access log, no span export) and one with it on as a node would run it (Istio
//! metrics, the access log sampled at 1% to a file, 1% of new traces exported to a Zipkin
//! sink). wrk alternates between them over several rounds, so drift on a shared machine hits
//! both alike. Writes target/bench/telemetry.md with the on/off throughput ratio (target ≥ 0.9).

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

/// A configuration's daemon and what was measured through it.
struct Running {
    config: &'static Config,
    flags: Vec<String>,
    meshd: Meshd,
    pid: u32,
    runs: Vec<Run>,
}

#[derive(Clone, Copy, Debug)]
struct Run {
    wrk: Wrk,
    /// meshd's CPU time per request (all its threads).
    cpu_us_per_request: f64,
}

/// What the daemons reported after the rounds.
#[derive(Default)]
struct Output {
    access_lines: Vec<(String, u64)>,
    dropped: Vec<(String, String)>,
    spans: (u64, u64),
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
    step("starting one meshd per configuration");
    let mut daemons = Vec::new();
    for (i, (config, binary)) in configs.into_iter().enumerate() {
        daemons.push(start(binary, &dir, &policies, i, config)?);
    }

    step("warm-up: 2 s through each meshd");
    for d in &daemons {
        let wrap = |argv: Vec<String>| d.meshd.exec(WORKLOAD, &argv);
        wrk(2, BACKEND_H1, wrap)?;
        let redirects = d.meshd.counters()?.redirect;
        if redirects == 0 {
            bail!(
                "meshd ({}) did not redirect wrk's connections: the client bypassed it",
                d.config.name
            );
        }
    }

    for round in 0..rounds {
        // Alternate the order (ABBA), so a trend over the run affects each configuration alike.
        let mut order: Vec<usize> = (0..daemons.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let d = &mut daemons[i];
            step(&format!(
                "round {}/{rounds}: telemetry {}",
                round + 1,
                d.config.name
            ));
            let r = measure(d, secs)?;
            d.runs.push(r);
        }
    }

    let output = collect(&daemons, &dir, &sink)?;
    let text = markdown(&daemons, &output, secs, &binary);
    for d in daemons {
        d.meshd.stop()?;
    }
    let path = root().join("target/bench/telemetry.md");
    write(&path, &text)?;
    println!("\n{text}");
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// Starts configuration `i`'s meshd on its own ports and cgroup.
fn start(
    binary: &Path,
    dir: &Path,
    policies: &Path,
    i: usize,
    config: &'static Config,
) -> Result<Running> {
    let base = 25250 + 10 * i as u16;
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
        ][i],
    };
    let flags: Vec<String> = config
        .flags
        .iter()
        .map(|f| {
            f.replace(
                "{log}",
                &dir.join(format!("access-{i}.log")).display().to_string(),
            )
            .replace("{sink}", &format!("127.0.0.1:{SINK}"))
        })
        .collect();
    for f in &flags {
        if f.ends_with(".log") {
            let _ = std::fs::remove_file(f);
        }
    }
    let pidfile = dir.join(format!("meshd-{i}.pid"));
    let _ = std::fs::remove_file(&pidfile);
    let extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    // `sh` records its pid and execs meshd, so the pid is meshd's.
    let meshd = Meshd::start(
        binary,
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
        &dir.join(format!("meshd-{i}.log")),
    )?;
    let pid = std::fs::read_to_string(&pidfile)
        .context("reading meshd's pid file")?
        .trim()
        .parse()
        .context("meshd's pid file")?;
    Ok(Running {
        config,
        flags,
        meshd,
        pid,
        runs: Vec::new(),
    })
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
fn measure(d: &Running, secs: u64) -> Result<Run> {
    let wrap = |argv: Vec<String>| d.meshd.exec(WORKLOAD, &argv);
    let before = cpu_ns(d.pid)?;
    let w = wrk(secs, BACKEND_H1, wrap)?;
    let ns = cpu_ns(d.pid)?.saturating_sub(before);
    if w.errors > 0 {
        bail!(
            "wrk saw {} errors through meshd ({})",
            w.errors,
            d.config.name
        );
    }
    Ok(Run {
        wrk: w,
        cpu_us_per_request: ns as f64 / 1e3 / w.requests.max(1) as f64,
    })
}

/// Access-log lines written, drops, and spans the sink received.
fn collect(daemons: &[Running], dir: &Path, sink: &Sink) -> Result<Output> {
    // The writer thread and the span exporter flush within a second.
    std::thread::sleep(Duration::from_millis(1500));
    let mut out = Output {
        spans: sink.received(),
        ..Output::default()
    };
    for d in daemons {
        if let Some(path) = d.flags.iter().find(|f| f.ends_with(".log")) {
            let lines = std::fs::read_to_string(path)
                .map(|t| t.lines().count() as u64)
                .unwrap_or(0);
            out.access_lines.push((d.config.name.to_string(), lines));
        }
        let (_, metrics) = d.meshd.get("/metrics")?;
        let dropped: Vec<String> = metrics
            .lines()
            .filter(|l| {
                l.starts_with("meshd_access_log_dropped_total ")
                    || l.starts_with("meshd_trace_spans_dropped_total ")
            })
            .map(str::to_string)
            .collect();
        out.dropped
            .push((d.config.name.to_string(), dropped.join(", ")));
    }
    write(&dir.join("sink.txt"), &format!("{:?}\n", out.spans))?;
    Ok(out)
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

fn markdown(daemons: &[Running], output: &Output, secs: u64, binary: &Path) -> String {
    let mut t = String::new();
    t.push_str("# meshd telemetry cost\n\n");
    t.push_str(&format!(
        "Machine: {}. Everything (wrk, the meshd daemons and the nginx backend) runs on this \
         machine, unpinned, sharing its CPUs. Traffic stays on 127.0.0.1. Backend: nginx, 1 \
         worker, `return 200 \"ok\\n\"`. Each meshd routes with the same VirtualService as \
         `bench http` (retries: 2 on 5xx,connect-failure; 90/10 split over subsets v1/v2 of the \
         same backend); wrk (`-t1 -c32 -d{secs}s`, keep-alive) runs under `meshd exec`, \
         captured by eBPF. The daemons run side by side and wrk alternates between them, \
         reversing the order every round; each ratio compares runs of the same round. meshd's \
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

    let ratios = |d: &Running| -> Vec<f64> {
        d.runs
            .iter()
            .zip(&off.runs)
            .map(|(a, b)| a.wrk.rps / b.wrk.rps)
            .collect()
    };
    let cpu = |d: &Running| -> Vec<f64> { d.runs.iter().map(|r| r.cpu_us_per_request).collect() };
    t.push_str(
        "\n## Summary\n\n\
         | telemetry | median req/s | median p99 | meshd CPU µs per request (median) | \
         throughput / off, per round: median (p25–p75; min–max) | \
         off's CPU per request / this one's (median) |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    let off_cpu = median(&cpu(off));
    for d in daemons {
        let rps: Vec<f64> = d.runs.iter().map(|r| r.wrk.rps).collect();
        let p99: Vec<f64> = d.runs.iter().map(|r| r.wrk.p99_ns as f64).collect();
        let c = median(&cpu(d));
        t.push_str(&format!(
            "| {} | {:.0} | {} | {c:.2} | {} | {:.3} |\n",
            d.config.name,
            median(&rps),
            us(median(&p99) as u64),
            spread(&ratios(d)),
            off_cpu / c,
        ));
    }

    let on = &daemons[1];
    let ratio = median(&ratios(on));
    t.push_str(&format!(
        "\n## Target\n\n| target | measured | result |\n|---|---|---|\n\
         | throughput with metrics, sampled access log and 1% tracing ≥ {TARGET}× telemetry off | \
         {ratio:.3}× (median of {rounds} rounds; meshd's CPU per request off/on: {:.3}) | {} |\n",
        off_cpu / median(&cpu(on)),
        if ratio >= TARGET { "PASS" } else { "MISS" }
    ));

    t.push_str("\n## Telemetry produced\n\n");
    for (name, lines) in &output.access_lines {
        t.push_str(&format!("- {name}: {lines} access-log lines written\n"));
    }
    t.push_str(&format!(
        "- the span sink received {} spans in {} batches (all configurations exporting)\n",
        output.spans.1, output.spans.0
    ));
    for (name, dropped) in &output.dropped {
        if !dropped.is_empty() {
            t.push_str(&format!("- {name}: {dropped}\n"));
        }
    }
    t
}
