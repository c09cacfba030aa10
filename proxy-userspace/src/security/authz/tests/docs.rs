//! The canonical examples of Istio's authorization documentation, as YAML documents.

use super::{ROOT, Req, authorizer, httpbin, wl};

fn doc(body: &str) -> String {
    format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n{body}")
}

#[test]
fn allow_nothing() {
    let a = authorizer(&[doc(
        "metadata:\n  name: allow-nothing\n  namespace: foo\nspec: {}\n",
    )]);
    assert!(!Req::tcp().allowed(&a));
    assert!(!Req::http().allowed(&a));
    assert!(Req::http().decide(&a, &wl("bar", &[])).allowed);
    // Mesh-wide in the root namespace.
    let mesh = format!("metadata:\n  name: allow-nothing\n  namespace: {ROOT}\nspec:\n  {{}}\n");
    let a = authorizer(&[doc(&mesh)]);
    assert!(!Req::http().decide(&a, &wl("bar", &[])).allowed);
}

#[test]
fn allow_read_get_only_on_httpbin() {
    let a = authorizer(&[doc(r#"metadata:
  name: allow-read
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: ALLOW
  rules:
  - to:
    - operation:
        methods: ["GET"]
"#)]);
    assert!(Req::http().allowed(&a));
    assert!(!Req::tcp().request("POST", "/post").allowed(&a));
    assert!(
        !Req::tcp().allowed(&a),
        "plain TCP cannot satisfy an HTTP-only ALLOW rule"
    );
    assert!(
        Req::tcp()
            .decide(&a, &wl("foo", &[("app", "sleep")]))
            .allowed
    );
}

#[test]
fn deny_method_get_except_ip() {
    let a = authorizer(&[doc(r#"metadata:
  name: deny-method-get
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: DENY
  rules:
  - to:
    - operation:
        methods: ["GET"]
        notPaths: ["/ip"]
"#)]);
    let d = Req::http().decide(&a, &httpbin());
    assert_eq!(
        (d.allowed, d.reason.as_str()),
        (false, "denied by DENY policy foo/deny-method-get")
    );
    assert!(Req::tcp().request("GET", "/ip").allowed(&a));
    assert!(Req::tcp().request("GET", "/ip?x=1").allowed(&a));
    assert!(Req::tcp().request("POST", "/anything").allowed(&a));
    assert!(
        !Req::tcp().allowed(&a),
        "on TCP the HTTP fields are dropped and the rule denies all"
    );
}

#[test]
fn deny_method_get_unless_admin_token() {
    let a = authorizer(&[doc(r#"metadata:
  name: deny-method-get
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: DENY
  rules:
  - to:
    - operation:
        methods: ["GET"]
    when:
    - key: request.headers[x-token]
      notValues: ["admin"]
"#)]);
    assert!(!Req::http().allowed(&a));
    assert!(Req::http().header("x-token", "admin").allowed(&a));
    assert!(Req::tcp().request("POST", "/").allowed(&a));
}

#[test]
fn namespace_wide_allow_from_foo() {
    let a = authorizer(&[doc(r#"metadata:
  name: foo
  namespace: foo
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        namespaces: ["foo"]
"#)]);
    assert!(Req::tcp().allowed(&a));
    assert!(Req::http().allowed(&a));
    assert!(
        !Req::tcp()
            .from("spiffe://cluster.local/ns/bar/sa/sleep")
            .allowed(&a)
    );
    assert!(
        !Req::tcp().plaintext().allowed(&a),
        "plaintext peers have no namespace"
    );
}

#[test]
fn deny_other_namespaces_and_allow_get_from_sleep() {
    // From the AuthorizationPolicy reference: several from/to entries; the JWT condition never
    // holds in meshd, which validates no JWT, so only the first rule can allow.
    let a = authorizer(&[
        doc(r#"metadata:
  name: httpbin-deny
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
      version: v1
  action: DENY
  rules:
  - from:
    - source:
        notNamespaces: ["foo"]
"#),
        doc(r#"metadata:
  name: httpbin
  namespace: foo
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/foo/sa/sleep"]
    - source:
        namespaces: ["test"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/info*"]
    - operation:
        methods: ["POST"]
        paths: ["/data"]
  - to:
    - operation:
        paths: ["/jwt"]
    when:
    - key: request.auth.claims[iss]
      values: ["https://accounts.google.com"]
"#),
    ]);
    assert!(Req::tcp().request("GET", "/info/1").allowed(&a));
    assert!(Req::tcp().request("POST", "/data").allowed(&a));
    assert!(!Req::tcp().request("POST", "/info").allowed(&a));
    assert!(!Req::tcp().request("GET", "/jwt").allowed(&a));
    let test_ns = Req::tcp().from("spiffe://cluster.local/ns/test/sa/x");
    let d = test_ns.request("GET", "/info").decide(&a, &httpbin());
    assert_eq!(d.policy.as_deref(), Some("foo/httpbin-deny"));
    let v2 = wl("foo", &[("app", "httpbin"), ("version", "v2")]);
    let test_ns = Req::tcp().from("spiffe://cluster.local/ns/test/sa/x");
    assert!(test_ns.request("GET", "/info").decide(&a, &v2).allowed);
}
