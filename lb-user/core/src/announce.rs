//! Which VIPs a director announces to its routers, and how they are handed to the BGP daemon.
//!
//! Several directors behind ECMP routers each announce the VIPs they can serve; a router
//! sends a VIP's traffic only to directors that announce it. xvsd does not speak BGP: it keeps
//! one route per announced VIP in a kernel routing table of its own (`xvsd --announce-table
//! N`), which the BGP daemon the site already runs exports (BIRD's `kernel` protocol with
//! `learn` on that table, FRR's `ip import-table N` and `redistribute table N`). The routes are
//! blackhole routes in a table no rule looks up: they carry the announcement and route nothing.
//!
//! A VIP is announced while at least one service on it has its quorum (lb_core::model::Quorum:
//! keepalived's quorum and hysteresis over the live weight of its real servers), and the
//! director is not drained. One healthy service keeps the VIP: withdrawing it for a broken
//! port would also take the healthy ports away from this director.

use std::{collections::BTreeSet, net::IpAddr};

use crate::model::{Config, ServiceKey};

/// The routing protocol number xvsd's routes carry (`ip route show table N proto 248`): a
/// value of the range iproute2 leaves unassigned, so nothing else claims them.
pub const ROUTE_PROTOCOL: u8 = 248;

/// The VIPs (each a /32 or /128 route) this director should announce: those of the services
/// `quorum_up` says have their quorum; none when `drained`.
pub fn vips(
    config: &Config,
    quorum_up: impl Fn(&ServiceKey) -> bool,
    drained: bool,
) -> BTreeSet<IpAddr> {
    if drained {
        return BTreeSet::new();
    }
    config
        .services()
        .iter()
        .filter(|s| quorum_up(&s.key))
        .flat_map(|s| {
            let own = match s.key {
                ServiceKey::Addr { addr, .. } => Some(addr.ip()),
                ServiceKey::Fwmark { .. } => None,
            };
            own.into_iter().chain(s.matches.iter().map(|m| m.addr.ip()))
        })
        .collect()
}

/// What a change of announcements does: routes to add and routes to remove.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoutePlan {
    /// VIPs to announce (a route to add).
    pub add: Vec<IpAddr>,
    /// VIPs to withdraw (a route to remove).
    pub remove: Vec<IpAddr>,
}

impl RoutePlan {
    /// The operations that turn `current` (the routes in the table) into `wanted`.
    pub fn between(current: &BTreeSet<IpAddr>, wanted: &BTreeSet<IpAddr>) -> RoutePlan {
        RoutePlan {
            add: wanted.difference(current).copied().collect(),
            remove: current.difference(wanted).copied().collect(),
        }
    }

    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Change, Protocol, RealServer, Scheduler, VirtualAddr};

    fn config() -> Config {
        let mut c = Config::default();
        let web = ServiceKey::new(Protocol::Tcp, "203.0.113.10:80".parse().unwrap());
        let tls = ServiceKey::new(Protocol::Tcp, "203.0.113.10:443".parse().unwrap());
        let dns6 = ServiceKey::new(Protocol::Udp, "[2001:db8:10::53]:53".parse().unwrap());
        let group = ServiceKey::fwmark(7, false);
        let mut changes = Vec::new();
        for key in [web, tls, dns6, group] {
            changes.push(Change::AddService {
                key,
                scheduler: Scheduler::Rr,
                flags: Default::default(),
                persistence: None,
            });
        }
        changes.push(Change::SetMatches {
            key: group,
            matches: vec![VirtualAddr {
                protocol: Protocol::Tcp,
                addr: "203.0.113.20:25".parse().unwrap(),
            }],
        });
        changes.push(Change::AddReal {
            service: web,
            real: RealServer::dr("198.51.100.11:80".parse().unwrap(), 1),
        });
        c.apply_all(&changes).unwrap();
        c
    }

    fn ips(v: &[&str]) -> BTreeSet<IpAddr> {
        v.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn a_vip_is_announced_while_one_of_its_services_has_its_quorum() {
        let c = config();
        let all = vips(&c, |_| true, false);
        assert_eq!(
            all,
            ips(&["203.0.113.10", "203.0.113.20", "2001:db8:10::53"])
        );
        // Port 443 down, port 80 up: the VIP stays.
        let tls_down = vips(&c, |k| k.port() != 443, false);
        assert!(tls_down.contains(&"203.0.113.10".parse().unwrap()));
        // Both down: withdrawn. A group's VIPs are its matches'.
        let only_group = vips(&c, |k| matches!(k, ServiceKey::Fwmark { .. }), false);
        assert_eq!(only_group, ips(&["203.0.113.20"]));
        // Drained: nothing.
        assert!(vips(&c, |_| true, true).is_empty());
    }

    #[test]
    fn the_plan_adds_what_is_missing_and_removes_what_is_left() {
        let cur = ips(&["203.0.113.10", "203.0.113.11"]);
        let want = ips(&["203.0.113.11", "2001:db8:10::1"]);
        let p = RoutePlan::between(&cur, &want);
        assert_eq!(p.add, vec!["2001:db8:10::1".parse::<IpAddr>().unwrap()]);
        assert_eq!(p.remove, vec!["203.0.113.10".parse::<IpAddr>().unwrap()]);
        assert!(RoutePlan::between(&want, &want).is_empty());
    }
}
