//! One HTTP request through the pipeline: strip hop-by-hop headers, forward to the original
//! destination over a pooled connection, map upstream failures to 503 with a response flag,
//! and splice upgraded (WebSocket) connections.

use std::{borrow::Cow, convert::Infallible, sync::Arc, time::Instant};

use hyper::{
    HeaderMap, Method, Request, Response, StatusCode, Version,
    body::Incoming,
    header::{self, HeaderName, HeaderValue},
};

use super::{
    Body, Downstream, HttpContext, ResponseFlags, body,
    cors::{Check as CorsCheck, CorsRules},
    fault, framing, header_values, headers,
    lb::{self, Algorithm, HashInputs},
    outlier,
    pool::{Limits, RetryBudget, UpstreamError},
    priority, ratelimit,
    record::Record,
    replay::FORWARDED_CLIENT_CERT,
    request_log::{LoggedFields, RequestLog, version_text},
    route::{self, Decision},
    send,
    slow_start::SlowStart,
};
use crate::{
    routes::RequestView,
    telemetry::{access_log, route_stats::RouteStat},
};

pub async fn handle(
    mut req: Request<Incoming>,
    down: Arc<Downstream>,
    ctx: Arc<HttpContext>,
    verdicts: framing::Verdicts,
) -> Result<Response<Body>, Infallible> {
    // meshd's span: continues the caller's trace, and is the parent of the upstream request.
    let (trace, request_id) =
        crate::telemetry::trace::propagate(req.headers_mut(), ctx.tracer.sample_rate);
    let grpc = super::deadline::is_grpc(req.headers());
    let head = req.method() == Method::HEAD;
    // An HTTP/1 request whose body has not been read to its end when the answer goes (a local
    // reply, an upstream that answers an upload early) costs the connection: the rest of the
    // body would be read as the next request. As Envoy, meshd says so with `Connection: close`,
    // so the client sends its next request on a new connection.
    let h1_with_body =
        req.version() < Version::HTTP_2 && !hyper::body::Body::is_end_stream(req.body());
    // Counted as the body is read: chunked and HTTP/2 bodies declare no length.
    let received = Arc::new(body::Received::default());
    let req = req.map(|b| {
        let counted = body::Counted::new(b, received.clone());
        if grpc {
            counted.counting_messages()
        } else {
            counted
        }
    });
    // In flight until the record's end (the response's last byte, or a failure).
    down.activity.began();
    let mut log = RequestLog {
        start: Instant::now(),
        method: req.method().clone(),
        // A clone shares the request line's bytes: no copy.
        uri: req.uri().clone(),
        fields: LoggedFields::of(&req, &ctx),
        protocol: if grpc { "grpc" } else { "http" },
        version: version_text(req.version()),
        request_id,
        trace,
        received,
        response_bytes: 0,
        response_messages: grpc.then(Box::default),
        grpc_status: None,
        down,
        ctx,
        status: None,
        // Filled as the request is routed and sent: a client that leaves before the answer
        // is logged with the service, cluster and endpoint known by then, as Envoy logs it.
        rec: Record::default(),
    };
    // HTTP/1 requests were framed by the guard on the connection, in the same order.
    let smuggling = if req.version() < Version::HTTP_2 {
        verdicts
            .lock()
            .expect("verdicts lock")
            .pop_front()
            .flatten()
    } else {
        None
    }
    .or_else(|| {
        (req.version() == Version::HTTP_10 && !log.ctx.accept_http10).then_some(HTTP10_REFUSED)
    })
    .or_else(|| {
        host_problem(&req).map(|reason| framing::Rejection {
            status: 400,
            reason,
        })
    })
    .or_else(|| (req.method() == Method::CONNECT).then_some(CONNECT_REFUSED))
    .or_else(|| {
        let known = req.version() == Version::HTTP_2 || framing::known_method(req.method());
        (!known).then_some(framing::UNKNOWN_METHOD)
    })
    .or_else(|| {
        let many = req.version() == Version::HTTP_2 && req.headers().len() > framing::MAX_HEADERS;
        many.then_some(framing::TOO_MANY_HEADERS)
    })
    .or_else(|| {
        let large = req.version() == Version::HTTP_2
            && framing::header_list_size(&req) > log.ctx.max_header_bytes;
        large.then_some(framing::HEADER_LIST_TOO_LARGE)
    });
    let ask = if req.version() < Version::HTTP_2 {
        upgrade_ask(req.headers())
    } else {
        UpgradeAsk::None
    };
    // The smuggling guard stops reading requests at one that names WebSocket in an Upgrade
    // field (it may be refused, or not be an upgrade at all): unless it is answered with 101,
    // the connection closes after the answer, so no request follows unguarded.
    let upgrading = req.version() < Version::HTTP_2
        && (req.headers().get_all(header::UPGRADE).iter())
            .any(|v| framing::names_websocket(v.as_bytes()));
    // The source workload's share of the node proxy, held until the response ends.
    let admitted = log.ctx.fairness.request(log.down.workload.as_deref());
    let resp = match (smuggling, &admitted) {
        (_, Err(shed)) => {
            log.ctx
                .metrics
                .overflow("workload", &shed.workload, &shed.kind.to_string());
            log.rec
                .fail(ResponseFlags::UPSTREAM_OVERFLOW, shed.to_string());
            send::overloaded(format!("{shed}\n"))
        }
        (Some(framing::Rejection { status, reason }), _) => {
            tracing::warn!(reason, status, peer = %log.down.peer, "refused a request before forwarding it");
            log.rec.reason = Some(format!("refused before forwarding: {reason}"));
            // A protocol error, as Envoy flags its own (a refused CONNECT is not one).
            if status != 403 {
                log.rec
                    .flags
                    .insert(ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR);
            }
            let body = match status {
                400 => format!("bad request: {reason}\n"),
                // Envoy's 426, and its 403 for an upgrade (CONNECT) it does not take, have no
                // body.
                403 | 426 => String::new(),
                _ => format!("{reason}\n"),
            };
            let mut r = local(status, body, None);
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            r
        }
        (None, _) => {
            let mut cors = None;
            let mut resp = forward(
                req,
                ask,
                &log.down,
                &log.ctx,
                &mut log.rec,
                &mut cors,
                log.start,
            )
            .await;
            if let Some((rules, origin)) = cors {
                rules.decorate(origin, resp.headers_mut());
            }
            resp
        }
    };
    let mut resp = if grpc {
        super::grpc_local::as_grpc(resp)
    } else {
        resp
    };
    // An answer to HEAD has no body, also one meshd writes itself (a direct response, a fault's
    // abort, a 503): its Content-Length stays, as Envoy sends it. HTTP/2 would otherwise send
    // the body, which the client takes for a protocol error.
    if head && !hyper::body::Body::is_end_stream(resp.body()) {
        let length = hyper::body::Body::size_hint(resp.body()).exact();
        if let Some(n) = length.filter(|_| !resp.headers().contains_key(header::CONTENT_LENGTH)) {
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        *resp.body_mut() = body::full(bytes::Bytes::new());
    }
    let unread = h1_with_body && log.received.ended_at().is_none();
    if unread || (upgrading && resp.status() != StatusCode::SWITCHING_PROTOCOLS) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    // A client that left before its request ended gets no answer, whatever meshd wrote: Envoy
    // records such a request with code 0 (flag DC).
    let left = log.rec.flags.contains(ResponseFlags::DOWNSTREAM_DISCONNECT);
    log.status = Some(if left { 0 } else { resp.status().as_u16() });
    // Trailers-only gRPC answers carry grpc-status in the headers; others in the trailers, which
    // the body wrapper reads.
    log.grpc_status = resp
        .headers()
        .get(GRPC_STATUS)
        .filter(|v| v.to_str().is_ok())
        .cloned();
    // Envoy writes its own reason phrase, "Unknown" for a code it has no name for, where hyper
    // would write "<none>".
    if resp.status().canonical_reason().is_none() {
        resp.extensions_mut()
            .insert(hyper::ext::ReasonPhrase::from_static(b"Unknown"));
    }
    // A WebSocket's record is written when the upgraded connection ends.
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(relay) = log.down.upgraded.take()
    {
        drop(admitted);
        let (upgraded, received) = (log.down.upgraded.clone(), log.received.clone());
        upgraded.set(relay.recorded(log, received));
        return Ok(resp);
    }
    // The record is written when the response body is done (or dropped): durations and sizes
    // cover the whole response.
    Ok(resp.map(|b| {
        body::boxed(body::Holding::new(
            body::Observed::new(b, log),
            admitted.ok(),
        ))
    }))
}

/// The names of the routes Istio builds where no VirtualService routes: `default` for a
/// service's, `allow_any` to the address dialled, `block_all` under REGISTRY_ONLY.
mod default_route_names {
    use std::sync::{Arc, LazyLock};

    pub static DEFAULT: LazyLock<Arc<str>> = LazyLock::new(|| "default".into());
    pub static ALLOW_ANY: LazyLock<Arc<str>> = LazyLock::new(|| "allow_any".into());
    pub static BLOCK_ALL: LazyLock<Arc<str>> = LazyLock::new(|| "block_all".into());
}

/// Istio's default for HTTP/1.0 (`accept_http_10` off in Envoy): 426 Upgrade Required.
const HTTP10_REFUSED: framing::Rejection = framing::Rejection {
    status: 426,
    reason: "HTTP/1.0 is not accepted (as Istio's default); meshd --http10 on serves it",
};

/// CONNECT, as Istio configures Envoy (no CONNECT upgrade on a sidecar's HTTP routes): refused,
/// since after a 2xx the tunnel's bytes would pass every L7 rule unseen. A workload that talks
/// to a forward proxy reaches it on a port declared `TCP`, carried as opaque bytes.
const CONNECT_REFUSED: framing::Rejection = framing::Rejection {
    status: 403,
    reason: "upgrade_failed: CONNECT is not proxied at L7; declare the port TCP to pass it through",
};

/// What RFC 9112 (section 3.2) says a server must answer 400 to: more than one Host, which two
/// parsers could read differently (meshd routes on the first), or an HTTP/1.1 request naming
/// its target nowhere (no Host and no absolute URI); and, as Envoy (`missing_host_header`),
/// an HTTP/2 request with neither `:authority` nor Host, and an HTTP/1.0 one without Host.
fn host_problem<B>(req: &Request<B>) -> Option<&'static str> {
    let h = req.headers();
    // Checked on every request: a repeated Host is looked for only when some name repeats.
    if h.len() != h.keys_len() && h.get_all(header::HOST).iter().nth(1).is_some() {
        return Some("more than one Host");
    }
    // HTTP/1.0 too (served with `--http10 on`): Envoy takes one without Host only when
    // `default_host_for_http_10` names a host, which Istio does not set.
    let untargeted = req.uri().authority().is_none();
    if untargeted && !h.contains_key(header::HOST) {
        return Some(match req.version() {
            Version::HTTP_2 => "HTTP/2 request without :authority or Host",
            Version::HTTP_10 => "HTTP/1.0 request without Host",
            _ => "HTTP/1.1 request without Host",
        });
    }
    let authority = match req.uri().authority() {
        Some(a) => Some(a.as_str().as_bytes()),
        None => h.get(header::HOST).map(HeaderValue::as_bytes),
    };
    authority
        .is_some_and(|a| !valid_authority(a))
        .then_some("invalid Host (an authority is host[:port], no user info)")
}

/// `host[:port]` as RFC 9110 allows it in Host: a registered name or address (an IPv6 one in
/// brackets) of URI characters, without user info (`@`), and a port of at most 65535. As
/// Envoy, meshd refuses anything else rather than route by one reading of it and let the
/// upstream take another.
fn valid_authority(a: &[u8]) -> bool {
    let (host, port) = match a.iter().rposition(|&b| b == b':') {
        // A colon inside an IPv6 literal is not the port's.
        Some(i) if !a[i..].contains(&b']') => (&a[..i], Some(&a[i + 1..])),
        _ => (a, None),
    };
    let host_ok = match host {
        [b'[', inner @ .., b']'] => inner
            .iter()
            .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.')),
        _ => host.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'%'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                )
        }),
    };
    let port_ok = port.is_none_or(|p| {
        p.len() <= 5 && p.iter().all(u8::is_ascii_digit) && {
            let n = p.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
            n <= 65535
        }
    });
    host_ok && port_ok
}

pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// Envoy's header with the path a request had before its route rewrote it.
const ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");

fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE) && headers::has_token(h, header::CONNECTION, "upgrade")
}

/// What an HTTP/1.1 request's upgrade asks for, as Istio configures Envoy: WebSocket is the
/// one upgrade proxied; `h2c` is dropped by the codec and the request served as HTTP/1.1; any
/// other is refused (403, `upgrade_failed`), since after a 101 no route, timeout, retry or
/// authorization rule would see what flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UpgradeAsk {
    None,
    WebSocket,
    H2c,
    Other,
}

/// Whether an HTTP/1.1 request asks for the one upgrade meshd proxies, WebSocket.
pub fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    req.version() < Version::HTTP_2 && upgrade_ask(req.headers()) == UpgradeAsk::WebSocket
}

fn upgrade_ask(h: &HeaderMap) -> UpgradeAsk {
    if !is_upgrade(h) {
        return UpgradeAsk::None;
    }
    // As Envoy looks up the upgrade type: the whole value, in any case (`foo/2, websocket` is
    // not a WebSocket upgrade), repeated fields joined (so two never name one protocol).
    let mut fields = h.get_all(header::UPGRADE).iter();
    let value = fields.next().map(|v| v.as_bytes().trim_ascii());
    let single = fields.next().is_none();
    let asks = |p: &str| single && value.is_some_and(|v| v.eq_ignore_ascii_case(p.as_bytes()));
    if asks("websocket") {
        UpgradeAsk::WebSocket
    } else if asks("h2c") {
        UpgradeAsk::H2c
    } else {
        UpgradeAsk::Other
    }
}

/// A local response (direct response, redirect, or a meshd error) with a text body.
pub(super) fn local(
    status: u16,
    body: impl Into<bytes::Bytes>,
    extra: Option<(header::HeaderName, String)>,
) -> Response<Body> {
    // A status that has no content (1xx, 204, 304) goes out without the text: HTTP/2 clients
    // reject a 204 that announces a length.
    let bodiless = matches!(status, 100..=199 | 204 | 304);
    let body: bytes::Bytes = if bodiless {
        bytes::Bytes::new()
    } else {
        body.into()
    };
    let empty = body.is_empty();
    let mut resp = Response::new(body::full(body.clone()));
    resp.extensions_mut()
        .insert(super::grpc_local::LocalReply(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    // An empty answer (Envoy's when no route matches, or no cluster is found) has no content
    // type, as Envoy's.
    if !empty {
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    if let Some((name, value)) = extra
        && let Ok(v) = HeaderValue::from_str(&value)
    {
        resp.headers_mut().insert(name, v);
    }
    resp
}

/// Routes and sends one request. `cors` is set when the matched route's `corsPolicy` allows the
/// request's origin: the caller marks the response, whatever produced it.
async fn forward(
    mut req: Request<body::Inbound>,
    ask: UpgradeAsk,
    down: &Downstream,
    ctx: &HttpContext,
    rec: &mut Record,
    cors: &mut Option<(Arc<CorsRules>, HeaderValue)>,
    started: Instant,
) -> Response<Body> {
    if let Some(uri) = super::normalize::normalized(req.uri()) {
        *req.uri_mut() = uri;
    }
    // Envoy routes relative paths only: any other target (`OPTIONS *`, `GET *`) gets its empty
    // 404 before routing, with no flag, and never reaches an upstream.
    if !req.uri().path().starts_with('/') {
        rec.reason = Some("absolute_path: only a target whose path starts with / is routed".into());
        return local(404, "", None);
    }
    // The authority a request is routed and authorized by is the one it goes upstream with:
    // an absolute-form target's replaces the Host a proxy received (RFC 9112 section 3.2.2),
    // and HTTP/2's `:authority` a `host` field beside it, as in Envoy.
    if let Some(a) = req.uri().authority()
        && req
            .headers()
            .get(header::HOST)
            .is_some_and(|h| h.as_bytes() != a.as_str().as_bytes())
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        req.headers_mut().insert(header::HOST, v);
    }
    // The snapshot this request started with serves it to the end, whatever reloads happen.
    let snap = ctx.config.current();
    let h2 = req.version() == Version::HTTP_2;
    let upgrade = match ask {
        UpgradeAsk::WebSocket => true,
        UpgradeAsk::None => false,
        UpgradeAsk::H2c => {
            // Served as HTTP/1.1: the Upgrade header and what Connection names go as
            // hop-by-hop headers; HTTP2-Settings too, named there or not.
            req.headers_mut().remove("http2-settings");
            false
        }
        UpgradeAsk::Other => {
            let asked = req.headers().get(header::UPGRADE).cloned();
            rec.reason = Some(format!(
                "upgrade_failed: only websocket upgrades are proxied, not {:?}",
                asked
                    .as_ref()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()))
            ));
            // Envoy's refusal has no body.
            return local(403, "", None);
        }
    };
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_else(|| down.dst.to_string());
    let client = snap.compiled.client(down.workload.as_deref());
    let (labels, source_ns) = (client.labels, client.namespace);
    // Short names complete in the client's namespace ("default" for an unknown client).
    let client_ns = source_ns.unwrap_or("default");
    let candidates = route::host_candidates(&authority, client_ns, down.dst, &snap);
    // What Envoy's operators in header edits (`%DOWNSTREAM_REMOTE_ADDRESS%`, ...) read.
    let edits = header_values::Context {
        peer: down.peer,
        local: down.dst,
        protocol: if h2 { "HTTP/2" } else { "HTTP/1.1" },
        started,
    };

    let (decision, new_path) = {
        let headers = req.headers();
        let scheme = req.uri().scheme_str().unwrap_or("http");
        // As Envoy's header matchers: pseudo-headers, and `host` as the authority (which an
        // HTTP/2 request carries as `:authority`, not as a Host header).
        let lookup = |n: &str| match n {
            ":authority" | "host" => Some(Cow::Borrowed(authority.as_str())),
            ":method" => Some(Cow::Borrowed(req.method().as_str())),
            ":path" => req
                .uri()
                .path_and_query()
                .map(|p| Cow::Borrowed(p.as_str())),
            ":scheme" => Some(Cow::Borrowed(scheme)),
            _ => headers::joined(headers, n),
        };
        let view = RequestView {
            method: req.method().as_str(),
            path: req.uri().path(),
            query: req.uri().query(),
            authority: &authority,
            scheme,
            port: down.dst.port(),
            header: &lookup,
            source_labels: labels,
            source_namespace: source_ns,
        };
        let decision = route::decide(&snap, &candidates, &view);
        // A route's statistics count what it sends upstream, not its direct responses.
        if let Decision::Forward { route, vhost, .. } = &decision {
            rec.stat_prefix = route
                .stat_prefix(&view)
                .map(|prefix| Arc::new(RouteStat::new(vhost, view.port, prefix)));
        }
        let new_path = match &decision {
            Decision::Forward { route, .. } => route
                .spec
                .rewrite
                .as_ref()
                .and_then(|r| r.uri.as_deref())
                .map(|u| route::rewrite_path(route, &view, u))
                .or_else(|| route.regex_rewrite.as_ref().map(|r| r.apply(view.path))),
            _ => None,
        };
        (decision, new_path)
    };
    if let Some(rules) = decision.route().and_then(|r| r.cors.as_ref()) {
        match rules.check(req.method(), req.headers()) {
            CorsCheck::Pass => {}
            CorsCheck::Preflight(resp) => return resp,
            CorsCheck::Allowed(origin) => *cors = Some((rules.clone(), origin)),
        }
    }

    let default_route;
    let (route, destination) = match decision {
        // As in Envoy, the route's response header edits apply to its direct responses and
        // redirects too.
        Decision::Direct {
            status,
            body,
            route,
        } => {
            let resp = local(status, body, None);
            return with_route_edits(resp, route, &req, &authority, &edits);
        }
        Decision::Redirect {
            status,
            location,
            route,
        } => {
            let resp = local(status, String::new(), Some((header::LOCATION, location)));
            return with_route_edits(resp, route, &req, &authority, &edits);
        }
        Decision::NoRoute { host } => {
            rec.fail(
                ResponseFlags::NO_ROUTE,
                format!("no route of the VirtualService for {host} matched"),
            );
            rec.destination_service = Some(host.clone());
            // Envoy's answer when no route matches has no body.
            return local(404, "", None);
        }
        Decision::Passthrough => {
            // No VirtualService: Istio's default route to the service the request names (by a
            // Host of a ServiceEntry declaring the port dialled, else by the VIP dialled), where
            // its endpoints and DestinationRule apply (an external service without endpoints is
            // reached at the address the client dialled, unless that is another service's VIP);
            // else the original destination.
            let port = down.dst.port();
            let vip = snap.compiled.vip_host(down.dst);
            default_route = candidates
                .iter()
                .map(|h| h.as_ref())
                .find(|h| {
                    snap.compiled.clusters.get(*h).is_some_and(|c| {
                        c.ports.contains_key(&port)
                            && (Some(*h) == vip || c.has_endpoints_on(port) || vip.is_none())
                    })
                })
                // Else the wildcard ServiceEntry whose `*.suffix` covers the Host, as Istio's
                // virtual host for it routes there (one without endpoints to the address
                // dialled, under its DestinationRule, unless that is another service's VIP).
                .or_else(|| {
                    let host = candidates.host_names().first()?;
                    snap.compiled.wildcard_service(host, port, vip.is_some())
                })
                .map(|h| crate::routes::Destination::service(h, port));
            // The names Istio gives these routes, for the access log's `route_name`.
            rec.route_name = Some(match (&default_route, snap.mesh.registry_only) {
                (Some(_), _) => default_route_names::DEFAULT.clone(),
                (None, true) => default_route_names::BLOCK_ALL.clone(),
                (None, false) => default_route_names::ALLOW_ANY.clone(),
            });
            // Under REGISTRY_ONLY, what no service describes goes to Istio's BlackHoleCluster,
            // whose route answers 502 with no body.
            if default_route.is_none() && snap.mesh.registry_only {
                rec.destination_service = Some(access_log::BLACK_HOLE_CLUSTER.into());
                rec.reason = Some("no ServiceEntry describes the destination, and --outbound-traffic-policy is REGISTRY_ONLY".into());
                return local(502, "", None);
            }
            rec.destination_port = default_route.as_ref().map(|_| port);
            rec.destination_service = default_route
                .as_ref()
                .map(|d| d.host.clone())
                .or_else(|| vip.map(str::to_string))
                .or_else(|| candidates.first().map(|h| h.to_string()));
            (None, default_route.as_ref())
        }
        Decision::Forward {
            route, destination, ..
        } => {
            rec.destination_service = Some(destination.host.clone());
            rec.destination_subset.clone_from(&destination.subset);
            rec.route_name.clone_from(&route.spec.name);
            // The service's port names the cluster, also for a request that finds no endpoint.
            rec.destination_port = Some(route::service_port(&snap, destination, down.dst));
            // Boxed, as are the rate limits below: only some routes have them, and their state
            // would otherwise enlarge every request's future, which is moved as it starts.
            if route.spec.fault.is_some()
                && let Some(resp) =
                    Box::pin(fault::inject(route.spec.fault.as_ref(), &mut rec.flags)).await
            {
                rec.reason = Some("fault injection abort".into());
                // Answered here: nothing for the route's upstream statistics.
                rec.stat_prefix = None;
                return with_route_edits(resp, route, &req, &authority, &edits);
            }
            (Some(route), Some(destination))
        }
    };
    // Rate limits apply to every request that would be forwarded.
    let verdict = if snap.policies.rate_limit_policies.is_empty() {
        ratelimit::Verdict::Allow
    } else {
        let headers = req.headers();
        // The first field of the name, as Envoy's `request_headers` action reads it; bytes
        // that are not UTF-8 count too, so they cannot step around a limit.
        let lookup =
            |n: &str| (headers.get(n)).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let route_name = route.and_then(|r| r.spec.name.as_deref());
        Box::pin(ratelimit::check(
            &snap,
            &candidates,
            route_name,
            &lookup,
            down.workload.as_deref(),
            ctx,
        ))
        .await
    };
    // As Envoy's local replies once a route is chosen, these answers get its response edits.
    let routed = |resp| match route {
        Some(r) => with_route_edits(resp, r, &req, &authority, &edits),
        None => resp,
    };
    match verdict {
        ratelimit::Verdict::Allow => {}
        ratelimit::Verdict::Limited(l) => {
            rec.fail(ResponseFlags::RATE_LIMITED, "rate limited");
            rec.stat_prefix = None;
            // Envoy's bodies: its local rate limit filter's, and none from its global one,
            // which marks the answer instead.
            let body = if l.global { "" } else { "local_rate_limited\n" };
            let mut r = local(429, body, None);
            let h = r.headers_mut();
            if l.global {
                h.insert(super::send::RATELIMITED, HeaderValue::from_static("true"));
            }
            h.insert("x-ratelimit-limit", HeaderValue::from(l.limit));
            h.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
            h.insert(
                header::RETRY_AFTER,
                HeaderValue::from(l.retry_after.as_secs_f64().ceil().max(1.0) as u64),
            );
            return routed(r);
        }
        ratelimit::Verdict::Unavailable => {
            rec.stat_prefix = None;
            rec.fail(
                ResponseFlags::RATE_LIMIT_SERVICE_ERROR,
                "rate limit service unavailable (failureModeDeny)",
            );
            // Envoy's rate limit filter answers this with an empty body.
            return routed(local(500, "", None));
        }
    }
    // As Istio configures Envoy: several weighted destinations are weighted clusters, whose
    // edits come before the route's; a single destination's edits are appended to the route's,
    // after them. The later level's `set` wins.
    let (route_level, destination_level) = (
        route.and_then(|r| r.spec.headers.as_ref()),
        destination.and_then(|d| d.headers.as_ref()),
    );
    let (levels, how) = if route.is_some_and(|r| r.destinations.len() > 1) {
        ([destination_level, route_level], headers::Levels::InTurn)
    } else {
        ([route_level, destination_level], headers::Levels::OneList)
    };

    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    // As Envoy's default (SANITIZE) on a sidecar's outbound side: a workload cannot claim a
    // client certificate; the tunnel sets the header for the certificate it presents.
    parts.headers.remove(FORWARDED_CLIENT_CERT);
    // As Envoy's connection manager: the scheme the client used, when it did not say; a
    // captured workload speaks plain HTTP to meshd (TLS of its own passes as TCP).
    // One lookup, not two (every request pays it).
    parts
        .headers
        .entry(X_FORWARDED_PROTO)
        .or_insert(HeaderValue::from_static("http"));
    // hyper's server answers `100 Continue` itself once the body is read, as Envoy does by
    // default: the upstream is not asked again.
    if parts
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    {
        parts.headers.remove(header::EXPECT);
    }
    let line = request_line(&parts.method, &parts.uri, &authority);
    headers::edit_request(&mut parts.headers, &levels, how, &edits, &line);
    let reads_request = headers::responses_read_request(&levels);
    // `rewrite.authority` after the header edits, as Envoy's host rewrite: it wins over a set
    // Host.
    if let Some(a) = route
        .and_then(|r| r.spec.rewrite.as_ref())
        .and_then(|r| r.authority.as_deref())
        && let Ok(v) = HeaderValue::from_str(a)
    {
        parts.headers.insert(header::HOST, v);
    }
    let upstream_authority = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map_or(Cow::Borrowed(authority.as_str()), |h| {
            Cow::Owned(h.to_string())
        });
    // The client's protocol, unless the destination's port and DestinationRule decide.
    let mut h2_upstream = h2;
    // A cookie meshd generated for consistent hashing goes back to the client.
    let mut set_cookie = None;
    let mut weights = None;
    let mut slow_start = None;
    let (endpoints, algo, cluster, outlier, limits, priorities) = match destination {
        None => (
            Ok(vec![down.dst]),
            Algorithm::RoundRobin,
            down.dst.to_string(),
            None,
            Limits::default(),
            None,
        ),
        Some(d) => match route::endpoints(&snap, d, &candidates, down.dst, Some(&client)) {
            Ok((mut e, mut policy)) => {
                // `distribute` may leave no endpoint for this client's locality.
                let spread =
                    priority::distribute(ctx.locality.as_ref(), &d.host, &mut e, &mut policy);
                let inputs = HashInputs {
                    headers: &parts.headers,
                    query: parts.uri.query(),
                    peer: down.peer,
                    local: down.dst,
                };
                let algo;
                (algo, set_cookie) = lb::algorithm(policy.lb, &inputs);
                let priorities = priority::priorities(
                    ctx.locality.as_ref(),
                    ctx.node_address,
                    client.labels,
                    &policy,
                );
                weights = policy.weights.take();
                slow_start = policy.lb.and_then(SlowStart::from_spec);
                // An upgrade (WebSocket) stays HTTP/1.1: it takes a connection of its own.
                h2_upstream = !upgrade && policy.upstream_http2(h2);
                let mut limits = Limits::from_spec(policy.pool);
                limits.generation = snap.generation;
                limits.retry_budget = policy.retry_budget.map(RetryBudget::from_spec);
                down.proxy_protocol(&policy, &mut limits);
                // TLS origination sends the request's host as the server name (Istio's
                // automatic SNI) unless the DestinationRule names one.
                if policy.tls.is_some() {
                    let host = crate::routes::table::host_of(&upstream_authority);
                    let pool = &ctx.pool;
                    match pool
                        .originations
                        .for_request(policy.tls, &host, h2_upstream)
                    {
                        Ok(tls) => limits.tls = tls,
                        Err(reason) => {
                            let e = UpstreamError::Origination { reason };
                            return send::upstream_failed(&e, rec, false);
                        }
                    }
                }
                (
                    spread.map(|()| e),
                    algo,
                    policy.key,
                    policy.outlier.map(outlier::Settings::from_spec),
                    limits,
                    priorities,
                )
            }
            Err(e) => (
                Err(e),
                Algorithm::RoundRobin,
                d.host.clone(),
                None,
                Limits::default(),
                None,
            ),
        },
    };
    // As Envoy's router, a rewritten path goes with the one received (and its query).
    if new_path.is_some() {
        let received = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        if let Ok(v) = HeaderValue::from_str(received) {
            parts.headers.insert(ORIGINAL_PATH, v);
        }
    }
    if h2_upstream {
        // HTTP/2 keeps the absolute form; the authority is the (possibly rewritten) Host.
        parts.headers.remove(header::HOST);
        let pq = path_and_query(new_path.as_deref(), &parts.uri);
        if let Ok(uri) = format!("http://{upstream_authority}{pq}").parse() {
            parts.uri = uri;
        }
    } else {
        // HTTP/1 upstream requests use origin-form; the Host header carries the authority. An
        // origin-form request without a rewrite keeps its URI as received.
        let origin_form = parts.uri.scheme().is_none() && parts.uri.authority().is_none();
        if new_path.is_some() || !origin_form {
            let pq = path_and_query(new_path.as_deref(), &parts.uri);
            if let Ok(uri) = pq.parse() {
                parts.uri = uri;
            }
        }
        // An HTTP/2 client's authority travels in the URI; HTTP/1.1 carries it in Host.
        if !parts.headers.contains_key(header::HOST)
            && let Ok(host) = HeaderValue::from_str(&upstream_authority)
        {
            parts.headers.insert(header::HOST, host);
        }
        if h2 {
            headers::join_cookies(&mut parts.headers);
        }
        parts.version = Version::HTTP_11;
    }
    // Response edits that read the request (`%REQ(...)%`) get it as it went upstream, as
    // Envoy's router edits the request's own headers: rewritten path and authority included.
    let kept = reads_request.then(|| {
        let line = request_line(&parts.method, &parts.uri, &upstream_authority);
        (parts.headers.clone(), line.to_owned())
    });

    let req = Request::from_parts(parts, body);
    let plan = send::Plan {
        upstream: ctx.pool.cluster(&cluster),
        limits,
        cluster,
        outlier,
        snap: &snap,
        route,
        candidates: &candidates,
        authority: &upstream_authority,
        h2: h2_upstream,
        endpoints,
        algo,
        weights,
        slow_start,
        priorities,
    };
    let mut resp = match downstream_upgrade {
        // Boxed: rare, and its state would otherwise enlarge every request's future.
        Some(down_up) => Box::pin(super::upgrade::send(req, down_up, down, ctx, &plan, rec)).await,
        None => send::with_policy(&plan, req, down, ctx, rec).await,
    };
    if let Some(c) = set_cookie {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    let request = kept
        .as_ref()
        .map(|(headers, line)| header_values::Request { headers, line });
    headers::edit_response(resp.headers_mut(), &levels, how, &edits, request.as_ref());
    resp
}

/// A local answer (a direct response, a redirect) with its route's response header edits, as
/// Envoy applies them to those too.
fn with_route_edits<B>(
    mut resp: Response<Body>,
    route: &crate::routes::HttpRoute,
    req: &Request<B>,
    authority: &str,
    edits: &header_values::Context<'_>,
) -> Response<Body> {
    let line = request_line(req.method(), req.uri(), authority);
    let request = header_values::Request {
        headers: req.headers(),
        line: &line,
    };
    let levels = [route.spec.headers.as_ref()];
    headers::edit_response(
        resp.headers_mut(),
        &levels,
        headers::Levels::InTurn,
        edits,
        Some(&request),
    );
    resp
}

/// A request's pseudo-headers for header edits, borrowed from it.
fn request_line<'r>(
    method: &'r Method,
    uri: &'r hyper::Uri,
    authority: &'r str,
) -> header_values::RequestLine<'r> {
    header_values::RequestLine {
        method: method.as_str().into(),
        path: uri.path_and_query().map_or("/", |p| p.as_str()).into(),
        authority: authority.into(),
        scheme: uri.scheme_str().unwrap_or("http").into(),
    }
}

/// The path (rewritten, if `new_path`) and the query of the upstream request.
fn path_and_query(new_path: Option<&str>, uri: &hyper::Uri) -> String {
    match (new_path, uri.query()) {
        (Some(p), Some(q)) => format!("{p}?{q}"),
        (Some(p), None) => p.to_string(),
        (None, _) => uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_are_host_and_port_only() {
        for ok in [
            "reviews",
            "reviews.default.svc.cluster.local:9080",
            "127.0.0.1:80",
            "[::1]:8080",
            "[fe80::1]",
            "a_b-c.example:",
        ] {
            assert!(valid_authority(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "x@secret.example",
            "a b",
            "backend:99999",
            "backend:80x",
            "backend:123456",
            "[::1",
            "host/path",
            "göld.example",
        ] {
            assert!(!valid_authority(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn upgrades_keep_their_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", "Upgrade".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        assert!(is_upgrade(&h));
        headers::strip_hop_by_hop(&mut h, true);
        assert!(h.get("connection").is_some() && h.get("upgrade").is_some());
    }
}
