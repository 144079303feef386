//! keepalived's blocks as an xvs configuration file: `virtual_server` (IP PORT, `fwmark N`,
//! `group NAME`) with its settings, real servers and checkers; everything xvs cannot express is
//! a `#` comment saying why, at the place it would have gone.

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
};

use super::{tree::Node, At, ImportError};
use crate::{config_file, model::Scheduler};

/// The most services one `virtual_server_group` range may expand to.
const MAX_RANGE: u32 = 1024;

/// The converted file: its lines, each with the keepalived statement it came from, so an
/// error of xvs's parser points back at keepalived's line.
struct Out {
    lines: Vec<(String, Option<At>)>,
    /// `FILE:` of the file given: its places are written `line N` (an included file's stay
    /// `FILE:N`).
    main: String,
}

impl Out {
    fn line(&mut self, text: impl Into<String>, from: Option<&At>) {
        self.lines.push((text.into(), from.cloned()));
    }

    /// A comment, wrapped, at an indentation.
    fn comment_at(&mut self, indent: &str, text: &str) {
        for l in wrap(&self.shorten(text), 96 - indent.len()) {
            self.line(format!("{indent}# {l}"), None);
        }
    }

    fn comment(&mut self, text: &str) {
        self.comment_at("", text);
    }

    /// `FILE:N` as `line N` for the file given.
    fn shorten(&self, text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(i) = rest.find(&self.main) {
            out.push_str(&rest[..i]);
            let after = &rest[i + self.main.len()..];
            if after.starts_with(|c: char| c.is_ascii_digit()) {
                out.push_str("line ");
            } else {
                out.push_str(&self.main);
            }
            rest = after;
        }
        out.push_str(rest);
        out
    }

    fn text(&self) -> String {
        let mut s = String::new();
        for (l, _) in &self.lines {
            s.push_str(l);
            s.push('\n');
        }
        s
    }

    /// Where line `n` (from 1) of the text came from: its own statement, or the nearest one
    /// above it.
    fn origin(&self, n: usize) -> Option<&At> {
        self.lines[..n.min(self.lines.len())]
            .iter()
            .rev()
            .find_map(|(_, at)| at.as_ref())
    }
}

/// Words wrapped into lines of at most `width` characters (a longer word stands alone).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut line = String::new();
    for word in text.split(' ') {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            out.push(std::mem::take(&mut line));
            line.push_str("  ");
        }
        if !line.is_empty() && !line.ends_with("  ") {
            line.push(' ');
        }
        line.push_str(word);
    }
    out.push(line);
    out
}

/// A TOML string.
fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A note on a statement not carried over: `FILE:LINE: `statement`: why`.
fn note(node: &Node, why: &str) -> String {
    format!("{}: `{}`: {why}", node.at, node.text())
}

/// The statement's one argument.
fn one_arg(node: &Node) -> Result<&str, ImportError> {
    match node.args.as_slice() {
        [a] => Ok(a),
        [] => Err(node.at.error(format!("`{}` needs a value", node.keyword))),
        _ => Err(node.at.error(format!(
            "`{}` takes one value, not {}",
            node.keyword,
            node.args.len()
        ))),
    }
}

fn number<T: std::str::FromStr>(node: &Node, s: &str) -> Result<T, ImportError> {
    s.parse().map_err(|_| {
        node.at.error(format!(
            "`{}`: `{s}` is not a valid number here",
            node.keyword
        ))
    })
}

/// keepalived's seconds (`3`, `1.5`) as an xvs duration (`"3s"`).
fn seconds(node: &Node) -> Result<String, ImportError> {
    let s = one_arg(node)?;
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 && !s.starts_with('+') => Ok(q(&format!("{s}s"))),
        _ => Err(node
            .at
            .error(format!("`{}` needs seconds, not `{s}`", node.keyword))),
    }
}

fn ip(node: &Node, s: &str) -> Result<IpAddr, ImportError> {
    s.parse().map_err(|_| {
        node.at.error(format!(
            "`{}`: `{s}` is not an IP address (names are not resolved)",
            node.keyword
        ))
    })
}

/// `IP [PORT]` as xvs writes it: `"IP:PORT"`, `"[IPv6]:PORT"`, or the bare address.
fn address(node: &Node, args: &[String]) -> Result<(IpAddr, String), ImportError> {
    match args {
        [a] => {
            let ip = ip(node, a)?;
            Ok((ip, ip.to_string()))
        }
        [a, p] => {
            let ip = ip(node, a)?;
            let port: u16 = number(node, p)?;
            Ok((ip, SocketAddr::new(ip, port).to_string()))
        }
        _ => Err(node
            .at
            .error(format!("`{}` takes an address and a port", node.keyword))),
    }
}

/// What xvs's service is keyed by.
#[derive(Clone, Debug)]
enum Key {
    Addr(SocketAddr),
    Fwmark(u32),
}

/// How real servers are reached (`lb_kind` and the tunnel's settings).
#[derive(Clone, Debug, Default)]
struct Forward {
    /// "dr", "nat" or "tunnel".
    kind: Option<&'static str>,
    tun_type: Option<String>,
    tun_port: Option<u16>,
    csum: bool,
    /// Why it cannot be carried (GRE).
    refused: Option<String>,
    notes: Vec<String>,
}

impl Forward {
    /// `lb_kind NAT|DR|TUN [type T] [port N] [csum|nocsum|remcsum]`.
    fn kind(&mut self, node: &Node) -> Result<(), ImportError> {
        let Some(kind) = node.args.first() else {
            return Err(node
                .at
                .error(format!("`{}` needs NAT, DR or TUN", node.keyword)));
        };
        self.kind = Some(match kind.to_ascii_uppercase().as_str() {
            "NAT" => "nat",
            "DR" => "dr",
            "TUN" => "tunnel",
            _ => {
                return Err(node.at.error(format!(
                    "`{} {kind}`: expected NAT, DR or TUN",
                    node.keyword
                )))
            }
        });
        let mut rest = node.args[1..].iter();
        while let Some(word) = rest.next() {
            match word.as_str() {
                "type" => self.tun_type(node, rest.next().map(String::as_str))?,
                "port" => {
                    let p = rest.next().map(String::as_str).unwrap_or("");
                    self.tun_port = Some(number(node, p)?);
                }
                flag => self.tun_flag(node, flag)?,
            }
        }
        Ok(())
    }

    fn tun_type(&mut self, node: &Node, t: Option<&str>) -> Result<(), ImportError> {
        match t {
            Some("ipip") => self.tun_type = None,
            Some("gue") => self.tun_type = Some("gue".into()),
            Some("gre") => {
                self.refused = Some(format!(
                    "{}: tunnel type gre: xvs tunnels are IPIP and GUE (the real servers would \
                     need to decapsulate another type)",
                    node.at
                ));
            }
            other => {
                return Err(node.at.error(format!(
                    "tunnel type `{}`: expected ipip, gue or gre",
                    other.unwrap_or("")
                )))
            }
        }
        Ok(())
    }

    fn tun_flag(&mut self, node: &Node, flag: &str) -> Result<(), ImportError> {
        match flag {
            "csum" => self.csum = true,
            "nocsum" => self.csum = false,
            "remcsum" => self.notes.push(note(
                node,
                "remote checksum offload: xvs's GUE has no remcsum (sent without it)",
            )),
            other => {
                return Err(node.at.error(format!(
                    "`{}`: unknown tunnel flag `{other}` (csum, nocsum, remcsum)",
                    node.keyword
                )))
            }
        }
        Ok(())
    }

    /// The tunnel keywords (`tun_type`, `tun_port`, `tun_flags`); false for another keyword.
    fn keyword(&mut self, node: &Node) -> Result<bool, ImportError> {
        match node.keyword.as_str() {
            "lb_kind" | "lvs_method" => self.kind(node)?,
            "tun_type" => self.tun_type(node, Some(one_arg(node)?))?,
            "tun_port" => self.tun_port = Some(number(node, one_arg(node)?)?),
            "tun_flags" => self.tun_flag(node, one_arg(node)?)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// Checker settings a virtual_server or real_server gives its checkers.
#[derive(Clone, Debug, Default)]
struct CheckDefaults {
    interval: Option<String>,
    timeout: Option<String>,
    retry: Option<u32>,
    retry_delay: Option<String>,
    inhibit: bool,
}

impl CheckDefaults {
    /// The keywords they are given by; false for another keyword.
    fn keyword(&mut self, node: &Node) -> Result<bool, ImportError> {
        match node.keyword.as_str() {
            "delay_loop" => self.interval = Some(seconds(node)?),
            "connect_timeout" => self.timeout = Some(seconds(node)?),
            "retry" | "nb_get_retry" => self.retry = Some(number(node, one_arg(node)?)?),
            "delay_before_retry" => self.retry_delay = Some(seconds(node)?),
            "inhibit_on_failure" => self.inhibit = node.args.first().is_none_or(|a| a != "false"),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// One `health-check` table.
#[derive(Default)]
struct Check {
    kind: &'static str,
    port: Option<u16>,
    path: Option<String>,
    status: Option<String>,
    digest: Option<String>,
    body: Option<String>,
    command: Option<String>,
    timeout: Option<String>,
    /// The statement each value came from.
    from: HashMap<&'static str, At>,
}

/// One real server.
struct Real {
    at: At,
    address: String,
    ip: IpAddr,
    weight: u32,
    forward: Forward,
    u_threshold: Option<u32>,
    l_threshold: Option<u32>,
    check: Option<(Check, CheckDefaults)>,
    notes: Vec<String>,
}

/// One `virtual_server` (a group makes several xvs services of it).
struct Service {
    at: At,
    title: String,
    keys: Vec<Key>,
    scheduler: Option<(Scheduler, At)>,
    flags: Vec<(&'static str, At)>,
    persistent: Option<(u32, At)>,
    netmask: Option<(String, At)>,
    sorry: Option<(String, At)>,
    quorum: Option<(u32, At)>,
    hysteresis: Option<(u32, At)>,
    ipv6: bool,
    udp: bool,
    notes: Vec<String>,
    reals: Vec<Real>,
}

/// The converted file's text.
pub(super) fn convert(name: &str, nodes: &[Node], notes: &[String]) -> Result<String, ImportError> {
    let mut skipped = Vec::new();
    let mut header = notes.to_vec();
    let mut groups: HashMap<&str, &Node> = HashMap::new();
    let mut servers = Vec::new();
    let mut timeouts: Vec<(&'static str, u32, At)> = Vec::new();
    for n in nodes {
        match n.keyword.as_str() {
            "virtual_server_group" => {
                let g = one_arg(n)?;
                if n.block.is_none() {
                    return Err(n.at.error("`virtual_server_group` needs a { ... } block"));
                }
                groups.insert(g, n);
            }
            "virtual_server" => servers.push(n),
            _ => {
                skipped.push(format!("{} ({})", n.text(), n.at));
                sync_and_timeouts(n, &mut header, &mut timeouts)?;
            }
        }
    }
    let mut out = Out {
        lines: Vec::new(),
        main: format!("{name}:"),
    };
    let mut used = BTreeSet::new();
    let mut services = Vec::new();
    for vs in &servers {
        match service(vs, &groups, &mut used)? {
            Ok(s) => services.push(Ok(s)),
            Err(why) => services.push(Err(why)),
        }
    }
    for (g, n) in &groups {
        if !used.contains(*g) {
            header.push(format!(
                "virtual_server_group {g} ({}) is used by no virtual_server: nothing to carry over.",
                n.at
            ));
        }
    }
    header.sort_by_key(|n| n.starts_with("virtual_server_group"));
    out.line(
        format!("# xvs configuration converted from {name} by `xvsadm import keepalived`."),
        None,
    );
    out.line(
        "# Read it, then: xvsadm apply -f FILE --dry-run (examples/xvs.toml explains every key).",
        None,
    );
    out.comment(&if skipped.is_empty() {
        "Nothing was left to keepalived (no VRRP): xvs has no VRRP of its own, keepalived (or \
         BGP announcements) moves the VIPs."
            .to_string()
    } else {
        format!(
            "Left to keepalived, which keeps running VRRP and moving the VIPs to the director \
             that holds them (see examples/keepalived/ in xvs): {}.",
            skipped.join(", ")
        )
    });
    out.comment(
        "Health checks keep keepalived's meaning: `rise = 1` (keepalived brings a server back at \
         its first good check) and `interval = \"60s\"` where delay_loop is not given \
         (keepalived's default; xvs's is 6s). What could not be carried over is a comment at its \
         place, with the reason.",
    );
    for n in &header {
        out.comment(n);
    }
    if !timeouts.is_empty() {
        out.line("", None);
        out.line("[timeouts]", None);
        for (k, v, at) in &timeouts {
            out.line(format!("{k} = {v}"), Some(at));
        }
    }
    for s in services {
        out.line("", None);
        match s {
            Ok(s) => emit(&mut out, &s),
            Err(why) => out.comment(&why),
        }
    }
    let text = out.text();
    // What xvs refuses is an error at the keepalived line it came from.
    if let Err(errors) = config_file::parse(&text) {
        let e = &errors[0];
        let message = format!(
            "xvs cannot take this: {} (line {} of the converted file)",
            e.message, e.line
        );
        return Err(match out.origin(e.line) {
            Some(at) => at.error(message),
            None => ImportError::At {
                file: name.to_string(),
                line: 1,
                reason: message,
            },
        });
    }
    Ok(text)
}

/// keepalived's IPVS settings outside virtual servers: `lvs_timeouts` (carried over) and its
/// sync daemon (xvs runs its own).
fn sync_and_timeouts(
    n: &Node,
    header: &mut Vec<String>,
    timeouts: &mut Vec<(&'static str, u32, At)>,
) -> Result<(), ImportError> {
    for c in n.children() {
        match c.keyword.as_str() {
            "lvs_timeouts" => {
                let mut words = c.args.iter();
                while let Some(w) = words.next() {
                    let key = match w.as_str() {
                        "tcp" => "tcp",
                        "tcpfin" => "tcpfin",
                        "udp" => "udp",
                        other => {
                            return Err(c.at.error(format!(
                                "`lvs_timeouts`: unknown timeout `{other}` (tcp, tcpfin, udp)"
                            )))
                        }
                    };
                    let v = words.next().map(String::as_str).unwrap_or("");
                    timeouts.push((key, number(c, v)?, c.at.clone()));
                }
            }
            "lvs_sync_daemon" | "lvs_sync_daemon_interface" => header.push(note(
                c,
                "xvs runs IPVS's sync daemons itself: `xvsadm --start-daemon master|backup \
                 --mcast-interface IFACE --syncid N` (examples/keepalived/README.md)",
            )),
            _ => {}
        }
    }
    Ok(())
}

/// The keys of `virtual_server IP PORT | fwmark N | group NAME`.
fn keys(
    vs: &Node,
    groups: &HashMap<&str, &Node>,
    used: &mut BTreeSet<String>,
) -> Result<Vec<Key>, ImportError> {
    match vs.args.as_slice() {
        [f, mark] if f == "fwmark" => Ok(vec![Key::Fwmark(number(vs, mark)?)]),
        [g, name] if g == "group" => {
            let Some(group) = groups.get(name.as_str()) else {
                return Err(vs
                    .at
                    .error(format!("no virtual_server_group `{name}` is defined")));
            };
            used.insert(name.clone());
            let mut keys = Vec::new();
            for entry in group.children() {
                if entry.keyword == "fwmark" {
                    keys.push(Key::Fwmark(number(entry, one_arg(entry)?)?));
                    continue;
                }
                let [port] = entry.args.as_slice() else {
                    return Err(entry.at.error(
                        "a virtual_server_group entry is `IP PORT`, `IP-LAST PORT` or `fwmark N`",
                    ));
                };
                let port: u16 = number(entry, port)?;
                for ip in range(entry)? {
                    keys.push(Key::Addr(SocketAddr::new(ip, port)));
                }
            }
            if keys.is_empty() {
                return Err(group
                    .at
                    .error(format!("virtual_server_group `{name}` is empty")));
            }
            Ok(keys)
        }
        [a, port] => Ok(vec![Key::Addr(SocketAddr::new(
            ip(vs, a)?,
            number(vs, port)?,
        ))]),
        _ => Err(vs
            .at
            .error("`virtual_server` takes `IP PORT`, `fwmark N` or `group NAME`")),
    }
}

/// The addresses of `IP` or `IP-LAST` (keepalived's range: the last byte of an IPv4 address,
/// the last group of an IPv6 one, in hex, up to LAST).
fn range(entry: &Node) -> Result<Vec<IpAddr>, ImportError> {
    let Some((first, last)) = entry.keyword.split_once('-') else {
        return Ok(vec![ip(entry, &entry.keyword)?]);
    };
    let bad = |why: &str| entry.at.error(format!("range `{}`: {why}", entry.keyword));
    let start = ip(entry, first)?;
    let (from, to) = match start {
        IpAddr::V4(a) => (
            u32::from(a.octets()[3]),
            last.parse::<u8>()
                .map(u32::from)
                .map_err(|_| bad("the last byte must be 0-255"))?,
        ),
        IpAddr::V6(a) => (
            u32::from(a.segments()[7]),
            u16::from_str_radix(last, 16)
                .map(u32::from)
                .map_err(|_| bad("the last group must be hexadecimal, 0-ffff"))?,
        ),
    };
    if to < from {
        return Err(bad("it ends before it starts"));
    }
    if to - from >= MAX_RANGE {
        return Err(bad(&format!("more than {MAX_RANGE} addresses")));
    }
    Ok((from..=to)
        .map(|v| match start {
            IpAddr::V4(a) => {
                let mut o = a.octets();
                o[3] = v as u8;
                IpAddr::from(o)
            }
            IpAddr::V6(a) => {
                let mut s = a.segments();
                s[7] = v as u16;
                IpAddr::from(s)
            }
        })
        .collect())
}

/// One `virtual_server`, or why it is left out (a comment).
fn service(
    vs: &Node,
    groups: &HashMap<&str, &Node>,
    used: &mut BTreeSet<String>,
) -> Result<Result<Service, String>, ImportError> {
    if vs.block.is_none() {
        return Err(vs.at.error("`virtual_server` needs a { ... } block"));
    }
    let keys = keys(vs, groups, used)?;
    let mut svc = Service {
        at: vs.at.clone(),
        title: vs.text(),
        keys,
        scheduler: None,
        flags: Vec::new(),
        persistent: None,
        netmask: None,
        sorry: None,
        quorum: None,
        hysteresis: None,
        ipv6: false,
        udp: false,
        notes: Vec::new(),
        reals: Vec::new(),
    };
    let mut udp = false;
    let mut defaults = CheckDefaults::default();
    let mut forward = Forward::default();
    let mut raw_flags: Vec<&Node> = Vec::new();
    let mut sorry_method: Option<(String, &Node)> = None;
    let mut real_nodes = Vec::new();
    for n in vs.children() {
        if defaults.keyword(n)? || forward.keyword(n)? {
            continue;
        }
        let skip = |why: &str| note(n, why);
        match n.keyword.as_str() {
            "real_server" => real_nodes.push(n),
            "lb_algo" | "lvs_sched" => {
                let name = one_arg(n)?;
                let s = name.parse::<Scheduler>().map_err(|_| {
                    n.at.error(format!(
                        "unknown scheduler `{name}`: xvs has {}",
                        crate::model::IPVS_SCHEDULERS.join(" ")
                    ))
                })?;
                svc.scheduler = Some((s, n.at.clone()));
            }
            "protocol" => match one_arg(n)?.to_ascii_uppercase().as_str() {
                "TCP" => udp = false,
                "UDP" => udp = true,
                "SCTP" => {
                    return Ok(Err(format!(
                        "{}: `{}` is not carried over: protocol SCTP: xvs balances TCP and UDP \
                         only.",
                        vs.at,
                        vs.text()
                    )))
                }
                other => {
                    return Err(n
                        .at
                        .error(format!("unknown protocol `{other}`: TCP, UDP or SCTP")))
                }
            },
            "persistence_timeout" => {
                svc.persistent = Some((number(n, one_arg(n)?)?, n.at.clone()));
            }
            "persistence_granularity" => {
                svc.netmask = Some((one_arg(n)?.to_string(), n.at.clone()));
            }
            "quorum" => svc.quorum = Some((number(n, one_arg(n)?)?, n.at.clone())),
            "hysteresis" => svc.hysteresis = Some((number(n, one_arg(n)?)?, n.at.clone())),
            "sorry_server" => {
                svc.sorry = Some((address(n, &n.args)?.1, n.at.clone()));
            }
            "sh-port" | "sh-fallback" | "mh-port" | "mh-fallback" | "flag-1" | "flag-2"
            | "flag-3" => raw_flags.push(n),
            "ip_family" => {
                svc.ipv6 = one_arg(n)? == "inet6";
            }
            "sorry_server_inhibit" => svc.notes.push(skip(
                "xvs adds the sorry server to the tables while the service is below its quorum \
                 and removes it after: there is no inhibited sorry server",
            )),
            "sorry_server_lvs_method" | "sorry_server_lb_kind" => {
                sorry_method = Some((one_arg(n)?.to_ascii_uppercase(), n));
            }
            "ops" => svc.notes.push(skip(
                "one-packet scheduling: xvs schedules UDP by flow, as IPVS without ops",
            )),
            "persistence_engine" => {
                svc.notes
                    .push(skip("xvs has no persistence engines (SIP Call-ID)"));
            }
            "quorum_up" | "quorum_down" => svc.notes.push(skip(
                "xvs runs no script when the quorum changes: with xvsd --announce-table it \
                 withdraws the VIP from the routers below the quorum",
            )),
            "alpha" => svc.notes.push(skip(
                "xvs starts a real server up until a check fails (keepalived without alpha)",
            )),
            "omega" => svc
                .notes
                .push(skip("xvs runs no quorum_down script at shutdown")),
            "warmup" => svc.notes.push(skip(
                "xvs spreads each check's first attempt over its first interval by itself",
            )),
            "virtualhost" => svc.notes.push(skip(
                "xvs's http checks send the real server's address as Host, not a virtual host",
            )),
            "ha_suspend" => svc.notes.push(skip(
                "xvs checks whether or not this director holds the VIP",
            )),
            "smtp_alert" => svc.notes.push(skip(
                "xvs sends no mail: it logs every change and exports metrics",
            )),
            _ => svc
                .notes
                .push(skip("not known to this import: not carried over")),
        }
    }
    // Scheduler flags: keepalived's flag-1 and flag-2 are sh's and mh's fallback and port.
    let sched = svc.scheduler.as_ref().map(|(s, _)| *s);
    for n in raw_flags {
        let flag = match (n.keyword.as_str(), sched) {
            ("flag-1", Some(Scheduler::Sh)) => Some("sh-fallback"),
            ("flag-2", Some(Scheduler::Sh)) => Some("sh-port"),
            ("flag-1", Some(Scheduler::Mh)) => Some("mh-fallback"),
            ("flag-2", Some(Scheduler::Mh)) => Some("mh-port"),
            ("sh-port", _) => Some("sh-port"),
            ("sh-fallback", _) => Some("sh-fallback"),
            ("mh-port", _) => Some("mh-port"),
            ("mh-fallback", _) => Some("mh-fallback"),
            _ => None,
        };
        match flag {
            Some(f) => svc.flags.push((f, n.at.clone())),
            None => svc.notes.push(note(
                n,
                "xvs's scheduler flags are sh's and mh's fallback and port only",
            )),
        }
    }
    svc.notes.append(&mut forward.notes);
    // keepalived reaches the sorry server as the real servers (or as it is told); xvs by DR.
    if let Some((_, at)) = &svc.sorry {
        match &sorry_method {
            Some((m, n)) if m != "DR" => svc
                .notes
                .push(note(n, "xvs's sorry server is reached by direct routing")),
            None if forward.kind.is_some_and(|k| k != "dr") => svc.notes.push(format!(
                "{at}: sorry_server: keepalived reaches it as the real servers ({}); xvs's \
                 sorry server is reached by direct routing",
                forward.kind.unwrap_or("dr")
            )),
            _ => {}
        }
    }
    for n in real_nodes {
        svc.reals.push(real(n, &defaults, &forward)?);
    }
    if matches!(svc.keys.first(), Some(Key::Fwmark(_))) {
        svc.ipv6 |= svc.reals.first().is_some_and(|r| r.ip.is_ipv6());
    }
    svc.udp = udp;
    Ok(Ok(svc))
}

/// One `real_server IP [PORT] { ... }`.
fn real(n: &Node, service: &CheckDefaults, forward: &Forward) -> Result<Real, ImportError> {
    let (ip, addr) = address(n, &n.args)?;
    let mut r = Real {
        at: n.at.clone(),
        address: addr,
        ip,
        weight: 1,
        forward: Forward {
            notes: Vec::new(),
            ..forward.clone()
        },
        u_threshold: None,
        l_threshold: None,
        check: None,
        notes: Vec::new(),
    };
    let mut defaults = service.clone();
    let mut checkers = Vec::new();
    for c in n.children() {
        if defaults.keyword(c)? || r.forward.keyword(c)? {
            continue;
        }
        let skip = |why: &str| note(c, why);
        match c.keyword.as_str() {
            "weight" => r.weight = number(c, one_arg(c)?)?,
            "uthreshold" => r.u_threshold = Some(number(c, one_arg(c)?)?),
            "lthreshold" => r.l_threshold = Some(number(c, one_arg(c)?)?),
            k if k.ends_with("_CHECK") || k == "HTTP_GET" || k == "SSL_GET" => checkers.push(c),
            "notify_up" | "notify_down" => r.notes.push(skip(
                "xvs runs no script when a real server changes: it logs the change and counts \
                 it (xvs_real_health_changes_total)",
            )),
            "smtp_alert" => r.notes.push(skip(
                "xvs sends no mail: it logs every change and exports metrics",
            )),
            "alpha" => r.notes.push(skip(
                "xvs starts a real server up until a check fails (keepalived without alpha)",
            )),
            "warmup" => r.notes.push(skip(
                "xvs spreads each check's first attempt over its first interval by itself",
            )),
            "virtualhost" => r.notes.push(skip(
                "xvs's http checks send the real server's address as Host, not a virtual host",
            )),
            _ => r
                .notes
                .push(skip("not known to this import: not carried over")),
        }
    }
    r.notes.append(&mut r.forward.notes);
    for c in checkers {
        if r.check.is_some() {
            r.notes.push(note(
                c,
                "keepalived needs every checker of a real server up; xvs runs one per real \
                 server: the first one above is carried over, not this one",
            ));
            continue;
        }
        let mut d = defaults.clone();
        if let Some(check) = checker(c, ip, &mut d, &mut r.notes)? {
            r.check = Some((check, d));
        }
    }
    if defaults.inhibit && r.check.is_none() {
        r.notes.push(format!(
            "{}: inhibit_on_failure: this real server has no check xvs runs, so it never fails",
            r.at
        ));
    }
    Ok(r)
}

/// One checker block: the check xvs runs for it (None when xvs has no such checker), notes
/// on what it cannot carry.
fn checker(
    c: &Node,
    real_ip: IpAddr,
    defaults: &mut CheckDefaults,
    notes: &mut Vec<String>,
) -> Result<Option<Check>, ImportError> {
    let kind = match c.keyword.as_str() {
        "TCP_CHECK" => "tcp",
        "HTTP_GET" => "http",
        "SSL_GET" => "https",
        "MISC_CHECK" => "misc",
        other => {
            notes.push(note(
                c,
                &format!(
                    "xvs has no {other}: this real server is not checked (check a TCP or HTTP \
                     port of it, or run a command: type = \"misc\")"
                ),
            ));
            return Ok(None);
        }
    };
    let mut check = Check {
        kind,
        ..Check::default()
    };
    let mut urls = 0;
    for n in c.children() {
        if defaults.keyword(n)? {
            continue;
        }
        let skip = |why: &str| note(n, why);
        match n.keyword.as_str() {
            "connect_port" => {
                check.port = Some(number(n, one_arg(n)?)?);
                check.from.insert("port", n.at.clone());
            }
            "connect_ip" => {
                if ip(n, one_arg(n)?)? != real_ip {
                    notes.push(skip("xvs checks the real server's own address"));
                }
            }
            "bindto" | "bind_port" | "bind_if" | "source_ip" => notes.push(skip(
                "xvs checks from the director's own address, as the kernel routes",
            )),
            "fwmark" => notes.push(skip("xvs's checks carry no firewall mark")),
            "warmup" => notes.push(skip(
                "xvs spreads each check's first attempt over its first interval by itself",
            )),
            "alpha" => notes.push(skip(
                "xvs starts a real server up until a check fails (keepalived without alpha)",
            )),
            "url" if kind == "http" || kind == "https" => {
                urls += 1;
                if urls > 1 {
                    notes.push(format!(
                        "{}: `url` ({}): xvs checks one URL per real server: the first one is \
                         carried over, not this one",
                        n.at,
                        url_text(n)
                    ));
                    continue;
                }
                url(n, &mut check, notes)?;
            }
            "misc_path" if kind == "misc" => {
                let cmd = n.args.join(" ");
                if cmd.is_empty() {
                    return Err(n.at.error("`misc_path` needs a command"));
                }
                if cmd.contains(['|', ';', '&', '>', '<', '`', '$', '*']) {
                    notes.push(skip(
                        "xvs runs the command without a shell (words split as a shell would): \
                         wrap it in sh -c '...' if it needs one",
                    ));
                }
                check.command = Some(cmd);
                check.from.insert("command", n.at.clone());
            }
            "misc_timeout" if kind == "misc" => {
                check.timeout = Some(seconds(n)?);
                check.from.insert("timeout", n.at.clone());
            }
            "misc_dynamic" if kind == "misc" => notes.push(skip(
                "xvs reads the command's exit status as up (0) or down: exit codes 2-255 do not \
                 set the weight",
            )),
            "user" if kind == "misc" => notes.push(skip("xvs runs the command as xvsd's user")),
            "virtualhost" => notes.push(skip(
                "xvs's http checks send the real server's address as Host, not a virtual host",
            )),
            _ => notes.push(skip("not known to this import: not carried over")),
        }
    }
    if kind == "misc" && check.command.is_none() {
        return Err(c.at.error("MISC_CHECK needs a misc_path"));
    }
    Ok(Some(check))
}

/// A url block's path, for notes.
fn url_text(n: &Node) -> String {
    n.children()
        .iter()
        .find(|c| c.keyword == "path")
        .map_or_else(
            || "no path".to_string(),
            |p| format!("path {}", p.args.join(" ")),
        )
}

/// `url { path P digest D status_code S... regex R }`.
fn url(n: &Node, check: &mut Check, notes: &mut Vec<String>) -> Result<(), ImportError> {
    let mut regex = None;
    for u in n.children() {
        match u.keyword.as_str() {
            "path" => {
                check.path = Some(one_arg(u)?.to_string());
                check.from.insert("path", u.at.clone());
            }
            "digest" => {
                let d = one_arg(u)?.to_ascii_lowercase();
                if d.len() != 32 || !d.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(u.at.error(format!(
                        "`digest {d}`: an MD5 digest is 32 hexadecimal digits"
                    )));
                }
                check.digest = Some(d);
                check.from.insert("digest", u.at.clone());
            }
            "status_code" => {
                if u.args.is_empty() {
                    return Err(u.at.error("`status_code` needs a code or a range"));
                }
                for code in &u.args {
                    let ok = code.split('-').count() <= 2
                        && code.split('-').all(|p| p.parse::<u16>().is_ok());
                    if !ok {
                        return Err(u.at.error(format!(
                            "`status_code`: `{code}` is not a code (200) or a range (200-299)"
                        )));
                    }
                }
                check.status = Some(u.args.join(","));
                check.from.insert("status", u.at.clone());
            }
            "regex" => regex = Some(u),
            _ => notes.push(note(u, "not known to this import: not carried over")),
        }
    }
    if let Some(r) = regex {
        let text = r.args.join(" ");
        let plain = !text.is_empty() && !text.contains(|c: char| "\\^$.|?*+()[]{}".contains(c));
        if check.digest.is_some() {
            notes.push(note(
                r,
                "xvs checks the digest or a text, not both: the digest is carried over",
            ));
        } else if plain {
            check.body = Some(text);
            check.from.insert("body", r.at.clone());
        } else {
            notes.push(note(
                r,
                "xvs looks for a plain text in the body, not a regular expression",
            ));
        }
    }
    Ok(())
}

/// Writes one converted `virtual_server`: a service per key.
fn emit(out: &mut Out, s: &Service) {
    for (i, key) in s.keys.iter().enumerate() {
        if i > 0 {
            out.line("", None);
        }
        let title = out.shorten(&format!("# {} ({})", s.title, s.at));
        out.line(title, None);
        out.line("[[service]]", None);
        match key {
            Key::Addr(a) => out.line(
                format!(
                    "{} = {}",
                    if s.udp { "udp" } else { "tcp" },
                    q(&a.to_string())
                ),
                Some(&s.at),
            ),
            Key::Fwmark(m) => {
                out.line(format!("fwmark = {m}"), Some(&s.at));
                if s.ipv6 {
                    out.line("ipv6 = true", Some(&s.at));
                }
                out.comment(&format!(
                    "{}: fwmark {m}: keepalived's service takes what netfilter marks {m}; xvs runs \
                     before netfilter, so list that traffic here as match = \
                     [\"tcp:VIP:PORT\", ...] (port 0: every port). Until then it takes none.",
                    s.at
                ));
            }
        }
        if let Some((sched, at)) = &s.scheduler {
            out.line(format!("scheduler = {}", q(sched.name())), Some(at));
        }
        if !s.flags.is_empty() {
            let names: Vec<String> = s.flags.iter().map(|(f, _)| q(f)).collect();
            out.line(
                format!("sched-flags = [{}]", names.join(", ")),
                Some(&s.flags[0].1),
            );
        }
        if let Some((p, at)) = &s.persistent {
            out.line(format!("persistent = {p}"), Some(at));
        }
        if let Some((m, at)) = &s.netmask {
            let value = m.parse::<u8>().map_or_else(|_| q(m), |p| p.to_string());
            out.line(format!("netmask = {value}"), Some(at));
        }
        if let Some((a, at)) = &s.sorry {
            out.line(format!("sorry-server = {}", q(a)), Some(at));
        }
        if let Some((v, at)) = &s.quorum {
            out.line(format!("quorum = {v}"), Some(at));
        }
        if let Some((v, at)) = &s.hysteresis {
            out.line(format!("hysteresis = {v}"), Some(at));
        }
        if i == 0 {
            for n in &s.notes {
                out.comment(n);
            }
        } else if !s.notes.is_empty() {
            out.comment("(what is not carried over: see the first service of this group)");
        }
        for r in &s.reals {
            emit_real(out, r);
        }
    }
}

fn emit_real(out: &mut Out, r: &Real) {
    if let Some(why) = &r.forward.refused {
        out.line("", None);
        out.comment(&format!(
            "{}: `real_server {}` is not carried over: {why}",
            r.at, r.address
        ));
        return;
    }
    out.line("", None);
    let at = Some(&r.at);
    out.line("  [[service.real]]", None);
    out.line(format!("  address = {}", q(&r.address)), at);
    out.line(format!("  weight = {}", r.weight), at);
    let f = &r.forward;
    out.line(format!("  forward = {}", q(f.kind.unwrap_or("dr"))), at);
    if f.kind == Some("tunnel") {
        if let Some(t) = &f.tun_type {
            out.line(format!("  tun-type = {}", q(t)), at);
        }
        if let Some(p) = f.tun_port {
            out.line(format!("  tun-port = {p}"), at);
        }
        if f.csum {
            out.line("  tun-csum = true", at);
        }
    }
    if let Some(u) = r.u_threshold {
        out.line(format!("  u-threshold = {u}"), at);
    }
    if let Some(l) = r.l_threshold {
        out.line(format!("  l-threshold = {l}"), at);
    }
    for n in &r.notes {
        out.comment_at("  ", n);
    }
    let Some((c, d)) = &r.check else { return };
    out.line("    [service.real.health-check]", at);
    out.line(format!("    type = {}", q(c.kind)), at);
    let from = |k: &str| c.from.get(k).or(at);
    if let Some(p) = c.port {
        out.line(format!("    port = {p}"), from("port"));
    }
    for (key, value) in [
        ("path", &c.path),
        ("status", &c.status),
        ("digest", &c.digest),
        ("body", &c.body),
        ("command", &c.command),
    ] {
        if let Some(v) = value {
            out.line(format!("    {key} = {}", q(v)), from(key));
        }
    }
    let interval = d.interval.clone().unwrap_or_else(|| q("60s"));
    out.line(format!("    interval = {interval}"), at);
    if let Some(t) = c.timeout.as_ref().or(d.timeout.as_ref()) {
        out.line(format!("    timeout = {t}"), from("timeout"));
    }
    if let Some(r) = d.retry {
        out.line(format!("    retry = {r}"), at);
    }
    if let Some(r) = &d.retry_delay {
        out.line(format!("    retry-delay = {r}"), at);
    }
    out.line("    rise = 1", at);
    if d.inhibit {
        out.line("    inhibit = true", at);
    }
}
