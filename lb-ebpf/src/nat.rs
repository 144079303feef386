//! Address translation: a TCP/UDP packet's addresses and ports rewritten in place, with the
//! IPv4 header checksum and the L4 checksum updated incrementally (RFC 1624), never recomputed
//! over the payload. NAT rewrites the destination inbound and the source of replies; FULLNAT
//! rewrites both ends both ways.

use lb_common::{
    csum::{sum_addr, update},
    Reason, FAMILY_V6, PROTO_TCP, PROTO_UDP,
};

use crate::{
    packet::{addr_words, load_u16, store_addr6, store_u16, store_u32, Packet},
    parse::{IcmpHdr, Ipv4Hdr, Ipv6Hdr, Parsed, TcpHdr, UdpHdr},
};

/// A TCP/UDP packet's new addresses and ports (16-byte form, IPv4 in the first four bytes, the
/// packet's family; ports in network order). An end that NAT leaves alone is given as it is.
/// The addresses are read as words ([`addr_words`]): they live in maps, the packet, or the
/// 8-aligned address fields of `Parsed` and `FlowKey`.
pub struct Tuple<'a> {
    /// New source address.
    pub src: &'a [u8; 16],
    /// New source port.
    pub sport_be: u16,
    /// New destination address.
    pub dst: &'a [u8; 16],
    /// New destination port.
    pub dport_be: u16,
}

/// The ones-complement sums (unfolded, of 16-bit words in memory order) of a packet's two
/// addresses before and after a translation: what its pseudo-header checksum must follow.
/// Sums in memory order need no byte swaps; an incremental update (RFC 1624) is the same in
/// either order as long as the checksum field is read and written in that order too.
pub struct AddrSums {
    old: u64,
    new: u64,
}

impl AddrSums {
    /// From the packet's parsed addresses (`old_v6`: their family) to `t`'s (`new_v6`).
    #[inline(always)]
    pub fn of(p: &Parsed, t: &Tuple, old_v6: bool, new_v6: bool) -> AddrSums {
        AddrSums {
            old: sum_words(&addr_words(&p.src), old_v6) + sum_words(&addr_words(&p.dst), old_v6),
            new: sum_words(&addr_words(t.src), new_v6) + sum_words(&addr_words(t.dst), new_v6),
        }
    }
}

/// The sum of an address's 16-bit words in memory order: the first word for IPv4, all four for
/// IPv6.
#[inline(always)]
fn sum_words(w: &[u32; 4], v6: bool) -> u64 {
    let halves = |x: u32| (x & 0xffff) as u64 + (x >> 16) as u64;
    if v6 {
        halves(w[0]) + halves(w[1]) + halves(w[2]) + halves(w[3])
    } else {
        halves(w[0])
    }
}

/// Rewrites the parsed packet's addresses and ports to `t`. A UDP/IPv4 datagram sent without a
/// checksum keeps none. A BPF subprogram of its own (its temporaries stay off the caller's
/// stack frame).
#[inline(never)]
pub fn rewrite(pkt: &mut Packet, p: &Parsed, t: &Tuple) -> Result<(), Reason> {
    let v6 = p.family == FAMILY_V6;
    let sums = AddrSums::of(p, t, v6, v6);
    let (src, dst) = (addr_words(t.src), addr_words(t.dst));
    if v6 {
        let ip = pkt
            .header_mut::<Ipv6Hdr>(p.l3_off)
            .ok_or(Reason::DropMalformedL3)?;
        store_addr6(&mut ip.src_addr, &src);
        store_addr6(&mut ip.dst_addr, &dst);
    } else {
        let ip = pkt
            .header_mut::<Ipv4Hdr>(p.l3_off)
            .ok_or(Reason::DropMalformedL3)?;
        store_u32(&mut ip.src_addr, src[0]);
        store_u32(&mut ip.dst_addr, dst[0]);
        let check = update(load_u16(&ip.check), sums.old, sums.new);
        store_u16(&mut ip.check, check);
    }
    write_ports(pkt, p, &sums, t, true)
}

/// Writes `t`'s ports into the TCP/UDP header and updates its checksum for the ports and for
/// the pseudo-header's addresses (`sums`; the rest of a pseudo-header sums alike in IPv4 and
/// IPv6). A UDP datagram without a checksum keeps none when `zero_ok` (IPv4 to IPv4);
/// otherwise (toward IPv6, which requires one) it is refused.
#[inline(always)]
pub fn write_ports(
    pkt: &mut Packet,
    p: &Parsed,
    sums: &AddrSums,
    t: &Tuple,
    zero_ok: bool,
) -> Result<(), Reason> {
    // Ports as they lie in memory, like the sums.
    let l4_old = sums.old + p.sport_be as u64 + p.dport_be as u64;
    let l4_new = sums.new + t.sport_be as u64 + t.dport_be as u64;
    if p.proto == PROTO_TCP {
        let tcp = pkt
            .header_mut::<TcpHdr>(p.l4_off)
            .ok_or(Reason::DropMalformedL4)?;
        store_u16(&mut tcp.source, t.sport_be);
        store_u16(&mut tcp.dest, t.dport_be);
        let check = update(load_u16(&tcp.check), l4_old, l4_new);
        store_u16(&mut tcp.check, check);
    } else if p.proto == PROTO_UDP {
        let udp = pkt
            .header_mut::<UdpHdr>(p.l4_off)
            .ok_or(Reason::DropMalformedL4)?;
        // Zero means "no checksum" (IPv4 only; IPv6 requires one), and a computed zero is sent
        // as 0xffff (the same in either byte order).
        let old_check = load_u16(&udp.check);
        let none = old_check == 0 && p.family != FAMILY_V6;
        if none && !zero_ok {
            return Err(Reason::DropNat64UdpNoChecksum);
        }
        store_u16(&mut udp.src, t.sport_be);
        store_u16(&mut udp.dst, t.dport_be);
        if !none {
            let c = match update(old_check, l4_old, l4_new) {
                0 => 0xffff,
                c => c,
            };
            store_u16(&mut udp.check, c);
        }
    }
    Ok(())
}

/// A translation step's outcome as a subprogram returns it, in one register: 0, or the reason.
#[inline(always)]
pub fn status(r: Result<(), Reason>) -> u32 {
    match r {
        Ok(()) => 0,
        Err(reason) => reason as u32,
    }
}

/// How an ICMP error about a translated connection is rewritten: the error's own source and
/// destination, and the quoted packet's ends (address and port), each only when its flag is
/// set. Kept in a per-CPU scratch map by the programs, not on their crowded stacks.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IcmpRewrite {
    /// The error's new source (OUTER_SRC).
    pub outer_src: [u8; 16],
    /// The error's new destination (OUTER_DST).
    pub outer_dst: [u8; 16],
    /// The quoted packet's new source address (INNER_SRC), with `inner_sport_be`.
    pub inner_src: [u8; 16],
    /// The quoted packet's new destination address (INNER_DST), with `inner_dport_be`.
    pub inner_dst: [u8; 16],
    /// The quoted packet's new source port, network order.
    pub inner_sport_be: u16,
    /// The quoted packet's new destination port, network order.
    pub inner_dport_be: u16,
    /// Offset of the quoted IP header.
    pub quote_l3: u16,
    /// Offset of the quoted TCP/UDP header.
    pub quote_l4: u16,
    /// Which parts are rewritten ([`icmp_rewrite`]).
    pub flags: u8,
    /// Explicit padding.
    pub _pad: [u8; 7],
}

/// IcmpRewrite::flags bits.
pub mod icmp_rewrite {
    /// Rewrite the error's source.
    pub const OUTER_SRC: u8 = 1;
    /// Rewrite the error's destination.
    pub const OUTER_DST: u8 = 2;
    /// Rewrite the quoted packet's source address and port.
    pub const INNER_SRC: u8 = 4;
    /// Rewrite the quoted packet's destination address and port.
    pub const INNER_DST: u8 = 8;
}

/// Translates an ICMP error about a translated connection as `t` says. The ICMP checksum
/// follows every change, the ICMPv6 pseudo-header's addresses included; the outer and quoted
/// IPv4 header checksums are updated. The quoted L4 checksum is left as it is (the quote is
/// often cut short; receivers do not check it, and IPVS leaves it too). A BPF subprogram of its
/// own; the result is 0 or the reason the packet is malformed.
#[inline(never)]
pub fn rewrite_icmp(pkt: &mut Packet, p: &Parsed, t: &IcmpRewrite) -> u32 {
    match rewrite_icmp_inline(pkt, p, t) {
        Ok(()) => 0,
        Err(reason) => reason as u32,
    }
}

/// The 16-byte form of an IPv4 address.
#[inline(always)]
fn wide(a: [u8; 4]) -> [u8; 16] {
    let mut w = [0u8; 16];
    w[..4].copy_from_slice(&a);
    w
}

#[inline(always)]
fn rewrite_icmp_inline(pkt: &mut Packet, p: &Parsed, t: &IcmpRewrite) -> Result<(), Reason> {
    use icmp_rewrite::{INNER_DST, INNER_SRC, OUTER_DST, OUTER_SRC};
    // Offsets the verifier can bound (a quote lies within the first 512 bytes).
    let (q_l3, q_l4) = ((t.quote_l3 & 0x1ff) as usize, (t.quote_l4 & 0x1ff) as usize);
    let v6 = p.family == FAMILY_V6;
    let f = t.flags;
    // What the ICMP checksum covers before and after (sums of 16-bit words).
    let mut old = 0u64;
    let mut new = 0u64;
    if f & (OUTER_SRC | OUTER_DST) != 0 {
        if v6 {
            // ICMPv6's pseudo-header.
            let ip = pkt
                .header_mut::<Ipv6Hdr>(p.l3_off)
                .ok_or(Reason::DropMalformedL3)?;
            if f & OUTER_SRC != 0 {
                old += sum_addr(&ip.src_addr, true);
                new += sum_addr(&t.outer_src, true);
                ip.src_addr = t.outer_src;
            }
            if f & OUTER_DST != 0 {
                old += sum_addr(&ip.dst_addr, true);
                new += sum_addr(&t.outer_dst, true);
                ip.dst_addr = t.outer_dst;
            }
        } else {
            let ip = pkt
                .header_mut::<Ipv4Hdr>(p.l3_off)
                .ok_or(Reason::DropMalformedL3)?;
            let (mut o, mut n) = (0u64, 0u64);
            if f & OUTER_SRC != 0 {
                o += sum_addr(&wide(ip.src_addr), false);
                n += sum_addr(&t.outer_src, false);
                ip.src_addr = [
                    t.outer_src[0],
                    t.outer_src[1],
                    t.outer_src[2],
                    t.outer_src[3],
                ];
            }
            if f & OUTER_DST != 0 {
                o += sum_addr(&wide(ip.dst_addr), false);
                n += sum_addr(&t.outer_dst, false);
                ip.dst_addr = [
                    t.outer_dst[0],
                    t.outer_dst[1],
                    t.outer_dst[2],
                    t.outer_dst[3],
                ];
            }
            ip.check = update(u16::from_be_bytes(ip.check), o, n).to_be_bytes();
        }
    }
    // The quoted L3 header.
    if v6 {
        let ip = pkt
            .header_mut::<Ipv6Hdr>(q_l3)
            .ok_or(Reason::DropMalformedL3)?;
        if f & INNER_SRC != 0 {
            old += sum_addr(&ip.src_addr, true);
            new += sum_addr(&t.inner_src, true);
            ip.src_addr = t.inner_src;
        }
        if f & INNER_DST != 0 {
            old += sum_addr(&ip.dst_addr, true);
            new += sum_addr(&t.inner_dst, true);
            ip.dst_addr = t.inner_dst;
        }
    } else {
        let ip = pkt
            .header_mut::<Ipv4Hdr>(q_l3)
            .ok_or(Reason::DropMalformedL3)?;
        let (mut o, mut n) = (0u64, 0u64);
        if f & INNER_SRC != 0 {
            o += sum_addr(&wide(ip.src_addr), false);
            n += sum_addr(&t.inner_src, false);
            ip.src_addr = [
                t.inner_src[0],
                t.inner_src[1],
                t.inner_src[2],
                t.inner_src[3],
            ];
        }
        if f & INNER_DST != 0 {
            o += sum_addr(&wide(ip.dst_addr), false);
            n += sum_addr(&t.inner_dst, false);
            ip.dst_addr = [
                t.inner_dst[0],
                t.inner_dst[1],
                t.inner_dst[2],
                t.inner_dst[3],
            ];
        }
        let check = u16::from_be_bytes(ip.check);
        let now = update(check, o, n);
        ip.check = now.to_be_bytes();
        old += o + check as u64;
        new += n + now as u64;
    }
    // The quoted ports.
    let ports = pkt
        .header_mut::<[u8; 4]>(q_l4)
        .ok_or(Reason::DropMalformedL4)?;
    if f & INNER_SRC != 0 {
        old += u16::from_be_bytes([ports[0], ports[1]]) as u64;
        new += u16::from_be(t.inner_sport_be) as u64;
        let b = t.inner_sport_be.to_ne_bytes();
        ports[0] = b[0];
        ports[1] = b[1];
    }
    if f & INNER_DST != 0 {
        old += u16::from_be_bytes([ports[2], ports[3]]) as u64;
        new += u16::from_be(t.inner_dport_be) as u64;
        let b = t.inner_dport_be.to_ne_bytes();
        ports[2] = b[0];
        ports[3] = b[1];
    }
    let icmp = pkt
        .header_mut::<IcmpHdr>(p.l4_off)
        .ok_or(Reason::DropMalformedL4)?;
    icmp.check = update(u16::from_be_bytes(icmp.check), old, new).to_be_bytes();
    Ok(())
}
