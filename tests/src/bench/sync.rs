//! Connection sync throughput (issue 18): how many connections per second one director can
//! publish (its table walked and named, then encoded as IPVS v1 messages) and another install
//! (decoded, mapped to its services and written to its connection table). Both ends are real
//! data planes in this process, each behind the controller xvsd runs; no socket, no wire.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use lb_user::{
    daemon::Controller,
    dataplane::{Dataplane, Sizes},
    model::{Change, Protocol, RealServer, Scheduler, ServiceKey},
    sync::{encode, receiver},
};

use super::paths::{self, Scale};

/// The datagram payload a master sends without `--sync-maxlen` (1500-byte MTU, IPv4 group).
const MAXLEN: usize = 1472;
/// The SyncID of both ends.
const SYNCID: u8 = 1;
/// DR services (TCP, port 80, rr), as the prefill spreads its connections over them.
const SERVICES: usize = 4;
/// Real servers per service.
const REALS: usize = 10;

/// What one run of the sync benchmark measured (each duration the median of its rounds).
#[derive(Clone, Debug)]
pub struct SyncBench {
    /// Connections in director A's table, published and installed.
    pub entries: usize,
    /// Messages they took at [`MAXLEN`] bytes.
    pub messages: usize,
    /// Rounds of the publish side (each a walk and a `sync_table`, adjacent).
    pub publish_rounds: usize,
    /// Rounds of the install side (each a fresh director B and a fresh bare table).
    pub install_rounds: usize,
    /// The batch walk of A's connection table alone (`Dataplane::connections`): the floor
    /// under `sync_table`.
    pub walk: Duration,
    /// `Controller::sync_table`: the walk and the naming of every entry's real server.
    pub table: Duration,
    /// `encode` of the whole table into messages.
    pub encode: Duration,
    /// Decoding every message (`receiver::accept`: decode and the SyncID check).
    pub decode: Duration,
    /// `Controller::install_synced` of every message's entries, message by message.
    pub install: Duration,
    /// `Dataplane::install_conn` alone with the same keys and entries into an empty table of
    /// the same size: one BPF map update each, the floor under `install_synced`.
    pub raw_install: Duration,
    /// `sync_table` over the walk alone, median of the rounds' pairs.
    pub table_over_walk: f64,
    /// `install_synced` over the bare map updates, median of the rounds' pairs.
    pub install_over_raw: f64,
}

/// A controller over a real data plane with [`SERVICES`] DR services of [`REALS`] real servers,
/// configured as xvsd is (`Controller::apply`, then the real servers' MACs).
fn director(conns: u32) -> Result<Controller<Dataplane>> {
    let dp = Dataplane::load_with(Sizes {
        conns,
        sched_slots: 1 << 16,
        nat_replies: Some(1024),
    })?;
    let mut c = Controller::new(dp, "lo");
    let mut changes = Vec::new();
    let mut macs = HashMap::new();
    for s in 0..SERVICES {
        // The addresses paths::prefill sends to: 203.0.113.(s + 1):80.
        let service = ServiceKey::Addr {
            protocol: Protocol::Tcp,
            addr: format!("203.0.113.{}:80", s + 1).parse()?,
        };
        changes.push(Change::AddService {
            key: service,
            scheduler: Scheduler::Rr,
            flags: Default::default(),
            persistence: None,
        });
        for r in 0..REALS {
            let ip: IpAddr = format!("198.51.100.{}", r + 1).parse()?;
            macs.insert(ip, [0x02, 0, 0, 0, 1, r as u8]);
            changes.push(Change::AddReal {
                service,
                real: RealServer::dr(SocketAddr::new(ip, 80), 1),
            });
        }
    }
    c.apply(&changes)?;
    c.update_macs(macs)?;
    // Loopback (the ifindex of a run without a context) answers for the frames' destination.
    let station = lb_user::station::plan(&[(1, vec![crate::packets::DIRECTOR_MAC])].into());
    c.dataplane_mut().set_link_macs(&station.slots)?;
    Ok(c)
}

/// The middle of `v` (not empty).
fn median<T: PartialOrd + Copy>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

/// Fills director A with `n` connections through its program (SYNs of new tuples, as the
/// path benchmarks' prefill does). Then `publish_rounds` times: walks A's table alone and
/// publishes it (`sync_table`, `encode`); and `install_rounds` times (each loads two data
/// planes, seconds): installs the messages on a fresh director B, and writes the same entries
/// into a fresh table with nothing around the map update. Fails when anything was not
/// published or installed.
pub fn sync_throughput(
    n: usize,
    publish_rounds: usize,
    install_rounds: usize,
) -> Result<SyncBench> {
    ensure!(
        n > 0 && publish_rounds > 0 && install_rounds > 0,
        "the sync benchmark needs connections and rounds to measure"
    );
    // Twice the entries: the LRU hash evicts nothing at this fill.
    let capacity = (2 * n).next_power_of_two() as u32;
    let mut a = director(capacity)?;
    let scale = Scale {
        services: SERVICES,
        reals: REALS,
        conn_capacity: capacity,
        prefill: n,
        runs: 0,
        reps: 0,
    };
    paths::prefill(a.dataplane_mut(), &scale)?;
    let mut walk = Vec::new();
    let mut table = Vec::new();
    let mut encode_t = Vec::new();
    let mut decode_t = Vec::new();
    let mut install_t = Vec::new();
    let mut raw_t = Vec::new();
    let mut msgs = Vec::new();
    for _ in 0..publish_rounds {
        let t = Instant::now();
        let walked = a.dataplane().connections(usize::MAX)?;
        walk.push(t.elapsed());
        ensure!(
            walked.len() == n,
            "director A's table holds {} live connections, {n} were made",
            walked.len()
        );
        drop(walked);

        let t = Instant::now();
        let conns = a.sync_table();
        table.push(t.elapsed());
        ensure!(
            conns.len() == n,
            "sync_table named {} of {n} connections",
            conns.len()
        );

        let t = Instant::now();
        msgs = encode(SYNCID, &conns, MAXLEN).context("encoding the table")?;
        encode_t.push(t.elapsed());
        ensure!(
            msgs.iter().all(|m| m.len() <= MAXLEN),
            "a message is over {MAXLEN} bytes"
        );
    }
    for round in 0..install_rounds {
        // As the receiver does: each datagram decoded, then its entries installed.
        let mut b = director(capacity)?;
        let (mut dec, mut ins) = (Duration::ZERO, Duration::ZERO);
        let mut installed = 0u64;
        for m in &msgs {
            let t = Instant::now();
            let got = receiver::accept(SYNCID, m)
                .map_err(|why| anyhow::anyhow!("a message was dropped: {why}"))?;
            let t2 = Instant::now();
            let done = b.install_synced(&got);
            ins += t2.elapsed();
            dec += t2 - t;
            ensure!(
                done.skipped.is_empty(),
                "director B skipped entries: {:?}",
                done.skipped
            );
            installed += done.installed;
        }
        decode_t.push(dec);
        install_t.push(ins);
        let held = b.dataplane().connections(usize::MAX)?;
        ensure!(
            installed == n as u64 && held.len() == n,
            "round {round}: director B installed {installed} and holds {} live connections of {n} published",
            held.len()
        );

        // The same writes with nothing around them, into a fresh table of the same size.
        let mut c = Dataplane::load_with(Sizes {
            conns: capacity,
            sched_slots: 1 << 16,
            nat_replies: Some(1024),
        })?;
        let t = Instant::now();
        for h in &held {
            c.install_conn(&h.key, &h.entry)?;
        }
        raw_t.push(t.elapsed());
    }
    let pairs = |a: &[Duration], b: &[Duration]| {
        median(
            a.iter()
                .zip(b)
                .map(|(x, y)| x.as_secs_f64() / y.as_secs_f64())
                .collect(),
        )
    };
    Ok(SyncBench {
        entries: n,
        messages: msgs.len(),
        publish_rounds,
        install_rounds,
        table_over_walk: pairs(&table, &walk),
        install_over_raw: pairs(&install_t, &raw_t),
        walk: median(walk),
        table: median(table),
        encode: median(encode_t),
        decode: median(decode_t),
        install: median(install_t),
        raw_install: median(raw_t),
    })
}

impl SyncBench {
    /// ns per entry of `d`.
    fn ns(&self, d: Duration) -> f64 {
        d.as_nanos() as f64 / self.entries as f64
    }

    /// "E entries/s (X ns/entry, T ms for N)".
    fn rate(&self, d: Duration) -> String {
        format!(
            "{:.0} entries/s ({:.0} ns/entry; {:.1} ms for {})",
            self.entries as f64 / d.as_secs_f64(),
            self.ns(d),
            d.as_secs_f64() * 1000.0,
            self.entries
        )
    }

    /// The section's rows: what, figure.
    pub fn rows(&self) -> Vec<(String, String)> {
        let publish = self.table + self.encode;
        let receive = self.decode + self.install;
        vec![
            (
                "publish: table walk and naming (`Controller::sync_table`)".into(),
                format!(
                    "{}; {:.2}x the batch walk alone (median of adjacent pairs)",
                    self.rate(self.table),
                    self.table_over_walk
                ),
            ),
            (
                format!("publish: encoding into {MAXLEN}-byte IPVS v1 messages ({} messages)", self.messages),
                self.rate(self.encode),
            ),
            ("publish: walk, naming and encoding".into(), self.rate(publish)),
            (
                "install: decoding the messages (`receiver::accept`)".into(),
                self.rate(self.decode),
            ),
            (
                "install: `Controller::install_synced`, message by message".into(),
                format!(
                    "{}; {:.2}x one BPF map update alone (median of the rounds' pairs)",
                    self.rate(self.install),
                    self.install_over_raw
                ),
            ),
            ("install: decoding and installing".into(), self.rate(receive)),
            (
                "same-run floor: batch walk of the connection table alone (`Dataplane::connections`)".into(),
                self.rate(self.walk),
            ),
            (
                "same-run floor: one BPF map update per entry alone (`Dataplane::install_conn`, same entries, empty table)".into(),
                self.rate(self.raw_install),
            ),
        ]
    }

    /// The section's text: what was measured, and what was not.
    pub fn text(&self) -> String {
        format!(
            "The CPU cost of the two ends of connection sync, in one process, without the network: \
             multicast over a real link adds the wire (and the sender's pacing of a whole table). \
             Director A is a real data plane behind xvsd's controller with {SERVICES} TCP DR \
             services (rr) of {REALS} real servers, its connection table filled with {n} \
             connections through the program itself (a SYN of a new IPv4 tuple each); what a \
             master sends a peer that asked for its whole table is timed (`sync_table`: the walk \
             and the naming of each entry's real server; `encode`). Director B, a second real \
             data plane configured the same, decodes each message and installs its entries as \
             the receiver does; its table must then hold all {n} or the run fails. Each figure is \
             the median of its rounds: {p} of the publish side, {r} of the install side (a fresh \
             B each). The two floors are measured in the \
             same run: the publish side's walk against the bare batch walk of the same table, the \
             install side against one BPF map update of the same entry into an empty table of \
             the same size. There is no target for sync: figures only.",
            n = self.entries,
            p = self.publish_rounds,
            r = self.install_rounds
        )
    }
}
