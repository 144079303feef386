//! Tunnel packets as an LVS-TUN director sends them (IPIP, 6in4, IP6IP6, 4in6, GUE as IPVS's
//! ipvs_gue_encap writes it), built with etherparse: for the decapsulator's program tests and
//! the raw-socket senders of the real-server end-to-end tests.

use std::net::IpAddr;

use etherparse::{
    IpNumber, Ipv4Header, Ipv4Options, Ipv6FlowLabel, Ipv6Header, PacketBuilder, UdpHeader,
};

use crate::packets::{CLIENT_MAC, DIRECTOR_MAC, L4};

/// IP protocol number of an IPv4 payload (IPIP, 4in6).
pub const IPPROTO_IPIP: u8 = 4;
/// IP protocol number of an IPv6 payload (6in4, IP6IP6).
pub const IPPROTO_IPV6: u8 = 41;

/// A bare IP packet (no Ethernet): src:sport -> dst:dport, TCP (flags, sequence number 1000)
/// or UDP, with a payload and valid checksums.
pub fn ip_packet(src: &str, sport: u16, dst: &str, dport: u16, l4: L4, payload: &[u8]) -> Vec<u8> {
    // The Ethernet frame's packet, without its 14-byte Ethernet header.
    crate::packets::frame(src, sport, dst, dport, l4, None, payload)[14..].to_vec()
}

/// A bare TCP segment (no Ethernet) with explicit sequence numbers: SYN when `ack` is None,
/// else a bare ACK of `ack`.
pub fn tcp_packet(
    src: &str,
    sport: u16,
    dst: &str,
    dport: u16,
    seq: u32,
    ack: Option<u32>,
) -> Vec<u8> {
    let src: IpAddr = src.parse().expect("src address");
    let dst: IpAddr = dst.parse().expect("dst address");
    let mut out = Vec::new();
    macro_rules! finish {
        ($ip:expr) => {{
            let t = $ip.tcp(sport, dport, seq, 64240);
            let t = match ack {
                None => t.syn(),
                Some(n) => t.ack(n),
            };
            t.write(&mut out, b"").unwrap()
        }};
    }
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => finish!(PacketBuilder::ipv4(s.octets(), d.octets(), 64)),
        (IpAddr::V6(s), IpAddr::V6(d)) => finish!(PacketBuilder::ipv6(s.octets(), d.octets(), 64)),
        _ => panic!("mixed address families"),
    }
    out
}

/// How the director wraps the client's packet.
#[derive(Clone, Copy, Debug)]
pub enum Encap {
    /// IP in IP: IPIP, 6in4, IP6IP6 or 4in6, by the two packets' families.
    Ip,
    /// UDP to `port` from `sport`, then the 4-byte GUE header of variant 0 (IPVS).
    GueV0 {
        /// Source port (the director's flow hash).
        sport: u16,
        /// The GUE port.
        port: u16,
    },
    /// UDP to `port` from `sport`, then the inner IP header directly (GUE variant 1).
    GueV1 {
        /// Source port.
        sport: u16,
        /// The GUE port.
        port: u16,
    },
}

/// The inner packet's IP protocol number as an outer header announces it.
pub fn inner_proto(inner: &[u8]) -> u8 {
    match inner[0] >> 4 {
        4 => IPPROTO_IPIP,
        6 => IPPROTO_IPV6,
        v => panic!("inner packet of IP version {v}"),
    }
}

/// The GUE variant 0 header IPVS writes: version 0, C 0, hlen 0, proto_ctype, flags 0.
pub fn gue_v0_header(inner: &[u8]) -> [u8; 4] {
    [0, inner_proto(inner), 0, 0]
}

/// Outer headers around `inner`: an IP packet from `outer_src` to `outer_dst`. `options`:
/// IPv4 options of the outer header (a multiple of 4 bytes; ignored for IPv6).
pub fn encapsulate_with(
    outer_src: &str,
    outer_dst: &str,
    encap: Encap,
    options: &[u8],
    inner: &[u8],
) -> Vec<u8> {
    let src: IpAddr = outer_src.parse().expect("outer src");
    let dst: IpAddr = outer_dst.parse().expect("outer dst");
    // What follows the outer IP header, and its protocol number.
    let (proto, payload) = match encap {
        Encap::Ip => (inner_proto(inner), inner.to_vec()),
        Encap::GueV0 { .. } => (17, [&gue_v0_header(inner)[..], inner].concat()),
        Encap::GueV1 { .. } => (17, inner.to_vec()),
    };
    let udp_ports = match encap {
        Encap::Ip => None,
        Encap::GueV0 { sport, port } | Encap::GueV1 { sport, port } => Some((sport, port)),
    };
    let mut out = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let body = match udp_ports {
                // IPVS leaves the UDP checksum of an IPv4 GUE packet at 0.
                Some((sp, dp)) => {
                    let udp = UdpHeader::without_ipv4_checksum(sp, dp, payload.len()).unwrap();
                    [&udp.to_bytes()[..], &payload].concat()
                }
                None => payload,
            };
            let mut h = Ipv4Header::new(0, 64, IpNumber(proto), s.octets(), d.octets()).unwrap();
            h.options = Ipv4Options::try_from(options).expect("IPv4 options, 4n bytes");
            h.set_payload_len(body.len()).unwrap();
            h.header_checksum = h.calc_header_checksum();
            h.write(&mut out).unwrap();
            out.extend_from_slice(&body);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut h = Ipv6Header {
                traffic_class: 0,
                flow_label: Ipv6FlowLabel::ZERO,
                payload_length: 0,
                next_header: IpNumber(proto),
                hop_limit: 64,
                source: s.octets(),
                destination: d.octets(),
            };
            let body = match udp_ports {
                Some((sp, dp)) => {
                    let udp = UdpHeader::with_ipv6_checksum(sp, dp, &h, &payload).unwrap();
                    [&udp.to_bytes()[..], &payload].concat()
                }
                None => payload,
            };
            h.payload_length = body.len() as u16;
            h.write(&mut out).unwrap();
            out.extend_from_slice(&body);
        }
        _ => panic!("mixed outer address families"),
    }
    out
}

/// `encapsulate_with` without IPv4 options.
pub fn encapsulate(outer_src: &str, outer_dst: &str, encap: Encap, inner: &[u8]) -> Vec<u8> {
    encapsulate_with(outer_src, outer_dst, encap, &[], inner)
}

/// Ethernet (director's MAC -> ours, optionally one 802.1Q tag) around an IP packet, with the
/// ethertype of its version.
pub fn ethernet(ip: &[u8], vlan: Option<u16>) -> Vec<u8> {
    let mut out = Vec::with_capacity(ip.len() + 18);
    out.extend_from_slice(&DIRECTOR_MAC);
    out.extend_from_slice(&CLIENT_MAC);
    if let Some(v) = vlan {
        out.extend_from_slice(&0x8100u16.to_be_bytes());
        out.extend_from_slice(&v.to_be_bytes());
    }
    let ethertype: u16 = match ip[0] >> 4 {
        4 => 0x0800,
        6 => 0x86DD,
        v => panic!("IP version {v}"),
    };
    out.extend_from_slice(&ethertype.to_be_bytes());
    out.extend_from_slice(ip);
    out
}
