//! Traffic counters as the controller reports them (per service and per real server).

use lb_common::Stats;
use serde::{Deserialize, Serialize};

/// Counters read back from the data plane, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// New connections.
    pub conns: u64,
    /// Packets in.
    pub packets: u64,
    /// Bytes in.
    pub bytes: u64,
    /// Packets out (NAT and FULLNAT replies; 0 for DR and TUN, whose replies bypass the
    /// director, as with IPVS).
    #[serde(default)]
    pub out_packets: u64,
    /// Bytes out.
    #[serde(default)]
    pub out_bytes: u64,
}

impl From<Stats> for Counters {
    fn from(s: Stats) -> Self {
        Self {
            conns: s.conns,
            packets: s.packets,
            bytes: s.bytes,
            out_packets: s.out_packets,
            out_bytes: s.out_bytes,
        }
    }
}
