//! xvsadm: ipvsadm's command line for xvs.
//!
//! Exit status as ipvsadm: 0 on success, 2 for a command line that cannot be carried out
//! (ipvsadm's `fail(2, ...)`), 1 when xvsd refuses or cannot be reached.

mod manual;

use std::{ffi::OsString, io::Read, process::ExitCode};

use anyhow::Context;
use clap::Parser;
use lb_core::{
    client as control, config_file, help, listing,
    model::{Config, Quorum, Service},
    names::{self, Names, Numeric, Resolved},
    proto::{Command, Listing, Request, Response},
    rules::{self, Action, Args, CliError},
    state::DesiredState,
};
use xvsadm::config_cli::{self, ConfigArgs, ConfigCommand};
use xvsadm::watch::{self, StatsArgs};

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    // Hidden, for packaging: the manual page or a shell's completions.
    if argv.get(1).is_some_and(|a| a == "--generate") {
        let what = argv.get(2).and_then(|w| w.to_str()).unwrap_or("");
        return finish(manual::generate(what));
    }
    // `xvsadm realserver ...` sets up a real server (no xvsd involved): a parser of its own.
    if argv.get(1).is_some_and(|a| a == "realserver") {
        return realserver(argv.into_iter().skip(2));
    }
    // Subcommands of xvs's own (`xvsadm [--socket PATH] stats ...`); everything else is
    // ipvsadm's command line, which has no words of its own.
    if let Some((name, rest)) = subcommand(&argv) {
        let rest = std::iter::once(OsString::from(format!("xvsadm {name}"))).chain(rest);
        return finish(match name {
            "stats" => stats(rest),
            "top" => top(rest),
            "drain" => drain(rest),
            "synced" => return synced(rest),
            "import" => import(rest),
            "apply" | "reload" | "export" => config(name, rest),
            _ => unreachable!("subcommand() knows only these"),
        });
    }
    // ipvsadm with no argument lists the table (names resolved).
    let argv = if argv.len() <= 1 {
        vec![OsString::from("xvsadm"), OsString::from("-L")]
    } else {
        argv
    };
    let args = match Args::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(2);
        }
    };
    finish(run(&args))
}

/// `xvsadm realserver ARGS`: runs xvs-realserver (installed beside xvsadm, or found on PATH),
/// which loads the decapsulator; xvsadm itself has no eBPF loader.
fn realserver(args: impl Iterator<Item = OsString>) -> ExitCode {
    use std::os::unix::process::CommandExt;
    const NAME: &str = "xvs-realserver";
    let beside = std::env::current_exe()
        .ok()
        .map(|p| p.with_file_name(NAME))
        .filter(|p| p.exists());
    let program = beside.map_or_else(|| OsString::from(NAME), OsString::from);
    // exec only returns on failure.
    let err = std::process::Command::new(&program).args(args).exec();
    eprintln!(
        "xvsadm realserver: cannot run {}: {err} (it is installed beside xvsadm)",
        program.to_string_lossy()
    );
    ExitCode::FAILURE
}

/// xvs's subcommands: their name, and their arguments with a `--socket PATH` given before the
/// name moved after it.
fn subcommand(argv: &[OsString]) -> Option<(&'static str, Vec<OsString>)> {
    const SUBCOMMANDS: [&str; 8] = [
        "stats", "top", "apply", "reload", "export", "drain", "synced", "import",
    ];
    let mut global = Vec::new();
    let mut i = 1;
    while i < argv.len() {
        let a = argv[i].to_str()?;
        if a == "--socket" {
            global.extend(argv.get(i..i + 2)?.iter().cloned());
            i += 2;
        } else if a.starts_with("--socket=") {
            global.push(argv[i].clone());
            i += 1;
        } else {
            let name = SUBCOMMANDS.into_iter().find(|n| *n == a)?;
            return Some((name, argv[i + 1..].iter().cloned().chain(global).collect()));
        }
    }
    None
}

fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xvsadm: {e:#}");
            if e.downcast_ref::<CliError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn send(args_socket: &std::path::Path, command: Command) -> anyhow::Result<Response> {
    let resp = control::request(args_socket, &Request::new(command))?;
    if let Response::Error { message } = &resp {
        anyhow::bail!("{message}");
    }
    Ok(resp)
}

fn list(socket: &std::path::Path) -> anyhow::Result<Listing> {
    match send(socket, Command::List)? {
        Response::Listing(l) => Ok(l),
        other => anyhow::bail!("unexpected answer: {other:?}"),
    }
}

/// Names for these addresses: none with `-n`, else looked up within the resolver budget.
fn names_for(numeric: bool, ips: Vec<std::net::IpAddr>) -> Box<dyn Names> {
    if numeric {
        Box::new(Numeric)
    } else {
        Box::new(Resolved::lookup(ips, names::RESOLVE_BUDGET))
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let action = args.action()?;
    let socket = args.socket.as_path();
    match action {
        Action::Help => {
            println!("{}\n{}", help::version(), help::USAGE);
            Ok(())
        }
        Action::Version => {
            println!("{}", help::version());
            Ok(())
        }
        Action::Apply(changes) => apply(send(socket, Command::Apply { changes })?),
        Action::Restore => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            let restore = rules::parse_restore(&text)?;
            if !restore.changes.is_empty() || restore.after.is_empty() {
                apply(send(
                    socket,
                    Command::Apply {
                        changes: restore.changes,
                    },
                )?)?;
            }
            // Then the daemon and timeout lines, in order, as ipvsadm's restore runs them.
            for (line, action) in restore.after {
                let command = match action {
                    Action::StartDaemon(daemon) => Command::StartDaemon { daemon },
                    Action::StopDaemon(role) => Command::StopDaemon { role },
                    Action::SetTimeouts { tcp, tcpfin, udp } => {
                        Command::SetTimeouts { tcp, tcpfin, udp }
                    }
                    other => anyhow::bail!("line {line}: not restorable: {other:?}"),
                };
                send(socket, command)
                    .and_then(apply)
                    .with_context(|| format!("line {line} (the rules before were applied)"))?;
            }
            Ok(())
        }
        Action::Zero { service } => apply(send(socket, Command::Zero { service })?),
        Action::SetTimeouts { tcp, tcpfin, udp } => {
            apply(send(socket, Command::SetTimeouts { tcp, tcpfin, udp })?)
        }
        Action::ListConnections {
            json,
            numeric,
            persistent_conn,
        } => match send(socket, Command::Connections)? {
            Response::Connections { conns } => {
                if json {
                    println!("{}", serde_json::to_string_pretty(&conns)?);
                } else {
                    let ips = conns
                        .iter()
                        .flat_map(|c| [c.client.ip(), c.virtual_addr.ip(), c.real.ip()])
                        .chain(conns.iter().filter_map(|c| c.local.map(|l| l.ip())))
                        .collect();
                    let names = names_for(numeric, ips);
                    print!(
                        "{}",
                        listing::render_connections(&conns, persistent_conn, names.as_ref())
                    );
                }
                Ok(())
            }
            other => anyhow::bail!("unexpected answer: {other:?}"),
        },
        Action::StartDaemon(daemon) => apply(send(socket, Command::StartDaemon { daemon })?),
        Action::StopDaemon(role) => apply(send(socket, Command::StopDaemon { role })?),
        Action::ListDaemons { json } => {
            let daemons = list(socket)?.sync_daemons;
            if json {
                println!("{}", serde_json::to_string_pretty(&daemons)?);
            } else {
                print!("{}", lb_core::sync::daemon::render_daemons(&daemons));
            }
            Ok(())
        }
        Action::ListTimeouts { json } => {
            let t = list(socket)?.timeouts;
            if json {
                println!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                print!("{}", listing::render_timeouts(&t));
            }
            Ok(())
        }
        Action::Save { numeric } => {
            let config = config_of(&list(socket)?);
            let names = names_for(numeric, rules::addresses(&config));
            print!("{}", rules::save_named(&config, names.as_ref()));
            Ok(())
        }
        Action::ListLaddrs { service, json } => {
            let mut l = list(socket)?;
            if let Some(key) = service {
                l.services.retain(|s| s.key == key);
                if l.services.is_empty() {
                    anyhow::bail!("No such service: {key}");
                }
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&listing::laddrs_json(&l))?
                );
            } else {
                print!("{}", listing::render_laddrs(&l.services));
            }
            Ok(())
        }
        Action::List {
            opts,
            service,
            json,
        } => {
            let mut l = list(socket)?;
            if let Some(key) = service {
                l.services.retain(|s| s.key == key);
                if l.services.is_empty() {
                    anyhow::bail!("No such service: {key}");
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&l)?);
                return Ok(());
            }
            let names = names_for(opts.numeric, listing::addresses(&l));
            match service {
                Some(_) => print!(
                    "{}",
                    listing::render_one(&l.services[0], opts, names.as_ref())
                ),
                None => print!("{}", listing::render(&l, opts, names.as_ref())),
            }
            Ok(())
        }
    }
}

/// `xvsadm stats [--watch] [--once] [--interval SECS] [--json]`.
/// `xvsadm synced`: see lb_core::help::SYNCED_USAGE. Exits 0 when the peers' tables are held
/// (or no peer answered), 1 while waiting, 2 without a backup sync daemon; errors as ever.
fn synced(argv: impl Iterator<Item = OsString>) -> ExitCode {
    use xvsadm::synced::{exit_status, SyncedArgs};
    let run = || -> anyhow::Result<u8> {
        let args = SyncedArgs::try_parse_from(argv).map_err(|e| CliError(e.to_string()))?;
        if args.help {
            print!("{}", help::SYNCED_USAGE);
            return Ok(0);
        }
        let wait = args.wait()?;
        let start = std::time::Instant::now();
        let mut request = args.request;
        loop {
            let table = match send(&args.socket, Command::SyncedTable { request })? {
                Response::SyncedTable { table } => table,
                other => anyhow::bail!("unexpected answer: {other:?}"),
            };
            request = false;
            let status = exit_status(&table);
            if status != 1 || start.elapsed() >= wait {
                if !args.quiet {
                    println!("{}", table.describe());
                }
                return Ok(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    match run() {
        Ok(status) => ExitCode::from(status),
        Err(e) => finish(Err(e)),
    }
}

/// `xvsadm import keepalived FILE`: see xvsadm::import.
fn import(argv: impl Iterator<Item = OsString>) -> anyhow::Result<()> {
    use xvsadm::import::{self, ImportArgs};
    match ImportArgs::try_parse_from(argv) {
        Ok(args) => import::run(&args),
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => {
            print!("{e}");
            Ok(())
        }
        Err(e) => Err(CliError(e.to_string()).into()),
    }
}

/// `xvsadm drain`: see lb_core::help::DRAIN_USAGE.
fn drain(argv: impl Iterator<Item = OsString>) -> anyhow::Result<()> {
    use xvsadm::drain::{self, DrainArgs, Target};
    let args = DrainArgs::try_parse_from(argv).map_err(|e| CliError(e.to_string()))?;
    if args.help {
        print!("{}", help::DRAIN_USAGE);
        return Ok(());
    }
    let plan = args.plan()?;
    let warn = |resp: Response| {
        if let Response::Ok { warnings } = resp {
            for w in warnings {
                eprintln!("xvsadm: warning: {w}");
            }
        }
    };
    match plan.target {
        Target::Director => {
            warn(send(
                &args.socket,
                Command::Drain {
                    drained: !args.cancel,
                },
            )?);
            if args.cancel {
                println!("director: drain ended; announcing again");
                return Ok(());
            }
            println!("director: drained; its VIPs are withdrawn from the routers");
        }
        Target::Real { service, addr } => {
            if drain::real_of(&list(&args.socket)?, &service, addr).is_none() {
                return Err(CliError(format!("No such destination: {addr}")).into());
            }
            warn(send(
                &args.socket,
                Command::Apply {
                    changes: vec![drain::quiesce(service, addr)],
                },
            )?);
            println!("real server {addr}: weight 0, no new connections");
        }
    }
    if args.no_wait {
        return Ok(());
    }
    let start = std::time::Instant::now();
    let left = loop {
        let left = drain::remaining(&list(&args.socket)?, &plan.target);
        println!(
            "{}",
            drain::progress(&plan.target, left, start.elapsed(), plan.timeout)
        );
        if left == 0 || start.elapsed() >= plan.timeout {
            break left;
        }
        std::thread::sleep(
            plan.interval
                .min(plan.timeout.saturating_sub(start.elapsed())),
        );
    };
    match plan.target {
        Target::Director => {
            if left > 0 {
                anyhow::bail!("director: {left} connections left after the timeout");
            }
            println!("director: no connection left; it can be taken down");
        }
        Target::Real { service, addr } => {
            if args.keep {
                println!("real server {addr}: kept at weight 0 ({left} connections left)");
            } else {
                warn(send(
                    &args.socket,
                    Command::Apply {
                        changes: vec![lb_core::model::Change::DeleteReal { service, addr }],
                    },
                )?);
                println!("real server {addr}: removed ({left} connections were left)");
            }
        }
    }
    Ok(())
}

fn stats(argv: impl Iterator<Item = OsString>) -> anyhow::Result<()> {
    let args = StatsArgs::try_parse_from(argv).map_err(|e| CliError(e.to_string()))?;
    if args.help {
        print!("{}", help::STATS_USAGE);
        return Ok(());
    }
    let period = args.period().map_err(CliError)?;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    loop {
        let listing = list(&args.socket)?;
        let rows = watch::frame(&listing);
        if args.json {
            println!("{}", serde_json::to_string(&rows)?);
        } else {
            // A terminal gets a fresh screen per frame; a pipe gets frames one after another.
            if tty && !args.once {
                print!("\x1b[H\x1b[2J");
            }
            print!(
                "{}",
                watch::render(&rows, &watch::table_line(&listing), period)
            );
            if !tty && !args.once {
                println!();
            }
        }
        if args.once {
            return Ok(());
        }
        std::thread::sleep(period);
    }
}

/// `xvsadm top`: see lb_core::help::TOP_USAGE.
fn top(argv: impl Iterator<Item = OsString>) -> anyhow::Result<()> {
    use xvsadm::top::{run_batch, run_terminal, TopArgs};
    let args = TopArgs::try_parse_from(argv).map_err(|e| CliError(e.to_string()))?;
    if args.help {
        print!("{}", help::TOP_USAGE);
        return Ok(());
    }
    let period = args.period().map_err(CliError)?;
    let frames = args.frames().map_err(CliError)?;
    let socket = args.socket.clone();
    let list = || list(&socket);
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::io::IsTerminal::is_terminal(&std::io::stdin());
    if args.batch || !tty {
        run_batch(&args, period, frames, list, &mut std::io::stdout().lock())
    } else {
        run_terminal(&args, period, frames, list)
    }
}

fn apply(resp: Response) -> anyhow::Result<()> {
    if let Response::Ok { warnings } = resp {
        for w in warnings {
            eprintln!("xvsadm: warning: {w}");
        }
    }
    Ok(())
}

/// `apply`, `reload`, `export`: the configuration file.
fn config(name: &str, rest: impl Iterator<Item = OsString>) -> anyhow::Result<()> {
    let argv = [OsString::from("xvsadm"), OsString::from(name)]
        .into_iter()
        .chain(rest.skip(1));
    let args = match ConfigArgs::try_parse_from(argv) {
        Ok(a) => a,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            print!("{e}");
            return Ok(());
        }
        Err(e) => return Err(CliError(e.to_string()).into()),
    };
    let socket = args.socket.as_path();
    let (resp, dry_run) = match &args.command {
        ConfigCommand::Apply { file, dry_run } => {
            let state = config_file::load(file)?;
            let command = Command::ApplyConfig {
                state,
                dry_run: *dry_run,
            };
            (send(socket, command)?, *dry_run)
        }
        ConfigCommand::Reload { dry_run } => (
            send(socket, Command::Reload { dry_run: *dry_run })?,
            *dry_run,
        ),
        ConfigCommand::Export => {
            let l = list(socket)?;
            let state = DesiredState {
                config: config_of(&l),
                timeouts: l.timeouts,
            };
            println!("# xvs configuration, exported by xvsadm (xvsadm apply -f FILE applies it)");
            print!("{}", config_file::render(&state));
            return Ok(());
        }
    };
    let Response::Diff {
        lines,
        applied,
        warnings,
    } = resp
    else {
        anyhow::bail!("unexpected answer: {resp:?}");
    };
    for line in &lines {
        println!("{line}");
    }
    println!("{}", config_cli::summary(lines.len(), applied, dry_run));
    for w in warnings {
        eprintln!("xvsadm: warning: {w}");
    }
    Ok(())
}

/// The configuration part of a listing, for -S: as configured, whatever health did to the
/// tables.
fn config_of(l: &Listing) -> Config {
    Config::from_services(
        l.services
            .iter()
            .map(|s| Service {
                key: s.key,
                matches: s.matches.clone(),
                scheduler: s.scheduler,
                flags: s.flags,
                persistence: s.persistence,
                reals: s
                    .reals
                    .iter()
                    .map(|r| lb_core::model::RealServer {
                        addr: r.addr,
                        weight: r.weight,
                        forward: r.forward,
                        u_threshold: r.u_threshold,
                        l_threshold: r.l_threshold,
                        check: r.check.clone(),
                    })
                    .collect(),
                check: s.check.clone(),
                sorry_server: s.sorry_server.as_ref().map(|r| r.addr),
                quorum: s.quorum.map_or_else(Default::default, |q| Quorum {
                    quorum: q.quorum,
                    hysteresis: q.hysteresis,
                }),
                laddrs: s.laddrs.clone(),
            })
            .collect(),
    )
}
