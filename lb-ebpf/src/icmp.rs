//! ICMP on the director: the "too big" answer a client needs for path-MTU discovery through a
//! tunnel, and the flow an ICMP error is about (so it can follow the flow to its real server).

use lb_common::{
    csum::{finish, sum_words},
    FlowKey, Reason, FAMILY_V4, FAMILY_V6, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
};

use crate::{
    csum::sum_packet,
    encap::{self, OuterIp},
    packet::Packet,
    parse::{EthHdr, IcmpHdr, Ipv4Hdr, Ipv6Hdr, Parsed, ICMP_LEN, IPV4_LEN, IPV6_LEN},
    route::Mac,
};

/// Bytes of the offending IPv4 packet quoted (the header with any options, and then some: RFC
/// 1812 asks for as much as fits in 576, RFC 792 for at least the header and 8 bytes).
pub const QUOTE4: usize = 128;
/// Bytes of the offending IPv6 packet quoted (RFC 4443: as much as fits in 1280; 256 is ample
/// for the receiver to find its socket).
pub const QUOTE6: usize = 256;
const IPV6_MIN_MTU: u32 = 1280;
const IPV4_MIN_MTU: u32 = 68;

/// Turns the frame into an ICMP "fragmentation needed" (IPv4) / "packet too big" (IPv6) from
/// the VIP back to the client, advertising `mtu` for the inner packet, to be sent with XDP_TX.
/// A subprogram of its own (cold path, own stack frame).
#[inline(never)]
pub fn too_big(pkt: &mut Packet, p: &Parsed, mtu: u32) -> Result<(), Reason> {
    if p.proto != PROTO_TCP && p.proto != PROTO_UDP {
        // ICMP errors are never answered with ICMP.
        return Err(Reason::DropTooBigUnquotable);
    }
    let v6 = p.family == FAMILY_V6;
    let quote = if v6 { QUOTE6 } else { QUOTE4 };
    let total = pkt.len();
    let keep = p.l3_off + quote;
    if total < keep {
        return Err(Reason::DropTooBigUnquotable);
    }
    let old = *pkt.header::<EthHdr>(0).ok_or(Reason::DropTunHeadroom)?;
    pkt.adjust_tail(-((total - keep) as i32))
        .map_err(|_| Reason::DropTunHeadroom)?;
    let ip_len = if v6 { IPV6_LEN } else { IPV4_LEN };
    let grow = ip_len + ICMP_LEN;
    encap::push(pkt, grow)?;
    // New layout: [L2 (l3_off) | IP | ICMP | old L2 (l3_off) ... ] — the quote starts at
    // grow + l3_off, where the original IP header now is. Back to the client: the MACs swap.
    encap::write_l2(pkt, grow, p.l3_off > 14, &Mac(old.src), &Mac(old.dst), v6)?;
    let quote_off = p.l3_off + grow;
    let icmp_off = p.l3_off + ip_len;
    // From the VIP back to the client.
    let ip = OuterIp {
        tos: 0,
        proto: if v6 { PROTO_ICMPV6 } else { PROTO_ICMP },
        src: &p.dst,
        dst: &p.src,
    };
    let (icmp, sum) = if v6 {
        let body = sum_packet::<QUOTE6>(pkt, quote_off).ok_or(Reason::DropTunHeadroom)?;
        let len = ICMP_LEN + QUOTE6;
        let addrs = encap::write_ipv6(pkt, p.l3_off, &ip, len, 0)?;
        let m = mtu.max(IPV6_MIN_MTU).to_be_bytes();
        // Packet too big, with the MTU.
        let icmp: [u8; ICMP_LEN] = [2, 0, 0, 0, m[0], m[1], m[2], m[3]];
        let pseudo = addrs + len as u64 + PROTO_ICMPV6 as u64;
        (icmp, pseudo + sum_words(&icmp) + body)
    } else {
        let body = sum_packet::<QUOTE4>(pkt, quote_off).ok_or(Reason::DropTunHeadroom)?;
        encap::write_ipv4(pkt, p.l3_off, &ip, IPV4_LEN + ICMP_LEN + QUOTE4, false)?;
        let m = (mtu.clamp(IPV4_MIN_MTU, 0xffff) as u16).to_be_bytes();
        // Destination unreachable, fragmentation needed and DF set, next-hop MTU.
        let icmp: [u8; ICMP_LEN] = [3, 4, 0, 0, 0, 0, m[0], m[1]];
        (icmp, sum_words(&icmp) + body)
    };
    let h = pkt
        .header_mut::<IcmpHdr>(icmp_off)
        .ok_or(Reason::DropTunHeadroom)?;
    h.type_ = icmp[0];
    h.code = icmp[1];
    h.check = finish(sum).to_be_bytes();
    h.data = [icmp[4], icmp[5], icmp[6], icmp[7]];
    Ok(())
}

/// Where the packet an ICMP error quotes lies in the frame.
pub struct Quote {
    /// Offset of the quoted IP header.
    pub l3_off: u16,
    /// Offset of the quoted TCP/UDP header (its ports at least are inside the frame).
    pub l4_off: u16,
}

/// Where the quoted packet of an ICMP error (already checked by [`quoted_flow`]) is.
#[inline(always)]
pub fn quote(pkt: &Packet, p: &Parsed) -> Option<Quote> {
    let l3_off = p.l4_off + ICMP_LEN;
    let l4_off = if p.family == FAMILY_V4 {
        let ip = pkt.header::<Ipv4Hdr>(l3_off)?;
        l3_off + (ip.vihl & 0x0f) as usize * 4
    } else {
        l3_off + IPV6_LEN
    };
    pkt.header::<[u8; 4]>(l4_off)?;
    Some(Quote {
        l3_off: l3_off as u16,
        l4_off: l4_off as u16,
    })
}

/// For an ICMP error addressed to us that quotes a TCP/UDP packet a real server sent from a VIP
/// (an error about a reply, on its way to the client), the client's flow as the connection table
/// keys it. IPv4: destination unreachable, source quench, time exceeded; IPv6: destination
/// unreachable, packet too big, time exceeded — the types IPVS relays (ip_vs_in_icmp).
#[inline(always)]
pub fn quoted_flow(pkt: &Packet, p: &Parsed) -> Option<FlowKey> {
    let ty = pkt.header::<IcmpHdr>(p.l4_off)?.type_;
    let inner = p.l4_off + ICMP_LEN;
    let mut k = FlowKey {
        src: [0; 16],
        dst: [0; 16],
        sport_be: 0,
        dport_be: 0,
        proto: 0,
        family: p.family,
        _pad: [0; 2],
    };
    let l4_off = if p.family == FAMILY_V4 {
        if ty != 3 && ty != 4 && ty != 11 {
            return None;
        }
        let ip = pkt.header::<Ipv4Hdr>(inner)?;
        let ihl = (ip.vihl & 0x0f) as usize;
        if ip.vihl >> 4 != 4 || ihl < 5 {
            return None;
        }
        k.proto = ip.proto;
        // The quoted packet went server -> client: its source is the VIP.
        k.dst[..4].copy_from_slice(&ip.src_addr);
        k.src[..4].copy_from_slice(&ip.dst_addr);
        inner + ihl * 4
    } else {
        if ty != 1 && ty != 2 && ty != 3 {
            return None;
        }
        let ip = pkt.header::<Ipv6Hdr>(inner)?;
        k.proto = ip.next_hdr;
        k.dst = ip.src_addr;
        k.src = ip.dst_addr;
        inner + IPV6_LEN
    };
    if k.proto != PROTO_TCP && k.proto != PROTO_UDP {
        return None;
    }
    // The quoted ports, server -> client.
    let ports = pkt.header::<[u8; 4]>(l4_off)?;
    k.dport_be = u16::from_ne_bytes([ports[0], ports[1]]);
    k.sport_be = u16::from_ne_bytes([ports[2], ports[3]]);
    Some(k)
}
