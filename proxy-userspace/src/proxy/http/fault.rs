//! Fault injection from a route's `fault`: a fixed delay (flag DI) and an abort with an HTTP or
//! gRPC status (flag FI), each applied to a percentage of requests.

use hyper::{Response, StatusCode, header::HeaderValue};

use super::{Body, ResponseFlags, body};
use crate::policy::model::{HttpFaultInjection, Percent};

/// Whether this request is in the fault's percentage. A fault with neither `percentage` nor
/// the deprecated `percent` applies to no request: Istio leaves Envoy's percentage unset, and
/// Envoy reads that as 0% (istio/istio#36303; validation warns).
fn applies(p: Option<&Percent>, legacy: Option<u32>) -> bool {
    let pct = p.map(|p| p.value).or(legacy.map(f64::from)).unwrap_or(0.0);
    pct >= 100.0 || (pct > 0.0 && fastrand::f64() * 100.0 < pct)
}

/// gRPC status names as Istio's `grpcStatus` spells them.
fn grpc_code(name: &str) -> u32 {
    // Validation admits the names only; a number compiled in anyway is taken as is.
    let names = &crate::policy::model::virtual_service::GRPC_STATUS_NAMES;
    name.parse()
        .ok()
        .or_else(|| names.iter().position(|n| *n == name).map(|i| i as u32))
        .unwrap_or(2)
}

/// Applies the route's faults: sleeps an injected delay, then returns the abort response if one
/// is injected.
pub async fn inject(
    fault: Option<&HttpFaultInjection>,
    flags: &mut ResponseFlags,
) -> Option<Response<Body>> {
    let fault = fault?;
    if let Some(d) = &fault.delay
        && let Some(delay) = d.fixed_delay
        && applies(d.percentage.as_ref(), d.percent)
    {
        flags.insert(ResponseFlags::DELAY_INJECTED);
        tokio::time::sleep(delay.0).await;
    }
    let a = fault.abort.as_ref()?;
    if !applies(a.percentage.as_ref(), None) {
        return None;
    }
    flags.insert(ResponseFlags::FAULT_INJECTED);
    let mut resp = Response::new(body::full("fault filter abort"));
    if let Some(g) = &a.grpc_status {
        // A trailers-only gRPC response: HTTP 200 carrying grpc-status in its headers.
        resp.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
        resp.headers_mut()
            .insert("grpc-status", HeaderValue::from(grpc_code(g)));
        resp.headers_mut().insert(
            "grpc-message",
            HeaderValue::from_static("fault filter abort"),
        );
        *resp.body_mut() = body::full("");
    } else {
        *resp.status_mut() = StatusCode::from_u16(a.http_status.unwrap_or(500))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        resp.extensions_mut()
            .insert(super::grpc_local::LocalReply("fault filter abort".into()));
    }
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_names() {
        assert_eq!(grpc_code("UNAVAILABLE"), 14);
        assert_eq!(grpc_code("14"), 14);
        assert_eq!(grpc_code("CANCELLED"), 1);
    }

    #[test]
    fn percentages() {
        assert!(applies(Some(&Percent { value: 100.0 }), None));
        assert!(!applies(Some(&Percent { value: 0.0 }), Some(100)));
        assert!(
            !applies(None, None),
            "no percentage: no request, as in Istio"
        );
        assert!(applies(None, Some(100)));
        let hits = (0..10_000)
            .filter(|_| applies(Some(&Percent { value: 50.0 }), None))
            .count();
        assert!((4_500..5_500).contains(&hits), "{hits}");
    }
}
