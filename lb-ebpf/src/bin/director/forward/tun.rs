//! TUN forwarding: wraps the frame's IP packet in an outer IPv4/IPv6 header (IPIP, IP6IP6, 6in4,
//! 4in6) or outer IP + UDP + GUE (variant 0, as IPVS's ipvs_gue_encap), toward the real server,
//! with the next hop and source the kernel's FIB chooses. Each CPU keeps the FIB's answer per
//! backend for a second (TUN_ROUTES): the lookup is the costliest step of TUN forwarding.
//!
//! The director hands the packet over through TUNNEL_JOB and a tail call into xvs_tunnel: the
//! encapsulation then runs with a fresh 512-byte stack, which the fast path's frame leaves too
//! little of.

use aya_ebpf::bindings::{
    BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH,
    BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SRC,
};
use lb_common::{
    backend_flags, config_flags,
    csum::{finish, fold, sum_addr},
    fwd, tunnel_job_flags, tuple_hash, Backend, DataplaneConfig, FlowKey, Reason, FAMILY_V6,
    PROTO_ICMP, PROTO_IPIP, PROTO_IPV6, PROTO_UDP, TAIL_TUNNEL, TUN_ROUTE_SLOTS, TUN_ROUTE_TTL_NS,
};
use lb_ebpf::{
    encap::{self, OuterIp},
    helpers::{fib_lookup, fib_mtu, fib_params, fib_src, ktime_coarse_ns},
    icmp,
    packet::{addr_is_zero, addr_words, load_addr4, load_u32, store_addr6, Packet, StackAddr},
    parse::{GueHdr, Parsed, UdpGueHdr, UdpHdr, GUE_LEN, IPV4_LEN, IPV6_LEN, UDP_LEN},
    route::Mac,
};

use crate::{
    maps::{self, count},
    verdict::Out,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Hands the packet to xvs_tunnel: the job (backend, flow, offsets) goes into this CPU's
/// TUNNEL_JOB, written field by field in place (a TunnelJob built on the stack would not fit
/// there), then the tail call. Returns only when the tunnel program is missing.
#[inline(always)]
pub fn hand_off(
    pkt: &Packet,
    p: &Parsed,
    key: Option<&FlowKey>,
    backend_id: u32,
) -> Result<Out, Reason> {
    let job = maps::tunnel_job_mut().ok_or(Reason::DropTailCallMissing)?;
    job.backend = backend_id;
    job.flags = match key {
        Some(k) => {
            job.hash = tuple_hash(&k.src, &k.dst, k.sport_be, k.dport_be, k.proto);
            tunnel_job_flags::HASH_SET
        }
        None => 0,
    };
    job.sport_be = p.sport_be;
    job.dport_be = p.dport_be;
    job.l3_off = p.l3_off as u16;
    job.l4_off = p.l4_off as u16;
    job.tos = p.tos;
    job.family = p.family;
    job.proto = p.proto;
    job.src = p.src;
    job.dst = p.dst;
    maps::tail_call(pkt.ctx(), TAIL_TUNNEL);
    Err(Reason::DropTailCallMissing)
}

/// The body of xvs_tunnel: encapsulates toward the job's backend, or answers the client with
/// ICMP too-big when the result would not fit the path.
#[inline(always)]
pub fn run(pkt: &mut Packet) -> Result<Out, Reason> {
    let job = maps::tunnel_job().ok_or(Reason::DropTailCallMissing)?;
    let backend = maps::backend(job.backend).ok_or(Reason::DropBadBackend)?;
    let cfg = maps::config().ok_or(Reason::DropBadBackend)?;
    // Offsets the verifier can bound: L2 is 14 or 18 bytes, L3 headers at most 60.
    let p = Parsed {
        l3_off: if job.l3_off == 18 { 18 } else { 14 },
        l4_off: (job.l4_off & 0x7f) as usize,
        tos: job.tos,
        family: job.family,
        proto: job.proto,
        src: job.src,
        dst: job.dst,
        sport_be: 0,
        dport_be: 0,
        tcp_flags: 0,
    };
    let hash = if job.flags & tunnel_job_flags::HASH_SET != 0 {
        job.hash
    } else {
        tuple_hash(&job.src, &job.dst, job.sport_be, job.dport_be, job.proto)
    };
    let (sent, zero_csum) = encap(pkt, &p, backend, cfg, hash, job.backend)?;
    if zero_csum {
        count(Reason::TunZeroCsum);
    }
    match sent {
        Sent::Tx => Ok(Out::Tx(Reason::TxTunnel)),
        Sent::Redirect(ifindex) => Ok(Out::Redirect(ifindex, Reason::RedirectTunnel)),
        Sent::TooBig(mtu) => {
            icmp::too_big(pkt, &p, mtu)?;
            Ok(Out::Tx(Reason::TxIcmpTooBig))
        }
    }
}

/// Where an encapsulated frame goes, or why it cannot.
enum Sent {
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
fn overhead(b: &Backend) -> usize {
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
fn encap(
    pkt: &mut Packet,
    p: &Parsed,
    b: &Backend,
    cfg: &DataplaneConfig,
    hash: u32,
    id: u32,
) -> Result<(Sent, bool), Reason> {
    encap_call(pkt, p, b, cfg, (id as u64) << 32 | hash as u64).decode()
}

/// `encap` as a BPF subprogram of its own (not inlined): its stack frame is separate from the
/// fast path's, which keeps both under the 512-byte limit. A subprogram takes at most five
/// arguments (hash and slot share one) and returns one register, hence the packed result.
#[inline(never)]
fn encap_call(
    pkt: &mut Packet,
    p: &Parsed,
    b: &Backend,
    cfg: &DataplaneConfig,
    id_hash: u64,
) -> Packed {
    Packed::encode(encap_inline(
        pkt,
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
    pkt: &mut Packet,
    p: &Parsed,
    b: &Backend,
    cfg: &DataplaneConfig,
    hash: u32,
    id: u32,
) -> Result<(Sent, bool), Reason> {
    let outer_v6 = b.family == FAMILY_V6;
    let gue = b.fwd == fwd::TUN_GUE;
    let over = overhead(b);
    let inner_len = pkt.len() - p.l3_off;
    let inner_v6 = p.family == FAMILY_V6;
    let inner_proto = if inner_v6 { PROTO_IPV6 } else { PROTO_IPIP };
    let sport: u16 = 0xc000 | (hash as u16 & 0x3fff);

    // Aligned: the outer header's writer reads it as words.
    let mut src = if outer_v6 {
        StackAddr::load(&cfg.tun_src6)
    } else {
        StackAddr(load_addr4(&cfg.tun_src4))
    };
    let configured = !addr_is_zero(&src.0);
    let total = inner_len + over;
    let now = ktime_coarse_ns();
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
        maps::tun_route(id % TUN_ROUTE_SLOTS)
    };
    let mut hop = None;
    if let Some(r) = &cached {
        if r.expires_ns > now
            && r.backend == id
            && r.generation == b.generation
            && total <= r.mtu as usize
            && (configured || !addr_is_zero(&r.src))
        {
            if !configured {
                src = StackAddr::load(&r.src);
            }
            hop = Some((r.ifindex, Mac(r.dmac), Mac(r.smac)));
        }
    }
    let (ifindex, dmac, smac) = match hop {
        Some(h) => h,
        None => {
            let route = Route {
                inner_proto,
                gue,
                sport,
                total,
                configured,
            };
            let (ifindex, dmac, smac, mtu) = match route.lookup(pkt, b, &mut src.0)? {
                Lookup::Via(ifindex, dmac, smac, mtu) => (ifindex, dmac, smac, mtu),
                Lookup::TooBig(mtu) => {
                    return Ok((Sent::TooBig(mtu.saturating_sub(over as u32)), false))
                }
            };
            if let Some(r) = cached {
                // Field by field (no stack copy).
                r.expires_ns = now + TUN_ROUTE_TTL_NS;
                r.backend = id;
                r.generation = b.generation;
                r.ifindex = ifindex;
                r.mtu = mtu;
                let words = if configured {
                    [0; 4]
                } else {
                    addr_words(&src.0)
                };
                store_addr6(&mut r.src, &words);
                r.dmac = dmac.0;
                r.smac = smac.0;
            }
            (ifindex, dmac, smac)
        }
    };

    // Everything read from the inner packet is read before the head moves.
    let udp_csum = if gue && (outer_v6 || b.flags & backend_flags::TUN_CSUM != 0) {
        inner_sum(pkt, p, inner_len)
    } else {
        Some(0)
    };

    encap::push(pkt, over)?;
    // New layout: [L2 (l3_off) | outer (over) | inner], the old L2 now at `over`.
    encap::write_l2(pkt, over, p.l3_off > 14, &dmac, &smac, outer_v6)?;
    let l4_len = inner_len + UDP_LEN + GUE_LEN;
    let outer = OuterIp {
        tos: p.tos,
        proto: if gue { PROTO_UDP } else { inner_proto },
        src: &src.0,
        dst: &b.addr,
    };
    let addrs = if outer_v6 {
        let payload = if gue { l4_len } else { inner_len };
        encap::write_ipv6(pkt, p.l3_off, &outer, payload, hash & 0x000f_ffff)?
    } else {
        encap::write_ipv4(pkt, p.l3_off, &outer, inner_len + over, true)?
    };
    if gue {
        let ip_len = if outer_v6 { IPV6_LEN } else { IPV4_LEN };
        let h = pkt
            .header_mut::<UdpGueHdr>(p.l3_off + ip_len)
            .ok_or(Reason::DropTunHeadroom)?;
        h.udp = UdpHdr {
            src: sport.to_be_bytes(),
            dst: b.tun_port_be.to_ne_bytes(),
            len: (l4_len as u16).to_be_bytes(),
            check: [0; 2],
        };
        // GUE variant 0: version 0, no control bit, no options, then the inner protocol.
        h.gue = GueHdr {
            vc_hlen: 0,
            proto_ctype: inner_proto,
            flags: [0; 2],
        };
        match udp_csum {
            Some(0) => {}
            Some(inner) => {
                // Pseudo-header, then the UDP and GUE words just written, then the payload.
                let hdr = sport as u64
                    + u16::from_be(b.tun_port_be) as u64
                    + l4_len as u64
                    + inner_proto as u64;
                let s = addrs + PROTO_UDP as u64 + l4_len as u64 + hdr + inner;
                let c = match finish(s) {
                    0 => 0xffff,
                    c => c,
                };
                h.udp.check = c.to_be_bytes();
            }
            None => {}
        }
    }
    let sent = if ifindex == pkt.ingress_ifindex() {
        Sent::Tx
    } else {
        Sent::Redirect(ifindex)
    };
    Ok((sent, udp_csum.is_none()))
}

/// What the FIB says of a route.
enum Lookup {
    /// Outgoing interface, next hop's MAC, the interface's MAC, the route MTU.
    Via(u32, Mac, Mac, u32),
    /// A packet of the asked size does not fit: the route MTU.
    TooBig(u32),
}

/// The outer packet a route is asked for.
struct Route {
    inner_proto: u8,
    gue: bool,
    sport: u16,
    /// Outer packet length.
    total: usize,
    /// Whether the source address is configured (else the FIB chooses it).
    configured: bool,
}

impl Route {
    /// Asks the kernel's FIB for the route to `b`; fills `src` unless it is configured.
    #[inline(always)]
    fn lookup(&self, pkt: &Packet, b: &Backend, src: &mut [u8; 16]) -> Result<Lookup, Reason> {
        let outer_v6 = b.family == FAMILY_V6;
        let mut fib = fib_params();
        fib.family = if outer_v6 { AF_INET6 } else { AF_INET };
        fib.l4_protocol = if self.gue {
            PROTO_UDP
        } else {
            self.inner_proto
        };
        if self.gue {
            fib.sport = self.sport.to_be();
            fib.dport = b.tun_port_be;
        }
        fib.__bindgen_anon_1.tot_len = self.total as u16;
        fib.ifindex = pkt.ingress_ifindex();
        let flags = if self.configured {
            0
        } else {
            BPF_FIB_LOOKUP_SRC
        };
        // Writing a union member is safe; these are plain integers and arrays.
        if outer_v6 {
            fib.__bindgen_anon_3.ipv6_src = words(src);
            fib.__bindgen_anon_4.ipv6_dst = words(&b.addr);
        } else {
            fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([src[0], src[1], src[2], src[3]]);
            fib.__bindgen_anon_4.ipv4_dst =
                u32::from_ne_bytes([b.addr[0], b.addr[1], b.addr[2], b.addr[3]]);
        }
        let rc = fib_lookup(pkt.ctx(), &mut fib, flags);
        let mtu = fib_mtu(&fib);
        match rc {
            BPF_FIB_LKUP_RET_SUCCESS => {}
            BPF_FIB_LKUP_RET_FRAG_NEEDED => return Ok(Lookup::TooBig(mtu)),
            BPF_FIB_LKUP_RET_NO_NEIGH => return Err(Reason::DropTunNoNeighbor),
            BPF_FIB_LKUP_RET_FWD_DISABLED => return Err(Reason::DropTunFwdDisabled),
            _ => return Err(Reason::DropTunNoRoute),
        }
        if !self.configured {
            // BPF_FIB_LOOKUP_SRC filled the source member.
            fib_src(&fib, outer_v6, src);
        }
        Ok(Lookup::Via(fib.ifindex, Mac(fib.dmac), Mac(fib.smac), mtu))
    }
}

/// The ones-complement sum of the whole inner IP packet, from its headers only: a packet whose
/// L4 checksum is valid sums (over the L4 segment) to the complement of its pseudo-header, and a
/// valid IPv4 header sums to zero (local checksum offload, as the kernel's lco_csum). None when
/// the inner packet is UDP/IPv4 without a checksum, whose sum is unknown without reading it all.
#[inline(always)]
fn inner_sum(pkt: &Packet, p: &Parsed, inner_len: usize) -> Option<u64> {
    let v6 = p.family == FAMILY_V6;
    let l4_len = inner_len - (p.l4_off - p.l3_off);
    if !v6 && p.proto == PROTO_ICMP {
        // ICMPv4's checksum has no pseudo-header: the message sums to zero (0xffff).
        return Some(0xffff);
    }
    if !v6 && p.proto == PROTO_UDP && pkt.header::<UdpHdr>(p.l4_off)?.check == [0, 0] {
        return None;
    }
    let pseudo = sum_addr(&p.src, v6) + sum_addr(&p.dst, v6) + p.proto as u64 + l4_len as u64;
    let l4 = (!fold(pseudo)) as u64;
    let hdr = if v6 {
        // The IPv6 header has no checksum of its own: its words count.
        let h = pkt.header::<[[u8; 4]; IPV6_LEN / 4]>(p.l3_off)?;
        let mut sum = 0;
        for w in h {
            sum += encap::halves(load_u32(w));
        }
        encap::be_sum(sum)
    } else {
        0
    };
    // Never 0, which means "no checksum wanted" to the caller; 0xffff is the same sum.
    Some(match l4 + hdr {
        0 => 0xffff,
        s => s,
    })
}

#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    let w = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}
