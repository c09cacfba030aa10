//! meshd's RateLimitPolicy (meshd.io/v1alpha1): first-class rate limits where Istio needs an
//! EnvoyFilter.

use serde::{Deserialize, Serialize};

use crate::policy::duration::PolicyDuration;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RateLimitPolicySpec {
    pub target: RateLimitTarget,
    pub local: Option<LocalRateLimit>,
    /// What buckets are kept per: each distinct combination of values gets its own bucket.
    pub descriptors: Vec<Descriptor>,
    pub global: Option<GlobalRateLimit>,
    /// Refuse requests when the global limit's Redis cannot be reached (default: let them pass).
    pub failure_mode_deny: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RateLimitTarget {
    pub host: String,
    /// The `name` of one http route of a VirtualService for `host`; all routes when absent.
    pub route: Option<String>,
}

/// A token bucket in meshd: `maxTokens` at most, `tokensPerFill` added every `fillInterval`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LocalRateLimit {
    pub max_tokens: u32,
    /// Defaults to `maxTokens`.
    pub tokens_per_fill: Option<u32>,
    pub fill_interval: PolicyDuration,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Descriptor {
    pub header: Option<String>,
    pub source_workload: Option<bool>,
}

/// A limit shared by every meshd, counted in Redis.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GlobalRateLimit {
    /// `host:port`.
    pub redis: String,
    pub requests_per_unit: u32,
    /// `second`, `minute` or `hour`.
    pub unit: String,
}
