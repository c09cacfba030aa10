//! Where a cluster's endpoints stand for this node's clients: their priorities by locality
//! (failover, `failoverPriority`, the service's `trafficDistribution`), the priority levels
//! the balancer picks among, and the shares of a `distribute` setting.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use super::{
    locality::{self, Locality},
    route::{self, NoEndpoint},
};
use crate::{config::endpoints::NODE_LABEL, policy::model::TrafficDistribution};

/// Each endpoint's locality priority, when locality-aware load balancing applies: the
/// destination has outlier detection (as Istio requires for failover), its `localityLbSetting`
/// is not disabled and does not `distribute` instead, and this node has a locality or the
/// setting ranks by `failoverPriority` labels (compared with the `client`'s). With both
/// `failoverPriority` and `failover`, the labels rank first and the locality within. Without a
/// `localityLbSetting`, the service's `trafficDistribution` ranks them instead (`node` is this
/// node's address).
pub fn priorities(
    own: Option<&Locality>,
    node: Option<IpAddr>,
    client: &BTreeMap<String, String>,
    policy: &route::ClusterPolicy<'_>,
) -> Option<Vec<u8>> {
    let setting = policy.lb.and_then(|lb| lb.locality_lb_setting.as_ref());
    if let (Some(d), None) = (policy.distribution, setting) {
        return by_distribution(d, own, node, policy);
    }
    policy.outlier?;
    if setting.is_some_and(|s| s.enabled == Some(false) || !s.distribute.is_empty()) {
        return None;
    }
    let failover = setting.map(|s| s.failover.as_slice()).unwrap_or_default();
    let keys = setting
        .map(|s| s.failover_priority.as_slice())
        .unwrap_or_default();
    let by_locality = |own: &Locality, l: &Option<&str>| {
        locality::priority(own, l.map(Locality::parse).as_ref(), failover)
    };
    if keys.is_empty() {
        let own = own?;
        return Some(
            policy
                .localities
                .iter()
                .map(|l| by_locality(own, l))
                .collect(),
        );
    }
    let nowhere = Locality::default();
    let own = own.unwrap_or(&nowhere);
    let ranks: Vec<usize> = (policy.localities.iter().zip(&policy.labels))
        .map(|(l, labels)| {
            let at = l.map(Locality::parse).unwrap_or_default();
            let rank = locality::label_rank(
                keys,
                |k| locality::label_value(client, own, k),
                |k| locality::label_value(labels, &at, k),
            );
            match failover {
                [] => rank,
                _ => {
                    rank * (usize::from(locality::FARTHEST) + 1) + usize::from(by_locality(own, l))
                }
            }
        })
        .collect();
    Some(dense(&ranks))
}

/// Each endpoint's priority under the service's `trafficDistribution`, which, unlike locality
/// failover, needs no outlier detection (as Istio reads it): the nearest endpoints take the
/// traffic while any of them is healthy (ejection, when outlier detection is on, moves it on).
fn by_distribution(
    d: TrafficDistribution,
    own: Option<&Locality>,
    node: Option<IpAddr>,
    policy: &route::ClusterPolicy<'_>,
) -> Option<Vec<u8>> {
    match d {
        TrafficDistribution::PreferSameZone => {
            let own = own?;
            let at = |l: &Option<&str>| l.map(Locality::parse);
            Some(
                (policy.localities.iter())
                    .map(|l| locality::priority(own, at(l).as_ref(), &[]))
                    .collect(),
            )
        }
        TrafficDistribution::PreferSameNode => {
            // Labels of every endpoint, or (PASSTHROUGH) of none: then there is nothing to rank.
            if policy.labels.len() != policy.localities.len() {
                return None;
            }
            let elsewhere = |labels: &BTreeMap<String, String>| {
                (labels.get(NODE_LABEL)).is_some_and(|n| n.parse::<IpAddr>().ok() != node)
            };
            Some(
                policy
                    .labels
                    .iter()
                    .map(|l| u8::from(elsewhere(l)))
                    .collect(),
            )
        }
    }
}

/// `ranks` renumbered 0, 1, 2... in order, so they fit the priority levels (at most 32).
fn dense(ranks: &[usize]) -> Vec<u8> {
    let mut distinct = ranks.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    ranks
        .iter()
        .map(|r| distinct.binary_search(r).unwrap_or(0).min(31) as u8)
        .collect()
}

/// Applies the destination's `distribute` setting for a client on this node (in `own`): the
/// endpoints it gives no traffic are dropped, and the others weighted by their shares. Needs
/// no outlier detection, as in Istio. Err when it leaves `host` no endpoint.
pub fn distribute(
    own: Option<&Locality>,
    host: &str,
    endpoints: &mut Vec<SocketAddr>,
    policy: &mut route::ClusterPolicy<'_>,
) -> Result<(), NoEndpoint> {
    let setting = policy.lb.and_then(|lb| lb.locality_lb_setting.as_ref());
    let (Some(own), Some(setting)) = (own, setting) else {
        return Ok(());
    };
    if setting.enabled == Some(false) || setting.distribute.is_empty() {
        return Ok(());
    }
    // The address the client dialled (a host without endpoints, or PASSTHROUGH) is not a
    // load assignment: Istio applies locality settings to none.
    let passthrough = policy.lb.and_then(|l| l.simple.as_deref()) == Some("PASSTHROUGH");
    if passthrough || policy.localities.len() != endpoints.len() {
        return Ok(());
    }
    let Some(shares) = locality::distribution(
        own,
        &policy.localities,
        policy.weights.as_deref(),
        &setting.distribute,
    ) else {
        return Ok(());
    };
    fn keep<T>(v: &mut Vec<T>, shares: &[u32]) {
        let mut kept = shares.iter().map(|w| *w > 0);
        v.retain(|_| kept.next().unwrap_or(false));
    }
    keep(endpoints, &shares);
    keep(&mut policy.localities, &shares);
    keep(&mut policy.labels, &shares);
    policy.weights = Some(shares.into_iter().filter(|w| *w > 0).collect());
    if endpoints.is_empty() {
        return Err(NoEndpoint::undistributed(host));
    }
    Ok(())
}

/// The priority levels of an endpoint set: endpoints per level, and the healthy ones.
pub(super) fn levels(
    all: &[SocketAddr],
    priorities: &[u8],
    healthy: &[SocketAddr],
) -> Vec<locality::Level> {
    let mut levels: Vec<locality::Level> = Vec::new();
    for (i, p) in priorities.iter().enumerate() {
        let ok = healthy.contains(&all[i]) as usize;
        match levels.iter_mut().find(|l| l.priority == *p) {
            Some(l) => {
                l.total += 1;
                l.healthy += ok;
            }
            None => levels.push(locality::Level {
                priority: *p,
                total: 1,
                healthy: ok,
            }),
        }
    }
    levels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_distribution_ranks_endpoints_without_outlier_detection() {
        let own = Locality::parse("us-east/zone-a/rack-1");
        let here = BTreeMap::new();
        let this_node = BTreeMap::from([(NODE_LABEL.to_string(), "10.1.0.1".to_string())]);
        let other_node = BTreeMap::from([(NODE_LABEL.to_string(), "10.1.0.2".to_string())]);
        let mut policy = route::ClusterPolicy {
            localities: vec![
                Some("us-east/zone-a/rack-1"),
                Some("us-east/zone-a/rack-2"),
                Some("us-east/zone-b"),
                Some("us-west/zone-x"),
                None,
            ],
            distribution: Some(TrafficDistribution::PreferSameZone),
            ..route::ClusterPolicy::default()
        };
        let node = Some("10.1.0.1".parse().unwrap());
        let client = BTreeMap::new();
        assert_eq!(
            priorities(Some(&own), node, &client, &policy),
            Some(vec![0, 1, 2, locality::FARTHEST, locality::FARTHEST])
        );
        // A node without a locality has nothing to compare.
        assert_eq!(priorities(None, node, &client, &policy), None);

        policy.distribution = Some(TrafficDistribution::PreferSameNode);
        policy.localities = vec![None; 3];
        policy.labels = vec![&here, &this_node, &other_node];
        assert_eq!(
            priorities(None, node, &client, &policy),
            Some(vec![0, 0, 1])
        );
        // Without every endpoint's labels (a PASSTHROUGH destination), nothing is ranked.
        policy.labels.pop();
        assert_eq!(priorities(None, node, &client, &policy), None);

        // A DestinationRule's localityLbSetting decides instead, and needs outlier detection.
        let lb = crate::policy::model::LoadBalancer {
            locality_lb_setting: Some(Default::default()),
            ..Default::default()
        };
        policy.lb = Some(&lb);
        assert_eq!(priorities(Some(&own), node, &client, &policy), None);
    }
}
