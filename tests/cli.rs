//! Command-line contract tests: `meshd exec` without a daemon, `meshd check`, `meshd run`
//! without root, and the Vagrantfile.

mod support;

use std::process::Command;

use support::{MESHD, ebpf_available};

#[test]
fn exec_without_a_daemon_fails_with_a_clear_message() {
    let out = Command::new(MESHD)
        .args([
            "exec",
            "--admin",
            "127.0.0.1:9",
            "--workload",
            "default/lonely",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no meshd daemon answers at 127.0.0.1:9"),
        "{err}"
    );
    assert!(
        err.contains("meshd run"),
        "the message says how to fix it: {err}"
    );
}

#[test]
fn exec_rejects_a_malformed_workload_name() {
    let out = Command::new(MESHD)
        .args(["exec", "--workload", "nonamespace", "--", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("NAMESPACE/NAME"), "{err}");
}

#[test]
fn check_probes_every_feature() {
    if !ebpf_available("check") {
        return;
    }
    let out = Command::new(MESHD).arg("check").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for feature in [
        "root privileges",
        "cgroup2 mount",
        "kernel BTF",
        "program sk_msg",
        "program sk_skb",
        "map sockhash",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("[ok") && l.contains(feature)),
            "{feature}: {text}"
        );
    }
    assert!(text.contains("meshd programs pass the verifier"), "{text}");
}

#[test]
fn run_without_root_fails_clearly() {
    if !ebpf_available("not_root") {
        return;
    }
    // setpriv (util-linux) drops to nobody for this one command.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            MESHD,
            "run",
            "--config",
            "/",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs root"), "{err}");
}

#[test]
fn a_missing_config_path_is_bad_input() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: meshd run checks for root before its config");
        return;
    }
    let out = Command::new(MESHD)
        .args(["run", "--config", "/nonexistent/meshd-policies"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(64),
        "the exit code of other bad input"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config path /nonexistent/meshd-policies does not exist"),
        "{err}"
    );
}

#[test]
fn bad_flags_are_rejected_with_the_flag_named() {
    let out = Command::new(MESHD)
        .args(["run", "--heartbeat-timeout", "3 seconds"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--heartbeat-timeout") && err.contains("3 seconds"),
        "{err}"
    );
}

#[test]
fn vagrantfile_validates() {
    let vagrant = Command::new("vagrant").arg("--version").output();
    if vagrant.is_err() {
        if std::env::var("MESHD_REQUIRE_EBPF").as_deref() == Ok("1") {
            panic!("vagrant is not installed; `cargo xtask setup --test-deps` installs it");
        }
        eprintln!("skipping vagrantfile_validates: vagrant is not installed");
        return;
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = Command::new("vagrant")
        .args(["validate", "--ignore-provider"])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "vagrant validate: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
