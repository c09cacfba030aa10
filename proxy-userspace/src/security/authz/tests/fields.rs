//! Every field of `source`, `operation` and `when`, with its `not` form and wildcards, each
//! case checked as the only rule of an ALLOW policy and of a DENY policy on an HTTP request.

use super::{Req, ap, authorizer};

/// `(rule, request, whether the rule matches)`.
#[rustfmt::skip]
fn cases() -> Vec<(&'static str, Req, bool)> {
    let r = Req::http;
    let v6 = || r().src("2001:db8::5");
    vec![
        // principals: written without spiffe://, Istio string matching, absent when plaintext
        (r#"{from: [{source: {principals: ["cluster.local/ns/foo/sa/sleep"]}}]}"#, r(), true),
        (r#"{from: [{source: {principals: ["cluster.local/ns/foo/sa/other"]}}]}"#, r(), false),
        (r#"{from: [{source: {principals: ["cluster.local/ns/foo/*"]}}]}"#, r(), true),
        (r#"{from: [{source: {principals: ["*/sa/sleep"]}}]}"#, r(), true),
        (r#"{from: [{source: {principals: ["*/sa/other"]}}]}"#, r(), false),
        (r#"{from: [{source: {principals: ["*"]}}]}"#, r(), true),
        (r#"{from: [{source: {principals: ["*"]}}]}"#, r().plaintext(), false),
        (r#"{from: [{source: {principals: ["x", "cluster.local/ns/foo/sa/sleep"]}}]}"#, r(), true),
        (r#"{from: [{source: {notPrincipals: ["cluster.local/ns/foo/sa/sleep"]}}]}"#, r(), false),
        (r#"{from: [{source: {notPrincipals: ["cluster.local/ns/bar/*"]}}]}"#, r(), true),
        (r#"{from: [{source: {notPrincipals: ["*"]}}]}"#, r().plaintext(), true),
        // namespaces: from the peer identity
        (r#"{from: [{source: {namespaces: ["foo"]}}]}"#, r(), true),
        (r#"{from: [{source: {namespaces: ["bar"]}}]}"#, r(), false),
        (r#"{from: [{source: {namespaces: ["f*"]}}]}"#, r(), true),
        (r#"{from: [{source: {namespaces: ["*"]}}]}"#, r().plaintext(), false),
        (r#"{from: [{source: {notNamespaces: ["foo"]}}]}"#, r(), false),
        (r#"{from: [{source: {notNamespaces: ["foo"]}}]}"#, r().plaintext(), true),
        // serviceAccounts: namespace/name, exact; a name alone is in the policy's namespace
        (r#"{from: [{source: {serviceAccounts: ["foo/sleep"]}}]}"#, r(), true),
        (r#"{from: [{source: {serviceAccounts: ["sleep"]}}]}"#, r(), true),
        (r#"{from: [{source: {serviceAccounts: ["other"]}}]}"#, r(), false),
        (r#"{from: [{source: {notServiceAccounts: ["sleep"]}}]}"#, r(), false),
        (r#"{when: [{key: source.serviceAccount, values: ["sleep"]}]}"#, r(), true),
        (r#"{from: [{source: {serviceAccounts: ["bar/sleep"]}}]}"#, r(), false),
        (r#"{from: [{source: {serviceAccounts: ["foo/sleep"]}}]}"#, r().plaintext(), false),
        (r#"{from: [{source: {notServiceAccounts: ["foo/sleep"]}}]}"#, r(), false),
        (r#"{from: [{source: {notServiceAccounts: ["foo/other"]}}]}"#, r(), true),
        // ipBlocks and remoteIpBlocks: CIDRs and plain addresses, v4 and v6
        (r#"{from: [{source: {ipBlocks: ["10.1.0.0/16"]}}]}"#, r(), true),
        (r#"{from: [{source: {ipBlocks: ["10.2.0.0/16"]}}]}"#, r(), false),
        (r#"{from: [{source: {ipBlocks: ["10.1.2.3"]}}]}"#, r(), true),
        (r#"{from: [{source: {ipBlocks: ["10.1.2.4"]}}]}"#, r(), false),
        (r#"{from: [{source: {ipBlocks: ["0.0.0.0/0"]}}]}"#, r(), true),
        (r#"{from: [{source: {ipBlocks: ["10.1.0.0/16"]}}]}"#, r().src("::ffff:10.1.2.3"), true),
        (r#"{from: [{source: {notIpBlocks: ["10.0.0.0/8"]}}]}"#, r(), false),
        (r#"{from: [{source: {notIpBlocks: ["192.168.0.0/16"]}}]}"#, r(), true),
        (r#"{from: [{source: {remoteIpBlocks: ["10.1.2.0/24"]}}]}"#, r(), true),
        (r#"{from: [{source: {notRemoteIpBlocks: ["10.1.2.0/24"]}}]}"#, r(), false),
        (r#"{from: [{source: {ipBlocks: ["2001:db8::/32"]}}]}"#, v6(), true),
        (r#"{from: [{source: {ipBlocks: ["2001:db9::/32"]}}]}"#, v6(), false),
        (r#"{from: [{source: {ipBlocks: ["2001:db8::5"]}}]}"#, v6(), true),
        (r#"{from: [{source: {ipBlocks: ["0.0.0.0/0"]}}]}"#, v6(), false),
        (r#"{from: [{source: {notIpBlocks: ["2001:db8::/32"]}}]}"#, v6(), false),
        // ports
        (r#"{to: [{operation: {ports: ["8000"]}}]}"#, r(), true),
        (r#"{to: [{operation: {ports: ["9000", "8000"]}}]}"#, r(), true),
        (r#"{to: [{operation: {ports: ["9000"]}}]}"#, r(), false),
        (r#"{to: [{operation: {notPorts: ["8000"]}}]}"#, r(), false),
        (r#"{to: [{operation: {notPorts: ["9000"]}}]}"#, r(), true),
        // hosts: ignore case, compared with the port as sent
        (r#"{to: [{operation: {hosts: ["httpbin.foo:8000"]}}]}"#, r(), true),
        (r#"{to: [{operation: {hosts: ["HTTPBIN.Foo:8000"]}}]}"#, r(), true),
        (r#"{to: [{operation: {hosts: ["httpbin.foo"]}}]}"#, r(), false),
        (r#"{to: [{operation: {hosts: ["httpbin.foo:*"]}}]}"#, r(), true),
        (r#"{to: [{operation: {hosts: ["*.FOO:8000"]}}]}"#, r(), true),
        (r#"{to: [{operation: {hosts: ["httpbin.foo"]}}]}"#, r().host("HTTPBIN.FOO"), true),
        (r#"{to: [{operation: {notHosts: ["httpbin*"]}}]}"#, r(), false),
        (r#"{to: [{operation: {notHosts: ["other*"]}}]}"#, r(), true),
        // methods: case-sensitive
        (r#"{to: [{operation: {methods: ["GET"]}}]}"#, r(), true),
        (r#"{to: [{operation: {methods: ["get"]}}]}"#, r(), false),
        (r#"{to: [{operation: {methods: ["POST", "PUT"]}}]}"#, r(), false),
        (r#"{to: [{operation: {methods: ["G*"]}}]}"#, r(), true),
        (r#"{to: [{operation: {notMethods: ["GET"]}}]}"#, r(), false),
        (r#"{to: [{operation: {notMethods: ["POST"]}}]}"#, r(), true),
        // paths: without the query, dot segments resolved, templates
        (r#"{to: [{operation: {paths: ["/status/200"]}}]}"#, r(), true),
        (r#"{to: [{operation: {paths: ["/status/*"]}}]}"#, r(), true),
        (r#"{to: [{operation: {paths: ["*/200"]}}]}"#, r(), true),
        (r#"{to: [{operation: {paths: ["*"]}}]}"#, r(), true),
        (r#"{to: [{operation: {paths: ["/ip"]}}]}"#, r(), false),
        (r#"{to: [{operation: {paths: ["/status/200"]}}]}"#, Req::tcp().request("GET", "/status/200?a=b"), true),
        (r#"{to: [{operation: {paths: ["/status/200"]}}]}"#, Req::tcp().request("GET", "/public/../status/./200"), true),
        (r#"{to: [{operation: {paths: ["/status/{*}"]}}]}"#, r(), true),
        (r#"{to: [{operation: {paths: ["/{*}"]}}]}"#, r(), false),
        (r#"{to: [{operation: {paths: ["/{**}"]}}]}"#, r(), true),
        (r#"{to: [{operation: {paths: ["/{*}/200"]}}]}"#, r(), true),
        (r#"{to: [{operation: {notPaths: ["/status/*"]}}]}"#, r(), false),
        (r#"{to: [{operation: {notPaths: ["/ip"]}}]}"#, r(), true),
        // when: identity and address attributes
        (r#"{when: [{key: source.principal, values: ["cluster.local/ns/foo/sa/sleep"]}]}"#, r(), true),
        (r#"{when: [{key: source.principal, notValues: ["cluster.local/ns/foo/*"]}]}"#, r(), false),
        (r#"{when: [{key: source.namespace, values: ["foo"]}]}"#, r(), true),
        (r#"{when: [{key: source.namespace, notValues: ["foo"]}]}"#, r(), false),
        (r#"{when: [{key: source.serviceAccount, values: ["foo/sleep"]}]}"#, r(), true),
        (r#"{when: [{key: source.ip, values: ["10.1.0.0/16"]}]}"#, r(), true),
        (r#"{when: [{key: source.ip, notValues: ["10.1.0.0/16"]}]}"#, r(), false),
        (r#"{when: [{key: remote.ip, values: ["10.1.2.3"]}]}"#, r(), true),
        (r#"{when: [{key: destination.ip, values: ["10.0.0.9"]}]}"#, r(), true),
        (r#"{when: [{key: destination.ip, values: ["10.0.0.0/24"]}]}"#, r(), true),
        (r#"{when: [{key: destination.ip, values: ["10.0.1.0/24"]}]}"#, r(), false),
        (r#"{when: [{key: destination.ip, values: ["fd00::/8"]}]}"#, r().dst("fd00::9"), true),
        (r#"{when: [{key: destination.port, values: ["8000"]}]}"#, r(), true),
        (r#"{when: [{key: destination.port, notValues: ["8000"]}]}"#, r(), false),
        (r#"{when: [{key: destination.port, values: ["8000", "9000"], notValues: ["8000"]}]}"#, r(), false),
        // when: request headers, by case-insensitive name
        (r#"{when: [{key: "request.headers[x-token]", values: ["abc"]}]}"#, r(), true),
        (r#"{when: [{key: "request.headers[X-Token]", values: ["a*"]}]}"#, r(), true),
        (r#"{when: [{key: "request.headers[x-token]", values: ["zzz"]}]}"#, r(), false),
        (r#"{when: [{key: "request.headers[x-token]", notValues: ["abc"]}]}"#, r(), false),
        (r#"{when: [{key: "request.headers[x-missing]", values: ["*"]}]}"#, r(), false),
        (r#"{when: [{key: "request.headers[x-missing]", notValues: ["*"]}]}"#, r(), true),
        (r#"{when: [{key: "request.headers[x-empty]", values: ["*"]}]}"#, r().header("x-empty", ""), true),
        // JWT attributes: meshd validates no JWT, so they are always absent
        (r#"{from: [{source: {requestPrincipals: ["*"]}}]}"#, r(), false),
        (r#"{from: [{source: {notRequestPrincipals: ["*"]}}]}"#, r(), true),
        (r#"{when: [{key: request.auth.principal, values: ["*"]}]}"#, r(), false),
        (r#"{when: [{key: "request.auth.claims[iss]", notValues: ["x"]}]}"#, r(), true),
    ]
}

#[test]
fn each_field_matches_as_istio_does() {
    for (rule, req, matches) in cases() {
        let allow = authorizer(&[ap("foo", "p", &format!("{{rules: [{rule}]}}"))]);
        assert_eq!(req.allowed(&allow), matches, "ALLOW {rule} for {req:?}");
        let deny = authorizer(&[ap(
            "foo",
            "p",
            &format!("{{action: DENY, rules: [{rule}]}}"),
        )]);
        assert_eq!(!req.allowed(&deny), matches, "DENY {rule} for {req:?}");
    }
}

#[test]
fn header_lookups_ignore_name_case_and_join_repeated_headers() {
    use crate::security::HeaderLookup;
    let mut map = hyper::HeaderMap::new();
    map.append("x-a", "1".parse().unwrap());
    map.append("X-A", "2".parse().unwrap());
    map.append("x-b", "".parse().unwrap());
    assert_eq!(map.header("x-a").as_deref(), Some("1,2"));
    assert_eq!(map.header("x-b").as_deref(), Some(""));
    assert_eq!(map.header("x-c"), None);
    let mut tree = std::collections::BTreeMap::new();
    tree.insert("X-Token".to_string(), "abc".to_string());
    assert_eq!(tree.header("x-token").as_deref(), Some("abc"));
    assert_eq!(tree.header("x-other"), None);
}
