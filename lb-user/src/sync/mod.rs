//! Connection sync between directors, IPVS's way (ipvsadm `--start-daemon master|backup`):
//! the master publishes the connections its data plane records or changes (the SYNC_EVENTS
//! ring buffer: no table walks) as IPVS sync messages, version 1, to a multicast group; the
//! backup installs the ones it receives in its own connection table, so a connection keeps
//! its real server when it moves to another director. Nothing is authenticated: the sync
//! network must be private.
//!
//! The wire format and the daemons' settings are pure (`lb_core::sync`); here are the shell's
//! parts, one concern each: the [`Hub`] the controller and the tasks share, the multicast
//! sockets ([`socket`]), the master's [`sender`], the backup's [`receiver`] and what turns
//! an entry into a connection-table entry and back ([`installer`]).

pub mod installer;
pub mod receiver;
pub mod sender;
pub mod socket;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use lb_core::sync::daemon::{Daemons, SyncStats};
pub use lb_core::sync::*;
use tokio::sync::watch;

/// What the controller and the sync tasks share: the daemons that should run (the controller
/// writes, the supervisor follows) and each one's counters (the tasks count, listings read).
#[derive(Clone)]
pub struct Hub {
    wanted: watch::Sender<Daemons>,
    stats: Arc<Mutex<BTreeMap<Role, SyncStats>>>,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            wanted: watch::Sender::new(Daemons::default()),
            stats: Arc::default(),
        }
    }
}

impl Hub {
    /// Makes `daemons` the ones that should run; a daemon that stops loses its counters.
    pub fn publish(&self, daemons: &Daemons) {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats.retain(|role, _| daemons.get(*role).is_some());
        drop(stats);
        self.wanted.send_replace(daemons.clone());
    }

    /// Follows the daemons that should run.
    pub fn subscribe(&self) -> watch::Receiver<Daemons> {
        self.wanted.subscribe()
    }

    /// The counters of the daemon of `role`.
    pub fn stats(&self, role: Role) -> SyncStats {
        let stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats.get(&role).cloned().unwrap_or_default()
    }

    /// Updates the counters of the daemon of `role`.
    pub fn count(&self, role: Role, f: impl FnOnce(&mut SyncStats)) {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        f(stats.entry(role).or_default());
    }
}

/// The MTU of interface `name` in this network namespace, or None when it does not exist.
pub fn iface_mtu(name: &str) -> Option<u32> {
    ifindex(name)?;
    let mtu = std::fs::read_to_string(format!("/sys/class/net/{name}/mtu"))
        .ok()
        .and_then(|s| s.trim().parse().ok());
    // A /sys of another namespace (not remounted) may not list it: the usual MTU then.
    Some(mtu.unwrap_or(1500))
}

/// The index of interface `name`, or None when it does not exist.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated string for the duration of the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}
