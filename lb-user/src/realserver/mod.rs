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
pub mod state;

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsString,
    net::IpAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::decap::{self, AttachedMode, DecapConfig, DecapError, DecapMaps, Decapsulator, XdpMode};
use host::{Sysctl, LOOPBACK};
use state::{DecapRecord, Record, Request, StateLock, SysctlRecord, VipRecord, DEFAULT_STATE};

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
    #[error("{0} records a setup of another network namespace; give this one its own --state")]
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

/// `xvsadm realserver`'s command line.
#[derive(Parser, Debug)]
#[command(
    name = "xvsadm realserver",
    bin_name = "xvsadm realserver",
    about = "Set this host up as an LVS real server (DR or TUN), show it, undo it"
)]
pub struct Args {
    /// Where setup records what it changed.
    #[arg(long, global = true, env = "XVS_REALSERVER_STATE", default_value = DEFAULT_STATE)]
    pub state: PathBuf,
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
        if self.gue_port.len() > lb_common::decap::MAX_GUE_PORTS as usize {
            return usage(format!(
                "at most {} GUE ports",
                lb_common::decap::MAX_GUE_PORTS
            ));
        }
        Ok(Request {
            mode: self.mode,
            vips: self.vip.iter().copied().collect(),
            iface: self.iface.clone(),
            gue_ports: self.gue_port.iter().copied().collect(),
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
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        match &args.cmd {
            Cmd::Setup(s) => {
                let req = s.request()?;
                let report = setup(&handle, &args.state, req).await?;
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
                let st = status(&handle, &args.state).await?;
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
                for line in teardown(&handle, &args.state).await? {
                    println!("{line}");
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

/// What setup did.
#[derive(Debug, Default)]
pub struct SetupReport {
    /// One line per change.
    pub changes: Vec<String>,
    /// What was already in place and left alone.
    pub kept: Vec<String>,
    /// "tun on eth0".
    pub summary: String,
}

/// A change of this run, undone if a later step fails.
enum Undo {
    Sysctl(Sysctl, String),
    Vip(u32, IpAddr),
    Decap(u32, String, decap::Attached),
}

fn ifname(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf holds IF_NAMESIZE bytes as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// Sets the host up as `req` asks and records it at `state_path`. Either every step succeeds,
/// or the steps this run took are undone and the record is left as it was.
pub async fn setup(
    handle: &rtnetlink::Handle,
    state_path: &Path,
    req: Request,
) -> Result<SetupReport, RealServerError> {
    let _lock = StateLock::acquire(state_path)?;
    let netns = state::netns_id()?;
    let prior = state::load(state_path)?;
    if let Some(p) = &prior {
        if p.netns != netns {
            return Err(RealServerError::OtherNetns(state_path.to_path_buf()));
        }
        if p.request != req {
            return Err(RealServerError::AlreadySetUp(describe_difference(
                &p.request, &req,
            )));
        }
    }
    let iface = match &req.iface {
        Some(name) => name.clone(),
        None => {
            let idx = host::default_route_iface(handle)
                .await?
                .ok_or(RealServerError::NoDefaultRoute)?;
            ifname(idx).ok_or(RealServerError::NoDefaultRoute)?
        }
    };
    let ifindex =
        host::ifindex(&iface).ok_or_else(|| RealServerError::NoInterface(iface.clone()))?;
    if let Some(p) = &prior {
        if p.iface != iface {
            return Err(RealServerError::AlreadySetUp(format!(
                "recorded on {}, the default route now leaves through {iface}",
                p.iface
            )));
        }
    }
    if req.mode == Mode::Tun {
        // Refuse before changing anything when another XDP program holds the interface.
        let ours = prior
            .as_ref()
            .and_then(|p| p.decap.as_ref())
            .map(|d| d.prog_id);
        if let Some(at) = decap::attached(handle, ifindex).await? {
            if Some(at.prog_id) != ours {
                return Err(xdp_busy(&iface, at));
            }
        }
    }
    let lo =
        host::ifindex(LOOPBACK).ok_or_else(|| RealServerError::NoInterface(LOOPBACK.into()))?;
    let locals = match (&req.mode, &req.locals) {
        (Mode::Dr, _) => BTreeSet::new(),
        (Mode::Tun, Some(l)) => l.clone(),
        (Mode::Tun, None) => {
            let l = host::reachable_addresses(handle, ifindex).await?;
            if l.is_empty() {
                return Err(RealServerError::NoLocalAddresses(iface));
            }
            l
        }
    };
    let mut rec = prior
        .clone()
        .unwrap_or_else(|| Record::new(netns, req.clone(), iface.clone()));
    let mut report = SetupReport {
        summary: format!(
            "{} on {iface}",
            match req.mode {
                Mode::Dr => "dr",
                Mode::Tun => "tun",
            }
        ),
        ..Default::default()
    };
    let mut undo = Vec::new();
    let steps = async {
        apply_sysctls(&req, &iface, &mut rec, &mut report, &mut undo, state_path)?;
        apply_vips(
            handle,
            lo,
            &req,
            &mut rec,
            &mut report,
            &mut undo,
            state_path,
        )
        .await?;
        if req.mode == Mode::Tun {
            let want = DecapConfig {
                locals: locals.clone(),
                vips: req.vips.clone(),
                gue_ports: req.gue_ports.clone(),
            };
            apply_decap(
                handle,
                ifindex,
                &iface,
                &req,
                want,
                &mut rec,
                &mut report,
                &mut undo,
            )
            .await?;
        }
        state::save(state_path, &rec)
    }
    .await;
    if let Err(e) = steps {
        for u in undo.into_iter().rev() {
            let _ = match u {
                Undo::Sysctl(s, old) => s.write(&old),
                Undo::Vip(idx, ip) => host::remove_address(handle, idx, ip).await.map(|_| ()),
                Undo::Decap(idx, name, at) => decap::detach(handle, idx, &name, at)
                    .await
                    .map_err(RealServerError::from),
            };
        }
        let _ = match &prior {
            Some(p) => state::save(state_path, p),
            None => state::remove(state_path),
        };
        return Err(e);
    }
    Ok(report)
}

fn describe_difference(old: &Request, new: &Request) -> String {
    fn show<T: std::fmt::Debug>(v: &T) -> String {
        format!("{v:?}")
    }
    let mut d = Vec::new();
    let mut field = |name: &str, a: String, b: String| {
        if a != b {
            d.push(format!("{name}: recorded {a}, asked {b}"));
        }
    };
    field("mode", show(&old.mode), show(&new.mode));
    field("VIPs", list(&old.vips), list(&new.vips));
    field(
        "interface",
        old.iface
            .clone()
            .unwrap_or_else(|| "default route's".into()),
        new.iface
            .clone()
            .unwrap_or_else(|| "default route's".into()),
    );
    field("GUE ports", list(&old.gue_ports), list(&new.gue_ports));
    let locals = |l: &Option<BTreeSet<IpAddr>>| match l {
        Some(l) => list(l),
        None => "the interface's".into(),
    };
    field("local addresses", locals(&old.locals), locals(&new.locals));
    field("XDP mode", show(&old.xdp_mode), show(&new.xdp_mode));
    d.join("; ")
}

/// The sysctls setup wants, with the values it wants.
fn wanted_sysctls(
    req: &Request,
    iface: &str,
    rec: &Record,
) -> Result<BTreeMap<Sysctl, String>, RealServerError> {
    let mut want = BTreeMap::new();
    // ARP concerns IPv4 VIPs only: IPv6 neighbour discovery answers only for addresses of the
    // interface a solicitation arrives on, never for one on lo.
    let v4 = req.vips.iter().any(IpAddr::is_ipv4);
    if v4 {
        for dev in ["all", iface] {
            want.insert(Sysctl::new(dev, "arp_ignore"), "1".to_string());
            want.insert(Sysctl::new(dev, "arp_announce"), "2".to_string());
        }
    }
    if v4 && req.mode == Mode::Tun {
        // The kernel uses max(all, IFACE): strict (1) only when one of them is 1 and none is 2.
        let all = Sysctl::new("all", "rp_filter");
        let dev = Sysctl::new(iface, "rp_filter");
        let num = |v: &str| v.parse::<u8>().unwrap_or(0);
        let (a, d) = (num(&all.read()?), num(&dev.read()?));
        if a.max(d) == 1 {
            for (s, v) in [(all, a), (dev, d)] {
                if v == 1 {
                    want.insert(s, "2".to_string());
                }
            }
        }
    }
    // What an earlier run of the same setup changed stays wanted.
    for s in &rec.sysctls {
        want.entry(s.sysctl()).or_insert_with(|| s.value.clone());
    }
    Ok(want)
}

fn apply_sysctls(
    req: &Request,
    iface: &str,
    rec: &mut Record,
    report: &mut SetupReport,
    undo: &mut Vec<Undo>,
    state_path: &Path,
) -> Result<(), RealServerError> {
    for (s, value) in wanted_sysctls(req, iface, rec)? {
        let cur = s.read()?;
        let i = match rec
            .sysctls
            .iter()
            .position(|r| r.dev == s.dev && r.name == s.name)
        {
            Some(i) => i,
            None => {
                rec.sysctls.push(SysctlRecord {
                    dev: s.dev.clone(),
                    name: s.name.clone(),
                    value: value.clone(),
                    original: None,
                });
                rec.sysctls.len() - 1
            }
        };
        if cur == value {
            continue;
        }
        s.write(&value)?;
        undo.push(Undo::Sysctl(s.clone(), cur.clone()));
        report
            .changes
            .push(format!("set {} = {value} (was {cur})", s.key()));
        // The first value setup found is the one teardown restores.
        rec.sysctls[i].original.get_or_insert(cur);
        state::save(state_path, rec)?;
    }
    Ok(())
}

async fn apply_vips(
    handle: &rtnetlink::Handle,
    lo: u32,
    req: &Request,
    rec: &mut Record,
    report: &mut SetupReport,
    undo: &mut Vec<Undo>,
    state_path: &Path,
) -> Result<(), RealServerError> {
    let present: BTreeSet<IpAddr> = host::addresses(handle, lo)
        .await?
        .into_iter()
        .map(|a| a.ip)
        .collect();
    for vip in &req.vips {
        let prefix = host::host_prefix(vip);
        let i = match rec.vips.iter().position(|v| v.addr == *vip) {
            Some(i) => i,
            None => {
                rec.vips.push(VipRecord {
                    addr: *vip,
                    prefix,
                    added: false,
                });
                rec.vips.len() - 1
            }
        };
        if present.contains(vip) {
            if !rec.vips[i].added {
                report.kept.push(format!(
                    "{vip} was already on {LOOPBACK}: kept, teardown keeps it"
                ));
            }
            continue;
        }
        host::add_address(handle, lo, *vip).await?;
        undo.push(Undo::Vip(lo, *vip));
        report
            .changes
            .push(format!("bound {vip}/{prefix} to {LOOPBACK}"));
        rec.vips[i].added = true;
        state::save(state_path, rec)?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn apply_decap(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    iface: &str,
    req: &Request,
    want: DecapConfig,
    rec: &mut Record,
    report: &mut SetupReport,
    undo: &mut Vec<Undo>,
) -> Result<(), RealServerError> {
    let current = decap::attached(handle, ifindex).await?;
    let ours = rec.decap.as_ref().map(|d| d.prog_id);
    match current {
        Some(at) if Some(at.prog_id) == ours => {
            let info = decap::program_info(at.prog_id)?.ok_or(DecapError::NoProgram(at.prog_id))?;
            let mut maps = DecapMaps::of_program(&info)?;
            let n = maps.sync(&want)?;
            if n > 0 {
                report.changes.push(format!(
                    "updated the decapsulator on {iface}: {n} map entries"
                ));
            }
            if let Some(d) = rec.decap.as_mut() {
                d.locals = want.locals;
            }
        }
        Some(at) => return Err(xdp_busy(iface, at)),
        None => {
            let mut d = Decapsulator::load()?;
            d.maps.sync(&want)?;
            let at = d.attach(handle, ifindex, iface, req.xdp_mode).await?;
            undo.push(Undo::Decap(ifindex, iface.to_string(), at));
            report.changes.push(format!(
                "attached the decapsulator {} (id {}) to {iface} ({}): local {}; VIPs {}; GUE ports {}",
                lb_common::decap::names::PROG_DECAP,
                at.prog_id,
                mode_name(at.mode),
                list(&want.locals),
                list(&want.vips),
                list(&want.gue_ports),
            ));
            rec.decap = Some(DecapRecord {
                iface: iface.to_string(),
                ifindex,
                prog_id: at.prog_id,
                mode: at.mode,
                locals: want.locals,
            });
        }
    }
    Ok(())
}

/// The error for an interface some other XDP program holds.
fn xdp_busy(iface: &str, at: decap::Attached) -> RealServerError {
    let name = decap::program_info(at.prog_id)
        .ok()
        .flatten()
        .and_then(|i| i.name_as_str().map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    RealServerError::XdpBusy {
        iface: iface.to_string(),
        prog_id: at.prog_id,
        name,
    }
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

/// A VIP as status sees it.
#[derive(Debug, Serialize)]
pub struct VipStatus {
    /// The VIP.
    pub addr: IpAddr,
    /// Prefix length setup binds it with.
    pub prefix: u8,
    /// Whether it is on lo now.
    pub on_lo: bool,
    /// Setup bound it (teardown removes it).
    pub added_by_setup: bool,
}

/// A sysctl as status sees it.
#[derive(Debug, Serialize)]
pub struct SysctlStatus {
    /// sysctl(8)'s name.
    pub key: String,
    /// The current value (None: unreadable, e.g. the interface is gone).
    pub value: Option<String>,
    /// The value setup wants.
    pub want: String,
    /// The value before setup changed it (None: setup did not change it).
    pub original: Option<String>,
}

/// The decapsulator as status sees it.
#[derive(Debug, Serialize)]
pub struct DecapStatus {
    /// The interface.
    pub iface: String,
    /// The program setup attached.
    pub prog_id: u32,
    /// Whether that program is still the one attached there.
    pub attached: bool,
    /// How it is attached.
    pub mode: Option<AttachedMode>,
    /// Local addresses in its map.
    pub locals: BTreeSet<IpAddr>,
    /// VIPs in its map.
    pub vips: BTreeSet<IpAddr>,
    /// GUE ports in its map.
    pub gue_ports: BTreeSet<u16>,
    /// Packets per outcome since it was attached.
    pub counters: BTreeMap<String, u64>,
}

/// What `status` reports.
#[derive(Debug, Serialize)]
pub struct Status {
    /// The record's path.
    pub state: PathBuf,
    /// Whether a setup is recorded.
    pub set_up: bool,
    /// Its mode.
    pub mode: Option<Mode>,
    /// Its interface.
    pub iface: Option<String>,
    /// VIPs.
    pub vips: Vec<VipStatus>,
    /// Sysctls.
    pub sysctls: Vec<SysctlStatus>,
    /// The decapsulator (tun).
    pub decap: Option<DecapStatus>,
    /// Where the host differs from the record (empty: all in place).
    pub problems: Vec<String>,
}

impl Status {
    /// The text form.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let Some(mode) = self.mode else {
            let _ = writeln!(s, "not set up (no record at {})", self.state.display());
            return s;
        };
        let mode = match mode {
            Mode::Dr => "dr",
            Mode::Tun => "tun",
        };
        let _ = writeln!(
            s,
            "real server: {mode} on {} (record {})",
            self.iface.as_deref().unwrap_or("?"),
            self.state.display()
        );
        for v in &self.vips {
            let _ = writeln!(
                s,
                "VIP {}/{} on {LOOPBACK}: {}{}",
                v.addr,
                v.prefix,
                if v.on_lo { "present" } else { "MISSING" },
                if v.added_by_setup {
                    " (bound by setup)"
                } else {
                    " (was there before setup)"
                }
            );
        }
        for c in &self.sysctls {
            let _ = writeln!(
                s,
                "{} = {}{}",
                c.key,
                c.value.as_deref().unwrap_or("?"),
                match &c.original {
                    Some(o) => format!(" (setup changed it from {o})"),
                    None => String::new(),
                }
            );
        }
        if let Some(d) = &self.decap {
            let _ = writeln!(
                s,
                "decapsulator: {} (id {}) {} {}{}",
                lb_common::decap::names::PROG_DECAP,
                d.prog_id,
                if d.attached {
                    "attached to"
                } else {
                    "NOT attached to"
                },
                d.iface,
                d.mode
                    .map(|m| format!(" ({})", mode_name(m)))
                    .unwrap_or_default()
            );
            if d.attached {
                let _ = writeln!(s, "  local addresses: {}", list(&d.locals));
                let _ = writeln!(s, "  VIPs: {}", list(&d.vips));
                let _ = writeln!(s, "  GUE ports: {}", list(&d.gue_ports));
                for r in lb_common::decap::DecapReason::ALL {
                    if let Some(n) = d.counters.get(r.name()) {
                        let _ = writeln!(s, "  {:<22} {n}", r.name());
                    }
                }
            }
        }
        if self.problems.is_empty() {
            let _ = writeln!(s, "ok: everything setup recorded is in place");
        } else {
            for p in &self.problems {
                let _ = writeln!(s, "problem: {p}");
            }
        }
        s
    }
}

/// Compares the record at `state_path` with the host.
pub async fn status(
    handle: &rtnetlink::Handle,
    state_path: &Path,
) -> Result<Status, RealServerError> {
    let mut st = Status {
        state: state_path.to_path_buf(),
        set_up: false,
        mode: None,
        iface: None,
        vips: Vec::new(),
        sysctls: Vec::new(),
        decap: None,
        problems: Vec::new(),
    };
    let Some(rec) = state::load(state_path)? else {
        st.problems.push("not set up".into());
        return Ok(st);
    };
    st.set_up = true;
    st.mode = Some(rec.request.mode);
    st.iface = Some(rec.iface.clone());
    if rec.netns != state::netns_id()? {
        st.problems
            .push("the record belongs to another network namespace".into());
        return Ok(st);
    }
    let on_lo: BTreeSet<IpAddr> = match host::ifindex(LOOPBACK) {
        Some(lo) => host::addresses(handle, lo)
            .await?
            .into_iter()
            .map(|a| a.ip)
            .collect(),
        None => BTreeSet::new(),
    };
    for v in &rec.vips {
        let present = on_lo.contains(&v.addr);
        if !present {
            st.problems
                .push(format!("VIP {} is not on {LOOPBACK}", v.addr));
        }
        st.vips.push(VipStatus {
            addr: v.addr,
            prefix: v.prefix,
            on_lo: present,
            added_by_setup: v.added,
        });
    }
    for r in &rec.sysctls {
        let s = r.sysctl();
        let value = s.read().ok();
        if value.as_deref() != Some(r.value.as_str()) {
            st.problems.push(format!(
                "{} is {}, setup set {}",
                s.key(),
                value.as_deref().unwrap_or("unreadable"),
                r.value
            ));
        }
        st.sysctls.push(SysctlStatus {
            key: s.key(),
            value,
            want: r.value.clone(),
            original: r.original.clone(),
        });
    }
    if let Some(d) = &rec.decap {
        st.decap = Some(decap_status(handle, &rec, d, &mut st.problems).await?);
    }
    Ok(st)
}

async fn decap_status(
    handle: &rtnetlink::Handle,
    rec: &Record,
    d: &DecapRecord,
    problems: &mut Vec<String>,
) -> Result<DecapStatus, RealServerError> {
    let mut ds = DecapStatus {
        iface: d.iface.clone(),
        prog_id: d.prog_id,
        attached: false,
        mode: None,
        locals: BTreeSet::new(),
        vips: BTreeSet::new(),
        gue_ports: BTreeSet::new(),
        counters: BTreeMap::new(),
    };
    let Some(ifindex) = host::ifindex(&d.iface).filter(|i| *i == d.ifindex) else {
        problems.push(format!("interface {} is gone", d.iface));
        return Ok(ds);
    };
    match decap::attached(handle, ifindex).await? {
        Some(at) if at.prog_id == d.prog_id => {
            ds.attached = true;
            ds.mode = Some(at.mode);
        }
        Some(at) => problems.push(format!(
            "the decapsulator (id {}) was replaced on {} by program id {}",
            d.prog_id, d.iface, at.prog_id
        )),
        None => problems.push(format!(
            "the decapsulator (id {}) is no longer attached to {}",
            d.prog_id, d.iface
        )),
    }
    if !ds.attached {
        return Ok(ds);
    }
    let info = decap::program_info(d.prog_id)?.ok_or(DecapError::NoProgram(d.prog_id))?;
    let maps = DecapMaps::of_program(&info)?;
    let have = maps.config()?;
    let want = DecapConfig {
        locals: d.locals.clone(),
        vips: rec.request.vips.clone(),
        gue_ports: rec.request.gue_ports.clone(),
    };
    if have != want {
        problems.push(format!(
            "the decapsulator's maps differ from the record: local {} / VIPs {} / GUE ports {}, recorded local {} / VIPs {} / GUE ports {}",
            list(&have.locals),
            list(&have.vips),
            list(&have.gue_ports),
            list(&want.locals),
            list(&want.vips),
            list(&want.gue_ports)
        ));
    }
    ds.locals = have.locals;
    ds.vips = have.vips;
    ds.gue_ports = have.gue_ports;
    ds.counters = maps
        .counters()?
        .into_iter()
        .map(|(r, n)| (r.name().to_string(), n))
        .collect();
    Ok(ds)
}

/// Undoes what the record at `state_path` says setup did; returns one line per action.
/// A value someone changed since setup is left alone (with a note).
pub async fn teardown(
    handle: &rtnetlink::Handle,
    state_path: &Path,
) -> Result<Vec<String>, RealServerError> {
    let _lock = StateLock::acquire(state_path)?;
    let Some(mut rec) = state::load(state_path)? else {
        return Ok(vec![format!(
            "nothing to tear down (no record at {})",
            state_path.display()
        )]);
    };
    if rec.netns != state::netns_id()? {
        return Err(RealServerError::OtherNetns(state_path.to_path_buf()));
    }
    let mut out = Vec::new();
    let mut failed = Vec::new();
    if let Some(d) = rec.decap.take() {
        match teardown_decap(handle, &d).await {
            Ok(line) => out.push(line),
            Err(e) => {
                failed.push(format!("decapsulator: {e}"));
                rec.decap = Some(d);
            }
        }
    }
    let lo = host::ifindex(LOOPBACK);
    let mut kept_vips = Vec::new();
    for v in std::mem::take(&mut rec.vips) {
        if !v.added {
            out.push(format!(
                "left {} on {LOOPBACK} (it was there before setup)",
                v.addr
            ));
            continue;
        }
        let Some(lo) = lo else { continue };
        match host::remove_address(handle, lo, v.addr).await {
            Ok(true) => out.push(format!("removed {}/{} from {LOOPBACK}", v.addr, v.prefix)),
            Ok(false) => out.push(format!("{} was already gone from {LOOPBACK}", v.addr)),
            Err(e) => {
                failed.push(format!("{}: {e}", v.addr));
                kept_vips.push(v);
            }
        }
    }
    rec.vips = kept_vips;
    let mut kept_sysctls = Vec::new();
    // Restored in reverse, so interface values come back before "all" (order is harmless here,
    // but mirrors setup).
    for r in std::mem::take(&mut rec.sysctls).into_iter().rev() {
        let Some(orig) = &r.original else { continue };
        let s = r.sysctl();
        match s.read() {
            Ok(cur) if cur == r.value => match s.write(orig) {
                Ok(()) => out.push(format!("restored {} = {orig}", s.key())),
                Err(e) => {
                    failed.push(e.to_string());
                    kept_sysctls.push(r.clone());
                }
            },
            Ok(cur) => out.push(format!(
                "left {} = {cur} (changed since setup set {}; it was {orig} before)",
                s.key(),
                r.value
            )),
            // The interface is gone: nothing left to restore.
            Err(_) => out.push(format!("{} no longer exists", s.key())),
        }
    }
    rec.sysctls = kept_sysctls;
    if failed.is_empty() {
        state::remove(state_path)?;
        out.push("torn down".into());
        Ok(out)
    } else {
        state::save(state_path, &rec)?;
        Err(RealServerError::Incomplete(failed.join("; ")))
    }
}

async fn teardown_decap(
    handle: &rtnetlink::Handle,
    d: &DecapRecord,
) -> Result<String, RealServerError> {
    let Some(ifindex) = host::ifindex(&d.iface).filter(|i| *i == d.ifindex) else {
        return Ok(format!("{} is gone, and the decapsulator with it", d.iface));
    };
    match decap::attached(handle, ifindex).await? {
        Some(at) if at.prog_id == d.prog_id => {
            decap::detach(handle, ifindex, &d.iface, at).await?;
            Ok(format!(
                "detached the decapsulator (id {}) from {}",
                d.prog_id, d.iface
            ))
        }
        Some(at) => Ok(format!(
            "left program id {} on {} (it replaced the decapsulator)",
            at.prog_id, d.iface
        )),
        None => Ok(format!(
            "the decapsulator was already detached from {}",
            d.iface
        )),
    }
}
