//! Rate limiting from `meshd.io/v1alpha1` RateLimitPolicy: a local token bucket in this meshd
//! and a global limit shared by every meshd through Redis. A limited request gets 429 with flag
//! RL and `x-ratelimit-limit`, `x-ratelimit-remaining` and `retry-after`.

pub mod global;
pub mod local;

use std::{borrow::Cow, time::Duration};

use crate::policy::model::RateLimitPolicy;

/// Why a request was limited, for the 429 and its headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limited {
    pub limit: u64,
    pub retry_after: Duration,
    /// The global limit (Redis) decided, not this meshd's local bucket.
    pub global: bool,
}

/// What the checks decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Limited(Limited),
    /// Redis could not answer and the policy fails closed.
    Unavailable,
}

/// The bucket key for a policy and a request: the values of its descriptors. None when the
/// request lacks a header a descriptor reads: as Envoy's `request_headers` action, which then
/// makes no descriptor, the policy does not apply to it (requests without the header are not
/// pooled into one bucket of their own).
pub fn descriptor_key(
    policy: &RateLimitPolicy,
    header: &(dyn Fn(&str) -> Option<String> + Sync),
    workload: Option<&str>,
) -> Option<String> {
    use std::fmt::Write;
    let mut key = policy.id();
    for d in &policy.spec.descriptors {
        let value = if let Some(h) = &d.header {
            Cow::Owned(header(h)?)
        } else if d.source_workload == Some(true) {
            Cow::Borrowed(workload.unwrap_or("-"))
        } else {
            Cow::Borrowed("")
        };
        // Each value with its length, as Envoy's descriptors are entries rather than one
        // string: `a|b` then `c` and `a` then `b|c` are two buckets, not one.
        let _ = write!(key, "|{}:{value}", value.len());
    }
    Some(key)
}

/// Whether a policy applies to a request for `hosts` (the request's host forms) and the route
/// `route_name`.
pub fn applies(policy: &RateLimitPolicy, hosts: &[Cow<'_, str>], route_name: Option<&str>) -> bool {
    let target = crate::policy::hosts::fqdn(&policy.spec.target.host, &policy.metadata.namespace);
    hosts.iter().any(|h| *h == target)
        && policy
            .spec
            .target
            .route
            .as_deref()
            .is_none_or(|r| route_name == Some(r))
}

use crate::config::Snapshot;

/// Runs every RateLimitPolicy that applies to the request: local buckets first (no I/O), then
/// the global limit. The first limit that says no decides.
pub async fn check(
    snap: &Snapshot,
    hosts: &[Cow<'_, str>],
    route_name: Option<&str>,
    header: &(dyn Fn(&str) -> Option<String> + Sync),
    workload: Option<&str>,
    ctx: &super::HttpContext,
) -> Verdict {
    let applicable: Vec<_> = snap
        .policies
        .rate_limit_policies
        .iter()
        .filter(|p| applies(p, hosts, route_name))
        .collect();
    // Every local bucket that applies gives a token, or none does: a request one policy
    // refuses spends no other policy's tokens (as Envoy's local limit, since 1.26, leaves the
    // shared bucket alone when a descriptor's refuses), whatever order the policies come in.
    let local: Vec<_> = (applicable.iter())
        .filter_map(|p| Some((p, p.spec.local.as_ref()?)))
        .filter_map(|(p, cfg)| Some((p, descriptor_key(p, header, workload)?, cfg)))
        .collect();
    if !local.is_empty() {
        let wanted: Vec<(&str, _)> = (local.iter())
            .map(|(_, key, cfg)| (key.as_str(), *cfg))
            .collect();
        if let Err((i, l)) = ctx.buckets.take_all(&wanted) {
            ctx.metrics.rate_limit(&local[i].0.id(), "limited");
            return Verdict::Limited(l);
        }
    }
    for p in &applicable {
        let Some(cfg) = &p.spec.global else { continue };
        let Some(key) = descriptor_key(p, header, workload) else {
            continue;
        };
        match ctx.global.take(&key, cfg).await {
            Ok(Ok(_)) => {}
            Ok(Err(l)) => {
                ctx.metrics.rate_limit(&p.id(), "limited");
                return Verdict::Limited(l);
            }
            Err(e) => {
                ctx.metrics.rate_limit(&p.id(), "redis_error");
                if let Some(unlogged) = ctx.global.should_warn() {
                    tracing::warn!(error = %e, policy = %p.id(), deny = p.spec.failure_mode_deny, unlogged, "global rate limit unavailable (`unlogged`: the failures since the last such line)");
                }
                if p.spec.failure_mode_deny {
                    return Verdict::Unavailable;
                }
            }
        }
    }
    if !applicable.is_empty() {
        ctx.metrics.rate_limit("-", "allowed");
    }
    Verdict::Allow
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_values_are_kept_apart() {
        let yaml = "apiVersion: meshd.io/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: rl, namespace: g}\nspec:\n  target: {host: rlk}\n  descriptors: [{header: x-a}, {header: x-b}]\n  local: {maxTokens: 1, fillInterval: 1h}\n";
        let set = crate::policy::load_str("rl.yaml".as_ref(), yaml).unwrap();
        let p = &set.rate_limit_policies[0];
        let key = |a: &'static str, b: &'static str| {
            let header = move |h: &str| Some(if h == "x-a" { a } else { b }.to_string());
            descriptor_key(p, &header, None).unwrap()
        };
        assert_ne!(key("a|b", "c"), key("a", "b|c"));
        assert_eq!(key("a", "b"), key("a", "b"));
    }
}
