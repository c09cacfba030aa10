//! Fault injection from a route's `fault`: a fixed delay (flag DI) and an abort with an HTTP or
//! gRPC status (flag FI), each applied to a percentage of requests.

use hyper::Response;

use super::{Body, ResponseFlags};
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
    // Envoy's `sendLocalReply`: a text/plain "fault filter abort" with the HTTP status; an
    // abort by gRPC status is HTTP 200, and a gRPC request gets it trailers-only with that
    // status (`grpc_local::as_grpc`), any other request as plain text.
    let status = match &a.grpc_status {
        Some(_) => 200,
        None => a.http_status.unwrap_or(500),
    };
    let mut resp = super::forward::local(status, "fault filter abort", None);
    if let Some(g) = &a.grpc_status {
        resp.extensions_mut()
            .insert(super::grpc_local::GrpcCode(grpc_code(g)));
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
