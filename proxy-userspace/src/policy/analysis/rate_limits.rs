//! RateLimitPolicies whose target route names no http route of a VirtualService for the target
//! host: the limit never applies (a warning).

use crate::policy::{
    finding::{Finding, Severity},
    hosts,
    set::PolicySet,
};

pub(super) fn check(set: &PolicySet, out: &mut Vec<Finding>) {
    for rl in &set.rate_limit_policies {
        let Some(route) = &rl.spec.target.route else {
            continue;
        };
        let host = hosts::fqdn(&rl.spec.target.host, &rl.metadata.namespace);
        let found = set.virtual_services.iter().any(|vs| {
            let ns = &vs.metadata.namespace;
            vs.spec
                .hosts
                .iter()
                .any(|h| hosts::covers(&hosts::fqdn(h, ns), &host))
                && vs
                    .spec
                    .http
                    .iter()
                    .any(|r| r.name.as_deref() == Some(route.as_str()))
        });
        if !found {
            out.push(rl.finding(
                Severity::Warning,
                "spec.target.route",
                format!(
                    "no VirtualService for host {host} has an http route named {route:?}; this limit never applies"
                ),
            ));
        }
    }
}
