//! Turning AuthorizationPolicy specs into compiled rules, reporting what cannot be applied.

use std::collections::BTreeMap;

use super::{
    Action, Policy, Target,
    matchers::{IpBlock, PathPattern, StrPattern},
    rule::{Check, Rule, Test},
};
use crate::{
    policy::model::{
        AuthorizationPolicy, Condition, Operation, SERVICE_SELECTOR, ServiceEntry, Source,
    },
    security::{SecurityError, selector_labels},
};

/// The compiled policy, or `None` (with the reason in `errors`) for an unknown action. A
/// CUSTOM policy, whose provider meshd cannot call, compiles to a DENY of everything, as istiod
/// generates a deny-all when it cannot use a CUSTOM policy's provider: it fails closed.
/// Validation refuses the values Istio's admission refuses, so a loaded policy compiles whole;
/// should a rule still have an unparsable value, it is left out and reported: an ALLOW policy
/// then allows less, a DENY policy denies less.
pub(super) fn policy(
    p: &AuthorizationPolicy,
    services: &[&ServiceEntry],
    errors: &mut Vec<SecurityError>,
) -> Option<Policy> {
    let id = p.id();
    let custom = p.spec.action.as_deref() == Some("CUSTOM");
    let action = match p.spec.action.as_deref().unwrap_or("ALLOW") {
        "ALLOW" => Action::Allow,
        "DENY" | "CUSTOM" => Action::Deny,
        "AUDIT" => Action::Audit,
        other => {
            errors.push(SecurityError::UnknownAction {
                policy: id,
                action: other.to_string(),
            });
            return None;
        }
    };
    if custom {
        errors.push(SecurityError::CustomUnsupported { policy: id.clone() });
    }
    let everything = [crate::policy::model::Rule::default()];
    let spec_rules = if custom {
        &everything[..]
    } else {
        &p.spec.rules[..]
    };
    let mut rules = Vec::with_capacity(spec_rules.len());
    for (index, r) in spec_rules.iter().enumerate() {
        let mut b = Builder {
            policy: &id,
            namespace: &p.metadata.namespace,
            index,
            errors,
        };
        match b.rule(r) {
            Ok(rule) => rules.push(rule),
            Err(e) => errors.push(e),
        }
    }
    Some(Policy {
        selector: selector_labels(&p.spec.selector).cloned(),
        targets: targets(p, &id, services, errors),
        dry_run: dry_run(p, &id, errors),
        id,
        action,
        custom,
        rules,
    })
}

/// The workloads a policy's `targetRefs` apply it to, `None` without references. meshd has
/// each node's workloads' traffic, as a waypoint has its services': a `Service` (which meshd
/// renders as the ServiceEntry of that name) or `ServiceEntry` of the policy's namespace
/// stands for the workloads behind it, by its `workloadSelector`, or else by its endpoints'
/// labels (without meshd's own `meshd.io/` ones). A `Gateway` or `GatewayClass` selects none.
fn targets(
    p: &AuthorizationPolicy,
    id: &str,
    services: &[&ServiceEntry],
    errors: &mut Vec<SecurityError>,
) -> Option<Vec<Target>> {
    let mut refs = p.spec.targets().peekable();
    refs.peek()?;
    let namespace = &p.metadata.namespace;
    let mut out = Vec::new();
    for r in refs {
        let mut refuse = |reason| {
            errors.push(SecurityError::Target {
                policy: id.to_string(),
                kind: r.kind.clone(),
                name: r.name.clone(),
                reason,
            })
        };
        if !matches!(r.kind.as_str(), "Service" | "ServiceEntry") {
            refuse("meshd is not a gateway");
            continue;
        }
        if r.namespace.as_ref().is_some_and(|n| n != namespace) {
            refuse("a reference to another namespace (Istio allows none)");
            continue;
        }
        let found = services
            .iter()
            .find(|s| s.metadata.name == r.name && s.metadata.namespace == *namespace);
        let Some(service) = found else {
            refuse("no ServiceEntry (or Service) of that name in the policy's namespace");
            continue;
        };
        let before = out.len();
        let target = |labels: &BTreeMap<String, String>| Target {
            namespace: namespace.clone(),
            labels: (labels.iter())
                .filter(|(k, _)| !k.starts_with("meshd.io/"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        // A Kubernetes Service's selector (which discovery records), else the ServiceEntry's
        // workloadSelector, else its endpoints' labels.
        let service_selector = (service.metadata.annotations.get(SERVICE_SELECTOR))
            .and_then(|s| serde_json::from_str::<BTreeMap<String, String>>(s).ok());
        match (service_selector, &service.spec.workload_selector) {
            (Some(selector), _) => out.push(target(&selector)),
            (None, Some(selector)) => out.push(target(&selector.labels)),
            (None, None) => out.extend(service.spec.endpoints.iter().map(|e| target(&e.labels))),
        }
        // A target without labels would select every workload of the namespace.
        let mut kept = out.split_off(before);
        kept.retain(|t| !t.labels.is_empty());
        if kept.is_empty() {
            refuse("it has no selector and no endpoint with labels");
        }
        out.extend(kept);
    }
    Some(out)
}

/// The annotation that makes a policy dry-run.
const DRY_RUN: &str = "istio.io/dry-run";

/// Whether the policy is annotated dry-run. The value is read as Go's `strconv.ParseBool`
/// reads it, as Istio does; any other value leaves the policy enforced, and is reported.
fn dry_run(p: &AuthorizationPolicy, id: &str, errors: &mut Vec<SecurityError>) -> bool {
    let Some(value) = p.metadata.annotations.get(DRY_RUN) else {
        return false;
    };
    match value.as_str() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => true,
        "0" | "f" | "F" | "false" | "FALSE" | "False" => false,
        _ => {
            errors.push(SecurityError::InvalidDryRun {
                policy: id.to_string(),
                value: value.clone(),
            });
            false
        }
    }
}

type Result<T> = std::result::Result<T, SecurityError>;

struct Builder<'a> {
    policy: &'a str,
    /// The policy's namespace, that of a service account named without one.
    namespace: &'a str,
    index: usize,
    errors: &'a mut Vec<SecurityError>,
}

fn strs(v: &[String]) -> Vec<StrPattern> {
    v.iter().map(|s| StrPattern::parse(s)).collect()
}

/// Namespaces, whose `*` istiod lets stand anywhere.
fn namespace_patterns(v: &[String]) -> Vec<StrPattern> {
    v.iter().map(|s| StrPattern::parse_namespace(s)).collect()
}

/// A check for the positive list and one for the negated list, each only when non-empty.
fn pair(
    out: &mut Vec<Check>,
    (name, values): (&str, &[String]),
    (not_name, not_values): (&str, &[String]),
    mut make: impl FnMut(&str, &[String]) -> Result<Test>,
) -> Result<()> {
    for (name, values, negated) in [(name, values, false), (not_name, not_values, true)] {
        if !values.is_empty() {
            let test = make(name, values)?;
            out.push(Check { test, negated });
        }
    }
    Ok(())
}

impl Builder<'_> {
    fn invalid(&self, field: &str, value: &str, expected: &'static str) -> SecurityError {
        SecurityError::InvalidValue {
            policy: self.policy.to_string(),
            rule: self.index,
            field: field.to_string(),
            value: value.to_string(),
            expected,
        }
    }

    fn each<T>(
        &self,
        field: &str,
        values: &[String],
        expected: &'static str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Vec<T>> {
        values
            .iter()
            .map(|v| parse(v).ok_or_else(|| self.invalid(field, v, expected)))
            .collect()
    }

    fn ip_blocks(&self, field: &str, v: &[String]) -> Result<Vec<IpBlock>> {
        self.each(field, v, "an IP address or CIDR block", IpBlock::parse)
    }

    fn ports(&self, field: &str, v: &[String]) -> Result<Test> {
        let port = |s: &str| s.parse::<u16>().ok().filter(|p| *p != 0);
        let ports = self.each(field, v, "a port number (1-65535)", port)?;
        Ok(Test::DestinationPort(ports))
    }

    /// `NAMESPACE/NAME`, or `NAME` in the policy's namespace (Istio's `serviceAccountRegex`).
    fn accounts(&self, field: &str, v: &[String]) -> Result<Test> {
        let account = |s: &str| match s.split_once('/') {
            Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains('/') => {
                Some((ns.to_string(), sa.to_string()))
            }
            None if !s.is_empty() => Some((self.namespace.to_string(), s.to_string())),
            _ => None,
        };
        let accounts = self.each(field, v, "NAME or NAMESPACE/NAME", account)?;
        Ok(Test::ServiceAccount(accounts))
    }

    fn rule(&mut self, r: &crate::policy::model::Rule) -> Result<Rule> {
        let from = (r.from.iter().enumerate())
            .map(|(j, f)| self.source(&format!("from[{j}].source"), &f.source))
            .collect::<Result<_>>()?;
        let to = (r.to.iter().enumerate())
            .map(|(j, t)| self.operation(&format!("to[{j}].operation"), &t.operation))
            .collect::<Result<_>>()?;
        let mut when = Vec::new();
        for (j, c) in r.when.iter().enumerate() {
            self.condition(&format!("when[{j}]"), c, &mut when)?;
        }
        Ok(Rule { from, to, when })
    }

    fn source(&self, at: &str, s: &Source) -> Result<Vec<Check>> {
        let f = |name: &str| format!("{at}.{name}");
        let mut c = Vec::new();
        let principals = |_: &str, v: &[String]| Ok(Test::Principal(strs(v)));
        pair(
            &mut c,
            ("", &s.principals),
            ("", &s.not_principals),
            principals,
        )?;
        let jwt = |_: &str, _: &[String]| Ok(Test::RequestAuth);
        pair(
            &mut c,
            ("", &s.request_principals),
            ("", &s.not_request_principals),
            jwt,
        )?;
        let namespaces = |_: &str, v: &[String]| Ok(Test::Namespace(namespace_patterns(v)));
        pair(
            &mut c,
            ("", &s.namespaces),
            ("", &s.not_namespaces),
            namespaces,
        )?;
        let sa = ("serviceAccounts", &s.service_accounts[..]);
        let not_sa = ("notServiceAccounts", &s.not_service_accounts[..]);
        pair(&mut c, sa, not_sa, |n, v| self.accounts(&f(n), v))?;
        let ips = ("ipBlocks", &s.ip_blocks[..]);
        let not_ips = ("notIpBlocks", &s.not_ip_blocks[..]);
        pair(&mut c, ips, not_ips, |n, v| {
            self.ip_blocks(&f(n), v).map(Test::SourceIp)
        })?;
        let remote = ("remoteIpBlocks", &s.remote_ip_blocks[..]);
        let not_remote = ("notRemoteIpBlocks", &s.not_remote_ip_blocks[..]);
        pair(&mut c, remote, not_remote, |n, v| {
            self.ip_blocks(&f(n), v).map(Test::SourceIp)
        })?;
        Ok(c)
    }

    fn operation(&self, at: &str, o: &Operation) -> Result<Vec<Check>> {
        let f = |name: &str| format!("{at}.{name}");
        let mut c = Vec::new();
        let hosts = |_: &str, v: &[String]| Ok(Test::Host(strs(v)));
        pair(&mut c, ("", &o.hosts), ("", &o.not_hosts), hosts)?;
        let ports = ("ports", &o.ports[..]);
        let not_ports = ("notPorts", &o.not_ports[..]);
        pair(&mut c, ports, not_ports, |n, v| self.ports(&f(n), v))?;
        let methods = |_: &str, v: &[String]| Ok(Test::Method(strs(v)));
        pair(&mut c, ("", &o.methods), ("", &o.not_methods), methods)?;
        let paths = |n: &str, v: &[String]| {
            let t = "a path, or a template using {*} and a final {**}";
            self.each(&f(n), v, t, PathPattern::parse).map(Test::Path)
        };
        pair(
            &mut c,
            ("paths", &o.paths),
            ("notPaths", &o.not_paths),
            paths,
        )?;
        Ok(c)
    }

    /// `values` and `notValues` of one condition both apply (ANDed).
    fn condition(&mut self, at: &str, cond: &Condition, out: &mut Vec<Check>) -> Result<()> {
        let key = cond.key.as_str();
        let header = key
            .strip_prefix("request.headers[")
            .and_then(|k| k.strip_suffix(']'))
            .filter(|k| !k.is_empty());
        let known = header.is_some()
            || key.starts_with("request.auth.")
            || key.starts_with("experimental.")
            || [
                "source.principal",
                "source.namespace",
                "source.serviceAccount",
                "source.ip",
                "remote.ip",
                "destination.ip",
                "destination.port",
                "connection.sni",
            ]
            .contains(&key);
        if !known {
            return Err(self.invalid(&format!("{at}.key"), key, "a condition key"));
        }
        if key == "connection.sni" || key.starts_with("experimental.") {
            self.errors.push(SecurityError::UnsupportedCondition {
                policy: self.policy.to_string(),
                rule: self.index,
                key: key.to_string(),
            });
        }
        let make = |n: &str, v: &[String]| -> Result<Test> {
            let field = format!("{at}.{n}");
            Ok(match key {
                "source.principal" => Test::Principal(strs(v)),
                "source.namespace" => Test::Namespace(namespace_patterns(v)),
                "source.serviceAccount" => self.accounts(&field, v)?,
                "source.ip" | "remote.ip" => Test::SourceIp(self.ip_blocks(&field, v)?),
                "destination.ip" => Test::DestinationIp(self.ip_blocks(&field, v)?),
                "destination.port" => self.ports(&field, v)?,
                _ => match header {
                    Some(h) => Test::Header(h.to_ascii_lowercase(), strs(v)),
                    None if key.starts_with("request.auth.") => Test::RequestAuth,
                    None => Test::Unsupported,
                },
            })
        };
        pair(
            out,
            ("values", &cond.values),
            ("notValues", &cond.not_values),
            make,
        )
    }
}
