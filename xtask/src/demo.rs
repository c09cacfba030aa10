//! `cargo xtask demo`: starts meshd on this node, runs a real HTTP backend and real curl clients
//! as managed workloads, and shows the traffic from meshd's and the kernel's side.

use std::{
    process::{Child, Command, Stdio},
    thread::sleep,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{
    build,
    daemon::{Layout, Meshd, http_get},
    util::{require_root, root, run as sh, step},
};

/// meshd's default ports and attach cgroup: the demo runs the daemon as a node would.
const LAYOUT: Layout = Layout {
    admin_port: 15000,
    outbound_port: 15001,
    inbound_port: 15008,
    cgroup: "meshd",
};
const BACKEND: &str = "127.0.0.1:8080";

/// Kills the backend when the demo ends, however it ends.
struct Backend(Child);

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run() -> Result<()> {
    require_root("demo")?;
    build::all()?;
    let dir = root().join("target/demo");
    let www = dir.join("www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(
        www.join("index.html"),
        "hello from the backend, through meshd\n",
    )?;
    std::fs::write(www.join("blob.bin"), vec![7u8; 16 << 20])?;

    step(&format!(
        "starting a backend: python3 -m http.server on {BACKEND} (not managed)"
    ));
    crate::daemon::ensure_free(8080)?;
    let backend = Backend(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                "8080",
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(&www)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting python3 -m http.server")?,
    );
    wait_for(BACKEND)?;

    step("starting meshd: eBPF programs attached to the `meshd` cgroup, outbound listener :15001");
    let meshd_bin = build::meshd_release();
    let log = dir.join("meshd.log");
    let meshd = Meshd::start(
        &meshd_bin,
        LAYOUT,
        &root().join("policies"),
        &[],
        |p, a| {
            let mut c = Command::new(p);
            c.args(a);
            c
        },
        &log,
    )?;
    eprintln!("    meshd is ready (log: {})", log.display());

    step("a managed client: `meshd exec --workload demo/web -- curl http://127.0.0.1:8080/`");
    eprintln!(
        "    curl connects to the backend as usual; connect4 sends it through meshd, invisibly:"
    );
    let url = format!("http://{BACKEND}/");
    let curl_args: Vec<String> = [
        "curl",
        "-sS",
        "--max-time",
        "10",
        "-w",
        "    (curl's peer: %{remote_ip}:%{remote_port}, HTTP %{http_code})\n",
        &url,
    ]
    .map(String::from)
    .to_vec();
    run_argv(&meshd.exec("demo/web", &curl_args))?;

    step(
        "an unknown caller: `demo/intruder` is not among the backend's AuthorizationPolicy principals",
    );
    eprintln!(
        "    policies/demo/security.yaml allows only demo/web and demo/downloader, so meshd answers 403:"
    );
    let intruder_args: Vec<String> = [
        "curl",
        "-sS",
        "--max-time",
        "10",
        "-w",
        "    (HTTP %{http_code})\n",
        &url,
    ]
    .map(String::from)
    .to_vec();
    run_argv(&meshd.exec("demo/intruder", &intruder_args))?;

    step("a slow 16 MiB download by `demo/downloader`, and meshd's live view of it");
    let blob = format!("http://{BACKEND}/blob.bin");
    let dl_args: Vec<String> = [
        "curl",
        "-sS",
        "--limit-rate",
        "8M",
        "-o",
        "/dev/null",
        &blob,
    ]
    .map(String::from)
    .to_vec();
    let argv = meshd.exec("demo/downloader", &dl_args);
    let mut download = Command::new(&argv[0])
        .args(&argv[1..])
        .spawn()
        .context("starting the download")?;
    sleep(Duration::from_millis(1200));
    sh(Command::new(&meshd_bin).args(["connections", "--admin", &admin()]))?;
    let status = download.wait()?;
    if !status.success() {
        bail!("the download through meshd failed: {status}");
    }

    step("`meshd status`");
    sh(Command::new(&meshd_bin).args(["status", "--admin", &admin()]))?;

    step("an unmanaged client (plain curl, not via meshd exec) is left alone");
    let before = meshd.counters()?.redirect;
    sh(Command::new("curl").args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "    plain curl: HTTP %{http_code}\n",
        &url,
    ]))?;
    let after = meshd.counters()?.redirect;
    eprintln!("    kernel redirects before {before}, after {after}: unchanged");

    step("kernel-side counters on /metrics (meshd_ebpf_events_total)");
    let (_, metrics) = meshd.get("/metrics")?;
    for line in metrics.lines().filter(|l| {
        l.starts_with("meshd_ebpf_events_total") || l.starts_with("meshd_connections_total")
    }) {
        eprintln!("    {line}");
    }

    step("Istio's standard metrics, as existing dashboards expect them (istio_requests_total)");
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
    {
        eprintln!("    {line}");
    }

    step("the access log: one JSON line per request (meshd's stdout)");
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    for line in log_text.lines().filter(|l| l.starts_with('{')).take(2) {
        eprintln!("    {line}");
    }

    step("stopping meshd (SIGTERM): it drains, detaches its programs and removes its cgroups");
    let cgroup = cgroup_path()?;
    meshd.stop()?;
    eprintln!(
        "    {} {}",
        cgroup.display(),
        if cgroup.exists() {
            "still exists (unexpected)"
        } else {
            "is gone"
        }
    );
    drop(backend);
    step("demo finished: real HTTP traffic went through meshd and the kernel counted it");
    Ok(())
}

fn admin() -> String {
    crate::daemon::admin(LAYOUT).to_string()
}

fn run_argv(argv: &[String]) -> Result<()> {
    sh(Command::new(&argv[0]).args(&argv[1..]))
}

fn cgroup_path() -> Result<std::path::PathBuf> {
    Ok(crate::daemon::cgroup2_mount()?.join(LAYOUT.cgroup))
}

fn wait_for(addr: &str) -> Result<()> {
    let sock = addr.parse()?;
    for _ in 0..100 {
        if http_get(sock, "/").is_ok() {
            return Ok(());
        }
        sleep(Duration::from_millis(50));
    }
    bail!("the backend on {addr} did not come up")
}
