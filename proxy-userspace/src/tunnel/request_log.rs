//! The record of one HTTP request a tunnel stream delivered on its workload's node, as
//! Istio's inbound sidecar records it: Istio's request metrics with `reporter="destination"`
//! and an access-log line, written when the response body is done or abandoned.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use hyper::{HeaderMap, Method, Request, Uri, header::HeaderValue};

use super::server::{Inbound, Stream};
use crate::{
    proxy::{
        connections::unix_ms,
        http::{
            GRPC_STATUS, Record, ResponseFlags, body, grpc_label, header_logged, header_text,
            is_grpc, version_text,
        },
    },
    telemetry::{Entry, RequestLabels, access_log::rfc3339, istio::split_workload},
};

/// One request on its way through the destination's node.
pub struct InboundRequest {
    start: Instant,
    start_ms: u64,
    stream: Arc<Stream>,
    inbound: Arc<Inbound>,
    method: Method,
    uri: Uri,
    /// `Host` (HTTP/1; an HTTP/2 request's `:authority` is in its URI).
    host: Option<HeaderValue>,
    request_id: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
    version: &'static str,
    /// A gRPC request: meshd's own answers to it are gRPC-shaped.
    pub grpc: bool,
    /// What the request body delivered (counted as it is read).
    pub received: Arc<body::Received>,
    response_bytes: u64,
    /// A gRPC response's message framing, its messages counted as they pass.
    response_messages: Option<Box<crate::proxy::http::GrpcMessages>>,
    grpc_status: Option<HeaderValue>,
    /// The response's status, once there is one; none when the client left first.
    pub status: Option<u16>,
    pub rec: Record,
}

impl InboundRequest {
    pub fn start<B>(req: &Request<B>, stream: Arc<Stream>, inbound: Arc<Inbound>) -> Self {
        let h = req.headers();
        let grpc = is_grpc(h);
        InboundRequest {
            start: Instant::now(),
            start_ms: unix_ms(),
            stream,
            inbound,
            method: req.method().clone(),
            uri: req.uri().clone(),
            host: h.get(hyper::header::HOST).cloned(),
            request_id: h.get("x-request-id").cloned(),
            user_agent: h.get(hyper::header::USER_AGENT).cloned(),
            version: version_text(req.version()),
            grpc,
            received: Arc::default(),
            response_bytes: 0,
            response_messages: grpc.then(Box::default),
            grpc_status: None,
            status: None,
            rec: Record::default(),
        }
    }

    /// Notes the response's status, and grpc-status when it is in the headers (a
    /// trailers-only answer).
    pub fn respond(&mut self, status: u16, headers: &HeaderMap) {
        self.status = Some(status);
        self.grpc_status = headers.get(GRPC_STATUS).cloned();
    }

    fn metrics(&self, status: u16, flags: &str, elapsed: Duration) {
        let s = &self.stream;
        let (destination_workload, destination_namespace) =
            split_workload(s.workload.workload.as_deref());
        let destination_service = s.destination_service();
        let labels = RequestLabels {
            reporter: "destination",
            source_workload: s.source_workload_name(),
            source_namespace: s.source_namespace(),
            source_principal: &s.principal,
            destination_service: &destination_service,
            destination_workload,
            destination_namespace,
            protocol: if self.grpc { "grpc" } else { "http" },
            response_code: status,
            grpc_status: grpc_label(self.grpc, self.grpc_status.as_ref(), status),
            response_flags: flags,
            // It came through the tunnel: the caller proved its identity.
            security_policy: "mutual_tls",
            passthrough: false,
        };
        let istio = &self.inbound.metrics.istio;
        istio.request(&labels, elapsed, self.received.bytes(), self.response_bytes);
        if let Some(m) = &self.response_messages {
            istio.grpc_messages(&labels, self.received.messages(), m.count);
        }
    }

    fn log(&self, status: u16, flags: &str, elapsed: Duration) {
        let s = &self.stream;
        let destination_principal = (self.inbound.tunnel.identity_of(&s.workload))
            .map(|id| id.to_string())
            .unwrap_or_default();
        let entry = Entry {
            start_time: rfc3339(self.start_ms).into(),
            method: self.method.as_str().into(),
            path: (self.uri.path_and_query())
                .map_or(self.uri.path(), |p| p.as_str())
                .into(),
            protocol: self.version.into(),
            response_code: status,
            response_flags: flags.into(),
            took: elapsed.into(),
            upstream_cluster: crate::telemetry::access_log::inbound_cluster(s.target.port()).into(),
            upstream_host: s.target.to_string().into(),
            authority: match self.uri.authority() {
                Some(a) => a.as_str(),
                None => header_text(&self.host),
            }
            .into(),
            user_agent: header_logged(&self.user_agent),
            downstream_local_address: s.target.to_string().into(),
            downstream_remote_address: s.peer.to_string().into(),
            source_principal: s.principal.as_str().into(),
            source_workload: s.source_workload.as_deref().unwrap_or_default().into(),
            destination_principal: destination_principal.into(),
            destination_workload: s.workload.workload.clone().unwrap_or_default().into(),
            bytes_received: self.received.bytes(),
            bytes_sent: self.response_bytes,
            request_id: header_logged(&self.request_id),
            reason: self.rec.reason.as_deref().unwrap_or_default().into(),
            ..Entry::default()
        };
        self.inbound.http.access.write(&entry);
    }
}

impl body::Observer for InboundRequest {
    fn data(&mut self, len: usize) {
        self.response_bytes += len as u64;
    }

    fn data_frame(&mut self, data: &[u8]) {
        self.data(data.len());
        if let Some(m) = &mut self.response_messages {
            m.feed(data);
        }
    }

    fn trailers(&mut self, t: &HeaderMap) {
        if let Some(g) = t.get(GRPC_STATUS) {
            self.grpc_status = Some(g.clone());
        }
    }

    fn failed(&mut self, _: &body::BoxError) {
        self.rec.fail(
            ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
            "the workload's response body failed",
        );
    }

    fn abandoned(&mut self) {
        self.rec.fail(
            ResponseFlags::DOWNSTREAM_DISCONNECT,
            "the source disconnected during the response",
        );
    }
}

impl Drop for InboundRequest {
    fn drop(&mut self) {
        if self.status.is_none() {
            self.rec.fail(
                ResponseFlags::DOWNSTREAM_DISCONNECT,
                "the source disconnected before the response",
            );
        }
        let status = self.status.unwrap_or(0);
        let elapsed = self.start.elapsed();
        // Empty prints as `-`.
        let flags = self.rec.flags.to_string();
        self.metrics(status, &flags, elapsed);
        let error = status >= 500 || status == 0 || !self.rec.flags.is_empty();
        if self.inbound.http.access.wants(error) {
            self.log(status, &flags, elapsed);
        }
    }
}
