//! `xvsadm realserver`: makes this host an LVS real server, the LVS-DR real-server script of the
//! LVS how-tos as a product, and undoes it.
//!
//! - dr: binds each VIP on lo (/32, /128; IPv6 without duplicate detection) and, for IPv4 VIPs,
//!   sets net.ipv4.conf.{all,IFACE}.arp_ignore=1 and arp_announce=2 so the host neither answers
//!   ARP for a VIP nor announces one.
//! - tun: the same, and the XDP decapsulator on IFACE (this kernel needs no ipip/sit/fou device)
//!   with its local addresses, VIPs and GUE ports. Strict reverse-path filtering on IFACE
//!   (effective rp_filter = max(all, IFACE) = 1) is relaxed to loose (2): a client whose route
//!   back does not leave through IFACE would otherwise be dropped, while loose mode still drops
//!   sources that are not routable at all.
//!
//! Every change is recorded (state.rs) so teardown undoes exactly what setup did: a VIP or a
//! sysctl value that was already in place is left as it is.

pub mod host;
mod setup;
pub mod state;
mod status;
mod teardown;

use std::{collections::BTreeSet, ffi::OsString, net::IpAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::decap::{AttachedMode, DecapError, XdpMode};
use host::LOOPBACK;
use state::Request;

pub use setup::{setup, SetupReport};
pub use status::{status, DecapStatus, Status, SysctlStatus, VipStatus};
pub use teardown::teardown;

/// Errors of `xvsadm realserver`.
#[derive(Debug, Error)]
pub enum RealServerError {
    /// The command line asks for something impossible.
    #[error("{0}")]
    Usage(String),
    /// No such interface in this network namespace.
    #[error("no interface named {0}")]
    NoInterface(String),
    /// --iface was not given and there is no default route to take it from.
    #[error("no default route: say which interface tunnelled and client traffic arrives on with --iface")]
    NoDefaultRoute,
    /// tun without --local on an interface that has no global address.
    #[error("{0} has no global address to decapsulate for: give --local ADDR")]
    NoLocalAddresses(String),
    /// A different setup is recorded.
    #[error(
        "this host is already set up differently ({0}); run `xvsadm realserver teardown` first"
    )]
    AlreadySetUp(String),
    /// The record was written in another network namespace.
    #[error("{0} records the setup of another network namespace, which still exists; give this one its own --state")]
    OtherNetns(PathBuf),
    /// Another XDP program holds the interface.
    #[error("{iface} already has an XDP program attached (id {prog_id}, {name}); detach it first")]
    XdpBusy {
        /// The interface.
        iface: String,
        /// The program's id.
        prog_id: u32,
        /// Its name.
        name: String,
    },
    /// Another xvsadm realserver holds the lock.
    #[error("another xvsadm realserver is running (lock {0})")]
    Busy(PathBuf),
    /// Reading or writing the record failed.
    #[error("{path}: {source}")]
    State {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The record is not JSON of the expected shape.
    #[error("{path}: not a realserver record: {source}")]
    StateFormat {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: serde_json::Error,
    },
    /// The record is of another format version.
    #[error("{path}: record format version {version} is not supported")]
    StateVersion {
        /// The file.
        path: PathBuf,
        /// Its version.
        version: u32,
    },
    /// A sysctl could not be read or written.
    #[error("sysctl {key}: {source}")]
    Sysctl {
        /// Its name.
        key: String,
        /// What failed.
        source: std::io::Error,
    },
    /// A netlink request failed.
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    /// Opening netlink or the runtime failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The decapsulator failed.
    #[error(transparent)]
    Decap(#[from] DecapError),
    /// Teardown could not undo everything; what is left stays recorded.
    #[error("teardown incomplete (still recorded): {0}")]
    Incomplete(String),
}

/// How the director reaches this real server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Direct routing: frames arrive addressed to the VIP.
    Dr,
    /// Tunnelling: packets arrive inside IPIP, IPv6-in-IP or GUE.
    Tun,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Dr => "dr",
            Mode::Tun => "tun",
        })
    }
}

/// `xvsadm realserver`'s command line.
#[derive(Parser, Debug)]
#[command(
    name = "xvsadm realserver",
    bin_name = "xvsadm realserver",
    about = "Set this host up as an LVS real server (DR or TUN), show it, undo it"
)]
pub struct Args {
    /// Where setup records what it changed [default: /run/xvs/realserver.json; inside
    /// `ip netns exec NAME`: /run/xvs/netns/NAME/realserver.json].
    #[arg(long, global = true, env = "XVS_REALSERVER_STATE")]
    pub state: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Bind the VIPs on lo, set the ARP (and rp_filter) sysctls, and in tun mode attach the
    /// decapsulator. Running it again with the same arguments changes nothing.
    Setup(SetupArgs),
    /// Show what is in place; exits non-zero when it is not what setup recorded (or nothing is).
    Status {
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Undo exactly what setup did.
    Teardown,
}

/// `setup`'s options.
#[derive(clap::Args, Debug)]
pub struct SetupArgs {
    /// VIPs (comma-separated or repeated).
    #[arg(long, value_delimiter = ',', required = true)]
    pub vip: Vec<IpAddr>,
    /// dr or tun.
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// The interface client (and tunnelled) traffic arrives on [default: the default route's].
    #[arg(long)]
    pub iface: Option<String>,
    /// UDP ports GUE arrives on (tun).
    #[arg(long = "gue-port", value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..))]
    pub gue_port: Vec<u16>,
    /// Outer destinations to decapsulate for (tun) [default: the interface's global addresses].
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub local: Vec<IpAddr>,
    /// XDP attach mode of the decapsulator (tun) [default: auto, native when the driver has it].
    #[arg(long, value_enum)]
    pub xdp_mode: Option<XdpMode>,
}

impl SetupArgs {
    /// Checks the options and normalises them into a request.
    pub fn request(&self) -> Result<Request, RealServerError> {
        let usage = |m: String| Err(RealServerError::Usage(m));
        for ip in self.vip.iter().chain(&self.local) {
            if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
                return usage(format!("{ip} cannot be a VIP or a local address"));
            }
            if let IpAddr::V4(v4) = ip {
                if v4.is_broadcast() {
                    return usage(format!("{ip} cannot be a VIP or a local address"));
                }
            }
        }
        if self.mode == Mode::Dr {
            if !self.gue_port.is_empty() {
                return usage("--gue-port needs --mode tun".into());
            }
            if !self.local.is_empty() {
                return usage("--local needs --mode tun".into());
            }
            if self.xdp_mode.is_some() {
                return usage("--xdp-mode needs --mode tun".into());
            }
        }
        if self.iface.as_deref() == Some(LOOPBACK) {
            return usage("--iface is the interface traffic arrives on, not lo".into());
        }
        let gue_ports: BTreeSet<u16> = self.gue_port.iter().copied().collect();
        if gue_ports.len() > lb_common::decap::MAX_GUE_PORTS as usize {
            return usage(format!(
                "at most {} GUE ports",
                lb_common::decap::MAX_GUE_PORTS
            ));
        }
        Ok(Request {
            mode: self.mode,
            vips: self.vip.iter().copied().collect(),
            iface: self.iface.clone(),
            gue_ports,
            locals: (!self.local.is_empty()).then(|| self.local.iter().copied().collect()),
            xdp_mode: self.xdp_mode.unwrap_or_default(),
        })
    }
}

/// Runs `xvsadm realserver ARGS` (`args` starts with the word "realserver") and prints the
/// outcome.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let args = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xvsadm realserver: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<ExitCode, RealServerError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let state = args.state.clone().unwrap_or_else(state::default_path);
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        match &args.cmd {
            Cmd::Setup(s) => {
                let req = s.request()?;
                let report = setup(&handle, &state, req).await?;
                for line in &report.changes {
                    println!("{line}");
                }
                for line in &report.kept {
                    println!("{line}");
                }
                if report.changes.is_empty() {
                    println!("nothing to change: {} already set up", report.summary);
                } else {
                    println!(
                        "set up {} ({} changes)",
                        report.summary,
                        report.changes.len()
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            Cmd::Status { json } => {
                let st = status(&handle, &state).await?;
                if *json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&st).expect("status serialises")
                    );
                } else {
                    print!("{}", st.render());
                }
                Ok(if st.problems.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                })
            }
            Cmd::Teardown => {
                for line in teardown(&handle, &state).await? {
                    println!("{line}");
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

fn mode_name(m: AttachedMode) -> &'static str {
    match m {
        AttachedMode::Native => "native",
        AttachedMode::Generic => "generic",
        AttachedMode::Offload => "offload",
        AttachedMode::Multi => "multi",
    }
}

fn list<T: std::fmt::Display>(items: &BTreeSet<T>) -> String {
    if items.is_empty() {
        return "none".into();
    }
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(args: &str) -> Result<Request, String> {
        let argv = ["realserver", "setup"]
            .into_iter()
            .chain(args.split_whitespace());
        let parsed = Args::try_parse_from(argv).map_err(|e| e.to_string())?;
        let Cmd::Setup(s) = parsed.cmd else {
            panic!("setup expected")
        };
        s.request().map_err(|e| e.to_string())
    }

    #[test]
    fn setup_options_normalise_into_a_request() {
        let r = request(
            "--mode tun --vip 192.0.2.10,2001:db8::10 --vip 192.0.2.10 --gue-port 6080,6080 \
             --local 198.51.100.2 2001:db8:1::2 --xdp-mode generic --iface eth0",
        )
        .unwrap();
        assert_eq!(r.mode, Mode::Tun);
        assert_eq!(r.vips.len(), 2, "deduplicated");
        assert_eq!(r.gue_ports, [6080].into());
        assert_eq!(r.locals.as_ref().map(BTreeSet::len), Some(2));
        assert_eq!(r.xdp_mode, XdpMode::Generic);
        assert_eq!(r.iface.as_deref(), Some("eth0"));
        // Order and repetition do not make a different request (idempotent setup).
        let same = request(
            "--iface eth0 --xdp-mode generic --local 2001:db8:1::2,198.51.100.2 \
             --gue-port 6080 --vip 2001:db8::10 --vip 192.0.2.10 --mode tun",
        )
        .unwrap();
        assert_eq!(r, same);
        let dr = request("--mode dr --vip 192.0.2.10").unwrap();
        assert_eq!((dr.locals, dr.xdp_mode), (None, XdpMode::Auto));
    }

    #[test]
    fn impossible_setups_are_refused_with_the_reason() {
        for (args, why) in [
            (
                "--mode dr --vip 192.0.2.10 --gue-port 6080",
                "--gue-port needs --mode tun",
            ),
            (
                "--mode dr --vip 192.0.2.10 --local 192.0.2.1",
                "--local needs --mode tun",
            ),
            (
                "--mode dr --vip 192.0.2.10 --xdp-mode native",
                "--xdp-mode needs --mode tun",
            ),
            ("--mode tun --vip 0.0.0.0", "cannot be a VIP"),
            ("--mode tun --vip 224.0.0.1", "cannot be a VIP"),
            ("--mode tun --vip ::1", "cannot be a VIP"),
            ("--mode tun --vip 255.255.255.255", "cannot be a VIP"),
            (
                "--mode tun --vip 192.0.2.10 --local 127.0.0.1",
                "cannot be a VIP or a local",
            ),
            ("--mode tun --vip 192.0.2.10 --iface lo", "not lo"),
            (
                "--mode tun --vip 192.0.2.10 --gue-port 0",
                "0 is not in 1..=65535",
            ),
            ("--mode tun --vip 192.0.2.300", "invalid value"),
            ("--mode ipip --vip 192.0.2.10", "invalid value 'ipip'"),
            ("--mode dr", "--vip"),
            (
                "--mode tun --vip 192.0.2.10 --gue-port 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17",
                "at most 16 GUE ports",
            ),
        ] {
            let err = request(args).expect_err(args);
            assert!(err.contains(why), "{args}: {err}");
        }
    }

    #[test]
    fn a_different_request_is_described_field_by_field() {
        let a = request("--mode tun --vip 192.0.2.10 --gue-port 6080").unwrap();
        let b = request("--mode tun --vip 192.0.2.11 --gue-port 6080 --iface eth1").unwrap();
        assert_eq!(
            setup::describe_difference(&a, &b),
            "VIPs: recorded 192.0.2.10, asked 192.0.2.11; \
             interface: recorded default route's, asked eth1"
        );
    }
}
