//! Simulated pods: network namespaces plugged into a bridge `cni0` inside a node's namespace,
//! the way a CNI plugin wires pods on a Kubernetes node. Pods of node `meshd-<lan>-a` are named
//! `meshd-<lan>-a-p<N>`, so dropping the `Lan` removes them too.

use std::{net::Ipv4Addr, path::PathBuf, process::Command};

use super::{Node, add_namespace, command_in, enter, ip, namespace_path};

/// A pod: its namespace, and its address on the node's pod network.
#[derive(Clone, Debug)]
pub struct Pod {
    pub ns: String,
    pub addr: Ipv4Addr,
}

impl Node {
    /// Creates the pod network: bridge `cni0` with 10.214.<subnet>.1/24 in this node.
    pub fn pod_network(&self, subnet: u8) {
        ip(&["-n", &self.ns, "link", "add", "cni0", "type", "bridge"]);
        let gw = format!("10.214.{subnet}.1/24");
        ip(&["-n", &self.ns, "addr", "add", &gw, "dev", "cni0"]);
        ip(&["-n", &self.ns, "link", "set", "cni0", "up"]);
    }

    /// Adds pod number `n` (2..=254) on the pod network made by [`Node::pod_network`], at
    /// 10.214.<subnet>.<n>, with its default route through the node.
    pub fn add_pod(&self, subnet: u8, n: u8) -> Pod {
        let pod = Pod {
            ns: format!("{}-p{n}", self.ns),
            addr: Ipv4Addr::new(10, 214, subnet, n),
        };
        add_namespace(&pod.ns);
        let veth = format!("vp{n}");
        ip(&[
            "-n", &pod.ns, "link", "add", "eth0", "type", "veth", "peer", "name", &veth, "netns",
            &self.ns,
        ]);
        ip(&["-n", &self.ns, "link", "set", &veth, "master", "cni0", "up"]);
        let cidr = format!("{}/24", pod.addr);
        ip(&["-n", &pod.ns, "addr", "add", &cidr, "dev", "eth0"]);
        ip(&["-n", &pod.ns, "link", "set", "eth0", "up"]);
        let gw = format!("10.214.{subnet}.1");
        ip(&["-n", &pod.ns, "route", "add", "default", "via", &gw]);
        pod
    }
}

impl Pod {
    /// The namespace file to enrol the pod with.
    pub fn netns(&self) -> PathBuf {
        namespace_path(&self.ns)
    }

    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        command_in(&self.ns, program)
    }

    /// Runs `f` on a thread inside the pod's namespace (see [`Node::run`]).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        enter(&self.ns, f)
    }

    /// Whether a TCP socket listens on `port` inside the pod (read from `ss`, not probed with a
    /// connect, which PeerAuthentication STRICT would refuse).
    pub fn listens_on(&self, port: u16) -> bool {
        let out = self.command("ss").args(["-ltnH"]).output();
        out.is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.contains(&format!(":{port} ")))
        })
    }

    /// Deletes the pod's namespace (and with it its veth).
    pub fn delete(&self) {
        ip(&["netns", "delete", &self.ns]);
    }
}
