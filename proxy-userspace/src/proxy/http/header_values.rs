//! Envoy's command operators in header values, as Istio passes them through: a VirtualService
//! header edit such as `x-client-ip: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"` gets the
//! client's address. `%%` is a literal `%`; an operator meshd does not know stays as written
//! (validation warns).

use std::{borrow::Cow, net::SocketAddr};

use hyper::HeaderMap;

/// What the operators read: the downstream connection.
pub struct Context<'a> {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub protocol: &'a str,
}

/// The operators meshd substitutes, for validation.
pub const KNOWN: [&str; 9] = [
    "DOWNSTREAM_REMOTE_ADDRESS",
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
    "DOWNSTREAM_REMOTE_PORT",
    "DOWNSTREAM_LOCAL_ADDRESS",
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
    "DOWNSTREAM_LOCAL_PORT",
    "PROTOCOL",
    "HOSTNAME",
    "START_TIME",
];

/// `value` with its operators substituted; borrowed when it has none. `request` is the
/// request's headers where the edit sees them (request edits; for a response edit `None`, and
/// `%REQ(...)%` is empty there).
pub fn render<'v>(value: &'v str, cx: &Context<'_>, request: Option<&HeaderMap>) -> Cow<'v, str> {
    if !value.contains('%') {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find('%') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        if let Some(tail) = after.strip_prefix('%') {
            out.push('%');
            rest = tail;
            continue;
        }
        match after.find('%') {
            Some(end) => {
                match operator(&after[..end], cx, request) {
                    Some(v) => out.push_str(&v),
                    None => out.push_str(&rest[start..start + end + 2]),
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// One operator's value; `None` for one meshd does not know.
fn operator(name: &str, cx: &Context<'_>, request: Option<&HeaderMap>) -> Option<String> {
    if let Some(header) = name.strip_prefix("REQ(").and_then(|n| n.strip_suffix(')')) {
        let header = header.split(':').next().unwrap_or(header);
        let value = request
            .and_then(|h| h.get(header.to_ascii_lowercase()))
            .and_then(|v| v.to_str().ok());
        return Some(value.unwrap_or("").to_string());
    }
    Some(match name {
        "DOWNSTREAM_REMOTE_ADDRESS" => cx.peer.to_string(),
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => cx.peer.ip().to_string(),
        "DOWNSTREAM_REMOTE_PORT" => cx.peer.port().to_string(),
        "DOWNSTREAM_LOCAL_ADDRESS" => cx.local.to_string(),
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => cx.local.ip().to_string(),
        "DOWNSTREAM_LOCAL_PORT" => cx.local.port().to_string(),
        "PROTOCOL" => cx.protocol.to_string(),
        "HOSTNAME" => hostname(),
        "START_TIME" => crate::telemetry::access_log::rfc3339(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        ),
        _ => return None,
    })
}

/// Whether a header value's operators are all ones meshd substitutes: the first unknown one.
pub fn unknown(value: &str) -> Option<&str> {
    let mut rest = value;
    while let Some(start) = rest.find('%') {
        let after = &rest[start + 1..];
        if let Some(tail) = after.strip_prefix('%') {
            rest = tail;
            continue;
        }
        let end = after.find('%')?;
        let name = &after[..end];
        let req = name.starts_with("REQ(") && name.ends_with(')');
        if !req && !KNOWN.contains(&name) {
            return Some(name);
        }
        rest = &after[end + 1..];
    }
    None
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators_are_substituted_and_unknown_ones_kept() {
        let mut req = HeaderMap::new();
        req.insert("x-user", "alice".parse().unwrap());
        let cx = Context {
            peer: "10.0.0.7:40000".parse().unwrap(),
            local: "10.96.0.1:9080".parse().unwrap(),
            protocol: "HTTP/1.1",
        };
        let r = |v: &str| render(v, &cx, Some(&req)).into_owned();
        assert_eq!(r("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"), "10.0.0.7");
        assert_eq!(r("ip=%DOWNSTREAM_REMOTE_ADDRESS%;"), "ip=10.0.0.7:40000;");
        assert_eq!(r("%DOWNSTREAM_LOCAL_PORT%/%PROTOCOL%"), "9080/HTTP/1.1");
        assert_eq!(r("user %REQ(X-User)% %REQ(x-none)%."), "user alice .");
        assert_eq!(r("100%% sure"), "100% sure");
        assert_eq!(r("%UNKNOWN_THING% stays"), "%UNKNOWN_THING% stays");
        assert_eq!(r("50% off"), "50% off", "a lone % is literal");
        assert!(matches!(render("plain", &cx, None), Cow::Borrowed(_)));
        assert_eq!(render("%REQ(x-user)%", &cx, None), "", "a response edit");
        assert_eq!(unknown("%REQ(a)% %HOSTNAME% %%"), None);
        assert_eq!(unknown("%UPSTREAM_CLUSTER%"), Some("UPSTREAM_CLUSTER"));
    }
}
