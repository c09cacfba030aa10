//! The shape of every resource, declared as data: which fields an object allows, their types and
//! ranges. `walk` checks a YAML tree against it; per-object `check` functions add the rules that
//! span several fields.

use super::{duration, node::Node, report::Report, rules::StrRule};

/// What a value must be.
pub enum Ty {
    /// Anything; not read by meshd (for example Kubernetes-managed metadata).
    Any,
    Str(StrRule),
    Bool,
    Int(IntRule),
    /// A number (integers accepted) within an inclusive range.
    Num(f64, f64),
    Duration(duration::Rule),
    Enum(&'static [&'static str]),
    List(&'static Ty),
    /// A mapping with free keys checked by the rule, and values of one type.
    Map(StrRule, &'static Ty),
    Obj(&'static Obj),
}

/// An integer within an inclusive range; `hint` is appended when a value is below `min`.
pub struct IntRule {
    pub min: i64,
    pub max: i64,
    pub hint: &'static str,
}

/// Cross-field rules of an object: gets the object's node, its path and the position to blame for
/// the object as a whole.
pub type Check = fn(&Node, &str, super::finding::Pos, &mut Report);

/// An object type: its fields, groups of fields of which at most one may be set, and extra checks.
pub struct Obj {
    pub fields: &'static [Field],
    pub one_of: &'static [&'static [&'static str]],
    pub check: Option<Check>,
}

pub struct Field {
    pub name: &'static str,
    pub ty: Ty,
    pub required: bool,
    /// A warning printed when the field is set (deprecated or not implemented by meshd).
    pub warn: Option<&'static str>,
}

pub const fn int(min: i64, max: i64) -> Ty {
    Ty::Int(IntRule { min, max, hint: "" })
}

pub const fn limit(min: i64, max: i64, hint: &'static str) -> Ty {
    Ty::Int(IntRule { min, max, hint })
}

pub const fn opt(name: &'static str, ty: Ty) -> Field {
    Field {
        name,
        ty,
        required: false,
        warn: None,
    }
}

pub const fn req(name: &'static str, ty: Ty) -> Field {
    Field {
        name,
        ty,
        required: true,
        warn: None,
    }
}

/// A field accepted for compatibility, with a warning when set.
pub const fn warned(name: &'static str, ty: Ty, warn: &'static str) -> Field {
    Field {
        name,
        ty,
        required: false,
        warn: Some(warn),
    }
}

pub const fn obj(fields: &'static [Field]) -> Obj {
    Obj {
        fields,
        one_of: &[],
        check: None,
    }
}

pub const STR: Ty = Ty::Str(super::rules::any);
pub const PORT: Ty = int(1, 65535);
pub const PERCENT: Ty = Ty::Num(0.0, 100.0);
pub const DURATION: Ty = Ty::Duration(duration::Rule::AT_LEAST_1MS);
pub const NOTE_UNSUPPORTED: &str = "meshd does not implement this field yet; it is ignored";
pub const NOTE_EVERY_NAMESPACE: &str =
    "meshd applies every resource to clients in every namespace; exportTo is ignored";

pub mod common;
pub mod destination_rule;
pub mod rate_limit;
pub mod security;
pub mod service_entry;
pub mod virtual_service;
