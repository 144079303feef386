//! The maps the controller writes, as the executor sees them: a [`Maps`] trait with a read and
//! a write side, implemented over the kernel's maps (`super::kernel::KernelMaps`) and in memory
//! ([`MemoryMaps`]) so the planner, the executor and adoption are tested without root.
//!
//! Only the maps the controller owns the contents of are here: SERVICES, BACKENDS,
//! SCHED_SLOTS, SEQ_CURSOR, SERVICE_FILTER and the two per-CPU stats arrays. The connection
//! table, templates, reasons and CONFIG stay with `Dataplane`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use lb_common::{
    filter::FILTER_WORDS, names, Backend, LocalAddr, ServiceKey as BpfKey, ServiceValue, Stats,
    MAX_BACKENDS,
};
use thiserror::Error;

/// A map access failed.
#[derive(Debug, Error)]
#[error("map {map}: {source}")]
pub struct MapsError {
    /// The map.
    pub map: &'static str,
    /// What failed (the kernel's error, or an injected fault).
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl MapsError {
    /// An error of `map` from any source.
    pub fn new(
        map: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            map,
            source: source.into(),
        }
    }
}

/// Which per-CPU stats array.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StatsMap {
    /// SERVICE_STATS, by service id.
    Service,
    /// BACKEND_STATS, by backend slot.
    Backend,
}

impl StatsMap {
    /// The map's name.
    pub fn name(self) -> &'static str {
        match self {
            StatsMap::Service => names::MAP_SERVICE_STATS,
            StatsMap::Backend => names::MAP_BACKEND_STATS,
        }
    }
}

/// The controller's maps. Reads never change anything; each write is one kernel update (or one
/// run of them for `set_slots`), so the executor can read what a write will overwrite and put
/// it back.
pub trait Maps {
    /// Every SERVICE_FILTER word.
    fn filter_words(&self) -> Result<Vec<u64>, MapsError>;
    /// One SERVICE_FILTER word.
    fn filter_word(&self, index: u32) -> Result<u64, MapsError>;
    /// Writes one SERVICE_FILTER word.
    fn set_filter_word(&mut self, index: u32, word: u64) -> Result<(), MapsError>;
    /// `len` SCHED_SLOTS entries from `off`.
    fn slots(&self, off: u32, len: u32) -> Result<Vec<u32>, MapsError>;
    /// Writes SCHED_SLOTS entries from `off` on; may fail partway.
    fn set_slots(&mut self, off: u32, ids: &[u32]) -> Result<(), MapsError>;
    /// Every SERVICES entry.
    fn services(&self) -> Result<Vec<(BpfKey, ServiceValue)>, MapsError>;
    /// One SERVICES entry.
    fn service(&self, key: &BpfKey) -> Result<Option<ServiceValue>, MapsError>;
    /// Inserts or replaces a SERVICES entry (atomically, for packets).
    fn put_service(&mut self, key: &BpfKey, value: ServiceValue) -> Result<(), MapsError>;
    /// Removes a SERVICES entry; removing an absent one is no error.
    fn delete_service(&mut self, key: &BpfKey) -> Result<(), MapsError>;
    /// Every BACKENDS slot, by id.
    fn backends(&self) -> Result<Vec<Backend>, MapsError>;
    /// One BACKENDS slot.
    fn backend(&self, id: u32) -> Result<Backend, MapsError>;
    /// Writes a BACKENDS slot.
    fn set_backend(&mut self, id: u32, backend: Backend) -> Result<(), MapsError>;
    /// Writes BACKENDS slots in order (an implementation may batch them); on failure, how many
    /// were written before the one that failed.
    fn set_backends(&mut self, run: &[(u32, Backend)]) -> Result<(), (usize, MapsError)> {
        for (i, (id, backend)) in run.iter().enumerate() {
            self.set_backend(*id, *backend).map_err(|e| (i, e))?;
        }
        Ok(())
    }
    /// Every LADDRS entry (a FULLNAT service's local addresses), by key.
    fn laddrs(&self) -> Result<Vec<(u32, LocalAddr)>, MapsError>;
    /// LADDRS\[key\] = value, or removed (None).
    fn set_laddr(&mut self, key: u32, value: Option<LocalAddr>) -> Result<(), MapsError>;
    /// A service's SEQ_CURSOR.
    fn cursor(&self, id: u32) -> Result<u64, MapsError>;
    /// `len` SEQ_CURSOR entries from `off`. An implementation may read them in bulk; this one
    /// reads them one by one.
    fn cursors(&self, off: u32, len: u32) -> Result<Vec<u64>, MapsError> {
        (off..off + len).map(|id| self.cursor(id)).collect()
    }
    /// Writes a service's SEQ_CURSOR.
    fn set_cursor(&mut self, id: u32, value: u64) -> Result<(), MapsError>;
    /// One entry of a stats array, per CPU.
    fn stats(&self, map: StatsMap, id: u32) -> Result<Vec<Stats>, MapsError>;
    /// `len` entries of a stats array from `off`, flat: `cpus()` values per entry. An
    /// implementation may read them in bulk; this one reads them one by one.
    fn stats_run(&self, map: StatsMap, off: u32, len: u32) -> Result<Vec<Stats>, MapsError> {
        let mut out = Vec::with_capacity(len as usize * self.cpus());
        for id in off..off + len {
            out.extend(self.stats(map, id)?);
        }
        Ok(out)
    }
    /// Writes one entry of a stats array, per CPU.
    fn set_stats(&mut self, map: StatsMap, id: u32, per_cpu: &[Stats]) -> Result<(), MapsError>;
    /// Number of CPUs the per-CPU arrays hold values for.
    fn cpus(&self) -> usize;
}

/// An injected failure (tests).
#[derive(Debug, Error)]
#[error("injected failure of write {0}")]
pub struct Injected(pub usize);

/// The maps in memory. Default values are not stored, so two `MemoryMaps` with the same
/// contents compare equal whatever was written and reverted in between. Writes can be made to
/// fail ([`MemoryMaps::fail_write`]) to test rollback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryMaps {
    /// SERVICE_FILTER.
    pub filter: Vec<u64>,
    /// SCHED_SLOTS, non-zero entries.
    pub slots: BTreeMap<u32, u32>,
    /// Its size.
    pub sched_slots: u32,
    /// SERVICES.
    pub services: HashMap<BpfKey, ServiceValue>,
    /// BACKENDS, non-default slots.
    pub backends: BTreeMap<u32, Backend>,
    /// SEQ_CURSOR, non-zero entries.
    pub cursors: BTreeMap<u32, u64>,
    /// LADDRS.
    pub laddrs: BTreeMap<u32, LocalAddr>,
    /// SERVICE_STATS and BACKEND_STATS, entries with a non-zero CPU.
    pub stats: BTreeMap<(StatsMap, u32), Vec<Stats>>,
    /// CPUs.
    pub cpus: usize,
    /// Writes made so far (every write counts, those that fail too).
    pub writes: usize,
    /// The writes (0-based, counted in `writes`) that fail, once each.
    pub fail_at: BTreeSet<usize>,
}

impl MemoryMaps {
    /// Empty maps, as a fresh load creates them.
    pub fn new(sched_slots: u32, cpus: usize) -> Self {
        Self {
            filter: vec![0; FILTER_WORDS as usize],
            slots: BTreeMap::new(),
            sched_slots,
            services: HashMap::new(),
            backends: BTreeMap::new(),
            cursors: BTreeMap::new(),
            laddrs: BTreeMap::new(),
            stats: BTreeMap::new(),
            cpus,
            writes: 0,
            fail_at: BTreeSet::new(),
        }
    }

    /// Makes the `n`-th write from now fail (once); several can be chosen.
    pub fn fail_write(&mut self, n: usize) {
        self.fail_at.insert(self.writes + n);
    }

    /// The contents only (no write counter, no fault): what two states are compared by.
    pub fn contents(&self) -> MemoryMaps {
        MemoryMaps {
            writes: 0,
            fail_at: BTreeSet::new(),
            ..self.clone()
        }
    }

    /// Counts a write of `map`, failing it if it is the chosen one.
    fn write(&mut self, map: &'static str) -> Result<(), MapsError> {
        let n = self.writes;
        self.writes += 1;
        if self.fail_at.remove(&n) {
            return Err(MapsError::new(map, Injected(n)));
        }
        Ok(())
    }

    fn check(map: &'static str, index: u32, len: u32) -> Result<(), MapsError> {
        if index >= len {
            return Err(MapsError::new(
                map,
                format!("index {index} out of bounds ({len} entries)"),
            ));
        }
        Ok(())
    }
}

fn store<K: Ord, V: Default + PartialEq>(map: &mut BTreeMap<K, V>, key: K, value: V) {
    if value == V::default() {
        map.remove(&key);
    } else {
        map.insert(key, value);
    }
}

impl Maps for MemoryMaps {
    fn filter_words(&self) -> Result<Vec<u64>, MapsError> {
        Ok(self.filter.clone())
    }

    fn filter_word(&self, index: u32) -> Result<u64, MapsError> {
        Self::check(names::MAP_SERVICE_FILTER, index, FILTER_WORDS)?;
        Ok(self.filter[index as usize])
    }

    fn set_filter_word(&mut self, index: u32, word: u64) -> Result<(), MapsError> {
        Self::check(names::MAP_SERVICE_FILTER, index, FILTER_WORDS)?;
        self.write(names::MAP_SERVICE_FILTER)?;
        self.filter[index as usize] = word;
        Ok(())
    }

    fn slots(&self, off: u32, len: u32) -> Result<Vec<u32>, MapsError> {
        if len > 0 {
            Self::check(names::MAP_SCHED_SLOTS, off + len - 1, self.sched_slots)?;
        }
        Ok((off..off + len)
            .map(|i| self.slots.get(&i).copied().unwrap_or(0))
            .collect())
    }

    fn set_slots(&mut self, off: u32, ids: &[u32]) -> Result<(), MapsError> {
        if !ids.is_empty() {
            Self::check(
                names::MAP_SCHED_SLOTS,
                off + ids.len() as u32 - 1,
                self.sched_slots,
            )?;
        }
        if let Err(e) = self.write(names::MAP_SCHED_SLOTS) {
            // As the kernel's one-by-one writes would: the first half made it.
            for (i, &id) in ids.iter().enumerate().take(ids.len() / 2) {
                store(&mut self.slots, off + i as u32, id);
            }
            return Err(e);
        }
        for (i, &id) in ids.iter().enumerate() {
            store(&mut self.slots, off + i as u32, id);
        }
        Ok(())
    }

    fn services(&self) -> Result<Vec<(BpfKey, ServiceValue)>, MapsError> {
        Ok(self.services.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn service(&self, key: &BpfKey) -> Result<Option<ServiceValue>, MapsError> {
        Ok(self.services.get(key).copied())
    }

    fn put_service(&mut self, key: &BpfKey, value: ServiceValue) -> Result<(), MapsError> {
        self.write(names::MAP_SERVICES)?;
        self.services.insert(*key, value);
        Ok(())
    }

    fn delete_service(&mut self, key: &BpfKey) -> Result<(), MapsError> {
        self.write(names::MAP_SERVICES)?;
        self.services.remove(key);
        Ok(())
    }

    fn backends(&self) -> Result<Vec<Backend>, MapsError> {
        Ok((0..MAX_BACKENDS)
            .map(|i| self.backends.get(&i).copied().unwrap_or_default())
            .collect())
    }

    fn backend(&self, id: u32) -> Result<Backend, MapsError> {
        Self::check(names::MAP_BACKENDS, id, MAX_BACKENDS)?;
        Ok(self.backends.get(&id).copied().unwrap_or_default())
    }

    fn set_backend(&mut self, id: u32, backend: Backend) -> Result<(), MapsError> {
        Self::check(names::MAP_BACKENDS, id, MAX_BACKENDS)?;
        self.write(names::MAP_BACKENDS)?;
        store(&mut self.backends, id, backend);
        Ok(())
    }

    fn laddrs(&self) -> Result<Vec<(u32, LocalAddr)>, MapsError> {
        Ok(self.laddrs.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn set_laddr(&mut self, key: u32, value: Option<LocalAddr>) -> Result<(), MapsError> {
        self.write(names::MAP_LADDRS)?;
        match value {
            Some(v) => self.laddrs.insert(key, v),
            None => self.laddrs.remove(&key),
        };
        Ok(())
    }

    fn cursor(&self, id: u32) -> Result<u64, MapsError> {
        Ok(self.cursors.get(&id).copied().unwrap_or(0))
    }

    fn set_cursor(&mut self, id: u32, value: u64) -> Result<(), MapsError> {
        self.write(names::MAP_SEQ_CURSOR)?;
        store(&mut self.cursors, id, value);
        Ok(())
    }

    fn stats(&self, map: StatsMap, id: u32) -> Result<Vec<Stats>, MapsError> {
        Ok(self
            .stats
            .get(&(map, id))
            .cloned()
            .unwrap_or_else(|| vec![Stats::default(); self.cpus]))
    }

    fn set_stats(&mut self, map: StatsMap, id: u32, per_cpu: &[Stats]) -> Result<(), MapsError> {
        if per_cpu.len() != self.cpus {
            return Err(MapsError::new(
                map.name(),
                format!("{} values for {} CPUs", per_cpu.len(), self.cpus),
            ));
        }
        self.write(map.name())?;
        if per_cpu.iter().all(|s| *s == Stats::default()) {
            self.stats.remove(&(map, id));
        } else {
            self.stats.insert((map, id), per_cpu.to_vec());
        }
        Ok(())
    }

    fn cpus(&self) -> usize {
        self.cpus
    }
}
