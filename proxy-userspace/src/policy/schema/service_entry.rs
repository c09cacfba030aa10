//! The shape of ServiceEntry and WorkloadEntry specs: how a node without Kubernetes learns its
//! services and workloads.

use std::collections::HashSet;

use super::common::{LABELS, STRINGS, non_empty_list};
use crate::policy::{
    finding::Pos,
    node::{Node, quote},
    report::{self, Report},
    rules,
    schema::{NOTE_EVERY_NAMESPACE, Obj, PORT, STR, Ty, int, obj, opt, req, warned},
};

/// Protocols Istio names on ports (matched without regard to case, as Istio does).
pub const PROTOCOLS: &[&str] = &[
    "HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "MONGO", "MYSQL", "REDIS", "TCP", "TLS", "UDP",
];

fn protocol(s: &str) -> Result<(), String> {
    if PROTOCOLS.iter().any(|p| p.eq_ignore_ascii_case(s)) {
        return Ok(());
    }
    Err(format!(
        "{} is not a protocol: use one of {}",
        quote(s),
        PROTOCOLS.join(", ")
    ))
}

static SERVICE_PORT: Obj = obj(&[
    req("number", PORT),
    opt("protocol", Ty::Str(protocol)),
    // A DNS-1123 label, as Istio's `ValidatePortName` wants it.
    req("name", Ty::Str(rules::dns_label)),
    opt("targetPort", PORT),
]);

/// A WorkloadEntry spec, also used for ServiceEntry endpoints.
pub static WORKLOAD: Obj = obj(&[
    req("address", Ty::Str(rules::address)),
    opt("ports", Ty::Map(rules::non_empty, &PORT)),
    opt("labels", LABELS),
    warned(
        "network",
        STR,
        "meshd has one network: endpoints are reached directly or through the tunnel whatever their network",
    ),
    opt("locality", STR),
    opt("weight", int(0, i32::MAX as i64)),
    opt("serviceAccount", Ty::Str(rules::dns_subdomain)),
]);

static WORKLOAD_SELECTOR: Obj = obj(&[req("labels", LABELS)]);

pub static SPEC: Obj = Obj {
    fields: &[
        opt("hosts", Ty::List(&Ty::Str(rules::host))),
        opt("addresses", Ty::List(&Ty::Str(rules::ip_or_cidr))),
        opt("ports", Ty::List(&Ty::Obj(&SERVICE_PORT))),
        opt("location", Ty::Enum(&["MESH_EXTERNAL", "MESH_INTERNAL"])),
        opt(
            "resolution",
            Ty::Enum(&["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"]),
        ),
        opt("endpoints", Ty::List(&Ty::Obj(&WORKLOAD))),
        opt("workloadSelector", Ty::Obj(&WORKLOAD_SELECTOR)),
        warned("exportTo", STRINGS, NOTE_EVERY_NAMESPACE),
        warned(
            "subjectAltNames",
            STRINGS,
            "meshd does not check a server's certificate against the ServiceEntry's subjectAltNames; the tunnel checks the workload identity, and DestinationRule tls.subjectAltNames checks what meshd originates",
        ),
        opt("trafficDistribution", STR),
    ],
    one_of: &[&["endpoints", "workloadSelector"]],
    check: Some(check_spec),
};

fn check_spec(node: &Node, path: &str, at: Pos, r: &mut Report) {
    non_empty_list(node, "hosts", path, at, "host", r);
    check_as_istio(node, path, r);
    if let Some(e) = node.entry("trafficDistribution") {
        let key = report::key(path, "trafficDistribution");
        crate::policy::validate::traffic_distribution(&e.value, &key, r);
    }
    let resolution = node.get("resolution").and_then(Node::as_str);
    if matches!(resolution, Some("DNS" | "DNS_ROUND_ROBIN")) {
        let hosts = node.get("hosts").and_then(Node::items).unwrap_or_default();
        for (i, h) in hosts.iter().enumerate() {
            if h.as_str().is_some_and(|s| s.starts_with('*')) {
                r.error(
                    h.pos,
                    &report::index(&report::key(path, "hosts"), i),
                    "a wildcard host cannot be resolved with DNS resolution",
                );
            }
        }
    }
    let ports = node.get("ports").and_then(Node::items).unwrap_or_default();
    let mut numbers = HashSet::new();
    let mut names = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let number = p.get("number").and_then(Node::as_i64);
        let name = p.get("name").and_then(Node::as_str);
        if let (Some(n), Some(name)) = (number, name) {
            let p_path = report::index(&report::key(path, "ports"), i);
            if !numbers.insert(n) {
                r.error(p.pos, &p_path, format!("port {n} is declared twice"));
            } else if !names.insert(name) {
                r.error(p.pos, &p_path, format!("port name {name:?} is used twice"));
            }
        }
    }
    let endpoints = node
        .get("endpoints")
        .and_then(Node::items)
        .unwrap_or_default();
    let by_name = matches!(resolution, Some("DNS" | "DNS_ROUND_ROBIN"));
    for (i, e) in endpoints.iter().enumerate() {
        let Some((address, a)) = e.get("address").and_then(|n| Some((n, n.as_str()?))) else {
            continue;
        };
        let at = report::key(
            &report::index(&report::key(path, "endpoints"), i),
            "address",
        );
        if a.starts_with("unix:") {
            // Istio takes them; meshd's pools dial TCP only, so say so rather than answer 503.
            r.warn(
                address.pos,
                &at,
                "meshd reaches endpoints over TCP only: a Unix domain socket endpoint is never dialled, and a service with no other endpoint has no healthy upstream (503 UH)",
            );
        } else if !by_name && a.parse::<std::net::IpAddr>().is_err() {
            r.warn(
                address.pos,
                &at,
                "a name is resolved only with resolution DNS or DNS_ROUND_ROBIN; this endpoint is never dialled",
            );
        }
    }
}

pub static WORKLOAD_ENTRY_SPEC: &Obj = &WORKLOAD;

/// What else Istio's `ValidateServiceEntry` refuses: `*` as a host; endpoints with resolution
/// NONE; more than one with DNS_ROUND_ROBIN; CIDR addresses with DNS resolution; several hosts
/// on a plain TCP port (nothing tells them apart) unless resolution is NONE; and an endpoint
/// port whose name the entry does not declare (its traffic would go to the service port).
fn check_as_istio(node: &Node, path: &str, r: &mut Report) {
    let items = |key: &str| node.get(key).and_then(Node::items).unwrap_or_default();
    let written = node.get("resolution").and_then(Node::as_str);
    let resolution = written.unwrap_or("NONE");
    let (hosts, endpoints, ports) = (items("hosts"), items("endpoints"), items("ports"));
    for (i, h) in hosts.iter().enumerate() {
        if h.as_str() == Some("*") {
            let at = report::index(&report::key(path, "hosts"), i);
            r.error(h.pos, &at, "\"*\" is not a host (Istio refuses it): name the hosts, or a domain such as \"*.example.com\"");
        }
    }
    let endpoints_at = report::key(path, "endpoints");
    match (written, endpoints.first()) {
        (Some("NONE"), Some(first)) => r.error(
            first.pos,
            &endpoints_at,
            "resolution NONE takes no endpoints (Istio refuses them): use STATIC to send to these endpoints",
        ),
        (None, Some(first)) => r.warn(
            first.pos,
            &endpoints_at,
            "without resolution (NONE by default) Istio refuses endpoints; meshd sends to them as with STATIC: write resolution: STATIC",
        ),
        (Some("DNS_ROUND_ROBIN"), Some(_)) if endpoints.len() > 1 => r.error(
            endpoints[1].pos,
            &endpoints_at,
            "resolution DNS_ROUND_ROBIN takes at most one endpoint (Istio refuses more)",
        ),
        _ => {}
    }
    if matches!(resolution, "DNS" | "DNS_ROUND_ROBIN") {
        for (i, a) in items("addresses").iter().enumerate() {
            if a.as_str().is_some_and(|a| a.contains('/')) {
                let at = report::index(&report::key(path, "addresses"), i);
                r.error(
                    a.pos,
                    &at,
                    "a CIDR address needs resolution NONE or STATIC (Istio refuses it with DNS)",
                );
            }
        }
    }
    // A port declared as plain TCP (one without a protocol may be named for one).
    let plain_tcp = ports.iter().find(|p| {
        p.get("protocol")
            .and_then(Node::as_str)
            .is_some_and(|protocol| {
                !["HTTP", "HTTP2", "GRPC", "GRPC-WEB", "HTTPS", "TLS"]
                    .iter()
                    .any(|h| h.eq_ignore_ascii_case(protocol))
            })
    });
    if let Some(p) = plain_tcp
        && hosts.len() > 1
        && resolution != "NONE"
    {
        r.error(
            p.pos,
            &report::key(path, "ports"),
            "several hosts on a port that is neither HTTP nor TLS cannot be told apart (Istio refuses it unless resolution is NONE): give each host its own ServiceEntry",
        );
    }
    let names: HashSet<&str> = ports
        .iter()
        .filter_map(|p| p.get("name").and_then(Node::as_str))
        .collect();
    for (i, e) in endpoints.iter().enumerate() {
        let Some(entries) = e.get("ports").and_then(Node::entries) else {
            continue;
        };
        for entry in entries {
            if !names.contains(entry.key.as_str()) {
                let at = report::key(
                    &report::key(&report::index(&endpoints_at, i), "ports"),
                    &entry.key,
                );
                let mut declared: Vec<&str> = names.iter().copied().collect();
                declared.sort_unstable();
                r.error(
                    entry.key_pos,
                    &at,
                    format!(
                        "{} is not the name of one of the ServiceEntry's ports ({}), as Istio requires",
                        quote(&entry.key),
                        declared.join(", ")
                    ),
                );
            }
        }
    }
}
