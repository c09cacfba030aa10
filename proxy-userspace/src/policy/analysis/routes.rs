//! Checks within one VirtualService's http routes: routes shadowed by a catch-all, retries of
//! non-idempotent methods without explicit conditions, and mirrors back to the route's own
//! destination (all warnings).

use crate::policy::{
    finding::{Finding, Severity},
    hosts,
    model::{Destination, HttpRoute, Located, VirtualService},
    set::PolicySet,
};

pub(super) fn check(set: &PolicySet, out: &mut Vec<Finding>) {
    for vs in set
        .virtual_services
        .iter()
        .filter(|v| v.spec.applies_to_mesh())
    {
        unreachable(vs, out);
        for (i, route) in vs.spec.http.iter().enumerate() {
            retries(vs, i, route, out);
            mirrors(vs, i, route, out);
        }
    }
}

fn unreachable(vs: &Located<VirtualService>, out: &mut Vec<Finding>) {
    // A delegating route matches only what its delegate's routes match.
    let catch_all = |r: &&std::sync::Arc<HttpRoute>| r.is_catch_all() && r.delegate.is_none();
    let Some(first) = vs.spec.http.iter().position(|r| catch_all(&r)) else {
        return;
    };
    for i in first + 1..vs.spec.http.len() {
        out.push(vs.finding(
            Severity::Warning,
            &format!("spec.http[{i}]"),
            format!(
                "this route is unreachable: spec.http[{first}] before it matches every request"
            ),
        ));
    }
}

/// Methods that are not idempotent, so a retry may apply a request twice.
const NON_IDEMPOTENT: &[&str] = &["POST", "PATCH"];

fn retries(vs: &Located<VirtualService>, i: usize, route: &HttpRoute, out: &mut Vec<Finding>) {
    let Some(retries) = &route.retries else {
        return;
    };
    if retries.attempts == 0 || retries.retry_on.is_some() {
        return;
    }
    let methods: Vec<&str> = NON_IDEMPOTENT
        .iter()
        .copied()
        .filter(|m| {
            route
                .matches
                .iter()
                .any(|r| r.method.as_ref().is_some_and(|sm| sm.matches(m)))
        })
        .collect();
    if methods.is_empty() {
        return;
    }
    out.push(vs.finding(
        Severity::Warning,
        &format!("spec.http[{i}].retries"),
        format!(
            "retries {} requests without retryOn: a non-idempotent request may be applied twice; \
             set retryOn (e.g. connect-failure,refused-stream,reset-before-request) to retry only \
             requests that never reached the upstream",
            methods.join(" and ")
        ),
    ));
}

fn mirrors(vs: &Located<VirtualService>, i: usize, route: &HttpRoute, out: &mut Vec<Finding>) {
    let ns = &vs.metadata.namespace;
    let key = |d: &Destination| (hosts::fqdn(&d.host, ns), d.subset.clone());
    let targets: Vec<_> = route.route.iter().map(|d| key(&d.destination)).collect();
    for (path, m) in route.mirror_destinations(i) {
        let k = key(m);
        if targets.contains(&k) {
            let what = match &k.1 {
                Some(s) => format!("{} subset {s}", k.0),
                None => k.0.clone(),
            };
            out.push(vs.finding(
                Severity::Warning,
                &path,
                format!(
                    "mirrors to the route's own destination ({what}): the same workloads get every request twice"
                ),
            ));
        }
    }
}
