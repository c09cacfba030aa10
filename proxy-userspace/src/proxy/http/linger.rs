//! A lingering close of a downstream HTTP connection, as Envoy and nginx close theirs: after
//! the last response the write side is shut, and what the client still sends is read and
//! dropped for a while. Closing at once with unread bytes makes the kernel answer with a
//! reset, which can destroy a response the client has not read yet, such as an early 413 or
//! 401 to an upload it is still sending.

use std::{
    io,
    net::Shutdown,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::TcpStream,
};

/// How long the client may keep sending after the last response (a client that has read it
/// stops sooner: it closes, or stops sending).
const WINDOW: Duration = Duration::from_secs(1);

/// A client connection that closes with a lingering close when it is dropped, whoever holds
/// it then (the HTTP server, or an upgraded stream). A connection whose client has closed
/// already (a read saw its end) just closes.
pub struct Lingering {
    stream: Option<TcpStream>,
    client_closed: bool,
}

impl Lingering {
    pub fn new(stream: TcpStream) -> Lingering {
        Lingering {
            stream: Some(stream),
            client_closed: false,
        }
    }

    fn stream(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(self.stream.as_mut().expect("taken only on drop"))
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        if self.client_closed {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(close(stream));
        }
    }
}

/// Shuts the write side, then reads and drops until the client closes or the window ends;
/// the socket closes when this returns.
async fn close(mut stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).shutdown(Shutdown::Write);
    let mut buf = [0u8; 16 * 1024];
    let _ = tokio::time::timeout(WINDOW, async {
        while let Ok(n) = stream.read(&mut buf).await
            && n > 0
        {}
    })
    .await;
}

impl AsyncRead for Lingering {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let (before, room) = (buf.filled().len(), buf.remaining() > 0);
        let polled = self.stream().poll_read(cx, buf);
        // No byte read into room for some: the client's end of the stream.
        if room && matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() == before {
            self.client_closed = true;
        }
        polled
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.stream().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.stream().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A server answers 413 to an upload it does not read and closes, as an HTTP server does;
    /// the client, like curl, keeps sending until it has read the answer, and gives up on the
    /// first failed send.
    async fn upload_cut_short(linger: bool) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = [0u8; 64];
            let _ = s.read(&mut head).await.unwrap();
            s.write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            if linger {
                drop(Lingering::new(s));
                // The lingering close runs on its own task: give it its window.
                tokio::time::sleep(WINDOW + Duration::from_millis(100)).await;
            } else {
                drop(s);
            }
        });
        let c = TcpStream::connect(addr).await.unwrap();
        let (mut rd, mut wr) = c.into_split();
        let answered = Arc::new(AtomicBool::new(false));
        let stop = answered.clone();
        let writer = tokio::spawn(async move {
            wr.write_all(b"POST / HTTP/1.1\r\ncontent-length: 100000000\r\n\r\n")
                .await?;
            let chunk = vec![b'x'; 64 * 1024];
            while !stop.load(Ordering::Acquire) {
                wr.write_all(&chunk).await?;
            }
            Ok(())
        });
        let mut answer = [0u8; 12];
        if rd.read_exact(&mut answer).await.is_ok() && &answer == b"HTTP/1.1 413" {
            answered.store(true, Ordering::Release);
        }
        let sent = writer.await.unwrap();
        server.await.unwrap();
        sent
    }

    #[tokio::test]
    async fn the_client_reads_the_answer_before_its_sends_fail() {
        upload_cut_short(true)
            .await
            .expect("every send succeeded until the answer was read");
    }
}
