//! The controller: the desired configuration, what health made of it, and the data plane it
//! is pushed to, changed one transaction at a time.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use lb_common::{config_flags, DataplaneConfig, Reason};

/// CONFIG's flags that follow the kernel's multipath hash policy.
const MULTIPATH_FLAGS: u8 = config_flags::GUE_ROUTE_PER_FLOW4 | config_flags::GUE_ROUTE_PER_FLOW6;
use thiserror::Error;
use tracing::{info, warn};

use crate::{
    config_file,
    dataplane::{ops::DataplaneOps, Dataplane, DataplaneError},
    diff::{self, Diff},
    estimator::{Estimator, Subject},
    health::{self, CheckId, Checker, Effective},
    model::{Change, Config, ForwardMethod, Protocol, ServiceKey, Timeouts},
    pressure::{self, Pressure, TableStatus},
    proto::{
        AnnounceStatus, ConnStatus, Listing, Membership, QuorumStatus, RealStatus, ServiceStatus,
    },
    state::{DesiredState, StateFile},
    sync::{
        daemon::{DaemonConfig, DaemonError, Daemons},
        installer,
        receiver::Installed,
        Hub, Role, SyncConn,
    },
};

const NS: u64 = 1_000_000_000;

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
    /// A bad `--tun-src`.
    #[error(transparent)]
    TunnelSource(#[from] crate::tunnel::TunnelSourceError),
    /// `reload` without `--config`.
    #[error("xvsd was started without --config: there is no file to reload (xvsadm apply -f FILE applies one)")]
    NoConfigFile,
    /// The configuration file could not be read or is invalid.
    #[error(transparent)]
    ConfigFile(#[from] config_file::LoadError),
    /// A sync daemon cannot be started or stopped (ipvsadm's messages).
    #[error(transparent)]
    SyncDaemon(#[from] DaemonError),
}

/// The desired state and the data plane it is pushed to: the kernel's ([`Dataplane`]) in
/// xvsd, an in-memory one in unit tests.
pub struct Controller<D = Dataplane> {
    /// As configured: what `-S` shows.
    config: Config,
    /// What the data plane runs: `config` with health applied.
    applied: Effective,
    /// The health checks of `config`'s real servers.
    health: Checker,
    /// The checked real servers of `config`, with their `--check-inhibit`.
    checked: HashMap<CheckId, bool>,
    dataplane: D,
    macs: HashMap<IpAddr, [u8; 6]>,
    /// Connection timeouts in seconds as configured: the one source of truth (saved, listed,
    /// and turned into CONFIG's nanoseconds by [`Controller::dataplane_config`]).
    timeouts: Timeouts,
    /// CONFIG as last written: the timeouts above in nanoseconds, the tunnel sources and flags.
    pushed: DataplaneConfig,
    /// The interfaces the director is attached to (forwarding must be on for each: the data
    /// plane's FIB lookups happen on the one a packet came in on).
    ifaces: Vec<String>,
    /// IPVS-style rate estimates of every service and real server (`--rate`).
    rates: Estimator,
    /// Where every accepted change is saved before it is acknowledged.
    state: Option<StateFile>,
    /// FULLNAT refusals per service id as last reported (see [`Controller::fullnat_refusals`]).
    refused: HashMap<u32, u64>,
    /// The connection table's fill and rates (see [`Controller::pressure`]).
    pressure: Pressure,
    /// The data plane's walk count when its fill was last taken.
    walks_seen: u64,
    /// What this director announces to its routers (`--announce-table`).
    announce: Announcements,
    /// The connection-sync daemons that run (saved with the configuration).
    sync_daemons: Daemons,
    /// Shared with the sync tasks: which daemons should run, and their counters.
    sync: Hub,
}

/// The announcements' side of the controller: where they go, what is announced now (as the
/// announcing task last reported it), and a bell rung whenever what should be may have
/// changed.
#[derive(Default)]
struct Announcements {
    /// The routing table (None: xvsd announces nothing).
    table: Option<u32>,
    /// The VIPs the table holds, as last reconciled.
    announced: BTreeSet<IpAddr>,
    /// Drained (`xvsadm drain`): nothing is announced, forwarding goes on.
    drained: bool,
    /// Rung on every change of the applied configuration or its quorum states.
    changed: Arc<tokio::sync::Notify>,
}

/// New FULLNAT connections of one service refused for want of a local port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusals {
    /// The service.
    pub service: ServiceKey,
    /// Its local addresses and their port ranges.
    pub pool: String,
    /// How many since the last report.
    pub refused: u64,
}

impl<D: DataplaneOps> Controller<D> {
    /// A controller with an empty configuration. An adopted data plane keeps its timeouts, and
    /// its real servers' MACs are known at once.
    pub fn new(dataplane: D, iface: &str) -> Self {
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
            ifaces: vec![iface.to_string()],
            rates: Estimator::default(),
            state: None,
            refused: HashMap::new(),
            pressure: Pressure::default(),
            walks_seen: 0,
            announce: Announcements::default(),
            sync_daemons: Daemons::default(),
            sync: Hub::default(),
        }
    }

    /// Announces the VIPs whose services have their quorum through routing table `table`
    /// (`xvsd --announce-table`).
    pub fn announce_through(&mut self, table: u32) {
        self.announce.table = Some(table);
    }

    /// Rung whenever the VIPs to announce may have changed.
    pub fn announce_changed(&self) -> Arc<tokio::sync::Notify> {
        self.announce.changed.clone()
    }

    /// The VIPs this director should announce now: those of services that have their quorum,
    /// in the configuration the data plane runs.
    pub fn wanted_announcements(&self) -> BTreeSet<IpAddr> {
        lb_core::announce::vips(
            &self.config,
            |k| self.applied.quorum.get(k).is_some_and(|q| q.up),
            self.announce.drained,
        )
    }

    /// Drains the director (withdraws every announcement at once; forwarding goes on), or
    /// ends its drain. Returns warnings for the operator.
    pub fn set_drained(&mut self, drained: bool) -> Vec<String> {
        if drained != self.announce.drained {
            if drained {
                warn!(
                    "director drained: every VIP is withdrawn from the routers; forwarding goes on"
                );
            } else {
                info!("director drain ended: the VIPs whose services have their quorum are announced again");
            }
        }
        self.announce.drained = drained;
        self.announce.changed.notify_one();
        if self.announce.table.is_none() {
            vec![
                "xvsd announces nothing (it runs without --announce-table): no route was \
                  withdrawn; traffic stops coming only when the routers or VRRP stop sending it"
                    .to_string(),
            ]
        } else {
            Vec::new()
        }
    }

    /// What the announcing task found in the table after its last pass.
    pub fn set_announced(&mut self, announced: BTreeSet<IpAddr>) {
        self.announce.announced = announced;
    }

    /// The announcements as listed (None when xvsd does not announce).
    fn announce_status(&self) -> Option<AnnounceStatus> {
        let table = self.announce.table?;
        let all = lb_core::announce::vips(&self.config, |_| true, false);
        Some(AnnounceStatus {
            table,
            announced: self.announce.announced.iter().copied().collect(),
            withdrawn: all
                .difference(&self.wanted_announcements())
                .copied()
                .collect(),
        })
    }

    /// What the controller shares with the sync tasks.
    pub fn sync_hub(&self) -> &Hub {
        &self.sync
    }

    /// The running sync daemons.
    pub fn sync_daemons(&self) -> &Daemons {
        &self.sync_daemons
    }

    /// Starts a connection-sync daemon (`--start-daemon`), saved as every change is.
    pub fn start_daemon(&mut self, daemon: DaemonConfig) -> Result<(), ControllerError> {
        let ifn = daemon.mcast_ifn.clone();
        let next = self.sync_daemons.started(daemon)?;
        if crate::sync::ifindex(&ifn).is_none() {
            return Err(DaemonError::NoDevice(ifn).into());
        }
        self.set_sync_daemons(next, true)
    }

    /// Stops the connection-sync daemon of `role` (`--stop-daemon`), saved as every change is.
    pub fn stop_daemon(&mut self, role: Role) -> Result<(), ControllerError> {
        let next = self.sync_daemons.stopped(role)?;
        self.set_sync_daemons(next, true)
    }

    /// The IPVS entries a master sends for these data-plane reports: each names its real
    /// server through its backend slot, which must still hold the real server the connection
    /// went to (same generation). Reports of FULLNAT connections (IPVS has no such method),
    /// of mixed families and of slots no longer in use are left out. A connection of a
    /// persistent service is followed by its template, as IPVS syncs a connection's
    /// controlling template after it (service groups' templates are not sent).
    pub fn describe_sync_events(&self, events: &[lb_common::SyncEvent]) -> Vec<SyncConn> {
        self.describe(events, None)
    }

    /// describe_sync_events' body; `entries` (in step with `events`, when the caller read the
    /// table) saves a FULLNAT connection's lookup of its local address and port.
    fn describe(
        &self,
        events: &[lb_common::SyncEvent],
        entries: Option<&[lb_common::ConnEntry]>,
    ) -> Vec<SyncConn> {
        let generations = self.dataplane.slot_generations();
        let persistent: HashMap<u32, (SocketAddr, crate::model::Persistence)> = self
            .applied
            .config
            .services()
            .iter()
            .filter_map(|svc| match (svc.key, svc.persistence) {
                (ServiceKey::Addr { addr, .. }, Some(p)) => {
                    Some((self.dataplane.service_id(&svc.key)?, (addr, p)))
                }
                _ => None,
            })
            .collect();
        let mut slots: HashMap<u32, (SocketAddr, crate::sync::Forward)> = HashMap::new();
        for svc in self.applied.config.services() {
            for r in &svc.reals {
                if let Some(id) = self.dataplane.backend_id(&svc.key, r.addr) {
                    slots.insert(id, (r.addr, installer::forward_of(&r.forward)));
                }
            }
        }
        let mut out = Vec::with_capacity(events.len());
        for (i, ev) in events.iter().enumerate() {
            let Some(&(real, forward)) = slots.get(&ev.backend) else {
                continue;
            };
            if generations.get(&ev.backend) != Some(&ev.generation) {
                continue;
            }
            // FULLNAT: the local address and port the data plane gave the connection (a report
            // made before its port was allocated has none yet: a later one carries it).
            let local = if forward == crate::sync::Forward::FullNat {
                let entry = match entries {
                    Some(e) => e.get(i).copied(),
                    None => self.dataplane.conn_entry(&ev.key),
                };
                entry.filter(|e| e.lport_be != 0).and_then(|e| {
                    let ip = self.dataplane.local_addr(ev.service, e.local)?;
                    Some(SocketAddr::new(ip, u16::from_be(e.lport_be)))
                })
            } else {
                None
            };
            let Some(conn) = installer::event_to_conn(ev, real, forward, local, &self.pushed)
            else {
                continue;
            };
            let template = persistent
                .get(&ev.service)
                .map(|(addr, p)| installer::template_of(&conn, *addr, p.prefix, p.timeout));
            out.push(conn);
            out.extend(template);
        }
        out
    }

    /// The whole connection table as a master sends it to a peer that asked for it (see
    /// lb_core::sync::table): every live connection, as describe_sync_events names them.
    pub fn sync_table(&self) -> Vec<SyncConn> {
        let conns = match self.dataplane.connections(usize::MAX) {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "reading the connection table for a peer failed");
                return Vec::new();
            }
        };
        let events: Vec<lb_common::SyncEvent> = conns
            .iter()
            .map(|c| lb_common::SyncEvent {
                key: c.key,
                backend: c.entry.backend,
                generation: c.entry.generation,
                service: c.entry.service,
                state: c.entry.state & lb_common::STATE_MASK,
                kind: lb_common::sync_event::REFRESH,
                _pad: [0; 2],
            })
            .collect();
        let entries: Vec<lb_common::ConnEntry> = conns.iter().map(|c| c.entry).collect();
        self.describe(&events, Some(&entries))
    }

    /// Installs entries a backup received: each is mapped to the local service (by protocol,
    /// VIP and port; a port-0 service takes any port) and real server (address and port; one
    /// given without a port takes any) and written to the connection table, proven and
    /// expiring as the master said, and counted in the live counts; a NAT or FULLNAT
    /// connection with its way back (FULLNAT: its local address must be in the local service's
    /// pool, and its port not another connection's here); a template goes to the persistence
    /// table. What cannot be installed is skipped and counted by reason.
    pub fn install_synced(&mut self, conns: &[SyncConn]) -> Installed {
        let mut done = Installed::default();
        let generations = self.dataplane.slot_generations();
        let now = crate::dataplane::monotonic_ns();
        let mut batch = Vec::new();
        for conn in conns {
            let protocol = match conn.protocol {
                lb_common::PROTO_TCP => Protocol::Tcp,
                lb_common::PROTO_UDP => Protocol::Udp,
                _ => {
                    done.skip("unsupported");
                    continue;
                }
            };
            let vip = conn.addrs.virt();
            if conn.is_template() {
                self.install_template(conn, protocol, &generations, now, &mut done);
                continue;
            }
            let service = [conn.ports.virt, 0].into_iter().find_map(|port| {
                let key = ServiceKey::new(protocol, SocketAddr::new(vip, port));
                self.applied.config.service(&key).map(|s| (key, s))
            });
            let Some((key, svc)) = service else {
                done.skip("unknown_service");
                continue;
            };
            let Some((forward, service_id, backend, generation)) =
                self.synced_backend(&key, svc, conn, &generations)
            else {
                done.skip("unknown_real");
                continue;
            };
            // FULLNAT: the local address by its slot in this director's pool (the same
            // addresses, placed in another order, perhaps).
            let local = match forward {
                ForwardMethod::FullNat => {
                    let slot = conn
                        .local
                        .and_then(|l| Some((self.dataplane.local_slot(service_id, l.ip())?, l)));
                    let Some((slot, l)) = slot else {
                        done.skip("unknown_local");
                        continue;
                    };
                    Some((slot, l.port()))
                }
                _ => None,
            };
            let reply = match forward {
                ForwardMethod::Nat | ForwardMethod::FullNat => {
                    let mut c = conn.clone();
                    c.flags.forward = installer::forward_of(&forward);
                    installer::reply_of(&c, backend)
                }
                ForwardMethod::Dr | ForwardMethod::Tunnel(_) => None,
            };
            let Some(entry) = installer::conn_to_entry(
                conn,
                service_id,
                backend,
                generation,
                local,
                &self.pushed,
                now,
            ) else {
                done.skip("unsupported");
                continue;
            };
            batch.push(crate::dataplane::ops::SyncedConn {
                key: installer::flow_key(conn),
                entry,
                reply,
            });
        }
        for outcome in self.dataplane.install_conns(&batch) {
            match outcome {
                crate::dataplane::ops::Installing::Installed => done.installed += 1,
                crate::dataplane::ops::Installing::ReplyTaken => done.skip("reply_taken"),
                crate::dataplane::ops::Installing::Failed(e) => {
                    warn!(error = %e, "installing a synced connection failed");
                    done.skip("install");
                }
            }
        }
        done
    }

    /// The local real server a synced entry names in service `key` (by address and port; one
    /// configured without a port takes any): its forwarding method and its service's, slot's
    /// and slot generation's ids in the data plane. None when it is not here (or not placed).
    fn synced_backend(
        &self,
        key: &ServiceKey,
        svc: &crate::model::Service,
        conn: &SyncConn,
        generations: &HashMap<u32, u32>,
    ) -> Option<(ForwardMethod, u32, u32, u32)> {
        let real = installer::real_of(conn);
        let r = [real, SocketAddr::new(real.ip(), 0)]
            .into_iter()
            .find_map(|addr| svc.reals.iter().find(|r| r.addr == addr))?;
        let service_id = self.dataplane.service_id(key)?;
        let backend = self.dataplane.backend_id(key, r.addr)?;
        let generation = *generations.get(&backend)?;
        Some((r.forward, service_id, backend, generation))
    }

    /// Installs template `conn` (of `protocol`) a backup received: its service is the one of
    /// its VIP and port exactly (0 for a port-0 service), which must be persistent here too;
    /// its client network is taken under our netmask.
    fn install_template(
        &mut self,
        conn: &SyncConn,
        protocol: Protocol,
        generations: &HashMap<u32, u32>,
        now: u64,
        done: &mut Installed,
    ) {
        let key = ServiceKey::new(
            protocol,
            SocketAddr::new(conn.addrs.virt(), conn.ports.virt),
        );
        let Some(svc) = self.applied.config.service(&key) else {
            done.skip("unknown_service");
            return;
        };
        let Some(p) = svc.persistence else {
            done.skip("not_persistent");
            return;
        };
        let Some((_, service_id, backend, generation)) =
            self.synced_backend(&key, svc, conn, generations)
        else {
            done.skip("unknown_real");
            return;
        };
        let (k, t) = installer::template_entry(
            conn, service_id, p.prefix, p.timeout, backend, generation, now,
        );
        match self.dataplane.install_template(&k, &t) {
            Ok(()) => done.installed += 1,
            Err(e) => {
                warn!(error = %e, "installing a synced template failed");
                done.skip("install");
            }
        }
    }

    /// Makes `next` the running sync daemons: CONFIG's SYNC_MASTER flag follows the master
    /// (the data plane reports connections only while one runs), the state is saved when
    /// `save` (not when restoring it at start), and the sync tasks follow. A daemon whose
    /// interface is missing at start is still restored: its task retries and logs.
    pub fn set_sync_daemons(&mut self, next: Daemons, save: bool) -> Result<(), ControllerError> {
        let mut cfg = self.pushed;
        cfg.flags &= !config_flags::SYNC_MASTER;
        if next.master.is_some() {
            cfg.flags |= config_flags::SYNC_MASTER;
        }
        let staged = match (&self.state, save) {
            (Some(state), true) => Some(
                state
                    .stage(&self.config, self.timeouts, &next)
                    .map_err(ControllerError::Save)?,
            ),
            _ => None,
        };
        if cfg != self.pushed {
            self.dataplane.set_config(cfg)?;
        }
        if let Some(staged) = staged {
            if let Err(e) = staged.commit() {
                if cfg != self.pushed {
                    if let Err(again) = self.dataplane.set_config(self.pushed) {
                        warn!(error = %again, "restoring CONFIG's sync flag failed");
                    }
                }
                return Err(ControllerError::Save(e));
            }
        }
        self.pushed = cfg;
        self.sync_daemons = next;
        self.sync.publish(&self.sync_daemons);
        Ok(())
    }

    /// The director runs on these interfaces too (two arms).
    pub fn also_on(mut self, more: &[String]) -> Self {
        self.ifaces.extend(more.iter().cloned());
        self
    }

    /// Saves every accepted change to `state` from now on.
    pub fn with_state(mut self, state: StateFile) -> Self {
        self.state = Some(state);
        self
    }

    /// Turns the FULLNAT audit reports (`--audit-fullnat`) on or off in CONFIG.
    pub fn set_audit_fullnat(&mut self, on: bool) -> Result<(), ControllerError> {
        let mut t = self.pushed;
        t.flags &= !config_flags::AUDIT_FULLNAT;
        if on {
            t.flags |= config_flags::AUDIT_FULLNAT;
        }
        if t != self.pushed {
            self.dataplane.set_config(t)?;
            self.pushed = t;
        }
        Ok(())
    }

    /// Sets the outer source addresses of tunnelled packets (and reads the kernel's multipath
    /// policy, see [`Controller::refresh_multipath`]).
    pub fn set_tunnel_sources(&mut self, sources: &[IpAddr]) -> Result<(), ControllerError> {
        let mut t = self.pushed;
        crate::tunnel::set_sources(&mut t, sources)?;
        t.flags = (t.flags & !MULTIPATH_FLAGS) | crate::tunnel::multipath_flags();
        self.dataplane.set_config(t)?;
        self.pushed = t;
        Ok(())
    }

    /// Tells the data plane whether the kernel's multipath hash uses ports (GUE routes are then
    /// looked up per flow, not shared per backend); re-read with every neighbour refresh.
    pub fn refresh_multipath(&mut self) -> Result<(), DataplaneError> {
        let flags = (self.pushed.flags & !MULTIPATH_FLAGS) | crate::tunnel::multipath_flags();
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

    /// CONFIG as it must be for `config` with `timeouts`: also its NAT flag (the data plane
    /// looks for NAT replies only while some real server is reached by NAT).
    fn dataplane_config_for(
        &self,
        config: &Config,
        timeouts: Timeouts,
    ) -> Result<DataplaneConfig, ControllerError> {
        let mut c = self.dataplane_config(timeouts)?;
        c.flags &= !config_flags::NAT;
        if crate::dataplane::plan::uses_nat(config) {
            c.flags |= config_flags::NAT;
        }
        Ok(c)
    }

    /// Makes `next` (with `timeouts`) the running configuration: the configured form staged
    /// beside the state file, its effective form (health applied) pushed to the data plane,
    /// then the staged state put in place; only then is it current and are its health checks
    /// reconciled. Whatever fails, the previous configuration is pushed back and the state file
    /// keeps it, so a refused change is nowhere. (After an adoption the data plane is not
    /// pushed back: that would tear down what it still forwards with. Staging first means only
    /// a failed rename, after a successful first sync, can leave it ahead of the state file.)
    fn commit(&mut self, next: Config, timeouts: Timeouts) -> Result<(), ControllerError> {
        let pushed = self.dataplane_config_for(&next, timeouts)?;
        let staged = match &self.state {
            Some(state) => Some(
                state
                    .stage(&next, timeouts, &self.sync_daemons)
                    .map_err(ControllerError::Save)?,
            ),
            None => None,
        };
        let wanted = health::wanted(&next);
        let checked: HashMap<CheckId, bool> =
            wanted.iter().map(|(id, c)| (*id, c.inhibit)).collect();
        let effective = self.effective_of(&next, &checked);
        let adopted = self.dataplane.adoption_pending();
        let result = self.push_and_save(&effective.config, pushed, staged);
        if let Err(e) = &result {
            if adopted {
                warn!("the first configuration after adoption failed; the adopted tables stay");
                if !self.dataplane.adoption_pending() {
                    warn!(error = %e, "the data plane took the configuration over but it was not saved");
                }
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
            self.announce.changed.notify_one();
            self.checked = checked;
            // New checks start, changed ones restart keeping their state, gone ones stop.
            self.health.reconcile(wanted);
        }
        result
    }

    fn push_and_save(
        &mut self,
        effective: &Config,
        pushed: DataplaneConfig,
        staged: Option<crate::state::Staged>,
    ) -> Result<(), ControllerError> {
        if *effective != self.applied.config {
            self.dataplane.sync(effective, &self.macs)?;
        }
        if pushed != self.pushed {
            self.dataplane.set_config(pushed)?;
        }
        if let Some(staged) = staged {
            staged.commit().map_err(ControllerError::Save)?;
        }
        Ok(())
    }

    /// Applies changes as one transaction: validated on a copy, pushed to the data plane,
    /// saved, and only then made current. Returns warnings: tunnelled or NAT real servers whose
    /// family has forwarding off, FULLNAT local addresses the host does not have, service
    /// groups these changes left without a match.
    pub fn apply(&mut self, changes: &[Change]) -> Result<Vec<String>, ControllerError> {
        let mut next = self.config.clone();
        next.apply_all(changes)?;
        self.commit(next, self.timeouts)?;
        Ok(self.warnings(changes))
    }

    fn warnings(&self, changes: &[Change]) -> Vec<String> {
        let mut warnings: Vec<String> = self
            .ifaces
            .iter()
            .flat_map(|i| crate::tunnel::forwarding_warnings(&self.config, i))
            .collect();
        warnings.extend(crate::local_addr::warnings(&self.config));
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
            Some(s) => s.save(&self.config, self.timeouts, &self.sync_daemons),
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
    /// weight 0 when inhibited), sorry servers in while a service is below its quorum (whose
    /// hysteresis starts from what was last applied). `checked`: the checked real servers of
    /// `config` and their inhibit setting.
    fn effective_of(&self, config: &Config, checked: &HashMap<CheckId, bool>) -> Effective {
        health::effective(
            config,
            |id| match checked.get(id) {
                Some(&inhibit) if self.health.is_up(id) == Some(false) => {
                    if inhibit {
                        Membership::Inhibited
                    } else {
                        Membership::Removed
                    }
                }
                _ => Membership::Active,
            },
            &self.applied,
        )
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
        for (key, q) in &effective.quorum {
            match self.applied.quorum.get(key).map(|p| p.up) {
                Some(true) if !q.up => {
                    warn!(service = %key, live_weight = q.live_weight, "service lost its quorum");
                }
                Some(false) if q.up => {
                    info!(service = %key, live_weight = q.live_weight, "service gained its quorum");
                }
                _ => {}
            }
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
        self.announce.changed.notify_one();
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

    /// The real servers reached by NAT or FULLNAT (their replies cross the director), each
    /// once.
    pub fn nat_reals(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .config
            .services()
            .iter()
            .flat_map(|s| s.reals.iter())
            .filter(|r| matches!(r.forward, ForwardMethod::Nat | ForwardMethod::FullNat))
            .map(|r| r.addr.ip())
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

    /// Tunnelled, NAT and FULLNAT real servers' addresses. Poked after every change: the data plane's FIB lookup
    /// needs the neighbour entry of the next hop toward each (the server, or a router), and
    /// nothing else makes the kernel resolve it before the next refresh.
    pub fn routed_reals(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .config
            .services()
            .iter()
            .flat_map(|s| s.reals.iter())
            .filter(|r| {
                matches!(
                    r.forward,
                    ForwardMethod::Tunnel(_) | ForwardMethod::Nat | ForwardMethod::FullNat
                )
            })
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

    /// The sweep's step and the load-aware tables' refresh (each recomputation period).
    pub fn recompute(&mut self) -> Result<usize, DataplaneError> {
        self.dataplane.recompute(&self.applied.config, &self.macs)
    }

    /// Refreshes the load-aware tables from the live counts (each plan period).
    pub fn refresh_plans(&mut self) -> Result<usize, DataplaneError> {
        self.dataplane
            .refresh_plans(&self.applied.config, &self.macs)
    }

    /// The FULLNAT services that refused new connections for want of a local port since the
    /// last call: each with its pool (as `-G` would show it) and how many it refused. The first
    /// call after a start reports what the maps counted before it.
    pub fn fullnat_refusals(&mut self) -> Result<Vec<Refusals>, DataplaneError> {
        let counts = self.dataplane.fullnat_exhausted()?;
        let mut out = Vec::new();
        for svc in self.applied.config.services() {
            let Some(id) = self.dataplane.service_id(&svc.key) else {
                continue;
            };
            let now = counts.get(&id).copied().unwrap_or(0);
            let before = self.refused.insert(id, now).unwrap_or(0);
            if now > before {
                let pool = svc
                    .laddrs
                    .iter()
                    .map(|l| format!("{} ports {}-{}", l.addr, l.ports.lo, l.ports.hi))
                    .collect::<Vec<_>>()
                    .join(", ");
                out.push(Refusals {
                    service: svc.key,
                    pool,
                    refused: now - before,
                });
            }
        }
        Ok(out)
    }

    /// One sampling round of the connection table's pressure at `now` (a monotonic clock):
    /// the rates of new entries and mid-flow misses from the data plane's counters, the fill
    /// the last connection-table walk found (walks happen for the load-aware schedulers,
    /// persistence and NAT each second, and for every listing and metrics scrape: none is made
    /// for this). A warning when the table is under pressure, at most one per
    /// [`pressure::WARN_INTERVAL`].
    pub fn pressure(&mut self, now: Duration) -> Result<Option<pressure::Warning>, DataplaneError> {
        let reasons = self.dataplane.reasons()?;
        let count = |want: Reason| {
            reasons
                .iter()
                .find(|(r, _)| *r == want)
                .map_or(0, |(_, n)| *n)
        };
        self.pressure
            .sample(now, count(Reason::ConnNew), count(Reason::ConnMidflowMiss));
        self.take_fill(now);
        Ok(self
            .pressure
            .check(now, self.dataplane.conn_capacity() as u64))
    }

    /// The data plane's fill, if it is new since the last call (at `now`, close enough: the
    /// recomputation periods run in this task).
    fn take_fill(&mut self, now: Duration) {
        let fill = self.dataplane.table_fill();
        if fill.walks != self.walks_seen {
            self.walks_seen = fill.walks;
            self.pressure.walked(now, fill.entries, fill.live);
        }
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
        // FULLNAT local addresses by (service id, slot), looked up once each.
        let mut locals: HashMap<(u32, u8), Option<IpAddr>> = HashMap::new();
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
                // FULLNAT: the local address and port the real server sees.
                local: (c.entry.lport_be != 0)
                    .then(|| {
                        *locals
                            .entry((c.entry.service, c.entry.local))
                            .or_insert_with(|| {
                                self.dataplane.local_addr(c.entry.service, c.entry.local)
                            })
                    })
                    .flatten()
                    .map(|ip| SocketAddr::new(ip, u16::from_be(c.entry.lport_be))),
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
                local: None,
                expires_s: expires_ns.div_ceil(NS),
            });
        }
        Ok(out)
    }

    /// The configuration with live counters.
    pub fn listing(&mut self) -> Result<Listing, DataplaneError> {
        let counts = self.dataplane.conn_counts()?;
        let refused = self.dataplane.fullnat_exhausted()?;
        let midflow = self.dataplane.midflow_misses()?;
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
                quorum: {
                    let state = self.applied.quorum.get(&svc.key);
                    Some(QuorumStatus {
                        quorum: svc.quorum.quorum,
                        hysteresis: svc.quorum.hysteresis,
                        up: state.map(|q| q.up),
                        live_weight: state.map_or(0, |q| q.live_weight),
                    })
                },
                laddrs: svc.laddrs.clone(),
                fullnat_refused: self
                    .dataplane
                    .service_id(&svc.key)
                    .and_then(|id| refused.get(&id).copied())
                    .unwrap_or(0),
                midflow_misses: self
                    .dataplane
                    .service_id(&svc.key)
                    .and_then(|id| midflow.get(&id).copied())
                    .unwrap_or(0),
                table_digest: self.dataplane.table_digest(&svc.key),
            });
        }
        Ok(Listing {
            drained: self.announce.drained,
            announce: self.announce_status().map(Box::new),
            conn_table_size: self.dataplane.conn_capacity(),
            services,
            reasons: self
                .dataplane
                .reasons()?
                .into_iter()
                .map(|(r, n)| (r.name().to_string(), n))
                .collect(),
            timeouts: self.timeouts,
            // The fill of the last recomputation period (live counts) and sweep cycle, with the
            // rates of the last sample.
            table: {
                let fill = self.dataplane.table_fill();
                TableStatus {
                    entries: fill.entries,
                    live: fill.live,
                    ..self.pressure.status()
                }
            },
            sync_daemons: self
                .sync_daemons
                .iter()
                .map(|d| {
                    let mtu = crate::sync::iface_mtu(&d.mcast_ifn).unwrap_or(1500);
                    let mut status = d.status(mtu, self.sync.stats(d.role));
                    if d.role == Role::Backup {
                        status.table = Some(self.sync.table_status(false));
                    }
                    status
                })
                .collect(),
        })
    }

    /// The desired configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The data plane (tests).
    pub fn dataplane(&self) -> &D {
        &self.dataplane
    }

    /// The data plane, to change (tests inject failures and counters through it).
    pub fn dataplane_mut(&mut self) -> &mut D {
        &mut self.dataplane
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
