//! TUN mode end to end: real apache2 servers reached through IPIP, GUE and 6in4 tunnels, one of
//! them routed behind a router namespace, next to a DR server in the same service; the real
//! server's side set up by `xvsadm realserver setup --mode tun` (our decapsulator: this kernel
//! has no ipip device). A large download over a path with a smaller MTU completes because the
//! router's ICMP errors, addressed to the VIP, are relayed by the director to the real server.

use std::process::Stdio;

use xvs_tests::{
    lab::{routed_ip4, routed_ip6, tally, Lab, LabOptions, VIP4, VIP6},
    netns::cmd_in,
};

/// The routed real server's index (namespace rs3).
const RS: usize = 3;

fn lab() -> Lab {
    let mut lab = Lab::start(LabOptions {
        tag: "tun".into(),
        reals: 1,
        bin_dir: xvs_tests::lab::default_bin_dir(),
        xvsd_args: Vec::new(),
        two_arms: false,
    })
    .expect("lab");
    lab.add_routed_real(RS, 1400)
        .expect("router and routed real server");
    lab
}

/// Runs xvsadm inside a namespace (the real server's own host).
fn xvsadm_in(lab: &Lab, ns: &str, args: &[&str]) -> std::process::Output {
    cmd_in(
        &lab.ns(ns),
        &xvs_tests::lab::default_bin_dir()
            .join("xvsadm")
            .display()
            .to_string(),
    )
    .args(args)
    .stdin(Stdio::null())
    .output()
    .expect("xvsadm")
}

fn reason(lab: &Lab, name: &str) -> u64 {
    let json = lab.xvsadm_ok(&["-L", "-n", "--json"]).expect("listing");
    let v: serde_json::Value = serde_json::from_str(&json).expect("json listing");
    v["reasons"][name].as_u64().unwrap_or(0)
}

/// Downloads `url` (1 MiB) from the client; returns the size received.
fn download(lab: &Lab, url: &str) -> usize {
    let out = cmd_in(&lab.ns("cl"), "curl")
        .args(["-s", "-m", "20", "-o", "-", url])
        .stdin(Stdio::null())
        .output()
        .expect("curl");
    out.stdout.len()
}

#[test]
fn tunnelled_and_routed_real_servers_serve_next_to_dr_ones() {
    let lab = lab();
    let out = xvsadm_in(
        &lab,
        &format!("rs{RS}"),
        &[
            "realserver",
            "setup",
            "--vip",
            &format!("{VIP4},{VIP6}"),
            "--mode",
            "tun",
            "--iface",
            "eth0",
            "--gue-port",
            "6080",
        ],
    );
    assert!(
        out.status.success(),
        "realserver setup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (r4, r6) = (routed_ip4(RS), routed_ip6(RS));
    let vip6 = format!("[{VIP6}]");
    let rules = [
        // DR and IPIP in one service.
        format!("-A -t {VIP4}:80 -s rr"),
        format!("-a -t {VIP4}:80 -r {} -g -w 1", xvs_tests::lab::rs_ip4(1)),
        format!("-a -t {VIP4}:80 -r {r4} -i -w 1"),
        // GUE only, for the download through the small-MTU path.
        format!("-A -t {VIP4}:8080 -s rr"),
        format!("-a -t {VIP4}:8080 -r {r4} -i --tun-type gue --tun-port 6080 -w 1"),
        // IP6IP6 and DR.
        format!("-A -t {vip6}:80 -s rr"),
        format!("-a -t {vip6}:80 -r [{}] -g -w 1", xvs_tests::lab::rs_ip6(1)),
        format!("-a -t {vip6}:80 -r [{r6}] -i -w 1"),
        // An IPv6 VIP served over IPv4 (6in4).
        format!("-A -t {vip6}:8080 -s rr"),
        format!("-a -t {vip6}:8080 -r {r4} -i -w 1"),
    ];
    for r in &rules {
        let args: Vec<&str> = r.split_whitespace().collect();
        lab.xvsadm_ok(&args).unwrap_or_else(|e| panic!("{r}: {e}"));
    }
    let listing = lab.xvsadm_ok(&["-L", "-n"]).unwrap();
    assert!(
        listing.contains(&format!("  -> {r4}:80")) && listing.contains("Tunnel"),
        "-L -n shows the tunnelled server as Tunnel:\n{listing}"
    );

    // rr over a DR and a tunnelled server: exactly half each.
    for (url, what) in [
        (format!("http://{VIP4}/"), "IPv4 DR + IPIP"),
        (format!("http://{vip6}/"), "IPv6 DR + IP6IP6"),
    ] {
        let bodies = lab.curl_many(&url, 20).unwrap();
        let t = tally(&bodies);
        assert_eq!(
            bodies.len(),
            20,
            "{what}: every request answered: {t:?}\n{}",
            lab.xvsd_log()
        );
        assert_eq!(t.get("rs1"), Some(&10), "{what}: {t:?}");
        assert_eq!(t.get(&format!("rs{RS}")), Some(&10), "{what}: {t:?}");
    }
    for (url, what) in [
        (format!("http://{VIP4}:8080/"), "GUE"),
        (format!("http://{vip6}:8080/"), "6in4"),
    ] {
        let t = tally(&lab.curl_many(&url, 5).unwrap());
        assert_eq!(t.get(&format!("rs{RS}")), Some(&5), "{what}: {t:?}");
    }
    assert!(reason(&lab, "tx_tunnel") > 0);
    assert_eq!(reason(&lab, "drop_tun_no_route"), 0);
    assert_eq!(reason(&lab, "drop_tun_fwd_disabled"), 0);

    // 1 MiB from the routed server: its 1500-byte replies do not fit the router's 1400-byte
    // link toward the client; the router's "fragmentation needed" goes to the VIP, the director
    // relays it through the tunnel, and the server's TCP shrinks its segments.
    let relayed = reason(&lab, "icmp_error_forwarded");
    assert_eq!(
        download(&lab, &format!("http://{VIP4}:8080/big")),
        1 << 20,
        "IPv4 download"
    );
    assert_eq!(
        download(&lab, &format!("http://{vip6}:8080/big")),
        1 << 20,
        "6in4 download"
    );
    assert!(
        reason(&lab, "icmp_error_forwarded") > relayed,
        "the router's ICMP errors were relayed to the real server"
    );
    // Through the DR + IPIP service: one download from each server.
    for _ in 0..2 {
        assert_eq!(download(&lab, &format!("http://{VIP4}/big")), 1 << 20);
    }

    let out = xvsadm_in(&lab, &format!("rs{RS}"), &["realserver", "teardown"]);
    assert!(
        out.status.success(),
        "teardown: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
