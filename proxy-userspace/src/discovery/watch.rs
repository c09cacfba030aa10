//! One resource's watch: kube's watcher (list, then watch from the list's resourceVersion;
//! re-list when the API says the version is too old) with its default backoff, reflected into a
//! store. Errors are logged and retried for as long as meshd runs; the store keeps the last
//! state it had, so the configuration built from it keeps serving while the API is away.

use std::{
    fmt::Debug,
    hash::Hash,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use futures::StreamExt;
use kube::{
    Api, Resource,
    runtime::{
        WatchStreamExt,
        reflector::{Store, store::Writer},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

/// A watched resource's store, and whether its first list has completed.
pub struct Watched<K: Resource + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    pub what: String,
    pub store: Store<K>,
    pub synced: Arc<AtomicBool>,
}

impl<K: Resource + Clone + 'static> Watched<K>
where
    K::DynamicType: Eq + Hash + Clone,
{
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub fn state(&self) -> Vec<Arc<K>> {
        self.store.state()
    }
}

/// Drops what meshd never reads and that can be most of an object's size: managed fields and
/// kubectl's copy of the last applied object.
fn trim<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
    if let Some(a) = obj.meta_mut().annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// What an operator can do about a watch error the API refused.
fn hint(e: &watcher::Error) -> &'static str {
    let api = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.code,
        watcher::Error::WatchError(s) => s.code,
        _ => return "",
    };
    match api {
        401 => " (unauthorized: is meshd's service account token mounted and valid?)",
        403 => {
            " (forbidden: meshd's ClusterRole needs get, list and watch on namespaces, nodes, pods, services, endpointslices and Istio's resources)"
        }
        _ => "",
    }
}

/// Starts watching `api` into a new store; every change sends `()` on `changed`.
pub fn spawn<K>(
    what: String,
    api: Api<K>,
    config: watcher::Config,
    dyntype: K::DynamicType,
    changed: mpsc::Sender<()>,
) -> Watched<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    let writer = Writer::new(dyntype);
    let store = writer.as_reader();
    let synced = Arc::new(AtomicBool::new(false));
    let flag = synced.clone();
    let name = what.clone();
    tokio::spawn(async move {
        let stream = watcher(api, config)
            .default_backoff()
            .modify(trim)
            .reflect(writer);
        futures::pin_mut!(stream);
        let mut failing = false;
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    if failing {
                        tracing::info!(watch = %name, "watch resumed");
                        failing = false;
                    }
                    match event {
                        watcher::Event::Init | watcher::Event::InitApply(_) => continue,
                        watcher::Event::InitDone => flag.store(true, Ordering::Release),
                        watcher::Event::Apply(_) | watcher::Event::Delete(_) => {}
                    }
                    let _ = changed.try_send(());
                }
                Err(e) => {
                    // The backoff spaces these out (up to 30 s apart); the store keeps its state.
                    tracing::warn!(
                        watch = %name,
                        error = %e,
                        "Kubernetes API watch failed; retrying with backoff, the last known state keeps serving{}",
                        hint(&e)
                    );
                    failing = true;
                }
            }
        }
    });
    Watched {
        what,
        store,
        synced,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> watcher::Error {
        let status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "code": code, "message": "m", "reason": "r",
        }))
        .unwrap();
        watcher::Error::InitialListFailed(kube::Error::Api(Box::new(status)))
    }

    #[test]
    fn refusals_say_what_to_fix() {
        assert!(hint(&api_error(403)).contains("ClusterRole"));
        assert!(hint(&api_error(401)).contains("token"));
        assert_eq!(hint(&api_error(500)), "");
    }
}
