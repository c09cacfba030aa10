//! WebSocket upgrades as Envoy's router takes them under Istio: until the upstream's 101 the
//! request is authorized, bounded by the route timeout and retried like any request; after
//! it, both connections are spliced and their bytes counted for the request's record.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use hyper::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{
    Downstream, HttpContext, authorize,
    body::{self, Body},
    overrides,
    pool::UpstreamError,
    record::Record,
    replay::{ATTEMPT_COUNT, FORWARDED_CLIENT_CERT},
    retry,
    send::{self, Failed},
};

/// The bytes a relay has carried so far, from the client and to it, counted as they flow: a
/// relay cut short (a drain's deadline, a removed pod) still has them in its record.
#[derive(Debug, Default)]
struct Carried {
    from_client: AtomicU64,
    to_client: AtomicU64,
}

/// An upgraded connection's relay, and what it has carried.
pub struct Relay {
    carried: Arc<Carried>,
    pub run: Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

impl Relay {
    /// The relay, keeping `held` until it ends or is dropped.
    pub fn holding<T: Send + 'static>(self, held: T) -> Relay {
        let run = self.run;
        Relay {
            carried: self.carried,
            run: Box::pin(async move {
                run.await;
                drop(held);
            }),
        }
    }

    /// The relay, writing the request's record (`log`, whose request body delivered to
    /// `received`) when it ends or is dropped: the bytes it carried count as the request's and
    /// the response's bodies, as Envoy logs an upgraded stream at its end.
    pub fn recorded<L: body::Observer + Send + 'static>(
        self,
        log: L,
        received: Arc<body::Received>,
    ) -> Relay {
        let record = Recorded {
            log,
            received,
            carried: self.carried.clone(),
        };
        self.holding(record)
    }
}

/// An upgraded connection's record, written when its relay ends or is dropped.
struct Recorded<L: body::Observer> {
    log: L,
    received: Arc<body::Received>,
    carried: Arc<Carried>,
}

impl<L: body::Observer> Drop for Recorded<L> {
    fn drop(&mut self) {
        self.received
            .add(self.carried.from_client.load(Ordering::Relaxed));
        let to_client = self.carried.to_client.load(Ordering::Relaxed);
        self.log
            .data(usize::try_from(to_client).unwrap_or(usize::MAX));
    }
}

/// The upgrade request's head: a request without a body is sent again by a retry.
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Head {
    fn request(&self, body: Body, attempt: u32) -> Request<Body> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req.headers_mut()
            .insert(ATTEMPT_COUNT, hyper::header::HeaderValue::from(attempt));
        req
    }
}

/// Sends an upgrade request under its route's policy, each attempt on a connection of its own,
/// and on 101 leaves the relay of both connections to the client connection's task.
pub(super) async fn send(
    mut req: Request<body::Inbound>,
    down_up: hyper::upgrade::OnUpgrade,
    down: &Downstream,
    ctx: &HttpContext,
    plan: &send::Plan<'_>,
    rec: &mut Record,
) -> Response<Body> {
    // The `x-envoy-*` overrides are consumed, not applied: the route's policy stands.
    overrides::strip(req.headers_mut());
    let (policy, timeout) = (plan.retry_policy(), plan.route_timeout());
    let (parts, body) = req.into_parts();
    let head = Head {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
    };
    // A body (rare on an upgrade) is sent once: retried only while no attempt has taken it.
    let bodiless = hyper::body::Body::is_end_stream(&body);
    let once = Mutex::new(Some(body));
    let (head, once) = (&head, &once);
    let can_resend = || bodiless || once.lock().expect("upgrade body lock").is_some();
    let mut last = None;
    // The endpoints earlier attempts used: a retry goes elsewhere while it can.
    let mut attempted: Vec<std::net::SocketAddr> = Vec::new();
    let mut tried = 0u32;
    // The attempts started, and the endpoint of the one under way from when it has its
    // connection until its outcome is observed: one a timeout ends counts against it, as on
    // the request path, whose per-try timeout also runs from then.
    let mut started = 0u32;
    let in_flight = Mutex::new(None);
    let in_flight = &in_flight;
    let dispatch = retry::Dispatch::default();
    let dispatch = &dispatch;
    // The last attempt's place in the cluster's limits and its endpoint's load, kept by an
    // upgraded connection.
    let held = Mutex::new(None);
    let held = &held;
    let timed_out_at = || {
        if let Some(t) = in_flight.lock().expect("in-flight lock").take() {
            plan.observe_timeout(ctx, t);
        }
    };
    let attempts = retry::run(
        policy,
        can_resend,
        send::outcome,
        || {
            timed_out_at();
            Failed::PerTryTimeout
        },
        || plan.retry_slot(),
        dispatch,
        |n| {
            started = n;
            attempted.extend(last);
            let target = plan.target(ctx, &attempted, &mut tried);
            last = target.as_ref().ok().copied();
            let upstream = last.map(|t| ctx.upstream(plan.snap, t, down.workload.as_deref()));
            plan.note_attempt(rec, n, last, upstream.as_ref());
            async move {
                let target = target.map_err(Failed::NoEndpoint)?;
                let asked = (&head.method, &head.uri, &head.headers);
                if let Some(reason) = authorize::request(ctx, plan.snap, down, target, asked) {
                    return Err(Failed::Denied(reason));
                }
                // Load for least request, as the pool's places, for the upgraded connection's
                // whole life, as Envoy counts an upgrade as a request until it ends.
                let load = ctx.lb.start(target);
                let result = async {
                    let t = upstream.expect("resolved with the target")?;
                    let (mut s, slots) =
                        (ctx.pool.upgrade_h1(&plan.upstream, &plan.limits, &t)).await?;
                    dispatch.mark();
                    *in_flight.lock().expect("in-flight lock") = Some(target);
                    *held.lock().expect("held lock") = Some((slots, load));
                    let body = match bodiless {
                        true => body::full(bytes::Bytes::new()),
                        false => {
                            let taken = once.lock().expect("upgrade body lock").take();
                            body::boxed(taken.expect("sent only while not taken"))
                        }
                    };
                    let mut req = head.request(body, n);
                    // Through the tunnel, the client certificate goes along, as for any
                    // request (read once the connection is up: opening the first one issues
                    // it).
                    if let Some(c) = (t.via.as_ref().zip(ctx.tunnel.as_deref()))
                        .and_then(|(via, tunnel)| tunnel.forwarded_client_cert(via))
                    {
                        req.headers_mut().insert(FORWARDED_CLIENT_CERT, c);
                    }
                    s.send_request(req)
                        .await
                        .map_err(|source| UpstreamError::sending(target, source.into()))
                }
                .await;
                in_flight.lock().expect("in-flight lock").take();
                plan.observe(ctx, target, &result);
                result.map_err(Failed::Upstream)
            }
        },
    );
    // As Envoy's router since it bounds upgrades: the route timeout runs until the 101.
    let attempts = match timeout {
        Some(t) => tokio::time::timeout(t, attempts).await.ok(),
        None => Some(attempts.await),
    };
    // Counted even when the route timeout ended the attempts.
    if started > 1 {
        ctx.metrics.retries(u64::from(started - 1));
    }
    let Some(attempts) = attempts else {
        timed_out_at();
        rec.route_timed_out = true;
        return send::timed_out(rec, false);
    };
    plan.count_limits(ctx, rec, &attempts);
    let mut resp = match attempts.last {
        Ok(resp) => resp,
        Err(f) => return send::failed(f, rec, attempts.exhausted, false),
    };
    if attempts.exhausted {
        send::retries_exhausted(rec, attempts.tries, resp.status());
    }
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let up_up = hyper::upgrade::on(&mut resp);
        // Run by the connection's task once hyper hands the connection over; the upgraded
        // connection keeps its place in the cluster's limits until it ends.
        let slots = held.lock().expect("held lock").take();
        down.upgraded.set(splice(down_up, up_up).holding(slots));
    }
    resp.map(body::boxed)
}

/// The relay of an upgraded client connection and its upstream one, until both have ended.
pub fn splice(down: hyper::upgrade::OnUpgrade, up: hyper::upgrade::OnUpgrade) -> Relay {
    let carried = Arc::new(Carried::default());
    let counts = carried.clone();
    let run = Box::pin(async move {
        let (Ok(d), Ok(u)) = (down.await, up.await) else {
            return;
        };
        let mut d = Counting(TokioIo::new(d), &counts.from_client);
        let mut u = Counting(TokioIo::new(u), &counts.to_client);
        let _ = tokio::io::copy_bidirectional(&mut d, &mut u).await;
    });
    Relay { carried, run }
}

/// A connection whose reads are counted: what one side of the relay received, the other was
/// sent (counted whether the relay ends cleanly or with a reset).
struct Counting<'a, T>(T, &'a AtomicU64);

impl<T: AsyncRead + Unpin> AsyncRead for Counting<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.0).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.1.fetch_add(read as u64, Ordering::Relaxed);
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counting<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
