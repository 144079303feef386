//! IPVS's schedulers other than rr, wrr and mh, with their kernel semantics
//! (net/netfilter/ipvs/ip_vs_*.c), turned into tables the data plane applies to new flows in
//! O(1).
//!
//! # Load-aware schedulers: lc, wlc, sed, nq, fo, ovf, twos
//!
//! The table is a *plan*: the servers IPVS's own algorithm would pick for the next
//! `Params::plan_len` new connections, starting from the live counts, with the kernel's formulas
//! and tie-breaking (list order, first or last found, as each file has it). The data plane keeps
//! those counts as connections are made, established and end, and xvsd makes the plan afresh
//! from them every 100 ms (no table walk: reading them costs O(servers)), so a plan starts from
//! connections that already ended as ended: a short connection over is one inactive connection
//! (FIN_WAIT, weighing 1), not an active one (256). Within a plan, each pick is counted as one
//! more **active** connection of its server before the next pick. That is deliberate: IPVS counts
//! a fresh connection (SYN_RECV) as inactive, so its very next pick barely notices it (overhead
//! 1 instead of 256), but IPVS sees the connection become established one round trip later,
//! while the plan only sees it at its next refresh. Counting picks as active makes a burst of
//! thousands of new connections within one plan period spread the way the scheduler spreads
//! them in steady state, instead of all landing on the server that was least loaded at the last
//! refresh. What that costs: short connections that come and go within one plan period (100 ms)
//! are counted as lasting until the next refresh (with wlc, a server holding 6 long connections
//! and an idle one, 10 short ones within 100 ms send 2 to the busy server, where IPVS sends none);
//! spread wider than that, they all go to the idle one, as in IPVS (before live counts the plan
//! was made from a walk of the whole table each second, which at millions of entries took longer
//! than that second). If at some step no server can be picked (all quiesced or overloaded), the
//! plan ends there; an empty plan drops new flows.
//!
//! twos draws its random numbers from a deterministic PRNG (xorshift64*, seeded from a constant)
//! kept in [`State`], so tables are reproducible.
//!
//! # Overload flags (`-x` upper, `-y` lower connection threshold)
//!
//! IPVS sets IP_VS_DEST_F_OVERLOAD when a new connection is bound and the server's total
//! (active + inactive) reaches the upper threshold (ip_vs_bind_dest), and clears it when a
//! connection is unbound and the total falls below the lower threshold, or below 3/4 of the upper
//! one when there is no lower threshold (ip_vs_unbind_dest); editing a server with no upper
//! threshold or a higher one clears it (__ip_vs_update_dest). Overloaded and weight-0 servers
//! take no new connections. The controller only sees counts, so the flags are kept in [`State`]
//! and moved at each recomputation: threshold edits first, as __ip_vs_update_dest does them; then
//! a total that grew means connections were bound (set if at or above the upper threshold), one
//! that shrank means connections were unbound (clear if below the lower one), an unchanged one
//! changes nothing, and in the band between the thresholds the flag keeps its value. This is
//! exact as long as a server's total moves one way between two recomputations (and threshold
//! edits come before that interval's new connections); a total that rises over the upper
//! threshold and falls back into the band within one interval, or the reverse, is not seen.
//! During a plan, each pick is a bind and may set its server's flag.
//!
//! # sh and dh
//!
//! IPVS's 256-bucket tables, filled as ip_vs_sh_reassign (each server takes as many consecutive
//! buckets as its weight, at least one) and ip_vs_dh_reassign (one bucket per server in turn,
//! weights ignored) do, with one difference: IPVS walks its destination list, which holds the
//! servers in the reverse of the order they were added, so two directors given the same servers
//! in another order disagree on most buckets; here the servers are walked in the order of their keys (address bytes, then
//! port: [`key_order`], the key Maglev hashes), so every director with the same servers and
//! weights builds the same table, whatever the order of configuration, and flows rehashed from
//! one director to another behind ECMP land on the same server. A bucket whose server is unavailable (weight 0 or overloaded) gives no
//! server ([`NO_DEST`]), as IPVS returns none. With sh-fallback, IPVS walks on from the hashed
//! bucket: ip_vs_sh_get_fallback tries `hashkey(addr, port, (offset + ihash) % 256)` for offset
//! 0, 1, ... where `hashkey(.., o) = (o + h(addr, port)) & 255` and `ihash = hashkey(.., 0)`, so
//! the k-th try is bucket `(2 * ihash + k) % 256`: a function of the bucket alone. The table
//! therefore holds exactly IPVS's fallback choice for every bucket (the data plane's flow hash
//! takes the place of IPVS's multiplicative hash in choosing the bucket).
//!
//! # lblc and lblcr
//!
//! Locality by destination address. The data plane can only hash the destination into 256
//! buckets, so each bucket stands for one "destination" of IPVS's lblc/lblcr tables: [`State`]
//! keeps bucket -> server (lblc) and bucket -> server set (lblcr). Each recomputation walks the
//! buckets in order as if one new connection arrived for each and applies ip_vs_lblc_schedule /
//! ip_vs_lblcr_schedule: lblc keeps the bucket's server unless it is gone, quiesced or
//! `is_overloaded` (more active connections than its weight while some server has fewer than half
//! its weight; the threshold flag does not count here, as in IPVS), and otherwise assigns the wlc
//! pick (which skips flagged servers); lblcr uses the least loaded usable member of
//! the set, adds the wlc pick when that member is missing or `is_overloaded`, and removes the most
//! loaded member when the set has more than one member and has not changed for
//! [`LBLCR_EXPIRATION`] (IPVS's default lblcr_expiration). Every wlc pick made in a walk counts as
//! one more active connection of its server for the rest of the walk (as in a plan, so a first
//! walk from zero counts spreads the buckets by weight instead of giving all 256 to one server);
//! it does not move overload flags, since a bucket assignment is not a connection. Kept buckets
//! count nothing (they call no scheduler), so a walk does not shuffle buckets by itself.
//!
//! Approximations: IPVS drops a table entry unused for a day (lblc_expiration / the full
//! expiration check), or for 6 minutes once there are more than 16384 entries. The data plane
//! does not report when a bucket was last used, and a bucket gathers many addresses, so entries
//! here never expire; only lblcr's set shrinking, which depends on the set's last change, follows
//! time. A server removed from the service is dropped from lblcr sets at once (IPVS keeps it, as
//! an unavailable member, until the set sheds its most loaded member).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Dest, HashInput, Params, Scheduling, Table, NO_DEST};
use crate::model::{SchedFlags, Scheduler};

/// Buckets of IPVS's sh and dh tables (IP_VS_SH_TAB_SIZE, IP_VS_DH_TAB_SIZE), and the destination
/// buckets lblc and lblcr work on.
pub const HASH_BUCKETS: usize = 256;

/// IPVS's default net.ipv4.vs.lblcr_expiration (DEFAULT_EXPIRATION in ip_vs_lblcr.c): an lblcr
/// server set unchanged for longer sheds its most loaded member.
pub const LBLCR_EXPIRATION: Duration = Duration::from_secs(24 * 60 * 60);

/// twos' PRNG seed (any non-zero constant: it only has to be the same every run).
const TWOS_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// State a service's scheduler keeps between recomputations: overload flags, twos' random state,
/// lblc's and lblcr's bucket assignments.
#[derive(Clone, Debug, Default)]
pub struct State {
    /// What the last recomputation saw of each real server, by address.
    seen: HashMap<SocketAddr, Seen>,
    /// twos' random numbers.
    rng: Rng,
    /// lblc: each destination bucket's server (empty until first used).
    lblc: Vec<Option<SocketAddr>>,
    /// lblcr: each destination bucket's server set (empty until first used).
    lblcr: Vec<Option<ServerSet>>,
    /// When this state was created: lblcr's clock.
    start: Option<Instant>,
}

/// The table for `scheduler` over `dests` (lc, wlc, sed, nq, fo, ovf, twos, sh, dh, lblc, lblcr;
/// rr, wrr and mh are handed to [`Scheduling`]).
pub fn table(
    scheduler: Scheduler,
    flags: SchedFlags,
    state: &mut State,
    dests: &[Dest],
    params: &Params,
) -> Table {
    let now = state.start.get_or_insert_with(Instant::now).elapsed();
    table_at(scheduler, flags, state, dests, params, now)
}

/// [`table`] at time `now` (since the state was created).
fn table_at(
    scheduler: Scheduler,
    flags: SchedFlags,
    state: &mut State,
    dests: &[Dest],
    params: &Params,
    now: Duration,
) -> Table {
    let overloaded = state.observe(dests);
    let mut loads: Vec<Load> = dests
        .iter()
        .zip(&overloaded)
        .map(|(d, &o)| Load::new(d, o))
        .collect();
    match scheduler {
        Scheduler::Lc
        | Scheduler::Wlc
        | Scheduler::Sed
        | Scheduler::Nq
        | Scheduler::Fo
        | Scheduler::Ovf
        | Scheduler::Twos => {
            Table::Sequence(plan(scheduler, &mut loads, params.plan_len, &mut state.rng))
        }
        Scheduler::Sh => sh_table(&loads, &key_order(dests), flags),
        Scheduler::Dh => dh_table(&loads, &key_order(dests)),
        Scheduler::Lblc => state.lblc_table(dests, &mut loads),
        Scheduler::Lblcr => state.lblcr_table(dests, &mut loads, now),
        Scheduler::Rr | Scheduler::Wrr | Scheduler::Mh => {
            Scheduling::new(scheduler, flags).table(dests, params)
        }
    }
}

/// IP_VS_DEST_F_OVERLOAD of each server after these counts (in `dests` order), for the
/// schedulers that only skip overloaded servers (rr, wrr, mh).
pub fn overload_flags(state: &mut State, dests: &[Dest]) -> Vec<bool> {
    state.observe(dests)
}

/// What a recomputation saw of one real server.
#[derive(Clone, Copy, Debug)]
struct Seen {
    /// Active + inactive connections.
    total: u64,
    /// Upper threshold then.
    u_threshold: u32,
    /// IP_VS_DEST_F_OVERLOAD as derived then.
    overloaded: bool,
}

impl State {
    /// Moves each server's overload flag to the new counts (see the module doc) and returns the
    /// flags, in `dests` order. Servers no longer in the service are forgotten.
    fn observe(&mut self, dests: &[Dest]) -> Vec<bool> {
        let mut seen = HashMap::with_capacity(dests.len());
        let flags = dests
            .iter()
            .map(|d| {
                let prev = self.seen.get(&d.addr).copied().unwrap_or(Seen {
                    total: 0,
                    u_threshold: d.u_threshold,
                    overloaded: false,
                });
                let next = prev.next(d);
                seen.insert(d.addr, next);
                next.overloaded
            })
            .collect();
        self.seen = seen;
        flags
    }
}

impl Seen {
    /// The flag after the connections bound and unbound since `self`, as far as the counts tell.
    fn next(self, d: &Dest) -> Seen {
        let total = d.active as u64 + d.inactive as u64;
        let mut overloaded = self.overloaded;
        // __ip_vs_update_dest (ip_vs_ctl.c): no upper threshold, or a higher one, clears the flag.
        if d.u_threshold == 0 || d.u_threshold > self.u_threshold {
            overloaded = false;
        }
        if total > self.total {
            // Connections were bound (ip_vs_bind_dest).
            overloaded |= d.u_threshold != 0 && total >= d.u_threshold as u64;
        } else if total < self.total && below_lower_threshold(d, total) {
            // Connections were unbound (ip_vs_unbind_dest).
            overloaded = false;
        }
        Seen {
            total,
            u_threshold: d.u_threshold,
            overloaded,
        }
    }
}

/// ip_vs_unbind_dest's condition for clearing the flag at `total` connections.
fn below_lower_threshold(d: &Dest, total: u64) -> bool {
    if d.l_threshold != 0 {
        total < d.l_threshold as u64
    } else if d.u_threshold != 0 {
        total * 4 < d.u_threshold as u64 * 3
    } else {
        true
    }
}

/// A real server's load as a plan or walk goes (kernel ints widened to i64).
#[derive(Clone, Copy, Debug)]
struct Load {
    weight: i64,
    active: i64,
    inactive: i64,
    u_threshold: i64,
    overloaded: bool,
}

impl Load {
    fn new(d: &Dest, overloaded: bool) -> Load {
        Load {
            weight: d.weight as i64,
            active: d.active as i64,
            inactive: d.inactive as i64,
            u_threshold: d.u_threshold as i64,
            overloaded,
        }
    }

    /// ip_vs_dest_conn_overhead: an active connection weighs 256 inactive ones.
    fn overhead(&self) -> i64 {
        (self.active << 8) + self.inactive
    }

    /// sed's and nq's overhead: active connections plus the incoming one.
    fn expected_delay(&self) -> i64 {
        self.active + 1
    }

    /// Takes new connections: not quiesced and not overloaded.
    fn usable(&self) -> bool {
        self.weight > 0 && !self.overloaded
    }

    /// One more connection, counted active (see the module doc), with ip_vs_bind_dest's
    /// threshold check.
    fn bind(&mut self) {
        self.active += 1;
        if self.u_threshold != 0 && self.active + self.inactive >= self.u_threshold {
            self.overloaded = true;
        }
    }
}

/// Whether load `a` spread over weight `wa` is strictly below `b` over `wb`, by
/// cross-multiplication as the kernel compares (`b * wa > a * wb`; no division, exact).
fn lighter(a: i64, wa: i64, b: i64, wb: i64) -> bool {
    (a as i128) * (wb as i128) < (b as i128) * (wa as i128)
}

/// The first usable server of least `cost / weight` (ties keep the earlier one): the loop of
/// ip_vs_wlc_schedule, ip_vs_sed_schedule and __ip_vs_lblc(r)_schedule.
fn weighted_least(loads: &[Load], cost: impl Fn(&Load) -> i64) -> Option<usize> {
    let mut least: Option<usize> = None;
    for (i, d) in loads.iter().enumerate().filter(|(_, d)| d.usable()) {
        match least {
            Some(l) if !lighter(cost(d), d.weight, cost(&loads[l]), loads[l].weight) => {}
            _ => least = Some(i),
        }
    }
    least
}

/// The first usable server of highest weight among those `eligible` allows.
fn heaviest_weight(loads: &[Load], eligible: impl Fn(&Load) -> bool) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, d) in loads.iter().enumerate() {
        if d.usable() && eligible(d) && best.is_none_or(|b| d.weight > loads[b].weight) {
            best = Some(i);
        }
    }
    best
}

/// One pick of a load-aware scheduler.
fn pick(scheduler: Scheduler, loads: &[Load], rng: &mut Rng) -> Option<usize> {
    match scheduler {
        // ip_vs_lc.c: least overhead, weights ignored, first found on ties.
        Scheduler::Lc => loads
            .iter()
            .enumerate()
            .filter(|(_, d)| d.usable())
            .min_by_key(|(_, d)| d.overhead())
            .map(|(i, _)| i),
        // ip_vs_wlc.c: least overhead / weight.
        Scheduler::Wlc => weighted_least(loads, Load::overhead),
        // ip_vs_sed.c: least (active + 1) / weight; inactive connections do not count.
        Scheduler::Sed => weighted_least(loads, Load::expected_delay),
        // ip_vs_nq.c: the first server with no active connection, else as sed.
        Scheduler::Nq => loads
            .iter()
            .position(|d| d.usable() && d.active == 0)
            .or_else(|| weighted_least(loads, Load::expected_delay)),
        // ip_vs_fo.c: the highest weight, whatever the load.
        Scheduler::Fo => heaviest_weight(loads, |_| true),
        // ip_vs_ovf.c: the highest weight among servers with no more active connections than
        // their weight.
        Scheduler::Ovf => heaviest_weight(loads, |d| d.active <= d.weight),
        Scheduler::Twos => twos(loads, rng),
        _ => None,
    }
}

/// ip_vs_twos.c: two servers drawn at random in proportion to their weights; the second one if
/// its overhead / weight is strictly lower.
fn twos(loads: &[Load], rng: &mut Rng) -> Option<usize> {
    let total: i64 = loads.iter().filter(|d| d.usable()).map(|d| d.weight).sum();
    if total == 0 {
        return None;
    }
    // Random weights in [0, total], as the kernel takes prandom_u32() % (total + 1).
    let mut r1 = rng.next_u32() as i64 % (total + 1);
    let mut r2 = rng.next_u32() as i64 % (total + 1);
    let (mut c1, mut c2) = (None, None);
    for (i, d) in loads.iter().enumerate().filter(|(_, d)| d.usable()) {
        r1 -= d.weight;
        r2 -= d.weight;
        if r1 <= 0 && c1.is_none() {
            c1 = Some(i);
        }
        if r2 <= 0 && c2.is_none() {
            c2 = Some(i);
        }
        if c1.is_some() && c2.is_some() {
            break;
        }
    }
    let (c1, c2) = (c1?, c2?);
    let (a, b) = (&loads[c1], &loads[c2]);
    Some(if lighter(b.overhead(), b.weight, a.overhead(), a.weight) {
        c2
    } else {
        c1
    })
}

/// The picks of the next `len` new connections, each bound before the next pick; ends early when
/// no server can be picked.
fn plan(scheduler: Scheduler, loads: &mut [Load], len: usize, rng: &mut Rng) -> Vec<u32> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let Some(i) = pick(scheduler, loads, rng) else {
            break;
        };
        out.push(i as u32);
        loads[i].bind();
    }
    out
}

/// The indices of `dests` in the order of their hash keys ([`super::maglev::dest_key`]; the
/// index breaks ties, which only duplicate servers would need). sh and dh walk servers in this
/// order instead of the configuration's, so directors given the same servers in any order
/// build the same table. IPVS walks its destination list, to which __ip_vs_update_dest adds
/// each new server at the head (list_add_rcu: the last added first), so two IPVS directors
/// configured in different orders disagree on most buckets.
pub fn key_order(dests: &[Dest]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..dests.len()).collect();
    order.sort_by_cached_key(|&i| (super::maglev::dest_key(&dests[i].addr), i));
    order
}

/// ip_vs_sh_reassign over the servers in key `order`: each fills as many consecutive buckets
/// as its weight (at least one, so a weight-0 server still holds a bucket), wrapping around.
/// Entries are indices into `loads`.
fn sh_buckets(loads: &[Load], order: &[usize]) -> Vec<usize> {
    if order.is_empty() {
        return Vec::new();
    }
    let (mut k, mut filled) = (0, 0);
    (0..HASH_BUCKETS)
        .map(|_| {
            let b = order[k];
            filled += 1;
            if filled >= loads[b].weight {
                k = (k + 1) % order.len();
                filled = 0;
            }
            b
        })
        .collect()
}

/// The sh table (ip_vs_sh_schedule with ip_vs_sh_get or, with sh-fallback,
/// ip_vs_sh_get_fallback), servers walked in key `order`.
fn sh_table(loads: &[Load], order: &[usize], flags: SchedFlags) -> Table {
    let buckets = sh_buckets(loads, order);
    let slots = (0..HASH_BUCKETS)
        .map(|b| {
            let Some(&first) = buckets.get(b) else {
                return NO_DEST;
            };
            if loads[first].usable() {
                first as u32
            } else if flags.sh_fallback {
                // The k-th fallback try is bucket (2 * b + k) % 256 (see the module doc).
                (0..HASH_BUCKETS)
                    .map(|k| buckets[(2 * b + k) % HASH_BUCKETS])
                    .find(|&i| loads[i].usable())
                    .map_or(NO_DEST, |i| i as u32)
            } else {
                NO_DEST
            }
        })
        .collect();
    Table::Hash {
        input: if flags.sh_port {
            HashInput::SourcePort
        } else {
            HashInput::Source
        },
        slots,
    }
}

/// The dh table: ip_vs_dh_reassign gives bucket b the (b mod n)-th server (here of key
/// `order`, not list order), weights ignored; ip_vs_dh_schedule returns none for an
/// unavailable one.
fn dh_table(loads: &[Load], order: &[usize]) -> Table {
    let slots = (0..HASH_BUCKETS)
        .map(|b| match order.len() {
            0 => NO_DEST,
            n if loads[order[b % n]].usable() => order[b % n] as u32,
            _ => NO_DEST,
        })
        .collect();
    Table::Hash {
        input: HashInput::Destination,
        slots,
    }
}

/// ip_vs_lblc.c / ip_vs_lblcr.c is_overloaded: more active connections than weight while some
/// server has fewer than half its weight.
fn is_overloaded(loads: &[Load], i: usize) -> bool {
    loads[i].active > loads[i].weight && loads.iter().any(|d| d.active * 2 < d.weight)
}

/// An lblcr destination's server set.
#[derive(Clone, Debug)]
struct ServerSet {
    /// Members, newest first (ip_vs_dest_set_insert adds at the list head).
    members: Vec<SocketAddr>,
    /// Last insertion or removal.
    lastmod: Duration,
}

/// The index of `addr` in `dests`.
fn index_of(dests: &[Dest], addr: SocketAddr) -> Option<usize> {
    dests.iter().position(|d| d.addr == addr)
}

impl State {
    /// lblc over the 256 destination buckets (ip_vs_lblc_schedule, one connection per bucket).
    fn lblc_table(&mut self, dests: &[Dest], loads: &mut [Load]) -> Table {
        self.lblc.resize(HASH_BUCKETS, None);
        let slots = self
            .lblc
            .iter_mut()
            .map(|entry| {
                // The cached server, if still in the service, not quiesced and not is_overloaded.
                let cached = entry
                    .and_then(|a| index_of(dests, a))
                    .filter(|&i| loads[i].weight > 0 && !is_overloaded(loads, i));
                if let Some(i) = cached {
                    return i as u32;
                }
                // __ip_vs_lblc_schedule; with no server, IPVS leaves the entry as it is.
                let Some(i) = weighted_least(loads, Load::overhead) else {
                    return NO_DEST;
                };
                *entry = Some(dests[i].addr);
                loads[i].active += 1;
                i as u32
            })
            .collect();
        Table::Hash {
            input: HashInput::Destination,
            slots,
        }
    }

    /// lblcr over the 256 destination buckets (ip_vs_lblcr_schedule, one connection per bucket).
    fn lblcr_table(&mut self, dests: &[Dest], loads: &mut [Load], now: Duration) -> Table {
        self.lblcr.resize(HASH_BUCKETS, None);
        let slots = self
            .lblcr
            .iter_mut()
            .map(|entry| {
                let Some(set) = entry else {
                    // No entry: a new set with the wlc pick (ip_vs_lblcr_new).
                    let Some(i) = weighted_least(loads, Load::overhead) else {
                        return NO_DEST;
                    };
                    *entry = Some(ServerSet {
                        members: vec![dests[i].addr],
                        lastmod: now,
                    });
                    loads[i].active += 1;
                    return i as u32;
                };
                // Removed servers leave the set (see the module doc).
                set.members.retain(|&a| index_of(dests, a).is_some());
                let members: Vec<usize> = set
                    .members
                    .iter()
                    .filter_map(|&a| index_of(dests, a))
                    .collect();
                let least = set_min(&members, loads);
                // An old enough set with several members sheds its most loaded one.
                if members.len() > 1 && now > set.lastmod + LBLCR_EXPIRATION {
                    if let Some(m) = set_max(&members, loads) {
                        set.members.retain(|&a| a != dests[m].addr);
                        set.lastmod = now;
                    }
                }
                if let Some(i) = least.filter(|&i| !is_overloaded(loads, i)) {
                    return i as u32;
                }
                // __ip_vs_lblcr_schedule, added to the set (ip_vs_dest_set_insert).
                let Some(i) = weighted_least(loads, Load::overhead) else {
                    return NO_DEST;
                };
                if !set.members.contains(&dests[i].addr) {
                    set.members.insert(0, dests[i].addr);
                    set.lastmod = now;
                }
                loads[i].active += 1;
                i as u32
            })
            .collect();
        Table::Hash {
            input: HashInput::Destination,
            slots,
        }
    }
}

/// ip_vs_dest_set_min: the set's first usable member of least overhead / weight.
fn set_min(members: &[usize], loads: &[Load]) -> Option<usize> {
    let mut least: Option<usize> = None;
    for &i in members.iter().filter(|&&i| loads[i].usable()) {
        match least {
            Some(l)
                if !lighter(
                    loads[i].overhead(),
                    loads[i].weight,
                    loads[l].overhead(),
                    loads[l].weight,
                ) => {}
            _ => least = Some(i),
        }
    }
    least
}

/// ip_vs_dest_set_max: the set's first member of weight > 0 with the most overhead / weight,
/// overloaded or not.
fn set_max(members: &[usize], loads: &[Load]) -> Option<usize> {
    let mut most: Option<usize> = None;
    for &i in members.iter().filter(|&&i| loads[i].weight > 0) {
        match most {
            Some(m)
                if !lighter(
                    loads[m].overhead(),
                    loads[m].weight,
                    loads[i].overhead(),
                    loads[i].weight,
                ) => {}
            _ => most = Some(i),
        }
    }
    most
}

/// xorshift64* (Vigna), deterministic from [`TWOS_SEED`]; 0 means not seeded yet (so `Default`
/// works).
#[derive(Clone, Debug, Default)]
struct Rng(u64);

impl Rng {
    /// The next 32 random bits (the high half of the 64-bit output).
    fn next_u32(&mut self) -> u32 {
        let mut x = if self.0 == 0 { TWOS_SEED } else { self.0 };
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    // ---------------------------------------------------------------------------------------
    // Reference models, written from the kernel functions (net/netfilter/ipvs/, Linux mainline).
    // They keep the kernel's control flow (two-stage loops, list heads, flags) on purpose, so
    // they check the production code rather than repeat it.
    // ---------------------------------------------------------------------------------------

    /// The fields of struct ip_vs_dest (include/net/ip_vs.h) the schedulers read.
    #[derive(Clone, Debug)]
    struct KDest {
        addr: SocketAddr,
        weight: i64,
        activeconns: i64,
        inactconns: i64,
        u_threshold: i64,
        l_threshold: i64,
        /// IP_VS_DEST_F_OVERLOAD.
        overload: bool,
    }

    /// include/net/ip_vs.h: ip_vs_dest_conn_overhead.
    fn k_overhead(d: &KDest) -> i64 {
        (d.activeconns << 8) + d.inactconns
    }

    /// ip_vs_conn.c: ip_vs_dest_totalconns.
    fn k_totalconns(d: &KDest) -> i64 {
        d.activeconns + d.inactconns
    }

    /// ip_vs_conn.c: ip_vs_bind_dest (a new connection; `active` unless IP_VS_CONN_F_INACTIVE).
    fn k_bind(d: &mut KDest, active: bool) {
        if active {
            d.activeconns += 1;
        } else {
            d.inactconns += 1;
        }
        if d.u_threshold != 0 && k_totalconns(d) >= d.u_threshold {
            d.overload = true;
        }
    }

    /// ip_vs_conn.c: ip_vs_unbind_dest (a connection closed or expired).
    fn k_unbind(d: &mut KDest, active: bool) {
        if active {
            d.activeconns -= 1;
        } else {
            d.inactconns -= 1;
        }
        if d.l_threshold != 0 {
            if k_totalconns(d) < d.l_threshold {
                d.overload = false;
            }
        } else if d.u_threshold != 0 {
            if k_totalconns(d) * 4 < d.u_threshold * 3 {
                d.overload = false;
            }
        } else if d.overload {
            d.overload = false;
        }
    }

    /// ip_vs_ctl.c: __ip_vs_update_dest, the threshold part (ipvsadm -e -x -y).
    fn k_update_thresholds(d: &mut KDest, u: i64, l: i64) {
        if u == 0 || u > d.u_threshold {
            d.overload = false;
        }
        d.u_threshold = u;
        d.l_threshold = l;
    }

    /// ip_vs_lc.c: ip_vs_lc_schedule.
    fn k_lc(dests: &[KDest], _: &mut Rng) -> Option<usize> {
        let (mut least, mut loh) = (None, 0);
        for (i, dest) in dests.iter().enumerate() {
            if dest.overload || dest.weight == 0 {
                continue;
            }
            let doh = k_overhead(dest);
            if least.is_none() || doh < loh {
                least = Some(i);
                loh = doh;
            }
        }
        least
    }

    /// The loop shared, verbatim, by ip_vs_wlc.c: ip_vs_wlc_schedule, ip_vs_sed.c:
    /// ip_vs_sed_schedule, ip_vs_lblc.c: __ip_vs_lblc_schedule and ip_vs_lblcr.c:
    /// __ip_vs_lblcr_schedule: the first non-overloaded dest with weight > 0, then
    /// list_for_each_entry_continue skipping overloaded ones (not weight-0 ones) and replacing on
    /// `loh * dest->weight > doh * least->weight`.
    fn k_weighted_least(dests: &[KDest], overhead: fn(&KDest) -> i64) -> Option<usize> {
        let mut it = 0;
        let mut least = loop {
            if it == dests.len() {
                return None; // "no destination available"
            }
            if !dests[it].overload && dests[it].weight > 0 {
                break it;
            }
            it += 1;
        };
        let mut loh = overhead(&dests[least]);
        for (j, dest) in dests.iter().enumerate().skip(it + 1) {
            if dest.overload {
                continue;
            }
            let doh = overhead(dest);
            if loh * dest.weight > doh * dests[least].weight {
                least = j;
                loh = doh;
            }
        }
        Some(least)
    }

    /// ip_vs_wlc.c: ip_vs_wlc_schedule.
    fn k_wlc(dests: &[KDest], _: &mut Rng) -> Option<usize> {
        k_weighted_least(dests, k_overhead)
    }

    /// ip_vs_sed.c: ip_vs_sed_dest_overhead.
    fn k_sed_overhead(d: &KDest) -> i64 {
        d.activeconns + 1
    }

    /// ip_vs_sed.c: ip_vs_sed_schedule.
    fn k_sed(dests: &[KDest], _: &mut Rng) -> Option<usize> {
        k_weighted_least(dests, k_sed_overhead)
    }

    /// ip_vs_nq.c: ip_vs_nq_schedule (ip_vs_nq_dest_overhead = activeconns + 1).
    fn k_nq(dests: &[KDest], _: &mut Rng) -> Option<usize> {
        let (mut least, mut loh): (Option<usize>, i64) = (None, 0);
        for (i, dest) in dests.iter().enumerate() {
            if dest.overload || dest.weight == 0 {
                continue;
            }
            let doh = dest.activeconns + 1;
            // return the server directly if it is idle
            if dest.activeconns == 0 {
                return Some(i);
            }
            if least.is_none() || loh * dest.weight > doh * dests[least.unwrap()].weight {
                least = Some(i);
                loh = doh;
            }
        }
        least
    }

    /// ip_vs_fo.c: ip_vs_fo_schedule.
    fn k_fo(dests: &[KDest], _: &mut Rng) -> Option<usize> {
        let (mut hweight, mut hw) = (None, 0);
        for (i, dest) in dests.iter().enumerate() {
            if !dest.overload && dest.weight > hw {
                hweight = Some(i);
                hw = dest.weight;
            }
        }
        hweight
    }

    /// ip_vs_ovf.c: ip_vs_ovf_schedule.
    fn k_ovf(dests: &[KDest], _: &mut Rng) -> Option<usize> {
        let (mut h, mut hw) = (None, 0);
        for (i, dest) in dests.iter().enumerate() {
            let w = dest.weight;
            if dest.overload || dest.activeconns > w || w == 0 {
                continue;
            }
            if h.is_none() || w > hw {
                h = Some(i);
                hw = w;
            }
        }
        h
    }

    /// ip_vs_twos.c: ip_vs_twos_schedule (prandom_u32() drawn from the same PRNG as ours).
    fn k_twos(dests: &[KDest], rng: &mut Rng) -> Option<usize> {
        let (mut choice1, mut choice2) = (None, None);
        let mut total_weight = 0;
        for (i, dest) in dests.iter().enumerate() {
            if !dest.overload && dest.weight > 0 {
                total_weight += dest.weight;
                choice1 = Some(i);
            }
        }
        choice1?;
        total_weight += 1;
        let mut rweight1 = rng.next_u32() as i64 % total_weight;
        let mut rweight2 = rng.next_u32() as i64 % total_weight;
        let (mut weight1, mut weight2, mut overhead1, mut overhead2) = (-1, -1, 0, 0);
        for (i, dest) in dests.iter().enumerate() {
            if dest.overload {
                continue;
            }
            let weight = dest.weight;
            if weight <= 0 {
                continue;
            }
            rweight1 -= weight;
            rweight2 -= weight;
            if rweight1 <= 0 && weight1 == -1 {
                choice1 = Some(i);
                weight1 = weight;
                overhead1 = k_overhead(dest);
            }
            if rweight2 <= 0 && weight2 == -1 {
                choice2 = Some(i);
                weight2 = weight;
                overhead2 = k_overhead(dest);
            }
            if weight1 != -1 && weight2 != -1 {
                break;
            }
        }
        if choice2.is_some() && weight2 * overhead1 > weight1 * overhead2 {
            choice1 = choice2;
        }
        choice1
    }

    /// ip_vs_sh.c: ip_vs_sh_reassign. `p` walks the circular list, `n` being the list head.
    fn k_sh_reassign(dests: &[KDest]) -> Vec<Option<usize>> {
        let n = dests.len();
        let empty = n == 0;
        let (mut p, mut d_count) = (n, 0);
        let mut buckets = vec![None; 256];
        for b in buckets.iter_mut() {
            if empty {
                *b = None;
            } else {
                if p == n {
                    p = 0;
                }
                *b = Some(p);
                // Don't move to next dest until filling weight
                d_count += 1;
                if d_count >= dests[p].weight {
                    p += 1;
                    d_count = 0;
                }
            }
        }
        buckets
    }

    /// ip_vs_sh.c: ip_vs_sh_hashkey (IPv4): `(offset + (port + addr) * 2654435761UL) & 255`.
    fn k_sh_hashkey(addr: Ipv4Addr, port: u16, offset: u32) -> usize {
        let key = (port as u32).wrapping_add(u32::from(addr)) as u64;
        ((offset as u64).wrapping_add(key.wrapping_mul(2_654_435_761)) & 255) as usize
    }

    /// ip_vs_sh.c: is_unavailable.
    fn k_is_unavailable(d: &KDest) -> bool {
        d.weight <= 0 || d.overload
    }

    /// ip_vs_sh.c: ip_vs_sh_get.
    fn k_sh_get(b: &[Option<usize>], dests: &[KDest], addr: Ipv4Addr, port: u16) -> Option<usize> {
        b[k_sh_hashkey(addr, port, 0)].filter(|&d| !k_is_unavailable(&dests[d]))
    }

    /// ip_vs_sh.c: ip_vs_sh_get_fallback.
    fn k_sh_get_fallback(
        b: &[Option<usize>],
        dests: &[KDest],
        addr: Ipv4Addr,
        port: u16,
    ) -> Option<usize> {
        let ihash = k_sh_hashkey(addr, port, 0);
        let dest = b[ihash]?;
        if !k_is_unavailable(&dests[dest]) {
            return Some(dest);
        }
        for offset in 0..256 {
            let roffset = (offset + ihash as u32) % 256;
            let hash = k_sh_hashkey(addr, port, roffset);
            let dest = b[hash]?;
            if !k_is_unavailable(&dests[dest]) {
                return Some(dest);
            }
        }
        None
    }

    /// ip_vs_dh.c: ip_vs_dh_reassign (weights play no part).
    fn k_dh_reassign(dests: &[KDest]) -> Vec<Option<usize>> {
        let n = dests.len();
        let mut p = n;
        (0..256)
            .map(|_| {
                if n == 0 {
                    return None;
                }
                if p == n {
                    p = 0;
                }
                let dest = p;
                p += 1;
                Some(dest)
            })
            .collect()
    }

    /// ip_vs_dh.c: ip_vs_dh_hashkey (IPv4) and ip_vs_dh_schedule.
    fn k_dh_schedule(b: &[Option<usize>], dests: &[KDest], daddr: Ipv4Addr) -> Option<usize> {
        let hash = ((u32::from(daddr) as u64 * 2_654_435_761) & 255) as usize;
        let dest = b[hash]?;
        if dests[dest].weight <= 0 || dests[dest].overload {
            return None;
        }
        Some(dest)
    }

    /// ip_vs_lblc.c / ip_vs_lblcr.c: is_overloaded.
    fn k_is_overloaded(dests: &[KDest], dest: usize) -> bool {
        if dests[dest].activeconns > dests[dest].weight {
            for d in dests {
                if d.activeconns * 2 < d.weight {
                    return true;
                }
            }
        }
        false
    }

    /// ip_vs_lblc.c: ip_vs_lblc_schedule, the cache keyed by destination bucket (module doc).
    /// Harness, not kernel: a scheduler pick counts as one more active connection for the rest
    /// of the walk.
    fn k_lblc_schedule(
        cache: &mut [Option<SocketAddr>],
        dests: &mut [KDest],
        bucket: usize,
    ) -> Option<usize> {
        // First look in our cache
        if let Some(addr) = cache[bucket] {
            // IP_VS_DEST_F_AVAILABLE: the server is still in the service.
            if let Some(dest) = dests.iter().position(|d| d.addr == addr) {
                if dests[dest].weight > 0 && !k_is_overloaded(dests, dest) {
                    return Some(dest);
                }
            }
        }
        // No cache entry or it is invalid, time to schedule
        let dest = k_weighted_least(dests, k_overhead)?; // __ip_vs_lblc_schedule
        cache[bucket] = Some(dests[dest].addr); // ip_vs_lblc_new
        dests[dest].activeconns += 1;
        Some(dest)
    }

    /// ip_vs_lblcr.c: struct ip_vs_dest_set.
    #[derive(Clone, Debug)]
    struct KSet {
        /// The list, head first.
        list: Vec<SocketAddr>,
        lastmod: Duration,
    }

    fn k_index(dests: &[KDest], addr: SocketAddr) -> usize {
        dests
            .iter()
            .position(|d| d.addr == addr)
            .expect("set members stay in the service in these scenarios")
    }

    /// ip_vs_lblcr.c: ip_vs_dest_set_insert (list_add_rcu: at the head).
    fn k_set_insert(set: &mut KSet, addr: SocketAddr, check: bool, now: Duration) {
        if check && set.list.contains(&addr) {
            return;
        }
        set.list.insert(0, addr);
        set.lastmod = now;
    }

    /// ip_vs_lblcr.c: ip_vs_dest_set_erase.
    fn k_set_erase(set: &mut KSet, addr: SocketAddr, now: Duration) {
        if let Some(p) = set.list.iter().position(|&a| a == addr) {
            set.list.remove(p);
            set.lastmod = now;
        }
    }

    /// ip_vs_lblcr.c: ip_vs_dest_set_min (every member is IP_VS_DEST_F_AVAILABLE here).
    fn k_set_min(set: &KSet, dests: &[KDest]) -> Option<usize> {
        let mut e = 0;
        let mut least = loop {
            if e == set.list.len() {
                return None;
            }
            let least = k_index(dests, set.list[e]);
            if !dests[least].overload && dests[least].weight > 0 {
                break least;
            }
            e += 1;
        };
        let mut loh = k_overhead(&dests[least]);
        for &a in &set.list[e + 1..] {
            let dest = k_index(dests, a);
            if dests[dest].overload {
                continue;
            }
            let doh = k_overhead(&dests[dest]);
            if loh * dests[dest].weight > doh * dests[least].weight {
                least = dest;
                loh = doh;
            }
        }
        Some(least)
    }

    /// ip_vs_lblcr.c: ip_vs_dest_set_max.
    fn k_set_max(set: &KSet, dests: &[KDest]) -> Option<usize> {
        let mut e = 0;
        let mut most = loop {
            if e == set.list.len() {
                return None;
            }
            let most = k_index(dests, set.list[e]);
            if dests[most].weight > 0 {
                break most;
            }
            e += 1;
        };
        let mut moh = k_overhead(&dests[most]);
        for &a in &set.list[e + 1..] {
            let dest = k_index(dests, a);
            let doh = k_overhead(&dests[dest]);
            if moh * dests[dest].weight < doh * dests[most].weight && dests[dest].weight > 0 {
                most = dest;
                moh = doh;
            }
        }
        Some(most)
    }

    /// ip_vs_lblcr.c: ip_vs_lblcr_schedule, keyed by destination bucket, with the same harness
    /// counting as k_lblc_schedule. `shrinks` counts sets that lost a member.
    fn k_lblcr_schedule(
        cache: &mut [Option<KSet>],
        dests: &mut [KDest],
        bucket: usize,
        now: Duration,
        shrinks: &mut usize,
    ) -> Option<usize> {
        if let Some(en) = &mut cache[bucket] {
            // Get the least loaded destination
            let dest = k_set_min(en, dests);
            // More than one destination + enough time passed by, cleanup
            if en.list.len() > 1 && now > en.lastmod + LBLCR_EXPIRATION {
                if let Some(m) = k_set_max(en, dests) {
                    k_set_erase(en, dests[m].addr, now);
                    *shrinks += 1;
                }
            }
            // If the destination is not overloaded, use it
            if let Some(d) = dest.filter(|&d| !k_is_overloaded(dests, d)) {
                return Some(d);
            }
            // The cache entry is invalid, time to schedule
            let dest = k_weighted_least(dests, k_overhead)?;
            k_set_insert(en, dests[dest].addr, true, now);
            dests[dest].activeconns += 1;
            return Some(dest);
        }
        // No cache entry, time to schedule
        let dest = k_weighted_least(dests, k_overhead)?;
        let mut set = KSet {
            list: Vec::new(),
            lastmod: now,
        };
        k_set_insert(&mut set, dests[dest].addr, false, now); // ip_vs_lblcr_new
        cache[bucket] = Some(set);
        dests[dest].activeconns += 1;
        Some(dest)
    }

    // ---------------------------------------------------------------------------------------
    // A service under connection events, as IPVS counts them.
    // ---------------------------------------------------------------------------------------

    impl Rng {
        /// Uniform-ish in 0..n (0 when n is 0).
        fn below(&mut self, n: usize) -> usize {
            if n == 0 {
                0
            } else {
                self.next_u32() as usize % n
            }
        }
    }

    fn addr(n: u16) -> SocketAddr {
        SocketAddr::from(([198, 51, 100, (n % 200) as u8 + 1], 8000 + n))
    }

    fn random_weight(rng: &mut Rng) -> i64 {
        [0, 1, 1, 2, 3, 5, 8][rng.below(7)]
    }

    /// (upper, lower) thresholds: none a third of the time; lower at most upper (as ipvsadm
    /// requires).
    fn random_thresholds(rng: &mut Rng) -> (i64, i64) {
        if rng.below(3) == 0 {
            return (0, 0);
        }
        let u = 5 + rng.below(40) as i64;
        let l = if rng.below(2) == 0 {
            0
        } else {
            1 + rng.below(u as usize) as i64
        };
        (u, l)
    }

    /// The kernel's real servers of one service, moved by connection events.
    #[derive(Clone, Debug)]
    struct World {
        dests: Vec<KDest>,
        next_addr: u16,
    }

    impl World {
        fn random(rng: &mut Rng, n: usize) -> World {
            let mut w = World {
                dests: Vec::new(),
                next_addr: 0,
            };
            for _ in 0..n {
                w.add(rng);
            }
            for d in &mut w.dests {
                for _ in 0..rng.below(40) {
                    k_bind(d, false);
                }
                let e = rng.below(d.inactconns as usize + 1) as i64;
                d.inactconns -= e;
                d.activeconns += e;
            }
            w
        }

        /// ipvsadm -a: a new server, no connections.
        fn add(&mut self, rng: &mut Rng) {
            let (u_threshold, l_threshold) = random_thresholds(rng);
            self.dests.push(KDest {
                addr: addr(self.next_addr),
                weight: random_weight(rng),
                activeconns: 0,
                inactconns: 0,
                u_threshold,
                l_threshold,
                overload: false,
            });
            self.next_addr += 1;
        }

        /// What the controller sees at a recomputation.
        fn observed(&self) -> Vec<Dest> {
            self.dests
                .iter()
                .map(|d| Dest {
                    addr: d.addr,
                    weight: d.weight as u32,
                    active: d.activeconns as u32,
                    inactive: d.inactconns as u32,
                    u_threshold: d.u_threshold as u32,
                    l_threshold: d.l_threshold as u32,
                })
                .collect()
        }

        /// One interval between recomputations: configuration edits, the new connections the
        /// data plane placed (`placed`, indices into the current servers), handshakes
        /// completing, connections winding down, closing and expiring, servers added and
        /// removed. A server's total only moves one way in an interval (closes only on servers
        /// that took no new connection): the case the overload flags are exact for.
        fn churn(&mut self, rng: &mut Rng, placed: &[u32], allow_removal: bool) {
            for d in &mut self.dests {
                if rng.below(10) == 0 {
                    d.weight = random_weight(rng);
                }
                if rng.below(10) == 0 {
                    let (u, l) = random_thresholds(rng);
                    k_update_thresholds(d, u, l);
                }
            }
            let mut grew = vec![false; self.dests.len()];
            for &i in placed {
                k_bind(&mut self.dests[i as usize], false);
                grew[i as usize] = true;
            }
            for (d, &grew) in self.dests.iter_mut().zip(&grew) {
                // TCP state changes move counts between active and inactive, nothing else.
                let e = rng.below(d.inactconns as usize + 1) as i64;
                d.inactconns -= e;
                d.activeconns += e;
                let f = rng.below(d.activeconns as usize / 4 + 1) as i64;
                d.activeconns -= f;
                d.inactconns += f;
                if !grew {
                    for _ in 0..rng.below(d.activeconns as usize + 1) {
                        k_unbind(d, true);
                    }
                    for _ in 0..rng.below(d.inactconns as usize + 1) {
                        k_unbind(d, false);
                    }
                }
            }
            if allow_removal && self.dests.len() > 1 && rng.below(8) == 0 {
                let i = rng.below(self.dests.len());
                self.dests.remove(i);
            }
            if self.dests.len() < 6 && rng.below(8) == 0 {
                self.add(rng);
            }
        }
    }

    fn params(plan_len: usize) -> Params {
        Params {
            plan_len,
            ..Params::default()
        }
    }

    fn slots(t: Table) -> Vec<u32> {
        match t {
            Table::Hash { slots, .. } => slots,
            Table::Sequence(s) => panic!("expected a hash table, got the sequence {s:?}"),
        }
    }

    /// Runs `scheduler` against its kernel reference through many intervals of connection
    /// events: every recomputation's plan must be the picks the kernel function makes from the
    /// kernel's own counters and flags, each pick bound as an active connection.
    fn check_plan(scheduler: Scheduler, reference: fn(&[KDest], &mut Rng) -> Option<usize>) {
        const LEN: usize = 24;
        let (mut overloaded_rounds, mut short_plans) = (0, 0);
        for seed in 1..=12u64 {
            let mut rng = Rng(seed.wrapping_mul(0x5851_f42d_4c95_7f2d));
            let mut world = World::random(&mut rng, 2 + seed as usize % 4);
            let mut state = State::default();
            let mut kernel_rng = Rng::default();
            for round in 0..40 {
                let observed = world.observed();
                let ours = table_at(
                    scheduler,
                    SchedFlags::default(),
                    &mut state,
                    &observed,
                    &params(LEN),
                    Duration::ZERO,
                );
                let mut k = world.dests.clone();
                let mut expected = Vec::new();
                while expected.len() < LEN {
                    let Some(i) = reference(&k, &mut kernel_rng) else {
                        break;
                    };
                    expected.push(i as u32);
                    k_bind(&mut k[i], true);
                }
                assert_eq!(
                    ours,
                    Table::Sequence(expected.clone()),
                    "{scheduler:?} seed {seed} round {round}: {:?}",
                    world.dests
                );
                overloaded_rounds += world.dests.iter().any(|d| d.overload) as usize;
                short_plans += (expected.len() < LEN) as usize;
                let take = rng.below(expected.len() + 1);
                world.churn(&mut rng, &expected[..take], true);
            }
        }
        // The scenarios did reach overloads and unplaceable connections.
        assert!(overloaded_rounds >= 10, "{overloaded_rounds}");
        assert!(short_plans > 5, "{short_plans}");
    }

    #[test]
    fn lc_matches_kernel() {
        check_plan(Scheduler::Lc, k_lc);
    }

    #[test]
    fn wlc_matches_kernel() {
        check_plan(Scheduler::Wlc, k_wlc);
    }

    #[test]
    fn sed_matches_kernel() {
        check_plan(Scheduler::Sed, k_sed);
    }

    #[test]
    fn nq_matches_kernel() {
        check_plan(Scheduler::Nq, k_nq);
    }

    #[test]
    fn fo_matches_kernel() {
        check_plan(Scheduler::Fo, k_fo);
    }

    #[test]
    fn ovf_matches_kernel() {
        check_plan(Scheduler::Ovf, k_ovf);
    }

    #[test]
    fn twos_matches_kernel() {
        check_plan(Scheduler::Twos, k_twos);
    }

    /// Connections the data plane places in an interval: random buckets of a hash table.
    fn placed_by_hash(rng: &mut Rng, slots: &[u32]) -> Vec<u32> {
        (0..rng.below(40))
            .map(|_| slots[rng.below(slots.len())])
            .filter(|&s| s != NO_DEST)
            .collect()
    }

    #[test]
    fn sh_matches_kernel() {
        let mut fell_back = 0;
        for (fallback, port) in [(false, false), (true, false), (false, true), (true, true)] {
            let flags = SchedFlags {
                sh_fallback: fallback,
                sh_port: port,
                ..SchedFlags::default()
            };
            for seed in 1..=8u64 {
                let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                let mut world = World::random(&mut rng, 1 + seed as usize % 5);
                let mut state = State::default();
                for round in 0..30 {
                    let table = table_at(
                        Scheduler::Sh,
                        flags,
                        &mut state,
                        &world.observed(),
                        &params(8),
                        Duration::ZERO,
                    );
                    let Table::Hash { input, slots } = table else {
                        panic!("sh is a hash table")
                    };
                    assert_eq!(
                        input,
                        if port {
                            HashInput::SourcePort
                        } else {
                            HashInput::Source
                        }
                    );
                    assert_eq!(slots.len(), 256);
                    let buckets = k_sh_reassign(&world.dests);
                    // Addresses 10.1.2.0-255 hash to every bucket (the multiplier is odd); with
                    // sh-port, random ports too.
                    for x in 0..=255u8 {
                        let a = Ipv4Addr::new(10, 1, 2, x);
                        let p = if port { rng.below(65536) as u16 } else { 0 };
                        for p in [0, p] {
                            let expected = if fallback {
                                k_sh_get_fallback(&buckets, &world.dests, a, p)
                            } else {
                                k_sh_get(&buckets, &world.dests, a, p)
                            };
                            let b = k_sh_hashkey(a, p, 0);
                            fell_back += (expected.is_some()
                                && expected != k_sh_get(&buckets, &world.dests, a, p))
                                as usize;
                            assert_eq!(
                                slots[b],
                                expected.map_or(NO_DEST, |d| d as u32),
                                "fallback {fallback} seed {seed} round {round} bucket {b}: {:?}",
                                world.dests
                            );
                        }
                    }
                    let placed = placed_by_hash(&mut rng, &slots);
                    world.churn(&mut rng, &placed, true);
                }
            }
        }
        assert!(fell_back > 100, "{fell_back}");
    }

    #[test]
    fn dh_matches_kernel() {
        for seed in 1..=10u64 {
            let mut rng = Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d));
            let mut world = World::random(&mut rng, 1 + seed as usize % 5);
            let mut state = State::default();
            for round in 0..30 {
                let table = table_at(
                    Scheduler::Dh,
                    SchedFlags::default(),
                    &mut state,
                    &world.observed(),
                    &params(8),
                    Duration::ZERO,
                );
                let Table::Hash { input, slots } = table else {
                    panic!("dh is a hash table")
                };
                assert_eq!(input, HashInput::Destination);
                let buckets = k_dh_reassign(&world.dests);
                for x in 0..=255u8 {
                    let a = Ipv4Addr::new(192, 0, 2, x);
                    let b = ((u32::from(a) as u64 * 2_654_435_761) & 255) as usize;
                    let expected = k_dh_schedule(&buckets, &world.dests, a);
                    assert_eq!(
                        slots[b],
                        expected.map_or(NO_DEST, |d| d as u32),
                        "seed {seed} round {round} bucket {b}: {:?}",
                        world.dests
                    );
                }
                let placed = placed_by_hash(&mut rng, &slots);
                world.churn(&mut rng, &placed, true);
            }
        }
    }

    #[test]
    fn lblc_matches_kernel() {
        let mut moved = 0;
        for seed in 1..=10u64 {
            let mut rng = Rng(seed.wrapping_mul(0xd1b5_4a32_d192_ed03));
            let mut world = World::random(&mut rng, 1 + seed as usize % 5);
            let mut state = State::default();
            let mut cache: Vec<Option<SocketAddr>> = vec![None; 256];
            let mut last: Vec<u32> = Vec::new();
            for round in 0..40 {
                let ours = slots(table_at(
                    Scheduler::Lblc,
                    SchedFlags::default(),
                    &mut state,
                    &world.observed(),
                    &params(8),
                    Duration::ZERO,
                ));
                let mut k = world.dests.clone();
                let expected: Vec<u32> = (0..256)
                    .map(|b| k_lblc_schedule(&mut cache, &mut k, b).map_or(NO_DEST, |d| d as u32))
                    .collect();
                assert_eq!(
                    ours, expected,
                    "seed {seed} round {round}: {:?}",
                    world.dests
                );
                moved += last.iter().zip(&ours).filter(|(a, b)| a != b).count();
                last = ours.clone();
                let placed = placed_by_hash(&mut rng, &ours);
                world.churn(&mut rng, &placed, true);
            }
        }
        assert!(moved > 100, "{moved}");
    }

    #[test]
    fn lblcr_matches_kernel() {
        let (mut shrinks, mut grown) = (0, 0);
        for seed in 1..=10u64 {
            let mut rng = Rng(seed.wrapping_mul(0x8cb9_2ba7_2f3d_8dd7));
            let mut world = World::random(&mut rng, 1 + seed as usize % 5);
            let mut state = State::default();
            let mut cache: Vec<Option<KSet>> = vec![None; 256];
            let mut now = Duration::ZERO;
            for round in 0..40 {
                let ours = slots(table_at(
                    Scheduler::Lblcr,
                    SchedFlags::default(),
                    &mut state,
                    &world.observed(),
                    &params(8),
                    now,
                ));
                let mut k = world.dests.clone();
                let expected: Vec<u32> = (0..256)
                    .map(|b| {
                        k_lblcr_schedule(&mut cache, &mut k, b, now, &mut shrinks)
                            .map_or(NO_DEST, |d| d as u32)
                    })
                    .collect();
                assert_eq!(
                    ours, expected,
                    "seed {seed} round {round}: {:?}",
                    world.dests
                );
                grown += cache.iter().flatten().filter(|s| s.list.len() > 1).count();
                let placed = placed_by_hash(&mut rng, &ours);
                // Servers stay (their removal is approximated; see lblcr_drops_removed_servers).
                world.churn(&mut rng, &placed, false);
                now += Duration::from_secs(60 * (1 + rng.below(600) as u64));
            }
        }
        assert!(shrinks > 10, "{shrinks}");
        assert!(grown > 100, "{grown}");
    }

    // ---------------------------------------------------------------------------------------
    // Targeted semantics.
    // ---------------------------------------------------------------------------------------

    fn dest(n: u16, weight: u32, active: u32, inactive: u32) -> Dest {
        Dest {
            addr: addr(n),
            weight,
            active,
            inactive,
            u_threshold: 0,
            l_threshold: 0,
        }
    }

    /// A fresh scheduler's plan.
    fn plan_of(s: Scheduler, dests: &[Dest], len: usize) -> Vec<u32> {
        match table(
            s,
            SchedFlags::default(),
            &mut State::default(),
            dests,
            &params(len),
        ) {
            Table::Sequence(v) => v,
            t => panic!("{s:?} gave {t:?}"),
        }
    }

    const PLANNED: [Scheduler; 7] = [
        Scheduler::Lc,
        Scheduler::Wlc,
        Scheduler::Sed,
        Scheduler::Nq,
        Scheduler::Fo,
        Scheduler::Ovf,
        Scheduler::Twos,
    ];

    #[test]
    fn lc_overhead_is_active_times_256_plus_inactive() {
        // 1 active (256) against 255 inactive: the inactive side is lighter.
        assert_eq!(
            plan_of(Scheduler::Lc, &[dest(0, 1, 1, 0), dest(1, 1, 0, 255)], 1),
            [1]
        );
        // 256 inactive weigh exactly one active: a tie goes to the first server.
        assert_eq!(
            plan_of(Scheduler::Lc, &[dest(0, 1, 1, 0), dest(1, 1, 0, 256)], 1),
            [0]
        );
        // Weights play no part in lc.
        assert_eq!(
            plan_of(Scheduler::Lc, &[dest(0, 1, 1, 0), dest(1, 100, 0, 257)], 1),
            [0]
        );
    }

    #[test]
    fn wlc_divides_overhead_by_weight_exactly() {
        // 256 / 3 = 85.33 against 85 / 1: integer division would call it a tie.
        assert_eq!(
            plan_of(Scheduler::Wlc, &[dest(0, 3, 1, 0), dest(1, 1, 0, 85)], 1),
            [1]
        );
        assert_eq!(
            plan_of(Scheduler::Wlc, &[dest(0, 3, 1, 0), dest(1, 1, 0, 86)], 1),
            [0]
        );
        // 256 / 2 against 128 / 1: a tie goes to the first server.
        assert_eq!(
            plan_of(Scheduler::Wlc, &[dest(0, 2, 1, 0), dest(1, 1, 0, 128)], 1),
            [0]
        );
        assert_eq!(
            plan_of(Scheduler::Wlc, &[dest(0, 2, 1, 0), dest(1, 1, 0, 127)], 1),
            [1]
        );
    }

    #[test]
    fn sed_uses_active_plus_one_over_weight() {
        // (0 + 1) / 1 against (1 + 1) / 2: a tie, first server; its 1000 inactive don't count.
        let d = [dest(0, 1, 0, 1000), dest(1, 2, 1, 0)];
        assert_eq!(plan_of(Scheduler::Sed, &d, 1), [0]);
        // wlc counts them.
        assert_eq!(plan_of(Scheduler::Wlc, &d, 1), [1]);
        // (1 + 1) / 3 < 1 / 1.
        assert_eq!(
            plan_of(Scheduler::Sed, &[dest(0, 1, 0, 0), dest(1, 3, 1, 0)], 1),
            [1]
        );
        // (2 + 1) / 4 < (0 + 1) / 1 by cross-multiplication: 3 * 1 < 1 * 4.
        assert_eq!(
            plan_of(Scheduler::Sed, &[dest(0, 1, 0, 0), dest(1, 4, 2, 0)], 1),
            [1]
        );
        assert_eq!(
            plan_of(Scheduler::Sed, &[dest(0, 1, 0, 0), dest(1, 3, 2, 0)], 1),
            [0]
        );
    }

    #[test]
    fn nq_sends_to_an_idle_server_first() {
        // sed prefers 6 / 10 to 1 / 1; nq takes the idle server (inactive ones don't count).
        let d = [dest(0, 10, 5, 0), dest(1, 1, 0, 50)];
        assert_eq!(plan_of(Scheduler::Sed, &d, 1), [0]);
        assert_eq!(plan_of(Scheduler::Nq, &d, 1), [1]);
        // The first idle one in list order, whatever the weights.
        let d = [dest(0, 10, 5, 0), dest(1, 1, 0, 0), dest(2, 9, 0, 0)];
        assert_eq!(plan_of(Scheduler::Nq, &d, 1), [1]);
        // With nobody idle, nq is sed.
        let d = [dest(0, 10, 5, 0), dest(1, 1, 1, 0)];
        assert_eq!(
            plan_of(Scheduler::Nq, &d, 8),
            plan_of(Scheduler::Sed, &d, 8)
        );
        // A planned pick is active, so the idle server is idle for one pick only.
        assert_eq!(
            plan_of(Scheduler::Nq, &[dest(0, 10, 5, 0), dest(1, 1, 0, 0)], 2),
            [1, 0]
        );
    }

    #[test]
    fn quiesced_servers_are_never_planned() {
        let d = [
            dest(0, 0, 0, 0),
            dest(1, 3, 2, 2),
            dest(2, 0, 0, 0),
            dest(3, 1, 0, 9),
        ];
        for s in PLANNED {
            let p = plan_of(s, &d, 300);
            assert!(!p.is_empty(), "{s:?}");
            assert!(p.iter().all(|&i| i == 1 || i == 3), "{s:?}: {p:?}");
            let none = [dest(0, 0, 0, 0), dest(1, 0, 3, 0)];
            assert!(plan_of(s, &none, 300).is_empty(), "{s:?}");
            assert!(plan_of(s, &[], 300).is_empty(), "{s:?}");
        }
    }

    /// One recomputation's plan on a persistent state.
    fn replan(state: &mut State, s: Scheduler, dests: &[Dest], len: usize) -> Vec<u32> {
        match table(s, SchedFlags::default(), state, dests, &params(len)) {
            Table::Sequence(v) => v,
            t => panic!("{t:?}"),
        }
    }

    #[test]
    fn overloaded_servers_are_skipped_with_hysteresis() {
        // Server 0 would take everything (weight 100 against a loaded weight 1) but for its
        // thresholds: over at 10 connections, back under 5.
        let d = |total: u32, u: u32, l: u32| {
            let mut a = dest(0, 100, total, 0);
            a.u_threshold = u;
            a.l_threshold = l;
            [a, dest(1, 1, 50, 0)]
        };
        let mut st = State::default();
        // 8 connections: two more picks reach 10 and set the flag within the plan.
        assert_eq!(
            replan(&mut st, Scheduler::Wlc, &d(8, 10, 5), 4),
            [0, 0, 1, 1]
        );
        // The counts reached 10: overloaded.
        assert_eq!(replan(&mut st, Scheduler::Wlc, &d(10, 10, 5), 2), [1, 1]);
        // Down to 7: still overloaded (not below the lower threshold 5).
        assert_eq!(replan(&mut st, Scheduler::Wlc, &d(7, 10, 5), 2), [1, 1]);
        // Down to 4: cleared.
        assert_eq!(replan(&mut st, Scheduler::Wlc, &d(4, 10, 5), 2), [0, 0]);
        // Up to 7: still clear (not at the upper threshold).
        assert_eq!(replan(&mut st, Scheduler::Wlc, &d(7, 10, 5), 2), [0, 0]);
        // Up to 12: overloaded.
        assert_eq!(replan(&mut st, Scheduler::Wlc, &d(12, 10, 5), 2), [1, 1]);
        // A raised upper threshold clears the flag (__ip_vs_update_dest).
        assert_eq!(replan(&mut st, Scheduler::Wlc, &d(12, 20, 5), 2), [0, 0]);
        // A lowered one sets nothing until a connection is bound: one more pick, then over.
        assert_eq!(replan(&mut st, Scheduler::Wlc, &d(12, 11, 5), 3), [0, 1, 1]);

        // A raised lower threshold clears nothing until a connection is unbound below it.
        let mut st = State::default();
        assert_eq!(replan(&mut st, Scheduler::Wlc, &d(10, 10, 5), 1), [1]);
        assert_eq!(replan(&mut st, Scheduler::Wlc, &d(8, 10, 5), 1), [1]);
        assert_eq!(replan(&mut st, Scheduler::Wlc, &d(8, 10, 9), 1), [1]);
        assert_eq!(replan(&mut st, Scheduler::Wlc, &d(7, 10, 9), 1), [0]);

        // No lower threshold: cleared below 3/4 of the upper one (8 -> under 6).
        let mut st = State::default();
        assert_eq!(replan(&mut st, Scheduler::Wlc, &d(9, 8, 0), 1), [1]);
        assert_eq!(replan(&mut st, Scheduler::Wlc, &d(6, 8, 0), 1), [1]);
        assert_eq!(replan(&mut st, Scheduler::Wlc, &d(5, 8, 0), 1), [0]);
        // Removing the threshold clears it too.
        let mut st = State::default();
        assert_eq!(replan(&mut st, Scheduler::Wlc, &d(9, 8, 0), 1), [1]);
        assert_eq!(replan(&mut st, Scheduler::Wlc, &d(9, 0, 0), 1), [0]);
        // Inactive connections count towards the thresholds.
        let mut a = dest(0, 100, 0, 10);
        a.u_threshold = 10;
        assert_eq!(plan_of(Scheduler::Wlc, &[a, dest(1, 1, 50, 0)], 1), [1]);
        // Every server overloaded: nothing planned.
        let mut b = dest(1, 1, 3, 0);
        b.u_threshold = 3;
        assert!(plan_of(Scheduler::Lc, &[a, b], 8).is_empty());
    }

    #[test]
    fn fo_picks_the_highest_weight() {
        let d = [
            dest(0, 2, 0, 0),
            dest(1, 5, 1000, 0),
            dest(2, 5, 0, 0),
            dest(3, 1, 0, 0),
        ];
        // The first of the highest weights, however loaded.
        assert_eq!(plan_of(Scheduler::Fo, &d, 5), [1; 5]);
        // Overloaded, it fails over to the next highest.
        let mut d = d;
        d[1].u_threshold = 1000;
        assert_eq!(plan_of(Scheduler::Fo, &d, 5), [2; 5]);
        d[2].weight = 0;
        assert_eq!(plan_of(Scheduler::Fo, &d, 3), [0; 3]);
    }

    #[test]
    fn ovf_fills_the_highest_weight_then_overflows() {
        // IPVS skips a server once its active connections exceed its weight, so a server of
        // weight w takes w + 1 connections before the next one gets any.
        let d = [dest(0, 2, 0, 0), dest(1, 3, 0, 0), dest(2, 1, 0, 0)];
        assert_eq!(plan_of(Scheduler::Ovf, &d, 20), [1, 1, 1, 1, 0, 0, 0, 2, 2]);
        // Counting from the active connections it already has; inactive ones don't count.
        let d = [dest(0, 2, 0, 0), dest(1, 3, 3, 100), dest(2, 1, 2, 0)];
        assert_eq!(plan_of(Scheduler::Ovf, &d, 20), [1, 0, 0, 0]);
    }

    #[test]
    fn wlc_burst_from_zero_splits_one_to_three_within_one_connection() {
        let p = plan_of(Scheduler::Wlc, &[dest(0, 1, 0, 0), dest(1, 3, 0, 0)], 1000);
        assert_eq!(p.len(), 1000);
        let mut ones = 0;
        for (n, &i) in p.iter().enumerate() {
            ones += (i == 1) as i64;
            let n = n as i64 + 1;
            // 4 * ones should be 3 * n, within one connection's worth (4).
            assert!(
                (4 * ones - 3 * n).abs() <= 4,
                "after {n}: {ones} on the weight-3 server"
            );
        }
    }

    #[test]
    fn a_server_with_long_lived_connections_gets_none_until_the_other_catches_up() {
        let d = [dest(0, 1, 100, 0), dest(1, 1, 0, 0)];
        for s in [Scheduler::Lc, Scheduler::Wlc, Scheduler::Sed, Scheduler::Nq] {
            let p = plan_of(s, &d, 250);
            assert!(p[..100].iter().all(|&i| i == 1), "{s:?}: {p:?}");
            // Then the loads are equal and they alternate, the first server first on ties.
            assert_eq!(p[100..104], [0, 1, 0, 1], "{s:?}");
        }
    }

    /// Issue 17's blind spot: with wlc, one real server holding 6 long connections and one idle
    /// server, 10 short new connections. A plan kept while they come and go counts each pick as
    /// a lasting active connection and sends 2 to the busy server; plans made afresh from the
    /// live counts, in which each one that ended is an inactive connection, send all 10 to the
    /// idle server, pick by pick what IPVS's ip_vs_wlc_schedule picks over the same counts.
    #[test]
    fn wlc_plans_from_live_counts_follow_connections_that_ended() {
        let busy = dest(0, 1, 6, 0);
        let idle = dest(1, 1, 0, 0);
        let kept = plan_of(Scheduler::Wlc, &[busy, idle], 10);
        assert_eq!(kept.iter().filter(|&&i| i == 0).count(), 2, "{kept:?}");
        let (mut dests, mut state) = ([busy, idle], State::default());
        let kd = |d: &Dest| KDest {
            addr: d.addr,
            weight: d.weight as i64,
            activeconns: d.active as i64,
            inactconns: d.inactive as i64,
            u_threshold: 0,
            l_threshold: 0,
            overload: false,
        };
        let mut sent = [0; 2];
        for n in 0..10 {
            let Table::Sequence(p) = table(
                Scheduler::Wlc,
                SchedFlags::default(),
                &mut state,
                &dests,
                &params(16),
            ) else {
                panic!("wlc is a sequence")
            };
            let i = p[0] as usize;
            let ipvs = k_wlc(&[kd(&dests[0]), kd(&dests[1])], &mut Rng::default());
            assert_eq!(Some(i), ipvs, "connection {n}");
            sent[i] += 1;
            // Established for a moment, then the client's FIN: one more inactive connection
            // in the live counts of the next plan.
            dests[i].inactive += 1;
        }
        assert_eq!(sent, [0, 10]);
    }

    #[test]
    fn twos_is_reproducible_and_weighted() {
        let d = [dest(0, 1, 0, 0), dest(1, 9, 0, 0), dest(2, 0, 0, 0)];
        let (a, b) = (
            plan_of(Scheduler::Twos, &d, 1000),
            plan_of(Scheduler::Twos, &d, 1000),
        );
        assert_eq!(a, b);
        assert!(a.iter().all(|&i| i != 2));
        let heavy = a.iter().filter(|&&i| i == 1).count();
        assert!((850..=950).contains(&heavy), "{heavy}");
        // The random state goes on between recomputations.
        let mut st = State::default();
        let first = replan(&mut st, Scheduler::Twos, &d, 64);
        let second = replan(&mut st, Scheduler::Twos, &d, 64);
        assert_eq!(first, a[..64]);
        assert_ne!(first, second);
    }

    fn hash_slots(s: Scheduler, flags: SchedFlags, dests: &[Dest]) -> Vec<u32> {
        slots(table(s, flags, &mut State::default(), dests, &params(8)))
    }

    fn count(slots: &[u32], i: u32) -> usize {
        slots.iter().filter(|&&s| s == i).count()
    }

    #[test]
    fn sh_distribution_follows_weights() {
        let f = SchedFlags::default();
        let s = hash_slots(Scheduler::Sh, f, &[dest(0, 1, 0, 0), dest(1, 3, 0, 0)]);
        assert_eq!(s[..8], [0, 1, 1, 1, 0, 1, 1, 1]);
        assert_eq!((count(&s, 0), count(&s, 1)), (64, 192));
        // Loads play no part.
        let s2 = hash_slots(Scheduler::Sh, f, &[dest(0, 1, 900, 0), dest(1, 3, 0, 0)]);
        assert_eq!(s, s2);
        // A weight-0 server still holds one bucket per cycle, which gives no server.
        let d = [dest(0, 2, 0, 0), dest(1, 0, 0, 0), dest(2, 1, 0, 0)];
        let s = hash_slots(Scheduler::Sh, f, &d);
        assert_eq!(s[..8], [0, 0, NO_DEST, 2, 0, 0, NO_DEST, 2]);
        assert_eq!(
            (count(&s, 0), count(&s, NO_DEST), count(&s, 2)),
            (128, 64, 64)
        );
        // With sh-fallback those buckets go to available servers, as the kernel's walk from
        // bucket 2b finds them.
        let fb = SchedFlags {
            sh_fallback: true,
            ..f
        };
        let s = hash_slots(Scheduler::Sh, fb, &d);
        assert_eq!(count(&s, NO_DEST), 0);
        assert_eq!(s[2], 0); // bucket 4 (= 2 * 2) holds server 0
        assert_eq!(s[7], 2); // bucket 14 holds server 1 (quiesced), 15 server 2
        assert!(hash_slots(Scheduler::Sh, fb, &[dest(0, 0, 0, 0)])
            .iter()
            .all(|&s| s == NO_DEST));
        assert!(hash_slots(Scheduler::Sh, fb, &[])
            .iter()
            .all(|&s| s == NO_DEST));
    }

    #[test]
    fn dh_ignores_weights() {
        let s = hash_slots(
            Scheduler::Dh,
            SchedFlags::default(),
            &[dest(0, 1, 0, 0), dest(1, 3, 0, 0)],
        );
        assert_eq!((count(&s, 0), count(&s, 1)), (128, 128));
        let d = [dest(0, 1, 0, 0), dest(1, 0, 0, 0), dest(2, 5, 0, 0)];
        let s = hash_slots(Scheduler::Dh, SchedFlags::default(), &d);
        assert_eq!(s[..6], [0, NO_DEST, 2, 0, NO_DEST, 2]);
    }

    /// IPVS fills sh and dh buckets in the order servers were added; xvs in key order, so a
    /// director configured in another order (another list, other indices) builds the same
    /// table once indices are named by address.
    #[test]
    fn sh_and_dh_walk_servers_in_key_order_not_configuration_order() {
        let f = SchedFlags::default();
        // Added last, lowest key: it still takes the first buckets.
        let d = [dest(2, 2, 0, 0), dest(1, 1, 0, 0), dest(0, 3, 0, 0)];
        assert_eq!(key_order(&d), [2, 1, 0]);
        let s = hash_slots(Scheduler::Sh, f, &d);
        assert_eq!(s[..8], [2, 2, 2, 1, 0, 0, 2, 2]);
        let s = hash_slots(Scheduler::Dh, f, &d);
        assert_eq!(s[..4], [2, 1, 0, 2]);
        // Same servers, configured in key order: the same servers in every bucket.
        let sorted = [d[2], d[1], d[0]];
        let named = |slots: Vec<u32>, d: &[Dest]| -> Vec<SocketAddr> {
            slots.iter().map(|&i| d[i as usize].addr).collect()
        };
        for s in [Scheduler::Sh, Scheduler::Dh] {
            assert_eq!(
                named(hash_slots(s, f, &d), &d),
                named(hash_slots(s, f, &sorted), &sorted),
                "{s}"
            );
        }
    }

    fn rewalk(state: &mut State, s: Scheduler, dests: &[Dest], now: Duration) -> Vec<u32> {
        slots(table_at(
            s,
            SchedFlags::default(),
            state,
            dests,
            &params(8),
            now,
        ))
    }

    #[test]
    fn lblc_keeps_buckets_on_their_server() {
        let mut st = State::default();
        let d = [dest(0, 1, 0, 0), dest(1, 3, 0, 0)];
        // A first walk from zero spreads the buckets by weight (wlc picks).
        let first = rewalk(&mut st, Scheduler::Lblc, &d, Duration::ZERO);
        assert_eq!((count(&first, 0), count(&first, 1)), (64, 192));
        // Loads change, buckets stay (neither server is over its weight with another under half).
        let d = [dest(0, 1, 1, 900), dest(1, 3, 0, 0)];
        assert_eq!(rewalk(&mut st, Scheduler::Lblc, &d, Duration::ZERO), first);
        // Quiesced: its buckets move; back: they stay where they went.
        let q = [dest(0, 0, 1, 0), dest(1, 3, 0, 0)];
        assert!(rewalk(&mut st, Scheduler::Lblc, &q, Duration::ZERO)
            .iter()
            .all(|&s| s == 1));
        assert!(rewalk(&mut st, Scheduler::Lblc, &d, Duration::ZERO)
            .iter()
            .all(|&s| s == 1));
        // No server at all: no slot, entries kept.
        let none = [dest(0, 0, 0, 0), dest(1, 0, 0, 0)];
        assert!(rewalk(&mut st, Scheduler::Lblc, &none, Duration::ZERO)
            .iter()
            .all(|&s| s == NO_DEST));
        assert!(rewalk(&mut st, Scheduler::Lblc, &d, Duration::ZERO)
            .iter()
            .all(|&s| s == 1));
    }

    #[test]
    fn lblc_moves_buckets_off_servers_over_their_weight_to_an_idle_one() {
        let mut st = State::default();
        let d = [dest(0, 1, 0, 0), dest(1, 1, 0, 0)];
        let first = rewalk(&mut st, Scheduler::Lblc, &d, Duration::ZERO);
        assert_eq!((count(&first, 0), count(&first, 1)), (128, 128));
        // Both over their weight, a new server of weight 10 under half of it: buckets move to
        // it until it holds 5 (then 5 * 2 < 10 no longer holds).
        let d = [dest(0, 1, 50, 0), dest(1, 1, 50, 0), dest(2, 10, 0, 0)];
        let next = rewalk(&mut st, Scheduler::Lblc, &d, Duration::ZERO);
        assert_eq!(count(&next, 2), 5);
        assert_eq!(next[..5], [2; 5]);
        assert_eq!(next[5..], first[5..]);
        // A server gone from the service loses its buckets.
        let d = [dest(1, 1, 50, 0), dest(2, 10, 5, 0)];
        let gone = rewalk(&mut st, Scheduler::Lblc, &d, Duration::ZERO);
        assert!(gone.iter().all(|&s| s == 0 || s == 1));
        assert_eq!(count(&gone, 0), count(&next, 1));
    }

    #[test]
    fn lblcr_sets_grow_under_load_and_shrink_when_old() {
        let h = Duration::from_secs(3600);
        let mut st = State::default();
        let d = [dest(0, 1, 0, 0), dest(1, 1, 0, 0)];
        let first = rewalk(&mut st, Scheduler::Lblcr, &d, Duration::ZERO);
        assert_eq!(first[..4], [0, 1, 0, 1]);
        let sizes = |st: &State| -> Vec<usize> {
            st.lblcr
                .iter()
                .map(|s| s.as_ref().map_or(0, |s| s.members.len()))
                .collect()
        };
        assert!(sizes(&st).iter().all(|&n| n == 1));
        // Server 0 over its weight while server 2 (new) is under half of its: the buckets of
        // server 0 take in the wlc pick, server 2, until it is no longer under half its weight
        // (5 picks); server 1 is at its weight, not over, and keeps its buckets.
        let d = [dest(0, 1, 40, 0), dest(1, 2, 2, 0), dest(2, 10, 0, 0)];
        let grown = rewalk(&mut st, Scheduler::Lblcr, &d, h);
        assert_eq!(grown[..12], [2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 0, 1]);
        assert_eq!(sizes(&st).iter().filter(|&&n| n == 2).count(), 5);
        // Under light load the set's least loaded member serves the bucket: 0 / 1 beats 768 / 10.
        let d = [dest(0, 1, 0, 0), dest(1, 2, 2, 0), dest(2, 10, 3, 0)];
        let calm = rewalk(&mut st, Scheduler::Lblcr, &d, 2 * h);
        assert_eq!(calm[..4], [0, 1, 0, 1]);
        // A day after the growth (not more): nothing changes. Then the most loaded member, by
        // overhead over weight, leaves each two-server set; the bucket keeps the least loaded.
        // (Server 2 at half its weight: server 0 is not is_overloaded, no set grows.)
        let d = [dest(0, 1, 9, 0), dest(1, 2, 2, 0), dest(2, 10, 5, 0)];
        rewalk(&mut st, Scheduler::Lblcr, &d, h + LBLCR_EXPIRATION);
        assert_eq!(sizes(&st).iter().filter(|&&n| n == 2).count(), 5);
        let after = rewalk(&mut st, Scheduler::Lblcr, &d, 2 * h + LBLCR_EXPIRATION);
        assert!(sizes(&st).iter().all(|&n| n == 1));
        assert_eq!(after[..4], [2, 1, 2, 1]);
        let members = &st.lblcr[0].as_ref().unwrap().members;
        assert_eq!(members, &[addr(2)]);
    }

    #[test]
    fn lblcr_drops_removed_servers() {
        let mut st = State::default();
        let d = [dest(0, 1, 0, 0), dest(1, 1, 0, 0)];
        rewalk(&mut st, Scheduler::Lblcr, &d, Duration::ZERO);
        let d = [dest(1, 1, 0, 0)];
        let after = rewalk(&mut st, Scheduler::Lblcr, &d, Duration::from_secs(1));
        assert!(after.iter().all(|&s| s == 0));
        assert!(st
            .lblcr
            .iter()
            .all(|s| s.as_ref().unwrap().members == [addr(1)]));
    }

    #[test]
    fn schedulers_outside_ipvs_rs_are_handed_back() {
        let d = [dest(0, 1, 0, 0), dest(1, 3, 0, 0)];
        for s in [Scheduler::Rr, Scheduler::Wrr, Scheduler::Mh] {
            let ours = table(
                s,
                SchedFlags::default(),
                &mut State::default(),
                &d,
                &params(8),
            );
            let theirs = Scheduling::new(s, SchedFlags::default()).table(&d, &params(8));
            assert_eq!(ours, theirs, "{s:?}");
        }
    }
}
