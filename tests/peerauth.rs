//! PeerAuthentication and connect-time authorization enforced in the kernel:
//! - STRICT: a plaintext SYN from outside the mesh to a managed workload's port is dropped by
//!   cgroup_skb ingress, while mesh traffic through the tunnel (meshd connecting locally) still
//!   reaches it; a `portLevelMtls` PERMISSIVE port takes plaintext; a reload to PERMISSIVE lets
//!   plaintext in again;
//! - an identity-only DENY on one node fails connect() with EPERM before a byte flows.

mod support;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Child,
    time::Duration,
};

use support::{
    Daemon,
    backend::Backend,
    ebpf_available, eventually, has_series,
    netns::{Lan, Node},
    spawn_quiet,
};

fn write_config(dir: &Path, yaml: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("mesh.yaml"), yaml).unwrap();
}

fn config(name: &str, yaml: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("meshd-test-{name}-policies"));
    let _ = std::fs::remove_dir_all(&dir);
    write_config(&dir, yaml);
    dir
}

/// A plaintext connection with a short connect timeout that sends `msg` and reads the echo;
/// `Err` says how it failed.
fn echo(addr: SocketAddr, msg: &str) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(1500))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(msg.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf).map_err(|e| format!("read: {e}"))?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// A managed workload serving an echo on each of `ports` on every address, IPv4 and IPv6.
fn managed_echo(d: &Daemon, node: &Node, workload: &str, ports: &[u16]) -> Child {
    let script = format!(
        "import socket, threading\n\
         def serve(p):\n\
         \x20   l = socket.socket(socket.AF_INET6); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         \x20   l.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0); l.bind(('::', p)); l.listen(64)\n\
         \x20   while True:\n\
         \x20       c, _ = l.accept()\n\
         \x20       threading.Thread(target=lambda c=c: [c.sendall(d) for d in iter(lambda: c.recv(65536), b'')], daemon=True).start()\n\
         ts = [threading.Thread(target=serve, args=(p,)) for p in {ports:?}]\n\
         [t.start() for t in ts]\n\
         [t.join() for t in ts]\n"
    );
    let child = spawn_quiet(d.exec(workload, &["python3", "-c", &script]));
    let listening = eventually(Duration::from_secs(10), || {
        let out = node.command("ss").args(["-ltnH"]).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        ports
            .iter()
            .all(|p| text.contains(&format!(":{p} ")))
            .then_some(())
    });
    assert!(listening.is_some(), "the managed echo never listened");
    child
}

/// An unmanaged plaintext connect to [::1]:`port` on `node` whose SYN carries an IPv6
/// destination options header (a PadN option): "connected" or "timeout".
fn connect_with_dstopts(node: &Node, port: u16) -> String {
    let script = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET6); s.settimeout(1.5)\n\
         s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_DSTOPTS, bytes([0, 0, 1, 4, 0, 0, 0, 0]))\n\
         try:\n\
         \x20   s.connect(('::1', {port})); print('connected')\n\
         except socket.timeout:\n\
         \x20   print('timeout')\n"
    );
    let out = node
        .command("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// `python3` run as a managed workload: connects to `addr`, sends `msg`, prints the echo or the
/// error's name.
fn managed_client(d: &Daemon, workload: &str, addr: SocketAddr, msg: &str) -> String {
    let script = format!(
        "import socket\n\
         try:\n\
         \x20   s = socket.create_connection(('{}', {}), timeout=5)\n\
         \x20   s.sendall(b'{msg}'); print(s.recv(64).decode())\n\
         except OSError as e:\n\
         \x20   print(type(e).__name__, e.errno)\n",
        addr.ip(),
        addr.port()
    );
    let out = d
        .exec(workload, &["python3", "-c", &script])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn node_labels(n: &Node, slot: u16) -> String {
    format!(
        "meshd.io/node: \"{}\", meshd.io/tunnel-port: \"{}\"",
        n.addr,
        support::ports(slot).2
    )
}

/// client on node a; server on node b with an echo on 8081 (STRICT) and 8082 (the
/// portLevelMtls exception); `mode` is the namespace-wide mode.
fn strict_policies(a: &Node, b: &Node, slots: (u16, u16), mode: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: default}}
spec:
  address: {a}
  serviceAccount: client
  labels: {{app: client, {la}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: server, namespace: default}}
spec:
  address: {b}
  serviceAccount: server
  ports: {{echo: 8081, open: 8082}}
  labels: {{app: server, {lb}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: default}}
spec:
  mtls: {{mode: {mode}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: server, namespace: default}}
spec:
  selector: {{matchLabels: {{app: server}}}}
  portLevelMtls:
    8082: {{mode: PERMISSIVE}}
"#,
        a = a.addr,
        b = b.addr,
        la = node_labels(a, slots.0),
        lb = node_labels(b, slots.1),
    )
}

const REFUSED: &str = "meshd_peer_authentication_refused_total";

#[test]
fn strict_refuses_plaintext_in_the_kernel_and_keeps_the_tunnel() {
    if !ebpf_available("peerauth_strict") {
        return;
    }
    let slots = (150, 151);
    let lan = Lan::new("pa-strict", 150, 2);
    let (a, b) = (lan.node(0).clone(), lan.node(1).clone());
    let ca = support::ca_dir("pa-strict");
    let dir = config("pa-strict", &strict_policies(&a, &b, slots, "STRICT"));
    let start =
        |n: &Node, name: &str, slot: u16| Daemon::start_mesh_node(n, name, slot, &dir, &ca, &[]);
    let d_b = start(&b, "pa-strict-b", slots.1);
    let d_a = start(&a, "pa-strict-a", slots.0);
    let mut server = managed_echo(&d_b, &b, "default/server", &[8081, 8082]);
    let strict: SocketAddr = (b.addr, 8081).into();
    let open: SocketAddr = (b.addr, 8082).into();
    // /config_dump shows the effective modes.
    let dump: serde_json::Value = serde_json::from_str(&d_b.get("/config_dump")).unwrap();
    let entry = &dump["snapshot"]["compiled"]["workloads"]["default/server"];
    assert_eq!(entry["mtls"]["mode"], "STRICT", "{entry}");
    assert_eq!(entry["mtls"]["policy"], "default/default", "{entry}");
    assert_eq!(entry["mtls_ports"]["8082"]["mode"], "PERMISSIVE", "{entry}");

    // Mesh traffic: node a's meshd tunnels it, node b's meshd connects to the workload.
    for i in 0..3 {
        let msg = format!("through-the-tunnel-{i}");
        assert_eq!(
            managed_client(&d_a, "default/client", strict, &msg),
            msg,
            "node a:\n{}\nnode b:\n{}",
            d_a.log_text(),
            d_b.log_text()
        );
    }
    // A managed workload on node b itself goes through meshd there, which connects from its
    // own cgroup: allowed.
    assert_eq!(
        managed_client(&d_b, "default/client", strict, "same-node"),
        "same-node"
    );
    // Plaintext from another machine (an unmanaged process on node a) and from an unmanaged
    // process on node b itself: the SYN is dropped, so the connect times out.
    let from_a = a.run(|| echo(strict, "plain"));
    assert!(
        from_a.as_ref().is_err_and(|e| e.starts_with("connect")),
        "plaintext from node a got {from_a:?}"
    );
    let from_b = b.run(|| echo(strict, "plain"));
    assert!(
        from_b.as_ref().is_err_and(|e| e.starts_with("connect")),
        "plaintext on node b got {from_b:?}"
    );
    // The portLevelMtls exception takes plaintext.
    assert_eq!(
        a.run(|| echo(open, "permissive-port")),
        Ok("permissive-port".into())
    );
    // IPv6 extension headers are followed to the TCP header: a SYN behind a destination
    // options header is dropped on the STRICT port, and passes on the PERMISSIVE one.
    assert_eq!(connect_with_dstopts(&b, 8081), "timeout");
    assert_eq!(connect_with_dstopts(&b, 8082), "connected");
    // Counted in the kernel (SYN retransmissions count too).
    assert!(d_b.metric(REFUSED) >= 2.0, "{}", d_b.get("/metrics"));
    // Mesh traffic still flows after the refusals.
    assert_eq!(
        managed_client(&d_a, "default/client", strict, "again"),
        "again"
    );

    // Both reporters label the tunnelled connections mutual_tls.
    let metrics_b = d_b.get("/metrics");
    assert!(
        has_series(
            &metrics_b,
            "istio_tcp_connections_opened_total",
            &[
                r#"connection_security_policy="mutual_tls""#,
                r#"reporter="destination""#,
                r#"source_principal="spiffe://cluster.local/ns/default/sa/client""#,
            ],
            None
        ),
        "{metrics_b}"
    );
    let metrics_a = d_a.get("/metrics");
    assert!(
        has_series(
            &metrics_a,
            "istio_tcp_connections_opened_total",
            &[
                r#"connection_security_policy="mutual_tls""#,
                r#"reporter="source""#
            ],
            None
        ),
        "{metrics_a}"
    );

    // PERMISSIVE (after a reload) takes plaintext and mesh traffic alike.
    write_config(&dir, &strict_policies(&a, &b, slots, "PERMISSIVE"));
    d_b.signal(libc::SIGHUP);
    let accepted = eventually(Duration::from_secs(10), || {
        a.run(|| echo(strict, "plain-permissive")).ok()
    });
    assert_eq!(
        accepted.as_deref(),
        Some("plain-permissive"),
        "{}",
        d_b.log_text()
    );
    assert_eq!(
        managed_client(&d_a, "default/client", strict, "mesh-permissive"),
        "mesh-permissive"
    );
    let _ = server.kill();
    let _ = server.wait();
}

/// One node: client (default), intruder (namespace other) and a server whose DENY policy
/// refuses namespace `other` by identity alone, and `default/client` on port 8082 only.
fn deny_policies(n: &Node) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: default}}
spec: {{address: {a}, serviceAccount: client, labels: {{app: client}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: intruder, namespace: other}}
spec: {{address: {a}, serviceAccount: intruder, labels: {{app: intruder}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: server, namespace: default}}
spec:
  address: {a}
  serviceAccount: server
  ports: {{echo: 8081, admin: 8082}}
  labels: {{app: server}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: server-deny, namespace: default}}
spec:
  selector: {{matchLabels: {{app: server}}}}
  action: DENY
  rules:
  - from: [{{source: {{namespaces: [other]}}}}]
  - from: [{{source: {{principals: [cluster.local/ns/default/sa/client]}}}}]
    to: [{{operation: {{ports: ["8082"]}}}}]
"#,
        a = n.addr
    )
}

#[test]
fn identity_only_deny_fails_connect_with_eperm() {
    if !ebpf_available("peerauth_eperm") {
        return;
    }
    let lan = Lan::new("pa-eperm", 152, 1);
    let n = lan.node(0).clone();
    let dir = config("pa-eperm", &deny_policies(&n));
    let d = Daemon::start_on(
        &n,
        "pa-eperm",
        152,
        &["--config", &dir.display().to_string()],
    );
    let _echo = n.run(|| Backend::echo("0.0.0.0:8081"));
    let _admin = n.run(|| Backend::echo("0.0.0.0:8082"));
    let echo_addr: SocketAddr = (n.addr, 8081).into();
    let admin_addr: SocketAddr = (n.addr, 8082).into();
    // EPERM is errno 1: the kernel refused the connect itself.
    assert_eq!(
        managed_client(&d, "other/intruder", echo_addr, "x"),
        "PermissionError 1"
    );
    assert_eq!(
        managed_client(&d, "default/client", admin_addr, "x"),
        "PermissionError 1",
        "the port-scoped rule"
    );
    // Unrelated connections still work.
    assert_eq!(
        managed_client(&d, "default/client", echo_addr, "hello"),
        "hello"
    );
    assert_eq!(
        d.metric("meshd_authorization_connect_denied_total"),
        2.0,
        "{}",
        d.log_text()
    );
    assert_eq!(d.metric(r#"meshd_connections_total{result="denied"}"#), 0.0);
}

#[test]
fn disable_reaches_the_workload_in_plaintext_without_the_tunnel() {
    if !ebpf_available("peerauth_disable") {
        return;
    }
    let slots = (158, 159);
    let lan = Lan::new("pa-disable", 153, 2);
    let (a, b) = (lan.node(0).clone(), lan.node(1).clone());
    let ca = support::ca_dir("pa-disable");
    let yaml = strict_policies(&a, &b, slots, "DISABLE")
        .replace("    8082: {mode: PERMISSIVE}", "    8082: {mode: STRICT}");
    let dir = config("pa-disable", &yaml);
    let start =
        |n: &Node, name: &str, slot: u16| Daemon::start_mesh_node(n, name, slot, &dir, &ca, &[]);
    let d_b = start(&b, "pa-disable-b", slots.1);
    let d_a = start(&a, "pa-disable-a", slots.0);
    let mut server = managed_echo(&d_b, &b, "default/server", &[8081, 8082]);
    // Port 8081 is DISABLE: node a connects straight to the workload, in plaintext, and the
    // workload takes it.
    let disabled: SocketAddr = (b.addr, 8081).into();
    assert_eq!(
        managed_client(&d_a, "default/client", disabled, "plain"),
        "plain"
    );
    assert_eq!(
        d_b.metric(r#"meshd_tunnel_events_total{event="handshake_ok"}"#),
        0.0
    );
    let metrics_a = d_a.get("/metrics");
    assert!(
        has_series(
            &metrics_a,
            "istio_tcp_connections_opened_total",
            &[r#"connection_security_policy="none""#],
            None
        ),
        "{metrics_a}"
    );
    // Port 8082 is STRICT by portLevelMtls: the tunnel carries it, and plaintext is refused.
    let strict: SocketAddr = (b.addr, 8082).into();
    assert_eq!(
        managed_client(&d_a, "default/client", strict, "mesh"),
        "mesh"
    );
    assert_eq!(
        d_b.metric(r#"meshd_tunnel_events_total{event="handshake_ok"}"#),
        1.0
    );
    assert!(a.run(|| echo(strict, "plain")).is_err());
    // Under an ALLOW for the client's principal: on the STRICT port the tunnel carries the
    // principal and is allowed; the plaintext port carries none, and is denied where it
    // starts (no meshd sees it on node b), as Istio's server-side sidecar denies a plaintext
    // caller.
    let generation = |d: &Daemon| {
        let dump: serde_json::Value = serde_json::from_str(&d.get("/config_dump")).unwrap();
        dump["snapshot"]["generation"].as_u64().unwrap()
    };
    let before = generation(&d_a);
    let allow = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: server-allow, namespace: default}\nspec:\n  selector: {matchLabels: {app: server}}\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/default/sa/client]}}]\n";
    write_config(&dir, &format!("{yaml}{allow}"));
    support::eventually(std::time::Duration::from_secs(5), || {
        (generation(&d_a) > before).then_some(())
    })
    .expect("the policy applied");
    assert_eq!(
        managed_client(&d_a, "default/client", strict, "allowed"),
        "allowed"
    );
    assert_ne!(
        managed_client(&d_a, "default/client", disabled, "plain"),
        "plain",
        "{}",
        d_a.log_text()
    );
    let _ = server.kill();
    let _ = server.wait();
}
