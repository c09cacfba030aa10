//! `meshd ca init`: create the built-in CA's root on disk.

use std::process::ExitCode;

use super::{Ca, IdentityError, ca, error::timestamp, x509};
use crate::cli::{CaArgs, CaCommand, CaInitArgs};

pub fn run(args: CaArgs) -> ExitCode {
    match args.command {
        CaCommand::Init(args) => match init(&args) {
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("meshd ca init: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Writes the CA and returns what to tell the operator.
fn init(args: &CaInitArgs) -> Result<String, IdentityError> {
    let ca = Ca::init(&args.dir, &args.trust_domain, args.force)?;
    let validity = x509::parse(ca.cert())?.validity().not_after;
    Ok(format!(
        "wrote {} and {} for trust domain {} (root valid until {}); keep {} secret",
        args.dir.join(ca::CA_KEY_FILE).display(),
        args.dir.join(ca::CA_CERT_FILE).display(),
        ca.trust_domain(),
        timestamp(x509::system_time(validity)),
        ca::CA_KEY_FILE,
    ))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{
        cli::{Cli, Command},
        identity::testutil::TempDir,
    };

    fn parse(args: &[&str]) -> CaInitArgs {
        let cli = Cli::try_parse_from([&["meshd", "ca", "init"], args].concat()).unwrap();
        match cli.command {
            Command::Ca(CaArgs {
                command: CaCommand::Init(args),
            }) => args,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn parses_with_defaults() {
        let args = parse(&["--dir", "/etc/meshd/ca"]);
        assert_eq!(args.dir.to_str(), Some("/etc/meshd/ca"));
        assert_eq!(args.trust_domain, "cluster.local");
        assert!(!args.force);
        let args = parse(&["--dir", "x", "--trust-domain", "example.org", "--force"]);
        assert_eq!(args.trust_domain, "example.org");
        assert!(args.force);
        assert!(
            Cli::try_parse_from(["meshd", "ca", "init"]).is_err(),
            "--dir is required"
        );
    }

    #[test]
    fn init_reports_and_refuses_a_second_time() {
        let tmp = TempDir::new("cmd");
        let dir = tmp.path().join("ca").display().to_string();
        let report = init(&parse(&["--dir", &dir])).unwrap();
        assert!(
            report.contains("ca.key") && report.contains("cluster.local"),
            "{report}"
        );
        let err = init(&parse(&["--dir", &dir])).unwrap_err().to_string();
        assert!(err.contains("refusing to overwrite"), "{err}");
        init(&parse(&["--dir", &dir, "--force"])).unwrap();
        let err = init(&parse(&["--dir", &dir, "--trust-domain", "a b", "--force"]));
        assert!(
            err.unwrap_err()
                .to_string()
                .contains("invalid trust domain")
        );
    }
}
