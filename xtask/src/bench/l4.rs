//! `cargo xtask bench l4`: 64-byte echo round trips (direct, meshd with sockmap and kernel
//! splice, with the sockmap alone, and without the sockmap, relaying with splice(2) and copying)
//! on one CPU, and bulk throughput (direct vs meshd in the same configurations), reported against
//! targets in target/bench/l4.md.

use std::{path::Path, time::Duration};

use anyhow::{Context, Result};

use super::{
    procs::{Server, command, field, helper, run_json},
    report::{Echo, Results},
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
    fn bulk_bytes(&self) -> u64 {
        self.bulk_mib.unwrap_or(if self.quick { 128 } else { 1024 }) << 20
    }
}

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

    let (direct, sockmap_on, splice_off, sockmap_off, sockmap_off_copy, counters) = {
        let argv = helper("echo-server", &[format!("--port={ECHO_PORT}")])?;
        let _server = Server::start(command(&argv[0], &argv[1..], Some(ECHO_CPU)))?;

        step("echo round trips: direct (pinned to CPU 0)");
        let direct = echo(&echo_client, echo_deadline)?;
        step("echo round trips: through meshd, sockmap on (pinned to CPU 0)");
        let (on, counters_on) = through_meshd(
            &meshd,
            &["--sockmap", "on"],
            Some(ECHO_CPU),
            &out.join("meshd-echo-sockmap-on.log"),
            |m| echo(&m.exec(WORKLOAD, &echo_client), echo_deadline),
        )?;
        step("echo round trips: through meshd, sockmap on, kernel splice off (pinned to CPU 0)");
        let (no_splice, counters_no_splice) = through_meshd(
            &meshd,
            &["--sockmap", "on", "--splice", "off"],
            Some(ECHO_CPU),
            &out.join("meshd-echo-splice-off.log"),
            |m| echo(&m.exec(WORKLOAD, &echo_client), echo_deadline),
        )?;
        step("echo round trips: through meshd, sockmap off (pinned to CPU 0)");
        let (off, counters_off) = through_meshd(
            &meshd,
            &["--sockmap", "off"],
            Some(ECHO_CPU),
            &out.join("meshd-echo-sockmap-off.log"),
            |m| echo(&m.exec(WORKLOAD, &echo_client), echo_deadline),
        )?;
        step("echo round trips: through meshd, sockmap off, relay copying (pinned to CPU 0)");
        let (copying, _) = through_meshd(
            &meshd,
            &["--sockmap", "off", "--zero-copy", "off"],
            Some(ECHO_CPU),
            &out.join("meshd-echo-copying.log"),
            |m| echo(&m.exec(WORKLOAD, &echo_client), echo_deadline),
        )?;
        let counters = [counters_on, counters_no_splice, counters_off];
        (direct, on, no_splice, off, copying, counters)
    };

    let (bulk_direct, bulk_meshd, bulk_meshd_copy, bulk_sockmap_on, counters_bulk) = {
        let argv = helper("bulk-server", &[format!("--port={BULK_PORT}")])?;
        let _server = Server::start(command(&argv[0], &argv[1..], None))?;

        step("bulk throughput: direct (unpinned)");
        let direct = bulk(&bulk_client, bulk_deadline)?;
        step("bulk throughput: through meshd, defaults (sockmap off, splice(2) relay; unpinned)");
        let (relay, _) = through_meshd(&meshd, &[], None, &out.join("meshd-bulk.log"), |m| {
            bulk(&m.exec(WORKLOAD, &bulk_client), bulk_deadline)
        })?;
        step("bulk throughput: through meshd, sockmap off, relay copying (unpinned)");
        let (copying, _) = through_meshd(
            &meshd,
            &["--zero-copy", "off"],
            None,
            &out.join("meshd-bulk-copying.log"),
            |m| bulk(&m.exec(WORKLOAD, &bulk_client), bulk_deadline),
        )?;
        step("bulk throughput: through meshd, sockmap on (unpinned)");
        let (sockmap, counters) = through_meshd(
            &meshd,
            &["--sockmap", "on"],
            None,
            &out.join("meshd-bulk-sockmap-on.log"),
            |m| bulk(&m.exec(WORKLOAD, &bulk_client), bulk_deadline),
        )?;
        (direct, relay, copying, sockmap, counters)
    };

    let results = Results {
        rounds,
        warmup,
        bulk_bytes,
        direct,
        sockmap_on,
        splice_off,
        sockmap_off,
        sockmap_off_copy,
        bulk_direct,
        bulk_meshd,
        bulk_meshd_copy,
        bulk_sockmap_on,
        counters_echo_on: counters[0],
        counters_echo_splice_off: counters[1],
        counters_echo_off: counters[2],
        counters_bulk,
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
fn echo(argv: &[String], deadline: Duration) -> Result<Echo> {
    let json = run_json(command(&argv[0], &argv[1..], Some(ECHO_CPU)), deadline)?;
    Ok(Echo {
        count: field(&json, "count")?,
        median_ns: field(&json, "median_ns")?,
        p99_ns: field(&json, "p99_ns")?,
    })
}

/// Runs a bulk client (unpinned) and returns its bytes per second.
fn bulk(argv: &[String], deadline: Duration) -> Result<f64> {
    let json = run_json(command(&argv[0], &argv[1..], None), deadline)?;
    Ok(field(&json, "bytes_per_sec")? as f64)
}
