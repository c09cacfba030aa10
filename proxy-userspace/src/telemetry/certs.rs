//! Workload certificate expiry as a Prometheus gauge, read from the certificate manager at
//! scrape time: `meshd_certificate_expiry_timestamp_seconds{identity}` for every certificate
//! meshd holds (built-in CA or external directory). An alert on `... - time() < X` catches a
//! renewal that keeps failing; the renewal task also logs an error in the last 10% of a
//! certificate's lifetime.

use std::{fmt::Write, time::SystemTime};

use crate::identity::{CertManager, SpiffeId};

pub const EXPIRY: &str = "meshd_certificate_expiry_timestamp_seconds";

/// Appends the expiry gauge of `manager`'s certificates.
pub fn render(manager: &CertManager, out: &mut String) {
    render_expiries(&manager.expiries(), out);
}

pub fn render_expiries(expiries: &[(SpiffeId, SystemTime)], out: &mut String) {
    let _ = write!(
        out,
        "# HELP {EXPIRY} When each workload certificate meshd holds expires (Unix seconds)\n\
         # TYPE {EXPIRY} gauge\n"
    );
    for (id, at) in expiries {
        let secs = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // SPIFFE IDs hold no quote, backslash or newline (they are validated URIs).
        let _ = writeln!(out, "{EXPIRY}{{identity=\"{id}\"}} {secs}");
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;
    use crate::identity::{Ca, CertManager, CertSource, SystemClock};

    #[test]
    fn one_series_per_identity_with_its_not_after() {
        let ca = Ca::generate("cluster.local").unwrap();
        let manager = CertManager::new(
            CertSource::Ca(Arc::new(ca)),
            Duration::from_secs(3600),
            Arc::new(SystemClock),
        )
        .unwrap();
        let mut out = String::new();
        render(&manager, &mut out);
        assert!(!out.contains("identity="), "no certificate yet: {out}");
        let a = SpiffeId::new("cluster.local", "default", "a").unwrap();
        let b = SpiffeId::new("cluster.local", "other", "b").unwrap();
        let ca_cert = manager.ensure(&a).unwrap();
        manager.ensure(&b).unwrap();
        let mut out = String::new();
        render(&manager, &mut out);
        let want = ca_cert
            .not_after()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            out.contains(&format!(
                "{EXPIRY}{{identity=\"spiffe://cluster.local/ns/default/sa/a\"}} {want}\n"
            )),
            "{out}"
        );
        assert_eq!(out.lines().filter(|l| l.starts_with(EXPIRY)).count(), 2);
        // About an hour ahead (short lifetimes are backdated by at most a quarter).
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!((now + 2600..=now + 3700).contains(&want), "{want} vs {now}");
    }
}
