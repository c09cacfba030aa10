//! Routing one request against the active snapshot: find the host's VirtualService, take the
//! first matching route, and turn its action into a decision: answer directly, redirect, or
//! forward to an endpoint picked from the destination's cluster.

use std::{
    borrow::Cow,
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use bytes::Bytes;

use crate::{
    config::{Cluster, Snapshot},
    policy::model::{
        ClientTls, ConnectionPool, HttpRedirect, LoadBalancer, OutlierDetection, PortTrafficPolicy,
        ProxyProtocol, RetryBudget, TrafficDistribution, TrafficPolicy, TunnelSettings,
    },
    proxy::sniff::Detected,
    routes::{Client, Destination, HttpRoute, RequestView, StringMatcher, table::host_of},
};

/// What to do with a request.
pub enum Decision<'s> {
    /// No VirtualService covers the host: forward to the original destination unchanged.
    Passthrough,
    /// A VirtualService covers the host but no route matched: 404, flag NR.
    NoRoute { host: String },
    Direct {
        route: &'s HttpRoute,
        status: u16,
        body: Bytes,
    },
    Redirect {
        route: &'s HttpRoute,
        status: u16,
        location: String,
    },
    Forward {
        route: &'s HttpRoute,
        destination: &'s Destination,
        /// The virtual host that routed it: the VirtualService host (`*.suffix`, `*`) matched.
        vhost: &'s str,
    },
}

/// The names a request may be for, most specific first: the Host's (the authority's host as
/// given, then completed as a Kubernetes service name in the client's namespace), then the
/// service whose VIP the client connected to. Reads as the slice of all of them.
pub struct HostCandidates<'a> {
    names: Vec<Cow<'a, str>>,
    /// How many of `names` come from the Host (the rest: the VIP's service).
    from_host: usize,
}

impl HostCandidates<'_> {
    /// The names that come from the Host (the full name first), not from the VIP dialled.
    pub fn host_names(&self) -> &[Cow<'_, str>] {
        &self.names[..self.from_host]
    }
}

impl<'a> std::ops::Deref for HostCandidates<'a> {
    type Target = [Cow<'a, str>];

    fn deref(&self) -> &Self::Target {
        &self.names
    }
}

/// A request's [`HostCandidates`]. Borrowed from the authority and the snapshot where they can
/// be: this runs for every request.
pub fn host_candidates<'a>(
    authority: &'a str,
    client_ns: &str,
    dst: SocketAddr,
    snap: &'a Snapshot,
) -> HostCandidates<'a> {
    let host = host_of(authority);
    let completed = match host.matches('.').count() {
        0 if !host.is_empty() => Some(format!("{host}.{client_ns}.svc.cluster.local")),
        1 if host.parse::<IpAddr>().is_err() => Some(format!("{host}.svc.cluster.local")),
        2 if host.ends_with(".svc") => Some(format!("{host}.cluster.local")),
        _ => None,
    };
    let mut names = Vec::with_capacity(3);
    names.push(host);
    names.extend(completed.map(Cow::Owned));
    let from_host = names.len();
    if let Some(vip_host) = snap.compiled.vip_host(dst) {
        names.push(Cow::Borrowed(vip_host));
    }
    HostCandidates { names, from_host }
}

/// Whether `host` is a service declaring `port`, where it has a default route.
fn declares_port(snap: &Snapshot, host: &str, port: u16) -> bool {
    snap.compiled
        .clusters
        .get(host)
        .is_some_and(|c| c.ports.contains_key(&port))
}

/// Picks a destination by weight: each gets `weight / (sum of the weights)` of the picks.
pub fn pick_weighted(destinations: &[Destination]) -> Option<&Destination> {
    let total: u64 = destinations.iter().map(|d| u64::from(d.weight)).sum();
    if total == 0 {
        return destinations.first();
    }
    let mut n = fastrand::u64(0..total);
    destinations.iter().find(|d| {
        let weight = u64::from(d.weight);
        if n < weight {
            true
        } else {
            n -= weight;
            false
        }
    })
}

pub fn decide<'s>(
    snap: &'s Snapshot,
    candidates: &HostCandidates<'_>,
    view: &RequestView<'_>,
) -> Decision<'s> {
    // As Envoy picks Istio's virtual hosts, by the Host: an exact name before a wildcard before
    // `*`. Exact is a VirtualService's host or a service declaring this port, which takes the
    // VirtualService covering it (`*.suffix`, `*`) or else its default route. The service of
    // the VIP dialled comes after them all, unless the Host is an address (Istio lists the VIP
    // among its service's names); so a service named in the Host is not overridden by it.
    let table = &snap.compiled.routes;
    let (host_names, vip) = candidates.split_at(candidates.from_host);
    let exact = |names: &'_ [Cow<'_, str>]| {
        names
            .iter()
            .position(|h| table.exact(h).is_some() || declares_port(snap, h, view.port))
    };
    let by_host = |i: usize| {
        let h = &candidates[i];
        match table.exact(h) {
            Some(routes) => (h, Some(routes)),
            None => (h, table.wildcard(h).or(table.any())),
        }
    };
    let host_is_address = host_names
        .first()
        .is_some_and(|h| h.parse::<IpAddr>().is_ok());
    let found = exact(host_names)
        .or_else(|| {
            host_is_address
                .then(|| exact(vip))
                .flatten()
                .map(|i| i + host_names.len())
        })
        .map(by_host)
        .or_else(|| {
            host_names
                .iter()
                .find_map(|h| table.wildcard(h).map(|r| (h, Some(r))))
        })
        .or_else(|| Some((host_names.first()?, Some(table.any()?))))
        .or_else(|| exact(vip).map(|i| by_host(i + host_names.len())));
    let Some((host, routes)) = found else {
        return Decision::Passthrough;
    };
    let Some(routes) = routes else {
        return Decision::Passthrough;
    };
    let Some(route) = routes.first_match(view) else {
        return Decision::NoRoute {
            host: host.to_string(),
        };
    };
    if let Some(d) = &route.spec.direct_response {
        // Validation checked `bytes` is base64.
        let body = d
            .body
            .as_ref()
            .map_or(Bytes::new(), |b| match (&b.string, &b.bytes) {
                (Some(s), _) => Bytes::from(s.clone()),
                (None, Some(b)) => {
                    crate::policy::base64::decode(b).map_or(Bytes::new(), Bytes::from)
                }
                (None, None) => Bytes::new(),
            });
        return Decision::Direct {
            route,
            status: d.status,
            body,
        };
    }
    if let Some(r) = &route.spec.redirect {
        return Decision::Redirect {
            route,
            status: r.redirect_code.unwrap_or(301),
            location: redirect_location(r, view),
        };
    }
    match pick_weighted(&route.destinations) {
        Some(destination) => Decision::Forward {
            route,
            destination,
            vhost: &routes.name,
        },
        None => Decision::NoRoute {
            host: host.to_string(),
        },
    }
}

impl<'s> Decision<'s> {
    /// The VirtualService route that decided, if one did.
    pub fn route(&self) -> Option<&'s HttpRoute> {
        match self {
            Decision::Direct { route, .. }
            | Decision::Redirect { route, .. }
            | Decision::Forward { route, .. } => Some(route),
            Decision::Passthrough | Decision::NoRoute { .. } => None,
        }
    }
}

/// The Location of a `redirect`, built as Envoy builds it from Istio's HTTPRedirect. `uri`
/// replaces the path and keeps the request's query, unless it brings a query of its own.
/// `derivePort: FROM_REQUEST_PORT` is the port the client dialled. With no new authority or
/// port, the request's authority stays, except that a change of scheme drops the old scheme's
/// default port (`:80` for http, `:443` for https). As Envoy, the request's scheme is its
/// `x-forwarded-proto` when it says http or https (a client behind a TLS terminator is sent
/// back to https), else the connection's.
fn redirect_location(r: &HttpRedirect, view: &RequestView<'_>) -> String {
    let forwarded = (view.header)("x-forwarded-proto");
    let current = match forwarded.as_deref().map(str::trim) {
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        Some(p) if p.eq_ignore_ascii_case("http") => "http",
        _ => view.scheme,
    };
    let scheme = r.scheme.as_deref().unwrap_or(current);
    let port = r
        .port
        .or_else(|| (r.derive_port.as_deref() == Some("FROM_REQUEST_PORT")).then_some(view.port));
    let (host, old_port) = split_port(view.authority);
    let authority = match (&r.authority, port) {
        (Some(a), Some(p)) => format!("{a}:{p}"),
        (Some(a), None) => a.clone(),
        (None, Some(p)) => format!("{host}:{p}"),
        (None, None) => {
            let default_port = match current {
                "https" => "443",
                _ => "80",
            };
            if scheme != current && old_port == Some(default_port) {
                host.to_string()
            } else {
                view.authority.to_string()
            }
        }
    };
    let path = r.uri.as_deref().unwrap_or(view.path);
    match view.query {
        Some(q) if !path.contains('?') => format!("{scheme}://{authority}{path}?{q}"),
        _ => format!("{scheme}://{authority}{path}"),
    }
}

/// An authority's host (an IPv6 address keeps its brackets) and port.
fn split_port(authority: &str) -> (&str, Option<&str>) {
    let after_host = authority.rfind(']').map_or(0, |i| i + 1);
    match authority[after_host..].rfind(':') {
        Some(i) => (
            &authority[..after_host + i],
            Some(&authority[after_host + i + 1..]),
        ),
        None => (authority, None),
    }
}

/// The path after `rewrite.uri`, as Istio's `prefix_rewrite` does it in Envoy: the matched
/// prefix is replaced, and a match without `uri` (or a route without matches) matched the
/// prefix `/`, so `/foo` with `uri: /v2` becomes `/v2foo`; an exact or regex match replaces
/// the whole path.
pub fn rewrite_path(route: &HttpRoute, view: &RequestView<'_>, replacement: &str) -> String {
    let matched = route.matches.iter().find(|m| m.matches(view));
    let prefix = match matched.map(|m| &m.uri) {
        Some(Some(StringMatcher::Prefix(p))) => Some(p.as_str()),
        Some(Some(_)) => None,
        Some(None) | None => Some("/"),
    };
    match prefix {
        Some(p) if view.path.len() >= p.len() => format!("{replacement}{}", &view.path[p.len()..]),
        _ => replacement.to_string(),
    }
}

/// Why no endpoint could be chosen (flag UH).
#[derive(Clone, Debug, thiserror::Error)]
pub enum NoEndpoint {
    #[error("no healthy upstream: {host} has no endpoints{subset}")]
    Empty { host: String, subset: String },
    /// A subset no DestinationRule (that applies to the client) defines: Istio builds no
    /// cluster for it, and Envoy answers 503 with flag NC.
    #[error("no cluster: {host} has no subset {subset}")]
    UnknownSubset { host: String, subset: String },
    /// A subset of a host that only a DestinationRule names: with no ServiceEntry (which always
    /// declares ports), Istio builds no cluster for the host's subsets (503 NC).
    #[error("no cluster: no ServiceEntry describes {host}, so it has no subset {subset}")]
    Unregistered { host: String, subset: String },
    /// A route to a host no ServiceEntry describes, other than the host requested: Istio builds
    /// no cluster for it (503 NC).
    #[error("no cluster: {host} is not a known service and not the requested host")]
    UnknownHost { host: String },
    #[error("no healthy upstream: outlier detection ejected every endpoint of {cluster}")]
    AllEjected { cluster: String },
    /// The route's port is not one the service declares: Istio builds no cluster for it, and
    /// Envoy answers 503 with flag NC.
    #[error("no cluster: {host} declares no port {port}")]
    NoCluster { host: String, port: u16 },
    /// Under `REGISTRY_ONLY`, a route to a host no ServiceEntry describes: Istio builds no
    /// cluster for it (503 NC), where `ALLOW_ANY` reaches it at the address dialled.
    #[error(
        "no cluster: no ServiceEntry describes {host}, and --outbound-traffic-policy is REGISTRY_ONLY"
    )]
    NotInRegistry { host: String },
}

impl NoEndpoint {
    /// The response flag a request that found no endpoint gets.
    pub fn flag(&self) -> super::ResponseFlags {
        match self {
            NoEndpoint::NoCluster { .. }
            | NoEndpoint::NotInRegistry { .. }
            | NoEndpoint::UnknownHost { .. }
            | NoEndpoint::UnknownSubset { .. }
            | NoEndpoint::Unregistered { .. } => super::ResponseFlags::NO_CLUSTER_FOUND,
            _ => super::ResponseFlags::NO_HEALTHY_UPSTREAM,
        }
    }
}

impl NoEndpoint {
    /// `distribute` gives the clients of this node's locality no endpoint of `host`.
    pub fn undistributed(host: &str) -> NoEndpoint {
        NoEndpoint::Empty {
            host: host.to_string(),
            subset: " for this node's locality (localityLbSetting.distribute)".into(),
        }
    }
}

/// The service port a request for `dest` goes to, known before its endpoints are: the port
/// the route names; else, as in Istio, the only port of a service that has one; else the port
/// dialled.
pub fn service_port(snap: &Snapshot, dest: &Destination, dst: SocketAddr) -> u16 {
    port_of(
        snap.compiled.clusters.get(&dest.host).map(|c| &**c),
        dest,
        dst,
    )
}

fn port_of(described: Option<&Cluster>, dest: &Destination, dst: SocketAddr) -> u16 {
    let only_port = || {
        let mut ports = described?.ports.keys();
        match (ports.next(), ports.next()) {
            (Some(p), None) => Some(*p),
            _ => None,
        }
    };
    dest.port.or_else(only_port).unwrap_or(dst.port())
}

/// The endpoints a request for `dest` may go to (ports already mapped), and the settings that
/// apply to them: the cluster as `client` sees it (a DestinationRule with a `workloadSelector`
/// may shape it), with the endpoints' weights when they differ. When no ServiceEntry describes
/// the host, and the route sends the request to the host it asked for, or the load balancer
/// is PASSTHROUGH, the original destination is the only endpoint, except under
/// `REGISTRY_ONLY`, where a host no ServiceEntry describes has no cluster. A DNS ServiceEntry
/// without endpoints has the addresses its host resolved to.
pub fn endpoints<'s>(
    snap: &'s Snapshot,
    dest: &Destination,
    requested: &[Cow<'_, str>],
    dst: SocketAddr,
    client: Option<&Client<'_>>,
) -> Result<(Vec<SocketAddr>, ClusterPolicy<'s>), NoEndpoint> {
    let described = (snap.compiled.clusters.get(&dest.host)).map(|c| c.for_client(client));
    if described.is_none() && snap.mesh.registry_only {
        return Err(NoEndpoint::NotInRegistry {
            host: dest.host.clone(),
        });
    }
    let port = port_of(described, dest, dst);
    if let (Some(c), Some(subset)) = (described, &dest.subset)
        && c.ports.is_empty()
    {
        return Err(NoEndpoint::Unregistered {
            host: c.host.clone(),
            subset: subset.clone(),
        });
    }
    // A port the route names that the service does not declare has no cluster. (A route that
    // names none goes to the port dialled, which a VirtualService matched by host name alone
    // may not be one of its service's: Istio would pass such a request through.)
    if let Some(c) = described
        .filter(|c| dest.port.is_some() && !c.ports.is_empty() && !c.ports.contains_key(&port))
    {
        return Err(NoEndpoint::NoCluster {
            host: c.host.clone(),
            port,
        });
    }
    let protocol = described.and_then(|c| c.port_protocol(port));
    let Some(cluster) = described.filter(|c| c.has_endpoints_on(port) || dest.subset.is_some())
    else {
        if described.is_some_and(|c| c.static_on(port)) {
            return Err(NoEndpoint::Empty {
                host: dest.host.clone(),
                subset: String::new(),
            });
        }
        // A DNS ServiceEntry without endpoints, whose host meshd resolves: the addresses its
        // host resolved to, as Envoy's DNS cluster for it has, whatever address the client
        // dialled (a VIP in `addresses` only picks the service) and whichever host the
        // request named. None (the host does not resolve): no healthy upstream, never the VIP
        // or address dialled.
        if let Some(c) = described
            && let Some(resolved) = c.host_addresses.get(&port)
        {
            if resolved.is_empty() {
                return Err(NoEndpoint::Empty {
                    host: c.host.clone(),
                    subset: " (its host does not resolve)".into(),
                });
            }
            let target = c.target_ports.get(&port).copied().unwrap_or(port);
            let addrs: Vec<SocketAddr> = (resolved.iter())
                .map(|ip| SocketAddr::new(*ip, target))
                .collect();
            let localities = vec![None; addrs.len()];
            let policy = ClusterPolicy::of(c, &dest.host, None, port, protocol, localities);
            return Ok((addrs, policy));
        }
        // A wildcard destination (`*.example.com`) covers the hosts it names.
        let named = |h: &str| {
            h == dest.host
                || (dest.host.starts_with("*.") && crate::policy::hosts::covers(&dest.host, h))
        };
        if requested.iter().any(|h| named(h)) {
            // A service without endpoints (an external host resolved by the client, say) still
            // has its DestinationRule's settings, and its port's `targetPort`, at the address
            // the client dialled.
            let (policy, target_port) = match described {
                Some(c) => (
                    ClusterPolicy::of(c, &dest.host, None, port, protocol, Vec::new()),
                    c.target_ports.get(&port).copied(),
                ),
                None => (
                    ClusterPolicy {
                        protocol,
                        ..ClusterPolicy::unconfigured(&dest.host, port)
                    },
                    None,
                ),
            };
            let addr = SocketAddr::new(dst.ip(), target_port.unwrap_or(port));
            return Ok((vec![addr], policy));
        }
        if let Ok(ip) = dest.host.parse::<IpAddr>() {
            return Ok((
                vec![SocketAddr::new(ip, port)],
                ClusterPolicy::unconfigured(&dest.host, port),
            ));
        }
        return Err(NoEndpoint::UnknownHost {
            host: dest.host.clone(),
        });
    };
    let subset_members = match &dest.subset {
        Some(s) => Some(
            cluster
                .subsets
                .get(s)
                .ok_or_else(|| NoEndpoint::UnknownSubset {
                    host: dest.host.clone(),
                    subset: s.clone(),
                })?,
        ),
        None => None,
    };
    // The subset's members, or every endpoint: indices into `cluster.endpoints`.
    let count = subset_members.map_or(cluster.endpoints.len(), Vec::len);
    let member = |k: usize| subset_members.map_or(k, |m| m[k]);
    let (addrs, localities): (Vec<SocketAddr>, Vec<Option<&str>>) = (0..count)
        .map(member)
        .filter_map(|i| {
            let e = &cluster.endpoints[i];
            Some((cluster.endpoint_addr(e, port)?, e.locality.as_deref()))
        })
        .unzip();
    let mut policy = ClusterPolicy::of(
        cluster,
        &dest.host,
        dest.subset.as_deref(),
        port,
        protocol,
        localities,
    );
    // `simple: PASSTHROUGH`: Envoy's original-destination cluster, the address the client
    // dialled, with no load balancing (whatever the endpoints are).
    if policy.lb.and_then(|l| l.simple.as_deref()) == Some("PASSTHROUGH") {
        policy.localities = vec![None];
        return Ok((vec![dst], policy));
    }
    let ranks_by_labels = (policy.lb.and_then(|l| l.locality_lb_setting.as_ref()))
        .is_some_and(|s| !s.failover_priority.is_empty());
    if ranks_by_labels || policy.distribution == Some(TrafficDistribution::PreferSameNode) {
        policy.labels = (0..count)
            .map(|k| &cluster.endpoints[member(k)])
            .filter(|e| e.ip.is_some() && e.serves(port))
            .map(|e| &e.labels)
            .collect();
    }
    if addrs.is_empty() {
        let subset = dest
            .subset
            .as_ref()
            .map(|s| format!(" in subset {s}"))
            .unwrap_or_default();
        return Err(NoEndpoint::Empty {
            host: dest.host.clone(),
            subset,
        });
    }
    // The ServiceEntry endpoints' and WorkloadEntries' `weight`, when they differ.
    let weights = || {
        (0..count)
            .map(member)
            .map(|i| &cluster.endpoints[i])
            .filter(|e| e.ip.is_some() && e.serves(port))
            .map(|e| e.weight.max(1))
    };
    let first = weights().next();
    if cluster.weighted && weights().any(|w| Some(w) != first) {
        policy.weights = Some(weights().collect());
    }
    Ok((addrs, policy))
}

/// The traffic-policy settings that apply to one destination.
#[derive(Clone, Debug, Default)]
pub struct ClusterPolicy<'s> {
    /// Identifies the endpoint set (host, subset, port) for per-cluster state.
    pub key: String,
    /// The service port the destination is: the route's, else the service's only port, else
    /// the port dialled (Istio's cluster name carries it).
    pub port: u16,
    /// The protocol the service declares on the destination port, when it declares one.
    pub protocol: Option<Detected>,
    /// Each endpoint's locality, in the order of the endpoints.
    pub localities: Vec<Option<&'s str>>,
    /// Each endpoint's labels, in the order of the endpoints, when `failoverPriority` or
    /// `PreferSameNode` reads them (else empty).
    pub labels: Vec<&'s BTreeMap<String, String>>,
    /// The service's `trafficDistribution`.
    pub distribution: Option<TrafficDistribution>,
    /// Each endpoint's `weight`, in the order of the endpoints; `None` when they are all equal
    /// (the common case, which allocates nothing).
    pub weights: Option<Vec<u32>>,
    pub lb: Option<&'s LoadBalancer>,
    pub outlier: Option<&'s OutlierDetection>,
    pub pool: Option<&'s ConnectionPool>,
    pub tls: Option<&'s ClientTls>,
    /// `retryBudget`, the subset's or else the rule's (it has no port-level form).
    pub retry_budget: Option<&'s RetryBudget>,
    /// `proxyProtocol`, the subset's or else the rule's (it has no port-level form either).
    pub proxy_protocol: Option<&'s ProxyProtocol>,
    /// `tunnel`: a named subset's own (the rule's does not apply to it), else the rule's, as
    /// Istio's tunneling config reads it.
    pub tunnel: Option<&'s TunnelSettings>,
}

impl<'s> ClusterPolicy<'s> {
    /// Whether the upstream request goes as HTTP/2, as Istio decides it: the client's protocol
    /// with `useClientProtocol` or where the port declares none (detected by sniffing); HTTP/2
    /// on an `HTTP2` or `GRPC` port; HTTP/1.1 on an `HTTP` port, unless `h2UpgradePolicy:
    /// UPGRADE` asks for HTTP/2.
    pub fn upstream_http2(&self, client_http2: bool) -> bool {
        let http = self.pool.and_then(|p| p.http.as_ref());
        if http.and_then(|h| h.use_client_protocol) == Some(true) {
            return client_http2;
        }
        match self.protocol {
            Some(Detected::Http2) => true,
            Some(Detected::Http1) => {
                http.and_then(|h| h.h2_upgrade_policy.as_deref()) == Some("UPGRADE")
            }
            _ => client_http2,
        }
    }

    /// The PROXY protocol header that new upstream connections of the downstream connection
    /// from `source` to `destination` open with, under `proxyProtocol`.
    pub fn proxy_header(
        &self,
        source: SocketAddr,
        destination: SocketAddr,
    ) -> Option<super::pool::proxy_protocol::ProxyHeader> {
        self.proxy_protocol
            .map(|p| super::pool::proxy_protocol::ProxyHeader {
                version: super::pool::proxy_protocol::Version::from_spec(p),
                source,
                destination,
            })
    }

    /// The settings of `cluster` (for `host`) that apply to `subset` on `port`.
    fn of(
        cluster: &'s Cluster,
        host: &str,
        subset: Option<&str>,
        port: u16,
        protocol: Option<Detected>,
        localities: Vec<Option<&'s str>>,
    ) -> Self {
        // A setting that port-level entries, subsets and the rule may each give.
        macro_rules! level {
            ($field:ident) => {
                setting(
                    cluster,
                    subset,
                    port,
                    |p| p.$field.as_ref(),
                    |p| p.$field.as_ref(),
                )
            };
        }
        // A setting that only subsets and the rule give.
        macro_rules! rule_level {
            ($field:ident) => {
                subset
                    .and_then(|s| cluster.subset_policies.get(s))
                    .and_then(|p| p.$field.as_ref())
                    .or_else(|| (cluster.traffic_policy.as_ref()).and_then(|p| p.$field.as_ref()))
            };
        }
        ClusterPolicy {
            key: cluster_key(host, subset.unwrap_or(""), port),
            port,
            protocol,
            localities,
            labels: Vec::new(),
            distribution: cluster.traffic_distribution,
            weights: None,
            lb: level!(load_balancer),
            outlier: level!(outlier_detection),
            pool: level!(connection_pool),
            tls: level!(tls),
            retry_budget: rule_level!(retry_budget),
            proxy_protocol: rule_level!(proxy_protocol),
            tunnel: match subset {
                Some(s) => (cluster.subset_policies.get(s)).and_then(|p| p.tunnel.as_ref()),
                None => (cluster.traffic_policy.as_ref()).and_then(|p| p.tunnel.as_ref()),
            },
        }
    }

    /// A destination no ServiceEntry or DestinationRule describes.
    pub fn unconfigured(host: &str, port: u16) -> Self {
        ClusterPolicy {
            key: cluster_key(host, "", port),
            port,
            ..ClusterPolicy::default()
        }
    }
}

/// `host|subset|port`, sized once: built for every request.
fn cluster_key(host: &str, subset: &str, port: u16) -> String {
    let mut digits = itoa::Buffer::new();
    let port = digits.format(port);
    let mut key = String::with_capacity(host.len() + subset.len() + port.len() + 2);
    key.push_str(host);
    key.push('|');
    key.push_str(subset);
    key.push('|');
    key.push_str(port);
    key
}

/// The host and port of the cluster keyed `key` ([`cluster_key`]); `None` for another key
/// (the tunnel's inbound side pools its workload's connections as `inbound|ADDR`).
pub fn cluster_host_port(key: &str) -> Option<(&str, u16)> {
    let (host, rest) = key.split_once('|')?;
    let (_, port) = rest.rsplit_once('|')?;
    Some((host, port.parse().ok()?))
}

/// Whether the cluster keyed `key` ([`cluster_key`]) is of a host one of `patterns` covers.
pub fn cluster_of_hosts(key: &str, patterns: &[String]) -> bool {
    let host = key.split('|').next().unwrap_or(key);
    (patterns.iter()).any(|p| crate::policy::hosts::covers(p, host))
}

/// A setting as Istio merges a DestinationRule's levels for a port: the subset's
/// `portLevelSettings` entry for the port, when there is one, replaces everything (a field it
/// leaves out takes the default, not the levels above); else the subset's field, else the
/// rule's, where the rule's entry for the port likewise replaces the rule's fields.
fn setting<'s, T>(
    cluster: &'s Cluster,
    subset: Option<&str>,
    port: u16,
    of_port: impl Fn(&'s PortTrafficPolicy) -> Option<&'s T>,
    of_policy: impl Fn(&'s TrafficPolicy) -> Option<&'s T>,
) -> Option<&'s T> {
    let port_entry = |p: &'s TrafficPolicy| {
        p.port_level_settings
            .iter()
            .find(|s| s.port.as_ref().is_some_and(|sel| sel.number == port))
    };
    // A level's value, and whether it replaces the levels above (a port entry matched).
    let level = |p: &'s TrafficPolicy| match port_entry(p) {
        Some(entry) => (of_port(entry), true),
        None => (of_policy(p), false),
    };
    let rule = cluster.traffic_policy.as_ref().and_then(|p| level(p).0);
    match subset
        .and_then(|s| cluster.subset_policies.get(s))
        .map(level)
    {
        Some((own, true)) => own,
        Some((own, false)) => own.or(rule),
        None => rule,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::load_str;

    fn location(r: HttpRedirect, authority: &str, path: &str, query: Option<&str>) -> String {
        let labels = BTreeMap::new();
        let view = RequestView {
            method: "GET",
            path,
            query,
            authority,
            scheme: "http",
            port: 8080,
            header: &|_| None,
            source_labels: &labels,
            source_namespace: None,
        };
        redirect_location(&r, &view)
    }

    #[test]
    fn a_redirect_keeps_the_scheme_the_client_was_forwarded_with() {
        let labels = BTreeMap::new();
        let forwarded = |name: &str| (name == "x-forwarded-proto").then(|| "https".into());
        let view = RequestView {
            method: "GET",
            path: "/old",
            query: None,
            authority: "web:443",
            scheme: "http",
            port: 8080,
            header: &forwarded,
            source_labels: &labels,
            source_namespace: None,
        };
        let to = |uri: &str| HttpRedirect {
            uri: Some(uri.into()),
            ..HttpRedirect::default()
        };
        assert_eq!(redirect_location(&to("/new"), &view), "https://web:443/new");
        // To http, the https default port goes.
        let plain = HttpRedirect {
            scheme: Some("http".into()),
            ..HttpRedirect::default()
        };
        assert_eq!(redirect_location(&plain, &view), "http://web/old");
    }

    #[test]
    fn a_redirect_keeps_the_query_unless_its_uri_has_one() {
        let to = |uri: &str| HttpRedirect {
            uri: Some(uri.into()),
            ..HttpRedirect::default()
        };
        assert_eq!(
            location(to("/new"), "web", "/old", Some("a=b")),
            "http://web/new?a=b"
        );
        assert_eq!(
            location(to("/new?c=d"), "web", "/old", Some("a=b")),
            "http://web/new?c=d"
        );
        assert_eq!(location(to("/new"), "web", "/old", None), "http://web/new");
        assert_eq!(
            location(HttpRedirect::default(), "web:8080", "/p", Some("x=1")),
            "http://web:8080/p?x=1"
        );
    }

    #[test]
    fn a_redirect_sets_scheme_authority_and_port_as_envoy() {
        let https =
            |authority: Option<&str>, port: Option<u16>, derive: Option<&str>| HttpRedirect {
                scheme: Some("https".into()),
                authority: authority.map(str::to_string),
                port,
                derive_port: derive.map(str::to_string),
                ..HttpRedirect::default()
            };
        // A change of scheme drops the old scheme's default port only.
        assert_eq!(
            location(https(None, None, None), "web:80", "/p", None),
            "https://web/p"
        );
        assert_eq!(
            location(https(None, None, None), "web:8080", "/p", None),
            "https://web:8080/p"
        );
        assert_eq!(
            location(https(Some("secure.example"), None, None), "web", "/p", None),
            "https://secure.example/p"
        );
        assert_eq!(
            location(https(None, Some(8443), None), "[::1]:80", "/p", None),
            "https://[::1]:8443/p"
        );
        assert_eq!(
            location(
                https(None, None, Some("FROM_REQUEST_PORT")),
                "web",
                "/p",
                None
            ),
            "https://web:8080/p"
        );
        assert_eq!(
            location(
                https(None, None, Some("FROM_PROTOCOL_DEFAULT")),
                "web:80",
                "/p",
                None
            ),
            "https://web/p"
        );
    }

    #[test]
    fn an_exact_name_wins_over_wildcards_and_star_whichever_form_the_host_takes() {
        let vs = |name: &str, host: &str, status: u16| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  hosts: [\"{host}\"]\n  http:\n  - directResponse: {{status: {status}}}\n---\n"
            )
        };
        let se = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: shop, namespace: default}\nspec:\n  hosts: [shop.example.com, plain.default.svc.cluster.local]\n  addresses: [10.96.0.9]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  endpoints: [{address: 10.0.0.1}]\n";
        let yaml = format!(
            "{}{}{}{se}",
            vs("star", "*", 418),
            vs("reviews", "reviews", 200),
            vs("wild", "*.example.com", 202),
        );
        let snap = Snapshot::of(load_str("t.yaml".as_ref(), &yaml).expect("valid"));
        let labels = BTreeMap::new();
        let status = |authority: &str, dst: &str| {
            let dst: SocketAddr = dst.parse().unwrap();
            let candidates = host_candidates(authority, "default", dst, &snap);
            let view = RequestView {
                method: "GET",
                path: "/",
                query: None,
                authority,
                scheme: "http",
                port: dst.port(),
                header: &|_| None,
                source_labels: &labels,
                source_namespace: None,
            };
            match decide(&snap, &candidates, &view) {
                Decision::Direct { status, .. } => status,
                Decision::Passthrough => 0,
                _ => 1,
            }
        };
        let elsewhere = "10.1.1.1:80";
        assert_eq!(
            status("reviews", elsewhere),
            200,
            "the short name's exact host"
        );
        assert_eq!(status("reviews.default:9080", elsewhere), 200);
        assert_eq!(
            status("shop.example.com", elsewhere),
            202,
            "covered by *.example.com"
        );
        assert_eq!(status("a.b.example.com", elsewhere), 202);
        assert_eq!(status("other.org", elsewhere), 418, "only * covers it");
        assert_eq!(
            status("10.96.0.9", "10.96.0.9:80"),
            202,
            "the VIP's service"
        );
        assert_eq!(
            status("plain", "10.96.0.9:80"),
            418,
            "a service no narrower VirtualService covers takes *"
        );
        assert_eq!(
            status("other.org", "10.96.0.9:80"),
            418,
            "the Host decides before the VIP dialled"
        );
    }

    #[test]
    fn a_port_level_entry_replaces_the_levels_above_as_in_istio() {
        let yaml = r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: default}
spec:
  host: api
  trafficPolicy:
    loadBalancer: {simple: RANDOM}
    outlierDetection: {consecutive5xxErrors: 7}
    portLevelSettings:
    - port: {number: 8080}
      connectionPool: {tcp: {maxConnections: 5}}
  subsets:
  - name: v1
    trafficPolicy:
      loadBalancer: {simple: ROUND_ROBIN}
  - name: v2
    trafficPolicy:
      loadBalancer: {simple: ROUND_ROBIN}
      portLevelSettings:
      - port: {number: 9090}
        outlierDetection: {consecutive5xxErrors: 2}
"#;
        let snap = Snapshot::of(load_str("t.yaml".as_ref(), yaml).expect("valid"));
        let c = &snap.compiled.clusters["api.default.svc.cluster.local"];
        let policy = |subset, port| ClusterPolicy::of(c, &c.host, subset, port, None, vec![]);
        let lb = |p: &ClusterPolicy<'_>| p.lb.and_then(|l| l.simple.clone());
        let errors = |p: &ClusterPolicy<'_>| p.outlier.and_then(|o| o.consecutive_5xx_errors);
        let rule = policy(None, 80);
        assert_eq!((lb(&rule), errors(&rule)), (Some("RANDOM".into()), Some(7)));
        let port = policy(None, 8080);
        assert_eq!(
            (lb(&port), errors(&port), port.pool.is_some()),
            (None, None, true),
            "the port entry's omitted fields take defaults, not the rule's"
        );
        let v1 = policy(Some("v1"), 80);
        assert_eq!(
            (lb(&v1), errors(&v1)),
            (Some("ROUND_ROBIN".into()), Some(7))
        );
        let v1_port = policy(Some("v1"), 8080);
        assert_eq!(
            (lb(&v1_port), errors(&v1_port), v1_port.pool.is_some()),
            (Some("ROUND_ROBIN".into()), None, true),
            "the subset's field over the rule's port entry"
        );
        let v2_port = policy(Some("v2"), 9090);
        assert_eq!(
            (lb(&v2_port), errors(&v2_port)),
            (None, Some(2)),
            "the subset's port entry replaces everything"
        );
    }

    #[test]
    fn a_tunnel_is_the_named_subsets_own_or_the_rules() {
        let yaml = r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: proxy, namespace: default}
spec:
  host: proxy
  trafficPolicy:
    tunnel: {targetHost: rule.example, targetPort: 443}
  subsets:
  - name: own
    trafficPolicy:
      tunnel: {targetHost: own.example, targetPort: 8443}
  - name: none
    labels: {role: none}
"#;
        let snap = Snapshot::of(load_str("t.yaml".as_ref(), yaml).expect("valid"));
        let c = &snap.compiled.clusters["proxy.default.svc.cluster.local"];
        let target = |subset| {
            ClusterPolicy::of(c, &c.host, subset, 3128, None, vec![])
                .tunnel
                .map(|t| t.target_host.clone())
        };
        assert_eq!(target(None).as_deref(), Some("rule.example"));
        assert_eq!(target(Some("own")).as_deref(), Some("own.example"));
        assert_eq!(target(Some("none")), None, "a subset does not inherit it");
    }

    #[test]
    fn rewrite_uri_replaces_the_matched_prefix_as_envoy_does() {
        let yaml = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: default}
spec:
  hosts: [api]
  http:
  - match: [{uri: {prefix: /old}}]
    rewrite: {uri: /new}
    route: [{destination: {host: api}}]
  - match: [{uri: {exact: /exact}}]
    rewrite: {uri: /replaced}
    route: [{destination: {host: api}}]
  - match: [{headers: {x-v2: {exact: "1"}}}]
    rewrite: {uri: /v2}
    route: [{destination: {host: api}}]
  - rewrite: {uri: /}
    route: [{destination: {host: api}}]
"#;
        let snap = Snapshot::of(load_str("t.yaml".as_ref(), yaml).expect("valid"));
        let labels = BTreeMap::new();
        let rewritten = |path: &str, v2: bool| {
            let dst: SocketAddr = "10.1.1.1:80".parse().unwrap();
            let candidates = host_candidates("api", "default", dst, &snap);
            let header = |n: &str| (v2 && n == "x-v2").then_some("1".into());
            let view = RequestView {
                method: "GET",
                path,
                query: None,
                authority: "api",
                scheme: "http",
                port: 80,
                header: &header,
                source_labels: &labels,
                source_namespace: None,
            };
            let Decision::Forward { route, .. } = decide(&snap, &candidates, &view) else {
                panic!("forwarded");
            };
            let uri = route.spec.rewrite.as_ref().and_then(|r| r.uri.clone());
            rewrite_path(route, &view, &uri.expect("a rewrite"))
        };
        assert_eq!(rewritten("/old/page", false), "/new/page");
        assert_eq!(rewritten("/exact", false), "/replaced");
        assert_eq!(
            rewritten("/foo", true),
            "/v2foo",
            "no uri match: the prefix /"
        );
        assert_eq!(
            rewritten("/foo/bar", false),
            "/foo/bar",
            "uri: / keeps the path"
        );
    }

    #[test]
    fn passthrough_sends_to_the_address_the_client_dialled() {
        let yaml = format!(
            "{POLICIES}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: api-lb, namespace: default}}\nspec:\n  host: api\n  trafficPolicy: {{loadBalancer: {{simple: PASSTHROUGH}}}}\n"
        );
        let snap = Snapshot::of(load_str("t.yaml".as_ref(), &yaml).expect("valid"));
        let dst: SocketAddr = "10.96.0.7:80".parse().unwrap();
        let (addrs, policy) = endpoints(&snap, &dest(None), &[], dst, None).unwrap();
        assert_eq!(addrs, [dst]);
        assert_eq!(policy.localities.len(), 1);
    }

    #[test]
    fn cluster_keys_join_host_subset_and_port() {
        assert_eq!(cluster_key("reviews", "v1", 9080), "reviews|v1|9080");
        assert_eq!(cluster_key("h", "", 0), "h||0");
        assert_eq!(cluster_key("h", "s", 65535), "h|s|65535");
        let back = cluster_host_port;
        assert_eq!(back("reviews|v1|9080"), Some(("reviews", 9080)));
        assert_eq!(back("h||0"), Some(("h", 0)));
        assert_eq!(
            back("inbound|10.0.0.2:8080"),
            None,
            "the tunnel's inbound pool"
        );
        assert_eq!(back("reviews"), None);
    }

    const POLICIES: &str = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.default.svc.cluster.local]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.1, labels: {version: v1}}
  - {address: api-v2.example.internal, labels: {version: v2}}
  - {address: 10.0.0.3, ports: {http: 8080}, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: default}
spec:
  host: api.default.svc.cluster.local
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"#;

    fn snapshot() -> Snapshot {
        Snapshot::of(load_str("t.yaml".as_ref(), POLICIES).expect("valid policies"))
    }

    /// All of `host`, on the port its service has.
    fn to(host: &str) -> Destination {
        Destination {
            host: host.into(),
            subset: None,
            port: None,
            weight: 100,
            headers: None,
        }
    }

    fn dest(subset: Option<&str>) -> Destination {
        Destination {
            subset: subset.map(str::to_string),
            ..to("api.default.svc.cluster.local")
        }
    }

    #[test]
    fn a_destination_without_a_port_takes_the_services_only_port() {
        let snap = snapshot();
        // Dialled on another port (a route or mirror of another service sends it here).
        let dst: SocketAddr = "10.96.0.7:9999".parse().unwrap();
        let (addrs, policy) = endpoints(&snap, &dest(None), &[], dst, None).unwrap();
        let addrs: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        assert_eq!(addrs, ["10.0.0.1:80", "10.0.0.3:8080"]);
        assert_eq!(policy.key, "api.default.svc.cluster.local||80");
    }

    #[test]
    fn a_port_the_service_does_not_declare_has_no_cluster() {
        let snap = snapshot();
        let dst: SocketAddr = "10.96.0.7:80".parse().unwrap();
        let typo = Destination {
            port: Some(9999),
            ..dest(Some("v1"))
        };
        let found = endpoints(&snap, &typo, &[], dst, None);
        assert!(
            matches!(&found, Err(e @ NoEndpoint::NoCluster { port: 9999, .. })
                if e.flag() == crate::proxy::http::ResponseFlags::NO_CLUSTER_FOUND),
            "{:?}",
            found.map(|(a, _)| a)
        );
        let declared = Destination {
            port: Some(80),
            ..dest(Some("v1"))
        };
        assert!(endpoints(&snap, &declared, &[], dst, None).is_ok());
    }

    #[test]
    fn under_registry_only_a_host_no_service_entry_describes_has_no_endpoint() {
        let mut snap = snapshot();
        let dst: SocketAddr = "10.96.0.9:80".parse().unwrap();
        let elsewhere = Destination::service("elsewhere.example", 80);
        let requested = [Cow::Borrowed("elsewhere.example")];
        let (addrs, _) = endpoints(&snap, &elsewhere, &requested, dst, None).unwrap();
        assert_eq!(addrs, [dst], "passed through to the address dialled");
        snap.mesh.registry_only = true;
        let found = endpoints(&snap, &elsewhere, &requested, dst, None);
        assert!(
            matches!(&found, Err(NoEndpoint::NotInRegistry { host }) if host == "elsewhere.example"),
            "{:?}",
            found.map(|(a, _)| a)
        );
        assert!(endpoints(&snap, &dest(None), &[], dst, None).is_ok());
    }

    #[test]
    fn endpoints_of_a_host_and_of_its_subsets() {
        let snap = snapshot();
        let dst: SocketAddr = "10.96.0.1:80".parse().unwrap();
        let addrs = |subset| {
            endpoints(&snap, &dest(subset), &[], dst, None)
                .map(|(a, _)| a.iter().map(|a| a.to_string()).collect::<Vec<_>>())
        };
        // A name is not an address meshd can dial: it is skipped. Ports map by name.
        assert_eq!(addrs(None).unwrap(), ["10.0.0.1:80", "10.0.0.3:8080"]);
        assert_eq!(addrs(Some("v1")).unwrap(), ["10.0.0.1:80"]);
        assert_eq!(addrs(Some("v2")).unwrap(), ["10.0.0.3:8080"]);
        // A subset no rule defines has no cluster, as Istio builds none for it.
        let unknown = endpoints(&snap, &dest(Some("v3")), &[], dst, None).map(|(a, _)| a);
        assert!(
            matches!(&unknown, Err(e @ NoEndpoint::UnknownSubset { .. })
                if e.flag() == crate::proxy::http::ResponseFlags::NO_CLUSTER_FOUND),
            "{unknown:?}"
        );
    }

    #[test]
    fn an_external_host_without_endpoints_keeps_its_destination_rule() {
        let yaml = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: default}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: https, protocol: HTTPS}]
  resolution: DNS
  location: MESH_EXTERNAL
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ext, namespace: default}
spec:
  host: api.example.com
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 3}}
"#;
        let snap = Snapshot::of(load_str("t.yaml".as_ref(), yaml).expect("valid policies"));
        let d = to("api.example.com");
        let dst: SocketAddr = "203.0.113.7:443".parse().unwrap();
        let (addrs, policy) = endpoints(&snap, &d, &[Cow::Borrowed("api.example.com")], dst, None)
            .expect("the client's own destination");
        assert_eq!(addrs, [dst]);
        let max = policy
            .pool
            .and_then(|p| p.tcp.as_ref())
            .and_then(|t| t.max_connections);
        assert_eq!(max, Some(3), "the DestinationRule applies");
    }

    #[test]
    fn a_subset_of_a_host_only_a_destination_rule_names_has_no_cluster() {
        let yaml = r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: shop, namespace: default}
spec:
  host: shop.example.com
  subsets: [{name: v3, labels: {version: v3}}]
"#;
        let snap = Snapshot::of(load_str("t.yaml".as_ref(), yaml).expect("valid policies"));
        let d = Destination {
            subset: Some("v3".into()),
            ..to("shop.example.com")
        };
        let dst: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let found = endpoints(&snap, &d, &[Cow::Borrowed("shop.example.com")], dst, None);
        assert!(
            matches!(&found, Err(e @ NoEndpoint::Unregistered { .. })
                if e.flag() == crate::proxy::http::ResponseFlags::NO_CLUSTER_FOUND),
            "{:?}",
            found.map(|(a, _)| a)
        );
        // The host itself, without a subset, still goes where its client dialled.
        let plain = to("shop.example.com");
        let (addrs, _) = endpoints(
            &snap,
            &plain,
            &[Cow::Borrowed("shop.example.com")],
            dst,
            None,
        )
        .expect("the client's own destination");
        assert_eq!(addrs, [dst]);
    }

    #[test]
    fn a_static_service_without_endpoints_has_no_healthy_upstream() {
        let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: empty, namespace: default}
spec:
  hosts: [empty.example]
  addresses: [10.96.0.9]
  ports: [{number: 6000, name: tcp, protocol: TCP}]
  resolution: STATIC
  workloadSelector: {labels: {app: nobody}}
"#;
        let snap = Snapshot::of(load_str("t.yaml".as_ref(), yaml).expect("valid policies"));
        let d = to("empty.example");
        let dst: SocketAddr = "10.96.0.9:6000".parse().unwrap();
        let found = endpoints(&snap, &d, &[Cow::Borrowed("empty.example")], dst, None);
        assert!(
            matches!(found, Err(NoEndpoint::Empty { .. })),
            "{:?}",
            found.map(|f| f.0)
        );
    }

    #[test]
    fn a_dns_service_behind_a_vip_whose_host_does_not_resolve_has_no_healthy_upstream() {
        let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: default}
spec:
  hosts: [db.example]
  addresses: [10.96.0.10]
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  resolution: DNS
"#;
        let set = load_str("t.yaml".as_ref(), yaml).expect("valid policies");
        let mut snap = Snapshot::of(set.clone());
        let d = to("db.example");
        let dst: SocketAddr = "10.96.0.10:5432".parse().unwrap();
        let unresolved = [("db.example".to_string(), Vec::new())].into();
        snap.compiled = crate::config::compile_resolved(&set, unresolved);
        let found = endpoints(&snap, &d, &[], dst, None);
        assert!(
            matches!(found, Err(NoEndpoint::Empty { .. })),
            "never the VIP: {:?}",
            found.map(|f| f.0)
        );
        let resolved = [("db.example".to_string(), vec!["127.0.0.5".parse().unwrap()])].into();
        snap.compiled = crate::config::compile_resolved(&set, resolved);
        let (addrs, _) = endpoints(&snap, &d, &[], dst, None).expect("resolved");
        assert_eq!(addrs, ["127.0.0.5:5432".parse::<SocketAddr>().unwrap()]);
    }

    #[test]
    fn a_wildcard_destination_goes_where_the_client_dialled() {
        let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: default}
spec:
  hosts: ["*.example.com"]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: NONE
  location: MESH_EXTERNAL
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ext, namespace: default}
spec:
  hosts: ["*.example.com"]
  http:
  - timeout: 2s
    route: [{destination: {host: "*.example.com"}}]
"#;
        let snap = Snapshot::of(load_str("t.yaml".as_ref(), yaml).expect("valid policies"));
        let d = to("*.example.com");
        let dst: SocketAddr = "203.0.113.7:80".parse().unwrap();
        let (addrs, _) = endpoints(&snap, &d, &[Cow::Borrowed("api.example.com")], dst, None)
            .expect("the client's own destination");
        assert_eq!(addrs, [dst]);
        // A host the wildcard does not cover has no endpoint there.
        assert!(endpoints(&snap, &d, &[Cow::Borrowed("example.org")], dst, None).is_err());
    }

    #[test]
    fn a_target_port_applies_to_endpoints_that_do_not_map_the_port() {
        let yaml = POLICIES.replace(
            "ports: [{number: 80, name: http, protocol: HTTP}]",
            "ports: [{number: 80, name: http, protocol: HTTP, targetPort: 9090}]",
        );
        let snap = Snapshot::of(load_str("t.yaml".as_ref(), &yaml).expect("valid policies"));
        let dst: SocketAddr = "10.96.0.1:80".parse().unwrap();
        let (addrs, _) = endpoints(&snap, &dest(None), &[], dst, None).unwrap();
        let addrs: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        assert_eq!(addrs, ["10.0.0.1:9090", "10.0.0.3:8080"]);
    }

    #[test]
    fn the_upstream_protocol_as_istio_picks_it() {
        use crate::policy::model::HttpPool;
        let pool = |http: HttpPool| ConnectionPool {
            tcp: None,
            http: Some(http),
        };
        let upgrade = pool(HttpPool {
            h2_upgrade_policy: Some("UPGRADE".into()),
            ..HttpPool::default()
        });
        let no_upgrade = pool(HttpPool {
            h2_upgrade_policy: Some("DO_NOT_UPGRADE".into()),
            ..HttpPool::default()
        });
        let client = pool(HttpPool {
            use_client_protocol: Some(true),
            h2_upgrade_policy: Some("UPGRADE".into()),
            ..HttpPool::default()
        });
        let at = |protocol, pool| ClusterPolicy {
            protocol,
            pool,
            ..ClusterPolicy::default()
        };
        // (HTTP/1.1 client, HTTP/2 client) → upstream HTTP/2?
        let both = |p: ClusterPolicy| (p.upstream_http2(false), p.upstream_http2(true));
        assert_eq!(both(at(Some(Detected::Http1), None)), (false, false));
        assert_eq!(both(at(Some(Detected::Http2), None)), (true, true));
        assert_eq!(both(at(None, None)), (false, true), "undeclared: client's");
        assert_eq!(
            both(at(Some(Detected::Http1), Some(&upgrade))),
            (true, true)
        );
        assert_eq!(
            both(at(Some(Detected::Http1), Some(&no_upgrade))),
            (false, false)
        );
        assert_eq!(
            both(at(Some(Detected::Http2), Some(&client))),
            (false, true)
        );
        assert_eq!(
            both(at(Some(Detected::Http1), Some(&client))),
            (false, true)
        );
    }
}
