//! Fairness between the workloads of a node: each source workload may hold at most so many
//! connections and requests in meshd at once. Beyond that its excess is shed (flag UO) and
//! counted against it, so one flooding workload cannot starve its neighbours of the proxy.
//! Connections from sources meshd cannot name share one allowance.

use std::{
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
};

use foldhash::{HashMap, HashMapExt};

/// Connections that may wait for a place, per place a workload may hold.
const WAITING_PER_PLACE: u32 = 4;

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
    /// Connections waiting for one of the workload's places.
    waiting: AtomicU32,
    /// Woken when a connection's place is freed.
    freed: tokio::sync::Notify,
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
        if self.kind == Kind::Connections {
            self.counts.freed.notify_one();
        }
    }
}

/// Takes back a waiting connection's place in the queue.
struct Waiting<'a>(&'a AtomicU32);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
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

    fn counts(&self, name: &str) -> Arc<Counts> {
        let mut all = self.per_workload.lock().expect("fairness lock");
        match all.get(name) {
            Some(c) => c.clone(),
            None => all.entry(name.to_string()).or_default().clone(),
        }
    }

    fn admit(&self, workload: Option<&str>, kind: Kind) -> Result<Held, Shed> {
        let name = workload.unwrap_or(UNIDENTIFIED);
        let limit = match kind {
            Kind::Connections => self.max_connections,
            Kind::Requests => self.max_requests,
        };
        let counts = self.counts(name);
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

    /// A place for a new connection of `workload`. When all of its places are taken, the
    /// connection waits, unread, for one to free up (at most `WAITING_PER_PLACE` times as many
    /// connections wait as the workload may have open), up to `patience`; past either bound
    /// it is shed. Waiting
    /// costs the node nothing, where shedding invites a client to reconnect at once.
    pub async fn connection_or_wait(
        &self,
        workload: Option<&str>,
        patience: std::time::Duration,
    ) -> Result<Held, Shed> {
        let name = workload.unwrap_or(UNIDENTIFIED);
        let counts = self.counts(name);
        let deadline = tokio::time::Instant::now() + patience;
        let mut queued: Option<Waiting<'_>> = None;
        loop {
            let freed = counts.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            match self.admit(workload, Kind::Connections) {
                Ok(held) => return Ok(held),
                Err(shed) if queued.is_none() => {
                    let waiting = counts.waiting.fetch_add(1, Ordering::AcqRel);
                    queued = Some(Waiting(&counts.waiting));
                    if waiting >= self.max_connections.saturating_mul(WAITING_PER_PLACE) {
                        return Err(shed);
                    }
                }
                Err(_) => {}
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(Shed {
                    workload: name.to_string(),
                    kind: Kind::Connections,
                    limit: self.max_connections,
                });
            }
        }
    }

    pub fn request(&self, workload: Option<&str>) -> Result<Held, Shed> {
        self.admit(workload, Kind::Requests)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_excess_connection_waits_for_a_place_then_gives_up() {
        let f = Arc::new(Fairness::new(1, 0));
        let first = f.connection(Some("ns/w")).unwrap();
        // The second waits and gets the place once the first closes.
        let f2 = f.clone();
        let second = tokio::spawn(async move {
            f2.connection_or_wait(Some("ns/w"), Duration::from_secs(10))
                .await
                .map(drop)
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Only WAITING_PER_PLACE per place may wait: the next is shed at once.
        let mut waiters = Vec::new();
        for _ in 1..WAITING_PER_PLACE {
            let f = f.clone();
            waiters.push(tokio::spawn(async move {
                f.connection_or_wait(Some("ns/w"), Duration::from_secs(2))
                    .await
                    .map(drop)
            }));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        let over = f
            .connection_or_wait(Some("ns/w"), Duration::from_secs(10))
            .await;
        assert!(over.is_err());
        for w in waiters {
            assert!(
                w.await.unwrap().is_err(),
                "no place freed within their patience"
            );
        }
        drop(first);
        assert!(second.await.unwrap().is_ok());
        // Nobody frees a place: the wait ends at its patience.
        let _held = f.connection(Some("ns/w")).unwrap();
        let start = tokio::time::Instant::now();
        let late = f
            .connection_or_wait(Some("ns/w"), Duration::from_secs(5))
            .await;
        assert!(late.is_err());
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

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
