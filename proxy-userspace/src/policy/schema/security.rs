//! The shape of PeerAuthentication and AuthorizationPolicy specs (security.istio.io).

use super::common::MATCH_LABELS_SELECTOR;
use crate::policy::{
    finding::Pos,
    node::{Node, quote},
    report::{self, Report},
    rules,
    schema::{Obj, STR, Ty, obj, opt, req, warned},
};

static MTLS: Obj = obj(&[opt(
    "mode",
    Ty::Enum(&["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]),
)]);

pub static PEER_AUTHENTICATION: Obj = Obj {
    fields: &[
        opt("selector", Ty::Obj(&MATCH_LABELS_SELECTOR)),
        opt("mtls", Ty::Obj(&MTLS)),
        opt(
            "portLevelMtls",
            Ty::Map(rules::port_string, &Ty::Obj(&MTLS)),
        ),
    ],
    one_of: &[],
    check: Some(check_peer_authentication),
};

fn check_peer_authentication(node: &Node, path: &str, _at: Pos, r: &mut Report) {
    if let Some(e) = node.entry("portLevelMtls")
        && e.value.entries().is_some_and(<[_]>::is_empty)
    {
        r.error(
            e.value.pos,
            &report::key(path, "portLevelMtls"),
            "must name at least one port when set (Istio refuses an empty map)",
        );
    }
    if let (Some(e), None) = (node.entry("portLevelMtls"), node.get("selector")) {
        r.error(
            e.key_pos,
            &report::key(path, "portLevelMtls"),
            "needs a selector: port-level settings apply to selected workloads only",
        );
    }
}

/// Values of a source, operation or condition: an empty string is refused, as Istio's
/// `CheckEmptyValues` refuses it (it would match nothing, or in a negation everything).
const VALUES: Ty = Ty::List(&Ty::Str(rules::non_empty));
const IP_BLOCKS: Ty = Ty::List(&Ty::Str(rules::ip_or_cidr));
const PORTS: Ty = Ty::List(&Ty::Str(rules::port_string));
const ACCOUNTS: Ty = Ty::List(&Ty::Str(service_account));
const PATHS: Ty = Ty::List(&Ty::Str(path_template));

/// A service account, `NAME` (in the policy's namespace) or `NAMESPACE/NAME`, as Istio's
/// validation takes it: no wildcard.
fn service_account(s: &str) -> Result<(), String> {
    let ok = match s.split_once('/') {
        Some((ns, sa)) => !ns.is_empty() && !sa.is_empty() && !sa.contains('/'),
        None => !s.is_empty(),
    };
    if !ok || s.contains('*') {
        return Err(format!(
            "{} is not a service account: use NAME (in the policy's namespace) or NAMESPACE/NAME, without wildcards",
            quote(s)
        ));
    }
    Ok(())
}

/// A path, or a template whose `{*}` and `{**}` are whole segments and `{**}` the last one
/// (Istio's `CheckValidPathTemplate`).
fn path_template(s: &str) -> Result<(), String> {
    rules::non_empty(s)?;
    match crate::security::authz::matchers::PathPattern::parse(s) {
        Some(_) => Ok(()),
        None => Err(format!(
            "{} is not a valid path template: {{*}} and {{**}} must each be a whole segment, {{**}} the last, and no other {{, }} or * may appear beside them",
            quote(s)
        )),
    }
}

static SOURCE: Obj = Obj {
    fields: SOURCE_FIELDS,
    one_of: &[],
    check: Some(check_source),
};

/// Istio refuses service accounts beside principals or namespaces in one source.
fn check_source(node: &Node, path: &str, _at: Pos, r: &mut Report) {
    let accounts = ["serviceAccounts", "notServiceAccounts"];
    let others = ["principals", "notPrincipals", "namespaces", "notNamespaces"];
    if let Some(e) = accounts.iter().find_map(|k| node.entry(k))
        && let Some(other) = others.iter().find(|k| node.entry(k).is_some())
    {
        r.error(
            e.key_pos,
            &report::key(path, &e.key),
            format!("cannot be set together with {other} (Istio refuses it)"),
        );
    }
}

const SOURCE_FIELDS: &[crate::policy::schema::Field] = &[
    opt("principals", VALUES),
    opt("notPrincipals", VALUES),
    warned(
        "requestPrincipals",
        VALUES,
        "meshd does not validate JWTs, so no request has a request principal: this never matches",
    ),
    warned(
        "notRequestPrincipals",
        VALUES,
        "meshd does not validate JWTs, so no request has a request principal: every request matches this",
    ),
    opt("namespaces", VALUES),
    opt("notNamespaces", VALUES),
    opt("serviceAccounts", ACCOUNTS),
    opt("notServiceAccounts", ACCOUNTS),
    opt("ipBlocks", IP_BLOCKS),
    opt("notIpBlocks", IP_BLOCKS),
    opt("remoteIpBlocks", IP_BLOCKS),
    opt("notRemoteIpBlocks", IP_BLOCKS),
];

static OPERATION: Obj = obj(&[
    opt("hosts", VALUES),
    opt("notHosts", VALUES),
    opt("ports", PORTS),
    opt("notPorts", PORTS),
    opt("methods", VALUES),
    opt("notMethods", VALUES),
    opt("paths", PATHS),
    opt("notPaths", PATHS),
]);

/// Attribute names a `when` condition may test (exact names, then prefixes).
const CONDITION_KEYS: &[&str] = &[
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "source.serviceAccount",
    "destination.ip",
    "destination.port",
    "connection.sni",
];
/// Keys that name what they test in brackets: `request.headers[NAME]`.
const CONDITION_NAMED: &[&str] = &["request.headers[", "request.auth.claims["];

fn condition_key(s: &str) -> Result<(), String> {
    let named = CONDITION_NAMED.iter().find_map(|p| s.strip_prefix(p));
    let ok = match named {
        Some(rest) => rest.strip_suffix(']').is_some_and(|name| !name.is_empty()),
        None => CONDITION_KEYS.contains(&s) || s.starts_with("experimental."),
    };
    if ok {
        return Ok(());
    }
    Err(format!(
        "{} is not a condition key: use one of {}, request.headers[NAME], request.auth.claims[NAME] or experimental.*",
        quote(s),
        CONDITION_KEYS.join(", ")
    ))
}

static CONDITION: Obj = Obj {
    fields: &[
        req("key", Ty::Str(condition_key)),
        opt("values", VALUES),
        opt("notValues", VALUES),
    ],
    one_of: &[],
    check: Some(check_condition),
};

fn check_condition(node: &Node, path: &str, at: Pos, r: &mut Report) {
    if node.get("values").is_none() && node.get("notValues").is_none() {
        r.error(at, path, "set values or notValues");
    }
    let key = node.get("key").and_then(Node::as_str);
    if let Some(k) = key.filter(|k| k.starts_with("request.auth."))
        && let Some(e) = node.entry("key")
    {
        r.warn(
            e.value.pos,
            &report::key(path, "key"),
            format!(
                "meshd does not validate JWTs, so {k} is always absent: values never match, notValues always do"
            ),
        );
    }
    // The values of keys with a syntax, checked as the same fields of a source are.
    let rule: Option<rules::StrRule> = match key {
        Some("source.ip" | "remote.ip" | "destination.ip") => Some(rules::ip_or_cidr),
        Some("destination.port") => Some(rules::port_string),
        Some("source.serviceAccount") => Some(service_account),
        _ => None,
    };
    let Some(rule) = rule else { return };
    for field in ["values", "notValues"] {
        let Some(list) = node.get(field).and_then(Node::items) else {
            continue;
        };
        for (i, v) in list.iter().enumerate() {
            if let Some(Err(e)) = v.as_str().map(rule) {
                r.error(v.pos, &report::index(&report::key(path, field), i), e);
            }
        }
    }
}

static RULE: Obj = Obj {
    fields: &[
        opt(
            "from",
            Ty::List(&Ty::Obj(&obj(&[req("source", Ty::Obj(&SOURCE))]))),
        ),
        opt(
            "to",
            Ty::List(&Ty::Obj(&obj(&[req("operation", Ty::Obj(&OPERATION))]))),
        ),
        opt("when", Ty::List(&Ty::Obj(&CONDITION))),
    ],
    one_of: &[],
    check: Some(check_rule),
};

/// As Istio's validation: a `from` or `to` list that is there must hold something, and so must
/// each source and operation in it. Empty, they would match every request (a template whose
/// list rendered empty would turn an ALLOW policy into allow-all).
fn check_rule(node: &Node, path: &str, _at: Pos, r: &mut Report) {
    for (list, item) in [("from", "source"), ("to", "operation")] {
        let Some(e) = node.entry(list) else { continue };
        let list_path = report::key(path, list);
        let Some(items) = e.value.items() else {
            continue;
        };
        if items.is_empty() {
            r.error(e.value.pos, &list_path, "must not be empty: it would match every request; remove it, or say what it matches");
        }
        for (i, it) in items.iter().enumerate() {
            let Some(inner) = it.entry(item) else {
                continue;
            };
            let says_something = (inner.value.entries().unwrap_or_default().iter())
                .any(|f| f.value.items().is_none_or(|l| !l.is_empty()));
            if !says_something {
                let at_path = report::key(&report::index(&list_path, i), item);
                r.error(inner.value.pos, &at_path, "must not be empty: it would match every request; set at least one field with a value");
            }
        }
    }
}

/// As Istio warns: a DENY rule whose fields only HTTP has (its source only request
/// principals, its operation no port) denies every TCP connection in its scope, where those
/// fields are ignored.
/// As Istio's validation: a CUSTOM policy's rules cannot name the caller's identity (its
/// principals, request principals, namespace or service account, in `from` or in `when`),
/// which the external authorizer is not given.
fn refuse_custom_identities(node: &Node, path: &str, r: &mut Report) {
    const SOURCE: &[(&str, &str)] = &[
        ("principals", "principals"),
        ("notPrincipals", "principals"),
        ("requestPrincipals", "requestPrincipals"),
        ("notRequestPrincipals", "requestPrincipals"),
        ("namespaces", "namespaces"),
        ("notNamespaces", "namespaces"),
        ("serviceAccounts", "serviceAccounts"),
        ("notServiceAccounts", "serviceAccounts"),
    ];
    let rules = node.get("rules").and_then(Node::items).unwrap_or_default();
    for (i, rule) in rules.iter().enumerate() {
        let at = report::index(&report::key(path, "rules"), i);
        let froms = rule.get("from").and_then(Node::items).unwrap_or_default();
        for (j, from) in froms.iter().enumerate() {
            let Some(source) = from.get("source") else {
                continue;
            };
            let source_path = report::key(&report::index(&report::key(&at, "from"), j), "source");
            for (field, named) in SOURCE {
                if let Some(e) = source.entry(field) {
                    r.error(
                        e.key_pos,
                        &report::key(&source_path, field),
                        format!("from.source.{named} is not supported with action CUSTOM (as in Istio): the external authorizer decides on the request, not the caller's identity"),
                    );
                }
            }
        }
        let whens = rule.get("when").and_then(Node::items).unwrap_or_default();
        for (j, when) in whens.iter().enumerate() {
            let Some(key) = when.get("key").and_then(Node::as_str) else {
                continue;
            };
            let identity = matches!(
                key,
                "source.principal" | "source.namespace" | "source.serviceAccount"
            ) || key.starts_with("request.auth.");
            if identity {
                r.error(
                    when.pos,
                    &report::key(&report::index(&report::key(&at, "when"), j), "key"),
                    format!("condition {key} is not supported with action CUSTOM (as in Istio)"),
                );
            }
        }
    }
}

fn warn_http_only_deny(node: &Node, path: &str, r: &mut Report) {
    const L4_SOURCE: &[&str] = &[
        "principals",
        "notPrincipals",
        "namespaces",
        "notNamespaces",
        "serviceAccounts",
        "notServiceAccounts",
        "ipBlocks",
        "notIpBlocks",
        "remoteIpBlocks",
        "notRemoteIpBlocks",
    ];
    let rules = node.get("rules").and_then(Node::items).unwrap_or_default();
    for (i, rule) in rules.iter().enumerate() {
        let inner = |list: &str, item: &str| -> Vec<&Node> {
            (rule
                .get(list)
                .and_then(Node::items)
                .unwrap_or_default()
                .iter())
            .filter_map(|n| n.get(item))
            .collect()
        };
        let (sources, operations) = (inner("from", "source"), inner("to", "operation"));
        let l4_from = sources
            .iter()
            .any(|s| L4_SOURCE.iter().any(|k| s.get(k).is_some()));
        let l4_to = operations
            .iter()
            .any(|o| o.get("ports").is_some() || o.get("notPorts").is_some());
        let has_to = !operations.is_empty();
        let at = report::index(&report::key(path, "rules"), i);
        let http_only = if has_to { !l4_to } else { !sources.is_empty() };
        if http_only && !l4_from {
            r.warn(
                rule.pos,
                &at,
                "uses only HTTP attributes in a DENY rule, so it denies all traffic to TCP ports in its scope (as in Istio); name the ports it is meant for",
            );
        } else if has_to && !l4_to {
            // The source still holds on TCP: only its connections are denied, all of them.
            r.warn(
                rule.pos,
                &at,
                "its operation uses only HTTP attributes, so on TCP ports in its scope it denies every connection from its sources (as in Istio); name the ports it is meant for",
            );
        }
    }
}

static POLICY_TARGET: Obj = obj(&[
    opt("group", STR),
    req(
        "kind",
        Ty::Enum(&["Service", "ServiceEntry", "Gateway", "GatewayClass"]),
    ),
    req("name", Ty::Str(rules::non_empty)),
    opt("namespace", STR),
]);

pub static AUTHORIZATION_POLICY: Obj = Obj {
    fields: &[
        opt("selector", Ty::Obj(&MATCH_LABELS_SELECTOR)),
        opt("targetRef", Ty::Obj(&POLICY_TARGET)),
        opt("targetRefs", Ty::List(&Ty::Obj(&POLICY_TARGET))),
        opt("action", Ty::Enum(&["ALLOW", "DENY", "AUDIT", "CUSTOM"])),
        opt(
            "provider",
            Ty::Obj(&obj(&[req("name", Ty::Str(rules::non_empty))])),
        ),
        opt("rules", Ty::List(&Ty::Obj(&RULE))),
    ],
    one_of: &[],
    check: Some(check_authorization_policy),
};

fn check_authorization_policy(node: &Node, path: &str, at: Pos, r: &mut Report) {
    // An empty `targetRefs` is unset, as in Istio.
    let many = (node.entry("targetRefs")).filter(|e| e.value.items().is_none_or(|l| !l.is_empty()));
    let one = node.entry("targetRef");
    let targets: Vec<(&Node, String)> = match (one, many) {
        (Some(_), Some(e)) => {
            let key = report::key(path, "targetRefs");
            r.error(e.key_pos, &key, "set targetRef or targetRefs, not both");
            Vec::new()
        }
        (Some(e), None) => vec![(&e.value, report::key(path, "targetRef"))],
        (None, Some(e)) => (e.value.items().unwrap_or_default().iter().enumerate())
            .map(|(i, t)| (t, format!("{}[{i}]", report::key(path, "targetRefs"))))
            .collect(),
        (None, None) => Vec::new(),
    };
    if let (Some(e), Some(_)) = (one.or(many), node.get("selector")) {
        let key = report::key(path, &e.key);
        r.error(e.key_pos, &key, "set a selector or targetRefs, not both");
    }
    for (target, at_path) in targets {
        let kind = target.get("kind").and_then(Node::as_str);
        if let Some(e) = target.entry("kind")
            && matches!(kind, Some("Gateway" | "GatewayClass"))
        {
            r.warn(
                e.value.pos,
                &report::key(&at_path, "kind"),
                "meshd is not a gateway: a policy for one applies to no workload here",
            );
        }
        // Each kind lives in one API group, as Istio checks a reference.
        let want = match kind {
            Some("Service") => "",
            Some("ServiceEntry") => "networking.istio.io",
            Some("Gateway" | "GatewayClass") => "gateway.networking.k8s.io",
            _ => continue,
        };
        let group = target.get("group").and_then(Node::as_str).unwrap_or("");
        if group != want {
            let at = target.entry("group").map_or(target.pos, |e| e.value.pos);
            let expected = if want.is_empty() {
                "\"\" (the core group)"
            } else {
                want
            };
            r.error(
                at,
                &report::key(&at_path, "group"),
                format!(
                    "{:?} is not the group of {}: use {expected}",
                    group,
                    kind.unwrap_or_default()
                ),
            );
        }
    }
    let action = node.get("action").and_then(Node::as_str);
    if action == Some("DENY") {
        warn_http_only_deny(node, path, r);
    }
    if action == Some("CUSTOM") {
        refuse_custom_identities(node, path, r);
    }
    // Without rules a DENY or CUSTOM policy never applies (Istio refuses it); the deny-all
    // its author likely meant is `rules: [{}]`.
    let no_rules = (node.get("rules")).is_none_or(|l| l.items().is_some_and(<[Node]>::is_empty));
    if let Some(a @ ("DENY" | "CUSTOM")) = action
        && no_rules
    {
        r.error(
            at,
            path,
            format!("action {a} without rules never applies; add an empty rule `rules: [{{}}]` to apply it to every request"),
        );
    }
    match (action, node.entry("provider")) {
        (Some("CUSTOM"), None) => r.error(at, path, "action CUSTOM needs a provider"),
        (Some("CUSTOM"), Some(e)) => r.warn(
            e.key_pos,
            &report::key(path, "provider"),
            "meshd has no external authorization providers; as istiod does when it cannot use the provider, a CUSTOM policy denies every request and connection to the workloads it selects (fail closed)",
        ),
        (_, Some(e)) => r.error(
            e.key_pos,
            &report::key(path, "provider"),
            "provider applies only to action CUSTOM",
        ),
        _ => {}
    }
}
