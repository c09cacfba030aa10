//! A guard on HTTP/1 downstream bytes against request smuggling. It follows the request framing
//! itself (heads, Content-Length bodies, chunked bodies) as hyper reads the connection, and
//! records, for each request head in order, whether two parsers could disagree on where the
//! request ends: Content-Length together with Transfer-Encoding, or more than one
//! Content-Length, or a transfer coding other than chunked. hyper resolves the first two
//! safely on its own; meshd rejects them all, as a demanding proxy should, before anything is
//! forwarded. It reads heads as hyper's parser does (empty lines before a request line are
//! skipped, and a bare LF ends a line), so no prefix can put the two out of step. It also holds
//! heads to the configured size exactly (hyper's own limit is a buffer size, rounded up).

use std::{
    collections::VecDeque,
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Why a request is refused before anything is forwarded, and with what status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub reason: &'static str,
}

const BOTH: Rejection = Rejection {
    status: 400,
    reason: "both Content-Length and Transfer-Encoding",
};
const LENGTHS: Rejection = Rejection {
    status: 400,
    reason: "more than one Content-Length",
};
/// As Envoy's HTTP/1 parser without `allow_custom_methods` (Istio leaves it off): a method it
/// does not know is a protocol error, 400.
pub const UNKNOWN_METHOD: Rejection = Rejection {
    status: 400,
    reason: "HPE_INVALID_METHOD: a method Envoy's HTTP/1 parser does not know",
};

/// The methods Envoy's HTTP/1 parser knows (http-parser's), sorted, with `M-SEARCH` as
/// http-parser spells it besides the `MSEARCH` of Envoy's list.
const KNOWN_METHODS: [&str; 35] = [
    "ACL",
    "BIND",
    "CHECKOUT",
    "CONNECT",
    "COPY",
    "DELETE",
    "GET",
    "HEAD",
    "LINK",
    "LOCK",
    "M-SEARCH",
    "MERGE",
    "MKACTIVITY",
    "MKCALENDAR",
    "MKCOL",
    "MOVE",
    "MSEARCH",
    "NOTIFY",
    "OPTIONS",
    "PATCH",
    "POST",
    "PROPFIND",
    "PROPPATCH",
    "PURGE",
    "PUT",
    "REBIND",
    "REPORT",
    "SEARCH",
    "SOURCE",
    "SUBSCRIBE",
    "TRACE",
    "UNBIND",
    "UNLINK",
    "UNLOCK",
    "UNSUBSCRIBE",
];

/// Whether Envoy's HTTP/1 parser takes `m` (HTTP/2 takes any method).
pub fn known_method(m: &hyper::Method) -> bool {
    // The usual ones without a search.
    matches!(
        *m,
        hyper::Method::GET | hyper::Method::POST | hyper::Method::PUT | hyper::Method::HEAD
    ) || KNOWN_METHODS.binary_search(&m.as_str()).is_ok()
}

/// Envoy's `max_headers_count` (100), which hyper's HTTP/1 parser holds requests to as well.
pub const MAX_HEADERS: usize = 100;

/// An HTTP/2 request with more header fields than [`MAX_HEADERS`], as an HTTP/1 one gets.
pub const TOO_MANY_HEADERS: Rejection = Rejection {
    status: 431,
    reason: "more than 100 header fields (Envoy's max_headers_count)",
};

/// An HTTP/2 request whose header list is larger than `--max-request-headers-kb`, as an
/// HTTP/1 request head gets.
pub const HEADER_LIST_TOO_LARGE: Rejection = Rejection {
    status: 431,
    reason: "request header list larger than --max-request-headers-kb",
};

/// The size of an HTTP/2 request's header list as RFC 9113 (section 6.5.2) counts it, and h2
/// with it: each field's name and value and 32 bytes, the pseudo-header fields included.
pub fn header_list_size<B>(req: &hyper::Request<B>) -> usize {
    let uri = req.uri();
    let pseudo = [
        (":method".len(), req.method().as_str().len()),
        (":scheme".len(), uri.scheme_str().map_or(0, str::len)),
        (
            ":authority".len(),
            uri.authority().map_or(0, |a| a.as_str().len()),
        ),
        (
            ":path".len(),
            uri.path_and_query().map_or(1, |p| p.as_str().len()),
        ),
    ];
    let fields = req
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().len(), v.len()));
    pseudo
        .into_iter()
        .chain(fields)
        .map(|(n, v)| n + v + 32)
        .sum()
}

/// As Envoy and RFC 9112 (section 6.1): a coding the proxy does not implement is 501.
const CODING: Rejection = Rejection {
    status: 501,
    reason: "a Transfer-Encoding other than chunked",
};
const TOO_LARGE: Rejection = Rejection {
    status: 431,
    reason: "request head larger than --max-request-headers-kb",
};

/// Verdicts for the requests read so far, oldest first: `Some(rejection)` to refuse.
pub type Verdicts = Arc<Mutex<VecDeque<Option<Rejection>>>>;

/// Longest head the scanner buffers; hyper enforces the real limit (431).
const MAX_HEAD: usize = 1 << 20;

#[derive(Debug)]
enum Scan {
    Head(Vec<u8>),
    Body(u64),
    ChunkSize(Vec<u8>),
    ChunkData(u64),
    ChunkEnd(usize),
    Trailers(Vec<u8>),
    /// Not HTTP/1 any more (HTTP/2, an upgrade, or bytes hyper will reject): stop scanning.
    Done,
}

pub struct Guarded<T> {
    inner: T,
    scan: Scan,
    verdicts: Verdicts,
    /// The largest request head allowed, in bytes.
    max_head: usize,
}

impl<T> Guarded<T> {
    pub fn new(inner: T, max_head: usize) -> (Guarded<T>, Verdicts) {
        let verdicts = Verdicts::default();
        (
            Guarded {
                inner,
                scan: Scan::Head(Vec::new()),
                verdicts: verdicts.clone(),
                max_head,
            },
            verdicts,
        )
    }
}

/// Whether a head needs [`judge`]: a CONNECT, anything but an HTTP/1.x request line, a
/// header line that starts like Content-Length, Transfer-Encoding or Upgrade (any case), or a
/// folded line.
fn may_frame(head: &[u8]) -> bool {
    let mut lines = head.split(|b| *b == b'\n');
    let first = lines.next().unwrap_or_default();
    if head.starts_with(b"CONNECT ")
        || !(first.ends_with(b" HTTP/1.1\r") || first.ends_with(b" HTTP/1.0\r"))
    {
        return true;
    }
    lines.any(|line| {
        let starts = |p: &[u8]| line.len() >= p.len() && line[..p.len()].eq_ignore_ascii_case(p);
        matches!(line.first(), Some(b' ' | b'\t'))
            || starts(b"content-length")
            || starts(b"transfer-encoding")
            || starts(b"upgrade")
    })
}

/// Whether an Upgrade field names WebSocket among its protocols. The guard reads no request
/// after one that does, so its connection must close unless it is upgraded.
pub fn names_websocket(value: &[u8]) -> bool {
    String::from_utf8_lossy(value)
        .split(',')
        .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
}

/// What a complete request head says about framing.
fn judge(head: &[u8]) -> Option<(Option<Rejection>, Scan)> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return None,
    }
    let mut lengths = Vec::new();
    let mut chunked = None;
    // Transfer-Encoding fields, and whether any says more than `chunked`.
    let (mut te_fields, mut other_coding) = (0, false);
    // The bytes after a WebSocket upgrade (or a CONNECT) are not requests. Any other upgrade
    // is refused or dropped, and the connection stays HTTP/1.1: its requests are judged.
    let mut upgrade = req.method == Some("CONNECT");
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            lengths.push(String::from_utf8_lossy(h.value).trim().to_string());
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te_fields += 1;
            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            chunked = Some(v.trim_end().ends_with("chunked"));
            other_coding |= v.trim() != "chunked";
        } else if h.name.eq_ignore_ascii_case("upgrade") && names_websocket(h.value) {
            upgrade = true;
        }
    }
    let verdict = match (lengths.len(), chunked.is_some()) {
        (n, true) if n > 0 => Some(BOTH),
        (n, _) if n > 1 => Some(LENGTHS),
        // `chunked` alone, in one field: anything else (`gzip, chunked`, or `gzip` and
        // `chunked` in two fields, which a server reading the first would take for gzip).
        _ if te_fields > 1 || other_coding => Some(CODING),
        _ => None,
    };
    let next = if upgrade {
        Scan::Done
    } else if let Some(c) = chunked {
        if c {
            Scan::ChunkSize(Vec::new())
        } else {
            Scan::Done
        }
    } else if let Some(n) = lengths.first().and_then(|l| l.parse::<u64>().ok()) {
        if n == 0 {
            Scan::Head(Vec::new())
        } else {
            Scan::Body(n)
        }
    } else if lengths.is_empty() {
        Scan::Head(Vec::new())
    } else {
        Scan::Done
    };
    Some((verdict, next))
}

/// Where a request head ends (after its blank line), if it does within `bytes`: as httparse
/// reads lines, a line ends with LF, CRLF or not, so the blank line is `\n\n` or `\n\r\n`.
fn head_end(bytes: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = bytes[from..].iter().position(|b| *b == b'\n') {
        let at = from + i;
        match &bytes[at + 1..] {
            [b'\n', ..] => return Some(at + 2),
            [b'\r', b'\n', ..] => return Some(at + 3),
            _ => from = at + 1,
        }
    }
    None
}

/// How many empty lines (CR and LF bytes) lead `bytes`: httparse skips them before a request
/// line, so they belong to no head.
fn leading_empty_lines(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .position(|b| !matches!(b, b'\r' | b'\n'))
        .unwrap_or(bytes.len())
}

impl<T> Guarded<T> {
    /// Records the verdict on a complete head and follows its framing.
    fn judged(&mut self, head: &[u8]) {
        if head.len() > self.max_head {
            self.verdicts
                .lock()
                .expect("verdicts lock")
                .push_back(Some(TOO_LARGE));
            self.scan = Scan::Done;
            return;
        }
        // Most requests declare no framing: nothing to judge, and the next head follows.
        if !may_frame(head) {
            self.verdicts.lock().expect("verdicts lock").push_back(None);
            self.scan = Scan::Head(Vec::new());
            return;
        }
        match judge(head) {
            Some((verdict, next)) => {
                self.verdicts
                    .lock()
                    .expect("verdicts lock")
                    .push_back(verdict);
                self.scan = next;
            }
            None => self.scan = Scan::Done,
        }
    }

    /// Feeds bytes hyper just read through the framing state machine.
    fn scan(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if let Scan::Head(buf) = &self.scan
                && buf.is_empty()
            {
                bytes = &bytes[leading_empty_lines(bytes)..];
                // A whole head within these bytes, and none buffered: judged in place, no copy.
                if let Some(end) = head_end(bytes) {
                    self.judged(&bytes[..end]);
                    bytes = &bytes[end..];
                    continue;
                }
                if bytes.is_empty() {
                    return;
                }
            }
            match &mut self.scan {
                Scan::Done => return,
                Scan::Head(buf) => {
                    let before = buf.len();
                    buf.extend_from_slice(bytes);
                    let Some(end) = head_end(buf) else {
                        if buf.len() > MAX_HEAD {
                            self.scan = Scan::Done;
                        }
                        return;
                    };
                    let head = std::mem::take(buf);
                    bytes = &bytes[end - before..];
                    self.judged(&head[..end]);
                }
                Scan::Body(n) => {
                    let take = (*n).min(bytes.len() as u64);
                    *n -= take;
                    bytes = &bytes[take as usize..];
                    if *n == 0 {
                        self.scan = Scan::Head(Vec::new());
                    }
                }
                Scan::ChunkSize(line) => {
                    let Some(nl) = bytes.iter().position(|b| *b == b'\n') else {
                        line.extend_from_slice(bytes);
                        if line.len() > 1024 {
                            self.scan = Scan::Done;
                        }
                        return;
                    };
                    line.extend_from_slice(&bytes[..=nl]);
                    bytes = &bytes[nl + 1..];
                    let text = String::from_utf8_lossy(line);
                    let size = text.split([';', '\r', '\n']).next().unwrap_or("").trim();
                    self.scan = match u64::from_str_radix(size, 16) {
                        Ok(0) => Scan::Trailers(Vec::new()),
                        Ok(n) => Scan::ChunkData(n),
                        Err(_) => Scan::Done,
                    };
                }
                Scan::ChunkData(n) => {
                    let take = (*n).min(bytes.len() as u64);
                    *n -= take;
                    bytes = &bytes[take as usize..];
                    if *n == 0 {
                        self.scan = Scan::ChunkEnd(0);
                    }
                }
                Scan::ChunkEnd(seen) => {
                    // The CRLF after a chunk's data.
                    let take = (2 - *seen).min(bytes.len());
                    *seen += take;
                    bytes = &bytes[take..];
                    if *seen == 2 {
                        self.scan = Scan::ChunkSize(Vec::new());
                    }
                }
                Scan::Trailers(buf) => {
                    let before = buf.len();
                    buf.extend_from_slice(bytes);
                    let end = if buf.starts_with(b"\r\n") {
                        Some(2)
                    } else if buf.starts_with(b"\n") {
                        Some(1)
                    } else {
                        head_end(buf)
                    };
                    let Some(end) = end else {
                        if buf.len() > MAX_HEAD {
                            self.scan = Scan::Done;
                        }
                        return;
                    };
                    bytes = &bytes[end - before..];
                    self.scan = Scan::Head(Vec::new());
                }
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && !matches!(self.scan, Scan::Done)
        {
            self.get_mut().scan(&buf.filled()[before..]);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9113's count: name, value and 32 bytes per field, the pseudo-headers included.
    #[test]
    fn an_http2_header_list_is_sized_as_h2_sizes_it() {
        let req = hyper::Request::get("http://web:8080/a?b=1")
            .header("x-one", "12345")
            .body(())
            .unwrap();
        let pseudo = (7 + 3 + 32) + (7 + 4 + 32) + (10 + 8 + 32) + (5 + 6 + 32);
        assert_eq!(header_list_size(&req), pseudo + (5 + 5 + 32));
    }

    fn verdicts(chunks: &[&[u8]]) -> Vec<Option<&'static str>> {
        let (mut g, v) = Guarded::new((), 60 * 1024);
        for c in chunks {
            g.scan(c);
        }
        v.lock()
            .unwrap()
            .iter()
            .map(|r| r.map(|r| r.reason))
            .collect()
    }

    #[test]
    fn methods_are_those_envoys_http1_parser_knows() {
        let mut sorted = KNOWN_METHODS;
        sorted.sort_unstable();
        assert_eq!(sorted, KNOWN_METHODS, "binary search needs them sorted");
        let known = |m: &str| known_method(&hyper::Method::from_bytes(m.as_bytes()).unwrap());
        for m in [
            "GET", "DELETE", "PATCH", "PROPFIND", "M-SEARCH", "PURGE", "OPTIONS",
        ] {
            assert!(known(m), "{m}");
        }
        for m in ["PATCHX", "get", "FOO", "QUERY"] {
            assert!(!known(m), "{m}");
        }
    }

    #[test]
    fn only_heads_that_may_frame_are_parsed() {
        assert!(!may_frame(
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Length: 3\r\n\r\n"
        ));
        assert!(may_frame(b"POST / HTTP/1.1\r\nCONTENT-length: 3\r\n\r\n"));
        assert!(may_frame(
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
        ));
        assert!(may_frame(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"));
        assert!(may_frame(b"CONNECT a:443 HTTP/1.1\r\n\r\n"));
        assert!(may_frame(b"GET / HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n"));
        assert!(may_frame(b"PRI * HTTP/2.0\r\n\r\n"));
        assert!(may_frame(b"GET /\r\n\r\n"));
    }

    #[test]
    fn ordinary_pipelined_requests_pass() {
        let bytes = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloPOST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /last HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(verdicts(&[bytes]), vec![None, None, None, None]);
        // The same bytes one at a time.
        let split: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(verdicts(&split), vec![None, None, None, None]);
    }

    #[test]
    fn smuggling_shapes_are_flagged() {
        let both = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(
            verdicts(&[both]),
            vec![Some("both Content-Length and Transfer-Encoding")]
        );
        let te_first =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n";
        assert_eq!(
            verdicts(&[te_first]),
            vec![Some("both Content-Length and Transfer-Encoding")]
        );
        let dup = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(verdicts(&[dup]), vec![Some("more than one Content-Length")]);
    }

    #[test]
    fn every_split_into_two_reads_gives_the_same_verdicts() {
        // Heads judged in place (whole in a read) and heads buffered across reads must agree.
        let bytes = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST /x HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabcGET /last HTTP/1.1\r\nHost: a\r\n\r\n";
        let expected = vec![None, Some("more than one Content-Length"), None];
        for at in 0..=bytes.len() {
            let (a, b) = bytes.split_at(at);
            assert_eq!(verdicts(&[a, b]), expected, "split at {at}");
        }
    }

    #[test]
    fn no_prefix_puts_the_guard_out_of_step_with_the_parser() {
        let smuggled =
            b"POST /s HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let both = Some("both Content-Length and Transfer-Encoding");
        // Empty lines before a request line, which the parser skips.
        let mut lead = b"\r\n\r\n\n".to_vec();
        lead.extend_from_slice(smuggled);
        assert_eq!(verdicts(&[&lead]), vec![both]);
        let split: Vec<&[u8]> = lead.chunks(1).collect();
        assert_eq!(verdicts(&split), vec![both]);
        // A head ending in a bare LF before the smuggled one.
        let mut lf = b"GET / HTTP/1.1\nHost: a\r\n\n".to_vec();
        lf.extend_from_slice(smuggled);
        assert_eq!(verdicts(&[&lf]), vec![None, both]);
        // An upgrade other than WebSocket is refused, and the connection stays HTTP/1.1.
        let mut up = b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n".to_vec();
        up.extend_from_slice(smuggled);
        assert_eq!(verdicts(&[&up]), vec![None, both]);
    }

    #[test]
    fn codings_other_than_chunked_and_oversized_heads_are_refused() {
        let coding = Some("a Transfer-Encoding other than chunked");
        for head in [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ] {
            assert_eq!(verdicts(&[head]), vec![coding], "{}", String::from_utf8_lossy(head));
        }
        let (mut g, v) = Guarded::new((), 64);
        g.scan(format!("GET / HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "a".repeat(64)).as_bytes());
        assert_eq!(v.lock().unwrap()[0], Some(TOO_LARGE));
    }

    #[test]
    fn http2_and_upgrades_stop_the_scan() {
        assert!(verdicts(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00"]).is_empty());
        let up = b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nGET /not-http HTTP/1.1\r\n\r\n";
        assert_eq!(
            verdicts(&[up]),
            vec![None],
            "bytes after an upgrade are not requests"
        );
    }
}
