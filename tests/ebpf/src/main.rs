//! XDP programs the tests and benchmarks load (never the daemon): a pass-through for veth peers,
//! the benchmark floor, and a counting sink for live traffic.
#![no_std]
#![no_main]

// The panic handler and the license.
use lb_ebpf as _;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};

/// Frames counted by xvs_sink.
#[map]
static SINK_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Passes every frame. Native XDP_TX into a veth only delivers when the peer has an XDP program.
#[xdp]
pub fn xvs_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The benchmark floor: the cheapest program that still looks at the packet, then XDP_TX.
#[xdp]
pub fn xvs_floor_tx(ctx: XdpContext) -> u32 {
    if ctx.data() + 14 > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    xdp_action::XDP_TX
}

/// Counts and drops every frame: the receiving end of live-traffic benchmarks.
#[xdp]
pub fn xvs_sink(_ctx: XdpContext) -> u32 {
    if let Some(c) = SINK_COUNT.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *c += 1 };
    }
    xdp_action::XDP_DROP
}
