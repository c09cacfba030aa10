//! Envoy's command operators in header values, as Istio passes them through: a VirtualService
//! header edit such as `x-client-ip: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"` gets the
//! client's address (grammar in `policy::header_operators`). `%%` is a literal `%`; an
//! operator meshd does not know stays as written (validation warns).

use std::{
    borrow::Cow,
    net::SocketAddr,
    sync::OnceLock,
    time::{Instant, SystemTime},
};

use hyper::HeaderMap;

use crate::policy::header_operators::{Piece, pieces, request_header};

/// What the operators read of the downstream connection.
pub struct Context<'a> {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub protocol: &'a str,
    /// When the request started, for `%START_TIME%`.
    pub started: Instant,
}

/// A request's pseudo-headers, as `%REQ(:path)%` and the like read them.
#[derive(Clone, Debug, Default)]
pub struct RequestLine<'a> {
    pub method: Cow<'a, str>,
    /// The path with its query.
    pub path: Cow<'a, str>,
    pub authority: Cow<'a, str>,
    pub scheme: Cow<'a, str>,
}

impl RequestLine<'_> {
    /// The same, owning its strings.
    pub fn to_owned(&self) -> RequestLine<'static> {
        let own = |c: &Cow<'_, str>| Cow::Owned(c.to_string());
        RequestLine {
            method: own(&self.method),
            path: own(&self.path),
            authority: own(&self.authority),
            scheme: own(&self.scheme),
        }
    }
}

/// The request as `%REQ(...)%` reads it: its headers and its pseudo-headers.
pub struct Request<'a> {
    pub headers: &'a HeaderMap,
    pub line: &'a RequestLine<'a>,
}

impl Request<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        if name.starts_with(':') {
            let line = self.line;
            return match name.to_ascii_lowercase().as_str() {
                ":method" => Some(&line.method),
                ":path" => Some(&line.path),
                ":authority" => Some(&line.authority),
                ":scheme" => Some(&line.scheme),
                _ => None,
            };
        }
        (self.headers.get(name.to_ascii_lowercase()))
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
    }
}

/// `value` with its operators substituted; borrowed when it has none. `request` is what
/// `%REQ(...)%` reads (`None`: it is empty).
pub fn render<'v>(value: &'v str, cx: &Context<'_>, request: Option<&Request<'_>>) -> Cow<'v, str> {
    if !value.contains('%') {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len());
    for piece in pieces(value) {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Percent => out.push('%'),
            Piece::Operator(op) => match operator(op, cx, request) {
                Some(v) => out.push_str(&v),
                None => {
                    out.push('%');
                    out.push_str(op);
                    out.push('%');
                }
            },
        }
    }
    Cow::Owned(out)
}

/// One operator's value; `None` for one meshd does not know.
fn operator(name: &str, cx: &Context<'_>, request: Option<&Request<'_>>) -> Option<String> {
    if let Some((header, fallback, max)) = request_header(name) {
        let value = request
            .and_then(|r| r.get(header).or_else(|| r.get(fallback?)))
            .unwrap_or("");
        let cut = max.map_or(value.len(), |m| value.floor_char_boundary(m));
        return Some(value[..cut].to_string());
    }
    Some(match name {
        "DOWNSTREAM_REMOTE_ADDRESS" => cx.peer.to_string(),
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => cx.peer.ip().to_string(),
        "DOWNSTREAM_REMOTE_PORT" => cx.peer.port().to_string(),
        "DOWNSTREAM_LOCAL_ADDRESS" => cx.local.to_string(),
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => cx.local.ip().to_string(),
        "DOWNSTREAM_LOCAL_PORT" => cx.local.port().to_string(),
        "PROTOCOL" => cx.protocol.to_string(),
        "HOSTNAME" => hostname().to_string(),
        "START_TIME" => {
            let started = SystemTime::now() - cx.started.elapsed();
            let ms = started
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            crate::telemetry::access_log::rfc3339(ms)
        }
        _ => return None,
    })
}

/// The node's host name, read once.
fn hostname() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators_are_substituted_and_unknown_ones_kept() {
        let mut headers = HeaderMap::new();
        headers.insert("x-user", "alice".parse().unwrap());
        let line = RequestLine {
            method: "GET".into(),
            path: "/a?b=1".into(),
            authority: "web:8080".into(),
            scheme: "http".into(),
        };
        let req = Request {
            headers: &headers,
            line: &line,
        };
        let cx = Context {
            peer: "10.0.0.7:40000".parse().unwrap(),
            local: "10.96.0.1:9080".parse().unwrap(),
            protocol: "HTTP/1.1",
            started: Instant::now(),
        };
        let r = |v: &str| render(v, &cx, Some(&req)).into_owned();
        assert_eq!(r("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"), "10.0.0.7");
        assert_eq!(r("ip=%DOWNSTREAM_REMOTE_ADDRESS%;"), "ip=10.0.0.7:40000;");
        assert_eq!(r("%DOWNSTREAM_LOCAL_PORT%/%PROTOCOL%"), "9080/HTTP/1.1");
        assert_eq!(r("user %REQ(X-User)% %REQ(x-none)%."), "user alice .");
        assert_eq!(r("%REQ(x-none?x-user)%"), "alice", "the fallback header");
        assert_eq!(r("%REQ(x-user):3%"), "ali", "cut to 3");
        assert_eq!(
            r("%REQ(:AUTHORITY)% %REQ(:path)% %REQ(:method)%"),
            "web:8080 /a?b=1 GET"
        );
        assert_eq!(r("100%% sure"), "100% sure");
        assert_eq!(r("%UNKNOWN_THING% stays"), "%UNKNOWN_THING% stays");
        assert_eq!(r("50% off"), "50% off", "a lone % is literal");
        assert!(r("%START_TIME%").ends_with('Z'));
        assert!(matches!(render("plain", &cx, None), Cow::Borrowed(_)));
        assert_eq!(render("%REQ(x-user)%", &cx, None), "");
    }
}
