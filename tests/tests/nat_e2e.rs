//! NAT end to end, one arm, as the LVS guide's NAT recipe has it: apache2 real servers without
//! the VIP and without ARP sysctls, listening on 8080 (the service is on 80), routing their
//! replies to the client through the director; curl from the client; xvsd attached in native
//! XDP mode, configured through xvsadm. Root required.

use std::time::Duration;

use xvs_tests::{
    lab::{rs_ip4, rs_ip6, tally, two_reals, Lab, VIP4, VIP6},
    netns, poll,
};

/// Turns the lab's DR real servers into NAT ones: no VIP, replies to the client via the
/// director (the client shares their segment, so a host route), and IP forwarding on the
/// director (its FIB lookups need it).
fn masquerade(lab: &Lab) {
    let dir = lab.ns("dir");
    let out = netns::sh(
        &dir,
        "sysctl -qw net.ipv4.conf.all.forwarding=1 net.ipv6.conf.all.forwarding=1",
    )
    .unwrap();
    assert!(out.status.success());
    for i in 1..=2 {
        let ns = lab.ns(&format!("rs{i}"));
        let script = format!(
            "set -e
            ip addr del {VIP4}/32 dev lo
            ip addr del {VIP6}/128 dev lo
            sysctl -qw net.ipv4.conf.all.arp_ignore=0 net.ipv4.conf.all.arp_announce=0 \
                net.ipv4.conf.eth0.arp_ignore=0 net.ipv4.conf.eth0.arp_announce=0
            ip route add 198.51.100.1/32 via 198.51.100.2
            ip -6 route add 2001:db8:1::1/128 via 2001:db8:1::2"
        );
        let out = netns::sh(&ns, &script).unwrap();
        assert!(
            out.status.success(),
            "rs{i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn nat_one_arm_with_port_mapping_serves_both_families_and_servers_see_the_client() {
    let mut lab = two_reals("nat-e2e");
    masquerade(&lab);
    for (vip, rs) in [
        (
            format!("{VIP4}:80"),
            [rs_ip4(1), rs_ip4(2)].map(|a| format!("{a}:8080")),
        ),
        (
            format!("[{VIP6}]:80"),
            [rs_ip6(1), rs_ip6(2)].map(|a| format!("[{a}]:8080")),
        ),
    ] {
        lab.xvsadm_ok(&["-A", "-t", &vip, "-s", "rr"]).unwrap();
        for r in &rs {
            lab.xvsadm_ok(&["-a", "-t", &vip, "-r", r, "-m"]).unwrap();
        }
    }
    let listing = lab.xvsadm_ok(&["-L", "-n"]).unwrap();
    assert_eq!(listing.matches(" Masq ").count(), 4, "{listing}");
    assert!(
        listing.contains(&format!("{}:8080", rs_ip4(1))),
        "{listing}"
    );

    for url in [format!("http://{VIP4}/"), format!("http://[{VIP6}]/")] {
        let bodies = lab.curl_many(&url, 10).unwrap();
        let t = tally(&bodies);
        assert_eq!(
            (t.get("rs1").copied(), t.get("rs2").copied()),
            (Some(5), Some(5)),
            "{url}: {bodies:?}\n{}",
            lab.xvsd_log()
        );
    }
    // The real servers saw the client's own address, on their port 8080.
    for i in 1..=2 {
        let log = lab.access_log(i);
        assert_eq!(
            log.lines()
                .filter(|l| l.starts_with("198.51.100.1 8080 /"))
                .count(),
            5,
            "rs{i}: {log}"
        );
        assert_eq!(
            log.lines()
                .filter(|l| l.starts_with("2001:db8:1::1 8080 /"))
                .count(),
            5,
            "rs{i}: {log}"
        );
    }
    // wrk: twenty connections at once for two seconds, every request answered.
    let out = netns::cmd_in(&lab.ns("cl"), "wrk")
        .args(["-t2", "-c20", "-d2s", &format!("http://{VIP4}/")])
        .output()
        .expect("wrk runs");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk: {report}");
    assert!(
        !report.contains("Socket errors") && !report.contains("Non-2xx"),
        "wrk saw errors through NAT:\n{report}"
    );
    let requests: u64 = report
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in ")
                .map(|(n, _)| n.parse().ok())
        })
        .flatten()
        .unwrap_or(0);
    assert!(requests > 100, "wrk: {report}");
    let reasons = lab.xvsadm_ok(&["-L", "-n", "--json"]).unwrap();
    let json: serde_json::Value = serde_json::from_str(&reasons).unwrap();
    assert!(
        json["reasons"]["tx_nat_reply"].as_u64().unwrap() > 0,
        "{reasons}"
    );
    assert_eq!(json["reasons"]["pass_nat_reply_unknown"], 0, "{reasons}");

    // A kept-alive connection keeps its real server through a change and a restart of xvsd:
    // both directions of its translation live in the pinned maps.
    let mut conn = lab.connect(format!("{VIP4}:80").parse().unwrap()).unwrap();
    let first = conn.get().unwrap();
    lab.xvsadm_ok(&["-A", "-t", "203.0.113.11:80", "-s", "wrr"])
        .unwrap();
    assert_eq!(conn.get().unwrap(), first);
    lab.stop_xvsd().unwrap();
    assert_eq!(conn.get().unwrap(), first, "while xvsd is down");
    lab.start_xvsd().unwrap();
    assert_eq!(conn.get().unwrap(), first, "after the restart");
    // The other real server is still served after the restart (the state was restored).
    poll(
        Duration::from_secs(10),
        "both real servers after restart",
        || {
            let t = tally(&lab.curl_many(&format!("http://{VIP4}/"), 4).ok()?);
            (t.len() == 2).then_some(())
        },
    )
    .unwrap();
}

#[test]
fn nat_carries_udp_both_ways_and_the_client_hears_the_vip() {
    let lab = two_reals("nat-udp");
    masquerade(&lab);
    let _echo = lab.udp_echo();
    for (vip, rs) in [
        (
            format!("{VIP4}:53"),
            [rs_ip4(1), rs_ip4(2)].map(|a| format!("{a}:5353")),
        ),
        (
            format!("[{VIP6}]:53"),
            [rs_ip6(1), rs_ip6(2)].map(|a| format!("[{a}]:5353")),
        ),
    ] {
        lab.xvsadm_ok(&["-A", "-u", &vip, "-s", "rr"]).unwrap();
        for r in &rs {
            lab.xvsadm_ok(&["-a", "-u", &vip, "-r", r, "-m"]).unwrap();
        }
        // Ten flows: a connected socket takes only answers from the VIP.
        let answers = lab.udp_ask(vip.parse().unwrap(), 10);
        let t = tally(&answers);
        assert_eq!(
            (t.get("rs1").copied(), t.get("rs2").copied()),
            (Some(5), Some(5)),
            "{vip}: {answers:?}\n{}",
            lab.xvsd_log()
        );
    }
}
