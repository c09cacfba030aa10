//! `cargo xtask bench tunnel`: the mTLS tunnel between two simulated nodes, release build: HTTP
//! throughput, latency and CPU per request against plaintext through meshd (with one CPU per
//! node, and with both nodes on shared CPUs), and new mTLS connections per second on a node's
//! tunnel port. Runs the ignored benchmarks of
//! tests/handshakes.rs one after the other; they write target/bench/tunnel-throughput.md and
//! target/bench/handshakes.md.

use std::process::Command;

use anyhow::Result;

use crate::util::{require_root, root, run as sh, step};

pub fn run() -> Result<()> {
    require_root("bench tunnel")?;
    crate::build::ebpf()?;
    step("tunnel throughput and handshakes per second (release build, two network namespaces)");
    sh(Command::new("cargo")
        .args([
            "test",
            "--release",
            "-p",
            "meshd",
            "--test",
            "handshakes",
            "--",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        // meshd at its default log level, as users run it: the tests' debug logging would
        // write a line per request.
        .env("MESHD_TEST_LOG", "info")
        .current_dir(root()))
}
