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
//!
//! A change is a plan and its execution. [`plan`] is pure: from the [`plan::Placement`] (what
//! the maps hold, from the controller's point of view) and the desired configuration it makes
//! the next placement and the ordered [`plan::MapOp`]s. [`exec`] applies them to a
//! [`maps::Maps`] — the kernel's maps here, [`maps::MemoryMaps`] in unit tests — and on a
//! failed write puts back everything it wrote, so the maps and the placement stay as they were.
//! Adoption reads the pinned maps through the same trait ([`adopt::read_pinned`]) and rebuilds
//! a placement from them ([`inherit`], pure). Counters, the connection table and CONFIG are read
//! and written here directly: they are not part of a plan.

pub mod adopt;
mod batch;
pub mod exec;
pub mod inherit;
mod kernel;
pub mod layout;
pub mod maps;
pub mod memory;
pub mod ops;
pub mod pin;
pub mod plan;
pub mod regions;
pub mod sweep;

use std::{
    borrow::Cow,
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use aya::{
    maps::{
        Array, HashMap as BpfHashMap, MapData, MapError, PerCpuArray, PerCpuValues, ProgramArray,
        RingBuf,
    },
    programs::{
        links::{FdLink, LinkError, PinnedLink},
        xdp::XdpLink,
        ProgramError, Xdp, XdpMode,
    },
    Ebpf, EbpfError, EbpfLoader,
};
use lb_common::{
    mask_addr, names, reason::REASON_COUNT, Backend, ConnCounters, ConnEntry, ConnState,
    DataplaneConfig, FlowKey, LinkMacs, Meta, NatReply, PersistEntry, PersistKey, Reason,
    ServiceValue, Stats, LINK_MAC_SLOTS, MAX_BACKENDS, MAX_SERVICES,
};
use thiserror::Error;
use tracing::info;

use crate::{
    kernel_log::{self, KernelLog},
    model::{Config, ServiceKey, VirtualAddr},
    object, scheduler,
};
use kernel::KernelMaps;
use maps::MapsError;
use pin::PinDir;
pub use plan::{addr_bytes, bpf_keys, filter_words, to_bpf_key};
use plan::{table_uses_counts, Inputs, Placement};

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
    /// The configuration cannot be planned (capacity, an adopted layout): nothing changed.
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    /// Reading the controller's maps failed.
    #[error(transparent)]
    Maps(#[from] MapsError),
    /// Applying a plan failed (the maps were restored, unless it says otherwise).
    #[error(transparent)]
    Exec(#[from] exec::ExecError),
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
    /// NAT and FULLNAT ways back (NAT_REPLIES, preallocated); None: as many as `conns`.
    pub nat_replies: Option<u32>,
}

impl Sizes {
    /// NAT_REPLIES' entries.
    pub fn nat_replies(&self) -> u32 {
        self.nat_replies.unwrap_or(self.conns)
    }
}

impl Default for Sizes {
    fn default() -> Self {
        Self {
            conns: lb_common::DEFAULT_CONN_ENTRIES,
            sched_slots: lb_common::DEFAULT_SCHED_SLOTS,
            nat_replies: None,
        }
    }
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
    /// How long the last recomputation period's work took (its sweep slice included).
    pub last_recomputation: Duration,
    /// Tables the recomputations published.
    pub tables_published: u64,
    /// Full cycles of the connection-table sweep.
    pub sweep_cycles: u64,
    /// How long the last full cycle took, first slice to last.
    pub last_sweep_cycle: Duration,
    /// Expired entries the sweep removed (and took off the counts).
    pub swept: u64,
    /// Counts the sweep's re-baselining corrected (entries, either way).
    pub rebaselined: u64,
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

/// The connection table's fill, as a walk found it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableFill {
    /// Entries, expired ones included.
    pub entries: u64,
    /// Entries not expired whose backend slot still holds their real server.
    pub live: u64,
    /// Walks so far (0: none yet), to tell a new walk's figures from the last one's.
    pub walks: u64,
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
    /// The maps the planner's operations are applied to.
    maps: KernelMaps,
    conns: BpfHashMap<MapData, FlowKey, ConnEntry>,
    /// Live connections per backend slot, per CPU, as the data plane counts them.
    conn_counters: PerCpuArray<MapData, ConnCounters>,
    /// xvsd's part of the same counts (sweep removals, write-offs, corrections).
    conn_adjust: Array<MapData, ConnCounters>,
    /// The incremental sweep's position and what its cycle gathered.
    sweep: SweepState,
    persist: BpfHashMap<MapData, PersistKey, PersistEntry>,
    nat_replies: BpfHashMap<MapData, FlowKey, NatReply>,
    reasons: PerCpuArray<MapData, u64>,
    /// New FULLNAT connections refused for want of a port, per CPU per service id.
    fullnat_exhausted: PerCpuArray<MapData, u64>,
    /// TCP packets that arrived mid-flow for a connection the table did not have, per CPU per
    /// service id.
    midflow_miss: PerCpuArray<MapData, u64>,
    config: Array<MapData, DataplaneConfig>,
    meta: Array<MapData, Meta>,
    sizes: Sizes,
    /// What the maps hold, from the controller's point of view (after an adoption, what a
    /// previous xvsd left until the first sync takes it over).
    placement: Placement,
    attached: bool,
    /// Table tunables (Maglev size, plan length).
    params: scheduler::Params,
    /// Connection counts per backend slot the last plan was made from (load-aware schedulers).
    counts: HashMap<u32, ConnCounts>,
    /// The connection table's fill as the last scan found it.
    table: TableFill,
    /// The pin directory (locked) when the data plane is pinned.
    pins: Option<PinDir>,
    /// The XDP links this controller attached and pinned, one per interface (an adopted link
    /// lives in the program).
    links: Vec<PinnedLink>,
    activity: Activity,
    /// The reader of the programs' log, with `--kernel-log`, until xvsd takes it.
    kernel_logger: Option<kernel_log::Logger>,
    /// The FULLNAT audit reports (FNAT_AUDIT), until xvsd takes them.
    audit: Option<RingBuf<MapData>>,
    /// The connections recorded or changed for the master sync daemon (SYNC_EVENTS), until
    /// xvsd takes them.
    sync_events: Option<RingBuf<MapData>>,
    /// The attached interfaces' station addresses (LINK_MACS), and what was last written there.
    link_macs: Array<MapData, LinkMacs>,
    link_macs_written: Vec<LinkMacs>,
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
            .map_max_entries(names::MAP_NAT_REPLIES, sizes.nat_replies())
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
        // The programs the director tail-calls: TUN encapsulation, the ICMP relay and NAT. A pinned
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
            (lb_common::TAIL_NAT, names::PROG_NAT),
            (lb_common::TAIL_NAT_ICMP, names::PROG_NAT_ICMP),
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
        let laddrs =
            BpfHashMap::try_from(take(names::MAP_LADDRS)?).map_err(map_err(names::MAP_LADDRS))?;
        let conns =
            BpfHashMap::try_from(take(names::MAP_CONNS)?).map_err(map_err(names::MAP_CONNS))?;
        let conn_counters = PerCpuArray::try_from(take(names::MAP_CONN_COUNTS)?)
            .map_err(map_err(names::MAP_CONN_COUNTS))?;
        let conn_adjust = Array::try_from(take(names::MAP_CONN_ADJUST)?)
            .map_err(map_err(names::MAP_CONN_ADJUST))?;
        let persist =
            BpfHashMap::try_from(take(names::MAP_PERSIST)?).map_err(map_err(names::MAP_PERSIST))?;
        let nat_replies = BpfHashMap::try_from(take(names::MAP_NAT_REPLIES)?)
            .map_err(map_err(names::MAP_NAT_REPLIES))?;
        let service_stats = PerCpuArray::try_from(take(names::MAP_SERVICE_STATS)?)
            .map_err(map_err(names::MAP_SERVICE_STATS))?;
        let backend_stats = PerCpuArray::try_from(take(names::MAP_BACKEND_STATS)?)
            .map_err(map_err(names::MAP_BACKEND_STATS))?;
        let reasons = PerCpuArray::try_from(take(names::MAP_REASONS)?)
            .map_err(map_err(names::MAP_REASONS))?;
        let fullnat_exhausted = PerCpuArray::try_from(take(names::MAP_FULLNAT_EXHAUSTED)?)
            .map_err(map_err(names::MAP_FULLNAT_EXHAUSTED))?;
        let midflow_miss = PerCpuArray::try_from(take(names::MAP_MIDFLOW_MISS)?)
            .map_err(map_err(names::MAP_MIDFLOW_MISS))?;
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
        let audit = RingBuf::try_from(take(names::MAP_FULLNAT_AUDIT)?)
            .map_err(map_err(names::MAP_FULLNAT_AUDIT))?;
        let sync_events = RingBuf::try_from(take(names::MAP_SYNC_EVENTS)?)
            .map_err(map_err(names::MAP_SYNC_EVENTS))?;
        let link_macs =
            Array::try_from(take(names::MAP_LINK_MACS)?).map_err(map_err(names::MAP_LINK_MACS))?;
        // After every program is loaded: the logger takes the log map out of `ebpf`.
        let kernel_logger = match kernel_log {
            KernelLog::Off => None,
            _ => Some(
                aya_log::EbpfLogger::init(&mut ebpf)
                    .map_err(|e| DataplaneError::Object(format!("kernel log: {e}")))?,
            ),
        };
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Cpus(e))?;
        let (slots_copy, slots_known) = KernelMaps::slots_copy(sizes.sched_slots, fresh);
        Ok(Self {
            ebpf,
            _tail: tail,
            maps: KernelMaps {
                services,
                backends,
                slots,
                cursors,
                laddrs,
                service_stats,
                backend_stats,
                filter: filter_map,
                cpus,
                slots_copy,
                slots_known,
            },
            conns,
            conn_counters,
            conn_adjust,
            sweep: SweepState::default(),
            persist,
            nat_replies,
            reasons,
            fullnat_exhausted,
            midflow_miss,
            config,
            meta,
            sizes,
            placement: Placement::new(sizes.sched_slots),
            attached: false,
            params: scheduler::Params::default(),
            counts: HashMap::new(),
            table: TableFill::default(),
            pins: None,
            links: Vec::new(),
            activity: Activity::default(),
            kernel_logger,
            audit: Some(audit),
            sync_events: Some(sync_events),
            link_macs,
            link_macs_written: vec![LinkMacs::default(); LINK_MAC_SLOTS as usize],
        })
    }

    /// Every backend slot in use, with the generation of the real server it holds.
    pub fn slot_generations(&self) -> HashMap<u32, u32> {
        self.placement.generations()
    }

    /// Writes connections synced from another director: each entry, and first its way back
    /// (NAT, FULLNAT) unless that is another connection's; then counts them in CONN_ADJUST
    /// (one write for the batch), so the live counts (-L, the load-aware schedulers) have
    /// them at once rather than at the sweep's next baseline.
    pub fn install_conns(&mut self, conns: &[ops::SyncedConn]) -> Vec<ops::Installing> {
        let generations = self.placement.generations();
        let mut fixes: HashMap<u32, ConnCounters> = HashMap::new();
        let mut out = Vec::with_capacity(conns.len());
        for c in conns {
            if let Some((rk, rv)) = &c.reply {
                match self.nat_replies.get(rk, 0) {
                    Ok(have) if have != *rv => {
                        out.push(ops::Installing::ReplyTaken);
                        continue;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        if let Err(e) = self.nat_replies.insert(rk, rv, 0) {
                            out.push(ops::Installing::Failed(map_err(names::MAP_NAT_REPLIES)(e)));
                            continue;
                        }
                    }
                }
            }
            let old = self.conns.get(&c.key, 0).ok();
            if let Err(e) = self.conns.insert(c.key, c.entry, 0) {
                out.push(ops::Installing::Failed(map_err(names::MAP_CONNS)(e)));
                continue;
            }
            sweep::count_install(old.as_ref(), &c.entry, &generations, &mut fixes);
            out.push(ops::Installing::Installed);
        }
        if let Err(e) = self.add_adjust(&fixes) {
            tracing::warn!(error = %e, "counting synced connections failed; the sweep's next baseline will");
        }
        out
    }

    /// Writes one connection-table entry and nothing else: no way back, no count (the sync
    /// bench's floor, one map update per entry).
    pub fn install_conn(&mut self, key: &FlowKey, entry: &ConnEntry) -> Result<(), DataplaneError> {
        self.conns
            .insert(key, entry, 0)
            .map_err(map_err(names::MAP_CONNS))
    }

    /// Writes a persistence template (one synced from another director).
    pub fn install_template(
        &mut self,
        key: &PersistKey,
        entry: &PersistEntry,
    ) -> Result<(), DataplaneError> {
        self.persist
            .insert(key, entry, 0)
            .map_err(map_err(names::MAP_PERSIST))?;
        Ok(())
    }

    /// Makes LINK_MACS hold exactly `slots` (every other slot empty, filtering nothing); writes
    /// only the slots that change. Returns how many were written.
    pub fn set_link_macs(
        &mut self,
        slots: &std::collections::BTreeMap<u32, LinkMacs>,
    ) -> Result<usize, DataplaneError> {
        let mut written = 0;
        for slot in 0..LINK_MAC_SLOTS {
            let want = slots.get(&slot).copied().unwrap_or_default();
            if self.link_macs_written[slot as usize] == want {
                continue;
            }
            self.link_macs
                .set(slot, want, 0)
                .map_err(map_err(names::MAP_LINK_MACS))?;
            self.link_macs_written[slot as usize] = want;
            written += 1;
        }
        Ok(written)
    }

    /// The connection reports for the master sync daemon, once.
    pub fn take_sync_events(&mut self) -> Option<RingBuf<MapData>> {
        self.sync_events.take()
    }

    /// The FULLNAT audit reports (`--audit-fullnat`), once.
    pub fn take_audit(&mut self) -> Option<RingBuf<MapData>> {
        self.audit.take()
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
        self.attach_link_pinned(iface, mode, &dir.link())?;
        self.program().pin(dir.prog())?;
        Ok(())
    }

    /// Attaches the (already loaded, maybe already attached) director to one more interface and
    /// pins that link at `pin`.
    fn attach_link_pinned(
        &mut self,
        iface: &str,
        mode: AttachMode,
        pin: &std::path::Path,
    ) -> Result<(), DataplaneError> {
        let id = self.program().attach(iface, mode.into())?;
        let link = self.program().take_link(id)?;
        let link = FdLink::try_from(link)?;
        self.links.push(link.pin(pin)?);
        self.attached = true;
        Ok(())
    }

    /// Swaps this program in on the link pinned in `dir` (bpf_link_update: one atomic step,
    /// the interface is never without a program), and pins it in place of the previous one.
    fn replace_on_link(&mut self, dir: &PinDir) -> Result<(), DataplaneError> {
        self.swap_on_link(&dir.link())?;
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
        Ok(())
    }

    /// Swaps this program in on the link pinned at `pin` (bpf_link_update).
    fn swap_on_link(&mut self, pin: &std::path::Path) -> Result<(), DataplaneError> {
        let link = XdpLink::try_from(FdLink::from(PinnedLink::from_pin(pin)?))?;
        self.program().attach_to_link(link)?;
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
    /// connections until it is. Capacity is checked before anything is written, and a write
    /// that fails puts back everything written before it: the maps are as they were.
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
        // Tables that depend on connection counts are computed from fresh ones, counted over
        // the backend slots the plan starts from (after an adoption, those it keeps).
        if config.services().iter().any(table_uses_counts) {
            let staged = match self.placement.adoption_pending() {
                true => Cow::Owned(plan::staged(&self.placement, config)),
                false => Cow::Borrowed(&self.placement),
            };
            self.counts = self.live_counts_of(&staged)?;
        }
        let plan = plan::plan(&self.placement, config, &self.inputs(macs))?;
        let placed_before: std::collections::HashSet<u32> =
            self.placement.services.values().map(|p| p.id).collect();
        let applied = self.commit(plan)?;
        // A service id new to the tables starts its mid-flow misses at 0 (an id is reused
        // after its service was removed). Misses counted between the commit and this are lost.
        let new_ids: Vec<u32> = (self.placement.services.values().map(|p| p.id))
            .filter(|id| !placed_before.contains(id))
            .collect();
        self.zero_midflow(new_ids)?;
        // A large plan's transient memory (its operations, what was read ahead, the replaced
        // placement) is kept by the allocator: glibc keeps freed chunks in the arena of the
        // thread that synced, one arena per thread, each at its own high-water mark (xvsd's
        // RSS grew to a plateau over repeated 10,000-service -R / -C). Giving it back costs a
        // few ms after a sync that took tens or hundreds.
        const TRIM_AFTER_OPS: usize = 10_000;
        if applied.ops >= TRIM_AFTER_OPS {
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            // SAFETY: malloc_trim only releases free memory to the kernel; no preconditions.
            unsafe {
                libc::malloc_trim(0);
            }
        }
        if let Some(t) = applied.took_over {
            info!(
                kept = t.kept,
                dropped = t.dropped,
                "took over the adopted services the configuration still has"
            );
        }
        self.activity.syncs += 1;
        self.activity.last_sync = started.elapsed();
        Ok(())
    }

    /// The backend slot id of a real server (tests and stats use it).
    pub fn backend_id(&self, key: &ServiceKey, addr: SocketAddr) -> Option<u32> {
        self.placement.backend_id(key, addr)
    }

    /// What a backend slot holds (tests check generations across an adoption).
    pub fn backend_entry(&self, id: u32) -> Option<Backend> {
        self.maps.backends.get(&id, 0).ok()
    }

    /// The service id of a service.
    pub fn service_id(&self, key: &ServiceKey) -> Option<u32> {
        self.placement.service_id(key)
    }

    /// The value the data plane holds for a (protocol, VIP, port), if any (tests check that
    /// every match of a group points at the group's current table).
    pub fn published_value(&self, v: &VirtualAddr) -> Option<ServiceValue> {
        self.maps.services.get(&to_bpf_key(v), 0).ok()
    }

    /// The scheduler table currently published for a service (backend ids).
    pub fn published_table(&self, key: &ServiceKey) -> Option<&[u32]> {
        self.placement.table(key)
    }

    /// Summed counters of a service.
    pub fn service_counters(&self, key: &ServiceKey) -> Result<Counters, DataplaneError> {
        match self.service_id(key) {
            Some(id) => sum_stats(&self.maps.service_stats, id, names::MAP_SERVICE_STATS),
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
            Some(id) => sum_stats(&self.maps.backend_stats, id, names::MAP_BACKEND_STATS),
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

    /// The local address in slot `slot` of service `service_id` (FULLNAT), as placed.
    pub fn local_addr(&self, service_id: u32, slot: u8) -> Option<IpAddr> {
        self.placement.local_addr(service_id, slot)
    }

    /// New FULLNAT connections refused for want of a port since the maps were created, per
    /// service id (services with none are left out).
    pub fn fullnat_exhausted(&self) -> Result<HashMap<u32, u64>, DataplaneError> {
        let ids = self
            .placement
            .services
            .values()
            .filter(|p| !p.laddrs.is_empty())
            .map(|p| p.id);
        per_service_sums(&self.fullnat_exhausted, names::MAP_FULLNAT_EXHAUSTED, ids)
    }

    /// TCP packets that arrived mid-flow for a connection the table did not have, per placed
    /// service id (services with none left out).
    pub fn midflow_misses(&self) -> Result<HashMap<u32, u64>, DataplaneError> {
        let ids = self.placement.services.values().map(|p| p.id);
        per_service_sums(&self.midflow_miss, names::MAP_MIDFLOW_MISS, ids)
    }

    /// Zeroes the mid-flow miss counters of these service ids (new ids, or `-Z`).
    fn zero_midflow(&mut self, ids: impl IntoIterator<Item = u32>) -> Result<(), DataplaneError> {
        for id in ids {
            let zero = PerCpuValues::try_from(vec![0u64; self.maps.cpus]).map_err(|e| {
                map_err(names::MAP_MIDFLOW_MISS)(MapError::SyscallError(syscall_err(e)))
            })?;
            self.midflow_miss
                .set(id, zero, 0)
                .map_err(map_err(names::MAP_MIDFLOW_MISS))?;
        }
        Ok(())
    }

    /// The connection table's fill (see [`Dataplane::refresh_fill`]; a full walk sets it too).
    pub fn table_fill(&self) -> TableFill {
        self.table
    }

    /// Live (unexpired) connections and persistence templates per backend slot, split as
    /// IPVS's ActiveConn / InActConn / PersistConn, by walking both tables whole in batches:
    /// O(entries). xvsd no longer does this (see [`sweep`]); tests and the benchmark compare
    /// the live counts with it. Like the sweep, it keeps alive the templates that still
    /// control a live connection and removes the ways back of NAT connections that ended.
    pub fn full_walk(&mut self) -> Result<HashMap<u32, ConnCounts>, DataplaneError> {
        let live = Live::of(&self.placement);
        self.scan_over(live)
    }

    /// [`Dataplane::scan`] over these backend slots and persistent services.
    fn scan_over(&mut self, view: Live) -> Result<HashMap<u32, ConnCounts>, DataplaneError> {
        let now = monotonic_ns();
        let cfg = self.config.get(&0, 0).map_err(map_err(names::MAP_CONFIG))?;
        let Live {
            generations,
            persistent,
            nat,
        } = &view;
        // NAT and FULLNAT connections' ways back as they are before the walk: an entry whose
        // connection the walk does not find live (for FULLNAT: holding that port) is removed
        // after it, which frees a FULLNAT port. A connection is recorded before its way back,
        // so one made meanwhile is not taken for gone.
        let mut replies: Vec<(FlowKey, NatReply)> = Vec::new();
        batch::for_each(&self.nat_replies, |k, r| replies.push((*k, *r)))
            .map_err(|e| map_err(names::MAP_NAT_REPLIES)(MapError::SyscallError(syscall_err(e))))?;
        let mut live_conns: HashMap<FlowKey, (u32, u16)> = HashMap::new();
        let live = |backend: u32, generation: u32| {
            generation != 0 && generations.get(backend as usize) == Some(&generation)
        };
        let mut dense = vec![ConnCounts::default(); MAX_BACKENDS as usize];
        let mut in_use: HashMap<PersistKey, u64> = HashMap::new();
        // The table's fill comes with the walk: no walk of its own.
        let mut fill = TableFill::default();
        batch::for_each(&self.conns, |k, e| {
            fill.entries += 1;
            let state = ConnState::from_u8(e.state);
            if now.saturating_sub(e.last_seen_ns) > timeout_of(&cfg, state)
                || !live(e.backend, e.generation)
            {
                return;
            }
            fill.live += 1;
            if nat.get(e.backend as usize) == Some(&true) {
                live_conns.insert(*k, (e.backend, e.lport_be));
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
        fill.walks = self.table.walks + 1;
        self.table = fill;
        let (templates, refresh) = self.templates_pass(&view, &in_use, now)?;
        for (slot, n) in templates {
            dense[slot as usize].persistent = n;
        }
        for (k, r) in replies {
            if live_conns.get(&conn_of_reply(&k, &r)) != Some(&(r.backend, local_port(&k, &r))) {
                self.sweep_reply(&k, &r, &cfg, generations, now)?;
            }
        }
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

    /// Removes a NAT or FULLNAT connection's way back whose connection the walk did not find
    /// live, unless the connection is live now (made or rescheduled to the same real server
    /// since, and for FULLNAT given this port).
    fn sweep_reply(
        &mut self,
        k: &FlowKey,
        r: &NatReply,
        cfg: &DataplaneConfig,
        generations: &[u32],
        now: u64,
    ) -> Result<(), DataplaneError> {
        let conn = conn_of_reply(k, r);
        if let Ok(e) = self.conns.get(&conn, 0) {
            let state = ConnState::from_u8(e.state);
            if e.backend == r.backend
                && e.lport_be == local_port(k, r)
                && now.saturating_sub(e.last_seen_ns) <= timeout_of(cfg, state)
                && generations.get(e.backend as usize) == Some(&e.generation)
            {
                return Ok(());
            }
        }
        match self.nat_replies.remove(k) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(())
            }
            Err(e) => Err(map_err(names::MAP_NAT_REPLIES)(e)),
        }
    }

    /// NAT connections' ways back (tests).
    pub fn nat_replies(&self) -> Result<Vec<(FlowKey, NatReply)>, DataplaneError> {
        let mut out = Vec::new();
        batch::for_each(&self.nat_replies, |k, r| out.push((*k, *r)))
            .map_err(|e| map_err(names::MAP_NAT_REPLIES)(MapError::SyscallError(syscall_err(e))))?;
        Ok(out)
    }

    /// Whether any service's table follows the live counts (load-aware, thresholds).
    pub fn uses_counts(config: &Config) -> bool {
        config.services().iter().any(table_uses_counts)
    }

    /// Every live persistence template (for `-L -c`), at most `limit`: key, entry, ns until it
    /// expires (if no connection refreshes it).
    pub fn templates(
        &self,
        limit: usize,
    ) -> Result<Vec<(PersistKey, PersistEntry, u64)>, DataplaneError> {
        let now = monotonic_ns();
        let generations = self.placement.generations();
        let timeouts: HashMap<u32, u64> = self
            .placement
            .persistent()
            .map(|(id, _, timeout_s)| (id, timeout_s as u64 * 1_000_000_000))
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
        let generations = self.placement.generations();
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

    /// Live connection counts per backend slot in use: what the data plane counted plus
    /// xvsd's adjustments (O(slots), no connection-table walk), and the live persistence
    /// templates (a walk of PERSIST, when a service is persistent; the sweep keeps the
    /// templates of live connections alive).
    pub fn conn_counts(&mut self) -> Result<HashMap<u32, ConnCounts>, DataplaneError> {
        let mut counts = self.live_counts_of(&self.placement)?;
        let live = Live::of(&self.placement);
        let (persistent, _) = self.templates_pass(&live, &HashMap::new(), monotonic_ns())?;
        for (slot, n) in persistent {
            if live.generations.get(slot as usize).is_some_and(|&g| g != 0) {
                counts.entry(slot).or_default().persistent = n;
            }
        }
        Ok(counts)
    }

    /// The sweep's period step and the load-aware tables' refresh (every recomputation period):
    /// reads the next slice of the connection table (its share of [`sweep::SWEEP_RATE`] for the
    /// time since the last step), then recomputes the load-aware tables from the live counts
    /// and publishes those that changed. Returns how many tables were published.
    pub fn recompute(
        &mut self,
        config: &Config,
        macs: &HashMap<IpAddr, [u8; 6]>,
    ) -> Result<usize, DataplaneError> {
        let started = Instant::now();
        let elapsed = self
            .sweep
            .last_step
            .map_or(Duration::from_secs(1), |t| t.elapsed());
        self.sweep.last_step = Some(started);
        self.sweep_step(sweep::budget(elapsed, self.sizes.conns))?;
        self.refresh_fill()?;
        let published = self.plan_from_live_counts(config, macs, true)?;
        self.activity.last_recomputation = started.elapsed();
        Ok(published)
    }

    /// The table's fill for the pressure monitor, each recomputation period: live entries from
    /// the live counts (current, no walk), all entries (expired ones included) as the last sweep
    /// cycle read them.
    fn refresh_fill(&mut self) -> Result<(), DataplaneError> {
        let live: u64 = self
            .live_counts_of(&self.placement)?
            .values()
            .map(|c| c.active + c.inactive)
            .sum();
        self.table = TableFill {
            entries: self.table.entries.max(live),
            live,
            walks: self.table.walks + 1,
        };
        Ok(())
    }

    /// Recomputes the load-aware tables from the live counts (cheap: no table walk) and
    /// publishes those that changed: between two recomputation periods, xvsd calls this every
    /// [`PLAN_PERIOD`], so a plan follows the connections that ended since it was made. Counts
    /// that did not move since the last plan make no new one (twos would draw a new table).
    pub fn refresh_plans(
        &mut self,
        config: &Config,
        macs: &HashMap<IpAddr, [u8; 6]>,
    ) -> Result<usize, DataplaneError> {
        self.plan_from_live_counts(config, macs, false)
    }

    /// [`Dataplane::refresh_plans`]; `always`: even when the counts did not move (each
    /// recomputation period, as before live counts: lblcr's sets age with time).
    fn plan_from_live_counts(
        &mut self,
        config: &Config,
        macs: &HashMap<IpAddr, [u8; 6]>,
        always: bool,
    ) -> Result<usize, DataplaneError> {
        if !Self::uses_counts(config) {
            return Ok(0);
        }
        let counts = self.live_counts_of(&self.placement)?;
        if !always && counts == self.counts {
            return Ok(0);
        }
        self.counts = counts;
        let published = self.recompute_tables(config, macs)?;
        self.activity.recomputations += 1;
        self.activity.tables_published += published as u64;
        Ok(published)
    }

    /// Applies a plan; the backend slots it hands to new real servers have their counts
    /// written off (what the previous holder left is no connection of the new one).
    fn commit(&mut self, plan: plan::Plan) -> Result<exec::Applied, DataplaneError> {
        let handed = sweep::handed_over(&plan.ops);
        let applied = exec::commit(&mut self.placement, &mut self.maps, plan)?;
        if !handed.is_empty() {
            self.write_off(&handed)?;
        }
        Ok(applied)
    }

    /// Sets CONN_ADJUST of these slots so that their counts read 0.
    fn write_off(&mut self, slots: &[u32]) -> Result<(), DataplaneError> {
        let upto = slots.iter().copied().max().map_or(0, |m| m + 1);
        let dp = self.dataplane_counts(upto)?;
        let mut keys = Vec::new();
        let mut values = Vec::new();
        for &slot in slots {
            let target = ConnCounters::default();
            let fix = dp[slot as usize].to(target);
            keys.push(slot);
            values.push(fix);
        }
        batch::write_array_at(&mut self.conn_adjust, &keys, &values).map_err(|(_, e)| {
            map_err(names::MAP_CONN_ADJUST)(MapError::SyscallError(syscall_err(e)))
        })?;
        if let Some(c) = self.sweep.cycle.as_mut() {
            // Not re-baselined this cycle: what it saw of the slot was the previous holder's.
            for &slot in slots {
                if let Some(g) = c.generations.get_mut(slot as usize) {
                    *g = 0;
                }
            }
        }
        Ok(())
    }

    /// The data plane's counts (summed over CPUs) of slots `0..upto`.
    fn dataplane_counts(&self, upto: u32) -> Result<Vec<ConnCounters>, DataplaneError> {
        let cpus = self.maps.cpus;
        let flat = batch::read_percpu_array(&self.conn_counters, 0, upto, cpus)
            .map_err(|e| map_err(names::MAP_CONN_COUNTS)(MapError::SyscallError(syscall_err(e))))?;
        let mut out = vec![ConnCounters::default(); upto as usize];
        for (i, v) in flat.iter().enumerate() {
            let slot = i / cpus;
            out[slot] = out[slot].plus(*v);
        }
        Ok(out)
    }

    /// The counts (data plane plus adjustments, wrapping) of slots `0..upto`.
    fn ledger(&self, upto: u32) -> Result<Vec<ConnCounters>, DataplaneError> {
        let mut out = self.dataplane_counts(upto)?;
        let adjust = batch::read_array(&self.conn_adjust, 0, upto)
            .map_err(|e| map_err(names::MAP_CONN_ADJUST)(MapError::SyscallError(syscall_err(e))))?;
        for (o, a) in out.iter_mut().zip(adjust) {
            *o = o.plus(a);
        }
        Ok(out)
    }

    /// Live counts of the slots `placement` uses.
    fn live_counts_of(
        &self,
        placement: &Placement,
    ) -> Result<HashMap<u32, ConnCounts>, DataplaneError> {
        let slots = placement.generations();
        let upto = slots.keys().copied().max().map_or(0, |m| m + 1);
        let ledger = self.ledger(upto)?;
        let mut out = HashMap::new();
        for slot in slots.into_keys() {
            let (active, inactive) = ledger[slot as usize].clamped();
            let c = ConnCounts {
                active,
                inactive,
                persistent: 0,
            };
            if c != ConnCounts::default() {
                out.insert(slot, c);
            }
        }
        Ok(out)
    }

    /// Signed counts of every slot in use (a sweep cycle's start and end).
    fn signed_counts(&self, generations: &[u32]) -> Result<HashMap<u32, [i64; 2]>, DataplaneError> {
        let upto = generations
            .iter()
            .rposition(|&g| g != 0)
            .map_or(0, |m| m as u32 + 1);
        let ledger = self.ledger(upto)?;
        Ok(ledger
            .into_iter()
            .enumerate()
            .filter(|(i, _)| generations[*i] != 0)
            .map(|(i, c)| (i as u32, sweep::signed(c)))
            .collect())
    }

    /// One step of the sweep (see [`sweep`]): reads up to `budget` entries from where the last
    /// step stopped, removes the expired ones after each batch read (subtracting those this
    /// step removed), and at the end of the table closes the cycle.
    pub fn sweep_step(&mut self, budget: usize) -> Result<(), DataplaneError> {
        // Until the first sync takes an adopted data plane over, the placement names no slot:
        // every entry would look orphaned.
        if self.placement.adoption_pending() {
            return Ok(());
        }
        let live = Live::of(&self.placement);
        let cfg = self.config.get(&0, 0).map_err(map_err(names::MAP_CONFIG))?;
        if self.sweep.cycle.is_none() {
            let start = self.signed_counts(&live.generations)?;
            self.sweep.cycle = Some(sweep::Cycle::new(start, live.generations.clone()));
            self.sweep.cycle_started = Some(Instant::now());
        }
        let view = sweep::Live {
            generations: &live.generations,
            persistent: &live.persistent,
            nat: &live.nat,
        };
        self.sweep_due()?;
        // The sweep's next visit to what it reads now (a cycle, and a step to spare).
        let horizon = monotonic_ns()
            .saturating_add((sweep::cycle_secs(self.sizes.conns) + 1) * 1_000_000_000);
        let n = sweep::SWEEP_BATCH as usize;
        let mut keys = vec![FlowKey::default(); n];
        let mut values = vec![ConnEntry::default(); n];
        let mut fixes: HashMap<u32, ConnCounters> = HashMap::new();
        let mut read = 0;
        let mut ended = false;
        while read < budget {
            let (got, next) =
                batch::read_chunk(&self.conns, self.sweep.token, &mut keys, &mut values).map_err(
                    |e| map_err(names::MAP_CONNS)(MapError::SyscallError(syscall_err(e))),
                )?;
            // Judged as soon as read, removed right after: the revival window (see `sweep`).
            let now = monotonic_ns();
            let cycle = self.sweep.cycle.as_mut().expect("started above");
            let mut doomed = Vec::new();
            let mut counted = Vec::new();
            for i in 0..got {
                match sweep::judge(&values[i], now, &cfg, &live.generations) {
                    sweep::Judged::Live { class, .. } => {
                        cycle.live(&keys[i], &values[i], class, &view);
                        if let Some(at) = sweep::expires_before(&values[i], &cfg, horizon) {
                            self.sweep.calendar.watch(keys[i], values[i], at);
                        }
                    }
                    sweep::Judged::Expired { slot, class } => {
                        doomed.push(keys[i]);
                        counted.push(Some((slot, class)));
                    }
                    sweep::Judged::Orphan => {
                        doomed.push(keys[i]);
                        counted.push(None);
                    }
                }
            }
            cycle.read += got as u64;
            if !doomed.is_empty() {
                let deleted = batch::delete_keys(&self.conns, &doomed).map_err(|e| {
                    map_err(names::MAP_CONNS)(MapError::SyscallError(syscall_err(e)))
                })?;
                for (gone, c) in deleted.into_iter().zip(counted) {
                    if let (true, Some((slot, class))) = (gone, c) {
                        fixes.entry(slot).or_default().add(class, u64::MAX);
                        cycle.swept(slot, class);
                        self.activity.swept += 1;
                    }
                }
            }
            read += got;
            self.sweep.token = next;
            if next.is_none() {
                ended = true;
                break;
            }
        }
        self.add_adjust(&fixes)?;
        if ended {
            self.end_cycle(&live, &cfg)?;
        }
        Ok(())
    }

    /// Removes the watched entries that are due and did expire (see [`sweep::Calendar`]),
    /// taking those this call removed off the counts; one lookup per due entry.
    pub fn sweep_due(&mut self) -> Result<(), DataplaneError> {
        if self.placement.adoption_pending() {
            return Ok(());
        }
        let now = monotonic_ns();
        let due = self.sweep.calendar.take_due(now);
        if due.is_empty() {
            return Ok(());
        }
        let cfg = self.config.get(&0, 0).map_err(map_err(names::MAP_CONFIG))?;
        let live = Live::of(&self.placement);
        let mut doomed = Vec::new();
        let mut counted = Vec::new();
        for (key, seen) in due {
            let Ok(e) = self.conns.get(&key, 0) else {
                continue;
            };
            if sweep::still_expired(&seen, &e, now, &cfg, &live.generations) {
                doomed.push(key);
                counted.push((e.backend, lb_common::ConnClass::of_state(e.state)));
            }
        }
        if doomed.is_empty() {
            return Ok(());
        }
        let deleted = batch::delete_keys(&self.conns, &doomed)
            .map_err(|e| map_err(names::MAP_CONNS)(MapError::SyscallError(syscall_err(e))))?;
        let mut fixes: HashMap<u32, ConnCounters> = HashMap::new();
        for (gone, (slot, class)) in deleted.into_iter().zip(counted) {
            // Removed after the cycle's visit (or before it): traffic to the cycle's
            // re-baselining, like a removal by the data plane.
            if gone {
                fixes.entry(slot).or_default().add(class, u64::MAX);
                self.activity.swept += 1;
            }
        }
        self.add_adjust(&fixes)
    }

    /// Adds `fixes` to the slots' CONN_ADJUST (xvsd is its only writer).
    fn add_adjust(&mut self, fixes: &HashMap<u32, ConnCounters>) -> Result<(), DataplaneError> {
        if fixes.is_empty() {
            return Ok(());
        }
        let mut keys: Vec<u32> = fixes.keys().copied().collect();
        keys.sort_unstable();
        let mut values = Vec::with_capacity(keys.len());
        for k in &keys {
            let have = self
                .conn_adjust
                .get(k, 0)
                .map_err(map_err(names::MAP_CONN_ADJUST))?;
            values.push(have.plus(fixes[k]));
        }
        batch::write_array_at(&mut self.conn_adjust, &keys, &values).map_err(|(_, e)| {
            map_err(names::MAP_CONN_ADJUST)(MapError::SyscallError(syscall_err(e)))
        })
    }

    /// The end of a sweep cycle: re-baselines the counts, counts and refreshes the templates,
    /// and removes the ways back of NAT connections the cycle did not find live.
    fn end_cycle(&mut self, live: &Live, cfg: &DataplaneConfig) -> Result<(), DataplaneError> {
        let cycle = self.sweep.cycle.take().expect("a cycle was running");
        let end = self.signed_counts(&live.generations)?;
        let fixes: HashMap<u32, ConnCounters> = cycle
            .corrections(&end, &live.generations)
            .into_iter()
            .collect();
        for f in fixes.values() {
            let [a, i] = sweep::signed(*f);
            self.activity.rebaselined += a.unsigned_abs() + i.unsigned_abs();
        }
        self.add_adjust(&fixes)?;
        if !fixes.is_empty() {
            tracing::debug!(slots = fixes.len(), "sweep: connection counts re-baselined");
        }
        let now = monotonic_ns();
        let (_, refresh) = self.templates_pass(live, &cycle.in_use, now)?;
        self.refresh_templates(refresh)?;
        let mut replies: Vec<(FlowKey, NatReply)> = Vec::new();
        batch::for_each(&self.nat_replies, |k, r| replies.push((*k, *r)))
            .map_err(|e| map_err(names::MAP_NAT_REPLIES)(MapError::SyscallError(syscall_err(e))))?;
        for (k, r) in replies {
            if cycle.nat_live.get(&conn_of_reply(&k, &r)) != Some(&(r.backend, local_port(&k, &r)))
            {
                self.sweep_reply(&k, &r, cfg, &live.generations, now)?;
            }
        }
        // What the cycle read is the table's size as the sweep saw it; refresh_fill keeps it.
        self.table.entries = cycle.read;
        self.activity.sweep_cycles += 1;
        if let Some(t) = self.sweep.cycle_started.take() {
            self.activity.last_sweep_cycle = t.elapsed();
        }
        Ok(())
    }

    /// Live templates per slot, and those to refresh from the connections that use them.
    #[allow(clippy::type_complexity)]
    fn templates_pass(
        &self,
        live: &Live,
        in_use: &HashMap<PersistKey, u64>,
        now: u64,
    ) -> Result<(HashMap<u32, u64>, Vec<(PersistKey, PersistEntry)>), DataplaneError> {
        let mut persistent: HashMap<u32, u64> = HashMap::new();
        let mut refresh = Vec::new();
        if live.persistent.iter().all(Option::is_none) {
            return Ok((persistent, refresh));
        }
        let current = |backend: u32, generation: u32| {
            generation != 0 && live.generations.get(backend as usize) == Some(&generation)
        };
        batch::for_each(&self.persist, |k, t| {
            let Some(Some((_, timeout))) = live.persistent.get(k.service as usize).copied() else {
                return;
            };
            if !current(t.backend, t.generation) {
                return;
            }
            let last = in_use.get(k).copied().unwrap_or(0).max(t.last_seen_ns);
            if now.saturating_sub(last) > timeout {
                return;
            }
            *persistent.entry(t.backend).or_default() += 1;
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
        Ok((persistent, refresh))
    }

    /// Writes refreshed templates back (BPF_EXIST: one the data plane replaced or that
    /// vanished meanwhile is left as it is).
    fn refresh_templates(
        &mut self,
        refresh: Vec<(PersistKey, PersistEntry)>,
    ) -> Result<(), DataplaneError> {
        for (k, t) in refresh {
            match self.persist.insert(k, t, 2) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(map_err(names::MAP_PERSIST)(e)),
            }
        }
        Ok(())
    }

    fn recompute_tables(
        &mut self,
        config: &Config,
        macs: &HashMap<IpAddr, [u8; 6]>,
    ) -> Result<usize, DataplaneError> {
        let plan = plan::plan_recompute(&self.placement, config, &self.inputs(macs))?;
        Ok(self.commit(plan)?.published)
    }

    /// What a plan reads besides the placement and the configuration.
    fn inputs<'a>(&'a self, macs: &'a HashMap<IpAddr, [u8; 6]>) -> Inputs<'a> {
        Inputs {
            macs,
            counts: &self.counts,
            params: &self.params,
        }
    }

    /// Sets the table tunables (Maglev size, plan length) used from the next sync on.
    pub fn set_params(&mut self, params: scheduler::Params) {
        self.params = params;
    }

    /// Each CPU's CONN_COUNTS value of a backend slot (tests: which packets wrote it).
    pub fn conn_counters_per_cpu(&self, slot: u32) -> Result<Vec<ConnCounters>, DataplaneError> {
        let v = self
            .conn_counters
            .get(&slot, 0)
            .map_err(map_err(names::MAP_CONN_COUNTS))?;
        Ok(v.iter().copied().collect())
    }

    /// Raw connection-table entries (tests).
    pub fn conn_entry(&self, key: &FlowKey) -> Option<ConnEntry> {
        self.conns.get(key, 0).ok()
    }

    /// Zeroes the counters of every service and backend in use (`-Z`).
    pub fn zero_counters(&mut self) -> Result<(), DataplaneError> {
        let ops = plan::plan_zero(&self.placement, None);
        exec::execute(&mut self.maps, &ops)?;
        let ids: Vec<u32> = self.placement.services.values().map(|p| p.id).collect();
        self.zero_midflow(ids)
    }

    /// Zeroes the counters of one service and of its backends (`-Z -t VIP:port`).
    pub fn zero_service_counters(&mut self, key: &ServiceKey) -> Result<(), DataplaneError> {
        let ops = plan::plan_zero(&self.placement, Some(key));
        exec::execute(&mut self.maps, &ops)?;
        let id = self.service_id(key);
        self.zero_midflow(id)
    }

    /// Whether the program is attached to an interface.
    pub fn is_attached(&self) -> bool {
        self.attached
    }
}

/// The incremental sweep's state between steps.
#[derive(Debug, Default)]
struct SweepState {
    /// Where the next step reads on (None: at the head of the table).
    token: Option<u32>,
    /// The cycle under way.
    cycle: Option<sweep::Cycle>,
    /// When the cycle under way began.
    cycle_started: Option<Instant>,
    /// When the last step ran.
    last_step: Option<Instant>,
    /// Live entries due to expire before the sweep comes back to them.
    calendar: sweep::Calendar,
}

/// How often xvsd refreshes the load-aware tables from the live counts between two
/// recomputation periods.
pub const PLAN_PERIOD: Duration = Duration::from_millis(100);

/// What a connection-table walk counts against: dense tables indexed by slot / service id (the
/// walk touches millions of entries, so each one costs two array reads, not hash lookups).
struct Live {
    /// Generation of each backend slot in use (0: free).
    generations: Vec<u32>,
    /// Persistent services: id -> (prefix, timeout ns).
    persistent: Vec<Option<(u8, u64)>>,
    /// NAT and FULLNAT backend slots (by id): empty when there is none.
    nat: Vec<bool>,
}

impl Live {
    fn of(placement: &Placement) -> Live {
        let mut generations = vec![0u32; MAX_BACKENDS as usize];
        for (id, g) in placement.generations() {
            generations[id as usize] = g;
        }
        let mut persistent: Vec<Option<(u8, u64)>> = vec![None; MAX_SERVICES as usize];
        for (id, prefix, timeout_s) in placement.persistent() {
            persistent[id as usize] = Some((prefix, timeout_s as u64 * 1_000_000_000));
        }
        let mut nat: Vec<bool> = Vec::new();
        for id in placement.nat_backends() {
            if nat.is_empty() {
                nat = vec![false; MAX_BACKENDS as usize];
            }
            nat[id as usize] = true;
        }
        Live {
            generations,
            persistent,
            nat,
        }
    }
}

/// The connection (as the client made it) whose way back is reply flow `k` -> `r`.
pub fn conn_of_reply(k: &FlowKey, r: &NatReply) -> FlowKey {
    FlowKey {
        src: r.client,
        dst: r.vip,
        sport_be: r.cport_be,
        dport_be: r.vport_be,
        proto: k.proto,
        // NAT64: an IPv6 connection's replies are IPv4.
        family: r.family,
        _pad: [0; 2],
    }
}

/// The local port a connection with way back `k` -> `r` holds: FULLNAT's (the reply goes to
/// the local address and port, not the client), 0 for NAT.
pub fn local_port(k: &FlowKey, r: &NatReply) -> u16 {
    if k.dst == r.client && k.dport_be == r.cport_be {
        0
    } else {
        k.dport_be
    }
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

#[cfg(test)]
mod tests;

/// A per-CPU counter per service id, summed over CPUs, for these ids (those at 0 left out).
fn per_service_sums(
    map: &PerCpuArray<MapData, u64>,
    name: &'static str,
    ids: impl Iterator<Item = u32>,
) -> Result<HashMap<u32, u64>, DataplaneError> {
    let mut out = HashMap::new();
    for id in ids {
        let n: u64 = map.get(&id, 0).map_err(map_err(name))?.iter().sum();
        if n > 0 {
            out.insert(id, n);
        }
    }
    Ok(out)
}
