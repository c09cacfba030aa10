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
    req("name", Ty::Str(rules::non_empty)),
    opt("targetPort", PORT),
]);

/// A WorkloadEntry spec, also used for ServiceEntry endpoints.
pub static WORKLOAD: Obj = obj(&[
    req("address", Ty::Str(rules::address)),
    opt("ports", Ty::Map(rules::non_empty, &PORT)),
    opt("labels", LABELS),
    opt("network", STR),
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
        opt("subjectAltNames", STRINGS),
        opt("trafficDistribution", STR),
    ],
    one_of: &[&["endpoints", "workloadSelector"]],
    check: Some(check_spec),
};

fn check_spec(node: &Node, path: &str, at: Pos, r: &mut Report) {
    non_empty_list(node, "hosts", path, at, "host", r);
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
    if !matches!(resolution, Some("DNS" | "DNS_ROUND_ROBIN")) {
        let endpoints = node
            .get("endpoints")
            .and_then(Node::items)
            .unwrap_or_default();
        for (i, e) in endpoints.iter().enumerate() {
            let Some(address) = e.get("address") else {
                continue;
            };
            if address
                .as_str()
                .is_some_and(|a| a.parse::<std::net::IpAddr>().is_err() && !a.starts_with("unix:"))
            {
                r.warn(
                    address.pos,
                    &report::key(&report::index(&report::key(path, "endpoints"), i), "address"),
                    "a name is resolved only with resolution DNS or DNS_ROUND_ROBIN; this endpoint is never dialled",
                );
            }
        }
    }
}

pub static WORKLOAD_ENTRY_SPEC: &Obj = &WORKLOAD;
