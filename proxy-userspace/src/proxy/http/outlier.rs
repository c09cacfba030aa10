//! Outlier detection from DestinationRule `outlierDetection`: endpoints that fail in a row are
//! ejected for `baseEjectionTime` × the number of times they were ejected, within
//! `maxEjectionPercent`; below `minHealthPercent` healthy endpoints, ejections are ignored
//! (panic mode). Consecutive 5xx and gateway errors count upstream answers; with
//! `splitExternalLocalOriginErrors`, connect failures, resets and timeouts count separately as
//! local-origin failures (a request's connection first counting as a local-origin success, so
//! only connect failures run that count up), otherwise they count as 5xx (Envoy's semantics).

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use foldhash::HashMap;

use tokio::time::Instant;

use crate::policy::model::OutlierDetection;

/// Longest ejection, as Envoy's default `max_ejection_time`.
const MAX_EJECTION: Duration = Duration::from_secs(300);

#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// 0 turns a detector off.
    pub consecutive_5xx: u32,
    pub consecutive_gateway: u32,
    pub consecutive_local: u32,
    pub split_local: bool,
    pub base_ejection: Duration,
    pub max_ejection_percent: u32,
    pub min_health_percent: u32,
    /// Each whole `interval` an endpoint spends back in the pool takes one off its ejection
    /// count, so an endpoint that stays healthy is ejected for the base time again.
    pub interval: Duration,
}

impl Settings {
    /// Istio's defaults for an `outlierDetection` block: 5 consecutive 5xx, gateway errors off,
    /// 5 local-origin failures (when split), 30 s base ejection, at most 10% ejected, no panic
    /// threshold, a 10 s interval.
    pub fn from_spec(o: &OutlierDetection) -> Settings {
        // The deprecated `consecutiveErrors` counts gateway errors only, and turns the 5xx
        // detector off, as Istio configures Envoy from it (istio/api#617).
        let gateway = o.consecutive_gateway_errors.unwrap_or(0);
        let (consecutive_5xx, consecutive_gateway) =
            match (o.consecutive_5xx_errors, o.consecutive_errors) {
                (Some(n), _) => (n, gateway),
                (None, Some(n)) if n > 0 => (0, n),
                _ => (5, gateway),
            };
        Settings {
            consecutive_5xx,
            consecutive_gateway,
            consecutive_local: o.consecutive_local_origin_failures.unwrap_or(5),
            split_local: o.split_external_local_origin_errors,
            base_ejection: o
                .base_ejection_time
                .map_or(Duration::from_secs(30), |d| d.0),
            // As Istio: 0 is unset, which is Envoy's default.
            max_ejection_percent: o.max_ejection_percent.filter(|p| *p > 0).unwrap_or(10),
            min_health_percent: o.min_health_percent.unwrap_or(0),
            interval: o.interval.map_or(Duration::from_secs(10), |d| d.0),
        }
    }
}

/// A DestinationRule that changed with a reload, and which of its host's clusters that
/// reaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleChange {
    /// The rule's host, in full (possibly a wildcard).
    pub host: String,
    /// The rule came, went, or changed outside its subsets: every cluster of the host.
    pub every_cluster: bool,
    /// Else the subsets whose entries changed, came or went.
    pub subsets: Vec<String>,
}

impl RuleChange {
    pub fn every(host: String) -> RuleChange {
        RuleChange {
            host,
            every_cluster: true,
            subsets: Vec::new(),
        }
    }

    /// Whether the change reaches `cluster` (`host|subset|port`).
    fn reaches(&self, cluster: &str) -> bool {
        if !super::route::cluster_of_hosts(cluster, std::slice::from_ref(&self.host)) {
            return false;
        }
        let subset = cluster.split('|').nth(1).unwrap_or("");
        self.every_cluster || (!subset.is_empty() && self.subsets.iter().any(|s| s == subset))
    }
}

/// How one request to an endpoint ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An upstream answer; 5xx and gateway errors count, anything else resets the counters.
    Status(u16),
    /// Connect failure, reset or timeout: the failure happened on meshd's side of the call.
    LocalFailure,
    /// A reset or timeout of a request that had its connection: a local-origin failure too,
    /// but, as in Envoy, its connection's success came first, which in split mode starts the
    /// local-origin count again (so only connect failures run it up).
    LocalFailureConnected,
}

#[derive(Debug, Default)]
struct Host {
    c5xx: u32,
    gateway: u32,
    local: u32,
    ejected_until: Option<Instant>,
    /// When the last ejection ended (or ends).
    ejection_end: Option<Instant>,
    ejections: u32,
    /// The detector of the last ejection, by its DestinationRule field.
    ejected_by: Option<&'static str>,
}

/// What changed for an endpoint, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Ejected { for_: Duration },
    Returned,
}

/// One cluster's endpoints, under the settings their history was counted with.
struct Cluster {
    settings: Settings,
    /// The settings before the last change: requests begun under them may still finish.
    replaced: Option<Settings>,
    hosts: HashMap<SocketAddr, Host>,
    /// When the detector started: its `interval` timer ticks from here.
    since: Instant,
}

impl Cluster {
    /// The endpoints' states, forgotten first if the cluster's settings changed since: as
    /// Envoy gives a changed cluster a fresh detector. A request still carrying the settings
    /// they replaced (it began before the reload) is counted in the new history, not taken
    /// for another change, which would forget what the new settings counted.
    fn under(&mut self, s: &Settings) -> &mut HashMap<SocketAddr, Host> {
        if self.settings != *s && self.replaced.as_ref() != Some(s) {
            self.replaced = Some(std::mem::replace(&mut self.settings, s.clone()));
            self.hosts.clear();
            self.since = Instant::now();
        }
        &mut self.hosts
    }
}

/// The first tick of a detector's `interval` timer, started at `since`, at or after `at`: as
/// Envoy's detector returns an ejected endpoint only when its timer looks.
fn tick_at_or_after(since: Instant, interval: Duration, at: Instant) -> Instant {
    let step = interval.as_nanos().max(1);
    let ticks = at
        .saturating_duration_since(since)
        .as_nanos()
        .div_ceil(step);
    since + Duration::from_nanos(u64::try_from(ticks * step).unwrap_or(u64::MAX))
}

/// Which consecutive-failure counters reached their threshold with this outcome.
#[derive(Clone, Copy, Default)]
struct Fired {
    five_xx: bool,
    gateway: bool,
    local: bool,
}

#[derive(Default)]
pub struct Detector {
    /// Cluster → endpoint → state; looked up by `&str`, so requests allocate nothing.
    hosts: Mutex<HashMap<String, Cluster>>,
    /// Whether any endpoint has a history yet. Until one fails, requests take no lock at all.
    tracked: AtomicBool,
}

impl Detector {
    /// Counts an outcome for `addr` of `cluster`; returns `Ejected` when it ejects it.
    pub fn record(
        &self,
        cluster: &str,
        s: &Settings,
        addr: SocketAddr,
        outcome: Outcome,
        all: &[SocketAddr],
    ) -> Option<Event> {
        let success = matches!(outcome, Outcome::Status(code) if code < 500);
        if success && !self.tracked.load(Ordering::Acquire) {
            return None;
        }
        let mut all_hosts = self.hosts.lock().expect("outlier lock");
        // A success for an endpoint with no history changes nothing: the common case is cheap.
        if success
            && all_hosts
                .get(cluster)
                .is_none_or(|c| c.settings != *s || !c.hosts.contains_key(&addr))
        {
            return None;
        }
        let now = Instant::now();
        let c = match all_hosts.get_mut(cluster) {
            Some(c) => {
                c.under(s);
                c
            }
            None => {
                let fresh = Cluster {
                    settings: s.clone(),
                    replaced: None,
                    hosts: HashMap::default(),
                    since: now,
                };
                all_hosts.entry(cluster.to_string()).or_insert(fresh)
            }
        };
        let (since, hosts) = (c.since, &mut c.hosts);
        let ejected_now = all
            .iter()
            .filter(|a| {
                hosts
                    .get(*a)
                    .is_some_and(|h| h.ejected_until.is_some_and(|t| t > now))
            })
            .count();
        self.tracked.store(true, Ordering::Release);
        let h = hosts.entry(addr).or_default();
        let fired = match outcome {
            Outcome::Status(code) if code >= 500 => {
                h.c5xx += 1;
                h.local = 0;
                if matches!(code, 502..=504) {
                    h.gateway += 1;
                } else {
                    h.gateway = 0;
                }
                Fired {
                    five_xx: reaches(s.consecutive_5xx, h.c5xx),
                    gateway: reaches(s.consecutive_gateway, h.gateway),
                    local: false,
                }
            }
            Outcome::Status(_) => {
                *h = Host {
                    ejections: h.ejections,
                    ejected_until: h.ejected_until,
                    ejection_end: h.ejection_end,
                    ejected_by: h.ejected_by,
                    ..Host::default()
                };
                Fired::default()
            }
            Outcome::LocalFailure | Outcome::LocalFailureConnected if s.split_local => {
                h.local = match outcome {
                    Outcome::LocalFailureConnected => 1,
                    _ => h.local + 1,
                };
                Fired {
                    local: reaches(s.consecutive_local, h.local),
                    ..Fired::default()
                }
            }
            Outcome::LocalFailure | Outcome::LocalFailureConnected => {
                // Unsplit, a local-origin failure counts as a 5xx and as a gateway error.
                h.c5xx += 1;
                h.gateway += 1;
                Fired {
                    five_xx: reaches(s.consecutive_5xx, h.c5xx),
                    gateway: reaches(s.consecutive_gateway, h.gateway),
                    local: false,
                }
            }
        };
        if !(fired.five_xx || fired.gateway || fired.local)
            || h.ejected_until.is_some_and(|t| t > now)
        {
            return None;
        }
        // As Envoy: a counter that reached its threshold starts again whether or not the
        // ejection then happens, so an endpoint whose ejection maxEjectionPercent refused
        // needs as many failures again; one already ejected keeps counting.
        if fired.five_xx {
            h.c5xx = 0;
        }
        if fired.gateway {
            h.gateway = 0;
        }
        if fired.local {
            h.local = 0;
        }
        // As Envoy (since 1.28, without `always_eject_one_host`, which Istio does not set): an
        // ejection that would take the ejected share past maxEjectionPercent does not happen,
        // so at Istio's default 10% a service of fewer than ten endpoints ejects none.
        let share = 100 * (ejected_now as u64 + 1);
        if share > all.len() as u64 * u64::from(s.max_ejection_percent) {
            return None;
        }
        // As Envoy: the count went down by one for each interval spent back in the pool.
        if let Some(end) = h.ejection_end.filter(|end| now > *end) {
            let back = (now - end).as_nanos() / s.interval.as_nanos().max(1);
            h.ejections = h
                .ejections
                .saturating_sub(u32::try_from(back).unwrap_or(u32::MAX));
        }
        // As Envoy: the count stops growing once its ejection time passes the longest, so an
        // endpoint back after a long outage needs only that many healthy intervals, not one
        // per ejection, to be ejected for the base time again.
        let longest = MAX_EJECTION.max(s.base_ejection);
        if s.base_ejection * h.ejections < longest + s.base_ejection {
            h.ejections += 1;
        }
        let for_ = (s.base_ejection * h.ejections).min(longest);
        h.ejected_until = Some(tick_at_or_after(since, s.interval, now + for_));
        h.ejection_end = h.ejected_until;
        h.ejected_by = Some(if fired.five_xx {
            "consecutive5xxErrors"
        } else if fired.gateway {
            "consecutiveGatewayErrors"
        } else {
            "consecutiveLocalOriginFailures"
        });
        Some(Event::Ejected { for_ })
    }

    /// The endpoints to balance over: all but the ejected ones (possibly none), unless fewer
    /// than `minHealthPercent` would remain (panic mode: all of them). Also reports endpoints
    /// whose ejection just ended.
    pub fn healthy(
        &self,
        cluster: &str,
        s: &Settings,
        all: &[SocketAddr],
    ) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
        if !self.tracked.load(Ordering::Acquire) {
            return (all.to_vec(), Vec::new());
        }
        let mut all_hosts = self.hosts.lock().expect("outlier lock");
        let Some(hosts) = all_hosts.get_mut(cluster).map(|c| c.under(s)) else {
            return (all.to_vec(), Vec::new());
        };
        let now = Instant::now();
        let mut returned = Vec::new();
        let healthy: Vec<SocketAddr> = all
            .iter()
            .copied()
            .filter(|a| match hosts.get_mut(a) {
                Some(h) => match h.ejected_until {
                    Some(t) if t > now => false,
                    Some(_) => {
                        h.ejected_until = None;
                        returned.push(*a);
                        true
                    }
                    None => true,
                },
                None => true,
            })
            .collect();
        // Istio sets Envoy's panic threshold to minHealthPercent, 0 by default: no panic, so
        // with every endpoint ejected there is none to send to (503 UH).
        let panic = (healthy.len() * 100) < all.len() * s.min_health_percent as usize;
        (if panic { all.to_vec() } else { healthy }, returned)
    }
}

/// One endpoint's outlier state, for `/stats/outliers`.
#[derive(Debug, serde::Serialize)]
pub struct EndpointHealth {
    pub cluster: String,
    pub endpoint: SocketAddr,
    pub ejected: bool,
    /// Milliseconds until an ejected endpoint returns.
    pub ejected_for_ms: u64,
    pub ejections: u32,
    /// The detector of the last ejection (its DestinationRule field), if there was one.
    pub ejected_by: Option<&'static str>,
    pub consecutive_5xx: u32,
    pub consecutive_gateway_errors: u32,
    pub consecutive_local_origin_failures: u32,
}

impl Detector {
    /// Ends the ejections whose time is up, whether or not a request has looked since, and
    /// returns their endpoints, as Envoy returns them on its detector's timer.
    pub fn end_ejections(&self) -> Vec<(String, SocketAddr)> {
        if !self.tracked.load(Ordering::Acquire) {
            return Vec::new();
        }
        let now = Instant::now();
        let mut ended = Vec::new();
        let mut all_hosts = self.hosts.lock().expect("outlier lock");
        for (cluster, c) in all_hosts.iter_mut() {
            for (addr, h) in c.hosts.iter_mut() {
                if h.ejected_until.is_some_and(|t| t <= now) {
                    h.ejected_until = None;
                    ended.push((cluster.clone(), *addr));
                }
            }
        }
        ended
    }

    /// Forgets `cluster`, whose outlier detection was removed: its ejections end, and a
    /// detector added back later starts fresh, as Envoy's would.
    pub fn forget(&self, cluster: &str) {
        if self.tracked.load(Ordering::Acquire) {
            self.hosts.lock().expect("outlier lock").remove(cluster);
        }
    }

    /// Forgets the clusters a DestinationRule's change reached (its host, possibly a
    /// wildcard; all its clusters, or those of the subsets that changed): Envoy builds a
    /// changed cluster afresh, detector included, whether or not a request has come since,
    /// and leaves the others as they were.
    pub fn forget_changed(&self, changes: &[RuleChange]) {
        if changes.is_empty() || !self.tracked.load(Ordering::Acquire) {
            return;
        }
        let mut all = self.hosts.lock().expect("outlier lock");
        all.retain(|cluster, _| !changes.iter().any(|c| c.reaches(cluster)));
    }

    /// Forgets the endpoints a reload took out of their service, as Envoy's detector erases
    /// a removed host's monitor: one that comes back (a recycled pod address, a restarted VM)
    /// is a new host, with no ejection and no history. `endpoints(host, port)`: the service
    /// port's endpoint addresses before and after the reload.
    pub fn forget_removed(
        &self,
        endpoints: impl Fn(&str, u16) -> (HashSet<SocketAddr>, HashSet<SocketAddr>),
    ) {
        if !self.tracked.load(Ordering::Acquire) {
            return;
        }
        let mut all = self.hosts.lock().expect("outlier lock");
        for (name, cluster) in all.iter_mut() {
            let Some((host, port)) = super::route::cluster_host_port(name) else {
                continue;
            };
            let (before, now) = endpoints(host, port);
            (cluster.hosts).retain(|addr, _| !before.contains(addr) || now.contains(addr));
        }
    }

    pub fn report(&self) -> Vec<EndpointHealth> {
        let now = Instant::now();
        let hosts = self.hosts.lock().expect("outlier lock");
        let mut out: Vec<EndpointHealth> = hosts
            .iter()
            .flat_map(|(cluster, c)| {
                c.hosts
                    .iter()
                    .map(move |(endpoint, h)| (cluster, endpoint, h))
            })
            .map(|(cluster, endpoint, h)| {
                let left = h
                    .ejected_until
                    .map(|t| t.saturating_duration_since(now))
                    .unwrap_or_default();
                EndpointHealth {
                    cluster: crate::telemetry::access_log::istio_cluster_name(cluster),
                    endpoint: *endpoint,
                    ejected: !left.is_zero(),
                    ejected_for_ms: left.as_millis() as u64,
                    ejections: h.ejections,
                    ejected_by: h.ejected_by,
                    consecutive_5xx: h.c5xx,
                    consecutive_gateway_errors: h.gateway,
                    consecutive_local_origin_failures: h.local,
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.cluster, a.endpoint).cmp(&(&b.cluster, b.endpoint)));
        out
    }
}

/// As Envoy's monitor: a counter fires when it reaches its threshold, not past it.
fn reaches(threshold: u32, count: u32) -> bool {
    threshold > 0 && count == threshold
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 9000 + i)))
            .collect()
    }

    fn settings() -> Settings {
        Settings {
            consecutive_5xx: 3,
            consecutive_gateway: 0,
            consecutive_local: 2,
            split_local: false,
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: 100,
            min_health_percent: 0,
            interval: Duration::from_secs(10),
        }
    }

    #[test]
    fn a_changed_or_removed_detector_starts_fresh() {
        let (d, s, e) = (Detector::default(), settings(), addrs(2));
        for _ in 0..3 {
            d.record("c", &s, e[0], Outcome::Status(500), &e);
        }
        assert_eq!(d.healthy("c", &s, &e).0, vec![e[1]]);
        // New settings: the ejection and the counts are forgotten.
        let changed = Settings {
            consecutive_5xx: 4,
            ..settings()
        };
        assert_eq!(d.healthy("c", &changed, &e).0, e);
        assert!(d.report().iter().all(|h| !h.ejected));
        // A request begun under the old settings finishing now forgets nothing the new ones
        // counted.
        d.record("c", &changed, e[1], Outcome::Status(500), &e);
        d.record("c", &s, e[0], Outcome::Status(200), &e);
        assert_eq!(d.report().iter().map(|h| h.consecutive_5xx).sum::<u32>(), 1);
        d.record("c", &changed, e[1], Outcome::Status(200), &e);
        // Ejected again, then the detector removed and added back as it was: fresh.
        for _ in 0..4 {
            d.record("c", &changed, e[0], Outcome::Status(500), &e);
        }
        assert_eq!(d.healthy("c", &changed, &e).0, vec![e[1]]);
        d.forget("c");
        assert!(d.report().is_empty());
        assert_eq!(d.healthy("c", &changed, &e).0, e);
    }

    #[test]
    fn deprecated_consecutive_errors_count_gateway_errors_only() {
        let spec: OutlierDetection =
            serde_json::from_str(r#"{"consecutiveErrors": 2, "maxEjectionPercent": 100}"#).unwrap();
        let s = Settings::from_spec(&spec);
        assert_eq!((s.consecutive_5xx, s.consecutive_gateway), (0, 2));
        let (d, e) = (Detector::default(), addrs(2));
        for _ in 0..3 {
            d.record("c", &s, e[0], Outcome::Status(500), &e);
        }
        assert_eq!(d.healthy("c", &s, &e).0, e, "500s do not eject");
        d.record("c", &s, e[0], Outcome::Status(503), &e);
        d.record("c", &s, e[0], Outcome::Status(502), &e);
        assert_eq!(
            d.healthy("c", &s, &e).0,
            vec![e[1]],
            "two gateway errors do"
        );
        let both: OutlierDetection =
            serde_json::from_str(r#"{"consecutive5xxErrors": 4, "consecutiveErrors": 2}"#).unwrap();
        let s = Settings::from_spec(&both);
        assert_eq!((s.consecutive_5xx, s.consecutive_gateway), (4, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejection_ends_on_time_without_a_request_to_see_it() {
        let (d, s, e) = (Detector::default(), settings(), addrs(2));
        for _ in 0..3 {
            d.record("c", &s, e[0], Outcome::Status(500), &e);
        }
        assert!(d.end_ejections().is_empty(), "still ejected");
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(d.end_ejections(), vec![("c".to_string(), e[0])]);
        assert!(d.end_ejections().is_empty(), "reported once");
        // A request after it finds the endpoint back, and reports no second return.
        assert_eq!(d.healthy("c", &s, &e), (e.clone(), vec![]));
    }

    #[tokio::test(start_paused = true)]
    async fn ejects_after_consecutive_5xx_and_returns_after_the_ejection_time() {
        let (d, s, e) = (Detector::default(), settings(), addrs(2));
        assert_eq!(d.record("c", &s, e[0], Outcome::Status(500), &e), None);
        assert_eq!(d.record("c", &s, e[0], Outcome::Status(503), &e), None);
        assert_eq!(
            d.record("c", &s, e[0], Outcome::Status(500), &e),
            Some(Event::Ejected {
                for_: Duration::from_secs(30)
            })
        );
        assert_eq!(d.healthy("c", &s, &e).0, vec![e[1]]);
        let ejected = d.report().into_iter().find(|h| h.endpoint == e[0]).unwrap();
        assert_eq!(ejected.ejected_by, Some("consecutive5xxErrors"));
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(d.healthy("c", &s, &e).0, vec![e[1]]);
        tokio::time::advance(Duration::from_secs(2)).await;
        let (healthy, returned) = d.healthy("c", &s, &e);
        assert_eq!((healthy, returned), (e.clone(), vec![e[0]]));
        // The second ejection (at 31 s) lasts twice as long, and ends when the detector's
        // 10 s interval timer next looks after that: at 100 s, not 91 s.
        for _ in 0..3 {
            d.record("c", &s, e[0], Outcome::Status(500), &e);
        }
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(d.healthy("c", &s, &e).0, vec![e[1]], "at 92 s");
        tokio::time::advance(Duration::from_secs(8)).await;
        assert_eq!(d.healthy("c", &s, &e).0, e, "at 100 s");
        // Two intervals (10 s) back in the pool take the count down by two: the base again.
        tokio::time::advance(Duration::from_secs(20)).await;
        let mut last = None;
        for _ in 0..3 {
            last = d.record("c", &s, e[0], Outcome::Status(500), &e);
        }
        assert_eq!(
            last,
            Some(Event::Ejected {
                for_: Duration::from_secs(30)
            })
        );
    }

    /// As Envoy: the ejection count stops growing once its time passes the longest ejection
    /// (300 s), so after a long outage a few healthy intervals bring the time down again.
    #[tokio::test(start_paused = true)]
    async fn the_ejection_count_stops_growing_past_the_longest_ejection() {
        let (d, s, e) = (Detector::default(), settings(), addrs(2));
        let mut last = None;
        for _ in 0..15 {
            for _ in 0..3 {
                last = d.record("c", &s, e[0], Outcome::Status(500), &e);
            }
            // Back in the pool as soon as the ejection ends.
            while d.healthy("c", &s, &e).0 != e {
                tokio::time::advance(Duration::from_secs(1)).await;
            }
        }
        let longest = Some(Event::Ejected {
            for_: Duration::from_secs(300),
        });
        assert_eq!(last, longest);
        // Three intervals healthy: the count, stopped at 11 (330 s), is 8, and the next
        // ejection lasts 9 × 30 s (with a count of 15, it would be the longest still).
        tokio::time::advance(Duration::from_secs(31)).await;
        for _ in 0..3 {
            last = d.record("c", &s, e[0], Outcome::Status(500), &e);
        }
        assert_eq!(
            last,
            Some(Event::Ejected {
                for_: Duration::from_secs(270)
            })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_ejected_endpoint_leaves_none_unless_min_health_percent_is_set() {
        let (d, s, e) = (Detector::default(), settings(), addrs(1));
        for _ in 0..3 {
            d.record("c", &s, e[0], Outcome::Status(503), &e);
        }
        // 10% of one endpoint rounds down, and Envoy ejects one anyway; Istio's panic
        // threshold is minHealthPercent, 0 by default, so nothing is left to send to.
        assert_eq!(d.healthy("c", &s, &e).0, vec![]);
        let panic = Settings {
            min_health_percent: 50,
            ..s
        };
        assert_eq!(d.healthy("c", &panic, &e).0, e, "panic mode");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_ejection_starts_the_count_again_and_an_ejected_endpoint_keeps_counting() {
        let (d, e) = (Detector::default(), addrs(2));
        let s = Settings {
            max_ejection_percent: 50,
            ..settings()
        };
        for _ in 0..3 {
            d.record("c", &s, e[0], Outcome::Status(500), &e);
        }
        // e[1]'s third failure reaches the threshold, but a second ejection would pass 50%.
        for _ in 0..3 {
            assert_eq!(d.record("c", &s, e[1], Outcome::Status(500), &e), None);
        }
        // e[0] fails on while ejected (traffic in panic mode): its count goes past the
        // threshold.
        for _ in 0..4 {
            d.record("c", &s, e[0], Outcome::Status(500), &e);
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(d.healthy("c", &s, &e).0, e);
        // As Envoy: e[0]'s count, past the threshold, does not eject it on its next failure.
        assert_eq!(d.record("c", &s, e[0], Outcome::Status(500), &e), None);
        // And e[1] counts from zero again: its third failure from here ejects it.
        for _ in 0..2 {
            assert_eq!(d.record("c", &s, e[1], Outcome::Status(500), &e), None);
        }
        assert!(d.record("c", &s, e[1], Outcome::Status(500), &e).is_some());
    }

    #[test]
    fn a_rule_change_forgets_only_the_clusters_it_reaches() {
        let (d, s, e) = (Detector::default(), settings(), addrs(2));
        let host = "reviews.default.svc.cluster.local";
        for subset in ["", "v1", "v2"] {
            d.record(
                &format!("{host}|{subset}|80"),
                &s,
                e[0],
                Outcome::Status(500),
                &e,
            );
        }
        let v2 = RuleChange {
            host: host.into(),
            every_cluster: false,
            subsets: vec!["v2".into()],
        };
        d.forget_changed(&[v2]);
        let left: Vec<String> = d.report().into_iter().map(|h| h.cluster).collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(!left.iter().any(|c| c.ends_with("|v2|80")), "{left:?}");
        d.forget_changed(&[RuleChange::every("*.svc.cluster.local".into())]);
        assert!(d.report().is_empty());
    }

    #[test]
    fn an_endpoint_a_reload_removes_comes_back_without_its_ejection() {
        let (d, s, e) = (Detector::default(), settings(), addrs(2));
        let cluster = "reviews.default.svc.cluster.local||80";
        for _ in 0..3 {
            d.record(cluster, &s, e[0], Outcome::Status(500), &e);
        }
        d.record(cluster, &s, e[1], Outcome::Status(500), &e);
        assert!(!d.healthy(cluster, &s, &e).0.contains(&e[0]), "ejected");
        // e[0] left the service: its monitor goes, e[1]'s history stays.
        d.forget_removed(|host, port| {
            assert_eq!((host, port), ("reviews.default.svc.cluster.local", 80));
            (e.iter().copied().collect(), HashSet::from([e[1]]))
        });
        assert_eq!(d.healthy(cluster, &s, &e).0, e, "back as a new endpoint");
        let left: Vec<SocketAddr> = d.report().into_iter().map(|h| h.endpoint).collect();
        assert_eq!(left, [e[1]]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_count() {
        let (d, s, e) = (Detector::default(), settings(), addrs(2));
        d.record("c", &s, e[0], Outcome::Status(500), &e);
        d.record("c", &s, e[0], Outcome::Status(500), &e);
        d.record("c", &s, e[0], Outcome::Status(200), &e);
        assert_eq!(d.record("c", &s, e[0], Outcome::Status(500), &e), None);
        assert_eq!(d.healthy("c", &s, &e).0, e);
    }

    #[tokio::test(start_paused = true)]
    async fn local_origin_failures_count_as_5xx_unless_split() {
        let (d, mut s, e) = (Detector::default(), settings(), addrs(2));
        for _ in 0..2 {
            d.record("c", &s, e[0], Outcome::LocalFailure, &e);
        }
        assert!(
            d.record("c", &s, e[0], Outcome::LocalFailure, &e).is_some(),
            "3rd failure = 3rd 5xx"
        );
        s.split_local = true;
        assert!(d.record("c", &s, e[1], Outcome::LocalFailure, &e).is_none());
        assert!(
            d.record("c", &s, e[1], Outcome::LocalFailure, &e).is_some(),
            "split: 2 local failures eject"
        );
        // Split, as in Envoy, a request's connection counts as a local-origin success first:
        // resets and timeouts after it never run the count past 1, only connect failures do.
        let e2 = addrs(3);
        for _ in 0..5 {
            let failed = Outcome::LocalFailureConnected;
            assert!(d.record("c", &s, e2[2], failed, &e2).is_none());
        }
        assert!(
            d.record("c", &s, e2[2], Outcome::LocalFailure, &e2)
                .is_some()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn max_ejection_percent_and_panic_mode() {
        let e = addrs(4);
        let d = Detector::default();
        let s = Settings {
            max_ejection_percent: 25,
            ..settings()
        };
        for a in &e[..2] {
            for _ in 0..3 {
                d.record("c", &s, *a, Outcome::Status(500), &e);
            }
        }
        assert_eq!(
            d.healthy("c", &s, &e).0.len(),
            3,
            "25% of 4: only one endpoint ejected"
        );
        // Istio's default 10%: a service of fewer than ten endpoints ejects none, as Envoy
        // without `always_eject_one_host`; one of ten may go.
        let ten_percent = Settings {
            max_ejection_percent: 10,
            ..settings()
        };
        let few = Detector::default();
        for _ in 0..3 {
            few.record("c", &ten_percent, e[0], Outcome::Status(500), &e);
        }
        assert_eq!(
            few.healthy("c", &ten_percent, &e).0,
            e,
            "1 of 4 is over 10%"
        );
        let ten = addrs(10);
        for _ in 0..3 {
            few.record("d", &ten_percent, ten[0], Outcome::Status(500), &ten);
            few.record("d", &ten_percent, ten[1], Outcome::Status(500), &ten);
        }
        assert_eq!(few.healthy("d", &ten_percent, &ten).0.len(), 9, "1 of 10");
        let panic = Settings {
            min_health_percent: 90,
            ..s
        };
        assert_eq!(
            d.healthy("c", &panic, &e).0.len(),
            4,
            "below minHealthPercent, ejections are ignored"
        );
    }
}
