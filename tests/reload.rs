//! Hot reload end to end: a running meshd picks up a valid policy edit within a second, rejects
//! an invalid one as a whole (keeping the last good snapshot), survives a config directory that
//! disappears, and reloads on SIGHUP.

mod support;

use std::time::Duration;

use support::{Daemon, ebpf_available, eventually};

const SERVICE: &str = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: reviews
  namespace: default
spec:
  hosts:
  - reviews.default.svc.cluster.local
  addresses:
  - 127.0.0.50
  ports:
  - number: 9080
    name: http
    protocol: HTTP
  resolution: STATIC
  endpoints:
  - address: 127.0.0.51
"#;

const ROUTE_V1: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
      weight: 100
"#;

fn dump(d: &Daemon) -> serde_json::Value {
    serde_json::from_str(&d.get("/config_dump")).expect("config_dump is JSON")
}

fn generation(d: &Daemon) -> u64 {
    dump(d)["snapshot"]["generation"]
        .as_u64()
        .expect("snapshot.generation")
}

#[test]
fn valid_edits_apply_within_a_second_and_invalid_ones_keep_the_last_good_config() {
    if !ebpf_available("reload") {
        return;
    }
    let dir = std::env::temp_dir().join("meshd-test-reload-config");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("service.yaml"), SERVICE).unwrap();
    let d = Daemon::start("reload", 21, &["--config", dir.to_str().unwrap()]);
    let first = dump(&d);
    let gen1 = first["snapshot"]["generation"].as_u64().unwrap();
    let hash1 = first["snapshot"]["hash"].as_str().unwrap().to_string();
    assert!(first["snapshot"]["applied_unix_ms"].as_u64().unwrap() > 0);
    // Every result is exported from the start, so a rate sees the first failure.
    let text = d.get("/metrics");
    assert!(
        text.contains("meshd_config_reload_total{result=\"failure\"} 0"),
        "{text}"
    );
    assert_eq!(d.metric("meshd_config_last_reload_successful"), 1.0);

    // A valid addition is applied within a second.
    std::fs::write(dir.join("route.yaml"), ROUTE_V1).unwrap();
    let t = std::time::Instant::now();
    eventually(Duration::from_secs(1), || {
        (generation(&d) > gen1).then_some(())
    })
    .unwrap_or_else(|| panic!("valid edit not applied within 1s; log:\n{}", d.log_text()));
    eprintln!("valid edit applied after {:?}", t.elapsed());
    let second = dump(&d);
    let gen2 = second["snapshot"]["generation"].as_u64().unwrap();
    assert_ne!(second["snapshot"]["hash"].as_str().unwrap(), hash1);
    assert_eq!(
        d.metric(r#"meshd_config_reload_total{result="success"}"#),
        1.0
    );

    // An invalid edit is rejected as a whole, logged with file:line, and counted.
    std::fs::write(
        dir.join("route.yaml"),
        ROUTE_V1.replace("weight: 100", "weight: 100\n      wieght: 5"),
    )
    .unwrap();
    eventually(Duration::from_secs(5), || {
        (d.metric(r#"meshd_config_reload_total{result="failure"}"#) >= 1.0).then_some(())
    })
    .unwrap_or_else(|| panic!("invalid edit not reported; log:\n{}", d.log_text()));
    assert_eq!(generation(&d), gen2, "the last good snapshot stays active");
    assert_eq!(d.metric("meshd_config_last_reload_successful"), 0.0);
    let log = d.log_text();
    assert!(
        log.contains("route.yaml:14:"),
        "the rejection names file:line; log:\n{log}"
    );

    // A file that becomes unreadable (here: no longer UTF-8) keeps the last good config too.
    let failures = d.metric(r#"meshd_config_reload_total{result="failure"}"#);
    std::fs::write(dir.join("route.yaml"), [0xff, 0xfe, 0x00, 0x80]).unwrap();
    eventually(Duration::from_secs(5), || {
        (d.metric(r#"meshd_config_reload_total{result="failure"}"#) > failures).then_some(())
    })
    .unwrap_or_else(|| panic!("unreadable file not reported; log:\n{}", d.log_text()));
    assert_eq!(generation(&d), gen2);

    // Undoing the broken edit says the configuration is valid again (nothing to apply).
    std::fs::write(dir.join("route.yaml"), ROUTE_V1).unwrap();
    eventually(Duration::from_secs(5), || {
        d.log_text()
            .contains("configuration valid again; unchanged from the active one")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("the fix was not reported; log:\n{}", d.log_text()));
    assert_eq!(generation(&d), gen2);
    assert_eq!(d.metric("meshd_config_last_reload_successful"), 1.0);

    // A directory that disappears keeps the last good config too.
    std::fs::remove_dir_all(&dir).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(generation(&d), gen2);
    assert_eq!(support::http_get(d.admin, "/ready").unwrap().0, 200);

    // Putting a valid config back and sending SIGHUP applies it.
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("service.yaml"), SERVICE).unwrap();
    d.signal(libc::SIGHUP);
    eventually(Duration::from_secs(5), || {
        (generation(&d) > gen2).then_some(())
    })
    .unwrap_or_else(|| panic!("SIGHUP did not reload; log:\n{}", d.log_text()));
    assert_eq!(
        dump(&d)["snapshot"]["hash"].as_str().unwrap(),
        hash1,
        "same files, same hash"
    );
    // Emptied, the directory gives a configuration with nothing in it: applied (the files
    // say so), and the log says what went. (SIGHUP: the directory made again just now may
    // not be watched yet; it is re-armed every 2 s.)
    let gen3 = generation(&d);
    std::fs::remove_file(dir.join("service.yaml")).unwrap();
    d.signal(libc::SIGHUP);
    eventually(Duration::from_secs(5), || {
        (generation(&d) > gen3).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the empty directory was not applied; log:\n{}",
            d.log_text()
        )
    });
    assert!(
        d.log_shows("the configuration applied has no resources"),
        "{}",
        d.log_text()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_invalid_config_at_start_fails_with_every_finding() {
    if !ebpf_available("reload_start") {
        return;
    }
    let dir = std::env::temp_dir().join("meshd-test-reload-bad-start");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("bad.yaml"),
        ROUTE_V1
            .replace("weight: 100", "weight: -5")
            .replace("hosts:\n  - reviews", "hosts:\n  - reviews\n  gatways: [x]"),
    )
    .unwrap();
    let mut d = Daemon::spawn("reload-bad-start", 22, &["--config", dir.to_str().unwrap()]);
    let status = d.wait_failed(Duration::from_secs(20));
    assert_eq!(
        status.code(),
        Some(64),
        "invalid config exits with EX_USAGE"
    );
    let log = d.log_text();
    assert!(
        log.contains("bad.yaml:9:"),
        "unknown field reported; log:\n{log}"
    );
    assert!(
        log.contains("must be at least 0, got -5"),
        "weight range reported; log:\n{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn requests_in_flight_finish_on_the_snapshot_they_started_with() {
    if !ebpf_available("reload_inflight") {
        return;
    }
    use support::mesh;
    let (v1, v2) = mesh::two_backends();
    let generous = "  - timeout: 10s\n    route:\n    - destination:\n        host: reviews\n        subset: v1\n";
    let dir = mesh::config_dir("reload-inflight", &mesh::policies(&v1, &v2, generous));
    let d = Daemon::start("reload-inflight", 23, &["--config", dir.to_str().unwrap()]);
    let gen1 = generation(&d);
    // A slow request starts under the 10s timeout...
    let slow = support::spawn_quiet(d.exec(
        "default/productpage",
        &[
            "curl",
            "-sS",
            "--resolve",
            "reviews:9080:127.0.0.50",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://reviews:9080/sleep/1500",
        ],
    ));
    std::thread::sleep(Duration::from_millis(300));
    // ...and meanwhile the route's timeout drops to 100ms.
    std::fs::write(
        dir.join("reviews.yaml"),
        mesh::policies(&v1, &v2, &generous.replace("10s", "100ms")),
    )
    .unwrap();
    eventually(Duration::from_secs(2), || {
        (generation(&d) > gen1).then_some(())
    })
    .unwrap_or_else(|| panic!("edit not applied; log:\n{}", d.log_text()));
    let out = slow.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "the in-flight request kept its 10s timeout"
    );
    // A new request gets the new snapshot's 100ms timeout.
    let code = mesh::status(&d, "http://reviews:9080/sleep/1500");
    assert_eq!(code, "504");
}

#[test]
fn a_file_written_in_place_is_read_once_its_writer_closes_it() {
    use std::io::Write;
    if !ebpf_available("reload_in_place") {
        return;
    }
    let dir = std::env::temp_dir().join("meshd-test-reload-in-place");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("all.yaml"), format!("{SERVICE}---\n{ROUTE_V1}")).unwrap();
    let d = Daemon::start("reload-in-place", 261, &["--config", dir.to_str().unwrap()]);
    let gen1 = generation(&d);
    let routed = |d: &Daemon| dump(d)["snapshot"]["compiled"]["route_hosts"].clone();
    let before = routed(&d);
    assert_ne!(before, serde_json::json!([]));
    // Rewritten in place as a shell's `>` does, by a slow writer: truncated, half written,
    // and the rest a second later. The half (the ServiceEntry alone) is valid, and must not
    // go live.
    let mut f = std::fs::File::create(dir.join("all.yaml")).unwrap();
    f.write_all(format!("{SERVICE}---\n").as_bytes()).unwrap();
    f.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Another file changes meanwhile, and an operator sends SIGHUP: neither reload may read
    // the file still being written.
    std::fs::write(dir.join("other.yaml"), "").unwrap();
    d.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(generation(&d), gen1, "a half-written file was applied");
    f.write_all(
        ROUTE_V1
            .replace("weight: 100", "weight: 100\n    timeout: 3s")
            .as_bytes(),
    )
    .unwrap();
    drop(f);
    eventually(Duration::from_secs(2), || {
        (generation(&d) > gen1).then_some(())
    })
    .unwrap_or_else(|| panic!("the closed file was not applied; log:\n{}", d.log_text()));
    assert_eq!(routed(&d), before);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn connections_to_an_endpoint_a_reload_removes_are_closed_and_it_is_pooled_again_on_return() {
    if !ebpf_available("reload_retire") {
        return;
    }
    use support::mesh;
    let (v1, v2) = mesh::two_backends();
    let routes = "  - match:\n    - headers:\n        x-to:\n          exact: v2\n    route:\n    \
                  - destination:\n        host: reviews\n        subset: v2\n  \
                  - route:\n    - destination:\n        host: reviews\n";
    // Round robin, so that each endpoint surely gets requests (Istio's default, least request,
    // picks at random between two idle endpoints).
    let yaml = mesh::policies(&v1, &v2, routes).replace(
        "spec:\n  host: reviews\n  subsets:",
        "spec:\n  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      simple: ROUND_ROBIN\n  subsets:",
    );
    assert!(yaml.contains("ROUND_ROBIN"));
    let v2_endpoint = format!(
        "  - address: 127.0.0.1\n    ports:\n      http: {}\n    labels:\n      version: v2\n",
        v2.addr.port()
    );
    assert!(yaml.contains(&v2_endpoint));
    let dir = mesh::config_dir("reload-retire", &yaml);
    let d = Daemon::start("reload-retire", 294, &["--config", dir.to_str().unwrap()]);
    let url = "http://reviews:9080/status/200";
    let codes = mesh::curl_many(&d, url, 6, "%{http_code}\n");
    assert!(codes.iter().all(|c| c == "200"), "{codes:?}");
    // Round robin: each endpoint got requests, and keeps meshd's connection open, idle.
    assert_eq!((v1.accepted(), v2.accepted()), (1, 1));
    assert_eq!((v1.open(), v2.open()), (1, 1));
    // A slow request to v2 through its subset's cluster, on a connection of its own.
    let slow = support::spawn_quiet(d.exec(
        "default/productpage",
        &[
            "curl",
            "-sS",
            "--resolve",
            "reviews:9080:127.0.0.50",
            "-H",
            "x-to: v2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://reviews:9080/sleep/10000",
        ],
    ));
    eventually(Duration::from_secs(5), || {
        (v2.open() == 2 && v2.sleeping() == 1).then_some(())
    })
    .unwrap_or_else(|| panic!("the slow request's connection: {}", v2.open()));

    // v2 leaves the service: its idle connection is closed at once, the busy one once its
    // request is answered, as Envoy drains a removed host's connections.
    let gen1 = generation(&d);
    std::fs::write(dir.join("reviews.yaml"), yaml.replace(&v2_endpoint, "")).unwrap();
    eventually(Duration::from_secs(2), || {
        (generation(&d) > gen1).then_some(())
    })
    .unwrap_or_else(|| panic!("edit not applied; log:\n{}", d.log_text()));
    eventually(Duration::from_secs(2), || (v2.open() == 1).then_some(()))
        .unwrap_or_else(|| panic!("v2's idle connection is still open: {}", v2.open()));
    assert_eq!(v2.sleeping(), 1, "the slow request is still in flight");
    let out = slow.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "the request in flight ends well"
    );
    eventually(Duration::from_secs(3), || (v2.open() == 0).then_some(()))
        .unwrap_or_else(|| panic!("v2's busy connection went back to the pool: {}", v2.open()));
    // The endpoint that stayed keeps its connection, and carries the requests on it.
    assert_eq!(v1.open(), 1);
    let codes = mesh::curl_many(&d, url, 4, "%{http_code}\n");
    assert!(codes.iter().all(|c| c == "200"), "{codes:?}");
    assert_eq!((v1.accepted(), v2.accepted()), (1, 2));

    // Back in the service: a new connection, kept for the requests after it.
    let gen2 = generation(&d);
    std::fs::write(dir.join("reviews.yaml"), &yaml).unwrap();
    eventually(Duration::from_secs(2), || {
        (generation(&d) > gen2).then_some(())
    })
    .unwrap_or_else(|| panic!("edit not applied; log:\n{}", d.log_text()));
    let codes = mesh::curl_many(&d, url, 6, "%{http_code}\n");
    assert!(codes.iter().all(|c| c == "200"), "{codes:?}");
    assert_eq!(v2.accepted(), 3, "one new connection to v2, reused");
    assert_eq!(v2.open(), 1);
}

/// A policy file that is a symlink to a file elsewhere (a directory shared between nodes, say)
/// is reloaded when the file it points to is edited, as when the link itself changes.
#[test]
fn an_edit_of_a_symlinked_files_target_is_applied() {
    if !ebpf_available("reload_symlink") {
        return;
    }
    let base = std::env::temp_dir().join("meshd-test-reload-symlink");
    let _ = std::fs::remove_dir_all(&base);
    let (config, shared) = (base.join("config"), base.join("shared"));
    std::fs::create_dir_all(&config).unwrap();
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("service.yaml"), SERVICE).unwrap();
    std::os::unix::fs::symlink("../shared/service.yaml", config.join("service.yaml")).unwrap();
    let d = Daemon::start(
        "reload-symlink",
        344,
        &["--config", config.to_str().unwrap()],
    );
    let gen1 = generation(&d);
    std::fs::write(
        shared.join("service.yaml"),
        format!("{SERVICE}---\n{ROUTE_V1}"),
    )
    .unwrap();
    eventually(Duration::from_secs(5), || {
        (generation(&d) > gen1).then_some(())
    })
    .unwrap_or_else(|| panic!("the target's edit was not applied; log:\n{}", d.log_text()));
    let routes = dump(&d)["snapshot"]["resources"]["virtualServices"].clone();
    assert_eq!(routes.as_array().map(Vec::len), Some(1), "{routes}");
    let _ = std::fs::remove_dir_all(&base);
}
