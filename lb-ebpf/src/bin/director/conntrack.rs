//! Connection tracking: a live entry sends a flow to the real server it went to before, whatever
//! the tables say now; entries expire by protocol state and timeout, as in IPVS.
//!
//! Live connections are counted per backend slot and IPVS class (ActiveConn: TCP ESTABLISHED,
//! InActConn: the rest, UDP included) in CONN_COUNTS as entries change: +1 when `record` inserts
//! an entry, a move when `touch` changes an entry's class, -1 when `lookup` removes an entry it
//! found dead (expired, or a new SYN on a closing one) and when `forget` removes one. A hit that
//! keeps its class writes no counter. An entry whose slot was handed to another real server
//! (generation changed) is not subtracted: xvsd wrote its slot's old counts off when it changed
//! the generation. What no packet sees (expiry without traffic, LRU eviction) is xvsd's sweep's
//! (lb-user dataplane::sweep).
//!
//! The proof rule: an entry earns its LRU reference only with the client's third packet. CONNS is
//! the kernel's LRU hash, whose every lookup references the entry's node, and referenced nodes
//! outlive unreferenced ones under pressure. A spoofed SYN + ACK pair would reference its junk
//! entry as a real handshake does; so an entry counts in its state byte's proof bits
//! (lb_common::proof_owed) the client packets it still owes, 2 when `record`ed, and while it owes
//! any, a hit re-inserts it unreferenced (`proving`, `reinsert`) instead of writing in place:
//! the client's 2nd packet pays one, its 3rd the last, in place, keeping its reference. Replies,
//! FULLNAT's port assignment and relayed ICMP errors pay nothing and re-insert too. Proven
//! entries (0, also every entry of builds before the rule) take the in-place path.

use lb_common::{
    proof_owed, sync_event, with_proof_owed, Backend, ConnClass, ConnEntry, ConnState, FlowKey,
    Reason, PROOF_MASK, PROOF_NEW, PROTO_TCP, SYNC_REFRESH_SHIFT,
};
use lb_ebpf::parse::{tcp_flag, Parsed};

use crate::maps::{self, count};

/// The connection table's key for the packet's own flow.
#[inline(always)]
pub fn flow_key(p: &Parsed) -> FlowKey {
    FlowKey {
        src: p.src,
        dst: p.dst,
        sport_be: p.sport_be,
        dport_be: p.dport_be,
        proto: p.proto,
        family: p.family,
        _pad: [0; 2],
    }
}

/// A connection as forwarding needs it: its service, real server slot and (FULLNAT) local
/// address slot and port.
#[derive(Clone, Copy)]
pub struct Conn {
    /// Service id.
    pub service: u32,
    /// Backend slot.
    pub backend: u32,
    /// FULLNAT: the local-address slot, or while `lport_be` is 0 the pool's slot count.
    pub local: u8,
    /// FULLNAT: the local port, network order (0: none given yet).
    pub lport_be: u16,
    /// Made by this packet (a NAT connection's way back is still to be recorded).
    pub fresh: bool,
}

impl Conn {
    /// The entry's connection.
    #[inline(always)]
    pub fn of(e: &ConnEntry) -> Conn {
        Conn {
            service: e.service,
            backend: e.backend,
            local: e.local,
            lport_be: e.lport_be,
            fresh: false,
        }
    }

    /// In one register (a subprogram's result; bit 63 stays clear): backend in bits 0..32,
    /// service (< 2^16) in 32..48, local in 48..56.
    #[inline(always)]
    pub fn pack(&self) -> u64 {
        self.backend as u64 | (self.service as u64 & 0xffff) << 32 | (self.local as u64) << 48
    }

    /// The inverse of `pack`: a connection this packet made.
    #[inline(always)]
    pub fn unpack(v: u64) -> Conn {
        Conn {
            service: ((v >> 32) & 0xffff) as u32,
            backend: v as u32,
            local: (v >> 48) as u8,
            lport_be: 0,
            fresh: true,
        }
    }
}

/// A live entry for this flow whose real server still exists: the connection and its backend.
/// Updates the entry's state and clock, writing only what changed; an entry on probation goes
/// through `proving` instead (the one extra test of the established path).
#[inline(always)]
pub fn lookup(key: &FlowKey, p: &Parsed, now: u64) -> Option<(Conn, &'static Backend)> {
    let found = maps::conn_update(key, |e| {
        let state = ConnState::from_u8(e.state);
        let syn_only = p.tcp_flags & (tcp_flag::SYN | tcp_flag::ACK) == tcp_flag::SYN;
        // Expired, the real server was removed, or a new SYN on a closing entry: schedule afresh.
        let backend = match live_backend(e, state, now) {
            Some(b) if !(syn_only && matches!(state, ConnState::FinWait | ConnState::Close)) => b,
            _ => {
                count(Reason::ConnRescheduled);
                return Err(dead_slot(e));
            }
        };
        let conn = Conn::of(e);
        if e.state & PROOF_MASK != 0 {
            proving(key, e, p, now, true);
        } else {
            touch(key, e, state, p, now);
        }
        Ok((conn, backend))
    })?;
    match found {
        Ok(live) => Some(live),
        Err(counted) => {
            // Whoever removes a counted entry (here, or xvsd's sweep) takes it off the counts.
            if let Some((slot, class)) = counted {
                if maps::conn_remove(key) {
                    maps::count_conn(slot, class, u64::MAX);
                }
            }
            None
        }
    }
}

/// A packet of live entry `e` (of `key`) that still owes client packets: `client`, one of them.
/// The lookup that found `e` referenced its LRU node. While the entry owes more than this
/// packet, it is written back as a new, unreferenced entry (`reinsert`); a client packet that
/// pays the last of it writes in place and leaves the reference: the entry has earned it.
/// A subprogram: the copy stays off the caller's crowded frame.
#[inline(never)]
fn proving(key: &FlowKey, e: &mut ConnEntry, p: &Parsed, now: u64, client: bool) {
    let owed = proof_owed(e.state);
    let left = if client { owed.saturating_sub(1) } else { owed };
    let mut copy = *e;
    copy.state = with_proof_owed(copy.state, 0);
    let state = ConnState::from_u8(copy.state);
    touch(key, &mut copy, state, p, now);
    copy.state = with_proof_owed(copy.state, left);
    if left == 0 {
        *e = copy;
    } else {
        reinsert(key, &copy);
    }
}

/// Leaves entry `e` of `key` (a copy, its slot's generation checked) unreferenced if it owes
/// client packets: for lookups that are not the client's (an ICMP error about the flow).
#[inline(always)]
pub fn unreference(key: &FlowKey, e: &ConnEntry) {
    if e.state & PROOF_MASK != 0 {
        reinsert(key, e);
    }
}

/// Writes `e` back as `key`'s entry in a new LRU node, unreferenced: deleted, then inserted.
/// An update of the existing key would not do: the kernel marks the node that replaces an
/// entry referenced (kernel/bpf/hashtab.c, htab_lru_map_update_elem). The entry that was there
/// is freed, and its node may already hold another flow: nothing reads or writes it after this.
/// When the insert fails, the connection has no entry any more and leaves the counts. (A packet
/// of the flow on another CPU in between finds no entry and records one, which this replaces:
/// a race of one flow on two CPUs, whose count drift xvsd's sweep corrects.)
#[inline(always)]
fn reinsert(key: &FlowKey, e: &ConnEntry) {
    maps::conn_remove(key);
    if maps::conn_insert(key, e).is_err() {
        count(Reason::ConnInsertFailed);
        maps::count_conn(e.backend, ConnClass::of_state(e.state), u64::MAX);
    }
}

/// A dead entry's (slot, class) when its slot still holds the real server it counts for, so
/// its removal is subtracted; None when the slot changed hands (xvsd wrote those counts off).
#[inline(always)]
fn dead_slot(e: &ConnEntry) -> Option<(u32, ConnClass)> {
    let b = maps::backend(e.backend)?;
    (b.generation == e.generation).then_some((e.backend, ConnClass::of_state(e.state)))
}

/// Gives FULLNAT connection `key` its local address slot and port.
#[inline(always)]
pub fn set_local(key: &FlowKey, local: u8, lport_be: u16) -> bool {
    maps::conn_update(key, |e| {
        // A new connection's (its first packet's): its lookup must not reference it either.
        if e.state & PROOF_MASK != 0 {
            let mut copy = *e;
            copy.local = local;
            copy.lport_be = lport_be;
            reinsert(key, &copy);
        } else {
            e.local = local;
            e.lport_be = lport_be;
        }
    })
    .is_some()
}

/// Forgets connection `key` (a new FULLNAT connection that got no port: the client's retry
/// is scheduled afresh).
#[inline(always)]
pub fn forget(key: &FlowKey) {
    let counted = maps::conn(key).and_then(dead_slot);
    if maps::conn_remove(key) {
        if let Some((slot, class)) = counted {
            maps::count_conn(slot, class, u64::MAX);
        }
    }
}

/// A NAT or FULLNAT real server's reply to connection `key` (as the client sent it), from
/// backend `id`: that backend, when the connection is live and went to it. Its clock and TCP state follow the
/// reply as they follow the client's packets (a FIN or RST from either side closes it). A reply
/// pays nothing of what an entry owes: a real server answers spoofed SYNs too (a SYN-ACK, then
/// a RST to the spoofed ACK), so while the client owes packets a reply leaves the entry
/// unreferenced as well.
#[inline(always)]
pub fn reply_seen(key: &FlowKey, p: &Parsed, id: u32, now: u64) -> Option<&'static Backend> {
    maps::conn_update(key, |e| {
        let state = ConnState::from_u8(e.state);
        if e.backend != id {
            return None;
        }
        let backend = live_backend(e, state, now)?;
        if e.state & PROOF_MASK != 0 {
            proving(key, e, p, now, false);
        } else {
            touch(key, e, state, p, now);
        }
        Some(backend)
    })
    .flatten()
}

/// The backend of an entry that is live: not expired, and its slot still holds the real server
/// the connection went to (same generation).
#[inline(always)]
fn live_backend(e: &ConnEntry, state: ConnState, now: u64) -> Option<&'static Backend> {
    let timeout = timeout(state)?;
    let backend = maps::backend(e.backend)?;
    (now.saturating_sub(e.last_seen_ns) <= timeout && backend.generation == e.generation)
        .then_some(backend)
}

/// A packet of live entry `e` (of `key`): its clock, and its TCP state from the packet's
/// flags, each written only when it changed; a change of class moves the entry between its
/// slot's counters. A state change, and an established (or UDP) connection's packet that
/// crosses a refresh period of the clock (lb_common::SYNC_REFRESH_SHIFT), are reported to the master
/// sync daemon if one runs: the common hit pays one test of the clock, and CONFIG is read only
/// then.
#[inline(always)]
fn touch(key: &FlowKey, e: &mut ConnEntry, state: ConnState, p: &Parsed, now: u64) {
    let refresh = (now ^ e.last_seen_ns) >> SYNC_REFRESH_SHIFT != 0;
    if e.last_seen_ns != now {
        e.last_seen_ns = now;
    }
    if p.proto == PROTO_TCP {
        let next = next_tcp_state(state, p.tcp_flags);
        if next as u8 != e.state {
            if maps::sync_master() {
                maps::sync_report(key, e, next as u8, sync_event::STATE);
            }
            e.state = next as u8;
            if next.is_active() != state.is_active() {
                let (from, to) = match next.is_active() {
                    true => (ConnClass::Inactive, ConnClass::Active),
                    false => (ConnClass::Active, ConnClass::Inactive),
                };
                maps::count_conn(e.backend, from, u64::MAX);
                maps::count_conn(e.backend, to, 1);
            }
        } else if refresh && state == ConnState::Established && maps::sync_master() {
            maps::sync_report(key, e, e.state, sync_event::REFRESH);
        }
    } else if refresh && maps::sync_master() {
        maps::sync_report(key, e, e.state, sync_event::REFRESH);
    }
}

/// How long an entry in `state` lives without traffic.
#[inline(always)]
fn timeout(state: ConnState) -> Option<u64> {
    let cfg = maps::config()?;
    Some(match state {
        ConnState::Udp => cfg.udp_timeout_ns,
        ConnState::SynRecv => cfg.tcp_syn_timeout_ns,
        ConnState::Established => cfg.tcp_timeout_ns,
        ConnState::FinWait => cfg.tcp_fin_timeout_ns,
        ConnState::Close => cfg.tcp_close_timeout_ns,
    })
}

/// Records a new flow's choice of real server (`local`: a FULLNAT pool's slot count).
#[inline(always)]
pub fn record(
    key: &FlowKey,
    p: &Parsed,
    service: u32,
    id: u32,
    backend: &Backend,
    local: u8,
    now: u64,
) {
    let state = if p.proto == PROTO_TCP {
        next_tcp_state(ConnState::SynRecv, p.tcp_flags)
    } else {
        ConnState::Udp
    };
    let entry = ConnEntry {
        backend: id,
        generation: backend.generation,
        service,
        state: with_proof_owed(state as u8, PROOF_NEW),
        local,
        lport_be: 0,
        last_seen_ns: now,
    };
    if maps::conn_insert(key, &entry).is_err() {
        count(Reason::ConnInsertFailed);
    } else {
        maps::count_conn(id, ConnClass::of_state(entry.state), 1);
        if maps::sync_master() {
            maps::sync_report(key, &entry, entry.state, sync_event::NEW);
        }
    }
    count(Reason::ConnNew);
    // Not a connection's first packet, yet no live entry: the table lost it (evicted under
    // pressure, or expired), and it may now go to another real server. Counted here, off the
    // established path.
    if p.proto == PROTO_TCP && p.tcp_flags & (tcp_flag::SYN | tcp_flag::ACK) != tcp_flag::SYN {
        maps::count_midflow_miss(service);
    }
}

#[inline(always)]
fn next_tcp_state(state: ConnState, flags: u8) -> ConnState {
    state.tcp_next(
        flags & tcp_flag::SYN != 0,
        flags & tcp_flag::FIN != 0,
        flags & tcp_flag::RST != 0,
        flags & tcp_flag::ACK != 0,
    )
}
