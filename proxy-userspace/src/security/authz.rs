//! AuthorizationPolicy evaluation for inbound connections (L4) and requests (L7).
//!
//! Semantics, as in Istio:
//! - Selection: a policy in the root namespace without a selector applies to every workload;
//!   one in namespace N without a selector to every workload in N; one with
//!   `selector.matchLabels` to the workloads of its namespace carrying all those labels (in the
//!   root namespace: to such workloads in every namespace, as Istio does).
//! - Order: CUSTOM policies, whose external provider meshd cannot call, deny everything to the
//!   workloads they select, as istiod's deny-all for a provider it cannot use (an error names
//!   them). Any matching DENY policy denies; then, if ALLOW policies apply to the
//!   workload and none matches, the request is denied; otherwise it is allowed. AUDIT policies
//!   never change the decision; the matching ones are reported in [`Decision::audited`].
//! - A policy annotated `istio.io/dry-run: "true"` is evaluated but not enforced: the dry-run
//!   ALLOW and DENY policies decide apart, as Envoy's shadow rules do, and their outcome is
//!   reported in [`Decision::dry_run`] only.
//! - A policy matches when any of its rules does; `rules: []` (also `spec: {}`) matches
//!   nothing, so an empty ALLOW policy denies everything and an empty DENY policy does nothing.
//!   A rule `{}` matches everything.
//! - In a rule, any `from` entry and any `to` entry and every `when` condition must match; in a
//!   `source` or `operation` every field must match; in a field any value may match.
//! - Strings match exactly, by prefix (`abc*`), by suffix (`*abc`) or by presence (`*`);
//!   principals are written without `spiffe://`; hosts ignore case.
//! - TCP connections (no [`HttpAttrs`]): a rule testing an HTTP-only attribute (`hosts`,
//!   `methods`, `paths`, their `not` forms, `requestPrincipals`, `request.headers[..]`,
//!   `request.auth.*`) never matches in an ALLOW policy, and in DENY and AUDIT policies those
//!   tests are ignored, so the rule matches more. `connection.sni` and `experimental.*`
//!   conditions, which meshd cannot see, are treated this way on every request.
//! - Policies are considered in `namespace/name` order, so the deciding policy named in a
//!   [`Decision`] does not depend on file order.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr},
};

use serde::Serialize;

use super::{SecurityError, Workload, spiffe};
use crate::policy::{
    PolicySet,
    model::{AuthorizationPolicy, ServiceEntry},
};

mod compile;
pub mod matchers;
mod rule;
#[cfg(test)]
mod tests;

/// Header values by name; `name` is given in lower case.
pub trait HeaderLookup {
    /// The header's value; several values of one header joined with `,`.
    fn header(&self, name: &str) -> Option<Cow<'_, str>>;
}

impl HeaderLookup for BTreeMap<String, String> {
    fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        self.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| Cow::Borrowed(v.as_str()))
    }
}

impl HeaderLookup for hyper::HeaderMap {
    fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        let mut values = self.get_all(name).iter();
        let first = String::from_utf8_lossy(values.next()?.as_bytes());
        Some(values.fold(first, |acc, v| {
            Cow::Owned(format!("{acc},{}", String::from_utf8_lossy(v.as_bytes())))
        }))
    }
}

/// What an HTTP request adds to a connection.
#[derive(Clone, Copy)]
pub struct HttpAttrs<'a> {
    /// The Host header or `:authority`, as sent.
    pub host: &'a str,
    pub method: &'a str,
    /// The request target in origin form (`/a/b?q`); the query is not matched and `.`/`..`
    /// segments are resolved before matching.
    pub path: &'a str,
    pub headers: &'a dyn HeaderLookup,
}

impl<'a> HttpAttrs<'a> {
    /// A request's attributes: the Host header (else the URI's authority), method, and path
    /// with query.
    pub fn of<B>(req: &'a hyper::Request<B>) -> HttpAttrs<'a> {
        HttpAttrs::of_head(req.method(), req.uri(), req.headers())
    }

    /// The same, from a request head held apart from its body.
    pub fn of_head(
        method: &'a hyper::Method,
        uri: &'a hyper::Uri,
        headers: &'a hyper::HeaderMap,
    ) -> HttpAttrs<'a> {
        HttpAttrs {
            host: headers
                .get(hyper::header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| uri.authority().map(|a| a.as_str()))
                .unwrap_or(""),
            method: method.as_str(),
            path: uri.path_and_query().map_or("/", |p| p.as_str()),
            headers,
        }
    }
}

impl std::fmt::Debug for HttpAttrs<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpAttrs")
            .field("host", &self.host)
            .field("method", &self.method)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// One inbound connection, or one request on it when `http` is set.
#[derive(Clone, Debug)]
pub struct RequestContext<'a> {
    /// The peer's mTLS identity, `spiffe://cluster.local/ns/x/sa/y`; `None` for plaintext.
    pub source_principal: Option<String>,
    /// The peer's namespace; only an mTLS peer has one (see [`RequestContext::new`]).
    pub source_namespace: Option<String>,
    pub source_ip: IpAddr,
    pub destination_ip: IpAddr,
    pub destination_port: u16,
    /// `None`: a TCP connection, evaluated with Istio's L4 rules.
    pub http: Option<&'a HttpAttrs<'a>>,
}

impl<'a> RequestContext<'a> {
    /// A TCP connection; the source namespace is read from the principal.
    pub fn new(
        source_principal: Option<String>,
        source_ip: IpAddr,
        destination_ip: IpAddr,
        destination_port: u16,
    ) -> RequestContext<'a> {
        RequestContext {
            source_namespace: (source_principal.as_deref())
                .and_then(spiffe::namespace)
                .map(str::to_string),
            source_principal,
            source_ip,
            destination_ip,
            destination_port,
            http: None,
        }
    }

    /// The same connection carrying an HTTP request.
    pub fn with_http(self, http: &'a HttpAttrs<'a>) -> RequestContext<'a> {
        RequestContext {
            http: Some(http),
            ..self
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    Allow,
    Deny,
    Audit,
}

impl Action {
    /// As written in a policy.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
        }
    }
}

/// The outcome for one connection or request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub allowed: bool,
    /// `namespace/name` of the policy that decided: the matching DENY policy, or the matching
    /// ALLOW policy; `None` when no policy decided.
    pub policy: Option<String>,
    /// For logs: `denied by DENY policy foo/bar`, `no ALLOW policy matched`, ...
    pub reason: String,
    /// `namespace/name` of every AUDIT policy that matched.
    pub audited: Vec<String>,
    /// What the dry-run policies that apply would have decided, one entry per action (ALLOW,
    /// DENY) that has such policies.
    pub dry_run: Vec<DryRun>,
}

/// The outcome of a workload's dry-run policies of one action: for DENY, denied when one
/// matches; for ALLOW, allowed when one matches and denied otherwise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DryRun {
    pub action: Action,
    pub allowed: bool,
    /// `namespace/name` of the dry-run policy that matched.
    pub policy: Option<String>,
}

impl std::fmt::Display for DryRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let action = self.action.as_str();
        let verdict = if self.allowed { "allow" } else { "deny" };
        match &self.policy {
            Some(p) => write!(f, "dry-run {action} policy {p} would {verdict}"),
            None => write!(f, "no dry-run {action} policy matched: would {verdict}"),
        }
    }
}

#[derive(Clone, Debug)]
struct Policy {
    id: String,
    action: Action,
    /// A CUSTOM policy, held as a DENY of everything (its provider cannot be called): its
    /// denials say so.
    custom: bool,
    /// Annotated `istio.io/dry-run: "true"`: evaluated for [`Decision::dry_run`] only.
    dry_run: bool,
    selector: Option<BTreeMap<String, String>>,
    /// With `targetRefs`: the workloads of the services referenced, in place of a selector.
    targets: Option<Vec<Target>>,
    rules: Vec<rule::Rule>,
}

/// The workloads of one service a policy's `targetRefs` names: those of `namespace` carrying
/// all of `labels`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Target {
    namespace: String,
    labels: BTreeMap<String, String>,
}

impl Policy {
    /// Whether the policy applies to the workload (its namespace is already in scope).
    fn selects(&self, w: &Workload) -> bool {
        let labels_match = crate::policy::model::labels_match;
        match &self.targets {
            Some(targets) => (targets.iter())
                .any(|t| t.namespace == w.namespace && labels_match(&t.labels, w.labels)),
            None => (self.selector.as_ref()).is_none_or(|s| labels_match(s, w.labels)),
        }
    }
}

impl Policy {
    fn matches(&self, ctx: &RequestContext) -> bool {
        let strict = self.action == Action::Allow;
        self.rules.iter().any(|r| r.matches(ctx, strict))
    }
}

/// Adds a dry-run policy's verdict to the outcome of its action: the first matching DENY
/// policy denies, the first matching ALLOW policy allows, and ALLOW policies of which none
/// matches deny.
fn shadow(out: &mut Vec<DryRun>, p: &Policy, ctx: &RequestContext) {
    if p.action == Action::Audit {
        return;
    }
    let i = match out.iter().position(|d| d.action == p.action) {
        Some(i) => i,
        None => {
            out.push(DryRun {
                action: p.action,
                allowed: p.action == Action::Deny,
                policy: None,
            });
            out.len() - 1
        }
    };
    if out[i].policy.is_none() && p.matches(ctx) {
        out[i].allowed = p.action == Action::Allow;
        out[i].policy = Some(p.id.clone());
    }
}

/// Every supported AuthorizationPolicy, indexed by the namespace it applies to.
#[derive(Clone, Debug, Default)]
pub struct Authorizer {
    /// Sorted by `namespace/name`.
    policies: Vec<Policy>,
    /// Indices of root-namespace policies, which may apply in every namespace.
    mesh: Vec<usize>,
    by_namespace: HashMap<String, Vec<usize>>,
}

impl Authorizer {
    /// Compiles the policies; `root_namespace` is the mesh's (see
    /// [`DEFAULT_ROOT_NAMESPACE`](super::DEFAULT_ROOT_NAMESPACE)). The errors name each policy
    /// or rule left out, or applied differently from what it says.
    pub fn compile<'p>(
        policies: impl IntoIterator<Item = &'p AuthorizationPolicy>,
        root_namespace: &str,
    ) -> (Authorizer, Vec<SecurityError>) {
        Authorizer::compile_with(policies, &[], root_namespace)
    }

    /// [`Authorizer::compile`], with the ServiceEntries that policies' `targetRefs` name.
    pub fn compile_with<'p>(
        policies: impl IntoIterator<Item = &'p AuthorizationPolicy>,
        services: &[&ServiceEntry],
        root_namespace: &str,
    ) -> (Authorizer, Vec<SecurityError>) {
        let mut errors = Vec::new();
        let mut compiled: Vec<(String, Policy)> = policies
            .into_iter()
            .filter_map(|p| {
                let c = compile::policy(p, services, &mut errors)?;
                Some((p.metadata.namespace.clone(), c))
            })
            .collect();
        compiled.sort_by(|a, b| a.1.id.cmp(&b.1.id));
        let mut out = Authorizer::default();
        for (i, (ns, p)) in compiled.into_iter().enumerate() {
            if ns == root_namespace {
                out.mesh.push(i);
            } else {
                out.by_namespace.entry(ns).or_default().push(i);
            }
            out.policies.push(p);
        }
        (out, errors)
    }

    /// [`Authorizer::compile`] over a loaded policy set.
    pub fn from_set(set: &PolicySet, root_namespace: &str) -> (Authorizer, Vec<SecurityError>) {
        let policies = set.authorization_policies.iter().map(|p| &p.resource);
        let services: Vec<&ServiceEntry> =
            (set.service_entries.iter()).map(|s| &s.resource).collect();
        Authorizer::compile_with(policies, &services, root_namespace)
    }

    /// The policies that apply to the workload, in `namespace/name` order.
    fn selecting<'s>(&'s self, w: &Workload) -> impl Iterator<Item = &'s Policy> {
        let local = self.by_namespace.get(w.namespace).map_or(&[][..], |v| v);
        let mut idx: Vec<usize> = self.mesh.iter().chain(local).copied().collect();
        idx.sort_unstable();
        idx.into_iter()
            .map(|i| &self.policies[i])
            .filter(move |p| p.selects(w))
    }

    /// `namespace/name` of every policy that applies to the workload.
    pub fn selected(&self, w: &Workload) -> Vec<String> {
        self.selecting(w).map(|p| p.id.clone()).collect()
    }

    pub fn evaluate(&self, w: &Workload, ctx: &RequestContext) -> Decision {
        let (mut deny, mut allow, mut any_allow) = (None, None, false);
        let mut audited = Vec::new();
        let mut dry_run: Vec<DryRun> = Vec::new();
        for p in self.selecting(w) {
            if p.dry_run {
                shadow(&mut dry_run, p, ctx);
                continue;
            }
            match p.action {
                Action::Deny if deny.is_none() && p.matches(ctx) => deny = Some(p),
                Action::Allow => {
                    any_allow = true;
                    if allow.is_none() && p.matches(ctx) {
                        allow = Some(&p.id);
                    }
                }
                Action::Audit if p.matches(ctx) => audited.push(p.id.clone()),
                _ => {}
            }
        }
        let (allowed, policy, reason) = match (deny, allow) {
            (Some(p), _) if p.custom => (
                false,
                Some(&p.id),
                format!(
                    "denied by CUSTOM policy {} (meshd cannot call its provider, and fails closed)",
                    p.id
                ),
            ),
            (Some(p), _) => (
                false,
                Some(&p.id),
                format!("denied by DENY policy {}", p.id),
            ),
            (None, Some(id)) => (true, Some(id), format!("allowed by ALLOW policy {id}")),
            (None, None) if any_allow => (false, None, "no ALLOW policy matched".to_string()),
            (None, None) => (true, None, "no ALLOW policy applies".to_string()),
        };
        Decision {
            allowed,
            policy: policy.cloned(),
            reason,
            audited,
            dry_run,
        }
    }

    /// The decision for every connection and request from `source_principal` to the workload
    /// on `destination_port`, when it is the same whatever the addresses and HTTP attributes;
    /// `None` otherwise. Meant for deciding in the kernel before any byte is read.
    ///
    /// It is `Some` exactly when every ALLOW and DENY policy that applies to the workload tests
    /// only `principals`, `namespaces`, `serviceAccounts` (and their `not` forms), `ports` /
    /// `notPorts`, and the `source.principal`, `source.namespace`, `source.serviceAccount` and
    /// `destination.port` conditions (AUDIT policies are not looked at, they decide nothing).
    /// Such rules ignore HTTP attributes, so TCP and HTTP evaluate alike. The namespace is the
    /// one in the principal, as for a real connection; `None` principal means plaintext.
    pub fn l4_identity_verdict(
        &self,
        w: &Workload,
        source_principal: Option<&str>,
        destination_port: u16,
    ) -> Option<bool> {
        let identity_only = self
            .selecting(w)
            .filter(|p| p.action != Action::Audit && !p.dry_run)
            .all(|p| p.rules.iter().all(rule::Rule::identity_only));
        if !identity_only {
            return None;
        }
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let principal = source_principal.map(str::to_string);
        let ctx = RequestContext::new(principal, any, any, destination_port);
        Some(self.evaluate(w, &ctx).allowed)
    }

    /// Whether some policy that applies to the workload reads an HTTP attribute (`hosts`,
    /// `methods`, `paths`, `request.headers`, ...). When none does, every request on a
    /// connection gets the connection's decision, so one check per connection is enough.
    pub fn reads_http(&self, w: &Workload) -> bool {
        self.selecting(w)
            .any(|p| p.rules.iter().any(rule::Rule::reads_http))
    }

    /// Whether every connection and request from `source_principal` to the workload on
    /// `destination_port` is denied, whatever the addresses and HTTP attributes: a DENY policy
    /// has a rule that tests only identity and port and matches, or
    /// [`Authorizer::l4_identity_verdict`] denies. `false` means "not decidable here, or
    /// allowed"; meshd then decides per connection in userspace.
    pub fn identity_denied(
        &self,
        w: &Workload,
        source_principal: Option<&str>,
        destination_port: u16,
    ) -> bool {
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let principal = source_principal.map(str::to_string);
        let ctx = RequestContext::new(principal, any, any, destination_port);
        let by_deny = self
            .selecting(w)
            .filter(|p| p.action == Action::Deny && !p.dry_run)
            .flat_map(|p| &p.rules)
            .any(|r| r.identity_only() && r.matches(&ctx, false));
        by_deny || self.l4_identity_verdict(w, source_principal, destination_port) == Some(false)
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }
}
