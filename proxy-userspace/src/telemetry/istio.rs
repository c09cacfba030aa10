//! Istio's standard metrics with Istio's label names, as either reporter, with a cap
//! on distinct label sets per metric: past it, the high-cardinality labels read `other` and the
//! overflow is counted. The request metrics live in a lock-free series store (`series`); the
//! per-connection TCP metrics in the prometheus registry.

use std::{
    collections::HashSet,
    hash::{DefaultHasher, Hash, Hasher},
    sync::{Arc, Mutex, OnceLock, RwLock},
    time::Duration,
};

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

pub use super::series::RequestLabels;
use super::{
    exposition::{derived_labels, request_labels},
    peers::{Derived, Peers},
    series::{Labeller, OwnedLabels, SeriesStore},
    tcp_report::{Carried, DEFAULT_INTERVAL},
};

/// Distinct label sets kept per metric before new ones fold into `other`.
pub const MAX_SERIES: usize = 2_000;

/// The TCP metrics' labels: the connection's own, then `request_protocol` and those Istio
/// derives from its two ends (see [`derived_labels`]).
const TCP_LABELS: [&str; 23] = [
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "destination_service",
    "destination_workload",
    "destination_workload_namespace",
    "response_flags",
    "connection_security_policy",
    "request_protocol",
    "destination_app",
    "destination_canonical_revision",
    "destination_canonical_service",
    "destination_cluster",
    "destination_principal",
    "destination_service_name",
    "destination_service_namespace",
    "destination_version",
    "source_app",
    "source_canonical_revision",
    "source_canonical_service",
    "source_cluster",
    "source_version",
];

/// Labels of the kernel-side TCP figures: the workload pair.
const KERNEL_LABELS: [&str; 3] = [
    "source_workload",
    "source_workload_namespace",
    "destination_service",
];

/// The labels of one L4 connection.
#[derive(Clone, Debug, Hash)]
pub struct TcpLabels {
    pub source_workload: String,
    pub source_namespace: String,
    pub destination_service: String,
    pub destination_workload: String,
    pub destination_namespace: String,
    pub response_flags: String,
    /// `source` (meshd where the connection starts) or `destination` (the tunnel's far side).
    pub reporter: &'static str,
    /// The peer's SPIFFE ID without `spiffe://`, `unknown` when meshd has not authenticated one.
    pub source_principal: String,
    /// `mutual_tls` through the tunnel, `none` in plaintext, `unknown` before it is known.
    pub security_policy: &'static str,
    /// The connection went to the address the client dialled (`PassthroughCluster`).
    pub passthrough: bool,
}

pub struct IstioMetrics {
    /// `istio_requests_total` and the duration and size histograms, one series per label set.
    requests: SeriesStore,
    tcp_opened: IntCounterVec,
    tcp_closed: IntCounterVec,
    tcp_sent: IntCounterVec,
    tcp_received: IntCounterVec,
    overflow: IntCounterVec,
    tcp_rtt: HistogramVec,
    tcp_retransmits: IntCounterVec,
    seen_tcp: Mutex<HashSet<u64>>,
    /// Off: nothing is recorded (`--istio-metrics off`); the families stay registered, empty.
    enabled: bool,
    /// How often an open TCP connection reports its bytes (`--tcp-reporting-interval`).
    tcp_every: Option<Duration>,
    /// The workloads and services the derived labels are read from.
    peers: Arc<PeerContext>,
}

/// The active configuration's workloads and services, and the trust domain of principals.
#[derive(Default)]
struct PeerContext {
    peers: RwLock<Arc<Peers>>,
    trust_domain: OnceLock<String>,
}

impl PeerContext {
    fn derive(
        &self,
        source: (&str, &str),
        dest: (&str, &str),
        service: &str,
        security: &str,
        passthrough: bool,
    ) -> Derived {
        let peers = self.peers.read().expect("peers lock").clone();
        let td = self
            .trust_domain
            .get()
            .map_or("cluster.local", String::as_str);
        let mut d = peers.derive(source, dest, service, security == "mutual_tls", td);
        // As Istio's stats name the destination of its passthrough cluster.
        if passthrough {
            d.destination_service_name = crate::telemetry::access_log::PASSTHROUGH_CLUSTER.into();
            d.destination_service_namespace = "unknown".into();
        }
        d
    }
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
        IstioMetrics::reporting(registry, enabled, Some(DEFAULT_INTERVAL))
    }

    /// Istio's metrics, an open TCP connection's bytes reported every `tcp_every` (only at
    /// close when `None`).
    pub fn reporting(
        registry: &Registry,
        enabled: bool,
        tcp_every: Option<Duration>,
    ) -> IstioMetrics {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric");
            registry.register(Box::new(c.clone())).expect("register");
            c
        };
        let peers = Arc::new(PeerContext::default());
        let labeller: Labeller = {
            let peers = peers.clone();
            Arc::new(move |l: &OwnedLabels| {
                let d = peers.derive(
                    (&l.source_namespace, &l.source_workload),
                    (&l.destination_namespace, &l.destination_workload),
                    &l.destination_service,
                    l.security_policy,
                    l.passthrough,
                );
                request_labels(l, Some(&d))
            })
        };
        IstioMetrics {
            requests: SeriesStore::new(MAX_SERIES, labeller),
            peers,
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
                "Bytes sent during the response over TCP (from the destination to the source)",
                &TCP_LABELS,
            ),
            tcp_received: counter(
                "istio_tcp_received_bytes_total",
                "Bytes received during the request over TCP (from the source to the destination)",
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
            seen_tcp: Mutex::new(HashSet::new()),
            enabled,
            tcp_every: tcp_every.filter(|e| !e.is_zero()),
        }
    }

    /// Records one HTTP request when its response has ended (or was abandoned).
    pub fn request(
        &self,
        l: &RequestLabels<'_>,
        duration: Duration,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        self.in_series(l, true, |s| {
            s.record(duration, request_bytes, response_bytes)
        });
    }

    /// Records a gRPC request's messages each way (`istio_request_messages_total`,
    /// `istio_response_messages_total`), in the series `request` recorded it in.
    pub fn grpc_messages(&self, l: &RequestLabels<'_>, request: u64, response: u64) {
        self.in_series(l, false, |s| s.record_messages(request, response));
    }

    /// Runs `record` on the series of `l`, or of `l` folded into `other` past the cap
    /// (counted as an overflow when `count`).
    fn in_series(
        &self,
        l: &RequestLabels<'_>,
        count: bool,
        record: impl Fn(&super::series::Series),
    ) {
        if !self.enabled {
            return;
        }
        if self.requests.with(l, true, &record) {
            return;
        }
        if count {
            self.overflow
                .with_label_values(&["istio_requests_total"])
                .inc();
        }
        let folded = RequestLabels {
            source_workload: OTHER,
            destination_service: OTHER,
            destination_workload: OTHER,
            ..*l
        };
        self.requests.with(&folded, false, record);
    }

    /// Appends Istio's request families in the text format.
    pub fn render_requests(&self, out: &mut String) {
        super::exposition::request_families(&self.requests.sorted(), out);
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
        let d = self.peers.derive(
            (&l.source_namespace, &l.source_workload),
            (&l.destination_namespace, &l.destination_workload),
            &l.destination_service,
            l.security_policy,
            l.passthrough,
        );
        let mut v = vec![
            l.reporter.into(),
            l.source_workload,
            l.source_namespace,
            l.source_principal,
            l.destination_service,
            l.destination_workload,
            l.destination_namespace,
            l.response_flags,
            l.security_policy.into(),
            "tcp".into(),
        ];
        v.extend(derived_labels(&d).into_iter().map(|(_, value)| value));
        v
    }

    /// The workloads and services of the configuration now active: the derived labels of the
    /// requests and connections counted from now on (a request series whose labels change
    /// keeps what it counted under its old ones).
    pub fn set_peers(&self, peers: Arc<Peers>) {
        *self.peers.peers.write().expect("peers lock") = peers;
        self.requests.relabel();
    }

    /// The service name of the spans of requests from `workload` (`namespace/name`), as
    /// Istio's proxies name theirs: `app.namespace`.
    pub fn tracing_service(&self, workload: Option<&str>) -> String {
        let (name, namespace) = split_workload(workload);
        let peers = self.peers.peers.read().expect("peers lock").clone();
        peers.tracing_service(namespace, name)
    }

    /// The trust domain of the principals the derived labels name (`cluster.local` unless
    /// set, once).
    pub fn set_trust_domain(&self, td: &str) {
        let _ = self.peers.trust_domain.set(td.to_string());
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

    /// How often an open TCP connection reports the bytes it carried; `None` when only its
    /// close does (or nothing is recorded).
    pub fn tcp_reporting(&self) -> Option<Duration> {
        self.tcp_every.filter(|_| self.enabled)
    }

    /// Bytes an open or closing connection carried since its last report. As Istio defines
    /// them, `istio_tcp_received_bytes_total` counts the request's (to the destination) and
    /// `istio_tcp_sent_bytes_total` the response's (from it).
    pub fn tcp_bytes(&self, l: &TcpLabels, c: Carried) {
        if !self.enabled {
            return;
        }
        let v = self.tcp_values(l);
        let v: Vec<&str> = v.iter().map(String::as_str).collect();
        self.tcp_received
            .with_label_values(&v)
            .inc_by(c.to_destination);
        self.tcp_sent
            .with_label_values(&v)
            .inc_by(c.from_destination);
    }

    /// A connection's end, with the bytes it carried that were not reported while it was open.
    pub fn tcp_closed(&self, l: &TcpLabels, rest: Carried) {
        if !self.enabled {
            return;
        }
        let v = self.tcp_values(l);
        let v: Vec<&str> = v.iter().map(String::as_str).collect();
        self.tcp_closed.with_label_values(&v).inc();
        self.tcp_bytes(l, rest);
    }
}

/// `namespace/name` → (name, namespace), `unknown` when absent.
pub fn split_workload(w: Option<&str>) -> (&str, &str) {
    match w.and_then(|w| w.split_once('/')) {
        Some((ns, name)) => (name, ns),
        None => ("unknown", "unknown"),
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{Encoder, HistogramOpts, HistogramVec};

    use super::*;

    fn labels(dest: &str) -> RequestLabels<'_> {
        RequestLabels {
            reporter: "source",
            source_workload: "web",
            source_namespace: "demo",
            source_principal: "spiffe://cluster.local/ns/demo/sa/web",
            destination_service: dest,
            destination_workload: "backend",
            destination_namespace: "demo",
            protocol: "http",
            response_code: 200,
            grpc_status: "",
            response_flags: "-",
            security_policy: "mutual_tls",
            passthrough: false,
        }
    }

    #[test]
    fn label_sets_past_the_cap_fold_into_other() {
        let r = Registry::new();
        let m = IstioMetrics::new(&r, true);
        let names: Vec<String> = (0..MAX_SERIES + 10).map(|i| format!("svc-{i}")).collect();
        for name in &names {
            m.request(&labels(name), Duration::from_millis(1), 10, 10);
        }
        let text = crate::telemetry::exposition::encode(&r, &m);
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

    #[test]
    fn tcp_bytes_count_as_istio_defines_them() {
        let r = Registry::new();
        let m = IstioMetrics::new(&r, true);
        let l = TcpLabels {
            source_workload: "web".into(),
            source_namespace: "demo".into(),
            destination_service: "db".into(),
            destination_workload: "db".into(),
            destination_namespace: "demo".into(),
            response_flags: "-".into(),
            reporter: "source",
            source_principal: "unknown".into(),
            security_policy: "none",
            passthrough: false,
        };
        // A client sent 32 bytes; the destination answered 379.
        let carried = Carried {
            to_destination: 32,
            from_destination: 379,
        };
        m.tcp_closed(&l, carried);
        let text = crate::telemetry::exposition::encode(&r, &m);
        let value = |name: &str| {
            text.lines()
                .find(|line| line.starts_with(name))
                .and_then(|line| line.rsplit(' ').next())
                .map(str::to_string)
        };
        assert_eq!(
            value("istio_tcp_received_bytes_total{").as_deref(),
            Some("32")
        );
        assert_eq!(value("istio_tcp_sent_bytes_total{").as_deref(), Some("379"));
    }

    #[test]
    fn off_records_nothing() {
        let r = Registry::new();
        let m = IstioMetrics::new(&r, false);
        m.request(&labels("svc"), Duration::from_millis(1), 10, 10);
        assert!(!crate::telemetry::exposition::encode(&r, &m).contains("istio_request"));
    }

    /// The text the prometheus crate wrote for the same requests, when these metrics were
    /// its vectors: the direct encoder must produce it byte for byte.
    fn reference(requests: &[(RequestLabels<'_>, f64, u64, u64)]) -> String {
        const OWN: [&str; 12] = [
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
        // The derived labels, as an empty configuration derives them.
        let derive = |l: &RequestLabels<'_>| {
            let d = Peers::default().derive(
                (l.source_namespace, l.source_workload),
                (l.destination_namespace, l.destination_workload),
                l.destination_service,
                l.security_policy == "mutual_tls",
                "cluster.local",
            );
            derived_labels(&d)
        };
        let first = derive(&labels("x"));
        let names: Vec<&str> = OWN
            .iter()
            .copied()
            .chain(first.iter().map(|(n, _)| *n))
            .collect();
        let r = Registry::new();
        let counter = IntCounterVec::new(
            Opts::new(
                "istio_requests_total",
                "Requests handled, Istio's standard metric",
            ),
            &names,
        )
        .unwrap();
        r.register(Box::new(counter.clone())).unwrap();
        let messages = |name: &str, help: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &names).unwrap();
            r.register(Box::new(c.clone())).unwrap();
            c
        };
        let sent = messages(
            "istio_request_messages_total",
            "gRPC messages the client sent",
        );
        let answered = messages(
            "istio_response_messages_total",
            "gRPC messages the server sent",
        );
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                &names,
            )
            .unwrap();
            r.register(Box::new(h.clone())).unwrap();
            h
        };
        use crate::telemetry::series::{BYTES, DURATION_MS};
        let duration = histogram(
            "istio_request_duration_milliseconds",
            "Request duration in milliseconds",
            &DURATION_MS,
        );
        let req = histogram("istio_request_bytes", "Request body sizes in bytes", &BYTES);
        let resp = histogram(
            "istio_response_bytes",
            "Response body sizes in bytes",
            &BYTES,
        );
        for (l, ms, rq, rs) in requests {
            let code = l.response_code.to_string();
            let derived = derive(l);
            let own = [
                l.reporter,
                l.source_workload,
                l.source_namespace,
                l.source_principal,
                l.destination_service,
                l.destination_workload,
                l.destination_namespace,
                l.protocol,
                &code,
                l.grpc_status,
                l.response_flags,
                l.security_policy,
            ];
            let v: Vec<&str> = own
                .into_iter()
                .chain(derived.iter().map(|(_, v)| v.as_str()))
                .collect();
            counter.with_label_values(&v).inc();
            duration.with_label_values(&v).observe(*ms);
            req.with_label_values(&v).observe(*rq as f64);
            resp.with_label_values(&v).observe(*rs as f64);
            if l.protocol == "grpc" {
                sent.with_label_values(&v).inc_by(2);
                answered.with_label_values(&v).inc_by(3);
            }
        }
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&r.gather(), &mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_text_is_what_the_prometheus_crate_writes() {
        let mut failed = labels("reviews.default.svc.cluster.local");
        failed.response_code = 503;
        failed.response_flags = "UF,URX";
        let mut grpc = labels("grpc \"quoted\"\\ \n svc");
        grpc.protocol = "grpc";
        grpc.grpc_status = "14";
        let mut disconnected = labels("reviews.default.svc.cluster.local");
        disconnected.response_code = 0;
        // The same request as the workload's node records it.
        let mut destination = labels("reviews.default.svc.cluster.local");
        destination.reporter = "destination";
        let requests = [
            (labels("reviews.default.svc.cluster.local"), 0.5, 0, 3),
            (
                labels("reviews.default.svc.cluster.local"),
                2.0,
                120,
                10_000,
            ),
            (labels("ratings"), 70_000.0, 20_000_000, 1),
            (failed, 30.25, 1, 0),
            (grpc, 1.0, 10, 11),
            (disconnected, 0.75, 0, 0),
            (destination, 0.5, 0, 3),
        ];
        let r = Registry::new();
        let m = IstioMetrics::new(&r, true);
        for (l, ms, rq, rs) in &requests {
            m.request(l, Duration::from_secs_f64(ms / 1e3), *rq, *rs);
            if l.protocol == "grpc" {
                m.grpc_messages(l, 2, 3);
            }
        }
        let text = crate::telemetry::exposition::encode(&r, &m);
        assert_eq!(text, reference(&requests));
    }
}
