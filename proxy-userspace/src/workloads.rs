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
        "workload {0:?} must be NAMESPACE/NAME, each a lowercase DNS name as Kubernetes names are (a-z, 0-9, '-' and '.', starting and ending with a letter or digit)"
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
    #[error(
        "cgroup {path} is not under meshd's attach cgroup {attach}, so its connects would not \
         be captured; run meshd with --cgroup set to a common ancestor"
    )]
    OutsideAttach { path: PathBuf, attach: PathBuf },
    #[error("cgroup {0} does not exist")]
    NoCgroup(PathBuf),
    #[error("cgroup {path} is already enrolled as workload {workload}")]
    Duplicate { path: PathBuf, workload: String },
}

/// Where a workload runs, beyond its name: an existing cgroup to adopt (a pod's, made by the
/// kubelet) instead of a new one, and the network namespace it lives in (none: the host's).
#[derive(Clone, Debug, Default)]
pub struct Placement {
    pub cgroup: Option<PathBuf>,
    pub netns: Option<PathBuf>,
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
    /// The network namespace meshd listens in for this workload (none: the host's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    /// The id the workload's network namespace gives meshd's (none: the same namespace, or no
    /// id could be assigned): the kernel's PeerAuthentication check finds meshd's sockets by it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meshd_nsid: Option<i32>,
    /// Whether the cgroup was adopted (meshd neither created it nor removes it).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub adopted: bool,
}

pub struct Registry {
    attach: PathBuf,
    dir: PathBuf,
    maps: Arc<DatapathMaps>,
    inner: Mutex<Inner>,
}

struct Inner {
    next_id: u32,
    by_id: BTreeMap<u32, Workload>,
}

impl Registry {
    pub fn new(attach: &Path, dir: &Path, maps: Arc<DatapathMaps>) -> Registry {
        Registry {
            attach: attach.to_path_buf(),
            dir: dir.to_path_buf(),
            maps,
            inner: Mutex::new(Inner {
                next_id: 1,
                by_id: BTreeMap::new(),
            }),
        }
    }

    /// Creates a managed cgroup for the workload (or adopts the given one) and records it in
    /// the eBPF map.
    pub fn enrol(&self, name: &WorkloadName, at: &Placement) -> Result<Workload, WorkloadError> {
        let mut inner = self.inner.lock().expect("registry lock");
        let id = inner.next_id;
        let (dir, adopted) = match &at.cgroup {
            Some(dir) => {
                self.adoptable(dir, &inner)?;
                (dir.clone(), true)
            }
            None => {
                let dir = self
                    .dir
                    .join(format!("{id}-{}.{}", name.namespace, name.name));
                cgroup::ensure_dir(&dir)?;
                (dir, false)
            }
        };
        let meshd_nsid = at.netns.as_deref().and_then(meshd_nsid);
        let enrolled = cgroup::cgroup_id(&dir)
            .map_err(WorkloadError::from)
            .and_then(|cgroup_id| {
                self.maps.enrol(cgroup_id, id, meshd_nsid)?;
                Ok(cgroup_id)
            });
        let cgroup_id = match enrolled {
            Ok(c) => c,
            Err(e) => {
                if !adopted {
                    let _ = std::fs::remove_dir(&dir);
                }
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
            netns: at.netns.clone(),
            meshd_nsid,
            adopted,
        };
        inner.by_id.insert(id, w.clone());
        self.maps.enrolled(&w);
        tracing::info!(
            workload = %w.workload,
            id,
            cgroup = %w.cgroup.display(),
            netns = ?w.netns,
            "workload enrolled"
        );
        Ok(w)
    }

    /// Takes back what a meshd before this one enrolled with `meshd exec` and left behind when
    /// it was killed without its teardown: each `ID-NAMESPACE.NAME` cgroup of the workloads
    /// directory that still holds processes is enrolled again under its id and name, so its
    /// connects are captured again and its `meshd exec` can still unenrol it; an empty one is
    /// removed. Ids continue after the largest taken back. A cgroup whose processes live in
    /// another network namespace is left out, with a warning (meshd would have to listen
    /// inside it): enrol it again.
    pub fn readopt(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut inner = self.inner.lock().expect("registry lock");
        for dir in entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
            let Some((id, name)) = dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(parse_dir_name)
            else {
                continue;
            };
            let pids = cgroup::pids(&dir);
            if pids.is_empty() {
                let _ = std::fs::remove_dir(&dir);
                continue;
            }
            if !pids.iter().all(|p| in_own_netns(*p)) {
                tracing::warn!(cgroup = %dir.display(), workload = %name, "a previous meshd's workload runs in another network namespace; not taken back: enrol it again");
                continue;
            }
            let enrolled = cgroup::cgroup_id(&dir)
                .map_err(WorkloadError::from)
                .and_then(|c| Ok(self.maps.enrol(c, id, None).map(|()| c)?));
            let cgroup_id = match enrolled {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(cgroup = %dir.display(), error = %e, "cannot take back a previous meshd's workload");
                    continue;
                }
            };
            let w = Workload {
                id,
                workload: name.to_string(),
                namespace: name.namespace,
                name: name.name,
                cgroup: dir,
                cgroup_id,
                netns: None,
                meshd_nsid: None,
                adopted: false,
            };
            inner.next_id = inner.next_id.max(id.saturating_add(1));
            inner.by_id.insert(id, w.clone());
            self.maps.enrolled(&w);
            tracing::info!(workload = %w.workload, id, processes = pids.len(), "workload of a previous meshd taken back");
        }
    }

    fn adoptable(&self, dir: &Path, inner: &Inner) -> Result<(), WorkloadError> {
        if !dir.is_dir() {
            return Err(WorkloadError::NoCgroup(dir.into()));
        }
        if !dir.starts_with(&self.attach) || dir == self.attach {
            return Err(WorkloadError::OutsideAttach {
                path: dir.into(),
                attach: self.attach.clone(),
            });
        }
        if let Some(w) = inner.by_id.values().find(|w| w.cgroup == dir) {
            return Err(WorkloadError::Duplicate {
                path: dir.into(),
                workload: w.workload.clone(),
            });
        }
        Ok(())
    }

    /// Unenrols a workload. A cgroup meshd created must have emptied first, and is removed; an
    /// adopted cgroup (a pod's) is left to its owner.
    pub fn remove(&self, id: u32) -> Result<Workload, WorkloadError> {
        let mut inner = self.inner.lock().expect("registry lock");
        let w = inner.by_id.get(&id).ok_or(WorkloadError::Unknown(id))?;
        if !w.adopted {
            let pids = cgroup::pids(&w.cgroup).len();
            if pids > 0 {
                return Err(WorkloadError::Busy { id, pids });
            }
        }
        let w = inner.by_id.remove(&id).expect("checked above");
        self.maps.unenrol(w.cgroup_id);
        if !w.adopted {
            let _ = std::fs::remove_dir(&w.cgroup);
        }
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

    /// The workload enrolled as `namespace/name`, if any.
    pub fn find(&self, name: &WorkloadName) -> Option<Workload> {
        let inner = self.inner.lock().expect("registry lock");
        inner
            .by_id
            .values()
            .find(|w| w.namespace == name.namespace && w.name == name.name)
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

/// The id and name of a cgroup `enrol` named `ID-NAMESPACE.NAME` (the namespace is a DNS
/// label, without dots, as Kubernetes has it).
fn parse_dir_name(s: &str) -> Option<(u32, WorkloadName)> {
    let (id, rest) = s.split_once('-')?;
    let (ns, name) = rest.split_once('.')?;
    Some((
        id.parse().ok()?,
        WorkloadName::parse(&format!("{ns}/{name}")).ok()?,
    ))
}

/// Whether process `pid` shares meshd's network namespace.
fn in_own_netns(pid: u32) -> bool {
    let of = |p: &str| std::fs::read_link(p).ok();
    of(&format!("/proc/{pid}/ns/net")).is_some_and(|n| Some(n) == of("/proc/self/ns/net"))
}

/// The id the namespace at `netns` gives meshd's, or `None` (logged) when none can be had:
/// the kernel then cannot tell meshd's connections to that pod from others.
fn meshd_nsid(netns: &Path) -> Option<i32> {
    match crate::pods::netns::meshd_id_in(netns) {
        Ok(id) => Some(id),
        Err(e) => {
            tracing::warn!(error = %e, "PeerAuthentication STRICT will not be enforced in the kernel for this pod");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_names_give_back_id_and_name() {
        let (id, name) = parse_dir_name("12-shop.cart.v2").unwrap();
        assert_eq!((id, name.to_string()), (12, "shop/cart.v2".to_string()));
        for bad in ["shop.cart", "x-shop.cart", "3-shopcart", "3-Shop.cart"] {
            assert!(parse_dir_name(bad).is_none(), "{bad}");
        }
    }

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
