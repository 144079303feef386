//! Which unicast destination MACs the director treats as its own on each interface it is
//! attached to (the data plane's LINK_MACS, lb_common::link): the interface's address, its
//! bridge's or bond's (when it is a port of one), and those of the VLAN, macvlan and ipvlan
//! links stacked on it (keepalived's `use_vmac` interface is a macvlan). Frames to any other
//! unicast MAC are passed to the kernel, which drops them, as it does before IPVS sees them.

use std::collections::BTreeMap;

use lb_common::{link::link_slot, LinkMacs, LINK_MAC_SLOTS};

/// One network interface as a link dump describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkRecord {
    /// Its ifindex.
    pub index: u32,
    /// Its Ethernet address (None for a link without one).
    pub mac: Option<[u8; 6]>,
    /// The interface it is stacked on, for a VLAN, macvlan or ipvlan link (frames for it arrive
    /// through that one).
    pub stacked_on: Option<u32>,
    /// Its bridge or bond, when it is a port of one.
    pub master: Option<u32>,
}

/// Each attached interface's station addresses, in the order found (its own first).
pub fn addresses(links: &[LinkRecord], attached: &[u32]) -> BTreeMap<u32, Vec<[u8; 6]>> {
    let mac_of = |index: u32| links.iter().find(|l| l.index == index).and_then(|l| l.mac);
    let mut out = BTreeMap::new();
    for &ifindex in attached {
        let Some(me) = links.iter().find(|l| l.index == ifindex) else {
            continue;
        };
        let mut macs: Vec<[u8; 6]> = Vec::new();
        let mut add = |m: Option<[u8; 6]>| {
            if let Some(m) = m.filter(|m| !macs.contains(m)) {
                macs.push(m);
            }
        };
        add(me.mac);
        add(me.master.and_then(mac_of));
        for upper in links.iter().filter(|l| l.stacked_on == Some(ifindex)) {
            add(upper.mac);
        }
        out.insert(ifindex, macs);
    }
    out
}

/// Why an attached interface's frames are not filtered by destination MAC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unfiltered {
    /// It has no Ethernet address (or vanished).
    NoAddress,
    /// Another attached interface has the same LINK_MACS slot (ifindex modulo 256).
    SharedSlot(u32),
    /// It has more distinct station addresses than a slot holds.
    TooMany(usize),
}

/// What LINK_MACS should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StationPlan {
    /// The filled slots (every other one empty).
    pub slots: BTreeMap<u32, LinkMacs>,
    /// The attached interfaces left unfiltered, and why.
    pub unfiltered: Vec<(u32, Unfiltered)>,
}

/// The LINK_MACS contents for these interfaces' addresses.
pub fn plan(addresses: &BTreeMap<u32, Vec<[u8; 6]>>) -> StationPlan {
    let mut out = StationPlan::default();
    let mut by_slot: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for &ifindex in addresses.keys() {
        by_slot.entry(link_slot(ifindex)).or_default().push(ifindex);
    }
    for (slot, ifindexes) in by_slot {
        debug_assert!(slot < LINK_MAC_SLOTS);
        if let [a, b, ..] = ifindexes[..] {
            for &i in &ifindexes {
                out.unfiltered
                    .push((i, Unfiltered::SharedSlot(if i == a { b } else { a })));
            }
            continue;
        }
        let ifindex = ifindexes[0];
        let macs = &addresses[&ifindex];
        if macs.is_empty() {
            out.unfiltered.push((ifindex, Unfiltered::NoAddress));
            continue;
        }
        match LinkMacs::new(ifindex, macs) {
            Some(entry) => {
                out.slots.insert(slot, entry);
            }
            None => out
                .unfiltered
                .push((ifindex, Unfiltered::TooMany(macs.len()))),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use lb_common::link::mac_word;

    use super::*;

    fn mac(last: u8) -> [u8; 6] {
        [0x02, 0, 0, 0, 0, last]
    }

    fn link(index: u32, last: u8) -> LinkRecord {
        LinkRecord {
            index,
            mac: Some(mac(last)),
            stacked_on: None,
            master: None,
        }
    }

    #[test]
    fn an_interface_answers_for_itself_its_bridge_and_what_is_stacked_on_it() {
        let links = [
            LinkRecord {
                master: Some(9),
                ..link(2, 2)
            },
            link(9, 9),
            LinkRecord {
                stacked_on: Some(2),
                ..link(10, 10)
            },
            // A VLAN with the parent's address adds nothing.
            LinkRecord {
                stacked_on: Some(2),
                ..link(11, 2)
            },
            // Stacked on another interface, and a stranger.
            LinkRecord {
                stacked_on: Some(3),
                ..link(12, 12)
            },
            link(3, 3),
        ];
        let a = addresses(&links, &[2, 3, 77]);
        assert_eq!(a[&2], vec![mac(2), mac(9), mac(10)]);
        assert_eq!(a[&3], vec![mac(3), mac(12)]);
        assert!(
            !a.contains_key(&77),
            "a vanished interface is not described"
        );
    }

    #[test]
    fn the_plan_fills_one_slot_per_interface() {
        let a = BTreeMap::from([(2, vec![mac(2), mac(9)]), (3, vec![mac(3)])]);
        let p = plan(&a);
        assert!(p.unfiltered.is_empty());
        assert_eq!(p.slots.len(), 2);
        let e = p.slots[&2];
        assert_eq!((e.ifindex, e.count), (2, 2));
        assert!(e.admits(2, mac_word(&mac(9))) && !e.admits(2, mac_word(&mac(3))));
    }

    #[test]
    fn interfaces_sharing_a_slot_or_without_an_address_are_left_unfiltered() {
        let a = BTreeMap::from([
            (5, vec![mac(5)]),
            (5 + LINK_MAC_SLOTS, vec![mac(6)]),
            (7, vec![]),
            (
                8,
                (0..=lb_common::link::MAX_LINK_MACS as u8)
                    .map(mac)
                    .collect(),
            ),
        ]);
        let p = plan(&a);
        assert!(p.slots.is_empty(), "{:?}", p.slots);
        assert_eq!(
            p.unfiltered,
            vec![
                (5, Unfiltered::SharedSlot(5 + LINK_MAC_SLOTS)),
                (5 + LINK_MAC_SLOTS, Unfiltered::SharedSlot(5)),
                (7, Unfiltered::NoAddress),
                (8, Unfiltered::TooMany(lb_common::link::MAX_LINK_MACS + 1)),
            ]
        );
    }
}
