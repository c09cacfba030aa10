//! Host names as Istio compares them: short names are completed with the resource's namespace
//! (`reviews` in `default` is `reviews.default.svc.cluster.local`), and `*.` wildcards match.

use std::net::IpAddr;

/// The fully qualified, lower-case form of `host` as written in a resource of `namespace`.
pub fn fqdn(host: &str, namespace: &str) -> String {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    if h == "*" || h.contains('.') || h.parse::<IpAddr>().is_ok() {
        h
    } else {
        format!("{h}.{namespace}.svc.cluster.local")
    }
}

/// Whether `pattern` (a normalized host, maybe `*` or `*.suffix`) covers the normalized `host`.
pub fn covers(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix) && host.len() > suffix.len(),
        None => pattern == host,
    }
}

/// How specific a pattern is (longer is more specific; exact beats wildcard).
pub fn specificity(pattern: &str) -> (bool, usize) {
    (!pattern.starts_with('*'), pattern.len())
}

/// Of `(pattern, item)` pairs, the items whose wildcard pattern (`*.suffix`, `*`) covers
/// `host` most specifically; all of them when several patterns tie.
pub fn best_wildcards<'p, T>(pairs: &'p [(String, T)], host: &str) -> Vec<&'p T> {
    let covering: Vec<&(String, T)> = pairs
        .iter()
        .filter(|(p, _)| p.starts_with('*') && covers(p, host))
        .collect();
    let best = covering.iter().map(|(p, _)| specificity(p)).max();
    covering
        .into_iter()
        .filter(|(p, _)| Some(specificity(p)) == best)
        .map(|(_, item)| item)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_resolve_in_the_namespace() {
        assert_eq!(
            fqdn("reviews", "default"),
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(fqdn("Reviews", "shop"), "reviews.shop.svc.cluster.local");
        assert_eq!(
            fqdn("reviews.default.svc.cluster.local", "other"),
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(fqdn("payment.mycorp.com", "x"), "payment.mycorp.com");
        assert_eq!(fqdn("10.0.0.1", "x"), "10.0.0.1");
    }

    #[test]
    fn wildcards() {
        assert!(covers("*.mycorp.com", "payment.mycorp.com"));
        assert!(!covers("*.mycorp.com", "mycorp.com"));
        assert!(covers("*", "anything"));
        assert!(!covers("a.b", "c.b"));
        assert!(specificity("a.mycorp.com") > specificity("*.mycorp.com"));
    }
}
