//! Stream verdict on meshd's upstream sockets of kernel-spliced connections: the reply half of
//! the splice. While meshd holds none of the replies (the bytes it was handed equal the bytes it
//! has forwarded), each reply leaves through meshd's accepted socket of the same connection,
//! and from there sk_msg puts it into the workload's receive queue, without waking meshd.
//! Anything else is handed to meshd, which carries it as before.

use aya_ebpf::{
    EbpfContext, bindings::sk_action::SK_PASS, helpers::bpf_get_socket_cookie,
    programs::SkBuffContext,
};
use proxy_common::Counter;

use crate::{
    counters::bump,
    maps::{REPLY_COUNTS, REPLY_FORWARDED, REPLY_TO, SOCKHASH},
};

pub fn try_reply(ctx: &SkBuffContext) -> u32 {
    let len = ctx.len() as u64;
    if len == 0 {
        // A bare FIN: meshd sees the end the usual way.
        return SK_PASS;
    }
    // SAFETY: helper valid for sk_skb programs; the skb is owned by the upstream socket.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(counts) = REPLY_COUNTS.get_ptr_mut(cookie) else {
        return SK_PASS;
    };
    // SAFETY: read-only lookups, copied out.
    let forwarded = unsafe { REPLY_FORWARDED.get(cookie) }.copied();
    let down = unsafe { REPLY_TO.get(cookie) }.copied();
    // SAFETY: the entry stays valid for the program run; verdicts on one socket run one at a
    // time (under its lock).
    unsafe {
        if let (Some(forwarded), Some(mut down)) = (forwarded, down)
            && (*counts).handed == forwarded
            // No BPF_F_INGRESS: sent out of meshd's accepted socket, in order after meshd's own
            // writes, by the kernel's socket work.
            && SOCKHASH.redirect_skb(ctx, &mut down, 0) == SK_PASS as i64
        {
            (*counts).spliced += len;
            bump(Counter::ReplySplice);
            return SK_PASS;
        }
        (*counts).handed += len;
    }
    SK_PASS
}
