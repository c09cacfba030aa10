//! Request matchers compiled from VirtualService `match` blocks: string matchers (exact, prefix,
//! regex) and the conjunction of conditions one `HTTPMatchRequest` expresses.

use std::collections::BTreeMap;

use regex::Regex;

/// Istio's StringMatch. Regexes are anchored (RE2 full match), as in Envoy.
#[derive(Clone, Debug)]
pub enum StringMatcher {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl StringMatcher {
    /// Compiles a StringMatch's RE2 regex, anchored so it must match the whole value.
    pub fn regex(pattern: &str) -> Result<StringMatcher, String> {
        crate::policy::re2::compile(pattern, true).map(StringMatcher::Regex)
    }

    pub fn matches(&self, value: &str, ignore_case: bool) -> bool {
        match self {
            StringMatcher::Exact(s) if ignore_case => s.eq_ignore_ascii_case(value),
            StringMatcher::Exact(s) => s == value,
            StringMatcher::Prefix(p) if ignore_case => {
                value.len() >= p.len()
                    && value.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
            }
            StringMatcher::Prefix(p) => value.starts_with(p.as_str()),
            StringMatcher::Regex(r) => r.is_match(value),
        }
    }
}

/// What a header or query-parameter condition asks for.
#[derive(Clone, Debug)]
pub enum PresenceMatcher {
    /// `present: true` / `present: false`.
    Present(bool),
    Value(StringMatcher),
}

/// The request facts matching needs.
pub struct RequestView<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub authority: &'a str,
    pub scheme: &'a str,
    pub port: u16,
    /// A header's value as Envoy's matchers read it: a repeated header's values joined with
    /// commas, bytes beyond ASCII kept.
    pub header: &'a dyn Fn(&str) -> Option<std::borrow::Cow<'a, str>>,
    pub source_labels: &'a BTreeMap<String, String>,
    /// The client workload's namespace, when meshd knows the client.
    pub source_namespace: Option<&'a str>,
}

/// One compiled `HTTPMatchRequest`: every condition must hold.
#[derive(Clone, Debug, Default)]
pub struct RequestMatch {
    pub uri: Option<StringMatcher>,
    pub scheme: Option<StringMatcher>,
    pub method: Option<StringMatcher>,
    pub authority: Option<StringMatcher>,
    pub headers: Vec<(String, PresenceMatcher)>,
    pub without_headers: Vec<(String, PresenceMatcher)>,
    pub query_params: Vec<(String, PresenceMatcher)>,
    pub port: Option<u16>,
    pub source_labels: BTreeMap<String, String>,
    pub source_namespace: Option<String>,
    pub ignore_uri_case: bool,
}

fn presence_holds(m: &PresenceMatcher, value: Option<&str>) -> bool {
    match (m, value) {
        (PresenceMatcher::Present(want), v) => v.is_some() == *want,
        (PresenceMatcher::Value(s), Some(v)) => s.matches(v, false),
        (PresenceMatcher::Value(_), None) => false,
    }
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

impl RequestMatch {
    pub fn matches(&self, r: &RequestView<'_>) -> bool {
        let opt = |m: &Option<StringMatcher>, v: &str, ci: bool| {
            m.as_ref().is_none_or(|m| m.matches(v, ci))
        };
        opt(&self.uri, r.path, self.ignore_uri_case)
            && opt(&self.scheme, r.scheme, false)
            && opt(&self.method, r.method, false)
            && opt(&self.authority, r.authority, false)
            && self.port.is_none_or(|p| p == r.port)
            && self
                .headers
                .iter()
                .all(|(n, m)| presence_holds(m, (r.header)(n).as_deref()))
            // As Istio configures Envoy's inverted matchers: a missing header is matched as
            // empty, so `regex: ".*"` excludes requests without the header too.
            && !self.without_headers.iter().any(|(n, m)| {
                let value = (r.header)(n);
                let value = value.as_deref();
                match m {
                    PresenceMatcher::Value(_) => presence_holds(m, value.or(Some(""))),
                    PresenceMatcher::Present(_) => presence_holds(m, value),
                }
            })
            && self
                .query_params
                .iter()
                .all(|(n, m)| presence_holds(m, query_param(r.query, n)))
            && self
                .source_labels
                .iter()
                .all(|(k, v)| r.source_labels.get(k) == Some(v))
            && self
                .source_namespace
                .as_deref()
                .is_none_or(|ns| r.source_namespace == Some(ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(
        path: &'a str,
        headers: &'a dyn Fn(&str) -> Option<std::borrow::Cow<'a, str>>,
        labels: &'a BTreeMap<String, String>,
    ) -> RequestView<'a> {
        RequestView {
            method: "GET",
            path,
            query: Some("a=1&flag"),
            authority: "reviews:9080",
            scheme: "http",
            port: 9080,
            header: headers,
            source_labels: labels,
            source_namespace: Some("default"),
        }
    }

    #[test]
    fn string_matchers() {
        assert!(StringMatcher::Exact("/a".into()).matches("/a", false));
        assert!(!StringMatcher::Exact("/a".into()).matches("/A", false));
        assert!(StringMatcher::Exact("/a".into()).matches("/A", true));
        assert!(StringMatcher::Prefix("/api".into()).matches("/api/v1", false));
        assert!(StringMatcher::Prefix("/API".into()).matches("/api/v1", true));
        let r = StringMatcher::regex("/v[0-9]+").unwrap();
        assert!(r.matches("/v12", false));
        assert!(!r.matches("/v12/x", false), "regexes match the whole value");
    }

    #[test]
    fn conjunction_of_conditions() {
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        let hdr = |n: &str| (n == "x-user-type").then_some("premium".into());
        let mut m = RequestMatch {
            uri: Some(StringMatcher::Prefix("/".into())),
            headers: vec![(
                "x-user-type".into(),
                PresenceMatcher::Value(StringMatcher::Exact("premium".into())),
            )],
            query_params: vec![("flag".into(), PresenceMatcher::Present(true))],
            port: Some(9080),
            source_labels: labels.clone(),
            ..Default::default()
        };
        assert!(m.matches(&view("/x", &hdr, &labels)));
        m.without_headers = vec![("x-user-type".into(), PresenceMatcher::Present(true))];
        assert!(!m.matches(&view("/x", &hdr, &labels)));
        m.without_headers.clear();
        m.port = Some(80);
        assert!(!m.matches(&view("/x", &hdr, &labels)));
        m.port = None;
        m.source_namespace = Some("other".into());
        assert!(!m.matches(&view("/x", &hdr, &labels)), "another namespace");
        m.source_namespace = Some("default".into());
        assert!(m.matches(&view("/x", &hdr, &labels)));
        let unknown = RequestView {
            source_namespace: None,
            ..view("/x", &hdr, &labels)
        };
        assert!(!m.matches(&unknown), "an unknown client is in no namespace");
        m.source_namespace = None;
        let other: BTreeMap<String, String> = BTreeMap::new();
        assert!(
            !m.matches(&view("/x", &hdr, &other)),
            "sourceLabels must all match"
        );
    }

    #[test]
    fn without_headers_match_a_missing_header_as_empty() {
        let labels = BTreeMap::new();
        let none = |_: &str| None;
        let exclude = |m: StringMatcher| RequestMatch {
            without_headers: vec![("x-canary".into(), PresenceMatcher::Value(m))],
            ..Default::default()
        };
        let any = exclude(StringMatcher::regex(".*").unwrap());
        assert!(!any.matches(&view("/", &none, &labels)), "\"\" matches .*");
        let set = exclude(StringMatcher::Exact("1".into()));
        assert!(set.matches(&view("/", &none, &labels)), "\"\" is not 1");
        let present = RequestMatch {
            without_headers: vec![("x-canary".into(), PresenceMatcher::Present(true))],
            ..Default::default()
        };
        assert!(
            present.matches(&view("/", &none, &labels)),
            "absent: not excluded"
        );
    }
}
