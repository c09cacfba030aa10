//! The fixed-rate HTTP/1.1 client: keep-alive connections, each in its own thread, each sending
//! a GET on a fixed schedule; a request's latency is measured from its scheduled send time, so a
//! slow response delays (and is charged to) the requests queued behind it.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// A connection thread gives up after this many failed requests.
const MAX_ERRORS: u64 = 100;

/// Response heads larger than this are an error.
const MAX_HEAD: usize = 64 << 10;

#[derive(Default)]
struct Tally {
    latencies_ns: Vec<u64>,
    errors: u64,
    late_starts: u64,
}

/// Runs `conns` connections, each sending one GET every `interval_ms` for `warmup_secs +
/// secs`; prints one JSON line with the timed requests' latency percentiles.
pub fn client(
    addr: SocketAddr,
    conns: u32,
    interval_ms: u64,
    secs: u64,
    warmup_secs: u64,
) -> Result<()> {
    if conns == 0 || interval_ms == 0 || secs == 0 {
        bail!("--conns, --interval-ms and --secs must be positive");
    }
    let interval = Duration::from_millis(interval_ms);
    let per_conn = (warmup_secs + secs) * 1000 / interval_ms;
    let base = Instant::now() + Duration::from_millis(100);
    let timed_from = base + Duration::from_secs(warmup_secs);
    let threads: Vec<_> = (0..conns)
        .map(|k| {
            // Spread the connections' send times evenly over one interval.
            let offset = interval * k / conns;
            std::thread::spawn(move || {
                connection(addr, base + offset, interval, per_conn, timed_from)
            })
        })
        .collect();
    let mut all = Tally::default();
    for t in threads {
        let tally = t
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
        all.latencies_ns.extend(tally.latencies_ns);
        all.errors += tally.errors;
        all.late_starts += tally.late_starts;
    }
    let v = &mut all.latencies_ns;
    if v.is_empty() {
        bail!("no request succeeded ({} errors)", all.errors);
    }
    v.sort_unstable();
    let n = v.len();
    let pct = |p: usize| v[(n * p / 100).min(n - 1)];
    println!(
        "{{\"count\":{n},\"errors\":{},\"late_starts\":{},\"secs\":{secs},\"median_ns\":{},\"p99_ns\":{},\"max_ns\":{}}}",
        all.errors,
        all.late_starts,
        pct(50),
        pct(99),
        v[n - 1]
    );
    Ok(())
}

fn connection(
    addr: SocketAddr,
    start: Instant,
    interval: Duration,
    count: u64,
    timed_from: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: meshd-bench\r\n\r\n");
    let mut conn: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(4096);
    for i in 0..count {
        let scheduled = start + interval * u32::try_from(i).unwrap_or(u32::MAX);
        let now = Instant::now();
        if now < scheduled {
            std::thread::sleep(scheduled - now);
        } else if now - scheduled > interval {
            // Still busy with an earlier request when this one was due.
            tally.late_starts += 1;
        }
        let result = (|| -> Result<()> {
            if conn.is_none() {
                let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                s.set_write_timeout(Some(Duration::from_secs(5)))?;
                conn = Some(s);
            }
            let s = conn.as_mut().expect("connected");
            s.write_all(request.as_bytes())?;
            let status = read_response(s, &mut buf)?;
            if !(200..300).contains(&status) {
                bail!("status {status}");
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                if scheduled >= timed_from {
                    let ns = u64::try_from(scheduled.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    tally.latencies_ns.push(ns);
                }
            }
            Err(e) => {
                tally.errors += 1;
                if tally.errors <= 3 {
                    eprintln!("request to {addr} failed: {e:#}");
                }
                conn = None;
                if tally.errors >= MAX_ERRORS {
                    break;
                }
            }
        }
    }
    tally
}

/// Reads one response (Content-Length or chunked body) and returns its status.
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<u16> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            bail!("response head larger than {MAX_HEAD} bytes");
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed before the response head ended");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad status line in {head:?}"))?;
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
    };
    if let Some(len) = header("content-length:") {
        let len: usize = len.parse().context("bad content-length")?;
        while buf.len() < head_end + len {
            let n = s.read(&mut chunk)?;
            if n == 0 {
                bail!("connection closed in the response body");
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    } else if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
        // The bodies here are tiny: read until the last chunk.
        while !buf[head_end..].ends_with(b"0\r\n\r\n") {
            if buf.len() > MAX_HEAD * 4 {
                bail!("chunked body too large");
            }
            let n = s.read(&mut chunk)?;
            if n == 0 {
                bail!("connection closed in the chunked body");
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    } else if status != 204 && status != 304 {
        bail!("response without a length: {head:?}");
    }
    Ok(status)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
