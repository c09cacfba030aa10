//! Endpoint selection from DestinationRule `loadBalancer`: ROUND_ROBIN, LEAST_REQUEST (power of
//! two choices over in-flight requests), RANDOM, and consistentHash (header, cookie, query
//! parameter or source IP, with rendezvous hashing so a key keeps its endpoint while the set is
//! stable), each weighted by the endpoints' `weight` when they differ. A retry avoids every
//! endpoint the request already tried while there is another, as Istio's routes ask of Envoy
//! (the `previous_hosts` retry predicate).

use std::{
    borrow::Cow,
    hash::{DefaultHasher, Hash, Hasher},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use foldhash::HashMap;
use hyper::{HeaderMap, header::HeaderValue};

use super::affinity;
use crate::policy::model::LoadBalancer;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    LeastRequest,
    Random,
    /// Consistent hash on this key; `None` when the request lacks it (then: round robin).
    Hash(Option<Vec<u8>>),
}

/// What a consistent-hash policy may read from a request.
pub struct HashInputs<'a> {
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
    /// The downstream connection: the client's address and the address it dialled.
    pub peer: SocketAddr,
    pub local: SocketAddr,
}

/// The algorithm for a request, and the `Set-Cookie` its response carries when a cookie policy
/// generated the cookie it hashes on. Istio's default (no `loadBalancer`) is LEAST_REQUEST.
pub fn algorithm(
    lb: Option<&LoadBalancer>,
    inputs: &HashInputs<'_>,
) -> (Algorithm, Option<HeaderValue>) {
    let Some(lb) = lb else {
        return (Algorithm::LeastRequest, None);
    };
    if let Some(h) = &lb.consistent_hash {
        let mut set_cookie = None;
        let key = if let Some(name) = &h.http_header_name {
            inputs
                .headers
                .get(name.as_str())
                .and_then(|v| v.to_str().ok())
                .map(|v| v.as_bytes().to_vec())
        } else if let Some(c) = &h.http_cookie {
            match affinity::find(inputs.headers, &c.name) {
                Some(v) => Some(v.as_bytes().to_vec()),
                None => affinity::generate(c, inputs.peer, inputs.local).map(|g| {
                    set_cookie = g.set_cookie;
                    g.value.into_bytes()
                }),
            }
        } else if let Some(q) = &h.http_query_parameter_name {
            inputs.query.and_then(|qs| {
                qs.split('&').find_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k == q).then(|| v.as_bytes().to_vec())
                })
            })
        } else if h.use_source_ip == Some(true) {
            Some(inputs.peer.ip().to_string().into_bytes())
        } else {
            None
        };
        return (Algorithm::Hash(key), set_cookie);
    }
    let algorithm = match lb.simple.as_deref() {
        Some("ROUND_ROBIN") => Algorithm::RoundRobin,
        Some("RANDOM") => Algorithm::Random,
        // LEAST_CONN is LEAST_REQUEST's deprecated name; UNSPECIFIED uses the default, and
        // PASSTHROUGH has one endpoint, the original destination (see route::endpoints).
        _ => Algorithm::LeastRequest,
    };
    (algorithm, None)
}

/// The algorithm for an opaque connection from `peer`: as for a request, but a consistent
/// hash can only read the source IP (other keys are request attributes: round robin).
pub fn for_connection(lb: Option<&LoadBalancer>, peer: SocketAddr) -> Algorithm {
    let Some(lb) = lb else {
        return Algorithm::LeastRequest;
    };
    match &lb.consistent_hash {
        Some(h) => Algorithm::Hash(
            (h.use_source_ip == Some(true)).then(|| peer.ip().to_string().into_bytes()),
        ),
        None => {
            algorithm(
                Some(lb),
                &HashInputs {
                    headers: &HeaderMap::new(),
                    query: None,
                    peer,
                    local: peer,
                },
            )
            .0
        }
    }
}

/// Load-balancer state shared by every request: in-flight requests per endpoint, and
/// endpoint ages for slow start. Each cluster keeps its own round-robin position (its
/// `ClusterPool::turn`): one shared position would let interleaved services see every other
/// turn, so a two-endpoint service called between two others would always get one endpoint.
#[derive(Default)]
pub struct Balancer {
    active: Arc<Mutex<HashMap<SocketAddr, usize>>>,
    /// When endpoints joined their services, for slow start.
    pub ages: super::slow_start::Ages,
}

/// Counts an in-flight request against its endpoint until dropped.
pub struct InFlight {
    addr: SocketAddr,
    active: Arc<Mutex<HashMap<SocketAddr, usize>>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut m = self.active.lock().expect("lb lock");
        if let Some(n) = m.get_mut(&self.addr) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.addr);
            }
        }
    }
}

impl Balancer {
    pub fn start(&self, addr: SocketAddr) -> InFlight {
        *self
            .active
            .lock()
            .expect("lb lock")
            .entry(addr)
            .or_default() += 1;
        InFlight {
            addr,
            active: self.active.clone(),
        }
    }

    fn load(&self, addr: &SocketAddr) -> usize {
        self.active
            .lock()
            .expect("lb lock")
            .get(addr)
            .copied()
            .unwrap_or(0)
    }

    /// Picks one of `endpoints` (not empty), avoiding those in `tried` while another exists.
    pub fn choose(
        &self,
        turn: &AtomicUsize,
        algo: &Algorithm,
        endpoints: &[SocketAddr],
        tried: &[SocketAddr],
    ) -> SocketAddr {
        let fresh = Fresh::of(endpoints, tried);
        let pool: Cow<'_, [SocketAddr]> = match fresh.filters() {
            true => Cow::Owned(endpoints.iter().copied().filter(|e| fresh.is(e)).collect()),
            false => Cow::Borrowed(endpoints),
        };
        match algo {
            // The rotation goes on past the endpoints tried, as Envoy's round robin picks again
            // under `previous_hosts`: the one after a failed endpoint takes its turn, and the
            // shares stay even.
            Algorithm::RoundRobin | Algorithm::Hash(None) => {
                let next = || endpoints[turn.fetch_add(1, Ordering::Relaxed) % endpoints.len()];
                let mut e = next();
                for _ in 1..endpoints.len() {
                    if fresh.is(&e) {
                        break;
                    }
                    e = next();
                }
                e
            }
            Algorithm::Random => pool[fastrand::usize(0..pool.len())],
            Algorithm::LeastRequest if pool.len() == 1 => pool[0],
            Algorithm::LeastRequest => {
                let a = fastrand::usize(0..pool.len());
                let mut b = fastrand::usize(0..pool.len() - 1);
                if b >= a {
                    b += 1;
                }
                if self.load(&pool[b]) < self.load(&pool[a]) {
                    pool[b]
                } else {
                    pool[a]
                }
            }
            Algorithm::Hash(Some(key)) => *pool
                .iter()
                .max_by_key(|e| {
                    let mut h = DefaultHasher::new();
                    key.hash(&mut h);
                    e.hash(&mut h);
                    h.finish()
                })
                .expect("endpoints are not empty"),
        }
    }

    /// An endpoint of `candidates`, weighted when `weights` gives every endpoint's (`all`,
    /// and the weight at the same index) and unweighted otherwise.
    pub fn pick(
        &self,
        turn: &AtomicUsize,
        algo: &Algorithm,
        candidates: &[SocketAddr],
        tried: &[SocketAddr],
        weights: Option<(&[SocketAddr], &[u32])>,
    ) -> SocketAddr {
        match weights {
            Some((all, w)) => {
                let weight = |a| all.iter().position(|e| *e == a).map_or(1, |i| w[i]);
                self.choose_weighted(turn, algo, candidates, tried, weight)
            }
            None => self.choose(turn, algo, candidates, tried),
        }
    }

    /// As [`Balancer::choose`], for endpoints of unequal `weight`: round robin walks a
    /// low-discrepancy sequence over the weights (each endpoint gets its share, interleaved),
    /// random picks in proportion to weight, least request compares two weighted picks by
    /// in-flight requests per unit of weight, and a consistent hash scales each endpoint's
    /// score by its weight (weighted rendezvous hashing).
    fn choose_weighted(
        &self,
        turn: &AtomicUsize,
        algo: &Algorithm,
        endpoints: &[SocketAddr],
        tried: &[SocketAddr],
        weight: impl Fn(SocketAddr) -> u32,
    ) -> SocketAddr {
        let fresh = Fresh::of(endpoints, tried);
        let pool: Vec<(SocketAddr, u64)> = endpoints
            .iter()
            .filter(|e| fresh.is(e))
            .map(|e| (*e, u64::from(weight(*e).max(1))))
            .collect();
        let total: u64 = pool.iter().map(|(_, w)| w).sum();
        // The endpoint at `x` of the way through the weights (`x` in [0, 1)).
        let at = |x: f64| {
            let mut n = (x * total as f64) as u64;
            for (e, w) in &pool {
                if n < *w {
                    return *e;
                }
                n -= w;
            }
            pool[pool.len() - 1].0
        };
        match algo {
            Algorithm::RoundRobin | Algorithm::Hash(None) => {
                // The golden-ratio sequence spreads consecutive turns over the weights.
                let turn = turn.fetch_add(1, Ordering::Relaxed) as f64;
                at((turn * 0.618_033_988_749_894_9).fract())
            }
            Algorithm::Random => at(fastrand::f64()),
            Algorithm::LeastRequest => {
                let (a, b) = (at(fastrand::f64()), at(fastrand::f64()));
                let per_weight = |e: SocketAddr| self.load(&e) as f64 / weight(e).max(1) as f64;
                if per_weight(b) < per_weight(a) { b } else { a }
            }
            Algorithm::Hash(Some(key)) => {
                pool.iter()
                    .map(|(e, w)| {
                        let mut h = DefaultHasher::new();
                        key.hash(&mut h);
                        e.hash(&mut h);
                        // A uniform draw in (0, 1) from the hash, then -w / ln(u).
                        let u = (h.finish() as f64 + 1.0) / (u64::MAX as f64 + 2.0);
                        (*e, -(*w as f64) / u.ln())
                    })
                    .max_by(|x, y| x.1.total_cmp(&y.1))
                    .map(|(e, _)| e)
                    .expect("endpoints are not empty")
            }
        }
    }
}

/// Which endpoints a pick may take: those not tried yet, or every one once all were.
struct Fresh<'t> {
    tried: &'t [SocketAddr],
    /// Some endpoint was not tried.
    any: bool,
}

impl<'t> Fresh<'t> {
    fn of(endpoints: &[SocketAddr], tried: &'t [SocketAddr]) -> Fresh<'t> {
        let any = tried.is_empty() || endpoints.iter().any(|e| !tried.contains(e));
        Fresh { tried, any }
    }

    fn is(&self, e: &SocketAddr) -> bool {
        !self.any || !self.tried.contains(e)
    }

    /// Whether some endpoint is left out.
    fn filters(&self) -> bool {
        self.any && !self.tried.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 9000 + i)))
            .collect()
    }

    #[test]
    fn round_robin_visits_every_endpoint() {
        let (b, turn) = (Balancer::default(), AtomicUsize::new(0));
        let e = addrs(3);
        let picks: Vec<_> = (0..6)
            .map(|_| b.choose(&turn, &Algorithm::RoundRobin, &e, &[]))
            .collect();
        for a in &e {
            assert_eq!(picks.iter().filter(|p| *p == a).count(), 2);
        }
    }

    #[test]
    fn a_retry_avoids_every_endpoint_tried() {
        let (b, turn) = (Balancer::default(), AtomicUsize::new(0));
        let e = addrs(3);
        for algo in [
            Algorithm::RoundRobin,
            Algorithm::Random,
            Algorithm::LeastRequest,
            Algorithm::Hash(Some(b"k".to_vec())),
        ] {
            for _ in 0..20 {
                assert_ne!(b.choose(&turn, &algo, &e, &[e[0]]), e[0], "{algo:?}");
                assert_eq!(b.choose(&turn, &algo, &e, &[e[0], e[1]]), e[2], "{algo:?}");
            }
        }
        assert_eq!(
            b.choose(&turn, &Algorithm::RoundRobin, &e[..1], &[e[0]]),
            e[0],
            "no other endpoint"
        );
        let all = b.choose(&turn, &Algorithm::Random, &e, &e);
        assert!(e.contains(&all), "every one tried: any of them");
    }

    #[test]
    fn round_robin_gives_a_failed_endpoints_turn_to_the_next() {
        // As Envoy's round robin under `previous_hosts`: with the middle endpoint dead, every
        // request that draws it is retried on the one after it, and the live ones share evenly.
        let (b, turn) = (Balancer::default(), AtomicUsize::new(0));
        let e = addrs(3);
        let dead = e[1];
        let mut served = [0usize; 3];
        for _ in 0..300 {
            let mut first = b.choose(&turn, &Algorithm::RoundRobin, &e, &[]);
            if first == dead {
                first = b.choose(&turn, &Algorithm::RoundRobin, &e, &[dead]);
            }
            served[e.iter().position(|a| *a == first).unwrap()] += 1;
        }
        assert_eq!(served, [150, 0, 150]);
    }

    #[test]
    fn least_request_prefers_the_idle_endpoint() {
        let (b, turn) = (Balancer::default(), AtomicUsize::new(0));
        let e = addrs(2);
        let _busy: Vec<InFlight> = (0..5).map(|_| b.start(e[0])).collect();
        for _ in 0..50 {
            assert_eq!(b.choose(&turn, &Algorithm::LeastRequest, &e, &[]), e[1]);
        }
    }

    #[test]
    fn consistent_hash_is_sticky_and_spreads_keys() {
        let (b, turn) = (Balancer::default(), AtomicUsize::new(0));
        let e = addrs(4);
        let pick = |k: &str| {
            b.choose(
                &turn,
                &Algorithm::Hash(Some(k.as_bytes().to_vec())),
                &e,
                &[],
            )
        };
        for k in ["alice", "bob", "carol"] {
            let first = pick(k);
            assert!((0..20).all(|_| pick(k) == first));
        }
        let distinct: std::collections::HashSet<_> =
            (0..100).map(|i| pick(&format!("user-{i}"))).collect();
        assert!(distinct.len() >= 3, "keys spread over endpoints");
    }

    #[test]
    fn a_connection_hashes_only_on_its_source_ip() {
        let lb = |yaml: &str| serde_json::from_str::<LoadBalancer>(yaml).unwrap();
        let peer: SocketAddr = "10.0.0.7:40000".parse().unwrap();
        assert_eq!(for_connection(None, peer), Algorithm::LeastRequest);
        assert_eq!(
            for_connection(Some(&lb(r#"{"simple": "ROUND_ROBIN"}"#)), peer),
            Algorithm::RoundRobin
        );
        assert_eq!(
            for_connection(
                Some(&lb(r#"{"consistentHash": {"useSourceIp": true}}"#)),
                peer
            ),
            Algorithm::Hash(Some(b"10.0.0.7".to_vec()))
        );
        assert_eq!(
            for_connection(
                Some(&lb(r#"{"consistentHash": {"httpHeaderName": "x-user"}}"#)),
                peer
            ),
            Algorithm::Hash(None),
            "a request attribute: round robin"
        );
    }

    #[test]
    fn weights_share_the_traffic_in_proportion() {
        let (b, turn) = (Balancer::default(), AtomicUsize::new(0));
        let e = addrs(2);
        let weight = |a: SocketAddr| if a == e[0] { 90 } else { 10 };
        for algo in [
            Algorithm::RoundRobin,
            Algorithm::Random,
            Algorithm::LeastRequest,
        ] {
            let first = (0..10_000)
                .filter(|_| b.choose_weighted(&turn, &algo, &e, &[], weight) == e[0])
                .count();
            assert!((8_700..9_300).contains(&first), "{algo:?}: {first}");
        }
        // Weighted rendezvous: over many keys, the shares follow the weights.
        let first = (0..10_000u32)
            .filter(|k| {
                let algo = Algorithm::Hash(Some(k.to_le_bytes().to_vec()));
                b.choose_weighted(&turn, &algo, &e, &[], weight) == e[0]
            })
            .count();
        assert!((8_700..9_300).contains(&first), "hash: {first}");
        assert_eq!(
            b.choose_weighted(&turn, &Algorithm::RoundRobin, &e, &[e[0]], weight),
            e[1],
            "a retry avoids the endpoint that failed"
        );
    }
}
