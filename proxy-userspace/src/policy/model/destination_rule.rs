//! A DestinationRule: what happens to traffic for a host once routed: load balancing, limits,
//! outlier detection, TLS, and the subsets routes refer to.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::common::{LabelSelector, PortSelector};
use crate::policy::duration::PolicyDuration;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DestinationRuleSpec {
    pub host: String,
    pub traffic_policy: Option<TrafficPolicy>,
    pub subsets: Vec<Subset>,
    pub export_to: Vec<String>,
    pub workload_selector: Option<LabelSelector>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TrafficPolicy {
    pub load_balancer: Option<LoadBalancer>,
    pub connection_pool: Option<ConnectionPool>,
    pub outlier_detection: Option<OutlierDetection>,
    pub tls: Option<ClientTls>,
    pub port_level_settings: Vec<PortTrafficPolicy>,
    pub retry_budget: Option<RetryBudget>,
    pub proxy_protocol: Option<ProxyProtocol>,
    pub tunnel: Option<TunnelSettings>,
}

/// `tunnel`: opaque TCP to the rule's host (a forward proxy) is tunnelled with HTTP CONNECT to
/// `targetHost:targetPort`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TunnelSettings {
    /// `CONNECT` (the default); validation rejects `POST`, which meshd does not send.
    pub protocol: Option<String>,
    pub target_host: String,
    pub target_port: u16,
}

/// `proxyProtocol`: the PROXY protocol header meshd writes first on each upstream connection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProxyProtocol {
    /// `V1` (text, Istio's default) or `V2` (binary).
    pub version: Option<String>,
}

/// `retryBudget`: concurrent retries as a share of the destination's active requests, in
/// place of `connectionPool.http.maxRetries` (Envoy's retry budget).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RetryBudget {
    /// Percent of the active and pending requests (Envoy's default 20).
    pub percent: Option<f64>,
    /// Retries always allowed, whatever the share (Envoy's default 3).
    pub min_retry_concurrency: Option<u32>,
    pub budget_interval: Option<PolicyDuration>,
}

// Validation bounds `percent` to 0..=100, so it is never NaN.
impl Eq for RetryBudget {}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PortTrafficPolicy {
    pub port: Option<PortSelector>,
    pub load_balancer: Option<LoadBalancer>,
    pub connection_pool: Option<ConnectionPool>,
    pub outlier_detection: Option<OutlierDetection>,
    pub tls: Option<ClientTls>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LoadBalancer {
    /// `ROUND_ROBIN`, `LEAST_REQUEST`, `LEAST_CONN`, `RANDOM`, `PASSTHROUGH`, `UNSPECIFIED`.
    pub simple: Option<String>,
    pub consistent_hash: Option<ConsistentHash>,
    pub locality_lb_setting: Option<LocalityLbSetting>,
    /// Slow start's window (deprecated in Istio for `warmup`).
    pub warmup_duration_secs: Option<PolicyDuration>,
    pub warmup: Option<Warmup>,
}

/// `warmup`: slow start for endpoints new to the service (Envoy's slow start config).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Warmup {
    pub duration: Option<PolicyDuration>,
    /// The least share of its weight a new endpoint gets, in percent (default 10).
    pub minimum_percent: Option<f64>,
    /// How fast the share grows: 1 is linear (the default), more is faster at first, less
    /// (above 0) slower.
    pub aggression: Option<f64>,
}

// Validation bounds both numbers, so neither is NaN.
impl Eq for Warmup {}

/// `localityLbSetting`: prefer endpoints near this node; fail over by locality, then by the
/// `failover` region pairs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LocalityLbSetting {
    /// Istio's mesh default is on.
    pub enabled: Option<bool>,
    pub failover: Vec<LocalityFailover>,
    pub distribute: Vec<LocalityDistribute>,
    /// Labels (`key`, or `key=value`) whose leading matches with the client rank endpoints.
    pub failover_priority: Vec<String>,
}

/// `distribute`: for clients in `from`, the share of traffic (percent) each locality pattern
/// of `to` gets; localities none of them covers get none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LocalityDistribute {
    pub from: String,
    pub to: BTreeMap<String, u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LocalityFailover {
    pub from: String,
    pub to: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConsistentHash {
    pub http_header_name: Option<String>,
    pub http_cookie: Option<HttpCookie>,
    pub use_source_ip: Option<bool>,
    pub http_query_parameter_name: Option<String>,
    pub ring_hash: Option<RingHash>,
    pub maglev: Option<Maglev>,
    pub minimum_ring_size: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpCookie {
    pub name: String,
    pub path: Option<String>,
    pub ttl: Option<PolicyDuration>,
    /// Extra attributes of the cookie meshd generates (`SameSite`, `Secure`, ...).
    pub attributes: Vec<CookieAttribute>,
}

/// One attribute of a generated cookie: `name=value`, or `name` alone when `value` is unset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CookieAttribute {
    pub name: String,
    pub value: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RingHash {
    pub minimum_ring_size: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Maglev {
    pub table_size: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnectionPool {
    pub tcp: Option<TcpPool>,
    pub http: Option<HttpPool>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TcpPool {
    pub max_connections: Option<u32>,
    pub connect_timeout: Option<PolicyDuration>,
    pub tcp_keepalive: Option<TcpKeepalive>,
    pub max_connection_duration: Option<PolicyDuration>,
    pub idle_timeout: Option<PolicyDuration>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TcpKeepalive {
    pub probes: Option<u32>,
    pub time: Option<PolicyDuration>,
    pub interval: Option<PolicyDuration>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpPool {
    #[serde(rename = "http1MaxPendingRequests")]
    pub http1_max_pending_requests: Option<u32>,
    #[serde(rename = "http2MaxRequests")]
    pub http2_max_requests: Option<u32>,
    /// 0 means unlimited.
    pub max_requests_per_connection: Option<u32>,
    pub max_retries: Option<u32>,
    pub idle_timeout: Option<PolicyDuration>,
    #[serde(rename = "h2UpgradePolicy")]
    pub h2_upgrade_policy: Option<String>,
    pub use_client_protocol: Option<bool>,
    pub max_concurrent_streams: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OutlierDetection {
    pub split_external_local_origin_errors: bool,
    pub consecutive_local_origin_failures: Option<u32>,
    pub consecutive_gateway_errors: Option<u32>,
    #[serde(rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<u32>,
    /// Deprecated alias of `consecutive5xxErrors`.
    pub consecutive_errors: Option<u32>,
    pub interval: Option<PolicyDuration>,
    pub base_ejection_time: Option<PolicyDuration>,
    pub max_ejection_percent: Option<u32>,
    pub min_health_percent: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClientTls {
    /// `DISABLE`, `SIMPLE`, `MUTUAL`, `ISTIO_MUTUAL`.
    pub mode: String,
    pub client_certificate: Option<String>,
    pub private_key: Option<String>,
    pub ca_certificates: Option<String>,
    pub credential_name: Option<String>,
    pub subject_alt_names: Vec<String>,
    pub sni: Option<String>,
    pub insecure_skip_verify: Option<bool>,
    pub ca_crl: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Subset {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub traffic_policy: Option<TrafficPolicy>,
}
