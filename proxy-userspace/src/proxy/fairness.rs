//! Fairness between the workloads of a node: each source workload may hold at most so many
//! connections and requests in meshd at once. Beyond that its excess is shed (flag UO) and
//! counted against it, so one flooding workload cannot starve its neighbours of the proxy.
//! Connections from sources meshd cannot name share one allowance.

use std::{
    collections::HashMap,
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
};

/// The key of sources without a workload identity.
const UNIDENTIFIED: &str = "unidentified";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Connections,
    Requests,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Connections => "connections",
            Kind::Requests => "requests",
        })
    }
}

/// Why a connection or request was shed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "workload {workload} already has {limit} {kind} in flight through meshd, its share on this node"
)]
pub struct Shed {
    pub workload: String,
    pub kind: Kind,
    pub limit: u32,
}

#[derive(Debug, Default)]
struct Counts {
    connections: AtomicU32,
    requests: AtomicU32,
}

impl Counts {
    fn of(&self, k: Kind) -> &AtomicU32 {
        match k {
            Kind::Connections => &self.connections,
            Kind::Requests => &self.requests,
        }
    }
}

/// One connection or request counted against its workload until dropped.
#[derive(Debug)]
pub struct Held {
    counts: Arc<Counts>,
    kind: Kind,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.counts.of(self.kind).fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct Fairness {
    max_connections: u32,
    max_requests: u32,
    per_workload: Mutex<HashMap<String, Arc<Counts>>>,
}

impl Fairness {
    /// Limits per workload; 0 means unlimited.
    pub fn new(max_connections: u32, max_requests: u32) -> Fairness {
        let or_unlimited = |n: u32| if n == 0 { u32::MAX } else { n };
        Fairness {
            max_connections: or_unlimited(max_connections),
            max_requests: or_unlimited(max_requests),
            per_workload: Mutex::new(HashMap::new()),
        }
    }

    fn admit(&self, workload: Option<&str>, kind: Kind) -> Result<Held, Shed> {
        let name = workload.unwrap_or(UNIDENTIFIED);
        let limit = match kind {
            Kind::Connections => self.max_connections,
            Kind::Requests => self.max_requests,
        };
        let counts = {
            let mut all = self.per_workload.lock().expect("fairness lock");
            match all.get(name) {
                Some(c) => c.clone(),
                None => all.entry(name.to_string()).or_default().clone(),
            }
        };
        counts
            .of(kind)
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .map_err(|_| Shed {
                workload: name.to_string(),
                kind,
                limit,
            })?;
        Ok(Held { counts, kind })
    }

    pub fn connection(&self, workload: Option<&str>) -> Result<Held, Shed> {
        self.admit(workload, Kind::Connections)
    }

    pub fn request(&self, workload: Option<&str>) -> Result<Held, Shed> {
        self.admit(workload, Kind::Requests)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_workload_has_its_own_allowance() {
        let f = Fairness::new(1, 2);
        let a1 = f.request(Some("ns/noisy")).unwrap();
        let _a2 = f.request(Some("ns/noisy")).unwrap();
        let shed = f.request(Some("ns/noisy")).unwrap_err();
        assert_eq!(shed.kind, Kind::Requests);
        assert_eq!(shed.limit, 2);
        assert!(shed.to_string().contains("ns/noisy already has 2 requests"));
        // The neighbour is unaffected, and so are the noisy workload's connections.
        assert!(f.request(Some("ns/quiet")).is_ok());
        let c = f.connection(Some("ns/noisy")).unwrap();
        assert!(f.connection(Some("ns/noisy")).is_err());
        drop(c);
        assert!(f.connection(Some("ns/noisy")).is_ok());
        // Finishing a request frees its place.
        drop(a1);
        assert!(f.request(Some("ns/noisy")).is_ok());
    }

    #[test]
    fn zero_means_unlimited_and_unnamed_sources_share_one_allowance() {
        let f = Fairness::new(0, 1);
        let held: Vec<_> = (0..1000).map(|_| f.connection(None).unwrap()).collect();
        assert_eq!(held.len(), 1000);
        let _r = f.request(None).unwrap();
        assert_eq!(f.request(None).unwrap_err().workload, UNIDENTIFIED);
    }
}
