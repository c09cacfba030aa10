//! Istio's resources from the API, when their CRDs are installed: each group version is looked
//! up (`GET /apis/<group>/<version>`); a 404 means it is not installed, which is logged once
//! and looked up again every `retry`. Each kind found is watched as a `DynamicObject`.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind},
    runtime::watcher,
};
use tokio::sync::mpsc;

use super::watch::{self, Watched};

/// The group versions and kinds watched, with their plural resource names.
pub const KINDS: &[(&str, &str, &str, &str)] = &[
    (
        "networking.istio.io",
        "v1",
        "VirtualService",
        "virtualservices",
    ),
    (
        "networking.istio.io",
        "v1",
        "DestinationRule",
        "destinationrules",
    ),
    (
        "networking.istio.io",
        "v1",
        "ServiceEntry",
        "serviceentries",
    ),
    (
        "networking.istio.io",
        "v1",
        "WorkloadEntry",
        "workloadentries",
    ),
    (
        "security.istio.io",
        "v1",
        "PeerAuthentication",
        "peerauthentications",
    ),
    (
        "security.istio.io",
        "v1",
        "AuthorizationPolicy",
        "authorizationpolicies",
    ),
];

/// The Istio kinds being watched: (apiVersion, kind, its store). Grows as CRDs are found.
pub type IstioStores = Arc<Mutex<Vec<(String, &'static str, Watched<DynamicObject>)>>>;

/// Looks for each Istio group version until it is found, then watches its kinds.
pub fn spawn(client: Client, stores: IstioStores, changed: mpsc::Sender<()>, retry: Duration) {
    let mut groups: Vec<(&str, &str)> = KINDS.iter().map(|k| (k.0, k.1)).collect();
    groups.dedup();
    for (group, version) in groups {
        let client = client.clone();
        let stores = stores.clone();
        let changed = changed.clone();
        tokio::spawn(async move {
            let gv = format!("{group}/{version}");
            let mut said = false;
            let served = loop {
                match client.list_api_group_resources(&gv).await {
                    Ok(list) => break list,
                    Err(kube::Error::Api(s)) if s.code == 404 => {
                        if !said {
                            tracing::info!(
                                group = %gv,
                                "Istio's {gv} API is not installed; its resources come from policy files only (looking again every {retry:?})"
                            );
                            said = true;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(group = %gv, error = %e, "cannot list the API group's resources; retrying")
                    }
                }
                tokio::time::sleep(retry).await;
            };
            for (g, v, kind, plural) in KINDS.iter().filter(|k| k.0 == group && k.1 == version) {
                if !served.resources.iter().any(|r| r.name == *plural) {
                    tracing::info!(group = %gv, kind, "not served by the API; not watched");
                    continue;
                }
                let ar =
                    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(g, v, kind), plural);
                let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
                let w = watch::spawn(
                    plural.to_string(),
                    api,
                    watcher::Config::default(),
                    ar,
                    changed.clone(),
                );
                tracing::info!(group = %gv, kind, "watching Istio resources");
                stores
                    .lock()
                    .expect("istio stores")
                    .push((gv.clone(), kind, w));
            }
        });
    }
}
