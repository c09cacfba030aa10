//! Test harness for authorization: policies written as YAML documents and loaded through the
//! policy loader, requests built from a default that each case changes.

use std::{collections::BTreeMap, net::IpAddr};

use super::{Authorizer, Decision, HttpAttrs, RequestContext};
use crate::{
    policy::{load_str, model::AuthorizationPolicy},
    security::{SecurityError, Workload},
};

mod docs;
mod fields;
mod l4;
mod matchers;
mod selection;
mod structure;

pub const ROOT: &str = "istio-system";

/// An AuthorizationPolicy document; `spec` is YAML flow style, e.g. `{action: DENY}`.
pub fn ap(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"
    )
}

/// Loads the documents (which must be valid) and compiles them without errors.
pub fn authorizer(docs: &[String]) -> Authorizer {
    let set = load_str("test.yaml".as_ref(), &docs.join("---\n"))
        .unwrap_or_else(|e| panic!("invalid test policies: {e:?}"));
    let (a, errors) = Authorizer::from_set(&set, ROOT);
    assert_eq!(errors, [], "unexpected compile errors");
    a
}

/// Compiles policies given as JSON, bypassing validation (for values it would reject).
pub fn compile_json(policies: &[serde_json::Value]) -> (Authorizer, Vec<SecurityError>) {
    let policies: Vec<AuthorizationPolicy> = policies
        .iter()
        .map(|p| serde_json::from_value(p.clone()).unwrap())
        .collect();
    Authorizer::compile(&policies, ROOT)
}

/// A workload: namespace and labels.
pub struct W {
    pub ns: String,
    pub labels: BTreeMap<String, String>,
}

pub fn wl(ns: &str, labels: &[(&str, &str)]) -> W {
    W {
        ns: ns.to_string(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

impl W {
    pub fn get(&self) -> Workload<'_> {
        Workload {
            namespace: &self.ns,
            labels: &self.labels,
        }
    }
}

/// The workload most cases are about: httpbin in foo.
pub fn httpbin() -> W {
    wl("foo", &[("app", "httpbin"), ("version", "v1")])
}

pub const SLEEP: &str = "spiffe://cluster.local/ns/foo/sa/sleep";

#[derive(Clone, Debug)]
pub struct Http {
    pub host: String,
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
}

/// A request description that owns its data; [`Req::decide`] builds the context.
#[derive(Clone, Debug)]
pub struct Req {
    pub principal: Option<String>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub port: u16,
    pub http: Option<Http>,
}

impl Req {
    /// A TCP connection from foo/sleep at 10.1.2.3 to 10.0.0.9:8000.
    pub fn tcp() -> Req {
        Req {
            principal: Some(SLEEP.to_string()),
            src: "10.1.2.3".parse().unwrap(),
            dst: "10.0.0.9".parse().unwrap(),
            port: 8000,
            http: None,
        }
    }

    /// `GET /status/200` to `httpbin.foo:8000` with `x-token: abc`, on `Req::tcp()`.
    pub fn http() -> Req {
        Req::tcp().request("GET", "/status/200")
    }

    pub fn request(mut self, method: &str, path: &str) -> Req {
        let mut headers = BTreeMap::new();
        headers.insert("x-token".to_string(), "abc".to_string());
        self.http = Some(Http {
            host: "httpbin.foo:8000".to_string(),
            method: method.to_string(),
            path: path.to_string(),
            headers,
        });
        self
    }

    pub fn from(mut self, principal: &str) -> Req {
        self.principal = Some(principal.to_string());
        self
    }

    pub fn plaintext(mut self) -> Req {
        self.principal = None;
        self
    }

    pub fn src(mut self, ip: &str) -> Req {
        self.src = ip.parse().unwrap();
        self
    }

    pub fn dst(mut self, ip: &str) -> Req {
        self.dst = ip.parse().unwrap();
        self
    }

    pub fn port(mut self, port: u16) -> Req {
        self.port = port;
        self
    }

    pub fn host(mut self, host: &str) -> Req {
        self.http.as_mut().expect("an HTTP request").host = host.to_string();
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Req {
        let h = &mut self.http.as_mut().expect("an HTTP request").headers;
        h.insert(name.to_string(), value.to_string());
        self
    }

    pub fn decide(&self, a: &Authorizer, w: &W) -> Decision {
        let ctx = RequestContext::new(self.principal.clone(), self.src, self.dst, self.port);
        match &self.http {
            None => a.evaluate(&w.get(), &ctx),
            Some(h) => {
                let attrs = HttpAttrs {
                    host: &h.host,
                    method: &h.method,
                    path: &h.path,
                    headers: &h.headers,
                };
                a.evaluate(&w.get(), &ctx.with_http(&attrs))
            }
        }
    }

    /// Whether httpbin accepts the request.
    pub fn allowed(&self, a: &Authorizer) -> bool {
        self.decide(a, &httpbin()).allowed
    }
}
