//! The connection table under floods: stated properties of xvs (README, "Connection table under
//! pressure"). Random-source SYNs, or spoofed SYN + ACK pairs, many times the table's size must
//! not break established connections, idle or active, nor keep new ones out; the director
//! counts the flood, and xvsd warns that the table is under pressure. Root required.
//!
//! Why it holds: CONNS is the kernel's LRU hash, which keeps entries whose node was looked up
//! after their insertion apart from the others, and evicts the latter first. Each spoofed SYN's
//! entry is used once; a spoofed pair's ACK looks its entry up too, but the data plane's proof
//! rule (lb-ebpf `conntrack`) re-inserts an entry, unreferenced, until the client's third
//! packet: only established connections (a handshake's ACK, then data) end up referenced. A
//! change of map type, of per-CPU layout or of how entries are touched could lose that
//! silently: these tests are there to notice.

use std::time::Duration;

use xvs_tests::{
    flood::{self, Kind, Scenario, ECHO_PORT},
    lab::{two_reals_with, VIP4},
    poll,
};

/// A small table, so that a short flood fills it many times over.
const TABLE: &str = "4096";

/// A lab with an rr echo service on two DR real servers and a `TABLE`-entry connection table,
/// flooded by `kind` for `secs` while 16 idle and 16 active connections are held: asserts the
/// flood was many times the table, left it full, and broke no established connection, and that
/// 10 new connections worked after it.
fn flooded(name: &str, kind: Kind, secs: u32) -> (xvs_tests::lab::Lab, flood::Outcome) {
    let lab = two_reals_with(name, &["--conn-table-size", TABLE]);
    let echo = flood::tcp_echo(&lab, 2).unwrap();
    let vip = format!("{VIP4}:{ECHO_PORT}");
    lab.xvsadm_ok(&["-A", "-t", &vip, "-s", "rr"]).unwrap();
    for i in 1..=2 {
        let rs = format!("{}:{ECHO_PORT}", xvs_tests::lab::rs_ip4(i));
        lab.xvsadm_ok(&["-a", "-t", &vip, "-r", &rs, "-g"]).unwrap();
    }
    let out = flood::run(
        &lab,
        Scenario {
            kind,
            idle: 16,
            active: 16,
            secs,
            new_conns: 10,
        },
    )
    .unwrap();
    drop(echo);
    println!("{name}: {out}");
    let capacity: u64 = TABLE.parse().unwrap();
    assert!(
        out.conn_new > 10 * capacity,
        "the director made only {} entries: not a flood ({out})",
        out.conn_new
    );
    let live = out.table["live"].as_u64().unwrap();
    assert!(
        live * 100 >= 90 * capacity,
        "the table is not full of the flood's entries: {out}"
    );
    assert_eq!(
        (out.idle_broken, out.active_broken, out.active_asks.1),
        (0, 0, 0),
        "established connections broken: {out}"
    );
    assert_eq!(out.new_ok, 10, "new connections after the flood: {out}");
    (lab, out)
}

#[test]
fn a_syn_flood_into_a_small_table_breaks_no_established_connection() {
    let (lab, out) = flooded("flood-syn", Kind::Syn, 3);
    // SYN-only packets are no mid-flow misses; established connections found their entries.
    assert_eq!(out.midflow, 0, "{out}");
    // xvsd warns about it, with the numbers (the fill the listing's walk found, checked at the
    // next 2-second sample).
    let line = poll(Duration::from_secs(6), "xvsd's pressure warning", || {
        lab.xvsd_log()
            .lines()
            .find(|l| l.contains("connection table under pressure"))
            .map(str::to_string)
    })
    .unwrap();
    assert!(line.contains("capacity=4096"), "{line}");
    let fill: u64 = line
        .split_once("fill_percent=")
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no fill_percent in {line}"));
    assert!(fill > 90, "{line}");
    // Metrics would show the same figures; the listing has them.
    let l = flood::listing(&lab).unwrap();
    let capacity: u64 = TABLE.parse().unwrap();
    assert_eq!(l["conn_table_size"].as_u64(), Some(capacity));
    let live = out.table["live"].as_u64().unwrap();
    assert!(l["table"]["entries"].as_u64().unwrap() >= live, "{l}");
}

/// Without the proof rule every pair's ACK referenced its entry, and active connections lost
/// theirs to the junk (README: 16 of 16 in measured runs).
#[test]
fn spoofed_syn_ack_pairs_into_a_small_table_break_no_established_connection() {
    flooded("flood-pairs", Kind::SynAckPairs, 4);
}
