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

/// How much of a request line is looked at: a line longer than this (a long URL) that is a
/// valid start of one is taken as HTTP/1.
pub const MAX_LINE: usize = 4096;

/// Classifies a prefix of a connection's bytes; `None` means "need more bytes". Empty lines
/// before an HTTP/1 request line are skipped, as HTTP/1 parsers (hyper's, Envoy's) skip them:
/// a client cannot pass its requests off as opaque bytes by sending a CRLF first. As Envoy's
/// HTTP inspector, a line is HTTP/1 only as a whole request line, `METHOD SP TARGET SP
/// HTTP/1.x`: Redis's inline `SET a b`, RTSP's `OPTIONS rtsp://... RTSP/1.0` or SIP's `INVITE`
/// are opaque bytes.
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
    request_line(&bytes[..bytes.len().min(MAX_LINE)], bytes.len() >= MAX_LINE)
}

/// Whether `line` (a prefix of the bytes, `full` when it is all that is looked at) is an
/// HTTP/1 request line; `None`: it may still be one.
fn request_line(line: &[u8], full: bool) -> Option<Detected> {
    let opaque = Some(Detected::Opaque);
    let method = line.iter().position(|b| *b == b' ');
    let method_end = method.unwrap_or(line.len());
    let token = |b: &u8| matches!(b, b'A'..=b'Z' | b'-' | b'_');
    if method_end > MAX_METHOD || !line[..method_end].iter().all(token) || method == Some(0) {
        return opaque;
    }
    let m = method?;
    let rest = &line[m + 1..];
    // The request target: visible characters up to the next space.
    let target_end = rest.iter().position(|b| *b == b' ');
    let target = &rest[..target_end.unwrap_or(rest.len())];
    if target_end == Some(0) || !target.iter().all(|b| *b > b' ' && *b != 0x7f) {
        return opaque;
    }
    let Some(t) = target_end else {
        return if full { Some(Detected::Http1) } else { None };
    };
    // `HTTP/D.D`: any version is HTTP's to judge (hyper refuses the ones it does not speak),
    // so no request line a lenient server might take passes as opaque bytes.
    const SHAPE: &[u8] = b"HTTP/0.0";
    let version = &rest[t + 1..];
    for (i, b) in version.iter().take(SHAPE.len()).enumerate() {
        let ok = match SHAPE[i] {
            b'0' => b.is_ascii_digit(),
            c => *b == c,
        };
        if !ok {
            return opaque;
        }
    }
    (version.len() >= SHAPE.len()).then_some(Detected::Http1)
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

/// How long bytes that may still begin an HTTP request line are waited on before the
/// connection is proxied at L4: Envoy's default `listener_filters_timeout`. Istio sets no
/// detection timeout by default, so a slow client's request is not taken for other bytes.
pub const PARTIAL_LINE_WAIT: Duration = Duration::from_secs(15);

/// The longest pause between two looks at bytes still arriving.
const MAX_PAUSE: Duration = Duration::from_millis(20);

/// Peeks until the bytes classify. No byte within `timeout` (a server-first protocol): opaque.
/// Once a request line has begun (more than empty lines), the rest is waited on for
/// [`PARTIAL_LINE_WAIT`].
pub async fn detect(stream: &TcpStream, timeout: Duration) -> Detected {
    let mut deadline = tokio::time::Instant::now() + timeout;
    let mut buf = vec![0u8; MAX_LINE];
    let mut seen = 0;
    let mut begun = false;
    let mut pause = Duration::from_millis(1);
    loop {
        let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await;
        let n = match peeked {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Detected::Opaque,
            Ok(Ok(n)) => n,
        };
        if let Some(d) = classify(&buf[..n]) {
            return d;
        }
        // A client that has ended its side sends no more: what it sent is not a request line
        // (`GET` and a half-close), and its bytes go on at once.
        if super::sockopt::peer_ended(stream) {
            return Detected::Opaque;
        }
        let now = tokio::time::Instant::now();
        if !begun && buf[..n].iter().any(|b| !matches!(b, b'\r' | b'\n')) {
            begun = true;
            deadline = deadline.max(now + PARTIAL_LINE_WAIT);
        }
        if n == seen && now >= deadline {
            return Detected::Opaque;
        }
        if n != seen {
            pause = Duration::from_millis(1);
        }
        seen = n;
        // More bytes are needed; peek returns at once while data is queued, so pause, longer
        // while nothing new arrives.
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
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

    #[tokio::test]
    async fn a_request_line_arriving_slowly_is_waited_on_past_the_first_bytes_timeout() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let timeout = Duration::from_millis(30);
        let mut client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        client.write_all(b"GET /slow").await.unwrap();
        let detected = tokio::spawn(async move { detect(&server, timeout).await });
        // Well past the timeout for first bytes, the rest of the line.
        tokio::time::sleep(timeout * 5).await;
        client.write_all(b" HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(detected.await.unwrap(), Detected::Http1);

        // Nothing at all within the timeout: opaque (a server-first protocol); nor do empty
        // lines alone begin a request line.
        let _silent = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        assert_eq!(detect(&server, timeout).await, Detected::Opaque);
        let mut blank = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        blank.write_all(b"\r\n").await.unwrap();
        let waited = tokio::time::timeout(Duration::from_secs(5), detect(&server, timeout)).await;
        assert_eq!(waited, Ok(Detected::Opaque), "not held for the long wait");

        // A line begun and the client's side ended (`GET` and a half-close): nothing more can
        // come, so it is not waited on.
        let mut ended = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        ended.write_all(b"GET").await.unwrap();
        ended.shutdown().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let waited = tokio::time::timeout(Duration::from_secs(5), detect(&server, timeout)).await;
        assert_eq!(waited, Ok(Detected::Opaque), "not held for the long wait");
    }

    #[test]
    fn classifies() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"POST /x HTTP/1.0"), Some(Detected::Http1));
        assert_eq!(
            classify(b"POST /x"),
            None,
            "the rest of the line may follow"
        );
        assert_eq!(classify(b"GET /x HTTP/1."), None);
        assert_eq!(classify(b"M-SEARCH * HTTP/1.1"), Some(Detected::Http1));
        // Words and spaces that are not an HTTP/1 request line: opaque, as Envoy's inspector
        // falls back to TCP.
        for other in [
            &b"SET a b\r\n"[..],
            b"AUTH secret\r\n",
            b"OPTIONS rtsp://cam/ RTSP/1.0\r\n",
            b"INVITE sip:bob@x SIP/2.0\r\n",
            b"GET /x\r\n",
            b"GET  /x HTTP/1.1",
        ] {
            assert_eq!(classify(other), Some(Detected::Opaque), "{other:?}");
        }
        // A request line longer than what is looked at, valid so far: HTTP/1 (a long URL).
        let mut long = b"GET /".to_vec();
        long.resize(MAX_LINE + 10, b'a');
        assert_eq!(classify(&long), Some(Detected::Http1));
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
        assert_eq!(classify(b"\r\n\r\nPOST / HTTP/1.1"), Some(Detected::Http1));
        assert_eq!(classify(b"\r\n"), None, "an empty line needs more bytes");
        assert_eq!(
            classify(b"\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Some(Detected::Http1)
        );
        assert_eq!(classify(&[b'A'; 40]), Some(Detected::Opaque));
    }
}
