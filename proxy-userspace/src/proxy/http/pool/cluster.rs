//! One destination's share of the upstream pool (Envoy's cluster): its circuit-breaker counters
//! (open connections, pending and active requests, active retries) and its idle connections
//! per endpoint. Counters are released by guards, so a cancelled request frees what it held.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use foldhash::HashMap;

use tokio::sync::Notify;

use super::proxy_protocol::ClientLife;

/// An endpoint and, for a tunnelled connection, the tunnel's key: connections through the
/// tunnel carry one source workload (and identity), so they are pooled apart.
/// A pooled connection's key: the endpoint, the partition it belongs to (a source workload's
/// through the tunnel, a downstream connection's PROXY header), and the server name meshd's TLS
/// origination verified, so no connection serves a name it was not verified for.
pub type PeerKey = (SocketAddr, Option<Arc<str>>, Option<Arc<str>>);

/// The circuit-breaker counters of a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    Connections,
    Pending,
    Requests,
    Retries,
}

/// An HTTP/1.1 connection waiting for its next request.
pub struct IdleH1 {
    pub conn: super::h1::Conn,
    /// Requests it has carried.
    pub used: u32,
    pub since: Instant,
    pub idle_timeout: Duration,
    /// When it stops taking requests (`maxConnectionDuration`), if ever.
    pub expires: Option<Instant>,
}

/// Whether a connection that `expires` then may still take a request.
pub fn unexpired(expires: Option<Instant>) -> bool {
    expires.is_none_or(|e| Instant::now() < e)
}

impl IdleH1 {
    /// Still within its idle timeout and its maximum duration, and nothing (bytes or a close)
    /// arrived on it.
    fn can_carry(&mut self) -> bool {
        self.since.elapsed() < self.idle_timeout && unexpired(self.expires) && self.conn.is_usable()
    }
}

/// The streams open on an HTTP/2 connection, and when the last one ended (when the connection
/// opened, before any did): with none open, the connection has been idle since then.
pub struct Streams {
    open: AtomicU32,
    last_end: Mutex<Instant>,
}

impl Default for Streams {
    fn default() -> Streams {
        Streams {
            open: AtomicU32::new(0),
            last_end: Mutex::new(Instant::now()),
        }
    }
}

impl Streams {
    pub fn open(&self) -> u32 {
        self.open.load(Ordering::Acquire)
    }
}

/// One stream counted on an HTTP/2 connection, given back on drop: when its response ends,
/// or when the request is cancelled (a timeout, a client that left) before that.
pub struct H2Stream {
    pool: Arc<ClusterPool>,
    streams: Arc<Streams>,
}

impl H2Stream {
    pub fn new(pool: Arc<ClusterPool>, streams: &Arc<Streams>) -> H2Stream {
        streams.open.fetch_add(1, Ordering::AcqRel);
        H2Stream {
            pool,
            streams: streams.clone(),
        }
    }
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        *self.streams.last_end.lock().expect("stream end lock") = Instant::now();
        self.streams.open.fetch_sub(1, Ordering::AcqRel);
        self.pool.changed.notify_waiters();
    }
}

/// A multiplexed HTTP/2 connection and the streams open on it.
pub struct H2Conn {
    pub sender: super::h2::Conn,
    pub streams: Arc<Streams>,
    pub used: u32,
    pub idle_timeout: Duration,
    /// When it stops taking streams (`maxConnectionDuration`), if ever.
    pub expires: Option<Instant>,
}

impl H2Conn {
    /// Whether it carried no stream for its idle timeout, counted as Envoy's from the end of
    /// its last stream (a long stream does not use the time up). A stream taken ends after it
    /// was taken, so with none open the last end is also the last activity.
    fn idle_expired(&self) -> bool {
        if self.streams.open() > 0 {
            return false;
        }
        let last_end = *self.streams.last_end.lock().expect("stream end lock");
        last_end.elapsed() >= self.idle_timeout
    }
}

#[derive(Default)]
pub struct ClusterPool {
    pub name: String,
    counts: [AtomicU32; 4],
    /// Woken whenever a connection closes or goes idle, or a stream ends.
    pub changed: Notify,
    pub h1: Mutex<HashMap<PeerKey, Vec<IdleH1>>>,
    pub h2: Mutex<HashMap<PeerKey, Vec<H2Conn>>>,
    /// The cluster's round-robin position.
    pub turn: std::sync::atomic::AtomicUsize,
    /// The HTTP/2 connections being opened, per endpoint: requests that find no stream wait
    /// for the streams one of them is expected to have rather than each open a connection of
    /// its own, and open another when the waiters would fill them, as Envoy's pending streams
    /// wait for a connecting connection's capacity.
    opening_h2: Mutex<HashMap<PeerKey, Vec<Arc<Opening>>>>,
    /// The `maxConnections` of the newest configuration a request brought, with its
    /// generation: `generation << 32 | limit`, so the newest wins a `fetch_max`.
    newest_max_connections: AtomicU64,
    /// Endpoints a reload took out of the cluster's service.
    retired: super::retired::Retired,
    /// Mirror copies in flight to this cluster (`mirror::MAX_PER_CLUSTER` at most).
    pub mirrors_in_flight: std::sync::atomic::AtomicUsize,
    /// The HTTP/1.1 connections open (or opening) to each endpoint, idle or busy.
    h1_per_endpoint: Mutex<HashMap<PeerKey, u32>>,
}

/// An HTTP/2 connection being opened, how many requests wait for it, and why it failed, once
/// it has.
pub struct Opening {
    failed: std::sync::OnceLock<(std::io::ErrorKind, String)>,
    /// The streams it is expected to have for requests besides its opener's.
    room: u32,
    waiting: AtomicU32,
    /// Set, and `ended_now` notified, when its claim is dropped: only the requests waiting for
    /// this opening are woken by that (waking the cluster's other waiters, claims among them,
    /// made two claims at a limit wake each other without end).
    ended: std::sync::atomic::AtomicBool,
    ended_now: tokio::sync::Notify,
}

/// A request's place among those waiting for a connection being opened; given up on drop.
pub struct Waiting(Arc<Opening>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::ops::Deref for Waiting {
    type Target = Opening;

    fn deref(&self) -> &Opening {
        &self.0
    }
}

impl Opening {
    /// Ends once the claim on this opening has been dropped (the connection in the pool, or
    /// failed, or its opener gone).
    pub async fn ended(&self) {
        let notified = self.ended_now.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.ended.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }

    /// The error of the connection the caller waited for, as its own connect error: the
    /// requests that waited for a connection fail with it, as Envoy's pending requests do.
    pub fn failure(&self) -> Option<std::io::Error> {
        self.failed
            .get()
            .map(|(kind, text)| std::io::Error::new(*kind, text.clone()))
    }
}

/// Either the claim on opening an HTTP/2 connection to an endpoint (released when dropped: the
/// connection then in the pool, or failed, and the requests that waited for it woken), or a
/// place among the requests waiting for one another request is opening.
pub enum OpenH2<'a> {
    Mine(OpeningClaim<'a>),
    Waiting(Waiting),
}

pub struct OpeningClaim<'a> {
    pool: &'a ClusterPool,
    dst: PeerKey,
    opening: Arc<Opening>,
    /// No other connection to the endpoint was being opened when this one was claimed.
    pub first: bool,
}

impl OpeningClaim<'_> {
    /// Records why the connection could not be opened, for the requests that waited for it:
    /// a connect error as it was, anything else (a handshake) by its message.
    pub fn fail(&self, e: &super::UpstreamError) {
        let failed = match e {
            super::UpstreamError::Connect { source, .. } => (source.kind(), source.to_string()),
            other => (std::io::ErrorKind::Other, other.to_string()),
        };
        let _ = self.opening.failed.set(failed);
    }
}

impl Drop for OpeningClaim<'_> {
    fn drop(&mut self) {
        {
            let mut opening = self.pool.opening_h2.lock().expect("opening h2 lock");
            if let Some(list) = opening.get_mut(&self.dst) {
                list.retain(|o| !Arc::ptr_eq(o, &self.opening));
                if list.is_empty() {
                    opening.remove(&self.dst);
                }
            }
        }
        self.opening.ended.store(true, Ordering::Release);
        self.opening.ended_now.notify_waiters();
    }
}

/// One unit of a counter, given back on drop.
pub struct Slot {
    pool: Arc<ClusterPool>,
    counter: Counter,
    /// The endpoint of an HTTP/1.1 connection's slot, counted per endpoint too.
    endpoint: Option<PeerKey>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(key) = self.endpoint.take() {
            let mut per = self.pool.h1_per_endpoint.lock().expect("h1 count lock");
            if let Some(n) = per.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    per.remove(&key);
                }
            }
        }
        self.pool.counts[self.counter as usize].fetch_sub(1, Ordering::AcqRel);
        self.pool.changed.notify_waiters();
    }
}

impl ClusterPool {
    pub fn new(name: &str) -> ClusterPool {
        ClusterPool {
            name: name.to_string(),
            ..ClusterPool::default()
        }
    }

    /// The cluster's `maxConnections`: `limits`' own, unless a request has brought those of a
    /// newer configuration (a request that began before a reload then keeps to the new limit
    /// rather than closing connections opened under it, or waiting for a slot it never gets).
    pub fn max_connections(&self, limits: &super::Limits) -> u32 {
        if limits.generation == 0 {
            return limits.max_connections;
        }
        let generation = limits.generation.min(u64::from(u32::MAX));
        let mine = generation << 32 | u64::from(limits.max_connections);
        // Read first: a shared line is written only when a newer configuration arrives.
        let seen = self.newest_max_connections.load(Ordering::Acquire);
        let newest = if mine > seen {
            self.newest_max_connections
                .fetch_max(mine, Ordering::AcqRel)
                .max(mine)
        } else {
            seen
        };
        newest as u32
    }

    /// The connections, pending requests, requests and retries taken now, in that order.
    pub fn counts(&self) -> [u32; 4] {
        [
            Counter::Connections,
            Counter::Pending,
            Counter::Requests,
            Counter::Retries,
        ]
        .map(|c| self.count(c))
    }

    pub fn count(&self, c: Counter) -> u32 {
        self.counts[c as usize].load(Ordering::Acquire)
    }

    /// Takes one unit of `c` if fewer than `limit` are taken.
    pub fn try_slot(self: &Arc<Self>, c: Counter, limit: u32) -> Option<Slot> {
        self.counts[c as usize]
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        Some(Slot {
            pool: self.clone(),
            counter: c,
            endpoint: None,
        })
    }

    /// A connection slot for a new HTTP/1.1 connection to `dst` within `limit`, or past it
    /// when `dst` has none open or opening: as Envoy's connection pool opens one for an
    /// endpoint without any even at the cluster's `maxConnections`, so that requests the
    /// balancer sent there are not left waiting for other endpoints' connections to close.
    pub fn try_h1_slot(self: &Arc<Self>, dst: &PeerKey, limit: u32) -> Option<Slot> {
        let mut per = self.h1_per_endpoint.lock().expect("h1 count lock");
        let first = !per.contains_key(dst);
        let mut slot = self.try_slot(Counter::Connections, if first { u32::MAX } else { limit })?;
        *per.entry(dst.clone()).or_default() += 1;
        slot.endpoint = Some(dst.clone());
        Some(slot)
    }

    /// The HTTP/1.1 connections open or opening to `dst`.
    pub fn h1_connections_to(&self, dst: &PeerKey) -> u32 {
        let per = self.h1_per_endpoint.lock().expect("h1 count lock");
        per.get(dst).copied().unwrap_or(0)
    }

    /// An idle HTTP/1.1 connection to `dst`, newest first, skipping closed and expired ones.
    pub fn take_idle_h1(&self, dst: &PeerKey) -> Option<IdleH1> {
        let mut all = self.h1.lock().expect("h1 pool lock");
        let idle = all.get_mut(dst)?;
        while let Some(mut c) = idle.pop() {
            if c.can_carry() {
                return Some(c);
            }
        }
        None
    }

    /// Keeps an idle connection for the next request to `dst`, unless `owner` (the downstream
    /// connection whose partition it is in) has closed: then it closes. Checked under the lock
    /// that [`ClusterPool::forget_partition`] takes, so none slips in after it.
    pub fn keep_h1(&self, dst: PeerKey, conn: IdleH1, owner: Option<&ClientLife>) {
        {
            let mut all = self.h1.lock().expect("h1 pool lock");
            if owner.is_some_and(ClientLife::ended) || self.retired.contains(&dst.0) {
                return;
            }
            all.entry(dst).or_default().push(conn);
        }
        self.changed.notify_waiters();
    }

    /// A stream on an HTTP/2 connection to `dst` with room for one more, if any: fewer
    /// streams than `limits.max_streams` and than the upstream allows (its SETTINGS).
    pub fn take_h2_stream(
        self: &Arc<Self>,
        dst: &PeerKey,
        limits: &super::Limits,
        per_connection: impl Fn(u32) -> bool,
    ) -> Option<(super::h2::Conn, H2Stream)> {
        let mut all = self.h2.lock().expect("h2 pool lock");
        if self.retired.contains(&dst.0) {
            return None;
        }
        let conns = all.get_mut(dst)?;
        // A connection past its maximum duration leaves the pool: the streams it carries hold
        // their own handles, and it closes when they end.
        // One idle past its timeout is closed, as Envoy's timer would have closed it by now.
        conns.retain(|c| {
            !c.sender.is_closed()
                && per_connection(c.used)
                && unexpired(c.expires)
                && !c.idle_expired()
        });
        let c = conns
            .iter_mut()
            .find(|c| c.streams.open() < limits.max_streams.min(c.sender.stream_limit()))?;
        c.used += 1;
        // The idle timeout of the configuration that used it last, as for HTTP/1.1.
        c.idle_timeout = limits.idle_timeout;
        Some((c.sender.clone(), H2Stream::new(self.clone(), &c.streams)))
    }

    /// Whether the pool holds an open HTTP/2 connection to `dst`, busy or not.
    pub fn has_h2(&self, dst: &PeerKey) -> bool {
        self.h2
            .lock()
            .expect("h2 pool lock")
            .get(dst)
            .is_some_and(|conns| conns.iter().any(|c| !c.sender.is_closed()))
    }

    /// A place among the requests waiting for an HTTP/2 connection to `dst` that another
    /// request is opening, while one has room for it; else the claim on opening one more,
    /// expected to carry `streams` streams.
    pub fn open_h2(&self, dst: &PeerKey, streams: u32) -> OpenH2<'_> {
        let mut opening = self.opening_h2.lock().expect("opening h2 lock");
        let list = opening.entry(dst.clone()).or_default();
        for o in list.iter() {
            let joined = o
                .waiting
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                    (w < o.room).then_some(w + 1)
                });
            if joined.is_ok() {
                return OpenH2::Waiting(Waiting(o.clone()));
            }
        }
        let o = Arc::new(Opening {
            failed: std::sync::OnceLock::new(),
            room: streams.saturating_sub(1),
            waiting: AtomicU32::new(0),
            ended: std::sync::atomic::AtomicBool::new(false),
            ended_now: tokio::sync::Notify::new(),
        });
        let first = list.is_empty();
        list.push(o.clone());
        OpenH2::Mine(OpeningClaim {
            pool: self,
            dst: dst.clone(),
            opening: o,
            first,
        })
    }

    /// How many streams the upstream at `dst` allows on a connection, as its open connections'
    /// SETTINGS said; `None` while none is open.
    pub fn h2_stream_limit(&self, dst: &PeerKey) -> Option<u32> {
        let all = self.h2.lock().expect("h2 pool lock");
        let conns = all.get(dst)?;
        let open = conns.iter().filter(|c| !c.sender.is_closed());
        open.map(|c| c.sender.stream_limit()).max()
    }

    /// Offers a new HTTP/2 connection's spare streams to other requests to `dst`, unless `owner`
    /// has closed (as for [`ClusterPool::keep_h1`]): then only the stream it was opened for
    /// uses it, and it closes when that ends.
    pub fn add_h2(&self, dst: PeerKey, conn: H2Conn, owner: Option<&ClientLife>) {
        {
            let mut all = self.h2.lock().expect("h2 pool lock");
            if owner.is_some_and(ClientLife::ended) || self.retired.contains(&dst.0) {
                return;
            }
            all.entry(dst).or_default().push(conn);
        }
        self.changed.notify_waiters();
    }

    /// Closes one idle connection to another endpoint, so a request waiting for `dst` can open
    /// one within `tcp.maxConnections`. Returns whether one was closed.
    pub fn evict_idle_except(&self, dst: &PeerKey) -> bool {
        let mut all = self.h1.lock().expect("h1 pool lock");
        for (peer, idle) in all.iter_mut() {
            if peer != dst && idle.pop().is_some() {
                return true;
            }
        }
        false
    }

    /// Drops the connections kept for `partition` (one client connection's, under
    /// `proxyProtocol`) once that client connection has closed: no request can use them again.
    /// An HTTP/2 connection still carrying streams (a mirror's) closes when they end: they hold
    /// their own handles to it.
    pub fn forget_partition(&self, partition: &str) {
        let ours = |k: &PeerKey| k.1.as_deref() == Some(partition);
        self.h1
            .lock()
            .expect("h1 pool lock")
            .retain(|k, _| !ours(k));
        self.h2
            .lock()
            .expect("h2 pool lock")
            .retain(|k, _| !ours(k));
    }

    /// Closes every idle connection, as Envoy drains a cluster its configuration replaced:
    /// the next request opens one under the new settings. Connections carrying a request or
    /// streams are left to finish it.
    pub fn close_idle(&self) {
        self.h1.lock().expect("h1 pool lock").clear();
        let mut h2 = self.h2.lock().expect("h2 pool lock");
        h2.retain(|_, conns| {
            conns.retain(|c| c.streams.open() > 0);
            !conns.is_empty()
        });
    }

    /// Retires the endpoints `removed` (see `retired`), brings back those in `present`, and
    /// lets go of the pool's connections to the endpoints retired now: idle ones close; an
    /// HTTP/2 connection carrying streams closes when they end (they hold their own handles).
    pub fn retire<'a>(
        &self,
        removed: impl IntoIterator<Item = &'a SocketAddr>,
        present: &std::collections::HashSet<SocketAddr>,
    ) {
        if !self.retired.update(removed, present) {
            return;
        }
        self.drop_retired(&self.retired.snapshot());
    }

    fn drop_retired(&self, retired: &std::collections::HashSet<SocketAddr>) {
        if retired.is_empty() {
            return;
        }
        (self.h1.lock().expect("h1 pool lock")).retain(|k, _| !retired.contains(&k.0));
        (self.h2.lock().expect("h2 pool lock")).retain(|k, _| !retired.contains(&k.0));
    }

    /// Drops idle connections past their idle timeout, and those of retired endpoints; true
    /// when the cluster holds nothing. With no request in flight, no connection to a retired
    /// endpoint can come back to the pool: the retired endpoints are forgotten.
    pub fn sweep(&self) -> bool {
        let retired = self.retired.snapshot();
        self.drop_retired(&retired);
        if !retired.is_empty() && self.count(Counter::Requests) == 0 {
            self.retired.clear();
        }
        let mut h1 = self.h1.lock().expect("h1 pool lock");
        h1.retain(|_, idle| {
            idle.retain_mut(IdleH1::can_carry);
            !idle.is_empty()
        });
        let mut h2 = self.h2.lock().expect("h2 pool lock");
        h2.retain(|_, conns| {
            conns.retain(|c| {
                !c.sender.is_closed()
                    && (c.streams.open() > 0 || (!c.idle_expired() && unexpired(c.expires)))
            });
            !conns.is_empty()
        });
        h1.is_empty() && h2.is_empty() && self.counts.iter().all(|c| c.load(Ordering::Acquire) == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_released() {
        let p = Arc::new(ClusterPool::new("c"));
        let a = p.try_slot(Counter::Pending, 2).unwrap();
        let _b = p.try_slot(Counter::Pending, 2).unwrap();
        assert!(p.try_slot(Counter::Pending, 2).is_none());
        assert_eq!(p.count(Counter::Pending), 2);
        drop(a);
        assert_eq!(p.count(Counter::Pending), 1);
        assert!(p.try_slot(Counter::Pending, 2).is_some());
        // Other counters are independent.
        assert!(p.try_slot(Counter::Requests, 1).is_some());
        assert!(p.try_slot(Counter::Requests, 0).is_none());
    }

    #[test]
    fn requests_wait_for_an_opening_connection_until_its_streams_are_spoken_for() {
        let p = ClusterPool::new("c");
        let dst: PeerKey = ("127.0.0.1:80".parse().unwrap(), None, None);
        fn claim(o: OpenH2<'_>) -> OpeningClaim<'_> {
            match o {
                OpenH2::Mine(c) => c,
                OpenH2::Waiting(_) => panic!("expected to open a connection"),
            }
        }
        fn wait(o: OpenH2<'_>) -> Waiting {
            match o {
                OpenH2::Waiting(w) => w,
                OpenH2::Mine(_) => panic!("expected to wait"),
            }
        }
        // A connection expected to carry 3 streams: its opener's and 2 more.
        let first = claim(p.open_h2(&dst, 3));
        assert!(first.first);
        let a = wait(p.open_h2(&dst, 3));
        let b = wait(p.open_h2(&dst, 3));
        // A third waiter would find no stream on it: it opens another.
        let second = claim(p.open_h2(&dst, 3));
        assert!(!second.first, "another is being opened");
        let c = wait(p.open_h2(&dst, 3));
        assert!(Arc::ptr_eq(&c.0, &second.opening));
        // A waiter that leaves gives its place back.
        drop(a);
        let d = wait(p.open_h2(&dst, 3));
        assert!(Arc::ptr_eq(&d.0, &first.opening));
        drop((b, c, d));
        drop(first);
        drop(second);
        assert!(p.opening_h2.lock().unwrap().is_empty(), "openings removed");
        assert!(claim(p.open_h2(&dst, 1)).first);
    }

    #[test]
    fn the_newest_configurations_connection_limit_holds_for_older_requests() {
        let p = ClusterPool::new("c");
        let limits = |generation, max_connections| super::super::Limits {
            generation,
            max_connections,
            ..Default::default()
        };
        assert_eq!(p.max_connections(&limits(3, 4)), 4);
        // A reload raised it: requests from before keep to the new limit.
        assert_eq!(p.max_connections(&limits(4, 64)), 64);
        assert_eq!(p.max_connections(&limits(3, 4)), 64);
        // And lowered it again.
        assert_eq!(p.max_connections(&limits(5, 2)), 2);
        assert_eq!(p.max_connections(&limits(4, 64)), 2);
        // A destination without a policy has no generation: its own limit.
        assert_eq!(p.max_connections(&limits(0, 9)), 9);
    }

    #[test]
    fn an_empty_cluster_can_be_swept_away() {
        let p = Arc::new(ClusterPool::new("c"));
        assert!(p.sweep());
        let s = p.try_slot(Counter::Connections, 1);
        assert!(!p.sweep());
        drop(s);
        assert!(p.sweep());
    }

    #[test]
    fn retired_endpoints_are_forgotten_once_no_request_is_in_flight() {
        let p = Arc::new(ClusterPool::new("c"));
        let gone: SocketAddr = "10.0.0.1:80".parse().unwrap();
        p.retire([&gone], &std::collections::HashSet::new());
        assert!(p.retired.contains(&gone));
        // A request in flight may still bring a connection back: it stays retired.
        let request = p.try_slot(Counter::Requests, 10);
        p.sweep();
        assert!(p.retired.contains(&gone));
        drop(request);
        p.sweep();
        assert!(!p.retired.contains(&gone));
    }
}
