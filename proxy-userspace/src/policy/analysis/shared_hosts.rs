//! One host declared by ServiceEntries of different namespaces: meshd merges their ports and
//! endpoints for every client, where Istio gives each client one of them (the entry of the
//! client's own namespace, else the oldest), so the two can route differently (a warning).
//! Entries of one namespace merge in Istio too. Either way, each entry's endpoints serve only
//! its own ports, and a port two entries declare keeps the first one's protocol: a second
//! entry that declares it otherwise is a warning.

use std::collections::HashMap;

use crate::policy::{
    finding::{Finding, Severity},
    hosts,
    model::{Located, ServiceEntry},
    set::PolicySet,
};

pub(super) fn check(set: &PolicySet, out: &mut Vec<Finding>) {
    let mut first_for: HashMap<String, &Located<ServiceEntry>> = HashMap::new();
    // (host, port) → the first entry declaring it, and the protocol it declared.
    let mut port_of: HashMap<(String, u16), (&Located<ServiceEntry>, String)> = HashMap::new();
    for se in &set.service_entries {
        for (i, h) in se.spec.hosts.iter().enumerate() {
            let host = hosts::fqdn(h, &se.metadata.namespace);
            for (j, p) in se.spec.ports.iter().enumerate() {
                let protocol = p.protocol.as_deref().unwrap_or("").to_ascii_uppercase();
                let (first, declared) = port_of
                    .entry((host.clone(), p.number))
                    .or_insert((se, protocol.clone()));
                if !std::ptr::eq(*first, se) && *declared != protocol {
                    let declared = if declared.is_empty() {
                        "no protocol"
                    } else {
                        declared
                    };
                    out.push(se.finding(
                        Severity::Warning,
                        &format!("spec.ports[{j}].protocol"),
                        format!(
                            "port {} of host {host} is already declared with {declared} by ServiceEntry {} ({}); the entries are merged and the first declaration applies",
                            p.number,
                            first.id(),
                            first.at()
                        ),
                    ));
                }
            }
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
