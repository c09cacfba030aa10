//! An upstream HTTP/2 connection whose writes cannot end it: once the server has gone (a reset,
//! or our side closed by one), writes are dropped, and the connection ends when its reads do.
//! A server that sends its last frames and closes (a GOAWAY, its streams finished, then FIN,
//! as gRPC's `max_connection_age` does) answers a later write (a WINDOW_UPDATE) with a reset;
//! the write after that fails, and the codec would end the connection there, failing the
//! streams whose last frames still wait unread in the socket. The kernel keeps those bytes
//! readable after a reset, so reading on delivers them, then the end.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct EndsByReading<T> {
    io: T,
    /// The peer is gone: nothing written now reaches it.
    gone: bool,
}

impl<T> EndsByReading<T> {
    pub fn new(io: T) -> EndsByReading<T> {
        EndsByReading { io, gone: false }
    }

    /// A write's (or flush's) outcome, with the peer's going turned into `done`: the bytes
    /// are dropped.
    fn unless_gone<R>(&mut self, r: Poll<io::Result<R>>, done: R) -> Poll<io::Result<R>> {
        match r {
            Poll::Ready(Err(e)) if gone(&e) => {
                tracing::debug!(error = %e, "upstream HTTP/2 peer gone: reading what it sent");
                self.gone = true;
                Poll::Ready(Ok(done))
            }
            r => r,
        }
    }
}

/// Whether a write failed because the peer has gone (it reset the connection).
fn gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

impl<T: AsyncRead + Unpin> AsyncRead for EndsByReading<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, out)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for EndsByReading<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.gone {
            return Poll::Ready(Ok(data.len()));
        }
        let r = Pin::new(&mut this.io).poll_write(cx, data);
        this.unless_gone(r, data.len())
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let len = bufs.iter().map(|b| b.len()).sum();
        if this.gone {
            return Poll::Ready(Ok(len));
        }
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.unless_gone(r, len)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.gone {
            return Poll::Ready(Ok(()));
        }
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.unless_gone(r, ())
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.gone {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
    };

    use super::*;

    /// The server sends its last bytes and closes; the client writes after that (the server's
    /// kernel answers with a reset) and again (which fails). The writes are dropped, and every
    /// byte the server sent is still read.
    #[tokio::test]
    async fn writes_after_the_peer_left_do_not_cost_what_it_sent() {
        const SENT: usize = 64 * 1024;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(&vec![7u8; SENT]).await.unwrap();
            // Closed with nothing unread: a FIN, then a reset for whatever comes after.
        });
        let mut client = EndsByReading::new(TcpStream::connect(addr).await.unwrap());
        server.await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        for _ in 0..3 {
            client.write_all(b"window update").await.unwrap();
            client.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(client.gone, "the reset was seen");
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        assert_eq!(got.len(), SENT);
    }
}
