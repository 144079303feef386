//! The one writer of outer headers, for every path that puts new headers in front of a packet:
//! TUN forwarding (an outer IP header toward the real server) and the ICMP too-big answer (an IP
//! header from the VIP back to the client). It grows the frame's head, rewrites the Ethernet
//! header in front of the new headers (keeping a VLAN tag) and writes the outer IPv4 or IPv6
//! header in place (not built on the stack: the callers' frames are tight).

use lb_common::{
    csum::{finish, fold},
    Reason,
};

use crate::{
    packet::{addr_words, copy_mac, load_u32, store_u16, store_u32, Packet},
    parse::{EthHdr, VlanHdr, ETH_LEN, ETH_P_IP, ETH_P_IPV6},
    route::Mac,
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
/// old header's VLAN tag when it had one, and the EtherType of the new outer header. In word
/// moves (the MACs are 4-aligned on the callers' stacks).
#[inline(always)]
pub fn write_l2(
    pkt: &mut Packet,
    moved: usize,
    vlan: bool,
    dst: &Mac,
    src: &Mac,
    outer_v6: bool,
) -> Result<(), Reason> {
    let ether_type = u16::to_be(if outer_v6 { ETH_P_IPV6 } else { ETH_P_IP });
    // The old tag's TPID and TCI, `moved` bytes further in, read before anything is written.
    let tag = if vlan {
        Some(load_u32(
            pkt.header::<[u8; 4]>(moved + 12)
                .ok_or(Reason::DropTunHeadroom)?,
        ))
    } else {
        None
    };
    let eth = pkt.header_mut::<EthHdr>(0).ok_or(Reason::DropTunHeadroom)?;
    copy_mac(&mut eth.dst, &dst.0);
    copy_mac(&mut eth.src, &src.0);
    match tag {
        None => store_u16(&mut eth.ether_type, ether_type),
        Some(tag) => {
            // TPID and TCI as they were, then the new EtherType after them.
            let tpid_tci = pkt
                .header_mut::<[u8; 4]>(ETH_LEN - 2)
                .ok_or(Reason::DropTunHeadroom)?;
            store_u32(tpid_tci, tag);
            let vh = pkt
                .header_mut::<VlanHdr>(ETH_LEN)
                .ok_or(Reason::DropTunHeadroom)?;
            store_u16(&mut vh.ether_type, ether_type);
        }
    }
    Ok(())
}

/// Writes an IPv4 header without options at `off`: `total_len` bytes in all, DF when `df` (a
/// tunnel's outer packet is never fragmented: the client hears about the MTU instead). Returns
/// the sum of the two addresses, for a pseudo-header. Written as five 32-bit words; the
/// checksum is summed in memory order ([`halves`]) and placed as it lies in memory.
#[inline(always)]
pub fn write_ipv4(
    pkt: &mut Packet,
    off: usize,
    ip: &OuterIp,
    total_len: usize,
    df: bool,
) -> Result<u64, Reason> {
    let (src, dst) = (addr_words(ip.src)[0], addr_words(ip.dst)[0]);
    let len = (total_len as u16).to_be_bytes();
    let frags: u8 = if df { 0x40 } else { 0 };
    let w0 = u32::from_ne_bytes([0x45, ip.tos, len[0], len[1]]);
    let w1 = u32::from_ne_bytes([0, 0, frags, 0]);
    let ttl_proto = u32::from_ne_bytes([TTL, ip.proto, 0, 0]);
    let addrs = halves(src) + halves(dst);
    let check = finish(halves(w0) + halves(w1) + halves(ttl_proto) + addrs).to_ne_bytes();
    let h = pkt
        .header_mut::<[[u8; 4]; 5]>(off)
        .ok_or(Reason::DropTunHeadroom)?;
    store_u32(&mut h[0], w0);
    store_u32(&mut h[1], w1);
    store_u32(
        &mut h[2],
        u32::from_ne_bytes([TTL, ip.proto, check[0], check[1]]),
    );
    store_u32(&mut h[3], src);
    store_u32(&mut h[4], dst);
    Ok(be_sum(addrs))
}

/// Writes an IPv6 header at `off` with `payload_len` bytes after it and flow label `label` (20
/// bits), as ten 32-bit words. Returns the sum of the two addresses, for a pseudo-header.
#[inline(always)]
pub fn write_ipv6(
    pkt: &mut Packet,
    off: usize,
    ip: &OuterIp,
    payload_len: usize,
    label: u32,
) -> Result<u64, Reason> {
    let (src, dst) = (addr_words(ip.src), addr_words(ip.dst));
    let len = (payload_len as u16).to_be_bytes();
    let h = pkt
        .header_mut::<[[u8; 4]; 10]>(off)
        .ok_or(Reason::DropTunHeadroom)?;
    store_u32(
        &mut h[0],
        u32::from_ne_bytes([
            0x60 | (ip.tos >> 4),
            (ip.tos << 4) | (label >> 16) as u8,
            (label >> 8) as u8,
            label as u8,
        ]),
    );
    store_u32(
        &mut h[1],
        u32::from_ne_bytes([len[0], len[1], ip.proto, TTL]),
    );
    for i in 0..4 {
        store_u32(&mut h[2 + i], src[i]);
        store_u32(&mut h[6 + i], dst[i]);
    }
    let mut addrs = 0;
    for i in 0..4 {
        addrs += halves(src[i]) + halves(dst[i]);
    }
    Ok(be_sum(addrs))
}

/// The sum of a 32-bit word's two 16-bit halves as they lie in memory.
#[inline(always)]
pub fn halves(w: u32) -> u64 {
    (w & 0xffff) as u64 + (w >> 16) as u64
}

/// A sum of 16-bit words taken in memory order, as the big-endian sum the callers add to
/// (folded first: ones-complement sums commute with swapping bytes).
#[inline(always)]
pub fn be_sum(s: u64) -> u64 {
    u16::from_be(fold(s)) as u64
}
