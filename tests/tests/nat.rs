//! NAT forwarding through the real director object (BPF_PROG_TEST_RUN), in a network namespace
//! whose routes and neighbours the program's FIB lookups see. Every expected frame is built
//! from scratch by etherparse (addresses and ports already translated, checksums computed over
//! the whole packet), so the data plane's incremental checksum updates are checked against an
//! independent computation: client -> real server (port mapping, TCP, UDP with and without a
//! checksum, IPv4 and IPv6), the real server's replies back from the VIP, replies that belong
//! to no connection, a real server behind another interface, mixed forwarding methods.

use lb_common::{config_flags, ConnState, FlowKey, Reason, FAMILY_V4, PROTO_TCP};
use lb_user::model::{
    Change, ForwardMethod, Persistence, Protocol, RealServer, Scheduler, ServiceKey,
};
use xvs_tests::{
    packets::{
        frame, icmp_error, keep_quoted_l4_check, quoted, tcp, udp, with_macs, Flags, ACK, L4, SYN,
    },
    progtest::{in_fib_ns, mac_text, real_server, service_key, verdict, Director},
};

const NS: &str = "xvsnat-prog";
/// The director's interfaces in the namespace, and their MACs.
const D0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xd0];
const D2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xd2];
/// An on-link real server's MAC, the router's (toward clients), the second arm's server's.
const RS_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x20];
const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
const RS2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x82];
const CLIENT: &str = "192.0.2.1";
const CLIENT6: &str = "2001:db8:1::1";
const VIP: &str = "203.0.113.10";
const VIP6: &str = "2001:db8:10::10";
const RS: &str = "198.51.100.20";
const RS6: &str = "2001:db8:100::20";
/// A real server behind the second interface d2 (two arms).
const RS_D2: &str = "198.51.100.130";

/// Runs `f` with a director loaded in this test's namespace (its routes and neighbours below)
/// and d0's ifindex.
fn in_ns(f: impl FnOnce(&mut Director, u32) + Send + 'static) {
    let script = format!(
        "ip link add d0 address {d0} type veth peer name d1
            ip link add d2 address {d2} type veth peer name d3 address {rs2}
            for l in d0 d1 d2 d3; do ip link set $l up; done
            ip addr add 198.51.100.1/26 dev d0
            ip addr add 2001:db8:100::1/64 dev d0 nodad
            ip addr add 198.51.100.129/26 dev d2
            ip neigh add {RS} lladdr {rs} dev d0 nud permanent
            ip neigh add {RS6} lladdr {rs} dev d0 nud permanent
            ip neigh add 198.51.100.62 lladdr {gw} dev d0 nud permanent
            ip neigh add 2001:db8:100::fe lladdr {gw} dev d0 nud permanent
            ip neigh add {RS_D2} lladdr {rs2} dev d2 nud permanent
            ip route add 192.0.2.0/24 via 198.51.100.62
            ip -6 route add 2001:db8:1::/64 via 2001:db8:100::fe
            sysctl -qw net.ipv4.conf.all.forwarding=1 net.ipv6.conf.all.forwarding=1",
        d0 = mac_text(&D0_MAC),
        d2 = mac_text(&D2_MAC),
        rs = mac_text(&RS_MAC),
        rs2 = mac_text(&RS2_MAC),
        gw = mac_text(&GW_MAC),
    );
    in_fib_ns(NS, &script, f);
}

fn key(proto: Protocol, vip: &str, port: u16) -> ServiceKey {
    service_key(proto, vip, port)
}

fn real(rs: &str, port: u16, forward: ForwardMethod) -> RealServer {
    real_server(rs, port, forward)
}

/// A service with NAT real servers (address, port), and CONFIG's NAT flag as xvsd sets it.
fn nat_service(d: &mut Director, proto: Protocol, vip: &str, vport: u16, reals: &[(&str, u16)]) {
    let k = key(proto, vip, vport);
    let mut changes = vec![Change::add_service(k, Scheduler::Rr)];
    for (rs, port) in reals {
        changes.push(Change::AddReal {
            service: k,
            real: real(rs, *port, ForwardMethod::Nat),
        });
    }
    d.apply(&changes);
    nat_on(d);
}

fn nat_on(d: &mut Director) {
    let mut c = d.dp.current_config().unwrap();
    c.flags |= config_flags::NAT;
    d.dp.set_config(c).unwrap();
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
fn client_packets_reach_the_real_server_and_replies_come_back_from_the_vip_exact_bytes() {
    in_ns(|d, ifx| {
        use Protocol::{Tcp, Udp};
        // (what, protocol, VIP, VIP port, real server, its port, client, L4)
        type Case<'a> = (&'a str, Protocol, &'a str, u16, &'a str, u16, &'a str, L4);
        let cases: &[Case] = &[
            (
                "tcp v4 port map",
                Tcp,
                VIP,
                80,
                RS,
                8080,
                CLIENT,
                L4::Tcp(SYN),
            ),
            ("udp v4", Udp, VIP, 53, RS, 5353, CLIENT, L4::Udp),
            ("tcp v6", Tcp, VIP6, 80, RS6, 8080, CLIENT6, L4::Tcp(SYN)),
            ("udp v6", Udp, VIP6, 53, RS6, 53, CLIENT6, L4::Udp),
        ];
        for (n, &(what, proto, vip, vport, rs, rport, client, l4)) in cases.iter().enumerate() {
            nat_service(d, proto, vip, vport, &[(rs, rport)]);
            let cport = 40000 + n as u16;
            let payload = b"0123456789abcdef-odd";
            let sent = frame(client, cport, vip, vport, l4, None, payload);
            let (v, out) = d.run_on(ifx, &sent);
            assert_eq!(v, verdict::TX, "{what}: inbound verdict");
            let want = with_macs(
                frame(client, cport, rs, rport, l4, None, payload),
                RS_MAC,
                D0_MAC,
            );
            assert_eq!(out, want, "{what}: inbound bytes");
            // The real server answers from its own address and port; the client sees the VIP.
            let reply_l4 = match l4 {
                L4::Tcp(_) => L4::Tcp(SYN_ACK),
                L4::Udp => L4::Udp,
            };
            let answer = frame(rs, rport, client, cport, reply_l4, None, payload);
            let (v, out) = d.run_on(ifx, &answer);
            assert_eq!(v, verdict::TX, "{what}: reply verdict");
            let want = with_macs(
                frame(vip, vport, client, cport, reply_l4, None, payload),
                GW_MAC,
                D0_MAC,
            );
            assert_eq!(out, want, "{what}: reply bytes");
        }
        assert_eq!(d.reason(Reason::TxNat), 4);
        assert_eq!(d.reason(Reason::TxNatReply), 4);
    });
}

#[test]
fn a_udp_datagram_without_checksum_keeps_none_both_ways() {
    in_ns(|d, ifx| {
        nat_service(d, Protocol::Udp, VIP, 53, &[(RS, 5353)]);
        let zero = |mut f: Vec<u8>| {
            // UDP checksum: Ethernet 14 + IPv4 20 + 6.
            f[40] = 0;
            f[41] = 0;
            f
        };
        let (v, out) = d.run_on(ifx, &zero(udp(CLIENT, 40000, VIP, 53, b"q")));
        assert_eq!(v, verdict::TX);
        let want = zero(with_macs(
            udp(CLIENT, 40000, RS, 5353, b"q"),
            RS_MAC,
            D0_MAC,
        ));
        assert_eq!(out, want);
        let (v, out) = d.run_on(ifx, &zero(udp(RS, 5353, CLIENT, 40000, b"a")));
        assert_eq!(v, verdict::TX);
        let want = zero(with_macs(udp(VIP, 53, CLIENT, 40000, b"a"), GW_MAC, D0_MAC));
        assert_eq!(out, want);
    });
}

#[test]
fn replies_of_no_known_connection_pass_unchanged_and_are_counted() {
    in_ns(|d, ifx| {
        nat_service(d, Protocol::Tcp, VIP, 80, &[(RS, 8080)]);
        // From the real server's port, but to a client that never connected.
        let unknown = tcp(RS, 8080, CLIENT, 41000, SYN_ACK);
        let (v, out) = d.run_on(ifx, &unknown);
        assert_eq!((v, out), (verdict::PASS, unknown.clone()));
        assert_eq!(d.reason(Reason::PassNatReplyUnknown), 1);
        // From another port of the real server, or from an address that is no real server:
        // not even looked up.
        for other in [
            tcp(RS, 22, CLIENT, 41000, ACK),
            tcp("198.51.100.21", 8080, CLIENT, 41000, ACK),
        ] {
            let (v, out) = d.run_on(ifx, &other);
            assert_eq!((v, out), (verdict::PASS, other.clone()));
        }
        assert_eq!(d.reason(Reason::PassNatReplyUnknown), 1);
        assert_eq!(d.reason(Reason::PassNotService), 2);

        // A connection, then its real server removed: its replies are no longer translated.
        let (v, _) = d.run_on(ifx, &tcp(CLIENT, 41001, VIP, 80, SYN));
        assert_eq!(v, verdict::TX);
        let reply = tcp(RS, 8080, CLIENT, 41001, SYN_ACK);
        assert_eq!(d.run_on(ifx, &reply).0, verdict::TX);
        d.apply(&[Change::DeleteReal {
            service: key(Protocol::Tcp, VIP, 80),
            addr: format!("{RS}:8080").parse().unwrap(),
        }]);
        let (v, out) = d.run_on(ifx, &reply);
        assert_eq!((v, out), (verdict::PASS, reply.clone()));
        // No NAT real server has that address and port any more: not even looked up.
        assert_eq!(d.reason(Reason::PassNotService), 3);
        // Added again, it is another real server (a new slot generation): the old connection's
        // replies are still not its.
        d.apply(&[Change::AddReal {
            service: key(Protocol::Tcp, VIP, 80),
            real: real(RS, 8080, ForwardMethod::Nat),
        }]);
        let (v, out) = d.run_on(ifx, &reply);
        assert_eq!((v, out), (verdict::PASS, reply.clone()));
        assert_eq!(d.reason(Reason::PassNatReplyUnknown), 2);
    });
}

#[test]
fn the_connection_state_follows_both_directions() {
    in_ns(|d, ifx| {
        nat_service(d, Protocol::Tcp, VIP, 80, &[(RS, 8080)]);
        // The state, and the client packets the entry still owes before it may stay referenced
        // in the LRU (the proof rule: replies pay nothing).
        let conn = |d: &Director| {
            let mut k = FlowKey {
                sport_be: 42000u16.to_be(),
                dport_be: 80u16.to_be(),
                proto: PROTO_TCP,
                family: FAMILY_V4,
                ..FlowKey::default()
            };
            k.src[..4].copy_from_slice(&[192, 0, 2, 1]);
            k.dst[..4].copy_from_slice(&[203, 0, 113, 10]);
            let state = d.dp.conn_entry(&k).expect("tracked").state;
            (ConnState::from_u8(state), lb_common::proof_owed(state))
        };
        d.run_on(ifx, &tcp(CLIENT, 42000, VIP, 80, SYN));
        assert_eq!(conn(d), (ConnState::SynRecv, 2));
        d.run_on(ifx, &tcp(RS, 8080, CLIENT, 42000, SYN_ACK));
        assert_eq!(conn(d), (ConnState::SynRecv, 2));
        d.run_on(ifx, &tcp(CLIENT, 42000, VIP, 80, ACK));
        assert_eq!(conn(d), (ConnState::Established, 1));
        d.run_on(ifx, &tcp(RS, 8080, CLIENT, 42000, ACK));
        assert_eq!(conn(d), (ConnState::Established, 1));
        d.run_on(ifx, &tcp(CLIENT, 42000, VIP, 80, ACK));
        assert_eq!(conn(d), (ConnState::Established, 0));
        // The real server resets: the connection closes, as IPVS's NAT state machine has it.
        let (v, _) = d.run_on(ifx, &tcp(RS, 8080, CLIENT, 42000, RST));
        assert_eq!(v, verdict::TX);
        assert_eq!(conn(d), (ConnState::Close, 0));
        assert_eq!(d.reason(Reason::ConnInsertFailed), 0);
    });
}

#[test]
fn a_real_server_behind_another_interface_is_reached_by_redirect() {
    in_ns(|d, ifx| {
        nat_service(d, Protocol::Tcp, VIP, 80, &[(RS_D2, 80)]);
        let (v, out) = d.run_on(ifx, &tcp(CLIENT, 43000, VIP, 80, SYN));
        assert_eq!(v, verdict::REDIRECT);
        assert_eq!(
            out,
            with_macs(tcp(CLIENT, 43000, RS_D2, 80, SYN), RS2_MAC, D2_MAC)
        );
        assert_eq!(d.reason(Reason::RedirectNat), 1);
        // Its reply arrives on d2 and leaves by d0 toward the client's router.
        // SAFETY: a NUL-terminated name.
        let d2 = unsafe { libc::if_nametoindex(c"d2".as_ptr()) };
        let (v, out) = d.run_on(d2, &tcp(RS_D2, 80, CLIENT, 43000, SYN_ACK));
        assert_eq!(v, verdict::REDIRECT);
        assert_eq!(
            out,
            with_macs(tcp(VIP, 80, CLIENT, 43000, SYN_ACK), GW_MAC, D0_MAC)
        );
        assert_eq!(d.reason(Reason::RedirectNat), 2);
    });
}

#[test]
fn one_service_mixes_direct_routing_and_nat_real_servers() {
    in_ns(|d, ifx| {
        let k = key(Protocol::Tcp, VIP, 80);
        d.mac("198.51.100.21", [0x02, 0, 0, 0, 0, 0x21]);
        d.apply(&[
            Change::add_service(k, Scheduler::Rr),
            Change::AddReal {
                service: k,
                real: real(RS, 8080, ForwardMethod::Nat),
            },
            Change::AddReal {
                service: k,
                real: real("198.51.100.21", 80, ForwardMethod::Dr),
            },
        ]);
        nat_on(d);
        let mut dr = 0;
        let mut nat = 0;
        for cport in 44000..44010u16 {
            let sent = tcp(CLIENT, cport, VIP, 80, SYN);
            let (v, out) = d.run_on(ifx, &sent);
            assert_eq!(v, verdict::TX);
            if out
                == with_macs(
                    sent.clone(),
                    [0x02, 0, 0, 0, 0, 0x21],
                    sent[..6].try_into().unwrap(),
                )
            {
                dr += 1;
            } else {
                assert_eq!(
                    out,
                    with_macs(tcp(CLIENT, cport, RS, 8080, SYN), RS_MAC, D0_MAC)
                );
                nat += 1;
            }
        }
        assert_eq!((dr, nat), (5, 5), "rr alternates between the two methods");
    });
}

#[test]
fn an_all_ports_service_keeps_the_clients_port_for_a_port_zero_real_server() {
    in_ns(|d, ifx| {
        let k = key(Protocol::Tcp, VIP, 0);
        d.apply(&[
            Change::AddService {
                key: k,
                scheduler: Scheduler::Rr,
                flags: Default::default(),
                persistence: Some(Persistence {
                    timeout: 300,
                    prefix: 32,
                }),
            },
            Change::AddReal {
                service: k,
                real: real(RS, 0, ForwardMethod::Nat),
            },
        ]);
        nat_on(d);
        let (v, out) = d.run_on(ifx, &tcp(CLIENT, 45000, VIP, 443, SYN));
        assert_eq!(v, verdict::TX);
        assert_eq!(
            out,
            with_macs(tcp(CLIENT, 45000, RS, 443, SYN), RS_MAC, D0_MAC)
        );
        let (v, out) = d.run_on(ifx, &tcp(RS, 443, CLIENT, 45000, SYN_ACK));
        assert_eq!(v, verdict::TX);
        assert_eq!(
            out,
            with_macs(tcp(VIP, 443, CLIENT, 45000, SYN_ACK), GW_MAC, D0_MAC)
        );
    });
}

#[test]
fn a_next_hop_without_a_known_mac_gets_the_translated_packet_through_the_kernel() {
    in_ns(|d, ifx| {
        nat_service(d, Protocol::Tcp, VIP, 80, &[(RS, 8080)]);
        // A client on d0's own network whose MAC the namespace has not learnt.
        let client = "198.51.100.30";
        let (v, out) = d.run_on(ifx, &tcp(client, 46000, VIP, 80, SYN));
        assert_eq!(v, verdict::TX);
        assert_eq!(
            out,
            with_macs(tcp(client, 46000, RS, 8080, SYN), RS_MAC, D0_MAC)
        );
        let answer = tcp(RS, 8080, client, 46000, SYN_ACK);
        let (v, out) = d.run_on(ifx, &answer);
        // Passed translated (the kernel forwards it and resolves the client), MACs untouched.
        assert_eq!(v, verdict::PASS);
        let mut want = tcp(VIP, 80, client, 46000, SYN_ACK);
        want[..12].copy_from_slice(&answer[..12]);
        assert_eq!(out, want);
        assert_eq!(d.reason(Reason::PassNatNoNeighbor), 1);
    });
}

#[test]
fn icmp_errors_are_translated_both_ways_inner_headers_included() {
    in_ns(|d, ifx| {
        nat_service(d, Protocol::Tcp, VIP, 80, &[(RS, 8080)]);
        nat_service(d, Protocol::Udp, VIP, 53, &[(RS, 5353)]);
        nat_service(d, Protocol::Tcp, VIP6, 80, &[(RS6, 8080)]);
        d.run_on(ifx, &tcp(CLIENT, 47000, VIP, 80, SYN));
        d.run_on(ifx, &udp(CLIENT, 47001, VIP, 53, b"q"));
        d.run_on(ifx, &tcp(CLIENT6, 47002, VIP6, 80, SYN));

        // The path toward the client says "fragmentation needed" about a reply (quoted from the
        // VIP): the real server gets it from its own address and port.
        let q = quoted(VIP, 80, CLIENT, 47000, false);
        let sent = icmp_error("192.0.2.254", VIP, 3, 4, [0, 0, 0x05, 0x00], &q);
        let (v, out) = d.run_on(ifx, &sent);
        assert_eq!(v, verdict::TX, "v4 frag needed");
        let want_q = keep_quoted_l4_check(quoted(RS, 8080, CLIENT, 47000, false), &q, false);
        let want = icmp_error("192.0.2.254", RS, 3, 4, [0, 0, 0x05, 0x00], &want_q);
        assert_eq!(out, with_macs(want, RS_MAC, D0_MAC), "v4 frag needed");
        // The same in IPv6 (packet too big: the pseudo-header's destination changes too).
        let q = quoted(VIP6, 80, CLIENT6, 47002, false);
        let mtu = 1400u32.to_be_bytes();
        let sent = icmp_error("2001:db8:1::fe", VIP6, 2, 0, mtu, &q);
        let (v, out) = d.run_on(ifx, &sent);
        assert_eq!(v, verdict::TX, "v6 packet too big");
        let want_q = keep_quoted_l4_check(quoted(RS6, 8080, CLIENT6, 47002, false), &q, true);
        let want = icmp_error("2001:db8:1::fe", RS6, 2, 0, mtu, &want_q);
        assert_eq!(out, with_macs(want, RS_MAC, D0_MAC), "v6 packet too big");

        // The real server says "port unreachable" about the client's datagram: the client gets
        // it from the VIP, about a datagram to the VIP.
        let q = quoted(CLIENT, 47001, RS, 5353, true);
        let sent = icmp_error(RS, CLIENT, 3, 3, [0; 4], &q);
        let (v, out) = d.run_on(ifx, &sent);
        assert_eq!(v, verdict::TX, "v4 port unreachable");
        let mut want_q = quoted(CLIENT, 47001, VIP, 53, true);
        // The quoted UDP checksum is the original's too.
        want_q[26..28].copy_from_slice(&q[26..28]);
        let want = icmp_error(VIP, CLIENT, 3, 3, [0; 4], &want_q);
        assert_eq!(out, with_macs(want, GW_MAC, D0_MAC), "v4 port unreachable");
        assert_eq!(d.reason(Reason::IcmpErrorForwarded), 3);

        // About a connection the director does not know: the kernel's, unchanged.
        let q = quoted(CLIENT, 47999, RS, 5353, true);
        let sent = icmp_error(RS, CLIENT, 3, 3, [0; 4], &q);
        let (v, out) = d.run_on(ifx, &sent);
        assert_eq!((v, out), (verdict::PASS, sent));
    });
}

#[test]
fn a_connections_way_back_is_removed_once_the_connection_is_gone() {
    in_ns(|d, ifx| {
        nat_service(d, Protocol::Tcp, VIP, 80, &[(RS, 8080)]);
        // Flow A established, flow B half-open.
        d.run_on(ifx, &tcp(CLIENT, 48000, VIP, 80, SYN));
        d.run_on(ifx, &tcp(CLIENT, 48000, VIP, 80, ACK));
        d.run_on(ifx, &tcp(CLIENT, 48001, VIP, 80, SYN));
        assert_eq!(d.dp.nat_replies().unwrap().len(), 2);
        // Half-open connections now expire at once: B is gone, A lives.
        let mut c = d.dp.current_config().unwrap();
        c.tcp_syn_timeout_ns = 1;
        d.dp.set_config(c).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            // One whole cycle of xvsd's sweep.
            d.dp.sweep_step(usize::MAX).unwrap();
            let left = d.dp.nat_replies().unwrap();
            if left.len() == 1 {
                assert_eq!(
                    u16::from_be(left[0].0.dport_be),
                    48000,
                    "A's way back stays"
                );
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "B's way back stays: {left:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // A's replies are still translated.
        let (v, _) = d.run_on(ifx, &tcp(RS, 8080, CLIENT, 48000, ACK));
        assert_eq!(v, verdict::TX);
    });
}
