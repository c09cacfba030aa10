//! The external programs of `bench http` (nginx, HAProxy, wrk, h2load): their configuration
//! files, process-group guards with bounded waits, and parsers for their outputs.

use std::{
    fs::File,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::util::show;

/// A long-running program in its own process group (a server and its workers); the whole group
/// gets SIGTERM, then SIGKILL, when dropped.
pub struct Group {
    name: String,
    child: Option<Child>,
}

impl Group {
    /// CPU ticks of every live process in the group: nginx's master and worker, HAProxy's one
    /// process.
    pub fn cpu_ticks(&self) -> Result<CpuTicks> {
        let pgid = self.child.as_ref().context("not running")?.id();
        let mut total = CpuTicks::default();
        for entry in std::fs::read_dir("/proc").context("reading /proc")? {
            let Some(pid) = entry?
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // After the command name: state, ppid, pgrp.
            let pgrp = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(2))
                .and_then(|g| g.parse::<u32>().ok());
            if pgrp == Some(pgid) {
                total = total + cpu_ticks(pid).unwrap_or_default();
            }
        }
        Ok(total)
    }

    /// Starts `cmd` (output to `log`) and waits (at most 10 s) until 127.0.0.1:PORT accepts.
    pub fn start(name: &str, mut cmd: Command, log: &Path, ports: &[u16]) -> Result<Group> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        eprintln!("    $ {} &> {}", show(&cmd), log.display());
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", show(&cmd)))?;
        let mut group = Group {
            name: name.to_string(),
            child: Some(child),
        };
        let until = Instant::now() + Duration::from_secs(10);
        for &port in ports {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            loop {
                if let Some(status) = group.child.as_mut().expect("running").try_wait()? {
                    group.child = None;
                    bail!(
                        "{name} exited ({status}) before listening; see {}",
                        log.display()
                    );
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    break;
                }
                if Instant::now() >= until {
                    bail!(
                        "{name} did not listen on {addr} within 10 s; see {}",
                        log.display()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(group)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pgid = child.id() as i32;
        // SAFETY: signalling the process group we created for our own, unreaped child.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if matches!(child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Whatever is left of the group (workers, or a master that ignored SIGTERM).
        // SAFETY: as above; ESRCH when the group is already gone is harmless.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = child.wait();
        eprintln!("    stopped {}", self.name);
    }
}

/// nginx's temp-path directives, all under `dir`.
fn temp_paths(dir: &Path) -> String {
    ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
        .iter()
        .map(|t| format!("    {t}_temp_path {}/{t};\n", dir.display()))
        .collect()
}

fn nginx_common(dir: &Path, name: &str) -> String {
    format!(
        "worker_processes 1;\n\
         pid {dir}/{name}.pid;\n\
         error_log {dir}/{name}-error.log warn;\n\
         events {{ worker_connections 4096; }}\n",
        dir = dir.display()
    )
}

/// The backend: `ok\n` on HTTP/1.1 (`h1_port`) and h2c with prior knowledge (`h2_port`).
pub fn nginx_backend(dir: &Path, h1_port: u16, h2_port: u16) -> String {
    format!(
        "{common}http {{\n\
         {temps}    access_log off;\n\
         \x20   keepalive_requests 10000000;\n\
         \x20   keepalive_timeout 300s;\n\
         \x20   server {{ listen 127.0.0.1:{h1_port}; location / {{ return 200 \"ok\\n\"; }} }}\n\
         \x20   server {{ listen 127.0.0.1:{h2_port} http2; location / {{ return 200 \"ok\\n\"; }} }}\n\
         }}\n",
        common = nginx_common(dir, "backend"),
        temps = temp_paths(&dir.join("tmp-backend")),
    )
}

/// The nginx proxy: HTTP/1.1 on `h1_port` and h2c on `h2_port`, both to the backend over
/// HTTP/1.1 with upstream keep-alive.
pub fn nginx_proxy(dir: &Path, h1_port: u16, h2_port: u16, backend: u16) -> String {
    let location = "location / { proxy_pass http://backend; proxy_http_version 1.1; \
                    proxy_set_header Connection \"\"; }";
    format!(
        "{common}http {{\n\
         {temps}    access_log off;\n\
         \x20   keepalive_requests 10000000;\n\
         \x20   keepalive_timeout 300s;\n\
         \x20   upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; keepalive_requests 10000000; }}\n\
         \x20   server {{ listen 127.0.0.1:{h1_port}; {location} }}\n\
         \x20   server {{ listen 127.0.0.1:{h2_port} http2; {location} }}\n\
         }}\n",
        common = nginx_common(dir, "proxy"),
        temps = temp_paths(&dir.join("tmp-proxy")),
    )
}

/// HAProxy, one thread, HTTP mode, keep-alive on both sides.
pub fn haproxy(port: u16, backend: u16) -> String {
    format!(
        "global\n\
         \x20   nbthread 1\n\
         \x20   maxconn 4096\n\
         defaults\n\
         \x20   mode http\n\
         \x20   option http-keep-alive\n\
         \x20   timeout connect 5s\n\
         \x20   timeout client 300s\n\
         \x20   timeout server 300s\n\
         frontend bench\n\
         \x20   bind 127.0.0.1:{port}\n\
         \x20   default_backend backend\n\
         backend backend\n\
         \x20   http-reuse always\n\
         \x20   server nginx 127.0.0.1:{backend}\n"
    )
}

/// What wrk reported.
#[derive(Clone, Copy, Debug, Default)]
pub struct Wrk {
    pub requests: u64,
    pub rps: f64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    /// Non-2xx/3xx responses plus socket errors.
    pub errors: u64,
}

pub fn parse_wrk(text: &str) -> Result<Wrk> {
    let mut w = Wrk::default();
    let mut have_rps = false;
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => {
                w.rps = v.parse().context("wrk's Requests/sec")?;
                have_rps = true;
            }
            [n, "requests", "in", ..] => w.requests = n.parse().context("wrk's request count")?,
            ["50%", v] => w.p50_ns = duration_ns(v)?,
            ["99%", v] => w.p99_ns = duration_ns(v)?,
            ["Non-2xx", "or", "3xx", "responses:", n] => w.errors += n.parse::<u64>()?,
            ["Socket", "errors:", rest @ ..] => {
                w.errors += rest
                    .iter()
                    .filter_map(|t| t.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    if !have_rps {
        bail!("no Requests/sec in wrk's output: {text}");
    }
    Ok(w)
}

/// wrk's `123.45us` / `1.20ms` / `1.00s` in nanoseconds.
fn duration_ns(v: &str) -> Result<u64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e6)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e9)
    } else {
        bail!("unknown duration {v:?}");
    };
    let x: f64 = num.parse().with_context(|| format!("duration {v:?}"))?;
    Ok((x * scale) as u64)
}

/// What h2load reported.
#[derive(Clone, Copy, Debug, Default)]
pub struct H2load {
    pub rps: f64,
    pub succeeded: u64,
    pub failed: u64,
}

pub fn parse_h2load(text: &str) -> Result<H2load> {
    let mut h = H2load::default();
    let mut have_rps = false;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in ") {
            // finished in 10.00s, 12345.67 req/s, 1.23MB/s
            let rps = rest
                .split(", ")
                .find_map(|p| p.strip_suffix(" req/s"))
                .with_context(|| format!("no req/s in {line:?}"))?;
            h.rps = rps.parse().context("h2load's req/s")?;
            have_rps = true;
        } else if let Some(rest) = line.strip_prefix("requests: ") {
            // N total, N started, N done, N succeeded, N failed, N errored, N timeout
            for part in rest.split(", ") {
                let mut it = part.split_whitespace();
                let (Some(n), Some(what)) = (it.next(), it.next()) else {
                    continue;
                };
                let n: u64 = n.parse().unwrap_or(0);
                match what {
                    "succeeded" => h.succeeded = n,
                    "failed" | "errored" | "timeout" => h.failed += n,
                    _ => {}
                }
            }
        }
    }
    if !have_rps {
        bail!("no req/s in h2load's output: {text}");
    }
    Ok(h)
}

/// CPU time in clock ticks, in user space and in the kernel (system calls, and the TCP work
/// they do).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTicks {
    pub user: u64,
    pub system: u64,
}

impl CpuTicks {
    pub fn total(self) -> u64 {
        self.user + self.system
    }

    /// (total, user) CPU µs per request, over `requests` requests.
    pub fn per_request_us(self, requests: u64) -> (f64, f64) {
        let us = |t: u64| t as f64 * 1e6 / clock_ticks() as f64 / requests.max(1) as f64;
        (us(self.total()), us(self.user))
    }
}

impl std::ops::Add for CpuTicks {
    type Output = CpuTicks;
    fn add(self, o: CpuTicks) -> CpuTicks {
        CpuTicks {
            user: self.user + o.user,
            system: self.system + o.system,
        }
    }
}

impl std::ops::Sub for CpuTicks {
    type Output = CpuTicks;
    fn sub(self, o: CpuTicks) -> CpuTicks {
        CpuTicks {
            user: self.user.saturating_sub(o.user),
            system: self.system.saturating_sub(o.system),
        }
    }
}

/// utime and stime of PID (all its threads).
pub fn cpu_ticks(pid: u32) -> Result<CpuTicks> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may contain spaces: the fields after it start after the last ')'.
    let rest = stat.rsplit_once(')').context("bad /proc/PID/stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at indices 11 and 12.
    let utime: u64 = f.get(11).context("no utime")?.parse()?;
    let stime: u64 = f.get(12).context("no stime")?.parse()?;
    Ok(CpuTicks {
        user: utime,
        system: stime,
    })
}

/// VmRSS of PID in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmRSS")?
        .parse()?;
    Ok(kb * 1024)
}

pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_split_into_user_and_kernel_per_request() {
        let hz = clock_ticks();
        let before = CpuTicks { user: 5, system: 7 };
        let after = CpuTicks {
            user: 5 + 3 * hz,
            system: 7 + hz,
        };
        // 4 s of CPU, 3 of them in user space, over a million requests.
        let (total, user) = (after - before).per_request_us(1_000_000);
        assert!((total - 4.0).abs() < 1e-9, "{total}");
        assert!((user - 3.0).abs() < 1e-9, "{user}");
        // A counter read that went backwards (a process that exited) counts as nothing.
        assert_eq!(before - after, CpuTicks::default());
        assert_eq!((before + before).total(), 24);
    }
}
