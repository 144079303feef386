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
}

/// Number of reasons (size of the REASONS map).
pub const REASON_COUNT: u32 = 19;

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
    ];

    /// Whether the packet is dropped (otherwise it is passed to the kernel or forwarded).
    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Reason::DropTruncatedL2
                | Reason::DropMalformedL3
                | Reason::DropMalformedL4
                | Reason::DropNoBackend
                | Reason::DropBadBackend
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
