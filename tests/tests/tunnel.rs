//! TUN forwarding through the real director object (BPF_PROG_TEST_RUN), in a network namespace
//! whose routes and neighbours the program's FIB lookups see: exact encapsulated bytes for IPIP,
//! IP6IP6, 6in4, 4in6 and GUE (IPv4 and IPv6 outer), valid outer checksums, flow-derived outer
//! ports and labels, ICMP too-big answers, ICMP errors relayed to a flow's real server, and every
//! failure counted.

use std::net::IpAddr;

use lb_common::{tuple_hash, DataplaneConfig, Reason};
use lb_user::model::{
    Change, ForwardMethod, Protocol, RealServer, Scheduler, ServiceKey, Tunnel, TunnelKind,
};
use xvs_tests::{
    packets::{frame, pseudo, tcp, udp, ACK, CLIENT_MAC, DIRECTOR_MAC, L4, SYN},
    progtest::{in_fib_ns, mac_text, verdict, Director},
};

const NS: &str = "xvstun-prog";
/// The director's interface in the namespace, and its MAC.
const D0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xd0];
/// The on-link real server's MAC (IPv4 and IPv6), and the router's.
const RS_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x20];
const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
const D2_PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x82];
const CLIENT: &str = "192.0.2.1";
const CLIENT6: &str = "2001:db8:1::1";
const VIP: &str = "203.0.113.10";
const VIP6: &str = "2001:db8:10::10";
/// d0's addresses: the outer source the FIB picks.
const D0_V4: [u8; 4] = [198, 51, 100, 1];
const D0_V6: &str = "2001:db8:100::1";
/// An on-link real server (both families), a routed one behind 198.51.100.62 (route MTU 1300)
/// and 2001:db8:100::fe (route MTU 1400; IPv4 uses a route MTU only when locked or with
/// ip_forward_use_pmtu), one behind the second interface d2.
const RS_LINK: &str = "198.51.100.20";
const RS_LINK6: &str = "2001:db8:100::20";
const RS_ROUTED: &str = "198.51.100.70";
const RS_ROUTED6: &str = "2001:db8:200::70";
const RS_D2: &str = "198.51.100.130";

/// Runs `f` with a director loaded in this test's namespace (its routes and neighbours below)
/// and d0's ifindex.
fn in_ns(f: impl FnOnce(&mut Director, u32) + Send + 'static) {
    let script = format!(
        "ip link add d0 address {d0} type veth peer name d1
            ip link add d2 type veth peer name d3 address {d3}
            for l in d0 d1 d2 d3; do ip link set $l up; done
            ip addr add 198.51.100.1/26 dev d0
            ip addr add 2001:db8:100::1/64 dev d0 nodad
            ip addr add 198.51.100.129/26 dev d2
            ip neigh add {RS_LINK} lladdr {rs} dev d0 nud permanent
            ip neigh add {RS_LINK6} lladdr {rs} dev d0 nud permanent
            ip neigh add 198.51.100.62 lladdr {gw} dev d0 nud permanent
            ip neigh add 2001:db8:100::fe lladdr {gw} dev d0 nud permanent
            ip neigh add {RS_D2} lladdr {d3} dev d2 nud permanent
            ip route add 198.51.100.64/26 via 198.51.100.62 mtu lock 1300
            ip -6 route add 2001:db8:200::/64 via 2001:db8:100::fe mtu lock 1400
            sysctl -qw net.ipv4.conf.all.forwarding=1 net.ipv6.conf.all.forwarding=1",
        d0 = mac_text(&D0_MAC),
        d3 = mac_text(&D2_PEER_MAC),
        rs = mac_text(&RS_MAC),
        gw = mac_text(&GW_MAC),
    );
    in_fib_ns(NS, &script, f);
}

fn tun(kind: TunnelKind, port: u16, csum: bool) -> ForwardMethod {
    ForwardMethod::Tunnel(Tunnel { kind, port, csum })
}

/// A service with one real server.
fn service(d: &mut Director, proto: Protocol, vip: &str, port: u16, rs: &str, fwd: ForwardMethod) {
    let key = ServiceKey::Addr {
        protocol: proto,
        addr: format!("{}:{port}", bracket(vip)).parse().unwrap(),
    };
    d.apply(&[
        Change::add_service(key, Scheduler::Rr),
        Change::AddReal {
            service: key,
            real: RealServer {
                forward: fwd,
                ..RealServer::dr(format!("{}:{port}", bracket(rs)).parse().unwrap(), 1)
            },
        },
    ]);
}

fn bracket(a: &str) -> String {
    if a.contains(':') {
        format!("[{a}]")
    } else {
        a.to_string()
    }
}

/// RFC 1071, written independently of the data plane's arithmetic.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += w as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ip_bytes(a: &str) -> Vec<u8> {
    match a.parse::<IpAddr>().unwrap() {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

fn addr16(a: &str) -> [u8; 16] {
    let b = ip_bytes(a);
    let mut out = [0u8; 16];
    out[..b.len()].copy_from_slice(&b);
    out
}

/// The flow hash the data plane uses for the outer port / label of a client flow.
fn flow_hash(src: &str, sport: u16, dst: &str, dport: u16, proto: u8) -> u32 {
    tuple_hash(
        &addr16(src),
        &addr16(dst),
        sport.to_be(),
        dport.to_be(),
        proto,
    )
}

/// The frame the director should send: Ethernet to `dmac` from d0, the outer IP header from
/// `src` to `rs`, (GUE: UDP + GUE header), then the inner IP packet unchanged.
fn expected(
    inner_frame: &[u8],
    dmac: [u8; 6],
    src: &[u8],
    rs: &str,
    gue: Option<(u16, bool)>,
    hash: u32,
) -> Vec<u8> {
    let inner = &inner_frame[14..];
    let inner_v6 = inner[0] >> 4 == 6;
    let inner_proto = if inner_v6 { 41u8 } else { 4u8 };
    let dst = ip_bytes(rs);
    let outer_v6 = dst.len() == 16;
    let mut l4 = Vec::new();
    if let Some((port, csum)) = gue {
        let len = 8 + 4 + inner.len();
        let sport = 0xc000 | (hash as u16 & 0x3fff);
        l4.extend_from_slice(&sport.to_be_bytes());
        l4.extend_from_slice(&port.to_be_bytes());
        l4.extend_from_slice(&(len as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0, 0, inner_proto, 0, 0]);
        l4.extend_from_slice(inner);
        if outer_v6 || csum {
            let mut buf = pseudo(src, &dst, 17, len);
            buf.extend_from_slice(&l4);
            let c = match checksum(&buf) {
                0 => 0xffff,
                c => c,
            };
            l4[6..8].copy_from_slice(&c.to_be_bytes());
        }
    } else {
        l4.extend_from_slice(inner);
    }
    let next = if gue.is_some() { 17 } else { inner_proto };
    let mut out = Vec::new();
    out.extend_from_slice(&dmac);
    out.extend_from_slice(&D0_MAC);
    if outer_v6 {
        out.extend_from_slice(&[0x86, 0xdd]);
        let label = hash & 0xf_ffff;
        out.extend_from_slice(&[0x60, (label >> 16) as u8, (label >> 8) as u8, label as u8]);
        out.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        out.extend_from_slice(&[next, 64]);
        out.extend_from_slice(src);
        out.extend_from_slice(&dst);
    } else {
        out.extend_from_slice(&[0x08, 0x00]);
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0x40, 0, 64, next, 0, 0]);
        ip.extend_from_slice(src);
        ip.extend_from_slice(&dst);
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        out.extend_from_slice(&ip);
    }
    out.extend_from_slice(&l4);
    out
}

/// Checks the outer checksums of an encapsulated frame independently: the IPv4 header sums to
/// zero; a filled GUE UDP checksum verifies over its pseudo-header; the inner L4 checksum still
/// verifies (the inner packet is untouched).
fn assert_outer_checksums(out: &[u8], what: &str) {
    let (ip, l4_off, proto, src, dst) = if out[12..14] == [0x08, 0x00] {
        let ip = &out[14..34];
        assert_eq!(checksum(ip), 0, "{what}: outer IPv4 header checksum");
        (ip, 34, ip[9], ip[12..16].to_vec(), ip[16..20].to_vec())
    } else {
        let ip = &out[14..54];
        (ip, 54, ip[6], ip[8..24].to_vec(), ip[24..40].to_vec())
    };
    let _ = ip;
    if proto == 17 {
        let seg = &out[l4_off..];
        let stored = u16::from_be_bytes([seg[6], seg[7]]);
        if stored != 0 || src.len() == 16 {
            let mut buf = pseudo(&src, &dst, 17, seg.len());
            buf.extend_from_slice(seg);
            assert_eq!(checksum(&buf), 0, "{what}: outer UDP checksum");
        }
    }
}

fn set_config(d: &mut Director, f: impl FnOnce(&mut DataplaneConfig)) {
    let mut c = DataplaneConfig::default();
    f(&mut c);
    d.dp.set_config(c).expect("set config");
}

#[test]
fn tunnel_encapsulation_exact_bytes_every_family_and_type() {
    in_ns(|d, ifx| {
        use Protocol::{Tcp, Udp};
        use TunnelKind::{Gue, Ipip};
        // (name, VIP, port, real server, method, next-hop MAC, outer source)
        let d0v6 = ip_bytes(D0_V6);
        type Case<'a> = (
            &'a str,
            &'a str,
            u16,
            &'a str,
            ForwardMethod,
            [u8; 6],
            Vec<u8>,
        );
        let cases: Vec<Case> = vec![
            (
                "ipip",
                VIP,
                80,
                RS_LINK,
                tun(Ipip, 0, false),
                RS_MAC,
                D0_V4.to_vec(),
            ),
            (
                "ipip routed",
                VIP,
                81,
                RS_ROUTED,
                tun(Ipip, 0, false),
                GW_MAC,
                D0_V4.to_vec(),
            ),
            (
                "gue v4 nocsum",
                VIP,
                82,
                RS_LINK,
                tun(Gue, 6080, false),
                RS_MAC,
                D0_V4.to_vec(),
            ),
            (
                "gue v4 csum",
                VIP,
                83,
                RS_ROUTED,
                tun(Gue, 6080, true),
                GW_MAC,
                D0_V4.to_vec(),
            ),
            (
                "4in6",
                VIP,
                84,
                RS_LINK6,
                tun(Ipip, 0, false),
                RS_MAC,
                d0v6.clone(),
            ),
            (
                "gue 4 over 6",
                VIP,
                85,
                RS_ROUTED6,
                tun(Gue, 5555, false),
                GW_MAC,
                d0v6.clone(),
            ),
            (
                "ip6ip6",
                VIP6,
                80,
                RS_LINK6,
                tun(Ipip, 0, false),
                RS_MAC,
                d0v6.clone(),
            ),
            (
                "gue v6",
                VIP6,
                81,
                RS_ROUTED6,
                tun(Gue, 6080, false),
                GW_MAC,
                d0v6.clone(),
            ),
            (
                "6in4",
                VIP6,
                82,
                RS_LINK,
                tun(Ipip, 0, false),
                RS_MAC,
                D0_V4.to_vec(),
            ),
            (
                "gue 6 over 4 csum",
                VIP6,
                83,
                RS_ROUTED,
                tun(Gue, 6080, true),
                GW_MAC,
                D0_V4.to_vec(),
            ),
        ];
        for (name, vip, port, rs, fwd, dmac, src) in &cases {
            service(d, Tcp, vip, *port, rs, *fwd);
            service(d, Udp, vip, *port, rs, *fwd);
            let client = if vip.contains(':') { CLIENT6 } else { CLIENT };
            let gue = match fwd {
                ForwardMethod::Tunnel(t) if t.kind == Gue => Some((t.port, t.csum)),
                _ => None,
            };
            for (l4, proto, pkt) in [
                ("tcp syn", 6u8, tcp(client, 40000, vip, *port, SYN)),
                (
                    "udp",
                    17u8,
                    udp(client, 40001, vip, *port, b"a datagram payload"),
                ),
                (
                    "tcp data",
                    6u8,
                    frame(client, 40000, vip, *port, L4::Tcp(ACK), None, &[7u8; 333]),
                ),
            ] {
                let what = format!("{name} {l4}");
                let sport = if proto == 17 { 40001 } else { 40000 };
                let hash = flow_hash(client, sport, vip, *port, proto);
                let before = d.reason(Reason::TxTunnel);
                let (v, out) = d.run_on(ifx, &pkt);
                assert_eq!(v, verdict::TX, "{what}: verdict");
                assert_eq!(
                    out,
                    expected(&pkt, *dmac, src, rs, gue, hash),
                    "{what}: bytes"
                );
                assert_outer_checksums(&out, &what);
                assert_eq!(d.reason(Reason::TxTunnel), before + 1, "{what}: counted");
            }
        }
        // A VLAN-tagged frame keeps its tag in front of the outer header, for each outer
        // family (IPIP to an IPv4 real server, GUE to an IPv6 one).
        for (vip, port, rs, dmac, src, gue) in [
            (VIP, 80, RS_LINK, RS_MAC, D0_V4.to_vec(), None),
            (
                VIP6,
                81,
                RS_ROUTED6,
                GW_MAC,
                d0v6.clone(),
                Some((6080, false)),
            ),
        ] {
            let client = if vip.contains(':') { CLIENT6 } else { CLIENT };
            let tagged = frame(client, 40009, vip, port, L4::Tcp(ACK), Some(42), b"tagged");
            let plain = frame(client, 40009, vip, port, L4::Tcp(ACK), None, b"tagged");
            let hash = flow_hash(client, 40009, vip, port, 6);
            let mut want = expected(&plain, dmac, &src, rs, gue, hash);
            want.splice(12..12, [0x81, 0x00, 0x00, 42]);
            let (v, out) = d.run_on(ifx, &tagged);
            assert_eq!(v, verdict::TX, "{vip} vlan: verdict");
            assert_eq!(out, want, "{vip} vlan: bytes");
        }
        // A configured outer source replaces the FIB's choice.
        set_config(d, |c| c.tun_src4 = [198, 51, 100, 9]);
        let pkt = tcp(CLIENT, 40000, VIP, 80, ACK);
        let (v, out) = d.run_on(ifx, &pkt);
        assert_eq!(v, verdict::TX);
        let hash = flow_hash(CLIENT, 40000, VIP, 80, 6);
        assert_eq!(
            out,
            expected(&pkt, RS_MAC, &[198, 51, 100, 9], RS_LINK, None, hash)
        );
        // The DR path is unchanged next to tunnels: a DR server in the same service set.
        assert_eq!(d.reason(Reason::DropTunNoRoute), 0);
        assert_eq!(d.reason(Reason::TunZeroCsum), 0);
    });
}

#[test]
fn tunnel_outer_port_and_label_follow_the_flow() {
    in_ns(|d, ifx| {
        service(
            d,
            Protocol::Tcp,
            VIP,
            80,
            RS_LINK,
            tun(TunnelKind::Gue, 6080, false),
        );
        service(
            d,
            Protocol::Tcp,
            VIP6,
            80,
            RS_LINK6,
            tun(TunnelKind::Ipip, 0, false),
        );
        let mut ports = std::collections::BTreeSet::new();
        let mut labels = std::collections::BTreeSet::new();
        for cport in 40000..40032u16 {
            let (_, a) = d.run_on(ifx, &tcp(CLIENT, cport, VIP, 80, SYN));
            let (_, b) = d.run_on(ifx, &tcp(CLIENT, cport, VIP, 80, ACK));
            // GUE source port: bytes 34..36 (Ethernet 14 + IPv4 20).
            assert_eq!(a[34..36], b[34..36], "one flow keeps one outer source port");
            let p = u16::from_be_bytes([a[34], a[35]]);
            assert!(p >= 0xc000, "outer source port {p} in the ephemeral range");
            ports.insert(p);
            let (_, c) = d.run_on(ifx, &tcp(CLIENT6, cport, VIP6, 80, SYN));
            let (_, e) = d.run_on(ifx, &tcp(CLIENT6, cport, VIP6, 80, ACK));
            let label = |f: &[u8]| u32::from_be_bytes([0, f[15] & 0x0f, f[16], f[17]]);
            assert_eq!(label(&c), label(&e), "one flow keeps one flow label");
            labels.insert(label(&c));
        }
        assert!(ports.len() >= 30, "32 flows, {} outer ports", ports.len());
        assert!(labels.len() >= 30, "32 flows, {} flow labels", labels.len());
    });
}

#[test]
fn too_big_for_the_tunnel_answers_the_client_with_icmp() {
    in_ns(|d, ifx| {
        // IPv4: route MTU 1300 toward RS_ROUTED; IPIP adds 20 bytes.
        service(
            d,
            Protocol::Tcp,
            VIP,
            80,
            RS_ROUTED,
            tun(TunnelKind::Ipip, 0, false),
        );
        let syn = tcp(CLIENT, 40000, VIP, 80, SYN);
        assert_eq!(d.run_on(ifx, &syn).0, verdict::TX);
        // 1281 + 20 > 1300: too big. 1280 + 20 fits.
        let fits = frame(
            CLIENT,
            40000,
            VIP,
            80,
            L4::Tcp(ACK),
            None,
            &[1u8; 1280 - 40],
        );
        assert_eq!(fits.len() - 14, 1280);
        assert_eq!(d.run_on(ifx, &fits).0, verdict::TX);
        assert_eq!(d.reason(Reason::TxIcmpTooBig), 0);
        let big = frame(CLIENT, 40000, VIP, 80, L4::Tcp(ACK), None, &[1u8; 1400]);
        let (v, out) = d.run_on(ifx, &big);
        assert_eq!(v, verdict::TX, "the answer goes back out");
        assert_eq!(d.reason(Reason::TxIcmpTooBig), 1);
        assert_eq!(out[..6], CLIENT_MAC, "to the client's MAC");
        assert_eq!(out[6..12], DIRECTOR_MAC, "from ours");
        assert_eq!(out[12..14], [0x08, 0x00]);
        let ip = &out[14..34];
        assert_eq!(checksum(ip), 0, "IPv4 header checksum");
        assert_eq!(ip[9], 1, "ICMP");
        assert_eq!(ip[12..16], ip_bytes(VIP)[..], "from the VIP");
        assert_eq!(ip[16..20], ip_bytes(CLIENT)[..], "to the client");
        assert_eq!(
            u16::from_be_bytes([ip[2], ip[3]]) as usize,
            out.len() - 14,
            "total length"
        );
        let icmp = &out[34..];
        assert_eq!(icmp[..2], [3, 4], "fragmentation needed");
        assert_eq!(
            u16::from_be_bytes([icmp[6], icmp[7]]),
            1280,
            "MTU 1300 - 20"
        );
        assert_eq!(checksum(icmp), 0, "ICMP checksum");
        assert_eq!(icmp[8..8 + 128], big[14..14 + 128], "quotes the packet");

        // IPv6: route MTU 1400 toward RS_ROUTED6; IP6IP6 adds 40.
        service(
            d,
            Protocol::Tcp,
            VIP6,
            80,
            RS_ROUTED6,
            tun(TunnelKind::Ipip, 0, false),
        );
        let big6 = frame(CLIENT6, 40000, VIP6, 80, L4::Tcp(ACK), None, &[2u8; 1400]);
        let (v, out) = d.run_on(ifx, &big6);
        assert_eq!(v, verdict::TX);
        assert_eq!(d.reason(Reason::TxIcmpTooBig), 2);
        assert_eq!(out[12..14], [0x86, 0xdd]);
        let ip = &out[14..54];
        assert_eq!(ip[6], 58, "ICMPv6");
        assert_eq!(ip[8..24], ip_bytes(VIP6)[..]);
        assert_eq!(ip[24..40], ip_bytes(CLIENT6)[..]);
        let icmp = &out[54..];
        assert_eq!(
            u16::from_be_bytes([ip[4], ip[5]]) as usize,
            icmp.len(),
            "payload length"
        );
        assert_eq!(icmp[..2], [2, 0], "packet too big");
        assert_eq!(
            u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]),
            1360,
            "1400 - 40"
        );
        let mut buf = pseudo(&ip[8..24], &ip[24..40], 58, icmp.len());
        buf.extend_from_slice(icmp);
        assert_eq!(checksum(&buf), 0, "ICMPv6 checksum");
        assert_eq!(icmp[8..8 + 256], big6[14..14 + 256], "quotes the packet");
    });
}

/// An ICMP error from a router on the client's path, about a reply the real server sent from the
/// VIP: (type, code) with the quoted reply VIP:vport -> client:cport.
fn icmp_error_v4(vport: u16, cport: u16) -> Vec<u8> {
    let reply = etherparse::PacketBuilder::ipv4(ip4(VIP), ip4(CLIENT), 63)
        .tcp(vport, cport, 1, 65535)
        .ack(1001);
    let mut quoted = Vec::new();
    reply.write(&mut quoted, &[9u8; 100]).unwrap();
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2(CLIENT_MAC, DIRECTOR_MAC)
        .ipv4([192, 0, 2, 254], ip4(VIP), 64)
        .icmpv4_raw(3, 4, [0, 0, 0x05, 0x00])
        .write(&mut out, &quoted)
        .unwrap();
    out
}

fn ip6(a: &str) -> [u8; 16] {
    a.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

fn ip4(a: &str) -> [u8; 4] {
    a.parse::<std::net::Ipv4Addr>().unwrap().octets()
}

#[test]
fn icmp_errors_follow_their_flow_to_its_real_server() {
    in_ns(|d, ifx| {
        // DR on :80, IPIP on :81.
        let key80 = ServiceKey::Addr {
            protocol: Protocol::Tcp,
            addr: format!("{VIP}:80").parse().unwrap(),
        };
        d.mac("198.51.100.21", [0x02, 0, 0, 0, 0, 0x21]);
        d.apply(&[
            Change::add_service(key80, Scheduler::Rr),
            Change::AddReal {
                service: key80,
                real: RealServer::dr("198.51.100.21:80".parse().unwrap(), 1),
            },
        ]);
        service(
            d,
            Protocol::Tcp,
            VIP,
            81,
            RS_LINK,
            tun(TunnelKind::Ipip, 0, false),
        );
        // No flow yet: the error is the kernel's.
        let err80 = icmp_error_v4(80, 40000);
        let (v, out) = d.run_on(ifx, &err80);
        assert_eq!(
            (v, &out),
            (verdict::PASS, &err80),
            "unknown flow: passed untouched"
        );
        assert_eq!(d.reason(Reason::PassIcmp), 1);
        // Establish both flows, then the errors follow them.
        assert_eq!(
            d.run_on(ifx, &tcp(CLIENT, 40000, VIP, 80, SYN)).0,
            verdict::TX
        );
        assert_eq!(
            d.run_on(ifx, &tcp(CLIENT, 40000, VIP, 81, SYN)).0,
            verdict::TX
        );
        let (v, out) = d.run_on(ifx, &err80);
        assert_eq!(v, verdict::TX, "DR: relayed");
        assert_eq!(
            out[..6],
            [0x02, 0, 0, 0, 0, 0x21],
            "to the flow's real server"
        );
        assert_eq!(out[12..], err80[12..], "otherwise untouched");
        let err81 = icmp_error_v4(81, 40000);
        let (v, out) = d.run_on(ifx, &err81);
        assert_eq!(v, verdict::TX, "TUN: relayed");
        let hash = flow_hash(CLIENT, 40000, VIP, 81, 6);
        assert_eq!(
            out,
            expected(&err81, RS_MAC, &D0_V4, RS_LINK, None, hash),
            "encapsulated"
        );
        assert_eq!(d.reason(Reason::IcmpErrorForwarded), 2);
        // IPv6: a packet-too-big about a reply of an IP6IP6 flow.
        service(
            d,
            Protocol::Tcp,
            VIP6,
            80,
            RS_LINK6,
            tun(TunnelKind::Ipip, 0, false),
        );
        assert_eq!(
            d.run_on(ifx, &tcp(CLIENT6, 40000, VIP6, 80, SYN)).0,
            verdict::TX
        );
        let reply = etherparse::PacketBuilder::ipv6(ip6(VIP6), ip6(CLIENT6), 63)
            .tcp(80, 40000, 1, 65535)
            .ack(1001);
        let mut quoted = Vec::new();
        reply.write(&mut quoted, &[9u8; 100]).unwrap();
        let mut ptb = Vec::new();
        etherparse::PacketBuilder::ethernet2(CLIENT_MAC, DIRECTOR_MAC)
            .ipv6(ip6("2001:db8:1::fe"), ip6(VIP6), 64)
            .icmpv6_raw(2, 0, 1400u32.to_be_bytes())
            .write(&mut ptb, &quoted)
            .unwrap();
        let (v, out) = d.run_on(ifx, &ptb);
        assert_eq!(v, verdict::TX, "ICMPv6 relayed");
        let hash = flow_hash(CLIENT6, 40000, VIP6, 80, 6);
        assert_eq!(
            out,
            expected(&ptb, RS_MAC, &ip_bytes(D0_V6), RS_LINK6, None, hash)
        );
        assert_eq!(d.reason(Reason::IcmpErrorForwarded), 3);
        // An echo request to the VIP is the kernel's.
        let mut echo = Vec::new();
        etherparse::PacketBuilder::ethernet2(CLIENT_MAC, DIRECTOR_MAC)
            .ipv4(ip4(CLIENT), ip4(VIP), 64)
            .icmpv4_echo_request(1, 1)
            .write(&mut echo, b"ping")
            .unwrap();
        assert_eq!(d.run_on(ifx, &echo).0, verdict::PASS);
        assert_eq!(d.reason(Reason::PassIcmp), 2);
    });
}

#[test]
fn tunnel_failures_are_dropped_and_counted() {
    in_ns(|d, ifx| {
        use TunnelKind::Ipip;
        // Through the second interface: redirected there.
        service(d, Protocol::Tcp, VIP, 80, RS_D2, tun(Ipip, 0, false));
        let (v, out) = d.run_on(ifx, &tcp(CLIENT, 40000, VIP, 80, SYN));
        assert_eq!(v, verdict::REDIRECT, "out d2");
        assert_eq!(out[..6], D2_PEER_MAC, "to d2's neighbour");
        assert_eq!(d.reason(Reason::RedirectTunnel), 1);
        // No route.
        service(
            d,
            Protocol::Tcp,
            VIP,
            81,
            "192.0.2.200",
            tun(Ipip, 0, false),
        );
        let pkt = tcp(CLIENT, 40000, VIP, 81, SYN);
        let (v, out) = d.run_on(ifx, &pkt);
        assert_eq!((v, &out), (verdict::DROP, &pkt));
        assert_eq!(d.reason(Reason::DropTunNoRoute), 1);
        // On-link but not resolved.
        service(
            d,
            Protocol::Tcp,
            VIP,
            82,
            "198.51.100.33",
            tun(Ipip, 0, false),
        );
        assert_eq!(
            d.run_on(ifx, &tcp(CLIENT, 40000, VIP, 82, SYN)).0,
            verdict::DROP
        );
        assert_eq!(d.reason(Reason::DropTunNoNeighbor), 1);
        // Forwarding off: the FIB may not be asked, for a backend whose route is not cached...
        service(d, Protocol::Tcp, VIP, 83, RS_LINK, tun(Ipip, 0, false));
        let out = std::process::Command::new("sysctl")
            .args(["-qw", "net.ipv4.conf.d0.forwarding=0"])
            .status()
            .unwrap();
        assert!(out.success());
        assert_eq!(
            d.run_on(ifx, &tcp(CLIENT, 40001, VIP, 83, SYN)).0,
            verdict::DROP
        );
        assert_eq!(d.reason(Reason::DropTunFwdDisabled), 1);
        // ...and, once its cached route expires (TUN_ROUTE_TTL_NS), for the one sent out d2.
        let started = std::time::Instant::now();
        xvs_tests::poll(
            std::time::Duration::from_secs(5),
            "the cached route to d2 to expire",
            || (d.run_on(ifx, &tcp(CLIENT, 40002, VIP, 80, SYN)).0 == verdict::DROP).then_some(()),
        )
        .unwrap();
        assert!(
            started.elapsed().as_nanos() <= 2 * lb_common::TUN_ROUTE_TTL_NS as u128,
            "{:?}",
            started.elapsed()
        );
        assert_eq!(d.reason(Reason::DropTunFwdDisabled), 2);
        assert_eq!(d.reason(Reason::TxTunnel), 0);
    });
}

/// The FIB's answer for a tunnelled backend is reused for TUN_ROUTE_TTL_NS (each CPU its own):
/// a changed neighbour reaches the backend's packets once that has passed, not at once.
#[test]
fn a_tunnelled_backends_route_is_reused_for_at_most_its_lifetime() {
    in_ns(|d, ifx| {
        use std::time::{Duration, Instant};
        service(
            d,
            Protocol::Tcp,
            VIP,
            80,
            RS_LINK,
            tun(TunnelKind::Ipip, 0, false),
        );
        // The destination MAC of a new flow's first packet (SYN from `sport` to VIP:`vport`).
        let next_hop = |d: &mut Director, vport: u16, sport: u16| {
            let (v, out) = d.run_on(ifx, &tcp(CLIENT, sport, VIP, vport, SYN));
            assert_eq!(v, verdict::TX);
            <[u8; 6]>::try_from(&out[..6]).unwrap()
        };
        let move_neighbour = |mac: &[u8; 6]| {
            let out = std::process::Command::new("ip")
                .args(["neigh", "replace", RS_LINK, "lladdr", &mac_text(mac)])
                .args(["dev", "d0", "nud", "permanent"])
                .status()
                .unwrap();
            assert!(out.success());
        };
        assert_eq!(next_hop(d, 80, 40000), RS_MAC);
        let moved: [u8; 6] = [0x02, 0, 0, 0, 0, 0x21];
        move_neighbour(&moved);
        let changed = Instant::now();
        let right_after = next_hop(d, 80, 40001);
        let quick = changed.elapsed() < Duration::from_millis(500);
        let mut port = 40002;
        xvs_tests::poll(
            Duration::from_secs(5),
            "the new neighbour to be used",
            || {
                port += 1;
                (next_hop(d, 80, port) == moved).then_some(())
            },
        )
        .unwrap();
        let seen = changed.elapsed();
        assert!(
            seen.as_nanos() <= 2 * lb_common::TUN_ROUTE_TTL_NS as u128,
            "{seen:?}"
        );
        // Unless this thread stalled for half a second, the packet right after the change still
        // went to the cached next hop.
        assert!(!quick || right_after == RS_MAC, "{right_after:?}");

        // Where the kernel's multipath hash uses ports, a GUE flow's route is its own: not
        // cached, a neighbour change is seen by the very next packet.
        set_config(d, |c| {
            c.flags = lb_common::config_flags::GUE_ROUTE_PER_FLOW4;
        });
        service(
            d,
            Protocol::Tcp,
            VIP,
            81,
            RS_LINK,
            tun(TunnelKind::Gue, 6080, false),
        );
        assert_eq!(next_hop(d, 81, 41000), moved);
        move_neighbour(&RS_MAC);
        assert_eq!(next_hop(d, 81, 41001), RS_MAC, "not cached");
    });
}
