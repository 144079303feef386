//! XDP programs the tests and benchmarks load (never the daemon): a pass-through for veth peers,
//! the benchmark floor, a counting sink for live traffic, and a live generator that stamps its
//! frame afresh each time.
#![no_std]
#![no_main]

// The panic handler and the license.
use lb_ebpf as _;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};

/// Frames counted by xvs_sink.
#[map]
static SINK_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Bytes xvs_gen_stamp writes: Ethernet, IPv4 and TCP headers without options.
const STAMP_LEN: usize = 54;

/// The frame xvs_gen_stamp sends.
#[map]
static GEN_TEMPLATE: Array<[u8; STAMP_LEN]> = Array::with_max_entries(1, 0);

/// A live generator for paths that rewrite the frame (NAT): live frames recycle their pages
/// without restoring the data, so a frame the director translated would be sent again
/// translated. This writes the template over the frame's first bytes, then XDP_TX.
#[xdp]
pub fn xvs_gen_stamp(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + STAMP_LEN > end {
        return xdp_action::XDP_ABORTED;
    }
    let Some(t) = GEN_TEMPLATE.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: the frame has STAMP_LEN bytes from `start` (checked above), which the program
    // may write; the template is a map value of that size.
    unsafe { *(start as *mut [u8; STAMP_LEN]) = *t };
    xdp_action::XDP_TX
}

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
