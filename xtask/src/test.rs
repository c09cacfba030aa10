//! `cargo xtask test`: the whole suite — formatting, clippy, unit tests and the end-to-end tests
//! that run meshd with real eBPF in real cgroups.

use std::process::Command;

use anyhow::Result;

use crate::{
    build, setup,
    util::{root, run as sh, step},
};

pub fn run_suite(extra: &[String]) -> Result<()> {
    step("checking formatting");
    sh(Command::new("cargo")
        .args(["fmt", "--all", "--check"])
        .current_dir(root()))?;
    sh(Command::new("cargo")
        .args(["+nightly", "fmt", "--check"])
        .current_dir(root().join("proxy-ebpf"))
        .env_remove("RUSTUP_TOOLCHAIN"))?;
    step("running clippy");
    sh(Command::new("cargo")
        .args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
        .current_dir(root()))?;
    sh(Command::new("cargo")
        .args(["+nightly", "clippy", "--release", "--", "-D", "warnings"])
        .current_dir(root().join("proxy-ebpf"))
        .env("PATH", crate::build::ebpf_path())
        .env("CARGO_TARGET_DIR", root().join("proxy-ebpf/target"))
        .env_remove("RUSTUP_TOOLCHAIN"))?;
    step("running the test suite");
    if std::env::var("MESHD_REQUIRE_EBPF").as_deref() == Ok("1") {
        eprintln!(
            "    MESHD_REQUIRE_EBPF=1: tests that need root, BPF or cgroup2 fail instead of skipping"
        );
    }
    sh(Command::new("cargo")
        .args(["test", "--workspace"])
        .args(extra)
        .current_dir(root()))
}

pub fn run(extra: &[String]) -> Result<()> {
    // build-ebpf runs the toolchain setup; the suite also needs its Debian packages.
    setup::test_packages()?;
    build::ebpf()?;
    run_suite(extra)
}
