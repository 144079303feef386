//! Types and pure logic shared by the xvs XDP programs (lb-ebpf) and the controller (lb-user).
//!
//! Every map key and value is `#[repr(C)]` with explicit padding and a compile-time size check, so the
//! kernel and userspace agree on the layout byte for byte. Addresses are 16 bytes: an IPv4 address
//! sits in the first four bytes and the rest are zero; `family` tells which. Ports are kept in network
//! byte order, as they appear in packets, so the data plane never swaps bytes.
#![no_std]

pub mod conn;
pub mod csum;
pub mod decap;
pub mod filter;
pub mod icmp64;
pub mod layout;
pub mod link;
pub mod maps;
pub mod martian;
pub mod reason;

pub use conn::{
    proof_owed, sync_event, with_proof_owed, ConnClass, ConnCounters, ConnEntry, ConnState,
    FlowKey, SyncEvent, PROOF_MASK, PROOF_NEW, STATE_MASK, SYNC_EVENTS_BYTES, SYNC_REFRESH_SHIFT,
};
pub use layout::{MapLayout, Meta, LAYOUT_VERSION};
pub use link::{LinkMacs, LINK_MAC_SLOTS};
pub use maps::{
    backend_flags, config_flags, flow_hash, fwd, laddr_key, mask_addr, nat_job,
    nat_reply_filter_proto, prefix_masks, service_flags, table_kind, tunnel_job_flags, tuple_hash,
    Backend, DataplaneConfig, FullNatAudit, LocalAddr, NatJob, NatReply, PersistEntry, PersistKey,
    ReplyRoute, ServiceKey, ServiceValue, Stats, TunRoute, TunnelJob, FULLNAT_AUDIT_BYTES,
    FULLNAT_PROBES, MAX_LADDR_SLOTS, NO_BACKEND, REPLY_ROUTE_SLOTS, TUN_ROUTE_SLOTS,
    TUN_ROUTE_TTL_NS,
};
pub use martian::martian_source;
pub use reason::Reason;

/// Address family tag for IPv4 in keys and values.
pub const FAMILY_V4: u8 = 4;
/// Address family tag for IPv6 in keys and values.
pub const FAMILY_V6: u8 = 6;

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// IP protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;
/// IP protocol number of ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;
/// IP protocol number of IPv4 in IP (IPIP, 4in6).
pub const PROTO_IPIP: u8 = 4;
/// IP protocol number of IPv6 in IP (6in4, IP6IP6).
pub const PROTO_IPV6: u8 = 41;

/// Most virtual services the data plane holds (service ids index per-service arrays).
pub const MAX_SERVICES: u32 = 65536;
/// Most real-server slots (one per real server per service); ids index per-backend arrays.
pub const MAX_BACKENDS: u32 = 65536;
/// Default size of the scheduler slot array shared by all services (u32 backend ids).
pub const DEFAULT_SCHED_SLOTS: u32 = 1 << 22;
/// Default persistence-template capacity (LRU).
pub const DEFAULT_PERSIST_ENTRIES: u32 = 1 << 18;
/// Default connection-table capacity (LRU: the least recently used entry makes room when full).
pub const DEFAULT_CONN_ENTRIES: u32 = 1 << 20;
/// Largest connection table xvsd accepts (`--conn-table-size`): 32M flows, about 4 GiB of kernel
/// memory (BENCHMARKS.md has the kernel-reported figure).
pub const MAX_CONN_ENTRIES: u32 = 1 << 25;
/// Smallest connection table xvsd accepts.
pub const MIN_CONN_ENTRIES: u32 = 1 << 10;
/// Largest scheduler slot array xvsd accepts (`--sched-slots`): 64M slots (512 MiB as the kernel
/// accounts it, BENCHMARKS.md), room for a thousand full-size Maglev tables.
pub const MAX_SCHED_SLOTS: u32 = 1 << 26;

/// Names of the programs and maps in the director object, shared so userspace cannot misspell them.
pub mod names {
    /// The director's XDP program.
    pub const PROG_DIRECTOR: &str = "xvs_director";
    /// The tunnel program the director tail-calls for TUN real servers.
    pub const PROG_TUNNEL: &str = "xvs_tunnel";
    /// The ICMP program the director tail-calls for ICMP to a VIP.
    pub const PROG_ICMP: &str = "xvs_icmp";
    /// The NAT program the director tail-calls for NAT real servers and their replies.
    pub const PROG_NAT: &str = "xvs_nat";
    /// The program xvs_nat tail-calls for ICMP errors about NAT connections.
    pub const PROG_NAT_ICMP: &str = "xvs_nat_icmp";
    /// Tail-call table: TAIL_TUNNEL, TAIL_ICMP, TAIL_NAT, TAIL_NAT_ICMP.
    pub const MAP_TAIL_CALLS: &str = "TAIL_CALLS";
    /// Per-CPU hand-over from the director to the NAT program.
    pub const MAP_NAT_JOB: &str = "NAT_JOB";
    /// NAT and FULLNAT replies' way back to their connection (lb_common::NatReply).
    pub const MAP_NAT_REPLIES: &str = "NAT_REPLIES";
    /// FULLNAT services' local addresses: laddr_key(service, slot) -> lb_common::LocalAddr.
    pub const MAP_LADDRS: &str = "LADDRS";
    /// Per-CPU cursor per service into its FULLNAT (local address, port) candidates.
    pub const MAP_FULLNAT_CURSOR: &str = "FNAT_CURSOR";
    /// New FULLNAT connections for xvsd's audit log (ring buffer of lb_common::FullNatAudit).
    pub const MAP_FULLNAT_AUDIT: &str = "FNAT_AUDIT";
    /// Connections recorded or changed, for the master sync daemon (ring buffer of
    /// lb_common::SyncEvent); never pinned (each load has its own, nothing in it outlives xvsd).
    pub const MAP_SYNC_EVENTS: &str = "SYNC_EVENTS";
    /// Per-CPU count per service of new FULLNAT connections refused for want of a port.
    pub const MAP_FULLNAT_EXHAUSTED: &str = "FNAT_EXHAUSTED";
    /// Per-CPU count per service of TCP packets that arrived mid-flow for a connection the
    /// table did not have (Reason::ConnMidflowMiss, per service).
    pub const MAP_MIDFLOW_MISS: &str = "MIDFLOW_MISS";
    /// Per-CPU hand-over from the director to the tunnel program.
    pub const MAP_TUNNEL_JOB: &str = "TUNNEL_JOB";
    /// Per-CPU cache of NAT and FULLNAT replies' routes to clients (lb_common::ReplyRoute);
    /// never pinned.
    pub const MAP_REPLY_ROUTES: &str = "REPLY_ROUTES";
    /// Per-CPU scratch of the NAT ICMP-error translation; never pinned.
    pub const MAP_ICMP_SCRATCH: &str = "ICMP_SCRATCH";
    /// Per-CPU cache of tunnelled backends' routes (lb_common::TunRoute); never pinned.
    pub const MAP_TUN_ROUTES: &str = "TUN_ROUTES";
    /// The attached interfaces' station addresses (lb_common::LinkMacs by link_slot(ifindex));
    /// never pinned (each xvsd fills its own load's).
    pub const MAP_LINK_MACS: &str = "LINK_MACS";
    /// A program that passes every frame (for veth peers of XDP_TX interfaces).
    pub const PROG_PASS: &str = "xvs_pass";
    /// The benchmark floor: bounds check and XDP_TX.
    pub const PROG_FLOOR_TX: &str = "xvs_floor_tx";
    /// The benchmark's connection-table floor (tests/ebpf): an LRU hash of CONNS' sizes alone.
    pub const PROG_LRU_FLOOR: &str = "xvs_lru_floor";
    /// The benchmark's encapsulation floor (tests/ebpf): an IPIP header pushed, nothing else.
    pub const PROG_IPIP_FLOOR: &str = "xvs_ipip_floor";
    /// Counts and drops frames (live-traffic benchmark sink).
    pub const PROG_SINK: &str = "xvs_sink";
    /// A live generator that stamps its template over every frame, then XDP_TX.
    pub const PROG_GEN_STAMP: &str = "xvs_gen_stamp";
    /// The template xvs_gen_stamp writes (54 bytes: Ethernet, IPv4, TCP).
    pub const MAP_GEN_TEMPLATE: &str = "GEN_TEMPLATE";
    /// The sink's per-CPU counter.
    pub const MAP_SINK_COUNT: &str = "SINK_COUNT";
    /// Virtual services: ServiceKey -> ServiceValue.
    pub const MAP_SERVICES: &str = "SERVICES";
    /// Real-server slots: id -> Backend.
    pub const MAP_BACKENDS: &str = "BACKENDS";
    /// Scheduler slots: u32 backend ids, one region per service.
    pub const MAP_SCHED_SLOTS: &str = "SCHED_SLOTS";
    /// Scheduler-sequence cursor per service, shared by all CPUs.
    pub const MAP_SEQ_CURSOR: &str = "SEQ_CURSOR";
    /// Connection table: FlowKey -> ConnEntry.
    pub const MAP_CONNS: &str = "CONNS";
    /// Persistence templates: PersistKey -> PersistEntry.
    pub const MAP_PERSIST: &str = "PERSIST";
    /// Per-CPU stats per service.
    pub const MAP_SERVICE_STATS: &str = "SERVICE_STATS";
    /// Per-CPU stats per backend.
    pub const MAP_BACKEND_STATS: &str = "BACKEND_STATS";
    /// Per-CPU live connections per backend slot by class (lb_common::ConnCounters), kept by
    /// the data plane as entries change.
    pub const MAP_CONN_COUNTS: &str = "CONN_COUNTS";
    /// xvsd's own part of each backend slot's live connections (lb_common::ConnCounters): the
    /// entries its sweep removed, and the corrections of its re-baselining; never written by
    /// the data plane.
    pub const MAP_CONN_ADJUST: &str = "CONN_ADJUST";
    /// Per-CPU counters per Reason.
    pub const MAP_REASONS: &str = "REASONS";
    /// Global data-plane configuration (one entry).
    pub const MAP_CONFIG: &str = "CONFIG";
    /// Bitmap that rules out non-service traffic before any hash lookup.
    pub const MAP_SERVICE_FILTER: &str = "SERVICE_FILTER";
    /// The layout the maps were created with (one `layout::Meta`), for adoption after a restart.
    pub const MAP_META: &str = "META";
}

/// Index of the tunnel program in TAIL_CALLS.
pub const TAIL_TUNNEL: u32 = 0;
/// Index of the ICMP program in TAIL_CALLS.
pub const TAIL_ICMP: u32 = 1;
/// Index of the NAT program in TAIL_CALLS.
pub const TAIL_NAT: u32 = 2;
/// Index of the NAT ICMP-error program in TAIL_CALLS.
pub const TAIL_NAT_ICMP: u32 = 3;
/// Size of TAIL_CALLS: room for programs later builds add without changing the pinned layout.
pub const TAIL_SLOTS: u32 = 8;

/// Copies an IPv4 address (network order bytes) into the 16-byte form used in keys.
#[inline(always)]
pub const fn addr_from_v4(octets: [u8; 4]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = octets[0];
    a[1] = octets[1];
    a[2] = octets[2];
    a[3] = octets[3];
    a
}
