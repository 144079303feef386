//! A data plane in memory: the same planner and executor as [`super::Dataplane`], applied to
//! [`MemoryMaps`]; connections, templates and reason counters are whatever a test puts there.
//! It lets the controller and its request handling run in unit tests, without root.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use lb_common::{reason::REASON_COUNT, DataplaneConfig, PersistEntry, PersistKey, Reason, Stats};

use super::{
    adopt::read_pinned,
    exec, inherit,
    maps::{Maps, MapsError, MemoryMaps, StatsMap},
    ops::DataplaneOps,
    plan::{self, Inputs, Placement},
    Activity, ConnCounts, ConnInfo, Counters, DataplaneError, TableFill,
};
use crate::{
    model::{Config, ServiceKey},
    scheduler,
};

/// Scheduler slots of an in-memory data plane: enough for tests, small enough to compare.
pub const MEMORY_SCHED_SLOTS: u32 = 1 << 16;
/// Connection-table capacity it reports.
const MEMORY_CONNS: u32 = 4096;

/// The data plane in memory.
#[derive(Debug)]
pub struct MemoryDataplane {
    placement: Placement,
    /// The controller's maps.
    pub maps: MemoryMaps,
    /// CONFIG.
    pub config: DataplaneConfig,
    /// Makes the next CONFIG write fail (once).
    pub fail_config: bool,
    /// Connection counts per backend slot, as a table walk would find them.
    pub counts: HashMap<u32, ConnCounts>,
    /// The connection table's live entries.
    pub conns: Vec<ConnInfo>,
    /// NAT and FULLNAT ways back (NAT_REPLIES).
    pub nat_replies: Vec<(lb_common::FlowKey, lb_common::NatReply)>,
    /// Live persistence templates, with ns until each expires.
    pub templates: Vec<(PersistKey, PersistEntry, u64)>,
    /// Reason counters, by reason.
    pub reasons: [u64; REASON_COUNT as usize],
    /// Table tunables.
    pub params: scheduler::Params,
    /// FULLNAT refusals per service id, as FNAT_EXHAUSTED would sum them.
    pub fullnat_exhausted: HashMap<u32, u64>,
    /// Mid-flow misses per service id, as MIDFLOW_MISS would sum them.
    pub midflow_misses: HashMap<u32, u64>,
    /// The connection table's fill, as a walk would find it.
    pub table: TableFill,
    activity: Activity,
}

impl Default for MemoryDataplane {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryDataplane {
    /// Empty maps, as a fresh load creates them (two CPUs).
    pub fn new() -> Self {
        Self::with_maps(
            Placement::new(MEMORY_SCHED_SLOTS),
            MemoryMaps::new(MEMORY_SCHED_SLOTS, 2),
        )
    }

    fn with_maps(placement: Placement, maps: MemoryMaps) -> Self {
        Self {
            placement,
            maps,
            config: DataplaneConfig::default(),
            fail_config: false,
            counts: HashMap::new(),
            conns: Vec::new(),
            nat_replies: Vec::new(),
            templates: Vec::new(),
            reasons: [0; REASON_COUNT as usize],
            // Small tables: a test compares them whole.
            params: scheduler::Params {
                maglev_size: 251,
                plan_len: 32,
            },
            fullnat_exhausted: HashMap::new(),
            midflow_misses: HashMap::new(),
            table: TableFill::default(),
            activity: Activity::default(),
        }
    }

    /// Adopts maps a previous controller filled (as `Dataplane::start_pinned` adopts pins).
    pub fn adopt(maps: MemoryMaps, config: DataplaneConfig) -> Result<Self, DataplaneError> {
        let pinned = read_pinned(&maps, maps.sched_slots)?;
        let adopted = inherit::inherit(&pinned, maps.sched_slots)?;
        Ok(Self {
            config,
            ..Self::with_maps(adopted.placement, maps)
        })
    }

    /// The placement (what the controller believes the maps hold).
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// Adds to a service's or a backend's counters on CPU 0, as forwarded packets would.
    pub fn count(&mut self, map: StatsMap, id: u32, add: Stats) -> Result<(), MapsError> {
        let mut per_cpu = self.maps.stats(map, id)?;
        per_cpu[0].add(&add);
        self.maps.set_stats(map, id, &per_cpu)
    }

    fn inputs<'a>(&'a self, macs: &'a HashMap<IpAddr, [u8; 6]>) -> Inputs<'a> {
        Inputs {
            macs,
            counts: &self.counts,
            params: &self.params,
        }
    }

    fn sum(&self, map: StatsMap, id: Option<u32>) -> Result<Counters, DataplaneError> {
        let Some(id) = id else {
            return Ok(Counters::default());
        };
        let mut total = Stats::default();
        for s in self.maps.stats(map, id)? {
            total.add(&s);
        }
        Ok(total.into())
    }
}

impl DataplaneOps for MemoryDataplane {
    fn current_config(&self) -> Result<DataplaneConfig, DataplaneError> {
        Ok(self.config)
    }

    fn slot_generations(&self) -> HashMap<u32, u32> {
        self.placement.generations()
    }

    fn install_conns(&mut self, conns: &[super::ops::SyncedConn]) -> Vec<super::ops::Installing> {
        use super::ops::Installing;
        conns
            .iter()
            .map(|c| {
                if let Some((rk, rv)) = c.reply {
                    match self.nat_replies.iter().find(|(k, _)| *k == rk) {
                        Some((_, have)) if *have != rv => return Installing::ReplyTaken,
                        Some(_) => {}
                        None => self.nat_replies.push((rk, rv)),
                    }
                }
                // As the kernel's map: one entry per key, replaced; no clock here, so never
                // expiring.
                self.conns.retain(|i| i.key != c.key);
                self.conns.push(ConnInfo {
                    key: c.key,
                    entry: c.entry,
                    expires_in_ns: u64::MAX,
                });
                Installing::Installed
            })
            .collect()
    }

    fn conn_entry(&self, key: &lb_common::FlowKey) -> Option<lb_common::ConnEntry> {
        self.conns.iter().find(|c| c.key == *key).map(|c| c.entry)
    }

    fn local_slot(&self, service_id: u32, addr: IpAddr) -> Option<u8> {
        self.placement.local_slot(service_id, addr)
    }

    fn install_template(
        &mut self,
        key: &PersistKey,
        entry: &PersistEntry,
    ) -> Result<(), DataplaneError> {
        self.templates.retain(|(k, _, _)| k != key);
        self.templates.push((*key, *entry, u64::MAX));
        Ok(())
    }

    fn set_config(&mut self, cfg: DataplaneConfig) -> Result<(), DataplaneError> {
        if std::mem::take(&mut self.fail_config) {
            return Err(MapsError::new(lb_common::names::MAP_CONFIG, "injected failure").into());
        }
        self.config = cfg;
        Ok(())
    }

    fn adoption_pending(&self) -> bool {
        self.placement.adoption_pending()
    }

    fn inherited_macs(&self) -> HashMap<IpAddr, [u8; 6]> {
        self.placement.inherited_macs()
    }

    fn sync(
        &mut self,
        config: &Config,
        macs: &HashMap<IpAddr, [u8; 6]>,
    ) -> Result<(), DataplaneError> {
        let plan = plan::plan(&self.placement, config, &self.inputs(macs))?;
        exec::commit(&mut self.placement, &mut self.maps, plan)?;
        self.activity.syncs += 1;
        Ok(())
    }

    fn recompute(
        &mut self,
        config: &Config,
        macs: &HashMap<IpAddr, [u8; 6]>,
    ) -> Result<usize, DataplaneError> {
        let plan = plan::plan_recompute(&self.placement, config, &self.inputs(macs))?;
        let published = exec::commit(&mut self.placement, &mut self.maps, plan)?.published;
        self.activity.recomputations += 1;
        self.activity.tables_published += published as u64;
        Ok(published)
    }

    fn refresh_plans(
        &mut self,
        config: &Config,
        macs: &HashMap<IpAddr, [u8; 6]>,
    ) -> Result<usize, DataplaneError> {
        self.recompute(config, macs)
    }

    fn service_id(&self, key: &ServiceKey) -> Option<u32> {
        self.placement.service_id(key)
    }

    fn backend_id(&self, key: &ServiceKey, addr: SocketAddr) -> Option<u32> {
        self.placement.backend_id(key, addr)
    }

    fn service_counters(&self, key: &ServiceKey) -> Result<Counters, DataplaneError> {
        self.sum(StatsMap::Service, self.service_id(key))
    }

    fn backend_counters(
        &self,
        key: &ServiceKey,
        addr: SocketAddr,
    ) -> Result<Counters, DataplaneError> {
        self.sum(StatsMap::Backend, self.backend_id(key, addr))
    }

    fn zero_counters(&mut self) -> Result<(), DataplaneError> {
        let ops = plan::plan_zero(&self.placement, None);
        exec::execute(&mut self.maps, &ops)?;
        self.midflow_misses.clear();
        Ok(())
    }

    fn zero_service_counters(&mut self, key: &ServiceKey) -> Result<(), DataplaneError> {
        let ops = plan::plan_zero(&self.placement, Some(key));
        exec::execute(&mut self.maps, &ops)?;
        if let Some(id) = self.placement.service_id(key) {
            self.midflow_misses.remove(&id);
        }
        Ok(())
    }

    fn reasons(&self) -> Result<Vec<(Reason, u64)>, DataplaneError> {
        Ok(Reason::ALL
            .iter()
            .map(|r| (*r, self.reasons[*r as usize]))
            .collect())
    }

    fn connections(&self, limit: usize) -> Result<Vec<ConnInfo>, DataplaneError> {
        // As the kernel's walk: entries of a freed or reused slot are not live.
        let generations = self.placement.generations();
        Ok(self
            .conns
            .iter()
            .filter(|c| generations.get(&c.entry.backend) == Some(&c.entry.generation))
            .take(limit)
            .copied()
            .collect())
    }

    fn templates(
        &self,
        limit: usize,
    ) -> Result<Vec<(PersistKey, PersistEntry, u64)>, DataplaneError> {
        let generations = self.placement.generations();
        Ok(self
            .templates
            .iter()
            .filter(|(_, t, _)| generations.get(&t.backend) == Some(&t.generation))
            .take(limit)
            .copied()
            .collect())
    }

    fn conn_counts(&mut self) -> Result<HashMap<u32, ConnCounts>, DataplaneError> {
        Ok(self.counts.clone())
    }

    fn conn_capacity(&self) -> u32 {
        MEMORY_CONNS
    }

    fn activity(&self) -> Activity {
        self.activity
    }

    fn fullnat_exhausted(&self) -> Result<HashMap<u32, u64>, DataplaneError> {
        Ok(self.fullnat_exhausted.clone())
    }

    fn local_addr(&self, service_id: u32, slot: u8) -> Option<IpAddr> {
        self.placement.local_addr(service_id, slot)
    }

    fn midflow_misses(&self) -> Result<HashMap<u32, u64>, DataplaneError> {
        Ok(self.midflow_misses.clone())
    }

    fn table_fill(&self) -> TableFill {
        self.table
    }

    fn table_digest(&self, key: &ServiceKey) -> Option<scheduler::digest::TableDigest> {
        self.placement.table_digest(key)
    }
}
