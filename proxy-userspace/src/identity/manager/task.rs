//! The background task of a [`CertManager`]: renewal passes on time, and reloads when the
//! watched certificate directory changes.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use notify::{RecursiveMode, Watcher};
use tokio::sync::{
    Notify,
    mpsc::{UnboundedReceiver, UnboundedSender},
};

use super::{CertManager, Inner, MAX_SLEEP};
use crate::identity::{ExternalDir, IdentityError};

/// Quiet period after the last file event before reloading, so a cert-and-key update (or a
/// Secret volume's symlink swap) becomes one reload.
const DEBOUNCE: Duration = Duration::from_millis(150);

pub(super) async fn run(
    weak: Weak<Inner>,
    added: Arc<Notify>,
    mut events: UnboundedReceiver<()>,
    _watcher: Option<notify::RecommendedWatcher>,
) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let manager = CertManager { inner };
        let next = manager.renew_due();
        let wait = next.duration_since(manager.inner.clock.now());
        drop(manager);
        let wait = wait.unwrap_or_default().min(MAX_SLEEP);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = added.notified() => {}
            Some(()) = events.recv() => {
                // Debounce: wait until events stop for a moment.
                while tokio::time::timeout(DEBOUNCE, events.recv()).await.is_ok_and(|e| e.is_some()) {}
                let Some(inner) = weak.upgrade() else { return };
                CertManager { inner }.reload();
            }
        }
    }
}

pub(super) fn watch(
    dir: &ExternalDir,
    tx: UnboundedSender<()>,
) -> Result<notify::RecommendedWatcher, IdentityError> {
    let fail = |e: notify::Error| IdentityError::Watch {
        path: dir.root().to_path_buf(),
        reason: e.to_string(),
    };
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    })
    .map_err(fail)?;
    watcher
        .watch(dir.root(), RecursiveMode::Recursive)
        .map_err(fail)?;
    Ok(watcher)
}
