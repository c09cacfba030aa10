//! The access log: one JSON line per request and per L4 connection, written by a background
//! thread to stdout or a file. Lines are sampled, except errors (5xx, or any response flag),
//! which are always written. A request serialises its line into a shared buffer (no allocation,
//! no system call); the writer thread writes the buffer out every 100 ms, or as soon as it
//! holds 64 KiB. A full buffer drops lines and counts them, never delaying traffic.

use std::{
    borrow::Cow,
    cell::RefCell,
    io::Write,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::Serialize;

/// How long a line may wait for the writer.
const FLUSH: Duration = Duration::from_millis(100);
/// A buffer this full wakes the writer before its time.
const WAKE_AT: usize = 64 * 1024;
/// Bytes waiting for the writer; lines beyond this are dropped.
const MAX_PENDING: usize = 8 * 1024 * 1024;

/// One access-log line. Fields borrow from the request where they can. A field Envoy's
/// command operator has no value for (no route name, no User-Agent, a TCP line's method) is
/// `null`, as in Istio's JSON access log, not an empty string.
#[derive(Debug, Default, Serialize)]
pub struct Entry<'a> {
    pub start_time: Cow<'a, str>,
    #[serde(serialize_with = "empty_as_null")]
    pub method: Cow<'a, str>,
    #[serde(serialize_with = "empty_as_null")]
    pub path: Cow<'a, str>,
    pub protocol: Cow<'a, str>,
    pub response_code: u16,
    pub response_flags: Cow<'a, str>,
    /// `duration` (whole milliseconds, Istio's field) and `duration_ms` (to the microsecond).
    #[serde(flatten)]
    pub took: Took,
    /// Envoy's `x-envoy-upstream-service-time`: from the request's end to the upstream's
    /// answer, in milliseconds (null when no upstream answered after the request ended).
    pub upstream_service_time: Option<u64>,
    /// The `name` of the VirtualService route that took the request (empty when none had one).
    #[serde(serialize_with = "empty_as_null")]
    pub route_name: Cow<'a, str>,
    /// Istio's cluster name: `outbound|9080|v1|reviews.default.svc.cluster.local`, or
    /// `PassthroughCluster` for the address the client dialled (see [`outbound_cluster`]).
    #[serde(serialize_with = "empty_as_null")]
    pub upstream_cluster: Cow<'a, str>,
    #[serde(serialize_with = "empty_as_null")]
    pub upstream_host: Cow<'a, str>,
    /// The request's Host or `:authority`, `User-Agent` and `X-Forwarded-For`, as received.
    #[serde(serialize_with = "empty_as_null")]
    pub authority: Cow<'a, str>,
    #[serde(serialize_with = "empty_as_null")]
    pub user_agent: Cow<'a, str>,
    #[serde(serialize_with = "empty_as_null")]
    pub x_forwarded_for: Cow<'a, str>,
    /// The address the client dialled (its original destination), and the client's own.
    #[serde(serialize_with = "empty_as_null")]
    pub downstream_local_address: Cow<'a, str>,
    #[serde(serialize_with = "empty_as_null")]
    pub downstream_remote_address: Cow<'a, str>,
    /// The server name of the client's TLS ClientHello, for a connection routed by it.
    #[serde(serialize_with = "empty_as_null")]
    pub requested_server_name: Cow<'a, str>,
    pub source_workload: Cow<'a, str>,
    pub source_principal: Cow<'a, str>,
    pub destination_workload: Cow<'a, str>,
    pub destination_principal: Cow<'a, str>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    #[serde(serialize_with = "empty_as_null")]
    pub request_id: Cow<'a, str>,
    #[serde(serialize_with = "empty_as_null")]
    pub trace_id: Cow<'a, str>,
    pub retries: u32,
    /// Why the request was denied or failed; empty when it succeeded.
    pub reason: Cow<'a, str>,
}

/// An empty field as `null`.
fn empty_as_null<S: serde::Serializer>(v: &str, s: S) -> Result<S::Ok, S::Error> {
    match v.is_empty() {
        true => s.serialize_none(),
        false => s.serialize_str(v),
    }
}

/// How long a request or connection took, as its line writes it.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Took {
    /// Envoy's `%DURATION%`: whole milliseconds.
    pub duration: u64,
    pub duration_ms: f64,
}

impl From<Duration> for Took {
    fn from(d: Duration) -> Took {
        Took {
            duration: d.as_millis() as u64,
            duration_ms: (d.as_secs_f64() * 1e6).round() / 1e3,
        }
    }
}

/// Istio's name for the cluster of a service's `subset` on `port`, as its access log prints
/// `%UPSTREAM_CLUSTER%`: `outbound|9080|v1|reviews.default.svc.cluster.local`.
pub fn outbound_cluster(port: u16, subset: Option<&str>, host: &str) -> String {
    format!("outbound|{port}|{}|{host}", subset.unwrap_or_default())
}

/// Istio's name for the inbound cluster of a workload's `port`, as its inbound sidecar prints
/// `%UPSTREAM_CLUSTER%`: `inbound|8080||`.
pub fn inbound_cluster(port: u16) -> String {
    format!("inbound|{port}||")
}

/// Istio's name for the cluster keyed `key`, as the access log names it: a service's
/// (`host|subset|port`) `outbound|port|subset|host`; the address the client dialled
/// `PassthroughCluster` (one series for them all, as Istio has one cluster); the tunnel's
/// inbound side (`inbound|ADDR`) `inbound|PORT||`; any other key as it is.
pub fn istio_cluster_name(key: &str) -> String {
    if key.parse::<std::net::SocketAddr>().is_ok() {
        return PASSTHROUGH_CLUSTER.into();
    }
    let inbound = key
        .strip_prefix("inbound|")
        .map(str::parse::<std::net::SocketAddr>);
    if let Some(Ok(addr)) = inbound {
        return inbound_cluster(addr.port());
    }
    match (
        crate::proxy::http::route::cluster_host_port(key),
        key.split('|').nth(1),
    ) {
        (Some((host, port)), Some(subset)) => {
            outbound_cluster(port, (!subset.is_empty()).then_some(subset), host)
        }
        _ => key.to_string(),
    }
}

/// Istio's cluster for a destination outside every service: the address the client dialled.
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";

/// Istio's cluster for what `REGISTRY_ONLY` blocks.
pub const BLACK_HOLE_CLUSTER: &str = "BlackHoleCluster";

/// What the requests and the writer thread share.
struct Shared {
    /// Lines not yet written.
    pending: Mutex<Vec<u8>>,
    wake: Condvar,
    /// The destination, and a spare buffer to swap with `pending`. Held while a batch is taken
    /// and written, so batches leave in order.
    out: Mutex<(Box<dyn Write + Send>, Vec<u8>)>,
    closed: AtomicBool,
}

impl Shared {
    /// Writes whatever is pending.
    fn write_pending(&self) {
        let mut out = self.out.lock().expect("access log lock");
        let (dest, spare) = &mut *out;
        std::mem::swap(&mut *self.pending.lock().expect("access log lock"), spare);
        if !spare.is_empty() {
            let _ = dest.write_all(spare);
            let _ = dest.flush();
            spare.clear();
        }
    }

    fn writer(&self) {
        loop {
            {
                let pending = self.pending.lock().expect("access log lock");
                if pending.len() < WAKE_AT && !self.closed.load(Ordering::Relaxed) {
                    drop(
                        self.wake
                            .wait_timeout(pending, FLUSH)
                            .expect("access log lock"),
                    );
                }
            }
            self.write_pending();
            if self.closed.load(Ordering::Relaxed) {
                return;
            }
        }
    }
}

thread_local! {
    /// Each thread's line under construction, reused.
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

pub struct AccessLog {
    shared: Option<Arc<Shared>>,
    /// The file written to, reopened on request (log rotation).
    path: Option<std::path::PathBuf>,
    sample: f64,
    pub dropped: AtomicU64,
}

fn append_to(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// Reopens the access log's file at each SIGUSR1 (log rotation), as Envoy does; the signal's
/// default action would end meshd without a drain.
pub fn reopen_on_sigusr1(log: Arc<AccessLog>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut usr1 = signal(SignalKind::user_defined1()).expect("SIGUSR1 handler");
    tokio::spawn(async move {
        while usr1.recv().await.is_some() {
            match log.reopen() {
                Ok(()) => tracing::info!("access log reopened (SIGUSR1)"),
                Err(e) => {
                    tracing::error!(error = %e, "cannot reopen the access log; it goes on to the old file")
                }
            }
        }
    });
}

/// RFC 3339 UTC time of a Unix time in milliseconds (no calendar crate needed).
pub fn rfc3339(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        unix_ms % 1000
    )
}

impl AccessLog {
    /// `target` is `stdout`, `off`, or a file path (appended to).
    pub fn open(target: &str, sample: f64) -> std::io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match target {
            "off" => {
                return Ok(AccessLog {
                    shared: None,
                    path: None,
                    sample,
                    dropped: AtomicU64::new(0),
                });
            }
            "stdout" => Box::new(std::io::stdout()),
            path => Box::new(append_to(path.as_ref())?),
        };
        let mut log = Self::to_writer(out, sample)?;
        if target != "stdout" {
            log.path = Some(target.into());
        }
        Ok(log)
    }

    /// Opens the log's file again by its path, after the lines queued so far are written to
    /// the old one: what logrotate asks for with SIGUSR1, as of Envoy, once it moved the file.
    /// Nothing to do for stdout or no log. On failure the old file stays in use.
    pub fn reopen(&self) -> std::io::Result<()> {
        let (Some(shared), Some(path)) = (&self.shared, &self.path) else {
            return Ok(());
        };
        shared.write_pending();
        let file = append_to(path)?;
        shared.out.lock().expect("access log lock").0 = Box::new(file);
        Ok(())
    }

    /// Writes to `out` (what `open` does with stdout or a file).
    pub fn to_writer(out: Box<dyn Write + Send>, sample: f64) -> std::io::Result<AccessLog> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Vec::with_capacity(WAKE_AT * 2)),
            wake: Condvar::new(),
            out: Mutex::new((out, Vec::with_capacity(WAKE_AT * 2))),
            closed: AtomicBool::new(false),
        });
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.writer())?;
        Ok(AccessLog {
            shared: Some(shared),
            path: None,
            sample,
            dropped: AtomicU64::new(0),
        })
    }

    /// Whether there is a log at all (`--access-log` is not `off`).
    pub fn enabled(&self) -> bool {
        self.shared.is_some()
    }

    /// Whether a request's line is written: always for errors, otherwise with the sampling
    /// probability. Decided before the line is built, so unsampled requests cost nothing more.
    pub fn wants(&self, error: bool) -> bool {
        self.enabled() && (error || self.sample >= 1.0 || fastrand::f64() < self.sample)
    }

    /// Queues a line that `wants` accepted.
    pub fn write(&self, e: &Entry<'_>) {
        let Some(shared) = &self.shared else { return };
        LINE.with(|line| {
            let mut line = line.borrow_mut();
            line.clear();
            serde_json::to_writer(&mut *line, e).expect("serialisable entry");
            line.push(b'\n');
            let mut pending = shared.pending.lock().expect("access log lock");
            if pending.len() + line.len() > MAX_PENDING {
                drop(pending);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let before = pending.len();
            pending.extend_from_slice(&line);
            if before < WAKE_AT && pending.len() >= WAKE_AT {
                shared.wake.notify_one();
            }
        });
    }

    /// Queues a line: always for errors, otherwise with the sampling probability.
    pub fn log(&self, e: &Entry<'_>, error: bool) {
        if self.wants(error) {
            self.write(e);
        }
    }

    /// Writes every queued line now (at shutdown, so none is lost).
    pub fn flush(&self) {
        if let Some(shared) = &self.shared {
            shared.write_pending();
        }
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            shared.closed.store(true, Ordering::Relaxed);
            shared.wake.notify_one();
            shared.write_pending();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A destination the test can read back.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn entry(path: &str, code: u16) -> Entry<'_> {
        Entry {
            path: path.into(),
            response_code: code,
            response_flags: "-".into(),
            ..Entry::default()
        }
    }

    #[test]
    fn lines_are_json_in_order_and_errors_skip_sampling() {
        let sink = Sink::default();
        let log = AccessLog::to_writer(Box::new(sink.clone()), 0.0).unwrap();
        assert!(!log.wants(false), "sampled out");
        assert!(log.wants(true), "errors are always written");
        for i in 0..100 {
            log.write(&entry(&format!("/{i}"), 200));
        }
        log.log(&entry("/ok", 200), false);
        log.log(&entry("/failed", 503), true);
        log.flush();
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let paths: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["path"].to_string())
            .collect();
        let expected: Vec<String> = (0..100)
            .map(|i| format!("\"/{i}\""))
            .chain(["\"/failed\"".to_string()])
            .collect();
        assert_eq!(paths, expected);
        assert!(text.starts_with("{\"start_time\":\"\",\"method\":null,\"path\":\"/0\""));
        // Fields with no value are null, as in Istio's JSON access log.
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        for field in [
            "route_name",
            "upstream_host",
            "user_agent",
            "requested_server_name",
        ] {
            assert!(first[field].is_null(), "{field}: {first}");
        }
    }

    #[test]
    fn the_writer_thread_writes_without_a_flush() {
        let sink = Sink::default();
        let log = AccessLog::to_writer(Box::new(sink.clone()), 1.0).unwrap();
        log.write(&entry("/", 200));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while sink.0.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "never written");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::rfc3339(1_795_996_800_123),
            "2026-11-30T00:00:00.123Z"
        );
        assert_eq!(super::rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
