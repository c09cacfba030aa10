//! Scrape cost: rendering Istio's request metrics with 1,000 active series (each with its
//! duration and size histograms) in the Prometheus text format, as `/metrics` does. Prints the
//! median and worst of 50 renders.

use std::time::Instant;

use meshd::telemetry::{IstioMetrics, RequestLabels};
use prometheus::{Encoder, Registry, TextEncoder};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let registry = Registry::new();
    let m = IstioMetrics::new(&registry, true);
    for i in 0..1_000 {
        m.request(
            &RequestLabels {
                source_workload: format!("client-{}", i % 20),
                source_namespace: "default".into(),
                destination_service: format!("svc-{}.default.svc.cluster.local", i / 20),
                destination_workload: format!("svc-{}", i / 20),
                destination_namespace: "default".into(),
                protocol: "http",
                response_code: 200,
                grpc_status: String::new(),
                response_flags: "-".into(),
            },
            3.0,
            100,
            1000,
        );
    }
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..50 {
        let t = Instant::now();
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .expect("encode");
        times.push(t.elapsed());
        size = out.len();
    }
    times.sort();
    println!("| series | exposition size | median render | worst render |");
    println!("|---:|---:|---:|---:|");
    println!(
        "| 1000 (x 4 metrics, 3 histograms) | {:.1} MiB | {:.2} ms | {:.2} ms |",
        size as f64 / (1 << 20) as f64,
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3
    );
}
