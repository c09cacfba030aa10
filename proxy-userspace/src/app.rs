//! Daemon assembly: `build` binds the listeners, sets up cgroups, attaches the datapath and
//! starts serving, returning the addresses it bound; `App::wait_termination` drains and tears
//! everything down.

use std::{
    fs::File,
    io::ErrorKind,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, atomic::Ordering},
};

use tokio::net::TcpListener;

use crate::{
    admin::{self, AdminState},
    cgroup::{self, NodeCgroups},
    config::{ConfigStore, spawn_watcher},
    drain,
    ebpf::{self, Datapath},
    metrics::Metrics,
    proxy::{Connections, outbound},
    settings::Settings,
    workloads::Registry,
};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(
        "meshd run needs root (or CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN) to load eBPF programs \
         and manage cgroups; it is running as uid {0}"
    )]
    NotRoot(u32),
    #[error(
        "{what} {addr} is already in use: is another meshd running on this node? Stop it, or pick \
         other ports with --admin / --outbound-port"
    )]
    PortTaken {
        what: &'static str,
        addr: SocketAddr,
    },
    #[error("binding {what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "another meshd (pid {pid}, lock {lock}) is already running for the cgroup {cgroup}; stop \
         it first, or give this one its own --cgroup and ports"
    )]
    AlreadyRunning {
        pid: String,
        lock: PathBuf,
        cgroup: PathBuf,
    },
    #[error("creating the lock file {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("opening the access log {path}: {source}")]
    AccessLog {
        path: String,
        source: std::io::Error,
    },
    #[error("tracing: {0}")]
    Tracing(String),
    #[error("config path {0} does not exist")]
    MissingConfig(PathBuf),
    #[error("the configuration is invalid:\n{0}")]
    Config(#[from] crate::policy::LoadFailure),
    #[error("workload certificates: {0}")]
    Identity(#[from] crate::identity::IdentityError),
    #[error(
        "the policies put endpoints behind other meshd nodes (label meshd.io/node), but this \
         meshd has no workload certificates for the mTLS tunnel: start it with --ca-dir (a CA \
         from `meshd ca init`) or --cert-dir (certificates from SPIRE or cert-manager)"
    )]
    NoCertificates,
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error(transparent)]
    Datapath(#[from] ebpf::DatapathError),
    #[error(transparent)]
    Discovery(#[from] crate::discovery::DiscoveryError),
}

/// A running daemon.
pub struct App {
    pub admin: SocketAddr,
    pub outbound: Vec<SocketAddr>,
    settings: Settings,
    cgroups: NodeCgroups,
    datapath: Datapath,
    state: Arc<AdminState>,
    drain: drain::Drain,
    listeners: tokio::task::JoinSet<()>,
    _lock: File,
}

pub fn init_tracing() {
    crate::telemetry::logging::init();
}

pub fn run_daemon(settings: Settings) -> ExitCode {
    let rt = runtime(settings.worker_threads);
    rt.block_on(async move {
        let stop = drain::Termination::listen();
        match build(settings).await {
            Ok(app) => {
                app.wait_termination(stop).await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!("meshd could not start: {e}");
                eprintln!("meshd: {e}");
                match e {
                    StartupError::Config(_) | StartupError::MissingConfig(_) => {
                        ExitCode::from(crate::cli::EXIT_USAGE)
                    }
                    _ => ExitCode::FAILURE,
                }
            }
        }
    })
}

/// The runtime serving traffic: one thread with no work stealing, or a pool of `threads` (0: one
/// per CPU).
fn runtime(threads: usize) -> tokio::runtime::Runtime {
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if threads > 1 {
            b.worker_threads(threads);
        }
        b
    };
    builder.enable_all().build().expect("tokio runtime")
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartupError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| match source.kind() {
            ErrorKind::AddrInUse => StartupError::PortTaken { what, addr },
            _ => StartupError::Bind { what, addr, source },
        })
}

/// One meshd per attach cgroup: an exclusive flock on a file named after it.
fn lock(attach: &Path) -> Result<File, StartupError> {
    let dir = Path::new("/run/meshd");
    let path = dir.join(format!(
        "{}.lock",
        attach.display().to_string().replace('/', "_")
    ));
    let lock_err = |source| StartupError::Lock {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(lock_err)?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(lock_err)?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let holder = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .trim()
            .to_string();
        return Err(StartupError::AlreadyRunning {
            pid: holder,
            lock: path,
            cgroup: attach.to_path_buf(),
        });
    }
    use std::io::Write;
    file.set_len(0).map_err(lock_err)?;
    write!(file, "{}", std::process::id()).map_err(lock_err)?;
    Ok(file)
}

/// Raises the soft limit on open files to the hard one: every proxied connection takes two
/// descriptors, and the default soft limit (often 1024) is what one workload's allowance of
/// connections alone would reach.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct given, of the right type.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 || limit.rlim_cur >= limit.rlim_max
        {
            return;
        }
        let soft = limit.rlim_cur;
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
            tracing::info!(
                from = soft,
                to = limit.rlim_max,
                "raised the open-file limit"
            );
        }
    }
}

pub async fn build(settings: Settings) -> Result<App, StartupError> {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid != 0 {
        return Err(StartupError::NotRoot(uid));
    }
    for p in &settings.config_paths {
        if !p.exists() {
            return Err(StartupError::MissingConfig(p.clone()));
        }
    }
    raise_fd_limit();
    // An invalid configuration fails the start, with every finding, before touching anything.
    let metrics = Metrics::new(
        settings.istio_metrics,
        Some(settings.tcp_reporting_interval),
    );
    metrics.istio.set_trust_domain(&settings.trust_domain);
    crate::security::spiffe::set_local_trust_domain(&settings.trust_domain);
    let config = ConfigStore::initial(
        settings.config_paths.clone(),
        crate::config::Mesh {
            registry_only: settings.registry_only,
        },
        metrics.clone(),
    )?;
    let access = Arc::new(
        crate::telemetry::AccessLog::open(&settings.access_log, settings.access_log_sample)
            .map_err(|source| StartupError::AccessLog {
                path: settings.access_log.clone(),
                source,
            })?,
    );
    use crate::telemetry::trace::{Format, Tracer};
    let collectors: Vec<_> = [
        (settings.trace_zipkin.as_deref(), Format::Zipkin),
        (settings.trace_otlp.as_deref(), Format::Otlp),
    ]
    .into_iter()
    .filter_map(|(url, format)| Some((url?, format)))
    .collect();
    let tracer =
        Arc::new(Tracer::start(&collectors, settings.trace_sample).map_err(StartupError::Tracing)?);
    // Workload certificates for the tunnel; policies that need them fail the start without.
    let tunnel = crate::tunnel::Tunnel::from_settings(&settings)?;
    if tunnel.is_none() && config.current().compiled.endpoints.any_on_nodes() {
        return Err(StartupError::NoCertificates);
    }
    // Kubernetes discovery fails the start when the API cannot be located.
    let discovery = crate::discovery::connect(settings.discovery.as_ref()).await?;
    if let Some(t) = &tunnel {
        metrics.watch_certificates(t.manager.clone());
    }
    // One meshd per attach cgroup: a second one fails here, before touching anything.
    let mount = cgroup::cgroup2_mount()?;
    let attach = cgroup::attach_point(&mount, settings.cgroup.as_deref());
    let lock = lock(&attach)?;
    // meshd moves into its unmanaged cgroup *before* opening sockets: a socket belongs to the
    // cgroup of the process that created it, and accepted sockets inherit the listener's. The
    // datapath's sockops and getsockopt hooks only see sockets under the attach point.
    let cgroups = NodeCgroups::setup(Some(&attach))?;
    match start(&settings, &cgroups).await {
        Ok((datapath, listeners)) => {
            let shared = Shared {
                metrics,
                config,
                access,
                tracer,
                tunnel,
            };
            let app = serve(settings, cgroups, datapath, listeners, lock, shared);
            if let Some(d) = discovery {
                // This node's pods are enrolled as workloads, in their network namespaces.
                let sink = crate::discovery::enrol::Enrol {
                    pods: app.state.pods.clone(),
                };
                d.start(app.state.config.clone(), Arc::new(sink));
            }
            Ok(app)
        }
        Err(e) => {
            cgroups.teardown();
            Err(e)
        }
    }
}

/// What every part of the running daemon shares.
struct Shared {
    metrics: Arc<Metrics>,
    config: Arc<ConfigStore>,
    access: Arc<crate::telemetry::AccessLog>,
    tracer: Arc<crate::telemetry::trace::Tracer>,
    tunnel: Option<Arc<crate::tunnel::Tunnel>>,
}

struct Listeners {
    admin: TcpListener,
    outbound: Vec<TcpListener>,
    /// The tunnel listener, when meshd has workload certificates.
    inbound: Option<TcpListener>,
}

async fn start(
    settings: &Settings,
    cgroups: &NodeCgroups,
) -> Result<(Datapath, Listeners), StartupError> {
    let admin = bind("admin address", settings.admin).await?;
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, settings.outbound_port));
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, settings.outbound_port));
    let mut outbound = vec![bind("outbound listener", v4).await?];
    match bind("outbound listener", v6).await {
        Ok(l) => outbound.push(l),
        Err(StartupError::Bind { source, .. }) if source.kind() == ErrorKind::AddrNotAvailable => {
            tracing::warn!("IPv6 loopback is unavailable; IPv6 connects will not be captured")
        }
        Err(e) => return Err(e),
    }
    let inbound = if settings.ca_dir.is_some() || settings.cert_dir.is_some() {
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, settings.inbound_port));
        Some(bind("tunnel listener", addr).await?)
    } else {
        None
    };
    let daemon_id = cgroup::cgroup_id(&cgroups.daemon)?;
    let datapath = Datapath::start(settings, &cgroups.attach, daemon_id)?;
    Ok((
        datapath,
        Listeners {
            admin,
            outbound,
            inbound,
        },
    ))
}

fn serve(
    settings: Settings,
    cgroups: NodeCgroups,
    datapath: Datapath,
    listeners: Listeners,
    lock: File,
    shared: Shared,
) -> App {
    let Shared {
        metrics,
        config,
        access,
        tracer,
        tunnel,
    } = shared;
    let Listeners {
        admin: admin_listener,
        outbound: outbound_listeners,
        inbound: inbound_listener,
    } = listeners;
    let maps = datapath.maps.clone();
    ebpf::spawn_heartbeat(maps.clone(), settings.heartbeat_timeout);

    spawn_watcher(config.clone());
    crate::telemetry::access_log::reopen_on_sigusr1(access.clone());
    let workloads = Arc::new(Registry::new(
        &cgroups.attach,
        &cgroups.workloads,
        maps.clone(),
    ));
    spawn_kernel_policy(&settings, &maps, &config, &workloads);
    workloads.readopt();
    let connections = Connections::new(maps.clone());
    let admin = admin_listener.local_addr().expect("bound admin address");
    let outbound: Vec<SocketAddr> = outbound_listeners
        .iter()
        .map(|l| l.local_addr().expect("bound outbound address"))
        .collect();

    let (drain, watch) = drain::channel();
    let ctx = Arc::new(outbound::Outbound {
        maps: maps.clone(),
        workloads: workloads.clone(),
        connections: connections.clone(),
        metrics: metrics.clone(),
        detect_timeout: settings.protocol_detection_timeout,
        http: crate::proxy::http::HttpContext::new(
            &settings,
            tunnel.clone(),
            config.clone(),
            metrics.clone(),
            access,
            tracer,
            watch.clone(),
        ),
        own: outbound.iter().copied().chain([admin]).collect(),
        zero_copy: settings.zero_copy_relay(),
    });
    let mut listeners = tokio::task::JoinSet::new();
    for l in outbound_listeners {
        listeners.spawn(outbound::serve(
            l,
            ctx.clone(),
            watch.clone(),
            settings.drain_timeout,
        ));
    }
    if let (Some(l), Some(tunnel)) = (inbound_listener, &tunnel) {
        let inbound = Arc::new(crate::tunnel::Inbound {
            tunnel: tunnel.clone(),
            http: ctx.http.clone(),
            metrics: metrics.clone(),
            detect_timeout: settings.protocol_detection_timeout,
        });
        tracing::info!(addr = ?l.local_addr(), node = ?settings.node_address, "mTLS tunnel listener");
        listeners.spawn(crate::tunnel::serve_inbound(
            l,
            inbound,
            watch.clone(),
            settings.drain_timeout,
        ));
    }
    let pods = Arc::new(crate::pods::Pods::new(
        workloads.clone(),
        ctx.clone(),
        settings.outbound_port,
        watch.clone(),
        settings.drain_timeout,
        metrics.clone(),
    ));
    let state = Arc::new(AdminState {
        ready: false.into(),
        settings: settings.clone(),
        maps,
        workloads,
        pods,
        connections,
        metrics,
        started_unix_ms: crate::proxy::connections::unix_ms(),
        attach_cgroup: cgroups.attach.display().to_string(),
        config,
        http: ctx.http.clone(),
    });
    tokio::spawn(admin::serve(admin_listener, state.clone()));
    crate::memory::spawn_release();
    state.ready.store(true, Ordering::Relaxed);
    tracing::info!(
        %admin,
        outbound = ?outbound,
        cgroup = %cgroups.attach.display(),
        sockmap = settings.sockmap,
        splice = settings.kernel_splice(),
        zero_copy = settings.zero_copy_relay(),
        fail_mode = ?settings.fail_mode,
        heartbeat_timeout = ?settings.heartbeat_timeout,
        exclude_ports = ?settings.exclude_ports,
        "meshd ready"
    );
    App {
        admin,
        outbound,
        settings,
        cgroups,
        datapath,
        state,
        drain,
        listeners,
        _lock: lock,
    }
}

/// PeerAuthentication STRICT ports and connect-time DENY pairs in the eBPF maps: written for
/// each workload as it is enrolled, and for all after every applied configuration.
fn spawn_kernel_policy(
    settings: &Settings,
    maps: &Arc<ebpf::DatapathMaps>,
    config: &Arc<ConfigStore>,
    workloads: &Arc<Registry>,
) {
    use crate::security::kernel::{KernelPolicy, NodeView};
    let node = NodeView {
        trust_domain: settings.trust_domain.clone(),
        node: settings.node_address,
        inbound_port: settings.inbound_port,
    };
    let kernel = Arc::new(KernelPolicy::new(maps.policy(), config.clone(), node));
    let k = kernel.clone();
    maps.on_enrol(Box::new(move |w| k.enrolled(w)));
    crate::security::kernel::spawn(kernel, workloads.clone());
}

impl App {
    /// Waits for SIGTERM/SIGINT, then drains (up to the drain deadline), detaches the eBPF
    /// programs and removes the cgroups meshd created.
    pub async fn wait_termination(self, mut stop: drain::Termination) {
        stop.received().await;
        self.shutdown().await;
    }

    pub async fn shutdown(mut self) {
        self.state.ready.store(false, Ordering::Relaxed);
        self.drain.start();
        while self.listeners.join_next().await.is_some() {}
        self.state.pods.drained().await;
        // Access-log lines wait up to 100 ms for the writer: write the last ones now.
        self.state.http.access.flush();
        tracing::info!(deadline = ?self.settings.drain_timeout, "drained; detaching eBPF programs");
        drop(self.datapath);
        self.cgroups.teardown();
        tracing::info!("meshd stopped");
    }
}

#[cfg(test)]
mod tests {
    use tokio::runtime::RuntimeFlavor;

    use super::runtime;

    #[test]
    fn one_worker_thread_is_a_current_thread_runtime() {
        let rt = runtime(1);
        assert_eq!(rt.handle().runtime_flavor(), RuntimeFlavor::CurrentThread);
        assert_eq!(
            rt.block_on(async { tokio::spawn(async { 7 }).await.unwrap() }),
            7
        );
    }

    #[test]
    fn more_threads_are_a_pool_of_that_size() {
        let rt = runtime(3);
        assert_eq!(rt.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        assert_eq!(rt.metrics().num_workers(), 3);
        let per_cpu = runtime(0);
        assert_eq!(
            per_cpu.metrics().num_workers(),
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
    }
}
