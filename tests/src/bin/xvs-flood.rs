//! xvs-flood: measures what a flood into a small connection table does to established
//! connections, in the lab (root): `xvs-flood syn|pairs [--secs N] [--table N] [--idle N]
//! [--active N] [--bin-dir DIR]`. The flood tests assert both for a few seconds: `syn`, and
//! `pairs` (spoofed SYN + ACK pairs, which make junk entries look used twice, against which the
//! data plane's proof rule holds; README, "Connection table under pressure"); this runs them
//! longer, to measure.

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Result};
use xvs_tests::{
    flood::{self, Kind, Scenario, ECHO_PORT},
    lab::{default_bin_dir, rs_ip4, Lab, LabOptions, VIP4},
    poll,
};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let kind = match args.next().as_deref() {
        Some("syn") => Kind::Syn,
        Some("pairs") => Kind::SynAckPairs,
        _ => bail!("usage: xvs-flood syn|pairs [--secs N] [--table N] [--idle N] [--active N] [--bin-dir DIR]"),
    };
    let (mut secs, mut table, mut idle, mut active) = (10u32, 4096u32, 16usize, 16usize);
    let mut bin_dir = default_bin_dir();
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{a} needs a value"))
        };
        match a.as_str() {
            "--secs" => secs = value()?.parse()?,
            "--table" => table = value()?.parse()?,
            "--idle" => idle = value()?.parse()?,
            "--active" => active = value()?.parse()?,
            "--bin-dir" => bin_dir = PathBuf::from(value()?),
            _ => bail!("unknown argument {a}"),
        }
    }
    let lab = Lab::start(LabOptions {
        tag: "flood-m".into(),
        reals: 2,
        bin_dir,
        xvsd_args: vec!["--conn-table-size".into(), table.to_string()],
        two_arms: false,
    })?;
    let _echo = flood::tcp_echo(&lab, 2)?;
    let vip = format!("{VIP4}:{ECHO_PORT}");
    lab.xvsadm_ok(&["-A", "-t", &vip, "-s", "rr"])?;
    for i in 1..=2 {
        let rs = format!("{}:{ECHO_PORT}", rs_ip4(i));
        lab.xvsadm_ok(&["-a", "-t", &vip, "-r", &rs, "-g"])?;
    }
    let out = flood::run(
        &lab,
        Scenario {
            kind,
            idle,
            active,
            secs,
            new_conns: 10,
        },
    )?;
    println!("{kind:?} into a {table}-entry table, {idle} idle + {active} active: {out}");
    print!("{}", lab.xvsadm_ok(&["stats", "--once"])?);
    // xvsd's warnings: the one about the fill the last listing found comes at its next sample.
    let warned = |log: &str| log.lines().filter(|l| l.contains("under pressure")).count();
    let seen = warned(&lab.xvsd_log());
    let _ = poll(Duration::from_secs(3), "another warning", || {
        (warned(&lab.xvsd_log()) > seen).then_some(())
    });
    for l in lab
        .xvsd_log()
        .lines()
        .filter(|l| l.contains("under pressure"))
    {
        println!("xvsd: {l}");
    }
    Ok(())
}
