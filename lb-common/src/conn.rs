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

/// ConnEntry::state's bits 6-7: how many more of the client's packets the entry must see before
/// a packet may leave it referenced in the kernel's LRU (the data plane's proof rule, lb-ebpf
/// `conntrack`). 0, what builds before the rule wrote, is a proven entry: adopted entries keep
/// the in-place path they had.
pub const PROOF_MASK: u8 = 0b1100_0000;
/// ConnEntry::state's low bits: the ConnState.
pub const STATE_MASK: u8 = 0b0011_1111;
const PROOF_SHIFT: u32 = 6;
/// What a new entry owes: the client's 2nd and 3rd packets (its 3rd is the first to reference it,
/// so a spoofed SYN + ACK pair leaves it unreferenced).
pub const PROOF_NEW: u8 = 2;

/// The client packets `state` (a ConnEntry::state byte) still owes; 0: proven.
pub const fn proof_owed(state: u8) -> u8 {
    (state & PROOF_MASK) >> PROOF_SHIFT
}

/// `state` with its proof bits set to `owed` (at most 3), its ConnState kept.
pub const fn with_proof_owed(state: u8, owed: u8) -> u8 {
    (state & STATE_MASK) | (owed << PROOF_SHIFT & PROOF_MASK)
}

impl ConnState {
    /// Decodes the byte stored in ConnEntry::state (its proof bits ignored).
    pub const fn from_u8(v: u8) -> ConnState {
        match v & STATE_MASK {
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
    /// ConnState as u8 in the low bits, the proof rule's count in bits 6-7 ([`PROOF_MASK`]):
    /// read it with [`ConnState::from_u8`] and [`proof_owed`].
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

/// IPVS's two connection classes: ActiveConn (TCP ESTABLISHED) and InActConn (every other TCP
/// state, and UDP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnClass {
    /// Counted in ActiveConn.
    Active,
    /// Counted in InActConn.
    Inactive,
}

impl ConnClass {
    /// The class of an entry in `state` (the byte ConnEntry::state holds, proof bits ignored).
    pub const fn of_state(state: u8) -> ConnClass {
        if ConnState::from_u8(state).is_active() {
            ConnClass::Active
        } else {
            ConnClass::Inactive
        }
    }
}

/// Live connections of one backend slot by class (map CONN_COUNTS per CPU, CONN_ADJUST).
///
/// The data plane counts as entries change: +1 in the entry's class when it records a new
/// connection, -1/+1 when a packet moves the entry to the other class, -1 when it removes an
/// entry it found dead (expired) or forgets one. One CPU may add what another subtracts, so a
/// CPU's value alone means nothing: the fields wrap, and only the sum over CPUs (plus xvsd's
/// CONN_ADJUST for the slot, as wrapping two's-complement) is the count.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConnCounters {
    /// ActiveConn, wrapping.
    pub active: u64,
    /// InActConn, wrapping.
    pub inactive: u64,
}
const _: () = assert!(size_of::<ConnCounters>() == 16 && align_of::<ConnCounters>() == 8);

impl ConnCounters {
    /// Adds `n` (two's complement: -1 is u64::MAX) to the field of `class`.
    #[inline(always)]
    pub fn add(&mut self, class: ConnClass, n: u64) {
        match class {
            ConnClass::Active => self.active = self.active.wrapping_add(n),
            ConnClass::Inactive => self.inactive = self.inactive.wrapping_add(n),
        }
    }

    /// The wrapping sum of two ledgers (another CPU's, or xvsd's adjustment).
    pub const fn plus(self, other: ConnCounters) -> ConnCounters {
        ConnCounters {
            active: self.active.wrapping_add(other.active),
            inactive: self.inactive.wrapping_add(other.inactive),
        }
    }

    /// What must be added to `self` to make `target` (wrapping).
    pub const fn to(self, target: ConnCounters) -> ConnCounters {
        ConnCounters {
            active: target.active.wrapping_sub(self.active),
            inactive: target.inactive.wrapping_sub(self.inactive),
        }
    }

    /// The counts, a negative sum (a transient of counting on several CPUs) read as 0.
    pub fn clamped(self) -> (u64, u64) {
        let f = |v: u64| if (v as i64) < 0 { 0 } else { v };
        (f(self.active), f(self.inactive))
    }
}

/// A connection the data plane recorded, or whose state changed, as it reports it on the
/// SYNC_EVENTS ring buffer for xvsd's master sync daemon (only while CONFIG's SYNC_MASTER flag
/// is set). xvsd turns the backend slot into the real server's address and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SyncEvent {
    /// The flow, as the client sent it.
    pub key: FlowKey,
    /// Backend slot the flow is bound to.
    pub backend: u32,
    /// The slot's generation when the flow was bound.
    pub generation: u32,
    /// Service id.
    pub service: u32,
    /// ConnState as u8 (without the proof bits): also the timeout class.
    pub state: u8,
    /// [`sync_event`]: why it was reported.
    pub kind: u8,
    /// Explicit padding.
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<SyncEvent>() == 56);

/// SyncEvent::kind values.
pub mod sync_event {
    /// A new connection was recorded.
    pub const NEW: u8 = 0;
    /// Its TCP state changed.
    pub const STATE: u8 = 1;
    /// An established connection's periodic report, so that a backup's copy does not expire
    /// while the connection lives (IPVS resends by packet count; see `SYNC_REFRESH_SHIFT`).
    pub const REFRESH: u8 = 2;
}

/// A live established connection is reported again when a packet of it crosses a multiple of
/// 2^36 ns (about 69 s) of the clock since its previous packet: at most about once a minute
/// per connection, well within the 900 s a backup keeps an established connection.
pub const SYNC_REFRESH_SHIFT: u32 = 36;

/// Size of the SYNC_EVENTS ring buffer: 1 MiB, about 16,000 reports waiting for xvsd.
pub const SYNC_EVENTS_BYTES: u32 = 1024 * 1024;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, explicit padding, any bit pattern valid.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above (repr(C), Copy, explicit padding, any bit pattern valid).
    unsafe impl aya::Pod for super::ConnEntry {}
    // SAFETY: as above (repr(C), Copy, no padding, any bit pattern valid).
    unsafe impl aya::Pod for super::ConnCounters {}
    // SAFETY: as above (repr(C), Copy, explicit padding, any bit pattern valid).
    unsafe impl aya::Pod for super::SyncEvent {}
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

    #[test]
    fn proof_bits_leave_the_state_alone() {
        use super::{proof_owed, with_proof_owed, ConnClass, PROOF_MASK, PROOF_NEW, STATE_MASK};
        assert_eq!(PROOF_MASK & STATE_MASK, 0);
        assert_eq!(PROOF_MASK | STATE_MASK, 0xff);
        for state in [Udp, SynRecv, Established, FinWait, Close] {
            assert_eq!(
                state as u8 & PROOF_MASK,
                0,
                "{state:?} collides with the proof bits"
            );
            // What older builds wrote: proven.
            assert_eq!(proof_owed(state as u8), 0);
            for owed in 0..=PROOF_NEW {
                let byte = with_proof_owed(state as u8, owed);
                assert_eq!(proof_owed(byte), owed);
                assert_eq!(super::ConnState::from_u8(byte), state);
                assert_eq!(ConnClass::of_state(byte), ConnClass::of_state(state as u8));
                // Overwriting the count keeps the state; clearing it gives the plain byte.
                assert_eq!(with_proof_owed(byte, 0), state as u8);
                assert_eq!(with_proof_owed(byte, 1), with_proof_owed(state as u8, 1));
            }
        }
        assert_eq!(
            super::ConnState::from_u8(with_proof_owed(Established as u8, 2)),
            Established
        );
        assert_eq!(
            ConnClass::of_state(0x80 | Established as u8),
            ConnClass::Active
        );
    }

    #[test]
    fn classes_are_ipvs_active_and_inactive_and_sums_wrap() {
        use super::{ConnClass, ConnCounters};
        for (state, class) in [
            (Udp, ConnClass::Inactive),
            (SynRecv, ConnClass::Inactive),
            (Established, ConnClass::Active),
            (FinWait, ConnClass::Inactive),
            (Close, ConnClass::Inactive),
        ] {
            assert_eq!(ConnClass::of_state(state as u8), class, "{state:?}");
        }
        // Added on one CPU, subtracted on another: the sum is right, each CPU's value is not.
        let (mut cpu0, mut cpu1) = (ConnCounters::default(), ConnCounters::default());
        cpu0.add(ConnClass::Inactive, 1);
        cpu0.add(ConnClass::Inactive, u64::MAX);
        cpu0.add(ConnClass::Active, 1);
        cpu1.add(ConnClass::Active, 1);
        cpu1.add(ConnClass::Active, u64::MAX);
        cpu1.add(ConnClass::Active, u64::MAX);
        cpu0.add(ConnClass::Active, 1);
        assert_eq!(cpu1.clamped(), (0, 0));
        assert_eq!(cpu0.plus(cpu1).clamped(), (1, 0));
        let fix = cpu0.plus(cpu1).to(ConnCounters {
            active: 5,
            inactive: 2,
        });
        assert_eq!(cpu0.plus(cpu1).plus(fix).clamped(), (5, 2));
    }
}
