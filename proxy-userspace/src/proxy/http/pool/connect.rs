//! Opening an upstream TCP connection: bounded by the connect timeout, with Nagle off and the
//! DestinationRule's TCP keepalive applied.

use std::{net::SocketAddr, time::Duration};

use tokio::net::TcpStream;

use super::{UpstreamError, limits::Keepalive};

pub async fn connect(
    dst: SocketAddr,
    timeout: Duration,
    keepalive: Option<Keepalive>,
) -> Result<TcpStream, UpstreamError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(dst))
        .await
        .map_err(|_| UpstreamError::ConnectTimeout {
            dst,
            after: timeout,
        })?
        .map_err(|source| UpstreamError::Connect { dst, source })?;
    let _ = stream.set_nodelay(true);
    if let Some(k) = keepalive
        && let Err(e) = set_keepalive(&stream, k)
    {
        tracing::warn!(error = %e, %dst, "could not set TCP keepalive on the upstream socket");
    }
    Ok(stream)
}

/// SO_KEEPALIVE plus TCP_KEEPIDLE, TCP_KEEPINTVL and TCP_KEEPCNT where set.
pub fn set_keepalive(stream: &TcpStream, k: Keepalive) -> std::io::Result<()> {
    let mut ka = socket2::TcpKeepalive::new();
    if let Some(t) = k.time {
        ka = ka.with_time(t.min(crate::policy::limits::MAX_KEEPALIVE));
    }
    if let Some(i) = k.interval {
        ka = ka.with_interval(i.min(crate::policy::limits::MAX_KEEPALIVE));
    }
    if let Some(p) = k.probes {
        ka = ka.with_retries(p);
    }
    socket2::SockRef::from(stream).set_tcp_keepalive(&ka)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keepalive_settings_reach_the_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let k = Keepalive {
            time: Some(Duration::from_secs(42)),
            interval: Some(Duration::from_secs(7)),
            probes: Some(3),
        };
        let s = connect(
            listener.local_addr().unwrap(),
            Duration::from_secs(1),
            Some(k),
        )
        .await
        .unwrap();
        let sock = socket2::SockRef::from(&s);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(42));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(7)
        );
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 3);
        let plain = connect(listener.local_addr().unwrap(), Duration::from_secs(1), None)
            .await
            .unwrap();
        assert!(!socket2::SockRef::from(&plain).keepalive().unwrap());
    }
}
