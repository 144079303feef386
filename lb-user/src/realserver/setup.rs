//! `setup`: brings the host to what the request asks, step by step, recording each change.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
};

use super::{
    host::{self, Sysctl, LOOPBACK},
    list, mode_name,
    state::{self, DecapRecord, Record, Request, StateLock, SysctlRecord, VipRecord},
    Mode, RealServerError,
};
use crate::decap::{self, DecapConfig, DecapError, DecapMaps, Decapsulator};

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

/// Sets the host up as `req` asks and records it at `state_path`. Either every step succeeds,
/// or the steps this run took are undone and the record is left as it was.
pub async fn setup(
    handle: &rtnetlink::Handle,
    state_path: &Path,
    req: Request,
) -> Result<SetupReport, RealServerError> {
    let _lock = StateLock::acquire(state_path)?;
    let netns = state::netns_id()?;
    let mut prior = state::load(state_path)?;
    let mut stale = false;
    if prior
        .as_ref()
        .is_some_and(|p| p.netns != netns && !state::netns_alive(p.netns))
    {
        // Its namespace is gone, and everything the record describes went with it.
        prior = None;
        stale = true;
    }
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
            host::ifname(idx).ok_or(RealServerError::NoDefaultRoute)?
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
        summary: format!("{} on {iface}", req.mode),
        ..Default::default()
    };
    if stale {
        report.kept.push(format!(
            "replaced {}: it recorded a network namespace that no longer exists",
            state_path.display()
        ));
    }
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

/// What differs between the recorded request and a new one, for the refusal.
pub(super) fn describe_difference(old: &Request, new: &Request) -> String {
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
