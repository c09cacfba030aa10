//! The connection pools' circuit-breaker counters on `/metrics`, as Envoy's cluster gauges:
//! open connections, pending requests, requests and retries in flight, per cluster.

use std::{collections::BTreeMap, fmt::Write};

use crate::telemetry::{access_log::istio_cluster_name, exposition::escape_into};

/// Each gauge's name and help, in the order of [`crate::proxy::http::pool::Pool::counts`].
const GAUGES: [(&str, &str); 4] = [
    (
        "meshd_upstream_cx_active",
        "Open upstream connections of the cluster (Envoy's upstream_cx_active)",
    ),
    (
        "meshd_upstream_rq_pending_active",
        "Requests waiting for an upstream connection or stream (Envoy's upstream_rq_pending_active)",
    ),
    (
        "meshd_upstream_rq_active",
        "Upstream requests in flight (Envoy's upstream_rq_active)",
    ),
    (
        "meshd_upstream_rq_retries_active",
        "Retries in flight, as maxRetries counts them",
    ),
];

/// The gauges of `counts` (cluster key, counters) as Prometheus text. A cluster whose pool
/// holds nothing has no series, so series come and go with the clusters in use.
pub fn render(counts: &[(String, [u32; 4])]) -> String {
    let mut by_name: BTreeMap<String, [u32; 4]> = BTreeMap::new();
    for (key, values) in counts.iter().filter(|(_, v)| v.iter().any(|n| *n > 0)) {
        let sum = by_name.entry(istio_cluster_name(key)).or_default();
        for (s, v) in sum.iter_mut().zip(values) {
            *s += v;
        }
    }
    let mut text = String::new();
    for (i, (name, help)) in GAUGES.iter().enumerate() {
        let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (cluster, values) in &by_name {
            let _ = write!(text, "{name}{{cluster=\"");
            escape_into(&mut text, cluster);
            let _ = writeln!(text, "\"}} {}", values[i]);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cluster_under_its_istio_name() {
        let text = render(&[
            ("reviews|v1|9080".into(), [2, 1, 3, 0]),
            ("inbound|127.0.0.1:80".into(), [1, 0, 1, 0]),
            ("inbound|127.0.0.2:80".into(), [1, 0, 0, 0]),
            // Passthrough, as the HTTP path keys it: the address dialled.
            ("10.0.0.1:80".into(), [1, 0, 1, 0]),
            ("[fd00::1]:8080".into(), [2, 0, 0, 0]),
            // A pool that holds nothing: no series.
            ("idle|v9|80".into(), [0, 0, 0, 0]),
        ]);
        for line in [
            "meshd_upstream_cx_active{cluster=\"outbound|9080|v1|reviews\"} 2",
            "meshd_upstream_rq_pending_active{cluster=\"outbound|9080|v1|reviews\"} 1",
            "meshd_upstream_rq_active{cluster=\"outbound|9080|v1|reviews\"} 3",
            "meshd_upstream_rq_retries_active{cluster=\"outbound|9080|v1|reviews\"} 0",
            "meshd_upstream_cx_active{cluster=\"inbound|80||\"} 2",
            "meshd_upstream_cx_active{cluster=\"PassthroughCluster\"} 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
        assert!(!text.contains("idle"), "{text}");
        // A route to an IP literal is a service of that name, as the access log names it.
        assert_eq!(istio_cluster_name("10.0.0.1||80"), "outbound|80||10.0.0.1");
        assert_eq!(
            render(&[("a\"b|v1|80".into(), [1, 0, 0, 0])])
                .lines()
                .nth(2),
            Some("meshd_upstream_cx_active{cluster=\"outbound|80|v1|a\\\"b\"} 1")
        );
        assert_eq!(text.matches("# TYPE").count(), 4);
        assert_eq!(istio_cluster_name("db|ro|5432"), "outbound|5432|ro|db");
        assert_eq!(istio_cluster_name("db||5432"), "outbound|5432||db");
    }
}
