//! The shape of a DestinationRule spec: load balancing, connection-pool limits, outlier detection,
//! client TLS and subsets, with sane ranges for every limit.

use std::collections::HashMap;

use super::common::{LABELS, MATCH_LABELS_SELECTOR, PORT_SELECTOR, STRINGS};
use crate::policy::{
    duration,
    finding::Pos,
    node::Node,
    report::{self, Report},
    rules,
    schema::{
        DURATION, NOTE_EVERY_NAMESPACE, Obj, PERCENT, PORT, STR, Ty, int, limit, obj, opt, req,
        warned,
    },
};

/// The largest connection or request limit accepted: far beyond what one node can hold, yet
/// small enough to catch typos such as an extra digit group.
const MAX_LIMIT: i64 = 10_000_000;
/// A limit of 0 is accepted and read as unset, as Istio reads it (it sets Envoy's threshold
/// only when above 0); the pool's check warns.
const LIMIT: Ty = limit(0, MAX_LIMIT, "");
const ZERO_OFF: Ty = Ty::Duration(duration::Rule::ZERO_OK);

static HTTP_COOKIE: Obj = obj(&[
    req("name", Ty::Str(rules::non_empty)),
    opt("path", Ty::Str(rules::cookie_text)),
    opt("ttl", ZERO_OFF),
    opt("attributes", Ty::List(&Ty::Obj(&COOKIE_ATTRIBUTE))),
]);

static COOKIE_ATTRIBUTE: Obj = obj(&[
    req("name", Ty::Str(rules::token)),
    opt("value", Ty::Str(rules::cookie_text)),
]);

static CONSISTENT_HASH: Obj = Obj {
    fields: &[
        opt("httpHeaderName", Ty::Str(rules::header_name)),
        opt("httpCookie", Ty::Obj(&HTTP_COOKIE)),
        opt("useSourceIp", Ty::Bool),
        opt("httpQueryParameterName", Ty::Str(rules::non_empty)),
        opt(
            "ringHash",
            Ty::Obj(&obj(&[opt("minimumRingSize", int(1, 8_388_608))])),
        ),
        opt("maglev", Ty::Obj(&MAGLEV)),
        warned(
            "minimumRingSize",
            int(1, 8_388_608),
            "deprecated: use ringHash.minimumRingSize",
        ),
    ],
    one_of: &[
        &[
            "httpHeaderName",
            "httpCookie",
            "useSourceIp",
            "httpQueryParameterName",
        ],
        &["ringHash", "maglev", "minimumRingSize"],
    ],
    check: Some(hash_needs_key),
};

/// As Istio's validation: Maglev's table size is set, prime, and below 5000011.
static MAGLEV: Obj = Obj {
    fields: &[req("tableSize", int(2, 5_000_010))],
    one_of: &[],
    check: Some(table_size_is_prime),
};

fn table_size_is_prime(node: &Node, path: &str, _at: Pos, r: &mut Report) {
    let Some(e) = node.entry("tableSize") else {
        return;
    };
    let Some(n) = e.value.as_i64().filter(|n| (2..5_000_011).contains(n)) else {
        return;
    };
    let prime = (2..).take_while(|d| d * d <= n).all(|d| n % d != 0);
    if !prime {
        r.error(
            e.value.pos,
            &report::key(path, "tableSize"),
            format!(
                "{n} is not prime; Maglev's table size must be a prime (65537 is Envoy's default)"
            ),
        );
    }
}

fn hash_needs_key(node: &Node, path: &str, at: Pos, r: &mut Report) {
    let keys = [
        "httpHeaderName",
        "httpCookie",
        "useSourceIp",
        "httpQueryParameterName",
    ];
    if keys.iter().all(|k| node.get(k).is_none()) {
        r.error(
            at,
            path,
            "set what to hash on: httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName",
        );
    }
}

static LOCALITY_FAILOVER: Obj = obj(&[
    req("from", Ty::Str(rules::non_empty)),
    req("to", Ty::Str(rules::non_empty)),
]);

const DISTRIBUTE_WEIGHT: Ty = int(0, 100);

static LOCALITY_DISTRIBUTE: Obj = Obj {
    fields: &[
        req("from", Ty::Str(rules::non_empty)),
        req("to", Ty::Map(rules::non_empty, &DISTRIBUTE_WEIGHT)),
    ],
    one_of: &[],
    check: Some(check_distribute),
};

/// As Istio's validation: the weights of a `distribute` entry's `to` add up to 100.
fn check_distribute(node: &Node, path: &str, _at: Pos, r: &mut Report) {
    let Some(to) = node.entry("to") else { return };
    let sum: i64 = (to.value.entries().unwrap_or_default().iter())
        .filter_map(|e| e.value.as_i64())
        .sum();
    if sum != 100 {
        r.error(
            to.value.pos,
            &report::key(path, "to"),
            format!("the weights add up to {sum}; they must add up to 100"),
        );
    }
}

static LOCALITY_LB: Obj = Obj {
    fields: &[
        opt("enabled", Ty::Bool),
        opt("failover", Ty::List(&Ty::Obj(&LOCALITY_FAILOVER))),
        opt("distribute", Ty::List(&Ty::Obj(&LOCALITY_DISTRIBUTE))),
        opt("failoverPriority", Ty::List(&Ty::Str(rules::non_empty))),
    ],
    // As Istio: traffic is either distributed by weight or failed over by priority.
    one_of: &[&["distribute", "failover"]],
    check: None,
};

static LOAD_BALANCER: Obj = Obj {
    fields: &[
        opt(
            "simple",
            Ty::Enum(&[
                "UNSPECIFIED",
                "LEAST_CONN",
                "RANDOM",
                "PASSTHROUGH",
                "ROUND_ROBIN",
                "LEAST_REQUEST",
            ]),
        ),
        opt("consistentHash", Ty::Obj(&CONSISTENT_HASH)),
        opt("localityLbSetting", Ty::Obj(&LOCALITY_LB)),
        opt("warmupDurationSecs", DURATION),
        opt("warmup", Ty::Obj(&WARMUP)),
    ],
    one_of: &[
        &["simple", "consistentHash"],
        &["warmupDurationSecs", "warmup"],
    ],
    check: None,
};

static WARMUP: Obj = obj(&[
    req("duration", DURATION),
    opt("minimumPercent", PERCENT),
    opt("aggression", Ty::Num(0.001, 1_000_000.0)),
]);

static KEEPALIVE: Obj = Obj {
    fields: &[
        opt("probes", int(1, 100)),
        opt("time", DURATION),
        opt("interval", DURATION),
    ],
    one_of: &[],
    check: Some(keepalive_within_the_kernels_range),
};

/// Linux refuses a keepalive time or interval over 32767 s; meshd uses that much instead.
fn keepalive_within_the_kernels_range(node: &Node, path: &str, _at: Pos, r: &mut Report) {
    for key in ["time", "interval"] {
        let Some(e) = node.entry(key) else { continue };
        let Some(d) = e.value.as_str().and_then(|t| duration::parse(t).ok()) else {
            continue;
        };
        if d > crate::policy::limits::MAX_KEEPALIVE {
            r.warn(
                e.value.pos,
                &report::key(path, key),
                "Linux takes at most 32767s (about 9 h) here; meshd uses that",
            );
        }
    }
}

static TCP_POOL: Obj = Obj {
    fields: &[
        opt("maxConnections", LIMIT),
        opt("connectTimeout", DURATION),
        opt("tcpKeepalive", Ty::Obj(&KEEPALIVE)),
        opt("maxConnectionDuration", DURATION),
        opt("idleTimeout", ZERO_OFF),
    ],
    one_of: &[],
    check: Some(zero_limits_are_unset),
};

static HTTP_POOL: Obj = Obj {
    fields: &[
        opt("http1MaxPendingRequests", LIMIT),
        opt("http2MaxRequests", LIMIT),
        opt(
            "maxRequestsPerConnection",
            limit(0, 1 << 29, " (0 means unlimited; 1 disables keep-alive)"),
        ),
        opt("maxRetries", LIMIT),
        opt("idleTimeout", ZERO_OFF),
        opt(
            "h2UpgradePolicy",
            Ty::Enum(&["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"]),
        ),
        opt("useClientProtocol", Ty::Bool),
        opt("maxConcurrentStreams", limit(0, i32::MAX as i64, "")),
    ],
    one_of: &[],
    check: Some(zero_limits_are_unset),
};

/// Pool limits Istio sets on Envoy only when above 0.
const UNSET_AT_ZERO: [&str; 5] = [
    "maxConnections",
    "http1MaxPendingRequests",
    "http2MaxRequests",
    "maxRetries",
    "maxConcurrentStreams",
];

fn zero_limits_are_unset(node: &Node, path: &str, _at: Pos, r: &mut Report) {
    for key in UNSET_AT_ZERO {
        if let Some(e) = node.entry(key)
            && e.value.as_i64() == Some(0)
        {
            r.warn(
                e.value.pos,
                &report::key(path, key),
                "0 is read as unset, as Istio reads it: there is no limit",
            );
        }
    }
}

static CONNECTION_POOL: Obj = obj(&[
    opt("tcp", Ty::Obj(&TCP_POOL)),
    opt("http", Ty::Obj(&HTTP_POOL)),
]);

const ERRORS: Ty = limit(0, 1_000_000, " (0 turns this detector off)");

static OUTLIER: Obj = Obj {
    fields: &[
        opt("splitExternalLocalOriginErrors", Ty::Bool),
        opt("consecutiveLocalOriginFailures", ERRORS),
        opt("consecutiveGatewayErrors", ERRORS),
        opt("consecutive5xxErrors", ERRORS),
        warned(
            "consecutiveErrors",
            ERRORS,
            "deprecated: use consecutive5xxErrors or consecutiveGatewayErrors",
        ),
        opt("interval", DURATION),
        opt("baseEjectionTime", DURATION),
        opt("maxEjectionPercent", int(0, 100)),
        opt("minHealthPercent", int(0, 100)),
    ],
    one_of: &[],
    check: Some(check_outlier),
};

fn check_outlier(node: &Node, path: &str, at: Pos, r: &mut Report) {
    if let Some(e) = node.entry("maxEjectionPercent")
        && e.value.as_i64() == Some(0)
    {
        r.warn(
            e.value.pos,
            &report::key(path, "maxEjectionPercent"),
            "0 is read as unset, as Istio reads it: at most 10% of the endpoints are ejected",
        );
    }
    let detectors = [
        "consecutive5xxErrors",
        "consecutiveGatewayErrors",
        "consecutiveLocalOriginFailures",
        "consecutiveErrors",
    ];
    let set: Vec<i64> = detectors
        .iter()
        .filter_map(|k| node.get(k).and_then(Node::as_i64))
        .collect();
    if !set.is_empty() && set.iter().all(|v| *v == 0) {
        r.warn(
            at,
            path,
            "every detector is set to 0, so no endpoint is ever ejected",
        );
    }
    if let (Some(e), false) = (
        node.entry("consecutiveLocalOriginFailures"),
        node.get("splitExternalLocalOriginErrors")
            .and_then(Node::as_bool)
            .unwrap_or(false),
    ) {
        r.warn(
            e.key_pos,
            &report::key(path, "consecutiveLocalOriginFailures"),
            "has no effect unless splitExternalLocalOriginErrors is true",
        );
    }
}

static CLIENT_TLS: Obj = Obj {
    fields: &[
        req(
            "mode",
            Ty::Enum(&["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"]),
        ),
        opt("clientCertificate", STR),
        opt("privateKey", STR),
        opt("caCertificates", STR),
        opt("credentialName", STR),
        opt("subjectAltNames", STRINGS),
        opt("sni", Ty::Str(rules::host)),
        opt("insecureSkipVerify", Ty::Bool),
        opt("caCrl", STR),
    ],
    one_of: &[],
    check: Some(check_tls),
};

fn check_tls(node: &Node, path: &str, at: Pos, r: &mut Report) {
    let has = |k: &str| node.get(k).is_some();
    for (field, why) in [(
        "credentialName",
        "meshd does not read Kubernetes secrets: give clientCertificate, privateKey and caCertificates as files",
    )] {
        if let Some(e) = node.entry(field) {
            r.warn(e.key_pos, &report::key(path, field), why);
        }
    }
    if node.get("insecureSkipVerify").and_then(Node::as_bool) == Some(true)
        && let Some(e) = node.entry("caCrl")
    {
        r.warn(
            e.key_pos,
            &report::key(path, "caCrl"),
            "not read: insecureSkipVerify accepts any certificate",
        );
    }
    if node.get("mode").and_then(Node::as_str) == Some("MUTUAL")
        && !has("credentialName")
        && !(has("clientCertificate") && has("privateKey"))
    {
        r.error(
            at,
            path,
            "MUTUAL needs clientCertificate and privateKey, or credentialName",
        );
    }
}

static TRAFFIC_POLICY: Obj = Obj {
    fields: &[
        opt("loadBalancer", Ty::Obj(&LOAD_BALANCER)),
        opt("connectionPool", Ty::Obj(&CONNECTION_POOL)),
        opt("outlierDetection", Ty::Obj(&OUTLIER)),
        opt("tls", Ty::Obj(&CLIENT_TLS)),
        opt("portLevelSettings", Ty::List(&Ty::Obj(&PORT_POLICY))),
        opt("tunnel", Ty::Obj(&TUNNEL)),
        opt("proxyProtocol", Ty::Obj(&PROXY_PROTOCOL)),
        opt("retryBudget", Ty::Obj(&RETRY_BUDGET)),
    ],
    one_of: &[],
    check: Some(check_traffic_policy),
};

/// Istio's rule: a forward-proxy tunnel and a PROXY protocol header exclude each other.
fn check_traffic_policy(node: &Node, path: &str, _at: Pos, r: &mut Report) {
    if let (Some(t), Some(_)) = (node.entry("tunnel"), node.entry("proxyProtocol")) {
        r.error(
            t.key_pos,
            &report::key(path, "tunnel"),
            "tunnel and proxyProtocol cannot both be set",
        );
    }
}

static TUNNEL: Obj = Obj {
    fields: &[
        opt("protocol", Ty::Enum(&["CONNECT", "POST"])),
        req("targetHost", Ty::Str(rules::dest_host)),
        req("targetPort", PORT),
    ],
    one_of: &[],
    check: Some(check_tunnel),
};

fn check_tunnel(node: &Node, path: &str, _at: Pos, r: &mut Report) {
    if let Some(e) = node.entry("protocol")
        && e.value.as_str() == Some("POST")
    {
        r.error(
            e.value.pos,
            &report::key(path, "protocol"),
            "meshd tunnels with HTTP CONNECT only: POST is not implemented",
        );
    }
}

static PROXY_PROTOCOL: Obj = obj(&[opt("version", Ty::Enum(&["V1", "V2"]))]);

static RETRY_BUDGET: Obj = obj(&[
    opt("percent", PERCENT),
    opt("minRetryConcurrency", int(0, u32::MAX as i64)),
    warned(
        "budgetInterval",
        DURATION,
        "meshd counts the requests active now (Envoy's default, an interval of 0); ignored",
    ),
]);

static PORT_POLICY: Obj = Obj {
    fields: &[
        req("port", Ty::Obj(&PORT_SELECTOR)),
        opt("loadBalancer", Ty::Obj(&LOAD_BALANCER)),
        opt("connectionPool", Ty::Obj(&CONNECTION_POOL)),
        opt("outlierDetection", Ty::Obj(&OUTLIER)),
        opt("tls", Ty::Obj(&CLIENT_TLS)),
    ],
    one_of: &[],
    check: Some(port_policy_sets_something),
};

/// As Istio's validation: a `portLevelSettings` entry that names only its port says nothing.
fn port_policy_sets_something(node: &Node, path: &str, at: Pos, r: &mut Report) {
    let settings = ["loadBalancer", "connectionPool", "outlierDetection", "tls"];
    if settings.iter().all(|k| node.get(k).is_none()) {
        r.error(
            at,
            path,
            "a port's traffic policy must set at least one of loadBalancer, connectionPool, outlierDetection or tls",
        );
    }
}

static SUBSET: Obj = obj(&[
    req("name", Ty::Str(rules::non_empty)),
    opt("labels", LABELS),
    opt("trafficPolicy", Ty::Obj(&TRAFFIC_POLICY)),
]);

pub static SPEC: Obj = Obj {
    fields: &[
        req("host", Ty::Str(rules::host)),
        opt("trafficPolicy", Ty::Obj(&TRAFFIC_POLICY)),
        opt("subsets", Ty::List(&Ty::Obj(&SUBSET))),
        warned("exportTo", STRINGS, NOTE_EVERY_NAMESPACE),
        opt("workloadSelector", Ty::Obj(&MATCH_LABELS_SELECTOR)),
    ],
    one_of: &[],
    check: Some(check_spec),
};

fn check_spec(node: &Node, path: &str, _at: Pos, r: &mut Report) {
    let Some(subsets) = node.get("subsets").and_then(Node::items) else {
        return;
    };
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, s) in subsets.iter().enumerate() {
        let Some(name) = s.get("name") else { continue };
        let Some(text) = name.as_str() else { continue };
        if let Some(first) = seen.get(text) {
            let p = report::key(&report::index(&report::key(path, "subsets"), i), "name");
            r.error(
                name.pos,
                &p,
                format!("subset {text:?} is already defined by subsets[{first}]"),
            );
        } else {
            seen.insert(text, i);
        }
    }
}
