//! Istio's security resources evaluated for inbound traffic: which AuthorizationPolicies allow
//! or deny a connection or request, and which mTLS mode PeerAuthentications require.
//!
//! Everything here is pure: policies are compiled once per configuration into an
//! [`authz::Authorizer`] and an [`peer_auth::MtlsPolicies`], which answer questions about one
//! workload (its namespace and labels) without I/O.

use std::collections::BTreeMap;

pub mod authz;
mod error;
pub mod kernel;
pub mod peer_auth;
pub mod spiffe;

pub use authz::{Authorizer, Decision, HeaderLookup, HttpAttrs, RequestContext};
pub use error::SecurityError;
pub use peer_auth::{EffectiveMtls, MtlsMode, MtlsPolicies};

/// Istio's default root namespace: policies there without a selector apply to the whole mesh.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// The workload a policy decision is about: the destination of an inbound connection.
#[derive(Clone, Copy, Debug)]
pub struct Workload<'a> {
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// The labels of a `selector`, `None` when the policy has no selector or an empty one (both
/// select every workload of the policy's scope, as in Istio).
fn selector_labels(
    selector: &Option<crate::policy::model::LabelSelector>,
) -> Option<&BTreeMap<String, String>> {
    selector
        .as_ref()
        .map(|s| &s.match_labels)
        .filter(|l| !l.is_empty())
}
