//! The controller's data-plane core without root: plans applied to in-memory maps.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use lb_common::{table_kind, Stats, MAX_BACKENDS, NO_BACKEND};

use super::{
    adopt::read_pinned,
    exec::{self, Applied, ExecError},
    inherit,
    maps::{Maps, MemoryMaps, StatsMap},
    plan::{self, filter_words, to_bpf_key, Inputs, MapOp, Placement, PlanError},
    ConnCounts, DataplaneError,
};
use crate::{
    model::{
        Config, ForwardMethod, Persistence, Protocol, RealServer, SchedFlags, Scheduler, Service,
        ServiceKey, VirtualAddr,
    },
    scheduler,
};

const SCHED_SLOTS: u32 = 1 << 14;

/// A placement and the in-memory maps it describes, synced as `Dataplane::sync` does.
struct Rig {
    placement: Placement,
    maps: MemoryMaps,
    macs: HashMap<IpAddr, [u8; 6]>,
    counts: HashMap<u32, ConnCounts>,
    params: scheduler::Params,
}

impl Rig {
    fn new() -> Rig {
        Rig::with_slots(SCHED_SLOTS)
    }

    fn with_slots(sched_slots: u32) -> Rig {
        Rig {
            placement: Placement::new(sched_slots),
            maps: MemoryMaps::new(sched_slots, 2),
            macs: HashMap::new(),
            counts: HashMap::new(),
            params: scheduler::Params {
                maglev_size: 251,
                plan_len: 32,
            },
        }
    }

    fn inputs(&self) -> Inputs<'_> {
        Inputs {
            macs: &self.macs,
            counts: &self.counts,
            params: &self.params,
        }
    }

    /// Every real server of `config` gets a MAC (as the neighbour table would give it).
    fn resolve(&mut self, config: &Config) {
        for r in config.services().iter().flat_map(|s| &s.reals) {
            let ip = r.addr.ip();
            let n = self.macs.len() as u8;
            self.macs.entry(ip).or_insert([2, 0, 0, 0, 1, n]);
        }
    }

    fn plan(&self, config: &Config) -> Result<plan::Plan, PlanError> {
        plan::plan(&self.placement, config, &self.inputs())
    }

    fn sync(&mut self, config: &Config) -> Result<Applied, DataplaneError> {
        self.resolve(config);
        let plan = self.plan(config)?;
        Ok(exec::commit(&mut self.placement, &mut self.maps, plan)?)
    }

    fn recompute(&mut self, config: &Config) -> Result<Applied, DataplaneError> {
        let plan = plan::plan_recompute(&self.placement, config, &self.inputs())?;
        Ok(exec::commit(&mut self.placement, &mut self.maps, plan)?)
    }

    /// Placement and maps, to compare states.
    fn snapshot(&self) -> (String, MemoryMaps) {
        (fingerprint(&self.placement), self.maps.contents())
    }

    fn sid(&self, key: &ServiceKey) -> u32 {
        self.placement.service_id(key).expect("placed service")
    }

    fn bid(&self, key: &ServiceKey, addr: &str) -> u32 {
        self.placement
            .backend_id(key, addr.parse().unwrap())
            .expect("placed backend")
    }

    fn generation(&self, id: u32) -> u32 {
        self.maps.backend(id).unwrap().generation
    }

    /// The published table of a service, read from the maps through its value.
    fn published(&self, v: &str) -> (u8, Vec<u32>) {
        let value = self.maps.services[&to_bpf_key(&vaddr(v))];
        (
            value.table_kind,
            self.maps.slots(value.table_off, value.table_len).unwrap(),
        )
    }

    /// The placement describes exactly what the maps hold, and `config` is what they publish.
    fn assert_consistent(&self, config: &Config) {
        let (p, m) = (&self.placement, &self.maps);
        assert!(!p.adoption_pending());
        let mut keys = 0;
        let mut in_use = BTreeSet::new();
        let mut ids = BTreeSet::new();
        for (k, placed) in &p.services {
            assert!(
                config.service(k).is_some(),
                "{k} is placed but not configured"
            );
            assert!(ids.insert(placed.id), "service id {} twice", placed.id);
            assert_eq!(placed.keys, plan::bpf_keys(config.service(k).unwrap()));
            for key in &placed.keys {
                assert_eq!(p.owners.get(key), Some(k));
                let v = m.services[key];
                assert_eq!(v.id, placed.id);
                assert_eq!(
                    (v.table_off, v.table_len),
                    (placed.region.off, placed.region.len)
                );
                assert_eq!(v.table_kind, placed.kind);
            }
            keys += placed.keys.len();
            assert_eq!(
                m.slots(placed.region.off, placed.region.len).unwrap(),
                placed.table
            );
            for s in placed.slots.values() {
                assert_eq!(m.backend(s.id).unwrap(), s.written);
                assert_ne!(s.written.generation, 0);
                assert_eq!(s.written.service, placed.id);
                assert!(in_use.insert(s.id), "backend slot {} twice", s.id);
            }
            for id in &placed.table {
                assert!(*id == NO_BACKEND || placed.slots.values().any(|s| s.id == *id));
            }
        }
        assert_eq!(p.services.len(), config.services().len());
        assert_eq!(m.services.len(), keys);
        assert_eq!(p.owners.len(), keys);
        for (id, b) in &m.backends {
            assert!(
                b.generation == 0 || in_use.contains(id),
                "slot {id} left in use"
            );
        }
        assert_eq!(m.filter, p.filter);
        assert_eq!(p.filter, filter_words(config));
        // Every id is either free (once) or in use.
        let mut seen = vec![false; MAX_BACKENDS as usize];
        for &id in p.free_backend_ids.iter().chain(&in_use) {
            assert!(
                !std::mem::replace(&mut seen[id as usize], true),
                "slot {id}"
            );
        }
        assert_eq!(
            p.free_backend_ids.len() + in_use.len(),
            MAX_BACKENDS as usize
        );
        let mut seen = vec![false; lb_common::MAX_SERVICES as usize];
        for &id in p.free_service_ids.iter().chain(&ids) {
            assert!(
                !std::mem::replace(&mut seen[id as usize], true),
                "service {id}"
            );
        }
        assert_eq!(
            p.free_service_ids.len() + ids.len(),
            lb_common::MAX_SERVICES as usize
        );
    }
}

/// Everything a placement holds but the schedulers' state, in a fixed order (the free lists
/// folded into a number: they are long).
fn fingerprint(p: &Placement) -> String {
    let mut services: Vec<String> = p
        .services
        .iter()
        .map(|(k, s)| {
            let mut slots: Vec<_> = s.slots.iter().map(|(a, s)| (a, s.id, s.written)).collect();
            slots.sort_by_key(|(a, ..)| **a);
            format!(
                "{k} {} {} {:?} {:?} {} {:?} {:?} {:?} {:?} {:?}",
                s.adopted,
                s.id,
                s.region,
                s.table,
                s.kind,
                s.value_flags,
                slots,
                s.pushed,
                s.keys,
                s.laddrs
            )
        })
        .collect();
    services.sort();
    let mut owners: Vec<String> = p.owners.iter().map(|(k, o)| format!("{k:?} {o}")).collect();
    owners.sort();
    let h = p
        .free_service_ids
        .iter()
        .chain(&p.free_backend_ids)
        .fold(0u64, |h, &id| {
            h.wrapping_mul(1_000_003).wrapping_add(id as u64)
        });
    format!(
        "{services:?} {owners:?} {:x} {} {:?} {:?} {:?} {} {}",
        h,
        p.next_generation,
        p.regions,
        p.quarantine,
        p.filter,
        p.adoption_pending(),
        p.sched_slots
    )
}

fn vaddr(s: &str) -> VirtualAddr {
    VirtualAddr {
        protocol: Protocol::Tcp,
        addr: s.parse().unwrap(),
    }
}

fn tcp(s: &str) -> ServiceKey {
    ServiceKey::new(Protocol::Tcp, s.parse().unwrap())
}

fn real(addr: &str, weight: u32) -> RealServer {
    RealServer::dr(addr.parse().unwrap(), weight)
}

fn service(key: ServiceKey, scheduler: Scheduler, reals: &[(&str, u32)]) -> Service {
    Service {
        key,
        matches: Vec::new(),
        scheduler,
        flags: SchedFlags::default(),
        persistence: None,
        reals: reals.iter().map(|(a, w)| real(a, *w)).collect(),
        check: Default::default(),
        sorry_server: None,
        quorum: Default::default(),
        laddrs: Vec::new(),
    }
}

fn group(mark: u32, matches: &[&str], reals: &[(&str, u32)]) -> Service {
    Service {
        matches: matches.iter().map(|m| vaddr(m)).collect(),
        ..service(ServiceKey::fwmark(mark, false), Scheduler::Wrr, reals)
    }
}

fn config(services: Vec<Service>) -> Config {
    Config::from_services(services)
}

const WEB: &str = "203.0.113.10:80";
const API: &str = "203.0.113.11:443";
const DNS: &str = "203.0.113.12:53";

/// A configuration touching every kind of table, persistence and a group.
fn mixed() -> Config {
    config(vec![
        service(
            tcp(WEB),
            Scheduler::Wrr,
            &[("10.0.0.1:80", 3), ("10.0.0.2:80", 1)],
        ),
        Service {
            persistence: Some(Persistence {
                timeout: 300,
                prefix: 24,
            }),
            ..service(
                tcp(API),
                Scheduler::Mh,
                &[("10.0.0.3:443", 1), ("10.0.0.4:443", 1)],
            )
        },
        service(tcp(DNS), Scheduler::Lc, &[("10.0.0.5:53", 1)]),
        group(
            7,
            &["198.51.100.1:80", "198.51.100.2:80"],
            &[("10.0.1.1:80", 1), ("10.0.1.2:80", 2)],
        ),
    ])
}

/// The next configuration: a service gone, one new, servers added, removed and reweighted,
/// a group match moved to a new group, persistence changed.
fn changed() -> Config {
    config(vec![
        service(
            tcp(WEB),
            Scheduler::Wrr,
            &[("10.0.0.1:80", 1), ("10.0.0.6:80", 2)],
        ),
        service(
            tcp(API),
            Scheduler::Mh,
            &[("10.0.0.3:443", 1), ("10.0.0.4:443", 1)],
        ),
        service(
            tcp("203.0.113.13:80"),
            Scheduler::Rr,
            &[("10.0.0.7:80", 1), ("10.0.0.8:80", 1)],
        ),
        group(7, &["198.51.100.1:80"], &[("10.0.1.1:80", 1)]),
        group(8, &["198.51.100.2:80"], &[("10.0.1.3:80", 1)]),
    ])
}

/// `n` services of three servers each: enough for the executor to read ahead in bulk.
fn many(n: u32, weight: u32) -> Config {
    config(
        (0..n)
            .map(|i| {
                let reals: Vec<(String, u32)> = (0..3)
                    .map(|r| (format!("10.2.{i}.{r}:80"), weight + r))
                    .collect();
                let reals: Vec<(&str, u32)> = reals.iter().map(|(a, w)| (a.as_str(), *w)).collect();
                service(tcp(&format!("203.0.114.{i}:80")), Scheduler::Wrr, &reals)
            })
            .collect(),
    )
}

/// Traffic counted on every CPU for every id in use.
fn count_traffic(rig: &mut Rig) {
    let s = Stats {
        conns: 1,
        packets: 10,
        bytes: 1000,
        out_packets: 9,
        out_bytes: 900,
    };
    let ids: Vec<(StatsMap, u32)> = rig
        .placement
        .services
        .values()
        .flat_map(|p| {
            std::iter::once((StatsMap::Service, p.id))
                .chain(p.slots.values().map(|s| (StatsMap::Backend, s.id)))
        })
        .collect();
    for id in ids {
        rig.maps.stats.insert(id, vec![s; 2]);
    }
    for id in 0..4 {
        rig.maps.cursors.insert(id, 99);
    }
}

#[test]
fn a_first_sync_places_every_service_and_a_second_writes_nothing() {
    let mut rig = Rig::new();
    let c = mixed();
    let applied = rig.sync(&c).unwrap();
    assert!(applied.ops > 0);
    rig.assert_consistent(&c);
    // Every match of the group points at the group's one value.
    let g = ServiceKey::fwmark(7, false);
    for m in ["198.51.100.1:80", "198.51.100.2:80"] {
        assert_eq!(rig.maps.services[&to_bpf_key(&vaddr(m))].id, rig.sid(&g));
    }
    assert_eq!(rig.published(WEB).0, table_kind::SEQUENCE);
    assert_eq!(rig.published(API).0, table_kind::HASH_SRC);
    assert_eq!(rig.published(API).1.len(), 251);
    // The same configuration again: nothing to write, nothing re-placed.
    let before = rig.snapshot();
    let plan = rig.plan(&c).unwrap();
    assert!(plan.ops.is_empty(), "{:?}", plan.ops);
    rig.sync(&c).unwrap();
    assert_eq!(rig.snapshot().1, before.1);
}

#[test]
fn the_operations_keep_packets_in_flight_safe() {
    let mut rig = Rig::new();
    rig.sync(&mixed()).unwrap();
    let c = changed();
    rig.resolve(&c);
    let ops = rig.plan(&c).unwrap().ops;
    let pos = |f: &dyn Fn(&MapOp) -> bool| ops.iter().position(f);
    let all = |f: &dyn Fn(&MapOp) -> bool| -> Vec<usize> {
        ops.iter()
            .enumerate()
            .filter(|(_, o)| f(o))
            .map(|(i, _)| i)
            .collect()
    };
    // The filter is widened before anything else is written, and narrowed last.
    let filter = all(&|o| matches!(o, MapOp::SetFilterWord { .. }));
    assert!(!filter.is_empty());
    assert_eq!(filter[0], 0);
    assert_eq!(*filter.last().unwrap(), ops.len() - 1);
    // The removed service is unpublished before its backend is freed.
    let dns = to_bpf_key(&vaddr(DNS));
    let dns_backend = rig.bid(&tcp(DNS), "10.0.0.5:53");
    let unpublished = pos(&|o| matches!(o, MapOp::DeleteService { key } if *key == dns)).unwrap();
    let freed = pos(&|o| {
        matches!(o, MapOp::SetBackend { id, backend, .. } if *id == dns_backend && backend.generation == 0)
    })
    .unwrap();
    assert!(unpublished < freed);
    // Every table is written before a key points at its region, and never over a region in
    // use: the old regions stay as they are until the next plan.
    let old: Vec<_> = rig.placement.services.values().map(|p| p.region).collect();
    for (i, op) in ops.iter().enumerate() {
        if let MapOp::PutService { value, .. } = op {
            if value.table_len > 0 {
                let written = pos(
                    &|o| matches!(o, MapOp::SetSlots { off, ids } if *off == value.table_off && ids.len() as u32 == value.table_len),
                );
                let reused = old.iter().any(|r| r.off == value.table_off);
                assert!(written.is_some_and(|w| w < i) || reused, "{op:?}");
            }
        }
        if let MapOp::SetSlots { off, ids } = op {
            let end = off + ids.len() as u32;
            assert!(
                old.iter().all(|r| end <= r.off || r.off + r.len <= *off),
                "a table written over a region in use: {op:?}"
            );
        }
    }
    // The moved match ends up written by its new group: its old group's delete, if the old
    // group comes first, goes before.
    let moved = to_bpf_key(&vaddr("198.51.100.2:80"));
    let put = all(&|o| matches!(o, MapOp::PutService { key, .. } if *key == moved));
    assert_eq!(put.len(), 1);
    if let Some(del) = pos(&|o| matches!(o, MapOp::DeleteService { key } if *key == moved)) {
        assert!(del < put[0]);
    }
    rig.sync(&c).unwrap();
    rig.assert_consistent(&c);
    // The regions of the replaced tables are free again only after the next plan.
    assert!(!rig.placement.quarantine.is_empty());
    rig.sync(&c).unwrap();
    assert!(rig.placement.quarantine.is_empty());
}

#[test]
fn freed_ids_are_reused_with_a_new_generation() {
    let mut rig = Rig::new();
    let a = config(vec![
        service(
            tcp(WEB),
            Scheduler::Rr,
            &[("10.0.0.1:80", 1), ("10.0.0.2:80", 1)],
        ),
        service(tcp(API), Scheduler::Rr, &[("10.0.0.3:443", 1)]),
    ]);
    rig.sync(&a).unwrap();
    let web = rig.sid(&tcp(WEB));
    let api = rig.sid(&tcp(API));
    assert_ne!(web, api);
    let r1 = rig.bid(&tcp(WEB), "10.0.0.1:80");
    let r2 = rig.bid(&tcp(WEB), "10.0.0.2:80");
    let g2 = rig.generation(r2);
    // A real server leaves, another comes: it takes the freed slot, under a new generation,
    // so connections of the old server see it gone.
    let b = config(vec![
        service(
            tcp(WEB),
            Scheduler::Rr,
            &[("10.0.0.1:80", 1), ("10.0.0.9:80", 1)],
        ),
        service(tcp(API), Scheduler::Rr, &[("10.0.0.3:443", 1)]),
    ]);
    rig.sync(&b).unwrap();
    rig.assert_consistent(&b);
    assert_eq!(rig.bid(&tcp(WEB), "10.0.0.1:80"), r1);
    assert_eq!(rig.bid(&tcp(WEB), "10.0.0.9:80"), r2);
    assert!(rig.generation(r2) > g2);
    assert_eq!(rig.maps.backend(r2).unwrap().addr[..4], [10, 0, 0, 9]);
    // A service leaves, another comes: it takes the freed service id; its counters start at 0.
    rig.maps.stats.insert(
        (StatsMap::Service, web),
        vec![
            Stats {
                conns: 5,
                ..Default::default()
            };
            2
        ],
    );
    let c = config(vec![
        service(tcp(API), Scheduler::Rr, &[("10.0.0.3:443", 1)]),
        service(tcp(DNS), Scheduler::Rr, &[("10.0.0.5:53", 1)]),
    ]);
    rig.sync(&c).unwrap();
    rig.assert_consistent(&c);
    assert_eq!(rig.sid(&tcp(DNS)), web);
    assert_eq!(rig.sid(&tcp(API)), api);
    assert_eq!(
        rig.maps.stats(StatsMap::Service, web).unwrap(),
        vec![Stats::default(); 2]
    );
    assert!(!rig.maps.services.contains_key(&to_bpf_key(&vaddr(WEB))));
    // Every generation handed out is new.
    let gens: Vec<u32> = rig.maps.backends.values().map(|b| b.generation).collect();
    assert!(gens.iter().all(|&g| g > g2));
}

#[test]
fn a_commit_failing_at_any_operation_leaves_maps_and_placement_as_they_were() {
    let mut start = Rig::new();
    start.sync(&mixed()).unwrap();
    count_traffic(&mut start);
    let next = changed();
    start.resolve(&next);
    // The plan and what applying it fully gives.
    let reference = {
        let mut r = Rig {
            placement: start.placement.clone(),
            maps: start.maps.clone(),
            macs: start.macs.clone(),
            counts: HashMap::new(),
            params: start.params,
        };
        r.sync(&next).unwrap();
        r.snapshot().1
    };
    let n = start.plan(&next).unwrap().ops.len();
    assert!(n > 20, "{n} operations");
    for fail in 0..n {
        let mut rig = Rig {
            placement: start.placement.clone(),
            maps: start.maps.clone(),
            macs: start.macs.clone(),
            counts: HashMap::new(),
            params: start.params,
        };
        let before = rig.snapshot();
        rig.maps.fail_write(fail);
        match rig.sync(&next) {
            Err(DataplaneError::Exec(ExecError::RolledBack { index, total, .. })) => {
                assert_eq!((index, total), (fail, n));
            }
            other => panic!("failing write {fail}: {other:?}"),
        }
        assert_eq!(rig.snapshot(), before, "failing write {fail}");
        // Nothing is left behind: a retry gets exactly what a clean run gets.
        rig.sync(&next).unwrap();
        assert_eq!(
            rig.snapshot().1,
            reference,
            "retry after failing write {fail}"
        );
        rig.assert_consistent(&next);
    }
}

#[test]
fn a_commit_whose_undo_fails_makes_the_next_sync_rewrite_everything() {
    let mut start = Rig::new();
    start.sync(&mixed()).unwrap();
    count_traffic(&mut start);
    let next = changed();
    start.resolve(&next);
    let n = start.plan(&next).unwrap().ops.len();
    // Write `fail` fails, then the undo of the operation before it (writes are undone in
    // reverse order, the failed one first): the maps hold part of the plan.
    for fail in 1..n {
        for target in [mixed(), next.clone()] {
            let mut rig = Rig {
                placement: start.placement.clone(),
                maps: start.maps.clone(),
                macs: start.macs.clone(),
                counts: HashMap::new(),
                params: start.params,
            };
            rig.maps.fail_write(fail);
            rig.maps.fail_write(fail + 2);
            match rig.sync(&next) {
                Err(DataplaneError::Exec(ExecError::Partial { index, total, .. })) => {
                    assert_eq!((index, total), (fail, n));
                }
                other => panic!("failing writes {fail} and {}: {other:?}", fail + 2),
            }
            assert!(rig.placement.rewrite_pending(), "failing write {fail}");
            // Whether the next sync goes on to the new configuration or back to the one the
            // placement still describes, the maps end up exactly as it says.
            rig.sync(&target).unwrap();
            assert!(!rig.placement.rewrite_pending());
            rig.assert_consistent(&target);
            for (k, placed) in &rig.placement.services {
                assert_eq!(rig.maps.cursor(placed.id).unwrap(), 0, "{k}");
            }
            // And it was a full rewrite once: the next plan is a difference again.
            assert!(
                rig.plan(&target).unwrap().ops.is_empty(),
                "failing write {fail}"
            );
        }
    }
}

#[test]
fn a_large_commit_read_ahead_in_bulk_rolls_back_exactly() {
    let mut start = Rig::new();
    start.sync(&many(40, 1)).unwrap();
    count_traffic(&mut start);
    // Every table rewritten, every server moved, half the services replaced.
    let next = many(60, 2).map_services(|s| {
        s.drain(..20);
    });
    start.resolve(&next);
    let n = start.plan(&next).unwrap().ops.len();
    assert!(n > 300, "{n} operations");
    for fail in (0..n).step_by(7).chain([n - 1]) {
        let mut rig = Rig {
            placement: start.placement.clone(),
            maps: start.maps.clone(),
            macs: start.macs.clone(),
            counts: HashMap::new(),
            params: start.params,
        };
        let before = rig.snapshot();
        rig.maps.fail_write(fail);
        assert!(rig.sync(&next).is_err());
        assert_eq!(rig.snapshot(), before, "failing write {fail}");
    }
    let mut rig = start;
    rig.sync(&next).unwrap();
    rig.assert_consistent(&next);
}

#[test]
fn capacity_errors_leave_everything_unchanged() {
    // Room for one Maglev table (251 slots) and its replacement, not for two more.
    let mut rig = Rig::with_slots(600);
    let one = config(vec![service(
        tcp(WEB),
        Scheduler::Mh,
        &[("10.0.0.1:80", 1)],
    )]);
    rig.sync(&one).unwrap();
    let before = rig.snapshot();
    let three = config(vec![
        service(
            tcp(WEB),
            Scheduler::Mh,
            &[("10.0.0.1:80", 1), ("10.0.0.2:80", 1)],
        ),
        service(tcp(API), Scheduler::Mh, &[("10.0.0.3:80", 1)]),
    ]);
    match rig.sync(&three) {
        Err(DataplaneError::Plan(PlanError::SchedSlots { need, available })) => {
            assert_eq!((need, available), (502, 349));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(rig.snapshot(), before);
    // Too many real servers over all services.
    let reals: Vec<(String, u32)> = (0..=MAX_BACKENDS)
        .map(|i| {
            (
                format!("10.{}.{}.{}:80", i >> 16, (i >> 8) & 255, i & 255),
                1,
            )
        })
        .collect();
    let reals: Vec<(&str, u32)> = reals.iter().map(|(a, w)| (a.as_str(), *w)).collect();
    let huge = config(vec![service(tcp(WEB), Scheduler::Rr, &reals)]);
    assert_eq!(
        rig.plan(&huge).unwrap_err(),
        PlanError::Backends(MAX_BACKENDS as usize + 1)
    );
    assert_eq!(rig.snapshot(), before);
}

#[test]
fn health_weight_changes_rewrite_only_the_table() {
    let mut rig = Rig::new();
    let reals = [("10.0.0.1:80", 1), ("10.0.0.2:80", 2), ("10.0.0.3:80", 3)];
    let up = config(vec![service(tcp(WEB), Scheduler::Wrr, &reals)]);
    rig.sync(&up).unwrap();
    count_traffic(&mut rig);
    let id = rig.sid(&tcp(WEB));
    let slots: Vec<u32> = reals.iter().map(|(a, _)| rig.bid(&tcp(WEB), a)).collect();
    let gens: Vec<u32> = slots.iter().map(|&s| rig.generation(s)).collect();
    // A down server with --check-inhibit stays at weight 0; without it, it leaves the tables.
    let inhibited = config(vec![service(
        tcp(WEB),
        Scheduler::Wrr,
        &[("10.0.0.1:80", 1), ("10.0.0.2:80", 0), ("10.0.0.3:80", 3)],
    )]);
    let ops = rig.plan(&inhibited).unwrap().ops;
    assert!(
        ops.iter().all(|o| matches!(
            o,
            MapOp::SetSlots { .. } | MapOp::PutService { .. } | MapOp::ResetCursor { .. }
        )),
        "{ops:?}"
    );
    rig.sync(&inhibited).unwrap();
    rig.assert_consistent(&inhibited);
    let (_, table) = rig.published(WEB);
    assert!(!table.contains(&slots[1]));
    assert_eq!(table.iter().filter(|&&s| s == slots[2]).count(), 3);
    // Counters are kept: no new id anywhere.
    assert_eq!(rig.sid(&tcp(WEB)), id);
    for (i, s) in slots.iter().enumerate() {
        assert_eq!(rig.generation(*s), gens[i]);
        assert_ne!(
            rig.maps.stats(StatsMap::Backend, *s).unwrap()[0],
            Stats::default()
        );
    }
    // Removed from the tables by its health check: its slot is freed, the others keep theirs.
    let removed = config(vec![service(
        tcp(WEB),
        Scheduler::Wrr,
        &[("10.0.0.1:80", 1), ("10.0.0.3:80", 3)],
    )]);
    rig.sync(&removed).unwrap();
    rig.assert_consistent(&removed);
    assert_eq!(rig.generation(slots[1]), 0);
    assert_eq!(rig.bid(&tcp(WEB), "10.0.0.3:80"), slots[2]);
    assert_eq!(rig.generation(slots[2]), gens[2]);
    // Back up: a new slot generation (its old connections were dropped with it).
    rig.sync(&up).unwrap();
    rig.assert_consistent(&up);
    assert!(rig.generation(rig.bid(&tcp(WEB), "10.0.0.2:80")) > gens[2]);
    assert_eq!(rig.sid(&tcp(WEB)), id);
}

#[test]
fn a_real_server_without_a_mac_takes_no_new_connections_until_it_has_one() {
    let mut rig = Rig::new();
    let c = config(vec![service(
        tcp(WEB),
        Scheduler::Rr,
        &[("10.0.0.1:80", 1), ("10.0.0.2:80", 1)],
    )]);
    rig.macs
        .insert("10.0.0.1".parse().unwrap(), [2, 0, 0, 0, 0, 1]);
    let plan = rig.plan(&c).unwrap();
    exec::commit(&mut rig.placement, &mut rig.maps, plan).unwrap();
    let r1 = rig.bid(&tcp(WEB), "10.0.0.1:80");
    let r2 = rig.bid(&tcp(WEB), "10.0.0.2:80");
    assert_eq!(rig.published(WEB).1, [r1]);
    rig.sync(&c).unwrap();
    rig.assert_consistent(&c);
    assert_eq!(rig.published(WEB).1, [r1, r2]);
    assert_eq!(
        rig.maps.backend(r2).unwrap().mac,
        rig.macs[&"10.0.0.2".parse().unwrap()]
    );
}

#[test]
fn load_aware_tables_follow_connection_counts() {
    for scheduler in [Scheduler::Lc, Scheduler::Wlc, Scheduler::Sed, Scheduler::Nq] {
        let mut rig = Rig::new();
        let c = config(vec![service(
            tcp(WEB),
            scheduler,
            &[("10.0.0.1:80", 1), ("10.0.0.2:80", 1)],
        )]);
        rig.sync(&c).unwrap();
        let busy = rig.bid(&tcp(WEB), "10.0.0.1:80");
        let idle = rig.bid(&tcp(WEB), "10.0.0.2:80");
        let share = |rig: &Rig, id: u32| rig.published(WEB).1.iter().filter(|&&s| s == id).count();
        rig.counts.insert(
            busy,
            ConnCounts {
                active: 20,
                inactive: 5,
                persistent: 0,
            },
        );
        let applied = rig.recompute(&c).unwrap();
        assert_eq!(applied.published, 1, "{scheduler:?}");
        rig.assert_consistent(&c);
        // The idle server takes the next connections until it has caught up.
        assert_eq!(rig.published(WEB).1[0], idle, "{scheduler:?}");
        assert!(share(&rig, idle) > share(&rig, busy), "{scheduler:?}");
        // The same counts: the same plan, nothing published.
        let applied = rig.recompute(&c).unwrap();
        assert_eq!((applied.published, applied.ops), (0, 0), "{scheduler:?}");
        // The load moves: so does the plan; ids stay.
        rig.counts.clear();
        rig.counts.insert(
            idle,
            ConnCounts {
                active: 40,
                inactive: 0,
                persistent: 0,
            },
        );
        assert_eq!(rig.recompute(&c).unwrap().published, 1, "{scheduler:?}");
        assert_eq!(rig.published(WEB).1[0], busy, "{scheduler:?}");
        assert_eq!(rig.bid(&tcp(WEB), "10.0.0.1:80"), busy);
        rig.assert_consistent(&c);
    }
}

/// A tunnelled real server has no MAC of its own in the neighbour table: a recomputation must
/// not take it for unresolved and drop its weight to 0 (it did, about a second after each
/// sync, before recomputation used the sync's view of MACs).
#[test]
fn recomputation_keeps_tunnelled_servers_without_a_neighbour_entry() {
    let mut rig = Rig::new();
    let mut svc = service(
        tcp(WEB),
        Scheduler::Wlc,
        &[("10.0.0.1:80", 1), ("10.0.0.2:80", 1)],
    );
    svc.reals[1].forward = ForwardMethod::Tunnel(crate::model::Tunnel {
        kind: crate::model::TunnelKind::Ipip,
        port: 0,
        csum: false,
    });
    let c = config(vec![svc]);
    rig.sync(&c).unwrap();
    // Only the DR server's address is in the neighbour table.
    rig.macs.remove(&"10.0.0.2".parse().unwrap());
    let tunnelled = rig.bid(&tcp(WEB), "10.0.0.2:80");
    let dr = rig.bid(&tcp(WEB), "10.0.0.1:80");
    rig.counts.insert(
        dr,
        ConnCounts {
            active: 10,
            inactive: 0,
            persistent: 0,
        },
    );
    rig.recompute(&c).unwrap();
    rig.assert_consistent(&c);
    let table = rig.published(WEB).1;
    assert!(
        table.contains(&tunnelled),
        "the tunnelled server left the table: {table:?}"
    );
}

#[test]
fn recomputation_leaves_count_blind_tables_alone() {
    let mut rig = Rig::new();
    let mut c = mixed();
    c = c.map_services(|s| {
        s.push(service(
            tcp("203.0.113.20:80"),
            Scheduler::Lblc,
            &[("10.0.2.1:80", 1), ("10.0.2.2:80", 1)],
        ));
    });
    rig.sync(&c).unwrap();
    let before = rig.snapshot().1;
    let applied = rig.recompute(&c).unwrap();
    // lc and lblc are recomputed; with no counts their tables do not change.
    assert_eq!(applied.published, 0);
    assert_eq!(rig.snapshot().1, before);
    let (kind, table) = rig.published("203.0.113.20:80");
    assert_eq!(kind, table_kind::HASH_DST);
    assert_eq!(table.len(), scheduler::HASH_BUCKETS);
    // A failed recomputation changes nothing either.
    let lc = rig.bid(&tcp(DNS), "10.0.0.5:53");
    rig.counts.insert(
        lc,
        ConnCounts {
            active: 3,
            ..Default::default()
        },
    );
    let mut c2 = c.clone();
    c2 = c2.map_services(|s| {
        s[2].reals.push(real("10.0.0.50:53", 1));
    });
    // (Recomputation does not place new servers: the configuration is the synced one.)
    rig.sync(&c2).unwrap();
    let before = rig.snapshot();
    rig.counts.insert(
        rig.bid(&tcp(DNS), "10.0.0.50:53"),
        ConnCounts {
            active: 9,
            ..Default::default()
        },
    );
    rig.maps.fail_write(1);
    assert!(rig.recompute(&c2).is_err());
    assert_eq!(rig.snapshot(), before);
    rig.recompute(&c2).unwrap();
    rig.assert_consistent(&c2);
}

#[test]
fn group_matches_move_between_groups_within_one_sync() {
    // Both orders of the groups in the configuration: the key ends up with its new owner.
    for flip in [false, true] {
        let mut rig = Rig::new();
        let order = |mut v: Vec<Service>| {
            if flip {
                v.reverse();
            }
            config(v)
        };
        let a = order(vec![
            group(
                1,
                &["198.51.100.1:80", "198.51.100.2:80"],
                &[("10.0.1.1:80", 1)],
            ),
            group(2, &["198.51.100.3:80"], &[("10.0.1.2:80", 1)]),
        ]);
        rig.sync(&a).unwrap();
        rig.assert_consistent(&a);
        let (g1, g2) = (ServiceKey::fwmark(1, false), ServiceKey::fwmark(2, false));
        let (id1, id2) = (rig.sid(&g1), rig.sid(&g2));
        let moved = to_bpf_key(&vaddr("198.51.100.2:80"));
        assert_eq!(rig.maps.services[&moved].id, id1);
        let b = order(vec![
            group(1, &["198.51.100.1:80"], &[("10.0.1.1:80", 1)]),
            group(
                2,
                &["198.51.100.3:80", "198.51.100.2:80"],
                &[("10.0.1.2:80", 1)],
            ),
        ]);
        rig.sync(&b).unwrap();
        rig.assert_consistent(&b);
        assert_eq!(rig.maps.services[&moved].id, id2, "flip {flip}");
        assert_eq!((rig.sid(&g1), rig.sid(&g2)), (id1, id2));
        // A match taken by a new normal service, the group keeping its other match.
        let c = order(vec![
            group(1, &["198.51.100.1:80"], &[("10.0.1.1:80", 1)]),
            group(2, &["198.51.100.3:80"], &[("10.0.1.2:80", 1)]),
            service(tcp("198.51.100.2:80"), Scheduler::Rr, &[("10.0.1.9:80", 1)]),
        ]);
        rig.sync(&c).unwrap();
        rig.assert_consistent(&c);
        let svc = rig.sid(&tcp("198.51.100.2:80"));
        assert_eq!(rig.maps.services[&moved].id, svc);
        // A group without matches takes no traffic but keeps its id and slots.
        let d = order(vec![
            group(1, &[], &[("10.0.1.1:80", 1)]),
            group(2, &["198.51.100.3:80"], &[("10.0.1.2:80", 1)]),
        ]);
        rig.sync(&d).unwrap();
        rig.assert_consistent(&d);
        assert_eq!(rig.sid(&g1), id1);
        assert!(rig.maps.services.values().all(|v| v.id != id1));
    }
}

/// A previous xvsd's maps: `mixed()` synced, traffic counted.
fn previous_xvsd() -> Rig {
    let mut old = Rig::new();
    old.sync(&mixed()).unwrap();
    count_traffic(&mut old);
    old
}

/// A new xvsd adopting `old`'s maps.
fn adopt(old: &Rig) -> Rig {
    let pinned = read_pinned(&old.maps, SCHED_SLOTS).unwrap();
    let adopted = inherit::inherit(&pinned, SCHED_SLOTS).unwrap();
    assert_eq!(adopted.services, 4);
    assert_eq!(adopted.backends, 7);
    let mut rig = Rig {
        placement: adopted.placement,
        maps: old.maps.clone(),
        macs: HashMap::new(),
        counts: HashMap::new(),
        params: old.params,
    };
    assert!(rig.placement.adoption_pending());
    // The adopted servers' MACs are known at once.
    rig.macs = rig.placement.inherited_macs();
    assert_eq!(rig.macs.len(), 7);
    for (ip, mac) in &rig.macs {
        assert_eq!(old.macs.get(ip), Some(mac));
    }
    rig
}

#[test]
fn adoption_then_the_same_configuration_writes_nothing() {
    let old = previous_xvsd();
    let mut rig = adopt(&old);
    let c = mixed();
    let plan = rig.plan(&c).unwrap();
    assert!(plan.ops.is_empty(), "{:?}", plan.ops);
    let applied = rig.sync(&c).unwrap();
    assert_eq!(applied.took_over.map(|t| (t.kept, t.dropped)), Some((4, 0)));
    assert_eq!(rig.maps, old.maps);
    rig.assert_consistent(&c);
    for s in c.services() {
        assert_eq!(rig.sid(&s.key), old.sid(&s.key));
        for r in &s.reals {
            assert_eq!(
                rig.placement.backend_id(&s.key, r.addr),
                old.placement.backend_id(&s.key, r.addr)
            );
        }
    }
    // From then on it is a placement like any other.
    rig.sync(&changed()).unwrap();
    rig.assert_consistent(&changed());
}

#[test]
fn adoption_keeps_the_ids_the_first_configuration_names_and_removes_the_rest() {
    let old = previous_xvsd();
    let mut rig = adopt(&old);
    let max_generation = old
        .maps
        .backends
        .values()
        .map(|b| b.generation)
        .max()
        .unwrap();
    let g7 = ServiceKey::fwmark(7, false);
    let first = config(vec![
        // Kept, one server gone, one new, weights changed.
        service(
            tcp(WEB),
            Scheduler::Wrr,
            &[("10.0.0.1:80", 1), ("10.0.0.9:80", 5)],
        ),
        // Kept under its group's other match only.
        group(7, &["198.51.100.2:80"], &[("10.0.1.2:80", 2)]),
        // New.
        service(tcp("203.0.113.30:80"), Scheduler::Rr, &[("10.0.3.1:80", 1)]),
    ]);
    let applied = rig.sync(&first).unwrap();
    assert_eq!(applied.took_over.map(|t| (t.kept, t.dropped)), Some((2, 2)));
    rig.assert_consistent(&first);
    // Same ids for what it names: connections, templates and counters stay valid.
    assert_eq!(rig.sid(&tcp(WEB)), old.sid(&tcp(WEB)));
    assert_eq!(rig.sid(&g7), old.sid(&g7));
    let r1 = old.bid(&tcp(WEB), "10.0.0.1:80");
    assert_eq!(rig.bid(&tcp(WEB), "10.0.0.1:80"), r1);
    assert_eq!(rig.generation(r1), old.generation(r1));
    assert_ne!(
        rig.maps
            .stats(StatsMap::Service, old.sid(&tcp(WEB)))
            .unwrap()[0],
        Stats::default()
    );
    let g_real = old.bid(&g7, "10.0.1.2:80");
    assert_eq!(rig.bid(&g7, "10.0.1.2:80"), g_real);
    // What it does not name is gone: services unpublished, their slots and the removed
    // servers' slots free (generation 0).
    for gone in [API, DNS, "198.51.100.1:80"] {
        assert!(
            !rig.maps.services.contains_key(&to_bpf_key(&vaddr(gone))),
            "{gone}"
        );
    }
    for (key, addr) in [
        (tcp(API), "10.0.0.3:443"),
        (tcp(API), "10.0.0.4:443"),
        (tcp(DNS), "10.0.0.5:53"),
        (tcp(WEB), "10.0.0.2:80"),
        (g7, "10.0.1.1:80"),
    ] {
        let id = old.bid(&key, addr);
        let now = rig.maps.backend(id).unwrap();
        assert!(
            now.generation == 0 || now.generation > max_generation,
            "{addr}"
        );
    }
    // New servers get generations above every adopted one.
    assert!(rig.generation(rig.bid(&tcp(WEB), "10.0.0.9:80")) > max_generation);
    assert!(rig.generation(rig.bid(&tcp("203.0.113.30:80"), "10.0.3.1:80")) > max_generation);
    // The adopted regions are reused only after the next sync.
    rig.sync(&first).unwrap();
    rig.assert_consistent(&first);
}

#[test]
fn a_failed_first_sync_after_adoption_leaves_the_adopted_maps() {
    let old = previous_xvsd();
    let first = config(vec![service(
        tcp(WEB),
        Scheduler::Rr,
        &[("10.0.0.1:80", 1), ("10.0.0.9:80", 1)],
    )]);
    let n = adopt(&old).plan(&first).unwrap().ops.len();
    for fail in 0..n {
        let mut rig = adopt(&old);
        rig.maps.fail_write(fail);
        assert!(rig.sync(&first).is_err());
        assert_eq!(
            rig.maps.contents(),
            old.maps.contents(),
            "failing write {fail}"
        );
        assert!(rig.placement.adoption_pending());
        rig.sync(&first).unwrap();
        rig.assert_consistent(&first);
        assert_eq!(rig.sid(&tcp(WEB)), old.sid(&tcp(WEB)));
    }
}

#[test]
fn adoption_refuses_overlapping_tables() {
    let mut old = previous_xvsd();
    let web = to_bpf_key(&vaddr(WEB));
    let api = old.maps.services[&to_bpf_key(&vaddr(API))];
    let v = old.maps.services.get_mut(&web).unwrap();
    v.table_off = api.table_off;
    let pinned = read_pinned(&old.maps, SCHED_SLOTS).unwrap();
    assert!(matches!(
        inherit::inherit(&pinned, SCHED_SLOTS),
        Err(PlanError::Overlap { .. })
    ));
}

#[test]
fn zeroing_counters_is_all_or_nothing() {
    let mut rig = Rig::new();
    rig.sync(&mixed()).unwrap();
    count_traffic(&mut rig);
    let before = rig.maps.contents();
    let ops = plan::plan_zero(&rig.placement, Some(&tcp(WEB)));
    assert_eq!(ops.len(), 3);
    rig.maps.fail_write(2);
    assert!(exec::execute(&mut rig.maps, &ops).is_err());
    assert_eq!(rig.maps.contents(), before);
    let all = plan::plan_zero(&rig.placement, None);
    exec::execute(&mut rig.maps, &all).unwrap();
    assert!(rig.maps.stats.is_empty());
}

/// A small deterministic generator (no dependency needed for a seeded walk).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn random_config(rng: &mut Lcg) -> Config {
    let schedulers = [
        Scheduler::Rr,
        Scheduler::Wrr,
        Scheduler::Mh,
        Scheduler::Sh,
        Scheduler::Lc,
        Scheduler::Lblcr,
    ];
    let mut services = Vec::new();
    let mut taken = BTreeSet::new();
    for i in 0..8u32 {
        if rng.next(3) == 0 {
            continue;
        }
        let mut reals = Vec::new();
        for r in 0..6u32 {
            if rng.next(2) != 0 {
                continue;
            }
            let mut real = real(&format!("10.1.{i}.{r}:80"), rng.next(4) as u32);
            if rng.next(5) == 0 {
                real.forward = ForwardMethod::Tunnel(crate::model::Tunnel {
                    kind: crate::model::TunnelKind::Ipip,
                    port: 0,
                    csum: false,
                });
            }
            reals.push(real);
        }
        let sched = schedulers[rng.next(schedulers.len() as u64) as usize];
        let mut s = if i < 5 {
            service(tcp(&format!("203.0.113.{i}:80")), sched, &[])
        } else {
            // Groups share a pool of matches, each taken at most once.
            let matches: Vec<&str> = ["198.51.100.1:80", "198.51.100.2:80", "198.51.100.3:80"]
                .into_iter()
                .filter(|m| rng.next(2) == 0 && taken.insert(*m))
                .collect();
            Service {
                scheduler: sched,
                ..group(i, &matches, &[])
            }
        };
        s.reals = reals;
        if rng.next(4) == 0 {
            s.persistence = Some(Persistence {
                timeout: 60,
                prefix: 32,
            });
        }
        services.push(s);
    }
    if rng.next(2) == 0 {
        services.reverse();
    }
    config(services)
}

#[test]
fn random_sequences_keep_placement_and_maps_consistent() {
    let mut rng = Lcg(0x5eed);
    let mut rig = Rig::with_slots(1 << 12);
    let mut current = Config::default();
    for step in 0..100 {
        let next = random_config(&mut rng);
        // Some servers unresolved for a while, connection counts moving.
        if rng.next(4) == 0 {
            rig.macs.clear();
        }
        rig.counts = (0..40)
            .map(|id| {
                (
                    id,
                    ConnCounts {
                        active: rng.next(10),
                        inactive: rng.next(3),
                        persistent: 0,
                    },
                )
            })
            .collect();
        if rng.next(3) == 0 {
            let before = rig.snapshot();
            rig.resolve(&next);
            let n = rig.plan(&next).unwrap().ops.len() as u64;
            if n > 0 {
                rig.maps.fail_write(rng.next(n) as usize);
                assert!(rig.sync(&next).is_err(), "step {step}");
                rig.maps.fail_at.clear();
                assert_eq!(rig.snapshot().1, before.1, "step {step}");
                assert_eq!(rig.snapshot().0, before.0, "step {step}");
                rig.assert_consistent(&current);
            }
        }
        rig.sync(&next).unwrap();
        rig.assert_consistent(&next);
        if rng.next(2) == 0 {
            rig.recompute(&next).unwrap();
            rig.assert_consistent(&next);
        }
        current = next;
    }
}

#[test]
fn connections_are_counted_over_the_slots_the_take_over_keeps() {
    let old = previous_xvsd();
    let rig = adopt(&old);
    let first = config(vec![service(
        tcp(WEB),
        Scheduler::Lc,
        &[("10.0.0.1:80", 1), ("10.0.0.9:80", 1)],
    )]);
    // Before the take-over nothing is placed; after it, the kept service's slots count (the
    // server it lost is freed later in the plan), not those of the dropped services.
    assert!(rig.placement.generations().is_empty());
    let staged = plan::staged(&rig.placement, &first);
    let (r1, r2) = (
        old.bid(&tcp(WEB), "10.0.0.1:80"),
        old.bid(&tcp(WEB), "10.0.0.2:80"),
    );
    assert_eq!(
        staged.generations(),
        HashMap::from([(r1, old.generation(r1)), (r2, old.generation(r2))])
    );
    // Staging plans nothing: the placement it started from is still pending.
    assert!(rig.placement.adoption_pending());
}

/// The kernel's maps behind the same trait, under `cargo xtask test` (root; it sets
/// XVS_BIN_DIR). A plain `cargo test` loads nothing and the test passes without checking.
#[test]
fn kernel_maps_roll_back_as_memory_maps_do() {
    if !nix::unistd::geteuid().is_root() || std::env::var_os("XVS_BIN_DIR").is_none() {
        return;
    }
    let mut dp = super::Dataplane::load_with(super::Sizes {
        conns: 1024,
        sched_slots: 4096,
        nat_replies: None,
    })
    .expect("load the director");
    let maps = &mut dp.maps;
    let cpus = maps.cpus();
    let stats = |id: u32, cpu: usize| Stats {
        conns: id as u64,
        packets: cpu as u64,
        bytes: 1000 + id as u64,
        out_packets: 2 * cpu as u64,
        out_bytes: 500 + id as u64,
    };
    for id in 0..40 {
        let v: Vec<Stats> = (0..cpus).map(|c| stats(id, c)).collect();
        maps.set_stats(StatsMap::Backend, id, &v).unwrap();
    }
    // A bulk read sees what reads one by one see.
    let bulk = maps.stats_run(StatsMap::Backend, 3, 30).unwrap();
    let single: Vec<Stats> = (3..33)
        .flat_map(|id| maps.stats(StatsMap::Backend, id).unwrap())
        .collect();
    assert_eq!(bulk, single);
    assert_eq!(bulk[cpus - 1], stats(3, cpus - 1));
    assert_eq!(bulk[cpus], stats(4, 0));
    // A plan whose last write fails (past the end of SCHED_SLOTS) is undone.
    let mut rig = Rig::with_slots(4096);
    let c = many(40, 1);
    rig.resolve(&c);
    let plan = rig.plan(&c).unwrap();
    let mut ops = plan.ops.clone();
    let read = |m: &dyn Maps| {
        let mut services = m.services().unwrap();
        services.sort_by_key(|(k, _)| (k.addr, k.port_be));
        (
            services,
            m.backends().unwrap(),
            m.filter_words().unwrap(),
            (0..40)
                .map(|id| m.stats(StatsMap::Backend, id).unwrap())
                .collect::<Vec<_>>(),
        )
    };
    // SCHED_SLOTS as the kernel holds it, and the controller's copy of it agreeing.
    let slots = |m: &super::kernel::KernelMaps| {
        let kernel = super::batch::read_array(&m.slots, 0, 4096).unwrap();
        assert_eq!(kernel, m.slots_copy);
        kernel
    };
    let before = (read(&*maps), slots(maps));
    ops.push(MapOp::SetSlots {
        off: 4095,
        ids: vec![1, 2],
    });
    assert!(matches!(
        exec::execute(&mut *maps, &ops),
        Err(ExecError::RolledBack { .. })
    ));
    assert_eq!((read(&*maps), slots(maps)), before);
    // Applied for real, then a second plan (read ahead: 40 tables, keys and cursors) undone.
    exec::commit(&mut rig.placement, &mut *maps, plan).unwrap();
    let c2 = many(40, 2);
    rig.resolve(&c2);
    let mut ops = rig.plan(&c2).unwrap().ops;
    let before = (read(&*maps), slots(maps));
    assert_ne!(before.1, vec![0; 4096]);
    ops.push(MapOp::SetSlots {
        off: 4095,
        ids: vec![1, 2],
    });
    assert!(exec::execute(&mut *maps, &ops).is_err());
    assert_eq!((read(&*maps), slots(maps)), before);
}

#[test]
fn nat_real_servers_get_a_nat_backend_and_a_reply_filter_bit() {
    use lb_common::{filter::filter_bit, fwd, nat_reply_filter_proto, FAMILY_V4};
    let nat = |addr: &str| RealServer {
        forward: ForwardMethod::Nat,
        ..real(addr, 1)
    };
    let mut svc = service(tcp(WEB), Scheduler::Rr, &[("10.0.0.1:80", 1)]);
    svc.reals.push(nat("10.0.0.2:8080"));
    let cfg = config(vec![svc]);
    assert!(plan::uses_nat(&cfg));
    assert!(!plan::uses_nat(&mixed()));
    let mut rig = Rig::new();
    rig.sync(&cfg).unwrap();
    let id = rig
        .placement
        .backend_id(&tcp(WEB), "10.0.0.2:8080".parse().unwrap())
        .unwrap();
    let b = rig.maps.backend(id).unwrap();
    // Its own port, its family, NAT; no MAC needed (the data plane routes by the FIB).
    assert_eq!(
        (b.fwd, u16::from_be(b.port_be), b.family, b.mac),
        (fwd::NAT, 8080, FAMILY_V4, [0; 6])
    );
    // Replies from the NAT server's address and port are looked for; the DR server's are not.
    let bit = |addr: [u8; 4], port: u16| {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&addr);
        let bit = filter_bit(
            &a,
            port.to_be(),
            nat_reply_filter_proto(lb_common::PROTO_TCP),
        );
        rig.maps.filter[(bit >> 6) as usize] & (1 << (bit & 63)) != 0
    };
    assert!(bit([10, 0, 0, 2], 8080));
    assert!(!bit([10, 0, 0, 1], 80));
}

#[test]
fn local_addresses_keep_their_slots_and_follow_the_service() {
    use crate::model::{LocalAddr, PortRange};
    use lb_common::{filter::filter_bit, fwd, laddr_key, nat_reply_filter_proto, FAMILY_V4};
    let laddr = |a: &str, lo: u16, hi: u16| LocalAddr {
        addr: a.parse().unwrap(),
        ports: PortRange { lo, hi },
        iface: None,
    };
    let mut svc = service(tcp(WEB), Scheduler::Rr, &[]);
    svc.laddrs = vec![
        laddr("10.0.9.1", 1024, 65535),
        laddr("10.0.9.2", 2000, 2003),
        laddr("10.0.9.3", 1024, 65535),
    ];
    svc.reals.push(RealServer {
        forward: ForwardMethod::FullNat,
        ..real("10.0.0.2:8080", 1)
    });
    let mut rig = Rig::new();
    let cfg = config(vec![svc.clone()]);
    assert!(plan::uses_nat(&cfg));
    rig.sync(&cfg).unwrap();
    let id = rig.sid(&tcp(WEB));
    let at = |rig: &Rig, slot: u8| rig.maps.laddrs.get(&laddr_key(id, slot)).copied();
    let value = |rig: &Rig| rig.maps.services[&to_bpf_key(&vaddr(WEB))];
    assert_eq!(value(&rig).laddrs, 3);
    let second = at(&rig, 1).unwrap();
    assert_eq!(
        (
            second.addr[..4].to_vec(),
            second.port_lo,
            second.port_count,
            second.family
        ),
        (vec![10, 0, 9, 2], 2000, 4, FAMILY_V4)
    );
    // A FULLNAT backend, and its replies are looked for as NAT's are.
    let b = rig
        .maps
        .backend(rig.bid(&tcp(WEB), "10.0.0.2:8080"))
        .unwrap();
    assert_eq!(b.fwd, fwd::FULLNAT);
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&[10, 0, 0, 2]);
    let bit = filter_bit(
        &a,
        8080u16.to_be(),
        nat_reply_filter_proto(lb_common::PROTO_TCP),
    );
    assert!(rig.maps.filter[(bit >> 6) as usize] & (1 << (bit & 63)) != 0);
    rig.assert_consistent(&cfg);

    // The first address goes: the others keep their slots (connections name them by slot),
    // and a new one fills the hole.
    svc.laddrs.remove(0);
    let cfg = config(vec![svc.clone()]);
    rig.sync(&cfg).unwrap();
    assert_eq!(at(&rig, 0), None);
    assert_eq!(at(&rig, 1), Some(second));
    assert_eq!(value(&rig).laddrs, 3);
    svc.laddrs.push(laddr("10.0.9.4", 1024, 65535));
    let cfg = config(vec![svc.clone()]);
    rig.sync(&cfg).unwrap();
    assert_eq!(at(&rig, 0).unwrap().addr[..4], [10, 0, 9, 4]);
    assert_eq!(at(&rig, 1), Some(second));
    // A changed port range is rewritten in place.
    svc.laddrs[0].ports = PortRange { lo: 3000, hi: 3999 };
    rig.sync(&config(vec![svc.clone()])).unwrap();
    assert_eq!(at(&rig, 1).unwrap().port_lo, 3000);

    // A new xvsd adopts the slots as they are: the same configuration writes nothing.
    let pinned = read_pinned(&rig.maps, SCHED_SLOTS).unwrap();
    let adopted = inherit::inherit(&pinned, SCHED_SLOTS).unwrap();
    let mut next = Rig {
        placement: adopted.placement,
        maps: rig.maps.clone(),
        macs: rig.placement.inherited_macs(),
        counts: HashMap::new(),
        params: rig.params,
    };
    next.macs = rig.macs.clone();
    let cfg = config(vec![svc.clone()]);
    let plan = next.plan(&cfg).unwrap();
    assert!(
        !plan
            .ops
            .iter()
            .any(|op| matches!(op, MapOp::SetLaddr { .. })),
        "{:?}",
        plan.ops
    );
    next.sync(&cfg).unwrap();
    assert_eq!(next.maps.laddrs, rig.maps.laddrs);

    // The service goes, and its local addresses with it.
    next.sync(&Config::default()).unwrap();
    assert!(next.maps.laddrs.is_empty());
}
