//! Destinations that name a port their service does not declare: Istio builds no cluster for
//! it, so requests routed there get 503 with flag NC (a warning, since each resource is valid
//! on its own).

use std::collections::{BTreeMap, BTreeSet};

use super::destinations;
use crate::policy::{
    finding::{Finding, Severity},
    hosts,
    set::PolicySet,
};

pub(super) fn check(set: &PolicySet, out: &mut Vec<Finding>) {
    // Each exactly named host's ports, over all its ServiceEntries.
    let mut ports: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    for se in &set.service_entries {
        for h in &se.spec.hosts {
            let declared = ports
                .entry(hosts::fqdn(h, &se.metadata.namespace))
                .or_default();
            declared.extend(se.spec.ports.iter().map(|p| p.number));
        }
    }
    for d in destinations(set) {
        let Some(port) = d.dest.port.as_ref().map(|p| p.number) else {
            continue;
        };
        let host = d.host();
        let Some(declared) = ports.get(&host).filter(|p| !p.is_empty()) else {
            continue;
        };
        if !declared.contains(&port) {
            let list: Vec<String> = declared.iter().map(u16::to_string).collect();
            let message = format!(
                "port {port} is not a port of {host} (its ServiceEntries declare {}); requests routed here get 503 with flag NC, as Istio has no cluster for it",
                list.join(", ")
            );
            let path = format!("{}.port.number", d.path);
            out.push(d.vs.finding(Severity::Warning, &path, message));
        }
    }
}
