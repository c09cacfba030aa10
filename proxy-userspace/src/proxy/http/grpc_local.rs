//! gRPC and meshd's own answers: a local reply (an error, a fault abort, a direct response) to
//! a gRPC request goes out as Envoy sends it, trailers-only with a `grpc-status`, and a
//! trailers-only gRPC answer counts for outlier detection as the HTTP status it stands for.

use bytes::Bytes;
use hyper::{
    Response, StatusCode,
    header::{self, HeaderValue},
};

use super::{Body, body, forward::GRPC_STATUS};

/// Marks a response meshd made itself, with its text for `grpc-message`.
#[derive(Clone)]
pub struct LocalReply(pub Bytes);

/// The gRPC status a local reply carries to a gRPC request whatever its HTTP status (a fault
/// abort's `grpcStatus`).
#[derive(Clone, Copy)]
pub struct GrpcCode(pub u32);

/// A local error reply to a gRPC request, as Envoy's `sendLocalReply` turns it: HTTP 200,
/// `content-type: application/grpc`, `grpc-status` for the HTTP status and the text, if any, as
/// `grpc-message`, no body. A gRPC client reads the reason instead of "unexpected HTTP
/// status". Anything else passes as it is.
pub fn as_grpc(mut resp: Response<Body>) -> Response<Body> {
    let Some(LocalReply(text)) = resp.extensions_mut().remove::<LocalReply>() else {
        return resp;
    };
    let explicit = resp.extensions_mut().remove::<GrpcCode>();
    let status = resp.status().as_u16();
    if explicit.is_none() && (status < 400 || resp.headers().contains_key(GRPC_STATUS)) {
        return resp;
    }
    let code = explicit.map_or_else(|| grpc_for_http(status), |c| c.0);
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.remove(header::CONTENT_LENGTH);
    h.insert(GRPC_STATUS, HeaderValue::from(code));
    // As Envoy's, only a reply with text has a `grpc-message` (an NR 404 has none).
    let text = text.trim_ascii();
    if !text.is_empty()
        && let Ok(v) = HeaderValue::from_str(&percent_encode(text))
    {
        h.insert("grpc-message", v);
    }
    *resp.body_mut() = body::full(Bytes::new());
    resp
}

/// The `grpc_response_status` of a request, as Istio's stats read it (Envoy's
/// `getGrpcStatus`): for a gRPC request only (a grpc-status from a server answering plain HTTP
/// is not a gRPC status), its answer's `grpc-status`; an answer without one (an upstream's 503,
/// a stream cut short) stands for the status its HTTP code maps to; a request never answered
/// (`http` 0) has none.
pub fn grpc_label(grpc: bool, status: Option<&HeaderValue>, http: u16) -> &str {
    match (grpc, status) {
        (true, Some(v)) => v.to_str().unwrap_or(""),
        (true, None) if http != 0 => grpc_text_for_http(http),
        _ => "",
    }
}

/// The gRPC status codes (0 to 16) as text, for labels.
const CODE_TEXT: [&str; 17] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
];

/// [`grpc_for_http`] as a label's text.
fn grpc_text_for_http(status: u16) -> &'static str {
    CODE_TEXT[grpc_for_http(status) as usize]
}

/// Envoy's `httpToGrpcStatus`.
fn grpc_for_http(status: u16) -> u32 {
    match status {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        429 | 502..=504 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN
    }
}

/// The HTTP status a trailers-only gRPC answer stands for (Envoy's `grpcToHttpStatus`), as
/// outlier detection counts it: UNAVAILABLE is a 503, so an endpoint failing every call is
/// ejected like one answering 503s. `None` for an answer without `grpc-status` in its head.
pub fn http_for_grpc(resp: &Response<impl Sized>) -> Option<u16> {
    let code: u32 = std::str::from_utf8(resp.headers().get(GRPC_STATUS)?.as_bytes())
        .ok()?
        .parse()
        .ok()?;
    Some(match code {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500, // UNKNOWN, INTERNAL, DATA_LOSS and codes gRPC does not define
    })
}

/// `grpc-message` is percent-encoded: bytes outside printable ASCII, and `%`.
fn percent_encode(text: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, text: &'static str) -> Response<Body> {
        let mut r = Response::new(body::full(text));
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        r.extensions_mut().insert(LocalReply(Bytes::from(text)));
        r
    }

    #[test]
    fn local_errors_become_trailers_only_grpc_answers() {
        let r = as_grpc(reply(503, "no healthy upstream\n"));
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[GRPC_STATUS], "14");
        assert_eq!(r.headers()["grpc-message"], "no healthy upstream");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/grpc");
        assert_eq!(as_grpc(reply(504, "t")).headers()[GRPC_STATUS], "14");
        assert_eq!(as_grpc(reply(403, "RBAC")).headers()[GRPC_STATUS], "7");
        assert_eq!(as_grpc(reply(404, "no route")).headers()[GRPC_STATUS], "12");
        // Envoy's empty NR 404: no grpc-message.
        let nr = as_grpc(reply(404, ""));
        assert_eq!(nr.headers()[GRPC_STATUS], "12");
        assert!(!nr.headers().contains_key("grpc-message"));
        assert_eq!(as_grpc(reply(500, "x")).headers()[GRPC_STATUS], "2");
        assert_eq!(
            as_grpc(reply(400, "100% bad")).headers()["grpc-message"],
            "100%25 bad"
        );
        // A redirect, a success, or an upstream's answer (unmarked) pass as they are.
        assert_eq!(as_grpc(reply(302, "")).status(), 302);
        let mut upstream = Response::new(body::full("x"));
        *upstream.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        assert_eq!(as_grpc(upstream).status(), 503);
    }

    #[test]
    fn a_grpc_request_without_a_status_is_labelled_by_its_http_code() {
        let ok = HeaderValue::from_static("0");
        assert_eq!(grpc_label(true, Some(&ok), 200), "0");
        assert_eq!(grpc_label(true, None, 503), "14");
        assert_eq!(grpc_label(true, None, 200), "2", "a stream cut short");
        assert_eq!(grpc_label(true, None, 0), "", "never answered");
        assert_eq!(grpc_label(false, Some(&ok), 200), "", "plain HTTP");
    }

    #[test]
    fn trailers_only_answers_count_as_their_http_status() {
        let with = |code: &'static str| {
            let mut r = Response::new(());
            r.headers_mut()
                .insert(GRPC_STATUS, HeaderValue::from_static(code));
            http_for_grpc(&r)
        };
        assert_eq!(with("14"), Some(503));
        assert_eq!(with("0"), Some(200));
        assert_eq!(with("13"), Some(500));
        assert_eq!(with("4"), Some(504));
        assert_eq!(http_for_grpc(&Response::new(())), None);
    }
}
