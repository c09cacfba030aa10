//! Sending a routed request upstream under the route's policy: mirrors fire first, then
//! attempts run with retries, per-try timeouts and backoff, all bounded by the route timeout.
//! The outcome carries Envoy's response flags (UF, UC, UH, UT, URX).

use std::{borrow::Cow, net::SocketAddr, sync::Arc};

use hyper::{
    Request, Response,
    header::{self, HeaderValue},
};

use super::{
    Body, Downstream, HttpContext, ResponseFlags, authorize,
    body::ClientFailure,
    deadline::{self, Deadline, EXPECTED_TIMEOUT, GRPC_TIMEOUT, is_grpc},
    forward::{GRPC_STATUS, local},
    lb::Algorithm,
    locality, mirror,
    outlier::{self, Outcome as Health},
    overrides,
    pool::{ClusterPool, Counter, Limits, UpstreamError},
    priority::{distribute, levels},
    record::Record,
    replay::{self, ATTEMPT_COUNT, Outgoing, Prepared, RETRY_BUFFER},
    retry::{self, Outcome, RetryPolicy},
    route::{self, NoEndpoint},
    slow_start::SlowStart,
};
use crate::{
    config::Snapshot,
    routes::{Destination, HttpRoute},
};

/// Envoy's response header with the upstream's time in milliseconds.
const UPSTREAM_SERVICE_TIME: hyper::header::HeaderName =
    hyper::header::HeaderName::from_static("x-envoy-upstream-service-time");

/// Where a request goes and under which route.
pub struct Plan<'a> {
    pub snap: &'a Snapshot,
    pub route: Option<&'a HttpRoute>,
    pub candidates: &'a [Cow<'a, str>],
    pub authority: &'a str,
    pub h2: bool,
    /// The destination's endpoints, or why there are none.
    pub endpoints: Result<Vec<SocketAddr>, NoEndpoint>,
    pub algo: Algorithm,
    /// Each endpoint's weight, in the order of `endpoints`, when they differ.
    pub weights: Option<Vec<u32>>,
    /// Slow start for endpoints new to the service (`warmup`).
    pub slow_start: Option<SlowStart>,
    /// Each endpoint's locality priority, when locality-aware load balancing applies.
    pub priorities: Option<Vec<u8>>,
    /// The endpoint set's identity (host, subset, port) for outlier state.
    pub cluster: String,
    pub outlier: Option<outlier::Settings>,
    /// The cluster's share of the upstream pool, and its connectionPool limits.
    pub upstream: Arc<ClusterPool>,
    pub limits: Limits,
}

impl Plan<'_> {
    /// Feeds an attempt's outcome to outlier detection.
    pub(super) fn observe<B>(
        &self,
        ctx: &HttpContext,
        target: SocketAddr,
        result: &Result<Response<B>, UpstreamError>,
    ) {
        let (Some(s), Ok(all)) = (&self.outlier, &self.endpoints) else {
            return;
        };
        let health = match result {
            Ok(resp) => Health::Status(
                super::grpc_local::http_for_grpc(resp).unwrap_or(resp.status().as_u16()),
            ),
            // Shed locally: says nothing about the endpoint.
            Err(UpstreamError::Overflow { .. }) => return,
            // Failed once the connection was there: a reset, or an answer h2 or meshd refused.
            Err(UpstreamError::Send { .. } | UpstreamError::Protocol { .. }) => {
                Health::LocalFailureConnected
            }
            Err(_) => Health::LocalFailure,
        };
        ctx.observe_outcome(&self.cluster, s, target, health, all);
    }

    /// An attempt to `target`, sent on its connection, ended by its per-try timeout or the
    /// route timeout: a local-origin failure for outlier detection, as Envoy counts a timeout
    /// (unsplit, as a 5xx and a gateway error).
    pub(super) fn observe_timeout(&self, ctx: &HttpContext, target: SocketAddr) {
        if let (Some(s), Ok(all)) = (&self.outlier, &self.endpoints) {
            let health = Health::LocalFailureConnected;
            ctx.observe_outcome(&self.cluster, s, target, health, all);
        }
    }

    /// An endpoint for the next attempt, avoiding the endpoints earlier attempts used
    /// (`attempted`) while another is healthy, as Envoy's `previous_hosts` retry predicate
    /// under Istio (unless the route sets `retryIgnorePreviousHosts: false`). `tried` collects
    /// the locality priorities of earlier attempts; with `retryRemoteLocalities`, a retry goes
    /// to another one while any is healthy.
    pub fn target(
        &self,
        ctx: &HttpContext,
        attempted: &[SocketAddr],
        tried: &mut u32,
    ) -> Result<SocketAddr, NoEndpoint> {
        match &self.endpoints {
            Ok(all) => {
                let candidates = ctx.candidates(&self.cluster, self.outlier.as_ref(), all)?;
                let skip = if self.retry_remote_localities() {
                    *tried
                } else {
                    0
                };
                let (addr, level) = Selection {
                    cluster: &self.cluster,
                    turn: &self.upstream.turn,
                    algo: &self.algo,
                    all,
                    priorities: self.priorities.as_deref(),
                    weights: self.weights.as_deref(),
                    slow_start: self.slow_start,
                }
                .pick(&ctx.lb, candidates, skip, self.avoided(attempted));
                if let Some(level) = level {
                    *tried |= 1 << level;
                }
                Ok(addr)
            }
            Err(e) => Err(e.clone()),
        }
    }
}

/// How one endpoint is chosen from a service's, for a request's attempt or an opaque
/// connection alike.
pub struct Selection<'a> {
    pub cluster: &'a str,
    /// The cluster's round-robin position (`ClusterPool::turn`).
    pub turn: &'a std::sync::atomic::AtomicUsize,
    pub algo: &'a Algorithm,
    /// Every endpoint, in the order `priorities` and `weights` follow.
    pub all: &'a [SocketAddr],
    pub priorities: Option<&'a [u8]>,
    pub weights: Option<&'a [u32]>,
    pub slow_start: Option<SlowStart>,
}

impl Selection<'_> {
    /// One of `candidates` (the healthy endpoints): at the locality priority chosen, when there
    /// are priorities, leaving out the levels in `skip` while another has healthy endpoints;
    /// weighted by slow start or the endpoints' weights; avoiding those in `attempted` while
    /// it can. Also returns the priority level it came from.
    pub fn pick(
        &self,
        lb: &super::lb::Balancer,
        mut candidates: Cow<'_, [SocketAddr]>,
        skip: u32,
        attempted: &[SocketAddr],
    ) -> (SocketAddr, Option<u8>) {
        let all = self.all;
        let level = self.priorities.and_then(|p| {
            let level = locality::choose(&levels(all, p, &candidates), skip, fastrand::f64())?;
            // By index: an address listed twice may sit at two levels.
            let at_level: Vec<SocketAddr> = (all.iter().zip(p))
                .filter(|(a, l)| **l == level && candidates.contains(a))
                .map(|(a, _)| *a)
                .collect();
            if !at_level.is_empty() {
                candidates = Cow::Owned(at_level);
            }
            Some(level)
        });
        let warming = self.slow_start.and_then(|s| {
            let ages = lb.ages.warming(self.cluster, all, s.window())?;
            s.weights(&ages, self.weights)
        });
        let weights = warming.as_deref().or(self.weights).map(|w| (all, w));
        (
            lb.pick(self.turn, self.algo, &candidates, attempted, weights),
            level,
        )
    }
}

impl Plan<'_> {
    /// The endpoints a retry avoids: those `attempted`, unless the route's retries set
    /// `retryIgnorePreviousHosts: false`.
    fn avoided<'a>(&self, attempted: &'a [SocketAddr]) -> &'a [SocketAddr] {
        let retries = self.route.and_then(|r| r.spec.retries.as_ref());
        match retries.and_then(|r| r.retry_ignore_previous_hosts) {
            Some(false) => &[],
            _ => attempted,
        }
    }

    fn retry_remote_localities(&self) -> bool {
        self.route
            .and_then(|r| r.spec.retries.as_ref())
            .and_then(|r| r.retry_remote_localities)
            .unwrap_or(false)
    }
}

/// The `x-envoy-attempt-count` value: static for the usual few attempts, so that setting it on
/// every request allocates nothing.
fn attempt_count(n: u32) -> HeaderValue {
    const FEW: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match FEW.get(n as usize) {
        Some(s) => HeaderValue::from_static(s),
        None => HeaderValue::from(n),
    }
}

/// Why an attempt produced no response.
#[derive(Debug)]
pub(super) enum Failed {
    NoEndpoint(NoEndpoint),
    Upstream(UpstreamError),
    PerTryTimeout,
    /// AuthorizationPolicy of the (local) destination workload denies the request.
    Denied(String),
    /// The client failed its streamed request body: nothing the upstream did.
    Client(ClientFailure),
}

pub(super) fn outcome<B>(r: &Result<Response<B>, Failed>) -> Outcome {
    match r {
        // As Envoy's retry state: an answer from a proxy shedding load (`x-envoy-overloaded`)
        // is never retried, and one from a proxy's rate limit (`x-envoy-ratelimited`) only
        // under `envoy-ratelimited`, which meshd does not retry on.
        Ok(resp)
            if resp.headers().contains_key(OVERLOADED)
                || resp.headers().contains_key(RATELIMITED) =>
        {
            Outcome::Response {
                status: 0,
                grpc: None,
            }
        }
        Ok(resp) => Outcome::Response {
            status: resp.status().as_u16(),
            grpc: resp
                .headers()
                .get(GRPC_STATUS)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
        },
        // Envoy does not retry "no healthy upstream", nor a request its own limits shed.
        Err(
            Failed::NoEndpoint(_)
            | Failed::Denied(_)
            | Failed::Client(_)
            | Failed::Upstream(UpstreamError::Overflow { .. }),
        ) => Outcome::Response {
            status: 0,
            grpc: None,
        },
        Err(Failed::PerTryTimeout) => Outcome::Timeout,
        Err(Failed::Upstream(UpstreamError::Send { source, .. })) if refused_stream(source) => {
            Outcome::RefusedStream
        }
        Err(Failed::Upstream(UpstreamError::Send { .. } | UpstreamError::Protocol { .. })) => {
            Outcome::Reset
        }
        Err(Failed::Upstream(_)) => Outcome::ConnectFailure,
    }
}

/// Whether an HTTP/2 upstream refused the stream (it did not process the request): a
/// REFUSED_STREAM reset, or a GOAWAY that came before the stream could be processed (a stream
/// above its last stream id, or one opened as it arrived), whatever the GOAWAY's error code,
/// as Envoy's codecs close such streams with REFUSED_STREAM (RFC 9113 section 8.7). h2 gives
/// the GOAWAY's error only to those streams; one it had processed fails, if at all, with the
/// connection's end.
pub(super) fn refused_stream(e: &super::body::BoxError) -> bool {
    e.downcast_ref::<h2::Error>().is_some_and(|e| {
        e.reason() == Some(h2::Reason::REFUSED_STREAM) || (e.is_go_away() && e.is_remote())
    })
}

pub fn no_endpoint(e: NoEndpoint, rec: &mut Record) -> Response<Body> {
    rec.fail(e.flag(), e.to_string());
    // Per request, as the access log records it (its `reason`): not a warning each time.
    tracing::debug!(error = %e, "no endpoint");
    // Envoy's answer for a cluster not found has no body.
    let body = match e.flag() {
        ResponseFlags::NO_CLUSTER_FOUND => "",
        _ => "no healthy upstream",
    };
    local(503, body, None)
}

pub fn upstream_failed(e: &UpstreamError, rec: &mut Record, exhausted: bool) -> Response<Body> {
    rec.fail(e.flag(), e.to_string());
    if exhausted {
        rec.flags.insert(ResponseFlags::RETRY_LIMIT);
    }
    if let UpstreamError::Overflow { .. } = e {
        tracing::debug!(error = %e, "request shed by a connection-pool limit");
        return overloaded(format!(
            "upstream connect error or disconnect/reset before headers. reset reason: {}",
            e.reset_reason()
        ));
    }
    tracing::debug!(error = %e, "upstream request failed");
    reset_before_headers(e)
}

/// 400 for a request whose body the client broke: flag DC when it went away (the answer then
/// reaches no one, and the request is recorded with code 0), DPE when the body broke the
/// protocol (a bad chunk, a length mismatch).
fn client_failed(failure: ClientFailure, rec: &mut Record) -> Response<Body> {
    match failure {
        ClientFailure::Disconnected => rec.fail(
            ResponseFlags::DOWNSTREAM_DISCONNECT,
            "downstream disconnected before the request body ended",
        ),
        ClientFailure::Malformed => rec.fail(
            ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
            "malformed request body",
        ),
    }
    let mut r = local(
        400,
        "bad request: the request body could not be read\n",
        None,
    );
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// 403 for a request the destination's AuthorizationPolicy denies, as Envoy's RBAC filter.
pub fn denied(reason: String, rec: &mut Record) -> Response<Body> {
    // At debug, as Envoy's RBAC filter logs: the access log records every denial with its
    // reason, and a client hammering a denied path must not flood the daemon's log.
    tracing::debug!(reason = %reason, "request denied by authorization policy");
    rec.reason = Some(format!("authorization: {reason}"));
    access_denied()
}

/// Envoy's RBAC denial: 403 `RBAC: access denied`.
pub fn access_denied() -> Response<Body> {
    local(403, "RBAC: access denied", None)
}

/// Envoy's 503 for an upstream that failed before answering, naming the reset reason; 502
/// for an answer that broke the protocol, as Envoy's router answers a `protocol error` reset.
pub fn reset_before_headers(e: &UpstreamError) -> Response<Body> {
    let status = match e {
        UpstreamError::Protocol { .. } => 502,
        _ => 503,
    };
    local(
        status,
        format!(
            "upstream connect error or disconnect/reset before headers. reset reason: {}",
            e.reset_reason()
        ),
        None,
    )
}

/// Envoy's mark on an answer from a proxy that shed the request.
const OVERLOADED: &str = "x-envoy-overloaded";

/// Envoy's mark on an answer from a proxy's global rate limit.
pub(super) const RATELIMITED: &str = "x-envoy-ratelimited";

/// A 503 for a request a limit shed (flag UO), marked as Envoy marks it.
pub fn overloaded(body: String) -> Response<Body> {
    let mut r = local(503, body, None);
    r.headers_mut()
        .insert(OVERLOADED, HeaderValue::from_static("true"));
    r
}

/// 504 for a request the route or per-try timeout ended, or 204 (no body) when it asked for
/// Envoy's `x-envoy-upstream-rq-timeout-alt-response`.
pub(super) fn timed_out(rec: &mut Record, alt_response: bool) -> Response<Body> {
    rec.fail(ResponseFlags::UPSTREAM_TIMEOUT, "upstream request timeout");
    let status = if alt_response { 204 } else { 504 };
    local(status, "upstream request timeout", None)
}

/// Sends copies to the route's mirrors (`mirror` with `mirrorPercentage`, and `mirrors`),
/// each within `timeout`. `head` is the request's, for the mirror's load balancer and the
/// authorization of the copy.
fn mirror(
    plan: &Plan<'_>,
    down: &Downstream,
    ctx: &HttpContext,
    head: (&hyper::Method, &hyper::Uri, &hyper::HeaderMap),
    copied: impl Fn() -> mirror::Copied,
    timeout: Option<std::time::Duration>,
) {
    let Some(route) = plan.route else { return };
    let spec = &route.spec;
    let ns = route.origin.split('/').next().unwrap_or("default");
    // The deprecated `mirrorPercent` still counts when `mirrorPercentage` is unset, as in Istio.
    let single_pct =
        (spec.mirror_percentage.as_ref().map(|p| p.value)).or(spec.mirror_percent.map(f64::from));
    let single = spec.mirror.as_ref().map(|d| (d, single_pct));
    let many = spec
        .mirrors
        .iter()
        .map(|m| (&m.destination, m.percentage.as_ref().map(|p| p.value)));
    for (dest, pct) in single.into_iter().chain(many) {
        let pct = pct.unwrap_or(100.0);
        if pct < 100.0 && fastrand::f64() * 100.0 >= pct {
            continue;
        }
        let d = Destination::of(dest, None, true, ns);
        let client = plan.snap.compiled.client(down.workload.as_deref());
        let found = route::endpoints(plan.snap, &d, plan.candidates, down.dst, Some(&client));
        match found {
            Ok((mut e, mut policy)) => {
                // Chosen as the service's own requests are: among the endpoints outlier
                // detection has not ejected, by locality, `distribute`, slow start, weights
                // and the service's load balancer.
                let spread = distribute(ctx.locality.as_ref(), &d.host, &mut e, &mut policy);
                let outlier = policy.outlier.map(outlier::Settings::from_spec);
                // The service's own algorithm (a cookie it would generate is not handed out).
                let inputs = super::lb::HashInputs {
                    headers: head.2,
                    query: head.1.query(),
                    peer: down.peer,
                    local: down.dst,
                };
                let (algo, _) = super::lb::algorithm(policy.lb, &inputs);
                let chosen = spread.and_then(|()| {
                    ctx.choose_once(&policy, &e, outlier.as_ref(), client.labels, &algo)
                });
                let Ok((addr, cluster)) = chosen else {
                    ctx.metrics.mirror("dropped");
                    continue;
                };
                // The copy is a request to the mirror's workload like any other: its
                // AuthorizationPolicy decides it (on this node, here), as the inbound sidecar
                // of Istio's mirror target does. A denied copy is not sent.
                if let Some(reason) = authorize::request(ctx, plan.snap, down, addr, head) {
                    tracing::debug!(%reason, endpoint = %addr, "mirrored copy denied");
                    ctx.metrics.mirror("denied");
                    continue;
                }
                let target = match ctx.upstream(plan.snap, addr, down.workload.as_deref()) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::debug!(error = %e, "mirror cannot reach its endpoint");
                        ctx.metrics.mirror("dropped");
                        continue;
                    }
                };
                let mut limits = Limits::from_spec(policy.pool);
                down.proxy_protocol(&policy, &mut limits);
                let host = crate::routes::table::host_of(plan.authority);
                match ctx
                    .pool
                    .originations
                    .for_request(policy.tls, &host, plan.h2)
                {
                    Ok(tls) => limits.tls = tls,
                    Err(e) => {
                        tracing::debug!(error = %e, "mirror cannot originate TLS");
                        ctx.metrics.mirror("dropped");
                        continue;
                    }
                }
                let copy = mirror::Copy {
                    pool: ctx.pool.clone(),
                    cluster,
                    limits,
                    target,
                };
                ctx.mirrors.send(
                    copy,
                    &ctx.metrics,
                    plan.h2,
                    copied(),
                    plan.authority,
                    timeout,
                )
            }
            Err(e) => {
                tracing::debug!(error = %e, "mirror has no endpoint");
                ctx.metrics.mirror("dropped");
            }
        }
    }
}

pub async fn with_policy(
    plan: &Plan<'_>,
    mut req: Request<super::body::Inbound>,
    down: &Downstream,
    ctx: &HttpContext,
    rec: &mut Record,
) -> Response<Body> {
    let routed_at = tokio::time::Instant::now();
    let route_policy = plan.retry_policy();
    let route_timeout = plan.route_timeout();
    // The request's own `x-envoy-*` overrides, if it has any.
    let overrides = overrides::take(req.headers_mut(), route_timeout, route_policy);
    let policy = match overrides.as_ref().and_then(|o| o.retry.as_deref()) {
        Some(p) => p,
        None => route_policy,
    };
    let timeout = overrides.as_ref().map_or(route_timeout, |o| o.timeout);
    let alt_response = overrides.as_ref().is_some_and(|o| o.timeout_alt_response);
    // As Envoy's route timeout, the limit runs from the end of the request (its body whole)
    // until the response is complete, its body too. A gRPC request's own deadline is that
    // timeout when shorter, as Envoy takes it under Istio's `max_grpc_timeout` (the route's
    // timeout, uncapped without one): it expires as the route timeout does (504, gRPC status
    // 14, flag UT).
    let limit = deadline::shorter(timeout, deadline::grpc_timeout(req.headers()));
    // As Envoy's router, the request tells its server the time it has: the route timeout, or
    // the per-try timeout when that is shorter, in `x-envoy-expected-rq-timeout-ms`; and, as
    // under Istio (whose routes set `max_grpc_timeout` to their timeout), a gRPC request also
    // in `grpc-timeout`, its own deadline counting as the route timeout when shorter.
    let expected = deadline::shorter(limit, policy.per_try_timeout);
    let grpc = is_grpc(req.headers());
    if let Some(t) = expected {
        if grpc {
            let value = deadline::grpc_timeout_value(t);
            req.headers_mut().insert(GRPC_TIMEOUT, value);
        }
        let value = deadline::expected_timeout_value(t);
        req.headers_mut().insert(EXPECTED_TIMEOUT, value);
    }
    let received = req.body().received().clone();
    let (replayable, once, recording) = match replay::prepare(req, RETRY_BUFFER).await {
        Ok(Prepared::Replayable(r)) => (Some(r), None, None),
        Ok(Prepared::Streaming(r, recording)) => (None, Some(r), recording),
        Err(e) => {
            tracing::debug!(error = %e, "reading the request body failed");
            return client_failed(ClientFailure::of(&*e), rec);
        }
    };
    let received = &received;
    // Mirrors copy a body held whole at once, and a streamed one once it has ended within the
    // retry buffer; a longer one is not copied. Each copy has the route's timeout.
    match (&replayable, &once, &recording) {
        (Some(r), _, _) => mirror(
            plan,
            down,
            ctx,
            (&r.method, &r.uri, &r.headers),
            || mirror::Copied::Now(Box::new(r.clone())),
            limit,
        ),
        (None, Some(streamed), Some(recording)) => mirror(
            plan,
            down,
            ctx,
            (streamed.method(), streamed.uri(), streamed.headers()),
            || mirror::Copied::Later(recording.clone()),
            limit,
        ),
        _ if plan
            .route
            .is_some_and(|r| r.spec.mirror.is_some() || !r.spec.mirrors.is_empty()) =>
        {
            ctx.metrics.mirror("dropped");
        }
        _ => {}
    }
    // A streamed request (its body not held) is retried while no attempt has taken it (the
    // attempts found no connection: connect-failure), its body unread; or, once sent, when its
    // body ended within the retry buffer, from the copy recorded as it streamed.
    let once = std::sync::Mutex::new(once);
    let once = &once;
    let replayed = std::sync::OnceLock::new();
    let replayed = &replayed;
    let can_resend = || {
        replayable.is_some()
            || once.lock().expect("streamed request lock").is_some()
            || replayed.get().is_some()
            || (recording.as_ref().and_then(|r| r.whole())).is_some_and(|w| {
                let _ = replayed.set(w);
                true
            })
    };
    // A streamed request is sent once, so its per-try timeout bounds that one attempt, and
    // like the route timeout it runs from the request's end, as Envoy starts it. As Envoy's
    // per-try timeout, it bounds the wait for the answer's head, never a response already
    // under way (a gRPC stream), which only the route timeout bounds.
    let single;
    let (policy, attempt_limit) = match (&replayable, policy.per_try_timeout) {
        (None, Some(t)) => {
            single = RetryPolicy {
                per_try_timeout: None,
                ..policy.clone()
            };
            (&single, deadline::shorter(limit, Some(t)))
        }
        _ => (policy, limit),
    };
    // A body held whole has ended: the clock starts now. A streamed one starts it as it ends,
    // so a slow upload is not cut short while the client is still sending it.
    let deadline = match &replayable {
        Some(_) => limit.map(|t| tokio::time::Instant::now() + t),
        None => limit.and_then(|t| received.ended_at().map(|end| end + t)),
    };
    let attempt_deadline = match &replayable {
        Some(_) => deadline,
        None => attempt_limit.and_then(|t| received.ended_at().map(|end| end + t)),
    };
    // A retry goes elsewhere when it can: `attempted` holds the endpoints earlier attempts
    // used, `last` the previous attempt's.
    let mut attempted: Vec<SocketAddr> = Vec::new();
    let mut last: Option<SocketAddr> = None;
    // The endpoint of the attempt under way, from when it has its connection or stream until
    // its outcome is observed: one a timeout ends then counts against it (not one still waiting
    // for a connection, which never reached it), as Envoy charges only a request with a host.
    let in_flight = std::sync::Mutex::new(None::<SocketAddr>);
    let in_flight = &in_flight;
    // When the attempt under way got its connection or stream: its per-try timeout runs from
    // then.
    let dispatch = retry::Dispatch::default();
    let dispatch = &dispatch;
    // The status and duration of the attempt that answered last: one a retry then replaces
    // goes into the record, for the destination's view of each attempt.
    let answered = std::sync::Mutex::new(None::<(u16, std::time::Duration)>);
    let answered = &answered;
    let timed_out_at = |ctx: &HttpContext| {
        if let Some(t) = in_flight.lock().expect("in-flight lock").take() {
            plan.observe_timeout(ctx, t);
        }
    };
    let mut tried = 0u32;
    // The attempts started.
    let mut started = 0u32;
    let stat_prefix = rec.stat_prefix.clone();
    // Built in place and pinned once: one slot for the attempts' state, whichever way they
    // are awaited (a moved-from local would keep a second).
    let attempts = {
        let attempts = std::pin::pin!(retry::run(
            policy,
            can_resend,
            outcome,
            || {
                timed_out_at(ctx);
                Failed::PerTryTimeout
            },
            || plan.retry_slot(),
            dispatch,
            |n| {
                started = n;
                let attempt = attempt_count(n);
                let replayable = replayable.as_ref().or_else(|| replayed.get());
                // A retry tells its server the time it has now, as Envoy recomputes it.
                let ends =
                    deadline.or_else(|| limit.and_then(|t| received.ended_at().map(|e| e + t)));
                let left = (n > 1)
                    .then(|| {
                        let now = tokio::time::Instant::now();
                        deadline::retry_timeout(now, ends, policy.per_try_timeout)
                    })
                    .flatten();
                let grpc_timeout = left.filter(|_| grpc).map(deadline::grpc_timeout_value);
                let expected_timeout = left.map(deadline::expected_timeout_value);
                // Made once the pool has a connection or stream for it.
                let req = move || match replayable {
                    Some(r) => Outgoing::Buffered {
                        req: r,
                        attempt: Some(attempt),
                        grpc_timeout,
                        expected_timeout,
                        client_cert: None,
                    },
                    None => {
                        let taken = once.lock().expect("streamed request lock").take();
                        let mut req = taken.expect("retried only while not sent");
                        req.headers_mut().insert(ATTEMPT_COUNT, attempt);
                        if let Some(t) = grpc_timeout {
                            req.headers_mut().insert(GRPC_TIMEOUT, t);
                        }
                        if let Some(t) = expected_timeout {
                            req.headers_mut().insert(EXPECTED_TIMEOUT, t);
                        }
                        Outgoing::Owned(req)
                    }
                };
                // The attempt before this one, if it answered (a first attempt has none).
                let previous = (n > 1)
                    .then(|| answered.lock().expect("answered lock").take())
                    .flatten();
                if let (Some(endpoint), Some((status, took))) = (last, previous) {
                    rec.replaced.push(super::record::Replaced {
                        endpoint,
                        status,
                        took,
                    });
                }
                // The previous attempt's endpoint joins the ones to avoid (a request tried once
                // allocates nothing for it).
                attempted.extend(last);
                let target = plan.target(ctx, &attempted, &mut tried);
                last = target.as_ref().ok().copied();
                // How to reach the endpoint: resolved once per attempt.
                let upstream = last.map(|t| ctx.upstream(plan.snap, t, down.workload.as_deref()));
                plan.note_attempt(rec, n, last, upstream.as_ref());
                // Only an answer from a mesh workload reached directly can count for the
                // destination; the others are not timed.
                let to_workload =
                    rec.destination_workload.is_some() && rec.security_policy == Some("none");
                let stat_prefix = stat_prefix.as_deref();
                async move {
                    let target = target.map_err(Failed::NoEndpoint)?;
                    let denied = match replayable {
                        Some(r) => {
                            let head = (&r.method, &r.uri, &r.headers);
                            authorize::request(ctx, plan.snap, down, target, head)
                        }
                        None => {
                            let held = once.lock().expect("streamed request lock");
                            let r = held.as_ref().expect("attempted only while not sent");
                            let head = (r.method(), r.uri(), r.headers());
                            authorize::request(ctx, plan.snap, down, target, head)
                        }
                    };
                    if let Some(reason) = denied {
                        return Err(Failed::Denied(reason));
                    }
                    let _in_flight = ctx.lb.start(target);
                    // Counted however the attempt ends: with its answer, or without one (a
                    // reset, a connect failure, a per-try or route timeout dropping it).
                    let mut counted = stat_prefix.map(|p| {
                        crate::telemetry::route_stats::Attempt::new(&ctx.metrics.routes, p)
                    });
                    let req = || {
                        dispatch.mark();
                        *in_flight.lock().expect("in-flight lock") = Some(target);
                        req()
                    };
                    let began = to_workload.then(std::time::Instant::now);
                    let result = match upstream.expect("resolved with the target") {
                        Ok(t) => {
                            ctx.pool
                                .send(&plan.upstream, &plan.limits, &t, plan.h2, req)
                                .await
                        }
                        Err(e) => Err(e),
                    };
                    in_flight.lock().expect("in-flight lock").take();
                    if let (Some(began), Ok(r)) = (began, &result) {
                        *answered.lock().expect("answered lock") =
                            Some((r.status().as_u16(), began.elapsed()));
                    }
                    // A streamed body the client broke off fails the attempt: the client's
                    // doing, not a strike against the endpoint.
                    if result.is_err()
                        && let Some(failure) = received.failure()
                    {
                        return Err(Failed::Client(failure));
                    }
                    plan.observe(ctx, target, &result);
                    if let Some(c) = counted.as_mut() {
                        c.answered(result.as_ref().ok().map(|r| r.status().as_u16()));
                    }
                    result.map_err(Failed::Upstream)
                }
            },
        ));
        match (attempt_deadline, attempt_limit) {
            (Some(d), _) => tokio::time::timeout_at(d, attempts).await.ok(),
            (None, None) => Some(attempts.await),
            (None, Some(t)) => {
                let expires = deadline::after_request_end(received, t);
                tokio::select! {
                    biased;
                    done = attempts => Some(done),
                    () = expires => None,
                }
            }
        }
    };
    // Counted even when the route timeout ended the attempts.
    if started > 1 {
        ctx.metrics.retries(u64::from(started - 1));
    }
    let Some(attempts) = attempts else {
        timed_out_at(ctx);
        rec.route_timed_out = true;
        return timed_out(rec, alt_response);
    };
    plan.count_limits(ctx, rec, &attempts);
    match attempts.last {
        Ok(mut resp) => {
            rec.upstream_answer_from = Some(routed_at);
            // As Envoy's router: the upstream's time, from the request's end to the answer's
            // head, in milliseconds (only when the request ended before it).
            if let Some(end) = received.ended_at() {
                let ms = end.elapsed().as_millis() as u64;
                (resp.headers_mut()).insert(UPSTREAM_SERVICE_TIME, HeaderValue::from(ms));
                rec.upstream_service_ms = Some(ms);
            }
            if attempts.exhausted {
                retries_exhausted(rec, attempts.tries, resp.status());
            }
            match (deadline, limit) {
                (Some(d), _) => resp.map(|b| {
                    let b = super::body::boxed(b);
                    super::body::boxed(Deadline::of(b, d))
                }),
                // The limit runs from the request's end, come or to come (a response that
                // began while the request was still being sent), as Envoy's.
                (None, Some(t)) => resp.map(|b| {
                    let b = super::body::boxed(b);
                    super::body::boxed(Deadline::after_end(b, received.clone(), t))
                }),
                (None, None) => resp.map(super::body::boxed),
            }
        }
        Err(f) => failed(f, rec, attempts.exhausted, alt_response),
    }
}

impl Plan<'_> {
    /// The route's retry policy, compiled with it; a request no VirtualService covers gets
    /// Istio's default.
    pub(super) fn retry_policy(&self) -> &RetryPolicy {
        static ISTIO_DEFAULT: std::sync::LazyLock<RetryPolicy> =
            std::sync::LazyLock::new(|| RetryPolicy::from_spec(None));
        self.route.map_or(&*ISTIO_DEFAULT, |r| &r.retry)
    }

    /// The route's `timeout`, unless it has none (or 0s, which turns it off).
    pub(super) fn route_timeout(&self) -> Option<std::time::Duration> {
        self.route
            .and_then(|r| r.spec.timeout)
            .map(|t| t.0)
            .filter(|t| !t.is_zero())
    }

    /// A token for one retry: `http.maxRetries` bounds the retries in flight across the
    /// cluster, or else the `retryBudget` does, by the requests active now.
    pub(super) fn retry_slot(&self) -> Option<super::pool::Slot> {
        let max = match &self.limits.retry_budget {
            Some(b) => b.max_retries(
                self.upstream.count(Counter::Requests) + self.upstream.count(Counter::Pending),
            ),
            None => self.limits.max_retries,
        };
        self.upstream.try_slot(Counter::Retries, max)
    }

    /// Records the endpoint attempt `n` goes to as it starts, as Envoy's upstream host: a
    /// request the route timeout ends, or whose client leaves, is logged with it.
    pub(super) fn note_attempt(
        &self,
        rec: &mut Record,
        n: u32,
        target: Option<SocketAddr>,
        upstream: Option<&Result<super::pool::Target, UpstreamError>>,
    ) {
        rec.retries = n - 1;
        rec.upstream_host = target;
        rec.security_policy = upstream.and_then(|u| u.as_ref().ok()).map(|t| {
            if t.via.is_some() {
                "mutual_tls"
            } else {
                "none"
            }
        });
        rec.destination_workload =
            target.and_then(|t| self.snap.compiled.endpoints.workload(t).cloned());
    }

    /// Counts what the cluster's limits refused the attempts: a retry that was due when the
    /// retry budget (`maxRetries` or `retryBudget`) was spent, and a last attempt shed by a
    /// pool limit.
    pub(super) fn count_limits<T>(
        &self,
        ctx: &HttpContext,
        rec: &mut Record,
        attempts: &retry::Attempts<T, Failed>,
    ) {
        if attempts.overflow {
            self.retry_refused(ctx, rec);
        }
        if let Err(Failed::Upstream(UpstreamError::Overflow { limit, .. })) = &attempts.last {
            ctx.metrics.overflow("cluster", &self.cluster, limit);
            rec.shed = true;
        }
    }

    /// A retry was due but the cluster's retry budget (`maxRetries` or `retryBudget`) was spent.
    fn retry_refused(&self, ctx: &HttpContext, rec: &mut Record) {
        let (limit, reason) = match &self.limits.retry_budget {
            Some(b) => (
                "retryBudget",
                format!(
                    "retry not attempted: {} is at its retryBudget ({}% of active requests, at least {})",
                    self.cluster,
                    f64::from(b.hundredths_of_percent) / 100.0,
                    b.min_concurrency
                ),
            ),
            None => (
                "maxRetries",
                format!(
                    "retry not attempted: {} is at its connectionPool limit maxRetries: {}",
                    self.cluster, self.limits.max_retries
                ),
            ),
        };
        ctx.metrics.overflow("cluster", &self.cluster, limit);
        // As Envoy's router flags a retry its circuit breaker refused.
        rec.flags.insert(ResponseFlags::UPSTREAM_OVERFLOW);
        rec.reason = Some(reason);
    }
}

/// URX: the last attempt's answer stands because retries ran out while it was retriable.
pub(super) fn retries_exhausted(rec: &mut Record, tries: u32, status: hyper::StatusCode) {
    rec.fail(
        ResponseFlags::RETRY_LIMIT,
        format!(
            "retries exhausted after {tries} attempts; last upstream answer {}",
            status.as_u16()
        ),
    );
}

/// The local answer for attempts that ended without a response.
pub(super) fn failed(
    f: Failed,
    rec: &mut Record,
    exhausted: bool,
    alt_response: bool,
) -> Response<Body> {
    match f {
        Failed::NoEndpoint(e) => no_endpoint(e, rec),
        Failed::Denied(reason) => denied(reason, rec),
        Failed::Client(failure) => client_failed(failure, rec),
        Failed::Upstream(e) => upstream_failed(&e, rec, exhausted),
        Failed::PerTryTimeout => {
            if exhausted {
                rec.flags.insert(ResponseFlags::RETRY_LIMIT);
            }
            timed_out(rec, alt_response)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error a request's stream gets when the server answers it with a GOAWAY of `reason`
    /// that processed no stream, over a real h2 connection in memory.
    fn h2_go_away(reason: h2::Reason) -> h2::Error {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (client_io, server_io) = tokio::io::duplex(64 * 1024);
            let server = tokio::spawn(async move {
                let mut conn = h2::server::handshake(server_io).await.unwrap();
                conn.abrupt_shutdown(reason);
                while conn.accept().await.is_some() {}
            });
            let (mut sender, conn) = h2::client::handshake(client_io).await.unwrap();
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let req = hyper::Request::get("http://x/").body(()).unwrap();
            let result = match sender.send_request(req, true) {
                Ok((resp, _)) => resp.await.map(|_| ()),
                Err(e) => Err(e),
            };
            let _ = server.await;
            result.expect_err("the stream was refused")
        })
    }

    /// As Envoy's retry state: no retry condition takes an answer a proxy marked as shed
    /// (`x-envoy-overloaded`) or rate limited (`x-envoy-ratelimited`).
    #[test]
    fn answers_of_an_overloaded_or_rate_limited_proxy_are_not_retried() {
        let on = super::super::retry::Conditions::parse(
            "5xx,retriable-4xx,retriable-status-codes,429,503",
        );
        let answer = |status: u16, header: Option<&str>| {
            let mut b = Response::builder().status(status);
            if let Some(h) = header {
                b = b.header(h, "true");
            }
            Ok::<_, Failed>(b.body(()).unwrap())
        };
        assert!(on.matches(outcome(&answer(503, None))));
        assert!(on.matches(outcome(&answer(429, None))));
        for h in ["x-envoy-overloaded", "x-envoy-ratelimited"] {
            assert!(!on.matches(outcome(&answer(503, Some(h)))), "{h}");
            assert!(!on.matches(outcome(&answer(429, Some(h)))), "{h}");
        }
    }

    #[test]
    fn only_refused_streams_count_as_refused() {
        let refused: super::super::body::BoxError =
            h2::Error::from(h2::Reason::REFUSED_STREAM).into();
        assert!(refused_stream(&refused));
        let cancelled: super::super::body::BoxError = h2::Error::from(h2::Reason::CANCEL).into();
        assert!(!refused_stream(&cancelled));
        let other: super::super::body::BoxError = "connection reset".into();
        assert!(!refused_stream(&other));
        // A stream above a GOAWAY's last stream id was never processed, whatever its code.
        for reason in [
            h2::Reason::NO_ERROR,
            h2::Reason::ENHANCE_YOUR_CALM,
            h2::Reason::INTERNAL_ERROR,
        ] {
            let go_away = h2_go_away(reason);
            assert!(go_away.is_go_away() && go_away.is_remote());
            assert!(refused_stream(&go_away.into()), "{reason:?}");
        }
    }

    #[test]
    fn an_address_listed_at_two_levels_is_still_chosen() {
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let all = [a, b, a];
        let turn = std::sync::atomic::AtomicUsize::new(0);
        let selection = Selection {
            cluster: "c",
            turn: &turn,
            algo: &Algorithm::RoundRobin,
            all: &all,
            priorities: Some(&[0, 0, 2]),
            weights: None,
            slow_start: None,
        };
        let lb = super::super::lb::Balancer::default();
        // b is ejected: level 0 is half healthy, so level 2 takes some draws too.
        for _ in 0..200 {
            let (picked, _) = selection.pick(&lb, Cow::Owned(vec![a]), 0, &[]);
            assert_eq!(picked, a);
        }
    }
}
