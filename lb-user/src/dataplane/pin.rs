//! Pinning the data plane in bpffs so that it outlives xvsd, and finding it again.
//!
//! One directory per director (`--pin-dir`, default `/sys/fs/bpf/xvs/IFACE` after the first
//! `--iface`) holds the XDP link of that first interface (`link`), the program (`prog`) and
//! every map under its own name. A director on several interfaces (`--iface` repeated: two
//! arms) runs the same program and maps on each, through one link per further interface,
//! pinned as `link-IFACE` beside the first: a single-interface install keeps its layout, and
//! adding or removing an arm never renames a pin. While the link is pinned the
//! program stays attached and keeps forwarding with the last tables, whatever happens to xvsd;
//! a new xvsd adopts the maps and swaps its program in on the same link (bpf_link_update), so
//! the interface is never without a director. Only `xvsd --cleanup` detaches.
//!
//! A pin lives as long as the bpffs instance holding it. `ip netns exec` gives its command a
//! fresh /sys, so a bpffs that xvsd mounts on /sys/fs/bpf there belongs to that command's
//! private mount namespace and dies with it: xvsd warns when it has to mount bpffs in a private
//! mount namespace. The remedy is a bpffs mounted in the host namespace (/sys/fs/bpf as systemd
//! mounts it, or any directory: `mount -t bpf bpf DIR`) and `--pin-dir` on it; mounts made
//! before `ip netns exec` stay visible inside it.

use std::{
    fs::File,
    io,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
};

use aya_obj::generated::{bpf_link_info, bpf_link_type};
use thiserror::Error;
use tracing::{info, warn};

/// Pin of the XDP link inside the pin directory.
pub const LINK_PIN: &str = "link";
/// Prefix of the pins of the links on the further interfaces (`link-IFACE`).
pub const MORE_LINK_PREFIX: &str = "link-";
/// Pin of the director program inside the pin directory.
pub const PROG_PIN: &str = "prog";
/// Where bpffs is conventionally mounted.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_DETACH: libc::c_long = 34;

/// The default pin directory of an interface: `/sys/fs/bpf/xvs/IFACE` in the host's network
/// namespace, `/sys/fs/bpf/xvs/netns/NAME/IFACE` in another (see [`crate::netns`]).
pub fn default_dir(iface: &str) -> PathBuf {
    crate::netns::default_path(&format!("{BPFFS_ROOT}/xvs"), iface)
}

/// Name of the pin of the link on `iface`: `link` for the first interface (the layout of a
/// single-interface director), `link-IFACE` for every other.
pub fn link_pin_name(first: bool, iface: &str) -> String {
    if first {
        LINK_PIN.to_string()
    } else {
        format!("{MORE_LINK_PREFIX}{iface}")
    }
}

/// The interface a further link's pin is named after (`link-IFACE`), None for any other pin.
pub fn more_link_iface(pin: &str) -> Option<&str> {
    pin.strip_prefix(MORE_LINK_PREFIX).filter(|i| !i.is_empty())
}

/// The interface the link pinned as `pin` belongs to, in the pin directory of the director
/// whose first interface is `first`.
pub fn link_iface<'a>(pin: &'a str, first: &'a str) -> &'a str {
    more_link_iface(pin).unwrap_or(first)
}

/// Whether a pin is an XDP link (`link` or `link-IFACE`).
fn is_link_pin(pin: &str) -> bool {
    pin == LINK_PIN || more_link_iface(pin).is_some()
}

/// What a start does with the links on the further interfaces: the ones pinned by the previous
/// xvsd against the ones on the command line now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkPlan {
    /// Pinned and still wanted: this build's program is swapped in on the link.
    pub keep: Vec<String>,
    /// Wanted and not pinned: attached and pinned anew.
    pub attach: Vec<String>,
    /// Pinned and no longer wanted: detached and unpinned.
    pub detach: Vec<String>,
}

/// Plans the further links of a start (pure): `pinned` are the interfaces with a `link-IFACE`
/// pin, `wanted` the further interfaces on the command line (in its order).
pub fn plan_links(pinned: &[String], wanted: &[String]) -> LinkPlan {
    let mut plan = LinkPlan::default();
    for w in wanted {
        if pinned.contains(w) {
            plan.keep.push(w.clone());
        } else {
            plan.attach.push(w.clone());
        }
    }
    plan.detach = pinned
        .iter()
        .filter(|p| !wanted.contains(p))
        .cloned()
        .collect();
    plan
}

/// Errors of the pin directory.
#[derive(Debug, Error)]
pub enum PinError {
    /// A file-system operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The pin directory is not on bpffs and xvsd does not mount one there.
    #[error(
        "{0} is not on a bpf filesystem: mount one (mount -t bpf bpf DIR) and choose --pin-dir under it"
    )]
    NotBpffs(PathBuf),
    /// Another xvsd (or `xvsd --cleanup`) holds the directory.
    #[error("{0} is in use by a running xvsd: stop it first")]
    Busy(PathBuf),
    /// The pinned link is attached to another interface.
    #[error(
        "the XDP link pinned in {dir} is attached to interface index {found}, not {iface} (index {expected}): choose another --pin-dir"
    )]
    OtherInterface {
        /// The pin directory.
        dir: PathBuf,
        /// The interface xvsd was asked to serve.
        iface: String,
        /// Its index.
        expected: u32,
        /// The index the link is attached to.
        found: u32,
    },
    /// A BPF system call on a pinned object failed.
    #[error("{call} on {path}: {source}")]
    Bpf {
        /// The command.
        call: &'static str,
        /// The pin.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> PinError {
    let path = path.to_path_buf();
    move |source| PinError::Io { what, path, source }
}

/// What the pinned link says about the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// No link is pinned.
    Absent,
    /// Pinned, but attached to nothing any more (its interface went away).
    Detached,
    /// Attached to the interface with this index.
    Attached {
        /// Interface index.
        ifindex: u32,
        /// Id of the program running on it.
        prog_id: u32,
        /// Id of the link.
        link_id: u32,
    },
}

/// An opened, locked pin directory. The lock (flock on the directory) is held as long as this
/// value lives, so two daemons never drive one data plane, and `--cleanup` cannot pull it away
/// from a running one.
#[derive(Debug)]
pub struct PinDir {
    path: PathBuf,
    _lock: File,
}

impl PinDir {
    /// Opens `path`, creating it (and mounting bpffs on /sys/fs/bpf when the path lies under it
    /// and nothing is mounted there yet), and locks it.
    pub fn create(path: &Path) -> Result<PinDir, PinError> {
        ensure_bpffs(path)?;
        std::fs::create_dir_all(path).map_err(io_err("creating", path))?;
        Self::lock(path)
    }

    /// Opens an existing pin directory and locks it (None when it does not exist).
    pub fn open_existing(path: &Path) -> Result<Option<PinDir>, PinError> {
        if !path.exists() {
            return Ok(None);
        }
        if !on_bpffs(path)? {
            return Err(PinError::NotBpffs(path.to_path_buf()));
        }
        Self::lock(path).map(Some)
    }

    fn lock(path: &Path) -> Result<PinDir, PinError> {
        let file = File::open(path).map_err(io_err("opening", path))?;
        if !lb_core::flock::try_lock_exclusive(&file).map_err(io_err("locking", path))? {
            return Err(PinError::Busy(path.to_path_buf()));
        }
        Ok(PinDir {
            path: path.to_path_buf(),
            _lock: file,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where a map is pinned.
    pub fn map(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Where the XDP link is pinned.
    pub fn link(&self) -> PathBuf {
        self.path.join(LINK_PIN)
    }

    /// Where the link named `pin` (see [`link_pin_name`]) is pinned.
    pub fn link_named(&self, pin: &str) -> PathBuf {
        self.path.join(pin)
    }

    /// Where the program is pinned.
    pub fn prog(&self) -> PathBuf {
        self.path.join(PROG_PIN)
    }

    /// The further interfaces with a link pinned here (`link-IFACE`), sorted.
    pub fn more_links(&self) -> Result<Vec<String>, PinError> {
        Ok(self
            .entries()?
            .iter()
            .filter_map(|n| more_link_iface(n).map(str::to_string))
            .collect())
    }

    /// Names of everything pinned here.
    pub fn entries(&self) -> Result<Vec<String>, PinError> {
        let mut names: Vec<String> = std::fs::read_dir(&self.path)
            .map_err(io_err("listing", &self.path))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(names)
    }

    /// What the pinned link of the first interface is attached to.
    pub fn link_state(&self) -> Result<LinkState, PinError> {
        self.link_state_of(LINK_PIN)
    }

    /// What the link pinned as `pin` is attached to.
    pub fn link_state_of(&self, pin: &str) -> Result<LinkState, PinError> {
        let path = self.link_named(pin);
        if !path.exists() {
            return Ok(LinkState::Absent);
        }
        let fd = obj_get(&path)?;
        let info = link_info(fd.as_fd()).map_err(|source| PinError::Bpf {
            call: "BPF_OBJ_GET_INFO_BY_FD",
            path: path.clone(),
            source,
        })?;
        if info.type_ != bpf_link_type::BPF_LINK_TYPE_XDP as u32 {
            return Err(PinError::Bpf {
                call: "BPF_OBJ_GET_INFO_BY_FD",
                path,
                source: io::Error::other(format!("not an XDP link (type {})", info.type_)),
            });
        }
        // SAFETY: the kernel filled the xdp member for an XDP link.
        let ifindex = unsafe { info.__bindgen_anon_1.xdp.ifindex };
        Ok(if ifindex == 0 {
            LinkState::Detached
        } else {
            LinkState::Attached {
                ifindex,
                prog_id: info.prog_id,
                link_id: info.id,
            }
        })
    }

    /// Detaches the pinned link of the first interface at once, whoever else holds it open
    /// (BPF_LINK_DETACH). Nothing happens when no link is pinned.
    pub fn detach_link(&self) -> Result<bool, PinError> {
        self.detach_link_of(LINK_PIN)
    }

    /// Detaches the link pinned as `pin` (see [`PinDir::detach_link`]).
    pub fn detach_link_of(&self, pin: &str) -> Result<bool, PinError> {
        let path = self.link_named(pin);
        if !path.exists() {
            return Ok(false);
        }
        let fd = obj_get(&path)?;
        link_detach(fd.as_fd()).map_err(|source| PinError::Bpf {
            call: "BPF_LINK_DETACH",
            path,
            source,
        })?;
        Ok(true)
    }

    /// Detaches every link pinned here that is still attached; returns their pin names.
    pub fn detach_links(&self) -> Result<Vec<String>, PinError> {
        let mut detached = Vec::new();
        for n in self.entries()?.into_iter().filter(|n| is_link_pin(n)) {
            if matches!(self.link_state_of(&n)?, LinkState::Attached { .. })
                && self.detach_link_of(&n)?
            {
                detached.push(n);
            }
        }
        Ok(detached)
    }

    /// Removes every pin in the directory, the links' last. Links still attached are detached
    /// first: removing the last reference to a link releases it only later (the kernel defers
    /// it), and a fresh attachment to the same interface in the meantime would find it busy.
    /// Returns the names removed.
    pub fn clear(&self) -> Result<Vec<String>, PinError> {
        self.detach_links()?;
        let mut names = self.entries()?;
        // The links last: until then the old program keeps its maps.
        names.sort_by_key(|n| is_link_pin(n));
        for n in &names {
            let p = self.path.join(n);
            std::fs::remove_file(&p).map_err(io_err("removing", &p))?;
        }
        Ok(names)
    }
}

fn bpf(cmd: libc::c_long, attr: &mut [u8]) -> io::Result<()> {
    // SAFETY: `attr` is a properly sized, initialised bpf_attr prefix for `cmd`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            attr.len() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// BPF_OBJ_GET: a descriptor of a pinned object.
fn obj_get(path: &Path) -> Result<OwnedFd, PinError> {
    let err = |source| PinError::Bpf {
        call: "BPF_OBJ_GET",
        path: path.to_path_buf(),
        source,
    };
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| err(io::Error::other(e)))?;
    // union bpf_attr's obj member: pathname u64, bpf_fd u32, file_flags u32.
    let mut attr = [0u8; 16];
    attr[0..8].copy_from_slice(&(c.as_ptr() as u64).to_ne_bytes());
    // SAFETY: `attr` is a valid bpf_attr prefix for BPF_OBJ_GET; `c` outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            attr.as_mut_ptr(),
            attr.len() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    // SAFETY: the kernel returned a new descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) })
}

/// BPF_OBJ_GET_INFO_BY_FD on a link.
fn link_info(fd: BorrowedFd<'_>) -> io::Result<bpf_link_info> {
    // SAFETY: bpf_link_info is plain old data; all-zero is a valid value.
    let mut info: bpf_link_info = unsafe { std::mem::zeroed() };
    // union bpf_attr's info member: bpf_fd u32, info_len u32, info u64.
    let mut attr = [0u8; 16];
    attr[0..4].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(size_of::<bpf_link_info>() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(&mut info as *mut bpf_link_info as u64).to_ne_bytes());
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info)
}

/// BPF_LINK_DETACH: the link stops being attached, though it still exists.
fn link_detach(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = [0u8; 4];
    attr.copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    bpf(BPF_LINK_DETACH, &mut attr)
}

/// Whether `path` (or its nearest existing ancestor) is on bpffs.
fn on_bpffs(path: &Path) -> Result<bool, PinError> {
    let mut p = path;
    while !p.exists() {
        match p.parent() {
            Some(parent) => p = parent,
            None => return Ok(false),
        }
    }
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|e| io_err("checking", p)(io::Error::other(e)))?;
    // SAFETY: statfs into a zeroed struct with a valid path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid struct for statfs to fill.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io_err("checking", p)(io::Error::last_os_error()));
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Makes sure `path` will be on bpffs: mounts bpffs on /sys/fs/bpf when the path lies under it
/// and nothing is mounted there yet.
fn ensure_bpffs(path: &Path) -> Result<(), PinError> {
    if on_bpffs(path)? {
        return Ok(());
    }
    let root = Path::new(BPFFS_ROOT);
    if !path.starts_with(root) || on_bpffs(root)? {
        return Err(PinError::NotBpffs(path.to_path_buf()));
    }
    let target = std::ffi::CString::new(BPFFS_ROOT).expect("no NUL");
    let fstype = std::ffi::CString::new("bpf").expect("no NUL");
    let opts = std::ffi::CString::new("mode=0700").expect("no NUL");
    // SAFETY: valid NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            opts.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io_err("mounting bpffs on", root)(io::Error::last_os_error()));
    }
    if private_mount_namespace() {
        warn!(
            "mounted bpffs on {BPFFS_ROOT} inside a private mount namespace (ip netns exec?): the pins \
             vanish with it, so the data plane will not outlive xvsd; mount bpffs in the host \
             namespace and pass --pin-dir under it"
        );
    } else {
        info!("mounted bpffs on {BPFFS_ROOT}");
    }
    Ok(())
}

/// Whether this process sees another mount namespace than PID 1 (unknown counts as no).
fn private_mount_namespace() -> bool {
    match (
        std::fs::metadata("/proc/self/ns/mnt"),
        std::fs::metadata("/proc/1/ns/mnt"),
    ) {
        (Ok(a), Ok(b)) => a.ino() != b.ino() || a.dev() != b.dev(),
        _ => false,
    }
}

/// What `xvsd --cleanup` did.
#[derive(Debug, Default)]
pub struct Cleanup {
    /// Pins of the links that were attached and are now detached (`link`, `link-IFACE`).
    pub detached: Vec<String>,
    /// Pins removed.
    pub removed: Vec<String>,
}

/// Detaches the pinned director and removes every pin and the directory. Refuses while a
/// daemon holds the directory.
pub fn cleanup(path: &Path) -> Result<Cleanup, PinError> {
    let Some(dir) = PinDir::open_existing(path)? else {
        return Ok(Cleanup::default());
    };
    let detached = dir.detach_links()?;
    let removed = dir.clear()?;
    std::fs::remove_dir(path).map_err(io_err("removing", path))?;
    Ok(Cleanup { detached, removed })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_first_interface_keeps_the_single_interface_layout() {
        assert_eq!(link_pin_name(true, "eth0"), "link");
        assert_eq!(link_pin_name(false, "eth1"), "link-eth1");
        assert_eq!(more_link_iface("link-eth1"), Some("eth1"));
        assert_eq!(more_link_iface("link-"), None);
        for pin in ["link", "prog", "XVS_CONNS", "linketh1"] {
            assert_eq!(more_link_iface(pin), None, "{pin}");
        }
        assert!(is_link_pin("link") && is_link_pin("link-eth1"));
        assert_eq!(link_iface("link", "eth0"), "eth0");
        assert_eq!(link_iface("link-eth1", "eth0"), "eth1");
        assert!(!is_link_pin("prog") && !is_link_pin("XVS_CONNS"));
    }

    #[test]
    fn a_restart_keeps_attaches_and_detaches_the_further_links() {
        let plan = plan_links(&names(&["eth1", "eth2"]), &names(&["eth3", "eth1"]));
        assert_eq!(
            plan,
            LinkPlan {
                keep: names(&["eth1"]),
                attach: names(&["eth3"]),
                detach: names(&["eth2"]),
            }
        );
        // One interface again: every further link goes.
        assert_eq!(
            plan_links(&names(&["eth1"]), &[]),
            LinkPlan {
                detach: names(&["eth1"]),
                ..LinkPlan::default()
            }
        );
        // A fresh start attaches all of them.
        assert_eq!(
            plan_links(&[], &names(&["eth1", "eth2"])).attach,
            names(&["eth1", "eth2"])
        );
        assert_eq!(plan_links(&[], &[]), LinkPlan::default());
    }
}
