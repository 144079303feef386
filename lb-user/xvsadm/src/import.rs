//! `xvsadm import keepalived FILE [-o OUT] [--config-id ID]`: a keepalived.conf's virtual
//! servers as an xvs configuration file (lb_core::import::keepalived does the work). It only
//! prints (or writes OUT): nothing is applied, and a file that does not convert writes nothing.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use lb_core::import::{keepalived, Disk};

/// `xvsadm import`.
#[derive(Parser, Debug)]
#[command(
    name = "xvsadm import",
    disable_version_flag = true,
    about = "Print another load balancer's configuration as an xvs configuration file",
    long_about = "Print another load balancer's configuration as an xvs configuration file \
                  (TOML, examples/xvs.toml), with a `#` comment for every setting that cannot be \
                  carried over and why. Nothing is applied: read the file, then \
                  `xvsadm apply -f FILE --dry-run`."
)]
pub struct ImportArgs {
    /// Where the configuration comes from.
    #[command(subcommand)]
    pub from: ImportFrom,
    /// Accepted as by every xvsadm command (`xvsadm --socket PATH import ...`), unused: the
    /// import asks no xvsd.
    #[arg(long, global = true, hide = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

/// The configurations `xvsadm import` reads.
#[derive(Subcommand, Debug, PartialEq, Eq)]
pub enum ImportFrom {
    /// keepalived.conf: its virtual_server and virtual_server_group blocks (real servers,
    /// checkers, quorum, sorry server), includes followed; VRRP and the rest stay keepalived's.
    Keepalived {
        /// keepalived's configuration file.
        file: PathBuf,
        /// Write the configuration to OUT instead of standard output (only once all of it
        /// converted).
        #[arg(short = 'o', long = "output", value_name = "OUT")]
        output: Option<PathBuf>,
        /// keepalived's `-i ID`: read its `@ID` lines (without it, as keepalived without -i).
        #[arg(long, value_name = "ID")]
        config_id: Option<String>,
    },
}

/// Converts and prints (or writes) the configuration.
pub fn run(args: &ImportArgs) -> anyhow::Result<()> {
    let ImportFrom::Keepalived {
        file,
        output,
        config_id,
    } = &args.from;
    let options = keepalived::Options {
        config_id: config_id.clone(),
    };
    let text = keepalived::import(&Disk, file, &options)?;
    match output {
        None => print!("{text}"),
        Some(out) => {
            // Written aside and renamed, so OUT is either the old file or the whole new one.
            let tmp = out.with_extension("xvs-import.tmp");
            std::fs::write(&tmp, &text).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, out)
                .with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse() {
        let a = ImportArgs::try_parse_from([
            "xvsadm import",
            "keepalived",
            "/etc/keepalived/keepalived.conf",
            "-o",
            "xvs.toml",
            "--config-id",
            "lb1",
        ])
        .unwrap();
        assert_eq!(
            a.from,
            ImportFrom::Keepalived {
                file: "/etc/keepalived/keepalived.conf".into(),
                output: Some("xvs.toml".into()),
                config_id: Some("lb1".into()),
            }
        );
        // A --socket given before `import` is moved after it, as for every subcommand.
        let a = ImportArgs::try_parse_from([
            "xvsadm import",
            "keepalived",
            "k.conf",
            "--socket",
            "/run/xvs/xvsd.sock",
        ])
        .unwrap();
        assert_eq!(a.socket, Some("/run/xvs/xvsd.sock".into()));
        assert!(ImportArgs::try_parse_from(["xvsadm import", "keepalived"]).is_err());
        assert!(ImportArgs::try_parse_from(["xvsadm import", "haproxy", "x.cfg"]).is_err());
    }
}
