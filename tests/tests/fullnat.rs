//! FULLNAT forwarding through the real director object (BPF_PROG_TEST_RUN), in a network
//! namespace whose routes and neighbours the program's FIB lookups see. Expected frames are
//! built from scratch by etherparse (both ends translated, checksums computed over the whole
//! packet), so the incremental updates of both addresses and ports are checked against an
//! independent computation: client -> real server from the local address and an allocated
//! port (TCP, UDP, IPv4, IPv6, port mapping), the real server's replies to the local address
//! back to the client from the VIP; the port pool exhausted, refused, counted, and free again
//! once a connection is gone; one port reused toward another real server; replies of no
//! connection.

use std::collections::HashSet;

use lb_common::{config_flags, FlowKey, Reason, FAMILY_V4, PROTO_TCP};
use lb_user::model::{
    Change, ForwardMethod, LocalAddr, PortRange, Protocol, RealServer, Scheduler, ServiceKey,
};
use xvs_tests::{
    packets::{
        frame, icmp_error, keep_quoted_l4_check, quoted, tcp, with_macs, Flags, ACK, L4, SYN,
    },
    progtest::{in_fib_ns, mac_text, real_server, service_key, verdict, Director},
};

const NS: &str = "xvsfnat-prog";
const D0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xd0];
const RS_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x20];
const RS2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x21];
const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
const CLIENT: &str = "192.0.2.1";
const CLIENT6: &str = "2001:db8:1::1";
const VIP: &str = "203.0.113.10";
const VIP6: &str = "2001:db8:10::10";
const RS: &str = "198.51.100.20";
const RS2: &str = "198.51.100.21";
const RS6: &str = "2001:db8:100::20";
/// The local addresses (the director's, on the real servers' segment).
const LIP: &str = "198.51.100.5";
const LIP6: &str = "2001:db8:100::5";

fn in_ns(f: impl FnOnce(&mut Director, u32) + Send + 'static) {
    let script = format!(
        "ip link add d0 address {d0} type veth peer name d1
            for l in d0 d1; do ip link set $l up; done
            ip addr add 198.51.100.1/26 dev d0
            ip addr add {LIP}/26 dev d0
            ip addr add 2001:db8:100::1/64 dev d0 nodad
            ip addr add {LIP6}/64 dev d0 nodad
            ip neigh add {RS} lladdr {rs} dev d0 nud permanent
            ip neigh add {RS2} lladdr {rs2} dev d0 nud permanent
            ip neigh add {RS6} lladdr {rs} dev d0 nud permanent
            ip neigh add 198.51.100.62 lladdr {gw} dev d0 nud permanent
            ip neigh add 2001:db8:100::fe lladdr {gw} dev d0 nud permanent
            ip route add 192.0.2.0/24 via 198.51.100.62
            ip -6 route add 2001:db8:1::/64 via 2001:db8:100::fe
            sysctl -qw net.ipv4.conf.all.forwarding=1 net.ipv6.conf.all.forwarding=1",
        d0 = mac_text(&D0_MAC),
        rs = mac_text(&RS_MAC),
        rs2 = mac_text(&RS2_MAC),
        gw = mac_text(&GW_MAC),
    );
    in_fib_ns(NS, &script, f);
}

fn key(proto: Protocol, vip: &str, port: u16) -> ServiceKey {
    service_key(proto, vip, port)
}

fn fullnat(rs: &str, port: u16) -> RealServer {
    real_server(rs, port, ForwardMethod::FullNat)
}

/// A FULLNAT service with one local address (ports `lo..=hi`) and these real servers, and
/// CONFIG's NAT flag as xvsd sets it.
fn service(d: &mut Director, k: ServiceKey, lip: &str, (lo, hi): (u16, u16), reals: &[RealServer]) {
    let mut changes = vec![
        Change::add_service(k, Scheduler::Rr),
        Change::AddLocalAddr {
            service: k,
            laddr: LocalAddr {
                addr: lip.parse().unwrap(),
                ports: PortRange { lo, hi },
                iface: None,
            },
        },
    ];
    for r in reals {
        changes.push(Change::AddReal {
            service: k,
            real: r.clone(),
        });
    }
    d.apply(&changes);
    let mut c = d.dp.current_config().unwrap();
    c.flags |= config_flags::NAT;
    d.dp.set_config(c).unwrap();
}

/// The source port of a translated frame (IPv4 or IPv6, no VLAN).
fn sport(f: &[u8]) -> u16 {
    let l4 = if f[12..14] == [0x86, 0xdd] {
        14 + 40
    } else {
        14 + 20
    };
    u16::from_be_bytes([f[l4], f[l4 + 1]])
}

const SYN_ACK: Flags = Flags {
    syn: true,
    ack: true,
    fin: false,
    rst: false,
};
const RST: Flags = Flags {
    syn: false,
    ack: false,
    fin: false,
    rst: true,
};

#[test]
fn both_ends_are_translated_both_ways_exact_bytes() {
    in_ns(|d, ifx| {
        use Protocol::{Tcp, Udp};
        // (what, protocol, VIP, VIP port, real server, its port, client, local address, L4)
        type Case<'a> = (
            &'a str,
            Protocol,
            &'a str,
            u16,
            &'a str,
            u16,
            &'a str,
            &'a str,
            L4,
        );
        let cases: &[Case] = &[
            (
                "tcp v4 port map",
                Tcp,
                VIP,
                80,
                RS,
                8080,
                CLIENT,
                LIP,
                L4::Tcp(SYN),
            ),
            ("udp v4", Udp, VIP, 53, RS, 5353, CLIENT, LIP, L4::Udp),
            (
                "tcp v6",
                Tcp,
                VIP6,
                80,
                RS6,
                8080,
                CLIENT6,
                LIP6,
                L4::Tcp(SYN),
            ),
            ("udp v6", Udp, VIP6, 53, RS6, 53, CLIENT6, LIP6, L4::Udp),
        ];
        for (n, &(what, proto, vip, vport, rs, rport, client, lip, l4)) in cases.iter().enumerate()
        {
            service(
                d,
                key(proto, vip, vport),
                lip,
                (20000, 29999),
                &[fullnat(rs, rport)],
            );
            let cport = 40000 + n as u16;
            let payload = b"0123456789abcdef-odd";
            let (v, out) = d.run_on(ifx, &frame(client, cport, vip, vport, l4, None, payload));
            assert_eq!(v, verdict::TX, "{what}: inbound verdict");
            let lport = sport(&out);
            assert!(
                (20000..=29999).contains(&lport),
                "{what}: local port {lport}"
            );
            let want = with_macs(
                frame(lip, lport, rs, rport, l4, None, payload),
                RS_MAC,
                D0_MAC,
            );
            assert_eq!(out, want, "{what}: inbound bytes");
            // The next packet of the connection keeps its local port.
            let (v, again) = d.run_on(ifx, &frame(client, cport, vip, vport, l4, None, payload));
            assert_eq!((v, again), (verdict::TX, want), "{what}: second packet");
            // The real server answers the local address; the client sees the VIP.
            let reply_l4 = match l4 {
                L4::Tcp(_) => L4::Tcp(SYN_ACK),
                L4::Udp => L4::Udp,
            };
            let answer = frame(rs, rport, lip, lport, reply_l4, None, payload);
            let (v, out) = d.run_on(ifx, &answer);
            assert_eq!(v, verdict::TX, "{what}: reply verdict");
            let want = with_macs(
                frame(vip, vport, client, cport, reply_l4, None, payload),
                GW_MAC,
                D0_MAC,
            );
            assert_eq!(out, want, "{what}: reply bytes");
            // The next answer takes this CPU's cached route to the client: the same bytes.
            let (v, again) = d.run_on(ifx, &answer);
            assert_eq!((v, again), (verdict::TX, want), "{what}: second reply");
        }
        assert_eq!(d.reason(Reason::TxFullNat), 8);
        assert_eq!(d.reason(Reason::TxNatReply), 8);
        // Replies have counters of their own (ipvsadm's OutPkts and OutBytes).
        let c = d.dp.service_counters(&key(Udp, VIP6, 53)).unwrap();
        assert_eq!((c.packets, c.out_packets), (2, 2));
        assert_eq!(
            c.out_bytes,
            2 * frame(RS6, 53, LIP6, 0, L4::Udp, None, b"0123456789abcdef-odd").len() as u64
        );
        assert_eq!(d.reason(Reason::DropFullNatNoPort), 0);
    });
}

#[test]
fn an_exhausted_pool_refuses_new_connections_and_recovers_when_one_ends() {
    in_ns(|d, ifx| {
        let k = key(Protocol::Tcp, VIP, 80);
        service(d, k, LIP, (41000, 41003), &[fullnat(RS, 80)]);
        let mut ports = HashSet::new();
        for cport in 50000..50004u16 {
            let (v, out) = d.run_on(ifx, &tcp(CLIENT, cport, VIP, 80, SYN));
            assert_eq!(v, verdict::TX, "connection {cport}");
            assert!(
                ports.insert(sport(&out)),
                "port {} handed out twice",
                sport(&out)
            );
        }
        assert_eq!(ports, (41000..=41003).collect::<HashSet<u16>>());
        // A fifth: refused, counted under its reason and for its service, and not tracked.
        let (v, _) = d.run_on(ifx, &tcp(CLIENT, 50004, VIP, 80, SYN));
        assert_eq!(v, verdict::DROP);
        assert_eq!(d.reason(Reason::DropFullNatNoPort), 1);
        let id = d.dp.service_id(&k).unwrap();
        assert_eq!(d.dp.fullnat_exhausted().unwrap().get(&id), Some(&1));
        let conn = |cport: u16| {
            let mut k = FlowKey {
                sport_be: cport.to_be(),
                dport_be: 80u16.to_be(),
                proto: PROTO_TCP,
                family: FAMILY_V4,
                ..FlowKey::default()
            };
            k.src[..4].copy_from_slice(&[192, 0, 2, 1]);
            k.dst[..4].copy_from_slice(&[203, 0, 113, 10]);
            k
        };
        assert!(d.dp.conn_entry(&conn(50004)).is_none());
        let first = d.dp.conn_entry(&conn(50000)).expect("tracked");
        assert!((41000..=41003).contains(&u16::from_be(first.lport_be)));
        // Its port was written by a re-insert (the SYN's entry stays unreferenced in the LRU),
        // which kept what the entry owes: the client's 2nd and 3rd packets.
        assert_eq!(lb_common::proof_owed(first.state), lb_common::PROOF_NEW);
        assert_eq!(d.reason(Reason::ConnInsertFailed), 0);
        assert_eq!(d.dp.nat_replies().unwrap().len(), 4);
        // The first connection is reset and its entry expires at once (a zero CLOSE timeout):
        // xvsd's sweep removes its way back, which frees its port for the refused client.
        let mut c = d.dp.current_config().unwrap();
        c.tcp_close_timeout_ns = 0;
        d.dp.set_config(c).unwrap();
        let freed = sport(&d.run_on(ifx, &tcp(CLIENT, 50000, VIP, 80, RST)).1);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            // One whole cycle of xvsd's sweep.
            d.dp.sweep_step(usize::MAX).unwrap();
            if d.dp.nat_replies().unwrap().len() == 3 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the reset connection's port stays taken"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let (v, out) = d.run_on(ifx, &tcp(CLIENT, 50004, VIP, 80, SYN));
        assert_eq!(v, verdict::TX);
        assert_eq!(sport(&out), freed);
        // Every other connection kept its port all along.
        for cport in 50001..50004u16 {
            let (v, out) = d.run_on(ifx, &tcp(CLIENT, cport, VIP, 80, ACK));
            assert_eq!(v, verdict::TX);
            assert!(ports.contains(&sport(&out)) && sport(&out) != freed);
        }
    });
}

#[test]
fn one_local_port_serves_connections_to_different_real_servers() {
    in_ns(|d, ifx| {
        // One address, one port: unique per (local address, port, real server, port).
        let k = key(Protocol::Tcp, VIP, 80);
        service(
            d,
            k,
            LIP,
            (42000, 42000),
            &[fullnat(RS, 80), fullnat(RS2, 80)],
        );
        let (v1, a) = d.run_on(ifx, &tcp(CLIENT, 51000, VIP, 80, SYN));
        let (v2, b) = d.run_on(ifx, &tcp(CLIENT, 51001, VIP, 80, SYN));
        assert_eq!((v1, v2), (verdict::TX, verdict::TX));
        assert_eq!((sport(&a), sport(&b)), (42000, 42000));
        assert_ne!(a[..6], b[..6], "two real servers");
        // A third connection would need a second port toward one of them.
        let (v, _) = d.run_on(ifx, &tcp(CLIENT, 51002, VIP, 80, SYN));
        assert_eq!(v, verdict::DROP);
        assert_eq!(d.reason(Reason::DropFullNatNoPort), 1);
    });
}

#[test]
fn replies_of_no_connection_pass_unchanged() {
    in_ns(|d, ifx| {
        service(
            d,
            key(Protocol::Tcp, VIP, 80),
            LIP,
            (43000, 43999),
            &[fullnat(RS, 80)],
        );
        // To the local address from the real server, for a port no connection holds.
        let unknown = tcp(RS, 80, LIP, 43000, SYN_ACK);
        let (v, out) = d.run_on(ifx, &unknown);
        assert_eq!((v, out), (verdict::PASS, unknown.clone()));
        assert_eq!(d.reason(Reason::PassNatReplyUnknown), 1);
        // A connection; then a packet to its local port from an address that is no real
        // server: not even looked up.
        let (v, out) = d.run_on(ifx, &tcp(CLIENT, 52000, VIP, 80, SYN));
        assert_eq!(v, verdict::TX);
        let spoofed = tcp("198.51.100.30", 80, LIP, sport(&out), SYN_ACK);
        let (v, got) = d.run_on(ifx, &spoofed);
        assert_eq!((v, got), (verdict::PASS, spoofed.clone()));
        assert_eq!(d.reason(Reason::PassNatReplyUnknown), 1);
        assert_eq!(d.reason(Reason::PassNotService), 1);
    });
}

#[test]
fn icmp_errors_are_translated_both_ways_both_ends_of_the_quote() {
    in_ns(|d, ifx| {
        service(
            d,
            key(Protocol::Tcp, VIP, 80),
            LIP,
            (44000, 44999),
            &[fullnat(RS, 8080)],
        );
        service(
            d,
            key(Protocol::Tcp, VIP6, 80),
            LIP6,
            (44000, 44999),
            &[fullnat(RS6, 8080)],
        );
        let lport = sport(&d.run_on(ifx, &tcp(CLIENT, 53000, VIP, 80, SYN)).1);
        let lport6 = sport(&d.run_on(ifx, &tcp(CLIENT6, 53001, VIP6, 80, SYN)).1);

        // The path toward the client says "fragmentation needed" about a reply (VIP -> client):
        // the real server gets it from the local address, about what it sent (RIP -> LIP).
        let q = quoted(VIP, 80, CLIENT, 53000, false);
        let rest = [0, 0, 0x05, 0x00];
        let (v, out) = d.run_on(ifx, &icmp_error("192.0.2.254", VIP, 3, 4, rest, &q));
        assert_eq!(v, verdict::TX, "v4 frag needed");
        let want_q = keep_quoted_l4_check(quoted(RS, 8080, LIP, lport, false), &q, false);
        let want = icmp_error(LIP, RS, 3, 4, rest, &want_q);
        assert_eq!(out, with_macs(want, RS_MAC, D0_MAC), "v4 frag needed");
        // IPv6: packet too big (the pseudo-header's two addresses change too).
        let q = quoted(VIP6, 80, CLIENT6, 53001, false);
        let mtu = 1400u32.to_be_bytes();
        let (v, out) = d.run_on(ifx, &icmp_error("2001:db8:1::fe", VIP6, 2, 0, mtu, &q));
        assert_eq!(v, verdict::TX, "v6 packet too big");
        let want_q = keep_quoted_l4_check(quoted(RS6, 8080, LIP6, lport6, false), &q, true);
        let want = icmp_error(LIP6, RS6, 2, 0, mtu, &want_q);
        assert_eq!(out, with_macs(want, RS_MAC, D0_MAC), "v6 packet too big");

        // The real server (or a router on its side) reports a problem with what the director
        // sent it (LIP -> RIP): the client gets it from the VIP, about its own packet.
        let q = quoted(LIP, lport, RS, 8080, false);
        let (v, out) = d.run_on(ifx, &icmp_error(RS, LIP, 3, 4, rest, &q));
        assert_eq!(v, verdict::TX, "v4 from the real server");
        let want_q = keep_quoted_l4_check(quoted(CLIENT, 53000, VIP, 80, false), &q, false);
        let want = icmp_error(VIP, CLIENT, 3, 4, rest, &want_q);
        assert_eq!(
            out,
            with_macs(want, GW_MAC, D0_MAC),
            "v4 from the real server"
        );
        let q = quoted(LIP6, lport6, RS6, 8080, false);
        let (v, out) = d.run_on(ifx, &icmp_error(RS6, LIP6, 2, 0, mtu, &q));
        assert_eq!(v, verdict::TX, "v6 from the real server");
        let want_q = keep_quoted_l4_check(quoted(CLIENT6, 53001, VIP6, 80, false), &q, true);
        let want = icmp_error(VIP6, CLIENT6, 2, 0, mtu, &want_q);
        assert_eq!(
            out,
            with_macs(want, GW_MAC, D0_MAC),
            "v6 from the real server"
        );
        assert_eq!(d.reason(Reason::IcmpErrorForwarded), 4);

        // About a local port no connection holds: the kernel's, unchanged.
        let q = quoted(LIP, 44999, RS, 8080, false);
        let sent = icmp_error(RS, LIP, 3, 4, rest, &q);
        let (v, out) = d.run_on(ifx, &sent);
        assert_eq!((v, out), (verdict::PASS, sent));
    });
}

/// Checks a translated frame with etherparse: its addresses and ports, valid IP and TCP/UDP
/// checksums (computed afresh over the whole packet), and the payload unchanged.
fn assert_translated(f: &[u8], src: &str, sport: u16, dst: &str, dport: u16, payload: &[u8]) {
    use etherparse::{NetHeaders, PacketHeaders, TransportHeader};
    let h = PacketHeaders::from_ethernet_slice(f).expect("a well-formed frame");
    let (s, d): (std::net::IpAddr, std::net::IpAddr) = match h.net.as_ref().expect("IP") {
        NetHeaders::Ipv4(ip, _) => {
            let mut check = ip.clone();
            check.header_checksum = check.calc_header_checksum();
            assert_eq!(
                ip.header_checksum, check.header_checksum,
                "IPv4 header checksum"
            );
            assert!(ip.dont_fragment, "DF on a translated IPv6 packet");
            (ip.source.into(), ip.destination.into())
        }
        NetHeaders::Ipv6(ip, _) => (ip.source.into(), ip.destination.into()),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (s.to_string(), d.to_string()),
        (src.to_string(), dst.to_string())
    );
    assert_eq!(h.payload.slice(), payload, "payload");
    let ports = match (h.net.as_ref().unwrap(), h.transport.as_ref().expect("L4")) {
        (NetHeaders::Ipv4(ip, _), TransportHeader::Tcp(t)) => {
            assert_eq!(
                t.checksum,
                t.calc_checksum_ipv4(ip, payload).unwrap(),
                "TCP checksum"
            );
            (t.source_port, t.destination_port)
        }
        (NetHeaders::Ipv6(ip, _), TransportHeader::Tcp(t)) => {
            assert_eq!(
                t.checksum,
                t.calc_checksum_ipv6(ip, payload).unwrap(),
                "TCP checksum"
            );
            (t.source_port, t.destination_port)
        }
        (NetHeaders::Ipv4(ip, _), TransportHeader::Udp(u)) => {
            assert_eq!(
                u.checksum,
                u.calc_checksum_ipv4(ip, payload).unwrap(),
                "UDP checksum"
            );
            (u.source_port, u.destination_port)
        }
        (NetHeaders::Ipv6(ip, _), TransportHeader::Udp(u)) => {
            assert_eq!(
                u.checksum,
                u.calc_checksum_ipv6(ip, payload).unwrap(),
                "UDP checksum"
            );
            (u.source_port, u.destination_port)
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(ports, (sport, dport));
}

#[test]
fn nat64_an_ipv6_vip_reaches_ipv4_real_servers_and_their_answers_come_back_as_ipv6() {
    in_ns(|d, ifx| {
        use Protocol::{Tcp, Udp};
        for (n, (proto, l4, reply_l4)) in [
            (Tcp, L4::Tcp(SYN), L4::Tcp(SYN_ACK)),
            (Udp, L4::Udp, L4::Udp),
        ]
        .into_iter()
        .enumerate()
        {
            // An IPv6 VIP, an IPv4 real server and local address.
            service(
                d,
                key(proto, VIP6, 80),
                LIP,
                (45000, 45999),
                &[fullnat(RS, 8080)],
            );
            let cport = 54000 + n as u16;
            let payload = b"nat64 payload, odd length";
            let (v, out) = d.run_on(ifx, &frame(CLIENT6, cport, VIP6, 80, l4, None, payload));
            assert_eq!(v, verdict::TX, "{proto:?} inbound");
            assert_eq!(out[..12], with_macs(out.clone(), RS_MAC, D0_MAC)[..12]);
            assert_eq!(out[12..14], [0x08, 0x00], "an IPv4 frame");
            let lport = sport(&out);
            assert!((45000..=45999).contains(&lport));
            assert_translated(&out, LIP, lport, RS, 8080, payload);
            // The IPv4 answer to the local address goes back to the client as IPv6.
            let (v, back) = d.run_on(ifx, &frame(RS, 8080, LIP, lport, reply_l4, None, payload));
            assert_eq!(v, verdict::TX, "{proto:?} reply");
            assert_eq!(back[..6], GW_MAC);
            assert_eq!(back[12..14], [0x86, 0xdd], "an IPv6 frame");
            assert_translated(&back, VIP6, 80, CLIENT6, cport, payload);
        }
        // An IPv4 UDP answer without a checksum cannot become IPv6: dropped and counted.
        let lport = {
            let (_, out) = d.run_on(ifx, &frame(CLIENT6, 54100, VIP6, 80, L4::Udp, None, b"q"));
            sport(&out)
        };
        let mut bare = frame(RS, 8080, LIP, lport, L4::Udp, None, b"a");
        bare[40] = 0;
        bare[41] = 0;
        assert_eq!(d.run_on(ifx, &bare).0, verdict::DROP);
        assert_eq!(d.reason(Reason::DropNat64UdpNoChecksum), 1);
    });
}

#[test]
fn malformed_replies_are_counted_and_never_misforwarded() {
    in_ns(|d, ifx| {
        service(
            d,
            key(Protocol::Tcp, VIP, 80),
            LIP,
            (46000, 46999),
            &[fullnat(RS, 80)],
        );
        let lport = sport(&d.run_on(ifx, &tcp(CLIENT, 55000, VIP, 80, SYN)).1);
        let good = tcp(RS, 80, LIP, lport, SYN_ACK);
        // Cut inside its TCP header (so short of its IP length): dropped before any lookup,
        // counted.
        let (v, _) = d.run_on(ifx, &good[..14 + 20 + 10]);
        assert_eq!(v, verdict::DROP);
        assert_eq!(d.reason(Reason::DropMalformedL3), 1);
        // Its TCP header longer than the IP packet says: the same for L4.
        let mut long = good.clone();
        long[14 + 20 + 12] = 0xf0;
        let (v, _) = d.run_on(ifx, &long);
        assert_eq!(v, verdict::DROP);
        assert_eq!(d.reason(Reason::DropMalformedL4), 1);
        // A fragment (more fragments set): no ports to find its connection by; the kernel's,
        // unchanged.
        let mut frag = good.clone();
        frag[14 + 6] |= 0x20;
        let (v, out) = d.run_on(ifx, &frag);
        assert_eq!((v, out), (verdict::PASS, frag.clone()));
        assert_eq!(d.reason(Reason::PassFragment), 1);
        // A wrong TCP checksum stays wrong by the same amount: the client's stack drops it, as
        // it would have dropped the original (the director never recomputes a checksum over
        // the payload, so it cannot make a damaged packet look sound).
        let mut bad = good.clone();
        bad[14 + 20 + 16] ^= 0x01;
        let (v, out) = d.run_on(ifx, &bad);
        assert_eq!(v, verdict::TX);
        let want = with_macs(tcp(VIP, 80, CLIENT, 55000, SYN_ACK), GW_MAC, D0_MAC);
        assert_eq!(out[..50], want[..50]);
        assert_ne!(
            out[50..52],
            want[50..52],
            "the damage is carried, not repaired"
        );
        assert_eq!(out[52..], want[52..]);
    });
}

/// `translated` (a quoted IP packet) with the L4 checksum of `original`, a quote of the other
/// family or the same: the data plane leaves a quote's TCP/UDP checksum as it was.
fn keep_quoted_check(mut translated: Vec<u8>, original: &[u8], udp: bool) -> Vec<u8> {
    let at = if udp { 6 } else { 16 };
    let ip_len = |q: &[u8]| if q[0] >> 4 == 6 { 40 } else { 20 };
    let (t, o) = (ip_len(&translated) + at, ip_len(original) + at);
    translated[t..t + 2].copy_from_slice(&original[o..o + 2]);
    translated
}

/// The IPv4 header checksum of `h` (20 bytes) computed afresh.
fn fix_ipv4_check(h: &mut [u8]) {
    h[10..12].copy_from_slice(&[0, 0]);
    let mut s: u32 = h
        .chunks(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]) as u32)
        .sum();
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    h[10..12].copy_from_slice(&(!(s as u16)).to_be_bytes());
}

/// An IPv4 frame (no VLAN) without DF: a translated ICMPv4 error of up to 1260 bytes has
/// none (RFC 7915 5.1), etherparse's builder sets it.
fn without_df(mut f: Vec<u8>) -> Vec<u8> {
    f[14 + 6] &= !0x40;
    fix_ipv4_check(&mut f[14..34]);
    f
}

/// A frame (no VLAN) with an 802.1Q tag `tci` after its MACs.
fn with_vlan(mut f: Vec<u8>, tci: u16) -> Vec<u8> {
    let t = tci.to_be_bytes();
    f.splice(12..12, [0x81, 0x00, t[0], t[1]]);
    f
}

/// Checks an ICMP error frame's checksums with etherparse, computed afresh: the ICMP checksum
/// over the whole message (ICMPv6: with its pseudo-header) and, in an ICMPv4 error, the quoted
/// IPv4 header's.
fn assert_icmp_checksums(f: &[u8], what: &str) {
    use etherparse::{Ipv4Header, NetHeaders, PacketHeaders, TransportHeader};
    let h = PacketHeaders::from_ethernet_slice(f).expect("a well-formed frame");
    let payload = h.payload.slice();
    match (
        h.net.as_ref().expect("IP"),
        h.transport.as_ref().expect("ICMP"),
    ) {
        (NetHeaders::Ipv4(ip, _), TransportHeader::Icmpv4(icmp)) => {
            assert_eq!(
                ip.header_checksum,
                ip.calc_header_checksum(),
                "{what}: IPv4 header checksum"
            );
            assert_eq!(
                icmp.checksum,
                icmp.icmp_type.calc_checksum(payload),
                "{what}: ICMPv4 checksum"
            );
            let (q, _) = Ipv4Header::from_slice(payload).expect("a quoted IPv4 header");
            assert_eq!(
                q.header_checksum,
                q.calc_header_checksum(),
                "{what}: quoted IPv4 header checksum"
            );
        }
        (NetHeaders::Ipv6(ip, _), TransportHeader::Icmpv6(icmp)) => {
            let want = icmp
                .icmp_type
                .calc_checksum(ip.source, ip.destination, payload)
                .unwrap();
            assert_eq!(icmp.checksum, want, "{what}: ICMPv6 checksum");
            assert!(
                f.len() - 14 <= 1280,
                "{what}: longer than IPv6's 1280 bytes"
            );
        }
        other => panic!("{what}: {other:?}"),
    }
}

/// A router on the real servers' side (the director's gateway there) and on the clients' side.
const ROUTER4: &str = "198.51.100.62";
const ROUTER6: &str = "2001:db8:1::fe";

#[test]
fn nat64_icmp_errors_are_translated_to_the_other_family_both_ways() {
    in_ns(|d, ifx| {
        service(
            d,
            key(Protocol::Tcp, VIP6, 80),
            LIP,
            (47000, 47999),
            &[fullnat(RS, 8080)],
        );
        service(
            d,
            key(Protocol::Udp, VIP6, 53),
            LIP,
            (47000, 47999),
            &[fullnat(RS, 5353)],
        );
        let lport = sport(&d.run_on(ifx, &tcp(CLIENT6, 56000, VIP6, 80, SYN)).1);
        let (_, out) = d.run_on(ifx, &frame(CLIENT6, 56001, VIP6, 53, L4::Udp, None, b"q"));
        let lport_u = sport(&out);

        // IPv4 -> IPv6: the real server or a router on its side reports a problem with what
        // the director sent it (LIP -> RIP); the client gets an ICMPv6 error from the VIP about
        // its own packet (CIP6 -> VIP6), the quote 20 bytes longer.
        // (what, error's source, type, code, rest, UDP, ICMPv6 type, code, rest)
        type Case<'a> = (&'a str, &'a str, u8, u8, [u8; 4], bool, u8, u8, [u8; 4]);
        let v4_cases: &[Case] = &[
            (
                "frag needed",
                ROUTER4,
                3,
                4,
                [0, 0, 0x05, 0x78],
                false,
                2,
                0,
                1420u32.to_be_bytes(),
            ),
            (
                "frag needed, small MTU",
                ROUTER4,
                3,
                4,
                [0, 0, 0x02, 0x40],
                false,
                2,
                0,
                1280u32.to_be_bytes(),
            ),
            ("port unreachable", RS, 3, 3, [0; 4], true, 1, 4, [0; 4]),
            (
                "host unreachable",
                ROUTER4,
                3,
                1,
                [0; 4],
                false,
                1,
                0,
                [0; 4],
            ),
            (
                "admin prohibited",
                ROUTER4,
                3,
                13,
                [0; 4],
                true,
                1,
                1,
                [0; 4],
            ),
            (
                "protocol unreachable",
                RS,
                3,
                2,
                [0; 4],
                true,
                4,
                1,
                [0, 0, 0, 6],
            ),
            ("time exceeded", ROUTER4, 11, 0, [0; 4], false, 3, 0, [0; 4]),
        ];
        for &(what, from, ty, code, rest, udp, ty6, code6, rest6) in v4_cases {
            let (lp, rport, cport, vport) = if udp {
                (lport_u, 5353, 56001, 53)
            } else {
                (lport, 8080, 56000, 80)
            };
            let mut q = quoted(LIP, lp, RS, rport, udp);
            if ty == 11 {
                // It expired on the way: its TTL becomes the quote's hop limit.
                q[8] = 1;
                fix_ipv4_check(&mut q[..20]);
            }
            let (v, out) = d.run_on(ifx, &icmp_error(from, LIP, ty, code, rest, &q));
            assert_eq!(v, verdict::TX, "{what}");
            let mut want_q = keep_quoted_check(quoted(CLIENT6, cport, VIP6, vport, udp), &q, udp);
            if ty == 11 {
                want_q[7] = 1;
            }
            let want = icmp_error(VIP6, CLIENT6, ty6, code6, rest6, &want_q);
            assert_eq!(out, with_macs(want, GW_MAC, D0_MAC), "{what}");
            assert_icmp_checksums(&out, what);
        }

        // IPv6 -> IPv4: the client's path reports a problem with a reply (VIP6 -> CIP6); the
        // real server gets an ICMPv4 error from the local address about what it sent
        // (RIP -> LIP), the quote 20 bytes shorter.
        let v6_cases: &[Case] = &[
            (
                "packet too big",
                ROUTER6,
                2,
                0,
                1400u32.to_be_bytes(),
                false,
                3,
                4,
                [0, 0, 0x05, 0x64],
            ),
            ("no route", ROUTER6, 1, 0, [0; 4], false, 3, 1, [0; 4]),
            (
                "admin prohibited",
                ROUTER6,
                1,
                1,
                [0; 4],
                false,
                3,
                10,
                [0; 4],
            ),
            (
                "port unreachable",
                CLIENT6,
                1,
                4,
                [0; 4],
                true,
                3,
                3,
                [0; 4],
            ),
            ("time exceeded", ROUTER6, 3, 0, [0; 4], false, 11, 0, [0; 4]),
        ];
        for &(what, from, ty, code, rest, udp, ty4, code4, rest4) in v6_cases {
            let (lp, rport, cport, vport) = if udp {
                (lport_u, 5353, 56001, 53)
            } else {
                (lport, 8080, 56000, 80)
            };
            let mut q = quoted(VIP6, vport, CLIENT6, cport, udp);
            if ty == 3 {
                q[7] = 1;
            }
            let (v, out) = d.run_on(ifx, &icmp_error(from, VIP6, ty, code, rest, &q));
            assert_eq!(v, verdict::TX, "{what}");
            let mut want_q = keep_quoted_check(quoted(RS, rport, LIP, lp, udp), &q, udp);
            if ty == 3 {
                want_q[8] = 1;
                fix_ipv4_check(&mut want_q[..20]);
            }
            let want = without_df(icmp_error(LIP, RS, ty4, code4, rest4, &want_q));
            assert_eq!(out, with_macs(want, RS_MAC, D0_MAC), "{what}");
            assert_icmp_checksums(&out, what);
        }
        assert_eq!(d.reason(Reason::TxNatReply), 7);
        assert_eq!(d.reason(Reason::TxNat), 5);

        // A VLAN tag stays, in front of the other family's headers.
        let q = quoted(LIP, lport, RS, 8080, false);
        let rest = [0, 0, 0x05, 0x78];
        let (v, out) = d.run_on(ifx, &with_vlan(icmp_error(ROUTER4, LIP, 3, 4, rest, &q), 7));
        assert_eq!(v, verdict::TX, "VLAN, to IPv6");
        let want_q = keep_quoted_check(quoted(CLIENT6, 56000, VIP6, 80, false), &q, false);
        let want = icmp_error(VIP6, CLIENT6, 2, 0, 1420u32.to_be_bytes(), &want_q);
        assert_eq!(
            out,
            with_vlan(with_macs(want, GW_MAC, D0_MAC), 7),
            "VLAN, to IPv6"
        );
        let q = quoted(VIP6, 80, CLIENT6, 56000, false);
        let sent = with_vlan(icmp_error(ROUTER6, VIP6, 1, 0, [0; 4], &q), 7);
        let (v, out) = d.run_on(ifx, &sent);
        assert_eq!(v, verdict::TX, "VLAN, to IPv4");
        let want_q = keep_quoted_check(quoted(RS, 8080, LIP, lport, false), &q, false);
        let want = without_df(icmp_error(LIP, RS, 3, 1, [0; 4], &want_q));
        assert_eq!(
            out,
            with_vlan(with_macs(want, RS_MAC, D0_MAC), 7),
            "VLAN, to IPv4"
        );
        assert_eq!(d.reason(Reason::DropNat64IcmpUntranslatable), 0);
    });
}

#[test]
fn nat64_icmp_errors_without_a_translation_are_dropped_and_counted() {
    in_ns(|d, ifx| {
        service(
            d,
            key(Protocol::Tcp, VIP6, 80),
            LIP,
            (48000, 48999),
            &[fullnat(RS, 8080)],
        );
        let lport = sport(&d.run_on(ifx, &tcp(CLIENT6, 57000, VIP6, 80, SYN)).1);
        let q4 = quoted(LIP, lport, RS, 8080, false);
        let q6 = quoted(VIP6, 80, CLIENT6, 57000, false);
        let mut untranslatable = 0;
        // Source quench, host precedence violation (RFC 7915: silently dropped); an IPv6
        // unreachable code with no IPv4 counterpart (source address failed policy).
        for sent in [
            icmp_error(RS, LIP, 4, 0, [0; 4], &q4),
            icmp_error(ROUTER4, LIP, 3, 14, [0; 4], &q4),
            icmp_error(ROUTER6, VIP6, 1, 5, [0; 4], &q6),
        ] {
            let (v, _) = d.run_on(ifx, &sent);
            assert_eq!(v, verdict::DROP);
            untranslatable += 1;
            assert_eq!(
                d.reason(Reason::DropNat64IcmpUntranslatable),
                untranslatable
            );
        }
        // An IPv4 error whose ICMPv6 form would pass IPv6's 1280 bytes: not cut (that would
        // mean summing what is cut off), dropped.
        let long = frame(LIP, lport, RS, 8080, L4::Tcp(ACK), None, &[9u8; 1200])[14..].to_vec();
        let (v, _) = d.run_on(ifx, &icmp_error(ROUTER4, LIP, 3, 4, [0, 0, 5, 0], &long));
        assert_eq!(v, verdict::DROP);
        assert_eq!(d.reason(Reason::DropNat64IcmpUntranslatable), 4);
        // A quote that ends inside the quoted ports: no connection to find, the kernel's,
        // unchanged, in both families.
        for sent in [
            icmp_error(RS, LIP, 3, 3, [0; 4], &q4[..22]),
            icmp_error(ROUTER6, VIP6, 1, 4, [0; 4], &q6[..42]),
        ] {
            let (v, out) = d.run_on(ifx, &sent);
            assert_eq!((v, out), (verdict::PASS, sent));
        }
        assert_eq!(d.reason(Reason::PassIcmp), 2);
        // A quote cut after 8 bytes of TCP (RFC 792's minimum): translated, as short, and its
        // length fields still say the original packet's.
        let (v, out) = d.run_on(ifx, &icmp_error(RS, LIP, 3, 3, [0; 4], &q4[..28]));
        assert_eq!(v, verdict::TX);
        let want_q = quoted(CLIENT6, 57000, VIP6, 80, false)[..48].to_vec();
        let want = icmp_error(VIP6, CLIENT6, 1, 4, [0; 4], &want_q);
        assert_eq!(out, with_macs(want, GW_MAC, D0_MAC));
        assert_icmp_checksums(&out, "short quote, to IPv6");
        let (v, out) = d.run_on(ifx, &icmp_error(ROUTER6, VIP6, 1, 4, [0; 4], &q6[..48]));
        assert_eq!(v, verdict::TX);
        let want_q = quoted(RS, 8080, LIP, lport, false)[..28].to_vec();
        let want = without_df(icmp_error(LIP, RS, 3, 3, [0; 4], &want_q));
        assert_eq!(out, with_macs(want, RS_MAC, D0_MAC));
        assert_icmp_checksums(&out, "short quote, to IPv4");
        assert_eq!(d.reason(Reason::DropNat64IcmpUntranslatable), 4);
    });
}
