//! A route to a subset that no DestinationRule for its host defines: an error, as the route
//! could never be served.

use super::{DestRef, Index, destinations};
use crate::policy::finding::{Finding, Severity};

pub(super) fn check(index: &Index, out: &mut Vec<Finding>) {
    for d in destinations(index.set) {
        if let Some(subset) = &d.dest.subset
            && let Some(msg) = missing(index, &d, subset)
        {
            let path = format!("{}.subset", d.path);
            out.push(d.vs.finding(Severity::Error, &path, msg));
        }
    }
}

fn missing(index: &Index, d: &DestRef, subset: &str) -> Option<String> {
    let host = d.host();
    let rules = index.rules_for(&host);
    if rules.is_empty() {
        return Some(format!(
            "subset {subset:?} is not defined: no DestinationRule for host {host} defines subsets"
        ));
    }
    if rules
        .iter()
        .any(|dr| dr.spec.subsets.iter().any(|s| s.name == subset))
    {
        return None;
    }
    let names: Vec<String> = rules
        .iter()
        .flat_map(|dr| dr.spec.subsets.iter().map(|s| s.name.clone()))
        .collect();
    let ids: Vec<String> = rules
        .iter()
        .map(|dr| format!("DestinationRule {}", dr.id()))
        .collect();
    let defined = if names.is_empty() {
        "it defines no subsets".to_string()
    } else {
        format!("it defines {}", names.join(", "))
    };
    Some(format!(
        "subset {subset:?} is not defined by {} for host {host} ({defined})",
        ids.join(", ")
    ))
}
