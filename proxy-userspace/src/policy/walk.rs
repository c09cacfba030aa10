//! Checks a YAML tree against a `schema::Ty`, reporting every problem with its path and position.

use super::{
    finding::Pos,
    node::{Node, Typed, Value, quote},
    report::{self, Report},
    schema::{Obj, Ty},
};

/// Checks `node` as a `ty` at `path`; `at` is the position blamed for problems with the value as
/// a whole (the key that introduces it).
pub fn check(node: &Node, ty: &Ty, path: &str, at: Pos, r: &mut Report) {
    if node.is_null() {
        return;
    }
    let vpos = if matches!(node.value, Value::Scalar(_)) {
        node.pos
    } else {
        at
    };
    match ty {
        Ty::Any => {}
        Ty::Str(rule) => match node.as_str() {
            Some(s) => {
                if let Err(e) = rule(s) {
                    r.error(vpos, path, e);
                }
            }
            None => r.error(vpos, path, expected("a string", node)),
        },
        Ty::Bool => {
            if node.as_bool().is_none() {
                r.error(vpos, path, expected("true or false", node));
            }
        }
        Ty::Int(rule) => match node.as_i64() {
            Some(v) if v < rule.min => r.error(
                vpos,
                path,
                format!("must be at least {}, got {v}{}", rule.min, rule.hint),
            ),
            Some(v) if v > rule.max => {
                r.error(vpos, path, format!("must be at most {}, got {v}", rule.max))
            }
            Some(_) => {}
            None => match node.scalar() {
                // `1e2` or `100.0`: a float in YAML, which an integer field does not take.
                Some(Typed::Float(f)) => r.error(
                    vpos,
                    path,
                    format!("expected an integer, got the floating-point number {f}: write it without a fraction or an exponent"),
                ),
                _ => r.error(vpos, path, expected("an integer", node)),
            },
        },
        Ty::Num(min, max) => match node.as_f64() {
            Some(v) if v.is_nan() || v < *min || v > *max => r.error(
                vpos,
                path,
                format!("must be between {min} and {max}, got {v}"),
            ),
            Some(_) => {}
            None => r.error(vpos, path, expected("a number", node)),
        },
        Ty::Duration(rule) => match node.as_str() {
            Some(s) => {
                if let Err(e) = rule.check(s) {
                    r.error(vpos, path, e);
                }
            }
            None => r.error(
                vpos,
                path,
                expected("a duration with a unit (e.g. 2s or 250ms)", node),
            ),
        },
        Ty::Enum(values) => match node.as_str() {
            Some(s) if values.contains(&s) => {}
            Some(s) => {
                let hint = values
                    .iter()
                    .find(|v| v.eq_ignore_ascii_case(s))
                    .map(|v| format!(" (did you mean {v}?)"))
                    .unwrap_or_default();
                r.error(
                    vpos,
                    path,
                    format!("{} is not one of {}{hint}", quote(s), values.join(", ")),
                );
            }
            None => r.error(
                vpos,
                path,
                expected(&format!("one of {}", values.join(", ")), node),
            ),
        },
        Ty::List(item) => match node.items() {
            Some(items) => {
                for (i, n) in items.iter().enumerate() {
                    let p = report::index(path, i);
                    if n.is_null() && !matches!(item, Ty::Any) {
                        r.error(n.pos, &p, "an empty list item (null): remove it or give it a value");
                    }
                    check(n, item, &p, n.pos, r);
                }
            }
            None => r.error(vpos, path, expected("a list", node)),
        },
        Ty::Map(key_rule, value) => match node.entries() {
            Some(entries) => {
                for e in entries {
                    let p = report::key(path, &e.key);
                    if let Err(msg) = key_rule(&e.key) {
                        r.error(e.key_pos, &p, msg);
                    }
                    // Unlike a field left empty (unset), a key without a value is an error, as
                    // Kubernetes and Istio take it: read as "anything" it would widen a selector
                    // or a match to every workload or request.
                    if e.value.is_null() && !matches!(value, Ty::Any) {
                        r.error(e.key_pos, &p, "has no value (null): give it one (\"\" for an empty string) or remove the key");
                    }
                    check(&e.value, value, &p, e.key_pos, r);
                }
            }
            None => r.error(vpos, path, expected("a mapping", node)),
        },
        Ty::Obj(obj) => match node.entries() {
            Some(_) => check_obj(node, obj, path, at, r),
            None => r.error(vpos, path, expected("a mapping", node)),
        },
    }
}

fn check_obj(node: &Node, obj: &Obj, path: &str, at: Pos, r: &mut Report) {
    let entries = node.entries().unwrap_or_default();
    for e in entries {
        let p = report::key(path, &e.key);
        match obj.fields.iter().find(|f| f.name == e.key) {
            Some(field) => {
                if let (Some(w), false) = (field.warn, e.value.is_null()) {
                    r.warn(e.key_pos, &p, w);
                }
                check(&e.value, &field.ty, &p, e.key_pos, r);
            }
            None => {
                let names: Vec<&str> = obj.fields.iter().map(|f| f.name).collect();
                let hint = suggest(&e.key, &names)
                    .map(|s| format!(", did you mean {s:?}?"))
                    .unwrap_or_else(|| format!(" (known fields: {})", names.join(", ")));
                let where_ = if path.is_empty() {
                    "the document"
                } else {
                    path
                };
                r.error(
                    e.key_pos,
                    "",
                    format!("{where_}: unknown field {}{hint}", quote(&e.key)),
                );
            }
        }
    }
    for field in obj.fields.iter().filter(|f| f.required) {
        if node.get(field.name).is_none() {
            r.error(at, path, format!("missing required field {:?}", field.name));
        }
    }
    for group in obj.one_of {
        let mut set: Vec<&super::node::Entry> =
            group.iter().filter_map(|k| node.entry(k)).collect();
        set.sort_by_key(|e| e.key_pos);
        if let [first, second, ..] = set.as_slice() {
            r.error(
                second.key_pos,
                path,
                format!(
                    "{:?} and {:?} cannot both be set (choose one of {})",
                    first.key,
                    second.key,
                    group.join(", ")
                ),
            );
        }
    }
    if let Some(check) = obj.check {
        check(node, path, at, r);
    }
}

/// "expected a string, got the integer 90".
fn expected(what: &str, node: &Node) -> String {
    let mut msg = format!("expected {what}, got {}", node.describe());
    if what == "a string"
        && matches!(
            node.scalar(),
            Some(Typed::Int(_) | Typed::Float(_) | Typed::Bool(_))
        )
    {
        msg.push_str(" (quote it to make it a string)");
    }
    msg
}

/// The known name closest to a misspelled one, if it is close enough.
pub fn suggest<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| {
            (
                edit_distance(&word.to_ascii_lowercase(), &k.to_ascii_lowercase()),
                *k,
            )
        })
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let known = ["connectionPool", "outlierDetection", "tls"];
        assert_eq!(suggest("connectionPol", &known), Some("connectionPool"));
        assert_eq!(suggest("ConnectionPool", &known), Some("connectionPool"));
        assert_eq!(suggest("banana", &known), None);
    }
}
