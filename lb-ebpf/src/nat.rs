//! Address translation: one end of a TCP/UDP packet (source or destination address and port)
//! rewritten in place, with the IPv4 header checksum and the L4 checksum updated incrementally
//! (RFC 1624), never recomputed over the payload. NAT rewrites the destination inbound and the
//! source of replies; FULLNAT will rewrite both.

use lb_common::{
    csum::{sum_addr, update},
    Reason, FAMILY_V6, PROTO_TCP, PROTO_UDP,
};

use crate::{
    packet::Packet,
    parse::{Ipv4Hdr, Ipv6Hdr, Parsed, TcpHdr, UdpHdr},
};

/// Which end of the packet is translated.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The source address and port.
    Src,
    /// The destination address and port.
    Dst,
}

/// Rewrites `end` of the parsed packet to `addr` (16-byte form; IPv4 in the first four bytes,
/// the packet's family) and `port_be` (network order). A UDP/IPv4 datagram sent without a
/// checksum keeps none.
#[inline(always)]
pub fn rewrite(
    pkt: &mut Packet,
    p: &Parsed,
    end: End,
    addr: &[u8; 16],
    port_be: u16,
) -> Result<(), Reason> {
    let v6 = p.family == FAMILY_V6;
    let old_addr = if end == End::Src { &p.src } else { &p.dst };
    let old_port = if end == End::Src {
        p.sport_be
    } else {
        p.dport_be
    };
    let old_sum = sum_addr(old_addr, v6);
    let new_sum = sum_addr(addr, v6);
    if v6 {
        let ip = pkt
            .header_mut::<Ipv6Hdr>(p.l3_off)
            .ok_or(Reason::DropMalformedL3)?;
        match end {
            End::Src => ip.src_addr = *addr,
            End::Dst => ip.dst_addr = *addr,
        }
    } else {
        let ip = pkt
            .header_mut::<Ipv4Hdr>(p.l3_off)
            .ok_or(Reason::DropMalformedL3)?;
        let mut a = [0u8; 4];
        a.copy_from_slice(&addr[..4]);
        match end {
            End::Src => ip.src_addr = a,
            End::Dst => ip.dst_addr = a,
        }
        let check = update(u16::from_be_bytes(ip.check), old_sum, new_sum);
        ip.check = check.to_be_bytes();
    }
    // The L4 checksum covers the pseudo-header's addresses and the port.
    let l4_old = old_sum + u16::from_be(old_port) as u64;
    let l4_new = new_sum + u16::from_be(port_be) as u64;
    if p.proto == PROTO_TCP {
        let tcp = pkt
            .header_mut::<TcpHdr>(p.l4_off)
            .ok_or(Reason::DropMalformedL4)?;
        match end {
            End::Src => tcp.source = port_be.to_ne_bytes(),
            End::Dst => tcp.dest = port_be.to_ne_bytes(),
        }
        tcp.check = update(u16::from_be_bytes(tcp.check), l4_old, l4_new).to_be_bytes();
    } else if p.proto == PROTO_UDP {
        let udp = pkt
            .header_mut::<UdpHdr>(p.l4_off)
            .ok_or(Reason::DropMalformedL4)?;
        match end {
            End::Src => udp.src = port_be.to_ne_bytes(),
            End::Dst => udp.dst = port_be.to_ne_bytes(),
        }
        // Zero means "no checksum" (IPv4 only; IPv6 requires one), and a computed zero is sent
        // as 0xffff.
        if udp.check != [0, 0] || v6 {
            let c = match update(u16::from_be_bytes(udp.check), l4_old, l4_new) {
                0 => 0xffff,
                c => c,
            };
            udp.check = c.to_be_bytes();
        }
    }
    Ok(())
}
