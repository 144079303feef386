//! A control request, from its line of JSON to its answer, as functions of the controller:
//! driven by unit tests without a socket.

use std::path::Path;

use tracing::{debug, info};

use super::{Controller, ControllerError};
use crate::{
    config_file,
    dataplane::ops::DataplaneOps,
    diff::Diff,
    proto::{Command, Request, Response, PROTOCOL_VERSION},
};

/// Most connections `-L -c` returns (the reply stays well under a few tens of MiB).
const MAX_LISTED_CONNS: usize = 100_000;

/// Adds warnings to an answer that carries them.
pub(super) fn with_warnings(mut response: Response, extra: Vec<String>) -> Response {
    if let Response::Ok { warnings } | Response::Diff { warnings, .. } = &mut response {
        warnings.extend(extra);
    }
    response
}

/// An error answer.
pub(super) fn error(message: &str) -> Response {
    Response::Error {
        message: message.to_string(),
    }
}

/// A request's answer, and whether the shell should wait for new real servers' MACs before
/// sending it (a change was applied).
#[derive(Debug)]
pub struct Answer {
    /// What the client gets (warnings may be added by the wait).
    pub response: Response,
    /// A change was applied.
    pub settle: bool,
}

impl Answer {
    fn done(response: Response) -> Self {
        Self {
            response,
            settle: false,
        }
    }

    fn of<T>(result: Result<T, impl std::fmt::Display>, ok: impl FnOnce(T) -> Response) -> Self {
        Self::done(match result {
            Ok(v) => ok(v),
            Err(e) => error(&e.to_string()),
        })
    }
}

/// Reads a request line: the protocol version first, then the command, so an old client gets
/// a useful message rather than a parse error. Err: the message to answer with.
pub fn parse_request(line: &str) -> Result<Command, String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("malformed request: {e}"))?;
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == PROTOCOL_VERSION as u64 => {}
        Some(v) => {
            return Err(format!(
                "protocol version {v} is not supported by this xvsd (it speaks {PROTOCOL_VERSION}); use the xvsadm that came with it"
            ))
        }
        None => return Err("malformed request: no protocol version".to_string()),
    }
    let req: Request =
        serde_json::from_value(value).map_err(|e| format!("malformed request: {e}"))?;
    Ok(req.command)
}

impl<D: DataplaneOps> Controller<D> {
    /// Answers one request. `config_file` is `--config`, which `reload` re-reads. Pure but for
    /// the data plane behind `D` and the state and configuration files.
    pub fn handle(&mut self, command: Command, config_file: Option<&Path>) -> Answer {
        debug!(?command, "request");
        let ok = |()| Response::Ok { warnings: vec![] };
        match command {
            Command::Apply { changes } => match self.apply(&changes) {
                Ok(warnings) => {
                    info!(changes = changes.len(), "applied");
                    debug!(?changes, "applied");
                    Answer {
                        response: Response::Ok { warnings },
                        settle: true,
                    }
                }
                Err(e) => Answer::done(error(&e.to_string())),
            },
            Command::List => Answer::of(self.listing(), Response::Listing),
            Command::Drain { drained } => {
                let warnings = self.set_drained(drained);
                Answer::done(Response::Ok { warnings })
            }
            Command::SyncedTable { request } => Answer::done(Response::SyncedTable {
                table: self.sync_hub().table_status(request),
            }),
            Command::Connections => Answer::of(self.connections(MAX_LISTED_CONNS), |conns| {
                Response::Connections { conns }
            }),
            Command::Zero { service } => Answer::of(self.zero(service), ok),
            Command::SetTimeouts { tcp, tcpfin, udp } => {
                Answer::of(self.set_timeouts(tcp, tcpfin, udp), ok)
            }
            Command::ApplyConfig { state, dry_run } => {
                diff_answer(self.apply_desired(&state, dry_run), dry_run)
            }
            Command::Reload { dry_run } => diff_answer(self.reload(config_file, dry_run), dry_run),
            Command::StartDaemon { daemon } => {
                let role = daemon.role;
                let ifn = daemon.mcast_ifn.clone();
                let answer = Answer::of(self.start_daemon(daemon), ok);
                if matches!(answer.response, Response::Ok { .. }) {
                    info!(?role, mcast_ifn = %ifn, "sync daemon started");
                }
                answer
            }
            Command::StopDaemon { role } => {
                let answer = Answer::of(self.stop_daemon(role), ok);
                if matches!(answer.response, Response::Ok { .. }) {
                    info!(?role, "sync daemon stopped");
                }
                answer
            }
        }
    }

    /// Re-reads the configuration file and applies the difference (SIGHUP, `xvsadm reload`).
    pub fn reload(
        &mut self,
        config_file: Option<&Path>,
        dry_run: bool,
    ) -> Result<(Diff, Vec<String>), ControllerError> {
        let path = config_file.ok_or(ControllerError::NoConfigFile)?;
        let desired = config_file::load(path)?;
        self.apply_desired(&desired, dry_run)
    }
}

/// The answer to a configuration applied as a difference.
fn diff_answer(result: Result<(Diff, Vec<String>), ControllerError>, dry_run: bool) -> Answer {
    match result {
        Ok((d, warnings)) => {
            let applied = !dry_run && !d.is_empty();
            if applied {
                info!(changes = d.lines.len(), "configuration applied");
                debug!(rules = ?d.lines, "configuration applied");
            }
            Answer {
                response: Response::Diff {
                    lines: d.lines,
                    applied,
                    warnings,
                },
                settle: applied,
            }
        }
        Err(e) => Answer::done(error(&e.to_string())),
    }
}
