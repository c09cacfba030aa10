//! Prometheus' text exposition format (version 0.0.4), written directly for Istio's request
//! metrics: each series' label text is built once, when the series is created, and a scrape
//! copies it into every line of the series, with integers formatted by `itoa`. The other
//! families go through the prometheus crate's encoder, and all come out in name order, as the
//! crate writes them.

use std::sync::Arc;

use prometheus::{Registry, TextEncoder};

use super::{
    istio::IstioMetrics,
    peers::{CLUSTER, Derived},
    series::{AllLabels, BYTES, DURATION_MS, HistogramTotals, OwnedLabels, Series, Totals},
};

/// The request families, in name order; no other family's name sorts between them.
const REQUEST_FAMILIES: [&str; 6] = [
    "istio_request_bytes",
    "istio_request_duration_milliseconds",
    "istio_request_messages_total",
    "istio_requests_total",
    "istio_response_bytes",
    "istio_response_messages_total",
];

/// The registry's families and Istio's request families as one exposition, in name order.
pub fn encode(registry: &Registry, istio: &IstioMetrics) -> String {
    let families = registry.gather();
    let split = families.partition_point(|f| f.name() < REQUEST_FAMILIES[0]);
    debug_assert!(
        families
            .get(split)
            .is_none_or(|f| f.name() > REQUEST_FAMILIES[5]),
        "a registered family sorts among the request families"
    );
    let mut out = String::new();
    let encoder = TextEncoder::new();
    encoder
        .encode_utf8(&families[..split], &mut out)
        .expect("text encoding");
    istio.render_requests(&mut out);
    encoder
        .encode_utf8(&families[split..], &mut out)
        .expect("text encoding");
    out
}

/// Appends `v` as a label value: backslash, double quote and newline escaped.
pub fn escape_into(out: &mut String, v: &str) {
    if !v.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        out.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Every label of a request series, sorted by name as Prometheus writes them: its own, and
/// with `derived` those Istio derives from its two ends.
pub fn request_labels(l: &OwnedLabels, derived: Option<&Derived>) -> AllLabels {
    let mut all: AllLabels = vec![
        ("connection_security_policy", l.security_policy.into()),
        ("destination_service", l.destination_service.to_string()),
        ("destination_workload", l.destination_workload.to_string()),
        (
            "destination_workload_namespace",
            l.destination_namespace.to_string(),
        ),
        ("grpc_response_status", l.grpc_status.to_string()),
        ("reporter", l.reporter.into()),
        ("request_protocol", l.protocol.into()),
        ("response_code", l.response_code_text.to_string()),
        ("response_flags", l.response_flags.to_string()),
        ("source_principal", l.source_principal.to_string()),
        ("source_workload", l.source_workload.to_string()),
        ("source_workload_namespace", l.source_namespace.to_string()),
    ];
    if let Some(d) = derived {
        all.extend(derived_labels(d));
        all.sort_by_key(|(name, _)| *name);
    }
    all
}

/// The labels Istio derives from the two ends of a request or connection.
pub fn derived_labels(d: &Derived) -> [(&'static str, String); 13] {
    [
        ("destination_app", d.destination.app.clone()),
        (
            "destination_canonical_revision",
            d.destination.canonical_revision.clone(),
        ),
        (
            "destination_canonical_service",
            d.destination.canonical_service.clone(),
        ),
        ("destination_cluster", CLUSTER.into()),
        ("destination_principal", d.destination_principal.clone()),
        (
            "destination_service_name",
            d.destination_service_name.clone(),
        ),
        (
            "destination_service_namespace",
            d.destination_service_namespace.clone(),
        ),
        ("destination_version", d.destination.version.clone()),
        ("source_app", d.source.app.clone()),
        (
            "source_canonical_revision",
            d.source.canonical_revision.clone(),
        ),
        (
            "source_canonical_service",
            d.source.canonical_service.clone(),
        ),
        ("source_cluster", CLUSTER.into()),
        ("source_version", d.source.version.clone()),
    ]
}

/// The label text of a series, `name="value",...` without braces.
pub fn label_text(pairs: &[(&'static str, String)]) -> Box<str> {
    let mut out = String::with_capacity(512);
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        escape_into(&mut out, value);
        out.push('"');
    }
    out.into_boxed_str()
}

fn family_header(out: &mut String, name: &str, help: &str, kind: &str) {
    for part in [
        "# HELP ",
        name,
        " ",
        help,
        "\n# TYPE ",
        name,
        " ",
        kind,
        "\n",
    ] {
        out.push_str(part);
    }
}

/// `NAME{LABELS} VALUE`: `open` is `NAME{`, `close` is `} ` (or `,le="0.5"} ` for a bucket).
fn sample(out: &mut String, open: &str, labels: &str, close: &str, value: &str) {
    for part in [open, labels, close, value, "\n"] {
        out.push_str(part);
    }
}

/// The `,le="..."} ` closing each bucket's labels, the bounds formatted as the prometheus
/// crate does, then `+Inf`.
fn le_texts(bounds: &[f64]) -> Vec<String> {
    bounds
        .iter()
        .map(|b| format!(",le=\"{b}\"}} "))
        .chain([",le=\"+Inf\"} ".to_string()])
        .collect()
}

fn histogram<const N: usize>(
    out: &mut String,
    (name, help): (&str, &str),
    series: &[(Arc<Series>, Totals)],
    pick: impl Fn(&Totals) -> &HistogramTotals<N>,
    bounds: &[f64],
    sum: impl Fn(u64) -> String,
) {
    family_header(out, name, help, "histogram");
    let les = le_texts(bounds);
    let (bucket, sum_name, count_name) = (
        format!("{name}_bucket{{"),
        format!("{name}_sum{{"),
        format!("{name}_count{{"),
    );
    let mut n = itoa::Buffer::new();
    for (s, totals) in series {
        let h = pick(totals);
        let mut cumulative = 0;
        for (le, b) in les.iter().zip(h.buckets) {
            cumulative += b;
            sample(out, &bucket, &s.text, le, n.format(cumulative));
        }
        sample(out, &sum_name, &s.text, "} ", &sum(h.sum));
        sample(out, &count_name, &s.text, "} ", n.format(cumulative));
    }
}

/// Istio's request families, in name order; nothing when no request was recorded.
pub fn request_families(series: &[Arc<Series>], out: &mut String) {
    if series.is_empty() {
        return;
    }
    // Read every series once, so the four families agree with each other.
    let series: Vec<(Arc<Series>, Totals)> =
        series.iter().map(|s| (s.clone(), s.totals())).collect();
    // Lines per series: a counter, and buckets, +Inf, sum and count of three histograms.
    let lines = 1 + (DURATION_MS.len() + 3) + 2 * (BYTES.len() + 3);
    out.reserve(
        series
            .iter()
            .map(|(s, _)| lines * (s.text.len() + 64))
            .sum(),
    );
    let whole = |v: u64| itoa::Buffer::new().format(v).to_string();
    histogram(
        out,
        (REQUEST_FAMILIES[0], "Request body sizes in bytes"),
        &series,
        |t| &t.request_bytes,
        &BYTES,
        whole,
    );
    histogram(
        out,
        (REQUEST_FAMILIES[1], "Request duration in milliseconds"),
        &series,
        |t| &t.duration,
        &DURATION_MS,
        // Nanoseconds to milliseconds, formatted as the prometheus crate formats an f64.
        |ns| (ns as f64 / 1e6).to_string(),
    );
    messages(
        out,
        (REQUEST_FAMILIES[2], "gRPC messages the client sent"),
        &series,
        |t| t.request_messages,
    );
    counter(
        out,
        (
            REQUEST_FAMILIES[3],
            "Requests handled, Istio's standard metric",
        ),
        &series,
        |t| t.requests,
    );
    histogram(
        out,
        (REQUEST_FAMILIES[4], "Response body sizes in bytes"),
        &series,
        |t| &t.response_bytes,
        &BYTES,
        whole,
    );
    messages(
        out,
        (REQUEST_FAMILIES[5], "gRPC messages the server sent"),
        &series,
        |t| t.response_messages,
    );
}

/// A counter family with one sample per series.
fn counter<'s>(
    out: &mut String,
    (name, help): (&str, &str),
    series: impl IntoIterator<Item = &'s (Arc<Series>, Totals)>,
    value: impl Fn(&Totals) -> u64,
) {
    family_header(out, name, help, "counter");
    let mut n = itoa::Buffer::new();
    let open = format!("{name}{{");
    for (s, t) in series {
        sample(out, &open, &s.text, "} ", n.format(value(t)));
    }
}

/// Istio's gRPC message counters, for the gRPC requests' series only (none: no family).
fn messages(
    out: &mut String,
    family: (&str, &str),
    series: &[(Arc<Series>, Totals)],
    value: impl Fn(&Totals) -> u64,
) {
    let mut grpc = series
        .iter()
        .filter(|(s, _)| s.labels.protocol == "grpc")
        .peekable();
    if grpc.peek().is_some() {
        counter(out, family, grpc, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        escape_into(&mut out, "a\\b\"c\nd");
        assert_eq!(out, "a\\\\b\\\"c\\nd");
    }

    #[test]
    fn bucket_bounds_read_as_the_prometheus_crate_writes_them() {
        assert_eq!(
            le_texts(&[0.5, 1.0, 10000000.0]),
            [
                ",le=\"0.5\"} ",
                ",le=\"1\"} ",
                ",le=\"10000000\"} ",
                ",le=\"+Inf\"} "
            ]
        );
    }
}
