//! Maglev hashing (the mh scheduler). Placeholder: filled in by the Maglev work.

use super::{Dest, HashInput, Table, NO_DEST};
use crate::model::SchedFlags;

/// Default Maglev table size (a prime).
pub const DEFAULT_SIZE: usize = 65537;

/// The mh table of a service.
pub fn service_table(dests: &[Dest], flags: SchedFlags, size: usize) -> Table {
    let live: Vec<u32> = (0..dests.len() as u32)
        .filter(|&i| dests[i as usize].weight > 0)
        .collect();
    let slots = (0..size)
        .map(|i| {
            if live.is_empty() {
                NO_DEST
            } else {
                live[i % live.len()]
            }
        })
        .collect();
    Table::Hash {
        input: if flags.mh_port {
            super::HashInput::SourcePort
        } else {
            HashInput::Source
        },
        slots,
    }
}
