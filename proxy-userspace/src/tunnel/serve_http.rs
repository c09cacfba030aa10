//! HTTP inside a tunnel stream: each request is authorized with its method, path, host and
//! headers (a denial is 403 `RBAC: access denied`), then forwarded to the local workload, and
//! recorded as the destination reports it (`request_log`).

use std::{convert::Infallible, sync::Arc};

use hyper::{Request, Response, body::Incoming, header::HeaderValue, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};

use super::server::{Inbound, Stream};
use crate::{
    identity::x509,
    proxy::http::{
        Body, FORWARDED_CLIENT_CERT, Limits, Outgoing, Target, UpstreamError, access_denied,
        as_grpc,
        authorize::report,
        body, is_websocket_upgrade, reset_before_headers,
        upgrade::{Relay, splice},
    },
    security::authz::HttpAttrs,
    tunnel::request_log::InboundRequest,
};

pub async fn serve<IO>(io: IO, h2: bool, stream: Arc<Stream>, inbound: Arc<Inbound>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = {
        let stream = stream.clone();
        service_fn(move |req| request(req, stream.clone(), inbound.clone()))
    };
    let io = TokioIo::new(io);
    let served = if h2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc)
            .await
    } else {
        hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .with_upgrades()
            .await
    };
    if let Err(e) = served {
        tracing::debug!(target = %stream.target, error = %e, "HTTP in the tunnel stream ended with an error");
    }
}

async fn request(
    req: Request<Incoming>,
    stream: Arc<Stream>,
    inbound: Arc<Inbound>,
) -> Result<Response<Body>, Infallible> {
    let mut log = InboundRequest::start(&req, stream.clone(), inbound.clone());
    let relay = Relaying::default();
    let resp = respond(req, &stream, &inbound, &mut log, &relay).await;
    log.respond(resp.status().as_u16(), resp.headers());
    // An upgraded connection is recorded when it ends (or its relay is dropped), with what
    // it carried.
    if let Some(relay) = relay.0.lock().expect("relay lock").take() {
        let received = log.received.clone();
        tokio::spawn(relay.recorded(log, received).run);
        return Ok(resp);
    }
    // Recorded when the response body is done (or dropped): durations and sizes cover it all.
    Ok(resp.map(|b| body::boxed(body::Observed::new(b, log))))
}

/// The relay of an upgraded connection, once the workload has answered 101.
#[derive(Default)]
struct Relaying(std::sync::Mutex<Option<Relay>>);

/// Authorizes the request and forwards it to the local workload: its answer, or meshd's own.
async fn respond(
    mut req: Request<Incoming>,
    stream: &Stream,
    inbound: &Inbound,
    log: &mut InboundRequest,
    relay: &Relaying,
) -> Response<Body> {
    // The client certificate as this side verified it, whatever the peer wrote (as Istio's
    // inbound sidecar sets the header from the handshake).
    if let Ok(by) = inbound.tunnel.identity_of(&stream.workload)
        && let Ok(v) = HeaderValue::from_str(&x509::forwarded_element(&by, &stream.client_cert))
    {
        req.headers_mut().insert(FORWARDED_CLIENT_CERT, v);
    }
    let snap = inbound.http.config.current();
    let decision = {
        let attrs = HttpAttrs::of(&req);
        let d = snap
            .compiled
            .authorizer
            .evaluate(&stream.workload(), &stream.context().with_http(&attrs));
        report(
            &inbound.metrics,
            &d,
            &stream.source,
            stream.target,
            Some(&attrs),
        );
        d
    };
    drop(snap);
    // meshd's own answers to a gRPC request are gRPC-shaped, as on the source's node.
    let grpc = log.grpc;
    let local = |r: Response<Body>| if grpc { as_grpc(r) } else { r };
    if !decision.allowed {
        inbound.metrics.tunnel("denied");
        // At debug, as the source side's: the access log records it.
        tracing::debug!(
            source = %stream.source, target = %stream.target, method = %req.method(),
            path = %req.uri().path(), reason = %decision.reason,
            "request denied by authorization policy"
        );
        log.rec.reason = Some(format!("authorization: {}", decision.reason));
        return local(access_denied());
    }
    if is_websocket_upgrade(&req) {
        return upgrade(req, stream, inbound, log, relay).await;
    }
    let h2 = req.version() == hyper::Version::HTTP_2;
    let cluster = inbound
        .http
        .pool
        .cluster(&format!("inbound|{}", stream.target));
    let (received, grpc) = (log.received.clone(), log.grpc);
    let counted = move |b| {
        let c = body::Counted::new(b, received);
        if grpc { c.counting_messages() } else { c }
    };
    let sent = inbound
        .http
        .pool
        .send(
            &cluster,
            &Limits::default(),
            &Target::direct(stream.target),
            h2,
            || Outgoing::Owned(req.map(|b| body::boxed(counted(b)))),
        )
        .await;
    match sent {
        Ok(resp) => resp.map(body::boxed),
        Err(e) => local(not_answered(&e, stream, log)),
    }
}

/// A WebSocket upgrade, authorized: sent on a connection of its own to the workload; on 101
/// the stream and that connection are left to `relay` to splice.
async fn upgrade(
    mut req: Request<Incoming>,
    stream: &Stream,
    inbound: &Inbound,
    log: &mut InboundRequest,
    relay: &Relaying,
) -> Response<Body> {
    let down = hyper::upgrade::on(&mut req);
    let target = Target::direct(stream.target);
    let sent = async {
        let mut s = inbound
            .http
            .pool
            .fresh_h1(&target, &Limits::default())
            .await?;
        let received = log.received.clone();
        let req = req.map(|b| body::boxed(body::Counted::new(b, received)));
        s.send_request(req)
            .await
            .map_err(|source| UpstreamError::sending(stream.target, source.into()))
    }
    .await;
    match sent {
        Ok(mut resp) => {
            if resp.status() == hyper::StatusCode::SWITCHING_PROTOCOLS {
                let up = hyper::upgrade::on(&mut resp);
                *relay.0.lock().expect("relay lock") = Some(splice(down, up));
            }
            resp.map(body::boxed)
        }
        Err(e) => not_answered(&e, stream, log),
    }
}

/// Envoy's answer, logged and recorded, for a request the local workload did not answer.
fn not_answered(e: &UpstreamError, stream: &Stream, log: &mut InboundRequest) -> Response<Body> {
    tracing::warn!(target = %stream.target, error = %e, "the local workload did not answer");
    log.rec.fail(e.flag(), e.to_string());
    reset_before_headers(e)
}
