//! The host-indexed route table: exact hosts in one hash map, wildcard hosts (`*.example.com`)
//! in another keyed by suffix, and `*` last. A lookup costs one hash probe per label of the
//! authority, whatever the number of hosts.

use std::{borrow::Cow, sync::Arc};

use foldhash::HashMap;

use super::matcher::{RequestMatch, RequestView};

/// A weighted destination of a route: the cluster (host, subset, port) it sends to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    pub host: String,
    pub subset: Option<String>,
    pub port: Option<u16>,
    pub weight: u32,
    /// Header edits for requests sent to (and responses from) this destination.
    pub headers: Option<crate::policy::model::Headers>,
}

impl Destination {
    /// All of a service on `port`: Istio's default route to it.
    pub fn service(host: &str, port: u16) -> Self {
        Destination {
            host: host.to_string(),
            subset: None,
            port: Some(port),
            weight: 100,
            headers: None,
        }
    }

    /// A route's destination as written in namespace `ns`, its weight given. A lone destination
    /// (`only`) takes all traffic whatever its weight, as in Istio.
    pub fn of(
        d: &crate::policy::model::Destination,
        weight: Option<u32>,
        only: bool,
        ns: &str,
    ) -> Self {
        Destination {
            host: crate::policy::hosts::fqdn(&d.host, ns),
            subset: d.subset.clone(),
            port: d.port.as_ref().map(|p| p.number),
            weight: if only { 100 } else { weight.unwrap_or(0) },
            headers: None,
        }
    }
}

/// One compiled HTTP route of a VirtualService.
#[derive(Clone, Debug)]
pub struct HttpRoute {
    /// `namespace/name` of the VirtualService and the route's index (or name) inside it.
    pub origin: String,
    /// Any of these matches selects the route; empty means "every request".
    pub matches: Vec<RequestMatch>,
    pub destinations: Vec<Destination>,
    /// The route as written, for the actions compiled later in the pipeline (timeouts,
    /// retries, faults, mirrors, header edits).
    pub spec: Arc<crate::policy::model::HttpRoute>,
    /// The route's retry policy (or Istio's default), compiled once rather than per request.
    pub retry: crate::proxy::http::retry::RetryPolicy,
    /// The route's `corsPolicy`, compiled.
    pub cors: Option<Arc<crate::proxy::http::cors::CorsRules>>,
    /// The route's `rewrite.uriRegexRewrite`, compiled.
    pub regex_rewrite: Option<RegexRewrite>,
    /// Each match's `statPrefix`, in the order of `matches`; empty when none has one.
    pub stat_prefixes: Vec<Option<Arc<str>>>,
}

/// `rewrite.uriRegexRewrite`, as Envoy's `regex_rewrite`: every match in the path (not the
/// query) is replaced; `\1`-style references in the rewrite name capture groups (RE2's form).
#[derive(Clone, Debug)]
pub struct RegexRewrite {
    regex: regex::Regex,
    /// The rewrite in the `regex` crate's form (`${1}`, `$$`).
    replacement: String,
}

impl RegexRewrite {
    pub fn new(pattern: &str, rewrite: &str) -> Result<RegexRewrite, String> {
        let mut replacement = String::with_capacity(rewrite.len());
        let mut chars = rewrite.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(d) if d.is_ascii_digit() => {
                        replacement.push_str("${");
                        replacement.push(d);
                        replacement.push('}');
                    }
                    Some(other) => replacement.push(other),
                    None => replacement.push('\\'),
                },
                '$' => replacement.push_str("$$"),
                c => replacement.push(c),
            }
        }
        Ok(RegexRewrite {
            regex: crate::policy::re2::compile(pattern, false)?,
            replacement,
        })
    }

    pub fn apply(&self, path: &str) -> String {
        self.regex
            .replace_all(path, self.replacement.as_str())
            .into_owned()
    }
}

impl HttpRoute {
    pub fn matches(&self, r: &RequestView<'_>) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| m.matches(r))
    }

    /// The `statPrefix` of the first match that holds for `r`: each match is a route of its
    /// own in Envoy, with its own statistics.
    pub fn stat_prefix(&self, r: &RequestView<'_>) -> Option<&Arc<str>> {
        if self.stat_prefixes.is_empty() {
            return None;
        }
        (self.matches.iter().zip(&self.stat_prefixes))
            .find(|(m, _)| m.matches(r))
            .and_then(|(_, p)| p.as_ref())
    }
}

/// The ordered routes for one host.
#[derive(Clone, Debug, Default)]
pub struct HostRoutes {
    pub routes: Arc<[HttpRoute]>,
    /// The virtual host's name: the VirtualService host it was inserted for (`*.suffix`, `*`).
    pub name: Arc<str>,
}

impl HostRoutes {
    /// Routes for a host; [`RouteTable::insert`] names them after it.
    pub fn new(routes: impl Into<Arc<[HttpRoute]>>) -> HostRoutes {
        HostRoutes {
            routes: routes.into(),
            name: Arc::from(""),
        }
    }

    /// The first route whose match holds (Istio: first match wins).
    pub fn first_match(&self, r: &RequestView<'_>) -> Option<&HttpRoute> {
        self.routes.iter().find(|route| route.matches(r))
    }
}

#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    exact: HashMap<String, HostRoutes>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<String, HostRoutes>,
    any: Option<HostRoutes>,
}

/// The host part of an authority, lowercased, without the port.
pub fn host_of(authority: &str) -> Cow<'_, str> {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        authority
            .rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map_or(authority, |(h, _)| h)
    };
    let host = host.trim_end_matches('.');
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

impl RouteTable {
    /// Adds a host (fully qualified, or `*.suffix`, or `*`). The first VirtualService to claim a
    /// host keeps it, as Istio merges by creation order; returns false for a later duplicate.
    pub fn insert(&mut self, host: &str, mut routes: HostRoutes) -> bool {
        let host = host.to_ascii_lowercase();
        routes.name = Arc::from(host.as_str());
        let slot = if host == "*" {
            if self.any.is_some() {
                return false;
            }
            self.any = Some(routes);
            return true;
        } else if let Some(suffix) = host.strip_prefix("*.") {
            self.wildcard.entry(suffix.to_string())
        } else {
            self.exact.entry(host)
        };
        match slot {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(routes);
                true
            }
        }
    }

    /// The routes for an authority's host: exact, then the most specific wildcard, then `*`.
    pub fn lookup(&self, host: &str) -> Option<&HostRoutes> {
        self.exact(host)
            .or_else(|| self.wildcard(host))
            .or(self.any())
    }

    /// The routes of a VirtualService naming exactly `host`.
    pub fn exact(&self, host: &str) -> Option<&HostRoutes> {
        self.exact.get(host)
    }

    /// The routes of the most specific `*.suffix` VirtualService host covering `host`.
    pub fn wildcard(&self, host: &str) -> Option<&HostRoutes> {
        let mut rest = host;
        while !self.wildcard.is_empty()
            && let Some((_, suffix)) = rest.split_once('.')
        {
            if let Some(r) = self.wildcard.get(suffix) {
                return Some(r);
            }
            rest = suffix;
        }
        None
    }

    /// The routes of a VirtualService for every host (`*`).
    pub fn any(&self) -> Option<&HostRoutes> {
        self.any.as_ref()
    }

    pub fn hosts(&self) -> usize {
        self.exact.len() + self.wildcard.len() + usize::from(self.any.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(origin: &str) -> HostRoutes {
        HostRoutes::new(vec![HttpRoute {
            origin: origin.into(),
            matches: vec![],
            destinations: vec![],
            spec: Default::default(),
            retry: crate::proxy::http::retry::RetryPolicy::from_spec(None),
            cors: None,
            regex_rewrite: None,
            stat_prefixes: Vec::new(),
        }])
    }

    #[test]
    fn exact_then_wildcard_then_any() {
        let mut t = RouteTable::default();
        assert!(t.insert("reviews.default.svc.cluster.local", routes("exact")));
        assert!(t.insert("*.svc.cluster.local", routes("wild")));
        assert!(t.insert("*.default.svc.cluster.local", routes("narrow")));
        assert!(t.insert("*", routes("any")));
        assert!(!t.insert("reviews.default.svc.cluster.local", routes("dup")));
        let origin = |h: &str| t.lookup(h).map(|r| r.routes[0].origin.clone());
        assert_eq!(
            origin("reviews.default.svc.cluster.local").as_deref(),
            Some("exact")
        );
        assert_eq!(
            origin("ratings.default.svc.cluster.local").as_deref(),
            Some("narrow")
        );
        assert_eq!(
            origin("ratings.prod.svc.cluster.local").as_deref(),
            Some("wild")
        );
        assert_eq!(origin("example.com").as_deref(), Some("any"));
        // Each is named after the host it was inserted for: the virtual host of route stats.
        assert!(t.insert("Upper.Example.com", routes("upper")));
        let name = |h: &str| t.lookup(h).map(|r| r.name.to_string());
        assert_eq!(
            name("ratings.prod.svc.cluster.local").as_deref(),
            Some("*.svc.cluster.local")
        );
        assert_eq!(name("example.com").as_deref(), Some("*"));
        assert_eq!(
            name("upper.example.com").as_deref(),
            Some("upper.example.com")
        );
    }

    #[test]
    fn hosts_of_authorities() {
        assert_eq!(host_of("Reviews:9080"), "reviews");
        assert_eq!(host_of("reviews"), "reviews");
        assert_eq!(host_of("[::1]:80"), "::1");
        assert_eq!(host_of("example.com."), "example.com");
    }

    #[test]
    fn a_regex_rewrite_replaces_every_match_with_re2_group_references() {
        let r = RegexRewrite::new("^/service/([^/]+)(/.*)$", "\\2/instance/\\1").unwrap();
        assert_eq!(r.apply("/service/foo/v1/api"), "/v1/api/instance/foo");
        let r = RegexRewrite::new("one", "two").unwrap();
        assert_eq!(r.apply("/xxx/one/yyy/one/zzz"), "/xxx/two/yyy/two/zzz");
        let r = RegexRewrite::new("^/price$", "/cost$1").unwrap();
        assert_eq!(r.apply("/price"), "/cost$1", "a $ is literal");
        assert_eq!(r.apply("/other"), "/other");
    }
}
