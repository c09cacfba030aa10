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
                    // What the sink has under this name is stale: a pod recreated under the
                    // same name, or one whose cgroup went away.
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::discovery::{
        RecordingSink, SinkEvent,
        cgroup::{cgroupfs_path, fixture::*},
        testdata,
    };

    fn pod(v: serde_json::Value) -> Arc<Pod> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn only_changes_reach_the_sink() {
        let t = TempDir::new("tracker");
        let host = HostPaths {
            cgroup_root: t.0.join("cg"),
            host_proc: t.0.join("proc"),
        };
        let uid = "77777777-7777-4777-8777-777777777777";
        let dir = host.cgroup_root.join(cgroupfs_path(uid, Qos::BestEffort));
        v2_dir(&dir, &[]);
        v2_dir(&dir.join("c1"), &[70]);
        proc_netns(&host.host_proc, 70, 1);
        let v1 = testdata::pod("shop", "cart-1", uid, "node-a", "10.1.0.7", "BestEffort");
        let sink = RecordingSink::new();
        let mut tracker = PodTracker::default();
        assert_eq!(tracker.sync(&[pod(v1.clone())], &host, sink.as_ref()), 0);
        // Nothing changed: nothing sent.
        tracker.sync(&[pod(v1.clone())], &host, sink.as_ref());
        assert_eq!(sink.events().len(), 1);
        // A new IP is sent again.
        let mut v2 = v1.clone();
        v2["status"]["podIP"] = json!("10.1.0.8");
        tracker.sync(&[pod(v2.clone())], &host, sink.as_ref());
        assert_eq!(
            sink.pods()["shop/cart-1"].ip,
            Some("10.1.0.8".parse().unwrap())
        );
        // Its cgroup goes away while it changes: the sink drops it, and it is pending.
        std::fs::remove_dir_all(&host.cgroup_root).unwrap();
        let mut v3 = v2.clone();
        v3["metadata"]["labels"]["version"] = json!("v3");
        assert_eq!(tracker.sync(&[pod(v3)], &host, sink.as_ref()), 1);
        assert!(sink.pods().is_empty());
        // Gone from the API: nothing more to remove.
        assert_eq!(tracker.sync(&[], &host, sink.as_ref()), 0);
        let removes = sink
            .events()
            .iter()
            .filter(|e| matches!(e, SinkEvent::Remove { .. }))
            .count();
        assert_eq!(removes, 1);
    }

    #[test]
    fn which_pods_are_wanted() {
        let enabled: HashSet<String> = ["shop".to_string()].into();
        let running = testdata::pod("shop", "a-1", "u", "node-a", "10.1.0.1", "Burstable");
        assert!(wanted(&pod(running.clone()), "node-a", &enabled));
        assert!(!wanted(&pod(running.clone()), "node-b", &enabled));
        let mut pending = running.clone();
        pending["status"]["phase"] = json!("Pending");
        assert!(!wanted(&pod(pending), "node-a", &enabled));
        let mut host_net = running.clone();
        host_net["spec"]["hostNetwork"] = json!(true);
        assert!(!wanted(&pod(host_net), "node-a", &enabled));
        let other = testdata::pod("legacy", "b-1", "u", "node-a", "10.1.0.2", "Burstable");
        assert!(!wanted(&pod(other), "node-a", &enabled));
    }
}
