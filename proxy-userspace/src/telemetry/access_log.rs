//! The access log: one JSON line per request and per L4 connection, written by a background
//! thread to stdout or a file. Lines are sampled, except errors (5xx, or any response flag),
//! which are always written. A full queue drops lines and counts them, never delaying traffic.

use std::{
    io::Write,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{SyncSender, TrySendError, sync_channel},
    },
};

use serde::Serialize;

/// Lines waiting for the writer thread.
const QUEUE: usize = 8_192;

#[derive(Debug, Default, Serialize)]
pub struct Entry {
    pub start_time: String,
    pub method: String,
    pub path: String,
    pub protocol: String,
    pub response_code: u16,
    pub response_flags: String,
    pub duration_ms: f64,
    pub upstream_cluster: String,
    pub upstream_host: String,
    pub source_workload: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_principal: String,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub request_id: String,
    pub trace_id: String,
    pub retries: u32,
    /// Why the request was denied or failed; empty when it succeeded.
    pub reason: String,
}

pub struct AccessLog {
    tx: Option<SyncSender<String>>,
    sample: f64,
    pub dropped: AtomicU64,
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
                    tx: None,
                    sample,
                    dropped: AtomicU64::new(0),
                });
            }
            "stdout" => Box::new(std::io::stdout()),
            path => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
        let (tx, rx) = sync_channel::<String>(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                // Write what is queued in one go, then flush once the queue is empty.
                while let Ok(line) = rx.recv() {
                    let _ = writeln!(out, "{line}");
                    while let Ok(more) = rx.try_recv() {
                        let _ = writeln!(out, "{more}");
                    }
                    let _ = out.flush();
                }
            })?;
        Ok(AccessLog {
            tx: Some(tx),
            sample,
            dropped: AtomicU64::new(0),
        })
    }

    /// Whether a request's line is written: always for errors, otherwise with the sampling
    /// probability. Decided before the line is built, so unsampled requests cost nothing more.
    pub fn wants(&self, error: bool) -> bool {
        self.tx.is_some() && (error || self.sample >= 1.0 || fastrand::f64() < self.sample)
    }

    /// Queues a line that `wants` accepted.
    pub fn write(&self, e: &Entry) {
        let Some(tx) = &self.tx else { return };
        let line = serde_json::to_string(e).expect("serialisable entry");
        if let Err(TrySendError::Full(_)) = tx.try_send(line) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues a line: always for errors, otherwise with the sampling probability.
    pub fn log(&self, e: &Entry, error: bool) {
        if self.wants(error) {
            self.write(e);
        }
    }
}

#[cfg(test)]
mod tests {
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
