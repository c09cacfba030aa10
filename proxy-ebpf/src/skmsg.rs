//! sk_msg: data written on one end of a workload↔meshd hop goes straight into the other end's
//! receive queue, skipping the TCP/IP stack. A miss falls back to TCP (never a drop).

use core::ptr::read_volatile;

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_INGRESS, sk_action::SK_PASS},
    helpers::bpf_get_netns_cookie,
    programs::SkMsgContext,
};
use proxy_common::{AF_INET, AF_INET6, Counter, SockPair};

use crate::{
    counters::bump,
    maps::{CONN_STATS, PAIR_COOKIE, SOCKHASH},
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
    let mut peer = me.peer();
    let ret = SOCKHASH.redirect_msg(ctx, &mut peer, BPF_F_INGRESS as u64);
    if ret == SK_PASS as i64 {
        bump(Counter::SockmapRedirect);
        account(&me, size as u64, true);
        account(&peer, size as u64, false);
    } else {
        bump(Counter::SockmapMiss);
    }
    Ok(SK_PASS)
}

/// Count a redirected message against meshd's socket at either end of the hop.
#[inline(always)]
fn account(pair: &SockPair, size: u64, sent: bool) {
    // SAFETY: read-only lookup, copied out.
    let Some(cookie) = (unsafe { PAIR_COOKIE.get(pair) }).copied() else {
        return;
    };
    let Some(stats) = CONN_STATS.get_ptr_mut(cookie) else {
        return;
    };
    // SAFETY: per-CPU value; only this CPU writes it during the program run.
    unsafe {
        if sent {
            (*stats).tx_bytes += size;
            (*stats).tx_packets += 1;
        } else {
            (*stats).rx_bytes += size;
            (*stats).rx_packets += 1;
        }
    }
}
