//! Whether a frame is addressed to this host (lb_common::link): a unicast frame to another
//! host's MAC, which a promiscuous interface or a flooding switch delivered, is the kernel's
//! (it drops it), never balanced.

use lb_common::link::is_group;
use lb_ebpf::{
    packet::{load_mac_word, Packet},
    parse::EthHdr,
};

use crate::maps;

/// False for a unicast frame whose destination is none of the ingress interface's station
/// addresses. A frame too short for Ethernet, a group address, or an interface xvsd has not
/// described (its slot empty or another's) is not judged here.
#[inline(always)]
pub fn addressed_here(pkt: &Packet) -> bool {
    let Some(eth) = pkt.header::<EthHdr>(0) else {
        return true;
    };
    if is_group(eth.dst[0]) {
        return true;
    }
    let ifindex = pkt.ingress_ifindex();
    match maps::link_macs(ifindex) {
        Some(link) => link.admits(ifindex, load_mac_word(&eth.dst)),
        None => true,
    }
}
