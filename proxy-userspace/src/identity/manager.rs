//! The current certificate of each local workload identity: issued or loaded on first use,
//! renewed at half its lifetime, reloaded when certificate files change.
//!
//! Renewal swaps the `Arc<WorkloadCert>` in the map. Connections already established keep the
//! config (and certificate) they were built with, so nothing drops; new handshakes use the new
//! certificate.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use rustls::RootCertStore;
use tokio::{sync::Notify, task::JoinHandle};

mod task;
use tracing::{error, info};

use super::{
    Ca, Clock, DEFAULT_CERT_LIFETIME, ExternalDir, IdentityError, SpiffeId, SystemClock,
    WorkloadCert, error::timestamp,
};

/// How soon a failed renewal is tried again, and how often an unrenewed certificate past its
/// half-life is looked at (re-reading files, logging if it is close to expiry).
pub const RETRY_INTERVAL: Duration = Duration::from_secs(30);
/// Longest sleep of the renewal task, so a jump of the wall clock is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(300);

/// Where certificates come from.
pub enum CertSource {
    /// Issued by the built-in CA.
    Ca(Arc<Ca>),
    /// Read from a directory that SPIRE or cert-manager keeps up to date.
    External(ExternalDir),
}

#[derive(Clone)]
pub struct CertManager {
    inner: Arc<Inner>,
}

struct Inner {
    source: CertSource,
    /// Lifetime of the certificates the CA issues.
    lifetime: Duration,
    clock: Arc<dyn Clock>,
    certs: RwLock<BTreeMap<SpiffeId, Arc<WorkloadCert>>>,
    /// SNI ([`SpiffeId::sni`]) → identity, for the server's certificate choice.
    names: RwLock<HashMap<String, SpiffeId>>,
    roots: ArcSwap<RootCertStore>,
    /// Wakes the renewal task when an identity is added.
    added: Arc<Notify>,
}

impl CertManager {
    pub fn new(
        source: CertSource,
        lifetime: Duration,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, IdentityError> {
        let roots = match &source {
            CertSource::Ca(ca) => ca.roots(),
            CertSource::External(dir) => dir.load_bundle()?,
        };
        Ok(CertManager {
            inner: Arc::new(Inner {
                source,
                lifetime,
                clock,
                certs: RwLock::default(),
                names: RwLock::default(),
                roots: ArcSwap::from_pointee(roots),
                added: Arc::new(Notify::new()),
            }),
        })
    }

    /// Certificates of [`DEFAULT_CERT_LIFETIME`] from `ca`, on the system clock.
    pub fn with_ca(ca: impl Into<Arc<Ca>>) -> Self {
        let source = CertSource::Ca(ca.into());
        CertManager::new(source, DEFAULT_CERT_LIFETIME, Arc::new(SystemClock))
            .expect("a CA source cannot fail to start")
    }

    /// Certificates from `dir`, on the system clock; fails if its trust bundle is unusable.
    pub fn with_external(dir: ExternalDir) -> Result<Self, IdentityError> {
        CertManager::new(
            CertSource::External(dir),
            DEFAULT_CERT_LIFETIME,
            Arc::new(SystemClock),
        )
    }

    /// The certificate of `id`, issued (or loaded) now if this is its first use.
    pub fn ensure(&self, id: &SpiffeId) -> Result<Arc<WorkloadCert>, IdentityError> {
        if let Some(cert) = self.current(id) {
            return Ok(cert);
        }
        let cert = Arc::new(self.obtain(id)?);
        let cert = {
            let mut certs = self.inner.certs.write().expect("certs lock");
            certs.entry(id.clone()).or_insert(cert).clone()
        };
        let mut names = self.inner.names.write().expect("names lock");
        names.insert(id.sni(), id.clone());
        self.inner.added.notify_one();
        Ok(cert)
    }

    pub fn current(&self, id: &SpiffeId) -> Option<Arc<WorkloadCert>> {
        self.inner
            .certs
            .read()
            .expect("certs lock")
            .get(id)
            .cloned()
    }

    /// The certificate of the identity whose [`SpiffeId::sni`] is `name`.
    pub fn by_server_name(&self, name: &str) -> Option<Arc<WorkloadCert>> {
        let id = self
            .inner
            .names
            .read()
            .expect("names lock")
            .get(name)?
            .clone();
        self.current(&id)
    }

    /// The trust bundle to verify peers against.
    pub fn roots(&self) -> Arc<RootCertStore> {
        self.inner.roots.load_full()
    }

    /// When each current certificate expires, for a gauge.
    pub fn expiries(&self) -> Vec<(SpiffeId, SystemTime)> {
        self.snapshot()
            .into_iter()
            .map(|(id, cert)| (id, cert.not_after()))
            .collect()
    }

    /// Identities whose certificate is in the last 10% of its lifetime: renewal has failed.
    pub fn expiring(&self) -> Vec<SpiffeId> {
        let now = self.inner.clock.now();
        self.snapshot()
            .into_iter()
            .filter(|(_, cert)| now >= cert.critical_at())
            .map(|(id, _)| id)
            .collect()
    }

    fn snapshot(&self) -> Vec<(SpiffeId, Arc<WorkloadCert>)> {
        let certs = self.inner.certs.read().expect("certs lock");
        certs
            .iter()
            .map(|(id, c)| (id.clone(), c.clone()))
            .collect()
    }

    fn obtain(&self, id: &SpiffeId) -> Result<WorkloadCert, IdentityError> {
        let now = self.inner.clock.now();
        match &self.inner.source {
            CertSource::Ca(ca) => ca.issue_at(id, now, self.inner.lifetime),
            CertSource::External(dir) => dir.load(id, now),
        }
    }

    /// Replaces the certificate of `id` with a fresh one; `None` if the source still has the
    /// current one (unchanged files).
    fn renew(
        &self,
        id: &SpiffeId,
        current: &WorkloadCert,
    ) -> Result<Option<Arc<WorkloadCert>>, IdentityError> {
        let fresh = self.obtain(id)?;
        if fresh.leaf() == current.leaf() {
            return Ok(None);
        }
        let fresh = Arc::new(fresh);
        let mut certs = self.inner.certs.write().expect("certs lock");
        certs.insert(id.clone(), fresh.clone());
        Ok(Some(fresh))
    }

    /// One renewal pass: renews every certificate past its half-life and logs an error for each
    /// one in its last 10% without a successful renewal. Returns when the next pass is due.
    pub fn renew_due(&self) -> SystemTime {
        let now = self.inner.clock.now();
        let mut next = now + MAX_SLEEP;
        for (id, mut cert) in self.snapshot() {
            if now >= cert.rotate_at() {
                match self.renew(&id, &cert) {
                    Ok(Some(fresh)) => {
                        info!(identity = %id, expires = %timestamp(fresh.not_after()), "renewed the workload certificate");
                        cert = fresh;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        error!(identity = %id, error = %e, "cannot renew the workload certificate; keeping the current one")
                    }
                }
            }
            if now >= cert.critical_at() {
                error!(
                    identity = %id,
                    expires = %timestamp(cert.not_after()),
                    seconds_left = cert.expires_in_at(now).as_secs(),
                    "workload certificate is about to expire and has not been renewed; \
                     connections of this identity will fail once it expires"
                );
            }
            let due = if now >= cert.rotate_at() {
                now + RETRY_INTERVAL
            } else {
                cert.rotate_at()
            };
            next = next.min(due);
        }
        next
    }

    /// Re-reads the trust bundle and every certificate of an external source. A file that fails
    /// to load is logged and the previous certificate (or bundle) stays in use.
    pub fn reload(&self) {
        let CertSource::External(dir) = &self.inner.source else {
            return;
        };
        match dir.load_bundle() {
            Ok(roots) => self.inner.roots.store(Arc::new(roots)),
            Err(e) => {
                error!(error = %e, "cannot reload the trust bundle; keeping the previous one")
            }
        }
        for (id, cert) in self.snapshot() {
            match self.renew(&id, &cert) {
                Ok(Some(fresh)) => {
                    info!(identity = %id, expires = %timestamp(fresh.not_after()), "reloaded the workload certificate")
                }
                Ok(None) => {}
                Err(e) => {
                    error!(identity = %id, error = %e, "cannot reload the workload certificate; keeping the previous one")
                }
            }
        }
    }

    /// Starts the renewal task (and, for an external source, the directory watch). The task
    /// ends when the last `CertManager` handle is dropped.
    pub fn spawn(&self) -> Result<JoinHandle<()>, IdentityError> {
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let watcher = match &self.inner.source {
            CertSource::External(dir) => Some(task::watch(dir, tx)?),
            CertSource::Ca(_) => None,
        };
        let weak = Arc::downgrade(&self.inner);
        let added = self.inner.added.clone();
        Ok(tokio::spawn(task::run(weak, added, events, watcher)))
    }
}

impl fmt::Debug for CertManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<String> = self
            .snapshot()
            .iter()
            .map(|(id, _)| id.to_string())
            .collect();
        let source = match &self.inner.source {
            CertSource::Ca(ca) => format!("ca({})", ca.trust_domain()),
            CertSource::External(dir) => format!("external({})", dir.root().display()),
        };
        f.debug_struct("CertManager")
            .field("source", &source)
            .field("identities", &ids)
            .finish()
    }
}

#[cfg(test)]
mod tests;
