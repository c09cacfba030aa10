//! A host that two VirtualServices route: as Istio, meshd applies the oldest (by
//! `creationTimestamp`, then by name, then by namespace, whatever files they are in) and
//! ignores the other for it; `istioctl analyze` reports it as IST0109 (a warning here, since
//! meshd still applies a well-defined one).

use std::collections::HashMap;

use crate::policy::{
    age,
    finding::{Finding, Severity},
    hosts,
    model::{Located, VirtualService},
    set::PolicySet,
};

pub(super) fn check(set: &PolicySet, out: &mut Vec<Finding>) {
    let mut first_for: HashMap<String, &Located<VirtualService>> = HashMap::new();
    let by_age = age::oldest_first(&set.virtual_services);
    let mesh = by_age.into_iter().filter(|v| v.spec.applies_to_mesh());
    // A delegate (no hosts) is routed through the VirtualServices that delegate to it.
    for vs in mesh.filter(|v| !v.spec.hosts.is_empty()) {
        for (i, host) in vs.spec.hosts.iter().enumerate() {
            let host = hosts::fqdn(host, &vs.metadata.namespace);
            let first = *first_for.entry(host.clone()).or_insert(vs);
            if !std::ptr::eq(first, vs) {
                out.push(vs.finding(
                    Severity::Warning,
                    &format!("spec.hosts[{i}]"),
                    format!(
                        "host {host} is also routed by VirtualService {} ({}), which meshd applies for it, as Istio does ({}); this one is ignored for the host (istioctl analyze: IST0109); merge their routes into one VirtualService",
                        first.id(),
                        first.at(),
                        age::why_first(&first.metadata, &vs.metadata),
                    ),
                ));
            }
        }
    }
}
