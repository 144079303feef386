//! Live connection counts without walking the connection table every second: the bookkeeping
//! of xvsd's incremental sweep, pure (the executor is `Dataplane::sweep_step`).
//!
//! The data plane counts ActiveConn / InActConn per backend slot as entries change (CONN_COUNTS,
//! see lb-ebpf's conntrack): what it cannot see is an entry that expires without another packet,
//! and one the kernel's LRU evicts when the table is full. The sweep handles both:
//!
//! - **Expiry.** Each recomputation period (1 s) it reads the next slice of CONNS with batch
//!   lookups, resuming from the previous slice's token, [`SWEEP_RATE`] entries a second (at
//!   least one batch). Entries that are expired (or whose slot changed hands) are removed at
//!   once, after each batch read, and a removal this process made is subtracted from its slot's
//!   counts in CONN_ADJUST (xvsd's own pinned ledger: the data plane never writes it, so a
//!   restarted xvsd goes on from it; the per-CPU counters cannot take a subtraction from user
//!   space without racing the CPUs that add to them). A full cycle over a table of C entries
//!   takes `C / SWEEP_RATE` seconds (4M entries: 42 s; the 1M default: 11 s; a table smaller
//!   than the rate: 1 s). A live entry the sweep reads that will expire before its next visit
//!   if no packet comes (a FIN_WAIT entry, 120 s, at most 120 s before it expires, an idle
//!   established one near its 900 s) goes into the expiry [`Calendar`]: when it is due, xvsd
//!   reads it again (one lookup) and removes it if no packet touched it, so it leaves the counts
//!   within a step (1 s) of its timeout; the cost follows the rate of silent expiries, not the
//!   table's size. What expires before the sweep ever saw it live (an entry made and left within
//!   less than a cycle of its timeout: CLOSE after a RST, 10 s) stays counted until the sweep
//!   reaches it: at most one cycle. Entries that a packet finds dead are subtracted by the data
//!   plane at once.
//! - **Races.** Whoever removes an entry (the data plane finding it dead, or the sweep) is told
//!   so by the kernel, and only that one subtracts it: nothing is subtracted twice. A packet can
//!   revive an expired entry between the sweep's read and its delete (the data plane removes the
//!   dead entry and records the flow afresh under the same key); the sweep then deletes the new
//!   entry. The window is one batch's read and judgement (4096 entries, about a millisecond),
//!   and it takes a client reusing the tuple of an expired connection in that millisecond; the
//!   connection's next packet is then scheduled like a SYN (as after any lost entry), and the
//!   counts are off by one until the cycle's re-baselining. The calendar's read-again and delete
//!   have the same window (a few microseconds per due entry, one batch delete per step).
//! - **Drift.** An LRU eviction (or such a race) leaves a count that no entry stands for. At
//!   the end of each cycle the counts are compared, slot by slot and class by class, with what
//!   the cycle saw ([`drift`]), and a difference beyond what the traffic during the cycle can
//!   explain is corrected in CONN_ADJUST: drift stays within about two cycles' evictions plus
//!   the tolerance (0.5% of the count, at least 2). A table that holds no more live entries
//!   than it has room for evicts only expired ones the sweep has not reached yet.
//! - **What the old walk also did**, now per cycle: NAT and FULLNAT ways back (NAT_REPLIES) whose
//!   connection the cycle did not find live are checked one by one and removed when it is gone
//!   (a FULLNAT port is free again up to one cycle after its connection ended); persistence
//!   templates still controlling a connection the cycle saw are kept alive, and live templates
//!   are counted per real server (PersistConn) — a service whose persistence timeout is shorter
//!   than a cycle can lose a template while its connections live.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use lb_common::{
    mask_addr, ConnClass, ConnCounters, ConnEntry, ConnState, DataplaneConfig, FlowKey, PersistKey,
};

use super::{plan::MapOp, timeout_of};

/// Connection-table entries the sweep reads per second, and so a cycle of capacity / rate
/// seconds. Reading costs about 400 ns an entry on a full 4M-entry table, nearly all of it the
/// kernel's bucket walk (BPF_MAP_LOOKUP_BATCH touching every bucket and entry: cache misses):
/// about 40 ms of a core each second (BENCHMARKS.md), where the whole walk cost 1.3 s.
pub const SWEEP_RATE: u64 = 100_000;

/// Entries one batch read returns (and so the most a revival race can span).
pub const SWEEP_BATCH: u32 = 4096;

/// Entries a step reads after `elapsed` since the last one: the rate's share, at least one
/// batch, at most one whole table.
pub fn budget(elapsed: Duration, capacity: u32) -> usize {
    let due = (SWEEP_RATE as f64 * elapsed.as_secs_f64()) as u64;
    due.clamp(SWEEP_BATCH as u64, capacity.max(SWEEP_BATCH) as u64) as usize
}

/// How long a full cycle over a table of `capacity` entries takes at one step per second.
pub fn cycle_secs(capacity: u32) -> u64 {
    (capacity as u64).div_ceil(SWEEP_RATE).max(1)
}

/// What the sweep makes of one connection-table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judged {
    /// Live: counted in `class` of `slot`.
    Live {
        /// Backend slot.
        slot: u32,
        /// Its class.
        class: ConnClass,
    },
    /// Expired while its slot still holds its real server: removed, and subtracted from
    /// `class` of `slot` when the removal is this sweep's.
    Expired {
        /// Backend slot.
        slot: u32,
        /// Its class when read.
        class: ConnClass,
    },
    /// Its slot was emptied or handed to another real server (the slot's counts were written
    /// off then): removed, nothing subtracted.
    Orphan,
}

/// Judges entry `e` at `now` against the slots' current generations (0: free).
pub fn judge(e: &ConnEntry, now: u64, cfg: &DataplaneConfig, generations: &[u32]) -> Judged {
    let current = generations.get(e.backend as usize).copied().unwrap_or(0);
    if current == 0 || current != e.generation {
        return Judged::Orphan;
    }
    let (slot, class) = (e.backend, ConnClass::of_state(e.state));
    if now.saturating_sub(e.last_seen_ns) > timeout_of(cfg, ConnState::from_u8(e.state)) {
        Judged::Expired { slot, class }
    } else {
        Judged::Live { slot, class }
    }
}

/// Signed (active, inactive) of a wrapping ledger.
pub fn signed(c: ConnCounters) -> [i64; 2] {
    [c.active as i64, c.inactive as i64]
}

/// One slot's class over a sweep cycle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassCycle {
    /// The count when the cycle began.
    pub start: i64,
    /// The count when it ended.
    pub end: i64,
    /// Live entries the cycle saw.
    pub seen: i64,
    /// Entries the cycle removed and subtracted.
    pub swept: i64,
}

/// The over-count of one slot's class at the end of a cycle, when it is larger than the
/// traffic during the cycle explains; None within tolerance.
///
/// Each bucket is read once: what changed in a bucket before its read is in `seen`, what
/// changed after is not, and the sweep's own removals happen at the read. So
/// `end = seen + (changes after the reads) + drift`, and the changes after the reads are, for
/// traffic spread over the cycle, half the net change other than the sweep's:
/// `(end - start + swept) / 2`. The tolerance is that estimate's own error — the net change
/// again (traffic need not be spread evenly) — plus 0.5% of the count (at least 2) for the
/// randomness of which bucket a change falls in. Silent evictions during the cycle look like
/// traffic too (half of them escape this cycle's estimate), so a steady eviction rate is
/// corrected with a lag: the drift left stays within about two cycles' evictions.
pub fn drift(c: ClassCycle) -> Option<i64> {
    let traffic = c.end - c.start + c.swept;
    let d = c.end - c.seen - traffic / 2;
    let tolerance = ((c.start + c.end) / 400).max(2) + traffic.abs() / 2;
    (d.abs() > tolerance).then_some(d)
}

/// What a cycle has gathered so far.
#[derive(Debug, Default)]
pub struct Cycle {
    /// The counts per slot when it began (signed active, inactive).
    pub start: HashMap<u32, [i64; 2]>,
    /// Generations when it began: slots that changed hands since are not re-baselined.
    pub generations: Vec<u32>,
    /// Live entries seen, per slot.
    pub seen: HashMap<u32, [i64; 2]>,
    /// Entries removed and subtracted, per slot.
    pub swept: HashMap<u32, [i64; 2]>,
    /// Live NAT and FULLNAT connections seen: key -> (slot, local port).
    pub nat_live: HashMap<FlowKey, (u32, u16)>,
    /// Persistence templates the live connections seen still use: key -> newest packet.
    pub in_use: HashMap<PersistKey, u64>,
    /// Entries read.
    pub read: u64,
}

/// What the sweep must know of the placement to judge entries (dense, by slot and service id).
pub struct Live<'a> {
    /// Generation of each backend slot (0: free).
    pub generations: &'a [u32],
    /// Persistent services: id -> (prefix, timeout ns).
    pub persistent: &'a [Option<(u8, u64)>],
    /// NAT and FULLNAT backend slots (empty when there is none).
    pub nat: &'a [bool],
}

fn index(class: ConnClass) -> usize {
    match class {
        ConnClass::Active => 0,
        ConnClass::Inactive => 1,
    }
}

impl Cycle {
    /// A cycle starting from these counts and generations.
    pub fn new(start: HashMap<u32, [i64; 2]>, generations: Vec<u32>) -> Cycle {
        Cycle {
            start,
            generations,
            ..Cycle::default()
        }
    }

    /// Notes a live entry: counted, and what the NAT and template passes need of it.
    pub fn live(&mut self, key: &FlowKey, e: &ConnEntry, class: ConnClass, live: &Live) {
        self.seen.entry(e.backend).or_default()[index(class)] += 1;
        if live.nat.get(e.backend as usize) == Some(&true) {
            self.nat_live.insert(*key, (e.backend, e.lport_be));
        }
        if let Some(Some((prefix, _))) = live.persistent.get(e.service as usize) {
            let pk = PersistKey {
                client: mask_addr(&key.src, *prefix),
                service: e.service,
                family: key.family,
                _pad: [0; 3],
            };
            let t = self.in_use.entry(pk).or_default();
            *t = (*t).max(e.last_seen_ns);
        }
    }

    /// Notes an entry this sweep removed and subtracted.
    pub fn swept(&mut self, slot: u32, class: ConnClass) {
        self.swept.entry(slot).or_default()[index(class)] += 1;
    }

    /// The corrections to add to CONN_ADJUST at the end of the cycle, given the counts now and
    /// the generations now: per slot whose generation did not change, minus each class's drift.
    pub fn corrections(
        &self,
        end: &HashMap<u32, [i64; 2]>,
        generations: &[u32],
    ) -> Vec<(u32, ConnCounters)> {
        let mut out = Vec::new();
        let mut slots: Vec<u32> = end
            .keys()
            .chain(self.seen.keys())
            .chain(self.start.keys())
            .copied()
            .collect();
        slots.sort_unstable();
        slots.dedup();
        for slot in slots {
            let g = generations.get(slot as usize).copied().unwrap_or(0);
            if g == 0 || self.generations.get(slot as usize).copied().unwrap_or(0) != g {
                continue;
            }
            let get = |m: &HashMap<u32, [i64; 2]>, i: usize| m.get(&slot).map_or(0, |v| v[i]);
            let mut fix = [0i64; 2];
            for (i, f) in fix.iter_mut().enumerate() {
                if let Some(d) = drift(ClassCycle {
                    start: get(&self.start, i),
                    end: get(end, i),
                    seen: get(&self.seen, i),
                    swept: get(&self.swept, i),
                }) {
                    *f = -d;
                }
            }
            if fix != [0, 0] {
                out.push((
                    slot,
                    ConnCounters {
                        active: fix[0] as u64,
                        inactive: fix[1] as u64,
                    },
                ));
            }
        }
        out
    }
}

/// Most entries the expiry calendar watches (about 64 bytes each): beyond, an entry that expires
/// silently waits for the sweep's next visit.
pub const CALENDAR_MAX: usize = 1 << 20;

/// When live entry `e` expires if no packet comes, if that is before `horizon` (the sweep's next
/// visit): the expiry calendar watches it then.
pub fn expires_before(e: &ConnEntry, cfg: &DataplaneConfig, horizon: u64) -> Option<u64> {
    let at = e
        .last_seen_ns
        .saturating_add(timeout_of(cfg, ConnState::from_u8(e.state)))
        .saturating_add(1);
    (at < horizon).then_some(at)
}

/// Whether a watched entry, read again as `now_read`, is the entry the sweep saw and is expired
/// now: no packet touched it since (same clock and state), same real server, past its timeout.
/// Anything else (a packet came, the flow was rescheduled) is left to the data plane and the
/// sweep's next visit.
pub fn still_expired(
    seen: &ConnEntry,
    now_read: &ConnEntry,
    now: u64,
    cfg: &DataplaneConfig,
    generations: &[u32],
) -> bool {
    now_read.last_seen_ns == seen.last_seen_ns
        && now_read.state == seen.state
        && now_read.backend == seen.backend
        && now_read.generation == seen.generation
        && matches!(
            judge(now_read, now, cfg, generations),
            Judged::Expired { .. }
        )
}

/// The expiry calendar: live entries the sweep saw that will expire, if no packet comes, before
/// the sweep comes back to them, by expiry time. Each step xvsd reads the due ones again (one
/// lookup each: the cost follows the rate of silent expiries, not the table's size) and removes
/// those that did expire, so their counts drop within a step of their timeout rather than up to
/// a cycle later.
#[derive(Debug, Default)]
pub struct Calendar {
    due: BTreeMap<u64, Vec<(FlowKey, ConnEntry)>>,
    len: usize,
}

impl Calendar {
    /// Watches `key` (as `entry` was read) until `at`; false when full.
    pub fn watch(&mut self, key: FlowKey, entry: ConnEntry, at: u64) -> bool {
        if self.len >= CALENDAR_MAX {
            return false;
        }
        self.due.entry(at).or_default().push((key, entry));
        self.len += 1;
        true
    }

    /// Takes the entries due at `now`.
    pub fn take_due(&mut self, now: u64) -> Vec<(FlowKey, ConnEntry)> {
        let later = self.due.split_off(&now.saturating_add(1));
        let due: Vec<_> = std::mem::replace(&mut self.due, later)
            .into_values()
            .flatten()
            .collect();
        self.len -= due.len();
        due
    }

    /// Entries watched.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The backend slots a plan hands to a real server under a new generation: their counts (what
/// the slot's previous real server left) are written off once the plan is applied.
pub fn handed_over(ops: &[MapOp]) -> Vec<u32> {
    ops.iter()
        .filter_map(|op| match op {
            MapOp::SetBackend { id, backend, was }
                if backend.generation != 0 && backend.generation != was.generation =>
            {
                Some(*id)
            }
            _ => None,
        })
        .collect()
}

/// Counts a synced connection written over `old` (what the table held for its key, if
/// anything) into `fixes` (CONN_ADJUST's additions by slot): the new entry in its slot and
/// class, the old one out of its own when it was still counted (its slot's generation is
/// current: a handed-over slot's entries were written off already).
pub fn count_install(
    old: Option<&ConnEntry>,
    new: &ConnEntry,
    generations: &HashMap<u32, u32>,
    fixes: &mut HashMap<u32, ConnCounters>,
) {
    if let Some(o) = old.filter(|o| generations.get(&o.backend) == Some(&o.generation)) {
        fixes
            .entry(o.backend)
            .or_default()
            .add(ConnClass::of_state(o.state), u64::MAX);
    }
    fixes
        .entry(new.backend)
        .or_default()
        .add(ConnClass::of_state(new.state), 1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::ConnState;

    fn cfg() -> DataplaneConfig {
        DataplaneConfig::default()
    }

    fn entry(slot: u32, generation: u32, state: ConnState, last_seen_ns: u64) -> ConnEntry {
        ConnEntry {
            backend: slot,
            generation,
            service: 0,
            state: state as u8,
            local: 0,
            lport_be: 0,
            last_seen_ns,
        }
    }

    #[test]
    fn entries_are_live_expired_or_orphans() {
        let c = cfg();
        let gens = [0, 7, 0];
        let now = 10 * c.tcp_timeout_ns;
        assert_eq!(
            judge(
                &entry(1, 7, ConnState::Established, now - 1),
                now,
                &c,
                &gens
            ),
            Judged::Live {
                slot: 1,
                class: ConnClass::Active
            }
        );
        // UDP counts as inactive, as the full walk (and IPVS) count it.
        assert_eq!(
            judge(&entry(1, 7, ConnState::Udp, now), now, &c, &gens),
            Judged::Live {
                slot: 1,
                class: ConnClass::Inactive
            }
        );
        let old = now - c.tcp_fin_timeout_ns - 1;
        assert_eq!(
            judge(&entry(1, 7, ConnState::FinWait, old), now, &c, &gens),
            Judged::Expired {
                slot: 1,
                class: ConnClass::Inactive
            }
        );
        // Another generation, a free slot, a slot out of range: written off, not subtracted.
        for e in [
            entry(1, 6, ConnState::Established, now),
            entry(2, 1, ConnState::Established, now),
            entry(9, 1, ConnState::Established, now),
        ] {
            assert_eq!(judge(&e, now, &c, &gens), Judged::Orphan, "{e:?}");
        }
    }

    #[test]
    fn a_step_reads_the_rates_share_and_a_cycle_covers_the_table() {
        assert_eq!(budget(Duration::from_secs(1), 4 << 20), SWEEP_RATE as usize);
        assert_eq!(
            budget(Duration::from_millis(1), 4 << 20),
            SWEEP_BATCH as usize
        );
        assert_eq!(budget(Duration::from_secs(3600), 1 << 20), 1 << 20);
        assert_eq!(cycle_secs(4 << 20), 42);
        assert_eq!(cycle_secs(1 << 20), 11);
        assert_eq!(cycle_secs(1 << 10), 1);
    }

    #[test]
    fn drift_is_what_traffic_does_not_explain() {
        // A still table: the count must equal what the cycle saw.
        let still = ClassCycle {
            start: 1000,
            end: 1000,
            seen: 1000,
            swept: 0,
        };
        assert_eq!(drift(still), None);
        // 300 entries evicted by the LRU while counted: 300 over.
        let evicted = ClassCycle { seen: 700, ..still };
        assert_eq!(drift(evicted), Some(300));
        // Restarted on maps filled without counting (or counts lost): under by the table.
        assert_eq!(
            drift(ClassCycle {
                start: 0,
                end: 0,
                seen: 500,
                swept: 0
            }),
            Some(-500)
        );
        // Growth during the cycle, half of it after the reads: explained, nothing corrected.
        let growth = ClassCycle {
            start: 1000,
            end: 2000,
            seen: 1500,
            swept: 0,
        };
        assert_eq!(drift(growth), None);
        // The sweep removed 200 expired entries at its reads: the count fell by them, and the
        // cycle did not see them.
        let swept = ClassCycle {
            start: 1000,
            end: 800,
            seen: 800,
            swept: 200,
        };
        assert_eq!(drift(swept), None);
        // Noise within 0.5% is left alone.
        assert_eq!(
            drift(ClassCycle {
                start: 100_000,
                end: 100_000,
                seen: 99_800,
                swept: 0
            }),
            None
        );
    }

    /// A table in buckets, read in order by cycles while traffic adds, ends and (LRU) evicts
    /// entries: the counts kept as the data plane and the sweep keep them, re-baselined at
    /// each cycle's end, stay within about two cycles' evictions of the truth however long
    /// evictions go on (without re-baselining the error grows by a cycle's evictions each).
    #[test]
    fn re_baselining_bounds_eviction_drift() {
        const BUCKETS: usize = 1000;
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        // Each bucket: live entries of slot 1, class inactive (one class is enough here).
        let mut table = vec![0i64; BUCKETS];
        let mut counted = 0i64; // data plane + adjustment
        let gens = vec![0, 1];
        for _ in 0..10_000 {
            let b = next() as usize % BUCKETS;
            table[b] += 1;
            counted += 1;
        }
        for cycle in 0..8 {
            let mut c = Cycle::new(HashMap::from([(1, [0, counted])]), gens.clone());
            for b in 0..BUCKETS {
                // Traffic between two bucket reads: 3 new, 2 ended (seen by the data plane),
                // 1 evicted silently (counted still).
                for _ in 0..3 {
                    table[next() as usize % BUCKETS] += 1;
                    counted += 1;
                }
                for evict in [false, false, true] {
                    let v = next() as usize % BUCKETS;
                    if table[v] > 0 {
                        table[v] -= 1;
                        counted -= !evict as i64;
                    }
                }
                c.seen.entry(1).or_default()[1] += table[b];
            }
            let truth: i64 = table.iter().sum();
            let before = counted - truth;
            for (slot, fix) in c.corrections(&HashMap::from([(1, [0, counted])]), &gens) {
                assert_eq!(slot, 1);
                counted += fix.inactive as i64;
            }
            let after = counted - truth;
            // About 1000 evictions a cycle.
            assert!(before >= 800, "cycle {cycle}: {before}");
            assert!(
                after.abs() <= 2000 + truth / 200,
                "cycle {cycle}: off by {after} of {truth} (was {before})"
            );
        }
    }

    #[test]
    fn the_calendar_watches_entries_expiring_before_the_next_visit() {
        let c = cfg();
        let now = 10 * c.tcp_timeout_ns;
        let fin = entry(1, 7, ConnState::FinWait, now);
        let horizon = now + 60_000_000_000;
        // FIN_WAIT (120 s) expires after a 60 s horizon: not watched; with 200 s it is.
        assert_eq!(expires_before(&fin, &c, horizon), None);
        let at = now + c.tcp_fin_timeout_ns + 1;
        assert_eq!(expires_before(&fin, &c, now + 200_000_000_000), Some(at));
        let mut cal = Calendar::default();
        let k = |n: u8| FlowKey {
            src: [n; 16],
            ..FlowKey::default()
        };
        assert!(cal.watch(k(1), fin, at));
        assert!(cal.watch(k(2), fin, at + 5));
        assert!(cal.take_due(at - 1).is_empty());
        assert_eq!(cal.take_due(at), [(k(1), fin)]);
        assert_eq!(cal.len(), 1);
        assert_eq!(cal.take_due(u64::MAX), [(k(2), fin)]);
        assert!(cal.is_empty());
        // Read again when due: expired only if no packet touched it.
        let gens = [0, 7];
        assert!(still_expired(&fin, &fin, at, &c, &gens));
        let touched = ConnEntry {
            last_seen_ns: now + 1,
            ..fin
        };
        assert!(!still_expired(&fin, &touched, at, &c, &gens));
        let rescheduled = entry(1, 7, ConnState::SynRecv, now);
        assert!(!still_expired(&fin, &rescheduled, at, &c, &gens));
        // Not yet past its timeout (a clock read early): left alone.
        assert!(!still_expired(&fin, &fin, at - 2, &c, &gens));
    }

    #[test]
    fn slots_handed_over_are_those_given_a_new_generation() {
        use lb_common::Backend;
        let b = |generation| Backend {
            generation,
            ..Backend::default()
        };
        let ops = [
            MapOp::SetBackend {
                id: 1,
                backend: b(5),
                was: b(0),
            },
            // A weight or MAC change keeps the generation: the same real server.
            MapOp::SetBackend {
                id: 2,
                backend: b(3),
                was: b(3),
            },
            // Freed: written off when next handed out.
            MapOp::SetBackend {
                id: 3,
                backend: b(0),
                was: b(4),
            },
            MapOp::SetBackend {
                id: 4,
                backend: b(9),
                was: b(4),
            },
            MapOp::ResetCursor { id: 1 },
        ];
        assert_eq!(handed_over(&ops), [1, 4]);
    }

    #[test]
    fn slots_that_changed_hands_are_not_re_baselined() {
        let mut c = Cycle::new(HashMap::from([(1, [10, 10]), (2, [10, 10])]), vec![0, 1, 1]);
        c.seen.insert(1, [0, 0]);
        c.seen.insert(2, [0, 0]);
        let end = HashMap::from([(1, [10, 10]), (2, [10, 10])]);
        let fixes = c.corrections(&end, &[0, 1, 2]);
        assert_eq!(
            fixes,
            [(
                1,
                ConnCounters {
                    active: (-10i64) as u64,
                    inactive: (-10i64) as u64
                }
            )]
        );
    }

    #[test]
    fn a_synced_connection_counts_in_its_class_and_replaces_what_it_overwrote() {
        use std::collections::HashMap;
        let entry = |backend, generation, state: ConnState| ConnEntry {
            backend,
            generation,
            state: state as u8,
            ..ConnEntry::default()
        };
        let generations: HashMap<u32, u32> = [(1, 5), (2, 7)].into();
        let mut fixes = HashMap::new();
        // New: +1 in its class.
        count_install(
            None,
            &entry(1, 5, ConnState::Established),
            &generations,
            &mut fixes,
        );
        assert_eq!(
            fixes[&1],
            ConnCounters {
                active: 1,
                inactive: 0
            }
        );
        // A refresh that moved it from SYN_RECV to ESTABLISHED: inactive -1, active +1.
        let mut fixes = HashMap::new();
        count_install(
            Some(&entry(1, 5, ConnState::SynRecv)),
            &entry(1, 5, ConnState::Established),
            &generations,
            &mut fixes,
        );
        assert_eq!(signed(fixes[&1]), [1, -1]);
        // The same entry again: nothing changes.
        let mut fixes = HashMap::new();
        let e = entry(2, 7, ConnState::Udp);
        count_install(Some(&e), &e, &generations, &mut fixes);
        assert_eq!(signed(fixes[&2]), [0, 0]);
        // Over an entry of a slot handed over since (stale generation): only the new one.
        let mut fixes = HashMap::new();
        count_install(
            Some(&entry(2, 6, ConnState::Established)),
            &entry(1, 5, ConnState::Established),
            &generations,
            &mut fixes,
        );
        assert_eq!(fixes.len(), 1);
        assert_eq!(signed(fixes[&1]), [1, 0]);
    }
}
