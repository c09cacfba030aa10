//! The source workload named on a tunnel stream, as W3C `baggage` on the CONNECT (as Istio
//! ambient's ztunnel names its caller): `k8s.namespace.name=default,k8s.workload.name=web`.
//! The far node takes it only when the caller's certificate is the named workload's own
//! identity (its namespace and service account), so a caller can only name a workload that
//! shares its identity.

use hyper::header::HeaderValue;

pub const HEADER: &str = "baggage";
const NAMESPACE: &str = "k8s.namespace.name";
const WORKLOAD: &str = "k8s.workload.name";

/// Whether `v` can go into a baggage value as it is (Kubernetes names always can).
fn plain(v: &str) -> bool {
    !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// The baggage naming `workload` (`namespace/name`); `None` for a name that is not plain.
pub fn encode(workload: &str) -> Option<HeaderValue> {
    let (ns, name) = workload.split_once('/')?;
    if !plain(ns) || !plain(name) {
        return None;
    }
    HeaderValue::from_str(&format!("{NAMESPACE}={ns},{WORKLOAD}={name}")).ok()
}

/// The workload (`namespace/name`) a CONNECT's baggage names, if its namespace is `proven`.
pub fn decode(value: &HeaderValue, proven: &str) -> Option<String> {
    let text = value.to_str().ok()?;
    let mut ns = None;
    let mut name = None;
    for member in text.split(',') {
        // A member's properties (after `;`) are not read.
        let member = member.split(';').next().unwrap_or_default();
        let Some((k, v)) = member.split_once('=') else {
            continue;
        };
        match k.trim() {
            NAMESPACE => ns = Some(v.trim()),
            WORKLOAD => name = Some(v.trim()),
            _ => {}
        }
    }
    let (ns, name) = (ns?, name?);
    (ns == proven && plain(ns) && plain(name)).then(|| format!("{ns}/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workload_round_trips_only_within_its_proven_namespace() {
        let v = encode("default/productpage").unwrap();
        assert_eq!(
            v,
            "k8s.namespace.name=default,k8s.workload.name=productpage"
        );
        assert_eq!(
            decode(&v, "default").as_deref(),
            Some("default/productpage")
        );
        assert_eq!(decode(&v, "other"), None, "another namespace's certificate");
        let spaced = HeaderValue::from_static(
            "other.key=x, k8s.workload.name = web;prop=1 , k8s.namespace.name=shop",
        );
        assert_eq!(decode(&spaced, "shop").as_deref(), Some("shop/web"));
        assert_eq!(
            decode(&HeaderValue::from_static("k8s.workload.name=web"), "shop"),
            None
        );
        assert_eq!(encode("no-namespace"), None);
        assert_eq!(encode("default/a b"), None);
        let odd = HeaderValue::from_static("k8s.namespace.name=shop,k8s.workload.name=a%20b");
        assert_eq!(decode(&odd, "shop"), None);
    }
}
