//! Locality-aware load balancing, as Istio sets Envoy up when a DestinationRule has outlier
//! detection and this node has a locality (`--locality region/zone/subzone`): endpoints get a
//! priority by how near they are (same subzone 0, same zone 1, same region 2, a `failover`
//! region 3, anywhere else 4). Traffic goes to the best priority while it is healthy enough,
//! and spills to the next as its endpoints are ejected, with Envoy's overprovisioning factor
//! of 1.4. With `retryRemoteLocalities`, a retry skips the priorities earlier attempts used.
//! A `distribute` setting instead shares the traffic between localities by weight.

use crate::policy::model::{LocalityDistribute, LocalityFailover};

/// Envoy's default overprovisioning factor: a level keeps all its traffic down to 1/1.4 ≈ 71%
/// healthy endpoints.
const OVERPROVISIONING: f64 = 1.4;

/// The deepest priority: anything not nearer.
pub const FARTHEST: u8 = 4;

/// `region/zone/subzone`, any suffix may be missing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

impl Locality {
    pub fn parse(s: &str) -> Locality {
        let mut parts = s.trim().splitn(3, '/').map(str::to_string);
        Locality {
            region: parts.next().unwrap_or_default(),
            zone: parts.next().unwrap_or_default(),
            subzone: parts.next().unwrap_or_default(),
        }
    }

    /// Whether `pattern` (`region/zone/subzone`; `*` stands for any part, and a missing zone
    /// or subzone matches any) covers this locality, as Istio matches `distribute` entries.
    pub fn matches(&self, pattern: &str) -> bool {
        self.within(&Locality::parse(pattern))
    }

    /// [`Locality::matches`] with the pattern parsed.
    fn within(&self, p: &Locality) -> bool {
        let part = |rule: &str, own: &str, optional: bool| {
            rule == "*" || (optional && rule.is_empty()) || rule == own
        };
        part(&p.region, &self.region, false)
            && part(&p.zone, &self.zone, true)
            && part(&p.subzone, &self.subzone, true)
    }
}

/// The label keys Istio reads from a locality for `failoverPriority`.
const REGION: &str = "topology.kubernetes.io/region";
const ZONE: &str = "topology.kubernetes.io/zone";
const SUBZONE: &str = "topology.istio.io/subzone";

/// A workload's value for a `failoverPriority` label: its own label, or for the topology keys
/// its locality's part.
pub fn label_value<'a>(
    labels: &'a std::collections::BTreeMap<String, String>,
    locality: &'a Locality,
    key: &str,
) -> Option<&'a str> {
    let part = match key {
        REGION => &locality.region,
        ZONE => &locality.zone,
        SUBZONE => &locality.subzone,
        _ => "",
    };
    (labels.get(key).map(String::as_str)).or((!part.is_empty()).then_some(part))
}

/// An endpoint's rank by `failoverPriority`, as Istio's: with N labels, an endpoint whose first
/// k labels all match the client's (or the value a `key=value` entry gives) ranks N - k.
pub fn label_rank<'a>(
    keys: &[String],
    client: impl Fn(&str) -> Option<&'a str>,
    endpoint: impl Fn(&str) -> Option<&'a str>,
) -> usize {
    let matched = keys
        .iter()
        .take_while(|k| {
            let (key, wanted) = match k.split_once('=') {
                Some((key, value)) => (key, Some(value)),
                None => (k.as_str(), client(k)),
            };
            wanted.is_some_and(|w| endpoint(key) == Some(w))
        })
        .count();
    keys.len() - matched
}

/// Locality-weighted load balancing (`distribute`), as Istio sets Envoy's locality weights: for
/// a client in `own`, the first entry whose `from` covers it shares the traffic between its
/// `to` patterns by weight, and each pattern's share between the endpoints it covers (that an
/// earlier pattern did not) by their `weights`. The result is each endpoint's weight, in the
/// order of `localities`, 0 for an endpoint no pattern covers (it gets no traffic). `None` when
/// no entry applies to the client.
pub fn distribution(
    own: &Locality,
    localities: &[Option<&str>],
    weights: Option<&[u32]>,
    distribute: &[LocalityDistribute],
) -> Option<Vec<u32>> {
    let entry = distribute.iter().find(|d| own.matches(&d.from))?;
    let parsed: Vec<Locality> = (localities.iter())
        .map(|l| l.map(Locality::parse).unwrap_or_default())
        .collect();
    let weight = |i: usize| u64::from(weights.map_or(1, |w| w[i]).max(1));
    let mut out = vec![0u32; localities.len()];
    let mut covered = vec![false; localities.len()];
    for (pattern, share) in &entry.to {
        let pattern = Locality::parse(pattern);
        let members: Vec<usize> = (0..parsed.len())
            .filter(|i| !covered[*i] && parsed[*i].within(&pattern))
            .collect();
        let total: u64 = members.iter().map(|i| weight(*i)).sum();
        for i in members {
            covered[i] = true;
            // In thousandths of a percent, rounded up as Istio does, so a small share is not 0.
            let w = (u64::from(*share) * weight(i) * 1000).div_ceil(total);
            out[i] = w.min(u64::from(u32::MAX)) as u32;
        }
    }
    Some(out)
}

/// An endpoint's priority seen from `own`. Endpoints without a locality are farthest.
pub fn priority(own: &Locality, ep: Option<&Locality>, failover: &[LocalityFailover]) -> u8 {
    let Some(ep) = ep else {
        return FARTHEST;
    };
    if own.region.is_empty() || ep.region != own.region {
        let to_failover = failover
            .iter()
            .any(|f| f.from == own.region && f.to == ep.region);
        return if to_failover { 3 } else { FARTHEST };
    }
    if ep.zone != own.zone {
        return 2;
    }
    if ep.subzone != own.subzone {
        return 1;
    }
    0
}

/// One priority level: how many endpoints it has, and how many are healthy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Level {
    pub priority: u8,
    pub total: usize,
    pub healthy: usize,
}

/// The priority a request goes to, given a uniform `draw` in [0, 1). Levels whose priority bit
/// is set in `skip` are left out while another level has healthy endpoints.
pub fn choose(levels: &[Level], skip: u32, draw: f64) -> Option<u8> {
    let usable = |l: &&Level| l.healthy > 0;
    let skipped = |l: &&Level| skip & (1 << l.priority) != 0;
    let mut eligible: Vec<&Level> = levels
        .iter()
        .filter(usable)
        .filter(|l| !skipped(l))
        .collect();
    if eligible.is_empty() {
        eligible = levels.iter().filter(usable).collect();
    }
    eligible.sort_by_key(|l| l.priority);
    let first = eligible.first()?;
    // Each level takes its overprovisioned health of what is left, in priority order; what the
    // levels cannot take together is spread over them in proportion (Envoy's normalisation).
    let mut left = 1.0;
    let mut loads = Vec::with_capacity(eligible.len());
    for l in &eligible {
        let health = (l.healthy as f64 / l.total as f64 * OVERPROVISIONING).min(1.0);
        let load = left * health;
        loads.push(load);
        left -= load;
    }
    let taken: f64 = loads.iter().sum();
    let mut point = draw * taken;
    for (l, load) in eligible.iter().zip(&loads) {
        if point < *load {
            return Some(l.priority);
        }
        point -= load;
    }
    Some(first.priority)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(priority: u8, total: usize, healthy: usize) -> Level {
        Level {
            priority,
            total,
            healthy,
        }
    }

    #[test]
    fn priorities_by_nearness_and_failover() {
        let own = Locality::parse("us-east/us-east-1a/rack1");
        let p = |ep: &str| priority(&own, Some(&Locality::parse(ep)), &[]);
        assert_eq!(p("us-east/us-east-1a/rack1"), 0);
        assert_eq!(p("us-east/us-east-1a/rack2"), 1);
        assert_eq!(p("us-east/us-east-1b"), 2);
        assert_eq!(p("eu-west/eu-west-1a"), FARTHEST);
        assert_eq!(priority(&own, None, &[]), FARTHEST);
        let failover = [LocalityFailover {
            from: "us-east".into(),
            to: "us-west".into(),
        }];
        let f = |ep: &str| priority(&own, Some(&Locality::parse(ep)), &failover);
        assert_eq!(f("us-west/us-west-1a"), 3);
        assert_eq!(f("eu-west/eu-west-1a"), FARTHEST);
    }

    #[test]
    fn a_healthy_local_level_takes_everything() {
        let levels = [level(0, 2, 2), level(2, 3, 3)];
        for draw in [0.0, 0.5, 0.999] {
            assert_eq!(choose(&levels, 0, draw), Some(0));
        }
    }

    #[test]
    fn a_level_without_healthy_endpoints_fails_over() {
        let levels = [level(0, 2, 0), level(2, 3, 3)];
        assert_eq!(choose(&levels, 0, 0.1), Some(2));
    }

    #[test]
    fn a_partly_ejected_level_spills_with_the_overprovisioning_factor() {
        // 1 of 2 healthy: 0.5 × 1.4 = 70% stays local, 30% spills.
        let levels = [level(0, 2, 1), level(1, 2, 2)];
        assert_eq!(choose(&levels, 0, 0.69), Some(0));
        assert_eq!(choose(&levels, 0, 0.71), Some(1));
        let local = (0..1000)
            .filter(|i| choose(&levels, 0, *i as f64 / 1000.0) == Some(0))
            .count();
        assert_eq!(local, 700);
    }

    #[test]
    fn retries_skip_tried_priorities_while_another_is_healthy() {
        let levels = [level(0, 2, 2), level(2, 1, 1)];
        assert_eq!(choose(&levels, 1 << 0, 0.0), Some(2));
        // Every level tried: back to the best.
        assert_eq!(choose(&levels, (1 << 0) | (1 << 2), 0.0), Some(0));
        assert_eq!(choose(&[level(0, 2, 2)], 1, 0.3), Some(0));
    }

    #[test]
    fn nothing_healthy_nothing_chosen() {
        assert_eq!(choose(&[level(0, 2, 0)], 0, 0.3), None);
        assert_eq!(choose(&[], 0, 0.3), None);
    }

    #[test]
    fn patterns_match_as_istio_matches_localities() {
        let l = Locality::parse("us-east/zone-a/rack-1");
        for p in [
            "us-east",
            "us-east/*",
            "us-east/zone-a",
            "us-east/zone-a/*",
            "*",
            "*/zone-a",
        ] {
            assert!(l.matches(p), "{p}");
        }
        for p in ["us-west", "us-east/zone-b", "us-east/zone-a/rack-2", ""] {
            assert!(!l.matches(p), "{p}");
        }
    }

    #[test]
    fn distribute_shares_by_pattern_then_by_endpoint_weight() {
        let rule = |from: &str, to: &[(&str, u32)]| LocalityDistribute {
            from: from.into(),
            to: to.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        };
        let rules = [
            rule("us-west/*", &[("us-west/*", 100)]),
            rule(
                "us-east/zone-a/*",
                &[("us-east/zone-a/*", 80), ("us-west/*", 20)],
            ),
        ];
        let own = Locality::parse("us-east/zone-a/rack-1");
        let eps = [
            Some("us-east/zone-a/rack-1"),
            Some("us-east/zone-a/rack-2"),
            Some("us-west/zone-x"),
            Some("eu-north/zone-q"),
            None,
        ];
        // The zone's 80% split by weight 3:1, us-west's 20% to its one endpoint, none elsewhere.
        let w = distribution(&own, &eps, Some(&[3, 1, 5, 1, 1]), &rules).unwrap();
        assert_eq!(w, [60_000, 20_000, 20_000, 0, 0]);
        assert_eq!(
            distribution(&Locality::parse("eu-north"), &eps, None, &rules),
            None
        );
        // A pattern takes only endpoints an earlier one (in name order) did not.
        let overlap = [rule("*", &[("us-east/*", 50), ("us-east/zone-a/*", 50)])];
        let w = distribution(&own, &eps[..3], None, &overlap).unwrap();
        assert_eq!(w, [25_000, 25_000, 0]);
    }

    #[test]
    fn failover_priority_ranks_by_leading_label_matches() {
        let labels = |pairs: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let keys: Vec<String> = [REGION, ZONE, "tier"].map(String::from).to_vec();
        let own = Locality::parse("us-east/zone-a/rack-1");
        let client = labels(&[("tier", "gold")]);
        let rank = |at: &str, ep: &[(&str, &str)]| {
            let (at, ep) = (Locality::parse(at), labels(ep));
            label_rank(
                &keys,
                |k| label_value(&client, &own, k),
                |k| label_value(&ep, &at, k),
            )
        };
        assert_eq!(rank("us-east/zone-a", &[("tier", "gold")]), 0);
        assert_eq!(rank("us-east/zone-a", &[("tier", "silver")]), 1);
        assert_eq!(
            rank("us-east/zone-b", &[("tier", "gold")]),
            2,
            "zone differs: tier unread"
        );
        assert_eq!(rank("us-west/zone-a", &[("tier", "gold")]), 3);
        // A label takes precedence over the locality's part.
        let region = [(REGION, "us-east")];
        assert_eq!(rank("us-west/zone-a", &region), 1);
        // `key=value` compares with the value given, not the client's.
        let fixed = vec!["version=v2".to_string()];
        let rank_fixed = |ep: &[(&str, &str)]| {
            let (at, ep) = (Locality::default(), labels(ep));
            label_rank(&fixed, |_| None, |k| label_value(&ep, &at, k))
        };
        assert_eq!(rank_fixed(&[("version", "v2")]), 0);
        assert_eq!(rank_fixed(&[("version", "v1")]), 1);
    }
}
