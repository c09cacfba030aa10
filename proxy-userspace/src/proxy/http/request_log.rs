//! A request's record once it ends, however it ends: the debug line, Istio's metrics (as the
//! source, and as the destination for a workload on this node), the route's statistics, the
//! trace span and the access-log line.

use std::{borrow::Cow, sync::Arc, time::Instant};

use hyper::{HeaderMap, Method, Request, Version, header, header::HeaderValue};

use super::{Downstream, GRPC_STATUS, HttpContext, ResponseFlags, body, record::Record};
use crate::telemetry::{
    Entry, RequestLabels,
    access_log::{self, rfc3339},
    istio::split_workload,
    route_stats::RouteRequest,
    trace::RequestId,
};

/// The protocol field of the access log, as `Debug` prints the version.
pub fn version_text(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        // As Envoy's %PROTOCOL%.
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/?",
    }
}

/// The response body reports to its request's record: the bytes it carries, grpc-status from
/// the trailers, how it failed; the record is written when the body is done or abandoned.
impl body::Observer for RequestLog {
    fn data(&mut self, len: usize) {
        self.response_bytes += len as u64;
    }

    fn data_frame(&mut self, data: &[u8]) {
        self.data(data.len());
        if let Some(m) = &mut self.response_messages {
            m.feed(data);
        }
    }

    fn trailers(&mut self, t: &HeaderMap) {
        if let Some(g) = t.get(GRPC_STATUS).filter(|v| v.to_str().is_ok()) {
            self.grpc_status = Some(g.clone());
        }
    }

    fn failed(&mut self, e: &body::BoxError) {
        // Ended, by a failure of the upstream's or of the timeout's: not the client's.
        if e.is::<super::deadline::RouteTimeout>() {
            self.rec.route_timed_out = true;
            self.rec
                .fail(ResponseFlags::UPSTREAM_TIMEOUT, e.to_string());
        } else if super::pool::broke_the_protocol(&**e) {
            self.rec
                .fail(ResponseFlags::UPSTREAM_PROTOCOL_ERROR, e.to_string());
        } else {
            self.rec.fail(
                ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
                "upstream response body failed",
            );
        }
    }

    fn abandoned(&mut self) {
        self.rec.fail(
            ResponseFlags::DOWNSTREAM_DISCONNECT,
            "downstream disconnected during the response",
        );
    }
}

/// Records a request when it ends, however it ends: the debug line, Istio's metrics and the
/// access log. If the client goes away first, hyper drops the request's future, and the
/// record says so with flag DC (the upstream request, dropped with it, is cancelled).
///
/// Only what every request needs is computed here: the metric labels are borrowed, and the
/// span and access-log line are built only when the tracer and the log's sampling want them.
pub(super) struct RequestLog {
    pub(super) start: Instant,
    pub(super) method: Method,
    /// The request's URI as received; the log and trace record its path.
    pub(super) uri: hyper::Uri,
    /// Request fields only the access log reads.
    pub(super) fields: LoggedFields,
    pub(super) protocol: &'static str,
    pub(super) version: &'static str,
    pub(super) request_id: RequestId,
    pub(super) trace: crate::telemetry::trace::Context,
    /// What the request body delivered (the body counts its bytes as it is read).
    pub(super) received: Arc<body::Received>,
    pub(super) response_bytes: u64,
    /// A gRPC response's message framing, its messages counted as they pass.
    pub(super) response_messages: Option<Box<super::grpc_messages::GrpcMessages>>,
    pub(super) grpc_status: Option<HeaderValue>,
    pub(super) down: Arc<Downstream>,
    pub(super) ctx: Arc<HttpContext>,
    pub(super) status: Option<u16>,
    pub(super) rec: Record,
}

/// The request fields the access log prints and nothing else reads: kept only while there is
/// an access log (each a shared reference to the received bytes, no copy).
#[derive(Default)]
pub(super) struct LoggedFields {
    /// `Host` (HTTP/1; an HTTP/2 request's `:authority` is in its URI).
    pub(super) host: Option<HeaderValue>,
    pub(super) user_agent: Option<HeaderValue>,
    pub(super) forwarded_for: Option<HeaderValue>,
}

impl LoggedFields {
    pub(super) fn of<B>(req: &Request<B>, ctx: &HttpContext) -> LoggedFields {
        if !ctx.access.enabled() {
            return LoggedFields::default();
        }
        let h = req.headers();
        LoggedFields {
            host: h.get(header::HOST).cloned(),
            user_agent: h.get(header::USER_AGENT).cloned(),
            forwarded_for: h.get("x-forwarded-for").cloned(),
        }
    }
}

/// The method of a record for a request hyper's parser refused: neither its method nor its
/// target is known.
const UNPARSED: &str = "-";

/// A header's value as text for a log line or a label ("" when absent or not text).
pub fn header_text(v: &Option<HeaderValue>) -> &str {
    v.as_ref().and_then(|v| v.to_str().ok()).unwrap_or_default()
}

/// A header's value for a log line, as Envoy's JSON formatter writes it: UTF-8 text beyond
/// ASCII (`café`) kept, invalid bytes replaced ("" when absent).
pub fn header_logged(v: &Option<HeaderValue>) -> std::borrow::Cow<'_, str> {
    match v {
        Some(v) => String::from_utf8_lossy(v.as_bytes()),
        None => "".into(),
    }
}

/// Logs and counts a request hyper's parser refused before it reached meshd's pipeline (a
/// malformed head gets 400, one too large 431, written by hyper), as Envoy logs its
/// downstream protocol errors: flag DPE, with the parser's reason.
pub fn log_refused(down: Arc<Downstream>, ctx: Arc<HttpContext>, too_large: bool, why: String) {
    let (trace, request_id) =
        crate::telemetry::trace::propagate(&mut hyper::HeaderMap::new(), ctx.tracer.sample_rate);
    let mut rec = Record::default();
    rec.fail(ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR, why);
    // Counted as every request is, so that the record's end balances it.
    down.activity.began();
    drop(RequestLog {
        start: Instant::now(),
        // Unknown: Envoy's access log prints "-" for a field it does not have.
        method: Method::from_bytes(UNPARSED.as_bytes()).expect("a token"),
        uri: hyper::Uri::from_static("/"),
        fields: LoggedFields::default(),
        protocol: "http",
        version: "HTTP/1.1",
        request_id,
        trace,
        received: Arc::default(),
        response_bytes: 0,
        response_messages: None,
        grpc_status: None,
        down,
        ctx,
        status: Some(if too_large { 431 } else { 400 }),
        rec,
    });
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        self.down.activity.ended();
        if self.status.is_none() {
            self.rec.fail(
                ResponseFlags::DOWNSTREAM_DISCONNECT,
                "downstream disconnected before the response",
            );
        }
        let rec = &self.rec;
        let status = self.status.unwrap_or(0);
        let request_bytes = self.received.bytes();
        let elapsed = self.start.elapsed();
        let ms = elapsed.as_secs_f64() * 1e3;
        tracing::debug!(
            method = %self.method, path = %self.uri.path(), status, flags = %rec.flags,
            workload = self.down.workload.as_deref().unwrap_or("-"), dst = %self.down.dst, ms, "request"
        );
        let (source_workload, source_namespace) = split_workload(self.down.workload.as_deref());
        let (destination_workload, destination_namespace) =
            split_workload(rec.destination_workload.as_deref());
        let destination_service: Cow<'_, str> = match &rec.destination_service {
            Some(s) => Cow::Borrowed(s),
            None => Cow::Owned(self.down.dst.to_string()),
        };
        let flags: Cow<'_, str> = if rec.flags.is_empty() {
            Cow::Borrowed("-")
        } else {
            Cow::Owned(rec.flags.to_string())
        };
        let grpc = self.protocol == "grpc";
        let grpc_status = super::grpc_local::grpc_label(grpc, self.grpc_status.as_ref(), status);
        let labels = RequestLabels {
            reporter: "source",
            source_workload,
            source_namespace,
            source_principal: self.down.principal.as_deref().unwrap_or("unknown"),
            destination_service: &destination_service,
            destination_workload,
            destination_namespace,
            protocol: self.protocol,
            response_code: status,
            grpc_status,
            response_flags: &flags,
            security_policy: rec.security_policy.unwrap_or("unknown"),
            passthrough: self.passthrough(),
        };
        let istio = &self.ctx.metrics.istio;
        istio.request(&labels, elapsed, request_bytes, self.response_bytes);
        let messages =
            (self.response_messages.as_ref()).map(|m| (self.received.messages(), m.count));
        if let Some((sent, answered)) = messages {
            istio.grpc_messages(&labels, sent, answered);
        }
        // A mesh workload on this node has no other proxy to report what reached it: meshd
        // reports it as its destination too, as the workload's inbound sidecar would. Only a
        // request that went to a workload needs the configuration for that.
        let to_workload = rec.destination_workload.is_some() || !rec.replaced.is_empty();
        let snap = to_workload.then(|| self.ctx.config.current());
        let local = |addr| snap.as_deref().and_then(|s| self.local_workload(s, addr));
        // A request a connection-pool limit shed never left meshd: the client side's breaker
        // refused it, and no inbound side saw it.
        let reached = match (rec.upstream_host, rec.security_policy) {
            (Some(addr), Some("none")) if !rec.shed => local(addr).is_some(),
            _ => false,
        };
        if reached {
            let mut received = rec.flags;
            // The retries, and the breaker that refused one, were the client side's.
            received.remove(ResponseFlags::RETRY_LIMIT);
            received.remove(ResponseFlags::UPSTREAM_OVERFLOW);
            let received = received.to_string();
            let as_destination = RequestLabels {
                reporter: "destination",
                response_flags: &received,
                ..labels
            };
            istio.request(&as_destination, elapsed, request_bytes, self.response_bytes);
            if let Some((sent, answered)) = messages {
                istio.grpc_messages(&as_destination, sent, answered);
            }
        }
        // The answers a retry replaced reached their workloads too: each is one request as an
        // inbound sidecar there counts it (its body was dropped unread).
        for r in &rec.replaced {
            let Some(workload) = local(r.endpoint) else {
                continue;
            };
            let (destination_workload, destination_namespace) = split_workload(Some(workload));
            let attempt = RequestLabels {
                reporter: "destination",
                destination_workload,
                destination_namespace,
                response_code: r.status,
                grpc_status: "",
                response_flags: "-",
                security_policy: "none",
                ..labels
            };
            istio.request(&attempt, r.took, request_bytes, 0);
        }
        if let Some(prefix) = &rec.stat_prefix {
            let answered = rec.upstream_answer_from.filter(|_| !rec.route_timed_out);
            let request = RouteRequest {
                retries: rec.retries,
                timed_out: rec.route_timed_out,
                upstream_time: answered.map(|from| {
                    let from = self.received.ended_at().map_or(from, |end| end.max(from));
                    from.elapsed()
                }),
            };
            self.ctx.metrics.routes.request(prefix, &request);
        }
        let error = status >= 500 || status == 0 || !rec.flags.is_empty();
        let traced = self.ctx.tracer.wants(&self.trace);
        let logged = self.ctx.access.wants(error);
        if !traced && !logged {
            return;
        }
        // The start on the wall clock, from the end's: one clock read per request fewer.
        let start_unix_us = unix_us().saturating_sub(elapsed.as_micros() as u64);
        if traced {
            let mut tags = vec![
                ("http.method".to_string(), self.method.to_string()),
                // As Envoy's tracer writes it: scheme, authority and path.
                ("http.url".to_string(), self.url()),
                ("http.status_code".to_string(), status.to_string()),
                ("response_flags".to_string(), flags.to_string()),
                ("upstream_cluster".to_string(), self.upstream_cluster()),
                (
                    "guid:x-request-id".to_string(),
                    self.request_id.as_str().to_string(),
                ),
                (
                    "istio.source_workload".to_string(),
                    self.down.workload.clone().unwrap_or_default(),
                ),
            ];
            if let Some(h) = rec.upstream_host {
                tags.push(("upstream_host".into(), h.to_string()));
            }
            // As Envoy's gRPC tracing: the status, and an error for any but OK.
            if !grpc_status.is_empty() {
                tags.push(("grpc.status_code".into(), grpc_status.to_string()));
            }
            if error || !matches!(grpc_status, "" | "0") {
                tags.push(("error".into(), "true".into()));
            }
            self.ctx.tracer.record(crate::telemetry::trace::Span {
                context: self.trace,
                service: (self.ctx.metrics.istio).tracing_service(self.down.workload.as_deref()),
                name: format!(
                    "{}:{}/*",
                    rec.destination_service.clone().unwrap_or_else(|| self
                        .down
                        .dst
                        .ip()
                        .to_string()),
                    self.down.dst.port()
                ),
                start_unix_us,
                duration_us: elapsed.as_micros() as u64,
                tags,
            });
        }
        if logged {
            let (source_principal, destination_principal) = self.principals();
            let unparsed = self.method.as_str() == UNPARSED;
            self.ctx.access.write(&Entry {
                source_principal: source_principal.into(),
                destination_principal: destination_principal.into(),
                start_time: rfc3339(start_unix_us / 1000).into(),
                // A request the parser refused has neither (null, as Envoy's JSON has them).
                method: if unparsed { "" } else { self.method.as_str() }.into(),
                // As Istio's default format (`%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%`): the path
                // with its query.
                path: if unparsed {
                    ""
                } else {
                    (self.uri.path_and_query()).map_or(self.uri.path(), |p| p.as_str())
                }
                .into(),
                protocol: self.version.into(),
                response_code: status,
                response_flags: flags,
                took: elapsed.into(),
                upstream_service_time: rec.upstream_service_ms,
                route_name: rec.route_name.as_deref().unwrap_or_default().into(),
                upstream_cluster: self.upstream_cluster().into(),
                upstream_host: rec
                    .upstream_host
                    .map(|h| h.to_string())
                    .unwrap_or_default()
                    .into(),
                authority: self.authority().into(),
                user_agent: header_logged(&self.fields.user_agent),
                x_forwarded_for: header_logged(&self.fields.forwarded_for),
                downstream_local_address: self.down.dst.to_string().into(),
                downstream_remote_address: self.down.peer.to_string().into(),
                requested_server_name: "".into(),
                source_workload: self.down.workload.as_deref().unwrap_or_default().into(),
                destination_workload: rec
                    .destination_workload
                    .as_deref()
                    .unwrap_or_default()
                    .into(),
                bytes_received: request_bytes,
                bytes_sent: self.response_bytes,
                request_id: self.request_id.as_str().into(),
                trace_id: self.trace.trace_id.as_str().into(),
                retries: rec.retries,
                reason: rec.reason.as_deref().unwrap_or_default().into(),
            });
        }
    }
}

impl RequestLog {
    /// The mesh workload at the endpoint `addr`, when it is on this node (see
    /// `tunnel::local_workload`).
    fn local_workload<'s>(
        &self,
        snap: &'s crate::config::Snapshot,
        addr: std::net::SocketAddr,
    ) -> Option<&'s String> {
        crate::tunnel::local_workload(snap, addr, self.ctx.node_address, self.ctx.inbound_port)
    }

    /// Istio's name for the cluster the request went to: the service's subset and port, else
    /// the address dialled (`PassthroughCluster`); empty when it was answered before one was
    /// chosen (no route, a redirect or a direct response).
    fn upstream_cluster(&self) -> String {
        let rec = &self.rec;
        match (&rec.destination_service, rec.destination_port) {
            (Some(host), Some(port)) => {
                access_log::outbound_cluster(port, rec.destination_subset.as_deref(), host)
            }
            (Some(host), None) if host == access_log::BLACK_HOLE_CLUSTER => host.clone(),
            _ if self.passthrough() => access_log::PASSTHROUGH_CLUSTER.to_string(),
            _ => String::new(),
        }
    }

    /// The request's URL as Envoy's tracer writes it: `http://authority/path?query`.
    fn url(&self) -> String {
        let path = (self.uri.path_and_query()).map_or(self.uri.path(), |p| p.as_str());
        format!("http://{}{path}", self.authority())
    }

    /// The request's `:authority`, else its Host, as received.
    fn authority(&self) -> &str {
        match self.uri.authority() {
            Some(a) => a.as_str(),
            None => header_text(&self.fields.host),
        }
    }

    /// The request went to the address dialled, not to a service's cluster.
    fn passthrough(&self) -> bool {
        let rec = &self.rec;
        let cluster = rec.destination_service.is_some() && rec.destination_port.is_some();
        !cluster && rec.upstream_host.is_some()
    }

    /// The SPIFFE identities of the source workload (found once per connection) and of the
    /// endpoint's workload, when known.
    fn principals(&self) -> (String, String) {
        let snap = self.ctx.config.current();
        let td = &self.ctx.trust_domain;
        let source = self
            .down
            .principal
            .as_deref()
            .unwrap_or_default()
            .to_string();
        // Only for an endpoint of a known workload, as the metrics' destination_workload: an
        // address no WorkloadEntry names has no identity meshd could vouch for.
        let destination = self
            .rec
            .upstream_host
            .filter(|h| snap.compiled.endpoints.workload(*h).is_some())
            .and_then(|h| snap.compiled.endpoints.get(h))
            .and_then(|e| crate::tunnel::endpoint_identity(td, e).ok())
            .map(|id| id.to_string())
            .unwrap_or_default();
        (source, destination)
    }
}

/// Microseconds since the Unix epoch.
fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
