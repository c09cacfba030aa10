use super::*;
use crate::identity::{
    TokioClock,
    ca::CLOCK_SKEW,
    testutil::{TempDir, write_external},
};

const HOUR: Duration = Duration::from_secs(3600);

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "shop", sa).unwrap()
}

fn ca_manager(lifetime: Duration, clock: Arc<dyn Clock>) -> CertManager {
    let ca = Arc::new(Ca::generate("cluster.local").unwrap());
    CertManager::new(CertSource::Ca(ca), lifetime, clock).unwrap()
}

#[test]
fn ensure_issues_once_and_serves_by_name() {
    let manager = ca_manager(DEFAULT_CERT_LIFETIME, Arc::new(SystemClock));
    assert!(manager.current(&id("a")).is_none());
    let first = manager.ensure(&id("a")).unwrap();
    let again = manager.ensure(&id("a")).unwrap();
    assert!(Arc::ptr_eq(&first, &again));
    manager.ensure(&id("b")).unwrap();

    let by_name = manager.by_server_name(&id("a").sni()).unwrap();
    assert!(Arc::ptr_eq(&by_name, &first));
    assert!(
        manager
            .by_server_name("unknown.spiffe.meshd.invalid")
            .is_none()
    );
    let expiries = manager.expiries();
    assert_eq!(
        expiries,
        vec![(id("a"), first.not_after()), (id("b"), expiries[1].1)]
    );
    assert!(manager.expiring().is_empty());
}

#[test]
fn ensure_reports_a_foreign_trust_domain() {
    let manager = ca_manager(DEFAULT_CERT_LIFETIME, Arc::new(SystemClock));
    let foreign = SpiffeId::new("example.org", "shop", "a").unwrap();
    assert!(matches!(
        manager.ensure(&foreign),
        Err(IdentityError::ForeignTrustDomain { .. })
    ));
    assert!(manager.expiries().is_empty());
}

#[tokio::test(start_paused = true)]
async fn rotation_replaces_the_certificate_at_half_life() {
    let clock = Arc::new(TokioClock::new());
    let manager = ca_manager(DEFAULT_CERT_LIFETIME, clock.clone());
    let first = manager.ensure(&id("a")).unwrap();
    let task = manager.spawn().unwrap();

    let before_half = first.rotate_at() - Duration::from_secs(60);
    tokio::time::sleep(before_half.duration_since(clock.now()).unwrap()).await;
    assert!(Arc::ptr_eq(&manager.current(&id("a")).unwrap(), &first));

    tokio::time::sleep(Duration::from_secs(120)).await;
    let second = manager.current(&id("a")).unwrap();
    assert!(!Arc::ptr_eq(&second, &first), "not rotated at half-life");
    // Issued at the half-life (X.509 times have whole seconds).
    let issued = second.not_before() + CLOCK_SKEW;
    assert!(issued >= first.rotate_at() - Duration::from_secs(1));
    assert!(issued <= first.rotate_at() + Duration::from_secs(1));
    assert_eq!(second.not_after(), issued + DEFAULT_CERT_LIFETIME);
    assert_eq!(manager.expiries(), vec![(id("a"), second.not_after())]);
    // The old certificate is still whole for the connections that use it.
    assert_eq!(first.chain().len(), 1);

    // And again half a lifetime later.
    tokio::time::sleep(second.rotate_at().duration_since(clock.now()).unwrap() + HOUR).await;
    assert!(!Arc::ptr_eq(&manager.current(&id("a")).unwrap(), &second));
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn the_task_ends_with_the_last_manager() {
    let manager = ca_manager(DEFAULT_CERT_LIFETIME, Arc::new(TokioClock::new()));
    manager.ensure(&id("a")).unwrap();
    let task = manager.spawn().unwrap();
    drop(manager);
    tokio::time::timeout(2 * MAX_SLEEP, task)
        .await
        .expect("task still running")
        .unwrap();
}

fn external(tag: &str, clock: Arc<dyn Clock>) -> (TempDir, Ca, CertManager) {
    let tmp = TempDir::new(tag);
    let ca = Ca::generate("cluster.local").unwrap();
    let first = ca.issue_at(&id("a"), clock.now(), HOUR).unwrap();
    write_external(tmp.path(), &ca, &first);
    let source = CertSource::External(ExternalDir::new(tmp.path()));
    let manager = CertManager::new(source, DEFAULT_CERT_LIFETIME, clock).unwrap();
    (tmp, ca, manager)
}

#[test]
fn reload_picks_up_new_files_and_keeps_the_old_on_failure() {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (tmp, ca, manager) = external("mgr-reload", clock.clone());
    let first = manager.ensure(&id("a")).unwrap();
    manager.reload();
    assert!(
        Arc::ptr_eq(&manager.current(&id("a")).unwrap(), &first),
        "unchanged files"
    );

    let second = ca.issue(&id("a"), HOUR).unwrap();
    write_external(tmp.path(), &ca, &second);
    manager.reload();
    let current = manager.current(&id("a")).unwrap();
    assert_eq!(current.leaf(), second.leaf());

    std::fs::write(tmp.path().join("shop/a/cert.pem"), "truncated").unwrap();
    manager.reload();
    assert!(Arc::ptr_eq(&manager.current(&id("a")).unwrap(), &current));
}

#[tokio::test]
async fn a_file_change_is_reloaded_by_the_watch() {
    let (tmp, ca, manager) = external("mgr-watch", Arc::new(SystemClock));
    let first = manager.ensure(&id("a")).unwrap();
    let task = manager.spawn().unwrap();
    let second = ca.issue(&id("a"), HOUR).unwrap();
    write_external(tmp.path(), &ca, &second);
    // Bounded wait for the event to arrive; not a timing assertion.
    for _ in 0..200 {
        if manager.current(&id("a")).unwrap().leaf() != first.leaf() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(manager.current(&id("a")).unwrap().leaf(), second.leaf());
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn an_unrenewed_certificate_is_flagged_in_its_last_tenth() {
    let clock = Arc::new(TokioClock::new());
    let (_tmp, _ca, manager) = external("mgr-expiring", clock.clone());
    let cert = manager.ensure(&id("a")).unwrap();
    let nearly = cert.critical_at() - Duration::from_secs(10);
    tokio::time::advance(nearly.duration_since(clock.now()).unwrap()).await;
    assert!(manager.expiring().is_empty());
    // Past the half-life with unchanged files, passes come every RETRY_INTERVAL.
    assert_eq!(manager.renew_due(), clock.now() + RETRY_INTERVAL);

    tokio::time::advance(Duration::from_secs(20)).await;
    assert_eq!(manager.expiring(), vec![id("a")]);
    manager.renew_due();
    assert!(Arc::ptr_eq(&manager.current(&id("a")).unwrap(), &cert));
}

/// Log lines written while `f` runs on this thread.
fn logged(f: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let out = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || out.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let text = buf.0.lock().unwrap().clone();
    String::from_utf8(text).unwrap()
}

#[tokio::test(start_paused = true)]
async fn an_unrenewed_certificate_in_its_last_tenth_is_logged_as_an_error() {
    let clock = Arc::new(TokioClock::new());
    let (_tmp, _ca, manager) = external("mgr-expiring-log", clock.clone());
    let cert = manager.ensure(&id("a")).unwrap();
    let nearly = cert.critical_at() - Duration::from_secs(10);
    tokio::time::advance(nearly.duration_since(clock.now()).unwrap()).await;
    let quiet = logged(|| {
        manager.renew_due();
    });
    assert!(!quiet.contains("ERROR"), "{quiet}");
    tokio::time::advance(Duration::from_secs(20)).await;
    let loud = logged(|| {
        manager.renew_due();
    });
    assert!(
        loud.contains("ERROR")
            && loud.contains("about to expire and has not been renewed")
            && loud.contains("spiffe://cluster.local/ns/shop/sa/a"),
        "{loud}"
    );
}
