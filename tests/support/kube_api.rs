//! A stand-in for the Kubernetes API server, for discovery tests: not Kubernetes, only enough of
//! its list/watch protocol for kube-rs's watcher. It serves, on 127.0.0.1 only:
//!
//! - `GET /api/v1/{namespaces,nodes,pods,services}` and `GET /apis/<group>/<version>/<plural>`
//!   (cluster-wide): a list with the current `resourceVersion`, or with `watch=true` a stream of
//!   newline-delimited JSON WatchEvents after the given `resourceVersion`, then new ones as they
//!   happen (until `timeoutSeconds`, a `drop_watches`, or a failure period);
//! - list items without their apiVersion and kind, as the API leaves them out for built-in kinds;
//! - `fieldSelector=spec.nodeName=X` (the only selector it understands; labels are ignored);
//! - `GET /apis/<group>/<version>`: the APIResourceList of an installed Istio group, else 404.
//!
//! Tests change the objects with `apply` and `delete`, make every request fail with
//! `fail_with(Some(500))`, cut open watches with `drop_watches`, and forget the change history
//! with `compact` (older watches then get 410 Gone and must list again).
#![allow(dead_code)]

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{Request, Response, StatusCode, body::Frame, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, oneshot};

type Body = BoxBody<Bytes, Infallible>;

/// Istio's group versions with their kinds, served once `install_istio` is called.
const ISTIO: &[(&str, &[(&str, &str)])] = &[
    (
        "networking.istio.io/v1",
        &[
            ("VirtualService", "virtualservices"),
            ("DestinationRule", "destinationrules"),
            ("ServiceEntry", "serviceentries"),
            ("WorkloadEntry", "workloadentries"),
        ],
    ),
    (
        "security.istio.io/v1",
        &[
            ("PeerAuthentication", "peerauthentications"),
            ("AuthorizationPolicy", "authorizationpolicies"),
        ],
    ),
];

#[derive(Default)]
struct State {
    rv: u64,
    /// Collection path (`/api/v1/pods`) → object key (`ns/name`) → object.
    objects: HashMap<String, BTreeMap<String, Value>>,
    /// Every change: (resourceVersion, collection, event type, object).
    history: Vec<(u64, String, &'static str, Value)>,
    istio: bool,
    fail: Option<u16>,
    /// Bumped to end every open watch.
    epoch: u64,
    /// Watches from before this resourceVersion get 410 Gone (history compacted).
    compacted: u64,
    /// Requests served, as `METHOD path?query`.
    log: Vec<String>,
}

pub struct KubeApi {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    changed: broadcast::Sender<()>,
    stop: Option<oneshot::Sender<()>>,
}

fn plural(kind: &str) -> String {
    let k = kind.to_ascii_lowercase();
    match k.strip_suffix('y') {
        Some(stem) => format!("{stem}ies"),
        None => format!("{k}s"),
    }
}

/// The collection an object belongs in, from its apiVersion and kind.
fn collection(obj: &Value) -> String {
    let api = obj["apiVersion"].as_str().expect("apiVersion");
    let kind = obj["kind"].as_str().expect("kind");
    let base = if api == "v1" {
        "/api/v1".to_string()
    } else {
        format!("/apis/{api}")
    };
    format!("{base}/{}", plural(kind))
}

fn key(obj: &Value) -> String {
    let name = obj["metadata"]["name"].as_str().expect("metadata.name");
    match obj["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

fn full(status: StatusCode, v: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .unwrap()
}

fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    full(
        StatusCode::from_u16(code).unwrap(),
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code,
        }),
    )
}

/// Whether an object passes a field selector (only `spec.nodeName=X` is understood).
fn selected(obj: &Value, field_selector: Option<&str>) -> bool {
    match field_selector.and_then(|f| f.strip_prefix("spec.nodeName=")) {
        Some(node) => obj["spec"]["nodeName"].as_str() == Some(node),
        None => true,
    }
}

impl KubeApi {
    /// Starts the stand-in on 127.0.0.1 with an ephemeral port, on a thread of its own.
    pub fn start() -> KubeApi {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let (changed, _) = broadcast::channel(1024);
        let (stop, mut stopped) = oneshot::channel::<()>();
        let (st, ch) = (state.clone(), changed.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                loop {
                    let (stream, _) = tokio::select! {
                        a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                        _ = &mut stopped => return,
                    };
                    let (st, ch) = (st.clone(), ch.clone());
                    tokio::spawn(async move {
                        let svc = service_fn(move |req| {
                            let (st, ch) = (st.clone(), ch.clone());
                            async move { Ok::<_, Infallible>(handle(req, st, ch)) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
        });
        KubeApi {
            addr,
            state,
            changed,
            stop: Some(stop),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serves Istio's API groups from now on (404 before).
    pub fn install_istio(&self) {
        self.state.lock().unwrap().istio = true;
    }

    /// Creates or replaces an object (ADDED or MODIFIED for watchers).
    pub fn apply(&self, mut obj: Value) {
        let mut s = self.state.lock().unwrap();
        s.rv += 1;
        let rv = s.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let (coll, k) = (collection(&obj), key(&obj));
        let existed = s
            .objects
            .entry(coll.clone())
            .or_default()
            .insert(k, obj.clone())
            .is_some();
        let kind = if existed { "MODIFIED" } else { "ADDED" };
        s.history.push((rv, coll, kind, obj));
        drop(s);
        let _ = self.changed.send(());
    }

    /// Deletes the object of `obj`'s kind, namespace and name (DELETED for watchers).
    pub fn delete(&self, obj: &Value) {
        let mut s = self.state.lock().unwrap();
        let (coll, k) = (collection(obj), key(obj));
        let Some(mut gone) = s.objects.get_mut(&coll).and_then(|m| m.remove(&k)) else {
            return;
        };
        s.rv += 1;
        let rv = s.rv;
        gone["metadata"]["resourceVersion"] = json!(rv.to_string());
        s.history.push((rv, coll, "DELETED", gone));
        drop(s);
        let _ = self.changed.send(());
    }

    /// Every request is answered with this status (Some) or served again (None); open watches
    /// are cut when failing starts.
    pub fn fail_with(&self, code: Option<u16>) {
        let mut s = self.state.lock().unwrap();
        s.fail = code;
        if code.is_some() {
            s.epoch += 1;
        }
        drop(s);
        let _ = self.changed.send(());
    }

    /// Ends every open watch stream, as an API server restart or a load balancer would.
    pub fn drop_watches(&self) {
        self.state.lock().unwrap().epoch += 1;
        let _ = self.changed.send(());
    }

    /// Forgets the change history, as etcd compaction does: a watch from an older
    /// resourceVersion gets a 410 Gone event, and the client must list again.
    pub fn compact(&self) {
        let mut s = self.state.lock().unwrap();
        s.compacted = s.rv;
        s.history.clear();
        s.epoch += 1;
        drop(s);
        let _ = self.changed.send(());
    }

    /// The requests served so far, as `GET path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.drop_watches();
    }
}

fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    changed: broadcast::Sender<()>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query: HashMap<String, String> = req.uri().query().map(url_pairs).unwrap_or_default();
    let mut s = state.lock().unwrap();
    s.log.push(format!(
        "{} {}",
        req.method(),
        req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("")
    ));
    if let Some(code) = s.fail {
        return status(
            code,
            "InternalError",
            "the stand-in API server is failing on purpose",
        );
    }
    // Group discovery for Istio's groups.
    if let Some(gv) = path.strip_prefix("/apis/")
        && let Some((_, kinds)) = ISTIO.iter().find(|(g, _)| *g == gv)
    {
        if !s.istio {
            return status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            );
        }
        let resources: Vec<Value> = kinds
            .iter()
            .map(|(kind, plural)| {
                json!({
                    "name": plural, "singularName": kind.to_ascii_lowercase(), "namespaced": true,
                    "kind": kind, "verbs": ["get", "list", "watch"],
                })
            })
            .collect();
        return full(
            StatusCode::OK,
            json!({ "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources }),
        );
    }
    let is_istio = ISTIO
        .iter()
        .any(|(gv, _)| path.starts_with(&format!("/apis/{gv}/")));
    if is_istio && !s.istio {
        return status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
    }
    let known = [
        "/api/v1/namespaces",
        "/api/v1/nodes",
        "/api/v1/pods",
        "/api/v1/services",
        "/apis/discovery.k8s.io/v1/endpointslices",
    ];
    if !known.contains(&path.as_str()) && !is_istio {
        return status(
            404,
            "NotFound",
            "the stand-in API server does not serve this path",
        );
    }
    let fields = query.get("fieldSelector").cloned();
    if query.get("watch").map(String::as_str) == Some("true") {
        let since: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(290u64);
        let (tx, rx) = mpsc::channel::<Bytes>(1024);
        let epoch = s.epoch;
        let wake = changed.subscribe();
        drop(s);
        tokio::spawn(stream_watch(
            state, wake, tx, path, fields, since, epoch, timeout,
        ));
        let body = StreamBody::new(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        }));
        return Response::builder()
            .header("content-type", "application/json")
            .body(BodyExt::boxed(body))
            .unwrap();
    }
    let items: Vec<Value> = s
        .objects
        .get(&path)
        .map(|m| {
            m.values()
                .filter(|o| selected(o, fields.as_deref()))
                .map(|o| {
                    // As a real API server does for built-in kinds, list items leave out
                    // apiVersion and kind (the list's own say them).
                    let mut o = o.clone();
                    if let Some(m) = o.as_object_mut() {
                        m.remove("apiVersion");
                        m.remove("kind");
                    }
                    o
                })
                .collect()
        })
        .unwrap_or_default();
    full(
        StatusCode::OK,
        json!({
            "kind": "List", "apiVersion": "v1",
            "metadata": { "resourceVersion": s.rv.to_string() },
            "items": items,
        }),
    )
}

#[allow(clippy::too_many_arguments)]
async fn stream_watch(
    state: Arc<Mutex<State>>,
    mut wake: broadcast::Receiver<()>,
    tx: mpsc::Sender<Bytes>,
    path: String,
    fields: Option<String>,
    mut since: u64,
    epoch: u64,
    timeout: u64,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    loop {
        // Some(lines) to send, or None when the history the watch needs is gone.
        let lines: Option<Vec<Bytes>> = {
            let s = state.lock().unwrap();
            if s.epoch != epoch {
                return;
            }
            if since < s.compacted {
                None
            } else {
                let new: Vec<Bytes> = s
                    .history
                    .iter()
                    .filter(|(rv, coll, _, obj)| {
                        *rv > since && *coll == path && selected(obj, fields.as_deref())
                    })
                    .map(|(_, _, kind, obj)| {
                        Bytes::from(format!("{}\n", json!({ "type": kind, "object": obj })))
                    })
                    .collect();
                since = s.rv;
                Some(new)
            }
        };
        let Some(lines) = lines else {
            let gone = json!({ "type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("too old resource version: {since}"),
                "reason": "Expired", "code": 410,
            } });
            let _ = tx.send(Bytes::from(format!("{gone}\n"))).await;
            return;
        };
        for l in lines {
            if tx.send(l).await.is_err() {
                return;
            }
        }
        tokio::select! {
            r = wake.recv() => if matches!(r, Err(broadcast::error::RecvError::Closed)) { return },
            _ = tokio::time::sleep_until(deadline) => return,
            _ = tx.closed() => return,
        }
    }
}

/// Splits `a=b&c=d` with %-decoding.
fn url_pairs(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
