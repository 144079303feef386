//! Scheduling a new flow: the service's table, which the controller computed (a sequence for
//! rr/wrr and the load-aware plans, or a hash table such as Maglev), read in O(1).

use lb_common::{flow_hash, table_kind, Backend, Reason, ServiceValue, NO_BACKEND};
use lb_ebpf::parse::Parsed;

use crate::maps;

/// The scheduler table's choice for a new flow: the next slot of a sequence, or the slot the
/// flow hashes to.
#[inline(always)]
pub fn pick(svc: &ServiceValue, p: &Parsed) -> Result<(u32, &'static Backend), Reason> {
    let len = svc.table_len;
    if len == 0 {
        return Err(Reason::DropNoBackend);
    }
    let pos = match svc.table_kind {
        table_kind::SEQUENCE => {
            let n = maps::seq_next(svc.id).ok_or(Reason::DropNoBackend)?;
            (n % len as u64) as u32
        }
        table_kind::HASH_SRC => flow_hash(&p.src, 0) % len,
        table_kind::HASH_SRC_PORT => flow_hash(&p.src, p.sport_be) % len,
        _ => flow_hash(&p.dst, 0) % len,
    };
    let id = maps::sched_slot(svc.table_off.wrapping_add(pos)).ok_or(Reason::DropBadBackend)?;
    if id == NO_BACKEND {
        return Err(Reason::DropNoBackend);
    }
    let backend = maps::backend(id).ok_or(Reason::DropBadBackend)?;
    if backend.generation == 0 {
        return Err(Reason::DropBadBackend);
    }
    Ok((id, backend))
}
