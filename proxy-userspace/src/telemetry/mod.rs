//! Telemetry beyond meshd's own counters: Istio's standard metrics (so existing dashboards
//! work) and one JSON access-log line per request and per L4 connection.

pub mod access_log;
pub mod certs;
pub mod exposition;
pub mod istio;
pub mod logging;
pub mod peers;
pub mod route_stats;
pub mod series;
pub mod tcp_report;
pub mod trace;

pub use access_log::{AccessLog, Entry};
pub use istio::{IstioMetrics, RequestLabels, TcpLabels};
