//! `meshd analyze PATH...`: validate policies like `istioctl analyze`.
//!
//! Prints one `file:line:col: error|warning: message` per finding, sorted by file and line, then a
//! summary. Exits 0 without errors (warnings allowed), 1 with errors, 2 when input is unreadable.

use std::{io::Write, process::ExitCode};

use crate::{
    cli::AnalyzeArgs,
    policy::{self, finding},
};

const EXIT_ERRORS: u8 = 1;
const EXIT_UNREADABLE: u8 = 2;

pub fn run(args: AnalyzeArgs) -> ExitCode {
    let loaded = match policy::load_all(&args.paths) {
        Ok(l) => l,
        Err(errors) => {
            for e in &errors {
                eprintln!("meshd analyze: {e}");
            }
            return ExitCode::from(EXIT_UNREADABLE);
        }
    };
    let mut findings = loaded.findings.clone();
    let skipped = loaded.has_errors();
    if !skipped {
        findings.extend(policy::analyze(&loaded.set));
    }
    finding::sort(&mut findings);
    let (errors, warnings) = finding::count(&findings);

    let mut out = std::io::stdout().lock();
    for f in &findings {
        let _ = writeln!(out, "{f}");
    }
    let _ = writeln!(
        out,
        "{}",
        summary(
            loaded.set.files,
            loaded.set.len(),
            errors,
            warnings,
            skipped
        )
    );
    let _ = out.flush();
    if errors > 0 {
        ExitCode::from(EXIT_ERRORS)
    } else {
        ExitCode::SUCCESS
    }
}

fn summary(
    files: usize,
    resources: usize,
    errors: usize,
    warnings: usize,
    skipped: bool,
) -> String {
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let mut s = format!(
        "analyzed {} ({} valid {}): {}, {}",
        plural(files, "file"),
        resources,
        if resources == 1 {
            "resource"
        } else {
            "resources"
        },
        plural(errors, "error"),
        plural(warnings, "warning"),
    );
    if skipped {
        s.push_str("; cross-resource checks run once the errors are fixed");
    }
    if files == 0 {
        s.push_str("; no .yaml or .yml files found");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::summary;

    #[test]
    fn summary_reads_well() {
        assert_eq!(
            summary(3, 7, 0, 1, false),
            "analyzed 3 files (7 valid resources): 0 errors, 1 warning"
        );
        assert!(summary(1, 0, 2, 0, true).ends_with("run once the errors are fixed"));
    }
}
