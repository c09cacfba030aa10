//! The `meshd` binary: parse the command line and hand over to the subcommand.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = meshd::cli::Cli::parse();
    meshd::cli::run(cli)
}
