//! Health checks in xvsd: one tokio task per checked real server runs its check on its own
//! schedule (start jittered over the first interval, rounds kept on schedule), feeds the
//! outcomes to its [`machine::Machine`], logs and counts every change, and wakes the
//! controller, which pushes an *effective* configuration to the data plane ([`effective`]):
//! the configured one (what `-S` shows) with down servers removed from the tables, or at
//! weight 0 with `--check-inhibit`, and the sorry server in while no real server is up.

pub mod probe;

pub use lb_core::health::{machine, HealthState, LatencyHistogram, LATENCY_BUCKETS};

use std::{
    collections::{hash_map::RandomState, HashMap, HashSet},
    hash::BuildHasher,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{sync::Notify, task::JoinHandle};
use tracing::{debug, info, warn};

use crate::{
    check::{self, Check},
    model::{Config, RealServer, ServiceKey},
    proto::{Health, Membership},
};

/// Which check: a real server of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CheckId {
    /// The service.
    pub service: ServiceKey,
    /// The real server's address (as configured).
    pub real: SocketAddr,
}

/// What a check's task shares with the controller.
#[derive(Clone, Debug)]
struct Status {
    up: bool,
    since: Instant,
    last: Option<String>,
    last_latency: Option<Duration>,
    checks: u64,
    failures: u64,
    changes: u64,
    latency: LatencyHistogram,
    /// How late attempts started after they were due (scheduling drift).
    lateness: LatencyHistogram,
    max_lateness: Duration,
}

impl Status {
    fn new() -> Self {
        Status {
            // keepalived starts real servers up (unless `alpha`): adding a checked server, or
            // restarting xvsd, does not take traffic away before a check failed.
            up: true,
            since: Instant::now(),
            last: None,
            last_latency: None,
            checks: 0,
            failures: 0,
            changes: 0,
            latency: LatencyHistogram::default(),
            lateness: LatencyHistogram::default(),
            max_lateness: Duration::ZERO,
        }
    }
}

struct Task {
    check: Check,
    status: Arc<Mutex<Status>>,
    handle: JoinHandle<()>,
}

/// Every check's task, kept in step with the configuration by [`Checker::reconcile`].
pub struct Checker {
    tasks: HashMap<CheckId, Task>,
    changed: Arc<Notify>,
    /// Seeds the start jitter (random per xvsd, so directors do not check in step).
    seed: RandomState,
}

impl Default for Checker {
    fn default() -> Self {
        Self::new()
    }
}

impl Checker {
    /// No checks yet.
    pub fn new() -> Self {
        Checker {
            tasks: HashMap::new(),
            changed: Arc::new(Notify::new()),
            seed: RandomState::new(),
        }
    }

    /// Notified after a real server went up or down.
    pub fn changed(&self) -> Arc<Notify> {
        self.changed.clone()
    }

    /// Number of checks running.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether no check runs.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Runs exactly these checks: new ones start (up, first attempt jittered over their
    /// interval), changed ones restart keeping their state and counts, gone ones stop. Must be
    /// called within a tokio runtime.
    pub fn reconcile(&mut self, wanted: impl IntoIterator<Item = (CheckId, Check)>) {
        let wanted: HashMap<CheckId, Check> = wanted.into_iter().collect();
        self.tasks.retain(|id, t| {
            let keep = wanted.contains_key(id);
            if !keep {
                t.handle.abort();
            }
            keep
        });
        for (id, check) in wanted {
            let status = match self.tasks.get(&id) {
                Some(t) if t.check == check => continue,
                Some(t) => {
                    t.handle.abort();
                    t.status.clone()
                }
                None => Arc::new(Mutex::new(Status::new())),
            };
            // Spread over the interval (keepalived's `warmup`): thousands of checks added at
            // once do not all fire together.
            let interval_ms = check.interval.as_millis().max(1) as u64;
            let first = Duration::from_millis(self.seed.hash_one(id) % interval_ms);
            let handle = tokio::spawn(run(
                id,
                check.clone(),
                status.clone(),
                self.changed.clone(),
                first,
            ));
            self.tasks.insert(
                id,
                Task {
                    check,
                    status,
                    handle,
                },
            );
        }
    }

    /// Whether a checked real server is up; None when it is not checked.
    pub fn is_up(&self, id: &CheckId) -> Option<bool> {
        self.tasks.get(id).map(|t| lock(&t.status).up)
    }

    /// Where a real server belongs in the tables as its check sees it; unchecked: active.
    pub fn membership(&self, id: &CheckId) -> Membership {
        match self.tasks.get(id) {
            Some(t) if !lock(&t.status).up => {
                if t.check.inhibit {
                    Membership::Inhibited
                } else {
                    Membership::Removed
                }
            }
            _ => Membership::Active,
        }
    }

    /// A real server's health, for listings and metrics; None when it is not checked.
    pub fn health(&self, id: &CheckId) -> Option<Health> {
        let t = self.tasks.get(id)?;
        let s = lock(&t.status).clone();
        Some(Health {
            kind: t.check.kind(),
            target: probe::describe(&t.check),
            state: if s.up {
                HealthState::Up
            } else {
                HealthState::Down
            },
            since_s: s.since.elapsed().as_secs_f64(),
            last: s.last,
            last_latency_s: s.last_latency.map(|d| d.as_secs_f64()),
            checks: s.checks,
            failures: s.failures,
            changes: s.changes,
            latency: s.latency,
        })
    }

    /// Scheduling drift over every check: the latest start after an attempt was due, and the
    /// lateness of all attempts (benchmarks).
    pub fn lateness(&self) -> (Duration, LatencyHistogram) {
        let mut all = LatencyHistogram::default();
        let mut max = Duration::ZERO;
        for t in self.tasks.values() {
            let s = lock(&t.status);
            all.merge(&s.lateness);
            max = max.max(s.max_lateness);
        }
        (max, all)
    }

    /// Attempts made and failed over every check (benchmarks).
    pub fn attempts(&self) -> (u64, u64) {
        self.tasks.values().fold((0, 0), |(c, f), t| {
            let s = lock(&t.status);
            (c + s.checks, f + s.failures)
        })
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        for t in self.tasks.values() {
            t.handle.abort();
        }
    }
}

fn lock(m: &Mutex<Status>) -> std::sync::MutexGuard<'_, Status> {
    // A task that panicked while holding it left a status that is still readable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One check's task: attempts on schedule until aborted.
async fn run(
    id: CheckId,
    check: Check,
    status: Arc<Mutex<Status>>,
    changed: Arc<Notify>,
    first: Duration,
) {
    let mut m = machine::Machine::new(&check, lock(&status).up);
    let kind = check.kind();
    let target = probe::describe(&check);
    let mut due = tokio::time::Instant::now() + first;
    loop {
        tokio::time::sleep_until(due).await;
        let started = tokio::time::Instant::now();
        let outcome = probe::attempt(&check).await;
        let now = tokio::time::Instant::now();
        let took = now - started;
        let step = m.record(outcome.is_ok());
        {
            let mut s = lock(&status);
            let late = started.saturating_duration_since(due);
            s.lateness.observe(late);
            s.max_lateness = s.max_lateness.max(late);
            s.checks += 1;
            s.latency.observe(took);
            s.last_latency = Some(took);
            s.last = Some(match &outcome {
                Ok(()) => "ok".to_string(),
                Err(f) => {
                    s.failures += 1;
                    f.to_string()
                }
            });
            if let Some(state) = step.change {
                s.up = state == HealthState::Up;
                s.since = Instant::now();
                s.changes += 1;
            }
        }
        match (&outcome, step.change) {
            (Err(f), Some(HealthState::Down)) => warn!(
                service = %id.service, real = %id.real, check = %kind, %target, reason = %f,
                retries = check.retry, inhibit = check.inhibit,
                "real server DOWN: {} check failed ({f})", kind
            ),
            (_, Some(HealthState::Up)) => info!(
                service = %id.service, real = %id.real, check = %kind, %target,
                rise = check.rise, "real server UP: {} check succeeded", kind
            ),
            (Err(f), _) => debug!(
                service = %id.service, real = %id.real, check = %kind, reason = %f,
                retry = step.retry, "check failed"
            ),
            _ => {}
        }
        if step.change.is_some() {
            changed.notify_one();
        }
        due = m.next_due(step, due.into_std(), now.into_std()).into();
    }
}

/// The configuration the data plane runs: the configured one with health applied, and where
/// each real server ended up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effective {
    /// What is pushed to the data plane (checks and sorry servers left out: they are not its).
    pub config: Config,
    /// Real servers that are not [`Membership::Active`].
    pub down: HashMap<(ServiceKey, SocketAddr), Membership>,
    /// Services whose sorry server is in the tables.
    pub sorry: HashSet<ServiceKey>,
    /// Every service's quorum state (lb_core::model::Quorum).
    pub quorum: HashMap<ServiceKey, QuorumState>,
}

/// Where a service stands against its quorum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuorumState {
    /// The service has its quorum: its VIP is announced, its sorry server out.
    pub up: bool,
    /// The weights of its live real servers, added up (keepalived's weigh_live_realservers).
    pub live_weight: u64,
}

impl Effective {
    /// Where a configured real server is in the tables.
    pub fn membership(&self, service: &ServiceKey, real: SocketAddr) -> Membership {
        self.down
            .get(&(*service, real))
            .copied()
            .unwrap_or(Membership::Active)
    }
}

/// Applies health to a configuration, as keepalived drives IPVS: a removed server leaves the
/// service, an inhibited one stays with weight 0, and while the service is below its quorum
/// (by default: no real server up with a weight above 0) the sorry server takes new
/// connections, by direct routing with weight 1. `previous`: the last result, whose quorum
/// states the hysteresis starts from.
pub fn effective(
    config: &Config,
    membership: impl Fn(&CheckId) -> Membership,
    previous: &Effective,
) -> Effective {
    let mut out = Effective::default();
    let mut services = Vec::with_capacity(config.services().len());
    for svc in config.services() {
        let mut s = svc.clone();
        s.check = Default::default();
        s.sorry_server = None;
        s.reals.clear();
        for r in &svc.reals {
            let id = CheckId {
                service: svc.key,
                real: r.addr,
            };
            let m = membership(&id);
            if m != Membership::Active {
                out.down.insert((svc.key, r.addr), m);
            }
            let weight = match m {
                Membership::Active => r.weight,
                Membership::Inhibited => 0,
                Membership::Removed => continue,
            };
            s.reals.push(RealServer {
                weight,
                check: Default::default(),
                ..r.clone()
            });
        }
        let live_weight = svc
            .reals
            .iter()
            .filter(|r| out.membership(&svc.key, r.addr) == Membership::Active)
            .map(|r| u64::from(r.weight))
            .sum();
        let was_up = previous.quorum.get(&svc.key).map(|q| q.up);
        let up = svc.quorum.up(live_weight, was_up);
        out.quorum.insert(svc.key, QuorumState { up, live_weight });
        if let (Some(sorry), false) = (svc.sorry_server, up) {
            s.reals.push(RealServer::dr(sorry, 1));
            out.sorry.insert(svc.key);
        }
        services.push(s);
    }
    out.config = Config::from_services(services);
    out
}

/// The checks a configuration asks for.
pub fn wanted(config: &Config) -> Vec<(CheckId, Check)> {
    let mut out = Vec::new();
    for svc in config.services() {
        for r in &svc.reals {
            match check::resolve(&svc.check, &r.check, r.addr) {
                Ok(Some(c)) => out.push((
                    CheckId {
                        service: svc.key,
                        real: r.addr,
                    },
                    c,
                )),
                Ok(None) => {}
                // The model refuses such a configuration; nothing to run if one got through.
                Err(e) => warn!(service = %svc.key, real = %r.addr, error = %e, "check not run"),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        check::{CheckKind, CheckSpec},
        model::{Change, Protocol, Quorum, Scheduler},
    };

    fn config() -> Config {
        let key = ServiceKey::new(Protocol::Tcp, "203.0.113.10:80".parse().unwrap());
        let mut c = Config::default();
        c.apply_all(&[
            Change::add_service(key, Scheduler::Rr),
            Change::AddReal {
                service: key,
                real: RealServer::dr("198.51.100.11:80".parse().unwrap(), 1),
            },
            Change::AddReal {
                service: key,
                real: RealServer::dr("198.51.100.12:80".parse().unwrap(), 2),
            },
            Change::SetSorryServer {
                key,
                sorry_server: Some("198.51.100.13:8080".parse().unwrap()),
            },
            Change::SetCheck {
                key,
                check: CheckSpec {
                    kind: Some(CheckKind::Tcp),
                    ..Default::default()
                },
            },
        ])
        .unwrap();
        c
    }

    #[test]
    fn down_servers_leave_or_are_inhibited_and_the_sorry_server_stands_in() {
        let c = config();
        let key = c.services()[0].key;
        let rs1: SocketAddr = "198.51.100.11:80".parse().unwrap();
        let rs2: SocketAddr = "198.51.100.12:80".parse().unwrap();
        // All up: the configured tables, without checks or sorry server.
        let all_up = effective(&c, |_| Membership::Active, &Effective::default());
        assert_eq!(all_up.config.services()[0].reals.len(), 2);
        assert!(all_up.config.services()[0].sorry_server.is_none());
        assert!(all_up.config.services()[0].check.is_empty());
        assert!(all_up.sorry.is_empty() && all_up.down.is_empty());
        // rs1 removed, rs2 up.
        let e = effective(
            &c,
            |id| {
                if id.real == rs1 {
                    Membership::Removed
                } else {
                    Membership::Active
                }
            },
            &Effective::default(),
        );
        let addrs: Vec<SocketAddr> = e.config.services()[0]
            .reals
            .iter()
            .map(|r| r.addr)
            .collect();
        assert_eq!(addrs, vec![rs2]);
        assert_eq!(e.membership(&key, rs1), Membership::Removed);
        // rs1 inhibited, rs2 removed: rs1 at weight 0, nobody alive: the sorry server, with
        // the service's port (direct routing).
        let e = effective(
            &c,
            |id| {
                if id.real == rs1 {
                    Membership::Inhibited
                } else {
                    Membership::Removed
                }
            },
            &Effective::default(),
        );
        let reals = &e.config.services()[0].reals;
        assert_eq!(reals.len(), 2);
        assert_eq!((reals[0].addr, reals[0].weight), (rs1, 0));
        assert_eq!(
            (reals[1].addr, reals[1].weight),
            ("198.51.100.13:80".parse().unwrap(), 1)
        );
        assert!(e.sorry.contains(&key));
        // An up server with weight 0 does not keep the sorry server out (keepalived's quorum).
        let quiesced = c.clone().map_services(|v| v[0].reals[1].weight = 0);
        let e = effective(
            &quiesced,
            |id| {
                if id.real == rs1 {
                    Membership::Removed
                } else {
                    Membership::Active
                }
            },
            &Effective::default(),
        );
        assert!(e.sorry.contains(&key));
    }

    #[test]
    fn quorum_and_hysteresis_as_keepalived() {
        // Weights 1 and 2 (config()); quorum 2, hysteresis 1: up at 3, down below 1.
        let c = config().map_services(|v| {
            v[0].quorum = Quorum {
                quorum: 2,
                hysteresis: 1,
            }
        });
        let key = c.services()[0].key;
        let rs1: SocketAddr = "198.51.100.11:80".parse().unwrap();
        let rs2: SocketAddr = "198.51.100.12:80".parse().unwrap();
        let only = |up: Option<SocketAddr>| {
            move |id: &CheckId| {
                if Some(id.real) == up {
                    Membership::Active
                } else {
                    Membership::Removed
                }
            }
        };
        let all = effective(&c, |_| Membership::Active, &Effective::default());
        assert_eq!(
            all.quorum[&key],
            QuorumState {
                up: true,
                live_weight: 3
            }
        );
        // Up, rs2 (weight 2) goes: 1 left, not below quorum - hysteresis (1): still up.
        let e = effective(&c, only(Some(rs1)), &all);
        assert!(e.quorum[&key].up && !e.sorry.contains(&key));
        // Then rs1 goes too: 0 < 1, down, and the sorry server stands in.
        let down = effective(&c, only(None), &e);
        assert!(!down.quorum[&key].up && down.sorry.contains(&key));
        // Down, rs2 alone comes back: 2 < quorum + hysteresis (3): still down.
        let e = effective(&c, only(Some(rs2)), &down);
        assert!(!e.quorum[&key].up);
        // A first evaluation needs quorum + hysteresis too (keepalived's set_quorum_states).
        let first = effective(&c, only(Some(rs2)), &Effective::default());
        assert!(!first.quorum[&key].up);
        // Both back: 3, up again.
        assert!(effective(&c, |_| Membership::Active, &e).quorum[&key].up);
    }

    #[test]
    fn every_checked_real_server_gets_its_resolved_check() {
        let c = config().map_services(|v| {
            v[0].reals[1].check = CheckSpec {
                kind: Some(CheckKind::None),
                ..Default::default()
            }
        });
        let w = wanted(&c);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].0.real, "198.51.100.11:80".parse().unwrap());
        assert_eq!(w[0].1.kind(), CheckKind::Tcp);
    }

    #[test]
    fn histogram_buckets_and_quantiles() {
        let mut h = LatencyHistogram::default();
        for ms in [0, 1, 1, 2, 30, 20_000] {
            h.observe(Duration::from_millis(ms));
        }
        assert_eq!(h.count, 6);
        assert_eq!(h.buckets[0], 1);
        assert_eq!(h.buckets[1], 2);
        assert_eq!(h.quantile_bound(0.5), Some(0.001));
        assert_eq!(h.quantile_bound(1.0), None);
    }

    #[tokio::test]
    async fn checks_start_spread_over_their_interval_and_notify_changes() {
        // A listener nobody accepts on still completes TCP handshakes (backlog).
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (_port, dead) = probe::tests::refusing_port();
        let check = |target| Check {
            probe: check::Probe::Tcp,
            target,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(200),
            retry: 0,
            retry_delay: Duration::from_millis(100),
            rise: 1,
            inhibit: true,
        };
        let key = ServiceKey::new(Protocol::Tcp, "203.0.113.10:80".parse().unwrap());
        let id = |port| CheckId {
            service: key,
            real: SocketAddr::new("198.51.100.11".parse().unwrap(), port),
        };
        let mut checker = Checker::new();
        let changed = checker.changed();
        checker.reconcile([
            (id(1), check(l.local_addr().unwrap())),
            (id(2), check(dead)),
        ]);
        assert_eq!(checker.len(), 2);
        // The dead one goes down (inhibited) within one interval plus the attempt.
        tokio::time::timeout(Duration::from_secs(5), changed.notified())
            .await
            .expect("a change");
        assert_eq!(checker.membership(&id(2)), Membership::Inhibited);
        assert_eq!(checker.membership(&id(1)), Membership::Active);
        let h = checker.health(&id(2)).unwrap();
        assert_eq!(h.state, HealthState::Down);
        assert_eq!(h.last.as_deref(), Some("connection refused"));
        assert_eq!(h.changes, 1);
        // Reconciling to fewer checks stops the others.
        checker.reconcile([(id(1), check(l.local_addr().unwrap()))]);
        assert_eq!(checker.len(), 1);
        assert_eq!(checker.membership(&id(2)), Membership::Active);
        assert!(checker.health(&id(2)).is_none());
    }
}
