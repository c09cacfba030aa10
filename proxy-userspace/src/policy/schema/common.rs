//! Schema pieces shared by several kinds: metadata, string matches, selectors, percentages.

use crate::policy::{
    finding::Pos,
    node::Node,
    report::Report,
    rules,
    schema::{Field, Obj, PORT, STR, Ty, obj, opt, req},
};

pub const LABELS: Ty = Ty::Map(rules::label_key, &Ty::Str(rules::label_value));
pub const STRINGS: Ty = Ty::List(&STR);
pub const NAMESPACE: Ty = Ty::Str(rules::dns_label);

/// Kubernetes object metadata. Fields that the API server manages are accepted and ignored, so
/// that `kubectl get -o yaml` output loads.
pub static METADATA: Obj = obj(&[
    req("name", Ty::Str(rules::dns_subdomain)),
    opt("namespace", NAMESPACE),
    opt("labels", LABELS),
    opt("annotations", Ty::Map(rules::non_empty, &STR)),
    opt("generateName", Ty::Any),
    opt("uid", Ty::Any),
    opt("resourceVersion", Ty::Any),
    opt("generation", Ty::Any),
    opt("creationTimestamp", STR),
    opt("deletionTimestamp", Ty::Any),
    opt("deletionGracePeriodSeconds", Ty::Any),
    opt("managedFields", Ty::Any),
    opt("finalizers", Ty::Any),
    opt("ownerReferences", Ty::Any),
    opt("selfLink", Ty::Any),
]);

const STRING_MATCH_FIELDS: &[Field] = &[
    opt("exact", STR),
    opt("prefix", STR),
    opt("regex", Ty::Str(rules::regex)),
];

/// `{exact|prefix|regex: ...}`, one of them required (uri, scheme, method, authority).
pub static STRING_MATCH: Obj = Obj {
    fields: STRING_MATCH_FIELDS,
    one_of: &[&["exact", "prefix", "regex"]],
    check: Some(needs_one_match),
};

/// Like `STRING_MATCH`, but `{}` is allowed and means "present" (headers, query parameters).
pub static PRESENCE_MATCH: Obj = Obj {
    fields: STRING_MATCH_FIELDS,
    one_of: &[&["exact", "prefix", "regex"]],
    check: None,
};

fn needs_one_match(node: &Node, path: &str, at: Pos, r: &mut Report) {
    if ["exact", "prefix", "regex"]
        .iter()
        .all(|k| node.get(k).is_none())
    {
        r.error(at, path, "set one of exact, prefix or regex");
    }
    // As Istio validates them: an empty prefix or regex says nothing (it would match anything).
    for key in ["prefix", "regex"] {
        if let Some(e) = node.entry(key).filter(|e| e.value.as_str() == Some("")) {
            r.error(
                e.value.pos,
                &crate::policy::report::key(path, key),
                format!("an empty {key} matches anything: remove the match, or give it a value"),
            );
        }
    }
}

/// `{value: 0-100}`.
/// Istio's `Percent`: a missing `value` is 0, as protobuf reads it (`mirrorPercentage: {}`
/// mirrors nothing).
pub static PERCENTAGE: Obj = obj(&[opt("value", crate::policy::schema::PERCENT)]);

/// `{number: PORT}`.
pub static PORT_SELECTOR: Obj = obj(&[req("number", PORT)]);

/// security.istio.io's and DestinationRule's selector: `{matchLabels: {...}}`.
pub static MATCH_LABELS_SELECTOR: Obj = obj(&[req("matchLabels", LABELS)]);

const HEADER_MAP: Ty = Ty::Map(rules::header_name, &Ty::Str(rules::header_value));

/// `{set, add, remove}` on request or response headers.
pub static HEADER_OPERATIONS: Obj = Obj {
    fields: &[
        opt("set", HEADER_MAP),
        opt("add", HEADER_MAP),
        opt("remove", Ty::List(&Ty::Str(rules::header_name))),
    ],
    one_of: &[],
    check: Some(check_header_operators),
};

/// Envoy's `%...%` operators in header values that meshd does not substitute (a warning: the
/// value goes out as written), and edits of the fields that frame a message (a warning: they
/// are left out).
fn check_header_operators(node: &Node, path: &str, _at: Pos, r: &mut Report) {
    use crate::policy::report::key as at_key;
    edited_names(node, path, r);
    for key in ["set", "add"] {
        let Some(entries) = node.get(key).and_then(Node::entries) else {
            continue;
        };
        for e in entries {
            let Some(op) = e
                .value
                .as_str()
                .and_then(crate::policy::header_operators::unknown)
            else {
                continue;
            };
            r.warn(
                e.value.pos,
                &at_key(&at_key(path, key), &e.key),
                format!("meshd does not substitute %{op}%; the value is sent as written"),
            );
        }
    }
}

/// The names Istio lets an edit name: no pseudo-header (`:` prefix), but for the authority
/// that a request's `set` or `add` may name as `:authority` or `host`; Host is never removed,
/// nor set on a response. And the fields that frame a message, whose edits meshd leaves out
/// (a warning).
fn edited_names(node: &Node, path: &str, r: &mut Report) {
    use crate::policy::report::{index, key as at_key};
    let request = path.ends_with("request");
    let mut names: Vec<(&str, Pos, String, bool)> = Vec::new();
    for key in ["set", "add"] {
        for e in node.get(key).and_then(Node::entries).unwrap_or_default() {
            names.push((
                &e.key,
                e.key_pos,
                at_key(&at_key(path, key), &e.key),
                request,
            ));
        }
    }
    let removed = node.get("remove").and_then(Node::items).unwrap_or_default();
    for (i, n) in removed.iter().enumerate() {
        if let Some(name) = n.as_str() {
            names.push((name, n.pos, index(&at_key(path, "remove"), i), false));
        }
    }
    let framing =
        "meshd frames each message by the body it sends, so an edit of this field is ignored";
    for (name, pos, at, authority_ok) in names {
        if crate::policy::model::HeaderOperations::frames(name) {
            r.warn(pos, &at, framing);
        }
        let authority =
            name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case(":authority");
        if authority && !authority_ok {
            r.error(
                pos,
                &at,
                format!("{name} cannot be removed, nor set on a response (Istio refuses it)"),
            );
        } else if name.starts_with(':') && !authority {
            r.error(
                pos,
                &at,
                format!(
                    "{name} is a pseudo-header, which header edits cannot change (Istio refuses it)"
                ),
            );
        }
    }
}

pub static HEADERS: Obj = obj(&[
    opt("request", Ty::Obj(&HEADER_OPERATIONS)),
    opt("response", Ty::Obj(&HEADER_OPERATIONS)),
]);

/// Reports a list field that is present but empty, or absent when required.
pub fn non_empty_list(node: &Node, key: &str, path: &str, at: Pos, what: &str, r: &mut Report) {
    match node.entry(key) {
        Some(e) if e.value.items().is_some_and(|v| v.is_empty()) => {
            r.error(
                e.key_pos,
                &crate::policy::report::key(path, key),
                format!("must list at least one {what}"),
            );
        }
        Some(_) => {}
        None => r.error(at, path, format!("missing required field {key:?}")),
    }
}
