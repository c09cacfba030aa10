//! The daemon's effective settings, parsed once from the command line into immutable values.

use std::{net::IpAddr, net::SocketAddr, path::PathBuf, time::Duration};

use serde::Serialize;

use crate::cli::RunArgs;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// A dead or hung meshd is bypassed: workloads connect directly.
    Open,
    /// A dead or hung meshd blocks managed connects (connect() fails with EPERM).
    Closed,
}

#[derive(Clone, Debug, Serialize)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    pub config_paths: Vec<PathBuf>,
    pub admin: SocketAddr,
    pub outbound_port: u16,
    pub inbound_port: u16,
    /// None: `meshd` under the cgroup2 mount.
    pub cgroup: Option<PathBuf>,
    pub sockmap: bool,
    /// Kernel splice of opaque connections (only with `sockmap`).
    pub splice: bool,
    /// splice(2) relay of opaque connections (only without `sockmap`).
    pub zero_copy: bool,
    pub fail_mode: FailMode,
    #[serde(with = "millis")]
    pub heartbeat_timeout: Duration,
    pub exclude_ports: Vec<u16>,
    pub exclude_cidrs: Vec<Cidr>,
    #[serde(with = "millis")]
    pub drain_timeout: Duration,
    #[serde(with = "millis")]
    pub connect_timeout: Duration,
    #[serde(with = "millis")]
    pub protocol_detection_timeout: Duration,
    pub max_request_headers_bytes: usize,
    /// HTTP/1.0 requests are served (else answered 426, as Istio's default).
    pub accept_http10: bool,
    /// `--outbound-traffic-policy REGISTRY_ONLY`: destinations no ServiceEntry describes are
    /// blocked, not passed through.
    pub registry_only: bool,
    /// A client's HTTP connection with no request in flight this long is closed; zero: never.
    #[serde(with = "millis")]
    pub http_idle_timeout: Duration,
    #[serde(with = "millis")]
    pub redis_timeout: Duration,
    pub istio_metrics: bool,
    /// How often an open TCP connection's bytes go to Istio's metrics; zero: only at close.
    #[serde(with = "millis")]
    pub tcp_reporting_interval: Duration,
    pub access_log: String,
    pub access_log_sample: f64,
    pub trace_zipkin: Option<String>,
    pub trace_otlp: Option<String>,
    pub trace_sample: f64,
    /// Per source workload: connections and requests in flight (0: unlimited).
    pub workload_max_connections: u32,
    pub workload_max_requests: u32,
    /// Threads serving traffic; 0 is one per CPU.
    pub worker_threads: usize,
    /// The mTLS tunnel: this node's address, the trust domain, and where certificates come from.
    pub node_address: Option<std::net::IpAddr>,
    /// `region/zone/subzone` of this node, for locality-aware load balancing.
    pub locality: Option<String>,
    pub trust_domain: String,
    pub ca_dir: Option<PathBuf>,
    pub cert_dir: Option<PathBuf>,
    pub cert_lifetime: Duration,
    /// Kubernetes discovery (`--discovery kubernetes`); None: policy files only.
    pub discovery: Option<crate::discovery::KubeSettings>,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("--{flag} {value:?}: {reason}")]
    Invalid {
        flag: &'static str,
        value: String,
        reason: String,
    },
}

fn invalid(flag: &'static str, value: &str, reason: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        flag,
        value: value.to_string(),
        reason: reason.into(),
    }
}

impl Settings {
    /// Whether the kernel splices opaque connections: it needs the sockmap.
    pub fn kernel_splice(&self) -> bool {
        self.sockmap && self.splice
    }

    /// Whether the L4 relay may use splice(2): only for sockets outside the sockmap.
    pub fn zero_copy_relay(&self) -> bool {
        self.zero_copy && !self.sockmap
    }

    pub fn from_args(a: RunArgs) -> Result<Settings, SettingsError> {
        let heartbeat_timeout = parse_duration(&a.heartbeat_timeout)
            .map_err(|r| invalid("heartbeat-timeout", &a.heartbeat_timeout, r))?;
        if heartbeat_timeout < Duration::from_millis(100) {
            return Err(invalid(
                "heartbeat-timeout",
                &a.heartbeat_timeout,
                "must be at least 100ms",
            ));
        }
        let drain_timeout = parse_duration(&a.drain_timeout)
            .map_err(|r| invalid("drain-timeout", &a.drain_timeout, r))?;
        let connect_timeout = parse_duration(&a.connect_timeout)
            .map_err(|r| invalid("connect-timeout", &a.connect_timeout, r))?;
        let protocol_detection_timeout =
            parse_duration(&a.protocol_detection_timeout).map_err(|r| {
                invalid(
                    "protocol-detection-timeout",
                    &a.protocol_detection_timeout,
                    r,
                )
            })?;
        let http_idle_timeout = parse_duration(&a.http_idle_timeout)
            .map_err(|r| invalid("http-idle-timeout", &a.http_idle_timeout, r))?;
        for (flag, url) in [
            ("trace-zipkin", &a.trace_zipkin),
            ("trace-otlp", &a.trace_otlp),
        ] {
            if let Some(url) = url {
                crate::telemetry::trace::collector(url).map_err(|r| invalid(flag, url, r))?;
            }
        }
        let tcp_reporting_interval = parse_duration(&a.tcp_reporting_interval)
            .map_err(|r| invalid("tcp-reporting-interval", &a.tcp_reporting_interval, r))?;
        if !(1..=1024).contains(&a.max_request_headers_kb) {
            return Err(invalid(
                "max-request-headers-kb",
                &a.max_request_headers_kb.to_string(),
                "must be between 1 and 1024",
            ));
        }
        let exclude_cidrs = a
            .exclude_cidrs
            .iter()
            .map(|c| parse_cidr(c).map_err(|r| invalid("exclude-cidr", c, r)))
            .collect::<Result<Vec<_>, _>>()?;
        let ports = [a.outbound_port, a.inbound_port, a.admin.port()];
        if a.outbound_port == 0 || a.outbound_port == a.inbound_port {
            return Err(invalid(
                "outbound-port",
                &a.outbound_port.to_string(),
                "must be non-zero and differ from --inbound-port",
            ));
        }
        if ports[2] == a.outbound_port || ports[2] == a.inbound_port {
            return Err(invalid(
                "admin",
                &a.admin.to_string(),
                "port clashes with a proxy port",
            ));
        }
        Ok(Settings {
            config_paths: a.config,
            admin: a.admin,
            outbound_port: a.outbound_port,
            inbound_port: a.inbound_port,
            cgroup: a.cgroup,
            sockmap: a.sockmap,
            splice: a.splice,
            zero_copy: a.zero_copy,
            fail_mode: a.fail_mode,
            heartbeat_timeout,
            exclude_ports: a.exclude_ports,
            exclude_cidrs,
            drain_timeout,
            connect_timeout,
            protocol_detection_timeout,
            max_request_headers_bytes: a.max_request_headers_kb * 1024,
            accept_http10: a.accept_http10,
            registry_only: a.outbound_traffic_policy,
            http_idle_timeout,
            istio_metrics: a.istio_metrics,
            tcp_reporting_interval,
            access_log: a.access_log.clone(),
            trace_zipkin: a.trace_zipkin.clone(),
            trace_otlp: a.trace_otlp.clone(),
            trace_sample: if (0.0..=1.0).contains(&a.trace_sample) {
                a.trace_sample
            } else {
                return Err(invalid(
                    "trace-sample",
                    &a.trace_sample.to_string(),
                    "must be between 0 and 1",
                ));
            },
            access_log_sample: if (0.0..=1.0).contains(&a.access_log_sample) {
                a.access_log_sample
            } else {
                return Err(invalid(
                    "access-log-sample",
                    &a.access_log_sample.to_string(),
                    "must be between 0 and 1",
                ));
            },
            cert_lifetime: parse_duration(&a.cert_lifetime)
                .map_err(|r| invalid("cert-lifetime", &a.cert_lifetime, r))?,
            node_address: a.node_address,
            locality: a.locality.clone().filter(|l| !l.trim().is_empty()),
            trust_domain: a.trust_domain.clone(),
            ca_dir: a.ca_dir.clone(),
            cert_dir: a.cert_dir.clone(),
            workload_max_connections: a.workload_max_connections,
            workload_max_requests: a.workload_max_requests,
            worker_threads: a.worker_threads,
            redis_timeout: parse_duration(&a.redis_timeout)
                .map_err(|r| invalid("redis-timeout", &a.redis_timeout, r))?,
            discovery: a.kube.settings()?,
        })
    }

    /// Ports that belong to meshd itself and are never redirected.
    pub fn own_ports(&self) -> [u16; 3] {
        [self.outbound_port, self.inbound_port, self.admin.port()]
    }
}

/// The longest duration a flag takes (a year): longer ones would overflow the clock's
/// arithmetic, and no timeout needs them.
const MAX_FLAG_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses `250ms`, `2s`, `1m`, `1h` (a non-negative integer and a unit), up to a year.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| "expected a whole number followed by ms, s, m or h".to_string())?;
    let d = match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        _ => return Err(format!("unknown unit {unit:?}: use ms, s, m or h")),
    };
    d.filter(|d| *d <= MAX_FLAG_DURATION)
        .ok_or_else(|| format!("{s} is too long: at most 8760h (a year)"))
}

/// Parses `10.0.0.0/8`, `fd00::/8`, or a bare address (a /32 or /128).
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(p) => p
            .parse::<u8>()
            .map_err(|_| format!("{p:?} is not a prefix length"))?,
        None => max,
    };
    if prefix > max {
        return Err(format!("prefix /{prefix} is longer than {max} bits"));
    }
    Ok(Cidr { addr, prefix })
}

mod millis {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("2 seconds").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("5").is_err());
        // Too long for the clock: an error, never an overflow.
        assert_eq!(parse_duration("8760h"), Ok(MAX_FLAG_DURATION));
        assert!(parse_duration("8761h").is_err());
        assert!(parse_duration("9999999999999999h").is_err());
        assert!(parse_duration("18446744073709551615m").is_err());
    }

    #[test]
    fn cidrs() {
        let c = parse_cidr("10.0.0.0/8").unwrap();
        assert_eq!((c.addr.to_string(), c.prefix), ("10.0.0.0".into(), 8));
        assert_eq!(parse_cidr("::1").unwrap().prefix, 128);
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("nope/8").is_err());
    }
}
