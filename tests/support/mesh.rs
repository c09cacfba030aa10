//! A small mesh for L7 tests: `reviews` with subsets v1 and v2 behind a ServiceEntry VIP, a
//! daemon reading those policies, and curl as the managed client `default/productpage`.

use std::path::PathBuf;

use super::{Daemon, http_backend::HttpBackend};

/// `reviews` with two versions behind a ServiceEntry VIP (127.0.0.50:9080), a DestinationRule
/// with subsets v1 and v2, and `routes` as the VirtualService's `http:` list.
pub fn policies(v1: &HttpBackend, v2: &HttpBackend, routes: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: reviews
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
  location: MESH_INTERNAL
  endpoints:
  - address: 127.0.0.1
    ports:
      http: {p1}
    labels:
      version: v1
  - address: 127.0.0.1
    ports:
      http: {p2}
    labels:
      version: v2
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
{routes}"#,
        p1 = v1.addr.port(),
        p2 = v2.addr.port(),
    )
}

pub fn config_dir(name: &str, yaml: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("meshd-test-{name}-routing"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("reviews.yaml"), yaml).unwrap();
    dir
}

/// Runs one curl as a managed workload against reviews:9080 (resolved to the VIP).
pub fn curl(d: &Daemon, args: &[&str]) -> String {
    curl_as(d, "default/productpage", args)
}

/// Runs one curl as `workload`, with reviews:9080 resolved to the VIP; it must succeed.
pub fn curl_as(d: &Daemon, workload: &str, args: &[&str]) -> String {
    let mut full = vec![
        "curl",
        "-sS",
        "--max-time",
        "20",
        "--resolve",
        "reviews:9080:127.0.0.50",
    ];
    full.extend_from_slice(args);
    let out = d.exec(workload, &full).output().unwrap();
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn start(name: &str, slot: u16, yaml: &str) -> Daemon {
    let dir = config_dir(name, yaml);
    Daemon::start(name, slot, &["--config", dir.to_str().unwrap()])
}

/// Runs `n` requests to `url` on one curl (one keep-alive connection) and returns curl's
/// `--write-out` line for each. Every URL gets its own `-o /dev/null`.
pub fn curl_many(d: &Daemon, url: &str, n: usize, write_out: &str) -> Vec<String> {
    let mut args: Vec<&str> = vec!["-w", write_out];
    for _ in 0..n {
        args.extend(["-o", "/dev/null", url]);
    }
    curl(d, &args).lines().map(str::to_string).collect()
}

/// The HTTP status code of one GET from the managed client.
pub fn status(d: &Daemon, url: &str) -> String {
    curl(d, &["-o", "/dev/null", "-w", "%{http_code}", url])
}

/// Two fresh backends, for `reviews` v1 and v2.
pub fn two_backends() -> (HttpBackend, HttpBackend) {
    (
        HttpBackend::start("127.0.0.1:0"),
        HttpBackend::start("127.0.0.1:0"),
    )
}
