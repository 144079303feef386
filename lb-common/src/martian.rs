//! Sources no connection comes from: the addresses the kernel's input path refuses as a packet's
//! source (IPv4 "martian source", net/ipv4/route.c `ip_route_input_slow`; IPv6
//! `ip6_rcv_core`). IPVS never sees such a packet: the kernel drops it first. The director sees
//! packets before the kernel, so a new flow from one is dropped and counted
//! (`drop_martian_source`) instead of being balanced to a real server.

use crate::{FAMILY_V4, FAMILY_V6};

/// Whether a new flow from `src` (the 16-byte form as four native-order u32 words, as they lie
/// in memory) must be refused: IPv4 0.0.0.0/8, 127.0.0.0/8, multicast 224.0.0.0/4 and the
/// limited broadcast 255.255.255.255 (the kernel routes the rest of 240.0.0.0/4); IPv6 the
/// unspecified address, loopback, multicast ff00::/8 and IPv4-mapped ::ffff:0:0/96 (RFC 4291).
#[inline(always)]
pub fn martian_source(family: u8, src: [u32; 4]) -> bool {
    // Big-endian values: the address's first byte is the most significant.
    let [a, b, c, d] = [
        u32::from_be(src[0]),
        u32::from_be(src[1]),
        u32::from_be(src[2]),
        u32::from_be(src[3]),
    ];
    match family {
        FAMILY_V4 => matches!(a >> 24, 0 | 127) || a >> 28 == 0xe || a == u32::MAX,
        FAMILY_V6 => a >> 24 == 0xff || (a == 0 && b == 0 && (c == 0xffff || (c == 0 && d <= 1))),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(a: [u8; 16]) -> [u32; 4] {
        [0, 4, 8, 12].map(|i| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]))
    }

    fn v4(a: [u8; 4]) -> bool {
        let mut w = [0u8; 16];
        w[..4].copy_from_slice(&a);
        martian_source(FAMILY_V4, words(w))
    }

    fn v6(s: &str) -> bool {
        let a: core::net::Ipv6Addr = s.parse().unwrap();
        martian_source(FAMILY_V6, words(a.octets()))
    }

    #[test]
    fn the_kernels_martian_ipv4_sources_are_refused() {
        for a in [
            [0, 0, 0, 0],
            [0, 1, 2, 3],
            [127, 0, 0, 1],
            [127, 255, 255, 254],
            [224, 0, 0, 1],
            [239, 255, 255, 250],
            [255, 255, 255, 255],
        ] {
            assert!(v4(a), "{a:?}");
        }
        for a in [
            [1, 0, 0, 0],
            [10, 0, 0, 1],
            [126, 255, 255, 255],
            [128, 0, 0, 0],
            [192, 0, 2, 1],
            [223, 255, 255, 255],
            [240, 0, 0, 1],
            [255, 255, 255, 254],
        ] {
            assert!(!v4(a), "{a:?}");
        }
    }

    #[test]
    fn the_kernels_martian_ipv6_sources_are_refused() {
        for a in [
            "::",
            "::1",
            "ff02::1",
            "ff0e::1234",
            "::ffff:192.0.2.1",
            "::ffff:0.0.0.0",
        ] {
            assert!(v6(a), "{a}");
        }
        for a in [
            "::2",
            "::192.0.2.1",
            "2001:db8::1",
            "fe80::1",
            "fe00::1",
            "::fffe:192.0.2.1",
            "0:0:1::ffff:1",
        ] {
            assert!(!v6(a), "{a}");
        }
    }

    #[test]
    fn other_families_are_not_judged() {
        assert!(!martian_source(0, [0; 4]));
    }
}
