//! The record `xvsadm realserver setup` keeps of what it changed, so `teardown` undoes exactly
//! that and `status` can compare it with the host.

use std::{
    collections::BTreeSet,
    fs::File,
    io::Write,
    net::IpAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{host::Sysctl, Mode, RealServerError};
use crate::decap::{AttachedMode, XdpMode};

/// Where the record lives unless --state or XVS_REALSERVER_STATE says otherwise (and unless
/// xvsadm runs in a named network namespace, see `default_path`).
pub const DEFAULT_STATE: &str = "/run/xvs/realserver.json";

/// Where named network namespaces' records live: `/run/xvs/netns/NAME/realserver.json`.
const NETNS_STATE_DIR: &str = "/run/xvs/netns";

/// The default record: DEFAULT_STATE, or, inside a network namespace named in /run/netns (what
/// `ip netns exec NAME` runs in), one of its own: /run is shared by every namespace, and each
/// namespace is a real server of its own.
pub fn default_path() -> PathBuf {
    match current_netns_name() {
        Some(name) => Path::new(NETNS_STATE_DIR)
            .join(name)
            .join("realserver.json"),
        None => PathBuf::from(DEFAULT_STATE),
    }
}

/// Whether `path` is a named namespace's default record (teardown removes its directory too).
pub fn is_netns_default(path: &Path) -> bool {
    path.parent()
        .and_then(Path::parent)
        .is_some_and(|d| d == Path::new(NETNS_STATE_DIR))
}

/// The name under /run/netns of this process's network namespace, if it has one.
fn current_netns_name() -> Option<String> {
    let me = std::fs::metadata("/proc/self/ns/net").ok()?;
    std::fs::read_dir("/run/netns")
        .ok()?
        .filter_map(Result::ok)
        .find(|e| {
            std::fs::metadata(e.path()).is_ok_and(|m| m.ino() == me.ino() && m.dev() == me.dev())
        })
        .and_then(|e| e.file_name().into_string().ok())
}

/// Whether network namespace `ino` still exists: some process is in it or /run/netns names it.
/// A record of a namespace that is gone describes nothing left (its interfaces, addresses and
/// sysctls went with it).
pub fn netns_alive(ino: u64) -> bool {
    let named = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .any(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.ino() == ino));
    named
        || std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            })
            .any(|e| std::fs::metadata(e.path().join("ns/net")).is_ok_and(|m| m.ino() == ino))
}

/// Format version of the record.
const VERSION: u32 = 1;

/// What setup was asked for (normalised: sorted, deduplicated). A second setup with the same
/// request is idempotent; a different one is refused until teardown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// dr or tun.
    pub mode: Mode,
    /// The VIPs.
    pub vips: BTreeSet<IpAddr>,
    /// --iface as given (None: the default route's interface).
    pub iface: Option<String>,
    /// GUE ports (tun).
    pub gue_ports: BTreeSet<u16>,
    /// --local as given (None: the interface's addresses).
    pub locals: Option<BTreeSet<IpAddr>>,
    /// XDP attach mode (tun).
    pub xdp_mode: XdpMode,
}

/// A VIP setup wants on lo.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipRecord {
    /// The VIP.
    pub addr: IpAddr,
    /// Prefix length it is bound with.
    pub prefix: u8,
    /// Setup bound it (teardown removes it); false: it was there before (teardown keeps it).
    pub added: bool,
}

/// A sysctl setup wants at a value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysctlRecord {
    /// net.ipv4.conf.DEV.
    pub dev: String,
    /// The setting.
    pub name: String,
    /// The value setup wants.
    pub value: String,
    /// The value before setup changed it; None when it already had `value` (teardown keeps it).
    pub original: Option<String>,
}

impl SysctlRecord {
    /// The sysctl.
    pub fn sysctl(&self) -> Sysctl {
        Sysctl::new(&self.dev, &self.name)
    }
}

/// The decapsulator setup attached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecapRecord {
    /// The interface it is attached to.
    pub iface: String,
    /// Its index when attached.
    pub ifindex: u32,
    /// The program's id.
    pub prog_id: u32,
    /// How the kernel attached it.
    pub mode: AttachedMode,
    /// The local addresses it decapsulates for (resolved when --local was not given).
    pub locals: BTreeSet<IpAddr>,
}

/// Everything setup changed or relies on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Format version.
    pub version: u32,
    /// Inode of the network namespace setup ran in (a record is only valid there).
    pub netns: u64,
    /// What setup was asked for.
    pub request: Request,
    /// The interface (resolved).
    pub iface: String,
    /// VIPs on lo.
    pub vips: Vec<VipRecord>,
    /// Sysctls.
    pub sysctls: Vec<SysctlRecord>,
    /// The decapsulator (tun).
    pub decap: Option<DecapRecord>,
}

impl Record {
    /// An empty record for a new setup.
    pub fn new(netns: u64, request: Request, iface: String) -> Self {
        Self {
            version: VERSION,
            netns,
            request,
            iface,
            vips: Vec::new(),
            sysctls: Vec::new(),
            decap: None,
        }
    }
}

/// The network namespace this process runs in (inode of /proc/self/ns/net).
pub fn netns_id() -> Result<u64, RealServerError> {
    std::fs::metadata("/proc/self/ns/net")
        .map(|m| m.ino())
        .map_err(|source| RealServerError::State {
            path: "/proc/self/ns/net".into(),
            source,
        })
}

fn state_err(path: &Path) -> impl FnOnce(std::io::Error) -> RealServerError + '_ {
    move |source| RealServerError::State {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads the record; None when there is none.
pub fn load(path: &Path) -> Result<Option<Record>, RealServerError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(state_err(path)(e)),
    };
    let rec: Record =
        serde_json::from_str(&text).map_err(|source| RealServerError::StateFormat {
            path: path.to_path_buf(),
            source,
        })?;
    if rec.version != VERSION {
        return Err(RealServerError::StateVersion {
            path: path.to_path_buf(),
            version: rec.version,
        });
    }
    Ok(Some(rec))
}

/// Writes the record atomically (a crash leaves the old or the new one, never half of one).
pub fn save(path: &Path, rec: &Record) -> Result<(), RealServerError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(state_err(dir))?;
    }
    let tmp = tmp_path(path);
    let mut f = File::create(&tmp).map_err(state_err(&tmp))?;
    let text = serde_json::to_string_pretty(rec).expect("a record serialises");
    f.write_all(text.as_bytes())
        .and_then(|_| f.write_all(b"\n"))
        .and_then(|_| f.sync_all())
        .map_err(state_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(state_err(path))
}

/// Removes the record (teardown finished).
pub fn remove(path: &Path) -> Result<(), RealServerError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(state_err(path)(e)),
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// An exclusive lock on the directory that holds the record: one setup or teardown at a time,
/// and no lock file left behind.
pub struct StateLock {
    _dir: File,
}

impl StateLock {
    /// Takes the lock, or fails at once when another xvsadm holds it.
    pub fn acquire(path: &Path) -> Result<Self, RealServerError> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir).map_err(state_err(dir))?;
        let file = File::open(dir).map_err(state_err(dir))?;
        if !lb_core::flock::try_lock_exclusive(&file).unwrap_or(false) {
            return Err(RealServerError::Busy(dir.to_path_buf()));
        }
        Ok(Self { _dir: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        let request = Request {
            mode: Mode::Tun,
            vips: ["192.0.2.10".parse().unwrap()].into(),
            iface: None,
            gue_ports: [6080].into(),
            locals: None,
            xdp_mode: XdpMode::Auto,
        };
        let mut r = Record::new(4026531840, request, "eth0".into());
        r.sysctls.push(SysctlRecord {
            dev: "all".into(),
            name: "arp_ignore".into(),
            value: "1".into(),
            original: Some("0".into()),
        });
        r.decap = Some(DecapRecord {
            iface: "eth0".into(),
            ifindex: 2,
            prog_id: 42,
            mode: AttachedMode::Native,
            locals: ["198.51.100.2".parse().unwrap()].into(),
        });
        r
    }

    fn tmp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xvsdc-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_record_survives_a_round_trip_and_is_replaced_whole() {
        let dir = tmp_dir("roundtrip");
        let path = dir.join("sub/realserver.json");
        assert_eq!(load(&path).unwrap(), None, "no record yet");
        let mut rec = record();
        save(&path, &rec).unwrap();
        assert_eq!(load(&path).unwrap(), Some(rec.clone()));
        rec.vips.push(VipRecord {
            addr: "192.0.2.10".parse().unwrap(),
            prefix: 32,
            added: true,
        });
        save(&path, &rec).unwrap();
        assert_eq!(load(&path).unwrap(), Some(rec));
        assert!(!tmp_path(&path).exists(), "no temporary file left behind");
        remove(&path).unwrap();
        remove(&path).unwrap();
        assert_eq!(load(&path).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn foreign_or_future_records_are_refused() {
        let dir = tmp_dir("foreign");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("realserver.json");
        std::fs::write(&path, "{\"services\": []}").unwrap();
        assert!(matches!(
            load(&path),
            Err(RealServerError::StateFormat { .. })
        ));
        let mut v = serde_json::to_value(record()).unwrap();
        v["version"] = 2.into();
        std::fs::write(&path, v.to_string()).unwrap();
        assert!(matches!(
            load(&path),
            Err(RealServerError::StateVersion { version: 2, .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn one_setup_or_teardown_at_a_time() {
        let dir = tmp_dir("lock");
        let path = dir.join("realserver.json");
        let held = StateLock::acquire(&path).unwrap();
        assert!(matches!(
            StateLock::acquire(&path),
            Err(RealServerError::Busy(_))
        ));
        drop(held);
        StateLock::acquire(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
