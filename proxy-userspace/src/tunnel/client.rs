//! The tunnel's client side: one TLS 1.3 + HTTP/2 connection per (node, source identity,
//! destination identity), reused for every CONNECT stream to that node.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::{Method, Request, StatusCode, client::conn::http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::{Tunnel, TunnelError, Via};
use crate::identity::tls;

/// A byte stream to the far workload, through the tunnel.
pub type Stream = TokioIo<hyper::upgrade::Upgraded>;

/// The header in which the far meshd says why it refused a stream.
pub const REASON_HEADER: &str = "x-meshd-reason";
/// On a CONNECT, says the stream carries opaque bytes (`tcp`): the source classed the
/// connection as TCP (its port declared so, or its bytes not HTTP), so the far node authorizes
/// it as TCP, as Istio's inbound sidecar applies a TCP port's L4 rules whatever the bytes.
pub const PROTOCOL_HEADER: &str = "x-meshd-protocol";

type Key = (SocketAddr, String, String);
type Sender = http2::SendRequest<Empty<Bytes>>;
/// One key's connection; its lock is held while connecting, so concurrent first streams share
/// one handshake instead of racing to open a connection each.
type Slot = Arc<tokio::sync::Mutex<Option<Sender>>>;

#[derive(Default)]
pub struct Clients {
    conns: Mutex<HashMap<Key, Slot>>,
}

impl Clients {
    fn slot(&self, key: Key) -> Slot {
        self.conns
            .lock()
            .expect("tunnel clients lock")
            .entry(key)
            .or_default()
            .clone()
    }
}

impl Tunnel {
    /// Opens a CONNECT stream to `target` on the node `via` names; `opaque`: it carries a
    /// connection classed as TCP.
    pub async fn open(
        &self,
        via: &Via,
        target: SocketAddr,
        opaque: bool,
    ) -> Result<Stream, TunnelError> {
        let mut sender = self.sender(via).await?;
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .uri(target.to_string());
        if opaque {
            req = req.header(PROTOCOL_HEADER, "tcp");
        }
        if let Some(b) = via.workload.as_deref().and_then(super::baggage::encode) {
            req = req.header(super::baggage::HEADER, b);
        }
        let req = req
            .body(Empty::new())
            .expect("a CONNECT request to a socket address");
        let http = |source| TunnelError::Http {
            node: via.node,
            source,
        };
        let resp = sender.send_request(req).await.map_err(http)?;
        if resp.status() != StatusCode::OK {
            let reason = resp
                .headers()
                .get(REASON_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string();
            return Err(TunnelError::Refused {
                node: via.node,
                target,
                status: resp.status().as_u16(),
                reason,
            });
        }
        let upgraded = hyper::upgrade::on(resp).await.map_err(http)?;
        Ok(TokioIo::new(upgraded))
    }

    /// The shared HTTP/2 connection for `via`, opened (TCP, TLS 1.3, HTTP/2) when there is none.
    async fn sender(&self, via: &Via) -> Result<Sender, TunnelError> {
        let key = (
            via.node,
            via.source.to_string(),
            via.destination.to_string(),
        );
        let slot = self.clients.slot(key);
        let mut current = slot.lock().await;
        if let Some(s) = current.as_ref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        let node = via.node;
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(node))
            .await
            .map_err(|_| TunnelError::ConnectTimeout { node })?
            .map_err(|source| TunnelError::Connect { node, source })?;
        let _ = tcp.set_nodelay(true);
        let cert = self.manager.ensure(&via.source)?;
        let config = tls::client_config(&cert, self.manager.roots(), via.destination.clone());
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(via.destination.server_name(), tcp)
            .await
            .map_err(|e| TunnelError::Handshake {
                node,
                reason: tls::describe_handshake_error(&e),
            })?;
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|source| TunnelError::Http { node, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %node, "tunnel connection ended with an error");
            }
        });
        tracing::debug!(%node, source = %via.source, destination = %via.destination, "tunnel connection opened");
        *current = Some(sender.clone());
        Ok(sender)
    }
}
