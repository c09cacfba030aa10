//! A meshd daemon started by a task (demo or benchmark): its ports and attach cgroup, started
//! (optionally pinned to a CPU), awaited on /ready, read from /metrics and stopped with SIGTERM,
//! also on drop.

use std::{
    fs::File,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::util::show;

/// Where a task's meshd listens and which attach cgroup (under the cgroup2 mount) it owns.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub admin_port: u16,
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub cgroup: &'static str,
}

/// The kernel datapath's redirect and sk_msg counters (`meshd_ebpf_events_total`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    /// Connects the connect4/6 hook sent to meshd's outbound listener.
    pub redirect: u64,
    pub sockmap_redirect: u64,
    pub sockmap_miss: u64,
    /// sk_msg sends of a workload spliced straight out of meshd's upstream socket.
    pub splice: u64,
    /// Replies the upstream socket's verdict spliced straight back to the workload.
    pub reply_splice: u64,
}

pub struct Meshd {
    pub layout: Layout,
    binary: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl Meshd {
    /// Starts `meshd run ... EXTRA` (under `cmd`'s wrapper, e.g. taskset) and waits (at most
    /// 15 s) for /ready to answer 200.
    pub fn start(
        binary: &Path,
        layout: Layout,
        config: &Path,
        extra: &[&str],
        wrap: impl FnOnce(&str, &[String]) -> std::process::Command,
        log: &Path,
    ) -> Result<Meshd> {
        for port in [layout.admin_port, layout.outbound_port, layout.inbound_port] {
            ensure_free(port)?;
        }
        let cgroup = cgroup2_mount()?.join(layout.cgroup);
        let mut args: Vec<String> = [
            "run",
            "--config",
            &config.display().to_string(),
            "--admin",
            &admin(layout).to_string(),
            "--outbound-port",
            &layout.outbound_port.to_string(),
            "--inbound-port",
            &layout.inbound_port.to_string(),
            "--cgroup",
            &cgroup.display().to_string(),
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut cmd = wrap(&binary.display().to_string(), &args);
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        eprintln!("    $ {} &> {}", show(&cmd), log.display());
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", show(&cmd)))?;
        let mut meshd = Meshd {
            layout,
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
            if matches!(self.get("/ready"), Ok((200, _))) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "meshd was not ready within 15 s; see {}",
            self.log.display()
        )
    }

    /// `meshd exec --admin .. --workload WORKLOAD -- ARGV...` as an argument list.
    pub fn exec(&self, workload: &str, argv: &[String]) -> Vec<String> {
        let mut v: Vec<String> = [
            &self.binary.display().to_string(),
            "exec",
            "--admin",
            &admin(self.layout).to_string(),
            "--workload",
            workload,
            "--",
        ]
        .map(String::from)
        .to_vec();
        v.extend_from_slice(argv);
        v
    }

    /// `meshd exec ... --netns NETNS -- ARGV...`: ARGV runs as a pod in that namespace.
    pub fn exec_in(&self, workload: &str, netns: &Path, argv: &[String]) -> Vec<String> {
        let mut v = self.exec(workload, &[]);
        v.pop();
        v.extend([
            "--netns".to_string(),
            netns.display().to_string(),
            "--".into(),
        ]);
        v.extend_from_slice(argv);
        v
    }

    /// Resident memory of the daemon in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let pid = self.child.as_ref().context("meshd is not running")?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("no VmRSS in /proc/PID/status")
    }

    pub fn counters(&self) -> Result<Counters> {
        let (status, body) = self.get("/metrics")?;
        if status != 200 {
            bail!("GET /metrics answered {status}");
        }
        Ok(Counters {
            redirect: event(&body, "redirect"),
            sockmap_redirect: event(&body, "sockmap_redirect"),
            sockmap_miss: event(&body, "sockmap_miss"),
            splice: event(&body, "sockmap_splice"),
            reply_splice: event(&body, "sockmap_reply_splice"),
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

pub fn admin(layout: Layout) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, layout.admin_port))
}

/// Fails if something already listens on 127.0.0.1:PORT.
pub fn ensure_free(port: u16) -> Result<()> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .map(drop)
        .with_context(|| format!("127.0.0.1:{port} is taken; the benchmark needs it free"))
}

/// The first cgroup2 mount point in /proc/self/mountinfo.
pub fn cgroup2_mount() -> Result<PathBuf> {
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

impl Meshd {
    /// GET PATH from the admin API.
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        http_get(admin(self.layout), path)
    }
}

/// GET PATH over HTTP/1.0: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    http_request(addr, "GET", path, "")
}

/// METHOD PATH with BODY over HTTP/1.0: (status, body).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
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
