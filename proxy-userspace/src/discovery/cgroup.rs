//! Where the kubelet put a pod's cgroup: probes the systemd and cgroupfs driver layouts for the
//! pod's QoS class, on cgroup v2 and on hybrid hosts (the v2 tree under `unified/`).
//!
//! The BPF programs attach to cgroup v2 only, so a candidate counts only if it is a v2 cgroup
//! (it has `cgroup.controllers`, which v1 hierarchies lack).

use std::path::{Path, PathBuf};

use super::DiscoveryError;

/// A pod's QoS class, as in `status.qosClass`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    pub const ALL: [Qos; 3] = [Qos::Burstable, Qos::BestEffort, Qos::Guaranteed];

    pub fn parse(s: &str) -> Option<Qos> {
        match s {
            "Guaranteed" => Some(Qos::Guaranteed),
            "Burstable" => Some(Qos::Burstable),
            "BestEffort" => Some(Qos::BestEffort),
            _ => None,
        }
    }

    fn dir(self) -> Option<&'static str> {
        match self {
            Qos::Guaranteed => None,
            Qos::Burstable => Some("burstable"),
            Qos::BestEffort => Some("besteffort"),
        }
    }
}

/// The pod cgroup's path below the hierarchy root, with the systemd cgroup driver:
/// `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice`, the uid's `-`
/// written as `_`; guaranteed pods sit directly under `kubepods.slice`.
pub fn systemd_path(uid: &str, qos: Qos) -> PathBuf {
    let uid = uid.replace('-', "_");
    let mut p = PathBuf::from("kubepods.slice");
    match qos.dir() {
        Some(q) => {
            p.push(format!("kubepods-{q}.slice"));
            p.push(format!("kubepods-{q}-pod{uid}.slice"));
        }
        None => p.push(format!("kubepods-pod{uid}.slice")),
    }
    p
}

/// The same with the cgroupfs driver: `kubepods/burstable/pod<uid>`, guaranteed pods as
/// `kubepods/pod<uid>`.
pub fn cgroupfs_path(uid: &str, qos: Qos) -> PathBuf {
    let mut p = PathBuf::from("kubepods");
    if let Some(q) = qos.dir() {
        p.push(q);
    }
    p.push(format!("pod{uid}"));
    p
}

/// Every place a pod's v2 cgroup may be, most likely first: the pod's QoS class (all three when
/// unknown), each driver, directly under `root` (cgroup v2, or the unified mount itself) and
/// under `root/unified` (a hybrid host's `/sys/fs/cgroup` given as the root).
pub fn candidates(root: &Path, uid: &str, qos: Option<Qos>) -> Vec<PathBuf> {
    let classes: Vec<Qos> = match qos {
        Some(q) => vec![q],
        None => Qos::ALL.to_vec(),
    };
    let mut out = Vec::new();
    for base in [root.to_path_buf(), root.join("unified")] {
        for q in &classes {
            out.push(base.join(systemd_path(uid, *q)));
            out.push(base.join(cgroupfs_path(uid, *q)));
        }
    }
    out
}

/// Whether `dir` is a cgroup v2 directory.
pub fn is_v2(dir: &Path) -> bool {
    dir.join("cgroup.controllers").is_file()
}

/// Finds the pod's v2 cgroup under `root`; the error lists every path probed.
pub fn resolve(
    root: &Path,
    pod: &str,
    uid: &str,
    qos: Option<Qos>,
) -> Result<PathBuf, DiscoveryError> {
    let probed = candidates(root, uid, qos);
    if let Some(found) = probed.iter().find(|p| is_v2(p)) {
        return Ok(found.clone());
    }
    Err(DiscoveryError::NoCgroup {
        pod: pod.to_string(),
        uid: uid.to_string(),
        probed,
    })
}

#[cfg(test)]
pub(crate) mod fixture {
    //! Cgroup and /proc trees as a kubelet and a container runtime leave them, in a tempdir.

    use std::path::{Path, PathBuf};

    /// Creates a v2 cgroup directory (with the files the kernel puts in every v2 cgroup).
    pub fn v2_dir(dir: &Path, pids: &[u32]) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        let procs: String = pids.iter().map(|p| format!("{p}\n")).collect();
        std::fs::write(dir.join("cgroup.procs"), procs).unwrap();
    }

    /// Creates a v1 cgroup directory (no `cgroup.controllers`).
    pub fn v1_dir(dir: &Path, pids: &[u32]) {
        std::fs::create_dir_all(dir).unwrap();
        let procs: String = pids.iter().map(|p| format!("{p}\n")).collect();
        std::fs::write(dir.join("cgroup.procs"), procs).unwrap();
        std::fs::write(dir.join("tasks"), "").unwrap();
    }

    /// A process's `ns/net` link in a fake host /proc.
    pub fn proc_netns(proc_root: &Path, pid: u32, inode: u64) -> PathBuf {
        let ns = proc_root.join(pid.to_string()).join("ns");
        std::fs::create_dir_all(&ns).unwrap();
        let link = ns.join("net");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(format!("net:[{inode}]"), &link).unwrap();
        link
    }

    /// A unique temporary directory, removed on drop.
    pub struct TempDir(pub PathBuf);

    impl TempDir {
        pub fn new(tag: &str) -> TempDir {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let p = std::env::temp_dir()
                .join(format!("meshd-discovery-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{fixture::*, *};

    const UID: &str = "3f1c2d4e-5a6b-4c7d-8e9f-0a1b2c3d4e5f";

    #[test]
    fn layouts() {
        assert_eq!(
            systemd_path(UID, Qos::Burstable),
            Path::new(
                "kubepods.slice/kubepods-burstable.slice/\
                 kubepods-burstable-pod3f1c2d4e_5a6b_4c7d_8e9f_0a1b2c3d4e5f.slice"
            )
        );
        assert_eq!(
            systemd_path(UID, Qos::BestEffort),
            Path::new(
                "kubepods.slice/kubepods-besteffort.slice/\
                 kubepods-besteffort-pod3f1c2d4e_5a6b_4c7d_8e9f_0a1b2c3d4e5f.slice"
            )
        );
        assert_eq!(
            systemd_path(UID, Qos::Guaranteed),
            Path::new("kubepods.slice/kubepods-pod3f1c2d4e_5a6b_4c7d_8e9f_0a1b2c3d4e5f.slice")
        );
        assert_eq!(
            cgroupfs_path(UID, Qos::Burstable),
            Path::new("kubepods/burstable/pod3f1c2d4e-5a6b-4c7d-8e9f-0a1b2c3d4e5f")
        );
        assert_eq!(
            cgroupfs_path(UID, Qos::BestEffort),
            Path::new("kubepods/besteffort/pod3f1c2d4e-5a6b-4c7d-8e9f-0a1b2c3d4e5f")
        );
        assert_eq!(
            cgroupfs_path(UID, Qos::Guaranteed),
            Path::new("kubepods/pod3f1c2d4e-5a6b-4c7d-8e9f-0a1b2c3d4e5f")
        );
    }

    /// A node's cgroup tree with one pod per QoS class, laid out by `driver` (systemd or
    /// cgroupfs) under `v2` (the v2 hierarchy's root). With `v1_root`, v1 hierarchies are added
    /// beside it, as on a hybrid host.
    fn node_tree(v2: &Path, v1_root: Option<&Path>, systemd: bool, uids: &[(&str, Qos)]) {
        v2_dir(v2, &[1]);
        for (uid, qos) in uids {
            let rel = if systemd {
                systemd_path(uid, *qos)
            } else {
                cgroupfs_path(uid, *qos)
            };
            // Parents (kubepods, the QoS level) and the pod's sandbox and one container.
            let mut dir = v2.to_path_buf();
            for c in rel.components() {
                dir.push(c);
                v2_dir(&dir, &[]);
            }
            v2_dir(&dir.join("cri-containerd-sandbox.scope"), &[4242]);
            if let Some(v1) = v1_root {
                for ctl in ["cpu,cpuacct", "memory", "pids"] {
                    v1_dir(&v1.join(ctl).join(&rel), &[4242]);
                }
            }
        }
    }

    const PODS: [(&str, Qos); 3] = [
        ("11111111-1111-1111-1111-111111111111", Qos::Guaranteed),
        ("22222222-2222-2222-2222-222222222222", Qos::Burstable),
        ("33333333-3333-3333-3333-333333333333", Qos::BestEffort),
    ];

    #[test]
    fn both_drivers_on_cgroup_v2() {
        for systemd in [true, false] {
            let t = TempDir::new("v2");
            node_tree(&t.0, None, systemd, &PODS);
            for (uid, qos) in PODS {
                let want = t.0.join(if systemd {
                    systemd_path(uid, qos)
                } else {
                    cgroupfs_path(uid, qos)
                });
                // With the QoS class known, and without (all classes probed).
                assert_eq!(resolve(&t.0, "ns/p", uid, Some(qos)).unwrap(), want);
                assert_eq!(resolve(&t.0, "ns/p", uid, None).unwrap(), want);
            }
        }
    }

    #[test]
    fn both_drivers_on_hybrid_hosts() {
        for systemd in [true, false] {
            // /sys/fs/cgroup is a tmpfs of v1 hierarchies; v2 is mounted at unified/.
            let t = TempDir::new("hybrid");
            let unified = t.0.join("unified");
            node_tree(&unified, Some(&t.0), systemd, &PODS);
            for (uid, qos) in PODS {
                let rel = if systemd {
                    systemd_path(uid, qos)
                } else {
                    cgroupfs_path(uid, qos)
                };
                // Root = the unified mount (what meshd finds by default), or the tmpfs above it.
                assert_eq!(
                    resolve(&unified, "ns/p", uid, Some(qos)).unwrap(),
                    unified.join(&rel)
                );
                assert_eq!(
                    resolve(&t.0, "ns/p", uid, Some(qos)).unwrap(),
                    unified.join(&rel)
                );
            }
        }
    }

    #[test]
    fn v1_only_cgroups_are_not_used() {
        // A v1 directory at the very path probed is not a place BPF can attach to.
        let t = TempDir::new("v1");
        let (uid, qos) = PODS[1];
        v1_dir(&t.0.join(cgroupfs_path(uid, qos)), &[7]);
        assert!(matches!(
            resolve(&t.0, "ns/p", uid, Some(qos)),
            Err(DiscoveryError::NoCgroup { .. })
        ));
    }

    #[test]
    fn a_missing_pod_names_every_path_probed() {
        let t = TempDir::new("missing");
        node_tree(&t.0, None, true, &PODS);
        let uid = "44444444-4444-4444-4444-444444444444";
        let err = resolve(&t.0, "shop/cart-7d9", uid, Some(Qos::Burstable)).unwrap_err();
        let DiscoveryError::NoCgroup { probed, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(probed.len(), 4, "{probed:?}");
        let msg = err.to_string();
        assert!(msg.contains("shop/cart-7d9"), "{msg}");
        assert!(
            msg.contains("kubepods-burstable-pod44444444_4444_4444_4444_444444444444.slice"),
            "{msg}"
        );
        assert!(
            msg.contains("kubepods/burstable/pod44444444-4444-4444-4444-444444444444"),
            "{msg}"
        );
    }
}
