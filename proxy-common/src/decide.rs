//! Pure decisions the eBPF hooks make, kept here so unit tests can drive them with plain values.

/// What connect4/6 does with a TCP connect from a managed cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectVerdict {
    /// Rewrite the destination to meshd's outbound listener.
    Redirect,
    /// The destination is excluded by port or CIDR, or is one of meshd's own ports: leave it.
    Excluded,
    /// meshd's heartbeat is stale and the node fails open: connect directly.
    FailOpen,
    /// meshd's heartbeat is stale and the node fails closed: refuse the connect (EPERM).
    Deny,
}

/// Heartbeat age past which meshd counts as gone. `heartbeat_ns == 0` means meshd never
/// beat, which is treated as stale.
pub fn heartbeat_stale(now_ns: u64, heartbeat_ns: u64, timeout_ns: u64) -> bool {
    heartbeat_ns == 0 || now_ns.saturating_sub(heartbeat_ns) > timeout_ns
}

/// Decide a managed connect. Exclusions win over the fail mode: an excluded destination never
/// depends on meshd, so a dead meshd must not block it even when failing closed.
pub fn connect_verdict(excluded: bool, stale: bool, fail_closed: bool) -> ConnectVerdict {
    match (excluded, stale, fail_closed) {
        (true, _, _) => ConnectVerdict::Excluded,
        (false, false, _) => ConnectVerdict::Redirect,
        (false, true, false) => ConnectVerdict::FailOpen,
        (false, true, true) => ConnectVerdict::Deny,
    }
}

/// Whether a socket 4-tuple is one end of the workload↔meshd hop on the outbound listener:
/// either the workload's socket (remote port is the listener) or meshd's accepted socket
/// (local port is the listener).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HopSide {
    Workload,
    Meshd,
    Neither,
}

pub fn hop_side(local_port: u32, remote_port: u32, outbound_port: u32) -> HopSide {
    if remote_port == outbound_port {
        HopSide::Workload
    } else if local_port == outbound_port {
        HopSide::Meshd
    } else {
        HopSide::Neither
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_beaten_is_stale() {
        assert!(heartbeat_stale(10, 0, 1_000));
    }

    #[test]
    fn fresh_and_stale_heartbeats() {
        assert!(!heartbeat_stale(1_500, 1_000, 1_000));
        assert!(!heartbeat_stale(2_000, 1_000, 1_000));
        assert!(heartbeat_stale(2_001, 1_000, 1_000));
        // A heartbeat written after `now` was read (clock race) is fresh, not stale.
        assert!(!heartbeat_stale(900, 1_000, 1_000));
    }

    #[test]
    fn verdicts() {
        use ConnectVerdict::*;
        assert_eq!(connect_verdict(false, false, false), Redirect);
        assert_eq!(connect_verdict(false, false, true), Redirect);
        assert_eq!(connect_verdict(false, true, false), FailOpen);
        assert_eq!(connect_verdict(false, true, true), Deny);
        assert_eq!(connect_verdict(true, true, true), Excluded);
        assert_eq!(connect_verdict(true, false, false), Excluded);
    }

    #[test]
    fn hop_sides() {
        assert_eq!(hop_side(40000, 15001, 15001), HopSide::Workload);
        assert_eq!(hop_side(15001, 40000, 15001), HopSide::Meshd);
        assert_eq!(hop_side(40000, 8080, 15001), HopSide::Neither);
    }
}
