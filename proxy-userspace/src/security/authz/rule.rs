//! Compiled authorization rules and how one is matched against a request, including Istio's
//! treatment of HTTP-only fields on plain TCP connections.

use super::{
    RequestContext,
    matchers::{IpBlock, PathPattern, StrPattern},
};
use crate::security::spiffe;

/// One attribute test with its values (ORed).
#[derive(Clone, Debug)]
pub enum Test {
    /// The peer's identity, without `spiffe://`.
    Principal(Vec<StrPattern>),
    Namespace(Vec<StrPattern>),
    /// `(namespace, service account)`, compared exactly.
    ServiceAccount(Vec<(String, String)>),
    /// `ipBlocks`, `remoteIpBlocks`, `source.ip` and `remote.ip`: meshd trusts no
    /// X-Forwarded-For, so the remote address is the peer's address.
    SourceIp(Vec<IpBlock>),
    DestinationIp(Vec<IpBlock>),
    DestinationPort(Vec<u16>),
    /// Patterns are matched ignoring ASCII case, against the Host/`:authority` as sent
    /// (with its port, if any: Istio users write `example.com` and `example.com:*`).
    Host(Vec<StrPattern>),
    Method(Vec<StrPattern>),
    Path(Vec<PathPattern>),
    /// Lower-case header name; several values of one header are joined with `,`.
    Header(String, Vec<StrPattern>),
    /// `requestPrincipals` and `request.auth.*`: meshd has no RequestAuthentication, so an
    /// HTTP request never carries a validated JWT and these attributes are always absent.
    RequestAuth,
    /// An attribute meshd cannot observe (`connection.sni`, `experimental.*`).
    Unsupported,
}

impl Test {
    /// Only an HTTP request has this attribute.
    fn http_only(&self) -> bool {
        matches!(
            self,
            Test::Host(_) | Test::Method(_) | Test::Path(_) | Test::Header(..) | Test::RequestAuth
        )
    }

    /// The attribute is known from the peer identity and the destination port alone.
    pub fn identity_only(&self) -> bool {
        matches!(
            self,
            Test::Principal(_)
                | Test::Namespace(_)
                | Test::ServiceAccount(_)
                | Test::DestinationPort(_)
        )
    }

    /// The attribute cannot be known for this request: HTTP-only on a TCP connection, or
    /// unsupported.
    fn unknowable(&self, ctx: &RequestContext) -> bool {
        matches!(self, Test::Unsupported) || (self.http_only() && ctx.http.is_none())
    }

    /// Whether any value matches; `None` when the attribute cannot be known for this request
    /// (an HTTP-only attribute on a TCP connection, or an unsupported one). An absent value
    /// (no peer identity, no such header) matches no value.
    fn any_matches(&self, ctx: &RequestContext) -> Option<bool> {
        if self.unknowable(ctx) {
            return None;
        }
        let principal = ctx.source_principal.as_deref();
        Some(match self {
            // The `cluster.local` alias is written out only when the principal itself matches
            // no value (and only under another trust domain).
            Test::Principal(v) => principal.is_some_and(|p| {
                let matches = |p: &str| v.iter().any(|m| m.matches(p));
                matches(spiffe::strip_scheme(p))
                    || spiffe::as_cluster_local(p).is_some_and(|a| matches(&a))
            }),
            Test::Namespace(v) => ctx
                .source_namespace
                .as_deref()
                .is_some_and(|ns| v.iter().any(|m| m.matches(ns))),
            Test::ServiceAccount(v) => principal
                .and_then(spiffe::namespace_and_account)
                .is_some_and(|(ns, sa)| v.iter().any(|(n, s)| n == ns && s == sa)),
            Test::SourceIp(v) => v.iter().any(|b| b.contains(ctx.source_ip)),
            Test::DestinationIp(v) => v.iter().any(|b| b.contains(ctx.destination_ip)),
            Test::DestinationPort(v) => v.contains(&ctx.destination_port),
            Test::Host(v) => {
                let host = ctx.http?.host;
                v.iter().any(|m| m.matches_ignore_case(host))
            }
            Test::Method(v) => {
                let method = ctx.http?.method;
                v.iter().any(|m| m.matches(method))
            }
            Test::Path(v) => {
                let path = super::matchers::normalize_path(ctx.http?.path);
                v.iter().any(|m| m.matches(&path))
            }
            Test::Header(name, v) => match ctx.http?.headers.header(name) {
                // `*` asks for presence only: an empty header is present.
                Some(value) => v
                    .iter()
                    .any(|m| *m == StrPattern::Presence || m.matches(&value)),
                None => false,
            },
            Test::RequestAuth => false,
            Test::Unsupported => return None,
        })
    }
}

/// A test that must match (`principals`) or must not (`notPrincipals`).
#[derive(Clone, Debug)]
pub struct Check {
    pub test: Test,
    pub negated: bool,
}

impl Check {
    fn eval(&self, ctx: &RequestContext) -> Option<bool> {
        self.test.any_matches(ctx).map(|m| m != self.negated)
    }
}

/// One element of `rules`: any `from` entry (each an AND of checks), and any `to` entry, and
/// every `when` condition. An empty list matches everything.
#[derive(Clone, Debug, Default)]
pub struct Rule {
    pub from: Vec<Vec<Check>>,
    pub to: Vec<Vec<Check>>,
    pub when: Vec<Check>,
}

impl Rule {
    fn checks(&self) -> impl Iterator<Item = &Check> {
        self.from.iter().chain(&self.to).flatten().chain(&self.when)
    }

    /// Some check reads an attribute only an HTTP request has.
    pub fn reads_http(&self) -> bool {
        self.checks().any(|c| c.test.http_only())
    }

    /// Every check is about the peer identity or the destination port.
    pub fn identity_only(&self) -> bool {
        self.checks().all(|c| c.test.identity_only())
    }

    /// Whether the rule matches the request.
    ///
    /// An attribute that cannot be known (HTTP-only on a TCP connection, or unsupported) is
    /// handled as Istio does when it builds the TCP filter:
    /// - `strict` (ALLOW policies): a rule testing such an attribute anywhere never matches,
    ///   so it cannot allow more than written.
    /// - otherwise (DENY and AUDIT policies): the check is dropped, so the rule matches more
    ///   broadly and the deny stays conservative. A `to` entry with only HTTP fields thus
    ///   matches every TCP connection.
    pub fn matches(&self, ctx: &RequestContext, strict: bool) -> bool {
        if strict && self.checks().any(|c| c.test.unknowable(ctx)) {
            return false;
        }
        let all = |cs: &[Check]| cs.iter().all(|c| c.eval(ctx).unwrap_or(true));
        let any = |es: &[Vec<Check>]| es.is_empty() || es.iter().any(|e| all(e));
        any(&self.from) && any(&self.to) && all(&self.when)
    }
}
