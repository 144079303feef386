//! The sync daemons as ipvsadm starts, stops and lists them (`--start-daemon`, `--stop-daemon`,
//! `-L --daemon`), with the kernel's defaults and refusals (net/netfilter/ipvs/ip_vs_ctl.c
//! `ip_vs_genl_new_daemon`, ip_vs_sync.c `start_sync_thread`): at most one master and one
//! backup, both at once if wanted; starting a running one or stopping a stopped one is an error
//! with libipvs's words. Pure: the interface's MTU comes from the caller.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{sync_maxlen, Role, DEFAULT_GROUP, DEFAULT_PORT, DEFAULT_TTL};

/// The interface ipvsadm names when `--mcast-interface` is not given (ipvsadm.c DEF_MCAST_IFN).
pub const DEFAULT_MCAST_IFN: &str = "eth0";

/// Longest interface name (the kernel's IFNAMSIZ less its NUL).
const IFNAME_MAX: usize = 15;

/// Largest `--sync-maxlen` ipvsadm takes: a UDP payload in an IPv4 datagram.
pub const SYNC_MAXLEN_MAX: u32 = 65535 - 20 - 8;

/// One daemon as `--start-daemon` asks for it: what was given, unset options left to the
/// kernel's defaults (so a saved daemon keeps following them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonConfig {
    /// Master (sends) or backup (receives).
    pub role: Role,
    /// `--mcast-interface`: where the master sends from, or the backup listens on.
    pub mcast_ifn: String,
    /// `--syncid`: written in every message a master sends; a backup with a syncid other than
    /// 0 takes only messages carrying it.
    pub syncid: u8,
    /// `--sync-maxlen`: the largest message payload (None: from the interface's MTU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_maxlen: Option<u32>,
    /// `--mcast-group` (None: [`DEFAULT_GROUP`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<IpAddr>,
    /// `--mcast-port` (None: [`DEFAULT_PORT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `--mcast-ttl` (None: [`DEFAULT_TTL`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u8>,
}

/// Why a daemon cannot be started or stopped. The messages of the common cases are libipvs's
/// (`ipvs_strerror`), as ipvsadm prints them.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum DaemonError {
    /// A daemon of this role runs already (the kernel's -EEXIST).
    #[error("Daemon has already run")]
    AlreadyRunning,
    /// No daemon of this role runs (the kernel's -ESRCH).
    #[error("No daemon is running")]
    NotRunning,
    /// The group is not a multicast address (the kernel's -EINVAL).
    #[error("mcast-group {0} is not a multicast address")]
    NotMulticast(IpAddr),
    /// An option out of its range (ipvsadm refuses these before asking the kernel).
    #[error("illegal {0} specified")]
    Illegal(&'static str),
    /// The interface does not exist in xvsd's network namespace (the kernel's -ENODEV).
    #[error("No such device: {0}")]
    NoDevice(String),
}

impl DaemonConfig {
    /// A daemon with every default: eth0, syncid 0, the kernel's group, port and TTL.
    pub fn new(role: Role) -> Self {
        Self {
            role,
            mcast_ifn: DEFAULT_MCAST_IFN.into(),
            syncid: 0,
            sync_maxlen: None,
            group: None,
            port: None,
            ttl: None,
        }
    }

    /// The kernel's checks of a new daemon's settings (a request may come from any client).
    pub fn validate(&self) -> Result<(), DaemonError> {
        if self.mcast_ifn.is_empty() || self.mcast_ifn.len() > IFNAME_MAX {
            return Err(DaemonError::Illegal("mcast-interface"));
        }
        if let Some(g) = self.group {
            if !g.is_multicast() {
                return Err(DaemonError::NotMulticast(g));
            }
        }
        if self.port == Some(0) {
            return Err(DaemonError::Illegal("mcast-port"));
        }
        if self.ttl == Some(0) {
            return Err(DaemonError::Illegal("mcast-ttl"));
        }
        if matches!(self.sync_maxlen, Some(n) if n == 0 || n > SYNC_MAXLEN_MAX) {
            return Err(DaemonError::Illegal("sync-maxlen"));
        }
        Ok(())
    }

    /// The group messages go to.
    pub fn group(&self) -> IpAddr {
        self.group.unwrap_or(IpAddr::V4(DEFAULT_GROUP))
    }

    /// The UDP port.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(DEFAULT_PORT)
    }

    /// The multicast TTL.
    pub fn ttl(&self) -> u8 {
        self.ttl.unwrap_or(DEFAULT_TTL)
    }

    /// The largest message payload on an interface of `mtu` bytes, as the kernel computes it.
    pub fn maxlen(&self, mtu: u32) -> usize {
        sync_maxlen(self.role, self.group().is_ipv6(), mtu, self.sync_maxlen)
    }

    /// Its status line's values on an interface of `mtu` bytes.
    pub fn status(&self, mtu: u32, stats: SyncStats) -> DaemonStatus {
        DaemonStatus {
            role: self.role,
            mcast_ifn: self.mcast_ifn.clone(),
            syncid: self.syncid,
            maxlen: self.maxlen(mtu) as u32,
            group: self.group(),
            port: self.port(),
            ttl: self.ttl(),
            stats,
            table: None,
        }
    }
}

/// The daemons that run: at most one master and one backup.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Daemons {
    /// The master, if started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<DaemonConfig>,
    /// The backup, if started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<DaemonConfig>,
}

impl Daemons {
    /// No daemon runs.
    pub fn is_empty(&self) -> bool {
        self.master.is_none() && self.backup.is_none()
    }

    /// The daemon of `role`, if it runs.
    pub fn get(&self, role: Role) -> Option<&DaemonConfig> {
        match role {
            Role::Master => self.master.as_ref(),
            Role::Backup => self.backup.as_ref(),
        }
    }

    fn slot(&mut self, role: Role) -> &mut Option<DaemonConfig> {
        match role {
            Role::Master => &mut self.master,
            Role::Backup => &mut self.backup,
        }
    }

    /// These daemons with `config` started too; refused if its role runs already or its
    /// settings are invalid.
    pub fn started(&self, config: DaemonConfig) -> Result<Daemons, DaemonError> {
        config.validate()?;
        let mut next = self.clone();
        let slot = next.slot(config.role);
        if slot.is_some() {
            return Err(DaemonError::AlreadyRunning);
        }
        *slot = Some(config);
        Ok(next)
    }

    /// These daemons with the one of `role` stopped; refused if it does not run.
    pub fn stopped(&self, role: Role) -> Result<Daemons, DaemonError> {
        let mut next = self.clone();
        if next.slot(role).take().is_none() {
            return Err(DaemonError::NotRunning);
        }
        Ok(next)
    }

    /// The running daemons, master first (the order the kernel lists them in).
    pub fn iter(&self) -> impl Iterator<Item = &DaemonConfig> {
        self.master.iter().chain(self.backup.iter())
    }
}

/// One running daemon as `-L --daemon` shows it, with its counters (JSON and metrics only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// Master or backup.
    pub role: Role,
    /// Its interface.
    pub mcast_ifn: String,
    /// Its syncid.
    pub syncid: u8,
    /// The largest message payload in effect.
    pub maxlen: u32,
    /// The group.
    pub group: IpAddr,
    /// The UDP port.
    pub port: u16,
    /// The multicast TTL.
    pub ttl: u8,
    /// What it sent or received.
    #[serde(default)]
    pub stats: SyncStats,
    /// Backup: whether it holds the peers' tables (`xvsadm synced`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<super::table::TableStatus>,
}

/// A daemon's counters since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncStats {
    /// Messages sent (master) or accepted (backup).
    pub messages: u64,
    /// Connection entries sent (master) or accepted (backup).
    pub conns: u64,
    /// Backup: entries written to the connection table.
    #[serde(default)]
    pub installed: u64,
    /// What went wrong, by reason (`send`, `decode`, `foreign_syncid`, `unknown_service`,
    /// `unknown_real`, `install`, `unsupported`...): each a message or an entry dropped.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub errors: BTreeMap<String, u64>,
}

impl SyncStats {
    /// Counts one error of `reason`.
    pub fn error(&mut self, reason: &str) {
        *self.errors.entry(reason.to_string()).or_default() += 1;
    }
}

/// `-L --daemon`: ipvsadm's lines (ipvsadm.c list_daemon), master first.
pub fn render_daemons(daemons: &[DaemonStatus]) -> String {
    let mut out = String::new();
    let mut sorted: Vec<&DaemonStatus> = daemons.iter().collect();
    sorted.sort_by_key(|d| d.role);
    for d in sorted {
        let role = match d.role {
            Role::Master => "master",
            Role::Backup => "backup",
        };
        let _ = writeln!(
            out,
            "{role} sync daemon (mcast={}, syncid={}, maxlen={}, group={}, port={}, ttl={})",
            d.mcast_ifn, d.syncid, d.maxlen, d.group, d.port, d.ttl
        );
    }
    out
}

/// `--mcast-group`'s value as ipvsadm reads it: an IPv6 multicast address if it has a colon,
/// else an IPv4 multicast address; its error message otherwise.
pub fn parse_group(s: &str) -> Result<IpAddr, String> {
    if s.contains(':') {
        match s.parse::<std::net::Ipv6Addr>() {
            Ok(a) if a.is_multicast() => Ok(IpAddr::V6(a)),
            _ => Err(format!("invalid IPv6 mcast-group `{s}'")),
        }
    } else {
        match s.parse::<Ipv4Addr>() {
            Ok(a) if a.is_multicast() => Ok(IpAddr::V4(a)),
            _ => Err(format!("invalid IPv4 mcast-group `{s}'")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listing_is_ipvsadms_line_with_the_kernels_defaults() {
        let mut m = DaemonConfig::new(Role::Master);
        m.syncid = 1;
        let b = DaemonConfig {
            mcast_ifn: "br0".into(),
            group: Some("239.1.2.3".parse().unwrap()),
            port: Some(9000),
            ttl: Some(3),
            sync_maxlen: Some(4000),
            ..DaemonConfig::new(Role::Backup)
        };
        // Backup first in: the listing still puts the master first, as the kernel does.
        let text = render_daemons(&[
            b.status(9000, SyncStats::default()),
            m.status(9000, SyncStats::default()),
        ]);
        assert_eq!(
            text,
            "master sync daemon (mcast=eth0, syncid=1, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)\n\
             backup sync daemon (mcast=br0, syncid=0, maxlen=4000, group=239.1.2.3, port=9000, ttl=3)\n"
        );
        // A backup without --sync-maxlen follows its interface's MTU; an IPv6 group has 48
        // bytes of headers.
        let b6 = DaemonConfig {
            group: Some("ff02::81".parse().unwrap()),
            ..DaemonConfig::new(Role::Backup)
        };
        assert_eq!(b6.status(9000, SyncStats::default()).maxlen, 9000 - 48);
        assert_eq!(render_daemons(&[]), "");
    }

    #[test]
    fn one_master_and_one_backup_may_run_and_each_only_once() {
        let none = Daemons::default();
        let m = none.started(DaemonConfig::new(Role::Master)).unwrap();
        let both = m.started(DaemonConfig::new(Role::Backup)).unwrap();
        assert_eq!(both.iter().count(), 2);
        assert_eq!(
            both.started(DaemonConfig::new(Role::Master)).unwrap_err(),
            DaemonError::AlreadyRunning
        );
        assert_eq!(
            DaemonError::AlreadyRunning.to_string(),
            "Daemon has already run"
        );
        let b = both.stopped(Role::Master).unwrap();
        assert!(b.master.is_none() && b.backup.is_some());
        assert_eq!(
            b.stopped(Role::Master).unwrap_err().to_string(),
            "No daemon is running"
        );
        assert!(b.stopped(Role::Backup).unwrap().is_empty());
    }

    #[test]
    fn settings_a_client_could_send_are_checked_as_the_kernel_does() {
        let bad = [
            DaemonConfig {
                group: Some("192.0.2.1".parse().unwrap()),
                ..DaemonConfig::new(Role::Master)
            },
            DaemonConfig {
                port: Some(0),
                ..DaemonConfig::new(Role::Master)
            },
            DaemonConfig {
                ttl: Some(0),
                ..DaemonConfig::new(Role::Master)
            },
            DaemonConfig {
                sync_maxlen: Some(SYNC_MAXLEN_MAX + 1),
                ..DaemonConfig::new(Role::Master)
            },
            DaemonConfig {
                mcast_ifn: "a-name-much-too-long".into(),
                ..DaemonConfig::new(Role::Master)
            },
        ];
        for d in bad {
            assert!(Daemons::default().started(d.clone()).is_err(), "{d:?}");
        }
    }

    #[test]
    fn groups_parse_as_ipvsadm_reads_them() {
        assert_eq!(
            parse_group("224.0.0.81").unwrap(),
            IpAddr::V4(DEFAULT_GROUP)
        );
        assert_eq!(
            parse_group("ff02::81").unwrap(),
            "ff02::81".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            parse_group("192.0.2.1").unwrap_err(),
            "invalid IPv4 mcast-group `192.0.2.1'"
        );
        assert_eq!(
            parse_group("2001:db8::1").unwrap_err(),
            "invalid IPv6 mcast-group `2001:db8::1'"
        );
    }

    #[test]
    fn saved_daemons_round_trip_and_an_empty_set_is_absent() {
        let d = Daemons::default()
            .started(DaemonConfig {
                syncid: 7,
                ..DaemonConfig::new(Role::Backup)
            })
            .unwrap();
        let text = serde_json::to_string(&d).unwrap();
        assert_eq!(
            text,
            r#"{"backup":{"role":"backup","mcast_ifn":"eth0","syncid":7}}"#
        );
        assert_eq!(serde_json::from_str::<Daemons>(&text).unwrap(), d);
        assert_eq!(
            serde_json::from_str::<Daemons>("{}").unwrap(),
            Daemons::default()
        );
    }
}
