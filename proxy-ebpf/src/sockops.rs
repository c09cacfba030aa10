//! sockops: when a workload↔meshd hop is established, record the original destination by the
//! workload's address, put both ends into the SOCKHASH, and keep meshd's per-connection TCP
//! figures (RTT, retransmits, bytes acked and received) up to date.

use core::ptr::read_volatile;

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_ANY, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_RETRANS_CB, BPF_SOCK_OPS_RETRANS_CB_FLAG, BPF_SOCK_OPS_RTT_CB,
        BPF_SOCK_OPS_RTT_CB_FLAG, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_TCP_CLOSE,
    },
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockOpsContext,
};
use proxy_common::{
    AF_INET, AF_INET6, CFG_SOCKMAP, CFG_SPLICE, ConnStats, Endpoint, NetnsEndpoint, SockPair,
    SpliceCounts,
    decide::{HopSide, hop_side},
};

use crate::maps::{
    CONFIG, CONN_STATS, FORWARDED, HANDED, ORIG_BY_COOKIE, ORIG_BY_TUPLE, PAIR_COOKIE, SOCKHASH,
};

const STATS_FLAGS: i32 =
    (BPF_SOCK_OPS_RTT_CB_FLAG | BPF_SOCK_OPS_RETRANS_CB_FLAG | BPF_SOCK_OPS_STATE_CB_FLAG) as i32;

pub fn try_sockops(ctx: &SockOpsContext) {
    let op = ctx.op();
    if op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB || op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        established(ctx, op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB);
    } else if op == BPF_SOCK_OPS_RTT_CB || op == BPF_SOCK_OPS_RETRANS_CB {
        snapshot(ctx, cookie(ctx));
    } else if op == BPF_SOCK_OPS_STATE_CB && ctx.arg(1) == BPF_TCP_CLOSE {
        closed(ctx);
    }
}

#[inline(always)]
fn cookie(ctx: &SockOpsContext) -> u64 {
    // SAFETY: helper valid for sock_ops programs.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// The socket's 4-tuple, local side first, ports in host order.
///
/// Every field is read unconditionally with its own volatile load: when LLVM hoists a shared
/// `ctx + offset` into a register, the verifier rejects the access ("dereference of modified
/// ctx ptr").
#[inline(always)]
pub fn pair(ctx: &SockOpsContext) -> Option<SockPair> {
    let ops = ctx.ops;
    // SAFETY: valid bpf_sock_ops for the program run; each read is a plain 4-byte ctx load.
    let (family, l4, r4, l6, r6, lport, rport) = unsafe {
        (
            read_volatile(&(*ops).family),
            read_volatile(&(*ops).local_ip4),
            read_volatile(&(*ops).remote_ip4),
            [
                read_volatile(&(*ops).local_ip6[0]),
                read_volatile(&(*ops).local_ip6[1]),
                read_volatile(&(*ops).local_ip6[2]),
                read_volatile(&(*ops).local_ip6[3]),
            ],
            [
                read_volatile(&(*ops).remote_ip6[0]),
                read_volatile(&(*ops).remote_ip6[1]),
                read_volatile(&(*ops).remote_ip6[2]),
                read_volatile(&(*ops).remote_ip6[3]),
            ],
            read_volatile(&(*ops).local_port),
            read_volatile(&(*ops).remote_port),
        )
    };
    let (local_ip, remote_ip) = if family == AF_INET {
        ([l4, 0, 0, 0], [r4, 0, 0, 0])
    } else if family == AF_INET6 {
        (l6, r6)
    } else {
        return None;
    };
    // SAFETY: helper valid for sock_ops programs; it reads the socket's own namespace.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    Some(SockPair {
        local_ip,
        remote_ip,
        local_port: lport,
        remote_port: u32::from_be(rport),
        family,
        _pad: 0,
        netns,
    })
}

fn established(ctx: &SockOpsContext, active: bool) {
    let Some(cfg) = CONFIG.get(0).copied() else {
        return;
    };
    let Some(mut pair) = pair(ctx) else { return };
    let cookie = cookie(ctx);
    let sockmap = cfg.flags & CFG_SOCKMAP != 0;
    match hop_side(pair.local_port, pair.remote_port, cfg.outbound_port) {
        HopSide::Workload if active => {
            // SAFETY: read-only lookup, copied out.
            let Some(orig) = (unsafe { ORIG_BY_COOKIE.get(cookie) }).copied() else {
                return;
            };
            let me = NetnsEndpoint {
                netns: pair.netns,
                ep: Endpoint {
                    ip: pair.local_ip,
                    port: pair.local_port,
                    family: pair.family,
                },
            };
            let _ = ORIG_BY_TUPLE.insert(me, orig, 0);
            if sockmap {
                let splice = cfg.flags & CFG_SPLICE != 0;
                if splice {
                    // A new connection counts from zero, whatever an earlier one with the same
                    // 4-tuple left behind.
                    let _ = HANDED.insert(pair, SpliceCounts::default(), 0);
                }
                let joined = SOCKHASH.update(&mut pair, unsafe { &mut *ctx.ops }, BPF_ANY as u64);
                if joined.is_err() && splice {
                    // meshd offers a splice only for a workload socket with counts: one in
                    // the SOCKHASH.
                    let _ = HANDED.remove(pair);
                }
            }
            let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
        }
        HopSide::Meshd if !active => {
            let _ = CONN_STATS.insert(cookie, ConnStats::default(), 0);
            if sockmap {
                let _ = PAIR_COOKIE.insert(pair, cookie, 0);
                if SOCKHASH
                    .update(&mut pair, unsafe { &mut *ctx.ops }, BPF_ANY as u64)
                    .is_err()
                {
                    // PAIR_COOKIE names meshd's sockets in the SOCKHASH, and only those.
                    let _ = PAIR_COOKIE.remove(pair);
                }
            }
            let _ = ctx.set_cb_flags(STATS_FLAGS);
        }
        _ if active
            // meshd's upstream sockets were registered by connect4/6.
            && CONN_STATS.get_ptr_mut(cookie).is_some() =>
        {
            let _ = ctx.set_cb_flags(STATS_FLAGS);
            snapshot(ctx, cookie);
        }
        _ => {}
    }
}

#[inline(always)]
fn snapshot(ctx: &SockOpsContext, cookie: u64) {
    let Some(stats) = CONN_STATS.get_ptr_mut(cookie) else {
        return;
    };
    let ops = ctx.ops;
    // SAFETY: per-CPU value of a live entry; the sock_ops fields read 0 on non-full sockets.
    unsafe {
        (*stats).srtt_us = (read_volatile(&(*ops).srtt_us) >> 3) as u64;
        (*stats).retransmits = read_volatile(&(*ops).total_retrans) as u64;
        (*stats).bytes_acked = read_volatile(&(*ops).bytes_acked);
        (*stats).bytes_received = read_volatile(&(*ops).bytes_received);
    }
}

fn closed(ctx: &SockOpsContext) {
    let cookie = cookie(ctx);
    snapshot(ctx, cookie);
    let _ = ORIG_BY_COOKIE.remove(cookie);
    if let Some(pair) = pair(ctx) {
        let _ = PAIR_COOKIE.remove(pair);
        // HANDED stays: meshd reads the spliced count after the workload has closed, then
        // removes it (or LRU eviction does).
        let _ = FORWARDED.remove(pair);
    }
}
