//! The map layout of the director object, recorded in META when the maps are created and
//! compared before pinned maps are adopted: a restarted or upgraded xvsd reuses them only when
//! its object describes exactly the same maps (lb_common::layout).

use std::path::Path;

use aya::maps::{Array, Map, MapData, MapInfo};
use aya_obj::EbpfSectionKind;
use lb_common::{
    layout::{META_MAGIC, META_MAX_MAPS},
    names, MapLayout, Meta, LAYOUT_VERSION,
};

use super::{pin::PinDir, DataplaneError, Sizes};

/// Maps every load creates afresh: aya-log's ring buffer, the tunnel and reply route caches,
/// the ICMP translation scratch, the sync events (reports for the running xvsd only, so an
/// older pinned data plane without them is still adopted) and the station addresses (each xvsd
/// fills its own; an empty table filters nothing).
const UNPINNED: [&str; 6] = [
    "AYA_LOGS",
    names::MAP_SYNC_EVENTS,
    names::MAP_LINK_MACS,
    names::MAP_TUN_ROUTES,
    names::MAP_REPLY_ROUTES,
    names::MAP_ICMP_SCRATCH,
];
use crate::object;

/// The maps of the embedded director object as this xvsd would create them, sorted by name.
/// Data sections (.rodata, .data, .bss) belong to one build of the program and are never pinned,
/// nor are the log ring buffer and the route cache (each load has its own).
pub fn expected(sizes: Sizes) -> Result<Vec<MapLayout>, DataplaneError> {
    let obj = aya_obj::Object::parse(object::DIRECTOR)
        .map_err(|e| DataplaneError::Object(e.to_string()))?;
    let mut out: Vec<MapLayout> = obj
        .maps
        .iter()
        .filter(|(name, m)| {
            !matches!(
                m.section_kind(),
                EbpfSectionKind::Data | EbpfSectionKind::Rodata | EbpfSectionKind::Bss
            ) && !UNPINNED.contains(&name.as_str())
        })
        .map(|(name, m)| MapLayout {
            name: MapLayout::name_field(name),
            map_type: m.map_type(),
            key_size: m.key_size(),
            value_size: m.value_size(),
            max_entries: match name.as_str() {
                names::MAP_CONNS => sizes.conns,
                names::MAP_NAT_REPLIES => sizes.nat_replies(),
                names::MAP_SCHED_SLOTS => sizes.sched_slots,
                _ => m.max_entries(),
            },
            map_flags: m.map_flags(),
            _pad: 0,
        })
        .collect();
    out.sort_by_key(|m| m.name);
    if out.len() > META_MAX_MAPS {
        return Err(DataplaneError::Object(format!(
            "{} maps, META describes at most {META_MAX_MAPS}",
            out.len()
        )));
    }
    Ok(out)
}

/// The META record for these maps.
pub fn record(maps: &[MapLayout]) -> Meta {
    let mut meta = Meta {
        magic: META_MAGIC,
        layout_version: LAYOUT_VERSION,
        map_count: maps.len() as u32,
        ..Meta::default()
    };
    meta.maps[..maps.len()].copy_from_slice(maps);
    meta
}

/// Why a pinned META record does not describe `expected`; empty when it does.
pub fn compare(pinned: &Meta, expected: &[MapLayout]) -> Vec<String> {
    if pinned.magic != META_MAGIC {
        return vec!["META holds no xvs layout record".into()];
    }
    let mut why = Vec::new();
    if pinned.layout_version != LAYOUT_VERSION {
        why.push(format!(
            "layout version {} is pinned, this xvsd has version {LAYOUT_VERSION}",
            pinned.layout_version
        ));
    }
    for want in expected {
        match pinned.maps().iter().find(|m| m.name == want.name) {
            None => why.push(format!("map {} is new in this build", want.name_str())),
            Some(have) => why.extend(differences(want.name_str(), have, want, "pinned")),
        }
    }
    for have in pinned.maps() {
        if !expected.iter().any(|m| m.name == have.name) {
            why.push(format!("map {} is not in this build", have.name_str()));
        }
    }
    why
}

/// Field-by-field differences between a map as it is (`have`) and as it should be (`want`).
fn differences(name: &str, have: &MapLayout, want: &MapLayout, where_: &str) -> Vec<String> {
    let mut why = Vec::new();
    let mut field = |what: &str, h: u32, w: u32| {
        if h != w {
            let hint = match (name, what) {
                (names::MAP_CONNS, "entries") => " (--conn-table-size)",
                (names::MAP_SCHED_SLOTS, "entries") => " (--sched-slots)",
                (names::MAP_NAT_REPLIES, "entries") => " (--nat-table-size)",
                _ => "",
            };
            why.push(format!("map {name}: {what} {h} {where_}, {w} wanted{hint}"));
        }
    };
    field("type", have.map_type, want.map_type);
    field("key size", have.key_size, want.key_size);
    field("value size", have.value_size, want.value_size);
    field("entries", have.max_entries, want.max_entries);
    field("flags", have.map_flags, want.map_flags);
    why
}

/// Reads the pinned META record (None when META is not pinned or unreadable).
pub fn read_pinned(dir: &PinDir) -> Option<Meta> {
    let data = MapData::from_pin(dir.map(names::MAP_META)).ok()?;
    let meta: Array<MapData, Meta> = Array::try_from(Map::Array(data)).ok()?;
    meta.get(&0, 0).ok()
}

/// Why the pins in `dir` cannot be adopted by a controller that wants `expected`: META's
/// record, and every pinned map as the kernel describes it.
pub fn pinned_mismatches(dir: &PinDir, expected: &[MapLayout]) -> Vec<String> {
    let Some(meta) = read_pinned(dir) else {
        return vec![format!(
            "no readable {} map is pinned (not pinned by this version of xvs)",
            names::MAP_META
        )];
    };
    let mut why = compare(&meta, expected);
    if !why.is_empty() {
        return why;
    }
    for want in expected {
        let path = dir.map(want.name_str());
        match map_layout(&path) {
            Ok(have) => why.extend(differences(want.name_str(), &have, want, "in the kernel")),
            Err(e) => why.push(format!("map {}: {e}", want.name_str())),
        }
    }
    why
}

/// A pinned map as the kernel describes it.
fn map_layout(path: &Path) -> Result<MapLayout, String> {
    let info = MapInfo::from_pin(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let map_type = info
        .map_type()
        .map(|t| t as u32)
        .map_err(|e| e.to_string())?;
    Ok(MapLayout {
        name: [0; lb_common::layout::MAP_NAME_LEN],
        map_type,
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
        map_flags: info.map_flags(),
        _pad: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(name: &str, entries: u32) -> MapLayout {
        MapLayout {
            name: MapLayout::name_field(name),
            map_type: 1,
            key_size: 4,
            value_size: 8,
            max_entries: entries,
            map_flags: 0,
            _pad: 0,
        }
    }

    #[test]
    fn the_same_layout_is_compatible() {
        let maps = [layout("A", 1), layout("CONNS", 10)];
        assert!(compare(&record(&maps), &maps).is_empty());
    }

    #[test]
    fn every_difference_is_named() {
        let pinned = [layout("A", 1), layout("CONNS", 10), layout("OLD", 1)];
        let want = [layout("A", 1), layout("CONNS", 20), layout("NEW", 1)];
        let mut meta = record(&pinned);
        meta.layout_version = LAYOUT_VERSION + 1;
        let why = compare(&meta, &want);
        assert_eq!(
            why,
            [
                format!(
                    "layout version {} is pinned, this xvsd has version {LAYOUT_VERSION}",
                    LAYOUT_VERSION + 1
                ),
                "map CONNS: entries 10 pinned, 20 wanted (--conn-table-size)".to_string(),
                "map NEW is new in this build".to_string(),
                "map OLD is not in this build".to_string(),
            ]
        );
        let blank = Meta::default();
        assert_eq!(compare(&blank, &want), ["META holds no xvs layout record"]);
    }

    #[test]
    fn the_embedded_object_describes_every_map_the_controller_uses() {
        let maps = expected(Sizes::default()).unwrap();
        let names: Vec<&str> = maps.iter().map(|m| m.name_str()).collect();
        for n in [
            names::MAP_SERVICES,
            names::MAP_BACKENDS,
            names::MAP_SCHED_SLOTS,
            names::MAP_SEQ_CURSOR,
            names::MAP_CONNS,
            names::MAP_PERSIST,
            names::MAP_SERVICE_STATS,
            names::MAP_BACKEND_STATS,
            names::MAP_REASONS,
            names::MAP_CONFIG,
            names::MAP_SERVICE_FILTER,
            names::MAP_META,
        ] {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
        let conns = maps.iter().find(|m| m.name_str() == "CONNS").unwrap();
        assert_eq!(conns.max_entries, lb_common::DEFAULT_CONN_ENTRIES);
        assert_eq!(conns.key_size as usize, size_of::<lb_common::FlowKey>());
        assert_eq!(conns.value_size as usize, size_of::<lb_common::ConnEntry>());
    }

    #[test]
    fn the_nat_table_follows_the_connection_table_unless_sized_apart() {
        let nat = |sizes: Sizes| {
            let maps = expected(sizes).unwrap();
            let m = maps.iter().find(|m| m.name_str() == names::MAP_NAT_REPLIES);
            let m = m.expect("NAT_REPLIES in the object");
            (m.max_entries, m.map_flags)
        };
        let sized = |nat_replies| Sizes {
            conns: 4096,
            sched_slots: 1024,
            nat_replies,
        };
        assert_eq!(nat(sized(None)).0, 4096);
        assert_eq!(nat(sized(Some(1024))).0, 1024);
        // Preallocated: inserting on demand cost every new NAT connection an allocation.
        assert_eq!(
            nat(sized(None)).1 & aya_obj::generated::BPF_F_NO_PREALLOC,
            0
        );
    }
}
