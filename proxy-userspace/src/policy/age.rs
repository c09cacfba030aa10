//! Istio's order for resources that compete: the oldest by `metadata.creationTimestamp` first,
//! then by name, then by namespace, as istiod sorts them before it picks a VirtualService for a
//! host or merges the DestinationRules of one host.

use super::model::{Located, Metadata, Resource};

/// The resources, oldest first (see [`Metadata::age_order`]), whatever files they came from.
pub fn oldest_first<S>(items: &[Located<Resource<S>>]) -> Vec<&Located<Resource<S>>> {
    let mut out: Vec<_> = items.iter().collect();
    out.sort_by(|a, b| a.metadata.age_order(&b.metadata));
    out
}

/// Why `first` comes before `later` in that order, for a message: "older by creationTimestamp
/// (...)", or "same age, name order".
pub fn why_first(first: &Metadata, later: &Metadata) -> String {
    let (a, b) = (&first.creation_timestamp, &later.creation_timestamp);
    let age = match (a, b) {
        (Some(a), Some(b)) if a != b => {
            return format!("older by creationTimestamp: {a}, this one {b}");
        }
        (None, Some(b)) => {
            return format!(
                "older by creationTimestamp: it has none, which counts as the oldest, this one {b}"
            );
        }
        (None, None) => "same age (neither has a creationTimestamp)",
        _ => "same age",
    };
    if first.name != later.name {
        format!("{age}, name order")
    } else {
        format!("{age} and name, namespace order")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(ns: &str, name: &str, created: Option<&str>) -> Metadata {
        Metadata {
            name: name.into(),
            namespace: ns.into(),
            creation_timestamp: created.map(Into::into),
            ..Metadata::default()
        }
    }

    #[test]
    fn the_oldest_comes_first_then_the_name_then_the_namespace() {
        let newer = meta("a", "a", Some("2024-02-01T00:00:00Z"));
        let older = meta("z", "z", Some("2024-01-01T00:00:00Z"));
        let none = meta("z", "zz", None);
        assert!(older.age_order(&newer).is_lt());
        assert!(none.age_order(&older).is_lt());
        assert_eq!(
            why_first(&older, &newer),
            "older by creationTimestamp: 2024-01-01T00:00:00Z, this one 2024-02-01T00:00:00Z"
        );
        assert!(why_first(&none, &older).contains("it has none, which counts as the oldest"));

        let (b, a) = (meta("a", "b", None), meta("z", "a", None));
        assert!(a.age_order(&b).is_lt(), "name before namespace, as Istio");
        assert_eq!(
            why_first(&a, &b),
            "same age (neither has a creationTimestamp), name order"
        );
        let (x, y) = (meta("x", "vs", None), meta("y", "vs", None));
        assert!(x.age_order(&y).is_lt());
        assert!(why_first(&x, &y).ends_with("and name, namespace order"));
        let t = Some("2024-01-01T00:00:00Z");
        assert_eq!(
            why_first(&meta("a", "a", t), &meta("a", "b", t)),
            "same age, name order"
        );
    }
}
