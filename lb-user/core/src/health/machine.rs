//! The state machine of one check, as keepalived's checkers run it (check_tcp.c's tcp_epilog):
//! a failed check of an up server is retried `retry` times, `delay_before_retry` apart, before
//! the server is down; then checks go on every `delay_loop`. xvs adds a rise count: a down
//! server is up again after `rise` successes in a row, so a flapping server does not churn the
//! tables.
//!
//! It is pure (time comes in as arguments), so it is tested with a simulated clock.

use std::time::{Duration, Instant};

use super::HealthState;
use crate::check::Check;

/// The state of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    up: bool,
    /// Retries made since the last success of an up server.
    retries: u32,
    /// Successes in a row of a down server.
    successes: u32,
    retry: u32,
    rise: u32,
    interval: Duration,
    retry_delay: Duration,
}

/// What one attempt's outcome did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// The server changed state.
    pub change: Option<HealthState>,
    /// The next attempt is a retry (after the retry delay from now), not the next round.
    pub retry: bool,
}

impl Machine {
    /// A machine for `check`, starting up or down.
    pub fn new(check: &Check, up: bool) -> Self {
        Machine {
            up,
            retries: 0,
            successes: 0,
            retry: check.retry,
            rise: check.rise,
            interval: check.interval,
            retry_delay: check.retry_delay,
        }
    }

    /// Whether the server is up.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Takes one attempt's outcome.
    pub fn record(&mut self, ok: bool) -> Step {
        let mut step = Step {
            change: None,
            retry: false,
        };
        match (self.up, ok) {
            (true, true) => self.retries = 0,
            (true, false) => {
                if self.retries < self.retry {
                    self.retries += 1;
                    step.retry = true;
                } else {
                    self.retries = 0;
                    self.up = false;
                    self.successes = 0;
                    step.change = Some(HealthState::Down);
                }
            }
            (false, true) => {
                self.successes += 1;
                if self.successes >= self.rise {
                    self.successes = 0;
                    self.up = true;
                    step.change = Some(HealthState::Up);
                }
            }
            // keepalived retries failed checks of alive servers only.
            (false, false) => self.successes = 0,
        }
        step
    }

    /// When the next attempt is due. Rounds are kept on their schedule (`due` of the attempt
    /// that just ran plus the interval), so checks do not drift by their own duration; a
    /// round that is already late starts now and the schedule continues from there (tokio's
    /// MissedTickBehavior::Delay). A retry waits the retry delay after the failure, as
    /// keepalived's delay_before_retry.
    pub fn next_due(&self, step: Step, due: Instant, now: Instant) -> Instant {
        if step.retry {
            now + self.retry_delay
        } else {
            (due + self.interval).max(now)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Probe;

    fn check(retry: u32, rise: u32) -> Check {
        Check {
            probe: Probe::Tcp,
            target: "198.51.100.11:80".parse().unwrap(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(300),
            retry,
            retry_delay: Duration::from_millis(500),
            rise,
            inhibit: false,
        }
    }

    /// Runs a check on a simulated clock for `span`, the server answering as `healthy(t)`
    /// says at the attempt's start; an attempt that fails takes `fail_takes` (0: refused at
    /// once; the timeout: no answer). Returns every attempt's start and the state changes
    /// with their times.
    fn simulate(
        c: &Check,
        span: Duration,
        fail_takes: Duration,
        healthy: impl Fn(Duration) -> bool,
    ) -> (Vec<Duration>, Vec<(Duration, HealthState)>) {
        let t0 = Instant::now();
        let mut m = Machine::new(c, true);
        let mut due = t0;
        let (mut starts, mut changes) = (Vec::new(), Vec::new());
        while due - t0 < span {
            let start = due;
            starts.push(start - t0);
            let ok = healthy(start - t0);
            let end = start
                + if ok {
                    Duration::from_millis(1)
                } else {
                    fail_takes
                };
            let step = m.record(ok);
            if let Some(s) = step.change {
                changes.push((end - t0, s));
            }
            due = m.next_due(step, start, end);
        }
        (starts, changes)
    }

    const S: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn a_refused_server_is_down_after_retry_then_up_after_rise() {
        let c = check(2, 2);
        // Down from 2.5 s to 10.2 s.
        let (starts, changes) = simulate(&c, S(15_000), Duration::ZERO, |t| {
            !(S(2500)..S(10_200)).contains(&t)
        });
        // Rounds at 0, 1, 2; the 3 s round fails, retries at 3.5 s and 4 s fail: down at 4 s.
        assert_eq!(
            &starts[..6],
            &[S(0), S(1000), S(2000), S(3000), S(3500), S(4000)]
        );
        assert_eq!(changes[0], (S(4000), HealthState::Down));
        // Back on the round schedule from the last retry, no retries while down.
        assert_eq!(&starts[6..9], &[S(5000), S(6000), S(7000)]);
        // Healthy from 10.2 s: rounds at 11 and 12 s succeed: up at rise = 2.
        assert_eq!(changes[1].1, HealthState::Up);
        assert_eq!(changes[1].0, S(12_001));
        assert_eq!(changes.len(), 2);
        // The worst case the check promises holds: interval + retry × retry delay.
        assert!(changes[0].0 - S(2500) <= c.detection_time(false));
    }

    #[test]
    fn timeouts_count_in_the_detection_time() {
        let c = check(1, 1);
        let (_, changes) = simulate(&c, S(10_000), c.timeout, |t| t < S(1001));
        // 2 s round times out at 2.3 s, retry at 2.8 s times out at 3.1 s: down.
        assert_eq!(changes, vec![(S(3100), HealthState::Down)]);
        assert!(changes[0].0 - S(1001) <= c.detection_time(true));
    }

    #[test]
    fn a_single_failure_within_retries_changes_nothing() {
        let c = check(1, 2);
        // One bad round at 3 s; the retry at 3.5 s succeeds.
        let (starts, changes) = simulate(&c, S(8000), Duration::ZERO, |t| t != S(3000));
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(&starts[3..6], &[S(3000), S(3500), S(4500)]);
    }

    #[test]
    fn a_flapping_server_is_held_down_by_rise() {
        // Fails every other round once down: with rise 3 it never comes back; with rise 1 it
        // would churn the tables at every success.
        let flap = |t: Duration| t < S(2000) || (t.as_millis() / 1000) % 2 == 1;
        let (_, held) = simulate(&check(0, 3), S(20_000), Duration::ZERO, flap);
        assert_eq!(held, vec![(S(2000), HealthState::Down)]);
        let (_, churn) = simulate(&check(0, 1), S(20_000), Duration::ZERO, flap);
        assert!(churn.len() > 10, "{churn:?}");
        // Failures in between reset the count of successes.
        let c = check(0, 2);
        let mut m = Machine::new(&c, false);
        assert_eq!(m.record(true).change, None);
        assert_eq!(m.record(false).change, None);
        assert_eq!(m.record(true).change, None);
        assert_eq!(m.record(true).change, Some(HealthState::Up));
        assert!(m.is_up());
    }

    #[test]
    fn rounds_keep_their_schedule_and_late_ones_do_not_burst() {
        let c = check(0, 1);
        let m = Machine::new(&c, true);
        let t0 = Instant::now();
        let step = Step {
            change: None,
            retry: false,
        };
        // An attempt that took 300 ms: the next round is still 1 s after this one was due.
        assert_eq!(m.next_due(step, t0, t0 + S(300)), t0 + S(1000));
        // One that overran the interval: now, not a burst of missed rounds.
        assert_eq!(m.next_due(step, t0, t0 + S(2500)), t0 + S(2500));
        let retry = Step {
            change: None,
            retry: true,
        };
        assert_eq!(m.next_due(retry, t0, t0 + S(300)), t0 + S(800));
    }
}
