//! Triggers reloads: inotify events on the config paths (debounced), SIGHUP, and the periodic
//! refresh of endpoint names while any are in use.

use std::{path::PathBuf, sync::Arc, time::Duration};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::ConfigStore;

/// Quiet period after the last file event before reloading, so an editor's write-rename-chmod
/// sequence or a `kubectl apply` of several files becomes one reload.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// Whether a file event may have changed the policies. A file written in place is read once
/// its writer closes it, never half-written (`kubectl get ... > f.yaml` streams its documents):
/// its data changes wait for the close, and so does a file created empty (it is being
/// written). Renames (`sed -i`, an editor's save, a ConfigMap's `..data` swap), removals, links
/// and attribute changes act at once.
fn triggers(e: &notify::Event) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
    match e.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Modify(ModifyKind::Data(_)) => false,
        EventKind::Create(_) => !e
            .paths
            .iter()
            .all(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file() && m.len() == 0)),
        _ => true,
    }
}

/// How often to re-arm watches on paths that did not exist (or vanished) earlier.
const REARM: Duration = Duration::from_secs(2);

/// Watches the store's config paths and reloads on change or SIGHUP, until the runtime stops.
/// The watches and the signal handler are in place when this returns, so a change made right
/// after meshd reports ready is not missed.
pub fn spawn_watcher(store: Arc<ConfigStore>) -> tokio::task::JoinHandle<()> {
    let (tx, mut rx) = mpsc::channel::<()>(64);
    let notify_tx = tx.clone();
    let mut watcher =
        match notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok_and(|e| triggers(&e)) {
                let _ = notify_tx.try_send(());
            }
        }) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the config paths; reload with SIGHUP");
                None
            }
        };
    let targets = watch_targets(store.paths());
    let mut armed = arm(watcher.as_mut(), &targets, &[]);
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .expect("SIGHUP handler");
    tokio::spawn(async move {
        let mut rearm = tokio::time::interval(REARM);
        let mut dns = tokio::time::interval(super::dns::REFRESH);
        dns.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(()) = rx.recv() => {
                    // Debounce: wait until events stop for a moment.
                    while tokio::time::timeout(DEBOUNCE, rx.recv()).await.is_ok_and(|e| e.is_some()) {}
                    reload(&store, "file change").await;
                }
                _ = hup.recv() => {
                    reload(&store, "SIGHUP").await;
                }
                _ = dns.tick() => {
                    // Only a changed address rebuilds (and changes the hash, so the rebuilt
                    // snapshot is applied): the files are not read again for nothing.
                    if names_moved(&store).await {
                        reload(&store, "endpoint names resolved to new addresses").await;
                    }
                }
                _ = rearm.tick() => {
                    let before = armed.clone();
                    armed = arm(watcher.as_mut(), &targets, &armed);
                    if armed.iter().any(|a| !before.contains(a)) {
                        // A watched path appeared again: its content may be new.
                        reload(&store, "config path appeared").await;
                    }
                }
            }
        }
    })
}

/// Whether the endpoint names in use now resolve to other addresses than the active
/// configuration's (resolved off the async threads, as reloads are).
async fn names_moved(store: &Arc<ConfigStore>) -> bool {
    let active = store.current();
    if active.compiled.dns.is_empty() {
        return false;
    }
    let names = active.compiled.dns.keys().cloned().collect();
    match tokio::task::spawn_blocking(move || super::dns::resolve(&names)).await {
        Ok(fresh) => fresh != active.compiled.dns,
        Err(_) => false,
    }
}

/// Reloads off the async threads: reading and compiling a large configuration takes a while,
/// and with one worker thread the traffic would wait for it.
async fn reload(store: &Arc<ConfigStore>, why: &'static str) {
    let store = store.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || store.reload(why)).await {
        tracing::error!(error = %e, why, "configuration reload failed");
    }
}

/// What to watch for each config path: a directory recursively; a file through its parent
/// directory, so editors that replace files by rename are seen.
fn watch_targets(paths: &[PathBuf]) -> Vec<(PathBuf, RecursiveMode)> {
    paths
        .iter()
        .map(|p| {
            if p.is_file() {
                (
                    p.parent()
                        .map(|d| d.to_path_buf())
                        .unwrap_or_else(|| PathBuf::from(".")),
                    RecursiveMode::NonRecursive,
                )
            } else {
                (p.clone(), RecursiveMode::Recursive)
            }
        })
        .collect()
}

/// The inode of a path, to notice a directory that was removed and created again.
fn inode(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Adds watches for targets that exist and are not watched yet (or were replaced); forgets
/// vanished ones. Returns what is watched now, with each path's inode.
fn arm(
    watcher: Option<&mut notify::RecommendedWatcher>,
    targets: &[(PathBuf, RecursiveMode)],
    armed: &[(PathBuf, u64)],
) -> Vec<(PathBuf, u64)> {
    let Some(w) = watcher else { return Vec::new() };
    let mut now: Vec<(PathBuf, u64)> = armed
        .iter()
        .filter(|(p, ino)| inode(p) == Some(*ino))
        .cloned()
        .collect();
    for (path, mode) in targets {
        let Some(ino) = inode(path) else { continue };
        if now.iter().any(|(p, _)| p == path) {
            continue;
        }
        let _ = w.unwatch(path);
        match w.watch(path, *mode) {
            Ok(()) => now.push((path.clone(), ino)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot watch config path")
            }
        }
    }
    now
}
