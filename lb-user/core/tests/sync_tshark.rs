//! Wireshark's own reading of our sync messages: encode entries, wrap each message in an
//! Ethernet/IPv4/UDP frame to 224.0.0.81:8848 in a pcap file, and check what `tshark`'s
//! "ipvs" dissector decodes against what we encoded.
//!
//! tshark is one of the lab's Debian packages (`cargo xtask` installs it), so a missing
//! tshark fails this test rather than skipping it.
//!
//! What the dissector reads (Wireshark 4.0, packet-ipvs-syncd.c, unchanged in its master):
//! the version 1 header, and each entry's fixed part (type, protocol, version/size, flags,
//! state, ports, fwmark, timeout, IPv4 or IPv6 addresses). It does not know options: it
//! steps over the fixed part only, ignoring the entry's size and the alignment padding, so
//! an entry *after* one with options is misread (the kernel, and our decoder, follow the
//! size). The test therefore puts each entry with options last in its message, where the
//! dissector still reads its fixed part and its size (which counts the options).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    process::Command,
};

use lb_core::sync::{
    entry_len, Addrs, ConnFlags, ConnState, Forward, MessageBuilder, PeData, Ports, SeqAdjust,
    SeqOptions, SyncConn, TcpState, TemplateState, DEFAULT_GROUP, DEFAULT_PORT,
};
use serde_json::Value;

/// The classic pcap format (not pcapng): global header, then a record per frame.
fn pcap(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    // Magic, version 2.4, GMT offset 0, accuracy 0, snaplen 65535, link type 1 (Ethernet).
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    for v in [0u32, 0, 65_535, 1] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for (i, f) in frames.iter().enumerate() {
        let len = f.len() as u32;
        for v in [i as u32, 0, len, len] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(f);
    }
    out
}

fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet frame from 192.0.2.1 to the sync group carrying `payload` in UDP.
fn frame(payload: &[u8]) -> Vec<u8> {
    let group = DEFAULT_GROUP.octets();
    // The group's multicast MAC: 01:00:5e and the address's low 23 bits.
    let mut f = vec![0x01, 0x00, 0x5e, group[1] & 0x7f, group[2], group[3]];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    // id 0, DF, TTL 1 (the kernel's default), UDP, checksum later.
    ip.extend_from_slice(&[0, 0, 0x40, 0, 1, 17, 0, 0]);
    ip.extend_from_slice(&[192, 0, 2, 1]);
    ip.extend_from_slice(&group);
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&DEFAULT_PORT.to_be_bytes());
    f.extend_from_slice(&DEFAULT_PORT.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    // UDP checksum 0: none, allowed over IPv4.
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

fn v4(client: [u8; 4], virt: [u8; 4], dest: [u8; 4]) -> Addrs {
    Addrs::V4 {
        client: Ipv4Addr::from(client),
        virt: Ipv4Addr::from(virt),
        dest: Ipv4Addr::from(dest),
    }
}

/// One of each kind, grouped by message: DR TCP, IPv6 UDP NAT, a template and a FIN_WAIT
/// TUN connection (no options, split over two messages by a 160-byte maximum); then NAT with
/// sequence data, SIP persistence data, and FULLNAT with its local address, each last in its
/// message.
fn groups() -> Vec<(Vec<SyncConn>, usize)> {
    let dr = SyncConn {
        protocol: 6,
        flags: ConnFlags {
            no_output: true,
            ..ConnFlags::new(Forward::DirectRoute)
        },
        state: ConnState::Tcp(TcpState::Established),
        addrs: v4([192, 0, 2, 10], [198, 51, 100, 1], [203, 0, 113, 5]),
        ports: Ports {
            client: 40000,
            virt: 80,
            dest: 80,
        },
        fwmark: 0,
        timeout_secs: 900,
        seq: None,
        pe: None,
        local: None,
    };
    let v6 = SyncConn {
        protocol: 17,
        flags: ConnFlags::new(Forward::Masq),
        state: ConnState::Other(0),
        addrs: Addrs::V6 {
            client: "2001:db8::10".parse().expect("addr"),
            virt: "2001:db8::1".parse().expect("addr"),
            dest: "2001:db8:1::5".parse().expect("addr"),
        },
        ports: Ports {
            client: 5353,
            virt: 53,
            dest: 5300,
        },
        fwmark: 0x2a,
        timeout_secs: 300,
        ..dr.clone()
    };
    let template = SyncConn {
        flags: ConnFlags {
            template: true,
            ..dr.flags
        },
        state: ConnState::Template(TemplateState::Assured),
        ports: Ports {
            client: 0,
            virt: 443,
            dest: 443,
        },
        timeout_secs: 360,
        ..dr.clone()
    };
    let nat_seq = SyncConn {
        flags: ConnFlags {
            in_seq: true,
            out_seq: true,
            ..ConnFlags::new(Forward::Masq)
        },
        state: ConnState::Tcp(TcpState::CloseWait),
        addrs: v4([192, 0, 2, 11], [198, 51, 100, 2], [203, 0, 113, 6]),
        ports: Ports {
            client: 40001,
            virt: 21,
            dest: 21,
        },
        seq: Some(SeqOptions {
            in_seq: SeqAdjust {
                init_seq: 1000,
                delta: 4,
                previous_delta: 0,
            },
            out_seq: SeqAdjust {
                init_seq: 2000,
                delta: 8,
                previous_delta: 2,
            },
        }),
        ..dr.clone()
    };
    let sip = SyncConn {
        protocol: 17,
        state: ConnState::Other(0),
        addrs: v4([192, 0, 2, 12], [198, 51, 100, 3], [203, 0, 113, 7]),
        ports: Ports {
            client: 5060,
            virt: 5060,
            dest: 5060,
        },
        pe: Some(PeData {
            name: "sip".into(),
            data: b"call-1@example".to_vec(),
        }),
        ..dr.clone()
    };
    let tun = SyncConn {
        flags: ConnFlags {
            no_output: true,
            inactive: true,
            ..ConnFlags::new(Forward::Tunnel)
        },
        state: ConnState::Tcp(TcpState::FinWait),
        addrs: v4([192, 0, 2, 13], [198, 51, 100, 4], [203, 0, 113, 8]),
        fwmark: 7,
        timeout_secs: 120,
        ..dr.clone()
    };
    // FULLNAT: DPVS's method 5 and xvs's local-address option (which the dissector, like a
    // kernel IPVS, steps over).
    let fullnat = SyncConn {
        flags: ConnFlags::new(Forward::FullNat),
        addrs: v4([192, 0, 2, 14], [198, 51, 100, 5], [203, 0, 113, 9]),
        local: Some("10.0.0.5:61000".parse().unwrap()),
        ..dr.clone()
    };
    vec![
        (vec![dr.clone(), v6, template, tun], 160),
        (vec![dr.clone(), nat_seq], 1472),
        (vec![sip], 1472),
        (vec![fullnat], 1472),
    ]
}

/// A dissected field's text: tshark's JSON gives every field as a string.
fn text<'a>(tree: &'a Value, key: &str) -> &'a str {
    tree.get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("tshark gave no {key} in {tree:#}"))
}

fn number(tree: &Value, key: &str) -> u64 {
    let t = text(tree, key);
    match t.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => t.parse(),
    }
    .unwrap_or_else(|_| panic!("{key} = {t:?} is not a number"))
}

fn addr(tree: &Value, v4_key: &str, v6_key: &str, expect: IpAddr) {
    match expect {
        IpAddr::V4(a) => assert_eq!(text(tree, v4_key).parse::<Ipv4Addr>().ok(), Some(a)),
        IpAddr::V6(a) => assert_eq!(text(tree, v6_key).parse::<Ipv6Addr>().ok(), Some(a)),
    }
}

#[test]
fn tshark_decodes_our_messages_as_we_encoded_them() {
    let tshark = Path::new("/usr/bin/tshark");
    assert!(
        tshark.exists(),
        "tshark is missing: install the Debian package tshark (`cargo xtask` lab packages do)"
    );
    let mut conns = Vec::new();
    let mut msgs = Vec::new();
    for (group, max_len) in groups() {
        let mut b = MessageBuilder::new(42, max_len);
        for c in &group {
            b.push(c).expect("encodes");
        }
        msgs.extend(b.finish());
        conns.extend(group);
    }
    assert_eq!(msgs.len(), 5, "the first group fills two messages");
    let frames: Vec<Vec<u8>> = msgs.iter().map(|m| frame(m)).collect();
    let dir = std::env::temp_dir().join(format!("xvs-sync-tshark-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("sync.pcap");
    std::fs::write(&file, pcap(&frames)).expect("pcap written");
    let out = Command::new(tshark)
        .args(["-n", "-T", "json", "-r"])
        .arg(&file)
        .output()
        .expect("tshark runs");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let packets: Value = serde_json::from_slice(&out.stdout).expect("tshark's JSON");
    let packets = packets.as_array().expect("a list of packets");
    assert_eq!(packets.len(), msgs.len());

    let mut expected = conns.iter();
    for (packet, msg) in packets.iter().zip(&msgs) {
        let ipvs = &packet["_source"]["layers"]["ipvs"];
        assert_eq!(number(ipvs, "ipvs.syncid"), 42);
        assert_eq!(number(ipvs, "ipvs.conncount"), u64::from(msg[4]));
        assert_eq!(number(ipvs, "ipvs.size") as usize, msg.len());
        assert_eq!(number(ipvs, "ipvs.version"), 1);
        for i in 1..=usize::from(msg[4]) {
            let c = expected.next().expect("no more entries than encoded");
            let e = ipvs
                .get(format!("Connection #{i}"))
                .unwrap_or_else(|| panic!("no Connection #{i} in {ipvs:#}"));
            let v6 = c.addrs.is_v6();
            assert_eq!(number(e, "ipvs.type"), u64::from(v6));
            assert_eq!(number(e, "ipvs.ver"), 0);
            let size = entry_len(c).expect("encodes") as u64;
            assert_eq!(number(e, "ipvs.size.v1"), size);
            assert_eq!(number(e, "ipvs.proto"), u64::from(c.protocol));
            assert_eq!(number(e, "ipvs.flags.v1"), u64::from(c.flags.bits()));
            assert_eq!(number(e, "ipvs.state"), u64::from(c.state.raw()));
            assert_eq!(number(e, "ipvs.cport"), u64::from(c.ports.client));
            assert_eq!(number(e, "ipvs.vport"), u64::from(c.ports.virt));
            assert_eq!(number(e, "ipvs.dport"), u64::from(c.ports.dest));
            assert_eq!(number(e, "ipvs.fwmark"), u64::from(c.fwmark));
            assert_eq!(number(e, "ipvs.timeout"), u64::from(c.timeout_secs));
            addr(e, "ipvs.caddr", "ipvs.caddr6", c.addrs.client());
            addr(e, "ipvs.vaddr", "ipvs.vaddr6", c.addrs.virt());
            addr(e, "ipvs.daddr", "ipvs.daddr6", c.addrs.dest());
        }
    }
    assert!(expected.next().is_none(), "tshark saw every entry");
}
