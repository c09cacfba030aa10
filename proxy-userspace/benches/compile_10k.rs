//! Loading and compiling 10,000 VirtualServices with 10 routes each: wall time of each phase
//! and the memory the resulting snapshot holds (resident set growth). Prints a Markdown table.

use std::{path::Path, time::Instant};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(|l| l.to_string())
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// VirtualServices `first..first + count`, each with `routes` header+prefix routes.
fn yaml(first: usize, count: usize, routes: usize) -> String {
    let mut out = String::with_capacity(count * routes * 200);
    for s in first..first + count {
        out.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: svc-{s}\n  namespace: default\nspec:\n  hosts:\n  - svc-{s}.default.svc.cluster.local\n  http:\n"
        ));
        for r in 0..routes {
            out.push_str(&format!(
                "  - match:\n    - headers:\n        x-tenant:\n          exact: tenant-{r}\n      uri:\n        prefix: /api/{r}\n    route:\n    - destination:\n        host: svc-{s}.default.svc.cluster.local\n        port:\n          number: 8080\n    timeout: 2s\n"
            ));
        }
    }
    out
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo bench/test discovery
    }
    let (services, routes, per_file) = (10_000, 10, 100);
    // 100 files of 100 VirtualServices, as a large mesh's config directory would hold them.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench/compile-10k");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench dir");
    let mut bytes = 0;
    for f in 0..services / per_file {
        let text = yaml(f * per_file, per_file, routes);
        bytes += text.len();
        std::fs::write(dir.join(format!("vs-{f:03}.yaml")), text).expect("write bench file");
    }
    let before = rss_kib();
    let t0 = Instant::now();
    let set =
        meshd::policy::load(std::slice::from_ref(&dir)).expect("generated policies are valid");
    let loaded = t0.elapsed();
    let t1 = Instant::now();
    let compiled = meshd::config::compile(&set);
    let compile = t1.elapsed();
    let after = rss_kib();
    assert_eq!(compiled.routes.hosts(), services);
    println!(
        "| VirtualServices | routes each | YAML | read+parse+validate | compile | total | RSS growth |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {services} | {routes} | {:.1} MiB | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} MiB |",
        bytes as f64 / (1 << 20) as f64,
        loaded.as_secs_f64() * 1e3,
        compile.as_secs_f64() * 1e3,
        (loaded + compile).as_secs_f64() * 1e3,
        after.saturating_sub(before) as f64 / 1024.0,
    );
    std::hint::black_box((set, compiled));
}
