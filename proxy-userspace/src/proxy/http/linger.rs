//! A lingering close of a downstream HTTP connection, as Envoy and nginx close theirs: after
//! the last response the write side is shut, and what the client still sends is read and
//! dropped for a while. Closing at once with unread bytes makes the kernel answer with a
//! reset, which can destroy a response the client has not read yet, such as an early 413 or
//! 401 to an upload it is still sending.

use std::{net::Shutdown, time::Duration};

use tokio::{io::AsyncReadExt, net::TcpStream};

/// How long the client may keep sending after the last response (a client that has read it
/// stops sooner: it closes, or stops sending).
const WINDOW: Duration = Duration::from_secs(1);

/// A second handle on the connection's socket, taken before serving it. Serving closes its
/// own handle; this one keeps the socket open for the lingering close.
pub struct Lingering(socket2::Socket);

impl Lingering {
    pub fn of(stream: &TcpStream) -> Option<Lingering> {
        socket2::SockRef::from(stream)
            .try_clone()
            .ok()
            .map(Lingering)
    }

    /// Shuts the write side, then reads and drops until the client closes or the window
    /// ends; the socket closes when this returns.
    pub async fn close(self) {
        let _ = self.0.shutdown(Shutdown::Write);
        // The socket is shared with the served connection, so it is already non-blocking.
        let Ok(mut stream) = TcpStream::from_std(std::net::TcpStream::from(self.0)) else {
            return;
        };
        let mut buf = [0u8; 16 * 1024];
        let _ = tokio::time::timeout(WINDOW, async {
            while let Ok(n) = stream.read(&mut buf).await
                && n > 0
            {}
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    use tokio::io::AsyncWriteExt;

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
            let lingering = Lingering::of(&s).expect("a second handle");
            drop(s);
            if linger {
                lingering.close().await;
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
