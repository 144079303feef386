//! Differential test of the director's packet path: generated frames (every header length,
//! VLAN tags, fragments, every TCP flag byte, ICMP and other protocols, bytes overwritten at
//! random, frames cut short) run through the real program with BPF_PROG_TEST_RUN and through
//! a host model written from the parsing rules (`model` below). Verdict, output bytes and the
//! reason counted must agree for every frame: anything dropped is counted under its reason, and
//! nothing but a well-formed packet for a service is forwarded, rewritten only in its MACs.
//! Root required.
//!
//! `XVS_DIFF_CASES` sets the number of frames (default 3,000, the CI run); the bench or a
//! developer can ask for more.

use std::cell::RefCell;

use lb_common::Reason;
use lb_user::model::{Change, Protocol, RealServer, Scheduler, ServiceKey};
use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};
use xvs_tests::{
    packets::{frame, Flags, L4},
    progtest::{verdict, Director},
};

const RS_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
const VIP4: &str = "203.0.113.10";
const VIP6: &str = "2001:db8:10::10";
const CLIENT4: &str = "192.0.2.1";
const CLIENT6: &str = "2001:db8:2::1";

/// The services the director holds: (protocol, VIP, port), each with one DR real server, so the
/// outcome of a packet never depends on a scheduler's state.
const SERVICES: [(u8, &str, u16); 4] =
    [(6, VIP4, 80), (17, VIP4, 53), (6, VIP6, 80), (17, VIP6, 53)];

fn director() -> Director {
    let mut d = Director::new();
    d.mac("198.51.100.11", RS_MAC);
    d.mac("2001:db8:1::11", RS_MAC);
    let mut changes = Vec::new();
    for (proto, vip, port) in SERVICES {
        let protocol = if proto == 6 {
            Protocol::Tcp
        } else {
            Protocol::Udp
        };
        let (vaddr, rs) = if vip.contains(':') {
            (
                format!("[{vip}]:{port}"),
                format!("[2001:db8:1::11]:{port}"),
            )
        } else {
            (format!("{vip}:{port}"), format!("198.51.100.11:{port}"))
        };
        let key = ServiceKey::Addr {
            protocol,
            addr: vaddr.parse().unwrap(),
        };
        changes.push(Change::add_service(key, Scheduler::Rr));
        changes.push(Change::AddReal {
            service: key,
            real: RealServer::dr(rs.parse().unwrap(), 1),
        });
    }
    d.apply(&changes);
    d
}

/// What the director must do with a frame.
#[derive(Debug, PartialEq, Eq)]
struct Expect {
    verdict: u32,
    reason: Reason,
    out: Vec<u8>,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// The host model: the director's decisions from the frame's bytes alone.
fn model(b: &[u8]) -> Expect {
    let pass = |reason| Expect {
        verdict: verdict::PASS,
        reason,
        out: b.to_vec(),
    };
    let drop = |reason| Expect {
        verdict: verdict::DROP,
        reason,
        out: b.to_vec(),
    };
    let is_vlan = |t: u16| t == 0x8100 || t == 0x88a8;
    if b.len() < 14 {
        return drop(Reason::DropTruncatedL2);
    }
    let (mut ether_type, mut l3) = (be16(b, 12), 14);
    if is_vlan(ether_type) {
        if b.len() < 18 {
            return drop(Reason::DropTruncatedL2);
        }
        ether_type = be16(b, 16);
        if is_vlan(ether_type) {
            return pass(Reason::PassStackedVlan);
        }
        l3 = 18;
    }
    let (proto, dst, l4): (u8, Vec<u8>, usize) = match ether_type {
        0x0800 => {
            if b.len() < l3 + 20 {
                return drop(Reason::DropMalformedL3);
            }
            let ihl = (b[l3] & 0x0f) as usize;
            if b[l3] >> 4 != 4 || ihl < 5 || b.len() < l3 + ihl * 4 {
                return drop(Reason::DropMalformedL3);
            }
            if be16(b, l3 + 6) & 0x3fff != 0 {
                return pass(Reason::PassFragment);
            }
            let proto = b[l3 + 9];
            if ![6, 17, 1].contains(&proto) {
                return pass(Reason::PassOtherProto);
            }
            (proto, b[l3 + 16..l3 + 20].to_vec(), l3 + ihl * 4)
        }
        0x86dd => {
            if b.len() < l3 + 40 {
                return drop(Reason::DropMalformedL3);
            }
            if b[l3] >> 4 != 6 {
                return drop(Reason::DropMalformedL3);
            }
            let next = b[l3 + 6];
            if ![6, 17, 58].contains(&next) {
                return pass(if [0, 43, 44, 60, 51, 135].contains(&next) {
                    Reason::PassIpv6ExtHeader
                } else {
                    Reason::PassOtherProto
                });
            }
            (next, b[l3 + 24..l3 + 40].to_vec(), l3 + 40)
        }
        _ => return pass(Reason::PassNonIp),
    };
    if proto == 1 || proto == 58 {
        // No generated ICMP message quotes a tracked flow: the kernel's.
        return pass(Reason::PassIcmp);
    }
    let min = if proto == 6 { 20 } else { 8 };
    if b.len() < l4 + min || (proto == 6 && b[l4 + 12] >> 4 < 5) {
        return drop(Reason::DropMalformedL4);
    }
    let dport = be16(b, l4 + 2);
    let ours = SERVICES.iter().any(|(p, vip, port)| {
        let addr: std::net::IpAddr = vip.parse().unwrap();
        let bytes = match addr {
            std::net::IpAddr::V4(a) => a.octets().to_vec(),
            std::net::IpAddr::V6(a) => a.octets().to_vec(),
        };
        *p == proto && bytes == dst && *port == dport
    });
    if !ours {
        return pass(Reason::PassNotService);
    }
    // DR: only the Ethernet addresses change; the frame's destination (ours) becomes its source.
    let mut out = b.to_vec();
    out[6..12].copy_from_slice(&b[0..6]);
    out[0..6].copy_from_slice(&RS_MAC);
    Expect {
        verdict: verdict::TX,
        reason: Reason::TxDr,
        out,
    }
}

/// How a generated frame is made: a well-formed TCP or UDP frame, then changed.
#[derive(Debug, Clone)]
struct Recipe {
    v6: bool,
    to_vip: bool,
    port: u16,
    udp: bool,
    tcp_flags: u8,
    vlan_tags: u8,
    /// Replaces the IP protocol / next header (ICMP, other protocols, extension headers).
    proto: Option<u8>,
    payload: usize,
    /// Bytes overwritten: (position in the frame, modulo its length; value).
    writes: Vec<(usize, u8)>,
    /// The frame cut to this many bytes (14 or more: BPF_PROG_TEST_RUN refuses a frame shorter
    /// than an Ethernet header, as no driver delivers one).
    cut: Option<usize>,
}

fn recipe() -> impl Strategy<Value = Recipe> {
    (
        (
            any::<bool>(),
            prop::bool::weighted(0.8),
            prop_oneof![Just(80u16), Just(53), Just(443), any::<u16>()],
            any::<bool>(),
        ),
        (
            any::<u8>(),
            prop_oneof![6 => Just(0u8), 3 => Just(1), 1 => Just(2)],
        ),
        prop_oneof![
            6 => Just(None),
            1 => Just(Some(1u8)),
            1 => Just(Some(58u8)),
            1 => prop_oneof![Just(0u8), Just(43), Just(44), Just(60)].prop_map(Some),
            1 => any::<u8>().prop_map(Some),
        ],
        0usize..48,
        prop_oneof![
            3 => Just(Vec::new()),
            2 => prop::collection::vec((0usize..80, any::<u8>()), 1..4),
        ],
        prop_oneof![4 => Just(None), 1 => (0usize..90).prop_map(Some)],
    )
        .prop_map(
            |((v6, to_vip, port, udp), (tcp_flags, vlan_tags), proto, payload, writes, cut)| {
                Recipe {
                    v6,
                    to_vip,
                    port,
                    udp,
                    tcp_flags,
                    vlan_tags,
                    proto,
                    payload,
                    writes,
                    cut,
                }
            },
        )
}

fn build(r: &Recipe) -> Vec<u8> {
    let (src, dst) = match (r.v6, r.to_vip) {
        (false, true) => (CLIENT4, VIP4),
        (false, false) => (CLIENT4, "203.0.113.99"),
        (true, true) => (CLIENT6, VIP6),
        (true, false) => (CLIENT6, "2001:db8:10::99"),
    };
    let l4 = if r.udp {
        L4::Udp
    } else {
        L4::Tcp(Flags {
            syn: r.tcp_flags & 0x02 != 0,
            ack: r.tcp_flags & 0x10 != 0,
            fin: r.tcp_flags & 0x01 != 0,
            rst: r.tcp_flags & 0x04 != 0,
        })
    };
    let vlan = (r.vlan_tags > 0).then_some(7);
    let payload = vec![0x5a; r.payload];
    let mut f = frame(src, 40000, dst, r.port, l4, vlan, &payload);
    let l3 = if vlan.is_some() { 18 } else { 14 };
    if !r.udp {
        // Every flag byte, not only the combinations the builder knows.
        let l4_off = l3 + if r.v6 { 40 } else { 20 };
        f[l4_off + 13] = r.tcp_flags;
    }
    if let Some(p) = r.proto {
        f[l3 + if r.v6 { 6 } else { 9 }] = p;
    }
    if r.vlan_tags == 2 {
        // A second tag (QinQ) after the first.
        f.splice(16..16, [0x81, 0x00, 0x00, 0x08]);
    }
    let len = f.len();
    for &(at, v) in &r.writes {
        f[at % len] = v;
    }
    if let Some(cut) = r.cut {
        f.truncate(14 + cut % (len - 13));
    }
    f
}

#[test]
fn generated_frames_agree_with_the_host_model() {
    let cases: u32 = std::env::var("XVS_DIFF_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let d = RefCell::new(director());
    let seen = RefCell::new(std::collections::BTreeMap::<String, u32>::new());
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&recipe(), |r| {
        let f = build(&r);
        let want = model(&f);
        let mut d = d.borrow_mut();
        let before = d.reason(want.reason);
        let (v, out) = d.run(&f);
        let after = d.reason(want.reason);
        *seen
            .borrow_mut()
            .entry(format!("{:?}", want.reason))
            .or_default() += 1;
        prop_assert_eq!(v, want.verdict, "verdict of {:02x?} ({:?})", f, r);
        prop_assert_eq!(&out, &want.out, "output of {:02x?} ({:?})", f, r);
        prop_assert_eq!(
            after,
            before + 1,
            "{:?} counted once for {:02x?}",
            want.reason,
            f
        );
        Ok::<(), TestCaseError>(())
    });
    let seen = seen.into_inner();
    println!("{cases} frames, by expected reason: {seen:?}");
    if let Err(e) = result {
        panic!("{e}");
    }
    // The generator reaches every outcome the model knows (else the test proves less than it
    // says).
    for r in [
        Reason::TxDr,
        Reason::PassNotService,
        Reason::PassNonIp,
        Reason::PassFragment,
        Reason::PassOtherProto,
        Reason::PassIpv6ExtHeader,
        Reason::PassStackedVlan,
        Reason::PassIcmp,
        Reason::DropTruncatedL2,
        Reason::DropMalformedL3,
        Reason::DropMalformedL4,
    ] {
        assert!(
            seen.get(&format!("{r:?}")).copied().unwrap_or(0) > 0 || cases < 1000,
            "no generated frame expected {r:?}: {seen:?}"
        );
    }
}
