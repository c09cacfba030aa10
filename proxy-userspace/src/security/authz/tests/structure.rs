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
    // DENY without rules is refused as Istio refuses it; compiled anyway, it denies nothing.
    let deny = serde_json::json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "d", "namespace": "foo"}, "spec": {"action": "DENY"}});
    let (d, _) = super::compile_json(&[deny]);
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

/// An AuthorizationPolicy document annotated `istio.io/dry-run: <value>`.
fn dry(name: &str, value: &str, spec: &str) -> String {
    ap("foo", name, spec).replacen(
        &format!("metadata: {{name: {name}, namespace: foo}}"),
        &format!(
            "metadata: {{name: {name}, namespace: foo, annotations: {{istio.io/dry-run: \"{value}\"}}}}"
        ),
        1,
    )
}

#[test]
fn dry_run_policies_are_evaluated_apart_and_enforce_nothing() {
    let deny_get = r#"{action: DENY, rules: [{to: [{operation: {methods: ["GET"]}}]}]}"#;
    let allow_post = r#"{rules: [{to: [{operation: {methods: ["POST"]}}]}]}"#;
    let a = authorizer(&[
        dry("deny-get", "true", deny_get),
        dry("allow-post", "True", allow_post),
    ]);
    let get = Req::tcp()
        .request("GET", "/ip")
        .decide(&a, &super::httpbin());
    assert!(get.allowed, "nothing is enforced");
    assert_eq!(get.reason, "no ALLOW policy applies");
    let shadow: Vec<String> = get.dry_run.iter().map(ToString::to_string).collect();
    assert_eq!(
        shadow,
        [
            "no dry-run ALLOW policy matched: would deny",
            "dry-run DENY policy foo/deny-get would deny",
        ]
    );
    let post = Req::tcp()
        .request("POST", "/ip")
        .decide(&a, &super::httpbin());
    let shadow: Vec<String> = post.dry_run.iter().map(ToString::to_string).collect();
    assert_eq!(
        shadow,
        [
            "dry-run ALLOW policy foo/allow-post would allow",
            "no dry-run DENY policy matched: would allow",
        ]
    );

    // Enforced policies decide as before, beside the dry-run ones.
    let a = authorizer(&[
        dry("deny-get", "true", deny_get),
        ap("foo", "deny-all", "{action: DENY, rules: [{}]}"),
    ]);
    let d = Req::tcp().request("PUT", "/").decide(&a, &super::httpbin());
    assert!(!d.allowed);
    assert_eq!(d.reason, "denied by DENY policy foo/deny-all");
    assert_eq!(d.dry_run.len(), 1);
    assert!(d.dry_run[0].allowed);
    // "false" is enforced; so is a value that is not a boolean, with an error.
    let a = authorizer(&[dry("deny-get", "false", deny_get)]);
    assert!(!Req::tcp().request("GET", "/").allowed(&a));
    let set = crate::policy::load_str("t.yaml".as_ref(), &dry("deny-get", "yes please", deny_get))
        .expect("valid");
    let (a, errors) = super::Authorizer::from_set(&set, super::ROOT);
    assert_eq!(
        errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            "AuthorizationPolicy foo/deny-get: annotation istio.io/dry-run: \"yes please\" is not true or false; the policy is enforced"
        ]
    );
    assert!(!Req::tcp().request("GET", "/").allowed(&a));
}

#[test]
fn dry_run_deny_policies_are_not_enforced_in_the_kernel() {
    let deny_sleep = format!(
        r#"{{action: DENY, rules: [{{from: [{{source: {{principals: ["{SLEEP_P}"]}}}}]}}]}}"#
    );
    let w = super::httpbin();
    let enforced = authorizer(&[ap("foo", "d", &deny_sleep)]);
    assert!(enforced.identity_denied(&w.get(), Some(SLEEP_P), 8000));
    let dry_run = authorizer(&[dry("d", "true", &deny_sleep)]);
    assert!(!dry_run.identity_denied(&w.get(), Some(SLEEP_P), 8000));
    assert_eq!(
        dry_run.l4_identity_verdict(&w.get(), Some(SLEEP_P), 8000),
        Some(true)
    );
}
