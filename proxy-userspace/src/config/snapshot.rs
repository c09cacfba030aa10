//! One immutable, validated and compiled configuration, as the data path sees it.

use std::path::PathBuf;

use serde_json::json;

use super::compile::Compiled;
use crate::policy::PolicySet;

pub struct Snapshot {
    /// Increments with every applied reload; 1 is the configuration meshd started with.
    pub generation: u64,
    /// SHA-256 over the policy files' names and contents.
    pub hash: String,
    pub applied_unix_ms: u64,
    pub files: Vec<PathBuf>,
    pub policies: PolicySet,
    pub compiled: Compiled,
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
        }
    }
}
