//! How rules combine: AND and OR structure, empty rules and specs, DENY before ALLOW, AUDIT,
//! and which policy a decision names.

use super::{Req, ap, authorizer};

const SLEEP_P: &str = "cluster.local/ns/foo/sa/sleep";

fn allow(rules: &str) -> super::Authorizer {
    authorizer(&[ap("foo", "p", &format!("{{rules: {rules}}}"))])
}

#[test]
fn fields_of_one_source_are_anded_values_ored() {
    let a = allow(&format!(
        r#"[{{from: [{{source: {{principals: ["{SLEEP_P}"], namespaces: ["bar"]}}}}]}}]"#
    ));
    assert!(
        !Req::http().allowed(&a),
        "principal matches, namespace does not"
    );
    let a = allow(&format!(
        r#"[{{from: [{{source: {{principals: ["{SLEEP_P}"], namespaces: ["bar", "foo"]}}}}]}}]"#
    ));
    assert!(Req::http().allowed(&a));
}

#[test]
fn fields_of_one_operation_are_anded() {
    let a = allow(r#"[{to: [{operation: {methods: ["GET"], paths: ["/ip"]}}]}]"#);
    assert!(!Req::http().allowed(&a));
    assert!(Req::tcp().request("GET", "/ip").allowed(&a));
    assert!(!Req::tcp().request("POST", "/ip").allowed(&a));
}

#[test]
fn from_entries_are_ored_to_entries_are_ored() {
    let a =
        allow(r#"[{from: [{source: {namespaces: ["bar"]}}, {source: {namespaces: ["foo"]}}]}]"#);
    assert!(Req::http().allowed(&a));
    let a =
        allow(r#"[{to: [{operation: {methods: ["POST"]}}, {operation: {paths: ["/status/*"]}}]}]"#);
    assert!(Req::http().allowed(&a));
    assert!(!Req::tcp().request("PUT", "/ip").allowed(&a));
}

#[test]
fn from_to_and_when_are_anded() {
    let rule = r#"[{from: [{source: {namespaces: ["foo"]}}], to: [{operation: {methods: ["GET"]}}],
        when: [{key: "request.headers[x-token]", values: ["abc"]}]}]"#;
    let a = allow(rule);
    assert!(Req::http().allowed(&a));
    assert!(
        !Req::http()
            .from("spiffe://cluster.local/ns/bar/sa/x")
            .allowed(&a)
    );
    assert!(!Req::tcp().request("POST", "/").allowed(&a));
    assert!(!Req::http().header("x-token", "nope").allowed(&a));
}

#[test]
fn several_when_conditions_are_anded() {
    let a = allow(
        r#"[{when: [{key: source.namespace, values: ["foo"]}, {key: destination.port, values: ["9000"]}]}]"#,
    );
    assert!(!Req::http().allowed(&a));
    assert!(Req::http().port(9000).allowed(&a));
}

#[test]
fn rules_are_ored() {
    let a = allow(
        r#"[{to: [{operation: {ports: ["9000"]}}]}, {from: [{source: {namespaces: ["foo"]}}]}]"#,
    );
    assert!(Req::http().allowed(&a));
    assert!(Req::http().plaintext().port(9000).allowed(&a));
    assert!(!Req::http().plaintext().allowed(&a));
}

#[test]
fn an_empty_rule_matches_everything() {
    let a = allow("[{}]");
    assert!(Req::http().allowed(&a));
    assert!(Req::tcp().plaintext().allowed(&a));
    let d = authorizer(&[ap("foo", "d", "{action: DENY, rules: [{}]}")]);
    assert!(!Req::tcp().allowed(&d));
}

#[test]
fn no_rules_match_nothing() {
    // ALLOW without rules: the workload has an ALLOW policy and nothing matches it.
    for spec in ["{}", "{rules: []}", "{action: ALLOW}"] {
        let a = authorizer(&[ap("foo", "p", spec)]);
        for req in [Req::tcp(), Req::http(), Req::tcp().plaintext()] {
            let d = req.decide(&a, &super::httpbin());
            assert!(!d.allowed, "{spec}");
            assert_eq!(d.reason, "no ALLOW policy matched");
            assert_eq!(d.policy, None);
        }
    }
    // DENY without rules denies nothing.
    let d = authorizer(&[ap("foo", "d", "{action: DENY}")]);
    assert!(Req::http().allowed(&d));
}

#[test]
fn no_policy_allows() {
    let a = authorizer(&[]);
    let d = Req::tcp().decide(&a, &super::httpbin());
    assert!(d.allowed);
    assert_eq!(
        (d.policy, d.reason.as_str()),
        (None, "no ALLOW policy applies")
    );
}

#[test]
fn deny_wins_over_allow() {
    let a = authorizer(&[
        ap("foo", "allow-all", "{rules: [{}]}"),
        ap(
            "foo",
            "deny-get",
            r#"{action: DENY, rules: [{to: [{operation: {methods: ["GET"]}}]}]}"#,
        ),
    ]);
    let d = Req::http().decide(&a, &super::httpbin());
    assert!(!d.allowed);
    assert_eq!(d.policy.as_deref(), Some("foo/deny-get"));
    assert_eq!(d.reason, "denied by DENY policy foo/deny-get");
    let d = Req::tcp()
        .request("POST", "/")
        .decide(&a, &super::httpbin());
    assert!(d.allowed);
    assert_eq!(d.policy.as_deref(), Some("foo/allow-all"));
    assert_eq!(d.reason, "allowed by ALLOW policy foo/allow-all");
}

#[test]
fn any_matching_allow_policy_allows() {
    let a = authorizer(&[
        ap(
            "foo",
            "a",
            r#"{rules: [{to: [{operation: {ports: ["9000"]}}]}]}"#,
        ),
        ap(
            "foo",
            "b",
            r#"{rules: [{to: [{operation: {ports: ["8000"]}}]}]}"#,
        ),
    ]);
    let d = Req::tcp().decide(&a, &super::httpbin());
    assert_eq!((d.allowed, d.policy.as_deref()), (true, Some("foo/b")));
    assert!(!Req::tcp().port(7000).allowed(&a));
}

#[test]
fn the_deciding_policy_does_not_depend_on_file_order() {
    let deny = |name: &str| ap("foo", name, "{action: DENY, rules: [{}]}");
    for docs in [[deny("b"), deny("a")], [deny("a"), deny("b")]] {
        let d = Req::tcp().decide(&authorizer(&docs), &super::httpbin());
        assert_eq!(d.policy.as_deref(), Some("foo/a"));
    }
}

#[test]
fn audit_policies_are_reported_and_decide_nothing() {
    let audit = |name: &str, port: &str| {
        let spec = format!(
            r#"{{action: AUDIT, rules: [{{to: [{{operation: {{ports: ["{port}"]}}}}]}}]}}"#
        );
        ap("foo", name, &spec)
    };
    let a = authorizer(&[audit("b", "8000"), audit("a", "8000"), audit("c", "9000")]);
    let d = Req::tcp().decide(&a, &super::httpbin());
    assert!(d.allowed);
    assert_eq!(d.audited, ["foo/a", "foo/b"]);
    assert_eq!(d.reason, "no ALLOW policy applies");

    let mut docs = vec![
        audit("a", "8000"),
        ap("foo", "deny", "{action: DENY, rules: [{}]}"),
    ];
    let d = Req::tcp().decide(&authorizer(&docs), &super::httpbin());
    assert_eq!(
        (d.allowed, d.audited.as_slice()),
        (false, &["foo/a".to_string()][..])
    );
    docs[1] = ap("foo", "nothing", "{}");
    let d = Req::tcp().decide(&authorizer(&docs), &super::httpbin());
    assert!(!d.allowed, "an AUDIT policy is not an ALLOW policy");
    assert_eq!(d.audited, ["foo/a"]);
}
