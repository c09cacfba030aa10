//! A response body that holds what its request took from the pool (the request's slot, and its
//! HTTP/1.1 connection or HTTP/2 stream) until the body ends or is dropped. An HTTP/1.1
//! connection goes back to the idle list only when its response was read to the end.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use hyper::body::{Body as _, Frame, SizeHint};

use super::{
    cluster::{ClusterPool, H2Stream, IdleH1, PeerKey, Slot},
    h1,
    proxy_protocol::ClientLife,
};
use crate::proxy::http::body::BoxError;

/// What one request holds from the pool.
pub struct Lease {
    pub pool: Arc<ClusterPool>,
    pub request: Option<Slot>,
    pub conn: Leased,
}

pub enum Leased {
    H1 {
        dst: PeerKey,
        /// The downstream connection whose partition `dst` is (`proxyProtocol`).
        owner: Option<ClientLife>,
        used: u32,
        reusable: bool,
        idle_timeout: Duration,
        expires: Option<Instant>,
    },
    /// Given back when the lease drops.
    H2(H2Stream),
}

impl Lease {
    /// Gives the stream back, or the HTTP/1.1 connection when its response was read to the
    /// end (`conn`: the body hands it over only then).
    fn release(&mut self, conn: Option<h1::Conn>) {
        // The request's slot first: a waiter the connection wakes counts against
        // `http2MaxRequests` as it takes it. The slot wakes the cluster's waiters as it drops
        // (and keep_h1 does, for a connection given back); an HTTP/2 stream does when the
        // lease drops.
        self.request = None;
        match &mut self.conn {
            Leased::H1 {
                dst,
                owner,
                used,
                reusable,
                idle_timeout,
                expires,
            } => {
                if let Some(conn) = conn
                    && *reusable
                    && super::cluster::unexpired(*expires)
                {
                    self.pool.keep_h1(
                        dst.clone(),
                        IdleH1 {
                            conn,
                            used: *used,
                            since: Instant::now(),
                            idle_timeout: *idle_timeout,
                            expires: *expires,
                        },
                        owner.as_ref(),
                    );
                }
            }
            Leased::H2(_) => {}
        }
    }
}

/// The body as it comes from the upstream connection.
pub enum Upstream {
    H1(h1::ResponseBody),
    H2(super::h2::RecvBody),
}

/// An upstream response body carrying its lease.
pub struct PooledBody {
    inner: Upstream,
    lease: Option<Lease>,
}

impl PooledBody {
    pub fn new(inner: Upstream, lease: Lease) -> PooledBody {
        let mut b = PooledBody {
            inner,
            lease: Some(lease),
        };
        if b.is_end_stream() {
            b.finish();
        }
        b
    }

    /// Releases the lease: after the body's end, or early when it failed or was dropped.
    pub(super) fn finish(&mut self) {
        if let Some(mut l) = self.lease.take() {
            let conn = match &mut self.inner {
                Upstream::H1(b) => b.reusable_conn(),
                Upstream::H2(_) => None,
            };
            l.release(conn);
        }
    }
}

impl hyper::body::Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = match &mut self.inner {
            Upstream::H1(b) => Pin::new(b).poll_frame(cx),
            Upstream::H2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        };
        match &polled {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.finish(),
            Poll::Ready(Some(Ok(_))) if self.is_end_stream() => self.finish(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Upstream::H1(b) => b.is_end_stream(),
            Upstream::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Upstream::H1(b) => b.size_hint(),
            Upstream::H2(b) => b.size_hint(),
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        self.finish();
    }
}
