//! The executor: applies a plan's operations to the maps in order, and on the first failure
//! puts back, in reverse order, everything it changed, so the maps are as they were.
//!
//! Before each write it reads what the write will overwrite (one batch read for a table
//! region), except for a backend slot, whose previous value the plan carries (the placement
//! knows what every slot holds, and the unit tests check it against the maps). The failed operation itself is undone too: a run of slot writes may have failed
//! partway. Stats zeroed by a rolled-back operation get their values from before the write
//! back, less whatever packets counted in between (a window of microseconds).

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

/// What an operation overwrote, to put it back.
#[derive(Debug)]
enum Undo {
    FilterWord(u32, u64),
    Slots(u32, Vec<u32>),
    Service(BpfKey, Option<ServiceValue>),
    Backend(u32, Backend),
    Cursor(u32, u64),
    Stats(StatsMap, u32, Vec<Stats>),
}

/// Counters to be zeroed, read ahead in bulk: by (map, id), their values before the plan.
type StatsBefore = std::collections::HashMap<(StatsMap, u32), Vec<Stats>>;

/// Reads the counters `ops` zero, a batch per map (a plan that places thousands of servers
/// zeroes thousands of entries). Packets counted between this read and the zeroing are lost
/// if the plan is rolled back, as they would be between a read and a write anyway.
fn stats_before(maps: &dyn Maps, ops: &[MapOp]) -> Result<StatsBefore, MapsError> {
    let mut out = StatsBefore::new();
    for which in [StatsMap::Service, StatsMap::Backend] {
        let ids: Vec<u32> = ops
            .iter()
            .filter_map(|op| match op {
                MapOp::ZeroStats { map, id } if *map == which => Some(*id),
                _ => None,
            })
            .collect();
        for (id, v) in ids.iter().zip(maps.stats_of(which, &ids)?) {
            out.insert((which, *id), v);
        }
    }
    Ok(out)
}

/// Reads what `op` will overwrite.
fn before(maps: &dyn Maps, op: &MapOp, stats: &mut StatsBefore) -> Result<Undo, MapsError> {
    Ok(match op {
        MapOp::SetFilterWord { index, .. } => Undo::FilterWord(*index, maps.filter_word(*index)?),
        MapOp::SetSlots { off, ids } => Undo::Slots(*off, maps.slots(*off, ids.len() as u32)?),
        MapOp::PutService { key, .. } | MapOp::DeleteService { key } => {
            Undo::Service(*key, maps.service(key)?)
        }
        MapOp::SetBackend { id, was, .. } => Undo::Backend(*id, *was),
        MapOp::ResetCursor { id } => Undo::Cursor(*id, maps.cursor(*id)?),
        MapOp::ZeroStats { map, id } => {
            let v = match stats.remove(&(*map, *id)) {
                Some(v) => v,
                None => maps.stats(*map, *id)?,
            };
            Undo::Stats(*map, *id, v)
        }
    })
}

/// Applies one operation.
pub fn apply(maps: &mut dyn Maps, op: &MapOp) -> Result<(), MapsError> {
    match op {
        MapOp::SetFilterWord { index, word } => maps.set_filter_word(*index, *word),
        MapOp::SetSlots { off, ids } => maps.set_slots(*off, ids),
        MapOp::PutService { key, value } => maps.put_service(key, *value),
        MapOp::DeleteService { key } => maps.delete_service(key),
        MapOp::SetBackend { id, backend, .. } => maps.set_backend(*id, *backend),
        MapOp::ResetCursor { id } => maps.set_cursor(*id, 0),
        MapOp::ZeroStats { map, id } => {
            let zero = vec![Stats::default(); maps.cpus()];
            maps.set_stats(*map, *id, &zero)
        }
    }
}

fn undo(maps: &mut dyn Maps, u: &Undo) -> Result<(), MapsError> {
    match u {
        Undo::FilterWord(i, w) => maps.set_filter_word(*i, *w),
        Undo::Slots(off, ids) => maps.set_slots(*off, ids),
        Undo::Service(k, Some(v)) => maps.put_service(k, *v),
        Undo::Service(k, None) => maps.delete_service(k),
        Undo::Backend(id, b) => maps.set_backend(*id, *b),
        Undo::Cursor(id, v) => maps.set_cursor(*id, *v),
        Undo::Stats(m, id, v) => maps.set_stats(*m, *id, v),
    }
}

/// Applies `ops` in order, all or nothing: on the first failure every operation applied (and
/// the failed one) is undone in reverse order.
pub fn execute(maps: &mut dyn Maps, ops: &[MapOp]) -> Result<(), ExecError> {
    let mut done: Vec<Undo> = Vec::with_capacity(ops.len());
    let mut stats = stats_before(maps, ops).map_err(|source| ExecError::RolledBack {
        index: 0,
        total: ops.len(),
        source,
    })?;
    for (index, op) in ops.iter().enumerate() {
        let result = before(maps, op, &mut stats).and_then(|u| {
            done.push(u);
            apply(maps, op)
        });
        if let Err(source) = result {
            let total = ops.len();
            // Keep undoing after a failed undo: the more is restored, the better.
            let mut first = None;
            for u in done.iter().rev() {
                if let Err(e) = undo(maps, u) {
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
/// next placement current: a failed plan leaves both as they were.
pub fn commit(
    placement: &mut Placement,
    maps: &mut dyn Maps,
    plan: Plan,
) -> Result<Applied, ExecError> {
    execute(maps, &plan.ops)?;
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
