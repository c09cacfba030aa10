//! The configuration store: builds snapshots from the config paths, swaps them in atomically,
//! and keeps the last good one when a reload is invalid. Readers take an `Arc` of the current
//! snapshot without locking, and keep it for as long as their request runs.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
};

use arc_swap::ArcSwap;

use super::{Snapshot, compile::compile, hash::content_hash};
use crate::{
    metrics::Metrics,
    policy::{self, Finding, LoadFailure, source},
    proxy::connections::unix_ms,
};

pub struct ConfigStore {
    paths: Vec<PathBuf>,
    current: ArcSwap<Snapshot>,
    metrics: Arc<Metrics>,
    /// Serialises reloads (a file event and SIGHUP at once).
    reloading: Mutex<()>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    Applied { generation: u64 },
    Unchanged,
    Rejected,
}

/// Reads, validates, analyzes and compiles the config paths. Errors from cross-resource
/// analysis reject the configuration like validation errors do; warnings are logged.
fn build(paths: &[PathBuf], generation: u64) -> Result<Snapshot, LoadFailure> {
    let (files, unreadable) = source::discover(paths);
    if !unreadable.is_empty() {
        return Err(LoadFailure::Unreadable(unreadable));
    }
    let contents: Vec<(PathBuf, Vec<u8>)> = files
        .iter()
        .map(|f| (f.clone(), std::fs::read(f).unwrap_or_default()))
        .collect();
    let mut policies = policy::load(paths)?;
    let mut findings = policy::analyze(&policies);
    if findings.iter().any(Finding::is_error) {
        findings.extend(policies.warnings.iter().cloned());
        policy::finding::sort(&mut findings);
        return Err(LoadFailure::Invalid(findings));
    }
    for w in policies.warnings.iter().chain(&findings) {
        tracing::warn!("{w}");
    }
    policies.forget_trees();
    let compiled = compile(&policies);
    Ok(Snapshot {
        generation,
        hash: content_hash(&contents),
        applied_unix_ms: unix_ms(),
        files,
        policies,
        compiled,
    })
}

impl ConfigStore {
    /// Loads the configuration meshd starts with; every finding is returned on failure.
    pub fn initial(
        paths: Vec<PathBuf>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<ConfigStore>, LoadFailure> {
        let snapshot = build(&paths, 1)?;
        tracing::info!(
            generation = 1,
            hash = %snapshot.hash,
            files = snapshot.files.len(),
            resources = snapshot.policies.len(),
            "configuration loaded"
        );
        metrics.config_applied(1);
        Ok(Arc::new(ConfigStore {
            paths,
            current: ArcSwap::from_pointee(snapshot),
            metrics,
            reloading: Mutex::new(()),
        }))
    }

    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// The active snapshot. Holding the `Arc` keeps it alive across later reloads.
    pub fn current(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Rebuilds from the config paths and swaps the result in, unless it is invalid (the last
    /// good snapshot stays, and every finding is logged) or identical.
    pub fn reload(&self, why: &str) -> ReloadOutcome {
        let _one_at_a_time = self.reloading.lock().expect("reload lock");
        let old = self.current.load();
        match build(&self.paths, old.generation + 1) {
            Ok(new) if new.hash == old.hash => {
                tracing::debug!(why, hash = %new.hash, "configuration unchanged");
                self.metrics.config_reload("unchanged");
                ReloadOutcome::Unchanged
            }
            Ok(new) => {
                let generation = new.generation;
                tracing::info!(why, generation, hash = %new.hash, resources = new.policies.len(), "configuration applied");
                self.current.store(Arc::new(new));
                self.metrics.config_reload("success");
                self.metrics.config_applied(generation);
                ReloadOutcome::Applied { generation }
            }
            Err(e) => {
                tracing::error!(
                    why,
                    generation = old.generation,
                    "configuration rejected; keeping the last good one:"
                );
                for line in e.to_string().lines() {
                    tracing::error!("  {line}");
                }
                self.metrics.config_reload("failure");
                ReloadOutcome::Rejected
            }
        }
    }
}
