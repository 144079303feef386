//! End-to-end scheduler behaviour in namespaces: apache2 real servers, curl and long-lived
//! connections from the client, xvsd in native XDP mode, configured with xvsadm. Root required.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use xvs_tests::lab::{rs_ip4, rs_ip6, tally, two_reals as lab, Lab, VIP4, VIP6};

/// `-L -n` line of a real server: (weight, ActiveConn, InActConn).
fn counts(lab: &Lab, real: &str) -> (u64, u64, u64) {
    let out = lab.xvsadm_ok(&["-L", "-n"]).unwrap();
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("->") && l.contains(real))
        .unwrap_or_else(|| panic!("{real} not listed:\n{out}"));
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(3)
        .map(|x| x.parse().unwrap())
        .collect();
    (f[0], f[1], f[2])
}

/// Polls until `cond` holds (or fails with `what` after the deadline).
fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn service(lab: &Lab, vip: &str, opts: &[&str], reals: &[(&str, u32)]) {
    let mut a = vec!["-A", "-t", vip];
    a.extend_from_slice(opts);
    lab.xvsadm_ok(&a).unwrap();
    for (r, w) in reals {
        let w = w.to_string();
        lab.xvsadm_ok(&["-a", "-t", vip, "-r", r, "-g", "-w", &w])
            .unwrap();
    }
}

#[test]
fn wlc_sends_new_connections_away_from_long_lived_ones_and_lc_splits_a_burst() {
    let lab = lab("e2e-wlc");
    let vip = format!("{VIP4}:80");
    let (rs1, rs2) = (format!("{}:80", rs_ip4(1)), format!("{}:80", rs_ip4(2)));
    // rs2 quiesced while ten long-lived connections land on rs1.
    service(&lab, &vip, &["-s", "wlc"], &[(&rs1, 1), (&rs2, 0)]);
    let mut held = Vec::new();
    for _ in 0..10 {
        let mut c = lab.connect(vip.parse().unwrap()).unwrap();
        assert_eq!(c.get().unwrap(), "rs1");
        held.push(c);
    }
    lab.xvsadm_ok(&["-e", "-t", &vip, "-r", &rs2, "-g", "-w", "1"])
        .unwrap();
    // The controller counts them (one recomputation period) ...
    wait_for(
        "rs1 to show 10 active connections",
        Duration::from_secs(5),
        || counts(&lab, &rs1).1 == 10,
    );
    // ... and wlc sends the next ten new connections to rs2: the plan counts each as active
    // until its next refresh from the live counts, so rs2 takes them until its load equals
    // rs1's ten.
    let t = tally(&lab.curl_many(&format!("http://{VIP4}/"), 10).unwrap());
    assert_eq!(
        t,
        BTreeMap::from([("rs2".to_string(), 10)]),
        "wlc; xvsd log:\n{}",
        lab.xvsd_log()
    );
    // The held connections stayed where they were.
    for c in &mut held {
        assert_eq!(c.get().unwrap(), "rs1");
    }
    drop(held);

    // lc: a burst of 1,000 new connections between two servers of equal load. The plan hands
    // them out alternately (ties go to the first server), refreshed every 100 ms from counts
    // that grow equally: expect 500 each, within 5% (450..=550) for the recomputations that
    // land mid-burst with unequal closing states.
    lab.xvsadm_ok(&["-C"]).unwrap();
    service(&lab, &vip, &["-s", "lc"], &[(&rs1, 1), (&rs2, 1)]);
    let bodies = lab.curl_many(&format!("http://{VIP4}/"), 1000).unwrap();
    assert_eq!(bodies.len(), 1000, "every request answered");
    let t = tally(&bodies);
    eprintln!("lc burst of 1000: {t:?}");
    for rs in ["rs1", "rs2"] {
        let n = t.get(rs).copied().unwrap_or(0);
        assert!((450..=550).contains(&n), "lc: {rs} got {n} of 1000: {t:?}");
    }
}

#[test]
fn sh_keeps_a_client_on_one_server_and_persistence_keeps_it_across_ports() {
    let lab = lab("e2e-sh");
    for (vip, rs1, rs2, host) in [
        (
            format!("{VIP4}:80"),
            format!("{}:80", rs_ip4(1)),
            format!("{}:80", rs_ip4(2)),
            VIP4.to_string(),
        ),
        (
            format!("[{VIP6}]:80"),
            format!("[{}]:80", rs_ip6(1)),
            format!("[{}]:80", rs_ip6(2)),
            format!("[{VIP6}]"),
        ),
    ] {
        service(&lab, &vip, &["-s", "sh"], &[(&rs1, 1), (&rs2, 1)]);
        let t = tally(&lab.curl_many(&format!("http://{host}/"), 30).unwrap());
        assert_eq!(t.len(), 1, "{vip}: sh moved the client: {t:?}");
        assert_eq!(t.values().sum::<usize>(), 30);
        lab.xvsadm_ok(&["-D", "-t", &vip]).unwrap();
    }

    // Persistence across ports: a port-0 service (every port of the VIP) with -p 60. Without
    // persistence rr would alternate; with it, the client stays on one server on both ports.
    let vip0 = format!("{VIP4}:0");
    let (r1, r2) = (rs_ip4(1), rs_ip4(2));
    service(
        &lab,
        &vip0,
        &["-s", "rr", "-p", "60"],
        &[(&r1, 1), (&r2, 1)],
    );
    let listing = lab.xvsadm_ok(&["-L", "-n"]).unwrap();
    assert!(
        listing.contains(&format!("TCP  {VIP4}:0 rr persistent 60")),
        "{listing}"
    );
    let mut bodies = Vec::new();
    for _ in 0..5 {
        bodies.extend(lab.curl_many(&format!("http://{VIP4}:80/"), 2).unwrap());
        bodies.extend(lab.curl_many(&format!("http://{VIP4}:8080/"), 2).unwrap());
    }
    let t = tally(&bodies);
    assert_eq!(bodies.len(), 20, "{t:?}");
    assert_eq!(t.len(), 1, "persistence across ports: {t:?}");
    // The template shows up in --persistent-conn, and -L -c lists the connections.
    let pc = lab.xvsadm_ok(&["-L", "-n", "--persistent-conn"]).unwrap();
    assert!(
        pc.lines()
            .any(|l| l.contains("->") && l.split_whitespace().nth(3) == Some("1")),
        "one persistence template:\n{pc}"
    );
    let conns = lab.xvsadm_ok(&["-L", "-c", "-n"]).unwrap();
    assert!(
        conns.starts_with("IPVS connection entries\npro expire state"),
        "{conns}"
    );
    assert!(conns.contains(&format!("{VIP4}:8080")), "{conns}");
    // The client's persistence template is listed as IPVS lists one: state NONE, port 0.
    assert!(
        conns.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() == 6 && f[2] == "NONE" && f[3].ends_with(":0") && f[4] == format!("{VIP4}:0")
        }),
        "{conns}"
    );
}

#[test]
fn service_group_keeps_a_client_on_one_server_across_its_matches() {
    let lab = lab("e2e-group");
    let (m80, m8080) = (format!("tcp:{VIP4}:80"), format!("tcp:{VIP4}:8080"));
    // ipvsadm's fwmark service, with the matches an iptables MARK rule would have set.
    lab.xvsadm_ok(&[
        "-A", "-f", "1", "-s", "rr", "-p", "60", "--match", &m80, "--match", &m8080,
    ])
    .unwrap();
    for i in 1..=2 {
        lab.xvsadm_ok(&["-a", "-f", "1", "-r", &rs_ip4(i), "-g", "-w", "1"])
            .unwrap();
    }
    let listing = lab.xvsadm_ok(&["-L", "-n"]).unwrap();
    assert!(listing.contains("\nFWM  1 rr persistent 60\n"), "{listing}");
    assert!(
        listing.contains(&format!("  -> {}:0 ", rs_ip4(1))),
        "{listing}"
    );
    let mut bodies = Vec::new();
    for _ in 0..10 {
        bodies.extend(lab.curl_many(&format!("http://{VIP4}:80/"), 1).unwrap());
        bodies.extend(lab.curl_many(&format!("http://{VIP4}:8080/"), 1).unwrap());
    }
    let t = tally(&bodies);
    assert_eq!(bodies.len(), 20, "every request answered: {t:?}");
    assert_eq!(t.len(), 1, "one server for both matches: {t:?}");

    // A normal service cannot take a group's match; nothing changes.
    let out = lab
        .xvsadm(&["-A", "-t", &format!("{VIP4}:8080"), "-s", "rr"])
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already taken by FWM 1"), "{err}");

    // -S carries the matches, and a group restored without them (as ipvsadm wrote it) is
    // accepted with a warning and listed.
    let saved = lab.xvsadm_ok(&["-S", "-n"]).unwrap();
    assert!(
        saved.starts_with(&format!(
            "-A -f 1 -s rr -p 60 --match {m80} --match {m8080}\n"
        )),
        "{saved}"
    );
    let out = lab.xvsadm(&["-A", "-f", "2", "-s", "rr"]).unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning: FWM 2 matches no traffic"), "{err}");
    let listing = lab.xvsadm_ok(&["-L", "-n"]).unwrap();
    assert!(listing.contains("\nFWM  2 rr\n"), "{listing}");
    let json = lab.xvsadm_ok(&["-L", "-n", "--json"]).unwrap();
    assert!(
        json.contains("\"fwmark\": 1") && json.contains(&m8080.replace("tcp:", "")),
        "{json}"
    );
}
