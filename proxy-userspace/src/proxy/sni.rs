//! The server name (SNI) of a TLS connection, read from its ClientHello by peeking (never
//! consuming), for VirtualService `tls` routes.

use std::time::Duration;

use tokio::net::TcpStream;

/// The most of a ClientHello read: its record is at most 16 KiB, and the name comes early.
const MAX_HELLO: usize = 16 * 1024 + 5;

/// What the first bytes say about a server name.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// A ClientHello naming this server.
    Name(String),
    /// Not a ClientHello, or one without a server name.
    None,
    /// A ClientHello whose end has not arrived yet.
    Incomplete,
}

/// A TLS record's content type for a handshake.
pub const HANDSHAKE: u8 = 22;

/// Whether `bytes` (two or more) begin a TLS handshake record: content type 22, version 3.x.
pub fn opens_handshake(bytes: &[u8]) -> bool {
    bytes.starts_with(&[HANDSHAKE, 3])
}

/// Reads the server name from the start of a TLS connection's bytes.
pub fn parse(bytes: &[u8]) -> Hello {
    // TLS record: content type 22 (handshake), version 3.x, length.
    if bytes.len() < 5 {
        return if bytes.first().is_none_or(|b| *b == HANDSHAKE) {
            Hello::Incomplete
        } else {
            Hello::None
        };
    }
    if !opens_handshake(bytes) {
        return Hello::None;
    }
    // The handshake message may span several records (RFC 8446 section 5.1): their bodies are
    // joined until it is whole, as a TLS stack reassembles it.
    let mut message = Vec::new();
    let mut rest = bytes;
    loop {
        if rest.len() < 5 {
            return Hello::Incomplete;
        }
        if !opens_handshake(rest) {
            return Hello::None;
        }
        let record = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        let Some(body) = rest.get(5..5 + record) else {
            return Hello::Incomplete;
        };
        message.extend_from_slice(body);
        rest = &rest[5 + record..];
        // Type (1 byte) and length (3 bytes), then the message.
        if let Some(len) = message.get(1..4) {
            let len =
                (usize::from(len[0]) << 16) | (usize::from(len[1]) << 8) | usize::from(len[2]);
            if message.len() >= 4 + len {
                break;
            }
        }
    }
    client_hello_name(&message).map_or(Hello::None, Hello::Name)
}

/// A cursor over a handshake message, every read bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }

    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    /// A vector with a length prefix of `width` bytes.
    fn vec(&mut self, width: usize) -> Option<&'a [u8]> {
        let n = match width {
            1 => self.u8()?,
            2 => self.u16()?,
            _ => {
                let b = self.take(3)?;
                (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2])
            }
        };
        self.take(n)
    }
}

fn client_hello_name(handshake: &[u8]) -> Option<String> {
    let mut r = Reader(handshake);
    // Handshake type 1: ClientHello.
    if r.u8()? != 1 {
        return None;
    }
    let mut hello = Reader(r.vec(3)?);
    hello.take(2 + 32)?; // version, random
    hello.vec(1)?; // session id
    hello.vec(2)?; // cipher suites
    hello.vec(1)?; // compression methods
    let mut extensions = Reader(hello.vec(2)?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec(2)?;
        if kind != 0 {
            continue;
        }
        // server_name: a list of (type, name); type 0 is a host name.
        let mut list = Reader(Reader(data).vec(2)?);
        while !list.0.is_empty() {
            let name_type = list.u8()?;
            let name = list.vec(2)?;
            if name_type == 0 {
                let name = std::str::from_utf8(name).ok()?;
                return Some(name.trim_end_matches('.').to_ascii_lowercase());
            }
        }
        return None;
    }
    None
}

/// What the bytes already arrived say about a server name, peeked without waiting (and without
/// the runtime's readiness, which may not know of them yet).
pub fn peek_now(stream: &TcpStream) -> Hello {
    let mut buf = vec![0u8; MAX_HELLO];
    match super::sockopt::peek_waiting(stream, &mut buf) {
        Ok(n) => parse(&buf[..n]),
        Err(_) => Hello::None,
    }
}

/// Peeks at a connection until its ClientHello's server name is known, it is not TLS, or
/// `timeout` passes.
pub async fn peek(stream: &TcpStream, timeout: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = vec![0u8; 512];
    // Between looks at a hello still incomplete: 1 ms, doubling to 20 ms for a slow one.
    let mut pause = Duration::from_millis(1);
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return None,
        };
        match parse(&buf[..n]) {
            Hello::Name(name) => return Some(name),
            Hello::None => return None,
            Hello::Incomplete if n == buf.len() && buf.len() < MAX_HELLO => {
                buf.resize((buf.len() * 2).min(MAX_HELLO), 0);
            }
            Hello::Incomplete if tokio::time::Instant::now() >= deadline => return None,
            // More bytes are needed; peek returns at once while data is queued.
            Hello::Incomplete => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(20));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello record with `name` in its server_name extension.
    fn hello(name: Option<&str>) -> Vec<u8> {
        let mut ext = Vec::new();
        // An unrelated extension first (supported_versions).
        ext.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
        if let Some(name) = name {
            let n = name.len() as u16;
            ext.extend_from_slice(&[0x00, 0x00]);
            ext.extend_from_slice(&(n + 5).to_be_bytes());
            ext.extend_from_slice(&(n + 3).to_be_bytes());
            ext.push(0);
            ext.extend_from_slice(&n.to_be_bytes());
            ext.extend_from_slice(name.as_bytes());
        }
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[0x01, 0x00]); // null compression
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![1];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![22, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn reads_the_server_name() {
        assert_eq!(
            parse(&hello(Some("Api.Example.com"))),
            Hello::Name("api.example.com".into())
        );
        assert_eq!(parse(&hello(None)), Hello::None);
    }

    #[test]
    fn a_hello_split_across_records_is_reassembled() {
        let whole = hello(Some("b.tls.example"));
        let message = &whole[5..];
        let mut split = Vec::new();
        for chunk in message.chunks(10) {
            split.extend_from_slice(&[22, 3, 1]);
            split.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            split.extend_from_slice(chunk);
        }
        assert_eq!(parse(&split), Hello::Name("b.tls.example".into()));
        // Not all records arrived yet: more are needed.
        assert_eq!(parse(&split[..split.len() - 3]), Hello::Incomplete);
    }

    #[test]
    fn a_partial_hello_needs_more_and_other_bytes_are_not_tls() {
        let full = hello(Some("a.example"));
        for cut in [1, 4, 5, 20, full.len() - 1] {
            assert_eq!(parse(&full[..cut]), Hello::Incomplete, "cut at {cut}");
        }
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Hello::None);
        assert_eq!(
            parse(b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00"),
            Hello::None
        );
    }

    #[test]
    fn a_malformed_hello_is_no_name_not_a_panic() {
        let mut h = hello(Some("a.example"));
        // Claim a longer extension block than there is.
        let at = h.len() - 20;
        h[at] = 0xff;
        let _ = parse(&h);
        for len in 0..h.len() {
            let _ = parse(&h[..len]);
        }
    }

    /// A hello that comes late and in pieces is waited for whole, so the connection is routed
    /// by its name rather than by the service alone.
    #[tokio::test]
    async fn a_slow_hello_in_pieces_is_read_whole() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let h = hello(Some("b.z.example"));
            tokio::time::sleep(Duration::from_millis(150)).await;
            for piece in h.chunks(h.len() / 3 + 1) {
                s.write_all(piece).await.unwrap();
                s.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            s
        });
        let (server, _) = listener.accept().await.unwrap();
        let name = peek(&server, Duration::from_secs(5)).await;
        assert_eq!(name.as_deref(), Some("b.z.example"));
        drop(client.await.unwrap());
    }

    #[tokio::test]
    async fn a_hello_already_arrived_is_read_without_waiting() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert_eq!(peek_now(&server), Hello::None, "nothing yet");
        let h = hello(Some("now.example"));
        // Half of it: incomplete, so no name.
        client.write_all(&h[..h.len() / 2]).await.unwrap();
        let mut seen = vec![0u8; h.len()];
        while server.peek(&mut seen).await.unwrap() < h.len() / 2 {}
        assert_eq!(peek_now(&server), Hello::Incomplete);
        client.write_all(&h[h.len() / 2..]).await.unwrap();
        while server.peek(&mut seen).await.unwrap() < h.len() {}
        assert_eq!(peek_now(&server), Hello::Name("now.example".into()));
    }
}
