//! What TUN forwarding needs from the director host: outer source addresses, and IP forwarding
//! enabled on the interface (the data plane asks the kernel's FIB for the route to a tunnelled
//! real server, and the kernel answers only for interfaces that forward).

use std::net::IpAddr;

use lb_common::DataplaneConfig;
use thiserror::Error;

use crate::model::{Config, ForwardMethod};

/// A bad `--tun-src`.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TunnelSourceError {
    /// Two addresses of one family.
    #[error("--tun-src given twice for {0}: {1} and {2} (one IPv4 and one IPv6 address at most)")]
    Twice(&'static str, IpAddr, IpAddr),
    /// Not a usable unicast address.
    #[error("--tun-src {0}: not a unicast address")]
    NotUnicast(IpAddr),
}

/// Writes the outer source addresses into the data plane's configuration. An address left out
/// is chosen per packet by the FIB (the interface's preferred source toward the real server).
pub fn set_sources(cfg: &mut DataplaneConfig, sources: &[IpAddr]) -> Result<(), TunnelSourceError> {
    let (mut v4, mut v6): (Option<IpAddr>, Option<IpAddr>) = (None, None);
    for &ip in sources {
        if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
            return Err(TunnelSourceError::NotUnicast(ip));
        }
        let (slot, family) = match ip {
            IpAddr::V4(_) => (&mut v4, "IPv4"),
            IpAddr::V6(_) => (&mut v6, "IPv6"),
        };
        if let Some(prev) = slot.replace(ip) {
            return Err(TunnelSourceError::Twice(family, prev, ip));
        }
    }
    cfg.tun_src4 = match v4 {
        Some(IpAddr::V4(a)) => a.octets(),
        _ => [0; 4],
    };
    cfg.tun_src6 = match v6 {
        Some(IpAddr::V6(a)) => a.octets(),
        _ => [0; 16],
    };
    Ok(())
}

/// The data plane's multipath flags (lb_common::config_flags) from the kernel's
/// `fib_multipath_hash_policy` of each family in this network namespace: 1 (L4) and 3 (custom
/// fields) may use ports, so a GUE flow's route is its own; 0 and 2 hash addresses only. A
/// kernel without multipath routing has no such knob: no flag.
pub fn multipath_flags() -> u8 {
    let uses_ports = |family: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/{family}/fib_multipath_hash_policy"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .is_some_and(|p| p == 1 || p == 3)
    };
    let mut flags = 0;
    if uses_ports("ipv4") {
        flags |= lb_common::config_flags::GUE_ROUTE_PER_FLOW4;
    }
    if uses_ports("ipv6") {
        flags |= lb_common::config_flags::GUE_ROUTE_PER_FLOW6;
    }
    flags
}

/// Warnings for tunnelled real servers whose outer family has forwarding disabled on `iface`
/// (their packets would be dropped as drop_tun_fwd_disabled).
pub fn forwarding_warnings(config: &Config, iface: &str) -> Vec<String> {
    // Per family: tunnelled real servers, NAT or FULLNAT real servers.
    let mut want = [[false; 2]; 2];
    for r in config.services().iter().flat_map(|s| s.reals.iter()) {
        match r.forward {
            ForwardMethod::Tunnel(_) => want[r.addr.is_ipv6() as usize][0] = true,
            ForwardMethod::Nat | ForwardMethod::FullNat => {
                want[r.addr.is_ipv6() as usize][1] = true;
            }
            ForwardMethod::Dr => {}
        }
    }
    let mut out = Vec::new();
    for (i, (family, knob)) in [("IPv4", "ipv4"), ("IPv6", "ipv6")].iter().enumerate() {
        let path = format!("/proc/sys/net/{knob}/conf/{iface}/forwarding");
        if !want[i].contains(&true)
            || !std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "0")
        {
            continue;
        }
        let fix = format!("enable it: sysctl -w net.{knob}.conf.{iface}.forwarding=1");
        if want[i][0] {
            out.push(format!(
                "{family} forwarding is disabled on {iface}: tunnelled packets to {family} real servers are dropped (drop_tun_fwd_disabled); {fix}"
            ));
        }
        if want[i][1] {
            out.push(format!(
                "{family} forwarding is disabled on {iface}: packets to and from {family} NAT and FULLNAT real servers are dropped (drop_nat_fwd_disabled); {fix}"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_one_per_family() {
        let mut c = DataplaneConfig::default();
        set_sources(
            &mut c,
            &[
                "198.51.100.1".parse().unwrap(),
                "2001:db8::1".parse().unwrap(),
            ],
        )
        .unwrap();
        assert_eq!(c.tun_src4, [198, 51, 100, 1]);
        assert_eq!(c.tun_src6[0..2], [0x20, 0x01]);
        let twice = set_sources(
            &mut c,
            &[
                "198.51.100.1".parse().unwrap(),
                "198.51.100.2".parse().unwrap(),
            ],
        );
        assert!(matches!(twice, Err(TunnelSourceError::Twice("IPv4", _, _))));
        assert!(set_sources(&mut c, &["0.0.0.0".parse().unwrap()]).is_err());
        set_sources(&mut c, &[]).unwrap();
        assert_eq!((c.tun_src4, c.tun_src6), ([0; 4], [0; 16]), "FIB chooses");
    }
}
