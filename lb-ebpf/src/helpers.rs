//! Safe wrappers over the kernel helpers the programs call (other than the packet head/tail
//! adjustments, which live with the packet accessor, and map operations, which live with each
//! program's maps). Each `unsafe` here is a plain helper call, or a read of a union member the
//! kernel filled.

use aya_ebpf::{
    bindings::bpf_fib_lookup as FibParams,
    helpers::{
        bpf_csum_diff, bpf_fib_lookup, bpf_get_smp_processor_id, bpf_ktime_get_coarse_ns,
        bpf_redirect,
    },
    programs::XdpContext,
};

/// Nanoseconds since boot at tick resolution (CLOCK_MONOTONIC, as xvsd reads it): plenty for
/// timeouts and cache lifetimes counted in seconds, and much cheaper than bpf_ktime_get_ns,
/// which reads the clock source.
#[inline(always)]
pub fn ktime_coarse_ns() -> u64 {
    // SAFETY: a plain helper call without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// The CPU the program runs on.
#[inline(always)]
pub fn smp_processor_id() -> u32 {
    // SAFETY: a plain helper call without arguments.
    unsafe { bpf_get_smp_processor_id() }
}

/// XDP_REDIRECT toward interface `ifindex` (XDP_ABORTED on a bad flag).
#[inline(always)]
pub fn redirect(ifindex: u32) -> u32 {
    // SAFETY: a plain helper call on integers.
    unsafe { bpf_redirect(ifindex, 0) as u32 }
}

/// The kernel's raw ones-complement sum of `bytes` (native-endian 32-bit words; `N` a multiple
/// of 4, at most 512), as bpf_csum_diff returns it.
#[inline(always)]
pub fn csum_diff<const N: usize>(bytes: &[u8; N]) -> i64 {
    // SAFETY: `bytes` is memory the verifier knows (packet, stack or map value) and N bytes
    // long; the helper only reads it. A null `from` with size 0 is allowed.
    unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            bytes.as_ptr() as *mut u32,
            N as u32,
            0,
        )
    }
}

/// An all-zero FIB query, to be filled field by field.
#[inline(always)]
pub fn fib_params() -> FibParams {
    // SAFETY: a plain-old-data struct of integers, arrays and unions of them: all-zero is valid.
    unsafe { core::mem::zeroed() }
}

/// Asks the kernel's FIB; returns a BPF_FIB_LKUP_RET_* code and fills `params`.
#[inline(always)]
pub fn fib_lookup(ctx: &XdpContext, params: &mut FibParams, flags: u32) -> u32 {
    // SAFETY: ctx.ctx is the program's context; `params` lives on the stack for the call and is
    // as large as we say.
    unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            params,
            size_of::<FibParams>() as i32,
            flags,
        ) as u32
    }
}

/// The route MTU of an answered query (the kernel writes it on success too).
#[inline(always)]
pub fn fib_mtu(params: &FibParams) -> u32 {
    // SAFETY: tot_len and mtu_result are both u16: any value is valid.
    unsafe { params.__bindgen_anon_1.mtu_result as u32 }
}

/// Copies the source address the kernel chose (BPF_FIB_LOOKUP_SRC) into `src`: all 16 bytes for
/// IPv6, the first four for IPv4.
#[inline(always)]
pub fn fib_src(params: &FibParams, v6: bool, src: &mut [u8; 16]) {
    if v6 {
        // SAFETY: a union member of plain integers: any value is valid.
        let w = unsafe { params.__bindgen_anon_3.ipv6_src };
        src[0..4].copy_from_slice(&w[0].to_ne_bytes());
        src[4..8].copy_from_slice(&w[1].to_ne_bytes());
        src[8..12].copy_from_slice(&w[2].to_ne_bytes());
        src[12..16].copy_from_slice(&w[3].to_ne_bytes());
    } else {
        // SAFETY: as above.
        let w = unsafe { params.__bindgen_anon_3.ipv4_src };
        src[..4].copy_from_slice(&w.to_ne_bytes());
    }
}
