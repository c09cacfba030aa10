//! A finding about a policy file: `file:line:col: error|warning: message`.

use std::{fmt, path::PathBuf};

/// How bad a finding is: errors make a policy set unusable, warnings do not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// A 1-based position in a source file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, col: 1 };

    pub fn new(line: usize, col: usize) -> Pos {
        Pos {
            line: line.max(1),
            col: col.max(1),
        }
    }
}

/// One problem found in a policy file, pointing at the offending key or value.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub severity: Severity,
    pub message: String,
}

impl Finding {
    pub fn new(
        file: impl Into<PathBuf>,
        pos: Pos,
        severity: Severity,
        message: impl Into<String>,
    ) -> Finding {
        Finding {
            file: file.into(),
            line: pos.line,
            col: pos.col,
            severity,
            message: message.into(),
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// The order findings are printed in: by file, then position, errors first.
    fn sort_key(&self) -> (&PathBuf, usize, usize, Severity, &str) {
        (
            &self.file,
            self.line,
            self.col,
            self.severity,
            self.message.as_str(),
        )
    }
}

impl PartialOrd for Finding {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Finding {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.sort_key().cmp(&other.sort_key())
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.severity,
            self.message
        )
    }
}

/// Sorts findings for printing and drops exact duplicates.
pub fn sort(findings: &mut Vec<Finding>) {
    findings.sort();
    findings.dedup();
}

/// Counts (errors, warnings).
pub fn count(findings: &[Finding]) -> (usize, usize) {
    let errors = findings.iter().filter(|f| f.is_error()).count();
    (errors, findings.len() - errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_in_compiler_format() {
        let f = Finding::new(
            "policies/a.yaml",
            Pos::new(3, 7),
            Severity::Error,
            "spec.host: required",
        );
        assert_eq!(
            f.to_string(),
            "policies/a.yaml:3:7: error: spec.host: required"
        );
    }

    #[test]
    fn sorts_by_file_then_position() {
        let mut v = vec![
            Finding::new("b.yaml", Pos::new(1, 1), Severity::Warning, "x"),
            Finding::new("a.yaml", Pos::new(9, 1), Severity::Warning, "y"),
            Finding::new("a.yaml", Pos::new(2, 5), Severity::Error, "z"),
            Finding::new("a.yaml", Pos::new(2, 5), Severity::Error, "z"),
        ];
        sort(&mut v);
        let lines: Vec<String> = v.iter().map(|f| f.to_string()).collect();
        assert_eq!(
            lines,
            [
                "a.yaml:2:5: error: z",
                "a.yaml:9:1: warning: y",
                "b.yaml:1:1: warning: x"
            ]
        );
    }
}
