//! Active-backup with keepalived (issue 18, item 4): two directors with the same rr services
//! (DR; NAT, whose real servers' gateway moves with the VIP; FULLNAT, whose local address is
//! that same moving address), both sync daemons on both, and keepalived (VRRP only, the shipped
//! `examples/keepalived/keepalived.conf`) moving the VIP between them. Under load (long-lived
//! keep-alive connections and a stream of new ones):
//!
//! 1. The master (d1) is cut off at its switch port: d2 takes the VIP, the router's neighbor
//!    entry follows keepalived's gratuitous ARPs, and every held connection goes on through d2
//!    to the same real server, because d2 installed d1's connections from sync.
//! 2. d1 comes back while connections opened through d2 (which d1 never saw) run: its track
//!    script (`xvsadm synced`) keeps it in FAULT until it holds d2's table, then it takes the
//!    VIP back (preempt) and no held connection breaks.
//!
//! Then, reported and not asserted: the same cut with no connection sent (master daemons
//! stopped), where rr schedules the moved connections afresh on d2.
//!
//! Topology: `xvs_tests::vrrp` (client ── router ── bridge: d1 d2, rs1 rs2 rs3).

use std::{
    collections::BTreeSet,
    process::Stdio,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use xvs_tests::{
    lab::{default_bin_dir, rs_ip4, HttpConn, VIP4},
    netns, poll,
    vrrp::{VrrpLab, VrrpOptions, NAT_GATEWAY4},
};

const REALS: usize = 3;
/// Long-lived connections held through d1 before the cut.
const HELD: usize = 10;
/// Long-lived NAT connections held through d1 before the cut (their replies cross the
/// director: the backup must have their way back too).
const NAT_HELD: usize = 6;
/// Long-lived FULLNAT connections held through d1 before the cut (the backup must have their
/// local address and port).
const FULLNAT_HELD: usize = 4;
/// Long-lived connections opened through d2 while d1 is cut off.
const HELD_ON_D2: usize = 6;
/// How long the load runs on after each move of the VIP.
const AFTER: Duration = Duration::from_secs(3);

fn service() -> String {
    format!("{VIP4}:80")
}

/// The NAT service: the VIP's port 8080 to the real servers' port 80.
fn nat_service() -> String {
    format!("{VIP4}:8080")
}

/// The FULLNAT service: the VIP's port 8081 to the real servers' port 80, from the moving
/// gateway address.
fn fullnat_service() -> String {
    format!("{VIP4}:8081")
}

/// What a long-lived connection saw so far.
#[derive(Clone, Debug, Default)]
struct HeldState {
    /// The director it was opened through.
    through: &'static str,
    server: String,
    answered: u64,
    /// The slowest answer (a move of the VIP shows here).
    slowest: Duration,
    /// Why it broke, if it did, and when (since the test's start): the request's start, the
    /// error's arrival.
    broke: Option<(Duration, Duration, String)>,
    /// The request in flight, if any: when it was asked (since the test's start).
    asking: Option<Duration>,
}

/// A request unanswered for this long counts as broken when the test looks (a read times out
/// only after 5 s, which could be after the look).
const STALLED: Duration = Duration::from_secs(2);

/// One long-lived connection, asking on its connection every 100 ms until stopped; its state
/// readable while it runs.
struct Held {
    state: Arc<Mutex<HeldState>>,
    thread: JoinHandle<()>,
}

impl Held {
    fn now(&self) -> HeldState {
        self.state.lock().expect("held state").clone()
    }
}

fn hold(
    lab: &VrrpLab,
    through: &'static str,
    service: &str,
    stop: &Arc<AtomicBool>,
    epoch: Instant,
) -> Result<Held> {
    let mut conn = HttpConn::connect(&lab.ns("cl"), service.parse()?)?;
    let server = conn
        .get()
        .context("the first request of a held connection")?;
    let state = Arc::new(Mutex::new(HeldState {
        through,
        server,
        ..HeldState::default()
    }));
    let (stop, shared) = (stop.clone(), state.clone());
    let thread = std::thread::spawn(move || {
        let server = shared.lock().expect("held state").server.clone();
        // Bounded in time as well as by `stop`.
        let deadline = Instant::now() + Duration::from_secs(90);
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            let t = Instant::now();
            shared.lock().expect("held state").asking = Some(t - epoch);
            let res = conn.get();
            let mut s = shared.lock().expect("held state");
            s.asking = None;
            match res {
                Ok(body) if body == server => {
                    s.answered += 1;
                    s.slowest = s.slowest.max(t.elapsed());
                }
                other => {
                    let why = match other {
                        Ok(body) => format!("answered by {body}"),
                        Err(e) => format!("{e:#}"),
                    };
                    s.broke = Some((t - epoch, epoch.elapsed(), why));
                    return;
                }
            }
            drop(s);
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    Ok(Held { state, thread })
}

/// The broken ones among held connections (failed, or unanswered for [`STALLED`]), described.
fn broken(held: &[Held], epoch: Instant) -> Vec<String> {
    held.iter()
        .filter_map(|h| {
            let s = h.now();
            let stalled = s
                .asking
                .filter(|asked| epoch.elapsed().saturating_sub(*asked) >= STALLED)
                .map(|asked| (asked, epoch.elapsed(), "no answer yet".to_string()));
            let (asked, failed, why) = s.broke.or(stalled)?;
            Some(format!(
                "opened through {} to {}, asked at {asked:?}, failed at {failed:?}: {why}",
                s.through, s.server
            ))
        })
        .collect()
}

/// The slowest answer among held connections that did not break.
fn slowest(held: &[Held]) -> Duration {
    held.iter()
        .map(Held::now)
        .filter(|s| s.broke.is_none())
        .map(|s| s.slowest)
        .max()
        .unwrap_or_default()
}

/// New connections from the client, one curl (one connection) at a time, each request's start,
/// duration and outcome recorded, until stopped (or 60 s, or 2000 requests).
struct NewConns {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    thread: JoinHandle<Result<Vec<(Instant, Duration, bool)>>>,
}

impl NewConns {
    fn start(lab: &VrrpLab) -> NewConns {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let (ns, url) = (lab.ns("cl"), format!("http://{VIP4}/"));
        let thread = {
            let (stop, done) = (stop.clone(), done.clone());
            std::thread::spawn(move || {
                let mut out = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline && out.len() < 2000
                {
                    let t = Instant::now();
                    let res = netns::cmd_in(&ns, "curl")
                        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
                        .args(["--connect-timeout", "2", "-m", "3", &url])
                        .stdin(Stdio::null())
                        .stderr(Stdio::null())
                        .output()
                        .context("running curl")?;
                    out.push((t, t.elapsed(), res.stdout == b"200"));
                    done.fetch_add(1, Ordering::SeqCst);
                }
                Ok(out)
            })
        };
        NewConns { stop, done, thread }
    }

    /// Waits until `n` requests were made (traffic before an event).
    fn wait(&self, n: u64) -> Result<()> {
        poll(Duration::from_secs(10), "new connections", || {
            (self.done.load(Ordering::SeqCst) >= n).then_some(())
        })
    }

    /// Stops; (requests, failed before `converged`, failed after it).
    fn stop(self, converged: Instant) -> Result<(usize, usize, usize)> {
        self.stop.store(true, Ordering::SeqCst);
        let out = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("curl thread panicked"))??;
        let before = out
            .iter()
            .filter(|(t, _, ok)| !ok && *t < converged)
            .count();
        let after = out
            .iter()
            .filter(|(t, _, ok)| !ok && *t >= converged)
            .count();
        Ok((out.len(), before, after))
    }
}

/// Stops the held connections' threads on every way out.
struct Stop(Arc<AtomicBool>);

impl Drop for Stop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Waits until director `to` lists every connection director `from` lists (each bound to the
/// same real server).
fn wait_synced(lab: &VrrpLab, from: usize, to: usize, timeout: Duration) -> Result<usize> {
    let (a, b) = (&lab.directors[from], &lab.directors[to]);
    poll(
        timeout,
        &format!("{}'s connections on {}", a.name, b.name),
        || {
            let on_a: BTreeSet<_> = a.connections().ok()?.into_iter().collect();
            let on_b: BTreeSet<_> = b.connections().ok()?.into_iter().collect();
            on_a.is_subset(&on_b).then_some(on_a.len())
        },
    )
}

/// How many messages director `d`'s master sync daemon has sent.
fn sync_messages_sent(lab: &VrrpLab, d: usize) -> Result<u64> {
    let json: serde_json::Value =
        serde_json::from_str(&lab.directors[d].xvsadm_ok(&["-L", "--daemon", "--json"])?)?;
    json.as_array()
        .into_iter()
        .flatten()
        .find(|daemon| daemon["role"] == "master")
        .and_then(|daemon| daemon["stats"]["messages"].as_u64())
        .context("no master sync daemon")
}

#[test]
fn keepalived_moves_the_vip_and_held_connections_live() -> Result<()> {
    let epoch = Instant::now();
    let mut lab = VrrpLab::start(VrrpOptions {
        tag: "vrrp".into(),
        reals: REALS,
        bin_dir: default_bin_dir(),
    })?;
    // The same configuration on both directors, both sync daemons on both (the shipped
    // example's rules), then keepalived.
    let (vip, nat, fullnat) = (service(), nat_service(), fullnat_service());
    for d in &lab.directors {
        d.xvsadm_ok(&["-A", "-t", &vip, "-s", "rr"])?;
        d.xvsadm_ok(&["-A", "-t", &nat, "-s", "rr"])?;
        d.xvsadm_ok(&["-A", "-t", &fullnat, "-s", "rr"])?;
        d.xvsadm_ok(&["-P", "-t", &fullnat, "-z", NAT_GATEWAY4])?;
        for i in 1..=REALS {
            let real = format!("{}:80", rs_ip4(i));
            d.xvsadm_ok(&["-a", "-t", &vip, "-r", &real, "-g"])?;
            d.xvsadm_ok(&["-a", "-t", &nat, "-r", &real, "-m"])?;
            d.xvsadm_ok(&["-a", "-t", &fullnat, "-r", &real, "-b"])?;
        }
        d.start_sync()?;
    }
    lab.route_nat_replies()?;
    lab.start_keepalived()?;
    let elected = lab.wait_holder(0, Duration::from_secs(15))?;
    lab.wait_reals_resolved(Duration::from_secs(10))?;
    lab.wait_answering(Duration::from_secs(10))?;
    println!(
        "lab up in {:?}; d1 held the VIP {elected:?} after keepalived started",
        epoch.elapsed()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let _stop = Stop(stop.clone());

    // Phase 1: d1, the master, is cut off.
    let mut held = (0..HELD)
        .map(|_| hold(&lab, "d1", &vip, &stop, epoch))
        .collect::<Result<Vec<_>>>()?;
    let servers = xvs_tests::lab::tally(&held.iter().map(|h| h.now().server).collect::<Vec<_>>());
    // rr over three real servers: the held connections are spread, so a connection scheduled
    // afresh on d2 would likely land elsewhere and break.
    assert!(servers.len() > 1, "{servers:?}");
    let nat_held = (0..NAT_HELD)
        .map(|_| hold(&lab, "d1 (NAT)", &nat, &stop, epoch))
        .collect::<Result<Vec<_>>>()?;
    let nat_servers =
        xvs_tests::lab::tally(&nat_held.iter().map(|h| h.now().server).collect::<Vec<_>>());
    assert!(nat_servers.len() > 1, "{nat_servers:?}");
    held.extend(nat_held);
    let fullnat_held = (0..FULLNAT_HELD)
        .map(|_| hold(&lab, "d1 (FULLNAT)", &fullnat, &stop, epoch))
        .collect::<Result<Vec<_>>>()?;
    let fullnat_servers = xvs_tests::lab::tally(
        &fullnat_held
            .iter()
            .map(|h| h.now().server)
            .collect::<Vec<_>>(),
    );
    assert!(fullnat_servers.len() > 1, "{fullnat_servers:?}");
    held.extend(fullnat_held);
    let on_d1 = wait_synced(&lab, 0, 1, Duration::from_secs(5))?;
    let new = NewConns::start(&lab);
    new.wait(10)?;
    let t0 = Instant::now();
    lab.port_down(0)?;
    let vip_moved = lab.wait_holder(1, Duration::from_secs(5))?;
    let answering = lab.wait_answering(Duration::from_secs(5))?;
    let failover = t0.elapsed();
    let converged = Instant::now();
    // The load runs on for a while after the failover: that is the measurement.
    std::thread::sleep(AFTER);
    let (new_total, failed_window, failed_after) = new.stop(converged)?;
    let broken1 = broken(&held, epoch);
    println!(
        "phase 1 (d1 cut off, sync on): {HELD} held DR connections per real server {servers:?}, \
         {NAT_HELD} NAT ones {nat_servers:?} and {FULLNAT_HELD} FULLNAT ones \
         {fullnat_servers:?}, {on_d1} of d1's connections listed on d2 \
         before the cut; VIP on d2 {vip_moved:?} after the port went down, a new connection \
         answered {answering:?} later: failover {failover:?}; router's neighbor entry: {}; {} of \
         {} held connections broken {broken1:?}; slowest answer on the others {:?}; new \
         connections: {new_total}, {failed_window} failed started before the failover \
         completed, {failed_after} after",
        lab.router_neighbor(),
        broken1.len(),
        held.len(),
        slowest(&held),
    );
    assert!(
        broken1.is_empty(),
        "phase 1: held connections broke: {broken1:?}"
    );
    assert_eq!(
        failed_after, 0,
        "phase 1: new connections failed after the failover"
    );

    // Phase 2: d1 returns while connections it never saw run through d2.
    let before: BTreeSet<_> = lab.directors[1].connections()?.into_iter().collect();
    let on_d2 = (0..HELD_ON_D2)
        .map(|_| hold(&lab, "d2", &vip, &stop, epoch))
        .collect::<Result<Vec<_>>>()?;
    let opened_on_d2: BTreeSet<_> = lab.directors[1]
        .connections()?
        .into_iter()
        .filter(|c| !before.contains(c))
        .collect();
    assert!(
        opened_on_d2.len() >= HELD_ON_D2,
        "d2 lists {opened_on_d2:?}"
    );
    held.extend(on_d2);
    let new = NewConns::start(&lab);
    new.wait(5)?;
    // d2 sent them while d1 was away: a flush sends everything queued, so two messages after
    // they were opened carry them (otherwise they could still be queued when d1 returns, reach
    // it in d2's stream, and the test would not show what the track script does).
    let sent = sync_messages_sent(&lab, 1)?;
    poll(
        Duration::from_secs(5),
        "d2 to send the connections opened through it",
        || (sync_messages_sent(&lab, 1).ok()? >= sent + 2).then_some(()),
    )?;
    let t1 = Instant::now();
    lab.port_up(0)?;
    lab.wait_holder(0, Duration::from_secs(20))?;
    let waited = t1.elapsed();
    let moved_back = epoch.elapsed();
    // At once: what d1 held when it took the VIP back.
    let on_d1_then: BTreeSet<_> = lab.directors[0].connections()?.into_iter().collect();
    let answering = lab.wait_answering(Duration::from_secs(5))?;
    let converged = Instant::now();
    std::thread::sleep(AFTER);
    let (new_total, failed_window, failed_after) = new.stop(converged)?;
    let missing: Vec<_> = opened_on_d2.difference(&on_d1_then).collect();
    let broken2 = broken(&held, epoch);
    let d1_log = lab.directors[0].keepalived_log();
    let faults = d1_log.matches("Entering FAULT STATE").count();
    println!(
        "phase 2 (d1 returns): VIP back on d1 {waited:?} after its port came up (it takes it \
         once its track script, xvsadm synced, passes), a new connection answered \
         {answering:?} later; {} of the {} connections opened through d2 missing on d1 when it \
         took the VIP (at {moved_back:?}) {missing:?}; {} of {} held connections broken {broken2:?}; slowest answer \
         on the others {:?}; new connections: {new_total}, {failed_window} failed started \
         before d1 answered, {failed_after} after; d1's keepalived entered FAULT {faults} times",
        missing.len(),
        opened_on_d2.len(),
        broken2.len(),
        held.len(),
        slowest(&held),
    );
    assert!(
        missing.is_empty(),
        "d1 took the VIP back without d2's connections {missing:?}\n{}",
        lab.report()
    );
    assert!(
        broken2.is_empty(),
        "phase 2: held connections broke: {broken2:?}"
    );
    assert_eq!(
        failed_after, 0,
        "phase 2: new connections failed after d1 took the VIP"
    );

    // Every held connection answered throughout, up to the end.
    stop.store(true, Ordering::SeqCst);
    for h in held {
        let s = h.now();
        h.thread
            .join()
            .map_err(|_| anyhow::anyhow!("held connection thread panicked"))?;
        if s.answered < 20 {
            bail!(
                "a held connection answered only {} times: {s:?}",
                s.answered
            );
        }
    }

    // Reported, not asserted: the same cut with nothing synced. The backup daemons stay (the
    // track script needs them), the masters stop, so no connection is sent.
    for d in &lab.directors {
        d.xvsadm_ok(&["--stop-daemon", "master"])?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_unsynced = Stop(stop.clone());
    let unsynced = (0..HELD)
        .map(|_| hold(&lab, "d1", &vip, &stop, epoch))
        .collect::<Result<Vec<_>>>()?;
    let t2 = Instant::now();
    lab.port_down(0)?;
    lab.wait_holder(1, Duration::from_secs(5))?;
    lab.wait_answering(Duration::from_secs(5))?;
    let failover = t2.elapsed();
    // Long enough for every held connection to ask through d2 at least once.
    std::thread::sleep(Duration::from_secs(1));
    let broken3 = broken(&unsynced, epoch);
    println!(
        "without sync (master daemons stopped): failover {failover:?}; {} of {HELD} held rr \
         connections broken {broken3:?}",
        broken3.len()
    );
    stop.store(true, Ordering::SeqCst);
    for h in unsynced {
        let _ = h.thread.join();
    }
    println!("wall time {:?}", epoch.elapsed());
    drop(lab);
    Ok(())
}
