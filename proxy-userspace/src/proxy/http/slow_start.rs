//! Slow start (DestinationRule `warmup`, or the older `warmupDurationSecs`), as Envoy's: an
//! endpoint new to its service gets a share of its weight that grows with its age over the
//! window, `max(minimumPercent, (age / window) ^ (1 / aggression))`, with the age counted as at
//! least one second. It applies to ROUND_ROBIN and LEAST_REQUEST, as in Envoy.

use std::{net::SocketAddr, sync::Mutex, time::Duration};

use foldhash::HashMap;
use tokio::time::Instant;

use crate::policy::model::LoadBalancer;

/// A service's slow-start settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlowStart {
    window: Duration,
    min_share: f64,
    aggression: f64,
}

impl SlowStart {
    /// The settings of `lb`, when it asks for slow start and balances in a way that has it.
    pub fn from_spec(lb: &LoadBalancer) -> Option<SlowStart> {
        let (window, min_percent, aggression) = match &lb.warmup {
            Some(w) => (w.duration, w.minimum_percent, w.aggression),
            None => (lb.warmup_duration_secs, None, None),
        };
        let window = window.map(|d| d.0).filter(|d| !d.is_zero())?;
        let balanced = lb.consistent_hash.is_none()
            && !matches!(lb.simple.as_deref(), Some("RANDOM" | "PASSTHROUGH"));
        balanced.then_some(SlowStart {
            window,
            min_share: min_percent.unwrap_or(10.0) / 100.0,
            aggression: aggression.unwrap_or(1.0),
        })
    }

    /// How long an endpoint warms up.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The share of its weight an endpoint of `age` gets.
    pub fn share(&self, age: Duration) -> f64 {
        if age >= self.window {
            return 1.0;
        }
        let time = age.as_secs_f64().max(1.0) / self.window.as_secs_f64();
        time.powf(1.0 / self.aggression).clamp(self.min_share, 1.0)
    }

    /// The endpoints' weights (`weights`, or 1 each) scaled by their shares, in thousandths;
    /// `None` when none of them is warming up.
    pub fn weights(&self, ages: &[Duration], weights: Option<&[u32]>) -> Option<Vec<u32>> {
        if ages.iter().all(|a| *a >= self.window) {
            return None;
        }
        let weight = |i: usize| weights.map_or(1, |w| w[i]);
        Some(
            (ages.iter().enumerate())
                .map(|(i, age)| (f64::from(weight(i)) * self.share(*age) * 1000.0).max(1.0) as u32)
                .collect(),
        )
    }
}

/// When each service's endpoints joined it, as this meshd first saw them; an endpoint that
/// leaves and comes back starts again.
#[derive(Default)]
pub struct Ages {
    clusters: Mutex<HashMap<String, Known>>,
}

#[derive(Default)]
struct Known {
    joined: HashMap<SocketAddr, Instant>,
    /// When the newest endpoint joined.
    newest: Option<Instant>,
}

impl Ages {
    /// The age of each endpoint of `cluster`, in the order of `endpoints`, while any of them
    /// joined less than `window` ago; `None` after that. A set seen before costs a lookup per
    /// endpoint, and once warm nothing more.
    pub fn warming(
        &self,
        cluster: &str,
        endpoints: &[SocketAddr],
        window: Duration,
    ) -> Option<Vec<Duration>> {
        let now = Instant::now();
        let mut all = self.clusters.lock().expect("slow start lock");
        if !all.contains_key(cluster) {
            all.insert(cluster.to_string(), Known::default());
        }
        let known = all.get_mut(cluster).expect("inserted");
        let unchanged = known.joined.len() == endpoints.len()
            && endpoints.iter().all(|a| known.joined.contains_key(a));
        if !unchanged {
            known.joined.retain(|a, _| endpoints.contains(a));
            for a in endpoints {
                known.joined.entry(*a).or_insert(now);
            }
            known.newest = known.joined.values().max().copied();
        }
        if known.newest.is_none_or(|t| now - t >= window) {
            return None;
        }
        Some(endpoints.iter().map(|a| now - known.joined[a]).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::Warmup;

    fn lb(json: &str) -> LoadBalancer {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_share_grows_from_the_minimum_to_all_over_the_window() {
        let s = SlowStart::from_spec(&lb(
            r#"{"simple": "ROUND_ROBIN", "warmupDurationSecs": "100s"}"#,
        ))
        .unwrap();
        let secs = Duration::from_secs;
        assert_eq!(s.share(secs(0)), 0.1, "at least 10%");
        assert!((s.share(secs(50)) - 0.5).abs() < 1e-9);
        assert_eq!(s.share(secs(100)), 1.0);
        let fast = SlowStart::from_spec(&LoadBalancer {
            warmup: Some(Warmup {
                duration: Some(crate::policy::duration::PolicyDuration(secs(100))),
                minimum_percent: Some(0.0),
                aggression: Some(2.0),
            }),
            ..LoadBalancer::default()
        })
        .unwrap();
        assert!((fast.share(secs(25)) - 0.5).abs() < 1e-9, "square root");
        assert!(
            (fast.share(secs(0)) - 0.1).abs() < 1e-9,
            "one second at least"
        );
    }

    #[test]
    fn only_round_robin_and_least_request_warm_up() {
        assert!(SlowStart::from_spec(&lb(r#"{"warmupDurationSecs": "10s"}"#)).is_some());
        assert!(
            SlowStart::from_spec(&lb(r#"{"simple": "RANDOM", "warmupDurationSecs": "10s"}"#))
                .is_none()
        );
        let hash = r#"{"consistentHash": {"useSourceIp": true}, "warmupDurationSecs": "10s"}"#;
        assert!(SlowStart::from_spec(&lb(hash)).is_none());
        assert!(SlowStart::from_spec(&lb(r#"{"simple": "ROUND_ROBIN"}"#)).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_endpoint_is_weighted_down_until_its_window_ends() {
        let s = SlowStart::from_spec(&lb(r#"{"warmupDurationSecs": "10s"}"#)).unwrap();
        let ages = Ages::default();
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let weights = |set: &[SocketAddr], w: Option<&[u32]>| {
            let ages = ages.warming("c", set, s.window())?;
            s.weights(&ages, w)
        };
        assert_eq!(weights(&[a], None), Some(vec![100]), "alone, but new");
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(weights(&[a], None), None, "warm: nothing computed");
        let w = weights(&[a, b], Some(&[3, 2])).unwrap();
        assert_eq!(w, [3000, 200], "b is new: 10% of its weight");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(weights(&[a, b], None).unwrap(), [1000, 500]);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(weights(&[a, b], None), None, "warm");
        // b leaves and comes back: new again.
        assert_eq!(weights(&[a], None), None);
        assert_eq!(weights(&[a, b], None).unwrap(), [1000, 100]);
    }
}
