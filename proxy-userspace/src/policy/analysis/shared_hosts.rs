//! One host declared by ServiceEntries of different namespaces: meshd merges their ports and
//! endpoints for every client, where Istio gives each client one of them (the entry of the
//! client's own namespace, else the oldest), so the two can route differently (a warning).
//! Entries of one namespace merge in Istio too.

use std::collections::HashMap;

use crate::policy::{
    finding::{Finding, Severity},
    hosts,
    model::{Located, ServiceEntry},
    set::PolicySet,
};

pub(super) fn check(set: &PolicySet, out: &mut Vec<Finding>) {
    let mut first_for: HashMap<String, &Located<ServiceEntry>> = HashMap::new();
    for se in &set.service_entries {
        for (i, h) in se.spec.hosts.iter().enumerate() {
            let host = hosts::fqdn(h, &se.metadata.namespace);
            let first = *first_for.entry(host.clone()).or_insert(se);
            if first.metadata.namespace != se.metadata.namespace {
                out.push(se.finding(
                    Severity::Warning,
                    &format!("spec.hosts[{i}]"),
                    format!(
                        "host {host} is also declared by ServiceEntry {} ({}) in namespace {}; meshd merges the entries' ports and endpoints for every client, where Istio gives each client one of them (its own namespace's, else the oldest)",
                        first.id(),
                        first.at(),
                        first.metadata.namespace
                    ),
                ));
            }
        }
    }
}
