//! Upstream connections per endpoint: HTTP/1.1 keep-alive connections, each carrying one
//! request at a time, and one multiplexed HTTP/2 connection per endpoint.

use std::{collections::HashMap, net::SocketAddr, sync::Mutex, time::Duration};

use hyper::{
    Request, Response,
    body::Incoming,
    client::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::{Body, ResponseFlags};

/// Idle HTTP/1.1 connections kept per endpoint; more are opened when needed and closed after.
const MAX_IDLE_H1: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream connect error: connecting to {dst} failed: {source}")]
    Connect {
        dst: SocketAddr,
        source: std::io::Error,
    },
    #[error("upstream connect error: connecting to {dst} timed out after {after:?}")]
    ConnectTimeout { dst: SocketAddr, after: Duration },
    #[error("upstream connect error: HTTP handshake with {dst} failed: {source}")]
    Handshake {
        dst: SocketAddr,
        source: hyper::Error,
    },
    #[error("upstream {dst} reset or closed the connection before answering: {source}")]
    Send {
        dst: SocketAddr,
        source: hyper::Error,
    },
}

impl UpstreamError {
    pub fn flag(&self) -> ResponseFlags {
        match self {
            UpstreamError::Send { .. } => ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
            _ => ResponseFlags::UPSTREAM_CONNECT_FAILURE,
        }
    }

    /// Envoy's reset reason, for the body of the 503 the client gets.
    pub fn reset_reason(&self) -> &'static str {
        match self {
            UpstreamError::Send { .. } => "connection termination",
            _ => "connection failure",
        }
    }
}

pub struct Pool {
    connect_timeout: Duration,
    h1: Mutex<HashMap<SocketAddr, Vec<http1::SendRequest<Body>>>>,
    h2: Mutex<HashMap<SocketAddr, http2::SendRequest<Body>>>,
}

impl Pool {
    pub fn new(connect_timeout: Duration) -> Pool {
        Pool {
            connect_timeout,
            h1: Mutex::new(HashMap::new()),
            h2: Mutex::new(HashMap::new()),
        }
    }

    async fn connect(&self, dst: SocketAddr) -> Result<TokioIo<TcpStream>, UpstreamError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(dst))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout {
                dst,
                after: self.connect_timeout,
            })?
            .map_err(|source| UpstreamError::Connect { dst, source })?;
        let _ = stream.set_nodelay(true);
        Ok(TokioIo::new(stream))
    }

    /// A new HTTP/1.1 connection, not pooled (also used for upgrades, which consume it).
    pub async fn fresh_h1(
        &self,
        dst: SocketAddr,
    ) -> Result<http1::SendRequest<Body>, UpstreamError> {
        let io = self.connect(dst).await?;
        let (sender, conn) = http1::handshake(io)
            .await
            .map_err(|source| UpstreamError::Handshake { dst, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, %dst, "upstream HTTP/1 connection ended with an error");
            }
        });
        Ok(sender)
    }

    async fn h2_sender(&self, dst: SocketAddr) -> Result<http2::SendRequest<Body>, UpstreamError> {
        if let Some(s) = self
            .h2
            .lock()
            .expect("h2 pool lock")
            .get(&dst)
            .filter(|s| !s.is_closed())
        {
            return Ok(s.clone());
        }
        let io = self.connect(dst).await?;
        let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|source| UpstreamError::Handshake { dst, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %dst, "upstream HTTP/2 connection ended with an error");
            }
        });
        self.h2
            .lock()
            .expect("h2 pool lock")
            .insert(dst, sender.clone());
        Ok(sender)
    }

    /// An idle, ready HTTP/1.1 connection to `dst`, dropping closed ones on the way.
    fn idle_h1(&self, dst: SocketAddr) -> Option<http1::SendRequest<Body>> {
        let mut pool = self.h1.lock().expect("h1 pool lock");
        let idle = pool.get_mut(&dst)?;
        idle.retain(|s| !s.is_closed());
        let i = idle.iter().position(|s| s.is_ready())?;
        Some(idle.swap_remove(i))
    }

    fn keep_h1(&self, dst: SocketAddr, sender: http1::SendRequest<Body>) {
        let mut pool = self.h1.lock().expect("h1 pool lock");
        let idle = pool.entry(dst).or_default();
        if idle.len() < MAX_IDLE_H1 {
            idle.push(sender);
        }
    }

    /// Sends a request to `dst` over a pooled connection of the given HTTP version.
    pub async fn send(
        &self,
        dst: SocketAddr,
        h2: bool,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let sent = if h2 {
            let mut sender = self.h2_sender(dst).await?;
            sender.send_request(req).await
        } else {
            let mut sender = match self.idle_h1(dst) {
                Some(s) => s,
                None => self.fresh_h1(dst).await?,
            };
            let response = sender.send_request(req);
            // The connection takes the next request once this response is done; until then
            // `is_ready` keeps other requests off it.
            self.keep_h1(dst, sender);
            response.await
        };
        sent.map_err(|source| UpstreamError::Send { dst, source })
    }
}
