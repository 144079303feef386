//! xvsd: owns the data plane and the desired configuration, serves the control socket, and keeps
//! real servers' MAC addresses current.
//!
//! The [`Controller`] (the configuration and the data plane it is pushed to) and the handling of
//! a request ([`request`]) are plain functions, tested with an in-memory data plane; this module
//! is the shell around them: the socket, signals, timers, neighbour resolution.

mod controller;
pub mod request;
#[cfg(test)]
mod tests;

pub use controller::{fmt_mac, Controller, ControllerError};
use request::{error, with_warnings};
pub use request::{parse_request, Answer};

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use thiserror::Error;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, UnixListener, UnixStream},
    signal::unix::{signal, SignalKind},
    sync::Mutex,
};
use tracing::{debug, info, warn};

use crate::{
    access::SocketAccess,
    announce::Announcer,
    config_file,
    dataplane::{
        adopt::{PinnedStart, Start},
        AttachMode, Dataplane, DataplaneError, Sizes,
    },
    diff::Diff,
    estimator, metrics,
    neighbor::{self, Neighbors},
    proto::{Response, MAX_REQUEST_BYTES},
    state::{DesiredState, StateFile},
};

/// How long a change waits for a new real server's MAC before answering.
const RESOLVE_WAIT: Duration = Duration::from_millis(1500);
/// How often the announcement table is checked against what it should hold (a change is
/// applied at once; this repairs what changed behind xvsd's back).
const ANNOUNCE_PERIOD: Duration = Duration::from_secs(1);
/// How often unresolved real servers are retried.
const RESOLVE_PERIOD: Duration = Duration::from_secs(1);
/// How often every real server is re-probed, so a changed MAC is noticed.
const REFRESH_PERIOD: Duration = Duration::from_secs(30);
/// How often the connection-table sweep takes its next slice (and the load-aware tables are
/// recomputed; they are also refreshed from the live counts every `dataplane::PLAN_PERIOD`).
pub const RECOMPUTE_PERIOD: Duration = Duration::from_secs(1);
/// A client that has not sent its whole request by then is dropped (each connection has its
/// own deadline, so a silent or slow client holds up nobody else).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that does not read its answer within this is dropped.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors that stop the daemon.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// The data plane could not be set up.
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    /// The interface does not exist.
    #[error("interface {0} not found")]
    NoInterface(String),
    /// Socket or signal setup failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Netlink setup failed.
    #[error(transparent)]
    Neighbor(#[from] neighbor::NeighborError),
    /// A bad setting.
    #[error("{0}")]
    Config(String),
    /// The controller refused a setting.
    #[error(transparent)]
    Controller(#[from] ControllerError),
    /// The socket group could not be set up.
    #[error(transparent)]
    Access(#[from] crate::access::AccessError),
    /// The saved state could not be read, reset or written.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// The configuration file (`--config`) is unreadable or invalid.
    #[error(transparent)]
    ConfigFile(#[from] config_file::LoadError),
    /// The configuration to start with (file or saved state) was refused.
    #[error("{what}: {message}")]
    Restore {
        /// Where it came from.
        what: String,
        /// Why it was refused.
        message: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// Daemon settings.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    /// Interface the director is attached to; it names the director (its default pin
    /// directory and its state file).
    pub iface: String,
    /// Further interfaces the same director is attached to (`--iface` repeated: two arms).
    pub more_ifaces: Vec<String>,
    /// Native or generic XDP.
    pub mode: AttachMode,
    /// Control socket path.
    pub socket: PathBuf,
    /// Map sizes.
    pub conn_table_size: u32,
    /// NAT_REPLIES' entries (None: as many as the connection table).
    pub nat_table_size: Option<u32>,
    /// Scheduler slots.
    pub sched_slots: u32,
    /// Table tunables.
    pub params: crate::scheduler::Params,
    /// Where the link, program and maps are pinned (see `dataplane::pin`).
    pub pin_dir: PathBuf,
    /// Replace an incompatible pinned data plane instead of refusing to start.
    pub force_reload: bool,
    /// Serve Prometheus metrics on this address.
    pub metrics: Option<SocketAddr>,
    /// Outer source addresses of tunnelled packets (at most one per family; the FIB chooses for
    /// a family left out).
    pub tun_src: Vec<IpAddr>,
    /// Who may use the control socket.
    pub access: SocketAccess,
    /// Where the configuration is saved after every change (`STATE_DIR/IFACE.json`); None keeps
    /// nothing.
    pub state_dir: Option<PathBuf>,
    /// Forget the saved state at start.
    pub reset_state: bool,
    /// Configuration file: the configuration at start, re-read on SIGHUP and `xvsadm reload`.
    pub config: Option<PathBuf>,
    /// Log each new FULLNAT connection (client, local address and port, real server).
    pub audit_fullnat: bool,
    /// What the XDP programs log (`--kernel-log`).
    pub kernel_log: crate::kernel_log::KernelLog,
    /// The routing table the VIPs are announced through (`--announce-table`), if any.
    pub announce_table: Option<u32>,
}

struct Shared {
    controller: Mutex<Controller>,
    neighbors: Neighbors,
    start: Start,
    started: Instant,
    access: SocketAccess,
    /// `--config`, re-read by SIGHUP and `xvsadm reload`.
    config_file: Option<PathBuf>,
}

/// The configuration xvsd starts with, and where it comes from: with `--config`, the file
/// (the saved state is rewritten from it); without, the saved state; else nothing. Read before
/// anything is attached, so an invalid file or state stops xvsd with nothing changed.
fn initial_state(
    opts: &DaemonOptions,
    state: Option<&StateFile>,
) -> Result<Option<(DesiredState, String)>, DaemonError> {
    if let Some(path) = &opts.config {
        let desired = config_file::load(path)?;
        return Ok(Some((desired, path.display().to_string())));
    }
    let Some(state) = state else {
        return Ok(None);
    };
    Ok(state
        .load()?
        .map(|desired| (desired, state.path().display().to_string())))
}

impl Shared {
    /// The metrics exposition.
    async fn scrape(&self) -> Result<String, String> {
        let mut c = self.controller.lock().await;
        let listing = c.listing().map_err(|e| e.to_string())?;
        Ok(metrics::render(&metrics::Snapshot {
            listing: &listing,
            activity: c.dataplane().activity(),
            start: self.start.name(),
            adoption_pending: c.dataplane().adoption_pending(),
            uptime: self.started.elapsed(),
        }))
    }
}

/// Runs xvsd until SIGINT or SIGTERM. The director stays attached and pinned when xvsd exits
/// (a new xvsd adopts it); `dataplane::pin::cleanup` detaches it.
pub async fn run(opts: DaemonOptions) -> Result<(), DaemonError> {
    let started = Instant::now();
    let ifindex = ifindex(&opts.iface)?;
    let more_ifaces = opts
        .more_ifaces
        .iter()
        .map(|i| Ok((i.clone(), self::ifindex(i)?)))
        .collect::<Result<Vec<_>, DaemonError>>()?;
    let ifaces = std::iter::once(opts.iface.as_str())
        .chain(opts.more_ifaces.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(", ");
    let attached: Vec<(String, u32)> = std::iter::once((opts.iface.clone(), ifindex))
        .chain(more_ifaces.iter().cloned())
        .collect();
    let state_file = opts
        .state_dir
        .as_ref()
        .map(|dir| StateFile::for_iface(dir, &opts.iface));
    // Held while xvsd runs: a second xvsd on the same state file is refused before it reads it.
    let _state_lock = state_file.as_ref().map(StateFile::lock).transpose()?;
    if let (true, Some(f)) = (opts.reset_state, &state_file) {
        f.remove()?;
        info!(state = %f.path().display(), "saved state reset");
    }
    let initial = initial_state(&opts, state_file.as_ref())?;
    // The sync daemons are not part of a configuration file: they come from the state file,
    // also with --config.
    let sync_daemons = match &state_file {
        Some(f) => f.load_all()?.map(|s| s.sync_daemons).unwrap_or_default(),
        None => Default::default(),
    };
    let (mut dataplane, start) = Dataplane::start_pinned(&PinnedStart {
        iface: opts.iface.clone(),
        ifindex,
        more_ifaces,
        mode: opts.mode,
        sizes: Sizes {
            conns: opts.conn_table_size,
            sched_slots: opts.sched_slots,
            nat_replies: opts.nat_table_size,
        },
        dir: opts.pin_dir.clone(),
        force_reload: opts.force_reload,
        kernel_log: opts.kernel_log,
    })?;
    if opts.audit_fullnat {
        if let Some(ring) = dataplane.take_audit() {
            crate::audit::spawn(ring);
            info!(
                target = crate::audit::TARGET,
                "each new FULLNAT connection is logged (--audit-fullnat)"
            );
        }
    }
    if let Some(logger) = dataplane.take_kernel_logger() {
        crate::kernel_log::spawn(logger);
        info!(level = ?opts.kernel_log, target = crate::kernel_log::TARGET, "the data plane logs (--kernel-log)");
    }
    dataplane.set_params(opts.params);
    let sync_events = dataplane.take_sync_events();
    let pins = opts.pin_dir.display();
    match &start {
        Start::Fresh => {
            info!(ifaces, mode = ?opts.mode, pins = %pins, "director attached and pinned");
        }
        Start::Adopted {
            services,
            backends,
            previous_program,
        } => info!(
            ifaces, pins = %pins, services, backends, previous_program,
            "adopted the pinned data plane: this build's program replaced the previous one on its \
             link; the last tables keep forwarding until the configuration is synced"
        ),
        Start::Reloaded { reasons } => warn!(
            ifaces, mode = ?opts.mode, pins = %pins, why = %reasons.join("; "),
            "reloaded: the incompatible data plane was replaced by a fresh one"
        ),
    }
    let mut controller = Controller::new(dataplane, &opts.iface).also_on(&opts.more_ifaces);
    controller.set_tunnel_sources(&opts.tun_src)?;
    controller.set_audit_fullnat(opts.audit_fullnat)?;
    if let Some(table) = opts.announce_table {
        controller.announce_through(table);
    }
    // Resumed as saved (CONFIG's sync flag follows, also clearing an adopted one).
    for d in sync_daemons.iter() {
        info!(role = ?d.role, mcast_ifn = %d.mcast_ifn, syncid = d.syncid, "sync daemon resumed");
    }
    controller.set_sync_daemons(sync_daemons, false)?;
    if let Some(f) = state_file {
        controller = controller.with_state(f);
    }
    // The saved state (or the file) is the first configuration: after an adoption, it is the
    // sync that takes the pinned tables over, keeping what did not change.
    if let Some((desired, from)) = initial {
        let restore = |e: ControllerError| DaemonError::Restore {
            what: from.clone(),
            message: e.to_string(),
        };
        controller.apply_desired(&desired, false).map_err(restore)?;
        if opts.config.is_some() {
            // The file is the truth at start: the state says so too, even when the file
            // matched the (empty) starting point and nothing was applied.
            controller
                .save_state()
                .map_err(|e| restore(ControllerError::Save(e)))?;
        }
        info!(
            from,
            services = desired.config.services().len(),
            "configuration loaded"
        );
    }
    let shared = Arc::new(Shared {
        controller: Mutex::new(controller),
        neighbors: Neighbors::new(ifindex)?,
        start,
        started,
        access: opts.access.clone(),
        config_file: opts.config.clone(),
    });
    let sync_tasks = spawn_sync(&shared, sync_events).await;
    // Health changes reach the tables as soon as a check decides (coalesced: one push for
    // everything that changed meanwhile).
    let health_task = {
        let shared = shared.clone();
        let changed = shared.controller.lock().await.health_changed();
        tokio::spawn(async move {
            loop {
                changed.notified().await;
                if let Err(e) = shared.controller.lock().await.apply_health() {
                    warn!(error = %e, "pushing health changes to the data plane failed; retried every second");
                }
            }
        })
    };
    let announce_task = match opts.announce_table {
        Some(table) => {
            let announcer =
                Announcer::new(table).map_err(|e| DaemonError::Config(e.to_string()))?;
            info!(
                table,
                "announcing the VIPs whose services have their quorum"
            );
            Some(tokio::spawn(announce_loop(shared.clone(), announcer)))
        }
        None => None,
    };
    // The attached interfaces' station addresses are in LINK_MACS before the socket is ready,
    // and followed as links change (a VLAN or keepalived's macvlan added later).
    let station_task = {
        let links = crate::station::Links::new().map_err(io_err("netlink socket for links"))?;
        let mut station = Station::new(attached);
        station.step(&shared, &links).await;
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(STATION_PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                station.step(&shared, &links).await;
            }
        })
    };
    let listener = bind_socket(&opts.socket, &opts.access)?;
    info!(socket = %opts.socket.display(), group = ?opts.access.gid(), "control socket ready");
    let metrics_task = match opts.metrics {
        Some(addr) => {
            let tcp = TcpListener::bind(addr)
                .await
                .map_err(io_err(format!("binding the metrics endpoint {addr}")))?;
            info!(%addr, "metrics endpoint ready: GET /metrics");
            let shared = shared.clone();
            Some(tokio::spawn(metrics::serve(tcp, move || {
                let shared = shared.clone();
                async move { shared.scrape().await }
            })))
        }
        None => None,
    };

    let mut sigint = signal(SignalKind::interrupt()).map_err(io_err("SIGINT handler"))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(io_err("SIGTERM handler"))?;
    let mut sighup = signal(SignalKind::hangup()).map_err(io_err("SIGHUP handler"))?;
    let mut resolve_tick = tokio::time::interval(RESOLVE_PERIOD);
    let mut recompute_tick = tokio::time::interval(RECOMPUTE_PERIOD);
    recompute_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut estimate_tick = tokio::time::interval(estimator::PERIOD);
    estimate_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut plan_tick = tokio::time::interval(crate::dataplane::PLAN_PERIOD);
    plan_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_refresh = Instant::now();
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => match reload(&shared, false).await {
                Ok((d, warnings)) => {
                    for line in &d.lines {
                        info!(rule = %line, "reload");
                    }
                    for w in &warnings {
                        warn!(warning = %w, "reload");
                    }
                    info!(changes = d.lines.len(), "SIGHUP: configuration file reloaded");
                }
                Err(e) => warn!(error = %e, "SIGHUP: reload refused, the running configuration is unchanged"),
            },
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let shared = shared.clone();
                    tokio::spawn(async move { serve_client(stream, shared).await });
                }
                Err(e) => warn!(error = %e, "accept failed"),
            },
            _ = recompute_tick.tick() => {
                let started = Instant::now();
                let mut c = shared.controller.lock().await;
                // A push of health changes that failed is retried here.
                if let Err(e) = c.apply_health() {
                    warn!(error = %e, "pushing health changes to the data plane failed");
                }
                match c.recompute() {
                    Ok(n) => debug!(published = n, took_us = started.elapsed().as_micros() as u64, "recomputed load-aware tables"),
                    Err(e) => warn!(error = %e, "recomputing load-aware tables failed"),
                }
                match c.fullnat_refusals() {
                    Ok(refusals) => {
                        for r in refusals {
                            warn!(service = %r.service, pool = %r.pool, refused = r.refused, "FULLNAT local ports exhausted: new connections refused (drop_fullnat_no_port); add local addresses or widen their port ranges");
                        }
                    }
                    Err(e) => warn!(error = %e, "reading FULLNAT refusals failed"),
                }
            }
            _ = plan_tick.tick() => {
                if let Err(e) = shared.controller.lock().await.refresh_plans() {
                    warn!(error = %e, "refreshing load-aware tables from live counts failed");
                }
            }
            _ = estimate_tick.tick() => {
                let mut c = shared.controller.lock().await;
                if let Err(e) = c.estimate() {
                    warn!(error = %e, "sampling counters for rate estimates failed");
                }
                match c.pressure(shared.started.elapsed()) {
                    Ok(Some(w)) => warn!(
                        live = w.live,
                        entries = w.entries,
                        capacity = w.capacity,
                        fill_percent = w.fill_percent,
                        new_per_s = w.new_per_s,
                        midflow_miss_per_s = w.midflow_miss_per_s,
                        fill_age_s = w.fill_age.map(|a| a.as_secs()),
                        "connection table under pressure: connections may be lost to eviction and moved to another real server (conn_midflow_miss); a larger --conn-table-size, or a flood to look at"
                    ),
                    Ok(None) => {}
                    Err(e) => warn!(error = %e, "sampling the connection table's pressure failed"),
                }
            }
            _ = resolve_tick.tick() => {
                let refresh = last_refresh.elapsed() >= REFRESH_PERIOD;
                if refresh {
                    last_refresh = Instant::now();
                }
                resolve_round(&shared, refresh).await;
            }
        }
    }
    info!(
        pins = %opts.pin_dir.display(),
        "shutting down: the director stays attached with its last tables (xvsd --cleanup --iface {} detaches it)",
        opts.iface
    );
    if let Some(t) = metrics_task {
        t.abort();
    }
    health_task.abort();
    station_task.abort();
    if let Some(t) = announce_task {
        // The routes stay: the pinned data plane goes on forwarding, so the director goes on
        // being announced (xvsd --cleanup --announce-table N withdraws them).
        t.abort();
    }
    for t in sync_tasks {
        t.abort();
    }
    let _ = std::fs::remove_file(&opts.socket);
    drop(shared);
    Ok(())
}

/// How often the attached interfaces' station addresses are read again.
const STATION_PERIOD: Duration = Duration::from_secs(1);

/// The station addresses as last written to LINK_MACS (lb_core::station).
struct Station {
    attached: Vec<(String, u32)>,
    last: Option<std::collections::BTreeMap<u32, Vec<[u8; 6]>>>,
}

impl Station {
    fn new(attached: Vec<(String, u32)>) -> Self {
        Self {
            attached,
            last: None,
        }
    }

    /// Reads the links and, when the attached interfaces' addresses changed, writes the new
    /// plan and says so.
    async fn step(&mut self, shared: &Shared, links: &crate::station::Links) {
        let records = match links.dump().await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "reading the interfaces' MAC addresses failed; retried every second");
                return;
            }
        };
        let ifindexes: Vec<u32> = self.attached.iter().map(|(_, i)| *i).collect();
        let addresses = crate::station::addresses(&records, &ifindexes);
        if self.last.as_ref() == Some(&addresses) {
            return;
        }
        let plan = crate::station::plan(&addresses);
        let name = |ifindex: u32| {
            self.attached
                .iter()
                .find(|(_, i)| *i == ifindex)
                .map_or(String::new(), |(n, _)| n.clone())
        };
        match shared
            .controller
            .lock()
            .await
            .dataplane_mut()
            .set_link_macs(&plan.slots)
        {
            Ok(_) => self.last = Some(addresses.clone()),
            Err(e) => {
                warn!(error = %e, "writing the interfaces' MAC addresses to the data plane failed; retried every second");
                return;
            }
        }
        for (ifindex, macs) in &addresses {
            if plan.slots.values().any(|e| e.ifindex == *ifindex) {
                let macs: Vec<String> = macs.iter().map(fmt_mac).collect();
                info!(iface = %name(*ifindex), macs = %macs.join(" "), "frames to other unicast MACs are passed to the kernel (pass_not_our_mac)");
            }
        }
        for (ifindex, why) in &plan.unfiltered {
            warn!(iface = %name(*ifindex), why = ?why, "frames on this interface are not filtered by destination MAC");
        }
    }
}

/// Keeps the announcement table in step with the services' quorum states: at once after a
/// change, and every [`ANNOUNCE_PERIOD`] to put right what was changed behind xvsd's back (or
/// what failed).
async fn announce_loop(shared: Arc<Shared>, announcer: Announcer) {
    let changed = shared.controller.lock().await.announce_changed();
    let mut tick = tokio::time::interval(ANNOUNCE_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = changed.notified() => {}
            _ = tick.tick() => {}
        }
        let wanted = shared.controller.lock().await.wanted_announcements();
        match announcer.reconcile(&wanted).await {
            Ok(plan) => {
                let table = announcer.table();
                for vip in &plan.add {
                    info!(%vip, table, "VIP announced: a service on it has its quorum");
                }
                for vip in &plan.remove {
                    warn!(%vip, table, "VIP withdrawn: no service on it has its quorum (or none is configured)");
                }
                shared.controller.lock().await.set_announced(wanted);
            }
            Err(e) => warn!(error = %e, "updating the announcements failed; retried every second"),
        }
    }
}

/// Starts the sync daemons' tasks (each follows the daemons the controller says should run):
/// the master's reader of the data plane's reports, and the backup's receiver. Both ask the
/// controller, which knows the backend slots, to name or install connections.
async fn spawn_sync(
    shared: &Arc<Shared>,
    events: Option<aya::maps::RingBuf<aya::maps::MapData>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let hub = shared.controller.lock().await.sync_hub().clone();
    let mut tasks = Vec::new();
    if let Some(ring) = events {
        let s = shared.clone();
        let describe: crate::sync::sender::Describe = Arc::new(move |events| {
            let s = s.clone();
            Box::pin(async move { s.controller.lock().await.describe_sync_events(&events) })
        });
        let s = shared.clone();
        let whole_table: crate::sync::sender::WholeTable = Arc::new(move || {
            let s = s.clone();
            Box::pin(async move { s.controller.lock().await.sync_table() })
        });
        tasks.push(crate::sync::sender::spawn(
            ring,
            hub.clone(),
            describe,
            whole_table,
        ));
    }
    let s = shared.clone();
    let install: crate::sync::receiver::Install = Arc::new(move |conns| {
        let s = s.clone();
        Box::pin(async move { s.controller.lock().await.install_synced(&conns) })
    });
    tasks.push(crate::sync::receiver::spawn(hub, install));
    tasks
}

/// Splits `--iface` (given once or more) into the first interface, which names the director,
/// and the others; refuses none, and one given twice.
pub fn split_interfaces(ifaces: &[String]) -> Result<(&str, &[String]), DaemonError> {
    let (first, more) = ifaces
        .split_first()
        .ok_or_else(|| DaemonError::Config("no interface to attach to (--iface)".into()))?;
    for (i, name) in ifaces.iter().enumerate() {
        if ifaces[..i].contains(name) {
            return Err(DaemonError::Config(format!(
                "--iface {name} is given twice"
            )));
        }
    }
    Ok((first, more))
}

fn ifindex(iface: &str) -> Result<u32, DaemonError> {
    let name = std::ffi::CString::new(iface).map_err(|_| DaemonError::NoInterface(iface.into()))?;
    // SAFETY: valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if idx == 0 {
        return Err(DaemonError::NoInterface(iface.into()));
    }
    Ok(idx)
}

/// Binds the control socket so that only root (and the socket group) can use it.
fn bind_socket(path: &Path, access: &SocketAccess) -> Result<UnixListener, DaemonError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    }
    // A socket file left by a daemon that died; a live daemon would still answer on it.
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(DaemonError::Io {
                what: format!("{} is in use by a running xvsd", path.display()),
                source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
            });
        }
        std::fs::remove_file(path).map_err(io_err(format!("removing stale {}", path.display())))?;
    }
    let listener =
        UnixListener::bind(path).map_err(io_err(format!("binding {}", path.display())))?;
    access.apply_to_socket(path)?;
    Ok(listener)
}

async fn resolve_round(shared: &Shared, refresh: bool) {
    let (targets, nat) = {
        let mut c = shared.controller.lock().await;
        let nat = c.nat_reals();
        if refresh {
            if let Err(e) = c.refresh_multipath() {
                warn!(error = %e, "pushing the multipath policy failed");
            }
            (c.all_reals(), nat)
        } else {
            (c.unresolved(), nat)
        }
    };
    if !nat.is_empty() {
        keep_nat_hops_resolved(shared, nat).await;
    }
    if targets.is_empty() && !refresh {
        return;
    }
    for ip in &targets {
        neighbor::poke(*ip);
    }
    match shared.neighbors.table().await {
        Ok(table) => {
            if let Err(e) = shared.controller.lock().await.update_macs(table) {
                warn!(error = %e, "pushing resolved real servers failed");
            }
        }
        Err(e) => warn!(error = %e, "reading the neighbour table failed"),
    }
}

/// The next hops of NAT and FULLNAT traffic, the real servers `reals` one way and the routes'
/// gateways toward the clients the other, must stay resolved for the data plane: pokes those
/// whose neighbour entry is missing or stale (see crate::neighbor).
async fn keep_nat_hops_resolved(shared: &Shared, mut reals: Vec<IpAddr>) {
    let stale = match shared.neighbors.gateways().await {
        Ok(gateways) => {
            reals.extend(gateways);
            shared.neighbors.to_refresh(&reals).await
        }
        Err(e) => Err(e),
    };
    match stale {
        Ok(stale) => {
            for ip in stale {
                debug!(next_hop = %ip, "confirming a next hop of NAT traffic");
                neighbor::poke(ip);
            }
        }
        Err(e) => warn!(error = %e, "reading the routes' gateways failed"),
    }
}

/// After a change: give newly added real servers a moment to resolve, so that the command
/// returns with them taking traffic in the common case.
async fn settle(shared: &Shared) -> Vec<String> {
    for ip in shared.controller.lock().await.routed_reals() {
        neighbor::poke(ip);
    }
    let deadline = Instant::now() + RESOLVE_WAIT;
    loop {
        let pending = shared.controller.lock().await.unresolved();
        if pending.is_empty() {
            return Vec::new();
        }
        if Instant::now() >= deadline {
            return pending
                .iter()
                .map(|ip| {
                    format!("real server {ip}: no ARP/ND answer yet; it takes new connections once it is resolved")
                })
                .collect();
        }
        for ip in &pending {
            neighbor::poke(*ip);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Ok(table) = shared.neighbors.table().await {
            if let Err(e) = shared.controller.lock().await.update_macs(table) {
                warn!(error = %e, "pushing resolved real servers failed");
            }
        }
    }
}

/// Re-reads `--config` and applies the difference (SIGHUP).
async fn reload(shared: &Shared, dry_run: bool) -> Result<(Diff, Vec<String>), ControllerError> {
    shared
        .controller
        .lock()
        .await
        .reload(shared.config_file.as_deref(), dry_run)
}

async fn serve_client(stream: UnixStream, shared: Arc<Shared>) {
    let refused = match stream.peer_cred() {
        Ok(cred) => shared
            .access
            .check(&stream, cred.uid(), cred.gid())
            .err()
            .map(|why| (cred.uid(), why)),
        Err(e) => Some((u32::MAX, format!("cannot read peer credentials: {e}"))),
    };
    if let Some((uid, why)) = refused {
        warn!(uid, reason = %why, "refused a control connection");
        let _ = tokio::time::timeout(ANSWER_TIMEOUT, respond(stream, &error(&why))).await;
        return;
    }
    let (read, write) = stream.into_split();
    let mut reader = BufReader::new(read).take(MAX_REQUEST_BYTES as u64 + 1);
    let mut line = String::new();
    let resp = match tokio::time::timeout(CLIENT_TIMEOUT, reader.read_line(&mut line)).await {
        Err(_) => error("timed out waiting for the request"),
        Ok(Err(e)) => error(&format!("reading the request: {e}")),
        Ok(Ok(_)) if line.len() > MAX_REQUEST_BYTES => {
            error(&format!("request larger than {MAX_REQUEST_BYTES} bytes"))
        }
        Ok(Ok(_)) => handle(&line, &shared).await,
    };
    let mut stream = write;
    let mut out = serde_json::to_vec(&resp).unwrap_or_default();
    out.push(b'\n');
    // A client that stops reading is dropped, not waited for.
    let _ = tokio::time::timeout(ANSWER_TIMEOUT, stream.write_all(&out)).await;
}

async fn respond(mut stream: UnixStream, resp: &Response) -> std::io::Result<()> {
    let mut out = serde_json::to_vec(resp).unwrap_or_default();
    out.push(b'\n');
    stream.write_all(&out).await
}

async fn handle(line: &str, shared: &Shared) -> Response {
    let command = match parse_request(line) {
        Ok(c) => c,
        Err(refused) => return error(&refused),
    };
    let answer = shared
        .controller
        .lock()
        .await
        .handle(command, shared.config_file.as_deref());
    if answer.settle {
        // New real servers get a moment to resolve, so that the command returns with them
        // taking traffic in the common case.
        let pending = settle(shared).await;
        return with_warnings(answer.response, pending);
    }
    answer.response
}
