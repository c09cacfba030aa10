//! Validates one document: that it is a resource meshd reads, then its metadata and spec against
//! the schema of its kind.

use super::{
    finding::Pos,
    kinds::{self, KindInfo},
    node::Node,
    report::Report,
    schema::{Obj, STR, Ty, common::METADATA, obj, opt, req},
    walk,
};

/// The fields every resource has; `spec` is checked against the kind's own schema.
static ENVELOPE: Obj = obj(&[
    req("apiVersion", STR),
    req("kind", STR),
    req("metadata", Ty::Obj(&METADATA)),
    opt("spec", Ty::Any),
    opt("status", Ty::Any),
]);

/// Validates a document; returns its kind when it is one meshd reads (even if it has errors).
pub fn document(root: &Node, r: &mut Report) -> Option<&'static KindInfo> {
    if root.entries().is_none() {
        r.error(
            root.pos,
            "",
            format!(
                "expected a resource (a mapping with apiVersion, kind, metadata and spec), got {}",
                root.describe()
            ),
        );
        return None;
    }
    let api = root.get("apiVersion").and_then(Node::as_str);
    let kind = root.get("kind").and_then(Node::as_str);
    let (Some(api), Some(kind)) = (api, kind) else {
        // Report what is missing or mistyped through the envelope's own checks.
        walk::check(root, &Ty::Obj(&ENVELOPE), "", root.pos, r);
        return None;
    };
    let info = match kinds::resolve(api, kind) {
        Ok(info) => info,
        Err(not_read) => {
            let at = root.get("kind").map_or(root.pos, |n| n.pos);
            match not_read {
                kinds::NotRead::Error(msg) => r.error(at, "kind", msg),
                kinds::NotRead::Skipped(msg) => r.warn(at, "kind", msg),
            }
            return None;
        }
    };
    walk::check(root, &Ty::Obj(&ENVELOPE), "", root.pos, r);
    if kind == "ServiceEntry" {
        traffic_distribution_annotation(root, r);
    }
    match root.entry("spec") {
        Some(spec) => walk::check(&spec.value, &Ty::Obj(info.spec), "spec", spec.key_pos, r),
        None if info.spec_optional => {}
        None => r.error(root.pos, "", "missing required field \"spec\""),
    }
    Some(info)
}

/// Istio's annotation for a ServiceEntry's `trafficDistribution`.
fn traffic_distribution_annotation(root: &Node, r: &mut Report) {
    let key = super::model::TRAFFIC_DISTRIBUTION;
    let found =
        (root.get("metadata").and_then(|m| m.get("annotations"))).and_then(|a| a.entry(key));
    if let Some(e) = found {
        traffic_distribution(&e.value, &format!("metadata.annotations.{key}"), r);
    }
}

/// A `trafficDistribution` value (the field's or the annotation's): one meshd does not know is
/// ignored with a warning, as Kubernetes lets implementations ignore values they do not know.
pub fn traffic_distribution(value: &Node, path: &str, r: &mut Report) {
    let text = value.as_str().unwrap_or_default();
    if super::model::TrafficDistribution::parse(text).is_none() {
        r.warn(
            value.pos,
            path,
            format!(
                "{text:?} is not PreferSameZone, PreferClose or PreferSameNode; endpoints are \
                 not ranked by distance"
            ),
        );
    }
}

/// Where the document's `metadata.name` is, for findings about the resource as a whole.
pub fn name_pos(root: &Node) -> Pos {
    root.get("metadata")
        .and_then(|m| m.get("name"))
        .map_or(root.pos, |n| n.pos)
}

#[cfg(test)]
mod tests;
