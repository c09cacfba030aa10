//! Problems found while compiling security policies; none stops compilation.

/// A policy, or a rule in it, that meshd cannot apply as written. Each message names the
/// resource and says what meshd does instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecurityError {
    #[error(
        "AuthorizationPolicy {policy}: action CUSTOM needs an external authorization provider, \
         which meshd does not have; as istiod does when it cannot use the provider, the policy \
         denies every request and connection to the workloads it selects"
    )]
    CustomUnsupported { policy: String },
    #[error(
        "AuthorizationPolicy {policy}: target {kind} {name}: {reason}; the reference selects \
         no workload"
    )]
    Target {
        policy: String,
        kind: String,
        name: String,
        reason: &'static str,
    },
    #[error(
        "AuthorizationPolicy {policy}: action {action:?} is not ALLOW, DENY, AUDIT or CUSTOM; \
         the policy is ignored"
    )]
    UnknownAction { policy: String, action: String },
    #[error(
        "AuthorizationPolicy {policy}: rules[{rule}]: {field}: {value:?} is not {expected}; \
         the rule is skipped (an ALLOW policy allows less, a DENY policy denies less)"
    )]
    InvalidValue {
        policy: String,
        rule: usize,
        field: String,
        value: String,
        expected: &'static str,
    },
    #[error(
        "AuthorizationPolicy {policy}: rules[{rule}]: condition {key:?} is not something meshd \
         can see; an ALLOW rule using it never matches, a DENY or AUDIT rule ignores it"
    )]
    UnsupportedCondition {
        policy: String,
        rule: usize,
        key: String,
    },
    #[error(
        "AuthorizationPolicy {policy}: annotation istio.io/dry-run: {value:?} is not true or \
         false; the policy is enforced"
    )]
    InvalidDryRun { policy: String, value: String },
    #[error(
        "PeerAuthentication {policy}: {field}: mode {mode:?} is not UNSET, DISABLE, PERMISSIVE \
         or STRICT; treated as UNSET (inherited)"
    )]
    UnknownMtlsMode {
        policy: String,
        field: String,
        mode: String,
    },
}
