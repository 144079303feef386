//! ICMP on the director: the "too big" answer a client needs for path-MTU discovery through a
//! tunnel, and the flow an ICMP error is about (so it can follow the flow to its real server).

use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{
    csum::{finish, sum_addr, sum_words},
    FlowKey, Reason, FAMILY_V4, FAMILY_V6, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
};

use crate::{
    csum::sum_packet,
    packet::{ptr_at, Parsed, IPV4_LEN, IPV6_LEN},
};

const ICMP_LEN: usize = 8;
/// Bytes of the offending IPv4 packet quoted (the header with any options, and then some: RFC
/// 1812 asks for as much as fits in 576, RFC 792 for at least the header and 8 bytes).
pub const QUOTE4: usize = 128;
/// Bytes of the offending IPv6 packet quoted (RFC 4443: as much as fits in 1280; 256 is ample
/// for the receiver to find its socket).
pub const QUOTE6: usize = 256;
const IPV6_MIN_MTU: u32 = 1280;
const IPV4_MIN_MTU: u32 = 68;
const TTL: u8 = 64;

/// Turns the frame into an ICMP "fragmentation needed" (IPv4) / "packet too big" (IPv6) from
/// the VIP back to the client, advertising `mtu` for the inner packet, to be sent with XDP_TX.
/// A subprogram of its own (cold path, own stack frame).
#[inline(never)]
pub fn too_big(ctx: &XdpContext, p: &Parsed, mtu: u32) -> Result<(), Reason> {
    if p.proto != PROTO_TCP && p.proto != PROTO_UDP {
        // ICMP errors are never answered with ICMP.
        return Err(Reason::DropTooBigUnquotable);
    }
    let v6 = p.family == FAMILY_V6;
    let quote = if v6 { QUOTE6 } else { QUOTE4 };
    let total = ctx.data_end() - ctx.data();
    let keep = p.l3_off + quote;
    if total < keep {
        return Err(Reason::DropTooBigUnquotable);
    }
    let eth = ptr_at::<[u8; 12]>(ctx, 0).ok_or(Reason::DropTunHeadroom)?;
    // SAFETY: bounds checked by ptr_at.
    let old_macs = unsafe { *eth };
    // SAFETY: ctx.ctx is the program's context.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, -((total - keep) as i32)) } != 0 {
        return Err(Reason::DropTunHeadroom);
    }
    let ip_len = if v6 { IPV6_LEN } else { IPV4_LEN };
    let grow = ip_len + ICMP_LEN;
    // SAFETY: as above.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(grow as i32)) } != 0 {
        return Err(Reason::DropTunHeadroom);
    }
    // New layout: [L2 (l3_off) | IP | ICMP | old L2 (l3_off) ... ] — the quote starts at
    // grow + l3_off, where the original IP header now is.
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&old_macs[6..]);
    macs[6..].copy_from_slice(&old_macs[..6]);
    let eth = ptr_at::<[u8; 12]>(ctx, 0).ok_or(Reason::DropTunHeadroom)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe { *eth = macs };
    // VLAN tag (if any) and EtherType: the same family, copied from the old header.
    let tail = if p.l3_off > 14 { 6 } else { 2 };
    copy_l2_tail(ctx, grow, tail)?;
    let quote_off = p.l3_off + grow;
    if v6 {
        let q = ptr_at::<[u8; QUOTE6]>(ctx, quote_off).ok_or(Reason::DropTunHeadroom)?;
        let mtu = mtu.max(IPV6_MIN_MTU);
        let len = (ICMP_LEN + QUOTE6) as u16;
        let h =
            ptr_at::<[u8; IPV6_LEN + ICMP_LEN]>(ctx, p.l3_off).ok_or(Reason::DropTunHeadroom)?;
        // SAFETY: bounds checked by ptr_at; written in place (the stack is small).
        let out = unsafe { &mut *h };
        out[0] = 0x60;
        out[1] = 0;
        out[2] = 0;
        out[3] = 0;
        out[4..6].copy_from_slice(&len.to_be_bytes());
        out[6] = PROTO_ICMPV6;
        out[7] = TTL;
        out[8..24].copy_from_slice(&p.dst);
        out[24..40].copy_from_slice(&p.src);
        let icmp: [u8; ICMP_LEN] = {
            let m = mtu.to_be_bytes();
            [2, 0, 0, 0, m[0], m[1], m[2], m[3]] // packet too big
        };
        let pseudo =
            sum_addr(&p.dst, true) + sum_addr(&p.src, true) + len as u64 + PROTO_ICMPV6 as u64;
        // SAFETY: q covers QUOTE6 bytes of packet (checked above).
        let body = unsafe { sum_packet(q as *mut u8, QUOTE6 as u32) };
        let c = finish(pseudo + sum_words(&icmp) + body).to_be_bytes();
        out[40..48].copy_from_slice(&[
            icmp[0], icmp[1], c[0], c[1], icmp[4], icmp[5], icmp[6], icmp[7],
        ]);
    } else {
        let q = ptr_at::<[u8; QUOTE4]>(ctx, quote_off).ok_or(Reason::DropTunHeadroom)?;
        // Not clamp(): its min <= max assertion is a panic path the program must not carry.
        #[allow(clippy::manual_clamp)]
        let mtu = mtu.max(IPV4_MIN_MTU).min(0xffff) as u16;
        let len = ((IPV4_LEN + ICMP_LEN + QUOTE4) as u16).to_be_bytes();
        let mut ip: [u8; IPV4_LEN] = [
            0x45, 0, len[0], len[1], 0, 0, 0, 0, TTL, PROTO_ICMP, 0, 0, p.dst[0], p.dst[1],
            p.dst[2], p.dst[3], p.src[0], p.src[1], p.src[2], p.src[3],
        ];
        let c = finish(sum_words(&ip)).to_be_bytes();
        ip[10] = c[0];
        ip[11] = c[1];
        let m = mtu.to_be_bytes();
        // Destination unreachable, fragmentation needed and DF set, next-hop MTU.
        let icmp: [u8; ICMP_LEN] = [3, 4, 0, 0, 0, 0, m[0], m[1]];
        // SAFETY: q covers QUOTE4 bytes of packet (checked above).
        let body = unsafe { sum_packet(q as *mut u8, QUOTE4 as u32) };
        let c = finish(sum_words(&icmp) + body).to_be_bytes();
        let h =
            ptr_at::<[u8; IPV4_LEN + ICMP_LEN]>(ctx, p.l3_off).ok_or(Reason::DropTunHeadroom)?;
        // SAFETY: bounds checked by ptr_at; written in place.
        let out = unsafe { &mut *h };
        out[..IPV4_LEN].copy_from_slice(&ip);
        out[IPV4_LEN..].copy_from_slice(&[
            icmp[0], icmp[1], c[0], c[1], icmp[4], icmp[5], icmp[6], icmp[7],
        ]);
    }
    Ok(())
}

/// Copies the last `n` bytes of the old L2 header (VLAN tag and/or EtherType), now `moved` bytes
/// in, to the new one.
#[inline(always)]
fn copy_l2_tail(ctx: &XdpContext, moved: usize, n: usize) -> Result<(), Reason> {
    if n == 6 {
        let old = ptr_at::<[u8; 6]>(ctx, moved + 12).ok_or(Reason::DropTunHeadroom)?;
        let new = ptr_at::<[u8; 6]>(ctx, 12).ok_or(Reason::DropTunHeadroom)?;
        // SAFETY: both bounds checked; no overlap (moved >= 28).
        unsafe { *new = *old };
    } else {
        let old = ptr_at::<[u8; 2]>(ctx, moved + 12).ok_or(Reason::DropTunHeadroom)?;
        let new = ptr_at::<[u8; 2]>(ctx, 12).ok_or(Reason::DropTunHeadroom)?;
        // SAFETY: as above.
        unsafe { *new = *old };
    }
    Ok(())
}

/// For an ICMP error addressed to us that quotes a TCP/UDP packet a real server sent from a VIP
/// (an error about a reply, on its way to the client), the client's flow as the connection table
/// keys it. IPv4: destination unreachable, source quench, time exceeded; IPv6: destination
/// unreachable, packet too big, time exceeded — the types IPVS relays (ip_vs_in_icmp).
#[inline(always)]
pub fn quoted_flow(ctx: &XdpContext, p: &Parsed) -> Option<FlowKey> {
    let icmp = ptr_at::<[u8; ICMP_LEN]>(ctx, p.l4_off)?;
    // SAFETY: bounds checked by ptr_at.
    let ty = unsafe { (*icmp)[0] };
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
        let ip = ptr_at::<[u8; IPV4_LEN]>(ctx, inner)?;
        // SAFETY: bounds checked by ptr_at.
        let ip = unsafe { &*ip };
        let ihl = (ip[0] & 0x0f) as usize;
        if ip[0] >> 4 != 4 || ihl < 5 {
            return None;
        }
        k.proto = ip[9];
        // The quoted packet went server -> client: its source is the VIP.
        k.dst[..4].copy_from_slice(&ip[12..16]);
        k.src[..4].copy_from_slice(&ip[16..20]);
        inner + ihl * 4
    } else {
        if ty != 1 && ty != 2 && ty != 3 {
            return None;
        }
        let ip = ptr_at::<[u8; IPV6_LEN]>(ctx, inner)?;
        // SAFETY: bounds checked by ptr_at.
        let ip = unsafe { &*ip };
        k.proto = ip[6];
        k.dst.copy_from_slice(&ip[8..24]);
        k.src.copy_from_slice(&ip[24..40]);
        inner + IPV6_LEN
    };
    if k.proto != PROTO_TCP && k.proto != PROTO_UDP {
        return None;
    }
    let ports = ptr_at::<[u8; 4]>(ctx, l4_off)?;
    // SAFETY: bounds checked by ptr_at.
    let ports = unsafe { &*ports };
    k.dport_be = u16::from_ne_bytes([ports[0], ports[1]]);
    k.sport_be = u16::from_ne_bytes([ports[2], ports[3]]);
    Some(k)
}
