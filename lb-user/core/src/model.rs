//! The desired state: virtual services, their real servers and schedulers. The controller holds
//! it as the source of truth; every change is validated here before anything is touched.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::check::{self, CheckSpec};

/// Transport protocol of a virtual service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP (`-t`).
    Tcp,
    /// UDP (`-u`).
    Udp,
}

impl Protocol {
    /// IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => lb_common::PROTO_TCP,
            Protocol::Udp => lb_common::PROTO_UDP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

/// A (protocol, VIP, port) that packets are matched against: a normal service's identity, or
/// one of the matches of a service group. Port 0 means every port of the VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VirtualAddr {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// VIP and port.
    pub addr: SocketAddr,
}

impl fmt::Display for VirtualAddr {
    /// The `--match` spelling: `tcp:203.0.113.10:80`, `udp:[2001:db8::10]:53`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        write!(f, "{proto}:{}", self.addr)
    }
}

impl FromStr for VirtualAddr {
    type Err = ConfigError;
    /// Parses `tcp:VIP:port`, `udp:VIP:port`, `tcp:[IPv6]:port` (port 0 = every port).
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::BadMatch(s.to_string());
        let (proto, addr) = s.split_once(':').ok_or_else(bad)?;
        let protocol = match proto.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            _ => return Err(bad()),
        };
        let addr = addr.parse::<SocketAddr>().map_err(|_| bad())?;
        Ok(VirtualAddr { protocol, addr })
    }
}

/// Identifies a virtual service: a normal service by protocol, VIP and port (`-t`/`-u`), or a
/// service group by its mark (`-f`, as IPVS's firewall-mark services).
///
/// Untagged in JSON so that a normal service keeps its `{"protocol":..,"addr":..}` form and a
/// group reads `{"fwmark":1}` (`"ipv6":true` for an IPv6 group).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ServiceKey {
    /// `-t`/`-u`: one protocol, VIP and port.
    Addr {
        /// TCP or UDP.
        protocol: Protocol,
        /// VIP and port.
        addr: SocketAddr,
    },
    /// `-f MARK [-6]`: a service group; what it matches is its `matches` list.
    Fwmark {
        /// The mark, > 0.
        fwmark: u32,
        /// IPv6 group (`-6`): its matches and real servers are IPv6.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        ipv6: bool,
    },
}

impl ServiceKey {
    /// A normal service's key.
    pub fn new(protocol: Protocol, addr: SocketAddr) -> ServiceKey {
        ServiceKey::Addr { protocol, addr }
    }

    /// A service group's key.
    pub fn fwmark(fwmark: u32, ipv6: bool) -> ServiceKey {
        ServiceKey::Fwmark { fwmark, ipv6 }
    }

    /// Whether this is a service group (`-f`).
    pub fn is_group(&self) -> bool {
        matches!(self, ServiceKey::Fwmark { .. })
    }

    /// Whether the service is IPv4 (a group by its `-6` flag).
    pub fn is_ipv4(&self) -> bool {
        match self {
            ServiceKey::Addr { addr, .. } => addr.is_ipv4(),
            ServiceKey::Fwmark { ipv6, .. } => !ipv6,
        }
    }

    /// The service's port: a group has none (0), as an IPVS firewall-mark service.
    pub fn port(&self) -> u16 {
        match self {
            ServiceKey::Addr { addr, .. } => addr.port(),
            ServiceKey::Fwmark { .. } => 0,
        }
    }

    /// A normal service's (protocol, VIP, port); None for a group.
    pub fn virtual_addr(&self) -> Option<VirtualAddr> {
        match *self {
            ServiceKey::Addr { protocol, addr } => Some(VirtualAddr { protocol, addr }),
            ServiceKey::Fwmark { .. } => None,
        }
    }
}

impl From<VirtualAddr> for ServiceKey {
    fn from(v: VirtualAddr) -> ServiceKey {
        ServiceKey::new(v.protocol, v.addr)
    }
}

impl fmt::Display for ServiceKey {
    /// `TCP 203.0.113.10:80`, `FWM 1`, `FWM 1 IPv6`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceKey::Addr { protocol, addr } => write!(f, "{protocol} {addr}"),
            ServiceKey::Fwmark { fwmark, ipv6 } => {
                write!(f, "FWM {fwmark}{}", if *ipv6 { " IPv6" } else { "" })
            }
        }
    }
}

/// How new connections are spread over real servers (`-s`): IPVS's schedulers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    /// Round robin over real servers with a weight above zero.
    Rr,
    /// Weighted round robin, in IPVS's order.
    Wrr,
    /// Least connections.
    Lc,
    /// Weighted least connections (ipvsadm's default).
    Wlc,
    /// Locality-based least connections (by destination address).
    Lblc,
    /// Locality-based least connections with replication.
    Lblcr,
    /// Destination hashing.
    Dh,
    /// Source hashing.
    Sh,
    /// Shortest expected delay.
    Sed,
    /// Never queue.
    Nq,
    /// Weighted failover.
    Fo,
    /// Weighted overflow.
    Ovf,
    /// Maglev hashing.
    Mh,
    /// Weighted random twos choice.
    Twos,
}

/// Every scheduler IPVS has, by ipvsadm's name.
pub const IPVS_SCHEDULERS: &[&str] = &[
    "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos",
];

/// ipvsadm's default scheduler when `-s` is not given.
pub const DEFAULT_SCHEDULER: Scheduler = Scheduler::Wlc;

impl Scheduler {
    /// All schedulers, in IPVS_SCHEDULERS order.
    pub const ALL: [Scheduler; 14] = [
        Scheduler::Rr,
        Scheduler::Wrr,
        Scheduler::Lc,
        Scheduler::Wlc,
        Scheduler::Lblc,
        Scheduler::Lblcr,
        Scheduler::Dh,
        Scheduler::Sh,
        Scheduler::Sed,
        Scheduler::Nq,
        Scheduler::Fo,
        Scheduler::Ovf,
        Scheduler::Mh,
        Scheduler::Twos,
    ];

    /// ipvsadm's name.
    pub fn name(self) -> &'static str {
        let i = Scheduler::ALL
            .iter()
            .position(|s| *s == self)
            .expect("listed");
        IPVS_SCHEDULERS[i]
    }
}

impl FromStr for Scheduler {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        IPVS_SCHEDULERS
            .iter()
            .position(|n| *n == s)
            .map(|i| Scheduler::ALL[i])
            .ok_or_else(|| ConfigError::UnknownScheduler(s.to_string()))
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Scheduler flags (`-b`), as ipvsadm names them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SchedFlags {
    /// sh-fallback: sh picks another server when the hashed one is unavailable.
    #[serde(default)]
    pub sh_fallback: bool,
    /// sh-port: sh hashes the source port too.
    #[serde(default)]
    pub sh_port: bool,
    /// mh-fallback: mh picks another server when the hashed one is unavailable.
    #[serde(default)]
    pub mh_fallback: bool,
    /// mh-port: mh hashes the source port too.
    #[serde(default)]
    pub mh_port: bool,
}

impl SchedFlags {
    /// Parses ipvsadm's comma-separated `-b` list.
    pub fn parse(list: &str) -> Result<SchedFlags, ConfigError> {
        let mut f = SchedFlags::default();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "sh-fallback" => f.sh_fallback = true,
                "sh-port" => f.sh_port = true,
                "mh-fallback" => f.mh_fallback = true,
                "mh-port" => f.mh_port = true,
                other => return Err(ConfigError::BadSchedFlag(other.to_string())),
            }
        }
        Ok(f)
    }

    /// Whether no flag is set.
    pub fn is_empty(&self) -> bool {
        *self == SchedFlags::default()
    }

    /// ipvsadm's names of the flags that are set, in its order.
    pub fn names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.sh_fallback {
            v.push("sh-fallback");
        }
        if self.sh_port {
            v.push("sh-port");
        }
        if self.mh_fallback {
            v.push("mh-fallback");
        }
        if self.mh_port {
            v.push("mh-port");
        }
        v
    }
}

/// How packets reach a real server (`-g`, `-i`, `-m`, `-b`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardMethod {
    /// Direct routing ("gatewaying", `-g`): the Ethernet header is rewritten, nothing else.
    Dr,
    /// Tunnelling (`-i`): the packet is encapsulated to the real server, which may be routed.
    Tunnel(Tunnel),
    /// Masquerading (NAT, `-m`): the director rewrites the destination address and port; the
    /// real server routes its replies back through the director, which rewrites their source.
    /// The real server keeps the port it was given (0: the client's destination port).
    Nat,
    /// FULLNAT (`-b` on -a/-e, as DPVS's ipvsadm; `--fullnat`): both ends rewritten, the
    /// client's address and port replaced by a local address and port from the service's pool
    /// ([`Service::laddrs`]), so replies come back to the director without any route on the
    /// real server. The real server keeps its port as with NAT (0: the client's destination
    /// port).
    FullNat,
}

impl ForwardMethod {
    /// Whether a real server of this method is known by its address and port and keeps its own
    /// port (NAT and FULLNAT rewrite the destination port); DR and tunnels send to the IP alone.
    pub fn keeps_port(self) -> bool {
        matches!(self, ForwardMethod::Nat | ForwardMethod::FullNat)
    }
}

/// Largest number of local addresses of one FULLNAT service.
pub const MAX_LADDRS: usize = 64;

/// A range of source ports (inclusive), written `LO-HI`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    /// First port, >= 1.
    pub lo: u16,
    /// Last port, >= lo.
    pub hi: u16,
}

impl PortRange {
    /// The ports handed out when none are given: every unprivileged port.
    pub const DEFAULT: PortRange = PortRange {
        lo: 1024,
        hi: 65535,
    };

    /// How many ports the range has.
    pub fn len(&self) -> u32 {
        (self.hi as u32 + 1).saturating_sub(self.lo as u32)
    }

    /// Whether the range has no port (lo > hi; never true of a checked range).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether this is [`PortRange::DEFAULT`] (not written in JSON, files and rules).
    pub fn is_default(&self) -> bool {
        *self == PortRange::DEFAULT
    }

    /// The range if it is usable: 1 <= lo <= hi (port 0 is no port to send from).
    pub fn checked(self) -> Result<PortRange, ConfigError> {
        if self.lo == 0 || self.lo > self.hi {
            return Err(ConfigError::BadPortRange(self.to_string()));
        }
        Ok(self)
    }
}

impl Default for PortRange {
    fn default() -> Self {
        PortRange::DEFAULT
    }
}

impl fmt::Display for PortRange {
    /// `LO-HI`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.lo, self.hi)
    }
}

impl FromStr for PortRange {
    type Err = ConfigError;
    /// Parses `LO-HI` (or a single port `P`, the range P-P) and checks it.
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::BadPortRange(s.to_string());
        let (lo, hi) = s.split_once('-').unwrap_or((s, s));
        let lo = lo.trim().parse::<u16>().map_err(|_| bad())?;
        let hi = hi.trim().parse::<u16>().map_err(|_| bad())?;
        PortRange { lo, hi }.checked().map_err(|_| bad())
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A FULLNAT service's local address (DPVS `--add-laddr -z ADDR -t VIP:PORT [-F IFACE]`): the
/// source address, with a port of `ports`, that the director gives the connections it forwards
/// to FULLNAT real servers of the address's family.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalAddr {
    /// The address.
    pub addr: IpAddr,
    /// Source ports handed out on this address (inclusive); default [`PortRange::DEFAULT`].
    #[serde(default, skip_serializing_if = "PortRange::is_default")]
    pub ports: PortRange,
    /// The interface it lives on (DPVS -F); informational, may be None.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iface: Option<String>,
}

impl LocalAddr {
    /// A local address with the default ports and no interface.
    pub fn new(addr: IpAddr) -> LocalAddr {
        LocalAddr {
            addr,
            ports: PortRange::DEFAULT,
            iface: None,
        }
    }
}

/// Whether `name` can be a Linux interface name (IFNAMSIZ: at most 15 bytes; no '/', ':' or
/// white space), so that -S can write it as one word.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

/// `IPv4` or `IPv6`, as errors name a family.
fn family_name(ipv4: bool) -> &'static str {
    if ipv4 {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// The encapsulation of a tunnelled real server (`--tun-type`, `--tun-port`, `--tun-csum`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tunnel {
    /// IPIP (IP-in-IP, IP6IP6 and the mixed families) or GUE.
    #[serde(rename = "type")]
    pub kind: TunnelKind,
    /// GUE's UDP destination port (0 for IPIP).
    #[serde(default, skip_serializing_if = "is_zero_u16")]
    pub port: u16,
    /// GUE over IPv4: fill the outer UDP checksum (`--tun-csum`; ipvsadm's default is
    /// `--tun-nocsum`). Over IPv6 the checksum is always filled.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub csum: bool,
}

fn is_zero_u16(v: &u16) -> bool {
    *v == 0
}

impl Tunnel {
    /// Plain IP-in-IP.
    pub const IPIP: Tunnel = Tunnel {
        kind: TunnelKind::Ipip,
        port: 0,
        csum: false,
    };
}

/// `--tun-type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelKind {
    /// IP in IP: protocol 4 (inner IPv4) or 41 (inner IPv6) right after the outer header.
    Ipip,
    /// Generic UDP Encapsulation (variant 0, as IPVS): outer UDP to a port, 4-byte GUE header.
    Gue,
}

impl ForwardMethod {
    /// The name ipvsadm prints in the Forward column.
    pub fn ipvsadm_name(self) -> &'static str {
        match self {
            ForwardMethod::Dr => "Route",
            ForwardMethod::Tunnel(_) => "Tunnel",
            ForwardMethod::Nat => "Masq",
            // As DPVS's ipvsadm prints it (fwd_name).
            ForwardMethod::FullNat => "FullNat",
        }
    }
}

/// Largest weight ipvsadm accepts.
pub const MAX_WEIGHT: u32 = 65535;

/// One real server of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RealServer {
    /// Address and port: the service's port by direct routing and tunnelling; kept as given by
    /// masquerading and in a group (0 = the client's destination port), as ipvsadm stores it.
    pub addr: SocketAddr,
    /// Weight; 0 quiesces the server (no new connections, established ones stay).
    pub weight: u32,
    /// Forwarding method.
    pub forward: ForwardMethod,
    /// Upper connection threshold (`-x`): above it the server takes no new connections.
    /// 0 = no limit.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub u_threshold: u32,
    /// Lower connection threshold (`-y`): an overloaded server takes new connections again
    /// below it. 0 = three quarters of the upper threshold, as IPVS.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub l_threshold: u32,
    /// Its health check (xvs, keepalived's checkers): what is given here, over the service's
    /// default check ([`Service::check`]); empty: the service's.
    #[serde(default, skip_serializing_if = "CheckSpec::is_empty")]
    pub check: CheckSpec,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl RealServer {
    /// The destination port a connection sent to `vport` is forwarded to: a masquerading or
    /// FULLNAT server's own port, or `vport` when that is 0 (IPVS's
    /// `dest->port ? dest->port : vport`); the other methods leave the port alone (`vport`).
    pub fn dest_port(&self, vport: u16) -> u16 {
        match self.forward {
            ForwardMethod::Nat | ForwardMethod::FullNat if self.addr.port() != 0 => {
                self.addr.port()
            }
            _ => vport,
        }
    }

    /// A direct-routing real server without thresholds.
    pub fn dr(addr: SocketAddr, weight: u32) -> RealServer {
        RealServer {
            addr,
            weight,
            forward: ForwardMethod::Dr,
            u_threshold: 0,
            l_threshold: 0,
            check: CheckSpec::default(),
        }
    }
}

impl Change {
    /// `-A` with a scheduler and nothing else.
    pub fn add_service(key: ServiceKey, scheduler: Scheduler) -> Change {
        Change::AddService {
            key,
            scheduler,
            flags: SchedFlags::default(),
            persistence: None,
        }
    }
}

/// ipvsadm's default persistence timeout, seconds.
pub const DEFAULT_PERSISTENCE_TIMEOUT: u32 = 300;
/// ipvsadm's largest timeout (31 days), seconds.
pub const MAX_TIMEOUT: u32 = 86400 * 31;

/// Persistence (`-p [timeout] [-M netmask]`): new connections from one client network go to
/// the same real server while a template younger than the timeout binds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Persistence {
    /// Idle time after which the client network may be scheduled afresh, seconds.
    pub timeout: u32,
    /// Client prefix length that is grouped (`-M`): 32 / 128 = each client on its own.
    pub prefix: u8,
}

/// keepalived's quorum for a service: the service is up while the weights of its live real
/// servers add up to `quorum`; with `hysteresis`, it comes up only at `quorum + hysteresis` and
/// goes down only below `quorum - hysteresis` (keepalived's check/ipwrapper.c
/// update_quorum_state). Up, its VIP is announced (xvsd --announce-table) and its sorry server
/// stays out; down, the reverse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Quorum {
    /// The live weight the service needs (keepalived's default: 1).
    pub quorum: u32,
    /// The flap dampener around it (keepalived's default: 0).
    pub hysteresis: u32,
}

impl Default for Quorum {
    fn default() -> Self {
        Quorum {
            quorum: 1,
            hysteresis: 0,
        }
    }
}

impl Quorum {
    /// Whether these are keepalived's defaults (quorum 1, hysteresis 0).
    pub fn is_default(&self) -> bool {
        *self == Quorum::default()
    }

    /// Refuses a hysteresis that reaches the quorum: the down threshold would be 0 or less, so
    /// the service could never lose its quorum (keepalived accepts it silently).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.hysteresis > 0 && self.hysteresis >= self.quorum {
            return Err(ConfigError::BadHysteresis {
                quorum: self.quorum,
                hysteresis: self.hysteresis,
            });
        }
        Ok(())
    }

    /// Whether a service with this quorum is up given its live weight and whether it was up
    /// (None: first evaluation, which needs `quorum + hysteresis`, as keepalived's
    /// set_quorum_states).
    pub fn up(&self, live_weight: u64, was_up: Option<bool>) -> bool {
        let (q, h) = (u64::from(self.quorum), u64::from(self.hysteresis));
        match was_up {
            Some(true) => live_weight + h >= q,
            Some(false) | None => live_weight >= q + h,
        }
    }
}

/// A virtual service and its real servers, in the order they were added.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Protocol, VIP, port; or a group's mark.
    pub key: ServiceKey,
    /// A group's matches: every (protocol, VIP, port) whose traffic is this service's. Empty
    /// for a normal service (its key is its only match).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<VirtualAddr>,
    /// Scheduler for new connections.
    pub scheduler: Scheduler,
    /// Scheduler flags (`-b`).
    #[serde(default, skip_serializing_if = "SchedFlags::is_empty")]
    pub flags: SchedFlags,
    /// Persistence, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence: Option<Persistence>,
    /// Real servers.
    pub reals: Vec<RealServer>,
    /// The default health check of its real servers (keepalived: the virtual server's settings
    /// are its real servers' defaults).
    #[serde(default, skip_serializing_if = "CheckSpec::is_empty")]
    pub check: CheckSpec,
    /// keepalived's `sorry_server`: takes new connections (direct routing) while no real
    /// server is up with a weight above 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sorry_server: Option<SocketAddr>,
    /// keepalived's `quorum` and `hysteresis`: how much live weight the service needs to be
    /// up (its VIP announced, its sorry server out).
    #[serde(default, skip_serializing_if = "Quorum::is_default")]
    pub quorum: Quorum,
    /// FULLNAT local addresses (`--add-laddr`), in the order they were added: the sources of
    /// the connections forwarded to its FULLNAT real servers. They belong to the service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub laddrs: Vec<LocalAddr>,
}

impl Service {
    /// Whether any real server forwards by masquerading (NAT): the data plane must then
    /// rewrite the replies of this service's connections on their way back through it.
    /// FULLNAT is not NAT here: see [`Service::has_fullnat`].
    pub fn has_nat(&self) -> bool {
        self.reals.iter().any(|r| r.forward == ForwardMethod::Nat)
    }

    /// Whether any real server forwards by FULLNAT.
    pub fn has_fullnat(&self) -> bool {
        self.reals
            .iter()
            .any(|r| r.forward == ForwardMethod::FullNat)
    }

    /// Whether the service has a local address of this family (`ipv4`).
    fn has_laddr_of(&self, ipv4: bool) -> bool {
        self.laddrs.iter().any(|l| l.addr.is_ipv4() == ipv4)
    }
}

/// The whole desired configuration, services in the order they were added. Services are
/// found by key, and traffic by (protocol, VIP, port), through indexes kept with every change:
/// a transaction of 10,000 changes is not quadratic.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Virtual services.
    services: Vec<Service>,
    /// Service key -> position in `services`.
    index: HashMap<ServiceKey, usize>,
    /// What each (protocol, VIP, port) is taken by: its normal service, or the group matching it.
    owners: HashMap<VirtualAddr, ServiceKey>,
}

impl PartialEq for Config {
    /// The same services in the same order (the indexes follow from them).
    fn eq(&self, other: &Self) -> bool {
        self.services == other.services
    }
}

impl Eq for Config {}

/// How a configuration is written: its services, as a list.
#[derive(Serialize)]
struct ConfigOut<'a> {
    services: &'a [Service],
}

#[derive(Deserialize)]
struct ConfigIn {
    services: Vec<Service>,
}

impl Serialize for Config {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ConfigOut {
            services: &self.services,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Config {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Config::from_services(ConfigIn::deserialize(d)?.services))
    }
}

/// One change to the configuration, as ipvsadm's commands express them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    /// `-A`: add a virtual service.
    AddService {
        /// The service.
        key: ServiceKey,
        /// Its scheduler.
        scheduler: Scheduler,
        /// Scheduler flags.
        #[serde(default, skip_serializing_if = "SchedFlags::is_empty")]
        flags: SchedFlags,
        /// Persistence.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        persistence: Option<Persistence>,
    },
    /// `-E`: change a service's options.
    EditService {
        /// The service.
        key: ServiceKey,
        /// New scheduler (None keeps the current one).
        scheduler: Option<Scheduler>,
        /// New flags (None keeps them).
        #[serde(default)]
        flags: Option<SchedFlags>,
        /// New persistence: Some(None) makes the service non-persistent, None keeps it.
        #[serde(default)]
        persistence: Option<Option<Persistence>>,
    },
    /// `-D`: delete a service and its real servers.
    DeleteService {
        /// The service.
        key: ServiceKey,
    },
    /// `-C`: delete every service.
    Clear,
    /// `--match` on `-A -f`/`-E -f`: replaces what a service group matches.
    SetMatches {
        /// The group.
        key: ServiceKey,
        /// Its new matches (empty: the group matches no traffic).
        matches: Vec<VirtualAddr>,
    },
    /// `-a`: add a real server to a service.
    AddReal {
        /// The service.
        service: ServiceKey,
        /// The real server.
        real: RealServer,
    },
    /// `-e`: change a real server's weight or forwarding method.
    EditReal {
        /// The service.
        service: ServiceKey,
        /// The real server's address.
        addr: SocketAddr,
        /// New weight (None keeps the current one).
        weight: Option<u32>,
        /// New forwarding method (None keeps the current one).
        forward: Option<ForwardMethod>,
        /// New upper threshold (None keeps it).
        #[serde(default)]
        u_threshold: Option<u32>,
        /// New lower threshold (None keeps it).
        #[serde(default)]
        l_threshold: Option<u32>,
        /// New health check of its own (None keeps it; an empty spec: the service's).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        check: Option<CheckSpec>,
    },
    /// `-d`: delete a real server from a service.
    DeleteReal {
        /// The service.
        service: ServiceKey,
        /// The real server's address.
        addr: SocketAddr,
    },
    /// `--check...` on `-A`/`-E`: replaces a service's default health check.
    SetCheck {
        /// The service.
        key: ServiceKey,
        /// Its real servers' default check (empty: none).
        check: CheckSpec,
    },
    /// `--sorry-server` on `-A`/`-E`: sets or (None) drops a service's sorry server.
    SetSorryServer {
        /// The service.
        key: ServiceKey,
        /// The sorry server (direct routing; port as a real server's).
        sorry_server: Option<SocketAddr>,
    },
    /// `--quorum`/`--hysteresis` on `-A`/`-E`: sets a service's quorum.
    SetQuorum {
        /// The service.
        key: ServiceKey,
        /// Its quorum and hysteresis.
        quorum: Quorum,
    },
    /// `-P`/`--add-laddr`: adds a FULLNAT local address to a service.
    AddLocalAddr {
        /// The service.
        service: ServiceKey,
        /// The local address.
        laddr: LocalAddr,
    },
    /// `-Q`/`--del-laddr`: deletes a FULLNAT local address of a service.
    DelLocalAddr {
        /// The service.
        service: ServiceKey,
        /// The local address.
        addr: IpAddr,
    },
}

/// Why a change was refused. Messages follow ipvsadm's wording where ipvsadm has one.
#[derive(Debug, Error, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfigError {
    /// `-A` for a service that exists.
    #[error("Service already exists: {0}")]
    ServiceExists(String),
    /// The named service does not exist.
    #[error("No such service: {0}")]
    NoSuchService(String),
    /// `-a` for a real server the service already has.
    #[error("Destination already exists: {0}")]
    RealExists(String),
    /// The named real server does not exist in the service.
    #[error("No such destination: {0}")]
    NoSuchReal(String),
    /// Not a scheduler IPVS knows.
    #[error(
        "Scheduler not found: {0} (known: rr wrr lc wlc lblc lblcr dh sh sed nq fo ovf mh twos)"
    )]
    UnknownScheduler(String),
    /// A `-b` flag ipvsadm does not know.
    #[error("Invalid scheduler flag: {0} (known: sh-fallback sh-port mh-fallback mh-port)")]
    BadSchedFlag(String),
    /// Weight outside 0..=65535.
    #[error("Illegal weight specified: {0} (must be 0..=65535)")]
    BadWeight(u64),
    /// GUE without a port, or a port given for IPIP.
    #[error("{0}")]
    BadTunnel(&'static str),
    /// Real server and VIP of different families in DR mode.
    #[error(
        "Direct routing needs the real server {real} in the same address family as the VIP {vip}"
    )]
    FamilyMismatch {
        /// The real server.
        real: String,
        /// The VIP.
        vip: String,
    },
    /// Real server and VIP of different families in NAT mode (ipvsadm: "Different address
    /// family is allowed only for tunneling servers").
    #[error(
        "Masquerading (NAT) needs the real server {real} in the same address family as the VIP {vip}"
    )]
    NatFamilyMismatch {
        /// The real server.
        real: String,
        /// The VIP.
        vip: String,
    },
    /// A masquerading real server of a port-0 (every port) service with a port of its own.
    #[error(
        "Illegal port for masquerading real server {real} of {service}: a service on every port \
         sends each connection to the port it was addressed to, so its NAT real servers take \
         port 0 ({as_zero}, or no port)"
    )]
    NatPortOnPortZero {
        /// The real server as given.
        real: String,
        /// Its address with port 0, as it should be written.
        as_zero: String,
        /// The service.
        service: String,
    },
    /// `-e` to direct routing or tunnelling of a NAT real server whose port is not the
    /// service's: its address would change (ipvsadm looks the server up at the service's
    /// port and does not find it).
    #[error(
        "Real server {real} keeps its own port only with masquerading (-m): -g and -i use the \
         service's port {port}; delete it (-d) and add it again (-a)"
    )]
    PortWouldChange {
        /// The real server.
        real: String,
        /// The service's port.
        port: u16,
    },
    /// Port 0 service (all ports), which needs persistence.
    #[error("Zero port specified for non-persistent service: {0}")]
    ZeroPort(String),
    /// An address that cannot be a VIP or real server.
    #[error("Illegal address: {0}")]
    BadAddress(String),
    /// A persistence netmask longer than the address.
    #[error("Illegal netmask: /{0} is longer than the VIP's address")]
    BadNetmask(u8),
    /// A timeout outside 1..=MAX_TIMEOUT.
    #[error("Illegal timeout: {0} (must be 1..=2678400 seconds)")]
    BadTimeout(u32),
    /// Mark 0 (IPVS refuses it too).
    #[error("Illegal fwmark: 0 (must be greater than 0)")]
    BadFwmark,
    /// A `--match` that does not parse.
    #[error("Illegal match: {0} (expected tcp:VIP:port, udp:VIP:port or tcp:[IPv6]:port)")]
    BadMatch(String),
    /// `--match` for a service that is not a group.
    #[error("--match applies to service groups (-f) only, not to {0}")]
    NotAGroup(String),
    /// A match of the other address family than its group.
    #[error("Match {matched} is not of the address family of {group} (use -6 for an IPv6 group)")]
    MatchFamily {
        /// The match.
        matched: String,
        /// The group.
        group: String,
    },
    /// A (protocol, VIP, port) that another service or group already takes.
    #[error("Match {matched} is already taken by {owner}")]
    MatchTaken {
        /// The match.
        matched: String,
        /// The service or group that has it.
        owner: String,
    },
    /// A health check that cannot run as given.
    #[error("{0}")]
    BadCheck(String),
    /// A sorry server that is also a real server of the service.
    #[error("Sorry server {0} is a real server of the service")]
    SorryIsReal(String),
    /// A hysteresis that would keep the service from ever losing its quorum.
    #[error(
        "Hysteresis {hysteresis} must be below the quorum {quorum}: the service would never \
         lose its quorum"
    )]
    BadHysteresis {
        /// The quorum.
        quorum: u32,
        /// The hysteresis.
        hysteresis: u32,
    },
    /// A FULLNAT real server of the other address family than the VIP.
    #[error(
        "FULLNAT cannot reach the IPv6 real server {real} from the IPv4 VIP {vip}: an IPv6 VIP \
         may have IPv4 FULLNAT real servers (NAT64), not the reverse"
    )]
    FullNatFamilyMismatch {
        /// The real server.
        real: String,
        /// The VIP.
        vip: String,
    },
    /// A FULLNAT real server of a port-0 (every port) service with a port of its own.
    #[error(
        "Illegal port for FULLNAT real server {real} of {service}: a service on every port \
         sends each connection to the port it was addressed to, so its FULLNAT real servers \
         take port 0 ({as_zero}, or no port)"
    )]
    FullNatPortOnPortZero {
        /// The real server as given.
        real: String,
        /// Its address with port 0, as it should be written.
        as_zero: String,
        /// The service.
        service: String,
    },
    /// A FULLNAT real server for a service without a local address of its family.
    #[error(
        "FULLNAT real server {real} of {service} needs an {family} local address of the \
         service to send from: add one with --add-laddr first"
    )]
    NoLocalAddr {
        /// The real server.
        real: String,
        /// The service.
        service: String,
        /// `IPv4` or `IPv6`.
        family: &'static str,
    },
    /// `--add-laddr` of an address the service already has.
    #[error("Local address already exists: {addr} of {service}")]
    LocalAddrExists {
        /// The address.
        addr: String,
        /// The service.
        service: String,
    },
    /// `--del-laddr` of an address the service does not have.
    #[error("No such local address: {addr} of {service}")]
    NoSuchLocalAddr {
        /// The address.
        addr: String,
        /// The service.
        service: String,
    },
    /// More than [`MAX_LADDRS`] local addresses.
    #[error("Too many local addresses for {0}: at most 64")]
    TooManyLocalAddrs(String),
    /// A local address's interface name that cannot be a Linux interface's.
    #[error("Illegal interface name: `{0}' (1 to 15 bytes, no '/', ':' or blanks)")]
    BadInterface(String),
    /// A source port range that is empty or includes port 0.
    #[error("Illegal local port range: {0} (expected LO-HI with 1 <= LO <= HI <= 65535)")]
    BadPortRange(String),
    /// `--del-laddr` of the last local address of a family FULLNAT real servers use.
    #[error(
        "Local address {addr} is the last {family} local address of {service}, which its \
         FULLNAT real servers {reals} send from: add another one, or delete them or change \
         their forwarding method first"
    )]
    LocalAddrInUse {
        /// The address.
        addr: String,
        /// The service.
        service: String,
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// The real servers, separated by spaces.
        reals: String,
    },
    /// Lower threshold above the upper one.
    #[error("Illegal threshold: the lower threshold {lower} exceeds the upper threshold {upper}")]
    BadThreshold {
        /// -x.
        upper: u32,
        /// -y.
        lower: u32,
    },
}

impl Config {
    /// A configuration of these services, as they are (no checks: for services taken from a
    /// valid configuration, or read back from one). A key given twice keeps its last service
    /// in the index.
    pub fn from_services(services: Vec<Service>) -> Config {
        let mut c = Config {
            services,
            ..Config::default()
        };
        for (i, s) in c.services.iter().enumerate() {
            c.index.insert(s.key, i);
            for v in s.key.virtual_addr().iter().chain(&s.matches) {
                c.owners.insert(*v, s.key);
            }
        }
        c
    }

    /// The services, in the order they were added.
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// The services, to own.
    pub fn into_services(self) -> Vec<Service> {
        self.services
    }

    /// The same configuration with its services edited as a list (unchecked, as
    /// [`Config::from_services`]).
    pub fn map_services(self, edit: impl FnOnce(&mut Vec<Service>)) -> Config {
        let mut services = self.services;
        edit(&mut services);
        Config::from_services(services)
    }

    /// The service with this key.
    pub fn service(&self, key: &ServiceKey) -> Option<&Service> {
        self.index.get(key).map(|&i| &self.services[i])
    }

    fn service_mut(&mut self, key: &ServiceKey) -> Result<&mut Service, ConfigError> {
        match self.index.get(key) {
            Some(&i) => Ok(&mut self.services[i]),
            None => Err(ConfigError::NoSuchService(key.to_string())),
        }
    }

    /// The service whose traffic this (protocol, VIP, port) is: the normal service with that
    /// key, or the group that matches it. Each is taken at most once, so the data plane's
    /// service map has one owner per key.
    pub fn owner_of(&self, v: &VirtualAddr) -> Option<ServiceKey> {
        self.owners.get(v).copied()
    }

    /// Service groups named by these changes that match no traffic: worth a warning, since a
    /// group restored from ipvsadm's rules has no `--match` yet.
    pub fn unmatched_groups(&self, changes: &[Change]) -> Vec<ServiceKey> {
        let mut out = Vec::new();
        for c in changes {
            let (Change::AddService { key, .. }
            | Change::EditService { key, .. }
            | Change::SetMatches { key, .. }) = c
            else {
                continue;
            };
            if self
                .service(key)
                .is_some_and(|s| s.key.is_group() && s.matches.is_empty())
                && !out.contains(key)
            {
                out.push(*key);
            }
        }
        out
    }

    /// Applies one change, or leaves the configuration untouched and says why not.
    pub fn apply(&mut self, change: &Change) -> Result<(), ConfigError> {
        match change {
            Change::AddService {
                key,
                scheduler,
                flags,
                persistence,
            } => {
                validate_service(key, persistence)?;
                if self.service(key).is_some() {
                    return Err(ConfigError::ServiceExists(key.to_string()));
                }
                // A normal service may not take what a group already matches.
                if let Some(v) = key.virtual_addr() {
                    if let Some(owner) = self.owner_of(&v) {
                        return Err(ConfigError::MatchTaken {
                            matched: v.to_string(),
                            owner: owner.to_string(),
                        });
                    }
                }
                self.index.insert(*key, self.services.len());
                if let Some(v) = key.virtual_addr() {
                    self.owners.insert(v, *key);
                }
                self.services.push(Service {
                    key: *key,
                    matches: Vec::new(),
                    scheduler: *scheduler,
                    flags: *flags,
                    persistence: *persistence,
                    reals: Vec::new(),
                    check: CheckSpec::default(),
                    sorry_server: None,
                    quorum: Quorum::default(),
                    laddrs: Vec::new(),
                });
            }
            Change::EditService {
                key,
                scheduler,
                flags,
                persistence,
            } => {
                let svc = self.service_mut(key)?;
                let persistence = persistence.unwrap_or(svc.persistence);
                validate_service(key, &persistence)?;
                svc.persistence = persistence;
                if let Some(s) = scheduler {
                    svc.scheduler = *s;
                }
                if let Some(f) = flags {
                    svc.flags = *f;
                }
            }
            Change::SetMatches { key, matches } => {
                if !key.is_group() {
                    return Err(ConfigError::NotAGroup(key.to_string()));
                }
                if self.service(key).is_none() {
                    return Err(ConfigError::NoSuchService(key.to_string()));
                }
                let mut list: Vec<VirtualAddr> = Vec::with_capacity(matches.len());
                for m in matches {
                    let ip = m.addr.ip();
                    if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
                        return Err(ConfigError::BadAddress(ip.to_string()));
                    }
                    if ip.is_ipv4() != key.is_ipv4() {
                        return Err(ConfigError::MatchFamily {
                            matched: m.to_string(),
                            group: key.to_string(),
                        });
                    }
                    match self.owner_of(m) {
                        Some(owner) if owner != *key => {
                            return Err(ConfigError::MatchTaken {
                                matched: m.to_string(),
                                owner: owner.to_string(),
                            })
                        }
                        _ => {}
                    }
                    // The same match given twice is one match (as a port listed twice in
                    // iptables' multiport).
                    if !list.contains(m) {
                        list.push(*m);
                    }
                }
                let svc = self.service_mut(key)?;
                let old = std::mem::replace(&mut svc.matches, list.clone());
                for m in old {
                    self.owners.remove(&m);
                }
                for m in list {
                    self.owners.insert(m, *key);
                }
            }
            Change::DeleteService { key } => {
                let i = self
                    .index
                    .remove(key)
                    .ok_or_else(|| ConfigError::NoSuchService(key.to_string()))?;
                let gone = self.services.remove(i);
                for v in gone.key.virtual_addr().iter().chain(&gone.matches) {
                    self.owners.remove(v);
                }
                for (j, s) in self.services.iter().enumerate().skip(i) {
                    self.index.insert(s.key, j);
                }
            }
            Change::Clear => *self = Config::default(),
            Change::AddReal { service, real } => {
                let svc = self.service_mut(service)?;
                let real = normalise_real(svc, real)?;
                if svc.reals.iter().any(|r| same_server(r, &real)) {
                    return Err(ConfigError::RealExists(real.addr.to_string()));
                }
                if svc.sorry_server.is_some_and(|s| s.ip() == real.addr.ip()) {
                    return Err(ConfigError::SorryIsReal(real.addr.ip().to_string()));
                }
                check_of(svc, &real)?;
                needs_laddr(svc, &real)?;
                svc.reals.push(real);
            }
            Change::EditReal {
                service,
                addr,
                weight,
                forward,
                u_threshold,
                l_threshold,
                check,
            } => {
                let svc = self.service_mut(service)?;
                let i = real_index(svc, *addr)
                    .ok_or_else(|| ConfigError::NoSuchReal(addr.to_string()))?;
                let current = &svc.reals[i];
                let edited = RealServer {
                    addr: current.addr,
                    weight: weight.unwrap_or(current.weight),
                    forward: forward.unwrap_or(current.forward),
                    u_threshold: u_threshold.unwrap_or(current.u_threshold),
                    l_threshold: l_threshold.unwrap_or(current.l_threshold),
                    check: check.clone().unwrap_or_else(|| current.check.clone()),
                };
                let edited = normalise_real(svc, &edited)?;
                // Only a NAT server's port is its own: made -g or -i, a NAT server on another
                // port than the service's would become another server.
                if edited.addr != current.addr {
                    return Err(ConfigError::PortWouldChange {
                        real: current.addr.to_string(),
                        port: edited.addr.port(),
                    });
                }
                // Made -g or -i, a group's NAT server may now be one IP twice.
                if svc
                    .reals
                    .iter()
                    .enumerate()
                    .any(|(j, r)| j != i && same_server(r, &edited))
                {
                    return Err(ConfigError::RealExists(edited.addr.to_string()));
                }
                check_of(svc, &edited)?;
                needs_laddr(svc, &edited)?;
                svc.reals[i] = edited;
            }
            Change::DeleteReal { service, addr } => {
                let svc = self.service_mut(service)?;
                let i = real_index(svc, *addr)
                    .ok_or_else(|| ConfigError::NoSuchReal(addr.to_string()))?;
                svc.reals.remove(i);
            }
            Change::SetCheck { key, check } => {
                let svc = self.service_mut(key)?;
                check.validate(check.kind).map_err(ConfigError::BadCheck)?;
                let mut next = svc.clone();
                next.check = check.clone();
                // Every real server's check must still make sense with the new defaults.
                for r in &next.reals {
                    check_of(&next, r)?;
                }
                *svc = next;
            }
            Change::SetSorryServer { key, sorry_server } => {
                let svc = self.service_mut(key)?;
                svc.sorry_server = match sorry_server {
                    None => None,
                    Some(addr) => {
                        // Checked as a direct-routing real server of the service.
                        let as_real = normalise_real(svc, &RealServer::dr(*addr, 1))?;
                        if svc.reals.iter().any(|r| r.addr.ip() == addr.ip()) {
                            return Err(ConfigError::SorryIsReal(addr.ip().to_string()));
                        }
                        Some(as_real.addr)
                    }
                };
            }
            Change::SetQuorum { key, quorum } => {
                quorum.validate()?;
                self.service_mut(key)?.quorum = *quorum;
            }
            Change::AddLocalAddr { service, laddr } => {
                let svc = self.service_mut(service)?;
                let ip = laddr.addr;
                if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
                    return Err(ConfigError::BadAddress(ip.to_string()));
                }
                let ports = laddr.ports.checked()?;
                if let Some(i) = laddr.iface.as_deref().filter(|i| !valid_ifname(i)) {
                    return Err(ConfigError::BadInterface(i.to_string()));
                }
                if svc.laddrs.iter().any(|l| l.addr == ip) {
                    return Err(ConfigError::LocalAddrExists {
                        addr: ip.to_string(),
                        service: service.to_string(),
                    });
                }
                if svc.laddrs.len() >= MAX_LADDRS {
                    return Err(ConfigError::TooManyLocalAddrs(service.to_string()));
                }
                svc.laddrs.push(LocalAddr {
                    ports,
                    ..laddr.clone()
                });
            }
            Change::DelLocalAddr { service, addr } => {
                let svc = self.service_mut(service)?;
                let i = svc
                    .laddrs
                    .iter()
                    .position(|l| l.addr == *addr)
                    .ok_or_else(|| ConfigError::NoSuchLocalAddr {
                        addr: addr.to_string(),
                        service: service.to_string(),
                    })?;
                let v4 = addr.is_ipv4();
                let others = svc
                    .laddrs
                    .iter()
                    .enumerate()
                    .any(|(j, l)| j != i && l.addr.is_ipv4() == v4);
                let users: Vec<String> = svc
                    .reals
                    .iter()
                    .filter(|r| r.forward == ForwardMethod::FullNat && r.addr.is_ipv4() == v4)
                    .map(|r| r.addr.to_string())
                    .collect();
                if !others && !users.is_empty() {
                    return Err(ConfigError::LocalAddrInUse {
                        addr: addr.to_string(),
                        service: service.to_string(),
                        family: family_name(v4),
                        reals: users.join(" "),
                    });
                }
                svc.laddrs.remove(i);
            }
        }
        Ok(())
    }

    /// Applies changes as one transaction: all of them, or none.
    pub fn apply_all(&mut self, changes: &[Change]) -> Result<(), ConfigError> {
        let mut next = self.clone();
        let mut rest = changes;
        while let Some(c) = rest.first() {
            // A run of deletions (a diff's removals, -D lines) is done in one pass: one by one,
            // each would move every service after it.
            let run = rest
                .iter()
                .take_while(|c| matches!(c, Change::DeleteService { .. }))
                .count();
            if run > 1 {
                next.delete_services(&rest[..run])?;
                rest = &rest[run..];
            } else {
                next.apply(c)?;
                rest = &rest[1..];
            }
        }
        *self = next;
        Ok(())
    }

    /// DeleteService changes, all at once (the first missing service is the error).
    fn delete_services(&mut self, deletions: &[Change]) -> Result<(), ConfigError> {
        let mut gone = std::collections::HashSet::with_capacity(deletions.len());
        for d in deletions {
            if let Change::DeleteService { key } = d {
                if !self.index.contains_key(key) || !gone.insert(*key) {
                    return Err(ConfigError::NoSuchService(key.to_string()));
                }
            }
        }
        let mut services = std::mem::take(&mut self.services);
        services.retain(|s| !gone.contains(&s.key));
        *self = Config::from_services(services);
        Ok(())
    }
}

/// Where the real server `-e`/`-d` name is in its service: the one with exactly this address
/// and port (a NAT server is known by both, as IPVS knows every server), else the direct-routing
/// or tunnelling server with this IP, whatever port was given (its port is the service's, or
/// in a group meaningless: one IP is one such server, see [`same_server`]). An error names the
/// address as given (the command line fills in the service's port when none is given).
fn real_index(svc: &Service, addr: SocketAddr) -> Option<usize> {
    svc.reals.iter().position(|r| r.addr == addr).or_else(|| {
        svc.reals
            .iter()
            .position(|r| !r.forward.keeps_port() && r.addr.ip() == addr.ip())
    })
}

/// Whether two (normalised) real servers of one service are the same server: the same address
/// and port, as IPVS compares them, or the same IP where neither masquerades (DR and tunnels
/// send to the IP alone, so a group's `RIP:0` and `RIP:8080` would be one server twice).
/// NAT (and FULLNAT) servers on one IP with different ports are different servers, as in IPVS.
fn same_server(a: &RealServer, b: &RealServer) -> bool {
    a.addr == b.addr
        || (a.addr.ip() == b.addr.ip() && !a.forward.keeps_port() && !b.forward.keeps_port())
}

/// A FULLNAT real server sends from a local address of its own family: the service must have
/// one (`--add-laddr` first), or its connections would have no source to be given.
fn needs_laddr(svc: &Service, real: &RealServer) -> Result<(), ConfigError> {
    let v4 = real.addr.is_ipv4();
    if real.forward == ForwardMethod::FullNat && !svc.has_laddr_of(v4) {
        return Err(ConfigError::NoLocalAddr {
            real: real.addr.to_string(),
            service: svc.key.to_string(),
            family: family_name(v4),
        });
    }
    Ok(())
}

/// The check that runs against a real server of `svc` (None: not checked), or why it cannot.
pub fn check_of(svc: &Service, real: &RealServer) -> Result<Option<check::Check>, ConfigError> {
    check::resolve(&svc.check, &real.check, real.addr).map_err(ConfigError::BadCheck)
}

fn validate_service(
    key: &ServiceKey,
    persistence: &Option<Persistence>,
) -> Result<(), ConfigError> {
    match key {
        ServiceKey::Addr { addr, .. } => {
            let ip = addr.ip();
            if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
                return Err(ConfigError::BadAddress(ip.to_string()));
            }
            // Port 0 (every port of the VIP) only makes sense with persistence, as in ipvsadm.
            if addr.port() == 0 && persistence.is_none() {
                return Err(ConfigError::ZeroPort(key.to_string()));
            }
        }
        // A group needs no persistence, as an IPVS firewall-mark service.
        ServiceKey::Fwmark { fwmark, .. } => {
            if *fwmark == 0 {
                return Err(ConfigError::BadFwmark);
            }
        }
    }
    if let Some(p) = persistence {
        let max = if key.is_ipv4() { 32 } else { 128 };
        if p.prefix > max {
            return Err(ConfigError::BadNetmask(p.prefix));
        }
        if p.timeout == 0 || p.timeout > MAX_TIMEOUT {
            return Err(ConfigError::BadTimeout(p.timeout));
        }
    }
    Ok(())
}

/// Checks a real server against its service and applies ipvsadm's rule that a direct-routing
/// or tunnelling server's port is the VIP's (process_options: "The destination port must be
/// equal to the service port if the IP_VS_CONN_F_TUNNEL or IP_VS_CONN_F_DROUTE is set").
/// A masquerading server keeps its port (a port-0 service's must be 0); a group has no port:
/// its servers keep the port given, as ipvsadm stores it.
fn normalise_real(svc: &Service, real: &RealServer) -> Result<RealServer, ConfigError> {
    let ip = real.addr.ip();
    if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
        return Err(ConfigError::BadAddress(ip.to_string()));
    }
    if real.weight > MAX_WEIGHT {
        return Err(ConfigError::BadWeight(real.weight as u64));
    }
    if real.u_threshold != 0 && real.l_threshold > real.u_threshold {
        return Err(ConfigError::BadThreshold {
            upper: real.u_threshold,
            lower: real.l_threshold,
        });
    }
    match real.forward {
        ForwardMethod::Tunnel(Tunnel {
            kind: TunnelKind::Gue,
            port: 0,
            ..
        }) => {
            return Err(ConfigError::BadTunnel(
                "GUE tunnel needs a port: --tun-port PORT (1..=65535)",
            ))
        }
        ForwardMethod::Tunnel(Tunnel {
            kind: TunnelKind::Ipip,
            port,
            csum,
        }) if port != 0 || csum => {
            return Err(ConfigError::BadTunnel(
                "--tun-port and --tun-csum apply to --tun-type gue only",
            ))
        }
        _ => {}
    }
    // A tunnel may cross families (IPv6 VIP over IPv4, and the reverse), as in IPVS.
    if ip.is_ipv4() != svc.key.is_ipv4() {
        let shown = ip.to_string();
        let vip = match svc.key {
            ServiceKey::Addr { addr, .. } => addr.ip().to_string(),
            ServiceKey::Fwmark { .. } => svc.key.to_string(),
        };
        match real.forward {
            ForwardMethod::Dr => return Err(ConfigError::FamilyMismatch { real: shown, vip }),
            ForwardMethod::Nat => return Err(ConfigError::NatFamilyMismatch { real: shown, vip }),
            // NAT64: an IPv6 VIP with IPv4 real servers (their local addresses IPv4 too).
            ForwardMethod::FullNat if ip.is_ipv4() => {}
            ForwardMethod::FullNat => {
                return Err(ConfigError::FullNatFamilyMismatch { real: shown, vip })
            }
            ForwardMethod::Tunnel(_) => {}
        }
    }
    let port = match (svc.key, real.forward) {
        // IPVS would send every port to this one; xvs keeps a port-0 service's meaning.
        (ServiceKey::Addr { addr, .. }, ForwardMethod::Nat)
            if addr.port() == 0 && real.addr.port() != 0 =>
        {
            return Err(ConfigError::NatPortOnPortZero {
                real: real.addr.to_string(),
                as_zero: SocketAddr::new(ip, 0).to_string(),
                service: svc.key.to_string(),
            })
        }
        (ServiceKey::Addr { addr, .. }, ForwardMethod::FullNat)
            if addr.port() == 0 && real.addr.port() != 0 =>
        {
            return Err(ConfigError::FullNatPortOnPortZero {
                real: real.addr.to_string(),
                as_zero: SocketAddr::new(ip, 0).to_string(),
                service: svc.key.to_string(),
            })
        }
        (ServiceKey::Addr { .. }, ForwardMethod::Nat | ForwardMethod::FullNat) => real.addr.port(),
        (ServiceKey::Addr { addr, .. }, _) => addr.port(),
        (ServiceKey::Fwmark { .. }, _) => real.addr.port(),
    };
    Ok(RealServer {
        addr: SocketAddr::new(ip, port),
        ..real.clone()
    })
}

/// Connection timeouts in seconds, as `ipvsadm -L --timeout` shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    /// Established TCP.
    pub tcp: u64,
    /// TCP after a FIN.
    pub tcpfin: u64,
    /// UDP.
    pub udp: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> ServiceKey {
        ServiceKey::Addr {
            protocol: Protocol::Tcp,
            addr: s.parse().unwrap(),
        }
    }

    fn real(s: &str, weight: u32) -> RealServer {
        RealServer {
            addr: s.parse().unwrap(),
            weight,
            forward: ForwardMethod::Dr,
            u_threshold: 0,
            l_threshold: 0,
            check: CheckSpec::default(),
        }
    }

    #[test]
    fn add_edit_delete_cycle() {
        let mut c = Config::default();
        let k = key("203.0.113.10:80");
        c.apply(&Change::AddService {
            key: k,
            scheduler: Scheduler::Rr,
            flags: SchedFlags::default(),
            persistence: None,
        })
        .unwrap();
        c.apply(&Change::AddReal {
            service: k,
            real: real("198.51.100.11:8080", 3),
        })
        .unwrap();
        // DR keeps the service port, as ipvsadm does.
        assert_eq!(
            c.services[0].reals[0].addr,
            "198.51.100.11:80".parse().unwrap()
        );
        c.apply(&Change::EditReal {
            service: k,
            addr: "198.51.100.11:80".parse().unwrap(),
            weight: Some(0),
            forward: None,
            u_threshold: None,
            l_threshold: None,
            check: None,
        })
        .unwrap();
        assert_eq!(c.services[0].reals[0].weight, 0);
        c.apply(&Change::EditService {
            key: k,
            scheduler: Some(Scheduler::Wrr),
            flags: None,
            persistence: None,
        })
        .unwrap();
        assert_eq!(c.services[0].scheduler, Scheduler::Wrr);
        c.apply(&Change::DeleteReal {
            service: k,
            addr: "198.51.100.11:0".parse().unwrap(),
        })
        .unwrap();
        assert!(c.services[0].reals.is_empty());
        c.apply(&Change::DeleteService { key: k }).unwrap();
        assert!(c.services.is_empty());
    }

    #[test]
    fn refusals_change_nothing() {
        let mut c = Config::default();
        let k = key("203.0.113.10:80");
        c.apply(&Change::AddService {
            key: k,
            scheduler: Scheduler::Rr,
            flags: SchedFlags::default(),
            persistence: None,
        })
        .unwrap();
        c.apply(&Change::AddReal {
            service: k,
            real: real("198.51.100.11:80", 1),
        })
        .unwrap();
        let before = c.clone();
        let bad = [
            Change::AddService {
                key: k,
                scheduler: Scheduler::Wrr,
                flags: SchedFlags::default(),
                persistence: None,
            },
            Change::AddReal {
                service: k,
                real: real("198.51.100.11:80", 1),
            },
            Change::AddReal {
                service: key("203.0.113.99:80"),
                real: real("198.51.100.12:80", 1),
            },
            Change::AddReal {
                service: k,
                real: real("[2001:db8::1]:80", 1),
            },
            Change::AddReal {
                service: k,
                real: real("198.51.100.12:80", 70000),
            },
            Change::DeleteReal {
                service: k,
                addr: "198.51.100.99:80".parse().unwrap(),
            },
            Change::DeleteService {
                key: key("203.0.113.11:80"),
            },
            Change::AddService {
                key: key("0.0.0.0:80"),
                scheduler: Scheduler::Rr,
                flags: SchedFlags::default(),
                persistence: None,
            },
            Change::AddService {
                key: key("203.0.113.12:0"),
                scheduler: Scheduler::Rr,
                flags: SchedFlags::default(),
                persistence: None,
            },
        ];
        for b in &bad {
            assert!(c.apply(b).is_err(), "{b:?} accepted");
            assert_eq!(c, before, "{b:?} changed the configuration");
        }
        // A transaction with one bad change applies nothing.
        let tx = [
            Change::AddReal {
                service: k,
                real: real("198.51.100.12:80", 1),
            },
            bad[1].clone(),
        ];
        assert!(c.apply_all(&tx).is_err());
        assert_eq!(c, before);
    }

    fn group(mark: u32, persistence: Option<Persistence>) -> Change {
        Change::AddService {
            key: ServiceKey::fwmark(mark, false),
            scheduler: Scheduler::Rr,
            flags: SchedFlags::default(),
            persistence,
        }
    }

    fn set_matches(mark: u32, m: &[&str]) -> Change {
        Change::SetMatches {
            key: ServiceKey::fwmark(mark, false),
            matches: m.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn groups_own_their_matches_exclusively() {
        let mut c = Config::default();
        let p = Some(Persistence {
            timeout: 60,
            prefix: 32,
        });
        c.apply_all(&[
            group(1, p),
            set_matches(1, &["tcp:203.0.113.10:80", "tcp:203.0.113.10:443"]),
            Change::add_service(key("203.0.113.10:25"), Scheduler::Rr),
        ])
        .unwrap();
        assert_eq!(
            c.owner_of(&"tcp:203.0.113.10:443".parse().unwrap()),
            Some(ServiceKey::fwmark(1, false))
        );
        let before = c.clone();
        let bad: [(Change, &str); 8] = [
            // A normal service on a group's match.
            (
                Change::add_service(key("203.0.113.10:443"), Scheduler::Rr),
                "already taken by FWM 1",
            ),
            // Another group's match, and a normal service's key as a match.
            (set_matches(1, &["tcp:203.0.113.10:25"]), "taken by TCP"),
            (group(0, None), "Illegal fwmark"),
            (
                Change::SetMatches {
                    key: key("203.0.113.10:25"),
                    matches: vec![],
                },
                "service groups (-f) only",
            ),
            (set_matches(2, &["udp:203.0.113.10:53"]), "No such service"),
            // Family of the group.
            (
                set_matches(1, &["tcp:[2001:db8::10]:443"]),
                "not of the address family",
            ),
            (set_matches(1, &["tcp:127.0.0.1:80"]), "Illegal address"),
            (group(1, None), "already exists"),
        ];
        for (b, needle) in &bad {
            let e = c.apply(b).expect_err(&format!("{b:?} accepted"));
            assert!(e.to_string().contains(needle), "{b:?}: {e}");
            assert_eq!(c, before, "{b:?} changed the configuration");
        }
        // A second group cannot take group 1's match: all-or-nothing.
        assert!(c
            .apply_all(&[
                group(2, None),
                set_matches(2, &["udp:203.0.113.10:53", "tcp:203.0.113.10:80"])
            ])
            .is_err());
        assert_eq!(c, before);
        // Handing a match over in one transaction works, and a freed match can be a service.
        c.apply_all(&[
            set_matches(1, &["tcp:203.0.113.10:80", "tcp:203.0.113.10:80"]),
            group(2, None),
            set_matches(2, &["tcp:203.0.113.10:443"]),
        ])
        .unwrap();
        assert_eq!(c.services[0].matches.len(), 1, "a repeated match is one");
        c.apply_all(&[
            set_matches(2, &[]),
            Change::add_service(key("203.0.113.10:443"), Scheduler::Rr),
        ])
        .unwrap();
        assert_eq!(
            c.unmatched_groups(&[set_matches(2, &[])]),
            vec![ServiceKey::fwmark(2, false)]
        );
        // An IPv6 group takes IPv6 matches and servers only.
        let k6 = ServiceKey::fwmark(1, true);
        c.apply_all(&[
            Change::add_service(k6, Scheduler::Rr),
            Change::SetMatches {
                key: k6,
                matches: vec!["tcp:[2001:db8::10]:443".parse().unwrap()],
            },
        ])
        .unwrap();
        assert!(c
            .apply(&Change::AddReal {
                service: k6,
                real: real("198.51.100.11:0", 1)
            })
            .is_err());
    }

    #[test]
    fn group_real_servers_keep_their_port_and_are_known_by_address() {
        let mut c = Config::default();
        let g = ServiceKey::fwmark(7, false);
        c.apply_all(&[
            group(7, None),
            Change::AddReal {
                service: g,
                real: real("198.51.100.11:0", 1),
            },
            Change::AddReal {
                service: g,
                real: real("198.51.100.12:8080", 1),
            },
        ])
        .unwrap();
        assert_eq!(
            c.services[0].reals[0].addr,
            "198.51.100.11:0".parse().unwrap()
        );
        assert_eq!(
            c.services[0].reals[1].addr,
            "198.51.100.12:8080".parse().unwrap()
        );
        // One IP is one server in DR, whatever port.
        assert!(c
            .apply(&Change::AddReal {
                service: g,
                real: real("198.51.100.12:80", 1),
            })
            .is_err());
        c.apply(&Change::DeleteReal {
            service: g,
            addr: "198.51.100.12:0".parse().unwrap(),
        })
        .unwrap();
        assert_eq!(c.services[0].reals.len(), 1);
    }

    fn nat(s: &str, weight: u32) -> RealServer {
        RealServer {
            forward: ForwardMethod::Nat,
            ..real(s, weight)
        }
    }

    fn edit_forward(service: ServiceKey, addr: &str, forward: ForwardMethod) -> Change {
        Change::EditReal {
            service,
            addr: addr.parse().unwrap(),
            weight: None,
            forward: Some(forward),
            u_threshold: None,
            l_threshold: None,
            check: None,
        }
    }

    /// ipvsadm sets a -g or -i server's port to the service's and keeps a -m server's; IPVS
    /// knows a server by address and port, so NAT servers of one IP on different ports are
    /// different servers.
    #[test]
    fn nat_real_servers_keep_their_port() {
        let mut c = Config::default();
        let k = key("203.0.113.10:80");
        c.apply_all(&[
            Change::add_service(k, Scheduler::Rr),
            Change::AddReal {
                service: k,
                real: nat("198.51.100.11:8080", 1),
            },
            Change::AddReal {
                service: k,
                real: nat("198.51.100.11:8081", 1),
            },
            // DR on the same IP: the service's port, another server (as in IPVS).
            Change::AddReal {
                service: k,
                real: real("198.51.100.11:9999", 1),
            },
            Change::AddReal {
                service: k,
                real: nat("198.51.100.12:80", 1),
            },
        ])
        .unwrap();
        let addrs: Vec<String> = c.services()[0]
            .reals
            .iter()
            .map(|r| r.addr.to_string())
            .collect();
        assert_eq!(
            addrs,
            [
                "198.51.100.11:8080",
                "198.51.100.11:8081",
                "198.51.100.11:80",
                "198.51.100.12:80"
            ]
        );
        assert!(c.services()[0].has_nat());
        let before = c.clone();
        let refused: [(Change, &str); 4] = [
            (
                Change::AddReal {
                    service: k,
                    real: nat("198.51.100.11:8080", 1),
                },
                "Destination already exists: 198.51.100.11:8080",
            ),
            // The DR server 198.51.100.11:80 is that address too.
            (
                Change::AddReal {
                    service: k,
                    real: nat("198.51.100.11:80", 1),
                },
                "Destination already exists: 198.51.100.11:80",
            ),
            (
                Change::AddReal {
                    service: k,
                    real: nat("[2001:db8::11]:80", 1),
                },
                "Masquerading (NAT) needs the real server 2001:db8::11 in the same address family \
                 as the VIP 203.0.113.10",
            ),
            // Made -g, a NAT server on its own port would move to the service's.
            (
                edit_forward(k, "198.51.100.11:8081", ForwardMethod::Dr),
                "Real server 198.51.100.11:8081 keeps its own port only with masquerading (-m): \
                 -g and -i use the service's port 80; delete it (-d) and add it again (-a)",
            ),
        ];
        for (b, message) in &refused {
            let e = c.apply(b).expect_err(&format!("{b:?} accepted"));
            assert_eq!(e.to_string(), *message);
            assert_eq!(c, before, "{b:?} changed the configuration");
        }
        // -e and -d name a NAT server by its port; a port no server has is no server.
        c.apply(&Change::DeleteReal {
            service: k,
            addr: "198.51.100.11:8081".parse().unwrap(),
        })
        .unwrap();
        assert_eq!(
            c.apply(&Change::DeleteReal {
                service: k,
                addr: "198.51.100.12:8080".parse().unwrap(),
            })
            .unwrap_err()
            .to_string(),
            "No such destination: 198.51.100.12:8080"
        );
        // On the service's port, the method changes both ways and the address stays.
        c.apply(&edit_forward(k, "198.51.100.12:80", ForwardMethod::Dr))
            .unwrap();
        c.apply(&edit_forward(
            k,
            "198.51.100.12:80",
            ForwardMethod::Tunnel(Tunnel::IPIP),
        ))
        .unwrap();
        c.apply(&edit_forward(k, "198.51.100.12:80", ForwardMethod::Nat))
            .unwrap();
        assert_eq!(c.services()[0].reals[2], nat("198.51.100.12:80", 1));
        // A DR server is still found whatever port is given.
        c.apply(&edit_forward(k, "198.51.100.11:1", ForwardMethod::Nat))
            .unwrap();
        assert_eq!(c.services()[0].reals[1], nat("198.51.100.11:80", 1));
        // A sorry server stays direct routing.
        c.apply(&Change::SetSorryServer {
            key: k,
            sorry_server: Some("198.51.100.99:8080".parse().unwrap()),
        })
        .unwrap();
        assert_eq!(
            c.services()[0].sorry_server,
            Some("198.51.100.99:80".parse().unwrap())
        );
    }

    /// A port-0 service forwards each connection to the port it was sent to: its NAT servers
    /// take port 0 (IPVS would send every port to the server's one; xvs refuses that). A
    /// group's NAT servers keep any port, as IPVS's firewall-mark services.
    #[test]
    fn nat_ports_of_every_port_services_and_groups() {
        let mut c = Config::default();
        let k = key("203.0.113.10:0");
        let g = ServiceKey::fwmark(1, false);
        c.apply_all(&[
            Change::AddService {
                key: k,
                scheduler: Scheduler::Rr,
                flags: SchedFlags::default(),
                persistence: Some(Persistence {
                    timeout: 300,
                    prefix: 32,
                }),
            },
            Change::AddReal {
                service: k,
                real: nat("198.51.100.11:0", 1),
            },
            group(1, None),
            Change::AddReal {
                service: g,
                real: nat("198.51.100.11:0", 1),
            },
            Change::AddReal {
                service: g,
                real: nat("198.51.100.11:8443", 1),
            },
            // DR in a group: one IP is one server, unless the other is NAT.
            Change::AddReal {
                service: g,
                real: real("198.51.100.11:25", 1),
            },
        ])
        .unwrap();
        assert_eq!(c.services()[1].reals.len(), 3);
        let e = c
            .apply(&Change::AddReal {
                service: k,
                real: nat("198.51.100.12:8080", 1),
            })
            .unwrap_err();
        assert_eq!(
            e,
            ConfigError::NatPortOnPortZero {
                real: "198.51.100.12:8080".into(),
                as_zero: "198.51.100.12:0".into(),
                service: "TCP 203.0.113.10:0".into(),
            }
        );
        assert!(c
            .apply(&Change::AddReal {
                service: g,
                real: real("198.51.100.11:0", 1),
            })
            .is_err());
        assert_eq!(
            c.apply(&edit_forward(g, "198.51.100.11:8443", ForwardMethod::Dr))
                .unwrap_err()
                .to_string(),
            "Destination already exists: 198.51.100.11:8443"
        );
        // IPv6 addresses are written with brackets.
        let k6 = key("[2001:db8::10]:0");
        let mut c6 = Config::default();
        c6.apply(&Change::AddService {
            key: k6,
            scheduler: Scheduler::Rr,
            flags: SchedFlags::default(),
            persistence: Some(Persistence {
                timeout: 300,
                prefix: 128,
            }),
        })
        .unwrap();
        let e = c6
            .apply(&Change::AddReal {
                service: k6,
                real: nat("[2001:db8::11]:8080", 1),
            })
            .unwrap_err();
        assert!(
            e.to_string().contains("([2001:db8::11]:0, or no port)"),
            "{e}"
        );
    }

    /// What the data plane asks of a NAT server: the port a connection goes to.
    #[test]
    fn nat_destination_ports() {
        assert_eq!(nat("198.51.100.11:8080", 1).dest_port(80), 8080);
        assert_eq!(nat("198.51.100.11:0", 1).dest_port(443), 443);
        assert_eq!(real("198.51.100.11:80", 1).dest_port(80), 80);
        assert_eq!(ForwardMethod::Nat.ipvsadm_name(), "Masq");
        assert_eq!(
            serde_json::to_string(&ForwardMethod::Nat).unwrap(),
            "\"nat\""
        );
        assert_eq!(
            serde_json::from_str::<ForwardMethod>("\"nat\"").unwrap(),
            ForwardMethod::Nat
        );
        let svc = Service {
            key: key("203.0.113.10:80"),
            matches: vec![],
            scheduler: Scheduler::Rr,
            flags: SchedFlags::default(),
            persistence: None,
            reals: vec![real("198.51.100.11:80", 1)],
            check: CheckSpec::default(),
            sorry_server: None,
            quorum: Quorum::default(),
            laddrs: Vec::new(),
        };
        assert!(!svc.has_nat());
    }

    #[test]
    fn keys_stay_readable_in_json() {
        assert_eq!(
            serde_json::to_string(&key("203.0.113.10:80")).unwrap(),
            r#"{"protocol":"tcp","addr":"203.0.113.10:80"}"#
        );
        assert_eq!(
            serde_json::to_string(&ServiceKey::fwmark(1, false)).unwrap(),
            r#"{"fwmark":1}"#
        );
        for k in [
            key("[2001:db8::10]:80"),
            ServiceKey::fwmark(1, false),
            ServiceKey::fwmark(2, true),
        ] {
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(
                serde_json::from_str::<ServiceKey>(&json).unwrap(),
                k,
                "{json}"
            );
        }
        assert_eq!(ServiceKey::fwmark(2, true).to_string(), "FWM 2 IPv6");
    }

    #[test]
    fn scheduler_names() {
        assert_eq!("rr".parse::<Scheduler>().unwrap(), Scheduler::Rr);
        assert_eq!("wrr".parse::<Scheduler>().unwrap(), Scheduler::Wrr);
        for name in IPVS_SCHEDULERS {
            assert_eq!(name.parse::<Scheduler>().unwrap().to_string(), *name);
        }
        assert!(matches!(
            "bogus".parse::<Scheduler>(),
            Err(ConfigError::UnknownScheduler(_))
        ));
    }

    /// The indexes agree with a search of the services after adds, deletes (which move the
    /// services after them), match changes, clears and a JSON round trip.
    #[test]
    fn lookups_follow_every_change() {
        fn agree(c: &Config) {
            for (i, s) in c.services().iter().enumerate() {
                assert!(std::ptr::eq(c.service(&s.key).unwrap(), &c.services()[i]));
            }
            let mut taken = 0;
            for s in c.services() {
                for v in s.key.virtual_addr().iter().chain(&s.matches) {
                    assert_eq!(c.owner_of(v), Some(s.key), "{v}");
                    taken += 1;
                }
            }
            assert_eq!(c.owners.len(), taken);
            assert_eq!(c.index.len(), c.services().len());
        }
        let tcp =
            |port: u16| ServiceKey::new(Protocol::Tcp, SocketAddr::from(([203, 0, 113, 10], port)));
        let m = |port: u16| VirtualAddr {
            protocol: Protocol::Tcp,
            addr: SocketAddr::from(([203, 0, 113, 20], port)),
        };
        let mut c = Config::default();
        for port in 1..=20 {
            c.apply(&Change::add_service(tcp(port), Scheduler::Rr))
                .unwrap();
        }
        let group = ServiceKey::fwmark(1, false);
        c.apply(&Change::add_service(group, Scheduler::Rr)).unwrap();
        c.apply(&Change::SetMatches {
            key: group,
            matches: vec![m(80), m(443)],
        })
        .unwrap();
        agree(&c);
        for port in [1, 7, 20, 8] {
            c.apply(&Change::DeleteService { key: tcp(port) }).unwrap();
            assert!(c.service(&tcp(port)).is_none());
            agree(&c);
        }
        // A match given up is free for a normal service; the group's other stays taken.
        c.apply(&Change::SetMatches {
            key: group,
            matches: vec![m(443), m(8443)],
        })
        .unwrap();
        assert_eq!(c.owner_of(&m(80)), None);
        c.apply(&Change::add_service(
            ServiceKey::new(Protocol::Tcp, m(80).addr),
            Scheduler::Rr,
        ))
        .unwrap();
        assert!(matches!(
            c.apply(&Change::add_service(
                ServiceKey::new(Protocol::Tcp, m(443).addr),
                Scheduler::Rr
            )),
            Err(ConfigError::MatchTaken { .. })
        ));
        agree(&c);
        // A run of deletions in one transaction, and one that names a service twice.
        let mut batch = c.clone();
        batch
            .apply_all(&[
                Change::DeleteService { key: tcp(3) },
                Change::DeleteService { key: group },
                Change::DeleteService { key: tcp(19) },
            ])
            .unwrap();
        assert!(batch.service(&tcp(3)).is_none() && batch.service(&group).is_none());
        assert_eq!(batch.owner_of(&m(443)), None);
        agree(&batch);
        assert!(matches!(
            batch.clone().apply_all(&[
                Change::DeleteService { key: tcp(4) },
                Change::DeleteService { key: tcp(4) },
            ]),
            Err(ConfigError::NoSuchService(_))
        ));
        // A failed transaction leaves the indexes as they were.
        let before = c.clone();
        assert!(c
            .apply_all(&[
                Change::DeleteService { key: tcp(2) },
                Change::DeleteService { key: tcp(2) }
            ])
            .is_err());
        assert_eq!(c, before);
        agree(&c);
        let back: Config = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        agree(&back);
        c.apply(&Change::Clear).unwrap();
        agree(&c);
        assert_eq!(c.owner_of(&m(443)), None);
    }

    fn fullnat(s: &str, weight: u32) -> RealServer {
        RealServer {
            forward: ForwardMethod::FullNat,
            ..real(s, weight)
        }
    }

    fn add_laddr(service: ServiceKey, addr: &str) -> Change {
        Change::AddLocalAddr {
            service,
            laddr: LocalAddr::new(addr.parse().unwrap()),
        }
    }

    fn del_laddr(service: ServiceKey, addr: &str) -> Change {
        Change::DelLocalAddr {
            service,
            addr: addr.parse().unwrap(),
        }
    }

    /// Every FULLNAT rule refuses with its message and leaves the configuration as it was.
    #[test]
    fn fullnat_needs_local_addresses_of_its_family() {
        let mut c = Config::default();
        let k = key("203.0.113.10:80");
        let k6 = key("[2001:db8::10]:80");
        c.apply_all(&[
            Change::add_service(k, Scheduler::Rr),
            Change::add_service(k6, Scheduler::Rr),
            Change::AddReal {
                service: k,
                real: nat("198.51.100.20:8080", 1),
            },
        ])
        .unwrap();
        let refused: [(Change, &str); 4] = [
            (
                Change::AddReal {
                    service: k,
                    real: fullnat("198.51.100.11:8080", 1),
                },
                "FULLNAT real server 198.51.100.11:8080 of TCP 203.0.113.10:80 needs an IPv4 \
                 local address of the service to send from: add one with --add-laddr first",
            ),
            // -e to FULLNAT needs one too.
            (
                edit_forward(k, "198.51.100.20:8080", ForwardMethod::FullNat),
                "FULLNAT real server 198.51.100.20:8080 of TCP 203.0.113.10:80 needs an IPv4 \
                 local address of the service to send from: add one with --add-laddr first",
            ),
            // NAT64 goes one way only: an IPv4 VIP cannot have IPv6 FULLNAT real servers.
            (
                Change::AddReal {
                    service: k,
                    real: fullnat("[2001:db8::11]:80", 1),
                },
                "FULLNAT cannot reach the IPv6 real server 2001:db8::11 from the IPv4 VIP \
                 203.0.113.10: an IPv6 VIP may have IPv4 FULLNAT real servers (NAT64), not the \
                 reverse",
            ),
            (
                del_laddr(k, "10.0.0.9"),
                "No such local address: 10.0.0.9 of TCP 203.0.113.10:80",
            ),
        ];
        let before = c.clone();
        for (change, message) in &refused {
            let e = c.apply(change).expect_err(&format!("{change:?} accepted"));
            assert_eq!(e.to_string(), *message);
            assert_eq!(c, before, "{change:?} changed the configuration");
        }
        // An IPv6 local address does not serve IPv4 real servers.
        c.apply(&add_laddr(k, "2001:db8::9")).unwrap();
        assert!(matches!(
            c.apply(&Change::AddReal {
                service: k,
                real: fullnat("198.51.100.11:8080", 1),
            }),
            Err(ConfigError::NoLocalAddr { family: "IPv4", .. })
        ));
        c.apply_all(&[
            add_laddr(k, "10.0.0.9"),
            Change::AddReal {
                service: k,
                real: fullnat("198.51.100.11:8080", 1),
            },
            // FULLNAT servers are known by address and port, as NAT ones.
            Change::AddReal {
                service: k,
                real: fullnat("198.51.100.11:8081", 2),
            },
            edit_forward(k, "198.51.100.20:8080", ForwardMethod::FullNat),
        ])
        .unwrap();
        let svc = c.service(&k).unwrap();
        assert_eq!(svc.reals.len(), 3);
        assert!(svc.has_fullnat() && !svc.has_nat());
        assert_eq!(svc.reals[0], fullnat("198.51.100.20:8080", 1));
        // The IPv6 local address has no users: it goes.
        c.apply(&del_laddr(k, "2001:db8::9")).unwrap();
        // The last IPv4 one is in use: refused, naming the servers.
        let before = c.clone();
        let e = c.apply(&del_laddr(k, "10.0.0.9")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Local address 10.0.0.9 is the last IPv4 local address of TCP 203.0.113.10:80, \
             which its FULLNAT real servers 198.51.100.20:8080 198.51.100.11:8080 \
             198.51.100.11:8081 send from: add another one, or delete them or change their \
             forwarding method first"
        );
        assert_eq!(c, before);
        // With another one it may go; then the servers use that.
        c.apply_all(&[add_laddr(k, "10.0.0.10"), del_laddr(k, "10.0.0.9")])
            .unwrap();
        assert_eq!(
            c.service(&k).unwrap().laddrs,
            [LocalAddr::new("10.0.0.10".parse().unwrap())]
        );
        // A real server given up makes its family's last local address free.
        let mut free = c.clone();
        free.apply_all(&[
            edit_forward(k, "198.51.100.11:8080", ForwardMethod::Nat),
            edit_forward(k, "198.51.100.11:8081", ForwardMethod::Nat),
            Change::DeleteReal {
                service: k,
                addr: "198.51.100.20:8080".parse().unwrap(),
            },
            del_laddr(k, "10.0.0.10"),
        ])
        .unwrap();
        assert!(free.service(&k).unwrap().laddrs.is_empty());
        // Deleting the service deletes its local addresses: added again, it has none.
        c.apply_all(&[
            Change::DeleteService { key: k },
            Change::add_service(k, Scheduler::Rr),
        ])
        .unwrap();
        assert!(c.service(&k).unwrap().laddrs.is_empty());
    }

    #[test]
    fn local_address_lists_are_checked() {
        let mut c = Config::default();
        let k = key("203.0.113.10:80");
        c.apply(&Change::add_service(k, Scheduler::Rr)).unwrap();
        c.apply(&add_laddr(k, "10.0.0.1")).unwrap();
        let with = |lo, hi| Change::AddLocalAddr {
            service: k,
            laddr: LocalAddr {
                addr: "10.0.0.2".parse().unwrap(),
                ports: PortRange { lo, hi },
                iface: Some("eth1".into()),
            },
        };
        let before = c.clone();
        for (change, want) in [
            (
                add_laddr(k, "10.0.0.1"),
                ConfigError::LocalAddrExists {
                    addr: "10.0.0.1".into(),
                    service: "TCP 203.0.113.10:80".into(),
                },
            ),
            (
                with(2000, 1999),
                ConfigError::BadPortRange("2000-1999".into()),
            ),
            (with(0, 100), ConfigError::BadPortRange("0-100".into())),
            (
                Change::AddLocalAddr {
                    service: k,
                    laddr: LocalAddr {
                        iface: Some("eth 1".into()),
                        ..LocalAddr::new("10.0.0.2".parse().unwrap())
                    },
                },
                ConfigError::BadInterface("eth 1".into()),
            ),
            (
                Change::AddLocalAddr {
                    service: k,
                    laddr: LocalAddr {
                        iface: Some("a-very-long-name".into()),
                        ..LocalAddr::new("10.0.0.2".parse().unwrap())
                    },
                },
                ConfigError::BadInterface("a-very-long-name".into()),
            ),
            (
                add_laddr(k, "127.0.0.1"),
                ConfigError::BadAddress("127.0.0.1".into()),
            ),
            (
                add_laddr(key("203.0.113.99:80"), "10.0.0.3"),
                ConfigError::NoSuchService("TCP 203.0.113.99:80".into()),
            ),
        ] {
            assert_eq!(c.apply(&change), Err(want));
            assert_eq!(c, before);
        }
        assert_eq!(
            ConfigError::BadPortRange("0-100".into()).to_string(),
            "Illegal local port range: 0-100 (expected LO-HI with 1 <= LO <= HI <= 65535)"
        );
        // One port is a range; the settings are kept as given.
        c.apply(&with(40000, 40000)).unwrap();
        assert_eq!(c.service(&k).unwrap().laddrs[1].ports.len(), 1);
        assert_eq!(
            c.service(&k).unwrap().laddrs[1].iface.as_deref(),
            Some("eth1")
        );
        // At most MAX_LADDRS.
        for i in 3..=MAX_LADDRS as u8 {
            c.apply(&add_laddr(k, &format!("10.0.1.{i}"))).unwrap();
        }
        assert_eq!(c.service(&k).unwrap().laddrs.len(), MAX_LADDRS);
        let before = c.clone();
        assert_eq!(
            c.apply(&add_laddr(k, "10.0.2.1")).unwrap_err().to_string(),
            "Too many local addresses for TCP 203.0.113.10:80: at most 64"
        );
        assert_eq!(c, before);
    }

    #[test]
    fn port_ranges_parse_and_serialise_as_lo_hi() {
        assert_eq!(PortRange::DEFAULT.len(), 64512);
        assert_eq!(
            "40000-40999".parse::<PortRange>().unwrap(),
            PortRange {
                lo: 40000,
                hi: 40999
            }
        );
        assert_eq!("5000".parse::<PortRange>().unwrap().len(), 1);
        for bad in ["0-10", "10-9", "a-b", "1-65536", "", "-"] {
            assert!(
                matches!(bad.parse::<PortRange>(), Err(ConfigError::BadPortRange(s)) if s == bad),
                "{bad}"
            );
        }
        let l = LocalAddr {
            addr: "10.0.0.10".parse().unwrap(),
            ports: "40000-40999".parse().unwrap(),
            iface: Some("eth1".into()),
        };
        let json = serde_json::to_string(&l).unwrap();
        assert_eq!(
            json,
            r#"{"addr":"10.0.0.10","ports":"40000-40999","iface":"eth1"}"#
        );
        assert_eq!(serde_json::from_str::<LocalAddr>(&json).unwrap(), l);
        // Defaults are left out, and read back.
        let plain = LocalAddr::new("10.0.0.9".parse().unwrap());
        assert_eq!(
            serde_json::to_string(&plain).unwrap(),
            r#"{"addr":"10.0.0.9"}"#
        );
        assert_eq!(
            serde_json::from_str::<LocalAddr>(r#"{"addr":"10.0.0.9"}"#).unwrap(),
            plain
        );
        assert!(serde_json::from_str::<LocalAddr>(r#"{"addr":"10.0.0.9","ports":"9-1"}"#).is_err());
    }

    /// What the data plane and the daemon read: the method's names, ports, and JSON of a
    /// configuration and of the changes.
    #[test]
    fn fullnat_in_json_and_for_the_data_plane() {
        assert_eq!(fullnat("198.51.100.11:8080", 1).dest_port(80), 8080);
        assert_eq!(fullnat("198.51.100.11:0", 1).dest_port(443), 443);
        assert_eq!(ForwardMethod::FullNat.ipvsadm_name(), "FullNat");
        assert_eq!(
            serde_json::to_string(&ForwardMethod::FullNat).unwrap(),
            "\"fullnat\""
        );
        let k = key("203.0.113.10:80");
        let change = Change::AddLocalAddr {
            service: k,
            laddr: LocalAddr::new("10.0.0.9".parse().unwrap()),
        };
        let json = serde_json::to_string(&change).unwrap();
        assert_eq!(
            json,
            r#"{"op":"add_local_addr","service":{"protocol":"tcp","addr":"203.0.113.10:80"},"laddr":{"addr":"10.0.0.9"}}"#
        );
        assert_eq!(serde_json::from_str::<Change>(&json).unwrap(), change);
        let del = del_laddr(k, "10.0.0.9");
        let json = serde_json::to_string(&del).unwrap();
        assert!(json.starts_with(r#"{"op":"del_local_addr""#), "{json}");
        assert_eq!(serde_json::from_str::<Change>(&json).unwrap(), del);
        let mut c = Config::default();
        c.apply_all(&[
            Change::add_service(k, Scheduler::Rr),
            change,
            Change::AddReal {
                service: k,
                real: fullnat("198.51.100.11:8080", 1),
            },
        ])
        .unwrap();
        let text = serde_json::to_string(&c).unwrap();
        assert!(text.contains(r#""laddrs":[{"addr":"10.0.0.9"}]"#), "{text}");
        assert!(text.contains(r#""forward":"fullnat""#), "{text}");
        assert_eq!(serde_json::from_str::<Config>(&text).unwrap(), c);
        // A service without local addresses writes none (older readers see no new key).
        let plain = Config::from_services(vec![Service {
            laddrs: Vec::new(),
            reals: Vec::new(),
            ..c.services()[0].clone()
        }]);
        assert!(!serde_json::to_string(&plain).unwrap().contains("laddrs"));
        // A port-0 service's FULLNAT servers take port 0, as NAT ones.
        let k0 = key("203.0.113.10:0");
        let mut c0 = Config::default();
        c0.apply_all(&[
            Change::AddService {
                key: k0,
                scheduler: Scheduler::Rr,
                flags: SchedFlags::default(),
                persistence: Some(Persistence {
                    timeout: 300,
                    prefix: 32,
                }),
            },
            add_laddr(k0, "10.0.0.9"),
        ])
        .unwrap();
        assert!(matches!(
            c0.apply(&Change::AddReal {
                service: k0,
                real: fullnat("198.51.100.11:8080", 1),
            }),
            Err(ConfigError::FullNatPortOnPortZero { .. })
        ));
        c0.apply(&Change::AddReal {
            service: k0,
            real: fullnat("198.51.100.11:0", 1),
        })
        .unwrap();
    }
}
