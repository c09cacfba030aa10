//! The policy enforcement maps: PeerAuthentication STRICT ports (read by cgroup_skb ingress)
//! and identity-only DENY pairs (read by connect4/6), written as whole sets: what is new is
//! inserted, what is gone is removed.

use std::{collections::BTreeMap, sync::Mutex};

use aya::maps::{HashMap, MapData, MapError, PerCpuArray};
use proxy_common::{DenyKey, PeerAuthKey, PolicyCounter};

pub struct PolicyMaps {
    pub(super) peer_auth: Mutex<HashMap<MapData, PeerAuthKey, u32>>,
    pub(super) deny: Mutex<HashMap<MapData, DenyKey, u32>>,
    pub(super) counters: PerCpuArray<MapData, u64>,
}

/// Byte view of a key, to keep the entries written in an ordered map.
fn deny_bytes(k: &DenyKey) -> [u32; 8] {
    let d = &k.dst;
    [
        k.workload_id,
        d.ip[0],
        d.ip[1],
        d.ip[2],
        d.ip[3],
        d.port,
        d.family,
        0,
    ]
}

impl PolicyMaps {
    /// Makes the PEER_AUTH map hold `want` for the workloads `touch` accepts; entries of other
    /// workloads stay as they are.
    pub fn set_peer_auth(
        &self,
        want: &BTreeMap<PeerAuthKey, u32>,
        touch: impl Fn(u32) -> bool,
    ) -> Result<(), MapError> {
        let mut m = self.peer_auth.lock().expect("peer auth map lock");
        let stale: Vec<PeerAuthKey> = m
            .keys()
            .filter_map(Result::ok)
            .filter(|k| touch(k.workload_id) && !want.contains_key(k))
            .collect();
        for k in stale {
            let _ = m.remove(&k);
        }
        for (k, v) in want {
            if m.get(k, 0).ok() != Some(*v) {
                m.insert(k, v, 0)?;
            }
        }
        Ok(())
    }

    /// Makes the CONNECT_DENY map hold `want` for the source workloads `touch` accepts.
    pub fn set_deny(&self, want: &[DenyKey], touch: impl Fn(u32) -> bool) -> Result<(), MapError> {
        let mut m = self.deny.lock().expect("deny map lock");
        let wanted: BTreeMap<[u32; 8], &DenyKey> =
            want.iter().map(|k| (deny_bytes(k), k)).collect();
        let stale: Vec<DenyKey> = m
            .keys()
            .filter_map(Result::ok)
            .filter(|k| touch(k.workload_id) && !wanted.contains_key(&deny_bytes(k)))
            .collect();
        for k in stale {
            let _ = m.remove(&k);
        }
        for k in wanted.values() {
            if m.get(k, 0).is_err() {
                m.insert(*k, 1, 0)?;
            }
        }
        Ok(())
    }

    /// Each policy counter summed over CPUs.
    pub fn counters(&self) -> Vec<(PolicyCounter, u64)> {
        super::maps::summed(&self.counters, &PolicyCounter::ALL, |c| c as u32)
    }
}
