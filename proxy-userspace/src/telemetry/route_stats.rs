//! Statistics of the routes a VirtualService match names with `statPrefix`, as Envoy keeps
//! `vhost.<virtual_host>.route.<stat_prefix>.upstream_rq_*` for them: upstream requests (each
//! attempt) by response code class, and per request its time, its retries and route timeouts;
//! one series per virtual host (`host:port`, as Istio names Envoy's) and prefix.

use std::{sync::Arc, time::Duration};

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

/// Whose statistics a request counts in: its route's virtual host and `statPrefix`.
#[derive(Debug, PartialEq, Eq)]
pub struct RouteStat {
    /// `host:port`: the VirtualService host that routed the request (`*.suffix`, `*`) and the
    /// port it was sent to, as Istio names Envoy's virtual hosts.
    pub virtual_host: String,
    pub prefix: Arc<str>,
}

impl RouteStat {
    pub fn new(host: &str, port: u16, prefix: &Arc<str>) -> RouteStat {
        RouteStat {
            virtual_host: format!("{host}:{port}"),
            prefix: prefix.clone(),
        }
    }

    fn labels(&self) -> [&str; 2] {
        [&self.virtual_host, &self.prefix]
    }
}

/// What one request of a route did.
pub struct RouteRequest {
    pub retries: u32,
    /// The route timeout expired (flag UT; not a per-try timeout).
    pub timed_out: bool,
    /// From the request's end (past any fault delay) to the end of the upstream's answer, when
    /// an upstream's answer is what the client got (Envoy's `upstream_rq_time`).
    pub upstream_time: Option<Duration>,
}

/// One upstream attempt of a route, counted once: by the status of its answer, or as `none`
/// when it is dropped without one (a per-try or route timeout ends it).
pub struct Attempt<'a> {
    stats: &'a RouteStats,
    route: &'a RouteStat,
    status: Option<Option<u16>>,
}

impl<'a> Attempt<'a> {
    pub fn new(stats: &'a RouteStats, route: &'a RouteStat) -> Attempt<'a> {
        Attempt {
            stats,
            route,
            status: None,
        }
    }

    /// The attempt ended: `Some(status)` with an answer, `None` without (a reset, a connect
    /// failure).
    pub fn answered(&mut self, status: Option<u16>) {
        self.status = Some(status);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.stats.attempt(self.route, self.status.flatten());
    }
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
                "Time of the answered requests of a route with a statPrefix, from the request's end (past any fault delay) to the end of the upstream's answer",
            )
            .buckets(TIME_BUCKETS.to_vec()),
            &["virtual_host", "stat_prefix"],
        )
        .expect("metric");
        registry.register(Box::new(time.clone())).expect("register");
        RouteStats {
            requests: counter(
                "meshd_route_upstream_rq_total",
                "Upstream requests (each attempt) of a route with a statPrefix, by response code class (none: no response)",
                &["virtual_host", "stat_prefix", "response_code_class"],
            ),
            time,
            retries: counter(
                "meshd_route_upstream_rq_retry_total",
                "Retries of the requests of a route with a statPrefix",
                &["virtual_host", "stat_prefix"],
            ),
            timeouts: counter(
                "meshd_route_upstream_rq_timeout_total",
                "Requests of a route with a statPrefix that hit the route timeout",
                &["virtual_host", "stat_prefix"],
            ),
        }
    }

    /// One upstream attempt, with the status of its response (`None`: it got none: a reset, a
    /// connect failure, a per-try timeout, no endpoint).
    pub fn attempt(&self, route: &RouteStat, status: Option<u16>) {
        let [vhost, prefix] = route.labels();
        self.requests
            .with_label_values(&[vhost, prefix, code_class(status.unwrap_or(0))])
            .inc();
    }

    /// One request, once its response has ended.
    pub fn request(&self, route: &RouteStat, r: &RouteRequest) {
        let labels = route.labels();
        if let Some(t) = r.upstream_time {
            self.time
                .with_label_values(&labels)
                .observe(t.as_secs_f64() * 1e3);
        }
        if r.retries > 0 {
            self.retries
                .with_label_values(&labels)
                .inc_by(u64::from(r.retries));
        }
        if r.timed_out {
            self.timeouts.with_label_values(&labels).inc();
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
            upstream_time: (!timed_out).then(|| Duration::from_millis(3)),
        };
        let checkout = RouteStat::new("shop.example.com", 80, &Arc::from("checkout"));
        let browse = RouteStat::new("*.example.com", 80, &Arc::from("browse"));
        // Another VirtualService's route with the same prefix counts apart.
        let elsewhere = RouteStat::new("admin.example.com", 8080, &Arc::from("checkout"));
        stats.attempt(&checkout, Some(200));
        stats.request(&checkout, &request(0, false));
        stats.attempt(&checkout, Some(503));
        stats.attempt(&checkout, Some(200));
        stats.request(&checkout, &request(1, false));
        stats.attempt(&checkout, Some(503));
        stats.request(&checkout, &request(2, true));
        stats.attempt(&browse, None);
        stats.request(&browse, &request(0, false));
        stats.attempt(&elsewhere, Some(200));
        stats.request(&elsewhere, &request(0, false));
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        let shop = r#"stat_prefix="checkout",virtual_host="shop.example.com:80""#;
        for line in [
            format!(r#"meshd_route_upstream_rq_total{{response_code_class="2xx",{shop}}} 2"#),
            format!(r#"meshd_route_upstream_rq_total{{response_code_class="5xx",{shop}}} 2"#),
            r#"meshd_route_upstream_rq_total{response_code_class="none",stat_prefix="browse",virtual_host="*.example.com:80"} 1"#.to_string(),
            r#"meshd_route_upstream_rq_total{response_code_class="2xx",stat_prefix="checkout",virtual_host="admin.example.com:8080"} 1"#.to_string(),
            format!(r#"meshd_route_upstream_rq_retry_total{{{shop}}} 3"#),
            format!(r#"meshd_route_upstream_rq_timeout_total{{{shop}}} 1"#),
            // The timed-out request has no upstream time.
            format!(r#"meshd_route_upstream_rq_time_milliseconds_count{{{shop}}} 2"#),
            format!(r#"meshd_route_upstream_rq_time_milliseconds_bucket{{{shop},le="5"}} 2"#),
        ] {
            assert!(text.contains(&line), "{line} in\n{text}");
        }
        assert!(!text.contains(r#"meshd_route_upstream_rq_retry_total{stat_prefix="browse""#));
    }
}
