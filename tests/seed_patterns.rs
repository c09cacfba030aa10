//! The traffic-management patterns of the seed article (section 3), each run with its YAML from
//! `policies/` unmodified, on traffic captured by eBPF from a managed curl. The backends listen
//! where the policies' WorkloadEntries say (127.0.0.1:9xxx).

mod support;

use support::{Daemon, ebpf_available, http_backend::HttpBackend};

fn policy(file: &str) -> String {
    format!("{}/../policies/{file}", env!("CARGO_MANIFEST_DIR"))
}

/// curl as a managed workload, resolving `host` to a loopback address: the connect is captured
/// and routed by its Host header, exactly as for the article's public host names.
fn get(d: &Daemon, host: &str, path: &str, extra: &[&str]) -> String {
    let resolve = format!("{host}:80:127.0.0.60");
    let url = format!("http://{host}{path}");
    let mut args = vec![
        "curl",
        "-sS",
        "--max-time",
        "20",
        "--resolve",
        &resolve,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
    ];
    args.extend_from_slice(extra);
    args.push(&url);
    let out = d.exec("default/frontend", &args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn canary_90_10() {
    if !ebpf_available("seed_canary") {
        return;
    }
    let (v1, v2) = (
        HttpBackend::start("127.0.0.1:9301"),
        HttpBackend::start("127.0.0.1:9302"),
    );
    let d = Daemon::start("seed-canary", 61, &["--config", &policy("canary.yaml")]);
    let mut full = vec![
        "-w".to_string(),
        "%{http_code}\\n".to_string(),
        "--resolve".into(),
        "checkout.mycorp.com:80:127.0.0.60".into(),
    ];
    for _ in 0..2000 {
        full.extend([
            "-o".into(),
            "/dev/null".into(),
            "http://checkout.mycorp.com/".into(),
        ]);
    }
    let mut args = vec!["curl", "-sS"];
    args.extend(full.iter().map(String::as_str));
    let out = d.exec("default/frontend", &args).output().unwrap();
    let codes = String::from_utf8_lossy(&out.stdout);
    assert_eq!(codes.lines().filter(|c| *c == "200").count(), 2000);
    let b = v2.requests();
    assert_eq!(v1.requests() + b, 2000);
    assert!((133..=267).contains(&b), "v2 got {b} of 2000");
}

#[test]
fn header_based_premium_and_free() {
    if !ebpf_available("seed_header") {
        return;
    }
    let (premium, free) = (
        HttpBackend::start("127.0.0.1:9501"),
        HttpBackend::start("127.0.0.1:9502"),
    );
    let d = Daemon::start(
        "seed-header",
        62,
        &["--config", &policy("header-routing.yaml")],
    );
    for _ in 0..3 {
        assert_eq!(
            get(&d, "media.mycorp.com", "/", &["-H", "X-User-Tier: premium"]),
            "200"
        );
        assert_eq!(
            get(&d, "media.mycorp.com", "/", &["-H", "X-User-Tier: free"]),
            "200"
        );
    }
    assert_eq!((premium.requests(), free.requests()), (3, 3));
    // Two X-User-Tier fields read as one value, "premium,free", as Envoy's matchers read
    // them: no route matches (404 NR). A second field cannot ride on a match of the first.
    assert_eq!(
        get(
            &d,
            "media.mycorp.com",
            "/",
            &["-H", "X-User-Tier: premium", "-H", "X-User-Tier: free"]
        ),
        "404"
    );
    assert_eq!((premium.requests(), free.requests()), (3, 3));
}

#[test]
fn retries_with_per_try_timeout() {
    if !ebpf_available("seed_retries") {
        return;
    }
    let payment = HttpBackend::start("127.0.0.1:9101");
    let d = Daemon::start("seed-retries", 63, &["--config", &policy("retries.yaml")]);
    // Two 503s (gateway-error), then success: within the article's 3 attempts.
    assert_eq!(get(&d, "payment.mycorp.com", "/fail-first/2", &[]), "200");
    assert_eq!(payment.max_attempt(), 3);
}

#[test]
fn mirroring_to_v2() {
    if !ebpf_available("seed_mirror") {
        return;
    }
    let (v1, v2) = (
        HttpBackend::start("127.0.0.1:9401"),
        HttpBackend::start("127.0.0.1:9402"),
    );
    let d = Daemon::start("seed-mirror", 64, &["--config", &policy("mirror.yaml")]);
    let codes: Vec<String> = (0..10)
        .map(|_| get(&d, "order.mycorp.com", "/orders", &[]))
        .collect();
    assert!(codes.iter().all(|c| c == "200"), "{codes:?}");
    support::eventually(std::time::Duration::from_secs(5), || {
        (v2.shadow_requests() >= 10).then_some(())
    });
    assert_eq!(v1.requests(), 10);
    assert_eq!(
        v2.shadow_requests(),
        10,
        "v2 received every request as order...-shadow"
    );
}

#[test]
fn circuit_breaker_ejects_the_failing_replica() {
    if !ebpf_available("seed_cb") {
        return;
    }
    // inventory-1 answers; inventory-2 fails every request with 503.
    let healthy = HttpBackend::start("127.0.0.1:9201");
    let _failing = support::backend::Backend::http_503("127.0.0.1:9202");
    let d = Daemon::start(
        "seed-cb",
        65,
        &["--config", &policy("circuit-breaker.yaml")],
    );
    let codes: Vec<String> = (0..40).map(|_| get(&d, "inventory", "/", &[])).collect();
    // Istio's default retry policy sends a 503 to the other replica, so every caller gets 200;
    // after five consecutive 5xx the failing replica is ejected (30 s, at most 50%).
    assert!(codes.iter().all(|c| c == "200"), "{codes:?}");
    assert_eq!(
        d.metric(r#"meshd_outlier_events_total{cluster="outbound|80||inventory.default.svc.cluster.local",event="ejected"}"#),
        1.0
    );
    let before = healthy.requests();
    let more: Vec<String> = (0..10).map(|_| get(&d, "inventory", "/", &[])).collect();
    assert!(more.iter().all(|c| c == "200"), "{more:?}");
    assert_eq!(
        healthy.requests() - before,
        10,
        "while ejected, the failing replica gets nothing: no retries were needed"
    );
    assert!(
        d.log_text()
            .contains("endpoint ejected by outlier detection")
    );
}
