//! The endpoints a reload took out of a cluster's service: their connections are drained, as
//! Envoy drains a removed host's pools. Idle ones close at once; one carrying a request closes
//! when the request ends instead of going back to the pool. An endpoint that a later reload
//! brings back is pooled again.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

#[derive(Default)]
pub struct Retired {
    addrs: Mutex<HashSet<SocketAddr>>,
    /// Whether `addrs` holds any: the common case costs one load, no lock.
    any: AtomicBool,
}

impl Retired {
    /// Adds `removed`, and forgets the retired endpoints `present` has again. Returns whether
    /// any endpoint is retired now.
    pub fn update<'a>(
        &self,
        removed: impl IntoIterator<Item = &'a SocketAddr>,
        present: &HashSet<SocketAddr>,
    ) -> bool {
        let mut addrs = self.addrs.lock().expect("retired lock");
        addrs.extend(removed);
        addrs.retain(|a| !present.contains(a));
        let any = !addrs.is_empty();
        self.any.store(any, Ordering::Release);
        any
    }

    pub fn contains(&self, addr: &SocketAddr) -> bool {
        self.any.load(Ordering::Acquire) && self.addrs.lock().expect("retired lock").contains(addr)
    }

    /// Forgets every retired endpoint.
    pub fn clear(&self) {
        self.addrs.lock().expect("retired lock").clear();
        self.any.store(false, Ordering::Release);
    }

    /// The retired endpoints now.
    pub fn snapshot(&self) -> HashSet<SocketAddr> {
        if !self.any.load(Ordering::Acquire) {
            return HashSet::new();
        }
        self.addrs.lock().expect("retired lock").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_stays_retired_until_it_is_present_again() {
        let r = Retired::default();
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        assert!(!r.contains(&a));
        assert!(r.update([&a], &HashSet::from([b])));
        assert!(r.contains(&a) && !r.contains(&b));
        // A reload that changes nothing for it keeps it retired.
        assert!(r.update([], &HashSet::from([b])));
        assert!(r.contains(&a));
        // Back in the service: pooled again.
        assert!(!r.update([], &HashSet::from([a, b])));
        assert!(!r.contains(&a));
        assert!(r.snapshot().is_empty());
    }
}
