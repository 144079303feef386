//! Connection sync, ipvsadm's way, between two directors on one segment: director A (the lab's)
//! runs `--start-daemon master`, director B (a second namespace on the lab's bridge, its own
//! xvsd) `--start-daemon backup`, both with the same rr service over the lab's two real
//! servers. A real client connection through A must appear in B's connection table bound to
//! the same real server, from IPVS sync messages that tshark's "ipvs" dissector reads with
//! our syncid. A backup that starts, or whose link comes back, asks for the master's whole
//! table and says when it holds it (`xvsadm synced`). Root required.

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    sync::mpsc,
    time::Duration,
};

use xvs_tests::{
    lab::{default_bin_dir, rs_ip4, two_reals, Lab, VIP4},
    netns::{self, create, ip},
    poll,
    xvsd::XvsdProcess,
};

/// Director B's address on the lab's segment.
const DIR_B4: &str = "198.51.100.3";
const SYNCID: &str = "7";

/// Director B: a namespace on the lab's bridge and an xvsd of its own (pins in the lab's
/// bpffs, so they go with the lab).
fn director_b(lab: &Lab) -> XvsdProcess {
    let ns = lab.ns("dirb");
    create(&ns).unwrap();
    let sw = lab.ns("sw");
    ip(&[
        "-n", &sw, "link", "add", "p-dirb", "type", "veth", "peer", "name", "eth0", "netns", &ns,
    ])
    .unwrap();
    ip(&["-n", &sw, "link", "set", "p-dirb", "master", "br0", "up"]).unwrap();
    ip(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{DIR_B4}/24"),
        "dev",
        "eth0",
    ])
    .unwrap();
    ip(&["-n", &ns, "link", "set", "eth0", "up"]).unwrap();
    let dir = std::env::temp_dir().join("xvs-sync-dirb");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("xvsd.sock");
    let pins = lab.pin_dir().with_file_name("dirb-eth0");
    let args = [
        "--iface",
        "eth0",
        "--xdp-mode",
        "native",
        "--socket",
        &socket.display().to_string(),
        "--pin-dir",
        &pins.display().to_string(),
        "--state-dir",
        &dir.join("state").display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    let mut b = XvsdProcess::new(
        &ns,
        &default_bin_dir(),
        &socket,
        &dir.join("xvsd.log"),
        args,
    );
    b.start(&[]).unwrap();
    b
}

/// The rr service of the lab's VIP over both real servers (DR), on a director.
fn service(xvsadm: impl Fn(&[&str]) -> anyhow::Result<String>) {
    let vip = format!("{VIP4}:80");
    xvsadm(&["-A", "-t", &vip, "-s", "rr"]).unwrap();
    for i in [1, 2] {
        xvsadm(&["-a", "-t", &vip, "-r", &rs_ip4(i), "-g"]).unwrap();
    }
}

/// (client, real server) of every TCP connection `-L -n -c` lists.
fn connections(listing: &str) -> Vec<(String, String)> {
    listing
        .lines()
        .filter(|l| l.starts_with("TCP"))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.get(3)?.to_string(), f.get(5)?.to_string()))
        })
        .collect()
}

/// tshark on director B's eth0, reading the first sync message's syncid; returns once tshark
/// captures (a receiver of its answer), or fails if it does not start within 20 s.
fn tshark_syncid(ns: &str) -> mpsc::Receiver<String> {
    let mut child = netns::cmd_in(ns, "tshark")
        .args([
            "-n",
            "-i",
            "eth0",
            "-c",
            "1",
            "-a",
            "duration:40",
            "-f",
            "udp port 8848",
            "-T",
            "fields",
            "-e",
            "ipvs.syncid",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tshark (one of the lab's packages)");
    let stderr = child.stderr.take().unwrap();
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("Capturing on") {
                let _ = ready_tx.send(());
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("tshark did not start capturing");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let out = child
            .wait_with_output()
            .map(|o| o.stdout)
            .unwrap_or_default();
        let _ = tx.send(String::from_utf8_lossy(&out).trim().to_string());
    });
    rx
}

#[test]
fn a_connection_through_the_master_continues_on_the_same_real_server_through_the_backup() {
    let mut lab = two_reals("sync");
    let b = director_b(&lab);
    service(|a| lab.xvsadm_ok(a));
    service(|a| b.xvsadm_ok_in(a, None));
    lab.xvsadm_ok(&[
        "--start-daemon",
        "master",
        "--mcast-interface",
        "eth0",
        "--syncid",
        SYNCID,
    ])
    .unwrap();
    b.xvsadm_ok_in(
        &[
            "--start-daemon",
            "backup",
            "--mcast-interface",
            "eth0",
            "--syncid",
            SYNCID,
        ],
        None,
    )
    .unwrap();
    assert_eq!(
        lab.xvsadm_ok(&["-L", "--daemon"]).unwrap(),
        "master sync daemon (mcast=eth0, syncid=7, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)\n"
    );
    assert_eq!(
        b.xvsadm_ok_in(&["-L", "--daemon"], None).unwrap(),
        "backup sync daemon (mcast=eth0, syncid=7, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)\n"
    );
    // ipvsadm's error for a second master.
    let again = lab
        .xvsadm(&["--start-daemon", "master", "--mcast-interface", "eth0"])
        .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("Daemon has already run"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    let syncid = tshark_syncid(&lab.ns("dirb"));
    // A real connection through A (rr picks one of the two real servers).
    let mut conn = lab.connect(format!("{VIP4}:80").parse().unwrap()).unwrap();
    let served_by = conn.get().unwrap();
    let on_a = connections(&lab.xvsadm_ok(&["-L", "-n", "-c"]).unwrap());
    assert_eq!(on_a.len(), 1, "{on_a:?}\n{}", lab.xvsd_log());
    let (client, real) = on_a[0].clone();
    let expected_rs = if served_by == "rs1" {
        rs_ip4(1)
    } else {
        rs_ip4(2)
    };
    assert_eq!(
        real,
        format!("{expected_rs}:80"),
        "A's entry names its server"
    );
    // B learns it, bound to the same real server.
    let on_b = poll(
        Duration::from_secs(10),
        "the connection on director B",
        || {
            let listing = b.xvsadm_ok_in(&["-L", "-n", "-c"], None).ok()?;
            connections(&listing)
                .into_iter()
                .find(|(c, _)| *c == client)
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nA: {}\nB: {}\nB's log:\n{}",
            lab.xvsadm_ok(&["-L", "--daemon", "--json"])
                .unwrap_or_default(),
            b.xvsadm_ok_in(&["-L", "--daemon", "--json"], None)
                .unwrap_or_default(),
            b.log_text()
        )
    });
    assert_eq!(on_b.1, real, "B binds the connection to A's real server");
    // The connection still works through A, and B counted what it installed.
    assert_eq!(conn.get().unwrap(), served_by);
    let json: serde_json::Value =
        serde_json::from_str(&b.xvsadm_ok_in(&["-L", "--daemon", "--json"], None).unwrap())
            .unwrap();
    assert!(json[0]["stats"]["installed"].as_u64() >= Some(1), "{json}");
    // tshark reads our messages as IPVS's, with our syncid.
    let seen = syncid
        .recv_timeout(Duration::from_secs(45))
        .expect("tshark ended");
    assert_eq!(seen, SYNCID, "tshark's ipvs.syncid");
    // A restart of A's xvsd resumes its master from the state file, and the adopted data
    // plane reports to the new xvsd (its ring buffer is the new program's own).
    lab.stop_xvsd().unwrap();
    lab.start_xvsd().unwrap();
    assert_eq!(
        lab.xvsadm_ok(&["-L", "--daemon"]).unwrap(),
        "master sync daemon (mcast=eth0, syncid=7, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)\n",
        "{}",
        lab.xvsd_log()
    );
    let mut second = lab.connect(format!("{VIP4}:80").parse().unwrap()).unwrap();
    second.get().unwrap();
    poll(
        Duration::from_secs(10),
        "the second connection on director B",
        || {
            let on_a = connections(&lab.xvsadm_ok(&["-L", "-n", "-c"]).ok()?);
            let on_b = connections(&b.xvsadm_ok_in(&["-L", "-n", "-c"], None).ok()?);
            (on_a.len() == 2 && on_a.iter().all(|c| on_b.contains(c))).then_some(())
        },
    )
    .unwrap();
    // Stopping: ipvsadm's error once stopped.
    b.xvsadm_ok_in(&["--stop-daemon", "backup"], None).unwrap();
    assert_eq!(b.xvsadm_ok_in(&["-L", "--daemon"], None).unwrap(), "");
    let stopped = b.xvsadm(&["--stop-daemon", "backup"]).unwrap();
    assert!(String::from_utf8_lossy(&stopped.stderr).contains("No daemon is running"));

    // A director that was away asks for the whole table when its backup starts again: the
    // connection A opened meanwhile (whose report B missed) reaches B with the others, and B
    // says when it holds them (`xvsadm synced`, keepalived's check).
    let synced = |args: &[&str]| {
        let out = b
            .xvsadm(&[&["synced"], args].concat())
            .expect("xvsadm synced");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    };
    let (code, said) = synced(&[]);
    assert_eq!(code, Some(2), "no backup: {said}");
    assert!(said.contains("no backup sync daemon"), "{said}");
    let mut third = lab.connect(format!("{VIP4}:80").parse().unwrap()).unwrap();
    third.get().unwrap();
    let on_a = poll(Duration::from_secs(10), "A's three connections", || {
        let on_a = connections(&lab.xvsadm_ok(&["-L", "-n", "-c"]).ok()?);
        (on_a.len() == 3).then_some(on_a)
    })
    .unwrap();
    b.xvsadm_ok_in(
        &[
            "--start-daemon",
            "backup",
            "--mcast-interface",
            "eth0",
            "--syncid",
            SYNCID,
        ],
        None,
    )
    .unwrap();
    let (code, said) = synced(&["--wait", "10s"]);
    assert_eq!(code, Some(0), "{said}\nB's log:\n{}", b.log_text());
    assert!(
        said.starts_with("held: the tables of 1 peer") && said.contains("198.51.100.2 (3)"),
        "{said}"
    );
    let on_b = connections(&b.xvsadm_ok_in(&["-L", "-n", "-c"], None).unwrap());
    assert!(
        on_a.iter().all(|c| on_b.contains(c)),
        "A: {on_a:?}\nB: {on_b:?}"
    );
    // B's link goes down and comes back: it may have missed messages, so it waits for the
    // tables again before it says it holds them.
    let sw = lab.ns("sw");
    ip(&["-n", &sw, "link", "set", "p-dirb", "down"]).unwrap();
    ip(&["-n", &sw, "link", "set", "p-dirb", "up"]).unwrap();
    let (code, said) = synced(&[]);
    assert_eq!(code, Some(1), "right after the link came back: {said}");
    assert!(said.starts_with("waiting"), "{said}");
    let (code, said) = synced(&["--wait", "10s"]);
    assert_eq!(code, Some(0), "{said}\nB's log:\n{}", b.log_text());
    let log = b.log_text();
    let asked = log
        .lines()
        .filter(|l| l.contains("asked the peers for their connection tables"))
        .count();
    assert!(
        asked >= 2,
        "a request at the start and after the link came back:\n{log}"
    );
    println!("B held A's table again: {said}");
    drop(b);
    netns::destroy(&lab.ns("dirb"));
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join("xvs-sync-dirb"));
}
