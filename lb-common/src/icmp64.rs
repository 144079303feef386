//! NAT64's table of ICMP errors (RFC 7915, sections 4.2 and 5.2): which ICMPv4 error becomes
//! which ICMPv6 error and back, with a "too big" MTU adjusted for the 20 bytes between an IPv4
//! and an IPv6 header. Pure: the data plane applies it (lb-ebpf's nat64_icmp), host tests check
//! it. An error the RFC does not translate (or that this table leaves out) has no entry: the
//! data plane drops it and counts `drop_nat64_icmp_untranslatable`, as RFC 7915 says ("silently
//! drop").

/// IPv6's minimum link MTU: no ICMPv6 "packet too big" advertises less (RFC 8200).
pub const IPV6_MIN_MTU: u32 = 1280;
/// IPv4's minimum MTU (RFC 791): no "fragmentation needed" advertises less.
pub const IPV4_MIN_MTU: u32 = 68;
/// Bytes an IPv6 header has over an IPv4 header without options.
const HEADER_GROWTH: u32 = 20;

/// A translated ICMP error header: type, code, and its second word (the MTU of a "too big",
/// the pointer of a parameter problem, otherwise 0: "unused").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapped {
    /// ICMP type.
    pub ty: u8,
    /// ICMP code.
    pub code: u8,
    /// The header's second word, host order (written big-endian).
    pub rest: u32,
}

const fn mapped(ty: u8, code: u8, rest: u32) -> Option<Mapped> {
    Some(Mapped { ty, code, rest })
}

/// The ICMPv6 error an ICMPv4 error (`ty`, `code`, second word `rest`) becomes (RFC 7915 4.2):
/// destination unreachable codes 0, 1, 5-8, 11, 12 -> no route (1/0); 9, 10, 13, 15 ->
/// administratively prohibited (1/1); 3 -> port unreachable (1/4); 2 (protocol unreachable) ->
/// parameter problem, unrecognised next header (4/1), pointing at the next-header field (6);
/// 4 (fragmentation needed) -> packet too big (2/0) with the MTU + 20, at least 1280 (a router
/// that advertises no MTU, RFC 1191's plateaus aside, gets IPv6's minimum); time exceeded
/// (11) -> 3 with its code. None: anything else (source quench, code 14, other types).
pub const fn v4_to_v6(ty: u8, code: u8, rest: u32) -> Option<Mapped> {
    match (ty, code) {
        (3, 0 | 1 | 5 | 6 | 7 | 8 | 11 | 12) => mapped(1, 0, 0),
        (3, 9 | 10 | 13 | 15) => mapped(1, 1, 0),
        (3, 2) => mapped(4, 1, 6),
        (3, 3) => mapped(1, 4, 0),
        (3, 4) => {
            let mtu = (rest & 0xffff) + HEADER_GROWTH;
            mapped(
                2,
                0,
                if mtu < IPV6_MIN_MTU {
                    IPV6_MIN_MTU
                } else {
                    mtu
                },
            )
        }
        (11, 0 | 1) => mapped(3, code, 0),
        _ => None,
    }
}

/// The ICMPv4 error an ICMPv6 error becomes (RFC 7915 5.2): destination unreachable codes 0,
/// 2, 3 -> host unreachable (3/1); 1 -> host administratively prohibited (3/10); 4 -> port
/// unreachable (3/3); packet too big (2) -> fragmentation needed (3/4) with the MTU - 20,
/// between 68 and 65535; time exceeded (3) -> 11 with its code. None: anything else (other
/// unreachable codes, parameter problems, other types).
pub const fn v6_to_v4(ty: u8, code: u8, rest: u32) -> Option<Mapped> {
    match (ty, code) {
        (1, 0 | 2 | 3) => mapped(3, 1, 0),
        (1, 1) => mapped(3, 10, 0),
        (1, 4) => mapped(3, 3, 0),
        (2, _) => {
            let mtu = rest.saturating_sub(HEADER_GROWTH);
            let mtu = if mtu < IPV4_MIN_MTU {
                IPV4_MIN_MTU
            } else if mtu > 0xffff {
                0xffff
            } else {
                mtu
            };
            mapped(3, 4, mtu)
        }
        (3, 0 | 1) => mapped(11, code, 0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icmpv4_errors_map_as_rfc_7915_section_4_2_says() {
        for code in [0, 1, 5, 6, 7, 8, 11, 12] {
            assert_eq!(v4_to_v6(3, code, 0), mapped(1, 0, 0), "code {code}");
        }
        for code in [9, 10, 13, 15] {
            assert_eq!(v4_to_v6(3, code, 0), mapped(1, 1, 0), "code {code}");
        }
        assert_eq!(v4_to_v6(3, 2, 0), mapped(4, 1, 6));
        assert_eq!(v4_to_v6(3, 3, 0), mapped(1, 4, 0));
        // Fragmentation needed: the MTU grows by 20, never below IPv6's minimum.
        assert_eq!(v4_to_v6(3, 4, 1400), mapped(2, 0, 1420));
        assert_eq!(v4_to_v6(3, 4, 0xdead_05dc), mapped(2, 0, 1520));
        assert_eq!(v4_to_v6(3, 4, 576), mapped(2, 0, 1280));
        assert_eq!(v4_to_v6(3, 4, 0), mapped(2, 0, 1280));
        assert_eq!(v4_to_v6(11, 0, 0), mapped(3, 0, 0));
        assert_eq!(v4_to_v6(11, 1, 0), mapped(3, 1, 0));
        for (ty, code) in [
            (3, 14),
            (3, 16),
            (4, 0),
            (5, 0),
            (11, 2),
            (12, 0),
            (0, 0),
            (8, 0),
        ] {
            assert_eq!(v4_to_v6(ty, code, 0), None, "{ty}/{code}");
        }
    }

    #[test]
    fn icmpv6_errors_map_as_rfc_7915_section_5_2_says() {
        for code in [0, 2, 3] {
            assert_eq!(v6_to_v4(1, code, 0), mapped(3, 1, 0), "code {code}");
        }
        assert_eq!(v6_to_v4(1, 1, 0), mapped(3, 10, 0));
        assert_eq!(v6_to_v4(1, 4, 0), mapped(3, 3, 0));
        // Packet too big: the MTU shrinks by 20, between 68 and 65535.
        assert_eq!(v6_to_v4(2, 0, 1400), mapped(3, 4, 1380));
        assert_eq!(v6_to_v4(2, 0, 1280), mapped(3, 4, 1260));
        assert_eq!(v6_to_v4(2, 0, 50), mapped(3, 4, 68));
        assert_eq!(v6_to_v4(2, 0, 1 << 20), mapped(3, 4, 0xffff));
        assert_eq!(v6_to_v4(3, 0, 0), mapped(11, 0, 0));
        assert_eq!(v6_to_v4(3, 1, 0), mapped(11, 1, 0));
        for (ty, code) in [
            (1, 5),
            (1, 6),
            (1, 7),
            (3, 2),
            (4, 0),
            (4, 1),
            (128, 0),
            (135, 0),
        ] {
            assert_eq!(v6_to_v4(ty, code, 0), None, "{ty}/{code}");
        }
    }
}
