//! Distributed tracing: each request through meshd is a span. The incoming context comes from
//! W3C `traceparent` (with `tracestate`), B3 single (`b3`) or B3 multi (`x-b3-*`) headers; the
//! upstream request carries meshd's span as parent in the same formats, and an `x-request-id`
//! is generated when missing. Sampled spans are exported in batches, off the request path, as
//! Zipkin v2 JSON or OTLP/HTTP JSON, to one collector of each or both; a slow, dead or refusing
//! collector makes spans drop (counted), never delays requests.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hyper::{
    HeaderMap,
    header::{HeaderName, HeaderValue},
};
use serde_json::json;
use tokio::sync::mpsc;

/// Spans waiting for export; beyond this they are dropped.
const QUEUE: usize = 4_096;
const BATCH: usize = 256;
/// A span waits at most this long for others to share its export request.
const FLUSH: Duration = Duration::from_secs(1);

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const B3: HeaderName = HeaderName::from_static("b3");
const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Every byte's two lowercase hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [DIGITS[i >> 4], DIGITS[i & 15]];
        i += 1;
    }
    t
};

/// An id of `N` hex digits, kept inline: generated in lowercase, or as the caller sent it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hex<const N: usize>([u8; N]);

/// A trace id: 32 hex digits (B3's 16-digit ids are left-padded with zeros).
pub type TraceId = Hex<32>;
/// A span id: 16 hex digits.
pub type SpanId = Hex<16>;

impl<const N: usize> Hex<N> {
    /// A random id that is not all zeros: each random byte becomes two digits.
    fn random() -> Hex<N> {
        const {
            assert!(
                N <= 32 && N.is_multiple_of(2),
                "whole bytes of one u128 of randomness"
            )
        };
        loop {
            let random = fastrand::u128(..).to_le_bytes();
            let bytes = &random[..N / 2];
            if bytes.iter().all(|b| *b == 0) {
                continue;
            }
            let mut out = [0u8; N];
            for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
                pair.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
            }
            return Hex(out);
        }
    }

    /// A valid id of `N` digits, or of fewer, left-padded with zeros.
    fn padded(s: &str) -> Hex<N> {
        let mut out = [b'0'; N];
        out[N - s.len()..].copy_from_slice(s.as_bytes());
        Hex(out)
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits are ASCII")
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl<const N: usize> fmt::Display for Hex<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<const N: usize> fmt::Debug for Hex<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl<const N: usize> PartialEq<&str> for Hex<N> {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Context {
    pub trace_id: TraceId,
    /// The caller's span (meshd's span's parent), if the request carried one.
    pub parent_id: Option<SpanId>,
    pub span_id: SpanId,
    pub sampled: bool,
    /// The caller's B3 trace id had 64 bits: B3 headers and Zipkin keep it so (W3C and OTLP
    /// need 128, zero-padded).
    pub short_trace_id: bool,
    /// The caller asked for B3 debug (`b3: ...-d`, `x-b3-flags: 1`), which goes on as debug.
    pub debug: bool,
}

impl Context {
    /// The trace id as B3 and Zipkin write it: 16 hex digits if the caller sent 16.
    pub fn b3_trace_id(&self) -> &str {
        let id = self.trace_id.as_str();
        if self.short_trace_id { &id[16..] } else { id }
    }
}

fn valid_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit()) && s.bytes().any(|b| b != b'0')
}

/// Lowercase hex digits only, as W3C trace context requires of every field.
fn lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// B3 ids: a trace id of 32 or 16 hex digits and a span id of 16, not all zero.
fn b3_ids(trace: &str, span: &str) -> Option<(TraceId, SpanId)> {
    let valid = (valid_hex(trace, 32) || valid_hex(trace, 16)) && valid_hex(span, 16);
    valid.then(|| (Hex::padded(trace), Hex::padded(span)))
}

/// A B3 sampling state: `1` (or `true`, as older tracers send it) and `d` (debug) sample,
/// `0` and `false` do not; anything else defers.
fn b3_decision(v: &str) -> Option<bool> {
    match v.trim() {
        "1" | "d" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// The tracing headers a request carries (the first value of each), found in one pass: a
/// lookup by a name that is not a standard header hashes the name, every time.
#[derive(Default)]
struct Present<'h> {
    traceparent: Option<&'h HeaderValue>,
    b3: Option<&'h HeaderValue>,
    b3_trace_id: Option<&'h HeaderValue>,
    b3_span_id: Option<&'h HeaderValue>,
    b3_sampled: Option<&'h HeaderValue>,
    b3_flags: Option<&'h HeaderValue>,
    request_id: Option<&'h HeaderValue>,
    tracestate: Option<&'h HeaderValue>,
}

impl<'h> Present<'h> {
    fn scan(h: &'h HeaderMap) -> Present<'h> {
        let mut p = Present::default();
        for (name, value) in h {
            let slot = match name.as_str() {
                "traceparent" => &mut p.traceparent,
                "b3" => &mut p.b3,
                "x-b3-traceid" => &mut p.b3_trace_id,
                "x-b3-spanid" => &mut p.b3_span_id,
                "x-b3-sampled" => &mut p.b3_sampled,
                "x-b3-flags" => &mut p.b3_flags,
                "x-request-id" => &mut p.request_id,
                "tracestate" => &mut p.tracestate,
                _ => continue,
            };
            slot.get_or_insert(value);
        }
        p
    }

    /// What `inject` keeps from the request: the B3 forms it used, and its own x-request-id;
    /// its `tracestate` only with the `traceparent` it belongs to (`continued_w3c`), as W3C
    /// trace context drops the state of a trace that is not continued.
    fn forms(&self, continued_w3c: bool) -> Forms {
        Forms {
            stale_tracestate: self.tracestate.is_some() && !continued_w3c,
            b3: self.b3.is_some(),
            // Any of the multi-header form: ids, or a sampling decision alone.
            b3_multi: self.b3_trace_id.is_some()
                || self.b3_span_id.is_some()
                || self.b3_sampled.is_some()
                || self.b3_flags.is_some(),
            request_id: self.request_id.filter(|v| v.to_str().is_ok()).cloned(),
        }
    }
}

struct Forms {
    stale_tracestate: bool,
    b3: bool,
    b3_multi: bool,
    request_id: Option<HeaderValue>,
}

/// Reads the incoming context and opens meshd's span, then writes it back for the upstream
/// request (see `extract` and `inject`), with one pass over the headers.
pub fn propagate(h: &mut HeaderMap, sample_rate: f64) -> (Context, RequestId) {
    let (context, forms) = {
        let present = Present::scan(h);
        let (context, continued_w3c) = opened(&present, sample_rate);
        (context, present.forms(continued_w3c))
    };
    let id = write(h, &context, forms);
    (context, id)
}

/// Reads the incoming context (W3C first, then B3 single, then B3 multi) and opens meshd's span.
#[cfg(test)]
fn extract(h: &HeaderMap, sample_rate: f64) -> Context {
    opened(&Present::scan(h), sample_rate).0
}

/// What a caller's trace headers say.
#[derive(Default)]
struct Caller {
    /// The caller's trace and span, when it sent them.
    ids: Option<(TraceId, SpanId)>,
    /// Its sampling decision, when it made one.
    decision: Option<bool>,
    /// Its trace id had 64 bits (B3).
    short_trace_id: bool,
    /// It asked for debug (B3).
    debug: bool,
}

impl Caller {
    /// A decision without ids.
    fn deciding(decision: bool, debug: bool) -> Caller {
        Caller {
            decision: Some(decision),
            debug,
            ..Caller::default()
        }
    }
}

/// meshd's span, and whether it continues the caller's W3C `traceparent`.
fn opened(present: &Present<'_>, sample_rate: f64) -> (Context, bool) {
    fn get(v: Option<&HeaderValue>) -> Option<&str> {
        v.and_then(|v| v.to_str().ok())
    }
    // W3C: `version-trace-span-flags`, all lowercase hex; version ff is invalid, and version
    // 00 has exactly four fields (a later version may add more).
    let w3c = || -> Option<Caller> {
        let tp = get(present.traceparent)?.trim();
        let mut p = tp.split('-');
        let (v, t, s, f) = (p.next()?, p.next()?, p.next()?, p.next()?);
        let fields = v.len() == 2 && v != "ff" && (v != "00" || p.next().is_none());
        let ids = valid_hex(t, 32) && valid_hex(s, 16) && f.len() == 2;
        (fields && ids && [v, t, s, f].iter().all(|x| lower_hex(x))).then(|| {
            let sampled = u8::from_str_radix(f, 16).is_ok_and(|f| f & 1 == 1);
            Caller {
                ids: Some((Hex::padded(t), Hex::padded(s))),
                decision: Some(sampled),
                ..Caller::default()
            }
        })
    };
    // B3 single: `trace-span[-state[-parent]]`, or the state alone (`0`: do not sample).
    let b3_single = || -> Option<Caller> {
        let b3 = get(present.b3)?.trim();
        if !b3.contains('-') {
            return b3_decision(b3).map(|d| Caller::deciding(d, b3 == "d"));
        }
        let mut p = b3.split('-');
        let trace = p.next()?;
        let ids = b3_ids(trace, p.next()?)?;
        let flag = p.next();
        let state = flag.map_or(Some(true), b3_decision);
        Some(Caller {
            ids: Some(ids),
            decision: state,
            short_trace_id: trace.len() == 16,
            debug: flag == Some("d"),
        })
    };
    // B3 multi: the ids, `x-b3-sampled`, and `x-b3-flags: 1` (debug, which samples); either
    // header alone is a decision without ids.
    let b3_multi = || -> Option<Caller> {
        let debug = get(present.b3_flags).is_some_and(|f| f.trim() == "1");
        let state = get(present.b3_sampled).map(b3_decision);
        let decision = if debug { Some(true) } else { state.flatten() };
        let trace = get(present.b3_trace_id).map(str::trim);
        let ids = (trace.zip(get(present.b3_span_id))).and_then(|(t, s)| b3_ids(t, s));
        let short = trace.is_some_and(|t| t.len() == 16);
        match ids {
            Some(ids) => Some(Caller {
                ids: Some(ids),
                decision: decision.or(state.is_none().then_some(true)),
                short_trace_id: short,
                debug,
            }),
            None => decision.map(|d| Caller::deciding(d, debug)),
        }
    };
    let from_w3c = w3c();
    let continued_w3c = from_w3c.is_some();
    let Caller {
        ids,
        decision,
        short_trace_id,
        debug,
    } = from_w3c
        .or_else(b3_single)
        .or_else(b3_multi)
        .unwrap_or_default();
    let sampled = decision.unwrap_or_else(|| {
        sample_rate >= 1.0 || (sample_rate > 0.0 && fastrand::f64() < sample_rate)
    });
    let context = match ids {
        Some((trace_id, parent)) => Context {
            trace_id,
            parent_id: Some(parent),
            span_id: Hex::random(),
            sampled,
            short_trace_id,
            debug,
        },
        None => Context {
            trace_id: Hex::random(),
            parent_id: None,
            span_id: Hex::random(),
            sampled,
            short_trace_id: false,
            debug,
        },
    };
    (context, continued_w3c)
}

/// A request's `x-request-id`: the caller's, or one meshd generated (a random UUID v4 form).
#[derive(Clone, Debug)]
pub enum RequestId {
    Received(HeaderValue),
    Generated([u8; 36]),
}

impl RequestId {
    fn generate() -> RequestId {
        // 8-4-4-4-12 hex digits, the third group starting with the version, 4, and the fourth
        // with the RFC 9562 variant (binary 10xx: 8, 9, a or b).
        let digits = Hex::<32>::random().0;
        let mut out = [b'-'; 36];
        let mut d = digits.iter();
        for (i, o) in out.iter_mut().enumerate() {
            match i {
                8 | 13 | 18 | 23 => {}
                14 => *o = b'4',
                19 => {
                    let n = char::from(*d.next().expect("32 digits"))
                        .to_digit(16)
                        .unwrap_or(0);
                    *o = b"89ab"[(n & 3) as usize];
                }
                _ => *o = *d.next().expect("32 digits"),
            }
        }
        RequestId::Generated(out)
    }

    pub fn as_str(&self) -> &str {
        match self {
            RequestId::Received(v) => v.to_str().unwrap_or_default(),
            RequestId::Generated(b) => std::str::from_utf8(b).expect("ASCII"),
        }
    }
}

/// `a-b-c` as a header value, built without allocating (the value itself aside).
fn joined(parts: &[&[u8]]) -> HeaderValue {
    let mut buf = [0u8; 64];
    let mut n = 0;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            buf[n] = b'-';
            n += 1;
        }
        buf[n..n + p.len()].copy_from_slice(p);
        n += p.len();
    }
    HeaderValue::from_bytes(&buf[..n]).expect("hex digits and dashes")
}

/// Writes meshd's span as the parent for the upstream request, in W3C form and in whichever B3
/// form the request used; adds `x-request-id` when missing. Returns the request id.
#[cfg(test)]
fn inject(h: &mut HeaderMap, c: &Context) -> RequestId {
    let forms = Present::scan(h).forms(true);
    write(h, c, forms)
}

fn write(h: &mut HeaderMap, c: &Context, forms: Forms) -> RequestId {
    let (w3c_flags, b3_flag): (&[u8], &'static str) = if c.sampled {
        (b"01", "1")
    } else {
        (b"00", "0")
    };
    let (trace, span) = (c.trace_id.as_bytes(), c.span_id.as_bytes());
    h.insert(TRACEPARENT, joined(&[b"00", trace, span, w3c_flags]));
    if forms.stale_tracestate {
        h.remove(TRACESTATE);
    }
    // B3 keeps a 64-bit trace id as the caller sent it, and a debug request as debug.
    let b3_trace = c.b3_trace_id().as_bytes();
    let b3_state = if c.debug { "d" } else { b3_flag };
    if forms.b3 {
        h.insert(B3, joined(&[b3_trace, span, b3_state.as_bytes()]));
    }
    if forms.b3_multi {
        // The whole context, so the headers agree with each other and with `traceparent`,
        // whichever form the caller's context came from.
        h.insert(B3_TRACE_ID, joined(&[b3_trace]));
        h.insert(B3_SPAN_ID, joined(&[span]));
        h.insert(B3_SAMPLED, HeaderValue::from_static(b3_flag));
        match &c.parent_id {
            Some(p) => h.insert(B3_PARENT_SPAN_ID, joined(&[p.as_bytes()])),
            None => h.remove(B3_PARENT_SPAN_ID),
        };
    }
    match forms.request_id {
        Some(v) => RequestId::Received(v),
        None => {
            let id = RequestId::generate();
            if let RequestId::Generated(b) = &id {
                h.insert(
                    REQUEST_ID,
                    HeaderValue::from_bytes(b).expect("hex digits and dashes"),
                );
            }
            id
        }
    }
}

/// A finished span.
#[derive(Clone, Debug)]
pub struct Span {
    pub context: Context,
    /// The service the span is exported under: the source workload's, as Istio names it.
    pub service: String,
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

/// The exporters: per collector, a bounded queue and a background task that posts batches.
pub struct Tracer {
    pub sample_rate: f64,
    exporters: Vec<Exporter>,
}

/// One collector's queue, and the spans it lost.
struct Exporter {
    url: String,
    format: Format,
    tx: mpsc::Sender<Span>,
    /// Spans lost: a full queue, or a batch the collector did not take.
    dropped: Arc<AtomicU64>,
}

impl Exporter {
    fn send(&self, span: Span) {
        if self.tx.try_send(span).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A collector URL's authority and path; why it is not one meshd can post to, if not.
pub fn collector(url: &str) -> Result<(String, String), String> {
    let rest = (url.strip_prefix("http://"))
        .ok_or("only http:// collectors are supported (http://host:port/path)")?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    if authority.is_empty() {
        return Err("the URL names no host (http://host:port/path)".into());
    }
    Ok((authority.to_string(), path))
}

impl Tracer {
    pub fn disabled(sample_rate: f64) -> Tracer {
        Tracer {
            sample_rate,
            exporters: Vec::new(),
        }
    }

    /// Each collector's URL and format, and the spans it lost so far.
    pub fn dropped(&self) -> impl Iterator<Item = (&str, &'static str, u64)> {
        (self.exporters.iter()).map(|e| {
            let format = match e.format {
                Format::Zipkin => "zipkin",
                Format::Otlp => "otlp",
            };
            (e.url.as_str(), format, e.dropped.load(Ordering::Relaxed))
        })
    }

    /// Exports every sampled span to each collector (`http://host:port/path`) in its format;
    /// must run inside the runtime.
    pub fn start(collectors: &[(&str, Format)], sample_rate: f64) -> Result<Tracer, String> {
        let mut tracer = Tracer::disabled(sample_rate);
        for (url, format) in collectors {
            let (authority, path) = collector(url).map_err(|reason| format!("{url}: {reason}"))?;
            let (tx, rx) = mpsc::channel::<Span>(QUEUE);
            let dropped = Arc::new(AtomicU64::new(0));
            let export = Export {
                url: url.to_string(),
                authority,
                path,
                format: *format,
                dropped: dropped.clone(),
            };
            tokio::spawn(export.run(rx));
            tracer.exporters.push(Exporter {
                url: url.to_string(),
                format: *format,
                tx,
                dropped,
            });
        }
        Ok(tracer)
    }

    /// Whether a request's span will be exported: spans are only built when it will.
    pub fn wants(&self, c: &Context) -> bool {
        !self.exporters.is_empty() && c.sampled
    }

    pub fn record(&self, span: Span) {
        if !span.context.sampled {
            return;
        }
        let Some((last, others)) = self.exporters.split_last() else {
            return;
        };
        for e in others {
            e.send(span.clone());
        }
        last.send(span);
    }
}

/// One collector's export task.
struct Export {
    url: String,
    authority: String,
    path: String,
    format: Format,
    dropped: Arc<AtomicU64>,
}

impl Export {
    async fn run(self, mut rx: mpsc::Receiver<Span>) {
        // Warned once when exports start failing, and once when they work again, so a dead
        // collector does not flood the log.
        let mut failing = false;
        // A batch starts with a span and is sent when full or FLUSH later, so a steady trickle
        // of sampled spans makes one request a second, not one per span.
        while let Some(first) = rx.recv().await {
            let mut batch = Vec::with_capacity(BATCH);
            batch.push(first);
            let deadline = tokio::time::sleep(FLUSH);
            tokio::pin!(deadline);
            while batch.len() < BATCH {
                tokio::select! {
                    biased;
                    s = rx.recv() => match s {
                        Some(s) => batch.push(s),
                        None => break,
                    },
                    _ = &mut deadline => break,
                }
            }
            let body = match self.format {
                Format::Zipkin => zipkin(&batch),
                Format::Otlp => otlp(&batch),
            };
            match post(&self.authority, &self.path, body).await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!(collector = %self.url, "span export works again");
                }
                Ok(()) => {}
                Err(e) => {
                    self.dropped
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    if !failing {
                        failing = true;
                        tracing::warn!(collector = %self.url, error = %e,
                            "span export failed; its spans are dropped (counted in meshd_trace_spans_dropped_total) until the collector takes them");
                    }
                }
            }
        }
    }
}

fn zipkin(batch: &[Span]) -> String {
    let spans: Vec<_> = batch
        .iter()
        .map(|s| {
            let tags: serde_json::Map<String, serde_json::Value> =
                s.tags.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            let mut span = json!({
                "traceId": s.context.b3_trace_id(),
                "id": s.context.span_id.as_str(),
                "parentId": s.context.parent_id.as_ref().map(Hex::as_str),
                "name": s.name,
                "kind": "CLIENT",
                "timestamp": s.start_unix_us,
                "duration": s.duration_us.max(1),
                "localEndpoint": {"serviceName": s.service},
                "tags": tags,
            });
            if s.context.debug {
                span["debug"] = json!(true);
            }
            span
        })
        .collect();
    serde_json::to_string(&spans).expect("json")
}

fn otlp(batch: &[Span]) -> String {
    // One resource per service, as OTLP groups spans by what emitted them.
    let mut by_service: std::collections::BTreeMap<&str, Vec<serde_json::Value>> =
        std::collections::BTreeMap::new();
    for s in batch {
        let attributes: Vec<_> = (s.tags.iter())
            .map(|(k, v)| {
                // Status codes are integers in OpenTelemetry's conventions (64-bit integers
                // are strings in OTLP's JSON).
                let value = match (k.as_str(), v.parse::<i64>()) {
                    ("http.status_code" | "grpc.status_code", Ok(n)) => {
                        json!({"intValue": n.to_string()})
                    }
                    _ => json!({"stringValue": v}),
                };
                json!({"key": k, "value": value})
            })
            .collect();
        let mut span = json!({
            "traceId": s.context.trace_id.as_str(),
            "spanId": s.context.span_id.as_str(),
            "parentSpanId": s.context.parent_id.as_ref().map_or("", Hex::as_str),
            "name": s.name,
            "kind": 3,
            "startTimeUnixNano": (s.start_unix_us * 1000).to_string(),
            "endTimeUnixNano": ((s.start_unix_us + s.duration_us) * 1000).to_string(),
            "attributes": attributes,
        });
        if s.tags.iter().any(|(k, v)| k == "error" && v == "true") {
            // STATUS_CODE_ERROR.
            span["status"] = json!({"code": 2});
        }
        by_service.entry(&s.service).or_default().push(span);
    }
    let resources: Vec<_> = (by_service.into_iter())
        .map(|(service, spans)| {
            json!({"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
                "scopeSpans": [{"scope": {"name": "meshd"}, "spans": spans}]})
        })
        .collect();
    json!({ "resourceSpans": resources }).to_string()
}

/// One HTTP/1.1 POST, bounded in time: an answer other than 2xx is a failure.
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
        // The status line decides: a collector that keeps the connection open despite
        // `Connection: close` is not waited for.
        let mut answer = Vec::new();
        let mut chunk = [0u8; 512];
        while !answer.contains(&b'\n') {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
        accepted(&answer)
    };
    tokio::time::timeout(Duration::from_secs(5), send)
        .await
        .map_err(|_| "collector timed out".to_string())?
}

/// Whether a collector's answer says it took the spans (a 2xx status).
fn accepted(answer: &[u8]) -> Result<(), String> {
    let line = answer.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let line = line.trim_end();
    match line.split(' ').nth(1) {
        Some(code) if code.len() == 3 && code.starts_with('2') => Ok(()),
        Some(_) if line.starts_with("HTTP/") => Err(format!("collector answered {line:?}")),
        _ if answer.is_empty() => Err("collector closed the connection without answering".into()),
        _ => Err("collector's answer is not HTTP".into()),
    }
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

    fn span(service: &str, tags: &[(&str, &str)]) -> Span {
        Span {
            context: extract(&HeaderMap::new(), 1.0),
            service: service.into(),
            name: "reviews:9080/*".into(),
            start_unix_us: 1_000_000,
            duration_us: 5,
            tags: (tags.iter())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// A loopback collector that answers `status` to one POST and keeps the connection open.
    async fn collector_keeping_the_connection(status: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                seen.extend_from_slice(&buf[..n]);
            }
            let answer = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
            s.write_all(answer.as_bytes()).await.unwrap();
            // Held open, as a keep-alive server that ignores `Connection: close`.
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(s);
        });
        addr
    }

    #[tokio::test]
    async fn a_collector_keeping_its_connection_open_is_judged_by_its_status_line() {
        let ok = collector_keeping_the_connection("202 Accepted").await;
        // Not "collector timed out": the status line is read, not the connection's end.
        assert_eq!(post(&ok, "/api/v2/spans", "[]".into()).await, Ok(()));
        let refused = collector_keeping_the_connection("400 Bad Request").await;
        assert_eq!(
            post(&refused, "/api/v2/spans", "[]".into()).await,
            Err("collector answered \"HTTP/1.1 400 Bad Request\"".to_string())
        );
    }

    #[test]
    fn otlp_groups_spans_by_service_with_integer_codes_and_error_status() {
        let batch = [
            span("productpage.default", &[("http.status_code", "200")]),
            span(
                "reviews.default",
                &[("http.status_code", "503"), ("error", "true")],
            ),
            span(
                "productpage.default",
                &[("grpc.status_code", "14"), ("error", "true")],
            ),
        ];
        let v: serde_json::Value = serde_json::from_str(&otlp(&batch)).unwrap();
        let resources = v["resourceSpans"].as_array().unwrap();
        let name =
            |r: &serde_json::Value| r["resource"]["attributes"][0]["value"]["stringValue"].clone();
        assert_eq!(resources.len(), 2);
        assert_eq!(name(&resources[0]), "productpage.default");
        assert_eq!(name(&resources[1]), "reviews.default");
        let spans = resources[0]["scopeSpans"][0]["spans"].as_array().unwrap();
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0]["attributes"][0]["value"]["intValue"], "200");
        assert!(spans[0].get("status").is_none(), "unset for a success");
        assert_eq!(spans[1]["attributes"][0]["value"]["intValue"], "14");
        assert_eq!(spans[1]["status"]["code"], 2);
        let z: serde_json::Value = serde_json::from_str(&zipkin(&batch)).unwrap();
        assert_eq!(z[1]["localEndpoint"]["serviceName"], "reviews.default");
    }

    #[test]
    fn only_a_2xx_answer_means_the_collector_took_the_spans() {
        assert!(accepted(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n").is_ok());
        assert!(accepted(b"HTTP/1.1 200 OK\r\n\r\n").is_ok());
        let refused = accepted(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").unwrap_err();
        assert_eq!(
            refused,
            r#"collector answered "HTTP/1.1 503 Service Unavailable""#
        );
        assert!(accepted(b"HTTP/1.1 404 Not Found\r\n\r\n").is_err());
        assert!(accepted(b"").unwrap_err().contains("without answering"));
        assert!(
            accepted(b"SSH-2.0-OpenSSH\r\n")
                .unwrap_err()
                .contains("not HTTP")
        );
    }

    #[test]
    fn w3c_context_is_continued() {
        let h = headers(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )]);
        let c = extract(&h, 0.0);
        assert_eq!(c.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.parent_id.unwrap(), "00f067aa0ba902b7");
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
    fn propagate_continues_the_context_and_writes_it_back() {
        let mut h = headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-request-id", "abc"),
        ]);
        let (c, id) = propagate(&mut h, 0.0);
        assert_eq!(c.trace_id, "0000000000000000463ac35c9f6413ad");
        assert_eq!(c.parent_id.unwrap(), "a2fb4a1d1a96d312");
        assert_eq!(id.as_str(), "abc");
        assert_eq!(h["x-b3-spanid"], c.span_id.as_str());
        assert_eq!(h["x-b3-parentspanid"], "a2fb4a1d1a96d312");
        assert_eq!(
            h["x-b3-traceid"], "463ac35c9f6413ad",
            "64 bits stay 64 in B3"
        );
        assert_eq!(
            h["traceparent"],
            format!("00-{}-{}-01", c.trace_id, c.span_id)
        );
    }

    #[test]
    fn b3_debug_and_64_bit_ids_go_on_as_sent() {
        let mut h = headers(&[("b3", "463ac35c9f6413ad-a2fb4a1d1a96d312-d")]);
        let (c, _) = propagate(&mut h, 0.0);
        assert!(c.sampled && c.debug && c.short_trace_id);
        assert_eq!(h["b3"], format!("463ac35c9f6413ad-{}-d", c.span_id));
        let span = Span {
            context: c,
            service: "productpage.default".into(),
            name: "n".into(),
            start_unix_us: 1,
            duration_us: 1,
            tags: Vec::new(),
        };
        let z: serde_json::Value = serde_json::from_str(&zipkin(&[span])).unwrap();
        assert_eq!(z[0]["traceId"], "463ac35c9f6413ad");
        assert_eq!(z[0]["debug"], true);
        // A 128-bit id and no debug: as before.
        let mut h = headers(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")]);
        let (c, _) = propagate(&mut h, 0.0);
        assert!(!c.debug && !c.short_trace_id);
        assert_eq!(
            h["b3"],
            format!("80f198ee56343ba864fe8b2a57d3eff7-{}-1", c.span_id)
        );
    }

    #[test]
    fn tracestate_goes_on_only_with_the_traceparent_it_belongs_to() {
        let state = ("tracestate", "congo=t61rcWkgMzE");
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut h = headers(&[("traceparent", valid), state]);
        propagate(&mut h, 0.0);
        assert_eq!(h["tracestate"], "congo=t61rcWkgMzE", "the trace continues");
        // Uppercase hex: W3C calls it invalid, so meshd starts a trace of its own.
        let invalid = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01";
        let mut h = headers(&[("traceparent", invalid), state]);
        let (c, _) = propagate(&mut h, 0.0);
        assert_ne!(c.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(
            h.get("tracestate").is_none(),
            "a new trace has no old state"
        );
        // A B3 context continued with a stray tracestate: not W3C's, dropped too.
        let mut h = headers(&[
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
            state,
        ]);
        propagate(&mut h, 0.0);
        assert!(h.get("tracestate").is_none());
    }

    #[test]
    fn b3_single_and_multi() {
        let c = extract(
            &headers(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")]),
            0.0,
        );
        assert_eq!(
            (c.trace_id.as_str(), c.parent_id.unwrap().as_str()),
            ("80f198ee56343ba864fe8b2a57d3eff7", "e457b5a2e4d86bd1")
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
    fn generated_request_ids_are_uuid_v4() {
        for _ in 0..64 {
            let id = RequestId::generate();
            let s = id.as_str();
            let groups: Vec<&str> = s.split('-').collect();
            assert_eq!(
                groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12]
            );
            assert!(groups[2].starts_with('4'), "{s}");
            assert!(matches!(&groups[3][..1], "8" | "9" | "a" | "b"), "{s}");
        }
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
        assert_eq!(
            inject(&mut h, &extract(&HeaderMap::new(), 0.0)).as_str(),
            "abc"
        );
    }

    #[test]
    fn generated_ids_are_lowercase_hex_and_uuid_shaped() {
        let c = extract(&HeaderMap::new(), 0.0);
        for id in [c.trace_id.as_str(), c.span_id.as_str()] {
            assert!(valid_hex(id, id.len()), "{id}");
            assert!(!id.bytes().any(|b| b.is_ascii_uppercase()), "{id}");
        }
        let mut h = HeaderMap::new();
        let id = inject(&mut h, &c);
        let groups: Vec<usize> = id.as_str().split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{}", id.as_str());
        assert!(id.as_str()[14..].starts_with('4'), "version 4");
        assert_eq!(h["x-request-id"], id.as_str());
        assert_eq!(
            h["traceparent"],
            format!("00-{}-{}-00", c.trace_id, c.span_id)
        );
    }

    #[test]
    fn a_callers_decision_not_to_sample_is_kept_in_every_form() {
        let not = |pairs: &[(&'static str, &str)]| {
            let c = extract(&headers(pairs), 1.0);
            assert!(!c.sampled, "{pairs:?}");
            c
        };
        // A decision without ids opens a new trace, unsampled.
        assert!(not(&[("b3", "0")]).parent_id.is_none());
        assert!(not(&[("x-b3-sampled", "0")]).parent_id.is_none());
        not(&[("x-b3-sampled", "false")]);
        not(&[
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "0"),
        ]);
        not(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        )]);
        // And one to sample, with ids or without.
        let yes = |pairs: &[(&'static str, &str)]| assert!(extract(&headers(pairs), 0.0).sampled);
        yes(&[("b3", "1")]);
        yes(&[("x-b3-sampled", "true")]);
        yes(&[
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-flags", "1"),
        ]);
        // The upstream request carries the decision.
        let mut h = headers(&[("b3", "0")]);
        let (c, _) = propagate(&mut h, 1.0);
        assert_eq!(
            h["traceparent"],
            format!("00-{}-{}-00", c.trace_id, c.span_id)
        );
    }

    #[test]
    fn b3_multi_headers_go_upstream_whole_and_agreeing() {
        // W3C and B3 of different traces: the W3C context wins, and B3 is rewritten to it.
        let mut h = headers(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "0"),
        ]);
        let (c, _) = propagate(&mut h, 0.0);
        assert_eq!(h["x-b3-traceid"], c.trace_id.as_str());
        assert_eq!(h["x-b3-spanid"], c.span_id.as_str());
        assert_eq!(h["x-b3-sampled"], "1");
        // Debug without ids: sampled, and said so upstream.
        let mut h = headers(&[("x-b3-flags", "1"), ("x-b3-sampled", "0")]);
        let (c, _) = propagate(&mut h, 0.0);
        assert!(c.sampled);
        assert_eq!(h["x-b3-sampled"], "1");
        assert_eq!(h["x-b3-traceid"], c.trace_id.as_str());
        assert!(h.get("x-b3-parentspanid").is_none());
    }

    #[test]
    fn a_traceparent_w3c_calls_invalid_is_ignored() {
        for tp in [
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        ] {
            let c = extract(&headers(&[("traceparent", tp)]), 0.0);
            assert!(c.parent_id.is_none(), "{tp}");
            assert!(!c.sampled, "{tp}");
        }
        // A later version may add fields.
        let c = extract(
            &headers(&[(
                "traceparent",
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later",
            )]),
            0.0,
        );
        assert_eq!(c.parent_id.unwrap(), "00f067aa0ba902b7");
    }

    #[test]
    fn b3_single_without_a_flag_is_sampled_and_keeps_its_form() {
        let h = headers(&[("b3", "463ac35c9f6413ad-a2fb4a1d1a96d312")]);
        let c = extract(&h, 0.0);
        assert!(c.sampled);
        assert_eq!(c.trace_id, "0000000000000000463ac35c9f6413ad");
        let mut out = h.clone();
        inject(&mut out, &c);
        assert_eq!(out["b3"], format!("463ac35c9f6413ad-{}-1", c.span_id));
    }
}
