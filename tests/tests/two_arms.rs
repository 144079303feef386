//! Two arms: one director on two interfaces (`xvsd --iface eth0 --iface eth1`), clients on
//! eth0's segment, NAT and FULLNAT real servers (apache2) on eth1's. Packets cross the director
//! by XDP_REDIRECT between its interfaces in native mode, both ways; a restart adopts the
//! program, the maps and both links, and `--cleanup` detaches both. Root required.

use std::time::Duration;

use xvs_tests::{
    lab::{arm_ip4, arm_ip6, tally, two_arms, Lab, VIP4, VIP6},
    netns, poll,
};

/// The director's FULLNAT local addresses, on the real servers' segment (eth1).
const LIP4: &str = "192.0.2.9";
const LIP6: &str = "2001:db8:2::9";
/// The client, as NAT real servers see it.
const CLIENT4: &str = "198.51.100.1";
const CLIENT6: &str = "2001:db8:1::1";

/// The id of the XDP program attached to `iface` in the director's namespace, if any.
fn xdp_prog(lab: &Lab, iface: &str) -> Option<u64> {
    let out = netns::cmd_in(&lab.ns("dir"), "ip")
        .args(["-j", "-d", "link", "show", "dev", iface])
        .output()
        .expect("ip link show");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
    v[0]["xdp"]["prog"]["id"].as_u64()
}

/// Both interfaces run one and the same director program; its id.
fn same_program_on_both(lab: &Lab) -> u64 {
    let (a, b) = (xdp_prog(lab, "eth0"), xdp_prog(lab, "eth1"));
    assert!(
        a.is_some() && a == b,
        "eth0 runs {a:?}, eth1 runs {b:?}\n{}",
        lab.xvsd_log()
    );
    a.unwrap()
}

/// Apache's access log lines of real server `i` for requests from `from` to port `port`.
fn served(lab: &Lab, i: usize, from: &str, port: u16) -> usize {
    lab.access_log(i)
        .lines()
        .filter(|l| l.starts_with(&format!("{from} {port} /")))
        .count()
}

fn curl_five_each(lab: &Lab, url: &str) {
    let bodies = lab.curl_many(url, 10).unwrap();
    let t = tally(&bodies);
    assert_eq!(
        (t.get("rs1").copied(), t.get("rs2").copied()),
        (Some(5), Some(5)),
        "{url}: {bodies:?}\n{}",
        lab.xvsd_log()
    );
}

#[test]
fn nat_and_fullnat_cross_a_director_on_two_interfaces_and_survive_a_restart() {
    let mut lab = two_arms("two-arms");
    let log = lab.xvsd_log();
    assert!(
        log.contains("attached the director to eth1") && log.contains("eth0, eth1"),
        "{log}"
    );
    let first_program = same_program_on_both(&lab);

    // FULLNAT: the real servers have no route off their segment at all; the director's local
    // addresses are on it (eth1).
    let out = netns::sh(
        &lab.ns("dir"),
        &format!(
            "set -e
            ip addr add {LIP4}/24 dev eth1
            ip addr add {LIP6}/64 dev eth1 nodad"
        ),
    )
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (vip, lip, rs) in [
        (
            format!("{VIP4}:8080"),
            LIP4,
            [arm_ip4(1), arm_ip4(2)].map(|a| format!("{a}:8080")),
        ),
        (
            format!("[{VIP6}]:8080"),
            LIP6,
            [arm_ip6(1), arm_ip6(2)].map(|a| format!("[{a}]:8080")),
        ),
    ] {
        lab.add_fullnat("-t", &vip, lip, &["-F", "eth1"], &rs)
            .unwrap();
    }
    curl_five_each(&lab, &format!("http://{VIP4}:8080/"));
    curl_five_each(&lab, &format!("http://[{VIP6}]:8080/"));
    for i in 1..=2 {
        assert_eq!(
            (served(&lab, i, LIP4, 8080), served(&lab, i, LIP6, 8080)),
            (5, 5),
            "rs{i} saw other sources than the local addresses:\n{}",
            lab.access_log(i)
        );
    }

    // NAT: the real servers route through the director's eth1 and see the client itself.
    lab.route_via_director().unwrap();
    for (vip, rs) in [
        (
            format!("{VIP4}:80"),
            [arm_ip4(1), arm_ip4(2)].map(|a| format!("{a}:80")),
        ),
        (
            format!("[{VIP6}]:80"),
            [arm_ip6(1), arm_ip6(2)].map(|a| format!("[{a}]:80")),
        ),
    ] {
        lab.xvsadm_ok(&["-A", "-t", &vip, "-s", "rr"]).unwrap();
        for r in &rs {
            lab.xvsadm_ok(&["-a", "-t", &vip, "-r", r, "-m"]).unwrap();
        }
    }
    curl_five_each(&lab, &format!("http://{VIP4}/"));
    curl_five_each(&lab, &format!("http://[{VIP6}]/"));
    for i in 1..=2 {
        assert_eq!(
            (served(&lab, i, CLIENT4, 80), served(&lab, i, CLIENT6, 80)),
            (5, 5),
            "rs{i}:\n{}",
            lab.access_log(i)
        );
    }
    // Both ways crossed interfaces: redirected, never sent back where they came from.
    let json: serde_json::Value =
        serde_json::from_str(&lab.xvsadm_ok(&["-L", "-n", "--json"]).unwrap()).unwrap();
    let redirected = json["reasons"]["redirect_nat"].as_u64().unwrap();
    // 40 connections of at least 3 packets each way.
    assert!(redirected >= 240, "redirect_nat {redirected}: {json}");
    for sent_back in ["tx_nat", "tx_nat_reply", "tx_fullnat"] {
        assert_eq!(json["reasons"][sent_back], 0, "{sent_back}: {json}");
    }

    // Kept-alive connections of both modes live through a restart of xvsd: the new program is
    // swapped in on both links, the connection table is the pinned one.
    let mut nat = lab.connect(format!("{VIP4}:80").parse().unwrap()).unwrap();
    let mut fnat = lab
        .connect(format!("[{VIP6}]:8080").parse().unwrap())
        .unwrap();
    let (nat_rs, fnat_rs) = (nat.get().unwrap(), fnat.get().unwrap());
    lab.stop_xvsd().unwrap();
    assert_eq!(nat.get().unwrap(), nat_rs, "NAT while xvsd is down");
    assert_eq!(fnat.get().unwrap(), fnat_rs, "FULLNAT while xvsd is down");
    lab.start_xvsd().unwrap();
    poll(Duration::from_secs(5), "the adoption logged", || {
        let log = lab.xvsd_log();
        (log.contains("adopted the pinned data plane")
            && log.contains("adopted the pinned link on eth1"))
        .then_some(())
    })
    .unwrap();
    let program = same_program_on_both(&lab);
    assert_ne!(program, first_program, "the restarted xvsd's program runs");
    assert_eq!(nat.get().unwrap(), nat_rs, "NAT after the restart");
    assert_eq!(fnat.get().unwrap(), fnat_rs, "FULLNAT after the restart");
    curl_five_each(&lab, &format!("http://{VIP4}/"));

    // An arm left out on a restart is detached (its connections go with it); given back, it
    // is attached again and serves at once.
    lab.stop_xvsd().unwrap();
    lab.set_xvsd_interfaces(&["eth0"]);
    lab.start_xvsd().unwrap();
    let log = lab.xvsd_log();
    assert!(log.contains("detached the director from eth1"), "{log}");
    assert!(xdp_prog(&lab, "eth0").is_some() && xdp_prog(&lab, "eth1").is_none());
    lab.stop_xvsd().unwrap();
    lab.set_xvsd_interfaces(&["eth0", "eth1"]);
    lab.start_xvsd().unwrap();
    same_program_on_both(&lab);
    curl_five_each(&lab, &format!("http://[{VIP6}]:8080/"));

    // --cleanup detaches the director from both interfaces.
    lab.stop_xvsd().unwrap();
    let out = lab.xvsd_once(&["--cleanup"]).unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("detached the director from eth0, eth1"),
        "{said}"
    );
    assert_eq!(
        (xdp_prog(&lab, "eth0"), xdp_prog(&lab, "eth1")),
        (None, None)
    );
    assert!(
        !lab.pin_dir().exists(),
        "pins left in {}",
        lab.pin_dir().display()
    );
}
