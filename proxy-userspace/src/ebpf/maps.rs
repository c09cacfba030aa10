//! Typed access to the maps userspace reads and writes while running.

use std::{net::SocketAddr, sync::Mutex};

use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap};
use proxy_common::{ConnStats, Counter, NetnsEndpoint, OrigDst, WorkloadRef};
use serde::Serialize;

use super::{endpoint_of, monotonic_ns};

pub struct DatapathMaps {
    pub(super) heartbeat: Mutex<Array<MapData, u64>>,
    pub(super) managed: Mutex<HashMap<MapData, u64, WorkloadRef>>,
    pub(super) orig_by_tuple: HashMap<MapData, NetnsEndpoint, OrigDst>,
    pub(super) conn_stats: Mutex<PerCpuHashMap<MapData, u64, ConnStats>>,
    pub(super) counters: PerCpuArray<MapData, u64>,
    /// PeerAuthentication and connect-time DENY maps.
    pub(super) policy: std::sync::Arc<super::PolicyMaps>,
    /// Called for each workload enrolled, so its kernel policy is in place before it runs.
    pub(super) on_enrol: std::sync::OnceLock<EnrolHook>,
    /// Kernel splice of opaque connections (with the sockmap, unless switched off).
    pub(super) splice: Option<std::sync::Arc<super::SpliceMaps>>,
}

/// What runs when a workload is enrolled.
pub type EnrolHook = Box<dyn Fn(&crate::workloads::Workload) + Send + Sync>;

/// One socket's kernel counters, summed (traffic) or maxed (snapshots) over CPUs.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ConnCounters {
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub srtt_us: u64,
    pub retransmits: u64,
    pub bytes_acked: u64,
    pub bytes_received: u64,
}

impl ConnCounters {
    pub fn merge<'a>(per_cpu: impl IntoIterator<Item = &'a ConnStats>) -> ConnCounters {
        per_cpu
            .into_iter()
            .fold(ConnCounters::default(), |mut c, s| {
                c.tx_bytes += s.tx_bytes;
                c.tx_packets += s.tx_packets;
                c.rx_bytes += s.rx_bytes;
                c.rx_packets += s.rx_packets;
                c.srtt_us = c.srtt_us.max(s.srtt_us);
                c.retransmits = c.retransmits.max(s.retransmits);
                c.bytes_acked = c.bytes_acked.max(s.bytes_acked);
                c.bytes_received = c.bytes_received.max(s.bytes_received);
                c
            })
    }
}

impl DatapathMaps {
    /// Stamps the heartbeat with the current CLOCK_MONOTONIC time.
    pub fn beat(&self) {
        let mut beat = self.heartbeat.lock().expect("heartbeat map lock");
        if let Err(e) = beat.set(0, monotonic_ns(), 0) {
            tracing::warn!(error = %e, "could not refresh the heartbeat map");
        }
    }

    /// Marks a cgroup as the workload's; `meshd_nsid` is the id its network namespace gives
    /// meshd's, when it has its own.
    pub fn enrol(
        &self,
        cgroup_id: u64,
        workload_id: u32,
        meshd_nsid: Option<i32>,
    ) -> Result<(), MapError> {
        let mut m = self.managed.lock().expect("managed map lock");
        m.insert(
            cgroup_id,
            WorkloadRef {
                workload_id,
                meshd_nsid: meshd_nsid.unwrap_or(proxy_common::NSID_SAME),
            },
            0,
        )
    }

    /// The kernel splice's maps; `None` when splicing is off.
    pub fn splicing(&self) -> Option<&std::sync::Arc<super::SpliceMaps>> {
        self.splice.as_ref()
    }

    /// The policy enforcement maps.
    pub fn policy(&self) -> std::sync::Arc<super::PolicyMaps> {
        self.policy.clone()
    }

    /// Sets what runs for each enrolled workload (once; later calls are ignored).
    pub fn on_enrol(&self, hook: EnrolHook) {
        let _ = self.on_enrol.set(hook);
    }

    /// Runs the enrol hook for a workload just enrolled.
    pub fn enrolled(&self, w: &crate::workloads::Workload) {
        if let Some(hook) = self.on_enrol.get() {
            hook(w);
        }
    }

    pub fn unenrol(&self, cgroup_id: u64) {
        let mut m = self.managed.lock().expect("managed map lock");
        let _ = m.remove(&cgroup_id);
    }

    /// The original destination and workload id recorded for a workload socket address in
    /// the network namespace with cookie `netns`.
    pub fn orig_dst(&self, netns: u64, workload_side: SocketAddr) -> Option<OrigDst> {
        let key = NetnsEndpoint {
            netns,
            ep: endpoint_of(workload_side),
        };
        self.orig_by_tuple.get(&key, 0).ok()
    }

    pub fn conn_counters(&self, cookie: u64) -> Option<ConnCounters> {
        let m = self.conn_stats.lock().expect("conn stats lock");
        m.get(&cookie, 0)
            .ok()
            .map(|v| ConnCounters::merge(v.iter()))
    }

    pub fn forget_conn(&self, cookie: u64) {
        let mut m = self.conn_stats.lock().expect("conn stats lock");
        let _ = m.remove(&cookie);
    }

    /// Each event counter summed over CPUs.
    pub fn counters(&self) -> Vec<(Counter, u64)> {
        summed(&self.counters, &Counter::ALL, |c| c as u32)
    }
}

/// Each counter of a per-CPU counter array (indexed by `index`), summed over CPUs; 0 when
/// unreadable.
pub(super) fn summed<C: Copy>(
    map: &PerCpuArray<MapData, u64>,
    all: &[C],
    index: impl Fn(C) -> u32,
) -> Vec<(C, u64)> {
    all.iter()
        .map(|c| {
            let v = map.get(&index(*c), 0).map(|v| v.iter().sum()).unwrap_or(0);
            (*c, v)
        })
        .collect()
}
