//! Arbitrary bytes as the HTTP/2 connection inside a tunnel: hyper's server parses them and
//! meshd's CONNECT check (`meshd::tunnel::connect_target`) judges every request that results.
//! Nothing may panic, whatever the bytes.

#![no_main]

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::{Response, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let svc = service_fn(|req| async move {
            let _ = meshd::tunnel::connect_target(&req);
            Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
        });
        let serve = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(server), svc);
        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        input.extend_from_slice(data);
        let _ = client.write_all(&input).await;
        drop(client);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), serve).await;
    });
});
