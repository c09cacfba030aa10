//! Loading and compiling 10,000 VirtualServices with 10 routes each: wall time of each phase,
//! the heap the resulting snapshot holds, and the peak heap while loading. Prints a Markdown
//! table.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    path::Path,
    sync::atomic::{AtomicUsize, Ordering},
    time::Instant,
};

/// Counts live heap bytes and their peak, so the table shows what the snapshot really holds
/// (resident memory would include what the allocator keeps after freeing).
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
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
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let t0 = Instant::now();
    let mut set =
        meshd::policy::load(std::slice::from_ref(&dir)).expect("generated policies are valid");
    let loaded = t0.elapsed();
    // As the runtime store does: the snapshot keeps resources, not their YAML trees.
    set.forget_trees();
    let t1 = Instant::now();
    let compiled = meshd::config::compile(&set);
    let compile = t1.elapsed();
    let held = LIVE.load(Ordering::Relaxed) - before;
    let peak = PEAK.load(Ordering::Relaxed) - before;
    assert_eq!(compiled.routes.hosts(), services);
    println!(
        "| VirtualServices | routes each | YAML | read+parse+validate | compile | total | heap held by the snapshot | peak heap while loading |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {services} | {routes} | {:.1} MiB | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} MiB | {:.0} MiB |",
        mib(bytes),
        loaded.as_secs_f64() * 1e3,
        compile.as_secs_f64() * 1e3,
        (loaded + compile).as_secs_f64() * 1e3,
        mib(held),
        mib(peak),
    );
    std::hint::black_box((set, compiled));
}
