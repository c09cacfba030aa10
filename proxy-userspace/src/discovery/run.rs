//! The discovery loop: starts the watches, and after each burst of changes (debounced) sends
//! this node's pods to the sink and the rendered documents to the configuration store.

use std::{collections::HashMap, sync::Arc};

use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{Api, Client, runtime::watcher};
use tokio::sync::mpsc;

use super::{
    Options,
    istio::{self, IstioStores},
    pods::{PodTracker, wanted},
    render::{View, istio_document},
    sink::PodSink,
    watch::{self, Watched},
};
use crate::config::{ConfigStore, Document, ReloadOutcome};

/// The core watches; documents are rendered once all of them have listed.
struct Core {
    namespaces: Watched<Namespace>,
    nodes: Watched<Node>,
    /// This node's pods (field selector `spec.nodeName`), for the sink.
    local_pods: Watched<Pod>,
    /// Every pod, for endpoints' labels and service accounts and for WorkloadEntries.
    pods: Watched<Pod>,
    services: Watched<Service>,
    slices: Watched<EndpointSlice>,
}

impl Core {
    fn start(client: &Client, node: &str, tx: &mpsc::Sender<()>) -> Core {
        fn w<K>(
            client: &Client,
            what: &str,
            config: watcher::Config,
            tx: &mpsc::Sender<()>,
        ) -> Watched<K>
        where
            K: kube::Resource<DynamicType = ()>
                + Clone
                + serde::de::DeserializeOwned
                + std::fmt::Debug
                + Send
                + Sync
                + 'static,
        {
            watch::spawn(
                what.to_string(),
                Api::all(client.clone()),
                config,
                (),
                tx.clone(),
            )
        }
        let all = watcher::Config::default;
        Core {
            namespaces: w(client, "namespaces", all(), tx),
            nodes: w(client, "nodes", all(), tx),
            local_pods: w(
                client,
                "pods on this node",
                all().fields(&format!("spec.nodeName={node}")),
                tx,
            ),
            pods: w(client, "pods", all(), tx),
            services: w(client, "services", all(), tx),
            slices: w(client, "endpointslices", all(), tx),
        }
    }

    /// The watches that have not completed their first list.
    fn unsynced(&self) -> Vec<&str> {
        let all = [
            (self.namespaces.is_synced(), &self.namespaces.what),
            (self.nodes.is_synced(), &self.nodes.what),
            (self.local_pods.is_synced(), &self.local_pods.what),
            (self.pods.is_synced(), &self.pods.what),
            (self.services.is_synced(), &self.services.what),
            (self.slices.is_synced(), &self.slices.what),
        ];
        all.into_iter()
            .filter(|(ok, _)| !ok)
            .map(|(_, w)| w.as_str())
            .collect()
    }
}

/// Starts discovery: watches the API and keeps `store` and `sink` up to date until the runtime
/// stops. Never fails once started: API errors are retried with backoff.
pub fn spawn(
    client: Client,
    options: Options,
    store: Arc<ConfigStore>,
    sink: Arc<dyn PodSink>,
) -> tokio::task::JoinHandle<()> {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let core = Core::start(&client, &options.node_name, &tx);
    let istio_stores: IstioStores = Default::default();
    istio::spawn(
        client,
        istio_stores.clone(),
        tx.clone(),
        options.istio_retry,
    );
    tracing::info!(
        node = %options.node_name,
        api = options.kube_api.as_deref().unwrap_or("in-cluster or KUBECONFIG"),
        cgroup_root = %options.host.cgroup_root.display(),
        host_proc = %options.host.host_proc.display(),
        "Kubernetes discovery started"
    );
    tokio::spawn(async move {
        let mut tracker = PodTracker::default();
        let mut pending = 0;
        let mut said_waiting = false;
        loop {
            let woke = tokio::time::timeout(options.resync, rx.recv()).await;
            if matches!(woke, Ok(None)) {
                return;
            }
            if woke.is_err() && pending == 0 {
                continue;
            }
            // Debounce: one rebuild for a burst of events, at most one per `debounce`.
            tokio::time::sleep(options.debounce).await;
            while rx.try_recv().is_ok() {}
            let unsynced = core.unsynced();
            if !unsynced.is_empty() {
                if !said_waiting {
                    tracing::info!(waiting_for = ?unsynced, "discovery waits for the first list of every watch");
                    said_waiting = true;
                }
                continue;
            }
            let started = tokio::time::Instant::now();
            let pass = Pass {
                node: options.node_name.clone(),
                host: options.host.clone(),
                namespaces: core.namespaces.state(),
                nodes: core.nodes.state(),
                pods: core.pods.state(),
                local_pods: core.local_pods.state(),
                services: core.services.state(),
                slices: core.slices.state(),
                istio: istio_documents(&istio_stores),
            };
            let (store, sink) = (store.clone(), sink.clone());
            // Probing cgroups and /proc and building a snapshot block: keep them off the async
            // workers.
            let done = tokio::task::spawn_blocking(move || {
                let outcome = pass.run(&mut tracker, &store, sink.as_ref());
                (tracker, outcome)
            })
            .await;
            let (count, outcome);
            (tracker, (pending, count, outcome)) = match done {
                Ok(d) => d,
                Err(e) => {
                    // A panic in a sink or the store: keep discovering with a fresh tracker.
                    tracing::error!(error = %e, "discovery pass failed");
                    (PodTracker::default(), (0, 0, ReloadOutcome::Unchanged))
                }
            };
            tracing::debug!(documents = count, pending_pods = pending, took = ?started.elapsed(), outcome = ?outcome, "discovery pass");
        }
    })
}

/// What one discovery pass works from: the stores' states at one moment.
struct Pass {
    node: String,
    host: super::HostPaths,
    namespaces: Vec<Arc<Namespace>>,
    nodes: Vec<Arc<Node>>,
    pods: Vec<Arc<Pod>>,
    local_pods: Vec<Arc<Pod>>,
    services: Vec<Arc<Service>>,
    slices: Vec<Arc<EndpointSlice>>,
    istio: Vec<Document>,
}

impl Pass {
    /// Sends this node's pods to the sink and the documents to the store. Returns the pods
    /// left pending, the number of documents and what the store did.
    fn run(
        self,
        tracker: &mut PodTracker,
        store: &ConfigStore,
        sink: &dyn PodSink,
    ) -> (usize, usize, ReloadOutcome) {
        let view = View::new(
            &self.node,
            &self.namespaces,
            &self.nodes,
            &self.pods,
            &self.services,
            &self.slices,
        );
        let local: Vec<Arc<Pod>> = self
            .local_pods
            .into_iter()
            .filter(|p| wanted(p, &self.node, &view.enabled))
            .collect();
        let pending = tracker.sync(&local, &self.host, sink);
        let mut docs = view.documents();
        docs.extend(self.istio);
        let count = docs.len();
        (
            pending,
            count,
            store.set_documents(docs, "Kubernetes API change"),
        )
    }
}

/// Istio objects from every synced Istio watch.
fn istio_documents(stores: &IstioStores) -> Vec<Document> {
    let stores = stores.lock().expect("istio stores");
    let mut out = Vec::new();
    let mut seen: HashMap<std::path::PathBuf, ()> = HashMap::new();
    for (api_version, kind, w) in stores.iter().filter(|(_, _, w)| w.is_synced()) {
        for obj in w.state() {
            if let Some(d) = istio_document(api_version, kind, &obj)
                && seen.insert(d.path.clone(), ()).is_none()
            {
                out.push(d);
            }
        }
    }
    out
}
