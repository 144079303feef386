//! Internet checksums (RFC 1071) as the data plane builds them: sums of big-endian 16-bit words
//! kept unfolded in a u64 and folded once at the end.

/// Folds an unfolded ones-complement sum to 16 bits (not complemented).
#[inline(always)]
pub fn fold(mut s: u64) -> u16 {
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// The checksum field's value for a sum: the complement of the folded sum.
#[inline(always)]
pub fn finish(s: u64) -> u16 {
    !fold(s)
}

/// Sum of the big-endian 16-bit words of a byte array of even length (unrolled: N is a constant).
#[inline(always)]
pub fn sum_words<const N: usize>(b: &[u8; N]) -> u64 {
    let mut s = 0u64;
    let mut i = 0;
    while i + 1 < N {
        s += ((b[i] as u64) << 8) | b[i + 1] as u64;
        i += 2;
    }
    s
}

/// Sum of an address in the 16-byte form: the first four bytes for IPv4, all sixteen for IPv6.
#[inline(always)]
pub fn sum_addr(a: &[u8; 16], v6: bool) -> u64 {
    let w = |i: usize| ((a[i] as u64) << 8) | a[i + 1] as u64;
    let mut s = w(0) + w(2);
    if v6 {
        s += w(4) + w(6) + w(8) + w(10) + w(12) + w(14);
    }
    s
}

/// A checksum field updated for changed words (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')):
/// `old` and `new` are the sums of the words before and after the change (as [`sum_words`] or
/// [`sum_addr`] give them). The result never needs a full recomputation.
#[inline(always)]
pub fn update(check: u16, old: u64, new: u64) -> u16 {
    // ~m summed over words is the ones-complement negation of m's folded sum.
    let neg_old = (!fold(old)) as u64;
    finish((!check) as u64 + neg_old + new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_updated_checksum_equals_a_recomputed_one() {
        // An IPv4 header whose destination changes: incremental == from scratch, for many.
        let mut h: [u8; 20] = [
            0x45, 0x00, 0x00, 0x73, 0x12, 0x34, 0x40, 0x00, 0x40, 0x06, 0x00, 0x00, 0xc6, 0x33,
            0x64, 0x07, 0xcb, 0x00, 0x71, 0x01,
        ];
        let full = |h: &[u8; 20]| {
            let mut z = *h;
            z[10] = 0;
            z[11] = 0;
            finish(sum_words(&z))
        };
        let c = full(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        let mut x: u32 = 1;
        for _ in 0..10_000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&h[16..20]);
            let old = sum_addr(&a, false);
            a[..4].copy_from_slice(&x.to_be_bytes());
            let new = sum_addr(&a, false);
            let check = u16::from_be_bytes([h[10], h[11]]);
            h[16..20].copy_from_slice(&x.to_be_bytes());
            let updated = update(check, old, new);
            assert_eq!(updated, full(&h), "{x:#x}");
            h[10..12].copy_from_slice(&updated.to_be_bytes());
        }
    }

    #[test]
    fn ipv4_header_example() {
        // RFC 1071 style check with a real header (checksum field zero): 0xb861 is its checksum.
        let h: [u8; 20] = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(finish(sum_words(&h)), 0xb861);
    }
}
