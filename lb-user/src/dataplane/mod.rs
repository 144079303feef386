//! The data plane as the controller sees it: loads the director program, attaches it, and turns
//! the desired configuration into map contents.
//!
//! Updates are ordered so that a packet never sees a half-written table: a service's new scheduler
//! table is written into a fresh region of SCHED_SLOTS, and only then does the service's entry
//! (replaced atomically: the map is not preallocated) point at it. The old region is reused only
//! after the next sync, long after any packet that read the old entry has finished.
//!
//! A service group (`-f`) is no different to the program: each of its matches is a key of its
//! own in SERVICES, all pointing at the group's one value (same id, table and flags), so the
//! group shares one persistence template space, one scheduler and one set of counters.

pub mod adopt;
mod batch;
pub mod layout;
pub mod pin;
pub mod regions;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use aya::{
    maps::{
        Array, HashMap as BpfHashMap, MapData, MapError, PerCpuArray, PerCpuValues, ProgramArray,
    },
    programs::{
        links::{FdLink, LinkError, PinnedLink},
        xdp::XdpLink,
        ProgramError, Xdp, XdpMode,
    },
    Ebpf, EbpfError, EbpfLoader,
};
use lb_common::{
    backend_flags,
    filter::{filter_bit, FILTER_WORDS},
    fwd, mask_addr, names,
    reason::REASON_COUNT,
    service_flags, table_kind, Backend, ConnEntry, ConnState, DataplaneConfig, FlowKey, Meta,
    PersistEntry, PersistKey, Reason, ServiceValue, Stats, FAMILY_V4, FAMILY_V6, MAX_BACKENDS,
    MAX_SERVICES, NO_BACKEND,
};
use thiserror::Error;

use crate::{
    kernel_log::{self, KernelLog},
    model::{self, Config, ServiceKey, VirtualAddr},
    object, scheduler,
};
use pin::PinDir;
use regions::{Region, Regions};

/// Errors of the data plane.
#[derive(Debug, Error)]
pub enum DataplaneError {
    /// Loading the object failed (verifier, missing privileges...).
    #[error("loading the eBPF object: {0}")]
    Load(#[from] EbpfError),
    /// Loading or attaching the program failed.
    #[error("program: {0}")]
    Program(#[from] ProgramError),
    /// A map operation failed.
    #[error("map {name}: {source}")]
    Map {
        /// The map.
        name: &'static str,
        /// What failed.
        source: MapError,
    },
    /// The object lacks a map or program this controller needs.
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    /// Out of service ids, backend slots or scheduler slots.
    #[error("data-plane capacity exceeded: {0}")]
    Capacity(String),
    /// Reading the CPU count failed.
    #[error("cannot count CPUs: {0}")]
    Cpus(std::io::Error),
    /// The embedded object could not be parsed for its map layout.
    #[error("the director object: {0}")]
    Object(String),
    /// The pin directory.
    #[error(transparent)]
    Pin(#[from] pin::PinError),
    /// Pinning the program or the link failed.
    #[error("pinning: {0}")]
    Pinning(#[from] aya::pin::PinError),
    /// Opening or converting the pinned XDP link failed.
    #[error("XDP link: {0}")]
    Link(#[from] LinkError),
    /// The pinned data plane was made by an incompatible build.
    #[error(
        "the data plane pinned in {dir} is incompatible with this xvsd: {}; it keeps running untouched. \
         To replace it, losing its connection table, persistence templates, counters and tables \
         (forwarding stops until the configuration is restored), start xvsd with --force-reload",
        reasons.join("; ")
    )]
    Incompatible {
        /// The pin directory.
        dir: std::path::PathBuf,
        /// Every difference found.
        reasons: Vec<String>,
    },
    /// The pinned maps' contents could not be adopted.
    #[error("adopting the pinned data plane: {0}")]
    Adopt(String),
}

fn syscall_err(io_error: std::io::Error) -> aya::sys::SyscallError {
    aya::sys::SyscallError {
        call: "bpf_map_lookup_batch",
        io_error,
    }
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

/// How to attach the director.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
pub enum AttachMode {
    /// Native (driver) XDP.
    Native,
    /// Generic (skb) XDP, for drivers without native support.
    Generic,
}

impl From<AttachMode> for XdpMode {
    fn from(m: AttachMode) -> XdpMode {
        match m {
            AttachMode::Native => XdpMode::Driver,
            AttachMode::Generic => XdpMode::Skb,
        }
    }
}

/// Capacity settings chosen at load time.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    /// Connection-table entries.
    pub conns: u32,
    /// Scheduler slots shared by all services.
    pub sched_slots: u32,
}

impl Default for Sizes {
    fn default() -> Self {
        Self {
            conns: lb_common::DEFAULT_CONN_ENTRIES,
            sched_slots: lb_common::DEFAULT_SCHED_SLOTS,
        }
    }
}

/// A backend slot the controller has handed out.
#[derive(Clone, Copy, Debug)]
struct Slot {
    id: u32,
    written: Backend,
}

/// What the controller has written for one service.
#[derive(Debug)]
struct Placed {
    /// Taken over from a previous xvsd and not rewritten yet: `table`, `kind` and
    /// `value_flags` are what the maps hold, so an identical new table is not republished.
    adopted: bool,
    id: u32,
    region: Region,
    /// The published table (backend ids, NO_BACKEND for empty hash slots) and its kind.
    table: Vec<u32>,
    kind: u8,
    /// ServiceValue's flags, persistence timeout and prefix as published.
    value_flags: (u32, u32, u8),
    /// The scheduler and the state it keeps between recomputations.
    sched: scheduler::Scheduling,
    /// Backend slots by real-server address.
    slots: HashMap<SocketAddr, Slot>,
    /// The service and its servers' MACs as last pushed: an equal pair means nothing to do.
    pushed: Option<(model::Service, Vec<Option<[u8; 6]>>)>,
    /// The SERVICES keys written for it: its own key, or a group's matches.
    keys: Vec<lb_common::ServiceKey>,
}

pub use lb_core::stats::Counters;

/// What the controller did to the data plane, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    /// Successful configuration syncs.
    pub syncs: u64,
    /// How long the last one took.
    pub last_sync: Duration,
    /// Recomputations of the load-aware tables from connection counts.
    pub recomputations: u64,
    /// How long the last one took (connection-table walk included).
    pub last_recomputation: Duration,
    /// Tables the recomputations published.
    pub tables_published: u64,
}

/// Live connection counts of one backend, as IPVS reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnCounts {
    /// ESTABLISHED TCP connections.
    pub active: u64,
    /// Everything else that has not expired.
    pub inactive: u64,
    /// Live persistence templates bound to the backend.
    pub persistent: u64,
}

/// One live connection-table entry, for `-L -c`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// The flow.
    pub key: FlowKey,
    /// Its entry.
    pub entry: ConnEntry,
    /// Nanoseconds until it expires.
    pub expires_in_ns: u64,
}

/// The loaded director and the controller's bookkeeping of what it wrote.
pub struct Dataplane {
    ebpf: Ebpf,
    /// Keeps the tail-call table (and so the programs in it) alive.
    _tail: ProgramArray<MapData>,
    services: BpfHashMap<MapData, lb_common::ServiceKey, ServiceValue>,
    backends: Array<MapData, Backend>,
    slots: Array<MapData, u32>,
    cursors: Array<MapData, u64>,
    conns: BpfHashMap<MapData, FlowKey, ConnEntry>,
    persist: BpfHashMap<MapData, PersistKey, PersistEntry>,
    service_stats: PerCpuArray<MapData, Stats>,
    backend_stats: PerCpuArray<MapData, Stats>,
    reasons: PerCpuArray<MapData, u64>,
    config: Array<MapData, DataplaneConfig>,
    filter_map: Array<MapData, u64>,
    meta: Array<MapData, Meta>,
    /// SERVICE_FILTER as written.
    filter: Vec<u64>,
    sizes: Sizes,
    cpus: usize,
    placed: HashMap<ServiceKey, Placed>,
    /// Which service last wrote each SERVICES key: a key that moves from one service to
    /// another within a sync (a match handed over between groups) is removed only by its
    /// current owner, whatever order the services are synced in.
    owners: HashMap<lb_common::ServiceKey, ServiceKey>,
    free_service_ids: Vec<u32>,
    free_backend_ids: Vec<u32>,
    next_generation: u32,
    regions: Regions,
    quarantine: Vec<Region>,
    attached: bool,
    /// Table tunables (Maglev size, plan length).
    params: scheduler::Params,
    /// Connection counts per backend slot from the last scan (load-aware schedulers).
    counts: HashMap<u32, ConnCounts>,
    /// The pin directory (locked) when the data plane is pinned.
    pins: Option<PinDir>,
    /// The XDP link this controller attached and pinned (an adopted link lives in the program).
    link: Option<PinnedLink>,
    /// What a previous xvsd left in the maps, until the first sync takes it over.
    inherited: Option<adopt::Inherited>,
    activity: Activity,
    /// The reader of the programs' log, with `--kernel-log`, until xvsd takes it.
    kernel_logger: Option<kernel_log::Logger>,
}

impl Dataplane {
    /// Loads the director (not attached yet) with the default sizes.
    pub fn load() -> Result<Self, DataplaneError> {
        Self::load_with(Sizes::default())
    }

    /// Loads the director with these map sizes.
    pub fn load_with(sizes: Sizes) -> Result<Self, DataplaneError> {
        Self::load_inner(sizes, None, true, KernelLog::Off)
    }

    /// Loads the director. With a pin directory every map is opened from its pin, or created
    /// and pinned there when it has none; `fresh` maps get their initial contents.
    fn load_inner(
        sizes: Sizes,
        pins: Option<&PinDir>,
        fresh: bool,
        kernel_log: KernelLog,
    ) -> Result<Self, DataplaneError> {
        let pinned: Vec<(String, std::path::PathBuf)> = match pins {
            Some(dir) => layout::expected(sizes)?
                .iter()
                .map(|m| (m.name_str().to_string(), dir.map(m.name_str())))
                .collect(),
            None => Vec::new(),
        };
        let level = kernel_log.level();
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(names::MAP_CONNS, sizes.conns)
            .map_max_entries(names::MAP_SCHED_SLOTS, sizes.sched_slots)
            .override_global(kernel_log::LEVEL_GLOBAL, &level, true);
        for (name, path) in &pinned {
            loader.map_pin_path(name.as_str(), path.clone());
        }
        let mut ebpf = loader.load(object::DIRECTOR)?;
        let prog: &mut Xdp = ebpf
            .program_mut(names::PROG_DIRECTOR)
            .ok_or(DataplaneError::Missing(names::PROG_DIRECTOR))?
            .try_into()?;
        prog.load()?;
        // The programs the director tail-calls: TUN encapsulation and the ICMP relay. A pinned
        // TAIL_CALLS is reused: each entry is replaced by this build's program in one step, and
        // the pin keeps the entries after xvsd exits (a program array is emptied when its last
        // user reference goes, and a pin is one).
        let mut tail = ProgramArray::try_from(
            ebpf.take_map(names::MAP_TAIL_CALLS)
                .ok_or(DataplaneError::Missing(names::MAP_TAIL_CALLS))?,
        )
        .map_err(map_err(names::MAP_TAIL_CALLS))?;
        for (index, name) in [
            (lb_common::TAIL_TUNNEL, names::PROG_TUNNEL),
            (lb_common::TAIL_ICMP, names::PROG_ICMP),
        ] {
            let p: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or(DataplaneError::Missing(name))?
                .try_into()?;
            p.load()?;
            tail.set(index, p.fd()?, 0)
                .map_err(map_err(names::MAP_TAIL_CALLS))?;
        }
        let mut take =
            |name: &'static str| ebpf.take_map(name).ok_or(DataplaneError::Missing(name));
        let services = BpfHashMap::try_from(take(names::MAP_SERVICES)?)
            .map_err(map_err(names::MAP_SERVICES))?;
        let backends =
            Array::try_from(take(names::MAP_BACKENDS)?).map_err(map_err(names::MAP_BACKENDS))?;
        let slots = Array::try_from(take(names::MAP_SCHED_SLOTS)?)
            .map_err(map_err(names::MAP_SCHED_SLOTS))?;
        let cursors = Array::try_from(take(names::MAP_SEQ_CURSOR)?)
            .map_err(map_err(names::MAP_SEQ_CURSOR))?;
        let conns =
            BpfHashMap::try_from(take(names::MAP_CONNS)?).map_err(map_err(names::MAP_CONNS))?;
        let persist =
            BpfHashMap::try_from(take(names::MAP_PERSIST)?).map_err(map_err(names::MAP_PERSIST))?;
        let service_stats = PerCpuArray::try_from(take(names::MAP_SERVICE_STATS)?)
            .map_err(map_err(names::MAP_SERVICE_STATS))?;
        let backend_stats = PerCpuArray::try_from(take(names::MAP_BACKEND_STATS)?)
            .map_err(map_err(names::MAP_BACKEND_STATS))?;
        let reasons = PerCpuArray::try_from(take(names::MAP_REASONS)?)
            .map_err(map_err(names::MAP_REASONS))?;
        let mut config: Array<MapData, DataplaneConfig> =
            Array::try_from(take(names::MAP_CONFIG)?).map_err(map_err(names::MAP_CONFIG))?;
        if fresh {
            config
                .set(0, DataplaneConfig::default(), 0)
                .map_err(map_err(names::MAP_CONFIG))?;
        }
        let filter_map = Array::try_from(take(names::MAP_SERVICE_FILTER)?)
            .map_err(map_err(names::MAP_SERVICE_FILTER))?;
        let meta = Array::try_from(take(names::MAP_META)?).map_err(map_err(names::MAP_META))?;
        // After every program is loaded: the logger takes the log map out of `ebpf`.
        let kernel_logger = match kernel_log {
            KernelLog::Off => None,
            _ => Some(
                aya_log::EbpfLogger::init(&mut ebpf)
                    .map_err(|e| DataplaneError::Object(format!("kernel log: {e}")))?,
            ),
        };
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Cpus(e))?;
        Ok(Self {
            ebpf,
            _tail: tail,
            services,
            backends,
            slots,
            cursors,
            conns,
            persist,
            service_stats,
            backend_stats,
            reasons,
            config,
            filter_map,
            meta,
            filter: vec![0; FILTER_WORDS as usize],
            sizes,
            cpus,
            placed: HashMap::new(),
            owners: HashMap::new(),
            free_service_ids: (0..MAX_SERVICES).rev().collect(),
            free_backend_ids: (0..MAX_BACKENDS).rev().collect(),
            next_generation: 1,
            regions: Regions::new(sizes.sched_slots),
            quarantine: Vec::new(),
            attached: false,
            params: scheduler::Params::default(),
            counts: HashMap::new(),
            pins: None,
            link: None,
            inherited: None,
            activity: Activity::default(),
            kernel_logger,
        })
    }

    /// The reader of the data plane's log (`--kernel-log`), once.
    pub fn take_kernel_logger(&mut self) -> Option<kernel_log::Logger> {
        self.kernel_logger.take()
    }

    /// The director program (for BPF_PROG_TEST_RUN in tests and benchmarks).
    pub fn program(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(names::PROG_DIRECTOR)
            .and_then(|p| p.try_into().ok())
            .expect("director program was loaded in load_with")
    }

    /// Attaches the director to an interface. It stays attached until this value is dropped.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<(), DataplaneError> {
        self.program().attach(iface, mode.into())?;
        self.attached = true;
        Ok(())
    }

    /// Attaches the director and pins the link and the program in `dir`: it then stays
    /// attached after this value is dropped, until the link's pin is removed.
    fn attach_pinned(
        &mut self,
        iface: &str,
        mode: AttachMode,
        dir: &PinDir,
    ) -> Result<(), DataplaneError> {
        let id = self.program().attach(iface, mode.into())?;
        let link = self.program().take_link(id)?;
        let link = FdLink::try_from(link)?;
        self.link = Some(link.pin(dir.link())?);
        self.program().pin(dir.prog())?;
        self.attached = true;
        Ok(())
    }

    /// Swaps this program in on the link pinned in `dir` (bpf_link_update: one atomic step,
    /// the interface is never without a program), and pins it in place of the previous one.
    fn replace_on_link(&mut self, dir: &PinDir) -> Result<(), DataplaneError> {
        let link = XdpLink::try_from(FdLink::from(PinnedLink::from_pin(dir.link())?))?;
        self.program().attach_to_link(link)?;
        match std::fs::remove_file(dir.prog()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(pin::PinError::Io {
                    what: "removing",
                    path: dir.prog(),
                    source,
                }
                .into())
            }
        }
        self.program().pin(dir.prog())?;
        self.attached = true;
        Ok(())
    }

    /// The pin directory, when the data plane is pinned.
    pub fn pin_dir(&self) -> Option<&std::path::Path> {
        self.pins.as_ref().map(|d| d.path())
    }

    /// What the controller did to the data plane so far.
    pub fn activity(&self) -> Activity {
        self.activity
    }

    /// The global settings the data plane runs with (an adopted data plane keeps its own).
    pub fn current_config(&self) -> Result<DataplaneConfig, DataplaneError> {
        self.config.get(&0, 0).map_err(map_err(names::MAP_CONFIG))
    }

    /// Connection-table capacity.
    pub fn conn_capacity(&self) -> u32 {
        self.sizes.conns
    }

    /// Writes global timeouts.
    pub fn set_config(&mut self, cfg: DataplaneConfig) -> Result<(), DataplaneError> {
        self.config
            .set(0, cfg, 0)
            .map_err(map_err(names::MAP_CONFIG))
    }

    /// Makes the maps match `config`. Real servers whose MAC is not in `macs` get no new
    /// connections until it is. Capacity is checked before anything is written.
    ///
    /// After an adoption, the first sync takes over what the previous xvsd left: services and
    /// real servers of `config` that match keep their ids (and so their connections, templates
    /// and counters); whatever `config` does not name is removed.
    pub fn sync(
        &mut self,
        config: &Config,
        macs: &HashMap<IpAddr, [u8; 6]>,
    ) -> Result<(), DataplaneError> {
        let started = Instant::now();
        self.sync_inner(config, macs)?;
        self.activity.syncs += 1;
        self.activity.last_sync = started.elapsed();
        Ok(())
    }

    fn sync_inner(
        &mut self,
        config: &Config,
        macs: &HashMap<IpAddr, [u8; 6]>,
    ) -> Result<(), DataplaneError> {
        self.check_capacity(config, macs)?;
        // Regions freed by the previous sync are no longer read by any packet.
        for r in std::mem::take(&mut self.quarantine) {
            self.regions.free(r);
        }
        // After an adoption, first take over what the configuration still has, so the counts
        // below cover the adopted real servers' connections.
        if let Some(inherited) = self.inherited.take() {
            self.take_over(config, inherited)?;
        }
        // Tables that depend on connection counts are computed from fresh ones.
        if config.services().iter().any(table_uses_counts) {
            self.counts = self.scan()?;
        }
        // New services' filter bits go in before the services, removed ones' after.
        let want = filter_words(config);
        let widened: Vec<u64> = self.filter.iter().zip(&want).map(|(c, w)| c | w).collect();
        self.write_filter(widened)?;
        // Services that went away: unpublish first, then free their backends and region.
        let gone: Vec<ServiceKey> = self
            .placed
            .keys()
            .filter(|k| config.service(k).is_none())
            .copied()
            .collect();
        for key in gone {
            self.remove_service(&key)?;
        }
        for svc in config.services() {
            self.sync_service(svc, macs)?;
        }
        self.write_filter(want)
    }

    fn write_filter(&mut self, want: Vec<u64>) -> Result<(), DataplaneError> {
        for (i, (cur, w)) in self.filter.iter_mut().zip(&want).enumerate() {
            if cur != w {
                self.filter_map
                    .set(i as u32, *w, 0)
                    .map_err(map_err(names::MAP_SERVICE_FILTER))?;
                *cur = *w;
            }
        }
        Ok(())
    }

    fn check_capacity(
        &self,
        config: &Config,
        macs: &HashMap<IpAddr, [u8; 6]>,
    ) -> Result<(), DataplaneError> {
        if config.services().len() > MAX_SERVICES as usize {
            return Err(DataplaneError::Capacity(format!(
                "{} services (at most {MAX_SERVICES})",
                config.services().len()
            )));
        }
        // SERVICES holds one key per normal service and per group match.
        let keys: usize = config.services().iter().map(|s| bpf_keys(s).len()).sum();
        if keys > MAX_SERVICES as usize {
            return Err(DataplaneError::Capacity(format!(
                "{keys} service addresses including group matches (at most {MAX_SERVICES})"
            )));
        }
        let backends: usize = config.services().iter().map(|s| s.reals.len()).sum();
        if backends > MAX_BACKENDS as usize {
            return Err(DataplaneError::Capacity(format!(
                "{backends} real servers over all services (at most {MAX_BACKENDS})"
            )));
        }
        // Worst case: every changed service gets a new table while the old ones are still live.
        let need: u64 = config
            .services()
            .iter()
            .filter(|s| {
                let m: Vec<_> = s.reals.iter().map(|r| next_hop_mac(r, macs)).collect();
                !self
                    .placed
                    .get(&s.key)
                    .and_then(|p| p.pushed.as_ref())
                    .is_some_and(|(ps, pm)| ps == *s && *pm == m)
            })
            .map(|s| table_upper_bound(s, &self.params) as u64)
            .sum();
        let in_use: u64 = self
            .placed
            .values()
            .map(|p| p.region.len as u64)
            .sum::<u64>()
            + self.quarantine.iter().map(|r| r.len as u64).sum::<u64>()
            + self.inherited.as_ref().map_or(0, |i| i.slots_in_use());
        if need + in_use > self.sizes.sched_slots as u64 {
            return Err(DataplaneError::Capacity(format!(
                "scheduler tables need up to {need} slots, {} available",
                self.sizes.sched_slots as u64 - in_use
            )));
        }
        Ok(())
    }

    fn remove_service(&mut self, key: &ServiceKey) -> Result<(), DataplaneError> {
        let Some(p) = self.placed.remove(key) else {
            return Ok(());
        };
        for k in &p.keys {
            self.unpublish_key(key, k)?;
        }
        self.quarantine.push(p.region);
        self.free_service_ids.push(p.id);
        for slot in p.slots.into_values() {
            self.free_backend(slot)?;
        }
        Ok(())
    }

    /// Removes a SERVICES key that `owner` wrote, unless another service has taken it since.
    fn unpublish_key(
        &mut self,
        owner: &ServiceKey,
        k: &lb_common::ServiceKey,
    ) -> Result<(), DataplaneError> {
        if self.owners.get(k) != Some(owner) {
            return Ok(());
        }
        self.owners.remove(k);
        match self.services.remove(k) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(names::MAP_SERVICES)(e)),
        }
    }

    /// Writes a service's value under one of its keys.
    fn publish_key(
        &mut self,
        owner: &ServiceKey,
        k: &lb_common::ServiceKey,
        value: ServiceValue,
    ) -> Result<(), DataplaneError> {
        self.services
            .insert(k, value, 0)
            .map_err(map_err(names::MAP_SERVICES))?;
        self.owners.insert(*k, *owner);
        Ok(())
    }

    fn free_backend(&mut self, slot: Slot) -> Result<(), DataplaneError> {
        // Generation 0: connection entries bound to this slot see that their server is gone.
        self.backends
            .set(slot.id, Backend::default(), 0)
            .map_err(map_err(names::MAP_BACKENDS))?;
        self.free_backend_ids.push(slot.id);
        Ok(())
    }

    fn sync_service(
        &mut self,
        svc: &model::Service,
        macs: &HashMap<IpAddr, [u8; 6]>,
    ) -> Result<(), DataplaneError> {
        let key = svc.key;
        let svc_macs: Vec<Option<[u8; 6]>> =
            svc.reals.iter().map(|r| next_hop_mac(r, macs)).collect();
        if let Some(p) = self.placed.get(&key) {
            if p.pushed
                .as_ref()
                .is_some_and(|(s, m)| s == svc && *m == svc_macs)
            {
                return Ok(());
            }
        }
        let mut placed = match self.placed.remove(&key) {
            Some(p) => p,
            None => {
                let id = self
                    .free_service_ids
                    .pop()
                    .ok_or_else(|| DataplaneError::Capacity("service ids".into()))?;
                zero_stats(
                    &mut self.service_stats,
                    id,
                    self.cpus,
                    names::MAP_SERVICE_STATS,
                )?;
                Placed {
                    adopted: false,
                    id,
                    region: Region { off: 0, len: 0 },
                    table: Vec::new(),
                    kind: table_kind::SEQUENCE,
                    value_flags: (0, 0, 0),
                    sched: scheduler::Scheduling::new(svc.scheduler, svc.flags),
                    slots: HashMap::new(),
                    pushed: None,
                    keys: Vec::new(),
                }
            }
        };
        let result = self.sync_placed(svc, &svc_macs, &mut placed);
        if result.is_ok() {
            placed.pushed = Some((svc.clone(), svc_macs));
        }
        self.placed.insert(key, placed);
        result
    }

    fn sync_placed(
        &mut self,
        svc: &model::Service,
        svc_macs: &[Option<[u8; 6]>],
        placed: &mut Placed,
    ) -> Result<(), DataplaneError> {
        // Real servers removed from this service.
        let stale: Vec<SocketAddr> = placed
            .slots
            .keys()
            .filter(|a| !svc.reals.iter().any(|r| r.addr == **a))
            .copied()
            .collect();
        for a in stale {
            if let Some(slot) = placed.slots.remove(&a) {
                self.free_backend(slot)?;
            }
        }
        // Backends, in the service's order; a server without a MAC takes no new connections.
        let mut ids = Vec::with_capacity(svc.reals.len());
        let mut weights = Vec::with_capacity(svc.reals.len());
        for (real, mac) in svc.reals.iter().zip(svc_macs) {
            ids.push(self.place_backend(
                placed.id,
                &mut placed.slots,
                real,
                mac.unwrap_or_default(),
            )?);
            weights.push(if mac.is_some() { real.weight } else { 0 });
        }
        if placed.sched.scheduler != svc.scheduler || placed.sched.flags != svc.flags {
            placed.sched = scheduler::Scheduling::new(svc.scheduler, svc.flags);
        }
        let dests: Vec<scheduler::Dest> = svc
            .reals
            .iter()
            .zip(&weights)
            .zip(&ids)
            .map(|((r, &weight), id)| {
                let c = self.counts.get(id).copied().unwrap_or_default();
                scheduler::Dest {
                    addr: r.addr,
                    weight,
                    active: c.active.min(u32::MAX as u64) as u32,
                    inactive: c.inactive.min(u32::MAX as u64) as u32,
                    u_threshold: r.u_threshold,
                    l_threshold: r.l_threshold,
                }
            })
            .collect();
        let to_ids = |v: Vec<u32>| -> Vec<u32> {
            v.into_iter()
                .map(|i| {
                    if i == scheduler::NO_DEST {
                        NO_BACKEND
                    } else {
                        ids[i as usize]
                    }
                })
                .collect()
        };
        let (kind, table) = match placed.sched.table(&dests, &self.params) {
            scheduler::Table::Sequence(v) => (table_kind::SEQUENCE, to_ids(v)),
            scheduler::Table::Hash { input, slots } => {
                let kind = match input {
                    scheduler::HashInput::Source => table_kind::HASH_SRC,
                    scheduler::HashInput::SourcePort => table_kind::HASH_SRC_PORT,
                    scheduler::HashInput::Destination => table_kind::HASH_DST,
                };
                // A hash table with no server anywhere is no table: drop early.
                if slots.iter().all(|&s| s == scheduler::NO_DEST) {
                    (kind, Vec::new())
                } else {
                    (kind, to_ids(slots))
                }
            }
        };
        let (flags, persist_timeout_s, persist_prefix) = match svc.persistence {
            Some(p) => (service_flags::PERSISTENT, p.timeout, p.prefix),
            None => (0, 0, 0),
        };
        let value = ServiceValue {
            id: placed.id,
            flags,
            table_off: 0,
            table_len: 0,
            persist_timeout_s,
            table_kind: kind,
            persist_prefix,
            _pad: [0; 2],
        };
        let keys = bpf_keys(svc);
        if (placed.pushed.is_some() || placed.adopted)
            && placed.table == table
            && placed.kind == kind
            && placed.value_flags == (flags, persist_timeout_s, persist_prefix)
        {
            // Same table and flags: only a group's matches may have changed. New keys get the
            // published value; keys that went away are dropped below.
            let value = ServiceValue {
                table_off: placed.region.off,
                table_len: placed.region.len,
                ..value
            };
            for k in keys.iter().filter(|k| !placed.keys.contains(k)) {
                self.publish_key(&svc.key, k, value)?;
            }
        } else {
            let region = if table.is_empty() {
                Region { off: 0, len: 0 }
            } else {
                self.regions.alloc(table.len() as u32).ok_or_else(|| {
                    DataplaneError::Capacity(format!("no room for a {}-slot table", table.len()))
                })?
            };
            for (i, b) in table.iter().enumerate() {
                self.slots
                    .set(region.off + i as u32, *b, 0)
                    .map_err(map_err(names::MAP_SCHED_SLOTS))?;
            }
            let value = ServiceValue {
                table_off: region.off,
                table_len: region.len,
                ..value
            };
            // Every key points at the new region before the old one is quarantined.
            for k in &keys {
                self.publish_key(&svc.key, k, value)?;
            }
            // A new plan is handed out from its head.
            self.cursors
                .set(placed.id, 0, 0)
                .map_err(map_err(names::MAP_SEQ_CURSOR))?;
            self.quarantine
                .push(std::mem::replace(&mut placed.region, region));
            placed.table = table;
            placed.kind = kind;
            placed.value_flags = (flags, persist_timeout_s, persist_prefix);
            placed.adopted = false;
        }
        // Keys the service no longer has (a removed match): unpublished, so their traffic
        // passes (their filter bits are cleared at the end of the sync).
        let stale: Vec<lb_common::ServiceKey> = placed
            .keys
            .iter()
            .filter(|k| !keys.contains(k))
            .copied()
            .collect();
        for k in &stale {
            self.unpublish_key(&svc.key, k)?;
        }
        placed.keys = keys;
        Ok(())
    }

    fn place_backend(
        &mut self,
        service_id: u32,
        slots: &mut HashMap<SocketAddr, Slot>,
        real: &model::RealServer,
        mac: [u8; 6],
    ) -> Result<u32, DataplaneError> {
        let (addr, family) = addr_bytes(real.addr.ip());
        let mut want = Backend {
            addr,
            mac,
            port_be: real.addr.port().to_be(),
            family,
            fwd: match real.forward {
                model::ForwardMethod::Dr => fwd::DR,
                model::ForwardMethod::Tunnel(t) => match t.kind {
                    model::TunnelKind::Ipip => fwd::TUN_IPIP,
                    model::TunnelKind::Gue => fwd::TUN_GUE,
                },
            },
            flags: match real.forward {
                model::ForwardMethod::Tunnel(t) if t.csum => backend_flags::TUN_CSUM,
                _ => 0,
            },
            _pad: 0,
            generation: 0,
            tun_port_be: match real.forward {
                model::ForwardMethod::Tunnel(t) => t.port.to_be(),
                model::ForwardMethod::Dr => 0,
            },
            _pad2: [0; 2],
            service: service_id,
        };
        if let Some(slot) = slots.get_mut(&real.addr) {
            want.generation = slot.written.generation;
            if slot.written != want {
                self.backends
                    .set(slot.id, want, 0)
                    .map_err(map_err(names::MAP_BACKENDS))?;
                slot.written = want;
            }
            return Ok(slot.id);
        }
        let id = self
            .free_backend_ids
            .pop()
            .ok_or_else(|| DataplaneError::Capacity("backend slots".into()))?;
        want.generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        zero_stats(
            &mut self.backend_stats,
            id,
            self.cpus,
            names::MAP_BACKEND_STATS,
        )?;
        self.backends
            .set(id, want, 0)
            .map_err(map_err(names::MAP_BACKENDS))?;
        slots.insert(real.addr, Slot { id, written: want });
        Ok(id)
    }

    /// The backend slot id of a real server (tests and stats use it).
    pub fn backend_id(&self, key: &ServiceKey, addr: SocketAddr) -> Option<u32> {
        self.placed.get(key)?.slots.get(&addr).map(|s| s.id)
    }

    /// What a backend slot holds (tests check generations across an adoption).
    pub fn backend_entry(&self, id: u32) -> Option<Backend> {
        self.backends.get(&id, 0).ok()
    }

    /// The service id of a service.
    pub fn service_id(&self, key: &ServiceKey) -> Option<u32> {
        self.placed.get(key).map(|p| p.id)
    }

    /// The value the data plane holds for a (protocol, VIP, port), if any (tests check that
    /// every match of a group points at the group's current table).
    pub fn published_value(&self, v: &VirtualAddr) -> Option<ServiceValue> {
        self.services.get(&to_bpf_key(v), 0).ok()
    }

    /// The scheduler table currently published for a service (backend ids).
    pub fn published_table(&self, key: &ServiceKey) -> Option<&[u32]> {
        self.placed.get(key).map(|p| p.table.as_slice())
    }

    /// Summed counters of a service.
    pub fn service_counters(&self, key: &ServiceKey) -> Result<Counters, DataplaneError> {
        match self.service_id(key) {
            Some(id) => sum_stats(&self.service_stats, id, names::MAP_SERVICE_STATS),
            None => Ok(Counters::default()),
        }
    }

    /// Summed counters of a real server of a service.
    pub fn backend_counters(
        &self,
        key: &ServiceKey,
        addr: SocketAddr,
    ) -> Result<Counters, DataplaneError> {
        match self.backend_id(key, addr) {
            Some(id) => sum_stats(&self.backend_stats, id, names::MAP_BACKEND_STATS),
            None => Ok(Counters::default()),
        }
    }

    /// Every reason counter, summed over CPUs.
    pub fn reasons(&self) -> Result<Vec<(Reason, u64)>, DataplaneError> {
        let mut out = Vec::with_capacity(REASON_COUNT as usize);
        for r in Reason::ALL {
            let v = self
                .reasons
                .get(&(r as u32), 0)
                .map_err(map_err(names::MAP_REASONS))?;
            out.push((r, v.iter().sum()));
        }
        Ok(out)
    }

    /// Live (unexpired) connections and persistence templates per backend slot, split as
    /// IPVS's ActiveConn / InActConn / PersistConn. Walks both tables in batches: O(entries).
    /// Also keeps alive the templates that still control a live connection, as IPVS does (a
    /// template does not expire while connections it placed are alive).
    pub fn scan(&mut self) -> Result<HashMap<u32, ConnCounts>, DataplaneError> {
        let now = monotonic_ns();
        let cfg = self.config.get(&0, 0).map_err(map_err(names::MAP_CONFIG))?;
        // Dense tables indexed by slot / service id: the walk touches millions of entries, so
        // each one costs two array reads, not hash lookups.
        let mut generations = vec![0u32; MAX_BACKENDS as usize];
        for (id, g) in self.generations()? {
            generations[id as usize] = g;
        }
        // Persistent services: id -> (prefix, timeout ns).
        let mut persistent: Vec<Option<(u8, u64)>> = vec![None; MAX_SERVICES as usize];
        for p in self
            .placed
            .values()
            .filter(|p| p.value_flags.0 & service_flags::PERSISTENT != 0)
        {
            persistent[p.id as usize] =
                Some((p.value_flags.2, p.value_flags.1 as u64 * 1_000_000_000));
        }
        let live = |backend: u32, generation: u32| {
            generation != 0 && generations.get(backend as usize) == Some(&generation)
        };
        let mut dense = vec![ConnCounts::default(); MAX_BACKENDS as usize];
        let mut in_use: HashMap<PersistKey, u64> = HashMap::new();
        batch::for_each(&self.conns, |k, e| {
            let state = ConnState::from_u8(e.state);
            if now.saturating_sub(e.last_seen_ns) > timeout_of(&cfg, state)
                || !live(e.backend, e.generation)
            {
                return;
            }
            let c = &mut dense[e.backend as usize];
            if state.is_active() {
                c.active += 1;
            } else {
                c.inactive += 1;
            }
            if let Some(Some((prefix, _))) = persistent.get(e.service as usize) {
                let pk = PersistKey {
                    client: mask_addr(&k.src, *prefix),
                    service: e.service,
                    family: k.family,
                    _pad: [0; 3],
                };
                let t = in_use.entry(pk).or_default();
                *t = (*t).max(e.last_seen_ns);
            }
        })
        .map_err(|e| map_err(names::MAP_CONNS)(MapError::SyscallError(syscall_err(e))))?;
        let mut refresh = Vec::new();
        batch::for_each(&self.persist, |k, t| {
            let Some(Some((_, timeout))) = persistent.get(k.service as usize).copied() else {
                return;
            };
            if !live(t.backend, t.generation) {
                return;
            }
            let last = in_use.get(k).copied().unwrap_or(0).max(t.last_seen_ns);
            if now.saturating_sub(last) > timeout {
                return;
            }
            dense[t.backend as usize].persistent += 1;
            if last > t.last_seen_ns {
                refresh.push((
                    *k,
                    PersistEntry {
                        last_seen_ns: last,
                        ..*t
                    },
                ));
            }
        })
        .map_err(|e| map_err(names::MAP_PERSIST)(MapError::SyscallError(syscall_err(e))))?;
        for (k, t) in refresh {
            // The data plane may have replaced it meanwhile; BPF_EXIST keeps a vanished one gone.
            match self.persist.insert(k, t, 2) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(map_err(names::MAP_PERSIST)(e)),
            }
        }
        Ok(dense
            .into_iter()
            .enumerate()
            .filter(|(_, c)| *c != ConnCounts::default())
            .map(|(id, c)| (id as u32, c))
            .collect())
    }

    /// Whether any service needs the periodic walk: load-aware tables, thresholds, or
    /// persistence templates to keep alive.
    pub fn needs_walk(&self, config: &Config) -> bool {
        config
            .services()
            .iter()
            .any(|s| table_uses_counts(s) || s.persistence.is_some())
    }

    /// Every live persistence template (for `-L -c`), at most `limit`: key, entry, ns until it
    /// expires (if no connection refreshes it).
    pub fn templates(
        &self,
        limit: usize,
    ) -> Result<Vec<(PersistKey, PersistEntry, u64)>, DataplaneError> {
        let now = monotonic_ns();
        let generations = self.generations()?;
        let timeouts: HashMap<u32, u64> = self
            .placed
            .values()
            .filter(|p| p.value_flags.0 & service_flags::PERSISTENT != 0)
            .map(|p| (p.id, p.value_flags.1 as u64 * 1_000_000_000))
            .collect();
        let mut out = Vec::new();
        batch::for_each(&self.persist, |k, t| {
            let Some(&timeout) = timeouts.get(&k.service) else {
                return;
            };
            let age = now.saturating_sub(t.last_seen_ns);
            if out.len() < limit
                && age <= timeout
                && generations.get(&t.backend) == Some(&t.generation)
            {
                out.push((*k, *t, timeout - age));
            }
        })
        .map_err(|e| map_err(names::MAP_PERSIST)(MapError::SyscallError(syscall_err(e))))?;
        Ok(out)
    }

    /// Every live connection (for `-L -c`), at most `limit`.
    pub fn connections(&self, limit: usize) -> Result<Vec<ConnInfo>, DataplaneError> {
        let now = monotonic_ns();
        let cfg = self.config.get(&0, 0).map_err(map_err(names::MAP_CONFIG))?;
        let generations = self.generations()?;
        let mut out = Vec::new();
        batch::for_each(&self.conns, |k, e| {
            let state = ConnState::from_u8(e.state);
            let age = now.saturating_sub(e.last_seen_ns);
            let timeout = timeout_of(&cfg, state);
            if out.len() < limit
                && age <= timeout
                && generations.get(&e.backend) == Some(&e.generation)
            {
                out.push(ConnInfo {
                    key: *k,
                    entry: *e,
                    expires_in_ns: timeout - age,
                });
            }
        })
        .map_err(|e| map_err(names::MAP_CONNS)(MapError::SyscallError(syscall_err(e))))?;
        Ok(out)
    }

    /// Generations of the backend slots in use.
    fn generations(&self) -> Result<HashMap<u32, u32>, DataplaneError> {
        Ok(self
            .placed
            .values()
            .flat_map(|p| p.slots.values().map(|s| (s.id, s.written.generation)))
            .collect())
    }

    /// Live connection counts per backend (a fresh scan).
    pub fn conn_counts(&mut self) -> Result<HashMap<u32, ConnCounts>, DataplaneError> {
        self.scan()
    }

    /// Recomputes the tables of the load-aware schedulers from fresh connection counts and
    /// publishes those that changed. Returns how many tables were published.
    pub fn recompute(
        &mut self,
        config: &Config,
        macs: &HashMap<IpAddr, [u8; 6]>,
    ) -> Result<usize, DataplaneError> {
        if !self.needs_walk(config) {
            return Ok(0);
        }
        let started = Instant::now();
        let published = self.recompute_tables(config, macs)?;
        self.activity.recomputations += 1;
        self.activity.last_recomputation = started.elapsed();
        self.activity.tables_published += published as u64;
        Ok(published)
    }

    fn recompute_tables(
        &mut self,
        config: &Config,
        macs: &HashMap<IpAddr, [u8; 6]>,
    ) -> Result<usize, DataplaneError> {
        self.counts = self.scan()?;
        for r in std::mem::take(&mut self.quarantine) {
            self.regions.free(r);
        }
        let mut published = 0;
        for svc in config.services() {
            let Some(mut placed) = self.placed.remove(&svc.key) else {
                continue;
            };
            if !table_uses_counts(svc) {
                self.placed.insert(svc.key, placed);
                continue;
            }
            let svc_macs: Vec<Option<[u8; 6]>> = svc
                .reals
                .iter()
                .map(|r| macs.get(&r.addr.ip()).copied())
                .collect();
            let before = placed.region;
            let result = self.sync_placed(svc, &svc_macs, &mut placed);
            if placed.region != before {
                published += 1;
            }
            self.placed.insert(svc.key, placed);
            result?;
        }
        Ok(published)
    }

    /// Sets the table tunables (Maglev size, plan length) used from the next sync on.
    pub fn set_params(&mut self, params: scheduler::Params) {
        self.params = params;
    }

    /// Raw connection-table entries (tests).
    pub fn conn_entry(&self, key: &FlowKey) -> Option<ConnEntry> {
        self.conns.get(key, 0).ok()
    }

    /// Zeroes the counters of every service and backend in use (`-Z`).
    pub fn zero_counters(&mut self) -> Result<(), DataplaneError> {
        let keys: Vec<ServiceKey> = self.placed.keys().copied().collect();
        for key in keys {
            self.zero_service_counters(&key)?;
        }
        Ok(())
    }

    /// Zeroes the counters of one service and of its backends (`-Z -t VIP:port`).
    pub fn zero_service_counters(&mut self, key: &ServiceKey) -> Result<(), DataplaneError> {
        let Some(p) = self.placed.get(key) else {
            return Ok(());
        };
        let id = p.id;
        let backends: Vec<u32> = p.slots.values().map(|s| s.id).collect();
        zero_stats(
            &mut self.service_stats,
            id,
            self.cpus,
            names::MAP_SERVICE_STATS,
        )?;
        for id in backends {
            zero_stats(
                &mut self.backend_stats,
                id,
                self.cpus,
                names::MAP_BACKEND_STATS,
            )?;
        }
        Ok(())
    }

    /// Whether the program is attached to an interface.
    pub fn is_attached(&self) -> bool {
        self.attached
    }
}

/// Whether a service's table depends on live connection counts: a load-aware scheduler, or
/// thresholds (overload flags change any scheduler's choices).
fn table_uses_counts(svc: &model::Service) -> bool {
    scheduler::is_load_aware(svc.scheduler) || svc.reals.iter().any(|r| r.u_threshold > 0)
}

/// The timeout that applies to a connection in `state`.
pub fn timeout_of(cfg: &DataplaneConfig, state: ConnState) -> u64 {
    match state {
        ConnState::Udp => cfg.udp_timeout_ns,
        ConnState::SynRecv => cfg.tcp_syn_timeout_ns,
        ConnState::Established => cfg.tcp_timeout_ns,
        ConnState::FinWait => cfg.tcp_fin_timeout_ns,
        ConnState::Close => cfg.tcp_close_timeout_ns,
    }
}

/// The SERVICE_FILTER bitmap for a configuration: one bit per SERVICES key.
pub fn filter_words(config: &Config) -> Vec<u64> {
    let mut words = vec![0u64; FILTER_WORDS as usize];
    for k in config.services().iter().flat_map(bpf_keys) {
        let bit = filter_bit(&k.addr, k.port_be, k.proto);
        words[(bit >> 6) as usize] |= 1 << (bit & 63);
    }
    words
}

/// The SERVICES keys of a service: a normal service's own key, or each match of a group (a
/// group without matches has none: it takes no traffic).
pub fn bpf_keys(svc: &model::Service) -> Vec<lb_common::ServiceKey> {
    match svc.key.virtual_addr() {
        Some(v) => vec![to_bpf_key(&v)],
        None => svc.matches.iter().map(to_bpf_key).collect(),
    }
}

/// An upper bound of a service's table length before it is built.
fn table_upper_bound(svc: &model::Service, params: &scheduler::Params) -> usize {
    match svc.scheduler {
        model::Scheduler::Rr => svc.reals.len(),
        model::Scheduler::Wrr => scheduler::wrr(&scheduler::fit_weights(
            &svc.reals.iter().map(|r| r.weight).collect::<Vec<_>>(),
            scheduler::MAX_TABLE_LEN,
        ))
        .len(),
        model::Scheduler::Mh => params.maglev_size,
        model::Scheduler::Sh
        | model::Scheduler::Dh
        | model::Scheduler::Lblc
        | model::Scheduler::Lblcr => scheduler::HASH_BUCKETS,
        _ => params.plan_len,
    }
}

fn zero_stats(
    map: &mut PerCpuArray<MapData, Stats>,
    id: u32,
    cpus: usize,
    name: &'static str,
) -> Result<(), DataplaneError> {
    let zero =
        PerCpuValues::try_from(vec![Stats::default(); cpus]).map_err(DataplaneError::Cpus)?;
    map.set(id, zero, 0).map_err(map_err(name))
}

fn sum_stats(
    map: &PerCpuArray<MapData, Stats>,
    id: u32,
    name: &'static str,
) -> Result<Counters, DataplaneError> {
    let v = map.get(&id, 0).map_err(map_err(name))?;
    let mut total = Stats::default();
    for s in v.iter() {
        total.add(s);
    }
    Ok(total.into())
}

/// The MAC a real server's frames are sent to: its own in DR mode (None until resolved); a
/// tunnelled server needs none (the data plane asks the kernel's FIB for the next hop).
fn next_hop_mac(r: &model::RealServer, macs: &HashMap<IpAddr, [u8; 6]>) -> Option<[u8; 6]> {
    match r.forward {
        model::ForwardMethod::Dr => macs.get(&r.addr.ip()).copied(),
        model::ForwardMethod::Tunnel(_) => Some([0; 6]),
    }
}

/// The 16-byte address form and family tag used in map keys.
pub fn addr_bytes(ip: IpAddr) -> ([u8; 16], u8) {
    match ip {
        IpAddr::V4(v4) => (lb_common::addr_from_v4(v4.octets()), FAMILY_V4),
        IpAddr::V6(v6) => (v6.octets(), FAMILY_V6),
    }
}

/// The data plane's key for a (protocol, VIP, port).
pub fn to_bpf_key(key: &VirtualAddr) -> lb_common::ServiceKey {
    let (addr, family) = addr_bytes(key.addr.ip());
    lb_common::ServiceKey {
        addr,
        port_be: key.addr.port().to_be(),
        proto: key.protocol.number(),
        family,
    }
}

/// CLOCK_MONOTONIC_COARSE in ns: the clock bpf_ktime_get_coarse_ns() reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
