//! [`Maps`] over the kernel's maps: thin wrappers around the aya maps, one system call per
//! entry written (a table: one batch write), batch reads where a whole map or table is read.

use aya::maps::{Array, HashMap as BpfHashMap, MapData, MapError, PerCpuArray, PerCpuValues};
use lb_common::{
    filter::FILTER_WORDS, names, Backend, LocalAddr, ServiceKey as BpfKey, ServiceValue, Stats,
    MAX_BACKENDS,
};

use super::{
    batch,
    maps::{Maps, MapsError, StatsMap},
};

/// The controller's maps in the kernel.
pub(super) struct KernelMaps {
    pub(super) services: BpfHashMap<MapData, BpfKey, ServiceValue>,
    pub(super) backends: Array<MapData, Backend>,
    pub(super) slots: Array<MapData, u32>,
    pub(super) cursors: Array<MapData, u64>,
    pub(super) laddrs: BpfHashMap<MapData, u32, LocalAddr>,
    pub(super) service_stats: PerCpuArray<MapData, Stats>,
    pub(super) backend_stats: PerCpuArray<MapData, Stats>,
    pub(super) filter: Array<MapData, u64>,
    pub(super) cpus: usize,
    /// SCHED_SLOTS as this controller wrote it. Only the controller writes that map, so what a
    /// table write overwrites is read here, not from the kernel: a batch read costs the kernel
    /// about a third of the writes. Pages never written stay untouched (not resident).
    pub(super) slots_copy: Vec<u32>,
    /// Which entries of `slots_copy` are known: None when all are (maps created by this load,
    /// all zero); after an adoption, those written since (the rest is read from the kernel).
    pub(super) slots_known: Option<Vec<bool>>,
}

fn err(map: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |e| MapsError::new(map, e)
}

fn io_err(map: &'static str) -> impl FnOnce(std::io::Error) -> MapsError {
    move |e| MapsError::new(map, e)
}

impl KernelMaps {
    /// A copy of SCHED_SLOTS' `sched_slots` entries: all zero for maps just created, else
    /// unknown until written.
    pub(super) fn slots_copy(sched_slots: u32, fresh: bool) -> (Vec<u32>, Option<Vec<bool>>) {
        let known = (!fresh).then(|| vec![false; sched_slots as usize]);
        (vec![0; sched_slots as usize], known)
    }

    fn stats_map(&self, map: StatsMap) -> &PerCpuArray<MapData, Stats> {
        match map {
            StatsMap::Service => &self.service_stats,
            StatsMap::Backend => &self.backend_stats,
        }
    }
}

impl Maps for KernelMaps {
    fn filter_words(&self) -> Result<Vec<u64>, MapsError> {
        batch::read_array(&self.filter, 0, FILTER_WORDS).map_err(io_err(names::MAP_SERVICE_FILTER))
    }

    fn filter_word(&self, index: u32) -> Result<u64, MapsError> {
        self.filter
            .get(&index, 0)
            .map_err(err(names::MAP_SERVICE_FILTER))
    }

    fn set_filter_word(&mut self, index: u32, word: u64) -> Result<(), MapsError> {
        self.filter
            .set(index, word, 0)
            .map_err(err(names::MAP_SERVICE_FILTER))
    }

    fn slots(&self, off: u32, len: u32) -> Result<Vec<u32>, MapsError> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let range = off as usize..off as usize + len as usize;
        let known = match &self.slots_known {
            None => true,
            Some(k) => k.get(range.clone()).is_some_and(|k| k.iter().all(|&b| b)),
        };
        if known {
            if let Some(v) = self.slots_copy.get(range) {
                return Ok(v.to_vec());
            }
        }
        let v = batch::read_array(&self.slots, off, len).map_err(io_err(names::MAP_SCHED_SLOTS))?;
        if v.len() != len as usize {
            return Err(MapsError::new(
                names::MAP_SCHED_SLOTS,
                format!("read {} of {len} slots from {off}", v.len()),
            ));
        }
        Ok(v)
    }

    fn set_slots(&mut self, off: u32, ids: &[u32]) -> Result<(), MapsError> {
        // One batch write per table: the region is not published yet, so no packet reads it
        // while it is written.
        let (written, result) = match batch::write_array(&mut self.slots, off, ids) {
            Ok(()) => (ids.len(), Ok(())),
            Err((n, e)) => (n, Err(MapsError::new(names::MAP_SCHED_SLOTS, e))),
        };
        let range = off as usize..off as usize + written;
        if let Some(c) = self.slots_copy.get_mut(range.clone()) {
            c.copy_from_slice(&ids[..written]);
        }
        if let Some(k) = self.slots_known.as_mut().and_then(|k| k.get_mut(range)) {
            k.fill(true);
        }
        result
    }

    fn services(&self) -> Result<Vec<(BpfKey, ServiceValue)>, MapsError> {
        let mut out = Vec::new();
        batch::for_each(&self.services, |k, v| out.push((*k, *v)))
            .map_err(io_err(names::MAP_SERVICES))?;
        Ok(out)
    }

    fn service(&self, key: &BpfKey) -> Result<Option<ServiceValue>, MapsError> {
        match self.services.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(err(names::MAP_SERVICES)(e)),
        }
    }

    fn put_service(&mut self, key: &BpfKey, value: ServiceValue) -> Result<(), MapsError> {
        self.services
            .insert(key, value, 0)
            .map_err(err(names::MAP_SERVICES))
    }

    fn delete_service(&mut self, key: &BpfKey) -> Result<(), MapsError> {
        match self.services.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(err(names::MAP_SERVICES)(e)),
        }
    }

    fn backends(&self) -> Result<Vec<Backend>, MapsError> {
        batch::read_array(&self.backends, 0, MAX_BACKENDS).map_err(io_err(names::MAP_BACKENDS))
    }

    fn backend(&self, id: u32) -> Result<Backend, MapsError> {
        self.backends.get(&id, 0).map_err(err(names::MAP_BACKENDS))
    }

    fn set_backend(&mut self, id: u32, backend: Backend) -> Result<(), MapsError> {
        self.backends
            .set(id, backend, 0)
            .map_err(err(names::MAP_BACKENDS))
    }

    fn set_backends(&mut self, run: &[(u32, Backend)]) -> Result<(), (usize, MapsError)> {
        let (ids, backends): (Vec<u32>, Vec<Backend>) = run.iter().copied().unzip();
        batch::write_array_at(&mut self.backends, &ids, &backends)
            .map_err(|(n, e)| (n, MapsError::new(names::MAP_BACKENDS, e)))
    }

    fn laddrs(&self) -> Result<Vec<(u32, LocalAddr)>, MapsError> {
        self.laddrs
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(err(names::MAP_LADDRS))
    }

    fn set_laddr(&mut self, key: u32, value: Option<LocalAddr>) -> Result<(), MapsError> {
        match value {
            Some(v) => self.laddrs.insert(key, v, 0),
            None => match self.laddrs.remove(&key) {
                Err(MapError::KeyNotFound) => Ok(()),
                r => r,
            },
        }
        .map_err(err(names::MAP_LADDRS))
    }

    fn cursor(&self, id: u32) -> Result<u64, MapsError> {
        self.cursors.get(&id, 0).map_err(err(names::MAP_SEQ_CURSOR))
    }

    fn cursors(&self, off: u32, len: u32) -> Result<Vec<u64>, MapsError> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let v =
            batch::read_array(&self.cursors, off, len).map_err(io_err(names::MAP_SEQ_CURSOR))?;
        if v.len() != len as usize {
            return Err(MapsError::new(
                names::MAP_SEQ_CURSOR,
                format!("read {} of {len} cursors from {off}", v.len()),
            ));
        }
        Ok(v)
    }

    fn set_cursor(&mut self, id: u32, value: u64) -> Result<(), MapsError> {
        self.cursors
            .set(id, value, 0)
            .map_err(err(names::MAP_SEQ_CURSOR))
    }

    fn stats(&self, map: StatsMap, id: u32) -> Result<Vec<Stats>, MapsError> {
        let v = self.stats_map(map).get(&id, 0).map_err(err(map.name()))?;
        Ok(v.iter().copied().collect())
    }

    fn stats_run(&self, map: StatsMap, off: u32, len: u32) -> Result<Vec<Stats>, MapsError> {
        let run = batch::read_percpu_array(self.stats_map(map), off, len, self.cpus)
            .map_err(io_err(map.name()))?;
        if run.len() != len as usize * self.cpus {
            return Err(MapsError::new(
                map.name(),
                format!(
                    "read {} of {len} entries from {off}",
                    run.len() / self.cpus.max(1)
                ),
            ));
        }
        Ok(run)
    }

    fn set_stats(&mut self, map: StatsMap, id: u32, per_cpu: &[Stats]) -> Result<(), MapsError> {
        let values = PerCpuValues::try_from(per_cpu.to_vec()).map_err(io_err(map.name()))?;
        let m = match map {
            StatsMap::Service => &mut self.service_stats,
            StatsMap::Backend => &mut self.backend_stats,
        };
        m.set(id, values, 0).map_err(err(map.name()))
    }

    fn cpus(&self) -> usize {
        self.cpus
    }
}
