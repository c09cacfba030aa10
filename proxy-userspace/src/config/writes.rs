//! Which policy files are being written now, from their inotify events: a reload waits until
//! none is, so it never reads a file half-written, whatever set it off (another file's change,
//! SIGHUP, a DNS refresh).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::time::Instant;

/// A writer that never closes its file (one that maps it, say) holds reloads back no longer.
const MAX_WRITE: Duration = Duration::from_secs(30);

/// What a file event says about the policies.
#[derive(Debug, PartialEq, Eq)]
pub enum FileEvent {
    /// Something may have changed: a rename (`sed -i`, an editor's save, a ConfigMap's `..data`
    /// swap), a removal, a link, an attribute change, or a written file closed.
    Changed(Vec<PathBuf>),
    /// These files are being written (their data changed, or they were created empty): read
    /// them once their writer closes them.
    Writing(Vec<PathBuf>),
}

/// Reads an inotify event; `None` for what changes nothing (a read, an open). `read` says
/// whether a reload reads a file: only such a file being written holds reloads back (a log or
/// an editor's swap file in the directory does not).
pub fn classify(e: &notify::Event, read: impl Fn(&Path) -> bool) -> Option<FileEvent> {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
    let paths = e.paths.clone();
    let writing = |paths: Vec<PathBuf>| {
        let read: Vec<PathBuf> = paths.into_iter().filter(|p| read(p)).collect();
        (!read.is_empty()).then_some(FileEvent::Writing(read))
    };
    match e.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(FileEvent::Changed(paths)),
        EventKind::Access(_) => None,
        EventKind::Modify(ModifyKind::Data(_)) => writing(paths),
        EventKind::Create(_)
            if e.paths.iter().all(|p| {
                std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file() && m.len() == 0)
            }) =>
        {
            writing(paths)
        }
        _ => Some(FileEvent::Changed(paths)),
    }
}

/// The files being written, each since its first data change.
#[derive(Default)]
pub struct Writes(HashMap<PathBuf, Instant>);

impl Writes {
    /// Records an event; true when it asks for a reload.
    pub fn note(&mut self, event: FileEvent) -> bool {
        match event {
            FileEvent::Writing(paths) => {
                for p in paths {
                    self.0.entry(p).or_insert_with(Instant::now);
                }
                false
            }
            FileEvent::Changed(paths) => {
                for p in &paths {
                    self.0.remove(p);
                }
                true
            }
        }
    }

    /// Whether no file is being written (writers silent for long are forgotten).
    pub fn settled(&mut self) -> bool {
        self.0.retain(|_, since| since.elapsed() < MAX_WRITE);
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_file_a_reload_reads_is_waited_for_while_written() {
        use notify::event::{DataChange, EventKind, ModifyKind};
        let written = |p: &str| {
            notify::Event::new(EventKind::Modify(ModifyKind::Data(DataChange::Any)))
                .add_path(p.into())
        };
        let read = |p: &Path| p.extension().is_some_and(|e| e == "yaml");
        assert_eq!(
            classify(&written("cfg/a.yaml"), read),
            Some(FileEvent::Writing(vec!["cfg/a.yaml".into()]))
        );
        assert_eq!(classify(&written("cfg/notes.txt"), read), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_waits_for_every_file_being_written() {
        let mut w = Writes::default();
        let (a, b) = (PathBuf::from("a.yaml"), PathBuf::from("b.yaml"));
        assert!(!w.note(FileEvent::Writing(vec![a.clone()])));
        // Another file's change asks for a reload, which must wait for a.yaml.
        assert!(w.note(FileEvent::Changed(vec![b])));
        assert!(!w.settled());
        assert!(w.note(FileEvent::Changed(vec![a.clone()])));
        assert!(w.settled());
        // A writer that never closes holds reloads back for MAX_WRITE at most.
        w.note(FileEvent::Writing(vec![a]));
        assert!(!w.settled());
        tokio::time::advance(MAX_WRITE).await;
        assert!(w.settled());
    }
}
