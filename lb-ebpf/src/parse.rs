//! Header layouts and parsing: Ethernet with one optional VLAN tag (shared by the director and
//! the decapsulator), then the director's IPv4/IPv6 and TCP/UDP/ICMP view of a packet.
//!
//! IPv4, IPv6, UDP and ICMP headers are network-types' structs. Ethernet, the VLAN tag and TCP
//! are declared here: network-types 0.2 gives Ethernet and VLAN a `u16` EtherType (alignment 2,
//! which a reference at an arbitrary packet offset may not have), and keeps TCP's data offset
//! and flags in a bit-by-bit bitfield, where the director wants the flags byte in one load.

pub use network_types::{
    icmp::Icmpv4Hdr as IcmpHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    udp::UdpHdr,
};

use lb_common::{Reason, FAMILY_V4, FAMILY_V6, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};

use crate::packet::{leading, load_addr4, load_addr6, load_u16, load_u32, Packet};

/// Ethernet header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    /// Destination MAC.
    pub dst: [u8; 6],
    /// Source MAC.
    pub src: [u8; 6],
    /// EtherType (or a VLAN TPID), network order.
    pub ether_type: [u8; 2],
}

/// The rest of an 802.1Q/802.1ad tag after its TPID (which sits in EthHdr::ether_type).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct VlanHdr {
    /// Tag control information.
    pub tci: [u8; 2],
    /// The encapsulated EtherType, network order.
    pub ether_type: [u8; 2],
}

/// TCP header (without options).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TcpHdr {
    /// Source port, network order.
    pub source: [u8; 2],
    /// Destination port, network order.
    pub dest: [u8; 2],
    /// Sequence number.
    pub seq: [u8; 4],
    /// Acknowledgment number.
    pub ack_seq: [u8; 4],
    /// Data offset (high nibble, in 32-bit words) and reserved bits.
    pub doff: u8,
    /// Flags (see `tcp_flag`).
    pub flags: u8,
    /// Window.
    pub window: [u8; 2],
    /// Checksum.
    pub check: [u8; 2],
    /// Urgent pointer.
    pub urg_ptr: [u8; 2],
}

/// GUE header (variant 0; in variant 1 the inner IP header starts where this would).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GueHdr {
    /// Version (2 bits), control flag, header length in words (5 bits).
    pub vc_hlen: u8,
    /// The inner protocol (IPPROTO_IPIP or IPPROTO_IPV6).
    pub proto_ctype: u8,
    /// Flags.
    pub flags: [u8; 2],
}

/// UDP and GUE as a tunnel writes them, in one piece.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UdpGueHdr {
    /// UDP header.
    pub udp: UdpHdr,
    /// GUE header.
    pub gue: GueHdr,
}

/// Ethernet header length.
pub const ETH_LEN: usize = size_of::<EthHdr>();
/// VLAN tag length.
pub const VLAN_LEN: usize = size_of::<VlanHdr>();
/// IPv4 header length without options.
pub const IPV4_LEN: usize = Ipv4Hdr::LEN;
/// IPv6 header length.
pub const IPV6_LEN: usize = Ipv6Hdr::LEN;
/// UDP header length.
pub const UDP_LEN: usize = UdpHdr::LEN;
/// GUE header length (without options).
pub const GUE_LEN: usize = size_of::<GueHdr>();
/// ICMP header length (type, code, checksum and four bytes).
pub const ICMP_LEN: usize = IcmpHdr::LEN;
/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;

const _: () = assert!(ETH_LEN == 14 && VLAN_LEN == 4 && size_of::<TcpHdr>() == 20);
const _: () =
    assert!(IPV4_LEN == 20 && IPV6_LEN == 40 && UDP_LEN == 8 && ICMP_LEN == 8 && GUE_LEN == 4);

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

/// IPv6 next-header values of extension headers: hop-by-hop, routing, fragment, destination
/// options, AH, mobility. Neither program walks them.
#[inline(always)]
pub fn is_ipv6_ext(next: u8) -> bool {
    matches!(next, 0 | 43 | 44 | 60 | 51 | 135)
}

/// The link layer: where L3 starts and what it is.
pub struct L2 {
    /// Offset of the L3 header (14, or 18 after a VLAN tag).
    pub l3_off: usize,
    /// The L3 EtherType.
    pub ether_type: u16,
    /// Whether a VLAN tag sits between the MACs and the EtherType.
    pub vlan: bool,
}

/// Why the link layer was not parsed.
pub enum L2Error {
    /// The frame ends inside the Ethernet header or the VLAN tag.
    Truncated,
    /// A second VLAN tag (QinQ), which neither program handles.
    StackedVlan,
}

/// Parses Ethernet and one optional 802.1Q/802.1ad tag.
#[inline(always)]
pub fn l2(pkt: &Packet) -> Result<L2, L2Error> {
    let eth = pkt.header::<EthHdr>(0).ok_or(L2Error::Truncated)?;
    let ether_type = u16::from_be(load_u16(&eth.ether_type));
    if !is_vlan(ether_type) {
        return Ok(L2 {
            l3_off: ETH_LEN,
            ether_type,
            vlan: false,
        });
    }
    let tag = pkt.header::<VlanHdr>(ETH_LEN).ok_or(L2Error::Truncated)?;
    let ether_type = u16::from_be(load_u16(&tag.ether_type));
    if is_vlan(ether_type) {
        return Err(L2Error::StackedVlan);
    }
    Ok(L2 {
        l3_off: ETH_LEN + VLAN_LEN,
        ether_type,
        vlan: true,
    })
}

#[inline(always)]
fn is_vlan(ether_type: u16) -> bool {
    ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD
}

/// What the director needs from a packet's headers. Aligned to 8, addresses first: they are
/// filled, copied into the flow key and compared in 64-bit words.
#[repr(C, align(8))]
pub struct Parsed {
    /// Source address (IPv4 in the first four bytes, zeros after).
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// Offset of the L3 header (after Ethernet and an optional VLAN tag).
    pub l3_off: usize,
    /// Offset of the L4 header.
    pub l4_off: usize,
    /// Source port, network order.
    pub sport_be: u16,
    /// Destination port, network order.
    pub dport_be: u16,
    /// IPv4 TOS / IPv6 traffic class (DSCP and ECN), copied to a tunnel's outer header.
    pub tos: u8,
    /// FAMILY_V4 or FAMILY_V6.
    pub family: u8,
    /// PROTO_TCP or PROTO_UDP; PROTO_ICMP / PROTO_ICMPV6 (no ports) for the ICMP path.
    pub proto: u8,
    /// TCP flags byte (0 for UDP).
    pub tcp_flags: u8,
}

/// What the IP header gave: the fields of [`Parsed`] it fills, and where L4 starts.
struct L3 {
    src: [u8; 16],
    dst: [u8; 16],
    l4_off: usize,
    /// Where the IP packet ends by its header's length (the frame may carry padding after it).
    end: usize,
    tos: u8,
    family: u8,
    proto: u8,
}

/// Parses Ethernet, one optional 802.1Q/802.1ad tag, IPv4 or IPv6, then TCP or UDP. Err carries
/// the reason the packet is not balanced (a Pass* reason, or a Drop* reason when it is malformed).
/// Header fields are loaded as words (`packet::load_*`), and nothing is zeroed first.
#[inline(always)]
pub fn parse(pkt: &Packet) -> Result<Parsed, Reason> {
    let l2 = l2(pkt).map_err(|e| match e {
        L2Error::Truncated => Reason::DropTruncatedL2,
        L2Error::StackedVlan => Reason::PassStackedVlan,
    })?;
    let l3 = match l2.ether_type {
        ETH_P_IP => parse_ipv4(pkt, l2.l3_off)?,
        ETH_P_IPV6 => parse_ipv6(pkt, l2.l3_off)?,
        _ => return Err(Reason::PassNonIp),
    };
    let (ports, tcp_flags) = if l3.proto == PROTO_TCP {
        let tcp = pkt
            .header::<TcpHdr>(l3.l4_off)
            .ok_or(Reason::DropMalformedL4)?;
        // A header shorter than 20 bytes, or longer than what the IP packet holds.
        let doff = (tcp.doff >> 4) as usize;
        if doff < 5 || l3.l4_off + doff * 4 > l3.end {
            return Err(Reason::DropMalformedL4);
        }
        (load_u32(leading(tcp)), tcp.flags)
    } else if l3.proto == PROTO_UDP {
        let udp = pkt
            .header::<UdpHdr>(l3.l4_off)
            .ok_or(Reason::DropMalformedL4)?;
        // The datagram's own length: at least its header, within the IP packet.
        let len = u16::from_be(load_u16(&udp.len)) as usize;
        if len < 8 || l3.l4_off + len > l3.end {
            return Err(Reason::DropMalformedL4);
        }
        (load_u32(leading(udp)), 0)
    } else {
        (0, 0)
    };
    Ok(Parsed {
        src: l3.src,
        dst: l3.dst,
        l3_off: l2.l3_off,
        l4_off: l3.l4_off,
        // Both ports in one load: source first in memory, so in the low half on a
        // little-endian machine (and the high half on a big-endian one).
        sport_be: if cfg!(target_endian = "little") {
            ports as u16
        } else {
            (ports >> 16) as u16
        },
        dport_be: if cfg!(target_endian = "little") {
            (ports >> 16) as u16
        } else {
            ports as u16
        },
        tos: l3.tos,
        family: l3.family,
        proto: l3.proto,
        tcp_flags,
    })
}

#[inline(always)]
fn parse_ipv4(pkt: &Packet, l3_off: usize) -> Result<L3, Reason> {
    let ip = pkt
        .header::<Ipv4Hdr>(l3_off)
        .ok_or(Reason::DropMalformedL3)?;
    let ihl = (ip.vihl & 0x0f) as usize;
    if ip.vihl >> 4 != 4 || ihl < 5 {
        return Err(Reason::DropMalformedL3);
    }
    let hdr_len = ihl * 4;
    // Options, when present, must be inside the packet too; the stated length must cover the
    // header and fit the frame (the kernel drops the rest before IPVS would see them).
    let tot_len = u16::from_be(load_u16(&ip.tot_len)) as usize;
    if !pkt.has(l3_off + hdr_len) || tot_len < hdr_len || l3_off + tot_len > pkt.len() {
        return Err(Reason::DropMalformedL3);
    }
    // MF set or a non-zero offset: no usable L4 header in this packet.
    if (u16::from_be(load_u16(&ip.frags)) & 0x3fff) != 0 {
        return Err(Reason::PassFragment);
    }
    let proto = ip.proto;
    if proto != PROTO_TCP && proto != PROTO_UDP && proto != PROTO_ICMP {
        return Err(Reason::PassOtherProto);
    }
    Ok(L3 {
        src: load_addr4(&ip.src_addr),
        dst: load_addr4(&ip.dst_addr),
        l4_off: l3_off + hdr_len,
        end: l3_off + tot_len,
        tos: ip.tos,
        family: FAMILY_V4,
        proto,
    })
}

#[inline(always)]
fn parse_ipv6(pkt: &Packet, l3_off: usize) -> Result<L3, Reason> {
    let ip = pkt
        .header::<Ipv6Hdr>(l3_off)
        .ok_or(Reason::DropMalformedL3)?;
    // The payload the header states must fit the frame.
    let end = l3_off + IPV6_LEN + u16::from_be(load_u16(&ip.payload_len)) as usize;
    if ip.vcf[0] >> 4 != 6 || end > pkt.len() {
        return Err(Reason::DropMalformedL3);
    }
    let next = ip.next_hdr;
    if next != PROTO_TCP && next != PROTO_UDP && next != PROTO_ICMPV6 {
        return Err(if is_ipv6_ext(next) {
            Reason::PassIpv6ExtHeader
        } else {
            Reason::PassOtherProto
        });
    }
    Ok(L3 {
        src: load_addr6(&ip.src_addr),
        dst: load_addr6(&ip.dst_addr),
        l4_off: l3_off + IPV6_LEN,
        end,
        tos: (ip.vcf[0] << 4) | (ip.vcf[1] >> 4),
        family: FAMILY_V6,
        proto: next,
    })
}
