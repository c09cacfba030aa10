//! Every map the programs share with each other and with userspace, declared once.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray, SockHash},
};
use proxy_common::{
    ConnStats, Counter, Ipv4Prefix, Ipv6Prefix, NetnsEndpoint, OrigDst, ProxyConfig, SockPair,
    SpliceCounts, WorkloadRef,
};

/// How many connections the per-connection maps track before LRU eviction.
const CONNECTIONS: u32 = 65_536;

#[map]
pub static CONFIG: Array<ProxyConfig> = Array::with_max_entries(1, 0);

/// CLOCK_MONOTONIC nanoseconds of meshd's last heartbeat.
#[map]
pub static HEARTBEAT: Array<u64> = Array::with_max_entries(1, 0);

/// Managed cgroup id → workload. A managed cgroup's descendants are managed too (a pod's
/// containers live in child cgroups of the pod's).
#[map]
pub static MANAGED: HashMap<u64, WorkloadRef> = HashMap::with_max_entries(16_384, 0);

/// Destination ports (host order) never redirected: meshd's own ports and configured ones.
#[map]
pub static EXCLUDED_PORTS: HashMap<u32, u32> = HashMap::with_max_entries(1_024, 0);

#[map]
pub static EXCLUDED_V4: LpmTrie<Ipv4Prefix, u32> = LpmTrie::with_max_entries(1_024, 0);

#[map]
pub static EXCLUDED_V6: LpmTrie<Ipv6Prefix, u32> = LpmTrie::with_max_entries(1_024, 0);

/// Workload socket cookie → original destination, written by connect4/6.
#[map]
pub static ORIG_BY_COOKIE: LruHashMap<u64, OrigDst> = LruHashMap::with_max_entries(CONNECTIONS, 0);

/// Workload socket's local address in its network namespace (= the peer address of meshd's
/// accepted socket) → original destination, written by sockops when the workload's connect
/// completes.
#[map]
pub static ORIG_BY_TUPLE: LruHashMap<NetnsEndpoint, OrigDst> =
    LruHashMap::with_max_entries(CONNECTIONS, 0);

/// Both ends of every workload↔meshd hop, so sk_msg can hand bytes straight across.
#[map]
pub static SOCKHASH: SockHash<SockPair> = SockHash::with_max_entries(CONNECTIONS, 0);

/// Socket 4-tuple → cookie for meshd's sockets in the SOCKHASH (sk_msg cannot read cookies),
/// and only for those.
#[map]
pub static PAIR_COOKIE: LruHashMap<SockPair, u64> = LruHashMap::with_max_entries(CONNECTIONS, 0);

/// Workload socket (its 4-tuple on the hop) → bytes sk_msg handed to meshd and bytes it
/// spliced to meshd's upstream socket. Created by sockops for a workload socket in the
/// SOCKHASH, then written by sk_msg only.
#[map]
pub static HANDED: LruHashMap<SockPair, SpliceCounts> =
    LruHashMap::with_max_entries(CONNECTIONS, 0);

/// Workload socket → bytes meshd has forwarded upstream from it. Written by meshd only, once
/// the upstream socket is in `SPLICE_TO`; when it equals the handed count, meshd holds none of
/// the workload's bytes, and sk_msg sends the next ones straight out of the upstream socket.
///
/// The maps meshd rewrites while a program reads them are not preallocated: a preallocated
/// element replaced by an update is reused at once, and a program holding it could read
/// another key's value; these are freed only after every reader is done.
#[map]
pub static FORWARDED: HashMap<SockPair, u64> =
    HashMap::with_max_entries(CONNECTIONS, BPF_F_NO_PREALLOC);

/// Workload socket → meshd's upstream socket of the same connection. The reply verdict is
/// attached here: every byte arriving on one of these upstream sockets passes through it.
#[map]
pub static SPLICE_TO: SockHash<SockPair> = SockHash::with_max_entries(CONNECTIONS, 0);

/// Upstream socket cookie → the SOCKHASH key of meshd's accepted socket of the same connection,
/// the replies' way out. Written once by meshd, before the upstream socket joins `SPLICE_TO`.
#[map]
pub static REPLY_TO: HashMap<u64, SockPair> =
    HashMap::with_max_entries(CONNECTIONS, BPF_F_NO_PREALLOC);

/// Upstream socket cookie → reply bytes meshd has written to the workload. Written by meshd
/// only; when it equals the handed count of `REPLY_COUNTS`, meshd holds none of the replies,
/// and the verdict splices the next ones.
#[map]
pub static REPLY_FORWARDED: HashMap<u64, u64> =
    HashMap::with_max_entries(CONNECTIONS, BPF_F_NO_PREALLOC);

/// meshd's accepted socket of a spliced connection (its SOCKHASH key) → bytes sk_msg saw it
/// send: meshd's writes and the spliced replies. Created by meshd with the splice; meshd waits
/// on it before passing on the end of the replies.
#[map]
pub static REPLY_SENT: HashMap<SockPair, u64> =
    HashMap::with_max_entries(CONNECTIONS, BPF_F_NO_PREALLOC);

/// Upstream socket cookie → reply bytes the verdict handed to meshd and spliced past it.
/// Created by meshd at zero, then written by the verdict only.
#[map]
pub static REPLY_COUNTS: HashMap<u64, SpliceCounts> =
    HashMap::with_max_entries(CONNECTIONS, BPF_F_NO_PREALLOC);

/// Cookie of each of meshd's own sockets → its counters.
#[map]
pub static CONN_STATS: LruPerCpuHashMap<u64, ConnStats> =
    LruPerCpuHashMap::with_max_entries(CONNECTIONS, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// PeerAuthentication: (workload, port) → `PEER_AUTH_STRICT` or `PEER_AUTH_OPEN`; port 0 is the
/// workload-wide mode. Filled by meshd from the config and the enrolled workloads.
#[map]
pub static PEER_AUTH: HashMap<proxy_common::PeerAuthKey, u32> =
    HashMap::with_max_entries(16_384, 0);

/// (source workload, original destination) pairs an identity-only DENY refuses at connect.
#[map]
pub static CONNECT_DENY: HashMap<proxy_common::DenyKey, u32> = HashMap::with_max_entries(65_536, 0);

#[map]
pub static POLICY_COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(proxy_common::PolicyCounter::COUNT, 0);
