//! VirtualService routing on captured traffic, with the YAML a user would write for Istio:
//! weighted canaries, header-based routing, subsets from DestinationRule labels on ServiceEntry
//! endpoints, direct responses, redirects, rewrites, header edits and 404 NR.

mod support;

use support::{
    ebpf_available,
    http_backend::HttpBackend,
    mesh::{curl, curl_many, policies, start, status, two_backends},
};

#[test]
fn a_90_10_canary_split_lands_within_tolerance() {
    if !ebpf_available("canary") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = "  - route:\n    - destination:\n        host: reviews\n        subset: v1\n      weight: 90\n    - destination:\n        host: reviews\n        subset: v2\n      weight: 10\n";
    let d = start("canary", 41, &policies(&v1, &v2, routes));
    let n = 2000;
    let codes = curl_many(&d, "http://reviews:9080/whoami", n, "%{http_code}\\n");
    assert_eq!(
        codes.iter().filter(|c| *c == "200").count(),
        n,
        "every request answered"
    );
    let (a, b) = (v1.requests(), v2.requests());
    assert_eq!(a + b, n);
    // Binomial(2000, 0.1): mean 200, sd 13.4; 5 sd either side.
    assert!((133..=267).contains(&b), "v2 got {b} of {n} (v1 {a})");
}

/// Weights are relative, as Istio reads them since 1.15: 3 and 1 split the traffic 75/25
/// though they do not add up to 100.
#[test]
fn weights_that_do_not_add_up_to_100_split_by_their_proportion() {
    if !ebpf_available("relative_weights") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = "  - route:\n    - destination:\n        host: reviews\n        subset: v1\n      weight: 3\n    - destination:\n        host: reviews\n        subset: v2\n      weight: 1\n";
    let d = start("relative-weights", 333, &policies(&v1, &v2, routes));
    let n = 400;
    let codes = curl_many(&d, "http://reviews:9080/whoami", n, "%{http_code}\\n");
    assert!(codes.iter().all(|c| c == "200"), "{codes:?}");
    let (a, b) = (v1.requests(), v2.requests());
    assert_eq!(a + b, n);
    // Binomial(400, 0.25): mean 100, sd 8.7; 5 sd either side.
    assert!((57..=143).contains(&b), "v2 got {b} of {n} (v1 {a})");
}

/// A route to a host no ServiceEntry describes (other than the host requested) has no cluster,
/// as Istio builds none for it: Envoy's 503 with an empty body and flag NC.
#[test]
fn a_route_to_an_unknown_host_has_no_cluster() {
    if !ebpf_available("unknown_host_route") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = "  - route:\n    - destination:\n        host: nowhere.example.com\n";
    let d = start("unknown-host-route", 334, &policies(&v1, &v2, routes));
    let out = curl(&d, &["-w", "%{http_code}", "http://reviews:9080/"]);
    assert_eq!(out, "503", "an empty body, then the status");
    assert!(d.log_text().contains("flags=NC"), "{}", d.log_text());
    assert_eq!(v1.requests() + v2.requests(), 0);
}

/// A destination that names no port goes to its service's only port, and is logged under
/// that port's cluster (as Istio names it), not under the port the client dialled: also when
/// the request finds no endpoint there.
#[test]
fn a_destination_without_a_port_is_logged_under_its_services_only_port() {
    if !ebpf_available("portless_destination") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = "  - route:\n    - destination:\n        host: reviews\n        subset: v1\n";
    let front = r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: front
spec:
  hosts:
  - front.example
  http:
  - route:
    - destination:
        host: reviews
        subset: v2
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: vacant
spec:
  hosts:
  - vacant.example
  http:
  - route:
    - destination:
        host: reviews
        subset: v3
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews-v3
spec:
  host: reviews
  subsets:
  - name: v3
    labels:
      version: v3
"#;
    let yaml = policies(&v1, &v2, routes) + front;
    let d = start("portless-destination", 335, &yaml);
    let out = curl(
        &d,
        &[
            "--resolve",
            "front.example:7777:127.0.0.1",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://front.example:7777/",
        ],
    );
    assert_eq!(out, "200");
    assert_eq!(v2.requests(), 1);
    let logged = support::eventually(std::time::Duration::from_secs(5), || {
        d.log_text()
            .contains(r#""upstream_cluster":"outbound|9080|v2|reviews.default.svc.cluster.local""#)
            .then_some(())
    });
    assert!(logged.is_some(), "{}", d.log_text());
    // Subset v3 has no endpoint: 503 UH, under the same port's cluster.
    let out = curl(
        &d,
        &[
            "--resolve",
            "vacant.example:7777:127.0.0.1",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://vacant.example:7777/",
        ],
    );
    assert_eq!(out, "503");
    let logged = support::eventually(std::time::Duration::from_secs(5), || {
        d.log_text()
            .contains(r#""upstream_cluster":"outbound|9080|v3|reviews.default.svc.cluster.local""#)
            .then_some(())
    });
    assert!(logged.is_some(), "{}", d.log_text());
}

#[test]
fn header_routing_sends_premium_users_to_v2() {
    if !ebpf_available("header_routing") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = r#"  - match:
    - headers:
        end-user:
          exact: premium
    route:
    - destination:
        host: reviews
        subset: v2
  - route:
    - destination:
        host: reviews
        subset: v1
"#;
    let d = start("header-routing", 42, &policies(&v1, &v2, routes));
    for _ in 0..5 {
        curl(&d, &["-H", "end-user: premium", "http://reviews:9080/"]);
        curl(&d, &["-H", "end-user: free", "http://reviews:9080/"]);
        curl(&d, &["http://reviews:9080/"]);
    }
    assert_eq!(v2.requests(), 5, "premium requests went to v2");
    assert_eq!(v1.requests(), 10, "everyone else went to v1");
}

#[test]
fn direct_response_redirect_rewrite_headers_and_no_route() {
    if !ebpf_available("route_actions") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = r#"  - match:
    - uri:
        prefix: /typo
    route:
    - destination:
        host: reviews
        subset: v1
        port:
          number: 9999
  - match:
    - uri:
        exact: /health
    directResponse:
      status: 200
      body:
        string: "ok from meshd"
    headers:
      response:
        set:
          cache-control: no-store
  - match:
    - uri:
        prefix: /old
    redirect:
      uri: /new
      redirectCode: 308
  - match:
    - uri:
        prefix: /broken
    fault:
      abort:
        httpStatus: 418
        percentage:
          value: 100
    headers:
      response:
        set:
          x-route: edited
    route:
    - destination:
        host: reviews
        subset: v1
  - match:
    - uri:
        exact: /bytes
    directResponse:
      status: 200
      body:
        bytes: aGVsbG8gZnJvbSBieXRlcw==
  - match:
    - uri:
        prefix: /secure
    redirect:
      scheme: https
      authority: secure.example.com
  - match:
    - uri:
        prefix: /api/v1
    rewrite:
      uri: /v1
    headers:
      request:
        set:
          x-route: rewritten
      response:
        add:
          x-served-by: meshd
    route:
    - destination:
        host: reviews
        subset: v1
"#;
    let d = start("route-actions", 43, &policies(&v1, &v2, routes));
    assert_eq!(curl(&d, &["http://reviews:9080/health"]), "ok from meshd");
    let direct = curl(&d, &["-i", "http://reviews:9080/health"]).to_ascii_lowercase();
    assert!(
        direct.contains("cache-control: no-store"),
        "a direct response gets its route's response headers: {direct}"
    );
    // So does a fault's abort, as Envoy's local replies once a route is chosen.
    let abort = curl(&d, &["-i", "http://reviews:9080/broken"]).to_ascii_lowercase();
    assert!(abort.starts_with("http/1.1 418"), "{abort}");
    assert!(abort.contains("x-route: edited"), "{abort}");
    // HEAD gets the head alone, over HTTP/2 as over HTTP/1.1: the length of the body it would
    // have, and the stream ended with the headers.
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let head = curl(&d, &["-sSI", version, "http://reviews:9080/health"]);
        let head = head.to_ascii_lowercase();
        assert!(head.contains("content-length: 13"), "{version}: {head}");
    }
    let redirect = curl(
        &d,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
            "http://reviews:9080/old/page",
        ],
    );
    assert_eq!(redirect, "308 http://reviews:9080/new");
    // Envoy keeps the request's query on a redirect.
    let with_query = |url: &str| {
        curl(
            &d,
            &["-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", url],
        )
    };
    assert_eq!(
        with_query("http://reviews:9080/old/page?a=1&b=2"),
        "308 http://reviews:9080/new?a=1&b=2"
    );
    assert_eq!(
        with_query("http://reviews:9080/secure/x?y=1"),
        "301 https://secure.example.com/secure/x?y=1"
    );
    assert_eq!(
        curl(&d, &["http://reviews:9080/bytes"]),
        "hello from bytes",
        "a directResponse body given as base64 bytes"
    );
    let out = curl(&d, &["-i", "http://reviews:9080/api/v1/items?id=7"]);
    assert!(
        out.contains("\"path\":\"/v1/items?id=7\""),
        "prefix rewritten, query kept: {out}"
    );
    assert!(
        out.contains("\"original_path\":\"/api/v1/items?id=7\""),
        "as Envoy, the path received in x-envoy-original-path: {out}"
    );
    assert!(
        out.contains("\"x_route\":\"rewritten\""),
        "request header set: {out}"
    );
    assert!(
        out.to_ascii_lowercase().contains("x-served-by: meshd"),
        "response header added: {out}"
    );
    // As Envoy's router: the upstream's time in milliseconds on what the upstream answered,
    // not on meshd's own answers.
    let service_time = |text: &str| {
        (text.to_ascii_lowercase().lines()).find_map(|l| {
            l.strip_prefix("x-envoy-upstream-service-time: ")?
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    assert!(service_time(&out).is_some_and(|ms| ms < 5_000), "{out}");
    assert_eq!(service_time(&direct), None, "{direct}");
    // A port the service does not declare: Istio has no cluster for it, and Envoy answers
    // 503 with flag NC and no body, without reaching an endpoint.
    let nc = curl(
        &d,
        &[
            "-w",
            "%{http_code} %{size_download} [%{content_type}]",
            "http://reviews:9080/typo",
        ],
    );
    assert_eq!(nc, "503 0 []");
    assert!(d.log_text().contains("flags=NC"), "503 carries flag NC");
    // No route matches: Envoy's 404, with no body either.
    let nr = curl(
        &d,
        &[
            "-w",
            "%{http_code} %{size_download} [%{content_type}]",
            "http://reviews:9080/elsewhere",
        ],
    );
    assert_eq!(nr, "404 0 []");
    assert!(d.log_text().contains("flags=NR"), "404 carries flag NR");
    assert_eq!(v1.requests(), 1);
    assert_eq!(v2.requests(), 0);
}

/// A route's corsPolicy as Istio's sidecar applies it: preflights from allowed origins are
/// answered by the proxy, responses to allowed origins carry the allow headers, and other
/// origins get none (their preflights go on to the upstream, Istio's default FORWARD).
#[test]
fn cors_preflights_are_answered_and_allowed_origins_marked() {
    if !ebpf_available("cors") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = r#"  - corsPolicy:
      allowOrigins:
      - exact: https://app.example.com
      - regex: "https://.*[.]partner[.]example"
      allowMethods: [GET, POST]
      allowHeaders: [x-custom, content-type]
      exposeHeaders: [x-served-by]
      maxAge: 24h
      allowCredentials: true
    route:
    - destination:
        host: reviews
        subset: v1
"#;
    let d = start("cors", 182, &policies(&v1, &v2, routes));
    let head = |args: &[&str]| {
        let mut all = vec!["-s", "-o", "/dev/null", "-D", "-"];
        all.extend_from_slice(args);
        curl(&d, &all).to_ascii_lowercase()
    };
    let preflight = |origin: &str| {
        head(&[
            "-X",
            "OPTIONS",
            "-H",
            &format!("Origin: {origin}"),
            "-H",
            "Access-Control-Request-Method: POST",
            "-H",
            "Access-Control-Request-Headers: x-custom",
            "http://reviews:9080/api",
        ])
    };

    let answered = preflight("https://shop.partner.example");
    for line in [
        "http/1.1 200",
        "access-control-allow-origin: https://shop.partner.example",
        "access-control-allow-methods: get,post",
        "access-control-allow-headers: x-custom,content-type",
        "access-control-max-age: 86400",
        "access-control-allow-credentials: true",
    ] {
        assert!(
            answered.contains(line),
            "{line} in the preflight answer:
{answered}"
        );
    }
    assert_eq!(v1.requests(), 0, "meshd answered the preflight itself");

    let allowed = head(&[
        "-H",
        "Origin: https://app.example.com",
        "http://reviews:9080/api",
    ]);
    assert!(
        allowed.contains("access-control-allow-origin: https://app.example.com"),
        "{allowed}"
    );
    assert!(
        allowed.contains("access-control-allow-credentials: true"),
        "{allowed}"
    );
    assert!(
        allowed.contains("access-control-expose-headers: x-served-by"),
        "{allowed}"
    );
    assert_eq!(v1.requests(), 1);

    let other = head(&[
        "-H",
        "Origin: https://evil.example",
        "http://reviews:9080/api",
    ]);
    assert!(
        !other.contains("access-control-"),
        "no CORS headers for another origin: {other}"
    );
    assert_eq!(v1.requests(), 2);

    let forwarded = preflight("https://evil.example");
    assert!(
        !forwarded.contains("access-control-allow-origin"),
        "{forwarded}"
    );
    assert_eq!(
        v1.requests(),
        3,
        "an unmatched preflight goes on to the upstream"
    );

    let plain = head(&["http://reviews:9080/api"]);
    assert!(
        !plain.contains("access-control-"),
        "no Origin, no CORS: {plain}"
    );
    assert_eq!(v2.requests(), 0);
}

/// `rewrite.uriRegexRewrite` with RE2 group references, a ServiceEntry port's `targetPort` for
/// an endpoint that does not map the port itself, and `sourceNamespace` matches.
#[test]
fn a_regex_rewrite_and_a_target_port_reach_the_upstream() {
    if !ebpf_available("regex_rewrite") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = r#"  - match:
    - uri:
        prefix: /acct
      headers:
        x-account:
          regex: \d+\Q.\E\w+
    directResponse:
      status: 200
      body:
        string: account
  - match:
    - sourceNamespace: billing
    directResponse:
      status: 418
  - match:
    - sourceNamespace: default
      uri:
        prefix: /ns
    directResponse:
      status: 200
      body:
        string: from the default namespace
  - match:
    - uri:
        prefix: /service/
    rewrite:
      uriRegexRewrite:
        match: ^/service/([^/]+)(/.*)$
        rewrite: \2/instance/\1
    route:
    - destination:
        host: reviews
        subset: v1
  - route:
    - destination:
        host: reviews
        subset: v2
"#;
    let p1 = v1.addr.port();
    let yaml = policies(&v1, &v2, routes)
        .replace(
            "    protocol: HTTP\n",
            &format!("    protocol: HTTP\n    targetPort: {p1}\n"),
        )
        .replace(&format!("    ports:\n      http: {p1}\n"), "");
    assert!(
        !yaml.contains(&format!("http: {p1}")),
        "v1 maps no port: {yaml}"
    );
    let d = start("regex-rewrite", 183, &yaml);
    let out = curl(&d, &["http://reviews:9080/service/foo/v1/api?x=1"]);
    assert!(
        out.contains("\"path\":\"/v1/api/instance/foo?x=1\""),
        "path rewritten, query kept: {out}"
    );
    assert_eq!(v1.requests(), 1, "v1 reached on the targetPort");
    assert_eq!(status(&d, "http://reviews:9080/other"), "200");
    assert_eq!(v2.requests(), 1, "v2 keeps its own port mapping");
    // RE2's `\d` and `\w` are ASCII, and `\Q...\E` quotes: digits of other scripts
    // match neither, as in Envoy, and the request goes on to the last route (v2).
    let account = |value: &str| {
        curl(
            &d,
            &[
                "-H",
                &format!("x-account: {value}"),
                "http://reviews:9080/acct",
            ],
        )
    };
    assert_eq!(account("123.ab_c"), "account");
    assert!(account("١٢٣.ab").contains("\"path\":\"/acct\""));
    assert!(account("123.é").contains("\"path\":\"/acct\""));
    assert!(account("123xab").contains("\"path\":\"/acct\""));
    assert_eq!(v2.requests(), 4);
    // The client is default/productpage: sourceNamespace matches its namespace only.
    assert_eq!(
        curl(&d, &["http://reviews:9080/ns"]),
        "from the default namespace"
    );
}

/// `gateways` as Istio's sidecars read them: a VirtualService bound to gateways only (here
/// one listed before the mesh's own, which would otherwise win the host) and a match naming
/// only a gateway configure the gateway, never mesh traffic; `mesh` in either list applies.
#[test]
fn routes_bound_to_gateways_only_leave_mesh_traffic_alone() {
    if !ebpf_available("gateways") {
        return;
    }
    let (v1, v2) = two_backends();
    let ingress = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews-ingress
spec:
  hosts:
  - reviews
  gateways:
  - istio-system/bookinfo-gateway
  http:
  - directResponse:
      status: 418
---
"#;
    let routes = r#"  - match:
    - gateways:
      - istio-system/bookinfo-gateway
      uri:
        prefix: /
    directResponse:
      status: 418
  - match:
    - gateways:
      - mesh
      uri:
        prefix: /mesh
    route:
    - destination:
        host: reviews
        subset: v2
  - route:
    - destination:
        host: reviews
        subset: v1
"#;
    let mesh = policies(&v1, &v2, routes).replace(
        "  - reviews\n  http:\n",
        "  - reviews\n  gateways:\n  - istio-system/bookinfo-gateway\n  - mesh\n  http:\n",
    );
    assert!(mesh.contains("  - mesh\n"), "{mesh}");
    let d = start("gateways", 193, &format!("{ingress}{mesh}"));
    assert_eq!(status(&d, "http://reviews:9080/"), "200");
    assert_eq!(v1.requests(), 1, "the mesh's default route");
    assert_eq!(status(&d, "http://reviews:9080/mesh/page"), "200");
    assert_eq!(v2.requests(), 1, "the match bound to the mesh");
}

/// Header matches on pseudo-headers (`:method`, `:path` with its query, `:authority`) and on
/// `host`, which an HTTP/2 request carries as `:authority`: as Envoy matches them, over
/// HTTP/1.1 and HTTP/2 alike.
#[test]
fn pseudo_headers_and_host_match_over_both_protocols() {
    if !ebpf_available("pseudo_headers") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = r#"  - match:
    - headers:
        ":method":
          exact: DELETE
    directResponse:
      status: 405
  - match:
    - headers:
        ":path":
          exact: /q?x=1
    directResponse:
      status: 201
  - match:
    - headers:
        host:
          exact: reviews:9080
        ":authority":
          prefix: reviews
      uri:
        prefix: /host
    directResponse:
      status: 202
  - route:
    - destination:
        host: reviews
        subset: v1
"#;
    let d = start("pseudo-headers", 198, &policies(&v1, &v2, routes));
    for proto in ["--http1.1", "--http2-prior-knowledge"] {
        let code = |args: &[&str]| {
            let mut all = vec![proto, "-o", "/dev/null", "-w", "%{http_code}"];
            all.extend_from_slice(args);
            support::mesh::curl(&d, &all)
        };
        assert_eq!(
            code(&["-X", "DELETE", "http://reviews:9080/"]),
            "405",
            "{proto}"
        );
        assert_eq!(code(&["http://reviews:9080/q?x=1"]), "201", "{proto}");
        assert_eq!(code(&["http://reviews:9080/q?x=2"]), "200", "{proto}");
        assert_eq!(code(&["http://reviews:9080/host"]), "202", "{proto}");
    }
    assert_eq!(v1.requests(), 2, "only /q?x=2 reached the upstream");
}

/// Istio's default path normalization: dot segments are resolved before routing, so
/// `/public/../admin` cannot slip past a route for `/admin`, and the upstream gets the
/// normalized path.
#[test]
fn dot_segments_are_resolved_before_routing_and_forwarding() {
    if !ebpf_available("path_normalization") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = r#"  - match:
    - uri:
        prefix: /admin
    directResponse:
      status: 403
  - route:
    - destination:
        host: reviews
        subset: v1
"#;
    let d = start("path-normalization", 199, &policies(&v1, &v2, routes));
    let code = |path: &str| {
        let url = format!("http://reviews:9080{path}");
        curl(
            &d,
            &[
                "--path-as-is",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &url,
            ],
        )
    };
    assert_eq!(code("/public/../admin/users"), "403");
    assert_eq!(code("/public/./../admin"), "403");
    assert_eq!(
        code("/public/%2e%2E/admin"),
        "403",
        "an escaped dot is a dot"
    );
    assert_eq!(
        code("/%61dmin/users"),
        "403",
        "an escaped unreserved character is that character"
    );
    assert_eq!(v1.requests(), 0);
    let out = curl(
        &d,
        &["--path-as-is", "http://reviews:9080/a/./b/../c?q=../x"],
    );
    assert!(
        out.contains("\"path\":\"/a/c?q=../x\""),
        "normalized upstream: {out}"
    );
}

/// Header edits in the order Istio configures Envoy: within a level remove, then set, then
/// add; weighted destinations' edits before the route's (the route's `set` wins), a single
/// destination's in one list with them (all removals first, then the sets, its `set` winning); `rewrite.authority` after them all; and Envoy's
/// `%...%` operators in values.
#[test]
fn header_edits_apply_in_envoys_order() {
    if !ebpf_available("header_order") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = r#"  - match:
    - uri:
        prefix: /order
    headers:
      request:
        remove: [x-route]
        set:
          x-route: route-level
    route:
    - destination:
        host: reviews
        subset: v1
      weight: 50
      headers:
        request:
          set:
            x-route: destination-level
    - destination:
        host: reviews
        subset: v1
      weight: 50
      headers:
        request:
          set:
            x-route: destination-level
  - match:
    - uri:
        prefix: /single
    headers:
      request:
        set:
          x-route: route-level
    route:
    - destination:
        host: reviews
        subset: v1
      headers:
        request:
          set:
            x-route: destination-level
  - match:
    - uri:
        prefix: /one-list
    headers:
      request:
        set:
          x-route: route-level
    route:
    - destination:
        host: reviews
        subset: v1
      headers:
        request:
          remove: [x-route]
  - match:
    - uri:
        prefix: /operators
    headers:
      request:
        set:
          x-route: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%|%REQ(x-user)%|100%%"
    route:
    - destination:
        host: reviews
        subset: v1
  - match:
    - uri:
        prefix: /authority
    rewrite:
      authority: rewritten.example
    headers:
      request:
        set:
          host: set.example
    route:
    - destination:
        host: reviews
        subset: v1
  - match:
    - uri:
        prefix: /seen
    rewrite:
      uri: /whoami
      authority: upstream.example
    headers:
      response:
        set:
          x-sent: "%REQ(:authority)%|%REQ(:path)%|%REQ(x-envoy-original-path)%"
    route:
    - destination:
        host: reviews
        subset: v1
"#;
    let d = start("header-order", 200, &policies(&v1, &v2, routes));
    // Response edits read the request as it went upstream, as Envoy's router edits it.
    let out = curl(&d, &["-si", "http://reviews:9080/seen?q=1"]).to_ascii_lowercase();
    assert!(
        out.contains("x-sent: upstream.example|/whoami?q=1|/seen?q=1"),
        "{out}"
    );
    let out = curl(&d, &["-H", "x-route: client", "http://reviews:9080/order"]);
    assert!(out.contains("\"x_route\":\"route-level\""), "{out}");
    let out = curl(&d, &["http://reviews:9080/single"]);
    assert!(out.contains("\"x_route\":\"destination-level\""), "{out}");
    // A single destination's edits join the route's list: every removal comes first, so the
    // destination's `remove` takes the client's header, not the route's `set`.
    let out = curl(
        &d,
        &["-H", "x-route: client", "http://reviews:9080/one-list"],
    );
    assert!(out.contains("\"x_route\":\"route-level\""), "{out}");
    let out = curl(&d, &["http://reviews:9080/authority"]);
    assert!(out.contains("\"host\":\"rewritten.example\""), "{out}");
    // Envoy's operators in values, as Istio passes them through.
    let out = curl(
        &d,
        &["-H", "x-user: alice", "http://reviews:9080/operators"],
    );
    assert!(
        out.contains("\"x_route\":\"127.0.0.1|alice|100%\""),
        "{out}"
    );
}

/// A DestinationRule with a `workloadSelector` shapes the service for the clients it selects
/// only: its subset exists for productpage (a WorkloadEntry with its labels), not for ratings.
#[test]
fn a_destination_rule_with_a_workload_selector_applies_to_the_clients_it_selects() {
    if !ebpf_available("dr_workload_selector") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = r#"  - route:
    - destination:
        host: reviews
        subset: canary
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews-for-productpage
spec:
  host: reviews
  workloadSelector:
    matchLabels:
      app: productpage
  subsets:
  - name: canary
    labels:
      version: v2
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: productpage
spec:
  address: 127.0.0.1
  labels:
    app: productpage
"#;
    let d = start("dr-workload-selector", 201, &policies(&v1, &v2, routes));
    assert_eq!(status(&d, "http://reviews:9080/"), "200");
    assert_eq!(v2.requests(), 1, "productpage's rule has the canary subset");
    let out = d
        .exec(
            "default/ratings",
            &[
                "curl",
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--resolve",
                "reviews:9080:127.0.0.50",
                "http://reviews:9080/",
            ],
        )
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "503",
        "ratings is not selected: no canary subset for it"
    );
    // As Istio builds no cluster for a subset no rule defines: Envoy's cluster not found.
    assert!(
        d.log_text().contains("has no subset canary") && d.log_text().contains("flags=NC"),
        "{}",
        d.log_text()
    );
    assert_eq!(v1.requests() + v2.requests(), 1);
}

/// ServiceEntry `addresses` given as a CIDR range: any address in it is the service's, on
/// its declared ports.
#[test]
fn an_address_range_names_its_service() {
    if !ebpf_available("cidr_vip") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = "  - route:\n    - destination:\n        host: reviews\n        subset: v1\n";
    let yaml = policies(&v1, &v2, routes).replace("  - 127.0.0.50\n", "  - 127.0.0.48/29\n");
    assert!(yaml.contains("127.0.0.48/29"));
    let d = start("cidr-vip", 204, &yaml);
    let code = curl(
        &d,
        &[
            "--resolve",
            "elsewhere:9080:127.0.0.53",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://elsewhere:9080/",
        ],
    );
    assert_eq!(code, "200");
    assert_eq!(v1.requests(), 1, "the service's route took it");
}

#[test]
fn a_port_declared_tcp_skips_http_and_balances_connections_over_the_endpoints() {
    if !ebpf_available("declared_tcp") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = "  - route:\n    - destination:\n        host: reviews\n        subset: v1\n";
    let balanced = |lb: &str| {
        policies(&v1, &v2, routes)
            .replace("protocol: HTTP", "protocol: TCP")
            .replace(
                "spec:\n  host: reviews\n  subsets:",
                &format!("spec:\n  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      {lb}\n  subsets:"),
            )
    };
    let d = start("declared-tcp", 44, &balanced("simple: ROUND_ROBIN"));
    for _ in 0..4 {
        assert_eq!(status(&d, "http://reviews:9080/whoami"), "200");
    }
    // L4: each connection goes to the next endpoint of the VIP's service, by the
    // DestinationRule's load balancer; the HTTP route (v1 only) does not apply, and no
    // request line is logged.
    assert_eq!((v1.accepted(), v2.accepted()), (2, 2));
    assert!(!d.log_text().contains("request method="), "served at L4");
    drop(d);
    // A consistent hash on the source IP keeps every connection of this client (127.0.0.1)
    // on one endpoint.
    let d = start(
        "declared-tcp-hash",
        202,
        &balanced("consistentHash: {useSourceIp: true}"),
    );
    for _ in 0..6 {
        assert_eq!(status(&d, "http://reviews:9080/whoami"), "200");
    }
    let (a, b) = (v1.accepted() - 2, v2.accepted() - 2);
    assert!(
        (a, b) == (6, 0) || (a, b) == (0, 6),
        "one endpoint: ({a}, {b})"
    );
    drop(d);
    // Failover priorities apply to connections too: `version=v2` first while it is healthy.
    let d = start(
        "declared-tcp-priority",
        220,
        &balanced(
            "simple: ROUND_ROBIN\n      localityLbSetting:\n        failoverPriority: [version=v2]\n    outlierDetection:\n      consecutive5xxErrors: 5",
        ),
    );
    let (a, b) = (v1.accepted(), v2.accepted());
    for _ in 0..6 {
        assert_eq!(status(&d, "http://reviews:9080/whoami"), "200");
    }
    assert_eq!((v1.accepted() - a, v2.accepted() - b), (0, 6), "all to v2");
}

/// Istio's TCP traffic shifting: a VirtualService's `tcp` routes send opaque connections to a
/// service's subsets by weight; a route whose match does not hold is skipped.
#[test]
fn tcp_routes_shift_connections_between_subsets_by_weight() {
    if !ebpf_available("tcp_routes") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = "  - route:\n    - destination:\n        host: reviews\n        subset: v1\n  tcp:\n  - match:\n    - sourceNamespace: billing\n    route:\n    - destination:\n        host: reviews\n        subset: v1\n  - match:\n    - port: 9080\n    route:\n    - destination:\n        host: reviews\n        subset: v1\n      weight: 10\n    - destination:\n        host: reviews\n        subset: v2\n      weight: 90\n";
    let yaml = policies(&v1, &v2, routes).replace("protocol: HTTP", "protocol: TCP");
    let d = start("tcp-routes", 184, &yaml);
    let n = 80;
    for _ in 0..n {
        assert_eq!(status(&d, "http://reviews:9080/whoami"), "200");
    }
    let (a, b) = (v1.accepted(), v2.accepted());
    assert_eq!(a + b, n, "one upstream connection per client connection");
    // Binomial(80, 0.1): mean 8, sd 2.7; round robin over the endpoints would give 40 each.
    assert!(a <= 22 && b >= 58, "10/90 by weight: v1 {a}, v2 {b}");
    assert!(
        d.log_text().contains("reviews.default.svc.cluster.local"),
        "the connections are logged against the service"
    );
}

/// A ServiceEntry with `resolution: DNS` whose endpoint is a name: meshd resolves it (here
/// `localhost`, from the hosts file) and sends to its address.
#[test]
fn endpoint_names_are_resolved_with_dns_resolution() {
    if !ebpf_available("dns_endpoints") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = "  - route:\n    - destination:\n        host: reviews\n        subset: v1\n";
    let yaml = policies(&v1, &v2, routes)
        .replace("resolution: STATIC", "resolution: DNS")
        .replacen("  - address: 127.0.0.1\n", "  - address: localhost\n", 1);
    assert!(yaml.contains("address: localhost"));
    let d = start("dns-endpoints", 185, &yaml);
    for _ in 0..3 {
        assert_eq!(status(&d, "http://reviews:9080/whoami"), "200");
    }
    assert_eq!((v1.requests(), v2.requests()), (3, 0));
}

/// VirtualService `tls` routes steer TLS connections by the server name of their ClientHello
/// (exact and wildcard sniHosts), here to two subsets of a service on a port declared TLS.
#[test]
fn tls_routes_steer_connections_by_server_name() {
    if !ebpf_available("tls_routes") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = "  - route:\n    - destination:\n        host: reviews\n  tls:\n  - match:\n    - sniHosts: [v2.reviews.example]\n    route:\n    - destination:\n        host: reviews\n        subset: v2\n  - match:\n    - sniHosts: [\"*.reviews.example\"]\n    route:\n    - destination:\n        host: reviews\n        subset: v1\n";
    let yaml = policies(&v1, &v2, routes).replace("protocol: HTTP", "protocol: TLS");
    let d = start("tls-routes", 186, &yaml);
    // openssl's handshake fails against the plain HTTP backends, after the connection reached
    // one: that is all that is counted.
    let hello = |name: &str| {
        let out = d
            .exec(
                "default/productpage",
                &[
                    "timeout",
                    "10",
                    "openssl",
                    "s_client",
                    "-connect",
                    "127.0.0.50:9080",
                    "-servername",
                    name,
                ],
            )
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_ne!(out.status.code(), Some(124), "openssl hung");
    };
    for _ in 0..3 {
        hello("v2.reviews.example");
    }
    support::eventually(std::time::Duration::from_secs(5), || {
        (v2.accepted() >= 3).then_some(())
    });
    assert_eq!((v1.accepted(), v2.accepted()), (0, 3), "exact sniHosts");
    for _ in 0..3 {
        hello("shop.reviews.example");
    }
    support::eventually(std::time::Duration::from_secs(5), || {
        (v1.accepted() >= 3).then_some(())
    });
    assert_eq!((v1.accepted(), v2.accepted()), (3, 3), "wildcard sniHosts");
}

#[test]
fn a_vip_names_its_service_only_on_the_ports_the_service_entry_declares() {
    if !ebpf_available("vip_ports") {
        return;
    }
    let (v1, v2) = two_backends();
    // Another server on the VIP's address, on a port the ServiceEntry does not declare.
    let other = HttpBackend::start("127.0.0.50:0");
    let routes =
        "  - directResponse:\n      status: 200\n      body:\n        string: from reviews\n";
    let d = start("vip-ports", 171, &policies(&v1, &v2, routes));
    assert_eq!(curl(&d, &["http://reviews:9080/"]), "from reviews");
    // As in Istio, 127.0.0.50 is reviews only on 9080: this request is not reviews' and goes
    // to the address dialled, untouched by reviews' routes.
    let url = format!("http://{}/whoami", other.addr);
    let out = curl(&d, &["-w", "\n%{http_code}", &url]);
    assert!(out.ends_with("\n200"), "reached the server dialled: {out}");
    assert!(!out.contains("from reviews"), "not reviews' route: {out}");
    assert_eq!(other.requests(), 1);
    assert_eq!(v1.requests() + v2.requests(), 0);
}

/// As Istio's virtual hosts: a request whose Host names another service on the port dialled
/// goes to that service (its default route), not through the VirtualService of the VIP it was
/// sent to.
#[test]
fn the_host_named_service_wins_over_the_vip_dialled() {
    if !ebpf_available("host_over_vip") {
        return;
    }
    let (v1, v2) = two_backends();
    let ratings = HttpBackend::start("127.0.0.1:0");
    let routes =
        "  - directResponse:\n      status: 200\n      body:\n        string: from reviews\n";
    let yaml = format!(
        "{}---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: ratings\nspec:\n  hosts: [ratings.default.svc.cluster.local]\n  ports: [{{number: 9080, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints:\n  - address: 127.0.0.1\n    ports: {{http: {}}}\n",
        policies(&v1, &v2, routes),
        ratings.addr.port()
    );
    let d = start("host-over-vip", 177, &yaml);
    assert_eq!(curl(&d, &["http://reviews:9080/"]), "from reviews");
    let out = curl(&d, &["-H", "Host: ratings", "http://reviews:9080/whoami"]);
    assert!(
        out.contains("\"path\":\"/whoami\""),
        "ratings' backend answered: {out}"
    );
    assert_eq!(ratings.requests(), 1);
    // A Host that names no service leaves the VIP's service to decide.
    let out = curl(
        &d,
        &["-H", "Host: elsewhere.example", "http://reviews:9080/"],
    );
    assert_eq!(out, "from reviews");
}

/// The upstream protocol, as Istio picks it: HTTP/1.1 on an `HTTP` port (whatever the client
/// speaks), HTTP/2 on an `HTTP2` port, and the DestinationRule's `h2UpgradePolicy: UPGRADE` and
/// `useClientProtocol` over the port's.
#[test]
fn the_upstream_protocol_follows_the_port_and_the_destination_rule() {
    if !ebpf_available("upstream_protocol") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = "  - route:\n    - destination:\n        host: reviews\n        subset: v1\n";
    let http_port = policies(&v1, &v2, routes);
    let with_pool = |http: &str| {
        http_port.replace(
            "spec:\n  host: reviews\n  subsets:",
            &format!("spec:\n  host: reviews\n  trafficPolicy:\n    connectionPool:\n      http:\n        {http}\n  subsets:"),
        )
    };
    let cases = [
        ("proto-http", 172, http_port.clone()),
        (
            "proto-http2",
            173,
            http_port.replace("protocol: HTTP\n", "protocol: HTTP2\n"),
        ),
        ("proto-upgrade", 174, with_pool("h2UpgradePolicy: UPGRADE")),
        ("proto-client", 175, with_pool("useClientProtocol: true")),
    ];
    // (HTTP/1.1 client, HTTP/2 client): the version the backend saw.
    let expected = [
        ("HTTP/1.1", "HTTP/1.1"),
        ("HTTP/2.0", "HTTP/2.0"),
        ("HTTP/2.0", "HTTP/2.0"),
        ("HTTP/1.1", "HTTP/2.0"),
    ];
    for ((name, slot, yaml), (h1, h2)) in cases.into_iter().zip(expected) {
        let d = start(name, slot, &yaml);
        let version = |out: String| {
            let at = out.find("\"version\":\"").map(|i| i + 11).expect(&out);
            out[at..].split('"').next().unwrap().to_string()
        };
        let from_h1 = version(curl(&d, &["http://reviews:9080/whoami"]));
        let out = curl(
            &d,
            &["--http2-prior-knowledge", "http://reviews:9080/whoami"],
        );
        if h2 == "HTTP/1.1" {
            // The HTTP/2 client's :authority becomes the HTTP/1.1 request's Host.
            assert!(out.contains("\"host\":\"reviews:9080\""), "{name}: {out}");
        }
        let from_h2 = version(out);
        assert_eq!((from_h1.as_str(), from_h2.as_str()), (h1, h2), "{name}");
    }
    assert_eq!(v1.requests(), 8);
}

/// `reviews` at 127.0.0.50:9080 with endpoints in `us-east/zone-a` (this node's zone) and in
/// `us-west`, behind a DestinationRule with outlier detection and locality failover.
fn locality_mesh(near: &[u16], far: &[u16], routes: &str) -> String {
    let endpoint = |port: &u16, locality: &str| {
        format!(
            "  - address: 127.0.0.1\n    ports:\n      http: {port}\n    locality: {locality}\n"
        )
    };
    let endpoints: String = near
        .iter()
        .map(|p| endpoint(p, "us-east/zone-a/rack-1"))
        .chain(far.iter().map(|p| endpoint(p, "us-west/zone-x")))
        .collect();
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: reviews
spec:
  hosts: [reviews.default.svc.cluster.local]
  addresses: [127.0.0.50]
  ports:
  - {{number: 9080, name: http, protocol: HTTP}}
  resolution: STATIC
  endpoints:
{endpoints}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
      localityLbSetting:
        enabled: true
        failover:
        - from: us-east
          to: us-west
    outlierDetection:
      consecutive5xxErrors: 5
      interval: 1s
      baseEjectionTime: 30s
      maxEjectionPercent: 100
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
{routes}"#
    )
}

#[test]
fn locality_prefers_the_nodes_zone_and_fails_over_with_retry_remote_localities() {
    if !ebpf_available("locality") {
        return;
    }
    let with_retries = |remote: bool| {
        format!(
            "    retries:\n      attempts: 1\n      retryOn: 5xx\n      retryRemoteLocalities: {remote}\n"
        )
    };
    // meshd in us-east/zone-a/rack-1 with `yaml` as its configuration.
    let start = |yaml: &str| {
        let dir = support::mesh::config_dir("locality", yaml);
        support::Daemon::start(
            "locality",
            118,
            &[
                "--config",
                dir.to_str().unwrap(),
                "--locality",
                "us-east/zone-a/rack-1",
            ],
        )
    };
    // Healthy near and far endpoints: everything stays near.
    let (near, far) = two_backends();
    let routes = format!(
        "  - route:\n    - destination:\n        host: reviews\n{}",
        with_retries(false)
    );
    let yaml = locality_mesh(&[near.addr.port()], &[far.addr.port()], &routes);
    let d = start(&yaml);
    let codes = curl_many(&d, "http://reviews:9080/whoami", 20, "%{http_code}\\n");
    assert!(codes.iter().all(|c| c == "200"), "{codes:?}");
    assert_eq!((near.requests(), far.requests()), (20, 0), "all near");
    drop(d);

    // Two failing near endpoints and a healthy far one.
    let bad = [
        support::backend::Backend::http_503("127.0.0.1:0"),
        support::backend::Backend::http_503("127.0.0.1:0"),
    ];
    let far = support::http_backend::HttpBackend::start("127.0.0.1:0");
    let routes = format!(
        "  - match:\n    - headers:\n        x-remote-retry: {{exact: \"yes\"}}\n    route:\n    - destination:\n        host: reviews\n{}  - route:\n    - destination:\n        host: reviews\n{}",
        with_retries(true),
        with_retries(false)
    );
    let yaml = locality_mesh(
        &[bad[0].addr.port(), bad[1].addr.port()],
        &[far.addr.port()],
        &routes,
    );
    let d = start(&yaml);
    // Without retryRemoteLocalities the retry stays near (the other near endpoint): 503.
    assert_eq!(status(&d, "http://reviews:9080/whoami"), "503");
    assert_eq!(far.requests(), 0);
    // With it, the retry goes to the far locality.
    let remote = curl(
        &d,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "x-remote-retry: yes",
            "http://reviews:9080/whoami",
        ],
    );
    assert_eq!(remote, "200");
    assert_eq!(far.requests(), 1);
    // Once outlier detection has ejected both near endpoints (5 failures each; with one of
    // two ejected, 70% still stays near and 30% spills), everything goes to the far one.
    let codes = curl_many(&d, "http://reviews:9080/whoami", 20, "%{http_code}\\n");
    assert!(
        codes[10..].iter().all(|c| c == "200"),
        "after failover every request succeeds: {codes:?}"
    );
    let out = d.get("/stats/outliers");
    assert_eq!(out.matches("\"ejected\": true").count(), 2, "{out}");
}

/// `withoutHeaders` reads a missing header as empty, as Istio configures Envoy's inverted
/// matchers: a route for requests without `end-user: jason` takes those with no `end-user` at
/// all, and one excluding any `end-user` (`regex: .*`) takes none.
#[test]
fn without_headers_read_a_missing_header_as_empty() {
    if !ebpf_available("without_headers") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = r#"  - match:
    - uri:
        prefix: /guest
      withoutHeaders:
        end-user:
          exact: jason
    directResponse:
      status: 203
  - match:
    - uri:
        prefix: /anonymous
      withoutHeaders:
        end-user:
          regex: ".*"
    directResponse:
      status: 204
  - route:
    - destination:
        host: reviews
        subset: v1
"#;
    let d = start("without-headers", 207, &policies(&v1, &v2, routes));
    let code = |args: &[&str]| {
        let mut all = vec!["-o", "/dev/null", "-w", "%{http_code}"];
        all.extend_from_slice(args);
        curl(&d, &all)
    };
    assert_eq!(code(&["http://reviews:9080/guest"]), "203");
    assert_eq!(
        code(&["-H", "end-user: bob", "http://reviews:9080/guest"]),
        "203"
    );
    assert_eq!(
        code(&["-H", "end-user: jason", "http://reviews:9080/guest"]),
        "200"
    );
    assert_eq!(code(&["http://reviews:9080/anonymous"]), "200");
    assert_eq!(
        code(&["-H", "end-user: bob", "http://reviews:9080/anonymous"]),
        "200"
    );
    assert_eq!(v1.requests(), 3);
}

/// A DestinationRule with `loadBalancer: {simple: PASSTHROUGH}` sends a request to the address
/// its client dialled, as Envoy's original-destination cluster does, whatever the service's
/// endpoints are.
#[test]
fn passthrough_sends_requests_to_the_address_dialled() {
    if !ebpf_available("passthrough") {
        return;
    }
    let (listed, dialled) = two_backends();
    let port = dialled.addr.port();
    let service = |lb: &str| {
        format!(
            r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: direct
spec:
  hosts:
  - direct.example
  ports:
  - number: {port}
    name: http
    protocol: HTTP
  resolution: STATIC
  endpoints:
  - address: 127.0.0.1
    ports:
      http: {listed}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: direct
spec:
  host: direct.example
  trafficPolicy:
    loadBalancer:
      simple: {lb}
"#,
            listed = listed.addr.port(),
        )
    };
    let url = format!("http://direct.example:{port}/");
    let resolve = format!("direct.example:{port}:127.0.0.1");
    let d = start("passthrough", 209, &service("PASSTHROUGH"));
    curl(&d, &["--resolve", &resolve, &url]);
    assert_eq!((listed.requests(), dialled.requests()), (0, 1));
    drop(d);
    let d = start("passthrough-rr", 209, &service("ROUND_ROBIN"));
    curl(&d, &["--resolve", &resolve, &url]);
    assert_eq!((listed.requests(), dialled.requests()), (1, 1));
}

/// A DestinationRule for a wildcard host applies to the services it covers that no rule names
/// exactly: its subsets route.
#[test]
fn a_wildcard_destination_rule_gives_the_services_it_covers_its_subsets() {
    if !ebpf_available("wildcard_dr") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = "  - route:\n    - destination:\n        host: reviews\n        subset: v2\n";
    let yaml = policies(&v1, &v2, routes).replace(
        "spec:\n  host: reviews\n",
        "spec:\n  host: \"*.default.svc.cluster.local\"\n",
    );
    assert!(yaml.contains("*.default.svc"));
    let d = start("wildcard-dr", 210, &yaml);
    for _ in 0..3 {
        assert_eq!(status(&d, "http://reviews:9080/"), "200");
    }
    assert_eq!((v1.requests(), v2.requests()), (0, 3));
}

/// `localityLbSetting.distribute`: clients in us-east/zone-a send 75% to their zone and 25% to
/// us-west, and nothing to a locality no entry names; it needs no outlier detection.
#[test]
fn distribute_shares_traffic_between_localities_by_weight() {
    if !ebpf_available("locality_distribute") {
        return;
    }
    let (near, far) = two_backends();
    let elsewhere = HttpBackend::start("127.0.0.1:0");
    let routes = "  - route:\n    - destination:\n        host: reviews\n";
    let yaml = locality_mesh(&[near.addr.port()], &[far.addr.port()], routes)
        .replace(
            "        failover:\n        - from: us-east\n          to: us-west\n",
            "        distribute:\n        - from: us-east/zone-a/*\n          to:\n            \"us-east/zone-a/*\": 75\n            \"us-west/*\": 25\n",
        )
        .replace(
            "    outlierDetection:\n      consecutive5xxErrors: 5\n      interval: 1s\n      baseEjectionTime: 30s\n      maxEjectionPercent: 100\n",
            "",
        )
        .replace(
            "  endpoints:\n",
            &format!(
                "  endpoints:\n  - address: 127.0.0.1\n    ports:\n      http: {}\n    locality: eu-north/zone-q\n",
                elsewhere.addr.port()
            ),
        );
    assert!(yaml.contains("distribute") && !yaml.contains("outlierDetection"));
    let dir = support::mesh::config_dir("locality-distribute", &yaml);
    let d = support::Daemon::start(
        "locality-distribute",
        215,
        &[
            "--config",
            dir.to_str().unwrap(),
            "--locality",
            "us-east/zone-a/rack-1",
        ],
    );
    let codes = curl_many(&d, "http://reviews:9080/whoami", 400, "%{http_code}\\n");
    assert!(codes.iter().all(|c| c == "200"), "{codes:?}");
    let (n, f, e) = (near.requests(), far.requests(), elsewhere.requests());
    assert_eq!(e, 0, "no entry names eu-north");
    assert!(
        (270..=330).contains(&n) && n + f == 400,
        "near {n}, far {f}"
    );
    drop(d);

    // Distributed all to a locality with no endpoint: no healthy upstream (503, flag UH), and
    // no endpoint elsewhere is tried.
    let yaml = yaml.replace(
        "            \"us-east/zone-a/*\": 75\n            \"us-west/*\": 25\n",
        "            \"ap-south/*\": 100\n",
    );
    assert!(yaml.contains("ap-south"));
    let dir = support::mesh::config_dir("locality-distribute-nowhere", &yaml);
    let d = support::Daemon::start(
        "locality-distribute-nowhere",
        225,
        &[
            "--config",
            dir.to_str().unwrap(),
            "--locality",
            "us-east/zone-a/rack-1",
        ],
    );
    let codes = curl_many(&d, "http://reviews:9080/whoami", 3, "%{http_code}\\n");
    assert_eq!(codes, ["503", "503", "503"]);
    assert_eq!(
        d.log_text().matches("flags=UH").count(),
        3,
        "{}",
        d.log_text()
    );
    let served = (near.requests(), far.requests(), elsewhere.requests());
    assert_eq!(served, (n, f, 0), "no endpoint was tried");
}

/// `localityLbSetting.failoverPriority`: endpoints ranked by labels, here `version=v2` (a
/// value given, not the client's): v2 takes every request while it is healthy, and v1 once
/// outlier detection ejects it.
#[test]
fn failover_priority_prefers_the_labelled_endpoints_and_fails_over() {
    if !ebpf_available("failover_priority") {
        return;
    }
    let policy = "  trafficPolicy:\n    loadBalancer:\n      simple: ROUND_ROBIN\n      localityLbSetting:\n        failoverPriority:\n        - version=v2\n    outlierDetection:\n      consecutive5xxErrors: 1\n      interval: 1s\n      baseEjectionTime: 30s\n      maxEjectionPercent: 100\n";
    let routes =
        "  - retries:\n      attempts: 0\n    route:\n    - destination:\n        host: reviews\n";
    let mesh = |v1: &HttpBackend, v2: &HttpBackend| {
        policies(v1, v2, routes).replace(
            "spec:\n  host: reviews\n  subsets:",
            &format!("spec:\n  host: reviews\n{policy}  subsets:"),
        )
    };
    let (v1, v2) = two_backends();
    let d = start("failover-priority", 216, &mesh(&v1, &v2));
    let codes = curl_many(&d, "http://reviews:9080/whoami", 20, "%{http_code}\\n");
    assert!(codes.iter().all(|c| c == "200"), "{codes:?}");
    assert_eq!((v1.requests(), v2.requests()), (0, 20), "all to v2");
    drop(d);
    // v2 fails: its one 503 ejects it, and v1 takes the rest.
    let (v1, v2) = two_backends();
    let failing = support::backend::Backend::http_503("127.0.0.1:0");
    let yaml = mesh(&v1, &v2).replace(
        &format!("http: {}\n", v2.addr.port()),
        &format!("http: {}\n", failing.addr.port()),
    );
    let d = start("failover-priority-down", 217, &yaml);
    let codes = curl_many(&d, "http://reviews:9080/whoami", 10, "%{http_code}\\n");
    assert_eq!(codes[0], "503", "{codes:?}");
    assert!(codes[1..].iter().all(|c| c == "200"), "{codes:?}");
    assert_eq!(v1.requests(), 9);
}

/// VirtualService delegation, as Istio merges it: the root's `/v2` route hands over to a
/// delegate (a VirtualService without hosts) whose routes apply within `/v2` only, and inherit
/// the root route's settings (here its response headers) where they set none.
#[test]
fn a_delegating_route_takes_the_delegates_routes_within_its_match() {
    if !ebpf_available("delegate") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = r#"  - match:
    - uri:
        prefix: /v2
    headers:
      response:
        set:
          x-root: "yes"
    delegate:
      name: reviews-v2
  - route:
    - destination:
        host: reviews
        subset: v1
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews-v2
spec:
  http:
  - match:
    - uri:
        prefix: /v2/teapot
    directResponse:
      status: 418
  - match:
    - uri:
        prefix: /other
    directResponse:
      status: 500
  - route:
    - destination:
        host: reviews
        subset: v2
"#;
    let d = start("delegate", 218, &policies(&v1, &v2, routes));
    let head = |path: &str| {
        curl(
            &d,
            &[
                "-s",
                "-o",
                "/dev/null",
                "-D",
                "-",
                &format!("http://reviews:9080{path}"),
            ],
        )
    };
    let teapot = head("/v2/teapot");
    assert!(teapot.starts_with("HTTP/1.1 418"), "{teapot}");
    assert!(
        teapot.to_ascii_lowercase().contains("x-root: yes"),
        "{teapot}"
    );
    assert!(head("/v2/page").starts_with("HTTP/1.1 200"));
    // The delegate's /other route is not within the root's /v2: dropped, so the root's next
    // route takes it.
    assert!(head("/other").starts_with("HTTP/1.1 200"));
    assert!(head("/").starts_with("HTTP/1.1 200"));
    assert_eq!((v1.requests(), v2.requests()), (2, 1));
}

/// Istio's `networking.istio.io/traffic-distribution: PreferSameZone` on a ServiceEntry (no
/// DestinationRule, no outlier detection): requests stay in this node's zone while it has
/// endpoints there. With outlier detection, an ejected near endpoint hands the traffic on to
/// the far one. Without the annotation both take a share.
#[test]
fn traffic_distribution_prefers_the_nodes_zone() {
    if !ebpf_available("traffic_distribution") {
        return;
    }
    let service = |annotation: &str, near: u16, far: u16| {
        format!(
            r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: reviews
{annotation}spec:
  hosts: [reviews.default.svc.cluster.local]
  addresses: [127.0.0.50]
  ports:
  - {{number: 9080, name: http, protocol: HTTP}}
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {near}}}, locality: us-east/zone-a/rack-2}}
  - {{address: 127.0.0.1, ports: {{http: {far}}}, locality: us-west/zone-x}}
"#
        )
    };
    let annotated =
        "  annotations:\n    networking.istio.io/traffic-distribution: PreferSameZone\n";
    let start = |slot: u16, yaml: &str| {
        let dir = support::mesh::config_dir("traffic-distribution", yaml);
        support::Daemon::start(
            "traffic-distribution",
            slot,
            &[
                "--config",
                dir.to_str().unwrap(),
                "--locality",
                "us-east/zone-a/rack-1",
            ],
        )
    };
    let (near, far) = two_backends();
    let (n, f) = (near.addr.port(), far.addr.port());
    let d = start(237, &service(annotated, n, f));
    let codes = curl_many(&d, "http://reviews:9080/whoami", 20, "%{http_code}\\n");
    assert!(codes.iter().all(|c| c == "200"), "{codes:?}");
    assert_eq!(
        (near.requests(), far.requests()),
        (20, 0),
        "all in the zone"
    );
    drop(d);

    // Without the annotation: both take a share (Istio's default, least request).
    let d = start(237, &service("", n, f));
    curl_many(&d, "http://reviews:9080/whoami", 20, "%{http_code}\\n");
    let (to_near, to_far) = (near.requests() - 20, far.requests());
    assert!(to_near > 0 && to_far > 0, "both: {to_near} and {to_far}");
    drop(d);

    // The near endpoint fails: Istio's default retry (503 is retriable) tries again, and after
    // two failures outlier detection ejects the near endpoint, so the far one takes every
    // request.
    let bad = support::backend::Backend::http_503("127.0.0.1:0");
    let far = support::http_backend::HttpBackend::start("127.0.0.1:0");
    let outlier = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec:\n  host: reviews.default.svc.cluster.local\n  trafficPolicy:\n    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}\n";
    let yaml = service(annotated, bad.addr.port(), far.addr.port()) + outlier;
    let d = start(238, &yaml);
    let codes = curl_many(&d, "http://reviews:9080/whoami", 20, "%{http_code}\\n");
    assert!(codes.iter().all(|c| c == "200"), "{codes:?}");
    assert_eq!(far.requests(), 20, "{codes:?}");
    // The near endpoint was tried first, until it was ejected: the first request tried it
    // twice (a retry stays at the nearest level, as Envoy's priority load does with one host
    // there) and then the far one; no request after that was retried.
    let retries = support::eventually(std::time::Duration::from_secs(5), || {
        let lines: Vec<u64> = (d.log_text().lines())
            .filter(|l| l.starts_with('{') && l.contains("\"method\":\"GET\""))
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["retries"].as_u64())
            .collect();
        (lines.len() >= 20).then_some(lines)
    })
    .unwrap_or_else(|| panic!("20 access-log lines; log:\n{}", d.log_text()));
    assert_eq!(retries[0], 2, "{retries:?}");
    assert!(retries[1..].iter().all(|r| *r == 0), "{retries:?}");
    assert!(
        d.log_text()
            .contains("endpoint ejected by outlier detection"),
        "{}",
        d.log_text()
    );
}

/// An HTTP/2 client's cookie crumbs (curl sends one `cookie` field per `-H`) reach an
/// HTTP/1.1 upstream (the port is declared HTTP) as one Cookie field joined by "; ", as RFC
/// 9113 asks and Envoy does: an HTTP/1.1 server may read only the first field.
#[test]
fn http2_cookie_crumbs_reach_an_http1_upstream_as_one_field() {
    if !ebpf_available("cookie_crumbs") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = "  - route:\n    - destination:\n        host: reviews\n        subset: v1\n";
    let d = start("cookie-crumbs", 256, &policies(&v1, &v2, routes));
    let out = curl(
        &d,
        &[
            "--http2-prior-knowledge",
            "-H",
            "cookie: session=abc",
            "-H",
            "cookie: csrf=xyz",
            "http://reviews:9080/whoami",
        ],
    );
    assert!(out.contains("\"version\":\"HTTP/1.1\""), "{out}");
    assert!(
        out.contains("\"cookie\":\"session=abc; csrf=xyz\""),
        "{out}"
    );
}

/// A DestinationRule applies to the clients that look it up first, as in Istio: their own
/// namespace's rule for the host, else the service's namespace's. Here the `shop` namespace's
/// rule allows one request per upstream connection; clients of `default` and `other` get the
/// service's own rule, which keeps connections open.
#[test]
fn a_clients_own_namespace_destination_rule_applies_to_it_alone() {
    if !ebpf_available("dr_namespace_lookup") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = r#"  - route:
    - destination:
        host: reviews
        subset: v1
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: shop
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy:
    connectionPool:
      http:
        maxRequestsPerConnection: 1
  subsets:
  - name: v1
    labels:
      version: v1
"#;
    let d = start("dr-namespace-lookup", 295, &policies(&v1, &v2, routes));
    let four = |workload: &str| {
        let host = "reviews.default.svc.cluster.local";
        let resolve = format!("{host}:9080:127.0.0.50");
        let url = format!("http://{host}:9080/status/200");
        let mut args = vec!["curl", "-sS", "--resolve", &resolve, "-w", "%{http_code}\n"];
        for _ in 0..4 {
            args.extend(["-o", "/dev/null", &url]);
        }
        let out = d.exec(workload, &args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(four("shop/client"), "200\n".repeat(4));
    assert_eq!(v1.accepted(), 4, "shop's rule: one request per connection");
    assert_eq!(four("default/productpage"), "200\n".repeat(4));
    assert_eq!(
        v1.accepted(),
        5,
        "the service's rule: one connection, reused"
    );
    assert_eq!(four("other/client"), "200\n".repeat(4));
    assert_eq!(
        v1.accepted(),
        5,
        "no rule in other: the service's, on the same connection"
    );
    assert_eq!(v2.requests(), 0);
}

/// A VirtualService with only `tcp` routes steers the service's TCP port and leaves its HTTP
/// port to the default route, as Istio builds no HTTP virtual host for it.
#[test]
fn a_virtual_service_with_only_tcp_routes_leaves_http_alone() {
    if !ebpf_available("tcp_only_vs") {
        return;
    }
    let (v1, v2) = two_backends();
    let (e1, e2) = (
        support::backend::Backend::echo("127.0.0.1:0"),
        support::backend::Backend::echo("127.0.0.1:0"),
    );
    let yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  addresses: [127.0.0.50]
  ports:
  - {{number: 9080, name: http, protocol: HTTP}}
  - {{number: 9090, name: tcp, protocol: TCP}}
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {h1}, tcp: {t1}}}, labels: {{version: v1}}}}
  - {{address: 127.0.0.1, ports: {{http: {h2}, tcp: {t2}}}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: reviews
  trafficPolicy: {{loadBalancer: {{simple: ROUND_ROBIN}}}}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews-tcp, namespace: default}}
spec:
  hosts: [reviews]
  tcp:
  - match: [{{port: 9090}}]
    route:
    - destination: {{host: reviews, subset: v2}}
"#,
        h1 = v1.addr.port(),
        h2 = v2.addr.port(),
        t1 = e1.addr.port(),
        t2 = e2.addr.port(),
    );
    let d = start("tcp-only-vs", 297, &yaml);
    let codes = curl_many(&d, "http://reviews:9080/whoami", 20, "%{http_code}\n");
    assert!(codes.iter().all(|c| c == "200"), "{codes:?}");
    // HTTP: the default route over both endpoints, in turn.
    assert_eq!((v1.requests(), v2.requests()), (10, 10));
    // TCP: the route's subset.
    let vip: std::net::SocketAddr = "127.0.0.50:9090".parse().unwrap();
    for _ in 0..4 {
        d.echo("default/productpage", vip, 1024);
    }
    assert_eq!((e1.accepted(), e2.accepted()), (0, 4));
}

/// A port a ServiceEntry declares `HTTP` is served as HTTP whatever comes, and /connections
/// names the version the client speaks there: `h2` for prior-knowledge HTTP/2.
#[test]
fn connections_name_http2_on_a_port_declared_http() {
    if !ebpf_available("declared_http_h2") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = "  - route:\n    - destination:\n        host: reviews\n        subset: v1\n";
    let d = start("declared-http-h2", 341, &policies(&v1, &v2, routes));
    std::thread::scope(|s| {
        let slow = s.spawn(|| {
            curl(
                &d,
                &[
                    "--http2-prior-knowledge",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_version}",
                    "http://reviews:9080/sleep/2000",
                ],
            )
        });
        let listed = support::eventually(std::time::Duration::from_secs(5), || {
            let all: serde_json::Value = serde_json::from_str(&d.get("/connections")).ok()?;
            (all.as_array()?.iter())
                .find(|c| c["destination"] == "127.0.0.50:9080")
                .map(|c| c["protocol"].clone())
        });
        assert_eq!(listed, Some("h2".into()), "{}", d.get("/connections"));
        assert_eq!(slow.join().unwrap(), "2");
    });
}

/// Two VirtualServices for one host, as `kubectl get virtualservice -o yaml` dumps them into
/// files named at will: the oldest by `creationTimestamp` routes the host, as in Istio, though
/// its file loads last.
#[test]
fn the_oldest_virtual_service_for_a_host_routes_it_whatever_its_file() {
    if !ebpf_available("oldest_vs") {
        return;
    }
    let (v1, v2) = two_backends();
    let vs = |name: &str, created: &str, subset: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: {name}\n  namespace: default\n  creationTimestamp: \"{created}\"\nspec:\n  hosts:\n  - reviews\n  http:\n  - route:\n    - destination:\n        host: reviews\n        subset: {subset}\n"
        )
    };
    // The ServiceEntry and DestinationRule of the small mesh, without its VirtualService.
    let all = policies(&v1, &v2, "");
    let (base, _) = all.rsplit_once("---").expect("documents");
    let dir = support::mesh::config_dir("oldest-vs", base);
    std::fs::write(
        dir.join("a-young.yaml"),
        vs("reviews-young", "2024-02-01T00:00:00Z", "v2"),
    )
    .unwrap();
    std::fs::write(
        dir.join("b-old.yaml"),
        vs("reviews-old", "2024-01-01T00:00:00Z", "v1"),
    )
    .unwrap();
    let d = support::Daemon::start("oldest-vs", 348, &["--config", dir.to_str().unwrap()]);
    let codes = curl_many(&d, "http://reviews:9080/whoami", 20, "%{http_code}\n");
    assert!(codes.iter().all(|c| c == "200"), "{codes:?}");
    assert_eq!(
        (v1.requests(), v2.requests()),
        (20, 0),
        "the older route's v1"
    );
}

/// A ServiceEntry without addresses that declares a TCP port takes every connection to that
/// port, whatever the address dialled, as Istio's sidecars do (a listener on 0.0.0.0 and the
/// port; IST0134): its endpoints (with their port mapping) serve it. Before, such connections
/// went where they were dialled, past the entry's endpoints and DestinationRule.
#[test]
fn a_tcp_service_entry_without_addresses_takes_its_whole_port() {
    if !ebpf_available("tcp_port_wide") {
        return;
    }
    let db = support::backend::Backend::echo("127.0.0.1:0");
    // Nothing listens on this port: only the entry's endpoint can answer.
    let port = 24515;
    let yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: external-db, namespace: default}}
spec:
  hosts: [db.example.com]
  ports:
  - {{number: {port}, name: tcp-db, protocol: TCP}}
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{tcp-db: {e}}}}}
"#,
        e = db.addr.port(),
    );
    let d = start("tcp-port-wide", 351, &yaml);
    for dialled in ["127.0.0.1", "127.0.0.9"] {
        let addr: std::net::SocketAddr = format!("{dialled}:{port}").parse().unwrap();
        d.echo("default/productpage", addr, 1024);
    }
    assert_eq!(db.accepted(), 2);
    let metrics = d.get("/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_tcp_connections_opened_total")
                && l.contains("destination_service=\"db.example.com\"")),
        "{metrics}"
    );
}
