//! `xvsadm stats`: a live terminal view of every service's and real server's rates (new
//! connections, packets and bytes per second, as the daemon's IPVS-style estimator has them,
//! the numbers of `-L --rate`) with their connection counts.

use std::{fmt::Write, time::Duration};

use clap::Parser;
use serde::Serialize;

use lb_core::{
    estimator::Rates,
    health::HealthState,
    listing::sort_like_ipvsadm,
    model::{Protocol, ServiceKey},
    names::{addr_port, Numeric},
    proto::{default_socket, Listing, Membership, RealStatus},
};

/// `xvsadm stats` options (`--help` prints [`lb_core::help::STATS_USAGE`]).
#[derive(Parser, Debug, Clone)]
#[command(
    name = "xvsadm stats",
    disable_help_flag = true,
    disable_version_flag = true
)]
pub struct StatsArgs {
    /// Refresh until interrupted (the default).
    #[arg(long)]
    pub watch: bool,
    /// One frame, then exit.
    #[arg(long, conflicts_with = "watch")]
    pub once: bool,
    /// Seconds between frames.
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    pub interval: f64,
    /// JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Control socket of xvsd.
    #[arg(long, env = "XVS_SOCKET", default_value_os_t = default_socket())]
    pub socket: std::path::PathBuf,
    /// Print the help.
    #[arg(short = 'h', long)]
    pub help: bool,
}

impl StatsArgs {
    /// The refresh period, checked: at least 0.1 s, at most a day.
    pub fn period(&self) -> Result<Duration, String> {
        refresh_period("--interval", self.interval)
    }
}

/// A live view's refresh period of `secs` (given as option `flag`), checked: at least 0.1 s,
/// at most a day.
pub fn refresh_period(flag: &str, secs: f64) -> Result<Duration, String> {
    if !(0.1..=86400.0).contains(&secs) {
        return Err(format!(
            "{flag} {secs}: must be between 0.1 and 86400 seconds"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// One row of a frame.
#[derive(Debug, Serialize, PartialEq)]
pub struct Row {
    /// The service or real server, as `-L -n` names it.
    pub name: String,
    /// Rates per second.
    pub rates: Rates,
    /// ESTABLISHED connections (a service: the sum over its real servers).
    pub active: u64,
    /// Other live connections.
    pub inactive: u64,
    /// A real server's health: `up`, `down` (out of the tables), `inhibited` (down, weight 0),
    /// `sorry` (the sorry server, in use), or `-` (not checked). None for a service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
}

/// The Health column of a real server (`xvsadm top` shows it too).
pub fn health_of(r: &RealStatus, sorry: bool) -> String {
    match (sorry, r.table, &r.health) {
        (true, _, _) => "sorry",
        (_, Membership::Inhibited, _) => "inhibited",
        (_, Membership::Removed, _) => "down",
        (_, _, Some(h)) if h.state == HealthState::Down => "down",
        (_, _, Some(_)) => "up",
        (_, _, None) => "-",
    }
    .to_string()
}

/// A service and its real servers in a frame.
#[derive(Debug, Serialize, PartialEq)]
pub struct ServiceRows {
    /// The service.
    #[serde(flatten)]
    pub service: Row,
    /// Its real servers.
    pub reals: Vec<Row>,
}

/// The rows of one frame, in ipvsadm's order.
pub fn frame(listing: &Listing) -> Vec<ServiceRows> {
    let mut l = listing.clone();
    sort_like_ipvsadm(&mut l);
    l.services
        .iter()
        .map(|s| {
            let proto = match s.key {
                ServiceKey::Addr { protocol, .. } => protocol,
                ServiceKey::Fwmark { .. } => Protocol::Tcp,
            };
            let name = match s.key {
                ServiceKey::Addr { protocol, addr } => {
                    format!(
                        "{:<4} {} {}",
                        protocol.to_string(),
                        addr_port(&Numeric, addr, protocol),
                        s.scheduler
                    )
                }
                ServiceKey::Fwmark { fwmark, ipv6 } => {
                    format!(
                        "FWM  {fwmark}{} {}",
                        if ipv6 { " IPv6" } else { "" },
                        s.scheduler
                    )
                }
            };
            ServiceRows {
                service: Row {
                    name,
                    rates: s.rates,
                    active: s.reals.iter().map(|r| r.active_conns).sum(),
                    inactive: s.reals.iter().map(|r| r.inactive_conns).sum(),
                    health: None,
                },
                // Every configured real server, and the sorry server while it is in use.
                reals: s
                    .reals
                    .iter()
                    .map(|r| (r, false))
                    .chain(
                        s.sorry_server
                            .iter()
                            .filter(|r| r.table == Membership::Active)
                            .map(|r| (r, true)),
                    )
                    .map(|(r, sorry)| Row {
                        name: addr_port(&Numeric, r.addr, proto),
                        rates: r.rates,
                        active: r.active_conns,
                        inactive: r.inactive_conns,
                        health: Some(health_of(r, sorry)),
                    })
                    .collect(),
            }
        })
        .collect()
}

/// The connection table's line of a frame: live entries against the capacity, all entries,
/// new entries and mid-flow misses per second (the pressure xvsd warns about).
pub fn table_line(listing: &Listing) -> String {
    let t = &listing.table;
    let capacity = listing.conn_table_size as u64;
    format!(
        "Connection table: {} live of {} ({}%), {} entries; {} new/s; {} mid-flow misses/s ({} in all)",
        t.live,
        capacity,
        lb_core::pressure::fill_percent(t.live, capacity),
        t.entries,
        human(t.new_per_s),
        human(t.midflow_miss_per_s),
        t.midflow_misses
    )
}

/// A rate for people: 1234 -> `1234`, 12345 -> `12.3K`, 12345678 -> `12.3M` (powers of 1000).
pub fn human(v: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1_000_000_000_000, "T"),
        (1_000_000_000, "G"),
        (1_000_000, "M"),
        (1_000, "K"),
    ];
    if v < 10_000 {
        return v.to_string();
    }
    for (scale, unit) in UNITS {
        if v >= scale {
            let x = v as f64 / scale as f64;
            return if x < 100.0 {
                format!("{x:.1}{unit}")
            } else {
                format!("{x:.0}{unit}")
            };
        }
    }
    v.to_string()
}

/// One frame as a table: a header, the connection table's line ([`table_line`]), then per
/// service a line and one line per real server.
pub fn render(rows: &[ServiceRows], table: &str, period: Duration) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "xvs: {} services; rates per second as IPVS estimates them (2 s samples, ~8 s average); every {:.1} s",
        rows.len(),
        period.as_secs_f64()
    );
    let _ = writeln!(out, "{table}");
    let _ = writeln!(
        out,
        "{:<40} {:>8} {:>8} {:>9} {:>10} {:>10} Health",
        "Prot LocalAddress:Port Scheduler", "Conn/s", "Pkt/s", "Bytes/s", "ActiveConn", "InActConn"
    );
    out.push_str("  -> RemoteAddress:Port\n");
    let line = |out: &mut String, name: &str, r: &Row| {
        let _ = write!(
            out,
            "{:<40} {:>8} {:>8} {:>9} {:>10} {:>10}",
            name,
            human(r.rates.cps),
            human(r.rates.inpps),
            human(r.rates.inbps),
            r.active,
            r.inactive
        );
        match &r.health {
            Some(h) => {
                let _ = writeln!(out, " {h}");
            }
            None => out.push('\n'),
        }
    };
    for s in rows {
        line(&mut out, &s.service.name, &s.service);
        for r in &s.reals {
            line(&mut out, &format!("  -> {}", r.name), r);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_core::{
        model::{ForwardMethod, Scheduler},
        proto::{RealStatus, ServiceStatus},
        stats::Counters,
    };

    #[test]
    fn human_units() {
        assert_eq!(human(0), "0");
        assert_eq!(human(9999), "9999");
        assert_eq!(human(12_345), "12.3K");
        assert_eq!(human(123_456), "123K");
        assert_eq!(human(12_345_678), "12.3M");
        assert_eq!(human(5_000_000_000), "5.0G");
    }

    #[test]
    fn frame_shows_rates_and_connection_counts() {
        let real = |a: &str, cps, act| RealStatus {
            addr: a.parse().unwrap(),
            forward: ForwardMethod::Dr,
            weight: 1,
            u_threshold: 0,
            l_threshold: 0,
            persist_conns: 0,
            active_conns: act,
            inactive_conns: 1,
            stats: Counters::default(),
            rates: Rates {
                cps,
                inpps: cps * 6,
                outpps: 0,
                inbps: cps * 600,
                outbps: 0,
            },
            mac: None,
            check: Default::default(),
            table: Default::default(),
            health: None,
        };
        let l = Listing {
            conn_table_size: 4096,
            services: vec![ServiceStatus {
                key: ServiceKey::new(Protocol::Tcp, "203.0.113.10:80".parse().unwrap()),
                matches: vec![],
                scheduler: Scheduler::Wrr,
                flags: Default::default(),
                persistence: None,
                stats: Counters::default(),
                rates: Rates {
                    cps: 30,
                    inpps: 180,
                    outpps: 0,
                    inbps: 18_000,
                    outbps: 0,
                },
                reals: vec![
                    real("198.51.100.12:80", 20, 3),
                    real("198.51.100.11:80", 10, 2),
                ],
                check: Default::default(),
                sorry_server: None,
                quorum: Default::default(),
                laddrs: Vec::new(),
                fullnat_refused: 0,
                midflow_misses: 0,
                table_digest: None,
            }],
            table: lb_core::pressure::TableStatus {
                entries: 4000,
                live: 3900,
                new_per_s: 12_000,
                midflow_miss_per_s: 12,
                midflow_misses: 9,
            },
            ..Default::default()
        };
        let rows = frame(&l);
        assert_eq!(rows[0].service.active, 5);
        assert_eq!(rows[0].reals[0].name, "198.51.100.11:80");
        let text = render(&rows, &table_line(&l), Duration::from_secs(2));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1],
            "Connection table: 3900 live of 4096 (95%), 4000 entries; 12.0K new/s; 12 mid-flow misses/s (9 in all)"
        );
        assert_eq!(
            lines[4],
            "TCP  203.0.113.10:80 wrr                       30      180     18.0K          5          2"
        );
        assert_eq!(
            lines[5],
            "  -> 198.51.100.11:80                          10       60      6000          2          1 -"
        );
        let json = serde_json::to_string(&rows).unwrap();
        assert!(
            json.starts_with(r#"[{"name":"TCP  203.0.113.10:80 wrr","rates":{"cps":30"#),
            "{json}"
        );
    }
}
