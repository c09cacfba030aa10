//! Validation of single documents: every finding, at the right line and column.

use std::path::Path;

use crate::policy::{LoadFailure, load_str};

/// The findings for `text` as `line:col: severity: message`.
fn check(text: &str) -> Vec<String> {
    let findings = match load_str(Path::new("t.yaml"), text) {
        Ok(set) => set.warnings,
        Err(LoadFailure::Invalid(f)) => f,
        Err(e) => panic!("{e}"),
    };
    findings
        .into_iter()
        .map(|f| format!("{}:{}: {}: {}", f.line, f.col, f.severity, f.message))
        .collect()
}

fn vs(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts: [r]\n  http:\n{http}"
    )
}

fn dr(policy: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: r\nspec:\n  host: r\n  trafficPolicy:\n{policy}"
    )
}

#[test]
fn unknown_fields_point_at_the_key_and_suggest() {
    let f = check(&dr(
        "    connectionPol:\n      tcp: {maxConnections: 1}\n    loadBalancer: {simple: ROUND_ROBIN, bogus: 1}\n",
    ));
    assert_eq!(
        f,
        [
            "8:5: error: spec.trafficPolicy: unknown field \"connectionPol\", did you mean \"connectionPool\"?",
            "10:41: error: spec.trafficPolicy.loadBalancer: unknown field \"bogus\" (known fields: simple, consistentHash, localityLbSetting, warmupDurationSecs, warmup)",
        ]
    );
}

#[test]
fn every_finding_is_reported_not_just_the_first() {
    let http = "  - route:\n    - destination: {host: r}\n      weight: -1\n    timeout: 2 seconds\n    retries: {attempts: 3, perTryTimeout: 0s, retryOn: sometimes}\n    fault:\n      abort: {percentage: {value: 150}}\n";
    let f = check(&vs(http));
    assert_eq!(
        f,
        [
            "10:15: error: spec.http[0].route[0].weight: must be at least 0, got -1",
            "11:14: error: spec.http[0].timeout: invalid duration \"2 seconds\": expected a number and a unit (ns, us, ms, s, m, h), e.g. 250ms, 2s, 1.5h",
            "12:43: error: spec.http[0].retries.perTryTimeout: must be greater than zero",
            "12:56: error: spec.http[0].retries.retryOn: \"sometimes\" is not a retry condition: use HTTP status codes or 5xx, gateway-error, reset, reset-before-request, connect-failure, envoy-ratelimited, retriable-4xx, refused-stream, retriable-status-codes, retriable-headers, http3-post-connect-failure, cancelled, deadline-exceeded, internal, resource-exhausted, unavailable",
            "14:7: error: spec.http[0].fault.abort: set httpStatus or grpcStatus",
            "14:35: error: spec.http[0].fault.abort.percentage.value: must be between 0 and 100, got 150",
        ]
    );
}

#[test]
fn weights_are_relative_but_not_all_zero() {
    // As Istio since 1.15: each destination's share is its weight over their sum.
    let split = "  - route:\n    - destination: {host: r, subset: a}\n      weight: 80\n    - destination: {host: r, subset: b}\n      weight: 10\n";
    assert!(check(&vs(split)).is_empty());
    assert!(check(&vs(&split.replace("10\n", "20\n"))).is_empty());
    assert!(check(&vs(&split.replace("80\n", "2000\n"))).is_empty());
    let zeros = split.replace("80\n", "0\n").replace("10\n", "0\n");
    assert_eq!(
        check(&vs(&zeros)),
        [
            "10:15: error: spec.http[0].route[0].weight: the weights of a route's destinations add up to 0, so none would get traffic"
        ]
    );
    let unset = "  - route:\n    - destination: {host: r, subset: a}\n    - destination: {host: r, subset: b}\n";
    assert_eq!(
        check(&vs(unset)),
        [
            "8:5: error: spec.http[0].route: the weights of a route's destinations add up to 0, so none would get traffic (2 destination(s) have no weight, which counts as 0)"
        ]
    );
    let single = "  - route:\n    - destination: {host: r}\n      weight: 50\n";
    assert!(
        check(&vs(single)).is_empty(),
        "one destination takes all traffic"
    );
    let single_full = "  - route:\n    - destination: {host: r}\n      weight: 100\n";
    assert!(check(&vs(single_full)).is_empty());
    let single_plain = "  - route:\n    - destination: {host: r}\n";
    assert!(check(&vs(single_plain)).is_empty());
    let quoted = "  - route:\n    - destination: {host: r}\n      weight: \"100\"\n";
    assert_eq!(
        check(&vs(quoted)),
        ["10:15: error: spec.http[0].route[0].weight: expected an integer, got the string \"100\""]
    );
    let exponent = "  - route:\n    - destination: {host: r}\n      weight: 1e2\n";
    assert_eq!(
        check(&vs(exponent)),
        [
            "10:15: error: spec.http[0].route[0].weight: expected an integer, got the floating-point number 100: write it without a fraction or an exponent"
        ]
    );
}

#[test]
fn regexes_must_compile() {
    let http = "  - match:\n    - uri: {regex: \"/api/(v1\"}\n      headers:\n        x-id: {regex: \"[0-9]+\"}\n    route: [{destination: {host: r}}]\n";
    let f = check(&vs(http));
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(
        f[0].starts_with(
            "9:20: error: spec.http[0].match[0].uri.regex: invalid regex \"/api/(v1\": "
        ),
        "{f:?}"
    );
}

#[test]
fn string_matches_take_exactly_one_kind() {
    let http = "  - match:\n    - uri: {prefix: /a, exact: /b}\n      method: {}\n    route: [{destination: {host: r}}]\n";
    let f = check(&vs(http));
    assert_eq!(
        f,
        [
            "9:25: error: spec.http[0].match[0].uri: \"prefix\" and \"exact\" cannot both be set (choose one of exact, prefix, regex)",
            "10:7: error: spec.http[0].match[0].method: set one of exact, prefix or regex",
        ]
    );
}

#[test]
fn connection_pool_and_outlier_limits() {
    let policy = "    connectionPool:\n      tcp: {maxConnections: 0}\n      http: {http1MaxPendingRequests: -5, maxRequestsPerConnection: 0, http2MaxRequests: 99999999999}\n    outlierDetection: {consecutive5xxErrors: -1, interval: 0s, maxEjectionPercent: 0}\n";
    let f = check(&dr(policy));
    assert_eq!(
        f,
        [
            "9:29: warning: spec.trafficPolicy.connectionPool.tcp.maxConnections: 0 is read as unset, as Istio reads it: there is no limit",
            "10:39: error: spec.trafficPolicy.connectionPool.http.http1MaxPendingRequests: must be at least 0, got -5",
            "10:90: error: spec.trafficPolicy.connectionPool.http.http2MaxRequests: must be at most 10000000, got 99999999999",
            "11:46: error: spec.trafficPolicy.outlierDetection.consecutive5xxErrors: must be at least 0, got -1 (0 turns this detector off)",
            "11:60: error: spec.trafficPolicy.outlierDetection.interval: must be greater than zero",
            "11:84: warning: spec.trafficPolicy.outlierDetection.maxEjectionPercent: 0 is read as unset, as Istio reads it: at most 10% of the endpoints are ejected",
        ]
    );
}

#[test]
fn rate_limit_policy_limits() {
    let rl = "apiVersion: meshd.io/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: rl}\nspec:\n  target: {host: r}\n  local: {maxTokens: 0, tokensPerFill: 5, fillInterval: 10ms}\n  global: {redis: redis, requestsPerUnit: 10, unit: day}\n  descriptors: [{}, {header: x-user, sourceWorkload: true}]\n";
    let f = check(rl);
    assert_eq!(
        f,
        [
            "6:22: error: spec.local.maxTokens: must be at least 1, got 0 (0 would refuse every request; use an AuthorizationPolicy to deny)",
            "6:57: error: spec.local.fillInterval: must be at least 50ms, got 10ms",
            "7:19: error: spec.global.redis: \"redis\" is not host:port, e.g. redis.default:6379",
            "7:53: error: spec.global.unit: \"day\" is not one of second, minute, hour",
            "8:17: error: spec.descriptors[0]: set header: NAME or sourceWorkload: true to say what each bucket is counted by",
            "8:38: error: spec.descriptors[1]: \"header\" and \"sourceWorkload\" cannot both be set (choose one of header, sourceWorkload)",
        ]
    );
    let none = "apiVersion: meshd.io/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: rl}\nspec:\n  target: {host: r}\n";
    assert_eq!(
        check(none),
        ["4:1: error: spec: set local, global or both: there is no limit otherwise"]
    );
}

#[test]
fn the_article_envoy_filter_points_to_rate_limit_policy() {
    let text = r#"# istio-ratelimit.yaml
apiVersion: networking.istio.io/v1beta1
kind: EnvoyFilter
metadata:
  name: http-ratelimit
spec:
  configPatches:
  - applyTo: HTTP_FILTER
    patch:
      operation: INSERT_BEFORE
"#;
    let f = check(text);
    assert_eq!(f.len(), 1);
    assert!(
        f[0].starts_with("3:7: error: kind: EnvoyFilter is not supported"),
        "{f:?}"
    );
    assert!(f[0].contains("meshd.io/v1alpha1 RateLimitPolicy"));
}

#[test]
fn envelope_problems() {
    assert_eq!(
        check(
            "apiVersion: security.istio.io/v1alpha1\nkind: PeerAuthentication\nmetadata: {name: a}\n"
        ),
        [
            "2:7: error: kind: PeerAuthentication is not served as apiVersion \"security.istio.io/v1alpha1\"; use security.istio.io/v1, security.istio.io/v1beta1"
        ]
    );
    assert_eq!(
        check("kind: VirtualService\nmetadata: {name: a}\n"),
        ["1:1: error: missing required field \"apiVersion\""]
    );
    assert_eq!(
        check(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: Bad_Name, namespace: default}\n"
        ),
        [
            "1:1: error: missing required field \"spec\"",
            "3:18: error: metadata.name: \"Bad_Name\" is not a valid name: use lower-case letters, digits, '-' and '.', at most 253 characters",
        ]
    );
    assert_eq!(
        check("- just\n- a list\n"),
        [
            "1:1: error: expected a resource (a mapping with apiVersion, kind, metadata and spec), got a list"
        ]
    );
    // A PeerAuthentication without spec is valid: it applies the default (inherited) mode.
    assert!(
        check("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a}\n")
            .is_empty()
    );
}

#[test]
fn kubectl_output_metadata_is_accepted() {
    let text = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: a\n  uid: 5f0c\n  resourceVersion: \"12\"\n  creationTimestamp: \"2024-01-01T00:00:00Z\"\nspec: {mtls: {mode: STRICT}}\nstatus: {}\n";
    assert!(check(text).is_empty());
}

#[test]
fn enums_hint_at_the_right_case() {
    let text = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a}\nspec: {mtls: {mode: strict}}\n";
    assert_eq!(
        check(text),
        [
            "4:21: error: spec.mtls.mode: \"strict\" is not one of UNSET, DISABLE, PERMISSIVE, STRICT (did you mean STRICT?)"
        ]
    );
}

#[test]
fn warnings_do_not_fail_a_load() {
    let http = "  - route: [{destination: {host: r}}]\n    mirrorPercentage: {value: 5}\n";
    let f = check(&vs(http));
    assert_eq!(
        f,
        [
            "9:5: warning: spec.http[0].mirrorPercentage: has no effect without mirror (mirrors[] take their own percentage)"
        ]
    );
}

#[test]
fn service_entry_rules() {
    let text = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s}\nspec:\n  hosts: [\"*.x.com\"]\n  resolution: DNS\n  ports:\n  - {number: 80, name: http, protocol: http}\n  - {number: 80, name: web, protocol: SMTP}\n  endpoints: [{address: 10.0.0.1}]\n  workloadSelector: {labels: {app: s}}\n";
    assert_eq!(
        check(text),
        [
            "5:11: error: spec.hosts[0]: a wildcard host cannot be resolved with DNS resolution",
            "9:5: error: spec.ports[1]: port 80 is declared twice",
            "9:39: error: spec.ports[1].protocol: \"SMTP\" is not a protocol: use one of HTTP, HTTPS, GRPC, GRPC-WEB, HTTP2, MONGO, MYSQL, REDIS, TCP, TLS, UDP",
            "11:3: error: spec: \"endpoints\" and \"workloadSelector\" cannot both be set (choose one of endpoints, workloadSelector)",
        ]
    );
}

#[test]
fn a_generated_cookies_path_and_attributes_must_fit_a_set_cookie() {
    let f = check(&dr(
        "    loadBalancer:\n      consistentHash:\n        httpCookie:\n          name: user\n          ttl: 60s\n          path: \"/a; Domain=evil\"\n          attributes:\n          - {name: SameSite, value: Strict}\n          - {name: \"Same Site\"}\n",
    ));
    assert_eq!(
        f,
        [
            "13:17: error: spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.path: \"/a; Domain=evil\" cannot go into a Set-Cookie: use printable ASCII without ';'",
            "16:20: error: spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.attributes[1].name: \"Same Site\" is not a valid HTTP token",
        ]
    );
}

#[test]
fn a_direct_response_body_in_bytes_must_be_base64() {
    let f = check(&vs(
        "  - directResponse:\n      status: 200\n      body: {bytes: \"not base64!\"}\n",
    ));
    assert_eq!(
        f,
        ["10:21: error: spec.http[0].directResponse.body.bytes: \"not base64!\" is not base64"]
    );
}

#[test]
fn what_meshd_does_not_do_yet_is_a_warning_not_silence() {
    let f = check(&dr(
        "    tls: {mode: SIMPLE, caCrl: /etc/crl.pem}\n    retryBudget: {budgetInterval: 10s}\n    loadBalancer: {simple: ROUND_ROBIN, warmupDurationSecs: 30s, localityLbSetting: {failoverPriority: [zone]}}\n    connectionPool:\n      tcp: {maxConnectionDuration: 1h, idleTimeout: 5m}\n",
    ));
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(f[0].contains("retryBudget.budgetInterval"), "{f:?}");
}

#[test]
fn a_tunnel_needs_its_target_and_connect() {
    let ok = "    tunnel: {protocol: CONNECT, targetHost: api.example.com, targetPort: 443}\n";
    assert!(check(&dr(ok)).is_empty());
    let f = check(&dr("    tunnel: {targetHost: api.example.com}\n"));
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(
        f[0].contains("spec.trafficPolicy.tunnel: missing required field \"targetPort\""),
        "{f:?}"
    );
    let f = check(&dr(&format!("{ok}    proxyProtocol: {{}}\n")));
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(
        f[0].contains("tunnel: tunnel and proxyProtocol cannot both be set"),
        "{f:?}"
    );
    let f = check(&dr(&ok.replace("api.example.com", "*.example.com")));
    assert_eq!(f.len(), 1, "{f:?}");
    let f = check(&dr(&ok.replace("CONNECT", "POST")));
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(
        f[0].contains(
            "error: spec.trafficPolicy.tunnel.protocol: meshd tunnels with HTTP CONNECT only"
        ),
        "{f:?}"
    );
}

#[test]
fn proxy_protocol_takes_istios_versions() {
    assert!(check(&dr("    proxyProtocol: {version: V2}\n")).is_empty());
    assert!(check(&dr("    proxyProtocol: {}\n")).is_empty());
    let f = check(&dr("    proxyProtocol: {version: V3}\n"));
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(
        f[0].contains("error: spec.trafficPolicy.proxyProtocol.version"),
        "{f:?}"
    );
}

#[test]
fn a_retry_budget_is_read_and_its_interval_warned_about() {
    let f = check(&dr(
        "    retryBudget: {percent: 25.5, minRetryConcurrency: 2, budgetInterval: 10s}\n",
    ));
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(
        f[0].contains("warning: spec.trafficPolicy.retryBudget.budgetInterval"),
        "{f:?}"
    );
    let f = check(&dr("    retryBudget: {percent: 150}\n"));
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(
        f[0].contains("error: spec.trafficPolicy.retryBudget.percent"),
        "{f:?}"
    );
}

#[test]
fn distribute_weights_add_up_to_100_and_exclude_failover() {
    let lb = |setting: &str| {
        check(&dr(&format!(
            "    loadBalancer:\n      localityLbSetting:\n{setting}"
        )))
    };
    let dist = |a: u32| {
        format!(
            "        distribute:\n        - from: us-east/*\n          to: {{\"us-east/*\": {a}, \"us-west/*\": 20}}\n"
        )
    };
    assert_eq!(lb(&dist(80)), Vec::<String>::new());
    let f = lb(&dist(70));
    assert!(
        f.len() == 1 && f[0].contains("error: spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to: the weights add up to 90"),
        "{f:?}"
    );
    let both = format!(
        "{}        failover: [{{from: us-east, to: us-west}}]\n",
        dist(80)
    );
    let f = lb(&both);
    assert!(f.len() == 1 && f[0].contains("error"), "{f:?}");
}

#[test]
fn an_endpoint_name_without_dns_resolution_is_a_warning() {
    let se = |resolution: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: e\nspec:\n  hosts: [e.example]\n  ports: [{{number: 80, name: http}}]\n  resolution: {resolution}\n  endpoints:\n  - address: backend.example\n  - address: 10.0.0.1\n"
        )
    };
    assert_eq!(
        check(&se("STATIC")),
        [
            "10:14: warning: spec.endpoints[0].address: a name is resolved only with resolution DNS or DNS_ROUND_ROBIN; this endpoint is never dialled"
        ]
    );
    assert!(check(&se("DNS")).is_empty());
    // A Unix domain socket, which Istio takes, is never dialled by meshd, whatever the
    // resolution: said, where it was silently dropped.
    let unix = se("STATIC").replace("backend.example", "unix:///var/run/app.sock");
    let f = check(&unix);
    assert!(
        f.len() == 1
            && f[0].starts_with(
                "10:14: warning: spec.endpoints[0].address: meshd reaches endpoints over TCP only"
            ),
        "{f:?}"
    );
}

#[test]
fn routes_bound_to_gateways_only_are_a_warning() {
    let gateway_only = vs("  - route: [{destination: {host: r}}]\n")
        .replace("  http:\n", "  gateways: [istio-system/ingress]\n  http:\n");
    assert_eq!(
        check(&gateway_only),
        [
            "7:13: warning: spec.gateways: this VirtualService is bound to gateways only, so it configures none of the mesh traffic meshd carries; add \"mesh\" to gateways to apply it here"
        ]
    );
    let both = vs("  - match:\n    - gateways: [ingress]\n    - gateways: [mesh, ingress]\n    route: [{destination: {host: r}}]\n")
        .replace("  http:\n", "  gateways: [ingress, mesh]\n  http:\n");
    assert_eq!(
        check(&both),
        [
            "7:14: warning: spec.gateways[0]: meshd is not this gateway; the entry is ignored and the routes apply to mesh traffic",
            "10:17: warning: spec.http[0].match[0].gateways: this match names gateways but not \"mesh\", so it never holds for the mesh traffic meshd carries",
            "11:24: warning: spec.http[0].match[1].gateways[1]: meshd is not this gateway; the entry is ignored and the routes apply to mesh traffic",
        ]
    );
}

#[test]
fn a_fault_without_a_percentage_is_a_warning() {
    let f = check(&vs(
        "  - route: [{destination: {host: r}}]\n    fault:\n      abort: {httpStatus: 503}\n      delay: {fixedDelay: 1s, percent: 10}\n",
    ));
    assert_eq!(
        f,
        [
            "10:7: warning: spec.http[0].fault.abort: without percentage this fault is injected into no request, as in Istio; set percentage.value: 100 for every request",
            "11:31: warning: spec.http[0].fault.delay.percent: deprecated: use percentage.value",
        ]
    );
}

/// As Istio's validation: a fault's `grpcStatus` is a status name; a typo, a number or another
/// case would otherwise inject UNKNOWN, or a code nobody named.
#[test]
fn a_fault_grpc_status_is_a_status_name() {
    let abort = |status: &str| {
        check(&vs(&format!(
            "  - route: [{{destination: {{host: r}}}}]\n    fault:\n      abort: {{grpcStatus: {status}, percentage: {{value: 100}}}}\n"
        )))
    };
    assert!(abort("UNAVAILABLE").is_empty());
    for bad in ["UNAVAILABLEX", "unavailable", "\"14\""] {
        let f = abort(bad);
        assert_eq!(f.len(), 1, "{bad}: {f:?}");
        assert!(
            f[0].contains("error: spec.http[0].fault.abort.grpcStatus: "),
            "{bad}: {f:?}"
        );
    }
}

#[test]
fn retry_conditions_meshd_never_acts_on_are_a_warning() {
    let f = check(&vs(
        "  - route: [{destination: {host: r}}]\n    retries: {attempts: 2, retryOn: \"5xx,envoy-ratelimited\"}\n",
    ));
    assert_eq!(
        f,
        [
            "9:37: warning: spec.http[0].retries.retryOn: envoy-ratelimited never causes a retry here: meshd does not read x-envoy-ratelimited on upstream answers"
        ]
    );
}

#[test]
fn header_operators_meshd_does_not_substitute_are_a_warning() {
    let f = check(&vs(
        "  - route: [{destination: {host: r}}]\n    headers:\n      request:\n        set: {x-a: \"%DOWNSTREAM_REMOTE_ADDRESS%\", x-b: \"%UPSTREAM_CLUSTER%\"}\n",
    ));
    assert_eq!(
        f,
        [
            "11:56: warning: spec.http[0].headers.request.set.x-b: meshd does not substitute %UPSTREAM_CLUSTER%; the value is sent as written"
        ]
    );
}

#[test]
fn an_authorization_policy_targets_by_selector_or_references() {
    let ap = |spec: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: foo\nspec:\n{spec}"
        )
    };
    assert_eq!(
        check(&ap("  targetRefs:\n  - {kind: Service, name: httpbin}\n")),
        Vec::<String>::new()
    );
    assert_eq!(
        check(&ap(
            "  selector: {matchLabels: {app: a}}\n  targetRefs:\n  - {kind: Service, name: httpbin}\n"
        )),
        ["8:3: error: spec.targetRefs: set a selector or targetRefs, not both"]
    );
    assert_eq!(
        check(&ap(
            "  targetRef: {kind: Service, name: a}\n  targetRefs:\n  - {kind: Service, name: b}\n"
        )),
        ["8:3: error: spec.targetRefs: set targetRef or targetRefs, not both"]
    );
    assert_eq!(
        check(&ap("  targetRefs:\n  - {kind: ServiceEntry, name: a}\n")),
        [
            "8:5: error: spec.targetRefs[0].group: \"\" is not the group of ServiceEntry: use networking.istio.io"
        ]
    );
    assert_eq!(
        check(&ap(
            "  targetRefs:\n  - {kind: Service, group: networking.istio.io, name: a}\n"
        )),
        [
            "8:28: error: spec.targetRefs[0].group: \"networking.istio.io\" is not the group of Service: use \"\" (the core group)"
        ]
    );
    let f = check(&ap("  targetRefs:\n  - {kind: Deployment, name: a}\n"));
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(
        f[0].starts_with("8:12: error: spec.targetRefs[0].kind: \"Deployment\" is not one of"),
        "{f:?}"
    );
    assert_eq!(
        check(&ap(
            "  targetRefs:\n  - {kind: Gateway, group: gateway.networking.k8s.io, name: gw}\n"
        )),
        [
            "8:12: warning: spec.targetRefs[0].kind: meshd is not a gateway: a policy for one applies to no workload here"
        ]
    );
}

#[test]
fn a_revocation_list_is_not_read_when_nothing_is_verified() {
    assert_eq!(
        check(&dr(
            "    tls: {mode: SIMPLE, insecureSkipVerify: true, caCrl: /etc/crl.pem}\n"
        )),
        [
            "8:51: warning: spec.trafficPolicy.tls.caCrl: not read: insecureSkipVerify accepts any certificate"
        ]
    );
}

#[test]
fn traffic_distribution_takes_kubernetes_values() {
    let se = |annotations: &str, spec: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: s\n{annotations}spec:\n  hosts: [s.example]\n  ports: [{{number: 80, name: http}}]\n{spec}"
        )
    };
    assert!(check(&se("", "  trafficDistribution: PreferClose\n")).is_empty());
    let annotated =
        "  annotations:\n    networking.istio.io/traffic-distribution: PreferSameNode\n";
    assert!(check(&se(annotated, "")).is_empty());
    // An unknown value is ignored with a warning (the service is still served).
    assert_eq!(
        check(&se("", "  trafficDistribution: Nearby\n")),
        [
            "8:24: warning: spec.trafficDistribution: \"Nearby\" is not PreferSameZone, PreferClose or PreferSameNode; endpoints are not ranked by distance"
        ]
    );
    let f = check(&se(
        "  annotations:\n    networking.istio.io/traffic-distribution: Nearby\n",
        "",
    ));
    assert_eq!(
        f,
        [
            "6:47: warning: metadata.annotations.networking.istio.io/traffic-distribution: \"Nearby\" is not PreferSameZone, PreferClose or PreferSameNode; endpoints are not ranked by distance"
        ]
    );
}

#[test]
fn authorization_values_istio_refuses_are_errors() {
    let ap = |rule: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: foo\nspec:\n  action: ALLOW\n  rules:\n  - {rule}\n"
        )
    };
    // A service account without its namespace is one of the policy's namespace.
    assert!(check(&ap("from: [{source: {serviceAccounts: [sleep, bar/web]}}]")).is_empty());
    assert_eq!(
        check(&ap("from: [{source: {serviceAccounts: [\"*\"]}}]")),
        [
            "9:40: error: spec.rules[0].from[0].source.serviceAccounts[0]: \"*\" is not a service account: use NAME (in the policy's namespace) or NAMESPACE/NAME, without wildcards"
        ]
    );
    assert_eq!(
        check(&ap(
            "from: [{source: {serviceAccounts: [a], namespaces: [foo]}}]"
        )),
        [
            "9:22: error: spec.rules[0].from[0].source.serviceAccounts: cannot be set together with namespaces (Istio refuses it)"
        ]
    );
    for bad in ["/admin/{*}.json", "/a/{**}/b", "/a/{*}/{x}"] {
        let f = check(&ap(&format!(
            "to: [{{operation: {{paths: [/admin, \"{bad}\"]}}}}]"
        )));
        assert_eq!(f.len(), 1, "{bad}: {f:?}");
        assert!(
            f[0].contains("spec.rules[0].to[0].operation.paths[1]: ")
                && f[0].contains("is not a valid path template"),
            "{f:?}"
        );
    }
    assert!(
        check(&ap(
            "to: [{operation: {paths: [\"/a/{*}/b\", \"/a/{**}\", \"/a/{**}/\"]}}]"
        ))
        .is_empty()
    );
    let when = |key: &str, value: &str| {
        check(&ap(&format!(
            "when: [{{key: {key}, values: [\"{value}\"]}}]"
        )))
    };
    assert_eq!(
        when("destination.port", "http"),
        ["9:45: error: spec.rules[0].when[0].values[0]: \"http\" is not a port number (1-65535)"]
    );
    assert_eq!(when("source.ip", "10.0.0.0/33").len(), 1);
    assert_eq!(when("source.serviceAccount", "a/b/c").len(), 1);
    assert!(when("source.serviceAccount", "sleep").is_empty());
}

/// What would match every request, or nothing, is refused as Istio refuses it: a `from` or
/// `to` that is there but empty, a source or operation with no value, an empty value, a DENY
/// or CUSTOM policy without rules, and a condition key with an empty name.
#[test]
fn authorization_rules_that_say_nothing_are_errors() {
    let ap = |spec: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: foo\nspec:\n{spec}"
        )
    };
    let rule = |rule: &str| check(&ap(&format!("  rules:\n  - {rule}\n")));
    let one = |f: Vec<String>, want: &str| {
        assert_eq!(f.len(), 1, "{want}: {f:?}");
        assert!(f[0].contains(want), "{want}: {f:?}");
    };
    one(
        rule("from: [{source: {principals: []}}]"),
        "error: spec.rules[0].from[0].source: must not be empty",
    );
    one(
        rule("from: [{source: {}}]"),
        "error: spec.rules[0].from[0].source: must not be empty",
    );
    one(
        rule("to: [{operation: {}}]"),
        "error: spec.rules[0].to[0].operation: must not be empty",
    );
    one(
        rule("from: []"),
        "error: spec.rules[0].from: must not be empty",
    );
    one(rule("to: []"), "error: spec.rules[0].to: must not be empty");
    one(
        rule("from: [{source: {principals: [\"\"]}}]"),
        "error: spec.rules[0].from[0].source.principals[0]: must not be empty",
    );
    one(
        rule("to: [{operation: {hosts: [\"\"]}}]"),
        "error: spec.rules[0].to[0].operation.hosts[0]: must not be empty",
    );
    one(
        rule("to: [{operation: {paths: [\"\"]}}]"),
        "error: spec.rules[0].to[0].operation.paths[0]",
    );
    for key in [
        "request.headers[]",
        "request.auth.claims[]",
        "request.headers[x",
    ] {
        let f = rule(&format!("when: [{{key: \"{key}\", notValues: [x]}}]"));
        assert!(
            f.iter()
                .any(|f| f.contains("error: ") && f.contains("is not a condition key")),
            "{key}: {f:?}"
        );
    }
    one(
        rule("when: [{key: \"request.headers[x]\", values: [\"\"]}]"),
        "error: spec.rules[0].when[0].values[0]: must not be empty",
    );
    for action in ["DENY", "CUSTOM"] {
        let f = check(&ap(&format!(
            "  action: {action}\n  provider: {{name: opa}}\n"
        )));
        assert!(
            f.iter().any(|f| f.contains(&format!(
                "error: spec: action {action} without rules never applies"
            ))),
            "{f:?}"
        );
    }
    one(
        check(&ap("  action: DENY\n  rules: []\n")),
        "action DENY without rules never applies",
    );
    one(
        check(
            &ap("  portLevelMtls: {}\n  selector: {matchLabels: {app: a}}\n")
                .replace("AuthorizationPolicy", "PeerAuthentication"),
        ),
        "error: spec.portLevelMtls: must name at least one port",
    );
    // As Istio warns: HTTP attributes alone in a DENY rule deny every TCP connection.
    let deny = |rule: &str| check(&ap(&format!("  action: DENY\n  rules:\n  - {rule}\n")));
    one(
        deny("to: [{operation: {methods: [POST]}}]"),
        "warning: spec.rules[0]: uses only HTTP attributes in a DENY rule",
    );
    let f = deny("from: [{source: {requestPrincipals: [\"*\"]}}]");
    assert!(
        f.iter()
            .any(|f| f.contains("uses only HTTP attributes in a DENY rule")),
        "{f:?}"
    );
    assert!(deny("to: [{operation: {methods: [POST], ports: [\"80\"]}}]").is_empty());
    assert!(deny("from: [{source: {namespaces: [bar]}}]").is_empty());
    // With an L4 source, only that source's TCP connections are denied, all of them.
    one(
        deny("from: [{source: {namespaces: [bar]}}]\n    to: [{operation: {methods: [POST]}}]"),
        "warning: spec.rules[0]: its operation uses only HTTP attributes, so on TCP ports in its scope it denies every connection from its sources",
    );
    // What Istio accepts stays valid: an empty rule, and ALLOW without rules (allow nothing).
    assert!(check(&ap("  action: DENY\n  rules: [{}]\n")).is_empty());
    assert!(check(&ap("  action: ALLOW\n")).is_empty());
    assert!(check(&ap("  {}\n")).is_empty());
    assert!(rule("from: [{source: {notPrincipals: [a]}}]").is_empty());
}

#[test]
fn jwt_attributes_are_a_warning() {
    let f = check(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  rules:\n  - from: [{source: {requestPrincipals: [\"*\"]}}]\n    when: [{key: \"request.auth.claims[iss]\", values: [x]}]\n",
    );
    assert_eq!(f.len(), 2, "{f:?}");
    assert!(f[0].starts_with("6:22: warning: spec.rules[0].from[0].source.requestPrincipals: meshd does not validate JWTs"), "{f:?}");
    assert!(f[1].contains("warning: spec.rules[0].when[0].key: meshd does not validate JWTs, so request.auth.claims[iss] is always absent"), "{f:?}");
}

#[test]
fn sni_hosts_must_be_among_the_virtual_services_hosts() {
    let vs = |sni: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: t}}\nspec:\n  hosts: [\"*.tls.example\", a.example]\n  tls:\n  - match: [{{sniHosts: [{sni}]}}]\n    route: [{{destination: {{host: a.example}}}}]\n"
        )
    };
    assert!(check(&vs("b.tls.example")).is_empty());
    assert!(check(&vs("a.example")).is_empty());
    assert_eq!(
        check(&vs("other.example")),
        [
            "7:25: error: spec.tls[0].match[0].sniHosts[0]: \"other.example\" is not one of the VirtualService's hosts nor covered by one (*.tls.example, a.example), as Istio requires"
        ]
    );
}

/// What Istio's ServiceEntry validation refuses is refused here too, with the field named;
/// an endpoint port name the entry does not declare sent its traffic to the service port.
#[test]
fn service_entries_istio_refuses_are_errors() {
    let se = |spec: &str| {
        check(&format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: s, namespace: shop}}\nspec:\n{spec}"
        ))
    };
    let one = |f: Vec<String>, want: &str| {
        assert_eq!(f.len(), 1, "{want}: {f:?}");
        assert!(f[0].contains(want), "{want}: {f:?}");
    };
    one(
        se(
            "  hosts: [s.test]\n  ports: [{number: 80, name: http}]\n  resolution: STATIC\n  endpoints: [{address: 127.0.0.1, ports: {htpp: 8080}}]\n",
        ),
        "error: spec.endpoints[0].ports.htpp: \"htpp\" is not the name of one of the ServiceEntry's ports (http)",
    );
    one(
        se(
            "  hosts: [s.test]\n  ports: [{number: 80, name: http}]\n  resolution: NONE\n  endpoints: [{address: 127.0.0.1}]\n",
        ),
        "error: spec.endpoints: resolution NONE takes no endpoints",
    );
    one(
        se(
            "  hosts: [s.test]\n  ports: [{number: 80, name: http}]\n  endpoints: [{address: 127.0.0.1}]\n",
        ),
        "warning: spec.endpoints: without resolution (NONE by default)",
    );
    one(
        se("  hosts: [\"*\"]\n  ports: [{number: 80, name: http}]\n"),
        "error: spec.hosts[0]: \"*\" is not a host",
    );
    one(
        se(
            "  hosts: [s.test]\n  ports: [{number: 80, name: http}]\n  resolution: DNS_ROUND_ROBIN\n  endpoints: [{address: a.test}, {address: b.test}]\n",
        ),
        "error: spec.endpoints: resolution DNS_ROUND_ROBIN takes at most one endpoint",
    );
    one(
        se(
            "  hosts: [s.test]\n  addresses: [10.0.0.0/24]\n  ports: [{number: 80, name: http}]\n  resolution: DNS\n",
        ),
        "error: spec.addresses[0]: a CIDR address needs resolution NONE or STATIC",
    );
    one(
        se(
            "  hosts: [a.test, b.test]\n  ports: [{number: 5432, name: pg, protocol: TCP}]\n  resolution: DNS\n",
        ),
        "error: spec.ports: several hosts on a port that is neither HTTP nor TLS",
    );
    one(
        se("  hosts: [s.test]\n  ports: [{number: 80, name: HTTP_Port}]\n"),
        "error: spec.ports[0].name: \"HTTP_Port\" is not a valid name",
    );
    one(
        se(
            "  hosts: [s.test]\n  ports: [{number: 80, name: http}]\n  subjectAltNames: [spiffe://x]\n",
        ),
        "warning: spec.subjectAltNames: meshd does not check",
    );
    // What Istio accepts stays valid.
    assert!(se("  hosts: [a.test, b.test]\n  ports: [{number: 5432, name: pg, protocol: TCP}]\n  resolution: NONE\n").is_empty());
    assert!(se("  hosts: [s.test]\n  ports: [{number: 80, name: http-web}]\n  resolution: STATIC\n  endpoints: [{address: 127.0.0.1, ports: {http-web: 8080}}]\n").is_empty());
}

#[test]
fn a_percentage_without_a_value_is_zero() {
    let http = "  - route:\n    - destination: {host: r}\n    mirror: {host: m}\n    mirrorPercentage: {}\n    fault:\n      abort: {httpStatus: 503, percentage: {}}\n";
    assert_eq!(check(&vs(http)), Vec::<String>::new());
    let set = load_str(Path::new("t.yaml"), &vs(http)).unwrap();
    let route = &set.virtual_services[0].spec.http[0];
    assert_eq!(route.mirror_percentage.map(|p| p.value), Some(0.0));
    let abort = route.fault.as_ref().and_then(|f| f.abort.as_ref()).unwrap();
    assert_eq!(abort.percentage.map(|p| p.value), Some(0.0));
}

/// As Istio's validation: a CUSTOM policy cannot decide on the caller's identity, which the
/// external authorizer is not given; its other attributes are fine.
#[test]
fn custom_policies_cannot_name_the_callers_identity() {
    let custom = |rule: &str| {
        check(&format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: foo\nspec:\n  action: CUSTOM\n  provider: {{name: ext}}\n  rules:\n  - {rule}\n"
        ))
        .into_iter()
        .filter(|f| f.contains("error: "))
        .collect::<Vec<_>>()
    };
    for (rule, at) in [
        (
            "from: [{source: {principals: [cluster.local/ns/a/sa/b]}}]",
            "spec.rules[0].from[0].source.principals",
        ),
        (
            "from: [{source: {notNamespaces: [a]}}]",
            "spec.rules[0].from[0].source.notNamespaces",
        ),
        (
            "from: [{source: {requestPrincipals: [\"*\"]}}]",
            "spec.rules[0].from[0].source.requestPrincipals",
        ),
        (
            "when: [{key: source.namespace, values: [a]}]",
            "spec.rules[0].when[0].key",
        ),
        (
            "when: [{key: \"request.auth.claims[iss]\", values: [a]}]",
            "spec.rules[0].when[0].key",
        ),
    ] {
        let f = custom(rule);
        assert!(
            f.iter()
                .any(|f| f.contains(at) && f.contains("not supported with action CUSTOM")),
            "{rule}: {f:?}"
        );
    }
    let fine = custom(
        "from: [{source: {ipBlocks: [10.0.0.0/8]}}]\n    to: [{operation: {paths: [/ext/*]}}]\n    when: [{key: \"request.headers[x]\", values: [a]}]",
    );
    assert!(fine.is_empty(), "{fine:?}");
}

/// As Istio's (and Envoy's) validation: Maglev's table size is set and prime, below 5000011;
/// a `portLevelSettings` entry sets something besides its port.
#[test]
fn maglev_tables_are_prime_and_port_policies_say_something() {
    let dr = |policy: &str| {
        check(&format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: d\n  namespace: foo\nspec:\n  host: web\n  trafficPolicy:\n{policy}"
        ))
        .into_iter()
        .filter(|f| f.contains("error: "))
        .collect::<Vec<_>>()
    };
    let hash = |maglev: &str| {
        dr(&format!(
            "    loadBalancer:\n      consistentHash:\n        httpHeaderName: x-user\n        maglev: {maglev}\n"
        ))
    };
    assert!(hash("{tableSize: 65537}").is_empty());
    let f = hash("{tableSize: 1000}");
    assert!(
        f.iter()
            .any(|f| f.contains("consistentHash.maglev.tableSize")
                && f.contains("1000 is not prime")),
        "{f:?}"
    );
    assert!(!hash("{}").is_empty(), "a table size must be set");
    assert!(!hash("{tableSize: 5000011}").is_empty(), "below 5000011");
    let f = dr("    portLevelSettings:\n    - port: {number: 80}\n");
    assert!(
        f.iter()
            .any(|f| f.contains("spec.trafficPolicy.portLevelSettings[0]")
                && f.contains("must set at least one of")),
        "{f:?}"
    );
    assert!(
        dr("    portLevelSettings:\n    - port: {number: 80}\n      tls: {mode: DISABLE}\n")
            .is_empty()
    );
}

#[test]
fn istios_retry_fields_are_known() {
    let retries = "  - route:\n    - destination: {host: r}\n    retries:\n      attempts: 2\n      retryOn: 5xx\n      retryRemoteLocalities: true\n      retryIgnorePreviousHosts: false\n      backoff: 50ms\n";
    assert!(check(&vs(retries)).is_empty(), "{:?}", check(&vs(retries)));
    let set = load_str(Path::new("t.yaml"), &vs(retries)).unwrap();
    let r = set.virtual_services[0].spec.http[0]
        .retries
        .as_ref()
        .unwrap();
    assert_eq!(r.retry_ignore_previous_hosts, Some(false));
}

#[test]
fn an_answered_route_has_no_rewrite_or_fault_and_edits_must_change_something() {
    // As Istio validates routes: a redirect or direct response answers at once.
    let both = "  - redirect: {uri: /new}\n    rewrite: {uri: /x}\n    fault:\n      abort: {httpStatus: 503, percentage: {value: 100}}\n  - directResponse: {status: 200}\n    rewrite: {authority: a}\n";
    assert_eq!(
        check(&vs(both)),
        [
            "9:5: error: spec.http[0].rewrite: a route cannot have both rewrite and redirect: redirect answers the request, so the rewrite would never apply",
            "10:5: error: spec.http[0].fault: a route cannot have both fault and redirect: redirect answers the request, so the fault would never apply",
            "13:5: error: spec.http[1].rewrite: a route cannot have both rewrite and directResponse: directResponse answers the request, so the rewrite would never apply",
        ]
    );
    let empty = "  - redirect: {}\n  - rewrite: {}\n    route:\n    - destination: {host: r}\n";
    assert_eq!(
        check(&vs(empty)),
        [
            "8:5: error: spec.http[0].redirect: set uri, authority, scheme, port or derivePort: a redirect that changes nothing sends the client back to the same URL",
            "9:5: error: spec.http[1].rewrite: set uri, uriRegexRewrite or authority",
        ]
    );
    assert!(check(&vs("  - redirect: {derivePort: FROM_REQUEST_PORT}\n")).is_empty());
}

#[test]
fn header_values_hold_no_line_break_and_framing_edits_are_ignored() {
    let http = "  - headers:\n      request:\n        set: {x-a: \"one\\ntwo\", content-length: \"5\"}\n      response:\n        remove: [transfer-encoding]\n    route:\n    - destination: {host: r}\n";
    assert_eq!(
        check(&vs(http)),
        [
            "10:20: error: spec.http[0].headers.request.set.x-a: \"one\\ntwo\" holds a line break or another control character, which no header value may",
            "10:32: warning: spec.http[0].headers.request.set.content-length: meshd frames each message by the body it sends, so an edit of this field is ignored",
            "12:18: warning: spec.http[0].headers.response.remove[0]: meshd frames each message by the body it sends, so an edit of this field is ignored",
        ]
    );
}

#[test]
fn a_list_item_or_a_map_value_left_empty_is_an_error_not_a_wildcard() {
    // Read as "anything", `app:` with no value would select every workload, and a header
    // match with none would match every request.
    let pa = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: p\n  namespace: default\nspec:\n  selector:\n    matchLabels:\n      app:\n  mtls: {mode: STRICT}\n";
    assert_eq!(
        check(pa),
        [
            "9:7: error: spec.selector.matchLabels.app: has no value (null): give it one (\"\" for an empty string) or remove the key"
        ]
    );
    let http = "  - match:\n    - headers:\n        x-debug: ~\n    route:\n    - destination: {host: r}\n  - ~\n";
    assert_eq!(
        check(&vs(http)),
        [
            "10:9: error: spec.http[0].match[0].headers.x-debug: has no value (null): give it one (\"\" for an empty string) or remove the key",
            "13:5: error: spec.http[1]: an empty list item (null): remove it or give it a value",
        ]
    );
}

#[test]
fn a_keepalive_past_what_linux_takes_is_capped_with_a_warning() {
    let f = check(&dr(
        "    connectionPool:\n      tcp:\n        tcpKeepalive: {time: 87600000h, interval: 75s}\n",
    ));
    assert_eq!(
        f,
        [
            "10:30: warning: spec.trafficPolicy.connectionPool.tcp.tcpKeepalive.time: Linux takes at most 32767s (about 9 h) here; meshd uses that"
        ]
    );
}

#[test]
fn empty_matches_cors_methods_and_settings_of_retries_turned_off() {
    let http = "  - match:\n    - uri: {prefix: \"\"}\n    - authority: {regex: \"\"}\n    corsPolicy:\n      allowMethods: [GET, GETT]\n    retries: {attempts: 0, retryOn: 5xx}\n    route:\n    - destination: {host: r}\n";
    assert_eq!(
        check(&vs(http)),
        [
            "9:21: error: spec.http[0].match[0].uri.prefix: an empty prefix matches anything: remove the match, or give it a value",
            "10:26: error: spec.http[0].match[1].authority.regex: an empty regex matches anything: remove the match, or give it a value",
            "12:27: error: spec.http[0].corsPolicy.allowMethods[1]: \"GETT\" is not a method CORS allows here: GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH",
            "13:28: warning: spec.http[0].retries.retryOn: has no effect: attempts 0 turns retries off (Istio refuses this combination)",
        ]
    );
}

#[test]
fn header_edits_name_no_pseudo_header_and_keep_host_on_requests_only() {
    let http = "  - headers:\n      request:\n        set: {\":authority\": a, \":path\": /x}\n        remove: [host]\n      response:\n        set: {host: b}\n    route:\n    - destination: {host: r}\n";
    assert_eq!(
        check(&vs(http)),
        [
            "10:32: error: spec.http[0].headers.request.set.:path: :path is a pseudo-header, which header edits cannot change (Istio refuses it)",
            "11:18: error: spec.http[0].headers.request.remove[0]: host cannot be removed, nor set on a response (Istio refuses it)",
            "13:15: error: spec.http[0].headers.response.set.host: host cannot be removed, nor set on a response (Istio refuses it)",
        ]
    );
}
