//! Loading: files → documents → validated resources, collecting every finding on the way.

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{
    finding::{self, Finding, Pos, Severity},
    kinds::Kind,
    limits::MAX_FILE_BYTES,
    model::{DEFAULT_NAMESPACE, Origin},
    node::Node,
    report::Report,
    set::PolicySet,
    source::{self, SourceError, Text},
    validate, yaml,
};

/// Why `load` produced no policy set.
#[derive(Debug, thiserror::Error)]
pub enum LoadFailure {
    /// Paths that could not be read at all (missing, no permission, not UTF-8).
    #[error("{}", lines(.0))]
    Unreadable(Vec<SourceError>),
    /// The policies were read but have errors. Holds every finding, warnings included, sorted.
    #[error("{}", lines(.0))]
    Invalid(Vec<Finding>),
}

fn lines<T: fmt::Display>(items: &[T]) -> String {
    let all: Vec<String> = items.iter().map(T::to_string).collect();
    all.join("\n")
}

/// The outcome of reading policies, valid or not: the resources that validated, and every
/// validation finding (sorted).
#[derive(Debug, Default)]
pub struct Loaded {
    pub set: PolicySet,
    pub findings: Vec<Finding>,
    /// Where each kind/namespace/name was first defined, to report duplicates.
    seen: HashMap<(Kind, String, String), String>,
}

impl Loaded {
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(Finding::is_error)
    }
}

/// Loads policy files and directories. Succeeds only when nothing has an error; the set then
/// carries the validation warnings.
pub fn load(paths: &[PathBuf]) -> Result<PolicySet, LoadFailure> {
    into_result(load_all(paths).map_err(LoadFailure::Unreadable)?)
}

/// Like `load`, for text already in memory (`file` is only used in findings).
pub fn load_str(file: &Path, text: &str) -> Result<PolicySet, LoadFailure> {
    let mut loaded = Loaded::default();
    load_text(file, text, &mut loaded);
    finish(&mut loaded);
    into_result(loaded)
}

fn into_result(mut loaded: Loaded) -> Result<PolicySet, LoadFailure> {
    if loaded.has_errors() {
        return Err(LoadFailure::Invalid(loaded.findings));
    }
    loaded.set.warnings = std::mem::take(&mut loaded.findings);
    Ok(loaded.set)
}

/// Reads every file, then validates every document, keeping the valid resources even when other
/// documents have errors. Fails only on unreadable input.
pub fn load_all(paths: &[PathBuf]) -> Result<Loaded, Vec<SourceError>> {
    Ok(load_read(&read_all(paths)?))
}

/// Every policy file under `paths` and its bytes, each read once. Fails on unreadable input.
pub fn read_all(paths: &[PathBuf]) -> Result<Vec<(PathBuf, Vec<u8>)>, Vec<SourceError>> {
    let (files, mut errors) = source::discover(paths);
    let mut read = Vec::with_capacity(files.len());
    for f in files {
        match source::read_bytes(&f) {
            Ok(bytes) => read.push((f, bytes)),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(read)
    } else {
        Err(errors)
    }
}

/// Like `load`, for files already read by [`read_all`]: what is validated is exactly what was
/// read, so a file rewritten meanwhile cannot give a snapshot half of one version.
pub fn load_files(files: &[(PathBuf, Vec<u8>)]) -> Result<PolicySet, LoadFailure> {
    into_result(load_read(files))
}

fn load_read(files: &[(PathBuf, Vec<u8>)]) -> Loaded {
    let mut loaded = Loaded::default();
    for (file, bytes) in files {
        match &source::text_of(file, bytes) {
            Text::Ok(t) => load_text(file, t, &mut loaded),
            Text::TooLarge(size) => {
                loaded.set.files += 1;
                loaded.findings.push(Finding::new(
                    file,
                    Pos::START,
                    Severity::Error,
                    format!(
                        "file is {size} bytes, more than the {} MiB limit for a policy file; split it",
                        MAX_FILE_BYTES >> 20
                    ),
                ));
            }
            Text::NotUtf8 { line, col } => {
                loaded.set.files += 1;
                loaded.findings.push(Finding::new(
                    file,
                    Pos::new(*line, *col),
                    Severity::Error,
                    "not UTF-8 text: this byte is invalid (policy files are UTF-8 YAML)",
                ));
            }
        }
    }
    finish(&mut loaded);
    loaded
}

fn finish(loaded: &mut Loaded) {
    finding::sort(&mut loaded.findings);
}

/// Validates the documents of one file and adds the valid ones to the set.
pub fn load_text(file: &Path, text: &str, out: &mut Loaded) {
    out.set.files += 1;
    let parsed = yaml::parse(text);
    for (pos, msg) in parsed.errors {
        out.findings
            .push(Finding::new(file, pos, Severity::Error, msg));
    }
    for doc in parsed.documents {
        load_resource(file, doc.root, doc.index, out);
    }
}

/// One document, or each item of a `kind: List` (what `kubectl get -o yaml` writes), read as a
/// document of its own, as `istioctl analyze` reads them; a List inside a List too, so that no
/// policy is skipped for how it was wrapped.
fn load_resource(file: &Path, root: Node, index: usize, out: &mut Loaded) {
    let kind = root.get("kind").and_then(Node::as_str);
    let api = root.get("apiVersion").and_then(Node::as_str);
    if kind != Some("List") || api != Some("v1") {
        return load_document(file, root, index, out);
    }
    match root.get("items") {
        // An empty List, as `kubectl get` writes one.
        None => {}
        Some(items) if items.is_null() => {}
        Some(items) => match items.items() {
            Some(items) => {
                for item in items {
                    load_resource(file, item.clone(), index, out);
                }
            }
            None => out.findings.push(Finding::new(
                file,
                items.pos,
                Severity::Error,
                format!(
                    "items: expected a list of resources, got {}",
                    items.describe()
                ),
            )),
        },
    }
}

/// Validates one document (`index` in its file) and adds it to the set when valid.
fn load_document(file: &Path, root: Node, index: usize, out: &mut Loaded) {
    let mut r = Report::new(file);
    let info = validate::document(&root, &mut r);
    let ok = r.errors() == 0;
    out.findings.append(&mut r.findings);
    let Some(info) = info.filter(|_| ok) else {
        return;
    };
    let meta = root.get("metadata");
    let field = |k: &str| meta.and_then(|m| m.get(k)).and_then(Node::as_str);
    let ns = field("namespace").unwrap_or(DEFAULT_NAMESPACE).to_string();
    let name = field("name").unwrap_or_default().to_string();
    let name_pos = validate::name_pos(&root);
    let origin = Origin {
        file: file.to_path_buf(),
        document: index,
        line: root.pos.line,
        col: root.pos.col,
    };
    let at = format!("{}:{}", file.display(), origin.line);
    let key = (info.kind, ns.clone(), name.clone());
    if let Some(first) = out.seen.get(&key) {
        out.findings.push(Finding::new(
            file,
            name_pos,
            Severity::Error,
            format!(
                "metadata.name: {} {ns}/{name} is defined twice (first at {first})",
                info.name
            ),
        ));
        return;
    }
    out.seen.insert(key, at);
    let root_pos = root.pos;
    if let Err(e) = out.set.insert(info.kind, Arc::new(root), origin) {
        out.findings.push(Finding::new(
            file,
            root_pos,
            Severity::Error,
            format!(
                "internal error reading this {}: {e}; please report it",
                info.name
            ),
        ));
    }
}

#[cfg(test)]
mod tests;
