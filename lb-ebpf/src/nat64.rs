//! NAT64 through FULLNAT: an IPv6 client's packet to an IPv6 VIP leaves as IPv4 toward an
//! IPv4 real server (from an IPv4 local address), and the real server's IPv4 answer goes back
//! as IPv6. The IP header is replaced (RFC 7915's translation of the fields that matter here:
//! traffic class and TOS, payload and total length, protocol; a fresh TTL or hop limit, as for
//! the director's other headers; DF set on IPv4, as IPv6 packets are not fragmented on the
//! way); the TCP/UDP checksum is updated incrementally for the new pseudo-header and ports, never
//! recomputed over the payload. An IPv4 UDP datagram without a checksum cannot become IPv6
//! (which requires one, and computing it would read the whole payload): it is dropped and
//! counted. The Ethernet header (MACs, a VLAN tag) is kept; its EtherType follows the family.

use lb_common::Reason;

use crate::{
    encap::{write_ipv4, write_ipv6, OuterIp},
    nat::{write_ports, AddrSums, Tuple},
    packet::Packet,
    parse::{EthHdr, Ipv4Hdr, Ipv6Hdr, Parsed, VlanHdr, ETH_LEN, ETH_P_IP, ETH_P_IPV6, IPV6_LEN},
};

/// The Ethernet header and VLAN tag (if any) of a frame, to be written again after its IP
/// header changed size.
struct L2Copy {
    dst: [u8; 6],
    src: [u8; 6],
    /// TPID and TCI of the VLAN tag.
    tag: Option<[u8; 4]>,
}

#[inline(always)]
fn save_l2(pkt: &Packet, p: &Parsed) -> Result<L2Copy, Reason> {
    let eth = pkt.header::<EthHdr>(0).ok_or(Reason::DropTruncatedL2)?;
    let (dst, src, tpid) = (eth.dst, eth.src, eth.ether_type);
    let tag = if p.l3_off > ETH_LEN {
        let vh = pkt
            .header::<VlanHdr>(ETH_LEN)
            .ok_or(Reason::DropTruncatedL2)?;
        Some([tpid[0], tpid[1], vh.tci[0], vh.tci[1]])
    } else {
        None
    };
    Ok(L2Copy { dst, src, tag })
}

#[inline(always)]
fn write_l2(pkt: &mut Packet, l2: &L2Copy, ether_type: u16) -> Result<(), Reason> {
    let et = ether_type.to_be_bytes();
    let eth = pkt.header_mut::<EthHdr>(0).ok_or(Reason::DropTunHeadroom)?;
    eth.dst = l2.dst;
    eth.src = l2.src;
    match l2.tag {
        None => eth.ether_type = et,
        Some(tag) => {
            eth.ether_type = [tag[0], tag[1]];
            let vh = pkt
                .header_mut::<VlanHdr>(ETH_LEN)
                .ok_or(Reason::DropTunHeadroom)?;
            vh.tci = [tag[2], tag[3]];
            vh.ether_type = et;
        }
    }
    Ok(())
}

/// An IPv6 packet (no extension headers, as parsed) becomes IPv4 with `t`'s addresses (IPv4,
/// in the first four bytes) and ports. A BPF subprogram of its own.
#[inline(never)]
pub fn to_ipv4(pkt: &mut Packet, p: &Parsed, t: &Tuple) -> Result<(), Reason> {
    write_ports(pkt, p, &AddrSums::of(p, t, true, false), t, true)?;
    let payload = {
        let ip = pkt
            .header::<Ipv6Hdr>(p.l3_off)
            .ok_or(Reason::DropMalformedL3)?;
        u16::from_be_bytes(ip.payload_len) as usize
    };
    let l2 = save_l2(pkt, p)?;
    // 20 bytes fewer in front: the L4 header stays where it is, the frame starts later.
    pkt.adjust_head((IPV6_LEN - Ipv4Hdr::LEN) as i32)
        .map_err(|_| Reason::DropTunHeadroom)?;
    write_l2(pkt, &l2, ETH_P_IP)?;
    let ip = OuterIp {
        tos: p.tos,
        proto: p.proto,
        src: t.src,
        dst: t.dst,
    };
    write_ipv4(pkt, p.l3_off, &ip, payload + Ipv4Hdr::LEN, true)?;
    Ok(())
}

/// An IPv4 packet becomes IPv6 with `t`'s addresses and ports (its options, if any, are
/// dropped). A BPF subprogram of its own.
#[inline(never)]
pub fn to_ipv6(pkt: &mut Packet, p: &Parsed, t: &Tuple) -> Result<(), Reason> {
    write_ports(pkt, p, &AddrSums::of(p, t, false, true), t, false)?;
    // The IPv4 header's length with its options (5..=15 words).
    let ihl = (p.l4_off - p.l3_off) & 0x3c;
    let total = {
        let ip = pkt
            .header::<Ipv4Hdr>(p.l3_off)
            .ok_or(Reason::DropMalformedL3)?;
        u16::from_be_bytes(ip.tot_len) as usize
    };
    if total < ihl {
        return Err(Reason::DropMalformedL3);
    }
    let l2 = save_l2(pkt, p)?;
    // The IPv6 header takes the IPv4 header's place and 40 - ihl bytes more in front.
    pkt.adjust_head(ihl as i32 - IPV6_LEN as i32)
        .map_err(|_| Reason::DropTunHeadroom)?;
    write_l2(pkt, &l2, ETH_P_IPV6)?;
    let ip = OuterIp {
        tos: p.tos,
        proto: p.proto,
        src: t.src,
        dst: t.dst,
    };
    write_ipv6(pkt, p.l3_off, &ip, total - ihl, 0)?;
    Ok(())
}
