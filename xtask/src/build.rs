//! `cargo xtask build-ebpf` and `cargo xtask build`.

use std::process::Command;

use anyhow::Result;

use crate::{
    setup,
    util::{root, run, step, target_dir},
};

/// The object meshd embeds.
pub fn ebpf_object() -> std::path::PathBuf {
    root().join("proxy-ebpf/target/bpfel-unknown-none/release/proxy-ebpf")
}

pub fn ebpf() -> Result<()> {
    setup::run(false)?;
    step("building the eBPF programs (proxy-ebpf, nightly, bpfel-unknown-none)");
    run(Command::new("cargo")
        .args(["+nightly", "build", "--release"])
        .current_dir(root().join("proxy-ebpf"))
        .env("PATH", ebpf_path())
        // The object must land where meshd's build script looks for it, whatever the outer
        // CARGO_TARGET_DIR.
        .env("CARGO_TARGET_DIR", root().join("proxy-ebpf/target"))
        // A cargo invoked from `cargo xtask` inherits the outer toolchain; let rust-toolchain.toml
        // and the +nightly above decide instead.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("CARGO"))?;
    eprintln!("    built {}", ebpf_object().display());
    Ok(())
}

/// PATH with bpf-linker in front, for cargo runs in proxy-ebpf.
pub fn ebpf_path() -> String {
    format!(
        "{}:{}",
        setup::tools_dir().join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

pub fn all() -> Result<()> {
    // meshd's build script embeds MESHD_EBPF_OBJECT when it is set, so there is nothing to
    // build with nightly then.
    match std::env::var_os("MESHD_EBPF_OBJECT") {
        Some(object) => eprintln!(
            "    using the prebuilt eBPF object {} (MESHD_EBPF_OBJECT)",
            std::path::Path::new(&object).display()
        ),
        None => ebpf()?,
    }
    step("building meshd (release)");
    run(Command::new("cargo")
        .args(["build", "--release", "-p", "meshd"])
        .current_dir(root()))?;
    eprintln!("    built {}", meshd_release().display());
    Ok(())
}

/// Builds the minimal hyper proxy that `bench http` measures as the engine's floor.
pub fn hyper_floor() -> Result<()> {
    step("building the hyper floor proxy (release example)");
    run(Command::new("cargo")
        .args([
            "build",
            "--release",
            "-p",
            "meshd",
            "--example",
            "hyper_floor",
        ])
        .current_dir(root()))
}

/// Where `hyper_floor` puts the engine's floor proxy.
pub fn hyper_floor_release() -> std::path::PathBuf {
    target_dir().join("release/examples/hyper_floor")
}

/// The release binary in cargo's target directory (which honours `CARGO_TARGET_DIR`).
pub fn meshd_release() -> std::path::PathBuf {
    target_dir().join("release/meshd")
}
