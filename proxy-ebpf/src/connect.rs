//! cgroup/connect4 and cgroup/connect6: send managed TCP connects to meshd's outbound listener
//! and remember where they were going.

use aya_ebpf::{
    EbpfContext,
    bindings::bpf_sock_addr,
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_netns_cookie,
        bpf_get_socket_cookie, bpf_ktime_get_ns,
    },
    maps::lpm_trie::Key,
};
use proxy_common::{
    AF_INET, AF_INET6, ConnStats, Counter, Endpoint, OrigDst, ProxyConfig, WorkloadRef, decide,
    decide::ConnectVerdict,
};

use crate::{
    counters::bump,
    maps::{
        CONFIG, CONN_STATS, EXCLUDED_PORTS, EXCLUDED_V4, EXCLUDED_V6, HEARTBEAT, ORIG_BY_COOKIE,
    },
};

const SOCK_STREAM: u32 = 1;
const IPPROTO_TCP: u32 = 6;
/// 127.0.0.1 in network byte order.
const LOOPBACK_V4: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
/// ::1 in network byte order.
const LOOPBACK_V6: [u32; 4] = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];

/// Allow the connect (possibly rewritten). Returning 0 makes connect() fail with EPERM.
const ALLOW: i32 = 1;
const DENY: i32 = 0;

pub fn try_connect4(ctx: &SockAddrContext) -> Result<i32, i32> {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands a valid bpf_sock_addr to every cgroup/connect4 run.
    let (ip, port) = unsafe { ((*sa).user_ip4, (*sa).user_port) };
    let dst = Endpoint {
        ip: [ip, 0, 0, 0],
        port: u16::from_be(port as u16) as u32,
        family: AF_INET,
    };
    let Some(cfg) = prepare(ctx, &dst)? else {
        return Ok(ALLOW);
    };
    // SAFETY: 4-byte stores to writable bpf_sock_addr fields (see ebpf-toolchain notes).
    unsafe {
        core::ptr::write_volatile(&mut (*sa).user_ip4, LOOPBACK_V4);
        core::ptr::write_volatile(
            &mut (*sa).user_port,
            (cfg.outbound_port as u16).to_be() as u32,
        );
    }
    Ok(ALLOW)
}

pub fn try_connect6(ctx: &SockAddrContext) -> Result<i32, i32> {
    let sa = ctx.sock_addr;
    // SAFETY: as above, for cgroup/connect6.
    // Each word read on its own: copying the array makes LLVM hoist `ctx + 8`, which the
    // verifier rejects.
    let (ip, port) = unsafe {
        (
            [
                core::ptr::read_volatile(&(*sa).user_ip6[0]),
                core::ptr::read_volatile(&(*sa).user_ip6[1]),
                core::ptr::read_volatile(&(*sa).user_ip6[2]),
                core::ptr::read_volatile(&(*sa).user_ip6[3]),
            ],
            core::ptr::read_volatile(&(*sa).user_port),
        )
    };
    let dst = Endpoint {
        ip,
        port: u16::from_be(port as u16) as u32,
        family: AF_INET6,
    };
    let Some(cfg) = prepare(ctx, &dst)? else {
        return Ok(ALLOW);
    };
    // SAFETY: each user_ip6 word and user_port written with its own 4-byte store.
    unsafe {
        core::ptr::write_volatile(&mut (*sa).user_ip6[0], LOOPBACK_V6[0]);
        core::ptr::write_volatile(&mut (*sa).user_ip6[1], LOOPBACK_V6[1]);
        core::ptr::write_volatile(&mut (*sa).user_ip6[2], LOOPBACK_V6[2]);
        core::ptr::write_volatile(&mut (*sa).user_ip6[3], LOOPBACK_V6[3]);
        core::ptr::write_volatile(
            &mut (*sa).user_port,
            (cfg.outbound_port as u16).to_be() as u32,
        );
    }
    Ok(ALLOW)
}

/// Decide what to do with a connect. `Ok(Some(cfg))` means: redirect (the original
/// destination is already recorded). `Ok(None)` means: leave it alone. `Err(DENY)` refuses it.
#[inline(always)]
fn prepare(ctx: &SockAddrContext, dst: &Endpoint) -> Result<Option<ProxyConfig>, i32> {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: valid context pointer for the whole program run.
    let (ty, proto) = unsafe { ((*sa).type_, (*sa).protocol) };
    if ty != SOCK_STREAM || proto != IPPROTO_TCP {
        return Ok(None);
    }
    let Some(cfg) = CONFIG.get(0).copied() else {
        return Ok(None);
    };
    // SAFETY: plain helper calls valid in cgroup/connect programs.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    if cgroup == cfg.meshd_cgroup {
        // meshd's own upstream connection: never redirected, but counted per connection.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        let _ = CONN_STATS.insert(cookie, ConnStats::default(), 0);
        return Ok(None);
    }
    let Some(workload) = managed(cgroup) else {
        return Ok(None);
    };
    // SAFETY: helper valid for sock_addr programs; it reads the socket's namespace.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    if decide::stays_in_pod(
        decide::is_loopback(dst.family, &dst.ip),
        netns == cfg.meshd_netns,
    ) {
        bump(Counter::Excluded);
        return Ok(None);
    }
    crate::deny::check(workload.workload_id, dst)?;

    let now = unsafe { bpf_ktime_get_ns() };
    let beat = HEARTBEAT.get(0).copied().unwrap_or(0);
    let stale = decide::heartbeat_stale(now, beat, cfg.heartbeat_timeout_ns);
    let fail_closed = cfg.flags & proxy_common::CFG_FAIL_CLOSED != 0;
    match decide::connect_verdict(excluded(dst), stale, fail_closed) {
        ConnectVerdict::Excluded => {
            bump(Counter::Excluded);
            Ok(None)
        }
        ConnectVerdict::FailOpen => {
            bump(Counter::FailOpen);
            Ok(None)
        }
        ConnectVerdict::Deny => {
            bump(Counter::FailClosed);
            Err(DENY)
        }
        ConnectVerdict::Redirect => {
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            let orig = OrigDst {
                dst: *dst,
                workload_id: workload.workload_id,
                _pad: 0,
            };
            if ORIG_BY_COOKIE.insert(cookie, orig, 0).is_err() {
                // Without the record meshd could not find the destination: connect directly.
                return Ok(None);
            }
            bump(Counter::Redirect);
            Ok(Some(cfg))
        }
    }
}

/// The workload of the calling task's cgroup, or of its nearest enrolled ancestor.
#[inline(always)]
fn managed(cgroup: u64) -> Option<WorkloadRef> {
    // SAFETY: the helper is valid in cgroup/connect programs.
    crate::enrolled::find(cgroup, |level| unsafe {
        bpf_get_current_ancestor_cgroup_id(level)
    })
    .map(|e| e.workload)
}

#[inline(always)]
fn excluded(dst: &Endpoint) -> bool {
    // SAFETY: read-only lookups.
    if unsafe { EXCLUDED_PORTS.get(dst.port) }.is_some() {
        return true;
    }
    if dst.family == AF_INET {
        let key = Key::new(32, dst.ip[0].to_ne_bytes());
        EXCLUDED_V4.get(&key).is_some()
    } else {
        let mut bytes = [0u8; 16];
        let mut i = 0;
        while i < 4 {
            let w = dst.ip[i].to_ne_bytes();
            bytes[i * 4] = w[0];
            bytes[i * 4 + 1] = w[1];
            bytes[i * 4 + 2] = w[2];
            bytes[i * 4 + 3] = w[3];
            i += 1;
        }
        let key = Key::new(128, bytes);
        EXCLUDED_V6.get(&key).is_some()
    }
}

use aya_ebpf::programs::SockAddrContext;
