//! TUN forwarding: wraps the frame's IP packet in an outer IPv4/IPv6 header (IPIP, IP6IP6, 6in4,
//! 4in6) or outer IP + UDP + GUE (variant 0, as IPVS's ipvs_gue_encap), toward the real server,
//! with the next hop and source the kernel's FIB chooses. Each CPU keeps the FIB's answer per
//! backend for a second (TUN_ROUTES): the lookup is the costliest step of TUN forwarding.

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_FWD_DISABLED,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SRC,
    },
    helpers::{bpf_fib_lookup, bpf_ktime_get_ns, bpf_xdp_adjust_head},
    macros::map,
    maps::PerCpuArray,
    programs::XdpContext,
};
use lb_common::{
    backend_flags, config_flags,
    csum::{finish, fold, sum_addr, sum_words},
    fwd, Backend, DataplaneConfig, Reason, TunRoute, FAMILY_V6, PROTO_ICMP, PROTO_IPIP, PROTO_IPV6,
    PROTO_UDP, TUN_ROUTE_SLOTS, TUN_ROUTE_TTL_NS,
};

use crate::packet::{ptr_at, Parsed, ETH_P_IP, ETH_P_IPV6, IPV4_LEN, IPV6_LEN};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const UDP_LEN: usize = 8;
const GUE_LEN: usize = 4;
/// Hop limit / TTL of outer headers (the kernel's default).
const OUTER_TTL: u8 = 64;

/// Each CPU's last FIB answer per tunnelled backend (lb_common::TunRoute).
#[map]
static TUN_ROUTES: PerCpuArray<TunRoute> = PerCpuArray::with_max_entries(TUN_ROUTE_SLOTS, 0);

/// Where an encapsulated frame goes, or why it cannot.
pub enum Sent {
    /// Back out the ingress interface (XDP_TX).
    Tx,
    /// Out another interface the FIB chose (XDP_REDIRECT to this ifindex).
    Redirect(u32),
    /// The encapsulated packet would exceed the path MTU: this is the largest inner packet that
    /// fits (nothing was changed; the caller answers the client with ICMP).
    TooBig(u32),
}

/// Bytes an encapsulation adds in front of the inner IP packet.
#[inline(always)]
pub fn overhead(b: &Backend) -> usize {
    let ip = if b.family == FAMILY_V6 {
        IPV6_LEN
    } else {
        IPV4_LEN
    };
    if b.fwd == fwd::TUN_GUE {
        ip + UDP_LEN + GUE_LEN
    } else {
        ip
    }
}

/// Encapsulates the frame toward `b` (backend slot `id`). `hash` is the inner flow's tuple hash
/// (outer GUE source port, IPv6 flow label). Returns where the frame goes and whether a GUE
/// checksum that should have been filled was left zero (see Reason::TunZeroCsum); Err with the
/// drop reason when there is no usable route.
#[inline(always)]
pub fn encap(
    ctx: &XdpContext,
    p: &Parsed,
    b: &Backend,
    cfg: &DataplaneConfig,
    hash: u32,
    id: u32,
) -> Result<(Sent, bool), Reason> {
    encap_call(ctx, p, b, cfg, (id as u64) << 32 | hash as u64).decode()
}

/// `encap` as a BPF subprogram of its own (not inlined): its stack frame is separate from the
/// fast path's, which keeps both under the 512-byte limit. A subprogram takes at most five
/// arguments (hash and slot share one) and returns one register, hence the packed result.
#[inline(never)]
fn encap_call(
    ctx: &XdpContext,
    p: &Parsed,
    b: &Backend,
    cfg: &DataplaneConfig,
    id_hash: u64,
) -> Packed {
    Packed::encode(encap_inline(
        ctx,
        p,
        b,
        cfg,
        id_hash as u32,
        (id_hash >> 32) as u32,
    ))
}

/// encap's result in one u64: kind in bits 0..8 (0 Tx, 1 Redirect, 2 TooBig, 3 Err), the
/// zero-checksum flag in bit 8, the reason in bits 16..24, ifindex / MTU in bits 32..64.
#[derive(Clone, Copy)]
#[repr(transparent)]
struct Packed(u64);

impl Packed {
    #[inline(always)]
    fn encode(r: Result<(Sent, bool), Reason>) -> Packed {
        Packed(match r {
            Ok((Sent::Tx, z)) => (z as u64) << 8,
            Ok((Sent::Redirect(i), z)) => 1 | (z as u64) << 8 | (i as u64) << 32,
            Ok((Sent::TooBig(m), _)) => 2 | (m as u64) << 32,
            Err(reason) => 3 | (reason as u64) << 16,
        })
    }

    #[inline(always)]
    fn decode(self) -> Result<(Sent, bool), Reason> {
        let z = self.0 & 0x100 != 0;
        let hi = (self.0 >> 32) as u32;
        match self.0 & 0xff {
            0 => Ok((Sent::Tx, z)),
            1 => Ok((Sent::Redirect(hi), z)),
            2 => Ok((Sent::TooBig(hi), false)),
            _ => Err(Reason::from_index(((self.0 >> 16) & 0xff) as u32)
                .unwrap_or(Reason::DropTunHeadroom)),
        }
    }
}

#[inline(always)]
fn encap_inline(
    ctx: &XdpContext,
    p: &Parsed,
    b: &Backend,
    cfg: &DataplaneConfig,
    hash: u32,
    id: u32,
) -> Result<(Sent, bool), Reason> {
    let outer_v6 = b.family == FAMILY_V6;
    let gue = b.fwd == fwd::TUN_GUE;
    let over = overhead(b);
    let inner_len = ctx.data_end() - ctx.data() - p.l3_off;
    let inner_v6 = p.family == FAMILY_V6;
    let inner_proto = if inner_v6 { PROTO_IPV6 } else { PROTO_IPIP };
    let sport: u16 = 0xc000 | (hash as u16 & 0x3fff);

    let mut src = [0u8; 16];
    if outer_v6 {
        src = cfg.tun_src6;
    } else {
        src[..4].copy_from_slice(&cfg.tun_src4);
    }
    let configured = src != [0u8; 16];
    let total = inner_len + over;
    // SAFETY: a plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    // A GUE flow's route depends on its ports where the kernel's multipath hash uses them: then
    // it is not shared between the backend's flows.
    let per_flow = gue
        && cfg.flags
            & if outer_v6 {
                config_flags::GUE_ROUTE_PER_FLOW6
            } else {
                config_flags::GUE_ROUTE_PER_FLOW4
            }
            != 0;
    let cached = if per_flow {
        None
    } else {
        TUN_ROUTES.get_ptr_mut(id % TUN_ROUTE_SLOTS)
    };
    let mut hop = None;
    if let Some(r) = cached {
        // SAFETY: this CPU's entry; nothing else runs on this CPU during this program.
        let r = unsafe { &*r };
        if r.expires_ns > now
            && r.backend == id
            && r.generation == b.generation
            && total <= r.mtu as usize
            && (configured || r.src != [0u8; 16])
        {
            if !configured {
                src = r.src;
            }
            hop = Some((r.ifindex, r.dmac, r.smac));
        }
    }
    let (ifindex, dmac, smac) = match hop {
        Some(h) => h,
        None => {
            let (ifindex, dmac, smac, mtu) =
                match fib_lookup(ctx, b, inner_proto, gue, sport, total, configured, &mut src)? {
                    Lookup::Via(ifindex, dmac, smac, mtu) => (ifindex, dmac, smac, mtu),
                    Lookup::TooBig(mtu) => {
                        return Ok((Sent::TooBig(mtu.saturating_sub(over as u32)), false))
                    }
                };
            if let Some(r) = cached {
                // SAFETY: as above. Written field by field (no stack copy).
                unsafe {
                    (*r).expires_ns = now + TUN_ROUTE_TTL_NS;
                    (*r).backend = id;
                    (*r).generation = b.generation;
                    (*r).ifindex = ifindex;
                    (*r).mtu = mtu;
                    (*r).src = if configured { [0u8; 16] } else { src };
                    (*r).dmac = dmac;
                    (*r).smac = smac;
                }
            }
            (ifindex, dmac, smac)
        }
    };

    // Everything read from the inner packet is read before the head moves.
    let udp_csum = if gue && (outer_v6 || b.flags & backend_flags::TUN_CSUM != 0) {
        inner_sum(ctx, p, inner_len)
    } else {
        Some(0)
    };

    // SAFETY: ctx.ctx is the program's context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(over as i32)) } != 0 {
        return Err(Reason::DropTunHeadroom);
    }
    // New layout: [L2 (l3_off) | outer (over) | inner], the old L2 now at `over`.
    write_l2(ctx, p.l3_off, over, &dmac, &smac, outer_v6)?;
    let l4_len = inner_len + UDP_LEN + GUE_LEN;
    let next = if gue { PROTO_UDP } else { inner_proto };
    let outer_ip_sum = if outer_v6 {
        let h = ptr_at::<[u8; IPV6_LEN]>(ctx, p.l3_off).ok_or(Reason::DropTunHeadroom)?;
        let payload = if gue { l4_len } else { inner_len };
        let label = hash & 0x000f_ffff;
        // SAFETY: bounds checked by ptr_at; written in place (the stack is small).
        let ip = unsafe { &mut *h };
        ip[0] = 0x60 | (p.tos >> 4);
        ip[1] = (p.tos << 4) | (label >> 16) as u8;
        ip[2] = (label >> 8) as u8;
        ip[3] = label as u8;
        ip[4..6].copy_from_slice(&(payload as u16).to_be_bytes());
        ip[6] = next;
        ip[7] = OUTER_TTL;
        ip[8..24].copy_from_slice(&src);
        ip[24..40].copy_from_slice(&b.addr);
        sum_addr(&src, true) + sum_addr(&b.addr, true)
    } else {
        let h = ptr_at::<[u8; IPV4_LEN]>(ctx, p.l3_off).ok_or(Reason::DropTunHeadroom)?;
        // SAFETY: bounds checked by ptr_at; written in place.
        let ip = unsafe { &mut *h };
        ip[0] = 0x45;
        ip[1] = p.tos;
        ip[2..4].copy_from_slice(&((inner_len + over) as u16).to_be_bytes());
        // DF: the outer packet is never fragmented; the client hears about the MTU instead.
        ip[4] = 0;
        ip[5] = 0;
        ip[6] = 0x40;
        ip[7] = 0;
        ip[8] = OUTER_TTL;
        ip[9] = next;
        ip[10] = 0;
        ip[11] = 0;
        ip[12..16].copy_from_slice(&src[..4]);
        ip[16..20].copy_from_slice(&b.addr[..4]);
        let c = finish(sum_words(ip));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        sum_addr(&src, false) + sum_addr(&b.addr, false)
    };
    if gue {
        let ip_len = if outer_v6 { IPV6_LEN } else { IPV4_LEN };
        let u = ptr_at::<[u8; UDP_LEN + GUE_LEN]>(ctx, p.l3_off + ip_len)
            .ok_or(Reason::DropTunHeadroom)?;
        // SAFETY: bounds checked by ptr_at; written in place.
        let h = unsafe { &mut *u };
        h[0..2].copy_from_slice(&sport.to_be_bytes());
        h[2..4].copy_from_slice(&b.tun_port_be.to_ne_bytes());
        h[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        h[6] = 0;
        h[7] = 0;
        // GUE variant 0: version 0, no control bit, no options, then the inner protocol.
        h[8] = 0;
        h[9] = inner_proto;
        h[10] = 0;
        h[11] = 0;
        match udp_csum {
            Some(0) => {}
            Some(inner) => {
                let s = outer_ip_sum + PROTO_UDP as u64 + l4_len as u64 + sum_words(h) + inner;
                let c = match finish(s) {
                    0 => 0xffff,
                    c => c,
                };
                h[6..8].copy_from_slice(&c.to_be_bytes());
            }
            None => {}
        }
    }
    let sent = if ifindex == ctx.ingress_ifindex() as u32 {
        Sent::Tx
    } else {
        Sent::Redirect(ifindex)
    };
    Ok((sent, udp_csum.is_none()))
}

/// What the FIB says of a route.
enum Lookup {
    /// Outgoing interface, next hop's MAC, the interface's MAC, the route MTU.
    Via(u32, [u8; 6], [u8; 6], u32),
    /// A packet of the asked size does not fit: the route MTU.
    TooBig(u32),
}

/// Asks the kernel's FIB for the route to `b` for an outer packet of `total` bytes; fills `src`
/// unless `configured`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn fib_lookup(
    ctx: &XdpContext,
    b: &Backend,
    inner_proto: u8,
    gue: bool,
    sport: u16,
    total: usize,
    configured: bool,
    src: &mut [u8; 16],
) -> Result<Lookup, Reason> {
    let outer_v6 = b.family == FAMILY_V6;
    // SAFETY: plain-old-data struct, all-zero is a valid value.
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.family = if outer_v6 { AF_INET6 } else { AF_INET };
    fib.l4_protocol = if gue { PROTO_UDP } else { inner_proto };
    if gue {
        fib.sport = sport.to_be();
        fib.dport = b.tun_port_be;
    }
    fib.__bindgen_anon_1.tot_len = total as u16;
    fib.ifindex = ctx.ingress_ifindex() as u32;
    let flags = if configured { 0 } else { BPF_FIB_LOOKUP_SRC };
    // Writing a union member is safe; these are plain integers and arrays.
    if outer_v6 {
        fib.__bindgen_anon_3.ipv6_src = words(src);
        fib.__bindgen_anon_4.ipv6_dst = words(&b.addr);
    } else {
        fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([src[0], src[1], src[2], src[3]]);
        fib.__bindgen_anon_4.ipv4_dst =
            u32::from_ne_bytes([b.addr[0], b.addr[1], b.addr[2], b.addr[3]]);
    }
    // SAFETY: ctx.ctx is the program's context; fib lives on the stack for the call.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            &mut fib,
            core::mem::size_of::<FibParams>() as i32,
            flags,
        )
    } as u32;
    // SAFETY: the kernel wrote mtu_result (on success too: the route's MTU).
    let mtu = unsafe { fib.__bindgen_anon_1.mtu_result } as u32;
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => {}
        BPF_FIB_LKUP_RET_FRAG_NEEDED => return Ok(Lookup::TooBig(mtu)),
        BPF_FIB_LKUP_RET_NO_NEIGH => return Err(Reason::DropTunNoNeighbor),
        BPF_FIB_LKUP_RET_FWD_DISABLED => return Err(Reason::DropTunFwdDisabled),
        _ => return Err(Reason::DropTunNoRoute),
    }
    if !configured {
        // SAFETY: BPF_FIB_LOOKUP_SRC filled the source member.
        unsafe {
            if outer_v6 {
                *src = bytes(&fib.__bindgen_anon_3.ipv6_src);
            } else {
                src[..4].copy_from_slice(&fib.__bindgen_anon_3.ipv4_src.to_ne_bytes());
            }
        }
    }
    Ok(Lookup::Via(fib.ifindex, fib.dmac, fib.smac, mtu))
}

/// The ones-complement sum of the whole inner IP packet, from its headers only: a packet whose
/// L4 checksum is valid sums (over the L4 segment) to the complement of its pseudo-header, and a
/// valid IPv4 header sums to zero (local checksum offload, as the kernel's lco_csum). None when
/// the inner packet is UDP/IPv4 without a checksum, whose sum is unknown without reading it all.
#[inline(always)]
fn inner_sum(ctx: &XdpContext, p: &Parsed, inner_len: usize) -> Option<u64> {
    let v6 = p.family == FAMILY_V6;
    let l4_len = inner_len - (p.l4_off - p.l3_off);
    if !v6 && p.proto == PROTO_ICMP {
        // ICMPv4's checksum has no pseudo-header: the message sums to zero (0xffff).
        return Some(0xffff);
    }
    if !v6 && p.proto == PROTO_UDP {
        let udp = ptr_at::<[u8; 8]>(ctx, p.l4_off)?;
        // SAFETY: bounds checked by ptr_at.
        if unsafe { (*udp)[6] == 0 && (*udp)[7] == 0 } {
            return None;
        }
    }
    let pseudo = sum_addr(&p.src, v6) + sum_addr(&p.dst, v6) + p.proto as u64 + l4_len as u64;
    let l4 = (!fold(pseudo)) as u64;
    let hdr = if v6 {
        let h = ptr_at::<[u8; IPV6_LEN]>(ctx, p.l3_off)?;
        // SAFETY: bounds checked by ptr_at.
        sum_words(unsafe { &*h })
    } else {
        0
    };
    // Never 0, which means "no checksum wanted" to the caller; 0xffff is the same sum.
    Some(match l4 + hdr {
        0 => 0xffff,
        s => s,
    })
}

/// Writes the outer frame's Ethernet header (and keeps a VLAN tag) in front of the new outer IP
/// header; the old L2 header sits `moved` bytes further in.
#[inline(always)]
fn write_l2(
    ctx: &XdpContext,
    l3_off: usize,
    moved: usize,
    dmac: &[u8; 6],
    smac: &[u8; 6],
    outer_v6: bool,
) -> Result<(), Reason> {
    let eth = ptr_at::<[u8; 12]>(ctx, 0).ok_or(Reason::DropTunHeadroom)?;
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(dmac);
    macs[6..].copy_from_slice(smac);
    // SAFETY: bounds checked by ptr_at.
    unsafe { *eth = macs };
    if l3_off > 14 {
        // One VLAN tag: copy TPID and TCI from the old header.
        let old = ptr_at::<[u8; 4]>(ctx, moved + 12).ok_or(Reason::DropTunHeadroom)?;
        let new = ptr_at::<[u8; 4]>(ctx, 12).ok_or(Reason::DropTunHeadroom)?;
        // SAFETY: both bounds checked; they do not overlap (moved >= 20).
        unsafe { *new = *old };
    }
    let et = ptr_at::<[u8; 2]>(ctx, l3_off - 2).ok_or(Reason::DropTunHeadroom)?;
    let ethertype = if outer_v6 { ETH_P_IPV6 } else { ETH_P_IP };
    // SAFETY: bounds checked by ptr_at.
    unsafe { *et = ethertype.to_be_bytes() };
    Ok(())
}

#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    let w = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

#[inline(always)]
fn bytes(w: &[u32; 4]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0..4].copy_from_slice(&w[0].to_ne_bytes());
    a[4..8].copy_from_slice(&w[1].to_ne_bytes());
    a[8..12].copy_from_slice(&w[2].to_ne_bytes());
    a[12..16].copy_from_slice(&w[3].to_ne_bytes());
    a
}
