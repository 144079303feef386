//! Between the connection table and the wire: a data-plane report ([`SyncEvent`]) becomes an
//! IPVS entry ([`SyncConn`]) on the master, and an entry becomes a connection-table entry
//! ([`ConnEntry`]) on the backup. Pure: the real server of a backend slot, the local ids and
//! the clock come from the caller.

use std::net::{IpAddr, SocketAddr};

use lb_common::{
    ConnEntry, ConnState as Local, DataplaneConfig, FlowKey, NatReply, SyncEvent, FAMILY_V4,
    FAMILY_V6, PROTO_TCP, PROTO_UDP,
};

use super::{Addrs, ConnFlags, ConnState, Forward, Ports, SyncConn, TcpState};
use crate::{dataplane::timeout_of, model::ForwardMethod};

const NS: u64 = 1_000_000_000;

/// IPVS's forwarding method for ours; FULLNAT, which IPVS has not, as DPVS numbers it (its
/// local address and port travel in xvs's own option).
pub fn forward_of(f: &ForwardMethod) -> Forward {
    match f {
        ForwardMethod::Dr => Forward::DirectRoute,
        ForwardMethod::Tunnel(_) => Forward::Tunnel,
        ForwardMethod::Nat => Forward::Masq,
        ForwardMethod::FullNat => Forward::FullNat,
    }
}

/// IPVS's state for ours: TCP states by the kernel's numbers, UDP's single state 0.
pub fn wire_state(state: Local) -> ConnState {
    match state {
        Local::Udp => ConnState::Other(0),
        Local::SynRecv => ConnState::Tcp(TcpState::SynRecv),
        Local::Established => ConnState::Tcp(TcpState::Established),
        Local::FinWait => ConnState::Tcp(TcpState::FinWait),
        Local::Close => ConnState::Tcp(TcpState::Close),
    }
}

/// Our state for IPVS's, or None for a protocol we do not balance. IPVS's finer TCP states
/// fold into ours by their timeouts: the handshake states are SYN_RECV, the closing ones
/// FIN_WAIT, CLOSE stays CLOSE.
pub fn local_state(protocol: u8, state: ConnState) -> Option<Local> {
    match (protocol, state) {
        (PROTO_UDP, _) => Some(Local::Udp),
        (PROTO_TCP, ConnState::Tcp(s)) => Some(match s {
            TcpState::Established => Local::Established,
            TcpState::None
            | TcpState::SynSent
            | TcpState::SynRecv
            | TcpState::Listen
            | TcpState::SynAck => Local::SynRecv,
            TcpState::FinWait | TcpState::TimeWait | TcpState::CloseWait | TcpState::LastAck => {
                Local::FinWait
            }
            TcpState::Close => Local::Close,
        }),
        _ => None,
    }
}

fn ip(family: u8, a: &[u8; 16]) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::from([a[0], a[1], a[2], a[3]])
    } else {
        IpAddr::from(*a)
    }
}

fn bytes(a: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match a {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out = v6.octets(),
    }
    out
}

/// The entry a master sends for report `ev` of a connection to `real` (forwarded by
/// `forward`; FULLNAT's `local` address and port with it): its state's timeout in seconds, as
/// IPVS sends a connection's timeout. A real server given without a port gets the client's
/// destination port, as the data plane does. None for what the wire cannot carry: mixed
/// families, or a FULLNAT connection without its local address and port (not given one yet).
pub fn event_to_conn(
    ev: &SyncEvent,
    real: SocketAddr,
    forward: Forward,
    local: Option<SocketAddr>,
    cfg: &DataplaneConfig,
) -> Option<SyncConn> {
    let local = match (forward, local) {
        (Forward::FullNat, None) => return None,
        (Forward::FullNat, Some(l)) if l.is_ipv6() != real.is_ipv6() || l.port() == 0 => {
            return None
        }
        (Forward::FullNat, l) => l,
        _ => None,
    };
    let k = &ev.key;
    let client = ip(k.family, &k.src);
    let virt = ip(k.family, &k.dst);
    let dest = real.ip();
    let addrs = match (client, virt, dest) {
        (IpAddr::V4(client), IpAddr::V4(virt), IpAddr::V4(dest)) => {
            Addrs::V4 { client, virt, dest }
        }
        (IpAddr::V6(client), IpAddr::V6(virt), IpAddr::V6(dest)) => {
            Addrs::V6 { client, virt, dest }
        }
        // NAT64 and other mixed families: the wire cannot carry them (IPVS refuses them too).
        _ => return None,
    };
    let vport = u16::from_be(k.dport_be);
    let state = Local::from_u8(ev.state);
    Some(SyncConn {
        protocol: k.proto,
        flags: ConnFlags::new(forward),
        state: wire_state(state),
        addrs,
        ports: Ports {
            client: u16::from_be(k.sport_be),
            virt: vport,
            dest: if real.port() == 0 { vport } else { real.port() },
        },
        fwmark: 0,
        timeout_secs: (timeout_of(cfg, state) / NS) as u32,
        seq: None,
        pe: None,
        local,
    })
}

/// The connection table's key of entry `conn` (the flow as its client sends it).
pub fn flow_key(conn: &SyncConn) -> FlowKey {
    let (family, src, dst) = match conn.addrs {
        Addrs::V4 { client, virt, .. } => (FAMILY_V4, IpAddr::V4(client), IpAddr::V4(virt)),
        Addrs::V6 { client, virt, .. } => (FAMILY_V6, IpAddr::V6(client), IpAddr::V6(virt)),
    };
    FlowKey {
        src: bytes(src),
        dst: bytes(dst),
        sport_be: conn.ports.client.to_be(),
        dport_be: conn.ports.virt.to_be(),
        proto: conn.protocol,
        family,
        _pad: [0; 2],
    }
}

/// The way back a backup installs with NAT or FULLNAT connection `conn` bound to backend slot
/// `backend`, as the data plane records it: the replies' flow (from the real server to the
/// client, or to the local address and port for FULLNAT) and what they are translated back to.
/// None for a FULLNAT entry without its local address.
pub fn reply_of(conn: &SyncConn, backend: u32) -> Option<(FlowKey, NatReply)> {
    let key = flow_key(conn);
    let (to, to_port) = match conn.flags.forward {
        Forward::FullNat => {
            let l = conn.local?;
            (bytes(l.ip()), l.port())
        }
        _ => (key.src, conn.ports.client),
    };
    let reply = FlowKey {
        src: bytes(conn.addrs.dest()),
        dst: to,
        sport_be: conn.ports.dest.to_be(),
        dport_be: to_port.to_be(),
        proto: conn.protocol,
        family: key.family,
        _pad: [0; 2],
    };
    let back = NatReply {
        vip: key.dst,
        client: key.src,
        vport_be: key.dport_be,
        cport_be: key.sport_be,
        backend,
        family: key.family,
        _pad: [0; 7],
    };
    Some((reply, back))
}

/// The connection-table entry a backup installs for `conn`, bound to backend slot `backend`
/// (of `generation`) of service `service`: proven (it owes no packets: its client has long
/// passed the handshake on the master, so it is not junk to evict first), in our state for
/// IPVS's, and clocked so that it expires after the timeout the master sent, at most our own
/// for that state (`now_ns`: the data plane's clock, CLOCK_MONOTONIC). None for a protocol
/// we do not balance.
///
/// A FULLNAT connection also names its local address's slot in the service's pool here
/// (`local`: slot and port; None for every other mode).
pub fn conn_to_entry(
    conn: &SyncConn,
    service: u32,
    backend: u32,
    generation: u32,
    local: Option<(u8, u16)>,
    cfg: &DataplaneConfig,
    now_ns: u64,
) -> Option<ConnEntry> {
    let state = local_state(conn.protocol, conn.state)?;
    let ours = timeout_of(cfg, state);
    let theirs = match conn.timeout_secs {
        0 => ours,
        s => u64::from(s).saturating_mul(NS).min(ours),
    };
    Some(ConnEntry {
        backend,
        generation,
        service,
        // Proof bits clear: a proven entry.
        state: state as u8,
        local: local.map_or(0, |(slot, _)| slot),
        lport_be: local.map_or(0, |(_, port)| port.to_be()),
        last_seen_ns: now_ns.saturating_sub(ours - theirs),
    })
}

/// The persistence template IPVS sends with a connection of a persistent service (ip_vs_sync.c
/// syncs a connection's controlling template after it): client `conn`'s address under the
/// service's `prefix`, client port 0, the service's own address and port (`service`: port 0
/// for a port-0 service), the connection's real server, the persistence timeout.
pub fn template_of(
    conn: &SyncConn,
    service: SocketAddr,
    prefix: u8,
    timeout_secs: u32,
) -> SyncConn {
    let client = mask(conn.addrs.client(), prefix);
    let addrs = match (client, service.ip(), conn.addrs) {
        (IpAddr::V4(client), IpAddr::V4(virt), Addrs::V4 { dest, .. }) => {
            Addrs::V4 { client, virt, dest }
        }
        (IpAddr::V6(client), IpAddr::V6(virt), Addrs::V6 { dest, .. }) => {
            Addrs::V6 { client, virt, dest }
        }
        // Families always agree here (the service's and its connection's).
        _ => conn.addrs,
    };
    SyncConn {
        protocol: conn.protocol,
        flags: ConnFlags {
            template: true,
            ..ConnFlags::new(conn.flags.forward)
        },
        state: ConnState::Template(super::TemplateState::None),
        addrs,
        ports: Ports {
            client: 0,
            virt: service.port(),
            dest: conn.ports.dest,
        },
        fwmark: 0,
        timeout_secs,
        seq: None,
        pe: None,
        local: None,
    }
}

/// `addr` under a prefix of `prefix` bits, as the data plane masks a template's client.
fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    let family = if addr.is_ipv4() { FAMILY_V4 } else { FAMILY_V6 };
    ip(family, &lb_common::mask_addr(&bytes(addr), prefix))
}

/// The persistence-table key and template a backup installs for template `conn` of service
/// `service` (whose client prefix is `prefix` and persistence timeout `timeout_s`), bound to
/// backend slot `backend` of `generation`: it expires after the timeout the master sent, at
/// most ours.
pub fn template_entry(
    conn: &SyncConn,
    service: u32,
    prefix: u8,
    timeout_s: u32,
    backend: u32,
    generation: u32,
    now_ns: u64,
) -> (lb_common::PersistKey, lb_common::PersistEntry) {
    let client = conn.addrs.client();
    let family = if client.is_ipv4() {
        FAMILY_V4
    } else {
        FAMILY_V6
    };
    let ours = u64::from(timeout_s) * NS;
    let theirs = match conn.timeout_secs {
        0 => ours,
        s => (u64::from(s) * NS).min(ours),
    };
    (
        lb_common::PersistKey {
            client: lb_common::mask_addr(&bytes(client), prefix),
            service,
            family,
            _pad: [0; 3],
        },
        lb_common::PersistEntry {
            backend,
            generation,
            last_seen_ns: now_ns.saturating_sub(ours - theirs),
        },
    )
}

/// The real server an entry names: its address and port.
pub fn real_of(conn: &SyncConn) -> SocketAddr {
    SocketAddr::new(conn.addrs.dest(), conn.ports.dest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::sync_event;

    fn event(state: Local) -> SyncEvent {
        let mut key = FlowKey {
            sport_be: 40000u16.to_be(),
            dport_be: 80u16.to_be(),
            proto: PROTO_TCP,
            family: FAMILY_V4,
            ..FlowKey::default()
        };
        key.src[..4].copy_from_slice(&[203, 0, 113, 7]);
        key.dst[..4].copy_from_slice(&[192, 0, 2, 10]);
        SyncEvent {
            key,
            backend: 3,
            generation: 9,
            service: 1,
            state: state as u8,
            kind: sync_event::NEW,
            _pad: [0; 2],
        }
    }

    #[test]
    fn a_report_becomes_ipvss_entry_with_the_real_server_and_the_states_timeout() {
        let cfg = DataplaneConfig::default();
        let real: SocketAddr = "198.51.100.11:8080".parse().unwrap();
        let c = event_to_conn(
            &event(Local::Established),
            real,
            Forward::DirectRoute,
            None,
            &cfg,
        )
        .unwrap();
        assert_eq!(c.protocol, PROTO_TCP);
        assert_eq!(c.flags.forward, Forward::DirectRoute);
        assert_eq!(c.state, ConnState::Tcp(TcpState::Established));
        assert_eq!(c.state.raw(), 1, "IPVS's number for ESTABLISHED");
        assert_eq!(
            c.addrs,
            Addrs::V4 {
                client: "203.0.113.7".parse().unwrap(),
                virt: "192.0.2.10".parse().unwrap(),
                dest: "198.51.100.11".parse().unwrap(),
            }
        );
        assert_eq!(
            c.ports,
            Ports {
                client: 40000,
                virt: 80,
                dest: 8080
            }
        );
        assert_eq!(c.timeout_secs, 900);
        // A SYN_RECV one: IPVS's number 3, the SYN timeout.
        let s = event_to_conn(&event(Local::SynRecv), real, Forward::Tunnel, None, &cfg).unwrap();
        assert_eq!((s.state.raw(), s.timeout_secs), (3, 60));
        // A real server without a port takes the VIP's.
        let p0 = event_to_conn(
            &event(Local::Established),
            "198.51.100.11:0".parse().unwrap(),
            Forward::DirectRoute,
            None,
            &cfg,
        )
        .unwrap();
        assert_eq!(p0.ports.dest, 80);
        // Mixed families cannot travel.
        assert!(event_to_conn(
            &event(Local::Established),
            "[2001:db8::1]:80".parse().unwrap(),
            Forward::DirectRoute,
            None,
            &cfg
        )
        .is_none());
    }

    #[test]
    fn an_entry_becomes_a_proven_connection_table_entry_expiring_as_the_master_said() {
        let cfg = DataplaneConfig::default();
        let ev = event(Local::Established);
        let mut c = event_to_conn(
            &ev,
            "198.51.100.11:80".parse().unwrap(),
            Forward::DirectRoute,
            None,
            &cfg,
        )
        .unwrap();
        assert_eq!(flow_key(&c), ev.key, "the same key as the master's table");
        let now = 10_000 * NS;
        let e = conn_to_entry(&c, 4, 6, 2, None, &cfg, now).unwrap();
        assert_eq!((e.service, e.backend, e.generation), (4, 6, 2));
        assert_eq!(e.state, Local::Established as u8);
        assert_eq!(lb_common::proof_owed(e.state), 0, "proven");
        assert_eq!(e.last_seen_ns, now, "the full timeout");
        // A shorter timeout: it expires sooner; a longer one is capped at ours.
        c.timeout_secs = 100;
        let e = conn_to_entry(&c, 4, 6, 2, None, &cfg, now).unwrap();
        assert_eq!(e.last_seen_ns, now - 800 * NS);
        c.timeout_secs = 5000;
        assert_eq!(
            conn_to_entry(&c, 4, 6, 2, None, &cfg, now)
                .unwrap()
                .last_seen_ns,
            now
        );
        // IPVS's finer states fold into ours.
        for (s, local) in [
            (TcpState::TimeWait, Local::FinWait),
            (TcpState::CloseWait, Local::FinWait),
            (TcpState::SynSent, Local::SynRecv),
            (TcpState::Close, Local::Close),
        ] {
            assert_eq!(local_state(PROTO_TCP, ConnState::Tcp(s)), Some(local));
        }
        assert_eq!(local_state(132, ConnState::Other(1)), None, "SCTP");
        assert_eq!(real_of(&c), "198.51.100.11:80".parse().unwrap());
    }

    #[test]
    fn a_persistent_services_template_travels_and_installs_under_the_netmask() {
        let cfg = DataplaneConfig::default();
        let c = event_to_conn(
            &event(Local::Established),
            "198.51.100.11:80".parse().unwrap(),
            Forward::DirectRoute,
            None,
            &cfg,
        )
        .unwrap();
        let t = template_of(&c, "192.0.2.10:0".parse().unwrap(), 24, 300);
        assert!(t.is_template());
        assert_eq!(t.state.raw(), 0);
        assert_eq!(
            t.addrs,
            Addrs::V4 {
                client: "203.0.113.0".parse().unwrap(),
                virt: "192.0.2.10".parse().unwrap(),
                dest: "198.51.100.11".parse().unwrap(),
            }
        );
        assert_eq!((t.ports.client, t.ports.virt, t.ports.dest), (0, 0, 80));
        assert_eq!(t.timeout_secs, 300);
        // The wire carries it as IPVS's template (flags bit 0x1000).
        assert_ne!(t.flags.bits() & crate::sync::bits::TEMPLATE, 0);
        let now = 1_000 * NS;
        let (k, e) = template_entry(&t, 5, 24, 600, 6, 2, now);
        assert_eq!(&k.client[..4], &[203, 0, 113, 0]);
        assert_eq!((k.service, k.family), (5, FAMILY_V4));
        assert_eq!((e.backend, e.generation), (6, 2));
        assert_eq!(e.last_seen_ns, now - 300 * NS, "their 300 s of our 600");
    }

    #[test]
    fn nat_and_fullnat_connections_travel_with_what_their_way_back_needs() {
        assert_eq!(forward_of(&ForwardMethod::FullNat), Forward::FullNat);
        assert_eq!(forward_of(&ForwardMethod::Dr), Forward::DirectRoute);
        assert_eq!(forward_of(&ForwardMethod::Nat), Forward::Masq);
        let cfg = DataplaneConfig::default();
        let ev = event(Local::Established);
        let real: SocketAddr = "10.1.0.11:8080".parse().unwrap();
        // NAT: the replies come from the real server's address and port to the client's.
        let nat = event_to_conn(&ev, real, Forward::Masq, None, &cfg).unwrap();
        let (k, r) = reply_of(&nat, 3).unwrap();
        assert_eq!(&k.src[..4], &[10, 1, 0, 11]);
        assert_eq!(u16::from_be(k.sport_be), 8080);
        assert_eq!((k.dst, k.dport_be), (ev.key.src, ev.key.sport_be));
        assert_eq!((k.proto, k.family), (PROTO_TCP, FAMILY_V4));
        assert_eq!((r.vip, r.vport_be), (ev.key.dst, ev.key.dport_be));
        assert_eq!((r.client, r.cport_be), (ev.key.src, ev.key.sport_be));
        assert_eq!((r.backend, r.family), (3, FAMILY_V4));
        // As the data plane keys it: the connection of this way back is the synced one.
        assert_eq!(crate::dataplane::conn_of_reply(&k, &r), ev.key);
        assert_eq!(crate::dataplane::local_port(&k, &r), 0);
        // FULLNAT: not without its local address and port; with them, the replies go there.
        assert!(event_to_conn(&ev, real, Forward::FullNat, None, &cfg).is_none());
        let local: SocketAddr = "10.1.0.2:61000".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::2]:61000".parse().unwrap();
        assert!(event_to_conn(&ev, real, Forward::FullNat, Some(v6), &cfg).is_none());
        let fnat = event_to_conn(&ev, real, Forward::FullNat, Some(local), &cfg).unwrap();
        assert_eq!(fnat.local, Some(local));
        let (k, r) = reply_of(&fnat, 3).unwrap();
        assert_eq!(&k.dst[..4], &[10, 1, 0, 2]);
        assert_eq!(u16::from_be(k.dport_be), 61000);
        assert_eq!(crate::dataplane::conn_of_reply(&k, &r), ev.key);
        assert_eq!(crate::dataplane::local_port(&k, &r), 61000u16.to_be());
        let e = conn_to_entry(&fnat, 4, 3, 2, Some((1, 61000)), &cfg, 5 * NS).unwrap();
        assert_eq!((e.local, u16::from_be(e.lport_be)), (1, 61000));
        // NAT's entries name no local address: the method decides, not a stray field.
        assert!(event_to_conn(&ev, real, Forward::Masq, Some(local), &cfg)
            .unwrap()
            .local
            .is_none());
    }
}
