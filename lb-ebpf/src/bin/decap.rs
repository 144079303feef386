//! The real-server decapsulator (LVS-TUN without kernel tunnel devices): takes a client's packet
//! out of the director's tunnel (IPIP, 6in4, IP6IP6, 4in6, GUE) when the outer destination is
//! this host and the inner destination a VIP, and hands it to the kernel as if it had arrived
//! bare. Everything else, and every packet it cannot read, is passed untouched: it never drops.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::{HashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    decap::{
        addr_role, DecapAddrKey, DecapReason, GuePortKey, DECAP_REASON_COUNT, MAX_DECAP_ADDRS,
        MAX_GUE_PORTS,
    },
    FAMILY_V4, FAMILY_V6, PROTO_UDP,
};
use lb_ebpf::packet::ptr_at;

#[map]
static DECAP_ADDRS: HashMap<DecapAddrKey, u32> = HashMap::with_max_entries(MAX_DECAP_ADDRS, 0);
#[map]
static DECAP_GUE_PORTS: HashMap<GuePortKey, u32> = HashMap::with_max_entries(MAX_GUE_PORTS, 0);
#[map]
static DECAP_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DECAP_REASON_COUNT, 0);

const ETH_ALEN2: usize = 12;
const ETH_LEN: usize = 14;
const VLAN_LEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPV4_LEN: usize = 20;
const IPV6_LEN: usize = 40;
const UDP_LEN: usize = 8;
const GUE_LEN: usize = 4;
/// IP protocol numbers of an IPv4 and an IPv6 payload.
const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;

/// Decapsulates what is ours, passes everything: the verdict is always XDP_PASS.
#[xdp]
pub fn xvs_decap(ctx: XdpContext) -> u32 {
    let reason = match decap(&ctx) {
        Ok(r) | Err(r) => r,
    };
    if let Some(c) = DECAP_COUNTERS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *c += 1 };
    }
    xdp_action::XDP_PASS
}

/// Reads a big-endian u16 at `offset`.
#[inline(always)]
fn be16_at(ctx: &XdpContext, offset: usize) -> Option<u16> {
    let p = ptr_at::<[u8; 2]>(ctx, offset)?;
    // SAFETY: ptr_at checked that two bytes are inside the packet.
    Some(u16::from_be_bytes(unsafe { *p }))
}

#[inline(always)]
fn has_role(family: u8, addr: [u8; 16], role: u32) -> bool {
    let key = DecapAddrKey {
        addr,
        family,
        _pad: [0; 3],
    };
    // SAFETY: the value is a plain u32 read once.
    match unsafe { DECAP_ADDRS.get(key) } {
        Some(roles) => roles & role != 0,
        None => false,
    }
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
fn decap(ctx: &XdpContext) -> Result<DecapReason, DecapReason> {
    let mut ethertype = be16_at(ctx, ETH_ALEN2).ok_or(DecapReason::PassNotTunnel)?;
    let mut l3_off = ETH_LEN;
    let vlan = ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD;
    if vlan {
        ethertype = be16_at(ctx, ETH_LEN + 2).ok_or(DecapReason::PassNotTunnel)?;
        l3_off += VLAN_LEN;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            return Err(DecapReason::PassStackedVlan);
        }
    }
    let (inner_off, inner, reason) = match ethertype {
        ETH_P_IP => outer_v4(ctx, l3_off)?,
        ETH_P_IPV6 => outer_v6(ctx, l3_off)?,
        _ => return Err(DecapReason::PassNotTunnel),
    };
    // The inner packet must be whole enough to be IP of the announced version, and for a VIP.
    let (family, dst) = match inner {
        Inner::V4 => {
            let ip = ptr_at::<[u8; IPV4_LEN]>(ctx, inner_off).ok_or(DecapReason::PassMalformed)?;
            // SAFETY: bounds checked by ptr_at.
            let ip = unsafe { &*ip };
            if ip[0] >> 4 != 4 || ip[0] & 0x0f < 5 {
                return Err(DecapReason::PassMalformed);
            }
            let mut dst = [0u8; 16];
            dst[..4].copy_from_slice(&ip[16..20]);
            (FAMILY_V4, dst)
        }
        Inner::V6 => {
            let ip = ptr_at::<[u8; IPV6_LEN]>(ctx, inner_off).ok_or(DecapReason::PassMalformed)?;
            // SAFETY: bounds checked by ptr_at.
            let ip = unsafe { &*ip };
            if ip[0] >> 4 != 6 {
                return Err(DecapReason::PassMalformed);
            }
            let mut dst = [0u8; 16];
            dst.copy_from_slice(&ip[24..40]);
            (FAMILY_V6, dst)
        }
    };
    if !has_role(family, dst, addr_role::VIP) {
        return Err(DecapReason::PassNotVip);
    }
    strip(ctx, vlan, inner_off - l3_off, inner)?;
    Ok(reason)
}

/// Outer IPv4: (offset of the inner IP header, its version, the Decap* reason) for a tunnel
/// packet addressed to a local address.
#[inline(always)]
fn outer_v4(ctx: &XdpContext, l3_off: usize) -> Result<(usize, Inner, DecapReason), DecapReason> {
    let ip = ptr_at::<[u8; IPV4_LEN]>(ctx, l3_off).ok_or(DecapReason::PassNotTunnel)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    let proto = ip[9];
    if proto != IPPROTO_IPIP && proto != IPPROTO_IPV6 && proto != PROTO_UDP {
        return Err(DecapReason::PassNotTunnel);
    }
    let ihl = (ip[0] & 0x0f) as usize;
    if ip[0] >> 4 != 4 || ihl < 5 {
        return Err(DecapReason::PassMalformed);
    }
    // MF set or a non-zero offset: the inner packet is not whole here.
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        return Err(DecapReason::PassFragment);
    }
    // Options (IHL > 5) sit between the fixed header and the payload.
    let payload = l3_off + ihl * 4;
    if proto == PROTO_UDP {
        gue_port(ctx, payload)?;
    }
    let mut dst = [0u8; 16];
    dst[..4].copy_from_slice(&ip[16..20]);
    if !has_role(FAMILY_V4, dst, addr_role::LOCAL) {
        return Err(DecapReason::PassNotLocal);
    }
    match proto {
        IPPROTO_IPIP => Ok((payload, Inner::V4, DecapReason::DecapIpip)),
        IPPROTO_IPV6 => Ok((payload, Inner::V6, DecapReason::Decap6in4)),
        _ => gue_header(ctx, payload + UDP_LEN),
    }
}

/// Outer IPv6 (without extension headers): as outer_v4.
#[inline(always)]
fn outer_v6(ctx: &XdpContext, l3_off: usize) -> Result<(usize, Inner, DecapReason), DecapReason> {
    let ip = ptr_at::<[u8; IPV6_LEN]>(ctx, l3_off).ok_or(DecapReason::PassNotTunnel)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    if ip[0] >> 4 != 6 {
        return Err(DecapReason::PassNotTunnel);
    }
    let payload = l3_off + IPV6_LEN;
    let next = ip[6];
    match next {
        IPPROTO_IPV6 | IPPROTO_IPIP => {}
        PROTO_UDP => gue_port(ctx, payload)?,
        // hop-by-hop, routing, fragment, destination options, AH, mobility
        0 | 43 | 44 | 60 | 51 | 135 => return Err(DecapReason::PassIpv6ExtHeader),
        _ => return Err(DecapReason::PassNotTunnel),
    }
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&ip[24..40]);
    if !has_role(FAMILY_V6, dst, addr_role::LOCAL) {
        return Err(DecapReason::PassNotLocal);
    }
    match next {
        IPPROTO_IPV6 => Ok((payload, Inner::V6, DecapReason::DecapIp6ip6)),
        IPPROTO_IPIP => Ok((payload, Inner::V4, DecapReason::Decap4in6)),
        _ => gue_header(ctx, payload + UDP_LEN),
    }
}

/// Ok when the UDP header at `udp_off` is addressed to a GUE port.
#[inline(always)]
fn gue_port(ctx: &XdpContext, udp_off: usize) -> Result<(), DecapReason> {
    let port = ptr_at::<[u8; 2]>(ctx, udp_off + 2).ok_or(DecapReason::PassNotTunnel)?;
    // SAFETY: bounds checked by ptr_at. The key keeps the port in network byte order.
    let port_be = u16::from_ne_bytes(unsafe { *port });
    // SAFETY: presence check only.
    match unsafe { DECAP_GUE_PORTS.get(GuePortKey { port_be }) } {
        Some(_) => Ok(()),
        None => Err(DecapReason::PassNotTunnel),
    }
}

/// The GUE header at `gue_off`: variant 0 as IPVS sends it (ip_vs_xmit.c, ipvs_gue_encap:
/// version 0, no control bit, no options, flags 0, proto_ctype = the inner protocol), or
/// variant 1 (the inner IP header right after UDP).
#[inline(always)]
fn gue_header(
    ctx: &XdpContext,
    gue_off: usize,
) -> Result<(usize, Inner, DecapReason), DecapReason> {
    let h = ptr_at::<[u8; GUE_LEN]>(ctx, gue_off).ok_or(DecapReason::PassMalformed)?;
    // SAFETY: bounds checked by ptr_at.
    let h = unsafe { &*h };
    // The first two bits are the GUE version; in variant 1 they are the top of an IP version.
    match h[0] >> 6 {
        0 => {
            // byte 0: version 0, C = 0, hlen = 0; byte 1: proto; bytes 2-3: flags = 0.
            if h[0] != 0 || h[2] != 0 || h[3] != 0 {
                return Err(DecapReason::PassGueUnsupported);
            }
            let inner = match h[1] {
                IPPROTO_IPIP => Inner::V4,
                IPPROTO_IPV6 => Inner::V6,
                _ => return Err(DecapReason::PassGueUnsupported),
            };
            Ok((gue_off + GUE_LEN, inner, DecapReason::DecapGue))
        }
        1 => match h[0] >> 4 {
            4 => Ok((gue_off, Inner::V4, DecapReason::DecapGueDirect)),
            6 => Ok((gue_off, Inner::V6, DecapReason::DecapGueDirect)),
            _ => Err(DecapReason::PassGueUnsupported),
        },
        _ => Err(DecapReason::PassGueUnsupported),
    }
}

/// Removes `outer_len` bytes of outer headers between the Ethernet header and the inner packet,
/// then writes the Ethernet header (same MACs, same VLAN tag, the inner packet's ethertype) in
/// front of the inner packet.
#[inline(always)]
fn strip(ctx: &XdpContext, vlan: bool, outer_len: usize, inner: Inner) -> Result<(), DecapReason> {
    let l2 = ptr_at::<[u8; ETH_LEN + VLAN_LEN]>(ctx, 0);
    let macs = ptr_at::<[u8; ETH_ALEN2]>(ctx, 0).ok_or(DecapReason::PassMalformed)?;
    // SAFETY: bounds checked by ptr_at.
    let macs = unsafe { *macs };
    let tag = match (vlan, l2) {
        // SAFETY: bounds checked by ptr_at.
        (true, Some(l2)) => Some(unsafe { [(*l2)[12], (*l2)[13], (*l2)[14], (*l2)[15]] }),
        (true, None) => return Err(DecapReason::PassMalformed),
        (false, _) => None,
    };
    let ethertype = match inner {
        Inner::V4 => ETH_P_IP,
        Inner::V6 => ETH_P_IPV6,
    }
    .to_be_bytes();
    // SAFETY: the context is the program's own; a failure leaves the frame as it was.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer_len as i32) } != 0 {
        return Err(DecapReason::PassMalformed);
    }
    // The inner IP header was in bounds before, so these are too; the checks satisfy the
    // verifier (the frame has already changed if they ever failed).
    match tag {
        Some(tag) => {
            let eth =
                ptr_at::<[u8; ETH_LEN + VLAN_LEN]>(ctx, 0).ok_or(DecapReason::PassMalformed)?;
            // SAFETY: bounds checked by ptr_at.
            let eth = unsafe { &mut *eth };
            eth[..12].copy_from_slice(&macs);
            eth[12..16].copy_from_slice(&tag);
            eth[16..18].copy_from_slice(&ethertype);
        }
        None => {
            let eth = ptr_at::<[u8; ETH_LEN]>(ctx, 0).ok_or(DecapReason::PassMalformed)?;
            // SAFETY: bounds checked by ptr_at.
            let eth = unsafe { &mut *eth };
            eth[..12].copy_from_slice(&macs);
            eth[12..14].copy_from_slice(&ethertype);
        }
    }
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
