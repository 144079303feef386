//! Properties of the IPVS sync wire format: what is encoded decodes to the same value, no
//! bytes make the decoder panic, and packed messages respect their maximum and count their
//! entries and bytes correctly.

use std::net::{Ipv4Addr, Ipv6Addr};

use lb_core::sync::{
    decode, decode_strict, encode, entry_len, Addrs, ConnFlags, ConnState, PeData, Ports,
    SeqAdjust, SeqOptions, SyncConn, HEADER_LEN, MAX_CONNS,
};
use proptest::prelude::*;

fn addrs() -> impl Strategy<Value = Addrs> {
    prop_oneof![
        any::<([u8; 4], [u8; 4], [u8; 4])>().prop_map(|(c, v, d)| Addrs::V4 {
            client: Ipv4Addr::from(c),
            virt: Ipv4Addr::from(v),
            dest: Ipv4Addr::from(d),
        }),
        any::<([u8; 16], [u8; 16], [u8; 16])>().prop_map(|(c, v, d)| Addrs::V6 {
            client: Ipv6Addr::from(c),
            virt: Ipv6Addr::from(v),
            dest: Ipv6Addr::from(d),
        }),
    ]
}

fn seq() -> impl Strategy<Value = SeqOptions> {
    let adj = any::<(u32, u32, u32)>().prop_map(|(init_seq, delta, previous_delta)| SeqAdjust {
        init_seq,
        delta,
        previous_delta,
    });
    (adj.clone(), adj).prop_map(|(in_seq, out_seq)| SeqOptions { in_seq, out_seq })
}

fn pe() -> impl Strategy<Value = PeData> {
    (
        "[a-z]{1,16}",
        proptest::collection::vec(any::<u8>(), 1..=255),
    )
        .prop_map(|(name, data)| PeData { name, data })
}

/// Any entry a sender may produce; the state is typed the way the decoder types it.
fn conn() -> impl Strategy<Value = SyncConn> {
    (
        any::<u8>(),
        any::<u32>(),
        any::<u16>(),
        addrs(),
        any::<(u16, u16, u16)>(),
        any::<(u32, u32)>(),
        proptest::option::of(seq()),
        proptest::option::of(pe()),
        proptest::option::of(any::<([u8; 16], u16)>()),
    )
        .prop_map(
            |(
                protocol,
                raw_flags,
                raw_state,
                addrs,
                (c, v, d),
                (fwmark, timeout_secs),
                seq,
                pe,
                local,
            )| {
                let flags = ConnFlags::from_bits(raw_flags);
                // A local address (FULLNAT) is always of the entry's family.
                let local = local.map(|(a, port)| {
                    let ip: std::net::IpAddr = if addrs.is_v6() {
                        Ipv6Addr::from(a).into()
                    } else {
                        Ipv4Addr::new(a[0], a[1], a[2], a[3]).into()
                    };
                    std::net::SocketAddr::new(ip, port)
                });
                SyncConn {
                    protocol,
                    flags,
                    state: ConnState::classify(protocol, flags.template, raw_state),
                    addrs,
                    ports: Ports {
                        client: c,
                        virt: v,
                        dest: d,
                    },
                    fwmark,
                    timeout_secs,
                    seq,
                    pe,
                    local,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn encode_then_decode_gives_the_same_conns(
        syncid in any::<u8>(),
        conns in proptest::collection::vec(conn(), 1..40),
        max_len in 400usize..3000,
    ) {
        let msgs = encode(syncid, &conns, max_len).expect("valid conns encode");
        let mut back = Vec::new();
        for m in &msgs {
            let d = decode_strict(m).expect("our own messages decode");
            prop_assert_eq!(d.syncid, syncid);
            prop_assert!(d.skipped.is_empty());
            back.extend(d.conns);
        }
        prop_assert_eq!(back, conns);
    }

    #[test]
    fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode(&bytes);
    }

    /// Random bytes rarely pass the header checks, so also mutate valid messages: a header
    /// that holds with entries that lie.
    #[test]
    fn decoding_mutated_messages_never_panics(
        conns in proptest::collection::vec(conn(), 1..6),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let mut m = encode(1, &conns, 65_535).expect("encodes").remove(0);
        for (at, byte) in edits {
            let len = m.len();
            // Keep the header's size and version right so the entries are read.
            let at = HEADER_LEN + at % (len - HEADER_LEN);
            m[at] = byte;
        }
        let _ = decode(&m);
        m.truncate(HEADER_LEN + cut % (m.len() - HEADER_LEN + 1));
        let size = m.len() as u16;
        m[2..4].copy_from_slice(&size.to_be_bytes());
        let _ = decode(&m);
    }

}

proptest! {
    // Fewer cases: each packs up to 600 entries.
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn packed_messages_fit_and_count_right(
        conns in proptest::collection::vec(conn(), 0..600),
        max_len in 1usize..70_000,
    ) {
        let msgs = encode(0, &conns, max_len).expect("encodes");
        let mut total = 0;
        for m in &msgs {
            let n = usize::from(m[4]);
            prop_assert!((1..=MAX_CONNS).contains(&n));
            prop_assert_eq!(usize::from(u16::from_be_bytes([m[2], m[3]])), m.len());
            // Over the maximum only when one entry alone does not fit (the kernel's rule).
            let alone = n == 1 && m.len() == HEADER_LEN + entry_len(&conns[total]).expect("len");
            prop_assert!(m.len() <= max_len.min(65_535) || alone, "{} > {}", m.len(), max_len);
            total += n;
        }
        prop_assert_eq!(total, conns.len());
    }
}
