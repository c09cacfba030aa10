//! meshd's HTTP/1.1 client connection: requests are written and responses read by the
//! request's own task, with no connection task between them. A response body owns the
//! connection while it is read and hands it back, ready for the next request, at its end.

mod body;
mod decode;
mod encode;

use std::{
    future::{Future, poll_fn},
    io,
    os::fd::RawFd,
    pin::Pin,
    sync::Mutex,
    task::{Context, Poll},
};

use bytes::{BufMut, BytesMut};
use hyper::body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};

pub use self::body::ResponseBody;
use self::{decode::Head, encode::BodyFraming};
use super::{Io, Slot};
use crate::proxy::http::{
    Body,
    body::BoxError,
    deadline::{EXPECTED_TIMEOUT, GRPC_TIMEOUT},
    replay::{ATTEMPT_COUNT, FORWARDED_CLIENT_CERT, Outgoing},
};

/// Request bytes gathered before a write: the head and a small body go out in one send.
const WRITE_BATCH: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("writing the request failed: {0}")]
    Write(io::Error),
    #[error("reading the response failed: {0}")]
    Read(io::Error),
    #[error("the upstream closed the connection before a complete response")]
    Closed,
    #[error("{0}")]
    Invalid(#[from] decode::Invalid),
    #[error(
        "the request body ended after {sent} bytes of the {declared} its Content-Length declared"
    )]
    BodyLength { sent: u64, declared: u64 },
    #[error("reading the request body failed: {0}")]
    Body(BoxError),
}

/// The rest of a request body still being sent after the upstream's answer began.
type Upload = Pin<Box<dyn Future<Output = Result<(), H1Error>> + Send>>;

/// An open upstream connection and the bytes read from it but not yet used.
pub struct Conn {
    /// Only ever reached through `get_mut` (no locking): the Mutex makes the connection
    /// `Sync`, as response bodies must be, for streams that are only `Send`.
    io: Mutex<Box<dyn Io>>,
    buf: BytesMut,
    /// A request body the upstream began to answer before its end: sent on, as Envoy sends it,
    /// while the response is read (see [`Conn::drive_upload`]). Reached through `get_mut`.
    upload: Option<Mutex<Upload>>,
    /// The TCP socket `io` writes to as it is (no TLS inside), where what the kernel holds
    /// can be looked at directly.
    socket: Option<RawFd>,
    /// One of the cluster's connections, held while the connection is open.
    _slot: Slot,
}

impl Conn {
    /// `socket`: the TCP socket under `io` when `io` is that socket itself.
    pub fn new(io: Box<dyn Io>, socket: Option<RawFd>, slot: Slot) -> Conn {
        Conn {
            io: Mutex::new(io),
            buf: BytesMut::new(),
            upload: None,
            socket,
            _slot: slot,
        }
    }

    /// Moves on the rest of a request body the upstream began to answer early, if any. Its
    /// failure (the upstream stopped reading, the client's body broke) only ends the upload:
    /// the response is read on, and the connection is not reused.
    fn drive_upload(&mut self, cx: &mut Context<'_>) {
        let Some(upload) = self.upload.as_mut() else {
            return;
        };
        let upload = upload.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Poll::Ready(done) = upload.as_mut().poll(cx) {
            if let Err(e) = done {
                tracing::debug!(error = %e, "the request body's upload ended early");
            }
            self.upload = None;
        }
    }

    fn io(&mut self) -> &mut Box<dyn Io> {
        io_of(&mut self.io)
    }

    /// Whether an idle connection can carry a request: nothing arrived on it since its last
    /// response, neither bytes nor the upstream's close. A TCP socket is asked directly: the
    /// runtime's readiness, cleared by the short read that ended the last response, does not
    /// know yet of a close or of stray bytes that came just after it (a request sent on would
    /// fail, or be answered by them, perhaps for another workload).
    pub fn is_usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        if let Some(fd) = self.socket {
            let waiting = crate::proxy::sockopt::peek_waiting(&fd, &mut [0u8; 1]);
            return waiting.is_err_and(|e| e.kind() == io::ErrorKind::WouldBlock);
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        Pin::new(self.io())
            .poll_read(&mut cx, &mut probe)
            .is_pending()
    }

    /// Reads more of the upstream's bytes into the buffer; 0 at the upstream's end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        poll_fill(io_of(&mut self.io), &mut self.buf, cx)
    }

    /// Sends `req` and reads the response head. The body is read through [`ResponseBody`].
    pub async fn send(&mut self, req: Outgoing<'_>) -> Result<Head, H1Error> {
        let mut out = BytesMut::with_capacity(512);
        let method = match req {
            Outgoing::Buffered {
                req,
                attempt,
                grpc_timeout,
                expected_timeout,
                client_cert,
            } => {
                // Head and body from the buffered request, in one write.
                let end = req.body.is_empty() && req.trailers.is_none();
                let framing = encode::framing(
                    &req.method,
                    &req.headers,
                    Some(req.body.len() as u64).filter(|_| req.trailers.is_none()),
                    end,
                );
                let (attempt_name, cert_name) = (ATTEMPT_COUNT, FORWARDED_CLIENT_CERT);
                let extra = [
                    (&attempt_name, &attempt),
                    (&GRPC_TIMEOUT, &grpc_timeout),
                    (&EXPECTED_TIMEOUT, &expected_timeout),
                    (&cert_name, &client_cert),
                ];
                encode::head(
                    &mut out,
                    &req.method,
                    &req.uri,
                    &req.headers,
                    framing,
                    extra,
                );
                match framing {
                    BodyFraming::Chunked => {
                        if !req.body.is_empty() {
                            encode::chunk_start(&mut out, req.body.len());
                            out.put_slice(&req.body);
                            out.put_slice(b"\r\n");
                        }
                        encode::chunked_end(&mut out, req.trailers.as_ref());
                    }
                    BodyFraming::Length(n) if n != req.body.len() as u64 => {
                        return Err(H1Error::BodyLength {
                            sent: req.body.len() as u64,
                            declared: n,
                        });
                    }
                    BodyFraming::Length(_) => out.put_slice(&req.body),
                    BodyFraming::None => {}
                }
                req.method.clone()
            }
            Outgoing::Owned(req) => {
                let (parts, body) = req.into_parts();
                let framing = encode::framing(
                    &parts.method,
                    &parts.headers,
                    body.size_hint().exact(),
                    body.is_end_stream(),
                );
                encode::head(
                    &mut out,
                    &parts.method,
                    &parts.uri,
                    &parts.headers,
                    framing,
                    [],
                );
                if framing != BodyFraming::None
                    && let Some(early) = self
                        .stream_body(std::mem::take(&mut out), body, framing, &parts.method)
                        .await?
                {
                    return Ok(early);
                }
                parts.method
            }
        };
        // The requests that became ready in one turn of the event loop go out together, after
        // it: an upstream then reads several at one wakeup, where a write each as soon as it
        // was ready woke it once per request. Under `bench http`'s wrk load that took 0.8–1.7 µs
        // of the backend's CPU per request (of 7.3–8.3), and raised meshd's throughput in 7 of
        // 8 paired rounds (median +4.7%); the cost is one more turn of the scheduler.
        tokio::task::yield_now().await;
        self.io().write_all(&out).await.map_err(H1Error::Write)?;
        self.io().flush().await.map_err(H1Error::Write)?;
        read_head(io_of(&mut self.io), &mut self.buf, &method).await
    }

    /// Writes a streamed body after the head in `out`, while watching for the response. The
    /// upstream may answer before it has all of it: as Envoy's, the upload goes on while the
    /// response is read (an upstream that streams its answer to a streamed request, or reads
    /// the body after answering), and stops when the response ends first (a 413, say). A
    /// connection answered early is not reused.
    async fn stream_body(
        &mut self,
        out: BytesMut,
        body: Body,
        framing: BodyFraming,
        method: &hyper::Method,
    ) -> Result<Option<Head>, H1Error> {
        // The halves apart: the upload owns the writing one, so it can outlive this call.
        let io = std::mem::replace(self.io(), Box::new(Detached));
        let (mut rd, wr) = tokio::io::split(io);
        let mut upload = Box::pin(upload(wr, out, body, framing));
        let first = {
            let mut early = std::pin::pin!(read_head(&mut rd, &mut self.buf, method));
            poll_fn(|cx| {
                // An answer that is there goes first: the upload may fail because of it.
                if let Poll::Ready(head) = early.as_mut().poll(cx) {
                    return Poll::Ready(Err(head));
                }
                upload.as_mut().poll(cx).map(Ok)
            })
            .await
        };
        match first {
            Ok(written) => {
                *self.io() = Box::new(rd.unsplit(written?));
                Ok(None)
            }
            Err(head) => {
                let mut head = head?;
                head.keep_alive = false;
                *self.io() = Box::new(ReadSide(rd));
                let rest: Upload = Box::pin(async move { upload.await.map(drop) });
                self.upload = Some(Mutex::new(rest));
                Ok(Some(head))
            }
        }
    }
}

/// Sends the rest of a streamed request (`out`, then `body`) on `w`; gives the writing half
/// back at its end.
async fn upload(
    mut w: WriteHalf<Box<dyn Io>>,
    mut out: BytesMut,
    mut body: Body,
    framing: BodyFraming,
) -> Result<WriteHalf<Box<dyn Io>>, H1Error> {
    write_body(&mut w, &mut out, &mut body, framing).await?;
    w.write_all(&out).await.map_err(H1Error::Write)?;
    w.flush().await.map_err(H1Error::Write)?;
    Ok(w)
}

/// The connection's stream while its writing half is away: never used.
struct Detached;

/// The reading half of a connection whose request body is still being sent: the response is
/// read from it, and nothing else is written to it.
struct ReadSide(ReadHalf<Box<dyn Io>>);

fn unused() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "no request is written here")
}

impl AsyncRead for Detached {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(Err(unused()))
    }
}

impl AsyncRead for ReadSide {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

/// Neither takes a write: the writing half is elsewhere.
macro_rules! write_nothing {
    ($t:ty) => {
        impl AsyncWrite for $t {
            fn poll_write(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                _: &[u8],
            ) -> Poll<io::Result<usize>> {
                Poll::Ready(Err(unused()))
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
    };
}
write_nothing!(Detached);
write_nothing!(ReadSide);

/// The connection's stream: the Mutex is only there to make `Conn` `Sync`, never locked.
fn io_of(io: &mut Mutex<Box<dyn Io>>) -> &mut Box<dyn Io> {
    io.get_mut().unwrap_or_else(|p| p.into_inner())
}

/// Reads more of `io`'s bytes into `buf`; 0 at its end.
fn poll_fill(
    io: &mut (impl AsyncRead + Unpin + ?Sized),
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(8 * 1024);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// Reads from `io` until `buf` holds a whole response head (interim ones skipped).
async fn read_head(
    io: &mut (impl AsyncRead + Unpin + ?Sized),
    buf: &mut BytesMut,
    method: &hyper::Method,
) -> Result<Head, H1Error> {
    loop {
        if let Some(head) = decode::head(buf, method)? {
            return Ok(head);
        }
        match poll_fn(|cx| poll_fill(io, buf, cx)).await {
            Ok(0) => return Err(H1Error::Closed),
            Ok(_) => {}
            Err(e) => return Err(H1Error::Read(e)),
        }
    }
}

/// Frames the body after the head in `out`, writing whenever `out` fills up, and whenever the
/// body has nothing more ready: the upstream gets the head and what body there is without
/// waiting for more (a stream that waits for replies, an upstream that answers early).
async fn write_body(
    w: &mut (impl tokio::io::AsyncWrite + Unpin),
    out: &mut BytesMut,
    body: &mut Body,
    framing: BodyFraming,
) -> Result<(), H1Error> {
    let chunked = framing == BodyFraming::Chunked;
    let mut sent = 0u64;
    let mut trailers = None;
    loop {
        let next = match crate::proxy::http::body::ready_frame(body).await {
            Poll::Ready(next) => next,
            Poll::Pending => {
                if !out.is_empty() {
                    w.write_all(out).await.map_err(H1Error::Write)?;
                    out.clear();
                    w.flush().await.map_err(H1Error::Write)?;
                }
                poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
            }
        };
        let Some(frame) = next else { break };
        let frame = frame.map_err(H1Error::Body)?;
        let data = match frame.into_data() {
            Ok(d) => d,
            Err(f) => {
                trailers = f.into_trailers().ok();
                continue;
            }
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        if let BodyFraming::Length(declared) = framing
            && sent > declared
        {
            return Err(H1Error::BodyLength { sent, declared });
        }
        if chunked {
            encode::chunk_start(out, data.len());
        }
        if out.len() + data.len() > WRITE_BATCH {
            w.write_all(out).await.map_err(H1Error::Write)?;
            out.clear();
            w.write_all(&data).await.map_err(H1Error::Write)?;
        } else {
            out.put_slice(&data);
        }
        if chunked {
            out.put_slice(b"\r\n");
        }
    }
    match framing {
        BodyFraming::Chunked => encode::chunked_end(out, trailers.as_ref()),
        BodyFraming::Length(declared) if sent != declared => {
            return Err(H1Error::BodyLength { sent, declared });
        }
        _ => {}
    }
    Ok(())
}

/// A response whose head was read, with the body still on its connection.
pub fn response(conn: Conn, head: Head) -> hyper::Response<ResponseBody> {
    let Head {
        response,
        framing,
        keep_alive,
    } = head;
    response.map(|()| ResponseBody::new(conn, framing, keep_alive))
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;
    use crate::proxy::http::pool::cluster::ClusterPool;

    /// A connection the upstream closed, or sent stray bytes on, just after its last response
    /// is not reused, though the runtime has not looked at the socket since that response's
    /// read (which, shorter than the buffer, cleared its readiness).
    #[tokio::test]
    async fn what_arrives_after_a_response_makes_the_connection_unusable() {
        for stray in [
            Some(&b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..]),
            None,
        ] {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let (mut server, _) = listener.accept().unwrap();
            let fd = client.as_raw_fd();
            let slot = std::sync::Arc::new(ClusterPool::new("c"))
                .try_slot(super::super::Counter::Connections, 1)
                .unwrap();
            let mut conn = Conn::new(Box::new(client), Some(fd), slot);
            std::io::Write::write_all(&mut server, b"the last response").unwrap();
            let n = poll_fn(|cx| conn.poll_fill(cx)).await.unwrap();
            assert_eq!(n, 17);
            conn.buf.clear();
            assert!(conn.is_usable(), "nothing came after the response");
            match stray {
                Some(bytes) => std::io::Write::write_all(&mut server, bytes).unwrap(),
                None => drop(server),
            }
            // Blocking: the runtime does not poll for readiness meanwhile.
            std::thread::sleep(std::time::Duration::from_millis(20));
            assert!(!conn.is_usable(), "stray bytes: {:?}", stray.is_some());
        }
    }
}
