//! The eBPF object built by `cargo xtask build-ebpf`, embedded into the binary.

/// The bytes of `proxy-ebpf`'s release build, aligned for the ELF parser.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("MESHD_EBPF_OBJECT"));
