//! Forwarding, one module per mode: DR rewrites the Ethernet header, TUN encapsulates and NAT
//! translates addresses (each of these two in a tail-called program of its own). FULLNAT will
//! be a module beside them.

mod dr;
pub mod nat;
pub mod tun;

use lb_common::{fwd, Backend, FlowKey, Reason};
use lb_ebpf::{packet::Packet, parse::Parsed};

use crate::verdict::Out;

/// Sends the frame toward the real server `backend` (slot `backend_id`) by its forwarding
/// mode. `key` is the flow when it is not the packet's own (an ICMP error quoting it).
#[inline(always)]
pub fn forward(
    pkt: &mut Packet,
    p: &Parsed,
    key: Option<&FlowKey>,
    backend_id: u32,
    backend: &Backend,
) -> Result<Out, Reason> {
    match backend.fwd {
        fwd::DR => dr::forward(pkt, backend),
        fwd::TUN_IPIP | fwd::TUN_GUE => tun::hand_off(pkt, p, key, backend_id),
        fwd::NAT => nat::hand_off(pkt, backend_id),
        _ => Err(Reason::DropBadBackend),
    }
}
