//! Locates the eBPF object built by `cargo xtask build-ebpf` so `src/ebpf/object.rs` can embed it.

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let object = std::env::var_os("MESHD_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            manifest.join("../proxy-ebpf/target/bpfel-unknown-none/release/proxy-ebpf")
        });
    println!("cargo:rerun-if-env-changed=MESHD_EBPF_OBJECT");
    println!("cargo:rerun-if-changed={}", object.display());
    if !object.exists() {
        panic!(
            "\n\nmeshd embeds its eBPF programs, but the object {} does not exist.\n\
             Build it first with:\n\n    cargo xtask build-ebpf\n\n\
             (or point MESHD_EBPF_OBJECT at a prebuilt object)\n",
            object.display()
        );
    }
    println!(
        "cargo:rustc-env=MESHD_EBPF_OBJECT={}",
        object.canonicalize().unwrap().display()
    );
}
