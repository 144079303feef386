//! Scheduler tables: the controller turns a service's real servers, weights and live connection
//! counts into a table the data plane applies to new flows in O(1): either a sequence handed out
//! with one shared cursor per service (rr, wrr, and the load-aware schedulers' plan for the next
//! burst of new connections) or a hash table indexed by a hash of the flow's addresses (sh, dh, mh, lblc, lblcr).

pub mod digest;
pub mod ipvs;
pub mod maglev;

use std::net::SocketAddr;

use crate::model::{SchedFlags, Scheduler};

/// Buckets of the sh, dh, lblc and lblcr hash tables (IPVS's IP_VS_SH_TAB_SIZE / IP_VS_DH_TAB_SIZE).
pub const HASH_BUCKETS: usize = 256;

/// A hash-table slot with no real server: new flows hashing there are dropped (counted).
pub const NO_DEST: u32 = u32::MAX;

/// One real server as the scheduler sees it at a recomputation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dest {
    /// The real server's address: its identity for hashing (Maglev permutations).
    pub addr: SocketAddr,
    /// Weight; 0 = quiesced (takes no new connections).
    pub weight: u32,
    /// Connections IPVS would count as active (TCP ESTABLISHED).
    pub active: u32,
    /// Connections IPVS would count as inactive (every other live TCP state, and UDP).
    pub inactive: u32,
    /// Upper connection threshold (`-x`), 0 = none.
    pub u_threshold: u32,
    /// Lower connection threshold (`-y`), 0 = none.
    pub l_threshold: u32,
}

/// What a flow's hash is computed over, for hash tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashInput {
    /// The client's address (sh, mh).
    Source,
    /// The client's address and port (sh-port, mh-port).
    SourcePort,
    /// The destination address (dh, lblc, lblcr).
    Destination,
}

/// What the data plane applies to new flows of one service. Entries are indices into the `dests`
/// slice the table was computed from (or NO_DEST in a hash table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Table {
    /// Handed out in order, one entry per new flow, wrapping around.
    Sequence(Vec<u32>),
    /// A new flow takes `slots[flow_hash % slots.len()]`.
    Hash {
        /// The hashed fields.
        input: HashInput,
        /// One entry per bucket.
        slots: Vec<u32>,
    },
}

impl Table {
    /// Number of slots.
    pub fn len(&self) -> usize {
        match self {
            Table::Sequence(v) => v.len(),
            Table::Hash { slots, .. } => slots.len(),
        }
    }

    /// Whether no new flow can be placed.
    pub fn is_empty(&self) -> bool {
        match self {
            Table::Sequence(v) => v.is_empty(),
            Table::Hash { slots, .. } => slots.iter().all(|&s| s == NO_DEST),
        }
    }
}

/// Tunables of table computation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// Maglev table size (a prime).
    pub maglev_size: usize,
    /// Entries of a load-aware scheduler's plan: how many new connections one recomputation
    /// places before the next one.
    pub plan_len: usize,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            maglev_size: maglev::DEFAULT_SIZE,
            plan_len: 1024,
        }
    }
}

/// Whether a scheduler's table depends on live connection counts.
pub fn is_load_aware(s: Scheduler) -> bool {
    !matches!(
        s,
        Scheduler::Rr | Scheduler::Wrr | Scheduler::Sh | Scheduler::Dh | Scheduler::Mh
    )
}

/// One service's scheduler with the state it keeps between recomputations (IPVS's overload
/// flags, lblc/lblcr assignments, twos' random state).
#[derive(Clone, Debug)]
pub struct Scheduling {
    /// The scheduler.
    pub scheduler: Scheduler,
    /// Its flags.
    pub flags: SchedFlags,
    state: ipvs::State,
}

impl Scheduling {
    /// A fresh scheduler.
    pub fn new(scheduler: Scheduler, flags: SchedFlags) -> Scheduling {
        Scheduling {
            scheduler,
            flags,
            state: ipvs::State::default(),
        }
    }

    /// Whether the table depends on live connection counts, so it must be recomputed as they
    /// change.
    pub fn is_load_aware(&self) -> bool {
        is_load_aware(self.scheduler)
    }

    /// Computes the table over `dests` (in the service's real-server order).
    pub fn table(&mut self, dests: &[Dest], params: &Params) -> Table {
        if !matches!(
            self.scheduler,
            Scheduler::Rr | Scheduler::Wrr | Scheduler::Mh
        ) {
            return ipvs::table(self.scheduler, self.flags, &mut self.state, dests, params);
        }
        // rr, wrr and mh skip overloaded servers (IP_VS_DEST_F_OVERLOAD), as IPVS's do; with
        // no thresholds nothing is ever overloaded.
        let overloaded = if dests.iter().any(|d| d.u_threshold > 0) {
            ipvs::overload_flags(&mut self.state, dests)
        } else {
            vec![false; dests.len()]
        };
        match self.scheduler {
            Scheduler::Rr => Table::Sequence(
                (0..dests.len() as u32)
                    .filter(|&i| dests[i as usize].weight > 0 && !overloaded[i as usize])
                    .collect(),
            ),
            Scheduler::Wrr => {
                let weights: Vec<u32> = dests
                    .iter()
                    .zip(&overloaded)
                    .map(|(d, &o)| if o { 0 } else { d.weight })
                    .collect();
                Table::Sequence(
                    wrr(&fit_weights(&weights, MAX_TABLE_LEN))
                        .into_iter()
                        .map(|i| i as u32)
                        .collect(),
                )
            }
            _ => {
                // mh-fallback: the table is built without overloaded servers (their clients
                // move, nobody else's beyond Maglev's bound); without it their slots have no
                // server, as IPVS returns none.
                if self.flags.mh_fallback {
                    let usable: Vec<Dest> = dests
                        .iter()
                        .zip(&overloaded)
                        .map(|(d, &o)| Dest {
                            weight: if o { 0 } else { d.weight },
                            ..*d
                        })
                        .collect();
                    maglev::service_table(&usable, self.flags, params.maglev_size)
                } else {
                    match maglev::service_table(dests, self.flags, params.maglev_size) {
                        Table::Hash { input, slots } => Table::Hash {
                            input,
                            slots: slots
                                .into_iter()
                                .map(|i| {
                                    if i != NO_DEST && overloaded[i as usize] {
                                        NO_DEST
                                    } else {
                                        i
                                    }
                                })
                                .collect(),
                        },
                        other => other,
                    }
                }
            }
        }
    }
}

/// Longest table one service may have. A weighted-round-robin cycle longer than this is scaled
/// down proportionally (each server keeps at least one slot).
pub const MAX_TABLE_LEN: usize = 65536;

/// IPVS's weighted round robin (net/netfilter/ipvs/ip_vs_wrr.c, ip_vs_wrr_schedule): the current
/// weight `cw` starts at the maximum weight and steps down by the weights' gcd; at each step every
/// server whose weight is at least `cw` is chosen, in list order. One full cycle of that walk is
/// the table, so the data plane reproduces IPVS's sequence (entered at another phase).
pub fn wrr(weights: &[u32]) -> Vec<usize> {
    let max = weights.iter().copied().max().unwrap_or(0);
    if max == 0 {
        return Vec::new();
    }
    let step = weights.iter().copied().filter(|&w| w > 0).fold(0, gcd);
    let mut out = Vec::new();
    let mut cw = max;
    while cw > 0 {
        out.extend((0..weights.len()).filter(|&i| weights[i] >= cw));
        cw -= step;
    }
    out
}

/// Scales weights so their wrr cycle fits in `max_len` slots, keeping proportions as far as
/// integers allow and every non-zero weight at least 1.
pub fn fit_weights(weights: &[u32], max_len: usize) -> Vec<u32> {
    let step = weights
        .iter()
        .copied()
        .filter(|&w| w > 0)
        .fold(0, gcd)
        .max(1) as u64;
    let cycle: u64 = weights.iter().map(|&w| w as u64 / step).sum();
    if cycle as usize <= max_len {
        return weights.to_vec();
    }
    let total: u64 = weights.iter().map(|&w| w as u64).sum();
    let budget = (max_len - weights.len()) as u64;
    weights
        .iter()
        .map(|&w| {
            if w == 0 {
                0
            } else {
                ((w as u64 * budget / total) as u32).max(1)
            }
        })
        .collect()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference model of IPVS's scheduler as the kernel has it today
    /// (net/netfilter/ipvs/ip_vs_wrr.c: ip_vs_wrr_init_svc sets di = gcd, mw = max - (di - 1),
    /// cw = mw, cl = list head; ip_vs_wrr_schedule walks on from cl, and each time it passes the
    /// head it lowers cw by di, wrapping to mw when cw <= 0; it returns the first server whose
    /// weight is >= cw).
    fn ipvs_wrr_reference(weights: &[u32], picks: usize) -> Vec<usize> {
        let n = weights.len() as isize;
        let di = weights
            .iter()
            .copied()
            .filter(|&w| w > 0)
            .fold(0, gcd)
            .max(1) as i64;
        let mw = *weights.iter().max().unwrap() as i64 - (di - 1);
        let mut cl: isize = -1; // the list head
        let mut cw: i64 = mw;
        let mut out = Vec::new();
        while out.len() < picks {
            cl += 1;
            if cl == n {
                cl = -1;
                continue;
            }
            if cl == 0 {
                cw -= di;
                if cw <= 0 {
                    cw = mw;
                }
            }
            if weights[cl as usize] as i64 >= cw {
                out.push(cl as usize);
            }
        }
        out
    }

    #[test]
    fn wrr_matches_ipvs_sequence() {
        for weights in [
            vec![1, 3],
            vec![3, 1],
            vec![5, 3, 2],
            vec![4, 0, 2],
            vec![2, 2, 2],
            vec![100, 7, 1],
            vec![6, 4],
        ] {
            let table = wrr(&weights);
            let g = weights.iter().copied().filter(|&w| w > 0).fold(0, gcd);
            let expected_len = weights.iter().sum::<u32>() / g;
            assert_eq!(table.len(), expected_len as usize, "{weights:?}");
            // The kernel's sequence is our cycle, entered at some phase.
            let reference = ipvs_wrr_reference(&weights, 2 * table.len());
            let found = (0..table.len()).any(|phase| {
                (0..reference.len()).all(|i| reference[i] == table[(phase + i) % table.len()])
            });
            assert!(found, "{weights:?}: table {table:?} vs IPVS {reference:?}");
        }
    }

    #[test]
    fn wrr_one_to_three() {
        assert_eq!(wrr(&[1, 3]), vec![1, 1, 0, 1]);
    }

    fn dests(weights: &[u32]) -> Vec<Dest> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Dest {
                addr: SocketAddr::from(([198, 51, 100, i as u8 + 1], 80)),
                weight,
                active: 0,
                inactive: 0,
                u_threshold: 0,
                l_threshold: 0,
            })
            .collect()
    }

    fn table(s: Scheduler, weights: &[u32]) -> Table {
        Scheduling::new(s, SchedFlags::default()).table(&dests(weights), &Params::default())
    }

    #[test]
    fn rr_skips_quiesced() {
        assert_eq!(
            table(Scheduler::Rr, &[1, 0, 5]),
            Table::Sequence(vec![0, 2])
        );
        assert!(table(Scheduler::Rr, &[0, 0]).is_empty());
        assert!(table(Scheduler::Wrr, &[0, 0]).is_empty());
        assert!(table(Scheduler::Wrr, &[]).is_empty());
    }

    #[test]
    fn rr_wrr_mh_skip_overloaded_servers() {
        let mut d = dests(&[1, 3]);
        d[1].u_threshold = 5;
        d[1].active = 5;
        for s in [Scheduler::Rr, Scheduler::Wrr] {
            let t = Scheduling::new(s, SchedFlags::default()).table(&d, &Params::default());
            assert_eq!(t, Table::Sequence(vec![0]), "{s}");
        }
        let Table::Hash { slots, .. } =
            Scheduling::new(Scheduler::Mh, SchedFlags::default()).table(&d, &Params::default())
        else {
            panic!("mh is a hash table")
        };
        assert!(slots.contains(&NO_DEST) && !slots.contains(&1));
        let fallback = SchedFlags::parse("mh-fallback").unwrap();
        let Table::Hash { slots, .. } =
            Scheduling::new(Scheduler::Mh, fallback).table(&d, &Params::default())
        else {
            panic!("mh is a hash table")
        };
        assert!(slots.iter().all(|&s| s == 0));
        // Below three quarters of the threshold the server is back.
        d[1].active = 3;
        let mut s = Scheduling::new(Scheduler::Rr, SchedFlags::default());
        d[1].active = 5;
        assert_eq!(s.table(&d, &Params::default()), Table::Sequence(vec![0]));
        d[1].active = 3;
        assert_eq!(s.table(&d, &Params::default()), Table::Sequence(vec![0, 1]));
    }

    #[test]
    fn wlc_plan_avoids_the_loaded_server() {
        let mut d = dests(&[1, 1]);
        d[0].active = 10;
        let Table::Sequence(plan) =
            Scheduling::new(Scheduler::Wlc, SchedFlags::default()).table(&d, &Params::default())
        else {
            panic!("wlc is a sequence")
        };
        assert_eq!(plan[..10], [1; 10], "{:?}", &plan[..20]);
        // Then equal load: alternating, the first server first on ties.
        assert_eq!(plan[10..14], [0, 1, 0, 1]);
    }

    /// A hash table as server addresses: what the data plane applies, whatever indices (and
    /// so backend slot ids) a director gave the servers.
    fn by_addr(t: &Table, dests: &[Dest]) -> (HashInput, Vec<Option<SocketAddr>>) {
        let Table::Hash { input, slots } = t else {
            panic!("a hash table, got {t:?}")
        };
        let slots = slots
            .iter()
            .map(|&i| (i != NO_DEST).then(|| dests[i as usize].addr))
            .collect();
        (*input, slots)
    }

    /// Issue 18: directors behind ECMP must agree on every flow of a hash scheduler, so its
    /// table (as addresses) must not depend on the order the servers were configured in. Weights
    /// unequal and one server quiesced, so sh's runs and dh's turns both show.
    #[test]
    fn hash_tables_do_not_depend_on_configuration_order() {
        let mut d = dests(&[3, 1, 0, 2, 5, 1, 4]);
        // One IPv6 server too: keys of both lengths.
        d[5].addr = "[2001:db8::7]:8080".parse().unwrap();
        let orders: Vec<Vec<Dest>> = vec![
            d.iter().rev().copied().collect(),
            (0..d.len()).map(|i| d[(i * 3 + 2) % d.len()]).collect(),
            {
                let mut r = d.clone();
                r.rotate_left(4);
                r
            },
        ];
        let flags = |s: &str| SchedFlags::parse(s).unwrap();
        let mut differ = Vec::new();
        for (s, f) in [
            (Scheduler::Mh, flags("")),
            (Scheduler::Mh, flags("mh-port")),
            (Scheduler::Mh, flags("mh-fallback")),
            (Scheduler::Mh, flags("mh-fallback,mh-port")),
            (Scheduler::Sh, flags("")),
            (Scheduler::Sh, flags("sh-port")),
            (Scheduler::Sh, flags("sh-fallback")),
            (Scheduler::Sh, flags("sh-fallback,sh-port")),
            (Scheduler::Dh, flags("")),
        ] {
            let params = Params {
                maglev_size: 251,
                ..Params::default()
            };
            let want = by_addr(&Scheduling::new(s, f).table(&d, &params), &d);
            for (n, other) in orders.iter().enumerate() {
                let got = by_addr(&Scheduling::new(s, f).table(other, &params), other);
                assert_eq!(got.0, want.0, "{s} {f:?}");
                let moved = got.1.iter().zip(&want.1).filter(|(a, b)| a != b).count();
                if moved > 0 {
                    differ.push(format!("{s} {:?} order {n}: {moved} slots", f.names()));
                }
            }
        }
        assert!(differ.is_empty(), "{differ:#?}");
    }

    #[test]
    fn long_cycles_are_scaled() {
        let weights = [65535, 65534, 1];
        let Table::Sequence(t) = table(Scheduler::Wrr, &weights) else {
            panic!("wrr is a sequence")
        };
        assert!(t.len() <= MAX_TABLE_LEN, "{}", t.len());
        let count = |i| t.iter().filter(|&&x| x == i).count() as f64;
        assert!((count(0) / count(1) - 1.0).abs() < 0.01);
        assert!(count(2) >= 1.0);
    }
}
