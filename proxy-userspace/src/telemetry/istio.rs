//! Istio's standard metrics with Istio's label names, as the source-side reporter, with a cap
//! on distinct label sets per metric: past it, the high-cardinality labels read `other` and the
//! overflow is counted.

use std::{
    collections::HashSet,
    hash::{DefaultHasher, Hash, Hasher},
    sync::Mutex,
};

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Distinct label sets kept per metric before new ones fold into `other`.
pub const MAX_SERIES: usize = 2_000;

const REQUEST_LABELS: [&str; 12] = [
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "destination_service",
    "destination_workload",
    "destination_workload_namespace",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

const TCP_LABELS: [&str; 9] = [
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "destination_service",
    "destination_workload",
    "destination_workload_namespace",
    "response_flags",
    "connection_security_policy",
];

/// Labels of the kernel-side TCP figures: the workload pair.
const KERNEL_LABELS: [&str; 3] = [
    "source_workload",
    "source_workload_namespace",
    "destination_service",
];

/// The labels of one HTTP request.
#[derive(Clone, Debug, Hash)]
pub struct RequestLabels {
    pub source_workload: String,
    pub source_namespace: String,
    pub destination_service: String,
    pub destination_workload: String,
    pub destination_namespace: String,
    pub protocol: &'static str,
    pub response_code: u16,
    pub grpc_status: String,
    pub response_flags: String,
}

/// The labels of one L4 connection.
#[derive(Clone, Debug, Hash)]
pub struct TcpLabels {
    pub source_workload: String,
    pub source_namespace: String,
    pub destination_service: String,
    pub destination_workload: String,
    pub destination_namespace: String,
    pub response_flags: String,
}

pub struct IstioMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    request_bytes: HistogramVec,
    response_bytes: HistogramVec,
    tcp_opened: IntCounterVec,
    tcp_closed: IntCounterVec,
    tcp_sent: IntCounterVec,
    tcp_received: IntCounterVec,
    overflow: IntCounterVec,
    tcp_rtt: HistogramVec,
    tcp_retransmits: IntCounterVec,
    seen_requests: Mutex<HashSet<u64>>,
    seen_tcp: Mutex<HashSet<u64>>,
    /// Off: nothing is recorded (`--istio-metrics off`); the families stay registered, empty.
    enabled: bool,
}

fn buckets_ms() -> Vec<f64> {
    vec![
        0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
        30000.0, 60000.0,
    ]
}

fn buckets_bytes() -> Vec<f64> {
    vec![
        1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0, 1000000.0, 10000000.0,
    ]
}

/// Whether a new label set fits under the cap (known ones always do).
fn admit(seen: &Mutex<HashSet<u64>>, key: &impl Hash) -> bool {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    let k = h.finish();
    let mut seen = seen.lock().expect("series lock");
    if seen.contains(&k) {
        return true;
    }
    if seen.len() >= MAX_SERIES {
        return false;
    }
    seen.insert(k);
    true
}

const OTHER: &str = "other";

impl IstioMetrics {
    pub fn new(registry: &Registry, enabled: bool) -> IstioMetrics {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric");
            registry.register(Box::new(c.clone())).expect("register");
            c
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets),
                &REQUEST_LABELS,
            )
            .expect("metric");
            registry.register(Box::new(h.clone())).expect("register");
            h
        };
        IstioMetrics {
            requests: counter(
                "istio_requests_total",
                "Requests handled, Istio's standard metric",
                &REQUEST_LABELS,
            ),
            duration: histogram(
                "istio_request_duration_milliseconds",
                "Request duration in milliseconds",
                buckets_ms(),
            ),
            request_bytes: histogram(
                "istio_request_bytes",
                "Request sizes (headers and body) in bytes",
                buckets_bytes(),
            ),
            response_bytes: histogram(
                "istio_response_bytes",
                "Response sizes (headers and body) in bytes",
                buckets_bytes(),
            ),
            tcp_opened: counter(
                "istio_tcp_connections_opened_total",
                "TCP connections opened",
                &TCP_LABELS,
            ),
            tcp_closed: counter(
                "istio_tcp_connections_closed_total",
                "TCP connections closed",
                &TCP_LABELS,
            ),
            tcp_sent: counter(
                "istio_tcp_sent_bytes_total",
                "Bytes sent to the destination over TCP",
                &TCP_LABELS,
            ),
            tcp_received: counter(
                "istio_tcp_received_bytes_total",
                "Bytes received from the destination over TCP",
                &TCP_LABELS,
            ),
            tcp_rtt: {
                let h = HistogramVec::new(
                    HistogramOpts::new(
                        "meshd_tcp_rtt_microseconds",
                        "Smoothed RTT of meshd's upstream TCP connections at close, from the kernel (sockops srtt_us)",
                    )
                    .buckets(vec![10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0, 25000.0, 100000.0, 500000.0]),
                    &KERNEL_LABELS,
                )
                .expect("metric");
                registry.register(Box::new(h.clone())).expect("register");
                h
            },
            tcp_retransmits: counter(
                "meshd_tcp_retransmits_total",
                "Retransmitted segments on meshd's upstream TCP connections, from the kernel (sockops total_retrans)",
                &KERNEL_LABELS,
            ),
            overflow: counter(
                "meshd_metric_label_overflow_total",
                "Samples whose label set exceeded the per-metric series cap and was folded into `other`",
                &["metric"],
            ),
            seen_requests: Mutex::new(HashSet::new()),
            seen_tcp: Mutex::new(HashSet::new()),
            enabled,
        }
    }

    pub fn request(
        &self,
        l: &RequestLabels,
        duration_ms: f64,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        if !self.enabled {
            return;
        }
        let mut l = l.clone();
        if !admit(&self.seen_requests, &l) {
            self.overflow
                .with_label_values(&["istio_requests_total"])
                .inc();
            l.source_workload = OTHER.into();
            l.destination_service = OTHER.into();
            l.destination_workload = OTHER.into();
        }
        let code = l.response_code.to_string();
        let values = [
            "source",
            l.source_workload.as_str(),
            l.source_namespace.as_str(),
            "unknown",
            l.destination_service.as_str(),
            l.destination_workload.as_str(),
            l.destination_namespace.as_str(),
            l.protocol,
            code.as_str(),
            l.grpc_status.as_str(),
            l.response_flags.as_str(),
            "unknown",
        ];
        self.requests.with_label_values(&values).inc();
        self.duration
            .with_label_values(&values)
            .observe(duration_ms);
        self.request_bytes
            .with_label_values(&values)
            .observe(request_bytes as f64);
        self.response_bytes
            .with_label_values(&values)
            .observe(response_bytes as f64);
    }

    fn tcp_values(&self, l: &TcpLabels) -> Vec<String> {
        let mut l = l.clone();
        if !admit(&self.seen_tcp, &l) {
            self.overflow
                .with_label_values(&["istio_tcp_connections_opened_total"])
                .inc();
            l.source_workload = OTHER.into();
            l.destination_service = OTHER.into();
            l.destination_workload = OTHER.into();
        }
        vec![
            "source".into(),
            l.source_workload,
            l.source_namespace,
            "unknown".into(),
            l.destination_service,
            l.destination_workload,
            l.destination_namespace,
            l.response_flags,
            "unknown".into(),
        ]
    }

    /// The kernel's view of an upstream connection that just closed.
    pub fn kernel(&self, l: &TcpLabels, srtt_us: u64, retransmits: u64) {
        if !self.enabled {
            return;
        }
        let v = self.tcp_values(l);
        let labels = [v[1].as_str(), v[2].as_str(), v[4].as_str()];
        self.tcp_rtt
            .with_label_values(&labels)
            .observe(srtt_us as f64);
        self.tcp_retransmits
            .with_label_values(&labels)
            .inc_by(retransmits);
    }

    pub fn tcp_opened(&self, l: &TcpLabels) {
        if !self.enabled {
            return;
        }
        let v = self.tcp_values(l);
        let v: Vec<&str> = v.iter().map(String::as_str).collect();
        self.tcp_opened.with_label_values(&v).inc();
    }

    pub fn tcp_closed(&self, l: &TcpLabels, sent: u64, received: u64) {
        if !self.enabled {
            return;
        }
        let v = self.tcp_values(l);
        let v: Vec<&str> = v.iter().map(String::as_str).collect();
        self.tcp_closed.with_label_values(&v).inc();
        self.tcp_sent.with_label_values(&v).inc_by(sent);
        self.tcp_received.with_label_values(&v).inc_by(received);
    }
}

/// `namespace/name` → (name, namespace), `unknown` when absent.
pub fn split_workload(w: Option<&str>) -> (String, String) {
    match w.and_then(|w| w.split_once('/')) {
        Some((ns, name)) => (name.to_string(), ns.to_string()),
        None => ("unknown".into(), "unknown".into()),
    }
}

#[cfg(test)]
mod tests {
    use prometheus::Encoder;

    use super::*;

    fn labels(dest: &str) -> RequestLabels {
        RequestLabels {
            source_workload: "web".into(),
            source_namespace: "demo".into(),
            destination_service: dest.into(),
            destination_workload: "backend".into(),
            destination_namespace: "demo".into(),
            protocol: "http",
            response_code: 200,
            grpc_status: String::new(),
            response_flags: "-".into(),
        }
    }

    #[test]
    fn label_sets_past_the_cap_fold_into_other() {
        let r = Registry::new();
        let m = IstioMetrics::new(&r, true);
        for i in 0..MAX_SERIES + 10 {
            m.request(&labels(&format!("svc-{i}")), 1.0, 10, 10);
        }
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&r.gather(), &mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        let series = text
            .lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .count();
        assert_eq!(series, MAX_SERIES + 1, "the cap plus one `other` series");
        assert!(text.contains("destination_service=\"other\""));
        assert!(
            text.contains("meshd_metric_label_overflow_total{metric=\"istio_requests_total\"} 10")
        );
    }
}
