//! Prometheus metrics: meshd's own connection metrics plus the eBPF event counters, which are
//! read from the per-CPU map at scrape time.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

use crate::ebpf::DatapathMaps;

pub struct Metrics {
    registry: Registry,
    /// Istio's standard request and TCP metrics.
    pub istio: crate::telemetry::IstioMetrics,
    /// Statistics of the routes that name a `statPrefix`.
    pub routes: crate::telemetry::route_stats::RouteStats,
    connections_active: IntGauge,
    connections_total: IntCounterVec,
    bytes_total: IntCounterVec,
    zero_copy_total: IntCounterVec,
    pub workloads: IntGauge,
    config_reloads: IntCounterVec,
    api_rejected: IntCounterVec,
    retries: prometheus::IntCounter,
    mirrors: IntCounterVec,
    outliers: IntCounterVec,
    rate_limits: IntCounterVec,
    overflows: IntCounterVec,
    tunnel: IntCounterVec,
    dry_run: IntCounterVec,
    audit: IntCounterVec,
    config_generation: IntGauge,
    config_valid: IntGauge,
    ebpf_events: IntCounterVec,
    /// Last value seen per eBPF counter, to turn absolute readings into increments.
    ebpf_seen: Mutex<Vec<u64>>,
    /// The workload certificates, whose expiry is exported (set when meshd has any).
    certs: std::sync::OnceLock<crate::identity::CertManager>,
}

/// Decrements the active-connections gauge when the connection ends, whatever the path.
pub struct ActiveGuard(IntGauge);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Adds to a byte counter's `direction="from_workload"` and `direction="to_workload"` series.
fn by_direction(counter: &IntCounterVec, from_workload: u64, to_workload: u64) {
    for (direction, n) in [
        ("from_workload", from_workload),
        ("to_workload", to_workload),
    ] {
        counter.with_label_values(&[direction]).inc_by(n);
    }
}

impl Metrics {
    /// `istio` turns Istio's standard request and TCP metrics on; meshd's own are always on.
    /// An open TCP connection reports its bytes every `tcp_every` (only at close: `None`).
    pub fn new(istio: bool, tcp_every: Option<Duration>) -> Arc<Metrics> {
        let registry = Registry::new();
        let connections_active = IntGauge::new(
            "meshd_connections_active",
            "Proxied connections open right now",
        )
        .unwrap();
        let connections_total = IntCounterVec::new(
            Opts::new(
                "meshd_connections_total",
                "Captured connections handled, by result",
            ),
            &["result"],
        )
        .unwrap();
        let bytes_total = IntCounterVec::new(
            Opts::new(
                "meshd_proxied_bytes_total",
                "Bytes copied by the L4 proxy, by direction",
            ),
            &["direction"],
        )
        .unwrap();
        let zero_copy_total = IntCounterVec::new(
            Opts::new(
                "meshd_zero_copy_bytes_total",
                "Of the L4 proxy's bytes, those moved with splice(2), by direction",
            ),
            &["direction"],
        )
        .unwrap();
        let workloads = IntGauge::new(
            "meshd_workloads_enrolled",
            "Workloads enrolled on this node",
        )
        .unwrap();
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "meshd_config_reload_total",
                "Configuration reloads by result: success, failure (rejected, last good kept), unchanged",
            ),
            &["result"],
        )
        .unwrap();
        // Every result from the start, so a rate over the first failure sees it.
        for result in ["success", "failure", "unchanged"] {
            config_reloads.with_label_values(&[result]);
        }
        let config_valid = IntGauge::new(
            "meshd_config_last_reload_successful",
            "1 when the policy files as they are now were applied (or unchanged), 0 when the last reload rejected them and an older snapshot is serving",
        )
        .unwrap();
        config_valid.set(1);
        let api_rejected = IntCounterVec::new(
            Opts::new(
                "meshd_discovery_objects_rejected_total",
                "Objects from the Kubernetes API left out of the configuration because they are invalid, by kind",
            ),
            &["kind"],
        )
        .unwrap();
        let retries =
            prometheus::IntCounter::new("meshd_http_retries_total", "Upstream request retries")
                .unwrap();
        let mirrors = IntCounterVec::new(
            Opts::new("meshd_http_mirror_total", "Mirrored request copies: sent, or dropped (bound reached, body too large, no endpoint); failed counts copies sent that got no answer (connect failure, reset, timeout)"),
            &["result"],
        )
        .unwrap();
        let outliers = IntCounterVec::new(
            Opts::new(
                "meshd_outlier_events_total",
                "Outlier detection: endpoints ejected and returned, per cluster",
            ),
            &["cluster", "event"],
        )
        .unwrap();
        let rate_limits = IntCounterVec::new(
            Opts::new(
                "meshd_ratelimit_total",
                "Rate-limit decisions: limited and redis_error per policy, allowed overall",
            ),
            &["policy", "result"],
        )
        .unwrap();
        let overflows = IntCounterVec::new(
            Opts::new(
                "meshd_overflow_total",
                "Requests and connections shed with flag UO, by scope (cluster or source workload), \
                 name and the limit reached",
            ),
            &["scope", "name", "limit"],
        )
        .unwrap();
        let tunnel = IntCounterVec::new(
            Opts::new(
                "meshd_tunnel_events_total",
                "mTLS tunnel events: handshake_ok, handshake_failed (inbound), stream_opened, \
                 stream_refused (not a local workload), denied (AuthorizationPolicy), \
                 bad_request",
            ),
            &["event"],
        )
        .unwrap();
        let dry_run = IntCounterVec::new(
            Opts::new(
                "meshd_authorization_dry_run_total",
                "Connections and requests evaluated by AuthorizationPolicies annotated \
                 istio.io/dry-run, by action (ALLOW, DENY) and what they would have done \
                 (allowed, denied); nothing is enforced",
            ),
            &["action", "result"],
        )
        .unwrap();
        let audit = IntCounterVec::new(
            Opts::new(
                "meshd_authorization_audit_total",
                "Connections and requests that an AUDIT AuthorizationPolicy matched, by policy \
                 (namespace/name); AUDIT decides nothing",
            ),
            &["policy"],
        )
        .unwrap();
        let config_generation = IntGauge::new(
            "meshd_config_generation",
            "Generation of the active configuration snapshot",
        )
        .unwrap();
        let ebpf_events = IntCounterVec::new(
            Opts::new(
                "meshd_ebpf_events_total",
                "Datapath events counted in the kernel: redirect, excluded, fail_open, fail_closed, \
                 sockmap_redirect, sockmap_miss, orig_dst_hit, orig_dst_miss, sockmap_splice, \
                 sockmap_reply_splice",
            ),
            &["event"],
        )
        .unwrap();
        for c in [
            &connections_active,
            &workloads,
            &config_generation,
            &config_valid,
        ] {
            registry.register(Box::new(c.clone())).unwrap();
        }
        registry.register(Box::new(retries.clone())).unwrap();
        for c in [
            &connections_total,
            &bytes_total,
            &zero_copy_total,
            &config_reloads,
            &api_rejected,
            &mirrors,
            &outliers,
            &rate_limits,
            &overflows,
            &tunnel,
            &dry_run,
            &audit,
            &ebpf_events,
        ] {
            registry.register(Box::new(c.clone())).unwrap();
        }
        let istio = crate::telemetry::IstioMetrics::reporting(&registry, istio, tcp_every);
        let routes = crate::telemetry::route_stats::RouteStats::new(&registry);
        Arc::new(Metrics {
            istio,
            routes,
            registry,
            connections_active,
            connections_total,
            bytes_total,
            zero_copy_total,
            workloads,
            config_reloads,
            config_valid,
            api_rejected,
            retries,
            mirrors,
            outliers,
            rate_limits,
            overflows,
            tunnel,
            dry_run,
            audit,
            config_generation,
            ebpf_events,
            ebpf_seen: Mutex::new(vec![0; proxy_common::Counter::COUNT as usize]),
            certs: std::sync::OnceLock::new(),
        })
    }

    /// Exports the expiry of `manager`'s certificates from now on.
    pub fn watch_certificates(&self, manager: crate::identity::CertManager) {
        let _ = self.certs.set(manager);
    }

    pub fn connection_open(&self) -> ActiveGuard {
        self.connections_active.inc();
        ActiveGuard(self.connections_active.clone())
    }

    pub fn connection_done(&self, result: &str) {
        self.connections_total.with_label_values(&[result]).inc();
    }

    pub fn config_reload(&self, result: &str) {
        self.config_reloads.with_label_values(&[result]).inc();
        self.config_valid.set(i64::from(result != "failure"));
    }

    pub fn api_object_rejected(&self, kind: &str) {
        self.api_rejected.with_label_values(&[kind]).inc();
    }

    pub fn retries(&self, n: u64) {
        self.retries.inc_by(n);
    }

    pub fn mirror(&self, result: &str) {
        self.mirrors.with_label_values(&[result]).inc();
    }

    /// An outlier-detection event of the cluster keyed `cluster`, labelled with Istio's name
    /// for it, as the access log and the pool gauges name it.
    pub fn outlier(&self, cluster: &str, event: &str) {
        let name = crate::telemetry::access_log::istio_cluster_name(cluster);
        self.outliers.with_label_values(&[&name, event]).inc();
    }

    pub fn rate_limit(&self, policy: &str, result: &str) {
        self.rate_limits.with_label_values(&[policy, result]).inc();
    }

    /// A request or connection shed by a limit (flag UO).
    /// A request or connection a `limit` shed; a cluster's (`scope` "cluster") is named as
    /// Istio names it, as the access log does.
    pub fn overflow(&self, scope: &str, name: &str, limit: &str) {
        let name = match scope {
            "cluster" => {
                std::borrow::Cow::Owned(crate::telemetry::access_log::istio_cluster_name(name))
            }
            _ => std::borrow::Cow::Borrowed(name),
        };
        self.overflows
            .with_label_values(&[scope, &name, limit])
            .inc();
    }

    pub fn tunnel(&self, event: &str) {
        self.tunnel.with_label_values(&[event]).inc();
    }

    /// What a workload's dry-run AuthorizationPolicies of one action would have decided.
    pub fn authorization_dry_run(&self, d: &crate::security::authz::DryRun) {
        let result = if d.allowed { "allowed" } else { "denied" };
        self.dry_run
            .with_label_values(&[d.action.as_str(), result])
            .inc();
    }

    /// A connection or request that the AUDIT policy `policy` matched.
    pub fn authorization_audit(&self, policy: &str) {
        self.audit.with_label_values(&[policy]).inc();
    }

    pub fn config_applied(&self, generation: u64) {
        self.config_generation.set(generation as i64);
    }

    /// The part of `bytes` moved with splice(2).
    pub fn zero_copy_bytes(&self, from_workload: u64, to_workload: u64) {
        by_direction(&self.zero_copy_total, from_workload, to_workload);
    }

    pub fn bytes(&self, from_workload: u64, to_workload: u64) {
        by_direction(&self.bytes_total, from_workload, to_workload);
    }

    /// Brings the eBPF counters up to date and renders the text exposition format.
    pub fn render(&self, maps: &DatapathMaps) -> String {
        {
            let mut seen = self.ebpf_seen.lock().expect("metrics lock");
            for (i, (counter, value)) in maps.counters().into_iter().enumerate() {
                let c = self.ebpf_events.with_label_values(&[counter.name()]);
                c.inc_by(value.saturating_sub(seen[i]));
                seen[i] = seen[i].max(value);
            }
        }
        let mut text = crate::telemetry::exposition::encode(&self.registry, &self.istio);
        policy_counters(&maps.policy().counters(), &mut text);
        if let Some(m) = self.certs.get() {
            crate::telemetry::certs::render(m, &mut text);
        }
        text
    }
}

/// The kernel's policy enforcement counters, absolute values read at scrape time.
fn policy_counters(values: &[(proxy_common::PolicyCounter, u64)], out: &mut String) {
    use proxy_common::PolicyCounter;
    use std::fmt::Write;
    for (c, v) in values {
        let (name, help) = match c {
            PolicyCounter::PeerAuthRefused => (
                "meshd_peer_authentication_refused_total",
                "Plaintext connections to a STRICT workload port refused in the kernel (SYN dropped)",
            ),
            PolicyCounter::ConnectDenied => (
                "meshd_authorization_connect_denied_total",
                "Connects refused with EPERM in the kernel by an identity-only AuthorizationPolicy DENY",
            ),
        };
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"
        );
    }
}
