//! Route lookup cost: the host table lookup plus first-match over 100 header-match routes, for
//! tables of 10, 1,000 and 100,000 hosts. The lookup must not grow with the number of hosts.

use std::{collections::BTreeMap, hint::black_box, sync::Arc};

use criterion::{Criterion, criterion_group, criterion_main};
use meshd::routes::{
    HostRoutes, HttpRoute, RequestMatch, RequestView, RouteTable, StringMatcher,
    matcher::PresenceMatcher,
};

/// 100 routes, each matching one value of `x-tenant`; the request matches the last one.
fn routes() -> HostRoutes {
    let routes: Vec<HttpRoute> = (0..100)
        .map(|i| HttpRoute {
            origin: format!("default/vs#{i}"),
            matches: vec![RequestMatch {
                headers: vec![(
                    "x-tenant".into(),
                    PresenceMatcher::Value(StringMatcher::Exact(format!("tenant-{i}"))),
                )],
                ..Default::default()
            }],
            destinations: vec![],
            spec: Arc::default(),
            retry: meshd::proxy::http::retry::RetryPolicy::from_spec(None),
            cors: None,
            regex_rewrite: None,
            stat_prefixes: Vec::new(),
        })
        .collect();
    HostRoutes::new(routes)
}

fn table(hosts: usize) -> RouteTable {
    let mut t = RouteTable::default();
    let r = routes();
    for i in 0..hosts {
        t.insert(&format!("svc-{i}.default.svc.cluster.local"), r.clone());
    }
    t
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup_100_header_routes");
    for hosts in [10usize, 1_000, 100_000] {
        let t = table(hosts);
        let host = format!("svc-{}.default.svc.cluster.local", hosts / 2);
        group.bench_function(format!("{hosts}_hosts"), move |b| {
            let labels = BTreeMap::new();
            let header = |n: &str| (n == "x-tenant").then_some("tenant-99".into());
            b.iter(|| {
                let view = RequestView {
                    method: "GET",
                    path: "/",
                    query: None,
                    authority: &host,
                    scheme: "http",
                    port: 80,
                    header: &header,
                    source_labels: &labels,
                    source_namespace: None,
                };
                let routes = t.lookup(black_box(&host)).expect("host present");
                black_box(routes.first_match(&view).map(|r| r.origin.len()))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
