//! xvs-lab: the director in a self-contained lab of network namespaces (`cargo xtask run` with no
//! interface). Brings the lab up, configures a service through xvsadm, sends requests, shows the
//! table, and runs until Ctrl-C; everything is removed on exit, and leftovers at the next start.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::Result;
use xvs_tests::lab::{default_bin_dir, rs_ip4, rs_ip6, Lab, LabOptions, VIP4, VIP6};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn usage() -> ! {
    eprintln!("usage: xvs-lab demo [--bin-dir DIR] [--once]");
    std::process::exit(2);
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() != Some("demo") {
        usage();
    }
    let mut bin_dir = default_bin_dir();
    let mut once = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bin-dir" => bin_dir = PathBuf::from(args.next().unwrap_or_else(|| usage())),
            "--once" => once = true,
            _ => usage(),
        }
    }
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as usize);
        libc::signal(libc::SIGTERM, on_signal as *const () as usize);
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
