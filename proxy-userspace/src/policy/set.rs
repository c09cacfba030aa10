//! The loaded policies: every typed resource, with where it came from.

use std::sync::Arc;

use serde::Serialize;

use super::{
    convert,
    finding::Finding,
    kinds::Kind,
    model::{
        AuthorizationPolicy, DestinationRule, Located, Origin, PeerAuthentication, RateLimitPolicy,
        ServiceEntry, VirtualService, WorkloadEntry,
    },
    node::Node,
};

/// Every resource of a load, in file order, plus the warnings found while validating them.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicySet {
    pub virtual_services: Vec<Located<VirtualService>>,
    pub destination_rules: Vec<Located<DestinationRule>>,
    pub service_entries: Vec<Located<ServiceEntry>>,
    pub workload_entries: Vec<Located<WorkloadEntry>>,
    pub peer_authentications: Vec<Located<PeerAuthentication>>,
    pub authorization_policies: Vec<Located<AuthorizationPolicy>>,
    pub rate_limit_policies: Vec<Located<RateLimitPolicy>>,
    /// Validation warnings (deprecated or ignored fields, ...); never errors.
    #[serde(skip)]
    pub warnings: Vec<Finding>,
    /// How many files were read.
    pub files: usize,
}

impl PolicySet {
    /// Drops every resource's YAML tree (see `Located::forget_tree`); positions of later
    /// findings fall back to the resource's start.
    pub fn forget_trees(&mut self) {
        fn each<T>(v: &mut [Located<T>]) {
            v.iter_mut().for_each(Located::forget_tree);
        }
        each(&mut self.virtual_services);
        each(&mut self.destination_rules);
        each(&mut self.service_entries);
        each(&mut self.workload_entries);
        each(&mut self.peer_authentications);
        each(&mut self.authorization_policies);
        each(&mut self.rate_limit_policies);
    }

    /// How many resources the set holds.
    pub fn len(&self) -> usize {
        self.virtual_services.len()
            + self.destination_rules.len()
            + self.service_entries.len()
            + self.workload_entries.len()
            + self.peer_authentications.len()
            + self.authorization_policies.len()
            + self.rate_limit_policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where an already loaded resource of this kind, namespace and name was defined.
    pub fn find(&self, kind: Kind, namespace: &str, name: &str) -> Option<String> {
        fn look<S>(
            v: &[Located<super::model::Resource<S>>],
            ns: &str,
            name: &str,
        ) -> Option<String> {
            v.iter()
                .find(|r| r.metadata.namespace == ns && r.metadata.name == name)
                .map(Located::at)
        }
        match kind {
            Kind::VirtualService => look(&self.virtual_services, namespace, name),
            Kind::DestinationRule => look(&self.destination_rules, namespace, name),
            Kind::ServiceEntry => look(&self.service_entries, namespace, name),
            Kind::WorkloadEntry => look(&self.workload_entries, namespace, name),
            Kind::PeerAuthentication => look(&self.peer_authentications, namespace, name),
            Kind::AuthorizationPolicy => look(&self.authorization_policies, namespace, name),
            Kind::RateLimitPolicy => look(&self.rate_limit_policies, namespace, name),
        }
    }

    /// Deserializes a validated document of `kind` and adds it.
    pub(crate) fn insert(
        &mut self,
        kind: Kind,
        tree: Arc<Node>,
        origin: Origin,
    ) -> Result<(), String> {
        fn typed<T: serde::de::DeserializeOwned>(
            tree: Arc<Node>,
            origin: Origin,
        ) -> Result<Located<T>, String> {
            let resource = convert::typed(&tree)?;
            Ok(Located::new(resource, origin, tree))
        }
        match kind {
            Kind::VirtualService => self.virtual_services.push(typed(tree, origin)?),
            Kind::DestinationRule => self.destination_rules.push(typed(tree, origin)?),
            Kind::ServiceEntry => self.service_entries.push(typed(tree, origin)?),
            Kind::WorkloadEntry => self.workload_entries.push(typed(tree, origin)?),
            Kind::PeerAuthentication => self.peer_authentications.push(typed(tree, origin)?),
            Kind::AuthorizationPolicy => self.authorization_policies.push(typed(tree, origin)?),
            Kind::RateLimitPolicy => self.rate_limit_policies.push(typed(tree, origin)?),
        }
        Ok(())
    }
}
