//! Address translation: a TCP/UDP packet's addresses and ports rewritten in place, with the
//! IPv4 header checksum and the L4 checksum updated incrementally (RFC 1624), never recomputed
//! over the payload. NAT rewrites the destination inbound and the source of replies; FULLNAT
//! rewrites both ends both ways.

use lb_common::{
    csum::{sum_addr, update},
    Reason, FAMILY_V6, PROTO_TCP, PROTO_UDP,
};

use crate::{
    packet::Packet,
    parse::{IcmpHdr, Ipv4Hdr, Ipv6Hdr, Parsed, TcpHdr, UdpHdr},
};

/// A TCP/UDP packet's new addresses and ports (16-byte form, IPv4 in the first four bytes, the
/// packet's family; ports in network order). An end that NAT leaves alone is given as it is.
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

/// Rewrites the parsed packet's addresses and ports to `t`. A UDP/IPv4 datagram sent without a
/// checksum keeps none. A BPF subprogram of its own (its temporaries stay off the caller's
/// stack frame).
#[inline(never)]
pub fn rewrite(pkt: &mut Packet, p: &Parsed, t: &Tuple) -> Result<(), Reason> {
    let v6 = p.family == FAMILY_V6;
    let old_sum = sum_addr(&p.src, v6) + sum_addr(&p.dst, v6);
    let new_sum = sum_addr(t.src, v6) + sum_addr(t.dst, v6);
    if v6 {
        let ip = pkt
            .header_mut::<Ipv6Hdr>(p.l3_off)
            .ok_or(Reason::DropMalformedL3)?;
        ip.src_addr = *t.src;
        ip.dst_addr = *t.dst;
    } else {
        let ip = pkt
            .header_mut::<Ipv4Hdr>(p.l3_off)
            .ok_or(Reason::DropMalformedL3)?;
        ip.src_addr = [t.src[0], t.src[1], t.src[2], t.src[3]];
        ip.dst_addr = [t.dst[0], t.dst[1], t.dst[2], t.dst[3]];
        let check = update(u16::from_be_bytes(ip.check), old_sum, new_sum);
        ip.check = check.to_be_bytes();
    }
    rewrite_ports(pkt, p, old_sum, new_sum, t, true)
}

/// Writes `t`'s ports into the TCP/UDP header and updates its checksum for the ports and for
/// the pseudo-header's addresses, whose sums were `old_sum` and are `new_sum` (the rest of a
/// pseudo-header sums alike in IPv4 and IPv6). A UDP datagram without a checksum keeps none
/// when `zero_ok` (IPv4 to IPv4); otherwise (toward IPv6, which requires one) it is refused.
#[inline(always)]
pub fn rewrite_ports(
    pkt: &mut Packet,
    p: &Parsed,
    old_sum: u64,
    new_sum: u64,
    t: &Tuple,
    zero_ok: bool,
) -> Result<(), Reason> {
    let l4_old = old_sum + u16::from_be(p.sport_be) as u64 + u16::from_be(p.dport_be) as u64;
    let l4_new = new_sum + u16::from_be(t.sport_be) as u64 + u16::from_be(t.dport_be) as u64;
    if p.proto == PROTO_TCP {
        let tcp = pkt
            .header_mut::<TcpHdr>(p.l4_off)
            .ok_or(Reason::DropMalformedL4)?;
        tcp.source = t.sport_be.to_ne_bytes();
        tcp.dest = t.dport_be.to_ne_bytes();
        tcp.check = update(u16::from_be_bytes(tcp.check), l4_old, l4_new).to_be_bytes();
    } else if p.proto == PROTO_UDP {
        let udp = pkt
            .header_mut::<UdpHdr>(p.l4_off)
            .ok_or(Reason::DropMalformedL4)?;
        // Zero means "no checksum" (IPv4 only; IPv6 requires one), and a computed zero is sent
        // as 0xffff.
        let none = udp.check == [0, 0] && p.family != FAMILY_V6;
        if none && !zero_ok {
            return Err(Reason::DropNat64UdpNoChecksum);
        }
        udp.src = t.sport_be.to_ne_bytes();
        udp.dst = t.dport_be.to_ne_bytes();
        if !none {
            let c = match update(u16::from_be_bytes(udp.check), l4_old, l4_new) {
                0 => 0xffff,
                c => c,
            };
            udp.check = c.to_be_bytes();
        }
    }
    Ok(())
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
