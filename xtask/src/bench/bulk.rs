//! The bulk helper processes of `bench l4`: a sink that reads each connection to EOF and then
//! acknowledges the byte count, and a client that sends a fixed amount and times it.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::procs::{IDLE_TIMEOUT, MAX_CONNECTIONS, announce_ready};

/// Size of every read and write.
pub const BUFFER: usize = 256 * 1024;

/// Serves up to `MAX_CONNECTIONS` connections: read to EOF, reply with the count (u64 LE), close.
pub fn server(port: u16) -> Result<()> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .with_context(|| format!("binding the bulk server to 127.0.0.1:{port}"))?;
    announce_ready()?;
    for _ in 0..MAX_CONNECTIONS {
        let (stream, _) = listener.accept().context("accepting")?;
        std::thread::spawn(move || {
            let _ = sink(stream);
        });
    }
    Ok(())
}

fn sink(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    let mut buf = vec![0u8; BUFFER];
    let mut total = 0u64;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    stream.write_all(&total.to_le_bytes())
}

/// Sends `bytes` in `BUFFER`-sized writes, half-closes, waits for the sink's count and prints
/// `{"bytes":..,"nanos":..,"bytes_per_sec":..}`.
pub fn client(addr: SocketAddr, bytes: u64) -> Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    let buf = vec![0xa5u8; BUFFER];
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(BUFFER as u64) as usize;
        stream.write_all(&buf[..n]).context("sending")?;
        left -= n as u64;
    }
    stream.shutdown(Shutdown::Write)?;
    let ack = read_ack(&mut stream).context("reading the sink's byte count")?;
    let nanos = start.elapsed().as_nanos().max(1) as u64;
    let received = u64::from_le_bytes(ack);
    if received != bytes {
        bail!("sent {bytes} bytes but the sink counted {received}");
    }
    let per_sec = (bytes as f64 * 1e9 / nanos as f64) as u64;
    println!(r#"{{"bytes":{bytes},"nanos":{nanos},"bytes_per_sec":{per_sec}}}"#);
    Ok(())
}

/// Reads the sink's 8-byte count within 30 s. A blocking socket in a sockmap can fail a read
/// with EAGAIN when it is woken without data (by the acknowledgement of its own FIN, say): that
/// read is tried again.
fn read_ack(stream: &mut TcpStream) -> std::io::Result<[u8; 8]> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ack = [0u8; 8];
    let mut got = 0;
    while got < ack.len() {
        match stream.read(&mut ack[got..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {}
            Err(e) => return Err(e),
        }
    }
    Ok(ack)
}
