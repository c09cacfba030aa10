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

/// The mesh's trust domain, set once at startup (`--trust-domain`).
static LOCAL_TRUST_DOMAIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Sets the mesh's trust domain for the policies' `cluster.local` alias; the first call wins.
pub fn set_local_trust_domain(trust_domain: &str) {
    let _ = LOCAL_TRUST_DOMAIN.set(trust_domain.to_string());
}

/// A principal of the local trust domain written as `cluster.local/...`, when that domain is
/// another: as Istio reads `cluster.local` in a policy's principals as the local trust domain
/// (`ReplaceTrustDomainAliases`), so policies written for the default keep working.
pub fn as_cluster_local(principal: &str) -> Option<String> {
    local_alias(principal, LOCAL_TRUST_DOMAIN.get()?)
}

fn local_alias(principal: &str, trust_domain: &str) -> Option<String> {
    if trust_domain == "cluster.local" {
        return None;
    }
    let rest = strip_scheme(principal)
        .strip_prefix(trust_domain)?
        .strip_prefix('/')?;
    Some(format!("cluster.local/{rest}"))
}

/// The namespace of an Istio identity, if it has one.
pub fn namespace(principal: &str) -> Option<&str> {
    namespace_and_account(principal).map(|(ns, _)| ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_local_stands_for_the_local_trust_domain() {
        let p = "spiffe://example.org/ns/shop/sa/web";
        assert_eq!(
            local_alias(p, "example.org").as_deref(),
            Some("cluster.local/ns/shop/sa/web")
        );
        assert_eq!(local_alias(p, "other.org"), None, "a foreign trust domain");
        assert_eq!(
            local_alias("spiffe://example.orgx/ns/a/sa/b", "example.org"),
            None
        );
        assert_eq!(
            local_alias("spiffe://cluster.local/ns/a/sa/b", "cluster.local"),
            None
        );
    }

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
