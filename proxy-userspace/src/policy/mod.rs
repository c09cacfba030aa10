//! The policy model: Istio resources and meshd's RateLimitPolicy read from YAML, validated and
//! analyzed with file:line:col findings.
