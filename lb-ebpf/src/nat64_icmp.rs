//! NAT64's ICMP errors (RFC 7915): an ICMPv4 error about what the director sent a NAT64 real
//! server (LIP:lport -> RIP:rport) becomes an ICMPv6 error from the VIP to the IPv6 client about
//! the client's own packet (CIP:cport -> VIP:vport); an ICMPv6 error from the client's path
//! about a reply (VIP:vport -> CIP:cport) becomes an ICMPv4 error from the local address to the
//! real server about what it sent (RIP:rport -> LIP:lport).
//!
//! Both IP headers change family, the error's own and the quoted packet's: the frame grows (to
//! IPv6) or shrinks (to IPv4) by 40 bytes at its head (bpf_xdp_adjust_head), so the quoted L4
//! header and everything after it stay where they are in memory and are never copied. Type,
//! code and MTU follow lb_common::icmp64's table; an error it has no entry for is dropped. The
//! ICMP checksum is updated incrementally: the old checksum, minus the words that went (the old
//! ICMP header, the quoted IP header, the quoted ports; ICMPv6's pseudo-header), plus the words
//! that came, never re-summed over the quote. The quoted L4 checksum is left as it was (as the
//! same-family translation leaves it: the quote is often cut short, and receivers do not check
//! it). The quoted packet's length fields say the original packet's length (not the quote's),
//! translated; its TTL becomes the hop limit and back. A quoted IPv4 header with options (the
//! director never sends one) and an ICMPv6 error that would exceed IPv6's 1280 bytes (RFC 4443
//! 2.4; an ICMPv4 message of more than 1220 bytes after its IP header, where RFC 1812 routers
//! send at most 576 in all) are not translated: cutting the quote would mean summing what is
//! cut off.

use lb_common::{
    csum::{finish, update},
    icmp64::{self, Mapped},
    Reason, FAMILY_V4, PROTO_ICMP, PROTO_ICMPV6,
};

use crate::{
    csum::sum_packet,
    encap::{write_ipv6, OuterIp, TTL},
    nat::{status, IcmpRewrite},
    packet::Packet,
    parse::{
        IcmpHdr, Ipv4Hdr, Ipv6Hdr, Parsed, ETH_LEN, ETH_P_IP, ETH_P_IPV6, ICMP_LEN, IPV4_LEN,
        IPV6_LEN, VLAN_LEN,
    },
};

/// IPv6's limit for an ICMPv6 error, IPv6 header included (RFC 4443 2.4 (c)).
const ICMPV6_MAX: usize = 1280;
/// IPv4 packets up to this size are translated without DF (RFC 7915 5.1).
const IPV4_DF_ABOVE: usize = 1260;
/// Bytes of a quoted L4 header the translation needs (the ports).
const PORTS_LEN: usize = 4;

/// Translates the parsed ICMP error to the other family as `t` (all four ends, the quote's
/// offsets) says. Each direction is a BPF subprogram of its own; the result is 0 or the reason
/// it was not translated (then the frame may have moved: it is dropped).
#[inline(always)]
pub fn translate(pkt: &mut Packet, p: &Parsed, t: &IcmpRewrite) -> u32 {
    if p.family == FAMILY_V4 {
        to_icmpv6_call(pkt, p, t)
    } else {
        to_icmpv4_call(pkt, p, t)
    }
}

#[inline(never)]
fn to_icmpv6_call(pkt: &mut Packet, p: &Parsed, t: &IcmpRewrite) -> u32 {
    status(to_icmpv6(pkt, p, t))
}

#[inline(never)]
fn to_icmpv4_call(pkt: &mut Packet, p: &Parsed, t: &IcmpRewrite) -> u32 {
    status(to_icmpv4(pkt, p, t))
}

/// Copies the Ethernet header (and VLAN tag, when `vlan`) at `from` to `to` with `ether_type`
/// for the new IP header, two bytes at a time, in increasing order (right for overlapping
/// places when `to` < `from`): MACs held in registers across the head's move would crowd the
/// stack, and a copy in one piece between two places in the packet becomes a memmove call,
/// which BPF has not. 18 bytes are copied whatever the tag: without one, the last four land
/// where the new IP header is written afterwards.
#[inline(always)]
fn move_l2(
    pkt: &mut Packet,
    from: usize,
    to: usize,
    vlan: bool,
    ether_type: u16,
) -> Result<(), Reason> {
    let mut i = 0;
    while i < ETH_LEN + VLAN_LEN {
        // The place written to is checked first: a check the compiler finds implied by
        // another (the read's) is left out, and the verifier would not see it.
        if !pkt.has(to + i + 2) {
            return Err(Reason::DropTunHeadroom);
        }
        let w = *pkt
            .header::<[u8; 2]>(from + i)
            .ok_or(Reason::DropTruncatedL2)?;
        *pkt.header_mut::<[u8; 2]>(to + i)
            .ok_or(Reason::DropTunHeadroom)? = w;
        i += 2;
    }
    // The EtherType after the MACs, or after the tag.
    let at = to
        + if vlan {
            ETH_LEN + VLAN_LEN - 2
        } else {
            ETH_LEN - 2
        };
    *pkt.header_mut::<[u8; 2]>(at)
        .ok_or(Reason::DropTunHeadroom)? = ether_type.to_be_bytes();
    Ok(())
}

/// Sum of an ICMP header's words without its checksum: type and code, and the second word.
#[inline(always)]
fn sum_icmp(ty: u8, code: u8, rest: u32) -> u64 {
    ((ty as u64) << 8 | code as u64) + (rest >> 16) as u64 + (rest & 0xffff) as u64
}

/// Sum of a quote's two ports (network order, as read from the packet).
#[inline(always)]
fn sum_ports(sport_be: u16, dport_be: u16) -> u64 {
    u16::from_be(sport_be) as u64 + u16::from_be(dport_be) as u64
}

/// Sum of the source and destination addresses of the IPv6 header at `l3` (the pseudo-header's).
#[inline(always)]
fn sum_addrs6(pkt: &Packet, l3: usize) -> Result<u64, Reason> {
    // Source and destination: 32 bytes from offset 8.
    sum_packet::<32>(pkt, l3 + 8).ok_or(Reason::DropMalformedL3)
}

/// An IPv4 header's fields other than its addresses.
struct Ipv4Fields {
    tos: u8,
    proto: u8,
    ttl: u8,
    /// Don't fragment.
    df: bool,
    /// Total length.
    total: u16,
}

/// Writes an IPv4 header without options at `off` with addresses `src` and `dst` (16-byte
/// form), then its checksum, summed from the packet by the kernel's helper (computed from the
/// address bytes, as encap::write_ipv4 does it, they would be held in registers until stored
/// and crowd the stack). Returns the sum of the header's words (checksum included).
#[inline(always)]
fn write_ipv4_hdr(
    pkt: &mut Packet,
    off: usize,
    f: &Ipv4Fields,
    src: &[u8; 16],
    dst: &[u8; 16],
) -> Result<u64, Reason> {
    let h = pkt
        .header_mut::<Ipv4Hdr>(off)
        .ok_or(Reason::DropTunHeadroom)?;
    h.vihl = 0x45;
    h.tos = f.tos;
    h.tot_len = f.total.to_be_bytes();
    h.id = [0; 2];
    h.frags = if f.df { [0x40, 0] } else { [0; 2] };
    h.ttl = f.ttl;
    h.proto = f.proto;
    h.check = [0; 2];
    h.src_addr = [src[0], src[1], src[2], src[3]];
    h.dst_addr = [dst[0], dst[1], dst[2], dst[3]];
    let sum = sum_packet::<IPV4_LEN>(pkt, off).ok_or(Reason::DropTunHeadroom)?;
    let check = finish(sum);
    pkt.header_mut::<Ipv4Hdr>(off)
        .ok_or(Reason::DropTunHeadroom)?
        .check = check.to_be_bytes();
    Ok(sum + check as u64)
}

/// Writes the translated ICMP header at `off` with its checksum updated from `check` for the
/// words that went (`old`) and came (`new`, without the header's own).
#[inline(always)]
fn write_icmp(
    pkt: &mut Packet,
    off: usize,
    m: &Mapped,
    check: u16,
    old: u64,
    new: u64,
) -> Result<(), Reason> {
    let new = new + sum_icmp(m.ty, m.code, m.rest);
    let h = pkt
        .header_mut::<IcmpHdr>(off)
        .ok_or(Reason::DropTunHeadroom)?;
    h.type_ = m.ty;
    h.code = m.code;
    h.check = update(check, old, new).to_be_bytes();
    h.data = m.rest.to_be_bytes();
    Ok(())
}

/// Writes the quote's new ports at `off`; returns their sum.
#[inline(always)]
fn write_ports(pkt: &mut Packet, off: usize, t: &IcmpRewrite) -> Result<u64, Reason> {
    let ports = pkt
        .header_mut::<[u8; PORTS_LEN]>(off)
        .ok_or(Reason::DropTunHeadroom)?;
    let (s, d) = (
        t.inner_sport_be.to_ne_bytes(),
        t.inner_dport_be.to_ne_bytes(),
    );
    *ports = [s[0], s[1], d[0], d[1]];
    Ok(sum_ports(t.inner_sport_be, t.inner_dport_be))
}

/// The ports the quote has now, summed.
#[inline(always)]
fn read_ports(pkt: &Packet, off: usize) -> Result<u64, Reason> {
    let p = pkt
        .header::<[u8; PORTS_LEN]>(off)
        .ok_or(Reason::DropMalformedL4)?;
    Ok(u16::from_be_bytes([p[0], p[1]]) as u64 + u16::from_be_bytes([p[2], p[3]]) as u64)
}

/// ICMPv4 -> ICMPv6. In: [L2 | IPv4 (ihl) | ICMP | IPv4 (20) | L4...]; out: [L2 | IPv6 |
/// ICMPv6 | IPv6 | L4...], 60 - ihl bytes longer, the L4 part unmoved.
#[inline(always)]
fn to_icmpv6(pkt: &mut Packet, p: &Parsed, t: &IcmpRewrite) -> Result<(), Reason> {
    // Offsets the verifier can bound: L2 is 14 or 18 bytes, an IPv4 header 20 to 60.
    let l3 = p.l3_off & 0x1f;
    let ihl = (p.l4_off - p.l3_off) & 0x3c;
    let q_l3 = l3 + ihl + ICMP_LEN;
    if t.quote_l4 as usize != q_l3 + IPV4_LEN {
        // The quoted header has options: the director never sent such a packet.
        return Err(Reason::DropNat64IcmpUntranslatable);
    }
    let (tos, total) = {
        let ip = pkt.header::<Ipv4Hdr>(l3).ok_or(Reason::DropMalformedL3)?;
        (ip.tos, u16::from_be_bytes(ip.tot_len) as usize)
    };
    // The ICMP message as the checksum covers it: all inside the frame, the quote's ports too.
    if total < ihl + ICMP_LEN + IPV4_LEN + PORTS_LEN || l3 + total > pkt.len() {
        return Err(Reason::DropMalformedL3);
    }
    let icmp6_len = total - ihl + (IPV6_LEN - IPV4_LEN);
    if IPV6_LEN + icmp6_len > ICMPV6_MAX {
        return Err(Reason::DropNat64IcmpUntranslatable);
    }
    let (ty, code, check, rest) = {
        let h = pkt
            .header::<IcmpHdr>(l3 + ihl)
            .ok_or(Reason::DropMalformedL4)?;
        (
            h.type_,
            h.code,
            u16::from_be_bytes(h.check),
            u32::from_be_bytes(h.data),
        )
    };
    let m = icmp64::v4_to_v6(ty, code, rest).ok_or(Reason::DropNat64IcmpUntranslatable)?;
    let (q_tos, q_total, q_ttl, q_proto) = {
        let q = pkt.header::<Ipv4Hdr>(q_l3).ok_or(Reason::DropMalformedL3)?;
        (q.tos, u16::from_be_bytes(q.tot_len), q.ttl, q.proto)
    };
    // What the checksum loses: the ICMP header, the quoted IPv4 header, the quoted ports.
    let old = sum_icmp(ty, code, rest)
        + sum_packet::<IPV4_LEN>(pkt, q_l3).ok_or(Reason::DropMalformedL3)?
        + read_ports(pkt, q_l3 + IPV4_LEN)?;
    // The frame starts 60 - ihl bytes earlier; its Ethernet header is then as far in. The
    // distance is hidden from the optimiser (black_box), which would otherwise fold it into
    // "frame start minus ihl", a packet pointer the verifier refuses to read through; masked,
    // the verifier sees 0 to 60.
    let grow = (2 * IPV6_LEN - IPV4_LEN) - ihl;
    pkt.adjust_head(-(grow as i32))
        .map_err(|_| Reason::DropTunHeadroom)?;
    let grown = core::hint::black_box(grow) & 0x3c;
    move_l2(pkt, grown, 0, l3 > ETH_LEN, ETH_P_IPV6)?;
    let outer = OuterIp {
        tos,
        proto: PROTO_ICMPV6,
        src: &t.outer_src,
        dst: &t.outer_dst,
    };
    write_ipv6(pkt, l3, &outer, icmp6_len, 0)?;
    // What it gains: the pseudo-header, the quoted IPv6 header (written, then summed), ports.
    // Addresses are summed from the packet by the kernel's helper (byte by byte, they would
    // crowd the stack).
    let mut new = sum_addrs6(pkt, l3)? + icmp6_len as u64 + PROTO_ICMPV6 as u64;
    let q6 = l3 + IPV6_LEN + ICMP_LEN;
    let inner = OuterIp {
        tos: q_tos,
        proto: q_proto,
        src: &t.inner_src,
        dst: &t.inner_dst,
    };
    write_ipv6(
        pkt,
        q6,
        &inner,
        q_total.saturating_sub(IPV4_LEN as u16) as usize,
        0,
    )?;
    pkt.header_mut::<Ipv6Hdr>(q6)
        .ok_or(Reason::DropTunHeadroom)?
        .hop_limit = q_ttl;
    new += sum_packet::<IPV6_LEN>(pkt, q6).ok_or(Reason::DropTunHeadroom)?;
    new += write_ports(pkt, q6 + IPV6_LEN, t)?;
    write_icmp(pkt, l3 + IPV6_LEN, &m, check, old, new)
}

/// ICMPv6 -> ICMPv4. In: [L2 | IPv6 | ICMPv6 | IPv6 | L4...]; out: [L2 | IPv4 | ICMP | IPv4 |
/// L4...], 40 bytes shorter, the L4 part unmoved.
#[inline(always)]
fn to_icmpv4(pkt: &mut Packet, p: &Parsed, t: &IcmpRewrite) -> Result<(), Reason> {
    let l3 = p.l3_off & 0x1f;
    let q_l3 = l3 + IPV6_LEN + ICMP_LEN;
    if t.quote_l4 as usize != q_l3 + IPV6_LEN {
        return Err(Reason::DropNat64IcmpUntranslatable);
    }
    let icmp6_len = {
        let ip = pkt.header::<Ipv6Hdr>(l3).ok_or(Reason::DropMalformedL3)?;
        u16::from_be_bytes(ip.payload_len) as usize
    };
    if icmp6_len < ICMP_LEN + IPV6_LEN + PORTS_LEN || l3 + IPV6_LEN + icmp6_len > pkt.len() {
        return Err(Reason::DropMalformedL3);
    }
    let (ty, code, check, rest) = {
        let h = pkt
            .header::<IcmpHdr>(l3 + IPV6_LEN)
            .ok_or(Reason::DropMalformedL4)?;
        (
            h.type_,
            h.code,
            u16::from_be_bytes(h.check),
            u32::from_be_bytes(h.data),
        )
    };
    let m = icmp64::v6_to_v4(ty, code, rest).ok_or(Reason::DropNat64IcmpUntranslatable)?;
    let (q_tos, q_payload, q_hops, q_next) = {
        let q = pkt.header::<Ipv6Hdr>(q_l3).ok_or(Reason::DropMalformedL3)?;
        (
            (q.vcf[0] << 4) | (q.vcf[1] >> 4),
            u16::from_be_bytes(q.payload_len),
            q.hop_limit,
            q.next_hdr,
        )
    };
    // What the checksum loses: the pseudo-header, the ICMPv6 header, the quoted IPv6 header,
    // the quoted ports.
    let old = sum_addrs6(pkt, l3)?
        + icmp6_len as u64
        + PROTO_ICMPV6 as u64
        + sum_icmp(ty, code, rest)
        + sum_packet::<IPV6_LEN>(pkt, q_l3).ok_or(Reason::DropMalformedL3)?
        + read_ports(pkt, q_l3 + IPV6_LEN)?;
    // The Ethernet header first moves to where the frame will start, 40 bytes in (over the
    // outer IPv6 header, read already).
    let shrink = 2 * (IPV6_LEN - IPV4_LEN);
    move_l2(pkt, 0, shrink, l3 > ETH_LEN, ETH_P_IP)?;
    pkt.adjust_head(shrink as i32)
        .map_err(|_| Reason::DropTunHeadroom)?;
    // The IPv4 packet is as long as the ICMPv6 message was: two headers 20 bytes shorter.
    let total = icmp6_len;
    let outer = Ipv4Fields {
        tos: p.tos,
        proto: PROTO_ICMP,
        ttl: TTL,
        df: total > IPV4_DF_ABOVE,
        total: total as u16,
    };
    write_ipv4_hdr(pkt, l3, &outer, &t.outer_src, &t.outer_dst)?;
    // What it gains (no pseudo-header in ICMPv4): the quoted IPv4 header (written, then
    // summed), ports.
    let q4 = l3 + IPV4_LEN + ICMP_LEN;
    let inner = Ipv4Fields {
        tos: q_tos,
        proto: q_next,
        ttl: q_hops,
        df: true,
        total: q_payload.saturating_add(IPV4_LEN as u16),
    };
    let mut new = write_ipv4_hdr(pkt, q4, &inner, &t.inner_src, &t.inner_dst)?;
    new += write_ports(pkt, q4 + IPV4_LEN, t)?;
    write_icmp(pkt, l3 + IPV4_LEN, &m, check, old, new)
}
