//! Types shared by meshd's eBPF programs and its userspace daemon: map keys, map values and
//! the numbering of counters, defined once with explicit padding so both sides agree on layout.
#![no_std]

/// Address family numbers as the kernel reports them in `bpf_sock_addr`, `bpf_sock_ops` and
/// `sk_msg_md`.
pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;

/// `SOL_IP` / `SO_ORIGINAL_DST` and `SOL_IPV6` / `IP6T_SO_ORIGINAL_DST`, answered by the
/// `cgroup/getsockopt` program for meshd's accepted sockets.
pub const SOL_IP: i32 = 0;
pub const SOL_IPV6: i32 = 41;
pub const SO_ORIGINAL_DST: i32 = 80;

/// Flags in [`ProxyConfig::flags`].
pub const CFG_SOCKMAP: u32 = 1 << 0;
pub const CFG_FAIL_CLOSED: u32 = 1 << 1;
/// Kernel splice of opaque connections: sk_msg counts the bytes it hands meshd.
pub const CFG_SPLICE: u32 = 1 << 2;

/// Daemon settings the programs read on every hook; a one-element array map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Cgroup id (inode of the cgroup directory) that meshd itself runs in.
    pub meshd_cgroup: u64,
    /// After this many nanoseconds without a heartbeat the daemon is considered gone.
    pub heartbeat_timeout_ns: u64,
    /// meshd's outbound listener port, host byte order.
    pub outbound_port: u32,
    /// `CFG_*` bits.
    pub flags: u32,
    /// Cookie of meshd's network namespace. Loopback connects from any other namespace (a
    /// pod's) stay in it.
    pub meshd_netns: u64,
}

/// `WorkloadRef::meshd_nsid` of a workload in meshd's own network namespace.
pub const NSID_SAME: i32 = -1;

/// A managed cgroup's entry: which workload the cgroup's sockets belong to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkloadRef {
    pub workload_id: u32,
    /// The id the workload's network namespace gives meshd's (its `nsid`), so that the kernel
    /// can look meshd's sockets up from a pod; `NSID_SAME` when the workload shares meshd's
    /// namespace or no id is known.
    pub meshd_nsid: i32,
}

/// One IPv4 or IPv6 endpoint. IPv4 addresses sit in `ip[0]`, the rest zero. Addresses are in
/// network byte order as the kernel hands them over; `port` is in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub ip: [u32; 4],
    pub port: u32,
    pub family: u32,
}

/// Where a redirected connection was going before connect4/6 rewrote it, and who made it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    pub dst: Endpoint,
    pub workload_id: u32,
    pub _pad: u32,
}

/// An endpoint qualified by its network namespace (the kernel's netns cookie), so that pods
/// whose loopback addresses and ports coincide never share a map entry. Keys ORIG_BY_TUPLE.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NetnsEndpoint {
    pub netns: u64,
    pub ep: Endpoint,
}

/// A socket's own 4-tuple, as seen from that socket (local first), in its network namespace.
/// Keys the SOCKHASH.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockPair {
    pub local_ip: [u32; 4],
    pub remote_ip: [u32; 4],
    pub local_port: u32,
    pub remote_port: u32,
    pub family: u32,
    pub _pad: u32,
    /// Network namespace cookie of the socket (both ends of a hop share it).
    pub netns: u64,
}

impl SockPair {
    /// The same connection as seen from the other end.
    pub fn peer(&self) -> SockPair {
        SockPair {
            local_ip: self.remote_ip,
            remote_ip: self.local_ip,
            local_port: self.remote_port,
            remote_port: self.local_port,
            family: self.family,
            _pad: 0,
            netns: self.netns,
        }
    }
}

/// What the kernel counted for one direction of a spliced connection: bytes handed to meshd to
/// carry, and bytes spliced past it. For the workload's sends (sk_msg, keyed by the workload
/// socket) the splice sends them out of meshd's upstream socket; for the replies (the upstream
/// socket's stream verdict, keyed by its cookie) out of meshd's accepted socket. Written by eBPF
/// only; meshd reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpliceCounts {
    pub handed: u64,
    pub spliced: u64,
}

/// Per-socket counters for meshd's own sockets (downstream accepted and upstream connected),
/// kept in a per-CPU LRU hash keyed by socket cookie.
///
/// The `*_bytes`/`*_packets` fields are additive per CPU (userspace sums them); the fields
/// copied from `bpf_sock_ops` are absolute snapshots (userspace takes the maximum).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Bytes and packets leaving this socket: skb lengths on egress plus sk_msg payloads.
    pub tx_bytes: u64,
    pub tx_packets: u64,
    /// Bytes and packets arriving at this socket: skb lengths on ingress plus redirected
    /// sk_msg payloads from its sockmap peer.
    pub rx_bytes: u64,
    pub rx_packets: u64,
    /// Smoothed RTT in microseconds, from sockops (`srtt_us >> 3`).
    pub srtt_us: u64,
    /// Retransmitted segments over the socket's life (`total_retrans`).
    pub retransmits: u64,
    /// TCP payload bytes acknowledged by the peer / received in order (`bytes_acked`,
    /// `bytes_received`).
    pub bytes_acked: u64,
    pub bytes_received: u64,
}

/// Index of each counter in the per-CPU `COUNTERS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// connect4/6 rewrote a managed socket's destination to meshd.
    Redirect = 0,
    /// A managed connect was left alone because the destination is excluded.
    Excluded = 1,
    /// The heartbeat was stale and the connect went straight to its destination.
    FailOpen = 2,
    /// The heartbeat was stale and the connect was refused (fail-closed mode).
    FailClosed = 3,
    /// sk_msg handed data straight to the peer socket.
    SockmapRedirect = 4,
    /// sk_msg found no peer in the SOCKHASH; the data took the TCP path.
    SockmapMiss = 5,
    /// getsockopt(SO_ORIGINAL_DST) answered from the map.
    OrigDstHit = 6,
    /// getsockopt(SO_ORIGINAL_DST) found nothing for the socket.
    OrigDstMiss = 7,
    /// sk_msg sent a workload's data straight out of meshd's upstream socket (kernel splice).
    Splice = 8,
    /// The stream verdict sent a reply straight out of meshd's accepted socket (kernel splice).
    ReplySplice = 9,
}

impl Counter {
    pub const COUNT: u32 = 10;
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::Redirect,
        Counter::Excluded,
        Counter::FailOpen,
        Counter::FailClosed,
        Counter::SockmapRedirect,
        Counter::SockmapMiss,
        Counter::OrigDstHit,
        Counter::OrigDstMiss,
        Counter::Splice,
        Counter::ReplySplice,
    ];

    /// Name used for the `meshd_ebpf_events_total{event=...}` label.
    pub fn name(self) -> &'static str {
        match self {
            Counter::Redirect => "redirect",
            Counter::Excluded => "excluded",
            Counter::FailOpen => "fail_open",
            Counter::FailClosed => "fail_closed",
            Counter::SockmapRedirect => "sockmap_redirect",
            Counter::SockmapMiss => "sockmap_miss",
            Counter::OrigDstHit => "orig_dst_hit",
            Counter::OrigDstMiss => "orig_dst_miss",
            Counter::Splice => "sockmap_splice",
            Counter::ReplySplice => "sockmap_reply_splice",
        }
    }
}

/// Key of the LPM tries of excluded IPv4 / IPv6 destinations: prefix length then address
/// bytes in network order, as `BPF_MAP_TYPE_LPM_TRIE` expects.
pub type Ipv4Prefix = [u8; 4];
pub type Ipv6Prefix = [u8; 16];

/// Map names, shared so the loader and the programs cannot drift apart.
pub mod maps {
    pub const CONFIG: &str = "CONFIG";
    pub const HEARTBEAT: &str = "HEARTBEAT";
    pub const MANAGED: &str = "MANAGED";
    pub const EXCLUDED_PORTS: &str = "EXCLUDED_PORTS";
    pub const EXCLUDED_V4: &str = "EXCLUDED_V4";
    pub const EXCLUDED_V6: &str = "EXCLUDED_V6";
    pub const ORIG_BY_COOKIE: &str = "ORIG_BY_COOKIE";
    pub const ORIG_BY_TUPLE: &str = "ORIG_BY_TUPLE";
    pub const SOCKHASH: &str = "SOCKHASH";
    pub const PAIR_COOKIE: &str = "PAIR_COOKIE";
    pub const CONN_STATS: &str = "CONN_STATS";
    pub const HANDED: &str = "HANDED";
    pub const FORWARDED: &str = "FORWARDED";
    pub const SPLICE_TO: &str = "SPLICE_TO";
    pub const REPLY_TO: &str = "REPLY_TO";
    pub const REPLY_FORWARDED: &str = "REPLY_FORWARDED";
    pub const REPLY_SENT: &str = "REPLY_SENT";
    pub const REPLY_COUNTS: &str = "REPLY_COUNTS";
    pub const COUNTERS: &str = "COUNTERS";
}

const _: () = {
    assert!(core::mem::size_of::<ProxyConfig>() == 32);
    assert!(core::mem::size_of::<WorkloadRef>() == 8);
    assert!(core::mem::size_of::<Endpoint>() == 24);
    assert!(core::mem::size_of::<OrigDst>() == 32);
    assert!(core::mem::size_of::<SockPair>() == 56);
    assert!(core::mem::size_of::<NetnsEndpoint>() == 32);
    assert!(core::mem::size_of::<ConnStats>() == 64);
    assert!(core::mem::size_of::<SpliceCounts>() == 16);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: every type is #[repr(C)], made only of integers, with explicit padding fields,
    // so any bit pattern is valid and there are no uninitialised bytes.
    unsafe impl aya::Pod for ProxyConfig {}
    unsafe impl aya::Pod for WorkloadRef {}
    unsafe impl aya::Pod for Endpoint {}
    unsafe impl aya::Pod for OrigDst {}
    unsafe impl aya::Pod for SockPair {}
    unsafe impl aya::Pod for NetnsEndpoint {}
    unsafe impl aya::Pod for ConnStats {}
    unsafe impl aya::Pod for SpliceCounts {}
}

pub mod decide;

/// Key of the `PEER_AUTH` map: a managed workload (its id in `MANAGED`) and one of its ports
/// (host order). Port 0 holds the workload-wide mode; a port entry overrides it
/// (`portLevelMtls`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerAuthKey {
    pub workload_id: u32,
    pub port: u32,
}

/// `PEER_AUTH` values: the port refuses plaintext from outside the mesh (STRICT), or not.
pub const PEER_AUTH_OPEN: u32 = 0;
pub const PEER_AUTH_STRICT: u32 = 1;

/// Key of the `CONNECT_DENY` map: a managed source workload and an original destination
/// (as connect4/6 see it) that an AuthorizationPolicy DENY refuses whatever else is true.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DenyKey {
    pub workload_id: u32,
    pub _pad: u32,
    pub dst: Endpoint,
}

/// Index of each counter in the per-CPU `POLICY_COUNTERS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyCounter {
    /// A SYN to a STRICT workload port from outside the mesh was dropped (cgroup_skb ingress).
    PeerAuthRefused = 0,
    /// A managed connect was refused with EPERM by an identity-only DENY (connect4/6).
    ConnectDenied = 1,
}

impl PolicyCounter {
    pub const COUNT: u32 = 2;
    pub const ALL: [PolicyCounter; Self::COUNT as usize] =
        [PolicyCounter::PeerAuthRefused, PolicyCounter::ConnectDenied];
}

/// Names of the policy enforcement maps.
pub mod policy_maps {
    pub const PEER_AUTH: &str = "PEER_AUTH";
    pub const CONNECT_DENY: &str = "CONNECT_DENY";
    pub const POLICY_COUNTERS: &str = "POLICY_COUNTERS";
}

const _: () = {
    assert!(core::mem::size_of::<PeerAuthKey>() == 8);
    assert!(core::mem::size_of::<DenyKey>() == 8 + core::mem::size_of::<Endpoint>());
};

#[cfg(feature = "user")]
mod policy_pod {
    use super::*;
    // SAFETY: #[repr(C)] integers with explicit padding, as above.
    unsafe impl aya::Pod for PeerAuthKey {}
    unsafe impl aya::Pod for DenyKey {}
}

pub mod peer_auth;
