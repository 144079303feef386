//! Exact bytes, checked field by field against the kernel's structs (ip_vs_sync.c:
//! `struct ip_vs_sync_mesg`, `struct ip_vs_sync_v4`, `struct ip_vs_sync_v6`, the options),
//! and the receiver's refusals.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::*;

const TCP: u8 = 6;
const UDP: u8 = 17;

/// 192.0.2.10:40000 -> 198.51.100.1:80 via DR to 203.0.113.5:80, ESTABLISHED, 900 s left.
/// A DR real server's connections carry NOOUTPUT too (`__ip_vs_update_dest` adds it to every
/// method but NAT).
fn dr_established() -> SyncConn {
    SyncConn {
        protocol: TCP,
        flags: ConnFlags {
            no_output: true,
            ..ConnFlags::new(Forward::DirectRoute)
        },
        state: ConnState::Tcp(TcpState::Established),
        addrs: Addrs::V4 {
            client: Ipv4Addr::new(192, 0, 2, 10),
            virt: Ipv4Addr::new(198, 51, 100, 1),
            dest: Ipv4Addr::new(203, 0, 113, 5),
        },
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
    }
}

#[rustfmt::skip]
const DR_ESTABLISHED: [u8; 44] = [
    // struct ip_vs_sync_mesg: reserved 0, syncid 7, size 44, nr_conns 1, version 1, spare 0
    0x00, 0x07, 0x00, 0x2c, 0x01, 0x01, 0x00, 0x00,
    // struct ip_vs_sync_v4: type 0, protocol 6, ver_size 0<<12 | 36
    0x00, 0x06, 0x00, 0x24,
    // flags: DROUTE (3) | NOOUTPUT (0x80)
    0x00, 0x00, 0x00, 0x83,
    // state IP_VS_TCP_S_ESTABLISHED (1), cport 40000
    0x00, 0x01, 0x9c, 0x40,
    // vport 80, dport 80
    0x00, 0x50, 0x00, 0x50,
    // fwmark 0
    0x00, 0x00, 0x00, 0x00,
    // timeout 900 s
    0x00, 0x00, 0x03, 0x84,
    // caddr 192.0.2.10, vaddr 198.51.100.1, daddr 203.0.113.5
    192, 0, 2, 10,
    198, 51, 100, 1,
    203, 0, 113, 5,
];

#[test]
fn ipv4_tcp_dr_established_bytes() {
    let msgs = encode(7, &[dr_established()], 1472).expect("encodes");
    assert_eq!(msgs, [DR_ESTABLISHED.to_vec()]);
    let m = decode_strict(&DR_ESTABLISHED).expect("decodes");
    assert_eq!(m.syncid, 7);
    assert_eq!(m.conns, [dr_established()]);
    assert!(m.skipped.is_empty());
}

fn v6_udp() -> SyncConn {
    SyncConn {
        protocol: UDP,
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
            dest: 53,
        },
        fwmark: 0x2a,
        timeout_secs: 300,
        seq: None,
        pe: None,
        local: None,
    }
}

#[test]
fn ipv6_udp_nat_bytes() {
    let msg = encode(0, &[v6_udp()], 1472).expect("encodes").remove(0);
    assert_eq!(msg.len(), 80);
    // struct ip_vs_sync_mesg: size 80, one entry, version 1
    assert_eq!(msg[..8], [0, 0, 0, 80, 1, 1, 0, 0]);
    let e = &msg[8..];
    // struct ip_vs_sync_v6: type STYPE_F_INET6, protocol 17, ver_size 72
    assert_eq!(e[..4], [1, 17, 0, 72]);
    assert_eq!(e[4..8], [0, 0, 0, 0], "flags: MASQ");
    assert_eq!(e[8..10], [0, 0], "state: UDP's only one, 0");
    assert_eq!(e[10..12], 5353u16.to_be_bytes(), "cport");
    assert_eq!(e[12..16], [0, 53, 0, 53], "vport, dport");
    assert_eq!(e[16..20], [0, 0, 0, 0x2a], "fwmark");
    assert_eq!(e[20..24], 300u32.to_be_bytes(), "timeout");
    let addr = |s: &str| s.parse::<Ipv6Addr>().expect("addr").octets();
    assert_eq!(e[24..40], addr("2001:db8::10"), "caddr");
    assert_eq!(e[40..56], addr("2001:db8::1"), "vaddr");
    assert_eq!(e[56..72], addr("2001:db8:1::5"), "daddr");
    assert_eq!(decode_strict(&msg).expect("decodes").conns, [v6_udp()]);
}

/// A persistent service's template (`<protocol, caddr, 0, vaddr, vport, daddr, dport>` in
/// ip_vs_sched_persist): client port 0, TEMPLATE plus the real server's method, the
/// persistence timeout.
fn template() -> SyncConn {
    SyncConn {
        flags: ConnFlags {
            template: true,
            no_output: true,
            ..ConnFlags::new(Forward::DirectRoute)
        },
        state: ConnState::Template(TemplateState::Assured),
        ports: Ports {
            client: 0,
            virt: 443,
            dest: 443,
        },
        timeout_secs: 360,
        ..dr_established()
    }
}

#[test]
fn template_bytes() {
    let msg = encode(1, &[template()], 1472).expect("encodes").remove(0);
    #[rustfmt::skip]
    let entry: [u8; 24] = [
        0x00, 0x06, 0x00, 0x24,
        // flags: TEMPLATE (0x1000) | NOOUTPUT | DROUTE
        0x00, 0x00, 0x10, 0x83,
        // state IP_VS_CTPL_S_ASSURED (1), cport 0
        0x00, 0x01, 0x00, 0x00,
        // vport 443, dport 443
        0x01, 0xbb, 0x01, 0xbb,
        0x00, 0x00, 0x00, 0x00,
        // timeout 360 s
        0x00, 0x00, 0x01, 0x68,
    ];
    assert_eq!(msg[8..32], entry);
    let back = decode_strict(&msg).expect("decodes").conns.remove(0);
    assert!(back.is_template());
    assert_eq!(back, template());
}

/// A NAT connection with sequence adjustments (`F_IN_SEQ | F_OUT_SEQ`), followed by a
/// second entry: the first is 36 + 2 + 24 = 62 bytes, so 2 zero bytes align the second.
#[test]
fn seq_option_bytes_and_padding() {
    let seq = SyncConn {
        flags: ConnFlags {
            in_seq: true,
            out_seq: true,
            ..ConnFlags::new(Forward::Masq)
        },
        seq: Some(SeqOptions {
            in_seq: SeqAdjust {
                init_seq: 0x0102_0304,
                delta: 5,
                previous_delta: 6,
            },
            out_seq: SeqAdjust {
                init_seq: 0xa0b0_c0d0,
                delta: 0xffff_fffe,
                previous_delta: 0,
            },
        }),
        ..dr_established()
    };
    let msg = encode(3, &[seq.clone(), dr_established()], 1472)
        .expect("encodes")
        .remove(0);
    assert_eq!(msg.len(), 8 + 62 + 2 + 36);
    assert_eq!(msg[..8], [0, 3, 0, 108, 2, 1, 0, 0]);
    assert_eq!(msg[8..12], [0, 6, 0, 62], "ver_size counts the option");
    assert_eq!(msg[12..16], [0, 0, 0x06, 0x00], "flags: IN_SEQ | OUT_SEQ");
    #[rustfmt::skip]
    let option: [u8; 26] = [
        // IPVS_OPT_SEQ_DATA, length sizeof(struct ip_vs_sync_conn_options)
        1, 24,
        // in_seq: init_seq, delta, previous_delta
        0x01, 0x02, 0x03, 0x04, 0, 0, 0, 5, 0, 0, 0, 6,
        // out_seq
        0xa0, 0xb0, 0xc0, 0xd0, 0xff, 0xff, 0xff, 0xfe, 0, 0, 0, 0,
    ];
    assert_eq!(msg[44..70], option);
    assert_eq!(msg[70..72], [0, 0], "padding before the next entry");
    assert_eq!(msg[72..], DR_ESTABLISHED[8..]);
    assert_eq!(
        decode_strict(&msg).expect("decodes").conns,
        [seq, dr_established()]
    );
}

#[test]
fn pe_options_bytes() {
    let sip = SyncConn {
        pe: Some(PeData {
            name: "sip".into(),
            data: b"abc".to_vec(),
        }),
        ..dr_established()
    };
    let msg = encode(0, std::slice::from_ref(&sip), 1472)
        .expect("encodes")
        .remove(0);
    // PE_DATA then PE_NAME, as ip_vs_sync_conn writes them; no padding after the last entry.
    assert_eq!(msg[8..12], [0, 6, 0, 46]);
    assert_eq!(msg[44..], [2, 3, b'a', b'b', b'c', 3, 3, b's', b'i', b'p']);
    assert_eq!(msg.len(), 54);
    assert_eq!(decode_strict(&msg).expect("decodes").conns, [sip]);
}

#[test]
fn bad_pe_lengths_do_not_encode() {
    let with = |name: &str, data: Vec<u8>| SyncConn {
        pe: Some(PeData {
            name: name.into(),
            data,
        }),
        ..dr_established()
    };
    assert_eq!(
        encode(0, &[with("", vec![1])], 1472),
        Err(EncodeError::PeName(0))
    );
    assert_eq!(
        encode(0, &[with(&"x".repeat(17), vec![1])], 1472),
        Err(EncodeError::PeName(17))
    );
    assert_eq!(
        encode(0, &[with("sip", vec![])], 1472),
        Err(EncodeError::PeData(0))
    );
    assert_eq!(
        encode(0, &[with("sip", vec![0; 256])], 1472),
        Err(EncodeError::PeData(256))
    );
}

#[test]
fn flags_keep_every_bit_and_know_the_backup_mask() {
    for raw in [
        0u32,
        0x83,
        0x1083,
        0x2004,
        0x1_0000,
        0x40,
        0xffff_ffff,
        0x8000_0005,
    ] {
        assert_eq!(ConnFlags::from_bits(raw).bits(), raw, "{raw:#x}");
    }
    let f = ConnFlags::from_bits(0x1_2683);
    assert_eq!(f.forward, Forward::DirectRoute);
    assert!(f.nfct && f.one_packet && f.in_seq && f.out_seq && f.no_output);
    // NFCT and ONE_PACKET are dropped, SYNC added.
    assert_eq!(f.as_received().bits(), 0x06a3);
}

#[test]
fn tcp_states_have_the_kernels_numbers() {
    assert_eq!(TcpState::Established.raw(), 1);
    assert_eq!(TcpState::SynAck.raw(), 10);
    assert_eq!(TcpState::from_raw(9), Some(TcpState::Listen));
    assert_eq!(TcpState::from_raw(11), None);
    assert_eq!(ConnState::classify(6, false, 11), ConnState::Other(11));
    assert_eq!(ConnState::classify(17, false, 1), ConnState::Other(1));
    assert_eq!(
        ConnState::classify(6, true, 0),
        ConnState::Template(TemplateState::None)
    );
}

#[test]
fn header_refusals() {
    assert_eq!(decode(&[0, 1, 0]), Err(WireError::Truncated { len: 3 }));
    let mut bad = DR_ESTABLISHED.to_vec();
    bad.push(0);
    assert_eq!(
        decode(&bad),
        Err(WireError::BadSize {
            header: 44,
            actual: 45
        })
    );
    // Version 0: nr_conns 1, syncid 9, size 4 + 24 (struct ip_vs_sync_conn_v0).
    let mut v0 = vec![1, 9, 0, 28];
    v0.extend_from_slice(&[0; 24]);
    assert_eq!(
        decode(&v0),
        Err(WireError::Version0 {
            syncid: 9,
            nr_conns: 1
        })
    );
    let mut v2 = DR_ESTABLISHED;
    v2[5] = 2;
    assert_eq!(
        decode(&v2),
        Err(WireError::UnknownVersion {
            version: 2,
            spare: 0
        })
    );
    let mut spare = DR_ESTABLISHED;
    spare[7] = 1;
    assert!(matches!(
        decode(&spare),
        Err(WireError::UnknownVersion { spare: 1, .. })
    ));
    assert_eq!(
        decode(&[0, 0, 0, 6, 0, 1]),
        Err(WireError::Truncated { len: 6 })
    );
}

/// Two copies of the DR entry in one message, to spoil the second.
fn two() -> Vec<u8> {
    let msgs = encode(5, &[dr_established(), dr_established()], 1472).expect("encodes");
    assert_eq!(msgs.len(), 1);
    msgs.into_iter().next().unwrap_or_default()
}

#[test]
fn a_bad_entry_ends_the_message_keeping_those_before() {
    let cases: [(usize, u8, EntryFault); 4] = [
        // type 2: neither IPv4 nor the IPv6 bit
        (44, 2, EntryFault::BadType(2)),
        // version nibble 1
        (46, 0x10, EntryFault::BadVersion(1)),
        // size 0x0100: past the message
        (
            46,
            0x01,
            EntryFault::Overrun {
                size: 0x124,
                left: 36,
            },
        ),
        // IPv6 bit on a 36-byte entry
        (
            44,
            1,
            EntryFault::TooShort {
                size: 36,
                needed: 72,
            },
        ),
    ];
    for (at, byte, fault) in cases {
        let mut m = two();
        m[at] = byte;
        let d = decode(&m).expect("header is fine");
        assert_eq!(d.conns, [dr_established()], "{fault}");
        assert_eq!(d.ended, Some(EntryError { index: 1, fault }));
        assert_eq!(
            decode_strict(&m),
            Err(WireError::BadEntry { index: 1, fault })
        );
    }
    // nr_conns says 3, only 2 are there.
    let mut m = two();
    m[4] = 3;
    let d = decode(&m).expect("header is fine");
    assert_eq!(d.conns.len(), 2);
    assert_eq!(
        d.ended.map(|e| e.fault),
        Some(EntryFault::Truncated { left: 0 })
    );
}

/// The DR entry with `opt` appended as its option, sizes fixed up.
fn with_option(opt: &[u8]) -> Vec<u8> {
    let mut m = DR_ESTABLISHED.to_vec();
    m.extend_from_slice(opt);
    let entry = (36 + opt.len()) as u16;
    m[10..12].copy_from_slice(&entry.to_be_bytes());
    let size = m.len() as u16;
    m[2..4].copy_from_slice(&size.to_be_bytes());
    m
}

#[test]
fn option_faults() {
    let ended = |opt: &[u8]| decode(&with_option(opt)).expect("header").ended;
    let fault = |f| Some(EntryError { index: 0, fault: f });
    assert_eq!(ended(&[1, 0]), fault(EntryFault::EmptyOption(1)));
    assert_eq!(ended(&[1]), fault(EntryFault::OptionOverrun { kind: 1 }));
    assert_eq!(
        ended(&[2, 9, 1]),
        fault(EntryFault::OptionOverrun { kind: 2 })
    );
    assert_eq!(ended(&[1, 2, 0, 0]), fault(EntryFault::BadSeqLength(2)));
    assert_eq!(
        ended(&[2, 1, 7, 2, 1, 8]),
        fault(EntryFault::DuplicateOption(2))
    );
    let long = [&[3u8, 17][..], &[b'x'; 17]].concat();
    assert_eq!(ended(&long), fault(EntryFault::PeNameTooLong(17)));
}

#[test]
fn skipped_entries_let_the_next_one_through() {
    // Unknown mandatory option 9: skipped. Unknown optional one (9 | IPVS_OPT_F_PARAM): ignored.
    let mut m = with_option(&[9, 2, 0, 0]);
    m.extend_from_slice(&DR_ESTABLISHED[8..]);
    m[4] = 2;
    let size = m.len() as u16;
    m[2..4].copy_from_slice(&size.to_be_bytes());
    let d = decode_strict(&m).expect("decodes");
    assert_eq!(d.conns, [dr_established()]);
    assert_eq!(
        d.skipped,
        [Skipped {
            index: 0,
            reason: SkipReason::UnknownMandatoryOption(9)
        }]
    );
    let d = decode_strict(&with_option(&[0x49, 2, 0, 0])).expect("decodes");
    assert_eq!(d.conns, [dr_established()]);
    // PE data without a name: skipped; a name without data: ignored.
    let d = decode_strict(&with_option(&[2, 2, 1, 2])).expect("decodes");
    assert_eq!(d.skipped[0].reason, SkipReason::PeDataWithoutName);
    let d = decode_strict(&with_option(&[3, 3, b's', b'i', b'p'])).expect("decodes");
    assert_eq!(d.conns, [dr_established()]);
}

#[test]
fn builder_splits_at_max_len_and_255_entries() {
    let conns = vec![dr_established(); 300];
    // 8 + 3 x 36 = 116: three entries a message.
    let msgs = encode(0, &conns[..7], 116).expect("encodes");
    assert_eq!(msgs.iter().map(|m| m[4]).collect::<Vec<_>>(), [3, 3, 1]);
    assert!(msgs.iter().all(|m| m.len() <= 116));
    let msgs = encode(0, &conns, 65_535).expect("encodes");
    assert_eq!(msgs.iter().map(|m| m[4]).collect::<Vec<_>>(), [255, 45]);
    // Smaller than one entry: one entry a message, as the kernel does.
    let msgs = encode(0, &conns[..2], 10).expect("encodes");
    assert_eq!(msgs.len(), 2);
    assert!(msgs.iter().all(|m| m.len() == 44));
    assert!(encode(0, &[], 1472).expect("encodes").is_empty());
}

#[test]
fn maxlen_as_start_sync_thread_computes_it() {
    assert_eq!(sync_maxlen(Role::Master, false, 9000, None), 1472);
    assert_eq!(sync_maxlen(Role::Master, true, 9000, None), 1452);
    assert_eq!(sync_maxlen(Role::Backup, false, 9000, None), 8972);
    assert_eq!(sync_maxlen(Role::Backup, false, 1280, None), 1472);
    assert_eq!(sync_maxlen(Role::Master, false, 1500, Some(100)), 100);
    assert_eq!(sync_maxlen(Role::Backup, false, 1500, Some(100)), 1024);
    assert_eq!(sync_maxlen(Role::Master, false, 1500, Some(70_000)), 65_507);
    assert_eq!(sync_maxlen(Role::Master, false, 1500, Some(0)), 1472);
}

#[test]
fn syncid_filter() {
    assert!(syncid_accepted(0, 9));
    assert!(syncid_accepted(9, 9));
    assert!(!syncid_accepted(9, 8));
}

#[test]
fn a_fullnat_entry_carries_its_local_address_in_an_option_ipvs_skips() {
    let fnat = SyncConn {
        flags: ConnFlags::new(Forward::FullNat),
        local: Some("10.0.0.5:61000".parse().unwrap()),
        ..dr_established()
    };
    let msg = encode(0, std::slice::from_ref(&fnat), 1472)
        .expect("encodes")
        .remove(0);
    // DPVS's method number 5; the option 0x58 ('X': xvs's 0x18 with IPVS_OPT_F_PARAM), 6
    // bytes: the address then the port.
    assert_eq!(msg[15] & 7, 5);
    assert_eq!(msg[44..], [0x58, 6, 10, 0, 0, 5, 0xee, 0x48]);
    assert_eq!(
        u16::from_be_bytes([msg[10], msg[11]]),
        36 + 8,
        "the entry's size"
    );
    assert_eq!(
        decode_strict(&msg).expect("decodes").conns,
        std::slice::from_ref(&fnat)
    );
    // IPv6: 16 address bytes.
    let v6 = SyncConn {
        addrs: Addrs::V6 {
            client: "2001:db8::7".parse().unwrap(),
            virt: "2001:db8::10".parse().unwrap(),
            dest: "2001:db8:1::11".parse().unwrap(),
        },
        local: Some("[2001:db8:2::5]:1024".parse().unwrap()),
        ..fnat.clone()
    };
    let msg = encode(0, std::slice::from_ref(&v6), 1472)
        .expect("encodes")
        .remove(0);
    assert_eq!(msg[8 + 72..8 + 74], [0x58, 18]);
    assert_eq!(decode_strict(&msg).expect("decodes").conns, [v6]);
    // A local address of the other family does not encode.
    let mixed = SyncConn {
        local: Some("[2001:db8::5]:1024".parse().unwrap()),
        ..fnat.clone()
    };
    assert_eq!(encode(0, &[mixed], 1472), Err(EncodeError::LocalFamily));
    // A wrong length: the entry is skipped, the next one decodes.
    let d = decode_strict(&with_option(&[0x58, 2, 0, 0])).expect("decodes");
    assert_eq!(d.skipped[0].reason, SkipReason::BadLocal(2));
    // Without the optional bit 0x18 is an unknown mandatory option, as for the kernel.
    let d = decode_strict(&with_option(&[0x18, 6, 10, 0, 0, 5, 1, 1])).expect("decodes");
    assert_eq!(
        d.skipped[0].reason,
        SkipReason::UnknownMandatoryOption(0x18)
    );
}
