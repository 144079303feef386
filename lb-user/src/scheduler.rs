//! Scheduler tables: the controller turns a service's real servers and weights into a sequence of
//! slots; the data plane hands new connections out in that order with a per-CPU cursor.

use crate::model::Scheduler;

/// Longest table one service may have. A weighted-round-robin cycle longer than this is scaled
/// down proportionally (each server keeps at least one slot).
pub const MAX_TABLE_LEN: usize = 65536;

/// Builds the table for `scheduler` over servers with these weights: each entry is an index into
/// `weights`. Servers with weight 0 never appear (quiesced). Empty when no server can take traffic.
pub fn table(scheduler: Scheduler, weights: &[u32]) -> Vec<usize> {
    match scheduler {
        Scheduler::Rr => (0..weights.len()).filter(|&i| weights[i] > 0).collect(),
        Scheduler::Wrr => wrr(&fit_weights(weights, MAX_TABLE_LEN)),
    }
}

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

    #[test]
    fn rr_skips_quiesced() {
        assert_eq!(table(Scheduler::Rr, &[1, 0, 5]), vec![0, 2]);
        assert!(table(Scheduler::Rr, &[0, 0]).is_empty());
        assert!(table(Scheduler::Wrr, &[0, 0]).is_empty());
        assert!(table(Scheduler::Wrr, &[]).is_empty());
    }

    #[test]
    fn long_cycles_are_scaled() {
        let weights = [65535, 65534, 1];
        let t = table(Scheduler::Wrr, &weights);
        assert!(t.len() <= MAX_TABLE_LEN, "{}", t.len());
        let count = |i| t.iter().filter(|&&x| x == i).count() as f64;
        assert!((count(0) / count(1) - 1.0).abs() < 0.01);
        assert!(count(2) >= 1.0);
    }
}
