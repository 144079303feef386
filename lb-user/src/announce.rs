//! The announcements' executor: keeps one blackhole route per announced VIP in xvsd's kernel
//! routing table (`--announce-table N`), for the local BGP daemon to export (lb_core::announce
//! decides which). The table is xvsd's: every route in it with xvsd's protocol number that is
//! not wanted is removed, so a route deleted or added by hand is put right at the next pass.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use futures::TryStreamExt;
use rtnetlink::{
    packet_route::route::{RouteAttribute, RouteMessage, RouteProtocol, RouteType},
    RouteMessageBuilder,
};
use thiserror::Error;

pub use lb_core::announce::{RoutePlan, ROUTE_PROTOCOL};

/// A route change the kernel refused.
#[derive(Debug, Error)]
pub enum AnnounceError {
    /// Opening the netlink socket failed.
    #[error("netlink socket: {0}")]
    Socket(#[from] std::io::Error),
    /// A dump, addition or removal failed.
    #[error("route table {table}: {what}: {source}")]
    Netlink {
        /// The table.
        table: u32,
        /// What was being done.
        what: String,
        /// The kernel's answer.
        source: rtnetlink::Error,
    },
}

/// The routes of one table, over rtnetlink.
pub struct Announcer {
    handle: rtnetlink::Handle,
    table: u32,
}

impl Announcer {
    /// Opens a netlink connection (spawned on the current tokio runtime) for `table`.
    pub fn new(table: u32) -> Result<Self, AnnounceError> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Self { handle, table })
    }

    /// The table xvsd announces through.
    pub fn table(&self) -> u32 {
        self.table
    }

    /// The VIPs the table announces now: its host routes with xvsd's protocol number.
    pub async fn installed(&self) -> Result<BTreeSet<IpAddr>, AnnounceError> {
        let mut out = BTreeSet::new();
        for family in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let mut dump = self.handle.route().get(family).execute();
            while let Some(msg) = dump
                .try_next()
                .await
                .map_err(|source| self.error("listing the routes".to_string(), source))?
            {
                if let Some(ip) = self.ours(&msg) {
                    out.insert(ip);
                }
            }
        }
        Ok(out)
    }

    /// Makes the table announce exactly `wanted`; returns what it changed.
    pub async fn reconcile(&self, wanted: &BTreeSet<IpAddr>) -> Result<RoutePlan, AnnounceError> {
        let plan = RoutePlan::between(&self.installed().await?, wanted);
        for &ip in &plan.add {
            self.handle
                .route()
                .add(self.route(ip))
                .replace()
                .execute()
                .await
                .map_err(|source| self.error(format!("adding {ip}"), source))?;
        }
        for &ip in &plan.remove {
            self.handle
                .route()
                .del(self.route(ip))
                .execute()
                .await
                .map_err(|source| self.error(format!("removing {ip}"), source))?;
        }
        Ok(plan)
    }

    /// The route that announces `ip`: a blackhole host route in the table, with xvsd's
    /// protocol number.
    fn route(&self, ip: IpAddr) -> RouteMessage {
        match ip {
            IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(a, 32)
                .table_id(self.table)
                .protocol(RouteProtocol::from(ROUTE_PROTOCOL))
                .kind(RouteType::BlackHole)
                .build(),
            IpAddr::V6(a) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(a, 128)
                .table_id(self.table)
                .protocol(RouteProtocol::from(ROUTE_PROTOCOL))
                .kind(RouteType::BlackHole)
                .build(),
        }
    }

    /// The VIP a dumped route announces, if it is one of ours.
    fn ours(&self, msg: &RouteMessage) -> Option<IpAddr> {
        let table = msg
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            })
            .unwrap_or(u32::from(msg.header.table));
        if table != self.table || u8::from(msg.header.protocol) != ROUTE_PROTOCOL {
            return None;
        }
        let full = match msg.header.address_family {
            rtnetlink::packet_route::AddressFamily::Inet => 32,
            _ => 128,
        };
        if msg.header.destination_prefix_length != full {
            return None;
        }
        msg.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(d) => match d {
                rtnetlink::packet_route::route::RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
                rtnetlink::packet_route::route::RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
                _ => None,
            },
            _ => None,
        })
    }

    fn error(&self, what: String, source: rtnetlink::Error) -> AnnounceError {
        AnnounceError::Netlink {
            table: self.table,
            what,
            source,
        }
    }
}
