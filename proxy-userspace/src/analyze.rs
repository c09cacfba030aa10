//! `meshd analyze PATH...`: validate policies like `istioctl analyze`.

use std::process::ExitCode;

use crate::cli::AnalyzeArgs;

pub fn run(_args: AnalyzeArgs) -> ExitCode {
    eprintln!("meshd analyze: not implemented yet");
    ExitCode::from(2)
}
