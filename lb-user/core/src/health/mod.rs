//! The pure parts of health checking: the state machine that turns check outcomes into up and
//! down (keepalived's retry and xvs's rise count), and the latency histogram a check keeps.
//! The checks themselves (tasks, probes) are the daemon's (lb-user's `health`).

pub mod machine;

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Up or down, as the health checks decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// Passing (or not failed enough yet).
    Up,
    /// Failed `retry + 1` times in a row; `rise` successes bring it back.
    Down,
}

/// Upper bounds of the latency histogram's buckets, seconds.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Durations in buckets, as a Prometheus histogram keeps them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyHistogram {
    /// Observations per bucket of [`LATENCY_BUCKETS`] (not cumulative); above the last: only
    /// in `count`.
    pub buckets: [u64; 14],
    /// Sum of the observations, seconds.
    pub sum_s: f64,
    /// Observations.
    pub count: u64,
}

impl LatencyHistogram {
    /// Adds one observation.
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| s <= *b) {
            self.buckets[i] += 1;
        }
        self.sum_s += s;
        self.count += 1;
    }

    /// Adds another histogram's observations.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.sum_s += other.sum_s;
        self.count += other.count;
    }

    /// The bucket bound under which at least `q` (0..=1) of the observations fall, None when
    /// they are above every bucket.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        let want = (self.count as f64 * q).ceil() as u64;
        let mut seen = 0;
        for (b, n) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            seen += n;
            if seen >= want {
                return Some(*b);
            }
        }
        None
    }
}
