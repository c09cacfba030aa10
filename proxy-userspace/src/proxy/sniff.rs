//! Protocol detection on a captured connection: peek (never consume) the first bytes and tell
//! HTTP/1.x and the HTTP/2 prior-knowledge preface from everything else.

use std::time::Duration;

use tokio::net::TcpStream;

use super::sni::{HANDSHAKE, opens_handshake};

/// What the first bytes of a connection look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    /// Not HTTP, or nothing arrived before the detection timeout (server-first protocols).
    Opaque,
}

pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Longest method token we accept before the space of an HTTP/1 request line.
const MAX_METHOD: usize = 20;

/// Classifies a prefix of a connection's bytes; `None` means "need more bytes". Empty lines
/// before an HTTP/1 request line are skipped, as HTTP/1 parsers (hyper's, Envoy's) skip them:
/// a client cannot pass its requests off as opaque bytes by sending a CRLF first.
pub fn classify(bytes: &[u8]) -> Option<Detected> {
    let lead = bytes
        .iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count();
    let bytes = &bytes[lead..];
    if bytes.is_empty() {
        return None;
    }
    let n = bytes.len().min(H2_PREFACE.len());
    if lead == 0 && bytes[..n] == H2_PREFACE[..n] {
        // "PRI " is also a syntactically valid HTTP/1 method, so wait for the whole preface.
        return (n == H2_PREFACE.len()).then_some(Detected::Http2);
    }
    for (i, b) in bytes.iter().enumerate() {
        match b {
            b'A'..=b'Z' | b'-' | b'_' if i < MAX_METHOD => continue,
            b' ' if i > 0 => return Some(Detected::Http1),
            _ => return Some(Detected::Opaque),
        }
    }
    (bytes.len() < MAX_METHOD)
        .then_some(())
        .map_or(Some(Detected::Opaque), |_| None)
}

/// Whether the client's first bytes begin a TLS handshake record (content type 22, version
/// 3.x): it speaks TLS itself. Waits up to `wait` for them (false when none came).
pub async fn starts_tls(stream: &TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 2];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(2)) => return opens_handshake(&buf),
            // One byte so far: a handshake's record type waits for the version while the wait
            // lasts (a peek returns that byte at once, so the wait is kept here); any other
            // type, or the wait over, settles it by that byte.
            Ok(Ok(1)) if buf[0] == HANDSHAKE && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(1)).await
            }
            Ok(Ok(1)) => return buf[0] == HANDSHAKE,
            _ => return false,
        }
    }
}

/// Peeks until the bytes classify or `timeout` passes (then: opaque).
pub async fn detect(stream: &TcpStream, timeout: Duration) -> Detected {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 32];
    let mut seen = 0;
    loop {
        let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await;
        let n = match peeked {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Detected::Opaque,
            Ok(Ok(n)) => n,
        };
        if let Some(d) = classify(&buf[..n]) {
            return d;
        }
        if n == seen && tokio::time::Instant::now() >= deadline {
            return Detected::Opaque;
        }
        seen = n;
        // More bytes are needed; peek returns at once while data is queued, so pause briefly.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::AsyncWriteExt,
        net::{TcpListener, TcpStream},
    };

    use super::*;

    #[tokio::test]
    async fn a_handshake_record_tells_a_tls_client_even_one_byte_at_a_time() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connect = || TcpStream::connect(l.local_addr().unwrap());
        let wait = Duration::from_millis(20);
        for (sent, tls) in [
            (&[0x16, 0x03, 0x01][..], true),
            (&b"GET / HTTP/1.1\r\n"[..], false),
            // A lone handshake byte: decided by it once the wait is over, not waited on forever.
            (&[0x16][..], true),
            (&[0x17][..], false),
        ] {
            let mut client = connect().await.unwrap();
            let (server, _) = l.accept().await.unwrap();
            client.write_all(sent).await.unwrap();
            // The bytes have arrived once a peek sees them all.
            let mut seen = vec![0u8; sent.len()];
            while server.peek(&mut seen).await.unwrap() < sent.len() {}
            assert_eq!(starts_tls(&server, wait).await, tls, "{sent:?}");
        }
        // Nothing sent: not TLS, once the wait is over.
        let _client = connect().await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        assert!(!starts_tls(&server, wait).await);
    }

    #[test]
    fn classifies() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"POST /x"), Some(Detected::Http1));
        assert_eq!(classify(b"M-SEARCH * HTTP/1.1"), Some(Detected::Http1));
        assert_eq!(classify(H2_PREFACE), Some(Detected::Http2));
        assert_eq!(
            classify(b"PRI * HT"),
            None,
            "a partial preface needs more bytes"
        );
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"ping"), Some(Detected::Opaque));
        assert_eq!(
            classify(b"\x16\x03\x01"),
            Some(Detected::Opaque),
            "TLS is opaque"
        );
        assert_eq!(classify(b" GET"), Some(Detected::Opaque));
        assert_eq!(classify(b"\r\n\r\nPOST /"), Some(Detected::Http1));
        assert_eq!(classify(b"\r\n"), None, "an empty line needs more bytes");
        assert_eq!(
            classify(b"\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Some(Detected::Http1)
        );
        assert_eq!(classify(&[b'A'; 40]), Some(Detected::Opaque));
    }
}
