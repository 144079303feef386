//! Per-packet measurements of the director's paths and of the floor.

use std::{collections::HashMap, net::IpAddr};

use anyhow::{bail, ensure, Context, Result};
use aya::{
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};
use lb_common::Reason;
use lb_user::{
    dataplane::{Dataplane, Sizes},
    model::{Change, Config, Persistence, Protocol, RealServer, Scheduler, ServiceKey},
};

use super::{PathResult, Spread};
use crate::packets::{tcp, ACK, SYN};

/// XDP_PASS.
const PASS: u32 = 2;
/// XDP_TX.
const TX: u32 = 3;

/// Benchmark sizes.
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    /// Services per family.
    pub services: usize,
    /// Real servers per service.
    pub reals: usize,
    /// Connection-table capacity.
    pub conn_capacity: u32,
    /// Entries put into the connection table before measuring.
    pub prefill: usize,
    /// Runs per repetition.
    pub runs: usize,
    /// Repetitions.
    pub reps: usize,
}

/// One BPF_PROG_TEST_RUN with repeat = 1: verdict, kernel-measured ns, output bytes.
fn run_once(prog: &mut Xdp, pkt: &[u8], out: &mut [u8]) -> Result<(u32, u64, usize)> {
    run_once_on(prog, pkt, out, None)
}

/// run_once as if the packet arrived on `ifindex` of the calling thread's namespace (FIB
/// lookups then see that namespace's routes).
pub(crate) fn run_once_on(
    prog: &mut Xdp,
    pkt: &[u8],
    out: &mut [u8],
    ifindex: Option<u32>,
) -> Result<(u32, u64, usize)> {
    // struct xdp_md: data, data_end (= the packet's length), data_meta, ingress_ifindex, ...
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(pkt.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.unwrap_or(0).to_ne_bytes());
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(pkt),
            data_out: Some(out),
            ctx_in: ifindex.map(|_| &ctx[..]),
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    Ok((
        r.return_value,
        r.duration.as_nanos() as u64,
        r.data_size_out as usize,
    ))
}

/// Runs `packets` round-robin, `runs` times per repetition; every verdict must be `verdict`.
fn measure(
    prog: &mut Xdp,
    packets: &[Vec<u8>],
    verdict: u32,
    runs: usize,
    reps: usize,
) -> Result<Spread> {
    measure_on(prog, packets, verdict, runs, reps, None)
}

/// measure, with the packets arriving on `ifindex`.
pub(crate) fn measure_on(
    prog: &mut Xdp,
    packets: &[Vec<u8>],
    verdict: u32,
    runs: usize,
    reps: usize,
    ifindex: Option<u32>,
) -> Result<Spread> {
    let mut out = vec![0u8; 2048];
    let mut means = Vec::with_capacity(reps);
    let mut i = 0;
    for _ in 0..reps {
        let mut total = 0u64;
        for _ in 0..runs {
            let (v, ns, _) = run_once_on(prog, &packets[i % packets.len()], &mut out, ifindex)?;
            if v != verdict {
                bail!("run {i}: verdict {v}, expected {verdict}: the intended path was not taken");
            }
            total += ns;
            i += 1;
        }
        means.push(total as f64 / runs as f64);
    }
    Ok(Spread::of(means))
}

/// The bare `bounds check + XDP_TX` floor.
pub fn floor(scale: &Scale) -> Result<PathResult> {
    aux_path(
        lb_common::names::PROG_FLOOR_TX,
        "floor: bounds check + XDP_TX",
        scale,
    )
}

/// One of tests/ebpf's programs run on one TCP packet it answers with XDP_TX.
fn aux_path(program: &str, name: &str, scale: &Scale) -> Result<PathResult> {
    let mut ebpf = Ebpf::load(crate::object::AUX)?;
    let prog: &mut Xdp = ebpf
        .program_mut(program)
        .with_context(|| format!("{program} program"))?
        .try_into()?;
    prog.load()?;
    let pkt = tcp("192.0.2.1", 1, "203.0.113.1", 80, ACK);
    Ok(PathResult {
        name: name.into(),
        ns: measure(prog, &[pkt], TX, scale.runs, scale.reps)?,
        runs: scale.runs * scale.reps,
    })
}

/// The kernel's own share of the connection-table rows: an LRU hash with CONNS' key and value
/// sizes and capacity, filled as the director's table is, with nothing of xvs around it
/// (tests/ebpf's xvs_lru_floor). Two rows: 20k keys that hit, and a new key on every run
/// (a lookup that misses, then an insert).
pub fn lru_floor(scale: &Scale) -> Result<Vec<PathResult>> {
    let mut ebpf = EbpfLoader::new()
        .map_max_entries("LRU_FLOOR", scale.conn_capacity)
        .load(crate::object::AUX)?;
    let prog: &mut Xdp = ebpf
        .program_mut(lb_common::names::PROG_LRU_FLOOR)
        .context("LRU floor program")?
        .try_into()?;
    prog.load()?;
    let mut out = vec![0u8; 2048];
    let mut insert = |pkt: &[u8]| -> Result<()> {
        let (v, _, _) = run_once(prog, pkt, &mut out)?;
        ensure!(v == PASS, "LRU floor: a new key answered {v}");
        Ok(())
    };
    for n in 0..scale.prefill {
        let (src, port) = client(4, 10_000_000 + n);
        insert(&tcp(&src, port, &vip(4, n % scale.services), 80, SYN))?;
    }
    let spread: Vec<Vec<u8>> = (0..20_000)
        .map(|n| {
            let (c, p) = client(4, 1_000 + n);
            tcp(&c, p, &vip(4, n % scale.services), 80, ACK)
        })
        .collect();
    for pkt in &spread {
        insert(pkt)?;
    }
    let total = scale.runs * scale.reps;
    let fresh: Vec<Vec<u8>> = (0..total)
        .map(|n| {
            let (c, p) = client(4, 100_000 + n);
            tcp(&c, p, &vip(4, n % scale.services), 80, SYN)
        })
        .collect();
    Ok(vec![
        PathResult {
            name: "kernel LRU hash alone: 20k keys, hit (IPv4)".into(),
            ns: measure(prog, &spread, TX, scale.runs, scale.reps)?,
            runs: total,
        },
        PathResult {
            name: "kernel LRU hash alone: new key, miss + insert (IPv4)".into(),
            ns: measure(prog, &fresh, PASS, scale.runs, scale.reps)?,
            runs: total,
        },
    ])
}

/// The kernel's and the header's own share of a TUN packet: an IPIP header pushed in front of
/// the frame (tests/ebpf's xvs_ipip_floor), with no lookup.
pub fn ipip_floor(scale: &Scale) -> Result<PathResult> {
    aux_path(
        lb_common::names::PROG_IPIP_FLOOR,
        "IPIP encapsulation alone (head grown, outer header written)",
        scale,
    )
}

fn vip(family: u8, i: usize) -> String {
    if family == 4 {
        format!("203.0.113.{}", i + 1)
    } else {
        format!("2001:db8:10::{:x}", i + 1)
    }
}

fn rip(family: u8, i: usize) -> String {
    if family == 4 {
        format!("198.51.100.{}", i + 1)
    } else {
        format!("2001:db8:1::{:x}", i + 1)
    }
}

fn client(family: u8, n: usize) -> (String, u16) {
    // 65000 ports per client address; addresses from the documentation ranges.
    let port = 1 + (n % 65000) as u16;
    let host = n / 65000;
    if family == 4 {
        (format!("192.0.2.{}", host % 256), port)
    } else {
        (format!("2001:db8:2::{:x}", host + 1), port)
    }
}

/// A distinct client address per `n` (up to 4M), port 1000.
fn unique_client(family: u8, n: usize) -> (String, u16) {
    if family == 4 {
        let a = 0x6440_0000u32 + n as u32; // 100.64.0.0/10
        (std::net::Ipv4Addr::from(a).to_string(), 1000)
    } else {
        (format!("2001:db8:4::{:x}:{:x}", n >> 16, n & 0xffff), 1000)
    }
}

/// The scheduler of service `s`: rr, wrr (weights 1..=reals), mh (a full-size Maglev table),
/// and rr with persistence, in turn.
fn service_kind(s: usize) -> (Scheduler, bool) {
    match s % 4 {
        0 => (Scheduler::Rr, false),
        1 => (Scheduler::Wrr, false),
        2 => (Scheduler::Mh, false),
        _ => (Scheduler::Rr, true),
    }
}

/// Loads the director with `scale.services` services per family (rr, wrr with weights
/// 1..=reals, mh with a 65537-slot Maglev table, persistent rr, in turn), each with
/// `scale.reals` real servers.
pub fn director(scale: &Scale) -> Result<Dataplane> {
    let mut dp = Dataplane::load_with(Sizes {
        conns: scale.conn_capacity,
        sched_slots: 1 << 23,
        nat_replies: None,
    })?;
    let mut config = Config::default();
    let mut macs: HashMap<IpAddr, [u8; 6]> = HashMap::new();
    let mut changes = Vec::new();
    for family in [4u8, 6] {
        for r in 0..scale.reals {
            macs.insert(
                rip(family, r).parse()?,
                [0x02, 0, 0, 0, (r >> 8) as u8, r as u8],
            );
        }
        for s in 0..scale.services {
            let addr = if family == 4 {
                format!("{}:80", vip(family, s))
            } else {
                format!("[{}]:80", vip(family, s))
            };
            let key = ServiceKey::Addr {
                protocol: Protocol::Tcp,
                addr: addr.parse()?,
            };
            let (scheduler, persistent) = service_kind(s);
            changes.push(Change::AddService {
                key,
                scheduler,
                flags: Default::default(),
                persistence: persistent.then_some(Persistence {
                    timeout: 300,
                    prefix: if family == 4 { 32 } else { 128 },
                }),
            });
            for r in 0..scale.reals {
                let ip: IpAddr = rip(family, r).parse()?;
                changes.push(Change::AddReal {
                    service: key,
                    real: RealServer::dr(
                        std::net::SocketAddr::new(ip, 80),
                        if scheduler == Scheduler::Wrr {
                            r as u32 + 1
                        } else {
                            1
                        },
                    ),
                });
            }
        }
    }
    config.apply_all(&changes)?;
    dp.sync(&config, &macs)?;
    // The ingress interface (loopback, ifindex 1, for a run without a context) answers for the
    // frames' destination, as xvsd describes an attached interface: every measured frame pays
    // the station-address check in full.
    let station = lb_user::station::plan(&[(1, vec![crate::packets::DIRECTOR_MAC])].into());
    dp.set_link_macs(&station.slots)?;
    Ok(dp)
}

/// Fills the connection table with `n` flows through the program itself (new-flow path).
pub fn prefill(dp: &mut Dataplane, scale: &Scale) -> Result<()> {
    let mut out = vec![0u8; 2048];
    let prog = dp.program();
    for n in 0..scale.prefill {
        // Offset past the clients the measurements use.
        let (src, port) = client(4, 10_000_000 + n);
        let pkt = tcp(&src, port, &vip(4, n % scale.services), 80, SYN);
        let (v, _, _) = run_once(prog, &pkt, &mut out)?;
        ensure!(v == TX, "prefill packet {n}: verdict {v}");
    }
    Ok(())
}

/// Puts `n` new connections through the program, clients from number `from` on, spread over
/// the IPv4 services: every `active_every`-th one opens with an ACK (a mid-flow miss, recorded
/// ESTABLISHED: ActiveConn), the rest with a SYN (SYN_RECV: InActConn).
pub fn new_connections(
    dp: &mut Dataplane,
    services: usize,
    from: usize,
    n: usize,
    active_every: usize,
) -> Result<()> {
    let mut out = vec![0u8; 2048];
    let prog = dp.program();
    for i in from..from + n {
        let (src, port) = client(4, i);
        let flags = if i % active_every == 0 { ACK } else { SYN };
        let pkt = tcp(&src, port, &vip(4, i % services), 80, flags);
        let (v, _, _) = run_once(prog, &pkt, &mut out)?;
        ensure!(v == TX, "connection {i}: verdict {v}");
    }
    Ok(())
}

pub(crate) fn reason(dp: &Dataplane, r: Reason) -> Result<u64> {
    Ok(dp
        .reasons()?
        .into_iter()
        .find(|(x, _)| *x == r)
        .map(|(_, n)| n)
        .unwrap_or(0))
}

/// Measures one path and checks that `counted` moved by exactly the number of runs.
fn path(
    dp: &mut Dataplane,
    name: &str,
    packets: &[Vec<u8>],
    verdict: u32,
    counted: Reason,
    scale: &Scale,
) -> Result<PathResult> {
    let before = reason(dp, counted)?;
    let ns = measure(dp.program(), packets, verdict, scale.runs, scale.reps)?;
    let moved = reason(dp, counted)? - before;
    let expected = (scale.runs * scale.reps) as u64;
    ensure!(
        moved == expected,
        "{name}: counter {} moved by {moved}, expected {expected}: some runs took another path",
        counted.name()
    );
    Ok(PathResult {
        name: name.into(),
        ns,
        runs: scale.runs * scale.reps,
    })
}

/// Every director path.
pub fn director_paths(dp: &mut Dataplane, scale: &Scale) -> Result<Vec<PathResult>> {
    let total = scale.runs * scale.reps;
    let mut results = Vec::new();
    for family in [4u8, 6] {
        let fam = if family == 4 { "IPv4" } else { "IPv6" };
        let nonvip = if family == 4 {
            "192.0.2.200"
        } else {
            "2001:db8:99::1"
        };
        let (c, p) = client(family, 0);
        results.push(path(
            dp,
            &format!("pass-through, not a service ({fam})"),
            &[tcp(&c, p, nonvip, 80, ACK)],
            PASS,
            Reason::PassNotService,
            scale,
        )?);
        // Established, hot: one flow, past its handshake and first data (the proof rule
        // re-inserts an entry at its client's 2nd packet: measured below, not here).
        let hot = tcp(&c, p, &vip(family, 0), 80, ACK);
        let mut out = vec![0u8; 2048];
        for setup in [&tcp(&c, p, &vip(family, 0), 80, SYN), &hot, &hot] {
            ensure!(run_once(dp.program(), setup, &mut out)?.0 == TX);
        }
        results.push(path(
            dp,
            &format!("DR established, one flow ({fam})"),
            &[hot],
            TX,
            Reason::ConnHit,
            scale,
        )?);
        // Established, spread: 20k flows over all services, set up first.
        let spread: Vec<Vec<u8>> = (0..20_000)
            .map(|n| {
                let (c, p) = client(family, 1_000 + n);
                tcp(&c, p, &vip(family, n % scale.services), 80, ACK)
            })
            .collect();
        // Three packets each: proven entries, as established connections' are.
        for _ in 0..3 {
            for pkt in &spread {
                ensure!(run_once(dp.program(), pkt, &mut out)?.0 == TX);
            }
        }
        results.push(path(
            dp,
            &format!("DR established, 20k flows ({fam})"),
            &spread,
            TX,
            Reason::ConnHit,
            scale,
        )?);
        // A new connection's 2nd packet (its handshake's ACK): the proof rule's delete and
        // insert, once per connection.
        let seconds: Vec<Vec<u8>> = (0..total)
            .map(|n| {
                let (c, p) = client(family, 7_000_000 + n);
                let v = vip(family, n % scale.services);
                ensure!(run_once(dp.program(), &tcp(&c, p, &v, 80, SYN), &mut out)?.0 == TX);
                Ok(tcp(&c, p, &v, 80, ACK))
            })
            .collect::<Result<_>>()?;
        results.push(path(
            dp,
            &format!("DR a new flow's 2nd packet, re-inserted ({fam})"),
            &seconds,
            TX,
            Reason::ConnHit,
            scale,
        )?);
        // New flows (the cold case: a new 5-tuple on every packet), one scheduler family each:
        // a sequence table (rr, wrr), a hash table (Maglev), a new persistence template.
        for (sched, offset) in [
            ("rr table", 0usize),
            ("wrr table", 1),
            ("Maglev (mh)", 2),
            ("persistent rr, new template", 3),
        ] {
            let fresh: Vec<Vec<u8>> = (0..total)
                .map(|n| {
                    let (c, p) = if offset == 3 {
                        // A new client address for every packet, so each needs a new template
                        // (never on a wire: 100.64.0.0/10 has room for every run).
                        unique_client(family, n)
                    } else {
                        client(family, 100_000 + offset * 2_000_000 + n)
                    };
                    tcp(
                        &c,
                        p,
                        // Services of this kind only: indices offset, offset + 4, ...
                        &vip(family, offset + 4 * (n % (scale.services / 4).max(1))),
                        80,
                        SYN,
                    )
                })
                .collect();
            results.push(path(
                dp,
                &format!("DR new flow, {sched} ({fam})"),
                &fresh,
                TX,
                if offset == 3 {
                    Reason::PersistNew
                } else {
                    Reason::ConnNew
                },
                scale,
            )?);
        }
        // New flow of a client that has a persistence template: the template decides. Each
        // client opens 60,000 new connections at most, so no 5-tuple repeats.
        let clients = total.div_ceil(60_000);
        for k in 0..clients {
            let (c, _) = unique_client(family, 3_000_000 + k);
            ensure!(
                run_once(
                    dp.program(),
                    &tcp(&c, 1, &vip(family, 3), 80, SYN),
                    &mut out
                )?
                .0 == TX
            );
        }
        let known: Vec<Vec<u8>> = (0..total)
            .map(|n| {
                let (c, _) = unique_client(family, 3_000_000 + n / 60_000);
                tcp(&c, 2 + (n % 60_000) as u16, &vip(family, 3), 80, SYN)
            })
            .collect();
        results.push(path(
            dp,
            &format!("DR new flow, persistence template hit ({fam})"),
            &known,
            TX,
            Reason::PersistHit,
            scale,
        )?);
    }
    Ok(results)
}
