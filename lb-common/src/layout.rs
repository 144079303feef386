//! The map layout a pinned data plane was built with, so that a restarted or upgraded controller
//! can tell whether it may adopt the pinned maps (same layout) or must refuse (a different one).
//!
//! The controller writes one `Meta` record into the META map when it creates the maps, and
//! compares it with the layout of the object it is about to load before reusing any pin.

/// Version of the meaning of the data plane's maps: bump it whenever a map's key or value type,
/// or what its fields mean, changes, or a map is added or removed. Sizes alone are compared too
/// (every map's type, key and value size, capacity and flags are recorded), but a change of
/// meaning that keeps the sizes is only caught by this number.
pub const LAYOUT_VERSION: u32 = 5;

/// Most maps one `Meta` record describes.
pub const META_MAX_MAPS: usize = 24;

/// Marks a META record as written by xvs ("XVSM").
pub const META_MAGIC: u32 = u32::from_le_bytes(*b"XVSM");

/// Kernel map names are at most 15 bytes and a NUL.
pub const MAP_NAME_LEN: usize = 16;

/// One map as created: its name and what the kernel was asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MapLayout {
    /// Map name, NUL-padded.
    pub name: [u8; MAP_NAME_LEN],
    /// BPF_MAP_TYPE_*.
    pub map_type: u32,
    /// Key size, bytes.
    pub key_size: u32,
    /// Value size, bytes.
    pub value_size: u32,
    /// Capacity.
    pub max_entries: u32,
    /// BPF_F_* creation flags.
    pub map_flags: u32,
    /// Explicit padding.
    pub _pad: u32,
}
const _: () = assert!(size_of::<MapLayout>() == 40);

impl MapLayout {
    /// The name as a string (up to the first NUL; empty if it is not UTF-8).
    pub fn name_str(&self) -> &str {
        let end = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(MAP_NAME_LEN);
        core::str::from_utf8(&self.name[..end]).unwrap_or("")
    }

    /// A name field for `name` (truncated to 15 bytes, NUL-padded).
    pub fn name_field(name: &str) -> [u8; MAP_NAME_LEN] {
        let mut out = [0u8; MAP_NAME_LEN];
        let n = name.len().min(MAP_NAME_LEN - 1);
        out[..n].copy_from_slice(&name.as_bytes()[..n]);
        out
    }
}

/// The META map's only value: the layout version and every map of the object.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    /// META_MAGIC.
    pub magic: u32,
    /// LAYOUT_VERSION of the controller that created the maps.
    pub layout_version: u32,
    /// How many entries of `maps` are used.
    pub map_count: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// The maps, sorted by name.
    pub maps: [MapLayout; META_MAX_MAPS],
}
const _: () = assert!(size_of::<Meta>() == 16 + 40 * META_MAX_MAPS);

impl Default for Meta {
    fn default() -> Self {
        Self {
            magic: 0,
            layout_version: 0,
            map_count: 0,
            _pad: 0,
            maps: [MapLayout::default(); META_MAX_MAPS],
        }
    }
}

impl Meta {
    /// The used entries of `maps`.
    pub fn maps(&self) -> &[MapLayout] {
        &self.maps[..(self.map_count as usize).min(META_MAX_MAPS)]
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, explicit padding, no invalid bit patterns.
    unsafe impl aya::Pod for super::MapLayout {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Meta {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_truncate() {
        let l = MapLayout {
            name: MapLayout::name_field("CONNS"),
            ..Default::default()
        };
        assert_eq!(l.name_str(), "CONNS");
        let long = MapLayout {
            name: MapLayout::name_field("A_VERY_LONG_MAP_NAME"),
            ..Default::default()
        };
        assert_eq!(long.name_str(), "A_VERY_LONG_MAP");
    }
}
