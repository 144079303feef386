//! The real-server decapsulator (`xvs_decap`) as userspace sees it: load it, fill its maps,
//! attach it to an interface so it outlives this process, find it again, read its counters.
//!
//! Attachment goes through rtnetlink (IFLA_XDP, as `ip link set dev IF xdp ...` does), not a
//! bpf_link: the interface itself then holds the program, so it stays attached after xvsadm
//! exits without any pin, whatever mount namespace xvsadm ran in (`ip netns exec` gives every
//! command a private one, where a bpffs mounted for a pin would vanish with the command), and it
//! goes away with the interface. The attached program is found again through the interface
//! (IFLA_XDP_PROG_ID) and its maps through the program's map ids.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    os::fd::{AsFd, AsRawFd},
};

use aya::{
    maps::{HashMap as BpfHashMap, Map, MapData, MapError, PerCpuArray},
    programs::{loaded_programs, ProgramError, ProgramInfo, Xdp},
    Ebpf, EbpfError,
};
use futures::TryStreamExt;
use lb_common::{
    decap::{addr_role, names, DecapAddrKey, DecapReason, GuePortKey, DECAP_REASON_COUNT},
    FAMILY_V4, FAMILY_V6,
};
use rtnetlink::{
    packet_route::link::{LinkAttribute, LinkMessage, LinkXdp, XdpAttached},
    LinkUnspec,
};
use thiserror::Error;

use crate::object;

/// Errors of the decapsulator.
#[derive(Debug, Error)]
pub enum DecapError {
    /// Loading the object failed (verifier, missing privileges...).
    #[error("loading the decapsulator: {0}")]
    Load(#[from] EbpfError),
    /// A program operation failed.
    #[error("decapsulator program: {0}")]
    Program(#[from] ProgramError),
    /// A map operation failed.
    #[error("decapsulator map {name}: {source}")]
    Map {
        /// The map.
        name: &'static str,
        /// What failed.
        source: MapError,
    },
    /// The object or the attached program lacks a map or program.
    #[error("the decapsulator has no {0}")]
    Missing(&'static str),
    /// More addresses or ports than the maps hold.
    #[error("too many {what}: {n} (at most {max})")]
    Capacity {
        /// What overflowed.
        what: &'static str,
        /// How many were asked for.
        n: usize,
        /// The map's capacity.
        max: u32,
    },
    /// A netlink request failed.
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    /// The interface is unknown to netlink.
    #[error("no interface with index {0}")]
    NoInterface(u32),
    /// The kernel refused to attach (another XDP program or an XDP link holds the interface).
    #[error("cannot attach XDP to {iface}: {reason}")]
    Attach {
        /// The interface.
        iface: String,
        /// The kernel's answer.
        reason: String,
    },
    /// The attached program is gone.
    #[error("no BPF program with id {0}")]
    NoProgram(u32),
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> DecapError {
    move |source| DecapError::Map { name, source }
}

/// What the decapsulator is told: whose tunnels to open, for which VIPs, on which GUE ports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecapConfig {
    /// Outer destinations that are this host.
    pub locals: BTreeSet<IpAddr>,
    /// Inner destinations to decapsulate for.
    pub vips: BTreeSet<IpAddr>,
    /// UDP destination ports that carry GUE.
    pub gue_ports: BTreeSet<u16>,
}

fn addr_key(ip: &IpAddr) -> DecapAddrKey {
    let (family, addr) = match ip {
        IpAddr::V4(v4) => (FAMILY_V4, lb_common::addr_from_v4(v4.octets())),
        IpAddr::V6(v6) => (FAMILY_V6, v6.octets()),
    };
    DecapAddrKey {
        addr,
        family,
        _pad: [0; 3],
    }
}

fn key_addr(k: &DecapAddrKey) -> Option<IpAddr> {
    match k.family {
        FAMILY_V4 => Some(IpAddr::from([k.addr[0], k.addr[1], k.addr[2], k.addr[3]])),
        FAMILY_V6 => Some(IpAddr::from(k.addr)),
        _ => None,
    }
}

/// The decapsulator's maps, of a freshly loaded object or of the program attached to an
/// interface.
pub struct DecapMaps {
    addrs: BpfHashMap<MapData, DecapAddrKey, u32>,
    gue_ports: BpfHashMap<MapData, GuePortKey, u32>,
    counters: PerCpuArray<MapData, u64>,
}

impl DecapMaps {
    fn from_maps(mut take: impl FnMut(&'static str) -> Option<Map>) -> Result<Self, DecapError> {
        let mut get = |name| take(name).ok_or(DecapError::Missing(name));
        Ok(Self {
            addrs: BpfHashMap::try_from(get(names::MAP_ADDRS)?)
                .map_err(map_err(names::MAP_ADDRS))?,
            gue_ports: BpfHashMap::try_from(get(names::MAP_GUE_PORTS)?)
                .map_err(map_err(names::MAP_GUE_PORTS))?,
            counters: PerCpuArray::try_from(get(names::MAP_COUNTERS)?)
                .map_err(map_err(names::MAP_COUNTERS))?,
        })
    }

    /// The maps of a loaded program, found through its map ids.
    pub fn of_program(info: &ProgramInfo) -> Result<Self, DecapError> {
        let mut found: Vec<(String, Map)> = Vec::new();
        for id in info.map_ids()?.unwrap_or_default() {
            let data = MapData::from_id(id).map_err(map_err("(by id)"))?;
            let name = data
                .info()
                .map_err(map_err("(by id)"))?
                .name_as_str()
                .unwrap_or_default()
                .to_string();
            found.push((name, Map::from_map_data(data).map_err(map_err("(by id)"))?));
        }
        Self::from_maps(|want| {
            let i = found.iter().position(|(n, _)| n == want)?;
            Some(found.swap_remove(i).1)
        })
    }

    /// Makes the maps hold exactly `cfg`; returns how many entries it added, changed or removed.
    pub fn sync(&mut self, cfg: &DecapConfig) -> Result<usize, DecapError> {
        let want_addrs: std::collections::BTreeMap<IpAddr, u32> = {
            let mut m = std::collections::BTreeMap::new();
            for ip in &cfg.locals {
                *m.entry(*ip).or_insert(0) |= addr_role::LOCAL;
            }
            for ip in &cfg.vips {
                *m.entry(*ip).or_insert(0) |= addr_role::VIP;
            }
            m
        };
        let max = lb_common::decap::MAX_DECAP_ADDRS;
        if want_addrs.len() > max as usize {
            return Err(DecapError::Capacity {
                what: "local addresses and VIPs",
                n: want_addrs.len(),
                max,
            });
        }
        let max = lb_common::decap::MAX_GUE_PORTS;
        if cfg.gue_ports.len() > max as usize {
            return Err(DecapError::Capacity {
                what: "GUE ports",
                n: cfg.gue_ports.len(),
                max,
            });
        }
        let mut changes = 0;
        // Add and change first, then remove: a packet never finds a wanted address missing.
        for (ip, roles) in &want_addrs {
            let k = addr_key(ip);
            if self.addrs.get(&k, 0).ok() != Some(*roles) {
                self.addrs
                    .insert(k, roles, 0)
                    .map_err(map_err(names::MAP_ADDRS))?;
                changes += 1;
            }
        }
        let stale: Vec<DecapAddrKey> = self
            .addrs
            .keys()
            .filter_map(Result::ok)
            .filter(|k| key_addr(k).is_none_or(|ip| !want_addrs.contains_key(&ip)))
            .collect();
        for k in stale {
            self.addrs.remove(&k).map_err(map_err(names::MAP_ADDRS))?;
            changes += 1;
        }
        for port in &cfg.gue_ports {
            let k = GuePortKey {
                port_be: port.to_be(),
            };
            if self.gue_ports.get(&k, 0).is_err() {
                self.gue_ports
                    .insert(k, 1, 0)
                    .map_err(map_err(names::MAP_GUE_PORTS))?;
                changes += 1;
            }
        }
        let stale: Vec<GuePortKey> = self
            .gue_ports
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !cfg.gue_ports.contains(&u16::from_be(k.port_be)))
            .collect();
        for k in stale {
            self.gue_ports
                .remove(&k)
                .map_err(map_err(names::MAP_GUE_PORTS))?;
            changes += 1;
        }
        Ok(changes)
    }

    /// What the maps hold now.
    pub fn config(&self) -> Result<DecapConfig, DecapError> {
        let mut cfg = DecapConfig::default();
        for entry in self.addrs.iter() {
            let (k, roles) = entry.map_err(map_err(names::MAP_ADDRS))?;
            let Some(ip) = key_addr(&k) else { continue };
            if roles & addr_role::LOCAL != 0 {
                cfg.locals.insert(ip);
            }
            if roles & addr_role::VIP != 0 {
                cfg.vips.insert(ip);
            }
        }
        for k in self.gue_ports.keys() {
            let k = k.map_err(map_err(names::MAP_GUE_PORTS))?;
            cfg.gue_ports.insert(u16::from_be(k.port_be));
        }
        Ok(cfg)
    }

    /// Every reason's counter, summed over CPUs, in index order.
    pub fn counters(&self) -> Result<Vec<(DecapReason, u64)>, DecapError> {
        let mut out = Vec::with_capacity(DECAP_REASON_COUNT as usize);
        for r in DecapReason::ALL {
            let v = self
                .counters
                .get(&(r as u32), 0)
                .map_err(map_err(names::MAP_COUNTERS))?;
            out.push((r, v.iter().sum()));
        }
        Ok(out)
    }
}

/// A freshly loaded decapsulator (not attached yet).
pub struct Decapsulator {
    ebpf: Ebpf,
    /// Its maps.
    pub maps: DecapMaps,
}

impl Decapsulator {
    /// Loads the embedded object and the program into the kernel.
    pub fn load() -> Result<Self, DecapError> {
        let mut ebpf = Ebpf::load(object::DECAP)?;
        let prog: &mut Xdp = ebpf
            .program_mut(names::PROG_DECAP)
            .ok_or(DecapError::Missing(names::PROG_DECAP))?
            .try_into()?;
        prog.load()?;
        let maps = DecapMaps::from_maps(|name| ebpf.take_map(name))?;
        Ok(Self { ebpf, maps })
    }

    /// The program (for BPF_PROG_TEST_RUN).
    pub fn program(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(names::PROG_DECAP)
            .and_then(|p| p.try_into().ok())
            .expect("decap program was loaded in load")
    }

    /// Attaches the program to interface `ifindex` through netlink, unless some XDP program is
    /// attached there already. The interface keeps it after this value (and the process) is
    /// gone. Returns where it is attached.
    pub async fn attach(
        &mut self,
        handle: &rtnetlink::Handle,
        ifindex: u32,
        iface: &str,
        mode: XdpMode,
    ) -> Result<Attached, DecapError> {
        let fd = self.program().fd()?.as_fd().as_raw_fd();
        let msg = LinkUnspec::new_with_index(ifindex)
            .append_extra_attribute(LinkAttribute::Xdp(vec![
                LinkXdp::Fd(fd),
                LinkXdp::Flags(XDP_FLAGS_UPDATE_IF_NOEXIST | mode.flags()),
            ]))
            .build();
        handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| DecapError::Attach {
                iface: iface.to_string(),
                reason: netlink_reason(&e),
            })?;
        attached(handle, ifindex)
            .await?
            .ok_or_else(|| DecapError::Attach {
                iface: iface.to_string(),
                reason: "the kernel accepted the request but reports no program".into(),
            })
    }
}

/// How to attach: the kernel's choice (native when the driver has it), native, or generic.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native if the driver supports XDP, else generic (the kernel decides).
    #[default]
    Auto,
    /// Native (driver) XDP.
    Native,
    /// Generic (skb) XDP.
    Generic,
}

const XDP_FLAGS_UPDATE_IF_NOEXIST: u32 = 1 << 0;
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const XDP_FLAGS_REPLACE: u32 = 1 << 4;

impl XdpMode {
    fn flags(self) -> u32 {
        match self {
            XdpMode::Auto => 0,
            XdpMode::Native => XDP_FLAGS_DRV_MODE,
            XdpMode::Generic => XDP_FLAGS_SKB_MODE,
        }
    }
}

/// The mode an XDP program is attached in, as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachedMode {
    /// Driver (native) XDP.
    Native,
    /// Generic (skb) XDP.
    Generic,
    /// Offloaded to the NIC.
    Offload,
    /// Several programs in several modes.
    Multi,
}

impl AttachedMode {
    fn flags(self) -> u32 {
        match self {
            AttachedMode::Generic => XDP_FLAGS_SKB_MODE,
            AttachedMode::Native => XDP_FLAGS_DRV_MODE,
            AttachedMode::Offload => 1 << 3,
            AttachedMode::Multi => 0,
        }
    }
}

/// An XDP program attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attached {
    /// The program's id.
    pub prog_id: u32,
    /// How it is attached.
    pub mode: AttachedMode,
}

/// The XDP program attached to interface `ifindex` through netlink, if any.
pub async fn attached(
    handle: &rtnetlink::Handle,
    ifindex: u32,
) -> Result<Option<Attached>, DecapError> {
    let mut links = handle.link().get().match_index(ifindex).execute();
    let link: LinkMessage = links
        .try_next()
        .await?
        .ok_or(DecapError::NoInterface(ifindex))?;
    let mut mode = None;
    let mut prog_id = 0;
    for attr in &link.attributes {
        if let LinkAttribute::Xdp(xdp) = attr {
            for x in xdp {
                match x {
                    LinkXdp::Attached(a) => {
                        mode = match a {
                            XdpAttached::Driver => Some(AttachedMode::Native),
                            XdpAttached::SocketBuffer => Some(AttachedMode::Generic),
                            XdpAttached::Hardware => Some(AttachedMode::Offload),
                            XdpAttached::Multiple => Some(AttachedMode::Multi),
                            _ => None,
                        }
                    }
                    LinkXdp::ProgId(id) => prog_id = *id,
                    _ => {}
                }
            }
        }
    }
    Ok(mode
        .filter(|_| prog_id != 0)
        .map(|mode| Attached { prog_id, mode }))
}

/// Detaches program `at.prog_id` from interface `ifindex`, only if it is still the one attached
/// there (IFLA_XDP_EXPECTED_FD): another program that replaced it is left alone.
pub async fn detach(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    iface: &str,
    at: Attached,
) -> Result<(), DecapError> {
    let info = program_info(at.prog_id)?.ok_or(DecapError::NoProgram(at.prog_id))?;
    let fd = info.fd()?;
    let msg = LinkUnspec::new_with_index(ifindex)
        .append_extra_attribute(LinkAttribute::Xdp(vec![
            LinkXdp::Fd(-1),
            LinkXdp::Flags(XDP_FLAGS_REPLACE | at.mode.flags()),
            LinkXdp::ExpectedFd(fd.as_fd().as_raw_fd() as u32),
        ]))
        .build();
    handle
        .link()
        .set(msg)
        .execute()
        .await
        .map_err(|e| DecapError::Attach {
            iface: iface.to_string(),
            reason: netlink_reason(&e),
        })
}

/// The loaded program with this id, if it still exists.
pub fn program_info(prog_id: u32) -> Result<Option<ProgramInfo>, DecapError> {
    for info in loaded_programs() {
        let info = info?;
        if info.id() == prog_id {
            return Ok(Some(info));
        }
    }
    Ok(None)
}

/// The kernel's errno of a netlink error, in words.
fn netlink_reason(e: &rtnetlink::Error) -> String {
    match e {
        rtnetlink::Error::NetlinkError(m) => match m.code {
            Some(code) => {
                let errno = -code.get();
                let text = std::io::Error::from_raw_os_error(errno).to_string();
                if errno == libc::EBUSY || errno == libc::EEXIST {
                    format!("{text} (another XDP program or XDP link is attached)")
                } else {
                    text
                }
            }
            None => e.to_string(),
        },
        _ => e.to_string(),
    }
}
