//! Hitless restarts and upgrades, the layout check, `--cleanup`, and the metrics endpoint, end
//! to end: real apache2 servers, curl from the client namespace, xvsd pinned in the lab's bpffs.
//! Root required.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, HashMap as BpfHashMap, Map, MapData},
    programs::links::{FdLink, PinnedLink},
};
use lb_common::{ConnEntry, FlowKey, Meta};
use serde_json::Value;
use xvs_tests::{
    lab::{rs_ip4, rs_ip6, two_reals_with, HttpConn, Lab, VIP4, VIP6},
    load::Load,
    netns, poll,
};

const METRICS: &str = "127.0.0.1:9917";

fn vip() -> String {
    format!("{VIP4}:80")
}

fn url() -> String {
    format!("http://{VIP4}/")
}

/// An rr service on the IPv4 VIP with both real servers.
fn setup(lab: &Lab) {
    lab.xvsadm_ok(&["-A", "-t", &vip(), "-s", "rr"]).unwrap();
    for i in 1..=2 {
        lab.xvsadm_ok(&["-a", "-t", &vip(), "-r", &format!("{}:80", rs_ip4(i)), "-g"])
            .unwrap();
    }
}

/// `xvsadm -L -n --json`.
fn listing(lab: &Lab) -> Value {
    serde_json::from_str(&lab.xvsadm_ok(&["-L", "-n", "--json"]).unwrap()).unwrap()
}

/// New-connection and packet counters of the first service, and of each of its real servers.
fn counters(lab: &Lab) -> (u64, u64, Vec<u64>) {
    let l = listing(lab);
    let s = &l["services"][0];
    (
        s["stats"]["conns"].as_u64().unwrap(),
        s["stats"]["packets"].as_u64().unwrap(),
        s["reals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["stats"]["conns"].as_u64().unwrap())
            .collect(),
    )
}

/// (link id, program id) of the pinned XDP link.
fn link_ids(lab: &Lab) -> (u32, u32) {
    let link: FdLink = PinnedLink::from_pin(lab.pin_dir().join("link"))
        .expect("pinned link")
        .into();
    let info = link.info().expect("link info");
    (info.id(), info.program_id())
}

/// Ids of the programs in the pinned tail-call table (the TUN, ICMP and NAT programs), by index.
fn tail_programs(lab: &Lab) -> Vec<u32> {
    let path = lab.pin_dir().join("TAIL_CALLS");
    let out = netns::run(
        std::process::Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(&path),
    )
    .unwrap();
    let entries: Value = serde_json::from_slice(&out.stdout).unwrap();
    let byte =
        |v: &Value| u8::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap();
    let mut ids: Vec<(u32, u32)> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let word = |k: &str| {
                let b: Vec<u8> = e[k].as_array().unwrap().iter().map(byte).collect();
                u32::from_le_bytes(b[..4].try_into().unwrap())
            };
            (word("key"), word("value"))
        })
        .collect();
    ids.sort();
    ids.into_iter().map(|(_, id)| id).collect()
}

/// The pinned connection table.
fn conn_table(lab: &Lab) -> HashMap<FlowKey, ConnEntry> {
    let data = MapData::from_pin(lab.pin_dir().join("CONNS")).expect("pinned CONNS");
    let map: BpfHashMap<MapData, FlowKey, ConnEntry> =
        BpfHashMap::try_from(Map::LruHashMap(data)).expect("CONNS is an LRU hash");
    map.iter().filter_map(|r| r.ok()).collect()
}

/// Rewrites the pinned META record.
fn edit_meta(lab: &Lab, f: impl FnOnce(&mut Meta)) {
    let data = MapData::from_pin(lab.pin_dir().join("META")).expect("pinned META");
    let mut meta: Array<MapData, Meta> = Array::try_from(Map::Array(data)).unwrap();
    let mut m = meta.get(&0, 0).unwrap();
    f(&mut m);
    meta.set(0, m, 0).unwrap();
}

fn xdp_on_director(lab: &Lab) -> bool {
    let out = netns::sh(&lab.ns("dir"), "ip link show dev eth0").unwrap();
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

/// Keep-alive connections to the VIP, each with the real server that answered its first
/// request.
fn hold(lab: &Lab, n: usize) -> Vec<(HttpConn, String)> {
    (0..n)
        .map(|_| {
            let mut c = lab.connect(vip().parse().unwrap()).unwrap();
            let body = c.get().unwrap();
            (c, body)
        })
        .collect()
}

fn check_held(held: &mut [(HttpConn, String)], when: &str) {
    for (i, (c, server)) in held.iter_mut().enumerate() {
        let body = c
            .get()
            .unwrap_or_else(|e| panic!("held connection {i} failed {when}: {e}"));
        assert_eq!(&body, server, "held connection {i} moved {when}");
    }
}

/// Scrapes the metrics endpoint from inside the director namespace.
fn scrape(lab: &Lab, path: &str) -> (String, String) {
    let out = netns::run(netns::cmd_in(&lab.ns("dir"), "curl").args([
        "-s",
        "-m",
        "5",
        "-w",
        "\n%{http_code}",
        &format!("http://{METRICS}{path}"),
    ]))
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.to_string(), body.to_string())
}

/// Samples of a text exposition: `name{labels}` -> value. Fails on a line that is not a
/// comment or a sample, and on a sample whose family was not announced with # TYPE first.
fn parse_exposition(text: &str) -> BTreeMap<String, f64> {
    let mut typed = std::collections::HashSet::new();
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut w = rest.split_whitespace();
            typed.insert(w.next().unwrap().to_string());
            assert!(
                matches!(w.next(), Some("counter" | "gauge" | "histogram")),
                "{line}"
            );
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let name = series.split('{').next().unwrap();
        // A histogram's samples carry suffixes of its family's name.
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(
            typed.contains(family),
            "{name} sampled before its # TYPE line"
        );
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(
            out.insert(series.to_string(), value).is_none(),
            "{series} twice"
        );
    }
    out
}

#[test]
fn sigkill_under_load_fails_no_request_and_the_new_xvsd_adopts_the_pinned_state() {
    let mut lab = two_reals_with("xvspn-kill", &["--metrics", METRICS]);
    setup(&lab);
    let mut held = hold(&lab, 4);
    let rules = lab.xvsadm_ok(&["-S", "-n"]).unwrap();
    let load = Load::start(&lab.ns("cl"), &url(), 50_000, Duration::from_secs(180));
    load.wait_for_more(100, Duration::from_secs(30)).unwrap();
    let (conns_before, packets_before, _) = counters(&lab);

    let killed = Instant::now();
    lab.kill_xvsd().unwrap();
    let at_kill = load.done();
    // No xvsd at all: the pinned director keeps balancing new connections and keeps the
    // established ones on their servers (an outage of 500 new connections).
    load.wait_for_more(500, Duration::from_secs(60)).unwrap();
    assert!(
        xdp_on_director(&lab),
        "the director detached when xvsd died"
    );
    check_held(&mut held, "while xvsd was dead");
    // The tail-called TUN, ICMP, NAT and NAT-ICMP programs stay in their table (the pin keeps it from being
    // emptied when xvsd's descriptors close).
    assert_eq!(
        tail_programs(&lab).len(),
        lb_common::TAIL_NAT_ICMP as usize + 1
    );

    lab.start_xvsd().unwrap();
    let answering = killed.elapsed();
    let at_restore = load.done();
    let log = lab.xvsd_log();
    assert!(
        log.contains("adopted the pinned data plane"),
        "the new xvsd did not adopt:\n{log}"
    );
    // The new xvsd restored its saved configuration as the first sync after the adoption.
    assert!(log.contains("configuration loaded"), "{log}");
    let restored = answering;
    assert_eq!(lab.xvsadm_ok(&["-S", "-n"]).unwrap(), rules);
    let (_, metrics) = scrape(&lab, "/metrics");
    let m = parse_exposition(&metrics);
    assert_eq!(m.get("xvs_dataplane_adopted"), Some(&1.0), "{metrics}");
    assert_eq!(
        m.get("xvs_dataplane_adoption_pending"),
        Some(&0.0),
        "{metrics}"
    );
    load.wait_for_more(200, Duration::from_secs(30)).unwrap();
    let report = load.stop().unwrap();

    println!(
        "sigkill: {} requests ({} while xvsd was down or unconfigured), {} failed; xvsd answered \
         {answering:?} after SIGKILL, configuration restored after {restored:?}",
        report.ok + report.failed,
        at_restore - at_kill,
        report.failed
    );
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.failures);
    check_held(&mut held, "after the restart");
    // Counters continued: everything the data plane did while xvsd was away is still counted.
    let (conns_after, packets_after, per_real) = counters(&lab);
    assert!(
        conns_after >= conns_before + (at_restore - at_kill),
        "connection counter reset: {conns_before} before the kill, {conns_after} after, {} \
         requests in between",
        at_restore - at_kill
    );
    assert!(packets_after > packets_before);
    assert!(per_real.iter().all(|&c| c > 0), "{per_real:?}");
    // The held connections are still counted as their servers' active connections.
    let l = listing(&lab);
    let active: u64 = l["services"][0]["reals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["active_conns"].as_u64().unwrap())
        .sum();
    assert!(active >= 4, "held connections not counted as active: {l}");
    let (_, metrics) = scrape(&lab, "/metrics");
    let m = parse_exposition(&metrics);
    assert_eq!(m.get("xvs_dataplane_adoption_pending"), Some(&0.0));
}

#[test]
fn upgrade_under_load_swaps_the_program_on_the_same_link_and_keeps_the_connection_table() {
    let mut lab = two_reals_with("xvspn-upg", &[]);
    setup(&lab);
    let mut held = hold(&lab, 4);
    let rules = lab.xvsadm_ok(&["-S", "-n"]).unwrap();
    let load = Load::start(&lab.ns("cl"), &url(), 50_000, Duration::from_secs(180));
    load.wait_for_more(100, Duration::from_secs(30)).unwrap();
    let (link_before, prog_before) = link_ids(&lab);
    let tail_before = tail_programs(&lab);
    let (conns_before, _, _) = counters(&lab);
    let table_before = conn_table(&lab);

    // A new xvsd loads its program (the same object: a rebuild would differ only in code) and
    // swaps it in on the pinned link.
    let began = Instant::now();
    lab.stop_xvsd().unwrap();
    let at_stop = load.done();
    // The configuration restored by hand, as without a saved state: the first sync after the
    // adoption comes from xvsadm -R.
    lab.start_xvsd_with(&["--reset-state"]).unwrap();
    let answering = began.elapsed();
    lab.xvsadm_restore(&rules).unwrap();
    let restored = began.elapsed();
    let at_restore = load.done();
    load.wait_for_more(200, Duration::from_secs(30)).unwrap();
    let report = load.stop().unwrap();

    let (link_after, prog_after) = link_ids(&lab);
    assert_eq!(
        link_after, link_before,
        "the link was replaced: the interface was without the director for a while"
    );
    assert_ne!(prog_after, prog_before, "the program was not replaced");
    // The tail-called programs were replaced by the new build's too, every slot filled.
    let tail_after = tail_programs(&lab);
    assert_eq!(tail_after.len(), lb_common::TAIL_NAT_ICMP as usize + 1);
    assert!(
        tail_after.iter().all(|id| !tail_before.contains(id)),
        "tail-call table still runs old programs: {tail_before:?} -> {tail_after:?}"
    );
    let table_after = conn_table(&lab);
    // xvsd's sweep removes entries that expired meanwhile (short requests' CLOSE and
    // FIN_WAIT entries): those are no loss. Any other entry must still be there.
    let now = lb_user::dataplane::monotonic_ns();
    let cfg = lb_common::DataplaneConfig::default();
    let expired = |e: &ConnEntry| {
        let state = lb_common::ConnState::from_u8(e.state);
        now.saturating_sub(e.last_seen_ns) > lb_user::dataplane::timeout_of(&cfg, state)
    };
    let swept = table_before
        .iter()
        .filter(|(k, e)| !table_after.contains_key(k) && expired(e))
        .count();
    let lost: Vec<&FlowKey> = table_before
        .iter()
        .filter(|(k, e)| !table_after.contains_key(k) && !expired(e))
        .map(|(k, _)| k)
        .collect();
    println!(
        "upgrade: program {prog_before} -> {prog_after} on link {link_before}; connection table \
         {} entries before, {} after, {} lost ({swept} expired ones swept); {} requests ({} during \
         the upgrade), {} failed; xvsd answered after {answering:?}, configuration restored after \
         {restored:?}",
        table_before.len(),
        table_after.len(),
        lost.len(),
        report.ok + report.failed,
        at_restore - at_stop,
        report.failed
    );
    assert!(lost.is_empty(), "{} entries lost", lost.len());
    // The held connections' entries kept their real server (slot and generation). Only
    // theirs: a short request's connection, established in the snapshot, may have closed
    // since and its tuple be reused by a new connection, which rr schedules afresh (seen in
    // CI once: slot 1 -> 0).
    let held_ports: Vec<u16> = held
        .iter()
        .map(|(c, _)| c.local_addr().expect("held connection's address").port())
        .collect();
    let mut checked = 0;
    for (k, e) in table_before.iter().filter(|(k, e)| {
        lb_common::ConnState::from_u8(e.state) == lb_common::ConnState::Established
            && held_ports.contains(&u16::from_be(k.sport_be))
    }) {
        let now = table_after[k];
        assert_eq!((now.backend, now.generation), (e.backend, e.generation));
        checked += 1;
    }
    assert_eq!(
        checked,
        held.len(),
        "every held connection's entry was checked"
    );
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.failures);
    check_held(&mut held, "after the upgrade");
    let (conns_after, _, _) = counters(&lab);
    assert!(
        conns_after >= conns_before + (at_restore - at_stop),
        "counters reset: {conns_before} -> {conns_after}"
    );
    assert!(lab
        .xvsd_log()
        .contains(&format!("previous_program={prog_before}")));
}

#[test]
fn incompatible_layout_is_refused_unless_forced_and_cleanup_removes_everything() {
    let mut lab = two_reals_with("xvspn-layout", &[]);
    setup(&lab);
    assert_eq!(lab.curl_many(&url(), 4).unwrap().len(), 4);
    lab.stop_xvsd().unwrap();
    let (link, prog) = link_ids(&lab);
    let refused = |lab: &Lab, extra: &[&str], why: &str| {
        let out = lab.xvsd_once(extra).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?}: started: {stderr}");
        assert!(
            stderr.contains("is incompatible with this xvsd")
                && stderr.contains(why)
                && stderr.contains("--force-reload"),
            "{extra:?}: {stderr}"
        );
        // Refused means untouched: the same program forwards with the same tables.
        assert_eq!(link_ids(lab), (link, prog));
        assert_eq!(lab.curl_many(&url(), 2).unwrap().len(), 2);
    };
    let version = lb_common::LAYOUT_VERSION;
    edit_meta(&lab, |m| m.layout_version = version + 1);
    refused(
        &lab,
        &[],
        &format!(
            "layout version {} is pinned, this xvsd has version {version}",
            version + 1
        ),
    );
    edit_meta(&lab, |m| {
        m.layout_version = version;
        let conns = m.maps.iter_mut().find(|l| l.name_str() == "CONNS").unwrap();
        conns.value_size += 8;
    });
    refused(&lab, &[], "map CONNS: value size");
    edit_meta(&lab, |m| {
        let conns = m.maps.iter_mut().find(|l| l.name_str() == "CONNS").unwrap();
        conns.value_size -= 8;
    });
    refused(
        &lab,
        &["--conn-table-size", "4096"],
        "map CONNS: entries 1048576 pinned, 4096 wanted (--conn-table-size)",
    );

    // Forced: the old data plane is detached and a fresh one attached; its state is gone.
    edit_meta(&lab, |m| m.layout_version = version + 1);
    // (--reset-state: the saved configuration is forgotten too, so xvsd starts empty.)
    lab.start_xvsd_with(&["--force-reload", "--reset-state"])
        .unwrap();
    let log = lab.xvsd_log();
    assert!(
        log.contains("--force-reload: detaching the incompatible pinned data plane")
            && log.contains("are lost"),
        "{log}"
    );
    let (new_link, _) = link_ids(&lab);
    assert_ne!(new_link, link, "not reloaded");
    assert_eq!(lab.xvsadm_ok(&["-S", "-n"]).unwrap(), "");
    assert!(
        lab.curl_many(&url(), 1).unwrap().is_empty(),
        "no service yet"
    );
    setup(&lab);
    assert_eq!(lab.curl_many(&url(), 2).unwrap().len(), 2);

    // --cleanup is refused while xvsd runs, and detaches and unpins once it is stopped.
    let out = lab.xvsd_once(&["--cleanup"]).unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use by a running xvsd"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.stop_xvsd().unwrap();
    assert!(xdp_on_director(&lab), "SIGTERM detached the director");
    assert_eq!(
        lab.curl_many(&url(), 2).unwrap().len(),
        2,
        "not forwarding after SIGTERM"
    );
    let out = lab.xvsd_once(&["--cleanup"]).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("detached the director from eth0"),
        "{stdout}"
    );
    assert!(
        !lab.pin_dir().exists(),
        "pins left: {:?}",
        std::fs::read_dir(lab.pin_dir()).map(|d| d.count())
    );
    assert!(!xdp_on_director(&lab), "still attached after --cleanup");
    assert!(
        lab.curl_many(&url(), 1).unwrap().is_empty(),
        "still balancing"
    );
    // Nothing left: a second cleanup has nothing to do, and a new xvsd starts afresh.
    let out = lab.xvsd_once(&["--cleanup"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing pinned"));
    lab.start_xvsd().unwrap();
    assert!(lab.xvsd_log().contains("director attached and pinned"));
}

#[test]
fn metrics_endpoint_serves_every_reason_and_the_counters_xvsadm_shows() {
    let lab = two_reals_with("xvspn-metrics", &["--metrics", METRICS]);
    setup(&lab);
    let vip6 = format!("[{VIP6}]:80");
    lab.xvsadm_ok(&["-A", "-t", &vip6, "-s", "wrr"]).unwrap();
    lab.xvsadm_ok(&[
        "-a",
        "-t",
        &vip6,
        "-r",
        &format!("[{}]:80", rs_ip6(1)),
        "-g",
        "-w",
        "2",
    ])
    .unwrap();
    assert_eq!(lab.curl_many(&url(), 20).unwrap().len(), 20);
    assert_eq!(
        lab.curl_many(&format!("http://[{VIP6}]/"), 10)
            .unwrap()
            .len(),
        10
    );
    // The listing and the scrape agree once traffic has settled (late ACKs may still come in:
    // compare a scrape taken between two equal listings).
    let (metrics, l) = poll(Duration::from_secs(20), "a quiet listing", || {
        let a = lab.xvsadm_ok(&["-L", "-n", "--json"]).unwrap();
        let (code, metrics) = scrape(&lab, "/metrics");
        assert_eq!(code, "200");
        let b = lab.xvsadm_ok(&["-L", "-n", "--json"]).unwrap();
        let strip = |s: &str| {
            let mut v: Value = serde_json::from_str(s).unwrap();
            v["reasons"] = Value::Null;
            v
        };
        (strip(&a) == strip(&b)).then(|| (metrics, strip(&b)))
    })
    .unwrap();
    let m = parse_exposition(&metrics);
    for r in lb_common::Reason::ALL {
        let series = format!("xvs_dataplane_reason_total{{reason=\"{}\"}}", r.name());
        assert!(m.contains_key(&series), "{series} missing:\n{metrics}");
    }
    assert!(m[r#"xvs_dataplane_reason_total{reason="conn_new"}"#] >= 30.0);
    let mut checked = 0;
    for s in l["services"].as_array().unwrap() {
        let key = &s["key"];
        let service = format!("TCP {}", key["addr"].as_str().unwrap());
        for (metric, field) in [
            ("xvs_service_connections_total", "conns"),
            ("xvs_service_packets_total", "packets"),
            ("xvs_service_bytes_total", "bytes"),
        ] {
            let series = format!("{metric}{{service=\"{service}\"}}");
            assert_eq!(
                m.get(&series).copied(),
                s["stats"][field].as_u64().map(|v| v as f64),
                "{series}:\n{metrics}"
            );
        }
        for r in s["reals"].as_array().unwrap() {
            let labels = format!(
                "service=\"{service}\",real=\"{}\"",
                r["addr"].as_str().unwrap()
            );
            for (metric, value) in [
                ("xvs_real_connections_total", &r["stats"]["conns"]),
                ("xvs_real_packets_total", &r["stats"]["packets"]),
                ("xvs_real_bytes_total", &r["stats"]["bytes"]),
                ("xvs_real_active_connections", &r["active_conns"]),
                ("xvs_real_inactive_connections", &r["inactive_conns"]),
                ("xvs_real_weight", &r["weight"]),
            ] {
                let series = format!("{metric}{{{labels}}}");
                assert_eq!(
                    m.get(&series).copied(),
                    value.as_u64().map(|v| v as f64),
                    "{series}:\n{metrics}"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 3, "three real servers in two services");
    // The figures xvsadm shows are the ones above: 20 + 10 new connections.
    let stats = lab.xvsadm_ok(&["-L", "-n", "--stats", "--exact"]).unwrap();
    assert!(
        m[&format!("xvs_service_connections_total{{service=\"TCP {VIP4}:80\"}}")] == 20.0
            && stats
                .lines()
                .any(|l| l.starts_with(&format!("TCP  {VIP4}:80"))
                    && l.split_whitespace().nth(2) == Some("20")),
        "{stats}\n{metrics}"
    );
    for scalar in [
        "xvs_controller_syncs_total",
        "xvs_controller_sync_last_seconds",
        "xvs_controller_recomputations_total",
        "xvs_controller_recomputation_last_seconds",
        "xvs_controller_sweep_cycles_total",
        "xvs_controller_swept_total",
        "xvs_uptime_seconds",
        "xvs_dataplane_adopted",
        "xvs_conn_table_capacity",
    ] {
        assert!(m.contains_key(scalar), "{scalar} missing");
    }
    assert!(m["xvs_controller_syncs_total"] >= 5.0, "{metrics}");
    assert_eq!(m["xvs_dataplane_adopted"], 0.0);
    assert!(metrics.contains(r#"xvs_start_info{mode="fresh""#));
    assert_eq!(scrape(&lab, "/nothing").0, "404");
}
