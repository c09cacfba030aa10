//! Tests of the YAML reader: positions, documents, limits and hostile input.

use super::*;
use crate::policy::node::Typed;

fn one(text: &str) -> Node {
    let p = parse(text);
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert_eq!(p.documents.len(), 1);
    p.documents[0].root.clone()
}

#[test]
fn keys_and_values_carry_one_based_positions() {
    let root = one("a: 1\nspec:\n  host: reviews\n  list:\n  - x\n  - y: 2\n");
    let spec = root.entry("spec").unwrap();
    assert_eq!(spec.key_pos, Pos::new(2, 1));
    let host = spec.value.entry("host").unwrap();
    assert_eq!(host.key_pos, Pos::new(3, 3));
    assert_eq!(host.value.pos, Pos::new(3, 9));
    assert_eq!(root.locate("spec.list[1].y"), Pos::new(6, 8));
    assert_eq!(root.locate("spec.list[0]"), Pos::new(5, 5));
    assert_eq!(root.locate("spec.list"), Pos::new(4, 3));
    // A path that goes further than the tree stops at the last node found.
    assert_eq!(root.locate("spec.host.nothing"), Pos::new(3, 9));
    assert_eq!(root.locate("spec.missing"), Pos::new(2, 1));
}

#[test]
fn splits_documents_and_skips_empty_ones() {
    let p = parse("---\na: 1\n---\n---\n# only a comment\n---\nb: 2\n...\n");
    assert!(p.errors.is_empty());
    let idx: Vec<usize> = p.documents.iter().map(|d| d.index).collect();
    assert_eq!(idx, [0, 3]);
    assert_eq!(
        p.documents[1].root.entry("b").unwrap().key_pos,
        Pos::new(7, 1)
    );
}

#[test]
fn quoted_scalars_stay_strings() {
    let root = one("a: \"90\"\nb: 90\nc: !!str 90\nd: ~\ne: |\n  text\n");
    assert_eq!(root.get("a").unwrap().scalar(), Some(Typed::Str("90")));
    assert_eq!(root.get("b").unwrap().scalar(), Some(Typed::Int(90)));
    assert_eq!(root.get("c").unwrap().scalar(), Some(Typed::Str("90")));
    assert!(root.get("d").is_none());
    assert_eq!(root.get("e").unwrap().as_str(), Some("text\n"));
}

#[test]
fn syntax_errors_keep_earlier_documents() {
    let p = parse("a: 1\n---\nb: [1, 2\n");
    assert_eq!(p.documents.len(), 1);
    assert_eq!(p.errors.len(), 1);
    assert!(p.errors[0].1.starts_with("invalid YAML"), "{:?}", p.errors);
}

#[test]
fn duplicate_keys_are_errors() {
    let p = parse("a: 1\nb: 2\na: 3\n");
    assert_eq!(
        p.errors,
        [(
            Pos::new(3, 1),
            "duplicate key \"a\" (first at line 1)".into()
        )]
    );
}

#[test]
fn nesting_is_capped() {
    let deep = "[".repeat(MAX_DEPTH + 1);
    let p = parse(&deep);
    assert_eq!(p.errors.len(), 1);
    assert!(
        p.errors[0].1.contains("nesting deeper than 64"),
        "{:?}",
        p.errors
    );
    let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
    assert!(parse(&ok).errors.is_empty());
}

#[test]
fn huge_flat_nesting_stays_cheap() {
    let p = parse(&"[".repeat(4 << 20));
    assert!(!p.errors.is_empty());
}

#[test]
fn alias_bombs_are_capped() {
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let prev = format!("*a{}", i - 1);
        let items = [prev.as_str(); 10].join(", ");
        text.push_str(&format!("a{i}: &a{i} [{items}]\n"));
    }
    let p = parse(&text);
    assert!(
        p.errors.iter().any(|e| e.1.contains("YAML values")),
        "{:?}",
        p.errors
    );
}

#[test]
fn document_count_is_capped() {
    let text = "a: 1\n---\n".repeat(MAX_DOCUMENTS + 1);
    let p = parse(&text);
    assert_eq!(p.documents.len(), MAX_DOCUMENTS);
    assert!(p.errors[0].1.contains("documents"));
}

#[test]
fn arbitrary_bytes_do_not_panic() {
    let samples = [
        "\u{0}\u{1}\u{2}",
        "- - - - -\n  - : :\n",
        "{a: [}, ]",
        "? [a]\n: b\n",
        "&a *a",
        "*unknown",
        "a: !!binary xx\n",
        "%YAML 1.2\n%TAG ! x\n---\n!a b",
        "'unterminated",
        "a:\n\t- b",
    ];
    for s in samples {
        let _ = parse(s);
    }
}
