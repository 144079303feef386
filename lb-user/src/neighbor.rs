//! Next-hop MAC addresses of real servers, from the kernel's neighbour table.
//!
//! In DR mode the data plane rewrites the destination MAC to the real server's. The controller
//! reads the kernel's ARP/ND table over rtnetlink and, for a real server it does not know yet, makes
//! the kernel resolve it by sending one datagram to the server's discard port.
//!
//! NAT and FULLNAT replies leave toward the clients through the routes' gateways, which the
//! data plane can send to only while the kernel holds their MAC: xvsd keeps them resolved too
//! ([`Neighbors::gateways`], [`Neighbors::to_refresh`]), since a reply handed to the kernel to
//! resolve its next hop is dropped when its translated source, the VIP, is one of the
//! director's own addresses (keepalived's VIP on the interface: a martian source).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr, UdpSocket},
};

use futures::TryStreamExt;
use rtnetlink::{
    packet_route::{
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
        route::{RouteAddress, RouteAttribute, RouteMessage},
    },
    RouteMessageBuilder,
};
use thiserror::Error;

/// Neighbour table access failed.
#[derive(Debug, Error)]
pub enum NeighborError {
    /// Opening the netlink socket failed.
    #[error("netlink socket: {0}")]
    Socket(#[from] std::io::Error),
    /// The dump failed.
    #[error("neighbour dump: {0}")]
    Netlink(#[from] rtnetlink::Error),
}

/// Reads the neighbour table of one interface.
pub struct Neighbors {
    handle: rtnetlink::Handle,
    ifindex: u32,
}

impl Neighbors {
    /// Opens a netlink connection (spawned on the current tokio runtime).
    pub fn new(ifindex: u32) -> Result<Self, NeighborError> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Self { handle, ifindex })
    }

    /// Every neighbour on the interface with a usable link-layer address.
    pub async fn table(&self) -> Result<HashMap<IpAddr, [u8; 6]>, NeighborError> {
        let mut out = HashMap::new();
        let mut dump = self.handle.neighbours().get().execute();
        while let Some(msg) = dump.try_next().await? {
            if msg.header.ifindex != self.ifindex {
                continue;
            }
            if let Some((ip, mac)) = usable(&msg) {
                out.insert(ip, mac);
            }
        }
        Ok(out)
    }
}

impl Neighbors {
    /// The gateways of the routes out of the interface (every table's, IPv4 and IPv6,
    /// multipath hops included).
    pub async fn gateways(&self) -> Result<Vec<IpAddr>, NeighborError> {
        let mut routes = Vec::new();
        for query in [
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        ] {
            let mut dump = self.handle.route().get(query).execute();
            while let Some(r) = dump.try_next().await? {
                routes.push(r);
            }
        }
        Ok(gateways_of(&routes, self.ifindex))
    }

    /// Those of `ips` whose neighbour entry on the interface is missing, stale or failed:
    /// what to poke so the kernel confirms them (an entry in progress is left to the kernel).
    pub async fn to_refresh(&self, ips: &[IpAddr]) -> Result<Vec<IpAddr>, NeighborError> {
        let mut states = HashMap::new();
        let mut dump = self.handle.neighbours().get().execute();
        while let Some(msg) = dump.try_next().await? {
            if msg.header.ifindex != self.ifindex {
                continue;
            }
            if let Some(ip) = destination(&msg) {
                states.insert(ip, msg.header.state);
            }
        }
        Ok(ips
            .iter()
            .filter(|ip| states.get(ip).is_none_or(|s| needs_refresh(*s)))
            .copied()
            .collect())
    }
}

/// The gateways of `routes` out of interface `ifindex`, each once, in order.
fn gateways_of(routes: &[RouteMessage], ifindex: u32) -> Vec<IpAddr> {
    let gateway = |attrs: &[RouteAttribute]| {
        attrs.iter().find_map(|a| match a {
            RouteAttribute::Gateway(RouteAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
            RouteAttribute::Gateway(RouteAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
            _ => None,
        })
    };
    let mut out = Vec::new();
    for r in routes {
        let oif = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        });
        if oif == Some(ifindex) {
            out.extend(gateway(&r.attributes));
        }
        for a in &r.attributes {
            if let RouteAttribute::MultiPath(hops) = a {
                out.extend(
                    hops.iter()
                        .filter(|h| h.interface_index == ifindex)
                        .filter_map(|h| gateway(&h.attributes)),
                );
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|ip| seen.insert(*ip));
    out
}

/// Whether a neighbour in `state` should be confirmed: the data plane's FIB lookup takes a
/// stale entry, but the kernel may drop one nobody confirms (XDP traffic confirms nothing).
fn needs_refresh(state: NeighbourState) -> bool {
    !matches!(
        state,
        NeighbourState::Reachable
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Incomplete
            | NeighbourState::Permanent
            | NeighbourState::Noarp
    )
}

/// A neighbour message's IP address.
fn destination(msg: &NeighbourMessage) -> Option<IpAddr> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => Some(IpAddr::V4(*a)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
        _ => None,
    })
}

fn usable(msg: &NeighbourMessage) -> Option<(IpAddr, [u8; 6])> {
    match msg.header.state {
        NeighbourState::Reachable
        | NeighbourState::Stale
        | NeighbourState::Delay
        | NeighbourState::Probe
        | NeighbourState::Permanent
        | NeighbourState::Noarp => {}
        _ => return None,
    }
    let mut ip = None;
    let mut mac = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => ip = Some(IpAddr::V4(*a)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                ip = Some(IpAddr::V6(*a));
            }
            NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                mac = Some([l[0], l[1], l[2], l[3], l[4], l[5]]);
            }
            _ => {}
        }
    }
    Some((ip?, mac?))
}

/// Makes the kernel resolve `ip`: one empty datagram to its discard port (9). A real server that
/// does not listen there answers, at most, with an ICMP port-unreachable.
pub fn poke(ip: IpAddr) {
    let bind: SocketAddr = match ip {
        IpAddr::V4(_) => "0.0.0.0:0".parse().expect("literal"),
        IpAddr::V6(_) => "[::]:0".parse().expect("literal"),
    };
    if let Ok(s) = UdpSocket::bind(bind) {
        let _ = s.send_to(&[], SocketAddr::new(ip, 9));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::route::RouteNextHop;

    fn route(attrs: Vec<RouteAttribute>) -> RouteMessage {
        let mut r = RouteMessageBuilder::<std::net::Ipv4Addr>::new().build();
        r.attributes = attrs;
        r
    }

    fn hop(ifindex: u32, gateway: RouteAttribute) -> RouteNextHop {
        let mut h = RouteNextHop::default();
        h.interface_index = ifindex;
        h.attributes = vec![gateway];
        h
    }

    #[test]
    fn the_gateways_of_routes_out_of_the_interface_each_once() {
        let gw = |a: &str| RouteAttribute::Gateway(RouteAddress::Inet(a.parse().unwrap()));
        let routes = [
            // The default route via 198.51.100.1 out of interface 2.
            route(vec![gw("198.51.100.1"), RouteAttribute::Oif(2)]),
            // Another route via the same gateway: once.
            route(vec![gw("198.51.100.1"), RouteAttribute::Oif(2)]),
            // Out of another interface: not ours.
            route(vec![gw("10.9.9.1"), RouteAttribute::Oif(3)]),
            // On-link (no gateway): nothing to resolve.
            route(vec![RouteAttribute::Oif(2)]),
            // Multipath: the hops out of interface 2.
            route(vec![RouteAttribute::MultiPath(vec![
                hop(2, gw("198.51.100.9")),
                hop(3, gw("10.9.9.2")),
            ])]),
            route(vec![
                RouteAttribute::Gateway(RouteAddress::Inet6("fe80::1".parse().unwrap())),
                RouteAttribute::Oif(2),
            ]),
        ];
        let got = gateways_of(&routes, 2);
        let want: Vec<IpAddr> = ["198.51.100.1", "198.51.100.9", "fe80::1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn stale_failed_and_missing_neighbours_are_refreshed() {
        for s in [
            NeighbourState::Stale,
            NeighbourState::Failed,
            NeighbourState::None,
        ] {
            assert!(needs_refresh(s), "{s:?}");
        }
        for s in [
            NeighbourState::Reachable,
            NeighbourState::Probe,
            NeighbourState::Delay,
            NeighbourState::Incomplete,
            NeighbourState::Permanent,
        ] {
            assert!(!needs_refresh(s), "{s:?}");
        }
    }
}
