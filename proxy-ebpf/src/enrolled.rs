//! Which enrolled workload a cgroup belongs to: its own entry in `MANAGED`, or its nearest
//! enrolled ancestor's (a pod is enrolled by its own cgroup while its containers run in child
//! cgroups).

use proxy_common::WorkloadRef;

use crate::maps::MANAGED;

/// How deep below the root an enrolled cgroup's descendants are searched for.
const MAX_CGROUP_DEPTH: i32 = 16;

/// Where a cgroup's workload was found.
pub struct Enrolled {
    pub workload: WorkloadRef,
    /// The enrolled cgroup's id.
    pub cgroup: u64,
    /// The enrolled cgroup's level below the root, when it is an ancestor of the one asked
    /// about (`None`: that cgroup itself).
    pub level: Option<i32>,
}

/// The workload of cgroup `own`; `ancestor(level)` gives its ancestor at each level below the
/// root (0 past the hierarchy's depth), from the helper the program type allows.
#[inline(always)]
pub fn find(own: u64, ancestor: impl Fn(i32) -> u64) -> Option<Enrolled> {
    // SAFETY: read-only lookups, values copied out.
    if let Some(w) = unsafe { MANAGED.get(own) } {
        return Some(Enrolled {
            workload: *w,
            cgroup: own,
            level: None,
        });
    }
    let mut level = 1;
    while level < MAX_CGROUP_DEPTH {
        let id = ancestor(level);
        if id == 0 || id == own {
            return None;
        }
        if let Some(w) = unsafe { MANAGED.get(id) } {
            return Some(Enrolled {
                workload: *w,
                cgroup: id,
                level: Some(level),
            });
        }
        level += 1;
    }
    None
}
