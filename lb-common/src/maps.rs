//! Keys and values of the service, backend, stats and configuration maps.

/// Looks a virtual service up: (family, protocol, VIP, port).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ServiceKey {
    /// VIP (IPv4 in the first four bytes).
    pub addr: [u8; 16],
    /// Port in network byte order.
    pub port_be: u16,
    /// IP protocol (PROTO_TCP / PROTO_UDP).
    pub proto: u8,
    /// FAMILY_V4 or FAMILY_V6.
    pub family: u8,
}
const _: () = assert!(size_of::<ServiceKey>() == 20);

/// How a service's scheduler table is applied to a new flow.
pub mod table_kind {
    /// Slots handed out in order by one shared cursor per service (rr, wrr, load-aware plans).
    pub const SEQUENCE: u8 = 0;
    /// Slot = flow_hash(client address) % len (sh, mh).
    pub const HASH_SRC: u8 = 1;
    /// Slot = flow_hash(client address, client port) % len (sh-port, mh-port).
    pub const HASH_SRC_PORT: u8 = 2;
    /// Slot = flow_hash(destination address) % len (dh, lblc, lblcr).
    pub const HASH_DST: u8 = 3;
}

/// A hash-table slot with no real server (new flows hashing there are dropped and counted).
pub const NO_BACKEND: u32 = u32::MAX;

/// ServiceValue::flags bits.
pub mod service_flags {
    /// Persistent service (`-p`): new connections of a client network stick to one server.
    pub const PERSISTENT: u32 = 1;
}

/// What the data plane needs to know about a service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceValue {
    /// Index into per-service arrays (stats, cursor) and persistence templates.
    pub id: u32,
    /// Service flags (see `service_flags`).
    pub flags: u32,
    /// First slot of this service's region in SCHED_SLOTS.
    pub table_off: u32,
    /// Number of slots in the region; 0 means no usable real server.
    pub table_len: u32,
    /// Persistence timeout, seconds (with service_flags::PERSISTENT).
    pub persist_timeout_s: u32,
    /// How the table is applied (see `table_kind`).
    pub table_kind: u8,
    /// Client prefix length grouped by persistence (`-M`): 0..=32 for IPv4, 0..=128 for IPv6.
    pub persist_prefix: u8,
    /// FULLNAT: slots 0..laddrs of the service's local addresses (LADDRS, `laddr_key`); a
    /// slot may be empty (an address deleted while others stay where they are).
    pub laddrs: u8,
    /// Explicit padding.
    pub _pad: u8,
}
const _: () = assert!(size_of::<ServiceValue>() == 24);

/// Key of a persistence template: the service and the client's masked address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PersistKey {
    /// Client address with the service's netmask applied.
    pub client: [u8; 16],
    /// Service id.
    pub service: u32,
    /// FAMILY_V4 or FAMILY_V6.
    pub family: u8,
    /// Explicit padding (zero: part of the hashed key).
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<PersistKey>() == 24);

/// A persistence template: which real server a client network is bound to, and since when idle.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PersistEntry {
    /// Backend slot.
    pub backend: u32,
    /// The slot's generation when bound.
    pub generation: u32,
    /// Last time a connection was placed or seen through this template (coarse ns clock).
    pub last_seen_ns: u64,
}
const _: () = assert!(size_of::<PersistEntry>() == 16);

/// Masks an address to its first `prefix` bits (IPv4 uses the first four bytes).
#[inline(always)]
pub fn mask_addr(addr: &[u8; 16], prefix: u8) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        let bits = prefix as i32 - (i as i32) * 8;
        out[i] = if bits >= 8 {
            addr[i]
        } else if bits <= 0 {
            0
        } else {
            addr[i] & (0xffu8 << (8 - bits))
        };
        i += 1;
    }
    out
}

/// What [`mask_addr`] does, for an address read as two native-order u64 words (its bytes in
/// memory order): the masks that keep its first `prefix` bits. The data plane masks in two
/// ANDs instead of sixteen byte steps.
#[inline(always)]
pub fn prefix_masks(prefix: u8) -> [u64; 2] {
    // Big-endian values (the address's first bit is the most significant), stored native.
    let keep = |bits: u32| match bits {
        0 => 0,
        b if b >= 64 => u64::MAX,
        b => u64::MAX << (64 - b),
    };
    let p = prefix as u32;
    [keep(p).to_be(), keep(p.saturating_sub(64)).to_be()]
}

/// The flow hash the data plane indexes hash tables with: over an address (four 32-bit words
/// as they lie in memory) and optionally a port. Cheap enough for the fast path and shared with
/// the controller so tests can predict a flow's slot.
#[inline(always)]
pub fn flow_hash(addr: &[u8; 16], port_be: u16) -> u32 {
    let w = |i: usize| u32::from_le_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    let mut h: u32 = 0x9e37_79b9;
    h = mix(h, w(0));
    h = mix(h, w(4));
    h = mix(h, w(8));
    h = mix(h, w(12));
    h = mix(h, port_be as u32);
    // murmur3's finaliser: every input bit reaches every output bit.
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// A hash of the whole 5-tuple: the outer GUE source port and IPv6 flow label of a tunnelled
/// flow, so the real server's NIC spreads tunnelled flows over its queues (and one flow stays
/// on one queue).
#[inline(always)]
pub fn tuple_hash(src: &[u8; 16], dst: &[u8; 16], sport_be: u16, dport_be: u16, proto: u8) -> u32 {
    let w = |a: &[u8; 16], i: usize| u32::from_le_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    let mut h: u32 = 0x9e37_79b9 ^ proto as u32;
    h = mix(h, w(src, 0));
    h = mix(h, w(src, 4));
    h = mix(h, w(src, 8));
    h = mix(h, w(src, 12));
    h = mix(h, w(dst, 0));
    h = mix(h, w(dst, 4));
    h = mix(h, w(dst, 8));
    h = mix(h, w(dst, 12));
    h = mix(h, (sport_be as u32) << 16 | dport_be as u32);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

/// How a backend is reached.
pub mod fwd {
    /// Direct routing: rewrite the Ethernet header only.
    pub const DR: u8 = 0;
    /// Tunnel, IP in IP (IPIP, IP6IP6, and the mixed 6in4 / 4in6): outer IP header to the real
    /// server, protocol 4 or 41 after the inner family.
    pub const TUN_IPIP: u8 = 1;
    /// Tunnel, GUE (variant 0, as IPVS): outer IP + UDP to `tun_port_be` + a 4-byte GUE header.
    pub const TUN_GUE: u8 = 2;
    /// NAT (masquerading): the destination becomes the real server's address and `port_be`
    /// (unless 0), and its replies, routed back through the director, get the VIP back.
    pub const NAT: u8 = 3;
    /// FULLNAT: the source becomes a local address and port of the service's pool and the
    /// destination the real server's; its replies (to the local address) get the VIP and the
    /// client back.
    pub const FULLNAT: u8 = 4;
}

/// Backend::flags bits.
pub mod backend_flags {
    /// GUE over IPv4: fill the outer UDP checksum (`--tun-csum`); over IPv6 it is always filled.
    pub const TUN_CSUM: u8 = 1;
}

/// One real server of one service, as the data plane forwards to it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    /// Real server address (IPv4 in the first four bytes).
    pub addr: [u8; 16],
    /// Next-hop MAC address (the real server's, in DR mode).
    pub mac: [u8; 6],
    /// Real server port, network byte order.
    pub port_be: u16,
    /// FAMILY_V4 or FAMILY_V6.
    pub family: u8,
    /// Forwarding method (see `fwd`).
    pub fwd: u8,
    /// Backend flags (see `backend_flags`).
    pub flags: u8,
    /// Explicit padding.
    pub _pad: u8,
    /// Changes each time the slot is (re)assigned; connection entries remember it, so an entry
    /// that outlived its real server is recognised instead of reaching whoever reuses the slot.
    /// 0 means "slot unused".
    pub generation: u32,
    /// GUE destination port, network byte order (fwd::TUN_GUE).
    pub tun_port_be: u16,
    /// Explicit padding.
    pub _pad2: [u8; 2],
    /// Id of the service this slot belongs to (lets a restarted controller adopt the tables).
    pub service: u32,
}
const _: () = assert!(size_of::<Backend>() == 40);

/// What the director hands to the tunnel program (map TUNNEL_JOB, per CPU, index 0) before it
/// tail-calls it: the chosen backend and the parsed headers the encapsulation needs. Tail calls
/// run on the same CPU without preemption, so one per-CPU slot is enough.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TunnelJob {
    /// Backend slot.
    pub backend: u32,
    /// The flow's tuple hash when `flags` has HASH_SET (the ICMP relay hashes the quoted flow);
    /// otherwise the tunnel program hashes src, dst, ports and proto below (keeping that work
    /// off the director's crowded stack).
    pub hash: u32,
    /// Offset of the (inner) L3 header.
    pub l3_off: u16,
    /// Offset of the L4 header.
    pub l4_off: u16,
    /// Inner source port, network order.
    pub sport_be: u16,
    /// Inner destination port, network order.
    pub dport_be: u16,
    /// TOS / traffic class of the inner packet.
    pub tos: u8,
    /// Inner family.
    pub family: u8,
    /// Inner L4 protocol.
    pub proto: u8,
    /// See `tunnel_job_flags`.
    pub flags: u8,
    /// Explicit padding.
    pub _pad: [u8; 4],
    /// Inner source address.
    pub src: [u8; 16],
    /// Inner destination address.
    pub dst: [u8; 16],
}
const _: () = assert!(size_of::<TunnelJob>() == 56);

/// A tunnelled backend's route as the kernel's FIB last gave it (map TUN_ROUTES, per CPU, at
/// the backend slot modulo [`TUN_ROUTE_SLOTS`]): the tunnel program reuses it instead of asking
/// the FIB again while it is younger than [`TUN_ROUTE_TTL_NS`], belongs to this slot and
/// generation, and the packet fits its MTU. A cache: never pinned, empty after every load.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TunRoute {
    /// bpf_ktime_get_ns() after which the FIB is asked again (0: empty).
    pub expires_ns: u64,
    /// Backend slot it was looked up for.
    pub backend: u32,
    /// That backend's generation.
    pub generation: u32,
    /// Interface toward the next hop.
    pub ifindex: u32,
    /// Route MTU (outer packet).
    pub mtu: u32,
    /// Outer source the FIB chose (zero when the source was configured, --tun-src).
    pub src: [u8; 16],
    /// Next hop's MAC.
    pub dmac: [u8; 6],
    /// The interface's MAC.
    pub smac: [u8; 6],
    /// Padding.
    pub _pad: [u8; 4],
}
const _: () = assert!(size_of::<TunRoute>() == 56);

/// Entries of TUN_ROUTES per CPU (56 bytes each).
pub const TUN_ROUTE_SLOTS: u32 = 4096;
/// How long a FIB answer is reused: a route, neighbour or forwarding change reaches a
/// tunnelled backend's packets within this time.
pub const TUN_ROUTE_TTL_NS: u64 = 1_000_000_000;

/// A client's route as the kernel's FIB last gave it to NAT and FULLNAT replies (map
/// REPLY_ROUTES, per CPU, at flow_hash(client, 0) % [`REPLY_ROUTE_SLOTS`]): reused while younger
/// than [`TUN_ROUTE_TTL_NS`], for this client and family, when the packet fits its MTU. A cache:
/// never pinned, empty after every load.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ReplyRoute {
    /// bpf_ktime_get_ns() after which the FIB is asked again (0: empty).
    pub expires_ns: u64,
    /// The client's address.
    pub addr: [u8; 16],
    /// Interface toward the next hop.
    pub ifindex: u32,
    /// Route MTU.
    pub mtu: u32,
    /// Next hop's MAC.
    pub dmac: [u8; 6],
    /// The interface's MAC.
    pub smac: [u8; 6],
    /// FAMILY_V4 or FAMILY_V6.
    pub family: u8,
    /// Padding.
    pub _pad: [u8; 11],
}
const _: () = assert!(size_of::<ReplyRoute>() == 56);

/// Entries of REPLY_ROUTES per CPU (56 bytes each).
pub const REPLY_ROUTE_SLOTS: u32 = 4096;

/// TunnelJob::flags bits.
pub mod tunnel_job_flags {
    /// `hash` is set.
    pub const HASH_SET: u8 = 1;
}

/// What a NAT or FULLNAT reply is translated back to (map NAT_REPLIES, keyed by the reply's
/// own flow: real server -> client for NAT, real server -> local address and port for
/// FULLNAT). The reply's source becomes `vip`:`vport_be` and its destination
/// `client`:`cport_be` (for NAT the destination is the client already; for NAT64 the family
/// changes too). The connection's state lives in its CONNS entry (client, vip, cport, vport,
/// `family`), shared by both directions.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatReply {
    /// The VIP the client connected to (IPv4 in the first four bytes).
    pub vip: [u8; 16],
    /// The client's address.
    pub client: [u8; 16],
    /// The VIP's port, network order.
    pub vport_be: u16,
    /// The client's port, network order.
    pub cport_be: u16,
    /// Backend slot the connection went to (a reply from another is not this connection's).
    pub backend: u32,
    /// The connection's family (FAMILY_V4 or FAMILY_V6): NAT64's IPv6 connections have IPv4
    /// replies.
    pub family: u8,
    /// Explicit padding.
    pub _pad: [u8; 7],
}
const _: () = assert!(size_of::<NatReply>() == 48);

/// What the director hands to the NAT program (map NAT_JOB, per CPU, index 0) before it
/// tail-calls it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatJob {
    /// [`nat_job::INBOUND`] or [`nat_job::REPLY`].
    pub kind: u32,
    /// Backend slot (INBOUND).
    pub backend: u32,
    /// Service id (INBOUND, FULLNAT: whose local addresses).
    pub service: u32,
    /// FULLNAT: the connection's local-address slot.
    pub local: u8,
    /// 1 when the director made the connection for this packet: a NAT connection's way back
    /// is recorded by the NAT program.
    pub fresh: u8,
    /// FULLNAT: the connection's local port, network order (0: allocate one).
    pub lport_be: u16,
}
const _: () = assert!(size_of::<NatJob>() == 16);

/// NatJob::kind values.
pub mod nat_job {
    /// A client's packet to the real server `backend`: rewrite the destination (and for
    /// FULLNAT the source).
    pub const INBOUND: u32 = 0;
    /// Maybe a NAT or FULLNAT real server's reply: look its connection up, rewrite it back.
    pub const REPLY: u32 = 1;
}

/// One local address of a FULLNAT service (map LADDRS, at `laddr_key(service, slot)`), and
/// the source ports handed out on it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LocalAddr {
    /// The address (IPv4 in the first four bytes); a local address of the director.
    pub addr: [u8; 16],
    /// First port handed out, host order (at least 1).
    pub port_lo: u16,
    /// Number of ports handed out from `port_lo` (at least 1).
    pub port_count: u16,
    /// FAMILY_V4 or FAMILY_V6.
    pub family: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<LocalAddr>() == 24);

/// One new FULLNAT connection, as the data plane reports it on the FNAT_AUDIT ring buffer for
/// xvsd's audit log (`--audit-fullnat`): the client the real server never sees, beside the
/// local address and port it sees instead.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FullNatAudit {
    /// The client's address.
    pub client: [u8; 16],
    /// The VIP.
    pub vip: [u8; 16],
    /// The local address the connection was given.
    pub local: [u8; 16],
    /// The real server's address.
    pub real: [u8; 16],
    /// The client's port, network order.
    pub cport_be: u16,
    /// The VIP's port, network order.
    pub vport_be: u16,
    /// The local port, network order.
    pub lport_be: u16,
    /// The real server's port, network order.
    pub rport_be: u16,
    /// Service id.
    pub service: u32,
    /// IP protocol.
    pub proto: u8,
    /// FAMILY_V4 or FAMILY_V6.
    pub family: u8,
    /// Explicit padding.
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<FullNatAudit>() == 80);

/// Size of the FNAT_AUDIT ring buffer: 256 KiB, about 3,000 connections' reports waiting for
/// xvsd (which reads them as they come).
pub const FULLNAT_AUDIT_BYTES: u32 = 256 * 1024;

/// LADDRS's key of a service's local-address slot.
#[inline(always)]
pub const fn laddr_key(service: u32, slot: u8) -> u32 {
    service << 8 | slot as u32
}

/// Most local addresses (slots) one FULLNAT service has.
pub const MAX_LADDR_SLOTS: u32 = 64;

/// How many (local address, port) candidates a new FULLNAT connection tries before it is
/// refused: with a pool of at most this many pairs every one is tried; with a larger pool the
/// refusal means this many consecutive candidates after the CPU's cursor were taken.
pub const FULLNAT_PROBES: u32 = 32;

/// The protocol byte a NAT real server's (address, port, protocol) is entered under in the
/// service filter, so one bitmap serves both and the two cannot be confused.
#[inline(always)]
pub const fn nat_reply_filter_proto(proto: u8) -> u8 {
    proto | 0x80
}

/// Traffic counters kept per CPU per service and per backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Stats {
    /// New connections scheduled.
    pub conns: u64,
    /// Packets forwarded (client to server).
    pub packets: u64,
    /// Bytes forwarded (client to server, whole frames).
    pub bytes: u64,
    /// Replies translated back to the client (NAT and FULLNAT; DR and TUN replies never cross
    /// the director).
    pub out_packets: u64,
    /// Their bytes (whole frames, as received).
    pub out_bytes: u64,
}
const _: () = assert!(size_of::<Stats>() == 40);

impl Stats {
    /// Adds another CPU's counters to these.
    pub fn add(&mut self, other: &Stats) {
        self.conns += other.conns;
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.out_packets += other.out_packets;
        self.out_bytes += other.out_bytes;
    }
}

/// Global data-plane settings (map CONFIG, index 0), written by the controller.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// Idle timeout of an established TCP connection, ns (IPVS default 900 s).
    pub tcp_timeout_ns: u64,
    /// Idle timeout after a FIN was seen, ns (IPVS default 120 s).
    pub tcp_fin_timeout_ns: u64,
    /// Idle timeout of a UDP flow, ns (IPVS default 300 s).
    pub udp_timeout_ns: u64,
    /// Idle timeout of a half-open TCP connection (SYN seen only), ns (IPVS default 60 s).
    pub tcp_syn_timeout_ns: u64,
    /// Idle timeout after a RST, ns (IPVS default 10 s).
    pub tcp_close_timeout_ns: u64,
    /// Outer source address of IPv6 tunnel packets (the director's address on the egress side).
    pub tun_src6: [u8; 16],
    /// Outer source address of IPv4 tunnel packets.
    pub tun_src4: [u8; 4],
    /// [`config_flags`].
    pub flags: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
}

/// DataplaneConfig::flags bits.
pub mod config_flags {
    /// The kernel's IPv4 multipath hash uses ports (fib_multipath_hash_policy 1 or 3): a GUE
    /// flow's route depends on its outer source port, so GUE routes are not cached per backend.
    pub const GUE_ROUTE_PER_FLOW4: u8 = 1;
    /// The same for IPv6.
    pub const GUE_ROUTE_PER_FLOW6: u8 = 2;
    /// Some real server is reached by NAT or FULLNAT: packets that are not for a service are checked for
    /// being such a real server's reply (without it, traffic that is not ours pays nothing).
    pub const NAT: u8 = 4;
    /// xvsd runs with `--audit-fullnat`: each new FULLNAT connection is reported on the
    /// FNAT_AUDIT ring buffer (client, local address and port, real server).
    pub const AUDIT_FULLNAT: u8 = 8;
    /// A master connection-sync daemon runs: the data plane reports new connections and
    /// state changes on the SYNC_EVENTS ring buffer.
    pub const SYNC_MASTER: u8 = 16;
}
const _: () = assert!(size_of::<DataplaneConfig>() == 64);

const SEC: u64 = 1_000_000_000;

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            tcp_timeout_ns: 900 * SEC,
            tcp_fin_timeout_ns: 120 * SEC,
            udp_timeout_ns: 300 * SEC,
            tcp_syn_timeout_ns: 60 * SEC,
            tcp_close_timeout_ns: 10 * SEC,
            tun_src6: [0; 16],
            tun_src4: [0; 4],
            flags: 0,
            _pad: [0; 3],
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), Copy, with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for super::ServiceKey {}
    // SAFETY: as above (repr(C), Copy, explicit padding, any bit pattern valid).
    unsafe impl aya::Pod for super::ServiceValue {}
    // SAFETY: as above (repr(C), Copy, explicit padding, any bit pattern valid).
    unsafe impl aya::Pod for super::Backend {}
    // SAFETY: as above (repr(C), Copy, explicit padding, any bit pattern valid).
    unsafe impl aya::Pod for super::Stats {}
    // SAFETY: as above (repr(C), Copy, explicit padding, any bit pattern valid).
    unsafe impl aya::Pod for super::DataplaneConfig {}
    // SAFETY: as above (repr(C), Copy, explicit padding, any bit pattern valid).
    unsafe impl aya::Pod for super::PersistKey {}
    // SAFETY: as above (repr(C), Copy, explicit padding, any bit pattern valid).
    unsafe impl aya::Pod for super::PersistEntry {}
    // SAFETY: as above (repr(C), Copy, explicit padding, any bit pattern valid).
    unsafe impl aya::Pod for super::TunnelJob {}
    // SAFETY: as above (repr(C), Copy, explicit padding, any bit pattern valid).
    unsafe impl aya::Pod for super::TunRoute {}
    // SAFETY: as above (repr(C), Copy, explicit padding, any bit pattern valid).
    unsafe impl aya::Pod for super::NatReply {}
    // SAFETY: as above (repr(C), Copy, explicit padding, any bit pattern valid).
    unsafe impl aya::Pod for super::LocalAddr {}
    // SAFETY: as above (repr(C), Copy, explicit padding, any bit pattern valid).
    unsafe impl aya::Pod for super::FullNatAudit {}
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefix_masks_mask_as_mask_addr_does() {
        let addrs = [
            [0xffu8; 16],
            *b"\x20\x01\x0d\xb8\x85\xa3\x00\x00\x00\x00\x8a\x2e\x03\x70\x73\x34",
            [198, 51, 100, 77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ];
        for addr in addrs {
            for prefix in 0..=255u8 {
                let words = [
                    u64::from_ne_bytes(addr[..8].try_into().unwrap()),
                    u64::from_ne_bytes(addr[8..].try_into().unwrap()),
                ];
                let [m0, m1] = prefix_masks(prefix);
                let mut got = [0u8; 16];
                got[..8].copy_from_slice(&(words[0] & m0).to_ne_bytes());
                got[8..].copy_from_slice(&(words[1] & m1).to_ne_bytes());
                assert_eq!(got, mask_addr(&addr, prefix), "/{prefix} of {addr:?}");
            }
        }
    }

    use super::*;

    #[test]
    fn masks() {
        let a = [10, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(mask_addr(&a, 32), a);
        assert_eq!(mask_addr(&a, 24)[..4], [10, 1, 2, 0]);
        assert_eq!(mask_addr(&a, 20)[..4], [10, 1, 0, 0]);
        assert_eq!(mask_addr(&a, 0), [0; 16]);
        let v6 = [0xff; 16];
        assert_eq!(mask_addr(&v6, 128), v6);
        assert_eq!(mask_addr(&v6, 60)[7], 0xf0);
        assert_eq!(mask_addr(&v6, 60)[8], 0);
    }

    #[test]
    fn flow_hash_spreads() {
        // 256 client addresses over 16 buckets: no bucket empty or holding more than twice its share.
        let mut buckets = [0u32; 16];
        for i in 0..256u32 {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&[192, 0, 2, i as u8]);
            buckets[(flow_hash(&a, 0) % 16) as usize] += 1;
        }
        assert!(buckets.iter().all(|&b| b > 0 && b <= 32), "{buckets:?}");
        let a = [1u8; 16];
        assert_ne!(flow_hash(&a, 1), flow_hash(&a, 2));
    }
}
