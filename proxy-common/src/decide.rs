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

/// Whether an address, as the kernel hands it over (`ip[0]` for IPv4; words in network byte
/// order), is loopback: 127.0.0.0/8, ::1 or ::ffff:127.0.0.0/104.
pub fn is_loopback(family: u32, ip: &[u32; 4]) -> bool {
    let v4 = |w: u32| w.to_ne_bytes()[0] == 127;
    if family == crate::AF_INET {
        return v4(ip[0]);
    }
    let mapped = ip[0] == 0 && ip[1] == 0 && ip[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff]);
    (ip[0] == 0 && ip[1] == 0 && ip[2] == 0 && ip[3] == u32::from_ne_bytes([0, 0, 0, 1]))
        || (mapped && v4(ip[3]))
}

/// A connect to loopback from a namespace other than meshd's stays where it is: inside a pod,
/// 127.0.0.1 is the pod's own containers, never another workload.
pub fn stays_in_pod(loopback: bool, in_meshd_netns: bool) -> bool {
    loopback && !in_meshd_netns
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
    fn loopback_addresses() {
        let v4 = |a: [u8; 4]| [u32::from_ne_bytes(a), 0, 0, 0];
        assert!(is_loopback(crate::AF_INET, &v4([127, 0, 0, 1])));
        assert!(is_loopback(crate::AF_INET, &v4([127, 9, 8, 7])));
        assert!(!is_loopback(crate::AF_INET, &v4([10, 0, 0, 127])));
        let one = u32::from_ne_bytes([0, 0, 0, 1]);
        assert!(is_loopback(crate::AF_INET6, &[0, 0, 0, one]));
        assert!(!is_loopback(crate::AF_INET6, &[one, 0, 0, one]));
        let ffff = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
        let lo = u32::from_ne_bytes([127, 0, 0, 1]);
        assert!(is_loopback(crate::AF_INET6, &[0, 0, ffff, lo]));
        assert!(!is_loopback(
            crate::AF_INET6,
            &[0, 0, ffff, u32::from_ne_bytes([10, 0, 0, 1])]
        ));
    }

    #[test]
    fn loopback_stays_in_a_pod_only() {
        assert!(stays_in_pod(true, false));
        assert!(!stays_in_pod(true, true));
        assert!(!stays_in_pod(false, false));
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
