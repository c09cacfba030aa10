//! One immutable, validated and compiled configuration, as the data path sees it.

use std::path::PathBuf;

use serde_json::json;

use super::compile::Compiled;
use crate::policy::PolicySet;

/// Mesh-wide settings every snapshot carries, as Istio's MeshConfig goes with its
/// configuration: set on meshd's command line, the same in every generation.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Mesh {
    /// `outboundTrafficPolicy.mode: REGISTRY_ONLY` (`--outbound-traffic-policy`): a destination
    /// no ServiceEntry describes is not reached.
    pub registry_only: bool,
}

pub struct Snapshot {
    /// Increments with every applied reload; 1 is the configuration meshd started with.
    pub generation: u64,
    /// SHA-256 over the policy files' names and contents.
    pub hash: String,
    pub applied_unix_ms: u64,
    pub files: Vec<PathBuf>,
    pub policies: PolicySet,
    pub compiled: Compiled,
    pub mesh: Mesh,
}

impl Snapshot {
    /// The /config_dump view: identity of the snapshot, the resources as loaded, and what they
    /// compiled to.
    pub fn dump(&self) -> serde_json::Value {
        json!({
            "generation": self.generation,
            "hash": self.hash,
            "applied_unix_ms": self.applied_unix_ms,
            "files": self.files,
            "mesh": self.mesh,
            "resources": self.policies,
            "compiled": {
                "route_hosts": self.compiled.routes.hosts(),
                "clusters": self.compiled.clusters,
                "workloads": self.compiled.workloads,
                "endpoints": self.compiled.endpoints,
            },
        })
    }

    /// The first snapshot of `policies`, compiled, with no files behind it: for tests.
    #[cfg(test)]
    pub fn of(policies: PolicySet) -> Snapshot {
        Snapshot {
            generation: 1,
            hash: String::new(),
            applied_unix_ms: 0,
            files: Vec::new(),
            compiled: super::compile(&policies),
            policies,
            mesh: Mesh::default(),
        }
    }
}
