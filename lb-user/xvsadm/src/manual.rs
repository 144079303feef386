//! `xvsadm --generate man|bash|zsh|fish` (hidden; for the Debian package): xvsadm(8) and the
//! shell completions, generated from the same definitions as `--help` so they cannot drift.
//!
//! xvsadm's help is ipvsadm's hand-formatted text (`lb_core::help`), so the manual page carries
//! that text verbatim and adds the option list clap knows from the parsers (`lb_core::rules::
//! Args` and the subcommands' own), one line each.

use std::io::Write;

use clap::{Command, CommandFactory};
use clap_complete::Shell;
use lb_core::{help, rules::Args};
use roff::{roman, Roff};
use xvsadm::{
    config_cli::ConfigArgs, drain::DrainArgs, import::ImportArgs, synced::SyncedArgs, top::TopArgs,
    watch::StatsArgs,
};

/// `xvsadm --generate WHAT`: writes it to stdout.
pub fn generate(what: &str) -> anyhow::Result<()> {
    let mut cmd = command();
    let out = &mut std::io::stdout().lock();
    let shell = match what {
        "man" => return man(cmd, out),
        "bash" => Shell::Bash,
        "zsh" => Shell::Zsh,
        "fish" => Shell::Fish,
        other => anyhow::bail!("--generate {other}: one of man, bash, zsh, fish"),
    };
    clap_complete::generate(shell, &mut cmd, "xvsadm", out);
    Ok(())
}

/// The whole command line as one clap command: ipvsadm's options, and xvs's subcommands.
fn command() -> Command {
    let config = ConfigArgs::command();
    Args::command()
        .about("ipvsadm's command line for xvs, the XDP Virtual Server")
        .long_about(
            "xvsadm drives xvsd, the xvs director daemon, through its control socket, with \
             ipvsadm's command line and listing formats: scripts and habits written for \
             ipvsadm work unchanged. It adds subcommands of its own: live views (stats, top), \
             configuration files (apply, reload, export), draining (drain), the sync state \
             (synced), migration from keepalived (import) and the real-server setup for \
             tunnels (realserver).",
        )
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand(
            StatsArgs::command()
                .name("stats")
                .about("Live per-service and per-real-server rates"),
        )
        .subcommand(
            TopArgs::command()
                .name("top")
                .about("Services and real servers with rates, refreshing in place"),
        )
        .subcommands(config.get_subcommands().cloned())
        .subcommand(
            DrainArgs::command()
                .name("drain")
                .about("Take the director or a real server out of service gently"),
        )
        .subcommand(
            SyncedArgs::command()
                .name("synced")
                .about("Whether the peers' connection tables are held"),
        )
        .subcommand(
            ImportArgs::command()
                .name("import")
                .about("Print a keepalived.conf as an xvs configuration file"),
        )
        .subcommand(
            Command::new("realserver")
                .about("Set up a real server for tunnelled traffic (runs xvs-realserver)"),
        )
}

/// Escapes a preformatted text for roff, line by line.
fn verbatim(roff: &mut Roff, text: &str) {
    roff.control("nf", []);
    for line in text.lines() {
        roff.text([roman(line)]);
    }
    roff.control("fi", []);
}

/// xvsadm(8).
fn man(cmd: Command, out: &mut dyn Write) -> anyhow::Result<()> {
    let man = clap_mangen::Man::new(cmd)
        .section("8")
        .manual("System Administration");
    man.render_title(out)?;
    man.render_name_section(out)?;
    let (synopsis, rest) = help::USAGE
        .strip_prefix("Usage:\n")
        .and_then(|u| u.split_once("\n\n"))
        .unwrap_or(("", help::USAGE));
    let mut roff = Roff::new();
    if !synopsis.is_empty() {
        roff.control("SH", ["SYNOPSIS"]);
        verbatim(&mut roff, synopsis);
    }
    roff.to_writer(out)?;
    man.render_description_section(out)?;

    let mut roff = Roff::new();
    roff.control("SH", ["COMMANDS AND OPTIONS"]);
    roff.text([roman("As xvsadm --help prints them:")]);
    verbatim(&mut roff, rest);
    roff.to_writer(out)?;
    man.render_options_section(out)?;

    let mut roff = Roff::new();
    roff.control("SH", ["SUBCOMMANDS"]);
    let config = ConfigArgs::command().render_long_help().to_string();
    for (name, text) in [
        ("stats", help::STATS_USAGE.to_string()),
        ("top", help::TOP_USAGE.to_string()),
        ("apply, reload, export", config),
        ("drain", help::DRAIN_USAGE.to_string()),
        ("synced", help::SYNCED_USAGE.to_string()),
        (
            "import",
            ImportArgs::command().render_long_help().to_string(),
        ),
    ] {
        roff.control("SS", [format!("xvsadm {name}").as_str()]);
        verbatim(&mut roff, &text);
    }
    roff.control("SS", ["xvsadm realserver"]);
    roff.text([roman(
        "Runs xvs-realserver, installed beside xvsadm, with the same arguments: see \
         xvsadm realserver --help.",
    )]);
    roff.control("SH", ["EXIT STATUS"]);
    roff.text([roman(
        "As ipvsadm: 0 on success, 2 for a command line that cannot be carried out, 1 when \
         xvsd refuses or cannot be reached. xvsadm synced: see above.",
    )]);
    roff.control("SH", ["ENVIRONMENT"]);
    roff.control("TP", []);
    roff.text([roman("XVS_SOCKET")]);
    roff.text([roman(
        "xvsd's control socket, as --socket (default /run/xvs/xvsd.sock).",
    )]);
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman("xvsd(8), ipvsadm(8), keepalived(8)")]);
    roff.to_writer(out)?;
    man.render_version_section(out)?;
    Ok(())
}
