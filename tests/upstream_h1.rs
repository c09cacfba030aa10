//! meshd's HTTP/1.1 upstream client end to end, through eBPF capture, against a scripted raw
//! upstream: response framings (chunked with trailers, close-delimited, HEAD, 204, interim 100),
//! connection reuse and its limits (`connection: close`, a server that closes idle
//! connections), streamed uploads, and responses that are malformed or could smuggle a second
//! response, which must never reach the client as one.

mod support;

use support::{Daemon, ebpf_available, raw_upstream::RawUpstream};

/// curl through meshd: (exit status, stdout).
fn curl(d: &Daemon, args: &[&str]) -> (bool, String) {
    let mut full = vec!["curl", "-sS", "--max-time", "10"];
    full.extend_from_slice(args);
    let out = d.exec("default/curl", &full).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn response_framings_reach_the_client_whole_and_keep_the_connection_in_sync() {
    if !ebpf_available("h1_framings") {
        return;
    }
    let up = RawUpstream::start();
    let d = Daemon::start("h1-framings", 163, &[]);
    let url = |p: &str| format!("http://{}{p}", up.addr);
    // One curl, one downstream connection: each response must end exactly where it ends, or
    // the next one on the pooled upstream connection would be read from the wrong place.
    let (ok, out) = curl(
        &d,
        &[
            &url("/chunked"),
            "-w",
            "|%{http_code}\n",
            &url("/continue"),
            "-w",
            "|%{http_code}\n",
            &url("/no-content"),
            "-w",
            "|%{http_code}\n",
            &url("/plain"),
            "-w",
            "|%{http_code}\n",
        ],
    );
    assert!(ok, "{out}");
    assert_eq!(
        out, "hello, world|200\nafter continue|200\n|204\nok|200\n",
        "bodies and statuses in order"
    );
    let (ok, head) = curl(&d, &["-I", &url("/length")]);
    assert!(ok, "{head}");
    assert!(
        head.to_lowercase().contains("content-length: 1234"),
        "{head}"
    );
    // After a HEAD whose Content-Length announces no body, the connection is still in step.
    let (ok, after) = curl(&d, &[&url("/plain")]);
    assert!(ok && after == "ok", "{after}");
    assert_eq!(
        up.accepted(),
        1,
        "all of it on one pooled upstream connection"
    );
}

#[test]
fn connections_the_upstream_ends_are_not_reused() {
    if !ebpf_available("h1_conn_end") {
        return;
    }
    let up = RawUpstream::start();
    let d = Daemon::start("h1-conn-end", 164, &[]);
    let url = |p: &str| format!("http://{}{p}", up.addr);
    // `connection: close`, then a body that ends with the connection: each takes its
    // connection with it, and the next request opens a new one.
    for (path, body) in [
        ("/close", "closing"),
        ("/until-eof", "this body ends when the connection does"),
    ] {
        let (ok, out) = curl(&d, &[&url(path)]);
        assert!(ok && out == body, "{path}: {out}");
        let (ok, out) = curl(&d, &[&url("/plain")]);
        assert!(ok && out == "ok", "after {path}: {out}");
    }
    assert_eq!(up.accepted(), 3, "a new connection after each ended one");
    // A server that closes a connection after it went idle: the next request must not be
    // sent on it (and fail), but on a new connection.
    let (ok, out) = curl(&d, &[&url("/idle-close")]);
    assert!(ok && out == "then idle", "{out}");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (ok, out) = curl(&d, &[&url("/plain"), "-w", "|%{http_code}"]);
    assert!(ok && out == "ok|200", "after an idle close: {out}");
    assert_eq!(up.accepted(), 4);
    // An HTTP/1.0 upstream: its connection is not kept, and the client gets meshd's
    // HTTP/1.1, as from Envoy.
    let (ok, out) = curl(&d, &[&url("/http10"), "-w", "|%{http_version}"]);
    assert!(ok && out == "old ok|1.1", "{out}");
    let (ok, out) = curl(&d, &[&url("/plain")]);
    assert!(ok && out == "ok", "{out}");
    // /http10 went on the idle connection of the request before it, and took it along.
    assert_eq!(up.accepted(), 5);
}

#[test]
fn uploads_are_streamed_with_their_framing() {
    if !ebpf_available("h1_uploads") {
        return;
    }
    let up = RawUpstream::start();
    let d = Daemon::start("h1-uploads", 165, &[]);
    let file = std::env::temp_dir().join("meshd-h1-upload.bin");
    // Larger than the 64 KiB retry buffer: streamed, not buffered.
    std::fs::write(&file, vec![b'x'; 300_000]).unwrap();
    let data = format!("@{}", file.display());
    let url = format!("http://{}/upload", up.addr);
    let (ok, out) = curl(&d, &["--data-binary", &data, &url]);
    assert!(
        ok && out == "received 300000",
        "Content-Length upload: {out}"
    );
    let (ok, out) = curl(
        &d,
        &[
            "-H",
            "transfer-encoding: chunked",
            "--data-binary",
            &data,
            &url,
        ],
    );
    assert!(ok && out == "received 300000", "chunked upload: {out}");
    // A small body, buffered for retries, and an empty POST.
    let (ok, out) = curl(&d, &["--data-binary", "hello", &url]);
    assert!(ok && out == "received 5", "{out}");
    let (ok, out) = curl(&d, &["-X", "POST", &url]);
    assert!(ok && out == "received 0", "{out}");
    // An upstream that refuses an upload before reading it, and then reads nothing: its 413
    // reaches the client though meshd could not send the whole body (20 MB, more than the
    // sockets buffer). Waiting to send it all would leave curl to time out.
    std::fs::write(&file, vec![b'x'; 20_000_000]).unwrap();
    let early = format!("http://{}/early-413", up.addr);
    let (_, out) = curl(&d, &["--data-binary", &data, &early, "-w", "|%{http_code}"]);
    assert!(out.ends_with("|413"), "the upstream's early answer: {out}");
    let seen = up.seen();
    assert!(
        seen.iter().all(|(m, p, _)| m == "POST" && p == "/upload"),
        "{seen:?}"
    );
    let _ = std::fs::remove_file(file);
}

/// An upstream that answers at once and reads the whole upload before it ends its answer: as
/// Envoy's router, meshd sends the body on while the answer streams (HTTP/1.1 is full duplex),
/// for an HTTP/1.1 client and for an HTTP/2 one, and leaves no connection open.
#[test]
fn an_upload_goes_on_while_its_early_answer_streams() {
    if !ebpf_available("h1_head_first") {
        return;
    }
    let up = RawUpstream::start();
    let yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: upload
spec:
  hosts: [upload.test]
  addresses: [127.0.0.79]
  ports:
  - {{number: 80, name: http, protocol: HTTP, targetPort: {port}}}
  resolution: STATIC
  endpoints:
  - address: 127.0.0.1
"#,
        port = up.addr.port()
    );
    let dir = support::mesh::config_dir("h1-head-first", &yaml);
    let d = Daemon::start("h1-head-first", 336, &["--config", dir.to_str().unwrap()]);
    let file = std::env::temp_dir().join("meshd-h1-head-first.bin");
    // More than the sockets hold: the upstream must read it for the upload to end.
    std::fs::write(&file, vec![b'x'; 5_000_000]).unwrap();
    let data = format!("@{}", file.display());
    for h2 in [false, true] {
        let mut args = vec![
            "--resolve",
            "upload.test:80:127.0.0.79",
            "--data-binary",
            &data,
            "-w",
            "|%{http_code}",
            "http://upload.test/head-first",
        ];
        if h2 {
            args.insert(0, "--http2-prior-knowledge");
        }
        let (ok, out) = curl(&d, &args);
        assert!(ok && out == "received 5000000|200", "h2 {h2}: {out}");
    }
    assert_eq!(up.seen().len(), 2, "{:?}", up.seen());
    support::eventually(std::time::Duration::from_secs(10), || {
        (d.metric("meshd_connections_active") == 0.0).then_some(())
    })
    .unwrap_or_else(|| panic!("connections left open: {}", d.get("/connections")));
    let _ = std::fs::remove_file(file);
}

#[test]
fn hop_by_hop_response_fields_stay_with_the_upstream_connection() {
    if !ebpf_available("h1_hop_by_hop") {
        return;
    }
    let up = RawUpstream::start();
    let d = Daemon::start("h1-hop-by-hop", 259, &[]);
    let url = |p: &str| format!("http://{}{p}", up.addr);
    // The upstream closes its connection after /hop-by-hop: the client's stays open for the
    // next request (num_connects 0), and sees none of the upstream connection's fields.
    let (ok, out) = curl(
        &d,
        &[
            "-D",
            "-",
            &url("/hop-by-hop"),
            "-w",
            "|%{num_connects}\n",
            &url("/headers"),
            "-w",
            "|%{num_connects}\n",
        ],
    );
    assert!(ok, "{out}");
    let lower = out.to_ascii_lowercase();
    assert!(lower.contains("x-end: 1"), "{out}");
    for gone in [
        "x-hop",
        "keep-alive",
        "proxy-connection",
        "connection: close",
    ] {
        assert!(!lower.contains(gone), "{gone} reached the client: {out}");
    }
    assert!(out.contains("hop|1\n"), "{out}");
    assert!(
        out.ends_with("|0\n"),
        "the client's connection was reused: {out}"
    );
    // Envoy tells the upstream the scheme the client used when the client did not.
    assert!(lower.contains("x-forwarded-proto: http\n"), "{out}");
    let (ok, out) = curl(&d, &["-H", "x-forwarded-proto: https", &url("/headers")]);
    assert!(ok && out.contains("x-forwarded-proto: https\n"), "{out}");
    assert!(!out.contains("x-forwarded-proto: http\n"), "{out}");
}

#[test]
fn malformed_or_smuggling_responses_never_reach_the_client() {
    if !ebpf_available("h1_bad_responses") {
        return;
    }
    let up = RawUpstream::start();
    let d = Daemon::start("h1-bad-responses", 166, &[]);
    let url = |p: &str| format!("http://{}{p}", up.addr);
    // Both Content-Length and Transfer-Encoding: refused, 502 with flag UPE (Envoy's protocol
    // error), and the bytes after it (a second response) are never served to anyone.
    let (ok, out) = curl(&d, &[&url("/smuggle"), "-w", "|%{http_code}"]);
    assert!(ok, "{out}");
    assert!(out.ends_with("reset reason: protocol error|502"), "{out}");
    assert!(!out.contains("smuggled"), "{out}");
    let (ok, out) = curl(&d, &[&url("/plain")]);
    assert!(ok && out == "ok", "the next request is clean: {out}");
    // Not HTTP at all, a 204 that declares a body, and a coding other than chunked (which
    // Envoy's HTTP/1.1 codec refuses): 502 UPE too.
    for path in ["/garbage", "/no-content-with-body", "/gzip"] {
        let (ok, out) = curl(&d, &[&url(path), "-o", "/dev/null", "-w", "%{http_code}"]);
        assert!(ok && out == "502", "{path}: {out}");
    }
    let upe = support::eventually(std::time::Duration::from_secs(5), || {
        let log = d.log_text();
        (log.matches(r#""response_code":502,"response_flags":"UPE""#)
            .count()
            == 4)
            .then_some(())
    });
    assert!(upe.is_some(), "four 502 UPE lines:\n{}", d.log_text());
    // An HTTP/2 client, on a port nothing declares, goes upstream as HTTP/2: this HTTP/1-only
    // server's answer to the preface is no HTTP/2, which is the upstream breaking the protocol
    // (502 UPE), not a reset (503 UC).
    let (ok, out) = curl(
        &d,
        &[
            "--http2-prior-knowledge",
            &url("/length"),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ],
    );
    assert!(ok && out == "502", "HTTP/2 to an HTTP/1 server: {out}");
    // A length repeated as a list (`2, 2`) reaches the client as the one value it is (RFC
    // 9110 section 8.6).
    let (ok, out) = curl(&d, &["-i", &url("/length-list")]);
    let lower = out.to_ascii_lowercase();
    assert!(ok && lower.contains("content-length: 2\r\n"), "{out}");
    assert!(out.ends_with("\r\n\r\nok"), "{out}");
    // A malformed chunk after the head: the client's response fails, and its record says the
    // upstream broke the protocol (UPE), as Envoy's does, not that it reset (UC).
    let (ok, out) = curl(&d, &[&url("/bad-chunk")]);
    assert!(!ok, "{out}");
    let line = support::eventually(std::time::Duration::from_secs(5), || {
        (d.log_text().lines())
            .find(|l| l.contains("/bad-chunk") && l.contains("response_flags"))
            .map(str::to_string)
    })
    .unwrap_or_else(|| panic!("no line for /bad-chunk:\n{}", d.log_text()));
    assert!(line.contains(r#""response_flags":"UPE""#), "{line}");
    // A body cut short: the client sees its response fail, not a complete short body.
    let (ok, out) = curl(&d, &[&url("/short")]);
    assert!(!ok, "a truncated body must not look complete: {out}");
    let (ok, out) = curl(&d, &[&url("/plain")]);
    assert!(ok && out == "ok", "{out}");
}
