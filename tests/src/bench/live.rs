//! Live traffic: packets per second through a program attached to a veth, generated with
//! BPF_PROG_TEST_RUN live frames from a generator namespace and counted by a sink program on the
//! generator's side (the program under test sends every frame back with XDP_TX).
//!
//! gen ns: g0 [xvs_sink counts and drops]  <-- veth -->  d0 [program under test, XDP_TX]  :dut ns
//!
//! Two-arm NAT: the director translates each frame toward a real server behind a second veth
//! and redirects it there (XDP_REDIRECT), where the sink counts it:
//!
//! gen ns: g0 --> d0 [director: NAT, redirect to d1] d1 --> g1 [xvs_sink]  (dut ns: d0, d1)

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use aya::{
    maps::{Array, PerCpuArray},
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
    Ebpf,
};
use lb_common::{config_flags, names};
use lb_user::{
    dataplane::{AttachMode, Dataplane, Sizes},
    model::{Change, Config, ForwardMethod, Protocol, RealServer, Scheduler, ServiceKey},
};

use crate::{netns, packets::tcp, packets::ACK};

const GEN: &str = "xvs-bench-gen";
const DUT: &str = "xvs-bench-dut";

/// What runs on the device under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dut {
    /// Bare XDP_TX hairpin.
    Hairpin,
    /// The director forwarding an established DR flow.
    Director,
    /// The director translating an established NAT flow toward a real server behind its second
    /// interface (two arms: XDP_REDIRECT).
    TwoArmNat,
}

/// Holds the namespaces and programs; removes the namespaces on drop.
struct Rig {
    gen: Ebpf,
    dut: DutKeep,
    g0_ifindex: u32,
}

/// What runs on the device under test, kept loaded while it is measured.
enum DutKeep {
    /// The hairpin's object.
    Hairpin(#[allow(dead_code)] Ebpf),
    /// The director (boxed: it is much larger than the hairpin's object).
    Director(Box<Dataplane>),
}

impl DutKeep {
    /// The director's non-zero reason counters (for a failure's message).
    fn reasons(&self) -> String {
        match self {
            DutKeep::Hairpin(_) => String::new(),
            DutKeep::Director(dp) => dp
                .reasons()
                .map(|r| {
                    r.into_iter()
                        .filter(|(_, n)| *n > 0)
                        .map(|(r, n)| format!("{}={n}", r.name()))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default(),
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        netns::destroy(GEN);
        netns::destroy(DUT);
    }
}

fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).expect("name");
    // SAFETY: valid C string.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

fn rig(dut: Dut) -> Result<Rig> {
    netns::destroy(GEN);
    netns::destroy(DUT);
    netns::create(GEN)?;
    netns::create(DUT)?;
    netns::ip(&[
        "-n", GEN, "link", "add", "g0", "type", "veth", "peer", "name", "d0", "netns", DUT,
    ])?;
    netns::ip(&["-n", GEN, "link", "set", "g0", "up"])?;
    netns::ip(&["-n", DUT, "link", "set", "d0", "up"])?;
    if dut == Dut::TwoArmNat {
        netns::ip(&[
            "-n", GEN, "link", "add", "g1", "type", "veth", "peer", "name", "d1", "netns", DUT,
        ])?;
        netns::ip(&["-n", GEN, "link", "set", "g1", "up"])?;
        let out = netns::sh(
            DUT,
            "set -e
            ip link set d1 up
            ip addr add 198.51.100.2/24 dev d0
            ip addr add 10.9.0.1/24 dev d1
            ip neigh add 10.9.0.11 lladdr 02:00:00:00:00:11 dev d1 nud permanent
            sysctl -qw net.ipv4.conf.all.forwarding=1",
        )?;
        ensure!(
            out.status.success(),
            "two-arm rig: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (gen, g0_ifindex) = netns::in_netns(GEN, move || -> Result<(Ebpf, u32)> {
        let mut ebpf = Ebpf::load(crate::object::AUX)?;
        let sink: &mut Xdp = ebpf
            .program_mut(names::PROG_SINK)
            .context("sink")?
            .try_into()?;
        sink.load()?;
        sink.attach("g0", XdpMode::Driver)?;
        if dut == Dut::TwoArmNat {
            // Counts what the director redirects out of d1 (and gives d1's redirects a peer
            // with an XDP program, which veth needs to deliver them).
            sink.attach("g1", XdpMode::Driver)?;
        }
        let floor: &mut Xdp = ebpf
            .program_mut(names::PROG_FLOOR_TX)
            .context("floor")?
            .try_into()?;
        floor.load()?;
        Ok((ebpf, ifindex("g0")))
    })??;
    let dut_keep = match dut {
        Dut::Hairpin => DutKeep::Hairpin(netns::in_netns(DUT, || -> Result<Ebpf> {
            let mut ebpf = Ebpf::load(crate::object::AUX)?;
            let p: &mut Xdp = ebpf
                .program_mut(names::PROG_FLOOR_TX)
                .context("floor")?
                .try_into()?;
            p.load()?;
            p.attach("d0", XdpMode::Driver)?;
            Ok(ebpf)
        })??),
        Dut::Director => DutKeep::Director(Box::new(netns::in_netns(DUT, || {
            let real = RealServer::dr("198.51.100.1:80".parse()?, 1);
            let macs = HashMap::from([("198.51.100.1".parse()?, [0x02, 0, 0, 0, 0, 0x11])]);
            director(real, &macs, &["d0"])
        })??)),
        Dut::TwoArmNat => DutKeep::Director(Box::new(netns::in_netns(DUT, || {
            let real = RealServer {
                forward: ForwardMethod::Nat,
                ..RealServer::dr("10.9.0.11:8080".parse()?, 1)
            };
            // The redirect target needs the program too (veth delivers a redirected frame only
            // into an interface whose peer runs XDP; xvsd attaches to every arm anyway).
            director(real, &HashMap::new(), &["d0", "d1"])
        })??)),
    };
    Ok(Rig {
        gen,
        dut: dut_keep,
        g0_ifindex,
    })
}

/// The director with one service (TCP 203.0.113.1:80, rr) and one real server, CONFIG's NAT
/// flag set when it is NAT, attached in native mode to `ifaces`.
fn director(
    real: RealServer,
    macs: &HashMap<std::net::IpAddr, [u8; 6]>,
    ifaces: &[&str],
) -> Result<Dataplane> {
    let mut dp = Dataplane::load_with(Sizes {
        conns: 1 << 16,
        sched_slots: 1 << 16,
        nat_replies: None,
    })?;
    let key = ServiceKey::Addr {
        protocol: Protocol::Tcp,
        addr: "203.0.113.1:80".parse()?,
    };
    let nat = real.forward == ForwardMethod::Nat;
    let mut config = Config::default();
    config.apply_all(&[
        Change::add_service(key, Scheduler::Rr),
        Change::AddReal { service: key, real },
    ])?;
    dp.sync(&config, macs)?;
    if nat {
        let mut cfg = dp.current_config()?;
        cfg.flags |= config_flags::NAT;
        dp.set_config(cfg)?;
    }
    for iface in ifaces {
        dp.attach(iface, AttachMode::Native)?;
    }
    Ok(dp)
}

fn sink_count(gen: &Ebpf) -> Result<u64> {
    let map = gen.map(names::MAP_SINK_COUNT).context("sink map")?;
    let arr: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
    Ok(arr.get(&0, 0)?.iter().sum())
}

/// Packets per second the sink received while `threads` generators (one per CPU) each sent
/// `frames` live frames through the device under test.
pub fn pps(dut: Dut, threads: usize, frames: u32) -> Result<f64> {
    let rig = rig(dut)?;
    let pkt = tcp("192.0.2.1", 40000, "203.0.113.1", 80, ACK);
    // A path that rewrites the frame needs it restored each time it is sent again (the
    // generator then costs a 54-byte copy more per frame: its ratio errs low, if anything).
    let generator = if dut == Dut::TwoArmNat {
        names::PROG_GEN_STAMP
    } else {
        names::PROG_FLOOR_TX
    };
    let before = sink_count(&rig.gen)?;
    // xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
    // The kernel requires data = 0 and data_end = the frame length.
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(pkt.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&rig.g0_ifindex.to_ne_bytes());
    // Each generator loads its own program, then all start together.
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|cpu| {
            let pkt = pkt.clone();
            let barrier = barrier.clone();
            netns::spawn_in_netns(GEN, move || -> Result<()> {
                crate::progtest::pin_to_cpu(cpu);
                let loaded = (|| -> Result<Ebpf> {
                    let mut ebpf = Ebpf::load(crate::object::AUX)?;
                    if generator == names::PROG_GEN_STAMP {
                        let mut t: Array<_, [u8; 54]> = Array::try_from(
                            ebpf.map_mut(names::MAP_GEN_TEMPLATE).context("template")?,
                        )?;
                        t.set(0, <[u8; 54]>::try_from(&pkt[..54])?, 0)?;
                    }
                    let p: &mut Xdp = ebpf
                        .program_mut(generator)
                        .context("generator")?
                        .try_into()?;
                    p.load()?;
                    Ok(ebpf)
                })();
                barrier.wait();
                let mut ebpf = loaded?;
                let prog: &mut Xdp = ebpf
                    .program_mut(generator)
                    .context("generator")?
                    .try_into()?;
                prog.test_run(TestRunOptions {
                    data_in: Some(&pkt),
                    ctx_in: Some(&ctx),
                    repeat: frames,
                    attrs: TestRunAttrs::new().xdp_live_frames(64),
                    ..Default::default()
                })?;
                Ok(())
            })
        })
        .collect::<Result<_>>()?;
    barrier.wait();
    let start = Instant::now();
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("generator panicked"))??;
    }
    let elapsed = start.elapsed();
    // Frames in flight land within a moment.
    std::thread::sleep(Duration::from_millis(50));
    let received = sink_count(&rig.gen)? - before;
    let sent = frames as u64 * threads as u64;
    ensure!(
        received * 10 >= sent,
        "{dut:?}: the sink saw {received} of {sent} frames: the path is not forwarding ({})",
        rig.dut.reasons()
    );
    Ok(received as f64 / elapsed.as_secs_f64())
}
