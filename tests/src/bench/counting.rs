//! What live connection counts cost the daemon and how close they are to a full walk of the
//! connection table (issue 17): the table filled through the program, part of it expired, new
//! connections arriving while xvsd's incremental sweep takes one slice per second, as xvsd does.

use std::{collections::HashMap, time::Duration};

use anyhow::{ensure, Result};
use lb_common::DataplaneConfig;
use lb_user::dataplane::{sweep, ConnCounts, Dataplane};

use super::paths::{self, Scale};

/// The measurement.
#[derive(Clone, Debug)]
pub struct CountingBench {
    /// Connection-table capacity.
    pub capacity: u32,
    /// Connections put through the program before measuring.
    pub filled: usize,
    /// Of which expired (SYN_RECV past its timeout) when the sweep began.
    pub expired: u64,
    /// New connections between two sweep steps (one a second in xvsd).
    pub churn: usize,
    /// CPU of one full walk (what xvsd did every second).
    pub full_walk: Duration,
    /// CPU of reading the live counts (what `xvsadm -L` and each plan refresh cost).
    pub live_read: Duration,
    /// Steps (seconds) one full sweep cycle took.
    pub steps: usize,
    /// CPU of a step in the first cycle (which removes the expired third): mean and slowest.
    pub first_mean: Duration,
    /// The first cycle's slowest step.
    pub first_max: Duration,
    /// CPU of a step in the second cycle (steady state): mean and slowest.
    pub step_mean: Duration,
    /// The slowest step.
    pub step_max: Duration,
    /// Live counts against a full walk before the cycle: |live - walk| / walk (all slots).
    pub error_before: f64,
    /// The same after the cycle.
    pub error_after: f64,
    /// The worst real server (with at least 1,000 connections) after the cycle.
    pub worst_after: f64,
    /// Entries the cycle removed, and counts its re-baselining corrected.
    pub swept: u64,
    /// Counts re-baselined.
    pub rebaselined: u64,
}

/// CPU time (user + system) of the calling thread.
fn thread_cpu() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above: `u` is a valid struct for getrusage to fill.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn cpu<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, Duration)> {
    let before = thread_cpu();
    let out = f()?;
    Ok((out, thread_cpu() - before))
}

/// (active + inactive) per slot.
fn totals(m: &HashMap<u32, ConnCounts>) -> HashMap<u32, u64> {
    m.iter().map(|(k, c)| (*k, c.active + c.inactive)).collect()
}

/// Total relative error, and the worst slot's among those the walk found >= `min` in.
fn errors(
    live: &HashMap<u32, ConnCounts>,
    walk: &HashMap<u32, ConnCounts>,
    min: u64,
) -> (f64, f64) {
    let (l, w) = (totals(live), totals(walk));
    let (mut diff, mut sum, mut worst) = (0u64, 0u64, 0f64);
    for (slot, c) in walk {
        for (a, b) in [
            (live.get(slot).map_or(0, |x| x.active), c.active),
            (live.get(slot).map_or(0, |x| x.inactive), c.inactive),
        ] {
            diff += a.abs_diff(b);
            sum += b;
        }
        let (a, b) = (l.get(slot).copied().unwrap_or(0), w[slot]);
        if b >= min {
            worst = worst.max(a.abs_diff(b) as f64 / b as f64);
        }
    }
    // Slots the walk has none in but the live counts do.
    for (slot, a) in &l {
        if !w.contains_key(slot) {
            diff += a;
        }
    }
    (diff as f64 / sum.max(1) as f64, worst)
}

/// Fills a table of `capacity` entries with `filled` connections (the first half a third
/// established, the rest half-open; the second half established), expires every half-open one,
/// then runs the sweep one step after another
/// (`churn` new connections before each) until it has covered the table once.
pub fn counting(capacity: u32, filled: usize, churn: usize) -> Result<CountingBench> {
    let scale = Scale {
        services: 32,
        reals: 10,
        conn_capacity: capacity,
        prefill: 0,
        runs: 1,
        reps: 1,
    };
    let mut dp: Dataplane = paths::director(&scale)?;
    // The first half: a third established, the rest half-open; the second half established.
    paths::new_connections(&mut dp, scale.services, 0, filled / 2, 3)?;
    paths::new_connections(&mut dp, scale.services, filled / 2, filled - filled / 2, 1)?;
    // Every half-open connection is past its timeout now: a third of the table, expired
    // without a packet to say so.
    let cfg = dp.current_config()?;
    dp.set_config(DataplaneConfig {
        tcp_syn_timeout_ns: 1,
        ..cfg
    })?;
    std::thread::sleep(Duration::from_millis(50));
    let (walk, full_walk) = cpu(|| Ok(dp.full_walk()?))?;
    let t = std::time::Instant::now();
    let live = dp.conn_counts()?;
    let live_read = t.elapsed();
    let walked: u64 = totals(&walk).values().sum();
    let counted: u64 = totals(&live).values().sum();
    let expired = counted.saturating_sub(walked);
    let (error_before, _) = errors(&live, &walk, 1000);
    let mut next = filled;
    let mut cycle = |dp: &mut Dataplane| -> Result<(usize, Duration, Duration)> {
        let cycles = dp.activity().sweep_cycles;
        let (mut steps, mut total, mut step_max) = (0usize, Duration::ZERO, Duration::ZERO);
        while dp.activity().sweep_cycles == cycles {
            ensure!(
                steps < 1000,
                "the sweep did not cover the table in 1000 steps"
            );
            paths::new_connections(dp, scale.services, next, churn, 1)?;
            next += churn;
            let ((), t) =
                cpu(|| Ok(dp.sweep_step(sweep::budget(Duration::from_secs(1), capacity))?))?;
            total += t;
            step_max = step_max.max(t);
            steps += 1;
        }
        Ok((steps, total / steps as u32, step_max))
    };
    // The first cycle removes the expired third; the second is the steady state.
    let (_, first_mean, first_max) = cycle(&mut dp)?;
    let walk = dp.full_walk()?;
    let live = dp.conn_counts()?;
    let (error_after, worst_after) = errors(&live, &walk, 1000);
    let (steps, step_mean, step_max) = cycle(&mut dp)?;
    let a = dp.activity();
    Ok(CountingBench {
        capacity,
        filled,
        expired,
        churn,
        full_walk,
        live_read,
        steps,
        first_mean,
        first_max,
        step_mean,
        step_max,
        error_before,
        error_after,
        worst_after,
        swept: a.swept,
        rebaselined: a.rebaselined,
    })
}
