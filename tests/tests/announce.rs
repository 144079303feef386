//! Announcements to a router (issue 18, item 1): xvsd keeps a route per VIP whose services have
//! their quorum in its table (`--announce-table`), a real BIRD 2 beside it exports that table
//! over BGP (with BFD), and a real BIRD 2 in the router's namespace installs what it learns in
//! its kernel table. A misc health check the test turns on and off moves the service across
//! its quorum; `xvsadm drain` withdraws the director's VIPs and puts a real server out of
//! service; a stopped BIRD (a hung director whose link stays up) is noticed by BFD.
//!
//! ```text
//!  router ns: r0 198.51.100.1 (AS 65000) ── veth ── d0 198.51.100.2 (AS 65010): xvsd + bird
//! ```

use std::{
    fs,
    time::{Duration, Instant},
};

use anyhow::Result;
use xvs_tests::{bird::Bird, daemon::Xvsd, netns, poll};

const VIP: &str = "203.0.113.10";
const TABLE: &str = "100";

/// The director's BGP speaker: learns xvsd's routes from table 100 and exports them.
const DIRECTOR_BIRD: &str = r#"
router id 198.51.100.2;
protocol device { scan time 1; }
protocol kernel xvs {
    kernel table 100;
    learn;
    scan time 1;
    ipv4 { import all; export none; };
}
protocol bfd { interface "d0" { interval 100 ms; multiplier 3; }; }
protocol bgp uplink {
    local 198.51.100.2 as 65010;
    neighbor 198.51.100.1 as 65000;
    bfd on;
    # A test's pace: reconnect within a second or two after a session went down.
    connect delay time 1; connect retry time 1; error wait time 1, 2;
    ipv4 { import none; export where proto = "xvs"; next hop self; };
}
"#;

/// The router: learns the VIPs over BGP and installs them in its main table.
const ROUTER_BIRD: &str = r#"
router id 198.51.100.1;
protocol device { scan time 1; }
protocol kernel {
    merge paths on;
    ipv4 { import none; export all; };
}
protocol bfd { interface "r0" { interval 100 ms; multiplier 3; }; }
protocol bgp director1 {
    local 198.51.100.1 as 65000;
    neighbor 198.51.100.2 as 65010;
    bfd on;
    connect delay time 1; connect retry time 1; error wait time 1, 2;
    ipv4 { import all; export none; };
}
"#;

/// The router's route to the VIP, if it has one (`ip route show VIP`).
fn router_route(router: &str) -> Option<String> {
    let out = netns::cmd_in(router, "ip")
        .args(["route", "show", VIP])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!text.is_empty()).then_some(text)
}

#[test]
fn vips_follow_the_quorum_and_drains_to_the_router_and_bfd_notices_a_hung_director() -> Result<()> {
    let mut d = Xvsd::new("announce")?;
    let ns = "xvs-announce-d";
    let router = "xvs-announce-r";
    netns::destroy(router);
    netns::create(router)?;
    // Cleanup of the router's namespace (and the BIRD in it) even when the test fails.
    struct Ns(&'static str);
    impl Drop for Ns {
        fn drop(&mut self) {
            netns::destroy(self.0);
        }
    }
    let _router_ns = Ns("xvs-announce-r");
    // d1, the veth's other end, becomes the router's r0.
    netns::ip(&["-n", ns, "link", "set", "d1", "netns", router])?;
    netns::ip(&["-n", router, "link", "set", "d1", "name", "r0"])?;
    netns::ip(&["-n", router, "addr", "add", "198.51.100.1/24", "dev", "r0"])?;
    netns::ip(&["-n", router, "link", "set", "r0", "up"])?;
    netns::ip(&["-n", router, "link", "set", "lo", "up"])?;
    netns::ip(&["-n", ns, "link", "set", "lo", "up"])?;

    let flag = d.dir.join("rs-up");
    fs::write(&flag, "")?;
    d.start(&["--announce-table", TABLE])?;
    d.xvsadm_ok(&[
        "-A",
        "-t",
        &format!("{VIP}:80"),
        "-s",
        "rr",
        "--quorum",
        "2",
        "--hysteresis",
        "1",
    ])?;
    // Weight 3, checked by a command that succeeds while the flag file exists.
    let check = format!("test -e {}", flag.display());
    d.xvsadm_ok(&[
        "-a",
        "-t",
        &format!("{VIP}:80"),
        "-r",
        "198.51.100.11:80",
        "-g",
        "-w",
        "3",
        "--check",
        "misc",
        "--check-command",
        &check,
        "--check-interval",
        "200ms",
        "--check-retry",
        "0",
        "--check-rise",
        "1",
    ])?;
    // xvsd's route, in its table, with its protocol number.
    let table_route = poll(Duration::from_secs(5), "xvsd's route in table 100", || {
        let out = netns::cmd_in(ns, "ip")
            .args(["route", "show", "table", TABLE, "proto", "248"])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains(VIP).then_some(text)
    })?;
    assert!(table_route.contains("blackhole"), "{table_route}");

    let dir_bird = Bird::start(ns, &d.dir, "director", DIRECTOR_BIRD)?;
    let _router_bird = Bird::start(router, &d.dir, "router", ROUTER_BIRD)?;
    // The router learns the VIP, through the director.
    let route = poll(
        Duration::from_secs(30),
        "the router's route to the VIP",
        || router_route(router).filter(|r| r.contains("via 198.51.100.2")),
    )
    .map_err(|e| {
        e.context(format!(
            "director's bird: {}\nrouter: {:?}",
            dir_bird.birdc("show route all").unwrap_or_default(),
            router_route(router)
        ))
    })?;
    assert!(route.contains("proto bird"), "{route}");
    let listing = d.xvsadm_ok(&["-L", "-n", "--json"])?;
    let json: serde_json::Value = serde_json::from_str(&listing)?;
    assert_eq!(json["announce"]["table"], 100, "{listing}");
    assert_eq!(json["announce"]["announced"][0], VIP, "{listing}");
    assert_eq!(json["services"][0]["quorum"]["up"], true, "{listing}");
    assert_eq!(json["services"][0]["quorum"]["live_weight"], 3, "{listing}");

    // A drained director withdraws its VIPs and announces them again when the drain ends.
    let out = d.xvsadm_ok(&["drain", "--no-wait"])?;
    assert!(out.contains("director: drained"), "{out}");
    poll(
        Duration::from_secs(10),
        "the drained director's VIP to go",
        || router_route(router).is_none().then_some(()),
    )?;
    let listing = d.xvsadm_ok(&["-L", "-n", "--json"])?;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&listing)?["drained"],
        true,
        "{listing}"
    );
    d.xvsadm_ok(&["drain", "--cancel"])?;
    poll(
        Duration::from_secs(10),
        "the VIP back after the drain",
        || router_route(router).filter(|r| r.contains("via 198.51.100.2")),
    )?;
    // A real server drained: weight 0, then removed once it has no connection (none here).
    d.xvsadm_ok(&[
        "-a",
        "-t",
        &format!("{VIP}:80"),
        "-r",
        "198.51.100.12:80",
        "-g",
        "-w",
        "2",
    ])?;
    let out = d.xvsadm_ok(&[
        "drain",
        "-t",
        &format!("{VIP}:80"),
        "-r",
        "198.51.100.12",
        "--timeout",
        "5s",
        "--interval",
        "200ms",
    ])?;
    assert!(
        out.contains("real server 198.51.100.12:80: weight 0"),
        "{out}"
    );
    assert!(
        out.contains("real server 198.51.100.12:80: removed (0 connections were left)"),
        "{out}"
    );
    let listing = d.xvsadm_ok(&["-L", "-n"])?;
    assert!(!listing.contains("198.51.100.12"), "{listing}");
    // After ipvsadm's table, what the director announces.
    assert!(listing.contains("\nAnnounced (table "), "{listing}");

    // The real server fails its check: live weight 0 < quorum - hysteresis: withdrawn.
    fs::remove_file(&flag)?;
    let t0 = Instant::now();
    poll(
        Duration::from_secs(10),
        "the router to lose the VIP",
        || router_route(router).is_none().then_some(()),
    )?;
    let withdrawn_after = t0.elapsed();
    let listing = d.xvsadm_ok(&["-L", "-n", "--json"])?;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&listing)?["announce"]["withdrawn"][0],
        VIP,
        "{listing}"
    );
    assert!(d.log().contains("service lost its quorum"), "{}", d.log());
    assert!(d.log().contains("VIP withdrawn"), "{}", d.log());
    // Back: 3 >= quorum + hysteresis: announced again.
    fs::write(&flag, "")?;
    let t1 = Instant::now();
    poll(
        Duration::from_secs(10),
        "the router to learn the VIP again",
        || router_route(router).filter(|r| r.contains("via 198.51.100.2")),
    )?;
    let announced_after = t1.elapsed();

    // A hung director (its BIRD stopped, its link up): BFD takes the route away in well
    // under a second (100 ms x 3), where BGP's hold time alone would take 90 s.
    // SAFETY: plain kill(2) on the test's own child.
    unsafe { libc::kill(dir_bird.pid() as i32, libc::SIGSTOP) };
    let t2 = Instant::now();
    let gone = poll(Duration::from_secs(5), "BFD to take the route away", || {
        router_route(router).is_none().then_some(())
    });
    let bfd_after = t2.elapsed();
    // SAFETY: as above.
    unsafe { libc::kill(dir_bird.pid() as i32, libc::SIGCONT) };
    gone?;
    assert!(bfd_after < Duration::from_secs(2), "BFD took {bfd_after:?}");
    println!(
        "withdrawn at the router {withdrawn_after:?} after the check's flag went (check every \
         200 ms); announced again {announced_after:?} after it came back; a hung director's \
         route gone {bfd_after:?} after its BIRD stopped (BFD 100 ms x 3)"
    );

    // xvsd stopped: the pinned data plane goes on forwarding, so the VIP stays announced.
    poll(Duration::from_secs(20), "BGP and BFD up again", || {
        router_route(router).filter(|r| r.contains("via 198.51.100.2"))
    })?;
    d.stop()?;
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        router_route(router).is_some(),
        "withdrawn when xvsd stopped"
    );
    // --cleanup with the table withdraws what xvsd announced.
    let out = d.once(&["--cleanup", "--announce-table", TABLE])?;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("withdrew 1 announced VIPs from table 100"),
        "{out:?}"
    );
    poll(
        Duration::from_secs(10),
        "the router to lose the VIP after --cleanup",
        || router_route(router).is_none().then_some(()),
    )?;
    Ok(())
}
