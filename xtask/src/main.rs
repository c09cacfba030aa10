//! `cargo xtask`: meshd's developer tasks — setup, build-ebpf, build, test, demo and bench.

mod bench;
mod build;
mod daemon;
mod demo;
mod setup;
mod test;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "meshd's build, test, demo and benchmark tasks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building meshd needs: rust-src for nightly and bpf-linker (idempotent).
    Setup {
        /// Also install the Debian packages the test suite uses.
        #[arg(long)]
        test_deps: bool,
    },
    /// Build the eBPF programs (proxy-ebpf) with nightly and bpf-linker.
    BuildEbpf,
    /// Build the eBPF programs and the meshd binary (release).
    Build,
    /// Run formatting and lint checks and the whole test suite (needs root for eBPF tests).
    Test {
        /// Extra arguments for `cargo test`, e.g. a test name filter.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Start meshd and carry real traffic through it.
    Demo,
    /// Benchmarks; each reports ratios against a peer measured in the same run.
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup { test_deps } => setup::run(test_deps),
        Task::BuildEbpf => build::ebpf(),
        Task::Build => build::all(),
        Task::Test { args } => test::run(&args),
        Task::Demo => demo::run(),
        Task::Bench { which } => bench::run(which),
    };
    if let Err(e) = result {
        eprintln!("\nxtask: error: {e:#}");
        std::process::exit(1);
    }
}
