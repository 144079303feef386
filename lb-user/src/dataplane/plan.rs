//! The planner: a pure function from what the maps hold (a [`Placement`]) and a desired
//! configuration to the next placement and the ordered map operations that get there. No map
//! is touched here; `super::exec` applies the operations, all or nothing.
//!
//! The order of the operations is what keeps packets in flight safe:
//! 1. after an adoption, what the configuration no longer names is unpublished and freed;
//! 2. the filter is widened (new services' bits) before any service is published;
//! 3. removed services are unpublished before their backends are freed;
//! 4. a new table is written into a fresh region before any key points at it, and the old
//!    region is quarantined: it is reused only from the next plan on, long after any packet
//!    that read the old value has finished;
//! 5. the filter is narrowed last.
//!
//! Ids: service ids and backend slots come from free lists (freed ids are reused); a backend
//! slot gets a new generation each time it is handed out, so connection entries that outlived
//! their real server see it gone instead of reaching whoever reuses the slot.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use lb_common::{
    backend_flags,
    filter::{filter_bit, FILTER_WORDS},
    fwd, laddr_key, nat_reply_filter_proto, service_flags, table_kind, Backend, LocalAddr,
    ServiceKey as BpfKey, ServiceValue, FAMILY_V4, FAMILY_V6, MAX_BACKENDS, MAX_LADDR_SLOTS,
    MAX_SERVICES, NO_BACKEND,
};
use thiserror::Error;

use super::{
    inherit::{Inherited, TakeOver},
    maps::StatsMap,
    regions::{Region, Regions},
    ConnCounts,
};
use crate::{
    model::{self, Config, ServiceKey, VirtualAddr},
    scheduler::{self, digest::TableDigest},
};

/// Why a configuration cannot be planned. Nothing was written.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum PlanError {
    /// More services than service ids.
    #[error("data-plane capacity exceeded: {0} services (at most {MAX_SERVICES})")]
    Services(usize),
    /// More SERVICES keys (services and group matches) than entries.
    #[error(
        "data-plane capacity exceeded: {0} service addresses including group matches (at most {MAX_SERVICES})"
    )]
    Keys(usize),
    /// More real servers than backend slots.
    #[error(
        "data-plane capacity exceeded: {0} real servers over all services (at most {MAX_BACKENDS})"
    )]
    Backends(usize),
    /// The scheduler tables may not fit.
    #[error(
        "data-plane capacity exceeded: scheduler tables need up to {need} slots, {available} available"
    )]
    SchedSlots {
        /// Slots the changed services may need.
        need: u64,
        /// Slots not in use.
        available: u64,
    },
    /// No service id left.
    #[error("data-plane capacity exceeded: service ids")]
    ServiceIds,
    /// No backend slot left.
    #[error("data-plane capacity exceeded: backend slots")]
    BackendIds,
    /// No free run of scheduler slots long enough (fragmentation).
    #[error("data-plane capacity exceeded: no room for a {0}-slot table")]
    NoRoom(usize),
    /// An adopted table cannot be where the pinned maps say it is.
    #[error(
        "adopting the pinned data plane: service {id}'s table (slots {off}..{end}) overlaps another table or lies outside SCHED_SLOTS ({sched_slots} slots)"
    )]
    Overlap {
        /// The service id.
        id: u32,
        /// First slot.
        off: u32,
        /// One past the last slot.
        end: u64,
        /// Size of SCHED_SLOTS.
        sched_slots: u32,
    },
}

/// One write to the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapOp {
    /// SERVICE_FILTER\[index\] = word.
    SetFilterWord {
        /// Word index.
        index: u32,
        /// Its bits.
        word: u64,
    },
    /// SCHED_SLOTS\[off..off + ids.len()\] = ids: a table, into a region no key points at.
    SetSlots {
        /// First slot.
        off: u32,
        /// Backend ids (NO_BACKEND for an empty hash slot).
        ids: Vec<u32>,
    },
    /// SERVICES\[key\] = value (replaced atomically).
    PutService {
        /// The key.
        key: BpfKey,
        /// The value.
        value: ServiceValue,
    },
    /// SERVICES\[key\] removed.
    DeleteService {
        /// The key.
        key: BpfKey,
    },
    /// BACKENDS\[id\] = backend (generation 0: free).
    SetBackend {
        /// The slot.
        id: u32,
        /// What it holds.
        backend: Backend,
        /// What it held before, as the placement knows it (a free slot holds the default):
        /// the executor restores it without reading the slot first, one system call saved per
        /// real server.
        was: Backend,
    },
    /// LADDRS\[key\] = value, or removed (None): a FULLNAT service's local address slot.
    SetLaddr {
        /// lb_common::laddr_key(service id, slot).
        key: u32,
        /// What it holds.
        value: Option<LocalAddr>,
        /// What it held before, as the placement knows it (carried, as SetBackend's).
        was: Option<LocalAddr>,
    },
    /// SEQ_CURSOR\[id\] = 0: a new plan is handed out from its head.
    ResetCursor {
        /// The service id.
        id: u32,
    },
    /// A stats entry zeroed on every CPU (a new service id or backend slot starts at 0).
    ZeroStats {
        /// Which array.
        map: StatsMap,
        /// The id.
        id: u32,
    },
}

/// A backend slot the controller has handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    /// The slot.
    pub(crate) id: u32,
    /// What BACKENDS holds there.
    pub(crate) written: Backend,
}

/// A service and its servers' MACs (None: unresolved) as last pushed.
pub(crate) type Pushed = (model::Service, Vec<Option<[u8; 6]>>);

/// What the controller has written for one service.
#[derive(Clone, Debug)]
pub(crate) struct Placed {
    /// Taken over from a previous xvsd and not rewritten yet: `table`, `kind` and
    /// `value_flags` are what the maps hold, so an identical new table is not republished.
    pub(crate) adopted: bool,
    /// Service id.
    pub(crate) id: u32,
    /// Its table's region of SCHED_SLOTS.
    pub(crate) region: Region,
    /// The published table (backend ids, NO_BACKEND for empty hash slots) and its kind.
    pub(crate) table: Vec<u32>,
    /// The table's kind (`table_kind`).
    pub(crate) kind: u8,
    /// ServiceValue's flags, persistence timeout and prefix as published.
    pub(crate) value_flags: (u32, u32, u8),
    /// The scheduler and the state it keeps between recomputations.
    pub(crate) sched: scheduler::Scheduling,
    /// The published table's digest (`Placed::compute_digest`), kept so that a listing or a
    /// scrape does not rehash every table.
    pub(crate) digest: Option<TableDigest>,
    /// Backend slots by real-server address.
    pub(crate) slots: HashMap<SocketAddr, Slot>,
    /// The service and its servers' MACs as last pushed: an equal pair means nothing to do.
    /// Shared: a plan copies a service's record before changing it, and this part it only
    /// replaces.
    pub(crate) pushed: Option<Arc<Pushed>>,
    /// The SERVICES keys written for it: its own key, or a group's matches.
    pub(crate) keys: Vec<BpfKey>,
    /// FULLNAT: its local addresses by LADDRS slot, as written. A slot keeps its address while
    /// the address stays (connections name their local address by slot); a deleted one leaves
    /// a hole that the next new address fills.
    pub(crate) laddrs: Vec<Option<LocalAddr>>,
}

impl Placed {
    /// The digest of the published table with its backend ids named by the real servers they
    /// hold (lb-core's `scheduler::digest`), so directors that gave the same servers other ids
    /// get the same digest. None for the load-aware schedulers.
    pub(crate) fn compute_digest(&self) -> Option<TableDigest> {
        if scheduler::is_load_aware(self.sched.scheduler) {
            return None;
        }
        let input = match self.kind {
            table_kind::SEQUENCE => None,
            table_kind::HASH_SRC => Some(scheduler::HashInput::Source),
            table_kind::HASH_SRC_PORT => Some(scheduler::HashInput::SourcePort),
            table_kind::HASH_DST => Some(scheduler::HashInput::Destination),
            // A kind this build does not know (an adopted table of another version): no claim.
            _ => return None,
        };
        let by_id: HashMap<u32, SocketAddr> =
            self.slots.iter().map(|(addr, s)| (s.id, *addr)).collect();
        scheduler::digest::table_digest(
            self.sched.scheduler,
            input,
            self.table.iter().map(|id| by_id.get(id).copied()),
        )
    }
}

/// What the controller's maps hold, from its point of view: every placed service with its
/// id, table region, keys and backend slots, the free ids, the scheduler-slot allocator, the
/// filter, and what a previous xvsd left until the first plan takes it over. Cheap to clone:
/// services are shared until a plan changes them.
#[derive(Clone, Debug)]
pub struct Placement {
    pub(crate) services: HashMap<ServiceKey, Arc<Placed>>,
    /// Which service last wrote each SERVICES key: a key that moves from one service to
    /// another within a plan (a match handed over between groups) is removed only by its
    /// current owner, whatever order the services are planned in.
    pub(crate) owners: HashMap<BpfKey, ServiceKey>,
    pub(crate) free_service_ids: Vec<u32>,
    pub(crate) free_backend_ids: Vec<u32>,
    pub(crate) next_generation: u32,
    pub(crate) regions: Regions,
    /// Regions a packet may still read: freed by the next plan.
    pub(crate) quarantine: Vec<Region>,
    /// SERVICE_FILTER as written.
    pub(crate) filter: Vec<u64>,
    /// What a previous xvsd left in the maps, until the first plan takes it over.
    pub(crate) inherited: Option<Arc<Inherited>>,
    pub(crate) sched_slots: u32,
    /// Set when a plan was applied in part and its undo failed too: the maps may differ from
    /// this placement anywhere that plan wrote, so the next plan rewrites everything.
    pub(crate) unsure: Option<Arc<Unsure>>,
}

/// What a plan that was only partly undone wrote, besides what the placement describes: the
/// next plan rewrites every placed service, backend, table, key and filter word, and clears
/// these where the new placement has nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Unsure {
    /// SERVICES keys it wrote or deleted.
    pub(crate) keys: Vec<BpfKey>,
    /// BACKENDS slots it wrote.
    pub(crate) backends: Vec<u32>,
}

impl Placement {
    /// Empty maps with `sched_slots` scheduler slots, as a fresh load creates them.
    pub fn new(sched_slots: u32) -> Self {
        Self {
            services: HashMap::new(),
            owners: HashMap::new(),
            free_service_ids: (0..MAX_SERVICES).rev().collect(),
            free_backend_ids: (0..MAX_BACKENDS).rev().collect(),
            next_generation: 1,
            regions: Regions::new(sched_slots),
            quarantine: Vec::new(),
            filter: vec![0; FILTER_WORDS as usize],
            inherited: None,
            sched_slots,
            unsure: None,
        }
    }

    /// Marks the maps as possibly different from this placement wherever `ops` (a plan that
    /// failed and could not be wholly undone) wrote: the next plan rewrites everything.
    pub fn mark_unsure(&mut self, ops: &[MapOp]) {
        let mut unsure = self.unsure.as_deref().cloned().unwrap_or_default();
        for op in ops {
            match op {
                MapOp::PutService { key, .. } | MapOp::DeleteService { key } => {
                    unsure.keys.push(*key);
                }
                MapOp::SetBackend { id, .. } => {
                    unsure.backends.push(*id);
                }
                _ => {}
            }
        }
        unsure
            .keys
            .sort_unstable_by_key(|k| (k.family, k.addr, k.port_be, k.proto));
        unsure.keys.dedup();
        unsure.backends.sort_unstable();
        unsure.backends.dedup();
        self.unsure = Some(Arc::new(unsure));
    }

    /// Whether the next plan rewrites everything (a failed plan could not be wholly undone).
    pub fn rewrite_pending(&self) -> bool {
        self.unsure.is_some()
    }

    /// The service id of a service.
    pub fn service_id(&self, key: &ServiceKey) -> Option<u32> {
        self.services.get(key).map(|p| p.id)
    }

    /// The backend slot of a real server of a service.
    pub fn backend_id(&self, key: &ServiceKey, addr: SocketAddr) -> Option<u32> {
        self.services.get(key)?.slots.get(&addr).map(|s| s.id)
    }

    /// The backend slots of a service.
    pub fn backend_ids(&self, key: &ServiceKey) -> Vec<u32> {
        self.services
            .get(key)
            .map(|p| p.slots.values().map(|s| s.id).collect())
            .unwrap_or_default()
    }

    /// The published table of a service (backend ids).
    pub fn table(&self, key: &ServiceKey) -> Option<&[u32]> {
        self.services.get(key).map(|p| p.table.as_slice())
    }

    /// The digest of a service's published table (None: load-aware, or not placed).
    pub fn table_digest(&self, key: &ServiceKey) -> Option<TableDigest> {
        self.services.get(key)?.digest
    }

    /// The placed services' keys.
    pub fn service_keys(&self) -> impl Iterator<Item = &ServiceKey> {
        self.services.keys()
    }

    /// Generations of the backend slots in use, by slot.
    pub fn generations(&self) -> HashMap<u32, u32> {
        self.services
            .values()
            .flat_map(|p| p.slots.values().map(|s| (s.id, s.written.generation)))
            .collect()
    }

    /// The local address in slot `slot` of service `service_id` (FULLNAT), as written.
    pub fn local_addr(&self, service_id: u32, slot: u8) -> Option<IpAddr> {
        let p = self.services.values().find(|p| p.id == service_id)?;
        let la = (*p.laddrs.get(slot as usize)?)?;
        Some(if la.family == FAMILY_V4 {
            IpAddr::from([la.addr[0], la.addr[1], la.addr[2], la.addr[3]])
        } else {
            IpAddr::from(la.addr)
        })
    }

    /// The slot of local address `addr` in service `service_id`'s pool (FULLNAT), as written.
    pub fn local_slot(&self, service_id: u32, addr: IpAddr) -> Option<u8> {
        let p = self.services.values().find(|p| p.id == service_id)?;
        let (want, family) = addr_bytes(addr);
        p.laddrs
            .iter()
            .position(|la| la.is_some_and(|la| la.addr == want && la.family == family))
            .map(|slot| slot as u8)
    }

    /// NAT and FULLNAT backend slots, as written.
    pub fn nat_backends(&self) -> impl Iterator<Item = u32> + '_ {
        self.services
            .values()
            .flat_map(|p| p.slots.values())
            .filter(|s| s.written.fwd == fwd::NAT || s.written.fwd == fwd::FULLNAT)
            .map(|s| s.id)
    }

    /// Persistent services: id -> (client prefix, timeout in seconds), as published.
    pub fn persistent(&self) -> impl Iterator<Item = (u32, u8, u32)> + '_ {
        self.services
            .values()
            .filter(|p| p.value_flags.0 & service_flags::PERSISTENT != 0)
            .map(|p| (p.id, p.value_flags.2, p.value_flags.1))
    }

    /// Whether a previous xvsd's maps wait for the first plan to take them over.
    pub fn adoption_pending(&self) -> bool {
        self.inherited.is_some()
    }

    /// Next-hop MACs of the adopted direct-routing real servers.
    pub fn inherited_macs(&self) -> HashMap<IpAddr, [u8; 6]> {
        self.inherited
            .as_ref()
            .map(|i| i.macs())
            .unwrap_or_default()
    }

    /// Scheduler slots in use or quarantined.
    fn slots_in_use(&self) -> u64 {
        self.services
            .values()
            .map(|p| p.region.len as u64)
            .sum::<u64>()
            + self.quarantine.iter().map(|r| r.len as u64).sum::<u64>()
            + self.inherited.as_ref().map_or(0, |i| i.slots_in_use())
    }
}

/// What a plan needs besides the configuration.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    /// Real servers' MACs (direct routing): a server without one takes no new connections.
    pub macs: &'a HashMap<IpAddr, [u8; 6]>,
    /// Live connection counts by backend slot (load-aware tables, thresholds).
    pub counts: &'a HashMap<u32, ConnCounts>,
    /// Table tunables.
    pub params: &'a scheduler::Params,
}

/// A plan: the placement once `ops` are applied, in order.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The next placement.
    pub next: Placement,
    /// The writes, in the order packets in flight need.
    pub ops: Vec<MapOp>,
    /// Tables published (new regions).
    pub published: usize,
    /// What the first plan after an adoption kept and dropped.
    pub took_over: Option<TakeOver>,
}

/// Plans making the maps match `desired`. Capacity is checked before anything is planned.
///
/// After an adoption, the first plan takes over what the previous xvsd left: services and
/// real servers of `desired` that match keep their ids (and so their connections, templates
/// and counters); whatever `desired` does not name is removed.
pub fn plan(current: &Placement, desired: &Config, inputs: &Inputs) -> Result<Plan, PlanError> {
    check_capacity(current, desired, inputs)?;
    let mut p = Planner::new(current, inputs);
    p.free_quarantine();
    if let Some(inherited) = p.next.inherited.take() {
        p.took_over = Some(p.take_over(desired, Arc::unwrap_or_clone(inherited)));
    }
    // After a plan that could not be undone, nothing the placement says about the maps is
    // trusted: every word, table, key and backend is written again.
    let unsure = p.next.unsure.take();
    if unsure.is_some() {
        p.rewrite = true;
        for placed in p.next.services.values_mut() {
            let placed = Arc::make_mut(placed);
            placed.pushed = None;
            placed.adopted = false;
        }
    }
    // New services' filter bits go in before the services, removed ones' after.
    let want = filter_words(desired);
    let widened: Vec<u64> = p
        .next
        .filter
        .iter()
        .zip(&want)
        .map(|(c, w)| c | w)
        .collect();
    p.write_filter(widened);
    // Services that went away: unpublish first, then free their backends and region.
    let gone: Vec<ServiceKey> = p
        .next
        .services
        .keys()
        .filter(|k| desired.service(k).is_none())
        .copied()
        .collect();
    p.remove_services(&gone);
    for svc in desired.services() {
        p.sync_service(svc)?;
    }
    if let Some(unsure) = unsure {
        p.clear_strays(&unsure);
    }
    p.rewrite = false;
    p.write_filter(want);
    Ok(p.finish())
}

/// The placement whose backend slots a connection count should be taken over before
/// planning `desired`: after an adoption, the slots the take-over keeps.
pub fn staged(current: &Placement, desired: &Config) -> Placement {
    let (macs, counts) = (HashMap::new(), HashMap::new());
    let params = scheduler::Params::default();
    let inputs = Inputs {
        macs: &macs,
        counts: &counts,
        params: &params,
    };
    let mut p = Planner::new(current, &inputs);
    if let Some(inherited) = p.next.inherited.take() {
        p.take_over(desired, Arc::unwrap_or_clone(inherited));
    }
    p.next
}

/// Plans recomputing the tables of `config`'s load-aware services (and those with thresholds)
/// from `inputs.counts`; only tables that changed are republished.
pub fn plan_recompute(
    current: &Placement,
    config: &Config,
    inputs: &Inputs,
) -> Result<Plan, PlanError> {
    let mut p = Planner::new(current, inputs);
    p.free_quarantine();
    for svc in config.services() {
        if !table_uses_counts(svc) {
            continue;
        }
        let Some(placed) = p.next.services.remove(&svc.key) else {
            continue;
        };
        let mut placed = Arc::unwrap_or_clone(placed);
        // As a sync sees them: a tunnelled server needs no MAC of its own (its packets go to
        // the FIB's next hop), so it keeps its weight.
        let svc_macs: Vec<Option<[u8; 6]>> = svc
            .reals
            .iter()
            .map(|r| next_hop_mac(r, inputs.macs))
            .collect();
        p.sync_placed(svc, &svc_macs, &mut placed)?;
        p.next.services.insert(svc.key, Arc::new(placed));
    }
    Ok(p.finish())
}

/// Zeroes the counters of one service and its backends, or of every placed service.
pub fn plan_zero(current: &Placement, key: Option<&ServiceKey>) -> Vec<MapOp> {
    let mut ops = Vec::new();
    let mut zero = |p: &Placed| {
        ops.push(MapOp::ZeroStats {
            map: StatsMap::Service,
            id: p.id,
        });
        ops.extend(p.slots.values().map(|s| MapOp::ZeroStats {
            map: StatsMap::Backend,
            id: s.id,
        }));
    };
    match key {
        Some(k) => {
            if let Some(p) = current.services.get(k) {
                zero(p);
            }
        }
        None => current.services.values().for_each(|p| zero(p)),
    }
    ops
}

fn check_capacity(current: &Placement, config: &Config, inputs: &Inputs) -> Result<(), PlanError> {
    if config.services().len() > MAX_SERVICES as usize {
        return Err(PlanError::Services(config.services().len()));
    }
    // SERVICES holds one key per normal service and per group match.
    let keys: usize = config.services().iter().map(|s| bpf_keys(s).len()).sum();
    if keys > MAX_SERVICES as usize {
        return Err(PlanError::Keys(keys));
    }
    let backends: usize = config.services().iter().map(|s| s.reals.len()).sum();
    if backends > MAX_BACKENDS as usize {
        return Err(PlanError::Backends(backends));
    }
    // Worst case: every changed service gets a new table while the old ones are still live.
    let need: u64 = config
        .services()
        .iter()
        .filter(|s| {
            if current.unsure.is_some() {
                return true;
            }
            let m: Vec<_> = s
                .reals
                .iter()
                .map(|r| next_hop_mac(r, inputs.macs))
                .collect();
            !current
                .services
                .get(&s.key)
                .and_then(|p| p.pushed.as_deref())
                .is_some_and(|(ps, pm)| ps == *s && *pm == m)
        })
        .map(|s| table_upper_bound(s, inputs.params) as u64)
        .sum();
    let in_use = current.slots_in_use();
    if need + in_use > current.sched_slots as u64 {
        return Err(PlanError::SchedSlots {
            need,
            available: (current.sched_slots as u64).saturating_sub(in_use),
        });
    }
    Ok(())
}

/// A plan being built: the next placement and the operations so far.
pub(super) struct Planner<'a> {
    pub(super) next: Placement,
    pub(super) ops: Vec<MapOp>,
    inputs: &'a Inputs<'a>,
    published: usize,
    took_over: Option<TakeOver>,
    /// Write every filter word and backend, even those the placement says hold their value.
    rewrite: bool,
}

impl<'a> Planner<'a> {
    fn new(current: &Placement, inputs: &'a Inputs<'a>) -> Self {
        Self {
            next: current.clone(),
            ops: Vec::new(),
            inputs,
            published: 0,
            took_over: None,
            rewrite: false,
        }
    }

    fn finish(self) -> Plan {
        Plan {
            next: self.next,
            ops: self.ops,
            published: self.published,
            took_over: self.took_over,
        }
    }

    /// Regions quarantined by the previous plan are no longer read by any packet.
    fn free_quarantine(&mut self) {
        for r in std::mem::take(&mut self.next.quarantine) {
            self.next.regions.free(r);
        }
    }

    fn write_filter(&mut self, want: Vec<u64>) {
        for (i, (cur, w)) in self.next.filter.iter_mut().zip(&want).enumerate() {
            if cur != w || self.rewrite {
                self.ops.push(MapOp::SetFilterWord {
                    index: i as u32,
                    word: *w,
                });
                *cur = *w;
            }
        }
    }

    /// Removes services: every key first, then every backend slot, so that the slot writes
    /// form one run (the executor writes a run in one call).
    fn remove_services(&mut self, keys: &[ServiceKey]) {
        let mut removed = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(p) = self.next.services.remove(key) else {
                continue;
            };
            for k in &p.keys {
                self.unpublish_key(key, k);
            }
            self.next.quarantine.push(p.region);
            self.next.free_service_ids.push(p.id);
            removed.push(p);
        }
        for p in removed {
            for slot in p.slots.values() {
                self.free_backend(*slot);
            }
            self.free_laddrs(p.id, &p.laddrs);
        }
    }

    /// Removes a SERVICES key that `owner` wrote, unless another service has taken it since.
    fn unpublish_key(&mut self, owner: &ServiceKey, k: &BpfKey) {
        if self.next.owners.get(k) != Some(owner) {
            return;
        }
        self.next.owners.remove(k);
        self.ops.push(MapOp::DeleteService { key: *k });
    }

    /// Writes a service's value under one of its keys.
    fn publish_key(&mut self, owner: &ServiceKey, k: &BpfKey, value: ServiceValue) {
        self.ops.push(MapOp::PutService { key: *k, value });
        self.next.owners.insert(*k, *owner);
    }

    /// After a plan that could not be undone: removes the keys it wrote that no service owns
    /// now, and frees the backend slots it wrote that no service uses now.
    fn clear_strays(&mut self, unsure: &Unsure) {
        for k in &unsure.keys {
            if !self.next.owners.contains_key(k) {
                self.ops.push(MapOp::DeleteService { key: *k });
            }
        }
        let in_use: std::collections::HashSet<u32> = self
            .next
            .services
            .values()
            .flat_map(|p| p.slots.values().map(|s| s.id))
            .collect();
        for &id in &unsure.backends {
            if !in_use.contains(&id) {
                self.ops.push(MapOp::SetBackend {
                    id,
                    backend: Backend::default(),
                    was: Backend::default(),
                });
            }
        }
    }

    /// Removes a service's local addresses.
    pub(super) fn free_laddrs(&mut self, id: u32, laddrs: &[Option<LocalAddr>]) {
        for (slot, la) in laddrs.iter().enumerate() {
            if la.is_some() {
                self.ops.push(MapOp::SetLaddr {
                    key: laddr_key(id, slot as u8),
                    value: None,
                    was: *la,
                });
            }
        }
    }

    /// Places a service's local addresses in LADDRS slots: an address keeps its slot, a new
    /// one takes the first hole (or a new slot at the end), a deleted one leaves a hole; the
    /// trailing holes are trimmed. Returns the slot count the data plane walks.
    fn place_laddrs(&mut self, svc: &model::Service, placed: &mut Placed) -> u8 {
        let want: Vec<LocalAddr> = svc.laddrs.iter().map(laddr_of).collect();
        let id = placed.id;
        let mut next = placed.laddrs.clone();
        for (slot, cur) in next.iter_mut().enumerate() {
            let Some(c) = *cur else { continue };
            match want
                .iter()
                .find(|w| w.addr == c.addr && w.family == c.family)
            {
                Some(w) if *w == c && !self.rewrite => {}
                Some(w) => {
                    self.ops.push(MapOp::SetLaddr {
                        key: laddr_key(id, slot as u8),
                        value: Some(*w),
                        was: Some(c),
                    });
                    *cur = Some(*w);
                }
                None => {
                    self.ops.push(MapOp::SetLaddr {
                        key: laddr_key(id, slot as u8),
                        value: None,
                        was: Some(c),
                    });
                    *cur = None;
                }
            }
        }
        for w in &want {
            if next
                .iter()
                .flatten()
                .any(|c| c.addr == w.addr && c.family == w.family)
            {
                continue;
            }
            let slot = match next.iter().position(Option::is_none) {
                Some(i) => i,
                None => {
                    next.push(None);
                    next.len() - 1
                }
            };
            debug_assert!(slot < MAX_LADDR_SLOTS as usize, "the model bounds laddrs");
            self.ops.push(MapOp::SetLaddr {
                key: laddr_key(id, slot as u8),
                value: Some(*w),
                was: None,
            });
            next[slot] = Some(*w);
        }
        while next.last() == Some(&None) {
            next.pop();
        }
        placed.laddrs = next;
        placed.laddrs.len() as u8
    }

    /// Frees a backend slot. Generation 0: connection entries bound to it see that their
    /// server is gone.
    pub(super) fn free_backend(&mut self, slot: Slot) {
        self.ops.push(MapOp::SetBackend {
            id: slot.id,
            backend: Backend::default(),
            was: slot.written,
        });
        self.next.free_backend_ids.push(slot.id);
    }

    fn sync_service(&mut self, svc: &model::Service) -> Result<(), PlanError> {
        let key = svc.key;
        let svc_macs: Vec<Option<[u8; 6]>> = svc
            .reals
            .iter()
            .map(|r| next_hop_mac(r, self.inputs.macs))
            .collect();
        if let Some(p) = self.next.services.get(&key) {
            if p.pushed
                .as_deref()
                .is_some_and(|(s, m)| s == svc && *m == svc_macs)
            {
                return Ok(());
            }
        }
        let mut placed = match self.next.services.remove(&key) {
            Some(p) => Arc::unwrap_or_clone(p),
            None => {
                let id = self
                    .next
                    .free_service_ids
                    .pop()
                    .ok_or(PlanError::ServiceIds)?;
                self.ops.push(MapOp::ZeroStats {
                    map: StatsMap::Service,
                    id,
                });
                Placed {
                    adopted: false,
                    id,
                    region: Region { off: 0, len: 0 },
                    table: Vec::new(),
                    kind: table_kind::SEQUENCE,
                    value_flags: (0, 0, 0),
                    sched: scheduler::Scheduling::new(svc.scheduler, svc.flags),
                    digest: None,
                    slots: HashMap::new(),
                    pushed: None,
                    keys: Vec::new(),
                    laddrs: Vec::new(),
                }
            }
        };
        self.sync_placed(svc, &svc_macs, &mut placed)?;
        placed.pushed = Some(Arc::new((svc.clone(), svc_macs)));
        self.next.services.insert(key, Arc::new(placed));
        Ok(())
    }

    fn sync_placed(
        &mut self,
        svc: &model::Service,
        svc_macs: &[Option<[u8; 6]>],
        placed: &mut Placed,
    ) -> Result<(), PlanError> {
        // Real servers removed from this service.
        let stale: Vec<SocketAddr> = placed
            .slots
            .keys()
            .filter(|a| !svc.reals.iter().any(|r| r.addr == **a))
            .copied()
            .collect();
        for a in stale {
            if let Some(slot) = placed.slots.remove(&a) {
                self.free_backend(slot);
            }
        }
        // Backends, in the service's order; a server without a MAC takes no new connections.
        let mut ids = Vec::with_capacity(svc.reals.len());
        let mut weights = Vec::with_capacity(svc.reals.len());
        let mark = self.ops.len();
        for (real, mac) in svc.reals.iter().zip(svc_macs) {
            ids.push(self.place_backend(
                placed.id,
                &mut placed.slots,
                real,
                mac.unwrap_or_default(),
            )?);
            weights.push(if mac.is_some() { real.weight } else { 0 });
        }
        // New slots' counters zeroed first, then the backend writes in one run (the executor
        // writes a run in one call); each slot is still zeroed before it is written.
        self.ops[mark..].sort_by_key(|op| matches!(op, MapOp::SetBackend { .. }));
        if placed.sched.scheduler != svc.scheduler || placed.sched.flags != svc.flags {
            placed.sched = scheduler::Scheduling::new(svc.scheduler, svc.flags);
        }
        let counts = self.inputs.counts;
        let dests: Vec<scheduler::Dest> = svc
            .reals
            .iter()
            .zip(&weights)
            .zip(&ids)
            .map(|((r, &weight), id)| {
                let c = counts.get(id).copied().unwrap_or_default();
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
        let (kind, table) = match placed.sched.table(&dests, self.inputs.params) {
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
        let laddr_slots_before = placed.laddrs.len();
        let laddrs = self.place_laddrs(svc, placed);
        let value = ServiceValue {
            id: placed.id,
            flags,
            table_off: 0,
            table_len: 0,
            persist_timeout_s,
            table_kind: kind,
            persist_prefix,
            laddrs,
            _pad: 0,
        };
        let keys = bpf_keys(svc);
        if (placed.pushed.is_some() || placed.adopted)
            && laddr_slots_before == laddrs as usize
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
                self.publish_key(&svc.key, k, value);
            }
        } else {
            let region = if table.is_empty() {
                Region { off: 0, len: 0 }
            } else {
                self.next
                    .regions
                    .alloc(table.len() as u32)
                    .ok_or(PlanError::NoRoom(table.len()))?
            };
            if !table.is_empty() {
                self.ops.push(MapOp::SetSlots {
                    off: region.off,
                    ids: table.clone(),
                });
            }
            let value = ServiceValue {
                table_off: region.off,
                table_len: region.len,
                ..value
            };
            // Every key points at the new region before the old one is quarantined.
            for k in &keys {
                self.publish_key(&svc.key, k, value);
            }
            self.ops.push(MapOp::ResetCursor { id: placed.id });
            let old = std::mem::replace(&mut placed.region, region);
            if old != region {
                self.published += 1;
            }
            self.next.quarantine.push(old);
            placed.table = table;
            placed.kind = kind;
            placed.value_flags = (flags, persist_timeout_s, persist_prefix);
            placed.adopted = false;
        }
        // Keys the service no longer has (a removed match): unpublished, so their traffic
        // passes (their filter bits are cleared at the end of the plan).
        let stale: Vec<BpfKey> = placed
            .keys
            .iter()
            .filter(|k| !keys.contains(k))
            .copied()
            .collect();
        for k in &stale {
            self.unpublish_key(&svc.key, k);
        }
        placed.keys = keys;
        // After every sync, not only when the table changed: a slot handed from one server to
        // another leaves the ids of the table as they were, but not what they name.
        placed.digest = placed.compute_digest();
        Ok(())
    }

    fn place_backend(
        &mut self,
        service_id: u32,
        slots: &mut HashMap<SocketAddr, Slot>,
        real: &model::RealServer,
        mac: [u8; 6],
    ) -> Result<u32, PlanError> {
        let mut want = backend_of(service_id, real, mac);
        if let Some(slot) = slots.get_mut(&real.addr) {
            want.generation = slot.written.generation;
            if slot.written != want || self.rewrite {
                self.ops.push(MapOp::SetBackend {
                    id: slot.id,
                    backend: want,
                    was: slot.written,
                });
                slot.written = want;
            }
            return Ok(slot.id);
        }
        let id = self
            .next
            .free_backend_ids
            .pop()
            .ok_or(PlanError::BackendIds)?;
        want.generation = self.next.next_generation;
        self.next.next_generation = self.next.next_generation.wrapping_add(1).max(1);
        self.ops.push(MapOp::ZeroStats {
            map: StatsMap::Backend,
            id,
        });
        self.ops.push(MapOp::SetBackend {
            id,
            backend: want,
            was: Backend::default(),
        });
        slots.insert(real.addr, Slot { id, written: want });
        Ok(id)
    }
}

/// The BACKENDS value of a real server (generation 0: the caller sets it).
fn backend_of(service_id: u32, real: &model::RealServer, mac: [u8; 6]) -> Backend {
    let (addr, family) = addr_bytes(real.addr.ip());
    Backend {
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
            model::ForwardMethod::Nat => fwd::NAT,
            model::ForwardMethod::FullNat => fwd::FULLNAT,
        },
        flags: match real.forward {
            model::ForwardMethod::Tunnel(t) if t.csum => backend_flags::TUN_CSUM,
            _ => 0,
        },
        _pad: 0,
        generation: 0,
        tun_port_be: match real.forward {
            model::ForwardMethod::Tunnel(t) => t.port.to_be(),
            model::ForwardMethod::Dr
            | model::ForwardMethod::Nat
            | model::ForwardMethod::FullNat => 0,
        },
        _pad2: [0; 2],
        service: service_id,
    }
}

/// Whether a service's table depends on live connection counts: a load-aware scheduler, or
/// thresholds (overload flags change any scheduler's choices).
pub fn table_uses_counts(svc: &model::Service) -> bool {
    scheduler::is_load_aware(svc.scheduler) || svc.reals.iter().any(|r| r.u_threshold > 0)
}

/// The SERVICE_FILTER bitmap for a configuration: one bit per SERVICES key, and one per NAT or
/// FULLNAT real server's (address, port, protocol) under lb_common::nat_reply_filter_proto, by
/// which the data plane recognises their replies.
pub fn filter_words(config: &Config) -> Vec<u64> {
    let mut words = vec![0u64; FILTER_WORDS as usize];
    let mut set = |addr: &[u8; 16], port_be: u16, proto: u8| {
        let bit = filter_bit(addr, port_be, proto);
        words[(bit >> 6) as usize] |= 1 << (bit & 63);
    };
    for svc in config.services() {
        for k in bpf_keys(svc) {
            set(&k.addr, k.port_be, k.proto);
            for r in svc.reals.iter().filter(|r| {
                matches!(
                    r.forward,
                    model::ForwardMethod::Nat | model::ForwardMethod::FullNat
                )
            }) {
                let (addr, _) = addr_bytes(r.addr.ip());
                set(
                    &addr,
                    r.addr.port().to_be(),
                    nat_reply_filter_proto(k.proto),
                );
            }
        }
    }
    words
}

/// Whether any real server is reached by NAT or FULLNAT (CONFIG's NAT flag: replies are looked
/// for).
pub fn uses_nat(config: &Config) -> bool {
    config
        .services()
        .iter()
        .any(|s| s.has_nat() || s.has_fullnat())
}

/// The LADDRS value of a local address.
fn laddr_of(la: &model::LocalAddr) -> LocalAddr {
    let (addr, family) = addr_bytes(la.addr);
    LocalAddr {
        addr,
        port_lo: la.ports.lo,
        port_count: (la.ports.len().min(u16::MAX as u32)) as u16,
        family,
        _pad: [0; 3],
    }
}

/// The SERVICES keys of a service: a normal service's own key, or each match of a group (a
/// group without matches has none: it takes no traffic).
pub fn bpf_keys(svc: &model::Service) -> Vec<BpfKey> {
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

/// The MAC a real server's frames are sent to: its own in DR mode (None until resolved); a
/// tunnelled, NAT or FULLNAT server needs none (the data plane asks the kernel's FIB).
fn next_hop_mac(r: &model::RealServer, macs: &HashMap<IpAddr, [u8; 6]>) -> Option<[u8; 6]> {
    match r.forward {
        model::ForwardMethod::Dr => macs.get(&r.addr.ip()).copied(),
        model::ForwardMethod::Tunnel(_)
        | model::ForwardMethod::Nat
        | model::ForwardMethod::FullNat => Some([0; 6]),
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
pub fn to_bpf_key(key: &VirtualAddr) -> BpfKey {
    let (addr, family) = addr_bytes(key.addr.ip());
    BpfKey {
        addr,
        port_be: key.addr.port().to_be(),
        proto: key.protocol.number(),
        family,
    }
}
