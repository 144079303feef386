//! `xvsadm top`: services and real servers with their rates (new connections, packets and bytes
//! per second, measured between two listings of the counters), connections, weight and health,
//! refreshing in place and sorted by a column chosen with a key, as top does; plain text frames
//! when stdout is not a terminal or with `--batch`.
//!
//! The rates, the sorting and the frame's text are pure functions of two listings ([`rows`],
//! [`sort`], [`render`]); [`run_terminal`] and the batch loop in `main.rs` only do the I/O.

use std::{cmp::Ordering, fmt::Write as _, io::Write as _, net::SocketAddr, time::Duration};

use clap::{Parser, ValueEnum};

use lb_core::{
    listing::sort_like_ipvsadm,
    model::{Protocol, ServiceKey},
    names::{addr_port, Numeric},
    proto::{default_socket, Listing, Membership},
    stats::Counters,
};

use crate::watch::{health_of, human, table_line};

/// `xvsadm top` options (`--help` prints [`lb_core::help::TOP_USAGE`]).
#[derive(Parser, Debug, Clone)]
#[command(
    name = "xvsadm top",
    disable_help_flag = true,
    disable_version_flag = true
)]
pub struct TopArgs {
    /// Seconds between frames.
    #[arg(
        short = 'd',
        long = "delay",
        value_name = "SECS",
        default_value_t = 1.0
    )]
    pub delay: f64,
    /// Plain text frames one after another, no terminal control (implied when stdout is not a
    /// terminal).
    #[arg(short = 'b', long)]
    pub batch: bool,
    /// Exit after this many frames.
    #[arg(short = 'n', long, value_name = "N")]
    pub iterations: Option<u64>,
    /// The column rows are sorted by.
    #[arg(short = 's', long, value_enum, default_value_t = Column::Conns)]
    pub sort: Column,
    /// Reverse the order (lowest first; names Z to A).
    #[arg(short = 'r', long)]
    pub reverse: bool,
    /// Control socket of xvsd.
    #[arg(long, env = "XVS_SOCKET", default_value_os_t = default_socket())]
    pub socket: std::path::PathBuf,
    /// Print the help.
    #[arg(short = 'h', long)]
    pub help: bool,
}

impl TopArgs {
    /// The refresh period, checked: at least 0.1 s, at most a day.
    pub fn period(&self) -> Result<Duration, String> {
        crate::watch::refresh_period("-d", self.delay)
    }

    /// The number of frames, checked: none means until interrupted.
    pub fn frames(&self) -> Result<Option<u64>, String> {
        match self.iterations {
            Some(0) => Err("-n 0: at least one frame".to_string()),
            n => Ok(n),
        }
    }
}

/// A column to sort by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Column {
    /// New connections per second (key `c`).
    Conns,
    /// Packets per second (key `p`).
    Packets,
    /// Bytes per second (key `b`).
    Bytes,
    /// ActiveConn (key `a`).
    Active,
    /// InActConn (key `i`).
    Inactive,
    /// The service's or real server's address, in ipvsadm's order (key `n`).
    Name,
}

impl Column {
    /// The column a key selects, as top's keys do.
    pub fn of_key(c: char) -> Option<Column> {
        Some(match c {
            'c' => Column::Conns,
            'p' => Column::Packets,
            'b' => Column::Bytes,
            'a' => Column::Active,
            'i' => Column::Inactive,
            'n' => Column::Name,
            _ => return None,
        })
    }

    /// Its name in a frame's title.
    pub fn label(self) -> &'static str {
        match self {
            Column::Conns => "conn/s",
            Column::Packets => "packets/s",
            Column::Bytes => "bytes/s",
            Column::Active => "active connections",
            Column::Inactive => "inactive connections",
            Column::Name => "name",
        }
    }
}

/// Rates per second between two samples of a counter set.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rate {
    /// New connections per second.
    pub conns: f64,
    /// Packets per second, both directions (replies count for NAT and FULLNAT only).
    pub packets: f64,
    /// Bytes per second, both directions.
    pub bytes: f64,
}

impl std::ops::Add for Rate {
    type Output = Rate;
    fn add(self, o: Rate) -> Rate {
        Rate {
            conns: self.conns + o.conns,
            packets: self.packets + o.packets,
            bytes: self.bytes + o.bytes,
        }
    }
}

/// The rates between `before` and `after`, taken `dt` apart. A counter that went down was
/// zeroed (`xvsadm -Z`) in between: what it counts now is what came since, within `dt`.
/// None for a zero `dt` (no time to measure over).
pub fn rate(before: &Counters, after: &Counters, dt: Duration) -> Option<Rate> {
    let secs = dt.as_secs_f64();
    if secs <= 0.0 {
        return None;
    }
    let per_s = |b: u64, a: u64| (if a >= b { a - b } else { a }) as f64 / secs;
    Some(Rate {
        conns: per_s(before.conns, after.conns),
        packets: per_s(before.packets, after.packets)
            + per_s(before.out_packets, after.out_packets),
        bytes: per_s(before.bytes, after.bytes) + per_s(before.out_bytes, after.out_bytes),
    })
}

/// One line of a frame: a service, or a real server of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// As `-L -n` names it (a service: protocol, address and scheduler).
    pub name: String,
    /// Rates since the previous sample; None on the first frame, or for what was not there.
    pub rate: Option<Rate>,
    /// ESTABLISHED connections (a service: the sum over its real servers).
    pub active: u64,
    /// Other live connections.
    pub inactive: u64,
    /// A real server's weight; None for a service.
    pub weight: Option<u32>,
    /// A real server's health (`up`, `down`, `inhibited`, `sorry`, `-`); None for a service.
    pub health: Option<String>,
    /// Position in ipvsadm's order (the Name column's sort).
    order: usize,
}

/// A service and its real servers.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceRows {
    /// The service.
    pub service: Row,
    /// Its real servers (and the sorry server while it is in use).
    pub reals: Vec<Row>,
}

fn service_name(s: &lb_core::proto::ServiceStatus) -> String {
    match s.key {
        ServiceKey::Addr { protocol, addr } => format!(
            "{:<4} {} {}",
            protocol.to_string(),
            addr_port(&Numeric, addr, protocol),
            s.scheduler
        ),
        ServiceKey::Fwmark { fwmark, ipv6 } => format!(
            "FWM  {fwmark}{} {}",
            if ipv6 { " IPv6" } else { "" },
            s.scheduler
        ),
    }
}

/// The rows of a frame from the listing `now`, with rates against `before` (taken `dt`
/// earlier), in ipvsadm's order. Services and real servers are matched by key and address.
pub fn rows(before: Option<&Listing>, now: &Listing, dt: Duration) -> Vec<ServiceRows> {
    let mut l = now.clone();
    sort_like_ipvsadm(&mut l);
    let service_before = |key: &ServiceKey| before?.services.iter().find(|s| s.key == *key);
    l.services
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let prev = service_before(&s.key);
            let proto = match s.key {
                ServiceKey::Addr { protocol, .. } => protocol,
                ServiceKey::Fwmark { .. } => Protocol::Tcp,
            };
            let real_before = |addr: SocketAddr, sorry: bool| {
                let p = prev?;
                if sorry {
                    p.sorry_server.as_ref().filter(|r| r.addr == addr)
                } else {
                    p.reals.iter().find(|r| r.addr == addr)
                }
            };
            let reals = s
                .reals
                .iter()
                .map(|r| (r, false))
                .chain(
                    s.sorry_server
                        .iter()
                        .filter(|r| r.table == Membership::Active)
                        .map(|r| (r, true)),
                )
                .enumerate()
                .map(|(j, (r, sorry))| Row {
                    name: addr_port(&Numeric, r.addr, proto),
                    rate: real_before(r.addr, sorry).and_then(|p| rate(&p.stats, &r.stats, dt)),
                    active: r.active_conns,
                    inactive: r.inactive_conns,
                    weight: Some(r.weight),
                    health: Some(health_of(r, sorry)),
                    order: j,
                })
                .collect();
            ServiceRows {
                service: Row {
                    name: service_name(s),
                    rate: prev.and_then(|p| rate(&p.stats, &s.stats, dt)),
                    active: s.reals.iter().map(|r| r.active_conns).sum(),
                    inactive: s.reals.iter().map(|r| r.inactive_conns).sum(),
                    weight: None,
                    health: None,
                    order: i,
                },
                reals,
            }
        })
        .collect()
}

/// Orders two rows by `column`, highest first (names: ipvsadm's order), ties in ipvsadm's
/// order; `reverse` turns it around.
fn compare(a: &Row, b: &Row, column: Column, reverse: bool) -> Ordering {
    let by_rate = |f: fn(&Rate) -> f64| {
        // A row without a rate goes last.
        let v = |r: &Row| r.rate.as_ref().map_or(-1.0, f);
        v(b).total_cmp(&v(a))
    };
    let primary = match column {
        Column::Conns => by_rate(|r| r.conns),
        Column::Packets => by_rate(|r| r.packets),
        Column::Bytes => by_rate(|r| r.bytes),
        Column::Active => b.active.cmp(&a.active),
        Column::Inactive => b.inactive.cmp(&a.inactive),
        Column::Name => a.order.cmp(&b.order),
    };
    let o = primary.then(a.order.cmp(&b.order));
    if reverse {
        o.reverse()
    } else {
        o
    }
}

/// Sorts the services by `column`, and the real servers within each service.
pub fn sort(rows: &mut [ServiceRows], column: Column, reverse: bool) {
    rows.sort_by(|a, b| compare(&a.service, &b.service, column, reverse));
    for s in rows.iter_mut() {
        s.reals.sort_by(|a, b| compare(a, b, column, reverse));
    }
}

/// A rate for the table: `-` when there is none, else rounded, in K/M/G as `xvsadm stats`.
fn rate_text(r: Option<&Rate>, f: fn(&Rate) -> f64) -> String {
    r.map_or_else(|| "-".to_string(), |r| human(f(r).round() as u64))
}

/// What a frame says above its table.
#[derive(Clone, Copy, Debug)]
pub struct Title {
    /// The refresh period.
    pub period: Duration,
    /// The sort column.
    pub column: Column,
    /// Reversed.
    pub reverse: bool,
}

/// One frame as plain text: a title, the totals, the connection table's line, the column
/// header, then per service a line and one line per real server.
pub fn render(rows: &[ServiceRows], listing: &Listing, title: Title) -> String {
    let mut out = String::new();
    let reals: usize = rows.iter().map(|s| s.reals.len()).sum();
    let order = match (title.column, title.reverse) {
        (Column::Name, false) => "ipvsadm's order",
        (Column::Name, true) => "reversed",
        (_, false) => "highest first",
        (_, true) => "lowest first",
    };
    let _ = writeln!(
        out,
        "xvsadm top: {} services, {reals} real servers; every {:.1} s; sorted by {}, {order}",
        rows.len(),
        title.period.as_secs_f64(),
        title.column.label(),
    );
    let total = rows
        .iter()
        .map(|s| s.service.rate)
        .try_fold(Rate::default(), |acc, r| Some(acc + r?));
    let _ = writeln!(
        out,
        "Total: {} conn/s, {} packets/s, {} bytes/s; {} active, {} inactive connections",
        rate_text(total.as_ref(), |r| r.conns),
        rate_text(total.as_ref(), |r| r.packets),
        rate_text(total.as_ref(), |r| r.bytes),
        rows.iter().map(|s| s.service.active).sum::<u64>(),
        rows.iter().map(|s| s.service.inactive).sum::<u64>(),
    );
    let _ = writeln!(out, "{}", table_line(listing));
    let _ = writeln!(
        out,
        "{:<40} {:>8} {:>8} {:>9} {:>10} {:>10} {:>6} Health",
        "Prot LocalAddress:Port Scheduler",
        "Conn/s",
        "Pkt/s",
        "Bytes/s",
        "ActiveConn",
        "InActConn",
        "Weight"
    );
    out.push_str("  -> RemoteAddress:Port\n");
    let line = |out: &mut String, name: &str, r: &Row| {
        let _ = write!(
            out,
            "{:<40} {:>8} {:>8} {:>9} {:>10} {:>10}",
            name,
            rate_text(r.rate.as_ref(), |r| r.conns),
            rate_text(r.rate.as_ref(), |r| r.packets),
            rate_text(r.rate.as_ref(), |r| r.bytes),
            r.active,
            r.inactive
        );
        match (r.weight, &r.health) {
            (Some(w), Some(h)) => {
                let _ = writeln!(out, " {w:>6} {h}");
            }
            _ => out.push('\n'),
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

/// The keys line at the bottom of the terminal view.
pub const KEYS: &str =
    "keys: c conn/s  p packets/s  b bytes/s  a active  i inactive  n name  r reverse  q quit";

/// What a key does in the terminal view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyAction {
    /// Sort by this column (highest first).
    Sort(Column),
    /// Reverse the order.
    Reverse,
    /// Draw again now.
    Redraw,
    /// Leave.
    Quit,
    /// Nothing.
    None,
}

/// The action of a key: top's letters, `q`, Esc and Ctrl-C quit, space redraws.
pub fn key_action(c: char, ctrl: bool) -> KeyAction {
    match c {
        'c' if ctrl => KeyAction::Quit,
        'q' | 'Q' => KeyAction::Quit,
        'r' | 'R' => KeyAction::Reverse,
        ' ' => KeyAction::Redraw,
        c => Column::of_key(c.to_ascii_lowercase()).map_or(KeyAction::None, KeyAction::Sort),
    }
}

/// A frame cut to a terminal of `height` lines and `width` columns, the keys line last.
pub fn fit(frame: &str, width: u16, height: u16) -> Vec<String> {
    let room = usize::from(height.max(2)) - 1;
    let cut = |l: &str| l.chars().take(usize::from(width)).collect::<String>();
    let lines: Vec<&str> = frame.lines().collect();
    let mut out: Vec<String> = if lines.len() > room {
        let mut v: Vec<String> = lines[..room - 1].iter().map(|l| cut(l)).collect();
        v.push(cut(&format!("... {} more lines", lines.len() - (room - 1))));
        v
    } else {
        lines.iter().map(|l| cut(l)).collect()
    };
    out.push(cut(KEYS));
    out
}

/// Restores the terminal when the view ends, however it ends.
struct Screen;

impl Screen {
    fn enter() -> std::io::Result<Screen> {
        use crossterm::{cursor, execute, terminal};
        terminal::enable_raw_mode()?;
        let screen = Screen;
        execute!(
            std::io::stdout(),
            terminal::EnterAlternateScreen,
            cursor::Hide
        )?;
        Ok(screen)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        use crossterm::{cursor, execute, terminal};
        let _ = execute!(
            std::io::stdout(),
            cursor::Show,
            terminal::LeaveAlternateScreen
        );
        let _ = terminal::disable_raw_mode();
    }
}

/// The terminal view: draws a frame every period (or at once after a key) until `q`, or after
/// `frames` frames. `list` asks xvsd for a listing.
pub fn run_terminal(
    args: &TopArgs,
    period: Duration,
    frames: Option<u64>,
    mut list: impl FnMut() -> anyhow::Result<Listing>,
) -> anyhow::Result<()> {
    use crossterm::{
        cursor, event,
        event::{Event, KeyCode, KeyEventKind, KeyModifiers},
        queue, terminal,
    };
    use std::time::Instant;
    let _screen = Screen::enter()?;
    let mut column = args.sort;
    let mut reverse = args.reverse;
    let mut before: Option<(Instant, Listing)> = None;
    let mut drawn = 0u64;
    let mut sampled = true;
    let mut current = (Instant::now(), list()?);
    loop {
        let mut r = rows(
            before.as_ref().map(|(_, l)| l),
            &current.1,
            before
                .as_ref()
                .map_or(Duration::ZERO, |(t, _)| current.0 - *t),
        );
        sort(&mut r, column, reverse);
        let frame = render(
            &r,
            &current.1,
            Title {
                period,
                column,
                reverse,
            },
        );
        let (w, h) = terminal::size().unwrap_or((80, 24));
        let mut out = std::io::stdout().lock();
        queue!(out, cursor::MoveTo(0, 0))?;
        for line in fit(&frame, w, h) {
            queue!(
                out,
                crossterm::style::Print(line),
                terminal::Clear(terminal::ClearType::UntilNewLine),
                cursor::MoveToNextLine(1)
            )?;
        }
        queue!(out, terminal::Clear(terminal::ClearType::FromCursorDown))?;
        out.flush()?;
        drop(out);
        if sampled {
            drawn += 1;
            sampled = false;
        }
        if frames.is_some_and(|n| drawn >= n) {
            return Ok(());
        }
        // Keys until the next sample is due; a key redraws the same sample at once.
        let due = current.0 + period;
        let mut redraw = false;
        while !redraw {
            let left = due.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if !event::poll(left)? {
                break;
            }
            match event::read()? {
                Event::Key(k) if k.kind != KeyEventKind::Release => {
                    let action = match k.code {
                        KeyCode::Esc => KeyAction::Quit,
                        KeyCode::Char(c) => {
                            key_action(c, k.modifiers.contains(KeyModifiers::CONTROL))
                        }
                        _ => KeyAction::None,
                    };
                    match action {
                        KeyAction::Quit => return Ok(()),
                        KeyAction::Sort(c) => {
                            column = c;
                            reverse = false;
                            redraw = true;
                        }
                        KeyAction::Reverse => {
                            reverse = !reverse;
                            redraw = true;
                        }
                        KeyAction::Redraw => redraw = true,
                        KeyAction::None => {}
                    }
                }
                Event::Resize(..) => redraw = true,
                _ => {}
            }
        }
        if !redraw {
            let next = (Instant::now(), list()?);
            before = Some(std::mem::replace(&mut current, next));
            sampled = true;
        }
    }
}

/// Plain frames one after another, a blank line between them, no terminal control.
pub fn run_batch(
    args: &TopArgs,
    period: Duration,
    frames: Option<u64>,
    mut list: impl FnMut() -> anyhow::Result<Listing>,
    out: &mut impl std::io::Write,
) -> anyhow::Result<()> {
    use std::time::Instant;
    let title = Title {
        period,
        column: args.sort,
        reverse: args.reverse,
    };
    let mut before: Option<(Instant, Listing)> = None;
    let mut n = 0u64;
    loop {
        let now = (Instant::now(), list()?);
        let dt = before.as_ref().map_or(Duration::ZERO, |(t, _)| now.0 - *t);
        let mut r = rows(before.as_ref().map(|(_, l)| l), &now.1, dt);
        sort(&mut r, args.sort, args.reverse);
        if n > 0 {
            writeln!(out)?;
        }
        write!(out, "{}", render(&r, &now.1, title))?;
        out.flush()?;
        n += 1;
        if frames.is_some_and(|f| n >= f) {
            return Ok(());
        }
        before = Some(now);
        std::thread::sleep(period);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_core::{
        model::{ForwardMethod, Scheduler},
        proto::{RealStatus, ServiceStatus},
    };

    fn counters(conns: u64, packets: u64, bytes: u64) -> Counters {
        Counters {
            conns,
            packets,
            bytes,
            out_packets: 0,
            out_bytes: 0,
        }
    }

    fn real(a: &str, stats: Counters, active: u64) -> RealStatus {
        RealStatus {
            addr: a.parse().unwrap(),
            forward: ForwardMethod::Dr,
            weight: 1,
            u_threshold: 0,
            l_threshold: 0,
            persist_conns: 0,
            active_conns: active,
            inactive_conns: 1,
            stats,
            rates: Default::default(),
            mac: None,
            check: Default::default(),
            table: Default::default(),
            health: None,
        }
    }

    fn service(vip: &str, reals: Vec<RealStatus>) -> ServiceStatus {
        let mut stats = Counters::default();
        for r in &reals {
            stats.conns += r.stats.conns;
            stats.packets += r.stats.packets;
            stats.bytes += r.stats.bytes;
        }
        ServiceStatus {
            key: ServiceKey::new(Protocol::Tcp, vip.parse().unwrap()),
            matches: vec![],
            scheduler: Scheduler::Wrr,
            flags: Default::default(),
            persistence: None,
            stats,
            rates: Default::default(),
            reals,
            check: Default::default(),
            sorry_server: None,
            quorum: Default::default(),
            laddrs: Vec::new(),
            fullnat_refused: 0,
            midflow_misses: 0,
            table_digest: None,
        }
    }

    fn listing(services: Vec<ServiceStatus>) -> Listing {
        Listing {
            conn_table_size: 4096,
            services,
            table: lb_core::pressure::TableStatus {
                entries: 40,
                live: 30,
                new_per_s: 12,
                midflow_miss_per_s: 0,
                midflow_misses: 0,
            },
            ..Default::default()
        }
    }

    #[test]
    fn rates_are_the_difference_over_the_time_between_samples() {
        let a = Counters {
            conns: 10,
            packets: 100,
            bytes: 10_000,
            out_packets: 50,
            out_bytes: 5_000,
        };
        let b = Counters {
            conns: 30,
            packets: 400,
            bytes: 40_000,
            out_packets: 150,
            out_bytes: 15_000,
        };
        assert_eq!(
            rate(&a, &b, Duration::from_millis(500)),
            Some(Rate {
                conns: 40.0,
                packets: 800.0,
                bytes: 80_000.0
            })
        );
        // Zeroed in between: what the counter holds came since.
        assert_eq!(
            rate(&b, &a, Duration::from_secs(2)),
            Some(Rate {
                conns: 5.0,
                packets: 75.0,
                bytes: 7_500.0
            })
        );
        assert_eq!(rate(&a, &b, Duration::ZERO), None);
    }

    fn two_samples() -> (Listing, Listing) {
        let before = listing(vec![
            service(
                "203.0.113.10:80",
                vec![
                    real("198.51.100.12:80", counters(100, 1000, 100_000), 3),
                    real("198.51.100.11:80", counters(100, 1000, 100_000), 2),
                ],
            ),
            service(
                "203.0.113.20:53",
                vec![real("198.51.100.21:53", counters(0, 0, 0), 0)],
            ),
        ]);
        let now = listing(vec![
            service(
                "203.0.113.10:80",
                vec![
                    real("198.51.100.12:80", counters(110, 1060, 106_000), 3),
                    real("198.51.100.11:80", counters(120, 1120, 112_000), 2),
                    // New since the first sample: no rate yet.
                    real("198.51.100.13:80", counters(1, 2, 3), 0),
                ],
            ),
            service(
                "203.0.113.20:53",
                vec![real("198.51.100.21:53", counters(500, 5000, 5_000_000), 7)],
            ),
        ]);
        (before, now)
    }

    #[test]
    fn rows_match_services_and_real_servers_between_samples() {
        let (before, now) = two_samples();
        let r = rows(Some(&before), &now, Duration::from_secs(2));
        assert_eq!(r[0].service.name, "TCP  203.0.113.10:80 wrr");
        assert_eq!(r[0].service.rate.unwrap().conns, 15.5);
        assert_eq!(r[0].reals[0].name, "198.51.100.11:80");
        assert_eq!(r[0].reals[0].rate.unwrap().conns, 10.0);
        assert_eq!(r[0].reals[1].rate.unwrap().packets, 30.0);
        assert_eq!(r[0].reals[2].rate, None);
        assert_eq!(r[1].service.rate.unwrap().bytes, 2_500_000.0);
        // The first frame has no rates.
        assert!(rows(None, &now, Duration::ZERO)
            .iter()
            .all(|s| s.service.rate.is_none() && s.reals.iter().all(|r| r.rate.is_none())));
    }

    fn names(r: &[ServiceRows]) -> Vec<String> {
        r.iter()
            .flat_map(|s| {
                std::iter::once(s.service.name.clone())
                    .chain(s.reals.iter().map(|r| format!("  {}", r.name)))
            })
            .collect()
    }

    #[test]
    fn sorting_by_a_column_orders_services_and_their_real_servers() {
        let (before, now) = two_samples();
        let mut r = rows(Some(&before), &now, Duration::from_secs(2));
        sort(&mut r, Column::Conns, false);
        assert_eq!(
            names(&r),
            [
                "TCP  203.0.113.20:53 wrr",
                "  198.51.100.21:53",
                "TCP  203.0.113.10:80 wrr",
                "  198.51.100.11:80",
                "  198.51.100.12:80",
                "  198.51.100.13:80",
            ]
        );
        sort(&mut r, Column::Conns, true);
        assert_eq!(names(&r)[0], "TCP  203.0.113.10:80 wrr");
        assert_eq!(names(&r)[1], "  198.51.100.13:80");
        sort(&mut r, Column::Active, false);
        assert_eq!(names(&r)[3], "  198.51.100.12:80");
        sort(&mut r, Column::Name, false);
        assert_eq!(
            names(&r),
            [
                "TCP  203.0.113.10:80 wrr",
                "  198.51.100.11:80",
                "  198.51.100.12:80",
                "  198.51.100.13:80",
                "TCP  203.0.113.20:53 wrr",
                "  198.51.100.21:53",
            ]
        );
        sort(&mut r, Column::Name, true);
        assert_eq!(names(&r)[0], "TCP  203.0.113.20:53 wrr");
    }

    #[test]
    fn a_plain_frame_is_exactly_this_text() {
        let (before, now) = two_samples();
        let mut r = rows(Some(&before), &now, Duration::from_secs(2));
        sort(&mut r, Column::Bytes, false);
        let title = Title {
            period: Duration::from_secs(1),
            column: Column::Bytes,
            reverse: false,
        };
        let text = render(&r, &now, title);
        assert_eq!(
            text,
            "\
xvsadm top: 2 services, 4 real servers; every 1.0 s; sorted by bytes/s, highest first
Total: 266 conn/s, 2591 packets/s, 2.5M bytes/s; 12 active, 4 inactive connections
Connection table: 30 live of 4096 (0%), 40 entries; 12 new/s; 0 mid-flow misses/s (0 in all)
Prot LocalAddress:Port Scheduler           Conn/s    Pkt/s   Bytes/s ActiveConn  InActConn Weight Health
  -> RemoteAddress:Port
TCP  203.0.113.20:53 wrr                      250     2500      2.5M          7          1
  -> 198.51.100.21:53                         250     2500      2.5M          7          1      1 -
TCP  203.0.113.10:80 wrr                       16       91      9002          5          3
  -> 198.51.100.11:80                          10       60      6000          2          1      1 -
  -> 198.51.100.12:80                           5       30      3000          3          1      1 -
  -> 198.51.100.13:80                           -        -         -          0          1      1 -
"
        );
        assert!(!text.contains('\x1b'));
        // The first frame: dashes for every rate and the total.
        let first = render(&rows(None, &now, Duration::ZERO), &now, title);
        assert_eq!(
            first.lines().nth(1),
            Some("Total: - conn/s, - packets/s, - bytes/s; 12 active, 4 inactive connections")
        );
    }

    #[test]
    fn keys_choose_the_sort_and_quit() {
        assert_eq!(key_action('c', false), KeyAction::Sort(Column::Conns));
        assert_eq!(key_action('P', false), KeyAction::Sort(Column::Packets));
        assert_eq!(key_action('b', false), KeyAction::Sort(Column::Bytes));
        assert_eq!(key_action('n', false), KeyAction::Sort(Column::Name));
        assert_eq!(key_action('r', false), KeyAction::Reverse);
        assert_eq!(key_action('q', false), KeyAction::Quit);
        assert_eq!(key_action('c', true), KeyAction::Quit);
        assert_eq!(key_action('x', false), KeyAction::None);
    }

    #[test]
    fn a_frame_is_cut_to_the_terminal() {
        let frame = "a123456789\nb\nc\nd\ne\n";
        assert_eq!(fit(frame, 5, 10), ["a1234", "b", "c", "d", "e", "keys:"]);
        assert_eq!(
            fit(frame, 100, 4),
            ["a123456789", "b", "... 3 more lines", KEYS]
        );
    }

    #[test]
    fn batch_frames_have_no_escape_codes_and_stop_after_n() {
        let (before, now) = two_samples();
        let mut samples = vec![now, before].into_iter();
        let args = TopArgs::try_parse_from(["xvsadm top", "-b", "-n", "2", "-s", "name"]).unwrap();
        let mut out = Vec::new();
        run_batch(
            &args,
            Duration::from_millis(100),
            args.frames().unwrap(),
            || Ok(samples.next().expect("two listings only")),
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains('\x1b'));
        assert_eq!(text.matches("xvsadm top: ").count(), 2);
        // The second frame's rates are from the two samples (here counters went down: zeroed).
        assert!(text.contains("\n\nxvsadm top: "), "{text}");
    }

    #[test]
    fn every_option_is_in_the_help() {
        use clap::CommandFactory;
        for arg in TopArgs::command().get_arguments() {
            if let Some(long) = arg.get_long() {
                assert!(
                    lb_core::help::TOP_USAGE.contains(&format!("--{long} ")),
                    "top --{long} is not in its help"
                );
            }
            if let Some(short) = arg.get_short() {
                assert!(
                    lb_core::help::TOP_USAGE.contains(&format!(" -{short} ")),
                    "top -{short} is not in its help"
                );
            }
        }
    }

    #[test]
    fn options_are_checked() {
        let args = |a: &[&str]| {
            TopArgs::try_parse_from(std::iter::once("xvsadm top").chain(a.iter().copied()))
        };
        assert_eq!(args(&[]).unwrap().period(), Ok(Duration::from_secs(1)));
        assert!(args(&["-d", "0.01"]).unwrap().period().is_err());
        assert!(args(&["-n", "0"]).unwrap().frames().is_err());
        assert_eq!(args(&["-s", "bytes"]).unwrap().sort, Column::Bytes);
        assert!(args(&["-s", "cpu"]).is_err());
    }
}
