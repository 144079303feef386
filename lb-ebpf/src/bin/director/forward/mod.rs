//! Forwarding, one module per mode: DR rewrites the Ethernet header, TUN encapsulates, NAT and
//! FULLNAT translate addresses (TUN and the NATs in a tail-called program of their own).

mod dr;
pub mod nat;
pub mod tun;

use lb_common::{fwd, Backend, FlowKey, Reason};
use lb_ebpf::{packet::Packet, parse::Parsed};

use crate::{conntrack::Conn, verdict::Out};

/// Sends the frame toward the real server `backend` of connection `conn` by its forwarding
/// mode. `key` is the flow when it is not the packet's own (an ICMP error quoting it).
#[inline(always)]
pub fn forward(
    pkt: &mut Packet,
    p: &Parsed,
    key: Option<&FlowKey>,
    conn: &Conn,
    backend: &Backend,
) -> Result<Out, Reason> {
    match backend.fwd {
        fwd::DR => dr::forward(pkt, backend),
        fwd::TUN_IPIP | fwd::TUN_GUE => tun::hand_off(pkt, p, key, conn.backend),
        fwd::NAT | fwd::FULLNAT => nat::hand_off(pkt, conn),
        _ => Err(Reason::DropBadBackend),
    }
}
