//! PeerAuthentications that compete for the same workloads: two without a selector in one
//! namespace (or mesh-wide in the root namespace), or two with the same selector. As Istio,
//! meshd applies the oldest (by `creationTimestamp`, then by name); the other is ignored, which
//! the operator should know.

use std::collections::HashMap;

use crate::{
    policy::{
        finding::{Finding, Severity},
        model::{Located, PeerAuthentication},
        set::PolicySet,
    },
    security::DEFAULT_ROOT_NAMESPACE,
};

pub(super) fn check(set: &PolicySet, out: &mut Vec<Finding>) {
    // (namespace, selector labels, or None for namespace-wide) → the policies, in load order.
    type Scope<'a> = (&'a str, Option<Vec<(&'a String, &'a String)>>);
    let mut by_scope: HashMap<Scope<'_>, Vec<&Located<PeerAuthentication>>> = HashMap::new();
    for pa in &set.peer_authentications {
        let labels = (pa.spec.selector.as_ref())
            .map(|s| s.match_labels.iter().collect::<Vec<_>>())
            .filter(|l| !l.is_empty());
        let ns = pa.metadata.namespace.as_str();
        if ns == DEFAULT_ROOT_NAMESPACE && labels.is_some() {
            continue; // not applied, by Istio either (reported elsewhere)
        }
        by_scope.entry((ns, labels)).or_default().push(pa);
    }
    for ((ns, labels), policies) in by_scope {
        if policies.len() < 2 {
            continue;
        }
        let applied = (policies.iter())
            .min_by(|a, b| a.metadata.age_order(&b.metadata))
            .expect("two or more");
        let scope = match (labels.is_some(), ns == DEFAULT_ROOT_NAMESPACE) {
            (true, _) => format!("the same workloads of namespace {ns}"),
            (false, true) => "the whole mesh".to_string(),
            (false, false) => format!("namespace {ns} as a whole"),
        };
        for pa in policies.iter().filter(|p| !std::ptr::eq(**p, *applied)) {
            out.push(pa.finding(
                Severity::Warning,
                "metadata.name",
                format!(
                    "PeerAuthentication {} ({}) applies to {scope} too, and is the older (by creationTimestamp, else by name, as Istio orders them): this one is ignored; keep one",
                    applied.id(),
                    applied.at(),
                ),
            ));
        }
    }
}
