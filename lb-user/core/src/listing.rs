//! ipvsadm's listing formats, reproduced column for column (ipvsadm.c of ipvsadm 1.30/1.31:
//! print_title, print_service_entry, print_largenum, list_conn, print_conn), so scripts that
//! parse `ipvsadm -L` parse ours.

use std::{fmt::Write, net::SocketAddr};

use crate::{
    estimator::Rates,
    model::{Protocol, ServiceKey},
    names::{addr_port, truncate, Names},
    proto::{ConnStatus, Listing, Membership, RealStatus, ServiceStatus},
    stats::Counters,
};

/// The IPVS version ipvsadm prints in its first line; scripts match on it.
pub const IPVS_VERSION: &str = "1.2.1";

/// Which of ipvsadm's listing formats (when several are asked for, ipvsadm's precedence:
/// stats, rate, thresholds, persistent-conn, tun-info).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// `-L`: weights and connection counts.
    #[default]
    Plain,
    /// `-L --stats`: totals.
    Stats,
    /// `-L --rate`: rates as IPVS estimates them.
    Rate,
    /// `-L --thresholds`: upper and lower thresholds with connection counts.
    Thresholds,
    /// `-L --persistent-conn`: weight, persistence templates and connection counts.
    PersistentConn,
    /// `-L --tun-info`: the forwarding method's tunnel parameters.
    TunInfo,
}

/// Options of a listing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Table layout.
    pub format: Format,
    /// `--exact`: full numbers instead of K/M/G.
    pub exact: bool,
    /// `--nosort`: services and real servers in the order they were added, not ipvsadm's order.
    pub nosort: bool,
    /// `-n`: addresses and ports as numbers (otherwise names, as ipvsadm).
    pub numeric: bool,
}

/// ipvsadm's order of services (libipvs ipvs_cmp_services): by mark first, so services of an
/// address (mark 0) come before firewall-mark ones, which follow in the order of their marks;
/// then IPv4 before IPv6, TCP before UDP, address, port.
pub fn service_order(key: &ServiceKey) -> (u32, u8, u8, [u8; 16], u16) {
    match *key {
        ServiceKey::Fwmark { fwmark, ipv6 } => (fwmark, ipv6 as u8, 0, [0; 16], 0),
        ServiceKey::Addr { protocol, addr } => {
            let (fam, bytes, port) = addr_order(&addr);
            (0, fam, protocol.number(), bytes, port)
        }
    }
}

/// ipvsadm's order of real servers (ipvs_cmp_dests): address, then port.
pub fn addr_order(a: &SocketAddr) -> (u8, [u8; 16], u16) {
    match a {
        SocketAddr::V4(v) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v.ip().octets());
            (0, b, v.port())
        }
        SocketAddr::V6(v) => (1, v.ip().octets(), v.port()),
    }
}

/// Sorts a listing in ipvsadm's default order.
pub fn sort_like_ipvsadm(listing: &mut Listing) {
    listing.services.sort_by_key(|s| service_order(&s.key));
    for s in &mut listing.services {
        s.reals.sort_by_key(|r| addr_order(&r.addr));
    }
}

/// Every address a listing shows (what needs a name without `-n`).
pub fn addresses(listing: &Listing) -> Vec<std::net::IpAddr> {
    let mut v = Vec::new();
    for s in &listing.services {
        if let ServiceKey::Addr { addr, .. } = s.key {
            v.push(addr.ip());
        }
        v.extend(s.reals.iter().map(|r| r.addr.ip()));
        v.extend(s.sorry_server.as_ref().map(|r| r.addr.ip()));
    }
    v
}

/// A service's real servers as the scheduler tables have them, which is what ipvsadm lists
/// when keepalived drives IPVS: a server its check took out is not listed, an inhibited one
/// has weight 0, and a sorry server in use is listed as a real server. Sorted as ipvsadm
/// sorts unless `nosort`.
pub fn table_rows(svc: &ServiceStatus, nosort: bool) -> Vec<RealStatus> {
    let mut rows: Vec<RealStatus> = svc
        .reals
        .iter()
        .chain(svc.sorry_server.as_ref())
        .filter(|r| r.table != Membership::Removed)
        .map(|r| RealStatus {
            weight: if r.table == Membership::Inhibited {
                0
            } else {
                r.weight
            },
            ..r.clone()
        })
        .collect();
    if !nosort {
        rows.sort_by_key(|r| addr_order(&r.addr));
    }
    rows
}

fn sorted(listing: &Listing, opts: ListOptions) -> std::borrow::Cow<'_, Listing> {
    if opts.nosort {
        std::borrow::Cow::Borrowed(listing)
    } else {
        let mut l = listing.clone();
        sort_like_ipvsadm(&mut l);
        std::borrow::Cow::Owned(l)
    }
}

/// `ipvsadm -L`: the version line, the title and every service (ipvsadm.c list_all).
pub fn render(listing: &Listing, opts: ListOptions, names: &dyn Names) -> String {
    let listing = sorted(listing, opts);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "IP Virtual Server version {IPVS_VERSION} (size={})",
        listing.conn_table_size
    );
    title(&mut out, opts.format);
    for svc in &listing.services {
        render_service(&mut out, svc, opts, names);
    }
    director(&mut out, &listing);
    out
}

/// xvs's lines after ipvsadm's table, only for what ipvsadm has no counterpart of: a drained
/// director, its announcements (`xvsd --announce-table`), and then its sync daemons' state.
/// Without announcements or a drain the listing is ipvsadm's to the byte (sync daemons alone
/// stay in `-L --daemon`, ipvsadm's place for them).
fn director(out: &mut String, listing: &Listing) {
    if !listing.drained && listing.announce.is_none() {
        return;
    }
    let join = |ips: &[std::net::IpAddr]| {
        ips.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    };
    if listing.drained {
        let _ = writeln!(
            out,
            "Director: drained (nothing announced; xvsadm drain --cancel)"
        );
    }
    if let Some(a) = &listing.announce {
        let _ = writeln!(
            out,
            "Announced (table {}): {}",
            a.table,
            if a.announced.is_empty() {
                "none".to_string()
            } else {
                join(&a.announced)
            }
        );
        if !a.withdrawn.is_empty() {
            let _ = writeln!(out, "Withdrawn (below quorum): {}", join(&a.withdrawn));
        }
    }
    for d in &listing.sync_daemons {
        let role = match d.role {
            crate::sync::Role::Master => "master",
            crate::sync::Role::Backup => "backup",
        };
        let _ = write!(
            out,
            "Sync {role} (mcast={}, syncid={})",
            d.mcast_ifn, d.syncid
        );
        match &d.table {
            Some(t) => {
                let _ = writeln!(out, ": {}", t.describe());
            }
            None => out.push('\n'),
        }
    }
}

/// `ipvsadm -L -t VIP:port`: the title and that service only, without the version line
/// (ipvsadm.c list_service).
pub fn render_one(svc: &ServiceStatus, opts: ListOptions, names: &dyn Names) -> String {
    let mut svc = svc.clone();
    if !opts.nosort {
        let mut l = Listing {
            services: vec![svc],
            ..Default::default()
        };
        sort_like_ipvsadm(&mut l);
        svc = l.services.remove(0);
    }
    let mut out = String::new();
    title(&mut out, opts.format);
    render_service(&mut out, &svc, opts, names);
    out
}

/// ipvsadm.c print_title.
fn title(out: &mut String, format: Format) {
    let _ = match format {
        Format::Stats => writeln!(
            out,
            "{:<33} {:>8} {:>8} {:>8} {:>8} {:>8}\n  -> RemoteAddress:Port",
            "Prot LocalAddress:Port", "Conns", "InPkts", "OutPkts", "InBytes", "OutBytes"
        ),
        Format::Rate => writeln!(
            out,
            "{:<33} {:>8} {:>8} {:>8} {:>8} {:>8}\n  -> RemoteAddress:Port",
            "Prot LocalAddress:Port", "CPS", "InPPS", "OutPPS", "InBPS", "OutBPS"
        ),
        Format::Thresholds => writeln!(
            out,
            "{:<33} {:<10} {:<10} {:<10} {:<10}\n  -> RemoteAddress:Port",
            "Prot LocalAddress:Port", "Uthreshold", "Lthreshold", "ActiveConn", "InActConn"
        ),
        Format::PersistentConn => writeln!(
            out,
            "{:<33} {:<9} {:<11} {:<10} {:<10}\n  -> RemoteAddress:Port",
            "Prot LocalAddress:Port", "Weight", "PersistConn", "ActiveConn", "InActConn"
        ),
        Format::TunInfo => writeln!(
            out,
            "Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward TunnelInfo    Weight ActiveConn InActConn"
        ),
        Format::Plain => writeln!(
            out,
            "Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn"
        ),
    };
}

/// What ipvsadm prints after the scheduler: ` (sh-fallback,sh-port)` for scheduler flags, then
/// ` persistent 300` and ` mask 255.255.255.0` (IPv6: ` mask 64`) unless the mask is a whole
/// address.
pub fn service_flags(svc: &ServiceStatus) -> String {
    let mut out = String::new();
    if !svc.flags.is_empty() {
        let _ = write!(out, " ({})", svc.flags.names().join(","));
    }
    if let Some(p) = svc.persistence {
        let _ = write!(out, " persistent {}", p.timeout);
        if let Some(mask) = netmask_text(svc.key.is_ipv4(), p.prefix) {
            let _ = write!(out, " mask {mask}");
        }
    }
    out
}

/// The netmask as ipvsadm shows it (dotted for IPv4, a prefix length for IPv6), or None for a
/// whole address (ipvsadm prints nothing then).
pub fn netmask_text(v4: bool, prefix: u8) -> Option<String> {
    if v4 {
        (prefix < 32).then(|| {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix)
            };
            std::net::Ipv4Addr::from(mask).to_string()
        })
    } else {
        (prefix < 128).then(|| prefix.to_string())
    }
}

/// `ipvsadm -L -c`: the connection list (ipvsadm.c list_conn, print_conn). With
/// `--persistent-conn` the title has ipvsadm's persistence-engine columns; xvs has no engine,
/// so rows never fill them (ipvsadm prints them only for connections that have engine data).
///
/// When any connection has a local address (FULLNAT), the list takes DPVS's layout
/// (print_conn_entry): a `local` column between `virtual` and `destination`, 18 wide as the
/// others. Two things differ from DPVS, on purpose: rows have no `[lcore]` prefix (xvs's
/// connection table is not split by core, and a made-up core number would mislead), and the
/// title lines, expiry (`mm:ss`) and protocol (`TCP`) stay ipvsadm's, since DPVS prints no
/// title at all and its columns would be unlabelled. A connection without a local address
/// (not FULLNAT) shows `-` there. Without any local address the output is exactly ipvsadm's.
pub fn render_connections(
    conns: &[ConnStatus],
    persistent_conn: bool,
    names: &dyn Names,
) -> String {
    let with_local = conns.iter().any(|c| c.local.is_some());
    let mut out = String::from("IPVS connection entries\n");
    let local_title = if with_local {
        format!("{:<18} ", "local")
    } else {
        String::new()
    };
    if persistent_conn {
        let _ = writeln!(
            out,
            "pro expire {:<11} {:<18} {:<18} {local_title}{:<18} {:<16} pe_data",
            "state", "source", "virtual", "destination", "pe name"
        );
    } else {
        let _ = writeln!(
            out,
            "pro expire {:<11} {:<18} {:<18} {local_title}destination",
            "state", "source", "virtual"
        );
    }
    for c in conns {
        let expire = format!("{:02}:{:02}", c.expires_s / 60, c.expires_s % 60);
        let name = |a| addr_port(names, a, c.protocol);
        let local = if with_local {
            let l = c.local.map_or_else(|| "-".to_string(), name);
            format!("{l:<18} ")
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{:<3} {:<6} {:<11} {:<18} {:<18} {local}{}",
            c.protocol.to_string(),
            expire,
            c.state,
            name(c.client),
            name(c.virtual_addr),
            name(c.real)
        );
    }
    out
}

/// One service's local addresses, as `-G --json` prints them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServiceLaddrs {
    /// The service.
    pub service: ServiceKey,
    /// Its local addresses, in the order they were added.
    pub laddrs: Vec<crate::model::LocalAddr>,
}

/// `-G --json`: every listed service with its local addresses, in ipvsadm's order.
pub fn laddrs_json(listing: &Listing) -> Vec<ServiceLaddrs> {
    let mut services: Vec<&ServiceStatus> = listing.services.iter().collect();
    services.sort_by_key(|s| service_order(&s.key));
    services
        .into_iter()
        .map(|s| ServiceLaddrs {
            service: s.key,
            laddrs: s.laddrs.clone(),
        })
        .collect()
}

/// `ipvsadm -G` (DPVS's get-laddr: list_laddrs, list_all_laddrs): a title, then per service
/// its `VIP:VPORT` (numeric, as DPVS always prints it; a group as `FWM 1`) and the number of
/// its local addresses, then one line per local address. DPVS's CONFLICTS (source-port
/// conflicts) and CONNS (connections per local address) are counters xvs does not keep per
/// local address: both print 0. As DPVS: the title once, before the first service; every
/// service is listed, with or without local addresses; no services, no output. Services come
/// in ipvsadm's order (sorted as `-L`), local addresses in the order they were added.
pub fn render_laddrs(services: &[ServiceStatus]) -> String {
    let mut out = String::new();
    let mut services: Vec<&ServiceStatus> = services.iter().collect();
    services.sort_by_key(|s| service_order(&s.key));
    for (i, svc) in services.iter().enumerate() {
        if i == 0 {
            let _ = writeln!(
                out,
                "{:<20} {:<8} {:<20} {:<10} {:<10}",
                "VIP:VPORT", "TOTAL", "SNAT_IP", "CONFLICTS", "CONNS"
            );
        }
        let vname = match svc.key {
            ServiceKey::Addr { addr, .. } => addr.to_string(),
            ServiceKey::Fwmark { .. } => svc.key.to_string(),
        };
        let _ = writeln!(out, "{:<20} {:<8} ", vname, svc.laddrs.len());
        for l in &svc.laddrs {
            let _ = writeln!(
                out,
                "{:<20} {:<8} {:<20} {:<10} {:<10}",
                "", "", l.addr, 0, 0
            );
        }
    }
    out
}

/// `TCP  203.0.113.10:80` (ipvsadm's "%-4s %s", cut to 33 characters for IPv4), IPv6 in
/// brackets; a group as ipvsadm prints a firewall-mark service: `FWM  1`, `FWM  1 IPv6` (its
/// matches are in the JSON and -S, not in this table, whose lines scripts parse).
fn service_name(svc: &ServiceStatus, names: &dyn Names) -> String {
    match svc.key {
        ServiceKey::Addr { protocol, addr } => {
            let s = format!(
                "{:<4} {}",
                protocol.to_string(),
                addr_port(names, addr, protocol)
            );
            if addr.is_ipv4() {
                truncate(s, 33)
            } else {
                s
            }
        }
        ServiceKey::Fwmark { fwmark, ipv6 } => {
            format!("FWM  {fwmark}{}", if ipv6 { " IPv6" } else { "" })
        }
    }
}

/// The protocol ipvsadm names a service's ports with (a firewall-mark service is TCP).
fn protocol_of(key: &ServiceKey) -> Protocol {
    match key {
        ServiceKey::Addr { protocol, .. } => *protocol,
        ServiceKey::Fwmark { .. } => Protocol::Tcp,
    }
}

/// A real server's column: `addr:port`, cut to 28 characters for IPv4 (ipvsadm's dname[28]).
fn real_name(addr: SocketAddr, protocol: Protocol, names: &dyn Names) -> String {
    let s = addr_port(names, addr, protocol);
    if addr.is_ipv4() {
        truncate(s, 28)
    } else {
        s
    }
}

fn render_service(out: &mut String, svc: &ServiceStatus, opts: ListOptions, names: &dyn Names) {
    let name = service_name(svc, names);
    let proto = protocol_of(&svc.key);
    match opts.format {
        Format::Stats | Format::Rate => {
            let _ = write!(out, "{name:<33}");
            if opts.format == Format::Stats {
                stats_columns(out, &svc.stats, opts.exact);
            } else {
                rate_columns(out, &svc.rates, opts.exact, false);
            }
        }
        _ => {
            let _ = writeln!(out, "{name} {}{}", svc.scheduler, service_flags(svc));
        }
    }
    for r in &table_rows(svc, opts.nosort) {
        let dname = real_name(r.addr, proto, names);
        let _ = match opts.format {
            Format::Stats => {
                let _ = write!(out, "  -> {dname:<28}");
                stats_columns(out, &r.stats, opts.exact);
                Ok(())
            }
            Format::Rate => {
                let _ = write!(out, "  -> {dname:<28}");
                rate_columns(out, &r.rates, opts.exact, true);
                Ok(())
            }
            Format::Thresholds => writeln!(
                out,
                "  -> {:<28} {:<10} {:<10} {:<10} {:<10}",
                dname, r.u_threshold, r.l_threshold, r.active_conns, r.inactive_conns
            ),
            Format::PersistentConn => writeln!(
                out,
                "  -> {:<28} {:<9} {:<11} {:<10} {:<10}",
                dname, r.weight, r.persist_conns, r.active_conns, r.inactive_conns
            ),
            Format::TunInfo => writeln!(
                out,
                "  -> {:<28} {:<7} {:<13} {:<6} {:<10} {:<10}",
                dname,
                r.forward.ipvsadm_name(),
                tun_info(&r.forward),
                r.weight,
                r.active_conns,
                r.inactive_conns
            ),
            Format::Plain => writeln!(
                out,
                "  -> {:<28} {:<7} {:<6} {:<10} {:<10}",
                dname,
                r.forward.ipvsadm_name(),
                r.weight,
                r.active_conns,
                r.inactive_conns
            ),
        };
    }
}

/// Conns, InPkts, OutPkts, InBytes, OutBytes. A DR/TUN director never sees the replies, so the
/// Out columns are 0, as with IPVS in those modes; NAT and FULLNAT count their replies.
fn stats_columns(out: &mut String, c: &Counters, exact: bool) {
    for v in [c.conns, c.packets, c.out_packets, c.bytes, c.out_bytes] {
        out.push_str(&largenum(v, exact));
    }
    out.push('\n');
}

/// CPS, InPPS, OutPPS, InBPS, OutBPS. ipvsadm prints a service's five with print_largenum, but
/// a real server's first three with a plain " %8llu" (never shortened).
fn rate_columns(out: &mut String, r: &Rates, exact: bool, real: bool) {
    for (i, v) in [r.cps, r.inpps, r.outpps, r.inbps, r.outbps]
        .into_iter()
        .enumerate()
    {
        if real && i < 3 {
            let _ = write!(out, " {v:>8}");
        } else {
            out.push_str(&largenum(v, exact));
        }
    }
    out.push('\n');
}

/// ipvsadm's print_largenum: 9 columns, shortened with K/M/G/T past 8 digits unless `--exact`
/// (then the full number, still at least 9 wide with one space before it).
pub fn largenum(i: u64, exact: bool) -> String {
    if exact || i < 100_000_000 {
        format!(" {i:>8}")
    } else if i < 1_000_000_000 {
        format!("{:>8}K", i / 1_000)
    } else if i < 100_000_000_000 {
        format!("{:>8}M", i / 1_000_000)
    } else if i < 100_000_000_000_000 {
        format!("{:>8}G", i / 1_000_000_000)
    } else {
        format!("{:>8}T", i / 1_000_000_000_000)
    }
}

/// `ipvsadm -L --timeout` (ipvsadm.c list_timeout).
pub fn render_timeouts(t: &crate::model::Timeouts) -> String {
    format!(
        "Timeout (tcp tcpfin udp): {} {} {}\n",
        t.tcp, t.tcpfin, t.udp
    )
}

/// ipvsadm.c fwd_tun_info: "ipip", "gue:PORT:nocsum|csum", "n/a" for other methods.
fn tun_info(f: &crate::model::ForwardMethod) -> String {
    use crate::model::{ForwardMethod, TunnelKind};
    match f {
        ForwardMethod::Tunnel(t) if t.kind == TunnelKind::Ipip => "ipip".into(),
        ForwardMethod::Tunnel(t) => {
            format!("gue:{}:{}", t.port, if t.csum { "csum" } else { "nocsum" })
        }
        ForwardMethod::Dr | ForwardMethod::Nat | ForwardMethod::FullNat => "n/a".into(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::{
        model::{ForwardMethod, LocalAddr, Persistence, PortRange, Scheduler},
        names::{Numeric, Resolved, Services},
        scheduler::digest::TableDigest,
    };

    fn real(a: &str, w: u32, act: u64, inact: u64) -> RealStatus {
        RealStatus {
            addr: a.parse().unwrap(),
            forward: ForwardMethod::Dr,
            weight: w,
            u_threshold: 0,
            l_threshold: 0,
            persist_conns: 0,
            active_conns: act,
            inactive_conns: inact,
            stats: Counters::default(),
            rates: Rates::default(),
            mac: None,
            check: Default::default(),
            table: Membership::Active,
            health: None,
        }
    }

    fn service(key: ServiceKey, scheduler: Scheduler, reals: Vec<RealStatus>) -> ServiceStatus {
        ServiceStatus {
            key,
            scheduler,
            flags: Default::default(),
            matches: Vec::new(),
            persistence: None,
            stats: Counters::default(),
            rates: Rates::default(),
            reals,
            check: Default::default(),
            sorry_server: None,
            quorum: Default::default(),
            laddrs: Vec::new(),
            fullnat_refused: 0,
            midflow_misses: 0,
            // Every test service has one: the ipvsadm formats below must not show it.
            table_digest: Some(DIGEST),
        }
    }

    const DIGEST: TableDigest = TableDigest(0x0123_4567_89ab_cdef);

    /// The digest is in `-L --json` (null for a scheduler without one), never in ipvsadm's
    /// formats, which scripts parse column by column.
    #[test]
    fn table_digest_is_in_the_json_only() {
        let mut l = listing();
        l.services[1].table_digest = None;
        let json = serde_json::to_string(&l).unwrap();
        assert!(
            json.contains(r#""table_digest":"0123456789abcdef""#),
            "{json}"
        );
        assert!(json.contains(r#""table_digest":null"#), "{json}");
        assert_eq!(serde_json::from_str::<Listing>(&json).unwrap(), l);
        // A daemon without digests: the field is absent, read as None.
        let old = json.replace(r#","table_digest":null"#, "");
        assert_ne!(old, json);
        let read = serde_json::from_str::<Listing>(&old).unwrap();
        assert_eq!(read.services[1].table_digest, None);
        let l = listing();
        for format in [
            Format::Plain,
            Format::Stats,
            Format::Rate,
            Format::Thresholds,
            Format::PersistentConn,
            Format::TunInfo,
        ] {
            let out = render(&l, opts(format), &Numeric);
            assert!(!out.contains(&DIGEST.to_string()), "{format:?}: {out}");
            let one = render_one(&l.services[0], opts(format), &Numeric);
            assert!(!one.contains(&DIGEST.to_string()), "{format:?}: {one}");
        }
    }

    fn tcp(a: &str) -> ServiceKey {
        ServiceKey::new(Protocol::Tcp, a.parse().unwrap())
    }

    fn listing() -> Listing {
        let mut reals = vec![
            real("198.51.100.11:80", 1, 3, 17),
            real("198.51.100.12:80", 3, 0, 0),
        ];
        for r in &mut reals {
            r.stats = Counters {
                conns: 12,
                packets: 345,
                bytes: 123_456_789_012,
                ..Counters::default()
            };
        }
        Listing {
            conn_table_size: 4096,
            services: vec![
                service(tcp("203.0.113.10:80"), Scheduler::Wrr, reals),
                service(
                    ServiceKey::new(Protocol::Udp, "[2001:db8::10]:53".parse().unwrap()),
                    Scheduler::Rr,
                    vec![real("[2001:db8::11]:53", 1, 0, 2)],
                ),
            ],
            reasons: Default::default(),
            timeouts: Default::default(),
            table: Default::default(),
            drained: false,
            announce: None,
            sync_daemons: vec![],
        }
    }

    fn opts(format: Format) -> ListOptions {
        ListOptions {
            format,
            ..Default::default()
        }
    }

    /// ipvsadm.c print_title and print_service_entry (default format): the title lines, then
    /// "%s %s" service lines and "  -> %-28s %-7s %-6d %-10u %-10u" real-server lines (with the
    /// trailing blanks of the last column).
    #[test]
    fn plain_matches_ipvsadm() {
        let expected = "\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  203.0.113.10:80 wrr
  -> 198.51.100.11:80             Route   1      3          17        
  -> 198.51.100.12:80             Route   3      0          0         
UDP  [2001:db8::10]:53 rr
  -> [2001:db8::11]:53            Route   1      0          2         
";
        assert_eq!(
            render(&listing(), ListOptions::default(), &Numeric),
            expected
        );
    }

    /// A drained or announcing director says so after the table; without either, nothing
    /// is added (plain_matches_ipvsadm), sync daemons or not.
    #[test]
    fn a_director_announcing_or_drained_says_so_after_the_table() {
        let mut l = listing();
        l.sync_daemons = vec![
            crate::sync::daemon::DaemonConfig::new(crate::sync::Role::Backup)
                .status(1500, Default::default()),
        ];
        let plain = render(&listing(), ListOptions::default(), &Numeric);
        assert_eq!(render(&l, ListOptions::default(), &Numeric), plain);
        l.announce = Some(Box::new(crate::proto::AnnounceStatus {
            table: 100,
            announced: vec!["203.0.113.10".parse().unwrap()],
            withdrawn: vec!["203.0.113.20".parse().unwrap()],
        }));
        l.drained = true;
        l.sync_daemons[0].table = Some(crate::sync::table::TableStatus::Alone { tries: 3 });
        let out = render(&l, ListOptions::default(), &Numeric);
        let extra = out
            .strip_prefix(plain.as_str())
            .expect("ipvsadm's table first");
        assert_eq!(
            extra,
            "Director: drained (nothing announced; xvsadm drain --cancel)\n\
             Announced (table 100): 203.0.113.10\n\
             Withdrawn (below quorum): 203.0.113.20\n\
             Sync backup (mcast=eth0, syncid=0): alone: no peer answered 3 requests for its \
             table; nothing to wait for\n"
        );
    }

    /// A literal `ipvsadm -ln` from a DR director (172.168.2.x addresses as printed there;
    /// nothing is sent to them), trailing blanks as ipvsadm prints them. The same listing is in
    /// many LVS notes, e.g. "TCP  172.168.2.33:80 rr persistent 600" /
    /// "  -> 172.168.2.35:80              Route   1      2          0".
    #[test]
    fn literal_persistent_dr_listing() {
        let mut svc = service(
            tcp("172.168.2.33:80"),
            Scheduler::Rr,
            vec![real("172.168.2.35:80", 1, 2, 0)],
        );
        svc.persistence = Some(Persistence {
            timeout: 600,
            prefix: 32,
        });
        let l = Listing {
            conn_table_size: 1048576,
            services: vec![svc],
            ..Default::default()
        };
        let out = render(&l, ListOptions::default(), &Numeric);
        let lines: Vec<&str> = out.lines().map(str::trim_end).collect();
        assert_eq!(
            lines,
            [
                "IP Virtual Server version 1.2.1 (size=1048576)",
                "Prot LocalAddress:Port Scheduler Flags",
                "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn",
                "TCP  172.168.2.33:80 rr persistent 600",
                "  -> 172.168.2.35:80              Route   1      2          0",
            ]
        );
    }

    /// `-L` without `-n`: names, cut as ipvsadm cuts them. Literal lines from an `ipvsadm -L`
    /// in cloudnativelabs/kube-router#415 (kube-router's servers masquerade): the service name
    /// is cut to 33 characters ("TCP  ip-10-0-62-121.ec2.internal: rr") and a real server to
    /// 28 ("  -> ip-10-0-62-92.ec2.internal:9 Masq    1      0          0", and with the port
    /// cut off entirely "  -> ip-10-0-62-110.ec2.internal: Masq    1      0          0").
    #[test]
    fn names_are_cut_like_ipvsadm() {
        static SERVICES: std::sync::OnceLock<Services> = std::sync::OnceLock::new();
        let services = SERVICES.get_or_init(|| Services::parse("http 80/tcp www\n"));
        let hosts = HashMap::from([
            (
                "10.0.62.121".parse().unwrap(),
                "ip-10-0-62-121.ec2.internal".to_string(),
            ),
            (
                "10.0.62.92".parse().unwrap(),
                "ip-10-0-62-92.ec2.internal".to_string(),
            ),
            (
                "10.0.62.110".parse().unwrap(),
                "ip-10-0-62-110.ec2.internal".to_string(),
            ),
        ]);
        let masq = |a: &str| RealStatus {
            forward: ForwardMethod::Nat,
            ..real(a, 1, 0, 0)
        };
        let names = Resolved::with(hosts, services);
        let l = Listing {
            conn_table_size: 4096,
            services: vec![
                service(
                    tcp("10.0.62.121:9100"),
                    Scheduler::Rr,
                    vec![masq("10.0.62.92:9100"), masq("10.0.62.110:9100")],
                ),
                service(
                    tcp("10.0.62.121:80"),
                    Scheduler::Rr,
                    vec![real("100.98.125.10:80", 1, 2, 14)],
                ),
            ],
            ..Default::default()
        };
        let out = render(&l, ListOptions::default(), &names);
        let lines: Vec<&str> = out.lines().map(str::trim_end).collect();
        assert_eq!(
            &lines[3..],
            [
                "TCP  ip-10-0-62-121.ec2.internal: rr",
                "  -> 100.98.125.10:http           Route   1      2          14",
                "TCP  ip-10-0-62-121.ec2.internal: rr",
                "  -> ip-10-0-62-92.ec2.internal:9 Masq    1      0          0",
                "  -> ip-10-0-62-110.ec2.internal: Masq    1      0          0",
            ]
        );
        // -n prints numbers.
        let out = render(&l, ListOptions::default(), &Numeric);
        assert!(out.contains("TCP  10.0.62.121:80 rr\n"), "{out}");
    }

    #[test]
    fn groups_are_listed_as_ipvsadm_lists_fwmark_services() {
        let mut l = listing();
        l.services.truncate(1);
        let svc = &mut l.services[0];
        svc.key = ServiceKey::fwmark(1, false);
        svc.scheduler = Scheduler::Rr;
        svc.persistence = Some(Persistence {
            timeout: 60,
            prefix: 32,
        });
        svc.matches = vec!["tcp:203.0.113.10:80".parse().unwrap()];
        svc.reals.truncate(1);
        svc.reals[0].addr = "198.51.100.11:0".parse().unwrap();
        let mut v6 = svc.clone();
        v6.key = ServiceKey::fwmark(2, true);
        v6.persistence = Some(Persistence {
            timeout: 300,
            prefix: 64,
        });
        v6.reals[0].addr = "[2001:db8::11]:0".parse().unwrap();
        l.services.push(v6);
        let expected = "\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
FWM  1 rr persistent 60
  -> 198.51.100.11:0              Route   1      3          17        
FWM  2 IPv6 rr persistent 300 mask 64
  -> [2001:db8::11]:0             Route   1      3          17        
";
        assert_eq!(render(&l, ListOptions::default(), &Numeric), expected);
        // The JSON carries the group's key and matches.
        let json = serde_json::to_string(&l.services[0]).unwrap();
        assert!(
            json.contains(
                r#""key":{"fwmark":1},"matches":[{"protocol":"tcp","addr":"203.0.113.10:80"}]"#
            ),
            "{json}"
        );
    }

    /// `--stats`: the title and the all-zero lines are literal from an `ipvsadm -ln --stats`
    /// in cloudnativelabs/kube-router#160 ("TCP  10.3.0.1:443" ... "0        0"); the counter
    /// lines follow print_largenum ("%9llu", "%8lluK"...). The real servers' in-counters come
    /// from the XDP program; Out stays 0 in DR.
    #[test]
    fn stats_matches_ipvsadm() {
        let zero = Listing {
            conn_table_size: 4096,
            services: vec![service(
                tcp("10.3.0.1:443"),
                Scheduler::Rr,
                vec![real("172.17.4.101:443", 1, 0, 0)],
            )],
            ..Default::default()
        };
        assert_eq!(
            render(&zero, opts(Format::Stats), &Numeric),
            "\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes
  -> RemoteAddress:Port
TCP  10.3.0.1:443                        0        0        0        0        0
  -> 172.17.4.101:443                    0        0        0        0        0
"
        );
        let out = render(&listing(), opts(Format::Stats), &Numeric);
        let expected = "\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes
  -> RemoteAddress:Port
TCP  203.0.113.10:80                     0        0        0        0        0
  -> 198.51.100.11:80                   12      345        0     123G        0
";
        assert!(out.starts_with(expected), "{out}");
        // --exact: the whole number.
        let out = render(
            &listing(),
            ListOptions {
                format: Format::Stats,
                exact: true,
                ..Default::default()
            },
            &Numeric,
        );
        assert!(
            out.contains("  -> 198.51.100.11:80                   12      345        0 123456789012        0\n"),
            "{out}"
        );
    }

    /// `--rate`, from ipvsadm.c: print_title FMT_RATE ("%-33s %8s %8s %8s %8s %8s" with CPS
    /// InPPS OutPPS InBPS OutBPS); a service's five values through print_largenum, a real
    /// server's as "  -> %-28s %8llu %8llu %8llu" then print_largenum twice. The shape matches
    /// published `ipvsadm -ln --rate` outputs, e.g.
    /// "TCP  10.96.6.131:80                      1        4        2      234      268".
    #[test]
    fn rate_matches_ipvsadm() {
        let mut l = listing();
        l.services.truncate(1);
        l.services[0].rates = Rates {
            cps: 1,
            inpps: 4,
            outpps: 0,
            inbps: 234,
            outbps: 0,
        };
        l.services[0].reals[0].rates = Rates {
            cps: 0,
            inpps: 1,
            outpps: 0,
            inbps: 98,
            outbps: 0,
        };
        // A real server's CPS/InPPS are never shortened; its InBPS is.
        l.services[0].reals[1].rates = Rates {
            cps: 123_456_789,
            inpps: 987_654_321,
            outpps: 0,
            inbps: 5_000_000_000,
            outbps: 0,
        };
        let expected = "\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS
  -> RemoteAddress:Port
TCP  203.0.113.10:80                     1        4        0      234        0
  -> 198.51.100.11:80                    0        1        0       98        0
  -> 198.51.100.12:80             123456789 987654321        0    5000M        0
";
        assert_eq!(render(&l, opts(Format::Rate), &Numeric), expected);
        let exact = render(
            &l,
            ListOptions {
                format: Format::Rate,
                exact: true,
                ..Default::default()
            },
            &Numeric,
        );
        assert!(
            exact.contains("123456789 987654321        0 5000000000        0\n"),
            "{exact}"
        );
    }

    /// ipvsadm.c print_title / print_service_entry, FMT_THRESHOLDS and FMT_PERSISTENTCONN:
    /// "%-33s %-10s %-10s %-10s %-10s" and "  -> %-28s %-10u %-10u %-10u %-10u";
    /// "%-33s %-9s %-11s %-10s %-10s" and "  -> %-28s %-9u %-11u %-10u %-10u"; persistence as
    /// " persistent %u" and " mask %s" (IPv4 dotted, only when not /32).
    #[test]
    fn thresholds_and_persistent_conn_match_ipvsadm() {
        let mut l = listing();
        l.services[0].persistence = Some(Persistence {
            timeout: 300,
            prefix: 24,
        });
        l.services[0].reals[0].u_threshold = 100;
        l.services[0].reals[0].l_threshold = 50;
        l.services[0].reals[0].persist_conns = 7;
        let out = render(&l, opts(Format::Thresholds), &Numeric);
        let expected = "\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port            Uthreshold Lthreshold ActiveConn InActConn 
  -> RemoteAddress:Port
TCP  203.0.113.10:80 wrr persistent 300 mask 255.255.255.0
  -> 198.51.100.11:80             100        50         3          17        
";
        assert!(out.starts_with(expected), "{out}");
        let out = render(&l, opts(Format::PersistentConn), &Numeric);
        let expected = "\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port            Weight    PersistConn ActiveConn InActConn 
  -> RemoteAddress:Port
TCP  203.0.113.10:80 wrr persistent 300 mask 255.255.255.0
  -> 198.51.100.11:80             1         7           3          17        
";
        assert!(out.starts_with(expected), "{out}");
        // Plain -L -n with flags: " (sh-fallback,sh-port)" after the scheduler.
        l.services[1].flags = crate::model::SchedFlags::parse("sh-port,sh-fallback").unwrap();
        l.services[1].scheduler = Scheduler::Sh;
        let out = render(&l, ListOptions::default(), &Numeric);
        assert!(
            out.contains("UDP  [2001:db8::10]:53 sh (sh-fallback,sh-port)\n"),
            "{out}"
        );
    }

    /// `--tun-info` (ipvsadm.c FMT_TUN_INFO): "  -> %-28s %-7s %-13s %-6d %-10u %-10u", "n/a"
    /// for a server that does not tunnel.
    #[test]
    fn tun_info_matches_ipvsadm() {
        let out = render(&listing(), opts(Format::TunInfo), &Numeric);
        let expected = "\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward TunnelInfo    Weight ActiveConn InActConn
TCP  203.0.113.10:80 wrr
  -> 198.51.100.11:80             Route   n/a           1      3          17        
";
        assert!(out.starts_with(expected), "{out}");
        // Tunnelling servers: "Tunnel" in the Forward column (-L -n too), and fwd_tun_info's
        // "ipip" / "gue:PORT:nocsum|csum".
        let mut l = listing();
        l.services[0].reals[0].forward = ForwardMethod::Tunnel(crate::model::Tunnel::IPIP);
        l.services[0].reals[1].forward = ForwardMethod::Tunnel(crate::model::Tunnel {
            kind: crate::model::TunnelKind::Gue,
            port: 6080,
            csum: false,
        });
        let out = render(&l, opts(Format::TunInfo), &Numeric);
        assert!(
            out.contains("  -> 198.51.100.11:80             Tunnel  ipip          1      3          17        \n"),
            "{out}"
        );
        assert!(
            out.contains("  -> 198.51.100.12:80             Tunnel  gue:6080:nocsum 3"),
            "{out}"
        );
        let out = render(&l, ListOptions::default(), &Numeric);
        assert!(
            out.contains(
                "  -> 198.51.100.11:80             Tunnel  1      3          17        \n"
            ),
            "{out}"
        );
    }

    /// Masquerading servers: "Masq" in the Forward column (ipvsadm.c fwd_name), their own
    /// port, "n/a" in --tun-info, "nat" in the JSON.
    #[test]
    fn masquerading_is_masq() {
        let mut l = listing();
        l.services[0].reals[1].forward = ForwardMethod::Nat;
        l.services[0].reals[1].addr = "198.51.100.12:8080".parse().unwrap();
        let out = render(&l, ListOptions::default(), &Numeric);
        assert!(
            out.contains(
                "  -> 198.51.100.11:80             Route   1      3          17        \n  -> 198.51.100.12:8080           Masq    3      0          0         \n"
            ),
            "{out}"
        );
        let out = render(&l, opts(Format::TunInfo), &Numeric);
        assert!(
            out.contains("  -> 198.51.100.12:8080           Masq    n/a           3      0"),
            "{out}"
        );
        let json = serde_json::to_string(&l.services[0].reals[1]).unwrap();
        assert!(
            json.contains(r#""addr":"198.51.100.12:8080","forward":"nat""#),
            "{json}"
        );
    }

    /// `-L -t VIP:port` (ipvsadm.c list_service): the title and the one service, no version
    /// line.
    #[test]
    fn one_service_has_no_version_line() {
        let l = listing();
        let out = render_one(&l.services[0], ListOptions::default(), &Numeric);
        assert!(
            out.starts_with("Prot LocalAddress:Port Scheduler Flags\n"),
            "{out}"
        );
        assert_eq!(out.lines().count(), 5, "{out}");
        let out = render_one(&l.services[1], opts(Format::Stats), &Numeric);
        assert!(
            out.starts_with("Prot LocalAddress:Port               Conns"),
            "{out}"
        );
    }

    /// `-L -c -n`: literal rows from an `ipvsadm -L -c -n` in acassen/keepalived#1138
    /// (minutes past 99 widen the column: "TCP 133:35 ESTABLISHED 10.142.81.39:49715
    /// 10.40.25.43:18000  10.40.25.16:18000").
    #[test]
    fn connections_match_ipvsadm() {
        let conn = |client: &str, exp: u64| ConnStatus {
            protocol: Protocol::Tcp,
            client: client.parse().unwrap(),
            virtual_addr: "10.40.25.43:18000".parse().unwrap(),
            real: "10.40.25.16:18000".parse().unwrap(),
            state: "ESTABLISHED".into(),
            expires_s: exp,
            local: None,
        };
        let out = render_connections(
            &[
                conn("10.142.81.39:49715", 133 * 60 + 35),
                conn("10.40.25.18:50868", 43 * 60 + 28),
            ],
            false,
            &Numeric,
        );
        assert_eq!(
            out,
            "IPVS connection entries\n\
             pro expire state       source             virtual            destination\n\
             TCP 133:35 ESTABLISHED 10.142.81.39:49715 10.40.25.43:18000  10.40.25.16:18000\n\
             TCP 43:28  ESTABLISHED 10.40.25.18:50868  10.40.25.43:18000  10.40.25.16:18000\n"
        );
        // --persistent-conn widens the title with the persistence-engine columns.
        let out = render_connections(&[], true, &Numeric);
        assert_eq!(
            out,
            "IPVS connection entries\n\
             pro expire state       source             virtual            destination        pe name          pe_data\n"
        );
    }

    #[test]
    fn sorted_as_ipvsadm_unless_nosort() {
        let mut l = listing();
        l.services.reverse();
        l.services[1].reals.reverse();
        let sorted = render(&l, ListOptions::default(), &Numeric);
        let tcp = sorted.find("TCP  203.0.113.10:80").unwrap();
        let udp = sorted.find("UDP  [2001:db8::10]:53").unwrap();
        assert!(tcp < udp, "{sorted}");
        assert!(
            sorted.find("198.51.100.11:80").unwrap() < sorted.find("198.51.100.12:80").unwrap()
        );
        let raw = render(
            &l,
            ListOptions {
                nosort: true,
                ..Default::default()
            },
            &Numeric,
        );
        assert!(
            raw.find("UDP  [2001:db8::10]:53").unwrap() < raw.find("TCP  203.0.113.10:80").unwrap()
        );
        assert!(raw.find("198.51.100.12:80").unwrap() < raw.find("198.51.100.11:80").unwrap());
    }

    /// libipvs compares marks first: services of an address (mark 0) before firewall-mark
    /// ones, marks ascending, then family, protocol, address, port.
    #[test]
    fn firewall_mark_services_come_after_address_services_as_ipvsadm_sorts_them() {
        let keys = [
            ServiceKey::fwmark(2, false),
            ServiceKey::new(Protocol::Udp, "203.0.113.10:53".parse().unwrap()),
            ServiceKey::fwmark(1, true),
            ServiceKey::new(Protocol::Tcp, "[2001:db8::10]:80".parse().unwrap()),
            ServiceKey::new(Protocol::Tcp, "203.0.113.10:80".parse().unwrap()),
            ServiceKey::fwmark(1, false),
        ];
        let mut sorted = keys.to_vec();
        sorted.sort_by_key(service_order);
        assert_eq!(
            sorted,
            [keys[4], keys[1], keys[3], keys[5], keys[2], keys[0]],
            "TCP v4, UDP v4, TCP v6, FWM 1, FWM 1 IPv6, FWM 2"
        );
    }

    #[test]
    fn largenum_units() {
        assert_eq!(largenum(99_999_999, false), " 99999999");
        assert_eq!(largenum(100_000_000, false), "  100000K");
        assert_eq!(largenum(100_000_000, true), " 100000000");
        assert_eq!(largenum(99_999_999_999, false), "   99999M");
        assert_eq!(largenum(100_000_000_000, false), "     100G");
        assert_eq!(largenum(100_000_000_000_000, false), "     100T");
    }

    /// ipvsadm.c list_timeout: "Timeout (tcp tcpfin udp): %d %d %d".
    #[test]
    fn timeouts_match_ipvsadm() {
        let t = crate::model::Timeouts {
            tcp: 900,
            tcpfin: 120,
            udp: 300,
        };
        assert_eq!(
            render_timeouts(&t),
            "Timeout (tcp tcpfin udp): 900 120 300\n"
        );
    }

    fn fullnat_listing() -> Listing {
        let mut l = listing();
        l.services[0].reals[1].forward = ForwardMethod::FullNat;
        l.services[0].laddrs = vec![
            LocalAddr::new("10.0.0.9".parse().unwrap()),
            LocalAddr {
                addr: "10.0.0.10".parse().unwrap(),
                ports: PortRange {
                    lo: 40000,
                    hi: 40999,
                },
                iface: Some("eth1".into()),
            },
        ];
        l
    }

    /// `-L -n` names a FULLNAT real server's method as DPVS's ipvsadm does (fwd_name).
    #[test]
    fn fullnat_in_the_forward_column() {
        let out = render(&fullnat_listing(), ListOptions::default(), &Numeric);
        assert!(
            out.contains(
                "  -> 198.51.100.12:80             FullNat 3      0          0         \n"
            ),
            "{out}"
        );
        let out = render(&fullnat_listing(), opts(Format::TunInfo), &Numeric);
        assert!(out.contains("FullNat n/a"), "{out}");
    }

    /// DPVS's list_laddrs/list_all_laddrs: "%-20s %-8s %-20s %-10s %-10s" title, "%-20s %-8u "
    /// per service, "%-20s %-8s %-20s %-10lu %-10u" per local address (CONFLICTS and CONNS 0).
    #[test]
    fn get_laddr_matches_dpvs() {
        let l = fullnat_listing();
        let expected = "\
VIP:VPORT            TOTAL    SNAT_IP              CONFLICTS  CONNS     
203.0.113.10:80      2        
                              10.0.0.9             0          0         
                              10.0.0.10            0          0         
[2001:db8::10]:53    0        
";
        assert_eq!(render_laddrs(&l.services), expected);
        // Sorted as -L, whatever order the services came in; one service: the title and it.
        let mut reversed = l.clone();
        reversed.services.reverse();
        assert_eq!(render_laddrs(&reversed.services), expected);
        assert_eq!(
            render_laddrs(&l.services[1..]),
            "VIP:VPORT            TOTAL    SNAT_IP              CONFLICTS  CONNS     \n\
             [2001:db8::10]:53    0        \n"
        );
        assert_eq!(render_laddrs(&[]), "");
        // A group is named as -L names it, without ipvsadm's double blank.
        let g = service(ServiceKey::fwmark(1, true), Scheduler::Rr, Vec::new());
        assert!(render_laddrs(&[g]).contains("\nFWM 1 IPv6           0        \n"));
        // --json: the services with their local addresses.
        let json = serde_json::to_string(&laddrs_json(&reversed)).unwrap();
        assert_eq!(
            json,
            r#"[{"service":{"protocol":"tcp","addr":"203.0.113.10:80"},"laddrs":[{"addr":"10.0.0.9"},{"addr":"10.0.0.10","ports":"40000-40999","iface":"eth1"}]},{"service":{"protocol":"udp","addr":"[2001:db8::10]:53"},"laddrs":[]}]"#
        );
        // And -L --json carries them in the service.
        let listing_json = serde_json::to_string(&l).unwrap();
        assert!(
            listing_json.contains(r#""laddrs":[{"addr":"10.0.0.9"}"#),
            "{listing_json}"
        );
        assert_eq!(serde_json::from_str::<Listing>(&listing_json).unwrap(), l);
    }

    /// `-L -c` with FULLNAT connections: DPVS's extra local column (between virtual and
    /// destination, 18 wide); a connection without one shows `-`.
    #[test]
    fn connections_with_local_addresses_take_dpvs_layout() {
        let conn = |client: &str, local: Option<&str>, real: &str| ConnStatus {
            protocol: Protocol::Tcp,
            client: client.parse().unwrap(),
            virtual_addr: "203.0.113.10:80".parse().unwrap(),
            real: real.parse().unwrap(),
            state: "ESTABLISHED".into(),
            expires_s: 899,
            local: local.map(|l| l.parse().unwrap()),
        };
        let conns = [
            conn(
                "192.0.2.7:50123",
                Some("10.0.0.9:40001"),
                "198.51.100.12:8080",
            ),
            conn("192.0.2.8:50124", None, "198.51.100.11:80"),
        ];
        assert_eq!(
            render_connections(&conns, false, &Numeric),
            "IPVS connection entries\n\
             pro expire state       source             virtual            local              destination\n\
             TCP 14:59  ESTABLISHED 192.0.2.7:50123    203.0.113.10:80    10.0.0.9:40001     198.51.100.12:8080\n\
             TCP 14:59  ESTABLISHED 192.0.2.8:50124    203.0.113.10:80    -                  198.51.100.11:80\n"
        );
        assert_eq!(
            render_connections(&conns[..1], true, &Numeric).lines().nth(1),
            Some(
                "pro expire state       source             virtual            local              destination        pe name          pe_data"
            )
        );
        // Without any local address: ipvsadm's layout, byte for byte.
        assert_eq!(
            render_connections(&conns[1..], false, &Numeric),
            "IPVS connection entries\n\
             pro expire state       source             virtual            destination\n\
             TCP 14:59  ESTABLISHED 192.0.2.8:50124    203.0.113.10:80    198.51.100.11:80\n"
        );
        // JSON: `local` only where there is one.
        let json = serde_json::to_string(&conns).unwrap();
        assert_eq!(json.matches("\"local\"").count(), 1, "{json}");
        assert!(json.contains(r#""local":"10.0.0.9:40001""#), "{json}");
        assert_eq!(
            serde_json::from_str::<Vec<ConnStatus>>(&json).unwrap(),
            conns
        );
    }

    #[test]
    fn stats_show_replies_in_the_out_columns() {
        let mut out = String::new();
        let c = Counters {
            conns: 3,
            packets: 10,
            bytes: 1000,
            out_packets: 8,
            out_bytes: 900,
        };
        stats_columns(&mut out, &c, false);
        assert_eq!(out, "        3       10        8     1000      900\n");
    }
}
