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
    maps::{Array, LruHashMap, PerCpuArray},
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

/// LRU_FLOOR's key: the size of the director's FlowKey (40 bytes), filled as words.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FloorKey([u64; 5]);

/// LRU_FLOOR's value: the size of the director's ConnEntry (24 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FloorValue([u64; 3]);

/// The kernel's own cost of a connection table: an LRU hash of the director's key and value
/// sizes, sized by the benchmark at load time as the director's CONNS is.
#[map]
static LRU_FLOOR: LruHashMap<FloorKey, FloorValue> = LruHashMap::with_max_entries(1024, 0);

/// The connection-table floor: the bare floor plus what the kernel's LRU hash costs the
/// director's table, with nothing of xvs around it. An IPv4 TCP frame's addresses and ports
/// make the key; a hit answers XDP_TX, a miss inserts the key and answers XDP_PASS (so the
/// benchmark can check which path every run took).
#[xdp]
pub fn xvs_lru_floor(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    // Ethernet (14) + IPv4 without options (20) + the ports (4).
    if start + 38 > end {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: 38 bytes from `start` are inside the frame (checked above); unaligned reads.
    let (addrs, ports) = unsafe {
        (
            core::ptr::read_unaligned((start + 26) as *const u64),
            core::ptr::read_unaligned((start + 34) as *const u32),
        )
    };
    let key = FloorKey([addrs, 0, 0, 0, u64::from(ports) | 6 << 32]);
    // SAFETY: the value is only tested for presence, never read.
    if unsafe { LRU_FLOOR.get(key) }.is_some() {
        return xdp_action::XDP_TX;
    }
    let _ = LRU_FLOOR.insert(key, FloorValue([1, 2, 3]), 0);
    xdp_action::XDP_PASS
}

/// The encapsulation floor: the bare floor plus what IPIP costs by itself. It grows the frame's
/// head by an IPv4 header, moves the Ethernet header in front of it and writes a fixed outer
/// header (addresses from the inner one, its checksum computed), then XDP_TX: the kernel's and
/// the header's share of a TUN packet, with no xvs code.
#[xdp]
pub fn xvs_ipip_floor(ctx: XdpContext) -> u32 {
    // SAFETY: the context is this program's own and no pointer into the frame is alive.
    if unsafe { aya_ebpf::helpers::bpf_xdp_adjust_head(ctx.ctx, -20) } != 0 {
        return xdp_action::XDP_ABORTED;
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    // The new Ethernet (14) and outer IPv4 (20) headers, then the old Ethernet header (14)
    // and the inner IPv4 header's addresses (through byte 34 + 14 + 20).
    if start + 68 > end {
        return xdp_action::XDP_ABORTED;
    }
    let p = start as *mut u8;
    // SAFETY: 68 bytes from `start` are inside the frame (checked above); every access below
    // is within them, unaligned where it must be.
    unsafe {
        // The old Ethernet header's MACs, moved to the new start (EtherType unchanged: IPv4).
        let macs = core::ptr::read_unaligned(p.add(20) as *const [u32; 3]);
        core::ptr::write_unaligned(p as *mut [u32; 3], macs);
        core::ptr::write_unaligned(p.add(12) as *mut u16, 0x0008);
        let tot_len = ((end - start - 14) as u16).to_be();
        let inner_addrs = core::ptr::read_unaligned(p.add(20 + 14 + 12) as *const [u32; 2]);
        let mut hdr: [u16; 10] = [0x0045, tot_len, 0, 0, 0x0440, 0, 0, 0, 0, 0];
        let ip = p.add(14);
        core::ptr::write_unaligned(ip as *mut [u16; 10], hdr);
        core::ptr::write_unaligned(ip.add(12) as *mut [u32; 2], inner_addrs);
        hdr = core::ptr::read_unaligned(ip as *const [u16; 10]);
        let mut sum = 0u32;
        for w in hdr {
            sum += u32::from(w);
        }
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        core::ptr::write_unaligned(ip.add(10) as *mut u16, !(sum as u16));
    }
    xdp_action::XDP_TX
}
