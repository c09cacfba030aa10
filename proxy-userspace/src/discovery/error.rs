//! Why discovery could not start, or could not place a pod: one enum, messages for operators.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error(
        "cannot find the Kubernetes API: {0} (outside a pod, set KUBECONFIG or pass --kube-api)"
    )]
    Config(String),
    #[error("--kube-api {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("building the Kubernetes client: {0}")]
    Client(String),
    #[error(
        "no cgroup for pod {pod} (uid {uid}): probed {}; is --kube-cgroup-root the node's \
         cgroup mount, and has the kubelet created the pod's sandbox yet?",
        list(probed)
    )]
    NoCgroup {
        pod: String,
        uid: String,
        probed: Vec<PathBuf>,
    },
    #[error(
        "no network namespace for pod {pod}: no process in {} or its container cgroups has \
         {proc}/<pid>/ns/net (containers not started yet, or --host-proc is not the host's /proc)",
        cgroup.display(),
        proc = host_proc.display()
    )]
    NoNetns {
        pod: String,
        cgroup: PathBuf,
        host_proc: PathBuf,
    },
}

fn list(paths: &[PathBuf]) -> String {
    let all: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    all.join(", ")
}
