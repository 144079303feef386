//! Bounds-checked access to packet bytes and the director's header parser.

use aya_ebpf::programs::XdpContext;
use lb_common::{Reason, FAMILY_V4, FAMILY_V6, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};

/// Ethernet header length.
pub const ETH_LEN: usize = 14;
const VLAN_LEN: usize = 4;
/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
/// IPv6 header length.
pub const IPV6_LEN: usize = 40;
/// IPv4 header length without options.
pub const IPV4_LEN: usize = 20;
const TCP_LEN: usize = 20;
const UDP_LEN: usize = 8;

/// Returns a pointer to a `T` at `offset` bytes into the packet, or None when the packet is too
/// short. Every packet access goes through here, so the verifier sees one bounds-check shape.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Reads a big-endian u16 at `offset`.
#[inline(always)]
fn be16_at(ctx: &XdpContext, offset: usize) -> Option<u16> {
    let p = ptr_at::<[u8; 2]>(ctx, offset)?;
    // SAFETY: ptr_at checked that two bytes are inside the packet.
    let b = unsafe { *p };
    Some(u16::from_be_bytes(b))
}

/// What the director needs from a packet's headers.
pub struct Parsed {
    /// Offset of the L3 header (after Ethernet and an optional VLAN tag).
    pub l3_off: usize,
    /// Offset of the L4 header.
    pub l4_off: usize,
    /// IPv4 TOS / IPv6 traffic class (DSCP and ECN), copied to a tunnel's outer header.
    pub tos: u8,
    /// FAMILY_V4 or FAMILY_V6.
    pub family: u8,
    /// PROTO_TCP or PROTO_UDP; PROTO_ICMP / PROTO_ICMPV6 (no ports) for the ICMP path.
    pub proto: u8,
    /// Source address (IPv4 in the first four bytes).
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// Source port, network order.
    pub sport_be: u16,
    /// Destination port, network order.
    pub dport_be: u16,
    /// TCP flags byte (0 for UDP).
    pub tcp_flags: u8,
}

/// TCP flag bits of the flags byte.
pub mod tcp_flag {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// Parses Ethernet, one optional 802.1Q/802.1ad tag, IPv4 or IPv6, then TCP or UDP. Err carries
/// the reason the packet is not balanced (a Pass* reason, or a Drop* reason when it is malformed).
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Parsed, Reason> {
    let mut ethertype = be16_at(ctx, 12).ok_or(Reason::DropTruncatedL2)?;
    let mut l3_off = ETH_LEN;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        ethertype = be16_at(ctx, ETH_LEN + 2).ok_or(Reason::DropTruncatedL2)?;
        l3_off += VLAN_LEN;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            return Err(Reason::PassStackedVlan);
        }
    }
    let mut p = Parsed {
        l3_off,
        l4_off: 0,
        tos: 0,
        family: 0,
        proto: 0,
        src: [0; 16],
        dst: [0; 16],
        sport_be: 0,
        dport_be: 0,
        tcp_flags: 0,
    };
    let l4_off = match ethertype {
        ETH_P_IP => parse_ipv4(ctx, &mut p)?,
        ETH_P_IPV6 => parse_ipv6(ctx, &mut p)?,
        _ => return Err(Reason::PassNonIp),
    };
    p.l4_off = l4_off;
    if p.proto == PROTO_TCP {
        let tcp = ptr_at::<[u8; TCP_LEN]>(ctx, l4_off).ok_or(Reason::DropMalformedL4)?;
        // SAFETY: bounds checked by ptr_at.
        let tcp = unsafe { &*tcp };
        if (tcp[12] >> 4) < 5 {
            return Err(Reason::DropMalformedL4);
        }
        p.sport_be = u16::from_ne_bytes([tcp[0], tcp[1]]);
        p.dport_be = u16::from_ne_bytes([tcp[2], tcp[3]]);
        p.tcp_flags = tcp[13];
    } else if p.proto == PROTO_UDP {
        let udp = ptr_at::<[u8; UDP_LEN]>(ctx, l4_off).ok_or(Reason::DropMalformedL4)?;
        // SAFETY: bounds checked by ptr_at.
        let udp = unsafe { &*udp };
        p.sport_be = u16::from_ne_bytes([udp[0], udp[1]]);
        p.dport_be = u16::from_ne_bytes([udp[2], udp[3]]);
    }
    Ok(p)
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, p: &mut Parsed) -> Result<usize, Reason> {
    let ip = ptr_at::<[u8; 20]>(ctx, p.l3_off).ok_or(Reason::DropMalformedL3)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    let ihl = (ip[0] & 0x0f) as usize;
    if ip[0] >> 4 != 4 || ihl < 5 {
        return Err(Reason::DropMalformedL3);
    }
    let hdr_len = ihl * 4;
    // Options, when present, must be inside the packet too.
    if ctx.data() + p.l3_off + hdr_len > ctx.data_end() {
        return Err(Reason::DropMalformedL3);
    }
    // MF set or a non-zero offset: no usable L4 header in this packet.
    if (u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff) != 0 {
        return Err(Reason::PassFragment);
    }
    let proto = ip[9];
    if proto != PROTO_TCP && proto != PROTO_UDP && proto != PROTO_ICMP {
        return Err(Reason::PassOtherProto);
    }
    p.tos = ip[1];
    p.family = FAMILY_V4;
    p.proto = proto;
    p.src[..4].copy_from_slice(&ip[12..16]);
    p.dst[..4].copy_from_slice(&ip[16..20]);
    Ok(p.l3_off + hdr_len)
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, p: &mut Parsed) -> Result<usize, Reason> {
    let ip = ptr_at::<[u8; IPV6_LEN]>(ctx, p.l3_off).ok_or(Reason::DropMalformedL3)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    if ip[0] >> 4 != 6 {
        return Err(Reason::DropMalformedL3);
    }
    let next = ip[6];
    if next != PROTO_TCP && next != PROTO_UDP && next != PROTO_ICMPV6 {
        return Err(match next {
            // hop-by-hop, routing, fragment, destination options, AH, mobility
            0 | 43 | 44 | 60 | 51 | 135 => Reason::PassIpv6ExtHeader,
            _ => Reason::PassOtherProto,
        });
    }
    p.tos = (ip[0] << 4) | (ip[1] >> 4);
    p.family = FAMILY_V6;
    p.proto = next;
    p.src.copy_from_slice(&ip[8..24]);
    p.dst.copy_from_slice(&ip[24..40]);
    Ok(p.l3_off + IPV6_LEN)
}
