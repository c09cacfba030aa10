//! Kernel splice of opaque connections, both ways. meshd offers its upstream socket to the
//! kernel: sk_msg sends the workload's next bytes straight out of it once meshd holds none of
//! them, and the upstream socket's stream verdict sends the replies straight out of meshd's
//! accepted socket once meshd holds none of those (see proxy-ebpf/src/skmsg.rs and reply.rs).

use std::{
    net::SocketAddr,
    os::fd::AsRawFd,
    sync::{Arc, Mutex},
};

use aya::maps::{HashMap, MapData, MapError, SockHash};
use proxy_common::{AF_INET, AF_INET6, SockPair, SpliceCounts};

use super::endpoint_of;
use crate::proxy::sockopt;

pub struct SpliceMaps {
    pub(super) to: Mutex<SockHash<MapData, SockPair>>,
    pub(super) forwarded: Mutex<HashMap<MapData, SockPair, u64>>,
    pub(super) handed: Mutex<HashMap<MapData, SockPair, SpliceCounts>>,
    pub(super) reply_to: Mutex<HashMap<MapData, u64, SockPair>>,
    pub(super) reply_forwarded: Mutex<HashMap<MapData, u64, u64>>,
    pub(super) reply_counts: Mutex<HashMap<MapData, u64, SpliceCounts>>,
    pub(super) reply_sent: Mutex<HashMap<MapData, SockPair, u64>>,
    /// Which of meshd's sockets are in the SOCKHASH (read only).
    pub(super) pair_cookie: Mutex<HashMap<MapData, SockPair, u64>>,
}

/// One connection's offer; dropping it withdraws the offer.
pub struct Splice {
    maps: Arc<SpliceMaps>,
    /// The workload socket's key on the hop.
    key: SockPair,
    /// meshd's upstream socket (its cookie), whose replies the verdict splices.
    up: u64,
    /// meshd's accepted socket (its SOCKHASH key), the replies' way out.
    down: SockPair,
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
    /// before meshd has read anything from `up`. `None` when either end of the hop is not in
    /// the SOCKHASH (it was full) or the kernel does not take `up` (logged); the connection is
    /// then copied by meshd alone, as without splicing.
    pub fn offer(self: &Arc<Self>, down: &tokio::net::TcpStream, up: RawUp) -> Option<Splice> {
        let netns = crate::pods::netns::cookie(down).ok()?;
        let (workload, listener) = (down.peer_addr().ok()?, down.local_addr().ok()?);
        let splice = Splice {
            maps: self.clone(),
            key: pair_of(workload, listener, netns),
            up: up.cookie,
            down: pair_of(listener, workload, netns),
        };
        if !self.both_ends_in_sockhash(&splice, sockopt::cookie(down).ok()?) {
            tracing::debug!("a hop socket is not in the SOCKHASH; no splicing");
            return None;
        }
        match self.enter(&splice, up.fd) {
            Ok(()) => Some(splice),
            Err(e) => {
                tracing::debug!(error = %e, "the kernel did not take the upstream socket for splicing");
                None
            }
        }
    }

    /// sockops keeps counts for a workload socket, and the cookie of one of meshd's, only
    /// when the socket joined the SOCKHASH.
    fn both_ends_in_sockhash(&self, s: &Splice, down_cookie: u64) -> bool {
        let meshd_end = self.pair_cookie.lock().expect(LOCK).get(&s.down, 0).ok();
        let workload_end = self.handed.lock().expect(LOCK).get(&s.key, 0).is_ok();
        meshd_end == Some(down_cookie) && workload_end
    }

    /// Writes the connection's entries, the upstream socket last: with it in SPLICE_TO the
    /// verdict judges every reply byte, from the first.
    fn enter(&self, s: &Splice, up_fd: i32) -> Result<(), MapError> {
        self.reply_counts
            .lock()
            .expect(LOCK)
            .insert(s.up, SpliceCounts::default(), 0)?;
        self.reply_forwarded
            .lock()
            .expect(LOCK)
            .insert(s.up, 0, 0)?;
        self.reply_to.lock().expect(LOCK).insert(s.up, s.down, 0)?;
        self.reply_sent.lock().expect(LOCK).insert(s.down, 0, 0)?;
        self.forwarded.lock().expect(LOCK).insert(s.key, 0, 0)?;
        self.to.lock().expect(LOCK).insert(s.key, up_fd, 0)
    }
}

/// meshd's upstream socket as the offer needs it.
#[derive(Clone, Copy)]
pub struct RawUp {
    pub fd: i32,
    pub cookie: u64,
}

impl RawUp {
    pub fn of(up: &impl AsRawFd) -> std::io::Result<RawUp> {
        Ok(RawUp {
            fd: up.as_raw_fd(),
            cookie: sockopt::cookie(up)?,
        })
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
        let mut m = self.maps.reply_forwarded.lock().expect(LOCK);
        if let Err(e) = m.insert(self.up, total, 0) {
            tracing::debug!(error = %e, "could not record forwarded replies for splicing");
        }
    }

    /// Stops splicing replies: from now on the verdict hands every reply to meshd.
    pub fn stop_replies(&self) {
        let _ = self.maps.reply_to.lock().expect(LOCK).remove(&self.up);
    }

    /// Reply bytes the kernel sent to the workload without meshd.
    pub fn reply_spliced(&self) -> u64 {
        let counts = self.maps.reply_counts.lock().expect(LOCK);
        counts.get(&self.up, 0).map_or(0, |c| c.spliced)
    }

    /// Bytes that have left meshd's accepted socket for the workload: meshd's writes and the
    /// spliced replies the kernel's socket work has sent so far; `None` if unreadable.
    pub fn sent_to_workload(&self) -> Option<u64> {
        self.maps
            .reply_sent
            .lock()
            .expect(LOCK)
            .get(&self.down, 0)
            .ok()
    }
}

impl Drop for Splice {
    fn drop(&mut self) {
        // The upstream socket first: no program reads the other entries after that.
        let _ = self.maps.to.lock().expect(LOCK).remove(&self.key);
        let _ = self.maps.forwarded.lock().expect(LOCK).remove(&self.key);
        let _ = self.maps.handed.lock().expect(LOCK).remove(&self.key);
        let _ = self.maps.reply_to.lock().expect(LOCK).remove(&self.up);
        let _ = self
            .maps
            .reply_forwarded
            .lock()
            .expect(LOCK)
            .remove(&self.up);
        let _ = self.maps.reply_counts.lock().expect(LOCK).remove(&self.up);
        let _ = self.maps.reply_sent.lock().expect(LOCK).remove(&self.down);
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
