//! The station addresses' executor: reads the host's links over rtnetlink for
//! lb_core::station, which decides the MACs each attached interface answers for; the daemon
//! writes its plan to the data plane's LINK_MACS.

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};

pub use lb_core::station::{addresses, plan, LinkRecord, StationPlan, Unfiltered};

/// Reads the links of this network namespace.
pub struct Links {
    handle: rtnetlink::Handle,
}

impl Links {
    /// Opens a netlink connection (spawned on the current tokio runtime).
    pub fn new() -> std::io::Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// Every link, as lb_core::station needs it.
    pub async fn dump(&self) -> Result<Vec<LinkRecord>, rtnetlink::Error> {
        let mut out = Vec::new();
        let mut links = self.handle.link().get().execute();
        while let Some(msg) = links.try_next().await? {
            out.push(record(&msg));
        }
        Ok(out)
    }
}

/// One link message as a record: its address, its master, and the link it is stacked on when
/// it is a VLAN, macvlan or ipvlan (a veth's IFLA_LINK names its peer, maybe in another
/// namespace, and is not a stacking).
fn record(msg: &LinkMessage) -> LinkRecord {
    let mut rec = LinkRecord {
        index: msg.header.index,
        mac: None,
        stacked_on: None,
        master: None,
    };
    let mut lower = None;
    let mut stacked_kind = false;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::Address(a) => rec.mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
            LinkAttribute::Controller(m) => rec.master = Some(*m),
            LinkAttribute::Link(l) => lower = Some(*l),
            LinkAttribute::LinkInfo(infos) => {
                stacked_kind = infos.iter().any(|i| {
                    matches!(
                        i,
                        LinkInfo::Kind(
                            InfoKind::Vlan
                                | InfoKind::MacVlan
                                | InfoKind::MacVtap
                                | InfoKind::IpVlan
                                | InfoKind::IpVtap
                        )
                    )
                });
            }
            _ => {}
        }
    }
    if stacked_kind {
        rec.stacked_on = lower;
    }
    rec
}
