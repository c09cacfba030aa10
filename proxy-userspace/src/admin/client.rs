//! A small client for the admin API, used by `meshd exec`, `status` and `connections`.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no meshd daemon answers at {addr} ({source}); start one with `meshd run`, or point \
         --admin / MESHD_ADMIN at the running daemon's admin address"
    )]
    Unreachable {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("meshd at {addr} did not answer within {after:?}: is it hung or stopped?")]
    Timeout { addr: SocketAddr, after: Duration },
    #[error("talking to meshd at {addr}: {detail}")]
    Protocol { addr: SocketAddr, detail: String },
}

/// How long a CLI command waits for the daemon's answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends one request and returns the status and body, giving up after `after`.
pub async fn request_within(
    after: Duration,
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<String>,
) -> Result<(StatusCode, String), ClientError> {
    tokio::time::timeout(after, request(addr, method, path, body))
        .await
        .unwrap_or(Err(ClientError::Timeout { addr, after }))
}

/// Sends one request and returns the status and body.
async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<String>,
) -> Result<(StatusCode, String), ClientError> {
    let proto = |detail: String| ClientError::Protocol { addr, detail };
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| ClientError::Unreachable { addr, source })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| proto(e.to_string()))?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| proto(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| proto(e.to_string()))?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| proto(e.to_string()))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// Runs `request` on a throwaway current-thread runtime, for the synchronous CLI commands.
pub fn blocking_request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<String>,
) -> Result<(StatusCode, String), ClientError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(request_within(DEFAULT_TIMEOUT, addr, method, path, body))
}
