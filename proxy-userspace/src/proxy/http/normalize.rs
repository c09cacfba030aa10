//! Istio's default path normalization (`BASE`): percent-encoded unreserved characters are
//! decoded and `.` and `..` segments (a slash also written `\`) resolved before a request is
//! routed, so `/public/../admin` and `/%61dmin` are matched, authorized and sent upstream as
//! `/admin`, as Envoy's `normalize_path` (Chromium's URL canonicalizer) does. An absolute-form
//! target with an empty path (`http://web?x=1`) gets the `/` RFC 9112 (section 3.2.1) requires
//! of the origin form sent upstream, as Envoy's URL parser gives it.

use std::borrow::Cow;

use hyper::Uri;

use crate::security::authz::matchers::normalize_path;

/// The request target with its path normalized, or `None` when it has no dot segment (the
/// common case, decided without allocating).
pub fn normalized(uri: &Uri) -> Option<Uri> {
    if let Some(query) = uri.path_and_query().map(|p| p.as_str())
        && query.starts_with('?')
    {
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = Some(format!("/{query}").parse().ok()?);
        return Uri::from_parts(parts).ok();
    }
    let path = uri.path();
    if !path.contains("/.") && !path.contains('\\') && !path.contains('%') {
        return None;
    }
    let decoded = decode_unreserved(path);
    let clean = if decoded.contains("/.") || decoded.contains('\\') {
        normalize_path(&decoded)
    } else {
        decoded.into_owned()
    };
    if clean == path {
        return None;
    }
    let target = match uri.query() {
        Some(q) => format!("{clean}?{q}"),
        None => clean,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(target.parse().ok()?);
    Uri::from_parts(parts).ok()
}

/// Percent-encoded unreserved characters (letters, digits, `-`, `.`, `_`, `~`) decoded, as
/// RFC 3986 (section 6.2.2.2) and Envoy's canonicalizer make them: a server would read
/// `/%61dmin` as `/admin`, so a rule on `/admin` must too. Other escapes (`%2F`, `%20`) stay.
fn decode_unreserved(path: &str) -> Cow<'_, str> {
    let b = path.as_bytes();
    let hex = |c: u8| char::from(c).to_digit(16);
    let at = |i: usize| -> Option<u8> {
        let (h, l) = (hex(*b.get(i + 1)?)?, hex(*b.get(i + 2)?)?);
        let c = (h * 16 + l) as u8;
        (c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')).then_some(c)
    };
    if !(0..b.len()).any(|i| b[i] == b'%' && at(i).is_some()) {
        return Cow::Borrowed(path);
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], at(i)) {
            (b'%', Some(c)) => {
                out.push(c);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    // Only ASCII bytes were decoded into a valid UTF-8 path.
    Cow::Owned(String::from_utf8(out).expect("UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> Option<String> {
        normalized(&s.parse().unwrap()).map(|u| u.to_string())
    }

    #[test]
    fn dot_segments_are_resolved_and_the_query_kept() {
        assert_eq!(norm("/public/../admin?x=1").as_deref(), Some("/admin?x=1"));
        assert_eq!(norm("/a/./b").as_deref(), Some("/a/b"));
        assert_eq!(norm("/../../etc").as_deref(), Some("/etc"));
        assert_eq!(norm("/public/%2E%2e/admin").as_deref(), Some("/admin"));
        assert_eq!(
            norm("http://web:8080/a/../b").as_deref(),
            Some("http://web:8080/b"),
            "absolute form keeps its authority"
        );
        assert_eq!(norm("/.well-known/x"), None, "not a dot segment");
        assert_eq!(norm("/%61dmin/%7Euser").as_deref(), Some("/admin/~user"));
        assert_eq!(norm("/a%2fb%20c"), None, "reserved and other escapes stay");
        assert_eq!(norm("/x/%2E%2E/%61dmin").as_deref(), Some("/admin"));
        assert_eq!(norm("/100%"), None, "a stray percent is left alone");
        assert_eq!(norm("/plain/path?a=../b"), None, "the query is not a path");
        assert_eq!(
            norm("http://web:8080?x=1").as_deref(),
            Some("http://web:8080/?x=1"),
            "an empty path is sent as /"
        );
        assert_eq!(norm("http://web:8080"), None, "sent as / already");
        assert_eq!(
            norm("/public/..;x=y/admin").as_deref(),
            Some("/admin"),
            "a dot segment with parameters"
        );
    }
}
