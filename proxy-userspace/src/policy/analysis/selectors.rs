//! Workload selectors that select no WorkloadEntry of their namespace: the resource applies to
//! nothing on this node (a warning).

use std::collections::{BTreeMap, HashMap};

use crate::policy::{
    finding::{Finding, Severity},
    model::{Located, labels_match},
    set::PolicySet,
};

type Labels = BTreeMap<String, String>;

pub(super) fn check(set: &PolicySet, out: &mut Vec<Finding>) {
    for se in &set.service_entries {
        if let Some(s) = &se.spec.workload_selector {
            named_endpoints(set, se, &s.labels, out);
        }
    }
    // WorkloadEntries by (namespace, label, value): a selector only looks at the entries that
    // carry its first label.
    let mut by_label: HashMap<(&str, &str, &str), Vec<&Labels>> = HashMap::new();
    for we in &set.workload_entries {
        for (k, v) in &we.spec.labels {
            let key = (we.metadata.namespace.as_str(), k.as_str(), v.as_str());
            by_label.entry(key).or_default().push(&we.spec.labels);
        }
    }
    let selects = |ns: &str, sel: &BTreeMap<String, String>| {
        sel.iter().next().is_some_and(|(k, v)| {
            by_label
                .get(&(ns, k.as_str(), v.as_str()))
                .is_some_and(|c| c.iter().any(|labels| labels_match(sel, labels)))
        })
    };
    let mut probe = |ns: &str, sel: &BTreeMap<String, String>, f: &dyn Fn(String) -> Finding| {
        if !sel.is_empty() && !selects(ns, sel) {
            let labels: Vec<String> = sel.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push(f(format!(
                "selects no WorkloadEntry in namespace {ns} (labels {})",
                labels.join(", ")
            )));
        }
    };
    for se in &set.service_entries {
        if let Some(s) = &se.spec.workload_selector {
            probe(
                &se.metadata.namespace,
                &s.labels,
                &warn(se, "spec.workloadSelector"),
            );
        }
    }
    for dr in &set.destination_rules {
        if let Some(s) = &dr.spec.workload_selector {
            probe(
                &dr.metadata.namespace,
                &s.match_labels,
                &warn(dr, "spec.workloadSelector"),
            );
        }
    }
    for pa in &set.peer_authentications {
        if let Some(s) = &pa.spec.selector {
            probe(
                &pa.metadata.namespace,
                &s.match_labels,
                &warn(pa, "spec.selector"),
            );
        }
    }
    for ap in &set.authorization_policies {
        // In the root namespace a selector picks workloads of every namespace, as in Istio.
        let root = ap.metadata.namespace == crate::security::DEFAULT_ROOT_NAMESPACE;
        if let Some(s) = &ap.spec.selector {
            if root
                && set
                    .workload_entries
                    .iter()
                    .any(|we| labels_match(&s.match_labels, &we.spec.labels))
            {
                continue;
            }
            probe(
                &ap.metadata.namespace,
                &s.match_labels,
                &warn(ap, "spec.selector"),
            );
        }
    }
}

fn warn<'a, T>(r: &'a Located<T>, path: &'a str) -> impl Fn(String) -> Finding + 'a {
    move |msg| r.finding(Severity::Warning, path, msg)
}

/// A WorkloadEntry with a DNS name as its address, selected by a ServiceEntry that does not
/// resolve names (any resolution but DNS or DNS_ROUND_ROBIN): it is never dialled, as the
/// same name among the ServiceEntry's own endpoints is not.
fn named_endpoints(
    set: &PolicySet,
    se: &crate::policy::model::Located<crate::policy::model::ServiceEntry>,
    selector: &Labels,
    out: &mut Vec<Finding>,
) {
    let resolution = se.spec.resolution.as_deref().unwrap_or("NONE");
    if matches!(resolution, "DNS" | "DNS_ROUND_ROBIN") || selector.is_empty() {
        return;
    }
    for we in &set.workload_entries {
        let address = &we.spec.address;
        let named = address.parse::<std::net::IpAddr>().is_err() && !address.starts_with("unix:");
        if named
            && we.metadata.namespace == se.metadata.namespace
            && labels_match(selector, &we.spec.labels)
        {
            out.push(we.finding(
                Severity::Warning,
                "spec.address",
                format!(
                    "a name, but ServiceEntry {} ({}) selects this entry with resolution {resolution}, which resolves no names; this endpoint is never dialled (use resolution DNS)",
                    se.id(),
                    se.at()
                ),
            ));
        }
    }
}
