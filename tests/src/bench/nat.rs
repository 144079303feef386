//! Per-packet cost of NAT and FULLNAT forwarding: a client's packet to its real server
//! (established, and a new flow, which for FULLNAT allocates a local port), and the real
//! server's reply back from the VIP, IPv4 and IPv6. Both directions ask the kernel's FIB, so
//! these paths run inside a namespace of their own (created and removed here), as the tunnel
//! paths do.

use std::collections::HashMap;

use anyhow::{ensure, Context, Result};
use lb_common::{config_flags, Reason};
use lb_user::{
    dataplane::{Dataplane, Sizes},
    model::{
        Change, Config, ForwardMethod, LocalAddr, PortRange, Protocol, RealServer, Scheduler,
        ServiceKey,
    },
};

use super::{
    paths::{measure_on, reason, run_once_on, Scale},
    tunnel::in_fib_ns,
    PathResult,
};
use crate::packets::{tcp, Flags, ACK, SYN};

const NS: &str = "xvsbench-nat";
const TX: u32 = 3;

/// (family, VIP, real server, client network prefix, FULLNAT local address prefix)
const FAMILIES: [(&str, &str, &str, &str, &str); 2] = [
    (
        "IPv4",
        "203.0.113.10",
        "198.51.100.20",
        "192.0.2.",
        "198.51.100.",
    ),
    (
        "IPv6",
        "2001:db8:10::10",
        "2001:db8:100::20",
        "2001:db8:2::",
        "2001:db8:100::",
    ),
];

/// FULLNAT local addresses per family (.2 to .9): 8 x 64,512 ports, room for every new flow a
/// full run makes toward one real server.
const LOCAL_ADDRS: u8 = 8;

/// NAT and FULLNAT inbound (established and new flow) and reply paths, IPv4 and IPv6.
pub fn nat_paths(scale: &Scale) -> Result<Vec<PathResult>> {
    let scale = *scale;
    in_fib_ns(
        NS,
        "ip route add 192.0.2.0/24 via 198.51.100.62
        ip -6 route add 2001:db8:2::/64 via 2001:db8:100::fe",
        move || {
            let mut v = measure_all(&scale, ForwardMethod::Nat)?;
            v.extend(measure_all(&scale, ForwardMethod::FullNat)?);
            Ok(v)
        },
    )
}

fn bracket(a: &str, port: u16) -> String {
    if a.contains(':') {
        format!("[{a}]:{port}")
    } else {
        format!("{a}:{port}")
    }
}

/// The source port of a translated frame (no VLAN).
fn sport(f: &[u8]) -> u16 {
    let l4 = if f[12..14] == [0x86, 0xdd] { 54 } else { 34 };
    u16::from_be_bytes([f[l4], f[l4 + 1]])
}

fn measure_all(scale: &Scale, mode: ForwardMethod) -> Result<Vec<PathResult>> {
    let fullnat = mode == ForwardMethod::FullNat;
    let (label, tx) = if fullnat {
        ("FULLNAT", Reason::TxFullNat)
    } else {
        ("NAT", Reason::TxNat)
    };
    crate::progtest::pin_to_cpu0();
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(c"d0".as_ptr()) };
    ensure!(ifindex != 0, "d0 missing");
    let mut dp = Dataplane::load_with(Sizes {
        conns: scale.conn_capacity,
        sched_slots: 1 << 20,
        nat_replies: None,
    })?;
    let mut config = Config::default();
    let mut changes = Vec::new();
    for (_, vip, rs, _, lnet) in FAMILIES {
        let key = ServiceKey::Addr {
            protocol: Protocol::Tcp,
            addr: bracket(vip, 80).parse()?,
        };
        changes.push(Change::add_service(key, Scheduler::Rr));
        if fullnat {
            for i in 0..LOCAL_ADDRS {
                changes.push(Change::AddLocalAddr {
                    service: key,
                    laddr: LocalAddr {
                        addr: format!("{lnet}{}", 2 + i).parse()?,
                        ports: PortRange::DEFAULT,
                        iface: None,
                    },
                });
            }
        }
        changes.push(Change::AddReal {
            service: key,
            real: RealServer {
                forward: mode,
                ..RealServer::dr(bracket(rs, 8080).parse()?, 1)
            },
        });
    }
    config
        .apply_all(&changes)
        .with_context(|| format!("{label} services"))?;
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
    for (fam, vip, rs, net, _) in FAMILIES {
        let client = format!("{net}1");
        let (v, _, len) = run_once_on(
            dp.program(),
            &tcp(&client, 1000, vip, 80, SYN),
            &mut out,
            Some(ifindex),
        )?;
        ensure!(v == TX, "{label} {fam}: SYN verdict {v}");
        // The reply goes to what the real server saw: the client, or the local address and
        // port the connection was given.
        let (to, to_port) = if fullnat {
            let f = &out[..len];
            let src = if f[12..14] == [0x86, 0xdd] {
                std::net::IpAddr::from(<[u8; 16]>::try_from(&f[22..38])?).to_string()
            } else {
                std::net::IpAddr::from(<[u8; 4]>::try_from(&f[26..30])?).to_string()
            };
            (src, sport(f))
        } else {
            (client.clone(), 1000)
        };
        results.push(measure(
            &mut dp,
            format!("{label} established, one flow ({fam})"),
            &[tcp(&client, 1000, vip, 80, ACK)],
            tx,
        )?);
        results.push(measure(
            &mut dp,
            format!("{label} reply, one flow ({fam})"),
            &[tcp(rs, 8080, &to, to_port, syn_ack)],
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
            format!("{label} new flow, rr ({fam})"),
            &fresh,
            Reason::ConnNew,
        )?);
    }
    Ok(results)
}
