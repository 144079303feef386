//! What the controller asks of a data plane, as a trait: [`Dataplane`] answers it with the
//! kernel's maps, [`super::memory::MemoryDataplane`] in memory, so the daemon's request
//! handling is tested without root or sockets.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use lb_common::{ConnEntry, DataplaneConfig, FlowKey, NatReply, PersistEntry, PersistKey, Reason};

use super::{Activity, ConnCounts, ConnInfo, Counters, Dataplane, DataplaneError, TableFill};
use crate::{
    model::{Config, ServiceKey},
    scheduler::digest::TableDigest,
};

/// A connection a backup installs: its table entry and, for NAT and FULLNAT, its way back (the
/// replies' flow and what they are translated back to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncedConn {
    /// The flow as its client sends it.
    pub key: FlowKey,
    /// Its entry.
    pub entry: ConnEntry,
    /// NAT and FULLNAT: NAT_REPLIES' key and value.
    pub reply: Option<(FlowKey, NatReply)>,
}

/// What became of one synced connection.
#[derive(Debug)]
pub enum Installing {
    /// Written (or rewritten, when the table had it).
    Installed,
    /// Its way back is another connection's here (a FULLNAT local port this director gave a
    /// connection of its own): left alone.
    ReplyTaken,
    /// A map refused it.
    Failed(DataplaneError),
}

/// The data plane as the controller drives it: configuration syncs, CONFIG, counters and the
/// connection table.
pub trait DataplaneOps {
    /// CONFIG as the data plane holds it (an adopted data plane keeps its own).
    fn current_config(&self) -> Result<DataplaneConfig, DataplaneError>;
    /// Writes CONFIG.
    fn set_config(&mut self, cfg: DataplaneConfig) -> Result<(), DataplaneError>;
    /// Every backend slot in use, with the generation of the real server it holds.
    fn slot_generations(&self) -> HashMap<u32, u32>;
    /// Writes connections synced from another director (with the ways back of NAT and FULLNAT
    /// ones) and counts them in the live counts; one outcome per connection, in order.
    fn install_conns(&mut self, conns: &[SyncedConn]) -> Vec<Installing>;
    /// A connection-table entry, if the table holds one for `key` (live or not yet swept).
    fn conn_entry(&self, key: &FlowKey) -> Option<ConnEntry>;
    /// The slot of local address `addr` in service `service_id`'s pool (FULLNAT), as placed.
    fn local_slot(&self, service_id: u32, addr: IpAddr) -> Option<u8>;
    /// Writes a persistence template (one synced from another director).
    fn install_template(
        &mut self,
        key: &PersistKey,
        entry: &PersistEntry,
    ) -> Result<(), DataplaneError>;
    /// Whether adopted tables wait for the first configuration.
    fn adoption_pending(&self) -> bool;
    /// The adopted real servers' MACs.
    fn inherited_macs(&self) -> HashMap<IpAddr, [u8; 6]>;
    /// Makes the tables match `config`; on failure they are as they were.
    fn sync(
        &mut self,
        config: &Config,
        macs: &HashMap<IpAddr, [u8; 6]>,
    ) -> Result<(), DataplaneError>;
    /// Recomputes the load-aware tables; returns how many were published.
    fn recompute(
        &mut self,
        config: &Config,
        macs: &HashMap<IpAddr, [u8; 6]>,
    ) -> Result<usize, DataplaneError>;
    /// Recomputes the load-aware tables from the live counts only (no sweep step).
    fn refresh_plans(
        &mut self,
        config: &Config,
        macs: &HashMap<IpAddr, [u8; 6]>,
    ) -> Result<usize, DataplaneError>;
    /// A service's id in the maps.
    fn service_id(&self, key: &ServiceKey) -> Option<u32>;
    /// A real server's backend slot.
    fn backend_id(&self, key: &ServiceKey, addr: SocketAddr) -> Option<u32>;
    /// A service's counters.
    fn service_counters(&self, key: &ServiceKey) -> Result<Counters, DataplaneError>;
    /// A real server's counters.
    fn backend_counters(
        &self,
        key: &ServiceKey,
        addr: SocketAddr,
    ) -> Result<Counters, DataplaneError>;
    /// Zeroes every counter (`-Z`).
    fn zero_counters(&mut self) -> Result<(), DataplaneError>;
    /// Zeroes one service's counters and its real servers' (`-Z -t`).
    fn zero_service_counters(&mut self, key: &ServiceKey) -> Result<(), DataplaneError>;
    /// Every reason counter.
    fn reasons(&self) -> Result<Vec<(Reason, u64)>, DataplaneError>;
    /// Live connections, at most `limit`.
    fn connections(&self, limit: usize) -> Result<Vec<ConnInfo>, DataplaneError>;
    /// Live persistence templates, at most `limit`, with ns until each expires.
    fn templates(
        &self,
        limit: usize,
    ) -> Result<Vec<(PersistKey, PersistEntry, u64)>, DataplaneError>;
    /// Live connection counts per backend slot.
    fn conn_counts(&mut self) -> Result<HashMap<u32, ConnCounts>, DataplaneError>;
    /// Connection-table capacity.
    fn conn_capacity(&self) -> u32;
    /// What the controller did so far.
    fn activity(&self) -> Activity;
    /// New FULLNAT connections refused for want of a port, per service id (since the maps were
    /// created; services with none left out).
    fn fullnat_exhausted(&self) -> Result<HashMap<u32, u64>, DataplaneError>;
    /// The local address in slot `slot` of service `service_id` (FULLNAT), as placed.
    fn local_addr(&self, service_id: u32, slot: u8) -> Option<IpAddr>;
    /// TCP packets that arrived mid-flow for a connection the table did not have, per service
    /// id (services with none left out).
    fn midflow_misses(&self) -> Result<HashMap<u32, u64>, DataplaneError>;
    /// The connection table's fill: live entries from the live counts of the last
    /// recomputation period, all entries as the last sweep cycle read them.
    fn table_fill(&self) -> TableFill;
    /// The digest of a service's published table (None: load-aware, or not placed).
    fn table_digest(&self, key: &ServiceKey) -> Option<TableDigest>;
}

impl DataplaneOps for Dataplane {
    fn current_config(&self) -> Result<DataplaneConfig, DataplaneError> {
        Dataplane::current_config(self)
    }
    fn set_config(&mut self, cfg: DataplaneConfig) -> Result<(), DataplaneError> {
        Dataplane::set_config(self, cfg)
    }
    fn slot_generations(&self) -> HashMap<u32, u32> {
        Dataplane::slot_generations(self)
    }
    fn install_conns(&mut self, conns: &[SyncedConn]) -> Vec<Installing> {
        Dataplane::install_conns(self, conns)
    }
    fn conn_entry(&self, key: &FlowKey) -> Option<ConnEntry> {
        Dataplane::conn_entry(self, key)
    }
    fn local_slot(&self, service_id: u32, addr: IpAddr) -> Option<u8> {
        self.placement.local_slot(service_id, addr)
    }
    fn install_template(
        &mut self,
        key: &PersistKey,
        entry: &PersistEntry,
    ) -> Result<(), DataplaneError> {
        Dataplane::install_template(self, key, entry)
    }
    fn adoption_pending(&self) -> bool {
        Dataplane::adoption_pending(self)
    }
    fn inherited_macs(&self) -> HashMap<IpAddr, [u8; 6]> {
        Dataplane::inherited_macs(self)
    }
    fn sync(
        &mut self,
        config: &Config,
        macs: &HashMap<IpAddr, [u8; 6]>,
    ) -> Result<(), DataplaneError> {
        Dataplane::sync(self, config, macs)
    }
    fn recompute(
        &mut self,
        config: &Config,
        macs: &HashMap<IpAddr, [u8; 6]>,
    ) -> Result<usize, DataplaneError> {
        Dataplane::recompute(self, config, macs)
    }
    fn refresh_plans(
        &mut self,
        config: &Config,
        macs: &HashMap<IpAddr, [u8; 6]>,
    ) -> Result<usize, DataplaneError> {
        Dataplane::refresh_plans(self, config, macs)
    }
    fn service_id(&self, key: &ServiceKey) -> Option<u32> {
        Dataplane::service_id(self, key)
    }
    fn backend_id(&self, key: &ServiceKey, addr: SocketAddr) -> Option<u32> {
        Dataplane::backend_id(self, key, addr)
    }
    fn service_counters(&self, key: &ServiceKey) -> Result<Counters, DataplaneError> {
        Dataplane::service_counters(self, key)
    }
    fn backend_counters(
        &self,
        key: &ServiceKey,
        addr: SocketAddr,
    ) -> Result<Counters, DataplaneError> {
        Dataplane::backend_counters(self, key, addr)
    }
    fn zero_counters(&mut self) -> Result<(), DataplaneError> {
        Dataplane::zero_counters(self)
    }
    fn zero_service_counters(&mut self, key: &ServiceKey) -> Result<(), DataplaneError> {
        Dataplane::zero_service_counters(self, key)
    }
    fn reasons(&self) -> Result<Vec<(Reason, u64)>, DataplaneError> {
        Dataplane::reasons(self)
    }
    fn connections(&self, limit: usize) -> Result<Vec<ConnInfo>, DataplaneError> {
        Dataplane::connections(self, limit)
    }
    fn templates(
        &self,
        limit: usize,
    ) -> Result<Vec<(PersistKey, PersistEntry, u64)>, DataplaneError> {
        Dataplane::templates(self, limit)
    }
    fn conn_counts(&mut self) -> Result<HashMap<u32, ConnCounts>, DataplaneError> {
        Dataplane::conn_counts(self)
    }
    fn conn_capacity(&self) -> u32 {
        Dataplane::conn_capacity(self)
    }
    fn activity(&self) -> Activity {
        Dataplane::activity(self)
    }
    fn fullnat_exhausted(&self) -> Result<HashMap<u32, u64>, DataplaneError> {
        Dataplane::fullnat_exhausted(self)
    }
    fn local_addr(&self, service_id: u32, slot: u8) -> Option<IpAddr> {
        Dataplane::local_addr(self, service_id, slot)
    }
    fn midflow_misses(&self) -> Result<HashMap<u32, u64>, DataplaneError> {
        Dataplane::midflow_misses(self)
    }
    fn table_fill(&self) -> TableFill {
        Dataplane::table_fill(self)
    }
    fn table_digest(&self, key: &ServiceKey) -> Option<TableDigest> {
        self.placement.table_digest(key)
    }
}
