//! The declarative configuration file (TOML): the whole desired configuration of a director —
//! services, their real servers and their health checks, sorry servers, timeouts. `xvsadm apply -f FILE` and `xvsd --config FILE` make
//! the running configuration exactly what the file says. The commented example is
//! `examples/xvs.toml`.
//!
//! A file is checked as a whole: every error is reported with its line and column (syntax,
//! unknown keys, wrong types, and what the model refuses, such as a real server of the other
//! address family), and a file with any error changes nothing.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    ops::Range,
    path::Path,
};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use toml::{
    de::{DeString, DeTable, DeValue, ValueDeserializer},
    Spanned,
};

use crate::{
    check::CheckSpec,
    listing,
    model::Timeouts,
    model::{
        Change, Config, ConfigError, ForwardMethod, LocalAddr, Persistence, PortRange, Protocol,
        Quorum, RealServer, SchedFlags, Scheduler, ServiceKey, Tunnel, TunnelKind, VirtualAddr,
        DEFAULT_PERSISTENCE_TIMEOUT, DEFAULT_SCHEDULER, MAX_TIMEOUT, MAX_WEIGHT,
    },
    rules,
    state::{DesiredState, DEFAULT_TIMEOUTS},
};

mod health_check;

/// One problem in a configuration file and where it is (1-based line and column).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileError {
    /// Line, from 1.
    pub line: usize,
    /// Column (characters), from 1.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

/// Why a configuration file was not taken.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The file has errors; every one is listed.
    #[error("{}", invalid_text(path, errors))]
    Invalid {
        /// The file.
        path: String,
        /// Every error, in file order.
        errors: Vec<FileError>,
    },
}

fn invalid_text(path: &str, errors: &[FileError]) -> String {
    let n = errors.len();
    let mut out = format!(
        "{path}: {n} error{}, nothing changed",
        if n == 1 { "" } else { "s" }
    );
    for e in errors {
        out.push_str(&format!("\n{path}:{e}"));
    }
    out
}

/// Reads and checks a configuration file.
pub fn load(path: &Path) -> Result<DesiredState, LoadError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: shown.clone(),
        source,
    })?;
    parse(&text).map_err(|errors| LoadError::Invalid {
        path: shown,
        errors,
    })
}

/// `[timeouts]`: ipvsadm's `--set`, in seconds; a value not given is IPVS's default.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TimeoutsEntry {
    tcp: Option<Spanned<u64>>,
    tcpfin: Option<Spanned<u64>>,
    udp: Option<Spanned<u64>>,
}

/// One `[[service]]`, without its real servers (they are checked one by one).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ServiceEntry {
    tcp: Option<Spanned<String>>,
    udp: Option<Spanned<String>>,
    fwmark: Option<Spanned<u32>>,
    ipv6: Option<Spanned<bool>>,
    #[serde(rename = "match")]
    matches: Option<Vec<Spanned<String>>>,
    scheduler: Option<Spanned<Scheduler>>,
    sched_flags: Option<Vec<Spanned<String>>>,
    persistent: Option<Spanned<toml::Value>>,
    netmask: Option<Spanned<toml::Value>>,
    sorry_server: Option<Spanned<String>>,
    quorum: Option<Spanned<u32>>,
    hysteresis: Option<Spanned<u32>>,
    laddrs: Option<Vec<Spanned<toml::Value>>>,
}

/// One local address of `laddrs` written as a table (a plain string is an address with the
/// default ports and no interface).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct LaddrEntry {
    addr: String,
    ports: Option<String>,
    iface: Option<String>,
}

/// One `[[service.real]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RealEntry {
    address: Spanned<String>,
    weight: Option<Spanned<i64>>,
    forward: Option<Spanned<Forward>>,
    tun_type: Option<Spanned<TunnelKind>>,
    tun_port: Option<Spanned<u16>>,
    tun_csum: Option<Spanned<bool>>,
    u_threshold: Option<Spanned<u32>>,
    l_threshold: Option<Spanned<u32>>,
}

/// `forward`: ipvsadm's -g, -i or -m (the tunnel's details in `tun-*`, as ipvsadm's options).
/// NAT is also read by ipvsadm's and keepalived's names for it (`masq`, `masquerade`);
/// `fullnat` is DPVS's FULLNAT (the service needs `laddrs` of the real server's family).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Forward {
    Dr,
    Tunnel,
    #[serde(alias = "masq", alias = "masquerade")]
    Nat,
    Fullnat,
}

/// Collects errors with their positions.
struct Checker<'t> {
    text: &'t str,
    errors: Vec<(usize, String)>,
}

impl Checker<'_> {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.errors.push((span.start, message.into()));
    }

    fn toml_error(&mut self, e: &toml::de::Error, fallback: Range<usize>) {
        let span = e.span().unwrap_or(fallback);
        self.error(span, e.message().trim_end().to_string());
    }

    fn finish(mut self) -> Vec<FileError> {
        self.errors.sort_by_key(|(at, _)| *at);
        self.errors.dedup();
        self.errors
            .into_iter()
            .map(|(at, message)| {
                let (line, column) = position(self.text, at);
                FileError {
                    line,
                    column,
                    message,
                }
            })
            .collect()
    }
}

/// Line and column (1-based, in characters) of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let mut at = offset.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

/// Parses and checks a configuration file's text: the desired state it declares, or every
/// error in it.
pub fn parse(text: &str) -> Result<DesiredState, Vec<FileError>> {
    let mut check = Checker {
        text,
        errors: Vec::new(),
    };
    let (root, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        // A broken document would only yield follow-on errors: report the syntax ones.
        for e in &syntax {
            check.toml_error(e, 0..0);
        }
        return Err(check.finish());
    }
    let mut state = DesiredState::default();
    let mut services = Vec::new();
    for (key, value) in root.into_inner() {
        match key.get_ref().as_ref() {
            "timeouts" => {
                if let Some(t) = timeouts(&mut check, value) {
                    state.timeouts = t;
                }
            }
            "service" => match value.into_inner() {
                DeValue::Array(list) => services.extend(list),
                _ => check.error(
                    key.span(),
                    "`service` is a list of tables: write each one as [[service]]",
                ),
            },
            other => check.error(
                key.span(),
                format!("unknown key `{other}`, expected `timeouts` or `service`"),
            ),
        }
    }
    for value in services {
        service(&mut check, &mut state.config, value);
    }
    if check.errors.is_empty() {
        Ok(state)
    } else {
        Err(check.finish())
    }
}

fn timeouts(check: &mut Checker, value: Spanned<DeValue>) -> Option<Timeouts> {
    let span = value.span();
    let entry = match TimeoutsEntry::deserialize(ValueDeserializer::from(value)) {
        Ok(e) => e,
        Err(e) => {
            check.toml_error(&e, span);
            return None;
        }
    };
    let mut out = DEFAULT_TIMEOUTS;
    let mut ok = true;
    for (v, slot) in [
        (entry.tcp, &mut out.tcp),
        (entry.tcpfin, &mut out.tcpfin),
        (entry.udp, &mut out.udp),
    ] {
        if let Some(v) = v {
            if *v.get_ref() == 0 || *v.get_ref() > MAX_TIMEOUT as u64 {
                check.error(
                    v.span(),
                    format!(
                        "Illegal timeout: {} (must be 1..={MAX_TIMEOUT} seconds)",
                        v.get_ref()
                    ),
                );
                ok = false;
            } else {
                *slot = v.into_inner();
            }
        }
    }
    ok.then_some(out)
}

/// Checks one `[[service]]` and adds it (and its real servers) to `config`, reporting every
/// error it finds; a service the model refuses is left out so its real servers do not all
/// report a missing service.
fn service(check: &mut Checker, config: &mut Config, value: Spanned<DeValue>) {
    let span = value.span();
    let DeValue::Table(mut table) = value.into_inner() else {
        check.error(span, "a service is a table: write it as [[service]]");
        return;
    };
    let reals = table.remove_entry("real");
    // The service's check: None when it has none; Some(None) when it has errors.
    let service_check = table
        .remove_entry(health_check::KEY)
        .map(|(k, v)| (k.span(), health_check::parse(check, k.span(), v, None)));
    let entry = match ServiceEntry::deserialize(ValueDeserializer::from(Spanned::new(
        span.clone(),
        DeValue::Table(table),
    ))) {
        Ok(e) => e,
        Err(e) => {
            check.toml_error(&e, span.clone());
            return check_alone(check, reals);
        }
    };
    let sorry_server = entry.sorry_server.as_ref().map(|s| {
        (
            s.span(),
            real_addr(s.get_ref(), 0).map_err(|msg| check.error(s.span(), msg)),
        )
    });
    let Some((key, key_span)) = service_key(check, &entry, span.clone()) else {
        return check_alone(check, reals);
    };
    let persistence = persistence(check, &entry, &key);
    let mut flags = SchedFlags::default();
    for f in entry.sched_flags.iter().flatten() {
        match SchedFlags::parse(f.get_ref()) {
            Ok(one) => {
                flags.sh_fallback |= one.sh_fallback;
                flags.sh_port |= one.sh_port;
                flags.mh_fallback |= one.mh_fallback;
                flags.mh_port |= one.mh_port;
            }
            Err(e) => check.error(f.span(), e.to_string()),
        }
    }
    let Some(persistence) = persistence else {
        return check_alone(check, reals);
    };
    let add = Change::AddService {
        key,
        scheduler: entry
            .scheduler
            .map(Spanned::into_inner)
            .unwrap_or(DEFAULT_SCHEDULER),
        flags,
        persistence,
    };
    if let Err(e) = config.apply(&add) {
        let at = match (&e, &entry.netmask, &entry.persistent) {
            (ConfigError::BadNetmask(_), Some(m), _) => m.span(),
            (ConfigError::BadTimeout(_), _, Some(p)) => p.span(),
            _ => key_span,
        };
        check.error(at, e.to_string());
        return check_alone(check, reals);
    }
    // Matches one at a time, so a refused one is pointed at.
    let mut matches: Vec<VirtualAddr> = Vec::new();
    for m in entry.matches.iter().flatten() {
        let parsed = match m.get_ref().parse::<VirtualAddr>() {
            Ok(v) => v,
            Err(e) => {
                check.error(m.span(), e.to_string());
                continue;
            }
        };
        matches.push(parsed);
        if let Err(e) = config.apply(&Change::SetMatches {
            key,
            matches: matches.clone(),
        }) {
            matches.pop();
            check.error(m.span(), e.to_string());
        }
    }
    // Local addresses before the real servers: a FULLNAT real server needs one of its family.
    for l in entry.laddrs.iter().flatten() {
        let Some(laddr) = local_addr(check, l) else {
            continue;
        };
        if let Err(e) = config.apply(&Change::AddLocalAddr {
            service: key,
            laddr,
        }) {
            check.error(l.span(), e.to_string());
        }
    }
    let inherited = match &service_check {
        None => CheckSpec::default(),
        Some((at, Some(spec))) => match config.apply(&Change::SetCheck {
            key,
            check: spec.clone(),
        }) {
            Ok(()) => spec.clone(),
            Err(e) => {
                check.error(at.clone(), e.to_string());
                return check_alone(check, reals);
            }
        },
        Some((_, None)) => return check_alone(check, reals),
    };
    for value in reals
        .map(|(_, v)| real_values(check, v))
        .into_iter()
        .flatten()
    {
        let Some((real, spans)) = real(
            check,
            value,
            key.port(),
            health_check::Inherited::Service(&inherited),
        ) else {
            continue;
        };
        if let Err(e) = config.apply(&Change::AddReal { service: key, real }) {
            let at = match &e {
                ConfigError::BadWeight(_) => spans.weight.clone(),
                ConfigError::BadTunnel(_) => spans.tunnel.clone(),
                ConfigError::BadThreshold { .. } => {
                    spans.l_threshold.clone().or(spans.u_threshold.clone())
                }
                // A real server without a table of its own fails by what it inherits.
                ConfigError::BadCheck(_) => spans
                    .check
                    .clone()
                    .or_else(|| service_check.as_ref().map(|(at, _)| at.clone())),
                _ => None,
            };
            check.error(at.unwrap_or(spans.address), e.to_string());
        }
    }
    if entry.quorum.is_some() || entry.hysteresis.is_some() {
        let quorum = Quorum {
            quorum: entry
                .quorum
                .as_ref()
                .map_or(Quorum::default().quorum, |q| *q.get_ref()),
            hysteresis: entry.hysteresis.as_ref().map_or(0, |h| *h.get_ref()),
        };
        if let Err(e) = config.apply(&Change::SetQuorum { key, quorum }) {
            let at = entry
                .hysteresis
                .as_ref()
                .or(entry.quorum.as_ref())
                .map_or(key_span.clone(), |v| v.span());
            check.error(at, e.to_string());
        }
    }
    // After the real servers: a sorry server that is one of them is pointed at here.
    if let Some((at, Ok(addr))) = sorry_server {
        let addr = if addr.port() == 0 {
            SocketAddr::new(addr.ip(), key.port())
        } else {
            addr
        };
        if let Err(e) = config.apply(&Change::SetSorryServer {
            key,
            sorry_server: Some(addr),
        }) {
            check.error(at, e.to_string());
        }
    }
}

/// Checks the real servers of a service that could not be added, on their own (what can be
/// checked without the service: keys, types, addresses, weights).
fn check_alone(check: &mut Checker, reals: Option<(Spanned<DeString>, Spanned<DeValue>)>) {
    for value in reals
        .map(|(_, v)| real_values(check, v))
        .into_iter()
        .flatten()
    {
        let _ = real(check, value, 0, health_check::Inherited::Unknown);
    }
}

/// The entries of `real = [...]` / `[[service.real]]`.
fn real_values<'i>(check: &mut Checker, value: Spanned<DeValue<'i>>) -> Vec<Spanned<DeValue<'i>>> {
    let span = value.span();
    match value.into_inner() {
        DeValue::Array(list) => list.into_iter().collect(),
        _ => {
            check.error(
                span,
                "`real` is a list of tables: write each real server as [[service.real]]",
            );
            Vec::new()
        }
    }
}

/// Where a real server's values are, to point at the one the model refuses.
struct RealSpans {
    address: Range<usize>,
    weight: Option<Range<usize>>,
    tunnel: Option<Range<usize>>,
    u_threshold: Option<Range<usize>>,
    l_threshold: Option<Range<usize>>,
    check: Option<Range<usize>>,
}

/// Checks one `[[service.real]]`: the real server (port defaulting to the service's), or None
/// after reporting what is wrong.
fn real(
    check: &mut Checker,
    value: Spanned<DeValue>,
    service_port: u16,
    inherited: health_check::Inherited,
) -> Option<(RealServer, RealSpans)> {
    let span = value.span();
    let mut own_check = None;
    let value = match value.into_inner() {
        DeValue::Table(mut table) => {
            if let Some((k, v)) = table.remove_entry(health_check::KEY) {
                own_check = Some((
                    k.span(),
                    health_check::parse(check, k.span(), v, Some(inherited)),
                ));
            }
            DeValue::Table(table)
        }
        other => other,
    };
    let entry =
        match RealEntry::deserialize(ValueDeserializer::from(Spanned::new(span.clone(), value))) {
            Ok(e) => e,
            Err(e) => {
                check.toml_error(&e, span);
                return None;
            }
        };
    let spans = RealSpans {
        address: entry.address.span(),
        weight: entry.weight.as_ref().map(Spanned::span),
        tunnel: entry
            .tun_port
            .as_ref()
            .map(Spanned::span)
            .or(entry.tun_type.as_ref().map(Spanned::span))
            .or(entry.forward.as_ref().map(Spanned::span)),
        u_threshold: entry.u_threshold.as_ref().map(Spanned::span),
        l_threshold: entry.l_threshold.as_ref().map(Spanned::span),
        check: own_check.as_ref().map(|(at, _)| at.clone()),
    };
    let mut ok = true;
    let addr = match real_addr(entry.address.get_ref(), service_port) {
        Ok(a) => Some(a),
        Err(msg) => {
            check.error(entry.address.span(), msg);
            None
        }
    };
    let weight = match entry.weight {
        None => 1,
        Some(w) if (0..=MAX_WEIGHT as i64).contains(w.get_ref()) => *w.get_ref() as u32,
        Some(w) => {
            check.error(
                w.span(),
                format!(
                    "Illegal weight specified: {} (must be 0..={MAX_WEIGHT})",
                    w.get_ref()
                ),
            );
            ok = false;
            0
        }
    };
    let forward = match entry.forward.as_ref().map(|f| *f.get_ref()) {
        Some(Forward::Tunnel) => ForwardMethod::Tunnel(Tunnel {
            kind: entry
                .tun_type
                .as_ref()
                .map_or(TunnelKind::Ipip, |t| *t.get_ref()),
            port: entry.tun_port.as_ref().map_or(0, |p| *p.get_ref()),
            csum: entry.tun_csum.as_ref().is_some_and(|c| *c.get_ref()),
        }),
        f @ (Some(Forward::Dr | Forward::Nat | Forward::Fullnat) | None) => {
            let stray = [
                entry.tun_type.as_ref().map(Spanned::span),
                entry.tun_port.as_ref().map(Spanned::span),
                entry.tun_csum.as_ref().map(Spanned::span),
            ];
            for span in stray.into_iter().flatten() {
                check.error(
                    span,
                    "`tun-type`, `tun-port` and `tun-csum` need `forward = \"tunnel\"`",
                );
                ok = false;
            }
            match f {
                Some(Forward::Nat) => ForwardMethod::Nat,
                Some(Forward::Fullnat) => ForwardMethod::FullNat,
                _ => ForwardMethod::Dr,
            }
        }
    };
    let real = RealServer {
        addr: addr?,
        weight,
        forward,
        u_threshold: entry.u_threshold.map(Spanned::into_inner).unwrap_or(0),
        l_threshold: entry.l_threshold.map(Spanned::into_inner).unwrap_or(0),
        check: match own_check {
            None => CheckSpec::default(),
            Some((_, Some(spec))) => spec,
            Some((_, None)) => return None,
        },
    };
    ok.then_some((real, spans))
}

/// One entry of `laddrs`: `"10.0.0.9"`, or `{ addr = "10.0.0.10", ports = "40000-40999",
/// iface = "eth1" }`; None after reporting what is wrong.
fn local_addr(check: &mut Checker, value: &Spanned<toml::Value>) -> Option<LocalAddr> {
    let entry = match value.get_ref() {
        toml::Value::String(a) => LaddrEntry {
            addr: a.clone(),
            ports: None,
            iface: None,
        },
        toml::Value::Table(t) => match LaddrEntry::deserialize(t.clone()) {
            Ok(e) => e,
            Err(e) => {
                check.error(
                    value.span(),
                    format!("{} (a local address is \"ADDR\" or {{ addr = \"ADDR\", ports = \"LO-HI\", iface = \"IFACE\" }})", e.message().trim_end()),
                );
                return None;
            }
        },
        other => {
            check.error(
                value.span(),
                format!("Illegal local address: {other} (expected \"ADDR\" or {{ addr = \"ADDR\", ports = \"LO-HI\", iface = \"IFACE\" }})"),
            );
            return None;
        }
    };
    let Ok(addr) = entry.addr.parse::<IpAddr>() else {
        check.error(
            value.span(),
            format!(
                "Illegal local address: {} (expected an IP address without a port)",
                entry.addr
            ),
        );
        return None;
    };
    let ports = match entry.ports.as_deref() {
        None => PortRange::DEFAULT,
        Some(p) => match p.parse::<PortRange>() {
            Ok(r) => r,
            Err(e) => {
                check.error(value.span(), e.to_string());
                return None;
            }
        },
    };
    Some(LocalAddr {
        addr,
        ports,
        iface: entry.iface,
    })
}

/// A real server's address: an IP address with or without a port (`198.51.100.11`,
/// `198.51.100.11:80`, `2001:db8::11`, `[2001:db8::11]:80`); without one, the service's port.
/// Names are not resolved: what a file says must not depend on DNS at the time it is applied.
fn real_addr(s: &str, service_port: u16) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let bare = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    bare.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, service_port))
        .map_err(|_| {
            format!("Illegal address: {s} (expected an IP address, with or without a port)")
        })
}

/// The service's identity: exactly one of `tcp`, `udp`, `fwmark`; `ipv6` and `match` belong
/// to groups (`fwmark`). Returns the key and where it is written.
fn service_key(
    check: &mut Checker,
    entry: &ServiceEntry,
    span: Range<usize>,
) -> Option<(ServiceKey, Range<usize>)> {
    let given = [
        entry.tcp.as_ref().map(|s| s.span()),
        entry.udp.as_ref().map(|s| s.span()),
        entry.fwmark.as_ref().map(|s| s.span()),
    ];
    let mut present = given.iter().flatten();
    let Some(first) = present.next() else {
        check.error(
            span,
            "a service needs one of `tcp = \"VIP:port\"`, `udp = \"VIP:port\"` or `fwmark = MARK`",
        );
        return None;
    };
    if let Some(second) = present.next() {
        check.error(
            second.clone(),
            "a service is one of `tcp`, `udp` or `fwmark`, not several",
        );
        return None;
    }
    let mut ok = true;
    if entry.fwmark.is_none() {
        if let Some(v) = &entry.ipv6 {
            check.error(v.span(), "`ipv6` applies to service groups (`fwmark`) only");
            ok = false;
        }
        if let Some(m) = entry.matches.as_ref().and_then(|m| m.first()) {
            check.error(
                m.span(),
                "`match` applies to service groups (`fwmark`) only: a tcp/udp service matches its own address",
            );
            ok = false;
        }
    }
    let key = match (&entry.tcp, &entry.udp, &entry.fwmark) {
        (Some(a), _, _) | (_, Some(a), _) => {
            let protocol = if entry.tcp.is_some() {
                Protocol::Tcp
            } else {
                Protocol::Udp
            };
            match a.get_ref().parse::<SocketAddr>() {
                Ok(addr) => ServiceKey::new(protocol, addr),
                Err(_) => {
                    check.error(
                        a.span(),
                        format!(
                            "Illegal address: {} (expected VIP:port, or [IPv6]:port)",
                            a.get_ref()
                        ),
                    );
                    return None;
                }
            }
        }
        (_, _, Some(m)) => ServiceKey::fwmark(
            *m.get_ref(),
            entry.ipv6.as_ref().is_some_and(|v| *v.get_ref()),
        ),
        _ => unreachable!("one of them was given"),
    };
    ok.then_some((key, first.clone()))
}

/// `persistent` (seconds, or `true` for ipvsadm's 300) and `netmask` (dotted IPv4 mask or a
/// prefix length). Some(None): not persistent; None: an error was reported.
fn persistence(
    check: &mut Checker,
    entry: &ServiceEntry,
    key: &ServiceKey,
) -> Option<Option<Persistence>> {
    let timeout = match &entry.persistent {
        None => None,
        Some(p) => match p.get_ref() {
            toml::Value::Boolean(false) => None,
            toml::Value::Boolean(true) => Some(DEFAULT_PERSISTENCE_TIMEOUT),
            toml::Value::Integer(n) if (1..=MAX_TIMEOUT as i64).contains(n) => Some(*n as u32),
            other => {
                check.error(
                    p.span(),
                    format!(
                        "Illegal persistence: {other} (expected a timeout of 1..={MAX_TIMEOUT} seconds, or true for {DEFAULT_PERSISTENCE_TIMEOUT})"
                    ),
                );
                return None;
            }
        },
    };
    let v4 = key.is_ipv4();
    let prefix = match &entry.netmask {
        None => {
            if v4 {
                32
            } else {
                128
            }
        }
        Some(m) => {
            if timeout.is_none() {
                check.error(m.span(), "`netmask` needs `persistent`");
                return None;
            }
            let parsed = match m.get_ref() {
                toml::Value::String(s) => rules::parse_netmask(s, v4).map_err(|e| e.0),
                toml::Value::Integer(n) => u8::try_from(*n)
                    .map_err(|_| format!("Illegal netmask: {n}"))
                    .and_then(|n| rules::parse_netmask(&n.to_string(), v4).map_err(|e| e.0)),
                other => Err(format!(
                    "Illegal netmask: {other} (expected \"255.255.255.0\" or a prefix length)"
                )),
            };
            match parsed {
                Ok(p) => p,
                Err(msg) => {
                    check.error(m.span(), msg);
                    return None;
                }
            }
        }
    };
    Some(timeout.map(|timeout| Persistence { timeout, prefix }))
}

/// `[timeouts]` as written.
#[derive(Serialize)]
struct TimeoutsOut {
    tcp: u64,
    tcpfin: u64,
    udp: u64,
}

/// A `[[service]]` as written.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct ServiceOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    tcp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    udp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fwmark: Option<u32>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    ipv6: bool,
    #[serde(rename = "match", skip_serializing_if = "Vec::is_empty")]
    matches: Vec<String>,
    scheduler: Scheduler,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    sched_flags: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    persistent: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    netmask: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sorry_server: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    quorum: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hysteresis: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    laddrs: Vec<LaddrOut>,
    // Tables after values, as TOML needs them.
    #[serde(skip_serializing_if = "Option::is_none")]
    health_check: Option<health_check::Out>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    real: Vec<RealOut>,
}

/// One entry of `laddrs` as written: the plain address when it has nothing else.
#[derive(Serialize)]
#[serde(untagged)]
enum LaddrOut {
    Addr(String),
    Full {
        addr: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        ports: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        iface: Option<String>,
    },
}

impl From<&LocalAddr> for LaddrOut {
    fn from(l: &LocalAddr) -> LaddrOut {
        if l.ports.is_default() && l.iface.is_none() {
            return LaddrOut::Addr(l.addr.to_string());
        }
        LaddrOut::Full {
            addr: l.addr.to_string(),
            ports: (!l.ports.is_default()).then(|| l.ports.to_string()),
            iface: l.iface.clone(),
        }
    }
}

/// A `[[service.real]]` as written.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct RealOut {
    address: String,
    weight: u32,
    forward: Forward,
    #[serde(skip_serializing_if = "Option::is_none")]
    tun_type: Option<TunnelKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tun_port: Option<u16>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    tun_csum: bool,
    #[serde(skip_serializing_if = "is_zero")]
    u_threshold: u32,
    #[serde(skip_serializing_if = "is_zero")]
    l_threshold: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    health_check: Option<health_check::Out>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

#[derive(Serialize)]
struct FileOut {
    timeouts: TimeoutsOut,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    service: Vec<ServiceOut>,
}

/// Writes a desired state as a configuration file that `parse` reads back to the same state
/// (`xvsadm export`).
pub fn render(state: &DesiredState) -> String {
    let t = state.timeouts;
    let file = FileOut {
        timeouts: TimeoutsOut {
            tcp: t.tcp,
            tcpfin: t.tcpfin,
            udp: t.udp,
        },
        service: state
            .config
            .services()
            .iter()
            .map(|s| {
                let (tcp, udp, fwmark, ipv6) = match s.key {
                    ServiceKey::Addr {
                        protocol: Protocol::Tcp,
                        addr,
                    } => (Some(addr.to_string()), None, None, false),
                    ServiceKey::Addr {
                        protocol: Protocol::Udp,
                        addr,
                    } => (None, Some(addr.to_string()), None, false),
                    ServiceKey::Fwmark { fwmark, ipv6 } => (None, None, Some(fwmark), ipv6),
                };
                ServiceOut {
                    tcp,
                    udp,
                    fwmark,
                    ipv6,
                    matches: s.matches.iter().map(ToString::to_string).collect(),
                    scheduler: s.scheduler,
                    sched_flags: s.flags.names(),
                    persistent: s.persistence.map(|p| p.timeout),
                    netmask: s
                        .persistence
                        .and_then(|p| listing::netmask_text(s.key.is_ipv4(), p.prefix)),
                    sorry_server: s.sorry_server.map(|a| a.to_string()),
                    quorum: (!s.quorum.is_default()).then_some(s.quorum.quorum),
                    hysteresis: (!s.quorum.is_default()).then_some(s.quorum.hysteresis),
                    laddrs: s.laddrs.iter().map(LaddrOut::from).collect(),
                    health_check: health_check::render(&s.check),
                    real: s
                        .reals
                        .iter()
                        .map(|r| RealOut {
                            address: r.addr.to_string(),
                            weight: r.weight,
                            forward: match r.forward {
                                ForwardMethod::Dr => Forward::Dr,
                                ForwardMethod::Tunnel(_) => Forward::Tunnel,
                                ForwardMethod::Nat => Forward::Nat,
                                ForwardMethod::FullNat => Forward::Fullnat,
                            },
                            tun_type: match r.forward {
                                ForwardMethod::Tunnel(t) => Some(t.kind),
                                ForwardMethod::Dr | ForwardMethod::Nat | ForwardMethod::FullNat => {
                                    None
                                }
                            },
                            tun_port: match r.forward {
                                ForwardMethod::Tunnel(t) if t.port != 0 => Some(t.port),
                                _ => None,
                            },
                            tun_csum: matches!(r.forward, ForwardMethod::Tunnel(t) if t.csum),
                            u_threshold: r.u_threshold,
                            l_threshold: r.l_threshold,
                            health_check: health_check::render(&r.check),
                        })
                        .collect(),
                }
            })
            .collect(),
    };
    toml::to_string(&file).expect("a configuration serialises as TOML")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        check::{CheckKind, Probe, StatusCodes},
        diff, model,
    };

    const EXAMPLE: &str = include_str!("../../../examples/xvs.toml");

    fn errors(text: &str) -> Vec<FileError> {
        match parse(text) {
            Ok(s) => panic!("accepted: {s:?}\n{text}"),
            Err(e) => e,
        }
    }

    /// Asserts that exactly these (line, part of the message) errors were reported, in order.
    fn assert_errors(text: &str, want: &[(usize, &str)]) {
        let got = errors(text);
        let shown: Vec<String> = got.iter().map(ToString::to_string).collect();
        assert_eq!(got.len(), want.len(), "{shown:#?}");
        for (e, (line, needle)) in got.iter().zip(want) {
            assert_eq!(e.line, *line, "{shown:#?}");
            assert!(
                e.message.contains(needle),
                "{e} lacks {needle:?}: {shown:#?}"
            );
        }
    }

    #[test]
    fn the_example_file_parses_into_what_it_says() {
        let s = parse(EXAMPLE).unwrap_or_else(|e| panic!("{e:#?}"));
        assert_eq!(
            s.timeouts,
            Timeouts {
                tcp: 900,
                tcpfin: 120,
                udp: 60
            }
        );
        let c = &s.config;
        let web = c
            .service(&ServiceKey::new(
                Protocol::Tcp,
                "203.0.113.10:80".parse().unwrap(),
            ))
            .expect("the web service");
        assert_eq!(web.scheduler, Scheduler::Wrr);
        assert_eq!(
            web.reals
                .iter()
                .map(|r| (r.addr.to_string(), r.weight))
                .collect::<Vec<_>>(),
            [
                ("198.51.100.11:80".to_string(), 3),
                ("198.51.100.12:80".to_string(), 1),
                ("198.51.100.13:80".to_string(), 0),
            ]
        );
        assert_eq!(web.reals[1].u_threshold, 1000);
        assert_eq!(web.reals[1].l_threshold, 800);
        assert_eq!(web.sorry_server, Some("198.51.100.19:80".parse().unwrap()));
        assert_eq!(
            web.check,
            CheckSpec {
                kind: Some(CheckKind::Http),
                path: Some("/health".into()),
                status: Some(StatusCodes(vec![(200, 299), (304, 304)])),
                interval_ms: Some(2000),
                timeout_ms: Some(1000),
                retry: Some(2),
                retry_delay_ms: Some(500),
                rise: Some(2),
                inhibit: Some(false),
                ..CheckSpec::default()
            }
        );
        // What runs: the service's check, the second server's own TCP check on 8080 with the
        // service's timers, none for the third.
        let runs: Vec<_> = web
            .reals
            .iter()
            .map(|r| model::check_of(web, r).unwrap())
            .collect();
        let first = runs[0].as_ref().expect("checked");
        assert_eq!(first.target, "198.51.100.11:80".parse().unwrap());
        assert!(matches!(&first.probe, Probe::Http { path, .. } if path == "/health"));
        let second = runs[1].as_ref().expect("checked");
        assert_eq!(
            (second.kind(), second.target, second.interval, second.retry),
            (
                CheckKind::Tcp,
                "198.51.100.12:8080".parse().unwrap(),
                Duration::from_secs(2),
                2
            )
        );
        assert_eq!(runs[2], None);
        let group = c.service(&ServiceKey::fwmark(1, false)).expect("the group");
        assert_eq!(
            group.persistence,
            Some(Persistence {
                timeout: 600,
                prefix: 24
            })
        );
        assert_eq!(group.matches.len(), 2);
        let dns = c
            .service(&ServiceKey::new(
                Protocol::Udp,
                "[2001:db8::10]:53".parse().unwrap(),
            ))
            .expect("the IPv6 DNS service");
        assert_eq!(dns.scheduler, Scheduler::Mh);
        assert!(dns.flags.mh_port);
        let tun = c
            .service(&ServiceKey::new(
                Protocol::Tcp,
                "203.0.113.40:443".parse().unwrap(),
            ))
            .expect("the TUN service");
        assert_eq!(
            tun.reals.iter().map(|r| r.forward).collect::<Vec<_>>(),
            [
                ForwardMethod::Tunnel(Tunnel::IPIP),
                ForwardMethod::Tunnel(Tunnel {
                    kind: TunnelKind::Gue,
                    port: 6080,
                    csum: true
                })
            ]
        );
        let misc = model::check_of(tun, &tun.reals[0])
            .unwrap()
            .expect("checked");
        assert_eq!(
            (misc.probe, misc.timeout),
            (
                Probe::Misc {
                    argv: vec![
                        "/usr/local/bin/check-app".into(),
                        "--host".into(),
                        "192.0.2.21".into()
                    ]
                },
                Duration::from_secs(3)
            )
        );
        assert_eq!(c.services().len(), 5);
    }

    #[test]
    fn health_checks_take_keepalived_timers_and_inherit() {
        let s = parse(
            r#"[[service]]
fwmark = 3
match = ["tcp:203.0.113.50:0"]
persistent = true
  [service.health-check]
  port = 80
  interval = 1.5
  retry-delay = 2
  [[service.real]]
  address = "198.51.100.11"
  health-check = { type = "https", port = 443, digest = "9B3A0C85A887A256D6939DA88AABD8CD", inhibit = true }
  [[service.real]]
  address = "198.51.100.12"
  health-check = { type = "http", status = [200, "301-302"], body = "ok", timeout = "250ms" }
"#,
        )
        .unwrap_or_else(|e| panic!("{e:#?}"));
        let svc = &s.config.services()[0];
        assert_eq!(svc.check.interval_ms, Some(1500));
        assert_eq!(svc.check.retry_delay_ms, Some(2000));
        let a = model::check_of(svc, &svc.reals[0]).unwrap().unwrap();
        assert_eq!(
            (a.kind(), a.target, a.inhibit, a.interval),
            (
                CheckKind::Https,
                "198.51.100.11:443".parse().unwrap(),
                true,
                Duration::from_millis(1500)
            )
        );
        let b = model::check_of(svc, &svc.reals[1]).unwrap().unwrap();
        assert_eq!(
            b.target,
            "198.51.100.12:80".parse().unwrap(),
            "the service's port"
        );
        assert_eq!(b.timeout, Duration::from_millis(250));
        assert!(
            matches!(&b.probe, Probe::Http { status, .. } if status.accepts(302) && !status.accepts(204))
        );
        // And back from the file export writes.
        let text = render(&s);
        assert!(text.contains("[service.health-check]"), "{text}");
        assert_eq!(parse(&text).unwrap(), s, "{text}");
    }

    #[test]
    fn an_inherited_check_that_cannot_run_points_at_the_services_table() {
        assert_errors(
            r#"[[service]]
tcp = "203.0.113.10:80"
  [service.health-check]
  type = "misc"
  [[service.real]]
  address = "198.51.100.11"
"#,
            &[(3, "needs --check-command")],
        );
    }

    #[test]
    fn health_check_errors_point_at_the_value() {
        assert_errors(
            r#"[[service]]
tcp = "203.0.113.9:80"
  [service.health-check]
  type = "tcp"
  path = "/health"
  interval = "5 minutes"
  timeout = 0
  rise = 0
  status = "600"

[[service]]
tcp = "203.0.113.10:80"
sorry-server = "198.51.100.11"
  [service.health-check]
  type = "tcp"
  [[service.real]]
  address = "198.51.100.11"
  [[service.real]]
  address = "198.51.100.12"
  health-check = { type = "http", digest = "abc", body = "ok", command = "true" }
  [[service.real]]
  address = "198.51.100.13"
  health-check = { type = "ping" }
  [[service.real]]
  address = "198.51.100.14"
  health-check = { type = "misc" }
  [[service.real]]
  address = "198.51.100.15"
  health-check = "tcp"
  [[service.real]]
  address = "198.51.100.16"
  health-check = { type = "tcp", colour = "red" }

[[service]]
tcp = "203.0.113.11:80"
sorry-server = "sorry.example"
  [[service.real]]
  address = "198.51.100.11"
  health-check = { path = "/health" }
  [[service.real]]
  address = "198.51.100.12"
  health-check = { type = "inherit" }

[[service]]
tcp = "203.0.113.12:80"
sorry-server = "198.51.100.11"
  [[service.real]]
  address = "198.51.100.11"
"#,
            &[
                (5, "`path` does not apply to type = \"tcp\""),
                (6, "Illegal duration: 5 minutes"),
                (7, "Illegal check timeout: 0s"),
                (8, "Illegal check rise count"),
                (9, "Illegal status code list: 600"),
                (
                    13,
                    "Sorry server 198.51.100.11 is a real server of the service",
                ),
                (20, "Illegal check digest: abc"),
                (20, "`digest` and `body`: give one of them"),
                (20, "`command` does not apply to type = \"http\""),
                (23, "unknown variant `ping`"),
                (26, "type = \"misc\" needs `command`"),
                (29, "`health-check` is a table"),
                (32, "unknown field `colour`"),
                (36, "Illegal address: sorry.example"),
                (39, "needs `type`"),
                (42, "unknown variant `inherit`"),
                (
                    46,
                    "Sorry server 198.51.100.11 is a real server of the service",
                ),
            ],
        );
    }

    #[test]
    fn quorum_and_hysteresis_are_read_and_checked() {
        let s = parse(
            "[[service]]\ntcp = \"203.0.113.10:80\"\nquorum = 3\nhysteresis = 1\n\
             [[service]]\ntcp = \"203.0.113.11:80\"\nhysteresis = 0\n",
        )
        .unwrap();
        let q = |i: usize| s.config.services()[i].quorum;
        assert_eq!((q(0).quorum, q(0).hysteresis), (3, 1));
        assert!(q(1).is_default());
        assert_errors(
            "[[service]]\ntcp = \"203.0.113.10:80\"\nquorum = 2\nhysteresis = 2\n",
            &[(4, "Hysteresis 2 must be below the quorum 2")],
        );
    }

    #[test]
    fn config_to_file_to_config_is_the_same() {
        let s = parse(EXAMPLE).unwrap();
        let text = render(&s);
        let back = parse(&text).unwrap_or_else(|e| panic!("{e:#?}\n{text}"));
        assert_eq!(back, s, "{text}");
        // And an empty configuration.
        let empty = DesiredState::default();
        assert_eq!(parse(&render(&empty)).unwrap(), empty);
        assert_eq!(parse("").unwrap(), empty, "an empty file is no services");
    }

    #[test]
    fn defaults_are_ipvsadms() {
        let s = parse("[[service]]\ntcp = \"203.0.113.10:80\"\n[[service.real]]\naddress = \"198.51.100.11\"\n")
            .unwrap();
        let svc = &s.config.services()[0];
        assert_eq!(svc.scheduler, Scheduler::Wlc);
        assert_eq!(svc.persistence, None);
        assert_eq!(
            svc.reals,
            [RealServer::dr("198.51.100.11:80".parse().unwrap(), 1)]
        );
        assert_eq!(s.timeouts, DEFAULT_TIMEOUTS);
        let p = parse("[[service]]\ntcp = \"203.0.113.10:0\"\npersistent = true\n").unwrap();
        assert_eq!(
            p.config.services()[0].persistence,
            Some(Persistence {
                timeout: 300,
                prefix: 32
            })
        );
    }

    #[test]
    fn syntax_errors_have_their_line() {
        assert_errors(
            "[[service]]\ntcp = \"203.0.113.10:80\"\nscheduler = rr\n",
            &[(3, "")],
        );
        let e = errors("[timeouts]\ntcp = 900\ntcp = 100\n");
        assert_eq!(e[0].line, 3, "{e:?}");
        assert!(e[0].message.contains("duplicate"), "{e:?}");
    }

    #[test]
    fn every_error_is_reported_with_its_line() {
        let text = r#"# errors on purpose, one per service
colour = "blue"

[timeouts]
tcp = 0

[[service]]
udp = "203.0.113.10:53"

[[service]]
tcp = "203.0.113.10:80"
scheduler = "wrrr"

[[service]]
tcp = "203.0.113.11:80"
weight = 3

[[service]]
tcp = "203.0.113.12"

[[service]]
tcp = "203.0.113.13:80"
udp = "203.0.113.13:53"

[[service]]
tcp = "203.0.113.14:80"
netmask = "255.255.255.0"

[[service]]
tcp = "203.0.113.15:0"
  [[service.real]]
  address = "198.51.100.11"
  weight = -1

[[service]]
tcp = "203.0.113.16:80"
match = ["tcp:203.0.113.16:443"]

[[service]]
fwmark = 1
match = ["tcp:203.0.113.20:80", "udp:203.0.113.10:53", "tcp:bogus"]

[[service]]
tcp = "203.0.113.17:80"
persistent = 60
netmask = "255.0.255.0"
sched-flags = ["sh-port", "sh-everything"]

[[service]]
tcp = "203.0.113.18:80"
  [[service.real]]
  address = "198.51.100.11"
  [[service.real]]
  address = "198.51.100.11:80"
  [[service.real]]
  address = "2001:db8::11"
  [[service.real]]
  address = "198.51.100.12"
  weight = 70000
  [[service.real]]
  address = "198.51.100.13"
  u-threshold = 10
  l-threshold = 20
  [[service.real]]
  address = "real-server-4.example"
  [[service.real]]
  address = "198.51.100.15"
  forward = "masquerading"
  [[service.real]]
  weight = 1
  [[service.real]]
  address = "198.51.100.16"
  colour = "red"
  [service.real.health-check]
  kind = "tcp"

[[service]]
tcp = "203.0.113.18:80"
"#;
        assert_errors(
            text,
            &[
                (2, "unknown key `colour`"),
                (5, "Illegal timeout: 0"),
                (12, "unknown variant `wrrr`"),
                (16, "unknown field `weight`"),
                (19, "Illegal address: 203.0.113.12"),
                (23, "not several"),
                (27, "`netmask` needs `persistent`"),
                (30, "Zero port"),
                (33, "Illegal weight specified: -1"),
                (37, "`match` applies to service groups"),
                (41, "already taken by UDP 203.0.113.10:53"),
                (41, "Illegal match: tcp:bogus"),
                (46, "Illegal netmask: 255.0.255.0"),
                (47, "Invalid scheduler flag: sh-everything"),
                (54, "Destination already exists: 198.51.100.11:80"),
                (56, "same address family"),
                (59, "Illegal weight specified: 70000"),
                (63, "lower threshold 20 exceeds the upper threshold 10"),
                (65, "Illegal address: real-server-4.example"),
                (
                    68,
                    "unknown variant `masquerading`, expected one of `dr`, `tunnel`, `masq`, `masquerade`, `nat`",
                ),
                (69, "missing field `address`"),
                (73, "unknown field `colour`"),
                (75, "unknown field `kind`"),
                (78, "Service already exists: TCP 203.0.113.18:80"),
            ],
        );
    }

    #[test]
    fn tunnel_options_belong_to_tunnels() {
        assert_errors(
            r#"[[service]]
tcp = "203.0.113.10:80"
  [[service.real]]
  address = "192.0.2.21"
  tun-port = 6080
  [[service.real]]
  address = "192.0.2.22"
  forward = "tunnel"
  tun-type = "gue"
  [[service.real]]
  address = "192.0.2.23"
  forward = "tunnel"
  tun-port = 6080
  [[service.real]]
  address = "192.0.2.24"
  forward = "tunnel"
  tun-type = "gre"
"#,
            &[
                (5, "need `forward = \"tunnel\"`"),
                (9, "GUE tunnel needs a port"),
                (13, "apply to --tun-type gue only"),
                (17, "unknown variant `gre`"),
            ],
        );
        // A tunnel may cross families, unlike DR.
        let s = parse("[[service]]\ntcp = \"[2001:db8::10]:80\"\n[[service.real]]\naddress = \"192.0.2.21\"\nforward = \"tunnel\"\n").unwrap();
        assert_eq!(
            s.config.services()[0].reals[0].addr,
            "192.0.2.21:80".parse().unwrap()
        );
    }

    /// `forward = "nat"` (ipvsadm's -m; also read as `masq` and `masquerade`): the server keeps
    /// its port, the file is written back with "nat", and the model's refusals point at the
    /// address.
    #[test]
    fn nat_real_servers() {
        let text = r#"[[service]]
tcp = "203.0.113.10:80"
  [[service.real]]
  address = "198.51.100.11:8080"
  forward = "nat"
  [[service.real]]
  address = "198.51.100.12"
  forward = "masq"
  [[service.real]]
  address = "198.51.100.13:8080"
  forward = "masquerade"
  weight = 2
  [[service.real]]
  address = "198.51.100.14:8080"
  forward = "dr"
"#;
        let s = parse(text).unwrap();
        let reals = &s.config.services()[0].reals;
        assert_eq!(
            reals
                .iter()
                .map(|r| (r.addr.to_string(), r.forward))
                .collect::<Vec<_>>(),
            [
                ("198.51.100.11:8080".to_string(), ForwardMethod::Nat),
                ("198.51.100.12:80".to_string(), ForwardMethod::Nat),
                ("198.51.100.13:8080".to_string(), ForwardMethod::Nat),
                ("198.51.100.14:80".to_string(), ForwardMethod::Dr),
            ]
        );
        let out = render(&s);
        assert!(
            out.contains("address = \"198.51.100.13:8080\"\nweight = 2\nforward = \"nat\"\n"),
            "{out}"
        );
        assert!(!out.contains("masq"), "{out}");
        assert_eq!(parse(&out).unwrap(), s, "{out}");
        assert_errors(
            r#"[[service]]
tcp = "203.0.113.20:0"
persistent = 300
  [[service.real]]
  address = "198.51.100.11:0"
  forward = "nat"
  [[service.real]]
  address = "198.51.100.12:8080"
  forward = "nat"
  [[service.real]]
  address = "2001:db8::13"
  forward = "nat"
  [[service.real]]
  address = "198.51.100.14"
  forward = "nat"
  tun-type = "ipip"
"#,
            &[
                (
                    8,
                    "Illegal port for masquerading real server 198.51.100.12:8080 of TCP 203.0.113.20:0",
                ),
                (
                    11,
                    "Masquerading (NAT) needs the real server 2001:db8::13 in the same address family",
                ),
                (16, "need `forward = \"tunnel\"`"),
            ],
        );
    }

    #[test]
    fn errors_carry_columns_and_the_file_name() {
        let e = errors("[[service]]\ntcp = \"203.0.113.10:80\"\n  [[service.real]]\n  address = \"2001:db8::1\"\n");
        assert_eq!((e[0].line, e[0].column), (4, 13), "{e:?}");
        let text = LoadError::Invalid {
            path: "/etc/xvs.toml".into(),
            errors: e,
        }
        .to_string();
        assert!(
            text.starts_with("/etc/xvs.toml: 1 error, nothing changed\n/etc/xvs.toml:4:13: "),
            "{text}"
        );
    }

    #[test]
    fn a_parsed_file_is_already_normalised() {
        // What the daemon re-checks (diff::normalise) changes nothing in a parsed file.
        let s = parse(EXAMPLE).unwrap();
        assert_eq!(diff::normalise(&s.config).unwrap(), s.config);
    }

    const FULLNAT: &str = r#"
[[service]]
tcp = "203.0.113.10:80"
scheduler = "rr"
laddrs = ["10.0.0.9", { addr = "10.0.0.10", ports = "40000-40999", iface = "eth1" }, "2001:db8::9"]
  [[service.real]]
  address = "198.51.100.11:8080"
  forward = "fullnat"
  [[service.real]]
  address = "198.51.100.12"
  forward = "nat"
"#;

    /// `laddrs`: plain addresses and tables; `forward = "fullnat"`; and back from render.
    #[test]
    fn fullnat_services_read_and_write() {
        let s = parse(FULLNAT).unwrap_or_else(|e| panic!("{e:#?}"));
        let svc = &s.config.services()[0];
        assert_eq!(
            svc.laddrs,
            [
                LocalAddr::new("10.0.0.9".parse().unwrap()),
                LocalAddr {
                    addr: "10.0.0.10".parse().unwrap(),
                    ports: PortRange {
                        lo: 40000,
                        hi: 40999
                    },
                    iface: Some("eth1".into()),
                },
                LocalAddr::new("2001:db8::9".parse().unwrap()),
            ]
        );
        assert_eq!(svc.reals[0].forward, ForwardMethod::FullNat);
        assert_eq!(svc.reals[1].forward, ForwardMethod::Nat);
        let text = render(&s);
        assert!(
            text.contains(r#"laddrs = ["10.0.0.9", { addr = "10.0.0.10", ports = "40000-40999", iface = "eth1" }, "2001:db8::9"]"#),
            "{text}"
        );
        assert!(text.contains(r#"forward = "fullnat""#), "{text}");
        assert_eq!(parse(&text).unwrap(), s, "{text}");
        // Only tables: still read back.
        let tables = DesiredState {
            config: s.config.clone().map_services(|v| {
                v[0].laddrs.remove(0);
            }),
            ..s.clone()
        };
        let text = render(&tables);
        assert_eq!(parse(&text).unwrap(), tables, "{text}");
        assert_eq!(diff::normalise(&s.config).unwrap(), s.config);
    }

    /// The example file's commented FULLNAT service is valid once uncommented.
    #[test]
    fn the_examples_fullnat_service_parses() {
        let at = EXAMPLE.rfind("# [[service]]").expect("the FULLNAT example");
        let text: String = EXAMPLE[at..]
            .lines()
            .map(|l| l.strip_prefix("# ").or(l.strip_prefix('#')).unwrap_or(l))
            .map(|l| format!("{l}\n"))
            .collect();
        let s = parse(&text).unwrap_or_else(|e| panic!("{e:#?}\n{text}"));
        let svc = &s.config.services()[0];
        assert_eq!(svc.laddrs.len(), 2);
        assert_eq!(svc.reals[0].forward, ForwardMethod::FullNat);
    }

    #[test]
    fn fullnat_errors_point_at_their_values() {
        assert_errors(
            r#"[[service]]
tcp = "203.0.113.10:80"
laddrs = [
  "10.0.0.9:80",
  { addr = "10.0.0.10", ports = "0-10" },
  { addr = "10.0.0.11", port = "1-2" },
  "10.0.0.12",
  "10.0.0.12",
  7,
]
  [[service.real]]
  address = "198.51.100.11"
  forward = "fullnat"
  [[service.real]]
  address = "2001:db8::11"
  forward = "fullnat"

[[service]]
tcp = "203.0.113.20:80"
  [[service.real]]
  address = "198.51.100.11"
  forward = "fullnat"
"#,
            &[
                (4, "Illegal local address: 10.0.0.9:80"),
                (5, "Illegal local port range: 0-10"),
                (6, "unknown field `port`"),
                (8, "Local address already exists: 10.0.0.12"),
                (9, "Illegal local address: 7"),
                (15, "(NAT64), not the reverse"),
                (21, "add one with --add-laddr first"),
            ],
        );
    }
}
