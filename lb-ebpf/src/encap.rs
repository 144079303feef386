//! The one writer of outer headers, for every path that puts new headers in front of a packet:
//! TUN forwarding (an outer IP header toward the real server) and the ICMP too-big answer (an IP
//! header from the VIP back to the client). It grows the frame's head, rewrites the Ethernet
//! header in front of the new headers (keeping a VLAN tag) and writes the outer IPv4 or IPv6
//! header in place (not built on the stack: the callers' frames are tight).

use lb_common::{
    csum::{finish, sum_addr},
    Reason,
};

use crate::{
    packet::Packet,
    parse::{EthHdr, Ipv4Hdr, Ipv6Hdr, VlanHdr, ETH_LEN, ETH_P_IP, ETH_P_IPV6},
};

/// Hop limit / TTL of headers we originate (the kernel's default).
pub const TTL: u8 = 64;

/// What an outer IP header carries (IPv4 addresses in the first four bytes).
pub struct OuterIp<'a> {
    /// IPv4 TOS / IPv6 traffic class.
    pub tos: u8,
    /// Protocol / next header of the payload.
    pub proto: u8,
    /// Source address.
    pub src: &'a [u8; 16],
    /// Destination address.
    pub dst: &'a [u8; 16],
}

/// Grows the frame by `grow` bytes at its head. The old frame then starts at offset `grow`.
#[inline(always)]
pub fn push(pkt: &mut Packet, grow: usize) -> Result<(), Reason> {
    pkt.adjust_head(-(grow as i32))
        .map_err(|_| Reason::DropTunHeadroom)
}

/// Writes the Ethernet header of a frame whose head grew by `moved` bytes: the given MACs, the
/// old header's VLAN tag when it had one, and the EtherType of the new outer header.
#[inline(always)]
pub fn write_l2(
    pkt: &mut Packet,
    moved: usize,
    vlan: bool,
    dst: &[u8; 6],
    src: &[u8; 6],
    outer_v6: bool,
) -> Result<(), Reason> {
    let ether_type = if outer_v6 { ETH_P_IPV6 } else { ETH_P_IP }.to_be_bytes();
    // The old tag's TPID and TCI, `moved` bytes further in, read before anything is written.
    let tag = if vlan {
        Some(
            *pkt.header::<[u8; 4]>(moved + 12)
                .ok_or(Reason::DropTunHeadroom)?,
        )
    } else {
        None
    };
    let eth = pkt.header_mut::<EthHdr>(0).ok_or(Reason::DropTunHeadroom)?;
    eth.dst = *dst;
    eth.src = *src;
    match tag {
        None => eth.ether_type = ether_type,
        Some(tag) => {
            eth.ether_type = [tag[0], tag[1]];
            let vh = pkt
                .header_mut::<VlanHdr>(ETH_LEN)
                .ok_or(Reason::DropTunHeadroom)?;
            vh.tci = [tag[2], tag[3]];
            vh.ether_type = ether_type;
        }
    }
    Ok(())
}

/// Writes an IPv4 header without options at `off`: `total_len` bytes in all, DF when `df` (a
/// tunnel's outer packet is never fragmented: the client hears about the MTU instead). Returns
/// the sum of the two addresses, for a pseudo-header.
#[inline(always)]
pub fn write_ipv4(
    pkt: &mut Packet,
    off: usize,
    ip: &OuterIp,
    total_len: usize,
    df: bool,
) -> Result<u64, Reason> {
    let addrs = sum_addr(ip.src, false) + sum_addr(ip.dst, false);
    let frags: u16 = if df { 0x4000 } else { 0 };
    let sum = (0x4500 | ip.tos as u64)
        + total_len as u64
        + frags as u64
        + ((TTL as u64) << 8 | ip.proto as u64)
        + addrs;
    let h = pkt
        .header_mut::<Ipv4Hdr>(off)
        .ok_or(Reason::DropTunHeadroom)?;
    h.vihl = 0x45;
    h.tos = ip.tos;
    h.tot_len = (total_len as u16).to_be_bytes();
    h.id = [0; 2];
    h.frags = frags.to_be_bytes();
    h.ttl = TTL;
    h.proto = ip.proto;
    h.check = finish(sum).to_be_bytes();
    h.src_addr = [ip.src[0], ip.src[1], ip.src[2], ip.src[3]];
    h.dst_addr = [ip.dst[0], ip.dst[1], ip.dst[2], ip.dst[3]];
    Ok(addrs)
}

/// Writes an IPv6 header at `off` with `payload_len` bytes after it and flow label `label` (20
/// bits).
/// Returns the sum of the two addresses, for a pseudo-header.
#[inline(always)]
pub fn write_ipv6(
    pkt: &mut Packet,
    off: usize,
    ip: &OuterIp,
    payload_len: usize,
    label: u32,
) -> Result<u64, Reason> {
    let h = pkt
        .header_mut::<Ipv6Hdr>(off)
        .ok_or(Reason::DropTunHeadroom)?;
    h.vcf = [
        0x60 | (ip.tos >> 4),
        (ip.tos << 4) | (label >> 16) as u8,
        (label >> 8) as u8,
        label as u8,
    ];
    h.payload_len = (payload_len as u16).to_be_bytes();
    h.next_hdr = ip.proto;
    h.hop_limit = TTL;
    h.src_addr = *ip.src;
    h.dst_addr = *ip.dst;
    Ok(sum_addr(ip.src, true) + sum_addr(ip.dst, true))
}
