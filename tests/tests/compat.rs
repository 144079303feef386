//! ipvsadm compatibility end to end, in namespaces (lab tag `xvscp-*`): refused options change
//! nothing, `--rate` follows real traffic and decays after it, `-Z` zeroes one service or
//! all, names without `-n` with a dead resolver. Root required.

use std::{
    path::PathBuf,
    process::{Command, Output, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use xvs_tests::{
    lab::{rs_ip4, two_reals as lab, Lab, VIP4},
    poll,
};

/// A wrr service with rs1 (weight 1) and rs2 (weight 3), `opts` added to -A.
fn setup(lab: &Lab, vip: &str, opts: &[&str]) {
    let mut a = vec!["-A", "-t", vip, "-s", "wrr"];
    a.extend_from_slice(opts);
    lab.xvsadm_ok(&a).unwrap();
    for (i, w) in [(1, "1"), (2, "3")] {
        let rs = format!("{}:{}", rs_ip4(i), vip.rsplit(':').next().unwrap());
        lab.xvsadm_ok(&["-a", "-t", vip, "-r", &rs, "-g", "-w", w, "-x", "500"])
            .unwrap();
    }
}

/// Every ipvsadm option xvs refuses (and a few combinations ipvsadm itself refuses): each
/// exits 2 with its reason, and the daemon's table stays exactly as it was.
#[test]
fn refused_options_say_why_and_change_nothing() {
    let lab = lab("xvscp-refuse");
    let vip = format!("{VIP4}:80");
    setup(&lab, &vip, &["-p", "60", "-M", "255.255.255.0"]);
    let before = lab.xvsadm_ok(&["-S", "-n"]).unwrap();
    let rs3 = "198.51.100.13:80";
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "-a",
                "-t",
                &vip,
                "-r",
                rs3,
                "-i",
                "--tun-type",
                "gue",
                "--tun-port",
                "6080",
                "--tun-remcsum",
            ],
            "GUE remote checksum offload) is not supported",
        ),
        (
            &["-a", "-t", &vip, "-r", rs3, "--tun-type", "ipip"],
            "Tunnel options conflict with forward method",
        ),
        (
            &["-A", "--sctp-service", "203.0.113.20:80"],
            "TCP and UDP only",
        ),
        (
            &["-A", "-u", "203.0.113.10:53", "-o"],
            "one-packet scheduling) is not implemented",
        ),
        (
            &["-E", "-t", &vip, "-s", "rr", "-o"],
            "one-packet scheduling) is not implemented",
        ),
        (
            &["-E", "-t", &vip, "-p", "--pe", "sip"],
            "persistence engine, e.g. sip) is not supported",
        ),
        (
            &["-A", "-t", "203.0.113.20:80", "-w", "3"],
            "Illegal 'weight' option with the 'add-service' command",
        ),
        (
            &["-E", "-t", &vip, "-r", rs3],
            "Illegal 'real-server' option with the 'edit-service' command",
        ),
        (
            &["-D", "-t", &vip, "-s", "rr"],
            "Illegal 'scheduler' option with the 'delete-service' command",
        ),
        (
            &["-C", "-t", &vip],
            "Illegal 'service-address' option with the 'flush' command",
        ),
        (
            &["-Z", "-n"],
            "Illegal 'numeric' option with the 'zero' command",
        ),
        (
            &["-a", "-t", &vip],
            "You need to supply the 'real-server' option",
        ),
        (
            &["-E", "-t", &vip, "-s", "rr", "-b", "sh-port"],
            "incompatible scheduler flag",
        ),
        (&["--set", "900", "120", "9999999"], "invalid timeout value"),
        (&["-S", "--json"], "no JSON form"),
    ];
    for (args, needle) in cases {
        let out = lab.xvsadm(args).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert_eq!(
            lab.xvsadm_ok(&["-S", "-n"]).unwrap(),
            before,
            "{args:?} changed the configuration"
        );
    }
    // The same lines inside a restore refuse the whole restore.
    let out = restore(
        &lab,
        &format!(
            "-A -t 203.0.113.20:80 -s rr\n-a -t {vip} -r {rs3} -i --tun-type gue --tun-port 6080 --tun-remcsum\n"
        ),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2: --tun-remcsum"));
    assert_eq!(lab.xvsadm_ok(&["-S", "-n"]).unwrap(), before);
}

fn restore(lab: &Lab, rules: &str) -> Output {
    let mut child = Command::new(xvs_tests::lab::default_bin_dir().join("xvsadm"))
        .arg("--socket")
        .arg(&lab.socket)
        .arg("-R")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(rules.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

/// The five --rate columns of the line that starts with `name` (`--exact`: plain numbers).
fn rate_of(listing: &str, name: &str) -> Option<[u64; 5]> {
    let line = listing.lines().find(|l| l.starts_with(name))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .rev()
        .take(5)
        .map(|x| x.parse().unwrap())
        .collect();
    Some([v[4], v[3], v[2], v[1], v[0]])
}

/// Client traffic in the background: batches of new connections until stopped (and at most
/// for two minutes).
struct Traffic {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(lab: &Lab, urls: &[String]) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let ns = lab.ns("cl");
        let urls = urls.to_vec();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(120);
            while !flag.load(Ordering::SeqCst) && Instant::now() < end {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", &ns, "curl", "-s", "-m", "2"]);
                for _ in 0..5 {
                    cmd.args(&urls);
                }
                let _ = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
            }
        });
        Traffic {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `--rate` with real traffic: CPS and InPPS rise above 0 for the service and its real
/// servers (OutPPS/OutBPS stay 0: in DR the replies bypass the director, as with IPVS), then
/// decay once the traffic stops, as IPVS's estimator does. `-Z -t` zeroes one service's
/// counters and rates, `-Z` all; `xvsadm stats --once` shows the same rates.
#[test]
fn rate_follows_traffic_and_decays_after_it() {
    let lab = lab("xvscp-rate");
    let web = format!("{VIP4}:80");
    let alt = format!("{VIP4}:8080");
    // Not persistent: wrr spreads the client's connections over both real servers.
    setup(&lab, &web, &[]);
    setup(&lab, &alt, &[]);
    let svc_web = format!("TCP  {web}");
    let svc_alt = format!("TCP  {alt}");
    let rate = || lab.xvsadm_ok(&["-L", "-n", "--rate", "--exact"]).unwrap();

    let mut traffic = Traffic::start(&lab, &[format!("http://{web}/"), format!("http://{alt}/")]);
    let mut last = String::new();
    let busy = poll(Duration::from_secs(30), "non-zero --rate", || {
        let out = rate();
        last = out.clone();
        let s = rate_of(&out, &svc_web)?;
        let r1 = rate_of(&out, &format!("  -> {}:80", rs_ip4(1)))?;
        let r2 = rate_of(&out, &format!("  -> {}:80", rs_ip4(2)))?;
        // CPS and InPPS up for the service and both real servers (wrr 1:3 sends to both).
        (s[0] > 0 && s[1] > 0 && s[3] > 0 && r1[1] > 0 && r2[1] > 0).then_some((out, s))
    })
    .unwrap_or_else(|e| panic!("{e}; last listing:\n{last}"));
    let (out, s) = busy;
    assert_eq!((s[2], s[4]), (0, 0), "OutPPS/OutBPS in DR:\n{out}");
    // The ipvsadm layout, one service (no version line).
    let one = lab.xvsadm_ok(&["-L", "-n", "--rate", "-t", &web]).unwrap();
    assert!(
        one.starts_with("Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS\n  -> RemoteAddress:Port\nTCP  203.0.113.10:80  "),
        "{one}"
    );
    // xvsadm stats shows the same estimates.
    let frame: serde_json::Value =
        serde_json::from_str(&lab.xvsadm_ok(&["stats", "--once", "--json"]).unwrap()).unwrap();
    let web_row = frame
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "TCP  203.0.113.10:80 wrr")
        .expect("service row");
    assert!(web_row["rates"]["inpps"].as_u64().unwrap() > 0, "{frame}");
    let text = lab.xvsadm_ok(&["stats", "--once"]).unwrap();
    assert!(text.contains("TCP  203.0.113.10:80 wrr"), "{text}");
    assert!(text.contains(&format!("  -> {}:80", rs_ip4(2))), "{text}");

    traffic.stop();
    let at_stop = rate_of(&rate(), &svc_web).unwrap();
    // Each 2-second sample without traffic takes a quarter off: poll until the estimate has
    // decayed to below half of what it was when the traffic stopped.
    let decayed = poll(Duration::from_secs(40), "--rate to decay", || {
        let now = rate_of(&rate(), &svc_web)?;
        (now[1] * 2 < at_stop[1] && now[0] < at_stop[0].max(1)).then_some(now)
    })
    .unwrap();
    assert!(decayed[1] < at_stop[1], "{at_stop:?} -> {decayed:?}");

    // -Z of one service: its counters and rates are 0 at once, the other's are not.
    let stats = lab.xvsadm_ok(&["-L", "-n", "--stats", "--exact"]).unwrap();
    assert!(rate_of(&stats, &svc_alt).unwrap()[0] > 0, "{stats}");
    lab.xvsadm_ok(&["-Z", "-t", &web]).unwrap();
    let stats = lab.xvsadm_ok(&["-L", "-n", "--stats", "--exact"]).unwrap();
    assert_eq!(rate_of(&stats, &svc_web).unwrap(), [0; 5], "{stats}");
    assert_eq!(
        rate_of(&stats, &format!("  -> {}:80", rs_ip4(2))).unwrap(),
        [0; 5],
        "{stats}"
    );
    assert!(rate_of(&stats, &svc_alt).unwrap()[0] > 0, "{stats}");
    assert_eq!(rate_of(&rate(), &svc_web).unwrap(), [0; 5]);
    // -Z of a service that does not exist is refused, as ipvsadm's "No such service".
    let out = lab.xvsadm(&["-Z", "-t", "203.0.113.99:80"]).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("No such service"));
    // -Z: everything.
    lab.xvsadm_ok(&["-Z"]).unwrap();
    let stats = lab.xvsadm_ok(&["-L", "-n", "--stats", "--exact"]).unwrap();
    assert_eq!(rate_of(&stats, &svc_alt).unwrap(), [0; 5], "{stats}");
    assert_eq!(rate_of(&rate(), &svc_alt).unwrap(), [0; 5]);
}

/// Files `ip netns exec NS` binds over /etc inside NS (iproute2: /etc/netns/NS/*), removed on
/// drop.
struct NetnsEtc {
    dir: PathBuf,
}

impl NetnsEtc {
    fn new(ns: &str, files: &[(&str, &str)]) -> NetnsEtc {
        let dir = PathBuf::from("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        NetnsEtc { dir }
    }
}

impl Drop for NetnsEtc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir(self.dir.parent().unwrap());
    }
}

/// xvsadm inside a namespace (so it sees that namespace's /etc/netns files), failing rather
/// than hanging if it does not finish.
fn xvsadm_in(lab: &Lab, ns: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(xvs_tests::lab::default_bin_dir().join("xvsadm"))
        .arg("--socket")
        .arg(&lab.socket)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let Ok(status) = poll(Duration::from_secs(60), "xvsadm to finish", || {
        child.try_wait().ok().flatten()
    }) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("xvsadm {args:?} did not finish within 60 s: a resolver wait is not bounded");
    };
    // The outputs are small (a listing): they fit the pipes while the process runs.
    use std::io::Read;
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .unwrap();
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Without -n, -L, -c and -S print names as ipvsadm does (hosts through the resolver, ports
/// from /etc/services); -R reads them back. The client namespace's resolver points at an
/// address nothing answers on, so an address without a hosts entry costs the bounded wait and
/// is printed as a number.
#[test]
fn names_without_n_with_a_dead_resolver() {
    let lab = lab("xvscp-names");
    let vip = format!("{VIP4}:80");
    setup(&lab, &vip, &["-p", "60", "-M", "255.255.255.0"]);
    let cl = lab.ns("cl");
    // rs2 has no name; DNS queries go to an on-link address nobody holds (they stay in the lab).
    let _etc = NetnsEtc::new(
        &cl,
        &[
            (
                "hosts",
                &format!(
                    "127.0.0.1 localhost\n203.0.113.10 www.lab\n{} rs1.lab\n",
                    rs_ip4(1)
                ),
            ),
            (
                "resolv.conf",
                "nameserver 198.51.100.99\noptions timeout:5 attempts:2\n",
            ),
        ],
    );
    let numeric = lab.xvsadm_ok(&["-S", "-n"]).unwrap();
    let listing = xvsadm_in(&lab, &cl, &["-L"], None);
    let text = String::from_utf8_lossy(&listing.stdout);
    assert!(
        text.contains("TCP  www.lab:http wrr persistent 60 mask 255.255.255.0\n"),
        "{text}{}",
        String::from_utf8_lossy(&listing.stderr)
    );
    // ipvsadm's "  -> %-28s %-7s %-6d": the real servers by name, or by number without one.
    assert!(
        text.contains(&format!("  -> {:<28} Route   1 ", "rs1.lab:http")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "  -> {:<28} Route   3 ",
            format!("{}:http", rs_ip4(2))
        )),
        "{text}"
    );
    // -S without -n: ipvsadm's rules with names, which -R reads back to the same table.
    let saved = String::from_utf8_lossy(&xvsadm_in(&lab, &cl, &["-S"], None).stdout).into_owned();
    assert_eq!(
        saved,
        format!(
            "-A -t www.lab:http -s wrr -p 60 -M 255.255.255.0\n\
             -a -t www.lab:http -r rs1.lab:http -g -w 1 -x 500\n\
             -a -t www.lab:http -r {}:http -g -w 3 -x 500\n",
            rs_ip4(2)
        )
    );
    lab.xvsadm_ok(&["-C"]).unwrap();
    // ipvsadm lines as written by hand: a leading `ipvsadm`, a comment.
    let rules = format!("# saved by ipvsadm -S\nipvsadm {saved}");
    let restored = xvsadm_in(&lab, &cl, &["-R"], Some(&rules));
    assert!(
        restored.status.success() && restored.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    assert_eq!(lab.xvsadm_ok(&["-S", "-n"]).unwrap(), numeric);
    // -n never asks the resolver.
    let text =
        String::from_utf8_lossy(&xvsadm_in(&lab, &cl, &["-L", "-n"], None).stdout).into_owned();
    assert!(text.contains("TCP  203.0.113.10:80 wrr"), "{text}");
}
