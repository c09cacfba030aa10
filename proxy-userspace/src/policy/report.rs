//! Collects the findings of one file while it is validated, each prefixed with its field path.

use std::{fmt::Display, path::Path};

use super::finding::{Finding, Pos, Severity};

pub struct Report<'a> {
    file: &'a Path,
    pub findings: Vec<Finding>,
}

impl<'a> Report<'a> {
    pub fn new(file: &'a Path) -> Report<'a> {
        Report {
            file,
            findings: Vec::new(),
        }
    }

    pub fn file(&self) -> &Path {
        self.file
    }

    pub fn add(&mut self, severity: Severity, pos: Pos, path: &str, msg: impl Display) {
        let message = if path.is_empty() {
            msg.to_string()
        } else {
            format!("{path}: {msg}")
        };
        self.findings
            .push(Finding::new(self.file, pos, severity, message));
    }

    pub fn error(&mut self, pos: Pos, path: &str, msg: impl Display) {
        self.add(Severity::Error, pos, path, msg);
    }

    pub fn warn(&mut self, pos: Pos, path: &str, msg: impl Display) {
        self.add(Severity::Warning, pos, path, msg);
    }

    pub fn errors(&self) -> usize {
        self.findings.iter().filter(|f| f.is_error()).count()
    }
}

/// `spec` + `http` = `spec.http`.
pub fn key(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// `spec.http` + 1 = `spec.http[1]`.
pub fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}
