//! `cargo xtask setup`: rust-src for nightly, bpf-linker built against nightly's own libLLVM
//! under target/, and (with --test-deps) the Debian packages the tests use and kubernetes-validate
//! in a Python venv under target/. Idempotent.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

use crate::util::{output, root, run as sh, step, succeeds};

pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// kubernetes-validate (PyPI), which checks deploy/kubernetes against the Kubernetes OpenAPI
/// schemas offline. tests/deploy.rs validates against the newest Kubernetes this release knows.
pub const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";

/// Debian packages the test suite drives: real clients (curl, nghttp and h2load), a real Redis
/// for the global rate limit, a real Prometheus (and promtool) scraping meshd, the netns tooling,
/// tcpdump (the LAN tests check what crossed the wire), vagrant (for `vagrant validate`),
/// python3-venv (the venv that holds kubernetes-validate) and openssl (a TLS client and server
/// for the SNI routing and TLS origination tests).
const TEST_PACKAGES: &[&str] = &[
    "curl",
    "openssl",
    "python3",
    "python3-venv",
    "iproute2",
    "tcpdump",
    "procps",
    "util-linux",
    "vagrant",
    "nghttp2-client",
    "wrk",
    "nginx",
    "haproxy",
    "tinyproxy",
    "redis-server",
    "prometheus",
];

/// Where bpf-linker and its libLLVM links live.
pub fn tools_dir() -> PathBuf {
    root().join("target/bpf-linker")
}

pub fn bpf_linker() -> PathBuf {
    tools_dir().join("bin/bpf-linker")
}

pub fn run(test_deps: bool) -> Result<()> {
    rust_src()?;
    bpf_linker_installed()?;
    if test_deps {
        test_packages()?;
    }
    Ok(())
}

/// The Debian packages the test suite drives, and its Python tools.
pub fn test_packages() -> Result<()> {
    debian_packages(TEST_PACKAGES)?;
    // A test takes a socket out of meshd's SOCKHASH with bpftool. Debian packages it on its
    // own; an Ubuntu release that ships it only with its kernel tools skips that test.
    if let Err(e) = debian_packages(&["bpftool"]) {
        step(&format!(
            "bpftool not installed ({e:#}); the test that needs it will skip"
        ));
    }
    kubernetes_validate()
}

/// The venv that holds the test suite's Python tools.
pub fn pyvenv() -> PathBuf {
    root().join("target/pyvenv")
}

/// kubernetes-validate at its pinned version in target/pyvenv; a venv with another version, or
/// a broken one, is recreated.
fn kubernetes_validate() -> Result<()> {
    let venv = pyvenv();
    let bin = venv.join("bin/kubernetes-validate");
    let installed = output(Command::new(&bin).arg("--version"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    if installed == KUBERNETES_VALIDATE_VERSION {
        step(&format!(
            "kubernetes-validate {KUBERNETES_VALIDATE_VERSION}: already installed in {}",
            venv.display()
        ));
        return Ok(());
    }
    step(&format!(
        "installing kubernetes-validate {KUBERNETES_VALIDATE_VERSION} into {} (validates \
         deploy/kubernetes offline)",
        venv.display()
    ));
    sh(Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(&venv))
    .context("creating the venv; on Debian it needs the python3-venv package")?;
    sh(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        &format!("kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}"),
    ]))
    .context("installing kubernetes-validate from PyPI")
}

fn rust_src() -> Result<()> {
    if !succeeds(Command::new("rustup").arg("--version")) {
        bail!("rustup is not installed; meshd needs rustup with a stable and a nightly toolchain");
    }
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        bail!(
            "the eBPF programs build with nightly, which is not installed: run \
             `rustup toolchain install nightly --component rust-src`"
        );
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        step("rust-src for nightly: already installed");
        return Ok(());
    }
    step("installing rust-src for nightly (build-std needs it)");
    sh(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker_installed() -> Result<()> {
    let bin = bpf_linker();
    if bin.exists() && succeeds(Command::new(&bin).arg("--version")) {
        step(&format!("bpf-linker: already built at {}", bin.display()));
        return Ok(());
    }
    step(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against nightly's libLLVM (about a minute)"
    ));
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    let llvm = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("nightly ships no libLLVM.so.* in {}", lib.display()))?;
    let major = llvm
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .unwrap_or_default()
        .to_string();
    let prefix = tools_dir().join("llvm");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for name in ["libLLVM.so".to_string(), llvm.clone()] {
        let link = prefix_lib.join(&name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib.join(&llvm), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    sh(Command::new("cargo")
        .args([
            "+nightly",
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
        ])
        .args(["--features", &format!("llvm-{major}")])
        .arg("--root")
        .arg(tools_dir())
        .env("LLVM_PREFIX", &prefix))
    .context("building bpf-linker; it needs nightly's libLLVM and a C toolchain (gcc)")
}

/// Installs the Debian packages that are missing (one `apt-get update` first).
pub fn debian_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            let out = Command::new("dpkg-query").args(["-W", "-f=${Status}", p]).output();
            !matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        step(&format!("Debian packages present: {}", packages.join(" ")));
        return Ok(());
    }
    if !crate::util::is_root() {
        bail!(
            "missing Debian packages {missing:?}: install them with `apt-get install {}`",
            missing.join(" ")
        );
    }
    step(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    sh(Command::new("apt-get").arg("update").arg("-q"))?;
    sh(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}
