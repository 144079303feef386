//! xvsd: the xvs director daemon.
use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clap::Parser;
use lb_user::{
    access::SocketAccess,
    daemon::{self, DaemonOptions},
    dataplane::{pin, AttachMode},
    kernel_log::KernelLog,
    proto::default_socket,
};

/// The xvs director daemon: loads the XDP program on an interface and serves xvsadm.
///
/// The program, its XDP link and its maps are pinned in bpffs (--pin-dir): when xvsd exits or
/// dies the director keeps forwarding with its last tables, and the next xvsd adopts it (a new
/// build's program replaces the old one on the link, keeping connections and counters).
/// `xvsd --cleanup --iface IF` detaches it and removes the pins.
///
/// `--iface` given more than once runs one director on several interfaces (two arms: clients
/// on one, NAT or FULLNAT real servers on another): one program and one set of maps, attached
/// to each. The first interface names the director (its pin directory and state file), so it
/// should stay first across restarts; an interface added on a restart is attached, one left
/// out is detached.
#[derive(Parser, Debug)]
#[command(name = "xvsd", version)]
struct Opts {
    /// Interface to attach the director to; repeat it for a director on several interfaces
    /// (two arms). The first names the director: its default pin directory and state file.
    #[arg(long, required = true, value_name = "IFACE")]
    iface: Vec<String>,
    /// XDP attach mode of a fresh attachment (an adopted link keeps its mode).
    #[arg(long, value_enum, default_value = "native")]
    xdp_mode: AttachMode,
    /// Where the links, program and maps are pinned (bpffs; default /sys/fs/bpf/xvs/IFACE
    /// after the first --iface, or /sys/fs/bpf/xvs/netns/NAME/IFACE in another network
    /// namespace than the host's, mounting bpffs on /sys/fs/bpf if nothing is mounted there).
    /// The first interface's link is pinned as `link`, every other's as `link-IFACE`.
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// Replace a pinned data plane of an incompatible layout instead of refusing to start: it
    /// is detached, and its connection table, persistence templates, counters and tables are
    /// lost.
    #[arg(long)]
    force_reload: bool,
    /// Detach the pinned director from every interface it is attached to, remove its pins,
    /// and exit (refused while an xvsd runs on them). Forwarding stops.
    #[arg(long)]
    cleanup: bool,
    /// Serve Prometheus metrics on ADDR:PORT (GET /metrics).
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<SocketAddr>,
    /// Control socket (root only, unless --socket-group). Default /run/xvs/xvsd.sock, or
    /// /run/xvs/netns/NAME/xvsd.sock in another network namespace than the host's.
    #[arg(long, env = "XVS_SOCKET", default_value_os_t = default_socket())]
    socket: PathBuf,
    /// Members of this group (name or gid) may use the control socket too: it is made mode
    /// 0660 and owned by the group, and every client's groups are checked.
    #[arg(long, value_name = "GROUP")]
    socket_group: Option<String>,
    /// Configuration file (TOML, see examples/xvs.toml): the configuration at start (it wins
    /// over the saved state, which is rewritten from it); SIGHUP or `xvsadm reload` re-read it
    /// and apply the difference.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where every accepted change is saved (atomically, before it is acknowledged), as
    /// DIR/IFACE.json (the first --iface); without --config, xvsd restores it at start. Default /var/lib/xvs, or
    /// /var/lib/xvs/netns/NAME when xvsd runs in another network namespace than the host's.
    #[arg(long, value_name = "DIR", default_value_os_t = lb_user::state::default_dir())]
    state_dir: PathBuf,
    /// Forget the saved state and start empty (or from --config).
    #[arg(long)]
    reset_state: bool,
    /// Connection-table capacity (entries, 1024..=33554432); the least recently used entry makes
    /// room when full.
    #[arg(long, default_value_t = lb_common::DEFAULT_CONN_ENTRIES,
          value_parser = clap::value_parser!(u32).range(lb_common::MIN_CONN_ENTRIES as i64..=lb_common::MAX_CONN_ENTRIES as i64))]
    conn_table_size: u32,
    /// Room for NAT and FULLNAT connections' ways back (entries, 1024..=33554432; default: the
    /// --conn-table-size): preallocated, about 150 bytes each, so a director without NAT or
    /// FULLNAT real servers can spare the memory with 1024. When it is full, a new NAT
    /// connection's replies are not translated (conn_insert_failed) and a new FULLNAT connection
    /// is refused (drop_fullnat_no_port).
    #[arg(long, value_name = "ENTRIES",
          value_parser = clap::value_parser!(u32).range(lb_common::MIN_CONN_ENTRIES as i64..=lb_common::MAX_CONN_ENTRIES as i64))]
    nat_table_size: Option<u32>,
    /// Scheduler slots shared by all services' tables (u32 each): an mh service takes
    /// --mh-table-size of them, a load-aware one --plan-len, sh/dh/lblc/lblcr 256
    /// (at most 67108864).
    #[arg(long, default_value_t = lb_common::DEFAULT_SCHED_SLOTS,
          value_parser = clap::value_parser!(u32).range(1..=lb_common::MAX_SCHED_SLOTS as i64))]
    sched_slots: u32,
    /// Maglev (mh) table size, a prime (Katran: 65537; Cilium: 16381; IPVS: 4093).
    #[arg(long, default_value_t = lb_user::scheduler::maglev::DEFAULT_SIZE, value_parser = parse_mh_size)]
    mh_table_size: usize,
    /// New connections a load-aware scheduler (lc wlc sed nq fo ovf twos) plans per
    /// refresh (every 100 ms when the live connection counts moved).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=65536))]
    plan_len: u32,
    /// Outer source address of tunnelled packets, one per family (repeat for IPv4 and IPv6).
    /// Default: the address the kernel's FIB prefers toward each real server.
    #[arg(long = "tun-src", value_name = "ADDR")]
    tun_src: Vec<std::net::IpAddr>,
    /// What the XDP programs log (aya-log), shown with target `xvs_director` whatever RUST_LOG
    /// says: debug = every dropped packet with its reason, trace = every packet. Off by
    /// default: then the logging code is removed at load and costs nothing.
    #[arg(long, value_enum, default_value = "off", value_name = "LEVEL")]
    kernel_log: KernelLog,
    /// Log each new FULLNAT connection in one line: client, VIP, local address and port, real
    /// server (the real server sees only the local address).
    #[arg(long)]
    audit_fullnat: bool,
    /// Announce the VIPs whose services have their quorum (--quorum) as blackhole host routes
    /// in this kernel routing table, for the local BGP daemon (BIRD, FRR) to export to the
    /// routers; withdraw them when no service on the VIP has it. The table is xvsd's alone, and
    /// no ip rule should look it up. With --cleanup: withdraw them all.
    #[arg(long, value_name = "TABLE", value_parser = parse_announce_table)]
    announce_table: Option<u32>,
    /// Print the manual page or a shell's completions, generated from these options, and exit
    /// (packaging: `cargo xtask deb`).
    #[arg(long, value_enum, hide = true, exclusive = true, value_name = "WHAT")]
    generate: Option<Generated>,
}

/// What `xvsd --generate` prints.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Generated {
    /// xvsd(8), roff.
    Man,
    /// Completions for bash.
    Bash,
    /// Completions for zsh.
    Zsh,
    /// Completions for fish.
    Fish,
}

/// Writes the manual page or the completions of [`Opts`] to stdout, so they cannot drift from
/// `--help`.
fn generate(what: Generated) -> anyhow::Result<()> {
    use clap::CommandFactory;
    use clap_complete::Shell;
    let mut cmd = Opts::command();
    let out = &mut std::io::stdout().lock();
    let shell = match what {
        Generated::Man => {
            return clap_mangen::Man::new(cmd)
                .section("8")
                .manual("System Administration")
                .render(out)
                .context("writing the manual page");
        }
        Generated::Bash => Shell::Bash,
        Generated::Zsh => Shell::Zsh,
        Generated::Fish => Shell::Fish,
    };
    clap_complete::generate(shell, &mut cmd, "xvsd", out);
    Ok(())
}

/// A routing table xvsd may own: not 0 (unspecified) nor the kernel's default, main and local
/// tables (253-255), whose routes would forward packets.
fn parse_announce_table(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{e}"))?;
    match n {
        0 | 253..=255 => Err(format!(
            "table {n} is the kernel's own (0 unspecified, 253 default, 254 main, 255 local): \
             give xvsd a table of its own, such as 100"
        )),
        n => Ok(n),
    }
}

fn parse_mh_size(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|e| format!("{e}"))?;
    lb_user::scheduler::maglev::validate_size(n).map_err(|e| e.to_string())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let opts = Opts::parse();
    if let Some(what) = opts.generate {
        return generate(what);
    }
    let mut filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if let Some(d) = opts.kernel_log.directive() {
        filter = filter.add_directive(d.parse().context("--kernel-log")?);
    }
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(filter)
        .init();
    let (iface, more_ifaces) = daemon::split_interfaces(&opts.iface)?;
    let pin_dir = opts
        .pin_dir
        .clone()
        .unwrap_or_else(|| pin::default_dir(iface));
    if opts.cleanup {
        if let Some(table) = opts.announce_table {
            let announcer = lb_user::announce::Announcer::new(table)?;
            let plan = announcer
                .reconcile(&Default::default())
                .await
                .with_context(|| format!("withdrawing the announcements of table {table}"))?;
            println!(
                "withdrew {} announced VIPs from table {table}",
                plan.remove.len()
            );
        }
        let done = pin::cleanup(&pin_dir).with_context(|| format!("xvsd --cleanup on {iface}"))?;
        if done.removed.is_empty() {
            println!("nothing pinned in {}", pin_dir.display());
        } else {
            let detached: Vec<&str> = done
                .detached
                .iter()
                .map(|p| pin::link_iface(p, iface))
                .collect();
            println!(
                "{}removed {} pins from {}",
                if detached.is_empty() {
                    String::new()
                } else {
                    format!("detached the director from {}; ", detached.join(", "))
                },
                done.removed.len(),
                pin_dir.display()
            );
        }
        return Ok(());
    }
    let access = match &opts.socket_group {
        Some(g) => SocketAccess::with_group(g)?,
        None => SocketAccess::root_only(),
    };
    let (iface, more_ifaces) = (iface.to_string(), more_ifaces.to_vec());
    daemon::run(DaemonOptions {
        iface: iface.clone(),
        more_ifaces,
        mode: opts.xdp_mode,
        socket: opts.socket,
        conn_table_size: opts.conn_table_size,
        nat_table_size: opts.nat_table_size,
        sched_slots: opts.sched_slots,
        params: lb_user::scheduler::Params {
            maglev_size: opts.mh_table_size,
            plan_len: opts.plan_len as usize,
        },
        pin_dir,
        force_reload: opts.force_reload,
        metrics: opts.metrics,
        tun_src: opts.tun_src.clone(),
        access,
        state_dir: Some(opts.state_dir),
        reset_state: opts.reset_state,
        config: opts.config,
        kernel_log: opts.kernel_log,
        audit_fullnat: opts.audit_fullnat,
        announce_table: opts.announce_table,
    })
    .await
    .with_context(|| format!("xvsd on {}", opts.iface.join(", ")))
}
