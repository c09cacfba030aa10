//! Istio's request metrics as plain atomics, built for the request path: a request finds its
//! series through a small per-thread cache (no lock, no allocation), falling back to a
//! read-locked map; each series keeps one shard of counters per worker thread, so cores do not
//! fight over a cache line. A scrape sums the shards.

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    hash::{BuildHasher, BuildHasherDefault, Hasher},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};

/// Envoy's default histogram bounds, which Istio's request histograms use unless a workload
/// asks for others (`sidecar.istio.io/statsHistogramBuckets`): the same for durations (in
/// milliseconds) and sizes (in bytes), so meshd's series aggregate with a sidecar fleet's.
const ENVOY_BOUNDS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// `istio_request_duration_milliseconds` bucket bounds, in milliseconds.
pub const DURATION_MS: [f64; 19] = ENVOY_BOUNDS;

/// `istio_request_bytes` and `istio_response_bytes` bucket bounds.
pub const BYTES: [f64; 19] = ENVOY_BOUNDS;

/// The bounds scaled to integers: nanoseconds for durations; whole bytes for sizes (`le="0.5"`
/// holds only 0).
const fn scaled(by: f64) -> [u64; 19] {
    let mut out = [0; 19];
    let mut i = 0;
    while i < 19 {
        out[i] = (ENVOY_BOUNDS[i] * by) as u64;
        i += 1;
    }
    out
}

const DURATION_NS: [u64; 19] = scaled(1e6);
const BYTES_INT: [u64; 19] = scaled(1.0);

/// Buckets per histogram: the bounds plus the one above the last bound (`+Inf`).
pub const DURATION_BUCKETS: usize = DURATION_MS.len() + 1;
pub const BYTES_BUCKETS: usize = BYTES.len() + 1;

/// The labels of one HTTP request that vary; the others Istio derives from these (see
/// `peers`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct RequestLabels<'a> {
    /// `source`: the client's node recorded the request; `destination`: the workload's node,
    /// where a tunnel stream delivered it.
    pub reporter: &'static str,
    pub source_workload: &'a str,
    pub source_namespace: &'a str,
    /// The source's SPIFFE identity, `unknown` without one.
    pub source_principal: &'a str,
    pub destination_service: &'a str,
    pub destination_workload: &'a str,
    pub destination_namespace: &'a str,
    pub protocol: &'static str,
    pub response_code: u16,
    pub grpc_status: &'a str,
    pub response_flags: &'a str,
    /// `connection_security_policy`: `mutual_tls` through the tunnel, `none` in plaintext,
    /// `unknown` when the request reached no endpoint.
    pub security_policy: &'static str,
    /// The request went to the address the client dialled, no service's cluster: Istio names
    /// its destination service `PassthroughCluster`.
    pub passthrough: bool,
}

/// A series' own copy of its labels.
#[derive(Debug)]
pub struct OwnedLabels {
    pub reporter: &'static str,
    pub source_workload: Box<str>,
    pub source_namespace: Box<str>,
    pub source_principal: Box<str>,
    pub destination_service: Box<str>,
    pub destination_workload: Box<str>,
    pub destination_namespace: Box<str>,
    pub protocol: &'static str,
    pub response_code: u16,
    /// `response_code` as written in the exposition, which is also its sort order there.
    pub response_code_text: Box<str>,
    pub grpc_status: Box<str>,
    pub response_flags: Box<str>,
    pub security_policy: &'static str,
    pub passthrough: bool,
}

impl OwnedLabels {
    fn new(l: &RequestLabels<'_>) -> OwnedLabels {
        OwnedLabels {
            reporter: l.reporter,
            source_workload: l.source_workload.into(),
            source_namespace: l.source_namespace.into(),
            source_principal: l.source_principal.into(),
            destination_service: l.destination_service.into(),
            destination_workload: l.destination_workload.into(),
            destination_namespace: l.destination_namespace.into(),
            protocol: l.protocol,
            response_code: l.response_code,
            response_code_text: l.response_code.to_string().into(),
            grpc_status: l.grpc_status.into(),
            response_flags: l.response_flags.into(),
            security_policy: l.security_policy,
            passthrough: l.passthrough,
        }
    }

    fn matches(&self, l: &RequestLabels<'_>) -> bool {
        self.response_code == l.response_code
            && self.protocol == l.protocol
            && *self.destination_service == *l.destination_service
            && *self.source_workload == *l.source_workload
            && *self.destination_workload == *l.destination_workload
            && *self.response_flags == *l.response_flags
            && *self.grpc_status == *l.grpc_status
            && *self.source_namespace == *l.source_namespace
            && *self.source_principal == *l.source_principal
            && *self.destination_namespace == *l.destination_namespace
            && self.security_policy == l.security_policy
            && self.reporter == l.reporter
            && self.passthrough == l.passthrough
    }
}

/// One histogram's buckets (not cumulative; the last is above every bound) and sum.
struct Histogram<const N: usize> {
    buckets: [AtomicU64; N],
    sum: AtomicU64,
}

impl<const N: usize> Default for Histogram<N> {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
        }
    }
}

impl<const N: usize> Histogram<N> {
    fn observe(&self, bounds: &[u64], value: u64) {
        let bucket = bounds.iter().position(|&b| value <= b).unwrap_or(N - 1);
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum.fetch_add(value, Relaxed);
    }

    fn add_to(&self, totals: &mut HistogramTotals<N>) {
        for (t, b) in totals.buckets.iter_mut().zip(&self.buckets) {
            *t += b.load(Relaxed);
        }
        totals.sum += self.sum.load(Relaxed);
    }
}

/// One worker thread's counters of a series, on cache lines of their own.
#[derive(Default)]
#[repr(align(128))]
struct Shard {
    requests: AtomicU64,
    /// gRPC messages (length-prefixed frames) of the requests, and of their responses.
    request_messages: AtomicU64,
    response_messages: AtomicU64,
    /// Nanoseconds.
    duration: Histogram<DURATION_BUCKETS>,
    request_bytes: Histogram<BYTES_BUCKETS>,
    response_bytes: Histogram<BYTES_BUCKETS>,
}

/// A histogram summed over a series' shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistogramTotals<const N: usize> {
    pub buckets: [u64; N],
    pub sum: u64,
}

impl<const N: usize> Default for HistogramTotals<N> {
    fn default() -> Self {
        HistogramTotals {
            buckets: [0; N],
            sum: 0,
        }
    }
}

impl<const N: usize> HistogramTotals<N> {
    /// Observations in all buckets: the histogram's `_count`, always equal to its `+Inf`
    /// bucket.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// A series' counters summed over its shards, as a scrape reads them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub requests: u64,
    pub request_messages: u64,
    pub response_messages: u64,
    /// Sum in nanoseconds.
    pub duration: HistogramTotals<DURATION_BUCKETS>,
    pub request_bytes: HistogramTotals<BYTES_BUCKETS>,
    pub response_bytes: HistogramTotals<BYTES_BUCKETS>,
}

/// Every label of a series, `(name, value)` sorted by name, as the text format writes them:
/// the request's own labels and those derived from them when the series is created.
pub type AllLabels = Vec<(&'static str, String)>;

/// Makes a new series' labels from its request labels.
pub type Labeller = Arc<dyn Fn(&OwnedLabels) -> AllLabels + Send + Sync>;

/// One label set's counters.
pub struct Series {
    pub labels: OwnedLabels,
    /// The labels as the text format writes them, built once.
    pub text: Box<str>,
    /// The label values in the order of their names, which is how Prometheus' text format
    /// sorts the series of a family.
    sort_key: Box<[String]>,
    shards: Box<[Shard]>,
}

impl Series {
    fn new(labels: OwnedLabels, all: AllLabels, shards: usize) -> Series {
        Series {
            text: super::exposition::label_text(&all),
            sort_key: all.into_iter().map(|(_, v)| v).collect(),
            labels,
            shards: (0..shards).map(|_| Shard::default()).collect(),
        }
    }

    /// Counts one request: 7 relaxed additions on this thread's shard.
    pub fn record(&self, duration: Duration, request_bytes: u64, response_bytes: u64) {
        let s = &self.shards[thread_index() & (self.shards.len() - 1)];
        s.requests.fetch_add(1, Relaxed);
        let ns = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        s.duration.observe(&DURATION_NS, ns);
        s.request_bytes.observe(&BYTES_INT, request_bytes);
        s.response_bytes.observe(&BYTES_INT, response_bytes);
    }

    /// Counts a gRPC request's messages, each way.
    pub fn record_messages(&self, request: u64, response: u64) {
        let s = &self.shards[thread_index() & (self.shards.len() - 1)];
        s.request_messages.fetch_add(request, Relaxed);
        s.response_messages.fetch_add(response, Relaxed);
    }

    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for s in &self.shards {
            t.requests += s.requests.load(Relaxed);
            t.request_messages += s.request_messages.load(Relaxed);
            t.response_messages += s.response_messages.load(Relaxed);
            s.duration.add_to(&mut t.duration);
            s.request_bytes.add_to(&mut t.request_bytes);
            s.response_bytes.add_to(&mut t.response_bytes);
        }
        t
    }
}

/// Hashes are already mixed: the map uses them as they are.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u64 keys are hashed")
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Buckets = HashMap<u64, Vec<Arc<Series>>, BuildHasherDefault<PassThrough>>;

/// The series requests reach (by the hash of their request labels), and those retired when
/// their derived labels changed (by label text): still exported, and taken up again when a
/// request's labels come to derive the same text.
#[derive(Default)]
struct Table {
    live: Buckets,
    retired: HashMap<Box<str>, Arc<Series>>,
}

/// Slots of the per-thread cache (a power of two).
const CACHE_SLOTS: usize = 16;

type CacheSlot = Option<(u64, u64, Arc<Series>)>;

thread_local! {
    /// Recently used series: (store id, label hash, series), indexed by the hash.
    static CACHE: RefCell<[CacheSlot; CACHE_SLOTS]> = const { RefCell::new([const { None }; CACHE_SLOTS]) };
    /// This thread's shard in every series.
    static THREAD_INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
}

static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);
static NEXT_STORE: AtomicU64 = AtomicU64::new(1);

fn thread_index() -> usize {
    THREAD_INDEX.with(|i| {
        if i.get() == usize::MAX {
            i.set(NEXT_THREAD.fetch_add(1, Relaxed));
        }
        i.get()
    })
}

/// All request series, with a cap on how many label sets are admitted.
pub struct SeriesStore {
    /// Names this store's series in the per-thread caches; a new one when series retire, so
    /// no cache keeps reaching them.
    id: AtomicU64,
    hasher: foldhash::fast::RandomState,
    map: RwLock<Table>,
    /// Label sets admitted under the cap (series created uncapped, the folded ones, do not
    /// count).
    admitted: AtomicUsize,
    cap: usize,
    shards: usize,
    labeller: Labeller,
}

impl SeriesStore {
    pub fn new(cap: usize, labeller: Labeller) -> SeriesStore {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        SeriesStore {
            id: AtomicU64::new(NEXT_STORE.fetch_add(1, Relaxed)),
            hasher: foldhash::fast::RandomState::default(),
            map: RwLock::new(Table::default()),
            admitted: AtomicUsize::new(0),
            cap,
            shards: cpus.clamp(1, 8).next_power_of_two(),
            labeller,
        }
    }

    /// Runs `f` on the series of `l`, creating it if needed. With `capped`, a new label set
    /// past the cap is refused: `f` does not run and the answer is false.
    pub fn with(&self, l: &RequestLabels<'_>, capped: bool, f: impl FnOnce(&Series)) -> bool {
        let hash = self.hasher.hash_one(l);
        let slot = hash as usize & (CACHE_SLOTS - 1);
        let mut f = Some(f);
        let store = self.id.load(Relaxed);
        let cached = CACHE.with(|c| {
            let c = c.borrow();
            match &c[slot] {
                Some((id, h, s)) if *id == store && *h == hash && s.labels.matches(l) => {
                    if let Some(f) = f.take() {
                        f(s);
                    }
                    true
                }
                _ => false,
            }
        });
        if cached {
            return true;
        }
        let found = {
            let map = self.map.read().expect("series lock");
            (map.live.get(&hash))
                .and_then(|v| v.iter().find(|s| s.labels.matches(l)))
                .cloned()
        };
        let series = match found {
            Some(s) => s,
            None => {
                if capped && self.admitted.load(Relaxed) >= self.cap {
                    return false;
                }
                let mut map = self.map.write().expect("series lock");
                let raced = (map.live.get(&hash))
                    .and_then(|v| v.iter().find(|s| s.labels.matches(l)))
                    .cloned();
                match raced {
                    Some(s) => s,
                    None => {
                        let labels = OwnedLabels::new(l);
                        let all = (self.labeller)(&labels);
                        let text = super::exposition::label_text(&all);
                        let s = match map.retired.remove(&text) {
                            // Exported all along, and counted under the cap.
                            Some(s) => s,
                            None => {
                                if capped {
                                    // Re-checked under the lock: concurrent inserts stop at
                                    // the cap.
                                    if self.admitted.load(Relaxed) >= self.cap {
                                        return false;
                                    }
                                    self.admitted.fetch_add(1, Relaxed);
                                }
                                Arc::new(Series::new(labels, all, self.shards))
                            }
                        };
                        map.live.entry(hash).or_default().push(s.clone());
                        s
                    }
                }
            }
        };
        if let Some(f) = f.take() {
            f(&series);
        }
        CACHE.with(|c| c.borrow_mut()[slot] = Some((store, hash, series)));
        true
    }

    /// Derives every series' labels again (the workloads they name changed): a series whose
    /// labels now read differently keeps its counts under its old labels, and the requests
    /// from now on count in a series of the new ones, as a sidecar's stats would.
    pub fn relabel(&self) {
        let mut map = self.map.write().expect("series lock");
        let Table { live, retired } = &mut *map;
        let mut moved = false;
        live.retain(|_, series| {
            series.retain(|s| {
                let text = super::exposition::label_text(&(self.labeller)(&s.labels));
                if text == s.text {
                    return true;
                }
                retired.insert(s.text.clone(), s.clone());
                moved = true;
                false
            });
            !series.is_empty()
        });
        if moved {
            self.id.store(NEXT_STORE.fetch_add(1, Relaxed), Relaxed);
        }
    }

    /// Every series, in the order of the text format (by label values).
    pub fn sorted(&self) -> Vec<Arc<Series>> {
        let mut all: Vec<Arc<Series>> = {
            let map = self.map.read().expect("series lock");
            let live = map.live.values().flatten();
            live.chain(map.retired.values()).cloned().collect()
        };
        all.sort_by(|a, b| a.sort_key.cmp(&b.sort_key));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request's own labels, nothing derived.
    fn plain() -> Labeller {
        Arc::new(|l| super::super::exposition::request_labels(l, None))
    }

    fn labels(code: u16) -> RequestLabels<'static> {
        RequestLabels {
            reporter: "source",
            source_workload: "web",
            source_namespace: "demo",
            source_principal: "spiffe://cluster.local/ns/demo/sa/web",
            destination_service: "backend.demo.svc.cluster.local",
            destination_workload: "backend",
            destination_namespace: "demo",
            protocol: "http",
            response_code: code,
            grpc_status: "",
            response_flags: "-",
            security_policy: "unknown",
            passthrough: false,
        }
    }

    #[test]
    fn observations_land_in_inclusive_buckets() {
        let store = SeriesStore::new(10, plain());
        for (ms, bytes) in [(0.5, 1), (0.7, 10), (70_000.0, 10_000_001)] {
            assert!(store.with(&labels(200), true, |s| s.record(
                Duration::from_secs_f64(ms / 1e3),
                bytes,
                0
            )));
        }
        let all = store.sorted();
        assert_eq!(all.len(), 1);
        let t = all[0].totals();
        assert_eq!(t.requests, 3);
        assert_eq!(t.duration.buckets[0], 1, "0.5 ms is in le=0.5");
        assert_eq!(t.duration.buckets[1], 1, "0.7 ms is in le=1");
        assert_eq!(t.duration.buckets[15], 1, "70 s is in le=300000");
        assert_eq!(t.duration.count(), 3);
        assert_eq!(t.request_bytes.buckets[1], 1, "1 byte is in le=1");
        assert_eq!(t.request_bytes.buckets[3], 1, "10 bytes in le=10");
        assert_eq!(
            t.request_bytes.buckets[BYTES_BUCKETS - 1],
            1,
            "above 3600000"
        );
        assert_eq!(t.request_bytes.sum, 10_000_012);
        assert_eq!(t.response_bytes.buckets[0], 3, "0 bytes is in le=0.5");
    }

    #[test]
    fn shards_from_many_threads_add_up() {
        let store = Arc::new(SeriesStore::new(10, plain()));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        store.with(&labels(200), true, |s| {
                            s.record(Duration::from_millis(2), 5, 7)
                        });
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let t = store.sorted()[0].totals();
        assert_eq!(t.requests, 4000);
        assert_eq!(t.duration.sum, 4000 * 2_000_000);
        assert_eq!(t.response_bytes.sum, 4000 * 7);
    }

    #[test]
    fn the_cap_refuses_new_label_sets_but_not_known_ones() {
        let store = SeriesStore::new(2, plain());
        assert!(store.with(&labels(200), true, |_| {}));
        assert!(store.with(&labels(404), true, |_| {}));
        assert!(!store.with(&labels(503), true, |_| {}), "past the cap");
        assert!(store.with(&labels(200), true, |_| {}), "known");
        assert!(store.with(&labels(503), false, |_| {}), "uncapped");
        assert_eq!(store.sorted().len(), 3);
    }

    #[test]
    fn stores_do_not_share_cached_series() {
        let (a, b) = (SeriesStore::new(10, plain()), SeriesStore::new(10, plain()));
        a.with(&labels(200), true, |s| s.record(Duration::ZERO, 0, 0));
        b.with(&labels(200), true, |s| s.record(Duration::ZERO, 0, 0));
        b.with(&labels(200), true, |s| s.record(Duration::ZERO, 0, 0));
        assert_eq!(a.sorted()[0].totals().requests, 1);
        assert_eq!(b.sorted()[0].totals().requests, 2);
    }

    #[test]
    fn a_relabelled_series_keeps_its_counts_and_new_requests_count_anew() {
        let version = Arc::new(std::sync::Mutex::new("v1"));
        let labeller: Labeller = {
            let version = version.clone();
            Arc::new(move |l| {
                let mut all = super::super::exposition::request_labels(l, None);
                all.push(("source_version", version.lock().unwrap().to_string()));
                all
            })
        };
        let store = SeriesStore::new(10, labeller);
        let count = |store: &SeriesStore| {
            let record = |s: &Series| s.record(Duration::ZERO, 0, 0);
            assert!(store.with(&labels(200), true, record));
        };
        let by_version = |store: &SeriesStore| -> Vec<(String, u64)> {
            let mut all: Vec<_> = (store.sorted().iter())
                .map(|s| {
                    let v = s.text.split("source_version=\"").nth(1).unwrap();
                    (v[..2].to_string(), s.totals().requests)
                })
                .collect();
            all.sort();
            all
        };
        count(&store);
        *version.lock().unwrap() = "v2";
        count(&store);
        assert_eq!(by_version(&store), [("v1".into(), 2)], "before the relabel");
        store.relabel();
        count(&store);
        assert_eq!(by_version(&store), [("v1".into(), 2), ("v2".into(), 1)]);
        // Back to v1: its series is taken up again, never written twice.
        *version.lock().unwrap() = "v1";
        store.relabel();
        count(&store);
        assert_eq!(by_version(&store), [("v1".into(), 3), ("v2".into(), 1)]);
        assert_eq!(store.admitted.load(Relaxed), 2);
    }

    #[test]
    fn series_sort_by_label_values_in_label_name_order() {
        let store = SeriesStore::new(10, plain());
        for code in [503, 200, 404] {
            store.with(&labels(code), true, |_| {});
        }
        let codes: Vec<u16> = store
            .sorted()
            .iter()
            .map(|s| s.labels.response_code)
            .collect();
        assert_eq!(codes, [200, 404, 503]);
    }
}
