//! Destinations whose host no ServiceEntry declares: on a node without Kubernetes meshd has no
//! other way to know the service, so traffic to it cannot be routed (a warning).

use super::{Index, destinations};
use crate::policy::{
    finding::{Finding, Severity},
    hosts,
};

pub(super) fn check(index: &Index, out: &mut Vec<Finding>) {
    for d in destinations(index.set) {
        let host = d.host();
        if !index.declared(&host) {
            let path = format!("{}.host", d.path);
            out.push(d.vs.finding(Severity::Warning, &path, message(&host)));
        }
    }
    for rl in &index.set.rate_limit_policies {
        let host = hosts::fqdn(&rl.spec.target.host, &rl.metadata.namespace);
        if !index.declared(&host) {
            out.push(rl.finding(Severity::Warning, "spec.target.host", message(&host)));
        }
    }
}

fn message(host: &str) -> String {
    format!(
        "host {host} is not declared by any ServiceEntry; meshd cannot route to it until one lists it in hosts"
    )
}
