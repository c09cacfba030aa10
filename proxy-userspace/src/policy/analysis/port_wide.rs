//! A ServiceEntry without `addresses` that declares a TCP port: as on Istio's sidecars, it takes
//! every connection to that port, to any address (`istioctl analyze`: IST0134). Warned of, since
//! it reaches further than the entry's hosts, and so is an older entry's claim on the same port.

use std::collections::HashMap;

use crate::policy::{
    age,
    finding::{Finding, Severity},
    model::{Located, ServiceEntry},
    set::PolicySet,
};

pub(super) fn check(set: &PolicySet, out: &mut Vec<Finding>) {
    let mut taken: HashMap<u16, &Located<ServiceEntry>> = HashMap::new();
    for (se, i, port, host) in set.port_wide_claims() {
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
