//! The desired state: virtual services, their real servers and schedulers. The controller holds
//! it as the source of truth; every change is validated here before anything is touched.

use std::{fmt, net::SocketAddr, str::FromStr};

use serde::{Deserialize, Serialize};
use thiserror::Error;

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

/// Identifies a virtual service: protocol, VIP and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceKey {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// VIP and port.
    pub addr: SocketAddr,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.protocol, self.addr)
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

/// How packets reach a real server (`-g`, `-i`, `-m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardMethod {
    /// Direct routing ("gatewaying", `-g`): the Ethernet header is rewritten, nothing else.
    Dr,
}

impl ForwardMethod {
    /// The name ipvsadm prints in the Forward column.
    pub fn ipvsadm_name(self) -> &'static str {
        match self {
            ForwardMethod::Dr => "Route",
        }
    }
}

/// Largest weight ipvsadm accepts.
pub const MAX_WEIGHT: u32 = 65535;

/// One real server of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RealServer {
    /// Address and port (in DR mode the port is always the service's).
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
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl RealServer {
    /// A direct-routing real server without thresholds.
    pub fn dr(addr: SocketAddr, weight: u32) -> RealServer {
        RealServer {
            addr,
            weight,
            forward: ForwardMethod::Dr,
            u_threshold: 0,
            l_threshold: 0,
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

/// A virtual service and its real servers, in the order they were added.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Protocol, VIP, port.
    pub key: ServiceKey,
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
}

/// The whole desired configuration, services in the order they were added.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Virtual services.
    pub services: Vec<Service>,
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
    },
    /// `-d`: delete a real server from a service.
    DeleteReal {
        /// The service.
        service: ServiceKey,
        /// The real server's address.
        addr: SocketAddr,
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
    /// The service with this key.
    pub fn service(&self, key: &ServiceKey) -> Option<&Service> {
        self.services.iter().find(|s| s.key == *key)
    }

    fn service_mut(&mut self, key: &ServiceKey) -> Result<&mut Service, ConfigError> {
        self.services
            .iter_mut()
            .find(|s| s.key == *key)
            .ok_or_else(|| ConfigError::NoSuchService(key.to_string()))
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
                validate_vip(key, persistence)?;
                if self.service(key).is_some() {
                    return Err(ConfigError::ServiceExists(key.to_string()));
                }
                self.services.push(Service {
                    key: *key,
                    scheduler: *scheduler,
                    flags: *flags,
                    persistence: *persistence,
                    reals: Vec::new(),
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
                validate_vip(key, &persistence)?;
                svc.persistence = persistence;
                if let Some(s) = scheduler {
                    svc.scheduler = *s;
                }
                if let Some(f) = flags {
                    svc.flags = *f;
                }
            }
            Change::DeleteService { key } => {
                let before = self.services.len();
                self.services.retain(|s| s.key != *key);
                if self.services.len() == before {
                    return Err(ConfigError::NoSuchService(key.to_string()));
                }
            }
            Change::Clear => self.services.clear(),
            Change::AddReal { service, real } => {
                let svc = self.service_mut(service)?;
                let real = normalise_real(svc, real)?;
                if svc.reals.iter().any(|r| r.addr == real.addr) {
                    return Err(ConfigError::RealExists(real.addr.to_string()));
                }
                svc.reals.push(real);
            }
            Change::EditReal {
                service,
                addr,
                weight,
                forward,
                u_threshold,
                l_threshold,
            } => {
                let svc = self.service_mut(service)?;
                let port = svc.key.addr.port();
                let addr = SocketAddr::new(addr.ip(), port);
                let current = *svc
                    .reals
                    .iter()
                    .find(|r| r.addr == addr)
                    .ok_or_else(|| ConfigError::NoSuchReal(addr.to_string()))?;
                let edited = RealServer {
                    addr,
                    weight: weight.unwrap_or(current.weight),
                    forward: forward.unwrap_or(current.forward),
                    u_threshold: u_threshold.unwrap_or(current.u_threshold),
                    l_threshold: l_threshold.unwrap_or(current.l_threshold),
                };
                let edited = normalise_real(svc, &edited)?;
                if let Some(r) = svc.reals.iter_mut().find(|r| r.addr == addr) {
                    *r = edited;
                }
            }
            Change::DeleteReal { service, addr } => {
                let svc = self.service_mut(service)?;
                let addr = SocketAddr::new(addr.ip(), svc.key.addr.port());
                let before = svc.reals.len();
                svc.reals.retain(|r| r.addr != addr);
                if svc.reals.len() == before {
                    return Err(ConfigError::NoSuchReal(addr.to_string()));
                }
            }
        }
        Ok(())
    }

    /// Applies changes as one transaction: all of them, or none.
    pub fn apply_all(&mut self, changes: &[Change]) -> Result<(), ConfigError> {
        let mut next = self.clone();
        for c in changes {
            next.apply(c)?;
        }
        *self = next;
        Ok(())
    }
}

fn validate_vip(key: &ServiceKey, persistence: &Option<Persistence>) -> Result<(), ConfigError> {
    let ip = key.addr.ip();
    if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
        return Err(ConfigError::BadAddress(ip.to_string()));
    }
    // Port 0 (every port of the VIP) only makes sense with persistence, as in ipvsadm.
    if key.addr.port() == 0 && persistence.is_none() {
        return Err(ConfigError::ZeroPort(key.to_string()));
    }
    if let Some(p) = persistence {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if p.prefix > max {
            return Err(ConfigError::BadNetmask(p.prefix));
        }
        if p.timeout == 0 || p.timeout > MAX_TIMEOUT {
            return Err(ConfigError::BadTimeout(p.timeout));
        }
    }
    Ok(())
}

/// Checks a real server against its service and applies DR's rule that the port is the VIP's
/// (ipvsadm does the same for every method but masquerading).
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
    if ip.is_ipv4() != svc.key.addr.ip().is_ipv4() {
        return Err(ConfigError::FamilyMismatch {
            real: ip.to_string(),
            vip: svc.key.addr.ip().to_string(),
        });
    }
    Ok(RealServer {
        addr: SocketAddr::new(ip, svc.key.addr.port()),
        ..*real
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> ServiceKey {
        ServiceKey {
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
}
