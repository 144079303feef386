//! Next-hop MAC addresses of real servers, from the kernel's neighbour table.
//!
//! In DR mode the data plane rewrites the destination MAC to the real server's. The controller
//! reads the kernel's ARP/ND table over rtnetlink and, for a real server it does not know yet, makes
//! the kernel resolve it by sending one datagram to the server's discard port.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr, UdpSocket},
};

use futures::TryStreamExt;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
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
