//! VirtualService delegation, as Istio merges it: a root route with `delegate` is replaced by
//! the http routes of the delegate (a VirtualService without hosts), each with its matches
//! merged into the root's and the root's settings where it has none of its own. A delegate
//! match that is not within a root match conflicts, and its route is dropped. One level only.

use std::sync::Arc;

use super::{
    PolicySet,
    hosts::fqdn,
    model::{HttpMatchRequest, HttpRoute, StringMatch, VirtualService},
};

/// A VirtualService's http routes with delegation applied: each with the namespace its short
/// destination names complete in (the delegate's, for its routes) and a name for logs.
pub struct Expanded {
    pub namespace: String,
    pub origin: String,
    pub route: Arc<HttpRoute>,
}

/// `vs`'s http routes, its delegating routes replaced by their delegates' merged routes. A
/// delegate that does not exist, has hosts, or delegates again routes nothing (logged).
pub fn expand(set: &PolicySet, vs: &VirtualService) -> Vec<Expanded> {
    let own = &vs.metadata.namespace;
    let mut out = Vec::new();
    for (i, r) in vs.spec.http.iter().enumerate() {
        let origin = match &r.name {
            Some(n) => format!("{own}/{}#{n}", vs.metadata.name),
            None => format!("{own}/{}#{i}", vs.metadata.name),
        };
        let Some(d) = &r.delegate else {
            out.push(Expanded {
                namespace: own.clone(),
                origin,
                route: r.clone(),
            });
            continue;
        };
        let ns = d.namespace.as_deref().unwrap_or(own);
        let Some(delegate) = find(set, &d.name, ns) else {
            tracing::warn!(route = %origin, delegate = %format!("{ns}/{}", d.name), "delegate VirtualService not found (or it has hosts); the route is dropped");
            continue;
        };
        // Short mirror hosts complete in the namespace of the VirtualService that names them,
        // as Istio qualifies each VirtualService's hosts before merging.
        let root = qualified_mirrors(r, own);
        for (j, leaf) in delegate.spec.http.iter().enumerate() {
            if leaf.delegate.is_some() {
                tracing::warn!(route = %origin, "a delegate's route delegates again; only one level is supported, so it is dropped");
                continue;
            }
            match merge_route(&root, &qualified_mirrors(leaf, ns)) {
                Some(merged) => out.push(Expanded {
                    namespace: ns.to_string(),
                    origin: format!("{origin}>{ns}/{}#{j}", d.name),
                    route: Arc::new(merged),
                }),
                None => {
                    tracing::warn!(route = %origin, delegate = %format!("{ns}/{}#{j}", d.name), "the delegate route's matches are not within the root's; it is dropped")
                }
            }
        }
    }
    out
}

/// The delegate VirtualService `name` in `namespace`: one without hosts.
pub fn find<'s>(set: &'s PolicySet, name: &str, namespace: &str) -> Option<&'s VirtualService> {
    set.virtual_services.iter().map(|v| &**v).find(|v| {
        v.metadata.name == name && v.metadata.namespace == namespace && v.spec.hosts.is_empty()
    })
}

/// `leaf` under `root`: matches merged (`None` on a conflict), and the root's settings where
/// the leaf has none.
pub fn merge_route(root: &HttpRoute, leaf: &HttpRoute) -> Option<HttpRoute> {
    let mut out = leaf.clone();
    out.matches = merge_matches(&root.matches, &leaf.matches)?;
    out.name = joined(&root.name, &leaf.name);
    macro_rules! inherit {
        ($($field:ident),*) => {$(
            if out.$field.is_none() {
                out.$field = root.$field.clone();
            }
        )*};
    }
    inherit!(
        rewrite,
        timeout,
        retries,
        fault,
        mirror,
        mirror_percent,
        mirror_percentage,
        cors_policy,
        headers
    );
    if out.mirrors.is_empty() {
        out.mirrors = root.mirrors.clone();
    }
    out.delegate = None;
    Some(out)
}

/// `r` with its mirror hosts fully qualified in `namespace`.
fn qualified_mirrors(r: &HttpRoute, namespace: &str) -> HttpRoute {
    let mut r = r.clone();
    let hosts = (r.mirror.iter_mut()).chain(r.mirrors.iter_mut().map(|m| &mut m.destination));
    for d in hosts {
        d.host = fqdn(&d.host, namespace);
    }
    r
}

/// A merged name: `root-leaf`, or whichever is set.
fn joined<T>(root: &Option<T>, leaf: &Option<T>) -> Option<T>
where
    T: std::fmt::Display + Clone + From<String>,
{
    match (root, leaf) {
        (Some(r), Some(l)) => Some(format!("{r}-{l}").into()),
        (r, l) => l.clone().or_else(|| r.clone()),
    }
}

/// Each leaf match merged with every root match it does not conflict with; `None` when a leaf
/// match fits none of them.
fn merge_matches(
    root: &[HttpMatchRequest],
    leaf: &[HttpMatchRequest],
) -> Option<Vec<HttpMatchRequest>> {
    if root.is_empty() {
        return Some(leaf.to_vec());
    }
    if leaf.is_empty() {
        return Some(root.to_vec());
    }
    let mut out = Vec::new();
    for l in leaf {
        let fits: Vec<HttpMatchRequest> = root
            .iter()
            .filter(|r| !conflicts(r, l))
            .map(|r| merge_match(r, l))
            .collect();
        if fits.is_empty() {
            return None;
        }
        out.extend(fits);
    }
    Some(out)
}

/// `leaf` with what `root` sets and it does not; for maps, the root's entries then the leaf's.
fn merge_match(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> HttpMatchRequest {
    let mut out = leaf.clone();
    out.name = joined(&root.name, &leaf.name);
    for (mine, theirs) in [
        (&mut out.uri, &root.uri),
        (&mut out.scheme, &root.scheme),
        (&mut out.method, &root.method),
        (&mut out.authority, &root.authority),
    ] {
        if mine.is_none() {
            mine.clone_from(theirs);
        }
    }
    for (mine, theirs) in [
        (&mut out.headers, &root.headers),
        (&mut out.without_headers, &root.without_headers),
        (&mut out.query_params, &root.query_params),
    ] {
        let own = std::mem::replace(mine, theirs.clone());
        mine.extend(own);
    }
    let own = std::mem::replace(&mut out.source_labels, root.source_labels.clone());
    out.source_labels.extend(own);
    out.port = out.port.or(root.port);
    if out.source_namespace.is_none() {
        out.source_namespace.clone_from(&root.source_namespace);
    }
    if out.gateways.is_empty() {
        out.gateways.clone_from(&root.gateways);
    }
    if out.stat_prefix.is_none() {
        out.stat_prefix.clone_from(&root.stat_prefix);
    }
    out
}

/// Whether `leaf` asks for something outside `root`, as Istio's `hasConflict` decides.
fn conflicts(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> bool {
    let pairs = [
        (&root.uri, &leaf.uri),
        (&root.scheme, &leaf.scheme),
        (&root.method, &leaf.method),
        (&root.authority, &leaf.authority),
    ];
    let maps = [
        (&root.headers, &leaf.headers),
        (&root.without_headers, &leaf.without_headers),
        (&root.query_params, &leaf.query_params),
    ];
    pairs
        .iter()
        .any(|(r, l)| string_conflict(r.as_ref(), l.as_ref()))
        || maps
            .iter()
            .any(|(r, l)| l.iter().any(|(k, lv)| string_conflict(r.get(k), Some(lv))))
        || root.ignore_uri_case != leaf.ignore_uri_case
        || matches!((root.port, leaf.port), (Some(r), Some(l)) if r != l)
        || root
            .source_namespace
            .as_ref()
            .is_some_and(|r| leaf.source_namespace.as_ref() != Some(r))
        || leaf
            .source_labels
            .iter()
            .any(|(k, v)| root.source_labels.get(k).is_some_and(|r| r != v))
        || (!root.gateways.is_empty()
            && !leaf.gateways.is_empty()
            && !leaf.gateways.iter().all(|g| root.gateways.contains(g)))
}

/// Whether the leaf's string match can hold outside the root's: a regex on either side
/// against anything, an exact that differs, or a prefix or exact outside the root's prefix.
fn string_conflict(root: Option<&StringMatch>, leaf: Option<&StringMatch>) -> bool {
    let (Some(root), Some(leaf)) = (root, leaf) else {
        return false;
    };
    if root.regex.is_some() || leaf.regex.is_some() {
        return true;
    }
    if let Some(exact) = &root.exact {
        return leaf.exact.as_ref() != Some(exact);
    }
    if let Some(prefix) = &root.prefix {
        return match (&leaf.prefix, &leaf.exact) {
            (Some(p), _) | (None, Some(p)) => !p.starts_with(prefix.as_str()),
            (None, None) => true,
        };
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(json: &str) -> HttpRoute {
        serde_json::from_str(json).unwrap()
    }

    fn uris(r: &HttpRoute) -> Vec<String> {
        r.matches
            .iter()
            .map(|m| format!("{:?}", m.uri.as_ref().map(|u| (&u.exact, &u.prefix))))
            .collect()
    }

    #[test]
    fn a_leaf_match_must_lie_within_a_root_match() {
        let root =
            route(r#"{"match": [{"uri": {"prefix": "/api"}}, {"uri": {"exact": "/health"}}]}"#);
        let within = route(r#"{"match": [{"uri": {"prefix": "/api/v1"}}], "route": []}"#);
        let merged = merge_route(&root, &within).unwrap();
        assert_eq!(uris(&merged), [r#"Some((None, Some("/api/v1")))"#]);
        let exact = route(r#"{"match": [{"uri": {"exact": "/health"}}]}"#);
        assert_eq!(uris(&merge_route(&root, &exact).unwrap()).len(), 1);
        for outside in [
            r#"{"match": [{"uri": {"prefix": "/a"}}]}"#,
            r#"{"match": [{"uri": {"regex": "/api/.*"}}]}"#,
            r#"{"match": [{"uri": {"prefix": "/health"}}]}"#,
        ] {
            assert!(merge_route(&root, &route(outside)).is_none(), "{outside}");
        }
        // A leaf without matches takes the root's.
        assert_eq!(
            merge_route(&root, &route("{}")).unwrap().matches,
            root.matches
        );
    }

    #[test]
    fn the_merged_match_adds_the_roots_conditions() {
        let root = route(
            r#"{"match": [{"uri": {"prefix": "/api"}, "method": {"exact": "GET"}, "headers": {"x-a": {"exact": "1"}}, "port": 80}]}"#,
        );
        let leaf = route(
            r#"{"match": [{"uri": {"prefix": "/api/v1"}, "headers": {"x-b": {"exact": "2"}}}]}"#,
        );
        let m = &merge_route(&root, &leaf).unwrap().matches[0];
        assert_eq!(
            m.method.as_ref().and_then(|x| x.exact.as_deref()),
            Some("GET")
        );
        assert_eq!(m.headers.keys().collect::<Vec<_>>(), ["x-a", "x-b"]);
        assert_eq!(m.port, Some(80));
        let other_port = route(r#"{"match": [{"port": 81}]}"#);
        assert!(merge_route(&root, &other_port).is_none());
        let other_header = route(r#"{"match": [{"headers": {"x-a": {"exact": "9"}}}]}"#);
        assert!(merge_route(&root, &other_header).is_none());
        // statPrefix: the leaf's own, else the root's, as Istio merges it.
        let root = route(r#"{"match": [{"uri": {"prefix": "/api"}, "statPrefix": "api"}]}"#);
        let leaf = route(r#"{"match": [{"uri": {"prefix": "/api/v1"}}]}"#);
        let m = &merge_route(&root, &leaf).unwrap().matches[0];
        assert_eq!(m.stat_prefix.as_deref(), Some("api"));
        let leaf = route(r#"{"match": [{"uri": {"prefix": "/api/v1"}, "statPrefix": "v1"}]}"#);
        let m = &merge_route(&root, &leaf).unwrap().matches[0];
        assert_eq!(m.stat_prefix.as_deref(), Some("v1"));
    }

    #[test]
    fn the_leaf_inherits_what_it_leaves_unset() {
        let root = route(r#"{"name": "root", "timeout": "3s", "retries": {"attempts": 5}}"#);
        let leaf = route(r#"{"name": "leaf", "retries": {"attempts": 1}}"#);
        let merged = merge_route(&root, &leaf).unwrap();
        assert_eq!(merged.name.as_deref(), Some("root-leaf"));
        assert_eq!(merged.timeout, root.timeout);
        assert_eq!(merged.retries.map(|r| r.attempts), Some(1));
    }

    #[test]
    fn mirrors_are_inherited_and_complete_in_their_own_namespace() {
        let yaml = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: root, namespace: front}\nspec:\n  hosts: [shop.example]\n  http:\n  - mirrors: [{destination: {host: audit}}]\n    delegate: {name: leaf, namespace: team}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: leaf, namespace: team}\nspec:\n  http:\n  - mirror: {host: shadow}\n    route: [{destination: {host: cart}}]\n  - route: [{destination: {host: cart}}]\n";
        let set = crate::policy::load_str("t.yaml".as_ref(), yaml).expect("valid");
        let root = set
            .virtual_services
            .iter()
            .find(|v| v.metadata.name == "root")
            .unwrap();
        let routes = expand(&set, root);
        assert_eq!(routes.len(), 2);
        assert!(routes.iter().all(|e| e.namespace == "team"));
        let own = &routes[0].route;
        assert_eq!(
            own.mirror.as_ref().unwrap().host,
            "shadow.team.svc.cluster.local"
        );
        let inherited = &routes[1].route;
        assert_eq!(
            inherited.mirrors[0].destination.host,
            "audit.front.svc.cluster.local"
        );
        assert!(routes[1].origin.starts_with("front/root#0>team/leaf#1"));
    }
}
