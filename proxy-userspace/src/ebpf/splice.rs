//! Kernel splice of opaque connections, both ways. meshd offers its upstream socket to the
//! kernel: sk_msg sends the workload's next bytes straight out of it once meshd holds none of
//! them, and the upstream socket's stream verdict sends the replies straight out of meshd's
//! accepted socket once meshd holds none of those (see proxy-ebpf/src/skmsg.rs and reply.rs).

use std::{
    net::SocketAddr,
    os::fd::AsRawFd,
    sync::{Arc, Mutex},
};

use aya::maps::{HashMap, MapData, PerCpuHashMap, SockHash};
use proxy_common::{AF_INET, AF_INET6, ConnStats, ReplyTo, SockPair, SpliceCounts};

use super::endpoint_of;
use crate::proxy::sockopt;

pub struct SpliceMaps {
    pub(super) to: Mutex<SockHash<MapData, SockPair>>,
    pub(super) forwarded: Mutex<HashMap<MapData, SockPair, u64>>,
    pub(super) handed: Mutex<HashMap<MapData, SockPair, SpliceCounts>>,
    pub(super) reply_to: Mutex<HashMap<MapData, u64, ReplyTo>>,
    pub(super) reply_counts: Mutex<HashMap<MapData, u64, SpliceCounts>>,
    pub(super) conn_stats: Arc<Mutex<PerCpuHashMap<MapData, u64, ConnStats>>>,
}

/// One connection's offer; dropping it withdraws the offer.
pub struct Splice {
    maps: Arc<SpliceMaps>,
    /// The workload socket's key on the hop.
    key: SockPair,
    /// meshd's upstream socket, whose replies the verdict splices.
    up: u64,
    /// meshd's accepted socket, the replies' way out: its cookie and its SOCKHASH key.
    down: u64,
    down_key: SockPair,
}

/// A socket's key on a hop: its own address first, then its peer's.
fn pair_of(local: SocketAddr, remote: SocketAddr, netns: u64) -> SockPair {
    let (l, r) = (endpoint_of(local), endpoint_of(remote));
    SockPair {
        local_ip: l.ip,
        remote_ip: r.ip,
        local_port: l.port,
        remote_port: r.port,
        family: if local.is_ipv4() { AF_INET } else { AF_INET6 },
        _pad: 0,
        netns,
    }
}

const LOCK: &str = "splice map lock";

impl SpliceMaps {
    /// Offers `up` for the workload socket at the far end of `down` (meshd's accepted socket),
    /// before meshd has read anything from `up`. `None` when the kernel does not take it
    /// (logged); the connection is then copied by meshd alone, as without splicing.
    pub fn offer(
        self: &Arc<Self>,
        down: &tokio::net::TcpStream,
        up: &tokio::net::TcpStream,
    ) -> Option<Splice> {
        let netns = crate::pods::netns::cookie(down).ok()?;
        let (workload, listener) = (down.peer_addr().ok()?, down.local_addr().ok()?);
        let splice = Splice {
            maps: self.clone(),
            key: pair_of(workload, listener, netns),
            up: sockopt::cookie(up).ok()?,
            down: sockopt::cookie(down).ok()?,
            down_key: pair_of(listener, workload, netns),
        };
        // The reply state first: the verdict starts with the upstream socket's entry in
        // SPLICE_TO, and judges from its first byte on.
        let offered = self
            .reply_counts
            .lock()
            .expect(LOCK)
            .insert(splice.up, SpliceCounts::default(), 0)
            .and_then(|()| splice.reply_to(0))
            .and_then(|()| {
                let mut m = self.forwarded.lock().expect(LOCK);
                m.insert(splice.key, 0, 0)
            })
            .and_then(|()| {
                let mut m = self.to.lock().expect(LOCK);
                m.insert(splice.key, up.as_raw_fd(), 0)
            });
        match offered {
            Ok(()) => Some(splice),
            Err(e) => {
                tracing::debug!(error = %e, "the kernel did not take the upstream socket for splicing");
                None
            }
        }
    }
}

impl Splice {
    /// Records that meshd has written `total` bytes of the workload's upstream.
    pub fn forwarded(&self, total: u64) {
        let mut m = self.maps.forwarded.lock().expect(LOCK);
        if let Err(e) = m.insert(self.key, total, 0) {
            tracing::debug!(error = %e, "could not record forwarded bytes for splicing");
        }
    }

    /// Bytes the kernel sent upstream without meshd.
    pub fn spliced(&self) -> u64 {
        let handed = self.maps.handed.lock().expect(LOCK);
        handed.get(&self.key, 0).map_or(0, |c| c.spliced)
    }

    /// Records that meshd has written `total` reply bytes to the workload.
    pub fn reply_forwarded(&self, total: u64) {
        if let Err(e) = self.reply_to(total) {
            tracing::debug!(error = %e, "could not record forwarded replies for splicing");
        }
    }

    fn reply_to(&self, forwarded: u64) -> Result<(), aya::maps::MapError> {
        let to = ReplyTo {
            down: self.down_key,
            forwarded,
        };
        self.maps
            .reply_to
            .lock()
            .expect(LOCK)
            .insert(self.up, to, 0)
    }

    /// Reply bytes the kernel sent to the workload without meshd.
    pub fn reply_spliced(&self) -> u64 {
        let counts = self.maps.reply_counts.lock().expect(LOCK);
        counts.get(&self.up, 0).map_or(0, |c| c.spliced)
    }

    /// Bytes that have left meshd's accepted socket for the workload: meshd's writes and the
    /// spliced replies the kernel's socket work has sent so far. `None` when the kernel keeps no
    /// count for the socket (evicted).
    pub fn sent_to_workload(&self) -> Option<u64> {
        let stats = self.maps.conn_stats.lock().expect(LOCK);
        let per_cpu = stats.get(&self.down, 0).ok()?;
        Some(per_cpu.iter().map(|s| s.msg_sent_bytes).sum())
    }
}

impl Drop for Splice {
    fn drop(&mut self) {
        let _ = self.maps.forwarded.lock().expect(LOCK).remove(&self.key);
        let _ = self.maps.to.lock().expect(LOCK).remove(&self.key);
        let _ = self.maps.handed.lock().expect(LOCK).remove(&self.key);
        let _ = self.maps.reply_to.lock().expect(LOCK).remove(&self.up);
        let _ = self.maps.reply_counts.lock().expect(LOCK).remove(&self.up);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_the_sockets_own_view() {
        let k = pair_of(
            "127.0.0.1:40000".parse().unwrap(),
            "127.0.0.1:15001".parse().unwrap(),
            7,
        );
        assert_eq!((k.local_port, k.remote_port), (40000, 15001));
        assert_eq!(k.local_ip[0], u32::from_ne_bytes([127, 0, 0, 1]));
        assert_eq!((k.family, k.netns), (AF_INET, 7));
        let v6 = pair_of(
            "[::1]:40000".parse().unwrap(),
            "[::1]:15001".parse().unwrap(),
            7,
        );
        assert_eq!(v6.family, AF_INET6);
        assert_eq!(v6.remote_ip[3], u32::from_ne_bytes([0, 0, 0, 1]));
    }
}
