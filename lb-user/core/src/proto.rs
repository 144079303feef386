//! The control-socket protocol between xvsadm and xvsd: one JSON request per line, one JSON
//! response per line. Every request carries the protocol version; a daemon refuses a version it
//! does not speak with a clear error.

use std::{collections::BTreeMap, net::SocketAddr};

use serde::{Deserialize, Serialize};

use crate::{
    check::{CheckKind, CheckSpec},
    estimator::Rates,
    health::HealthState,
    model::{
        Change, ForwardMethod, LocalAddr, Persistence, SchedFlags, Scheduler, ServiceKey, Timeouts,
        VirtualAddr,
    },
    scheduler::digest::TableDigest,
    stats::Counters,
};

/// The version this build speaks.
/// 2: service groups (ServiceKey may be a mark), thresholds, persistence, connection listing.
/// 3: rate estimates in listings, `-Z` of one service (a version-2 daemon would zero them all).
/// 4: apply_config and reload (the configuration file).
/// 5: health checks and sorry servers (changes and listings).
/// 6: FULLNAT (the `fullnat` forwarding method, local-address changes, local addresses in
///    listings and connections): a version-5 daemon would not read them.
/// 7: quorum and hysteresis (`SetQuorum`), announcements and quorum states in listings, the
///    director's drain; connection-sync daemons (`--start-daemon`, `--stop-daemon`;
///    `sync_daemons` in listings).
/// 8: whether the peers' tables are held (`SyncedTable`, `xvsadm synced`).
pub const PROTOCOL_VERSION: u32 = 8;

/// Largest request line the daemon reads.
pub const MAX_REQUEST_BYTES: usize = 64 << 20;

/// Default control socket path in the host's network namespace.
pub const DEFAULT_SOCKET: &str = "/run/xvs/xvsd.sock";

/// The default control socket of this process's network namespace: [`DEFAULT_SOCKET`] in the
/// host's, `/run/xvs/netns/NAME/xvsd.sock` in another, so xvsd and xvsadm run in one namespace
/// find each other and directors in two namespaces do not collide.
pub fn default_socket() -> std::path::PathBuf {
    crate::netns::default_path("/run/xvs", "xvsd.sock")
}

/// A request from the CLI.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// PROTOCOL_VERSION of the client.
    pub version: u32,
    /// What to do.
    pub command: Command,
}

impl Request {
    /// A request at this build's protocol version.
    pub fn new(command: Command) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            command,
        }
    }
}

/// What a client can ask.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Apply changes as one transaction.
    Apply {
        /// The changes, in order.
        changes: Vec<Change>,
    },
    /// The configuration with live counters.
    List,
    /// Zero the packet, byte and connection counters and the rate estimates (`-Z`), of one
    /// service and its real servers or of everything.
    Zero {
        /// Only this service (`-Z -t VIP:port`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<ServiceKey>,
    },
    /// Live connections (`-L -c`).
    Connections,
    /// Set connection timeouts in seconds (`--set`); None keeps a value.
    SetTimeouts {
        /// Established TCP.
        tcp: Option<u64>,
        /// TCP after a FIN.
        tcpfin: Option<u64>,
        /// UDP.
        udp: Option<u64>,
    },
    /// Make the running configuration this one (a configuration file's contents): only the
    /// difference is applied, as one transaction (`xvsadm apply -f`).
    ApplyConfig {
        /// The whole desired configuration.
        state: crate::state::DesiredState,
        /// Only compute the difference.
        #[serde(default)]
        dry_run: bool,
    },
    /// Start a connection-sync daemon (`--start-daemon`); saved, so a restart resumes it.
    StartDaemon {
        /// Its settings as given.
        daemon: crate::sync::daemon::DaemonConfig,
    },
    /// Stop the connection-sync daemon of this role (`--stop-daemon`).
    StopDaemon {
        /// Master or backup.
        role: crate::sync::Role,
    },
    /// Re-read the file xvsd was started with (`--config`) and apply the difference, as
    /// SIGHUP does (`xvsadm reload`).
    Reload {
        /// Only compute the difference.
        #[serde(default)]
        dry_run: bool,
    },
    /// Drain the director (withdraw every announcement; forwarding goes on) or end its drain
    /// (`xvsadm drain`, `xvsadm drain --cancel`).
    Drain {
        /// Drained from now on.
        drained: bool,
    },
    /// Whether this director holds its peers' connection tables (`xvsadm synced`); `request`
    /// asks them for their tables again first.
    SyncedTable {
        /// Ask the peers again.
        #[serde(default)]
        request: bool,
    },
}

/// The daemon's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Response {
    /// Done; warnings are worth showing to the operator.
    Ok {
        /// Things that were accepted but are not fully in effect yet.
        warnings: Vec<String>,
    },
    /// The table.
    Listing(Listing),
    /// Live connections.
    Connections {
        /// One per connection-table entry.
        conns: Vec<ConnStatus>,
    },
    /// What apply_config or reload changed, or would change on a dry run.
    Diff {
        /// ipvsadm rules, one per added, removed or changed service and real server.
        lines: Vec<String>,
        /// Whether they were applied (false: a dry run, or nothing to do).
        applied: bool,
        /// As for Ok.
        warnings: Vec<String>,
    },
    /// Where the wait for the peers' tables stands.
    SyncedTable {
        /// The wait's state.
        table: crate::sync::table::TableStatus,
    },
    /// Refused; nothing changed.
    Error {
        /// Why.
        message: String,
    },
}

/// One live connection, as `ipvsadm -L -c` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnStatus {
    /// TCP or UDP.
    pub protocol: crate::model::Protocol,
    /// Client address and port.
    pub client: SocketAddr,
    /// VIP and port.
    pub virtual_addr: SocketAddr,
    /// Real server.
    pub real: SocketAddr,
    /// FULLNAT: the local address and port the connection was given toward the real server
    /// (None for the other methods; then `-L -c` keeps ipvsadm's layout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<SocketAddr>,
    /// IPVS's state name (ESTABLISHED, SYN_RECV, FIN_WAIT, CLOSE, UDP).
    pub state: String,
    /// Seconds until the entry expires.
    pub expires_s: u64,
}

/// Everything `-L` shows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Listing {
    /// Connection-table capacity (ipvsadm's "size=").
    pub conn_table_size: u32,
    /// Services in the order they were added.
    pub services: Vec<ServiceStatus>,
    /// Data-plane outcome counters by reason name.
    pub reasons: BTreeMap<String, u64>,
    /// Connection timeouts in seconds.
    pub timeouts: Timeouts,
    /// The connection table's fill (from the walk this listing made) and its rates.
    #[serde(default)]
    pub table: crate::pressure::TableStatus,
    /// The director is drained (`xvsadm drain`): it announces nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drained: bool,
    /// What this director announces to its routers, when xvsd announces (--announce-table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<Box<AnnounceStatus>>,
    /// The running connection-sync daemons (`-L --daemon`), with their counters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sync_daemons: Vec<crate::sync::daemon::DaemonStatus>,
}

/// This director's announcements (lb_core::announce).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnounceStatus {
    /// The kernel routing table xvsd keeps them in, for the BGP daemon to export.
    pub table: u32,
    /// The VIPs announced (a route each in the table).
    pub announced: Vec<std::net::IpAddr>,
    /// The VIPs of services below their quorum on this director, not announced.
    pub withdrawn: Vec<std::net::IpAddr>,
}

/// Where a service stands against its quorum (keepalived's quorum and hysteresis).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumStatus {
    /// The live weight it needs.
    pub quorum: u32,
    /// The flap dampener.
    pub hysteresis: u32,
    /// Whether it has its quorum now (None until the daemon has applied a configuration).
    pub up: Option<bool>,
    /// The weights of its live real servers, added up.
    pub live_weight: u64,
}

/// One service with its counters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Protocol, VIP, port; or a group's mark.
    pub key: ServiceKey,
    /// A group's matches (what traffic it takes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<VirtualAddr>,
    /// Scheduler.
    pub scheduler: Scheduler,
    /// Scheduler flags.
    #[serde(default, skip_serializing_if = "SchedFlags::is_empty")]
    pub flags: SchedFlags,
    /// Persistence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence: Option<Persistence>,
    /// Traffic counters.
    pub stats: Counters,
    /// Rates as IPVS estimates them (`--rate`).
    #[serde(default)]
    pub rates: Rates,
    /// Real servers.
    pub reals: Vec<RealStatus>,
    /// The default health check of its real servers, as configured.
    #[serde(default, skip_serializing_if = "CheckSpec::is_empty")]
    pub check: CheckSpec,
    /// The sorry server, when one is configured: in the tables (`table: active`) while no real
    /// server is up with a weight above 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sorry_server: Option<RealStatus>,
    /// Its quorum as configured and whether it has it (None from a daemon that does not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<QuorumStatus>,
    /// FULLNAT local addresses, as configured (`-G` lists them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub laddrs: Vec<LocalAddr>,
    /// FULLNAT: new connections refused for want of a local port since the data plane was
    /// created (a metric, and xvsd logs each increase).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub fullnat_refused: u64,
    /// TCP packets that arrived mid-flow for a connection of this service the table did not
    /// have (each one a connection that may have moved to another real server), since the
    /// service was placed or its counters zeroed.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub midflow_misses: u64,
    /// The digest of the scheduler table the data plane applies, its slots named by real-server
    /// address and port (`scheduler::digest`): equal on directors that place every new flow
    /// the same way. None (`null`) for the load-aware schedulers, and for a service not placed.
    #[serde(default)]
    pub table_digest: Option<TableDigest>,
}

/// One real server with its counters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RealStatus {
    /// Address and port.
    pub addr: SocketAddr,
    /// Forwarding method.
    pub forward: ForwardMethod,
    /// Configured weight.
    pub weight: u32,
    /// Upper connection threshold (0 = none).
    #[serde(default)]
    pub u_threshold: u32,
    /// Lower connection threshold.
    #[serde(default)]
    pub l_threshold: u32,
    /// Live persistence templates bound to this server (ipvsadm's PersistConn).
    #[serde(default)]
    pub persist_conns: u64,
    /// ESTABLISHED connections.
    pub active_conns: u64,
    /// Other live connections.
    pub inactive_conns: u64,
    /// Traffic counters.
    pub stats: Counters,
    /// Rates as IPVS estimates them (`--rate`).
    #[serde(default)]
    pub rates: Rates,
    /// Next-hop MAC address, once resolved; until then the server takes no new connections.
    pub mac: Option<String>,
    /// Its health check as configured (what -S writes; empty: the service's).
    #[serde(default, skip_serializing_if = "CheckSpec::is_empty")]
    pub check: CheckSpec,
    /// Where health checks left it in the scheduler tables.
    #[serde(default)]
    pub table: Membership,
    /// Its health, when it is checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
}

/// Where a real server is in the scheduler tables the data plane runs: what `-L` shows, as
/// keepalived would leave IPVS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Membership {
    /// In the tables with its configured weight (up, or not checked; a sorry server in use).
    #[default]
    Active,
    /// Down with `--check-inhibit`: in the tables with weight 0; its connections stay.
    Inhibited,
    /// Down: out of the tables, as keepalived removes it from IPVS (a sorry server not in use).
    Removed,
}

/// A real server's health as its checker sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// The checker.
    pub kind: CheckKind,
    /// What it checks: `198.51.100.11:80`, `GET http://198.51.100.11:80/health`, or the command.
    pub target: String,
    /// Up or down.
    pub state: HealthState,
    /// Seconds in this state.
    pub since_s: f64,
    /// The last attempt's outcome: `ok`, or why it failed (`timeout`, `connection refused`,
    /// `status 503`, `digest mismatch`, `exit 1`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<String>,
    /// How long the last attempt took, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_latency_s: Option<f64>,
    /// Attempts made.
    pub checks: u64,
    /// Attempts that failed.
    pub failures: u64,
    /// Changes between up and down.
    pub changes: u64,
    /// Attempt durations (for the metrics' histogram).
    #[serde(default, skip_serializing)]
    pub latency: crate::health::LatencyHistogram,
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}
