//! The `meshd run` flags of Kubernetes discovery, and their validated settings.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::settings::SettingsError;

pub const DISCOVERY_ENV: &str = "MESHD_DISCOVERY";
pub const NODE_NAME_ENV: &str = "MESHD_NODE_NAME";
pub const KUBE_API_ENV: &str = "MESHD_KUBE_API";
pub const HOST_PROC_ENV: &str = "MESHD_HOST_PROC";
pub const KUBE_CGROUP_ROOT_ENV: &str = "MESHD_KUBE_CGROUP_ROOT";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Policy files only.
    None,
    /// Watch the Kubernetes API for this node's pods, Services, EndpointSlices and Istio's
    /// resources.
    Kubernetes,
}

#[derive(Args, Debug, Clone)]
pub struct KubeArgs {
    /// Where services and workloads come from besides the policy files: `none` or `kubernetes`.
    #[arg(long, env = DISCOVERY_ENV, value_enum, default_value = "none")]
    pub discovery: Mode,
    /// This node's name, as pods' `spec.nodeName` says it (required with --discovery kubernetes).
    #[arg(long, env = NODE_NAME_ENV)]
    pub node_name: Option<String>,
    /// The Kubernetes API server's URL. Default: the in-cluster service account, or KUBECONFIG.
    #[arg(long, env = KUBE_API_ENV)]
    pub kube_api: Option<String>,
    /// The host's /proc (pods' network namespaces are found under it).
    #[arg(long, env = HOST_PROC_ENV, default_value = "/proc")]
    pub host_proc: PathBuf,
    /// Root of the cgroup hierarchy holding the kubelet's pod cgroups. Default: the cgroup2
    /// mount.
    #[arg(long, env = KUBE_CGROUP_ROOT_ENV)]
    pub kube_cgroup_root: Option<PathBuf>,
}

/// Kubernetes discovery's effective settings.
#[derive(Clone, Debug, Serialize)]
pub struct KubeSettings {
    pub node_name: String,
    pub kube_api: Option<String>,
    pub host_proc: PathBuf,
    pub cgroup_root: PathBuf,
}

impl KubeArgs {
    /// None with `--discovery none`.
    pub fn settings(&self) -> Result<Option<KubeSettings>, SettingsError> {
        if self.discovery == Mode::None {
            return Ok(None);
        }
        let node_name = match self.node_name.as_deref().map(str::trim) {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => {
                return Err(SettingsError::Invalid {
                    flag: "node-name",
                    value: self.node_name.clone().unwrap_or_default(),
                    reason: format!(
                        "--discovery kubernetes needs this node's name: pass --node-name or set \
                         {NODE_NAME_ENV} (in a DaemonSet, from the downward API: fieldRef \
                         spec.nodeName)"
                    ),
                });
            }
        };
        Ok(Some(KubeSettings {
            node_name,
            kube_api: self.kube_api.clone(),
            host_proc: self.host_proc.clone(),
            cgroup_root: self
                .kube_cgroup_root
                .clone()
                .unwrap_or_else(super::default_cgroup_root),
        }))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        kube: KubeArgs,
    }

    fn parse(args: &[&str]) -> Result<Option<KubeSettings>, SettingsError> {
        let mut all = vec!["meshd"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap().kube.settings()
    }

    #[test]
    fn kubernetes_needs_a_node_name() {
        assert!(parse(&[]).unwrap().is_none());
        let err = parse(&["--discovery", "kubernetes"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--node-name"), "{err}");
        let s = parse(&[
            "--discovery",
            "kubernetes",
            "--node-name",
            "node-a",
            "--kube-cgroup-root",
            "/sys/fs/cgroup",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.node_name, "node-a");
        assert_eq!(s.host_proc, PathBuf::from("/proc"));
        assert_eq!(s.cgroup_root, PathBuf::from("/sys/fs/cgroup"));
        assert_eq!(s.kube_api, None);
    }
}
