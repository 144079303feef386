//! Persistence: a client network (the client address under a per-service netmask) keeps going
//! to the same real server while its template lives, as IPVS's persistent services.

use lb_common::{service_flags, Backend, PersistEntry, PersistKey, Reason, ServiceValue};
use lb_ebpf::{packet::masked_addr, parse::Parsed};

use crate::maps::{self, count};

/// The template key of the packet's client network, for a persistent service only (only such a
/// service pays for masking the address).
#[inline(always)]
pub fn key(svc: &ServiceValue, p: &Parsed) -> Option<PersistKey> {
    (svc.flags & service_flags::PERSISTENT != 0).then(|| PersistKey {
        // Parsed's addresses are aligned to 8: two words, not sixteen byte steps.
        client: masked_addr(&p.src, svc.persist_prefix),
        service: svc.id,
        family: p.family,
        _pad: [0; 3],
    })
}

/// The client network's live template: its real server still exists (a quiesced one still
/// counts, as in IPVS) and the template has not expired. Refreshes the template's clock.
#[inline(always)]
pub fn lookup(key: &PersistKey, svc: &ServiceValue, now: u64) -> Option<(u32, &'static Backend)> {
    maps::persist_update(key, |t| {
        let backend = maps::backend(t.backend)?;
        if backend.generation != t.generation
            || now.saturating_sub(t.last_seen_ns) > svc.persist_timeout_s as u64 * 1_000_000_000
        {
            return None;
        }
        t.last_seen_ns = now;
        count(Reason::PersistHit);
        Some((t.backend, backend))
    })
    .flatten()
}

/// Records a new template for the client network.
#[inline(always)]
pub fn record(key: &PersistKey, id: u32, backend: &Backend, now: u64) {
    let entry = PersistEntry {
        backend: id,
        generation: backend.generation,
        last_seen_ns: now,
    };
    if maps::persist_insert(key, &entry).is_err() {
        count(Reason::PersistInsertFailed);
    } else {
        count(Reason::PersistNew);
    }
}
