//! Daemon lifecycle end to end: failing open or closed when meshd dies or hangs, one daemon per
//! node, draining on SIGTERM and cleaning up its cgroups.

mod support;

use std::time::{Duration, Instant};

use support::{Daemon, backend::Backend, client_ok, ebpf_available, eventually, spawn_quiet};

/// Starts a managed client that connects once `wait_file` appears.
fn waiting_client(
    d: &Daemon,
    workload: &str,
    addr: &str,
    wait_file: &std::path::Path,
) -> std::process::Child {
    let _ = std::fs::remove_file(wait_file);
    let child = spawn_quiet(d.exec(
        workload,
        &[
            "python3",
            support::CLIENT,
            "connect",
            "--addr",
            addr,
            "--wait-file",
            wait_file.to_str().unwrap(),
        ],
    ));
    // Wait until the client runs inside its managed cgroup, so the daemon is no longer needed
    // for it to start.
    eventually(Duration::from_secs(10), || {
        let dir = d.cgroup.join("workloads");
        std::fs::read_dir(&dir)
            .ok()?
            .flatten()
            .find(|e| !support::pids_in(&e.path()).is_empty())
            .map(|_| ())
    })
    .expect("client running in its managed cgroup");
    child
}

fn json_of(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim())
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn after_kill_9_a_managed_client_connects_directly() {
    if !ebpf_available("kill9") {
        return;
    }
    let backend = Backend::echo("127.0.0.1:0");
    let mut d = Daemon::start("kill9", 11, &["--heartbeat-timeout", "1s"]);
    let wait = std::env::temp_dir().join("meshd-test-kill9.go");
    let client = waiting_client(&d, "default/survivor", &backend.addr.to_string(), &wait);
    d.kill9();
    let killed = Instant::now();
    std::fs::write(&wait, "go").unwrap();
    let out = client.wait_with_output().unwrap();
    let v = json_of(&out);
    assert_eq!(
        v["ok"], true,
        "after meshd died the client must reach its destination: {v}"
    );
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "took {:?}",
        killed.elapsed()
    );
    assert_eq!(backend.accepted(), 1);
}

#[test]
fn a_hung_daemon_fails_open_after_the_heartbeat_timeout() {
    if !ebpf_available("hung_open") {
        return;
    }
    let backend = Backend::echo("127.0.0.1:0");
    let d = Daemon::start("hung-open", 12, &["--heartbeat-timeout", "1s"]);
    let wait = std::env::temp_dir().join("meshd-test-hung-open.go");
    let client = waiting_client(&d, "default/patient", &backend.addr.to_string(), &wait);
    d.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(&wait, "go").unwrap();
    let out = client.wait_with_output().unwrap();
    d.signal(libc::SIGCONT);
    let v = json_of(&out);
    assert_eq!(v["ok"], true, "a stopped meshd must be bypassed: {v}");
    assert_eq!(
        backend.accepted(),
        1,
        "the client reached the backend directly"
    );
    // Once meshd runs again it beats, and managed connects are redirected again.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        d.metric(r#"meshd_ebpf_events_total{event="fail_open"}"#),
        1.0
    );
    d.echo("default/after", backend.addr, 1024);
    assert_eq!(
        d.metric(r#"meshd_ebpf_events_total{event="redirect"}"#),
        1.0
    );
}

#[test]
fn a_hung_daemon_in_fail_closed_mode_refuses_connects() {
    if !ebpf_available("hung_closed") {
        return;
    }
    let backend = Backend::echo("127.0.0.1:0");
    let d = Daemon::start(
        "hung-closed",
        13,
        &["--heartbeat-timeout", "1s", "--fail-mode", "closed"],
    );
    let wait = std::env::temp_dir().join("meshd-test-hung-closed.go");
    let client = waiting_client(&d, "default/blocked", &backend.addr.to_string(), &wait);
    d.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(&wait, "go").unwrap();
    let out = client.wait_with_output().unwrap();
    d.signal(libc::SIGCONT);
    let v = json_of(&out);
    assert_eq!(v["ok"], false, "fail-closed must refuse: {v}");
    assert_eq!(v["errno"], libc::EPERM, "connect() fails with EPERM: {v}");
    assert_eq!(backend.accepted(), 0);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        d.metric(r#"meshd_ebpf_events_total{event="fail_closed"}"#),
        1.0
    );
}

#[test]
fn a_second_daemon_on_the_node_fails_clearly() {
    if !ebpf_available("second") {
        return;
    }
    let first = Daemon::start("second", 14, &[]);
    // Same cgroup and ports: refused by the lock before it touches anything.
    let mut same = Daemon::spawn("second", 14, &[]);
    same.owns_cgroup = false;
    let status = same.wait_failed(Duration::from_secs(10));
    assert!(!status.success());
    let log = same.log_text();
    assert!(log.contains("already running"), "{log}");
    // Another cgroup but the same ports: refused when binding.
    let mut ports = Daemon::spawn("second-b", 14, &[]);
    let status = ports.wait_failed(Duration::from_secs(10));
    assert!(!status.success());
    let log = ports.log_text();
    assert!(log.contains("already in use"), "{log}");
    assert!(
        !ports.cgroup.exists(),
        "the failed daemon removed the cgroup it created"
    );
    // The first daemon is unharmed.
    assert_eq!(support::http_get(first.admin, "/ready").unwrap().0, 200);
    assert!(first.cgroup.join("meshd-daemon").exists());
}

#[test]
fn sigterm_drains_open_connections_and_removes_the_cgroups() {
    if !ebpf_available("drain") {
        return;
    }
    let backend = Backend::echo("127.0.0.1:0");
    let mut d = Daemon::start("drain", 15, &["--drain-timeout", "10s"]);
    let client = spawn_quiet(d.exec(
        "default/long",
        &[
            "python3",
            support::CLIENT,
            "echo",
            "--addr",
            &backend.addr.to_string(),
            "--bytes",
            "65536",
            "--hold",
            "2",
        ],
    ));
    eventually(Duration::from_secs(10), || {
        (d.get("/connections").trim() != "[]").then_some(())
    })
    .expect("connection open");
    let status = d.stop();
    assert!(
        status.success(),
        "meshd exits 0 after draining; log:\n{}",
        d.log_text()
    );
    let out = client.wait_with_output().unwrap();
    client_ok(&out, "connection open across SIGTERM");
    assert!(
        !d.cgroup.exists(),
        "attach cgroup removed; log:\n{}",
        d.log_text()
    );
}

#[test]
fn sigterm_during_the_start_still_removes_the_cgroups() {
    if !ebpf_available("early-term") {
        return;
    }
    // meshd is frozen (cgroup.freeze on its own cgroup) as soon as that cgroup appears, early in
    // the start, before the programs load and the listeners serve; SIGTERM is sent while it is
    // frozen, then it thaws. A start that got as far as serving before the freeze is tried again.
    for attempt in 1..=5 {
        let mut d = Daemon::spawn("early-term", 116, &[]);
        let own = d.cgroup.join("meshd-daemon");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !own.join("cgroup.freeze").exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "no meshd-daemon cgroup"
            );
            std::thread::sleep(Duration::from_micros(100));
        }
        std::fs::write(own.join("cgroup.freeze"), "1").unwrap();
        eventually(Duration::from_secs(5), || {
            let events = std::fs::read_to_string(own.join("cgroup.events")).ok()?;
            events.contains("frozen 1").then_some(())
        })
        .expect("meshd frozen");
        let early = !d.log_text().contains("meshd ready");
        // SAFETY: signalling the daemon this test started.
        unsafe { libc::kill(d.pid(), libc::SIGTERM) };
        std::fs::write(own.join("cgroup.freeze"), "0").unwrap();
        let status = d.stop();
        assert!(status.success(), "meshd exits 0; log:\n{}", d.log_text());
        assert!(
            !d.cgroup.exists(),
            "attach cgroup removed; log:\n{}",
            d.log_text()
        );
        if early {
            return;
        }
        eprintln!("attempt {attempt}: meshd was already serving when frozen; trying again");
    }
    panic!("meshd was never caught before serving in 5 attempts");
}

/// A raw HTTP/1.1 client in the workload: a GET on a kept-alive connection, then, for a
/// WebSocket, an upgrade and an echo; after "ready" it waits for meshd's drain and reports what
/// its connection did: "eof" (closed), "open", or the echo of what it sent after the drain.
const DRAIN_CLIENT: &str = r#"
import socket, sys, time
addr, mode = sys.argv[1], sys.argv[2]
host, port = addr.rsplit(":", 1)
s = socket.create_connection((host, int(port)))
if mode == "idle":
    s.sendall(b"GET /whoami HTTP/1.1\r\nHost: b\r\n\r\n")
else:
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: b\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
buf = b""
while b"\r\n\r\n" not in buf:
    buf += s.recv(65536)
head, _, rest = buf.partition(b"\r\n\r\n")
assert head.split(b" ")[1] in (b"200", b"101"), head
print("ready", flush=True)
sys.stdin.readline()
if mode == "idle":
    s.settimeout(8)
    try:
        while True:
            d = s.recv(65536)
            if not d:
                print("eof")
                break
    except socket.timeout:
        print("open")
else:
    time.sleep(1)
    s.sendall(b"after-drain")
    s.settimeout(5)
    got = b""
    while b"after-drain" not in got:
        d = s.recv(65536)
        if not d:
            break
        got += d
    print("echo" if b"after-drain" in got else "lost")
"#;

#[test]
fn sigterm_closes_idle_http_connections_keeps_accepting_and_carries_websockets() {
    use std::io::{BufRead, BufReader, Write};
    if !ebpf_available("http_drain") {
        return;
    }
    let b = support::http_backend::HttpBackend::start("127.0.0.1:0");
    let mut d = Daemon::start("http-drain", 260, &["--drain-timeout", "10s"]);
    let addr = b.addr.to_string();
    let client = |mode: &str| {
        let mut c = d
            .exec(
                "default/drain",
                &["python3", "-c", DRAIN_CLIENT, &addr, mode],
            )
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(c.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "{mode}");
        (c, out)
    };
    let (mut idle, mut idle_out) = client("idle");
    let (mut ws, mut ws_out) = client("websocket");
    // The WebSocket is a connection like any other: listed while it is open.
    let listed = d.get("/connections");
    assert_eq!(listed.matches(&addr).count(), 2, "{listed}");
    d.signal(libc::SIGTERM);
    for c in [&mut idle, &mut ws] {
        c.stdin.take().unwrap().write_all(b"go\n").unwrap();
    }
    // The idle keep-alive connection is closed at once, as Envoy closes idle ones.
    let mut line = String::new();
    idle_out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "eof");
    // A workload's new connection during the drain is still served (not refused), and closed
    // after its response.
    let out = d
        .exec(
            "default/late",
            &[
                "curl",
                "-sS",
                "-i",
                "--max-time",
                "5",
                &format!("http://{addr}/whoami"),
            ],
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with("http/1.1 200") && text.contains("connection: close"),
        "{text}"
    );
    // The WebSocket is carried through the drain (it used to be cut at once).
    let mut line = String::new();
    ws_out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "echo");
    let _ = idle.wait();
    let _ = ws.wait();
    let status = d.stop();
    assert!(status.success(), "log:\n{}", d.log_text());
}

/// Asks for reviews:9080 (the mesh VIP, which only meshd serves) on each line of stdin and
/// prints the status, or "error".
const VIP_CLIENT: &str = r#"
import http.client, sys
while sys.stdin.readline():
    try:
        c = http.client.HTTPConnection("127.0.0.50", 9080, timeout=5)
        c.request("GET", "/whoami", headers={"Host": "reviews"})
        print(c.getresponse().status, flush=True)
        c.close()
    except Exception as e:
        print("error", e, flush=True)
"#;

#[test]
fn a_restarted_meshd_takes_back_the_workloads_a_killed_one_enrolled() {
    if !ebpf_available("readopt") {
        return;
    }
    let (v1, v2) = support::mesh::two_backends();
    let yaml = support::mesh::policies(
        &v1,
        &v2,
        "  - route:\n    - destination:\n        host: reviews\n        subset: v1\n",
    );
    let mut first = support::mesh::start("readopt", 263, &yaml);
    let mut client =
        support::LineClient::spawn(first.exec("default/loop", &["python3", "-c", VIP_CLIENT]));
    assert_eq!(client.ask("go"), "200");
    // Killed: no teardown. The workload's cgroup and process stay.
    first.kill9();
    let second = support::mesh::start("readopt", 263, &yaml);
    assert_eq!(client.ask("go"), "200", "log:\n{}", second.log_text());
    let listed = second.get("/workloads");
    assert!(listed.contains("default/loop"), "{listed}");
    // Its `meshd exec` unenrols it from the new meshd when it ends.
    client.finish();
    support::eventually(Duration::from_secs(5), || {
        (!second.get("/workloads").contains("default/loop")).then_some(())
    })
    .unwrap_or_else(|| panic!("still enrolled; log:\n{}", second.log_text()));
}

/// `meshd exec` exits as `env` and shells do when CMD cannot run: 127 when it is not found,
/// 126 when it cannot be executed; otherwise with CMD's own status. Either way the workload
/// is unenrolled.
#[test]
fn exec_exits_as_shells_do_when_the_command_cannot_run() {
    if !support::ebpf_available("exec_codes") {
        return;
    }
    let d = support::Daemon::start("exec-codes", 277, &[]);
    let code = |cmd: &[&str]| {
        d.exec("default/runner", cmd)
            .output()
            .unwrap()
            .status
            .code()
    };
    assert_eq!(code(&["/nonexistent-command"]), Some(127));
    assert_eq!(code(&["/etc/passwd"]), Some(126));
    assert_eq!(code(&["sh", "-c", "exit 7"]), Some(7));
    let workloads = d.get("/workloads");
    assert!(!workloads.contains("default/runner"), "{workloads}");
}
