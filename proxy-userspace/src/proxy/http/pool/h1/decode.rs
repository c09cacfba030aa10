//! Reading an HTTP/1.1 response: its head (status line and headers, parsed by httparse) and
//! how its body is framed (RFC 9112 section 6.3), plus the chunked decoder.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use hyper::{
    HeaderMap, Method, Response, StatusCode, Version,
    header::{self, HeaderName, HeaderValue},
};

use crate::proxy::http::headers::{has_token, tokens};

/// The largest response head meshd reads: Envoy's HTTP/1.1 client reads 80 KiB
/// (`MAX_RESPONSE_HEADERS_KB`).
pub const MAX_HEAD: usize = 80 * 1024;
/// The most header fields a response head may have.
const MAX_HEADERS: usize = 100;
/// The longest chunk-size line (with extensions) or trailer section accepted.
const MAX_LINE: usize = 4096;

/// Why a response could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    #[error("malformed response head: {0}")]
    Head(httparse::Error),
    #[error("response head larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("response head with more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("invalid response header {0}")]
    Header(String),
    #[error("response has both Transfer-Encoding and Content-Length")]
    BothFramings,
    #[error("response has an invalid Content-Length")]
    Length,
    #[error("response has an unsupported Transfer-Encoding {0:?}: only chunked is read")]
    Coding(String),
    #[error("unexpected 101 Switching Protocols on a request that asked for no upgrade")]
    Upgrade,
    #[error("malformed chunked response body: {0}")]
    Chunk(&'static str),
    #[error("204 No Content response declares a body ({0})")]
    NoContentBody(&'static str),
}

/// How the response body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection, which cannot be reused.
    Close,
}

/// A parsed response head.
pub struct Head {
    pub response: Response<()>,
    pub framing: Framing,
    /// Whether the connection may carry another request after this response.
    pub keep_alive: bool,
}

/// Parses a response head from the front of `buf`, removing it. `None`: more bytes are needed.
/// Interim (1xx) responses are skipped.
pub fn head(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, Invalid> {
    loop {
        // Left uninitialised: httparse writes the fields it finds, and zeroing all of them
        // (3 KiB) on every response cost as much as the parse (callgrind, bench http).
        let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut r = httparse::Response::new(&mut []);
        let n = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut r,
            buf,
            &mut fields,
        ) {
            // However its bytes arrived: in one read, a head past the limit parses whole.
            Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => return Err(Invalid::TooLarge),
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(Invalid::TooLarge),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(Invalid::TooManyHeaders),
            Err(e) => return Err(Invalid::Head(e)),
        };
        let code = r.code.unwrap_or(0);
        if code == 101 {
            return Err(Invalid::Upgrade);
        }
        if (100..200).contains(&code) {
            buf.advance(n);
            continue;
        }
        let status =
            StatusCode::from_u16(code).map_err(|_| Invalid::Head(httparse::Error::Status))?;
        let version = if r.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        // Names parsed now; values as offsets into the head, to share its bytes once split off.
        let base = buf.as_ptr() as usize;
        let fields: Vec<(Result<HeaderName, Invalid>, usize, usize)> = r
            .headers
            .iter()
            .map(|h| {
                let name = HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| Invalid::Header(h.name.to_string()));
                (name, h.value.as_ptr() as usize - base, h.value.len())
            })
            .collect();
        let raw = buf.split_to(n).freeze();
        let mut headers = HeaderMap::with_capacity(fields.len());
        for (name, at, len) in fields {
            let name = name?;
            let value = HeaderValue::from_maybe_shared(raw.slice(at..at + len))
                .map_err(|_| Invalid::Header(name.to_string()))?;
            headers.append(name, value);
        }
        let (framing, repeated_length) = framing(method, status, &headers)?;
        if let Some(n) = repeated_length {
            // RFC 9110 section 8.6: a length sent as a list of one value (`2, 2`) is not
            // passed on as such; the client gets the one value.
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        let keep_alive = version == Version::HTTP_11
            && framing != Framing::Close
            && !has_token(&headers, header::CONNECTION, "close");
        strip_hop_by_hop(&mut headers, framing);
        if status == StatusCode::NO_CONTENT {
            headers.remove(header::CONTENT_LENGTH);
        }
        let mut response = Response::new(());
        *response.status_mut() = status;
        // The client gets meshd's HTTP/1.1, as from Envoy, whatever the upstream speaks; its
        // version decided only the connection's reuse above.
        *response.headers_mut() = headers;
        return Ok(Some(Head {
            response,
            framing,
            keep_alive,
        }));
    }
}

/// Removes what describes the upstream connection, not the response, as Envoy's connection
/// manager does: the client's connection is meshd's, kept alive or closed on its own terms (an
/// upstream's `Connection: close` closes only the upstream connection). `Transfer-Encoding:
/// chunked` goes too, since meshd decoded the chunks.
fn strip_hop_by_hop(headers: &mut HeaderMap, framing: Framing) {
    // One pass over the names present, and only those present are removed: most responses
    // carry `Connection: keep-alive` alone, and a removal hashes its name (callgrind, bench
    // http: removing all five every time cost 3,700 instructions per response).
    let (mut connection, mut keep_alive, mut proxy_connection, mut upgrade, mut te) =
        (false, false, false, false, false);
    for k in headers.keys() {
        if k == header::CONNECTION {
            connection = true;
        } else if k == header::TRANSFER_ENCODING {
            te = true;
        } else if k == header::UPGRADE {
            upgrade = true;
        } else if k == KEEP_ALIVE {
            keep_alive = true;
        } else if k == PROXY_CONNECTION {
            proxy_connection = true;
        }
    }
    if connection {
        // The fields it names, but for its usual tokens, which name none present.
        let named: Vec<HeaderName> = tokens(headers, header::CONNECTION)
            .filter(|t| !t.eq_ignore_ascii_case("keep-alive") && !t.eq_ignore_ascii_case("close"))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
        headers.remove(header::CONNECTION);
    }
    if keep_alive {
        headers.remove(KEEP_ALIVE);
    }
    if proxy_connection {
        headers.remove(PROXY_CONNECTION);
    }
    if upgrade {
        headers.remove(header::UPGRADE);
    }
    // `framing` refused every coding but `chunked` alone, so a chunked body's field names
    // nothing else.
    if te && framing == Framing::Chunked {
        headers.remove(header::TRANSFER_ENCODING);
    }
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// How the body is framed, and the length to send on when the Content-Length was written more
/// than once (in several fields or as a list).
fn framing(
    method: &Method,
    status: StatusCode,
    headers: &HeaderMap,
) -> Result<(Framing, Option<u64>), Invalid> {
    if status == StatusCode::NO_CONTENT {
        // As Envoy's HTTP/1.1 client: a 204 declaring a body is a protocol error, and a zero
        // Content-Length is dropped (an HTTP/2 client refuses any on a 204).
        if headers.contains_key(header::TRANSFER_ENCODING) {
            return Err(Invalid::NoContentBody("Transfer-Encoding"));
        }
        if headers.get_all(header::CONTENT_LENGTH).iter().any(|v| {
            v.as_bytes()
                .iter()
                .any(|b| !matches!(b, b'0' | b' ' | b','))
        }) {
            return Err(Invalid::NoContentBody("a non-zero Content-Length"));
        }
        return Ok((Framing::Empty, None));
    }
    if *method == Method::HEAD || status == StatusCode::NOT_MODIFIED {
        return Ok((Framing::Empty, None));
    }
    let te = headers.contains_key(header::TRANSFER_ENCODING);
    let cl = headers.get_all(header::CONTENT_LENGTH);
    if te {
        if cl.iter().next().is_some() {
            return Err(Invalid::BothFramings);
        }
        // As Envoy's HTTP/1.1 codec: a coding other than chunked is a protocol error (502 UPE),
        // as meshd refuses it in a request (501).
        let mut codings = tokens(headers, header::TRANSFER_ENCODING);
        let only_chunked = codings
            .next()
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
            && codings.next().is_none();
        if !only_chunked {
            let value = headers.get_all(header::TRANSFER_ENCODING).iter();
            let value: Vec<&str> = value.map(|v| v.to_str().unwrap_or("?")).collect();
            return Err(Invalid::Coding(value.join(", ")));
        }
        return Ok((Framing::Chunked, None));
    }
    let mut length: Option<u64> = None;
    let mut written = 0;
    for v in cl.iter() {
        // Each value may itself be a list; all must agree.
        for part in v.to_str().map_err(|_| Invalid::Length)?.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Invalid::Length);
            }
            let n: u64 = part.parse().map_err(|_| Invalid::Length)?;
            if length.is_some_and(|l| l != n) {
                return Err(Invalid::Length);
            }
            length = Some(n);
            written += 1;
        }
    }
    let framing = match length {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None => Framing::Close,
    };
    Ok((framing, length.filter(|_| written > 1)))
}

/// Where the chunked decoder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk, with this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: the trailer section.
    Trailers,
    Done,
}

/// What the chunked decoder made of the buffered bytes.
pub enum Step {
    /// More bytes are needed.
    More,
    Data(Bytes),
    Trailers(HeaderMap),
    End,
}

impl Chunked {
    /// Decodes what it can from the front of `buf`.
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, Invalid> {
        loop {
            match *self {
                Chunked::Size => {
                    let Some(end) = find_crlf(buf) else {
                        return if buf.len() > MAX_LINE {
                            Err(Invalid::Chunk("chunk-size line too long"))
                        } else {
                            Ok(Step::More)
                        };
                    };
                    let line = &buf[..end];
                    let digits = line
                        .iter()
                        .position(|b| !b.is_ascii_hexdigit())
                        .unwrap_or(line.len());
                    if digits == 0 || digits > 15 {
                        return Err(Invalid::Chunk("invalid chunk size"));
                    }
                    // After the size: optional whitespace and extensions, which are ignored.
                    if !matches!(line.get(digits), None | Some(b';' | b' ' | b'\t')) {
                        return Err(Invalid::Chunk("invalid chunk size"));
                    }
                    let hex = std::str::from_utf8(&line[..digits]).expect("hex digits");
                    let size = u64::from_str_radix(hex, 16).expect("at most 15 hex digits");
                    buf.advance(end + 2);
                    *self = if size == 0 {
                        Chunked::Trailers
                    } else {
                        Chunked::Data(size)
                    };
                }
                Chunked::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let take = left.min(buf.len() as u64) as usize;
                    let data = buf.split_to(take).freeze();
                    *self = if take as u64 == left {
                        Chunked::DataEnd
                    } else {
                        Chunked::Data(left - take as u64)
                    };
                    return Ok(Step::Data(data));
                }
                Chunked::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Invalid::Chunk("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    *self = Chunked::Size;
                }
                Chunked::Trailers => {
                    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let n = match httparse::parse_headers(buf, &mut fields) {
                        Ok(httparse::Status::Complete((n, _))) => n,
                        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                            return Err(Invalid::Chunk("trailers too large"));
                        }
                        Ok(httparse::Status::Partial) => return Ok(Step::More),
                        Err(_) => return Err(Invalid::Chunk("malformed trailers")),
                    };
                    let mut trailers = HeaderMap::new();
                    for f in fields.iter().take_while(|f| !f.name.is_empty()) {
                        let name = HeaderName::from_bytes(f.name.as_bytes())
                            .map_err(|_| Invalid::Chunk("invalid trailer name"))?;
                        let value = HeaderValue::from_bytes(f.value)
                            .map_err(|_| Invalid::Chunk("invalid trailer value"))?;
                        trailers.append(name, value);
                    }
                    buf.advance(n);
                    *self = Chunked::Done;
                    crate::proxy::http::headers::strip_from_trailers(&mut trailers);
                    if !trailers.is_empty() {
                        return Ok(Step::Trailers(trailers));
                    }
                }
                Chunked::Done => return Ok(Step::End),
            }
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str, method: Method) -> Result<Option<Head>, Invalid> {
        head(&mut BytesMut::from(raw), &method)
    }

    #[test]
    fn a_response_head_with_its_length() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\ncontent-length: 3\r\nx-a: b\r\n\r\nok\n");
        let h = head(&mut buf, &Method::GET).unwrap().unwrap();
        assert_eq!(h.response.status(), 200);
        assert_eq!(h.response.headers()["x-a"], "b");
        assert_eq!(h.framing, Framing::Length(3));
        assert!(h.keep_alive);
        assert_eq!(&buf[..], b"ok\n");
    }

    #[test]
    fn partial_heads_wait_for_more() {
        assert!(
            parse("HTTP/1.1 200 OK\r\ncontent-le", Method::GET)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn interim_responses_are_skipped() {
        let h = parse(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            Method::POST,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.response.status(), 204);
        assert_eq!(h.framing, Framing::Empty);
    }

    #[test]
    fn framing_by_method_status_and_headers() {
        let f = |raw: &str, m: Method| parse(raw, m).unwrap().unwrap();
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", Method::HEAD).framing,
            Framing::Empty
        );
        assert_eq!(
            f("HTTP/1.1 304 Not Modified\r\n\r\n", Method::GET).framing,
            Framing::Empty
        );
        assert_eq!(
            f(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\n\r\n",
                Method::GET
            )
            .framing,
            Framing::Chunked
        );
        let close = f("HTTP/1.1 200 OK\r\n\r\n", Method::GET);
        assert_eq!(close.framing, Framing::Close);
        assert!(!close.keep_alive);
        assert!(
            !f(
                "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n",
                Method::GET
            )
            .keep_alive
        );
        assert!(!f("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", Method::GET).keep_alive);
        for repeated in [
            "content-length: 4\r\ncontent-length: 4",
            "content-length: 4, 4",
        ] {
            let h = f(
                &format!("HTTP/1.1 200 OK\r\n{repeated}\r\n\r\n"),
                Method::GET,
            );
            assert_eq!(h.framing, Framing::Length(4));
            let sent: Vec<_> = h
                .response
                .headers()
                .get_all("content-length")
                .iter()
                .collect();
            assert_eq!(sent, ["4"], "one value goes on, not {repeated:?}");
        }
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        for raw in [
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: +3\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 3, 4\r\n\r\n",
            // Envoy's HTTP/1.1 codec reads no coding but chunked.
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, chunked\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        ] {
            assert!(parse(raw, Method::GET).is_err(), "{raw}");
        }
    }

    #[test]
    fn hop_by_hop_headers_stay_with_the_upstream_connection() {
        let h = parse(
            "HTTP/1.1 200 OK\r\nconnection: x-hop, close\r\nx-hop: 1\r\nkeep-alive: timeout=5\r\nproxy-connection: keep-alive\r\nupgrade: h2c\r\ntransfer-encoding: chunked\r\nx-end: 1\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        let names: Vec<&str> = h.response.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-end"]);
        assert_eq!(h.framing, Framing::Chunked);
        assert!(
            !h.keep_alive,
            "the upstream's close still ends its connection"
        );
    }

    #[test]
    fn a_204_declares_no_body() {
        let h = parse(
            "HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert!(h.response.headers().get("content-length").is_none());
        assert_eq!(h.framing, Framing::Empty);
        for raw in [
            "HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n",
            "HTTP/1.1 204 No Content\r\ntransfer-encoding: chunked\r\n\r\n",
        ] {
            assert!(
                matches!(parse(raw, Method::GET), Err(Invalid::NoContentBody(_))),
                "{raw}"
            );
        }
    }

    #[test]
    fn oversized_heads_are_refused() {
        let raw = format!("HTTP/1.1 200 OK\r\nx-big: {}", "a".repeat(MAX_HEAD + 1));
        assert!(matches!(parse(&raw, Method::GET), Err(Invalid::TooLarge)));
        // Whole in the buffer at once, too.
        let whole = format!("{raw}\r\ncontent-length: 0\r\n\r\n");
        assert!(matches!(parse(&whole, Method::GET), Err(Invalid::TooLarge)));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        let many = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert!(matches!(
            parse(&many, Method::GET),
            Err(Invalid::TooManyHeaders)
        ));
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        let mut buf =
            BytesMut::from("4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\ngrpc-status: 0\r\n\r\nNEXT");
        let mut c = Chunked::Size;
        let mut data = Vec::new();
        let mut trailers = None;
        loop {
            match c.step(&mut buf).unwrap() {
                Step::Data(d) => data.extend_from_slice(&d),
                Step::Trailers(t) => trailers = Some(t),
                Step::End => break,
                Step::More => panic!("all bytes were there"),
            }
        }
        assert_eq!(data, b"Wikipedia");
        assert_eq!(trailers.unwrap()["grpc-status"], "0");
        assert_eq!(&buf[..], b"NEXT", "the next response's bytes stay");
    }

    #[test]
    fn chunked_bodies_decode_byte_by_byte() {
        let raw = b"3\r\nabc\r\n0\r\n\r\n";
        let mut buf = BytesMut::new();
        let mut c = Chunked::Size;
        let mut data = Vec::new();
        let mut ended = false;
        for b in raw {
            buf.extend_from_slice(&[*b]);
            loop {
                match c.step(&mut buf).unwrap() {
                    Step::Data(d) => data.extend_from_slice(&d),
                    Step::Trailers(_) => {}
                    Step::End => {
                        ended = true;
                        break;
                    }
                    Step::More => break,
                }
            }
        }
        assert!(ended);
        assert_eq!(data, b"abc");
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for raw in ["zz\r\n", "3\r\nabcXX", "3x\r\nabc\r\n"] {
            let mut buf = BytesMut::from(raw);
            let mut c = Chunked::Size;
            let mut r = Ok(Step::More);
            for _ in 0..4 {
                r = c.step(&mut buf);
                if !matches!(r, Ok(Step::Data(_))) {
                    break;
                }
            }
            assert!(r.is_err(), "{raw}");
        }
    }
}
