//! The backup: joins the group on its interface, reads IPVS sync messages (version 1), drops
//! those of a foreign syncid as the kernel does, and has the controller install the entries
//! (see [`super::installer`]), counting what it skips and why. Nothing is authenticated: any
//! host on the sync network can write this director's connection table, so that network
//! must be private.
//!
//! It also asks the peers for their whole tables (lb_core::sync::table) when it starts and
//! whenever its interface's carrier changes (a director whose link went down missed what was
//! sent meanwhile), and again while no complete answer came (the peers' masters answer).

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use futures::future::BoxFuture;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::{
    daemon::DaemonConfig,
    decode, syncid_accepted,
    table::{decode_control, encode_control, Control},
    Hub, Role, SyncConn,
};

/// What installing a message's entries came to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Installed {
    /// Entries written to the connection table.
    pub installed: u64,
    /// Entries skipped, by reason (`unknown_service`, `unknown_real`, `unknown_local`,
    /// `reply_taken`, `unsupported`, `install`).
    pub skipped: BTreeMap<&'static str, u64>,
}

impl Installed {
    /// Counts one entry skipped for `reason`.
    pub fn skip(&mut self, reason: &'static str) {
        *self.skipped.entry(reason).or_default() += 1;
    }
}

/// Installs entries: the controller's, which knows the services and backend slots.
pub type Install = Arc<dyn Fn(Vec<SyncConn>) -> BoxFuture<'static, Installed> + Send + Sync>;

/// Largest datagram read (the largest `--sync-maxlen`).
const RECV_BUF: usize = 65535;

/// What a backup does with one datagram: the entries to install, or why it was dropped.
pub fn accept(ours: u8, datagram: &[u8]) -> Result<Vec<SyncConn>, &'static str> {
    let msg = decode(datagram).map_err(|_| "decode")?;
    if !syncid_accepted(ours, msg.syncid) {
        return Err("foreign_syncid");
    }
    Ok(msg.conns)
}

/// Runs the backup side for as long as xvsd runs, following the hub's daemons.
pub fn spawn(hub: Hub, install: Install) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut wanted = hub.subscribe();
        loop {
            let want = wanted.borrow_and_update().backup.clone();
            let Some(config) = want else {
                if wanted.changed().await.is_err() {
                    return;
                }
                continue;
            };
            tokio::select! {
                changed = backup_changed(&mut wanted, &config) => if changed.is_err() { return },
                () = serve(&config, &hub, &install) => {
                    // The socket could not be made: wait for a change of the backup.
                    if backup_changed(&mut wanted, &config).await.is_err() { return }
                }
            }
        }
    })
}

/// Returns once the backup that should run is no longer `config` (a master started or
/// stopped beside it changes nothing here: the backup goes on, its wait for the peers'
/// tables too); Err when xvsd is going away.
async fn backup_changed(
    wanted: &mut tokio::sync::watch::Receiver<super::daemon::Daemons>,
    config: &DaemonConfig,
) -> Result<(), tokio::sync::watch::error::RecvError> {
    loop {
        wanted.changed().await?;
        if wanted.borrow_and_update().backup.as_ref() != Some(config) {
            return Ok(());
        }
    }
}

/// Receives for backup `config` until the socket fails to be made (returns) or the task is
/// dropped (the backup changed).
async fn serve(config: &DaemonConfig, hub: &Hub, install: &Install) {
    let Some(ifindex) = super::ifindex(&config.mcast_ifn) else {
        warn!(mcast_ifn = %config.mcast_ifn, "the backup sync daemon's interface does not exist");
        hub.count(Role::Backup, |s| s.error("socket"));
        return;
    };
    let socket = match super::socket::receiver(config.group(), config.port(), ifindex) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, mcast_ifn = %config.mcast_ifn, "the backup sync daemon cannot listen");
            hub.count(Role::Backup, |s| s.error("socket"));
            return;
        }
    };
    // Requests for the peers' tables go out from a socket of their own (the receiving one is
    // bound to the group's address).
    let asker = match super::socket::sender(config.group(), ifindex, config.ttl()) {
        Ok(s) => Asker {
            socket: s,
            to: SocketAddr::new(config.group(), config.port()),
            syncid: config.syncid,
        },
        Err(e) => {
            warn!(error = %e, mcast_ifn = %config.mcast_ifn, "the backup sync daemon cannot ask its peers for their tables");
            hub.count(Role::Backup, |s| s.error("socket"));
            return;
        }
    };
    info!(mcast_ifn = %config.mcast_ifn, group = %config.group(), port = config.port(), syncid = config.syncid, "backup sync daemon listening");
    asker
        .ask(hub, hub.begin_wait(&config.mcast_ifn), "the backup started")
        .await;
    let mut tick = tokio::time::interval(TABLE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = None;
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        let (n, from) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "receiving sync messages failed");
                    hub.count(Role::Backup, |s| s.error("receive"));
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = tick.tick() => {
                if let Some(nonce) = hub.rewait_after_carrier_change() {
                    asker.ask(hub, nonce, "the sync interface's carrier changed").await;
                } else if let Some(nonce) = hub.resend_due() {
                    asker.ask(hub, nonce, "no complete answer yet").await;
                }
                let status = hub.table_status(false);
                if status.ready() && reported != Some(hub.table_nonce()) {
                    reported = Some(hub.table_nonce());
                    info!(status = %status.describe(), "peers' tables");
                }
                continue;
            }
            nonce = hub.asked() => {
                if let Some(nonce) = nonce {
                    asker.ask(hub, nonce, "asked by xvsadm synced").await;
                }
                continue;
            }
        };
        if let Some((syncid, control)) = decode_control(&buf[..n]) {
            if !syncid_accepted(config.syncid, syncid) {
                hub.count(Role::Backup, |s| s.error("foreign_syncid"));
                continue;
            }
            match control {
                // The master's listener answers those.
                Control::TableRequest { .. } => {}
                Control::TableSent { nonce, entries } => {
                    debug!(%from, nonce, entries, "a peer sent its table");
                    hub.answered(from.ip(), nonce, entries);
                }
            }
            continue;
        }
        let conns = match accept(config.syncid, &buf[..n]) {
            Ok(c) => c,
            Err(reason) => {
                debug!(%from, reason, "sync message dropped");
                hub.count(Role::Backup, |s| s.error(reason));
                continue;
            }
        };
        let count = conns.len() as u64;
        hub.received(from.ip(), count);
        let done = install(conns).await;
        hub.count(Role::Backup, |s| {
            s.messages += 1;
            s.conns += count;
            s.installed += done.installed;
            for (reason, n) in &done.skipped {
                *s.errors.entry((*reason).to_string()).or_default() += n;
            }
        });
    }
}

/// How often the backup checks its interface's carrier and whether a table request is due.
const TABLE_TICK: std::time::Duration = std::time::Duration::from_millis(200);

/// Sends this director's table requests to its peers.
struct Asker {
    socket: tokio::net::UdpSocket,
    to: SocketAddr,
    syncid: u8,
}

impl Asker {
    async fn ask(&self, hub: &Hub, nonce: u32, why: &str) {
        let msg = encode_control(self.syncid, &Control::TableRequest { nonce });
        if let Err(e) = self.socket.send_to(&msg, self.to).await {
            // The link may be down; the request goes out again while no peer answered.
            debug!(error = %e, "sending a table request failed");
            hub.count(Role::Backup, |s| s.error("send_request"));
            return;
        }
        info!(why, nonce, to = %self.to, "asked the peers for their connection tables");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::{encode, Addrs, ConnFlags, ConnState, Forward, Ports, TcpState};

    #[test]
    fn a_backup_takes_its_syncid_or_any_with_0_and_refuses_garbage() {
        let conn = SyncConn {
            protocol: 6,
            flags: ConnFlags::new(Forward::DirectRoute),
            state: ConnState::Tcp(TcpState::Established),
            addrs: Addrs::V4 {
                client: "203.0.113.7".parse().unwrap(),
                virt: "192.0.2.10".parse().unwrap(),
                dest: "198.51.100.11".parse().unwrap(),
            },
            ports: Ports {
                client: 40000,
                virt: 80,
                dest: 80,
            },
            fwmark: 0,
            timeout_secs: 900,
            seq: None,
            pe: None,
            local: None,
        };
        let msg = encode(7, std::slice::from_ref(&conn), 1472)
            .unwrap()
            .remove(0);
        assert_eq!(accept(7, &msg).unwrap(), vec![conn.clone()]);
        assert_eq!(accept(0, &msg).unwrap(), vec![conn]);
        assert_eq!(accept(8, &msg).unwrap_err(), "foreign_syncid");
        assert_eq!(accept(7, b"not a sync message").unwrap_err(), "decode");
    }
}
