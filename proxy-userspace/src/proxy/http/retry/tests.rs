//! Retry conditions, backoff bounds and the retry loop, under paused tokio time.

use std::time::Duration;

use super::*;

fn policy(retries: u32, retry_on: &str, per_try: Option<Duration>) -> RetryPolicy {
    RetryPolicy {
        retries,
        per_try_timeout: per_try,
        on: Conditions::parse(retry_on),
        base: BASE_BACKOFF,
        max: MAX_BACKOFF,
        explicit: true,
    }
}

#[test]
fn conditions() {
    let c = Conditions::parse("5xx");
    assert!(c.matches(Outcome::Response {
        status: 503,
        grpc: None
    }));
    assert!(c.matches(Outcome::Reset) && c.matches(Outcome::ConnectFailure));
    assert!(!c.matches(Outcome::Response {
        status: 404,
        grpc: None
    }));
    let g = Conditions::parse("gateway-error");
    assert!(g.matches(Outcome::Response {
        status: 502,
        grpc: None
    }));
    assert!(!g.matches(Outcome::Response {
        status: 500,
        grpc: None
    }));
    let r = Conditions::parse("retriable-4xx,retriable-status-codes,418");
    assert!(r.matches(Outcome::Response {
        status: 409,
        grpc: None
    }));
    assert!(
        !r.matches(Outcome::Response {
            status: 503,
            grpc: None
        }),
        "an explicit retryOn retries only the codes it lists, as Istio configures Envoy"
    );
    assert!(r.matches(Outcome::Response {
        status: 418,
        grpc: None
    }));
    let grpc = Conditions::parse("unavailable,deadline-exceeded");
    assert!(grpc.matches(Outcome::Response {
        status: 200,
        grpc: Some(14)
    }));
    assert!(!grpc.matches(Outcome::Response {
        status: 200,
        grpc: Some(13)
    }));
    let cf = Conditions::parse("connect-failure");
    assert!(cf.matches(Outcome::ConnectFailure) && !cf.matches(Outcome::Reset));
}

/// Envoy's wouldRetryFromReset: `5xx`, `gateway-error` and `reset` retry every reset, and
/// `reset-before-request` those before the request went out.
#[test]
fn resets_are_retried_as_envoy_retries_them() {
    let resets = [
        Outcome::ConnectFailure,
        Outcome::Reset,
        Outcome::RefusedStream,
        Outcome::Timeout,
    ];
    for on in ["5xx", "gateway-error", "reset"] {
        let c = Conditions::parse(on);
        assert!(resets.iter().all(|o| c.matches(*o)), "{on}");
    }
    let before = Conditions::parse("reset-before-request");
    let matched: Vec<bool> = resets.iter().map(|o| before.matches(*o)).collect();
    assert_eq!(matched, [true, false, true, false]);
    let refused = Conditions::parse("refused-stream");
    assert!(refused.matches(Outcome::RefusedStream) && !refused.matches(Outcome::ConnectFailure));
}

#[test]
fn attempts_without_retry_on_take_istios_default_conditions() {
    let spec = HttpRetry {
        attempts: 3,
        ..HttpRetry::default()
    };
    let p = RetryPolicy::from_spec(Some(&spec));
    assert_eq!(p.tries(), 4);
    assert!(p.on.matches(Outcome::Response {
        status: 503,
        grpc: None
    }));
}

#[test]
fn istio_default_applies_without_a_retry_policy() {
    let p = RetryPolicy::from_spec(None);
    assert_eq!(p.tries(), 3);
    assert!(!p.explicit);
    assert!(p.on.matches(Outcome::ConnectFailure));
    assert!(p.on.matches(Outcome::Response {
        status: 503,
        grpc: None
    }));
    assert!(!p.on.matches(Outcome::Response {
        status: 500,
        grpc: None
    }));
}

#[test]
fn backoff_is_jittered_below_an_exponential_cap() {
    let p = policy(5, "5xx", None);
    for retry in 0..8 {
        let cap = (BASE_BACKOFF * 2u32.pow(retry)).min(MAX_BACKOFF);
        for _ in 0..200 {
            assert!(p.backoff(retry) < cap.max(Duration::from_millis(1)));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn retries_until_success_and_sleeps_only_the_backoff() {
    let p = policy(3, "5xx", None);
    let start = tokio::time::Instant::now();
    let outcome = |r: &Result<u16, ()>| match r {
        Ok(s) => Outcome::Response {
            status: *s,
            grpc: None,
        },
        Err(()) => Outcome::Reset,
    };
    let a = run(
        &p,
        || true,
        outcome,
        || (),
        || Some(()),
        &Dispatch::default(),
        |n| async move { if n < 3 { Ok(503) } else { Ok(200) } },
    )
    .await;
    assert_eq!((a.last, a.tries, a.exhausted), (Ok(200), 3, false));
    // Two backoffs: below 25 ms and below 50 ms.
    assert!(
        start.elapsed() < Duration::from_millis(75),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_the_retries_and_reports_exhaustion() {
    let p = policy(2, "5xx", None);
    let outcome = |r: &Result<u16, ()>| match r {
        Ok(s) => Outcome::Response {
            status: *s,
            grpc: None,
        },
        Err(()) => Outcome::Reset,
    };
    let a = run(
        &p,
        || true,
        outcome,
        || (),
        || Some(()),
        &Dispatch::default(),
        |_| async { Ok(503) },
    )
    .await;
    assert_eq!((a.last, a.tries, a.exhausted), (Ok(503), 3, true));
    let once = run(
        &p,
        || false,
        outcome,
        || (),
        || Some(()),
        &Dispatch::default(),
        |_| async { Ok(503) },
    )
    .await;
    assert_eq!(
        (once.tries, once.exhausted),
        (1, false),
        "a request that cannot be sent again is not retried"
    );
    // A streamed request can be retried while it has not been sent: here its first attempt
    // found no connection, its second sent it.
    let sent = std::cell::Cell::new(false);
    let streamed = run(
        &p,
        || !sent.get(),
        outcome,
        || (),
        || Some(()),
        &Dispatch::default(),
        |n| {
            sent.set(n == 2);
            async { Ok(503) }
        },
    )
    .await;
    assert_eq!((streamed.tries, streamed.exhausted), (2, false));
}

#[tokio::test(start_paused = true)]
async fn per_try_timeout_bounds_each_attempt() {
    let p = policy(1, "5xx", Some(Duration::from_millis(100)));
    let start = tokio::time::Instant::now();
    let outcome = |r: &Result<u16, &str>| match r {
        Ok(s) => Outcome::Response {
            status: *s,
            grpc: None,
        },
        Err(_) => Outcome::Timeout,
    };
    let dispatch = Dispatch::default();
    let a = run(
        &p,
        || true,
        outcome,
        || "timeout",
        || Some(()),
        &dispatch,
        |n| {
            dispatch.mark();
            async move {
                if n == 1 {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
                Ok(200)
            }
        },
    )
    .await;
    assert_eq!((a.last, a.tries), (Ok(200), 2));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(100) && took < Duration::from_millis(130),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_spent_retry_budget_stops_retrying_and_says_so() {
    let p = policy(3, "5xx", None);
    let outcome = |r: &Result<u16, ()>| match r {
        Ok(s) => Outcome::Response {
            status: *s,
            grpc: None,
        },
        Err(()) => Outcome::Reset,
    };
    // One token: the first retry runs, the second finds the budget spent.
    let mut tokens = 1;
    let a = run(
        &p,
        || true,
        outcome,
        || (),
        || {
            (tokens > 0).then(|| {
                tokens -= 1;
            })
        },
        &Dispatch::default(),
        |_| async { Ok(503) },
    )
    .await;
    assert_eq!(
        (a.last, a.tries, a.exhausted, a.overflow),
        (Ok(503), 2, false, true)
    );
}

/// As Envoy arms it when the pool is ready, the per-try timeout runs from the attempt's
/// dispatch: the wait for a connection (which the connect timeout bounds) is not part of it.
#[tokio::test(start_paused = true)]
async fn the_per_try_timeout_runs_from_the_attempts_dispatch() {
    let p = policy(1, "5xx", Some(Duration::from_millis(100)));
    let outcome = |r: &Result<u16, &str>| match r {
        Ok(s) => Outcome::Response {
            status: *s,
            grpc: None,
        },
        Err(_) => Outcome::Timeout,
    };
    let dispatch = &Dispatch::default();
    // 300 ms waiting for a connection, then answered 80 ms after dispatch: within the limit.
    let start = tokio::time::Instant::now();
    let a = run(
        &p,
        || true,
        outcome,
        || "timeout",
        || Some(()),
        dispatch,
        |_| async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            dispatch.mark();
            tokio::time::sleep(Duration::from_millis(80)).await;
            Ok(200)
        },
    )
    .await;
    assert_eq!((a.last, a.tries), (Ok(200), 1));
    assert_eq!(start.elapsed(), Duration::from_millis(380));
    // Dispatched after 300 ms and unanswered: timed out 100 ms later, then retried.
    let start = tokio::time::Instant::now();
    let a = run(
        &p,
        || true,
        outcome,
        || "timeout",
        || Some(()),
        dispatch,
        |n| async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            dispatch.mark();
            if n == 1 {
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            Ok(204)
        },
    )
    .await;
    assert_eq!((a.last, a.tries), (Ok(204), 2));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_millis(730),
        "{took:?}"
    );
}
