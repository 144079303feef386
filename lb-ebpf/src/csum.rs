//! Checksums over packet memory (the pure arithmetic lives in lb_common::csum).

use aya_ebpf::helpers::bpf_csum_diff;
use lb_common::csum::fold;

/// Sum of `len` bytes at `ptr` (inside the packet, bounds already checked by the caller; `len` a
/// multiple of 4, at most 512) through the kernel's bpf_csum_diff, as big-endian words.
///
/// # Safety
/// `ptr..ptr+len` must be packet memory the verifier knows to be in bounds.
#[inline(always)]
pub unsafe fn sum_packet(ptr: *mut u8, len: u32) -> u64 {
    // SAFETY: the caller guarantees the range; a null `from` with size 0 is allowed.
    let s = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, ptr as *mut u32, len, 0) };
    // bpf_csum_diff adds native (little-endian) words: the byte-swapped folded sum is the
    // big-endian one (a ones-complement sum commutes with swapping bytes).
    fold(s as u32 as u64).swap_bytes() as u64
}
