//! Triggers reloads: inotify events on the config paths (debounced), SIGHUP, and the periodic
//! refresh of endpoint names while any are in use.

use std::{path::PathBuf, sync::Arc, time::Duration};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{
    ConfigStore,
    writes::{self, FileEvent, Writes},
};

/// Quiet period after the last file event before reloading, so an editor's write-rename-chmod
/// sequence or a `kubectl apply` of several files becomes one reload.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// The longest a stream of file events defers a reload (and SIGHUP): as istiod caps its
/// debounce, so files that keep changing do not hold every change back.
const DEBOUNCE_MAX: Duration = Duration::from_secs(1);

/// How often to re-arm watches on paths that did not exist (or vanished) earlier.
const REARM: Duration = Duration::from_secs(2);

/// Watches the store's config paths and reloads on change or SIGHUP, until the runtime stops.
/// The watches and the signal handler are in place when this returns, so a change made right
/// after meshd reports ready is not missed.
pub fn spawn_watcher(store: Arc<ConfigStore>) -> tokio::task::JoinHandle<()> {
    let (tx, mut rx) = mpsc::unbounded_channel::<FileEvent>();
    // The files a reload reads: those named, and the policy files of the directories named.
    let named = store.paths().to_vec();
    let read = move |p: &std::path::Path| {
        named.iter().any(|n| n == p) || crate::policy::source::walk_reads(p)
    };
    let mut watcher =
        match notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Some(event) = res.ok().and_then(|e| writes::classify(&e, &read)) {
                let _ = tx.send(event);
            }
        }) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the config paths; reload with SIGHUP");
                None
            }
        };
    let targets = watch_targets(store.paths());
    let active = store.current();
    let (mut linked, mut linked_for) =
        (linked_dirs(&active.files, store.paths()), active.generation);
    drop(active);
    let mut armed = arm(watcher.as_mut(), &[&targets[..], &linked[..]].concat(), &[]);
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .expect("SIGHUP handler");
    tokio::spawn(async move {
        let mut rearm = tokio::time::interval(REARM);
        let mut dns = tokio::time::interval(super::dns::REFRESH);
        dns.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A file being written holds every reload back until it is closed: none reads it half
        // written, whatever asks for the reload.
        let mut writes = Writes::default();
        let mut pending: Option<&'static str> = None;
        loop {
            tokio::select! {
                Some(event) = rx.recv() => {
                    // Debounce: wait until events stop for a moment.
                    if debounce(event, &mut rx, &mut writes).await {
                        pending = Some("file change");
                    }
                }
                _ = hup.recv() => {
                    pending = Some("SIGHUP");
                }
                _ = dns.tick() => {
                    // Only a changed address rebuilds (and changes the hash, so the rebuilt
                    // snapshot is applied): the files are not read again for nothing.
                    if names_moved(&store).await {
                        pending = Some("endpoint names resolved to new addresses");
                    }
                }
                _ = rearm.tick() => {
                    // The links are looked at again only when the files a snapshot was read
                    // from may have changed (off the async threads: a stat per file).
                    let active = store.current();
                    if active.generation != linked_for {
                        linked_for = active.generation;
                        let (files, paths) = (active.files.clone(), store.paths().to_vec());
                        linked = tokio::task::spawn_blocking(move || linked_dirs(&files, &paths))
                            .await
                            .unwrap_or_default();
                    }
                    let before = armed.clone();
                    armed = arm(watcher.as_mut(), &[&targets[..], &linked[..]].concat(), &armed);
                    if armed.iter().any(|a| !before.contains(a)) {
                        // A watched path appeared again: its content may be new.
                        pending = Some("config path appeared");
                    }
                }
            }
            match pending {
                Some(why) if writes.settled() => {
                    reload(&store, why).await;
                    pending = None;
                }
                Some(why) => tracing::debug!(why, "reload waits for policy files being written"),
                None => {}
            }
        }
    })
}

/// Notes `first` and the events that follow it until they pause for [`DEBOUNCE`], or for
/// [`DEBOUNCE_MAX`] at most; true when some asked for a reload.
async fn debounce(
    first: FileEvent,
    rx: &mut mpsc::UnboundedReceiver<FileEvent>,
    writes: &mut Writes,
) -> bool {
    let mut wanted = writes.note(first);
    let until = tokio::time::Instant::now() + DEBOUNCE_MAX;
    loop {
        let quiet = (tokio::time::Instant::now() + DEBOUNCE).min(until);
        match tokio::time::timeout_at(quiet, rx.recv()).await {
            Ok(Some(event)) => wanted |= writes.note(event),
            _ => return wanted,
        }
    }
}

/// Whether the endpoint names in use now resolve to other addresses than the active
/// configuration's (resolved off the async threads, as reloads are).
async fn names_moved(store: &Arc<ConfigStore>) -> bool {
    let active = store.current();
    if active.compiled.dns.is_empty() {
        return false;
    }
    let names = active.compiled.dns.keys().cloned().collect();
    let last = active.compiled.dns.clone();
    match tokio::task::spawn_blocking(move || super::dns::resolve(&names, &last)).await {
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

/// The directories of the targets of symlinked policy files, where those lie outside the config
/// paths: an edit of the target (`ln -s ../shared/vs.yaml`) is seen there. (A ConfigMap's
/// links point inside its own directory, which is watched already.)
/// `files` are those the active snapshot was read from.
fn linked_dirs(files: &[PathBuf], paths: &[PathBuf]) -> Vec<(PathBuf, RecursiveMode)> {
    let roots: Vec<PathBuf> = paths.iter().filter_map(|p| p.canonicalize().ok()).collect();
    let mut dirs: Vec<(PathBuf, RecursiveMode)> = Vec::new();
    for f in files {
        if !std::fs::symlink_metadata(f).is_ok_and(|m| m.file_type().is_symlink()) {
            continue;
        }
        let target = f.canonicalize().ok();
        let Some(dir) = target.as_deref().and_then(std::path::Path::parent) else {
            continue;
        };
        if roots.iter().any(|r| dir.starts_with(r)) || dirs.iter().any(|(d, _)| d == dir) {
            continue;
        }
        dirs.push((dir.to_path_buf(), RecursiveMode::NonRecursive));
    }
    dirs
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Events that never pause still let a reload through once `DEBOUNCE_MAX` has passed.
    #[tokio::test(start_paused = true)]
    async fn a_stream_of_events_defers_a_reload_a_second_at_most() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let feeder = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if tx.send(FileEvent::Changed(vec!["a.yaml".into()])).is_err() {
                    return;
                }
            }
        });
        let start = tokio::time::Instant::now();
        let first = FileEvent::Changed(vec!["a.yaml".into()]);
        assert!(debounce(first, &mut rx, &mut Writes::default()).await);
        assert_eq!(start.elapsed(), DEBOUNCE_MAX);
        feeder.abort();
    }
}
