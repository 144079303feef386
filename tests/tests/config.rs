//! The configuration file end to end: applied, edited and re-applied with `xvsadm apply -f`,
//! SIGHUP and `xvsadm reload`, with apache2 real servers and kept-alive client connections
//! open across every change. Only the difference changes; an invalid file changes nothing.

use std::{fs, net::SocketAddr, path::Path};

use lb_user::{dataplane::Counters, proto::Listing};
use xvs_tests::{
    lab::{default_bin_dir, rs_ip4, tally, HttpConn, Lab, LabOptions, VIP4, VIP6},
    poll,
};

fn lab(tag: &str) -> Lab {
    Lab::start(LabOptions {
        tag: tag.into(),
        reals: 3,
        bin_dir: default_bin_dir(),
        xvsd_args: Vec::new(),
        two_arms: false,
    })
    .expect("lab")
}

/// IPv4 web service: only rs2 takes new connections (rs1 quiesced); IPv6 web service on rs1
/// and rs2.
const V1: &str = r#"
[[service]]
tcp = "203.0.113.10:80"
scheduler = "wrr"
  [[service.real]]
  address = "198.51.100.11"
  weight = 0
  [[service.real]]
  address = "198.51.100.12"

[[service]]
tcp = "[2001:db8:10::10]:80"
scheduler = "rr"
  [[service.real]]
  address = "2001:db8:1::11"
  [[service.real]]
  address = "2001:db8:1::12"
"#;

/// V1 edited: rs1's weight changes, rs3 is added to the IPv4 service, rs2 leaves the IPv6
/// one, the UDP timeout changes.
const V2: &str = r#"
[timeouts]
udp = 60

[[service]]
tcp = "203.0.113.10:80"
scheduler = "wrr"
  [[service.real]]
  address = "198.51.100.11"
  weight = 2
  [[service.real]]
  address = "198.51.100.12"
  [[service.real]]
  address = "198.51.100.13"

[[service]]
tcp = "[2001:db8:10::10]:80"
scheduler = "rr"
  [[service.real]]
  address = "2001:db8:1::11"
"#;

const V1_RULES: [&str; 6] = [
    "-A -t 203.0.113.10:80 -s wrr",
    "-a -t 203.0.113.10:80 -r 198.51.100.11:80 -g -w 0",
    "-a -t 203.0.113.10:80 -r 198.51.100.12:80 -g -w 1",
    "-A -t [2001:db8:10::10]:80 -s rr",
    "-a -t [2001:db8:10::10]:80 -r [2001:db8:1::11]:80 -g -w 1",
    "-a -t [2001:db8:10::10]:80 -r [2001:db8:1::12]:80 -g -w 1",
];

const V1_TO_V2: [&str; 4] = [
    "-e -t 203.0.113.10:80 -r 198.51.100.11:80 -g -w 2",
    "-a -t 203.0.113.10:80 -r 198.51.100.13:80 -g -w 1",
    "-d -t [2001:db8:10::10]:80 -r [2001:db8:1::12]:80",
    "--set 900 120 60",
];

const V2_TO_V1: [&str; 4] = [
    "-d -t 203.0.113.10:80 -r 198.51.100.13:80",
    "-e -t 203.0.113.10:80 -r 198.51.100.11:80 -g -w 0",
    "-a -t [2001:db8:10::10]:80 -r [2001:db8:1::12]:80 -g -w 1",
    "--set 900 120 300",
];

/// Three errors: a scheduler, a real server of the wrong family, an unknown key.
const INVALID: &str = r#"[[service]]
tcp = "203.0.113.10:80"
scheduler = "wrr"
  [[service.real]]
  address = "198.51.100.11"
  [[service.real]]
  address = "2001:db8:1::12"

[[service]]
tcp = "[2001:db8:10::10]:80"
scheduler = "round-robin"
  [[service.real]]
  address = "2001:db8:1::11"
  wieght = 3
"#;

fn lines(out: &str) -> Vec<&str> {
    out.lines().collect()
}

fn listing(lab: &Lab) -> Listing {
    serde_json::from_str(&lab.xvsadm_ok(&["-L", "-n", "--json"]).unwrap()).unwrap()
}

/// The IPv6 service's counters and its first real server's (rs1's).
fn v6_counters(l: &Listing) -> (Counters, Counters) {
    let svc = l
        .services
        .iter()
        .find(|s| s.key.to_string() == format!("TCP [{VIP6}]:80"))
        .expect("IPv6 service");
    (svc.stats, svc.reals[0].stats)
}

/// Active connections and weight of one real server of the IPv4 service.
fn real_of(l: &Listing, rs: &str) -> (u32, u64) {
    let svc = l
        .services
        .iter()
        .find(|s| s.key.to_string() == format!("TCP {VIP4}:80"))
        .expect("IPv4 service");
    let r = svc
        .reals
        .iter()
        .find(|r| r.addr.ip().to_string() == rs)
        .unwrap_or_else(|| panic!("no {rs}"));
    (r.weight, r.active_conns)
}

/// Kept-alive connections to the IPv4 VIP; under V1 each lands on rs2.
fn hold(lab: &Lab, n: usize) -> Vec<HttpConn> {
    let vip: SocketAddr = format!("{VIP4}:80").parse().unwrap();
    (0..n)
        .map(|_| {
            let mut c = lab.connect(vip).unwrap();
            assert_eq!(c.get().unwrap(), "rs2");
            c
        })
        .collect()
}

/// Every held connection still answers, from the same real server.
fn still_on_rs2(held: &mut [HttpConn], when: &str) {
    for (i, c) in held.iter_mut().enumerate() {
        let body = c
            .get()
            .unwrap_or_else(|e| panic!("{when}: held connection {i} broke: {e}"));
        assert_eq!(body, "rs2", "{when}: held connection {i} moved");
    }
}

fn assert_invalid_refused(out: &std::process::Output, file: &Path) {
    assert!(!out.status.success(), "an invalid file was accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    let f = file.display();
    for needle in [
        format!("{f}: 3 errors, nothing changed"),
        format!("{f}:7:13: Direct routing needs the real server 2001:db8:1::12"),
        format!("{f}:11:13: unknown variant `round-robin`"),
        format!("{f}:14:3: unknown field `wieght`"),
    ] {
        assert!(err.contains(&needle), "no {needle:?} in:\n{err}");
    }
}

#[test]
fn apply_changes_only_the_difference_and_established_connections_survive() {
    let lab = lab("xvscf-a");
    let file = lab.dir.join("xvs.toml");
    let f = file.display().to_string();
    fs::write(&file, V1).unwrap();
    let out = lab.xvsadm_ok(&["apply", "-f", &f]).unwrap();
    let mut want: Vec<&str> = V1_RULES.to_vec();
    want.push("# 6 changes applied");
    assert_eq!(lines(&out), want);
    let again = lab.xvsadm_ok(&["apply", "-f", &f]).unwrap();
    assert_eq!(
        lines(&again),
        ["# no changes: the running configuration is the file's"]
    );

    // Traffic on the IPv6 service (its counters must survive), and held IPv4 connections.
    let bodies = lab.curl_many(&format!("http://[{VIP6}]/"), 10).unwrap();
    assert_eq!(bodies.len(), 10, "{:?}", tally(&bodies));
    let mut held = hold(&lab, 4);
    let before = listing(&lab);
    let v6_before = v6_counters(&before);
    assert!(
        v6_before.0.conns >= 10 && v6_before.1.conns >= 5,
        "{v6_before:?}"
    );
    assert_eq!(real_of(&before, &rs_ip4(2)), (1, 4));

    // The edit, shown first without applying.
    fs::write(&file, V2).unwrap();
    let rules_before = lab.xvsadm_ok(&["-S", "-n"]).unwrap();
    let dry = lab.xvsadm_ok(&["apply", "-f", &f, "--dry-run"]).unwrap();
    let mut want: Vec<&str> = V1_TO_V2.to_vec();
    want.push("# dry run: 4 changes, nothing applied");
    assert_eq!(lines(&dry), want);
    assert_eq!(lab.xvsadm_ok(&["-S", "-n"]).unwrap(), rules_before);

    let out = lab.xvsadm_ok(&["apply", "-f", &f]).unwrap();
    let mut want: Vec<&str> = V1_TO_V2.to_vec();
    want.push("# 4 changes applied");
    assert_eq!(lines(&out), want);
    still_on_rs2(&mut held, "after apply");
    let after = listing(&lab);
    // The held connections are still counted on rs2: its entry and id were kept.
    assert_eq!(real_of(&after, &rs_ip4(2)), (1, 4));
    assert_eq!(real_of(&after, &rs_ip4(1)).0, 2);
    assert_eq!(real_of(&after, &rs_ip4(3)).0, 1);
    assert_eq!(after.timeouts.udp, 60);
    // The IPv6 service lost rs2; its counters and rs1's were not reset (same ids).
    assert_eq!(v6_counters(&after), v6_before);
    // New connections take the new configuration.
    let t = tally(&lab.curl_many(&format!("http://{VIP4}/"), 30).unwrap());
    for rs in ["rs1", "rs2", "rs3"] {
        assert!(
            t.get(rs).copied().unwrap_or(0) > 0,
            "{rs} got nothing: {t:?}"
        );
    }
    still_on_rs2(&mut held, "after new traffic");

    // An invalid file: every error with its line, and nothing changes.
    let rules_before = lab.xvsadm_ok(&["-S", "-n"]).unwrap();
    let bad = lab.dir.join("bad.toml");
    fs::write(&bad, INVALID).unwrap();
    let out = lab
        .xvsadm(&["apply", "-f", &bad.display().to_string()])
        .unwrap();
    assert_invalid_refused(&out, &bad);
    assert_eq!(lab.xvsadm_ok(&["-S", "-n"]).unwrap(), rules_before);
    assert_eq!(listing(&lab).timeouts.udp, 60);
    still_on_rs2(&mut held, "after the invalid file");
}

#[test]
fn sighup_and_reload_reread_the_file_and_apply_the_difference() {
    let mut lab = lab("xvscf-r");
    // Without --config there is nothing to reload.
    let out = lab.xvsadm(&["reload"]).unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("started without --config"),
        "{out:?}"
    );
    let file = lab.dir.join("xvs.toml");
    let f = file.display().to_string();
    fs::write(&file, V1).unwrap();
    lab.stop_xvsd().unwrap();
    lab.start_xvsd_with(&["--config", &f]).unwrap();
    let mut rules: Vec<String> = lab
        .xvsadm_ok(&["-S", "-n"])
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    rules.sort();
    let mut want: Vec<String> = V1_RULES.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(rules, want, "--config loaded the file at start");
    let mut held = hold(&lab, 4);

    // SIGHUP: the edited file is applied.
    fs::write(&file, V2).unwrap();
    let pid = lab.xvsd_pid().expect("xvsd runs") as i32;
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    poll(
        std::time::Duration::from_secs(10),
        "SIGHUP to apply the file",
        || (listing(&lab).timeouts.udp == 60).then_some(()),
    )
    .unwrap();
    let after = listing(&lab);
    assert_eq!(real_of(&after, &rs_ip4(1)).0, 2);
    assert_eq!(real_of(&after, &rs_ip4(3)).0, 1);
    assert_eq!(real_of(&after, &rs_ip4(2)), (1, 4));
    still_on_rs2(&mut held, "after SIGHUP");

    // xvsadm reload: back to V1, shown first.
    fs::write(&file, V1).unwrap();
    let dry = lab.xvsadm_ok(&["reload", "--dry-run"]).unwrap();
    let mut want: Vec<&str> = V2_TO_V1.to_vec();
    want.push("# dry run: 4 changes, nothing applied");
    assert_eq!(lines(&dry), want);
    assert_eq!(listing(&lab).timeouts.udp, 60, "a dry run applies nothing");
    let out = lab.xvsadm_ok(&["reload"]).unwrap();
    let mut want: Vec<&str> = V2_TO_V1.to_vec();
    want.push("# 4 changes applied");
    assert_eq!(lines(&out), want);
    still_on_rs2(&mut held, "after reload");
    assert_eq!(real_of(&listing(&lab), &rs_ip4(2)), (1, 4));

    // An invalid file: reload refuses with every error, SIGHUP logs them; nothing changes.
    let rules_before = lab.xvsadm_ok(&["-S", "-n"]).unwrap();
    fs::write(&file, INVALID).unwrap();
    let out = lab.xvsadm(&["reload"]).unwrap();
    assert_invalid_refused(&out, &file);
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    poll(
        std::time::Duration::from_secs(10),
        "xvsd to log the refused reload",
        || {
            lab.xvsd_log()
                .contains("SIGHUP: reload refused")
                .then_some(())
        },
    )
    .unwrap();
    let log = lab.xvsd_log();
    assert!(
        log.contains(&format!("{f}:11:13: unknown variant `round-robin`")),
        "{log}"
    );
    assert_eq!(lab.xvsadm_ok(&["-S", "-n"]).unwrap(), rules_before);
    assert_eq!(listing(&lab).timeouts.udp, 300);
    still_on_rs2(&mut held, "after the invalid file");
}

/// `xvsadm import keepalived` end to end: a keepalived.conf converted, applied to xvsd, gives
/// the listing `ipvsadm -L -n` shows under keepalived for it, and forwards.
#[test]
fn an_imported_keepalived_conf_lists_as_keepalived_describes() {
    let lab = lab("xvscf-k");
    let (rs1, rs2, rs3) = (rs_ip4(1), rs_ip4(2), rs_ip4(3));
    let conf = lab.dir.join("keepalived.conf");
    fs::write(
        &conf,
        format!(
            "\
vrrp_instance VI_1 {{
    interface eth0
    virtual_router_id 51
    virtual_ipaddress {{
        {VIP4}
    }}
}}
virtual_server {VIP4} 80 {{
    delay_loop 2
    lb_algo wrr
    lb_kind DR
    persistence_timeout 600
    persistence_granularity 255.255.255.0
    protocol TCP
    real_server {rs2} 80 {{
        weight 3
        TCP_CHECK {{
            connect_timeout 1
        }}
    }}
    real_server {rs1} 80 {{
        weight 0
    }}
}}
virtual_server {VIP4} 53 {{
    lb_algo rr
    lb_kind DR
    protocol UDP
    real_server {rs3} 53 {{
        weight 2
    }}
    real_server {rs1} 53 {{
        weight 1
    }}
}}
"
        ),
    )
    .unwrap();
    let toml = lab.dir.join("xvs.toml");
    let (c, t) = (conf.display().to_string(), toml.display().to_string());
    let out = lab
        .xvsadm_ok(&["import", "keepalived", &c, "-o", &t])
        .unwrap();
    assert_eq!(out, "", "-o writes the file, prints nothing");
    lab.xvsadm_ok(&["apply", "-f", &t]).unwrap();
    let listed = lab.xvsadm_ok(&["-L", "-n"]).unwrap();
    // The table's size is xvsd's; the rest is ipvsadm's listing of this keepalived.conf.
    let (_, rest) = listed.split_once('\n').expect("a title line");
    let expected = format!(
        "\
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  {VIP4}:80 wrr persistent 600 mask 255.255.255.0
  -> {:<28} Route   0      0          0         
  -> {:<28} Route   3      0          0         
UDP  {VIP4}:53 rr
  -> {:<28} Route   1      0          0         
  -> {:<28} Route   2      0          0         
",
        format!("{rs1}:80"),
        format!("{rs2}:80"),
        format!("{rs1}:53"),
        format!("{rs3}:53"),
    );
    assert_eq!(
        rest,
        expected,
        "converted file:\n{}",
        fs::read_to_string(&toml).unwrap()
    );
    // It forwards as configured: rs1 has weight 0, so rs2 answers.
    let vip: SocketAddr = format!("{VIP4}:80").parse().unwrap();
    assert_eq!(lab.connect(vip).unwrap().get().unwrap(), "rs2");
}
