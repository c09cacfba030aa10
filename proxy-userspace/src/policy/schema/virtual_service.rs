//! The shape of a VirtualService spec (networking.istio.io), with its cross-field rules: weights,
//! one action per route, fault and mirror settings.

use super::common::{
    HEADERS, LABELS, NAMESPACE, PERCENTAGE, PORT_SELECTOR, PRESENCE_MATCH, STRING_MATCH, STRINGS,
    non_empty_list,
};
use crate::policy::{
    duration,
    finding::Pos,
    model::MESH_GATEWAY,
    node::Node,
    report::{self, Report},
    rules,
    schema::{
        DURATION, NOTE_EVERY_NAMESPACE, NOTE_UNSUPPORTED, Obj, PORT, STR, Ty, int, obj, opt, req,
        warned,
    },
};

pub static DESTINATION: Obj = obj(&[
    req("host", Ty::Str(rules::route_dest_host)),
    opt("subset", Ty::Str(rules::non_empty)),
    opt("port", Ty::Obj(&PORT_SELECTOR)),
]);

/// A destination's share, relative to the others' (Istio's weight is any int32 from 0).
const WEIGHT: Ty = int(0, i32::MAX as i64);

static HTTP_ROUTE_DESTINATION: Obj = obj(&[
    req("destination", Ty::Obj(&DESTINATION)),
    opt("weight", WEIGHT),
    opt("headers", Ty::Obj(&HEADERS)),
]);

static ROUTE_DESTINATION: Obj = obj(&[
    req("destination", Ty::Obj(&DESTINATION)),
    opt("weight", WEIGHT),
]);

const MATCH: Ty = Ty::Obj(&STRING_MATCH);
const HEADER_MATCHES: Ty = Ty::Map(rules::header_name, &Ty::Obj(&PRESENCE_MATCH));

static HTTP_MATCH: Obj = Obj {
    fields: &[
        opt("name", STR),
        opt("uri", MATCH),
        opt("scheme", MATCH),
        opt("method", MATCH),
        opt("authority", MATCH),
        opt("headers", HEADER_MATCHES),
        opt("port", PORT),
        opt("sourceLabels", LABELS),
        opt("gateways", STRINGS),
        opt(
            "queryParams",
            Ty::Map(rules::non_empty, &Ty::Obj(&PRESENCE_MATCH)),
        ),
        opt("ignoreUriCase", Ty::Bool),
        opt("withoutHeaders", HEADER_MATCHES),
        opt("sourceNamespace", NAMESPACE),
        opt("statPrefix", Ty::Str(rules::non_empty)),
    ],
    one_of: &[],
    check: Some(check_match_gateways),
};

static REDIRECT: Obj = Obj {
    fields: &[
        opt("uri", STR),
        opt("authority", STR),
        opt("port", PORT),
        opt(
            "derivePort",
            Ty::Enum(&["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"]),
        ),
        opt("scheme", Ty::Enum(&["http", "https"])),
        opt("redirectCode", int(300, 399)),
    ],
    one_of: &[&["port", "derivePort"]],
    check: Some(redirect_needs_a_change),
};

/// As Istio validates a redirect: one that changes nothing would send the client back to
/// where it asked, forever.
fn redirect_needs_a_change(node: &Node, path: &str, at: Pos, r: &mut Report) {
    let changes = ["uri", "authority", "scheme", "port", "derivePort"];
    if changes.iter().all(|k| node.get(k).is_none()) {
        r.error(
            at,
            path,
            "set uri, authority, scheme, port or derivePort: a redirect that changes nothing sends the client back to the same URL",
        );
    }
}

static BODY: Obj = Obj {
    fields: &[opt("string", STR), opt("bytes", Ty::Str(rules::base64))],
    one_of: &[&["string", "bytes"]],
    check: None,
};

static DIRECT_RESPONSE: Obj = obj(&[req("status", int(200, 599)), opt("body", Ty::Obj(&BODY))]);

static REGEX_REWRITE: Obj = obj(&[req("match", Ty::Str(rules::regex)), req("rewrite", STR)]);

static REWRITE: Obj = Obj {
    fields: &[
        opt("uri", STR),
        opt("authority", STR),
        opt("uriRegexRewrite", Ty::Obj(&REGEX_REWRITE)),
    ],
    one_of: &[&["uri", "uriRegexRewrite"]],
    check: Some(rewrite_needs_a_change),
};

/// As Istio validates a rewrite: it must rewrite something.
fn rewrite_needs_a_change(node: &Node, path: &str, at: Pos, r: &mut Report) {
    if ["uri", "uriRegexRewrite", "authority"]
        .iter()
        .all(|k| node.get(k).is_none())
    {
        r.error(at, path, "set uri, uriRegexRewrite or authority");
    }
}

static RETRIES: Obj = Obj {
    fields: &[
        req("attempts", int(0, 100)),
        opt("perTryTimeout", DURATION),
        opt("retryOn", Ty::Str(rules::retry_on)),
        opt("retryRemoteLocalities", Ty::Bool),
        opt("retryIgnorePreviousHosts", Ty::Bool),
        opt("backoff", DURATION),
    ],
    one_of: &[],
    check: Some(check_retry_on),
};

/// Envoy conditions Istio accepts that meshd never retries on.
const NEVER_RETRIED: [(&str, &str); 3] = [
    (
        "envoy-ratelimited",
        "meshd does not read x-envoy-ratelimited on upstream answers",
    ),
    (
        "retriable-headers",
        "Istio has no way to name the retriable headers",
    ),
    ("http3-post-connect-failure", "meshd speaks no HTTP/3"),
];

fn check_retry_on(node: &Node, path: &str, _at: Pos, r: &mut Report) {
    // As Istio validates it: with retries off, their settings say nothing.
    if node.get("attempts").and_then(Node::as_i64) == Some(0) {
        for key in ["perTryTimeout", "retryOn", "retryRemoteLocalities"] {
            if let Some(e) = node.entry(key) {
                r.warn(
                    e.key_pos,
                    &report::key(path, key),
                    "has no effect: attempts 0 turns retries off (Istio refuses this combination)",
                );
            }
        }
    }
    let Some(on) = node.entry("retryOn") else {
        return;
    };
    for cond in on.value.as_str().unwrap_or("").split(',').map(str::trim) {
        if let Some((_, why)) = NEVER_RETRIED.iter().find(|(c, _)| *c == cond) {
            r.warn(
                on.value.pos,
                &report::key(path, "retryOn"),
                format!("{cond} never causes a retry here: {why}"),
            );
        }
    }
}

static DELAY: Obj = Obj {
    fields: &[
        opt("fixedDelay", DURATION),
        warned("exponentialDelay", DURATION, NOTE_UNSUPPORTED),
        opt("percentage", Ty::Obj(&PERCENTAGE)),
        warned("percent", int(0, 100), "deprecated: use percentage.value"),
    ],
    one_of: &[
        &["fixedDelay", "exponentialDelay"],
        &["percentage", "percent"],
    ],
    check: Some(delay_needs_duration),
};

fn delay_needs_duration(node: &Node, path: &str, at: Pos, r: &mut Report) {
    if node.get("fixedDelay").is_none() && node.get("exponentialDelay").is_none() {
        r.error(at, path, "missing required field \"fixedDelay\"");
    }
    if node.get("percent").is_none() {
        warn_without_percentage(node, path, at, r);
    }
}

/// A fault without `percentage` is injected into no request: Istio leaves Envoy's percentage
/// unset, which Envoy reads as 0% (istio/istio#36303), whatever older documentation said.
fn warn_without_percentage(node: &Node, path: &str, at: Pos, r: &mut Report) {
    if node.get("percentage").is_none() {
        r.warn(
            at,
            path,
            "without percentage this fault is injected into no request, as in Istio; set percentage.value: 100 for every request",
        );
    }
}

static ABORT: Obj = Obj {
    fields: &[
        opt("httpStatus", int(200, 599)),
        opt(
            "grpcStatus",
            Ty::Enum(&crate::policy::model::virtual_service::GRPC_STATUS_NAMES),
        ),
        warned("http2Error", STR, NOTE_UNSUPPORTED),
        opt("percentage", Ty::Obj(&PERCENTAGE)),
    ],
    one_of: &[&["httpStatus", "grpcStatus", "http2Error"]],
    check: Some(abort_needs_status),
};

fn abort_needs_status(node: &Node, path: &str, at: Pos, r: &mut Report) {
    if ["httpStatus", "grpcStatus", "http2Error"]
        .iter()
        .all(|k| node.get(k).is_none())
    {
        r.error(at, path, "set httpStatus or grpcStatus");
    }
    warn_without_percentage(node, path, at, r);
}

static FAULT: Obj = obj(&[opt("delay", Ty::Obj(&DELAY)), opt("abort", Ty::Obj(&ABORT))]);

static MIRROR_POLICY: Obj = obj(&[
    req("destination", Ty::Obj(&DESTINATION)),
    opt("percentage", Ty::Obj(&PERCENTAGE)),
]);

static CORS: Obj = obj(&[
    opt("allowOrigins", Ty::List(&MATCH)),
    warned("allowOrigin", STRINGS, "deprecated: use allowOrigins"),
    opt("allowMethods", Ty::List(&Ty::Str(rules::cors_method))),
    opt("allowHeaders", STRINGS),
    opt("exposeHeaders", STRINGS),
    opt("maxAge", DURATION),
    opt("allowCredentials", Ty::Bool),
    opt(
        "unmatchedPreflights",
        Ty::Enum(&["UNSPECIFIED", "FORWARD", "IGNORE"]),
    ),
]);

static DELEGATE: Obj = obj(&[
    req("name", Ty::Str(rules::non_empty)),
    opt("namespace", NAMESPACE),
]);

static HTTP_ROUTE: Obj = Obj {
    fields: &[
        opt("name", STR),
        opt("match", Ty::List(&Ty::Obj(&HTTP_MATCH))),
        opt("route", Ty::List(&Ty::Obj(&HTTP_ROUTE_DESTINATION))),
        opt("redirect", Ty::Obj(&REDIRECT)),
        opt("directResponse", Ty::Obj(&DIRECT_RESPONSE)),
        opt("delegate", Ty::Obj(&DELEGATE)),
        opt("rewrite", Ty::Obj(&REWRITE)),
        opt("timeout", Ty::Duration(duration::Rule::ZERO_OK)),
        opt("retries", Ty::Obj(&RETRIES)),
        opt("fault", Ty::Obj(&FAULT)),
        opt("mirror", Ty::Obj(&DESTINATION)),
        opt("mirrors", Ty::List(&Ty::Obj(&MIRROR_POLICY))),
        opt("mirrorPercentage", Ty::Obj(&PERCENTAGE)),
        warned(
            "mirrorPercent",
            int(0, 100),
            "deprecated: use mirrorPercentage.value",
        ),
        opt("corsPolicy", Ty::Obj(&CORS)),
        opt("headers", Ty::Obj(&HEADERS)),
    ],
    one_of: &[
        &["route", "redirect", "directResponse", "delegate"],
        &["mirror", "mirrors"],
        &["mirrorPercentage", "mirrorPercent"],
    ],
    check: Some(check_http_route),
};

fn check_http_route(node: &Node, path: &str, at: Pos, r: &mut Report) {
    let actions = ["route", "redirect", "directResponse", "delegate"];
    if actions.iter().all(|k| node.get(k).is_none()) {
        r.error(at, path, "set route, redirect, directResponse or delegate");
    }
    // As Istio validates a route: a redirect or a direct response answers the request at
    // once, so a rewrite or a fault beside it could never apply.
    for answer in ["redirect", "directResponse"] {
        for unused in ["rewrite", "fault"] {
            if let (Some(e), Some(_)) = (node.entry(unused), node.get(answer)) {
                r.error(
                    e.key_pos,
                    &report::key(path, unused),
                    format!("a route cannot have both {unused} and {answer}: {answer} answers the request, so the {unused} would never apply"),
                );
            }
        }
    }
    check_weights(node, path, r);
    for key in ["mirrorPercentage", "mirrorPercent"] {
        if let (Some(e), None) = (node.entry(key), node.get("mirror")) {
            r.warn(
                e.key_pos,
                &report::key(path, key),
                "has no effect without mirror (mirrors[] take their own percentage)",
            );
        }
    }
}

/// When a route splits traffic over several destinations, each takes `weight / (sum of the
/// weights)` of it, as Istio reads them since 1.15 (before, they had to add up to 100): a
/// destination without a weight gets none, and weights that add up to 0 leave every
/// destination without traffic, which Envoy refuses (an error here).
pub fn check_weights(node: &Node, path: &str, r: &mut Report) {
    let Some(entry) = node.entry("route") else {
        return;
    };
    let Some(dests) = entry.value.items() else {
        return;
    };
    let weights: Vec<(usize, Option<&Node>)> = dests
        .iter()
        .enumerate()
        .map(|(i, d)| (i, d.get("weight")))
        .collect();
    // As Istio validates: one destination takes all traffic, whatever its weight.
    if dests.len() < 2 {
        return;
    }
    let mut sum: i64 = 0;
    for (_, w) in &weights {
        match w.map(Node::as_i64) {
            Some(Some(v)) if v >= 0 => sum += v,
            Some(_) => return, // a type or range error already reported
            None => {}
        }
    }
    if sum > 0 {
        return;
    }
    let route_path = report::key(path, "route");
    let (pos, at_path) = match weights.iter().find_map(|(i, w)| w.map(|n| (*i, n))) {
        Some((i, n)) => (n.pos, report::key(&report::index(&route_path, i), "weight")),
        None => (entry.key_pos, route_path),
    };
    let unset = weights.iter().filter(|(_, w)| w.is_none()).count();
    let hint = if unset > 0 && dests.len() > 1 {
        format!(" ({unset} destination(s) have no weight, which counts as 0)")
    } else {
        String::new()
    };
    r.error(
        pos,
        &at_path,
        format!(
            "the weights of a route's destinations add up to 0, so none would get traffic{hint}"
        ),
    );
}

static L4_MATCH: Obj = Obj {
    fields: &[
        opt("destinationSubnets", Ty::List(&Ty::Str(rules::ip_or_cidr))),
        opt("port", PORT),
        opt("sourceLabels", LABELS),
        opt("gateways", STRINGS),
        opt("sourceNamespace", NAMESPACE),
    ],
    one_of: &[],
    check: Some(check_match_gateways),
};

static TLS_MATCH: Obj = Obj {
    fields: &[
        req("sniHosts", Ty::List(&Ty::Str(rules::host))),
        opt("destinationSubnets", Ty::List(&Ty::Str(rules::ip_or_cidr))),
        opt("port", PORT),
        opt("sourceLabels", LABELS),
        opt("gateways", STRINGS),
        opt("sourceNamespace", NAMESPACE),
    ],
    one_of: &[],
    check: Some(check_match_gateways),
};

static TCP_ROUTE: Obj = Obj {
    fields: &[
        opt("match", Ty::List(&Ty::Obj(&L4_MATCH))),
        req("route", Ty::List(&Ty::Obj(&ROUTE_DESTINATION))),
    ],
    one_of: &[],
    check: Some(check_l4_route),
};

static TLS_ROUTE: Obj = Obj {
    fields: &[
        req("match", Ty::List(&Ty::Obj(&TLS_MATCH))),
        req("route", Ty::List(&Ty::Obj(&ROUTE_DESTINATION))),
    ],
    one_of: &[],
    check: Some(check_l4_route),
};

fn check_l4_route(node: &Node, path: &str, _at: Pos, r: &mut Report) {
    check_weights(node, path, r);
}

pub static SPEC: Obj = Obj {
    fields: &[
        opt("hosts", Ty::List(&Ty::Str(rules::host))),
        opt("gateways", STRINGS),
        opt("http", Ty::List(&Ty::Obj(&HTTP_ROUTE))),
        opt("tcp", Ty::List(&Ty::Obj(&TCP_ROUTE))),
        opt("tls", Ty::List(&Ty::Obj(&TLS_ROUTE))),
        warned("exportTo", STRINGS, NOTE_EVERY_NAMESPACE),
    ],
    one_of: &[],
    check: Some(check_spec),
};

fn check_spec(node: &Node, path: &str, at: Pos, r: &mut Report) {
    // Without hosts, a VirtualService is a delegate: a root's `delegate` takes its http routes.
    if node.get("hosts").is_some() {
        non_empty_list(node, "hosts", path, at, "host", r);
    } else {
        for key in ["tcp", "tls"] {
            if let Some(e) = node.entry(key) {
                r.warn(
                    e.key_pos,
                    &report::key(path, key),
                    "a VirtualService without hosts is a delegate: only its http routes are used, by a root's delegate",
                );
            }
        }
    }
    if ["http", "tcp", "tls"].iter().all(|k| node.get(k).is_none()) {
        r.error(at, path, "set at least one of http, tcp or tls routes");
    }
    check_gateways(
        node,
        path,
        "this VirtualService is bound to gateways only, so it configures none of the mesh traffic meshd carries; add \"mesh\" to gateways to apply it here",
        r,
    );
    check_sni_hosts(node, path, r);
}

/// As Istio's validation: each `sniHosts` entry of a `tls` route must be one of the
/// VirtualService's hosts, or covered by a wildcard among them. (Short host names are left
/// alone: their namespace is not known here.)
fn check_sni_hosts(node: &Node, path: &str, r: &mut Report) {
    let hosts: Vec<String> = (node.get("hosts").and_then(Node::items).unwrap_or_default())
        .iter()
        .filter_map(|h| h.as_str().map(str::to_ascii_lowercase))
        .collect();
    if hosts.is_empty() || hosts.iter().any(|h| h != "*" && !h.contains('.')) {
        return;
    }
    let routes = node.get("tls").and_then(Node::items).unwrap_or_default();
    for (i, route) in routes.iter().enumerate() {
        let matches = route.get("match").and_then(Node::items).unwrap_or_default();
        for (j, m) in matches.iter().enumerate() {
            let names = m.get("sniHosts").and_then(Node::items).unwrap_or_default();
            for (k, sni) in names.iter().enumerate() {
                let Some(name) = sni.as_str().map(str::to_ascii_lowercase) else {
                    continue;
                };
                let covered = hosts
                    .iter()
                    .any(|h| *h == name || crate::policy::hosts::covers(h, &name));
                if !covered {
                    r.error(
                        sni.pos,
                        &format!("{path}.tls[{i}].match[{j}].sniHosts[{k}]"),
                        format!(
                            "{} is not one of the VirtualService's hosts nor covered by one ({}), as Istio requires",
                            crate::policy::node::quote(&name),
                            hosts.join(", ")
                        ),
                    );
                }
            }
        }
    }
}

/// A match's `gateways` override the VirtualService's; one without `mesh` never holds here.
fn check_match_gateways(node: &Node, path: &str, _at: Pos, r: &mut Report) {
    check_gateways(
        node,
        path,
        "this match names gateways but not \"mesh\", so it never holds for the mesh traffic meshd carries",
        r,
    );
}

/// `gateways` as meshd reads them: empty or with `mesh` binds the mesh, and other names are
/// gateways meshd is not. Warns, at the list, when the mesh is left out, and else at each
/// gateway name that is ignored.
fn check_gateways(node: &Node, path: &str, unbound: &str, r: &mut Report) {
    let Some(list) = node.get("gateways") else {
        return;
    };
    let Some(items) = list.items() else {
        return;
    };
    let at = report::key(path, "gateways");
    let names: Vec<Option<&str>> = items.iter().map(|g| g.as_str()).collect();
    if !items.is_empty() && !names.contains(&Some(MESH_GATEWAY)) {
        r.warn(list.pos, &at, unbound);
        return;
    }
    for (i, g) in items.iter().enumerate() {
        if names[i].is_some_and(|s| s != MESH_GATEWAY) {
            r.warn(
                g.pos,
                &report::index(&at, i),
                "meshd is not this gateway; the entry is ignored and the routes apply to mesh traffic",
            );
        }
    }
}
