//! The PeerAuthentication STRICT decision the cgroup_skb ingress program makes for a TCP SYN
//! to a managed workload, kept pure so unit tests can drive it.

/// `TCP_LISTEN` in `bpf_sock.state`.
pub const TCP_LISTEN: u32 = 10;

/// The local socket that sent a SYN, found by looking the reversed 4-tuple up on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sender {
    pub cgroup: u64,
    /// The sender's cgroup at the level of the receiving workload's enrolled cgroup (its own
    /// when that is the receiving socket's): a pod's containers are in child cgroups.
    pub workload_cgroup: u64,
    pub state: u32,
}

/// Whether a SYN to a STRICT port of the workload enrolled as `receiver_cgroup` may pass.
///
/// It passes only when it comes from a socket on this node that belongs to meshd (the tunnel's
/// inbound side, or meshd connecting for a local workload after authenticating it) or to the
/// receiving workload itself (a workload talking to itself never leaves it). A SYN with no
/// local sender came from another machine in plaintext (mesh traffic from other nodes arrives
/// through the tunnel, on meshd's port): it is dropped. A listener that happens to match the
/// reversed tuple is not a sender.
pub fn strict_syn_allowed(sender: Option<Sender>, receiver_cgroup: u64, meshd_cgroup: u64) -> bool {
    match sender {
        Some(s) if s.state != TCP_LISTEN => {
            s.cgroup == meshd_cgroup || s.workload_cgroup == receiver_cgroup
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESHD: u64 = 7;
    const WORKLOAD: u64 = 42;

    fn from(cgroup: u64) -> Option<Sender> {
        Some(Sender {
            cgroup,
            workload_cgroup: cgroup,
            state: 2,
        })
    }

    #[test]
    fn only_meshd_and_the_workload_itself_pass() {
        assert!(strict_syn_allowed(from(MESHD), WORKLOAD, MESHD));
        assert!(strict_syn_allowed(from(WORKLOAD), WORKLOAD, MESHD));
        assert!(
            !strict_syn_allowed(from(99), WORKLOAD, MESHD),
            "another local process"
        );
        assert!(
            !strict_syn_allowed(None, WORKLOAD, MESHD),
            "another machine"
        );
        let listener = Some(Sender {
            cgroup: MESHD,
            workload_cgroup: MESHD,
            state: TCP_LISTEN,
        });
        assert!(!strict_syn_allowed(listener, WORKLOAD, MESHD));
        let container = Some(Sender {
            cgroup: 43,
            workload_cgroup: WORKLOAD,
            state: 2,
        });
        assert!(
            strict_syn_allowed(container, WORKLOAD, MESHD),
            "a container of the pod (a child cgroup)"
        );
    }
}
