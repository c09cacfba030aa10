//! Copying an opaque connection both ways until both sides have closed. With a kernel splice,
//! meshd reports each write of the workload's bytes, so the kernel can take that direction
//! over as soon as meshd holds none of them.

use std::io;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, BufReader, copy_bidirectional_with_sizes, copy_buf},
    net::TcpStream,
};

use crate::ebpf::Splice;

/// Copy buffer per direction; large enough for bulk transfers to stay cheap.
pub const COPY_BUF: usize = 64 * 1024;

/// Bytes carried to the upstream and to the downstream. Spliced bytes count as carried.
pub async fn both_ways(
    down: &mut TcpStream,
    up: &mut TcpStream,
    splice: Option<&Splice>,
) -> io::Result<(u64, u64)> {
    let Some(splice) = splice else {
        return copy_bidirectional_with_sizes(down, up, COPY_BUF, COPY_BUF).await;
    };
    let (mut down_rx, mut down_tx) = down.split();
    let (up_rx, mut up_tx) = up.split();
    let to_up = async {
        let mut buf = vec![0u8; COPY_BUF];
        let mut total = 0u64;
        loop {
            let n = down_rx.read(&mut buf).await?;
            if n == 0 {
                up_tx.shutdown().await?;
                return Ok::<_, io::Error>(total);
            }
            up_tx.write_all(&buf[..n]).await?;
            total += n as u64;
            // Only now, with the bytes queued on the upstream socket, may the kernel send the
            // workload's next ones after them.
            splice.forwarded(total);
        }
    };
    let to_down = async {
        let mut from_up = BufReader::with_capacity(COPY_BUF, up_rx);
        let n = copy_buf(&mut from_up, &mut down_tx).await?;
        down_tx.shutdown().await?;
        Ok(n)
    };
    let (forwarded, to_down) = tokio::try_join!(to_up, to_down)?;
    Ok((forwarded + splice.spliced(), to_down))
}
