//! cgroup/getsockopt: answer SO_ORIGINAL_DST (SOL_IP) and IP6T_SO_ORIGINAL_DST (SOL_IPV6) on
//! meshd's accepted sockets from the map sockops filled, as if the redirect were iptables.

use core::ptr::read_volatile;

use aya_ebpf::{EbpfContext, helpers::bpf_get_netns_cookie, programs::SockoptContext};
use proxy_common::{
    AF_INET, AF_INET6, Counter, Endpoint, NetnsEndpoint, SO_ORIGINAL_DST, SOL_IP, SOL_IPV6,
};

use crate::{counters::bump, maps::ORIG_BY_TUPLE};

const SOCKADDR_IN_LEN: usize = 16;
const SOCKADDR_IN6_LEN: usize = 28;

pub fn try_getsockopt(ctx: &SockoptContext) {
    let so = ctx.sockopt;
    // SAFETY: the kernel hands a valid bpf_sockopt; these fields are readable.
    let (level, optname) = unsafe { ((*so).level, (*so).optname) };
    if optname != SO_ORIGINAL_DST || (level != SOL_IP && level != SOL_IPV6) {
        return;
    }
    let sk = unsafe { (*so).__bindgen_anon_1.sk };
    if sk.is_null() {
        return;
    }
    // The peer of meshd's accepted socket is the workload socket's local address. Every field
    // is loaded on its own: the verifier forbids pointer arithmetic on the socket pointer.
    // SAFETY: sk is a non-null PTR_TO_SOCKET; these are plain loads of readable fields.
    let (family, d4, d6, dport) = unsafe {
        (
            read_volatile(&(*sk).family),
            read_volatile(&(*sk).dst_ip4),
            [
                read_volatile(&(*sk).dst_ip6[0]),
                read_volatile(&(*sk).dst_ip6[1]),
                read_volatile(&(*sk).dst_ip6[2]),
                read_volatile(&(*sk).dst_ip6[3]),
            ],
            read_volatile(&(*sk).dst_port),
        )
    };
    let ip = if family == AF_INET {
        [d4, 0, 0, 0]
    } else if family == AF_INET6 {
        d6
    } else {
        return;
    };
    let port = u16::from_be(dport) as u32;
    let key = NetnsEndpoint {
        // SAFETY: helper valid for cgroup/getsockopt; it reads the socket's namespace.
        netns: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        ep: Endpoint { ip, port, family },
    };
    // SAFETY: read-only lookup, copied out.
    let Some(orig) = (unsafe { ORIG_BY_TUPLE.get(key) }).copied() else {
        bump(Counter::OrigDstMiss);
        return;
    };
    let optval = unsafe { (*so).__bindgen_anon_2.optval } as *mut u8;
    let end = unsafe { (*so).__bindgen_anon_3.optval_end } as *mut u8;
    let port_be = (orig.dst.port as u16).to_be();
    let len = if level == SOL_IP && orig.dst.family == AF_INET {
        if optval as usize + SOCKADDR_IN_LEN > end as usize {
            return;
        }
        // SAFETY: bounds checked against optval_end just above.
        unsafe {
            core::ptr::write_unaligned(optval as *mut u16, AF_INET as u16);
            core::ptr::write_unaligned(optval.add(2) as *mut u16, port_be);
            core::ptr::write_unaligned(optval.add(4) as *mut u32, orig.dst.ip[0]);
            core::ptr::write_unaligned(optval.add(8) as *mut u64, 0);
        }
        SOCKADDR_IN_LEN
    } else if level == SOL_IPV6 {
        if optval as usize + SOCKADDR_IN6_LEN > end as usize {
            return;
        }
        let ip = if orig.dst.family == AF_INET6 {
            orig.dst.ip
        } else {
            [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), orig.dst.ip[0]]
        };
        // SAFETY: bounds checked against optval_end just above.
        unsafe {
            core::ptr::write_unaligned(optval as *mut u16, AF_INET6 as u16);
            core::ptr::write_unaligned(optval.add(2) as *mut u16, port_be);
            core::ptr::write_unaligned(optval.add(4) as *mut u32, 0);
            core::ptr::write_unaligned(optval.add(8) as *mut u32, ip[0]);
            core::ptr::write_unaligned(optval.add(12) as *mut u32, ip[1]);
            core::ptr::write_unaligned(optval.add(16) as *mut u32, ip[2]);
            core::ptr::write_unaligned(optval.add(20) as *mut u32, ip[3]);
            core::ptr::write_unaligned(optval.add(24) as *mut u32, 0);
        }
        SOCKADDR_IN6_LEN
    } else {
        return;
    };
    bump(Counter::OrigDstHit);
    // SAFETY: each context field gets its own store; merged stores fail the verifier.
    unsafe {
        core::ptr::write_volatile(&mut (*so).optlen, len as i32);
        core::ptr::write_volatile(&mut (*so).retval, 0);
    }
}
