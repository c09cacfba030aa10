//! cgroup_skb ingress/egress: bytes and packets of meshd's own sockets that take the TCP path.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_socket_cookie, bpf_skb_cgroup_id},
    programs::SkBuffContext,
};

use crate::maps::{CONFIG, CONN_STATS};

pub enum Direction {
    Ingress,
    Egress,
}

#[inline(always)]
pub fn count(ctx: &SkBuffContext, dir: Direction) {
    // Only meshd's sockets are counted, and every workload packet below the attach point runs
    // this program: the cgroup test (an array read and a field load) spares those packets the
    // cookie and the hash lookup.
    let Some(cfg) = CONFIG.get(0) else {
        return;
    };
    // SAFETY: helper valid in cgroup_skb; the context pointer is the program's.
    if unsafe { bpf_skb_cgroup_id(ctx.skb.skb) } != cfg.meshd_cgroup {
        return;
    }
    // SAFETY: helper valid for cgroup_skb programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(stats) = CONN_STATS.get_ptr_mut(cookie) else {
        return;
    };
    let len = ctx.len() as u64;
    // SAFETY: per-CPU value; only this CPU writes it during the program run.
    unsafe {
        match dir {
            Direction::Ingress => {
                (*stats).rx_bytes += len;
                (*stats).rx_packets += 1;
            }
            Direction::Egress => {
                (*stats).tx_bytes += len;
                (*stats).tx_packets += 1;
            }
        }
    }
}
