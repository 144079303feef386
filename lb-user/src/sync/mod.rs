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
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use lb_core::sync::daemon::{Daemons, SyncStats};
use lb_core::sync::table::{TableStatus, TableWait};
pub use lb_core::sync::*;
use tokio::sync::{watch, Notify};

/// What the controller and the sync tasks share: the daemons that should run (the controller
/// writes, the supervisor follows), each one's counters (the tasks count, listings read), and
/// the wait for the peers' tables (lb_core::sync::table): the backup's receiver asks and
/// follows the answers, `xvsadm synced` reads.
#[derive(Clone)]
pub struct Hub {
    wanted: watch::Sender<Daemons>,
    stats: Arc<Mutex<BTreeMap<Role, SyncStats>>>,
    table: Arc<Mutex<Table>>,
    /// Wakes the receiver to send the current request now.
    ask: Arc<Notify>,
}

/// The wait for the peers' tables, and the sync interface's carrier changes it began at.
#[derive(Default)]
struct Table {
    wait: Option<TableWait>,
    /// The backup's interface and its carrier_changes count when the wait began.
    carrier: Option<(String, u64)>,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            wanted: watch::Sender::new(Daemons::default()),
            stats: Arc::default(),
            table: Arc::default(),
            ask: Arc::default(),
        }
    }
}

/// How many times interface `name`'s carrier changed (sysfs), or None when unknown.
pub fn carrier_changes(name: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/sys/class/net/{name}/carrier_changes"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether interface `name` has a carrier (sysfs), or None when unknown.
pub fn carrier(name: &str) -> Option<bool> {
    match std::fs::read_to_string(format!("/sys/class/net/{name}/carrier")) {
        Ok(s) => Some(s.trim() == "1"),
        // Reading it fails with EINVAL while the interface is administratively down.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Some(false),
        Err(_) => None,
    }
}

/// A nonce for a new table request: different from the last one, and from another director's
/// (their clocks and process ids differ).
fn nonce() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (t.subsec_nanos() ^ (t.as_secs() as u32).rotate_left(16)) ^ std::process::id().rotate_left(8)
}

impl Hub {
    /// Begins a new wait for the peers' tables (the backup on `ifn` starts, or its carrier
    /// came back): returns the request's nonce, which the caller sends.
    pub fn begin_wait(&self, ifn: &str) -> u32 {
        let n = nonce();
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        t.wait = Some(TableWait::start(n, Instant::now()));
        t.carrier = carrier_changes(ifn).map(|c| (ifn.to_string(), c));
        n
    }

    /// Whether the backup's interface lost or regained its carrier since the wait began (it
    /// may have missed sync messages): if so a new wait begins and its nonce is returned.
    pub fn rewait_after_carrier_change(&self) -> Option<u32> {
        let ifn = {
            let t = self.table.lock().unwrap_or_else(|e| e.into_inner());
            let (ifn, at) = t.carrier.as_ref()?;
            if carrier_changes(ifn) == Some(*at) {
                return None;
            }
            ifn.clone()
        };
        Some(self.begin_wait(&ifn))
    }

    /// The current request's nonce (0 before the first).
    pub fn table_nonce(&self) -> u32 {
        let t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        t.wait.as_ref().map_or(0, TableWait::nonce)
    }

    /// The request's nonce when it is due to go out again (and counts it as sent).
    pub fn resend_due(&self) -> Option<u32> {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let w = t.wait.as_mut()?;
        let now = Instant::now();
        if !w.resend_due(now) {
            return None;
        }
        w.resent(now);
        Some(w.nonce())
    }

    /// Counts entries received from `peer` for the wait.
    pub fn received(&self, peer: IpAddr, n: u64) {
        if let Some(w) = &mut self.table.lock().unwrap_or_else(|e| e.into_inner()).wait {
            w.received(peer, n);
        }
    }

    /// A peer's TableSent.
    pub fn answered(&self, peer: IpAddr, nonce: u32, entries: u32) {
        if let Some(w) = &mut self.table.lock().unwrap_or_else(|e| e.into_inner()).wait {
            w.answered(peer, nonce, entries, Instant::now());
        }
    }

    /// Where the wait stands (`xvsadm synced`). A carrier change of the backup's interface
    /// since the wait began starts a new one first, so a director whose link just came back
    /// never answers from before it; `request` starts one in any case.
    pub fn table_status(&self, request: bool) -> TableStatus {
        let running = self.wanted.borrow().backup.clone();
        let Some(backup) = running else {
            return TableStatus::NoBackup;
        };
        let begun = if request {
            Some(self.begin_wait(&backup.mcast_ifn))
        } else {
            self.rewait_after_carrier_change()
        };
        if begun.is_some() {
            self.ask.notify_one();
        }
        let t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        // Without a carrier nothing arrives: never held nor alone then, so a check made while
        // the link was down does not let keepalived take the VIP the moment it comes back.
        if carrier(&backup.mcast_ifn) == Some(false) {
            let since = t.wait.as_ref().map(|w| w.status(Instant::now()));
            let tries = match since {
                Some(TableStatus::Waiting { tries, .. }) | Some(TableStatus::Alone { tries }) => {
                    tries
                }
                _ => 0,
            };
            return TableStatus::Waiting { for_ms: 0, tries };
        }
        match &t.wait {
            Some(w) => w.status(Instant::now()),
            // The receiver has not begun (its socket is being made, or failed).
            None => TableStatus::Waiting {
                for_ms: 0,
                tries: 0,
            },
        }
    }

    /// The current request's nonce, when the receiver was asked to send it now.
    pub async fn asked(&self) -> Option<u32> {
        self.ask.notified().await;
        let t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        t.wait.as_ref().map(TableWait::nonce)
    }

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
