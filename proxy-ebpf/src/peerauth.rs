//! PeerAuthentication STRICT in the kernel: on cgroup_skb ingress, a TCP SYN to a STRICT port
//! of a managed workload is dropped unless it comes from meshd (or from the workload itself).
//!
//! The receiving socket is the workload's listener, so `bpf_skb_cgroup_id` names the workload's
//! cgroup (or a child of it: a pod's containers). The sender is found with `bpf_sk_lookup_tcp`
//! on the reversed 4-tuple: a SYN sent on this node has its connecting socket in the
//! established hash; one from another machine has none, which means plaintext from outside the
//! mesh (mesh traffic from other nodes arrives through the tunnel, and meshd's connection to the
//! workload comes from meshd's cgroup). The lookup runs in the receiving namespace and, for a
//! pod in its own, again in meshd's, which the pod's namespace knows by an id meshd assigned.
//! IPv6 extension headers are followed to the TCP header; a chain too long to follow is
//! dropped.

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_F_CURRENT_NETNS, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2,
    },
    helpers::{
        bpf_sk_ancestor_cgroup_id, bpf_sk_cgroup_id, bpf_sk_lookup_tcp, bpf_sk_release,
        bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id,
    },
    programs::SkBuffContext,
};
use proxy_common::{
    PEER_AUTH_STRICT, PeerAuthKey, PolicyCounter,
    peer_auth::{Sender, strict_syn_allowed},
};

use crate::{
    enrolled::{self, Enrolled},
    maps::{CONFIG, PEER_AUTH, POLICY_COUNTERS},
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const IPV6_HEADER: usize = 40;
/// IPv6 extension headers followed to the TCP header: hop-by-hop options, routing, fragment,
/// authentication and destination options.
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AUTH: u8 = 51;
const IPV6_DEST_OPTS: u8 = 60;
/// How many extension headers are followed: RFC 8200's order has at most six before the
/// upper layer (destination options may appear twice).
const IPV6_MAX_EXTENSIONS: usize = 6;

/// What a packet is, for the STRICT check.
enum Packet {
    /// Not a TCP SYN (or not TCP): passes.
    Other,
    Syn(Syn),
    /// An IPv6 packet whose extension header chain is longer than the check follows.
    TooDeep,
}

/// The parts of a TCP SYN the decision needs; addresses and ports in network order.
struct Syn {
    v6: bool,
    saddr: [u32; 4],
    daddr: [u32; 4],
    sport: u16,
    dport: u16,
}

/// Whether the packet may pass (`false`: drop it).
#[inline(always)]
pub fn allow(ctx: &SkBuffContext) -> bool {
    let syn = match parse(ctx) {
        Packet::Other => return true,
        Packet::Syn(syn) => syn,
        Packet::TooDeep => return receiver(ctx).is_none() || refused(),
    };
    let Some(Enrolled {
        workload,
        cgroup: enrolled,
        level,
    }) = receiver(ctx)
    else {
        return true;
    };
    let port = u16::from_be(syn.dport) as u32;
    let key = PeerAuthKey {
        workload_id: workload.workload_id,
        port,
    };
    let mode = match unsafe { PEER_AUTH.get(key) } {
        Some(m) => *m,
        None => {
            let all = PeerAuthKey {
                workload_id: workload.workload_id,
                port: 0,
            };
            match unsafe { PEER_AUTH.get(all) } {
                Some(m) => *m,
                None => return true,
            }
        }
    };
    if mode != PEER_AUTH_STRICT {
        return true;
    }
    let Some(cfg) = CONFIG.get(0) else {
        return true;
    };
    let mut from = sender(ctx, &syn, BPF_F_CURRENT_NETNS as u64, level);
    if from.is_none() && workload.meshd_nsid >= 0 {
        from = sender(ctx, &syn, workload.meshd_nsid as u64, level);
    }
    strict_syn_allowed(from, enrolled, cfg.meshd_cgroup) || refused()
}

/// Counts a refusal; always `false`, the verdict.
#[inline(always)]
fn refused() -> bool {
    if let Some(slot) = POLICY_COUNTERS.get_ptr_mut(PolicyCounter::PeerAuthRefused as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
    false
}

/// The enrolled workload of the receiving socket's cgroup or of its nearest enrolled ancestor.
#[inline(always)]
fn receiver(ctx: &SkBuffContext) -> Option<Enrolled> {
    // SAFETY: helpers valid in cgroup_skb; the context pointer is the program's.
    let own = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    enrolled::find(own, |level| unsafe {
        bpf_skb_ancestor_cgroup_id(ctx.skb.skb, level)
    })
}

/// Classifies a packet: a TCP segment with SYN set and ACK clear is a `Syn`. The protocol is
/// read first, so every other packet costs two or three small loads.
#[inline(always)]
fn parse(ctx: &SkBuffContext) -> Packet {
    // SAFETY: the context pointer is valid for the program run.
    let proto = u16::from_be(unsafe { (*ctx.skb.skb).protocol } as u16);
    let (v6, l4) = match proto {
        ETH_P_IP => {
            let Ok(vihl) = ctx.load::<u8>(0) else {
                return Packet::Other;
            };
            if ctx.load::<u8>(9) != Ok(IPPROTO_TCP) {
                return Packet::Other;
            }
            let ihl = ((vihl & 0x0f) as usize) * 4;
            if ihl < 20 {
                return Packet::Other;
            }
            (false, ihl)
        }
        ETH_P_IPV6 => match ipv6_tcp_offset(ctx) {
            Ok(Some(l4)) => (true, l4),
            Ok(None) => return Packet::Other,
            Err(TooDeep) => return Packet::TooDeep,
        },
        _ => return Packet::Other,
    };
    match syn_at(ctx, v6, l4) {
        Some(syn) => Packet::Syn(syn),
        None => Packet::Other,
    }
}

/// An extension header chain longer than `IPV6_MAX_EXTENSIONS`.
struct TooDeep;

/// Where the TCP header of an IPv6 packet starts, following extension headers; `None` when the
/// packet is not TCP (or is a later fragment, which holds no TCP header).
#[inline(always)]
fn ipv6_tcp_offset(ctx: &SkBuffContext) -> Result<Option<usize>, TooDeep> {
    let Ok(mut next) = ctx.load::<u8>(6) else {
        return Ok(None);
    };
    let mut off = IPV6_HEADER;
    for _ in 0..IPV6_MAX_EXTENSIONS {
        let len = match next {
            IPPROTO_TCP => return Ok(Some(off)),
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => match ctx.load::<u8>(off + 1) {
                Ok(n) => (n as usize + 1) * 8,
                Err(_) => return Ok(None),
            },
            IPV6_AUTH => match ctx.load::<u8>(off + 1) {
                Ok(n) => (n as usize + 2) * 4,
                Err(_) => return Ok(None),
            },
            IPV6_FRAGMENT => {
                // Fragment offset (13 bits) and flags: only the first fragment has the TCP
                // header. The stack reassembles before sockets see packets, so this is rare.
                match ctx.load::<u16>(off + 2) {
                    Ok(v) if u16::from_be(v) & 0xfff8 == 0 => 8,
                    _ => return Ok(None),
                }
            }
            _ => return Ok(None),
        };
        next = match ctx.load::<u8>(off) {
            Ok(n) => n,
            Err(_) => return Ok(None),
        };
        off += len;
    }
    if next == IPPROTO_TCP {
        Ok(Some(off))
    } else {
        Err(TooDeep)
    }
}

/// The SYN whose TCP header starts at `l4`, if the segment is one.
#[inline(always)]
fn syn_at(ctx: &SkBuffContext, v6: bool, l4: usize) -> Option<Syn> {
    let flags: u8 = ctx.load(l4 + 13).ok()?;
    if flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return None;
    }
    let (saddr, daddr) = if v6 {
        let s: [u32; 4] = ctx.load(8).ok()?;
        let d: [u32; 4] = ctx.load(24).ok()?;
        (s, d)
    } else {
        let s: u32 = ctx.load(12).ok()?;
        let d: u32 = ctx.load(16).ok()?;
        ([s, 0, 0, 0], [d, 0, 0, 0])
    };
    let ports: [u16; 2] = ctx.load(l4).ok()?;
    Some(Syn {
        v6,
        saddr,
        daddr,
        sport: ports[0],
        dport: ports[1],
    })
}

/// The socket on this node that sent `syn`, if any, looked up in the namespace `netns` (an
/// nsid, or `BPF_F_CURRENT_NETNS`): the lookup of the reversed tuple finds the socket a packet
/// from the receiver back to the sender would reach. Besides its own cgroup, its cgroup at
/// `level` (the receiving workload's enrolled level, if an ancestor) is taken, so a pod's
/// containers count as the pod.
#[inline(always)]
fn sender(ctx: &SkBuffContext, syn: &Syn, netns: u64, level: Option<i32>) -> Option<Sender> {
    // Zeroed first: the IPv4 variant leaves the union's tail unset, and LLVM stores an
    // uninitialised register for undefined bytes, which the verifier rejects.
    // SAFETY: an all-zero tuple is valid.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size = if syn.v6 {
        tuple.__bindgen_anon_1.ipv6 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
            saddr: syn.daddr,
            daddr: syn.saddr,
            sport: syn.dport,
            dport: syn.sport,
        };
        core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>()
    } else {
        tuple.__bindgen_anon_1.ipv4 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
            saddr: syn.daddr[0],
            daddr: syn.saddr[0],
            sport: syn.dport,
            dport: syn.sport,
        };
        core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>()
    };
    // SAFETY: sk_lookup_tcp is allowed in cgroup_skb; a socket it returns is released below on
    // every path, as the verifier requires.
    let sk = unsafe { bpf_sk_lookup_tcp(ctx.as_ptr(), &mut tuple, size as u32, netns, 0) };
    if sk.is_null() {
        return None;
    }
    // SAFETY: `sk` is a referenced socket until released.
    let found = unsafe {
        let state = (*sk).state;
        let cgroup = bpf_sk_cgroup_id(sk as *mut _);
        let workload_cgroup = match level {
            Some(l) => bpf_sk_ancestor_cgroup_id(sk as *mut _, l),
            None => cgroup,
        };
        bpf_sk_release(sk as *mut _);
        Sender {
            cgroup,
            workload_cgroup,
            state,
        }
    };
    Some(found)
}
