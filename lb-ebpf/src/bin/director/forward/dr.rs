//! DR (direct routing): the real server has the VIP too, so only the Ethernet header changes.

use lb_common::{Backend, Reason};
use lb_ebpf::{
    packet::{copy_mac, Packet},
    parse::EthHdr,
};

use crate::verdict::Out;

/// The frame was addressed to us: our MAC becomes the source, the real server's the target.
#[inline(always)]
pub fn forward(pkt: &mut Packet, backend: &Backend) -> Result<Out, Reason> {
    let eth = pkt.header_mut::<EthHdr>(0).ok_or(Reason::DropTruncatedL2)?;
    // Word copies: assignments of the align-1 arrays compile to six byte moves each.
    copy_mac(&mut eth.src, &eth.dst);
    copy_mac(&mut eth.dst, &backend.mac);
    Ok(Out::Tx(Reason::TxDr))
}
