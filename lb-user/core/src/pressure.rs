//! Pressure on the connection table: how full it is, how many entries are made per second, and
//! how many TCP packets arrive mid-flow for a connection the table no longer has (each one a
//! connection that may have moved to another real server), with the rule for when xvsd warns.
//!
//! Pure: xvsd samples the data plane's counters (`conn_new`, `conn_midflow_miss`) and the fill
//! its connection-table walk found, and feeds them in here.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Live entries over capacity, in percent, above which the table is under pressure: the LRU
/// then evicts connections that are still alive to make room for new ones.
pub const FILL_WARN_PERCENT: u64 = 90;
/// Mid-flow misses per second above which connections are being lost. A healthy director sees
/// a few (a client that comes back after its connection's idle timeout); a table too small for
/// its traffic, or flooded, sees them by the hundred.
pub const MIDFLOW_WARN_PER_S: u64 = 10;
/// At most one warning per this period (a flood must not flood the log as well).
pub const WARN_INTERVAL: Duration = Duration::from_secs(60);
/// A walk's fill older than this is not warned about (the walks come with the load-aware
/// schedulers' recomputation each second, or with listings and scrapes, which may be rare).
pub const FILL_MAX_AGE: Duration = Duration::from_secs(10);

/// The connection table as the last walk found it, with the rates of the last sampling period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableStatus {
    /// Entries in the table, expired ones included (they hold their slot until the LRU evicts
    /// them or their flow comes back).
    pub entries: u64,
    /// Of those, entries not expired whose real server is still configured.
    pub live: u64,
    /// New entries per second (the `conn_new` counter's rate): SYNs, and mid-flow misses.
    pub new_per_s: u64,
    /// TCP packets per second that arrived mid-flow for a connection the table did not have.
    pub midflow_miss_per_s: u64,
    /// Their total since the data plane was created (`conn_midflow_miss`).
    pub midflow_misses: u64,
}

/// Rates per second from two readings of a counter `elapsed` apart (0 for no time, or for a
/// counter that went back: zeroed, or the data plane replaced).
pub fn rate(before: u64, after: u64, elapsed: Duration) -> u64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 || after < before {
        return 0;
    }
    ((after - before) as f64 / secs).round() as u64
}

/// Live entries as a percentage of `capacity` (rounded down; 0 for no capacity).
pub fn fill_percent(live: u64, capacity: u64) -> u64 {
    (live * 100).checked_div(capacity).unwrap_or(0)
}

/// What a warning reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Warning {
    /// Live entries.
    pub live: u64,
    /// Entries, expired ones included.
    pub entries: u64,
    /// Capacity.
    pub capacity: u64,
    /// Live entries over capacity, percent.
    pub fill_percent: u64,
    /// New entries per second.
    pub new_per_s: u64,
    /// Mid-flow misses per second.
    pub midflow_miss_per_s: u64,
    /// How long ago the walk that found the fill was (None: no walk yet).
    pub fill_age: Option<Duration>,
}

/// Follows the counters from sample to sample and decides when to warn.
#[derive(Clone, Debug, Default)]
pub struct Pressure {
    /// The previous counter reading: when (since any fixed origin), conn_new, midflow misses.
    last: Option<(Duration, u64, u64)>,
    /// Rates from the last two readings.
    new_per_s: u64,
    midflow_miss_per_s: u64,
    midflow_misses: u64,
    /// Fill from the last walk: (when, entries, live).
    fill: Option<(Duration, u64, u64)>,
    /// When the last warning was given.
    warned_at: Option<Duration>,
}

impl Pressure {
    /// A reading of the counters at `now` (any monotonic clock, the same at every call).
    pub fn sample(&mut self, now: Duration, conn_new: u64, midflow: u64) {
        if let Some((at, new0, mid0)) = self.last {
            let elapsed = now.saturating_sub(at);
            self.new_per_s = rate(new0, conn_new, elapsed);
            self.midflow_miss_per_s = rate(mid0, midflow, elapsed);
        }
        self.last = Some((now, conn_new, midflow));
        self.midflow_misses = midflow;
    }

    /// What a connection-table walk found at `now`.
    pub fn walked(&mut self, now: Duration, entries: u64, live: u64) {
        self.fill = Some((now, entries, live));
    }

    /// The table as last seen (entries and live are 0 before any walk).
    pub fn status(&self) -> TableStatus {
        let (_, entries, live) = self.fill.unwrap_or_default();
        TableStatus {
            entries,
            live,
            new_per_s: self.new_per_s,
            midflow_miss_per_s: self.midflow_miss_per_s,
            midflow_misses: self.midflow_misses,
        }
    }

    /// A warning when live entries were above [`FILL_WARN_PERCENT`] of `capacity` at a walk
    /// no older than [`FILL_MAX_AGE`], or mid-flow misses are above [`MIDFLOW_WARN_PER_S`]; at
    /// most one per [`WARN_INTERVAL`].
    pub fn check(&mut self, now: Duration, capacity: u64) -> Option<Warning> {
        let (walked, entries, live) = self.fill.unwrap_or_default();
        let fill = fill_percent(live, capacity);
        let fill_age = self.fill.map(|_| now.saturating_sub(walked));
        let fresh = fill_age.is_some_and(|age| age <= FILL_MAX_AGE);
        let pressed =
            (fresh && fill > FILL_WARN_PERCENT) || self.midflow_miss_per_s > MIDFLOW_WARN_PER_S;
        if !pressed {
            return None;
        }
        if self
            .warned_at
            .is_some_and(|at| now.saturating_sub(at) < WARN_INTERVAL)
        {
            return None;
        }
        self.warned_at = Some(now);
        Some(Warning {
            live,
            entries,
            capacity,
            fill_percent: fill,
            new_per_s: self.new_per_s,
            midflow_miss_per_s: self.midflow_miss_per_s,
            fill_age,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn rates_are_per_second_and_never_negative() {
        assert_eq!(rate(100, 300, S(2)), 100);
        assert_eq!(rate(0, 5, Duration::from_millis(500)), 10);
        // Zeroed counters (-Z) or a replaced data plane: no rate, not a huge one.
        assert_eq!(rate(300, 100, S(2)), 0);
        assert_eq!(rate(1, 2, Duration::ZERO), 0);
    }

    #[test]
    fn fill_is_live_over_capacity() {
        assert_eq!(fill_percent(3687, 4096), 90);
        assert_eq!(fill_percent(3700, 4096), 90);
        assert_eq!(fill_percent(4096, 4096), 100);
        assert_eq!(fill_percent(1, 0), 0);
    }

    #[test]
    fn rates_follow_samples() {
        let mut p = Pressure::default();
        p.sample(S(10), 1_000, 7);
        // One reading is no rate yet.
        assert_eq!(p.status().new_per_s, 0);
        p.sample(S(12), 201_000, 47);
        let s = p.status();
        assert_eq!(
            (s.new_per_s, s.midflow_miss_per_s, s.midflow_misses),
            (100_000, 20, 47)
        );
    }

    #[test]
    fn a_quiet_table_gives_no_warning() {
        let mut p = Pressure::default();
        p.sample(S(0), 0, 0);
        p.sample(S(2), 10_000, 20); // 10 misses per second: the threshold, not above it
        p.walked(S(2), 4096, 3686); // 89%
        assert_eq!(p.check(S(2), 4096), None);
    }

    #[test]
    fn fill_above_the_threshold_warns_once_per_interval() {
        let mut p = Pressure::default();
        p.sample(S(0), 0, 0);
        p.sample(S(2), 2_000, 0);
        p.walked(S(1), 4096, 3800); // 92%
        let w = p.check(S(2), 4096).expect("a warning");
        assert_eq!(
            w,
            Warning {
                live: 3800,
                entries: 4096,
                capacity: 4096,
                fill_percent: 92,
                new_per_s: 1_000,
                midflow_miss_per_s: 0,
                fill_age: Some(S(1)),
            }
        );
        // Still full: quiet until the interval has passed.
        p.walked(S(30), 4096, 3800);
        assert_eq!(p.check(S(30), 4096), None);
        p.walked(S(61), 4096, 3800);
        assert_eq!(p.check(S(61), 4096), None);
        assert!(p.check(S(62), 4096).is_some());
    }

    #[test]
    fn a_stale_fill_is_not_warned_about() {
        let mut p = Pressure::default();
        p.walked(S(0), 4096, 4000);
        // No walk since (no load-aware scheduler, no listing): the table may have emptied.
        assert_eq!(p.check(S(11), 4096), None);
        // Misses still warn, and say how old the fill they show is.
        p.sample(S(11), 0, 0);
        p.sample(S(13), 0, 100);
        let w = p.check(S(13), 4096).expect("a warning");
        assert_eq!((w.midflow_miss_per_s, w.fill_age), (50, Some(S(13))));
    }

    #[test]
    fn midflow_misses_above_the_threshold_warn_with_a_roomy_table() {
        let mut p = Pressure::default();
        p.sample(S(0), 0, 100);
        p.sample(S(2), 50, 150); // 25 misses per second
        p.walked(S(2), 10, 5);
        let w = p.check(S(2), 1 << 20).expect("a warning");
        assert_eq!((w.midflow_miss_per_s, w.fill_percent), (25, 0));
        // The misses stop: no more warnings, whatever the interval.
        p.sample(S(4), 60, 150);
        assert_eq!(p.check(S(100), 1 << 20), None);
    }
}
