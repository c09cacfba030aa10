//! Carrying an opaque connection both ways until both sides have closed. Each direction copies
//! through a buffer; while its sender streams (a read fills the buffer) it can move the bytes
//! with splice(2) instead, and it goes back to copying when the sender sends little. (A
//! connection the kernel splices is carried by `spliced`.)

use std::{io, net::Shutdown};

use tokio::net::TcpStream;
use tracing::debug;

use super::zero_copy::Pipe;

/// Copy buffer per direction of a stream; large enough for bulk transfers to stay cheap.
pub const COPY_BUF: usize = 64 * 1024;

/// How long a stream's buffer outlasts a pause in its bytes.
const STREAM_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// A direction's first buffer: a connection grows it to `COPY_BUF` only once a read fills it.
/// Most connections (requests and replies, a database's queries) never need more.
pub const FIRST_BUF: usize = 16 * 1024;

/// A splice that moves less than this goes back to copying: for small sends a copy costs less.
const SMALL_SPLICE: usize = 4096;

/// What one direction carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Carried {
    /// Every byte, however it was carried (the kernel's sockmap splice included).
    pub bytes: u64,
    /// Of those, the bytes moved with splice(2), which never entered meshd's memory.
    pub zero_copy: u64,
}

/// `both_ways`; on a reset, both sockets close with a reset too, as they would without meshd in
/// between.
pub async fn relay(
    down: &TcpStream,
    up: &TcpStream,
    zero_copy: bool,
) -> io::Result<(Carried, Carried)> {
    let carried = both_ways(down, up, zero_copy).await;
    if let Err(e) = &carried
        && e.kind() == io::ErrorKind::ConnectionReset
    {
        super::sockopt::set_reset_on_close(down);
        super::sockopt::set_reset_on_close(up);
    }
    carried
}

/// What was carried to the upstream and to the downstream; with `zero_copy`, streams move
/// with splice(2).
async fn both_ways(
    down: &TcpStream,
    up: &TcpStream,
    zero_copy: bool,
) -> io::Result<(Carried, Carried)> {
    let (mut to_up, mut to_down) = (Carried::default(), Carried::default());
    let ended = tokio::try_join!(
        one_way(down, up, zero_copy, &mut to_up),
        one_way(up, down, zero_copy, &mut to_down)
    );
    // A side that reset the connection while bytes were sent to it ended that direction
    // quietly, so the other could still carry what that side had sent: the end is its reset.
    let ended = match ended {
        Ok((Ended::Reset(e), _) | (_, Ended::Reset(e))) => Err(e),
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    };
    match ended {
        Ok(()) => Ok((to_up, to_down)),
        Err(source) => Err(io::Error::new(
            source.kind(),
            Partial {
                to_up,
                to_down,
                source,
            },
        )),
    }
}

/// How a direction ended without an error of its own.
enum Ended {
    /// Its source ended, and the end was passed on.
    Closed,
    /// Its destination reset the connection (or had gone) while bytes were written to it.
    Reset(io::Error),
}

/// A connection that ended with an error (a reset), with what it carried until then.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct Partial {
    pub to_up: Carried,
    pub to_down: Carried,
    source: io::Error,
}

impl Partial {
    /// What a connection carried before `e` ended it, when it says.
    pub fn of(e: &io::Error) -> Option<(Carried, Carried)> {
        let p = e.get_ref()?.downcast_ref::<Partial>()?;
        Some((p.to_up, p.to_down))
    }
}

/// Carries `from`'s bytes to `to` until `from` ends, then shuts `to` down for writing; counts
/// them in `total` as they go, so an error leaves the count of what was carried. When `to` has
/// reset the connection, this direction stops without an error: the other one still reads what
/// `to` sent before its reset (the kernel keeps it), and the caller ends with the reset.
async fn one_way(
    from: &TcpStream,
    to: &TcpStream,
    zero_copy: bool,
    total: &mut Carried,
) -> io::Result<Ended> {
    let mut buf = Buffer::default();
    let mut pipe: Option<Pipe> = None;
    let mut splicing = false;
    loop {
        let n = match (&pipe, splicing) {
            (Some(pipe), true) => {
                let n = pipe.move_some(from, to).await?;
                splicing = n >= SMALL_SPLICE;
                total.zero_copy += n as u64;
                n
            }
            _ => {
                let n = buf.read(from).await?;
                match write_all(to, buf.filled()).await {
                    Err(e) if gone(&e) => return Ok(Ended::Reset(e)),
                    written => written?,
                }
                if zero_copy && n == COPY_BUF {
                    if pipe.is_none() {
                        pipe = Pipe::new()
                            .inspect_err(|e| debug!(error = %e, "no pipe for splice(2); copying"))
                            .ok();
                    }
                    splicing = pipe.is_some();
                    if splicing {
                        buf.release();
                    }
                }
                n
            }
        };
        if n == 0 {
            return half_close(to).map(|()| Ended::Closed);
        }
        total.bytes += n as u64;
    }
}

/// Whether a write failed because the peer reset the connection, or had closed it and then
/// refused more.
fn gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::NotConnected
    )
}

/// Passes an end on: shuts `to` down for writing. A peer already gone (it reset the connection,
/// ENOTCONN) ends nothing here: the other direction still reads what it sent before the reset,
/// and then the reset, which it passes on in turn. (Taken for an error, it cancelled that
/// direction: the peer's last bytes were lost and the client saw a clean close.)
pub(super) fn half_close<'s>(to: impl Into<socket2::SockRef<'s>>) -> io::Result<()> {
    match to.into().shutdown(Shutdown::Write) {
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        done => done,
    }
}

/// A direction's buffer, held only while bytes are moving: a connection that waits for its
/// peer holds none (a stream's outlasts a pause of up to a second), so thousands of quiet
/// connections cost little memory. Its size starts at `FIRST_BUF` and grows to `COPY_BUF` when
/// a read fills it.
#[derive(Default)]
pub(super) struct Buffer {
    bytes: Vec<u8>,
    size: usize,
}

impl Buffer {
    /// Reads what `from` has (waiting for something, with no buffer held while it waits);
    /// 0 means it has ended.
    pub(super) async fn read(&mut self, from: &TcpStream) -> io::Result<usize> {
        let size = self.size.max(FIRST_BUF);
        loop {
            if self.bytes.capacity() < size {
                // No readiness to spend a buffer on yet: wait without one.
                from.readable().await?;
                self.bytes = Vec::with_capacity(size);
            }
            self.bytes.clear();
            // Reads into the spare capacity: nothing is zeroed first.
            match from.try_read_buf(&mut self.bytes) {
                Ok(n) => {
                    if n == self.bytes.capacity() {
                        self.size = (size * 4).min(COPY_BUF);
                    }
                    return Ok(n);
                }
                // Drained: a stream keeps its buffer through a short wait (freeing and
                // faulting in 64 KiB at every pause cost a copying relay 14% of its
                // throughput); otherwise the buffer goes while the connection waits.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if size >= COPY_BUF
                        && let Ok(ready) = tokio::time::timeout(STREAM_PAUSE, from.readable()).await
                    {
                        ready?;
                        continue;
                    }
                    self.bytes = Vec::new();
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Lets the buffer go (its size is kept), while something else carries the bytes.
    pub(super) fn release(&mut self) {
        self.bytes = Vec::new();
    }

    /// The bytes of the last read.
    pub(super) fn filled(&self) -> &[u8] {
        &self.bytes
    }
}

pub(super) async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match to.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    /// Two connected loopback TCP streams.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// client <-> (down | relay | up) <-> server: the client streams `payload` then half-closes,
    /// the server replies with a few bytes and closes.
    async fn relay_a_stream(zero_copy: bool) {
        let (mut client, down) = pair().await;
        let (up, mut server) = pair().await;
        let relay = tokio::spawn(async move { both_ways(&down, &up, zero_copy).await });
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let send = payload.clone();
        let client = tokio::spawn(async move {
            // Small sends first (copied), then a stream (spliced), then small ones again.
            let (small, rest) = send.split_at(1000);
            for b in small.chunks(10) {
                client.write_all(b).await.unwrap();
            }
            let (bulk, tail) = rest.split_at(rest.len() - 1000);
            client.write_all(bulk).await.unwrap();
            for b in tail.chunks(10) {
                client.write_all(b).await.unwrap();
            }
            client.shutdown().await.unwrap();
            let mut reply = Vec::new();
            client.read_to_end(&mut reply).await.unwrap();
            reply
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert!(got == payload, "the server got the client's bytes in order");
        server.write_all(b"done").await.unwrap();
        server.shutdown().await.unwrap();

        assert_eq!(client.await.unwrap(), b"done");
        let (to_up, to_down) = relay.await.unwrap().unwrap();
        assert_eq!((to_up.bytes, to_down.bytes), (payload.len() as u64, 4));
        assert_eq!(to_down.zero_copy, 0, "four bytes are copied");
        if zero_copy {
            // All but the small sends at each end, give or take a buffer's worth.
            assert!(to_up.zero_copy >= payload.len() as u64 - 4 * COPY_BUF as u64);
        } else {
            assert_eq!(to_up.zero_copy, 0);
        }
    }

    #[tokio::test]
    async fn the_relay_carries_a_stream_in_order_and_passes_each_half_close_on() {
        relay_a_stream(true).await;
    }

    #[tokio::test]
    async fn the_copying_relay_carries_the_same_stream() {
        relay_a_stream(false).await;
    }

    #[tokio::test]
    async fn a_waiting_direction_holds_no_buffer_and_a_full_read_grows_it() {
        let (mut client, down) = pair().await;
        let mut buf = Buffer::default();
        client.write_all(b"hello").await.unwrap();
        assert_eq!(buf.read(&down).await.unwrap(), 5);
        assert_eq!(buf.filled(), b"hello");
        assert_eq!(buf.bytes.capacity(), FIRST_BUF);
        // Nothing more to read: the wait holds no buffer.
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(50), buf.read(&down)).await;
        assert!(waited.is_err(), "nothing was sent");
        assert_eq!(buf.bytes.capacity(), 0);
        // A read that fills the buffer makes the next one larger, up to COPY_BUF.
        let bulk = vec![7u8; 4 * COPY_BUF];
        client.write_all(&bulk).await.unwrap();
        let mut sizes = Vec::new();
        let mut got = 0;
        while got < bulk.len() {
            got += buf.read(&down).await.unwrap();
            sizes.push(buf.bytes.capacity());
        }
        assert_eq!(sizes[0], FIRST_BUF, "{sizes:?}");
        assert_eq!(sizes.iter().max(), Some(&COPY_BUF), "{sizes:?}");
    }

    #[tokio::test]
    async fn a_stream_keeps_its_buffer_through_a_short_pause_only() {
        let (mut client, down) = pair().await;
        let mut buf = Buffer::default();
        client.write_all(&vec![7u8; 4 * COPY_BUF]).await.unwrap();
        let mut got = 0;
        while got < 4 * COPY_BUF {
            got += buf.read(&down).await.unwrap();
        }
        assert_eq!(buf.size, COPY_BUF);
        tokio::time::pause();
        let short = std::time::Duration::from_millis(500);
        assert!(tokio::time::timeout(short, buf.read(&down)).await.is_err());
        assert_eq!(buf.bytes.capacity(), COPY_BUF, "kept through a short pause");
        let long = std::time::Duration::from_secs(2);
        assert!(tokio::time::timeout(long, buf.read(&down)).await.is_err());
        assert_eq!(buf.bytes.capacity(), 0, "let go in a long one");
    }

    /// A client that sends and half-closes, to a server that has answered and reset: the
    /// answer still reaches the client, then the reset, as over a direct connection. (The
    /// write to the reset server, or the half-close passed on to it, ended the relay before,
    /// and the client got a clean close without the answer.)
    #[tokio::test]
    async fn an_answer_sent_before_a_reset_reaches_a_client_that_half_closed() {
        let (mut client, down) = pair().await;
        let (up, mut server) = pair().await;
        server.write_all(b"ID\n").await.unwrap();
        socket2::SockRef::from(&server)
            .set_linger(Some(std::time::Duration::ZERO))
            .unwrap();
        drop(server);
        client.write_all(b"z\n").await.unwrap();
        client.shutdown().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let relay = tokio::spawn(async move { relay(&down, &up, false).await });
        let mut got = Vec::new();
        let read = client.read_to_end(&mut got).await;
        assert_eq!(got, b"ID\n", "{read:?}");
        let ended = relay.await.unwrap();
        assert!(ended.is_err(), "ended by the reset: {ended:?}");
    }

    #[tokio::test]
    async fn a_reset_ends_the_relay_with_an_error() {
        let (client, down) = pair().await;
        let (up, _server) = pair().await;
        let relay = tokio::spawn(async move { both_ways(&down, &up, true).await });
        socket2::SockRef::from(&client)
            .set_linger(Some(std::time::Duration::ZERO))
            .unwrap();
        drop(client);
        let ended = tokio::time::timeout(std::time::Duration::from_secs(10), relay).await;
        let result = ended.expect("the relay ended").unwrap();
        assert_eq!(
            result.err().map(|e| e.kind()),
            Some(io::ErrorKind::ConnectionReset)
        );
    }
}
