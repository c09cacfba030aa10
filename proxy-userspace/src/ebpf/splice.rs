//! Kernel splice of opaque connections: meshd offers its upstream socket to sk_msg, which sends
//! the workload's next bytes straight out of it once meshd holds none of them (see
//! proxy-ebpf/src/skmsg.rs). meshd keeps carrying the other direction.

use std::{
    net::SocketAddr,
    os::fd::AsRawFd,
    sync::{Arc, Mutex},
};

use aya::maps::{HashMap, MapData, SockHash};
use proxy_common::{AF_INET, AF_INET6, SockPair, SpliceCounts};

use super::endpoint_of;

pub struct SpliceMaps {
    pub(super) to: Mutex<SockHash<MapData, SockPair>>,
    pub(super) forwarded: Mutex<HashMap<MapData, SockPair, u64>>,
    pub(super) handed: Mutex<HashMap<MapData, SockPair, SpliceCounts>>,
}

/// One connection's offer, keyed by the workload socket; dropping it withdraws the offer.
pub struct Splice {
    maps: Arc<SpliceMaps>,
    key: SockPair,
}

/// The workload socket's key on the hop: its own address first, then meshd's listener.
fn workload_pair(workload: SocketAddr, listener: SocketAddr, netns: u64) -> SockPair {
    let (local, remote) = (endpoint_of(workload), endpoint_of(listener));
    SockPair {
        local_ip: local.ip,
        remote_ip: remote.ip,
        local_port: local.port,
        remote_port: remote.port,
        family: if workload.is_ipv4() {
            AF_INET
        } else {
            AF_INET6
        },
        _pad: 0,
        netns,
    }
}

impl SpliceMaps {
    /// Offers `up` for the workload socket at the far end of `down` (meshd's accepted socket).
    /// `None` when the kernel does not take it (logged); the connection is then copied by meshd
    /// alone, as without splicing.
    pub fn offer(
        self: &Arc<Self>,
        down: &tokio::net::TcpStream,
        up: &tokio::net::TcpStream,
    ) -> Option<Splice> {
        let netns = crate::pods::netns::cookie(down).ok()?;
        let key = workload_pair(down.peer_addr().ok()?, down.local_addr().ok()?, netns);
        let offered = self
            .to
            .lock()
            .expect("splice map lock")
            .insert(key, up.as_raw_fd(), 0)
            .and_then(|()| {
                self.forwarded
                    .lock()
                    .expect("splice map lock")
                    .insert(key, 0, 0)
            });
        match offered {
            Ok(()) => Some(Splice {
                maps: self.clone(),
                key,
            }),
            Err(e) => {
                tracing::debug!(error = %e, "the kernel did not take the upstream socket for splicing");
                let _ = self.to.lock().expect("splice map lock").remove(&key);
                None
            }
        }
    }
}

impl Splice {
    /// Records that meshd has written `total` bytes of the workload's upstream.
    pub fn forwarded(&self, total: u64) {
        let mut m = self.maps.forwarded.lock().expect("splice map lock");
        if let Err(e) = m.insert(self.key, total, 0) {
            tracing::debug!(error = %e, "could not record forwarded bytes for splicing");
        }
    }

    /// Bytes the kernel sent upstream without meshd.
    pub fn spliced(&self) -> u64 {
        let handed = self.maps.handed.lock().expect("splice map lock");
        handed.get(&self.key, 0).map_or(0, |c| c.spliced)
    }
}

impl Drop for Splice {
    fn drop(&mut self) {
        let lock = "splice map lock";
        let _ = self.maps.forwarded.lock().expect(lock).remove(&self.key);
        let _ = self.maps.to.lock().expect(lock).remove(&self.key);
        let _ = self.maps.handed.lock().expect(lock).remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_the_workload_sockets_view() {
        let k = workload_pair(
            "127.0.0.1:40000".parse().unwrap(),
            "127.0.0.1:15001".parse().unwrap(),
            7,
        );
        assert_eq!((k.local_port, k.remote_port), (40000, 15001));
        assert_eq!(k.local_ip[0], u32::from_ne_bytes([127, 0, 0, 1]));
        assert_eq!((k.family, k.netns), (AF_INET, 7));
        let v6 = workload_pair(
            "[::1]:40000".parse().unwrap(),
            "[::1]:15001".parse().unwrap(),
            7,
        );
        assert_eq!(v6.family, AF_INET6);
        assert_eq!(v6.remote_ip[3], u32::from_ne_bytes([0, 0, 0, 1]));
    }
}
