//! Envoy's per-request overrides of a route's timeout and retries, which Istio's sidecars honour
//! from the workloads they serve (internal requests): `x-envoy-upstream-rq-timeout-ms`,
//! `x-envoy-upstream-rq-per-try-timeout-ms`, `x-envoy-retry-on`, `x-envoy-retry-grpc-on`,
//! `x-envoy-max-retries` and `x-envoy-retriable-status-codes`, and
//! `x-envoy-upstream-rq-timeout-alt-response` (a timeout answers 204 instead of 504). As Envoy's
//! router does, meshd consumes them: the upstream (and a mirror) never sees them.

use std::time::Duration;

use hyper::HeaderMap;

use super::retry::{Conditions, RetryPolicy};

const TIMEOUT_MS: &str = "x-envoy-upstream-rq-timeout-ms";
const PER_TRY_TIMEOUT_MS: &str = "x-envoy-upstream-rq-per-try-timeout-ms";
const RETRY_ON: &str = "x-envoy-retry-on";
const RETRY_GRPC_ON: &str = "x-envoy-retry-grpc-on";
const MAX_RETRIES: &str = "x-envoy-max-retries";
const RETRIABLE_STATUS_CODES: &str = "x-envoy-retriable-status-codes";
const TIMEOUT_ALT_RESPONSE: &str = "x-envoy-upstream-rq-timeout-alt-response";

/// Removes the override headers, for a request that has nothing they could change.
pub fn strip(headers: &mut HeaderMap) {
    if headers.keys().any(|k| k.as_str().starts_with("x-envoy-")) {
        for name in [
            TIMEOUT_MS,
            PER_TRY_TIMEOUT_MS,
            RETRY_ON,
            RETRY_GRPC_ON,
            MAX_RETRIES,
            RETRIABLE_STATUS_CODES,
            TIMEOUT_ALT_RESPONSE,
        ] {
            headers.remove(name);
        }
    }
}

/// A request's timeout and retry policy after its headers' overrides.
#[derive(Debug, PartialEq)]
pub struct Overrides {
    /// The route timeout (`None`: none; `x-envoy-upstream-rq-timeout-ms: 0` turns it off).
    pub timeout: Option<Duration>,
    /// The retry policy, when the headers change the route's (boxed: it is rare, and lives in
    /// every request's future).
    pub retry: Option<Box<RetryPolicy>>,
    /// A timeout answers 204 instead of 504 (the header's presence; its value is ignored).
    pub timeout_alt_response: bool,
}

/// Removes the override headers from `headers` and applies them to the route's `timeout` and
/// `retry` policy. `None` when the request carries none (the common case, one pass over the
/// header names and no allocation).
pub fn take(
    headers: &mut HeaderMap,
    timeout: Option<Duration>,
    retry: &RetryPolicy,
) -> Option<Overrides> {
    if !headers.keys().any(|k| k.as_str().starts_with("x-envoy-")) {
        return None;
    }
    let mut value = |name: &str| {
        let v = headers.remove(name)?;
        v.to_str().ok().map(|s| s.trim().to_string())
    };
    let millis = |v: Option<String>| {
        v.and_then(|s| s.parse::<u64>().ok())
            .map(Duration::from_millis)
    };
    let header_timeout = millis(value(TIMEOUT_MS));
    let per_try = millis(value(PER_TRY_TIMEOUT_MS));
    let retry_on = value(RETRY_ON);
    let grpc_on = value(RETRY_GRPC_ON);
    let max_retries = value(MAX_RETRIES).and_then(|s| s.parse::<u32>().ok());
    let codes = value(RETRIABLE_STATUS_CODES);
    let timeout_alt_response = headers.remove(TIMEOUT_ALT_RESPONSE).is_some();
    let timeout = match header_timeout {
        Some(t) => (!t.is_zero()).then_some(t),
        None => timeout,
    };
    // Copied only when a header changes it.
    let mut policy: Option<RetryPolicy> = None;
    fn edit<'p>(policy: &'p mut Option<RetryPolicy>, route: &RetryPolicy) -> &'p mut RetryPolicy {
        policy.get_or_insert_with(|| route.clone())
    }
    for on in [retry_on, grpc_on].into_iter().flatten() {
        let p = edit(&mut policy, retry);
        p.on.merge(Conditions::parse(&on));
        // Envoy retries at least once when the headers ask for retries.
        p.retries = p.retries.max(1);
    }
    if let Some(n) = max_retries {
        edit(&mut policy, retry).retries = n;
    }
    // As Envoy: the codes count only where `retriable-status-codes` is a condition.
    let codes_count = policy.as_ref().unwrap_or(retry).on.any_status_code;
    if let Some(codes) = codes.filter(|_| codes_count) {
        let codes = codes
            .split(',')
            .filter_map(|c| c.trim().parse::<u16>().ok());
        edit(&mut policy, retry).on.status_codes.extend(codes);
    }
    // As Envoy: it replaces the route's, and one no shorter than the route timeout (or 0) is
    // none.
    if let Some(p) = per_try {
        edit(&mut policy, retry).per_try_timeout =
            (!p.is_zero() && timeout.is_none_or(|t| p < t)).then_some(p);
    }
    Some(Overrides {
        timeout,
        retry: policy.map(Box::new),
        timeout_alt_response,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::http::retry::Outcome;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn no_retries() -> RetryPolicy {
        RetryPolicy {
            retries: 0,
            ..RetryPolicy::from_spec(None)
        }
    }

    const FIVE_S: Option<Duration> = Some(Duration::from_secs(5));

    #[test]
    fn a_request_without_them_changes_nothing() {
        let mut h = headers(&[("x-request-id", "1")]);
        assert_eq!(take(&mut h, FIVE_S, &no_retries()), None);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn the_alt_response_header_is_read_by_its_presence_and_consumed() {
        let mut h = headers(&[(TIMEOUT_ALT_RESPONSE, "")]);
        let o = take(&mut h, FIVE_S, &no_retries()).expect("an override");
        assert!(o.timeout_alt_response);
        assert_eq!(o.timeout, FIVE_S);
        assert!(h.is_empty());
        let mut h = headers(&[(TIMEOUT_MS, "250")]);
        assert!(
            !take(&mut h, FIVE_S, &no_retries())
                .unwrap()
                .timeout_alt_response
        );
    }

    #[test]
    fn the_timeout_header_replaces_the_routes_and_zero_turns_it_off() {
        let mut h = headers(&[(TIMEOUT_MS, "250"), ("x-request-id", "1")]);
        let o = take(&mut h, FIVE_S, &no_retries()).unwrap();
        assert_eq!(o.timeout, Some(Duration::from_millis(250)));
        assert_eq!(o.retry, None);
        assert_eq!(h.len(), 1, "consumed");
        let mut h = headers(&[(TIMEOUT_MS, "0")]);
        assert_eq!(take(&mut h, FIVE_S, &no_retries()).unwrap().timeout, None);
        let mut h = headers(&[(TIMEOUT_MS, "soon")]);
        assert_eq!(take(&mut h, FIVE_S, &no_retries()).unwrap().timeout, FIVE_S);
    }

    #[test]
    fn retry_headers_merge_into_the_routes_policy() {
        let mut h = headers(&[(RETRY_ON, "5xx"), (RETRY_GRPC_ON, "internal")]);
        let p = take(&mut h, None, &no_retries()).unwrap().retry.unwrap();
        assert_eq!(p.retries, 1, "at least one retry, as Envoy");
        let status = |status| Outcome::Response { status, grpc: None };
        assert!(p.on.matches(status(500)));
        assert!(p.on.matches(Outcome::Response {
            status: 200,
            grpc: Some(13)
        }));
        assert!(
            p.on.matches(Outcome::ConnectFailure),
            "Istio's default kept"
        );
        let mut h = headers(&[
            (RETRY_ON, "retriable-status-codes"),
            (RETRIABLE_STATUS_CODES, "409, 418"),
            (MAX_RETRIES, "4"),
        ]);
        let p = take(&mut h, None, &no_retries()).unwrap().retry.unwrap();
        assert_eq!(p.retries, 4);
        assert!(p.on.matches(status(418)) && p.on.matches(status(503)));
        assert!(!p.on.matches(status(500)));
        assert!(h.is_empty());
    }

    #[test]
    fn strip_removes_only_the_overrides() {
        let mut h = headers(&[(RETRY_ON, "5xx"), (TIMEOUT_MS, "1"), ("x-envoy-peer", "gw")]);
        strip(&mut h);
        assert_eq!(
            h.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["x-envoy-peer"]
        );
    }

    #[test]
    fn status_codes_count_only_under_retriable_status_codes() {
        let five_xx = RetryPolicy {
            on: Conditions::parse("5xx"),
            ..RetryPolicy::from_spec(None)
        };
        let mut h = headers(&[(RETRIABLE_STATUS_CODES, "409"), ("x-envoy-peer", "gw")]);
        let o = take(&mut h, None, &five_xx).unwrap();
        assert_eq!(o.retry, None, "ignored, and the policy not copied");
        assert!(h.contains_key("x-envoy-peer") && !h.contains_key(RETRIABLE_STATUS_CODES));
    }

    #[test]
    fn a_per_try_timeout_no_shorter_than_the_route_timeout_is_none() {
        let mut h = headers(&[(PER_TRY_TIMEOUT_MS, "100")]);
        let p = take(&mut h, FIVE_S, &no_retries()).unwrap().retry.unwrap();
        assert_eq!(p.per_try_timeout, Some(Duration::from_millis(100)));
        let mut h = headers(&[(PER_TRY_TIMEOUT_MS, "5000")]);
        let p = take(&mut h, FIVE_S, &no_retries()).unwrap().retry.unwrap();
        assert_eq!(p.per_try_timeout, None);
        let mut h = headers(&[(PER_TRY_TIMEOUT_MS, "5000"), (TIMEOUT_MS, "0")]);
        let p = take(&mut h, FIVE_S, &no_retries()).unwrap().retry.unwrap();
        assert_eq!(p.per_try_timeout, Some(Duration::from_secs(5)));
    }
}
