//! The station addresses of the interfaces the director is attached to: which unicast frames are
//! addressed to this host. A NIC in promiscuous mode (a bridge port, tcpdump, macvlan, a veth)
//! hands XDP frames sent to other hosts too, such as those a switch floods while it relearns
//! after a port flap; the kernel drops them (PACKET_OTHERHOST) before IPVS would see them, so
//! the director passes them to the kernel instead of balancing a copy of another host's traffic.

/// Slots of the LINK_MACS array, indexed by `ifindex % LINK_MAC_SLOTS`.
pub const LINK_MAC_SLOTS: u32 = 256;
/// Most station addresses one interface has (its own, its bridge's or bond's, its VLANs' and
/// macvlans'); an interface with more is not filtered.
pub const MAX_LINK_MACS: usize = 8;

/// One interface's station addresses (the LINK_MACS value). A slot whose `ifindex` is not the
/// ingress interface's (0 when empty, or when two attached interfaces share the slot) filters
/// nothing: frames are handled as if addressed here.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LinkMacs {
    /// The interface these addresses belong to.
    pub ifindex: u32,
    /// How many of `macs` are used.
    pub count: u32,
    /// The addresses as [`mac_word`]s.
    pub macs: [u64; MAX_LINK_MACS],
}
const _: () = assert!(size_of::<LinkMacs>() == 8 + 8 * MAX_LINK_MACS);

#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, no padding (two u32 then u64s), any bit pattern valid.
unsafe impl aya::Pod for LinkMacs {}

impl LinkMacs {
    /// The entry for `ifindex` with these addresses (duplicates once), or None when there are
    /// more than MAX_LINK_MACS distinct ones.
    pub fn new(ifindex: u32, macs: &[[u8; 6]]) -> Option<Self> {
        let mut out = LinkMacs {
            ifindex,
            ..Default::default()
        };
        for mac in macs {
            let w = mac_word(mac);
            if out.macs[..out.count as usize].contains(&w) {
                continue;
            }
            if out.count as usize == MAX_LINK_MACS {
                return None;
            }
            out.macs[out.count as usize] = w;
            out.count += 1;
        }
        Some(out)
    }

    /// Whether a frame to `dst` that arrived on `ifindex` is for this host by this entry.
    #[inline(always)]
    pub fn admits(&self, ifindex: u32, dst: u64) -> bool {
        if self.ifindex != ifindex {
            return true;
        }
        let mut i = 0;
        while i < MAX_LINK_MACS {
            if i as u32 >= self.count {
                return false;
            }
            if self.macs[i] == dst {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// The LINK_MACS slot of an interface.
#[inline(always)]
pub const fn link_slot(ifindex: u32) -> u32 {
    ifindex % LINK_MAC_SLOTS
}

/// A MAC address as one word: its six bytes in memory order in the low 48 bits of a
/// native-endian u64 (the data plane loads a frame's destination the same way).
#[inline(always)]
pub const fn mac_word(mac: &[u8; 6]) -> u64 {
    let lo = u32::from_ne_bytes([mac[0], mac[1], mac[2], mac[3]]) as u64;
    let hi = u16::from_ne_bytes([mac[4], mac[5]]) as u64;
    lo | hi << 32
}

/// Whether a destination MAC is a group address (broadcast or multicast: the I/G bit).
#[inline(always)]
pub const fn is_group(mac0: u8) -> bool {
    mac0 & 1 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
    const B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

    #[test]
    fn an_entry_admits_its_addresses_and_nothing_else_on_its_interface() {
        let e = LinkMacs::new(7, &[A, A, B]).expect("two distinct addresses fit");
        assert_eq!(e.count, 2);
        assert!(e.admits(7, mac_word(&A)) && e.admits(7, mac_word(&B)));
        assert!(!e.admits(7, mac_word(&[0x02, 0, 0, 0, 0, 0x0c])));
        // Another interface in the same slot is not filtered by this entry.
        assert!(e.admits(7 + LINK_MAC_SLOTS, mac_word(&[0x02, 0, 0, 0, 0, 0x0c])));
    }

    #[test]
    fn an_empty_slot_filters_nothing_and_too_many_addresses_are_refused() {
        assert!(LinkMacs::default().admits(3, mac_word(&A)));
        let many: [[u8; 6]; MAX_LINK_MACS + 1] = core::array::from_fn(|i| [2, 0, 0, 0, 0, i as u8]);
        assert!(LinkMacs::new(1, &many[..MAX_LINK_MACS]).is_some());
        assert!(LinkMacs::new(1, &many).is_none());
    }

    #[test]
    fn the_word_differs_in_every_byte() {
        for i in 0..6 {
            let mut m = A;
            m[i] ^= 0x80;
            assert_ne!(mac_word(&m), mac_word(&A), "byte {i}");
        }
        assert!(is_group(0xff) && is_group(0x01) && !is_group(0x02));
    }
}
