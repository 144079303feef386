//! Virtual-service matching: the filter bitmap that rules most traffic out with one array read,
//! and the lookup of (protocol, VIP, port), then (protocol, VIP, any port).

use lb_common::{filter::filter_bit, Reason, ServiceKey, ServiceValue};
use lb_ebpf::parse::Parsed;

use crate::maps;

/// What the filter says of a packet.
pub enum Filter {
    /// No service can match: not ours.
    Miss,
    /// A service on the packet's port may exist (`true`), or only an all-ports one (`false`).
    Hit(bool),
}

/// Probes the filter for the packet's destination port, then for port 0 (all-ports services
/// of the VIP).
#[inline(always)]
pub fn filter(p: &Parsed) -> Filter {
    if filter_hit(&p.dst, p.dport_be, p.proto) {
        Filter::Hit(true)
    } else if filter_hit(&p.dst, 0, p.proto) {
        Filter::Hit(false)
    } else {
        Filter::Miss
    }
}

/// Whether the filter has the bit of (address, port, protocol byte).
#[inline(always)]
pub fn filter_hit(addr: &[u8; 16], port_be: u16, proto: u8) -> bool {
    let bit = filter_bit(addr, port_be, proto);
    match maps::filter_word(bit >> 6) {
        Some(word) => word & (1u64 << (bit & 63)) != 0,
        None => false,
    }
}

/// The service of a new flow: the one on its port when the filter said it may exist, else the
/// VIP's all-ports service.
#[inline(always)]
pub fn lookup(p: &Parsed, port_service: bool) -> Result<&'static ServiceValue, Reason> {
    let mut key = ServiceKey {
        addr: p.dst,
        port_be: p.dport_be,
        proto: p.proto,
        family: p.family,
    };
    if port_service {
        if let Some(svc) = maps::service(&key) {
            return Ok(svc);
        }
    }
    key.port_be = 0;
    maps::service(&key).ok_or(Reason::PassNotService)
}
