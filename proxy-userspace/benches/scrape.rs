//! Scrape cost: rendering Istio's request metrics in the Prometheus text format, as `/metrics`
//! does, for two sizes: 1,000 series (every sample line is a series: a label set makes a
//! counter and three histograms of 19 bounds, 67 lines, so 15 label sets) and 1,000 label sets
//! (67,000 series). For comparison, the same data is rendered the way meshd did before, as
//! prometheus crate vectors through its TextEncoder, with the same 25 labels. Prints the
//! median and worst of 50 renders.

use std::time::{Duration, Instant};

use meshd::telemetry::{
    IstioMetrics, RequestLabels, exposition,
    peers::Peers,
    series::{BYTES, DURATION_MS},
};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

const RENDERS: usize = 50;

/// Label names in the order meshd used to declare them.
const NAMES: [&str; 12] = [
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

struct Labels {
    source: String,
    service: String,
    workload: String,
}

fn label_sets(n: usize) -> Vec<Labels> {
    (0..n)
        .map(|i| Labels {
            source: format!("client-{}", i % 20),
            service: format!("svc-{}.default.svc.cluster.local", i / 20),
            workload: format!("svc-{}", i / 20),
        })
        .collect()
}

/// (median, worst, bytes, sample lines) of `RENDERS` renders.
fn time(render: impl Fn() -> String) -> (Duration, Duration, usize, usize) {
    let mut times = Vec::new();
    let mut text = String::new();
    for _ in 0..RENDERS {
        let t = Instant::now();
        text = render();
        times.push(t.elapsed());
    }
    times.sort();
    let lines = text.lines().filter(|l| !l.starts_with('#')).count();
    (times[RENDERS / 2], times[RENDERS - 1], text.len(), lines)
}

fn meshd(sets: &[Labels]) -> (Duration, Duration, usize, usize) {
    let registry = Registry::new();
    let m = IstioMetrics::new(&registry, true);
    for l in sets {
        m.request(
            &RequestLabels {
                reporter: "source",
                source_workload: &l.source,
                source_namespace: "default",
                source_principal: "unknown",
                destination_service: &l.service,
                destination_workload: &l.workload,
                destination_namespace: "default",
                protocol: "http",
                response_code: 200,
                grpc_status: "",
                response_flags: "-",
                security_policy: "none",
                passthrough: false,
            },
            Duration::from_millis(3),
            100,
            1000,
        );
    }
    time(|| exposition::encode(&registry, &m))
}

fn prometheus_crate(sets: &[Labels]) -> (Duration, Duration, usize, usize) {
    // The labels meshd derives from the two ends, as an empty configuration derives them.
    let derived = |l: &Labels| {
        let d = Peers::default().derive(
            ("default", &l.source),
            ("default", &l.workload),
            &l.service,
            false,
            "cluster.local",
        );
        exposition::derived_labels(&d)
    };
    let names: Vec<&str> = (NAMES.iter().copied())
        .chain(derived(&label_sets(1)[0]).iter().map(|(n, _)| *n))
        .collect();
    let registry = Registry::new();
    let counter = IntCounterVec::new(
        Opts::new(
            "istio_requests_total",
            "Requests handled, Istio's standard metric",
        ),
        &names,
    )
    .expect("metric");
    registry
        .register(Box::new(counter.clone()))
        .expect("register");
    let histogram = |name: &str, help: &str, buckets: &[f64]| {
        let h = HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            &names,
        )
        .expect("metric");
        registry.register(Box::new(h.clone())).expect("register");
        h
    };
    let duration = histogram(
        "istio_request_duration_milliseconds",
        "Request duration in milliseconds",
        &DURATION_MS,
    );
    let req = histogram("istio_request_bytes", "Request sizes", &BYTES);
    let resp = histogram("istio_response_bytes", "Response sizes", &BYTES);
    for l in sets {
        let extra = derived(l);
        let own = [
            "source",
            &l.source,
            "default",
            "unknown",
            &l.service,
            &l.workload,
            "default",
            "http",
            "200",
            "",
            "-",
            "none",
        ];
        let v: Vec<&str> = (own.into_iter())
            .chain(extra.iter().map(|(_, v)| v.as_str()))
            .collect();
        counter.with_label_values(&v).inc();
        duration.with_label_values(&v).observe(3.0);
        req.with_label_values(&v).observe(100.0);
        resp.with_label_values(&v).observe(1000.0);
    }
    time(|| {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .expect("encode");
        String::from_utf8(out).expect("UTF-8")
    })
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "| label sets | series (sample lines) | exposition size | encoder | median render | worst render |"
    );
    println!("|---:|---:|---:|---|---:|---:|");
    for sets in [15, 1_000] {
        let labels = label_sets(sets);
        for (name, (median, worst, bytes, lines)) in [
            ("meshd", meshd(&labels)),
            ("prometheus crate (before)", prometheus_crate(&labels)),
        ] {
            let size = if bytes >= 1 << 20 {
                format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
            } else {
                format!("{:.0} KiB", bytes as f64 / 1024.0)
            };
            println!(
                "| {sets} | {lines} | {size} | {name} | {:.2} ms | {:.2} ms |",
                ms(median),
                ms(worst)
            );
        }
    }
}
