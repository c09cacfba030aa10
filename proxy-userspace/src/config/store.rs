//! The configuration store: builds snapshots from the config paths (plus documents discovered
//! in memory, see `documents`), swaps them in atomically, and keeps the last good one when a
//! reload is invalid. Readers take an `Arc` of the current
//! snapshot without locking, and keep it for as long as their request runs.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
};

use arc_swap::ArcSwap;

use super::{
    Mesh, Snapshot,
    compile::compile_resolved,
    dns,
    documents::{self, Document, RejectLog, Rejected},
    hash::content_hash,
};
use crate::{
    metrics::Metrics,
    policy::{self, Finding, LoadFailure},
    proxy::connections::unix_ms,
    telemetry::peers::Peers,
};

pub struct ConfigStore {
    paths: Vec<PathBuf>,
    mesh: Mesh,
    current: ArcSwap<Snapshot>,
    metrics: Arc<Metrics>,
    /// Serialises reloads (a file event and SIGHUP at once); holds whether the last one was
    /// rejected.
    reloading: Mutex<bool>,
    /// In-memory documents (from the Kubernetes API) merged with the files' policies.
    documents: Mutex<Vec<Document>>,
    rejects: Mutex<RejectLog>,
    /// The generation of the snapshot applied last, for those that act on a change.
    applied: tokio::sync::watch::Sender<u64>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    Applied { generation: u64 },
    Unchanged,
    Rejected,
}

/// The findings a rejected reload logs; `meshd analyze` prints them all.
const MAX_LOGGED_FINDINGS: usize = 100;

/// Reads, validates, analyzes and compiles the config paths. Errors from cross-resource
/// analysis reject the configuration like validation errors do; warnings are logged.
/// Documents are merged in; the bad ones are left out and returned, never failing the build.
fn build(
    paths: &[PathBuf],
    mesh: Mesh,
    docs: &[Document],
    generation: u64,
    last_dns: &dns::Resolved,
) -> Result<(Snapshot, Vec<Rejected>), LoadFailure> {
    // Each file is read once: the snapshot's hash and its policies come from the same bytes,
    // even when a file is rewritten during the reload (the next reload then sees a new hash).
    let mut contents = policy::read_all(paths).map_err(LoadFailure::Unreadable)?;
    let mut files: Vec<PathBuf> = contents.iter().map(|(f, _)| f.clone()).collect();
    let mut policies = policy::load_files(&contents)?;
    let (mut findings, rejected) = if docs.is_empty() {
        (policy::analyze(&policies), Vec::new())
    } else {
        documents::merge(&mut policies, docs)
    };
    for d in docs {
        contents.push((d.path.clone(), d.text.clone().into_bytes()));
        if !rejected.iter().any(|r| r.path == d.path) {
            files.push(d.path.clone());
        }
    }
    if findings.iter().any(Finding::is_error) {
        findings.extend(policies.warnings.iter().cloned());
        policy::finding::sort(&mut findings);
        return Err(LoadFailure::Invalid(findings));
    }
    for w in policies.warnings.iter().chain(&findings) {
        tracing::warn!("{w}");
    }
    policies.forget_trees();
    let resolved = dns::resolve(&dns::names(&policies), last_dns);
    if !resolved.is_empty() {
        contents.push(("dns:".into(), dns::hash_text(&resolved)));
    }
    let compiled = compile_resolved(&policies, resolved);
    let snapshot = Snapshot {
        generation,
        hash: content_hash(&contents),
        applied_unix_ms: unix_ms(),
        files,
        policies,
        compiled,
        mesh,
    };
    Ok((snapshot, rejected))
}

impl ConfigStore {
    /// Loads the configuration meshd starts with; every finding is returned on failure.
    pub fn initial(
        paths: Vec<PathBuf>,
        mesh: Mesh,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<ConfigStore>, LoadFailure> {
        let (snapshot, _) = build(&paths, mesh, &[], 1, &dns::Resolved::new())?;
        tracing::info!(
            generation = 1,
            hash = %snapshot.hash,
            files = snapshot.files.len(),
            resources = snapshot.policies.len(),
            "configuration loaded"
        );
        if snapshot.policies.is_empty() {
            tracing::warn!(paths = ?paths, "the configuration has no resources: no service, workload or policy is declared yet");
        }
        metrics.config_applied(1);
        metrics
            .istio
            .set_peers(Arc::new(Peers::of(&snapshot.policies)));
        Ok(Arc::new(ConfigStore {
            paths,
            mesh,
            current: ArcSwap::from_pointee(snapshot),
            metrics,
            reloading: Mutex::new(false),
            documents: Mutex::new(Vec::new()),
            rejects: Mutex::new(RejectLog::default()),
            applied: tokio::sync::watch::Sender::new(1),
        }))
    }

    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Changes each time a new snapshot is applied.
    pub fn applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// The active snapshot. Holding the `Arc` keeps it alive across later reloads.
    pub fn current(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Replaces the in-memory documents and reloads with them.
    /// Their order does not matter: they are sorted by path, so the same set hashes the same.
    pub fn set_documents(&self, mut docs: Vec<Document>, why: &str) -> ReloadOutcome {
        docs.sort_by(|a, b| a.path.cmp(&b.path));
        *self.documents.lock().expect("documents lock") = docs;
        self.reload(why)
    }

    /// Rebuilds from the config paths and documents and swaps the result in, unless it is
    /// invalid (the last good snapshot stays, and every finding is logged) or identical.
    pub fn reload(&self, why: &str) -> ReloadOutcome {
        let mut rejected_last = self.reloading.lock().expect("reload lock");
        let old = self.current.load();
        let docs = self.documents.lock().expect("documents lock").clone();
        let built = build(
            &self.paths,
            self.mesh,
            &docs,
            old.generation + 1,
            &old.compiled.dns,
        )
        .map(|(new, rejected)| {
            let rejects = self.rejects.lock().expect("rejects lock").record(&rejected);
            for kind in rejects {
                self.metrics.api_object_rejected(&kind);
            }
            new
        });
        match built {
            Ok(new) if new.hash == old.hash => {
                if std::mem::take(&mut *rejected_last) {
                    // The edit that was rejected is undone: say so, after the error lines.
                    tracing::info!(
                        why,
                        generation = old.generation,
                        "configuration valid again; unchanged from the active one"
                    );
                } else {
                    tracing::debug!(why, hash = %new.hash, "configuration unchanged");
                }
                self.metrics.config_reload("unchanged");
                ReloadOutcome::Unchanged
            }
            Ok(new) => {
                *rejected_last = false;
                let generation = new.generation;
                tracing::info!(why, generation, hash = %new.hash, resources = new.policies.len(), "configuration applied");
                if new.policies.is_empty() && !old.policies.is_empty() {
                    tracing::warn!(
                        generation,
                        before = old.policies.len(),
                        "the configuration applied has no resources: every service, workload and policy of the last one is gone (was the config directory emptied or replaced?)"
                    );
                }
                (self.metrics.istio).set_peers(Arc::new(Peers::of(&new.policies)));
                self.current.store(Arc::new(new));
                self.applied.send_replace(generation);
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
                // Each finding at its own level: the warnings beside the errors are warnings.
                // A file of thousands of bad documents logs the first of them, not them all at
                // every reload.
                let text = e.to_string();
                for line in text.lines().take(MAX_LOGGED_FINDINGS) {
                    if line.contains(": warning: ") {
                        tracing::warn!("  {line}");
                    } else {
                        tracing::error!("  {line}");
                    }
                }
                let more = text.lines().count().saturating_sub(MAX_LOGGED_FINDINGS);
                if more > 0 {
                    tracing::error!(
                        "  ... and {more} more findings (`meshd analyze` lists them all)"
                    );
                }
                self.metrics.config_reload("failure");
                *rejected_last = true;
                ReloadOutcome::Rejected
            }
        }
    }
}
