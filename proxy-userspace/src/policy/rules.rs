//! Checks of single string values: names, hosts, header names, regexes, addresses.
//!
//! Each returns `Err(reason)`; the schema walker adds the path and position.

use std::net::IpAddr;

use super::node::quote;

pub type StrRule = fn(&str) -> Result<(), String>;

pub fn any(_: &str) -> Result<(), String> {
    Ok(())
}

pub fn non_empty(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(())
}

fn dns_label_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A Kubernetes namespace: a DNS-1123 label.
pub fn dns_label(s: &str) -> Result<(), String> {
    if dns_label_ok(s) {
        return Ok(());
    }
    Err(format!(
        "{} is not a valid name: use at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit",
        quote(s)
    ))
}

/// A Kubernetes object name: a DNS-1123 subdomain.
pub fn dns_subdomain(s: &str) -> Result<(), String> {
    if s.len() <= 253 && s.split('.').all(dns_label_ok) {
        return Ok(());
    }
    Err(format!(
        "{} is not a valid name: use lower-case letters, digits, '-' and '.', at most 253 characters",
        quote(s)
    ))
}

/// A host name as written in hosts lists: `reviews`, `reviews.default.svc.cluster.local`,
/// `*.mycorp.com`, `*`, or an IP address.
pub fn host(s: &str) -> Result<(), String> {
    if s == "*" || s.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let name = s.strip_prefix("*.").unwrap_or(s);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !name.is_empty() && s.len() <= 255 && name.split('.').all(label_ok) {
        return Ok(());
    }
    Err(format!(
        "{} is not a valid host: expected a DNS name such as reviews or reviews.default.svc.cluster.local, optionally with a leading \"*.\"",
        quote(s)
    ))
}

/// A destination host: like `host`, without wildcards.
pub fn dest_host(s: &str) -> Result<(), String> {
    if s.contains('*') {
        return Err(format!(
            "{}: a destination must name one service, not a wildcard",
            quote(s)
        ));
    }
    host(s)
}

/// A route's destination host: one service, or a wildcard ServiceEntry host (`*.example.com`),
/// as Istio accepts it (the request then goes where the client dialled, as Envoy's
/// original-destination cluster for such a service). `*` alone names no service.
pub fn route_dest_host(s: &str) -> Result<(), String> {
    if s == "*" {
        return Err(format!(
            "{}: a destination must name a service, or a wildcard host such as *.example.com",
            quote(s)
        ));
    }
    host(s)
}

/// An HTTP header name (an RFC 9110 token).
pub fn header_name(s: &str) -> Result<(), String> {
    // HTTP/2 pseudo-headers such as :authority are matchable too.
    if is_token(s.strip_prefix(':').unwrap_or(s)) {
        return Ok(());
    }
    Err(format!("{} is not a valid HTTP header name", quote(s)))
}

/// A header value to send: as Istio validates one, without control characters but the tab
/// (a line break would end the field).
pub fn header_value(s: &str) -> Result<(), String> {
    if s.chars().any(|c| c != '\t' && (c.is_ascii_control())) {
        return Err(format!(
            "{} holds a line break or another control character, which no header value may",
            quote(s)
        ));
    }
    Ok(())
}

/// A CORS `allowMethods` entry: a method Istio's validation takes.
pub fn cors_method(s: &str) -> Result<(), String> {
    const METHODS: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    if METHODS.contains(&s) {
        return Ok(());
    }
    Err(format!(
        "{} is not a method CORS allows here: {}",
        quote(s),
        METHODS.join(", ")
    ))
}

/// Base64 (a protobuf `bytes` field in YAML).
pub fn base64(s: &str) -> Result<(), String> {
    match super::base64::decode(s) {
        Some(_) => Ok(()),
        None => Err(format!("{} is not base64", quote(s))),
    }
}

/// An HTTP token (RFC 9110 section 5.6.2), such as a cookie attribute's name.
pub fn token(s: &str) -> Result<(), String> {
    if is_token(s) {
        return Ok(());
    }
    Err(format!("{} is not a valid HTTP token", quote(s)))
}

/// Text for a cookie attribute (a path, an attribute's value): printable, without `;`, which
/// would start another attribute.
pub fn cookie_text(s: &str) -> Result<(), String> {
    if s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b';') {
        return Ok(());
    }
    Err(format!(
        "{} cannot go into a Set-Cookie: use printable ASCII without ';'",
        quote(s)
    ))
}

fn is_token(s: &str) -> bool {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    !s.is_empty() && s.bytes().all(tchar)
}

/// A regular expression in RE2 syntax, as Envoy reads it (see `re2`).
pub fn regex(s: &str) -> Result<(), String> {
    super::re2::compile(s, false)
        .map(|_| ())
        .map_err(|detail| format!("invalid regex {}: {detail}", quote(s)))
}

/// An IP address or CIDR block.
pub fn ip_or_cidr(s: &str) -> Result<(), String> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s, None),
    };
    let bad = || format!("{} is not an IP address or CIDR block", quote(s));
    let ip: IpAddr = ip.parse().map_err(|_| bad())?;
    if let Some(len) = len {
        let len: u8 = len.parse().map_err(|_| bad())?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(bad());
        }
    }
    Ok(())
}

/// A workload address: an IP, a DNS name, or `unix:///path`.
pub fn address(s: &str) -> Result<(), String> {
    if s.starts_with("unix://") || s.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    dest_host(s).map_err(|_| {
        format!(
            "{} is not an address: expected an IP, a DNS name or unix:///path",
            quote(s)
        )
    })
}

/// A port given as a string (AuthorizationPolicy ports), e.g. "8080".
pub fn port_string(s: &str) -> Result<(), String> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{} is not a port number (1-65535)", quote(s))),
    }
}

/// Retry conditions Istio accepts in `retryOn`, besides HTTP status codes.
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// A comma-separated list of retry conditions, e.g. `gateway-error,connect-failure,503`. Every
/// entry that is none is named, not only the first; a status code is 101 to 599, as Istio
/// checks it.
pub fn retry_on(s: &str) -> Result<(), String> {
    // As Istio validates it: each entry as written (a space is part of it), a condition or a
    // status code Go's net/http has a name for.
    let known =
        |cond: &str| RETRY_ON.contains(&cond) || cond.parse::<i64>().is_ok_and(named_status);
    let bad: Vec<String> = (s.split(',')).filter(|c| !known(c)).map(quote).collect();
    let is = match bad.len() {
        0 => return Ok(()),
        1 => "is not a retry condition",
        _ => "are not retry conditions",
    };
    Err(format!(
        "{} {is}: use HTTP status codes or {}",
        bad.join(", "),
        RETRY_ON.join(", ")
    ))
}

/// Whether Go's `http.StatusText` names `code`: the codes Istio takes in `retryOn`.
fn named_status(code: i64) -> bool {
    matches!(
        code,
        100..=103
            | 200..=208
            | 226
            | 300..=305
            | 307
            | 308
            | 400..=418
            | 421..=426
            | 428
            | 429
            | 431
            | 451
            | 500..=508
            | 510
            | 511
    )
}

/// A Redis address, `host:port`.
pub fn host_port(s: &str) -> Result<(), String> {
    let bad = || format!("{} is not host:port, e.g. redis.default:6379", quote(s));
    let (h, p) = s.rsplit_once(':').ok_or_else(bad)?;
    let h = h.trim_start_matches('[').trim_end_matches(']');
    match p.parse::<u16>() {
        Ok(p) if p > 0 && (h.parse::<IpAddr>().is_ok() || dest_host(h).is_ok()) => Ok(()),
        _ => Err(bad()),
    }
}

/// A label key: an optional DNS prefix and `/`, then a name of at most 63 characters.
pub fn label_key(s: &str) -> Result<(), String> {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if name_ok && prefix.is_none_or(|p| dns_subdomain(p).is_ok()) {
        return Ok(());
    }
    Err(format!("{} is not a valid label key", quote(s)))
}

/// A label value: at most 63 characters of letters, digits, `-`, `_`, `.`.
pub fn label_value(s: &str) -> Result<(), String> {
    let ok = s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        return Ok(());
    }
    Err(format!("{} is not a valid label value", quote(s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        for ok in [
            "reviews",
            "payment.mycorp.com",
            "*.mycorp.com",
            "*",
            "10.0.0.1",
            "reviews.default.svc.cluster.local",
        ] {
            assert!(host(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "foo.*.com", "-x", "a..b"] {
            assert!(host(bad).is_err(), "{bad}");
        }
        assert!(dest_host("*.mycorp.com").is_err());
    }

    #[test]
    fn regexes_compile_or_explain() {
        assert!(regex("^/api/v[0-9]+/.*").is_ok());
        let err = regex("([a-z]").unwrap_err();
        assert!(err.starts_with("invalid regex \"([a-z]\": "), "{err}");
        assert!(err.contains("unclosed group"), "{err}");
        // RE2 has no look-around; neither does the regex crate.
        assert!(regex("(?=x)").is_err());
        assert!(regex("a{1000}{1000}").is_err());
    }

    #[test]
    fn retry_conditions() {
        assert!(retry_on("gateway-error,connect-failure,refused-stream").is_ok());
        assert!(retry_on("5xx,503,retriable-status-codes,429,418").is_ok());
        assert!(retry_on("sometimes").unwrap_err().contains("\"sometimes\""));
        // As Istio: entries as written, so a space makes one unknown, and only the status
        // codes Go names.
        assert!(retry_on("5xx, 503").unwrap_err().contains("\" 503\""));
        assert!(retry_on("5xx,").is_err());
        assert!(retry_on("100").is_ok());
        for unnamed in ["999", "599", "499", "509", "306"] {
            assert!(retry_on(unnamed).is_err(), "{unnamed}");
        }
        let both = retry_on("unavailable,foo-bar,5xx,0").unwrap_err();
        assert!(
            both.starts_with("\"foo-bar\", \"0\" are not retry conditions"),
            "every bad entry named: {both}"
        );
    }

    #[test]
    fn names_labels_and_addresses() {
        assert!(dns_subdomain("payment-service").is_ok());
        assert!(dns_subdomain("Payment").is_err());
        assert!(dns_label("my.ns").is_err());
        assert!(label_key("app.kubernetes.io/name").is_ok());
        assert!(label_key("bad key").is_err());
        assert!(label_value("v1").is_ok());
        assert!(label_value("a b").is_err());
        assert!(header_name("X-User-Tier").is_ok());
        assert!(header_name("bad header").is_err());
        assert!(ip_or_cidr("10.0.0.0/8").is_ok());
        assert!(ip_or_cidr("10.0.0.0/33").is_err());
        assert!(address("unix:///var/run/app.sock").is_ok());
        assert!(host_port("redis.default:6379").is_ok());
        assert!(host_port("redis").is_err());
        assert!(port_string("8080").is_ok());
        assert!(port_string("0").is_err());
    }
}
