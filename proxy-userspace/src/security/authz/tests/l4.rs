//! TCP connections against rules with HTTP-only fields (Istio's L4 semantics), and the
//! identity-only verdict meant for the kernel.

use super::{ROOT, Req, SLEEP, W, ap, authorizer, httpbin, wl};
use crate::security::Authorizer;

#[test]
fn allow_rules_with_http_fields_never_match_tcp() {
    let a = authorizer(&[ap(
        "foo",
        "p",
        r#"{rules: [{to: [{operation: {methods: ["GET"]}}]}]}"#,
    )]);
    assert!(!Req::tcp().allowed(&a));
    assert!(Req::http().allowed(&a));
    // The whole rule is dropped, even the `to` entry that is TCP-only.
    let rule = r#"{to: [{operation: {ports: ["8000"]}}, {operation: {paths: ["/ip"]}}]}"#;
    let a = authorizer(&[ap("foo", "p", &format!("{{rules: [{rule}]}}"))]);
    assert!(!Req::tcp().allowed(&a));
    assert!(Req::http().allowed(&a));
    // ... but not the other rules.
    let a = authorizer(&[ap(
        "foo",
        "p",
        r#"{rules: [{to: [{operation: {methods: ["GET"]}}]}, {from: [{source: {namespaces: ["foo"]}}]}]}"#,
    )]);
    assert!(Req::tcp().allowed(&a));
    assert!(!Req::tcp().plaintext().allowed(&a));
}

#[test]
fn every_http_only_field_blocks_an_allow_rule_on_tcp() {
    for rule in [
        r#"{to: [{operation: {hosts: ["*"]}}]}"#,
        r#"{to: [{operation: {notHosts: ["x"]}}]}"#,
        r#"{to: [{operation: {notMethods: ["x"]}}]}"#,
        r#"{to: [{operation: {paths: ["*"]}}]}"#,
        r#"{to: [{operation: {notPaths: ["/x"]}}]}"#,
        r#"{from: [{source: {notRequestPrincipals: ["*"]}}]}"#,
        r#"{when: [{key: "request.headers[x-token]", notValues: ["x"]}]}"#,
        r#"{when: [{key: request.auth.principal, notValues: ["x"]}]}"#,
    ] {
        let a = authorizer(&[ap("foo", "p", &format!("{{rules: [{rule}]}}"))]);
        assert!(!Req::tcp().allowed(&a), "{rule}");
        assert!(Req::http().allowed(&a), "{rule}");
    }
}

#[test]
fn deny_rules_ignore_http_fields_on_tcp() {
    let deny = |rule: &str| {
        authorizer(&[ap(
            "foo",
            "d",
            &format!("{{action: DENY, rules: [{rule}]}}"),
        )])
    };
    let d = deny(r#"{to: [{operation: {methods: ["GET"]}}]}"#);
    assert!(!Req::tcp().allowed(&d), "every TCP connection is denied");
    assert!(!Req::http().allowed(&d));
    assert!(Req::tcp().request("POST", "/").allowed(&d));

    // The TCP parts still narrow the rule.
    let d =
        deny(r#"{from: [{source: {namespaces: ["bar"]}}], to: [{operation: {methods: ["GET"]}}]}"#);
    assert!(Req::tcp().allowed(&d));
    assert!(
        !Req::tcp()
            .from("spiffe://cluster.local/ns/bar/sa/x")
            .allowed(&d)
    );
    let d = deny(r#"{to: [{operation: {ports: ["9000"], paths: ["/admin"]}}]}"#);
    assert!(Req::tcp().allowed(&d));
    assert!(!Req::tcp().port(9000).allowed(&d));

    for rule in [
        r#"{to: [{operation: {notPaths: ["/ip"]}}]}"#,
        r#"{when: [{key: "request.headers[x-token]", values: ["admin"]}]}"#,
        r#"{from: [{source: {requestPrincipals: ["*"]}}]}"#,
    ] {
        assert!(!Req::tcp().allowed(&deny(rule)), "{rule}");
    }
}

#[test]
fn audit_rules_are_broadened_like_deny_rules() {
    let a = authorizer(&[ap(
        "foo",
        "audit",
        r#"{action: AUDIT, rules: [{to: [{operation: {paths: ["/admin"]}}]}]}"#,
    )]);
    let d = Req::tcp().decide(&a, &httpbin());
    assert_eq!(
        (d.allowed, d.audited.as_slice()),
        (true, &["foo/audit".to_string()][..])
    );
    assert!(Req::http().decide(&a, &httpbin()).audited.is_empty());
}

fn verdict(a: &Authorizer, w: &W, principal: Option<&str>, port: u16) -> Option<bool> {
    a.l4_identity_verdict(&w.get(), principal, port)
}

#[test]
fn identity_verdict_for_identity_and_port_policies() {
    let none = authorizer(&[]);
    assert_eq!(verdict(&none, &httpbin(), None, 80), Some(true));

    let a = authorizer(&[
        ap(
            "foo",
            "deny-bar",
            r#"{action: DENY, rules: [{from: [{source: {namespaces: ["bar"]}}]}]}"#,
        ),
        ap(
            "foo",
            "allow",
            r#"{rules: [{from: [{source: {principals: ["*"]}}], to: [{operation: {ports: ["8000"]}}]},
            {when: [{key: source.serviceAccount, values: ["baz/x"]}, {key: destination.port, notValues: ["22"]}]}]}"#,
        ),
        ap(
            "foo",
            "audit-http",
            r#"{action: AUDIT, rules: [{to: [{operation: {paths: ["/x"]}}]}]}"#,
        ),
    ]);
    let w = httpbin();
    assert_eq!(verdict(&a, &w, Some(SLEEP), 8000), Some(true));
    assert_eq!(verdict(&a, &w, Some(SLEEP), 9000), Some(false));
    assert_eq!(verdict(&a, &w, None, 8000), Some(false));
    assert_eq!(
        verdict(&a, &w, Some("spiffe://cluster.local/ns/bar/sa/x"), 8000),
        Some(false)
    );
    assert_eq!(
        verdict(&a, &w, Some("spiffe://cluster.local/ns/baz/sa/x"), 9000),
        Some(true)
    );
    assert_eq!(
        verdict(&a, &w, Some("spiffe://cluster.local/ns/baz/sa/x"), 22),
        Some(false)
    );

    // The verdict is what evaluation says for any address and any request.
    for (principal, port) in [(Some(SLEEP), 8000), (None, 8000), (Some(SLEEP), 9000)] {
        let expected = verdict(&a, &w, principal, port).unwrap();
        let base = Req {
            principal: principal.map(str::to_string),
            ..Req::tcp()
        }
        .port(port);
        for req in [
            base.clone(),
            base.clone().src("fd00::1").dst("10.9.9.9"),
            base.request("DELETE", "/x"),
        ] {
            assert_eq!(req.decide(&a, &w).allowed, expected, "{req:?}");
        }
    }
}

#[test]
fn identity_verdict_is_unknown_when_other_attributes_matter() {
    for (name, spec) in [
        (
            "ip",
            r#"{rules: [{from: [{source: {ipBlocks: ["10.0.0.0/8"]}}]}]}"#,
        ),
        (
            "remote",
            r#"{action: DENY, rules: [{from: [{source: {notRemoteIpBlocks: ["10.0.0.0/8"]}}]}]}"#,
        ),
        (
            "dst-ip",
            r#"{rules: [{when: [{key: destination.ip, values: ["10.0.0.9"]}]}]}"#,
        ),
        (
            "method",
            r#"{action: DENY, rules: [{to: [{operation: {methods: ["GET"]}}]}]}"#,
        ),
        ("host", r#"{rules: [{to: [{operation: {hosts: ["a"]}}]}]}"#),
        (
            "jwt",
            r#"{rules: [{from: [{source: {requestPrincipals: ["*"]}}]}]}"#,
        ),
        (
            "header",
            r#"{action: DENY, rules: [{when: [{key: "request.headers[a]", values: ["b"]}]}]}"#,
        ),
    ] {
        let a = authorizer(&[ap("foo", name, spec)]);
        assert_eq!(verdict(&a, &httpbin(), Some(SLEEP), 8000), None, "{name}");
        // Policies that do not apply to the workload do not matter.
        assert_eq!(
            verdict(&a, &wl("bar", &[]), Some(SLEEP), 8000),
            Some(true),
            "{name}"
        );
    }
    let sel = ap(
        "foo",
        "s",
        r#"{selector: {matchLabels: {app: other}}, rules: [{to: [{operation: {paths: ["/"]}}]}]}"#,
    );
    let mesh = ap(
        ROOT,
        "deny-bar",
        r#"{action: DENY, rules: [{from: [{source: {namespaces: ["bar"]}}]}]}"#,
    );
    let a = authorizer(&[sel, mesh]);
    assert_eq!(verdict(&a, &httpbin(), Some(SLEEP), 1), Some(true));
    assert_eq!(
        verdict(&a, &httpbin(), Some("spiffe://td/ns/bar/sa/x"), 1),
        Some(false)
    );
}

#[test]
fn only_policies_reading_request_attributes_need_each_request() {
    let a = authorizer(&[ap(
        "foo",
        "d",
        r#"{action: DENY, rules: [{from: [{source: {namespaces: ["bar"]}}], to: [{operation: {ports: ["80"]}}]}]}"#,
    )]);
    assert!(!a.reads_http(&httpbin().get()));
    let a = authorizer(&[ap(
        "foo",
        "p",
        r#"{rules: [{to: [{operation: {paths: ["/ip"]}}]}]}"#,
    )]);
    assert!(a.reads_http(&httpbin().get()));
    assert!(!a.reads_http(&wl("bar", &[]).get()), "not selected");
    assert!(!authorizer(&[]).reads_http(&httpbin().get()));
}

#[test]
fn identity_denied_by_a_deny_rule_even_beside_http_policies() {
    let deny = ap(
        "foo",
        "d",
        r#"{action: DENY, rules: [{from: [{source: {namespaces: ["bar"]}}]}]}"#,
    );
    let allow = ap(
        "foo",
        "p",
        r#"{rules: [{to: [{operation: {paths: ["/ip"]}}]}]}"#,
    );
    let a = authorizer(&[deny, allow]);
    let w = httpbin();
    assert!(a.identity_denied(&w.get(), Some("spiffe://td/ns/bar/sa/x"), 80));
    // The ALLOW policy reads paths: nothing else is decidable without the request.
    assert!(!a.identity_denied(&w.get(), Some(SLEEP), 80));
}
