//! The echo helper processes of `bench l4`: a thread-per-connection echo server and a client that
//! times 64-byte round trips over one connection.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::procs::{IDLE_TIMEOUT, MAX_CONNECTIONS, announce_ready};

/// Bytes per request and per reply.
pub const MESSAGE: usize = 64;

/// Serves up to `MAX_CONNECTIONS` connections, echoing every byte back until the peer closes.
pub fn server(bind: Ipv4Addr, port: u16) -> Result<()> {
    let listener = TcpListener::bind((bind, port))
        .with_context(|| format!("binding the echo server to {bind}:{port}"))?;
    announce_ready()?;
    for _ in 0..MAX_CONNECTIONS {
        let (stream, _) = listener.accept().context("accepting")?;
        std::thread::spawn(move || {
            let _ = echo(stream);
        });
    }
    Ok(())
}

fn echo(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n])?;
    }
}

/// Connects once, runs `warmup` untimed and then `rounds` timed round trips, and prints
/// `{"count":..,"median_ns":..,"p99_ns":..,"mean_ns":..}`.
pub fn client(addr: SocketAddr, rounds: u32, warmup: u32) -> Result<()> {
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let request = [0x5au8; MESSAGE];
    let mut reply = [0u8; MESSAGE];
    let mut samples = Vec::with_capacity(rounds as usize);
    for i in 0..warmup + rounds {
        let start = Instant::now();
        stream.write_all(&request)?;
        stream
            .read_exact(&mut reply)
            .with_context(|| format!("reading reply {i}"))?;
        let took = start.elapsed();
        if reply != request {
            bail!("round trip {i}: the reply differs from the request");
        }
        if i >= warmup {
            samples.push(took.as_nanos() as u64);
        }
    }
    drop(stream);
    samples.sort_unstable();
    let n = samples.len();
    let median = samples[n / 2];
    let p99 = samples[(n * 99 / 100).min(n - 1)];
    let mean = samples.iter().sum::<u64>() / n as u64;
    println!(r#"{{"count":{n},"median_ns":{median},"p99_ns":{p99},"mean_ns":{mean}}}"#);
    Ok(())
}
