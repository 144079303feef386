//! ipvsadm's listing formats, reproduced column for column (ipvsadm.c: print_title,
//! print_service_entry, print_largenum), so scripts that parse `ipvsadm -L -n` parse ours.

use std::{fmt::Write, net::SocketAddr};

use crate::{
    dataplane::Counters,
    model::ServiceKey,
    proto::{ConnStatus, Listing, ServiceStatus},
};

/// The IPVS version ipvsadm prints in its first line; scripts match on it.
pub const IPVS_VERSION: &str = "1.2.1";

/// Which of ipvsadm's listing formats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// `-L -n`: weights and connection counts.
    #[default]
    Plain,
    /// `-L -n --stats`: totals.
    Stats,
    /// `-L -n --thresholds`: upper and lower thresholds with connection counts.
    Thresholds,
    /// `-L -n --persistent-conn`: weight, persistence templates and connection counts.
    PersistentConn,
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
}

/// ipvsadm's default order (libipvs ipvs_cmp_services / ipvs_cmp_dests): marks first, then
/// IPv4 before IPv6, TCP before UDP, address, port; real servers by address, then port.
pub fn sort_like_ipvsadm(listing: &mut Listing) {
    fn addr_key(a: &SocketAddr) -> (u8, [u8; 16], u16) {
        match a {
            SocketAddr::V4(v) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&v.ip().octets());
                (0, b, v.port())
            }
            SocketAddr::V6(v) => (1, v.ip().octets(), v.port()),
        }
    }
    listing.services.sort_by_key(|s| match s.key {
        crate::model::ServiceKey::Fwmark { fwmark, ipv6 } => (0, fwmark, ipv6 as u8, 0, [0; 16], 0),
        crate::model::ServiceKey::Addr { protocol, addr } => {
            let (fam, bytes, port) = addr_key(&addr);
            (1, 0, fam, protocol.number(), bytes, port)
        }
    });
    for s in &mut listing.services {
        s.reals.sort_by_key(|r| addr_key(&r.addr));
    }
}

/// Renders a listing as `ipvsadm -L -n` would print it.
pub fn render(listing: &Listing, opts: ListOptions) -> String {
    let mut sorted;
    let listing = if opts.nosort {
        listing
    } else {
        sorted = listing.clone();
        sort_like_ipvsadm(&mut sorted);
        &sorted
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "IP Virtual Server version {IPVS_VERSION} (size={})",
        listing.conn_table_size
    );
    match opts.format {
        Format::Plain => {
            out.push_str("Prot LocalAddress:Port Scheduler Flags\n");
            out.push_str("  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n");
        }
        Format::Stats => {
            let _ = writeln!(
                out,
                "{:<33} {:>8} {:>8} {:>8} {:>8} {:>8}\n  -> RemoteAddress:Port",
                "Prot LocalAddress:Port", "Conns", "InPkts", "OutPkts", "InBytes", "OutBytes"
            );
        }
        Format::Thresholds => {
            let _ = writeln!(
                out,
                "{:<33} {:<10} {:<10} {:<10} {:<10}\n  -> RemoteAddress:Port",
                "Prot LocalAddress:Port", "Uthreshold", "Lthreshold", "ActiveConn", "InActConn"
            );
        }
        Format::PersistentConn => {
            let _ = writeln!(
                out,
                "{:<33} {:<9} {:<11} {:<10} {:<10}\n  -> RemoteAddress:Port",
                "Prot LocalAddress:Port", "Weight", "PersistConn", "ActiveConn", "InActConn"
            );
        }
    }
    for svc in &listing.services {
        render_service(&mut out, svc, opts);
    }
    out
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

/// `ipvsadm -L -c -n`: the connection list (ipvsadm.c: list_conn, print_conn).
pub fn render_connections(conns: &[ConnStatus]) -> String {
    let mut out = String::from("IPVS connection entries\n");
    let _ = writeln!(
        out,
        "pro expire {:<11} {:<18} {:<18} destination",
        "state", "source", "virtual"
    );
    for c in conns {
        let expire = format!("{:02}:{:02}", c.expires_s / 60, c.expires_s % 60);
        let _ = writeln!(
            out,
            "{:<3} {:<6} {:<11} {:<18} {:<18} {}",
            c.protocol.to_string(),
            expire,
            c.state,
            addr_port(c.client),
            addr_port(c.virtual_addr),
            addr_port(c.real)
        );
    }
    out
}

/// `TCP  203.0.113.10:80`, IPv6 in brackets; a group as ipvsadm prints a firewall-mark
/// service: `FWM  1`, `FWM  1 IPv6` (its matches are in the JSON and -S, not in this table,
/// whose lines scripts parse).
fn service_name(svc: &ServiceStatus) -> String {
    match svc.key {
        ServiceKey::Addr { protocol, addr } => format!("{protocol}  {}", addr_port(addr)),
        ServiceKey::Fwmark { fwmark, ipv6 } => {
            format!("FWM  {fwmark}{}", if ipv6 { " IPv6" } else { "" })
        }
    }
}

/// ipvsadm prints IPv6 as `[addr]:port`; SocketAddr's Display does the same.
fn addr_port(a: SocketAddr) -> String {
    a.to_string()
}

fn render_service(out: &mut String, svc: &ServiceStatus, opts: ListOptions) {
    match opts.format {
        Format::Plain | Format::Thresholds | Format::PersistentConn => {
            let _ = writeln!(
                out,
                "{} {}{}",
                service_name(svc),
                svc.scheduler,
                service_flags(svc)
            );
            for r in svc.reals.iter().filter(|_| opts.format != Format::Plain) {
                let _ = if opts.format == Format::Thresholds {
                    writeln!(
                        out,
                        "  -> {:<28} {:<10} {:<10} {:<10} {:<10}",
                        addr_port(r.addr),
                        r.u_threshold,
                        r.l_threshold,
                        r.active_conns,
                        r.inactive_conns
                    )
                } else {
                    writeln!(
                        out,
                        "  -> {:<28} {:<9} {:<11} {:<10} {:<10}",
                        addr_port(r.addr),
                        r.weight,
                        r.persist_conns,
                        r.active_conns,
                        r.inactive_conns
                    )
                };
            }
            for r in svc.reals.iter().filter(|_| opts.format == Format::Plain) {
                let _ = writeln!(
                    out,
                    "  -> {:<28} {:<7} {:<6} {:<10} {:<10}",
                    addr_port(r.addr),
                    r.forward.ipvsadm_name(),
                    r.weight,
                    r.active_conns,
                    r.inactive_conns
                );
            }
        }
        Format::Stats => {
            let _ = write!(out, "{:<33}", service_name(svc));
            stats_columns(out, &svc.stats, opts.exact);
            for r in &svc.reals {
                let _ = write!(out, "  -> {:<28}", addr_port(r.addr));
                stats_columns(out, &r.stats, opts.exact);
            }
        }
    }
}

/// Conns, InPkts, OutPkts, InBytes, OutBytes. A DR/TUN director never sees the replies, so the
/// Out columns are 0, as with IPVS in those modes.
fn stats_columns(out: &mut String, c: &Counters, exact: bool) {
    for v in [c.conns, c.packets, 0, c.bytes, 0] {
        out.push_str(&largenum(v, exact));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{ForwardMethod, Protocol, Scheduler, ServiceKey},
        proto::RealStatus,
    };

    fn listing() -> Listing {
        let real = |a: &str, w, act, inact| RealStatus {
            addr: a.parse().unwrap(),
            forward: ForwardMethod::Dr,
            weight: w,
            u_threshold: 0,
            l_threshold: 0,
            persist_conns: 0,
            active_conns: act,
            inactive_conns: inact,
            stats: Counters {
                conns: 12,
                packets: 345,
                bytes: 123_456_789_012,
            },
            mac: None,
        };
        Listing {
            conn_table_size: 4096,
            services: vec![
                ServiceStatus {
                    key: ServiceKey::Addr {
                        protocol: Protocol::Tcp,
                        addr: "203.0.113.10:80".parse().unwrap(),
                    },
                    scheduler: Scheduler::Wrr,
                    flags: Default::default(),
                    matches: Vec::new(),
                    persistence: None,
                    stats: Counters::default(),
                    reals: vec![
                        real("198.51.100.11:80", 1, 3, 17),
                        real("198.51.100.12:80", 3, 0, 0),
                    ],
                },
                ServiceStatus {
                    key: ServiceKey::Addr {
                        protocol: Protocol::Udp,
                        addr: "[2001:db8::10]:53".parse().unwrap(),
                    },
                    scheduler: Scheduler::Rr,
                    flags: Default::default(),
                    matches: Vec::new(),
                    persistence: None,
                    stats: Counters::default(),
                    reals: vec![real("[2001:db8::11]:53", 1, 0, 2)],
                },
            ],
            reasons: Default::default(),
            timeouts: Default::default(),
        }
    }

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
        assert_eq!(render(&listing(), ListOptions::default()), expected);
    }

    #[test]
    fn groups_are_listed_as_ipvsadm_lists_fwmark_services() {
        let mut l = listing();
        l.services.truncate(1);
        let svc = &mut l.services[0];
        svc.key = ServiceKey::fwmark(1, false);
        svc.scheduler = Scheduler::Rr;
        svc.persistence = Some(crate::model::Persistence {
            timeout: 60,
            prefix: 32,
        });
        svc.matches = vec!["tcp:203.0.113.10:80".parse().unwrap()];
        svc.reals.truncate(1);
        svc.reals[0].addr = "198.51.100.11:0".parse().unwrap();
        let mut v6 = svc.clone();
        v6.key = ServiceKey::fwmark(2, true);
        v6.persistence = Some(crate::model::Persistence {
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
        assert_eq!(render(&l, ListOptions::default()), expected);
        // The JSON carries the group's key and matches.
        let json = serde_json::to_string(&l.services[0]).unwrap();
        assert!(
            json.contains(
                r#""key":{"fwmark":1},"matches":[{"protocol":"tcp","addr":"203.0.113.10:80"}]"#
            ),
            "{json}"
        );
    }

    #[test]
    fn stats_matches_ipvsadm() {
        let out = render(
            &listing(),
            ListOptions {
                format: Format::Stats,
                exact: false,
                nosort: false,
            },
        );
        let expected = "\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes
  -> RemoteAddress:Port
TCP  203.0.113.10:80                     0        0        0        0        0
  -> 198.51.100.11:80                   12      345        0     123G        0
";
        assert!(out.starts_with(expected), "{out}");
    }

    /// ipvsadm.c print_title / print_service_entry, FMT_THRESHOLDS and FMT_PERSISTENTCONN:
    /// "%-33s %-10s %-10s %-10s %-10s" and "  -> %-28s %-10u %-10u %-10u %-10u";
    /// "%-33s %-9s %-11s %-10s %-10s" and "  -> %-28s %-9u %-11u %-10u %-10u"; persistence as
    /// " persistent %u" and " mask %s" (IPv4 dotted, only when not /32).
    #[test]
    fn thresholds_and_persistent_conn_match_ipvsadm() {
        let mut l = listing();
        l.services[0].persistence = Some(crate::model::Persistence {
            timeout: 300,
            prefix: 24,
        });
        l.services[0].reals[0].u_threshold = 100;
        l.services[0].reals[0].l_threshold = 50;
        l.services[0].reals[0].persist_conns = 7;
        let out = render(
            &l,
            ListOptions {
                format: Format::Thresholds,
                exact: false,
                nosort: false,
            },
        );
        let expected = "\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port            Uthreshold Lthreshold ActiveConn InActConn 
  -> RemoteAddress:Port
TCP  203.0.113.10:80 wrr persistent 300 mask 255.255.255.0
  -> 198.51.100.11:80             100        50         3          17        
";
        assert!(out.starts_with(expected), "{out}");
        let out = render(
            &l,
            ListOptions {
                format: Format::PersistentConn,
                exact: false,
                nosort: false,
            },
        );
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
        l.services[1].scheduler = crate::model::Scheduler::Sh;
        let out = render(&l, ListOptions::default());
        assert!(
            out.contains("UDP  [2001:db8::10]:53 sh (sh-fallback,sh-port)\n"),
            "{out}"
        );
    }

    /// ipvsadm.c list_conn / print_conn: "pro expire %-11s %-18s %-18s %s" header, rows
    /// "%-3s %-6s %-11s %-18s %-18s %s" with expire as "%02d:%02d".
    #[test]
    fn connections_match_ipvsadm() {
        let out = render_connections(&[ConnStatus {
            protocol: crate::model::Protocol::Tcp,
            client: "192.0.2.5:40000".parse().unwrap(),
            virtual_addr: "203.0.113.10:80".parse().unwrap(),
            real: "198.51.100.11:80".parse().unwrap(),
            state: "ESTABLISHED".into(),
            expires_s: 899,
        }]);
        assert_eq!(
            out,
            "IPVS connection entries\n\
             pro expire state       source             virtual            destination\n\
             TCP 14:59  ESTABLISHED 192.0.2.5:40000    203.0.113.10:80    198.51.100.11:80\n"
        );
    }

    #[test]
    fn sorted_as_ipvsadm_unless_nosort() {
        let mut l = listing();
        l.services.reverse();
        l.services[1].reals.reverse();
        let sorted = render(&l, ListOptions::default());
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
        );
        assert!(
            raw.find("UDP  [2001:db8::10]:53").unwrap() < raw.find("TCP  203.0.113.10:80").unwrap()
        );
        assert!(raw.find("198.51.100.12:80").unwrap() < raw.find("198.51.100.11:80").unwrap());
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
}
