//! Checksums over packet memory (the pure arithmetic lives in lb_common::csum).

use lb_common::csum::fold;

use crate::{helpers::csum_diff, packet::Packet};

/// Big-endian ones-complement sum of the `N` bytes at `offset` (`N` a multiple of 4, at most
/// 512), through the kernel's bpf_csum_diff; None when they are not all inside the frame.
#[inline(always)]
pub fn sum_packet<const N: usize>(pkt: &Packet, offset: usize) -> Option<u64> {
    let s = csum_diff(pkt.header::<[u8; N]>(offset)?);
    // bpf_csum_diff adds native (little-endian) words: the byte-swapped folded sum is the
    // big-endian one (a ones-complement sum commutes with swapping bytes).
    Some(fold(s as u32 as u64).swap_bytes() as u64)
}
