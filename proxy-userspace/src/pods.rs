//! Workloads in their own network namespaces (pods): enrolling one records its cgroup and opens
//! meshd's outbound listener inside its namespace, so a connect that eBPF rewrites to
//! 127.0.0.1:15001 lands on meshd there; removing it closes them again.

pub mod netns;
mod nsid;

use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{net::TcpListener, task::JoinHandle};

use crate::{
    drain,
    metrics::Metrics,
    proxy::outbound::{self, Outbound},
    workloads::{Placement, Registry, Workload, WorkloadError, WorkloadName},
};

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    #[error("serving the listener in {netns}: {source}")]
    Serve {
        netns: String,
        source: std::io::Error,
    },
}

/// Enrols and removes workloads, with listeners in their network namespaces.
pub struct Pods {
    registry: Arc<Registry>,
    ctx: Arc<Outbound>,
    port: u16,
    drain: drain::Watch,
    deadline: Duration,
    metrics: Arc<Metrics>,
    serving: Mutex<HashMap<u32, Vec<JoinHandle<()>>>>,
}

impl Pods {
    pub fn new(
        registry: Arc<Registry>,
        ctx: Arc<Outbound>,
        port: u16,
        drain: drain::Watch,
        deadline: Duration,
        metrics: Arc<Metrics>,
    ) -> Pods {
        Pods {
            registry,
            ctx,
            port,
            drain,
            deadline,
            metrics,
            serving: Mutex::new(HashMap::new()),
        }
    }

    /// Enrols a workload; with a network namespace, meshd also listens inside it. Nothing is
    /// left behind when a step fails.
    pub fn enrol(&self, name: &WorkloadName, at: &Placement) -> Result<Workload, PodError> {
        let w = self.registry.enrol(name, at)?;
        let listening = match &w.netns {
            Some(ns) => self.listen(&w, ns).map(|tasks| {
                self.serving
                    .lock()
                    .expect("pod listeners lock")
                    .insert(w.id, tasks);
            }),
            None => Ok(()),
        };
        if let Err(e) = listening {
            let _ = self.registry.remove(w.id);
            return Err(e);
        }
        self.count();
        Ok(w)
    }

    /// `meshd_workloads_enrolled`, from the registry itself.
    fn count(&self) {
        self.metrics
            .workloads
            .set(self.registry.list().len() as i64);
    }

    fn listen(&self, w: &Workload, ns: &std::path::Path) -> Result<Vec<JoinHandle<()>>, PodError> {
        let addrs = [
            SocketAddr::from((Ipv4Addr::LOCALHOST, self.port)),
            SocketAddr::from((Ipv6Addr::LOCALHOST, self.port)),
        ];
        let listeners = netns::listen_in(ns, &addrs)?;
        let mut tasks = Vec::with_capacity(listeners.len());
        for l in listeners {
            let l = TcpListener::from_std(l).map_err(|source| PodError::Serve {
                netns: ns.display().to_string(),
                source,
            })?;
            tasks.push(tokio::spawn(outbound::serve_for(
                l,
                Some(w.id),
                self.ctx.clone(),
                self.drain.clone(),
                self.deadline,
            )));
        }
        tracing::info!(workload = %w.workload, netns = %ns.display(), port = self.port, "listening in the workload's network namespace");
        Ok(tasks)
    }

    /// Unenrols a workload and closes its listeners and their connections.
    pub fn remove(&self, id: u32) -> Result<Workload, WorkloadError> {
        let w = self.registry.remove(id)?;
        if let Some(tasks) = self.serving.lock().expect("pod listeners lock").remove(&id) {
            for t in tasks {
                t.abort();
            }
        }
        self.count();
        Ok(w)
    }

    /// Enrols a pod that discovery found, idempotently: one already enrolled with the same
    /// cgroup and namespace is left as it is; one whose cgroup or namespace changed (a
    /// restarted sandbox) is enrolled afresh.
    pub fn ensure(&self, name: &WorkloadName, at: &Placement) -> Result<Workload, PodError> {
        if let Some(w) = self.registry.find(name) {
            let same_cgroup = at.cgroup.as_ref().is_none_or(|c| *c == w.cgroup);
            // The same namespace may be named by another path (another of the pod's pids).
            let same_netns = match (&at.netns, &w.netns) {
                (Some(a), Some(b)) => netns::same(a, b),
                (a, b) => a == b,
            };
            if same_cgroup && same_netns {
                return Ok(w);
            }
            self.remove(w.id)?;
        }
        self.enrol(name, at)
    }

    /// Unenrols the workload enrolled as `name`, if any.
    pub fn remove_named(&self, name: &WorkloadName) -> Option<Workload> {
        let w = self.registry.find(name)?;
        self.remove(w.id).ok()
    }

    /// Waits for every namespace listener to drain (after the drain signal).
    pub async fn drained(&self) {
        let tasks: Vec<_> = self
            .serving
            .lock()
            .expect("pod listeners lock")
            .drain()
            .flat_map(|(_, t)| t)
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }
}
