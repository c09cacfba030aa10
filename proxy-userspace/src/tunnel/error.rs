//! What can go wrong in the tunnel, in words for the operator.

use std::net::SocketAddr;

use crate::identity::IdentityError;

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error(
        "{target} is behind the meshd at {node}, but this meshd has no workload certificates: \
         start it with --ca-dir (from `meshd ca init`) or --cert-dir"
    )]
    NoCertificates {
        target: SocketAddr,
        node: SocketAddr,
    },
    #[error("the connection has no workload identity (its source is not an enrolled workload)")]
    NoSourceIdentity,
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("tunnel to {node}: connecting failed: {source}")]
    Connect {
        node: SocketAddr,
        source: std::io::Error,
    },
    #[error("tunnel to {node}: connecting timed out, maybe a firewall blocks the tunnel port")]
    ConnectTimeout { node: SocketAddr },
    #[error("tunnel to {node}: TLS handshake failed: {reason}")]
    Handshake { node: SocketAddr, reason: String },
    #[error("tunnel to {node}: HTTP/2 failed: {source}")]
    Http {
        node: SocketAddr,
        source: hyper::Error,
    },
    #[error("tunnel to {node}: the peer refused CONNECT {target} with {status}: {reason}")]
    Refused {
        node: SocketAddr,
        target: SocketAddr,
        status: u16,
        reason: String,
    },
}
