//! What happened to one request, filled in along the pipeline and read when the request ends:
//! response flags, where it went, retries, and the reason for any failure or denial.

use std::net::SocketAddr;

use super::ResponseFlags;

#[derive(Clone, Debug, Default)]
pub struct Record {
    pub flags: ResponseFlags,
    /// The service host the request was routed to (or asked for, when no route applies).
    pub destination_service: Option<String>,
    /// The subset and port of the service's cluster the request was sent to (none when it was
    /// answered before a cluster was chosen).
    pub destination_subset: Option<String>,
    pub destination_port: Option<u16>,
    /// `namespace/name` of the WorkloadEntry behind the endpoint, when known.
    pub destination_workload: Option<String>,
    /// The endpoint of the last attempt.
    pub upstream_host: Option<SocketAddr>,
    pub retries: u32,
    /// `mutual_tls` when the last attempt went through the tunnel, `none` when it went in
    /// plaintext; `None` when it reached no endpoint.
    pub security_policy: Option<&'static str>,
    /// Why the request failed or was denied, for the access log.
    pub reason: Option<String>,
    /// The `statPrefix` of the route's match, with its virtual host: the request counts in that
    /// route's statistics.
    pub stat_prefix: Option<std::sync::Arc<crate::telemetry::route_stats::RouteStat>>,
    /// The attempts that answered and that a retry replaced, in order.
    pub replaced: Vec<Replaced>,
    /// The last attempt never left meshd: a connection-pool limit shed it (flag UO), so no
    /// workload saw it.
    pub shed: bool,
    /// When the request reached the router, past any fault delay, kept when an upstream's
    /// answer is what the client got: the route's `upstream_rq_time` runs from then (or the
    /// request's end, if later), as Envoy's router times it.
    pub upstream_answer_from: Option<tokio::time::Instant>,
    /// The route timeout ended the request (before or during the answer), where a per-try
    /// timeout did not: Envoy's route `upstream_rq_timeout`.
    pub route_timed_out: bool,
    /// `x-envoy-upstream-service-time` of the answer the client got, in milliseconds.
    pub upstream_service_ms: Option<u64>,
    /// The `name` of the route that took the request.
    pub route_name: Option<std::sync::Arc<str>>,
}

/// An attempt that got an answer a retry then replaced.
#[derive(Clone, Copy, Debug)]
pub struct Replaced {
    pub endpoint: SocketAddr,
    pub status: u16,
    /// From the attempt's send to its answer.
    pub took: std::time::Duration,
}

impl Record {
    pub fn fail(&mut self, flag: ResponseFlags, reason: impl Into<String>) {
        self.flags.insert(flag);
        self.reason.get_or_insert_with(|| reason.into());
    }
}
