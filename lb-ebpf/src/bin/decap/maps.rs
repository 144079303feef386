//! The decapsulator's maps and their typed accessors (the only `unsafe` of this program).

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use lb_common::decap::{
    DecapAddrKey, DecapReason, GuePortKey, DECAP_REASON_COUNT, MAX_DECAP_ADDRS, MAX_GUE_PORTS,
};

#[map]
static DECAP_ADDRS: HashMap<DecapAddrKey, u32> = HashMap::with_max_entries(MAX_DECAP_ADDRS, 0);
#[map]
static DECAP_GUE_PORTS: HashMap<GuePortKey, u32> = HashMap::with_max_entries(MAX_GUE_PORTS, 0);
#[map]
static DECAP_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DECAP_REASON_COUNT, 0);

/// Counts one outcome in this CPU's DECAP_COUNTERS slot.
#[inline(always)]
pub fn count(reason: DecapReason) {
    if let Some(c) = DECAP_COUNTERS.get_ptr_mut(reason as u32) {
        // SAFETY: this CPU's slot; nothing else runs on this CPU during the program.
        unsafe { *c += 1 };
    }
}

/// Whether `addr` has one of the `role` bits (lb_common::decap::addr_role) on this host.
#[inline(always)]
pub fn has_role(family: u8, addr: [u8; 16], role: u32) -> bool {
    let key = DecapAddrKey {
        addr,
        family,
        _pad: [0; 3],
    };
    // SAFETY: the value is a plain u32, read once.
    match unsafe { DECAP_ADDRS.get(key) } {
        Some(roles) => roles & role != 0,
        None => false,
    }
}

/// Whether `port_be` (network order, as the key keeps it) is a GUE port of this host.
#[inline(always)]
pub fn is_gue_port(port_be: u16) -> bool {
    // SAFETY: presence check only.
    unsafe { DECAP_GUE_PORTS.get(GuePortKey { port_be }) }.is_some()
}
