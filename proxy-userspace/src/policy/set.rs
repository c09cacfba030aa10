//! The loaded policies: every typed resource, with where it came from.

use std::sync::Arc;

use serde::Serialize;

use super::{
    convert,
    finding::Finding,
    kinds::Kind,
    model::{
        AuthorizationPolicy, DestinationRule, Located, Origin, PeerAuthentication, RateLimitPolicy,
        ServiceEntry, ServicePort, VirtualService, WorkloadEntry,
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

    /// The TCP ports that ServiceEntries without `addresses` declare, each a claim on every
    /// connection to the port, as on Istio's sidecars (the oldest entry's claim is the one that
    /// holds). A Kubernetes Service without a cluster IP (headless) makes none: as in Istio, it
    /// is reached at its endpoints' addresses. Each claim: the entry, oldest first, the port's
    /// index in it, the port, and the entry's first host.
    pub fn port_wide_claims(
        &self,
    ) -> impl Iterator<Item = (&Located<ServiceEntry>, usize, &ServicePort, String)> + '_ {
        let scoped = |se: &Located<ServiceEntry>| {
            !se.spec.addresses.is_empty() || crate::config::documents::is_service(&se.origin.file)
        };
        (super::age::oldest_first(&self.service_entries).into_iter())
            .filter(move |se| !scoped(se))
            .filter_map(|se| {
                let host = se.spec.hosts.first()?;
                Some((se, super::hosts::fqdn(host, &se.metadata.namespace)))
            })
            .flat_map(|(se, host)| {
                (se.spec.ports.iter().enumerate())
                    .filter(|(_, p)| p.is_opaque_tcp())
                    .map(move |(i, p)| (se, i, p, host.clone()))
            })
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

    /// Moves `other`'s resources into this set. A resource whose kind, namespace and name this
    /// set already holds stays out: the one already here wins. Returns each such conflict as
    /// (kind, `namespace/name`, where the kept one is, where the dropped one is).
    pub fn absorb(&mut self, other: PolicySet) -> Vec<(Kind, String, String, String)> {
        fn each<S>(
            kind: Kind,
            to: &mut Vec<Located<super::model::Resource<S>>>,
            from: Vec<Located<super::model::Resource<S>>>,
            conflicts: &mut Vec<(Kind, String, String, String)>,
        ) {
            for r in from {
                let (ns, name) = (&r.metadata.namespace, &r.metadata.name);
                match to
                    .iter()
                    .find(|k| &k.metadata.namespace == ns && &k.metadata.name == name)
                {
                    Some(kept) => conflicts.push((kind, format!("{ns}/{name}"), kept.at(), r.at())),
                    None => to.push(r),
                }
            }
        }
        let mut c = Vec::new();
        each(
            Kind::VirtualService,
            &mut self.virtual_services,
            other.virtual_services,
            &mut c,
        );
        each(
            Kind::DestinationRule,
            &mut self.destination_rules,
            other.destination_rules,
            &mut c,
        );
        each(
            Kind::ServiceEntry,
            &mut self.service_entries,
            other.service_entries,
            &mut c,
        );
        each(
            Kind::WorkloadEntry,
            &mut self.workload_entries,
            other.workload_entries,
            &mut c,
        );
        each(
            Kind::PeerAuthentication,
            &mut self.peer_authentications,
            other.peer_authentications,
            &mut c,
        );
        each(
            Kind::AuthorizationPolicy,
            &mut self.authorization_policies,
            other.authorization_policies,
            &mut c,
        );
        each(
            Kind::RateLimitPolicy,
            &mut self.rate_limit_policies,
            other.rate_limit_policies,
            &mut c,
        );
        self.warnings.extend(other.warnings);
        self.files += other.files;
        c
    }

    /// Drops every resource that came from `file`.
    pub fn remove_file(&mut self, file: &std::path::Path) {
        fn each<T>(v: &mut Vec<Located<T>>, file: &std::path::Path) {
            v.retain(|r| r.origin.file != file);
        }
        each(&mut self.virtual_services, file);
        each(&mut self.destination_rules, file);
        each(&mut self.service_entries, file);
        each(&mut self.workload_entries, file);
        each(&mut self.peer_authentications, file);
        each(&mut self.authorization_policies, file);
        each(&mut self.rate_limit_policies, file);
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
