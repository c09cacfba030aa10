//! The command line: `meshd run | exec | check | analyze | status | connections | ca`.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};

use crate::settings::{FailMode, Settings, SettingsError};

/// Environment variable naming the admin address for `exec`, `status` and `connections`.
pub const ADMIN_ENV: &str = "MESHD_ADMIN";
pub const DEFAULT_ADMIN: &str = "127.0.0.1:15000";

#[derive(Parser, Debug)]
#[command(
    name = "meshd",
    version,
    about = "eBPF-accelerated, sidecarless service-mesh node proxy"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the node daemon: attach the eBPF programs and proxy captured traffic.
    Run(Box<RunArgs>),
    /// Run a command inside a managed cgroup, enrolled as a workload with the running daemon.
    Exec(ExecArgs),
    /// Probe the kernel and host for every feature meshd needs.
    Check,
    /// Validate policy files and directories like `istioctl analyze` (exit 0 clean, 1 errors,
    /// 2 unreadable input).
    Analyze(AnalyzeArgs),
    /// Show the running daemon's state.
    Status(ClientArgs),
    /// List the running daemon's live connections with their kernel counters.
    Connections(ClientArgs),
    /// Manage the built-in certificate authority of the mesh's mTLS identities.
    Ca(CaArgs),
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Policy files or directories (repeatable).
    #[arg(long = "config", default_value = "./policies")]
    pub config: Vec<PathBuf>,
    /// Admin API address (/ready, /metrics, /connections, /config_dump).
    #[arg(long, env = ADMIN_ENV, default_value = DEFAULT_ADMIN)]
    pub admin: SocketAddr,
    /// Port of the outbound listener that captured connections are redirected to.
    #[arg(long, env = "MESHD_OUTBOUND_PORT", default_value_t = 15001)]
    pub outbound_port: u16,
    /// Port reserved for the inbound (mTLS tunnel) listener; never redirected.
    #[arg(long, env = "MESHD_INBOUND_PORT", default_value_t = 15008)]
    pub inbound_port: u16,
    /// Attach-point cgroup: a directory under the cgroup2 mount, or a path relative to the
    /// mount. Default: `meshd` under the cgroup2 mount.
    #[arg(long, env = "MESHD_CGROUP")]
    pub cgroup: Option<PathBuf>,
    /// Skip the TCP/IP stack on the workload↔meshd hop with sk_msg and a SOCKHASH. Off by
    /// default: the kernel's sockmap receive path can fail a blocking read with EAGAIN when the
    /// reader is woken without data (see the README); event-driven workloads are unaffected.
    #[arg(long, env = "MESHD_SOCKMAP", default_value = "off", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub sockmap: bool,
    /// With the sockmap, move an opaque (L4) connection's bytes in the kernel, both ways: the
    /// workload's straight out of meshd's upstream socket, the replies straight back to the
    /// workload, each direction once meshd holds none of its bytes.
    #[arg(long, env = "MESHD_SPLICE", default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub splice: bool,
    /// Without the sockmap, relay an opaque (L4) connection with splice(2), so its bytes move
    /// between the two sockets inside the kernel instead of being copied through meshd.
    #[arg(long, env = "MESHD_ZERO_COPY", default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub zero_copy: bool,
    /// What managed connects do when meshd is gone: `open` connects directly, `closed` fails.
    #[arg(long, env = "MESHD_FAIL_MODE", default_value = "open")]
    pub fail_mode: FailMode,
    /// After this long without a heartbeat from meshd the fail mode applies (e.g. 3s, 500ms).
    #[arg(long, env = "MESHD_HEARTBEAT_TIMEOUT", default_value = "3s")]
    pub heartbeat_timeout: String,
    /// Destination port never redirected (repeatable).
    #[arg(
        long = "exclude-port",
        env = "MESHD_EXCLUDE_PORTS",
        value_delimiter = ','
    )]
    pub exclude_ports: Vec<u16>,
    /// Destination CIDR never redirected, IPv4 or IPv6 (repeatable).
    #[arg(
        long = "exclude-cidr",
        env = "MESHD_EXCLUDE_CIDRS",
        value_delimiter = ','
    )]
    pub exclude_cidrs: Vec<String>,
    /// How long SIGTERM waits for open connections before closing them.
    #[arg(long, env = "MESHD_DRAIN_TIMEOUT", default_value = "5s")]
    pub drain_timeout: String,
    /// How long an upstream connect may take.
    #[arg(long, env = "MESHD_CONNECT_TIMEOUT", default_value = "10s")]
    pub connect_timeout: String,
    /// How long to wait for a client's first bytes to tell HTTP from other protocols; a client
    /// that sends nothing first (server-first protocols) is proxied at L4 after this. A request
    /// line already begun is waited on for up to 15 s.
    #[arg(
        long,
        env = "MESHD_PROTOCOL_DETECTION_TIMEOUT",
        default_value = "100ms"
    )]
    pub protocol_detection_timeout: String,
    /// How long a client's HTTP connection may stay open with no request in flight before
    /// meshd closes it (an HTTP/2 one with a GOAWAY first), as Envoy's downstream
    /// `idle_timeout`; Istio keeps Envoy's 1h. `0s`: never.
    #[arg(long, env = "MESHD_HTTP_IDLE_TIMEOUT", default_value = "1h")]
    pub http_idle_timeout: String,
    /// Whether HTTP/1.0 requests are served; `off` answers them 426 Upgrade Required, as
    /// Istio's default (`PILOT_HTTP10`, or the proxy metadata `HTTP10: "1"`, turns them on).
    #[arg(long = "http10", env = "MESHD_HTTP10", default_value = "off", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub accept_http10: bool,
    /// Where traffic to a destination no ServiceEntry describes goes, as Istio's mesh-wide
    /// `outboundTrafficPolicy.mode`: `ALLOW_ANY` passes it through to the address dialled
    /// (`PassthroughCluster`); `REGISTRY_ONLY` blocks it (`BlackHoleCluster`: an HTTP request
    /// gets 502, an opaque connection is reset).
    #[arg(long, env = "MESHD_OUTBOUND_TRAFFIC_POLICY", default_value = "ALLOW_ANY", value_parser = parse_outbound_policy, action = clap::ArgAction::Set)]
    pub outbound_traffic_policy: bool,
    /// Largest HTTP/1 request head (request line and headers) in KiB; bigger gets 431.
    #[arg(long, env = "MESHD_MAX_REQUEST_HEADERS_KB", default_value_t = 60)]
    pub max_request_headers_kb: usize,
    /// How long a global rate-limit check may wait for Redis before the policy's failure mode
    /// applies.
    #[arg(long, env = "MESHD_REDIS_TIMEOUT", default_value = "100ms")]
    pub redis_timeout: String,
    /// Istio's standard request and TCP metrics (`istio_*`); `off` skips recording them, while
    /// meshd's own counters stay.
    #[arg(long, env = "MESHD_ISTIO_METRICS", default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub istio_metrics: bool,
    /// How often an open TCP connection's bytes are added to `istio_tcp_*_bytes_total`
    /// (Istio's `tcp_reporting_duration`); `0s` adds them only when it closes.
    #[arg(long, env = "MESHD_TCP_REPORTING_INTERVAL", default_value = "5s")]
    pub tcp_reporting_interval: String,
    /// Where access-log lines go: `stdout`, `off`, or a file path.
    #[arg(long, env = "MESHD_ACCESS_LOG", default_value = "stdout")]
    pub access_log: String,
    /// Fraction of successful requests logged (0 to 1); errors are always logged.
    #[arg(long, env = "MESHD_ACCESS_LOG_SAMPLE", default_value_t = 1.0)]
    pub access_log_sample: f64,
    /// Export spans as Zipkin v2 JSON to this collector URL (http://host:port/api/v2/spans).
    #[arg(long, env = "MESHD_TRACE_ZIPKIN")]
    pub trace_zipkin: Option<String>,
    /// Export spans as OTLP/HTTP JSON to this collector URL (http://host:port/v1/traces).
    #[arg(long, env = "MESHD_TRACE_OTLP")]
    pub trace_otlp: Option<String>,
    /// Fraction of new traces sampled (0 to 1); a caller's sampling decision is kept.
    #[arg(long, env = "MESHD_TRACE_SAMPLE", default_value_t = 0.01)]
    pub trace_sample: f64,
    /// Connections one source workload may have open through meshd at once; more are reset
    /// (0: unlimited).
    #[arg(long, env = "MESHD_WORKLOAD_MAX_CONNECTIONS", default_value_t = 1024)]
    pub workload_max_connections: u32,
    /// HTTP requests one source workload may have in flight through meshd at once; more get
    /// 503 with flag UO (0: unlimited).
    #[arg(long, env = "MESHD_WORKLOAD_MAX_REQUESTS", default_value_t = 1024)]
    pub workload_max_requests: u32,
    /// Threads that serve traffic (Envoy's `--concurrency`): 0 uses one per CPU; 1 runs every
    /// connection on one thread, with no cross-thread hand-offs.
    #[arg(long, env = "MESHD_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,
    /// This node's address as other meshd reach it: endpoints labelled `meshd.io/node` with
    /// another address are reached through the mTLS tunnel to that node.
    #[arg(long, env = "MESHD_NODE_ADDRESS")]
    pub node_address: Option<std::net::IpAddr>,
    /// This node's locality, `region/zone/subzone` (Kubernetes' topology labels): with outlier
    /// detection, endpoints nearer to it are preferred, and traffic fails over by locality.
    #[arg(long, env = "MESHD_LOCALITY")]
    pub locality: Option<String>,
    /// SPIFFE trust domain of workload identities.
    #[arg(long, env = "MESHD_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// The built-in CA's directory (from `meshd ca init`): meshd issues its workloads'
    /// certificates.
    #[arg(long, env = "MESHD_CA_DIR", conflicts_with = "cert_dir")]
    pub ca_dir: Option<PathBuf>,
    /// A directory of workload certificates kept by SPIRE or cert-manager
    /// (`<dir>/ca.pem`, `<dir>/<namespace>/<serviceAccount>/{cert,key}.pem`).
    #[arg(long, env = "MESHD_CERT_DIR")]
    pub cert_dir: Option<PathBuf>,
    /// Lifetime of certificates the built-in CA issues; each is renewed at half of it.
    #[arg(long, env = "MESHD_CERT_LIFETIME", default_value = "24h")]
    pub cert_lifetime: String,
    #[command(flatten)]
    pub kube: crate::discovery::KubeArgs,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Workload identity as NAMESPACE/NAME.
    #[arg(long)]
    pub workload: String,
    /// Run CMD in this network namespace (e.g. /run/netns/NAME), as a pod: meshd then listens
    /// inside it for the workload's redirected connects.
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// Admin address of the running daemon.
    #[arg(long, env = ADMIN_ENV, default_value = DEFAULT_ADMIN)]
    pub admin: SocketAddr,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct AnalyzeArgs {
    /// Policy files or directories (scanned recursively for .yaml/.yml).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct CaArgs {
    #[command(subcommand)]
    pub command: CaCommand,
}

#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Create a self-signed root (ca.key, mode 0600, and ca.crt) that issues workload
    /// certificates (exit 0 on success, 1 otherwise).
    Init(CaInitArgs),
}

#[derive(Args, Debug)]
pub struct CaInitArgs {
    /// Directory for ca.key and ca.crt; created if missing.
    #[arg(long)]
    pub dir: PathBuf,
    /// SPIFFE trust domain of the mesh.
    #[arg(long, default_value = crate::identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Replace an existing CA; certificates it issued stop being trusted.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct ClientArgs {
    /// Admin address of the running daemon.
    #[arg(long, env = ADMIN_ENV, default_value = DEFAULT_ADMIN)]
    pub admin: SocketAddr,
    /// Print the raw JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Istio's `outboundTrafficPolicy.mode`: whether only registered destinations are reached.
fn parse_outbound_policy(s: &str) -> Result<bool, String> {
    match s.to_ascii_uppercase().replace('-', "_").as_str() {
        "ALLOW_ANY" => Ok(false),
        "REGISTRY_ONLY" => Ok(true),
        _ => Err(format!("expected ALLOW_ANY or REGISTRY_ONLY, got {s:?}")),
    }
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" | "1" | "yes" => Ok(true),
        "off" | "false" | "0" | "no" => Ok(false),
        _ => Err(format!("expected on or off, got {s:?}")),
    }
}

impl RunArgs {
    pub fn into_settings(self) -> Result<Settings, SettingsError> {
        Settings::from_args(self)
    }
}

/// Exit code for an unusable configuration (EX_USAGE).
pub const EXIT_USAGE: u8 = 64;

/// Lets a write into a closed pipe end this process, whatever disposition or mask it inherited:
/// a parent that blocks SIGPIPE would otherwise leave the report writing into nothing and exiting 0.
fn die_of_sigpipe() {
    // SAFETY: both calls only change this process's handling of one signal; the set is local.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

pub fn run(cli: Cli) -> ExitCode {
    if !matches!(cli.command, Command::Run(_) | Command::Exec(_)) {
        // A report piped into `head` ends quietly, as other command-line tools do, instead of
        // panicking on the closed pipe. The daemon keeps SIGPIPE ignored: a peer closing a
        // socket is an error it handles.
        die_of_sigpipe();
    }
    match cli.command {
        Command::Run(args) => {
            crate::app::init_tracing();
            let settings = match args.into_settings() {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("meshd: {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            crate::app::run_daemon(settings)
        }
        Command::Exec(args) => crate::exec::run(args),
        Command::Check => crate::check::run(),
        Command::Analyze(args) => crate::analyze::run(args),
        Command::Status(args) => crate::status::status(args),
        Command::Connections(args) => crate::status::connections(args),
        Command::Ca(args) => crate::identity::command::run(args),
    }
}
