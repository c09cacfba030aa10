//! The table of live proxied connections, joined with their kernel counters for /connections.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use crate::ebpf::{ConnCounters, DatapathMaps};

#[derive(Clone, Debug, Serialize)]
pub struct ConnectionInfo {
    pub id: u64,
    /// NAMESPACE/NAME of the workload that opened the connection, if known.
    pub workload: Option<String>,
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub protocol: &'static str,
    pub started_unix_ms: u64,
    pub downstream_cookie: u64,
    pub upstream_cookie: Option<u64>,
}

/// A live connection with the kernel's view of both of meshd's sockets.
#[derive(Debug, Serialize)]
pub struct ConnectionView {
    #[serde(flatten)]
    pub info: ConnectionInfo,
    pub age_ms: u64,
    /// meshd's accepted socket (workload side).
    pub downstream: Option<ConnCounters>,
    /// meshd's socket towards the destination.
    pub upstream: Option<ConnCounters>,
}

pub struct Connections {
    next: AtomicU64,
    live: Mutex<BTreeMap<u64, ConnectionInfo>>,
    maps: Arc<DatapathMaps>,
}

/// Removes its connection from the table, and its counters from the kernel map, on drop.
pub struct Tracked {
    id: u64,
    table: Arc<Connections>,
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Connections {
    pub fn new(maps: Arc<DatapathMaps>) -> Arc<Connections> {
        Arc::new(Connections {
            next: AtomicU64::new(1),
            live: Mutex::new(BTreeMap::new()),
            maps,
        })
    }

    pub fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    pub fn track(self: &Arc<Self>, info: ConnectionInfo) -> Tracked {
        let id = info.id;
        self.live.lock().expect("connections lock").insert(id, info);
        Tracked {
            id,
            table: self.clone(),
        }
    }

    pub fn len(&self) -> usize {
        self.live.lock().expect("connections lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn snapshot(&self) -> Vec<ConnectionView> {
        let live: Vec<ConnectionInfo> = self
            .live
            .lock()
            .expect("connections lock")
            .values()
            .cloned()
            .collect();
        let now = unix_ms();
        live.into_iter()
            .map(|info| ConnectionView {
                age_ms: now.saturating_sub(info.started_unix_ms),
                downstream: self.maps.conn_counters(info.downstream_cookie),
                upstream: info
                    .upstream_cookie
                    .and_then(|c| self.maps.conn_counters(c)),
                info,
            })
            .collect()
    }

    /// The kernel counters of a tracked connection, read before it is forgotten.
    pub fn counters(&self, id: u64) -> (Option<ConnCounters>, Option<ConnCounters>) {
        let info = self
            .live
            .lock()
            .expect("connections lock")
            .get(&id)
            .cloned();
        match info {
            Some(i) => (
                self.maps.conn_counters(i.downstream_cookie),
                i.upstream_cookie.and_then(|c| self.maps.conn_counters(c)),
            ),
            None => (None, None),
        }
    }
}

impl Tracked {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Records meshd's upstream socket once it is connected.
    pub fn set_upstream(&self, cookie: u64) {
        if let Some(i) = self
            .table
            .live
            .lock()
            .expect("connections lock")
            .get_mut(&self.id)
        {
            i.upstream_cookie = Some(cookie);
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let info = self
            .table
            .live
            .lock()
            .expect("connections lock")
            .remove(&self.id);
        if let Some(info) = info {
            self.table.maps.forget_conn(info.downstream_cookie);
            if let Some(c) = info.upstream_cookie {
                self.table.maps.forget_conn(c);
            }
        }
    }
}
