//! Which workloads a policy applies to, and what compilation reports and leaves out.

use serde_json::json;

use super::{ROOT, Req, ap, authorizer, compile_json, httpbin, wl};
use crate::security::{Authorizer, SecurityError};

const DENY_ALL: &str = "{action: DENY, rules: [{}]}";

#[test]
fn root_namespace_policy_without_selector_is_mesh_wide() {
    let a = authorizer(&[ap(ROOT, "deny-all", DENY_ALL)]);
    for w in [httpbin(), wl("bar", &[]), wl(ROOT, &[("app", "x")])] {
        let d = Req::tcp().decide(&a, &w);
        assert_eq!(
            d.policy.as_deref(),
            Some("istio-system/deny-all"),
            "{}",
            w.ns
        );
    }
}

#[test]
fn namespace_policy_without_selector_applies_to_its_namespace_only() {
    let a = authorizer(&[ap("foo", "deny-all", DENY_ALL)]);
    assert!(!Req::tcp().decide(&a, &wl("foo", &[])).allowed);
    assert!(
        Req::tcp()
            .decide(&a, &wl("bar", &[("app", "httpbin")]))
            .allowed
    );
    assert!(Req::tcp().decide(&a, &wl(ROOT, &[])).allowed);
}

#[test]
fn selector_needs_every_label_in_the_policy_namespace() {
    let spec = "{selector: {matchLabels: {app: httpbin, version: v1}}, action: DENY, rules: [{}]}";
    let a = authorizer(&[ap("foo", "p", spec)]);
    assert!(!Req::tcp().decide(&a, &httpbin()).allowed);
    let more = wl("foo", &[("app", "httpbin"), ("version", "v1"), ("x", "y")]);
    assert!(!Req::tcp().decide(&a, &more).allowed);
    assert!(
        Req::tcp()
            .decide(&a, &wl("foo", &[("app", "httpbin")]))
            .allowed
    );
    let v2 = wl("foo", &[("app", "httpbin"), ("version", "v2")]);
    assert!(Req::tcp().decide(&a, &v2).allowed);
    let elsewhere = wl("bar", &[("app", "httpbin"), ("version", "v1")]);
    assert!(Req::tcp().decide(&a, &elsewhere).allowed);
}

#[test]
fn root_namespace_policy_with_selector_applies_in_every_namespace() {
    let spec = "{selector: {matchLabels: {app: httpbin}}, action: DENY, rules: [{}]}";
    let a = authorizer(&[ap(ROOT, "p", spec)]);
    assert!(!Req::tcp().decide(&a, &httpbin()).allowed);
    assert!(
        !Req::tcp()
            .decide(&a, &wl("bar", &[("app", "httpbin")]))
            .allowed
    );
    assert!(
        Req::tcp()
            .decide(&a, &wl("bar", &[("app", "other")]))
            .allowed
    );
}

#[test]
fn an_empty_selector_selects_the_whole_scope() {
    let a = authorizer(&[ap(
        "foo",
        "p",
        "{selector: {matchLabels: {}}, action: DENY, rules: [{}]}",
    )]);
    assert!(!Req::tcp().decide(&a, &wl("foo", &[])).allowed);
    assert!(Req::tcp().decide(&a, &wl("bar", &[])).allowed);
}

#[test]
fn the_root_namespace_is_configurable() {
    let p: crate::policy::model::AuthorizationPolicy = serde_json::from_value(json!({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "deny", "namespace": "mesh-root"},
        "spec": {"action": "DENY", "rules": [{}]}
    }))
    .unwrap();
    let (a, _) = Authorizer::compile([&p], "mesh-root");
    assert!(!Req::tcp().decide(&a, &httpbin()).allowed);
    let (a, _) = Authorizer::compile([&p], ROOT);
    assert!(Req::tcp().decide(&a, &httpbin()).allowed);
}

#[test]
fn selected_lists_the_applicable_policies_in_name_order() {
    let a = authorizer(&[
        ap("foo", "z-ns", "{}"),
        ap("foo", "sel", "{selector: {matchLabels: {app: httpbin}}}"),
        ap("foo", "other", "{selector: {matchLabels: {app: other}}}"),
        ap("bar", "bar", "{}"),
        ap(ROOT, "mesh", "{}"),
    ]);
    assert_eq!(a.len(), 5);
    let w = httpbin();
    assert_eq!(
        a.selected(&w.get()),
        ["foo/sel", "foo/z-ns", "istio-system/mesh"]
    );
}

fn policy(name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
           "metadata": {"name": name, "namespace": "foo"}, "spec": spec})
}

#[test]
fn custom_policies_fail_closed_and_unknown_actions_are_left_out() {
    let (a, errors) = compile_json(&[
        policy(
            "ext",
            json!({"action": "CUSTOM", "provider": {"name": "opa"}, "rules": [{}]}),
        ),
        policy("typo", json!({"action": "Deny", "rules": [{}]})),
    ]);
    assert_eq!(a.len(), 1, "the CUSTOM policy, as a deny-all");
    assert_eq!(
        errors[0],
        SecurityError::CustomUnsupported {
            policy: "foo/ext".into()
        }
    );
    assert!(
        errors[0]
            .to_string()
            .contains("AuthorizationPolicy foo/ext: action CUSTOM")
    );
    assert!(
        matches!(&errors[1], SecurityError::UnknownAction { policy, .. } if policy == "foo/typo")
    );
    assert!(!Req::tcp().allowed(&a), "fails closed");
}

#[test]
fn rules_with_invalid_values_are_skipped_and_reported() {
    let bad_ip = json!({"from": [{"source": {"notIpBlocks": ["10.0.0.0/33"]}}]});
    let (a, errors) = compile_json(&[policy("allow", json!({"rules": [bad_ip]}))]);
    assert_eq!(
        errors[0].to_string(),
        "AuthorizationPolicy foo/allow: rules[0]: from[0].source.notIpBlocks: \"10.0.0.0/33\" is \
         not an IP address or CIDR block; the rule is skipped (an ALLOW policy allows less, a \
         DENY policy denies less)"
    );
    assert!(
        !Req::tcp().allowed(&a),
        "the ALLOW policy is left without rules"
    );

    let bad = [
        (
            json!({"to": [{"operation": {"ports": ["http"]}}]}),
            "to[0].operation.ports",
        ),
        (
            json!({"to": [{"operation": {"notPaths": ["/a/{*}x"]}}]}),
            "to[0].operation.notPaths",
        ),
        (
            json!({"from": [{"source": {"serviceAccounts": ["foo/sleep/x"]}}]}),
            "from[0].source.serviceAccounts",
        ),
        (
            json!({"when": [{"key": "destination.port", "values": ["0"]}]}),
            "when[0].values",
        ),
        (
            json!({"when": [{"key": "source.user", "values": ["x"]}]}),
            "when[0].key",
        ),
        (
            json!({"when": [{"key": "request.headers[]", "values": ["x"]}]}),
            "when[0].key",
        ),
    ];
    for (rule, field) in bad {
        let spec = json!({"action": "DENY", "rules": [{}, rule]});
        let (a, errors) = compile_json(&[policy("deny", spec)]);
        assert!(
            matches!(&errors[..], [SecurityError::InvalidValue { rule: 1, field: f, .. }] if f == field),
            "{errors:?}"
        );
        assert!(!Req::tcp().allowed(&a), "the valid rule stays");
    }
}

#[test]
fn unobservable_conditions_never_allow_and_never_narrow_a_deny() {
    let sni = json!({"when": [{"key": "connection.sni", "values": ["httpbin.foo"]}]});
    let (a, errors) = compile_json(&[policy("allow", json!({"rules": [sni]}))]);
    assert!(
        matches!(&errors[..], [SecurityError::UnsupportedCondition { key, .. }] if key == "connection.sni")
    );
    assert!(!Req::tcp().allowed(&a));
    assert!(!Req::http().allowed(&a));
    let (d, _) = compile_json(&[policy("deny", json!({"action": "DENY", "rules": [sni]}))]);
    assert!(!Req::tcp().allowed(&d));
    assert!(!Req::http().allowed(&d));
}

/// A ServiceEntry document in `ns`; `spec` is YAML flow style.
fn se(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"
    )
}

#[test]
fn target_refs_apply_a_policy_to_the_workloads_behind_the_service() {
    let a = authorizer(&[
        se(
            "foo",
            "httpbin",
            "{hosts: [httpbin.foo.svc.cluster.local], ports: [{number: 80, name: http}], workloadSelector: {labels: {app: httpbin}}}",
        ),
        ap(
            "foo",
            "deny-httpbin",
            "{targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: httpbin}], action: DENY, rules: [{}]}",
        ),
    ]);
    assert!(!Req::tcp().decide(&a, &httpbin()).allowed);
    // Not the namespace's other workloads, as a policy without a selector would be.
    assert!(
        Req::tcp()
            .decide(&a, &wl("foo", &[("app", "other")]))
            .allowed
    );
    assert!(
        Req::tcp()
            .decide(&a, &wl("bar", &[("app", "httpbin")]))
            .allowed
    );
}

#[test]
fn a_service_target_is_its_endpoints_by_their_labels() {
    // As meshd renders a Kubernetes Service: endpoints with their pods' labels, and meshd's node
    // label on those of other nodes, which workloads do not carry.
    let a = authorizer(&[
        se(
            "foo",
            "httpbin",
            "{hosts: [httpbin.foo.svc.cluster.local], ports: [{number: 80, name: http}], endpoints: [{address: 10.0.0.1, labels: {app: httpbin, version: v1}}, {address: 10.0.0.2, labels: {app: httpbin, version: v2, meshd.io/node: 10.1.0.2}}]}",
        ),
        ap(
            "foo",
            "allow-none",
            "{targetRef: {kind: Service, name: httpbin}, rules: []}",
        ),
    ]);
    assert!(!Req::tcp().decide(&a, &httpbin()).allowed);
    let v2 = wl("foo", &[("app", "httpbin"), ("version", "v2")]);
    assert!(!Req::tcp().decide(&a, &v2).allowed);
    assert!(
        Req::tcp()
            .decide(&a, &wl("foo", &[("app", "other")]))
            .allowed
    );
}

#[test]
fn a_rendered_service_target_is_its_selector_not_only_its_ready_endpoints() {
    // As discovery renders a Service: its ready endpoints, and its selector in an annotation.
    let a = authorizer(&[
        se(
            "foo",
            "httpbin",
            "{hosts: [httpbin.foo.svc.cluster.local], ports: [{number: 80, name: http}], endpoints: [{address: 10.0.0.1, labels: {app: httpbin, version: v1, pod-template-hash: abc}}]}",
        )
        .replace(
            "namespace: foo}",
            "namespace: foo, annotations: {meshd.io/service-selector: '{\"app\":\"httpbin\"}'}}",
        ),
        ap(
            "foo",
            "deny-httpbin",
            "{targetRefs: [{kind: Service, name: httpbin}], action: DENY, rules: [{}]}",
        ),
    ]);
    // A pod not ready yet (no endpoint) is behind the Service all the same.
    let starting = wl("foo", &[("app", "httpbin"), ("version", "v2")]);
    assert!(!Req::tcp().decide(&a, &starting).allowed);
    assert!(
        Req::tcp()
            .decide(&a, &wl("foo", &[("app", "other")]))
            .allowed
    );
    // An empty targetRefs is unset: the selector decides.
    let a = authorizer(&[ap(
        "foo",
        "p",
        "{selector: {matchLabels: {app: other}}, targetRefs: [], action: DENY, rules: [{}]}",
    )]);
    assert!(Req::tcp().decide(&a, &httpbin()).allowed);
    assert!(
        !Req::tcp()
            .decide(&a, &wl("foo", &[("app", "other")]))
            .allowed
    );
}

#[test]
fn targets_meshd_cannot_resolve_select_nothing_and_say_why() {
    let set = crate::policy::load_str(
        "t.yaml".as_ref(),
        &[
            ap(
                "foo",
                "gw",
                "{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: ingress}], rules: []}",
            ),
            ap(
                "foo",
                "missing",
                "{targetRefs: [{kind: Service, name: nowhere}], action: DENY, rules: [{}]}",
            ),
            se(
                "foo",
                "bare",
                "{hosts: [bare.example], ports: [{number: 80, name: http}], endpoints: [{address: 10.0.0.9}]}",
            ),
            ap(
                "foo",
                "bare",
                "{targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: bare}], action: DENY, rules: [{}]}",
            ),
        ]
        .join("---\n"),
    )
    .expect("valid");
    let (a, errors) = Authorizer::from_set(&set, ROOT);
    let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        [
            "AuthorizationPolicy foo/gw: target Gateway ingress: meshd is not a gateway; the reference selects no workload",
            "AuthorizationPolicy foo/missing: target Service nowhere: no ServiceEntry (or Service) of that name in the policy's namespace; the reference selects no workload",
            "AuthorizationPolicy foo/bare: target ServiceEntry bare: it has no selector and no endpoint with labels; the reference selects no workload",
        ]
    );
    // None of them applies to any workload: the empty ALLOW policy denies nobody.
    for w in [httpbin(), wl("foo", &[])] {
        assert!(Req::tcp().decide(&a, &w).allowed);
    }
    assert!(set.warnings.iter().any(|w| {
        w.to_string()
            .contains("meshd is not a gateway: a policy for one applies to no workload here")
    }));
}
