//! A pod's network namespace: `<host-proc>/<pid>/ns/net` of any process in the pod's cgroup or
//! its container cgroups. The sandbox ("pause") process is the usual one found, but any
//! container's process shares the pod's namespace, so runtimes without a pause process work too.

use std::path::{Path, PathBuf};

use super::DiscoveryError;

/// How deep below the pod cgroup to look (pod → container → a runtime's own sub-cgroups).
const MAX_DEPTH: usize = 4;

/// The process ids in a cgroup and its sub-cgroups, the pod level first.
pub fn pids(cgroup: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    collect(cgroup, 0, &mut out);
    out
}

fn collect(dir: &Path, depth: usize, out: &mut Vec<u32>) {
    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    if depth >= MAX_DEPTH {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut children: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    children.sort();
    for c in children {
        collect(&c, depth + 1, out);
    }
}

/// The network namespace of the pod whose cgroup is `cgroup`, as a path under `host_proc`.
pub fn resolve(pod: &str, cgroup: &Path, host_proc: &Path) -> Result<PathBuf, DiscoveryError> {
    pids(cgroup)
        .into_iter()
        .map(|pid| host_proc.join(pid.to_string()).join("ns/net"))
        // The link itself (readlink works for a live process, even one we may not enter).
        .find(|p| std::fs::symlink_metadata(p).is_ok())
        .ok_or_else(|| DiscoveryError::NoNetns {
            pod: pod.to_string(),
            cgroup: cgroup.to_path_buf(),
            host_proc: host_proc.to_path_buf(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::cgroup::fixture::*;

    #[test]
    fn finds_a_process_of_the_pod() {
        let t = TempDir::new("netns");
        let pod = t.0.join("cg/kubepods/burstable/podx");
        v2_dir(&pod, &[]);
        v2_dir(&pod.join("sandbox"), &[100]);
        v2_dir(&pod.join("app"), &[101, 102]);
        let proc_root = t.0.join("proc");
        proc_netns(&proc_root, 100, 4026532001);
        let want = proc_netns(&proc_root, 101, 4026532001);
        assert_eq!(resolve("ns/p", &pod, &proc_root).unwrap(), want);
        assert_eq!(pids(&pod), vec![101, 102, 100]);
    }

    #[test]
    fn without_a_pause_process_any_container_will_do() {
        let t = TempDir::new("netns-nopause");
        let pod = t.0.join("cg/podx");
        v2_dir(&pod, &[]);
        v2_dir(&pod.join("app"), &[7, 8]);
        let proc_root = t.0.join("proc");
        // pid 7 has exited since cgroup.procs was read.
        let want = proc_netns(&proc_root, 8, 4026532002);
        assert_eq!(resolve("ns/p", &pod, &proc_root).unwrap(), want);
    }

    #[test]
    fn no_process_yet() {
        let t = TempDir::new("netns-empty");
        let pod = t.0.join("cg/podx");
        v2_dir(&pod, &[]);
        let err = resolve("shop/cart", &pod, &t.0.join("proc")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("shop/cart") && msg.contains("cg/podx"),
            "{msg}"
        );
    }
}
