//! Turns a validated YAML tree into a typed resource (through serde_json's value model).

use serde::de::DeserializeOwned;

use super::node::{Node, Typed, Value};

/// The JSON form of a tree: plain scalars typed by YAML's core schema, null fields dropped.
pub fn to_json(node: &Node) -> serde_json::Value {
    use serde_json::Value as J;
    match &node.value {
        Value::Null => J::Null,
        Value::Scalar(s) => match s.typed() {
            Typed::Str(t) => J::String(t.to_string()),
            Typed::Int(i) => J::from(i),
            Typed::Float(f) => serde_json::Number::from_f64(f).map_or(J::Null, J::Number),
            Typed::Bool(b) => J::Bool(b),
        },
        Value::Seq(items) => J::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => J::Object(
            entries
                .iter()
                .filter(|e| !e.value.is_null())
                .map(|e| (e.key.clone(), to_json(&e.value)))
                .collect(),
        ),
    }
}

/// Deserializes a validated tree. An error here means the schema and the typed model disagree.
pub fn typed<T: DeserializeOwned>(node: &Node) -> Result<T, String> {
    serde_json::from_value(to_json(node)).map_err(|e| e.to_string())
}
