//! A span sink for `bench telemetry`: accepts meshd's Zipkin POSTs on 127.0.0.1, answers 202
//! and counts the batches and spans it received, so trace export runs as in production without
//! a real collector.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result};

#[derive(Default)]
struct Counts {
    batches: AtomicU64,
    spans: AtomicU64,
}

/// The sink's thread runs until the benchmark exits.
pub struct Sink {
    counts: Arc<Counts>,
}

impl Sink {
    pub fn start(port: u16) -> Result<Sink> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .with_context(|| format!("binding the span sink on 127.0.0.1:{port}"))?;
        let counts = Arc::new(Counts::default());
        let keep = counts.clone();
        std::thread::Builder::new()
            .name("span-sink".into())
            .spawn(move || {
                for s in listener.incoming().flatten() {
                    if let Some(spans) = receive(s) {
                        keep.batches.fetch_add(1, Ordering::Relaxed);
                        keep.spans.fetch_add(spans, Ordering::Relaxed);
                    }
                }
            })?;
        Ok(Sink { counts })
    }

    /// (batches, spans) received so far.
    pub fn received(&self) -> (u64, u64) {
        (
            self.counts.batches.load(Ordering::Relaxed),
            self.counts.spans.load(Ordering::Relaxed),
        )
    }
}

/// Reads one POST (head and Content-Length body), answers 202, and returns its span count.
fn receive(mut s: TcpStream) -> Option<u64> {
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    let (head_end, len) = loop {
        let n = s.read(&mut chunk).ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            break (i + 4, len);
        }
    };
    while buf.len() < head_end + len {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let _ = s.write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    let body = &buf[head_end.min(buf.len())..];
    let spans = body.windows(10).filter(|w| w == b"\"traceId\":").count();
    Some(spans as u64)
}
