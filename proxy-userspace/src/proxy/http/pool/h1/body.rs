//! An HTTP/1.1 response body read from its connection as the downstream side asks for it. At
//! its end the connection is free for the next request, if the response allows reuse. A
//! request body the upstream began to answer early is sent on as the response is read.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};

use super::{
    Conn, H1Error,
    decode::{Chunked, Framing, Step},
};
use crate::proxy::http::body::BoxError;

enum State {
    Length(u64),
    Chunked(Chunked),
    Close,
    Done,
}

pub struct ResponseBody {
    conn: Option<Conn>,
    state: State,
    keep_alive: bool,
}

impl ResponseBody {
    pub(super) fn new(conn: Conn, framing: Framing, keep_alive: bool) -> ResponseBody {
        let state = match framing {
            // The decoder reports a zero Content-Length as Empty.
            Framing::Empty => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunked::Size),
            Framing::Close => State::Close,
        };
        ResponseBody {
            conn: Some(conn),
            state,
            keep_alive,
        }
    }

    /// The connection, once the body was read to its end on a connection that can carry
    /// another request (no stray bytes after the response).
    pub fn reusable_conn(&mut self) -> Option<Conn> {
        if !matches!(self.state, State::Done) || !self.keep_alive {
            return None;
        }
        self.conn.take().filter(|c| c.buf.is_empty())
    }

    fn fail(&mut self, e: H1Error) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.state = State::Done;
        self.keep_alive = false;
        self.conn = None;
        Poll::Ready(Some(Err(e.into())))
    }
}

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        // The rest of a request body the upstream answered early goes out as the response is
        // read, until the response ends.
        if let Some(conn) = this.conn.as_mut() {
            conn.drive_upload(cx);
        }
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut this.state {
                State::Done => return Poll::Ready(None),
                State::Length(left) => {
                    if !conn.buf.is_empty() {
                        let take = (*left).min(conn.buf.len() as u64);
                        let data = conn.buf.split_to(take as usize).freeze();
                        *left -= take;
                        if *left == 0 {
                            this.state = State::Done;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                State::Chunked(c) => match c.step(&mut conn.buf) {
                    Ok(Step::More) => {}
                    Ok(Step::Data(d)) => return Poll::Ready(Some(Ok(Frame::data(d)))),
                    Ok(Step::Trailers(t)) => {
                        // The trailers end the body: a reader may stop polling here.
                        this.state = State::Done;
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                    Ok(Step::End) => {
                        this.state = State::Done;
                        return Poll::Ready(None);
                    }
                    Err(e) => return this.fail(e.into()),
                },
                State::Close => {
                    if !conn.buf.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(conn.buf.split().freeze()))));
                    }
                }
            }
            let conn = this.conn.as_mut().expect("checked above");
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if matches!(this.state, State::Close) => {
                    this.state = State::Done;
                    this.keep_alive = false;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(H1Error::Closed),
                Ok(_) => {}
                Err(e) => return this.fail(H1Error::Read(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
