//! Host and port names, as ipvsadm prints and reads them without `-n`: addresses through the
//! system resolver (reverse lookups with getnameinfo: /etc/hosts, then DNS, as nsswitch.conf
//! says) and ports through /etc/services (`80` is `http`).
//!
//! ipvsadm blocks on every lookup; xvsadm looks all of a listing's addresses up in parallel and
//! gives them [`RESOLVE_BUDGET`] in total, so a dead resolver delays a listing by at most that
//! much. An address without a name by then, or without one at all, is printed as a number.

use std::{
    collections::{HashMap, HashSet},
    ffi::CStr,
    net::{IpAddr, SocketAddr, ToSocketAddrs},
    sync::{mpsc, Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use crate::model::Protocol;

/// Total time one listing waits for reverse lookups.
pub const RESOLVE_BUDGET: Duration = Duration::from_secs(2);
/// Lookups run in parallel on at most this many threads.
const RESOLVER_THREADS: usize = 16;
/// ipvsadm formats an address and port into a 60-byte buffer (addrport_to_anyname).
const ADDRPORT_MAX: usize = 59;

/// Names for a listing's addresses and ports.
pub trait Names {
    /// The host name of an address, if it has one.
    fn host(&self, ip: IpAddr) -> Option<&str>;
    /// The service name of a port, if /etc/services has one.
    fn service(&self, port: u16, protocol: Protocol) -> Option<&str>;
}

/// `-n`: numbers only.
pub struct Numeric;

impl Names for Numeric {
    fn host(&self, _: IpAddr) -> Option<&str> {
        None
    }
    fn service(&self, _: u16, _: Protocol) -> Option<&str> {
        None
    }
}

/// Names looked up ahead of rendering (rendering itself never blocks).
#[derive(Debug, Default)]
pub struct Resolved {
    hosts: HashMap<IpAddr, String>,
    services: Option<&'static Services>,
}

impl Resolved {
    /// Looks up every address given, in parallel, for at most `budget`; ports come from
    /// /etc/services.
    pub fn lookup(ips: impl IntoIterator<Item = IpAddr>, budget: Duration) -> Resolved {
        Resolved {
            hosts: reverse_all(ips, budget),
            services: Some(Services::system()),
        }
    }

    /// Fixed names (tests, and callers that resolved elsewhere).
    pub fn with(hosts: HashMap<IpAddr, String>, services: &'static Services) -> Resolved {
        Resolved {
            hosts,
            services: Some(services),
        }
    }
}

impl Names for Resolved {
    fn host(&self, ip: IpAddr) -> Option<&str> {
        self.hosts.get(&ip).map(String::as_str)
    }
    fn service(&self, port: u16, protocol: Protocol) -> Option<&str> {
        self.services?.name(port, protocol)
    }
}

/// ipvsadm's addrport_to_anyname: `host:port` (IPv6 in brackets), each part named when a name
/// is known, cut to ipvsadm's buffer.
pub fn addr_port(names: &dyn Names, addr: SocketAddr, protocol: Protocol) -> String {
    let host = names
        .host(addr.ip())
        .map(str::to_string)
        .unwrap_or_else(|| addr.ip().to_string());
    let port = names
        .service(addr.port(), protocol)
        .map(str::to_string)
        .unwrap_or_else(|| addr.port().to_string());
    let s = if addr.is_ipv4() {
        format!("{host}:{port}")
    } else {
        format!("[{host}]:{port}")
    };
    truncate(s, ADDRPORT_MAX)
}

/// The first `max` bytes of `s` (on a character boundary): ipvsadm cuts names to its columns.
pub fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// The name of an address (getnameinfo with NI_NAMEREQD), blocking.
pub fn reverse(ip: IpAddr) -> Option<String> {
    let (storage, len) = sockaddr_of(ip);
    let mut host = [0 as libc::c_char; 1025];
    // SAFETY: storage holds a valid sockaddr of `len` bytes; host is a writable buffer of the
    // given size; no service buffer is requested.
    let rc = unsafe {
        libc::getnameinfo(
            &storage as *const libc::sockaddr_storage as *const libc::sockaddr,
            len,
            host.as_mut_ptr(),
            host.len() as libc::socklen_t,
            std::ptr::null_mut(),
            0,
            libc::NI_NAMEREQD,
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: getnameinfo NUL-terminates the host buffer on success.
    let name = unsafe { CStr::from_ptr(host.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    (!name.is_empty()).then_some(name)
}

fn sockaddr_of(ip: IpAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid (unspecified) value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match ip {
        IpAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Reverse lookups of many addresses on a few threads, for at most `budget` in total. Lookups
/// still running then are abandoned (their threads end with the process).
pub fn reverse_all(
    ips: impl IntoIterator<Item = IpAddr>,
    budget: Duration,
) -> HashMap<IpAddr, String> {
    let unique: Vec<IpAddr> = ips
        .into_iter()
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut out = HashMap::new();
    if unique.is_empty() {
        return out;
    }
    let deadline = Instant::now() + budget;
    let total = unique.len();
    let queue = Arc::new(Mutex::new(unique));
    let (tx, rx) = mpsc::channel();
    for _ in 0..total.min(RESOLVER_THREADS) {
        let queue = queue.clone();
        let tx = tx.clone();
        let spawned = std::thread::Builder::new()
            .name("xvsadm-resolve".into())
            .spawn(move || loop {
                let next = queue.lock().ok().and_then(|mut q| q.pop());
                let Some(ip) = next else { return };
                if tx.send((ip, reverse(ip))).is_err() {
                    return;
                }
            });
        if spawned.is_err() {
            break;
        }
    }
    drop(tx);
    for _ in 0..total {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((ip, Some(name))) => {
                out.insert(ip, name);
            }
            Ok((_, None)) => {}
            Err(_) => break,
        }
    }
    out
}

/// A host name or address for a service or real server: IPv4 first, as ipvsadm's
/// gethostbyname.
pub fn forward(host: &str) -> Option<IpAddr> {
    let addrs: Vec<SocketAddr> = (host, 0).to_socket_addrs().ok()?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .map(|a| a.ip())
}

/// Port names from /etc/services (what getservbyport/getservbyname read).
#[derive(Debug, Default)]
pub struct Services {
    by_port: HashMap<(u16, Protocol), String>,
    by_name: HashMap<(String, Protocol), u16>,
}

impl Services {
    /// Parses the services(5) format: `name port/proto [aliases...] [# comment]`.
    pub fn parse(text: &str) -> Services {
        let mut s = Services::default();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            let mut words = line.split_whitespace();
            let (Some(name), Some(port_proto)) = (words.next(), words.next()) else {
                continue;
            };
            let Some((port, proto)) = port_proto.split_once('/') else {
                continue;
            };
            let Ok(port) = port.parse::<u16>() else {
                continue;
            };
            let protocol = match proto {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                _ => continue,
            };
            // The first entry for a port is its name, as getservbyport returns.
            s.by_port
                .entry((port, protocol))
                .or_insert_with(|| name.to_string());
            for alias in std::iter::once(name).chain(words) {
                s.by_name
                    .entry((alias.to_string(), protocol))
                    .or_insert(port);
            }
        }
        s
    }

    /// The system's /etc/services, read once (empty if missing).
    pub fn system() -> &'static Services {
        static SYSTEM: OnceLock<Services> = OnceLock::new();
        SYSTEM.get_or_init(|| {
            Services::parse(&std::fs::read_to_string("/etc/services").unwrap_or_default())
        })
    }

    /// getservbyport.
    pub fn name(&self, port: u16, protocol: Protocol) -> Option<&str> {
        self.by_port.get(&(port, protocol)).map(String::as_str)
    }

    /// getservbyname.
    pub fn port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.by_name.get(&(name.to_string(), protocol)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICES: &str = "\
# Network services, Internet style
tcpmux\t\t1/tcp\t\t\t\t# TCP port service multiplexer
domain\t\t53/tcp\t\t\t\t# Domain Name Server
domain\t\t53/udp
http\t\t80/tcp\t\twww\t\t# WorldWideWeb HTTP
https\t\t443/tcp\t\t\t\t# http protocol over TLS/SSL
https\t\t443/udp\t\t\t\t# HTTP/3
http-alt\t8080/tcp\twebcache\t# WWW caching service
";

    fn services() -> &'static Services {
        static S: OnceLock<Services> = OnceLock::new();
        S.get_or_init(|| Services::parse(SERVICES))
    }

    #[test]
    fn services_file_both_ways() {
        let s = services();
        assert_eq!(s.name(80, Protocol::Tcp), Some("http"));
        assert_eq!(s.name(80, Protocol::Udp), None);
        assert_eq!(s.name(443, Protocol::Udp), Some("https"));
        assert_eq!(s.name(8080, Protocol::Tcp), Some("http-alt"));
        assert_eq!(s.port("www", Protocol::Tcp), Some(80));
        assert_eq!(s.port("webcache", Protocol::Tcp), Some(8080));
        assert_eq!(s.port("domain", Protocol::Udp), Some(53));
        assert_eq!(s.port("http", Protocol::Udp), None);
    }

    #[test]
    fn addr_port_as_ipvsadm() {
        let hosts = HashMap::from([
            (
                "203.0.113.10".parse().unwrap(),
                "www.example.com".to_string(),
            ),
            (
                "2001:db8::10".parse().unwrap(),
                "v6.example.com".to_string(),
            ),
            (
                "198.51.100.11".parse().unwrap(),
                "a-very-long-host-name-of-a-real-server.backend.example.com".to_string(),
            ),
        ]);
        let names = Resolved::with(hosts, services());
        let a = |s: &str, p| addr_port(&names, s.parse().unwrap(), p);
        assert_eq!(a("203.0.113.10:80", Protocol::Tcp), "www.example.com:http");
        assert_eq!(a("203.0.113.10:80", Protocol::Udp), "www.example.com:80");
        assert_eq!(
            a("[2001:db8::10]:53", Protocol::Udp),
            "[v6.example.com]:domain"
        );
        assert_eq!(a("192.0.2.1:0", Protocol::Tcp), "192.0.2.1:0");
        assert_eq!(a("[2001:db8::1]:443", Protocol::Tcp), "[2001:db8::1]:https");
        // Cut to ipvsadm's 60-byte buffer.
        let long = a("198.51.100.11:80", Protocol::Tcp);
        assert_eq!(long.len(), 59);
        assert!(long.starts_with("a-very-long-host-name"), "{long}");
        assert_eq!(
            addr_port(
                &Numeric,
                "[2001:db8::10]:80".parse().unwrap(),
                Protocol::Tcp
            ),
            "[2001:db8::10]:80"
        );
    }

    #[test]
    fn reverse_lookups_use_the_hosts_file() {
        // /etc/hosts names loopback everywhere; "files" comes before DNS in nsswitch.conf, so
        // this asks no name server. (The fallback to numbers when DNS is dead is checked end
        // to end in a namespace whose resolv.conf points nowhere.)
        let lo = IpAddr::from([127, 0, 0, 1]);
        let found = reverse_all([lo, lo], RESOLVE_BUDGET);
        assert_eq!(found.len(), 1);
        assert!(!found[&lo].is_empty());
    }
}
