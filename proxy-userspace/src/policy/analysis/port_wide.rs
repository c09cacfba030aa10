//! A ServiceEntry without `addresses` that declares a TCP port: as on Istio's sidecars, it takes
//! every connection to that port, to any address (`istioctl analyze`: IST0134). Warned of, since
//! it reaches further than the entry's hosts, and so is an older entry's claim on the same port.

use std::collections::HashMap;

use crate::policy::{
    age,
    finding::{Finding, Severity},
    hosts,
    model::{Located, ServiceEntry},
    set::PolicySet,
};

pub(super) fn check(set: &PolicySet, out: &mut Vec<Finding>) {
    let mut taken: HashMap<u16, &Located<ServiceEntry>> = HashMap::new();
    let entries = age::oldest_first(&set.service_entries);
    for se in entries.into_iter().filter(|se| {
        se.spec.addresses.is_empty() && !crate::config::documents::is_service(&se.origin.file)
    }) {
        let Some(host) = se.spec.hosts.first() else {
            continue;
        };
        let host = hosts::fqdn(host, &se.metadata.namespace);
        for (i, port) in se.spec.ports.iter().enumerate() {
            if !port.is_opaque_tcp() {
                continue;
            }
            let n = port.number;
            let first = *taken.entry(n).or_insert(se);
            let message = if std::ptr::eq(first, se) {
                format!(
                    "port {n} is TCP and the ServiceEntry has no addresses: as on Istio's sidecars, every connection to port {n}, whatever address it dials, goes to {host} (istioctl analyze: IST0134); set addresses to keep it to the service's own"
                )
            } else {
                format!(
                    "port {n} is TCP and the ServiceEntry has no addresses, but ServiceEntry {} ({}) already takes every connection to port {n}, as Istio would ({}); this one gets none of them: set addresses on one of them",
                    first.id(),
                    first.at(),
                    age::why_first(&first.metadata, &se.metadata),
                )
            };
            out.push(se.finding(Severity::Warning, &format!("spec.ports[{i}]"), message));
        }
    }
}
