//! The service filter: a bitmap with one bit per (VIP, port, protocol) hash, set by the controller
//! for every service. A packet whose bit is clear is certainly not for a service and is passed
//! after one array read, so traffic we do not balance never pays for a hash-map lookup.

/// log2 of the number of bits (2^18 bits = 32 KiB, small enough to stay in cache).
pub const FILTER_BITS_LOG2: u32 = 18;
/// Number of u64 words in the SERVICE_FILTER array.
pub const FILTER_WORDS: u32 = 1 << (FILTER_BITS_LOG2 - 6);

/// The bit for a service address (16-byte form), port (network order) and protocol.
#[inline(always)]
pub fn filter_bit(addr: &[u8; 16], port_be: u16, proto: u8) -> u32 {
    let word = |i: usize| u32::from_le_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    let folded = word(0) ^ word(4) ^ word(8) ^ word(12) ^ ((port_be as u32) << 8) ^ proto as u32;
    // Fibonacci hashing: the high bits of the product mix every input bit.
    folded.wrapping_mul(0x9E37_79B1) >> (32 - FILTER_BITS_LOG2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_spread_and_stay_in_range() {
        let mut seen = [false; 1 << 12];
        let mut distinct = 0;
        for i in 0..4096u32 {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&[203, 0, 113, (i % 256) as u8]);
            let bit = filter_bit(&a, ((i / 256) as u16 + 80).to_be(), 6);
            assert!(bit < FILTER_WORDS * 64);
            let slot = (bit >> 6) as usize;
            if !seen[slot % seen.len()] {
                seen[slot % seen.len()] = true;
                distinct += 1;
            }
        }
        // 4096 services over 4096 words: most land in different words.
        assert!(distinct > 2000, "{distinct}");
    }
}
