//! The admin API: /ready, /metrics, /connections, /config_dump and the workload enrolment
//! endpoints used by `meshd exec`.

pub mod client;
mod pool_gauges;

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    Method, Request, Response, StatusCode, body::Incoming, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::{
    ebpf::DatapathMaps,
    metrics::Metrics,
    pods::{PodError, Pods},
    proxy::Connections,
    settings::Settings,
    telemetry::exposition::escape_into,
    workloads::{Placement, Registry, WorkloadError, WorkloadName},
};

/// Largest request body the admin API reads.
const MAX_BODY: usize = 64 * 1024;

pub struct AdminState {
    pub ready: AtomicBool,
    pub settings: Settings,
    pub maps: Arc<DatapathMaps>,
    pub workloads: Arc<Registry>,
    pub pods: Arc<Pods>,
    pub connections: Arc<Connections>,
    pub metrics: Arc<Metrics>,
    pub started_unix_ms: u64,
    pub attach_cgroup: String,
    pub config: Arc<crate::config::ConfigStore>,
    pub http: Arc<crate::proxy::http::HttpContext>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrolRequest {
    workload: String,
    /// An existing cgroup to adopt (a pod's) instead of a new one.
    #[serde(default)]
    cgroup: Option<std::path::PathBuf>,
    /// The workload's network namespace (a file such as /run/netns/NAME or /proc/PID/ns/net).
    #[serde(default)]
    netns: Option<std::path::PathBuf>,
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            // Out of file descriptors, say: the connection stays queued, so retrying at once
            // would spin (and log) until one frees. Wait a little, as the proxy listeners do.
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move {
                    // What changes meshd (enrolling a workload gives its traffic an identity;
                    // the log filter) is taken from this node's loopback only, as Envoy keeps
                    // its admin API there: `--admin 0.0.0.0:15000` serves probes and scrapes.
                    if !may_come_from(req.method(), peer) {
                        return Ok::<_, Infallible>(error(
                            StatusCode::FORBIDDEN,
                            format!(
                                "{} {} is taken from this node's loopback only",
                                req.method(),
                                req.uri().path()
                            ),
                        ));
                    }
                    Ok(route(req, &state).await)
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Whether a request may come from `peer`: reads from anywhere, changes from loopback.
fn may_come_from(method: &Method, peer: std::net::SocketAddr) -> bool {
    method == Method::GET || method == Method::HEAD || peer.ip().to_canonical().is_loopback()
}

type Resp = Response<Full<Bytes>>;

fn text(status: StatusCode, body: impl Into<String>) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body.into())))
        .expect("static response parts")
}

fn json(status: StatusCode, value: &impl Serialize) -> Resp {
    let body = serde_json::to_vec_pretty(value).expect("serialisable admin payload");
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts")
}

fn error(status: StatusCode, msg: impl Into<String>) -> Resp {
    json(status, &ErrorBody { error: msg.into() })
}

/// The registry's metrics plus the drop counters of the telemetry pipelines, which live outside
/// the registry (atomics bumped off the request path).
fn metrics_text(st: &AdminState) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let mut text = st.metrics.render(&st.maps);
    let name = "meshd_trace_spans_dropped_total";
    text.push_str(&format!(
        "# HELP {name} Spans a collector lost: its export queue was full, or it did not take a batch\n# TYPE {name} counter\n"
    ));
    for (collector, format, value) in st.http.tracer.dropped() {
        text.push_str(name);
        text.push_str("{collector=\"");
        escape_into(&mut text, collector);
        text.push_str(&format!("\",format=\"{format}\"}} {value}\n"));
    }
    text.push_str(&pool_gauges::render(&st.http.pool.counts()));
    let name = "meshd_access_log_dropped_total";
    text.push_str(&format!(
        "# HELP {name} Access-log lines dropped because the writer queue was full\n# TYPE {name} counter\n{name} {}\n",
        st.http.access.dropped.load(Relaxed)
    ));
    text
}

async fn route(req: Request<Incoming>, st: &AdminState) -> Resp {
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/ready") => {
            if st.ready.load(Ordering::Relaxed) {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        (Method::GET, "/metrics") => Response::builder()
            .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
            .body(Full::new(Bytes::from(metrics_text(st))))
            .expect("static response parts"),
        (Method::GET, "/connections") => json(StatusCode::OK, &st.connections.snapshot()),
        (Method::GET, "/config_dump") => json(
            StatusCode::OK,
            &serde_json::json!({
                "settings": st.settings,
                "attach_cgroup": st.attach_cgroup,
                "started_unix_ms": st.started_unix_ms,
                "workloads": st.workloads.list(),
                "snapshot": st.config.current().dump(),
            }),
        ),
        (Method::GET, "/workloads") => json(StatusCode::OK, &st.workloads.list()),
        (Method::GET, "/stats/outliers") => json(StatusCode::OK, &st.http.outliers.report()),
        (Method::GET, "/logging") => text(
            StatusCode::OK,
            format!("{}\n", crate::telemetry::logging::current()),
        ),
        (Method::POST, "/logging") => {
            // `POST /logging?level=debug` (any tracing filter, e.g. `info,meshd::proxy=debug`).
            let level = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("level=")))
                .map(|v| {
                    v.replace("%2C", ",")
                        .replace("%3D", "=")
                        .replace("%3A", ":")
                });
            match level {
                Some(l) => match crate::telemetry::logging::set(&l) {
                    Ok(()) => text(StatusCode::OK, format!("{l}\n")),
                    Err(e) => error(StatusCode::BAD_REQUEST, e),
                },
                None => error(StatusCode::BAD_REQUEST, "use POST /logging?level=FILTER"),
            }
        }
        (Method::POST, "/workloads") => enrol(req, st).await,
        (Method::DELETE, p) if p.starts_with("/workloads/") => {
            let Ok(id) = p["/workloads/".len()..].parse::<u32>() else {
                return error(StatusCode::BAD_REQUEST, "workload id must be a number");
            };
            match st.pods.remove(id) {
                Ok(w) => json(StatusCode::OK, &w),
                Err(e @ WorkloadError::Unknown(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
                Err(e @ WorkloadError::Busy { .. }) => error(StatusCode::CONFLICT, e.to_string()),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        (method, p) => match allowed(p) {
            // A known endpoint asked with a method it does not take: 405, naming those it does.
            Some(allow) => {
                let mut r = error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("{p} takes {allow}, not {method}"),
                );
                r.headers_mut().insert(
                    hyper::header::ALLOW,
                    hyper::header::HeaderValue::from_static(allow),
                );
                r
            }
            None => error(StatusCode::NOT_FOUND, format!("no admin endpoint {path}")),
        },
    }
}

/// The methods an admin endpoint takes, as an `Allow` header lists them.
fn allowed(path: &str) -> Option<&'static str> {
    match path {
        "/ready" | "/metrics" | "/connections" | "/config_dump" | "/stats/outliers" => Some("GET"),
        "/logging" | "/workloads" => Some("GET, POST"),
        p if p.starts_with("/workloads/") => Some("DELETE"),
        _ => None,
    }
}

async fn enrol(req: Request<Incoming>, st: &AdminState) -> Resp {
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("reading the body: {e}")),
    };
    let parsed: EnrolRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "expected {{\"workload\": \"NS/NAME\", \"cgroup\"?: PATH, \"netns\"?: PATH}}: {e}"
                ),
            );
        }
    };
    let name = match WorkloadName::parse(&parsed.workload) {
        Ok(n) => n,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    // Enrolled all the same (its WorkloadEntry may come with the next reload), but a typo in
    // the name would leave the workload without labels, identity or policies: said so.
    let declared = (st.config.current().policies.workload_entries.iter()).any(|w| {
        let m = &w.resource.metadata;
        m.namespace == name.namespace && m.name == name.name
    });
    if !declared {
        tracing::warn!(
            workload = %parsed.workload,
            "enrolling a workload no WorkloadEntry declares: it has no labels, and takes the namespace's default service account, until one does"
        );
    }
    let at = Placement {
        cgroup: parsed.cgroup,
        netns: parsed.netns,
    };
    match st.pods.enrol(&name, &at) {
        Ok(w) => json(StatusCode::CREATED, &w),
        Err(
            e @ (PodError::Netns(_)
            | PodError::Workload(
                WorkloadError::OutsideAttach { .. }
                | WorkloadError::NoCgroup(_)
                | WorkloadError::Duplicate { .. },
            )),
        ) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_come_from_loopback_only() {
        let remote = "10.0.0.9:40000".parse().unwrap();
        let local = "127.0.0.1:40000".parse().unwrap();
        let mapped = "[::ffff:127.0.0.1]:40000".parse().unwrap();
        assert!(may_come_from(&Method::GET, remote));
        assert!(!may_come_from(&Method::POST, remote));
        assert!(!may_come_from(&Method::DELETE, remote));
        assert!(may_come_from(&Method::POST, local));
        assert!(may_come_from(&Method::DELETE, mapped));
    }
}
