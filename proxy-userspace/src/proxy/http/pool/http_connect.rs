//! HTTP CONNECT through a forward proxy, for a DestinationRule's `tunnel`: meshd asks the
//! proxy (an endpoint of the rule's host) for a tunnel to `targetHost:targetPort`, and the
//! opaque connection's bytes then flow through it.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest CONNECT response head accepted.
const MAX_HEAD: usize = 8 * 1024;

/// Asks the proxy at the other end of `stream` for a tunnel to `authority` (`host:port`) and
/// reads its answer. Returns the bytes that came after the response head (what the target sent
/// at once, usually nothing), for the client. Err: the proxy refused (its status line), closed,
/// or answered something else than HTTP.
pub async fn open<S>(stream: &mut S, authority: &str) -> io::Result<Vec<u8>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(refused(
                "the proxy closed the connection before answering CONNECT",
            ));
        }
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = &buf[..end];
            let status = status(head)?;
            if !(200..300).contains(&status) {
                let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
                return Err(refused(&format!(
                    "the proxy refused CONNECT {authority}: {}",
                    String::from_utf8_lossy(line)
                )));
            }
            return Ok(buf.split_off(end + 4));
        }
        if buf.len() > MAX_HEAD {
            return Err(refused("the proxy's CONNECT response head exceeds 8 KiB"));
        }
    }
}

/// The status code of an `HTTP/1.x NNN reason` response head.
fn status(head: &[u8]) -> io::Result<u16> {
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut parts = line.splitn(3, |b| *b == b' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().and_then(|c| std::str::from_utf8(c).ok());
    match (
        version.starts_with(b"HTTP/1."),
        code.and_then(|c| c.parse().ok()),
    ) {
        (true, Some(code)) => Ok(code),
        _ => Err(refused(&format!(
            "the proxy answered CONNECT with no HTTP status line: {:?}",
            String::from_utf8_lossy(line)
        ))),
    }
}

fn refused(reason: &str) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionRefused, reason.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    /// A proxy that reads the CONNECT request, answers `reply`, and returns what it read.
    async fn proxy(reply: &'static [u8]) -> (TcpStream, tokio::task::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut got = Vec::new();
            while !got.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 256];
                let n = s.read(&mut b).await.unwrap();
                got.extend_from_slice(&b[..n]);
            }
            // In two writes: the head may arrive in pieces.
            let (a, b) = reply.split_at(reply.len() / 2);
            s.write_all(a).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            s.write_all(b).await.unwrap();
            got
        });
        (TcpStream::connect(addr).await.unwrap(), server)
    }

    #[tokio::test]
    async fn a_tunnel_opens_on_2xx_and_leaves_the_targets_bytes() {
        let (mut s, server) = proxy(b"HTTP/1.1 200 Connection established\r\n\r\nbanner").await;
        let mut rest = open(&mut s, "api.example.com:443").await.unwrap();
        assert_eq!(
            server.await.unwrap(),
            b"CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\n\r\n"
        );
        while rest.len() < 6 {
            s.read_buf(&mut rest).await.unwrap();
        }
        assert_eq!(rest, b"banner");
    }

    #[tokio::test]
    async fn a_refusal_names_the_proxys_status() {
        let (mut s, _server) = proxy(b"HTTP/1.1 403 Access violation\r\n\r\n").await;
        let e = open(&mut s, "10.0.0.1:22").await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "the proxy refused CONNECT 10.0.0.1:22: HTTP/1.1 403 Access violation"
        );
        let (mut s, _server) = proxy(b"SSH-2.0-OpenSSH\r\n\r\n").await;
        let e = open(&mut s, "10.0.0.1:22").await.unwrap_err();
        assert!(e.to_string().contains("no HTTP status line"), "{e}");
    }
}
