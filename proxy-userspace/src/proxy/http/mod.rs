//! The L7 pipeline for captured HTTP/1.x and HTTP/2 connections: a hyper server per downstream
//! connection, each request forwarded over a pooled upstream connection.

mod activity;
mod affinity;
pub mod authorize;
pub mod body;
pub mod cors;
mod deadline;
mod fault;
mod flags;
mod forward;
mod framing;
mod grpc_local;
mod grpc_messages;
mod header_values;
mod headers;
mod lb;
mod linger;
pub mod locality;
mod mirror;
mod normalize;
pub mod outlier;
mod overrides;
mod pool;
mod priority;
mod ratelimit;
mod record;
mod recording;
mod replay;
mod request_log;
pub mod retry;
pub(crate) mod route;
mod send;
mod slow_start;
pub mod upgrade;

use std::{borrow::Cow, net::SocketAddr, sync::Arc};

use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpStream;

use crate::{config::ConfigStore, metrics::Metrics, proxy::fairness::Fairness};

pub use body::Body;
pub use deadline::is_grpc;
pub use flags::ResponseFlags;
pub use forward::{GRPC_STATUS, is_websocket_upgrade};
pub use grpc_local::as_grpc;
pub use grpc_local::grpc_label;
pub use grpc_messages::GrpcMessages;
pub use pool::{Counter, Limits, Pool, Target, UpstreamError, open_tunnel};
pub use record::Record;
pub use replay::{FORWARDED_CLIENT_CERT, Outgoing};
pub use request_log::{header_logged, header_text, version_text};
pub use route::NoEndpoint;
/// The endpoints behind a destination host and port, as routing picks them.
pub(crate) use route::endpoints as destination_endpoints;
pub use send::{access_denied, reset_before_headers};

/// Concurrent streams a client's HTTP/2 connection may open: Envoy's default, 2^31 - 1.
const MAX_CLIENT_STREAMS: u32 = i32::MAX as u32;

/// Settings and shared state of the L7 pipeline.
pub struct HttpContext {
    pub pool: Arc<Pool>,
    pub mirrors: mirror::Mirrors,
    pub metrics: Arc<Metrics>,
    /// Largest request head (request line and headers) accepted; bigger gets 431.
    pub max_header_bytes: usize,
    /// HTTP/1.0 requests are served (else answered 426).
    pub accept_http10: bool,
    /// A client connection with no request in flight this long is closed (`--http-idle-timeout`).
    pub idle_timeout: Option<std::time::Duration>,
    /// The active policy snapshot; each request reads it once and keeps it to the end.
    pub config: Arc<ConfigStore>,
    /// Endpoint selection state (round-robin position, in-flight requests per endpoint).
    pub lb: lb::Balancer,
    /// Consecutive failures and ejections per endpoint.
    pub outliers: outlier::Detector,
    /// Local rate-limit buckets and the global limit's Redis connections.
    pub buckets: ratelimit::local::Buckets,
    pub global: ratelimit::global::Global,
    /// Connections and requests in flight per source workload.
    pub fairness: Fairness,
    /// The mTLS tunnel to other nodes, when meshd has workload certificates.
    pub tunnel: Option<Arc<crate::tunnel::Tunnel>>,
    /// Other nodes' tunnel port when their `meshd.io/node` label names none.
    pub inbound_port: u16,
    /// This node's address (`--node-address`) and the identities' trust domain.
    pub node_address: Option<std::net::IpAddr>,
    pub trust_domain: String,
    /// This node's locality (`--locality`), for locality-aware load balancing.
    pub locality: Option<locality::Locality>,
    pub access: Arc<crate::telemetry::AccessLog>,
    pub tracer: Arc<crate::telemetry::trace::Tracer>,
    /// meshd's drain: HTTP connections are then closed gracefully.
    pub drain: crate::drain::Watch,
}

impl HttpContext {
    pub fn new(
        settings: &crate::settings::Settings,
        tunnel: Option<Arc<crate::tunnel::Tunnel>>,
        config: Arc<ConfigStore>,
        metrics: Arc<Metrics>,
        access: Arc<crate::telemetry::AccessLog>,
        tracer: Arc<crate::telemetry::trace::Tracer>,
        drain: crate::drain::Watch,
    ) -> Arc<HttpContext> {
        let ctx = Arc::new(HttpContext {
            pool: Pool::new(settings.connect_timeout, tunnel.clone()),
            tunnel,
            inbound_port: settings.inbound_port,
            node_address: settings.node_address,
            trust_domain: settings.trust_domain.clone(),
            locality: settings.locality.as_deref().map(locality::Locality::parse),
            mirrors: mirror::Mirrors::default(),
            metrics,
            max_header_bytes: settings.max_request_headers_bytes,
            accept_http10: settings.accept_http10,
            idle_timeout: Some(settings.http_idle_timeout).filter(|t| !t.is_zero()),
            config,
            lb: lb::Balancer::default(),
            outliers: outlier::Detector::default(),
            buckets: ratelimit::local::Buckets::default(),
            global: ratelimit::global::Global::new(settings.redis_timeout),
            fairness: Fairness::new(
                settings.workload_max_connections,
                settings.workload_max_requests,
            ),
            access,
            tracer,
            drain,
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(end_ejections(Arc::downgrade(&ctx)));
            let applied = ctx.config.applied();
            rt.spawn(forget_changed_clusters(Arc::downgrade(&ctx), applied));
        }
        ctx
    }
}

/// After each reload, forgets the outlier state of the hosts whose DestinationRule changed,
/// was added or went, and closes their idle upstream connections (the next request opens one
/// under the new settings); drains the connections to endpoints the reload removed from their
/// service, and forgets their outlier state; while `ctx` lives.
async fn forget_changed_clusters(
    ctx: std::sync::Weak<HttpContext>,
    mut applied: tokio::sync::watch::Receiver<u64>,
) {
    let Some(mut before) = ctx.upgrade().map(|c| c.config.current()) else {
        return;
    };
    while applied.changed().await.is_ok() {
        let Some(ctx) = ctx.upgrade() else { return };
        let now = ctx.config.current();
        let changes = changed_rules(&before.policies, &now.policies);
        ctx.outliers.forget_changed(&changes);
        let mut hosts: Vec<String> = changes.into_iter().map(|c| c.host).collect();
        hosts.dedup();
        ctx.pool.close_idle_of_hosts(&hosts);
        let endpoints = |host: &str, port| {
            (
                before.compiled.endpoint_addrs(host, port),
                now.compiled.endpoint_addrs(host, port),
            )
        };
        ctx.pool.retire_endpoints(endpoints);
        ctx.outliers.forget_removed(endpoints);
        before = now;
    }
}

/// The DestinationRules that differ between two configurations, and which of their clusters
/// the difference reaches: every one when the rule came, went or changed outside its
/// `subsets`, else those of the subsets that changed, came or went (as Envoy rebuilds only the
/// clusters whose configuration changed).
fn changed_rules(
    before: &crate::policy::PolicySet,
    now: &crate::policy::PolicySet,
) -> Vec<outlier::RuleChange> {
    use std::collections::HashMap;

    use crate::policy::{PolicySet, model::DestinationRuleSpec};
    type Rules<'a> = HashMap<(&'a String, &'a String), &'a DestinationRuleSpec>;
    // (namespace, name) → the rule's spec, by which a change is seen.
    fn rules(set: &PolicySet) -> Rules<'_> {
        (set.destination_rules.iter())
            .map(|r| ((&r.metadata.namespace, &r.metadata.name), &r.spec))
            .collect()
    }
    let (old, new) = (rules(before), rules(now));
    let host = |spec: &DestinationRuleSpec, namespace: &str| {
        crate::policy::hosts::fqdn(&spec.host, namespace)
    };
    let mut changes = Vec::new();
    for (key @ (namespace, _), spec) in &old {
        match new.get(key) {
            Some(other) if other == spec => {}
            None => changes.push(outlier::RuleChange::every(host(spec, namespace))),
            // A rule moved to another host reaches every cluster of both.
            Some(other) if other.host != spec.host => {
                changes.push(outlier::RuleChange::every(host(spec, namespace)));
                changes.push(outlier::RuleChange::every(host(other, namespace)));
            }
            Some(other) => {
                let without_subsets = |s: &DestinationRuleSpec| DestinationRuleSpec {
                    subsets: Vec::new(),
                    ..s.clone()
                };
                let differs = |a: &DestinationRuleSpec, b: &DestinationRuleSpec| {
                    (a.subsets.iter())
                        .filter(|s| !b.subsets.contains(s))
                        .map(|s| s.name.clone())
                        .collect::<Vec<_>>()
                };
                let mut subsets = differs(spec, other);
                subsets.extend(differs(other, spec));
                subsets.sort();
                subsets.dedup();
                changes.push(outlier::RuleChange {
                    host: host(spec, namespace),
                    every_cluster: without_subsets(spec) != without_subsets(other),
                    subsets,
                });
            }
        }
    }
    for (key @ (namespace, _), spec) in &new {
        if !old.contains_key(key) {
            changes.push(outlier::RuleChange::every(host(spec, namespace)));
        }
    }
    changes.sort_by(|a, b| a.host.cmp(&b.host));
    changes
}

/// Ends outlier ejections as their time runs out, logged and counted, while `ctx` lives.
async fn end_ejections(ctx: std::sync::Weak<HttpContext>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Some(ctx) = ctx.upgrade() else { return };
        for (cluster, a) in ctx.outliers.end_ejections() {
            tracing::info!(%cluster, endpoint = %a, "endpoint returned from ejection");
            ctx.metrics.outlier(&cluster, "returned");
        }
    }
}

impl HttpContext {
    /// The endpoints of `all` a new attempt or connection may use: those outlier detection
    /// has not ejected, or all of them without it. Err when it ejected every one.
    fn candidates<'e>(
        &self,
        cluster: &str,
        outlier: Option<&outlier::Settings>,
        all: &'e [SocketAddr],
    ) -> Result<Cow<'e, [SocketAddr]>, route::NoEndpoint> {
        let Some(s) = outlier else {
            self.outliers.forget(cluster);
            return Ok(Cow::Borrowed(all));
        };
        let healthy = self.healthy(cluster, s, all);
        if healthy.is_empty() && !all.is_empty() {
            return Err(route::NoEndpoint::AllEjected {
                cluster: cluster.to_string(),
            });
        }
        Ok(Cow::Owned(healthy))
    }

    /// One endpoint of `endpoints` (`distribute` applied) for an opaque connection or a
    /// mirrored copy of a `client`'s request, chosen as a request's first attempt is: among the
    /// candidates, by locality priority, slow start, weights and `algo`. Also returns the
    /// cluster's share of the pool.
    fn choose_once(
        &self,
        policy: &route::ClusterPolicy<'_>,
        endpoints: &[SocketAddr],
        outlier: Option<&outlier::Settings>,
        client: &std::collections::BTreeMap<String, String>,
        algo: &lb::Algorithm,
    ) -> Result<(SocketAddr, Arc<pool::ClusterPool>), route::NoEndpoint> {
        let candidates = self.candidates(&policy.key, outlier, endpoints)?;
        if candidates.is_empty() {
            return Err(route::NoEndpoint::Empty {
                host: policy.key.clone(),
                subset: String::new(),
            });
        }
        let priorities =
            priority::priorities(self.locality.as_ref(), self.node_address, client, policy);
        let cluster = self.pool.cluster(&policy.key);
        let (addr, _) = send::Selection {
            cluster: &policy.key,
            turn: &cluster.turn,
            algo,
            all: endpoints,
            priorities: priorities.as_deref(),
            weights: policy.weights.as_deref(),
            slow_start: policy.lb.and_then(slow_start::SlowStart::from_spec),
        }
        .pick(&self.lb, candidates, 0, &[]);
        Ok((addr, cluster))
    }

    /// The endpoints of `cluster` that outlier detection has not ejected (possibly none);
    /// endpoints whose ejection just ended are logged and counted.
    fn healthy(&self, cluster: &str, s: &outlier::Settings, all: &[SocketAddr]) -> Vec<SocketAddr> {
        let (healthy, returned) = self.outliers.healthy(cluster, s, all);
        for a in returned {
            tracing::info!(%cluster, endpoint = %a, "endpoint returned from ejection");
            self.metrics.outlier(cluster, "returned");
        }
        healthy
    }

    /// Feeds one outcome of `addr` to outlier detection; an ejection is logged and counted.
    fn observe_outcome(
        &self,
        cluster: &str,
        s: &outlier::Settings,
        addr: SocketAddr,
        outcome: outlier::Outcome,
        all: &[SocketAddr],
    ) {
        if let Some(outlier::Event::Ejected { for_ }) =
            self.outliers.record(cluster, s, addr, outcome, all)
        {
            tracing::warn!(%cluster, endpoint = %addr, ?for_, "endpoint ejected by outlier detection");
            self.metrics.outlier(cluster, "ejected");
        }
    }

    /// Where an L4 (opaque) connection from `workload` to `dst` goes, `sni` the server name
    /// of its ClientHello if it is TLS. The destination of the first matching `tls` route (by
    /// the server name) or `tcp` route of the VirtualService of the service whose VIP was
    /// dialled, by weight; else that service itself; then an endpoint of it, by its
    /// DestinationRule's load balancer (a consistent hash on the source IP, or round robin
    /// for the others that read requests) among those outlier detection has not ejected,
    /// under its connection-pool limits. Anything else: `dst` itself. Err: outlier detection
    /// ejected every endpoint of the service, or a routed subset has none; with the service
    /// (and subset) the connection was routed to, for its metrics and access log.
    pub fn l4_target(
        &self,
        peer: SocketAddr,
        dst: SocketAddr,
        workload: Option<&str>,
        sni: Option<&str>,
    ) -> Result<L4Target, L4Refused> {
        let snap = self.config.current();
        // The service dialled by its VIP, else the one that takes the whole port.
        let vip_host = (snap.compiled.vip_host(dst)).or_else(|| snap.compiled.port_wide_host(dst));
        let client = snap.compiled.client(workload);
        let routes = &snap.compiled.tcp_routes;
        let routed = sni
            .and_then(|name| routes.decide_tls(vip_host, name, dst, &client))
            .or_else(|| routes.decide(vip_host?, dst, &client))
            .and_then(|r| route::pick_weighted(&r.destinations));
        // Else the service dialled by its VIP, or named by the ClientHello on a port its
        // ServiceEntry declares TLS or HTTPS (one without addresses, as Istio's egress tasks
        // write them).
        let named = || sni.and_then(|name| snap.compiled.tls_host(name, dst.port()));
        let d = match (routed, vip_host.or_else(named)) {
            (Some(d), _) => d.clone(),
            (None, Some(host)) => crate::routes::Destination::service(host, dst.port()),
            // Under REGISTRY_ONLY, Istio's BlackHoleCluster.
            (None, None) if snap.mesh.registry_only => {
                return Err(L4Refused {
                    error: L4Error::BlackHole,
                    service: Some(L4Service::black_hole()),
                });
            }
            (None, None) => return Ok(L4Target::direct(dst)),
        };
        let port = d.port.unwrap_or(dst.port());
        self.l4_reach(&snap, &d, &client, peer, dst, sni)
            .map_err(|error| L4Refused {
                error,
                service: Some(L4Service::of(d, port)),
            })
    }

    /// The endpoint of `d`, the destination an L4 connection was routed to, under its
    /// DestinationRule (see [`Self::l4_target`]).
    fn l4_reach(
        &self,
        snap: &crate::config::Snapshot,
        d: &crate::routes::Destination,
        client: &crate::routes::Client<'_>,
        peer: SocketAddr,
        dst: SocketAddr,
        sni: Option<&str>,
    ) -> Result<L4Target, L4Error> {
        // A route to the server name itself, with no ServiceEntry endpoints, goes where the
        // client was going.
        let requested = sni.map(Cow::Borrowed);
        let found = match route::endpoints(snap, d, requested.as_slice(), dst, Some(client)) {
            // A subset with no endpoint is an empty cluster, with no healthy upstream as in
            // Envoy: going where the client dialled would bypass what the subset stands for
            // (a forward proxy's `tunnel`, say).
            Err(e) if d.subset.is_some() => return Err(e.into()),
            // A STATIC service whose endpoints are none: no healthy upstream, as Envoy's empty
            // cluster.
            Err(e @ route::NoEndpoint::Empty { .. }) => return Err(e.into()),
            // A service without endpoints (`resolution: NONE`) is reached where the client
            // dialled, under its DestinationRule, as Envoy's original-destination cluster;
            // outlier detection there would track every address ever dialled, so it is off.
            Err(_) => route::endpoints(snap, d, &[Cow::Borrowed(&*d.host)], dst, Some(client)).map(
                |(e, policy)| {
                    (
                        e,
                        route::ClusterPolicy {
                            outlier: None,
                            ..policy
                        },
                    )
                },
            ),
            found => found,
        };
        match found {
            Ok((mut e, mut policy)) => {
                priority::distribute(self.locality.as_ref(), &d.host, &mut e, &mut policy)?;
                let outlier = policy.outlier.map(outlier::Settings::from_spec);
                let algo = lb::for_connection(policy.lb, peer);
                // Every endpoint ejected is no healthy upstream, as for a request.
                let (addr, cluster) =
                    self.choose_once(&policy, &e, outlier.as_ref(), client.labels, &algo)?;
                let mut limits = pool::Limits::from_spec(policy.pool);
                limits.opaque = true;
                limits.proxy_protocol = policy.proxy_header(peer, dst);
                limits.tunnel = policy.tunnel.map(|t| {
                    // An IPv6 target in brackets, as in a URL's authority.
                    let host = &t.target_host;
                    Arc::from(match host.contains(':') {
                        true => format!("[{host}]:{}", t.target_port),
                        false => format!("{host}:{}", t.target_port),
                    })
                });
                // TLS origination (`tls: SIMPLE` or `MUTUAL`) names `sni`, else the service's
                // host, else (a wildcard host) the endpoint's address. A client that speaks TLS
                // itself (a ClientHello seen, or a port declared TLS or HTTPS) is not wrapped
                // again: its TLS passes through, as it would without the rule. (The caller
                // looks at the client's first bytes too.)
                let port = policy.port;
                let declared_tls =
                    (snap.compiled.clusters.get(&d.host)).is_some_and(|c| c.declares_tls(port));
                if sni.is_some() || declared_tls {
                    if policy
                        .tls
                        .is_some_and(|t| matches!(t.mode.as_str(), "SIMPLE" | "MUTUAL"))
                    {
                        tracing::debug!(host = %d.host, "the client speaks TLS: not originating TLS");
                    }
                } else {
                    let name = match d.host.starts_with('*') {
                        true => addr.ip().to_string(),
                        false => d.host.clone(),
                    };
                    limits.tls = (self.pool.originations)
                        .for_connection(policy.tls, &name)
                        .map_err(|reason| L4Error::Origination {
                            host: d.host.clone(),
                            reason,
                        })?;
                }
                Ok(L4Target {
                    addr,
                    cluster: Some(cluster),
                    limits,
                    service: Some(L4Service::of(d.clone(), policy.port)),
                    // Only least request reads the connections in flight.
                    in_flight: (algo == lb::Algorithm::LeastRequest).then(|| self.lb.start(addr)),
                    outlier: outlier.map(|settings| L4Outlier {
                        cluster: policy.key,
                        settings,
                        endpoints: e,
                    }),
                })
            }
            Err(_) => Ok(L4Target {
                service: Some(L4Service::of(d.clone(), d.port.unwrap_or(dst.port()))),
                ..L4Target::direct(dst)
            }),
        }
    }
}

impl HttpContext {
    /// How a connection of `workload` reaches the endpoint `addr`: directly, or through the
    /// tunnel to the meshd that fronts it.
    pub fn upstream(
        &self,
        snap: &crate::config::Snapshot,
        addr: SocketAddr,
        workload: Option<&str>,
    ) -> Result<pool::Target, UpstreamError> {
        crate::tunnel::route(
            self.tunnel.as_deref(),
            snap,
            addr,
            workload,
            self.inbound_port,
        )
        .map(|via| pool::Target { addr, via })
        .map_err(|source| UpstreamError::Tunnel {
            dst: addr,
            source: Box::new(source),
        })
    }
}

/// Why an opaque TCP connection has nowhere to go.
#[derive(Debug, thiserror::Error)]
pub enum L4Error {
    #[error("{0}")]
    NoEndpoint(#[from] route::NoEndpoint),
    #[error("cannot originate TLS to {host}: DestinationRule {reason}")]
    Origination { host: String, reason: String },
    #[error(
        "no ServiceEntry describes the destination, and --outbound-traffic-policy is REGISTRY_ONLY"
    )]
    BlackHole,
}

/// An opaque TCP connection with nowhere to go, and the service it was routed to if any
/// (Istio's `BlackHoleCluster` for what REGISTRY_ONLY blocks).
#[derive(Debug)]
pub struct L4Refused {
    pub error: L4Error,
    pub service: Option<L4Service>,
}

/// Where an opaque TCP connection goes, and the limits of the service it belongs to.
pub struct L4Target {
    pub addr: SocketAddr,
    pub cluster: Option<Arc<pool::ClusterPool>>,
    pub limits: pool::Limits,
    /// The service the connection went to, when it went to one.
    pub service: Option<L4Service>,
    /// The connection counted against its endpoint for LEAST_REQUEST, while it is open.
    pub in_flight: Option<lb::InFlight>,
    /// Outlier detection of the service, fed with the connect's outcome.
    pub outlier: Option<L4Outlier>,
}

impl L4Target {
    /// Straight to the address the client dialled, as no service.
    fn direct(dst: SocketAddr) -> L4Target {
        L4Target {
            addr: dst,
            cluster: None,
            limits: pool::Limits {
                opaque: true,
                ..Default::default()
            },
            service: None,
            in_flight: None,
            outlier: None,
        }
    }
}

/// The service of an opaque connection, as its metrics and access log name it.
#[derive(Debug)]
pub struct L4Service {
    pub host: String,
    /// Istio's cluster name: the service, the route's subset and the port.
    pub cluster: String,
}

impl L4Service {
    /// Istio's cluster for what REGISTRY_ONLY blocks.
    pub fn black_hole() -> L4Service {
        let name = crate::telemetry::access_log::BLACK_HOLE_CLUSTER;
        L4Service {
            host: name.into(),
            cluster: name.into(),
        }
    }

    /// The service `d` on `port`: the route's port, else the service's only one, else the port
    /// dialled (see [`route::ClusterPolicy::port`]).
    pub fn of(d: crate::routes::Destination, port: u16) -> L4Service {
        L4Service {
            cluster: crate::telemetry::access_log::outbound_cluster(
                port,
                d.subset.as_deref(),
                &d.host,
            ),
            host: d.host,
        }
    }
}

/// What outlier detection needs to record an opaque connection's connect.
pub struct L4Outlier {
    cluster: String,
    settings: outlier::Settings,
    endpoints: Vec<SocketAddr>,
}

impl L4Target {
    /// Feeds the connect's outcome to outlier detection: a failure counts as a local-origin
    /// failure (a 5xx unless split), a connect resets the endpoint's counts, as in Envoy's
    /// TCP proxy.
    pub fn observe(&self, ctx: &HttpContext, connected: bool) {
        let Some(o) = &self.outlier else {
            return;
        };
        let outcome = if connected {
            outlier::Outcome::Status(200)
        } else {
            outlier::Outcome::LocalFailure
        };
        ctx.observe_outcome(&o.cluster, &o.settings, self.addr, outcome, &o.endpoints);
    }
}

/// The captured connection a request arrived on.
#[derive(Clone, Debug)]
pub struct Downstream {
    pub peer: SocketAddr,
    pub dst: SocketAddr,
    pub workload: Option<String>,
    /// The source workload's SPIFFE identity, when its WorkloadEntry gives one.
    pub principal: Option<std::sync::Arc<str>>,
    /// Ended when the connection closes: its partition of the pool (`proxyProtocol`) keeps no
    /// upstream connection after that.
    pub life: pool::proxy_protocol::ClientLife,
    /// The WebSocket relay, once the connection is upgraded.
    pub upgraded: Upgraded,
    /// Its requests in flight, for the idle timeout.
    pub activity: Arc<activity::Activity>,
}

/// The relay of a connection upgraded to WebSocket. The connection's own task runs it once
/// hyper has handed the connection over, so the connection stays listed, counted and drained
/// (closed at the drain deadline) for as long as it is open.
#[derive(Clone, Default)]
pub struct Upgraded(Arc<std::sync::Mutex<Option<upgrade::Relay>>>);

use upgrade::Relay;

impl Upgraded {
    fn set(&self, relay: Relay) {
        *self.0.lock().expect("upgrade lock") = Some(relay);
    }

    fn take(&self) -> Option<Relay> {
        self.0.lock().expect("upgrade lock").take()
    }
}

/// Drops a relay left unrun when the connection's task ends, however it ends (aborted at a
/// drain's deadline or with its pod): the relay holds its request's record, which holds the
/// connection, so it would otherwise outlive both.
struct ForgetRelay(Upgraded);

impl Drop for ForgetRelay {
    fn drop(&mut self) {
        drop(self.0.take());
    }
}

impl std::fmt::Debug for Upgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Upgraded")
    }
}

impl Downstream {
    /// `proxyProtocol` under `policy` for a request of this connection: the header new upstream
    /// connections open with, and this connection as the owner of the partition of the pool
    /// they join (nothing when the rule has none).
    fn proxy_protocol(&self, policy: &route::ClusterPolicy<'_>, limits: &mut Limits) {
        limits.proxy_protocol = policy.proxy_header(self.peer, self.dst);
        limits.client = limits.proxy_protocol.is_some().then(|| self.life.clone());
    }
}

/// How long an idle client connection is given to close after its GOAWAY: Envoy's default
/// `drain_timeout`.
const IDLE_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves a connection until it ends; once meshd drains, or once the connection has been idle
/// for `--http-idle-timeout`, gracefully, as Envoy closes its HTTP connections then: an
/// HTTP/1.1 connection closes after the response in flight (with `Connection: close`), or at
/// once when idle; an HTTP/2 one gets a GOAWAY and ends with its open streams.
/// (The connection type's bounds make a macro simpler than a function.)
macro_rules! until_drained {
    ($conn:expr, $drain:expr, $draining:expr, $idle:expr) => {{
        let mut conn = std::pin::pin!($conn);
        if $draining {
            conn.await
        } else {
            tokio::select! {
                biased;
                served = conn.as_mut() => served,
                () = $drain.started() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
                () = $idle => {
                    tracing::debug!("closing an idle client connection");
                    conn.as_mut().graceful_shutdown();
                    // As Envoy's drain after its idle timeout: an HTTP/2 client that leaves
                    // the GOAWAY's PING unanswered is closed all the same once the drain time
                    // is over (it has no stream open, or it would not be idle).
                    match tokio::time::timeout(IDLE_DRAIN, conn).await {
                        Ok(served) => served,
                        Err(_) => Ok(()),
                    }
                }
            }
        }
    }};
}

/// Serves HTTP on a captured connection until the client closes it. `h2` says the connection
/// was found (or declared) to speak HTTP/2; either version is still served.
pub async fn serve(stream: TcpStream, down: Downstream, ctx: Arc<HttpContext>, h2: bool) {
    let down = Arc::new(down);
    let upgraded = ForgetRelay(down.upgraded.clone());
    let drain = ctx.drain.clone();
    // A connection accepted while meshd drains is served, one request at a time: an HTTP/1.1
    // one is closed after its first response.
    let draining = drain.draining();
    let (down_log, ctx_log) = (down.clone(), ctx.clone());
    let (activity, idle_timeout) = (down.activity.clone(), ctx.idle_timeout);
    let idle = async move {
        match idle_timeout {
            Some(t) => activity.idle_for(t).await,
            None => std::future::pending().await,
        }
    };
    // What the client connection's end releases: its PROXY protocol partitions of the pool.
    let (pool, client, life) = (ctx.pool.clone(), (down.peer, down.dst), down.life.clone());
    // Closed with a lingering close, by the server or by an upgraded stream.
    let (stream, verdicts) =
        framing::Guarded::new(linger::Lingering::new(stream), ctx.max_header_bytes);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(ctx.max_header_bytes.max(8192))
        // One flattened buffer per write: for small messages, measured cheaper than queued
        // vectored writes (bench http).
        .writev(false)
        .keep_alive(!draining);
    // A request head that takes longer than the idle timeout to arrive closes the connection
    // (a client holding a half-sent head would hold it for ever): timed from its first byte.
    if let Some(t) = ctx.idle_timeout {
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(t);
    }
    // The same limit on an HTTP/2 request's headers (h2's own default is 16 KiB), enforced by
    // meshd's pipeline so that a refusal is logged and counted (431, flag DPE) as an HTTP/1
    // one is; h2 itself refuses past twice the limit (431, unlogged: a list that large is
    // not read at all).
    let h2_header_list = ctx.max_header_bytes.saturating_mul(2);
    builder
        .http2()
        .max_header_list_size(u32::try_from(h2_header_list).unwrap_or(u32::MAX))
        // Envoy's default (hyper's is 200): a client's streams are bounded by its workload's
        // requests in flight (`--workload-max-requests`), not per connection.
        .max_concurrent_streams(MAX_CLIENT_STREAMS);
    let io = TokioIo::new(stream);
    let served = if h2 {
        // Boxed: hyper's HTTP/2 server runs each stream as a task of its own, and moved the
        // request's whole future state (kilobytes) into it several times per request; a box
        // moves as a pointer. HTTP/1.1 keeps the future in place, where a box would only add
        // a copy.
        let svc = service_fn(move |req| {
            Box::pin(forward::handle(
                req,
                down.clone(),
                ctx.clone(),
                verdicts.clone(),
            ))
        });
        let conn = builder.serve_connection_with_upgrades(io, svc);
        until_drained!(conn, drain, draining, idle)
    } else {
        let svc = service_fn(move |req| {
            forward::handle(req, down.clone(), ctx.clone(), verdicts.clone())
        });
        let conn = builder.serve_connection_with_upgrades(io, svc);
        until_drained!(conn, drain, draining, idle)
    };
    if let Some(relay) = upgraded.0.take() {
        relay.run.await;
    }
    if let Err(e) = served {
        // A head hyper refused (it answered 400 or 431 itself) is logged and counted as a
        // request, as Envoy logs its downstream protocol errors.
        if let Some(h) = e.downcast_ref::<hyper::Error>()
            && h.is_parse()
        {
            request_log::log_refused(down_log, ctx_log, h.is_parse_too_large(), h.to_string());
        }
        tracing::debug!(error = %e, "downstream HTTP connection ended with an error");
    }
    // Ended first: a request still in flight (a mirror's) then closes its upstream connection
    // rather than give it back to the partition forgotten here.
    life.end();
    pool.forget_client(client.0, client.1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v2_policy: &str, extra: &str) -> crate::policy::PolicySet {
        let yaml = format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r, namespace: default}}\n\
             spec:\n  host: reviews\n{extra}  subsets:\n  - name: v1\n    labels: {{version: v1}}\n\
             \x20 - name: v2\n    labels: {{version: v2}}\n{v2_policy}"
        );
        crate::policy::load_str("t.yaml".as_ref(), &yaml).expect("valid")
    }

    /// A reload reaches the clusters whose rule changed: a subset's own edit only that
    /// subset's, an edit outside the subsets every cluster of the host.
    #[test]
    fn a_rule_change_reaches_only_the_clusters_it_changes() {
        let before = set("", "");
        let host = "reviews.default.svc.cluster.local";
        let v2_edit = set("    trafficPolicy: {tls: {mode: DISABLE}}\n", "");
        let changes = changed_rules(&before, &v2_edit);
        assert_eq!(
            changes,
            vec![outlier::RuleChange {
                host: host.into(),
                every_cluster: false,
                subsets: vec!["v2".into()],
            }]
        );
        let top_edit = set("", "  trafficPolicy: {tls: {mode: DISABLE}}\n");
        assert_eq!(
            changed_rules(&before, &top_edit),
            vec![outlier::RuleChange::every(host.into())]
        );
        assert!(changed_rules(&before, &set("", "")).is_empty());
        // Moved to another host: every cluster of both.
        let yaml = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r, namespace: default}\nspec: {host: ratings}\n";
        let moved = crate::policy::load_str("t.yaml".as_ref(), yaml).expect("valid");
        assert_eq!(
            changed_rules(&before, &moved),
            vec![
                outlier::RuleChange::every("ratings.default.svc.cluster.local".into()),
                outlier::RuleChange::every(host.into()),
            ]
        );
    }
}
