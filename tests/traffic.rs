//! Resilience and traffic shaping on captured traffic: retries (503 and resets), giving up with
//! URX, route timeouts (UT), fault injection at 50% (DI, FI) and mirroring at 100% and 0%.

mod support;

use std::time::Instant;

use support::{
    backend::Backend,
    ebpf_available,
    http_backend::HttpBackend,
    mesh::{curl, curl_many, policies, start, status, two_backends},
};

const TO_V1: &str = "    route:\n    - destination:\n        host: reviews\n        subset: v1\n";

#[test]
fn retries_recover_from_a_first_attempt_503_and_give_up_with_urx() {
    if !ebpf_available("retries") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = format!("  - retries:\n      attempts: 2\n      retryOn: 5xx\n{TO_V1}");
    let d = start("retries", 51, &policies(&v1, &v2, &routes));
    let ok = status(&d, "http://reviews:9080/fail-first/1");
    assert_eq!(ok, "200", "the retry recovered");
    assert_eq!(
        v1.max_attempt(),
        2,
        "x-envoy-attempt-count was set on the retry"
    );
    let before = v1.requests();
    let failed = status(&d, "http://reviews:9080/status/503");
    assert_eq!(failed, "503", "the client sees the last upstream response");
    assert_eq!(v1.requests() - before, 3, "one attempt and two retries");
    assert!(
        d.log_text().contains("status=503 flags=URX"),
        "URX recorded; log:\n{}",
        d.log_text()
    );
    assert!(d.metric("meshd_http_retries_total") >= 3.0);
}

#[test]
fn a_reset_is_retried_on_another_endpoint() {
    if !ebpf_available("retry_reset") {
        return;
    }
    retried_past_a_resetting_endpoint("reset,connect-failure", 52);
    // As Envoy's: gateway-error (and 5xx) retry a reset too.
    retried_past_a_resetting_endpoint("gateway-error", 197);
}

/// Requests to a service whose endpoints are one that resets every connection and one that
/// answers, with `retryOn`, all end on the answering one.
fn retried_past_a_resetting_endpoint(retry_on: &str, slot: u16) {
    let resetting = Backend::resetting("127.0.0.1:0");
    let (v1, v2) = two_backends();
    let routes = format!(
        "  - retries:\n      attempts: 3\n      retryOn: {retry_on}\n    route:\n    - destination:\n        host: reviews\n"
    );
    let yaml = policies(&v1, &v2, &routes).replace(
        &format!("http: {}\n", v1.addr.port()),
        &format!("http: {}\n", resetting.addr.port()),
    );
    let d = start(&format!("retry-reset-{slot}"), slot, &yaml);
    // The default balancer (LEAST_REQUEST) picks each first attempt's endpoint at random: six
    // requests all missed the resetting one about once in 64 runs. Requests continue until one
    // has hit it (40 all missing: about once in 10^12).
    let mut sent = 0;
    while sent < 6 || (resetting.accepted() == 0 && sent < 40) {
        let code = status(&d, "http://reviews:9080/whoami");
        assert_eq!(code, "200");
        sent += 1;
    }
    assert_eq!(
        v2.requests(),
        sent,
        "every request ended on the healthy endpoint ({retry_on})"
    );
    assert!(
        resetting.accepted() >= 1,
        "some first attempts hit the resetting endpoint ({retry_on})"
    );
}

/// A request whose body meshd does not hold (100 KB, past the retry buffer) is still retried
/// while no attempt has sent it: when its first endpoint refuses the connection, it goes to
/// the other, its body unread until then, as Envoy retries a connect failure.
#[test]
fn a_streamed_request_is_retried_past_a_refused_connection() {
    if !ebpf_available("retry_streamed") {
        return;
    }
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let (v1, v2) = two_backends();
    let routes = "  - retries:\n      attempts: 2\n      retryOn: connect-failure\n    route:\n    - destination:\n        host: reviews\n";
    let yaml = policies(&v1, &v2, routes).replace(
        &format!("http: {}\n", v1.addr.port()),
        &format!("http: {closed_port}\n"),
    );
    let d = start("retry-streamed", 274, &yaml);
    let body = std::env::temp_dir().join(format!("meshd-streamed-{}", std::process::id()));
    std::fs::write(&body, vec![b'x'; 100_000]).unwrap();
    let data = format!("@{}", body.display());
    // Requests continue until one's first attempt went to the refusing endpoint.
    let retried = || d.log_text().matches(r#""retries":1"#).count();
    let mut sent = 0;
    while sent < 6 || (retried() == 0 && sent < 40) {
        let out = curl(
            &d,
            &[
                "--data-binary",
                &data,
                "http://reviews:9080/echo",
                "-w",
                " %{http_code}",
            ],
        );
        assert!(
            out.contains(r#""length":100000,"#) && out.ends_with(" 200"),
            "{out}"
        );
        sent += 1;
    }
    let _ = std::fs::remove_file(&body);
    assert_eq!(
        v2.requests(),
        sent,
        "every request ended on the answering endpoint"
    );
    assert!(retried() >= 1, "{}", d.log_text());
}

/// A request whose body was still arriving when it was routed streams upstream, and is
/// recorded as it streams: answered 503 after its body ended, it is retried from that copy,
/// as Envoy replays a request it buffered while streaming it.
#[test]
fn a_streamed_body_that_ended_within_the_buffer_is_replayed_on_retry() {
    if !ebpf_available("retry_recorded") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = format!("  - retries:\n      attempts: 2\n      retryOn: 5xx\n{TO_V1}");
    let d = start("retry-recorded", 275, &policies(&v1, &v2, &routes));
    // curl sends stdin chunked; the body arrives 300 ms after the head, so meshd routes the
    // request before it has any of it.
    for (i, size) in [5, 40_000].into_iter().enumerate() {
        let script = format!(
            "(sleep 0.3; head -c {size} /dev/zero | tr '\\0' x) | curl -sS --max-time 20 --resolve reviews:9080:127.0.0.50 -T - -X POST -w ' %{{http_code}}' http://reviews:9080/echo-fail-first/{}",
            i + 1
        );
        let out = d
            .exec("default/productpage", &["sh", "-c", &script])
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.contains(&format!(r#""length":{size},"#)) && out.ends_with(" 200"),
            "{size} bytes: {out}\n{}",
            d.log_text()
        );
    }
    // The first failed once and was answered on its retry; the second failed twice.
    for n in [1, 2] {
        let path = format!(r#""path":"/echo-fail-first/{n}""#);
        let retries = format!(r#""retries":{n},"#);
        support::eventually(std::time::Duration::from_secs(5), || {
            (d.log_text().lines())
                .any(|l| l.contains(&path) && l.contains(&retries))
                .then_some(())
        })
        .unwrap_or_else(|| panic!("{n} retries:\n{}", d.log_text()));
    }
}

#[test]
fn a_route_timeout_returns_504_ut() {
    if !ebpf_available("timeout") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = format!("  - timeout: 300ms\n{TO_V1}");
    let d = start("timeout", 53, &policies(&v1, &v2, &routes));
    let t = Instant::now();
    let code = status(&d, "http://reviews:9080/sleep/3000");
    assert_eq!(code, "504");
    assert!(
        t.elapsed().as_millis() < 2500,
        "answered at the timeout, not after the backend"
    );
    assert!(d.log_text().contains("status=504 flags=UT"));
    // As Envoy logs them, a timed-out request names the endpoint it was waiting for, and so
    // does one whose client left first (DC), under the service routed to.
    let v1_host = format!(r#""upstream_host":"{}""#, v1.addr);
    let line = |flag: &str| {
        let flag = format!(r#""response_flags":"{flag}""#);
        support::eventually(std::time::Duration::from_secs(5), || {
            (d.log_text().lines())
                .find(|l| l.contains(&flag))
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no {flag} line:\n{}", d.log_text()))
    };
    let ut = line("UT");
    assert!(ut.contains(&v1_host), "{ut}");
    let left = d
        .exec(
            "default/productpage",
            &[
                "curl",
                "-sS",
                "-m",
                "0.1",
                "--resolve",
                "reviews:9080:127.0.0.50",
                "http://reviews:9080/sleep/3000",
            ],
        )
        .output()
        .unwrap();
    assert!(!left.status.success(), "the client gave up first");
    let dc = line("DC");
    assert!(dc.contains(&v1_host), "{dc}");
    assert!(
        dc.contains(r#""upstream_cluster":"outbound|9080|v1|reviews.default.svc.cluster.local""#),
        "{dc}"
    );
}

#[test]
fn fault_abort_and_delay_at_50_percent() {
    if !ebpf_available("faults") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = format!(
        "  - match:\n    - uri:\n        prefix: /abort\n    fault:\n      abort:\n        httpStatus: 418\n        percentage:\n          value: 50\n{TO_V1}  - match:\n    - uri:\n        prefix: /unset\n    fault:\n      abort:\n        httpStatus: 418\n{TO_V1}  - fault:\n      delay:\n        fixedDelay: 200ms\n        percentage:\n          value: 50\n{TO_V1}"
    );
    let d = start("faults", 54, &policies(&v1, &v2, &routes));
    let n = 400;
    let codes = curl_many(&d, "http://reviews:9080/abort", n, "%{http_code}\\n");
    let aborted = codes.iter().filter(|c| *c == "418").count();
    // Binomial(400, 0.5): mean 200, sd 10.
    assert!((150..=250).contains(&aborted), "{aborted} of {n} aborted");
    assert_eq!(codes.iter().filter(|c| *c == "200").count(), n - aborted);
    // Without a percentage, Istio (Envoy) aborts no request.
    let unset = curl_many(&d, "http://reviews:9080/unset", 20, "%{http_code}\\n");
    assert!(unset.iter().all(|c| c == "200"), "{unset:?}");

    let m = 60;
    let times = curl_many(&d, "http://reviews:9080/delayed", m, "%{time_total}\\n");
    let delayed = times
        .iter()
        .filter_map(|t| t.parse::<f64>().ok())
        .filter(|t| *t >= 0.19)
        .count();
    // Binomial(60, 0.5): mean 30, sd 3.9.
    assert!((12..=48).contains(&delayed), "{delayed} of {m} delayed");
    let log = d.log_text();
    assert!(
        log.contains("flags=FI") && log.contains("flags=DI"),
        "flags recorded"
    );
}

/// A fault abort answers as Envoy's `sendLocalReply`: text/plain "fault filter abort" with the
/// HTTP status, nothing for a status without content (an HTTP/2 client refuses a 204 that
/// announces a length), and for `grpcStatus` HTTP 200: trailers-only with that status to a gRPC
/// request, plain text to any other.
#[test]
fn fault_aborts_answer_as_envoys_local_replies() {
    if !ebpf_available("fault_replies") {
        return;
    }
    let (v1, v2) = two_backends();
    let abort = |prefix: &str, status: &str| {
        format!(
            "  - match:\n    - uri:\n        prefix: {prefix}\n    fault:\n      abort:\n        {status}\n        percentage:\n          value: 100\n{TO_V1}"
        )
    };
    let routes = [
        abort("/teapot", "httpStatus: 418"),
        abort("/nothing", "httpStatus: 204"),
        abort("/unavailable", "grpcStatus: UNAVAILABLE"),
    ]
    .concat();
    let d = start("fault-replies", 303, &policies(&v1, &v2, &routes));
    let head_and_body = |args: &[&str]| curl(&d, &[&["-D", "-"], args].concat());

    let teapot = head_and_body(&["http://reviews:9080/teapot"]);
    assert!(teapot.starts_with("HTTP/1.1 418"), "{teapot}");
    assert!(teapot.contains("content-type: text/plain"), "{teapot}");
    assert!(teapot.ends_with("fault filter abort"), "{teapot}");

    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let nothing = head_and_body(&[version, "http://reviews:9080/nothing"]);
        assert!(nothing.contains(" 204"), "{version}: {nothing}");
        assert!(
            !nothing.to_ascii_lowercase().contains("content-length"),
            "{version}: {nothing}"
        );
    }

    let plain = head_and_body(&["http://reviews:9080/unavailable"]);
    assert!(plain.starts_with("HTTP/1.1 200"), "{plain}");
    assert!(!plain.contains("grpc-status"), "{plain}");
    assert!(plain.ends_with("fault filter abort"), "{plain}");
    let grpc = head_and_body(&[
        "--http2-prior-knowledge",
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "http://reviews:9080/unavailable",
    ]);
    assert!(grpc.starts_with("HTTP/2 200"), "{grpc}");
    assert!(grpc.contains("content-type: application/grpc"), "{grpc}");
    assert!(grpc.contains("grpc-status: 14"), "{grpc}");
    assert!(grpc.contains("grpc-message: fault filter abort"), "{grpc}");
    assert_eq!(
        v1.requests() + v2.requests(),
        0,
        "no abort reached a backend"
    );
}

#[test]
fn mirrors_get_every_request_at_100_percent_and_none_at_0() {
    if !ebpf_available("mirror") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = format!(
        "  - match:\n    - uri:\n        prefix: /all\n    mirror:\n      host: reviews\n      subset: v2\n    mirrorPercentage:\n      value: 100\n{TO_V1}  - match:\n    - uri:\n        prefix: /legacy\n    mirror:\n      host: reviews\n      subset: v2\n    mirrorPercent: 0\n{TO_V1}  - mirror:\n      host: reviews\n      subset: v2\n    mirrorPercentage:\n      value: 0\n{TO_V1}"
    );
    let d = start("mirror", 55, &policies(&v1, &v2, &routes));
    for _ in 0..20 {
        assert_eq!(status(&d, "http://reviews:9080/all"), "200");
        assert_eq!(status(&d, "http://reviews:9080/none"), "200");
        // The deprecated integer form counts as Istio reads it.
        assert_eq!(status(&d, "http://reviews:9080/legacy"), "200");
    }
    // Mirrors are fire-and-forget: give the last copies a moment to land.
    support::eventually(std::time::Duration::from_secs(5), || {
        (v2.requests() >= 20).then_some(())
    });
    assert_eq!(v1.requests(), 60, "the primary got every request");
    assert_eq!(v2.requests(), 20, "100% mirrored for /all, 0% for the rest");
    assert_eq!(
        v2.shadow_requests(),
        20,
        "mirrored requests carry the -shadow host"
    );
}

/// An answer that goes before the request's body has been read to its end (here a direct
/// response; an upstream answering an upload early takes the same path) ends the HTTP/1.1 connection, and says so
/// with `Connection: close`, as Envoy does: a keep-alive client then sends its next request
/// on a new connection instead of losing it on the closed one.
#[test]
fn an_answer_before_the_body_ends_says_connection_close() {
    if !ebpf_available("early_answer") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = format!(
        "  - match:\n    - uri:\n        prefix: /direct\n    directResponse:\n      status: 403\n      body:\n        string: no\n  - {}",
        TO_V1.trim_start()
    );
    let d = start("early-answer", 306, &policies(&v1, &v2, &routes));
    // Python's http.client reuses its connection unless the answer says `Connection: close`.
    let script = r#"
import http.client, sys
for path, size in [("/direct", 100000), ("/direct", 10), ("/echo", 1000)]:
    c = http.client.HTTPConnection("127.0.0.50", 9080, timeout=10)
    c.request("POST", path, body=b"x" * size, headers={"Host": "reviews:9080"})
    r = c.getresponse()
    r.read()
    first = "%d %s" % (r.status, r.getheader("connection"))
    try:
        c.request("GET", "/whoami", headers={"Host": "reviews:9080"})
        second = c.getresponse()
        second.read()
        then = str(second.status)
    except Exception as e:
        then = type(e).__name__
    print(path, size, first, then)
    c.close()
"#;
    let out = d
        .exec("default/productpage", &["python3", "-c", script])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        [
            "/direct 100000 403 close 200",
            "/direct 10 403 close 200",
            // A body read to its end keeps the connection.
            "/echo 1000 200 None 200",
        ],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A body of no declared length (chunked on HTTP/1.1, DATA frames without content-length on
/// HTTP/2) streams to the primary, and its mirror copy goes once it has ended within the retry
/// buffer, whole; a longer one is not copied.
#[test]
fn streamed_bodies_are_mirrored_once_they_end() {
    if !ebpf_available("mirror_streamed") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = format!(
        "  - mirror:\n      host: reviews\n      subset: v2\n    mirrorPercentage:\n      value: 100\n{TO_V1}"
    );
    let d = start("mirror-streamed", 304, &policies(&v1, &v2, &routes));
    let text = "hello, mirrored world";
    let sum: u64 = text.bytes().map(u64::from).sum();
    let echo = |version: &str, body: &str| {
        curl(
            &d,
            &[
                version,
                "-H",
                "transfer-encoding: chunked",
                "--data-binary",
                body,
                "http://reviews:9080/echo",
            ],
        )
    };
    let expected = format!(
        "{{\"length\":{},\"sum\":{sum},\"trailers\":[]}}",
        text.len()
    );
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let primary = echo(version, text);
        assert_eq!(primary.trim(), expected, "{version}: the primary's body");
    }
    support::eventually(std::time::Duration::from_secs(5), || {
        (v2.shadow_echoes().len() >= 2).then_some(())
    });
    assert_eq!(v2.shadow_echoes(), [expected.clone(), expected]);

    // Past the retry buffer (64 KiB), the primary gets it all and no copy goes.
    let big = "x".repeat(100 * 1024);
    let primary = echo("--http1.1", &big);
    assert!(primary.starts_with("{\"length\":102400,"), "{primary}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        v2.shadow_echoes().len(),
        2,
        "no copy of a body past the buffer"
    );
    assert!(d.metric("meshd_http_mirror_total{result=\"dropped\"}") >= 1.0);
}

/// Streams whose copies wait for their bodies' end hold none of the copies' room meanwhile:
/// with more long uploads open on a mirrored route than one destination's share (64), a short
/// request's copy still goes.
#[test]
fn long_uploads_waiting_to_be_mirrored_take_no_copy_room() {
    if !ebpf_available("mirror_waiting") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = format!(
        "  - mirror:\n      host: reviews\n      subset: v2\n    mirrorPercentage:\n      value: 100\n{TO_V1}"
    );
    let d = start("mirror-waiting", 308, &policies(&v1, &v2, &routes));
    let script = r#"
import http.client, socket, time
head = b"POST /echo HTTP/1.1\r\nHost: reviews:9080\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
uploads = []
for _ in range(80):
    s = socket.create_connection(("127.0.0.50", 9080), timeout=10)
    s.sendall(head)
    uploads.append(s)
time.sleep(1)
c = http.client.HTTPConnection("127.0.0.50", 9080, timeout=10)
c.request("POST", "/echo", body=b"short", headers={"Host": "reviews:9080"})
r = c.getresponse()
print(r.status, r.read().decode().strip())
time.sleep(1)
for s in uploads:
    s.sendall(b"0\r\n\r\n")
time.sleep(1)
"#;
    let out = d
        .exec("default/productpage", &["python3", "-c", script])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with("200 "),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sum: u64 = b"short".iter().map(|b| u64::from(*b)).sum();
    let short = format!(r#"{{"length":5,"sum":{sum},"trailers":[]}}"#);
    let copied = support::eventually(std::time::Duration::from_secs(5), || {
        v2.shadow_echoes().contains(&short).then_some(())
    });
    assert!(
        copied.is_some(),
        "the short request was mirrored: {:?}",
        v2.shadow_echoes()
    );
}

/// A mirror copy has the route's timeout, as Envoy gives its shadows, and one destination may
/// hold only a share of the copies in flight: a mirror destination that hangs neither keeps
/// its copies forever nor stops another destination's.
#[test]
fn a_hanging_mirror_destination_holds_neither_its_copies_nor_others_mirrors() {
    if !ebpf_available("mirror_hanging") {
        return;
    }
    let (v1, v2) = two_backends();
    let hanging = Backend::silent("127.0.0.1:0");
    let routes = format!(
        "  - match:\n    - uri:\n        prefix: /hang\n    timeout: 200ms\n    mirror:\n      host: reviews\n      subset: v2\n{TO_V1}  - mirror:\n      host: reviews\n      subset: v1\n{TO_V1}"
    );
    let yaml = policies(&v1, &v2, &routes).replace(
        &format!("http: {}\n", v2.addr.port()),
        &format!("http: {}\n", hanging.addr.port()),
    );
    let d = start("mirror-hanging", 305, &yaml);
    // More copies than meshd holds in all (256) go to the endpoint that never answers.
    let codes = curl_many(&d, "http://reviews:9080/hang", 300, "%{http_code}\\n");
    assert!(
        codes.iter().all(|c| c == "200"),
        "the primaries are untouched"
    );
    // Another destination's mirrors still go.
    for _ in 0..5 {
        assert_eq!(status(&d, "http://reviews:9080/other"), "200");
    }
    let others = support::eventually(std::time::Duration::from_secs(5), || {
        (v1.shadow_requests() >= 5).then_some(())
    });
    assert!(
        others.is_some(),
        "{} of 5 copies to the other destination",
        v1.shadow_requests()
    );
    // The route's timeout (200 ms) ended the hanging copies: new ones go again.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let before = hanging.accepted();
    for _ in 0..10 {
        assert_eq!(status(&d, "http://reviews:9080/hang"), "200");
    }
    let again = support::eventually(std::time::Duration::from_secs(5), || {
        (hanging.accepted() >= before + 10).then_some(())
    });
    assert!(
        again.is_some(),
        "{} of 10 new copies went",
        hanging.accepted() - before
    );
}

/// Outlier detection for opaque TCP, as Envoy's TCP proxy feeds it: a failed connect counts
/// against the endpoint, which is ejected, and later connections go to the others.
#[test]
fn tcp_connect_failures_eject_an_endpoint() {
    if !ebpf_available("tcp_outlier") {
        return;
    }
    let (v1, v2) = two_backends();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let lb = "      simple: ROUND_ROBIN\n    outlierDetection:\n      consecutive5xxErrors: 1\n      baseEjectionTime: 30s\n      maxEjectionPercent: 100\n";
    let yaml = with_lb(policies(&v1, &v2, TO_ALL), lb)
        .replace("protocol: HTTP", "protocol: TCP")
        .replace(
            &format!("http: {}\n", v2.addr.port()),
            &format!("http: {dead_port}\n"),
        );
    let d = start("tcp-outlier", 203, &yaml);
    let code = || {
        let out = d
            .exec(
                "default/productpage",
                &[
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "5",
                    "--resolve",
                    "reviews:9080:127.0.0.50",
                    "http://reviews:9080/whoami",
                ],
            )
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let codes: Vec<String> = (0..6).map(|_| code()).collect();
    assert_eq!(
        codes.iter().filter(|c| *c == "200").count(),
        5,
        "one connect failed, then the dead endpoint was ejected: {codes:?}"
    );
    assert_eq!(v1.requests(), 5);
    assert!(d.log_shows("endpoint ejected by outlier detection"));
}

/// ServiceEntry endpoint `weight`s share a service's traffic, as Envoy's load-balancing
/// weights do: 90/10 over 400 requests.
#[test]
fn endpoint_weights_share_the_traffic() {
    if !ebpf_available("endpoint_weights") {
        return;
    }
    let (v1, v2) = two_backends();
    let weigh = |yaml: String, port: u16, w: u32| {
        let at = format!("      http: {port}\n");
        yaml.replace(&at, &format!("{at}    weight: {w}\n"))
    };
    let yaml = weigh(
        weigh(policies(&v1, &v2, TO_ALL), v1.addr.port(), 90),
        v2.addr.port(),
        10,
    );
    assert_eq!(yaml.matches("    weight: ").count(), 2, "{yaml}");
    let d = start("endpoint-weights", 205, &yaml);
    let n = 400;
    let codes = curl_many(&d, "http://reviews:9080/whoami", n, "%{http_code}\\n");
    assert!(codes.iter().all(|c| c == "200"));
    // Binomial(400, 0.1): mean 40, sd 6; 5 sd either side.
    let b = v2.requests();
    assert_eq!(v1.requests() + b, n);
    assert!((10..=70).contains(&b), "v2 got {b} of {n}");
    drop(d);
    // Mirrored copies spread by the same weights.
    let (v1, v2) = two_backends();
    let routes = format!("  - mirror:\n      host: reviews\n{TO_V1}");
    let yaml = weigh(
        weigh(policies(&v1, &v2, &routes), v1.addr.port(), 90),
        v2.addr.port(),
        10,
    );
    let d = start("mirror-weights", 219, &yaml);
    let codes = curl_many(&d, "http://reviews:9080/whoami", n, "%{http_code}\n");
    assert!(codes.iter().all(|c| c == "200"));
    let copies = || v1.shadow_requests() + v2.shadow_requests();
    support::eventually(std::time::Duration::from_secs(5), || {
        (copies() == n).then_some(())
    });
    let b = v2.shadow_requests();
    assert_eq!(copies(), n, "every request mirrored");
    assert!((10..=70).contains(&b), "v2 got {b} of {n} copies");
}

/// The mesh's DestinationRule with a trafficPolicy.loadBalancer block added.
fn with_lb(yaml: String, lb: &str) -> String {
    yaml.replace(
        "spec:\n  host: reviews\n  subsets:",
        &format!("spec:\n  host: reviews\n  trafficPolicy:\n    loadBalancer:\n{lb}  subsets:"),
    )
}

const TO_ALL: &str = "  - route:\n    - destination:\n        host: reviews\n";

#[test]
fn load_balancing_round_robin_and_consistent_hash() {
    if !ebpf_available("lb") {
        return;
    }
    let (a, b) = two_backends();
    let d = start(
        "lb-rr",
        56,
        &with_lb(policies(&a, &b, TO_ALL), "      simple: ROUND_ROBIN\n"),
    );
    let codes = curl_many(&d, "http://reviews:9080/whoami", 20, "%{http_code}\\n");
    assert!(codes.iter().all(|c| c == "200"));
    assert_eq!(
        (a.requests(), b.requests()),
        (10, 10),
        "round robin alternates"
    );
    drop(d);

    let (a, b) = two_backends();
    let d = start(
        "lb-hash",
        57,
        &with_lb(
            policies(&a, &b, TO_ALL),
            "      consistentHash:\n        httpHeaderName: x-user\n",
        ),
    );
    for user in ["alice", "bob", "carol", "dave"] {
        let (before_a, before_b) = (a.requests(), b.requests());
        for _ in 0..5 {
            assert_eq!(
                curl(
                    &d,
                    &[
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                        "-H",
                        &format!("x-user: {user}"),
                        "http://reviews:9080/"
                    ]
                ),
                "200"
            );
        }
        let (da, db) = (a.requests() - before_a, b.requests() - before_b);
        assert!(
            (da, db) == (5, 0) || (da, db) == (0, 5),
            "{user} stuck to one endpoint: {da}/{db}"
        );
    }
}

/// Istio's sticky sessions: `httpCookie` with a `ttl` generates the cookie when the client has
/// none (Envoy's Set-Cookie), and a client that keeps it stays on one endpoint.
#[test]
fn a_cookie_policy_with_a_ttl_hands_out_the_cookie_and_keeps_to_one_endpoint() {
    if !ebpf_available("lb_cookie") {
        return;
    }
    let (a, b) = two_backends();
    let d = start(
        "lb-cookie",
        181,
        &with_lb(
            policies(&a, &b, TO_ALL),
            "      consistentHash:\n        httpCookie:\n          name: session\n          path: /\n          ttl: 60s\n",
        ),
    );
    let jars = std::env::temp_dir().join("meshd-test-lb-cookie-jars");
    let _ = std::fs::remove_dir_all(&jars);
    std::fs::create_dir_all(&jars).unwrap();
    let mut endpoints_seen = [0, 0];
    for client in 0..16 {
        let jar = jars.join(format!("{client}.txt"));
        let jar = jar.to_str().unwrap();
        let mut served_by = Vec::new();
        for request in 0..5 {
            let (before_a, before_b) = (a.requests(), b.requests());
            let head = curl(
                &d,
                &[
                    "-b",
                    jar,
                    "-c",
                    jar,
                    "-D",
                    "-",
                    "-o",
                    "/dev/null",
                    "http://reviews:9080/whoami",
                ],
            );
            served_by.push(usize::from(b.requests() > before_b));
            assert_eq!(a.requests() + b.requests(), before_a + before_b + 1);
            let cookies: Vec<&str> = head
                .lines()
                .filter_map(|l| l.strip_prefix("set-cookie: "))
                .collect();
            if request == 0 {
                let [c] = cookies[..] else {
                    panic!("one Set-Cookie for a client without the cookie: {head}");
                };
                let value = c
                    .strip_prefix("session=\"")
                    .and_then(|c| c.strip_suffix("\"; Max-Age=60; Path=/; HttpOnly"))
                    .unwrap_or_else(|| panic!("Envoy's Set-Cookie: {c}"));
                assert!(value.len() == 16 && value.bytes().all(|b| b.is_ascii_hexdigit()));
            } else {
                assert!(cookies.is_empty(), "the client has its cookie: {head}");
            }
        }
        assert!(
            served_by.iter().all(|e| *e == served_by[0]),
            "client {client} moved between endpoints: {served_by:?}"
        );
        endpoints_seen[served_by[0]] += 1;
    }
    // 16 cookies all on one of two endpoints: about once in 32,768 runs.
    assert!(
        endpoints_seen[0] > 0 && endpoints_seen[1] > 0,
        "the cookies spread over both endpoints: {endpoints_seen:?}"
    );
}

#[test]
fn a_dead_mirror_never_touches_the_primary() {
    if !ebpf_available("mirror_dead") {
        return;
    }
    let v1 = HttpBackend::start("127.0.0.1:0");
    // v2's endpoint is a closed port: every mirrored copy fails to connect.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = closed.local_addr().unwrap().port();
    drop(closed);
    let v2 = HttpBackend::start("127.0.0.1:0");
    let routes = format!("  - mirror:\n      host: reviews\n      subset: v2\n{TO_V1}");
    let yaml = policies(&v1, &v2, &routes).replace(
        &format!("http: {}\n", v2.addr.port()),
        &format!("http: {dead_port}\n"),
    );
    let d = start("mirror-dead", 58, &yaml);
    let codes = curl_many(&d, "http://reviews:9080/whoami", 50, "%{http_code}\\n");
    assert!(codes.iter().all(|c| c == "200"), "{codes:?}");
    assert_eq!(v1.requests(), 50);
    assert!(
        !d.log_text().contains("flags=UF"),
        "mirror failures are not the primary's"
    );
    // Each copy went, and failed: both counted.
    let failed = support::eventually(std::time::Duration::from_secs(5), || {
        let n = d.metric("meshd_http_mirror_total{result=\"failed\"}");
        (n == 50.0).then_some(n)
    });
    assert_eq!(failed, Some(50.0), "{}", d.get("/metrics"));
    assert_eq!(d.metric("meshd_http_mirror_total{result=\"sent\"}"), 50.0);
}

#[test]
fn outlier_detection_ejects_a_failing_endpoint_and_lets_it_return() {
    if !ebpf_available("outlier") {
        return;
    }
    let failing = Backend::http_503("127.0.0.1:0");
    let (healthy, v2) = two_backends();
    let lb = "      simple: ROUND_ROBIN\n    outlierDetection:\n      consecutive5xxErrors: 2\n      interval: 1s\n      baseEjectionTime: 2s\n      maxEjectionPercent: 100\n";
    let yaml = with_lb(policies(&healthy, &v2, "  - retries:\n      attempts: 0\n    route:\n    - destination:\n        host: reviews\n"), lb)
        .replace(&format!("http: {}\n", v2.addr.port()), &format!("http: {}\n", failing.addr.port()));
    let d = start("outlier", 59, &yaml);
    let codes = curl_many(&d, "http://reviews:9080/whoami", 20, "%{http_code}\\n");
    let failures = codes.iter().filter(|c| *c == "503").count();
    assert_eq!(failures, 2, "two failures eject the endpoint: {codes:?}");
    assert_eq!(
        healthy.requests(),
        18,
        "everything else went to the healthy endpoint"
    );
    assert_eq!(d.metric(r#"meshd_outlier_events_total{cluster="outbound|9080||reviews.default.svc.cluster.local",event="ejected"}"#), 1.0);
    assert!(
        d.log_text()
            .contains("endpoint ejected by outlier detection")
    );
    // After the 2 s ejection, at the detector's next 1 s tick, the endpoint gets traffic
    // again.
    let returned = support::eventually(std::time::Duration::from_secs(6), || {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let codes = curl_many(&d, "http://reviews:9080/whoami", 2, "%{http_code}\\n");
        codes.iter().any(|c| c == "503").then_some(())
    });
    assert!(returned.is_some(), "the endpoint returned");
    assert!(d.log_text().contains("endpoint returned from ejection"));
}

/// An endpoint that hangs is ejected too: as in Envoy, an attempt a per-try timeout or the
/// route timeout ends is a local-origin failure for outlier detection (unsplit, a 5xx).
#[test]
fn timeouts_count_against_a_hanging_endpoint() {
    if !ebpf_available("outlier_timeouts") {
        return;
    }
    let hanging = Backend::silent("127.0.0.1:0");
    let (healthy, v2) = two_backends();
    let lb = "      simple: ROUND_ROBIN\n    outlierDetection:\n      consecutive5xxErrors: 2\n      baseEjectionTime: 30s\n      maxEjectionPercent: 100\n";
    // `/try` is bounded by a per-try timeout and retried; anything else by the route timeout.
    let routes = "  - match:\n    - uri:\n        prefix: /try\n    rewrite:\n      uri: /whoami\n    retries:\n      attempts: 1\n      perTryTimeout: 200ms\n      retryOn: gateway-error\n    route:\n    - destination:\n        host: reviews\n  - timeout: 200ms\n    retries:\n      attempts: 0\n    route:\n    - destination:\n        host: reviews\n";
    let yaml = with_lb(policies(&healthy, &v2, routes), lb).replace(
        &format!("http: {}\n", v2.addr.port()),
        &format!("http: {}\n", hanging.addr.port()),
    );
    for (path, slot) in [("/whoami", 279), ("/try", 280)] {
        let d = start(&format!("outlier-timeouts-{slot}"), slot, &yaml);
        let codes = curl_many(
            &d,
            &format!("http://reviews:9080{path}"),
            10,
            "%{http_code}\\n",
        );
        let ejected = r#"meshd_outlier_events_total{cluster="outbound|9080||reviews.default.svc.cluster.local",event="ejected"}"#;
        assert_eq!(
            d.metric(ejected),
            1.0,
            "{path}: {codes:?}\n{}",
            d.log_text()
        );
        // Once ejected, the hanging endpoint gets no more requests: the last ones succeed.
        assert!(codes[6..].iter().all(|c| c == "200"), "{path}: {codes:?}");
    }
}

/// Removing a DestinationRule and adding it back, with no request in between, starts its
/// outlier detection afresh, as Envoy builds a changed cluster afresh.
#[test]
fn a_destination_rule_removed_and_added_back_forgets_its_ejections() {
    if !ebpf_available("outlier_readd") {
        return;
    }
    let failing = Backend::http_503("127.0.0.1:0");
    let (healthy, v2) = two_backends();
    let lb = "      simple: ROUND_ROBIN\n    outlierDetection:\n      consecutive5xxErrors: 1\n      baseEjectionTime: 5m\n      maxEjectionPercent: 100\n";
    let routes =
        "  - retries:\n      attempts: 0\n    route:\n    - destination:\n        host: reviews\n";
    let failing_port = format!("http: {}\n", failing.addr.port());
    let with_rule = with_lb(policies(&healthy, &v2, routes), lb)
        .replace(&format!("http: {}\n", v2.addr.port()), &failing_port);
    let without = with_rule.replace(&format!("  trafficPolicy:\n    loadBalancer:\n{lb}"), "");
    assert_ne!(with_rule, without);
    let dir = support::mesh::config_dir("outlier-readd", &with_rule);
    let d = support::Daemon::start("outlier-readd", 283, &["--config", dir.to_str().unwrap()]);
    curl_many(&d, "http://reviews:9080/whoami", 4, "%{http_code}\n");
    let ejected = || d.get("/stats/outliers").contains(r#""ejected": true"#);
    assert!(ejected(), "{}", d.get("/stats/outliers"));
    let reloads = |n: f64| {
        support::eventually(std::time::Duration::from_secs(5), || {
            (d.metric(r#"meshd_config_reload_total{result="success"}"#) >= n).then_some(())
        })
        .expect("reload applied")
    };
    std::fs::write(dir.join("reviews.yaml"), &without).unwrap();
    reloads(1.0);
    std::fs::write(dir.join("reviews.yaml"), &with_rule).unwrap();
    reloads(2.0);
    assert!(!ejected(), "{}", d.get("/stats/outliers"));
}

/// With Istio's defaults (no `minHealthPercent`, so Envoy's panic threshold is 0), a service
/// whose only endpoint is ejected has no healthy upstream: 503 UH, and the endpoint is spared.
#[test]
fn a_service_whose_only_endpoint_is_ejected_has_no_healthy_upstream() {
    if !ebpf_available("outlier_all") {
        return;
    }
    let failing = Backend::http_503("127.0.0.1:0");
    let (v1, v2) = two_backends();
    let lb = "      simple: ROUND_ROBIN\n    outlierDetection:\n      consecutive5xxErrors: 2\n      baseEjectionTime: 30s\n      maxEjectionPercent: 100\n";
    let routes = "  - retries:\n      attempts: 0\n    route:\n    - destination:\n        host: reviews\n        subset: v2\n";
    let yaml = with_lb(policies(&v1, &v2, routes), lb).replace(
        &format!("http: {}\n", v2.addr.port()),
        &format!("http: {}\n", failing.addr.port()),
    );
    let d = start("outlier-all", 195, &yaml);
    let codes = curl_many(&d, "http://reviews:9080/whoami", 6, "%{http_code}\\n");
    assert_eq!(codes, ["503"; 6], "{codes:?}");
    // Two failures eject the endpoint, and it is spared after.
    let four = "flags=UH".repeat(4);
    let uh = || d.log_text().matches("flags=UH").collect::<String>();
    assert!(
        support::eventually(std::time::Duration::from_secs(3), || (uh() == four)
            .then_some(()))
        .is_some(),
        "{}",
        d.log_text()
    );
    let log = d.log_text();
    assert!(log.contains("outlier detection ejected every endpoint"));
}

/// The same for opaque TCP: once its only endpoint is ejected after a failed connect, a
/// connection has no healthy upstream (flag UH) instead of another try at the dead endpoint.
#[test]
fn a_tcp_service_whose_only_endpoint_is_ejected_has_no_healthy_upstream() {
    if !ebpf_available("tcp_outlier_all") {
        return;
    }
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: db
spec:
  hosts:
  - db.default.svc.cluster.local
  addresses:
  - 127.0.0.50
  ports:
  - number: 9080
    name: tcp
    protocol: TCP
  resolution: STATIC
  endpoints:
  - address: 127.0.0.1
    ports:
      tcp: {dead_port}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: db
spec:
  host: db
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 1
      baseEjectionTime: 30s
      maxEjectionPercent: 100
"#
    );
    let d = start("tcp-outlier-all", 208, &yaml);
    for _ in 0..3 {
        let out = d
            .exec(
                "default/productpage",
                &["curl", "-s", "--max-time", "5", "http://127.0.0.50:9080/"],
            )
            .output()
            .unwrap();
        assert!(!out.status.success());
    }
    let log = || d.log_text();
    assert!(
        support::eventually(std::time::Duration::from_secs(3), || log()
            .contains("outlier detection ejected every endpoint")
            .then_some(()))
        .is_some(),
        "{}",
        log()
    );
    assert!(log().contains("endpoint ejected by outlier detection"));
}

/// Envoy's per-request overrides, which Istio's sidecars honour from their workloads:
/// `x-envoy-retry-on` and `x-envoy-max-retries` retry where the route does not,
/// `x-envoy-upstream-rq-timeout-ms` and `x-envoy-upstream-rq-per-try-timeout-ms` shorten the
/// route's timeouts, and none of them reaches the upstream.
#[test]
fn envoy_request_headers_override_the_routes_retries_and_timeouts() {
    if !ebpf_available("envoy_overrides") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = format!("  - timeout: 5s\n    retries:\n      attempts: 0\n{TO_V1}");
    let d = start("envoy-overrides", 211, &policies(&v1, &v2, &routes));
    let code = |args: &[&str]| {
        let mut all = vec!["-o", "/dev/null", "-w", "%{http_code}"];
        all.extend_from_slice(args);
        curl(&d, &all)
    };
    // The route retries nothing; the headers ask for two retries on 5xx.
    assert_eq!(code(&["http://reviews:9080/fail-first/1"]), "503");
    let retry = [
        "-H",
        "x-envoy-retry-on: 5xx",
        "-H",
        "x-envoy-max-retries: 2",
    ];
    let mut args = retry.to_vec();
    args.push("http://reviews:9080/fail-first/2");
    assert_eq!(code(&args), "200");
    assert_eq!(v1.max_attempt(), 3);
    // A 2 s answer under the route's 5 s timeout, and under 200 ms asked by the request.
    assert_eq!(code(&["http://reviews:9080/sleep/2000"]), "200");
    let short = ["-H", "x-envoy-upstream-rq-timeout-ms: 200"];
    let mut args = short.to_vec();
    args.push("http://reviews:9080/sleep/2000");
    assert_eq!(code(&args), "504");
    // Two tries of 100 ms each at a 300 ms answer.
    let mut args = retry.to_vec();
    args.extend(["-H", "x-envoy-upstream-rq-per-try-timeout-ms: 100"]);
    args.push("http://reviews:9080/sleep/300");
    assert_eq!(code(&args), "504");
    assert!(d.log_text().contains("flags=UT"), "{}", d.log_text());
    // `x-envoy-upstream-rq-timeout-alt-response`: a timeout answers 204, with no body.
    let alt = ["-H", "x-envoy-upstream-rq-timeout-alt-response: 1"];
    let mut args = [short, alt].concat();
    args.push("http://reviews:9080/sleep/2000");
    assert_eq!(code(&args), "204");
    // Consumed: the upstream sees none of them.
    let mut args: Vec<&str> = retry.to_vec();
    args.extend(alt);
    args.extend(short);
    args.extend(["-H", "x-envoy-upstream-rq-per-try-timeout-ms: 1000"]);
    args.push("http://reviews:9080/whoami");
    let body = curl(&d, &args);
    // Only Envoy's own header for the time the request has: the shorter of the two asked.
    assert!(
        body.contains("\"x_envoy\":\"x-envoy-expected-rq-timeout-ms\""),
        "{body}"
    );
    assert!(body.contains("\"expected_timeout\":\"200\""), "{body}");
    // Without them, the route's 5 s timeout.
    let body = curl(&d, &["http://reviews:9080/whoami"]);
    assert!(body.contains("\"expected_timeout\":\"5000\""), "{body}");
}

/// Slow start (`warmup`): an endpoint that joins a warm service gets a small share of the
/// traffic at first, and its full share once its window has passed.
#[test]
fn a_new_endpoint_warms_up_before_taking_its_full_share() {
    if !ebpf_available("slow_start") {
        return;
    }
    let (v1, v2) = two_backends();
    // A fast ramp: 4 s, with the share (age / 4 s) ^ 4, at least 1%.
    let lb = "      simple: ROUND_ROBIN\n      warmup:\n        duration: 4s\n        minimumPercent: 1\n        aggression: 0.25\n";
    let both = with_lb(policies(&v1, &v2, TO_ALL), lb);
    let only_v1 = both.replace(
        &format!(
            "  - address: 127.0.0.1\n    ports:\n      http: {}\n    labels:\n      version: v2\n",
            v2.addr.port()
        ),
        "",
    );
    assert_ne!(only_v1, both);
    let dir = support::mesh::config_dir("slow-start", &only_v1);
    let d = support::Daemon::start("slow-start", 214, &["--config", dir.to_str().unwrap()]);
    let generation = || {
        let dump: serde_json::Value = serde_json::from_str(&d.get("/config_dump")).unwrap();
        dump["snapshot"]["generation"].as_u64().unwrap()
    };
    curl_many(&d, "http://reviews:9080/", 5, "%{http_code}\\n");
    // v1 is warm once its window has passed; then v2 joins.
    std::thread::sleep(std::time::Duration::from_millis(4500));
    let before = generation();
    std::fs::write(dir.join("reviews.yaml"), &both).unwrap();
    support::eventually(std::time::Duration::from_secs(5), || {
        (generation() > before).then_some(())
    })
    .expect("the new endpoint applied");
    let joined = Instant::now();
    curl_many(&d, "http://reviews:9080/", 200, "%{http_code}\\n");
    let early = v2.requests();
    // Without slow start v2 would get half. Its weight is at most (age / 4 s) ^ 4 of v1's,
    // whatever the age the round ended at (under a second here: 1%).
    let age = joined.elapsed().as_secs_f64().clamp(1.0, 4.0);
    let share = (age / 4.0).powi(4);
    let bound = 200.0 * share / (1.0 + share) + 15.0;
    eprintln!("first round: {age:.2} s, v2 got {early} (bound {bound:.0})");
    assert!(
        (early as f64) <= bound,
        "v2 got {early} of 200 while warming up"
    );
    std::thread::sleep(std::time::Duration::from_secs(4).saturating_sub(joined.elapsed()));
    curl_many(&d, "http://reviews:9080/", 200, "%{http_code}\\n");
    let late = v2.requests() - early;
    assert!((70..=130).contains(&late), "v2 got {late} of 200 once warm");
}

/// Mirrored copies choose their endpoint as the service's own requests would: here its
/// `failoverPriority` sends every copy to v2 while v2 is healthy.
#[test]
fn mirrors_follow_the_mirrored_services_failover_priority() {
    if !ebpf_available("mirror_priority") {
        return;
    }
    let (v1, v2) = two_backends();
    let routes = format!("  - mirror:\n      host: reviews\n{TO_V1}");
    let lb = "      simple: ROUND_ROBIN\n      localityLbSetting:\n        failoverPriority: [version=v2]\n    outlierDetection:\n      consecutive5xxErrors: 5\n";
    let d = start(
        "mirror-priority",
        222,
        &with_lb(policies(&v1, &v2, &routes), lb),
    );
    let n = 40;
    let codes = curl_many(&d, "http://reviews:9080/whoami", n, "%{http_code}\\n");
    assert!(codes.iter().all(|c| c == "200"));
    let copies = || v1.shadow_requests() + v2.shadow_requests();
    support::eventually(std::time::Duration::from_secs(5), || {
        (copies() == n).then_some(())
    });
    assert_eq!((v1.shadow_requests(), v2.shadow_requests()), (0, n));
    drop(d);
    // Without priorities, round robin alternates the copies. Each cluster keeps its own
    // position: with one position shared by the route's pick and the mirror's, every copy saw
    // an even turn and went to v1.
    let (v1, v2) = two_backends();
    let lb = "      simple: ROUND_ROBIN\n";
    let d = start(
        "mirror-round-robin",
        223,
        &with_lb(policies(&v1, &v2, &routes), lb),
    );
    curl_many(&d, "http://reviews:9080/whoami", n, "%{http_code}\\n");
    let copies = || v1.shadow_requests() + v2.shadow_requests();
    support::eventually(std::time::Duration::from_secs(5), || {
        (copies() == n).then_some(())
    });
    assert_eq!((v1.shadow_requests(), v2.shadow_requests()), (n / 2, n / 2));
    drop(d);
    // The mirrored service's own algorithm: a consistent hash keeps one user's copies on one
    // endpoint.
    let (v1, v2) = two_backends();
    let lb = "      consistentHash:\n        httpHeaderName: x-user\n";
    let d = start(
        "mirror-hash",
        224,
        &with_lb(policies(&v1, &v2, &routes), lb),
    );
    let mut args = vec!["-H", "x-user: alice", "-w", "%{http_code}\\n"];
    for _ in 0..20 {
        args.extend(["-o", "/dev/null", "http://reviews:9080/whoami"]);
    }
    curl(&d, &args);
    let copies = || v1.shadow_requests() + v2.shadow_requests();
    support::eventually(std::time::Duration::from_secs(5), || {
        (copies() == 20).then_some(())
    });
    let split = (v1.shadow_requests(), v2.shadow_requests());
    assert!(split == (20, 0) || split == (0, 20), "{split:?}");
}

/// DestinationRule `proxyProtocol`: meshd opens each upstream connection with a PROXY protocol
/// header naming the client and the address it dialled (version 1 for HTTP here, version 2 for
/// an opaque TCP port), to nginx expecting it. Upstream connections are kept per downstream
/// connection, as Envoy keeps them: a header speaks for one client connection.
#[test]
fn proxy_protocol_announces_the_client_to_the_upstream() {
    if !ebpf_available("proxy_protocol") {
        return;
    }
    let (http_port, tcp_port) = (support::ports(226).0 + 5, support::ports(226).0 + 6);
    let nginx = support::nginx::Nginx::proxy_protocol("proxy-protocol", &[http_port, tcp_port]);
    let service = |name: &str, vip: &str, port: &str, endpoint: u16, proxy: &str| {
        let rule = if proxy.is_empty() {
            String::new()
        } else {
            format!(
                "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: {name}\nspec:\n  host: {name}.example\n  trafficPolicy:\n    proxyProtocol: {{version: {proxy}}}\n"
            )
        };
        format!(
            "{}{rule}",
            external(&format!("{name}.example"), vip, port, endpoint)
        )
    };
    let (v1, v2) = two_backends();
    let yaml = [
        policies(
            &v1,
            &v2,
            "  - route:\n    - destination:\n        host: reviews\n",
        ),
        service("legacy", "127.0.0.70", "8080/HTTP", http_port, "V1"),
        service("legacy-tcp", "127.0.0.71", "7070/TCP", tcp_port, "V2"),
        service("plain", "127.0.0.72", "8080/HTTP", http_port, ""),
    ]
    .join("\n");
    let d = start("proxy-protocol", 226, &yaml);
    let get = |host: &str, vip: &str, port: u16, times: usize| {
        let resolve = format!("{host}:{port}:{vip}");
        let url = format!("http://{host}:{port}/");
        // Each answer, then the port curl's connection had.
        let mut args = vec!["--resolve", resolve.as_str(), "-w", "curl %{local_port}\\n"];
        args.extend(std::iter::repeat_n(url.as_str(), times));
        let out = curl(&d, &args);
        out.lines().map(str::to_string).collect::<Vec<_>>()
    };
    // "127.0.0.1:PORT>127.0.0.70:8080 #N" then "curl PORT": the client's address and port (as
    // curl saw its own), the VIP it dialled, and nginx's connection.
    let parse = |lines: &[String]| {
        let (addrs, conn) = lines[0]
            .split_once(" #")
            .unwrap_or_else(|| panic!("{lines:?}"));
        let (source, destination) = addrs.split_once('>').unwrap();
        let port = source.strip_prefix("127.0.0.1:").unwrap();
        assert_eq!(
            lines[1],
            format!("curl {port}"),
            "the header names the client"
        );
        (port.to_string(), destination.to_string(), conn.to_string())
    };
    // meshd's open connections to nginx's HTTP port.
    let upstreams = || {
        let out = std::process::Command::new("ss")
            .args([
                "-Htn",
                "state",
                "established",
                "dport",
                "=",
                &format!(":{http_port}"),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    let first = get("legacy.example", "127.0.0.70", 8080, 2);
    assert_eq!(first.len(), 4, "{first:?} {}", nginx.error_log());
    let (a, b) = (parse(&first[..2]), parse(&first[2..]));
    assert_eq!(a.1, "127.0.0.70:8080");
    assert_eq!(
        a, b,
        "two requests of one client connection share one upstream"
    );
    let c = parse(&get("legacy.example", "127.0.0.70", 8080, 1));
    assert_ne!(c.0, a.0, "another client connection");
    assert_ne!(c.2, a.2, "another upstream connection, with its own header");
    // Both clients have left: no request can use their upstream connections, which close.
    let deadline = Instant::now() + std::time::Duration::from_secs(3);
    while upstreams() > 0 && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        upstreams(),
        0,
        "upstream connections outlived their clients"
    );
    // Opaque TCP, version 2 (nginx reads either).
    let tcp = parse(&get("legacy-tcp.example", "127.0.0.71", 7070, 1));
    assert_eq!(tcp.1, "127.0.0.71:7070");
    // Without proxyProtocol, nginx refuses the connection's first bytes as a broken header.
    let plain = curl(
        &d,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--resolve",
            "plain.example:8080:127.0.0.72",
            "http://plain.example:8080/",
        ],
    );
    assert_ne!(plain, "200");
    assert!(
        nginx.error_log().contains("broken header"),
        "{}",
        nginx.error_log()
    );
}

/// A mirror still waiting for its answer when its client connection closes: under
/// `proxyProtocol` its upstream connection belongs to that client connection's partition of the
/// pool, which no request can use any more, so meshd closes it once the answer is in instead of
/// keeping it idle (until the idle timeout, an hour by default).
#[test]
fn a_mirror_outliving_its_client_keeps_no_upstream_connection() {
    if !ebpf_available("proxy_protocol_mirror") {
        return;
    }
    let port = support::ports(248).0 + 5;
    let seen = slow_proxy_protocol_server(port, std::time::Duration::from_millis(600));
    let (v1, v2) = two_backends();
    let routes = "  - route:\n    - destination:\n        host: reviews\n    mirror:\n      host: slow.example\n    mirrorPercentage:\n      value: 100\n";
    let yaml = [
        policies(&v1, &v2, routes),
        external("slow.example", "127.0.0.73", "8080/HTTP", port),
        "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: slow\nspec:\n  host: slow.example\n  trafficPolicy:\n    proxyProtocol: {version: V1}\n".to_string(),
    ]
    .join("\n");
    let d = start("proxy-protocol-mirror", 248, &yaml);
    // curl has its answer, and has closed its connection, long before the mirror's comes.
    assert_eq!(status(&d, "http://reviews:9080/"), "200");
    let lines = support::eventually(std::time::Duration::from_secs(5), || {
        let s = seen.lock().unwrap();
        s.iter().any(|l| l == "closed").then(|| s.clone())
    })
    .unwrap_or_else(|| seen.lock().unwrap().clone());
    assert!(
        lines[0].starts_with("PROXY TCP4 127.0.0.1 127.0.0.50 "),
        "the mirror's connection announced the client: {lines:?}"
    );
    assert_eq!(
        lines[1..],
        ["GET / answered", "closed"],
        "one request, then meshd closed the connection"
    );
}

/// An HTTP/1.1 server on 127.0.0.1:`port` behind a PROXY protocol header. It answers each
/// request after `delay`, and records the header, each request, and the connection's close by
/// the other side.
fn slow_proxy_protocol_server(
    port: u16,
    delay: std::time::Duration,
) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut out = stream.try_clone().unwrap();
                let mut r = std::io::BufReader::new(stream);
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                log.lock().unwrap().push(line.trim_end().to_string());
                loop {
                    let mut head = String::new();
                    loop {
                        let mut l = String::new();
                        if r.read_line(&mut l).unwrap_or(0) == 0 {
                            log.lock().unwrap().push("closed".into());
                            return;
                        }
                        if l.trim_end().is_empty() {
                            break;
                        }
                        head.push_str(&l);
                    }
                    std::thread::sleep(delay);
                    out.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
                        .unwrap();
                    let request = head.lines().next().unwrap_or("").to_string();
                    let mut words = request.split(' ');
                    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                    log.lock()
                        .unwrap()
                        .push(format!("{method} {path} answered"));
                }
            });
        }
    });
    seen
}

/// DestinationRule `tunnel`, as in Istio's egress through a forward proxy: a TCP route sends the
/// external service's connections to the proxy's host, whose rule tunnels them with HTTP CONNECT
/// to `targetHost:targetPort`. tinyproxy (a real forward proxy) carries the bytes to an echo
/// server; without the tunnel it reads them as a malformed HTTP request.
#[test]
fn a_tunnel_carries_opaque_tcp_through_a_forward_proxy() {
    if !ebpf_available("tunnel_connect") {
        return;
    }
    let proxy_port = support::ports(227).0 + 5;
    let proxy = support::tinyproxy::Tinyproxy::start("tunnel", proxy_port);
    let echo = Backend::echo("127.0.0.1:0");
    let target = echo.addr.port();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (v1, v2) = two_backends();
    let yaml = format!(
        r#"{mesh}{partner}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: corp-proxy
spec:
  hosts: [proxy.corp.example]
  addresses: [127.0.0.75, 127.0.0.77]
  ports:
  - {{number: 3128, name: tcp, protocol: TCP}}
  resolution: STATIC
  location: MESH_EXTERNAL
  endpoints:
  - address: 127.0.0.1
    ports: {{tcp: {proxy_port}}}
    labels: {{role: tunnel}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: partner-through-proxy
spec:
  hosts: [api.partner.example]
  tcp:
  - match:
    - port: 9000
    route:
    - destination:
        host: proxy.corp.example
        subset: tunnel
        port:
          number: 3128
{gone}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: gone-through-proxy
spec:
  hosts: [gone.partner.example]
  tcp:
  - route:
    - destination:
        host: proxy.corp.example
        subset: dead-end
        port:
          number: 3128
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: corp-proxy
spec:
  host: proxy.corp.example
  subsets:
  - name: tunnel
    labels: {{role: tunnel}}
    trafficPolicy:
      tunnel:
        protocol: CONNECT
        targetHost: 127.0.0.1
        targetPort: {target}
  - name: dead-end
    labels: {{role: tunnel}}
    trafficPolicy:
      tunnel:
        targetHost: 127.0.0.1
        targetPort: {closed}
  - name: nobody
    labels: {{role: none}}
    trafficPolicy:
      tunnel:
        targetHost: 127.0.0.1
        targetPort: {target}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: stray-through-proxy
spec:
  hosts: [stray.partner.example]
  tcp:
  - route:
    - destination:
        host: proxy.corp.example
        subset: nobody
        port:
          number: 3128
{stray}"#,
        mesh = policies(
            &v1,
            &v2,
            "  - route:\n    - destination:\n        host: reviews\n"
        ),
        partner = external("api.partner.example", "127.0.0.76", "9000/TCP", target),
        gone = external("gone.partner.example", "127.0.0.78", "9000/TCP", closed),
        stray = external("stray.partner.example", "127.0.0.79", "9000/TCP", target),
    );
    let d = start("tunnel", 227, &yaml);
    let send = |vip: &str, port: u16| send_line(&d, vip, port, "through-the-proxy");
    // Dialled as the partner's service: routed to the proxy's tunnel subset.
    assert_eq!(
        send("127.0.0.76", 9000),
        "through-the-proxy",
        "{}",
        proxy.log_text()
    );
    assert!(
        proxy
            .log_text()
            .contains(&format!("CONNECT 127.0.0.1:{target} HTTP/1.1")),
        "{}",
        proxy.log_text()
    );
    // The proxy dialled as itself: its rule has no tunnel outside the subset, so the bytes
    // reach tinyproxy as they are, and it answers as to a broken HTTP request.
    let plain = send("127.0.0.77", 3128);
    assert!(plain.starts_with("HTTP/1.0 400"), "{plain}");
    // A target the proxy cannot reach: its refusal closes the client's connection, and meshd
    // logs the proxy's answer.
    assert_eq!(send("127.0.0.78", 9000), "");
    let log = d.log_text();
    assert!(
        log.contains(&format!(
            "the proxy refused CONNECT 127.0.0.1:{closed}: HTTP/1.1 500"
        )),
        "{log}"
    );
    // A route to a subset that selects no endpoint has no healthy upstream: the connection is
    // reset, not sent where the client dialled (the echo server), around the proxy.
    assert_eq!(send("127.0.0.79", 9000), "");
    assert!(
        d.log_text().contains("proxy.corp.example has no endpoints"),
        "{}",
        d.log_text()
    );
    // Logged as the subset's cluster it was routed to, flag UH.
    let line = support::eventually(std::time::Duration::from_secs(5), || {
        (d.log_text().lines())
            .find(|l| l.contains(r#""upstream_cluster":"outbound|3128|nobody|proxy.corp.example""#))
            .map(str::to_string)
    });
    let line = line.unwrap_or_else(|| panic!("no line for the subset:\n{}", d.log_text()));
    assert!(line.contains(r#""response_flags":"UH""#), "{line}");
    // No host was chosen: null, as Envoy's %UPSTREAM_HOST% (not the address dialled).
    assert!(line.contains(r#""upstream_host":null"#), "{line}");
}

/// Sends `text` and an empty line over TCP from the managed client to `vip`:`port`; what came
/// back first (empty when the connection closed without an answer).
fn send_line(d: &support::Daemon, vip: &str, port: u16, text: &str) -> String {
    let script = format!(
        "import socket; s=socket.create_connection(('{vip}',{port}), timeout=5); \
         s.sendall(b'{text}\\r\\n\\r\\n'); print(s.recv(200).decode(errors='replace'))"
    );
    let out = d
        .exec("default/productpage", &["python3", "-c", &script])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A ServiceEntry (a YAML document) for the external `host` at `vip`, its `port`
/// (`NUMBER/PROTOCOL`) served by 127.0.0.1:`endpoint`.
fn external(host: &str, vip: &str, port: &str, endpoint: u16) -> String {
    let (number, protocol) = port.split_once('/').unwrap();
    let name = host.split('.').next().unwrap();
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: {name}\nspec:\n  hosts: [{host}]\n  addresses: [{vip}]\n  ports:\n  - {{number: {number}, name: p, protocol: {protocol}}}\n  resolution: STATIC\n  location: MESH_EXTERNAL\n  endpoints:\n  - address: 127.0.0.1\n    ports: {{p: {endpoint}}}\n"
    )
}

/// A forward proxy reached over TLS: the proxy's subset has both `tunnel` and `tls: SIMPLE`, so
/// meshd opens TLS to the proxy (HAProxy terminating TLS in front of tinyproxy) and sends the
/// CONNECT inside it, as Envoy sends it through the cluster's TLS transport socket.
#[test]
fn a_tunnel_goes_inside_tls_to_a_proxy_that_takes_tls() {
    if !ebpf_available("tunnel_over_tls") {
        return;
    }
    let (proxy_port, tls_port) = (support::ports(247).0 + 5, support::ports(247).0 + 6);
    let proxy = support::tinyproxy::Tinyproxy::start("tunnel-tls", proxy_port);
    let certs = support::tls::certificates(
        &std::env::temp_dir().join("meshd-test-tunnel-tls-certs"),
        "tlsproxy.corp.example",
    );
    let _front =
        support::haproxy::Haproxy::tls_terminator("tunnel-tls", tls_port, proxy_port, &certs);
    let echo = Backend::echo("127.0.0.1:0");
    let target = echo.addr.port();
    let (v1, v2) = two_backends();
    let yaml = format!(
        r#"{mesh}{partner}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: corp-proxy
spec:
  hosts: [tlsproxy.corp.example]
  addresses: [127.0.0.82]
  ports:
  - {{number: 3129, name: tcp, protocol: TCP}}
  resolution: STATIC
  location: MESH_EXTERNAL
  endpoints:
  - address: 127.0.0.1
    ports: {{tcp: {tls_port}}}
    labels: {{role: tunnel}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: partner-through-proxy
spec:
  hosts: [api.partner.example]
  tcp:
  - route:
    - destination:
        host: tlsproxy.corp.example
        subset: tunnel
        port:
          number: 3129
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: corp-proxy
spec:
  host: tlsproxy.corp.example
  subsets:
  - name: tunnel
    labels: {{role: tunnel}}
    trafficPolicy:
      tls:
        mode: SIMPLE
        caCertificates: {ca}
      tunnel:
        protocol: CONNECT
        targetHost: 127.0.0.1
        targetPort: {target}
"#,
        mesh = policies(
            &v1,
            &v2,
            "  - route:\n    - destination:\n        host: reviews\n"
        ),
        partner = external("api.partner.example", "127.0.0.81", "9000/TCP", target),
        ca = certs.join("ca.pem").display(),
    );
    let d = start("tunnel-tls", 247, &yaml);
    assert_eq!(
        send_line(&d, "127.0.0.81", 9000, "inside-tls-to-the-proxy"),
        "inside-tls-to-the-proxy",
        "tinyproxy:\n{}\nmeshd:\n{}",
        proxy.log_text(),
        d.log_text()
    );
    assert!(
        proxy
            .log_text()
            .contains(&format!("CONNECT 127.0.0.1:{target} HTTP/1.1")),
        "{}",
        proxy.log_text()
    );
}
