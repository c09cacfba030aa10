//! Finds policy files (files given, or `.yaml`/`.yml` under directories, recursively, in sorted
//! order) and reads them as UTF-8 text.

use std::{
    fs,
    io::Read,
    path::{Path, PathBuf},
};

use super::limits::{MAX_DIR_DEPTH, MAX_FILE_BYTES, MAX_FILES};

/// Input that cannot be read at all (as opposed to policies that are wrong).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{}: no such file or directory", .0.display())]
    NotFound(PathBuf),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("more than {MAX_FILES} policy files; split the configuration")]
    TooManyFiles,
    #[error(
        "{}: not a regular file (a FIFO, socket or device); policies are read from regular files only",
        .0.display()
    )]
    NotRegular(PathBuf),
    #[error("{}: directories nest deeper than {MAX_DIR_DEPTH} levels (a symlink loop?)", .0.display())]
    TooDeep(PathBuf),
}

/// A policy file's text, or why it is not used.
pub enum Text {
    Ok(String),
    /// Larger than `MAX_FILE_BYTES`: a finding about the file, not an unreadable input.
    TooLarge(u64),
    /// Not UTF-8: a finding at the first invalid byte (1-based line and column, the column
    /// counted in characters), not an unreadable input.
    NotUtf8 {
        line: usize,
        col: usize,
    },
}

/// Lists the files to load, in order, and the paths that could not be listed. Directories are walked recursively; names starting with a
/// dot are skipped (editors' files, `.git`, and the `..data` links of Kubernetes ConfigMap
/// volumes, which would otherwise load every file twice).
pub fn discover(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<SourceError>) {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for p in paths {
        match fs::metadata(p) {
            Ok(m) if m.is_dir() => walk(p, 0, &mut files, &mut errors),
            Ok(m) if m.is_file() => files.push(p.clone()),
            Ok(_) => errors.push(SourceError::NotRegular(p.clone())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                errors.push(SourceError::NotFound(p.clone()))
            }
            Err(e) => errors.push(SourceError::Io {
                path: p.clone(),
                source: e,
            }),
        }
        if files.len() > MAX_FILES {
            errors.push(SourceError::TooManyFiles);
            break;
        }
    }
    (files, errors)
}

fn walk(dir: &Path, depth: usize, files: &mut Vec<PathBuf>, errors: &mut Vec<SourceError>) {
    if depth > MAX_DIR_DEPTH {
        errors.push(SourceError::TooDeep(dir.to_path_buf()));
        return;
    }
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            errors.push(SourceError::Io {
                path: dir.to_path_buf(),
                source: e,
            });
            return;
        }
    };
    let mut children: Vec<PathBuf> = Vec::new();
    for entry in entries {
        match entry {
            Ok(e) if !e.file_name().to_string_lossy().starts_with('.') => children.push(e.path()),
            Ok(_) => {}
            Err(e) => errors.push(SourceError::Io {
                path: dir.to_path_buf(),
                source: e,
            }),
        }
    }
    children.sort();
    for child in children {
        if files.len() > MAX_FILES {
            return;
        }
        match fs::metadata(&child) {
            Ok(m) if m.is_dir() => walk(&child, depth + 1, files, errors),
            Ok(m) if is_yaml(&child) && m.is_file() => files.push(child),
            // Reading a FIFO would block reloads, and a device could be endless.
            Ok(_) if is_yaml(&child) => errors.push(SourceError::NotRegular(child)),
            Ok(_) => {}
            Err(e) => errors.push(SourceError::Io {
                path: child,
                source: e,
            }),
        }
    }
}

fn is_yaml(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
}

/// Whether a directory walk reads a file by this name: YAML, and not hidden (an editor's
/// swap file, a ConfigMap's `..data` staging).
pub fn walk_reads(p: &Path) -> bool {
    is_yaml(p)
        && !p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// Reads a file as UTF-8, up to `MAX_FILE_BYTES`.
pub fn read(path: &Path) -> Result<Text, SourceError> {
    Ok(text_of(path, &read_bytes(path)?))
}

/// The text of `bytes`, read from `path` (for the size of a file too large).
pub fn text_of(path: &Path, bytes: &[u8]) -> Text {
    if bytes.len() as u64 > MAX_FILE_BYTES {
        let size = fs::metadata(path).map_or(bytes.len() as u64, |m| m.len());
        return Text::TooLarge(size);
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => Text::Ok(text.to_owned()),
        Err(e) => {
            let valid = &bytes[..e.valid_up_to()];
            // The bytes before `valid_up_to` are valid UTF-8.
            let before = std::str::from_utf8(valid).unwrap_or_default();
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            Text::NotUtf8 {
                line: before.matches('\n').count() + 1,
                col: before[line_start..].chars().count() + 1,
            }
        }
    }
}

/// A regular file's bytes, at most `MAX_FILE_BYTES + 1` of them (one more says it is too
/// large). Opened without blocking and checked after opening, so a FIFO or device put in a
/// file's place between listing and reading is refused rather than waited on or read forever.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>, SourceError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| SourceError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io)?;
    if !file.metadata().map_err(io)?.is_file() {
        return Err(SourceError::NotRegular(path.to_path_buf()));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    Ok(bytes)
}
