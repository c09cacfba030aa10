//! The cookie of consistent hashing on `httpCookie`: read from the request, or, when the request
//! has none and the policy sets a `ttl`, generated and sent back in a `Set-Cookie`, as Envoy does.

use std::{
    fmt::Write,
    hash::{DefaultHasher, Hash, Hasher},
    net::SocketAddr,
};

use hyper::header::HeaderValue;
use hyper::{HeaderMap, header};

use crate::policy::model::HttpCookie;

/// The value of cookie `name` in the request's Cookie headers (HTTP/2 clients may split them),
/// without the double quotes a generated cookie carries.
pub fn find<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then(|| {
                v.strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v)
            })
        })
}

/// A cookie generated for a request that carried none.
#[derive(Debug)]
pub struct Generated {
    /// What the request hashes on, as later requests carrying the cookie will.
    pub value: String,
    /// The response's `Set-Cookie`; `None` when the policy's path or attributes cannot form a
    /// header value (the request is still hashed).
    pub set_cookie: Option<HeaderValue>,
}

/// The cookie for a request on the connection from `peer` to `local`, when `policy` has a `ttl`.
/// The value depends on the connection only, so concurrent requests on one connection get the
/// same cookie. A `ttl` under one second makes a session cookie (no `Max-Age`), as in Envoy.
pub fn generate(policy: &HttpCookie, peer: SocketAddr, local: SocketAddr) -> Option<Generated> {
    let ttl = policy.ttl.as_ref()?.0;
    let mut h = DefaultHasher::new();
    peer.hash(&mut h);
    local.hash(&mut h);
    let value = format!("{:016x}", h.finish());
    let mut text = format!("{}=\"{value}\"", policy.name);
    if ttl.as_secs() > 0 {
        let _ = write!(text, "; Max-Age={}", ttl.as_secs());
    }
    if let Some(path) = policy.path.as_deref().filter(|p| !p.is_empty()) {
        let _ = write!(text, "; Path={path}");
    }
    for a in &policy.attributes {
        match a.value.as_deref().filter(|v| !v.is_empty()) {
            Some(v) => {
                let _ = write!(text, "; {}={v}", a.name);
            }
            None => {
                let _ = write!(text, "; {}", a.name);
            }
        }
    }
    text.push_str("; HttpOnly");
    Some(Generated {
        value,
        set_cookie: HeaderValue::from_str(&text).ok(),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::policy::{duration::PolicyDuration, model::CookieAttribute};

    fn policy(ttl: Option<Duration>) -> HttpCookie {
        HttpCookie {
            name: "user".into(),
            path: None,
            ttl: ttl.map(PolicyDuration),
            attributes: vec![],
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_cookie_is_found_among_several_and_unquoted() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; b=2"));
        h.append(header::COOKIE, HeaderValue::from_static("user=\"abc\""));
        assert_eq!(find(&h, "b"), Some("2"));
        assert_eq!(find(&h, "user"), Some("abc"));
        assert_eq!(find(&h, "none"), None);
    }

    #[test]
    fn nothing_is_generated_without_a_ttl() {
        assert!(generate(&policy(None), addr(1), addr(2)).is_none());
    }

    #[test]
    fn a_generated_cookie_is_envoys_set_cookie_and_stable_per_connection() {
        let mut p = policy(Some(Duration::from_secs(60)));
        p.path = Some("/".into());
        p.attributes = vec![
            CookieAttribute {
                name: "SameSite".into(),
                value: Some("Strict".into()),
            },
            CookieAttribute {
                name: "Secure".into(),
                value: None,
            },
        ];
        let g = generate(&p, addr(40000), addr(9080)).unwrap();
        assert_eq!(g.value.len(), 16);
        assert_eq!(
            g.set_cookie.unwrap(),
            format!(
                "user=\"{}\"; Max-Age=60; Path=/; SameSite=Strict; Secure; HttpOnly",
                g.value
            )
            .as_str()
        );
        let again = generate(&p, addr(40000), addr(9080)).unwrap();
        assert_eq!(again.value, g.value, "one connection, one cookie");
        let other = generate(&p, addr(40001), addr(9080)).unwrap();
        assert_ne!(other.value, g.value, "another connection, another cookie");
    }

    #[test]
    fn a_ttl_under_a_second_makes_a_session_cookie() {
        for ttl in [Duration::ZERO, Duration::from_millis(500)] {
            let g = generate(&policy(Some(ttl)), addr(1), addr(2)).unwrap();
            assert_eq!(
                g.set_cookie.unwrap(),
                format!("user=\"{}\"; HttpOnly", g.value).as_str()
            );
        }
    }

    #[test]
    fn a_path_that_is_no_header_value_sets_no_cookie_but_still_hashes() {
        let mut p = policy(Some(Duration::from_secs(1)));
        p.path = Some("/a\nb".into());
        let g = generate(&p, addr(1), addr(2)).unwrap();
        assert!(g.set_cookie.is_none());
        assert_eq!(g.value.len(), 16);
    }
}
