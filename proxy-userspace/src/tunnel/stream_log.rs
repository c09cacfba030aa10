//! The access-log line of a tunnel stream on its destination's node, as Istio's inbound
//! sidecar logs its TCP connections: one per stream carried as bytes, refused, or that could
//! not reach the workload (a stream served as HTTP logs its requests instead, `request_log`).

use std::time::Instant;

use super::server::{Inbound, Stream};
use crate::{
    proxy::connections::unix_ms,
    telemetry::{Entry, access_log::rfc3339},
};

/// When a stream began, for its line.
pub struct StreamLog {
    start: Instant,
    start_ms: u64,
}

/// How a stream ended.
pub struct Ended<'a> {
    pub flags: &'a str,
    pub reason: &'a str,
    /// Bytes the source sent to the workload, and the workload's answer.
    pub request_bytes: u64,
    pub response_bytes: u64,
}

impl StreamLog {
    pub fn start() -> StreamLog {
        StreamLog {
            start: Instant::now(),
            start_ms: unix_ms(),
        }
    }

    pub fn write(&self, inbound: &Inbound, s: &Stream, end: Ended<'_>) {
        let destination_principal = (inbound.tunnel.identity_of(&s.workload))
            .map(|id| id.to_string())
            .unwrap_or_default();
        let entry = Entry {
            start_time: rfc3339(self.start_ms).into(),
            protocol: "tcp".into(),
            response_flags: end.flags.into(),
            took: self.start.elapsed().into(),
            upstream_cluster: crate::telemetry::access_log::inbound_cluster(s.target.port()).into(),
            upstream_host: s.target.to_string().into(),
            // As the stream's HTTP requests are logged: the workload's address and the peer.
            downstream_local_address: s.target.to_string().into(),
            downstream_remote_address: s.peer.to_string().into(),
            source_principal: s.principal.as_str().into(),
            destination_principal: destination_principal.into(),
            source_workload: s.source_workload.as_deref().unwrap_or_default().into(),
            destination_workload: s.workload.workload.clone().unwrap_or_default().into(),
            bytes_received: end.request_bytes,
            bytes_sent: end.response_bytes,
            reason: end.reason.into(),
            ..Entry::default()
        };
        let error = end.flags != "-" || !end.reason.is_empty();
        inbound.http.access.log(&entry, error);
    }
}
