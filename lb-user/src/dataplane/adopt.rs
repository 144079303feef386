//! Starting on a pinned data plane: afresh (nothing pinned), by adoption (a compatible data
//! plane is pinned: reuse its maps, swap the new program in on its link), or by a forced reload
//! (an incompatible one: detach it and start afresh).
//!
//! After an adoption the maps are left as they are — the data plane keeps forwarding with the
//! last tables — and the controller rebuilds its allocation from them: service ids from
//! SERVICES, backend slots and generations from BACKENDS (each slot names its service), the
//! scheduler-table regions in use from the services' values. The first sync then takes over
//! the services and real servers the configuration still has, under their old ids, so the
//! connection table, persistence templates and counters keep pointing at them.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use aya::maps::MapError;
use lb_common::{
    filter::FILTER_WORDS, fwd, names, Backend, ServiceValue, FAMILY_V4, MAX_BACKENDS, MAX_SERVICES,
};
use tracing::{info, warn};

use super::{
    batch, bpf_keys, layout, map_err, pin::LinkState, pin::PinDir, syscall_err, AttachMode,
    Dataplane, DataplaneError, Placed, Region, Regions, Sizes, Slot,
};
use crate::{kernel_log::KernelLog, model::Config, scheduler};

/// How xvsd came by its data plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// Nothing usable was pinned: loaded, attached and pinned anew.
    Fresh,
    /// A compatible pinned data plane was adopted and runs this build's program now.
    Adopted {
        /// Services it held.
        services: usize,
        /// Real-server slots it held.
        backends: usize,
        /// Id of the program that ran on the link before.
        previous_program: u32,
    },
    /// An incompatible pinned data plane was detached and replaced (`--force-reload`).
    Reloaded {
        /// Why it was incompatible.
        reasons: Vec<String>,
    },
}

impl Start {
    /// `fresh`, `adopted` or `reloaded`.
    pub fn name(&self) -> &'static str {
        match self {
            Start::Fresh => "fresh",
            Start::Adopted { .. } => "adopted",
            Start::Reloaded { .. } => "reloaded",
        }
    }
}

/// Where and how to run a pinned data plane.
#[derive(Clone, Debug)]
pub struct PinnedStart {
    /// Interface name.
    pub iface: String,
    /// Its index.
    pub ifindex: u32,
    /// Attach mode of a fresh attachment (an adopted link keeps its own).
    pub mode: AttachMode,
    /// Map sizes.
    pub sizes: Sizes,
    /// Pin directory.
    pub dir: PathBuf,
    /// Replace an incompatible pinned data plane instead of refusing to start.
    pub force_reload: bool,
    /// What the programs log (`--kernel-log`).
    pub kernel_log: KernelLog,
}

/// What a previous xvsd left in the maps.
#[derive(Debug)]
pub(super) struct Inherited {
    services: BTreeMap<u32, InheritedService>,
    /// SERVICES key -> service id.
    by_key: HashMap<lb_common::ServiceKey, u32>,
    /// Slots in use whose service is not published (a group without matches).
    orphans: Vec<(u32, Backend)>,
}

#[derive(Debug)]
struct InheritedService {
    value: ServiceValue,
    keys: Vec<lb_common::ServiceKey>,
    table: Vec<u32>,
    /// Regions other keys of the same service still point at (an xvsd that died halfway
    /// through republishing a group): kept until the first sync.
    other_regions: Vec<Region>,
    backends: Vec<(u32, Backend)>,
}

impl Inherited {
    /// Scheduler slots the inherited tables occupy.
    pub(super) fn slots_in_use(&self) -> u64 {
        self.services
            .values()
            .flat_map(|s| {
                std::iter::once(s.value.table_len).chain(s.other_regions.iter().map(|r| r.len))
            })
            .map(u64::from)
            .sum()
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

impl Dataplane {
    /// Runs the director pinned in `opts.dir`: adopts a compatible pinned data plane, refuses
    /// an incompatible one (unless `force_reload`), or loads, attaches and pins a fresh one.
    pub fn start_pinned(opts: &PinnedStart) -> Result<(Dataplane, Start), DataplaneError> {
        let dir = PinDir::create(&opts.dir)?;
        let expected = layout::expected(opts.sizes)?;
        match dir.link_state()? {
            LinkState::Attached { ifindex, .. } if ifindex != opts.ifindex => {
                Err(super::pin::PinError::OtherInterface {
                    dir: opts.dir.clone(),
                    iface: opts.iface.clone(),
                    expected: opts.ifindex,
                    found: ifindex,
                }
                .into())
            }
            LinkState::Attached { prog_id, .. } => {
                let reasons = layout::pinned_mismatches(&dir, &expected);
                if reasons.is_empty() {
                    let mut dp = Self::load_inner(opts.sizes, Some(&dir), false, opts.kernel_log)?;
                    dp.replace_on_link(&dir)?;
                    let (services, backends) = dp.inherit()?;
                    dp.pins = Some(dir);
                    return Ok((
                        dp,
                        Start::Adopted {
                            services,
                            backends,
                            previous_program: prog_id,
                        },
                    ));
                }
                if !opts.force_reload {
                    return Err(DataplaneError::Incompatible {
                        dir: opts.dir.clone(),
                        reasons,
                    });
                }
                warn!(
                    dir = %opts.dir.display(),
                    why = %reasons.join("; "),
                    "--force-reload: detaching the incompatible pinned data plane; its connection \
                     table, persistence templates, counters and tables are lost, and virtual \
                     services pass to the kernel until the configuration is restored"
                );
                dir.detach_link()?;
                dir.clear()?;
                let dp = Self::start_fresh(dir, opts, &expected)?;
                Ok((dp, Start::Reloaded { reasons }))
            }
            LinkState::Detached => {
                info!(
                    dir = %opts.dir.display(),
                    "the pinned XDP link is attached to nothing any more (its interface went away): starting afresh"
                );
                dir.clear()?;
                Ok((Self::start_fresh(dir, opts, &expected)?, Start::Fresh))
            }
            LinkState::Absent => {
                let left = dir.entries()?;
                if !left.is_empty() {
                    // Maps pinned by a start that died before it pinned its link: nothing
                    // ever forwarded with them.
                    info!(dir = %opts.dir.display(), pins = ?left, "removing the pins of an interrupted start");
                    dir.clear()?;
                }
                Ok((Self::start_fresh(dir, opts, &expected)?, Start::Fresh))
            }
        }
    }

    /// Loads with new maps pinned in `dir`, records their layout, attaches and pins the link.
    /// On failure nothing stays pinned.
    fn start_fresh(
        dir: PinDir,
        opts: &PinnedStart,
        expected: &[lb_common::MapLayout],
    ) -> Result<Dataplane, DataplaneError> {
        let result = (|| {
            let mut dp = Self::load_inner(opts.sizes, Some(&dir), true, opts.kernel_log)?;
            dp.meta
                .set(0, layout::record(expected), 0)
                .map_err(map_err(names::MAP_META))?;
            dp.attach_pinned(&opts.iface, opts.mode, &dir)?;
            Ok(dp)
        })();
        match result {
            Ok(mut dp) => {
                dp.pins = Some(dir);
                Ok(dp)
            }
            Err(e) => {
                if let Err(again) = dir.clear() {
                    warn!(error = %again, "removing the pins of the failed start");
                }
                Err(e)
            }
        }
    }

    /// Rebuilds the controller's allocation from the maps a previous xvsd filled. Returns the
    /// number of services and backend slots found.
    fn inherit(&mut self) -> Result<(usize, usize), DataplaneError> {
        let walk_err =
            |name: &'static str| move |e| map_err(name)(MapError::SyscallError(syscall_err(e)));
        let mut services: BTreeMap<u32, InheritedService> = BTreeMap::new();
        let mut by_key = HashMap::new();
        let mut values: Vec<(lb_common::ServiceKey, ServiceValue)> = Vec::new();
        batch::for_each(&self.services, |k, v| values.push((*k, *v)))
            .map_err(walk_err(names::MAP_SERVICES))?;
        for (k, v) in values {
            by_key.insert(k, v.id);
            let s = services.entry(v.id).or_insert_with(|| InheritedService {
                value: v,
                keys: Vec::new(),
                table: Vec::new(),
                other_regions: Vec::new(),
                backends: Vec::new(),
            });
            s.keys.push(k);
            let r = Region {
                off: v.table_off,
                len: v.table_len,
            };
            let first = Region {
                off: s.value.table_off,
                len: s.value.table_len,
            };
            if r != first && !s.other_regions.contains(&r) {
                s.other_regions.push(r);
            }
        }
        let slots = batch::read_array(&self.backends, 0, MAX_BACKENDS)
            .map_err(walk_err(names::MAP_BACKENDS))?;
        let mut orphans = Vec::new();
        let mut in_use = vec![false; MAX_BACKENDS as usize];
        let mut max_generation = 0u32;
        let mut backends = 0;
        for (id, b) in slots.iter().enumerate() {
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
        let mut regions = Regions::new(self.sizes.sched_slots);
        for (id, s) in services.iter_mut() {
            let main = Region {
                off: s.value.table_off,
                len: s.value.table_len,
            };
            for r in std::iter::once(main).chain(s.other_regions.iter().copied()) {
                regions.reserve(r).map_err(|r| {
                    DataplaneError::Adopt(format!(
                        "service {id}'s table (slots {}..{}) overlaps another table or lies outside SCHED_SLOTS ({} slots)",
                        r.off,
                        r.off as u64 + r.len as u64,
                        self.sizes.sched_slots
                    ))
                })?;
            }
            s.table = batch::read_array(&self.slots, main.off, main.len)
                .map_err(walk_err(names::MAP_SCHED_SLOTS))?;
        }
        self.filter = batch::read_array(&self.filter_map, 0, FILTER_WORDS)
            .map_err(walk_err(names::MAP_SERVICE_FILTER))?;
        self.regions = regions;
        self.free_service_ids = (0..MAX_SERVICES)
            .rev()
            .filter(|id| !services.contains_key(id))
            .collect();
        self.free_backend_ids = (0..MAX_BACKENDS)
            .rev()
            .filter(|&id| !in_use[id as usize])
            .collect();
        self.next_generation = max_generation.wrapping_add(1).max(1);
        let n = services.len();
        self.inherited = Some(Inherited {
            services,
            by_key,
            orphans,
        });
        Ok((n, backends))
    }

    /// Whether the data plane was adopted and no configuration has been synced since: its
    /// maps still hold what the previous xvsd wrote.
    pub fn adoption_pending(&self) -> bool {
        self.inherited.is_some()
    }

    /// Next-hop MACs of the adopted direct-routing real servers, so the first sync can publish
    /// them at once instead of waiting for the neighbour table.
    pub fn inherited_macs(&self) -> HashMap<IpAddr, [u8; 6]> {
        let Some(i) = &self.inherited else {
            return HashMap::new();
        };
        i.services
            .values()
            .flat_map(|s| s.backends.iter())
            .chain(i.orphans.iter())
            .filter(|(_, b)| b.fwd == fwd::DR && b.mac != [0; 6])
            .map(|(_, b)| (backend_addr(b).ip(), b.mac))
            .collect()
    }

    /// The first sync after an adoption: services of `config` whose key (or, for a group, one
    /// of whose matches) the previous xvsd published keep its service id, table and the
    /// backend slots of their real servers; everything else it left is unpublished and freed.
    pub(super) fn take_over(
        &mut self,
        config: &Config,
        inherited: Inherited,
    ) -> Result<(), DataplaneError> {
        let Inherited {
            mut services,
            by_key,
            orphans,
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
            let mut slots = HashMap::new();
            for (bid, b) in s.backends {
                // Two slots for one address cannot come from a sane xvsd: keep the first.
                match slots.entry(backend_addr(&b)) {
                    std::collections::hash_map::Entry::Occupied(_) => self.free_backend(Slot {
                        id: bid,
                        written: b,
                    })?,
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(Slot {
                            id: bid,
                            written: b,
                        });
                    }
                }
            }
            for k in &s.keys {
                self.owners.insert(*k, svc.key);
            }
            self.quarantine.extend(s.other_regions);
            self.placed.insert(
                svc.key,
                Placed {
                    adopted: true,
                    id,
                    region: Region {
                        off: s.value.table_off,
                        len: s.value.table_len,
                    },
                    table: s.table,
                    kind: s.value.table_kind,
                    value_flags: (
                        s.value.flags,
                        s.value.persist_timeout_s,
                        s.value.persist_prefix,
                    ),
                    sched: scheduler::Scheduling::new(svc.scheduler, svc.flags),
                    slots,
                    pushed: None,
                    keys: s.keys,
                },
            );
            kept += 1;
        }
        let dropped = services.len();
        for (id, s) in services {
            for k in &s.keys {
                match self.services.remove(k) {
                    Ok(()) | Err(MapError::KeyNotFound) => {}
                    Err(e) => return Err(map_err(names::MAP_SERVICES)(e)),
                }
            }
            self.quarantine.push(Region {
                off: s.value.table_off,
                len: s.value.table_len,
            });
            self.quarantine.extend(s.other_regions);
            self.free_service_ids.push(id);
            for (bid, b) in s.backends {
                self.free_backend(Slot {
                    id: bid,
                    written: b,
                })?;
            }
        }
        for (bid, b) in orphans {
            self.free_backend(Slot {
                id: bid,
                written: b,
            })?;
        }
        info!(
            kept,
            dropped, "took over the adopted services the configuration still has"
        );
        Ok(())
    }
}
