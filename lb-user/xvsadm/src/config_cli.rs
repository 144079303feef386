//! xvsadm's configuration-file subcommands: `apply -f FILE [--dry-run]`, `reload [--dry-run]`,
//! `export`. Everything else on xvsadm's command line is ipvsadm's flags (`cli`); xvsadm hands
//! a command line to this parser when its first word (after an optional `--socket PATH`) is
//! one of these subcommands.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use lb_core::proto::default_socket;

/// xvsadm with a configuration-file subcommand.
#[derive(Parser, Debug)]
#[command(
    name = "xvsadm",
    version,
    about = "Apply xvs configuration files",
    long_about = "Apply xvs configuration files (TOML; see examples/xvs.toml). The file is the \
                  whole desired configuration: what is running and not in it is removed, what \
                  is the same is left alone (established connections stay on their real \
                  server). The difference is printed as ipvsadm rules and applied as one \
                  transaction; a file with an error changes nothing."
)]
pub struct ConfigArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ConfigCommand,
    /// Control socket of xvsd.
    #[arg(long, env = "XVS_SOCKET", default_value_os_t = default_socket(), global = true)]
    pub socket: PathBuf,
}

/// A configuration-file subcommand.
#[derive(Subcommand, Debug, PartialEq, Eq)]
pub enum ConfigCommand {
    /// Make the running configuration what FILE says: print the difference (ipvsadm rules) and
    /// apply it as one transaction.
    Apply {
        /// The configuration file.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
        /// Only print the difference.
        #[arg(long)]
        dry_run: bool,
    },
    /// Make xvsd re-read the file it was started with (`xvsd --config`) and apply the
    /// difference, as SIGHUP does.
    Reload {
        /// Only print the difference.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the running configuration as a configuration file.
    Export,
}

/// The summary printed after the rules: what happened, as a `#` comment so the output still
/// reads as ipvsadm rules.
pub fn summary(rules: usize, applied: bool, dry_run: bool) -> String {
    let plural = if rules == 1 { "" } else { "s" };
    match (rules, applied, dry_run) {
        (0, _, _) => "# no changes: the running configuration is the file's".to_string(),
        (n, _, true) => format!("# dry run: {n} change{plural}, nothing applied"),
        (n, true, false) => format!("# {n} change{plural} applied"),
        (n, false, false) => format!("# {n} change{plural}, not applied"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        std::iter::once("xvsadm")
            .chain(words.iter().copied())
            .map(String::from)
            .collect()
    }

    #[test]
    fn apply_and_reload_parse() {
        let a = ConfigArgs::try_parse_from(argv(&[
            "--socket",
            "/tmp/s",
            "apply",
            "-f",
            "x.toml",
            "--dry-run",
        ]))
        .unwrap();
        assert_eq!(a.socket, PathBuf::from("/tmp/s"));
        assert_eq!(
            a.command,
            ConfigCommand::Apply {
                file: "x.toml".into(),
                dry_run: true
            }
        );
        let r = ConfigArgs::try_parse_from(argv(&["reload"])).unwrap();
        assert_eq!(r.command, ConfigCommand::Reload { dry_run: false });
        assert!(
            ConfigArgs::try_parse_from(argv(&["apply"])).is_err(),
            "apply needs -f"
        );
    }

    #[test]
    fn summaries() {
        assert!(summary(0, false, false).contains("no changes"));
        assert_eq!(summary(1, true, false), "# 1 change applied");
        assert_eq!(
            summary(3, false, true),
            "# dry run: 3 changes, nothing applied"
        );
    }
}
