//! A VirtualService: how requests to some hosts are matched and routed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::common::{Headers, Percent, PortSelector, StringMatch};
use crate::policy::duration::PolicyDuration;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct VirtualServiceSpec {
    pub hosts: Vec<String>,
    pub gateways: Vec<String>,
    /// Shared with the compiled route table, so a snapshot holds each route once.
    pub http: Vec<std::sync::Arc<HttpRoute>>,
    pub tcp: Vec<TcpRoute>,
    pub tls: Vec<TlsRoute>,
    pub export_to: Vec<String>,
}

/// The gateway name that stands for the mesh's own proxies (sidecars, and meshd).
pub const MESH_GATEWAY: &str = "mesh";

/// Whether a `gateways` list binds to the mesh: it is empty or names `mesh`. A VirtualService
/// or match bound only to named gateways configures those gateways, never meshd.
pub fn binds_mesh(gateways: &[String]) -> bool {
    gateways.is_empty() || gateways.iter().any(|g| g == MESH_GATEWAY)
}

impl VirtualServiceSpec {
    /// Whether this VirtualService configures mesh traffic (its `gateways` bind to the mesh).
    pub fn applies_to_mesh(&self) -> bool {
        binds_mesh(&self.gateways)
    }

    /// Every destination it names, with its field path: routes, mirrors, TCP and TLS routes.
    pub fn destinations(&self) -> Vec<(String, &Destination)> {
        let mut out = Vec::new();
        for (i, r) in self.http.iter().enumerate() {
            for (j, d) in r.route.iter().enumerate() {
                out.push((
                    format!("spec.http[{i}].route[{j}].destination"),
                    &d.destination,
                ));
            }
            out.extend(r.mirror_destinations(i));
        }
        for (i, r) in self.tcp.iter().enumerate() {
            for (j, d) in r.route.iter().enumerate() {
                out.push((
                    format!("spec.tcp[{i}].route[{j}].destination"),
                    &d.destination,
                ));
            }
        }
        for (i, r) in self.tls.iter().enumerate() {
            for (j, d) in r.route.iter().enumerate() {
                out.push((
                    format!("spec.tls[{i}].route[{j}].destination"),
                    &d.destination,
                ));
            }
        }
        out
    }
}

/// A route match that can name the gateways it applies at (http, tcp and tls matches).
pub trait GatewayBound {
    fn gateways(&self) -> &[String];
}

/// The matches of a route that apply to mesh traffic. `None` when the route has matches and
/// every one names only other gateways: such a route never takes mesh traffic (while a route
/// without matches takes all of it).
pub fn mesh_matches<M: GatewayBound>(matches: &[M]) -> Option<Vec<&M>> {
    let kept: Vec<&M> = matches
        .iter()
        .filter(|m| binds_mesh(m.gateways()))
        .collect();
    (kept.is_empty() == matches.is_empty()).then_some(kept)
}

macro_rules! gateway_bound {
    ($($ty:ty),*) => {$(
        impl GatewayBound for $ty {
            fn gateways(&self) -> &[String] {
                &self.gateways
            }
        }
    )*};
}
gateway_bound!(HttpMatchRequest, L4Match, TlsMatch);

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRoute {
    /// Shared, so a request's record names its route without copying the name.
    pub name: Option<std::sync::Arc<str>>,
    #[serde(rename = "match")]
    pub matches: Vec<HttpMatchRequest>,
    pub route: Vec<HttpRouteDestination>,
    pub redirect: Option<HttpRedirect>,
    pub direct_response: Option<HttpDirectResponse>,
    pub rewrite: Option<HttpRewrite>,
    pub timeout: Option<PolicyDuration>,
    pub retries: Option<HttpRetry>,
    pub fault: Option<HttpFaultInjection>,
    pub mirror: Option<Destination>,
    pub mirrors: Vec<HttpMirrorPolicy>,
    pub mirror_percentage: Option<Percent>,
    /// Deprecated integer form of `mirrorPercentage`, honoured when that is unset.
    pub mirror_percent: Option<u32>,
    pub cors_policy: Option<CorsPolicy>,
    pub headers: Option<Headers>,
    /// The VirtualService (without hosts) whose http routes take this route's place.
    pub delegate: Option<Delegate>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Delegate {
    pub name: String,
    /// The root's namespace when unset.
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpMatchRequest {
    pub name: Option<String>,
    pub uri: Option<StringMatch>,
    pub scheme: Option<StringMatch>,
    pub method: Option<StringMatch>,
    pub authority: Option<StringMatch>,
    pub headers: BTreeMap<String, StringMatch>,
    pub port: Option<u16>,
    pub source_labels: BTreeMap<String, String>,
    pub query_params: BTreeMap<String, StringMatch>,
    pub ignore_uri_case: bool,
    pub without_headers: BTreeMap<String, StringMatch>,
    pub source_namespace: Option<String>,
    pub gateways: Vec<String>,
    /// The name of the route's own statistics when this match selects it.
    pub stat_prefix: Option<String>,
}

impl HttpMatchRequest {
    /// Whether this match accepts every request: no condition, or only `uri.prefix: /`.
    pub fn is_catch_all(&self) -> bool {
        let uri_any = match &self.uri {
            None => true,
            Some(m) => m.prefix.as_deref() == Some("/") || *m == StringMatch::default(),
        };
        uri_any
            && self.scheme.is_none()
            && self.method.is_none()
            && self.authority.is_none()
            && self.headers.is_empty()
            && self.port.is_none()
            && self.source_labels.is_empty()
            && self.query_params.is_empty()
            && self.without_headers.is_empty()
            && self.source_namespace.is_none()
            && self.gateways.is_empty()
    }
}

impl HttpRoute {
    /// Whether this route takes every request that reaches it.
    pub fn is_catch_all(&self) -> bool {
        self.matches.is_empty() || self.matches.iter().any(HttpMatchRequest::is_catch_all)
    }

    /// Its mirror destinations (`mirror`, then `mirrors`), with their field paths as route
    /// `i` of its VirtualService.
    pub fn mirror_destinations(&self, i: usize) -> Vec<(String, &Destination)> {
        let mut out = Vec::new();
        if let Some(m) = &self.mirror {
            out.push((format!("spec.http[{i}].mirror"), m));
        }
        for (j, m) in self.mirrors.iter().enumerate() {
            out.push((
                format!("spec.http[{i}].mirrors[{j}].destination"),
                &m.destination,
            ));
        }
        out
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Destination {
    pub host: String,
    pub subset: Option<String>,
    pub port: Option<PortSelector>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpRouteDestination {
    pub destination: Destination,
    pub weight: Option<u32>,
    pub headers: Option<Headers>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRedirect {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub port: Option<u16>,
    pub derive_port: Option<String>,
    pub scheme: Option<String>,
    pub redirect_code: Option<u16>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpDirectResponse {
    pub status: u16,
    pub body: Option<HttpBody>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpBody {
    pub string: Option<String>,
    /// Base64, as in protobuf's JSON form.
    pub bytes: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRewrite {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RegexRewrite {
    #[serde(rename = "match")]
    pub pattern: String,
    pub rewrite: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRetry {
    pub attempts: u32,
    pub per_try_timeout: Option<PolicyDuration>,
    pub retry_on: Option<String>,
    pub retry_remote_localities: Option<bool>,
    /// Whether a retry avoids the endpoints earlier attempts tried (Istio's default, true).
    pub retry_ignore_previous_hosts: Option<bool>,
    pub backoff: Option<PolicyDuration>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpFaultInjection {
    pub delay: Option<Delay>,
    pub abort: Option<Abort>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Delay {
    pub fixed_delay: Option<PolicyDuration>,
    pub percentage: Option<Percent>,
    /// Deprecated integer percentage.
    pub percent: Option<u32>,
}

/// The gRPC status names, by code (`OK` is 0): what Istio's validation accepts in a fault's
/// `grpcStatus` (a number or another spelling is refused).
pub const GRPC_STATUS_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Abort {
    pub http_status: Option<u16>,
    pub grpc_status: Option<String>,
    pub percentage: Option<Percent>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpMirrorPolicy {
    pub destination: Destination,
    pub percentage: Option<Percent>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CorsPolicy {
    pub allow_origins: Vec<StringMatch>,
    /// Deprecated form of `allowOrigins`: exact origins, used when `allowOrigins` is not set.
    pub allow_origin: Vec<String>,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub max_age: Option<PolicyDuration>,
    pub allow_credentials: Option<bool>,
    pub unmatched_preflights: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct L4Match {
    pub destination_subnets: Vec<String>,
    pub port: Option<u16>,
    pub source_labels: BTreeMap<String, String>,
    pub source_namespace: Option<String>,
    pub gateways: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TlsMatch {
    pub sni_hosts: Vec<String>,
    pub destination_subnets: Vec<String>,
    pub port: Option<u16>,
    pub source_labels: BTreeMap<String, String>,
    pub source_namespace: Option<String>,
    pub gateways: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RouteDestination {
    pub destination: Destination,
    pub weight: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TcpRoute {
    #[serde(rename = "match")]
    pub matches: Vec<L4Match>,
    pub route: Vec<RouteDestination>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TlsRoute {
    #[serde(rename = "match")]
    pub matches: Vec<TlsMatch>,
    pub route: Vec<RouteDestination>,
}
