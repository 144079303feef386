//! Why the director did what it did with a packet: one per-CPU counter per reason.

/// Every outcome of the director program. The discriminant indexes the REASONS map.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Not IPv4/IPv6 (ARP, LLDP...): passed to the kernel.
    PassNonIp = 0,
    /// IP, but not addressed to a virtual service: passed.
    PassNotService = 1,
    /// Neither TCP nor UDP (ICMP...): passed.
    PassOtherProto = 2,
    /// An IPv4 fragment: no L4 header to balance on; passed.
    PassFragment = 3,
    /// IPv6 with extension headers before L4: passed.
    PassIpv6ExtHeader = 4,
    /// Ethernet or VLAN header cut short: dropped.
    DropTruncatedL2 = 5,
    /// IP header cut short or invalid (IHL < 5, wrong version): dropped.
    DropMalformedL3 = 6,
    /// TCP/UDP header cut short or invalid (TCP data offset < 5): dropped.
    DropMalformedL4 = 7,
    /// The service has no usable real server: dropped.
    DropNoBackend = 8,
    /// The scheduler table pointed at an unused backend slot: dropped.
    DropBadBackend = 9,
    /// The connection table refused an insert: forwarded anyway, not tracked.
    ConnInsertFailed = 10,
    /// Forwarded in DR mode (XDP_TX).
    TxDr = 11,
    /// Forwarded on an existing connection entry.
    ConnHit = 12,
    /// A new connection was scheduled.
    ConnNew = 13,
    /// An entry existed but had expired, or its real server was removed: rescheduled.
    ConnRescheduled = 14,
    /// A second VLAN tag (QinQ): passed.
    PassStackedVlan = 15,
    /// A new connection followed its client's persistence template.
    PersistHit = 16,
    /// A persistence template was created (or replaced an expired one).
    PersistNew = 17,
    /// The persistence-template table refused an insert: the connection is not persistent.
    PersistInsertFailed = 18,
    /// Forwarded in TUN mode: encapsulated and sent back out the ingress interface (XDP_TX).
    TxTunnel = 19,
    /// Forwarded in TUN mode through another interface the FIB chose (XDP_REDIRECT).
    RedirectTunnel = 20,
    /// Too big to tunnel: ICMP fragmentation-needed / ICMPv6 packet-too-big sent to the client.
    TxIcmpTooBig = 21,
    /// The FIB knows the route to a tunnelled real server but not the next hop's MAC yet
    /// (xvsd pokes tunnelled servers so the kernel resolves it): dropped.
    DropTunNoNeighbor = 22,
    /// No usable route to a tunnelled real server (unreachable, blackhole, prohibited, no source
    /// address): dropped.
    DropTunNoRoute = 23,
    /// IP forwarding is disabled on the interface, so the FIB cannot be asked: dropped
    /// (sysctl net.ipv4.conf.IFACE.forwarding / net.ipv6.conf.IFACE.forwarding).
    DropTunFwdDisabled = 24,
    /// The packet could not be grown or shrunk for an encapsulation or ICMP reply: dropped.
    DropTunHeadroom = 25,
    /// An ICMP error quoting a tracked flow was forwarded to that flow's real server.
    IcmpErrorForwarded = 26,
    /// ICMP for no tracked flow (echo, neighbour discovery, errors for the host): passed.
    PassIcmp = 27,
    /// GUE over IPv6 of an inner UDP/IPv4 datagram without a checksum: outer checksum left 0.
    TunZeroCsum = 28,
    /// Too big to tunnel and not answerable with ICMP (an ICMP error itself, or too short to
    /// quote): dropped.
    DropTooBigUnquotable = 29,
    /// The tunnel or ICMP program is not in the tail-call table (a loader bug): dropped.
    DropTailCallMissing = 30,
    /// Forwarded in NAT mode: the destination rewritten to the real server's, sent back out the
    /// ingress interface (XDP_TX).
    TxNat = 31,
    /// A NAT real server's reply: the source rewritten back to the VIP and port, sent to the
    /// client out the ingress interface (XDP_TX).
    TxNatReply = 32,
    /// NAT traffic (either direction) sent out another interface the FIB chose (XDP_REDIRECT).
    RedirectNat = 33,
    /// From a NAT real server's address and port, but of no connection the director knows (the
    /// table lost it, or it belongs to an earlier real server): passed to the kernel unchanged,
    /// never rewritten by guess.
    PassNatReplyUnknown = 34,
    /// No usable route toward a NAT packet's new destination (unreachable, blackhole,
    /// prohibited): dropped.
    DropNatNoRoute = 35,
    /// The FIB knows the route toward a NAT packet's new destination but not the next hop's MAC
    /// yet (a client the director never talked to): translated, then passed to the kernel, which
    /// forwards it and resolves the neighbour for the next packets.
    PassNatNoNeighbor = 36,
    /// IP forwarding is disabled on the interface, so a NAT packet cannot be routed: dropped
    /// (sysctl net.ipv4.conf.IFACE.forwarding / net.ipv6.conf.IFACE.forwarding).
    DropNatFwdDisabled = 37,
    /// Forwarded in FULLNAT mode: source and destination rewritten (the client's address and
    /// port replaced by a local address and port of the service's pool), sent back out the
    /// ingress interface (XDP_TX). Replies count under TxNatReply.
    TxFullNat = 38,
    /// A new FULLNAT connection found no free (local address, port) for its real server after
    /// a bounded number of probes: its packet is dropped (the client retries), and xvsd logs the
    /// service and its pool. Never a port in use handed out twice.
    DropFullNatNoPort = 39,
    /// A new FULLNAT connection's audit report did not fit the FNAT_AUDIT ring buffer (xvsd
    /// fell behind): the connection was forwarded, its audit line is missing.
    FullNatAuditLost = 40,
    /// An IPv4 UDP datagram without a checksum from a NAT64 real server: IPv6 requires one,
    /// and computing it would read the whole payload: dropped.
    DropNat64UdpNoChecksum = 41,
    /// An ICMP error about a NAT64 connection that RFC 7915 does not translate (source quench,
    /// a destination-unreachable code with no counterpart), or whose quote cannot be (a quoted
    /// IPv4 header with options, or an IPv6 message longer than 1280 bytes): dropped.
    DropNat64IcmpUntranslatable = 42,
    /// A TCP packet that does not open a connection (anything but a SYN without ACK) for a flow
    /// the connection table does not have, or has only expired: scheduled like a SYN, so the
    /// connection may have moved to another real server (which resets it). Counted besides the
    /// packet's verdict; a rise means the table is too small or is being flooded.
    ConnMidflowMiss = 43,
    /// A new flow from a source no connection comes from (0.0.0.0/8, 127.0.0.0/8, multicast,
    /// 255.255.255.255; IPv6 ::, ::1, multicast, IPv4-mapped: lb_common::martian): dropped, as
    /// the kernel drops it before IPVS sees it, instead of balanced to a real server.
    DropMartianSource = 44,
    /// A connection's report to the master sync daemon did not fit the SYNC_EVENTS ring buffer
    /// (xvsd fell behind): the packet was forwarded, a backup does not learn of this change.
    SyncEventLost = 45,
    /// A unicast frame addressed to another host's MAC (one a promiscuous interface or a
    /// flooding switch delivered; lb_common::link): passed to the kernel, which drops it, as it
    /// drops it before IPVS, instead of forwarding a copy of another host's traffic.
    PassNotOurMac = 46,
}

/// Number of reasons.
pub const REASON_COUNT: u32 = 47;
/// Size of the REASONS map: room for reasons later builds add without changing the pinned
/// layout (a hitless upgrade keeps the map).
pub const REASON_SLOTS: u32 = 64;
const _: () = assert!(REASON_COUNT <= REASON_SLOTS);

impl Reason {
    /// All reasons in index order.
    pub const ALL: [Reason; REASON_COUNT as usize] = [
        Reason::PassNonIp,
        Reason::PassNotService,
        Reason::PassOtherProto,
        Reason::PassFragment,
        Reason::PassIpv6ExtHeader,
        Reason::DropTruncatedL2,
        Reason::DropMalformedL3,
        Reason::DropMalformedL4,
        Reason::DropNoBackend,
        Reason::DropBadBackend,
        Reason::ConnInsertFailed,
        Reason::TxDr,
        Reason::ConnHit,
        Reason::ConnNew,
        Reason::ConnRescheduled,
        Reason::PassStackedVlan,
        Reason::PersistHit,
        Reason::PersistNew,
        Reason::PersistInsertFailed,
        Reason::TxTunnel,
        Reason::RedirectTunnel,
        Reason::TxIcmpTooBig,
        Reason::DropTunNoNeighbor,
        Reason::DropTunNoRoute,
        Reason::DropTunFwdDisabled,
        Reason::DropTunHeadroom,
        Reason::IcmpErrorForwarded,
        Reason::PassIcmp,
        Reason::TunZeroCsum,
        Reason::DropTooBigUnquotable,
        Reason::DropTailCallMissing,
        Reason::TxNat,
        Reason::TxNatReply,
        Reason::RedirectNat,
        Reason::PassNatReplyUnknown,
        Reason::DropNatNoRoute,
        Reason::PassNatNoNeighbor,
        Reason::DropNatFwdDisabled,
        Reason::TxFullNat,
        Reason::DropFullNatNoPort,
        Reason::FullNatAuditLost,
        Reason::DropNat64UdpNoChecksum,
        Reason::DropNat64IcmpUntranslatable,
        Reason::ConnMidflowMiss,
        Reason::DropMartianSource,
        Reason::SyncEventLost,
        Reason::PassNotOurMac,
    ];

    /// The reason with this index (the REASONS map key), if any.
    #[inline(always)]
    pub fn from_index(i: u32) -> Option<Reason> {
        Self::ALL.get(i as usize).copied()
    }

    /// Whether the packet is dropped (otherwise it is passed to the kernel or forwarded).
    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Reason::DropTruncatedL2
                | Reason::DropMalformedL3
                | Reason::DropMalformedL4
                | Reason::DropNoBackend
                | Reason::DropBadBackend
                | Reason::DropTunNoNeighbor
                | Reason::DropTunNoRoute
                | Reason::DropTunFwdDisabled
                | Reason::DropTunHeadroom
                | Reason::DropTooBigUnquotable
                | Reason::DropTailCallMissing
                | Reason::DropNatNoRoute
                | Reason::DropNatFwdDisabled
                | Reason::DropFullNatNoPort
                | Reason::DropNat64UdpNoChecksum
                | Reason::DropNat64IcmpUntranslatable
                | Reason::DropMartianSource
        )
    }

    /// Whether the frame leaves through the ingress interface (XDP_TX).
    pub const fn is_tx(self) -> bool {
        matches!(
            self,
            Reason::TxDr
                | Reason::TxTunnel
                | Reason::TxIcmpTooBig
                | Reason::TxNat
                | Reason::TxNatReply
                | Reason::TxFullNat
        )
    }

    /// A stable snake_case name (metrics label, JSON key).
    pub const fn name(self) -> &'static str {
        match self {
            Reason::PassNonIp => "pass_non_ip",
            Reason::PassNotService => "pass_not_service",
            Reason::PassOtherProto => "pass_other_proto",
            Reason::PassFragment => "pass_fragment",
            Reason::PassIpv6ExtHeader => "pass_ipv6_ext_header",
            Reason::DropTruncatedL2 => "drop_truncated_l2",
            Reason::DropMalformedL3 => "drop_malformed_l3",
            Reason::DropMalformedL4 => "drop_malformed_l4",
            Reason::DropNoBackend => "drop_no_backend",
            Reason::DropBadBackend => "drop_bad_backend",
            Reason::ConnInsertFailed => "conn_insert_failed",
            Reason::TxDr => "tx_dr",
            Reason::ConnHit => "conn_hit",
            Reason::ConnNew => "conn_new",
            Reason::ConnRescheduled => "conn_rescheduled",
            Reason::PassStackedVlan => "pass_stacked_vlan",
            Reason::PersistHit => "persist_hit",
            Reason::PersistNew => "persist_new",
            Reason::PersistInsertFailed => "persist_insert_failed",
            Reason::TxTunnel => "tx_tunnel",
            Reason::RedirectTunnel => "redirect_tunnel",
            Reason::TxIcmpTooBig => "tx_icmp_too_big",
            Reason::DropTunNoNeighbor => "drop_tun_no_neighbor",
            Reason::DropTunNoRoute => "drop_tun_no_route",
            Reason::DropTunFwdDisabled => "drop_tun_fwd_disabled",
            Reason::DropTunHeadroom => "drop_tun_headroom",
            Reason::IcmpErrorForwarded => "icmp_error_forwarded",
            Reason::PassIcmp => "pass_icmp",
            Reason::TunZeroCsum => "tun_zero_csum",
            Reason::DropTooBigUnquotable => "drop_too_big_unquotable",
            Reason::DropTailCallMissing => "drop_tail_call_missing",
            Reason::TxNat => "tx_nat",
            Reason::TxNatReply => "tx_nat_reply",
            Reason::RedirectNat => "redirect_nat",
            Reason::PassNatReplyUnknown => "pass_nat_reply_unknown",
            Reason::DropNatNoRoute => "drop_nat_no_route",
            Reason::PassNatNoNeighbor => "pass_nat_no_neighbor",
            Reason::DropNatFwdDisabled => "drop_nat_fwd_disabled",
            Reason::TxFullNat => "tx_fullnat",
            Reason::DropFullNatNoPort => "drop_fullnat_no_port",
            Reason::FullNatAuditLost => "fullnat_audit_lost",
            Reason::DropNat64UdpNoChecksum => "drop_nat64_udp_no_checksum",
            Reason::DropNat64IcmpUntranslatable => "drop_nat64_icmp_untranslatable",
            Reason::ConnMidflowMiss => "conn_midflow_miss",
            Reason::DropMartianSource => "drop_martian_source",
            Reason::SyncEventLost => "sync_event_lost",
            Reason::PassNotOurMac => "pass_not_our_mac",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
        }
    }
}
