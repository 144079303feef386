//! The director: balances virtual-service traffic to real servers (DR and TUN mode), relays ICMP
//! errors about balanced flows to their real servers, passes the rest.
#![no_std]
#![no_main]
#![allow(internal_features)]
#![feature(core_intrinsics)]

use aya_ebpf::{
    bindings::{xdp_action, BPF_F_NO_PREALLOC},
    helpers::{bpf_ktime_get_coarse_ns, bpf_redirect},
    macros::{map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use aya_log_ebpf::{debug, trace};
use core::intrinsics::{atomic_xadd, AtomicOrdering};
use lb_common::{
    filter::{filter_bit, FILTER_WORDS},
    flow_hash, fwd, mask_addr,
    reason::REASON_COUNT,
    service_flags, table_kind, tunnel_job_flags, tuple_hash, Backend, ConnEntry, ConnState,
    DataplaneConfig, FlowKey, PersistEntry, PersistKey, Reason, ServiceKey, ServiceValue, Stats,
    TunnelJob, DEFAULT_CONN_ENTRIES, DEFAULT_PERSIST_ENTRIES, DEFAULT_SCHED_SLOTS, MAX_BACKENDS,
    MAX_SERVICES, NO_BACKEND, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, TAIL_ICMP, TAIL_SLOTS,
    TAIL_TUNNEL,
};

use lb_ebpf::{
    icmp,
    packet::{parse, ptr_at, tcp_flag, Parsed},
    tunnel::{self, Sent},
};

// Services change under traffic: without preallocation, a replaced value is freed after an RCU
// grace period, so a packet never reads a value that is being rewritten.
#[map]
static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(MAX_SERVICES, BPF_F_NO_PREALLOC);
#[map]
static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);
#[map]
static SCHED_SLOTS: Array<u32> = Array::with_max_entries(DEFAULT_SCHED_SLOTS, 0);
#[map]
static SEQ_CURSOR: Array<u64> = Array::with_max_entries(MAX_SERVICES, 0);
#[map]
static CONNS: LruHashMap<FlowKey, ConnEntry> =
    LruHashMap::with_max_entries(DEFAULT_CONN_ENTRIES, 0);
#[map]
static PERSIST: LruHashMap<PersistKey, PersistEntry> =
    LruHashMap::with_max_entries(DEFAULT_PERSIST_ENTRIES, 0);
#[map]
static SERVICE_STATS: PerCpuArray<Stats> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);
#[map]
static BACKEND_STATS: PerCpuArray<Stats> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);
#[map]
static REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(REASON_COUNT, 0);
#[map]
static CONFIG: Array<DataplaneConfig> = Array::with_max_entries(1, 0);
#[map]
static SERVICE_FILTER: Array<u64> = Array::with_max_entries(FILTER_WORDS, 0);
#[map]
static TAIL_CALLS: ProgramArray = ProgramArray::with_max_entries(TAIL_SLOTS, 0);
#[map]
static TUNNEL_JOB: PerCpuArray<TunnelJob> = PerCpuArray::with_max_entries(1, 0);

// Read by the controller only: the layout the maps were created with (checked before a
// restarted or upgraded controller adopts pinned maps).
#[map]
static META: Array<lb_common::Meta> = Array::with_max_entries(1, 0);

/// Where a forwarded frame leaves.
enum Out {
    /// XDP_TX, counted under this reason.
    Tx(Reason),
    /// XDP_REDIRECT to this interface (a tunnel whose next hop is behind another interface).
    Redirect(u32),
}

/// The director's entry point: maps the internal result to a verdict and counts the reason.
#[xdp]
pub fn xvs_director(ctx: XdpContext) -> u32 {
    verdict(&ctx, director(&ctx))
}

/// Counts the outcome of a program run and turns it into the XDP verdict. Logs it only when
/// xvsd runs with `--kernel-log` (drops at debug, everything at trace): the loader sets
/// AYA_LOG_LEVEL, a read-only global, so at its default (off) the verifier removes the logging.
#[inline(always)]
fn verdict(ctx: &XdpContext, result: Result<Out, Reason>) -> u32 {
    match result {
        Ok(Out::Tx(reason)) => {
            count(reason);
            trace!(ctx, "{}", reason.name());
            xdp_action::XDP_TX
        }
        Ok(Out::Redirect(ifindex)) => {
            count(Reason::RedirectTunnel);
            trace!(ctx, "{} ifindex {}", Reason::RedirectTunnel.name(), ifindex);
            // SAFETY: a plain helper call; it returns XDP_REDIRECT (or XDP_ABORTED on a bad flag).
            unsafe { bpf_redirect(ifindex, 0) as u32 }
        }
        Err(reason) => {
            count(reason);
            if reason.is_drop() {
                debug!(ctx, "{}", reason.name());
                xdp_action::XDP_DROP
            } else {
                trace!(ctx, "{}", reason.name());
                xdp_action::XDP_PASS
            }
        }
    }
}

#[inline(always)]
fn count(reason: Reason) {
    if let Some(c) = REASONS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn add_stats(map: &PerCpuArray<Stats>, index: u32, new_conn: bool, bytes: u64) {
    if let Some(s) = map.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer.
        let s = unsafe { &mut *s };
        s.conns += new_conn as u64;
        s.packets += 1;
        s.bytes += bytes;
    }
}

#[inline(always)]
fn director(ctx: &XdpContext) -> Result<Out, Reason> {
    let p = parse(ctx)?;
    if p.proto == PROTO_ICMP || p.proto == PROTO_ICMPV6 {
        // Rare and stack-hungry: handled by a program of its own (fresh stack).
        // SAFETY: a plain tail call; it only returns when the slot is empty.
        unsafe { TAIL_CALLS.tail_call(ctx, TAIL_ICMP) };
        return Err(Reason::DropTailCallMissing);
    }
    // One array read rules out almost all traffic that is not for a service.
    // A second probe finds port-0 (all ports) services of the VIP.
    let port_service = filter_hit(&p.dst, p.dport_be, p.proto);
    if !port_service && !filter_hit(&p.dst, 0, p.proto) {
        return Err(Reason::PassNotService);
    }
    let fkey = FlowKey {
        src: p.src,
        dst: p.dst,
        sport_be: p.sport_be,
        dport_be: p.dport_be,
        proto: p.proto,
        family: p.family,
        _pad: [0; 2],
    };
    // A coarse clock is plenty for timeouts counted in seconds, and much cheaper.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // An established flow needs no service lookup: its entry names the service.
    let (service_id, backend_id, backend, new_conn) = match lookup_conn(&fkey, &p, now) {
        Some((svc, id, b)) => {
            count(Reason::ConnHit);
            (svc, id, b, false)
        }
        None => {
            let packed = new_flow(&fkey, &p, port_service, now);
            if packed & NEW_FLOW_ERR != 0 {
                return Err(Reason::from_index(packed as u32).unwrap_or(Reason::DropBadBackend));
            }
            let id = packed as u32;
            let b = BACKENDS.get(id).ok_or(Reason::DropBadBackend)?;
            ((packed >> 32) as u32, id, b, true)
        }
    };
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    add_stats(&SERVICE_STATS, service_id, new_conn, bytes);
    add_stats(&BACKEND_STATS, backend_id, new_conn, bytes);
    forward(ctx, &p, None, backend_id, backend)
}

/// Set in new_flow's result when it carries a Reason instead of (service id, backend id).
const NEW_FLOW_ERR: u64 = 1 << 63;

/// The new-flow path (service lookup, persistence, scheduler table, connection entry) as a BPF
/// subprogram of its own: its locals get their own stack frame instead of crowding the fast
/// path's under the 512-byte limit. A subprogram returns one register: (service id << 32 |
/// backend id), or NEW_FLOW_ERR | reason.
#[inline(never)]
fn new_flow(fkey: &FlowKey, p: &Parsed, port_service: bool, now: u64) -> u64 {
    match new_flow_inline(fkey, p, port_service, now) {
        Ok((svc, id)) => (svc as u64) << 32 | id as u64,
        Err(reason) => NEW_FLOW_ERR | reason as u64,
    }
}

#[inline(always)]
fn new_flow_inline(
    fkey: &FlowKey,
    p: &Parsed,
    port_service: bool,
    now: u64,
) -> Result<(u32, u32), Reason> {
    let mut skey = ServiceKey {
        addr: p.dst,
        port_be: p.dport_be,
        proto: p.proto,
        family: p.family,
    };
    // SAFETY: values are replaced, never written in place (BPF_F_NO_PREALLOC).
    let svc = match port_service
        .then(|| unsafe { SERVICES.get(skey) })
        .flatten()
    {
        Some(svc) => svc,
        None => {
            skey.port_be = 0;
            // SAFETY: as above.
            unsafe { SERVICES.get(skey) }.ok_or(Reason::PassNotService)?
        }
    };
    let (id, _) = schedule(svc, fkey, p, now)?;
    Ok((svc.id, id))
}

/// ICMP for a VIP, tail-called by the director: an error about a reply of a tracked flow goes to
/// that flow's real server (its TCP learns the path MTU or that the client is unreachable), as
/// IPVS relays them; any other ICMP is the kernel's.
#[xdp]
pub fn xvs_icmp(ctx: XdpContext) -> u32 {
    verdict(&ctx, icmp_relay(&ctx))
}

#[inline(always)]
fn icmp_relay(ctx: &XdpContext) -> Result<Out, Reason> {
    let p = parse(ctx)?;
    let key = icmp::quoted_flow(ctx, &p).ok_or(Reason::PassIcmp)?;
    // SAFETY: read-only use of the entry for this run.
    let e = unsafe { CONNS.get(key) }.ok_or(Reason::PassIcmp)?;
    let backend = BACKENDS.get(e.backend).ok_or(Reason::PassIcmp)?;
    if backend.generation != e.generation {
        return Err(Reason::PassIcmp);
    }
    count(Reason::IcmpErrorForwarded);
    forward(ctx, &p, Some(&key), e.backend, backend)
}

#[inline(always)]
fn filter_hit(addr: &[u8; 16], port_be: u16, proto: u8) -> bool {
    let bit = filter_bit(addr, port_be, proto);
    match SERVICE_FILTER.get(bit >> 6) {
        Some(word) => word & (1u64 << (bit & 63)) != 0,
        None => false,
    }
}

/// A live entry for this flow whose real server still exists: (service, backend id, backend).
/// Updates the entry's state and clock, writing only what changed.
#[inline(always)]
fn lookup_conn(key: &FlowKey, p: &Parsed, now: u64) -> Option<(u32, u32, &'static Backend)> {
    let e = CONNS.get_ptr_mut(key)?;
    // SAFETY: the entry stays valid for this program run; racing CPUs write the same fields
    // with equivalent values, which is harmless.
    let e = unsafe { &mut *e };
    let state = ConnState::from_u8(e.state);
    let cfg = CONFIG.get(0)?;
    let timeout = match state {
        ConnState::Udp => cfg.udp_timeout_ns,
        ConnState::SynRecv => cfg.tcp_syn_timeout_ns,
        ConnState::Established => cfg.tcp_timeout_ns,
        ConnState::FinWait => cfg.tcp_fin_timeout_ns,
        ConnState::Close => cfg.tcp_close_timeout_ns,
    };
    let backend = BACKENDS.get(e.backend)?;
    let syn_only = p.tcp_flags & (tcp_flag::SYN | tcp_flag::ACK) == tcp_flag::SYN;
    // Expired, the real server was removed, or a new SYN on a closing entry: schedule afresh.
    if now.saturating_sub(e.last_seen_ns) > timeout
        || backend.generation != e.generation
        || (syn_only && matches!(state, ConnState::FinWait | ConnState::Close))
    {
        count(Reason::ConnRescheduled);
        return None;
    }
    if e.last_seen_ns != now {
        e.last_seen_ns = now;
    }
    if p.proto == PROTO_TCP {
        let next = next_tcp_state(state, p.tcp_flags) as u8;
        if next != e.state {
            e.state = next;
        }
    }
    Some((e.service, e.backend, backend))
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

/// Picks a real server for a new flow (persistence template first, then the service's
/// scheduler table) and records the choice.
#[inline(always)]
fn schedule(
    svc: &ServiceValue,
    key: &FlowKey,
    p: &Parsed,
    now: u64,
) -> Result<(u32, &'static Backend), Reason> {
    // Only a persistent service pays for masking the client address.
    let pkey = (svc.flags & service_flags::PERSISTENT != 0).then(|| PersistKey {
        client: mask_addr(&p.src, svc.persist_prefix),
        service: svc.id,
        family: p.family,
        _pad: [0; 3],
    });
    let (id, backend) = match pkey.as_ref().and_then(|k| template(k, svc, now)) {
        Some(found) => found,
        None => {
            let (id, backend) = pick(svc, p)?;
            if let Some(pkey) = &pkey {
                let entry = PersistEntry {
                    backend: id,
                    generation: backend.generation,
                    last_seen_ns: now,
                };
                if PERSIST.insert(pkey, entry, 0).is_err() {
                    count(Reason::PersistInsertFailed);
                } else {
                    count(Reason::PersistNew);
                }
            }
            (id, backend)
        }
    };
    let state = if p.proto == PROTO_TCP {
        next_tcp_state(ConnState::SynRecv, p.tcp_flags)
    } else {
        ConnState::Udp
    };
    let entry = ConnEntry {
        backend: id,
        generation: backend.generation,
        service: svc.id,
        state: state as u8,
        _pad: [0; 3],
        last_seen_ns: now,
    };
    if CONNS.insert(key, entry, 0).is_err() {
        count(Reason::ConnInsertFailed);
    }
    count(Reason::ConnNew);
    Ok((id, backend))
}

/// The client network's live template: its real server still exists (a quiesced one still
/// counts, as in IPVS) and the template has not expired. Refreshes the template's clock.
#[inline(always)]
fn template(pkey: &PersistKey, svc: &ServiceValue, now: u64) -> Option<(u32, &'static Backend)> {
    let t = PERSIST.get_ptr_mut(pkey)?;
    // SAFETY: valid for this run; racing CPUs write equivalent values.
    let t = unsafe { &mut *t };
    let backend = BACKENDS.get(t.backend)?;
    if backend.generation != t.generation
        || now.saturating_sub(t.last_seen_ns) > svc.persist_timeout_s as u64 * 1_000_000_000
    {
        return None;
    }
    t.last_seen_ns = now;
    count(Reason::PersistHit);
    Some((t.backend, backend))
}

/// The scheduler table's choice for a new flow: the next slot of a sequence, or the slot the
/// flow hashes to.
#[inline(always)]
fn pick(svc: &ServiceValue, p: &Parsed) -> Result<(u32, &'static Backend), Reason> {
    let len = svc.table_len;
    if len == 0 {
        return Err(Reason::DropNoBackend);
    }
    let pos = match svc.table_kind {
        table_kind::SEQUENCE => {
            // One cursor shared by all CPUs (as IPVS's per-service scheduler state): the
            // sequence is handed out exactly in order however flows spread over CPUs, which a
            // load-aware plan needs. Only new flows touch it.
            let cursor = SEQ_CURSOR
                .get_ptr_mut(svc.id)
                .ok_or(Reason::DropNoBackend)?;
            // SAFETY: a valid, aligned u64 inside the map value for the program's lifetime.
            // (core's AtomicU64::fetch_add is missing on a target without CAS; the intrinsic
            // lowers to BPF's atomic fetch-and-add. SeqCst, because this LLVM lowers a relaxed
            // one to a plain XADD and then reads the old value from the wrong register.)
            let n: u64 = unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(cursor, 1) };
            (n % len as u64) as u32
        }
        table_kind::HASH_SRC => flow_hash(&p.src, 0) % len,
        table_kind::HASH_SRC_PORT => flow_hash(&p.src, p.sport_be) % len,
        _ => flow_hash(&p.dst, 0) % len,
    };
    let id = *SCHED_SLOTS
        .get(svc.table_off.wrapping_add(pos))
        .ok_or(Reason::DropBadBackend)?;
    if id == NO_BACKEND {
        return Err(Reason::DropNoBackend);
    }
    let backend = BACKENDS.get(id).ok_or(Reason::DropBadBackend)?;
    if backend.generation == 0 {
        return Err(Reason::DropBadBackend);
    }
    Ok((id, backend))
}

/// Sends the frame toward the real server: DR rewrites the Ethernet header, TUN encapsulates
/// (or, when the result would not fit the path, answers the client with ICMP too-big). `key` is
/// the flow when it is not the packet's own (an ICMP error quoting it).
#[inline(always)]
fn forward(
    ctx: &XdpContext,
    p: &Parsed,
    key: Option<&FlowKey>,
    backend_id: u32,
    backend: &Backend,
) -> Result<Out, Reason> {
    if backend.fwd == fwd::DR {
        let eth = ptr_at::<[u8; 12]>(ctx, 0).ok_or(Reason::DropTruncatedL2)?;
        // SAFETY: bounds checked by ptr_at.
        let eth = unsafe { &mut *eth };
        // The frame was addressed to us: our MAC becomes the source, the real server's the target.
        let (dst, src) = eth.split_at_mut(6);
        src.copy_from_slice(dst);
        dst.copy_from_slice(&backend.mac);
        return Ok(Out::Tx(Reason::TxDr));
    }
    if backend.fwd != fwd::TUN_IPIP && backend.fwd != fwd::TUN_GUE {
        return Err(Reason::DropBadBackend);
    }
    // Encapsulation runs in a program of its own, reached by a tail call: it gets a fresh
    // 512-byte stack, which the fast path's frame leaves too little of.
    let job = TUNNEL_JOB
        .get_ptr_mut(0)
        .ok_or(Reason::DropTailCallMissing)?;
    // SAFETY: per-CPU slot, no concurrent writer; the tail call runs on this CPU.
    // Written field by field, in place: a TunnelJob built on the stack would not fit there.
    let job = unsafe { &mut *job };
    job.backend = backend_id;
    job.flags = match key {
        Some(k) => {
            job.hash = tuple_hash(&k.src, &k.dst, k.sport_be, k.dport_be, k.proto);
            tunnel_job_flags::HASH_SET
        }
        None => 0,
    };
    job.sport_be = p.sport_be;
    job.dport_be = p.dport_be;
    job.l3_off = p.l3_off as u16;
    job.l4_off = p.l4_off as u16;
    job.tos = p.tos;
    job.family = p.family;
    job.proto = p.proto;
    job.src = p.src;
    job.dst = p.dst;
    // SAFETY: a plain tail call; it only returns when the slot is empty.
    unsafe { TAIL_CALLS.tail_call(ctx, TAIL_TUNNEL) };
    Err(Reason::DropTailCallMissing)
}

/// TUN forwarding, tail-called by the director with the job in TUNNEL_JOB: encapsulates toward
/// the backend, or answers the client with ICMP too-big when the result would not fit the path.
#[xdp]
pub fn xvs_tunnel(ctx: XdpContext) -> u32 {
    verdict(&ctx, tunnel_job(&ctx))
}

#[inline(always)]
fn tunnel_job(ctx: &XdpContext) -> Result<Out, Reason> {
    let job = TUNNEL_JOB.get(0).ok_or(Reason::DropTailCallMissing)?;
    let backend = BACKENDS.get(job.backend).ok_or(Reason::DropBadBackend)?;
    let cfg = CONFIG.get(0).ok_or(Reason::DropBadBackend)?;
    // Offsets the verifier can bound: L2 is 14 or 18 bytes, L3 headers at most 60.
    let p = Parsed {
        l3_off: if job.l3_off == 18 { 18 } else { 14 },
        l4_off: (job.l4_off & 0x7f) as usize,
        tos: job.tos,
        family: job.family,
        proto: job.proto,
        src: job.src,
        dst: job.dst,
        sport_be: 0,
        dport_be: 0,
        tcp_flags: 0,
    };
    let hash = if job.flags & tunnel_job_flags::HASH_SET != 0 {
        job.hash
    } else {
        tuple_hash(&job.src, &job.dst, job.sport_be, job.dport_be, job.proto)
    };
    let (sent, zero_csum) = tunnel::encap(ctx, &p, backend, cfg, hash, job.backend)?;
    if zero_csum {
        count(Reason::TunZeroCsum);
    }
    match sent {
        Sent::Tx => Ok(Out::Tx(Reason::TxTunnel)),
        Sent::Redirect(ifindex) => Ok(Out::Redirect(ifindex)),
        Sent::TooBig(mtu) => {
            icmp::too_big(ctx, &p, mtu)?;
            Ok(Out::Tx(Reason::TxIcmpTooBig))
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
