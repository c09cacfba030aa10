//! A meshd daemon for one benchmark case: its own ports and attach cgroup, started (optionally
//! pinned to a CPU), awaited on /ready, read from /metrics and stopped with SIGTERM, also on drop.

use std::{
    fs::File,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::procs::command;
use crate::util::show;

pub const ADMIN_PORT: u16 = 25000;
pub const OUTBOUND_PORT: u16 = 25001;
pub const INBOUND_PORT: u16 = 25008;

/// The attach cgroup's name under the cgroup2 mount: the benchmark's own, never a real node's.
const CGROUP: &str = "meshd-bench";

/// The workload identity the benchmark's managed clients run as.
const WORKLOAD: &str = "bench/client";

/// The kernel datapath's redirect and sk_msg counters (`meshd_ebpf_events_total`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    /// Connects the connect4/6 hook sent to meshd's outbound listener.
    pub redirect: u64,
    pub sockmap_redirect: u64,
    pub sockmap_miss: u64,
}

pub struct Meshd {
    binary: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl Meshd {
    /// Starts `meshd run` and waits (at most 15 s) for /ready to answer 200.
    pub fn start(binary: &Path, sockmap: bool, cpu: Option<u32>, log: &Path) -> Result<Meshd> {
        for port in [ADMIN_PORT, OUTBOUND_PORT, INBOUND_PORT] {
            ensure_free(port)?;
        }
        let config = log.with_file_name("policies");
        std::fs::create_dir_all(&config)
            .with_context(|| format!("creating {}", config.display()))?;
        let cgroup = cgroup2_mount()?.join(CGROUP);
        let args: Vec<String> = [
            "run",
            "--config",
            &config.display().to_string(),
            "--admin",
            &admin().to_string(),
            "--outbound-port",
            &OUTBOUND_PORT.to_string(),
            "--inbound-port",
            &INBOUND_PORT.to_string(),
            "--cgroup",
            &cgroup.display().to_string(),
            "--sockmap",
            if sockmap { "on" } else { "off" },
        ]
        .map(String::from)
        .to_vec();
        let mut cmd = command(&binary.display().to_string(), &args, cpu);
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        eprintln!("    $ {} &> {}", show(&cmd), log.display());
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", show(&cmd)))?;
        let mut meshd = Meshd {
            binary: binary.to_path_buf(),
            child: Some(child),
            log: log.to_path_buf(),
        };
        meshd.wait_ready()?;
        Ok(meshd)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until {
            if let Some(status) = self.child.as_mut().expect("running").try_wait()? {
                self.child = None;
                bail!(
                    "meshd exited ({status}) before it was ready; see {}",
                    self.log.display()
                );
            }
            if matches!(http_get("/ready"), Ok((200, _))) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "meshd was not ready within 15 s; see {}",
            self.log.display()
        )
    }

    /// `meshd exec --admin .. --workload bench/client -- ARGV...` as an argument list.
    pub fn exec(&self, argv: &[String]) -> Vec<String> {
        let mut v: Vec<String> = [
            &self.binary.display().to_string(),
            "exec",
            "--admin",
            &admin().to_string(),
            "--workload",
            WORKLOAD,
            "--",
        ]
        .map(String::from)
        .to_vec();
        v.extend_from_slice(argv);
        v
    }

    pub fn counters(&self) -> Result<Counters> {
        let (status, body) = http_get("/metrics")?;
        if status != 200 {
            bail!("GET /metrics answered {status}");
        }
        Ok(Counters {
            redirect: event(&body, "redirect"),
            sockmap_redirect: event(&body, "sockmap_redirect"),
            sockmap_miss: event(&body, "sockmap_miss"),
        })
    }

    /// SIGTERM, then up to 15 s for meshd to drain and exit (SIGKILL after that).
    pub fn stop(mut self) -> Result<()> {
        self.terminate()
    }

    fn terminate(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!(
                        "meshd exited with {status} after SIGTERM; see {}",
                        self.log.display()
                    );
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!(
            "meshd did not exit within 15 s of SIGTERM; killed it; see {}",
            self.log.display()
        )
    }
}

impl Drop for Meshd {
    fn drop(&mut self) {
        if let Err(e) = self.terminate() {
            eprintln!("    warning: {e:#}");
        }
    }
}

fn admin() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, ADMIN_PORT))
}

/// Fails if something already listens on 127.0.0.1:PORT.
pub fn ensure_free(port: u16) -> Result<()> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .map(drop)
        .with_context(|| format!("127.0.0.1:{port} is taken; the benchmark needs it free"))
}

/// The first cgroup2 mount point in /proc/self/mountinfo.
fn cgroup2_mount() -> Result<PathBuf> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    text.lines()
        .find_map(|line| {
            // id parent maj:min root mountpoint options [optional...] - fstype source superopts
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let mountpoint = left.split_whitespace().nth(4)?;
            (fstype == "cgroup2").then(|| PathBuf::from(mountpoint.replace("\\040", " ")))
        })
        .context("no cgroup2 filesystem is mounted")
}

/// GET PATH from the admin API over HTTP/1.0: (status, body).
fn http_get(path: &str) -> Result<(u16, String)> {
    let addr = admin();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.take(16 << 20).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("no end of headers")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad status line in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// The value of `meshd_ebpf_events_total{event="NAME"}` (0 if absent).
fn event(metrics: &str, name: &str) -> u64 {
    let prefix = format!("meshd_ebpf_events_total{{event=\"{name}\"}}");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}
