//! `cargo xtask bench l4`: 64-byte echo round trips on one CPU and bulk throughput, direct and
//! through meshd in each of its L4 configurations (sockmap with and without the kernel splice;
//! without the sockmap, relaying with splice(2) and copying). Every case runs in each of several
//! repeats, taking turns going first; the report in target/bench/l4.md gives each case's median
//! and the paired ratios (within a repeat) against the targets.

use std::{path::Path, time::Duration};

use anyhow::{Context, Result};

use super::{
    procs::{Server, command, field, helper, run_json},
    report::{Echo, Measured, Results},
};
use crate::{
    build,
    daemon::{Counters, Layout, Meshd, ensure_free},
    util::{require_root, root, step},
};

/// Echo and bulk servers listen on 127.0.0.1 at these ports.
const ECHO_PORT: u16 = 25100;
const BULK_PORT: u16 = 25101;

/// The benchmark's own meshd ports and attach cgroup, never a real node's.
const LAYOUT: Layout = Layout {
    admin_port: 25000,
    outbound_port: 25001,
    inbound_port: 25008,
    cgroup: "meshd-bench",
};

/// The workload identity the benchmark's managed clients run as.
const WORKLOAD: &str = "bench/client";

/// The CPU the echo cases share.
const ECHO_CPU: u32 = 0;

#[derive(clap::Args)]
pub struct Args {
    /// Timed echo round trips per case [default: 20000; 2000 with --quick].
    #[arg(long)]
    rounds: Option<u32>,
    /// Untimed echo round trips before the timed ones [default: 2000; 200 with --quick].
    #[arg(long)]
    warmup: Option<u32>,
    /// MiB sent per bulk case [default: 1024; 128 with --quick].
    #[arg(long)]
    bulk_mib: Option<u64>,
    /// How many times every case runs, the cases taking turns going first [default: 5; 1 with
    /// --quick].
    #[arg(long)]
    repeats: Option<u32>,
    /// A short, noisier run with smaller defaults.
    #[arg(long)]
    quick: bool,
    /// Use the meshd binary already built (target/release, or under CARGO_TARGET_DIR) instead of
    /// running `cargo xtask build`.
    #[arg(long)]
    no_build: bool,
}

impl Args {
    fn rounds(&self) -> u32 {
        self.rounds
            .unwrap_or(if self.quick { 2_000 } else { 20_000 })
    }
    fn warmup(&self) -> u32 {
        self.warmup.unwrap_or(if self.quick { 200 } else { 2_000 })
    }
    fn repeats(&self) -> u32 {
        self.repeats
            .unwrap_or(if self.quick { 1 } else { 5 })
            .max(1)
    }
    fn bulk_bytes(&self) -> u64 {
        self.bulk_mib.unwrap_or(if self.quick { 128 } else { 1024 }) << 20
    }
}

/// One meshd configuration of the benchmark.
pub struct Case {
    pub name: &'static str,
    args: &'static [&'static str],
    /// Log file stem under target/bench.
    log: &'static str,
}

/// The echo cases; the first is the sockmap target's subject, the third its baseline.
const ECHO_CASES: [Case; 4] = [
    Case {
        name: "meshd, sockmap on (kernel splice on)",
        args: &["--sockmap", "on"],
        log: "meshd-echo-sockmap-on",
    },
    Case {
        name: "meshd, sockmap on, kernel splice off",
        args: &["--sockmap", "on", "--splice", "off"],
        log: "meshd-echo-splice-off",
    },
    Case {
        name: "meshd, sockmap off (defaults: splice(2) relay)",
        args: &[],
        log: "meshd-echo-sockmap-off",
    },
    Case {
        name: "meshd, sockmap off, relay copying (--zero-copy off)",
        args: &["--zero-copy", "off"],
        log: "meshd-echo-copying",
    },
];

/// The bulk cases; the first (meshd's defaults) is the target's subject.
const BULK_CASES: [Case; 3] = [
    Case {
        name: "meshd, sockmap off (defaults: splice(2) relay)",
        args: &[],
        log: "meshd-bulk",
    },
    Case {
        name: "meshd, sockmap off, relay copying (--zero-copy off)",
        args: &["--zero-copy", "off"],
        log: "meshd-bulk-copying",
    },
    Case {
        name: "meshd, sockmap on (kernel splice on)",
        args: &["--sockmap", "on"],
        log: "meshd-bulk-sockmap-on",
    },
];

pub fn run(args: &Args) -> Result<()> {
    require_root("bench l4")?;
    if !args.no_build {
        build::all()?;
    }
    let meshd = build::meshd_release();
    let out = root().join("target/bench");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    ensure_free(ECHO_PORT)?;
    ensure_free(BULK_PORT)?;

    let (rounds, warmup, bulk_bytes) = (args.rounds(), args.warmup(), args.bulk_bytes());
    let repeats = args.repeats();
    let echo_client = helper(
        "echo-client",
        &[
            format!("--addr=127.0.0.1:{ECHO_PORT}"),
            format!("--rounds={rounds}"),
            format!("--warmup={warmup}"),
        ],
    )?;
    let echo_deadline = Duration::from_secs(60) + Duration::from_millis(u64::from(rounds + warmup));
    let bulk_client = helper(
        "bulk-client",
        &[
            format!("--addr=127.0.0.1:{BULK_PORT}"),
            format!("--bytes={bulk_bytes}"),
        ],
    )?;
    // Generous: 60 s plus 10 MB/s.
    let bulk_deadline = Duration::from_secs(60 + bulk_bytes / 10_000_000);

    let mut echo = Measured::new(&ECHO_CASES);
    {
        let argv = helper("echo-server", &[format!("--port={ECHO_PORT}")])?;
        let _server = Server::start(command(&argv[0], &argv[1..], Some(ECHO_CPU)))?;
        for r in 0..repeats {
            step(&format!(
                "echo round trips, repeat {} of {repeats}: direct",
                r + 1
            ));
            echo.direct.push(echo_once(&echo_client, echo_deadline)?);
            for i in turns(ECHO_CASES.len(), r) {
                let case = &ECHO_CASES[i];
                step(&format!(
                    "echo round trips: through {} (pinned to CPU {ECHO_CPU})",
                    case.name
                ));
                let log = out.join(format!("{}.log", case.log));
                let (e, c) = through_meshd(&meshd, case.args, Some(ECHO_CPU), &log, |m| {
                    echo_once(&m.exec(WORKLOAD, &echo_client), echo_deadline)
                })?;
                echo.add(i, e, c);
            }
        }
    }

    let mut bulk = Measured::new(&BULK_CASES);
    {
        let argv = helper("bulk-server", &[format!("--port={BULK_PORT}")])?;
        let _server = Server::start(command(&argv[0], &argv[1..], None))?;
        for r in 0..repeats {
            step(&format!(
                "bulk throughput, repeat {} of {repeats}: direct (unpinned)",
                r + 1
            ));
            bulk.direct.push(bulk_once(&bulk_client, bulk_deadline)?);
            for i in turns(BULK_CASES.len(), r) {
                let case = &BULK_CASES[i];
                step(&format!(
                    "bulk throughput: through {} (unpinned)",
                    case.name
                ));
                let log = out.join(format!("{}.log", case.log));
                let (b, c) = through_meshd(&meshd, case.args, None, &log, |m| {
                    bulk_once(&m.exec(WORKLOAD, &bulk_client), bulk_deadline)
                })?;
                bulk.add(i, b, c);
            }
        }
    }

    let results = Results {
        rounds,
        warmup,
        bulk_bytes,
        repeats,
        echo,
        bulk,
    };
    let table = results.markdown();
    let path = out.join("l4.md");
    std::fs::write(&path, &table).with_context(|| format!("writing {}", path.display()))?;
    println!("\n{table}");
    eprintln!("wrote {}", path.display());
    if !results.all_pass() {
        eprintln!("some targets were missed (see the table above)");
    }
    Ok(())
}

/// The order of `n` cases in repeat `r`: each repeat starts one case later, so none always
/// runs first (or last) on a machine whose load drifts.
fn turns(n: usize, r: u32) -> impl Iterator<Item = usize> {
    (0..n).map(move |i| (i + r as usize) % n)
}

/// Starts meshd with `args`, runs `case` against it, reads its kernel counters and stops it.
fn through_meshd<T>(
    binary: &Path,
    args: &[&str],
    cpu: Option<u32>,
    log: &Path,
    case: impl FnOnce(&Meshd) -> Result<T>,
) -> Result<(T, Counters)> {
    let config = log.with_file_name("policies");
    std::fs::create_dir_all(&config).with_context(|| format!("creating {}", config.display()))?;
    let meshd = Meshd::start(
        binary,
        LAYOUT,
        &config,
        args,
        |prog, args| command(prog, args, cpu),
        log,
    )?;
    let result =
        case(&meshd).with_context(|| format!("through meshd (its log: {})", log.display()))?;
    let counters = meshd.counters()?;
    meshd.stop()?;
    Ok((result, counters))
}

/// Runs an echo client (pinned to the echo CPU) and reads its result.
fn echo_once(argv: &[String], deadline: Duration) -> Result<Echo> {
    let json = run_json(command(&argv[0], &argv[1..], Some(ECHO_CPU)), deadline)?;
    Ok(Echo {
        median_ns: field(&json, "median_ns")?,
        p99_ns: field(&json, "p99_ns")?,
    })
}

/// Runs a bulk client (unpinned) and returns its bytes per second.
fn bulk_once(argv: &[String], deadline: Duration) -> Result<f64> {
    let json = run_json(command(&argv[0], &argv[1..], None), deadline)?;
    Ok(field(&json, "bytes_per_sec")? as f64)
}
