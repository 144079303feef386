//! Per-packet cost of NAT forwarding: a client's packet to its real server (established, and a
//! new flow), and the real server's reply back from the VIP, IPv4 and IPv6. Both directions ask
//! the kernel's FIB, so these paths run inside a namespace of their own (created and removed
//! here), as the tunnel paths do.

use std::collections::HashMap;

use anyhow::{ensure, Context, Result};
use lb_common::{config_flags, Reason};
use lb_user::{
    dataplane::{Dataplane, Sizes},
    model::{Change, Config, ForwardMethod, Protocol, RealServer, Scheduler, ServiceKey},
};

use super::{
    paths::{measure_on, reason, run_once_on, Scale},
    tunnel::in_fib_ns,
    PathResult,
};
use crate::packets::{tcp, Flags, ACK, SYN};

const NS: &str = "xvsbench-nat";
const TX: u32 = 3;

/// (family, VIP, real server, client network prefix)
const FAMILIES: [(&str, &str, &str, &str); 2] = [
    ("IPv4", "203.0.113.10", "198.51.100.20", "192.0.2."),
    (
        "IPv6",
        "2001:db8:10::10",
        "2001:db8:100::20",
        "2001:db8:2::",
    ),
];

/// NAT inbound (established and new flow) and reply paths, IPv4 and IPv6.
pub fn nat_paths(scale: &Scale) -> Result<Vec<PathResult>> {
    let scale = *scale;
    in_fib_ns(
        NS,
        "ip route add 192.0.2.0/24 via 198.51.100.62
        ip -6 route add 2001:db8:2::/64 via 2001:db8:100::fe",
        move || measure_all(&scale),
    )
}

fn bracket(a: &str, port: u16) -> String {
    if a.contains(':') {
        format!("[{a}]:{port}")
    } else {
        format!("{a}:{port}")
    }
}

fn measure_all(scale: &Scale) -> Result<Vec<PathResult>> {
    crate::progtest::pin_to_cpu0();
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(c"d0".as_ptr()) };
    ensure!(ifindex != 0, "d0 missing");
    let mut dp = Dataplane::load_with(Sizes {
        conns: scale.conn_capacity,
        sched_slots: 1 << 20,
    })?;
    let mut config = Config::default();
    let mut changes = Vec::new();
    for (_, vip, rs, _) in FAMILIES {
        let key = ServiceKey::Addr {
            protocol: Protocol::Tcp,
            addr: bracket(vip, 80).parse()?,
        };
        changes.push(Change::add_service(key, Scheduler::Rr));
        changes.push(Change::AddReal {
            service: key,
            real: RealServer {
                forward: ForwardMethod::Nat,
                ..RealServer::dr(bracket(rs, 8080).parse()?, 1)
            },
        });
    }
    config.apply_all(&changes).context("NAT services")?;
    dp.sync(&config, &HashMap::new())?;
    let mut cfg = dp.current_config()?;
    cfg.flags |= config_flags::NAT;
    dp.set_config(cfg)?;

    let mut results = Vec::new();
    let mut out = vec![0u8; 2048];
    let total = scale.runs * scale.reps;
    let measure = |dp: &mut Dataplane,
                   name: String,
                   pkts: &[Vec<u8>],
                   counted: Reason|
     -> Result<PathResult> {
        let before = reason(dp, counted)?;
        let ns = measure_on(
            dp.program(),
            pkts,
            TX,
            scale.runs,
            scale.reps,
            Some(ifindex),
        )?;
        let moved = reason(dp, counted)? - before;
        ensure!(
            moved == total as u64,
            "{name}: {} moved by {moved}, expected {total}",
            counted.name()
        );
        Ok(PathResult {
            name,
            ns,
            runs: total,
        })
    };
    let syn_ack = Flags {
        syn: true,
        ack: true,
        fin: false,
        rst: false,
    };
    for (fam, vip, rs, net) in FAMILIES {
        let client = format!("{net}1");
        let (v, _, _) = run_once_on(
            dp.program(),
            &tcp(&client, 1000, vip, 80, SYN),
            &mut out,
            Some(ifindex),
        )?;
        ensure!(v == TX, "NAT {fam}: SYN verdict {v}");
        results.push(measure(
            &mut dp,
            format!("NAT established, one flow ({fam})"),
            &[tcp(&client, 1000, vip, 80, ACK)],
            Reason::TxNat,
        )?);
        results.push(measure(
            &mut dp,
            format!("NAT reply, one flow ({fam})"),
            &[tcp(rs, 8080, &client, 1000, syn_ack)],
            Reason::TxNatReply,
        )?);
        // A new tuple for every run: clients' ports over many client addresses.
        let fresh: Vec<Vec<u8>> = (0..total)
            .map(|n| {
                let c = format!("{net}{}", 2 + n / 60_000);
                tcp(&c, 1 + (n % 60_000) as u16, vip, 80, SYN)
            })
            .collect();
        results.push(measure(
            &mut dp,
            format!("NAT new flow, rr ({fam})"),
            &fresh,
            Reason::ConnNew,
        )?);
    }
    Ok(results)
}
