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
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 20);

/// What the data plane needs to know about a service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceValue {
    /// Index into per-service arrays (stats, cursor).
    pub id: u32,
    /// Service flags (reserved, 0 today).
    pub flags: u32,
    /// First slot of this service's region in SCHED_SLOTS.
    pub table_off: u32,
    /// Number of slots in the region; 0 means no usable real server.
    pub table_len: u32,
}
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 16);

/// How a backend is reached.
pub mod fwd {
    /// Direct routing: rewrite the Ethernet header only.
    pub const DR: u8 = 0;
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
    /// Backend flags (reserved, 0 today).
    pub flags: u8,
    /// Explicit padding.
    pub _pad: u8,
    /// Changes each time the slot is (re)assigned; connection entries remember it, so an entry
    /// that outlived its real server is recognised instead of reaching whoever reuses the slot.
    /// 0 means "slot unused".
    pub generation: u32,
}
const _: () = assert!(core::mem::size_of::<Backend>() == 32);

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
}
const _: () = assert!(core::mem::size_of::<Stats>() == 24);

impl Stats {
    /// Adds another CPU's counters to these.
    pub fn add(&mut self, other: &Stats) {
        self.conns += other.conns;
        self.packets += other.packets;
        self.bytes += other.bytes;
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
}
const _: () = assert!(core::mem::size_of::<DataplaneConfig>() == 40);

const SEC: u64 = 1_000_000_000;

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            tcp_timeout_ns: 900 * SEC,
            tcp_fin_timeout_ns: 120 * SEC,
            udp_timeout_ns: 300 * SEC,
            tcp_syn_timeout_ns: 60 * SEC,
            tcp_close_timeout_ns: 10 * SEC,
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), Copy, with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceValue {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::Stats {}
    unsafe impl aya::Pod for super::DataplaneConfig {}
}
