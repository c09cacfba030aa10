//! sk_msg: data written on one end of a workload↔meshd hop goes straight into the other end's
//! receive queue, skipping the TCP/IP stack. A miss falls back to TCP (never a drop).
//!
//! Kernel splice: once meshd has put its upstream socket for an opaque connection in
//! `SPLICE_TO` and has forwarded every byte the workload handed it (`FORWARDED` equals the
//! handed count), the workload's next sends go straight out of the upstream socket, in order
//! after meshd's own writes, without waking meshd.

use core::ptr::read_volatile;

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_INGRESS, sk_action::SK_PASS},
    helpers::bpf_get_netns_cookie,
    programs::SkMsgContext,
};
use proxy_common::{
    AF_INET, AF_INET6, CFG_SPLICE, ConnStats, Counter, SockPair, SpliceCounts,
    decide::{HopSide, hop_side},
};

use crate::{
    counters::bump,
    maps::{CONFIG, CONN_STATS, FORWARDED, HANDED, PAIR_COOKIE, REPLY_SENT, SOCKHASH, SPLICE_TO},
};

pub fn try_sk_msg(ctx: &SkMsgContext) -> Result<u32, u32> {
    let md = ctx.msg;
    // SAFETY: valid sk_msg_md for the program run. Every field gets its own volatile load so
    // LLVM cannot hoist a modified ctx pointer (which the verifier rejects).
    let (family, size, l4, r4, l6, r6, lport, rport) = unsafe {
        (
            read_volatile(&(*md).family),
            read_volatile(&(*md).size),
            read_volatile(&(*md).local_ip4),
            read_volatile(&(*md).remote_ip4),
            [
                read_volatile(&(*md).local_ip6[0]),
                read_volatile(&(*md).local_ip6[1]),
                read_volatile(&(*md).local_ip6[2]),
                read_volatile(&(*md).local_ip6[3]),
            ],
            [
                read_volatile(&(*md).remote_ip6[0]),
                read_volatile(&(*md).remote_ip6[1]),
                read_volatile(&(*md).remote_ip6[2]),
                read_volatile(&(*md).remote_ip6[3]),
            ],
            read_volatile(&(*md).local_port),
            read_volatile(&(*md).remote_port),
        )
    };
    let (local_ip, remote_ip) = if family == AF_INET {
        ([l4, 0, 0, 0], [r4, 0, 0, 0])
    } else if family == AF_INET6 {
        (l6, r6)
    } else {
        return Ok(SK_PASS);
    };
    let me = SockPair {
        local_ip,
        remote_ip,
        local_port: lport,
        remote_port: u32::from_be(rport),
        family,
        _pad: 0,
        // SAFETY: helper valid for sk_msg programs; both ends of a hop share the namespace.
        netns: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
    };
    let size = size as u64;
    let mut peer = me.peer();
    let Some(cfg) = CONFIG.get(0) else {
        return Ok(SK_PASS);
    };
    // Only hop sockets are in the SOCKHASH: the workload's end (its peer is meshd's outbound
    // port) or meshd's. Each end's counters live with meshd's socket of the hop.
    let workload_side =
        hop_side(me.local_port, me.remote_port, cfg.outbound_port) == HopSide::Workload;
    // Splicing concerns the workload's end; with splicing off nothing is counted.
    let splicing = workload_side && cfg.flags & CFG_SPLICE != 0;
    if splicing && splice(ctx, &me, size) {
        bump(Counter::Splice);
        received(&peer, size);
        return Ok(SK_PASS);
    }
    let redirected = SOCKHASH.redirect_msg(ctx, &mut peer, BPF_F_INGRESS as u64) == SK_PASS as i64;
    if redirected {
        bump(Counter::SockmapRedirect);
    } else {
        bump(Counter::SockmapMiss);
    }
    if !workload_side {
        sent(&me, size, redirected);
    } else if redirected {
        received(&peer, size);
        if splicing {
            handed(&me, size);
        }
    }
    Ok(SK_PASS)
}

/// Redirects the message out of meshd's upstream socket when meshd asked for it and holds none
/// of this socket's bytes; `false` leaves it to the usual hop.
#[inline(always)]
fn splice(ctx: &SkMsgContext, me: &SockPair, size: u64) -> bool {
    // SAFETY: read-only lookups, copied out.
    let Some(forwarded) = (unsafe { FORWARDED.get(me) }).copied() else {
        return false;
    };
    let Some(counts) = counts(me) else {
        return false;
    };
    // SAFETY: the entry stays valid for the program run; concurrent sends on one socket are
    // serialised by the socket lock.
    unsafe {
        if (*counts).handed != forwarded || !redirect_out(ctx, me) {
            return false;
        }
        (*counts).spliced += size;
    }
    true
}

#[inline(always)]
fn redirect_out(ctx: &SkMsgContext, me: &SockPair) -> bool {
    let mut key = *me;
    // No BPF_F_INGRESS: the data is sent on the upstream socket, not queued for reading.
    SPLICE_TO.redirect_msg(ctx, &mut key, 0) == SK_PASS as i64
}

/// Counts bytes handed to meshd from a workload socket.
#[inline(always)]
fn handed(me: &SockPair, size: u64) {
    if let Some(c) = counts(me) {
        // SAFETY: as in `splice`.
        unsafe { (*c).handed += size };
    }
}

/// The workload socket's counts, created at zero when sockops did not (or LRU eviction
/// dropped them).
#[inline(always)]
fn counts(me: &SockPair) -> Option<*mut SpliceCounts> {
    if let Some(c) = HANDED.get_ptr_mut(me) {
        return Some(c);
    }
    let _ = HANDED.insert(me, SpliceCounts::default(), 0);
    HANDED.get_ptr_mut(me)
}

/// meshd's counters for its socket with this 4-tuple; `None` for a workload's socket.
#[inline(always)]
fn meshd_stats(pair: &SockPair) -> Option<*mut ConnStats> {
    // SAFETY: read-only lookup, copied out.
    let cookie = (unsafe { PAIR_COOKIE.get(pair) }).copied()?;
    CONN_STATS.get_ptr_mut(cookie)
}

/// Counts a message redirected into meshd's socket.
#[inline(always)]
fn received(pair: &SockPair, size: u64) {
    if let Some(stats) = meshd_stats(pair) {
        // SAFETY: per-CPU value; only this CPU writes it during the program run.
        unsafe {
            (*stats).rx_bytes += size;
            (*stats).rx_packets += 1;
        }
    }
}

/// Counts a message sent from meshd's socket: as traffic when redirected (cgroup_skb counts the
/// others on their way out), and, for a spliced connection, in `REPLY_SENT` either way (meshd
/// waits on it before passing on the end of the replies).
#[inline(always)]
fn sent(me: &SockPair, size: u64, redirected: bool) {
    if let Some(total) = REPLY_SENT.get_ptr_mut(me) {
        // SAFETY: sends on one socket run one at a time, under its lock.
        unsafe { *total += size };
    }
    if !redirected {
        return;
    }
    if let Some(stats) = meshd_stats(me) {
        // SAFETY: as in `received`.
        unsafe {
            (*stats).tx_bytes += size;
            (*stats).tx_packets += 1;
        }
    }
}
