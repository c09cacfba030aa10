//! A scripted HTTP/1.1 upstream written on raw sockets, for the shapes a well-behaved server
//! library never sends on purpose: chunked bodies with trailers, `connection: close`, bodies
//! delimited by the close, idle connections closed by the server, interim 100 responses, and
//! framing that could smuggle. The path picks the answer (see [`answer`]); it counts the
//! connections it accepted and records each request's method, path and body length.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

pub struct RawUpstream {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<(String, String, usize)>>>,
}

impl RawUpstream {
    pub fn start() -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (acc, s) = (accepted.clone(), seen.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                acc.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                std::thread::spawn(move || serve(stream, &s));
            }
        });
        RawUpstream {
            addr,
            accepted,
            seen,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// (method, path, body length) of every request, in arrival order.
    pub fn seen(&self) -> Vec<(String, String, usize)> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, seen: &Mutex<Vec<(String, String, usize)>>) {
    let mut out = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let (mut length, mut chunked) = (0usize, false);
        let mut head = String::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end().to_ascii_lowercase();
            if !h.is_empty() {
                head.push_str(&h);
                head.push('\n');
            }
            if h.is_empty() {
                break;
            }
            if let Some(v) = h.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            if h.starts_with("transfer-encoding:") && h.ends_with("chunked") {
                chunked = true;
            }
        }
        if path == "/head-first" {
            // Answers at once, then reads the whole upload before it ends its answer: a proxy
            // that stops sending the body once the answer began is stuck.
            if out
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .is_err()
            {
                return;
            }
            let body = match chunked {
                true => read_chunked(&mut r),
                false => {
                    let mut b = vec![0; length];
                    r.read_exact(&mut b).unwrap();
                    b.len()
                }
            };
            let text = format!("received {body}");
            let _ = write!(out, "{:x}\r\n{text}\r\n0\r\n\r\n", text.len());
            seen.lock().unwrap().push((method, path, body));
            return;
        }
        if path == "/early-413" {
            // Refuses the upload before reading it, and reads nothing more: a proxy that
            // insists on sending the whole body first is stuck.
            let _ = out.write_all(
                b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 9\r\nconnection: close\r\n\r\ntoo large",
            );
            std::thread::sleep(Duration::from_secs(30));
            return;
        }
        let body = if chunked {
            read_chunked(&mut r)
        } else {
            let mut b = vec![0; length];
            r.read_exact(&mut b).unwrap();
            b.len()
        };
        seen.lock()
            .unwrap()
            .push((method.clone(), path.clone(), body));
        let (bytes, then) = answer(&method, &path, body, &head);
        if out.write_all(&bytes).is_err() {
            return;
        }
        match then {
            Then::KeepOpen => {}
            Then::Close => return,
            Then::CloseAfter(d) => {
                std::thread::sleep(d);
                return;
            }
        }
    }
}

fn read_chunked(r: &mut impl BufRead) -> usize {
    let mut total = 0;
    loop {
        let mut size = String::new();
        r.read_line(&mut size).unwrap();
        let n = usize::from_str_radix(size.trim().split(';').next().unwrap(), 16).unwrap();
        if n == 0 {
            // Trailers, up to the empty line.
            loop {
                let mut t = String::new();
                r.read_line(&mut t).unwrap();
                if t.trim().is_empty() {
                    return total;
                }
            }
        }
        let mut chunk = vec![0; n + 2];
        r.read_exact(&mut chunk).unwrap();
        total += n;
    }
}

enum Then {
    KeepOpen,
    Close,
    CloseAfter(Duration),
}

/// The response for a path, and what the connection does after it. `head` is the request's
/// header lines, lowercased.
fn answer(method: &str, path: &str, body: usize, head: &str) -> (Vec<u8>, Then) {
    let ok = |extra: &str, payload: &str| {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{extra}\r\n{payload}",
            payload.len()
        )
    };
    let (text, then) = match path {
        "/chunked" => (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
             5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-checksum: 42\r\n\r\n"
                .to_string(),
            Then::KeepOpen,
        ),
        "/close" => (ok("connection: close\r\n", "closing"), Then::Close),
        "/headers" => (ok("", head), Then::KeepOpen),
        // Hop-by-hop fields, for this connection only: the client's must not see them.
        "/hop-by-hop" => (
            ok(
                "connection: x-hop, close\r\nx-hop: 1\r\nkeep-alive: timeout=5\r\n\
                 proxy-connection: keep-alive\r\nx-end: 1\r\n",
                "hop",
            ),
            Then::Close,
        ),
        "/no-content-with-body" => (
            "HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\nhello".to_string(),
            Then::Close,
        ),
        "/garbage" => ("this is not http\r\n\r\n".to_string(), Then::Close),
        "/http10" => (
            "HTTP/1.0 200 OK\r\ncontent-length: 6\r\n\r\nold ok".to_string(),
            Then::Close,
        ),
        "/until-eof" => (
            "HTTP/1.1 200 OK\r\n\r\nthis body ends when the connection does".to_string(),
            Then::Close,
        ),
        "/idle-close" => (
            ok("", "then idle"),
            Then::CloseAfter(Duration::from_millis(100)),
        ),
        "/continue" => (
            format!("HTTP/1.1 100 Continue\r\n\r\n{}", ok("", "after continue")),
            Then::KeepOpen,
        ),
        "/length" if method == "HEAD" => (
            "HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n".to_string(),
            Then::KeepOpen,
        ),
        "/no-content" => (
            "HTTP/1.1 204 No Content\r\n\r\n".to_string(),
            Then::KeepOpen,
        ),
        "/upload" => (ok("", &format!("received {body}")), Then::KeepOpen),
        "/smuggle" => (
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n\
             0\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled"
                .to_string(),
            Then::KeepOpen,
        ),
        "/gzip" => (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n\
             5\r\nhello\r\n0\r\n\r\n"
                .to_string(),
            Then::Close,
        ),
        "/bad-chunk" => (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
                .to_string(),
            Then::Close,
        ),
        "/length-list" => (
            "HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\nok".to_string(),
            Then::KeepOpen,
        ),
        "/short" => (
            "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this".to_string(),
            Then::Close,
        ),
        _ => (ok("", "ok"), Then::KeepOpen),
    };
    (text.into_bytes(), then)
}
