//! Each cross-resource rule, firing and not firing.

use std::path::Path;

use crate::policy::{analyze, load_str};

/// A service `reviews` with v1 and v2 workloads and the DestinationRule defining both subsets.
const BASE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1}
spec: {address: 127.0.0.1, labels: {app: reviews, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v2}
spec: {address: 127.0.0.1, labels: {app: reviews, version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"#;

/// Loads BASE plus `extra` (which starts on line 1 of its own file) and returns the findings of
/// `extra.yaml` as `line:col: severity: message`.
fn findings(extra: &str) -> Vec<String> {
    let text = format!("{BASE}---\n{extra}");
    let offset = BASE.lines().count() + 1;
    let set = load_str(Path::new("t.yaml"), &text).unwrap_or_else(|e| panic!("{e}"));
    analyze(&set)
        .into_iter()
        .map(|f| {
            let line = f.line - offset;
            format!("{line}:{}: {}: {}", f.col, f.severity, f.message)
        })
        .collect()
}

fn vs(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: r}}\nspec:\n  hosts: [reviews]\n  http:\n{http}"
    )
}

#[test]
fn base_is_clean() {
    assert_eq!(findings(""), Vec::<String>::new());
}

#[test]
fn undefined_subset_is_an_error() {
    let f = findings(&vs(
        "  - route:\n    - destination: {host: reviews, subset: v3}\n",
    ));
    assert_eq!(
        f,
        [
            "8:44: error: spec.http[0].route[0].destination.subset: subset \"v3\" is not defined by DestinationRule default/reviews for host reviews.default.svc.cluster.local (it defines v1, v2)"
        ]
    );
    let ok = findings(&vs(
        "  - route:\n    - destination: {host: reviews.default.svc.cluster.local, subset: v2}\n",
    ));
    assert!(ok.is_empty(), "{ok:?}");
}

#[test]
fn a_virtual_service_bound_to_gateways_only_is_not_analysed() {
    let routes = "  - route:\n    - destination: {host: reviews, subset: v3}\n";
    let gateway_only = vs(routes).replace("  http:\n", "  gateways: [ingress]\n  http:\n");
    assert_eq!(findings(&gateway_only), Vec::<String>::new());
    let with_mesh = vs(routes).replace("  http:\n", "  gateways: [ingress, mesh]\n  http:\n");
    assert_eq!(findings(&with_mesh).len(), 1, "the mesh's routes are");
}

#[test]
fn subset_without_any_destination_rule_is_an_error() {
    let extra = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ratings}\nspec: {hosts: [ratings]}\n---\n"
        .to_string()
        + &vs("  - route:\n    - destination: {host: ratings, subset: v1}\n");
    let f = findings(&extra);
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(f[0].contains("error: spec.http[0].route[0].destination.subset: subset \"v1\" is not defined: no DestinationRule for host ratings.default.svc.cluster.local"), "{f:?}");
}

#[test]
fn undeclared_host_is_a_warning() {
    let f = findings(&vs("  - route:\n    - destination: {host: ratings}\n"));
    assert_eq!(
        f,
        [
            "8:27: warning: spec.http[0].route[0].destination.host: host ratings.default.svc.cluster.local is not declared by any ServiceEntry; meshd cannot route to it until one lists it in hosts"
        ]
    );
    // A short name in another namespace is another host.
    let other = vs("  - route:\n    - destination: {host: reviews}\n")
        .replace("{name: r}", "{name: r, namespace: shop}");
    assert_eq!(findings(&other).len(), 1);
}

#[test]
fn wildcard_service_entries_declare_hosts() {
    let extra = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext}\nspec: {hosts: [\"*.mycorp.com\"]}\n---\n"
        .to_string()
        + &vs("  - route:\n    - destination: {host: pay.mycorp.com}\n");
    assert!(findings(&extra).is_empty());
}

#[test]
fn second_destination_rule_for_a_host_is_a_warning() {
    let extra = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews-2}\nspec:\n  host: reviews.default.svc.cluster.local\n";
    let f = findings(extra);
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(
        f[0].starts_with("5:9: warning: spec.host: host reviews.default.svc.cluster.local already has DestinationRule default/reviews (t.yaml:"),
        "{f:?}"
    );
    // With a workload selector it is a per-workload rule, not a duplicate.
    let selected = format!("{extra}  workloadSelector: {{matchLabels: {{app: reviews}}}}\n");
    assert!(findings(&selected).is_empty());
    // Merged oldest first, as in Istio: one loaded later but older (here, of the same age and
    // first by name) comes first, and the other is the one warned about.
    let dr = |name: &str, created: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, creationTimestamp: \"{created}\"}}\nspec:\n  host: ratings\n"
        )
    };
    let (jan, feb) = ("2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z");
    let f = findings(&format!("{}---\n{}", dr("a", feb), dr("b", jan)));
    let f: Vec<_> = f.iter().filter(|f| f.contains("already has")).collect();
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(
        f[0].starts_with("5:9: warning: spec.host: host ratings.default.svc.cluster.local already has DestinationRule default/b (t.yaml:"),
        "{f:?}"
    );
    assert!(
        f[0].contains(
            "(older by creationTimestamp: 2024-01-01T00:00:00Z, this one 2024-02-01T00:00:00Z)"
        ),
        "{f:?}"
    );
}

#[test]
fn routes_after_a_catch_all_are_unreachable() {
    let http = "  - match: [{uri: {prefix: /}}]\n    route: [{destination: {host: reviews}}]\n  - match: [{uri: {prefix: /api}}]\n    route: [{destination: {host: reviews}}]\n";
    let f = findings(&vs(http));
    assert_eq!(
        f,
        [
            "9:5: warning: spec.http[1]: this route is unreachable: spec.http[0] before it matches every request"
        ]
    );
    let ordered = "  - match: [{uri: {prefix: /api}}]\n    route: [{destination: {host: reviews}}]\n  - route: [{destination: {host: reviews}}]\n";
    assert!(findings(&vs(ordered)).is_empty());
    let no_match = "  - route: [{destination: {host: reviews}}]\n  - route: [{destination: {host: reviews}}]\n";
    assert_eq!(findings(&vs(no_match)).len(), 1);
}

#[test]
fn retries_of_post_without_retry_on_are_a_warning() {
    let http = "  - match: [{method: {exact: POST}}]\n    route: [{destination: {host: reviews}}]\n    retries: {attempts: 3}\n";
    let f = findings(&vs(http));
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(
        f[0].starts_with(
            "9:5: warning: spec.http[0].retries: retries POST requests without retryOn"
        ),
        "{f:?}"
    );
    let regex = http.replace("{exact: POST}", "{regex: \"P.*\"}");
    assert!(findings(&vs(&regex))[0].contains("retries POST and PATCH requests"));
    let explicit = http.replace("{attempts: 3}", "{attempts: 3, retryOn: connect-failure}");
    assert!(findings(&vs(&explicit)).is_empty());
    let get = http.replace("POST", "GET");
    assert!(findings(&vs(&get)).is_empty());
    let no_method = "  - route: [{destination: {host: reviews}}]\n    retries: {attempts: 3}\n";
    assert!(findings(&vs(no_method)).is_empty());
}

#[test]
fn mirror_to_the_route_itself_is_a_warning() {
    let http = "  - route: [{destination: {host: reviews, subset: v1}}]\n    mirror: {host: reviews.default.svc.cluster.local, subset: v1}\n";
    let f = findings(&vs(http));
    assert_eq!(
        f,
        [
            "8:5: warning: spec.http[0].mirror: mirrors to the route's own destination (reviews.default.svc.cluster.local subset v1): the same workloads get every request twice"
        ]
    );
    let other = http.replace("subset: v1}\n", "subset: v2}\n");
    assert!(findings(&vs(&other)).is_empty());
    let mirrors = "  - route: [{destination: {host: reviews}}]\n    mirrors: [{destination: {host: reviews}}]\n";
    assert_eq!(findings(&vs(mirrors)).len(), 1);
}

#[test]
fn selectors_matching_no_workload_are_a_warning() {
    let extra = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec:\n  selector:\n    matchLabels: {app: ratings}\n";
    assert_eq!(
        findings(extra),
        [
            "5:3: warning: spec.selector: selects no WorkloadEntry in namespace default (labels app=ratings)"
        ]
    );
    let ok = extra.replace("ratings", "reviews");
    assert!(findings(&ok).is_empty());
    // In the root namespace, a selector looks in every namespace, as Istio applies it.
    let root = ok.replace("{name: a}", "{name: a, namespace: istio-system}");
    assert!(findings(&root).is_empty(), "{:?}", findings(&root));
    let none = extra.replace("{name: a}", "{name: a, namespace: istio-system}");
    assert_eq!(findings(&none).len(), 1);
    let se = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s}\nspec:\n  hosts: [s]\n  workloadSelector: {labels: {app: s}}\n";
    assert_eq!(findings(se).len(), 1);
    let pa = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: other}\nspec:\n  selector: {matchLabels: {app: reviews}}\n";
    assert_eq!(
        findings(pa).len(),
        1,
        "other namespace has no reviews workload"
    );
}

#[test]
fn rate_limit_targets_must_exist() {
    let rl = "apiVersion: meshd.io/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: rl}\nspec:\n  target: {host: reviews, route: api}\n  local: {maxTokens: 10, fillInterval: 1s}\n";
    let f = findings(rl);
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(f[0].contains("spec.target.route: no VirtualService for host reviews.default.svc.cluster.local has an http route named \"api\""));
    let with_vs = format!(
        "{rl}---\n{}",
        vs("  - name: api\n    route: [{destination: {host: reviews}}]\n")
    );
    assert!(findings(&with_vs).is_empty());
    let undeclared = rl.replace("host: reviews, route: api", "host: ratings");
    assert!(
        findings(&undeclared)[0]
            .contains("spec.target.host: host ratings.default.svc.cluster.local is not declared")
    );
}

#[test]
fn delegation_that_cannot_work_is_a_warning() {
    let root = vs("  - delegate: {name: missing}\n  - delegate: {name: leaf}\n");
    let leaf = "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: leaf}\nspec:\n  http:\n  - delegate: {name: again}\n";
    let orphan = "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: orphan}\nspec:\n  http:\n  - route: [{destination: {host: reviews}}]\n";
    let f = findings(&format!("{root}{leaf}{orphan}"));
    assert_eq!(f.len(), 3, "{f:?}");
    assert!(
        f[0].contains("no VirtualService default/missing without hosts"),
        "{f:?}"
    );
    assert!(f[1].contains("cannot delegate again"), "{f:?}");
    assert!(f[2].contains("none names this one"), "{f:?}");
}

#[test]
fn a_host_routed_by_two_virtual_services_is_a_warning() {
    let vs = |name: &str, host: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}}}\nspec:\n  hosts: [{host}]\n  http:\n  - route: [{{destination: {{host: reviews}}}}]\n"
        )
    };
    let f = findings(&format!(
        "{}---\n{}",
        vs("a", "reviews"),
        vs("b", "reviews.default.svc.cluster.local")
    ));
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(
        f[0].starts_with("13:11: warning: spec.hosts[0]: host reviews.default.svc.cluster.local is also routed by VirtualService default/a (t.yaml:"),
        "{f:?}"
    );
    assert!(f[0].contains("IST0109"), "{f:?}");
    // Different hosts, or a VirtualService bound to a gateway only: nothing to say.
    assert!(
        findings(&format!(
            "{}---\n{}",
            vs("a", "reviews"),
            vs("b", "ratings")
        ))
        .is_empty()
    );
}

/// The warning names the VirtualService meshd applies, the oldest as in Istio, and why:
/// whatever order the files load in.
#[test]
fn the_oldest_of_two_virtual_services_for_a_host_is_the_one_applied() {
    let vs = |name: &str, created: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, creationTimestamp: \"{created}\"}}\nspec:\n  hosts: [reviews]\n  http:\n  - route: [{{destination: {{host: reviews}}}}]\n"
        )
    };
    let (jan, feb) = ("2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z");
    // Loaded first but younger: this one is ignored for the host.
    let f = findings(&format!("{}---\n{}", vs("a", feb), vs("b", jan)));
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(
        f[0].starts_with("5:11: warning: spec.hosts[0]: host reviews.default.svc.cluster.local is also routed by VirtualService default/b (t.yaml:"),
        "{f:?}"
    );
    assert!(
        f[0].contains(
            "(older by creationTimestamp: 2024-01-01T00:00:00Z, this one 2024-02-01T00:00:00Z)"
        ),
        "{f:?}"
    );
    // Of the same age: by name.
    let f = findings(&format!("{}---\n{}", vs("b", jan), vs("a", jan)));
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(
        f[0].starts_with("5:11: warning: spec.hosts[0]: host reviews.default.svc.cluster.local is also routed by VirtualService default/a (t.yaml:"),
        "{f:?}"
    );
    assert!(f[0].contains("(same age, name order)"), "{f:?}");
}

#[test]
fn conditions_meshd_cannot_see_are_a_warning() {
    let f = findings(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: sni}\nspec:\n  rules:\n  - when: [{key: connection.sni, values: [a.example]}]\n",
    );
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(
        f[0].starts_with("6:5: warning: spec.rules[0]: AuthorizationPolicy default/sni: rules[0]: condition \"connection.sni\" is not something meshd can see"),
        "{f:?}"
    );
}

#[test]
fn a_named_workload_entry_under_a_service_that_resolves_no_names_is_a_warning() {
    let f = findings(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: vm}\nspec:\n  hosts: [vm.example]\n  ports: [{number: 80, name: http}]\n  resolution: STATIC\n  workloadSelector: {labels: {app: vm}}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: vm-1}\nspec: {address: vm1.example, labels: {app: vm}}\n",
    );
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(
        f[0].starts_with("13:17: warning: spec.address: a name, but ServiceEntry default/vm"),
        "{f:?}"
    );
    // Under DNS resolution the name is resolved.
    let dns = findings(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: vm}\nspec:\n  hosts: [vm.example]\n  ports: [{number: 80, name: http}]\n  resolution: DNS\n  workloadSelector: {labels: {app: vm}}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: vm-1}\nspec: {address: vm1.example, labels: {app: vm}}\n",
    );
    assert!(dns.is_empty(), "{dns:?}");
}

#[test]
fn a_destination_port_the_service_does_not_declare_is_a_warning() {
    let f = findings(&vs(
        "  - route:\n    - destination: {host: reviews, port: {number: 9090}}\n",
    ));
    assert_eq!(
        f,
        [
            "8:51: warning: spec.http[0].route[0].destination.port.number: port 9090 is not a port of reviews.default.svc.cluster.local (its ServiceEntries declare 9080); requests routed here get 503 with flag NC, as Istio has no cluster for it"
        ]
    );
    // Its own port, or none (the service's only port), is fine.
    let declared = "  - route:\n    - destination: {host: reviews, port: {number: 9080}}\n";
    assert_eq!(findings(&vs(declared)), Vec::<String>::new());
    assert_eq!(
        findings(&vs("  - route:\n    - destination: {host: reviews}\n")),
        Vec::<String>::new()
    );
}

#[test]
fn a_host_declared_in_two_namespaces_is_a_warning() {
    let other = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: reviews-copy, namespace: shop}\nspec:\n  hosts: [reviews.default.svc.cluster.local]\n  ports: [{number: 9080, name: http, protocol: HTTP}]\n  resolution: STATIC\n  endpoints: [{address: 10.0.0.9}]\n";
    let f = findings(other);
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(
        f[0].starts_with("5:11: warning: spec.hosts[0]: host reviews.default.svc.cluster.local is also declared by ServiceEntry default/reviews (t.yaml:")
            && f[0].ends_with(") in namespace default; meshd merges the entries' ports and endpoints for every client, where Istio gives each client one of them (its own namespace's, else the oldest)"),
        "{f:?}"
    );
    // In one namespace they merge, in Istio too.
    assert_eq!(
        findings(&other.replace("namespace: shop", "namespace: default")),
        Vec::<String>::new()
    );
}

#[test]
fn a_port_two_entries_declare_with_different_protocols_is_a_warning() {
    let other = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: reviews-tcp}\nspec:\n  hosts: [reviews.default.svc.cluster.local]\n  ports: [{number: 9080, name: tcp, protocol: TCP}, {number: 9081, name: tcp-2, protocol: TCP}]\n  resolution: NONE\n";
    // Without addresses, its TCP ports take the port's every connection (tested apart).
    let findings = |yaml: &str| -> Vec<String> {
        (findings(yaml).into_iter())
            .filter(|f| !f.contains("IST0134"))
            .collect()
    };
    let f = findings(other);
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(
        f[0].starts_with("6:47: warning: spec.ports[0].protocol: port 9080 of host reviews.default.svc.cluster.local is already declared with HTTP by ServiceEntry default/reviews (t.yaml:")
            && f[0].ends_with("); the entries are merged and the first declaration applies"),
        "{f:?}"
    );
    // The same protocol, however written, merges quietly.
    assert_eq!(
        findings(&other.replace(
            "protocol: TCP}, {number: 9081",
            "protocol: http}, {number: 9081"
        )),
        Vec::<String>::new()
    );
}

#[test]
fn peer_authentications_that_compete_for_the_same_workloads_are_reported() {
    let pa = |name: &str, selector: &str, mode: &str| {
        format!(
            "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: default}}\nspec: {{{selector}mtls: {{mode: {mode}}}}}\n"
        )
    };
    let wide = pa("b-strict", "", "STRICT") + &pa("a-off", "", "DISABLE");
    let f = findings(&wide);
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(
        f[0].starts_with("4:18: warning: metadata.name: PeerAuthentication default/a-off (")
            && f[0].contains("applies to namespace default as a whole too"),
        "{f:?}"
    );
    let same = pa("one", "selector: {matchLabels: {app: reviews}}, ", "STRICT")
        + &pa(
            "two",
            "selector: {matchLabels: {app: reviews}}, ",
            "DISABLE",
        );
    assert_eq!(findings(&same).len(), 1);
    let apart = pa("one", "selector: {matchLabels: {version: v1}}, ", "STRICT")
        + &pa("two", "selector: {matchLabels: {version: v2}}, ", "DISABLE")
        + &pa("wide", "", "PERMISSIVE");
    assert!(findings(&apart).is_empty(), "{:?}", findings(&apart));
}

/// A ServiceEntry without addresses that declares a TCP port takes every connection to that
/// port, as on Istio's sidecars (IST0134): a warning, and one more for a younger entry whose
/// claim on the port an older one already has.
#[test]
fn a_tcp_port_without_addresses_takes_the_whole_port_and_is_a_warning() {
    let se = |name: &str, created: &str, ports: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: default, creationTimestamp: \"{created}\"}}\nspec:\n  hosts: [{name}.example.com]\n  ports: [{ports}]\n  location: MESH_EXTERNAL\n  resolution: DNS\n"
        )
    };
    let db = "{number: 5432, name: tcp-pg, protocol: TCP}";
    let yaml = se("young", "2024-02-01T00:00:00Z", db)
        + &se("old", "2024-01-01T00:00:00Z", db)
        + &se(
            "web",
            "2024-01-01T00:00:00Z",
            "{number: 80, name: http, protocol: HTTP}",
        )
        + &se(
            "mongo",
            "2024-01-01T00:00:00Z",
            "{number: 27017, name: mongo}",
        );
    let set = crate::policy::load_str("t.yaml".as_ref(), &yaml).expect("valid policies");
    let wide: Vec<String> = (super::analyze(&set).into_iter())
        .map(|f| f.to_string())
        .filter(|f| f.contains("no addresses"))
        .collect();
    assert_eq!(wide.len(), 3, "{wide:?}");
    assert!(
        wide.iter().any(|f| f.contains(
            "every connection to port 5432, whatever address it dials, goes to old.example.com"
        )),
        "{wide:?}"
    );
    assert!(
        wide.iter().any(
            |f| f.contains("already takes every connection to port 5432")
                && f.contains("default/old")
        ),
        "{wide:?}"
    );
    assert!(
        wide.iter()
            .any(|f| f.contains("port 27017") && f.contains("mongo.example.com")),
        "{wide:?}"
    );
    let compiled = crate::config::compile(&set);
    let at = |a: &str| compiled.port_wide_host(a.parse().unwrap());
    assert_eq!(at("192.0.2.7:5432"), Some("old.example.com"));
    assert_eq!(at("127.0.0.1:27017"), Some("mongo.example.com"));
    assert_eq!(at("192.0.2.7:80"), None, "HTTP ports are routed by Host");
}
