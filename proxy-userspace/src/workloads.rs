//! The workload registry: which managed cgroup belongs to which workload (NAMESPACE/NAME).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use serde::Serialize;

use crate::{cgroup, ebpf::DatapathMaps};

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error(
        "workload {0:?} must be NAMESPACE/NAME, each a lowercase DNS label (a-z, 0-9, '-', '.')"
    )]
    BadName(String),
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error("recording the managed cgroup in the eBPF map: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("no workload with id {0}")]
    Unknown(u32),
    #[error(
        "workload {id}'s cgroup still holds {pids} process(es); it stays enrolled until they exit"
    )]
    Busy { id: u32, pids: usize },
}

/// A workload identity, `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WorkloadName {
    pub namespace: String,
    pub name: String,
}

impl WorkloadName {
    pub fn parse(s: &str) -> Result<WorkloadName, WorkloadError> {
        let bad = || WorkloadError::BadName(s.to_string());
        let (ns, name) = s.split_once('/').ok_or_else(bad)?;
        let ok = |p: &str| {
            !p.is_empty()
                && p.len() <= 253
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
                && !p.starts_with(['-', '.'])
                && !p.ends_with(['-', '.'])
        };
        if !ok(ns) || !ok(name) {
            return Err(bad());
        }
        Ok(WorkloadName {
            namespace: ns.to_string(),
            name: name.to_string(),
        })
    }
}

impl std::fmt::Display for WorkloadName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Workload {
    pub id: u32,
    pub workload: String,
    pub namespace: String,
    pub name: String,
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
}

pub struct Registry {
    dir: PathBuf,
    maps: Arc<DatapathMaps>,
    inner: Mutex<Inner>,
}

struct Inner {
    next_id: u32,
    by_id: BTreeMap<u32, Workload>,
}

impl Registry {
    pub fn new(dir: &Path, maps: Arc<DatapathMaps>) -> Registry {
        Registry {
            dir: dir.to_path_buf(),
            maps,
            inner: Mutex::new(Inner {
                next_id: 1,
                by_id: BTreeMap::new(),
            }),
        }
    }

    /// Creates a managed cgroup for the workload and records it in the eBPF map.
    pub fn enrol(&self, name: &WorkloadName) -> Result<Workload, WorkloadError> {
        let mut inner = self.inner.lock().expect("registry lock");
        let id = inner.next_id;
        let dir = self
            .dir
            .join(format!("{id}-{}.{}", name.namespace, name.name));
        cgroup::ensure_dir(&dir)?;
        let enrolled = cgroup::cgroup_id(&dir)
            .map_err(WorkloadError::from)
            .and_then(|cgroup_id| {
                self.maps.enrol(cgroup_id, id)?;
                Ok(cgroup_id)
            });
        let cgroup_id = match enrolled {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                return Err(e);
            }
        };
        inner.next_id += 1;
        let w = Workload {
            id,
            workload: name.to_string(),
            namespace: name.namespace.clone(),
            name: name.name.clone(),
            cgroup: dir,
            cgroup_id,
        };
        inner.by_id.insert(id, w.clone());
        self.maps.enrolled(&w);
        tracing::info!(workload = %w.workload, id, cgroup = %w.cgroup.display(), "workload enrolled");
        Ok(w)
    }

    /// Unenrols a workload whose cgroup has emptied, and removes the cgroup.
    pub fn remove(&self, id: u32) -> Result<Workload, WorkloadError> {
        let mut inner = self.inner.lock().expect("registry lock");
        let w = inner.by_id.get(&id).ok_or(WorkloadError::Unknown(id))?;
        let pids = cgroup::pids(&w.cgroup).len();
        if pids > 0 {
            return Err(WorkloadError::Busy { id, pids });
        }
        let w = inner.by_id.remove(&id).expect("checked above");
        self.maps.unenrol(w.cgroup_id);
        let _ = std::fs::remove_dir(&w.cgroup);
        tracing::info!(workload = %w.workload, id, "workload removed");
        Ok(w)
    }

    pub fn get(&self, id: u32) -> Option<Workload> {
        self.inner
            .lock()
            .expect("registry lock")
            .by_id
            .get(&id)
            .cloned()
    }

    pub fn list(&self) -> Vec<Workload> {
        self.inner
            .lock()
            .expect("registry lock")
            .by_id
            .values()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let n = WorkloadName::parse("default/client-1").unwrap();
        assert_eq!(
            (n.namespace.as_str(), n.name.as_str()),
            ("default", "client-1")
        );
        for bad in [
            "client",
            "/x",
            "x/",
            "Default/x",
            "a/b/c",
            "a/-b",
            "a/b_c",
            "a/b c",
        ] {
            assert!(
                WorkloadName::parse(bad).is_err(),
                "{bad} should be rejected"
            );
        }
    }
}
