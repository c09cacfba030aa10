//! A route's `corsPolicy`, applied as Envoy's CORS filter applies Istio's: a preflight from an
//! allowed origin is answered by meshd, and the response to any request from an allowed origin
//! carries `Access-Control-Allow-Origin` (and credentials and exposed headers when set).

use hyper::{
    HeaderMap, Method, Response, StatusCode,
    header::{self, HeaderValue},
};

use super::{Body, body};
use crate::{policy::model::CorsPolicy, routes::StringMatcher};

/// One route's CORS policy, compiled with the route.
#[derive(Debug)]
pub struct CorsRules {
    origins: Vec<StringMatcher>,
    allow_methods: Option<HeaderValue>,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    allow_credentials: bool,
    /// `unmatchedPreflights`: FORWARD (Istio's default) sends a preflight from an origin not
    /// allowed on to the upstream; IGNORE answers it without `Access-Control-Allow-Origin`.
    forward_unmatched_preflights: bool,
}

/// What the policy makes of a request.
#[derive(Debug)]
pub enum Check {
    /// No Origin, or an origin the policy does not allow: the request goes on untouched.
    Pass,
    /// A preflight meshd answers: this is the answer.
    Preflight(Response<Body>),
    /// A request from an allowed origin: its response gets the allow headers.
    Allowed(HeaderValue),
}

/// Istio joins lists with commas; a list that cannot be a header value is left out.
fn joined(items: &[String]) -> Option<HeaderValue> {
    (!items.is_empty())
        .then(|| HeaderValue::from_str(&items.join(",")).ok())
        .flatten()
}

impl CorsRules {
    /// `origins` are the policy's `allowOrigins` (or its deprecated `allowOrigin`), compiled.
    pub fn new(spec: &CorsPolicy, origins: Vec<StringMatcher>) -> CorsRules {
        CorsRules {
            origins,
            allow_methods: joined(&spec.allow_methods),
            allow_headers: joined(&spec.allow_headers),
            expose_headers: joined(&spec.expose_headers),
            max_age: spec
                .max_age
                .as_ref()
                .map(|d| HeaderValue::from(d.0.as_secs())),
            allow_credentials: spec.allow_credentials == Some(true),
            forward_unmatched_preflights: spec.unmatched_preflights.as_deref() != Some("IGNORE"),
        }
    }

    /// As Envoy: an origin is allowed when a matcher matches it, or matches `*` (so `*`, or a
    /// regex such as `.*`, allows every origin).
    fn allows(&self, origin: &str) -> bool {
        self.origins
            .iter()
            .any(|m| m.matches("*", false) || m.matches(origin, false))
    }

    pub fn check(&self, method: &Method, headers: &HeaderMap) -> Check {
        let Some(origin) = headers.get(header::ORIGIN).filter(|o| !o.is_empty()) else {
            return Check::Pass;
        };
        let allowed = origin.to_str().is_ok_and(|o| self.allows(o));
        let requested_method = headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .filter(|m| !m.is_empty());
        let preflight = method == Method::OPTIONS && requested_method.is_some();
        if !preflight || (!allowed && self.forward_unmatched_preflights) {
            return if allowed {
                Check::Allowed(origin.clone())
            } else {
                Check::Pass
            };
        }
        let mut resp = Response::new(body::full(String::new()));
        *resp.status_mut() = StatusCode::OK;
        let h = resp.headers_mut();
        if allowed {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        }
        if self.allow_credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        // Envoy's "*": the methods and headers the preflight asks for.
        let echo =
            |configured: &Option<HeaderValue>, requested: Option<&HeaderValue>| match configured {
                Some(v) if v == "*" => requested.cloned(),
                other => other.clone(),
            };
        if let Some(v) = echo(&self.allow_methods, requested_method) {
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
        }
        let requested_headers = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS);
        if let Some(v) = echo(&self.allow_headers, requested_headers) {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        if let Some(v) = &self.max_age {
            h.insert(header::ACCESS_CONTROL_MAX_AGE, v.clone());
        }
        Check::Preflight(resp)
    }

    /// The headers the response to a request from an allowed `origin` carries.
    pub fn decorate(&self, origin: HeaderValue, h: &mut HeaderMap) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        if self.allow_credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(v) = &self.expose_headers {
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::policy::duration::PolicyDuration;

    fn rules(unmatched: Option<&str>) -> CorsRules {
        let spec = CorsPolicy {
            allow_methods: vec!["GET".into(), "POST".into()],
            allow_headers: vec!["x-custom".into()],
            expose_headers: vec!["x-trace".into()],
            max_age: Some(PolicyDuration(Duration::from_secs(86400))),
            allow_credentials: Some(true),
            unmatched_preflights: unmatched.map(str::to_string),
            ..CorsPolicy::default()
        };
        CorsRules::new(
            &spec,
            vec![
                StringMatcher::Exact("https://a.example.com".into()),
                StringMatcher::regex(r"https://.*\.b\.example\.com").unwrap(),
            ],
        )
    }

    fn request(origin: Option<&str>, preflight: bool) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        if preflight {
            h.insert(
                header::ACCESS_CONTROL_REQUEST_METHOD,
                HeaderValue::from_static("POST"),
            );
            h.insert(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                HeaderValue::from_static("x-custom"),
            );
        }
        h
    }

    fn header(h: &HeaderMap, n: header::HeaderName) -> Option<&str> {
        h.get(n).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn a_preflight_from_an_allowed_origin_is_answered_with_the_policy() {
        let Check::Preflight(resp) = rules(None).check(
            &Method::OPTIONS,
            &request(Some("https://x.b.example.com"), true),
        ) else {
            panic!("a preflight is answered");
        };
        assert_eq!(resp.status(), 200);
        let h = resp.headers();
        assert_eq!(
            header(h, header::ACCESS_CONTROL_ALLOW_ORIGIN),
            Some("https://x.b.example.com")
        );
        assert_eq!(
            header(h, header::ACCESS_CONTROL_ALLOW_METHODS),
            Some("GET,POST")
        );
        assert_eq!(
            header(h, header::ACCESS_CONTROL_ALLOW_HEADERS),
            Some("x-custom")
        );
        assert_eq!(header(h, header::ACCESS_CONTROL_MAX_AGE), Some("86400"));
        assert_eq!(
            header(h, header::ACCESS_CONTROL_ALLOW_CREDENTIALS),
            Some("true")
        );
    }

    #[test]
    fn an_unmatched_preflight_is_forwarded_unless_ignored() {
        let evil = request(Some("https://evil.example.com"), true);
        assert!(matches!(
            rules(None).check(&Method::OPTIONS, &evil),
            Check::Pass
        ));
        assert!(matches!(
            rules(Some("FORWARD")).check(&Method::OPTIONS, &evil),
            Check::Pass
        ));
        let Check::Preflight(resp) = rules(Some("IGNORE")).check(&Method::OPTIONS, &evil) else {
            panic!("IGNORE answers the preflight");
        };
        assert_eq!(
            header(resp.headers(), header::ACCESS_CONTROL_ALLOW_ORIGIN),
            None
        );
    }

    #[test]
    fn requests_from_allowed_origins_are_marked_and_others_pass() {
        let r = rules(None);
        let Check::Allowed(origin) =
            r.check(&Method::GET, &request(Some("https://a.example.com"), false))
        else {
            panic!("an allowed origin");
        };
        let mut h = HeaderMap::new();
        r.decorate(origin, &mut h);
        assert_eq!(
            header(&h, header::ACCESS_CONTROL_ALLOW_ORIGIN),
            Some("https://a.example.com")
        );
        assert_eq!(
            header(&h, header::ACCESS_CONTROL_EXPOSE_HEADERS),
            Some("x-trace")
        );
        assert!(matches!(
            r.check(
                &Method::GET,
                &request(Some("https://a.example.com.evil"), false)
            ),
            Check::Pass
        ));
        assert!(matches!(
            r.check(&Method::GET, &request(None, false)),
            Check::Pass
        ));
        // OPTIONS without Access-Control-Request-Method is no preflight.
        assert!(matches!(
            r.check(
                &Method::OPTIONS,
                &request(Some("https://a.example.com"), false)
            ),
            Check::Allowed(_)
        ));
    }

    #[test]
    fn a_star_allows_every_origin_and_echoes_what_a_preflight_asks() {
        let spec = CorsPolicy {
            allow_methods: vec!["*".into()],
            allow_headers: vec!["*".into()],
            ..CorsPolicy::default()
        };
        let r = CorsRules::new(&spec, vec![StringMatcher::Exact("*".into())]);
        let Check::Preflight(resp) = r.check(
            &Method::OPTIONS,
            &request(Some("https://any.example"), true),
        ) else {
            panic!("answered");
        };
        let h = resp.headers();
        assert_eq!(
            header(h, header::ACCESS_CONTROL_ALLOW_ORIGIN),
            Some("https://any.example")
        );
        assert_eq!(
            header(h, header::ACCESS_CONTROL_ALLOW_METHODS),
            Some("POST")
        );
        assert_eq!(
            header(h, header::ACCESS_CONTROL_ALLOW_HEADERS),
            Some("x-custom")
        );
        assert_eq!(header(h, header::ACCESS_CONTROL_ALLOW_CREDENTIALS), None);
    }
}
