//! Header edits from VirtualService `headers` (route and destination level): set, add, remove,
//! applied to requests before forwarding and to responses before returning them; the tokens of
//! comma-separated header lists (`Connection`, `Transfer-Encoding`); and the hop-by-hop headers
//! a proxy removes.

use std::borrow::Cow;

use hyper::{
    HeaderMap,
    header::{self, HeaderName, HeaderValue},
};

use super::header_values::{self, Context, Request, RequestLine};
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
/// A header's value as Envoy's matchers read it: every value of a repeated header joined with
/// commas (one value and two fields then read the same, so a second field cannot slip past a
/// match on the first), and bytes beyond ASCII kept rather than the header read as absent.
pub fn joined<'h>(h: &'h HeaderMap, name: &str) -> Option<Cow<'h, str>> {
    let mut all = h.get_all(name).iter();
    let mut text = String::from_utf8_lossy(all.next()?.as_bytes());
    for v in all {
        let t = text.to_mut();
        t.push(',');
        t.push_str(&String::from_utf8_lossy(v.as_bytes()));
    }
    Some(text)
}

/// An HTTP/2 request's cookie crumbs (one `cookie` field per pair, as HTTP/2 clients split
/// them) joined into one field with "; " for an HTTP/1.1 upstream (RFC 9113 section 8.2.3):
/// an HTTP/1.1 server may read only the first Cookie field.
pub fn join_cookies(h: &mut HeaderMap) {
    let mut all = h.get_all(header::COOKIE).iter();
    let Some(first) = all.next() else { return };
    let mut rest = all.peekable();
    if rest.peek().is_none() {
        return;
    }
    let mut joined = first.as_bytes().to_vec();
    for v in rest {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        h.insert(header::COOKIE, v);
    }
}

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
    // One pass over the names present: most requests carry none of these, and a lookup hashes
    // its name, for each of the nine below.
    if !h.keys().any(|k| HOP_BY_HOP.contains(k) || k == header::TE) {
        return;
    }
    remove_connection_named(h, upgrade.then_some(&header::UPGRADE));
    for n in &HOP_BY_HOP {
        if upgrade && (n == header::CONNECTION || n == header::UPGRADE) {
            continue;
        }
        h.remove(n);
    }
    remove_te_but_trailers(h);
}

/// Fields a trailer section must not carry (RFC 9110 section 6.5.1): those that frame or route
/// the message, hop-by-hop ones, and authentication and content metadata a recipient reads
/// from the head only.
const NOT_IN_TRAILERS: [HeaderName; 16] = [
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::HOST,
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    header::COOKIE,
    header::SET_COOKIE,
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::CONTENT_RANGE,
];

/// Removes from a trailer section what must not be there, so it cannot reframe, reroute or
/// re-authorize the message at a recipient that merges trailers into the head (and HTTP/2,
/// which refuses connection-specific fields, can carry the rest).
pub fn strip_from_trailers(t: &mut HeaderMap) {
    for n in &NOT_IN_TRAILERS {
        t.remove(n);
    }
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

/// `te: trailers` is the one TE a proxy passes on (gRPC needs it): kept when any TE field
/// lists it (`trailers, deflate` too, as Envoy keeps it), the rest removed.
fn remove_te_but_trailers(h: &mut HeaderMap) {
    let Some(te) = h.get(header::TE) else {
        return;
    };
    if te == "trailers" && h.get_all(header::TE).iter().count() == 1 {
        return;
    }
    let trailers = h.get_all(header::TE).iter().any(|v| {
        (v.to_str().unwrap_or_default().split(',')).any(|t| {
            t.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .eq_ignore_ascii_case("trailers")
        })
    });
    h.remove(header::TE);
    if trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Whether a header edit names the authority: `host` or `:authority`. Istio turns these into
/// a host rewrite, never a second Host, and does not remove them.
fn is_authority(name: &str) -> bool {
    name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case(":authority")
}

/// One level's edits in Envoy's order: remove first, then the values are rendered (Envoy's
/// `%...%` operators; `request` is what `%REQ(...)%` reads, `None` meaning the headers being
/// edited), then set, then add (Istio lists `set` before `add`). A value that renders empty is
/// not sent, as in Envoy. The authority is set, not added, with `set` winning over `add`.
fn remove(h: &mut HeaderMap, ops: &HeaderOperations) {
    for k in (ops.remove.iter()).filter(|k| !is_authority(k) && !HeaderOperations::frames(k)) {
        h.remove(k.as_str());
    }
}

fn set_and_add(
    h: &mut HeaderMap,
    ops: &HeaderOperations,
    cx: &Context<'_>,
    line: &RequestLine<'_>,
    request: Option<&Request<'_>>,
) {
    let rendered = |pairs: &std::collections::BTreeMap<String, String>, h: &HeaderMap| {
        let own = Request { headers: h, line };
        let request = request.unwrap_or(&own);
        pairs
            .iter()
            .filter(|(k, _)| !HeaderOperations::frames(k))
            .filter_map(|(k, v)| {
                let v = header_values::render(v, cx, Some(request));
                let name = if is_authority(k) { "host" } else { k.as_str() };
                let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
                (!v.is_empty())
                    .then(|| HeaderValue::from_str(&v).ok())
                    .flatten()
                    .map(|v| (name, v))
            })
            .collect::<Vec<_>>()
    };
    let (set, add) = (rendered(&ops.set, h), rendered(&ops.add, h));
    let authority_set = set.iter().any(|(n, _)| n == header::HOST);
    for (n, v) in set {
        h.insert(n, v);
    }
    for (n, v) in add {
        if n == header::HOST {
            if !authority_set {
                h.insert(n, v);
            }
        } else {
            h.append(n, v);
        }
    }
}

/// How the edits of several levels combine, as Istio hands them to Envoy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Levels {
    /// One list (a route and its single destination): every level's removals, then every
    /// level's set and add in order, so a destination's `remove` cannot undo the route's `set`.
    OneList,
    /// Each level in turn, removals then set and add (weighted destinations, then the route).
    InTurn,
}

/// Applies each level's edits in order, a later level's `set` winning, combined as `how` says.
fn edit<'o>(
    h: &mut HeaderMap,
    ops: impl Iterator<Item = &'o HeaderOperations> + Clone,
    how: Levels,
    mut apply: impl FnMut(&mut HeaderMap, &HeaderOperations),
) {
    if how == Levels::OneList {
        ops.clone().for_each(|o| remove(h, o));
    }
    for o in ops {
        if how == Levels::InTurn {
            remove(h, o);
        }
        apply(h, o);
    }
}

/// Applies the request edits of each level (see the caller for the order Istio gives the
/// route's and the destination's). `line` is the request's pseudo-headers, for
/// `%REQ(:path)%` and the like.
pub fn edit_request(
    h: &mut HeaderMap,
    levels: &[Option<&Headers>],
    how: Levels,
    cx: &Context<'_>,
    line: &RequestLine<'_>,
) {
    let ops = levels.iter().flatten().filter_map(|l| l.request.as_ref());
    edit(h, ops, how, |h, o| set_and_add(h, o, cx, line, None));
}

/// Applies the response edits of each level in order; `request` is the request they were
/// for, as `%REQ(...)%` reads it (`None`: it reads nothing).
pub fn edit_response(
    h: &mut HeaderMap,
    levels: &[Option<&Headers>],
    how: Levels,
    cx: &Context<'_>,
    request: Option<&Request<'_>>,
) {
    let nothing = HeaderMap::new();
    let line = RequestLine::default();
    let none = Request {
        headers: &nothing,
        line: &line,
    };
    let ops = levels.iter().flatten().filter_map(|l| l.response.as_ref());
    let request = Some(request.unwrap_or(&none));
    edit(h, ops, how, |h, o| set_and_add(h, o, cx, &line, request));
}

/// Whether some level's response edits read the request (`%REQ(...)%`), so it must be kept
/// for them.
pub fn responses_read_request(levels: &[Option<&Headers>]) -> bool {
    levels
        .iter()
        .flatten()
        .filter_map(|l| l.response.as_ref())
        .flat_map(|ops| ops.set.values().chain(ops.add.values()))
        .any(|v| v.contains("%REQ("))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http2_cookie_crumbs_are_joined_for_http1() {
        let mut h = HeaderMap::new();
        join_cookies(&mut h);
        assert!(h.get(header::COOKIE).is_none());
        h.append(header::COOKIE, HeaderValue::from_static("session=abc"));
        join_cookies(&mut h);
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        h.append(header::COOKIE, HeaderValue::from_static("csrf=xyz"));
        join_cookies(&mut h);
        let all: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(all, ["session=abc; csrf=xyz"]);
    }

    #[test]
    fn matchers_read_repeated_headers_joined_and_non_ascii_kept() {
        let mut h = HeaderMap::new();
        h.append("x-user", HeaderValue::from_static("alice"));
        assert_eq!(joined(&h, "x-user").as_deref(), Some("alice"));
        h.append("x-user", HeaderValue::from_static("mallory"));
        assert_eq!(joined(&h, "x-user").as_deref(), Some("alice,mallory"));
        h.insert(
            "x-tier",
            HeaderValue::from_bytes("göld".as_bytes()).unwrap(),
        );
        assert_eq!(joined(&h, "x-tier").as_deref(), Some("göld"));
        assert_eq!(joined(&h, "x-absent"), None);
    }

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
        // `trailers` among other codings is kept alone.
        let mut h = HeaderMap::new();
        h.insert("te", "deflate;q=0.5, Trailers".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.get_all("te").iter().collect::<Vec<_>>(), ["trailers"]);
        // Each alone is found, and nothing else goes.
        for name in ["proxy-authorization", "upgrade", "trailer", "te"] {
            let mut h = HeaderMap::new();
            h.insert(HeaderName::from_static(name), "x".parse().unwrap());
            h.insert("x-end-to-end", "1".parse().unwrap());
            strip_hop_by_hop(&mut h, false);
            assert!(h.get(name).is_none(), "{name}");
            assert!(h.get("x-end-to-end").is_some());
        }
    }

    fn cx() -> Context<'static> {
        Context {
            peer: "10.0.0.7:40000".parse().unwrap(),
            local: "10.96.0.1:9080".parse().unwrap(),
            protocol: "HTTP/1.1",
            started: std::time::Instant::now(),
        }
    }

    fn edits(set: &[(&str, &str)], add: &[(&str, &str)], remove: &[&str]) -> Headers {
        let pairs = |p: &[(&str, &str)]| {
            p.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        Headers {
            request: Some(HeaderOperations {
                set: pairs(set),
                add: pairs(add),
                remove: remove.iter().map(|r| r.to_string()).collect(),
            }),
            response: None,
        }
    }

    #[test]
    fn set_add_remove() {
        let mut h = HeaderMap::new();
        h.insert("x-old", "1".parse().unwrap());
        h.insert("x-set", "before".parse().unwrap());
        let ops = edits(&[("x-set", "after")], &[("x-add", "a")], &["x-old"]);
        edit_request(
            &mut h,
            &[Some(&ops), None],
            Levels::InTurn,
            &cx(),
            &RequestLine::default(),
        );
        assert_eq!(h.get("x-set").unwrap(), "after");
        assert_eq!(h.get("x-add").unwrap(), "a");
        assert!(h.get("x-old").is_none());
    }

    #[test]
    fn removes_go_first_and_the_authority_is_set_once() {
        let mut h = HeaderMap::new();
        h.insert("x-a", "client".parse().unwrap());
        h.insert("host", "web".parse().unwrap());
        let ops = edits(
            &[("x-a", "%REQ(x-a)%-set"), ("x-empty", "%REQ(x-none)%")],
            &[(":authority", "b.example")],
            &["x-a", "host"],
        );
        edit_request(
            &mut h,
            &[Some(&ops)],
            Levels::InTurn,
            &cx(),
            &RequestLine::default(),
        );
        assert_eq!(
            h.get("x-a").unwrap(),
            "-set",
            "rendered after the remove, as Envoy"
        );
        assert!(h.get("x-empty").is_none(), "an empty value is not sent");
        let hosts: Vec<_> = h.get_all("host").iter().collect();
        assert_eq!(hosts, ["b.example"], "one Host, the added authority");
        let ops = edits(
            &[("host", "set.example")],
            &[(":authority", "add.example")],
            &[],
        );
        edit_request(
            &mut h,
            &[Some(&ops)],
            Levels::InTurn,
            &cx(),
            &RequestLine::default(),
        );
        assert_eq!(h.get("host").unwrap(), "set.example", "set wins over add");
    }

    #[test]
    fn the_fields_that_frame_a_message_are_never_edited() {
        let mut h = HeaderMap::new();
        h.insert("content-length", "1".parse().unwrap());
        let ops = edits(
            &[("content-length", "500"), ("Transfer-Encoding", "chunked")],
            &[("x-kept", "1")],
            &["content-length"],
        );
        edit_request(
            &mut h,
            &[Some(&ops)],
            Levels::OneList,
            &cx(),
            &RequestLine::default(),
        );
        assert_eq!(h.get("content-length").unwrap(), "1");
        assert!(h.get("transfer-encoding").is_none());
        assert_eq!(h.get("x-kept").unwrap(), "1");
    }
}
