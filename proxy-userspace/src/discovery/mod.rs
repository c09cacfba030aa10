//! Discovery from the Kubernetes API: this node's pods (to the `PodSink`), Services and
//! EndpointSlices (as ServiceEntries), meshd-enabled pods (as WorkloadEntries) and Istio's own
//! resources, merged with the policy files into the configuration store.

mod args;
pub mod cgroup;
pub mod enrol;
mod error;
pub mod istio;
pub mod netns;
pub mod pods;
pub mod protocol;
pub mod render;
mod run;
pub mod sink;
pub mod watch;

use std::{path::PathBuf, time::Duration};

pub use args::{KubeArgs, KubeSettings, Mode};
pub use error::DiscoveryError;
pub use pods::HostPaths;
pub use run::spawn;
pub use sink::{DiscoveredPod, PodSink, RecordingSink, SinkEvent};

/// What discovery needs to know.
#[derive(Clone, Debug)]
pub struct Options {
    /// This node's name (`spec.nodeName` of its pods).
    pub node_name: String,
    /// The API server's URL; None: in-cluster config or KUBECONFIG.
    pub kube_api: Option<String>,
    pub host: HostPaths,
    /// Rebuild at most this often during bursts of watch events.
    pub debounce: Duration,
    /// How often pods that could not be placed are tried again.
    pub resync: Duration,
    /// How often an Istio API group that is not installed is looked up again.
    pub istio_retry: Duration,
}

impl Options {
    pub fn new(node_name: String, kube_api: Option<String>, host: HostPaths) -> Options {
        Options {
            node_name,
            kube_api,
            host,
            debounce: Duration::from_millis(200),
            resync: Duration::from_secs(5),
            istio_retry: Duration::from_secs(60),
        }
    }
}

/// The Kubernetes client: `--kube-api` when given (plain HTTP or HTTPS, no credentials), else
/// the in-cluster service account or KUBECONFIG.
pub async fn client(kube_api: Option<&str>) -> Result<kube::Client, DiscoveryError> {
    let config = match kube_api {
        Some(url) => {
            let uri: hyper::http::Uri =
                url.parse()
                    .map_err(|e: hyper::http::uri::InvalidUri| DiscoveryError::BadUrl {
                        url: url.to_string(),
                        reason: e.to_string(),
                    })?;
            kube::Config::new(uri)
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| DiscoveryError::Config(e.to_string()))?,
    };
    kube::Client::try_from(config).map_err(|e| DiscoveryError::Client(e.to_string()))
}

/// A client for the API, ready to start discovery once the daemon is set up.
pub struct Connected {
    client: kube::Client,
    options: Options,
}

/// Builds the client from the settings: fails the start when the API cannot be located.
pub async fn connect(settings: Option<&KubeSettings>) -> Result<Option<Connected>, DiscoveryError> {
    let Some(s) = settings else { return Ok(None) };
    let client = client(s.kube_api.as_deref()).await?;
    let host = HostPaths {
        cgroup_root: s.cgroup_root.clone(),
        host_proc: s.host_proc.clone(),
    };
    Ok(Some(Connected {
        client,
        options: Options::new(s.node_name.clone(), s.kube_api.clone(), host),
    }))
}

impl Connected {
    pub fn start(
        self,
        store: std::sync::Arc<crate::config::ConfigStore>,
        sink: std::sync::Arc<dyn PodSink>,
    ) -> tokio::task::JoinHandle<()> {
        spawn(self.client, self.options, store, sink)
    }
}

/// The default cgroup root: the cgroup2 mount, found as meshd's own cgroups are.
pub fn default_cgroup_root() -> PathBuf {
    crate::cgroup::cgroup2_mount().unwrap_or_else(|_| PathBuf::from("/sys/fs/cgroup"))
}

/// The stand-in API server of the end-to-end tests, shared with the unit tests.
#[cfg(test)]
#[path = "../../../tests/support/kube_api.rs"]
mod kube_api;
#[cfg(test)]
mod testdata;
#[cfg(test)]
mod tests;
