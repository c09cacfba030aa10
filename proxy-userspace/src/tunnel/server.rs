//! The tunnel's server side, on the inbound port: TLS 1.3 with a client certificate required,
//! HTTP/2, and one CONNECT stream per connection to a workload on this node. A stream to
//! anything else is refused; an opaque stream is authorized once (Istio's L4 rules), an HTTP
//! stream per request.

use std::{net::SocketAddr, os::fd::AsRawFd, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::AsyncReadExt,
    net::{TcpListener, TcpStream},
};

use super::{
    Tunnel,
    client::{PROTOCOL_HEADER, REASON_HEADER},
    prefixed::Prefixed,
    serve_http,
    stream_log::{Ended, StreamLog},
};
use crate::{
    config::endpoints::EndpointIdentity,
    drain,
    identity::{IdentityResolver, SpiffeId, tls, x509},
    metrics::Metrics,
    proxy::{
        http::{HttpContext, authorize::report},
        sniff::{Detected, classify},
    },
    security::{
        Workload,
        authz::{Decision, RequestContext},
    },
    telemetry::tcp_report::{Carried, Reported},
};

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the inbound listener needs.
pub struct Inbound {
    pub tunnel: Arc<Tunnel>,
    pub http: Arc<HttpContext>,
    pub metrics: Arc<Metrics>,
    /// How long to wait for a stream's first bytes to tell HTTP from opaque TCP.
    pub detect_timeout: Duration,
}

impl Inbound {
    /// Issues (or loads) the certificate of the local workload whose SNI name is `name`.
    fn ensure_local(&self, name: &str) {
        let snap = self.http.config.current();
        let t = &self.tunnel;
        let local = snap.compiled.endpoints.all().find_map(|e| {
            let node = e.node_addr(t.inbound_port)?;
            let id = t.identity_of(e).ok()?;
            (t.is_local(node) && id.sni() == name).then_some(id)
        });
        if let Some(id) = local
            && let Err(e) = t.manager.ensure(&id)
        {
            tracing::error!(identity = %id, error = %e, "no certificate for a local workload");
        }
    }
}

/// Serves the tunnel listener until draining starts.
/// Serves the tunnel listener until meshd drains; then, as the outbound listeners, it still
/// accepts, each connection gets a GOAWAY (its open streams carry on), and the drain ends when
/// none is left, or after `deadline`, when the rest are closed.
pub async fn serve(
    listener: TcpListener,
    inbound: Arc<Inbound>,
    drain: drain::Watch,
    deadline: Duration,
) {
    let mut conns = tokio::task::JoinSet::new();
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
                    let (inbound, drain) = (inbound.clone(), drain.clone());
                    conns.spawn(async move { connection(stream, peer, inbound, drain).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "tunnel accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {
                if until.is_some() && conns.is_empty() {
                    return;
                }
            }
            _ = drain.started(), if until.is_none() => {
                if conns.is_empty() {
                    return;
                }
                tracing::info!(open = conns.len(), ?deadline, "waiting for tunnel connections to finish");
                until = Some(tokio::time::Instant::now() + deadline);
            }
            () = expires => {
                tracing::warn!(open = conns.len(), "drain deadline passed; closing the remaining tunnel connections");
                conns.shutdown().await;
                return;
            }
        }
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    inbound: Arc<Inbound>,
    drain: drain::Watch,
) {
    let _ = stream.set_nodelay(true);
    let manager = inbound.tunnel.manager.clone();
    let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let start =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream)
                .await?;
        // The client names the identity it expects (as a hash in SNI): make sure this node
        // holds that workload's certificate before answering.
        if let Some(name) = start.client_hello().server_name() {
            inbound.ensure_local(name);
        }
        let config = tls::server_config(
            Arc::new(IdentityResolver::new(manager.clone(), None)),
            manager.roots(),
        );
        start.into_stream(config).await
    })
    .await;
    let tls = match accepted {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            inbound.metrics.tunnel("handshake_failed");
            tracing::warn!(%peer, reason = %tls::describe_handshake_error(&e), "tunnel handshake rejected");
            return;
        }
        Err(_) => {
            inbound.metrics.tunnel("handshake_failed");
            tracing::warn!(%peer, "tunnel handshake timed out");
            return;
        }
    };
    let source = match tls::peer_identity(tls.get_ref().1) {
        Ok(id) => id,
        Err(e) => {
            inbound.metrics.tunnel("handshake_failed");
            tracing::warn!(%peer, error = %e, "tunnel peer has no usable identity");
            return;
        }
    };
    inbound.metrics.tunnel("handshake_ok");
    tracing::debug!(%peer, %source, "tunnel connection accepted");
    // The client certificate as Istio's inbound sidecar reports it, for requests parsed here.
    let client_cert: Arc<str> = (tls.get_ref().1.peer_certificates())
        .and_then(|c| c.first())
        .and_then(|leaf| x509::forwarded_details(leaf).ok())
        .unwrap_or_default()
        .into();
    let svc = service_fn(move |req| {
        let who = (source.clone(), client_cert.clone());
        stream_request(req, peer, who, inbound.clone())
    });
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tls), svc);
    let mut conn = std::pin::pin!(conn);
    let served = tokio::select! {
        biased;
        served = conn.as_mut() => served,
        () = drain.started() => {
            // A GOAWAY: the streams open carry on, new ones go to another connection.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "tunnel connection ended with an error");
    }
}

fn refuse(status: StatusCode, reason: String) -> Response<Empty<Bytes>> {
    let mut r = Response::new(Empty::new());
    *r.status_mut() = status;
    if let Ok(v) = reason.parse() {
        r.headers_mut().insert(REASON_HEADER, v);
    }
    r
}

/// The `IP:port` a tunnel request asks for: only `CONNECT` to a socket address is accepted.
pub fn connect_target<B>(req: &Request<B>) -> Option<SocketAddr> {
    if req.method() != Method::CONNECT {
        return None;
    }
    req.uri().authority()?.as_str().parse().ok()
}

/// One CONNECT: checks the target is a workload of this node, answers 200, and serves the
/// stream in the background.
async fn stream_request(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    (source, client_cert): (SpiffeId, Arc<str>),
    inbound: Arc<Inbound>,
) -> Result<Response<Empty<Bytes>>, std::convert::Infallible> {
    let Some(target) = connect_target(&req) else {
        inbound.metrics.tunnel("bad_request");
        tracing::warn!(%peer, method = %req.method(), uri = %req.uri(), "tunnel request is not a CONNECT to IP:port");
        return Ok(refuse(
            StatusCode::BAD_REQUEST,
            "expected CONNECT to IP:port".into(),
        ));
    };
    let snap = inbound.http.config.current();
    let local = snap
        .compiled
        .endpoints
        .get(target)
        .filter(|e| {
            e.node_addr(inbound.tunnel.inbound_port)
                .is_some_and(|n| inbound.tunnel.is_local(n))
        })
        .cloned();
    let Some(workload) = local else {
        inbound.metrics.tunnel("stream_refused");
        tracing::warn!(%peer, %source, %target, "tunnel CONNECT refused: not a workload on this node");
        return Ok(refuse(
            StatusCode::FORBIDDEN,
            format!("{target} is not a workload on this node"),
        ));
    };
    inbound.metrics.tunnel("stream_opened");
    let service = snap.compiled.service_at(target).map(Arc::from);
    let principal = source.to_string();
    // The workload the baggage names, if the source's certificate is that workload's own
    // identity (its namespace and service account).
    let source_workload = req.headers().get(super::baggage::HEADER).and_then(|b| {
        let proven = crate::security::spiffe::namespace(&principal)?;
        let named = super::baggage::decode(b, proven)?;
        let identity = inbound.tunnel.source_identity(&snap, Some(&named)).ok()?;
        (identity == source).then_some(named)
    });
    drop(snap);
    let opaque = (req.headers().get(PROTOCOL_HEADER)).is_some_and(|v| v == "tcp");
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(up) => {
                let stream = Stream {
                    peer,
                    principal,
                    source,
                    source_workload,
                    client_cert,
                    target,
                    service,
                    workload,
                    opaque,
                };
                stream.serve(TokioIo::new(up), &inbound).await;
            }
            Err(e) => tracing::debug!(%peer, error = %e, "tunnel stream was not established"),
        }
    });
    Ok(Response::new(Empty::new()))
}

/// Reads a stream's first bytes until they classify, it ends, or `timeout` passes.
async fn sniff(
    io: &mut TokioIo<hyper::upgrade::Upgraded>,
    timeout: Duration,
) -> (Vec<u8>, Detected) {
    let mut buf = Vec::with_capacity(64);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(d) = classify(&buf) {
            return (buf, d);
        }
        let mut chunk = [0u8; 64];
        match tokio::time::timeout_at(deadline, io.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return (buf, Detected::Opaque),
        }
    }
}

/// An accepted stream to a local workload.
pub struct Stream {
    pub peer: SocketAddr,
    pub source: SpiffeId,
    /// `source` as text, written once: every request's labels and log line carry it.
    pub principal: String,
    /// The source workload (`namespace/name`) the CONNECT named, within the namespace the
    /// source's certificate proves.
    pub source_workload: Option<String>,
    /// The peer's certificate as `x-forwarded-client-cert` reports it (all but `By`).
    pub client_cert: Arc<str>,
    pub target: SocketAddr,
    /// The service the target serves (see `Compiled::service_at`), when one does.
    pub service: Option<Arc<str>>,
    pub workload: EndpointIdentity,
    /// The source carried the connection as TCP: authorized as TCP, its bytes never read.
    pub opaque: bool,
}

impl Stream {
    /// The authorization context of this stream (without HTTP attributes).
    pub fn context(&self) -> RequestContext<'static> {
        RequestContext::new(
            Some(self.principal.clone()),
            self.peer.ip(),
            self.target.ip(),
            self.target.port(),
        )
    }

    /// The `source_workload` of Istio's metrics: the workload's name, `unknown` when the
    /// CONNECT named none.
    pub fn source_workload_name(&self) -> &str {
        crate::telemetry::istio::split_workload(self.source_workload.as_deref()).0
    }

    /// The source's namespace, from its SPIFFE identity.
    pub fn source_namespace(&self) -> &str {
        crate::security::spiffe::namespace(&self.principal).unwrap_or("unknown")
    }

    /// The `destination_service` of Istio's metrics: the service the target serves, else the
    /// target itself.
    pub fn destination_service(&self) -> std::borrow::Cow<'_, str> {
        match &self.service {
            Some(s) => std::borrow::Cow::Borrowed(s),
            None => std::borrow::Cow::Owned(self.target.to_string()),
        }
    }

    /// Istio's TCP labels of this stream as the destination reports it: the peer proved its
    /// identity, so the connection is `mutual_tls`.
    fn labels(&self) -> crate::telemetry::TcpLabels {
        let (name, namespace) =
            crate::telemetry::istio::split_workload(self.workload.workload.as_deref());
        crate::telemetry::TcpLabels {
            source_workload: self.source_workload_name().into(),
            source_namespace: self.source_namespace().to_string(),
            destination_service: self.destination_service().into_owned(),
            destination_workload: name.to_string(),
            destination_namespace: namespace.to_string(),
            response_flags: "-".into(),
            reporter: "destination",
            // Istio's labels carry the whole SPIFFE ID, scheme included.
            source_principal: self.principal.clone(),
            security_policy: "mutual_tls",
            passthrough: false,
        }
    }

    pub fn workload(&self) -> Workload<'_> {
        Workload {
            namespace: &self.workload.namespace,
            labels: &self.workload.labels,
        }
    }

    /// Why a stream copied as bytes may no longer be, under the policies applied now: they
    /// deny it, or (`per_request` false: its requests were not read) they read requests.
    fn revoked(&self, inbound: &Inbound, per_request: bool) -> Option<&'static str> {
        let snap = inbound.http.config.current();
        let authorizer = &snap.compiled.authorizer;
        if !authorizer
            .evaluate(&self.workload(), &self.context())
            .allowed
        {
            return Some("denied by authorization policy");
        }
        (!per_request && authorizer.reads_http(&self.workload()))
            .then_some("its requests are now authorized one by one")
    }

    /// Refuses the stream, as the decision says; logged and counted.
    fn deny(&self, inbound: &Inbound, decision: &Decision, log: &StreamLog) {
        inbound.metrics.tunnel("denied");
        tracing::warn!(source = %self.source, target = %self.target, reason = %decision.reason, "tunnel stream denied by authorization policy");
        let reason = format!("denied by authorization policy: {}", decision.reason);
        log.write(
            inbound,
            self,
            Ended {
                flags: "-",
                reason: &reason,
                request_bytes: 0,
                response_bytes: 0,
            },
        );
    }

    async fn serve(self, mut io: TokioIo<hyper::upgrade::Upgraded>, inbound: &Arc<Inbound>) {
        let log = StreamLog::start();
        let snap = inbound.http.config.current();
        let decision = snap
            .compiled
            .authorizer
            .evaluate(&self.workload(), &self.context());
        // When no AuthorizationPolicy of the workload reads request attributes, every request
        // gets the stream's decision: an allowed stream is copied as bytes, HTTP or not, without
        // parsing it here (the source side already applied the L7 policy).
        // A connection the source carried as TCP is authorized as TCP, as Istio's inbound
        // sidecar applies a TCP port's L4 rules, whatever its bytes look like.
        let per_request = !self.opaque
            && (!decision.allowed || snap.compiled.authorizer.reads_http(&self.workload()));
        drop(snap);
        let io = if per_request {
            // Tell HTTP (served per request, so a denial is a 403) from opaque TCP by the
            // first bytes.
            let (first, detected) = sniff(&mut io, inbound.detect_timeout).await;
            let io = Prefixed::new(Bytes::from(first), io);
            match detected {
                Detected::Http1 | Detected::Http2 => {
                    let h2 = detected == Detected::Http2;
                    serve_http::serve(io, h2, Arc::new(self), inbound.clone()).await;
                    return;
                }
                Detected::Opaque => {}
            }
            report(&inbound.metrics, &decision, &self.source, self.target, None);
            if !decision.allowed {
                self.deny(inbound, &decision, &log);
                return;
            }
            io
        } else {
            // No policy reads requests, or the stream is TCP: the stream's outcome is all.
            report(&inbound.metrics, &decision, &self.source, self.target, None);
            if !decision.allowed {
                self.deny(inbound, &decision, &log);
                return;
            }
            Prefixed::new(Bytes::new(), io)
        };
        let mut io = io;
        match TcpStream::connect(self.target).await {
            Ok(mut up) => {
                let _ = up.set_nodelay(true);
                let labels = self.labels();
                inbound.metrics.istio.tcp_opened(&labels);
                let mut applied = inbound.http.config.applied();
                // What the workload's socket carried: reported while the stream is open, and
                // the count when the copy ends short.
                let workload = up.as_raw_fd();
                let read = || Carried::of_sockets(None, Some(workload));
                let socket = || read().unwrap_or_default().pair();
                let mut reported = Reported::default();
                let istio = &inbound.metrics.istio;
                // A stream copied as bytes was decided when it opened. When the policies
                // change, it is closed if they now deny it, or read its requests (their
                // client's next stream is then authorized request by request), as ztunnel
                // closes the connections a new policy no longer allows.
                let mut reason = "";
                let (sent, received) = {
                    let copy = tokio::io::copy_bidirectional(&mut io, &mut up);
                    let copy = reported.during(copy, istio.tcp_reporting(), read, |c| {
                        istio.tcp_bytes(&labels, c)
                    });
                    tokio::pin!(copy);
                    loop {
                        tokio::select! {
                            copied = &mut copy => break copied.unwrap_or_else(|_| socket()),
                            Ok(()) = applied.changed() => {
                                if let Some(why) = self.revoked(inbound, per_request || self.opaque) {
                                    tracing::info!(source = %self.source, target = %self.target, why, "tunnel stream closed after a policy change");
                                    inbound.metrics.tunnel("revoked");
                                    reason = "closed after a policy change";
                                    break socket();
                                }
                            }
                        }
                    }
                };
                let total = Carried {
                    to_destination: sent,
                    from_destination: received,
                };
                inbound
                    .metrics
                    .istio
                    .tcp_closed(&labels, reported.rest(total));
                log.write(
                    inbound,
                    &self,
                    Ended {
                        flags: "-",
                        reason,
                        request_bytes: sent,
                        response_bytes: received,
                    },
                );
            }
            Err(e) => {
                tracing::warn!(target = %self.target, error = %e, "tunnel stream: the local workload refused");
                let reason = format!("the workload refused the connection: {e}");
                log.write(
                    inbound,
                    &self,
                    Ended {
                        flags: "UF",
                        reason: &reason,
                        request_bytes: 0,
                        response_bytes: 0,
                    },
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, uri: &str) -> Request<()> {
        Request::builder().method(method).uri(uri).body(()).unwrap()
    }

    #[test]
    fn only_connect_to_a_socket_address_is_accepted() {
        let ok = connect_target(&req(Method::CONNECT, "10.0.0.2:8080"));
        assert_eq!(ok, Some("10.0.0.2:8080".parse().unwrap()));
        let v6 = connect_target(&req(Method::CONNECT, "[fd00::2]:80"));
        assert_eq!(v6, Some("[fd00::2]:80".parse().unwrap()));
        assert_eq!(
            connect_target(&req(Method::GET, "http://10.0.0.2:8080/")),
            None
        );
        assert_eq!(connect_target(&req(Method::CONNECT, "reviews:8080")), None);
        assert_eq!(connect_target(&req(Method::CONNECT, "10.0.0.2")), None);
    }
}
