//! Fuzzes the policy loader and analyzer with arbitrary bytes: they must never panic, whatever
//! the input. Run with `cargo +nightly fuzz run policy` from this folder (the eBPF object must
//! be built first, or MESHD_EBPF_OBJECT set, as for any build of meshd).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Files that are not UTF-8 are refused before parsing; everything else is parsed.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(set) = meshd::policy::load_str("fuzz.yaml".as_ref(), text) {
        let _ = meshd::policy::analyze(&set);
    }
});
