//! PeerAuthentication resolution: the mTLS mode a workload requires on a port.
//!
//! Istio's precedence, most specific first:
//! 1. the workload policy: a policy with a non-empty `selector` in the workload's namespace
//!    whose labels the workload carries; its `portLevelMtls` entry for the port, if any, comes
//!    first (port-level settings are only read from such policies, as in Istio);
//! 2. the namespace policy: a policy without selector in the workload's namespace;
//! 3. the mesh policy: a policy without selector in the root namespace;
//! 4. PERMISSIVE.
//!
//! A level whose mode is UNSET (or absent) inherits from the next one; an UNSET port entry
//! inherits the workload policy's resolved mode. Root-namespace policies with a selector are
//! ignored, as in Istio (PeerAuthentication has no mesh-wide selector policies).
//!
//! When several policies compete at one level, Istio picks the oldest. meshd has no creation
//! time, so it picks the policy whose name sorts first (byte order); `meshd analyze` is the
//! place to warn about such conflicts.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::{SecurityError, Workload, selector_labels};
use crate::policy::{
    PolicySet,
    model::{Mtls, PeerAuthentication, labels_match},
};

#[cfg(test)]
mod tests;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    /// Only mTLS connections are accepted.
    Strict,
    /// mTLS and plaintext are accepted.
    Permissive,
    /// Connections are plaintext.
    Disable,
}

/// The mode for one workload port, and the `namespace/name` of the policy that set it
/// (`None`: no policy did, the default PERMISSIVE applies).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EffectiveMtls {
    pub mode: MtlsMode,
    pub policy: Option<String>,
}

#[derive(Clone, Debug)]
struct Compiled {
    /// Its metadata: of competing policies, the oldest applies, as in Istio
    /// ([`crate::policy::model::Metadata::age_order`]).
    metadata: crate::policy::model::Metadata,
    id: String,
    /// `None`: UNSET.
    mode: Option<MtlsMode>,
    ports: BTreeMap<u16, Option<MtlsMode>>,
    selector: Option<BTreeMap<String, String>>,
}

impl Compiled {
    /// Applies this level's mode, if set, over the inherited one.
    fn over(&self, parent: EffectiveMtls) -> EffectiveMtls {
        set(parent, self.mode, &self.id)
    }
}

fn set(parent: EffectiveMtls, mode: Option<MtlsMode>, id: &str) -> EffectiveMtls {
    match mode {
        Some(mode) => EffectiveMtls {
            mode,
            policy: Some(id.to_string()),
        },
        None => parent,
    }
}

#[derive(Clone, Debug, Default)]
struct Namespace {
    /// The namespace-wide policy (or mesh-wide, in the root namespace).
    wide: Option<Compiled>,
    /// Selector policies, by name.
    selected: Vec<Compiled>,
}

/// Every PeerAuthentication, indexed by namespace and level.
#[derive(Clone, Debug, Default)]
pub struct MtlsPolicies {
    mesh: Option<Compiled>,
    namespaces: HashMap<String, Namespace>,
}

fn mode(
    id: &str,
    field: &str,
    m: Option<&Mtls>,
    errors: &mut Vec<SecurityError>,
) -> Option<MtlsMode> {
    match m?.mode.as_deref()? {
        "STRICT" => Some(MtlsMode::Strict),
        "PERMISSIVE" => Some(MtlsMode::Permissive),
        "DISABLE" => Some(MtlsMode::Disable),
        "UNSET" => None,
        other => {
            errors.push(SecurityError::UnknownMtlsMode {
                policy: id.to_string(),
                field: field.to_string(),
                mode: other.to_string(),
            });
            None
        }
    }
}

/// Keeps the oldest policy (by creation time, then name, as Istio orders them).
fn keep_first(slot: &mut Option<Compiled>, c: Compiled) {
    if slot
        .as_ref()
        .is_none_or(|s| c.metadata.age_order(&s.metadata).is_lt())
    {
        *slot = Some(c);
    }
}

impl MtlsPolicies {
    pub fn compile<'p>(
        policies: impl IntoIterator<Item = &'p PeerAuthentication>,
        root_namespace: &str,
    ) -> (MtlsPolicies, Vec<SecurityError>) {
        let mut errors = Vec::new();
        let mut out = MtlsPolicies::default();
        for p in policies {
            let id = p.id();
            let ports = (p.spec.port_level_mtls.iter())
                .map(|(port, m)| {
                    let field = format!("portLevelMtls[{port}]");
                    (*port, mode(&id, &field, Some(m), &mut errors))
                })
                .collect();
            let c = Compiled {
                metadata: p.metadata.clone(),
                mode: mode(&id, "mtls", p.spec.mtls.as_ref(), &mut errors),
                ports,
                selector: selector_labels(&p.spec.selector).cloned(),
                id,
            };
            let ns = &p.metadata.namespace;
            match (ns == root_namespace, c.selector.is_some()) {
                (true, false) => keep_first(&mut out.mesh, c),
                (true, true) => {} // not applied by Istio either
                (false, false) => {
                    keep_first(&mut out.namespaces.entry(ns.clone()).or_default().wide, c)
                }
                (false, true) => out
                    .namespaces
                    .entry(ns.clone())
                    .or_default()
                    .selected
                    .push(c),
            }
        }
        for ns in out.namespaces.values_mut() {
            ns.selected
                .sort_by(|a, b| a.metadata.age_order(&b.metadata));
        }
        (out, errors)
    }

    /// [`MtlsPolicies::compile`] over a loaded policy set.
    pub fn from_set(set: &PolicySet, root_namespace: &str) -> (MtlsPolicies, Vec<SecurityError>) {
        let policies = set.peer_authentications.iter().map(|p| &p.resource);
        MtlsPolicies::compile(policies, root_namespace)
    }

    /// The mode the workload requires for inbound connections to `port` (the workload's own
    /// port, as `portLevelMtls` keys are).
    pub fn resolve(&self, w: &Workload, port: u16) -> EffectiveMtls {
        let mut eff = EffectiveMtls {
            mode: MtlsMode::Permissive,
            policy: None,
        };
        if let Some(mesh) = &self.mesh {
            eff = mesh.over(eff);
        }
        let Some(ns) = self.namespaces.get(w.namespace) else {
            return eff;
        };
        if let Some(wide) = &ns.wide {
            eff = wide.over(eff);
        }
        let selected = ns.selected.iter().find(|c| {
            c.selector
                .as_ref()
                .is_some_and(|s| labels_match(s, w.labels))
        });
        if let Some(c) = selected {
            eff = c.over(eff);
            if let Some(port_mode) = c.ports.get(&port) {
                eff = set(eff, *port_mode, &c.id);
            }
        }
        eff
    }

    /// The ports the workload's own policy lists in `portLevelMtls`: the only ports whose mode
    /// can differ from [`MtlsPolicies::resolve`] on any other port.
    pub fn listed_ports(&self, w: &Workload) -> Vec<u16> {
        self.namespaces
            .get(w.namespace)
            .and_then(|ns| {
                ns.selected.iter().find(|c| {
                    c.selector
                        .as_ref()
                        .is_some_and(|s| labels_match(s, w.labels))
                })
            })
            .map(|c| c.ports.keys().copied().collect())
            .unwrap_or_default()
    }
}
