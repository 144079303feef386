//! The real-server decapsulator (LVS-TUN without kernel tunnel devices): takes a client's packet
//! out of the director's tunnel (IPIP, 6in4, IP6IP6, 4in6, GUE) when the outer destination is
//! this host and the inner destination a VIP, and hands it to the kernel as if it had arrived
//! bare. Everything else, and every packet it cannot read, is passed untouched: it never drops.
//!
//! A packet: link layer (the director's parser) -> outer IP to a local address -> GUE port and
//! header -> inner IP to a VIP -> strip the outer headers.
#![no_std]
#![no_main]

mod maps;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{
    decap::{addr_role, DecapReason},
    FAMILY_V4, FAMILY_V6, PROTO_IPIP, PROTO_IPV6, PROTO_UDP,
};
use lb_ebpf::{
    packet::Packet,
    parse::{
        is_ipv6_ext, l2, EthHdr, GueHdr, Ipv4Hdr, Ipv6Hdr, L2Error, VlanHdr, ETH_LEN, ETH_P_IP,
        ETH_P_IPV6, GUE_LEN, IPV6_LEN, UDP_LEN,
    },
};

/// Decapsulates what is ours, passes everything: the verdict is always XDP_PASS.
#[xdp]
pub fn xvs_decap(ctx: XdpContext) -> u32 {
    let mut pkt = Packet::new(ctx);
    let reason = match decap(&mut pkt) {
        Ok(r) | Err(r) => r,
    };
    maps::count(reason);
    xdp_action::XDP_PASS
}

/// What a tunnel carries after its outer headers.
#[derive(Clone, Copy)]
enum Inner {
    V4,
    V6,
}

/// Ok(the Decap* reason) when the frame was rewritten to Ethernet + inner packet; Err(a Pass*
/// reason) when it was left untouched.
#[inline(always)]
fn decap(pkt: &mut Packet) -> Result<DecapReason, DecapReason> {
    let l2 = l2(pkt).map_err(|e| match e {
        L2Error::Truncated => DecapReason::PassNotTunnel,
        L2Error::StackedVlan => DecapReason::PassStackedVlan,
    })?;
    let (inner_off, inner, reason) = match l2.ether_type {
        ETH_P_IP => outer_v4(pkt, l2.l3_off)?,
        ETH_P_IPV6 => outer_v6(pkt, l2.l3_off)?,
        _ => return Err(DecapReason::PassNotTunnel),
    };
    // The inner packet must be whole enough to be IP of the announced version, and for a VIP.
    let (family, dst) = match inner {
        Inner::V4 => {
            let ip = pkt
                .header::<Ipv4Hdr>(inner_off)
                .ok_or(DecapReason::PassMalformed)?;
            if ip.vihl >> 4 != 4 || ip.vihl & 0x0f < 5 {
                return Err(DecapReason::PassMalformed);
            }
            let mut dst = [0u8; 16];
            dst[..4].copy_from_slice(&ip.dst_addr);
            (FAMILY_V4, dst)
        }
        Inner::V6 => {
            let ip = pkt
                .header::<Ipv6Hdr>(inner_off)
                .ok_or(DecapReason::PassMalformed)?;
            if ip.vcf[0] >> 4 != 6 {
                return Err(DecapReason::PassMalformed);
            }
            (FAMILY_V6, ip.dst_addr)
        }
    };
    if !maps::has_role(family, dst, addr_role::VIP) {
        return Err(DecapReason::PassNotVip);
    }
    strip(pkt, l2.vlan, inner_off - l2.l3_off, inner)?;
    Ok(reason)
}

/// Outer IPv4: (offset of the inner IP header, its version, the Decap* reason) for a tunnel
/// packet addressed to a local address.
#[inline(always)]
fn outer_v4(pkt: &Packet, l3_off: usize) -> Result<(usize, Inner, DecapReason), DecapReason> {
    let ip = pkt
        .header::<Ipv4Hdr>(l3_off)
        .ok_or(DecapReason::PassNotTunnel)?;
    let proto = ip.proto;
    if proto != PROTO_IPIP && proto != PROTO_IPV6 && proto != PROTO_UDP {
        return Err(DecapReason::PassNotTunnel);
    }
    let ihl = (ip.vihl & 0x0f) as usize;
    if ip.vihl >> 4 != 4 || ihl < 5 {
        return Err(DecapReason::PassMalformed);
    }
    // MF set or a non-zero offset: the inner packet is not whole here.
    if u16::from_be_bytes(ip.frags) & 0x3fff != 0 {
        return Err(DecapReason::PassFragment);
    }
    // Options (IHL > 5) sit between the fixed header and the payload.
    let payload = l3_off + ihl * 4;
    if proto == PROTO_UDP {
        gue_port(pkt, payload)?;
    }
    let mut dst = [0u8; 16];
    dst[..4].copy_from_slice(&ip.dst_addr);
    if !maps::has_role(FAMILY_V4, dst, addr_role::LOCAL) {
        return Err(DecapReason::PassNotLocal);
    }
    match proto {
        PROTO_IPIP => Ok((payload, Inner::V4, DecapReason::DecapIpip)),
        PROTO_IPV6 => Ok((payload, Inner::V6, DecapReason::Decap6in4)),
        _ => gue_header(pkt, payload + UDP_LEN),
    }
}

/// Outer IPv6 (without extension headers): as outer_v4.
#[inline(always)]
fn outer_v6(pkt: &Packet, l3_off: usize) -> Result<(usize, Inner, DecapReason), DecapReason> {
    let ip = pkt
        .header::<Ipv6Hdr>(l3_off)
        .ok_or(DecapReason::PassNotTunnel)?;
    if ip.vcf[0] >> 4 != 6 {
        return Err(DecapReason::PassNotTunnel);
    }
    let payload = l3_off + IPV6_LEN;
    let next = ip.next_hdr;
    match next {
        PROTO_IPV6 | PROTO_IPIP => {}
        PROTO_UDP => gue_port(pkt, payload)?,
        n if is_ipv6_ext(n) => return Err(DecapReason::PassIpv6ExtHeader),
        _ => return Err(DecapReason::PassNotTunnel),
    }
    if !maps::has_role(FAMILY_V6, ip.dst_addr, addr_role::LOCAL) {
        return Err(DecapReason::PassNotLocal);
    }
    match next {
        PROTO_IPV6 => Ok((payload, Inner::V6, DecapReason::DecapIp6ip6)),
        PROTO_IPIP => Ok((payload, Inner::V4, DecapReason::Decap4in6)),
        _ => gue_header(pkt, payload + UDP_LEN),
    }
}

/// Ok when the UDP header at `udp_off` is addressed to a GUE port.
#[inline(always)]
fn gue_port(pkt: &Packet, udp_off: usize) -> Result<(), DecapReason> {
    // The ports only (the first four bytes of UDP): a header cut short after them is left to
    // gue_header to refuse.
    let ports = pkt
        .header::<[u8; 4]>(udp_off)
        .ok_or(DecapReason::PassNotTunnel)?;
    // The key keeps the port in network byte order.
    if maps::is_gue_port(u16::from_ne_bytes([ports[2], ports[3]])) {
        Ok(())
    } else {
        Err(DecapReason::PassNotTunnel)
    }
}

/// The GUE header at `gue_off`: variant 0 as IPVS sends it (ip_vs_xmit.c, ipvs_gue_encap:
/// version 0, no control bit, no options, flags 0, proto_ctype = the inner protocol), or
/// variant 1 (the inner IP header right after UDP).
#[inline(always)]
fn gue_header(pkt: &Packet, gue_off: usize) -> Result<(usize, Inner, DecapReason), DecapReason> {
    let h = pkt
        .header::<GueHdr>(gue_off)
        .ok_or(DecapReason::PassMalformed)?;
    // The first two bits are the GUE version; in variant 1 they are the top of an IP version.
    match h.vc_hlen >> 6 {
        0 => {
            // Version 0, C = 0, hlen = 0; flags = 0.
            if h.vc_hlen != 0 || h.flags != [0, 0] {
                return Err(DecapReason::PassGueUnsupported);
            }
            let inner = match h.proto_ctype {
                PROTO_IPIP => Inner::V4,
                PROTO_IPV6 => Inner::V6,
                _ => return Err(DecapReason::PassGueUnsupported),
            };
            Ok((gue_off + GUE_LEN, inner, DecapReason::DecapGue))
        }
        1 => match h.vc_hlen >> 4 {
            4 => Ok((gue_off, Inner::V4, DecapReason::DecapGueDirect)),
            6 => Ok((gue_off, Inner::V6, DecapReason::DecapGueDirect)),
            _ => Err(DecapReason::PassGueUnsupported),
        },
        _ => Err(DecapReason::PassGueUnsupported),
    }
}

/// Removes `outer_len` bytes of outer headers between the Ethernet header and the inner packet,
/// then writes the Ethernet header (same MACs, same VLAN tag, the inner packet's EtherType) in
/// front of the inner packet.
#[inline(always)]
fn strip(pkt: &mut Packet, vlan: bool, outer_len: usize, inner: Inner) -> Result<(), DecapReason> {
    let eth = *pkt.header::<EthHdr>(0).ok_or(DecapReason::PassMalformed)?;
    let tag = if vlan {
        Some(
            *pkt.header::<VlanHdr>(ETH_LEN)
                .ok_or(DecapReason::PassMalformed)?,
        )
    } else {
        None
    };
    let ether_type = match inner {
        Inner::V4 => ETH_P_IP,
        Inner::V6 => ETH_P_IPV6,
    }
    .to_be_bytes();
    // A failure leaves the frame as it was.
    pkt.adjust_head(outer_len as i32)
        .map_err(|_| DecapReason::PassMalformed)?;
    // The inner IP header was in bounds before, so these are too; the checks satisfy the
    // verifier (the frame has already changed if they ever failed).
    let new = pkt
        .header_mut::<EthHdr>(0)
        .ok_or(DecapReason::PassMalformed)?;
    new.dst = eth.dst;
    new.src = eth.src;
    match tag {
        Some(tag) => {
            // The TPID stays in the EtherType slot; the tag carries the inner EtherType.
            new.ether_type = eth.ether_type;
            let t = pkt
                .header_mut::<VlanHdr>(ETH_LEN)
                .ok_or(DecapReason::PassMalformed)?;
            t.tci = tag.tci;
            t.ether_type = ether_type;
        }
        None => new.ether_type = ether_type,
    }
    Ok(())
}
