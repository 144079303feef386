//! `status`: the record compared with the host.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::Serialize;

use super::{
    host::{self, LOOPBACK},
    list, mode_name,
    state::{self, DecapRecord, Record},
    Mode, RealServerError,
};
use crate::decap::{self, AttachedMode, DecapConfig, DecapError, DecapMaps};

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
        st.problems.push(if state::netns_alive(rec.netns) {
            "the record belongs to another network namespace".into()
        } else {
            "the record is of a network namespace that no longer exists (teardown removes it)"
                .into()
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    fn empty() -> Status {
        Status {
            state: "/run/xvs/realserver.json".into(),
            set_up: false,
            mode: None,
            iface: None,
            vips: Vec::new(),
            sysctls: Vec::new(),
            decap: None,
            problems: vec!["not set up".into()],
        }
    }

    #[test]
    fn the_text_form_names_what_is_missing() {
        assert_eq!(
            empty().render(),
            "not set up (no record at /run/xvs/realserver.json)\n"
        );
        let mut st = empty();
        st.set_up = true;
        st.mode = Some(Mode::Tun);
        st.iface = Some("eth0".into());
        st.vips.push(VipStatus {
            addr: "192.0.2.10".parse().unwrap(),
            prefix: 32,
            on_lo: false,
            added_by_setup: true,
        });
        st.sysctls.push(SysctlStatus {
            key: "net.ipv4.conf.all.arp_ignore".into(),
            value: Some("1".into()),
            want: "1".into(),
            original: Some("0".into()),
        });
        st.decap = Some(DecapStatus {
            iface: "eth0".into(),
            prog_id: 7,
            attached: true,
            mode: Some(AttachedMode::Native),
            locals: ["198.51.100.2".parse().unwrap()].into(),
            vips: ["192.0.2.10".parse().unwrap()].into(),
            gue_ports: BTreeSet::new(),
            counters: [("decap_ipip".to_string(), 3)].into(),
        });
        st.problems = vec!["VIP 192.0.2.10 is not on lo".into()];
        assert_eq!(
            st.render(),
            "real server: tun on eth0 (record /run/xvs/realserver.json)\n\
             VIP 192.0.2.10/32 on lo: MISSING (bound by setup)\n\
             net.ipv4.conf.all.arp_ignore = 1 (setup changed it from 0)\n\
             decapsulator: xvs_decap (id 7) attached to eth0 (native)\n  \
             local addresses: 198.51.100.2\n  \
             VIPs: 192.0.2.10\n  \
             GUE ports: none\n  \
             decap_ipip             3\n\
             problem: VIP 192.0.2.10 is not on lo\n"
        );
    }
}
