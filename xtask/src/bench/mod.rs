//! `cargo xtask bench`: benchmarks that anyone can rerun; each reports ratios against a peer
//! measured in the same run.

mod bulk;
mod echo;
mod http;
mod l4;
mod pods;
mod policy;
mod procs;
mod report;
mod resilience;
mod telemetry;
mod tunnel;

use std::net::SocketAddr;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum Which {
    /// L4 datapath: 64-byte echo round trips and bulk throughput, direct vs through meshd.
    L4(l4::Args),
    /// HTTP: small GETs through meshd vs nginx and HAProxy (throughput, fixed-rate latency, HTTP/2).
    Http(http::Args),
    /// Resilience: the throughput cost of a pool limit, outlier detection, a local and a global
    /// (Redis) rate limit, none of them hit, each against the same run without it.
    Resilience(resilience::Args),
    /// Telemetry cost: HTTP/1.1 throughput with telemetry on (metrics, 1% access log, 1% traces)
    /// vs off, alternating over rounds.
    Telemetry(telemetry::Args),
    /// Pods: echo round trips from a pod in its own network namespace vs a host-namespace
    /// workload (and direct), and the time and memory of enrolling 1, 50 and 200 pods.
    Pods(pods::Args),
    /// Policy model: compile 10,000 VirtualServices (time, memory) and route lookup (criterion).
    Policy,
    /// mTLS tunnel between two network namespaces: HTTP throughput and CPU per request vs
    /// plaintext through meshd, and handshakes per second.
    Tunnel,
    /// Echo server on BIND:PORT (a helper process of `bench l4` and `bench pods`).
    #[command(hide = true)]
    EchoServer {
        #[arg(long, default_value = "127.0.0.1")]
        bind: std::net::Ipv4Addr,
        #[arg(long)]
        port: u16,
    },
    /// Echo client: timed 64-byte round trips over one connection, one JSON line on stdout.
    #[command(hide = true)]
    EchoClient {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        rounds: u32,
        #[arg(long)]
        warmup: u32,
    },
    /// Bulk sink on 127.0.0.1:PORT: reads each connection to EOF, then acknowledges the count.
    #[command(hide = true)]
    BulkServer {
        #[arg(long)]
        port: u16,
    },
    /// Bulk client: sends BYTES over one connection, one JSON line with bytes/s on stdout.
    #[command(hide = true)]
    BulkClient {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        bytes: u64,
    },
}

pub fn run(which: Which) -> Result<()> {
    match which {
        Which::L4(args) => l4::run(&args),
        Which::Http(args) => http::run(&args),
        Which::Resilience(args) => resilience::run(&args),
        Which::Telemetry(args) => telemetry::run(&args),
        Which::Pods(args) => pods::run(&args),
        Which::Policy => policy::run(),
        Which::Tunnel => tunnel::run(),
        Which::EchoServer { bind, port } => echo::server(bind, port),
        Which::EchoClient {
            addr,
            rounds,
            warmup,
        } => echo::client(addr, rounds, warmup),
        Which::BulkServer { port } => bulk::server(port),
        Which::BulkClient { addr, bytes } => bulk::client(addr, bytes),
    }
}
