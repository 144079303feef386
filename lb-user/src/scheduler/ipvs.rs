//! IPVS's schedulers other than rr, wrr and mh, with their kernel semantics
//! (net/netfilter/ipvs/ip_vs_*.c). Placeholder: filled in by the schedulers work.

use super::{Dest, Params, Table};
use crate::model::{SchedFlags, Scheduler};

/// State a service's scheduler keeps between recomputations.
#[derive(Clone, Debug, Default)]
pub struct State {}

/// The table for `scheduler` over `dests`.
pub fn table(
    _scheduler: Scheduler,
    _flags: SchedFlags,
    _state: &mut State,
    dests: &[Dest],
    _params: &Params,
) -> Table {
    Table::Sequence(
        (0..dests.len() as u32)
            .filter(|&i| dests[i as usize].weight > 0)
            .collect(),
    )
}
