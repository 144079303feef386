//! xvsd: owns the data plane and the desired configuration, serves the control socket, and keeps
//! real servers' MAC addresses current.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use lb_common::DataplaneConfig;
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
    config_file,
    dataplane::{
        adopt::{PinnedStart, Start},
        AttachMode, Dataplane, DataplaneError, Sizes,
    },
    diff::{self, Diff},
    estimator::{self, Estimator, Subject},
    health::{self, CheckId, Checker, Effective},
    metrics,
    model::{Change, Config, ForwardMethod, Protocol, ServiceKey, Timeouts},
    neighbor::{self, Neighbors},
    proto::{
        Command, ConnStatus, Listing, Membership, RealStatus, Request, Response, ServiceStatus,
        MAX_REQUEST_BYTES, PROTOCOL_VERSION,
    },
    state::{DesiredState, StateFile},
};

/// How long a change waits for a new real server's MAC before answering.
const RESOLVE_WAIT: Duration = Duration::from_millis(1500);
/// How often unresolved real servers are retried.
const RESOLVE_PERIOD: Duration = Duration::from_secs(1);
/// How often every real server is re-probed, so a changed MAC is noticed.
const REFRESH_PERIOD: Duration = Duration::from_secs(30);
/// How often the load-aware schedulers' tables are recomputed from connection counts.
pub const RECOMPUTE_PERIOD: Duration = Duration::from_secs(1);
/// Most connections `-L -c` returns (the reply stays well under a few tens of MiB).
const MAX_LISTED_CONNS: usize = 100_000;
/// A client that has not sent its whole request by then is dropped (each connection has its
/// own deadline, so a silent or slow client holds up nobody else).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that does not read its answer within this is dropped.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

const NS: u64 = 1_000_000_000;

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

/// Why the controller refused a request. A refused request changes nothing: the running
/// configuration, the data plane and the state file stay as they were.
#[derive(Debug, Error)]
pub enum ControllerError {
    /// The change is not valid for the running configuration (ipvsadm's rules).
    #[error(transparent)]
    Config(#[from] crate::model::ConfigError),
    /// The data plane refused it (capacity, a map write).
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    /// It could not be saved.
    #[error("saving the configuration failed, nothing changed: {0}")]
    Save(#[source] crate::state::StateError),
    /// A timeout in seconds that does not fit the data plane's nanoseconds.
    #[error("{0} timeout too large")]
    TimeoutTooLarge(&'static str),
    /// `reload` without `--config`.
    #[error("xvsd was started without --config: there is no file to reload (xvsadm apply -f FILE applies one)")]
    NoConfigFile,
    /// The configuration file could not be read or is invalid.
    #[error(transparent)]
    ConfigFile(#[from] config_file::LoadError),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// Daemon settings.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    /// Interface the director is attached to.
    pub iface: String,
    /// Native or generic XDP.
    pub mode: AttachMode,
    /// Control socket path.
    pub socket: PathBuf,
    /// Map sizes.
    pub conn_table_size: u32,
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
    /// What the XDP programs log (`--kernel-log`).
    pub kernel_log: crate::kernel_log::KernelLog,
}

/// The desired state and the data plane it is pushed to.
pub struct Controller {
    /// As configured: what `-S` shows.
    config: Config,
    /// What the data plane runs: `config` with health applied.
    applied: Effective,
    /// The health checks of `config`'s real servers.
    health: Checker,
    /// The checked real servers of `config`, with their `--check-inhibit`.
    checked: HashMap<CheckId, bool>,
    dataplane: Dataplane,
    macs: HashMap<IpAddr, [u8; 6]>,
    /// Connection timeouts in seconds as configured: the one source of truth (saved, listed,
    /// and turned into CONFIG's nanoseconds by [`Controller::dataplane_config`]).
    timeouts: Timeouts,
    /// CONFIG as last written: the timeouts above in nanoseconds, the tunnel sources and flags.
    pushed: DataplaneConfig,
    iface: String,
    /// IPVS-style rate estimates of every service and real server (`--rate`).
    rates: Estimator,
    /// Where every accepted change is saved before it is acknowledged.
    state: Option<StateFile>,
}

impl Controller {
    /// A controller with an empty configuration. An adopted data plane keeps its timeouts, and
    /// its real servers' MACs are known at once.
    pub fn new(dataplane: Dataplane, iface: &str) -> Self {
        let pushed = dataplane.current_config().unwrap_or_default();
        Self {
            config: Config::default(),
            applied: Effective::default(),
            health: Checker::new(),
            checked: HashMap::new(),
            macs: dataplane.inherited_macs(),
            timeouts: timeouts_s(&pushed),
            pushed,
            dataplane,
            iface: iface.to_string(),
            rates: Estimator::default(),
            state: None,
        }
    }

    /// Saves every accepted change to `state` from now on.
    pub fn with_state(mut self, state: StateFile) -> Self {
        self.state = Some(state);
        self
    }

    /// Sets the outer source addresses of tunnelled packets (and reads the kernel's multipath
    /// policy, see [`Controller::refresh_multipath`]).
    pub fn set_tunnel_sources(&mut self, sources: &[IpAddr]) -> Result<(), DaemonError> {
        let mut t = self.pushed;
        crate::tunnel::set_sources(&mut t, sources)
            .map_err(|e| DaemonError::Config(e.to_string()))?;
        t.flags = crate::tunnel::multipath_flags();
        self.dataplane.set_config(t)?;
        self.pushed = t;
        Ok(())
    }

    /// Tells the data plane whether the kernel's multipath hash uses ports (GUE routes are then
    /// looked up per flow, not shared per backend); re-read with every neighbour refresh.
    pub fn refresh_multipath(&mut self) -> Result<(), DaemonError> {
        let flags = crate::tunnel::multipath_flags();
        if flags != self.pushed.flags {
            let t = DataplaneConfig {
                flags,
                ..self.pushed
            };
            self.dataplane.set_config(t)?;
            self.pushed = t;
            info!(
                flags,
                "the kernel's multipath hash policy changed: GUE route caching follows it"
            );
        }
        Ok(())
    }

    /// CONFIG as it must be with `timeouts`: what was last written, with their nanoseconds.
    fn dataplane_config(&self, timeouts: Timeouts) -> Result<DataplaneConfig, ControllerError> {
        with_timeouts(self.pushed, timeouts)
    }

    /// Makes `next` (with `timeouts`) the running configuration: its effective form (health
    /// applied) pushed to the data plane, then the configured form saved; only then is it
    /// current and are its health checks reconciled. If the data plane refuses or the save
    /// fails, the previous configuration is pushed back and the state file keeps it, so a
    /// refused change is nowhere.
    fn commit(&mut self, next: Config, timeouts: Timeouts) -> Result<(), ControllerError> {
        let pushed = self.dataplane_config(timeouts)?;
        let wanted = health::wanted(&next);
        let checked: HashMap<CheckId, bool> =
            wanted.iter().map(|(id, c)| (*id, c.inhibit)).collect();
        let effective = self.effective_of(&next, &checked);
        // Pushing the empty configuration back would tear down what an adopted data plane
        // still forwards with: a failed first sync leaves it as it was.
        let adopted = self.dataplane.adoption_pending();
        let result = self.push_and_save(&next, &effective.config, timeouts, pushed);
        if result.is_err() {
            if adopted {
                warn!("the first configuration after adoption failed; the adopted tables stay");
            } else if let Err(again) = self.dataplane.sync(&self.applied.config, &self.macs) {
                warn!(error = %again, "restoring the previous configuration failed");
            }
            if let Err(again) = self.dataplane.set_config(self.pushed) {
                warn!(error = %again, "restoring the previous timeouts failed");
            }
        } else {
            self.config = next;
            self.timeouts = timeouts;
            self.pushed = pushed;
            self.applied = effective;
            self.checked = checked;
            // New checks start, changed ones restart keeping their state, gone ones stop.
            self.health.reconcile(wanted);
        }
        result
    }

    fn push_and_save(
        &mut self,
        next: &Config,
        effective: &Config,
        timeouts: Timeouts,
        pushed: DataplaneConfig,
    ) -> Result<(), ControllerError> {
        if *effective != self.applied.config {
            self.dataplane.sync(effective, &self.macs)?;
        }
        if pushed != self.pushed {
            self.dataplane.set_config(pushed)?;
        }
        if let Some(state) = &self.state {
            state.save(next, timeouts).map_err(ControllerError::Save)?;
        }
        Ok(())
    }

    /// Applies changes as one transaction: validated on a copy, pushed to the data plane,
    /// saved, and only then made current. Returns warnings: tunnelled real servers whose
    /// family has forwarding off, service groups these changes left without a match.
    pub fn apply(&mut self, changes: &[Change]) -> Result<Vec<String>, ControllerError> {
        let mut next = self.config.clone();
        next.apply_all(changes)?;
        self.commit(next, self.timeouts)?;
        Ok(self.warnings(changes))
    }

    fn warnings(&self, changes: &[Change]) -> Vec<String> {
        let mut warnings = crate::tunnel::forwarding_warnings(&self.config, &self.iface);
        warnings.extend(self
            .config
            .unmatched_groups(changes)
            .into_iter()
            .map(|k| {
                format!(
                    "{k} matches no traffic until it is given matches: xvsadm -E {} ... --match PROTO:VIP:PORT",
                    crate::rules::service_option(&k)
                )
            }));
        warnings
    }

    /// Saves the running configuration (when there is a state file).
    pub fn save_state(&self) -> Result<(), crate::state::StateError> {
        match &self.state {
            Some(s) => s.save(&self.config, self.timeouts),
            None => Ok(()),
        }
    }

    /// The running configuration and timeouts.
    pub fn desired(&self) -> DesiredState {
        DesiredState {
            config: self.config.clone(),
            timeouts: self.timeouts,
        }
    }

    /// Makes the running configuration `target` (a configuration file's, or the saved state):
    /// only the difference is applied, as one transaction; unchanged services and real
    /// servers keep their tables and connections. With `dry_run`, nothing is applied.
    /// Returns the difference and warnings.
    pub fn apply_desired(
        &mut self,
        target: &DesiredState,
        dry_run: bool,
    ) -> Result<(Diff, Vec<String>), ControllerError> {
        // It may come from a client: checked as the model checks every change.
        let target = DesiredState {
            config: diff::normalise(&target.config)?,
            timeouts: target.timeouts,
        };
        // Refused here, before the diff, when the data plane cannot hold them.
        self.dataplane_config(target.timeouts)?;
        let timeouts = target.timeouts;
        let d = diff::diff(&self.desired(), &target);
        if dry_run || d.is_empty() {
            return Ok((d, Vec::new()));
        }
        let mut next = self.config.clone();
        next.apply_all(&d.changes)?;
        self.commit(next, timeouts)?;
        let warnings = self.warnings(&d.changes);
        Ok((d, warnings))
    }

    /// The configuration with health applied: down real servers out of the tables (or at
    /// weight 0 when inhibited), sorry servers in while nothing is up. `checked`: the checked
    /// real servers of `config` and their inhibit setting.
    fn effective_of(&self, config: &Config, checked: &HashMap<CheckId, bool>) -> Effective {
        health::effective(config, |id| match checked.get(id) {
            Some(&inhibit) if self.health.is_up(id) == Some(false) => {
                if inhibit {
                    Membership::Inhibited
                } else {
                    Membership::Removed
                }
            }
            _ => Membership::Active,
        })
    }

    /// Notified when a real server went up or down.
    pub fn health_changed(&self) -> Arc<tokio::sync::Notify> {
        self.health.changed()
    }

    /// Pushes what the health checks decided to the data plane, if that changes the tables.
    /// Returns whether it did.
    pub fn apply_health(&mut self) -> Result<bool, DataplaneError> {
        // Until the first configuration arrives the maps hold an adopted data plane's tables.
        if self.dataplane.adoption_pending() {
            return Ok(false);
        }
        let effective = self.effective_of(&self.config, &self.checked);
        if effective == self.applied {
            return Ok(false);
        }
        self.dataplane.sync(&effective.config, &self.macs)?;
        for key in effective.sorry.difference(&self.applied.sorry) {
            warn!(service = %key, "no real server is up: the sorry server takes new connections");
        }
        for key in self.applied.sorry.difference(&effective.sorry) {
            info!(service = %key, "a real server is up again: the sorry server leaves the tables");
        }
        info!(
            down = effective.down.len(),
            sorry = effective.sorry.len(),
            "health applied to the tables"
        );
        self.applied = effective;
        Ok(true)
    }

    /// Direct-routing real-server (and sorry-server) addresses without a known MAC (a tunnelled
    /// server needs none). Sorry servers are resolved ahead, so they can stand in at once.
    pub fn unresolved(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .config
            .services()
            .iter()
            .flat_map(|s| {
                s.reals
                    .iter()
                    .filter(|r| r.forward == ForwardMethod::Dr)
                    .map(|r| r.addr.ip())
                    .chain(s.sorry_server.map(|a| a.ip()))
            })
            .filter(|ip| !self.macs.contains_key(ip))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Every real-server address (poked now and then: for a tunnelled server this keeps the
    /// kernel's neighbour entry of the next hop toward it alive, which the data plane's FIB
    /// lookup needs).
    pub fn all_reals(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .config
            .services()
            .iter()
            .flat_map(|s| {
                s.reals
                    .iter()
                    .map(|r| r.addr.ip())
                    .chain(s.sorry_server.map(|a| a.ip()))
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Tunnelled real servers' addresses. Poked after every change: the data plane's FIB lookup
    /// needs the neighbour entry of the next hop toward each (the server, or a router), and
    /// nothing else makes the kernel resolve it before the next refresh.
    pub fn tunnelled_reals(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .config
            .services()
            .iter()
            .flat_map(|s| s.reals.iter())
            .filter(|r| matches!(r.forward, ForwardMethod::Tunnel(_)))
            .map(|r| r.addr.ip())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Takes a fresh neighbour table; re-syncs when a real server's MAC appeared or changed.
    pub fn update_macs(&mut self, table: HashMap<IpAddr, [u8; 6]>) -> Result<(), DataplaneError> {
        let wanted = self.all_reals();
        let mut changed = false;
        for ip in wanted {
            if let Some(mac) = table.get(&ip) {
                if self.macs.get(&ip) != Some(mac) {
                    info!(%ip, mac = %fmt_mac(mac), "real server resolved");
                    self.macs.insert(ip, *mac);
                    changed = true;
                }
            }
        }
        if changed {
            self.dataplane.sync(&self.applied.config, &self.macs)?;
        }
        Ok(())
    }

    /// Sets timeouts (seconds; None keeps the current value), saved as every change is.
    pub fn set_timeouts(
        &mut self,
        tcp: Option<u64>,
        tcpfin: Option<u64>,
        udp: Option<u64>,
    ) -> Result<(), ControllerError> {
        let t = Timeouts {
            tcp: tcp.unwrap_or(self.timeouts.tcp),
            tcpfin: tcpfin.unwrap_or(self.timeouts.tcpfin),
            udp: udp.unwrap_or(self.timeouts.udp),
        };
        self.commit(self.config.clone(), t)
    }

    /// Zeroes the counters and rate estimates of one service and its real servers, or of
    /// every one (`-Z`). A service that does not exist is an error, as with ipvsadm.
    pub fn zero(&mut self, service: Option<ServiceKey>) -> Result<(), ControllerError> {
        match service {
            Some(key) => {
                if self.config.service(&key).is_none() {
                    return Err(crate::model::ConfigError::NoSuchService(key.to_string()).into());
                }
                self.dataplane.zero_service_counters(&key)?;
                self.rates.zero(|s| s.service() == key);
            }
            None => {
                self.dataplane.zero_counters()?;
                self.rates.zero(|_| true);
            }
        }
        Ok(())
    }

    /// One sampling round of the rate estimator (every `estimator::PERIOD`).
    pub fn estimate(&mut self) -> Result<(), DataplaneError> {
        let mut samples = Vec::new();
        // What is in the tables: a removed server's estimate starts afresh when it returns
        // (its counters do, as with keepalived and IPVS).
        for svc in self.applied.config.services() {
            samples.push((
                Subject::Service(svc.key),
                self.dataplane.service_counters(&svc.key)?,
            ));
            for r in &svc.reals {
                samples.push((
                    Subject::Real(svc.key, r.addr),
                    self.dataplane.backend_counters(&svc.key, r.addr)?,
                ));
            }
        }
        self.rates.sample(samples);
        Ok(())
    }

    /// Recomputes the load-aware schedulers' tables from fresh connection counts.
    pub fn recompute(&mut self) -> Result<usize, DataplaneError> {
        self.dataplane.recompute(&self.applied.config, &self.macs)
    }

    /// Live connections, for `-L -c` (at most `limit`).
    pub fn connections(&self, limit: usize) -> Result<Vec<ConnStatus>, DataplaneError> {
        // Service ids in use; the protocol and VIP shown are the flow's (a group has several).
        let mut by_id: HashSet<u32> = HashSet::new();
        let mut reals: HashMap<u32, SocketAddr> = HashMap::new();
        for svc in self.applied.config.services() {
            if let Some(id) = self.dataplane.service_id(&svc.key) {
                by_id.insert(id);
            }
            for r in &svc.reals {
                if let Some(b) = self.dataplane.backend_id(&svc.key, r.addr) {
                    reals.insert(b, r.addr);
                }
            }
        }
        let mut out = Vec::new();
        for c in self.dataplane.connections(limit)? {
            let Some(&real) = reals.get(&c.entry.backend) else {
                continue;
            };
            if !by_id.contains(&c.entry.service) {
                continue;
            }
            let protocol = if c.key.proto == lb_common::PROTO_UDP {
                Protocol::Udp
            } else {
                Protocol::Tcp
            };
            let ip = |a: &[u8; 16]| -> IpAddr {
                if c.key.family == lb_common::FAMILY_V4 {
                    IpAddr::from([a[0], a[1], a[2], a[3]])
                } else {
                    IpAddr::from(*a)
                }
            };
            out.push(ConnStatus {
                protocol,
                client: SocketAddr::new(ip(&c.key.src), u16::from_be(c.key.sport_be)),
                virtual_addr: SocketAddr::new(ip(&c.key.dst), u16::from_be(c.key.dport_be)),
                real: if real.port() == 0 {
                    // Port-0 services (and groups' servers given without a port): the real
                    // server gets the client's destination port.
                    SocketAddr::new(real.ip(), u16::from_be(c.key.dport_be))
                } else {
                    real
                },
                state: lb_common::ConnState::from_u8(c.entry.state)
                    .name()
                    .to_string(),
                expires_s: c.expires_in_ns.div_ceil(NS),
            });
        }
        // Persistence templates, as IPVS lists them: state NONE, client port 0, the service's
        // VIP and port. (A group's templates are not listed: IPVS shows those under the mark.)
        let mut services: HashMap<u32, (Protocol, SocketAddr)> = HashMap::new();
        for svc in self.config.services() {
            if let (Some(id), ServiceKey::Addr { protocol, addr }) =
                (self.dataplane.service_id(&svc.key), svc.key)
            {
                services.insert(id, (protocol, addr));
            }
        }
        for (k, t, expires_ns) in self.dataplane.templates(limit.saturating_sub(out.len()))? {
            let (Some(&(protocol, vip)), Some(&real)) =
                (services.get(&k.service), reals.get(&t.backend))
            else {
                continue;
            };
            let client = if k.family == lb_common::FAMILY_V4 {
                IpAddr::from([k.client[0], k.client[1], k.client[2], k.client[3]])
            } else {
                IpAddr::from(k.client)
            };
            out.push(ConnStatus {
                protocol,
                client: SocketAddr::new(client, 0),
                virtual_addr: vip,
                real,
                state: "NONE".to_string(),
                expires_s: expires_ns.div_ceil(NS),
            });
        }
        Ok(out)
    }

    /// The configuration with live counters.
    pub fn listing(&mut self) -> Result<Listing, DataplaneError> {
        let counts = self.dataplane.conn_counts()?;
        let mut services = Vec::new();
        for svc in self.config.services() {
            let mut reals = Vec::new();
            let status =
                |r: &crate::model::RealServer, table| -> Result<RealStatus, DataplaneError> {
                    let c = self
                        .dataplane
                        .backend_id(&svc.key, r.addr)
                        .and_then(|id| counts.get(&id).copied())
                        .unwrap_or_default();
                    Ok(RealStatus {
                        addr: r.addr,
                        forward: r.forward,
                        weight: r.weight,
                        u_threshold: r.u_threshold,
                        l_threshold: r.l_threshold,
                        persist_conns: c.persistent,
                        active_conns: c.active,
                        inactive_conns: c.inactive,
                        stats: self.dataplane.backend_counters(&svc.key, r.addr)?,
                        rates: self.rates.rates(&Subject::Real(svc.key, r.addr)),
                        mac: self.macs.get(&r.addr.ip()).map(fmt_mac),
                        check: r.check.clone(),
                        table,
                        health: self.health.health(&CheckId {
                            service: svc.key,
                            real: r.addr,
                        }),
                    })
                };
            for r in &svc.reals {
                reals.push(status(r, self.applied.membership(&svc.key, r.addr))?);
            }
            let sorry_server = match svc.sorry_server {
                Some(addr) => Some(status(
                    &crate::model::RealServer::dr(addr, 1),
                    if self.applied.sorry.contains(&svc.key) {
                        Membership::Active
                    } else {
                        Membership::Removed
                    },
                )?),
                None => None,
            };
            services.push(ServiceStatus {
                key: svc.key,
                matches: svc.matches.clone(),
                scheduler: svc.scheduler,
                flags: svc.flags,
                persistence: svc.persistence,
                stats: self.dataplane.service_counters(&svc.key)?,
                rates: self.rates.rates(&Subject::Service(svc.key)),
                reals,
                check: svc.check.clone(),
                sorry_server,
            });
        }
        Ok(Listing {
            conn_table_size: self.dataplane.conn_capacity(),
            services,
            reasons: self
                .dataplane
                .reasons()?
                .into_iter()
                .map(|(r, n)| (r.name().to_string(), n))
                .collect(),
            timeouts: self.timeouts,
        })
    }

    /// The desired configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The data plane (tests).
    pub fn dataplane(&self) -> &Dataplane {
        &self.dataplane
    }
}

/// CONFIG's timeouts in nanoseconds from timeouts in seconds, over `base` (tunnel sources,
/// flags and the fixed SYN and CLOSE timeouts stay as they are).
fn with_timeouts(base: DataplaneConfig, t: Timeouts) -> Result<DataplaneConfig, ControllerError> {
    let ns = |v: u64, name| {
        v.checked_mul(NS)
            .ok_or(ControllerError::TimeoutTooLarge(name))
    };
    Ok(DataplaneConfig {
        tcp_timeout_ns: ns(t.tcp, "tcp")?,
        tcp_fin_timeout_ns: ns(t.tcpfin, "tcpfin")?,
        udp_timeout_ns: ns(t.udp, "udp")?,
        ..base
    })
}

/// The user-set timeouts in seconds.
fn timeouts_s(t: &DataplaneConfig) -> Timeouts {
    Timeouts {
        tcp: t.tcp_timeout_ns / NS,
        tcpfin: t.tcp_fin_timeout_ns / NS,
        udp: t.udp_timeout_ns / NS,
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
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
    let (mut dataplane, start) = Dataplane::start_pinned(&PinnedStart {
        iface: opts.iface.clone(),
        ifindex,
        mode: opts.mode,
        sizes: Sizes {
            conns: opts.conn_table_size,
            sched_slots: opts.sched_slots,
        },
        dir: opts.pin_dir.clone(),
        force_reload: opts.force_reload,
        kernel_log: opts.kernel_log,
    })?;
    if let Some(logger) = dataplane.take_kernel_logger() {
        crate::kernel_log::spawn(logger);
        info!(level = ?opts.kernel_log, target = crate::kernel_log::TARGET, "the data plane logs (--kernel-log)");
    }
    dataplane.set_params(opts.params);
    let pins = opts.pin_dir.display();
    match &start {
        Start::Fresh => {
            info!(iface = %opts.iface, mode = ?opts.mode, pins = %pins, "director attached and pinned");
        }
        Start::Adopted {
            services,
            backends,
            previous_program,
        } => info!(
            iface = %opts.iface, pins = %pins, services, backends, previous_program,
            "adopted the pinned data plane: this build's program replaced the previous one on its \
             link; the last tables keep forwarding until the configuration is synced"
        ),
        Start::Reloaded { reasons } => warn!(
            iface = %opts.iface, mode = ?opts.mode, pins = %pins, why = %reasons.join("; "),
            "reloaded: the incompatible data plane was replaced by a fresh one"
        ),
    }
    let mut controller = Controller::new(dataplane, &opts.iface);
    controller.set_tunnel_sources(&opts.tun_src)?;
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
            }
            _ = estimate_tick.tick() => {
                if let Err(e) = shared.controller.lock().await.estimate() {
                    warn!(error = %e, "sampling counters for rate estimates failed");
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
    let _ = std::fs::remove_file(&opts.socket);
    drop(shared);
    Ok(())
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
    let targets = {
        let mut c = shared.controller.lock().await;
        if refresh {
            if let Err(e) = c.refresh_multipath() {
                warn!(error = %e, "pushing the multipath policy failed");
            }
            c.all_reals()
        } else {
            c.unresolved()
        }
    };
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

/// After a change: give newly added real servers a moment to resolve, so that the command
/// returns with them taking traffic in the common case.
async fn settle(shared: &Shared) -> Vec<String> {
    for ip in shared.controller.lock().await.tunnelled_reals() {
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

/// The Diff answer, after giving new real servers a moment to resolve.
async fn diff_answer(
    result: Result<(Diff, Vec<String>), ControllerError>,
    dry_run: bool,
    shared: &Shared,
) -> Response {
    match result {
        Ok((d, mut warnings)) => {
            let applied = !dry_run && !d.is_empty();
            if applied {
                info!(changes = d.lines.len(), "configuration applied");
                debug!(rules = ?d.lines, "configuration applied");
                warnings.extend(settle(shared).await);
            }
            Response::Diff {
                lines: d.lines,
                applied,
                warnings,
            }
        }
        Err(e) => error(&e.to_string()),
    }
}

/// Re-reads `--config` and applies the difference (SIGHUP, `xvsadm reload`).
async fn reload(shared: &Shared, dry_run: bool) -> Result<(Diff, Vec<String>), ControllerError> {
    let Some(path) = &shared.config_file else {
        return Err(ControllerError::NoConfigFile);
    };
    let desired = config_file::load(path)?;
    shared
        .controller
        .lock()
        .await
        .apply_desired(&desired, dry_run)
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

fn error(message: &str) -> Response {
    Response::Error {
        message: message.to_string(),
    }
}

async fn handle(line: &str, shared: &Shared) -> Response {
    // Check the version before the shape, so an old client gets a useful message.
    let value: serde_json::Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return error(&format!("malformed request: {e}")),
    };
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == PROTOCOL_VERSION as u64 => {}
        Some(v) => {
            return error(&format!(
                "protocol version {v} is not supported by this xvsd (it speaks {PROTOCOL_VERSION}); use the xvsadm that came with it"
            ))
        }
        None => return error("malformed request: no protocol version"),
    }
    let req: Request = match serde_json::from_value(value) {
        Ok(r) => r,
        Err(e) => return error(&format!("malformed request: {e}")),
    };
    debug!(?req.command, "request");
    match req.command {
        Command::Apply { changes } => {
            let result = shared.controller.lock().await.apply(&changes);
            match result {
                Ok(unmatched) => {
                    info!(changes = changes.len(), "applied");
                    debug!(?changes, "applied");
                    let mut warnings = unmatched;
                    warnings.extend(settle(shared).await);
                    Response::Ok { warnings }
                }
                Err(e) => error(&e.to_string()),
            }
        }
        Command::List => match shared.controller.lock().await.listing() {
            Ok(l) => Response::Listing(l),
            Err(e) => error(&e.to_string()),
        },
        Command::Connections => {
            match shared.controller.lock().await.connections(MAX_LISTED_CONNS) {
                Ok(conns) => Response::Connections { conns },
                Err(e) => error(&e.to_string()),
            }
        }
        Command::Zero { service } => match shared.controller.lock().await.zero(service) {
            Ok(()) => Response::Ok { warnings: vec![] },
            Err(e) => error(&e.to_string()),
        },
        Command::SetTimeouts { tcp, tcpfin, udp } => {
            match shared
                .controller
                .lock()
                .await
                .set_timeouts(tcp, tcpfin, udp)
            {
                Ok(()) => Response::Ok { warnings: vec![] },
                Err(e) => error(&e.to_string()),
            }
        }
        Command::ApplyConfig { state, dry_run } => {
            let result = shared
                .controller
                .lock()
                .await
                .apply_desired(&state, dry_run);
            diff_answer(result, dry_run, shared).await
        }
        Command::Reload { dry_run } => {
            diff_answer(reload(shared, dry_run).await, dry_run, shared).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_in_seconds_become_configs_nanoseconds_and_back() {
        let base = DataplaneConfig {
            tcp_syn_timeout_ns: 7,
            flags: 1,
            tun_src4: [192, 0, 2, 1],
            ..DataplaneConfig::default()
        };
        let t = Timeouts {
            tcp: 900,
            tcpfin: 120,
            udp: 300,
        };
        let cfg = with_timeouts(base, t).unwrap();
        assert_eq!(cfg.tcp_timeout_ns, 900 * NS);
        assert_eq!(cfg.tcp_fin_timeout_ns, 120 * NS);
        assert_eq!(cfg.udp_timeout_ns, 300 * NS);
        // What is not a user timeout stays as it was.
        assert_eq!(
            (cfg.tcp_syn_timeout_ns, cfg.flags, cfg.tun_src4),
            (7, 1, [192, 0, 2, 1])
        );
        assert_eq!(timeouts_s(&cfg), t);
    }

    #[test]
    fn a_timeout_the_data_plane_cannot_hold_is_refused_by_name() {
        let t = Timeouts {
            tcp: 900,
            tcpfin: u64::MAX,
            udp: 300,
        };
        let err = with_timeouts(DataplaneConfig::default(), t).unwrap_err();
        assert_eq!(err.to_string(), "tcpfin timeout too large");
    }
}
