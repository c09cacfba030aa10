//! Writing an HTTP/1.1 request head (RFC 9112 section 3) and framing its body: the head's
//! bytes in one buffer, the body as Content-Length bytes or as chunks.

use bytes::{BufMut, BytesMut};
use hyper::{
    HeaderMap, Method, Uri,
    header::{self, HeaderName, HeaderValue},
};

/// How the request body is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body bytes follow the head.
    None,
    /// Exactly this many bytes follow.
    Length(u64),
    /// Chunks, ended by a zero-sized chunk and the trailers.
    Chunked,
}

/// Chooses the body's framing: a Content-Length the request declares, else chunked when it
/// declares Transfer-Encoding or its length is unknown, else the known length (none for an
/// empty body of a method that carries none).
pub fn framing(method: &Method, headers: &HeaderMap, known: Option<u64>, end: bool) -> BodyFraming {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return BodyFraming::Chunked;
    }
    if let Some(n) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        return BodyFraming::Length(n);
    }
    match known {
        _ if end && !carries_body(method) => BodyFraming::None,
        Some(0) if !carries_body(method) => BodyFraming::None,
        Some(n) => BodyFraming::Length(n),
        None if end => BodyFraming::None,
        None => BodyFraming::Chunked,
    }
}

/// Methods whose requests normally carry a body: an empty one is sent as `content-length: 0`.
fn carries_body(m: &Method) -> bool {
    *m == Method::POST || *m == Method::PUT || *m == Method::PATCH
}

/// Appends the request line and headers, with the framing header `body` needs and a Host
/// taken from the URI when the request has none (an HTTP/2 request carries `:authority`).
/// Each `extra` header that has a value is written in place of any header of its name.
pub fn head<const N: usize>(
    out: &mut BytesMut,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: BodyFraming,
    extra: [(&HeaderName, &Option<HeaderValue>); N],
) {
    out.put_slice(method.as_str().as_bytes());
    out.put_u8(b' ');
    if *method == Method::CONNECT {
        out.put_slice(uri.authority().map_or("", |a| a.as_str()).as_bytes());
    } else {
        // Origin form: an absolute URI's scheme and authority go into Host.
        let target = uri.path_and_query().map_or("/", |p| p.as_str());
        out.put_slice(if target.is_empty() { "/" } else { target }.as_bytes());
    }
    out.put_slice(b" HTTP/1.1\r\n");
    if !headers.contains_key(header::HOST)
        && let Some(a) = uri.authority()
    {
        line(out, b"host", a.as_str().as_bytes());
    }
    for (name, value) in headers {
        // The framing below is the only one sent.
        if body != BodyFraming::Chunked && name == header::TRANSFER_ENCODING {
            continue;
        }
        if name == header::CONTENT_LENGTH || extra.iter().any(|(n, v)| v.is_some() && *n == name) {
            continue;
        }
        line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    for (name, value) in extra {
        if let Some(value) = value {
            line(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    match body {
        BodyFraming::None => {}
        BodyFraming::Length(n) => {
            line(
                out,
                b"content-length",
                itoa::Buffer::new().format(n).as_bytes(),
            );
        }
        BodyFraming::Chunked if !headers.contains_key(header::TRANSFER_ENCODING) => {
            line(out, b"transfer-encoding", b"chunked");
        }
        BodyFraming::Chunked => {}
    }
    out.put_slice(b"\r\n");
}

fn line(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// A chunk's size line.
pub fn chunk_start(out: &mut BytesMut, len: usize) {
    out.put_slice(format!("{len:X}\r\n").as_bytes());
}

/// The last chunk and the trailers that end a chunked body.
pub fn chunked_end(out: &mut BytesMut, trailers: Option<&HeaderMap>) {
    out.put_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(method: Method, uri: &str, headers: &[(&str, &str)], body: BodyFraming) -> String {
        let mut h = HeaderMap::new();
        for (n, v) in headers {
            h.append(
                header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let mut out = BytesMut::new();
        head(&mut out, &method, &uri.parse().unwrap(), &h, body, []);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn a_get_is_written_in_origin_form_with_its_headers() {
        assert_eq!(
            encode(
                Method::GET,
                "/a?b=c",
                &[("host", "svc"), ("x-a", "1")],
                BodyFraming::None
            ),
            "GET /a?b=c HTTP/1.1\r\nhost: svc\r\nx-a: 1\r\n\r\n"
        );
    }

    #[test]
    fn an_absolute_uri_becomes_origin_form_and_host() {
        assert_eq!(
            encode(Method::GET, "http://svc:8080/p", &[], BodyFraming::None),
            "GET /p HTTP/1.1\r\nhost: svc:8080\r\n\r\n"
        );
    }

    #[test]
    fn an_extra_header_with_a_value_replaces_the_requests_own() {
        let mut h = HeaderMap::new();
        h.insert("x-envoy-attempt-count", HeaderValue::from_static("7"));
        h.insert("x-forwarded-client-cert", HeaderValue::from_static("kept"));
        h.insert("x-a", HeaderValue::from_static("1"));
        let mut out = BytesMut::new();
        let name = HeaderName::from_static("x-envoy-attempt-count");
        let value = Some(HeaderValue::from_static("2"));
        let unset = HeaderName::from_static("x-forwarded-client-cert");
        head(
            &mut out,
            &Method::GET,
            &"/".parse().unwrap(),
            &h,
            BodyFraming::None,
            [(&name, &value), (&unset, &None)],
        );
        assert_eq!(
            &out[..],
            b"GET / HTTP/1.1\r\nx-forwarded-client-cert: kept\r\nx-a: 1\r\nx-envoy-attempt-count: 2\r\n\r\n"
        );
    }

    #[test]
    fn the_framing_header_is_the_one_chosen() {
        assert_eq!(
            encode(
                Method::POST,
                "/",
                &[("host", "h"), ("content-length", "3")],
                BodyFraming::Length(3)
            ),
            "POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 3\r\n\r\n"
        );
        assert_eq!(
            encode(Method::POST, "/", &[("host", "h")], BodyFraming::Chunked),
            "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        assert_eq!(
            encode(
                Method::POST,
                "/",
                &[("transfer-encoding", "chunked")],
                BodyFraming::Chunked
            ),
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn framing_follows_the_request() {
        let none = HeaderMap::new();
        let mut cl = HeaderMap::new();
        cl.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        let mut te = HeaderMap::new();
        te.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert_eq!(
            framing(&Method::GET, &none, Some(0), true),
            BodyFraming::None
        );
        assert_eq!(
            framing(&Method::POST, &none, Some(0), true),
            BodyFraming::Length(0)
        );
        assert_eq!(
            framing(&Method::POST, &none, Some(7), false),
            BodyFraming::Length(7)
        );
        assert_eq!(
            framing(&Method::POST, &none, None, false),
            BodyFraming::Chunked
        );
        assert_eq!(
            framing(&Method::POST, &cl, None, false),
            BodyFraming::Length(5)
        );
        assert_eq!(
            framing(&Method::POST, &te, Some(4), false),
            BodyFraming::Chunked
        );
    }

    #[test]
    fn chunks_and_trailers() {
        let mut out = BytesMut::new();
        chunk_start(&mut out, 26);
        out.put_slice(b"abcdefghijklmnopqrstuvwxyz\r\n");
        let mut t = HeaderMap::new();
        t.insert("x-sum", HeaderValue::from_static("9"));
        chunked_end(&mut out, Some(&t));
        assert_eq!(
            &out[..],
            b"1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-sum: 9\r\n\r\n"
        );
    }
}
