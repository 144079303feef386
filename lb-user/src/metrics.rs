//! The Prometheus endpoint (`xvsd --metrics ADDR:PORT`): per-service and per-real-server
//! traffic and connection figures, every data-plane reason counter, and the controller's own
//! figures, in the text exposition format (version 0.0.4), over plain HTTP/1.1.
//!
//! Everything is read at scrape time (the listing `xvsadm -L` shows, from the per-CPU maps),
//! so a scrape costs what `xvsadm -L` does: the live connection counts are read per backend slot,
//! with no connection-table walk.

use std::{fmt::Write as _, future::Future, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tracing::{debug, warn};

use crate::{
    dataplane::Activity,
    health::HealthState,
    health::{LatencyHistogram, LATENCY_BUCKETS},
    proto::{Listing, Membership},
};

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Longest request head read.
const MAX_REQUEST: usize = 8 << 10;
/// A client that has not sent its request by then is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What a scrape shows.
#[derive(Clone, Copy, Debug)]
pub struct Snapshot<'a> {
    /// Services, real servers and reasons with their counters.
    pub listing: &'a Listing,
    /// The controller's work on the data plane.
    pub activity: Activity,
    /// How xvsd came by its data plane: `fresh`, `adopted`, `reloaded` (or `unpinned`).
    pub start: &'a str,
    /// Adopted, and no configuration synced since (the maps hold the previous xvsd's tables).
    pub adoption_pending: bool,
    /// Time since xvsd started.
    pub uptime: Duration,
}

/// Metric type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (until the counters are zeroed with `-Z`).
    Counter,
    /// Goes up and down.
    Gauge,
}

/// A sample's value: counters stay exact integers (bytes pass 2^53 long before they wrap).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    /// An integer.
    Int(u64),
    /// A real number (durations in seconds).
    Float(f64),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Float(v) => write!(f, "{v}"),
        }
    }
}

/// A text exposition, written one metric family at a time.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// Writes a family: its HELP and TYPE lines, then one line per sample.
    pub fn family<'l>(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        samples: impl IntoIterator<Item = (Vec<(&'l str, String)>, Value)>,
    ) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            self.out.push_str(name);
            if !labels.is_empty() {
                self.out.push('{');
                for (i, (k, v)) in labels.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
                }
                self.out.push('}');
            }
            let _ = writeln!(self.out, " {value}");
        }
    }

    /// Writes a histogram family: HELP and TYPE, then per series its cumulative buckets,
    /// `+Inf`, sum and count.
    pub fn histogram<'l>(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (Vec<(&'l str, String)>, &'l LatencyHistogram)>,
    ) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (labels, h) in series {
            let labels_with = |le: Option<&str>| {
                let mut parts: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                    .collect();
                if let Some(le) = le {
                    parts.push(format!("le=\"{le}\""));
                }
                if parts.is_empty() {
                    String::new()
                } else {
                    format!("{{{}}}", parts.join(","))
                }
            };
            let mut cumulative = 0;
            for (bound, n) in LATENCY_BUCKETS.iter().zip(&h.buckets) {
                cumulative += n;
                let _ = writeln!(
                    self.out,
                    "{name}_bucket{} {cumulative}",
                    labels_with(Some(&bound.to_string()))
                );
            }
            let _ = writeln!(
                self.out,
                "{name}_bucket{} {}",
                labels_with(Some("+Inf")),
                h.count
            );
            let _ = writeln!(self.out, "{name}_sum{} {}", labels_with(None), h.sum_s);
            let _ = writeln!(self.out, "{name}_count{} {}", labels_with(None), h.count);
        }
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The exposition of a snapshot.
pub fn render(s: &Snapshot<'_>) -> String {
    let mut e = Exposition::default();
    let l = s.listing;
    let svc = |k: &crate::model::ServiceKey| vec![("service", k.to_string())];
    let real = |k: &crate::model::ServiceKey, a: &std::net::SocketAddr| {
        vec![("service", k.to_string()), ("real", a.to_string())]
    };
    type Get<T> = fn(&T) -> Value;
    use Value::{Float, Int};
    let service_series: [(&str, Kind, &str, Get<crate::proto::ServiceStatus>); 9] = [
        (
            "xvs_service_connections_total",
            Kind::Counter,
            "New connections scheduled to the virtual service.",
            |v| Int(v.stats.conns),
        ),
        (
            "xvs_service_packets_total",
            Kind::Counter,
            "Packets forwarded for the virtual service (client to server).",
            |v| Int(v.stats.packets),
        ),
        (
            "xvs_service_bytes_total",
            Kind::Counter,
            "Bytes forwarded for the virtual service (client to server, whole frames).",
            |v| Int(v.stats.bytes),
        ),
        (
            "xvs_service_out_packets_total",
            Kind::Counter,
            "Replies translated back to clients of the virtual service (NAT and FULLNAT; DR and TUN replies bypass the director).",
            |v| Int(v.stats.out_packets),
        ),
        (
            "xvs_service_out_bytes_total",
            Kind::Counter,
            "Bytes of replies translated back to clients of the virtual service (whole frames as received).",
            |v| Int(v.stats.out_bytes),
        ),
        (
            "xvs_service_fullnat_refused_total",
            Kind::Counter,
            "New FULLNAT connections of the virtual service refused for want of a local port (its pool is exhausted).",
            |v| Int(v.fullnat_refused),
        ),
        (
            "xvs_service_midflow_miss_total",
            Kind::Counter,
            "TCP packets of the virtual service that arrived mid-flow for a connection the connection table did not have (evicted or expired): each one a connection that may have moved to another real server.",
            |v| Int(v.midflow_misses),
        ),
        (
            "xvs_service_active_connections",
            Kind::Gauge,
            "ESTABLISHED connections of the virtual service (sum of its real servers' ActiveConn).",
            |v| Int(v.reals.iter().map(|r| r.active_conns).sum::<u64>()),
        ),
        (
            "xvs_service_inactive_connections",
            Kind::Gauge,
            "Other live connections of the virtual service (sum of its real servers' InActConn).",
            |v| Int(v.reals.iter().map(|r| r.inactive_conns).sum::<u64>()),
        ),
    ];
    for (name, kind, help, get) in service_series {
        e.family(
            name,
            kind,
            help,
            l.services.iter().map(|v| (svc(&v.key), get(v))),
        );
    }
    let real_series: [(&str, Kind, &str, Get<crate::proto::RealStatus>); 9] = [
        (
            "xvs_real_connections_total",
            Kind::Counter,
            "New connections scheduled to the real server.",
            |r| Int(r.stats.conns),
        ),
        (
            "xvs_real_packets_total",
            Kind::Counter,
            "Packets forwarded to the real server.",
            |r| Int(r.stats.packets),
        ),
        (
            "xvs_real_bytes_total",
            Kind::Counter,
            "Bytes forwarded to the real server (whole frames).",
            |r| Int(r.stats.bytes),
        ),
        (
            "xvs_real_out_packets_total",
            Kind::Counter,
            "Replies from the real server translated back to clients (NAT and FULLNAT).",
            |r| Int(r.stats.out_packets),
        ),
        (
            "xvs_real_out_bytes_total",
            Kind::Counter,
            "Bytes of the real server's replies translated back to clients (whole frames).",
            |r| Int(r.stats.out_bytes),
        ),
        (
            "xvs_real_active_connections",
            Kind::Gauge,
            "ESTABLISHED connections to the real server (ipvsadm's ActiveConn).",
            |r| Int(r.active_conns),
        ),
        (
            "xvs_real_inactive_connections",
            Kind::Gauge,
            "Other live connections to the real server (ipvsadm's InActConn).",
            |r| Int(r.inactive_conns),
        ),
        (
            "xvs_real_persistent_connections",
            Kind::Gauge,
            "Live persistence templates bound to the real server (ipvsadm's PersistConn).",
            |r| Int(r.persist_conns),
        ),
        (
            "xvs_real_weight",
            Kind::Gauge,
            "Configured weight of the real server (0: quiesced).",
            |r| Int(r.weight as u64),
        ),
    ];
    for (name, kind, help, get) in real_series {
        e.family(
            name,
            kind,
            help,
            l.services
                .iter()
                .flat_map(|v| v.reals.iter().map(move |r| (real(&v.key, &r.addr), get(r)))),
        );
    }
    // Health checks: checked real servers only.
    let checked = || {
        l.services.iter().flat_map(|v| {
            v.reals
                .iter()
                .filter_map(move |r| Some((real(&v.key, &r.addr), r.health.as_ref()?)))
        })
    };
    type GetHealth = fn(&crate::proto::Health) -> Value;
    let health_series: [(&str, Kind, &str, GetHealth); 5] = [
        (
            "xvs_real_health_up",
            Kind::Gauge,
            "1 while the real server passes its health check, 0 while it is down.",
            |h| Int((h.state == HealthState::Up) as u64),
        ),
        (
            "xvs_real_health_changes_total",
            Kind::Counter,
            "Changes of the real server between up and down.",
            |h| Int(h.changes),
        ),
        (
            "xvs_real_checks_total",
            Kind::Counter,
            "Health-check attempts.",
            |h| Int(h.checks),
        ),
        (
            "xvs_real_check_failures_total",
            Kind::Counter,
            "Health-check attempts that failed (retries included).",
            |h| Int(h.failures),
        ),
        (
            "xvs_real_check_latency_last_seconds",
            Kind::Gauge,
            "Duration of the last health-check attempt.",
            |h| Float(h.last_latency_s.unwrap_or(0.0)),
        ),
    ];
    for (name, kind, help, get) in health_series {
        e.family(
            name,
            kind,
            help,
            checked().map(|(labels, h)| (labels, get(h))),
        );
    }
    e.histogram(
        "xvs_real_check_duration_seconds",
        "Durations of health-check attempts (a timed-out attempt counts its timeout).",
        checked().map(|(labels, h)| (labels, &h.latency)),
    );
    e.family(
        "xvs_real_in_tables",
        Kind::Gauge,
        "1 while the real server is in the scheduler tables (up, unchecked, or down and inhibited at weight 0), 0 while its check took it out.",
        l.services.iter().flat_map(|v| {
            v.reals.iter().map(move |r| {
                (real(&v.key, &r.addr), Int((r.table != Membership::Removed) as u64))
            })
        }),
    );
    e.family(
        "xvs_service_sorry_active",
        Kind::Gauge,
        "1 while the service's sorry server takes new connections (no real server up), 0 otherwise; services with a sorry server only.",
        l.services.iter().filter_map(|v| {
            let s = v.sorry_server.as_ref()?;
            Some((svc(&v.key), Int((s.table == Membership::Active) as u64)))
        }),
    );
    // An info metric, as xvs_start_info: the value is 1, the digest a label, so directors are
    // compared with one query (`count by (service) (count by (service, digest)
    // (xvs_service_table_info)) > 1` finds services whose directors disagree).
    e.family(
        "xvs_service_table_info",
        Kind::Gauge,
        "The digest of the service's scheduler table, its slots named by real-server address and port: equal on directors that place every new flow the same way (rr, wrr, sh, dh and mh only; load-aware schedulers have no such table).",
        l.services.iter().filter_map(|v| {
            let digest = v.table_digest?;
            Some((
                vec![
                    ("service", v.key.to_string()),
                    ("scheduler", v.scheduler.to_string()),
                    ("digest", digest.to_string()),
                ],
                Int(1),
            ))
        }),
    );
    e.family(
        "xvs_service_quorum_up",
        Kind::Gauge,
        "1 while the service has its quorum (the live weight of its real servers, with its hysteresis), 0 otherwise.",
        l.services
            .iter()
            .filter_map(|v| Some((svc(&v.key), Int(v.quorum?.up? as u64)))),
    );
    e.family(
        "xvs_service_live_weight",
        Kind::Gauge,
        "The weights of the service's live real servers, added up (what its quorum is measured against).",
        l.services
            .iter()
            .filter_map(|v| Some((svc(&v.key), Int(v.quorum?.live_weight)))),
    );
    if let Some(a) = &l.announce {
        e.family(
            "xvs_vip_announced",
            Kind::Gauge,
            "1 while the VIP is announced to the routers (a route in xvsd's --announce-table), 0 while it is withdrawn.",
            a.announced
                .iter()
                .map(|ip| (ip, 1))
                .chain(a.withdrawn.iter().map(|ip| (ip, 0)))
                .map(|(ip, v)| (vec![("vip", ip.to_string())], Int(v))),
        );
    }
    e.family(
        "xvs_dataplane_reason_total",
        Kind::Counter,
        "Data-plane outcomes by reason, summed over CPUs (a forwarded packet counts under its verdict and its connection-table outcome).",
        l.reasons
            .iter()
            .map(|(name, n)| (vec![("reason", name.clone())], Int(*n))),
    );
    // The connection-sync daemons (ipvsadm --start-daemon), one series per running role.
    let role = |d: &crate::sync::daemon::DaemonStatus| {
        let r = match d.role {
            crate::sync::Role::Master => "master",
            crate::sync::Role::Backup => "backup",
        };
        vec![("role", r.to_string()), ("syncid", d.syncid.to_string())]
    };
    e.family(
        "xvs_sync_messages_total",
        Kind::Counter,
        "IPVS sync messages the daemon sent (master) or accepted (backup).",
        l.sync_daemons
            .iter()
            .map(|d| (role(d), Int(d.stats.messages))),
    );
    e.family(
        "xvs_sync_conns_total",
        Kind::Counter,
        "Connection entries the daemon sent (master) or accepted (backup).",
        l.sync_daemons.iter().map(|d| (role(d), Int(d.stats.conns))),
    );
    e.family(
        "xvs_sync_installed_total",
        Kind::Counter,
        "Backup: synced connections written to the connection table.",
        l.sync_daemons
            .iter()
            .map(|d| (role(d), Int(d.stats.installed))),
    );
    e.family(
        "xvs_sync_errors_total",
        Kind::Counter,
        "Messages or entries the daemon dropped, by reason (foreign_syncid, decode, unknown_service, unknown_real, unknown_local, reply_taken, unsupported, template, send...).",
        l.sync_daemons.iter().flat_map(|d| {
            d.stats.errors.iter().map(move |(reason, n)| {
                let mut labels = role(d);
                labels.push(("reason", reason.clone()));
                (labels, Int(*n))
            })
        }),
    );
    e.family(
        "xvs_sync_tables_held",
        Kind::Gauge,
        "Backup: 1 when this director holds its peers' connection tables, or no peer answered (xvsadm synced exits 0), 0 while it waits for them.",
        l.sync_daemons.iter().filter_map(|d| {
            let ready = d.table.as_ref()?.ready();
            Some((role(d), Int(u64::from(ready))))
        }),
    );
    let a = s.activity;
    let t = l.table;
    let scalars: [(&str, Kind, &str, Value); 18] = [
        ("xvs_controller_syncs_total", Kind::Counter, "Configuration changes pushed to the data plane.", Int(a.syncs)),
        ("xvs_controller_sync_last_seconds", Kind::Gauge, "Duration of the last push to the data plane.", Float(a.last_sync.as_secs_f64())),
        ("xvs_controller_recomputations_total", Kind::Counter, "Recomputations of the load-aware tables from live connection counts.", Int(a.recomputations)),
        ("xvs_controller_recomputation_last_seconds", Kind::Gauge, "Duration of the last recomputation period's work (its connection-table sweep slice included).", Float(a.last_recomputation.as_secs_f64())),
        ("xvs_controller_sweep_cycles_total", Kind::Counter, "Full cycles of the connection-table sweep (expired entries removed, counts re-baselined).", Int(a.sweep_cycles)),
        ("xvs_controller_sweep_cycle_last_seconds", Kind::Gauge, "How long the last full sweep cycle took (the staleness bound of counts of connections that expire without traffic).", Float(a.last_sweep_cycle.as_secs_f64())),
        ("xvs_controller_swept_total", Kind::Counter, "Expired connection-table entries the sweep removed and took off the live counts.", Int(a.swept)),
        ("xvs_controller_rebaselined_total", Kind::Counter, "Connections by which the sweep's re-baselining corrected the live counts (LRU evictions and races).", Int(a.rebaselined)),
        ("xvs_controller_tables_published_total", Kind::Counter, "Scheduler tables the recomputations published.", Int(a.tables_published)),
        ("xvs_uptime_seconds", Kind::Gauge, "Time since xvsd started.", Float(s.uptime.as_secs_f64())),
        ("xvs_dataplane_adopted", Kind::Gauge, "1 when xvsd adopted a pinned data plane at start, 0 when it loaded a fresh one.", Int((s.start == "adopted") as u64)),
        ("xvs_dataplane_adoption_pending", Kind::Gauge, "1 while an adopted data plane still runs the previous xvsd's tables (no configuration synced yet).", Int(s.adoption_pending as u64)),
        ("xvs_director_drained", Kind::Gauge, "1 while the director is drained (xvsadm drain: it announces no VIP and forwards what still arrives), 0 otherwise.", Int(l.drained as u64)),
        ("xvs_conn_table_capacity", Kind::Gauge, "Connection-table capacity (entries).", Int(l.conn_table_size as u64)),
        ("xvs_conn_table_entries", Kind::Gauge, "Connection-table entries, expired ones included (they keep their slot until the LRU evicts them), as this scrape's walk found them.", Int(t.entries)),
        ("xvs_conn_table_live_entries", Kind::Gauge, "Connection-table entries not expired whose real server is still configured: above 90% of the capacity, the LRU evicts live connections.", Int(t.live)),
        ("xvs_conn_table_new_per_second", Kind::Gauge, "New connection-table entries per second over xvsd's last 2-second sample (the rate of conn_new).", Int(t.new_per_s)),
        ("xvs_conn_midflow_miss_per_second", Kind::Gauge, "TCP packets per second that arrived mid-flow for a connection the table did not have, over xvsd's last 2-second sample (the rate of conn_midflow_miss).", Int(t.midflow_miss_per_s)),
    ];
    for (name, kind, help, v) in scalars {
        e.family(name, kind, help, [(vec![], v)]);
    }
    e.family(
        "xvs_start_info",
        Kind::Gauge,
        "How xvsd came by its data plane (mode: fresh, adopted, reloaded or unpinned) and the map layout version it runs.",
        [(
            vec![
                ("mode", s.start.to_string()),
                ("layout_version", lb_common::LAYOUT_VERSION.to_string()),
                ("version", env!("CARGO_PKG_VERSION").to_string()),
            ],
            Int(1),
        )],
    );
    e.finish()
}

/// Serves `GET /metrics` on `listener` until the task is dropped; each scrape calls `scrape`
/// for the exposition (an Err becomes a 500 with its text).
pub async fn serve<F, Fut>(listener: TcpListener, scrape: F)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, String>> + Send,
{
    let scrape = Arc::new(scrape);
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let scrape = scrape.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, &*scrape).await {
                        debug!(%peer, error = %e, "metrics request failed");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer<F, Fut>(mut stream: TcpStream, scrape: &F) -> std::io::Result<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<String, String>>,
{
    let head = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
        Ok(h) => h?,
        Err(_) => return Ok(()),
    };
    let mut words = head.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, body) = match (method, path) {
        ("GET", "/metrics") => match scrape().await {
            Ok(text) => ("200 OK", text),
            Err(e) => ("500 Internal Server Error", format!("{e}\n")),
        },
        ("GET", "/") => ("200 OK", "xvsd: metrics are at /metrics\n".to_string()),
        ("GET", _) => ("404 Not Found", "not found: try /metrics\n".to_string()),
        _ => ("405 Method Not Allowed", "only GET\n".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Reads up to the end of the request head; returns its first line.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST {
            return Err(std::io::Error::other("request head too long"));
        }
    }
    let text = String::from_utf8_lossy(&buf);
    Ok(text.lines().next().unwrap_or("").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        dataplane::Counters,
        model::{ForwardMethod, Scheduler, ServiceKey},
        proto::{RealStatus, ServiceStatus},
    };

    fn listing() -> Listing {
        let key = ServiceKey::new(
            crate::model::Protocol::Tcp,
            "203.0.113.10:80".parse().unwrap(),
        );
        Listing {
            conn_table_size: 1024,
            services: vec![ServiceStatus {
                key,
                matches: vec![],
                scheduler: Scheduler::Rr,
                flags: Default::default(),
                persistence: None,
                rates: Default::default(),
                stats: Counters {
                    conns: 7,
                    packets: 70,
                    bytes: 7000,
                    out_packets: 60,
                    out_bytes: 6000,
                },
                reals: vec![RealStatus {
                    addr: "198.51.100.11:80".parse().unwrap(),
                    forward: ForwardMethod::Dr,
                    weight: 3,
                    u_threshold: 0,
                    l_threshold: 0,
                    persist_conns: 0,
                    active_conns: 2,
                    inactive_conns: 5,
                    stats: Counters {
                        conns: 7,
                        packets: 70,
                        bytes: 7000,
                        out_packets: 60,
                        out_bytes: 6000,
                    },
                    mac: None,
                    rates: Default::default(),
                    check: Default::default(),
                    table: Default::default(),
                    health: Some(crate::proto::Health {
                        kind: crate::check::CheckKind::Http,
                        target: "GET http://198.51.100.11:80/".into(),
                        state: HealthState::Down,
                        since_s: 1.0,
                        last: Some("status 503".into()),
                        last_latency_s: Some(0.002),
                        checks: 9,
                        failures: 2,
                        changes: 1,
                        latency: {
                            let mut h = LatencyHistogram::default();
                            h.observe(Duration::from_micros(300));
                            h.observe(Duration::from_millis(2));
                            h
                        },
                    }),
                }],
                check: Default::default(),
                sorry_server: None,
                quorum: Some(crate::proto::QuorumStatus {
                    quorum: 1,
                    hysteresis: 0,
                    up: Some(true),
                    live_weight: 3,
                }),
                laddrs: Vec::new(),
                fullnat_refused: 2,
                midflow_misses: 9,
                table_digest: Some(crate::scheduler::digest::TableDigest(0x0123_4567_89ab_cdef)),
            }],
            reasons: lb_common::Reason::ALL
                .iter()
                .map(|r| (r.name().to_string(), 1))
                .collect(),
            timeouts: Default::default(),
            table: crate::pressure::TableStatus {
                entries: 4000,
                live: 3900,
                new_per_s: 1500,
                midflow_miss_per_s: 12,
                midflow_misses: 9,
            },
            drained: false,
            announce: Some(Box::new(crate::proto::AnnounceStatus {
                table: 100,
                announced: vec!["203.0.113.10".parse().unwrap()],
                withdrawn: vec!["2001:db8::10".parse().unwrap()],
            })),
            sync_daemons: vec![
                crate::sync::daemon::DaemonConfig::new(crate::sync::Role::Backup).status(
                    1500,
                    crate::sync::daemon::SyncStats {
                        messages: 4,
                        conns: 40,
                        installed: 38,
                        errors: [("unknown_real".to_string(), 2)].into(),
                    },
                ),
            ],
        }
    }

    #[test]
    fn every_series_is_written_with_its_type_and_labels() {
        let l = listing();
        let text = render(&Snapshot {
            listing: &l,
            activity: Activity {
                syncs: 3,
                ..Default::default()
            },
            start: "adopted",
            adoption_pending: false,
            uptime: Duration::from_secs(5),
        });
        for line in [
            "# TYPE xvs_service_connections_total counter",
            "xvs_service_connections_total{service=\"TCP 203.0.113.10:80\"} 7",
            "xvs_service_active_connections{service=\"TCP 203.0.113.10:80\"} 2",
            "xvs_service_out_packets_total{service=\"TCP 203.0.113.10:80\"} 60",
            "xvs_service_fullnat_refused_total{service=\"TCP 203.0.113.10:80\"} 2",
            "xvs_service_midflow_miss_total{service=\"TCP 203.0.113.10:80\"} 9",
            "xvs_conn_table_entries 4000",
            "xvs_conn_table_live_entries 3900",
            "xvs_conn_table_new_per_second 1500",
            "xvs_conn_midflow_miss_per_second 12",
            "xvs_real_out_bytes_total{service=\"TCP 203.0.113.10:80\",real=\"198.51.100.11:80\"} 6000",
            "xvs_real_bytes_total{service=\"TCP 203.0.113.10:80\",real=\"198.51.100.11:80\"} 7000",
            "xvs_real_inactive_connections{service=\"TCP 203.0.113.10:80\",real=\"198.51.100.11:80\"} 5",
            "xvs_real_weight{service=\"TCP 203.0.113.10:80\",real=\"198.51.100.11:80\"} 3",
            "xvs_controller_syncs_total 3",
            "xvs_sync_messages_total{role=\"backup\",syncid=\"0\"} 4",
            "xvs_sync_installed_total{role=\"backup\",syncid=\"0\"} 38",
            "xvs_sync_errors_total{role=\"backup\",syncid=\"0\",reason=\"unknown_real\"} 2",
            "xvs_real_health_up{service=\"TCP 203.0.113.10:80\",real=\"198.51.100.11:80\"} 0",
            "xvs_real_health_changes_total{service=\"TCP 203.0.113.10:80\",real=\"198.51.100.11:80\"} 1",
            "xvs_real_check_failures_total{service=\"TCP 203.0.113.10:80\",real=\"198.51.100.11:80\"} 2",
            "xvs_real_check_duration_seconds_bucket{service=\"TCP 203.0.113.10:80\",real=\"198.51.100.11:80\",le=\"0.0005\"} 1",
            "xvs_real_check_duration_seconds_bucket{service=\"TCP 203.0.113.10:80\",real=\"198.51.100.11:80\",le=\"0.0025\"} 2",
            "xvs_real_check_duration_seconds_bucket{service=\"TCP 203.0.113.10:80\",real=\"198.51.100.11:80\",le=\"+Inf\"} 2",
            "xvs_real_check_duration_seconds_count{service=\"TCP 203.0.113.10:80\",real=\"198.51.100.11:80\"} 2",
            "xvs_real_in_tables{service=\"TCP 203.0.113.10:80\",real=\"198.51.100.11:80\"} 1",
            "# TYPE xvs_service_table_info gauge",
            "xvs_service_table_info{service=\"TCP 203.0.113.10:80\",scheduler=\"rr\",digest=\"0123456789abcdef\"} 1",
            "xvs_dataplane_adopted 1",
            "xvs_director_drained 0",
            "xvs_uptime_seconds 5",
            "xvs_service_quorum_up{service=\"TCP 203.0.113.10:80\"} 1",
            "xvs_service_live_weight{service=\"TCP 203.0.113.10:80\"} 3",
            "xvs_vip_announced{vip=\"203.0.113.10\"} 1",
            "xvs_vip_announced{vip=\"2001:db8::10\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        for r in lb_common::Reason::ALL {
            let line = format!("xvs_dataplane_reason_total{{reason=\"{}\"}} 1", r.name());
            assert!(text.lines().any(|l| l == line), "{line} missing");
        }
        // Every family is announced exactly once, before its samples.
        let mut seen = std::collections::HashSet::new();
        for l in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            assert!(
                seen.insert(l.split_whitespace().nth(2).unwrap().to_string()),
                "{l}"
            );
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let mut e = Exposition::default();
        e.family(
            "x",
            Kind::Gauge,
            "a\\b",
            [(vec![("l", "a\"b\\c\nd".to_string())], Value::Int(1))],
        );
        assert_eq!(
            e.finish(),
            "# HELP x a\\\\b\n# TYPE x gauge\nx{l=\"a\\\"b\\\\c\\nd\"} 1\n"
        );
    }
}
