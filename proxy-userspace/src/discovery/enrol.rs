//! The sink meshd runs discovery with: this node's pods are enrolled as workloads (their
//! cgroup adopted, meshd listening in their network namespace) and removed when they go.

use std::sync::Arc;

use super::{DiscoveredPod, PodSink};
use crate::{
    pods::Pods,
    workloads::{Placement, WorkloadName},
};

pub struct Enrol {
    pub pods: Arc<Pods>,
}

impl PodSink for Enrol {
    fn upsert(&self, pod: DiscoveredPod) {
        let full = format!("{}/{}", pod.namespace, pod.name);
        let name = match WorkloadName::parse(&full) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(pod = %full, error = %e, "pod not enrolled");
                return;
            }
        };
        let at = Placement {
            cgroup: Some(pod.cgroup),
            netns: Some(pod.netns),
        };
        match self.pods.ensure(&name, &at) {
            Ok(w) => tracing::debug!(pod = %full, id = w.id, "pod enrolled"),
            Err(e) => tracing::warn!(pod = %full, error = %e, "pod not enrolled"),
        }
    }

    fn remove(&self, namespace: &str, name: &str) {
        let full = format!("{namespace}/{name}");
        if let Ok(n) = WorkloadName::parse(&full)
            && let Some(w) = self.pods.remove_named(&n)
        {
            tracing::info!(pod = %full, id = w.id, "pod removed");
        }
    }
}
