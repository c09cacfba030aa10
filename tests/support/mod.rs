//! Shared harness for meshd's end-to-end tests: a real `meshd run` in its own attach cgroup,
//! real clients started with `meshd exec`, and small in-process backends.
#![allow(dead_code)]

pub mod backend;
pub mod cpus;
pub mod dns;
pub mod haproxy;
pub mod http_backend;
pub mod mesh;
pub mod netns;
pub mod nginx;
pub mod prometheus;
pub mod raw_upstream;
pub mod redis;
pub mod tinyproxy;
pub mod tls;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

pub const MESHD: &str = env!("CARGO_BIN_EXE_meshd");
pub const CLIENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/clients/tcp_client.py"
);

/// True when this test can use real eBPF and cgroups. Without them the test is skipped, unless
/// MESHD_REQUIRE_EBPF=1 (as in CI), where it fails instead: a skipped test appears to pass.
pub fn ebpf_available(test: &str) -> bool {
    let root = unsafe { libc::geteuid() } == 0;
    let cgroup2 = cgroup2_mount().is_some();
    if root && cgroup2 {
        return true;
    }
    let why = format!("root={root} cgroup2={cgroup2}");
    if std::env::var("MESHD_REQUIRE_EBPF").as_deref() == Ok("1") {
        panic!("{test}: needs root and cgroup2 ({why}) and MESHD_REQUIRE_EBPF=1 forbids skipping");
    }
    eprintln!("skipping {test}: needs root and cgroup2 ({why})");
    false
}

pub fn cgroup2_mount() -> Option<PathBuf> {
    meshd::cgroup::cgroup2_mount().ok()
}

/// A running `meshd run`, stopped (SIGTERM, then SIGKILL) and cleaned up on drop.
pub struct Daemon {
    pub name: String,
    pub admin: SocketAddr,
    pub outbound_port: u16,
    pub cgroup: PathBuf,
    pub log: PathBuf,
    /// Whether dropping this daemon removes its cgroup (false for a daemon expected to fail
    /// because another one owns the cgroup).
    pub owns_cgroup: bool,
    /// The LAN node this daemon runs in; None for the host's own namespace.
    pub node: Option<netns::Node>,
    child: Option<Child>,
}

/// Ports for test slot `slot`: admin, outbound, inbound. Every test uses its own slot.
pub fn ports(slot: u16) -> (u16, u16, u16) {
    let base = 21_000 + slot * 10;
    (base, base + 1, base + 2)
}

impl Daemon {
    pub fn start(name: &str, slot: u16, extra: &[&str]) -> Daemon {
        let d = Daemon::spawn(name, slot, extra);
        d.wait_ready();
        d
    }

    /// Starts meshd inside LAN node `node` and waits until it is ready. Its admin API, `exec`
    /// and `get` work inside the node's namespace.
    pub fn start_on(node: &netns::Node, name: &str, slot: u16, extra: &[&str]) -> Daemon {
        let d = Daemon::spawn_in(Some(node), name, slot, extra);
        d.wait_ready();
        d
    }

    /// Starts meshd with `hosts` as its /etc/hosts, bind-mounted in a mount namespace of its
    /// own: names resolve to the loopback addresses it lists, and no DNS query leaves the
    /// machine.
    pub fn start_with_hosts(name: &str, slot: u16, extra: &[&str], hosts: &str) -> Daemon {
        Daemon::start_with_etc(name, slot, extra, &[("hosts", hosts)])
    }

    /// Starts meshd with `hosts` as its /etc/hosts and the DNS server at `nameserver` as its
    /// only resolver (one try of one second), as `start_with_hosts` does: names the hosts file
    /// does not list are asked of that server.
    pub fn start_with_resolver(
        name: &str,
        slot: u16,
        extra: &[&str],
        hosts: &str,
        nameserver: &str,
    ) -> Daemon {
        let resolv = format!("nameserver {nameserver}\noptions timeout:1 attempts:1\n");
        let files = [
            ("hosts", hosts),
            ("resolv.conf", resolv.as_str()),
            ("nsswitch.conf", "hosts: files dns\n"),
        ];
        Daemon::start_with_etc(name, slot, extra, &files)
    }

    /// Starts meshd with each (name, text) as its /etc/NAME, bind-mounted in a mount namespace
    /// of its own.
    fn start_with_etc(name: &str, slot: u16, extra: &[&str], etc: &[(&str, &str)]) -> Daemon {
        let files: Vec<(PathBuf, std::ffi::CString)> = (etc.iter())
            .map(|(file, text)| {
                let source = std::env::temp_dir().join(format!("meshd-test-{name}-{file}"));
                std::fs::write(&source, text).expect("an /etc file");
                let target = std::ffi::CString::new(format!("/etc/{file}")).unwrap();
                (source, target)
            })
            .collect();
        let d = Daemon::spawn_with(None, name, slot, extra, &files);
        d.wait_ready();
        d
    }

    /// Starts meshd without waiting for it to become ready.
    pub fn spawn(name: &str, slot: u16, extra: &[&str]) -> Daemon {
        Daemon::spawn_in(None, name, slot, extra)
    }

    fn spawn_in(node: Option<&netns::Node>, name: &str, slot: u16, extra: &[&str]) -> Daemon {
        Daemon::spawn_with(node, name, slot, extra, &[])
    }

    fn spawn_with(
        node: Option<&netns::Node>,
        name: &str,
        slot: u16,
        extra: &[&str],
        etc: &[(PathBuf, std::ffi::CString)],
    ) -> Daemon {
        let (admin, outbound, inbound) = ports(slot);
        let cgroup = cgroup2_mount()
            .expect("cgroup2")
            .join(format!("meshd-test-{name}"));
        let log = std::env::temp_dir().join(format!("meshd-test-{name}.log"));
        let log_file = std::fs::File::create(&log).expect("log file");
        // Each daemon reads its own (empty) policy directory unless the test passes --config.
        let own_config = std::env::temp_dir().join(format!("meshd-test-{name}-policies"));
        let _ = std::fs::create_dir_all(&own_config);
        let mut cmd = meshd_command(node);
        if !etc.is_empty() {
            with_files(&mut cmd, etc);
        }
        cmd.arg("run");
        if !extra.contains(&"--config") {
            cmd.arg("--config").arg(&own_config);
        }
        let child = cmd
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .args([
                "--outbound-port",
                &outbound.to_string(),
                "--inbound-port",
                &inbound.to_string(),
            ])
            .arg("--cgroup")
            .arg(&cgroup)
            .args(extra)
            // Debug logs help a failing test; benchmarks ask for the default level instead.
            .env(
                "MESHD_LOG",
                std::env::var("MESHD_TEST_LOG").unwrap_or_else(|_| "debug".into()),
            )
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("spawn meshd");
        Daemon {
            name: name.into(),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
            outbound_port: outbound,
            cgroup,
            log,
            owns_cgroup: true,
            node: node.cloned(),
            child: Some(child),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok((200, _)) = self.admin_get("/ready") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "meshd {} never became ready; log:\n{}",
            self.name,
            self.log_text()
        );
    }

    /// Whether the log contains `needle` within 3 s (access-log lines are written in batches).
    pub fn log_shows(&self, needle: &str) -> bool {
        eventually(Duration::from_secs(3), || {
            self.log_text().contains(needle).then_some(())
        })
        .is_some()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET on the admin API, from the daemon's namespace.
    pub fn admin_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        self.admin_request("GET", path, "")
    }

    /// Any request on the admin API, from the daemon's namespace.
    pub fn admin_request(
        &self,
        method: &str,
        path: &str,
        body: &str,
    ) -> std::io::Result<(u16, String)> {
        match &self.node {
            Some(node) => node.run(|| http_request(self.admin, method, path, body)),
            None => http_request(self.admin, method, path, body),
        }
    }

    /// `meshd exec --workload WORKLOAD -- ARGS`, ready to run (in the daemon's namespace).
    pub fn exec(&self, workload: &str, args: &[&str]) -> Command {
        let mut c = meshd_command(self.node.as_ref());
        c.args([
            "exec",
            "--admin",
            &self.admin.to_string(),
            "--workload",
            workload,
            "--",
        ])
        .args(args);
        c
    }

    /// A meshd on `node` with its tunnel: the policies in `config`, workload certificates from
    /// the CA in `ca`, the node's address, and `more`.
    pub fn start_mesh_node(
        node: &netns::Node,
        name: &str,
        slot: u16,
        config: &Path,
        ca: &Path,
        more: &[&str],
    ) -> Daemon {
        let (config, ca) = (config.display().to_string(), ca.display().to_string());
        let addr = node.addr.to_string();
        let mut args = vec![
            "--config",
            &config,
            "--ca-dir",
            &ca,
            "--node-address",
            &addr,
        ];
        args.extend_from_slice(more);
        Daemon::start_on(node, name, slot, &args)
    }

    /// `meshd exec --workload WORKLOAD --netns NETNS -- ARGS`: ARGS runs as a pod, in its own
    /// network namespace, where meshd listens for its redirected connects.
    pub fn exec_in(&self, workload: &str, netns: &Path, args: &[&str]) -> Command {
        let mut c = meshd_command(self.node.as_ref());
        c.args([
            "exec",
            "--admin",
            &self.admin.to_string(),
            "--workload",
            workload,
        ])
        .arg("--netns")
        .arg(netns)
        .arg("--")
        .args(args);
        c
    }

    /// Runs the Python test client as a managed workload.
    pub fn client(&self, workload: &str, args: &[&str]) -> Output {
        let mut full = vec!["python3", CLIENT];
        full.extend_from_slice(args);
        self.exec(workload, &full).output().expect("run meshd exec")
    }

    /// Runs the test client's echo of `bytes` to `addr` as `workload`, checks that it succeeded
    /// and returns its JSON report.
    pub fn echo(
        &self,
        workload: &str,
        addr: std::net::SocketAddr,
        bytes: u64,
    ) -> serde_json::Value {
        let (addr, n) = (addr.to_string(), bytes.to_string());
        let out = self.client(workload, &["echo", "--addr", &addr, "--bytes", &n]);
        client_ok(
            &out,
            &format!("echo of {bytes} bytes to {addr} as {workload}"),
        )
    }

    pub fn get(&self, path: &str) -> String {
        let (status, body) = self
            .admin_get(path)
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// Value of one Prometheus series, e.g. `meshd_ebpf_events_total{event="redirect"}`; 0 if absent.
    pub fn metric(&self, series: &str) -> f64 {
        parse_metric(&self.get("/metrics"), series)
    }

    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        wait_exit(&mut child, Duration::from_secs(20)).unwrap_or_else(|| {
            let _ = child.kill();
            panic!(
                "meshd did not exit after SIGTERM; log:\n{}",
                self.log_text()
            )
        })
    }

    /// Waits for a daemon that is expected to exit on its own (a failed start).
    pub fn wait_failed(&mut self, within: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        wait_exit(&mut child, within).unwrap_or_else(|| {
            let _ = child.kill();
            panic!(
                "meshd {} kept running; log:\n{}",
                self.name,
                self.log_text()
            )
        })
    }

    /// SIGKILL, as if the daemon crashed.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            if wait_exit(&mut child, Duration::from_secs(10)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if self.owns_cgroup {
            remove_cgroup_tree(&self.cgroup);
        }
    }
}

/// Makes `cmd` run with each (source, target) of `files` bind-mounted over its target, in a mount
/// namespace of its own (mounts private, so nothing leaks back to the host's namespace).
fn with_files(cmd: &mut Command, files: &[(PathBuf, std::ffi::CString)]) {
    use std::os::unix::{ffi::OsStrExt, process::CommandExt};
    let binds: Vec<(std::ffi::CString, std::ffi::CString)> = (files.iter())
        .map(|(source, target)| {
            let source = std::ffi::CString::new(source.as_os_str().as_bytes()).expect("a path");
            (source, target.clone())
        })
        .collect();
    let check = |rc: libc::c_int| match rc {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    };
    // SAFETY: the closure makes system calls on memory allocated before fork.
    unsafe {
        cmd.pre_exec(move || {
            let none = std::ptr::null();
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            for (source, target) in &binds {
                check(libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    none,
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
            }
            Ok(())
        });
    }
}

/// The meshd binary as a command, inside `node` when there is one.
fn meshd_command(node: Option<&netns::Node>) -> Command {
    match node {
        Some(node) => node.command(MESHD),
        None => Command::new(MESHD),
    }
}

pub fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Removes a cgroup and everything under it, moving stray processes to the root first.
pub fn remove_cgroup_tree(dir: &Path) {
    if !dir.exists() {
        return;
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let root = cgroup2_mount().expect("cgroup2");
    for pid in pids_in(dir) {
        let _ = std::fs::write(root.join("cgroup.procs"), pid);
    }
    let _ = std::fs::remove_dir(dir);
}

/// The pids in a cgroup.
pub fn pids_in(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

/// A fresh CA directory made by `meshd ca init`.
pub fn ca_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("meshd-test-{name}-ca"));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(MESHD)
        .args(["ca", "init", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// A minimal HTTP/1.0 GET, enough for the admin API.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path, "")
}

/// A minimal HTTP/1.0 request with a body, enough for the admin API.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

pub fn parse_metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Whether a `/metrics` body has a `name` series whose labels include each of `labels` (each
/// `key="value"`) and, when `value` is given, with that value.
pub fn has_series(text: &str, name: &str, labels: &[&str], value: Option<&str>) -> bool {
    let open = format!("{name}{{");
    text.lines().any(|l| {
        l.starts_with(&open)
            && labels.iter().all(|label| l.contains(label))
            && value.is_none_or(|v| l.rsplit_once(' ').is_some_and(|(_, got)| got == v))
    })
}

/// Parses the client's JSON line and asserts the process succeeded.
pub fn client_ok(out: &Output, what: &str) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("{what}: client printed no JSON ({e}); stdout={stdout} stderr={stderr}")
    });
    assert!(
        out.status.success() && v["ok"] == true,
        "{what}: {v} stderr={stderr}"
    );
    v
}

/// A managed child process running in the background (e.g. a client that holds a connection).
pub fn spawn_quiet(mut cmd: Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn")
}

/// A managed child process driven line by line: what is written to its stdin, and its stdout
/// read a line at a time.
pub struct LineClient {
    pub child: Child,
    pub input: Option<std::process::ChildStdin>,
    output: std::io::BufReader<std::process::ChildStdout>,
}

impl LineClient {
    pub fn spawn(mut cmd: Command) -> LineClient {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn");
        let input = child.stdin.take();
        let output = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        LineClient {
            child,
            input,
            output,
        }
    }

    /// The next line it prints, trimmed.
    pub fn line(&mut self) -> String {
        use std::io::BufRead;
        let mut line = String::new();
        self.output.read_line(&mut line).expect("a line");
        line.trim().to_string()
    }

    /// Writes `text` and a newline, then reads the line printed in answer.
    pub fn ask(&mut self, text: &str) -> String {
        use std::io::Write;
        let input = self.input.as_mut().expect("stdin open");
        input
            .write_all(format!("{text}\n").as_bytes())
            .expect("write");
        self.line()
    }

    /// Closes its stdin and waits for it to exit.
    pub fn finish(mut self) {
        self.input = None;
        let _ = self.child.wait();
    }
}

/// Polls `f` until it returns Some or `within` passes.
pub fn eventually<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops a server an interrupted run left behind (its pid file names it, and the process is
/// still `program`): it would hold the ports a new one needs.
pub fn stop_leftover(pid_file: &Path, program: &str) {
    let Ok(pid) = std::fs::read_to_string(pid_file) else {
        return;
    };
    let pid = pid.trim();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() == program {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", pid])
            .status();
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Waits until the server `child` (`program`) listens on 127.0.0.1:`port`, by `deadline`;
/// panics with its log (`log`) if it exits first or misses the deadline.
pub fn wait_listening(child: &mut Child, program: &str, port: u16, deadline: Instant, log: &Path) {
    let log = || std::fs::read_to_string(log).unwrap_or_default();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{program} exited ({status}): {}", log());
        }
        assert!(
            Instant::now() < deadline,
            "{program} did not listen on {port}: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
