//! `cargo xtask bench pods`: the per-pod listener design against the host-namespace workload
//! path, in one run — 64-byte echo round trips from a pod in its own network namespace and from
//! a workload in meshd's namespace (each also direct) — and what enrolling 1, 50 and 200 pods
//! costs in time and memory. Report: target/bench/pods.md.
//!
//! Everything runs inside network namespaces the benchmark creates: a "node" (`meshd-bench-node`,
//! which this process enters first, so meshd and every helper start in it) with a bridge to
//! pods `meshd-bench-pod*`.

use std::{
    fmt::Write as _,
    fs::File,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{
    procs::{Server, command, field, helper, run_json},
    report::Echo,
};
use crate::{
    build,
    daemon::{Counters, Layout, Meshd, admin, http_request},
    util::{require_root, root, step},
};

const NODE: &str = "meshd-bench-node";
const POD_PREFIX: &str = "meshd-bench-pod";
const GATEWAY: &str = "10.215.0.1";
const ECHO_PORT: u16 = 25100;
const CPU: u32 = 0;
const WORKLOAD: &str = "bench/client";
const POD_COUNTS: [usize; 3] = [1, 50, 200];

const LAYOUT: Layout = Layout {
    admin_port: 25000,
    outbound_port: 25001,
    inbound_port: 25008,
    cgroup: "meshd-bench",
};

#[derive(clap::Args)]
pub struct Args {
    /// Timed echo round trips per case [default: 20000; 2000 with --quick].
    #[arg(long)]
    rounds: Option<u32>,
    /// A short, noisier run.
    #[arg(long)]
    quick: bool,
    /// Use the meshd binary already built instead of running `cargo xtask build`.
    #[arg(long)]
    no_build: bool,
}

struct Enrolment {
    pods: usize,
    enrol_ms_per_pod: f64,
    remove_ms_per_pod: f64,
    rss_idle_kib: u64,
    rss_enrolled_kib: u64,
}

pub fn run(args: &Args) -> Result<()> {
    require_root("bench pods")?;
    if !args.no_build {
        build::all()?;
    }
    let meshd = build::meshd_release();
    let out = root().join("target/bench");
    std::fs::create_dir_all(&out)?;
    let rounds = args
        .rounds
        .unwrap_or(if args.quick { 2_000 } else { 20_000 });
    let warmup = rounds / 10;

    remove_namespaces();
    let result = measure(&meshd, &out, rounds, warmup);
    remove_namespaces();
    let (cases, counters, enrolments) = result?;

    let table = markdown(rounds, &cases, counters, &enrolments);
    let path = out.join("pods.md");
    std::fs::write(&path, &table).with_context(|| format!("writing {}", path.display()))?;
    println!("\n{table}");
    eprintln!("wrote {}", path.display());
    Ok(())
}

type Measured = (Vec<(&'static str, Echo)>, Counters, Vec<Enrolment>);

fn measure(meshd: &Path, out: &Path, rounds: u32, warmup: u32) -> Result<Measured> {
    step(&format!(
        "creating the node namespace {NODE} with a pod network {GATEWAY}/24"
    ));
    add_namespace(NODE)?;
    enter(NODE)?;
    ip(&["link", "add", "cni0", "type", "bridge"])?;
    ip(&["addr", "add", &format!("{GATEWAY}/24"), "dev", "cni0"])?;
    ip(&["link", "set", "cni0", "up"])?;
    let pod = add_pod(0)?;

    let argv = helper(
        "echo-server",
        &[format!("--bind={GATEWAY}"), format!("--port={ECHO_PORT}")],
    )?;
    let _server = Server::start(command(&argv[0], &argv[1..], Some(CPU)))?;
    let client = helper(
        "echo-client",
        &[
            format!("--addr={GATEWAY}:{ECHO_PORT}"),
            format!("--rounds={rounds}"),
            format!("--warmup={warmup}"),
        ],
    )?;
    let deadline = Duration::from_secs(60) + Duration::from_millis(u64::from(rounds + warmup));

    let config = out.join("pods-policies");
    std::fs::create_dir_all(&config)?;
    let daemon = Meshd::start(
        meshd,
        LAYOUT,
        &config,
        &["--sockmap", "on"],
        |p, a| command(p, a, Some(CPU)),
        &out.join("meshd-pods.log"),
    )?;
    let mut cases = Vec::new();
    step("echo: host namespace, direct");
    cases.push(("host namespace, direct", echo(&client, None, deadline)?));
    step("echo: host namespace, through meshd");
    let argv = daemon.exec(WORKLOAD, &client);
    cases.push((
        "host namespace, through meshd",
        echo(&argv, None, deadline)?,
    ));
    step("echo: pod namespace, direct");
    cases.push((
        "pod namespace, direct",
        echo(&client, Some(&pod), deadline)?,
    ));
    step("echo: pod namespace, through meshd (listener in the pod)");
    let before = daemon.counters()?;
    let argv = daemon.exec_in(WORKLOAD, &pod, &client);
    cases.push(("pod namespace, through meshd", echo(&argv, None, deadline)?));
    let after = daemon.counters()?;
    daemon.stop()?;
    let counters = Counters {
        redirect: after.redirect - before.redirect,
        sockmap_redirect: after.sockmap_redirect - before.sockmap_redirect,
        sockmap_miss: after.sockmap_miss - before.sockmap_miss,
        splice: after.splice - before.splice,
        reply_splice: after.reply_splice - before.reply_splice,
    };

    let mut enrolments = Vec::new();
    for n in POD_COUNTS {
        enrolments.push(enrolment(meshd, out, n)?);
    }
    Ok((cases, counters, enrolments))
}

/// Starts a fresh meshd, enrols `n` pods (each a namespace of its own) through the admin API,
/// then removes them; times both and reads meshd's memory before and after.
fn enrolment(meshd: &Path, out: &Path, n: usize) -> Result<Enrolment> {
    step(&format!("enrolment: {n} pods"));
    let namespaces: Vec<PathBuf> = (1..=n)
        .map(|i| {
            let ns = format!("{POD_PREFIX}-e{i}");
            add_namespace(&ns).map(|()| PathBuf::from("/run/netns").join(ns))
        })
        .collect::<Result<_>>()?;
    let config = out.join("pods-policies");
    let daemon = Meshd::start(
        meshd,
        LAYOUT,
        &config,
        &[],
        |p, a| command(p, a, None),
        &out.join(format!("meshd-pods-{n}.log")),
    )?;
    std::thread::sleep(Duration::from_millis(300));
    let rss_idle_kib = daemon.rss_kib()?;
    let started = Instant::now();
    let mut ids = Vec::with_capacity(n);
    for (i, ns) in namespaces.iter().enumerate() {
        let body = format!(
            r#"{{"workload": "bench/pod-{i}", "netns": "{}"}}"#,
            ns.display()
        );
        let (status, text) = http_request(admin(LAYOUT), "POST", "/workloads", &body)?;
        if status != 201 {
            bail!("enrolling pod {i}: {status} {text}");
        }
        ids.push(field(&text, "id")?);
    }
    let enrol = started.elapsed();
    let rss_enrolled_kib = daemon.rss_kib()?;
    let started = Instant::now();
    for id in ids {
        let (status, text) =
            http_request(admin(LAYOUT), "DELETE", &format!("/workloads/{id}"), "")?;
        if status != 200 {
            bail!("removing workload {id}: {status} {text}");
        }
    }
    let remove = started.elapsed();
    daemon.stop()?;
    for ns in &namespaces {
        let _ = Command::new("ip")
            .args(["netns", "delete"])
            .arg(ns.file_name().unwrap())
            .status();
    }
    Ok(Enrolment {
        pods: n,
        enrol_ms_per_pod: enrol.as_secs_f64() * 1000.0 / n as f64,
        remove_ms_per_pod: remove.as_secs_f64() * 1000.0 / n as f64,
        rss_idle_kib,
        rss_enrolled_kib,
    })
}

/// Runs an echo client (pinned), inside `netns` when given.
fn echo(argv: &[String], netns: Option<&Path>, deadline: Duration) -> Result<Echo> {
    let mut cmd = command(&argv[0], &argv[1..], Some(CPU));
    if let Some(ns) = netns {
        let file = File::open(ns).with_context(|| format!("opening {}", ns.display()))?;
        // SAFETY: one setns call between fork and exec on a descriptor opened before fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    let json = run_json(cmd, deadline)?;
    Ok(Echo {
        median_ns: field(&json, "median_ns")?,
        p99_ns: field(&json, "p99_ns")?,
    })
}

/// A pod namespace on the node's bridge at 10.215.0.(10+i); returns its namespace file.
fn add_pod(i: u8) -> Result<PathBuf> {
    let ns = format!("{POD_PREFIX}{i}");
    add_namespace(&ns)?;
    let veth = format!("vp{i}");
    ip(&[
        "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
    ])?;
    ip(&["link", "set", &veth, "master", "cni0", "up"])?;
    let addr = format!("10.215.0.{}/24", 10 + i);
    ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
    ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
    ip(&["-n", &ns, "route", "add", "default", "via", GATEWAY])?;
    Ok(PathBuf::from("/run/netns").join(ns))
}

fn add_namespace(ns: &str) -> Result<()> {
    ip(&["netns", "add", ns])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])
}

/// Moves this thread (the benchmark's only one) into the namespace, so that everything it
/// starts from now on runs there.
fn enter(ns: &str) -> Result<()> {
    let file = File::open(Path::new("/run/netns").join(ns))?;
    // SAFETY: setns on an open namespace file.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("entering {ns}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn remove_namespaces() {
    let Ok(list) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for ns in String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("meshd-bench-"))
    {
        let _ = Command::new("ip").args(["netns", "delete", ns]).status();
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (package iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn markdown(
    rounds: u32,
    cases: &[(&str, Echo)],
    counters: Counters,
    enrolments: &[Enrolment],
) -> String {
    let us = |ns: u64| ns as f64 / 1000.0;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# meshd pods benchmark\n\n64-byte echo round trips ({rounds} timed per case), client, \
         meshd and echo server pinned to CPU {CPU}, sockmap on.\n\n\
         | case | median µs | p99 µs |\n|---|---:|---:|"
    );
    for (name, e) in cases {
        let _ = writeln!(
            t,
            "| {name} | {:.1} | {:.1} |",
            us(e.median_ns),
            us(e.p99_ns)
        );
    }
    let find = |n: &str| {
        cases
            .iter()
            .find(|(c, _)| *c == n)
            .map(|(_, e)| e.median_ns as f64)
    };
    if let (Some(pod), Some(host)) = (
        find("pod namespace, through meshd"),
        find("host namespace, through meshd"),
    ) {
        let _ = writeln!(
            t,
            "\nPod path / host-namespace path (median): **{:.2}**",
            pod / host
        );
    }
    let _ = writeln!(
        t,
        "\nKernel counters during the pod case: {} redirects, {} sk_msg redirects, {} sk_msg misses, {} spliced sends, {} spliced replies.\n",
        counters.redirect,
        counters.sockmap_redirect,
        counters.sockmap_miss,
        counters.splice,
        counters.reply_splice
    );
    let _ = writeln!(
        t,
        "| pods | enrol ms/pod | remove ms/pod | RSS idle KiB | RSS enrolled KiB | KiB/pod |\n\
         |---:|---:|---:|---:|---:|---:|"
    );
    for e in enrolments {
        let per_pod = e.rss_enrolled_kib.saturating_sub(e.rss_idle_kib) as f64 / e.pods as f64;
        let _ = writeln!(
            t,
            "| {} | {:.2} | {:.2} | {} | {} | {:.1} |",
            e.pods,
            e.enrol_ms_per_pod,
            e.remove_ms_per_pod,
            e.rss_idle_kib,
            e.rss_enrolled_kib,
            per_pod
        );
    }
    t
}
