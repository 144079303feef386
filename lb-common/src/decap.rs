//! The real-server decapsulator's maps: which outer destinations are this host's, which inner
//! destinations are VIPs, which UDP ports carry GUE, and why each packet went the way it went.
//!
//! The director (LVS-TUN) wraps a client's packet in an outer header addressed to the real server
//! (IPIP, 6in4, IP6IP6, 4in6, or GUE over UDP). The decapsulator strips that header only when the
//! outer destination is a local address (`addr_role::LOCAL`) and the inner destination a VIP
//! (`addr_role::VIP`), so the kernel delivers the client's packet to the VIP bound on loopback.

/// An address of this host or a VIP: key of the DECAP_ADDRS map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct DecapAddrKey {
    /// The address (IPv4 in the first four bytes, the rest zero).
    pub addr: [u8; 16],
    /// FAMILY_V4 or FAMILY_V6.
    pub family: u8,
    /// Explicit padding (zero: part of the hashed key).
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<DecapAddrKey>() == 20);

/// Roles of an address in DECAP_ADDRS (the value is a bit set of these).
pub mod addr_role {
    /// A local address: tunnel packets addressed to it are decapsulated.
    pub const LOCAL: u32 = 1;
    /// A VIP: only packets for it are taken out of their tunnel.
    pub const VIP: u32 = 2;
}

/// A GUE port: key of the DECAP_GUE_PORTS map (the value, a u32, is 1).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct GuePortKey {
    /// UDP destination port, network byte order.
    pub port_be: u16,
}
const _: () = assert!(size_of::<GuePortKey>() == 2);

/// Most entries of DECAP_ADDRS (local addresses and VIPs together).
pub const MAX_DECAP_ADDRS: u32 = 4096;
/// Most GUE ports.
pub const MAX_GUE_PORTS: u32 = 16;

/// Names of the decapsulator's program and maps.
pub mod names {
    /// The XDP program.
    pub const PROG_DECAP: &str = "xvs_decap";
    /// DecapAddrKey -> u32 role bits.
    pub const MAP_ADDRS: &str = "DECAP_ADDRS";
    /// GuePortKey -> u32.
    pub const MAP_GUE_PORTS: &str = "DECAP_GUE_PORTS";
    /// Per-CPU u64 counter per DecapReason.
    pub const MAP_COUNTERS: &str = "DECAP_COUNTERS";
}

/// Every outcome of the decapsulator; the discriminant indexes DECAP_COUNTERS. The program
/// never drops: every packet it does not decapsulate is passed to the kernel untouched.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecapReason {
    /// Not a tunnel packet (not IP, or IP but neither IPIP/IPv6-in-IP nor UDP to a GUE port).
    PassNotTunnel = 0,
    /// A tunnel packet whose outer destination is not a local address.
    PassNotLocal = 1,
    /// A tunnel packet for us whose inner destination is not a VIP.
    PassNotVip = 2,
    /// On a GUE port, but not a GUE header this program takes (hlen != 0, control message,
    /// unknown version, flags or inner protocol).
    PassGueUnsupported = 3,
    /// A tunnel packet cut short, or whose inner header is not the IP version announced.
    PassMalformed = 4,
    /// Outer IPv4 fragment: cannot be decapsulated piecewise.
    PassFragment = 5,
    /// Outer IPv6 with extension headers.
    PassIpv6ExtHeader = 6,
    /// Two VLAN tags.
    PassStackedVlan = 7,
    /// IPv4 in IPv4 (protocol 4) decapsulated.
    DecapIpip = 8,
    /// IPv6 in IPv4 (protocol 41) decapsulated.
    Decap6in4 = 9,
    /// IPv6 in IPv6 (next header 41) decapsulated.
    DecapIp6ip6 = 10,
    /// IPv4 in IPv6 (next header 4) decapsulated.
    Decap4in6 = 11,
    /// GUE variant 0 (4-byte header, no options) decapsulated.
    DecapGue = 12,
    /// GUE variant 1 (the IP header right after UDP) decapsulated.
    DecapGueDirect = 13,
}

/// Number of decapsulator reasons (size of DECAP_COUNTERS).
pub const DECAP_REASON_COUNT: u32 = 14;

impl DecapReason {
    /// All reasons in index order.
    pub const ALL: [DecapReason; DECAP_REASON_COUNT as usize] = [
        DecapReason::PassNotTunnel,
        DecapReason::PassNotLocal,
        DecapReason::PassNotVip,
        DecapReason::PassGueUnsupported,
        DecapReason::PassMalformed,
        DecapReason::PassFragment,
        DecapReason::PassIpv6ExtHeader,
        DecapReason::PassStackedVlan,
        DecapReason::DecapIpip,
        DecapReason::Decap6in4,
        DecapReason::DecapIp6ip6,
        DecapReason::Decap4in6,
        DecapReason::DecapGue,
        DecapReason::DecapGueDirect,
    ];

    /// Whether the packet was decapsulated (otherwise it was passed untouched).
    pub const fn is_decap(self) -> bool {
        (self as u32) >= DecapReason::DecapIpip as u32
    }

    /// A stable snake_case name (JSON key).
    pub const fn name(self) -> &'static str {
        match self {
            DecapReason::PassNotTunnel => "pass_not_tunnel",
            DecapReason::PassNotLocal => "pass_not_local",
            DecapReason::PassNotVip => "pass_not_vip",
            DecapReason::PassGueUnsupported => "pass_gue_unsupported",
            DecapReason::PassMalformed => "pass_malformed",
            DecapReason::PassFragment => "pass_fragment",
            DecapReason::PassIpv6ExtHeader => "pass_ipv6_ext_header",
            DecapReason::PassStackedVlan => "pass_stacked_vlan",
            DecapReason::DecapIpip => "decap_ipip",
            DecapReason::Decap6in4 => "decap_6in4",
            DecapReason::DecapIp6ip6 => "decap_ip6ip6",
            DecapReason::Decap4in6 => "decap_4in6",
            DecapReason::DecapGue => "decap_gue",
            DecapReason::DecapGueDirect => "decap_gue_direct",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, explicit padding, no invalid bit patterns.
    unsafe impl aya::Pod for super::DecapAddrKey {}
    // SAFETY: as above (repr(C), Copy, explicit padding, any bit pattern valid).
    unsafe impl aya::Pod for super::GuePortKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order() {
        for (i, r) in DecapReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
        }
    }

    #[test]
    fn decap_reasons_are_the_last_six() {
        let n = DecapReason::ALL.iter().filter(|r| r.is_decap()).count();
        assert_eq!(n, 6);
        assert!(!DecapReason::PassStackedVlan.is_decap());
        assert!(DecapReason::DecapIpip.is_decap());
    }
}
