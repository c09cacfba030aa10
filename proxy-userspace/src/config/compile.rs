//! Compiling a validated policy set into the runtime tables the data path reads: the route
//! table per host, the clusters per destination host (endpoints, subsets and traffic policy),
//! and the security and rate-limit policies that select each workload.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use foldhash::{HashMap, HashMapExt};

use serde::Serialize;

use super::dns::Resolved;
use crate::policy::delegate::{self, Expanded};
use crate::{
    policy::{
        PolicySet, age,
        hosts::{best_wildcards, covers, fqdn},
        model::{self, StringMatch, TrafficPolicy},
    },
    routes::{
        Client, Destination, HostRoutes, HttpRoute, RegexRewrite, RequestMatch, RouteTable,
        StringMatcher, matcher::PresenceMatcher,
    },
    security::authz::matchers::IpBlock,
};

/// One endpoint of a service: where to connect, and the labels subsets select by.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceEndpoint {
    pub address: String,
    /// `address` parsed once here, not on every request; `None` for a name (DNS endpoints).
    #[serde(skip)]
    pub ip: Option<IpAddr>,
    /// Port name → target port, from the endpoint (or the WorkloadEntry it came from).
    pub ports: BTreeMap<String, u16>,
    pub labels: BTreeMap<String, String>,
    pub weight: u32,
    pub locality: Option<String>,
    /// `namespace/name` of the WorkloadEntry behind this endpoint, if any.
    pub workload: Option<String>,
    /// Where ServiceEntries of one namespace declare its host together, the port numbers of
    /// the entry this endpoint belongs to: it serves only those, as each entry's endpoints are
    /// instances of its own ports in Istio. Empty: every port of the service.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub entry_ports: BTreeSet<u16>,
}

impl ServiceEndpoint {
    /// Whether the endpoint serves the service port `port` (see `entry_ports`).
    pub fn serves(&self, port: u16) -> bool {
        self.entry_ports.is_empty() || self.entry_ports.contains(&port)
    }
}

/// Everything needed to send to one destination host.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Cluster {
    pub host: String,
    /// Service ports: number → (name, protocol).
    pub ports: BTreeMap<u16, (String, Option<String>)>,
    /// Service ports whose `targetPort` is set: number → the endpoints' port (unless an
    /// endpoint maps the port's name itself).
    pub target_ports: BTreeMap<u16, u16>,
    pub endpoints: Vec<ServiceEndpoint>,
    /// A DNS ServiceEntry without endpoints, whose host meshd resolves: by each port it
    /// declares, the addresses its host resolved to, where a route sends other hosts' requests
    /// to it (see `dns::names`); the first only with `DNS_ROUND_ROBIN`. None resolved (the name
    /// does not resolve): no healthy upstream, as Envoy's empty DNS cluster. A port not here:
    /// meshd does not resolve the host for it. Per port, as entries of one host keep their
    /// endpoints to their own ports: the first entry to declare a port keeps it.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub host_addresses: BTreeMap<u16, Vec<IpAddr>>,
    /// A ServiceEntry of the host has `resolution: STATIC`: its endpoints are the ones it
    /// names, so none is no healthy upstream (Envoy's empty EDS cluster), never the address
    /// the client dialled...
    pub static_endpoints: bool,
    /// ...except on the ports another entry of the host, one that is not STATIC, declares.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub unstatic_ports: BTreeSet<u16>,
    /// `trafficDistribution` of the (first) ServiceEntry of the host.
    pub traffic_distribution: Option<model::TrafficDistribution>,
    /// Whether the endpoints' weights differ (else balancing ignores them, at no cost).
    pub weighted: bool,
    /// Subset name → indices into `endpoints` whose labels match the subset.
    pub subsets: BTreeMap<String, Vec<usize>>,
    /// The DestinationRule's traffic policy, and each subset's own.
    pub traffic_policy: Option<TrafficPolicy>,
    pub subset_policies: BTreeMap<String, TrafficPolicy>,
    /// `namespace/name` of the DestinationRule applied, if any.
    pub destination_rule: Option<String>,
    /// DestinationRules with a `workloadSelector`, each with the cluster as it alone shapes it
    /// for the clients it selects.
    pub by_client: Vec<ClientRule>,
}

/// A DestinationRule with a `workloadSelector`: for the workloads of its namespace that carry
/// its labels it replaces the rules without a selector, as in Istio.
#[derive(Clone, Debug, Serialize)]
pub struct ClientRule {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub cluster: Arc<Cluster>,
}

/// Policies that select one workload (by its WorkloadEntry labels).
#[derive(Clone, Debug, Default, Serialize)]
pub struct WorkloadPolicies {
    pub labels: BTreeMap<String, String>,
    pub peer_authentications: Vec<String>,
    pub authorization_policies: Vec<String>,
    /// The effective PeerAuthentication mode on the workload's ports, and the ports its
    /// `portLevelMtls` sets otherwise.
    pub mtls: Option<crate::security::EffectiveMtls>,
    pub mtls_ports: BTreeMap<u16, crate::security::EffectiveMtls>,
}

/// The compiled form of a policy set.
#[derive(Clone, Debug, Default)]
pub struct Compiled {
    pub routes: RouteTable,
    /// VirtualService `tcp` routes, by host.
    pub tcp_routes: crate::routes::l4::TcpRoutes,
    /// The endpoint names in use and what they resolved to.
    pub dns: Resolved,
    pub clusters: HashMap<String, Arc<Cluster>>,
    /// The ports some ServiceEntry declares `TLS` or `HTTPS`.
    pub tls_ports: std::collections::HashSet<u16>,
    /// The wildcard hosts (`*.example.com`) of the clusters, most specific first.
    pub wildcard_hosts: Vec<String>,
    /// Keyed by `namespace/name` of the WorkloadEntry.
    pub workloads: BTreeMap<String, WorkloadPolicies>,
    /// ServiceEntry `addresses` (VIPs) with each port the entry declares → the service's first
    /// host, so a connection to a VIP finds its routes even when the Host header is an IP. As in
    /// Istio, a VIP names the service only on its declared ports: another port of the same
    /// address is not the service's.
    pub vips: HashMap<std::net::SocketAddr, String>,
    /// ServiceEntry `addresses` that are ranges (`192.168.10.0/24`), with each declared port
    /// → the service's first host, the narrowest range first. A single address written as
    /// `/32` or `/128` is in `vips`.
    pub vip_ranges: Vec<(IpBlock, u16, String)>,
    /// Who stands behind each endpoint, and which meshd node fronts it.
    pub endpoints: super::endpoints::Endpoints,
    /// AuthorizationPolicies, compiled for evaluation.
    pub authorizer: Arc<crate::security::authz::Authorizer>,
    /// PeerAuthentications, compiled for resolution per workload and port.
    pub mtls: Arc<crate::security::MtlsPolicies>,
    /// Endpoint address (on the port it receives a service port on) → the service's host and
    /// that service port, the first host in name order when several serve it: see
    /// [`Compiled::service_at`].
    pub services_at: HashMap<SocketAddr, (String, u16)>,
    /// Port → the service that takes every connection to it: a ServiceEntry without
    /// `addresses` that declares the port opaque TCP, as Istio's sidecars give it a listener on
    /// 0.0.0.0 and that port (the oldest entry's when several do). See
    /// [`Compiled::port_wide_host`].
    pub port_wide: HashMap<u16, String>,
}

fn matcher(m: &StringMatch) -> Option<StringMatcher> {
    if let Some(e) = &m.exact {
        Some(StringMatcher::Exact(e.clone()))
    } else if let Some(p) = &m.prefix {
        Some(StringMatcher::Prefix(p.clone()))
    } else {
        // Validation compiled every regex already; a failure here cannot happen.
        m.regex
            .as_deref()
            .and_then(|r| StringMatcher::regex(r).ok())
    }
}

/// Istio: a header StringMatch with no value checks presence only.
fn presence(m: &StringMatch) -> PresenceMatcher {
    matcher(m).map_or(PresenceMatcher::Present(true), PresenceMatcher::Value)
}

fn request_match(m: &model::HttpMatchRequest) -> RequestMatch {
    let pairs = |map: &BTreeMap<String, StringMatch>, lower: bool| {
        map.iter()
            .map(|(k, v)| {
                (
                    if lower {
                        k.to_ascii_lowercase()
                    } else {
                        k.clone()
                    },
                    presence(v),
                )
            })
            .collect()
    };
    RequestMatch {
        uri: m.uri.as_ref().and_then(matcher),
        scheme: m.scheme.as_ref().and_then(matcher),
        method: m.method.as_ref().and_then(matcher),
        authority: m.authority.as_ref().and_then(matcher),
        headers: pairs(&m.headers, true),
        without_headers: pairs(&m.without_headers, true),
        query_params: pairs(&m.query_params, false),
        port: m.port,
        source_labels: m.source_labels.clone(),
        source_namespace: m.source_namespace.clone(),
        ignore_uri_case: m.ignore_uri_case,
    }
}

/// A route as meshd applies it: with its matches that bind to the mesh, or `None` when every
/// match names only other gateways.
fn http_route(
    Expanded {
        namespace,
        origin,
        route: r,
    }: Expanded,
) -> Option<HttpRoute> {
    let matches = model::mesh_matches(&r.matches)?;
    let ns = &namespace;
    let only = r.route.len() == 1;
    let stat_prefixes = match matches.iter().any(|m| m.stat_prefix.is_some()) {
        true => (matches.iter())
            .map(|m| m.stat_prefix.as_deref().map(Arc::from))
            .collect(),
        false => Vec::new(),
    };
    Some(HttpRoute {
        origin,
        stat_prefixes,
        matches: matches.into_iter().map(request_match).collect(),
        destinations: r
            .route
            .iter()
            .map(|d| Destination {
                headers: d.headers.clone(),
                ..Destination::of(&d.destination, d.weight, only, ns)
            })
            .collect(),
        retry: crate::proxy::http::retry::RetryPolicy::from_spec(r.retries.as_ref()),
        cors: r.cors_policy.as_ref().map(cors_rules),
        // Validation compiled the regex already.
        regex_rewrite: r
            .rewrite
            .as_ref()
            .and_then(|w| w.uri_regex_rewrite.as_ref())
            .and_then(|x| RegexRewrite::new(&x.pattern, &x.rewrite).ok()),
        spec: r.clone(),
    })
}

/// A `corsPolicy` compiled: `allowOrigins`, or else the deprecated `allowOrigin` (exact).
fn cors_rules(c: &model::CorsPolicy) -> Arc<crate::proxy::http::cors::CorsRules> {
    let origins = if c.allow_origins.is_empty() {
        c.allow_origin
            .iter()
            .map(|o| StringMatcher::Exact(o.clone()))
            .collect()
    } else {
        c.allow_origins.iter().filter_map(matcher).collect()
    };
    Arc::new(crate::proxy::http::cors::CorsRules::new(c, origins))
}

fn labels_match(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The WorkloadEntries a ServiceEntry's `workloadSelector` selects (in its namespace).
pub(super) fn selected_workloads<'s>(
    set: &'s PolicySet,
    se: &'s model::ServiceEntry,
) -> impl Iterator<Item = &'s model::WorkloadEntry> {
    let sel = se.spec.workload_selector.as_ref();
    set.workload_entries.iter().map(|w| &**w).filter(move |w| {
        sel.is_some_and(|s| {
            w.metadata.namespace == se.metadata.namespace && labels_match(&s.labels, &w.spec.labels)
        })
    })
}

/// HTTP routes by host. Where two VirtualServices name one host, the oldest applies, as in
/// Istio (by `creationTimestamp`, then by name, then by namespace; not by file).
fn compile_routes(set: &PolicySet) -> RouteTable {
    let mut table = RouteTable::default();
    for vs in age::oldest_first(&set.virtual_services)
        .into_iter()
        .filter(|v| v.spec.applies_to_mesh())
    {
        if vs.spec.hosts.is_empty() {
            // A delegate: its routes apply through the roots that delegate to it.
            continue;
        }
        if vs.spec.http.is_empty() {
            // Only `tcp` or `tls` routes: as in Istio, it makes no HTTP virtual host, so the
            // services it names keep their default HTTP routes (not a 404 for every request).
            continue;
        }
        let routes: Arc<[HttpRoute]> = delegate::expand(set, vs)
            .into_iter()
            .filter_map(http_route)
            .collect();
        for host in &vs.spec.hosts {
            let host = fqdn(host, &vs.metadata.namespace);
            if !table.insert(&host, HostRoutes::new(routes.clone())) {
                // Validation's analysis warns of it, with the file and line.
                tracing::debug!(host, virtual_service = %vs.id(), "host already routed by an older VirtualService; ignored here");
            }
        }
    }
    table
}

/// One endpoint per address: an IP as written, or the addresses its name resolved to that are
/// in use. A name with no addresses stays, and routing skips it.
fn by_address(
    e: ServiceEndpoint,
    resolution: Option<&str>,
    dns: &Resolved,
) -> Vec<ServiceEndpoint> {
    let addrs = match (e.ip, dns.get(&e.address)) {
        (None, Some(addrs)) if !addrs.is_empty() && super::dns::resolves(resolution) => addrs,
        _ => return vec![e],
    };
    in_use(addrs, resolution)
        .iter()
        .map(|ip| ServiceEndpoint {
            ip: Some(*ip),
            ..e.clone()
        })
        .collect()
}

/// The addresses of a name that are used: every one with `resolution: DNS`, the first with
/// `DNS_ROUND_ROBIN`.
fn in_use<'a>(addrs: &'a [IpAddr], resolution: Option<&str>) -> &'a [IpAddr] {
    match resolution {
        Some("DNS_ROUND_ROBIN") => &addrs[..addrs.len().min(1)],
        _ => addrs,
    }
}

fn compile_clusters(set: &PolicySet, dns: &Resolved) -> HashMap<String, Arc<Cluster>> {
    let mut clusters: HashMap<String, Cluster> = HashMap::new();
    // The namespace of each host's (first) ServiceEntry: which DestinationRules its clients
    // see by default.
    let mut service_ns: HashMap<String, &str> = HashMap::new();
    // How many ServiceEntries declare each host: where more than one do, each entry's
    // endpoints serve only its own ports.
    let mut entries_of: HashMap<String, usize> = HashMap::new();
    for se in &set.service_entries {
        let ns = &se.metadata.namespace;
        for host in &se.spec.hosts {
            *entries_of.entry(fqdn(host, ns)).or_default() += 1;
            service_ns.entry(fqdn(host, ns)).or_insert(ns.as_str());
        }
        let resolution = se.spec.resolution.as_deref();
        let mut endpoints: Vec<ServiceEndpoint> = se
            .spec
            .endpoints
            .iter()
            .map(|e| ServiceEndpoint {
                address: e.address.clone(),
                ip: e.address.parse().ok(),
                ports: e.ports.clone(),
                labels: e.labels.clone(),
                weight: e.weight.unwrap_or(1),
                locality: e.locality.clone(),
                workload: None,
                entry_ports: BTreeSet::new(),
            })
            .flat_map(|e| by_address(e, resolution, dns))
            .collect();
        for we in selected_workloads(set, se) {
            let e = ServiceEndpoint {
                address: we.spec.address.clone(),
                ip: we.spec.address.parse().ok(),
                ports: we.spec.ports.clone(),
                labels: we.spec.labels.clone(),
                weight: we.spec.weight.unwrap_or(1),
                locality: we.spec.locality.clone(),
                workload: Some(we.id()),
                entry_ports: BTreeSet::new(),
            };
            endpoints.extend(by_address(e, resolution, dns));
        }
        let ports: BTreeMap<u16, (String, Option<String>)> = se
            .spec
            .ports
            .iter()
            .map(|p| (p.number, (p.name.clone(), p.protocol.clone())))
            .collect();
        for host in &se.spec.hosts {
            let host = fqdn(host, ns);
            let c = clusters.entry(host.clone()).or_insert_with(|| Cluster {
                host,
                ..Default::default()
            });
            // A port two entries declare keeps the first one's name, protocol and
            // `targetPort`.
            for (number, declared) in &ports {
                c.ports.entry(*number).or_insert_with(|| declared.clone());
            }
            for p in &se.spec.ports {
                if let Some(target) = p.target_port {
                    c.target_ports.entry(p.number).or_insert(target);
                }
            }
            let shared = entries_of.get(&c.host).is_some_and(|n| *n > 1);
            let entry_ports: BTreeSet<u16> = match shared {
                true => ports.keys().copied().collect(),
                false => BTreeSet::new(),
            };
            c.endpoints
                .extend(endpoints.iter().map(|e| ServiceEndpoint {
                    entry_ports: entry_ports.clone(),
                    ..e.clone()
                }));
            c.static_endpoints |= resolution == Some("STATIC");
            if resolution != Some("STATIC") {
                c.unstatic_ports.extend(ports.keys());
            }
            c.traffic_distribution = c.traffic_distribution.or(se.traffic_distribution());
            if super::dns::resolves_own_hosts(se)
                && let Some(addrs) = dns.get(&c.host)
            {
                for port in ports.keys() {
                    (c.host_addresses.entry(*port))
                        .or_insert_with(|| in_use(addrs, resolution).to_vec());
                }
            }
        }
    }
    for c in clusters.values_mut() {
        c.weighted = weighted(&c.endpoints);
    }
    // Oldest first, as Istio merges the rules of one host: the oldest rule's traffic policy
    // and subsets come first, whatever files the rules are in.
    let rules: Vec<(String, &model::DestinationRule)> = age::oldest_first(&set.destination_rules)
        .into_iter()
        .map(|dr| (fqdn(&dr.spec.host, &dr.metadata.namespace), &**dr))
        .collect();
    let (selective, rules): (Vec<_>, Vec<_>) = rules
        .into_iter()
        .partition(|(_, dr)| dr.spec.workload_selector.is_some());
    // As Istio looks a rule up for a client: in the client's namespace first, then in the
    // service's, then in the root namespace; rules for one host merge only within one
    // namespace. The cluster itself is what clients see by default (the service's namespace,
    // else the root's); a client of another namespace with rules of its own sees those.
    let mut by_namespace: Vec<(String, ClientRule)> = Vec::new();
    let mut exact: BTreeMap<&str, Vec<&model::DestinationRule>> = BTreeMap::new();
    for (host, dr) in rules.iter().filter(|(h, _)| !h.starts_with('*')) {
        exact.entry(host.as_str()).or_default().push(*dr);
    }
    for (host, drs) in exact {
        let c = clusters.entry(host.to_string()).or_insert_with(|| Cluster {
            host: host.to_string(),
            ..Default::default()
        });
        let Some(&svc_ns) = service_ns.get(host) else {
            // No ServiceEntry says whose the host is: every rule, oldest first.
            drs.iter().for_each(|dr| apply_destination_rule(c, dr));
            continue;
        };
        fn in_ns<'a>(
            drs: &'a [&'a model::DestinationRule],
            ns: &'a str,
        ) -> impl Iterator<Item = &'a &'a model::DestinationRule> {
            drs.iter().filter(move |dr| dr.metadata.namespace == ns)
        }
        let default_ns = [svc_ns, crate::security::DEFAULT_ROOT_NAMESPACE]
            .into_iter()
            .find(|ns| in_ns(&drs, ns).next().is_some());
        let mut others: Vec<&str> = (drs.iter())
            .map(|dr| dr.metadata.namespace.as_str())
            .filter(|ns| Some(*ns) != default_ns)
            .collect();
        others.sort_unstable();
        others.dedup();
        for ns in others {
            let mut shaped = unshaped(c);
            in_ns(&drs, ns).for_each(|dr| apply_destination_rule(&mut shaped, dr));
            let rule = ClientRule {
                namespace: ns.to_string(),
                labels: BTreeMap::new(),
                cluster: Arc::new(shaped),
            };
            by_namespace.push((host.to_string(), rule));
        }
        if let Some(ns) = default_ns {
            in_ns(&drs, ns).for_each(|dr| apply_destination_rule(c, dr));
        }
    }
    // A wildcard host (`*.example.com`, `*.local`) applies to the services it covers that no
    // rule names exactly; the most specific one wins, as in Istio.
    for c in clusters
        .values_mut()
        .filter(|c| c.destination_rule.is_none())
    {
        for dr in best_wildcards(&rules, &c.host) {
            apply_destination_rule(c, dr);
        }
    }
    for (host, dr) in &selective {
        if !host.starts_with('*') {
            clusters.entry(host.clone()).or_insert_with(|| Cluster {
                host: host.clone(),
                ..Default::default()
            });
        }
        let selects = |c: &Cluster| covers(host, &c.host);
        for c in clusters.values_mut().filter(|c| selects(c)) {
            let mut shaped = unshaped(c);
            apply_destination_rule(&mut shaped, dr);
            c.by_client.push(ClientRule {
                namespace: dr.metadata.namespace.clone(),
                labels: (dr.spec.workload_selector.as_ref())
                    .map(|s| s.match_labels.clone())
                    .unwrap_or_default(),
                cluster: Arc::new(shaped),
            });
        }
    }
    // After the rules with a selector, which come first for the workloads they select.
    for (host, rule) in by_namespace {
        if let Some(c) = clusters.get_mut(&host) {
            c.by_client.push(rule);
        }
    }
    clusters
        .into_iter()
        .map(|(k, v)| (k, Arc::new(v)))
        .collect()
}

/// The cluster as no DestinationRule has shaped it: its ports and endpoints.
fn unshaped(c: &Cluster) -> Cluster {
    Cluster {
        host: c.host.clone(),
        ports: c.ports.clone(),
        target_ports: c.target_ports.clone(),
        endpoints: c.endpoints.clone(),
        host_addresses: c.host_addresses.clone(),
        static_endpoints: c.static_endpoints,
        unstatic_ports: c.unstatic_ports.clone(),
        traffic_distribution: c.traffic_distribution,
        weighted: c.weighted,
        ..Default::default()
    }
}

/// Whether the endpoints' `weight`s differ.
fn weighted(endpoints: &[ServiceEndpoint]) -> bool {
    endpoints.windows(2).any(|w| w[0].weight != w[1].weight)
}

/// Applies a DestinationRule to its host's cluster. Rules are applied oldest first, and a
/// younger rule for the same host is merged as Istio merges them: it adds the subsets the older
/// ones do not define, and its traffic policy applies only when theirs left it unset (`meshd
/// analyze` warns about the duplicate).
fn apply_destination_rule(c: &mut Cluster, dr: &model::DestinationRule) {
    if c.destination_rule.is_none() {
        c.destination_rule = Some(dr.id());
    }
    if c.traffic_policy.is_none() {
        c.traffic_policy = dr.spec.traffic_policy.clone();
    }
    for s in &dr.spec.subsets {
        if c.subsets.contains_key(&s.name) {
            continue;
        }
        let members = c
            .endpoints
            .iter()
            .enumerate()
            .filter(|(_, e)| labels_match(&s.labels, &e.labels))
            .map(|(i, _)| i)
            .collect();
        c.subsets.insert(s.name.clone(), members);
        if let Some(p) = &s.traffic_policy {
            c.subset_policies.insert(s.name.clone(), p.clone());
        }
    }
}

fn compile_workloads(set: &PolicySet) -> BTreeMap<String, WorkloadPolicies> {
    let selects = |sel: &Option<model::LabelSelector>, ns: &str, we: &model::WorkloadEntry| {
        // Istio: a policy in the root namespace (istio-system) with no selector is mesh-wide.
        let ns_ok = ns == we.metadata.namespace || ns == "istio-system";
        ns_ok
            && sel
                .as_ref()
                .is_none_or(|s| labels_match(&s.match_labels, &we.spec.labels))
    };
    set.workload_entries
        .iter()
        .map(|we| {
            let p = WorkloadPolicies {
                labels: we.spec.labels.clone(),
                peer_authentications: set
                    .peer_authentications
                    .iter()
                    .filter(|pa| selects(&pa.spec.selector, &pa.metadata.namespace, we))
                    .map(|pa| pa.id())
                    .collect(),
                authorization_policies: set
                    .authorization_policies
                    .iter()
                    .filter(|ap| selects(&ap.spec.selector, &ap.metadata.namespace, we))
                    .map(|ap| ap.id())
                    .collect(),
                mtls: None,
                mtls_ports: BTreeMap::new(),
            };
            (we.id(), p)
        })
        .collect()
}

/// The labels of a client without a WorkloadEntry.
static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

impl Compiled {
    /// The client `workload` (`namespace/name`) as route matches and workload-selected
    /// DestinationRules see it: its WorkloadEntry's labels (none when it has none) and its
    /// namespace.
    pub fn client<'a>(&'a self, workload: Option<&'a str>) -> Client<'a> {
        Client {
            labels: workload
                .and_then(|w| self.workloads.get(w))
                .map_or(&NO_LABELS, |p| &p.labels),
            namespace: workload.and_then(|w| w.split_once('/')).map(|(ns, _)| ns),
        }
    }

    /// The service an endpoint serves: the ServiceEntry host with an endpoint at `addr` that
    /// receives one of the host's ports there (the first in name order when several do), as
    /// Istio's inbound side names the service of a workload's port.
    pub fn service_at(&self, addr: SocketAddr) -> Option<&str> {
        self.services_at.get(&addr).map(|(host, _)| host.as_str())
    }

    /// The service and service port a connection to `dst` reaches: the service whose VIP and
    /// port `dst` is, else the one whose endpoint receives a port of it at `dst` (a client that
    /// dials a workload's own address), as that workload's inbound side knows its port.
    fn service_port_at(&self, dst: SocketAddr) -> Option<(&Cluster, u16)> {
        match self.vip_host(dst) {
            Some(host) => Some((self.clusters.get(host)?, dst.port())),
            None => match self.services_at.get(&dst) {
                Some((host, port)) => Some((self.clusters.get(host)?, *port)),
                None => Some((self.clusters.get(self.port_wide_host(dst)?)?, dst.port())),
            },
        }
    }

    /// The service an opaque connection to `dst` belongs to by its port alone, when no VIP and
    /// no endpoint address says whose it is: a ServiceEntry without `addresses` that declares
    /// the port TCP takes every connection to it, whatever the address dialled, as Istio's
    /// sidecars do (`istioctl analyze`'s IST0134 warns of it, and so does `meshd analyze`).
    pub fn port_wide_host(&self, dst: SocketAddr) -> Option<&str> {
        if self.port_wide.is_empty() || self.services_at.contains_key(&dst) {
            return None;
        }
        self.port_wide.get(&dst.port()).map(String::as_str)
    }

    /// The addresses of `host`'s endpoints for its port `port` (none when the host has no
    /// endpoints here).
    pub fn endpoint_addrs(&self, host: &str, port: u16) -> HashSet<SocketAddr> {
        let Some(c) = self.clusters.get(host) else {
            return HashSet::new();
        };
        (c.endpoints.iter())
            .filter_map(|e| c.endpoint_addr(e, port))
            .collect()
    }

    /// The service whose VIP (or address range) and declared port `dst` is.
    pub fn vip_host(&self, dst: std::net::SocketAddr) -> Option<&str> {
        if let Some(host) = self.vips.get(&dst) {
            return Some(host);
        }
        self.vip_ranges
            .iter()
            .find(|(block, port, _)| *port == dst.port() && block.contains(dst.ip()))
            .map(|(_, _, host)| host.as_str())
    }

    /// The protocol a ServiceEntry declares for the port a connection to `dst` reaches (a VIP
    /// and port, or an endpoint's address and the port it receives the service's port on): its
    /// `protocol`, else Istio's port-name convention (`http-web`, `grpc`, `tcp-db`, ...).
    /// `None`: detect by sniffing.
    pub fn declared_protocol(
        &self,
        dst: std::net::SocketAddr,
    ) -> Option<crate::proxy::sniff::Detected> {
        let (cluster, port) = self.service_port_at(dst)?;
        cluster.port_protocol(port)
    }

    /// The ServiceEntry host a TLS connection to `port` names in its ClientHello (`sni`), when
    /// the entry declares that port `TLS` or `HTTPS`: as Istio chains such a host by its server
    /// name, with or without addresses. An exact host first, else the most specific wildcard.
    pub fn tls_host(&self, sni: &str, port: u16) -> Option<&str> {
        let name = sni.trim_end_matches('.').to_ascii_lowercase();
        let declares = |c: &Cluster| c.declares_tls(port);
        if let Some((host, _)) = (self.clusters.get_key_value(&name)).filter(|(_, c)| declares(c)) {
            return Some(host);
        }
        self.covering_wildcard(&name, declares)
    }

    /// The most specific wildcard cluster covering `host` that `fits`.
    fn covering_wildcard(&self, host: &str, fits: impl Fn(&Cluster) -> bool) -> Option<&str> {
        (self.wildcard_hosts.iter())
            .filter(|w| crate::policy::hosts::covers(w, host))
            .find(|w| self.clusters.get(w.as_str()).is_some_and(|c| fits(c)))
            .map(String::as_str)
    }

    /// The wildcard ServiceEntry host that covers `host` and declares `port`, the most
    /// specific: where Istio's default route for `host` goes (its `*.suffix` virtual host). One
    /// without endpoints (reached at the address the client dialled, under its DestinationRule
    /// and `targetPort`) only when the client dialled no other service's VIP (`at_vip`).
    pub fn wildcard_service(&self, host: &str, port: u16, at_vip: bool) -> Option<&str> {
        self.covering_wildcard(host, |c| {
            (c.has_endpoints_on(port) || !at_vip) && c.ports.contains_key(&port)
        })
    }

    /// Whether some ServiceEntry declares `port` `TLS` or `HTTPS`: a ClientHello to it may name
    /// one of its hosts.
    pub fn tls_port(&self, port: u16) -> bool {
        self.tls_ports.contains(&port)
    }

    /// Whether a ServiceEntry declares the port a connection to `dst` reaches (a VIP, or an
    /// endpoint's address) `TLS` or `HTTPS`.
    pub fn declares_tls_at(&self, dst: std::net::SocketAddr) -> bool {
        (self.service_port_at(dst)).is_some_and(|(c, port)| c.declares_tls(port))
    }
}

impl Cluster {
    /// The cluster as `client` sees it: shaped by the first DestinationRule (oldest first) whose
    /// `workloadSelector` selects it (a workload of the rule's namespace with its labels), else
    /// by the rules without one.
    pub fn for_client(&self, client: Option<&Client<'_>>) -> &Cluster {
        let Some(client) = client.filter(|_| !self.by_client.is_empty()) else {
            return self;
        };
        self.by_client
            .iter()
            .find(|r| {
                client.namespace == Some(r.namespace.as_str())
                    && labels_match(&r.labels, client.labels)
            })
            .map_or(self, |r| &r.cluster)
    }

    /// The protocol the service declares on `port`: the port's `protocol`, else Istio's
    /// port-name convention (`http-web`, `grpc`, `tcp-db`, ...). `None`: undeclared or unknown.
    pub fn port_protocol(&self, port: u16) -> Option<crate::proxy::sniff::Detected> {
        use crate::proxy::sniff::Detected;
        let declared = self.declared(port)?;
        let is = |names: &[&str]| names.iter().any(|n| declared.eq_ignore_ascii_case(n));
        if is(&["HTTP"]) {
            Some(Detected::Http1)
        } else if is(&["HTTP2", "GRPC", "GRPC-WEB"]) {
            Some(Detected::Http2)
        } else if is(&["TCP", "TLS", "HTTPS", "MONGO", "MYSQL", "REDIS"]) {
            Some(Detected::Opaque)
        } else {
            None
        }
    }

    /// The port an endpoint receives a service port's traffic on, as in Istio: the endpoint's
    /// own `ports` entry for the port's name, else the port's `targetPort`, else its number.
    pub fn endpoint_port(&self, ports: &BTreeMap<String, u16>, service_port: u16) -> u16 {
        self.ports
            .get(&service_port)
            .and_then(|(name, _)| ports.get(name).copied())
            .or_else(|| self.target_ports.get(&service_port).copied())
            .unwrap_or(service_port)
    }

    /// Where the endpoint `e` receives the service port's traffic; `None` for an endpoint
    /// named, not addressed (DNS), or one of another ServiceEntry of the host that does not
    /// declare the port.
    pub fn endpoint_addr(&self, e: &ServiceEndpoint, service_port: u16) -> Option<SocketAddr> {
        if !e.serves(service_port) {
            return None;
        }
        Some(SocketAddr::new(
            e.ip?,
            self.endpoint_port(&e.ports, service_port),
        ))
    }

    /// Whether `service_port` has only the endpoints STATIC entries name (none: no healthy
    /// upstream, never the address dialled).
    pub fn static_on(&self, service_port: u16) -> bool {
        self.static_endpoints && !self.unstatic_ports.contains(&service_port)
    }

    /// Whether any endpoint serves `service_port` (named or addressed).
    pub fn has_endpoints_on(&self, service_port: u16) -> bool {
        self.endpoints.iter().any(|e| e.serves(service_port))
    }

    /// The addresses of the service's endpoints, each on every port it receives one of the
    /// service's ports on, with that service port.
    fn served_addrs(&self) -> impl Iterator<Item = (SocketAddr, u16)> + '_ {
        (self.endpoints.iter()).flat_map(move |e| {
            (self.ports.keys()).filter_map(move |&p| Some((self.endpoint_addr(e, p)?, p)))
        })
    }

    /// Whether `port` is declared `TLS` or `HTTPS`: its clients speak TLS themselves.
    pub fn declares_tls(&self, port: u16) -> bool {
        (self.declared(port))
            .is_some_and(|d| ["TLS", "HTTPS"].iter().any(|p| d.eq_ignore_ascii_case(p)))
    }

    /// The protocol `port` declares as written: its `protocol`, else its name's prefix.
    fn declared(&self, port: u16) -> Option<&str> {
        let (name, protocol) = self.ports.get(&port)?;
        // Read on every request: compared in place, without allocating.
        Some(match protocol {
            Some(p) => p.as_str(),
            None => name.split('-').next().unwrap_or(""),
        })
    }
}

/// Every ServiceEntry address with each port the entry declares: single addresses (also as
/// `/32` or `/128`) by address, ranges apart, narrowest first. The first entry to claim an
/// address and port keeps it.
type Vips = (
    HashMap<std::net::SocketAddr, String>,
    Vec<(IpBlock, u16, String)>,
);

fn compile_vips(set: &PolicySet) -> Vips {
    let (mut vips, mut ranges) = (HashMap::new(), Vec::new());
    for se in &set.service_entries {
        let Some(host) = se.spec.hosts.first() else {
            continue;
        };
        let host = fqdn(host, &se.metadata.namespace);
        for block in se.spec.addresses.iter().filter_map(|a| IpBlock::parse(a)) {
            for port in &se.spec.ports {
                match block.single() {
                    Some(ip) => {
                        vips.entry(std::net::SocketAddr::new(ip, port.number))
                            .or_insert_with(|| host.clone());
                    }
                    None => ranges.push((block, port.number, host.clone())),
                }
            }
        }
    }
    // Stable: among ranges of one width, the first entry's comes first.
    ranges.sort_by_key(|(block, _, _)| std::cmp::Reverse(block.prefix()));
    (vips, ranges)
}

/// The TCP ports ServiceEntries without `addresses` declare, each with the host whose entry
/// holds it (see [`PolicySet::port_wide_claims`] and [`Compiled::port_wide_host`]).
fn compile_port_wide(set: &PolicySet) -> HashMap<u16, String> {
    let mut out = HashMap::new();
    for (_, _, port, host) in set.port_wide_claims() {
        out.entry(port.number).or_insert(host);
    }
    out
}

/// The AuthorizationPolicies as an evaluator. What it cannot honour was reported by the
/// analysis of the policies, with the file and line.
fn authorizer(set: &PolicySet) -> crate::security::authz::Authorizer {
    let (a, problems) =
        crate::security::authz::Authorizer::from_set(set, crate::security::DEFAULT_ROOT_NAMESPACE);
    for p in problems {
        tracing::debug!(problem = %p, "authorization policy");
    }
    a
}

/// The PeerAuthentications for resolution; an unknown mode is logged and read as UNSET.
fn mtls(set: &PolicySet) -> crate::security::MtlsPolicies {
    let (m, problems) =
        crate::security::MtlsPolicies::from_set(set, crate::security::DEFAULT_ROOT_NAMESPACE);
    for p in problems {
        tracing::warn!(problem = %p, "peer authentication");
    }
    m
}

/// Fills each workload's effective mTLS mode, for `/config_dump`.
fn resolve_mtls(
    workloads: &mut BTreeMap<String, WorkloadPolicies>,
    mtls: &crate::security::MtlsPolicies,
) {
    for (id, w) in workloads.iter_mut() {
        let Some((namespace, _)) = id.split_once('/') else {
            continue;
        };
        let wl = crate::security::Workload {
            namespace,
            labels: &w.labels,
        };
        // portLevelMtls keys are 1-65535: port 0 resolves the workload-wide mode.
        w.mtls = Some(mtls.resolve(&wl, 0));
        w.mtls_ports = mtls
            .listed_ports(&wl)
            .into_iter()
            .map(|p| (p, mtls.resolve(&wl, p)))
            .collect();
    }
}

/// Compiles `set` with no endpoint names resolved (they are skipped).
pub fn compile(set: &PolicySet) -> Compiled {
    compile_resolved(set, Resolved::new())
}

/// Compiles `set`, with the addresses `dns` gives for endpoint names.
pub fn compile_resolved(set: &PolicySet, dns: Resolved) -> Compiled {
    let mtls = mtls(set);
    let (vips, vip_ranges) = compile_vips(set);
    let port_wide = compile_port_wide(set);
    let mut workloads = compile_workloads(set);
    resolve_mtls(&mut workloads, &mtls);
    let clusters = compile_clusters(set, &dns);
    let tls_ports = (clusters.values())
        .flat_map(|c| c.ports.keys().copied().filter(|p| c.declares_tls(*p)))
        .collect();
    let mut wildcard_hosts: Vec<String> = (clusters.keys())
        .filter(|host| host.starts_with("*."))
        .cloned()
        .collect();
    wildcard_hosts.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    let mut services_at: HashMap<SocketAddr, (String, u16)> = HashMap::new();
    for c in clusters.values() {
        for (addr, port) in c.served_addrs() {
            let at = services_at
                .entry(addr)
                .or_insert_with(|| (c.host.clone(), port));
            if c.host < at.0 {
                *at = (c.host.clone(), port);
            }
        }
    }
    Compiled {
        services_at,
        wildcard_hosts,
        routes: compile_routes(set),
        tcp_routes: crate::routes::l4::TcpRoutes::compile(set),
        clusters,
        tls_ports,
        dns,
        workloads,
        vips,
        vip_ranges,
        port_wide,
        endpoints: super::endpoints::Endpoints::compile(set),
        authorizer: Arc::new(authorizer(set)),
        mtls: Arc::new(mtls),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::load_str;

    /// Two services behind one address, each on its own port.
    const SHARED_VIP: &str = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: default}
spec:
  hosts: [web.default.svc.cluster.local]
  addresses: [10.96.0.9]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: default}
spec:
  hosts: [db.default.svc.cluster.local]
  addresses: [10.96.0.9]
  ports: [{number: 5432, name: tcp-db, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.2}]
"#;

    #[test]
    fn a_vip_names_a_service_only_on_its_declared_ports() {
        let c = compile(&load_str("t.yaml".as_ref(), SHARED_VIP).expect("valid policies"));
        let at = |s: &str| c.vip_host(s.parse().unwrap());
        assert_eq!(at("10.96.0.9:80"), Some("web.default.svc.cluster.local"));
        assert_eq!(at("10.96.0.9:5432"), Some("db.default.svc.cluster.local"));
        assert_eq!(at("10.96.0.9:8080"), None, "a port neither declares");
        assert_eq!(at("10.96.0.10:80"), None, "another address");
        use crate::proxy::sniff::Detected;
        let declared = |s: &str| c.declared_protocol(s.parse().unwrap());
        assert_eq!(declared("10.96.0.9:80"), Some(Detected::Http1));
        assert_eq!(declared("10.96.0.9:5432"), Some(Detected::Opaque));
        assert_eq!(declared("10.96.0.9:8080"), None);
    }

    #[test]
    fn an_endpoint_names_the_service_it_serves_on_the_port_it_receives_it() {
        let yaml = format!(
            r#"{SHARED_VIP}---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: reviews, namespace: default}}
spec: {{address: 10.0.0.3, ports: {{http: 8080}}, labels: {{app: reviews}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{{number: 9080, name: http, protocol: HTTP}}, {{number: 9443, name: https, targetPort: 8443}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: reviews}}}}
"#
        );
        let c = compile(&load_str("t.yaml".as_ref(), &yaml).expect("valid policies"));
        let at = |s: &str| c.service_at(s.parse().unwrap());
        assert_eq!(at("10.0.0.1:80"), Some("web.default.svc.cluster.local"));
        assert_eq!(at("10.0.0.2:5432"), Some("db.default.svc.cluster.local"));
        // The WorkloadEntry's port for the port's name, and the other port's targetPort.
        assert_eq!(
            at("10.0.0.3:8080"),
            Some("reviews.default.svc.cluster.local")
        );
        assert_eq!(
            at("10.0.0.3:8443"),
            Some("reviews.default.svc.cluster.local")
        );
        assert_eq!(
            at("10.0.0.3:9080"),
            None,
            "the service port, not the endpoint's"
        );
        assert_eq!(at("10.0.0.1:5432"), None, "another service's port");
        assert_eq!(at("10.0.0.9:80"), None, "no endpoint");
        // A client dialling the endpoint itself reaches the port its service declares.
        use crate::proxy::sniff::Detected;
        let declared = |s: &str| c.declared_protocol(s.parse().unwrap());
        assert_eq!(declared("10.0.0.3:8080"), Some(Detected::Http1));
        assert_eq!(declared("10.0.0.2:5432"), Some(Detected::Opaque));
        // Named `https`: TLS its clients speak themselves, carried opaque.
        assert_eq!(declared("10.0.0.3:8443"), Some(Detected::Opaque));
        assert!(c.declares_tls_at("10.0.0.3:8443".parse().unwrap()));
        assert_eq!(declared("10.0.0.3:9080"), None);
    }

    /// As Istio builds no HTTP virtual host for a VirtualService without `http` routes, one
    /// with only `tcp` routes leaves its hosts' HTTP requests to their default routes, and an
    /// HTTP VirtualService for the same host after it still applies.
    #[test]
    fn a_virtual_service_without_http_routes_routes_no_http() {
        let vs = |name: &str, body: &str| {
            format!(
                "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  hosts: [web]\n{body}"
            )
        };
        let tcp_only = vs("tcp", "  tcp:\n  - route: [{destination: {host: db}}]\n");
        let http = vs("http", "  http:\n  - route: [{destination: {host: web}}]\n");
        let c = compile(&load_str("t.yaml".as_ref(), &format!("{SHARED_VIP}{tcp_only}")).unwrap());
        assert!(c.routes.exact("web.default.svc.cluster.local").is_none());
        let both = format!("{SHARED_VIP}{tcp_only}{http}");
        let c = compile(&load_str("t.yaml".as_ref(), &both).unwrap());
        assert!(c.routes.exact("web.default.svc.cluster.local").is_some());
    }

    /// Two VirtualServices for one host: the oldest applies, as in Istio (by
    /// `creationTimestamp`, then by name, then by namespace), whatever order they load in.
    #[test]
    fn the_oldest_virtual_service_for_a_host_routes_it_whatever_the_load_order() {
        let vs = |name: &str, ns: &str, created: Option<&str>| {
            let created =
                created.map_or(String::new(), |t| format!(", creationTimestamp: \"{t}\""));
            format!(
                "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: {ns}{created}}}\nspec:\n  hosts: [web.default.svc.cluster.local]\n  http:\n  - route: [{{destination: {{host: web.default.svc.cluster.local}}}}]\n"
            )
        };
        let routed_by = |docs: &[String]| {
            let yaml = format!("{SHARED_VIP}{}", docs.concat());
            let c = compile(&load_str("t.yaml".as_ref(), &yaml).expect("valid policies"));
            let routes = c.routes.exact("web.default.svc.cluster.local").unwrap();
            routes.routes[0].origin.clone()
        };
        let (jan, feb) = (Some("2024-01-01T00:00:00Z"), Some("2024-02-01T00:00:00Z"));
        // Loaded first, but younger: the older one, loaded after it, applies.
        let docs = [vs("a", "default", feb), vs("b", "default", jan)];
        assert_eq!(routed_by(&docs), "default/b#0");
        // Of the same age: by name, then by namespace.
        let docs = [vs("b", "default", jan), vs("a", "default", jan)];
        assert_eq!(routed_by(&docs), "default/a#0");
        let docs = [
            vs("a", "shop", jan),
            vs("b", "default", jan),
            vs("a", "default", jan),
        ];
        assert_eq!(routed_by(&docs), "default/a#0");
        // One without a timestamp (written by hand) counts as the oldest, as for
        // PeerAuthentication.
        let docs = [vs("a", "default", jan), vs("z", "default", None)];
        assert_eq!(routed_by(&docs), "default/z#0");
    }

    /// Two DestinationRules for one host merge oldest first, as Istio merges them: the older
    /// rule's traffic policy and subsets win, whatever order they load in.
    #[test]
    fn destination_rules_of_one_host_merge_oldest_first() {
        let dr = |name: &str, created: &str, lb: &str, labels: &str| {
            format!(
                "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: default, creationTimestamp: \"{created}\"}}\nspec:\n  host: web\n  trafficPolicy: {{loadBalancer: {{simple: {lb}}}}}\n  subsets:\n  - {{name: v1, labels: {labels}}}\n"
            )
        };
        let yaml = format!(
            "{SHARED_VIP}{}{}",
            dr("a-young", "2024-02-01T00:00:00Z", "RANDOM", "{none: x}"),
            dr("b-old", "2024-01-01T00:00:00Z", "LEAST_REQUEST", "{}"),
        );
        let c = compile(&load_str("t.yaml".as_ref(), &yaml).expect("valid policies"));
        let web = &c.clusters["web.default.svc.cluster.local"];
        assert_eq!(web.destination_rule.as_deref(), Some("default/b-old"));
        let lb = (web.traffic_policy.as_ref())
            .and_then(|p| p.load_balancer.as_ref())
            .and_then(|l| l.simple.clone());
        assert_eq!(lb.as_deref(), Some("LEAST_REQUEST"));
        assert_eq!(
            web.subsets["v1"].len(),
            1,
            "the older rule's v1: every endpoint"
        );
    }

    /// Two ServiceEntries of one host: each entry's endpoints serve only its own ports, and a
    /// port both declare keeps the first one's protocol.
    #[test]
    fn entries_of_one_host_keep_their_endpoints_to_their_own_ports() {
        let yaml = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: mix-a, namespace: default}
spec:
  hosts: [mix.example]
  ports: [{number: 8001, name: http, protocol: HTTP}, {number: 8003, name: shared, protocol: HTTP}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: mix-b, namespace: default}
spec:
  hosts: [mix.example]
  ports: [{number: 8002, name: http-alt, protocol: HTTP}, {number: 8003, name: shared, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.21}]
"#;
        let c = compile(&load_str("t.yaml".as_ref(), yaml).expect("valid policies"));
        let mix = &c.clusters["mix.example"];
        let e = &mix.endpoints[0];
        assert_eq!(mix.endpoint_addr(e, 8001), None, "mix-a's port");
        assert!(!mix.has_endpoints_on(8001));
        assert_eq!(
            mix.endpoint_addr(e, 8002),
            Some("127.0.0.21:8002".parse().unwrap())
        );
        assert!(mix.has_endpoints_on(8003), "both declare it");
        assert_eq!(
            mix.ports[&8003].1.as_deref(),
            Some("HTTP"),
            "the first one's"
        );
        // A host one entry declares: its endpoints serve every port.
        let single = yaml.replace(
            "hosts: [mix.example]\n  ports: [{number: 8001",
            "hosts: [solo.example]\n  ports: [{number: 8001",
        );
        let c = compile(&load_str("t.yaml".as_ref(), &single).expect("valid policies"));
        let mix = &c.clusters["mix.example"];
        assert!(mix.endpoints[0].entry_ports.is_empty());
        assert!(mix.has_endpoints_on(9999));
    }

    /// A wildcard ServiceEntry is where Istio's default route for a Host it covers goes, on the
    /// ports it declares; one without endpoints only where the client dialled no other
    /// service's VIP (the request goes where the client dialled, under its policy).
    #[test]
    fn a_wildcard_service_with_endpoints_takes_the_hosts_it_covers() {
        let se = |name: &str, host: &str, endpoints: &str| {
            format!(
                "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  hosts: [\"{host}\"]\n  ports: [{{number: 8080, name: http, protocol: HTTP}}]\n{endpoints}"
            )
        };
        let yaml = [
            se(
                "wc",
                "*.wc.test",
                "  resolution: STATIC\n  endpoints: [{address: 127.0.0.71}]\n",
            ),
            se(
                "deep",
                "*.a.wc.test",
                "  resolution: STATIC\n  endpoints: [{address: 127.0.0.72}]\n",
            ),
            se("none", "*.none.test", "  resolution: NONE\n"),
        ]
        .concat();
        let c = compile(&load_str("t.yaml".as_ref(), &yaml).expect("valid policies"));
        assert_eq!(
            c.wildcard_service("foo.wc.test", 8080, true),
            Some("*.wc.test")
        );
        assert_eq!(
            c.wildcard_service("x.a.wc.test", 8080, false),
            Some("*.a.wc.test"),
            "the most specific"
        );
        assert_eq!(
            c.wildcard_service("foo.wc.test", 9090, false),
            None,
            "a port it does not declare"
        );
        assert_eq!(c.wildcard_service("wc.test", 8080, false), None);
        assert_eq!(
            c.wildcard_service("x.none.test", 8080, false),
            Some("*.none.test"),
            "no endpoints: at the address dialled"
        );
        assert_eq!(
            c.wildcard_service("x.none.test", 8080, true),
            None,
            "no endpoints, and the client dialled another service's VIP"
        );
    }

    #[test]
    fn destination_rules_merge_per_host_and_wildcards_cover_the_rest() {
        let dr = |name: &str, host: &str, body: &str| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  host: \"{host}\"\n{body}---\n"
            )
        };
        // No creationTimestamp on either web rule: they merge in name order, as in Istio.
        let yaml = format!(
            "{}{}{}{}{}{SHARED_VIP}",
            dr("web-subsets", "web", "  subsets:\n  - {name: v1}\n"),
            dr(
                "web-traffic",
                "web",
                "  trafficPolicy: {loadBalancer: {simple: RANDOM}}\n  subsets:\n  - {name: v1, labels: {none: x}}\n  - {name: v2, labels: {app: web}}\n"
            ),
            dr(
                "mesh",
                "*.local",
                "  trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}\n"
            ),
            dr(
                "cluster",
                "*.svc.cluster.local",
                "  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}\n"
            ),
            dr(
                "elsewhere",
                "*.example.com",
                "  trafficPolicy: {loadBalancer: {simple: RANDOM}}\n"
            ),
        );
        let c = compile(&load_str("t.yaml".as_ref(), &yaml).expect("valid policies"));
        let web = &c.clusters["web.default.svc.cluster.local"];
        assert_eq!(web.destination_rule.as_deref(), Some("default/web-subsets"));
        let lb = |c: &Cluster| {
            c.traffic_policy
                .as_ref()
                .and_then(|p| p.load_balancer.as_ref())
                .and_then(|l| l.simple.clone())
        };
        assert_eq!(lb(web), Some("RANDOM".into()), "the first rule set none");
        let subsets: Vec<&String> = web.subsets.keys().collect();
        assert_eq!(subsets, ["v1", "v2"], "merged by name, the first v1 kept");
        assert_eq!(
            web.subsets["v1"].len(),
            1,
            "the first rule's v1: every endpoint"
        );
        let db = &c.clusters["db.default.svc.cluster.local"];
        assert_eq!(db.destination_rule.as_deref(), Some("default/cluster"));
        assert_eq!(
            lb(db),
            Some("ROUND_ROBIN".into()),
            "the most specific wildcard"
        );
    }

    #[test]
    fn addresses_as_cidr_ranges_name_their_service_narrowest_first() {
        let se = |name: &str, addresses: &str| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  hosts: [{name}.example]\n  addresses: [{addresses}]\n  ports: [{{number: 27017, name: tcp-mongo, protocol: TCP}}]\n  resolution: NONE\n---\n"
            )
        };
        let yaml = format!(
            "{}{}{}",
            se("wide", "192.168.0.0/16"),
            se("narrow", "192.168.10.0/24"),
            se("single", "10.1.2.3/32"),
        );
        let c = compile(&load_str("t.yaml".as_ref(), &yaml).expect("valid policies"));
        let at = |s: &str| c.vip_host(s.parse().unwrap());
        assert_eq!(
            at("10.1.2.3:27017"),
            Some("single.example"),
            "a /32 is a VIP"
        );
        assert!(c.vips.contains_key(&"10.1.2.3:27017".parse().unwrap()));
        assert_eq!(at("192.168.10.7:27017"), Some("narrow.example"));
        assert_eq!(at("192.168.11.7:27017"), Some("wide.example"));
        assert_eq!(at("192.168.10.7:27018"), None, "an undeclared port");
        assert_eq!(at("10.1.2.4:27017"), None);
    }

    /// As Istio looks a DestinationRule up: the client's namespace first, then the service's,
    /// then the root namespace; rules of one host in different namespaces do not merge, and a
    /// rule in a third namespace is for that namespace's clients only.
    #[test]
    fn a_client_sees_the_rule_of_its_namespace_then_the_services_then_the_roots() {
        let dr = |ns: &str, lb: &str| {
            format!(
                "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: web, namespace: {ns}}}\nspec:\n  host: web.default.svc.cluster.local\n  trafficPolicy: {{loadBalancer: {{simple: {lb}}}}}\n"
            )
        };
        let seen = |yaml: &str, namespace: Option<&str>| {
            let c = compile(&load_str("t.yaml".as_ref(), yaml).expect("valid policies"));
            let web = &c.clusters["web.default.svc.cluster.local"];
            let labels = BTreeMap::new();
            let client = Client {
                labels: &labels,
                namespace,
            };
            web.for_client(Some(&client)).destination_rule.clone()
        };
        // A rule in another namespace first in the files, then the service's own.
        let two = format!(
            "{SHARED_VIP}{}{}",
            dr("other", "RANDOM"),
            dr("default", "ROUND_ROBIN")
        );
        assert_eq!(seen(&two, Some("default")).as_deref(), Some("default/web"));
        assert_eq!(
            seen(&two, Some("prod")).as_deref(),
            Some("default/web"),
            "the service's"
        );
        assert_eq!(
            seen(&two, Some("other")).as_deref(),
            Some("other/web"),
            "its own"
        );
        assert_eq!(seen(&two, None).as_deref(), Some("default/web"));
        // Without one in the service's namespace, the root namespace's; a third namespace's
        // rule is for its own clients only.
        let root = format!(
            "{SHARED_VIP}{}{}",
            dr("other", "RANDOM"),
            dr("istio-system", "RANDOM")
        );
        assert_eq!(
            seen(&root, Some("prod")).as_deref(),
            Some("istio-system/web")
        );
        assert_eq!(seen(&root, Some("other")).as_deref(), Some("other/web"));
        let third = format!("{SHARED_VIP}{}", dr("other", "RANDOM"));
        assert_eq!(seen(&third, Some("prod")), None);
        assert_eq!(seen(&third, Some("other")).as_deref(), Some("other/web"));
    }

    #[test]
    fn a_rule_with_a_workload_selector_shapes_the_cluster_for_the_clients_it_selects() {
        let yaml = format!(
            "{SHARED_VIP}---\n{}",
            r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web-for-sleep, namespace: default}
spec:
  host: web
  workloadSelector:
    matchLabels: {app: sleep}
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
  subsets:
  - {name: canary}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: default}
spec:
  host: web
  trafficPolicy: {loadBalancer: {simple: RANDOM}}
"#
        );
        let c = compile(&load_str("t.yaml".as_ref(), &yaml).expect("valid policies"));
        let web = &c.clusters["web.default.svc.cluster.local"];
        let sleep: BTreeMap<String, String> = [("app".to_string(), "sleep".to_string())].into();
        let other = BTreeMap::new();
        let seen_by = |labels, namespace| {
            let client = Client { labels, namespace };
            let c = web.for_client(Some(&client));
            (c.destination_rule.clone(), c.subsets.contains_key("canary"))
        };
        assert_eq!(
            seen_by(&sleep, Some("default")),
            (Some("default/web-for-sleep".into()), true)
        );
        assert_eq!(
            seen_by(&other, Some("default")),
            (Some("default/web".into()), false)
        );
        assert_eq!(
            seen_by(&sleep, Some("prod")),
            (Some("default/web".into()), false),
            "a selector selects in its own namespace"
        );
        assert_eq!(
            web.for_client(None).destination_rule.as_deref(),
            Some("default/web")
        );
    }
}
