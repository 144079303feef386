//! FULLNAT end to end, one arm: apache2 real servers with no configuration for the balancer at
//! all (no VIP, no ARP sysctls, no route through the director), a local address on the
//! director, curl and wrk from the client, xvsd attached in native XDP mode and configured
//! through xvsadm with DPVS's commands. Root required.

use std::time::Duration;

use xvs_tests::{
    lab::{rs_ip4, rs_ip6, tally, two_reals_with, Lab, VIP4, VIP6},
    netns, poll,
};

/// The director's local addresses (on the lab segment).
const LIP4: &str = "198.51.100.9";
const LIP6: &str = "2001:db8:1::9";

/// Undoes the lab's direct-routing setup on the real servers (the VIP on lo, the ARP
/// sysctls): a FULLNAT real server is any host that answers its clients. The director gets its
/// local addresses and IP forwarding (its FIB lookups need it).
fn plain_real_servers(lab: &Lab) {
    let script = format!(
        "set -e
        sysctl -qw net.ipv4.conf.all.forwarding=1 net.ipv6.conf.all.forwarding=1
        ip addr add {LIP4}/24 dev eth0
        ip addr add {LIP6}/64 dev eth0 nodad"
    );
    let out = netns::sh(&lab.ns("dir"), &script).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 1..=2 {
        let script = format!(
            "set -e
            ip addr del {VIP4}/32 dev lo
            ip addr del {VIP6}/128 dev lo
            sysctl -qw net.ipv4.conf.all.arp_ignore=0 net.ipv4.conf.all.arp_announce=0 \
                net.ipv4.conf.eth0.arp_ignore=0 net.ipv4.conf.eth0.arp_announce=0"
        );
        let out = netns::sh(&lab.ns(&format!("rs{i}")), &script).unwrap();
        assert!(
            out.status.success(),
            "rs{i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn fullnat_serves_both_families_and_real_servers_see_the_local_address() {
    let mut lab = two_reals_with("fnat-e2e", &["--audit-fullnat"]);
    plain_real_servers(&lab);
    for (vip, lip, rs) in [
        (
            format!("{VIP4}:80"),
            LIP4,
            [rs_ip4(1), rs_ip4(2)].map(|a| format!("{a}:8080")),
        ),
        (
            format!("[{VIP6}]:80"),
            LIP6,
            [rs_ip6(1), rs_ip6(2)].map(|a| format!("[{a}]:8080")),
        ),
    ] {
        lab.add_fullnat("-t", &vip, lip, &["-F", "eth0"], &rs)
            .unwrap();
    }
    let listing = lab.xvsadm_ok(&["-L", "-n"]).unwrap();
    assert_eq!(listing.matches(" FullNat ").count(), 4, "{listing}");
    let laddrs = lab.xvsadm_ok(&["-G"]).unwrap();
    assert!(laddrs.contains(LIP4) && laddrs.contains(LIP6), "{laddrs}");

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
    // The real servers saw the director's local address, not the client.
    for i in 1..=2 {
        let log = lab.access_log(i);
        for lip in [LIP4, LIP6] {
            assert_eq!(
                log.lines()
                    .filter(|l| l.starts_with(&format!("{lip} 8080 /")))
                    .count(),
                5,
                "rs{i}: {log}"
            );
        }
        assert!(!log.contains("198.51.100.1 "), "rs{i}: {log}");
    }
    // NAT64: an IPv6 VIP served by the IPv4 real servers, from the IPv4 local address.
    let v64 = format!("[{VIP6}]:8081");
    let rs4 = [rs_ip4(1), rs_ip4(2)].map(|a| format!("{a}:8080"));
    lab.add_fullnat("-t", &v64, LIP4, &[], &rs4).unwrap();
    let bodies = lab.curl_many(&format!("http://{v64}/"), 4).unwrap();
    let t = tally(&bodies);
    assert_eq!(
        (t.get("rs1").copied(), t.get("rs2").copied()),
        (Some(2), Some(2)),
        "NAT64: {bodies:?}\n{}",
        lab.xvsd_log()
    );
    for i in 1..=2 {
        let log = lab.access_log(i);
        assert_eq!(
            log.lines()
                .filter(|l| l.starts_with(&format!("{LIP4} 8080 /")))
                .count(),
            7,
            "rs{i}: five IPv4 FULLNAT and two NAT64 requests from {LIP4}: {log}"
        );
    }

    // UDP through FULLNAT (and NAT64), ten flows each: the client hears the VIP.
    let _echo = lab.udp_echo();
    for (vip, lip, rs) in [
        (
            format!("{VIP4}:53"),
            LIP4,
            [rs_ip4(1), rs_ip4(2)].map(|a| format!("{a}:5353")),
        ),
        (
            format!("[{VIP6}]:53"),
            LIP6,
            [rs_ip6(1), rs_ip6(2)].map(|a| format!("[{a}]:5353")),
        ),
        (
            format!("[{VIP6}]:54"),
            LIP4,
            [rs_ip4(1), rs_ip4(2)].map(|a| format!("{a}:5353")),
        ),
    ] {
        lab.add_fullnat("-u", &vip, lip, &[], &rs).unwrap();
        let answers = lab.udp_ask(vip.parse().unwrap(), 10);
        let t = tally(&answers);
        assert_eq!(
            (t.get("rs1").copied(), t.get("rs2").copied()),
            (Some(5), Some(5)),
            "UDP {vip}: {answers:?}"
        );
    }
    // NAT64's ICMP errors, end to end: to a port no real server listens on, the real server's
    // ICMPv4 "port unreachable" (to the local address) reaches the client as ICMPv6 from the
    // VIP, about its own datagram: its connected socket is refused.
    let closed = format!("[{VIP6}]:55");
    let rs_closed = [rs_ip4(1), rs_ip4(2)].map(|a| format!("{a}:5399"));
    lab.add_fullnat("-u", &closed, LIP4, &[], &rs_closed)
        .unwrap();
    let target: std::net::SocketAddr = closed.parse().unwrap();
    let refused = netns::in_netns(&lab.ns("cl"), move || {
        let s = std::net::UdpSocket::bind("[::]:0").unwrap();
        s.connect(target).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut buf = [0u8; 64];
        (0..3).find_map(|_| {
            let _ = s.send(b"anyone?");
            match s.recv(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(()),
                _ => None,
            }
        })
    })
    .expect("the client's namespace");
    let json: serde_json::Value =
        serde_json::from_str(&lab.xvsadm_ok(&["-L", "-n", "--json"]).unwrap()).unwrap();
    assert!(
        refused.is_some(),
        "no ICMPv6 port unreachable reached the client: {}",
        json["reasons"]
    );

    // The client is not lost to the operator: the audit log pairs it with the local address
    // (one line per new connection), and -L -c shows both tuples.
    poll(Duration::from_secs(5), "audit lines", || {
        let log = lab.xvsd_log();
        let lines = log
            .lines()
            .filter(|l| {
                l.contains("new FULLNAT connection: TCP 198.51.100.1:")
                    && l.contains(&format!("as {LIP4}:"))
            })
            .count();
        (lines >= 10).then_some(())
    })
    .unwrap();
    let mut conn = lab.connect(format!("{VIP4}:80").parse().unwrap()).unwrap();
    let first = conn.get().unwrap();
    let conns = lab.xvsadm_ok(&["-L", "-n", "-c"]).unwrap();
    assert!(
        conns
            .lines()
            .any(|l| l.contains("198.51.100.1:") && l.contains(&format!("{LIP4}:"))),
        "{conns}"
    );

    // wrk: twenty connections at once for two seconds, every request answered.
    let out = netns::cmd_in(&lab.ns("cl"), "wrk")
        .args(["-t2", "-c20", "-d2s", &format!("http://{VIP4}/")])
        .output()
        .expect("wrk runs");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk: {report}");
    assert!(
        !report.contains("Socket errors") && !report.contains("Non-2xx"),
        "wrk saw errors through FULLNAT:\n{report}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&lab.xvsadm_ok(&["-L", "-n", "--json"]).unwrap()).unwrap();
    assert!(
        json["reasons"]["tx_fullnat"].as_u64().unwrap() > 0,
        "{json}"
    );
    assert!(
        json["reasons"]["tx_nat_reply"].as_u64().unwrap() > 0,
        "{json}"
    );
    assert_eq!(json["reasons"]["drop_fullnat_no_port"], 0, "{json}");

    // The kept-alive connection keeps its real server and local port through a change and a
    // restart of xvsd: its translation, both ways, and its port live in the pinned maps.
    assert_eq!(conn.get().unwrap(), first);
    lab.xvsadm_ok(&["-A", "-t", "203.0.113.11:80", "-s", "wrr"])
        .unwrap();
    assert_eq!(conn.get().unwrap(), first);
    lab.stop_xvsd().unwrap();
    assert_eq!(conn.get().unwrap(), first, "while xvsd is down");
    lab.start_xvsd().unwrap();
    assert_eq!(conn.get().unwrap(), first, "after the restart");

    // A pool of one address with two ports, exhausted on purpose: two kept-alive connections
    // hold both ports; a third client is refused, counted and logged with the service and its
    // pool; once a connection ends (a short FIN timeout lets its entry expire) its port is free
    // again.
    let small = "203.0.113.12:80";
    lab.add_fullnat(
        "-t",
        small,
        LIP4,
        &["--laddr-ports", "30000-30001"],
        &[format!("{}:8080", rs_ip4(1))],
    )
    .unwrap();
    lab.xvsadm_ok(&["--set", "0", "1", "0"]).unwrap();
    let mut held: Vec<_> = (0..2)
        .map(|_| {
            let mut c = lab.connect(small.parse().unwrap()).unwrap();
            assert_eq!(c.get().unwrap(), "rs1");
            c
        })
        .collect();
    let url = format!("http://{small}/");
    assert!(
        lab.curl_many(&url, 1).unwrap().iter().all(|b| b.is_empty()),
        "a third connection got through an exhausted pool"
    );
    poll(Duration::from_secs(5), "the exhaustion logged", || {
        let log = lab.xvsd_log();
        (log.contains("FULLNAT local ports exhausted")
            && log.contains("TCP 203.0.113.12:80")
            && log.contains(&format!("{LIP4} ports 30000-30001")))
        .then_some(())
    })
    .unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&lab.xvsadm_ok(&["-L", "-n", "--json"]).unwrap()).unwrap();
    assert!(
        json["reasons"]["drop_fullnat_no_port"].as_u64().unwrap() > 0,
        "{json}"
    );
    drop(held.pop());
    poll(
        Duration::from_secs(10),
        "a freed port serving a new client",
        || {
            lab.curl_many(&url, 1)
                .ok()
                .filter(|b| b.first().is_some_and(|b| b == "rs1"))
        },
    )
    .unwrap();
    assert_eq!(
        held[0].get().unwrap(),
        "rs1",
        "the other connection kept its port"
    );
}
