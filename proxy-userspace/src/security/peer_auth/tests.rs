//! PeerAuthentication precedence: workload over namespace over mesh over PERMISSIVE, UNSET
//! inheritance, port-level settings, and ties.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{EffectiveMtls, MtlsMode, MtlsPolicies};
use crate::{
    policy::{load_str, model::PeerAuthentication},
    security::{DEFAULT_ROOT_NAMESPACE as ROOT, SecurityError, Workload},
};

use MtlsMode::{Disable, Permissive, Strict};

fn pa(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
         metadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"
    )
}

fn policies(docs: &[String]) -> MtlsPolicies {
    let set = load_str("pa.yaml".as_ref(), &docs.join("---\n"))
        .unwrap_or_else(|e| panic!("invalid test policies: {e:?}"));
    let (p, errors) = MtlsPolicies::from_set(&set, ROOT);
    assert_eq!(errors, []);
    p
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The mode and deciding policy for a workload in `ns` with `app: httpbin`, on `port`.
fn resolve(p: &MtlsPolicies, ns: &str, port: u16) -> (MtlsMode, Option<String>) {
    let l = labels(&[("app", "httpbin")]);
    let EffectiveMtls { mode, policy } = p.resolve(
        &Workload {
            namespace: ns,
            labels: &l,
        },
        port,
    );
    (mode, policy)
}

fn is(mode: MtlsMode, policy: &str) -> (MtlsMode, Option<String>) {
    (mode, Some(policy.to_string()))
}

const SEL: &str = "selector: {matchLabels: {app: httpbin}}";

#[test]
fn default_is_permissive() {
    assert_eq!(resolve(&policies(&[]), "foo", 80), (Permissive, None));
}

#[test]
fn each_level_overrides_the_one_above() {
    let mesh = pa(ROOT, "default", "{mtls: {mode: STRICT}}");
    let ns = pa("foo", "default", "{mtls: {mode: PERMISSIVE}}");
    let workload = pa(
        "foo",
        "httpbin",
        &format!("{{{SEL}, mtls: {{mode: DISABLE}}}}"),
    );
    let p = policies(std::slice::from_ref(&mesh));
    assert_eq!(resolve(&p, "foo", 80), is(Strict, "istio-system/default"));
    assert_eq!(resolve(&p, ROOT, 80), is(Strict, "istio-system/default"));
    let p = policies(&[mesh.clone(), ns.clone()]);
    assert_eq!(resolve(&p, "foo", 80), is(Permissive, "foo/default"));
    assert_eq!(resolve(&p, "bar", 80), is(Strict, "istio-system/default"));
    let p = policies(&[workload, ns, mesh]);
    assert_eq!(resolve(&p, "foo", 80), is(Disable, "foo/httpbin"));
}

#[test]
fn unset_inherits_from_the_level_above() {
    let mesh = pa(ROOT, "default", "{mtls: {mode: STRICT}}");
    for unset in ["{mtls: {mode: UNSET}}", "{mtls: {}}", "{}"] {
        let p = policies(&[mesh.clone(), pa("foo", "ns", unset)]);
        assert_eq!(
            resolve(&p, "foo", 80),
            is(Strict, "istio-system/default"),
            "{unset}"
        );
        let wl = pa("foo", "wl", &format!("{{{SEL}, mtls: {{mode: UNSET}}}}"));
        let p = policies(&[mesh.clone(), pa("foo", "ns", unset), wl]);
        assert_eq!(
            resolve(&p, "foo", 80),
            is(Strict, "istio-system/default"),
            "{unset}"
        );
    }
    let p = policies(&[pa(ROOT, "default", "{mtls: {mode: UNSET}}")]);
    assert_eq!(resolve(&p, "foo", 80), (Permissive, None));
}

#[test]
fn selector_policies_need_matching_labels_in_the_workload_namespace() {
    let strict = |ns: &str, sel: &str| pa(ns, "wl", &format!("{{{sel}, mtls: {{mode: STRICT}}}}"));
    let p = policies(&[strict("foo", "selector: {matchLabels: {app: other}}")]);
    assert_eq!(resolve(&p, "foo", 80), (Permissive, None));
    let p = policies(&[strict("bar", SEL)]);
    assert_eq!(resolve(&p, "foo", 80), (Permissive, None));
    let p = policies(&[strict(
        "foo",
        "selector: {matchLabels: {app: httpbin, v: v1}}",
    )]);
    assert_eq!(resolve(&p, "foo", 80), (Permissive, None));
    // Istio has no mesh-wide selector policies.
    let p = policies(&[strict(ROOT, SEL)]);
    assert_eq!(resolve(&p, "foo", 80), (Permissive, None));
    assert_eq!(resolve(&p, ROOT, 80), (Permissive, None));
    // An empty selector is no selector: the policy is namespace-wide.
    let p = policies(&[strict("foo", "selector: {matchLabels: {}}")]);
    assert_eq!(resolve(&p, "foo", 80), is(Strict, "foo/wl"));
}

#[test]
fn port_level_mtls_overrides_the_workload_mode_for_its_port() {
    let ns = pa("foo", "default", "{mtls: {mode: STRICT}}");
    let wl = pa(
        "foo",
        "httpbin",
        &format!(
            "{{{SEL}, mtls: {{mode: PERMISSIVE}}, \
             portLevelMtls: {{8080: {{mode: DISABLE}}, 9000: {{mode: STRICT}}, 9090: {{mode: UNSET}}}}}}"
        ),
    );
    let p = policies(&[ns.clone(), wl]);
    assert_eq!(resolve(&p, "foo", 8080), is(Disable, "foo/httpbin"));
    assert_eq!(resolve(&p, "foo", 9000), is(Strict, "foo/httpbin"));
    assert_eq!(resolve(&p, "foo", 9090), is(Permissive, "foo/httpbin"));
    assert_eq!(resolve(&p, "foo", 80), is(Permissive, "foo/httpbin"));

    // An UNSET port inherits the workload level, which itself inherits the namespace.
    let wl = pa(
        "foo",
        "httpbin",
        &format!("{{{SEL}, portLevelMtls: {{9090: {{mode: UNSET}}, 8080: {{mode: PERMISSIVE}}}}}}"),
    );
    let p = policies(&[ns, wl]);
    assert_eq!(resolve(&p, "foo", 9090), is(Strict, "foo/default"));
    assert_eq!(resolve(&p, "foo", 80), is(Strict, "foo/default"));
    assert_eq!(resolve(&p, "foo", 8080), is(Permissive, "foo/httpbin"));
}

fn json_pa(ns: &str, name: &str, spec: Value) -> PeerAuthentication {
    serde_json::from_value(
        json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
        "metadata": {"name": name, "namespace": ns}, "spec": spec}),
    )
    .unwrap()
}

#[test]
fn port_level_mtls_is_only_read_from_selector_policies() {
    // Validation rejects this; Istio ignores it too.
    let ns = json_pa(
        "foo",
        "ns",
        json!({"mtls": {"mode": "STRICT"},
        "portLevelMtls": {"8080": {"mode": "DISABLE"}}}),
    );
    let mesh = json_pa(
        ROOT,
        "mesh",
        json!({"portLevelMtls": {"8080": {"mode": "DISABLE"}}}),
    );
    let (p, errors) = MtlsPolicies::compile([&ns, &mesh], ROOT);
    assert_eq!(errors, []);
    assert_eq!(resolve(&p, "foo", 8080), is(Strict, "foo/ns"));
    assert_eq!(resolve(&p, "bar", 8080), (Permissive, None));
}

#[test]
fn ties_go_to_the_first_name() {
    for (a, b) in [("a", "b"), ("b", "a")] {
        let p = policies(&[
            pa("foo", a, "{mtls: {mode: STRICT}}"),
            pa("foo", b, "{mtls: {mode: DISABLE}}"),
        ]);
        let expected = if a == "a" { Strict } else { Disable };
        assert_eq!(resolve(&p, "foo", 80), is(expected, "foo/a"));
        let p = policies(&[
            pa(ROOT, b, "{mtls: {mode: STRICT}}"),
            pa(ROOT, a, "{mtls: {mode: DISABLE}}"),
        ]);
        let expected = if a == "a" { Disable } else { Strict };
        assert_eq!(resolve(&p, "bar", 80), is(expected, "istio-system/a"));
        let p = policies(&[
            pa("foo", b, &format!("{{{SEL}, mtls: {{mode: STRICT}}}}")),
            pa(
                "foo",
                a,
                "{selector: {matchLabels: {app: httpbin}}, mtls: {mode: DISABLE}}",
            ),
        ]);
        let expected = if a == "a" { Disable } else { Strict };
        assert_eq!(resolve(&p, "foo", 80), is(expected, "foo/a"));
    }
}

#[test]
fn the_root_namespace_is_configurable() {
    let mesh = json_pa("mesh-root", "default", json!({"mtls": {"mode": "STRICT"}}));
    let (p, _) = MtlsPolicies::compile([&mesh], "mesh-root");
    assert_eq!(resolve(&p, "foo", 80), is(Strict, "mesh-root/default"));
    let (p, _) = MtlsPolicies::compile([&mesh], ROOT);
    assert_eq!(resolve(&p, "foo", 80), (Permissive, None));
}

#[test]
fn unknown_modes_are_reported_and_unset() {
    let p = json_pa(
        "foo",
        "x",
        json!({"selector": {"matchLabels": {"app": "httpbin"}},
        "mtls": {"mode": "strict"}, "portLevelMtls": {"81": {"mode": "ON"}}}),
    );
    let (m, errors) = MtlsPolicies::compile([&p], ROOT);
    assert_eq!(resolve(&m, "foo", 81), (Permissive, None));
    assert_eq!(errors.len(), 2);
    assert!(errors.contains(&SecurityError::UnknownMtlsMode {
        policy: "foo/x".into(),
        field: "mtls".into(),
        mode: "strict".into(),
    }));
    assert!(
        errors[0]
            .to_string()
            .starts_with("PeerAuthentication foo/x: ")
    );
}

/// Of two namespace-wide policies, the oldest applies, as Istio orders them: by
/// `creationTimestamp` (a resource from the cluster, or dumped from it), then by name.
#[test]
fn the_oldest_of_two_competing_policies_applies() {
    let aged = |name: &str, created: &str, mode: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
             metadata: {{name: {name}, namespace: foo, creationTimestamp: \"{created}\"}}\n\
             spec: {{mtls: {{mode: {mode}}}}}\n"
        )
    };
    let p = policies(&[
        aged("aa-new", "2025-01-01T00:00:00Z", "PERMISSIVE"),
        aged("zz-old", "2020-01-01T00:00:00Z", "STRICT"),
    ]);
    assert_eq!(resolve(&p, "foo", 80), is(Strict, "foo/zz-old"));
    // Without creation times, by name.
    let p = policies(&[
        pa("foo", "zz", "{mtls: {mode: STRICT}}"),
        pa("foo", "aa", "{mtls: {mode: PERMISSIVE}}"),
    ]);
    assert_eq!(resolve(&p, "foo", 80), is(Permissive, "foo/aa"));
}
