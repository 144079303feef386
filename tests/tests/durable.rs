//! Durable state: every accepted change is saved before it is acknowledged, xvsd restores it
//! at start, and a crash (kill -9) at any point leaves exactly one committed configuration.
//! No traffic: a lone xvsd on a veth is enough.

use std::{fs, time::Duration};

use lb_user::{
    config_file,
    diff::canonical,
    model::Config,
    model::Timeouts,
    rules,
    state::{DesiredState, DEFAULT_TIMEOUTS},
};
use xvs_tests::daemon::Xvsd;

/// What a restart must bring back: the rules (sorted, as `-S -n` writes them) and timeouts.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Snapshot {
    rules: Vec<String>,
    timeouts: String,
}

fn expected(config: &Config, t: Timeouts) -> Snapshot {
    let mut rules: Vec<String> = rules::save(&canonical(config))
        .lines()
        .map(str::to_string)
        .collect();
    rules.sort();
    Snapshot {
        rules,
        timeouts: format!("Timeout (tcp tcpfin udp): {} {} {}", t.tcp, t.tcpfin, t.udp),
    }
}

fn observed(x: &Xvsd) -> Snapshot {
    let mut rules: Vec<String> = x
        .xvsadm_ok(&["-S", "-n"])
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    rules.sort();
    Snapshot {
        rules,
        timeouts: x
            .xvsadm_ok(&["-L", "--timeout"])
            .unwrap()
            .trim()
            .to_string(),
    }
}

/// Configuration number `i`: a few dozen services whose count, schedulers, weights and real
/// servers depend on `i`, so consecutive ones differ everywhere.
fn config_text(i: usize) -> String {
    let mut out = format!("[timeouts]\nudp = {}\n", 100 + i);
    for s in 0..(20 + (i * 7) % 40) {
        let sched = ["rr", "wrr", "wlc", "sh", "mh"][(s + i) % 5];
        out.push_str(&format!(
            "[[service]]\ntcp = \"203.0.113.{}:{}\"\nscheduler = \"{sched}\"\n",
            1 + s % 200,
            80 + s / 200 + i % 3,
        ));
        for r in 0..(1 + (s + i) % 3) {
            out.push_str(&format!(
                "  [[service.real]]\n  address = \"198.51.100.{}\"\n  weight = {}\n",
                10 + r + (i % 5),
                (s + r + i) % 7,
            ));
        }
    }
    out
}

#[test]
fn a_crash_at_any_point_restores_a_committed_configuration() {
    let mut x = Xvsd::new("xvscf-k").unwrap();
    x.start(&[]).unwrap();
    let mut committed = expected(&Config::default(), DEFAULT_TIMEOUTS);
    assert_eq!(observed(&x), committed);
    let mut current = DesiredState::default();
    // Kill points after the change started, in ms; "between" kills wait for the answer first.
    let delays = [0u64, 1, 3, 6, 10, 20, 40, 80, 150, 300];
    let (mut mid_change, mut mid_new, mut acked_kills) = (0, 0, 0);
    for i in 0..30 {
        // Each iteration commits one change of a different kind: a configuration file, an
        // ipvsadm restore (one transaction), a timeout change, or single commands.
        let (args, stdin, next): (Vec<String>, Option<String>, DesiredState) = match i % 4 {
            0 | 2 => {
                let path = x.dir.join(format!("c{i}.toml"));
                let text = config_text(i);
                fs::write(&path, &text).unwrap();
                let next = config_file::parse(&text).unwrap();
                (
                    vec!["apply".into(), "-f".into(), path.display().to_string()],
                    None,
                    next,
                )
            }
            1 => {
                let mut services = config_file::parse(&config_text(i + 100))
                    .unwrap()
                    .config
                    .into_services();
                services.truncate(10);
                let config = Config::from_services(services);
                let rules = format!("-C\n{}", rules::save(&config));
                let next = DesiredState {
                    config,
                    timeouts: current.timeouts,
                };
                (vec!["-R".into()], Some(rules), next)
            }
            _ => {
                let t = Timeouts {
                    tcp: 900 + i as u64,
                    tcpfin: 120,
                    udp: 30 + i as u64,
                };
                let next = DesiredState {
                    config: current.config.clone(),
                    timeouts: t,
                };
                let args = ["--set", &t.tcp.to_string(), "0", &t.udp.to_string()]
                    .map(String::from)
                    .to_vec();
                (args, None, next)
            }
        };
        let want = expected(&next.config, next.timeouts);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut client = x
            .xvsadm_cmd(&argv)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        if let Some(text) = &stdin {
            use std::io::Write;
            let _ = client.stdin.take().unwrap().write_all(text.as_bytes());
        }
        drop(client.stdin.take());
        let between = i % 3 == 2;
        let acked = if between {
            let ok = client.wait().unwrap().success();
            assert!(ok, "iteration {i}: {args:?} failed\n{}", x.log());
            x.kill9();
            acked_kills += 1;
            true
        } else {
            // Not synchronisation: a varied point in the middle of the change to kill at.
            std::thread::sleep(Duration::from_millis(delays[i % delays.len()]));
            x.kill9();
            client.wait().unwrap().success()
        };
        x.start(&[]).unwrap();
        let got = observed(&x);
        if acked {
            assert_eq!(
                got, want,
                "iteration {i}: an acknowledged change was lost ({args:?})"
            );
        } else {
            mid_change += 1;
            assert!(
                got == committed || got == want,
                "iteration {i}: after a kill during {args:?} the state is neither the last committed configuration nor the new one:\n{got:#?}\nold {committed:#?}\nnew {want:#?}"
            );
            if got == want {
                mid_new += 1;
            }
        }
        if got == want {
            current = next;
        }
        committed = got;
    }
    eprintln!(
        "crash consistency: 30 kills, {acked_kills} after the answer, {mid_change} during a change ({mid_new} of those restored the new configuration)"
    );
    // Changes with real servers wait for their addresses to resolve before answering, so
    // every kill scheduled during such a change lands before its answer.
    assert!(
        mid_change >= 10,
        "only {mid_change} kills landed mid-change"
    );
}

#[test]
fn config_file_wins_at_start_and_reset_state_forgets() {
    let mut x = Xvsd::new("xvscf-s").unwrap();
    x.start(&[]).unwrap();
    x.xvsadm_ok(&["-A", "-u", "203.0.113.53:53", "-s", "rr"])
        .unwrap();
    x.xvsadm_ok(&["--set", "800", "0", "0"]).unwrap();
    let saved = observed(&x);
    // A clean stop and start restores it.
    x.stop().unwrap();
    x.start(&[]).unwrap();
    assert_eq!(observed(&x), saved);
    // With --config the file is the configuration, and the state is rewritten from it.
    let file = x.dir.join("xvs.toml");
    let text = "[[service]]\ntcp = \"203.0.113.10:80\"\nscheduler = \"wrr\"\n  [[service.real]]\n  address = \"198.51.100.11\"\n  weight = 2\n";
    fs::write(&file, text).unwrap();
    x.stop().unwrap();
    x.start(&["--config", &file.display().to_string()]).unwrap();
    let from_file = config_file::parse(text).unwrap();
    let want = expected(&from_file.config, from_file.timeouts);
    assert_eq!(observed(&x), want);
    x.stop().unwrap();
    x.start(&[]).unwrap();
    assert_eq!(observed(&x), want, "the state was rewritten from the file");
    // An empty file is an empty configuration, and the state says so too.
    fs::write(&file, "# nothing\n").unwrap();
    x.stop().unwrap();
    x.start(&["--config", &file.display().to_string()]).unwrap();
    x.stop().unwrap();
    x.start(&[]).unwrap();
    let empty = expected(&Config::default(), DEFAULT_TIMEOUTS);
    assert_eq!(observed(&x), empty);
    // --reset-state forgets.
    x.xvsadm_ok(&["-A", "-t", "203.0.113.10:443", "-s", "rr"])
        .unwrap();
    x.stop().unwrap();
    x.start(&["--reset-state"]).unwrap();
    assert_eq!(observed(&x), empty);
}

#[test]
fn an_invalid_config_or_state_stops_xvsd_before_it_attaches() {
    let mut x = Xvsd::new("xvscf-i").unwrap();
    let file = x.dir.join("bad.toml");
    fs::write(
        &file,
        "[[service]]\ntcp = \"203.0.113.10:80\"\nscheduler = \"fastest\"\n\n[[service]]\nudp = \"203.0.113.10\"\n",
    )
    .unwrap();
    let status = x
        .start_refused(&["--config", &file.display().to_string()])
        .unwrap();
    assert!(!status.success());
    let log = x.log();
    let shown = file.display();
    for needle in [
        format!("{shown}: 2 errors, nothing changed"),
        format!("{shown}:3:13: unknown variant `fastest`"),
        format!("{shown}:6:7: Illegal address: 203.0.113.10"),
    ] {
        assert!(log.contains(&needle), "no {needle:?} in:\n{log}");
    }
    // A damaged state file: xvsd says how to get out.
    fs::create_dir_all(&x.state_dir).unwrap();
    fs::write(x.state_dir.join("d0.json"), "{\"format\":1,").unwrap();
    let status = x.start_refused(&[]).unwrap();
    assert!(!status.success());
    assert!(x.log().contains("--reset-state"), "{}", x.log());
    x.start(&["--reset-state"]).unwrap();
    assert_eq!(observed(&x), expected(&Config::default(), DEFAULT_TIMEOUTS));
}

/// Two directors in two network namespaces on interfaces of the same name (`eth0`), both with
/// every path at its default: each keeps its own state file, control socket and pins, so the
/// second neither restores the first's configuration nor collides with it, and xvsadm run in a
/// namespace finds that namespace's xvsd. Two xvsd told to share one state file are refused.
#[test]
fn directors_in_two_namespaces_with_one_interface_name_keep_their_own_state() {
    use std::path::{Path, PathBuf};
    use xvs_tests::{lab::default_bin_dir, netns, xvsd::XvsdProcess};

    xvs_tests::require_root();
    /// The namespaces and every default-path file they leave, removed even on failure.
    struct Cleanup(Vec<String>, PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for ns in &self.0 {
                netns::destroy(ns);
                let _ = fs::remove_dir_all(Path::new("/var/lib/xvs/netns").join(ns));
                let _ = fs::remove_dir_all(Path::new("/run/xvs/netns").join(ns));
            }
            // The directories above them too, when nothing else is in them (remove_dir
            // refuses a directory that is not empty: never anyone else's files).
            for base in ["/var/lib/xvs", "/run/xvs"] {
                let _ = fs::remove_dir(Path::new(base).join("netns"));
                let _ = fs::remove_dir(base);
            }
            let _ = fs::remove_dir_all(&self.1);
        }
    }
    let names = ["xvs-nsk-a".to_string(), "xvs-nsk-b".to_string()];
    let scratch = std::env::temp_dir().join("xvs-nsk");
    let _cleanup = Cleanup(names.to_vec(), scratch.clone());
    for ns in &names {
        netns::destroy(ns);
        let _ = fs::remove_dir_all(Path::new("/var/lib/xvs/netns").join(ns));
        netns::create(ns).unwrap();
        netns::ip(&[
            "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
        ])
        .unwrap();
        netns::ip(&["-n", ns, "link", "set", "eth0", "up"]).unwrap();
        netns::ip(&["-n", ns, "link", "set", "eth1", "up"]).unwrap();
    }
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch).unwrap();
    let hosts_state = Path::new("/var/lib/xvs/eth0.json");
    let hosts_before = fs::read(hosts_state).ok();
    // Only the interface and the attach mode: state, socket and pins at their defaults.
    let args = ["--iface", "eth0", "--xdp-mode", "generic"]
        .map(String::from)
        .to_vec();
    let bin = default_bin_dir();
    let mut xvsd: Vec<XvsdProcess> = names
        .iter()
        .map(|ns| {
            let socket = Path::new("/run/xvs/netns").join(ns).join("xvsd.sock");
            XvsdProcess::new(
                ns,
                &bin,
                &socket,
                &scratch.join(format!("{ns}.log")),
                args.clone(),
            )
        })
        .collect();
    // xvsadm in the namespace, with no --socket: it must find that namespace's xvsd.
    let xvsadm = |ns: &str, a: &[&str]| -> String {
        let out = netns::run(netns::cmd_in(ns, &bin.join("xvsadm").display().to_string()).args(a))
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    xvsd[0].start(&[]).unwrap();
    xvsadm(&names[0], &["-A", "-t", "192.0.2.1:80", "-s", "rr"]);
    xvsadm(
        &names[0],
        &["-a", "-t", "192.0.2.1:80", "-r", "198.51.100.10", "-g"],
    );
    // Before the fix the second xvsd restored the first one's state file, and this -A failed
    // with "Service already exists".
    xvsd[1].start(&[]).unwrap();
    assert!(
        !xvsadm(&names[1], &["-L", "-n"]).contains("192.0.2.1:80"),
        "the second director started with the first one's configuration"
    );
    xvsadm(&names[1], &["-A", "-t", "192.0.2.1:80", "-s", "wlc"]);
    xvsadm(
        &names[1],
        &["-a", "-t", "192.0.2.1:80", "-r", "198.51.100.20", "-g"],
    );
    for ns in &names {
        let state = Path::new("/var/lib/xvs/netns").join(ns).join("eth0.json");
        assert!(state.exists(), "{} was not written", state.display());
    }
    // A restart of each restores its own configuration.
    for x in &mut xvsd {
        x.stop().unwrap();
    }
    for x in &mut xvsd {
        x.start(&[]).unwrap();
    }
    let a = xvsadm(&names[0], &["-L", "-n"]);
    let b = xvsadm(&names[1], &["-L", "-n"]);
    assert!(
        a.contains("198.51.100.10") && !a.contains("198.51.100.20") && a.contains(" rr"),
        "{a}"
    );
    assert!(
        b.contains("198.51.100.20") && !b.contains("198.51.100.10") && b.contains(" wlc"),
        "{b}"
    );
    assert_eq!(
        fs::read(hosts_state).ok(),
        hosts_before,
        "the host namespace's state file was touched"
    );
    // Two xvsd pointed at one state file: the second is refused before it reads it.
    let shared = scratch.join("shared-state");
    let mut first = XvsdProcess::new(
        &names[0],
        &bin,
        &scratch.join("s0.sock"),
        &scratch.join("s0.log"),
        args.clone(),
    );
    let second = XvsdProcess::new(
        &names[1],
        &bin,
        &scratch.join("s1.sock"),
        &scratch.join("s1.log"),
        args.clone(),
    );
    xvsd[0].stop().unwrap();
    let state_dir = shared.display().to_string();
    first
        .start(&[
            "--state-dir",
            &state_dir,
            "--socket",
            &scratch.join("s0.sock").display().to_string(),
        ])
        .unwrap();
    let out = second
        .once(&[
            "--state-dir",
            &state_dir,
            "--socket",
            &scratch.join("s1.sock").display().to_string(),
        ])
        .unwrap();
    assert!(
        !out.status.success(),
        "a second xvsd on one state file started"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("in use by another xvsd") && err.contains("--state-dir"),
        "{err}"
    );
}
