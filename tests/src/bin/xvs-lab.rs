//! xvs-lab: the director in a self-contained lab of network namespaces (`cargo xtask run` with no
//! interface). Brings the lab up, configures a service through xvsadm, sends requests, shows the
//! table, and runs until Ctrl-C; everything is removed on exit, and leftovers at the next start.
//! With `--directors N` (2 to 8), the ECMP lab instead (`xvs_tests::ecmp`): N directors behind a
//! router running BIRD 2, each announcing the VIP over BGP, and three real servers. With
//! `--keepalived`, the active-backup pair (`xvs_tests::vrrp`): two directors with connection
//! sync, keepalived moving the VIP on examples/keepalived/keepalived.conf.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::Result;
use xvs_tests::{
    ecmp::{EcmpLab, EcmpOptions},
    lab::{default_bin_dir, rs_ip4, rs_ip6, tally, Lab, LabOptions, VIP4, VIP6},
    netns::cmd_in,
    vrrp::{VrrpLab, VrrpOptions},
};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn usage() -> ! {
    eprintln!("usage: xvs-lab demo [--bin-dir DIR] [--directors N | --keepalived] [--once]");
    std::process::exit(2);
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() != Some("demo") {
        usage();
    }
    let mut bin_dir = default_bin_dir();
    let mut once = false;
    let mut directors = 1;
    let mut keepalived = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bin-dir" => bin_dir = PathBuf::from(args.next().unwrap_or_else(|| usage())),
            "--once" => once = true,
            "--keepalived" => keepalived = true,
            "--directors" => {
                directors = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| (1..=8).contains(n))
                    .unwrap_or_else(|| usage());
            }
            _ => usage(),
        }
    }
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as usize);
        libc::signal(libc::SIGTERM, on_signal as *const () as usize);
    }
    if keepalived {
        if directors > 1 {
            usage();
        }
        return vrrp_demo(bin_dir, once);
    }
    if directors > 1 {
        return ecmp_demo(bin_dir, directors, once);
    }
    println!("xvs-lab: building namespaces: client, director (xvsd), 2 real servers (apache2)");
    let lab = Lab::start(LabOptions {
        tag: "lab".into(),
        reals: 2,
        bin_dir,
        xvsd_args: Vec::new(),
        two_arms: false,
    })?;
    let sh = |args: &[&str]| -> Result<()> {
        println!("# xvsadm {}", args.join(" "));
        print!("{}", lab.xvsadm_ok(args)?);
        Ok(())
    };
    let v4 = format!("{VIP4}:80");
    let v6 = format!("[{VIP6}]:80");
    sh(&["-A", "-t", &v4, "-s", "wrr"])?;
    sh(&[
        "-a",
        "-t",
        &v4,
        "-r",
        &format!("{}:80", rs_ip4(1)),
        "-g",
        "-w",
        "1",
    ])?;
    sh(&[
        "-a",
        "-t",
        &v4,
        "-r",
        &format!("{}:80", rs_ip4(2)),
        "-g",
        "-w",
        "2",
    ])?;
    sh(&["-A", "-t", &v6, "-s", "rr"])?;
    sh(&["-a", "-t", &v6, "-r", &format!("[{}]:80", rs_ip6(1)), "-g"])?;
    sh(&["-a", "-t", &v6, "-r", &format!("[{}]:80", rs_ip6(2)), "-g"])?;
    for url in [format!("http://{VIP4}/"), format!("http://[{VIP6}]/")] {
        let bodies = lab.curl_many(&url, 30)?;
        let mut tally: BTreeMap<String, usize> = BTreeMap::new();
        for b in &bodies {
            *tally.entry(b.clone()).or_default() += 1;
        }
        println!("# 30 x curl {url} from the client namespace: {tally:?}");
    }
    sh(&["-L", "-n"])?;
    sh(&["-L", "-n", "--stats"])?;
    if once {
        return Ok(());
    }
    println!(
        "xvs-lab: running. Try: ip netns exec {} curl http://{VIP4}/ ; {} --socket {} -L -n\nCtrl-C to stop.",
        lab.ns("cl"),
        lab_bin("xvsadm"),
        lab.socket.display()
    );
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("xvs-lab: removing the lab");
    Ok(())
}

fn lab_bin(name: &str) -> String {
    default_bin_dir().join(name).display().to_string()
}

/// The ECMP lab: `directors` directors, each with the same mh service (its real servers added in
/// another order on each), announced to the router over BGP; 30 new connections from the client,
/// then each director's table.
fn ecmp_demo(bin_dir: PathBuf, directors: usize, once: bool) -> Result<()> {
    println!(
        "xvs-lab: building namespaces: client, router (BIRD 2), {directors} directors (xvsd + \
         BIRD 2), 3 real servers (apache2)"
    );
    let lab = EcmpLab::start(EcmpOptions {
        tag: "ecmplab".into(),
        directors,
        reals: 3,
        bin_dir: bin_dir.clone(),
    })?;
    let xvsadm = bin_dir.join("xvsadm");
    let vip = format!("{VIP4}:80");
    let reals: Vec<String> = (1..=3).map(|i| format!("{}:80", rs_ip4(i))).collect();
    for (d, director) in lab.directors.iter().enumerate() {
        let sh = |args: &[&str]| -> Result<()> {
            println!("# [{}] xvsadm {}", director.name, args.join(" "));
            print!("{}", director.xvsadm_ok(args)?);
            Ok(())
        };
        sh(&["-A", "-t", &vip, "-s", "mh", "-b", "mh-port"])?;
        for k in 0..reals.len() {
            sh(&["-a", "-t", &vip, "-r", &reals[(k + d) % reals.len()], "-g"])?;
        }
    }
    for director in &lab.directors {
        let digest = director.listing()?["services"][0]["table_digest"].clone();
        println!("# [{}] table_digest {digest}", director.name);
    }
    lab.wait_reals_resolved(Duration::from_secs(10))?;
    lab.wait_next_hops(directors, Duration::from_secs(30))?;
    println!("# the router's route to the VIP (BGP, merged into one ECMP route):");
    print!("{}", lab.router_route());
    let url = format!("http://{VIP4}/");
    let mut cmd = cmd_in(&lab.ns("cl"), "curl");
    cmd.args(["-s", "-m", "5", "-H", "Connection: close"]);
    for _ in 0..30 {
        cmd.arg(&url);
    }
    let out = cmd.output()?;
    let bodies: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    println!(
        "# 30 x curl {url} from the client namespace: {:?}",
        tally(&bodies)
    );
    for director in &lab.directors {
        println!("# [{}] xvsadm -L -n --stats", director.name);
        print!("{}", director.xvsadm_ok(&["-L", "-n", "--stats"])?);
    }
    if once {
        return Ok(());
    }
    let d1 = &lab.directors[0];
    println!(
        "xvs-lab: running. Try:\n  ip netns exec {cl} curl {url}\n  {xvsadm} --socket {sock} -L -n \
         --stats\n  ip netns exec {sw} ip link set p-{name} down   # cut {name} off; BFD notices\n  \
         ip netns exec {rt} ip route show {VIP4}\nCtrl-C to stop.",
        cl = lab.ns("cl"),
        xvsadm = xvsadm.display(),
        sock = d1.socket.display(),
        sw = lab.ns("sw"),
        name = d1.name,
        rt = lab.ns("rt"),
    );
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("xvs-lab: removing the lab");
    Ok(())
}

/// The keepalived pair: two directors with the same rr service and both sync daemons,
/// keepalived (VRRP only) on the shipped configuration; 30 new connections from the client,
/// which director holds the VIP, and each one's table and sync state.
fn vrrp_demo(bin_dir: PathBuf, once: bool) -> Result<()> {
    println!(
        "xvs-lab: building namespaces: client, router, 2 directors (xvsd + keepalived), 3 real \
         servers (apache2)"
    );
    let mut lab = VrrpLab::start(VrrpOptions {
        tag: "vrrplab".into(),
        reals: 3,
        bin_dir: bin_dir.clone(),
    })?;
    let xvsadm = bin_dir.join("xvsadm");
    let vip = format!("{VIP4}:80");
    for director in &lab.directors {
        let sh = |args: &[&str]| -> Result<()> {
            println!("# [{}] xvsadm {}", director.name, args.join(" "));
            print!("{}", director.xvsadm_ok(args)?);
            Ok(())
        };
        sh(&["-A", "-t", &vip, "-s", "rr"])?;
        for i in 1..=3 {
            sh(&["-a", "-t", &vip, "-r", &format!("{}:80", rs_ip4(i)), "-g"])?;
        }
        for role in ["master", "backup"] {
            sh(&[
                "--start-daemon",
                role,
                "--mcast-interface",
                "eth0",
                "--syncid",
                "1",
            ])?;
        }
    }
    println!("# keepalived on both (examples/keepalived/keepalived.conf)");
    lab.start_keepalived()?;
    lab.wait_holder(0, Duration::from_secs(15))?;
    lab.wait_reals_resolved(Duration::from_secs(10))?;
    lab.wait_answering(Duration::from_secs(10))?;
    let url = format!("http://{VIP4}/");
    let mut cmd = cmd_in(&lab.ns("cl"), "curl");
    cmd.args(["-s", "-m", "5", "-H", "Connection: close"]);
    for _ in 0..30 {
        cmd.arg(&url);
    }
    let out = cmd.output()?;
    let bodies: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    println!(
        "# 30 x curl {url} from the client namespace: {:?}",
        tally(&bodies)
    );
    for director in &lab.directors {
        println!(
            "# [{}] holds the VIP: {}; xvsadm -L -n --stats",
            director.name,
            director.holds_vip()
        );
        print!("{}", director.xvsadm_ok(&["-L", "-n", "--stats"])?);
        let synced = director.xvsadm(&["synced"])?;
        print!(
            "# [{}] xvsadm synced: {}",
            director.name,
            String::from_utf8_lossy(&synced.stdout)
        );
    }
    if once {
        return Ok(());
    }
    let d1 = &lab.directors[0];
    println!(
        "xvs-lab: running. Try:\n  ip netns exec {cl} curl {url}\n  {xvsadm} --socket {sock} -L -n \
         -c\n  ip netns exec {sw} ip link set p-{name} down   # cut {name} off; the VIP moves\n  \
         ip netns exec {sw} ip link set p-{name} up     # {name} takes it back once it holds the table\n\
         Ctrl-C to stop.",
        cl = lab.ns("cl"),
        xvsadm = xvsadm.display(),
        sock = d1.socket.display(),
        sw = lab.ns("sw"),
        name = d1.name,
    );
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("xvs-lab: removing the lab");
    Ok(())
}
