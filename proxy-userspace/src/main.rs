//! The `meshd` binary: parse the command line and hand over to the subcommand.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = match meshd::cli::Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version go to stdout with status 0; a bad flag or value exits with
        // EX_USAGE, as a bad value that clap lets through does.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return std::process::ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return std::process::ExitCode::from(meshd::cli::EXIT_USAGE);
        }
    };
    meshd::cli::run(cli)
}
