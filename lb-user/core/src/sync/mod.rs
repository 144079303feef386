//! Connection sync between directors in IPVS's own wire format, version 1
//! (net/netfilter/ipvs/ip_vs_sync.c), so that xvs and kernel IPVS directors can back each
//! other up and tshark's "ipvs" dissector reads what we send.
//!
//! A master director multicasts, for each connection whose state changed (and periodically
//! for long-lived ones), an entry: addresses, ports, protocol, forwarding method and flags,
//! state, fwmark, and the time left. Persistence templates travel as entries too. A backup
//! applies the entries to its own table, so that when it takes over (VRRP moves the VIP, or
//! ECMP moves the flow) established connections keep their real server.
//!
//! This module is only the format and the plain value: [`SyncConn`] (one entry),
//! [`MessageBuilder`] / [`encode`] (entries to datagrams) and [`decode`] (datagram to
//! entries, as strict as the kernel's receiver and never panicking). Sockets and the daemon
//! live in the I/O shell.
//!
//! Defaults, as the kernel's `start_sync_thread` sets them: IPv4 group [`DEFAULT_GROUP`]
//! (224.0.0.81, `IP_VS_SYNC_GROUP`), UDP port [`DEFAULT_PORT`] (8848, `IP_VS_SYNC_PORT`;
//! sync thread *n* of `sync_ports` uses port + *n*), TTL [`DEFAULT_TTL`] (1). There is no
//! default IPv6 group: the kernel has none, and ipvsadm must be given `--mcast-group` for
//! IPv6. Version 0 messages are recognised and refused ([`WireError::Version0`]).

mod conn;
pub mod daemon;
pub mod table;
mod wire;

use std::net::Ipv4Addr;

pub use conn::{
    bits, Addrs, ConnFlags, ConnState, Forward, PeData, Ports, SeqAdjust, SeqOptions, SyncConn,
    TcpState, TemplateState, PE_DATA_MAX, PE_NAME_MAX,
};
pub use wire::{
    decode, decode_strict, encode, entry_len, EncodeError, EntryError, EntryFault, Message,
    MessageBuilder, SkipReason, Skipped, WireError, HEADER_LEN, MAX_CONNS, PROTO_VERSION,
    SEQ_DATA_LEN, V4_ENTRY_LEN, V6_ENTRY_LEN,
};

/// The kernel's default sync group, 224.0.0.81 (`IP_VS_SYNC_GROUP`).
pub const DEFAULT_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 81);
/// The kernel's default sync port (`IP_VS_SYNC_PORT`).
pub const DEFAULT_PORT: u16 = 8848;
/// The kernel's default multicast TTL: sync stays on the link.
pub const DEFAULT_TTL: u8 = 1;

/// Which side of sync a director plays; the kernel sizes messages differently for each.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sends entries.
    Master,
    /// Receives them.
    Backup,
}

/// The largest sync datagram payload, as `start_sync_thread` computes `sync_maxlen`.
///
/// Without `--sync-maxlen` (`configured` None or 0): a master assumes a 1500-byte MTU
/// whatever the interface says (backups may sit behind smaller links), a backup takes its
/// interface's MTU clamped to 1500..=65535; both minus the IP and UDP headers (28 bytes for
/// an IPv4 group, 48 for IPv6). With it: clamped to 1 (master) or 1024 (backup) up to
/// 65535 minus those headers.
pub fn sync_maxlen(
    role: Role,
    group_is_v6: bool,
    iface_mtu: u32,
    configured: Option<u32>,
) -> usize {
    let hlen: u32 = if group_is_v6 { 40 + 8 } else { 20 + 8 };
    let (mtu, min) = match role {
        Role::Master => (1500, 1),
        Role::Backup => (iface_mtu.clamp(1500, 65535), 1024),
    };
    let len = match configured {
        Some(n) if n > 0 => n.clamp(min, 65535 - hlen),
        _ => mtu - hlen,
    };
    len as usize
}

/// Whether a backup listening as `ours` takes a message from `theirs`: a backup with SyncID
/// 0 takes every message, any other only its own (the kernel's "SyncID sanity check").
pub fn syncid_accepted(ours: u8, theirs: u8) -> bool {
    ours == 0 || ours == theirs
}

#[cfg(test)]
mod tests;
