//! A response body that holds what its request took from the pool (the request's slot, and its
//! HTTP/1.1 connection or HTTP/2 stream) until the body ends or is dropped. An HTTP/1.1
//! connection goes back to the idle list only when its response was read to the end.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use hyper::{
    body::{Body as _, Frame, Incoming, SizeHint},
    client::conn::http1,
};

use super::cluster::{ClusterPool, IdleH1, PeerKey, Slot};
use crate::proxy::http::Body;

/// What one request holds from the pool.
pub struct Lease {
    pub pool: Arc<ClusterPool>,
    pub request: Option<Slot>,
    pub conn: Leased,
}

pub enum Leased {
    H1 {
        dst: PeerKey,
        sender: Option<http1::SendRequest<Body>>,
        used: u32,
        reusable: bool,
        idle_timeout: Duration,
    },
    H2 {
        streams: Arc<AtomicU32>,
    },
}

impl Lease {
    /// Gives the connection or stream back; `complete` says the response was read to its end.
    fn release(&mut self, complete: bool) {
        match &mut self.conn {
            Leased::H1 {
                dst,
                sender,
                used,
                reusable,
                idle_timeout,
            } => {
                if let Some(sender) = sender.take()
                    && complete
                    && *reusable
                    && !sender.is_closed()
                {
                    self.pool.keep_h1(
                        dst.clone(),
                        IdleH1 {
                            sender,
                            used: *used,
                            since: Instant::now(),
                            idle_timeout: *idle_timeout,
                        },
                    );
                }
            }
            Leased::H2 { streams } => {
                streams.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.request = None;
        self.pool.changed.notify_waiters();
    }
}

/// An upstream response body carrying its lease.
pub struct PooledBody {
    inner: Incoming,
    lease: Option<Lease>,
}

impl PooledBody {
    pub fn new(inner: Incoming, lease: Lease) -> PooledBody {
        let mut b = PooledBody {
            inner,
            lease: Some(lease),
        };
        if b.inner.is_end_stream() {
            b.finish(true);
        }
        b
    }

    fn finish(&mut self, complete: bool) {
        if let Some(mut l) = self.lease.take() {
            l.release(complete);
        }
    }
}

impl hyper::body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.finish(true),
            Poll::Ready(Some(Err(_))) => self.finish(false),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.finish(true),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        self.finish(false);
    }
}
