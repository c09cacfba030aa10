//! The shape of meshd's own RateLimitPolicy (meshd.io/v1alpha1): a local token bucket, a global
//! Redis-backed limit, or both, for a host or one named route of it.

use crate::policy::{
    duration,
    finding::Pos,
    node::Node,
    report::{self, Report},
    rules,
    schema::{Obj, Ty, limit, obj, opt, req},
};

/// At most a billion tokens or requests per period: anything above is a typo.
const MAX_RATE: i64 = 1_000_000_000;
const ZERO_RATE: &str = " (0 would refuse every request; use an AuthorizationPolicy to deny)";

static TARGET: Obj = obj(&[
    req("host", Ty::Str(rules::dest_host)),
    opt("route", Ty::Str(rules::non_empty)),
]);

/// Token buckets refill at most every 50ms, as in Envoy's local rate limit.
const FILL_INTERVAL: Ty = Ty::Duration(duration::Rule {
    zero_ok: false,
    min_ms: 50,
});

static LOCAL: Obj = Obj {
    fields: &[
        req("maxTokens", limit(1, MAX_RATE, ZERO_RATE)),
        opt("tokensPerFill", limit(1, MAX_RATE, ZERO_RATE)),
        req("fillInterval", FILL_INTERVAL),
    ],
    one_of: &[],
    check: Some(check_local),
};

fn check_local(node: &Node, path: &str, _at: Pos, r: &mut Report) {
    let max = node.get("maxTokens").and_then(Node::as_i64);
    let Some(fill) = node.entry("tokensPerFill") else {
        return;
    };
    if let (Some(max), Some(per)) = (max, fill.value.as_i64())
        && max >= 1
        && per > max
    {
        r.warn(
            fill.value.pos,
            &report::key(path, "tokensPerFill"),
            format!("{per} is more than maxTokens ({max}); the bucket never holds more than {max}"),
        );
    }
}

static DESCRIPTOR: Obj = Obj {
    fields: &[
        opt("header", Ty::Str(rules::header_name)),
        opt("sourceWorkload", Ty::Bool),
    ],
    one_of: &[&["header", "sourceWorkload"]],
    check: Some(check_descriptor),
};

fn check_descriptor(node: &Node, path: &str, at: Pos, r: &mut Report) {
    match (node.get("header"), node.entry("sourceWorkload")) {
        (None, None) => r.error(
            at,
            path,
            "set header: NAME or sourceWorkload: true to say what each bucket is counted by",
        ),
        (None, Some(e)) if e.value.as_bool() == Some(false) => r.error(
            e.value.pos,
            &report::key(path, "sourceWorkload"),
            "must be true (omit the descriptor instead)",
        ),
        _ => {}
    }
}

static GLOBAL: Obj = obj(&[
    req("redis", Ty::Str(rules::host_port)),
    req("requestsPerUnit", limit(1, MAX_RATE, ZERO_RATE)),
    req("unit", Ty::Enum(&["second", "minute", "hour"])),
]);

pub static SPEC: Obj = Obj {
    fields: &[
        req("target", Ty::Obj(&TARGET)),
        opt("local", Ty::Obj(&LOCAL)),
        opt("descriptors", Ty::List(&Ty::Obj(&DESCRIPTOR))),
        opt("global", Ty::Obj(&GLOBAL)),
        opt("failureModeDeny", Ty::Bool),
    ],
    one_of: &[],
    check: Some(check_spec),
};

fn check_spec(node: &Node, path: &str, at: Pos, r: &mut Report) {
    if node.get("local").is_none() && node.get("global").is_none() {
        r.error(
            at,
            path,
            "set local, global or both: there is no limit otherwise",
        );
    }
    if let (Some(e), None) = (node.entry("failureModeDeny"), node.get("global")) {
        r.warn(
            e.key_pos,
            &report::key(path, "failureModeDeny"),
            "only applies to global limits (when Redis cannot be reached); it has no effect here",
        );
    }
}
