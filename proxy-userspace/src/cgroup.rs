//! cgroup v2 plumbing: finding the cgroup2 mount, the attach-point cgroup meshd owns, the
//! unmanaged child meshd runs in, and per-workload cgroups.

use std::{
    fs,
    io::{self, ErrorKind},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup2 filesystem is mounted (looked in /proc/self/mountinfo); mount one with \
         `mount -t cgroup2 none /sys/fs/cgroup/unified` or boot with systemd.unified_cgroup_hierarchy"
    )]
    NoCgroup2,
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "{path} is not inside the cgroup2 mount {mount}; pass a directory under it to --cgroup"
    )]
    OutsideMount { path: PathBuf, mount: PathBuf },
    #[error("creating cgroup {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("moving pid {pid} into cgroup {path}: {source}")]
    Move {
        pid: u32,
        path: PathBuf,
        source: io::Error,
    },
}

/// The attach point `--cgroup` names: a path under the cgroup2 `mount`, or relative to it
/// (`--cgroup meshd-test`); `meshd` under the mount without one.
pub fn attach_point(mount: &Path, given: Option<&Path>) -> PathBuf {
    match given {
        Some(p) if p.is_relative() => mount.join(p),
        Some(p) => p.to_path_buf(),
        None => mount.join("meshd"),
    }
}

/// The first cgroup2 mount point in /proc/self/mountinfo.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let path = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.into(),
        source,
    })?;
    parse_cgroup2_mount(&text).ok_or(CgroupError::NoCgroup2)
}

/// Finds the mount point of the first `cgroup2` entry in mountinfo text.
pub fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // id parent maj:min root mountpoint options [optional...] - fstype source superopts
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mountpoint = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(unescape(mountpoint)))
    })
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The cgroup2 path of a process (the `0::` line of /proc/PID/cgroup), relative to the mount.
pub fn own_cgroup(mount: &Path) -> Result<PathBuf, CgroupError> {
    let path = Path::new("/proc/self/cgroup");
    let text = fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.into(),
        source,
    })?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("/");
    Ok(mount.join(rel.trim_start_matches('/')))
}

/// A cgroup's id as BPF sees it: the inode number of its directory.
pub fn cgroup_id(dir: &Path) -> Result<u64, CgroupError> {
    fs::metadata(dir)
        .map(|m| m.ino())
        .map_err(|source| CgroupError::Read {
            path: dir.into(),
            source,
        })
}

/// Creates `dir` if missing. Returns whether this call created it.
pub fn ensure_dir(dir: &Path) -> Result<bool, CgroupError> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(CgroupError::Create {
            path: dir.into(),
            source,
        }),
    }
}

/// Moves a process (0 = the caller) into the cgroup at `dir`.
pub fn move_pid(dir: &Path, pid: u32) -> Result<(), CgroupError> {
    fs::write(dir.join("cgroup.procs"), pid.to_string()).map_err(|source| CgroupError::Move {
        pid,
        path: dir.into(),
        source,
    })
}

/// The pids currently in a cgroup.
pub fn pids(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Empties a cgroup into `refuge` and removes it. Best effort: reports what failed.
pub fn remove(dir: &Path, refuge: &Path) -> io::Result<()> {
    // A process that is still exiting keeps its cgroup busy for a moment: retry for up to 1 s.
    let mut attempts = 20;
    loop {
        for pid in pids(dir) {
            let _ = move_pid(refuge, pid);
        }
        match fs::remove_dir(dir) {
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempts > 1 => {
                attempts -= 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => return Err(e),
            Ok(()) => return Ok(()),
        }
    }
}

/// The cgroups meshd works with on this node.
#[derive(Debug)]
pub struct NodeCgroups {
    /// Where the programs are attached; managed and unmanaged cgroups live below it.
    pub attach: PathBuf,
    /// Whether meshd created `attach`, or it is meshd's default one (left by a meshd that was
    /// killed): meshd then removes it on shutdown.
    pub created_attach: bool,
    /// The unmanaged child meshd itself runs in.
    pub daemon: PathBuf,
    /// Parent of per-workload cgroups.
    pub workloads: PathBuf,
    /// The cgroup meshd was started in; leftover processes go back there on shutdown.
    pub origin: PathBuf,
}

impl NodeCgroups {
    /// Creates (or reuses) the attach point and its children and moves meshd into its own
    /// unmanaged child.
    pub fn setup(attach: Option<&Path>) -> Result<NodeCgroups, CgroupError> {
        let mount = cgroup2_mount()?;
        let attach = attach_point(&mount, attach);
        let climbs = attach
            .components()
            .any(|c| c == std::path::Component::ParentDir);
        if climbs || !attach.starts_with(&mount) {
            return Err(CgroupError::OutsideMount {
                path: attach,
                mount,
            });
        }
        let origin = own_cgroup(&mount)?;
        let created_attach = ensure_dir(&attach)? || attach == mount.join("meshd");
        let daemon = attach.join("meshd-daemon");
        let workloads = attach.join("workloads");
        ensure_dir(&daemon)?;
        ensure_dir(&workloads)?;
        move_pid(&daemon, std::process::id())?;
        Ok(NodeCgroups {
            attach,
            created_attach,
            daemon,
            workloads,
            origin,
        })
    }

    /// Moves meshd back where it came from and removes every cgroup it created.
    pub fn teardown(&self) {
        let refuge = if self.origin.starts_with(&self.attach) {
            self.attach.parent().unwrap_or(&self.attach).to_path_buf()
        } else {
            self.origin.clone()
        };
        if let Ok(entries) = fs::read_dir(&self.workloads) {
            for e in entries.flatten().filter(|e| e.path().is_dir()) {
                if let Err(err) = remove(&e.path(), &refuge) {
                    tracing::warn!(cgroup = %e.path().display(), %err, "could not remove workload cgroup");
                }
            }
        }
        let mut dirs = vec![self.daemon.clone(), self.workloads.clone()];
        if self.created_attach {
            dirs.push(self.attach.clone());
        }
        for dir in dirs {
            if let Err(err) = remove(&dir, &refuge) {
                tracing::warn!(cgroup = %dir.display(), %err, "could not remove cgroup");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attach_point_may_be_named_relative_to_the_mount() {
        let mount = Path::new("/sys/fs/cgroup/unified");
        let at = |p: Option<&str>| attach_point(mount, p.map(Path::new));
        assert_eq!(at(None), mount.join("meshd"));
        assert_eq!(at(Some("meshd-test")), mount.join("meshd-test"));
        assert_eq!(at(Some("kubepods/meshd")), mount.join("kubepods/meshd"));
        assert_eq!(at(Some("/sys/fs/cgroup/unified/x")), mount.join("x"));
    }

    #[test]
    fn finds_cgroup2_in_hybrid_layout() {
        let text = "\
30 24 0:26 / /sys/fs/cgroup rw,nosuid shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,name=systemd";
        assert_eq!(
            parse_cgroup2_mount(text),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn finds_cgroup2_in_unified_layout_with_optional_fields() {
        let text = "35 24 0:30 / /sys/fs/cgroup rw,nosuid shared:4 master:1 - cgroup2 cgroup2 rw";
        assert_eq!(
            parse_cgroup2_mount(text),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
    }

    #[test]
    fn no_cgroup2() {
        let text = "32 30 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu";
        assert_eq!(parse_cgroup2_mount(text), None);
    }
}
