//! FULLNAT's local addresses as the host sees them: a local address must be one of the
//! director's own, or the real servers' answers (sent to it) never reach the director.

use std::net::{IpAddr, SocketAddr, UdpSocket};

use crate::model::Config;

/// Whether `ip` is an address of this host (in the current network namespace): binding a
/// socket to it succeeds only then (unless ip_nonlocal_bind is set, when the check says yes).
pub fn is_local(ip: IpAddr) -> bool {
    UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// A warning for every FULLNAT local address that is not an address of this host.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for svc in config.services() {
        for l in svc.laddrs.iter().filter(|l| !is_local(l.addr)) {
            out.push(format!(
                "local address {} of {} is not an address of this host: real servers' answers to it will not reach the director; add it (ip addr add {}/{} dev IFACE)",
                l.addr,
                svc.key,
                l.addr,
                if l.addr.is_ipv4() { 32 } else { 128 },
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_local_and_a_documentation_address_is_not() {
        assert!(is_local("127.0.0.1".parse().unwrap()));
        assert!(!is_local("192.0.2.77".parse().unwrap()));
    }
}
