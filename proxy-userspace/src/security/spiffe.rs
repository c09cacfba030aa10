//! Reading the namespace and service account out of a SPIFFE identity
//! (`spiffe://<trust domain>/ns/<namespace>/sa/<service account>`).

/// The identity without its `spiffe://` scheme, as Istio writes principals in policies
/// (`cluster.local/ns/default/sa/sleep`). A value without the scheme is returned unchanged.
pub fn strip_scheme(principal: &str) -> &str {
    principal.strip_prefix("spiffe://").unwrap_or(principal)
}

/// `(namespace, service account)` of an Istio identity, if it has that shape.
pub fn namespace_and_account(principal: &str) -> Option<(&str, &str)> {
    let mut parts = strip_scheme(principal).split('/');
    let _trust_domain = parts.next()?;
    match (parts.next()?, parts.next()?, parts.next()?, parts.next()?) {
        ("ns", ns, "sa", sa) if !ns.is_empty() && !sa.is_empty() && parts.next().is_none() => {
            Some((ns, sa))
        }
        _ => None,
    }
}

/// The namespace of an Istio identity, if it has one.
pub fn namespace(principal: &str) -> Option<&str> {
    namespace_and_account(principal).map(|(ns, _)| ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_identities() {
        let p = "spiffe://cluster.local/ns/foo/sa/sleep";
        assert_eq!(strip_scheme(p), "cluster.local/ns/foo/sa/sleep");
        assert_eq!(namespace_and_account(p), Some(("foo", "sleep")));
        assert_eq!(namespace("cluster.local/ns/bar/sa/x"), Some("bar"));
        assert_eq!(strip_scheme("plain"), "plain");
    }

    #[test]
    fn rejects_other_shapes() {
        for p in [
            "spiffe://cluster.local",
            "spiffe://td/ns/foo",
            "spiffe://td/ns/foo/sa",
            "spiffe://td/ns//sa/x",
            "spiffe://td/ns/foo/sa/x/extra",
            "spiffe://td/namespace/foo/sa/x",
        ] {
            assert_eq!(namespace_and_account(p), None, "{p}");
        }
    }
}
