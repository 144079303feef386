//! Adoption, the pure part: from what a previous xvsd left in the maps (read as plain data by
//! `super::adopt::read_pinned`) to a [`Placement`], and the first plan's take-over of it.
//!
//! The allocation is rebuilt from the maps: service ids from SERVICES, backend slots and
//! generations from BACKENDS (each slot names its service), the scheduler-table regions in use
//! from the services' values. The first plan then keeps the services of its configuration
//! whose key (or, for a group, one of whose matches) the previous xvsd published, with their
//! id, table and the slots of their real servers (same address), so the connection table,
//! persistence templates and counters keep pointing at them; everything else is unpublished
//! and freed.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use lb_common::{
    fwd, Backend, LocalAddr, ServiceKey as BpfKey, ServiceValue, FAMILY_V4, MAX_SERVICES,
};

use super::{
    plan::{bpf_keys, MapOp, Placed, Placement, PlanError, Planner, Slot},
    regions::Region,
};
use crate::{model::Config, scheduler};

/// The controller's maps as a previous xvsd left them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PinnedMaps {
    /// Every SERVICES entry.
    pub services: Vec<(BpfKey, ServiceValue)>,
    /// Every BACKENDS slot, by id.
    pub backends: Vec<Backend>,
    /// SERVICE_FILTER.
    pub filter: Vec<u64>,
    /// The contents of every region a SERVICES value points at that lies inside SCHED_SLOTS,
    /// by (offset, length).
    pub tables: HashMap<(u32, u32), Vec<u32>>,
    /// Every LADDRS entry, by key (lb_common::laddr_key).
    pub laddrs: Vec<(u32, LocalAddr)>,
}

/// What a previous xvsd left in the maps, until the first plan takes it over.
#[derive(Clone, Debug)]
pub(crate) struct Inherited {
    services: BTreeMap<u32, InheritedService>,
    /// SERVICES key -> service id.
    by_key: HashMap<BpfKey, u32>,
    /// Slots in use whose service is not published (a group without matches).
    orphans: Vec<(u32, Backend)>,
    /// LADDRS entries of no published service.
    orphan_laddrs: Vec<(u32, LocalAddr)>,
}

#[derive(Clone, Debug)]
struct InheritedService {
    value: ServiceValue,
    keys: Vec<BpfKey>,
    table: Vec<u32>,
    /// Regions other keys of the same service still point at (an xvsd that died halfway
    /// through republishing a group): kept until the first plan.
    other_regions: Vec<Region>,
    backends: Vec<(u32, Backend)>,
    /// Its local addresses by slot (FULLNAT).
    laddrs: Vec<Option<LocalAddr>>,
}

impl InheritedService {
    fn region(&self) -> Region {
        Region {
            off: self.value.table_off,
            len: self.value.table_len,
        }
    }
}

impl Inherited {
    /// Scheduler slots the inherited tables occupy.
    pub(crate) fn slots_in_use(&self) -> u64 {
        self.services
            .values()
            .flat_map(|s| {
                std::iter::once(s.value.table_len).chain(s.other_regions.iter().map(|r| r.len))
            })
            .map(u64::from)
            .sum()
    }

    /// Next-hop MACs of the adopted direct-routing real servers.
    pub(crate) fn macs(&self) -> HashMap<IpAddr, [u8; 6]> {
        self.services
            .values()
            .flat_map(|s| s.backends.iter())
            .chain(self.orphans.iter())
            .filter(|(_, b)| b.fwd == fwd::DR && b.mac != [0; 6])
            .map(|(_, b)| (backend_addr(b).ip(), b.mac))
            .collect()
    }
}

/// The address a backend slot forwards to.
fn backend_addr(b: &Backend) -> SocketAddr {
    let ip = if b.family == FAMILY_V4 {
        IpAddr::from([b.addr[0], b.addr[1], b.addr[2], b.addr[3]])
    } else {
        IpAddr::from(b.addr)
    };
    SocketAddr::new(ip, u16::from_be(b.port_be))
}

/// An adopted placement and what it found.
#[derive(Clone, Debug)]
pub struct Adopted {
    /// The placement: nothing placed yet, everything found inherited.
    pub placement: Placement,
    /// Services found.
    pub services: usize,
    /// Backend slots in use found.
    pub backends: usize,
}

/// Rebuilds the controller's allocation from maps a previous xvsd filled, for a SCHED_SLOTS of
/// `sched_slots`. Fails when the tables overlap or lie outside the array.
pub fn inherit(pinned: &PinnedMaps, sched_slots: u32) -> Result<Adopted, PlanError> {
    let mut services: BTreeMap<u32, InheritedService> = BTreeMap::new();
    let mut by_key = HashMap::new();
    for &(k, v) in &pinned.services {
        by_key.insert(k, v.id);
        let s = services.entry(v.id).or_insert_with(|| InheritedService {
            value: v,
            keys: Vec::new(),
            table: Vec::new(),
            other_regions: Vec::new(),
            backends: Vec::new(),
            laddrs: Vec::new(),
        });
        s.keys.push(k);
        let r = Region {
            off: v.table_off,
            len: v.table_len,
        };
        if r != s.region() && !s.other_regions.contains(&r) {
            s.other_regions.push(r);
        }
    }
    let mut orphans = Vec::new();
    let mut in_use = vec![false; pinned.backends.len().max(lb_common::MAX_BACKENDS as usize)];
    let mut max_generation = 0u32;
    let mut backends = 0;
    for (id, b) in pinned.backends.iter().enumerate() {
        if b.generation == 0 {
            continue;
        }
        backends += 1;
        in_use[id] = true;
        max_generation = max_generation.max(b.generation);
        match services.get_mut(&b.service) {
            Some(s) => s.backends.push((id as u32, *b)),
            None => orphans.push((id as u32, *b)),
        }
    }
    let mut orphan_laddrs = Vec::new();
    for &(key, la) in &pinned.laddrs {
        let slot = (key & 0xff) as usize;
        match services.get_mut(&(key >> 8)) {
            Some(s) if slot < lb_common::MAX_LADDR_SLOTS as usize => {
                if s.laddrs.len() <= slot {
                    s.laddrs.resize(slot + 1, None);
                }
                s.laddrs[slot] = Some(la);
            }
            _ => orphan_laddrs.push((key, la)),
        }
    }
    let mut placement = Placement::new(sched_slots);
    for (id, s) in services.iter_mut() {
        let main = s.region();
        for r in std::iter::once(main).chain(s.other_regions.iter().copied()) {
            placement
                .regions
                .reserve(r)
                .map_err(|r| PlanError::Overlap {
                    id: *id,
                    off: r.off,
                    end: r.off as u64 + r.len as u64,
                    sched_slots,
                })?;
        }
        s.table = if main.len == 0 {
            Vec::new()
        } else {
            pinned
                .tables
                .get(&(main.off, main.len))
                .cloned()
                .unwrap_or_default()
        };
    }
    placement.filter = pinned.filter.clone();
    placement.free_service_ids = (0..MAX_SERVICES)
        .rev()
        .filter(|id| !services.contains_key(id))
        .collect();
    placement.free_backend_ids = (0..lb_common::MAX_BACKENDS)
        .rev()
        .filter(|&id| !in_use[id as usize])
        .collect();
    placement.next_generation = max_generation.wrapping_add(1).max(1);
    let n = services.len();
    placement.inherited = Some(Arc::new(Inherited {
        services,
        by_key,
        orphans,
        orphan_laddrs,
    }));
    Ok(Adopted {
        placement,
        services: n,
        backends,
    })
}

/// What the first plan after an adoption kept and dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TakeOver {
    /// Services of the configuration that kept their adopted id.
    pub kept: usize,
    /// Adopted services the configuration does not have.
    pub dropped: usize,
}

impl Planner<'_> {
    /// The first plan after an adoption: services of `config` whose key (or, for a group, one
    /// of whose matches) the previous xvsd published keep its service id, table and the
    /// backend slots of their real servers; everything else it left is unpublished and freed.
    pub(super) fn take_over(&mut self, config: &Config, inherited: Inherited) -> TakeOver {
        let Inherited {
            mut services,
            by_key,
            orphans,
            orphan_laddrs,
        } = inherited;
        // Normal services first: a service's own key names its id before a group's match can.
        let order = config
            .services()
            .iter()
            .filter(|s| !s.key.is_group())
            .chain(config.services().iter().filter(|s| s.key.is_group()));
        let mut kept = 0;
        for svc in order {
            let Some(id) = bpf_keys(svc)
                .iter()
                .filter_map(|k| by_key.get(k))
                .find(|id| services.contains_key(id))
                .copied()
            else {
                continue;
            };
            let s = services.remove(&id).expect("found above");
            let region = s.region();
            let mut slots = HashMap::new();
            for (bid, b) in s.backends {
                // Two slots for one address cannot come from a sane xvsd: keep the first.
                match slots.entry(backend_addr(&b)) {
                    std::collections::hash_map::Entry::Occupied(_) => self.free_backend(Slot {
                        id: bid,
                        written: b,
                    }),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(Slot {
                            id: bid,
                            written: b,
                        });
                    }
                }
            }
            for k in &s.keys {
                self.next.owners.insert(*k, svc.key);
            }
            self.next.quarantine.extend(s.other_regions);
            let mut placed = Placed {
                adopted: true,
                id,
                region,
                table: s.table,
                kind: s.value.table_kind,
                value_flags: (
                    s.value.flags,
                    s.value.persist_timeout_s,
                    s.value.persist_prefix,
                ),
                sched: scheduler::Scheduling::new(svc.scheduler, svc.flags),
                digest: None,
                slots,
                pushed: None,
                keys: s.keys,
                laddrs: s.laddrs,
            };
            // The digest of the table packets see now (the sync that follows in this plan
            // computes it afresh).
            placed.digest = placed.compute_digest();
            self.next.services.insert(svc.key, Arc::new(placed));
            kept += 1;
        }
        let dropped = services.len();
        for (id, s) in services {
            for k in &s.keys {
                self.ops.push(MapOp::DeleteService { key: *k });
            }
            self.next.quarantine.push(s.region());
            self.next.quarantine.extend(s.other_regions);
            self.next.free_service_ids.push(id);
            for (bid, b) in s.backends {
                self.free_backend(Slot {
                    id: bid,
                    written: b,
                });
            }
            self.free_laddrs(id, &s.laddrs);
        }
        for (key, la) in orphan_laddrs {
            self.ops.push(MapOp::SetLaddr {
                key,
                value: None,
                was: Some(la),
            });
        }
        for (bid, b) in orphans {
            self.free_backend(Slot {
                id: bid,
                written: b,
            });
        }
        TakeOver { kept, dropped }
    }
}
