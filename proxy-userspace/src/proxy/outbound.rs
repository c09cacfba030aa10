//! The outbound listener: accepts connections that connect4/6 redirected, recovers where each
//! was going, connects there, and copies bytes both ways until both sides have closed.

use std::{net::SocketAddr, os::fd::AsRawFd, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncWriteExt, copy_bidirectional_with_sizes},
    net::{TcpListener, TcpStream},
    task::JoinSet,
};
use tracing::{Instrument, debug, info_span, warn};

use super::{
    connections::{ConnectionInfo, Connections, unix_ms},
    copy::{self, FIRST_BUF},
    fairness::Shed,
    http::{self, Counter, HttpContext, UpstreamError},
    idle,
    sniff::{self, Detected},
    sockopt, spliced,
};
use crate::{
    drain,
    ebpf::DatapathMaps,
    metrics::Metrics,
    telemetry::{
        Entry, TcpLabels,
        access_log::{self, rfc3339},
        istio::split_workload,
        tcp_report::{Carried, Reported},
    },
    workloads::Registry,
};

/// How long a connection over its workload's allowance waits, unread, for a place.
const CONNECTION_PATIENCE: Duration = Duration::from_secs(10);

/// What every outbound connection needs, shared across listeners.
pub struct Outbound {
    pub maps: Arc<DatapathMaps>,
    pub workloads: Arc<Registry>,
    pub connections: Arc<Connections>,
    pub metrics: Arc<Metrics>,
    /// How long to wait for a client's first bytes before treating the connection as opaque.
    pub detect_timeout: Duration,
    pub http: Arc<HttpContext>,
    /// meshd's own listener addresses: a connection "originally" headed there is a loop.
    pub own: Vec<SocketAddr>,
    /// Move streaming opaque connections with splice(2) (never set with the sockmap on).
    pub zero_copy: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error(
        "no original destination for the connection from {peer}: it was not redirected by \
         meshd's connect hook (a client connected to the outbound port directly?): {source}"
    )]
    NoOriginalDst {
        peer: SocketAddr,
        source: std::io::Error,
    },
    #[error("the original destination {0} is meshd's own listener; refusing to loop")]
    Loop(SocketAddr),
    #[error("connecting to {dst} failed: {source}")]
    Connect {
        dst: SocketAddr,
        source: std::io::Error,
    },
    #[error("connecting to {dst} timed out after {after:?}")]
    ConnectTimeout { dst: SocketAddr, after: Duration },
    #[error("connection shed: {0}")]
    Shed(#[from] Shed),
    #[error("{0}")]
    Tunnel(String),
    #[error("connection denied by authorization policy: {0}")]
    Denied(String),
    #[error("connection shed: {cluster} is at its connectionPool limit maxConnections: {limit}")]
    Overflow { cluster: String, limit: u32 },
    #[error("{0}")]
    NoHealthyUpstream(http::NoEndpoint),
    #[error("{0}")]
    BlackHole(http::L4Error),
    #[error("the client left while its connection opened: {0}")]
    ClientGone(std::io::Error),
    #[error("{0}")]
    Origination(String),
    /// Any other failure to open the upstream (TLS origination's handshake, a forward proxy's
    /// refusal).
    #[error("{0}")]
    Upstream(UpstreamError),
}

impl OutboundError {
    /// The `result` label of `meshd_connections_total`.
    pub fn label(&self) -> &'static str {
        match self {
            OutboundError::NoOriginalDst { .. } => "no_original_dst",
            OutboundError::Loop(_) => "loop",
            OutboundError::Connect { .. } => "upstream_connect_failed",
            OutboundError::ConnectTimeout { .. } => "upstream_connect_timeout",
            OutboundError::Shed(_) => "workload_overflow",
            OutboundError::Tunnel(_) => "tunnel_failed",
            OutboundError::Denied(_) => "denied",
            OutboundError::Overflow { .. } => "upstream_overflow",
            OutboundError::NoHealthyUpstream(_) => "no_healthy_upstream",
            OutboundError::BlackHole(_) => "black_hole",
            OutboundError::ClientGone(_) => "client_gone",
            OutboundError::Origination(_) => "tls_origination_failed",
            OutboundError::Upstream(_) => "upstream_connect_failed",
        }
    }

    /// Envoy's response flag for the connection's record.
    fn flag(&self) -> &'static str {
        match self {
            OutboundError::Shed(_) | OutboundError::Overflow { .. } => "UO",
            // Envoy's RBAC filter closes the connection without a response flag.
            OutboundError::Denied(_) => "-",
            OutboundError::NoHealthyUpstream(e)
                if e.flag() == http::ResponseFlags::NO_CLUSTER_FOUND =>
            {
                "NC"
            }
            // Istio's BlackHoleCluster is a cluster without endpoints.
            OutboundError::NoHealthyUpstream(_) | OutboundError::BlackHole(_) => "UH",
            OutboundError::ClientGone(_) => "DC",
            _ => "UF",
        }
    }
}

/// Serves one listener until draining starts, then waits up to `deadline` for its connections
/// before closing them.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<Outbound>,
    drain: drain::Watch,
    deadline: Duration,
) {
    serve_for(listener, None, ctx, drain, deadline).await
}

/// Like [`serve`], for a listener that only one workload can reach (one opened inside its
/// network namespace): its connections are that workload's.
pub async fn serve_for(
    listener: TcpListener,
    workload: Option<u32>,
    ctx: Arc<Outbound>,
    drain: drain::Watch,
    deadline: Duration,
) {
    let ipv6 = listener.local_addr().map(|a| a.is_ipv6()).unwrap_or(false);
    let mut conns = JoinSet::new();
    // Once draining, the deadline for the connections still open.
    let mut until: Option<tokio::time::Instant> = None;
    loop {
        let expires = async {
            match until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let ctx = ctx.clone();
                    conns.spawn(async move { handle(stream, peer, ipv6, workload, ctx).await });
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {
                if until.is_some() && conns.is_empty() {
                    break;
                }
            }
            // As Envoy's listeners during a drain, this one still accepts: the eBPF programs
            // send workloads' connects here until meshd detaches them on exit, and a refused
            // connect would fail the workload. HTTP connections close gracefully (see
            // `http::serve`); the drain ends when none is left, or at the deadline.
            _ = drain.started(), if until.is_none() => {
                if conns.is_empty() {
                    break;
                }
                tracing::info!(open = conns.len(), ?deadline, "waiting for open connections to finish");
                until = Some(tokio::time::Instant::now() + deadline);
            }
            () = expires => {
                warn!(
                    open = conns.len(),
                    "drain deadline passed; closing the remaining connections"
                );
                conns.shutdown().await;
                break;
            }
        }
    }
}

async fn handle(
    down: TcpStream,
    peer: SocketAddr,
    ipv6: bool,
    source: Option<u32>,
    ctx: Arc<Outbound>,
) {
    let id = ctx.connections.next_id();
    let span = info_span!("conn", id, %peer);
    async move {
        let down_cookie = sockopt::cookie(&down).unwrap_or(0);
        match proxy(down, peer, ipv6, source, down_cookie, id, &ctx).await {
            Ok(()) => ctx.metrics.connection_done("ok"),
            Err(e) => {
                ctx.maps.forget_conn(down_cookie);
                if e.flag() == "UO" {
                    // Shedding is the intended answer to a flood; logging each would add to it.
                    debug!(error = %e, "connection failed");
                } else {
                    warn!(error = %e, "connection failed");
                }
                ctx.metrics.connection_done(e.label());
            }
        }
    }
    .instrument(span)
    .await
}

/// How long a client's first bytes may take on a port declared TCP, when a DestinationRule
/// would originate TLS: a client that speaks TLS itself is not wrapped again.
const CLIENT_TLS_WAIT: Duration = Duration::from_millis(50);

/// How long a ClientHello may take where a server name can route the connection: a TLS client
/// speaks first and sends it whole, so this bounds only a client that stalls (Envoy's TLS
/// inspector under Istio waits without a limit). Routing by a name cut short by a shorter wait
/// sent connections whose hello came late, or in pieces, to the wrong backend.
const SNI_WAIT: Duration = Duration::from_secs(5);

/// How long the rest of a ClientHello begun is waited on when its server name is only logged.
const HELLO_REST_WAIT: Duration = Duration::from_millis(100);

/// When meshd accepted a connection: its record's start, as Envoy's access log starts a
/// connection's line at the accept (not after protocol detection or a wait for a share).
#[derive(Clone, Copy)]
struct Accepted {
    at: std::time::Instant,
    unix_ms: u64,
}

impl Accepted {
    fn now() -> Accepted {
        Accepted {
            at: std::time::Instant::now(),
            unix_ms: unix_ms(),
        }
    }
}

/// Who opened a connection, to where, and when: what its record starts from.
#[derive(Clone, Copy)]
struct Client<'a> {
    accepted: Accepted,
    peer: SocketAddr,
    /// The original destination.
    dst: SocketAddr,
    workload: Option<&'a str>,
    principal: Option<&'a str>,
}

/// Logs and counts a connection refused before it went anywhere (its original destination
/// stands for its upstream; the service is the one whose VIP it is, if any), and gives back why.
fn refused_early(ctx: &Outbound, client: &Client<'_>, e: OutboundError) -> OutboundError {
    let snap = ctx.http.config.current();
    let compiled = &snap.compiled;
    let host = (compiled.vip_host(client.dst)).or_else(|| compiled.port_wide_host(client.dst));
    let service = host.map(|host| {
        http::L4Service::of(
            crate::routes::Destination::service(host, client.dst.port()),
            client.dst.port(),
        )
    });
    TcpRecord::new(ctx, client, service, None).failed(ctx, &e);
    e
}

/// The first byte the client sent, if one is waiting (never waits).
fn first_byte(down: &TcpStream) -> Option<u8> {
    let mut buf = [0u8];
    (sockopt::peek_waiting(down, &mut buf).ok() == Some(1)).then_some(buf[0])
}

async fn proxy(
    mut down: TcpStream,
    peer: SocketAddr,
    ipv6: bool,
    source: Option<u32>,
    down_cookie: u64,
    id: u64,
    ctx: &Outbound,
) -> Result<(), OutboundError> {
    let accepted = Accepted::now();
    let dst = sockopt::original_dst(&down, ipv6)
        .map_err(|source| OutboundError::NoOriginalDst { peer, source })?;
    if ctx.own.contains(&dst) {
        sockopt::set_reset_on_close(&down);
        return Err(OutboundError::Loop(dst));
    }
    // A listener inside a workload's namespace names its workload; on the host's, the record
    // connect4/6 made for the workload's socket does.
    let source = source.or_else(|| {
        let netns = crate::pods::netns::cookie(&down).ok()?;
        ctx.maps.orig_dst(netns, peer).map(|o| o.workload_id)
    });
    let workload = source
        .and_then(|id| ctx.workloads.get(id))
        .map(|w| w.workload);
    // The source's SPIFFE identity, for the metrics' source_principal.
    let principal: Option<Arc<str>> = workload.as_deref().and_then(|w| {
        let snap = ctx.http.config.current();
        crate::tunnel::source_identity(&ctx.http.trust_domain, &snap, Some(w))
            .ok()
            .map(|id| id.to_string().into())
    });
    let client = Client {
        accepted,
        peer,
        dst,
        workload: workload.as_deref(),
        principal: principal.as_deref(),
    };
    // The workload's share of the node proxy, held for the connection's life.
    let _share = match ctx
        .http
        .fairness
        .connection_or_wait(workload.as_deref(), CONNECTION_PATIENCE)
        .await
    {
        Ok(held) => held,
        Err(shed) => {
            sockopt::set_reset_on_close(&down);
            ctx.metrics
                .overflow("workload", &shed.workload, &shed.kind.to_string());
            // Logged and counted as a connection, flag UO, as Envoy records its overflows.
            let e = OutboundError::from(shed);
            return Err(refused_early(ctx, &client, e));
        }
    };
    // A protocol declared on the ServiceEntry port wins over sniffing.
    let declared = ctx.http.config.current().compiled.declared_protocol(dst);
    let detected = match declared {
        // A port declared HTTP, HTTP2 or gRPC is served as HTTP whatever comes, but the first
        // bytes still tell which version, for /connections (the server tells them apart itself).
        Some(d @ (Detected::Http1 | Detected::Http2)) => {
            match sniff::detect(&down, ctx.detect_timeout).await {
                Detected::Opaque => d,
                sniffed => sniffed,
            }
        }
        Some(d) => d,
        None => sniff::detect(&down, ctx.detect_timeout).await,
    };
    let protocol = match detected {
        Detected::Http1 => "http/1.1",
        Detected::Http2 => "h2",
        Detected::Opaque => "tcp",
    };
    let tracked = ctx.connections.track(ConnectionInfo {
        id,
        workload: workload.clone(),
        source: peer,
        destination: dst,
        protocol,
        started_unix_ms: accepted.unix_ms,
        downstream_cookie: down_cookie,
        upstream_cookie: None,
    });
    let _active = ctx.metrics.connection_open();
    if detected != Detected::Opaque {
        let _ = down.set_nodelay(true);
        debug!(workload = workload.as_deref().unwrap_or("-"), %dst, protocol, "serving HTTP");
        http::serve(
            down,
            http::Downstream {
                peer,
                dst,
                workload,
                principal,
                life: Default::default(),
                upgraded: Default::default(),
                activity: Default::default(),
            },
            ctx.http.clone(),
            detected == Detected::Http2,
        )
        .await;
        return Ok(());
    }

    // The server name of a TLS ClientHello, read only when some VirtualService routes by it or
    // a ServiceEntry declares the port TLS or HTTPS (its hosts are known by name), and only
    // where one can come, as Istio applies `tls` routes: on a port declared TLS or HTTPS, or
    // an undeclared one whose first byte, seen by sniffing, opens a TLS handshake. A port
    // declared TCP, MySQL, ... (server-first protocols among them) never waits for one.
    let sni_wait = {
        let snap = ctx.http.config.current();
        let by_name = snap.compiled.tcp_routes.has_tls() || snap.compiled.tls_port(dst.port());
        match (by_name, declared) {
            (false, _) => None,
            (true, Some(_)) => snap.compiled.declares_tls_at(dst).then_some(SNI_WAIT),
            (true, None) => {
                (first_byte(&down) == Some(crate::proxy::sni::HANDSHAKE)).then_some(SNI_WAIT)
            }
        }
    };
    let sni = match sni_wait {
        Some(wait) => crate::proxy::sni::peek(&down, wait).await,
        None => None,
    };
    // Otherwise the name is still read for the access log's `requested_server_name`, as
    // Istio's TLS inspector reads it: from a ClientHello already there, or whose rest is on its
    // way (a hello larger than a packet, with post-quantum key shares); it routes nothing.
    let logged_sni = match (&sni, sni_wait) {
        (None, None) if first_byte(&down) == Some(crate::proxy::sni::HANDSHAKE) => {
            use crate::proxy::sni::{Hello, peek, peek_now};
            match peek_now(&down) {
                Hello::Name(name) => Some(name),
                Hello::Incomplete => peek(&down, HELLO_REST_WAIT).await,
                Hello::None => None,
            }
        }
        _ => sni.clone(),
    };
    let target = match ctx
        .http
        .l4_target(peer, dst, workload.as_deref(), sni.as_deref())
    {
        Ok(t) => t,
        Err(refused) => {
            sockopt::set_reset_on_close(&down);
            let e = match refused.error {
                http::L4Error::NoEndpoint(e) => OutboundError::NoHealthyUpstream(e),
                origination @ http::L4Error::Origination { .. } => {
                    OutboundError::Origination(origination.to_string())
                }
                blocked @ http::L4Error::BlackHole => OutboundError::BlackHole(blocked),
            };
            // Logged as the service (and subset) it was routed to.
            let mut record = TcpRecord::new(ctx, &client, refused.service, None);
            record.entry.requested_server_name = logged_sni.unwrap_or_default().into();
            record.failed(ctx, &e);
            return Err(e);
        }
    };
    // A client that speaks TLS itself is not wrapped in the TLS a DestinationRule originates.
    // Sniffing has already waited for the first bytes of an undeclared port; on a declared
    // one they are given a moment.
    let mut target = target;
    if target.limits.tls.is_some() {
        let wait = match declared {
            Some(_) => CLIENT_TLS_WAIT,
            None => Duration::ZERO,
        };
        if sniff::starts_tls(&down, wait).await {
            debug!(%dst, "the client speaks TLS: not originating TLS");
            target.limits.tls = None;
        }
    }
    let upstream = target.addr;
    let mut record = TcpRecord::new(ctx, &client, target.service.take(), Some(upstream));
    record.entry.requested_server_name = logged_sni.unwrap_or_default().into();
    // `tcp.maxConnections` of the service: the slot is held while the connection is open.
    let _slot = match &target.cluster {
        Some(c) => match c.try_slot(Counter::Connections, target.limits.max_connections) {
            Some(slot) => Some(slot),
            None => {
                sockopt::set_reset_on_close(&down);
                ctx.metrics.overflow("cluster", &c.name, "maxConnections");
                let e = OutboundError::Overflow {
                    cluster: c.name.clone(),
                    limit: target.limits.max_connections,
                };
                // As Envoy's TCP proxy, whose breaker refuses before a host is chosen.
                record.entry.upstream_host = "".into();
                record.entry.destination_workload = "".into();
                record.failed(ctx, &e);
                return Err(e);
            }
        },
        None => None,
    };
    // An endpoint behind another meshd is reached through the mTLS tunnel; one on this node is
    // authorized here, before a byte flows, and again at each reload while it is open.
    let applied = ctx.http.config.applied();
    let snap = ctx.http.config.current();
    let down_view = http::Downstream {
        peer,
        dst,
        workload: workload.clone(),
        principal: principal.clone(),
        life: Default::default(),
        upgraded: Default::default(),
        activity: Default::default(),
    };
    if let Some(reason) = http::authorize::connection(&ctx.http, &snap, &down_view, upstream) {
        sockopt::set_reset_on_close(&down);
        let e = OutboundError::Denied(reason);
        record.failed(ctx, &e);
        return Err(e);
    }
    let via = ctx.http.upstream(&snap, upstream, workload.as_deref());
    drop(snap);
    match via {
        // Through the tunnel, or inside TLS that meshd originates: a stream, not a socket.
        Ok(t) if t.via.is_some() || target.limits.tls.is_some() => {
            let streamed = streamed(down, &t, &target, record, ctx, &tracked);
            return Box::pin(streamed).await;
        }
        Ok(_) => {}
        Err(e) => {
            sockopt::set_reset_on_close(&down);
            let e = OutboundError::Tunnel(e.to_string());
            record.failed(ctx, &e);
            return Err(e);
        }
    }
    // The endpoint is reached, announced the client (`proxyProtocol`) and, behind a forward
    // proxy (`tunnel`), CONNECTed through.
    let connected = async {
        let pool = &ctx.http.pool;
        let mut up = pool.connect_direct(upstream, &target.limits).await?;
        let after = pool.connect_timeout(&target.limits);
        let early = http::open_tunnel(&mut up, &target.limits, upstream, after).await?;
        Ok((up, early))
    }
    .await;
    target.observe(&ctx.http, connected.is_ok());
    let up = match settle(&mut down, connected).await {
        Ok(up) => up,
        Err(e) => {
            record.failed(ctx, &e);
            return Err(e);
        }
    };
    record.labels.security_policy = "none";
    record.as_destination = record.to_local_workload;
    record.opened(ctx);
    let _ = up.set_nodelay(true);
    let _ = down.set_nodelay(true);
    if let Ok(c) = sockopt::cookie(&up) {
        tracked.set_upstream(c);
    }
    debug!(workload = workload.as_deref().unwrap_or("-"), %dst, "proxying");
    let sockets = [down.as_raw_fd(), up.as_raw_fd()];
    let carry = async {
        match ctx.maps.splicing() {
            Some(maps) => spliced::carry(&down, up, maps, ctx.zero_copy).await,
            None => copy::relay(&down, &up, ctx.zero_copy).await,
        }
    };
    // What the two sockets have carried, however it was carried: reported while the
    // connection is open, and watched for its idle timeout.
    let read = || Carried::of_sockets(Some(sockets[0]), Some(sockets[1]));
    let istio = &ctx.metrics.istio;
    let labels = &record.labels;
    let as_destination = record.destination_labels();
    // Boxed: each of the limits below wraps the carry, and a future held by value is laid
    // out once per state of each wrapper. Unboxed, the three layers made every connection's
    // task 51 KiB, HTTP ones included (the size of its largest branch); boxed, the carry
    // costs one allocation of 2.6 KiB, only for an opaque connection.
    let carry = Box::pin(
        (record.reported).during(carry, istio.tcp_reporting(), read, |c| {
            istio.tcp_bytes(labels, c);
            if let Some(d) = &as_destination {
                istio.tcp_bytes(d, c);
            }
        }),
    );
    let moved = || read().map(|c| c.to_destination + c.from_destination);
    let bounded = idle::bounded(carry, target.limits.tcp_idle_timeout, sockets, moved);
    let lasting = idle::at_most(bounded, target.limits.max_connection_duration, sockets);
    let revoked = revoked_later(ctx, applied, &down_view, upstream);
    let (((copied, idled), cut), revoked) = idle::until(lasting, sockets, revoked).await;
    if let Some(reason) = revoked {
        tracing::info!(%peer, %dst, %reason, "connection closed after a policy change");
        record.revoked(&reason);
    }
    if idled {
        debug!(%dst, "idle timeout: connection closed");
        record.idled();
    }
    if cut {
        debug!(%dst, "maximum duration: connection closed");
        record.lived_out();
    }
    let (to_up, to_down) = match copied {
        Ok((up, down)) => {
            ctx.metrics.zero_copy_bytes(up.zero_copy, down.zero_copy);
            (up.bytes, down.bytes)
        }
        // Ended by a reset or an error: what it carried until then.
        Err(e) => {
            debug!(error = %e, "connection ended with an error");
            copy::Partial::of(&e).map_or((0, 0), |(up, down)| (up.bytes, down.bytes))
        }
    };
    ctx.metrics.bytes(to_up, to_down);
    let (dk, uk) = ctx.connections.counters(tracked.id());
    record.kernel(ctx, uk);
    record.closed(ctx, to_up, to_down);
    debug!(to_up, to_down, downstream = ?dk, upstream = ?uk, "connection closed");
    Ok(())
}

/// Ends, with the reason, once a configuration applied after the connection opened denies it,
/// as ztunnel closes the connections a new policy no longer allows; never otherwise.
async fn revoked_later(
    ctx: &Outbound,
    mut applied: tokio::sync::watch::Receiver<u64>,
    down: &http::Downstream,
    upstream: SocketAddr,
) -> String {
    while applied.changed().await.is_ok() {
        let snap = ctx.http.config.current();
        if let Some(reason) = http::authorize::connection_revoked(&ctx.http, &snap, down, upstream)
        {
            return reason;
        }
    }
    std::future::pending().await
}

/// The upstream once it opened, with what the target sent while a forward proxy's tunnel
/// opened (usually nothing) written to the client first; else why it did not open (and the
/// client's connection set to close with a reset).
async fn settle<S>(
    down: &mut TcpStream,
    opened: Result<(S, Vec<u8>), UpstreamError>,
) -> Result<S, OutboundError> {
    match opened {
        Ok((up, early)) => {
            if !early.is_empty() {
                (down.write_all(&early).await).map_err(OutboundError::ClientGone)?;
            }
            Ok(up)
        }
        Err(failure) => {
            sockopt::set_reset_on_close(down);
            Err(not_opened(failure))
        }
    }
}

/// Why the upstream of an opaque connection did not open.
fn not_opened(failure: UpstreamError) -> OutboundError {
    match failure {
        UpstreamError::ConnectTimeout { dst, after } => {
            OutboundError::ConnectTimeout { dst, after }
        }
        UpstreamError::Connect { dst, source } => OutboundError::Connect { dst, source },
        tunnel @ UpstreamError::Tunnel { .. } => OutboundError::Tunnel(tunnel.to_string()),
        other => OutboundError::Upstream(other),
    }
}

/// An opaque connection carried as a stream: through the tunnel to the meshd that fronts its
/// endpoint, or inside TLS that meshd originates (DestinationRule `tls`), or both.
async fn streamed(
    mut down: TcpStream,
    target: &http::Target,
    l4: &http::L4Target,
    mut record: TcpRecord,
    ctx: &Outbound,
    tracked: &super::connections::Tracked,
) -> Result<(), OutboundError> {
    record.labels.security_policy = match target.via {
        Some(_) => "mutual_tls",
        None => "none",
    };
    // The stream to the endpoint, and through it the forward proxy's CONNECT (`tunnel`).
    let dialled = async {
        let pool = &ctx.http.pool;
        let (mut up, cookie) = pool.dial_socket(target, &l4.limits).await?;
        if let Some(c) = cookie {
            tracked.set_upstream(c);
        }
        let after = pool.connect_timeout(&l4.limits);
        let early = http::open_tunnel(&mut up, &l4.limits, target.addr, after).await?;
        Ok::<_, UpstreamError>((up, early))
    }
    .await;
    // What this side sees of the endpoint: whether its stream opened.
    l4.observe(&ctx.http, dialled.is_ok());
    let mut up = match settle(&mut down, dialled).await {
        Ok(up) => up,
        Err(e) => {
            record.failed(ctx, &e);
            return Err(e);
        }
    };
    ctx.metrics.istio.tcp_opened(&record.labels);
    let _ = down.set_nodelay(true);
    debug!(dst = %target.addr, via = ?target.via.as_ref().map(|v| v.node), "proxying a stream");
    // What the client's socket carried, in both directions: reported while the connection is
    // open, watched for its idle timeout, and the count when the carry ends short.
    let client = down.as_raw_fd();
    let read = || Carried::of_sockets(Some(client), None);
    // A TLS record and an HTTP/2 DATA frame carry at most 16 KiB: larger buffers (tokio
    // allocates both at the start) would only hold memory for the connection's life.
    let carry = copy_bidirectional_with_sizes(&mut down, &mut up, FIRST_BUF, FIRST_BUF);
    let istio = &ctx.metrics.istio;
    let labels = &record.labels;
    let carry = (record.reported).during(carry, istio.tcp_reporting(), read, |c| {
        istio.tcp_bytes(labels, c)
    });
    let activity = || read().map(|c| c.to_destination + c.from_destination);
    let bounded = idle::or_dropped(carry, l4.limits.tcp_idle_timeout, activity);
    let ended = match l4.limits.max_connection_duration {
        Some(max) => tokio::time::timeout(max, bounded).await.ok(),
        None => Some(bounded.await),
    };
    let socket = || read().unwrap_or_default().pair();
    let (to_up, to_down) = match ended {
        Some(Some(Ok(carried))) => carried,
        // Ended by an error: what the client's socket carried until then.
        Some(Some(Err(_))) => socket(),
        // Closed for its idle timeout or maximum duration: what the client's socket moved is
        // what was carried.
        cut => {
            match cut {
                Some(None) => record.idled(),
                _ => record.lived_out(),
            }
            debug!(dst = %target.addr, "idle timeout or maximum duration: connection closed");
            socket()
        }
    };
    ctx.metrics.bytes(to_up, to_down);
    // The kernel's view of a direct upstream socket (TLS over TCP; not the shared tunnel).
    record.kernel(ctx, ctx.connections.counters(tracked.id()).1);
    record.closed(ctx, to_up, to_down);
    Ok(())
}

/// Istio's TCP metrics and the access-log line of one L4 connection.
struct TcpRecord {
    labels: TcpLabels,
    entry: Entry<'static>,
    start: std::time::Instant,
    /// The bytes reported while the connection was open.
    reported: Reported,
    /// Its upstream is a mesh workload on this node (see `tunnel::local_workload`).
    to_local_workload: bool,
    /// Reported by its destination too: it reaches a mesh workload on this node in plaintext,
    /// as that workload's inbound sidecar would report it.
    as_destination: bool,
}

impl TcpRecord {
    fn new(
        ctx: &Outbound,
        client: &Client<'_>,
        service: Option<http::L4Service>,
        upstream: Option<SocketAddr>,
    ) -> TcpRecord {
        let Client {
            accepted,
            peer,
            dst,
            workload,
            principal,
        } = *client;
        let snap = ctx.http.config.current();
        let passthrough = service.is_none();
        let (service, cluster) = match service {
            Some(s) => (s.host, s.cluster),
            None => (dst.to_string(), access_log::PASSTHROUGH_CLUSTER.to_string()),
        };
        let dest_workload = upstream.and_then(|u| snap.compiled.endpoints.workload(u).cloned());
        let to_local_workload = upstream.is_some_and(|u| {
            let (node, inbound) = (ctx.http.node_address, ctx.http.inbound_port);
            crate::tunnel::local_workload(&snap, u, node, inbound).is_some()
        });
        let (source_workload, source_namespace) = split_workload(workload);
        let (destination_workload, destination_namespace) =
            split_workload(dest_workload.as_deref());
        TcpRecord {
            labels: TcpLabels {
                source_workload: source_workload.to_string(),
                source_namespace: source_namespace.to_string(),
                destination_service: service.clone(),
                destination_workload: destination_workload.to_string(),
                destination_namespace: destination_namespace.to_string(),
                response_flags: "-".into(),
                reporter: "source",
                source_principal: principal.unwrap_or("unknown").into(),
                security_policy: "unknown",
                passthrough,
            },
            entry: Entry {
                start_time: rfc3339(accepted.unix_ms).into(),
                protocol: "tcp".into(),
                upstream_cluster: cluster.into(),
                // None chosen: null, as Envoy's `%UPSTREAM_HOST%`.
                upstream_host: upstream.map(|u| u.to_string()).unwrap_or_default().into(),
                downstream_local_address: dst.to_string().into(),
                downstream_remote_address: peer.to_string().into(),
                source_workload: workload.unwrap_or_default().to_string().into(),
                // As on an HTTP request's line: the source's SPIFFE ID, empty when unknown.
                source_principal: principal.unwrap_or_default().to_string().into(),
                destination_workload: dest_workload.unwrap_or_default().into(),
                response_flags: "-".into(),
                ..Entry::default()
            },
            start: accepted.at,
            reported: Reported::default(),
            to_local_workload,
            as_destination: false,
        }
    }

    /// The connection's labels as its destination reports it, when meshd reports it so.
    fn destination_labels(&self) -> Option<TcpLabels> {
        self.as_destination.then(|| TcpLabels {
            reporter: "destination",
            security_policy: "none",
            ..self.labels.clone()
        })
    }

    fn opened(&self, ctx: &Outbound) {
        ctx.metrics.istio.tcp_opened(&self.labels);
        if let Some(d) = self.destination_labels() {
            ctx.metrics.istio.tcp_opened(&d);
        }
    }

    fn failed(mut self, ctx: &Outbound, e: &OutboundError) {
        self.labels.response_flags = e.flag().into();
        ctx.metrics.istio.tcp_opened(&self.labels);
        ctx.metrics
            .istio
            .tcp_closed(&self.labels, Carried::default());
        self.entry.response_flags = e.flag().into();
        self.entry.reason = e.to_string().into();
        self.entry.took = self.start.elapsed().into();
        ctx.http.access.log(&self.entry, true);
    }

    /// The kernel's RTT and retransmissions of the upstream socket, when it has counters.
    fn kernel(&self, ctx: &Outbound, upstream: Option<crate::ebpf::ConnCounters>) {
        if let Some(u) = upstream {
            (ctx.metrics.istio).kernel(&self.labels, u.srtt_us, u.retransmits);
        }
    }

    /// The connection was closed by meshd for its idle timeout; the log line says so.
    fn idled(&mut self) {
        self.entry.reason = "idle timeout (connectionPool.tcp.idleTimeout)".into();
    }

    /// The connection was closed by meshd because a policy applied since denies it.
    fn revoked(&mut self, reason: &str) {
        self.entry.reason =
            format!("closed after a policy change: denied by authorization policy: {reason}")
                .into();
    }

    /// The connection was closed by meshd at its maximum duration: flag DT, as Envoy marks a
    /// connection that exceeded its `max_connection_duration`.
    fn lived_out(&mut self) {
        self.entry.reason = "maximum duration (connectionPool.tcp.maxConnectionDuration)".into();
        self.entry.response_flags = "DT".into();
        self.labels.response_flags = "DT".into();
    }

    fn closed(mut self, ctx: &Outbound, sent: u64, received: u64) {
        let total = Carried {
            to_destination: sent,
            from_destination: received,
        };
        let rest = self.reported.rest(total);
        ctx.metrics.istio.tcp_closed(&self.labels, rest);
        if let Some(d) = self.destination_labels() {
            ctx.metrics.istio.tcp_closed(&d, rest);
        }
        self.entry.bytes_received = sent;
        self.entry.bytes_sent = received;
        self.entry.took = self.start.elapsed().into();
        ctx.http.access.log(&self.entry, false);
    }
}
