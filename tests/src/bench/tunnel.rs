//! Per-packet cost of TUN forwarding and of ICMP too-big replies. The director's FIB lookups
//! need routes and neighbours, so these paths run inside a namespace of their own (created and
//! removed here) on a director loaded there, with the packets arriving on its interface.

use std::collections::HashMap;

use anyhow::{ensure, Context, Result};
use lb_common::Reason;
use lb_user::{
    dataplane::{Dataplane, Sizes},
    model::{
        Change, Config, ForwardMethod, Protocol, RealServer, Scheduler, ServiceKey, Tunnel,
        TunnelKind,
    },
};

use super::{
    paths::{measure_on, reason, run_once_on, Scale},
    PathResult,
};
use crate::{
    netns,
    packets::{frame, tcp, ACK, L4, SYN},
};

const NS: &str = "xvsbench-tun";
const TX: u32 = 3;

/// One tunnelled service per case: (name, VIP, port, real server, tunnel).
fn cases() -> Vec<(&'static str, &'static str, u16, &'static str, Tunnel)> {
    let gue = Tunnel {
        kind: TunnelKind::Gue,
        port: 6080,
        csum: false,
    };
    vec![
        ("IPIP", "203.0.113.10", 80, "198.51.100.20", Tunnel::IPIP),
        (
            "GUE, no outer checksum",
            "203.0.113.10",
            81,
            "198.51.100.20",
            gue,
        ),
        (
            "GUE, outer checksum",
            "203.0.113.10",
            82,
            "198.51.100.20",
            Tunnel { csum: true, ..gue },
        ),
        (
            "IP6IP6",
            "2001:db8:10::10",
            80,
            "2001:db8:100::20",
            Tunnel::IPIP,
        ),
        (
            "GUE over IPv6",
            "2001:db8:10::10",
            81,
            "2001:db8:100::20",
            gue,
        ),
    ]
}

/// TUN established-flow hits (one flow each) and ICMP too-big generation, IPv4 and IPv6.
pub fn tunnel_paths(scale: &Scale) -> Result<Vec<PathResult>> {
    let scale = *scale;
    in_fib_ns(
        NS,
        "ip route add 198.51.100.64/26 via 198.51.100.62 mtu lock 1300
        ip -6 route add 2001:db8:200::/64 via 2001:db8:100::fe mtu lock 1400",
        move || measure_all(&scale),
    )
}

/// Runs `f` inside namespace `ns`, made for it and removed after: d0 (198.51.100.1/26,
/// 2001:db8:100::1/64) with on-link neighbours .20 / ::20 and a router .62 / ::fe, IP forwarding
/// on (the FIB answers only then), and the `routes` given.
pub(crate) fn in_fib_ns<T: Send + 'static>(
    ns: &'static str,
    routes: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    /// Removes the namespace on drop.
    struct Ns(&'static str);
    impl Drop for Ns {
        fn drop(&mut self) {
            netns::destroy(self.0);
        }
    }
    netns::destroy(ns);
    netns::create(ns)?;
    let _ns = Ns(ns);
    let out = netns::sh(
        ns,
        &format!(
            "set -e
            ip link add d0 type veth peer name d1
            ip link set d0 up; ip link set d1 up
            ip addr add 198.51.100.1/26 dev d0
            ip addr add 2001:db8:100::1/64 dev d0 nodad
            ip neigh add 198.51.100.20 lladdr 02:00:00:00:00:20 dev d0 nud permanent
            ip neigh add 2001:db8:100::20 lladdr 02:00:00:00:00:20 dev d0 nud permanent
            ip neigh add 198.51.100.62 lladdr 02:00:00:00:00:fe dev d0 nud permanent
            ip neigh add 2001:db8:100::fe lladdr 02:00:00:00:00:fe dev d0 nud permanent
            {routes}
            sysctl -qw net.ipv4.conf.all.forwarding=1 net.ipv6.conf.all.forwarding=1"
        ),
    )?;
    ensure!(
        out.status.success(),
        "namespace: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    netns::in_netns(ns, f)?
}

fn measure_all(scale: &Scale) -> Result<Vec<PathResult>> {
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
    let mut add = |vip: &str, port: u16, rs: &str, tunnel: Tunnel| -> Result<()> {
        let addr = |a: &str, p: u16| {
            if a.contains(':') {
                format!("[{a}]:{p}")
            } else {
                format!("{a}:{p}")
            }
        };
        let key = ServiceKey::Addr {
            protocol: Protocol::Tcp,
            addr: addr(vip, port).parse()?,
        };
        changes.push(Change::add_service(key, Scheduler::Rr));
        changes.push(Change::AddReal {
            service: key,
            real: RealServer {
                forward: ForwardMethod::Tunnel(tunnel),
                ..RealServer::dr(addr(rs, port).parse()?, 1)
            },
        });
        Ok(())
    };
    for (_, vip, port, rs, t) in cases() {
        add(vip, port, rs, t)?;
    }
    // Routed behind a small route MTU: large packets get ICMP too-big.
    add("203.0.113.10", 90, "198.51.100.70", Tunnel::IPIP)?;
    add("2001:db8:10::10", 90, "2001:db8:200::70", Tunnel::IPIP)?;
    config.apply_all(&changes).context("tunnel services")?;
    dp.sync(&config, &HashMap::new())?;

    let mut results = Vec::new();
    let mut out = vec![0u8; 2048];
    let measure =
        |dp: &mut Dataplane, name: String, pkt: Vec<u8>, counted: Reason| -> Result<PathResult> {
            let before = reason(dp, counted)?;
            let ns = measure_on(
                dp.program(),
                &[pkt],
                TX,
                scale.runs,
                scale.reps,
                Some(ifindex),
            )?;
            let moved = reason(dp, counted)? - before;
            let expected = (scale.runs * scale.reps) as u64;
            ensure!(
                moved == expected,
                "{name}: {} moved by {moved}, expected {expected}",
                counted.name()
            );
            Ok(PathResult {
                name,
                ns,
                runs: scale.runs * scale.reps,
            })
        };
    for (name, vip, port, _, _) in cases() {
        let client = if vip.contains(':') {
            "2001:db8:2::1"
        } else {
            "192.0.2.1"
        };
        let (v, _, _) = run_once_on(
            dp.program(),
            &tcp(client, 1000, vip, port, SYN),
            &mut out,
            Some(ifindex),
        )?;
        ensure!(v == TX, "{name}: SYN verdict {v}");
        let fam = if vip.contains(':') { "IPv6" } else { "IPv4" };
        results.push(measure(
            &mut dp,
            format!("TUN established, one flow, {name} ({fam})"),
            tcp(client, 1000, vip, port, ACK),
            Reason::TxTunnel,
        )?);
    }
    // With `xvsd --tun-src`: the FIB does not choose a source address per packet.
    let mut cfg = lb_common::DataplaneConfig::default();
    lb_user::tunnel::set_sources(
        &mut cfg,
        &["198.51.100.1".parse()?, "2001:db8:100::1".parse()?],
    )?;
    dp.set_config(cfg)?;
    for (name, vip, port, _, _) in cases().into_iter().filter(|c| c.4 == Tunnel::IPIP) {
        let client = if vip.contains(':') {
            "2001:db8:2::1"
        } else {
            "192.0.2.1"
        };
        let fam = if vip.contains(':') { "IPv6" } else { "IPv4" };
        results.push(measure(
            &mut dp,
            format!("TUN established, one flow, {name}, --tun-src ({fam})"),
            tcp(client, 1000, vip, port, ACK),
            Reason::TxTunnel,
        )?);
    }
    dp.set_config(lb_common::DataplaneConfig::default())?;
    for (vip, client, fam) in [
        ("203.0.113.10", "192.0.2.1", "IPv4"),
        ("2001:db8:10::10", "2001:db8:2::1", "IPv6"),
    ] {
        let (v, _, _) = run_once_on(
            dp.program(),
            &tcp(client, 1001, vip, 90, SYN),
            &mut out,
            Some(ifindex),
        )?;
        ensure!(v == TX, "too-big {fam}: SYN verdict {v}");
        let big = frame(client, 1001, vip, 90, L4::Tcp(ACK), None, &[0u8; 1400]);
        results.push(measure(
            &mut dp,
            format!("ICMP too-big reply, 1400-byte payload ({fam})"),
            big,
            Reason::TxIcmpTooBig,
        )?);
    }
    Ok(results)
}

/// The real-server decapsulator (xvs_decap) on the packets a director sends: IPIP, IP6IP6 and
/// GUE opened (XDP_PASS of the inner packet), and a plain TCP packet it only looks at.
pub fn decap_paths(scale: &Scale) -> Result<Vec<PathResult>> {
    use lb_common::decap::DecapReason;
    use lb_user::decap::{DecapConfig, Decapsulator};

    use crate::tunnel::{encapsulate, ethernet, ip_packet, Encap};

    const PASS: u32 = 2;
    let mut d = Decapsulator::load()?;
    d.maps.sync(&DecapConfig {
        locals: ["198.51.100.20".parse()?, "2001:db8:100::20".parse()?].into(),
        vips: ["203.0.113.10".parse()?, "2001:db8:10::10".parse()?].into(),
        gue_ports: [6080].into(),
    })?;
    let count = |d: &Decapsulator, r: DecapReason| -> Result<u64> {
        Ok(d.maps
            .counters()?
            .into_iter()
            .find(|(x, _)| *x == r)
            .map(|(_, n)| n)
            .unwrap_or(0))
    };
    let inner4 = ip_packet("192.0.2.1", 1000, "203.0.113.10", 80, L4::Tcp(ACK), b"");
    let inner6 = ip_packet(
        "2001:db8:2::1",
        1000,
        "2001:db8:10::10",
        80,
        L4::Tcp(ACK),
        b"",
    );
    let cases = [
        (
            "IPIP",
            ethernet(
                &encapsulate("198.51.100.1", "198.51.100.20", Encap::Ip, &inner4),
                None,
            ),
            DecapReason::DecapIpip,
        ),
        (
            "IP6IP6",
            ethernet(
                &encapsulate("2001:db8:100::1", "2001:db8:100::20", Encap::Ip, &inner6),
                None,
            ),
            DecapReason::DecapIp6ip6,
        ),
        (
            "GUE over IPv4",
            ethernet(
                &encapsulate(
                    "198.51.100.1",
                    "198.51.100.20",
                    Encap::GueV0 {
                        sport: 50000,
                        port: 6080,
                    },
                    &inner4,
                ),
                None,
            ),
            DecapReason::DecapGue,
        ),
        (
            "not a tunnel (plain TCP)",
            ethernet(&inner4, None),
            DecapReason::PassNotTunnel,
        ),
    ];
    let mut results = Vec::new();
    for (name, pkt, counted) in cases {
        let before = count(&d, counted)?;
        let ns = measure_on(d.program(), &[pkt], PASS, scale.runs, scale.reps, None)?;
        let moved = count(&d, counted)? - before;
        let expected = (scale.runs * scale.reps) as u64;
        ensure!(
            moved == expected,
            "decap {name}: {counted:?} moved by {moved}, expected {expected}"
        );
        results.push(PathResult {
            name: format!("real-server decapsulator: {name}"),
            ns,
            runs: scale.runs * scale.reps,
        });
    }
    Ok(results)
}
