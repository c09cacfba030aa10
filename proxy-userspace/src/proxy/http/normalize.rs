//! Istio's default path normalization (`BASE`): `.` and `..` segments (a dot also written
//! `%2e`, a slash also written `\`) are resolved before a request is routed, so
//! `/public/../admin` is matched, authorized and sent upstream as `/admin`, as Envoy's
//! `normalize_path` does.

use hyper::Uri;

use crate::security::authz::matchers::normalize_path;

/// The request target with its path normalized, or `None` when it has no dot segment (the
/// common case, decided without allocating).
pub fn normalized(uri: &Uri) -> Option<Uri> {
    let path = uri.path();
    let may_have_dots =
        path.contains("/.") || path.contains('\\') || path.contains("%2e") || path.contains("%2E");
    if !may_have_dots {
        return None;
    }
    let clean = normalize_path(path);
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
        assert_eq!(norm("/plain/path?a=../b"), None, "the query is not a path");
    }
}
