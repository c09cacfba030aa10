//! Cross-resource checks in the spirit of `istioctl analyze`: things each valid on its own that
//! do not fit together.

use std::collections::{HashMap, HashSet};

use super::{
    age,
    finding::{self, Finding},
    hosts,
    model::{Destination, DestinationRule, Located, VirtualService},
    set::PolicySet,
};

mod authorization;
mod delegates;
mod duplicates;
mod peer_auth;
mod port_wide;
mod ports;
mod rate_limits;
mod routed_twice;
mod routes;
mod selectors;
mod shared_hosts;
mod subsets;
mod undeclared;

#[cfg(test)]
mod tests;

/// Runs every cross-resource check on a loaded set; returns the findings sorted.
pub fn analyze(set: &PolicySet) -> Vec<Finding> {
    let index = Index::new(set);
    let mut out = Vec::new();
    subsets::check(&index, &mut out);
    undeclared::check(&index, &mut out);
    duplicates::check(&index, &mut out);
    routes::check(set, &mut out);
    ports::check(set, &mut out);
    shared_hosts::check(set, &mut out);
    delegates::check(set, &mut out);
    selectors::check(set, &mut out);
    rate_limits::check(set, &mut out);
    routed_twice::check(set, &mut out);
    port_wide::check(set, &mut out);
    authorization::check(set, &mut out);
    peer_auth::check(set, &mut out);
    finding::sort(&mut out);
    out
}

/// Lookups shared by the checks: services and destination rules by normalized host, hashed for
/// exact names (wildcards are few and scanned).
struct Index<'a> {
    set: &'a PolicySet,
    services: HashSet<String>,
    wildcard_services: Vec<String>,
    /// Every DestinationRule with its normalized host, oldest first (the order Istio merges
    /// the rules of one host in).
    rules: Vec<(String, &'a Located<DestinationRule>)>,
    exact_rules: HashMap<String, Vec<&'a Located<DestinationRule>>>,
}

impl<'a> Index<'a> {
    fn new(set: &'a PolicySet) -> Index<'a> {
        let mut services = HashSet::new();
        let mut wildcard_services = Vec::new();
        for se in &set.service_entries {
            for h in &se.spec.hosts {
                let h = hosts::fqdn(h, &se.metadata.namespace);
                if h.starts_with('*') {
                    wildcard_services.push(h);
                } else {
                    services.insert(h);
                }
            }
        }
        let rules: Vec<_> = age::oldest_first(&set.destination_rules)
            .into_iter()
            .map(|dr| (hosts::fqdn(&dr.spec.host, &dr.metadata.namespace), dr))
            .collect();
        let mut exact_rules: HashMap<String, Vec<_>> = HashMap::new();
        for (h, dr) in &rules {
            if !h.starts_with('*') {
                exact_rules.entry(h.clone()).or_default().push(*dr);
            }
        }
        Index {
            set,
            services,
            wildcard_services,
            rules,
            exact_rules,
        }
    }

    /// Whether a ServiceEntry declares the (normalized) host.
    fn declared(&self, host: &str) -> bool {
        self.services.contains(host)
            || self
                .wildcard_services
                .iter()
                .any(|h| hosts::covers(h, host))
    }

    /// The DestinationRules that apply to a host: those naming it exactly, else those with the
    /// most specific wildcard covering it.
    fn rules_for(&self, host: &str) -> Vec<&'a Located<DestinationRule>> {
        if let Some(exact) = self.exact_rules.get(host) {
            return exact.clone();
        }
        hosts::best_wildcards(&self.rules, host)
            .into_iter()
            .copied()
            .collect()
    }
}

/// A destination named somewhere in a VirtualService, with the path of its object.
struct DestRef<'a> {
    vs: &'a Located<VirtualService>,
    path: String,
    dest: &'a Destination,
}

impl DestRef<'_> {
    fn host(&self) -> String {
        hosts::fqdn(&self.dest.host, &self.vs.metadata.namespace)
    }
}

/// Every destination of every VirtualService meshd applies: routes, mirrors, TCP and TLS
/// routes. One bound to gateways only is left out, as meshd never sends traffic by it.
fn destinations(set: &PolicySet) -> Vec<DestRef<'_>> {
    set.virtual_services
        .iter()
        .filter(|v| v.spec.applies_to_mesh())
        .flat_map(|vs| {
            (vs.spec.destinations().into_iter()).map(move |(path, dest)| DestRef { vs, path, dest })
        })
        .collect()
}
