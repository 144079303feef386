//! The director's maps and their typed accessors: every map static of the director object is
//! declared here, and every `unsafe` a map needs (hash-map reads, writes through a value
//! pointer, the tail call, the shared cursor's atomic add) is here with its reason.
//!
//! The names, types, key and value sizes, capacities and flags are part of xvsd's pinned-map
//! layout (lb_common::layout): a change here is a LAYOUT_VERSION change there.

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
    programs::XdpContext,
};
use core::intrinsics::{atomic_xadd, AtomicOrdering};
use lb_common::{
    filter::FILTER_WORDS, reason::REASON_SLOTS, Backend, ConnClass, ConnCounters, ConnEntry,
    DataplaneConfig, FlowKey, FullNatAudit, LinkMacs, LocalAddr, Meta, NatJob, NatReply,
    PersistEntry, PersistKey, Reason, ReplyRoute, ServiceKey, ServiceValue, Stats, SyncEvent,
    TunRoute, TunnelJob, DEFAULT_CONN_ENTRIES, DEFAULT_PERSIST_ENTRIES, DEFAULT_SCHED_SLOTS,
    FULLNAT_AUDIT_BYTES, LINK_MAC_SLOTS, MAX_BACKENDS, MAX_SERVICES, REPLY_ROUTE_SLOTS, STATE_MASK,
    SYNC_EVENTS_BYTES, TAIL_SLOTS, TUN_ROUTE_SLOTS,
};
use lb_ebpf::nat::IcmpRewrite;

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
/// Live connections per backend slot by class, per CPU (lb_common::ConnCounters): written only
/// when an entry is recorded, changes class, or is removed dead, never on an established hit.
#[map]
static CONN_COUNTS: PerCpuArray<ConnCounters> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);
/// xvsd's part of the same counts (its sweep's removals, its corrections); never written here,
/// declared so that it is created and pinned with the rest.
#[map]
static CONN_ADJUST: Array<ConnCounters> = Array::with_max_entries(MAX_BACKENDS, 0);
#[map]
static REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(REASON_SLOTS, 0);
#[map]
static CONFIG: Array<DataplaneConfig> = Array::with_max_entries(1, 0);
#[map]
static SERVICE_FILTER: Array<u64> = Array::with_max_entries(FILTER_WORDS, 0);
#[map]
static TAIL_CALLS: ProgramArray = ProgramArray::with_max_entries(TAIL_SLOTS, 0);
#[map]
static TUNNEL_JOB: PerCpuArray<TunnelJob> = PerCpuArray::with_max_entries(1, 0);
#[map]
static NAT_JOB: PerCpuArray<NatJob> = PerCpuArray::with_max_entries(1, 0);
/// A NAT reply's way back to its connection: room for one per connection (`xvsd
/// --nat-table-size`, by default as many as CONNS). Preallocated: an insert on demand
/// (BPF_F_NO_PREALLOC) allocated memory for every new NAT connection, about 480 ns of its
/// cost. xvsd removes the entries whose connection is gone (at the end of each cycle of its
/// sweep of CONNS).
#[map]
static NAT_REPLIES: HashMap<FlowKey, NatReply> = HashMap::with_max_entries(DEFAULT_CONN_ENTRIES, 0);
/// FULLNAT services' local addresses (lb_common::laddr_key); replaced whole, never written in
/// place.
#[map]
static LADDRS: HashMap<u32, LocalAddr> = HashMap::with_max_entries(MAX_SERVICES, BPF_F_NO_PREALLOC);
/// Each CPU's cursor per service into its FULLNAT candidates: CPUs walk their own sequence, so
/// allocating a port takes no lock and shares no cache line.
#[map]
static FNAT_CURSOR: PerCpuArray<u32> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);
/// New FULLNAT connections refused for want of a port, per CPU per service (xvsd logs the
/// service and its pool when it grows).
#[map]
static FNAT_EXHAUSTED: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);
/// TCP packets that arrived mid-flow for a connection the table did not have, per CPU per
/// service (Reason::ConnMidflowMiss, per service). Written only on the new-flow path.
#[map]
static MIDFLOW_MISS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);
/// New FULLNAT connections reported to xvsd's audit log (`--audit-fullnat`).
#[map]
static FNAT_AUDIT: RingBuf = RingBuf::with_byte_size(FULLNAT_AUDIT_BYTES, 0);
/// Connections recorded or changed, for xvsd's master sync daemon (only while CONFIG's
/// SYNC_MASTER flag is set). Never pinned: each load has its own.
#[map]
static SYNC_EVENTS: RingBuf = RingBuf::with_byte_size(SYNC_EVENTS_BYTES, 0);
/// Each CPU's last FIB answer per client of NAT and FULLNAT replies (lb_common::ReplyRoute).
#[map]
static REPLY_ROUTES: PerCpuArray<ReplyRoute> = PerCpuArray::with_max_entries(REPLY_ROUTE_SLOTS, 0);
/// Each CPU's plan for the ICMP error it translates (xvs_nat_icmp): off the stack.
#[map]
static ICMP_SCRATCH: PerCpuArray<IcmpRewrite> = PerCpuArray::with_max_entries(1, 0);
/// Each CPU's last FIB answer per tunnelled backend (lb_common::TunRoute).
#[map]
static TUN_ROUTES: PerCpuArray<TunRoute> = PerCpuArray::with_max_entries(TUN_ROUTE_SLOTS, 0);

/// The attached interfaces' station addresses, by lb_common::link::link_slot(ifindex). Never
/// pinned: each xvsd fills its own load's (an empty slot filters nothing).
#[map]
static LINK_MACS: Array<LinkMacs> = Array::with_max_entries(LINK_MAC_SLOTS, 0);

// Read by the controller only: the layout the maps were created with (checked before a
// restarted or upgraded controller adopts pinned maps).
#[map]
static META: Array<Meta> = Array::with_max_entries(1, 0);

/// Counts one outcome in this CPU's REASONS slot.
#[inline(always)]
pub fn count(reason: Reason) {
    if let Some(c) = REASONS.get_ptr_mut(reason as u32) {
        // SAFETY: this CPU's slot; nothing else runs on this CPU during the program.
        unsafe { *c += 1 };
    }
}

/// Adds `n` (1, or u64::MAX for -1) to backend slot `backend`'s live connections of `class`
/// on this CPU.
#[inline(always)]
pub fn count_conn(backend: u32, class: ConnClass, n: u64) {
    if let Some(c) = CONN_COUNTS.get_ptr_mut(backend) {
        // SAFETY: this CPU's slot, as in `count`.
        unsafe { (*c).add(class, n) };
    }
}

/// Which per-CPU traffic counters a packet is added to.
pub enum StatsOf {
    /// SERVICE_STATS, by service id.
    Service,
    /// BACKEND_STATS, by backend id.
    Backend,
}

/// Adds a packet of `bytes` (and a connection when `new_conn`) to a service's or backend's
/// counters on this CPU.
#[inline(always)]
pub fn add_stats(of: StatsOf, index: u32, new_conn: bool, bytes: u64) {
    let map = match of {
        StatsOf::Service => &SERVICE_STATS,
        StatsOf::Backend => &BACKEND_STATS,
    };
    if let Some(s) = map.get_ptr_mut(index) {
        // SAFETY: this CPU's slot, as in `count`.
        let s = unsafe { &mut *s };
        s.conns += new_conn as u64;
        s.packets += 1;
        s.bytes += bytes;
    }
}

/// Adds a reply of `bytes` to a service's and a backend's out counters on this CPU.
#[inline(always)]
pub fn add_out_stats(service: u32, backend: u32, bytes: u64) {
    for (map, index) in [(&SERVICE_STATS, service), (&BACKEND_STATS, backend)] {
        if let Some(s) = map.get_ptr_mut(index) {
            // SAFETY: this CPU's slot, as in `count`.
            let s = unsafe { &mut *s };
            s.out_packets += 1;
            s.out_bytes += bytes;
        }
    }
}

/// The data plane's settings (timeouts, tunnel sources, flags).
#[inline(always)]
pub fn config() -> Option<&'static DataplaneConfig> {
    CONFIG.get(0)
}

/// Word `index` of the service filter bitmap (lb_common::filter).
#[inline(always)]
pub fn filter_word(index: u32) -> Option<u64> {
    SERVICE_FILTER.get(index).copied()
}

/// A virtual service.
#[inline(always)]
pub fn service(key: &ServiceKey) -> Option<&'static ServiceValue> {
    // SAFETY: values are replaced, never written in place (BPF_F_NO_PREALLOC keeps a replaced
    // value alive until the program run ends).
    unsafe { SERVICES.get(key) }
}

/// A backend slot (generation 0: empty).
#[inline(always)]
pub fn backend(id: u32) -> Option<&'static Backend> {
    BACKENDS.get(id)
}

/// The station addresses of the slot interface `ifindex` falls in (maybe another's).
#[inline(always)]
pub fn link_macs(ifindex: u32) -> Option<&'static LinkMacs> {
    LINK_MACS.get(lb_common::link::link_slot(ifindex))
}

/// Slot `index` of the scheduler tables.
#[inline(always)]
pub fn sched_slot(index: u32) -> Option<u32> {
    SCHED_SLOTS.get(index).copied()
}

/// Takes the next position of a service's sequence: one cursor shared by all CPUs (as IPVS's
/// per-service scheduler state), so the sequence is handed out exactly in order however flows
/// spread over CPUs, which a load-aware plan needs. Only new flows touch it.
#[inline(always)]
pub fn seq_next(service: u32) -> Option<u64> {
    let cursor = SEQ_CURSOR.get_ptr_mut(service)?;
    // SAFETY: a valid, aligned u64 inside the map value for the program's lifetime.
    // (core's AtomicU64::fetch_add is missing on a target without CAS; the intrinsic lowers to
    // BPF's atomic fetch-and-add. SeqCst, because this LLVM lowers a relaxed one to a plain
    // XADD and then reads the old value from the wrong register.)
    Some(unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(cursor, 1) })
}

/// A connection entry, read-only.
#[inline(always)]
pub fn conn(key: &FlowKey) -> Option<&'static ConnEntry> {
    // SAFETY: only read during this run; an LRU eviction or a racing update at worst shows an
    // older or newer copy of plain integers.
    unsafe { CONNS.get(key) }
}

/// Runs `f` on a connection entry in place. Racing CPUs may update the same entry: they write
/// equivalent values (the clock, the TCP state), which is harmless.
#[inline(always)]
pub fn conn_update<R>(key: &FlowKey, f: impl FnOnce(&mut ConnEntry) -> R) -> Option<R> {
    let e = CONNS.get_ptr_mut(key)?;
    // SAFETY: the entry stays valid for this program run; the reference does not leave `f`.
    Some(f(unsafe { &mut *e }))
}

/// Records a connection (Err when the kernel refuses it).
#[inline(always)]
pub fn conn_insert(key: &FlowKey, entry: &ConnEntry) -> Result<(), i32> {
    CONNS.insert(key, entry, 0)
}

/// Runs `f` on a persistence template in place (racing CPUs write equivalent values).
#[inline(always)]
pub fn persist_update<R>(key: &PersistKey, f: impl FnOnce(&mut PersistEntry) -> R) -> Option<R> {
    let t = PERSIST.get_ptr_mut(key)?;
    // SAFETY: as in `conn_update`.
    Some(f(unsafe { &mut *t }))
}

/// Records a persistence template (Err when the kernel refuses it).
#[inline(always)]
pub fn persist_insert(key: &PersistKey, entry: &PersistEntry) -> Result<(), i32> {
    PERSIST.insert(key, entry, 0)
}

/// This CPU's tunnel job, the hand-off from the director to xvs_tunnel, to be written in place.
/// Taken once per program run, so the reference is the only one.
#[inline(always)]
pub fn tunnel_job_mut() -> Option<&'static mut TunnelJob> {
    let job = TUNNEL_JOB.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot, valid for the program's lifetime; nothing else runs on this CPU
    // during the program (the tail call that reads it runs after this one, on this CPU), and
    // the one caller (forward::tun::hand_off) takes it once per run.
    Some(unsafe { &mut *job })
}

/// This CPU's tunnel job, as the director left it.
#[inline(always)]
pub fn tunnel_job() -> Option<&'static TunnelJob> {
    TUNNEL_JOB.get(0)
}

/// This CPU's NAT job, the hand-off from the director to xvs_nat, to be written in place.
/// Taken once per program run, so the reference is the only one.
#[inline(always)]
pub fn nat_job_mut() -> Option<&'static mut NatJob> {
    let job = NAT_JOB.get_ptr_mut(0)?;
    // SAFETY: as in `tunnel_job_mut`: this CPU's slot, taken once per run by
    // forward::nat's hand-offs.
    Some(unsafe { &mut *job })
}

/// This CPU's NAT job, as the director left it.
#[inline(always)]
pub fn nat_job() -> Option<&'static NatJob> {
    NAT_JOB.get(0)
}

/// The way back of a NAT reply (keyed by the reply's flow: real server -> client).
#[inline(always)]
pub fn nat_reply(key: &FlowKey) -> Option<&'static NatReply> {
    // SAFETY: entries are replaced whole by inserts, never written in place. The map is
    // preallocated, so an element xvsd deletes may be reused at once by another CPU's insert: a
    // racing read at worst shows another connection's plain integers, and the reply path
    // translates only when the connection they name is live on the backend they name
    // (conntrack::reply_seen).
    unsafe { NAT_REPLIES.get(key) }
}

/// Records a NAT connection's way back (Err when the kernel refuses it).
#[inline(always)]
pub fn nat_reply_insert(key: &FlowKey, reply: &NatReply) -> Result<(), i32> {
    NAT_REPLIES.insert(key, reply, 0)
}

/// Records a FULLNAT connection's way back only if that reply flow is not taken: the kernel
/// checks and inserts atomically, so two CPUs can never be handed the same (local address,
/// port) toward one real server. Err when taken (or the map is full).
#[inline(always)]
pub fn nat_reply_claim(key: &FlowKey, reply: &NatReply) -> Result<(), i32> {
    NAT_REPLIES.insert(key, reply, BPF_NOEXIST as u64)
}

/// Removes a connection entry: true when this call removed it (so exactly one remover, here
/// or in xvsd's sweep, takes it off the live counts).
#[inline(always)]
pub fn conn_remove(key: &FlowKey) -> bool {
    CONNS.remove(key).is_ok()
}

/// A FULLNAT service's local address in slot `key` (lb_common::laddr_key).
#[inline(always)]
pub fn laddr(key: u32) -> Option<&'static LocalAddr> {
    // SAFETY: values are replaced whole, never written in place (as SERVICES).
    unsafe { LADDRS.get(key) }
}

/// This CPU's FULLNAT cursor of a service. Taken once per program run.
#[inline(always)]
pub fn fullnat_cursor(service: u32) -> Option<&'static mut u32> {
    let c = FNAT_CURSOR.get_ptr_mut(service)?;
    // SAFETY: this CPU's slot, valid for the program's lifetime; nothing else runs on this CPU
    // during the program, and the one caller (forward::nat's allocation) takes it once per run.
    Some(unsafe { &mut *c })
}

/// Counts a new FULLNAT connection of `service` refused for want of a port.
#[inline(always)]
pub fn count_fullnat_exhausted(service: u32) {
    if let Some(c) = FNAT_EXHAUSTED.get_ptr_mut(service) {
        // SAFETY: this CPU's slot, as in `count`.
        unsafe { *c += 1 };
    }
}

/// Counts a mid-flow TCP packet of `service` that found no live connection entry.
#[inline(always)]
pub fn count_midflow_miss(service: u32) {
    count(Reason::ConnMidflowMiss);
    if let Some(c) = MIDFLOW_MISS.get_ptr_mut(service) {
        // SAFETY: this CPU's slot, as in `count`.
        unsafe { *c += 1 };
    }
}

/// Reports a new FULLNAT connection to xvsd's audit log: `fill` writes the report in place in
/// the ring buffer. False when the buffer is full (xvsd fell behind).
#[inline(always)]
pub fn audit_fullnat(fill: impl FnOnce(&mut FullNatAudit)) -> bool {
    let Some(mut entry) = FNAT_AUDIT.reserve::<FullNatAudit>(0) else {
        return false;
    };
    // Zeroed first: the ring's memory is not cleared, and padding must not leak.
    fill(entry.write(FullNatAudit::default()));
    entry.submit(0);
    true
}

/// Reports connection `key` (entry `e`, in `state`) to the master sync daemon, `kind` being
/// one of lb_common::sync_event; a full ring buffer is counted (Reason::SyncEventLost) and the
/// report dropped: the packet goes on. Inlined, and written in place field by field, so it
/// adds almost nothing to its callers' frames: the deepest call chains are at the verifier's
/// limit, where a subprogram's frame of its own (rounded up to 32 bytes) does not fit.
#[inline(always)]
pub fn sync_report(key: &FlowKey, e: &ConnEntry, state: u8, kind: u8) {
    let Some(mut slot) = SYNC_EVENTS.reserve::<SyncEvent>(0) else {
        count(Reason::SyncEventLost);
        return;
    };
    let p = slot.as_mut_ptr();
    // SAFETY: `p` is the reserved, writable report, written in whole (every field, padding
    // included: the ring's memory is not cleared) before it is submitted.
    unsafe {
        core::ptr::addr_of_mut!((*p).key).write(*key);
        core::ptr::addr_of_mut!((*p).backend).write(e.backend);
        core::ptr::addr_of_mut!((*p).generation).write(e.generation);
        core::ptr::addr_of_mut!((*p).service).write(e.service);
        core::ptr::addr_of_mut!((*p).state).write(state & STATE_MASK);
        core::ptr::addr_of_mut!((*p).kind).write(kind);
        core::ptr::addr_of_mut!((*p)._pad).write([0; 2]);
    }
    slot.submit(0);
}

/// Whether a master sync daemon runs (CONFIG's SYNC_MASTER flag).
#[inline(always)]
pub fn sync_master() -> bool {
    config().is_some_and(|c| c.flags & lb_common::config_flags::SYNC_MASTER != 0)
}

/// This CPU's ICMP translation scratch. Written by the planning step and read by the rewrite,
/// one after the other in one program run.
#[inline(always)]
pub fn icmp_scratch() -> Option<&'static mut IcmpRewrite> {
    let t = ICMP_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot, valid for the program's lifetime; nothing else runs on this CPU
    // during the program, and its users (forward::nat's ICMP steps) run one after the other.
    Some(unsafe { &mut *t })
}

/// This CPU's cached route toward a client of NAT and FULLNAT replies, slot `slot`. Taken once
/// per program run.
#[inline(always)]
pub fn reply_route(slot: u32) -> Option<&'static mut ReplyRoute> {
    let r = REPLY_ROUTES.get_ptr_mut(slot)?;
    // SAFETY: this CPU's slot, valid for the program's lifetime; nothing else runs on this CPU
    // during the program, and the one caller (forward::nat's reply) takes it once per run.
    Some(unsafe { &mut *r })
}

/// This CPU's cached route for a tunnel backend slot. Taken once per program run (read, and
/// rewritten after a FIB lookup), so the reference is the only one.
#[inline(always)]
pub fn tun_route(slot: u32) -> Option<&'static mut TunRoute> {
    let r = TUN_ROUTES.get_ptr_mut(slot)?;
    // SAFETY: this CPU's slot, valid for the program's lifetime; nothing else runs on this CPU
    // during the program, and the one caller (forward::tun) takes it once per run.
    Some(unsafe { &mut *r })
}

/// Jumps to the program in tail-call slot `slot`; returns only when the slot is empty.
#[inline(always)]
pub fn tail_call(ctx: &XdpContext, slot: u32) {
    // SAFETY: a plain tail call; on success it never returns, on failure nothing changed.
    unsafe { TAIL_CALLS.tail_call(ctx, slot) }
}
