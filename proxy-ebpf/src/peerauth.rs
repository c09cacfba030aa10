//! PeerAuthentication STRICT in the kernel: on cgroup_skb ingress, a TCP SYN to a STRICT port
//! of a managed workload is dropped unless it comes from meshd (or from the workload itself).
//!
//! The receiving socket is the workload's listener, so `bpf_skb_cgroup_id` names the workload's
//! cgroup. The sender is found with `bpf_sk_lookup_tcp` on the reversed 4-tuple: a SYN sent on
//! this node has its connecting socket in the established hash; one from another machine has
//! none, which means plaintext from outside the mesh (mesh traffic from other nodes arrives
//! through the tunnel, and meshd's connection to the workload comes from meshd's cgroup).

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_F_CURRENT_NETNS, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2,
    },
    helpers::{bpf_sk_cgroup_id, bpf_sk_lookup_tcp, bpf_sk_release, bpf_skb_cgroup_id},
    programs::SkBuffContext,
};
use proxy_common::{
    PEER_AUTH_STRICT, PeerAuthKey, PolicyCounter,
    peer_auth::{Sender, strict_syn_allowed},
};

use crate::maps::{CONFIG, MANAGED, PEER_AUTH, POLICY_COUNTERS};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const IPV6_HEADER: usize = 40;

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
    let Some(syn) = parse_syn(ctx) else {
        return true;
    };
    // SAFETY: helper valid in cgroup_skb; the context pointer is the program's.
    let receiver = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    // SAFETY: read-only lookups, values copied out.
    let Some(workload) = (unsafe { MANAGED.get(receiver) }).copied() else {
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
    if strict_syn_allowed(sender(ctx, &syn), receiver, cfg.meshd_cgroup) {
        return true;
    }
    if let Some(slot) = POLICY_COUNTERS.get_ptr_mut(PolicyCounter::PeerAuthRefused as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
    false
}

/// A TCP segment with SYN set and ACK clear, or `None`. The flags are read first, so every
/// other packet costs two or three small loads.
#[inline(always)]
fn parse_syn(ctx: &SkBuffContext) -> Option<Syn> {
    // SAFETY: the context pointer is valid for the program run.
    let proto = u16::from_be(unsafe { (*ctx.skb.skb).protocol } as u16);
    let (v6, l4) = match proto {
        ETH_P_IP => {
            let vihl: u8 = ctx.load(0).ok()?;
            if ctx.load::<u8>(9).ok()? != IPPROTO_TCP {
                return None;
            }
            let ihl = ((vihl & 0x0f) as usize) * 4;
            if ihl < 20 {
                return None;
            }
            (false, ihl)
        }
        ETH_P_IPV6 => {
            // Extension headers are not followed: such a SYN is left to the stack.
            if ctx.load::<u8>(6).ok()? != IPPROTO_TCP {
                return None;
            }
            (true, IPV6_HEADER)
        }
        _ => return None,
    };
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

/// The socket on this node that sent `syn`, if any: the lookup of the reversed tuple finds the
/// socket a packet from the receiver back to the sender would reach.
#[inline(always)]
fn sender(ctx: &SkBuffContext, syn: &Syn) -> Option<Sender> {
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
    let sk = unsafe {
        bpf_sk_lookup_tcp(
            ctx.as_ptr(),
            &mut tuple,
            size as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    };
    if sk.is_null() {
        return None;
    }
    // SAFETY: `sk` is a referenced socket until released.
    let found = unsafe {
        let state = (*sk).state;
        let cgroup = bpf_sk_cgroup_id(sk as *mut _);
        bpf_sk_release(sk as *mut _);
        Sender { cgroup, state }
    };
    Some(found)
}
