//! Health checks end to end: xvsd checks real apache2 servers in the lab (TCP, HTTP with a
//! status, HTTPS with a body text and a digest, a MISC command), takes a stopped one out of the
//! tables under a curl load, brings it back after `--check-rise` successes, inhibits instead of
//! removing with `--check-inhibit`, and hands new connections to the sorry server while no
//! real server is up. Root required.

use std::time::{Duration, Instant};

use serde_json::Value;
use xvs_tests::{
    lab::{default_bin_dir, rs_ip4, tally, two_reals, HttpConn, Lab, LabOptions, VIP4},
    load::Load,
    netns, poll,
};

const METRICS: &str = "127.0.0.1:9918";

fn vip() -> String {
    format!("{VIP4}:80")
}

fn url() -> String {
    format!("http://{VIP4}/")
}

fn rs(i: usize) -> String {
    format!("{}:80", rs_ip4(i))
}

/// `xvsadm -L -n --json`, first service.
fn service(lab: &Lab) -> Value {
    let l: Value = serde_json::from_str(&lab.xvsadm_ok(&["-L", "-n", "--json"]).unwrap()).unwrap();
    l["services"][0].clone()
}

/// A real server of the first service, as `-L -n --json` has it.
fn real(lab: &Lab, addr: &str) -> Value {
    service(lab)["reals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["addr"] == addr)
        .cloned()
        .unwrap_or_else(|| panic!("{addr} not listed"))
}

/// Waits until real server `addr` is `table` (active, inhibited, removed) in the tables;
/// returns when that was seen.
fn wait_table(lab: &Lab, addr: &str, table: &str, timeout: Duration) -> Instant {
    poll(timeout, &format!("{addr} to be {table}"), || {
        (real(lab, addr)["table"] == table).then(Instant::now)
    })
    .unwrap_or_else(|e| panic!("{e}: {:#}\n{}", service(lab), lab.xvsd_log()))
}

/// Waits until every real server of the first service has been checked at least `n` times.
fn wait_checked(lab: &Lab, n: u64) {
    poll(Duration::from_secs(15), "every real server checked", || {
        let s = service(lab);
        s["reals"]
            .as_array()?
            .iter()
            .all(|r| r["health"]["checks"].as_u64().unwrap_or(0) >= n)
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {:#}", service(lab)));
}

/// A kept-alive connection whose requests land on real server `name`.
fn held_on(lab: &Lab, name: &str) -> HttpConn {
    for _ in 0..10 {
        let mut c = lab.connect(vip().parse().unwrap()).unwrap();
        if c.get().unwrap() == name {
            return c;
        }
    }
    panic!("no connection landed on {name}");
}

/// The `-L -n` line of a real server, split in columns (None when not listed).
fn plain_line(lab: &Lab, addr: &str) -> Option<Vec<String>> {
    let text = lab.xvsadm_ok(&["-L", "-n"]).unwrap();
    text.lines()
        .find(|l| l.starts_with(&format!("  -> {addr} ")))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
}

/// Scrapes the metrics endpoint from inside the director namespace.
fn scrape(lab: &Lab) -> String {
    let out = netns::run(netns::cmd_in(&lab.ns("dir"), "curl").args([
        "-s",
        "-m",
        "5",
        &format!("http://{METRICS}/metrics"),
    ]))
    .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// TCP checks under a steady load of new connections: a stopped apache2 leaves the tables
/// within the configured detection time, after which no request fails and every one is
/// answered by the other server, whose kept-alive connection is untouched; started again, it
/// takes traffic after `--check-rise` successes; with both down the sorry server answers.
#[test]
fn a_stopped_server_leaves_the_tables_comes_back_after_rise_and_the_sorry_server_stands_in() {
    let mut lab = Lab::start(LabOptions {
        tag: "xvshc-tcp".into(),
        reals: 3,
        bin_dir: default_bin_dir(),
        xvsd_args: vec!["--metrics".into(), METRICS.into()],
        two_arms: false,
    })
    .expect("lab");
    // rs3 is the sorry server: not a real server of the service, but on the segment with the
    // VIP on its loopback as any DR real server.
    lab.xvsadm_ok(&[
        "-A",
        "-t",
        &vip(),
        "-s",
        "rr",
        "--sorry-server",
        &rs(3),
        "--check",
        "tcp",
        "--check-interval",
        "500ms",
        "--check-timeout",
        "500ms",
        "--check-retry",
        "1",
        "--check-retry-delay",
        "250ms",
        "--check-rise",
        "2",
    ])
    .unwrap();
    for i in 1..=2 {
        lab.xvsadm_ok(&["-a", "-t", &vip(), "-r", &rs(i), "-g"])
            .unwrap();
    }
    wait_checked(&lab, 1);
    // A refused connect fails at once: detection within interval + retry × retry delay.
    let bound = Duration::from_millis(500 + 250);
    let mut held = held_on(&lab, "rs2");

    let load = Load::start(&lab.ns("cl"), &url(), 1_000_000, Duration::from_secs(180));
    load.wait_for_more(40, Duration::from_secs(30)).unwrap();
    let failed_before = load.failed();
    let done_before = load.done();
    // apache2 stops listening somewhere within its graceful stop: the detection time is
    // between the two figures.
    let stopping = Instant::now();
    lab.stop_apache(1).unwrap();
    let closed = Instant::now();
    let out = wait_table(&lab, &rs(1), "removed", bound + Duration::from_secs(5));
    let (detection_max, detection_min) = (out - stopping, out - closed);
    // Requests answered or failed while rs1 was down but still in the tables.
    let window_failed = load.failed() - failed_before;
    let window_done = load.done() - done_before;
    // The batch running when rs1 left the tables is counted once it ends; then nothing fails.
    load.wait_for_more(40, Duration::from_secs(30)).unwrap();
    let failed_after_detection = load.failed();
    load.wait_for_more(200, Duration::from_secs(60)).unwrap();
    assert_eq!(
        load.failed(),
        failed_after_detection,
        "requests failed after rs1 left the tables"
    );
    let bodies = lab.curl_many(&url(), 20).unwrap();
    assert_eq!(bodies, vec!["rs2".to_string(); 20], "{:?}", tally(&bodies));
    assert_eq!(
        held.get().unwrap(),
        "rs2",
        "the kept-alive connection to rs2"
    );
    let h = &real(&lab, &rs(1))["health"];
    assert_eq!(h["state"], "down", "{h}");
    assert_eq!(h["last"], "connection refused", "{h}");
    assert_eq!(h["changes"], 1, "{h}");
    // ipvsadm's listing as keepalived leaves IPVS: rs1 is not listed; -S keeps it.
    assert!(plain_line(&lab, &rs(1)).is_none());
    assert!(plain_line(&lab, &rs(2)).is_some());
    let saved = lab.xvsadm_ok(&["-S", "-n"]).unwrap();
    assert!(
        saved.contains(&format!("-a -t {} -r {} -g -w 1\n", vip(), rs(1))),
        "{saved}"
    );
    let stats = lab.xvsadm_ok(&["stats", "--once"]).unwrap();
    let rs1_row = stats
        .lines()
        .find(|l| l.contains(&rs(1)))
        .unwrap_or_else(|| panic!("{stats}"));
    assert!(rs1_row.ends_with(" down"), "{stats}");
    let metrics = scrape(&lab);
    let series =
        |name: &str, i: usize| format!("{name}{{service=\"TCP {}\",real=\"{}\"}}", vip(), rs(i));
    for (line, want) in [
        (series("xvs_real_health_up", 1), "0"),
        (series("xvs_real_health_up", 2), "1"),
        (series("xvs_real_in_tables", 1), "0"),
        (series("xvs_real_health_changes_total", 1), "1"),
    ] {
        assert!(
            metrics.lines().any(|l| l == format!("{line} {want}")),
            "{line} {want} missing:\n{metrics}"
        );
    }
    assert!(
        metrics.contains(&format!(
            "xvs_real_check_duration_seconds_count{{service=\"TCP {}\",real=\"{}\"}}",
            vip(),
            rs(2)
        )),
        "{metrics}"
    );

    // Back: after two successful rounds.
    lab.start_apache(1).unwrap();
    let answering = Instant::now();
    let recovery = wait_table(&lab, &rs(1), "active", Duration::from_secs(10)) - answering;
    load.wait_for_more(100, Duration::from_secs(60)).unwrap();
    let report = load.stop().unwrap();
    assert_eq!(
        report.failed, failed_after_detection,
        "requests failed while rs1 came back: {:?}",
        report.failures
    );
    let t = tally(&lab.curl_many(&url(), 40).unwrap());
    assert!(
        t.get("rs1").copied().unwrap_or(0) >= 15 && t.get("rs2").copied().unwrap_or(0) >= 15,
        "{t:?}"
    );
    assert_eq!(real(&lab, &rs(1))["health"]["changes"], 2);

    // Both down: the sorry server takes new connections, and is listed as a real server.
    lab.stop_apache(1).unwrap();
    lab.stop_apache(2).unwrap();
    let all_down = Instant::now();
    poll(Duration::from_secs(10), "the sorry server in use", || {
        (service(&lab)["sorry_server"]["table"] == "active").then_some(())
    })
    .unwrap();
    let sorry_after = all_down.elapsed();
    let bodies = lab.curl_many(&url(), 10).unwrap();
    assert_eq!(bodies, vec!["rs3".to_string(); 10]);
    assert!(plain_line(&lab, &rs(3)).is_some_and(|c| c[3] == "1"));
    assert!(plain_line(&lab, &rs(1)).is_none() && plain_line(&lab, &rs(2)).is_none());
    assert!(lab
        .xvsadm_ok(&["-S", "-n"])
        .unwrap()
        .contains(&format!("--sorry-server {}", rs(3))),);
    // One real server back: the sorry server leaves.
    lab.start_apache(2).unwrap();
    wait_table(&lab, &rs(2), "active", Duration::from_secs(10));
    assert_eq!(service(&lab)["sorry_server"]["table"], "removed");
    let bodies = lab.curl_many(&url(), 10).unwrap();
    assert_eq!(bodies, vec!["rs2".to_string(); 10]);
    assert!(plain_line(&lab, &rs(3)).is_none());
    eprintln!(
        "health e2e: rs1 out of the tables {detection_min:?} after its port was seen closed, \
         {detection_max:?} after its stop began (configured bound {bound:?} + the push); \
         meanwhile {window_failed} of {window_done} requests failed; {} requests in all, {} \
         failed, none after detection; back {recovery:?} after it answered again (rise 2 × \
         500 ms); sorry server in use {sorry_after:?} after both stopped",
        report.ok + report.failed,
        report.failed
    );
}

/// HTTP checks of a path: a failing status takes a server out; with `--check-inhibit` it stays
/// listed at weight 0 and its established connection keeps working (the server itself is
/// fine), without it the server leaves the tables and its established connection is scheduled
/// afresh on its next packet, to a server that resets it.
#[test]
fn http_status_inhibit_keeps_connections_and_removal_reschedules_them() {
    let lab = two_reals("xvshc-http");
    for i in 1..=2 {
        std::fs::write(lab.rs_dir(i).join("www/health"), "ok\n").unwrap();
    }
    lab.xvsadm_ok(&[
        "-A",
        "-t",
        &vip(),
        "-s",
        "rr",
        "--check",
        "http",
        "--check-path",
        "/health",
        "--check-interval",
        "300ms",
        "--check-retry",
        "0",
        "--check-rise",
        "1",
    ])
    .unwrap();
    lab.xvsadm_ok(&["-a", "-t", &vip(), "-r", &rs(1), "-g", "--check-inhibit"])
        .unwrap();
    lab.xvsadm_ok(&["-a", "-t", &vip(), "-r", &rs(2), "-g"])
        .unwrap();
    wait_checked(&lab, 1);
    let mut held1 = held_on(&lab, "rs1");
    let mut held2 = held_on(&lab, "rs2");

    // rs1's health page goes away: 404 is not 2xx.
    std::fs::remove_file(lab.rs_dir(1).join("www/health")).unwrap();
    wait_table(&lab, &rs(1), "inhibited", Duration::from_secs(10));
    assert_eq!(real(&lab, &rs(1))["health"]["last"], "status 404");
    let cols = plain_line(&lab, &rs(1)).expect("an inhibited server stays listed");
    assert_eq!(cols[3], "0", "weight 0: {cols:?}");
    assert_eq!(
        held1.get().unwrap(),
        "rs1",
        "inhibited: established flow kept"
    );
    let bodies = lab.curl_many(&url(), 20).unwrap();
    assert_eq!(bodies, vec!["rs2".to_string(); 20]);
    // Configured weight unchanged.
    assert!(lab
        .xvsadm_ok(&["-S", "-n"])
        .unwrap()
        .contains(&format!("-r {} -g -w 1 --check-inhibit yes", rs(1))));
    std::fs::write(lab.rs_dir(1).join("www/health"), "ok\n").unwrap();
    wait_table(&lab, &rs(1), "active", Duration::from_secs(10));
    assert_eq!(plain_line(&lab, &rs(1)).unwrap()[3], "1");

    // rs2 without --check-inhibit: out of the tables and of the listing.
    std::fs::remove_file(lab.rs_dir(2).join("www/health")).unwrap();
    wait_table(&lab, &rs(2), "removed", Duration::from_secs(10));
    assert!(plain_line(&lab, &rs(2)).is_none());
    let bodies = lab.curl_many(&url(), 10).unwrap();
    assert_eq!(bodies, vec!["rs1".to_string(); 10]);
    // Its connection's next packet goes to rs1, which knows nothing of it and resets it
    // (IPVS, with the destination gone, would drop the packets instead).
    assert!(
        held2.get().is_err(),
        "a removed server's connection is not kept"
    );
    assert_eq!(held1.get().unwrap(), "rs1");
}

/// HTTPS (apache2 with mod_ssl and a self-signed certificate: not verified, as keepalived's
/// SSL_GET) with a body text and an MD5 digest, and MISC checks by exit status.
#[test]
fn https_digest_and_misc_checks() {
    let mut lab = two_reals("xvshc-tls");
    lab.enable_tls(1).unwrap();
    lab.xvsadm_ok(&["-A", "-t", &vip(), "-s", "rr", "--check-interval", "300ms"])
        .unwrap();
    lab.xvsadm_ok(&[
        "-a",
        "-t",
        &vip(),
        "-r",
        &rs(1),
        "-g",
        "--check",
        "https",
        "--check-port",
        "443",
        "--check-body",
        "rs1",
    ])
    .unwrap();
    lab.xvsadm_ok(&[
        "-a",
        "-t",
        &vip(),
        "-r",
        &rs(2),
        "-g",
        "--check",
        "misc",
        "--check-command",
        "sh -c 'exit 1'",
    ])
    .unwrap();
    // MISC_CHECK's retry is 0: the first failure takes rs2 out.
    wait_table(&lab, &rs(2), "removed", Duration::from_secs(10));
    assert_eq!(real(&lab, &rs(2))["health"]["last"], "exit 1");
    wait_checked(&lab, 2);
    let h = real(&lab, &rs(1))["health"].clone();
    assert_eq!(
        (&h["state"], &h["last"], &h["failures"]),
        (&Value::from("up"), &Value::from("ok"), &Value::from(0)),
        "{h}"
    );
    assert_eq!(h["target"], format!("GET https://{}:443/", rs_ip4(1)));
    assert_eq!(
        lab.curl_many(&url(), 10).unwrap(),
        vec!["rs1".to_string(); 10]
    );

    // A digest that does not match, then the right one (md5sum of the page, as genhash).
    let out = netns::sh(&lab.ns("cl"), "printf 'rs1\\n' | md5sum").unwrap();
    let md5 = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let https = |digest: &str| {
        lab.xvsadm_ok(&[
            "-e",
            "-t",
            &vip(),
            "-r",
            &rs(1),
            "-g",
            "--check",
            "https",
            "--check-port",
            "443",
            "--check-digest",
            digest,
            "--check-retry",
            "0",
        ])
        .unwrap();
    };
    https(&"0".repeat(32));
    wait_table(&lab, &rs(1), "removed", Duration::from_secs(10));
    let last = real(&lab, &rs(1))["health"]["last"].clone();
    assert_eq!(last, format!("digest mismatch (got {md5})"));
    https(&md5);
    wait_table(&lab, &rs(1), "active", Duration::from_secs(10));
    // The command sees the real server's address.
    lab.xvsadm_ok(&[
        "-e",
        "-t",
        &vip(),
        "-r",
        &rs(2),
        "-g",
        "--check",
        "misc",
        "--check-command",
        &format!(r#"sh -c 'test "$XVS_CHECK_IP" = {}'"#, rs_ip4(2)),
    ])
    .unwrap();
    wait_table(&lab, &rs(2), "active", Duration::from_secs(10));
    let t = tally(&lab.curl_many(&url(), 20).unwrap());
    for name in ["rs1", "rs2"] {
        assert!((5..=15).contains(t.get(name).unwrap_or(&0)), "{t:?}");
    }
}

/// The same checks and sorry server declared in the configuration file: applied with
/// `xvsadm apply -f`, they run (an HTTP default for the service, a real server's own TCP
/// check), take failing servers out and put the sorry server in; `xvsadm export` writes them
/// back; a file without them removes them and the servers are unchecked again.
#[test]
fn checks_and_the_sorry_server_from_the_configuration_file() {
    let mut lab = Lab::start(LabOptions {
        tag: "xvshc-file".into(),
        reals: 3,
        bin_dir: default_bin_dir(),
        xvsd_args: Vec::new(),
        two_arms: false,
    })
    .expect("lab");
    std::fs::write(lab.rs_dir(1).join("www/health"), "ok\n").unwrap();
    let reals = format!(
        r#"  [[service.real]]
  address = "{rs1}"
  [[service.real]]
  address = "{rs2}"
"#,
        rs1 = rs_ip4(1),
        rs2 = rs_ip4(2),
    );
    let checked = format!(
        r#"[[service]]
tcp = "{vip}"
scheduler = "rr"
sorry-server = "{sorry}"
  [service.health-check]
  type = "http"
  path = "/health"
  interval = "300ms"
  retry = 0
  rise = 1
{reals}    health-check = {{ type = "tcp", interval = 0.3 }}
"#,
        vip = vip(),
        sorry = rs_ip4(3),
    );
    let file = lab.dir.join("xvs.toml");
    let f = file.display().to_string();
    std::fs::write(&file, &checked).unwrap();
    let out = lab.xvsadm_ok(&["apply", "-f", &f]).unwrap();
    assert!(
        out.contains(&format!(
            "-A -t {} -s rr --sorry-server {} --check http --check-path /health \
             --check-interval 300ms --check-retry 0 --check-rise 1",
            vip(),
            rs(3)
        )),
        "{out}"
    );
    wait_checked(&lab, 1);
    assert_eq!(
        real(&lab, &rs(1))["health"]["target"],
        format!("GET http://{}/health", rs(1))
    );
    let t = tally(&lab.curl_many(&url(), 20).unwrap());
    assert!(
        t.get("rs1").copied().unwrap_or(0) >= 5 && t.get("rs2").copied().unwrap_or(0) >= 5,
        "{t:?}"
    );

    // rs1's page goes (its HTTP check fails), rs2 stops listening (its TCP check fails).
    std::fs::remove_file(lab.rs_dir(1).join("www/health")).unwrap();
    wait_table(&lab, &rs(1), "removed", Duration::from_secs(10));
    assert_eq!(real(&lab, &rs(1))["health"]["last"], "status 404");
    lab.stop_apache(2).unwrap();
    wait_table(&lab, &rs(2), "removed", Duration::from_secs(10));
    assert_eq!(real(&lab, &rs(2))["health"]["last"], "connection refused");
    poll(Duration::from_secs(10), "the sorry server in use", || {
        (service(&lab)["sorry_server"]["table"] == "active").then_some(())
    })
    .unwrap();
    assert_eq!(
        lab.curl_many(&url(), 10).unwrap(),
        vec!["rs3".to_string(); 10]
    );

    // export writes the checks and the sorry server; applied, it is no change.
    let exported = lab.xvsadm_ok(&["export"]).unwrap();
    for needle in [
        format!("sorry-server = \"{}\"", rs(3)),
        "[service.health-check]".to_string(),
        "type = \"http\"".to_string(),
        "interval = \"300ms\"".to_string(),
        "[service.real.health-check]".to_string(),
        "type = \"tcp\"".to_string(),
    ] {
        assert!(exported.contains(&needle), "no {needle:?} in:\n{exported}");
    }
    let export_file = lab.dir.join("exported.toml");
    std::fs::write(&export_file, &exported).unwrap();
    let again = lab
        .xvsadm_ok(&["apply", "-f", &export_file.display().to_string()])
        .unwrap();
    assert!(again.contains("no changes"), "{again}");

    // The file without them: nothing is checked, both servers are back in the tables (rs2 is
    // still stopped: unchecked, it is no longer known to be down) and the sorry server goes.
    std::fs::write(
        &file,
        format!(
            "[[service]]\ntcp = \"{}\"\nscheduler = \"rr\"\n{reals}",
            vip()
        ),
    )
    .unwrap();
    let out = lab.xvsadm_ok(&["apply", "-f", &f]).unwrap();
    assert!(
        out.contains(&format!(
            "-E -t {} -s rr --check none --sorry-server none",
            vip()
        )) && out.contains(&format!(
            "-e -t {} -r {} -g -w 1 --check inherit",
            vip(),
            rs(2)
        )),
        "{out}"
    );
    wait_table(&lab, &rs(1), "active", Duration::from_secs(10));
    wait_table(&lab, &rs(2), "active", Duration::from_secs(10));
    assert_eq!(service(&lab)["sorry_server"], Value::Null);
    assert!(!lab.xvsadm_ok(&["-S", "-n"]).unwrap().contains("--check"));
    lab.start_apache(2).unwrap();
    let t = tally(&lab.curl_many(&url(), 20).unwrap());
    assert!(
        t.get("rs1").copied().unwrap_or(0) >= 5 && t.get("rs2").copied().unwrap_or(0) >= 5,
        "{t:?}"
    );
}
