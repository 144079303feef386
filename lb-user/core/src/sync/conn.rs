//! The plain value one sync entry carries: a connection (or a persistence template) as IPVS
//! describes it to its backups, typed where the kernel's numbers have names.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Raw `IP_VS_CONN_F_*` values (include/uapi/linux/ip_vs.h), for code that must speak the
/// kernel's numbers (the eBPF side, tests); everything else uses [`ConnFlags`].
pub mod bits {
    /// Mask of the forwarding method (the low three bits).
    pub const FWD_MASK: u32 = 0x0007;
    /// Set by the receiver on entries it created from sync (never meaningful on the wire).
    pub const SYNC: u32 = 0x0020;
    /// The kernel clears it before sending: a hash-table detail of the sender.
    pub const HASHED: u32 = 0x0040;
    /// No output packets (the director sees no replies: DR, TUN).
    pub const NOOUTPUT: u32 = 0x0080;
    /// Not established: counted as an inactive connection.
    pub const INACTIVE: u32 = 0x0100;
    /// The director must adjust sequence numbers going out (NAT with an application helper).
    pub const OUT_SEQ: u32 = 0x0200;
    /// The director must adjust sequence numbers coming in.
    pub const IN_SEQ: u32 = 0x0400;
    /// Both sequence-adjust bits: the sender adds an `IPVS_OPT_SEQ_DATA` option when either is set.
    pub const SEQ_MASK: u32 = 0x0600;
    /// The client port is not known yet (FTP data connections).
    pub const NO_CPORT: u32 = 0x0800;
    /// A persistence template, not a connection.
    pub const TEMPLATE: u32 = 0x1000;
    /// One-packet scheduling; the kernel never syncs such entries, but the bit is defined.
    pub const ONE_PACKET: u32 = 0x2000;
    /// Use netfilter conntrack (bit 16: version 1 carries 32 flag bits, version 0 only 16).
    pub const NFCT: u32 = 1 << 16;
    /// What a receiving kernel keeps of the sent flags (`IP_VS_CONN_F_BACKUP_MASK`); it then
    /// adds [`SYNC`].
    pub const BACKUP_MASK: u32 = FWD_MASK | NOOUTPUT | INACTIVE | SEQ_MASK | NO_CPORT | TEMPLATE;
    /// The bits [`super::ConnFlags`] names; any other bit (`HASHED` included) travels in
    /// its `other` field.
    pub const KNOWN: u32 =
        FWD_MASK | SYNC | NOOUTPUT | INACTIVE | SEQ_MASK | NO_CPORT | TEMPLATE | ONE_PACKET | NFCT;
}

/// The forwarding method in a connection's low flag bits (`IP_VS_CONN_F_FWD_MASK`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Forward {
    /// NAT, "masquerading" (0).
    Masq,
    /// The director itself serves the connection (1).
    LocalNode,
    /// IP-in-IP (or GUE/GRE) tunnel (2).
    Tunnel,
    /// Direct routing (3).
    DirectRoute,
    /// Cache bypass (4).
    Bypass,
    /// FULLNAT (5): not the kernel's; DPVS's number (`DPVS_FWD_MODE_FNAT`), which xvs sends
    /// with the local address and port in an option of its own (see the wire's `OPT_XVS_LOCAL`).
    /// A kernel IPVS backup keeps such an entry but has no way to forward it.
    FullNat,
    /// 6 and 7: no method of the kernel's; kept so a decoded value encodes back unchanged.
    Unknown(u8),
}

impl Forward {
    /// The method of the low three bits of `flags`.
    pub fn from_bits(flags: u32) -> Self {
        match flags & bits::FWD_MASK {
            0 => Self::Masq,
            1 => Self::LocalNode,
            2 => Self::Tunnel,
            3 => Self::DirectRoute,
            4 => Self::Bypass,
            5 => Self::FullNat,
            other => Self::Unknown(other as u8),
        }
    }

    /// The method's value in the low three bits (an `Unknown` above 7 is masked to them).
    pub fn bits(self) -> u32 {
        match self {
            Self::Masq => 0,
            Self::LocalNode => 1,
            Self::Tunnel => 2,
            Self::DirectRoute => 3,
            Self::Bypass => 4,
            Self::FullNat => 5,
            Self::Unknown(v) => u32::from(v) & bits::FWD_MASK,
        }
    }
}

/// A connection's flags, typed. Lossless: bits without a name here are kept in `other`, so
/// decoding and encoding again gives the same 32 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnFlags {
    /// The forwarding method.
    pub forward: Forward,
    /// A persistence template rather than a connection (`F_TEMPLATE`).
    pub template: bool,
    /// No output packets (`F_NOOUTPUT`).
    pub no_output: bool,
    /// Not established (`F_INACTIVE`): counts as an inactive connection on the backup.
    pub inactive: bool,
    /// Input sequence adjust (`F_IN_SEQ`).
    pub in_seq: bool,
    /// Output sequence adjust (`F_OUT_SEQ`).
    pub out_seq: bool,
    /// Client port not set yet (`F_NO_CPORT`).
    pub no_cport: bool,
    /// One-packet scheduling (`F_ONE_PACKET`); the kernel does not sync these.
    pub one_packet: bool,
    /// Netfilter conntrack (`F_NFCT`); sent by version 1, dropped by the receiver's mask.
    pub nfct: bool,
    /// Created by sync (`F_SYNC`): a director that is master and backup re-sends it.
    pub synced: bool,
    /// Every other bit, raw (`F_HASHED` included if a sender left it set).
    pub other: u32,
}

impl ConnFlags {
    /// Flags of a plain connection forwarded by `forward`, every bit clear.
    pub fn new(forward: Forward) -> Self {
        Self::from_bits(forward.bits())
    }

    /// The typed view of the kernel's 32 flag bits.
    pub fn from_bits(raw: u32) -> Self {
        let has = |b: u32| raw & b != 0;
        Self {
            forward: Forward::from_bits(raw),
            template: has(bits::TEMPLATE),
            no_output: has(bits::NOOUTPUT),
            inactive: has(bits::INACTIVE),
            in_seq: has(bits::IN_SEQ),
            out_seq: has(bits::OUT_SEQ),
            no_cport: has(bits::NO_CPORT),
            one_packet: has(bits::ONE_PACKET),
            nfct: has(bits::NFCT),
            synced: has(bits::SYNC),
            other: raw & !bits::KNOWN,
        }
    }

    /// The kernel's 32 flag bits.
    pub fn bits(self) -> u32 {
        let bit = |on: bool, b: u32| if on { b } else { 0 };
        self.forward.bits()
            | bit(self.template, bits::TEMPLATE)
            | bit(self.no_output, bits::NOOUTPUT)
            | bit(self.inactive, bits::INACTIVE)
            | bit(self.in_seq, bits::IN_SEQ)
            | bit(self.out_seq, bits::OUT_SEQ)
            | bit(self.no_cport, bits::NO_CPORT)
            | bit(self.one_packet, bits::ONE_PACKET)
            | bit(self.nfct, bits::NFCT)
            | bit(self.synced, bits::SYNC)
            // `other` never overrides a named bit: the named fields are the truth.
            | self.other & !bits::KNOWN
    }

    /// What a receiving IPVS keeps of these flags (`IP_VS_CONN_F_BACKUP_MASK`) plus the
    /// `F_SYNC` it adds: what the backup's entry ends up with.
    pub fn as_received(self) -> Self {
        Self::from_bits(self.bits() & bits::BACKUP_MASK | bits::SYNC)
    }
}

/// IPVS's TCP states (`IP_VS_TCP_S_*`, include/net/ip_vs.h), in the kernel's numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TcpState {
    /// 0
    None,
    /// 1
    Established,
    /// 2
    SynSent,
    /// 3
    SynRecv,
    /// 4
    FinWait,
    /// 5
    TimeWait,
    /// 6
    Close,
    /// 7
    CloseWait,
    /// 8
    LastAck,
    /// 9
    Listen,
    /// 10
    SynAck,
}

impl TcpState {
    /// Every state, in the kernel's order (index = number).
    pub const ALL: [Self; 11] = [
        Self::None,
        Self::Established,
        Self::SynSent,
        Self::SynRecv,
        Self::FinWait,
        Self::TimeWait,
        Self::Close,
        Self::CloseWait,
        Self::LastAck,
        Self::Listen,
        Self::SynAck,
    ];

    /// The state numbered `raw`, if IPVS has one (`IP_VS_TCP_S_LAST` is 11).
    pub fn from_raw(raw: u16) -> Option<Self> {
        Self::ALL.get(usize::from(raw)).copied()
    }

    /// The kernel's number.
    pub fn raw(self) -> u16 {
        self as u16
    }
}

/// A persistence template's state (`IP_VS_CTPL_S_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TemplateState {
    /// 0: not yet confirmed by traffic.
    None,
    /// 1: assured (seen enough traffic to keep).
    Assured,
}

/// An entry's state: its number means something only with its protocol and kind, so the
/// decoder types it from both ([`ConnState::classify`]) and keeps the number otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnState {
    /// A TCP connection's state.
    Tcp(TcpState),
    /// A template's state.
    Template(TemplateState),
    /// Anything else, raw: UDP's single state (0), SCTP's states, or a number out of range
    /// (a kernel receiver drops a TCP entry whose state is out of range).
    Other(u16),
}

impl ConnState {
    /// The typed state of an entry of `protocol` (template or not) whose state number is `raw`.
    pub fn classify(protocol: u8, template: bool, raw: u16) -> Self {
        if template {
            match raw {
                0 => Self::Template(TemplateState::None),
                1 => Self::Template(TemplateState::Assured),
                _ => Self::Other(raw),
            }
        } else if protocol == libc::IPPROTO_TCP as u8 {
            TcpState::from_raw(raw).map_or(Self::Other(raw), Self::Tcp)
        } else {
            Self::Other(raw)
        }
    }

    /// The number on the wire.
    pub fn raw(self) -> u16 {
        match self {
            Self::Tcp(s) => s.raw(),
            Self::Template(TemplateState::None) => 0,
            Self::Template(TemplateState::Assured) => 1,
            Self::Other(raw) => raw,
        }
    }
}

/// The three addresses of an entry, of one family (the wire cannot mix them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Addrs {
    /// An IPv4 entry (`struct ip_vs_sync_v4`).
    V4 {
        /// Client address.
        client: Ipv4Addr,
        /// Virtual address; a fwmark template carries the mark here, as an address.
        virt: Ipv4Addr,
        /// Real server address.
        dest: Ipv4Addr,
    },
    /// An IPv6 entry (`struct ip_vs_sync_v6`).
    V6 {
        /// Client address.
        client: Ipv6Addr,
        /// Virtual address; a fwmark template carries the mark in its first 4 bytes.
        virt: Ipv6Addr,
        /// Real server address.
        dest: Ipv6Addr,
    },
}

impl Addrs {
    /// True for IPv6 entries.
    pub fn is_v6(&self) -> bool {
        matches!(self, Self::V6 { .. })
    }

    /// The client address.
    pub fn client(&self) -> IpAddr {
        match *self {
            Self::V4 { client, .. } => client.into(),
            Self::V6 { client, .. } => client.into(),
        }
    }

    /// The virtual address.
    pub fn virt(&self) -> IpAddr {
        match *self {
            Self::V4 { virt, .. } => virt.into(),
            Self::V6 { virt, .. } => virt.into(),
        }
    }

    /// The real server's address.
    pub fn dest(&self) -> IpAddr {
        match *self {
            Self::V4 { dest, .. } => dest.into(),
            Self::V6 { dest, .. } => dest.into(),
        }
    }
}

/// The ports of an entry, host order here (network order on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Ports {
    /// Client port; 0 in templates.
    pub client: u16,
    /// Virtual port; 0 in fwmark and port-zero templates.
    pub virt: u16,
    /// Real server port.
    pub dest: u16,
}

/// One direction's sequence adjustment (`struct ip_vs_seq`), used by NAT with helpers that
/// change payload lengths (FTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SeqAdjust {
    /// Add the delta from this sequence number on.
    pub init_seq: u32,
    /// Delta in sequence numbers.
    pub delta: u32,
    /// Delta before the last resized packet.
    pub previous_delta: u32,
}

/// The `IPVS_OPT_SEQ_DATA` option: both directions' adjustments
/// (`struct ip_vs_sync_conn_options`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SeqOptions {
    /// Incoming direction.
    pub in_seq: SeqAdjust,
    /// Outgoing direction.
    pub out_seq: SeqAdjust,
}

/// Persistence-engine data of an entry (`IPVS_OPT_PE_NAME` + `IPVS_OPT_PE_DATA`), e.g. the
/// SIP engine's Call-ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeData {
    /// The engine's name ("sip"), 1 to [`PE_NAME_MAX`] bytes.
    pub name: String,
    /// The engine's data, 1 to [`PE_DATA_MAX`] bytes.
    pub data: Vec<u8>,
}

/// Longest engine name a kernel accepts (`IP_VS_PENAME_MAXLEN`).
pub const PE_NAME_MAX: usize = 16;
/// Longest engine data a kernel accepts (`IP_VS_PEDATA_MAXLEN`).
pub const PE_DATA_MAX: usize = 255;

/// One synced connection or persistence template, as a version 1 entry carries it.
///
/// Templates (`flags.template`) are keyed as ip_vs_core.c's `ip_vs_sched_persist` makes them:
/// client port 0; for a fwmark service protocol 0 (`IPPROTO_IP`), the mark as the virtual
/// address and virtual port 0; for a port-zero service virtual port 0; `timeout_secs` is the
/// persistence timeout.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SyncConn {
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP; 0 in fwmark templates).
    pub protocol: u8,
    /// The flags.
    pub flags: ConnFlags,
    /// The state.
    pub state: ConnState,
    /// Client, virtual and real server addresses.
    pub addrs: Addrs,
    /// Client, virtual and real server ports.
    pub ports: Ports,
    /// The packet's firewall mark when the connection was made.
    pub fwmark: u32,
    /// Time left before expiry, in seconds; 0 asks the receiver for its own default.
    pub timeout_secs: u32,
    /// Sequence adjustments; the kernel sends them when `in_seq` or `out_seq` is set.
    pub seq: Option<SeqOptions>,
    /// Persistence-engine data.
    pub pe: Option<PeData>,
    /// FULLNAT: the local address and port the real server sees as the connection's client
    /// (xvs's own option, which IPVS skips; same family as the entry's addresses).
    pub local: Option<std::net::SocketAddr>,
}

impl SyncConn {
    /// True for persistence templates.
    pub fn is_template(&self) -> bool {
        self.flags.template
    }
}
