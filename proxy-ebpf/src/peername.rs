//! cgroup/getpeername4 and getpeername6: a redirected workload socket reports its original
//! destination as its peer, not meshd's listener, so the redirect stays invisible.

use aya_ebpf::{EbpfContext, helpers::bpf_get_socket_cookie, programs::SockAddrContext};
use proxy_common::{AF_INET, AF_INET6, OrigDst};

use crate::maps::ORIG_BY_COOKIE;

#[inline(always)]
fn original(ctx: &SockAddrContext) -> Option<OrigDst> {
    // SAFETY: helper valid for sock_addr programs; the value is copied out.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    unsafe { ORIG_BY_COOKIE.get(cookie) }.copied()
}

pub fn try_getpeername4(ctx: &SockAddrContext) {
    let Some(orig) = original(ctx) else { return };
    if orig.dst.family != AF_INET {
        return;
    }
    let sa = ctx.sock_addr;
    // SAFETY: 4-byte stores to writable bpf_sock_addr fields.
    unsafe {
        core::ptr::write_volatile(&mut (*sa).user_ip4, orig.dst.ip[0]);
        core::ptr::write_volatile(&mut (*sa).user_port, (orig.dst.port as u16).to_be() as u32);
    }
}

pub fn try_getpeername6(ctx: &SockAddrContext) {
    let Some(orig) = original(ctx) else { return };
    let ip = if orig.dst.family == AF_INET6 {
        orig.dst.ip
    } else {
        // An IPv4 destination reached from a dual-stack socket: report it v4-mapped.
        [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), orig.dst.ip[0]]
    };
    let sa = ctx.sock_addr;
    // SAFETY: each word written with its own 4-byte store.
    unsafe {
        core::ptr::write_volatile(&mut (*sa).user_ip6[0], ip[0]);
        core::ptr::write_volatile(&mut (*sa).user_ip6[1], ip[1]);
        core::ptr::write_volatile(&mut (*sa).user_ip6[2], ip[2]);
        core::ptr::write_volatile(&mut (*sa).user_ip6[3], ip[3]);
        core::ptr::write_volatile(&mut (*sa).user_port, (orig.dst.port as u16).to_be() as u32);
    }
}
