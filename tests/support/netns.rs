//! Several meshd nodes on one machine: a `Lan` of network namespaces joined by a bridge, so
//! tests can send traffic between nodes without touching the host's own interfaces.
//!
//! Every namespace is named `meshd-<lan>-<suffix>`: `-sw` holds the bridge `br0`, and node `i`
//! is `-a`, `-b`, ... with its end of a veth called `eth0` (10.213.<subnet>.<i+1>/24) and the
//! other end, `veth-a`, `veth-b`, ..., enslaved to the bridge in `-sw`. Interface names only
//! need to be unique inside one namespace, so parallel tests never clash on them.

pub mod capture;
pub mod pods;

pub use capture::Capture;

use std::{
    fs::File,
    net::Ipv4Addr,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::PathBuf,
    process::Command,
};

/// Namespaces joined by one bridge; dropping it removes every namespace (and so the veths and
/// the bridge) after killing what still runs in them.
pub struct Lan {
    pub name: String,
    /// The namespace holding the bridge and the host ends of the veths.
    pub switch: String,
    pub nodes: Vec<Node>,
}

/// One simulated machine: a network namespace with `lo` and `eth0` on the LAN.
#[derive(Clone, Debug)]
pub struct Node {
    pub ns: String,
    pub addr: Ipv4Addr,
    /// The veth end on the bridge, in the LAN's switch namespace: where to capture this node's
    /// traffic.
    pub veth_host_side: String,
}

impl Lan {
    /// Creates the LAN `meshd-<name>-*` with `nodes` nodes on 10.213.<subnet>.0/24, after
    /// removing whatever a crashed run with the same name left behind.
    pub fn new(name: &str, subnet: u8, nodes: usize) -> Lan {
        assert!(
            (1..=26).contains(&nodes),
            "a LAN has 1 to 26 nodes, not {nodes}"
        );
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "LAN name {name:?}: letters, digits and '-' only"
        );
        let prefix = format!("meshd-{name}-");
        remove_namespaces(&prefix);
        let switch = format!("{prefix}sw");
        add_namespace(&switch);
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch, "link", "set", "br0", "up"]);
        let mut lan = Lan {
            name: name.into(),
            switch,
            nodes: Vec::new(),
        };
        for i in 0..nodes {
            let letter = (b'a' + i as u8) as char;
            let node = Node {
                ns: format!("{prefix}{letter}"),
                addr: Ipv4Addr::new(10, 213, subnet, i as u8 + 1),
                veth_host_side: format!("veth-{letter}"),
            };
            // Pushed first, so a failure below still removes it on drop.
            lan.nodes.push(node.clone());
            lan.plug(&node);
        }
        lan
    }

    fn plug(&self, node: &Node) {
        let (sw, ns, veth) = (&self.switch, &node.ns, &node.veth_host_side);
        add_namespace(ns);
        ip(&[
            "-n", sw, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ]);
        ip(&["-n", sw, "link", "set", veth, "master", "br0", "up"]);
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/24", node.addr),
            "dev",
            "eth0",
        ]);
        ip(&["-n", ns, "link", "set", "eth0", "up"]);
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// Starts capturing everything node `node` sends and receives on the LAN, on its veth's
    /// bridge end.
    pub fn capture(&self, node: &Node) -> Capture {
        Capture::start(&self.switch, &node.veth_host_side)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        remove_namespaces(&format!("meshd-{}-", self.name));
    }
}

impl Node {
    /// `program` as a command that runs inside this node's namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        command_in(&self.ns, program)
    }

    /// Runs `f` on a fresh thread that has entered this node's namespace: sockets it opens,
    /// and threads it starts (a tokio runtime's workers), live in the node.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        enter(&self.ns, f)
    }
}

/// Runs `f` on a fresh thread that has entered namespace `ns`.
fn enter<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let ns = ns.to_string();
    std::thread::scope(|s| {
        s.spawn(move || {
            let file = open_namespace(&ns);
            // SAFETY: setns on an open namespace file; it only changes this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                panic!("entering {ns}: {}", std::io::Error::last_os_error());
            }
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// `program` as a command that runs in namespace `ns`. It enters only the network namespace,
/// by `setns` between fork and exec: `ip netns exec` would also remount /sys, hiding the cgroup2
/// mount that `meshd run` and `meshd exec` need.
pub fn command_in(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let file = open_namespace(ns);
    let mut cmd = Command::new(program);
    // SAFETY: the closure makes one system call on a descriptor opened before fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    cmd
}

fn namespace_path(ns: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(ns)
}

fn open_namespace(ns: &str) -> File {
    File::open(namespace_path(ns)).unwrap_or_else(|e| panic!("opening namespace {ns}: {e}"))
}

fn add_namespace(ns: &str) {
    ip(&["netns", "add", ns]);
    ip(&["-n", ns, "link", "set", "lo", "up"]);
}

/// Removes every namespace named `prefix*`, killing the processes still inside first (never
/// this test process, whose threads may have entered one).
fn remove_namespaces(prefix: &str) {
    let Ok(list) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    let me = std::process::id().to_string();
    for ns in String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
    {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if pid != me
                    && let Ok(pid) = pid.parse::<i32>()
                {
                    // SAFETY: plain kill(2) of a process found inside our own namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip").args(["netns", "delete", ns]).status();
    }
}

/// Runs `ip ARGS`, panicking with its error output when it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ip (package iproute2): {e}"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}
