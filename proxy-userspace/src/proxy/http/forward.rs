//! One HTTP request through the pipeline: strip hop-by-hop headers, forward to the original
//! destination over a pooled connection, map upstream failures to 503 with a response flag,
//! and splice upgraded (WebSocket) connections.

use std::{convert::Infallible, sync::Arc, time::Instant};

use hyper::{
    HeaderMap, Request, Response, StatusCode, Version,
    body::Incoming,
    header::{self, HeaderName, HeaderValue},
};
use hyper_util::rt::TokioIo;

use super::{Body, Downstream, HttpContext, ResponseFlags, body};

/// Headers that describe one hop, never forwarded (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "trailer",
    "upgrade",
];

pub async fn handle(
    req: Request<Incoming>,
    down: Arc<Downstream>,
    ctx: Arc<HttpContext>,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let mut flags = ResponseFlags::default();
    let resp = forward(req, &down, &ctx, &mut flags).await;
    tracing::debug!(
        %method, %path, status = resp.status().as_u16(), flags = %flags,
        workload = down.workload.as_deref().unwrap_or("-"), dst = %down.dst,
        ms = start.elapsed().as_secs_f64() * 1e3, "request"
    );
    Ok(resp)
}

fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers, and those the Connection header names. `te: trailers` stays
/// (gRPC needs it); an upgrade keeps `connection` and `upgrade`.
fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(upgrade && n == header::UPGRADE))
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        if upgrade && (n == "connection" || n == "upgrade") {
            continue;
        }
        h.remove(n);
    }
    if h.get(header::TE).is_some_and(|v| v != "trailers") {
        h.remove(header::TE);
    }
}

async fn forward(
    mut req: Request<Incoming>,
    down: &Downstream,
    ctx: &HttpContext,
    flags: &mut ResponseFlags,
) -> Response<Body> {
    let h2 = req.version() == Version::HTTP_2;
    let upgrade = !h2 && is_upgrade(req.headers());
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers, upgrade);
    if !h2 {
        // HTTP/1 upstream requests use origin-form; the Host header carries the authority.
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        if let Ok(uri) = pq.parse() {
            parts.uri = uri;
        }
        parts.version = Version::HTTP_11;
    }
    let req = Request::from_parts(parts, body::boxed(body));
    let sent = if upgrade {
        match ctx.pool.fresh_h1(down.dst).await {
            Ok(mut s) => {
                s.send_request(req)
                    .await
                    .map_err(|source| super::pool::UpstreamError::Send {
                        dst: down.dst,
                        source,
                    })
            }
            Err(e) => Err(e),
        }
    } else {
        ctx.pool.send(down.dst, h2, req).await
    };
    match sent {
        Ok(mut resp) => {
            if let Some(down_up) = downstream_upgrade
                && resp.status() == StatusCode::SWITCHING_PROTOCOLS
            {
                let up_up = hyper::upgrade::on(&mut resp);
                tokio::spawn(async move {
                    if let (Ok(d), Ok(u)) = (down_up.await, up_up.await) {
                        let (mut d, mut u) = (TokioIo::new(d), TokioIo::new(u));
                        let _ = tokio::io::copy_bidirectional(&mut d, &mut u).await;
                    }
                });
            }
            resp.map(body::boxed)
        }
        Err(e) => {
            flags.insert(e.flag());
            tracing::warn!(error = %e, dst = %down.dst, "upstream request failed");
            let mut resp = Response::new(body::full(format!(
                "upstream connect error or disconnect/reset before headers. reset reason: {}",
                e.reset_reason()
            )));
            *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-private".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-private", "1".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("x-end-to-end", "1".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert!(
            h.get("connection").is_none()
                && h.get("keep-alive").is_none()
                && h.get("x-private").is_none()
        );
        assert_eq!(h.get("te").unwrap(), "trailers");
        assert!(h.get("x-end-to-end").is_some());
    }

    #[test]
    fn upgrades_keep_their_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", "Upgrade".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert!(h.get("connection").is_some() && h.get("upgrade").is_some());
    }
}
