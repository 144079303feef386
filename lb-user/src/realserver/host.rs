//! What `xvsadm realserver` reads and changes on the host: addresses (rtnetlink), the default
//! route's interface, and IPv4 sysctls (/proc/sys, which always shows the caller's network
//! namespace).

use std::{
    collections::BTreeSet,
    ffi::CString,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use futures::TryStreamExt;
use rtnetlink::{
    packet_route::{
        address::{AddressAttribute, AddressHeaderFlags, AddressMessage, AddressScope},
        route::{RouteAttribute, RouteHeader, RouteMessage},
    },
    RouteMessageBuilder,
};

use super::RealServerError;

/// The loopback interface, where VIPs are bound.
pub const LOOPBACK: &str = "lo";

/// The index of interface `name` in this network namespace, if it exists.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// The name of interface `ifindex`, if it exists.
pub fn ifname(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf holds IF_NAMESIZE bytes as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// The interface of the default route (IPv4 first, then IPv6), as `ip route get` would pick for
/// a remote client: the interface decapsulated packets arrive on and replies leave from.
pub async fn default_route_iface(
    handle: &rtnetlink::Handle,
) -> Result<Option<u32>, RealServerError> {
    let v4 = RouteMessageBuilder::<Ipv4Addr>::new().build();
    let v6 = RouteMessageBuilder::<Ipv6Addr>::new().build();
    for query in [v4, v6] {
        let mut routes = handle.route().get(query).execute();
        while let Some(r) = routes.try_next().await? {
            if let Some(idx) = default_oif(&r) {
                return Ok(Some(idx));
            }
        }
    }
    Ok(None)
}

fn default_oif(r: &RouteMessage) -> Option<u32> {
    let table = r
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(r.header.table as u32);
    if r.header.destination_prefix_length != 0 || table != RouteHeader::RT_TABLE_MAIN as u32 {
        return None;
    }
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        RouteAttribute::MultiPath(hops) => hops.first().map(|h| h.interface_index),
        _ => None,
    })
}

/// One address of an interface, with the message that deletes it.
pub struct IfAddr {
    /// The address.
    pub ip: IpAddr,
    /// Its prefix length.
    pub prefix: u8,
    /// Link-local or host scope (not reachable from other networks).
    pub local_scope: bool,
    msg: AddressMessage,
}

/// Every address of interface `ifindex`.
pub async fn addresses(
    handle: &rtnetlink::Handle,
    ifindex: u32,
) -> Result<Vec<IfAddr>, RealServerError> {
    let mut out = Vec::new();
    let mut dump = handle
        .address()
        .get()
        .set_link_index_filter(ifindex)
        .execute();
    while let Some(msg) = dump.try_next().await? {
        // IFA_LOCAL is the address itself (IFA_ADDRESS is the peer on point-to-point links).
        let local = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let addr = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        let Some(ip) = local.or(addr) else { continue };
        out.push(IfAddr {
            ip,
            prefix: msg.header.prefix_len,
            local_scope: matches!(msg.header.scope, AddressScope::Link | AddressScope::Host),
            msg,
        });
    }
    Ok(out)
}

/// The addresses other hosts can reach this one at on interface `ifindex` (global scope).
pub async fn reachable_addresses(
    handle: &rtnetlink::Handle,
    ifindex: u32,
) -> Result<BTreeSet<IpAddr>, RealServerError> {
    Ok(addresses(handle, ifindex)
        .await?
        .into_iter()
        .filter(|a| !a.local_scope)
        .map(|a| a.ip)
        .collect())
}

/// The full-length prefix a VIP is bound with: /32 or /128.
pub fn host_prefix(ip: &IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// Binds `ip` to interface `ifindex` as a host address (IPv6 without duplicate detection).
pub async fn add_address(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    ip: IpAddr,
) -> Result<(), RealServerError> {
    let mut req = handle.address().add(ifindex, ip, host_prefix(&ip));
    if ip.is_ipv6() {
        req.message_mut().header.flags |= AddressHeaderFlags::Nodad;
    }
    req.execute().await?;
    Ok(())
}

/// Removes `ip` from interface `ifindex`; false when it was not there.
pub async fn remove_address(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    ip: IpAddr,
) -> Result<bool, RealServerError> {
    for a in addresses(handle, ifindex).await? {
        if a.ip == ip {
            handle.address().del(a.msg).execute().await?;
            return Ok(true);
        }
    }
    Ok(false)
}

/// An IPv4 per-interface sysctl: net.ipv4.conf.DEV.NAME.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Sysctl {
    /// The interface (or "all").
    pub dev: String,
    /// The setting (arp_ignore, arp_announce, rp_filter).
    pub name: String,
}

impl Sysctl {
    /// net.ipv4.conf.DEV.NAME.
    pub fn new(dev: &str, name: &str) -> Self {
        Self {
            dev: dev.to_string(),
            name: name.to_string(),
        }
    }

    /// The name sysctl(8) shows (a dot in an interface name becomes a slash there).
    pub fn key(&self) -> String {
        format!("net.ipv4.conf.{}.{}", self.dev.replace('.', "/"), self.name)
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/sys/net/ipv4/conf/{}/{}",
            self.dev, self.name
        ))
    }

    /// The current value.
    pub fn read(&self) -> Result<String, RealServerError> {
        std::fs::read_to_string(self.path())
            .map(|s| s.trim().to_string())
            .map_err(|source| RealServerError::Sysctl {
                key: self.key(),
                source,
            })
    }

    /// Sets the value.
    pub fn write(&self, value: &str) -> Result<(), RealServerError> {
        std::fs::write(self.path(), format!("{value}\n")).map_err(|source| {
            RealServerError::Sysctl {
                key: self.key(),
                source,
            }
        })
    }
}
