//! `xvsadm drain`: takes a director or a real server out of service without breaking what it
//! carries. A director withdraws its announcements (xvsd --announce-table) and goes on
//! forwarding what still arrives; a real server is set to weight 0 (no new connections, the
//! established ones stay), and removed once its connections ended or the deadline passed.
//! Both report the connections left as they go, from the live counts (TCP and UDP alike).

use std::{net::SocketAddr, time::Duration};

use clap::Parser;

use lb_core::{
    check::parse_duration_ms,
    model::{Change, Protocol, ServiceKey},
    proto::{default_socket, Listing, RealStatus},
    rules::{parse_fwmark, parse_real_addr, parse_service_addr, CliError},
};

/// `xvsadm drain` options (`--help` prints [`lb_core::help::DRAIN_USAGE`]).
#[derive(Parser, Debug, Clone)]
#[command(
    name = "xvsadm drain",
    disable_help_flag = true,
    disable_version_flag = true
)]
pub struct DrainArgs {
    /// The real server's TCP service.
    #[arg(short = 't', long = "tcp-service", value_name = "SERVICE-ADDRESS")]
    pub tcp: Option<String>,
    /// The real server's UDP service.
    #[arg(short = 'u', long = "udp-service", value_name = "SERVICE-ADDRESS")]
    pub udp: Option<String>,
    /// The real server's service group (firewall mark).
    #[arg(short = 'f', long = "fwmark-service", value_name = "MARK")]
    pub fwmark: Option<String>,
    /// With -f: an IPv6 group.
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,
    /// The real server to drain (without one: the whole director).
    #[arg(short = 'r', long = "real-server", value_name = "SERVER-ADDRESS")]
    pub real: Option<String>,
    /// How long to wait for the connections to end.
    #[arg(long, value_name = "DURATION", default_value = "300s")]
    pub timeout: String,
    /// Between two progress lines.
    #[arg(long, value_name = "DURATION", default_value = "1s")]
    pub interval: String,
    /// A real server: leave it at weight 0 instead of removing it at the end.
    #[arg(long)]
    pub keep: bool,
    /// The director: end the drain (announce again), without waiting.
    #[arg(long)]
    pub cancel: bool,
    /// Return at once after the drain started (do not wait, nor remove).
    #[arg(long)]
    pub no_wait: bool,
    /// Control socket of xvsd.
    #[arg(long, env = "XVS_SOCKET", default_value_os_t = default_socket())]
    pub socket: std::path::PathBuf,
    /// Print the help.
    #[arg(short = 'h', long)]
    pub help: bool,
}

/// What is drained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The whole director: its announcements.
    Director,
    /// One real server of one service.
    Real {
        /// The service.
        service: ServiceKey,
        /// The real server.
        addr: SocketAddr,
    },
}

/// The drain asked for, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// What.
    pub target: Target,
    /// The deadline.
    pub timeout: Duration,
    /// Between progress lines.
    pub interval: Duration,
}

impl DrainArgs {
    /// The drain these options ask for, or why they do not make sense.
    pub fn plan(&self) -> Result<Plan, CliError> {
        let err = |m: &str| Err(CliError(m.to_string()));
        let duration = |name: &str, v: &str| {
            parse_duration_ms(v)
                .map(Duration::from_millis)
                .map_err(|e| CliError(format!("{name}: {e}")))
        };
        let timeout = duration("--timeout", &self.timeout)?;
        let interval = duration("--interval", &self.interval)?;
        if interval.is_zero() {
            return err("--interval must be above 0");
        }
        let given = [&self.tcp, &self.udp, &self.fwmark]
            .iter()
            .filter(|o| o.is_some())
            .count();
        if given > 1 {
            return err("give one service: -t, -u or -f");
        }
        let service = match (&self.tcp, &self.udp, &self.fwmark) {
            (Some(s), _, _) => Some(ServiceKey::new(
                Protocol::Tcp,
                parse_service_addr(s, Protocol::Tcp)?,
            )),
            (_, Some(s), _) => Some(ServiceKey::new(
                Protocol::Udp,
                parse_service_addr(s, Protocol::Udp)?,
            )),
            (_, _, Some(m)) => Some(ServiceKey::fwmark(parse_fwmark(m)?, self.ipv6)),
            _ => None,
        };
        let target = match (service, &self.real) {
            (None, None) => {
                if self.keep {
                    return err("--keep applies to a real server (-r)");
                }
                Target::Director
            }
            (Some(service), Some(r)) => {
                if self.cancel {
                    return err(
                        "--cancel ends a director's drain; a drained real server is put back \
                         with -e ... -w WEIGHT",
                    );
                }
                let protocol = match service {
                    ServiceKey::Addr { protocol, .. } => protocol,
                    ServiceKey::Fwmark { .. } => Protocol::Tcp,
                };
                Target::Real {
                    service,
                    addr: parse_real_addr(r, service.port(), protocol)?,
                }
            }
            (Some(_), None) => return err("a service needs -r: the real server to drain"),
            (None, Some(_)) => return err("-r needs its service: -t, -u or -f"),
        };
        Ok(Plan {
            target,
            timeout,
            interval,
        })
    }
}

/// The real server's status in a listing.
pub fn real_of<'a>(
    l: &'a Listing,
    service: &ServiceKey,
    addr: SocketAddr,
) -> Option<&'a RealStatus> {
    l.services
        .iter()
        .find(|s| s.key == *service)?
        .reals
        .iter()
        .find(|r| r.addr == addr)
}

/// The change that stops new connections to a real server (weight 0; the rest kept).
pub fn quiesce(service: ServiceKey, addr: SocketAddr) -> Change {
    Change::EditReal {
        service,
        addr,
        weight: Some(0),
        forward: None,
        u_threshold: None,
        l_threshold: None,
        check: None,
    }
}

/// Connections left: active and inactive of one real server, or of every real server.
pub fn remaining(l: &Listing, target: &Target) -> u64 {
    let count = |r: &RealStatus| r.active_conns + r.inactive_conns;
    match target {
        Target::Director => l.services.iter().flat_map(|s| &s.reals).map(count).sum(),
        Target::Real { service, addr } => real_of(l, service, *addr).map_or(0, count),
    }
}

/// One progress line.
pub fn progress(target: &Target, left: u64, waited: Duration, timeout: Duration) -> String {
    let what = match target {
        Target::Director => "director".to_string(),
        Target::Real { addr, .. } => format!("real server {addr}"),
    };
    format!(
        "{what}: {left} connection{} left, {:.0} s of {:.0} s",
        if left == 1 { "" } else { "s" },
        waited.as_secs_f64(),
        timeout.as_secs_f64()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> DrainArgs {
        DrainArgs::try_parse_from(std::iter::once("xvsadm drain").chain(v.iter().copied())).unwrap()
    }

    #[test]
    fn targets_and_refusals() {
        assert_eq!(args(&[]).plan().unwrap().target, Target::Director);
        let p = args(&[
            "-t",
            "203.0.113.10:80",
            "-r",
            "198.51.100.11",
            "--timeout",
            "30s",
        ])
        .plan()
        .unwrap();
        assert_eq!(
            p.target,
            Target::Real {
                service: ServiceKey::new(Protocol::Tcp, "203.0.113.10:80".parse().unwrap()),
                addr: "198.51.100.11:80".parse().unwrap(),
            }
        );
        assert_eq!(p.timeout, Duration::from_secs(30));
        for (a, why) in [
            (&["-t", "203.0.113.10:80"][..], "a service needs -r"),
            (&["-r", "198.51.100.11"][..], "-r needs its service"),
            (&["--keep"][..], "--keep applies to a real server"),
            (
                &[
                    "-t",
                    "203.0.113.10:80",
                    "-u",
                    "203.0.113.10:53",
                    "-r",
                    "198.51.100.11",
                ][..],
                "give one service",
            ),
            (&["--interval", "0s"][..], "--interval must be above 0"),
        ] {
            let e = args(a).plan().unwrap_err().to_string();
            assert!(e.contains(why), "{a:?}: {e}");
        }
    }

    #[test]
    fn progress_reads_well() {
        let t = Target::Real {
            service: ServiceKey::new(Protocol::Udp, "203.0.113.10:53".parse().unwrap()),
            addr: "198.51.100.11:53".parse().unwrap(),
        };
        assert_eq!(
            progress(&t, 1, Duration::from_secs(3), Duration::from_secs(60)),
            "real server 198.51.100.11:53: 1 connection left, 3 s of 60 s"
        );
        assert_eq!(
            progress(
                &Target::Director,
                12,
                Duration::ZERO,
                Duration::from_secs(300)
            ),
            "director: 12 connections left, 0 s of 300 s"
        );
    }
}
