//! Distributed tracing: each request through meshd is a span. The incoming context comes from
//! W3C `traceparent` (with `tracestate`), B3 single (`b3`) or B3 multi (`x-b3-*`) headers; the
//! upstream request carries meshd's span as parent in the same formats, and an `x-request-id`
//! is generated when missing. Sampled spans are exported in batches, off the request path, as
//! Zipkin v2 JSON or OTLP/HTTP JSON; a slow or dead collector makes spans drop (counted), never
//! delays requests.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use hyper::{HeaderMap, header::HeaderValue};
use serde_json::json;
use tokio::sync::mpsc;

/// Spans waiting for export; beyond this they are dropped.
const QUEUE: usize = 4_096;
const BATCH: usize = 256;
const FLUSH: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Context {
    pub trace_id: String,
    /// The caller's span (meshd's span's parent), if the request carried one.
    pub parent_id: Option<String>,
    pub span_id: String,
    pub sampled: bool,
}

/// `bytes` random bytes as lowercase hex.
fn hex(bytes: usize) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes * 2);
    for _ in 0..bytes {
        let b = fastrand::u8(..);
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

fn valid_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit()) && s.bytes().any(|b| b != b'0')
}

/// Reads the incoming context (W3C first, then B3 single, then B3 multi) and opens meshd's span.
pub fn extract(h: &HeaderMap, sample_rate: f64) -> Context {
    let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok());
    let parsed = get("traceparent")
        .and_then(|tp| {
            let p: Vec<&str> = tp.trim().split('-').collect();
            (p.len() >= 4 && valid_hex(p[1], 32) && valid_hex(p[2], 16)).then(|| {
                (
                    p[1].to_string(),
                    p[2].to_string(),
                    u8::from_str_radix(p[3], 16).is_ok_and(|f| f & 1 == 1),
                )
            })
        })
        .or_else(|| {
            get("b3").and_then(|b3| {
                let p: Vec<&str> = b3.split('-').collect();
                (p.len() >= 2
                    && (valid_hex(p[0], 32) || valid_hex(p[0], 16))
                    && valid_hex(p[1], 16))
                .then(|| {
                    (
                        format!("{:0>32}", p[0]),
                        p[1].to_string(),
                        p.get(2).is_none_or(|s| *s == "1" || *s == "d"),
                    )
                })
            })
        })
        .or_else(|| {
            let (t, s) = (get("x-b3-traceid")?, get("x-b3-spanid")?);
            ((valid_hex(t, 32) || valid_hex(t, 16)) && valid_hex(s, 16)).then(|| {
                (
                    format!("{t:0>32}"),
                    s.to_string(),
                    get("x-b3-sampled").is_none_or(|v| v == "1"),
                )
            })
        });
    match parsed {
        Some((trace_id, parent, sampled)) => Context {
            trace_id,
            parent_id: Some(parent),
            span_id: hex(8),
            sampled,
        },
        None => Context {
            trace_id: hex(16),
            parent_id: None,
            span_id: hex(8),
            sampled: sample_rate >= 1.0 || (sample_rate > 0.0 && fastrand::f64() < sample_rate),
        },
    }
}

/// Writes meshd's span as the parent for the upstream request, in W3C form and in whichever B3
/// form the request used; adds `x-request-id` when missing. Returns the request id.
pub fn inject(h: &mut HeaderMap, c: &Context) -> String {
    let flags = if c.sampled { "01" } else { "00" };
    if let Ok(v) = HeaderValue::from_str(&format!("00-{}-{}-{flags}", c.trace_id, c.span_id)) {
        h.insert("traceparent", v);
    }
    if h.contains_key("b3") {
        let v = format!(
            "{}-{}-{}",
            c.trace_id,
            c.span_id,
            if c.sampled { "1" } else { "0" }
        );
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert("b3", v);
        }
    }
    if h.contains_key("x-b3-traceid") {
        for (k, v) in [
            ("x-b3-spanid", c.span_id.clone()),
            ("x-b3-sampled", if c.sampled { "1" } else { "0" }.into()),
        ] {
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(k, v);
            }
        }
        if let Some(Ok(p)) = c.parent_id.as_ref().map(|p| HeaderValue::from_str(p)) {
            h.insert("x-b3-parentspanid", p);
        }
    }
    match h.get("x-request-id").and_then(|v| v.to_str().ok()) {
        Some(id) => id.to_string(),
        None => {
            let id = format!(
                "{}-{}-4{}-{}-{}",
                hex(4),
                hex(2),
                &hex(2)[1..],
                hex(2),
                hex(6)
            );
            if let Ok(v) = HeaderValue::from_str(&id) {
                h.insert("x-request-id", v);
            }
            id
        }
    }
}

/// A finished span.
#[derive(Clone, Debug)]
pub struct Span {
    pub context: Context,
    pub name: String,
    pub start_unix_us: u64,
    pub duration_us: u64,
    pub tags: Vec<(String, String)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Zipkin,
    Otlp,
}

/// The exporter: a bounded queue and a background task that posts batches.
pub struct Tracer {
    pub sample_rate: f64,
    tx: Option<mpsc::Sender<Span>>,
    pub dropped: AtomicU64,
}

impl Tracer {
    pub fn disabled(sample_rate: f64) -> Tracer {
        Tracer {
            sample_rate,
            tx: None,
            dropped: AtomicU64::new(0),
        }
    }

    /// Exports to `url` (`http://host:port/path`) in `format`; must run inside the runtime.
    pub fn start(url: &str, format: Format, sample_rate: f64) -> Result<Tracer, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url}: only http:// collectors are supported"))?;
        let (authority, path) = rest
            .split_once('/')
            .map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
        let authority = authority.to_string();
        let (tx, mut rx) = mpsc::channel::<Span>(QUEUE);
        tokio::spawn(async move {
            loop {
                let mut batch = Vec::with_capacity(BATCH);
                match tokio::time::timeout(FLUSH, rx.recv()).await {
                    Ok(Some(s)) => batch.push(s),
                    Ok(None) => return,
                    Err(_) => continue,
                }
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(s) => batch.push(s),
                        Err(_) => break,
                    }
                }
                let body = match format {
                    Format::Zipkin => zipkin(&batch),
                    Format::Otlp => otlp(&batch),
                };
                if let Err(e) = post(&authority, &path, body).await {
                    tracing::debug!(error = %e, "span export failed; batch dropped");
                }
            }
        });
        Ok(Tracer {
            sample_rate,
            tx: Some(tx),
            dropped: AtomicU64::new(0),
        })
    }

    pub fn record(&self, span: Span) {
        let Some(tx) = &self.tx else { return };
        if !span.context.sampled {
            return;
        }
        if tx.try_send(span).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn zipkin(batch: &[Span]) -> String {
    let spans: Vec<_> = batch
        .iter()
        .map(|s| {
            let tags: serde_json::Map<String, serde_json::Value> =
                s.tags.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            json!({
                "traceId": s.context.trace_id,
                "id": s.context.span_id,
                "parentId": s.context.parent_id,
                "name": s.name,
                "kind": "CLIENT",
                "timestamp": s.start_unix_us,
                "duration": s.duration_us.max(1),
                "localEndpoint": {"serviceName": "meshd"},
                "tags": tags,
            })
        })
        .collect();
    serde_json::to_string(&spans).expect("json")
}

fn otlp(batch: &[Span]) -> String {
    let spans: Vec<_> = batch
        .iter()
        .map(|s| {
            json!({
                "traceId": s.context.trace_id,
                "spanId": s.context.span_id,
                "parentSpanId": s.context.parent_id.clone().unwrap_or_default(),
                "name": s.name,
                "kind": 3,
                "startTimeUnixNano": (s.start_unix_us * 1000).to_string(),
                "endTimeUnixNano": ((s.start_unix_us + s.duration_us) * 1000).to_string(),
                "attributes": s.tags.iter().map(|(k, v)| json!({"key": k, "value": {"stringValue": v}})).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "meshd"}}]},
        "scopeSpans": [{"scope": {"name": "meshd"}, "spans": spans}]}]})
    .to_string()
}

/// One HTTP/1.1 POST, bounded in time; the answer is read and discarded.
async fn post(authority: &str, path: &str, body: String) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let send = async {
        let mut s = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| e.to_string())?;
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink).await;
        Ok::<(), String>(())
    };
    tokio::time::timeout(Duration::from_secs(5), send)
        .await
        .map_err(|_| "collector timed out".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn w3c_context_is_continued() {
        let h = headers(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )]);
        let c = extract(&h, 0.0);
        assert_eq!(c.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.parent_id.as_deref(), Some("00f067aa0ba902b7"));
        assert!(c.sampled, "the caller's sampling decision is kept");
        let mut out = h.clone();
        let id = inject(&mut out, &c);
        assert_eq!(
            out["traceparent"],
            format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", c.span_id)
        );
        assert_eq!(out["x-request-id"], id.as_str());
    }

    #[test]
    fn b3_single_and_multi() {
        let c = extract(
            &headers(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")]),
            0.0,
        );
        assert_eq!(
            (c.trace_id.as_str(), c.parent_id.as_deref()),
            ("80f198ee56343ba864fe8b2a57d3eff7", Some("e457b5a2e4d86bd1"))
        );
        let h = headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "1"),
        ]);
        let c = extract(&h, 0.0);
        assert_eq!(c.trace_id, "0000000000000000463ac35c9f6413ad");
        let mut out = h.clone();
        inject(&mut out, &c);
        assert_eq!(out["x-b3-spanid"], c.span_id.as_str());
        assert_eq!(out["x-b3-parentspanid"], "a2fb4a1d1a96d312");
    }

    #[test]
    fn new_traces_follow_the_sample_rate_and_keep_request_ids() {
        assert!(extract(&HeaderMap::new(), 1.0).sampled);
        assert!(!extract(&HeaderMap::new(), 0.0).sampled);
        assert!(
            extract(&headers(&[("traceparent", "garbage")]), 1.0)
                .parent_id
                .is_none()
        );
        let mut h = headers(&[("x-request-id", "abc")]);
        assert_eq!(inject(&mut h, &extract(&HeaderMap::new(), 0.0)), "abc");
    }
}
