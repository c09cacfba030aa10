//! AuthorizationPolicy on one node, read as Istio reads it: a policy decided at the source for
//! a mesh workload on the same node.

mod support;

use support::{
    ebpf_available,
    mesh::{config_dir, policies, status, two_backends},
};

/// Istio reads `cluster.local` in a policy's principals as the mesh's own trust domain, so
/// policies written for the default keep working under `--trust-domain example.org`; it does
/// not make a principal match that names another service account.
#[test]
fn cluster_local_principals_stand_for_the_local_trust_domain() {
    if !ebpf_available("authz_trust_domain") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = "  - route:\n    - destination:\n        host: reviews\n        subset: v1\n";
    let mesh = format!(
        "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: reviews-v1, namespace: default}}\n\
         spec: {{address: 127.0.0.1, serviceAccount: reviews, ports: {{http: {p1}}}, labels: {{app: reviews, version: v1}}}}\n\
         ---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: callers, namespace: default}}\n\
         spec:\n  selector: {{matchLabels: {{app: reviews}}}}\n  rules:\n\
         \x20 - from: [{{source: {{principals: [cluster.local/ns/default/sa/default]}}}}]\n\
         \x20   to: [{{operation: {{paths: [/status/*]}}}}]\n\
         \x20 - from: [{{source: {{principals: [cluster.local/ns/default/sa/nobody]}}}}]\n\
         \x20   to: [{{operation: {{paths: [/whoami]}}}}]\n",
        p1 = v1.addr.port()
    );
    let dir = config_dir(
        "authz-trust-domain",
        &format!("{}{mesh}", policies(&v1, &v2, routes)),
    );
    let d = support::Daemon::start(
        "authz-trust-domain",
        311,
        &[
            "--config",
            dir.to_str().unwrap(),
            "--trust-domain",
            "example.org",
        ],
    );
    // The client, `default/productpage` without a WorkloadEntry, is
    // spiffe://example.org/ns/default/sa/default.
    assert_eq!(status(&d, "http://reviews:9080/status/200"), "200");
    assert_eq!(status(&d, "http://reviews:9080/whoami"), "403");
    assert_eq!(v1.requests(), 1);
}
