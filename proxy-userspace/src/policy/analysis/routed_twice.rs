//! A host that two VirtualServices route: meshd applies the first in load order (files sorted by
//! path) and ignores the other for it, where Istio applies the oldest; `istioctl analyze` reports
//! it as IST0109 (a warning here, since meshd still applies a well-defined one).

use std::collections::HashMap;

use crate::policy::{
    finding::{Finding, Severity},
    hosts,
    model::{Located, VirtualService},
    set::PolicySet,
};

pub(super) fn check(set: &PolicySet, out: &mut Vec<Finding>) {
    let mut first_for: HashMap<String, &Located<VirtualService>> = HashMap::new();
    let mesh = (set.virtual_services.iter()).filter(|v| v.spec.applies_to_mesh());
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
                        "host {host} is already routed by VirtualService {} ({}); meshd applies the first one in load order and ignores this one for the host (istioctl analyze: IST0109); merge their routes into one VirtualService",
                        first.id(),
                        first.at()
                    ),
                ));
            }
        }
    }
}
