//! `meshd check`: probes the kernel and host for every feature meshd needs and says how to fix
//! what is missing.

use std::{path::Path, process::ExitCode};

use aya::{maps::MapType, programs::ProgramType};

struct Probe {
    name: String,
    ok: bool,
    required: bool,
    detail: String,
    fix: &'static str,
}

fn probe(name: impl Into<String>, ok: bool, detail: impl Into<String>, fix: &'static str) -> Probe {
    Probe {
        name: name.into(),
        ok,
        required: true,
        detail: detail.into(),
        fix,
    }
}

pub fn run() -> ExitCode {
    let probes = probes();
    let mut failed = 0;
    for p in &probes {
        let mark = match (p.ok, p.required) {
            (true, _) => "ok     ",
            (false, true) => "MISSING",
            (false, false) => "absent ",
        };
        println!("[{mark}] {:<34} {}", p.name, p.detail);
        if !p.ok {
            println!("          fix: {}", p.fix);
            if p.required {
                failed += 1;
            }
        }
    }
    if failed == 0 {
        println!(
            "all {} required features are present",
            probes.iter().filter(|p| p.required).count()
        );
        ExitCode::SUCCESS
    } else {
        println!("{failed} required feature(s) missing");
        ExitCode::FAILURE
    }
}

fn probes() -> Vec<Probe> {
    let mut out = Vec::new();
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let root = uid == 0;
    out.push(probe(
        "root privileges",
        root,
        format!("uid {uid}"),
        "run as root, or grant CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN",
    ));
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let version = kernel_version(release.trim());
    out.push(probe(
        "kernel >= 5.8",
        version >= (5, 8),
        format!("running {}", release.trim()),
        "upgrade the kernel: cgroup getpeername hooks and bpf_link need 5.8",
    ));
    match crate::cgroup::cgroup2_mount() {
        Ok(m) => out.push(probe("cgroup2 mount", true, m.display().to_string(), "")),
        Err(e) => out.push(probe(
            "cgroup2 mount",
            false,
            e.to_string(),
            "mount -t cgroup2 none /sys/fs/cgroup/unified",
        )),
    }
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    out.push(probe(
        "kernel BTF",
        btf,
        "/sys/kernel/btf/vmlinux",
        "use a kernel built with CONFIG_DEBUG_INFO_BTF=y",
    ));
    let bpffs = std::fs::read_to_string("/proc/self/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(2) == Some("bpf"))
        })
        .unwrap_or(false);
    out.push(Probe {
        name: "bpffs (optional)".into(),
        ok: bpffs,
        required: false,
        detail: "needed only to pin maps across restarts".into(),
        fix: "mount -t bpf bpf /sys/fs/bpf",
    });
    if !root {
        out.push(probe(
            "program and map types",
            false,
            "not probed without root",
            "run `meshd check` as root",
        ));
        return out;
    }
    for (name, ty) in [
        ("program cgroup_sock_addr", ProgramType::CgroupSockAddr),
        ("program sock_ops", ProgramType::SockOps),
        ("program sk_msg", ProgramType::SkMsg),
        ("program sk_skb", ProgramType::SkSkb),
        ("program cgroup_sockopt", ProgramType::CgroupSockopt),
        ("program cgroup_skb", ProgramType::CgroupSkb),
    ] {
        let r = aya::sys::is_program_supported(ty);
        out.push(probe(
            name,
            matches!(r, Ok(true)),
            support_text(&r),
            "enable CONFIG_BPF, CONFIG_CGROUP_BPF and CONFIG_BPF_STREAM_PARSER",
        ));
    }
    for (name, ty) in [
        ("map hash", MapType::Hash),
        ("map array", MapType::Array),
        ("map lru_hash", MapType::LruHash),
        ("map lru_percpu_hash", MapType::LruPerCpuHash),
        ("map percpu_array", MapType::PerCpuArray),
        ("map lpm_trie", MapType::LpmTrie),
        ("map sockhash", MapType::SockHash),
    ] {
        let r = aya::sys::is_map_supported(ty);
        out.push(probe(
            name,
            matches!(r, Ok(true)),
            support_text(&r),
            "enable CONFIG_BPF_SYSCALL and CONFIG_BPF_STREAM_PARSER",
        ));
    }
    match crate::ebpf::verify_programs() {
        Ok(n) => out.push(probe(
            "meshd programs pass the verifier",
            true,
            format!("{n} programs loaded"),
            "",
        )),
        Err(e) => out.push(probe(
            "meshd programs pass the verifier",
            false,
            e.to_string(),
            "report this with the verifier log above; the kernel rejects a meshd program",
        )),
    }
    out
}

fn kernel_version(release: &str) -> (u32, u32) {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok());
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// What a kernel feature probe found, in words.
fn support_text<E: std::fmt::Display>(r: &Result<bool, E>) -> String {
    match r {
        Ok(true) => "supported".into(),
        Ok(false) => "not supported by this kernel".into(),
        Err(e) => format!("the probe failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_versions() {
        assert_eq!(super::kernel_version("6.18.44-fc-v657"), (6, 18));
        assert_eq!(super::kernel_version("5.4.0-150-generic"), (5, 4));
        assert_eq!(super::kernel_version(""), (0, 0));
    }
}
