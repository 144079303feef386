//! The connection table's key and value, and the TCP state machine both sides agree on.

/// A flow as seen from the client: the connection-table key. Aligned to 8 so that the data
/// plane builds and compares it in 64-bit words, not byte by byte (the layout is the same).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    /// Client address.
    pub src: [u8; 16],
    /// VIP.
    pub dst: [u8; 16],
    /// Client port, network order.
    pub sport_be: u16,
    /// VIP port, network order.
    pub dport_be: u16,
    /// IP protocol.
    pub proto: u8,
    /// FAMILY_V4 or FAMILY_V6.
    pub family: u8,
    /// Explicit padding (always zero: it is part of the hashed key).
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<FlowKey>() == 40 && align_of::<FlowKey>() == 8);

/// Connection state, as far as a director that sees only the client's side can tell (the
/// input-only view IPVS has in DR and TUN mode).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// UDP "connection".
    Udp = 0,
    /// TCP: SYN seen, nothing more.
    SynRecv = 1,
    /// TCP: data or ACK after the SYN.
    Established = 2,
    /// TCP: FIN seen from the client.
    FinWait = 3,
    /// TCP: RST seen.
    Close = 4,
}

impl ConnState {
    /// Decodes the byte stored in ConnEntry::state.
    pub const fn from_u8(v: u8) -> ConnState {
        match v {
            1 => ConnState::SynRecv,
            2 => ConnState::Established,
            3 => ConnState::FinWait,
            4 => ConnState::Close,
            _ => ConnState::Udp,
        }
    }

    /// IPVS's name for the state (as `ipvsadm -L -c` prints it).
    pub const fn name(self) -> &'static str {
        match self {
            ConnState::Udp => "UDP",
            ConnState::SynRecv => "SYN_RECV",
            ConnState::Established => "ESTABLISHED",
            ConnState::FinWait => "FIN_WAIT",
            ConnState::Close => "CLOSE",
        }
    }

    /// Whether IPVS counts this state as an active connection (ActiveConn) rather than InActConn.
    pub const fn is_active(self) -> bool {
        matches!(self, ConnState::Established)
    }

    /// The next state after a TCP segment with these flags (input-only transitions).
    pub const fn tcp_next(self, syn: bool, fin: bool, rst: bool, ack: bool) -> ConnState {
        if rst {
            ConnState::Close
        } else if syn {
            // A SYN on a live entry is a retransmission or a reused tuple: half-open again.
            ConnState::SynRecv
        } else if fin {
            ConnState::FinWait
        } else if ack {
            match self {
                ConnState::SynRecv | ConnState::Established => ConnState::Established,
                other => other,
            }
        } else {
            self
        }
    }
}

/// What the connection table remembers about a flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConnEntry {
    /// Backend slot the flow is bound to.
    pub backend: u32,
    /// The slot's generation when the flow was bound (see Backend::generation).
    pub generation: u32,
    /// Service id.
    pub service: u32,
    /// ConnState as u8.
    pub state: u8,
    /// FULLNAT: the slot of the service's local address the connection was given (see
    /// `maps::laddr_key`), with `lport_be`.
    pub local: u8,
    /// FULLNAT: the local port the connection was given, network order; 0 for every other mode,
    /// and for a FULLNAT connection whose port is not allocated yet.
    pub lport_be: u16,
    /// bpf_ktime_get_ns() of the last packet.
    pub last_seen_ns: u64,
}
const _: () = assert!(size_of::<ConnEntry>() == 24);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, explicit padding, any bit pattern valid.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above (repr(C), Copy, explicit padding, any bit pattern valid).
    unsafe impl aya::Pod for super::ConnEntry {}
}

#[cfg(test)]
mod tests {
    use super::ConnState::*;

    #[test]
    fn tcp_transitions() {
        assert_eq!(SynRecv.tcp_next(false, false, false, true), Established);
        assert_eq!(Established.tcp_next(false, true, false, true), FinWait);
        assert_eq!(FinWait.tcp_next(false, false, false, true), FinWait);
        assert_eq!(Established.tcp_next(false, false, true, false), Close);
        assert_eq!(Close.tcp_next(true, false, false, false), SynRecv);
        assert!(Established.is_active());
        assert!(!FinWait.is_active());
    }
}
