//! Address translation: a TCP/UDP packet's addresses and ports rewritten in place, with the
//! IPv4 header checksum and the L4 checksum updated incrementally (RFC 1624), never recomputed
//! over the payload. NAT rewrites the destination inbound and the source of replies; FULLNAT
//! rewrites both ends both ways.

use lb_common::{
    csum::{sum_addr, update},
    Reason, FAMILY_V6, PROTO_TCP, PROTO_UDP,
};

use crate::{
    icmp::Quote,
    packet::Packet,
    parse::{IcmpHdr, Ipv4Hdr, Ipv6Hdr, Parsed, TcpHdr, UdpHdr},
};

/// Which end of the packet is translated (ICMP errors).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The source address and port.
    Src,
    /// The destination address and port.
    Dst,
}

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
    // The L4 checksum covers the pseudo-header's addresses and the ports.
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
        udp.src = t.sport_be.to_ne_bytes();
        udp.dst = t.dport_be.to_ne_bytes();
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

/// Translates an ICMP error about a translated connection: `outer` (when Some) rewrites the
/// error's own source or destination address, and the quoted packet's `inner` end gets `addr`
/// and `port_be` (its IPv4 header checksum updated). The ICMP checksum follows every change,
/// the IPv6 pseudo-header's addresses included. The quoted L4 checksum is left as it is (the
/// quote is often cut short; receivers do not check it, and IPVS leaves it too).
/// A BPF subprogram of its own; the result is 0 or the reason the packet is malformed.
#[inline(never)]
pub fn rewrite_icmp(pkt: &mut Packet, p: &Parsed, t: &IcmpTranslation) -> u32 {
    match rewrite_icmp_inline(pkt, p, t) {
        Ok(()) => 0,
        Err(reason) => reason as u32,
    }
}

/// What [`rewrite_icmp`] changes.
pub struct IcmpTranslation<'a> {
    /// Where the quoted packet is.
    pub quote: Quote,
    /// The error's own address to rewrite (to `addr` too: a NAT error's outer and quoted
    /// addresses translate alike).
    pub outer: Option<End>,
    /// The quoted packet's end to rewrite.
    pub inner: End,
    /// Its new address.
    pub addr: &'a [u8; 16],
    /// Its new port, network order.
    pub port_be: u16,
}

#[inline(always)]
fn rewrite_icmp_inline(pkt: &mut Packet, p: &Parsed, t: &IcmpTranslation) -> Result<(), Reason> {
    let (q, inner, addr, port_be) = (&t.quote, t.inner, t.addr, t.port_be);
    let outer = t.outer.map(|end| (end, addr));
    // Offsets the verifier can bound (a quote lies within the first 512 bytes).
    let (q_l3, q_l4) = ((q.l3_off & 0x1ff) as usize, (q.l4_off & 0x1ff) as usize);
    let v6 = p.family == FAMILY_V6;
    // What the ICMP checksum covers before and after (sums of 16-bit words).
    let mut old = 0u64;
    let mut new = sum_addr(addr, v6) + u16::from_be(port_be) as u64;
    if let Some((end, to)) = outer {
        let from = if end == End::Src { &p.src } else { &p.dst };
        let (from_sum, to_sum) = (sum_addr(from, v6), sum_addr(to, v6));
        if v6 {
            // ICMPv6's pseudo-header.
            old += from_sum;
            new += to_sum;
            let ip = pkt
                .header_mut::<Ipv6Hdr>(p.l3_off)
                .ok_or(Reason::DropMalformedL3)?;
            match end {
                End::Src => ip.src_addr = *to,
                End::Dst => ip.dst_addr = *to,
            }
        } else {
            let ip = pkt
                .header_mut::<Ipv4Hdr>(p.l3_off)
                .ok_or(Reason::DropMalformedL3)?;
            let mut a = [0u8; 4];
            a.copy_from_slice(&to[..4]);
            match end {
                End::Src => ip.src_addr = a,
                End::Dst => ip.dst_addr = a,
            }
            ip.check = update(u16::from_be_bytes(ip.check), from_sum, to_sum).to_be_bytes();
        }
    }
    // The quoted L3 header.
    if v6 {
        let ip = pkt
            .header_mut::<Ipv6Hdr>(q_l3)
            .ok_or(Reason::DropMalformedL3)?;
        let was = match inner {
            End::Src => core::mem::replace(&mut ip.src_addr, *addr),
            End::Dst => core::mem::replace(&mut ip.dst_addr, *addr),
        };
        old += sum_addr(&was, true);
    } else {
        let ip = pkt
            .header_mut::<Ipv4Hdr>(q_l3)
            .ok_or(Reason::DropMalformedL3)?;
        let mut a = [0u8; 4];
        a.copy_from_slice(&addr[..4]);
        let was = match inner {
            End::Src => core::mem::replace(&mut ip.src_addr, a),
            End::Dst => core::mem::replace(&mut ip.dst_addr, a),
        };
        let mut w = [0u8; 16];
        w[..4].copy_from_slice(&was);
        let was_sum = sum_addr(&w, false);
        let check = u16::from_be_bytes(ip.check);
        let now = update(check, was_sum, sum_addr(addr, false));
        ip.check = now.to_be_bytes();
        old += was_sum + check as u64;
        new += now as u64;
    }
    // The quoted port.
    let ports = pkt
        .header_mut::<[u8; 4]>(q_l4)
        .ok_or(Reason::DropMalformedL4)?;
    let at = if inner == End::Src { 0 } else { 2 };
    old += u16::from_be_bytes([ports[at], ports[at + 1]]) as u64;
    let b = port_be.to_ne_bytes();
    ports[at] = b[0];
    ports[at + 1] = b[1];
    let icmp = pkt
        .header_mut::<IcmpHdr>(p.l4_off)
        .ok_or(Reason::DropMalformedL4)?;
    icmp.check = update(u16::from_be_bytes(icmp.check), old, new).to_be_bytes();
    Ok(())
}
