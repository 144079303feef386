//! The executor: applies a plan's operations to the maps in order, and on the first failure
//! puts back, in reverse order, everything it changed, so the maps are as they were.
//!
//! Before each write it reads what the write will overwrite, except for a backend slot, whose
//! previous value the plan carries (the placement knows what every slot holds, and the unit
//! tests check it against the maps). A plan with many writes to a map has them read ahead in
//! a few batch reads instead. The failed operation itself is undone too: a run of slot writes may have failed
//! partway. Stats zeroed by a rolled-back operation get their values from before the write
//! back, less whatever packets counted in between (a window of microseconds).

use std::collections::HashMap;

use lb_common::{Backend, ServiceKey as BpfKey, ServiceValue, Stats};
use thiserror::Error;

use super::{
    inherit::TakeOver,
    maps::{Maps, MapsError, StatsMap},
    plan::{MapOp, Placement, Plan},
};

/// A plan could not be applied.
#[derive(Debug, Error)]
pub enum ExecError {
    /// Reading what the plan would overwrite failed: nothing was written.
    #[error("{0} (before any write; nothing changed)")]
    ReadAhead(#[source] MapsError),
    /// Operation `index` failed; everything before it was undone, the maps are as they were.
    #[error("{source} (operation {index} of {total}; the maps were restored)")]
    RolledBack {
        /// Which operation.
        index: usize,
        /// Of how many.
        total: usize,
        /// Why it failed.
        #[source]
        source: MapsError,
    },
    /// Operation `index` failed and undoing it failed too: the maps hold part of the plan.
    #[error("{source} (operation {index} of {total}); restoring the maps failed too: {undo}")]
    Partial {
        /// Which operation.
        index: usize,
        /// Of how many.
        total: usize,
        /// Why it failed.
        #[source]
        source: MapsError,
        /// The first undo that failed.
        undo: MapsError,
    },
}

/// What an operation overwrote, read one by one just before it, to put it back. What the
/// operation itself carries (a backend's previous value) or what was read ahead needs no
/// record: it is found again from the operation if the plan is rolled back, so a large plan
/// allocates nothing per operation for its undo.
#[derive(Debug)]
enum Undo {
    FilterWord(u32, u64),
    Slots(u32, Vec<u32>),
    Service(BpfKey, Option<ServiceValue>),
    Cursor(u32, u64),
    Stats(StatsMap, u32, Vec<Stats>),
}

/// What a plan's writes will overwrite, read ahead in bulk where a plan writes much: a plan
/// that places thousands of services would otherwise pay a read per write. Each value is the
/// one before the plan; a location written twice in one plan is undone to it in the end all
/// the same (undo runs in reverse order). Packets counted between this read and the zeroing
/// are lost if the plan is rolled back, as they would be between a read and a write anyway.
#[derive(Default)]
struct Ahead {
    /// Counters to be zeroed, per map: the first id of the span read and its entries, flat
    /// (`cpus` values each).
    stats: [Option<(u32, Vec<Stats>)>; 2],
    /// Values per stats entry.
    cpus: usize,
    /// SCHED_SLOTS from an offset: the span of the tables written.
    slots: Option<(u32, Vec<u32>)>,
    /// SEQ_CURSOR from an id: the span of the cursors reset.
    cursors: Option<(u32, Vec<u64>)>,
    /// SERVICES entries written or deleted (None: absent).
    services: HashMap<BpfKey, Option<ServiceValue>>,
}

/// Fewer writes than this to a map are read one by one.
const BULK: usize = 32;

/// The run `[lo, hi)` covering `runs` (offset, length), if reading it is worth it: enough runs,
/// and not mostly made of gaps.
fn span(runs: &[(u32, u32)]) -> Option<(u32, u32)> {
    let lo = runs.iter().map(|r| r.0).min()?;
    let hi = runs.iter().map(|r| r.0 + r.1).max()?;
    let total: u64 = runs.iter().map(|r| r.1 as u64).sum();
    (runs.len() >= BULK && (hi - lo) as u64 <= total * 4).then_some((lo, hi - lo))
}

fn read_ahead(maps: &dyn Maps, ops: &[MapOp]) -> Result<Ahead, MapsError> {
    let mut ahead = Ahead {
        cpus: maps.cpus(),
        ..Ahead::default()
    };
    for which in [StatsMap::Service, StatsMap::Backend] {
        let ids: Vec<(u32, u32)> = ops
            .iter()
            .filter_map(|op| match op {
                MapOp::ZeroStats { map, id } if *map == which => Some((*id, 1)),
                _ => None,
            })
            .collect();
        if let Some((off, len)) = span(&ids) {
            ahead.stats[which as usize] = Some((off, maps.stats_run(which, off, len)?));
        }
    }
    let tables: Vec<(u32, u32)> = ops
        .iter()
        .filter_map(|op| match op {
            MapOp::SetSlots { off, ids } => Some((*off, ids.len() as u32)),
            _ => None,
        })
        .collect();
    if let Some((off, len)) = span(&tables) {
        ahead.slots = Some((off, maps.slots(off, len)?));
    }
    let cursors: Vec<(u32, u32)> = ops
        .iter()
        .filter_map(|op| match op {
            MapOp::ResetCursor { id } => Some((*id, 1)),
            _ => None,
        })
        .collect();
    if let Some((off, len)) = span(&cursors) {
        ahead.cursors = Some((off, maps.cursors(off, len)?));
    }
    let keys: Vec<BpfKey> = ops
        .iter()
        .filter_map(|op| match op {
            MapOp::PutService { key, .. } | MapOp::DeleteService { key } => Some(*key),
            _ => None,
        })
        .collect();
    if keys.len() >= BULK {
        let all: HashMap<BpfKey, ServiceValue> = maps.services()?.into_iter().collect();
        ahead.services = keys.iter().map(|k| (*k, all.get(k).copied())).collect();
    }
    Ok(ahead)
}

impl Ahead {
    /// SCHED_SLOTS\[off..off + len\] before the plan, if read ahead.
    fn slots(&self, off: u32, len: usize) -> Option<&[u32]> {
        let (from, v) = self.slots.as_ref()?;
        let i = off.checked_sub(*from)? as usize;
        v.get(i..i + len)
    }

    /// A cursor before the plan, if read ahead.
    fn cursor(&self, id: u32) -> Option<u64> {
        let (from, v) = self.cursors.as_ref()?;
        v.get(id.checked_sub(*from)? as usize).copied()
    }

    /// A stats entry before the plan, if read ahead.
    fn stats(&self, map: StatsMap, id: u32) -> Option<&[Stats]> {
        let (from, v) = self.stats[map as usize].as_ref()?;
        let i = id.checked_sub(*from)? as usize * self.cpus;
        v.get(i..i + self.cpus)
    }

    /// A SERVICES entry before the plan (None: absent), if read ahead.
    fn service(&self, key: &BpfKey) -> Option<Option<ServiceValue>> {
        self.services.get(key).copied()
    }

    /// Whether what `op` overwrites is known without reading it: the operation carries it,
    /// or it was read ahead.
    fn knows(&self, op: &MapOp) -> bool {
        match op {
            MapOp::SetFilterWord { .. } => false,
            MapOp::SetSlots { off, ids } => self.slots(*off, ids.len()).is_some(),
            MapOp::PutService { key, .. } | MapOp::DeleteService { key } => {
                self.service(key).is_some()
            }
            MapOp::SetBackend { .. } | MapOp::SetLaddr { .. } => true,
            MapOp::ResetCursor { id } => self.cursor(*id).is_some(),
            MapOp::ZeroStats { map, id } => self.stats(*map, *id).is_some(),
        }
    }

    /// Puts back what `op` overwrote, from the operation or what was read ahead (`knows`).
    /// A location written twice in one plan is put back to its value before the plan both
    /// times, which is where undoing in reverse order ends anyway.
    fn undo(&self, maps: &mut dyn Maps, op: &MapOp) -> Result<(), MapsError> {
        let unknown = || MapsError::new("undo", "nothing read ahead for this operation");
        match op {
            MapOp::SetFilterWord { .. } => Err(unknown()),
            MapOp::SetSlots { off, ids } => {
                maps.set_slots(*off, self.slots(*off, ids.len()).ok_or_else(unknown)?)
            }
            MapOp::PutService { key, .. } | MapOp::DeleteService { key } => {
                match self.service(key).ok_or_else(unknown)? {
                    Some(v) => maps.put_service(key, v),
                    None => maps.delete_service(key),
                }
            }
            MapOp::SetBackend { id, was, .. } => maps.set_backend(*id, *was),
            MapOp::SetLaddr { key, was, .. } => maps.set_laddr(*key, *was),
            MapOp::ResetCursor { id } => {
                maps.set_cursor(*id, self.cursor(*id).ok_or_else(unknown)?)
            }
            MapOp::ZeroStats { map, id } => {
                maps.set_stats(*map, *id, self.stats(*map, *id).ok_or_else(unknown)?)
            }
        }
    }
}

/// Reads what `op` will overwrite, unless it is known without reading (`Ahead::knows`).
fn before(maps: &dyn Maps, op: &MapOp, ahead: &Ahead) -> Result<Option<Undo>, MapsError> {
    if ahead.knows(op) {
        return Ok(None);
    }
    Ok(Some(match op {
        MapOp::SetFilterWord { index, .. } => Undo::FilterWord(*index, maps.filter_word(*index)?),
        MapOp::SetSlots { off, ids } => Undo::Slots(*off, maps.slots(*off, ids.len() as u32)?),
        MapOp::PutService { key, .. } | MapOp::DeleteService { key } => {
            Undo::Service(*key, maps.service(key)?)
        }
        MapOp::ResetCursor { id } => Undo::Cursor(*id, maps.cursor(*id)?),
        MapOp::ZeroStats { map, id } => Undo::Stats(*map, *id, maps.stats(*map, *id)?),
        MapOp::SetBackend { .. } | MapOp::SetLaddr { .. } => {
            unreachable!("a backend or local-address write carries what it overwrites")
        }
    }))
}

/// Applies one operation.
pub fn apply(maps: &mut dyn Maps, op: &MapOp) -> Result<(), MapsError> {
    let zero = vec![Stats::default(); maps.cpus()];
    apply_with(maps, op, &zero)
}

/// Applies one operation; `zero` is a zeroed stats entry (one value per CPU).
fn apply_with(maps: &mut dyn Maps, op: &MapOp, zero: &[Stats]) -> Result<(), MapsError> {
    match op {
        MapOp::SetFilterWord { index, word } => maps.set_filter_word(*index, *word),
        MapOp::SetSlots { off, ids } => maps.set_slots(*off, ids),
        MapOp::PutService { key, value } => maps.put_service(key, *value),
        MapOp::DeleteService { key } => maps.delete_service(key),
        MapOp::SetBackend { id, backend, .. } => maps.set_backend(*id, *backend),
        MapOp::SetLaddr { key, value, .. } => maps.set_laddr(*key, *value),
        MapOp::ResetCursor { id } => maps.set_cursor(*id, 0),
        MapOp::ZeroStats { map, id } => maps.set_stats(*map, *id, zero),
    }
}

fn undo(maps: &mut dyn Maps, u: &Undo) -> Result<(), MapsError> {
    match u {
        Undo::FilterWord(i, w) => maps.set_filter_word(*i, *w),
        Undo::Slots(off, ids) => maps.set_slots(*off, ids),
        Undo::Service(k, Some(v)) => maps.put_service(k, *v),
        Undo::Service(k, None) => maps.delete_service(k),
        Undo::Cursor(id, v) => maps.set_cursor(*id, *v),
        Undo::Stats(m, id, v) => maps.set_stats(*m, *id, v),
    }
}

/// Applies `ops` in order, all or nothing: on the first failure every operation applied (and
/// the failed one) is undone in reverse order.
pub fn execute(maps: &mut dyn Maps, ops: &[MapOp]) -> Result<(), ExecError> {
    let ahead = read_ahead(maps, ops).map_err(ExecError::ReadAhead)?;
    // What was read one by one, by operation index; the rest `ahead` knows.
    let mut read: Vec<(usize, Undo)> = Vec::new();
    let zero = vec![Stats::default(); maps.cpus()];
    let mut run: Vec<(u32, Backend)> = Vec::new();
    let mut index = 0;
    while index < ops.len() {
        // Consecutive backend writes go in one call (they carry what they overwrite).
        let end = index
            + ops[index..]
                .iter()
                .take_while(|op| matches!(op, MapOp::SetBackend { .. }))
                .count();
        let mut started = false;
        let result = if end > index {
            run.clear();
            run.extend(ops[index..end].iter().filter_map(|op| match op {
                MapOp::SetBackend { id, backend, .. } => Some((*id, *backend)),
                _ => None,
            }));
            started = true;
            match maps.set_backends(&run) {
                Ok(()) => {
                    index = end;
                    continue;
                }
                Err((written, e)) => {
                    index += written;
                    Err(e)
                }
            }
        } else {
            let op = &ops[index];
            before(maps, op, &ahead).and_then(|u| {
                read.extend(u.map(|u| (index, u)));
                started = true;
                apply_with(maps, op, &zero)
            })
        };
        if let Err(source) = result {
            let total = ops.len();
            // The failed operation is undone too (a run of slot writes may have failed
            // partway), unless it failed before writing. Keep undoing after a failed undo:
            // the more is restored, the better.
            let upto = if started { index + 1 } else { index };
            let mut first = None;
            for i in (0..upto).rev() {
                let result = match read.last() {
                    Some((at, _)) if *at == i => {
                        let (_, u) = read.pop().expect("just seen");
                        undo(maps, &u)
                    }
                    _ => ahead.undo(maps, &ops[i]),
                };
                if let Err(e) = result {
                    first.get_or_insert(e);
                }
            }
            return Err(match first {
                None => ExecError::RolledBack {
                    index,
                    total,
                    source,
                },
                Some(undo) => ExecError::Partial {
                    index,
                    total,
                    source,
                    undo,
                },
            });
        }
        index += 1;
    }
    Ok(())
}

/// What an applied plan did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Operations applied.
    pub ops: usize,
    /// Tables published.
    pub published: usize,
    /// What the first plan after an adoption kept and dropped.
    pub took_over: Option<TakeOver>,
}

/// Applies a plan made from `placement` to `maps`, and only if every write succeeds makes its
/// next placement current: a failed plan leaves both as they were, except when its undo failed
/// too ([`ExecError::Partial`]): then `placement` is marked so that the next plan rewrites
/// everything.
pub fn commit(
    placement: &mut Placement,
    maps: &mut dyn Maps,
    plan: Plan,
) -> Result<Applied, ExecError> {
    if let Err(e) = execute(maps, &plan.ops) {
        if matches!(e, ExecError::Partial { .. }) {
            // The maps hold part of the plan: the next one rewrites everything.
            placement.mark_unsure(&plan.ops);
        }
        return Err(e);
    }
    *placement = plan.next;
    Ok(Applied {
        ops: plan.ops.len(),
        published: plan.published,
        took_over: plan.took_over,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::maps::MemoryMaps;

    fn key(n: u8) -> BpfKey {
        BpfKey {
            addr: [n; 16],
            port_be: 80u16.to_be(),
            proto: 6,
            family: lb_common::FAMILY_V6,
        }
    }

    fn ops() -> Vec<MapOp> {
        vec![
            MapOp::SetFilterWord { index: 3, word: 7 },
            MapOp::SetSlots {
                off: 2,
                ids: vec![5, 6, 7, 8],
            },
            MapOp::PutService {
                key: key(1),
                value: ServiceValue {
                    id: 4,
                    table_off: 2,
                    table_len: 4,
                    ..Default::default()
                },
            },
            MapOp::DeleteService { key: key(2) },
            MapOp::SetBackend {
                id: 5,
                backend: Backend {
                    generation: 9,
                    ..Default::default()
                },
                was: Backend {
                    generation: 2,
                    ..Default::default()
                },
            },
            MapOp::ResetCursor { id: 4 },
            MapOp::ZeroStats {
                map: StatsMap::Service,
                id: 4,
            },
            MapOp::ZeroStats {
                map: StatsMap::Backend,
                id: 5,
            },
        ]
    }

    fn busy() -> MemoryMaps {
        let mut m = MemoryMaps::new(16, 2);
        m.filter[3] = 1;
        m.slots.extend([(3, 1), (4, 1)]);
        m.services.insert(key(2), ServiceValue::default());
        m.backends.insert(
            5,
            Backend {
                generation: 2,
                ..Default::default()
            },
        );
        m.cursors.insert(4, 1234);
        let s = Stats {
            conns: 1,
            packets: 2,
            bytes: 3,
            out_packets: 4,
            out_bytes: 5,
        };
        m.stats.insert((StatsMap::Service, 4), vec![s, s]);
        m.stats
            .insert((StatsMap::Backend, 5), vec![s, Stats::default()]);
        m
    }

    #[test]
    fn applies_every_operation_in_order() {
        let mut m = busy();
        execute(&mut m, &ops()).unwrap();
        assert_eq!(m.filter[3], 7);
        assert_eq!(m.slots(0, 7).unwrap(), [0, 0, 5, 6, 7, 8, 0]);
        assert_eq!(m.services.len(), 1);
        assert_eq!(m.services[&key(1)].id, 4);
        assert_eq!(m.backends[&5].generation, 9);
        assert!(m.cursors.is_empty() && m.stats.is_empty());
    }

    #[test]
    fn a_failure_at_any_write_restores_the_maps() {
        let ops = ops();
        for n in 0..ops.len() {
            let mut m = busy();
            let before = m.contents();
            m.fail_write(n);
            match execute(&mut m, &ops) {
                Err(ExecError::RolledBack { index, total, .. }) => {
                    assert_eq!((index, total), (n, ops.len()));
                }
                other => panic!("write {n}: {other:?}"),
            }
            assert_eq!(m.contents(), before, "write {n}");
        }
    }
}
