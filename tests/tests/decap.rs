//! Program tests of the real-server decapsulator: crafted tunnel frames through the real
//! xvs-decap object with BPF_PROG_TEST_RUN. Decapsulated output must be exactly Ethernet + the
//! inner packet; everything else must come out byte for byte as it went in; every packet moves
//! exactly one counter. Root required.

use lb_common::decap::DecapReason;
use lb_user::model::{
    Change, ForwardMethod, Protocol, RealServer, Scheduler, ServiceKey, Tunnel, TunnelKind,
};
use xvs_tests::{
    decap::Decap,
    netns,
    packets::{frame, L4, SYN},
    progtest::{verdict, Director},
    tunnel::{encapsulate, encapsulate_with, ethernet, ip_packet, Encap},
};

const DIRECTOR4: &str = "198.51.100.1";
const LOCAL4: &str = "198.51.100.2";
const OTHER4: &str = "198.51.100.99";
const DIRECTOR6: &str = "2001:db8:1::1";
const LOCAL6: &str = "2001:db8:1::2";
const OTHER6: &str = "2001:db8:1::99";
const VIP4: &str = "192.0.2.10";
const VIP6: &str = "2001:db8:f::10";
const NOT_VIP4: &str = "192.0.2.11";
const NOT_VIP6: &str = "2001:db8:f::11";
const CLIENT4: &str = "203.0.113.7";
const CLIENT6: &str = "2001:db8:c::7";
const GUE_PORT: u16 = 6080;
const GUE_V0: Encap = Encap::GueV0 {
    sport: 49152,
    port: GUE_PORT,
};
const GUE_V1: Encap = Encap::GueV1 {
    sport: 49153,
    port: GUE_PORT,
};

fn decap() -> Decap {
    Decap::new(&[LOCAL4, LOCAL6], &[VIP4, VIP6], &[GUE_PORT])
}

/// The client's packets to a VIP of the family of `vip`: a TCP SYN and a UDP datagram.
fn inners(vip: &str) -> [Vec<u8>; 2] {
    let client = if vip.contains(':') { CLIENT6 } else { CLIENT4 };
    [
        ip_packet(client, 40000, vip, 80, L4::Tcp(SYN), b""),
        ip_packet(client, 40001, vip, 53, L4::Udp, b"a dns query, say"),
    ]
}

/// Runs `frame` and asserts that exactly counter `reason` moved, by one.
fn run_counted(d: &mut Decap, frame: &[u8], reason: DecapReason) -> (u32, Vec<u8>) {
    let before = d.counters();
    let out = d.run(frame);
    let after = d.counters();
    for ((r, b), (_, a)) in before.iter().zip(&after) {
        let want = b + u64::from(*r == reason);
        assert_eq!(
            *a,
            want,
            "counter {} (expected only {} to move)",
            r.name(),
            reason.name()
        );
    }
    out
}

fn expect_decap(d: &mut Decap, frame: &[u8], want: &[u8], reason: DecapReason) {
    let (v, out) = run_counted(d, frame, reason);
    assert_eq!(
        v,
        verdict::PASS,
        "{reason:?}: decapsulated frames go to the kernel"
    );
    assert_eq!(
        out, want,
        "{reason:?}: output must be Ethernet + the inner packet"
    );
}

fn expect_untouched(d: &mut Decap, frame: &[u8], reason: DecapReason) {
    let (v, out) = run_counted(d, frame, reason);
    assert_eq!(v, verdict::PASS, "{reason:?}: never dropped");
    assert_eq!(out, frame, "{reason:?}: passed byte for byte");
}

#[test]
fn every_tunnel_kind_is_decapsulated_to_ethernet_and_the_inner_packet() {
    let mut d = decap();
    // (outer source, outer destination, VIP, encapsulation, reason)
    let cases = [
        (DIRECTOR4, LOCAL4, VIP4, Encap::Ip, DecapReason::DecapIpip),
        (DIRECTOR4, LOCAL4, VIP6, Encap::Ip, DecapReason::Decap6in4),
        (DIRECTOR6, LOCAL6, VIP6, Encap::Ip, DecapReason::DecapIp6ip6),
        (DIRECTOR6, LOCAL6, VIP4, Encap::Ip, DecapReason::Decap4in6),
        (DIRECTOR4, LOCAL4, VIP4, GUE_V0, DecapReason::DecapGue),
        (DIRECTOR4, LOCAL4, VIP6, GUE_V0, DecapReason::DecapGue),
        (DIRECTOR6, LOCAL6, VIP6, GUE_V0, DecapReason::DecapGue),
        (DIRECTOR6, LOCAL6, VIP4, GUE_V0, DecapReason::DecapGue),
        (DIRECTOR4, LOCAL4, VIP4, GUE_V1, DecapReason::DecapGueDirect),
        (DIRECTOR4, LOCAL4, VIP6, GUE_V1, DecapReason::DecapGueDirect),
        (DIRECTOR6, LOCAL6, VIP6, GUE_V1, DecapReason::DecapGueDirect),
        (DIRECTOR6, LOCAL6, VIP4, GUE_V1, DecapReason::DecapGueDirect),
    ];
    for (src, dst, vip, encap, reason) in cases {
        for inner in inners(vip) {
            let frame = ethernet(&encapsulate(src, dst, encap, &inner), None);
            expect_decap(&mut d, &frame, &ethernet(&inner, None), reason);
        }
    }
    // Two packets per case.
    for r in DecapReason::ALL.iter().filter(|r| r.is_decap()) {
        let per_kind = cases.iter().filter(|c| c.4 == *r).count() as u64 * 2;
        assert_eq!(d.counter(*r), per_kind, "{}", r.name());
    }
}

#[test]
fn one_vlan_tag_is_kept_two_pass_untouched() {
    let mut d = decap();
    for (dst, vip) in [(LOCAL4, VIP4), (LOCAL6, VIP6)] {
        let src = if vip == VIP4 { DIRECTOR4 } else { DIRECTOR6 };
        for inner in inners(vip) {
            let frame = ethernet(&encapsulate(src, dst, Encap::Ip, &inner), Some(42));
            let reason = if vip == VIP4 {
                DecapReason::DecapIpip
            } else {
                DecapReason::DecapIp6ip6
            };
            expect_decap(&mut d, &frame, &ethernet(&inner, Some(42)), reason);
        }
    }
    // QinQ: a second tag after the first.
    let inner = &inners(VIP4)[0];
    let single = ethernet(&encapsulate(DIRECTOR4, LOCAL4, Encap::Ip, inner), Some(42));
    let mut stacked = single[..16].to_vec();
    stacked.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
    stacked.extend_from_slice(&single[16..]);
    expect_untouched(&mut d, &stacked, DecapReason::PassStackedVlan);
}

#[test]
fn outer_ipv4_options_are_stripped_with_the_header() {
    let mut d = decap();
    // NOP NOP NOP EOL; then a 4-byte record-route-like filler padded to 8 bytes.
    for options in [&[1u8, 1, 1, 0][..], &[1, 1, 1, 1, 1, 1, 1, 0]] {
        for inner in inners(VIP4) {
            let frame = ethernet(
                &encapsulate_with(DIRECTOR4, LOCAL4, Encap::Ip, options, &inner),
                None,
            );
            expect_decap(
                &mut d,
                &frame,
                &ethernet(&inner, None),
                DecapReason::DecapIpip,
            );
            let frame = ethernet(
                &encapsulate_with(DIRECTOR4, LOCAL4, GUE_V0, options, &inner),
                None,
            );
            expect_decap(
                &mut d,
                &frame,
                &ethernet(&inner, None),
                DecapReason::DecapGue,
            );
        }
    }
}

#[test]
fn packets_not_for_us_pass_untouched() {
    let mut d = decap();
    for vip in [VIP4, VIP6] {
        for inner in inners(vip) {
            // The outer destination is not one of our addresses (every encapsulation).
            for (src, other) in [(DIRECTOR4, OTHER4), (DIRECTOR6, OTHER6)] {
                for encap in [Encap::Ip, GUE_V0, GUE_V1] {
                    let frame = ethernet(&encapsulate(src, other, encap, &inner), None);
                    expect_untouched(&mut d, &frame, DecapReason::PassNotLocal);
                }
            }
            // A VIP is not an outer destination we decapsulate for.
            let frame = ethernet(&encapsulate(DIRECTOR4, VIP4, Encap::Ip, &inner), None);
            expect_untouched(&mut d, &frame, DecapReason::PassNotLocal);
            // GUE on another UDP port is ordinary UDP.
            let other_port = Encap::GueV0 {
                sport: 49152,
                port: GUE_PORT + 1,
            };
            let frame = ethernet(&encapsulate(DIRECTOR4, LOCAL4, other_port, &inner), None);
            expect_untouched(&mut d, &frame, DecapReason::PassNotTunnel);
            // Not tunnelled at all: a DR-style packet straight to the VIP.
            expect_untouched(&mut d, &ethernet(&inner, None), DecapReason::PassNotTunnel);
        }
    }
    // The inner destination is not a VIP (even though the tunnel is ours).
    for (src, dst, not_vip) in [
        (DIRECTOR4, LOCAL4, NOT_VIP4),
        (DIRECTOR4, LOCAL4, NOT_VIP6),
        (DIRECTOR6, LOCAL6, NOT_VIP6),
        (DIRECTOR6, LOCAL6, NOT_VIP4),
        (DIRECTOR4, LOCAL4, LOCAL4),
    ] {
        for inner in inners(not_vip) {
            for encap in [Encap::Ip, GUE_V0, GUE_V1] {
                let frame = ethernet(&encapsulate(src, dst, encap, &inner), None);
                expect_untouched(&mut d, &frame, DecapReason::PassNotVip);
            }
        }
    }
    // ARP.
    let mut arp = ethernet(&inners(VIP4)[0], None);
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    expect_untouched(&mut d, &arp, DecapReason::PassNotTunnel);
    // Outer IPv4 fragments (first and later) cannot be decapsulated piecewise.
    for (flags_hi, flags_lo) in [(0x20, 0x00), (0x00, 0x10)] {
        let mut ip = encapsulate(DIRECTOR4, LOCAL4, Encap::Ip, &inners(VIP4)[1]);
        ip[6] = flags_hi;
        ip[7] = flags_lo;
        fix_ipv4_checksum(&mut ip);
        expect_untouched(&mut d, &ethernet(&ip, None), DecapReason::PassFragment);
    }
    // Outer IPv6 with an extension header (hop-by-hop) before the tunnel.
    let ip = encapsulate(DIRECTOR6, LOCAL6, Encap::Ip, &inners(VIP6)[0]);
    let mut with_hbh = ip[..40].to_vec();
    with_hbh[6] = 0; // next header: hop-by-hop
    let payload_len = u16::from_be_bytes([ip[4], ip[5]]) + 8;
    with_hbh[4..6].copy_from_slice(&payload_len.to_be_bytes());
    with_hbh.extend_from_slice(&[41, 0, 1, 4, 0, 0, 0, 0]); // next 41, PadN
    with_hbh.extend_from_slice(&ip[40..]);
    expect_untouched(
        &mut d,
        &ethernet(&with_hbh, None),
        DecapReason::PassIpv6ExtHeader,
    );
}

fn fix_ipv4_checksum(ip: &mut [u8]) {
    let hlen = usize::from(ip[0] & 0x0f) * 4;
    ip[10] = 0;
    ip[11] = 0;
    let mut sum: u32 = ip[..hlen]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

/// The byte offset of the GUE header in an IPv4 GUE frame without options.
const GUE_AT: usize = 14 + 20 + 8;

#[test]
fn gue_headers_other_than_ipvs_variant_0_and_variant_1_pass_untouched() {
    let mut d = decap();
    let inner = &inners(VIP4)[1];
    let good = ethernet(&encapsulate(DIRECTOR4, LOCAL4, GUE_V0, inner), None);
    // (what, byte of the GUE header, its new value)
    let edits = [
        ("hlen 1 (options: remote checksum offload)", 0, 0x01),
        ("control message", 0, 0x20),
        ("version 2", 0, 0x80),
        ("unknown inner protocol (UDP)", 1, 17),
        ("flags set", 2, 0x80),
        ("variant 1 with IP version 5", 0, 0x50),
    ];
    for (what, byte, value) in edits {
        let mut frame = good.clone();
        frame[GUE_AT + byte] = value;
        let (v, out) = run_counted(&mut d, &frame, DecapReason::PassGueUnsupported);
        assert_eq!((v, &out), (verdict::PASS, &frame), "{what}");
    }
    // And the unedited frame still decapsulates (the edits were the only difference).
    expect_decap(&mut d, &good, &ethernet(inner, None), DecapReason::DecapGue);
}

#[test]
fn truncated_or_inconsistent_tunnels_pass_untouched() {
    let mut d = decap();
    let inner4 = &inners(VIP4)[0];
    let inner6 = &inners(VIP6)[0];
    // The inner header cut short, for every encapsulation and outer family.
    for (src, dst) in [(DIRECTOR4, LOCAL4), (DIRECTOR6, LOCAL6)] {
        for encap in [Encap::Ip, GUE_V0, GUE_V1] {
            for (inner, keep) in [(inner4, 19), (inner6, 39)] {
                let full = ethernet(&encapsulate(src, dst, encap, inner), None);
                let cut = &full[..full.len() - inner.len() + keep];
                expect_untouched(&mut d, cut, DecapReason::PassMalformed);
            }
        }
    }
    // GUE: UDP to the GUE port with less than a GUE header after it.
    let full = ethernet(&encapsulate(DIRECTOR4, LOCAL4, GUE_V0, inner4), None);
    expect_untouched(&mut d, &full[..GUE_AT + 2], DecapReason::PassMalformed);
    // The outer header announces IPv4 inside, but IPv6 follows (and the other way round).
    let mut ip = encapsulate(DIRECTOR4, LOCAL4, Encap::Ip, inner6);
    ip[9] = 4;
    fix_ipv4_checksum(&mut ip);
    expect_untouched(&mut d, &ethernet(&ip, None), DecapReason::PassMalformed);
    let mut ip = encapsulate(DIRECTOR6, LOCAL6, Encap::Ip, inner4);
    ip[6] = 41;
    expect_untouched(&mut d, &ethernet(&ip, None), DecapReason::PassMalformed);
    // An inner IPv4 header with IHL < 5.
    let mut bad = inner4.clone();
    bad[0] = 0x44;
    let frame = ethernet(&encapsulate(DIRECTOR4, LOCAL4, Encap::Ip, &bad), None);
    expect_untouched(&mut d, &frame, DecapReason::PassMalformed);
    // An outer IPv4 header with IHL < 5 that claims to carry IPIP.
    let mut ip = encapsulate(DIRECTOR4, LOCAL4, Encap::Ip, inner4);
    ip[0] = 0x44;
    expect_untouched(&mut d, &ethernet(&ip, None), DecapReason::PassMalformed);
    // Ethernet header only: not a tunnel packet at all.
    let full = ethernet(&encapsulate(DIRECTOR4, LOCAL4, Encap::Ip, inner4), None);
    expect_untouched(&mut d, &full[..14], DecapReason::PassNotTunnel);
    // Nothing at all was decapsulated.
    assert!(d.counters().iter().all(|(r, n)| !r.is_decap() || *n == 0));
}

#[test]
fn maps_follow_the_configuration() {
    let mut d = decap();
    let frame_for = |vip: &str, port: u16| {
        let inner = &inners(vip)[1];
        let encap = Encap::GueV0 { sport: 1, port };
        (
            ethernet(&encapsulate(DIRECTOR4, LOCAL4, encap, inner), None),
            ethernet(inner, None),
        )
    };
    let (a, a_inner) = frame_for(VIP4, GUE_PORT);
    expect_decap(&mut d, &a, &a_inner, DecapReason::DecapGue);
    // Move the service to another VIP and GUE port.
    let cfg = lb_user::decap::DecapConfig {
        locals: [LOCAL4.parse().unwrap()].into(),
        vips: [NOT_VIP4.parse().unwrap()].into(),
        gue_ports: [GUE_PORT + 1].into(),
    };
    // Added: NOT_VIP4 (as VIP), port+1. Changed: none. Removed: VIP4, VIP6, LOCAL6, GUE_PORT.
    assert_eq!(d.d.maps.sync(&cfg).unwrap(), 6);
    assert_eq!(d.d.maps.config().unwrap(), cfg);
    assert_eq!(
        d.d.maps.sync(&cfg).unwrap(),
        0,
        "a second sync changes nothing"
    );
    expect_untouched(&mut d, &a, DecapReason::PassNotTunnel);
    let (b, b_inner) = frame_for(NOT_VIP4, GUE_PORT + 1);
    expect_decap(&mut d, &b, &b_inner, DecapReason::DecapGue);
    let (c, _) = frame_for(VIP4, GUE_PORT + 1);
    expect_untouched(&mut d, &c, DecapReason::PassNotVip);
}

/// The namespace of the round-trip test: the director's interface, its addresses, and the real
/// server as a permanent neighbour (the director's FIB lookups see them). Removed on drop.
struct RoundTripNs;

const ROUND_TRIP_NS: &str = "xvsdc-roundtrip";

impl RoundTripNs {
    fn new() -> Self {
        xvs_tests::require_root();
        netns::destroy(ROUND_TRIP_NS);
        netns::create(ROUND_TRIP_NS).expect("create namespace");
        let ns = RoundTripNs;
        netns::sh(
            ROUND_TRIP_NS,
            &format!(
                "set -e
                ip link add d0 type veth peer name d1
                ip link set d0 up; ip link set d1 up
                ip addr add {DIRECTOR4}/24 dev d0
                ip addr add {DIRECTOR6}/64 dev d0 nodad
                ip neigh add {LOCAL4} lladdr 02:00:00:00:00:20 dev d0 nud permanent
                ip neigh add {LOCAL6} lladdr 02:00:00:00:00:20 dev d0 nud permanent
                sysctl -qw net.ipv4.conf.all.forwarding=1 net.ipv6.conf.all.forwarding=1"
            ),
        )
        .expect("namespace setup");
        ns
    }
}

impl Drop for RoundTripNs {
    fn drop(&mut self) {
        netns::destroy(ROUND_TRIP_NS);
    }
}

/// The director's TUN output, fed to the decapsulator, gives back the client's packet byte for
/// byte: the two programs agree on every wire format they share.
#[test]
fn the_directors_tunnels_open_in_the_decapsulator() {
    let _ns = RoundTripNs::new();
    netns::in_netns(ROUND_TRIP_NS, || {
        let mut dir = Director::new();
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(c"d0".as_ptr()) };
        assert_ne!(ifindex, 0, "d0 exists");
        let mut dec = decap();
        let tun = |kind, port, csum| ForwardMethod::Tunnel(Tunnel { kind, port, csum });
        let (ipip, gue) = (TunnelKind::Ipip, TunnelKind::Gue);
        // (VIP, service port, real server, forwarding, what the decapsulator counts)
        let cases = [
            (
                VIP4,
                80,
                LOCAL4,
                tun(ipip, 0, false),
                DecapReason::DecapIpip,
            ),
            (
                VIP6,
                80,
                LOCAL4,
                tun(ipip, 0, false),
                DecapReason::Decap6in4,
            ),
            (
                VIP6,
                81,
                LOCAL6,
                tun(ipip, 0, false),
                DecapReason::DecapIp6ip6,
            ),
            (
                VIP4,
                81,
                LOCAL6,
                tun(ipip, 0, false),
                DecapReason::Decap4in6,
            ),
            (
                VIP4,
                82,
                LOCAL4,
                tun(gue, GUE_PORT, false),
                DecapReason::DecapGue,
            ),
            (
                VIP4,
                83,
                LOCAL4,
                tun(gue, GUE_PORT, true),
                DecapReason::DecapGue,
            ),
            (
                VIP6,
                82,
                LOCAL4,
                tun(gue, GUE_PORT, false),
                DecapReason::DecapGue,
            ),
            (
                VIP6,
                83,
                LOCAL6,
                tun(gue, GUE_PORT, false),
                DecapReason::DecapGue,
            ),
            (
                VIP4,
                84,
                LOCAL6,
                tun(gue, GUE_PORT, false),
                DecapReason::DecapGue,
            ),
        ];
        for (vip, port, rs, fwd, reason) in cases {
            let bracket = |a: &str| {
                if a.contains(':') {
                    format!("[{a}]")
                } else {
                    a.into()
                }
            };
            for protocol in [Protocol::Tcp, Protocol::Udp] {
                let key = ServiceKey::Addr {
                    protocol,
                    addr: format!("{}:{port}", bracket(vip)).parse().unwrap(),
                };
                dir.apply(&[
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
            let client = if vip.contains(':') { CLIENT6 } else { CLIENT4 };
            for (l4, payload) in [(L4::Tcp(SYN), &b""[..]), (L4::Udp, &b"query"[..])] {
                let pkt = frame(client, 40000, vip, port, l4, None, payload);
                let (v, tunnelled) = dir.run_on(ifindex, &pkt);
                assert_eq!(
                    v,
                    verdict::TX,
                    "{vip}:{port} via {rs} {fwd:?}: the director tunnels"
                );
                let (v, out) = run_counted(&mut dec, &tunnelled, reason);
                assert_eq!(v, verdict::PASS);
                assert_eq!(
                    out[12..],
                    pkt[12..],
                    "{vip}:{port} via {rs} {fwd:?}: the client's packet comes back whole"
                );
                assert_eq!(
                    out[..12],
                    tunnelled[..12],
                    "the tunnel frame's MACs are kept"
                );
            }
        }
    })
    .expect("test body (see the panic above)");
}
