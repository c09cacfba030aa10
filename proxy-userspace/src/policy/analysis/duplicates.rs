//! Two DestinationRules for one host in one namespace (without workload selectors): they are
//! merged, oldest first as in Istio (by `creationTimestamp`, then by name), and the younger
//! one's traffic policy applies only where the older has none, which is rarely what its author
//! expects (a warning). Rules in different namespaces do not merge: each is for the clients
//! that look it up first (their own namespace, then the service's, then the root namespace).

use std::collections::HashMap;

use super::Index;
use crate::policy::{
    age,
    finding::{Finding, Severity},
    model::{DestinationRule, Located},
};

pub(super) fn check(index: &Index, out: &mut Vec<Finding>) {
    let mut first_for: HashMap<(&str, &str), &Located<DestinationRule>> = HashMap::new();
    for (host, dr) in &index.rules {
        if dr.spec.workload_selector.is_some() {
            continue;
        }
        let key = (host.as_str(), dr.metadata.namespace.as_str());
        let first = *first_for.entry(key).or_insert(dr);
        if !std::ptr::eq(first, *dr) {
            out.push(dr.finding(
                Severity::Warning,
                "spec.host",
                format!(
                    "host {host} already has DestinationRule {} ({}), which comes first ({}); as in Istio, rules of one namespace are merged: subsets by name (the older definition wins), and this trafficPolicy only if the older rule has none",
                    first.id(),
                    first.at(),
                    age::why_first(&first.metadata, &dr.metadata),
                ),
            ));
        }
    }
}
