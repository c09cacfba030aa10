//! A destination's connection-pool limits (DestinationRule `connectionPool`), with Istio's
//! defaults for whatever the rule leaves unset.

use std::time::{Duration, Instant};

use crate::policy::model::ConnectionPool;

/// Istio's default for every count limit: effectively unlimited (2^32-1).
pub const UNLIMITED: u32 = u32::MAX;

/// A pool limit as Istio reads it: unset or 0 is no limit (Istio sets Envoy's threshold only
/// when above 0).
fn unset_at_zero(limit: Option<u32>) -> u32 {
    limit.filter(|n| *n > 0).unwrap_or(UNLIMITED)
}
/// Istio's default `http.idleTimeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// TCP keepalive probes on upstream sockets (`tcp.tcpKeepalive`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    /// Idle time before the first probe; the kernel's default when unset.
    pub time: Option<Duration>,
    pub interval: Option<Duration>,
    pub probes: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `tcp.maxConnections`: open upstream connections to the destination, all endpoints.
    pub max_connections: u32,
    /// `http.http1MaxPendingRequests`: requests waiting for a connection.
    pub max_pending: u32,
    /// `http.http2MaxRequests`: requests in flight to the destination (any HTTP version).
    pub max_requests: u32,
    /// `http.maxRetries`: retries in flight across the destination.
    pub max_retries: u32,
    /// `http.maxRequestsPerConnection`: 0 is unlimited, 1 disables keep-alive.
    pub max_requests_per_connection: u32,
    /// `http.maxConcurrentStreams`: streams per HTTP/2 connection before another is opened.
    pub max_streams: u32,
    /// `http.idleTimeout`: an idle upstream connection is closed after this.
    pub idle_timeout: Duration,
    /// `tcp.connectTimeout`; meshd's `--connect-timeout` when unset.
    pub connect_timeout: Option<Duration>,
    /// `tcp.maxConnectionDuration`: a connection this old takes no new request (an HTTP/2 one
    /// finishes the streams it has, then closes).
    pub max_connection_duration: Option<Duration>,
    /// `tcp.idleTimeout` of opaque connections (Istio's default one hour; `0s`: none).
    pub tcp_idle_timeout: Option<Duration>,
    pub keepalive: Option<Keepalive>,
    /// DestinationRule `tls` origination: meshd opens TLS to the upstream.
    pub tls: Option<super::Originate>,
    /// `retryBudget`: bounds the retries in flight instead of `max_retries`.
    pub retry_budget: Option<RetryBudget>,
    /// `proxyProtocol`: the header a new direct connection opens with, for the request's (or
    /// opaque connection's) downstream connection.
    pub proxy_protocol: Option<super::proxy_protocol::ProxyHeader>,
    /// With `proxy_protocol`: the downstream connection whose partition of the pool a new
    /// connection joins.
    pub client: Option<super::proxy_protocol::ClientLife>,
    /// `tunnel`: the `host:port` an opaque connection asks the forward proxy (the endpoint)
    /// to CONNECT to.
    pub tunnel: Option<std::sync::Arc<str>>,
    /// The connection is carried as opaque bytes (L4): through the mTLS tunnel, the far node
    /// is told so, and authorizes it as TCP whatever its bytes look like.
    pub opaque: bool,
    /// The configuration generation these limits come from: a request begun before a reload
    /// defers to the limits of a newer one (0: none, as for a destination without policy).
    pub generation: u64,
}

/// Envoy's retry budget: the retries in flight may be `percent` of the destination's active
/// and pending requests, and never fewer than `min_concurrency`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryBudget {
    /// The percentage in hundredths (20% is 2000), so limits stay comparable.
    pub hundredths_of_percent: u32,
    pub min_concurrency: u32,
}

impl RetryBudget {
    pub fn from_spec(spec: &crate::policy::model::RetryBudget) -> RetryBudget {
        RetryBudget {
            hundredths_of_percent: (spec.percent.unwrap_or(20.0) * 100.0).round() as u32,
            min_concurrency: spec.min_retry_concurrency.unwrap_or(3),
        }
    }

    /// The retries allowed in flight while `active` requests are.
    pub fn max_retries(&self, active: u32) -> u32 {
        let share = u64::from(active) * u64::from(self.hundredths_of_percent) / 10_000;
        (share as u32).max(self.min_concurrency)
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: UNLIMITED,
            max_pending: UNLIMITED,
            max_requests: UNLIMITED,
            max_retries: UNLIMITED,
            max_requests_per_connection: 0,
            max_streams: UNLIMITED,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            connect_timeout: None,
            max_connection_duration: None,
            tcp_idle_timeout: Some(crate::proxy::idle::DEFAULT),
            keepalive: None,
            tls: None,
            retry_budget: None,
            proxy_protocol: None,
            client: None,
            tunnel: None,
            opaque: false,
            generation: 0,
        }
    }
}

impl Limits {
    pub fn from_spec(pool: Option<&ConnectionPool>) -> Limits {
        let mut l = Limits::default();
        let Some(pool) = pool else { return l };
        if let Some(tcp) = &pool.tcp {
            l.max_connections = unset_at_zero(tcp.max_connections);
            l.connect_timeout = tcp.connect_timeout.map(|d| d.0).filter(|d| !d.is_zero());
            l.max_connection_duration = tcp
                .max_connection_duration
                .map(|d| d.0)
                .filter(|d| !d.is_zero());
            if let Some(idle) = tcp.idle_timeout {
                l.tcp_idle_timeout = Some(idle.0).filter(|d| !d.is_zero());
            }
            l.keepalive = tcp.tcp_keepalive.as_ref().map(|k| Keepalive {
                time: k.time.map(|d| d.0).filter(|d| !d.is_zero()),
                interval: k.interval.map(|d| d.0).filter(|d| !d.is_zero()),
                probes: k.probes.filter(|p| *p > 0),
            });
        }
        if let Some(http) = &pool.http {
            l.max_pending = unset_at_zero(http.http1_max_pending_requests);
            l.max_requests = unset_at_zero(http.http2_max_requests);
            l.max_retries = unset_at_zero(http.max_retries);
            l.max_requests_per_connection = http.max_requests_per_connection.unwrap_or(0);
            l.max_streams = unset_at_zero(http.max_concurrent_streams);
        }
        // As Istio: without `http.idleTimeout`, `tcp.idleTimeout` also bounds an idle HTTP
        // connection.
        let http_idle = pool.http.as_ref().and_then(|h| h.idle_timeout);
        let tcp_idle = pool.tcp.as_ref().and_then(|t| t.idle_timeout);
        l.idle_timeout = (http_idle.or(tcp_idle))
            .map(|d| d.0)
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_IDLE_TIMEOUT);
        l
    }

    /// When a connection opened now stops taking requests (`maxConnectionDuration`).
    pub fn expiry(&self) -> Option<Instant> {
        self.max_connection_duration.map(|d| Instant::now() + d)
    }

    /// Whether a connection that has carried `used` requests may take another.
    pub fn reusable(&self, used: u32) -> bool {
        self.max_requests_per_connection == 0 || used < self.max_requests_per_connection
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> ConnectionPool {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn unset_fields_take_istios_defaults() {
        assert_eq!(Limits::from_spec(None), Limits::default());
        let l = Limits::from_spec(Some(&parse(r#"{"tcp": {"maxConnections": 1}}"#)));
        assert_eq!(l.max_connections, 1);
        assert_eq!(l.max_pending, UNLIMITED);
        assert_eq!(l.idle_timeout, DEFAULT_IDLE_TIMEOUT);
    }

    #[test]
    fn tcp_idle_timeout_bounds_idle_http_connections_without_an_http_one() {
        let idle = |json: &str| Limits::from_spec(Some(&parse(json))).idle_timeout;
        let secs = Duration::from_secs;
        assert_eq!(idle(r#"{"tcp": {"idleTimeout": "30s"}}"#), secs(30));
        assert_eq!(
            idle(r#"{"tcp": {"idleTimeout": "30s"}, "http": {"idleTimeout": "5s"}}"#),
            secs(5)
        );
        assert_eq!(idle(r#"{"http": {"maxRetries": 1}}"#), DEFAULT_IDLE_TIMEOUT);
    }

    #[test]
    fn a_zero_limit_is_no_limit_as_in_istio() {
        let l = Limits::from_spec(Some(&parse(
            r#"{"tcp": {"maxConnections": 0},
                "http": {"http1MaxPendingRequests": 0, "http2MaxRequests": 0, "maxRetries": 0,
                         "maxConcurrentStreams": 0}}"#,
        )));
        assert_eq!(
            [
                l.max_connections,
                l.max_pending,
                l.max_requests,
                l.max_retries,
                l.max_streams
            ],
            [UNLIMITED; 5]
        );
    }

    #[test]
    fn every_field_is_read() {
        let l = Limits::from_spec(Some(&parse(
            r#"{"tcp": {"maxConnections": 3, "connectTimeout": "250ms", "maxConnectionDuration": "1h", "idleTimeout": "0s",
                        "tcpKeepalive": {"time": "10s", "interval": "2s", "probes": 4}},
                "http": {"http1MaxPendingRequests": 5, "http2MaxRequests": 7, "maxRetries": 2,
                         "maxRequestsPerConnection": 1, "maxConcurrentStreams": 9,
                         "idleTimeout": "30s"}}"#,
        )));
        assert_eq!(
            l,
            Limits {
                max_connections: 3,
                max_pending: 5,
                max_requests: 7,
                max_retries: 2,
                max_requests_per_connection: 1,
                max_streams: 9,
                idle_timeout: Duration::from_secs(30),
                connect_timeout: Some(Duration::from_millis(250)),
                max_connection_duration: Some(Duration::from_secs(3600)),
                tcp_idle_timeout: None,
                keepalive: Some(Keepalive {
                    time: Some(Duration::from_secs(10)),
                    interval: Some(Duration::from_secs(2)),
                    probes: Some(4),
                }),
                tls: None,
                retry_budget: None,
                proxy_protocol: None,
                client: None,
                tunnel: None,
                opaque: false,
                generation: 0,
            }
        );
        assert!(l.reusable(0) && !l.reusable(1));
        assert!(Limits::default().reusable(1_000_000));
    }

    #[test]
    fn a_retry_budget_is_a_share_of_the_active_requests_with_a_floor() {
        let spec = |percent: Option<f64>, min: Option<u32>| {
            RetryBudget::from_spec(&crate::policy::model::RetryBudget {
                percent,
                min_retry_concurrency: min,
                budget_interval: None,
            })
        };
        let envoy_default = spec(None, None);
        assert_eq!(
            (envoy_default.max_retries(0), envoy_default.max_retries(10)),
            (3, 3)
        );
        assert_eq!(envoy_default.max_retries(100), 20);
        let quarter = spec(Some(25.5), Some(0));
        assert_eq!(quarter.max_retries(1000), 255);
        assert_eq!(quarter.max_retries(3), 0);
        assert_eq!(spec(Some(100.0), Some(0)).max_retries(u32::MAX), u32::MAX);
    }
}
