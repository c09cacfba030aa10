//! This node's pods → the `PodSink`: which pods are wanted (running, on this node, in a
//! meshd-enabled namespace, not on the host network), where their cgroup and network namespace
//! are, and what changed since the last pass.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
};

use k8s_openapi::api::core::v1::Pod;

use super::{
    DiscoveryError, cgroup,
    cgroup::Qos,
    netns,
    sink::{DiscoveredPod, PodSink},
};

/// Where pods live on the host.
#[derive(Clone, Debug)]
pub struct HostPaths {
    /// The cgroup hierarchy's root (the cgroup2 mount, or a hybrid host's `/sys/fs/cgroup`).
    pub cgroup_root: PathBuf,
    /// The host's /proc.
    pub host_proc: PathBuf,
}

/// Whether discovery hands this pod to the sink.
pub fn wanted(pod: &Pod, node: &str, enabled: &HashSet<String>) -> bool {
    let (Some(spec), Some(status)) = (&pod.spec, &pod.status) else {
        return false;
    };
    spec.node_name.as_deref() == Some(node)
        && pod.metadata.namespace.as_ref().is_some_and(|ns| enabled.contains(ns))
        && status.phase.as_deref() == Some("Running")
        // Host-network pods share the host's namespace: there is nothing of theirs to enrol.
        && spec.host_network != Some(true)
}

/// Finds a wanted pod's cgroup and network namespace.
pub fn discover(pod: &Pod, host: &HostPaths) -> Result<DiscoveredPod, DiscoveryError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let id = format!("{namespace}/{name}");
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let status = pod.status.as_ref();
    let qos = status
        .and_then(|s| s.qos_class.as_deref())
        .and_then(Qos::parse);
    let cgroup = cgroup::resolve(&host.cgroup_root, &id, &uid, qos)?;
    let netns = netns::resolve(&id, &cgroup, &host.host_proc)?;
    Ok(DiscoveredPod {
        namespace,
        name,
        uid,
        service_account: pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        ip: pod_ip(pod),
        cgroup,
        netns,
    })
}

fn pod_ip(pod: &Pod) -> Option<std::net::IpAddr> {
    pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

/// What the sink has been told, to send it only changes.
#[derive(Default)]
pub struct PodTracker {
    emitted: HashMap<(String, String), DiscoveredPod>,
    /// The last reason each pending pod (by uid) could not be placed, to log a reason once.
    failing: HashMap<String, String>,
}

impl PodTracker {
    /// Brings the sink in line with `pods` (the wanted ones). A pod already sent with the same
    /// uid, labels and IP is not probed again. Returns how many pods could not be placed; they
    /// are retried at the next pass.
    pub fn sync(&mut self, pods: &[Arc<Pod>], host: &HostPaths, sink: &dyn PodSink) -> usize {
        let mut seen = HashSet::new();
        let mut failing = HashMap::new();
        for pod in pods {
            let key = (
                pod.metadata.namespace.clone().unwrap_or_default(),
                pod.metadata.name.clone().unwrap_or_default(),
            );
            seen.insert(key.clone());
            if let Some(old) = self.emitted.get(&key)
                && Some(&old.uid) == pod.metadata.uid.as_ref()
                && old.labels == pod.metadata.labels.clone().unwrap_or_default()
                && old.ip == pod_ip(pod)
            {
                continue;
            }
            match discover(pod, host) {
                Ok(found) => {
                    self.emitted.insert(key, found.clone());
                    sink.upsert(found);
                }
                Err(e) => {
                    let uid = pod.metadata.uid.clone().unwrap_or_default();
                    let reason = e.to_string();
                    if self.failing.get(&uid) != Some(&reason) {
                        tracing::warn!(pod = %format!("{}/{}", key.0, key.1), "pod skipped for now, retried at the next event or resync: {reason}");
                    } else {
                        tracing::debug!(pod = %format!("{}/{}", key.0, key.1), "pod still skipped: {reason}");
                    }
                    failing.insert(uid, reason);
                    // A pod recreated under the same name: the old one is gone.
                    if self.emitted.remove(&key).is_some() {
                        sink.remove(&key.0, &key.1);
                    }
                }
            }
        }
        let gone: Vec<(String, String)> = self
            .emitted
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for (ns, name) in gone {
            self.emitted.remove(&(ns.clone(), name.clone()));
            sink.remove(&ns, &name);
        }
        let pending = failing.len();
        self.failing = failing;
        pending
    }
}
