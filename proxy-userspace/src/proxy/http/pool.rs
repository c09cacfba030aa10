//! Upstream connections, per destination cluster (host, subset, port) and endpoint: HTTP/1.1
//! keep-alive connections carrying one request at a time, and multiplexed HTTP/2 connections.
//! The DestinationRule's `connectionPool` bounds them: over a limit a request waits as pending
//! (bounded too) or fails fast with flag UO, as Envoy's circuit breakers do.

mod cluster;
mod connect;
mod ends_by_reading;
mod h1;
mod h2;
mod http_connect;
mod lease;
pub mod limits;
mod originate;
pub mod proxy_protocol;
mod retired;
mod self_signed;

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use foldhash::{HashMap, HashMapExt};

use hyper::{Response, client::conn::http1, header::HeaderValue};
use hyper_util::rt::TokioIo;

pub use self::{
    cluster::{ClusterPool, Counter, PeerKey, Slot},
    connect::connect,
    lease::PooledBody,
    limits::{Limits, RetryBudget},
    originate::{Originate, Originations},
};
/// Whether a response body failed because the upstream broke HTTP/1.1 (a malformed chunk), or
/// something it wraps did: flag UPE, as Envoy's codec reports it, not UC.
pub fn broke_the_protocol(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if matches!(
            e.downcast_ref::<h1::H1Error>(),
            Some(h1::H1Error::Invalid(_))
        ) {
            return true;
        }
        next = e.source();
    }
    false
}

use self::{
    cluster::{H2Conn, H2Stream, IdleH1, OpenH2},
    lease::{Lease, Leased, Upstream},
};
use super::{
    Body, ResponseFlags,
    replay::{FORWARDED_CLIENT_CERT, Outgoing},
};

/// How often idle connections past their idle timeout are closed.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream connect error: connecting to {dst} failed: {source}")]
    Connect {
        dst: SocketAddr,
        source: std::io::Error,
    },
    #[error("upstream connect error: connecting to {dst} timed out after {after:?}")]
    ConnectTimeout { dst: SocketAddr, after: Duration },
    #[error("upstream connect error: HTTP handshake with {dst} failed: {source}")]
    Handshake {
        dst: SocketAddr,
        /// hyper's (HTTP/1.1 upgrades) or h2's.
        source: super::body::BoxError,
    },
    #[error("upstream {dst} reset or closed the connection before answering: {source}")]
    Send {
        dst: SocketAddr,
        /// meshd's HTTP/1.1 client error, h2's, or hyper's (upgrades).
        source: super::body::BoxError,
    },
    /// The upstream's answer broke HTTP: a malformed or oversized head, a 204 with a body, an
    /// HTTP/2 response h2 refused. Envoy's `protocol error` reset: 502, flag UPE.
    #[error("upstream {dst} sent a malformed response: {source}")]
    Protocol {
        dst: SocketAddr,
        source: super::body::BoxError,
    },
    #[error("upstream connect error: {source}")]
    Tunnel {
        dst: SocketAddr,
        source: Box<crate::tunnel::TunnelError>,
    },
    #[error("upstream connect error: TLS with {dst} failed: {source}")]
    Tls {
        dst: SocketAddr,
        source: std::io::Error,
    },
    #[error("upstream connect error: cannot originate TLS: DestinationRule {reason}")]
    Origination { reason: String },
    #[error("upstream overflow: {cluster} is at its connectionPool limit {limit}: {value}")]
    Overflow {
        cluster: String,
        limit: &'static str,
        value: u32,
    },
}

impl UpstreamError {
    /// A request that failed on an open connection: [`UpstreamError::Protocol`] when the
    /// upstream's answer broke the protocol, else [`UpstreamError::Send`].
    pub fn sending(dst: SocketAddr, source: super::body::BoxError) -> UpstreamError {
        let protocol = if let Some(e) = source.downcast_ref::<h1::H1Error>() {
            matches!(e, h1::H1Error::Invalid(_))
        } else if let Some(e) = source.downcast_ref::<::h2::Error>() {
            // What meshd's h2 found wrong in the upstream's frames (an HTTP/1-only server
            // answering a preface reads as a frame of invalid size).
            e.is_library()
                && matches!(
                    e.reason(),
                    Some(
                        ::h2::Reason::PROTOCOL_ERROR
                            | ::h2::Reason::FRAME_SIZE_ERROR
                            | ::h2::Reason::COMPRESSION_ERROR
                    )
                )
        } else if let Some(e) = source.downcast_ref::<hyper::Error>() {
            e.is_parse()
        } else {
            false
        };
        match protocol {
            true => UpstreamError::Protocol { dst, source },
            false => UpstreamError::Send { dst, source },
        }
    }

    /// How an HTTP/2 upstream ended the stream itself, if it did: a reset (RST_STREAM), or a
    /// refusal (REFUSED_STREAM, or a GOAWAY before the stream was processed).
    fn remote_reset(&self) -> Option<&'static str> {
        let UpstreamError::Send { source, .. } = self else {
            return None;
        };
        if super::send::refused_stream(source) {
            return Some("remote refused stream reset");
        }
        let e = source.downcast_ref::<::h2::Error>()?;
        (e.is_reset() && e.is_remote()).then_some("remote reset")
    }

    pub fn flag(&self) -> ResponseFlags {
        if self.remote_reset().is_some() {
            return ResponseFlags::UPSTREAM_REMOTE_RESET;
        }
        match self {
            UpstreamError::Send { .. } => ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
            UpstreamError::Protocol { .. } => ResponseFlags::UPSTREAM_PROTOCOL_ERROR,
            UpstreamError::Overflow { .. } => ResponseFlags::UPSTREAM_OVERFLOW,
            _ => ResponseFlags::UPSTREAM_CONNECT_FAILURE,
        }
    }

    /// Envoy's reset reason, for the body of the 503 the client gets.
    pub fn reset_reason(&self) -> &'static str {
        if let Some(reason) = self.remote_reset() {
            return reason;
        }
        match self {
            UpstreamError::Send { .. } => "connection termination",
            UpstreamError::Protocol { .. } => "protocol error",
            UpstreamError::Overflow { .. } => "overflow",
            UpstreamError::ConnectTimeout { .. } => "connection timeout",
            _ => "connection failure",
        }
    }
}

/// Writes the PROXY protocol header first on a new upstream connection (before TLS, as Envoy's
/// upstream transport socket does).
pub async fn send_proxy_header(
    tcp: &mut tokio::net::TcpStream,
    header: &proxy_protocol::ProxyHeader,
    dst: SocketAddr,
) -> Result<(), UpstreamError> {
    use tokio::io::AsyncWriteExt;
    tcp.write_all(&header.encode())
        .await
        .map_err(|source| UpstreamError::Connect { dst, source })
}

/// Opens the DestinationRule `tunnel` of `limits`, if it has one, through the forward proxy at
/// `dst` (HTTP CONNECT), within `timeout` (the connect timeout: the proxy's answer is part of
/// the connect); returns what the target sent after the proxy's answer, for the client.
pub async fn open_tunnel(
    stream: &mut impl Io,
    limits: &Limits,
    dst: SocketAddr,
    timeout: Duration,
) -> Result<Vec<u8>, UpstreamError> {
    let Some(authority) = &limits.tunnel else {
        return Ok(Vec::new());
    };
    match tokio::time::timeout(timeout, http_connect::open(stream, authority)).await {
        Ok(opened) => opened.map_err(|source| UpstreamError::Connect { dst, source }),
        Err(_) => Err(UpstreamError::ConnectTimeout {
            dst,
            after: timeout,
        }),
    }
}

fn overflow(cluster: &ClusterPool, limit: &'static str, value: u32) -> UpstreamError {
    UpstreamError::Overflow {
        cluster: cluster.name.clone(),
        limit,
        value,
    }
}

/// Makes a request waiting for a connection or stream one of the cluster's pending requests,
/// once, within `http1MaxPendingRequests`; over it, the request fails at once (UO).
fn hold_pending(
    pending: &mut Option<Slot>,
    cluster: &Arc<ClusterPool>,
    limits: &Limits,
) -> Result<(), UpstreamError> {
    if pending.is_none() {
        let slot = cluster
            .try_slot(Counter::Pending, limits.max_pending)
            .ok_or_else(|| overflow(cluster, "http1MaxPendingRequests", limits.max_pending))?;
        *pending = Some(slot);
    }
    Ok(())
}

/// Where one upstream request goes: an endpoint, directly or through the mTLS tunnel.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub via: Option<crate::tunnel::Via>,
}

impl Target {
    pub fn direct(addr: SocketAddr) -> Target {
        Target { addr, via: None }
    }

    /// The pool's key for connections to the target: per source workload through the tunnel,
    /// per downstream connection where they open with a PROXY protocol header, and per server
    /// name where meshd originates TLS.
    fn key(&self, limits: &Limits) -> PeerKey {
        let partition = match (&self.via, &limits.proxy_protocol) {
            (Some(via), _) => Some(via.pool_key()),
            (None, Some(header)) => Some(header.pool_key()),
            (None, None) => None,
        };
        let verified = limits.tls.as_ref().map(|t| t.pool_key().clone());
        (self.addr, partition, verified)
    }

    /// The downstream connection whose partition of the pool a connection to the target
    /// belongs to: one opened with that connection's PROXY header (not through the tunnel).
    fn owner<'l>(&self, limits: &'l Limits) -> Option<&'l proxy_protocol::ClientLife> {
        match (&self.via, &limits.proxy_protocol) {
            (None, Some(_)) => limits.client.as_ref(),
            _ => None,
        }
    }
}

/// Any upstream byte stream: a TCP connection or a tunnel stream.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Io for T {}

/// A connection taken for one request.
enum Checkout {
    H1(IdleH1),
    /// A connection with room for the request's stream.
    H2(h2::Ready, H2Stream),
}

pub struct Pool {
    connect_timeout: Duration,
    /// The clusters holding connections opened with a PROXY protocol header, by partition
    /// (one client connection's): what a closing client connection has to forget.
    partitions: Mutex<HashMap<Arc<str>, Vec<Weak<ClusterPool>>>>,
    clusters: Mutex<HashMap<String, Arc<ClusterPool>>>,
    tunnel: Option<Arc<crate::tunnel::Tunnel>>,
    /// The client configs of DestinationRule `tls` origination.
    pub originations: Originations,
}

impl Pool {
    /// A pool whose idle connections are swept in the background while it lives.
    pub fn new(connect_timeout: Duration, tunnel: Option<Arc<crate::tunnel::Tunnel>>) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            connect_timeout,
            partitions: Mutex::new(HashMap::new()),
            clusters: Mutex::new(HashMap::new()),
            tunnel,
            originations: Originations::default(),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(sweep(Arc::downgrade(&pool)));
        }
        pool
    }

    /// The pool state of a cluster, created on first use.
    pub fn cluster(&self, name: &str) -> Arc<ClusterPool> {
        let mut all = self.clusters.lock().expect("cluster pool lock");
        if let Some(c) = all.get(name) {
            return c.clone();
        }
        let c = Arc::new(ClusterPool::new(name));
        all.insert(name.to_string(), c.clone());
        c
    }

    /// Each cluster's key and its circuit-breaker counters ([`ClusterPool::counts`]), for
    /// `/metrics`.
    pub fn counts(&self) -> Vec<(String, [u32; 4])> {
        // The pools are taken under the lock, every request's way to its pool, and read after.
        let all: Vec<Arc<ClusterPool>> = (self.clusters.lock().expect("cluster pool lock"))
            .values()
            .cloned()
            .collect();
        all.iter().map(|c| (c.name.clone(), c.counts())).collect()
    }

    pub fn connect_timeout(&self, limits: &Limits) -> Duration {
        limits.connect_timeout.unwrap_or(self.connect_timeout)
    }

    /// A new HTTP/1.1 connection, not pooled (used for upgrades, which consume it).
    pub async fn fresh_h1(
        &self,
        target: &Target,
        limits: &Limits,
    ) -> Result<http1::SendRequest<Body>, UpstreamError> {
        let dst = target.addr;
        let io = self.dial(target, limits).await?;
        let (sender, conn) = http1::handshake(TokioIo::new(io)).await.map_err(|source| {
            UpstreamError::Handshake {
                dst,
                source: source.into(),
            }
        })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, %dst, "upstream HTTP/1 connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// A connection of its own for an upgrade (WebSocket) to `target`, within the cluster's
    /// limits as Envoy counts an upgrade: an active request (`http2MaxRequests`) and a
    /// connection (`maxConnections`, an endpoint's first past it), waiting as a pending request
    /// while the cluster is at its connection limit. The slots are the upgrade's to hold for as
    /// long as its connection is open.
    pub async fn upgrade_h1(
        &self,
        cluster: &Arc<ClusterPool>,
        limits: &Limits,
        target: &Target,
    ) -> Result<(http1::SendRequest<Body>, [Slot; 2]), UpstreamError> {
        let request = cluster
            .try_slot(Counter::Requests, limits.max_requests)
            .ok_or_else(|| overflow(cluster, "http2MaxRequests", limits.max_requests))?;
        let key = target.key(limits);
        let mut pending: Option<Slot> = None;
        let connection = loop {
            let changed = cluster.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(slot) = cluster.try_h1_slot(&key, cluster.max_connections(limits)) {
                break slot;
            }
            hold_pending(&mut pending, cluster, limits)?;
            // An idle pooled connection gives its place: the endpoint's own, else another's.
            if cluster.take_idle_h1(&key).is_none() {
                cluster.evict_idle_except(&key);
            }
            changed.await;
        };
        drop(pending);
        let sender = self.fresh_h1(target, limits).await?;
        Ok((sender, [request, connection]))
    }

    /// A byte stream to `target`: TCP, or a CONNECT stream through the tunnel; inside it, TLS
    /// that meshd originates (DestinationRule `tls`), end to end with the endpoint.
    pub async fn dial(
        &self,
        target: &Target,
        limits: &Limits,
    ) -> Result<Box<dyn Io>, UpstreamError> {
        self.dial_socket(target, limits).await.map(|(io, _)| io)
    }

    /// [`Pool::dial`], with the socket cookie of a direct TCP connection (none through the
    /// tunnel, whose connection is shared), for the kernel's counters of it.
    pub async fn dial_socket(
        &self,
        target: &Target,
        limits: &Limits,
    ) -> Result<(Box<dyn Io>, Option<u64>), UpstreamError> {
        let (io, cookie, _) = self.dial_plain(target, limits).await?;
        Ok((io, cookie))
    }

    /// [`Pool::dial_socket`], with the descriptor of the connection's TCP socket when meshd
    /// writes to it as it is (direct, and without TLS inside).
    async fn dial_plain(
        &self,
        target: &Target,
        limits: &Limits,
    ) -> Result<(Box<dyn Io>, Option<u64>, Option<std::os::fd::RawFd>), UpstreamError> {
        let dst = target.addr;
        let (stream, cookie, fd) = self.reach(target, limits).await?;
        let Some(tls) = &limits.tls else {
            return Ok((stream, cookie, fd));
        };
        // The handshake is bounded by the connect timeout too, as Envoy's connect timeout runs
        // until its transport socket is up: a server that accepts and then stalls holds
        // nothing for long. Boxed: the handshake's state is large, and every request's future
        // would otherwise carry (and move) room for it.
        let after = self.connect_timeout(limits);
        match tokio::time::timeout(after, Box::pin(tls.wrap(stream))).await {
            Ok(Ok(s)) => Ok((Box::new(s), cookie, None)),
            Ok(Err(source)) => Err(UpstreamError::Tls { dst, source }),
            Err(_) => Err(UpstreamError::Tls {
                dst,
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no handshake within the connect timeout ({after:?})"),
                ),
            }),
        }
    }

    /// A TCP connection to `dst`, within the connect timeout, opened with the PROXY protocol
    /// header if `limits` has one.
    pub async fn connect_direct(
        &self,
        dst: SocketAddr,
        limits: &Limits,
    ) -> Result<tokio::net::TcpStream, UpstreamError> {
        let mut tcp = connect(dst, self.connect_timeout(limits), limits.keepalive).await?;
        if let Some(header) = &limits.proxy_protocol {
            send_proxy_header(&mut tcp, header, dst).await?;
        }
        Ok(tcp)
    }

    /// The stream [`Pool::dial`] carries: a direct TCP connection ([`Pool::connect_direct`]),
    /// with its cookie and descriptor, or a stream through the tunnel.
    async fn reach(
        &self,
        target: &Target,
        limits: &Limits,
    ) -> Result<(Box<dyn Io>, Option<u64>, Option<std::os::fd::RawFd>), UpstreamError> {
        let dst = target.addr;
        match (&target.via, &self.tunnel) {
            (None, _) => {
                let tcp = self.connect_direct(dst, limits).await?;
                let cookie = crate::proxy::sockopt::cookie(&tcp).ok();
                let fd = std::os::fd::AsRawFd::as_raw_fd(&tcp);
                Ok((Box::new(tcp), cookie, Some(fd)))
            }
            // Boxed, as the handshake above.
            (Some(via), Some(tunnel)) => match Box::pin(tunnel.open(via, dst, limits.opaque)).await
            {
                Ok(s) => Ok((Box::new(s), None, None)),
                Err(source) => Err(UpstreamError::Tunnel {
                    dst,
                    source: Box::new(source),
                }),
            },
            (Some(via), None) => Err(UpstreamError::Tunnel {
                dst,
                source: Box::new(crate::tunnel::TunnelError::NoCertificates {
                    target: dst,
                    node: via.node,
                }),
            }),
        }
    }

    /// Opens a connection to `dst` that holds `slot` (one of the cluster's connections) for as
    /// long as it is open.
    async fn open(
        &self,
        cluster: &Arc<ClusterPool>,
        slot: Slot,
        target: &Target,
        h2: bool,
        limits: &Limits,
    ) -> Result<Checkout, UpstreamError> {
        let dst = target.addr;
        let (io, _, socket) = self.dial_plain(target, limits).await?;
        if let (None, Some(header)) = (&target.via, &limits.proxy_protocol) {
            let mut partitions = self.partitions.lock().expect("partitions lock");
            // A client already gone (a mirror outliving it) leaves nothing to forget: its
            // connection is not kept.
            if !target.owner(limits).is_some_and(|c| c.ended()) {
                let clusters = partitions.entry(header.pool_key()).or_default();
                if !clusters.iter().any(|c| c.ptr_eq(&Arc::downgrade(cluster))) {
                    clusters.push(Arc::downgrade(cluster));
                }
            }
        }
        if h2 {
            // meshd's own HTTP/2 client: the connection runs as a task of its own, and holds
            // its slot until it closes.
            let sender =
                h2::handshake(io, slot)
                    .await
                    .map_err(|source| UpstreamError::Handshake {
                        dst,
                        source: source.into(),
                    })?;
            let streams = Arc::new(cluster::Streams::default());
            let stream = H2Stream::new(cluster.clone(), &streams);
            cluster.add_h2(
                target.key(limits),
                H2Conn {
                    sender: sender.clone(),
                    streams,
                    used: 1,
                    idle_timeout: limits.idle_timeout,
                    expires: limits.expiry(),
                },
                target.owner(limits),
            );
            let ready = sender.ready().await.map_err(|source| UpstreamError::Send {
                dst,
                source: source.into(),
            })?;
            Ok(Checkout::H2(ready, stream))
        } else {
            // meshd's own HTTP/1.1 client: the connection is driven by the requests that use
            // it, and holds its slot until it closes.
            Ok(Checkout::H1(IdleH1 {
                conn: h1::Conn::new(io, socket, slot),
                used: 0,
                since: Instant::now(),
                idle_timeout: limits.idle_timeout,
                expires: limits.expiry(),
            }))
        }
    }

    /// A connection (HTTP/1.1) or stream (HTTP/2) to `dst`: an idle one, a new one within
    /// `maxConnections`, or, when the cluster is at that limit, the next one freed, waiting as
    /// one of at most `http1MaxPendingRequests` pending requests.
    async fn checkout(
        &self,
        cluster: &Arc<ClusterPool>,
        limits: &Limits,
        target: &Target,
        h2: bool,
    ) -> Result<Checkout, UpstreamError> {
        let key = target.key(limits);
        let mut pending: Option<Slot> = None;
        loop {
            // Read each time round: a reload while this request waits may raise it.
            let max_connections = cluster.max_connections(limits);
            let changed = cluster.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if h2 {
                while let Some((c, stream)) =
                    cluster.take_h2_stream(&key, limits, |u| limits.reusable(u))
                {
                    match c.ready().await {
                        Ok(sender) => return Ok(Checkout::H2(sender, stream)),
                        // Going away (or gone) before the request's stream opened: nothing
                        // was sent. The connection, now marked closed, leaves the pool, and the
                        // request goes on another, as with Envoy.
                        Err(e) => {
                            tracing::debug!(error = %e, dst = %target.addr, "upstream HTTP/2 connection is going away");
                            drop(stream);
                        }
                    }
                }
            } else {
                // The previous response was read to its end, and nothing arrived since.
                while let Some(c) = cluster.take_idle_h1(&key) {
                    // Over a `maxConnections` lowered since it was opened: closed, not reused,
                    // so the lower limit holds for new requests at once (but for the
                    // endpoint's one connection, which it would get back past the limit).
                    if cluster.count(Counter::Connections) > max_connections
                        && cluster.h1_connections_to(&key) > 1
                    {
                        drop(c);
                        continue;
                    }
                    return Ok(Checkout::H1(c));
                }
            }
            // A burst of requests to a cold pool waits for the streams of a connection being
            // opened instead of opening a connection each; when the waiters would fill the
            // streams it is expected to have (as many as the endpoint's open connections
            // allow, else the streams h2 opens before the upstream's SETTINGS), another opens.
            let streams = || {
                let known = cluster.h2_stream_limit(&key);
                let expected = known.unwrap_or(h2::INITIAL_MAX_SEND_STREAMS as u32);
                expected.min(limits.max_streams).max(1)
            };
            let claim = match h2.then(|| cluster.open_h2(&key, streams())) {
                Some(OpenH2::Waiting(opening)) => {
                    hold_pending(&mut pending, cluster, limits)?;
                    // A stream freed anywhere, or the opening waited for ended.
                    tokio::select! {
                        () = changed => {}
                        () = opening.ended() => {}
                    }
                    if let Some(source) = opening.failure() {
                        return Err(UpstreamError::Connect {
                            dst: target.addr,
                            source,
                        });
                    }
                    continue;
                }
                Some(OpenH2::Mine(claim)) => Some(claim),
                None => None,
            };
            // As Envoy's circuit breaker: an endpoint the balancer picked gets one HTTP/2
            // connection even past `maxConnections`. Its streams are shared, so without it a
            // request to an endpoint with none would wait for connections to other endpoints
            // that stay open, idle or carrying long streams, and never close.
            let first = claim.as_ref().is_some_and(|c| c.first);
            let limit = if h2 && first && !cluster.has_h2(&key) {
                u32::MAX
            } else {
                max_connections
            };
            let slot = if h2 {
                cluster.try_slot(Counter::Connections, limit)
            } else {
                cluster.try_h1_slot(&key, limit)
            };
            if let Some(slot) = slot {
                // Unlike Envoy's pool, a request opening its own connection is not pending: a
                // burst to a cold pool would otherwise be shed by how fast connects complete.
                // Boxed: a new connection is the rare case, and its handshake's state would
                // otherwise enlarge every request's future (moved, in full, as it starts).
                let opened = Box::pin(self.open(cluster, slot, target, h2, limits)).await;
                if let (Err(e), Some(claim)) = (&opened, &claim) {
                    claim.fail(e);
                }
                return opened;
            }
            // At the limit: wait, as a pending request, for a stream or connection to free. The
            // claim is kept through the wait, so requests waiting for it keep waiting, and
            // dropped after it; its drop wakes only them.
            hold_pending(&mut pending, cluster, limits)?;
            // The cluster's connections may all sit idle at other endpoints.
            cluster.evict_idle_except(&key);
            changed.await;
            drop(claim);
        }
    }

    /// Sends a request to `target`, an endpoint of `cluster`, within the cluster's limits. The
    /// request is made by `req` once a connection or stream is there for it: a request that
    /// failed before (no connection within the limits, or none could be opened) was not taken,
    /// and can go elsewhere, its body unread.
    ///
    /// An async block rather than an async fn: an async fn keeps a second copy of its
    /// by-value arguments (the request) in its state, which every request then moves.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would hold the request twice in its state"
    )]
    pub fn send<'r>(
        &self,
        cluster: &Arc<ClusterPool>,
        limits: &Limits,
        target: &Target,
        h2: bool,
        req: impl FnOnce() -> Outgoing<'r>,
    ) -> impl Future<Output = Result<Response<PooledBody>, UpstreamError>> {
        async move {
            let dst = target.addr;
            let checked_out = self.checkout(cluster, limits, target, h2).await?;
            // As Envoy's pool: a request counts against `http2MaxRequests` once it has its
            // connection or stream (a request waiting for one is pending), and overflows if it
            // would exceed the limit then. The idle connection it took goes back.
            let Some(request) = cluster.try_slot(Counter::Requests, limits.max_requests) else {
                if let Checkout::H1(c) = checked_out {
                    cluster.keep_h1(target.key(limits), c, target.owner(limits));
                }
                return Err(overflow(cluster, "http2MaxRequests", limits.max_requests));
            };
            let req = req();
            // Through the tunnel, the request carries its client's certificate as the far
            // side's server saw it: read once the connection is up, since opening the first
            // one issues the certificate.
            let req = match (&target.via, &self.tunnel) {
                (Some(via), Some(tunnel)) => {
                    with_client_cert(req, tunnel.forwarded_client_cert(via))
                }
                _ => req,
            };
            let (sent, conn) = match checked_out {
                Checkout::H2(sender, stream) => {
                    let sent = h2::send(sender, req).await.map(|r| r.map(Upstream::H2));
                    (sent, Leased::H2(stream))
                }
                Checkout::H1(mut c) => {
                    c.used += 1;
                    let sent = match c.conn.send(req).await {
                        Ok(head) => Ok(h1::response(c.conn, head).map(Upstream::H1)),
                        Err(e) => Err(e.into()),
                    };
                    let conn = Leased::H1 {
                        dst: target.key(limits),
                        owner: target.owner(limits).cloned(),
                        used: c.used,
                        reusable: limits.reusable(c.used),
                        // Back in the pool under the idle timeout of the configuration that
                        // used it last: a reload's new `idleTimeout` reaches open connections.
                        idle_timeout: limits.idle_timeout,
                        expires: c.expires,
                    };
                    (sent, conn)
                }
            };
            let lease = Lease {
                pool: cluster.clone(),
                request: Some(request),
                conn,
            };
            match sent {
                Ok(resp) => Ok(resp.map(|b| PooledBody::new(b, lease))),
                Err(source) => {
                    drop(lease);
                    Err(UpstreamError::sending(dst, source))
                }
            }
        }
    }

    /// Closes the idle upstream connections kept for the client connection from `source` to
    /// `destination` (under `proxyProtocol`), now that it has closed.
    pub fn forget_client(&self, source: SocketAddr, destination: SocketAddr) {
        let mut partitions = self.partitions.lock().expect("partitions lock");
        if partitions.is_empty() {
            return;
        }
        for version in [proxy_protocol::Version::V1, proxy_protocol::Version::V2] {
            let header = proxy_protocol::ProxyHeader {
                version,
                source,
                destination,
            };
            let key = header.pool_key();
            for cluster in partitions.remove(&key).into_iter().flatten() {
                if let Some(c) = cluster.upgrade() {
                    c.forget_partition(&key);
                }
            }
        }
    }

    /// Closes the idle connections of the clusters of the hosts `patterns` cover (their
    /// DestinationRule changed at a reload), as Envoy drains a replaced cluster's pool.
    pub fn close_idle_of_hosts(&self, patterns: &[String]) {
        if patterns.is_empty() {
            return;
        }
        let clusters = self.clusters.lock().expect("cluster pool lock");
        for (name, c) in clusters.iter() {
            if super::route::cluster_of_hosts(name, patterns) {
                c.close_idle();
            }
        }
    }

    /// Drains the connections to endpoints a reload took out of their service, as Envoy
    /// drains a removed host's pools: idle ones close now, busy ones when their request ends.
    /// `endpoints(host, port)`: the addresses of the service port's endpoints before and after
    /// the reload.
    pub fn retire_endpoints(
        &self,
        endpoints: impl Fn(&str, u16) -> (HashSet<SocketAddr>, HashSet<SocketAddr>),
    ) {
        // Copied out: requests take the map's lock to find their cluster.
        let clusters: Vec<(String, Arc<ClusterPool>)> = (self.clusters.lock())
            .expect("cluster pool lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // A host's subsets share its endpoints: their sets are built once per host and port.
        let mut sets: HashMap<(String, u16), (HashSet<SocketAddr>, HashSet<SocketAddr>)> =
            HashMap::new();
        for (name, c) in clusters {
            let Some((host, port)) = super::route::cluster_host_port(&name) else {
                continue;
            };
            let (before, now) = sets
                .entry((host.to_string(), port))
                .or_insert_with(|| endpoints(host, port));
            c.retire(before.difference(now), now);
        }
    }

    fn sweep_once(&self) {
        let clusters: Vec<(String, Arc<ClusterPool>)> = self
            .clusters
            .lock()
            .expect("cluster pool lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, c) in clusters {
            if c.sweep() {
                let mut all = self.clusters.lock().expect("cluster pool lock");
                // Only the map and this loop hold it: nothing is using the cluster.
                if all.get(&name).is_some_and(|c| Arc::strong_count(c) == 2) {
                    all.remove(&name);
                }
            }
        }
    }
}

/// `req` with `cert` as its `x-forwarded-client-cert`.
fn with_client_cert(req: Outgoing<'_>, cert: Option<HeaderValue>) -> Outgoing<'_> {
    match req {
        Outgoing::Buffered {
            req,
            attempt,
            grpc_timeout,
            expected_timeout,
            ..
        } => Outgoing::Buffered {
            req,
            attempt,
            grpc_timeout,
            expected_timeout,
            client_cert: cert,
        },
        Outgoing::Owned(mut r) => {
            match cert {
                Some(c) => r.headers_mut().insert(FORWARDED_CLIENT_CERT, c),
                None => r.headers_mut().remove(FORWARDED_CLIENT_CERT),
            };
            Outgoing::Owned(r)
        }
    }
}

async fn sweep(pool: Weak<Pool>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tick.tick().await;
        match pool.upgrade() {
            Some(p) => p.sweep_once(),
            None => return,
        }
    }
}
