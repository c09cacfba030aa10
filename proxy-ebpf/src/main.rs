//! meshd's eBPF programs. Each hook here is a thin entry point; the logic lives in one module
//! per attach point, and the maps in `maps.rs`.
#![no_std]
#![no_main]

mod connect;
mod counters;
mod deny;
mod enrolled;
mod maps;
mod peerauth;
mod peername;
mod reply;
mod skb;
mod skmsg;
mod sockops;
mod sockopt;

use aya_ebpf::{
    macros::{cgroup_skb, cgroup_sock_addr, cgroup_sockopt, sk_msg, sock_ops, stream_verdict},
    programs::{SkBuffContext, SkMsgContext, SockAddrContext, SockOpsContext, SockoptContext},
};

#[cgroup_sock_addr(connect4)]
pub fn meshd_connect4(ctx: SockAddrContext) -> i32 {
    match connect::try_connect4(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

#[cgroup_sock_addr(connect6)]
pub fn meshd_connect6(ctx: SockAddrContext) -> i32 {
    match connect::try_connect6(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

#[cgroup_sock_addr(getpeername4)]
pub fn meshd_getpeername4(ctx: SockAddrContext) -> i32 {
    peername::try_getpeername4(&ctx);
    1
}

#[cgroup_sock_addr(getpeername6)]
pub fn meshd_getpeername6(ctx: SockAddrContext) -> i32 {
    peername::try_getpeername6(&ctx);
    1
}

#[sock_ops]
pub fn meshd_sockops(ctx: SockOpsContext) -> u32 {
    sockops::try_sockops(&ctx);
    1
}

#[sk_msg]
pub fn meshd_sk_msg(ctx: SkMsgContext) -> u32 {
    match skmsg::try_sk_msg(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

#[stream_verdict]
pub fn meshd_reply(ctx: SkBuffContext) -> u32 {
    reply::try_reply(&ctx)
}

#[cgroup_sockopt(getsockopt)]
pub fn meshd_getsockopt(ctx: SockoptContext) -> i32 {
    sockopt::try_getsockopt(&ctx);
    1
}

#[cgroup_skb]
pub fn meshd_skb_ingress(ctx: SkBuffContext) -> i32 {
    if !peerauth::allow(&ctx) {
        return 0;
    }
    skb::count(&ctx, skb::Direction::Ingress);
    1
}

#[cgroup_skb]
pub fn meshd_skb_egress(ctx: SkBuffContext) -> i32 {
    skb::count(&ctx, skb::Direction::Egress);
    1
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
