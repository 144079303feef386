//! The FULLNAT audit log (`xvsd --audit-fullnat`): FULLNAT hides the client from the real
//! server, so each new FULLNAT connection can be logged in one line that pairs the client with
//! the local address and port the real server sees. The data plane reports each connection on
//! the FNAT_AUDIT ring buffer (only while CONFIG's AUDIT_FULLNAT flag is set); a thread of
//! xvsd's reads it and logs under the target [`TARGET`].

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
};

use aya::maps::{MapData, RingBuf};
use lb_common::{FullNatAudit, FAMILY_V4, PROTO_UDP};
use tracing::{info, warn};

/// The target audit lines are logged under (filter them with RUST_LOG or a log shipper).
pub const TARGET: &str = "xvs::audit";

/// One new FULLNAT connection, as logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection {
    /// "TCP" or "UDP".
    pub protocol: &'static str,
    /// The client.
    pub client: SocketAddr,
    /// The virtual service it connected to.
    pub vip: SocketAddr,
    /// The local address and port the real server sees instead of the client.
    pub local: SocketAddr,
    /// The real server.
    pub real: SocketAddr,
}

impl Connection {
    /// A ring-buffer report, or None when it is too short to be one.
    pub fn from_bytes(bytes: &[u8]) -> Option<Connection> {
        if bytes.len() < size_of::<FullNatAudit>() {
            return None;
        }
        // SAFETY: long enough for one FullNatAudit, which is plain old data (any bit pattern
        // is valid); read_unaligned makes no alignment assumption about the ring's bytes.
        let a: FullNatAudit = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        Some(Connection::from(&a))
    }
}

impl From<&FullNatAudit> for Connection {
    fn from(a: &FullNatAudit) -> Connection {
        let ip = |b: &[u8; 16]| -> IpAddr {
            if a.family == FAMILY_V4 {
                IpAddr::from([b[0], b[1], b[2], b[3]])
            } else {
                IpAddr::from(*b)
            }
        };
        let at = |b: &[u8; 16], port_be: u16| SocketAddr::new(ip(b), u16::from_be(port_be));
        Connection {
            protocol: if a.proto == PROTO_UDP { "UDP" } else { "TCP" },
            client: at(&a.client, a.cport_be),
            vip: at(&a.vip, a.vport_be),
            local: at(&a.local, a.lport_be),
            real: at(&a.real, a.rport_be),
        }
    }
}

impl fmt::Display for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} -> {} as {} -> {}",
            self.protocol, self.client, self.vip, self.local, self.real
        )
    }
}

/// Logs every report on `ring` as it comes, on a thread of its own (a burst of new connections
/// must not take a controller worker).
pub fn spawn(mut ring: RingBuf<MapData>) {
    let spawned = std::thread::Builder::new()
        .name("fullnat-audit".into())
        .spawn(move || loop {
            while let Some(item) = ring.next() {
                match Connection::from_bytes(&item) {
                    Some(c) => info!(target: TARGET, client = %c.client, local = %c.local, real = %c.real, "new FULLNAT connection: {c}"),
                    None => warn!(target: TARGET, len = item.len(), "a short FULLNAT audit report"),
                }
            }
            let mut fd = libc::pollfd {
                fd: ring.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            let ready = unsafe { libc::poll(&mut fd, 1, -1) };
            if ready < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
            {
                warn!(error = %std::io::Error::last_os_error(), "the FULLNAT audit reports cannot be read any more");
                return;
            }
        });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start the FULLNAT audit reader: audit lines are lost");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::{FAMILY_V6, PROTO_TCP};

    #[test]
    fn a_report_reads_as_one_line_with_both_tuples() {
        let mut a = FullNatAudit {
            cport_be: 41000u16.to_be(),
            vport_be: 80u16.to_be(),
            lport_be: 30001u16.to_be(),
            rport_be: 8080u16.to_be(),
            proto: PROTO_TCP,
            family: FAMILY_V4,
            ..FullNatAudit::default()
        };
        a.client[..4].copy_from_slice(&[192, 0, 2, 1]);
        a.vip[..4].copy_from_slice(&[203, 0, 113, 10]);
        a.local[..4].copy_from_slice(&[198, 51, 100, 9]);
        a.real[..4].copy_from_slice(&[198, 51, 100, 11]);
        // SAFETY: FullNatAudit is plain old data; its bytes are what the ring carries.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&a as *const FullNatAudit).cast::<u8>(),
                size_of::<FullNatAudit>(),
            )
        };
        let c = Connection::from_bytes(bytes).unwrap();
        assert_eq!(
            c.to_string(),
            "TCP 192.0.2.1:41000 -> 203.0.113.10:80 as 198.51.100.9:30001 -> 198.51.100.11:8080"
        );
        assert_eq!(Connection::from_bytes(&bytes[..79]), None);
        a.family = FAMILY_V6;
        a.proto = PROTO_UDP;
        a.client = "2001:db8::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        assert_eq!(
            Connection::from(&a).client.to_string(),
            "[2001:db8::1]:41000"
        );
        assert_eq!(Connection::from(&a).protocol, "UDP");
    }
}
