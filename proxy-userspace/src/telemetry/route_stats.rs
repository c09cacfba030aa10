//! Statistics of the routes a VirtualService match names with `statPrefix`, as Envoy keeps
//! `route.<stat_prefix>.upstream_rq_*` for them: upstream requests (each attempt) by response
//! code class, and per request its time, its retries and route timeouts; one series per
//! prefix (Envoy also names the virtual host; meshd does not).

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Milliseconds, as Istio's request duration buckets.
const TIME_BUCKETS: [f64; 14] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
];

pub struct RouteStats {
    requests: IntCounterVec,
    time: HistogramVec,
    retries: IntCounterVec,
    timeouts: IntCounterVec,
}

/// What one request of a route did.
pub struct RouteRequest {
    pub retries: u32,
    /// The route timeout expired (flag UT).
    pub timed_out: bool,
    pub elapsed: Duration,
}

impl RouteStats {
    pub fn new(registry: &Registry) -> RouteStats {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric");
            registry.register(Box::new(c.clone())).expect("register");
            c
        };
        let time = HistogramVec::new(
            HistogramOpts::new(
                "meshd_route_upstream_rq_time_milliseconds",
                "Time of the requests of a route with a statPrefix, to the end of the response",
            )
            .buckets(TIME_BUCKETS.to_vec()),
            &["stat_prefix"],
        )
        .expect("metric");
        registry.register(Box::new(time.clone())).expect("register");
        RouteStats {
            requests: counter(
                "meshd_route_upstream_rq_total",
                "Upstream requests (each attempt) of a route with a statPrefix, by response code class (none: no response)",
                &["stat_prefix", "response_code_class"],
            ),
            time,
            retries: counter(
                "meshd_route_upstream_rq_retry_total",
                "Retries of the requests of a route with a statPrefix",
                &["stat_prefix"],
            ),
            timeouts: counter(
                "meshd_route_upstream_rq_timeout_total",
                "Requests of a route with a statPrefix that hit the route timeout",
                &["stat_prefix"],
            ),
        }
    }

    /// One upstream attempt, with the status of its response (`None`: it got none: a reset, a
    /// connect failure, a per-try timeout, no endpoint).
    pub fn attempt(&self, prefix: &str, status: Option<u16>) {
        self.requests
            .with_label_values(&[prefix, code_class(status.unwrap_or(0))])
            .inc();
    }

    /// One request, once its response has ended.
    pub fn request(&self, prefix: &str, r: &RouteRequest) {
        self.time
            .with_label_values(&[prefix])
            .observe(r.elapsed.as_secs_f64() * 1e3);
        if r.retries > 0 {
            self.retries
                .with_label_values(&[prefix])
                .inc_by(u64::from(r.retries));
        }
        if r.timed_out {
            self.timeouts.with_label_values(&[prefix]).inc();
        }
    }
}

/// `2xx`, `5xx`, ... as Envoy's `upstream_rq_<class>xx`; `none` without a response.
fn code_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        5 => "5xx",
        _ => "none",
    }
}

#[cfg(test)]
mod tests {
    use prometheus::Encoder;

    use super::*;

    #[test]
    fn a_request_counts_in_its_routes_series() {
        let registry = Registry::new();
        let stats = RouteStats::new(&registry);
        let request = |retries, timed_out| RouteRequest {
            retries,
            timed_out,
            elapsed: Duration::from_millis(3),
        };
        stats.attempt("checkout", Some(200));
        stats.request("checkout", &request(0, false));
        stats.attempt("checkout", Some(503));
        stats.attempt("checkout", Some(200));
        stats.request("checkout", &request(1, false));
        stats.attempt("checkout", Some(503));
        stats.request("checkout", &request(2, true));
        stats.attempt("browse", None);
        stats.request("browse", &request(0, false));
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        for line in [
            r#"meshd_route_upstream_rq_total{response_code_class="2xx",stat_prefix="checkout"} 2"#,
            r#"meshd_route_upstream_rq_total{response_code_class="5xx",stat_prefix="checkout"} 2"#,
            r#"meshd_route_upstream_rq_total{response_code_class="none",stat_prefix="browse"} 1"#,
            r#"meshd_route_upstream_rq_retry_total{stat_prefix="checkout"} 3"#,
            r#"meshd_route_upstream_rq_timeout_total{stat_prefix="checkout"} 1"#,
            r#"meshd_route_upstream_rq_time_milliseconds_count{stat_prefix="checkout"} 3"#,
            r#"meshd_route_upstream_rq_time_milliseconds_bucket{stat_prefix="checkout",le="5"} 3"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(!text.contains(r#"meshd_route_upstream_rq_retry_total{stat_prefix="browse"}"#));
    }
}
