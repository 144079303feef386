//! Routing a rewritten packet as the kernel would: the FIB's next hop and interface for its
//! destination, asked with bpf_fib_lookup (which also honours the interface's forwarding sysctl).

use aya_ebpf::bindings::{
    BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH,
    BPF_FIB_LKUP_RET_SUCCESS,
};
use lb_common::FAMILY_V6;

use crate::{
    helpers::{fib_lookup, fib_mtu, fib_params},
    packet::Packet,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// A packet to be routed: its addresses, protocol, ports and length.
pub struct Query<'a> {
    /// FAMILY_V4 or FAMILY_V6.
    pub family: u8,
    /// L4 protocol.
    pub proto: u8,
    /// Source address (16-byte form).
    pub src: &'a [u8; 16],
    /// Destination address.
    pub dst: &'a [u8; 16],
    /// Source port, network order (the multipath hash may use it).
    pub sport_be: u16,
    /// Destination port, network order.
    pub dport_be: u16,
    /// IP packet length (checked against the route MTU).
    pub len: u16,
}

/// A MAC address on the stack, aligned to 4 so that it is copied into a frame in two loads and
/// two stores (`packet::copy_mac`): the verifier wants every stack access aligned to its size.
#[repr(C, align(4))]
#[derive(Default, Clone, Copy)]
pub struct Mac(pub [u8; 6]);

/// Where the FIB sends a packet.
#[derive(Default)]
pub struct Hop {
    /// Outgoing interface.
    pub ifindex: u32,
    /// Next hop's MAC.
    pub dmac: Mac,
    /// The outgoing interface's MAC.
    pub smac: Mac,
    /// The route's MTU.
    pub mtu: u32,
}

/// Why a packet cannot be routed.
pub enum NoRoute {
    /// Unreachable, blackhole, prohibited, or no route at all.
    Unreachable,
    /// The next hop's MAC is not known yet.
    NoNeighbor,
    /// Forwarding is disabled on the ingress interface.
    ForwardingDisabled,
    /// Larger than the route MTU: the MTU.
    TooBig(u32),
}

/// Asks the FIB for `q`'s next hop, as a packet arriving on the ingress interface.
#[inline(always)]
pub fn lookup(pkt: &Packet, q: &Query) -> Result<Hop, NoRoute> {
    let mut hop = Hop::default();
    match lookup_call(pkt, q, &mut hop) {
        BPF_FIB_LKUP_RET_SUCCESS => Ok(hop),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Err(NoRoute::TooBig(hop.ifindex)),
        BPF_FIB_LKUP_RET_NO_NEIGH => Err(NoRoute::NoNeighbor),
        BPF_FIB_LKUP_RET_FWD_DISABLED => Err(NoRoute::ForwardingDisabled),
        _ => Err(NoRoute::Unreachable),
    }
}

/// The FIB query as a BPF subprogram of its own: the 64-byte query and its zeroing stay out of
/// the caller's stack frame. Returns the BPF_FIB_LKUP_RET_* code and fills `hop` (on
/// FRAG_NEEDED, `hop.ifindex` holds the route MTU: one register returns).
#[inline(never)]
fn lookup_call(pkt: &Packet, q: &Query, hop: &mut Hop) -> u32 {
    let v6 = q.family == FAMILY_V6;
    let mut fib = fib_params();
    fib.family = if v6 { AF_INET6 } else { AF_INET };
    fib.l4_protocol = q.proto;
    fib.sport = q.sport_be;
    fib.dport = q.dport_be;
    fib.__bindgen_anon_1.tot_len = q.len;
    fib.ifindex = pkt.ingress_ifindex();
    // Writing a union member is safe; these are plain integers and arrays.
    if v6 {
        fib.__bindgen_anon_3.ipv6_src = words(q.src);
        fib.__bindgen_anon_4.ipv6_dst = words(q.dst);
    } else {
        fib.__bindgen_anon_3.ipv4_src = word(q.src);
        fib.__bindgen_anon_4.ipv4_dst = word(q.dst);
    }
    let rc = fib_lookup(pkt.ctx(), &mut fib, 0);
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => {
            hop.ifindex = fib.ifindex;
            hop.dmac = Mac(fib.dmac);
            hop.smac = Mac(fib.smac);
            hop.mtu = fib_mtu(&fib);
        }
        BPF_FIB_LKUP_RET_FRAG_NEEDED => hop.ifindex = fib_mtu(&fib),
        _ => {}
    }
    rc
}

#[inline(always)]
fn word(a: &[u8; 16]) -> u32 {
    u32::from_ne_bytes([a[0], a[1], a[2], a[3]])
}

#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    let w = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}
