//! Program tests: crafted packets through the real director object with BPF_PROG_TEST_RUN,
//! exact output bytes and verdicts asserted, map state inspected. Root required.

use lb_common::{DataplaneConfig, Reason};
use lb_user::model::{
    Change, Persistence, Protocol, RealServer, SchedFlags, Scheduler, ServiceKey, VirtualAddr,
};
use xvs_tests::{
    packets::{self, frame, tcp, udp, Flags, ACK, DIRECTOR_MAC, FIN_ACK, L4, RST, SYN},
    progtest::{verdict, Director},
};

const RS1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
const RS2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x12];

fn key(proto: Protocol, addr: &str) -> ServiceKey {
    ServiceKey::Addr {
        protocol: proto,
        addr: addr.parse().unwrap(),
    }
}

fn add_service(d: &mut Director, k: ServiceKey, s: Scheduler, reals: &[(&str, u32)]) {
    add_service_with(d, Change::add_service(k, s), reals);
}

/// Adds the service of `add` (an AddService change) and its real servers, in one transaction.
fn add_service_with(d: &mut Director, add: Change, reals: &[(&str, u32)]) {
    let Change::AddService { key: k, .. } = add else {
        panic!("not an AddService: {add:?}")
    };
    let mut changes = vec![add];
    for (a, w) in reals {
        changes.push(Change::AddReal {
            service: k,
            real: RealServer::dr(a.parse().unwrap(), *w),
        });
    }
    d.apply(&changes);
}

/// Standard director: v4 and v6, TCP and UDP services, each with one real server.
fn director() -> Director {
    let mut d = Director::new();
    d.mac("198.51.100.11", RS1_MAC);
    d.mac("198.51.100.12", RS2_MAC);
    d.mac("2001:db8:1::11", RS1_MAC);
    d.mac("2001:db8:1::12", RS2_MAC);
    add_service(
        &mut d,
        key(Protocol::Tcp, "203.0.113.10:80"),
        Scheduler::Rr,
        &[("198.51.100.11:80", 1)],
    );
    add_service(
        &mut d,
        key(Protocol::Udp, "203.0.113.10:53"),
        Scheduler::Rr,
        &[("198.51.100.11:53", 1)],
    );
    add_service(
        &mut d,
        key(Protocol::Tcp, "[2001:db8:10::10]:80"),
        Scheduler::Rr,
        &[("[2001:db8:1::11]:80", 1)],
    );
    add_service(
        &mut d,
        key(Protocol::Udp, "[2001:db8:10::10]:53"),
        Scheduler::Rr,
        &[("[2001:db8:1::11]:53", 1)],
    );
    d
}

/// The DR rewrite: only the Ethernet addresses change; our MAC becomes the source.
fn expect_dr(input: &[u8], output: &[u8], rs_mac: [u8; 6]) {
    let mut expected = input.to_vec();
    expected[0..6].copy_from_slice(&rs_mac);
    expected[6..12].copy_from_slice(&DIRECTOR_MAC);
    assert_eq!(output, &expected[..], "DR output bytes");
}

#[test]
fn dr_rewrite_exact_bytes_v4_v6_tcp_udp_vlan() {
    let mut d = director();
    let cases = [
        ("v4 tcp", tcp("192.0.2.1", 40000, "203.0.113.10", 80, SYN)),
        (
            "v4 udp",
            udp("192.0.2.1", 40000, "203.0.113.10", 53, b"query"),
        ),
        (
            "v6 tcp",
            tcp("2001:db8:2::1", 40000, "2001:db8:10::10", 80, SYN),
        ),
        (
            "v6 udp",
            udp("2001:db8:2::1", 40000, "2001:db8:10::10", 53, b"query"),
        ),
        (
            "v4 tcp vlan",
            frame(
                "192.0.2.1",
                40001,
                "203.0.113.10",
                80,
                L4::Tcp(SYN),
                Some(42),
                b"x",
            ),
        ),
        (
            "v6 udp vlan",
            frame(
                "2001:db8:2::1",
                40001,
                "2001:db8:10::10",
                53,
                L4::Udp,
                Some(42),
                b"x",
            ),
        ),
        (
            "v4 tcp data",
            frame(
                "192.0.2.1",
                40002,
                "203.0.113.10",
                80,
                L4::Tcp(ACK),
                None,
                &[7u8; 1400],
            ),
        ),
    ];
    for (name, pkt) in &cases {
        let (v, out) = d.run(pkt);
        assert_eq!(v, verdict::TX, "{name}: verdict");
        expect_dr(pkt, &out, RS1_MAC);
    }
    assert_eq!(d.reason(Reason::TxDr), cases.len() as u64);
    assert_eq!(d.reason(Reason::ConnNew), cases.len() as u64);
    let svc =
        d.dp.service_counters(&key(Protocol::Tcp, "203.0.113.10:80"))
            .unwrap();
    assert_eq!((svc.conns, svc.packets), (3, 3));
    let rs =
        d.dp.backend_counters(
            &key(Protocol::Tcp, "203.0.113.10:80"),
            "198.51.100.11:80".parse().unwrap(),
        )
        .unwrap();
    assert_eq!(rs.packets, 3);
    assert_eq!(
        rs.bytes,
        (cases[0].1.len() + cases[4].1.len() + cases[6].1.len()) as u64
    );
}

#[test]
fn non_service_traffic_passes_untouched_and_is_counted() {
    let mut d = director();
    let icmp = {
        let mut out = Vec::new();
        etherparse::PacketBuilder::ethernet2(packets::CLIENT_MAC, DIRECTOR_MAC)
            .ipv4([192, 0, 2, 1], [203, 0, 113, 10], 64)
            .icmpv4_echo_request(1, 1)
            .write(&mut out, b"ping")
            .unwrap();
        out
    };
    let mut arp = vec![0xffu8; 6];
    arp.extend_from_slice(&packets::CLIENT_MAC);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    let mut frag = tcp("192.0.2.1", 40000, "203.0.113.10", 80, SYN);
    frag[14 + 6] = 0x20; // MF
    let mut ext = tcp("2001:db8:2::1", 40000, "2001:db8:10::10", 80, SYN);
    ext[14 + 6] = 60; // next header: destination options
    let mut qinq = frame(
        "192.0.2.1",
        1,
        "203.0.113.10",
        80,
        L4::Tcp(SYN),
        Some(5),
        b"",
    );
    qinq[16..18].copy_from_slice(&[0x81, 0x00]);
    let cases: Vec<(&str, Vec<u8>, Reason)> = vec![
        (
            "other VIP",
            tcp("192.0.2.1", 40000, "203.0.113.99", 80, SYN),
            Reason::PassNotService,
        ),
        (
            "other port",
            tcp("192.0.2.1", 40000, "203.0.113.10", 443, SYN),
            Reason::PassNotService,
        ),
        (
            "udp on tcp port",
            udp("192.0.2.1", 40000, "203.0.113.10", 80, b""),
            Reason::PassNotService,
        ),
        (
            "v6 other VIP",
            tcp("2001:db8:2::1", 1, "2001:db8:10::99", 80, SYN),
            Reason::PassNotService,
        ),
        ("icmp (echo, no tracked flow)", icmp, Reason::PassIcmp),
        ("arp", arp, Reason::PassNonIp),
        ("fragment", frag, Reason::PassFragment),
        ("v6 ext header", ext, Reason::PassIpv6ExtHeader),
        ("qinq", qinq, Reason::PassStackedVlan),
    ];
    for (name, pkt, reason) in &cases {
        let before = d.reason(*reason);
        let (v, out) = d.run(pkt);
        assert_eq!(v, verdict::PASS, "{name}: verdict");
        assert_eq!(&out, pkt, "{name}: bytes must be untouched");
        assert_eq!(
            d.reason(*reason),
            before + 1,
            "{name}: counted as {reason:?}"
        );
    }
    assert_eq!(d.reason(Reason::TxDr), 0);
}

#[test]
fn frames_to_another_hosts_mac_pass_once_the_interface_is_described() {
    let mut d = director();
    // The loopback interface (ifindex 1 in every namespace) stands for the attached one.
    const LO: u32 = 1;
    const VLAN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x42];
    let to = |mac: [u8; 6], sport: u16| {
        let mut f = tcp("192.0.2.1", sport, "203.0.113.10", 80, SYN);
        f[0..6].copy_from_slice(&mac);
        f
    };
    let stranger = to([0x02, 0, 0, 0, 0, 0x99], 40001);
    // Not described yet: every frame is the director's, as before xvsd writes LINK_MACS.
    assert_eq!(d.run_on(LO, &stranger).0, verdict::TX);
    let plan = lb_user::station::plan(&[(LO, vec![DIRECTOR_MAC, VLAN_MAC])].into());
    assert_eq!(
        d.dp.set_link_macs(&plan.slots).expect("LINK_MACS written"),
        1
    );
    let (tx_before, passed_before) = (d.reason(Reason::TxDr), d.reason(Reason::PassNotService));
    let stranger = to([0x02, 0, 0, 0, 0, 0x99], 40002);
    let (v, out) = d.run_on(LO, &stranger);
    assert_eq!(v, verdict::PASS, "another host's frame goes to the kernel");
    assert_eq!(out, stranger, "untouched");
    assert_eq!(d.reason(Reason::PassNotOurMac), 1);
    assert_eq!(d.reason(Reason::TxDr), tx_before, "not forwarded");
    assert_eq!(d.reason(Reason::PassNotService), passed_before);
    // A MAC differing only in its last byte, or only in its first, is another host's too.
    for mac in [[0x02, 0, 0, 0, 0, 0x03], [0x06, 0, 0, 0, 0, 0x02]] {
        assert_eq!(d.run_on(LO, &to(mac, 40003)).0, verdict::PASS, "{mac:02x?}");
    }
    assert_eq!(d.reason(Reason::PassNotOurMac), 3);
    // The interface's own address, a stacked link's and a group address are balanced.
    for (mac, sport) in [
        (DIRECTOR_MAC, 40004),
        (VLAN_MAC, 40005),
        ([0xff; 6], 40006),
        ([0x01, 0x00, 0x5e, 0, 0, 1], 40007),
    ] {
        assert_eq!(d.run_on(LO, &to(mac, sport)).0, verdict::TX, "{mac:02x?}");
    }
    assert_eq!(d.reason(Reason::TxDr), tx_before + 4);
    // Emptied again (xvsd's plan without the interface): nothing filtered.
    d.dp.set_link_macs(&Default::default())
        .expect("LINK_MACS emptied");
    assert_eq!(
        d.run_on(LO, &to([0x02, 0, 0, 0, 0, 0x99], 40008)).0,
        verdict::TX
    );
    assert_eq!(d.reason(Reason::PassNotOurMac), 3);
}

#[test]
fn malformed_packets_are_dropped_and_counted() {
    let mut d = director();
    let good = tcp("192.0.2.1", 40000, "203.0.113.10", 80, SYN);
    let good6 = tcp("2001:db8:2::1", 40000, "2001:db8:10::10", 80, SYN);
    let mut short_vlan = good[..14].to_vec();
    short_vlan[12..14].copy_from_slice(&[0x81, 0x00]);
    short_vlan.extend_from_slice(&[0, 5]);
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x44;
    let mut bad_version = good.clone();
    bad_version[14] = 0x65;
    let mut big_ihl = good[..14 + 20].to_vec(); // IHL 15 claims 60 bytes, only 20 present
    big_ihl[14] = 0x4f;
    let mut bad_doff = good.clone();
    bad_doff[14 + 20 + 12] = 0x40;
    // Lengths the headers state that the packet does not have (the kernel drops these before
    // IPVS sees them).
    let mut long_doff = good.clone();
    long_doff[14 + 20 + 12] = 0xf0; // 60 bytes of TCP header in a 40-byte IP packet
    let set16 = |mut f: Vec<u8>, at: usize, v: u16| {
        f[at..at + 2].copy_from_slice(&v.to_be_bytes());
        f
    };
    let ip_len = good.len() - 14;
    let udp53 = udp("192.0.2.1", 1, "203.0.113.10", 53, b"abcd");
    let cases: Vec<(&str, Vec<u8>, Reason)> = vec![
        ("vlan tag cut", short_vlan, Reason::DropTruncatedL2),
        (
            "ipv4 header cut",
            good[..14 + 10].to_vec(),
            Reason::DropMalformedL3,
        ),
        ("ipv4 ihl 4", bad_ihl, Reason::DropMalformedL3),
        ("ipv4 version 6", bad_version, Reason::DropMalformedL3),
        ("ipv4 options beyond end", big_ihl, Reason::DropMalformedL3),
        (
            "ipv6 header cut",
            good6[..14 + 30].to_vec(),
            Reason::DropMalformedL3,
        ),
        (
            "ipv4 cut short of its total length",
            good[..14 + 20 + 10].to_vec(),
            Reason::DropMalformedL3,
        ),
        (
            "ipv4 total length past the frame",
            set16(good.clone(), 14 + 2, ip_len as u16 + 1),
            Reason::DropMalformedL3,
        ),
        (
            "ipv4 total length inside its header",
            set16(good.clone(), 14 + 2, 19),
            Reason::DropMalformedL3,
        ),
        (
            "ipv6 cut short of its payload length",
            good6[..14 + 40 + 8].to_vec(),
            Reason::DropMalformedL3,
        ),
        (
            "tcp header cut inside the ip packet",
            set16(good.clone(), 14 + 2, 20 + 10),
            Reason::DropMalformedL4,
        ),
        ("tcp doff 4", bad_doff, Reason::DropMalformedL4),
        (
            "tcp doff past the ip packet",
            long_doff,
            Reason::DropMalformedL4,
        ),
        (
            "udp length 4",
            set16(udp53.clone(), 14 + 20 + 4, 4),
            Reason::DropMalformedL4,
        ),
        (
            "udp length past the ip packet",
            set16(udp53.clone(), 14 + 20 + 4, 8 + 5),
            Reason::DropMalformedL4,
        ),
        (
            "ipv6 tcp header cut inside the payload",
            set16(good6.clone(), 14 + 4, 8),
            Reason::DropMalformedL4,
        ),
    ];
    for (name, pkt, reason) in &cases {
        let before = d.reason(*reason);
        let (v, _) = d.run(pkt);
        assert_eq!(v, verdict::DROP, "{name}: verdict");
        assert_eq!(
            d.reason(*reason),
            before + 1,
            "{name}: counted as {reason:?}"
        );
    }
    assert_eq!(d.reason(Reason::TxDr), 0, "nothing malformed was forwarded");
    // The program still works afterwards, and Ethernet padding after the IP packet (a short
    // frame padded to 60 bytes) is no error.
    assert_eq!(d.run(&good).0, verdict::TX);
    let mut padded = udp("192.0.2.1", 2, "203.0.113.10", 53, b"");
    padded.resize(60, 0);
    assert_eq!(d.run(&padded).0, verdict::TX);
}

#[test]
fn established_flow_keeps_its_real_server_through_changes() {
    let mut d = Director::new();
    d.mac("198.51.100.11", RS1_MAC);
    d.mac("198.51.100.12", RS2_MAC);
    let k = key(Protocol::Tcp, "203.0.113.10:80");
    add_service(
        &mut d,
        k,
        Scheduler::Rr,
        &[("198.51.100.11:80", 1), ("198.51.100.12:80", 1)],
    );
    // Find a flow that went to RS1.
    let mut sport = 50000;
    let a = loop {
        let pkt = tcp("192.0.2.1", sport, "203.0.113.10", 80, SYN);
        let (v, out) = d.run(&pkt);
        assert_eq!(v, verdict::TX);
        if out[0..6] == RS1_MAC {
            break sport;
        }
        sport += 1;
    };
    // Quiesce RS1: new flows go to RS2 only, the established flow stays on RS1.
    d.apply(&[Change::EditReal {
        service: k,
        addr: "198.51.100.11:80".parse().unwrap(),
        weight: Some(0),
        forward: None,
        u_threshold: None,
        l_threshold: None,
        check: None,
    }]);
    for i in 0..10 {
        let (_, out) = d.run(&tcp("192.0.2.1", a, "203.0.113.10", 80, ACK));
        assert_eq!(
            out[0..6],
            RS1_MAC,
            "established flow moved after quiescing (packet {i})"
        );
        let (_, out) = d.run(&tcp("192.0.2.2", 60000 + i, "203.0.113.10", 80, SYN));
        assert_eq!(out[0..6], RS2_MAC, "new flow went to the quiesced server");
    }
    // The scheduler changes too; the flow still stays.
    d.apply(&[Change::EditService {
        key: k,
        scheduler: Some(Scheduler::Wrr),
        flags: None,
        persistence: None,
    }]);
    let (_, out) = d.run(&tcp("192.0.2.1", a, "203.0.113.10", 80, ACK));
    assert_eq!(out[0..6], RS1_MAC);
    // Removing RS1 ends its flows: the next packet is rescheduled onto RS2.
    let resched = d.reason(Reason::ConnRescheduled);
    d.apply(&[Change::DeleteReal {
        service: k,
        addr: "198.51.100.11:80".parse().unwrap(),
    }]);
    let (_, out) = d.run(&tcp("192.0.2.1", a, "203.0.113.10", 80, ACK));
    assert_eq!(
        out[0..6],
        RS2_MAC,
        "a deleted real server still got traffic"
    );
    assert_eq!(d.reason(Reason::ConnRescheduled), resched + 1);
    // Re-adding a server that reuses the slot does not revive old entries' binding.
    let entry_backend =
        d.dp.conn_entry(&flow_key("192.0.2.1", a, "203.0.113.10", 80))
            .expect("entry")
            .backend;
    assert_eq!(
        Some(entry_backend),
        d.dp.backend_id(&k, "198.51.100.12:80".parse().unwrap())
    );
}

fn flow_key(src: &str, sport: u16, dst: &str, dport: u16) -> lb_common::FlowKey {
    let (s, family) = lb_user::dataplane::addr_bytes(src.parse().unwrap());
    let (dd, _) = lb_user::dataplane::addr_bytes(dst.parse().unwrap());
    lb_common::FlowKey {
        src: s,
        dst: dd,
        sport_be: sport.to_be(),
        dport_be: dport.to_be(),
        proto: lb_common::PROTO_TCP,
        family,
        _pad: [0; 2],
    }
}

#[test]
fn wrr_one_to_three_in_the_data_plane() {
    let mut d = Director::new();
    d.mac("198.51.100.11", RS1_MAC);
    d.mac("198.51.100.12", RS2_MAC);
    let k = key(Protocol::Tcp, "203.0.113.10:80");
    add_service(
        &mut d,
        k,
        Scheduler::Wrr,
        &[("198.51.100.11:80", 1), ("198.51.100.12:80", 3)],
    );
    let mut rs1 = 0;
    for i in 0..400u16 {
        let (v, out) = d.run(&tcp("192.0.2.1", 1000 + i, "203.0.113.10", 80, SYN));
        assert_eq!(v, verdict::TX);
        if out[0..6] == RS1_MAC {
            rs1 += 1;
        }
    }
    // One CPU walks IPVS's 1:3 cycle exactly.
    assert_eq!(rs1, 100);
    let counts = d.dp.conn_counts().unwrap();
    let inactive: u64 = counts.values().map(|c| c.inactive).sum();
    assert_eq!(inactive, 400, "400 half-open connections are InActConn");
}

#[test]
fn expired_entries_are_rescheduled_and_state_tracked() {
    let mut d = director();
    let syn = tcp("192.0.2.1", 40000, "203.0.113.10", 80, SYN);
    let ack = tcp("192.0.2.1", 40000, "203.0.113.10", 80, ACK);
    d.run(&syn);
    d.run(&ack);
    let counts = d.dp.conn_counts().unwrap();
    assert_eq!(
        counts.values().map(|c| c.active).sum::<u64>(),
        1,
        "ESTABLISHED is ActiveConn"
    );
    let fin = tcp(
        "192.0.2.1",
        40000,
        "203.0.113.10",
        80,
        Flags {
            fin: true,
            ack: true,
            ..Default::default()
        },
    );
    d.run(&fin);
    let counts = d.dp.conn_counts().unwrap();
    assert_eq!(counts.values().map(|c| c.active).sum::<u64>(), 0);
    assert_eq!(
        counts.values().map(|c| c.inactive).sum::<u64>(),
        1,
        "FIN_WAIT is InActConn"
    );
    // A new SYN on a closing entry is a new connection.
    let before = d.reason(Reason::ConnRescheduled);
    d.run(&syn);
    assert_eq!(d.reason(Reason::ConnRescheduled), before + 1);
    // With a zero UDP timeout every UDP packet finds its entry expired.
    d.dp.set_config(DataplaneConfig {
        udp_timeout_ns: 0,
        ..Default::default()
    })
    .unwrap();
    let q = udp("192.0.2.1", 40000, "203.0.113.10", 53, b"q");
    d.run(&q);
    // The data plane's clock is coarse (one tick): poll until a tick has passed.
    let before = d.reason(Reason::ConnRescheduled);
    xvs_tests::poll(std::time::Duration::from_secs(1), "a clock tick", || {
        assert_eq!(d.run(&q).0, verdict::TX);
        (d.reason(Reason::ConnRescheduled) > before).then_some(())
    })
    .unwrap();
}

#[test]
fn midflow_packets_of_unknown_connections_are_counted_per_service() {
    let mut d = director();
    let web = key(Protocol::Tcp, "203.0.113.10:80");
    let id = d.dp.service_id(&web).unwrap();
    let misses = |d: &Director| d.dp.midflow_misses().unwrap().get(&id).copied();
    // A connection's opening SYN, and the rest of it: no miss.
    d.run(&tcp("192.0.2.1", 40001, "203.0.113.10", 80, SYN));
    d.run(&tcp("192.0.2.1", 40001, "203.0.113.10", 80, ACK));
    assert_eq!(d.reason(Reason::ConnMidflowMiss), 0);
    // An ACK, a FIN and a RST of connections the table never had: each scheduled like a SYN
    // (forwarded), and counted as a possible move.
    let fin = FIN_ACK;
    let rst = RST;
    for (port, flags) in [(40002, ACK), (40003, fin), (40004, rst)] {
        let (v, _) = d.run(&tcp("192.0.2.1", port, "203.0.113.10", 80, flags));
        assert_eq!(v, verdict::TX, "{flags:?}");
    }
    assert_eq!(d.reason(Reason::ConnMidflowMiss), 3);
    assert_eq!(misses(&d), Some(3));
    // Its entry now exists: the next ACK of that connection is a hit, not a miss.
    d.run(&tcp("192.0.2.1", 40002, "203.0.113.10", 80, ACK));
    assert_eq!(d.reason(Reason::ConnMidflowMiss), 3);
    // UDP has no connection opening: never a mid-flow miss. Other services count apart.
    d.run(&udp("192.0.2.1", 40005, "203.0.113.10", 53, b"q"));
    d.run(&tcp("2001:db8::1", 40006, "2001:db8:10::10", 80, ACK));
    assert_eq!(d.reason(Reason::ConnMidflowMiss), 4);
    assert_eq!(misses(&d), Some(3));
    // Each recomputation period measures the table: live entries from the live counts, all
    // entries from the sweep's cycle (one step covers this small table).
    let (config, macs) = (d.config.clone(), d.macs.clone());
    d.dp.recompute(&config, &macs).unwrap();
    let fill = d.dp.table_fill();
    assert_eq!((fill.entries, fill.live), (6, 6), "{fill:?}");
    // -Z zeroes the service's misses; the reason counter stays (as every reason).
    d.dp.zero_service_counters(&web).unwrap();
    assert_eq!(misses(&d), None);
    assert_eq!(d.reason(Reason::ConnMidflowMiss), 4);
}

#[test]
fn service_without_usable_server_drops_and_counts() {
    let mut d = Director::new();
    let k = key(Protocol::Tcp, "203.0.113.10:80");
    // A real server whose MAC is unknown takes no connections.
    add_service(&mut d, k, Scheduler::Rr, &[("198.51.100.11:80", 1)]);
    let (v, _) = d.run(&tcp("192.0.2.1", 1, "203.0.113.10", 80, SYN));
    assert_eq!(v, verdict::DROP);
    assert_eq!(d.reason(Reason::DropNoBackend), 1);
    d.mac("198.51.100.11", RS1_MAC);
    d.dp.sync(&d.config.clone(), &d.macs.clone()).unwrap();
    assert_eq!(
        d.run(&tcp("192.0.2.1", 1, "203.0.113.10", 80, SYN)).0,
        verdict::TX
    );
    // Deleting the service makes its VIP ordinary traffic again.
    d.apply(&[Change::DeleteService { key: k }]);
    assert_eq!(
        d.run(&tcp("192.0.2.1", 1, "203.0.113.10", 80, ACK)).0,
        verdict::PASS
    );
}

/// Which real server (by MAC) a packet went to.
fn dest_of(d: &mut Director, pkt: &[u8]) -> [u8; 6] {
    let (v, out) = d.run(pkt);
    assert_eq!(v, verdict::TX, "not forwarded");
    out[0..6].try_into().unwrap()
}

fn persistent_service(
    d: &mut Director,
    k: ServiceKey,
    s: Scheduler,
    timeout: u32,
    prefix: u8,
    reals: &[(&str, u32)],
) {
    add_service_with(
        d,
        Change::AddService {
            key: k,
            scheduler: s,
            flags: Default::default(),
            persistence: Some(Persistence { timeout, prefix }),
        },
        reals,
    );
}

fn two_reals_director() -> Director {
    let mut d = Director::new();
    d.mac("198.51.100.11", RS1_MAC);
    d.mac("198.51.100.12", RS2_MAC);
    d.mac("2001:db8:1::11", RS1_MAC);
    d.mac("2001:db8:1::12", RS2_MAC);
    d
}

#[test]
fn persistence_keeps_a_client_and_netmask_groups_clients() {
    let mut d = two_reals_director();
    // rr would alternate; persistence must not.
    persistent_service(
        &mut d,
        key(Protocol::Tcp, "203.0.113.10:80"),
        Scheduler::Rr,
        300,
        32,
        &[("198.51.100.11:80", 1), ("198.51.100.12:80", 1)],
    );
    let first = dest_of(&mut d, &tcp("192.0.2.1", 1000, "203.0.113.10", 80, SYN));
    for sport in 1001..1020 {
        assert_eq!(
            dest_of(&mut d, &tcp("192.0.2.1", sport, "203.0.113.10", 80, SYN)),
            first,
            "a new connection of the same client left its template (sport {sport})"
        );
    }
    assert_eq!(d.reason(Reason::PersistNew), 1);
    assert_eq!(d.reason(Reason::PersistHit), 19);
    // Without grouping, other clients are scheduled (rr alternates): both servers get some.
    let mut seen = std::collections::HashSet::new();
    for i in 2..10 {
        seen.insert(dest_of(
            &mut d,
            &tcp(&format!("192.0.2.{i}"), 2000, "203.0.113.10", 80, SYN),
        ));
    }
    assert_eq!(
        seen.len(),
        2,
        "per-client persistence must still balance clients"
    );

    // -M 255.255.255.0: every client of 192.0.2.0/24 follows the first one.
    let mut d = two_reals_director();
    persistent_service(
        &mut d,
        key(Protocol::Tcp, "203.0.113.10:80"),
        Scheduler::Rr,
        300,
        24,
        &[("198.51.100.11:80", 1), ("198.51.100.12:80", 1)],
    );
    let first = dest_of(&mut d, &tcp("192.0.2.1", 1000, "203.0.113.10", 80, SYN));
    for i in 2..30 {
        assert_eq!(
            dest_of(
                &mut d,
                &tcp(&format!("192.0.2.{i}"), 1000, "203.0.113.10", 80, SYN)
            ),
            first,
            "client 192.0.2.{i} is in the same /24"
        );
    }
    // Another /24 is a different template: over a few networks both servers are used.
    let mut seen = std::collections::HashSet::new();
    for net in 0..6 {
        seen.insert(dest_of(
            &mut d,
            &tcp(&format!("198.18.{net}.1"), 1000, "203.0.113.10", 80, SYN),
        ));
    }
    assert_eq!(seen.len(), 2);

    // IPv6 with a /64 mask.
    let mut d = two_reals_director();
    persistent_service(
        &mut d,
        key(Protocol::Tcp, "[2001:db8:10::10]:80"),
        Scheduler::Rr,
        300,
        64,
        &[("[2001:db8:1::11]:80", 1), ("[2001:db8:1::12]:80", 1)],
    );
    let first = dest_of(
        &mut d,
        &tcp("2001:db8:2::1", 1000, "2001:db8:10::10", 80, SYN),
    );
    for i in 2..20 {
        assert_eq!(
            dest_of(
                &mut d,
                &tcp(
                    &format!("2001:db8:2::{i:x}"),
                    1000,
                    "2001:db8:10::10",
                    80,
                    SYN
                )
            ),
            first
        );
    }
}

#[test]
fn persistence_template_expires_and_follows_deleted_not_quiesced_servers() {
    let mut d = two_reals_director();
    let k = key(Protocol::Tcp, "203.0.113.10:80");
    persistent_service(
        &mut d,
        k,
        Scheduler::Rr,
        1,
        32,
        &[("198.51.100.11:80", 1), ("198.51.100.12:80", 1)],
    );
    let first = dest_of(&mut d, &tcp("192.0.2.1", 1000, "203.0.113.10", 80, SYN));
    let other = if first == RS1_MAC { RS2_MAC } else { RS1_MAC };
    let first_ip = if first == RS1_MAC {
        "198.51.100.11:80"
    } else {
        "198.51.100.12:80"
    };
    // Quiesced: the template still binds the client (IPVS keeps persistent clients on a
    // quiesced server until the template expires).
    d.apply(&[Change::EditReal {
        service: k,
        addr: first_ip.parse().unwrap(),
        weight: Some(0),
        forward: None,
        u_threshold: None,
        l_threshold: None,
        check: None,
    }]);
    assert_eq!(
        dest_of(&mut d, &tcp("192.0.2.1", 1001, "203.0.113.10", 80, SYN)),
        first
    );
    // After the 1 s timeout without new connections, the client is scheduled afresh (onto the
    // only server with weight). Waiting out a timeout is the behaviour under test.
    std::thread::sleep(std::time::Duration::from_millis(1300));
    assert_eq!(
        dest_of(&mut d, &tcp("192.0.2.1", 1002, "203.0.113.10", 80, SYN)),
        other
    );
    // Deleted: a template pointing at a removed server is not used.
    d.apply(&[Change::EditReal {
        service: k,
        addr: first_ip.parse().unwrap(),
        weight: Some(1),
        forward: None,
        u_threshold: None,
        l_threshold: None,
        check: None,
    }]);
    let other_ip = if first == RS1_MAC {
        "198.51.100.12:80"
    } else {
        "198.51.100.11:80"
    };
    d.apply(&[Change::DeleteReal {
        service: k,
        addr: other_ip.parse().unwrap(),
    }]);
    assert_eq!(
        dest_of(&mut d, &tcp("192.0.2.1", 1003, "203.0.113.10", 80, SYN)),
        first
    );
}

#[test]
fn port_zero_service_takes_every_port_of_the_vip() {
    let mut d = two_reals_director();
    persistent_service(
        &mut d,
        key(Protocol::Tcp, "203.0.113.20:0"),
        Scheduler::Rr,
        300,
        32,
        &[("198.51.100.11:0", 1), ("198.51.100.12:0", 1)],
    );
    // A port service on the same VIP wins over the port-0 one.
    add_service(
        &mut d,
        key(Protocol::Tcp, "203.0.113.20:25"),
        Scheduler::Rr,
        &[("198.51.100.12:25", 1)],
    );
    let first = dest_of(&mut d, &tcp("192.0.2.1", 1000, "203.0.113.20", 80, SYN));
    for port in [443, 8080, 22, 65535] {
        assert_eq!(
            dest_of(&mut d, &tcp("192.0.2.1", 1000, "203.0.113.20", port, SYN)),
            first,
            "port {port}: one client, all ports, one server (persistent port-0 service)"
        );
    }
    for i in 0..4 {
        assert_eq!(
            dest_of(
                &mut d,
                &tcp(
                    &format!("192.0.2.{}", 50 + i),
                    1000,
                    "203.0.113.20",
                    25,
                    SYN
                )
            ),
            RS2_MAC
        );
    }
    // UDP to the same VIP is not the TCP service's.
    let before = d.reason(Reason::PassNotService);
    let (v, _) = d.run(&udp("192.0.2.1", 1000, "203.0.113.20", 80, b"x"));
    assert_eq!(v, verdict::PASS);
    assert_eq!(d.reason(Reason::PassNotService), before + 1);
}

#[test]
fn hash_schedulers_place_flows_by_their_hash() {
    // sh: a client stays on one server across source ports; sh-port spreads one client.
    let mut d = two_reals_director();
    add_service(
        &mut d,
        key(Protocol::Tcp, "203.0.113.10:80"),
        Scheduler::Sh,
        &[("198.51.100.11:80", 1), ("198.51.100.12:80", 1)],
    );
    let mut clients = std::collections::HashSet::new();
    for i in 1..40 {
        let src = format!("192.0.2.{i}");
        let first = dest_of(&mut d, &tcp(&src, 1000, "203.0.113.10", 80, SYN));
        clients.insert(first);
        for sport in 1001..1005 {
            assert_eq!(
                dest_of(&mut d, &tcp(&src, sport, "203.0.113.10", 80, SYN)),
                first
            );
        }
    }
    assert_eq!(clients.len(), 2, "sh spreads clients over both servers");
    let mut d = two_reals_director();
    add_service_with(
        &mut d,
        Change::AddService {
            key: key(Protocol::Tcp, "203.0.113.10:80"),
            scheduler: Scheduler::Sh,
            flags: SchedFlags::parse("sh-port").unwrap(),
            persistence: None,
        },
        &[("198.51.100.11:80", 1), ("198.51.100.12:80", 1)],
    );
    let seen: std::collections::HashSet<_> = (1000..1040)
        .map(|sport| dest_of(&mut d, &tcp("192.0.2.1", sport, "203.0.113.10", 80, SYN)))
        .collect();
    assert_eq!(seen.len(), 2, "sh-port spreads one client's ports");
    // mh: same client, same server; a quiesced server's clients move, nobody else's.
    let mut d = two_reals_director();
    let k = key(Protocol::Tcp, "203.0.113.10:80");
    add_service(
        &mut d,
        k,
        Scheduler::Mh,
        &[("198.51.100.11:80", 1), ("198.51.100.12:80", 1)],
    );
    let before: Vec<[u8; 6]> = (1..60)
        .map(|i| {
            dest_of(
                &mut d,
                &tcp(&format!("192.0.2.{i}"), 1000, "203.0.113.10", 80, SYN),
            )
        })
        .collect();
    assert!(before.contains(&RS1_MAC) && before.contains(&RS2_MAC));
    for (i, b) in (1..60).zip(&before) {
        assert_eq!(
            dest_of(
                &mut d,
                &tcp(&format!("192.0.2.{i}"), 2000, "203.0.113.10", 80, SYN)
            ),
            *b
        );
    }
}

#[test]
fn service_group_shares_persistence_and_counters_across_its_matches() {
    let mut d = two_reals_director();
    let g = ServiceKey::fwmark(1, false);
    let m80: VirtualAddr = "tcp:203.0.113.10:80".parse().unwrap();
    let m443: VirtualAddr = "tcp:203.0.113.10:443".parse().unwrap();
    // xvsadm -A -f 1 -s rr -p 300 --match tcp:VIP:80 --match tcp:VIP:443, two servers.
    d.apply(&[
        Change::AddService {
            key: g,
            scheduler: Scheduler::Rr,
            flags: Default::default(),
            persistence: Some(Persistence {
                timeout: 300,
                prefix: 32,
            }),
        },
        Change::SetMatches {
            key: g,
            matches: vec![m80, m443],
        },
        Change::AddReal {
            service: g,
            real: RealServer::dr("198.51.100.11:0".parse().unwrap(), 1),
        },
        Change::AddReal {
            service: g,
            real: RealServer::dr("198.51.100.12:0".parse().unwrap(), 1),
        },
    ]);
    // Both matches are the group's one value (one id: one template space, one set of counters).
    let v80 = d.dp.published_value(&m80).expect(":80 published");
    assert_eq!(d.dp.published_value(&m443), Some(v80));
    assert_eq!(Some(v80.id), d.dp.service_id(&g));

    // One client: :80 and :443 stick together (rr alone would alternate).
    let first = dest_of(&mut d, &tcp("192.0.2.1", 1000, "203.0.113.10", 80, SYN));
    for sport in 1001..1011 {
        let port = if sport % 2 == 0 { 80 } else { 443 };
        assert_eq!(
            dest_of(&mut d, &tcp("192.0.2.1", sport, "203.0.113.10", port, SYN)),
            first,
            "port {port} left the client's template"
        );
    }
    assert_eq!(
        d.reason(Reason::PersistNew),
        1,
        "one template for both ports"
    );
    assert_eq!(d.reason(Reason::PersistHit), 10);
    // Other clients are still balanced, whichever port they start on.
    let mut seen = std::collections::HashSet::new();
    for i in 2..10 {
        let port = if i % 2 == 0 { 443 } else { 80 };
        seen.insert(dest_of(
            &mut d,
            &tcp(&format!("192.0.2.{i}"), 2000, "203.0.113.10", port, SYN),
        ));
    }
    assert_eq!(
        seen.len(),
        2,
        "the group balances clients over both servers"
    );
    assert_eq!(d.dp.service_counters(&g).unwrap().conns, 19);

    // Not a match: another port, or UDP on a matched port.
    let before = d.reason(Reason::PassNotService);
    for pkt in [
        tcp("192.0.2.1", 1000, "203.0.113.10", 8080, SYN),
        udp("192.0.2.1", 1000, "203.0.113.10", 443, b"x"),
    ] {
        assert_eq!(d.run(&pkt).0, verdict::PASS);
    }
    assert_eq!(d.reason(Reason::PassNotService), before + 2);

    // A new table (wrr 3:1) is published under every match.
    d.apply(&[
        Change::EditService {
            key: g,
            scheduler: Some(Scheduler::Wrr),
            flags: None,
            persistence: None,
        },
        Change::EditReal {
            service: g,
            addr: "198.51.100.11:0".parse().unwrap(),
            weight: Some(3),
            forward: None,
            u_threshold: None,
            l_threshold: None,
            check: None,
        },
    ]);
    let w80 = d.dp.published_value(&m80).unwrap();
    assert_ne!(w80, v80, "the table changed");
    assert_eq!(w80.table_len, 4);
    assert_eq!(d.dp.published_value(&m443), Some(w80));
    assert_eq!(
        dest_of(&mut d, &tcp("192.0.2.1", 1100, "203.0.113.10", 443, SYN)),
        first,
        "the template outlives a table change"
    );

    // Removing the :443 match: its key is gone and its traffic passes; :80 still balanced.
    d.apply(&[Change::SetMatches {
        key: g,
        matches: vec![m80],
    }]);
    assert_eq!(d.dp.published_value(&m443), None);
    assert_eq!(d.dp.published_value(&m80), Some(w80));
    let before = d.reason(Reason::PassNotService);
    let (v, _) = d.run(&tcp("192.0.2.1", 1200, "203.0.113.10", 443, SYN));
    assert_eq!(v, verdict::PASS);
    assert_eq!(d.reason(Reason::PassNotService), before + 1);
    assert_eq!(
        dest_of(&mut d, &tcp("192.0.2.1", 1201, "203.0.113.10", 80, SYN)),
        first
    );

    // The freed match can be a normal service at once; deleting the group drops :80.
    add_service(
        &mut d,
        key(Protocol::Tcp, "203.0.113.10:443"),
        Scheduler::Rr,
        &[("198.51.100.12:443", 1)],
    );
    assert_eq!(
        dest_of(&mut d, &tcp("192.0.2.1", 1300, "203.0.113.10", 443, SYN)),
        RS2_MAC
    );
    d.apply(&[Change::DeleteService { key: g }]);
    assert_eq!(d.dp.published_value(&m80), None);
    let (v, _) = d.run(&tcp("192.0.2.1", 1400, "203.0.113.10", 80, SYN));
    assert_eq!(v, verdict::PASS);
    assert_eq!(
        dest_of(&mut d, &tcp("192.0.2.1", 1401, "203.0.113.10", 443, SYN)),
        RS2_MAC
    );
}

#[test]
fn a_match_handed_between_groups_in_one_transaction_stays_published() {
    // Group 2 is synced before group 1 gives the match up: the key must survive group 1's
    // clean-up (it is group 2's now).
    let mut d = two_reals_director();
    let m: VirtualAddr = "tcp:203.0.113.10:80".parse().unwrap();
    let (g1, g2) = (ServiceKey::fwmark(1, false), ServiceKey::fwmark(2, false));
    for (g, rs) in [(g2, "198.51.100.12:0"), (g1, "198.51.100.11:0")] {
        d.apply(&[
            Change::add_service(g, Scheduler::Rr),
            Change::AddReal {
                service: g,
                real: RealServer::dr(rs.parse().unwrap(), 1),
            },
        ]);
    }
    d.apply(&[Change::SetMatches {
        key: g1,
        matches: vec![m],
    }]);
    assert_eq!(
        dest_of(&mut d, &tcp("192.0.2.1", 1000, "203.0.113.10", 80, SYN)),
        RS1_MAC
    );
    d.apply(&[
        Change::SetMatches {
            key: g1,
            matches: vec![],
        },
        Change::SetMatches {
            key: g2,
            matches: vec![m],
        },
    ]);
    assert_eq!(d.dp.published_value(&m).map(|v| v.id), d.dp.service_id(&g2));
    assert_eq!(
        dest_of(&mut d, &tcp("192.0.2.1", 1001, "203.0.113.10", 80, SYN)),
        RS2_MAC
    );
}

/// (ActiveConn, InActConn) summed over slots, from the live counts; the full walk must agree.
fn live_and_walked(d: &mut Director) -> (u64, u64) {
    let sum = |m: std::collections::HashMap<u32, lb_user::dataplane::ConnCounts>| {
        m.values()
            .fold((0, 0), |(a, i), c| (a + c.active, i + c.inactive))
    };
    let live = sum(d.dp.conn_counts().unwrap());
    let walked = sum(d.dp.full_walk().unwrap());
    assert_eq!(live, walked, "live counts against a full walk");
    live
}

#[test]
fn live_counts_follow_new_established_fin_rst_and_expired_entries() {
    xvs_tests::progtest::pin_to_cpu0();
    let mut d = director();
    let k = key(Protocol::Tcp, "203.0.113.10:80");
    let slot =
        d.dp.backend_id(&k, "198.51.100.11:80".parse().unwrap())
            .unwrap();
    let pkt = |port: u16, flags: Flags| tcp("192.0.2.7", port, "203.0.113.10", 80, flags);
    let fin = FIN_ACK;
    let rst = RST;
    // Three new connections: half-open, InActConn.
    for port in [1001, 1002, 1003] {
        assert_eq!(d.run(&pkt(port, SYN)).0, verdict::TX);
    }
    assert_eq!(live_and_walked(&mut d), (0, 3));
    // Two established: moved to ActiveConn.
    d.run(&pkt(1001, ACK));
    d.run(&pkt(1002, ACK));
    assert_eq!(live_and_walked(&mut d), (2, 1));
    // Established hits write no counter.
    let before = d.dp.conn_counters_per_cpu(slot).unwrap();
    for _ in 0..100 {
        d.run(&pkt(1001, ACK));
        d.run(&pkt(1002, ACK));
    }
    assert_eq!(d.dp.conn_counters_per_cpu(slot).unwrap(), before);
    // A FIN and a RST: back to InActConn.
    d.run(&pkt(1001, fin));
    assert_eq!(live_and_walked(&mut d), (1, 2));
    d.run(&pkt(1002, rst));
    assert_eq!(live_and_walked(&mut d), (0, 3));
    // A new SYN on the closing entry: the old connection is removed, a new one counted.
    let rescheduled = d.reason(Reason::ConnRescheduled);
    d.run(&pkt(1001, SYN));
    assert_eq!(d.reason(Reason::ConnRescheduled), rescheduled + 1);
    assert_eq!(live_and_walked(&mut d), (0, 3));
    d.run(&pkt(1001, ACK));
    assert_eq!(live_and_walked(&mut d), (1, 2));
    // CLOSE entries live 0.3 s here: the reset one (1002) soon is dead, but no packet says so.
    // The full walk no longer counts it; the sweep removes it and takes it off the live counts.
    // (Not 0 s: the data plane's coarse clock and xvsd's would disagree about "now" at a tick.)
    d.dp.set_config(DataplaneConfig {
        tcp_close_timeout_ns: 300_000_000,
        ..Default::default()
    })
    .unwrap();
    xvs_tests::poll(std::time::Duration::from_secs(3), "1002's timeout", || {
        let walked: u64 = d.dp.full_walk().unwrap().values().map(|c| c.inactive).sum();
        (walked == 1).then_some(())
    })
    .unwrap();
    d.dp.sweep_step(usize::MAX).unwrap();
    assert_eq!(live_and_walked(&mut d), (1, 1));
    assert!(d
        .dp
        .conn_entry(&flow_key("192.0.2.7", 1002, "203.0.113.10", 80))
        .is_none());
    // A packet that finds its entry expired removes it (subtracted once) and starts afresh.
    d.run(&pkt(1003, rst));
    assert_eq!(
        live_and_walked(&mut d),
        (1, 1),
        "1003 is CLOSE, counted until it expires"
    );
    xvs_tests::poll(std::time::Duration::from_secs(3), "1003's timeout", || {
        let walked: u64 = d.dp.full_walk().unwrap().values().map(|c| c.inactive).sum();
        (walked == 0).then_some(())
    })
    .unwrap();
    assert_eq!(d.run(&pkt(1003, SYN)).0, verdict::TX);
    assert_eq!(
        live_and_walked(&mut d),
        (1, 1),
        "dead CLOSE replaced by a new SYN_RECV"
    );
    // The sweep finds nothing more to take off: the counts stay exact.
    d.dp.sweep_step(usize::MAX).unwrap();
    assert_eq!(live_and_walked(&mut d), (1, 1));
    // A removed real server's slot is written off; its successor starts from zero.
    d.apply(&[Change::DeleteReal {
        service: k,
        addr: "198.51.100.11:80".parse().unwrap(),
    }]);
    d.apply(&[Change::AddReal {
        service: k,
        real: RealServer::dr("198.51.100.12:80".parse().unwrap(), 1),
    }]);
    assert_eq!(live_and_walked(&mut d), (0, 0));
    assert_eq!(d.run(&pkt(1004, SYN)).0, verdict::TX);
    assert_eq!(live_and_walked(&mut d), (0, 1));
    d.dp.sweep_step(usize::MAX).unwrap();
    assert_eq!(live_and_walked(&mut d), (0, 1));
}

#[test]
fn entries_expiring_silently_leave_the_counts_within_a_step_of_their_timeout() {
    xvs_tests::progtest::pin_to_cpu0();
    let mut d = director();
    let pkt = |port: u16, flags: Flags| tcp("192.0.2.8", port, "203.0.113.10", 80, flags);
    let fin = FIN_ACK;
    // FIN_WAIT lives 1.5 s without traffic here: well inside the sweep's horizon (its next
    // visit, 1 s for this table, and a step to spare), not at its edge.
    d.dp.set_config(DataplaneConfig {
        tcp_fin_timeout_ns: 1_500_000_000,
        ..Default::default()
    })
    .unwrap();
    for port in [2001, 2002] {
        d.run(&pkt(port, SYN));
        d.run(&pkt(port, ACK));
        d.run(&pkt(port, fin));
    }
    assert_eq!(live_and_walked(&mut d), (0, 2));
    // The sweep sees both live, due to expire before its next visit: it watches them.
    d.dp.sweep_step(usize::MAX).unwrap();
    assert_eq!(live_and_walked(&mut d), (0, 2));
    // 2002 gets a packet half a second later: it lives on.
    std::thread::sleep(std::time::Duration::from_millis(500));
    d.run(&pkt(2002, ACK));
    // Past 2001's timeout, the full walk no longer counts it, and once due (within a step of
    // the timeout) the calendar removes it: the live counts follow.
    let sum = |m: std::collections::HashMap<u32, lb_user::dataplane::ConnCounts>| {
        m.values()
            .fold((0, 0), |(a, i), c| (a + c.active, i + c.inactive))
    };
    xvs_tests::poll(
        std::time::Duration::from_secs(5),
        "2001 expired and taken off the live counts",
        || {
            // 2002 stays alive meanwhile: only 2001 is silent.
            d.run(&pkt(2002, ACK));
            d.dp.sweep_due().unwrap();
            let live = sum(d.dp.conn_counts().unwrap());
            let walked = sum(d.dp.full_walk().unwrap());
            (live == (0, 1) && walked == (0, 1)).then_some(())
        },
    )
    .unwrap();
    assert!(d
        .dp
        .conn_entry(&flow_key("192.0.2.8", 2001, "203.0.113.10", 80))
        .is_none());
    assert!(d
        .dp
        .conn_entry(&flow_key("192.0.2.8", 2002, "203.0.113.10", 80))
        .is_some());
}

/// The sync reports read from the ring so far.
fn sync_events(ring: &mut aya::maps::RingBuf<aya::maps::MapData>) -> Vec<lb_common::SyncEvent> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        out.push(lb_user::sync::sender::event_of(&item).expect("a whole report"));
    }
    out
}

#[test]
fn connections_are_reported_for_sync_only_while_a_master_runs() {
    use lb_common::{config_flags::SYNC_MASTER, sync_event, ConnState};
    let mut d = director();
    let mut ring = d.dp.take_sync_events().expect("the SYNC_EVENTS ring");
    // No master: nothing is reported.
    d.run(&tcp("192.0.2.1", 41000, "203.0.113.10", 80, SYN));
    d.run(&tcp("192.0.2.1", 41000, "203.0.113.10", 80, ACK));
    assert!(sync_events(&mut ring).is_empty());
    // A master: the new connection, then its state change, each with its flow and slot.
    let mut cfg = d.dp.current_config().unwrap();
    cfg.flags |= SYNC_MASTER;
    d.dp.set_config(cfg).unwrap();
    let syn = tcp("192.0.2.1", 41001, "203.0.113.10", 80, SYN);
    d.run(&syn);
    d.run(&tcp("192.0.2.1", 41001, "203.0.113.10", 80, ACK));
    // An established hit without a change reports nothing.
    d.run(&tcp("192.0.2.1", 41001, "203.0.113.10", 80, ACK));
    let events = sync_events(&mut ring);
    let kinds: Vec<(u8, u8)> = events.iter().map(|e| (e.kind, e.state)).collect();
    assert_eq!(
        kinds,
        vec![
            (sync_event::NEW, ConnState::SynRecv as u8),
            (sync_event::STATE, ConnState::Established as u8),
        ]
    );
    let backend =
        d.dp.backend_id(
            &key(Protocol::Tcp, "203.0.113.10:80"),
            "198.51.100.11:80".parse().unwrap(),
        )
        .unwrap();
    for e in &events {
        assert_eq!(e.backend, backend);
        assert_eq!(u16::from_be(e.key.sport_be), 41001);
        assert_eq!(u16::from_be(e.key.dport_be), 80);
        assert_eq!(&e.key.dst[..4], &[203, 0, 113, 10]);
        assert_eq!(e._pad, [0; 2]);
    }
    assert_eq!(d.reason(Reason::SyncEventLost), 0);
}
