//! VirtualService routing on captured traffic, with the YAML a user would write for Istio:
//! weighted canaries, header-based routing, subsets from DestinationRule labels on ServiceEntry
//! endpoints, direct responses, redirects, rewrites, header edits and 404 NR.

mod support;

use support::{
    ebpf_available,
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
        exact: /health
    directResponse:
      status: 200
      body:
        string: "ok from meshd"
  - match:
    - uri:
        prefix: /old
    redirect:
      uri: /new
      redirectCode: 308
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
    let out = curl(&d, &["-i", "http://reviews:9080/api/v1/items?id=7"]);
    assert!(
        out.contains("\"path\":\"/v1/items?id=7\""),
        "prefix rewritten, query kept: {out}"
    );
    assert!(
        out.contains("\"x_route\":\"rewritten\""),
        "request header set: {out}"
    );
    assert!(
        out.to_ascii_lowercase().contains("x-served-by: meshd"),
        "response header added: {out}"
    );
    let nr = status(&d, "http://reviews:9080/elsewhere");
    assert_eq!(nr, "404");
    assert!(d.log_text().contains("flags=NR"), "404 carries flag NR");
    assert_eq!(v1.requests(), 1);
    assert_eq!(v2.requests(), 0);
}

#[test]
fn a_port_declared_tcp_skips_http_and_balances_connections_over_the_endpoints() {
    if !ebpf_available("declared_tcp") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = "  - route:\n    - destination:\n        host: reviews\n        subset: v1\n";
    let yaml = policies(&v1, &v2, routes).replace("protocol: HTTP", "protocol: TCP");
    let d = start("declared-tcp", 44, &yaml);
    for _ in 0..4 {
        assert_eq!(status(&d, "http://reviews:9080/whoami"), "200");
    }
    // L4: each connection goes to the next endpoint of the VIP's service; the HTTP route
    // (v1 only) does not apply, and no request line is logged.
    assert_eq!((v1.accepted(), v2.accepted()), (2, 2));
    assert!(!d.log_text().contains("request method="), "served at L4");
}
