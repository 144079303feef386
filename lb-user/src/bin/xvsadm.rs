//! xvsadm: ipvsadm's command line for xvs.
use std::{io::Read, process::ExitCode};

use clap::Parser;
use lb_user::{
    cli::{self, Action, Args},
    control, listing,
    model::{Config, Service},
    proto::{Command, Listing, Request, Response},
};

fn main() -> ExitCode {
    // Subcommands with their own parsers; the rest is ipvsadm's syntax.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "realserver")
    {
        return lb_user::realserver::main(std::env::args_os().skip(1));
    }
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xvsadm: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let action = args.action()?;
    let send = |command: Command| -> anyhow::Result<Response> {
        let resp = control::request(&args.socket, &Request::new(command))?;
        if let Response::Error { message } = &resp {
            anyhow::bail!("{message}");
        }
        Ok(resp)
    };
    let list = || -> anyhow::Result<Listing> {
        match send(Command::List)? {
            Response::Listing(l) => Ok(l),
            other => anyhow::bail!("unexpected answer: {other:?}"),
        }
    };
    match action {
        Action::Apply(changes) => apply(send(Command::Apply { changes })?),
        Action::Restore => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            let changes = cli::parse_rules(&text)?;
            apply(send(Command::Apply { changes })?)
        }
        Action::Zero => apply(send(Command::Zero)?),
        Action::SetTimeouts { tcp, tcpfin, udp } => {
            apply(send(Command::SetTimeouts { tcp, tcpfin, udp })?)
        }
        Action::ListConnections { json } => match send(Command::Connections)? {
            Response::Connections { conns } => {
                if json {
                    println!("{}", serde_json::to_string_pretty(&conns)?);
                } else {
                    print!("{}", listing::render_connections(&conns));
                }
                Ok(())
            }
            other => anyhow::bail!("unexpected answer: {other:?}"),
        },
        Action::ListTimeouts => {
            let t = list()?.timeouts;
            println!("Timeout (tcp tcpfin udp): {} {} {}", t.tcp, t.tcpfin, t.udp);
            Ok(())
        }
        Action::Save => {
            print!("{}", cli::save(&config_of(&list()?)));
            Ok(())
        }
        Action::List {
            opts,
            service,
            json,
        } => {
            let mut l = list()?;
            if let Some(key) = service {
                l.services.retain(|s| s.key == key);
                if l.services.is_empty() {
                    anyhow::bail!("No such service: {key}");
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&l)?);
            } else {
                print!("{}", listing::render(&l, opts));
            }
            Ok(())
        }
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

/// The configuration part of a listing, for -S.
fn config_of(l: &Listing) -> Config {
    Config {
        services: l
            .services
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
                    .map(|r| lb_user::model::RealServer {
                        addr: r.addr,
                        weight: r.weight,
                        forward: r.forward,
                        u_threshold: r.u_threshold,
                        l_threshold: r.l_threshold,
                    })
                    .collect(),
            })
            .collect(),
    }
}
