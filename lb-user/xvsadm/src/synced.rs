//! `xvsadm synced`: whether this director holds its peers' connection tables (xvsd asks for
//! them when its backup sync daemon starts and whenever the sync interface's carrier comes
//! back; lb_core::sync::table). Made for keepalived's `vrrp_script`: a director that does not
//! hold them yet fails the check, so it does not take the VIP and reset the connections its
//! peer took over meanwhile.

use std::time::Duration;

use clap::Parser;

use lb_core::{
    check::parse_duration_ms, proto::default_socket, rules::CliError, sync::table::TableStatus,
};

/// `xvsadm synced` options (`--help` prints [`lb_core::help::SYNCED_USAGE`]).
#[derive(Parser, Debug, Clone)]
#[command(
    name = "xvsadm synced",
    disable_help_flag = true,
    disable_version_flag = true
)]
pub struct SyncedArgs {
    /// Ask the peers for their tables again first.
    #[arg(long)]
    pub request: bool,
    /// Wait up to this long for the tables (default: answer at once).
    #[arg(long, value_name = "DURATION")]
    pub wait: Option<String>,
    /// Print nothing; the exit status says it.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Control socket of xvsd.
    #[arg(long, env = "XVS_SOCKET", default_value_os_t = default_socket())]
    pub socket: std::path::PathBuf,
    /// Print the help.
    #[arg(short = 'h', long)]
    pub help: bool,
}

impl SyncedArgs {
    /// How long to wait, checked.
    pub fn wait(&self) -> Result<Duration, CliError> {
        match &self.wait {
            None => Ok(Duration::ZERO),
            Some(w) => parse_duration_ms(w)
                .map(Duration::from_millis)
                .map_err(|e| CliError(format!("--wait {w}: {e}"))),
        }
    }
}

/// The exit status of a state: 0 the tables are held (or no peer answered: nothing to wait
/// for), 1 still waiting, 2 no backup sync daemon runs.
pub fn exit_status(status: &TableStatus) -> u8 {
    match status {
        TableStatus::Held { .. } | TableStatus::Alone { .. } => 0,
        TableStatus::Waiting { .. } => 1,
        TableStatus::NoBackup => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_status_says_whether_the_director_may_take_traffic() {
        let held = TableStatus::Held {
            peers: Default::default(),
            missing: 0,
            after_ms: 3,
        };
        assert_eq!(exit_status(&held), 0);
        assert_eq!(exit_status(&TableStatus::Alone { tries: 3 }), 0);
        assert_eq!(
            exit_status(&TableStatus::Waiting {
                for_ms: 10,
                tries: 1
            }),
            1
        );
        assert_eq!(exit_status(&TableStatus::NoBackup), 2);
    }

    #[test]
    fn options_parse_and_a_bad_wait_is_refused() {
        let a = SyncedArgs::try_parse_from(["xvsadm synced", "--request", "--wait", "5s"]).unwrap();
        assert!(a.request);
        assert_eq!(a.wait().unwrap(), Duration::from_secs(5));
        let a = SyncedArgs::try_parse_from(["xvsadm synced", "--wait", "soon"]).unwrap();
        assert!(a.wait().is_err());
        assert_eq!(
            SyncedArgs::try_parse_from(["xvsadm synced"])
                .unwrap()
                .wait()
                .unwrap(),
            Duration::ZERO
        );
    }
}
