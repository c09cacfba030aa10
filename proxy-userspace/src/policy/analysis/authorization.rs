//! What the AuthorizationPolicy compiler reports beyond validation: conditions meshd cannot
//! see (`connection.sni`, `experimental.*`), `targetRefs` that select no workload, a dry-run
//! annotation that is not a boolean (warnings, as meshd logs them when it applies them).

use crate::{
    policy::{
        finding::{Finding, Severity},
        set::PolicySet,
    },
    security::{DEFAULT_ROOT_NAMESPACE, SecurityError, authz::Authorizer},
};

pub(super) fn check(set: &PolicySet, out: &mut Vec<Finding>) {
    let (_, problems) = Authorizer::from_set(set, DEFAULT_ROOT_NAMESPACE);
    for p in problems {
        let (policy, path) = match &p {
            // Validation already says what a CUSTOM policy does.
            SecurityError::CustomUnsupported { .. } => continue,
            SecurityError::UnsupportedCondition { policy, rule, .. }
            | SecurityError::InvalidValue { policy, rule, .. } => {
                (policy, format!("spec.rules[{rule}]"))
            }
            SecurityError::Target { policy, .. } => (policy, "spec".to_string()),
            SecurityError::InvalidDryRun { policy, .. } => {
                (policy, "metadata.annotations".to_string())
            }
            SecurityError::UnknownAction { policy, .. } => (policy, "spec.action".to_string()),
            SecurityError::UnknownMtlsMode { .. } => continue,
        };
        let found = (set.authorization_policies.iter()).find(|a| a.id() == *policy);
        if let Some(a) = found {
            out.push(a.finding(Severity::Warning, &path, p.to_string()));
        }
    }
}
