//! Header edits from VirtualService `headers` (route and destination level): set, add, remove,
//! applied to requests before forwarding and to responses before returning them; the tokens of
//! comma-separated header lists (`Connection`, `Transfer-Encoding`); and the hop-by-hop headers
//! a proxy removes.

use hyper::{
    HeaderMap,
    header::{self, HeaderName, HeaderValue},
};

use super::header_values::{self, Context};
use crate::policy::model::{HeaderOperations, Headers};

/// The trimmed tokens of every `name` field, in order (RFC 9110 section 5.6.1 lists).
pub fn tokens(h: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &str> {
    h.get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Whether a `name` list holds `token` (any case).
pub fn has_token(h: &HeaderMap, name: HeaderName, token: &str) -> bool {
    tokens(h, name).any(|t| t.eq_ignore_ascii_case(token))
}

/// Headers that describe one hop, never forwarded (RFC 9110 section 7.6.1). Typed names: a
/// lookup by `&str` parses the name first, on every request.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRAILER,
    header::UPGRADE,
];

/// Removes the headers the Connection header names (RFC 9110 section 7.6.1), but `keep`.
fn remove_connection_named(h: &mut HeaderMap, keep: Option<&HeaderName>) {
    if !h.contains_key(header::CONNECTION) {
        return;
    }
    let named: Vec<HeaderName> = tokens(h, header::CONNECTION)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .filter(|n| Some(n) != keep)
        .collect();
    for n in named {
        h.remove(n);
    }
}

/// Removes hop-by-hop headers, and those the Connection header names. `te: trailers` stays
/// (gRPC needs it); an upgrade keeps `connection` and `upgrade`.
pub fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: bool) {
    remove_connection_named(h, upgrade.then_some(&header::UPGRADE));
    for n in &HOP_BY_HOP {
        if upgrade && (n == header::CONNECTION || n == header::UPGRADE) {
            continue;
        }
        h.remove(n);
    }
    remove_te_but_trailers(h);
}

/// Headers that name a connection, not a message: HTTP/2 forbids them (RFC 9113 section
/// 8.2.2), and h2 refuses to send them.
const CONNECTION_SPECIFIC: [HeaderName; 5] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes what HTTP/2 forbids in a request, as hyper's client did: the connection-specific
/// headers, those the Connection header names, and a TE other than `trailers`. Other
/// hop-by-hop headers were removed when the request was forwarded ([`strip_hop_by_hop`]);
/// what a VirtualService set after that stays.
pub fn strip_for_http2(h: &mut HeaderMap) {
    remove_connection_named(h, None);
    for n in &CONNECTION_SPECIFIC {
        h.remove(n);
    }
    remove_te_but_trailers(h);
}

/// `te: trailers` is the one TE a proxy passes on (gRPC needs it).
fn remove_te_but_trailers(h: &mut HeaderMap) {
    if h.get(header::TE).is_some_and(|v| v != "trailers") {
        h.remove(header::TE);
    }
}

/// One level's edits in Envoy's order: remove first, then set, then add (Istio lists `set`
/// before `add`). `:authority` names the Host, as Istio reads it. Values are rendered (Envoy's
/// `%...%` operators) against the headers as they were before the level: a request's own for
/// request edits (`of_request`).
fn apply(h: &mut HeaderMap, ops: &HeaderOperations, cx: &Context<'_>, of_request: bool) {
    let name = |k: &str| {
        let k = if k.eq_ignore_ascii_case(":authority") {
            "host"
        } else {
            k
        };
        HeaderName::from_bytes(k.as_bytes()).ok()
    };
    let rendered = |pairs: &std::collections::BTreeMap<String, String>, h: &HeaderMap| {
        let request = of_request.then_some(h);
        pairs
            .iter()
            .filter_map(|(k, v)| {
                let v = header_values::render(v, cx, request);
                Some((name(k)?, HeaderValue::from_str(&v).ok()?))
            })
            .collect::<Vec<_>>()
    };
    let (set, add) = (rendered(&ops.set, h), rendered(&ops.add, h));
    for k in &ops.remove {
        if let Some(n) = name(k) {
            h.remove(n);
        }
    }
    for (n, v) in set {
        h.insert(n, v);
    }
    for (n, v) in add {
        h.append(n, v);
    }
}

/// Applies the request edits of each level in order; callers pass the destination's before
/// the route's, as Envoy applies weighted-cluster edits before route edits (so the route's
/// `set` wins).
pub fn edit_request(h: &mut HeaderMap, levels: &[Option<&Headers>], cx: &Context<'_>) {
    for ops in levels.iter().flatten().filter_map(|l| l.request.as_ref()) {
        apply(h, ops, cx, true);
    }
}

pub fn edit_response(h: &mut HeaderMap, levels: &[Option<&Headers>], cx: &Context<'_>) {
    for ops in levels.iter().flatten().filter_map(|l| l.response.as_ref()) {
        apply(h, ops, cx, false);
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
    fn set_add_remove() {
        let mut h = HeaderMap::new();
        h.insert("x-old", "1".parse().unwrap());
        h.insert("x-set", "before".parse().unwrap());
        let ops = Headers {
            request: Some(HeaderOperations {
                set: [("x-set".to_string(), "after".to_string())].into(),
                add: [("x-add".to_string(), "a".to_string())].into(),
                remove: vec!["x-old".into()],
            }),
            response: None,
        };
        let cx = Context {
            peer: "10.0.0.7:40000".parse().unwrap(),
            local: "10.96.0.1:9080".parse().unwrap(),
            protocol: "HTTP/1.1",
        };
        edit_request(&mut h, &[Some(&ops), None], &cx);
        assert_eq!(h.get("x-set").unwrap(), "after");
        assert_eq!(h.get("x-add").unwrap(), "a");
        assert!(h.get("x-old").is_none());
    }

    #[test]
    fn within_a_level_remove_goes_first() {
        let mut h = HeaderMap::new();
        h.insert("x-a", "client".parse().unwrap());
        let ops = Headers {
            request: Some(HeaderOperations {
                set: [("x-a".to_string(), "%REQ(x-a)%-set".to_string())].into(),
                add: [(":authority".to_string(), "b.example".to_string())].into(),
                remove: vec!["x-a".into()],
            }),
            response: None,
        };
        let cx = Context {
            peer: "10.0.0.7:40000".parse().unwrap(),
            local: "10.96.0.1:9080".parse().unwrap(),
            protocol: "HTTP/1.1",
        };
        edit_request(&mut h, &[Some(&ops)], &cx);
        assert_eq!(
            h.get("x-a").unwrap(),
            "client-set",
            "rendered before the remove"
        );
        assert_eq!(
            h.get("host").unwrap(),
            "b.example",
            ":authority is the Host"
        );
    }
}
