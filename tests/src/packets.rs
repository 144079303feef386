//! Test packets, built with etherparse.

use std::net::IpAddr;

use etherparse::{PacketBuilder, VlanId};

/// The client's MAC in program tests.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// The director's MAC in program tests.
pub const DIRECTOR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// TCP flags of a test segment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Flags {
    /// SYN.
    pub syn: bool,
    /// ACK.
    pub ack: bool,
    /// FIN.
    pub fin: bool,
    /// RST.
    pub rst: bool,
}

/// A SYN.
pub const SYN: Flags = Flags {
    syn: true,
    ack: false,
    fin: false,
    rst: false,
};
/// A bare ACK.
pub const ACK: Flags = Flags {
    syn: false,
    ack: true,
    fin: false,
    rst: false,
};

/// A FIN with ACK.
pub const FIN_ACK: Flags = Flags {
    syn: false,
    ack: true,
    fin: true,
    rst: false,
};
/// A bare RST.
pub const RST: Flags = Flags {
    syn: false,
    ack: false,
    fin: false,
    rst: true,
};

/// Transport of a test packet.
#[derive(Clone, Copy, Debug)]
pub enum L4 {
    /// TCP with flags.
    Tcp(Flags),
    /// UDP.
    Udp,
}

/// Builds client -> VIP frame: Ethernet (optionally one VLAN tag), IPv4/IPv6, TCP/UDP, payload.
pub fn frame(
    src: &str,
    sport: u16,
    dst: &str,
    dport: u16,
    l4: L4,
    vlan: Option<u16>,
    payload: &[u8],
) -> Vec<u8> {
    let src: IpAddr = src.parse().expect("src address");
    let dst: IpAddr = dst.parse().expect("dst address");
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, DIRECTOR_MAC);
    let mut out = Vec::new();
    macro_rules! finish {
        ($ip:expr) => {{
            match l4 {
                L4::Udp => $ip.udp(sport, dport).write(&mut out, payload).unwrap(),
                L4::Tcp(f) => {
                    let mut t = $ip.tcp(sport, dport, 1000, 64240);
                    if f.syn {
                        t = t.syn();
                    }
                    if f.ack {
                        t = t.ack(1);
                    }
                    if f.fin {
                        t = t.fin();
                    }
                    if f.rst {
                        t = t.rst();
                    }
                    t.write(&mut out, payload).unwrap()
                }
            }
        }};
    }
    match (src, dst, vlan) {
        (IpAddr::V4(s), IpAddr::V4(d), None) => finish!(eth.ipv4(s.octets(), d.octets(), 64)),
        (IpAddr::V6(s), IpAddr::V6(d), None) => finish!(eth.ipv6(s.octets(), d.octets(), 64)),
        (IpAddr::V4(s), IpAddr::V4(d), Some(v)) => finish!(eth
            .single_vlan(VlanId::try_new(v).unwrap())
            .ipv4(s.octets(), d.octets(), 64)),
        (IpAddr::V6(s), IpAddr::V6(d), Some(v)) => finish!(eth
            .single_vlan(VlanId::try_new(v).unwrap())
            .ipv6(s.octets(), d.octets(), 64)),
        _ => panic!("mixed address families"),
    }
    out
}

/// A TCP frame without VLAN and payload.
pub fn tcp(src: &str, sport: u16, dst: &str, dport: u16, flags: Flags) -> Vec<u8> {
    frame(src, sport, dst, dport, L4::Tcp(flags), None, b"")
}

/// A UDP frame without VLAN.
pub fn udp(src: &str, sport: u16, dst: &str, dport: u16, payload: &[u8]) -> Vec<u8> {
    frame(src, sport, dst, dport, L4::Udp, None, payload)
}

/// An IP packet (no Ethernet) src:sport -> dst:dport, TCP ACK or UDP, with 100 bytes of payload:
/// what an ICMP error quotes.
pub fn quoted(src: &str, sport: u16, dst: &str, dport: u16, udp: bool) -> Vec<u8> {
    let l4 = if udp { L4::Udp } else { L4::Tcp(ACK) };
    frame(src, sport, dst, dport, l4, None, &[9u8; 100])[14..].to_vec()
}

/// An ICMP error frame from `src` to `dst`, quoting `quote`: IPv4 (type, code, rest) or IPv6
/// by the addresses' family. MACs as the program tests send them.
pub fn icmp_error(src: &str, dst: &str, ty: u8, code: u8, rest: [u8; 4], quote: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, DIRECTOR_MAC);
    let mut out = Vec::new();
    match (src.parse().unwrap(), dst.parse().unwrap()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => b
            .ipv4(s.octets(), d.octets(), 64)
            .icmpv4_raw(ty, code, rest)
            .write(&mut out, quote)
            .unwrap(),
        (IpAddr::V6(s), IpAddr::V6(d)) => b
            .ipv6(s.octets(), d.octets(), 64)
            .icmpv6_raw(ty, code, rest)
            .write(&mut out, quote)
            .unwrap(),
        _ => panic!("mixed families"),
    }
    out
}

/// `translated` with the quoted TCP checksum of `original` (the data plane leaves it, as IPVS
/// does: receivers do not check a quote's L4 checksum).
pub fn keep_quoted_l4_check(mut translated: Vec<u8>, original: &[u8], v6: bool) -> Vec<u8> {
    let at = if v6 { 40 + 16 } else { 20 + 16 };
    translated[at..at + 2].copy_from_slice(&original[at..at + 2]);
    translated
}

/// `f` with its Ethernet addresses replaced.
pub fn with_macs(mut f: Vec<u8>, dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f
}

/// The TCP/UDP checksum pseudo-header of a segment of `len` bytes from `src` to `dst` (4 or 16
/// bytes each), for checking checksums from scratch.
pub fn pseudo(src: &[u8], dst: &[u8], proto: u8, len: usize) -> Vec<u8> {
    let mut p = [src, dst].concat();
    if src.len() == 4 {
        p.extend_from_slice(&[0, proto]);
        p.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        p.extend_from_slice(&(len as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, proto]);
    }
    p
}
