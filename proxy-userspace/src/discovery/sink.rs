//! Where discovered pods go: the `PodSink` trait, and a sink that records (for tests); meshd's
//! own sink, which enrols them, is in `enrol.rs`.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use serde::Serialize;

/// A running pod of this node in a meshd-enabled namespace, with where it lives on the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DiscoveredPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    pub ip: Option<IpAddr>,
    /// The pod's cgroup v2 directory (the BPF programs' view of it).
    pub cgroup: PathBuf,
    /// `<host-proc>/<pid>/ns/net` of one of the pod's processes.
    pub netns: PathBuf,
}

/// Receives this node's pods as discovery finds them. `upsert` is called again when a pod
/// changes (labels, IP, a new uid for a pod recreated under the same name); `remove` when it is
/// deleted, stops running, moves off the mesh (its namespace loses `meshd.io/enabled=true`).
pub trait PodSink: Send + Sync {
    fn upsert(&self, pod: DiscoveredPod);
    fn remove(&self, namespace: &str, name: &str);
}

/// What a `RecordingSink` saw, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkEvent {
    Upsert(DiscoveredPod),
    Remove { namespace: String, name: String },
}

/// Records every call, and keeps the current pods by `namespace/name`.
#[derive(Default)]
pub struct RecordingSink {
    inner: Mutex<Recorded>,
}

#[derive(Default)]
struct Recorded {
    events: Vec<SinkEvent>,
    pods: BTreeMap<String, DiscoveredPod>,
}

impl RecordingSink {
    pub fn new() -> Arc<RecordingSink> {
        Arc::new(RecordingSink::default())
    }

    pub fn events(&self) -> Vec<SinkEvent> {
        self.inner.lock().expect("sink lock").events.clone()
    }

    /// The pods upserted and not removed since, by `namespace/name`.
    pub fn pods(&self) -> BTreeMap<String, DiscoveredPod> {
        self.inner.lock().expect("sink lock").pods.clone()
    }
}

impl PodSink for RecordingSink {
    fn upsert(&self, pod: DiscoveredPod) {
        let mut r = self.inner.lock().expect("sink lock");
        r.pods
            .insert(format!("{}/{}", pod.namespace, pod.name), pod.clone());
        r.events.push(SinkEvent::Upsert(pod));
    }

    fn remove(&self, namespace: &str, name: &str) {
        let mut r = self.inner.lock().expect("sink lock");
        r.pods.remove(&format!("{namespace}/{name}"));
        r.events.push(SinkEvent::Remove {
            namespace: namespace.to_string(),
            name: name.to_string(),
        });
    }
}
