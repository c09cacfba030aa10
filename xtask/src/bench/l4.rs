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
    /// How many times every case runs, the cases taking turns going first [default: 11; 1 with
    /// --quick]. The paired echo ratio of single repeats spans about 1.1 to 3 on a busy 2-CPU VM;
    /// the median of 11 moves far less than that of 5.
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
            .unwrap_or(if self.quick { 1 } else { 11 })
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

    let echo = {
        let argv = helper("echo-server", &[format!("--port={ECHO_PORT}")])?;
        let _server = Server::start(command(&argv[0], &argv[1..], Some(ECHO_CPU)))?;
        let sweep = Sweep {
            what: "echo round trips",
            cases: &ECHO_CASES,
            cpu: Some(ECHO_CPU),
            repeats,
        };
        sweep.run(
            &meshd,
            &out,
            || echo_once(&echo_client, echo_deadline),
            |m| echo_once(&m.exec(WORKLOAD, &echo_client), echo_deadline),
        )?
    };
    let bulk = {
        let argv = helper("bulk-server", &[format!("--port={BULK_PORT}")])?;
        let _server = Server::start(command(&argv[0], &argv[1..], None))?;
        let sweep = Sweep {
            what: "bulk throughput",
            cases: &BULK_CASES,
            cpu: None,
            repeats,
        };
        sweep.run(
            &meshd,
            &out,
            || bulk_once(&bulk_client, bulk_deadline),
            |m| bulk_once(&m.exec(WORKLOAD, &bulk_client), bulk_deadline),
        )?
    };

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

/// One measurement, direct and through meshd in each case, over the repeats.
struct Sweep<'a> {
    what: &'static str,
    cases: &'a [Case],
    /// The CPU meshd is pinned to, if any (the measuring client pins itself).
    cpu: Option<u32>,
    repeats: u32,
}

impl Sweep<'_> {
    fn run<T>(
        &self,
        meshd: &Path,
        out: &Path,
        mut direct: impl FnMut() -> Result<T>,
        mut through: impl FnMut(&Meshd) -> Result<T>,
    ) -> Result<Measured<T>> {
        let (what, repeats) = (self.what, self.repeats);
        let pinned = self
            .cpu
            .map_or("unpinned".to_string(), |c| format!("pinned to CPU {c}"));
        let mut measured = Measured::new(self.cases);
        for r in 0..repeats {
            step(&format!("{what}, repeat {} of {repeats}: direct", r + 1));
            measured.direct.push(direct()?);
            for i in turns(self.cases.len(), r) {
                let case = &self.cases[i];
                step(&format!("{what}: through {} ({pinned})", case.name));
                let log = out.join(format!("{}.log", case.log));
                let (v, c) = through_meshd(meshd, case.args, self.cpu, &log, &mut through)?;
                measured.add(i, v, c);
            }
        }
        Ok(measured)
    }
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
