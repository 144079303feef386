//! End-to-end tests in network namespaces: real apache2 real servers, curl from a client
//! namespace, xvsd attached in native XDP mode, configured through xvsadm. Root required.

use std::{collections::BTreeMap, process::Command};

use anyhow::Result;
use xvs_tests::{
    flood::reason,
    lab::{default_bin_dir, rs_ip4, rs_ip6, tally, two_reals as lab, Lab, VIP4, VIP6},
    netns,
};

/// A VIP of either family, with the strings the tests need.
struct Family {
    vip: String,
    url: String,
    rs: [String; 2],
}

fn families() -> [Family; 2] {
    [
        Family {
            vip: format!("{VIP4}:80"),
            url: format!("http://{VIP4}/"),
            rs: [format!("{}:80", rs_ip4(1)), format!("{}:80", rs_ip4(2))],
        },
        Family {
            vip: format!("[{VIP6}]:80"),
            url: format!("http://[{VIP6}]/"),
            rs: [format!("[{}]:80", rs_ip6(1)), format!("[{}]:80", rs_ip6(2))],
        },
    ]
}

fn setup(lab: &Lab, f: &Family, sched: &str, w1: u32, w2: u32) -> Result<()> {
    lab.xvsadm_ok(&["-A", "-t", &f.vip, "-s", sched])?;
    lab.xvsadm_ok(&[
        "-a",
        "-t",
        &f.vip,
        "-r",
        &f.rs[0],
        "-g",
        "-w",
        &w1.to_string(),
    ])?;
    lab.xvsadm_ok(&[
        "-a",
        "-t",
        &f.vip,
        "-r",
        &f.rs[1],
        "-g",
        "-w",
        &w2.to_string(),
    ])?;
    Ok(())
}

fn rx_bytes(ns: &str, dev: &str) -> u64 {
    let out = netns::sh(ns, &format!("cat /sys/class/net/{dev}/statistics/rx_bytes")).unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn dr_reaches_both_real_servers_which_answer_the_client_directly() {
    let lab = lab("e2e-dr");
    for f in families() {
        setup(&lab, &f, "rr", 1, 1).unwrap();
        let bodies = lab.curl_many(&f.url, 20).unwrap();
        let t = tally(&bodies);
        // rr from one shared cursor alternates exactly; the bound leaves room for retries.
        assert_eq!(bodies.len(), 20, "{}: {t:?}", f.url);
        for rs in ["rs1", "rs2"] {
            let n = t.get(rs).copied().unwrap_or(0);
            assert!((8..=12).contains(&n), "{}: {rs} got {n}: {t:?}", f.url);
        }
        // A 1 MiB download: the client receives it all, the director sees only the client's
        // side (requests and ACKs), because the real server answers the client directly.
        let big = format!("{}big", f.url);
        let dir_before = rx_bytes(&lab.ns("dir"), "eth0");
        let cl_before = rx_bytes(&lab.ns("cl"), "eth0");
        let out = netns::run(netns::cmd_in(&lab.ns("cl"), "curl").args([
            "-s",
            "-m",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            &big,
        ]))
        .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "1048576");
        let dir_rx = rx_bytes(&lab.ns("dir"), "eth0") - dir_before;
        let cl_rx = rx_bytes(&lab.ns("cl"), "eth0") - cl_before;
        assert!(cl_rx > 1 << 20, "client received {cl_rx} bytes");
        assert!(
            dir_rx < 200_000,
            "director received {dir_rx} bytes during a 1 MiB download: replies went through it"
        );
    }
    let listing = lab.xvsadm_ok(&["-L", "-n"]).unwrap();
    assert!(listing.contains("TCP  203.0.113.10:80 rr"), "{listing}");
    assert!(
        listing.contains("TCP  [2001:db8:10::10]:80 rr"),
        "{listing}"
    );
}

#[test]
fn wrr_one_to_three_splits_new_connections_one_to_three() {
    let lab = lab("e2e-wrr");
    const N: usize = 200;
    for f in families() {
        setup(&lab, &f, "wrr", 1, 3).unwrap();
        let bodies = lab.curl_many(&f.url, N).unwrap();
        let t = tally(&bodies);
        assert_eq!(bodies.len(), N, "{}: every request answered: {t:?}", f.url);
        let rs1 = t.get("rs1").copied().unwrap_or(0);
        // The data plane walks IPVS's wrr cycle (rs2, rs2, rs1, rs2) from one shared cursor,
        // so the split is exact; the tolerance only covers a retried connection.
        assert!(
            (rs1 as i64 - (N / 4) as i64).abs() <= 3,
            "{}: rs1 got {rs1} of {N}, expected {} +- 3: {t:?}",
            f.url,
            N / 4
        );
        let stats = lab.xvsadm_ok(&["-L", "-n", "--stats", "--exact"]).unwrap();
        assert!(stats.contains(&format!("{:>8}", N)), "{stats}");
    }
}

#[test]
fn weight_zero_keeps_established_and_removal_stops_traffic() {
    let lab = lab("e2e-quiesce");
    for f in families() {
        setup(&lab, &f, "rr", 1, 1).unwrap();
        let mut conn = lab.connect(f.vip.parse().unwrap()).unwrap();
        let first = conn.get().unwrap();
        let (held, held_rs, other) = if first == "rs1" {
            ("rs1", &f.rs[0], "rs2")
        } else {
            ("rs2", &f.rs[1], "rs1")
        };
        lab.xvsadm_ok(&["-e", "-t", &f.vip, "-r", held_rs, "-w", "0"])
            .unwrap();
        // The established connection stays on its server...
        for _ in 0..3 {
            assert_eq!(
                conn.get().unwrap(),
                held,
                "{}: established connection moved",
                f.url
            );
        }
        // ...and new connections go to the other one only.
        let t = tally(&lab.curl_many(&f.url, 20).unwrap());
        assert_eq!(t, BTreeMap::from([(other.to_string(), 20)]), "{}", f.url);
        let listing = lab.xvsadm_ok(&["-L", "-n"]).unwrap();
        assert!(
            listing
                .lines()
                .any(|l| l.contains(held_rs.as_str()) && l.contains("Route   0      1")),
            "quiesced server keeps its one active connection:\n{listing}"
        );
        // Removing the server stops traffic to it, established connections included.
        lab.xvsadm_ok(&["-d", "-t", &f.vip, "-r", held_rs]).unwrap();
        // Either the flow is reset by the server it was moved to, or that server answers.
        if let Ok(body) = conn.get() {
            assert_ne!(body, held, "{}: a deleted server still answered", f.url);
        }
        let t = tally(&lab.curl_many(&f.url, 10).unwrap());
        assert_eq!(t, BTreeMap::from([(other.to_string(), 10)]));
    }
}

#[test]
fn rejected_commands_exit_nonzero_and_change_nothing() {
    let lab = lab("e2e-reject");
    let f = &families()[0];
    setup(&lab, f, "wrr", 1, 3).unwrap();
    let before = lab.xvsadm_ok(&["-S", "-n"]).unwrap();
    let bad: &[&[&str]] = &[
        &["-A", "-t", &f.vip, "-s", "rr"],                // service exists
        &["-A", "-t", "203.0.113.20:80", "-s", "nosuch"], // unknown scheduler
        &["-a", "-t", &f.vip, "-r", &f.rs[0], "-w", "1"], // real server exists
        &["-a", "-t", "203.0.113.99:80", "-r", &f.rs[0]], // no such service
        &["-d", "-t", &f.vip, "-r", "198.51.100.99:80"],  // no such real server
        &["-A", "-t", "300.1.2.3:80", "-s", "rr"],        // bad address
        &["-a", "-t", &f.vip, "-r", "[2001:db8:1::11]:80"], // family mismatch
        &["-e", "-t", &f.vip, "-r", &f.rs[0], "-w", "65536"], // weight out of range
        &["-a", "-t", &f.vip, "-r", "198.51.100.13:80", "-g", "-m"], // two methods
        &["-A", "-t", "203.0.113.20:0", "-s", "rr"],      // port 0 without persistence
        &["-A", "-t", "203.0.113.20:80", "-p", "-M", "255.0.255.0"], // non-contiguous mask
        &[
            "-a",
            "-t",
            &f.vip,
            "-r",
            "198.51.100.13:80",
            "-x",
            "5",
            "-y",
            "10",
        ], // y > x
        &["-E", "-t", &f.vip, "-b", "sh-nosuch"],         // unknown scheduler flag
    ];
    for args in bad {
        let out = lab.xvsadm(args).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr.starts_with("xvsadm: ") || stderr.contains("error:"),
            "{args:?}: {stderr}"
        );
        assert_eq!(
            lab.xvsadm_ok(&["-S", "-n"]).unwrap(),
            before,
            "{args:?} changed the configuration"
        );
    }
    // An older client gets a clear refusal, not a half-understood request.
    {
        use std::io::{BufRead, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&lab.socket).unwrap();
        s.write_all(b"{\"version\":1,\"command\":{\"cmd\":\"list\"}}\n")
            .unwrap();
        let mut answer = String::new();
        std::io::BufReader::new(s).read_line(&mut answer).unwrap();
        assert!(
            answer.contains("protocol version 1 is not supported"),
            "{answer}"
        );
    }
    // -S output restores into an empty daemon and round-trips.
    lab.xvsadm_ok(&["-C"]).unwrap();
    assert_eq!(lab.xvsadm_ok(&["-S", "-n"]).unwrap(), "");
    let restore = Command::new(default_bin_dir().join("xvsadm"))
        .arg("--socket")
        .arg(&lab.socket)
        .arg("-R")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(before.as_bytes())?;
            c.wait()
        })
        .unwrap();
    assert!(restore.success());
    assert_eq!(lab.xvsadm_ok(&["-S", "-n"]).unwrap(), before);
    // JSON carries the same data.
    let json: serde_json::Value =
        serde_json::from_str(&lab.xvsadm_ok(&["-L", "-n", "--json"]).unwrap()).unwrap();
    assert_eq!(json["services"][0]["reals"][1]["weight"], 3);
}

#[test]
fn xvsd_stays_attached_after_sigterm_until_cleanup() {
    let mut lab = lab("e2e-stop");
    let f = &families()[0];
    setup(&lab, f, "rr", 1, 1).unwrap();
    assert_eq!(lab.curl_many(&f.url, 2).unwrap().len(), 2);
    let link = |lab: &Lab| {
        String::from_utf8_lossy(
            &netns::sh(&lab.ns("dir"), "ip link show dev eth0")
                .unwrap()
                .stdout,
        )
        .into_owned()
    };
    assert!(
        link(&lab).contains("xdp"),
        "director attached: {}",
        link(&lab)
    );
    lab.stop_xvsd().unwrap();
    assert!(!lab.socket.exists(), "socket left behind");
    // The pinned director keeps balancing with its last tables.
    assert!(link(&lab).contains("xdp"), "detached by SIGTERM");
    assert_eq!(lab.curl_many(&f.url, 2).unwrap().len(), 2);
    // --cleanup is how forwarding stops.
    let out = lab.xvsd_once(&["--cleanup"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !link(&lab).contains("xdp"),
        "still attached after --cleanup: {}",
        link(&lab)
    );
    assert!(!lab.pin_dir().exists(), "pins left behind");
    assert!(lab.curl_many(&f.url, 1).unwrap().is_empty());
}

#[test]
fn lab_demo_runs_and_cleans_up_even_after_a_crash() {
    xvs_tests::require_root();
    let demo = || {
        Command::new(default_bin_dir().join("xvs-lab"))
            .args(["demo", "--once", "--bin-dir"])
            .arg(default_bin_dir())
            .output()
            .unwrap()
    };
    // Leftovers of a crashed run: a namespace with the lab's prefix.
    netns::create("xvs-lab-cl").unwrap();
    let out = demo();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"rs1\": 10, \"rs2\": 20"), "{stdout}");
    assert!(stdout.contains("Route   2"), "{stdout}");
    assert!(
        netns::list("xvs-lab-").is_empty(),
        "namespaces left: {:?}",
        netns::list("xvs-lab-")
    );
    // A second run works the same.
    assert!(demo().status.success());
    assert!(netns::list("xvs-lab-").is_empty());
    // The lab's bpffs, and every pin in it, is gone too.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.lines().any(|l| l.contains("/xvs-lab/bpf")),
        "bpffs left mounted:\n{mounts}"
    );
}

/// The data plane logs only when asked: an xvsd without `--kernel-log` logs nothing of the
/// packets it drops; restarted with `--kernel-log debug` (adopting the pinned data plane, its
/// program reloaded with logging on), every dropped packet is logged with its reason under the
/// target `xvs_director`, whatever RUST_LOG says.
#[test]
fn the_data_plane_logs_drops_only_when_asked() {
    let mut lab = lab("xvskl");
    // A service without real servers: its packets are dropped (drop_no_backend).
    let vip = format!("{VIP4}:81");
    lab.xvsadm_ok(&["-A", "-t", &vip]).unwrap();
    let knock = |lab: &Lab| {
        let out = netns::cmd_in(&lab.ns("cl"), "curl")
            .args(["-s", "-m", "1", &format!("http://{vip}/")])
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "a service without real servers answered"
        );
    };
    let logged = |lab: &Lab| {
        lab.xvsd_log()
            .lines()
            .filter(|l| l.contains("drop_no_backend"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    knock(&lab);
    assert_eq!(
        logged(&lab),
        Vec::<String>::new(),
        "logged without --kernel-log"
    );

    lab.stop_xvsd().unwrap();
    lab.start_xvsd_with(&["--kernel-log", "debug"]).unwrap();
    knock(&lab);
    let lines = xvs_tests::poll(
        std::time::Duration::from_secs(10),
        "the drop to be logged",
        || Some(logged(&lab)).filter(|l| !l.is_empty()),
    )
    .unwrap_or_else(|e| panic!("{e}:\n{}", lab.xvsd_log()));
    assert!(
        lines
            .iter()
            .all(|l| l.contains("DEBUG") && l.contains("xvs_director")),
        "{lines:#?}"
    );
    // Forwarded packets are trace, not debug: a request that is answered logs nothing.
    let before = lab.xvsd_log().len();
    lab.xvsadm_ok(&["-A", "-t", &format!("{VIP4}:80")]).unwrap();
    lab.xvsadm_ok(&[
        "-a",
        "-t",
        &format!("{VIP4}:80"),
        "-r",
        &format!("{}:80", rs_ip4(1)),
    ])
    .unwrap();
    assert_eq!(
        lab.curl_many(&format!("http://{VIP4}/"), 3).unwrap().len(),
        3
    );
    let after = lab.xvsd_log();
    assert!(!after[before..].contains("tx_dr"), "{}", &after[before..]);
}

#[test]
fn frames_to_another_hosts_mac_are_the_kernels_and_a_macvlan_on_the_interface_is_balanced() {
    let lab = lab("e2e-mac");
    let f = &families()[0];
    setup(&lab, f, "rr", 1, 1).unwrap();
    let (cl, dir) = (lab.ns("cl"), lab.ns("dir"));
    let curl_once = || {
        netns::sh(&cl, &format!("curl -s -m 2 -o /dev/null {}", f.url))
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    assert!(curl_once(), "the service answers");
    // The client sends its frames for the director to a MAC no host has: the bridge floods
    // them to every port, the director's too.
    let neighbor = |mac: &str| {
        let out = netns::sh(
            &cl,
            &format!("ip neigh replace 198.51.100.2 lladdr {mac} dev eth0 nud permanent"),
        )
        .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    neighbor("02:00:00:00:99:99");
    let passed = reason(&lab, "pass_not_our_mac").unwrap();
    let forwarded = reason(&lab, "tx_dr").unwrap();
    assert!(
        !curl_once(),
        "a flooded frame for another host was balanced"
    );
    assert!(reason(&lab, "pass_not_our_mac").unwrap() > passed);
    assert_eq!(
        reason(&lab, "tx_dr").unwrap(),
        forwarded,
        "nothing forwarded"
    );
    // A macvlan on the director's interface (keepalived's use_vmac makes one): its address is
    // the director's, within xvsd's next look at the links.
    let out = netns::sh(
        &dir,
        "ip link add mv0 link eth0 address 02:00:00:00:99:98 type macvlan mode bridge \
         && ip link set mv0 up",
    )
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    neighbor("02:00:00:00:99:98");
    xvs_tests::poll(
        std::time::Duration::from_secs(10),
        "the macvlan's frames balanced",
        || curl_once().then_some(()),
    )
    .unwrap();
    assert!(reason(&lab, "tx_dr").unwrap() > forwarded);
    assert!(
        lab.xvsd_log().contains("02:00:00:00:99:98"),
        "xvsd says which MACs it answers for:\n{}",
        lab.xvsd_log()
    );
}

/// `xvsadm top -b -n 2` while the client makes requests: plain frames, the first without
/// rates, the second with the rates of the service that got the traffic (and of both its real
/// servers), none for the idle one, and the busy service first (sorted by conn/s).
#[test]
fn top_in_batch_mode_shows_the_rates_of_the_service_that_got_traffic() {
    use std::{
        io::{BufRead, BufReader},
        process::Stdio,
        sync::mpsc,
        time::{Duration, Instant},
    };
    let lab = lab("e2e-top");
    let f = &families()[0];
    setup(&lab, f, "rr", 1, 1).unwrap();
    let idle = format!("{VIP4}:443");
    lab.xvsadm_ok(&["-A", "-t", &idle, "-s", "rr"]).unwrap();
    lab.xvsadm_ok(&["-a", "-t", &idle, "-r", &format!("{}:443", rs_ip4(1)), "-g"])
        .unwrap();
    let mut top = Command::new(default_bin_dir().join("xvsadm"))
        .arg("--socket")
        .arg(&lab.socket)
        .args(["top", "-b", "-n", "2", "-d", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Killed and reaped whatever happens below.
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = top.stdout.take().unwrap();
    let mut top = Reap(top);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = vec![rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the first frame")];
    // The first sample is taken: traffic between it and the second.
    let bodies = lab.curl_many(&f.url, 40).unwrap();
    assert_eq!(bodies.len(), 40, "{:?}", tally(&bodies));
    let deadline = Instant::now() + Duration::from_secs(15);
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        lines.push(line);
    }
    let status = top.0.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(top.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "xvsadm top failed: {err}");
    let text = lines.join("\n");
    // Shown when the test fails.
    println!("{text}");
    assert!(
        !text.contains('\x1b'),
        "escape codes in batch mode:\n{text}"
    );
    let frames: Vec<&[String]> = {
        let starts: Vec<usize> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.starts_with("xvsadm top: "))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(starts.len(), 2, "two frames:\n{text}");
        vec![&lines[starts[0]..starts[1]], &lines[starts[1]..]]
    };
    // Conn/s of the service line or real-server line that starts with `name`.
    let conn_rate = |frame: &[String], name: &str| -> String {
        let line = frame
            .iter()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name:?} line:\n{text}"));
        let skip = name.split_whitespace().count();
        line.split_whitespace().nth(skip).unwrap().to_string()
    };
    let busy = format!("TCP  {} rr", f.vip);
    let idle = format!("TCP  {idle} rr");
    assert_eq!(
        conn_rate(frames[0], &busy),
        "-",
        "no rate in the first frame"
    );
    let rate: f64 = conn_rate(frames[1], &busy).parse().unwrap();
    assert!(rate >= 1.0, "the busy service's conn/s:\n{text}");
    for rs in &f.rs {
        let r: f64 = conn_rate(frames[1], &format!("  -> {rs}")).parse().unwrap();
        assert!(r >= 1.0, "{rs} got no conn/s:\n{text}");
    }
    assert_eq!(
        conn_rate(frames[1], &idle),
        "0",
        "the idle service:\n{text}"
    );
    let order: Vec<&String> = frames[1].iter().filter(|l| l.starts_with("TCP ")).collect();
    assert!(order[0].starts_with(&busy), "sorted by conn/s:\n{text}");
}
