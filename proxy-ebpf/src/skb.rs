//! cgroup_skb ingress/egress: bytes and packets of meshd's own sockets that take the TCP path.

use aya_ebpf::{EbpfContext, helpers::bpf_get_socket_cookie, programs::SkBuffContext};

use crate::maps::CONN_STATS;

pub enum Direction {
    Ingress,
    Egress,
}

#[inline(always)]
pub fn count(ctx: &SkBuffContext, dir: Direction) {
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
