//! The master: reads the data plane's connection reports (SYNC_EVENTS) as they come, has the
//! controller name their real servers, packs them into IPVS messages of at most the daemon's
//! maxlen and multicasts them from its interface. A message goes out when it is full, and what
//! is queued goes out at least every [`FLUSH_PERIOD`] (IPVS flushes its queue on a timer too).
//! While no master runs the reports are read and dropped (the data plane makes none then,
//! but some may be in flight when the daemon stops). The master also listens on the group for
//! a peer's request for the whole table (lb_core::sync::table), and answers it with every live
//! connection, then their count.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use futures::future::BoxFuture;
use lb_common::SyncEvent;
use tokio::{io::unix::AsyncFd, net::UdpSocket, task::JoinHandle};
use tracing::{info, warn};

use super::{
    daemon::DaemonConfig,
    table::{decode_control, encode_control, Control},
    Hub, MessageBuilder, Role, SyncConn,
};

/// Queued entries go out at least this often.
pub const FLUSH_PERIOD: Duration = Duration::from_secs(1);

/// Names the real servers of reports: the controller's, which knows the backend slots.
pub type Describe = Arc<dyn Fn(Vec<SyncEvent>) -> BoxFuture<'static, Vec<SyncConn>> + Send + Sync>;

/// The whole connection table as entries, for a peer that asked (the controller's walk).
pub type WholeTable = Arc<dyn Fn() -> BoxFuture<'static, Vec<SyncConn>> + Send + Sync>;

/// A whole table goes out in bursts of this many messages, a pause between two, so that a
/// peer's receive buffer keeps up (a lost entry makes it ask again).
const TABLE_BURST: usize = 32;
const TABLE_PAUSE: Duration = Duration::from_millis(1);

/// A report read from the ring, or None when it is too short to be one.
pub fn event_of(bytes: &[u8]) -> Option<SyncEvent> {
    if bytes.len() < size_of::<SyncEvent>() {
        return None;
    }
    // SAFETY: long enough for one SyncEvent, plain old data (any bit pattern is valid);
    // read_unaligned assumes nothing of the ring's alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

/// A peer's table request the master's listener read, or None for anything else.
async fn next_request(master: &Option<Master>) -> Option<(IpAddr, u32)> {
    let Some(m) = master else {
        return std::future::pending().await;
    };
    // Control messages are short: a longer datagram (a peer's entries) is cut and skipped.
    let mut buf = [0u8; 64];
    let (n, from) = m.listener.recv_from(&mut buf).await.ok()?;
    match decode_control(&buf[..n]) {
        Some((syncid, Control::TableRequest { nonce }))
            if syncid == m.config.syncid || syncid == 0 =>
        {
            Some((from.ip(), nonce))
        }
        _ => None,
    }
}

/// A running master's sockets and where it sends.
struct Master {
    config: DaemonConfig,
    socket: UdpSocket,
    /// Joined to the group on the master's interface, for the peers' table requests.
    listener: UdpSocket,
    to: SocketAddr,
    maxlen: usize,
    queue: Vec<SyncConn>,
}

impl Master {
    fn open(config: &DaemonConfig) -> std::io::Result<Master> {
        let ifindex = super::ifindex(&config.mcast_ifn).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no interface {}", config.mcast_ifn),
            )
        })?;
        let mtu = super::iface_mtu(&config.mcast_ifn).unwrap_or(1500);
        Ok(Master {
            socket: super::socket::sender(config.group(), ifindex, config.ttl())?,
            listener: super::socket::receiver(config.group(), config.port(), ifindex)?,
            to: SocketAddr::new(config.group(), config.port()),
            maxlen: config.maxlen(mtu),
            config: config.clone(),
            queue: Vec::new(),
        })
    }

    /// Sends what is queued, in as few messages as fit.
    async fn flush(&mut self, hub: &Hub) {
        if self.queue.is_empty() {
            return;
        }
        let conns = std::mem::take(&mut self.queue);
        self.send(hub, &conns, usize::MAX).await;
    }

    /// Sends the whole table to a peer that asked (request `nonce`), then how many entries
    /// went out, so the peer can tell whether it lost some.
    async fn send_table(&mut self, hub: &Hub, conns: &[SyncConn], peer: IpAddr, nonce: u32) {
        self.flush(hub).await;
        let started = std::time::Instant::now();
        let (messages, entries) = self.send(hub, conns, TABLE_BURST).await;
        let done = encode_control(
            self.config.syncid,
            &Control::TableSent {
                nonce,
                entries: entries as u32,
            },
        );
        if let Err(e) = self.socket.send_to(&done, self.to).await {
            warn!(error = %e, "sending the end of a table failed");
            hub.count(Role::Master, |s| s.error("send"));
        }
        info!(%peer, nonce, entries, messages, took_ms = started.elapsed().as_millis() as u64, "sent the whole connection table to a peer that asked");
    }

    /// Sends `conns` in as few messages as fit, pausing after every `burst` messages; returns
    /// the messages and entries sent.
    async fn send(&mut self, hub: &Hub, conns: &[SyncConn], burst: usize) -> (usize, u64) {
        let mut builder = MessageBuilder::new(self.config.syncid, self.maxlen);
        for conn in conns {
            if let Err(e) = builder.push(conn) {
                warn!(error = %e, "a connection does not fit a sync message; not sent");
                hub.count(Role::Master, |s| s.error("encode"));
            }
        }
        let (mut messages, mut entries) = (0, 0);
        for msg in builder.finish() {
            if messages > 0 && messages % burst == 0 {
                tokio::time::sleep(TABLE_PAUSE).await;
            }
            // The header's nr_conns (struct ip_vs_sync_mesg: reserved, syncid, size, nr_conns).
            let conns = u64::from(msg.get(4).copied().unwrap_or(0));
            match self.socket.send_to(&msg, self.to).await {
                Ok(_) => {
                    messages += 1;
                    entries += conns;
                    hub.count(Role::Master, |s| {
                        s.messages += 1;
                        s.conns += conns;
                    });
                }
                Err(e) => {
                    warn!(error = %e, to = %self.to, "sending a sync message failed");
                    hub.count(Role::Master, |s| s.error("send"));
                }
            }
        }
        (messages, entries)
    }
}

/// Runs the master side for as long as xvsd runs, following the hub's daemons.
pub fn spawn(
    ring: RingBuf<MapData>,
    hub: Hub,
    describe: Describe,
    whole_table: WholeTable,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        // SAFETY: the ring buffer owns its map's descriptor, which stays open and unreplaced
        // while the AsyncFd owns the ring.
        let registered =
            unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) };
        let mut ring = match registered {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "the sync events cannot be read: no master sync daemon can run");
                return;
            }
        };
        let mut wanted = hub.subscribe();
        let mut master: Option<Master> = None;
        let mut tick = tokio::time::interval(FLUSH_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Follow the daemons: a new or changed master opens its socket, a stopped one
            // flushes and closes.
            let want = wanted.borrow_and_update().master.clone();
            if master.as_ref().map(|m| &m.config) != want.as_ref() {
                if let Some(m) = &mut master {
                    m.flush(&hub).await;
                }
                master = want.and_then(|c| match Master::open(&c) {
                    Ok(m) => {
                        info!(mcast_ifn = %c.mcast_ifn, group = %m.to, maxlen = m.maxlen, syncid = c.syncid, "master sync daemon sending");
                        Some(m)
                    }
                    Err(e) => {
                        warn!(error = %e, mcast_ifn = %c.mcast_ifn, "the master sync daemon cannot send (retried when it is started again)");
                        hub.count(Role::Master, |s| s.error("socket"));
                        None
                    }
                });
            }
            tokio::select! {
                changed = wanted.changed() => if changed.is_err() { return },
                _ = tick.tick() => if let Some(m) = &mut master { m.flush(&hub).await },
                request = next_request(&master) => {
                    if let (Some((peer, nonce)), Some(m)) = (request, &mut master) {
                        let conns = whole_table().await;
                        m.send_table(&hub, &conns, peer, nonce).await;
                    }
                }
                ready = ring.readable_mut() => {
                    let Ok(mut guard) = ready else { return };
                    let mut events = Vec::new();
                    while let Some(item) = guard.get_inner_mut().next() {
                        match event_of(&item) {
                            Some(ev) => events.push(ev),
                            None => hub.count(Role::Master, |s| s.error("short_event")),
                        }
                    }
                    guard.clear_ready();
                    if let (Some(m), false) = (&mut master, events.is_empty()) {
                        let conns = describe(events).await;
                        m.queue.extend(conns);
                        if m.queue.len() >= super::MAX_CONNS {
                            m.flush(&hub).await;
                        }
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reads_back_from_its_bytes_and_a_short_one_is_refused() {
        let ev = SyncEvent {
            backend: 7,
            state: 2,
            kind: lb_common::sync_event::STATE,
            ..SyncEvent::default()
        };
        // SAFETY: SyncEvent is plain old data; its bytes are read as bytes.
        let bytes: [u8; size_of::<SyncEvent>()] = unsafe { std::mem::transmute(ev) };
        assert_eq!(event_of(&bytes), Some(ev));
        assert_eq!(event_of(&bytes[..10]), None);
    }
}
