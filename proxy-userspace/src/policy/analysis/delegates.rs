//! VirtualService delegation that cannot work: a `delegate` naming no VirtualService without
//! hosts, a delegate's route that delegates again (one level only), and a VirtualService
//! without hosts that no root delegates to, which routes nothing.

use crate::policy::{
    delegate,
    finding::{Finding, Severity},
    set::PolicySet,
};

pub(super) fn check(set: &PolicySet, out: &mut Vec<Finding>) {
    let mut used = Vec::new();
    for vs in &set.virtual_services {
        for (i, r) in vs.spec.http.iter().enumerate() {
            let Some(d) = &r.delegate else { continue };
            let path = format!("spec.http[{i}].delegate");
            let ns = d.namespace.as_deref().unwrap_or(&vs.metadata.namespace);
            if vs.spec.hosts.is_empty() {
                let msg =
                    "a delegate's route cannot delegate again (one level only); it is dropped";
                out.push(vs.finding(Severity::Warning, &path, msg));
                continue;
            }
            match delegate::find(set, &d.name, ns) {
                Some(found) => used.push(found.id()),
                None => out.push(vs.finding(
                    Severity::Warning,
                    &path,
                    format!(
                        "no VirtualService {ns}/{} without hosts to delegate to; this route is dropped",
                        d.name
                    ),
                )),
            }
        }
    }
    for vs in set
        .virtual_services
        .iter()
        .filter(|v| v.spec.hosts.is_empty())
    {
        if !used.contains(&vs.id()) {
            let msg = "a VirtualService without hosts applies only through a root's delegate, and none names this one";
            out.push(vs.finding(Severity::Warning, "spec", msg));
        }
    }
}
