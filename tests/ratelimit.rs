//! RateLimitPolicy end to end on captured traffic: local token buckets at their configured rate,
//! per-header buckets, a global limit shared by two meshd instances through one real Redis, and
//! both failure modes when Redis dies.

mod support;

use std::time::{Duration, Instant};

use support::{
    Daemon, ebpf_available,
    http_backend::HttpBackend,
    mesh::{curl, curl_many, policies, start, status, two_backends},
    redis::Redis,
};

const TO_V1: &str = "  - route:\n    - destination:\n        host: reviews\n        subset: v1\n";

fn with_policy(v1: &HttpBackend, v2: &HttpBackend, spec: &str) -> String {
    format!(
        "{}---\napiVersion: meshd.io/v1alpha1\nkind: RateLimitPolicy\nmetadata:\n  name: reviews-limit\nspec:\n  target:\n    host: reviews\n{spec}",
        policies(v1, v2, TO_V1)
    )
}

#[test]
fn a_local_bucket_holds_its_rate_over_ten_seconds() {
    if !ebpf_available("rl_local") {
        return;
    }
    let (v1, v2) = two_backends();
    let d = start(
        "rl-local",
        71,
        &with_policy(
            &v1,
            &v2,
            "  local:\n    maxTokens: 10\n    tokensPerFill: 10\n    fillInterval: 1s\n",
        ),
    );
    // h2load keeps one HTTP/1.1 connection busy for 10 s.
    let out = d
        .exec(
            "default/productpage",
            &[
                "h2load",
                "--h1",
                "-c",
                "1",
                "-D",
                "10",
                "http://127.0.0.50:9080/whoami",
            ],
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let allowed = v1.requests();
    // 10 per second for 10 s, plus the initial burst of 10: 110, within 10%.
    assert!(
        (99..=121).contains(&allowed),
        "{allowed} allowed; h2load: {text}"
    );
    let limited =
        d.metric(r#"meshd_ratelimit_total{policy="default/reviews-limit",result="limited"}"#);
    assert!(limited > 0.0, "the rest were limited");
    // A limited answer carries its headers.
    let _ = curl_many(&d, "http://reviews:9080/", 20, "%{http_code}\\n");
    let head = curl(
        &d,
        &["-s", "-D", "-", "-o", "/dev/null", "http://reviews:9080/"],
    )
    .to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 429"), "{head}");
    assert!(
        head.contains("x-ratelimit-limit: 10")
            && head.contains("x-ratelimit-remaining: 0")
            && head.contains("retry-after: 1"),
        "{head}"
    );
    assert!(d.log_text().contains("status=429 flags=RL"));
}

#[test]
fn header_descriptors_get_their_own_buckets() {
    if !ebpf_available("rl_descriptor") {
        return;
    }
    let (v1, v2) = two_backends();
    let spec =
        "  local:\n    maxTokens: 3\n    fillInterval: 1h\n  descriptors:\n  - header: x-user\n";
    let d = start("rl-descriptor", 72, &with_policy(&v1, &v2, spec));
    let code = |user: &str| {
        curl(
            &d,
            &[
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                &format!("x-user: {user}"),
                "http://reviews:9080/",
            ],
        )
    };
    let alice: Vec<String> = (0..4).map(|_| code("alice")).collect();
    assert_eq!(alice, ["200", "200", "200", "429"]);
    assert_eq!(code("bob"), "200", "bob has his own bucket");
    // Without the header no descriptor is made, as in Envoy: the policy does not apply, and
    // requests without it are not pooled into one bucket.
    let anonymous: Vec<String> = (0..5)
        .map(|_| {
            curl(
                &d,
                &[
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "http://reviews:9080/",
                ],
            )
        })
        .collect();
    assert_eq!(anonymous, ["200"; 5]);
}

#[test]
fn a_global_limit_is_shared_by_two_meshd_through_redis() {
    if !ebpf_available("rl_global") {
        return;
    }
    let redis = Redis::start();
    let (v1, v2) = two_backends();
    let spec = format!(
        "  global:\n    redis: {}\n    requestsPerUnit: 20\n    unit: minute\n",
        redis.addr()
    );
    let yaml = with_policy(&v1, &v2, &spec);
    let a = start("rl-global-a", 73, &yaml);
    let b = start("rl-global-b", 74, &yaml);
    let mut allowed = 0;
    let started = Instant::now();
    for _ in 0..15 {
        for d in [&a, &b] {
            if status(d, "http://reviews:9080/") == "200" {
                allowed += 1;
            }
        }
    }
    // 20 per minute between both nodes: the burst of 20, plus one more per 3 s that passed.
    let refills = (started.elapsed().as_secs_f64() / 3.0).floor() as usize;
    assert!(
        (20..=20 + refills + 1).contains(&allowed),
        "{allowed} of 30 allowed across two meshd in {:?}",
        started.elapsed()
    );
    assert_eq!(v1.requests(), allowed);
    // The global limit's 429 is Envoy's: no body, marked x-envoy-ratelimited.
    let limited = support::mesh::curl(&a, &["-i", "http://reviews:9080/"]).to_ascii_lowercase();
    assert!(limited.starts_with("http/1.1 429"), "{limited}");
    assert!(limited.contains("x-envoy-ratelimited: true"), "{limited}");
    assert!(limited.ends_with("\r\n\r\n"), "no body: {limited}");
}

#[test]
fn redis_dying_fails_open_or_closed_without_stalling() {
    if !ebpf_available("rl_redis_down") {
        return;
    }
    let mut redis = Redis::start();
    let (v1, v2) = two_backends();
    let spec = |deny: bool| {
        format!(
            "  global:\n    redis: {}\n    requestsPerUnit: 1000\n    unit: second\n  failureModeDeny: {deny}\n",
            redis.addr()
        )
    };
    let open = start("rl-open", 75, &with_policy(&v1, &v2, &spec(false)));
    let closed = start("rl-closed", 76, &with_policy(&v1, &v2, &spec(true)));
    let get = |d: &Daemon| status(d, "http://reviews:9080/");
    assert_eq!(
        (get(&open), get(&closed)),
        ("200".into(), "200".into()),
        "Redis up: both allow"
    );
    redis.kill();
    for _ in 0..3 {
        let t = Instant::now();
        assert_eq!(get(&open), "200", "fail open: allowed");
        assert_eq!(get(&closed), "500", "fail closed: refused");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "no stall: {:?}",
            t.elapsed()
        );
    }
    assert!(
        open.metric(
            r#"meshd_ratelimit_total{policy="default/reviews-limit",result="redis_error"}"#
        ) >= 3.0
    );
    // Envoy's flag for a rate limit service that failed a request closed, and its empty body.
    assert!(closed.log_text().contains("status=500 flags=RLSE"));
    let body = support::mesh::curl(&closed, &["-w", "%{http_code}", "http://reviews:9080/"]);
    assert_eq!(body, "500");
    assert!(!open.log_text().contains("RLSE"), "fail open: no flag");
}

/// Connections Redis closed while they sat in meshd's pool (here by a restart) cost no request
/// an error: the request goes on a new connection.
#[test]
fn a_redis_restart_fails_no_request() {
    if !ebpf_available("rl_redis_restart") {
        return;
    }
    let mut redis = Redis::start();
    let (v1, v2) = two_backends();
    let spec = format!(
        "  global:\n    redis: {}\n    requestsPerUnit: 1000\n    unit: second\n  failureModeDeny: true\n",
        redis.addr()
    );
    let d = start("rl-redis-restart", 176, &with_policy(&v1, &v2, &spec));
    let get = || status(&d, "http://reviews:9080/");
    assert_eq!(get(), "200", "a pooled Redis connection now");
    redis.restart();
    for _ in 0..3 {
        assert_eq!(
            get(),
            "200",
            "the pooled connection is dead; a new one serves"
        );
    }
    assert_eq!(
        d.metric(r#"meshd_ratelimit_total{policy="default/reviews-limit",result="redis_error"}"#),
        0.0
    );
}

/// Two policies on one host, a shared bucket and one per `x-user`: a request alice's own
/// bucket refuses spends none of the shared bucket's tokens, so bob still gets his, whichever
/// policy comes first in the file.
#[test]
fn a_request_one_policy_refuses_spends_no_other_policys_tokens() {
    if !ebpf_available("rl_two_policies") {
        return;
    }
    let (v1, v2) = two_backends();
    let shared = "  local:\n    maxTokens: 10\n    fillInterval: 1h\n";
    let per_user = "---\napiVersion: meshd.io/v1alpha1\nkind: RateLimitPolicy\nmetadata:\n  name: per-user\nspec:\n  target:\n    host: reviews\n  local:\n    maxTokens: 2\n    fillInterval: 1h\n  descriptors:\n  - header: x-user\n";
    let yaml = with_policy(&v1, &v2, shared) + per_user;
    let d = start("rl-two-policies", 320, &yaml);
    let codes = |user: &str, n: usize| -> Vec<String> {
        (0..n)
            .map(|_| {
                let user = format!("x-user: {user}");
                let args = ["-o", "/dev/null", "-w", "%{http_code}", "-H", &user];
                curl(&d, &[&args[..], &["http://reviews:9080/"]].concat())
            })
            .collect()
    };
    let alice = codes("alice", 12);
    assert_eq!(alice[..2], ["200", "200"]);
    assert!(alice[2..].iter().all(|c| c == "429"), "{alice:?}");
    assert_eq!(
        codes("bob", 3),
        ["200", "200", "429"],
        "the shared bucket kept bob's"
    );
}

/// An edited global limit applies to the count so far (the count is kept per descriptor, not
/// per limit): raising 5 a minute to 6 after 3 requests leaves what the time those 3 owe
/// allows (GCRA counts in time: 36 s owed at 10 s a request, so 2, or 3 once 6 s have passed
/// since), not a fresh burst of 6.
#[test]
fn an_edited_global_limit_applies_to_the_count_so_far() {
    if !ebpf_available("rl_global_edit") {
        return;
    }
    let redis = Redis::start();
    let (v1, v2) = two_backends();
    let spec = |n: u32| {
        format!(
            "  global:\n    redis: {}\n    requestsPerUnit: {n}\n    unit: minute\n",
            redis.addr()
        )
    };
    let dir = support::mesh::config_dir("rl-global-edit", &with_policy(&v1, &v2, &spec(5)));
    let d = Daemon::start("rl-global-edit", 321, &["--config", dir.to_str().unwrap()]);
    let codes =
        |n: usize| -> Vec<String> { (0..n).map(|_| status(&d, "http://reviews:9080/")).collect() };
    assert_eq!(codes(3), ["200"; 3]);
    let dump = || d.get("/config_dump");
    let before = dump();
    std::fs::write(dir.join("reviews.yaml"), with_policy(&v1, &v2, &spec(6))).unwrap();
    let reloaded = support::eventually(Duration::from_secs(10), || {
        dump().contains("\"requestsPerUnit\": 6").then_some(())
    });
    assert!(reloaded.is_some(), "the edit applied: {before}");
    let after = codes(7);
    let allowed = after.iter().filter(|c| *c == "200").count();
    assert!((2..=3).contains(&allowed), "{after:?}");
    assert!(after[allowed..].iter().all(|c| c == "429"), "{after:?}");
}

/// A global limit raised to a shorter unit is not held back by the time owed under the old
/// one: 2 an hour, spent, then 50 a second gives a full burst again a second after the first
/// request that sees the edit (the time owed is cut to a full burst of the new limit), not
/// after the hour.
#[test]
fn a_raised_global_limit_does_not_wait_out_the_old_window() {
    if !ebpf_available("rl_global_raise") {
        return;
    }
    let redis = Redis::start();
    let (v1, v2) = two_backends();
    let spec = |n: u32, unit: &str| {
        format!(
            "  global:\n    redis: {}\n    requestsPerUnit: {n}\n    unit: {unit}\n",
            redis.addr()
        )
    };
    let dir =
        support::mesh::config_dir("rl-global-raise", &with_policy(&v1, &v2, &spec(2, "hour")));
    let d = Daemon::start("rl-global-raise", 326, &["--config", dir.to_str().unwrap()]);
    let codes =
        |n: usize| -> Vec<String> { (0..n).map(|_| status(&d, "http://reviews:9080/")).collect() };
    assert_eq!(codes(3), ["200", "200", "429"]);
    let dump = || d.get("/config_dump");
    std::fs::write(
        dir.join("reviews.yaml"),
        with_policy(&v1, &v2, &spec(50, "second")),
    )
    .unwrap();
    let reloaded = support::eventually(Duration::from_secs(10), || {
        dump().contains("\"requestsPerUnit\": 50").then_some(())
    });
    assert!(reloaded.is_some(), "the edit applied: {}", dump());
    // The first request after the edit finds the hour's debt and cuts it to a second's.
    let first = codes(1);
    std::thread::sleep(Duration::from_millis(1100));
    let after = codes(5);
    assert_eq!(
        after, ["200"; 5],
        "a full burst of 50 a second is owed at most (first after the edit: {first:?})"
    );
}
