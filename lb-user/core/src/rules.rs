//! xvsadm's command line: ipvsadm's commands and options (ipvsadm.c of ipvsadm 1.31), turned
//! into control requests.
//!
//! Every command and option of ipvsadm(8) is known. The ones that work do what they do in
//! ipvsadm, with ipvsadm's table of which options go with which command (commands_v_options)
//! and its defaults. The ones with no meaning for an XDP director (SCTP, persistence
//! engines) or that xvs does not have yet are refused with the reason, never
//! ignored.
//!
//! FULLNAT follows DPVS's ipvsadm: `-b` on -a/-e (no value), and its local-address commands
//! `-P`/`--add-laddr`, `-Q`/`--del-laddr`, `-G`/`--get-laddr` with `-z ADDR` and `-F IFACE`;
//! `-b FLAGS` on -A/-E stays ipvsadm's `--sched-flags`.
//!
//! `-f MARK` names a service group: netfilter marks cannot reach XDP (it runs first), so what a
//! group takes is declared on it with `--match PROTO:VIP:PORT` instead of an iptables rule.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    path::PathBuf,
};

use clap::{ArgGroup, Parser};
use thiserror::Error;

use crate::{
    check::{self, CheckKind, CheckSpec},
    listing::{Format, ListOptions},
    model::{
        Change, Config, ForwardMethod, LocalAddr, Persistence, PortRange, Protocol, Quorum,
        RealServer, SchedFlags, Scheduler, ServiceKey, Tunnel, TunnelKind, VirtualAddr,
        MAX_TIMEOUT,
    },
    names::{self, Names, Numeric},
    proto::default_socket,
    sync::{
        daemon::{self, DaemonConfig},
        Role,
    },
};

/// xvsadm's arguments, ipvsadm's spelling. `--help` prints [`crate::help::USAGE`], not clap's
/// generated text, so the help reads like ipvsadm's.
#[derive(Parser, Debug)]
#[command(
    name = "xvsadm",
    disable_help_flag = true,
    disable_version_flag = true,
    group(ArgGroup::new("command").multiple(false)),
)]
pub struct Args {
    /// Add a virtual service.
    #[arg(short = 'A', long = "add-service", group = "command")]
    pub add_service: bool,
    /// Edit a virtual service.
    #[arg(short = 'E', long = "edit-service", group = "command")]
    pub edit_service: bool,
    /// Delete a virtual service and its real servers.
    #[arg(short = 'D', long = "delete-service", group = "command")]
    pub delete_service: bool,
    /// Clear the whole table.
    #[arg(short = 'C', long = "clear", group = "command")]
    pub clear: bool,
    /// Restore rules from standard input (the format -S writes), as one transaction.
    #[arg(short = 'R', long = "restore", group = "command")]
    pub restore: bool,
    /// Save rules to standard output, in a form -R reads.
    #[arg(short = 'S', long = "save", group = "command")]
    pub save: bool,
    /// Add a real server to a service.
    #[arg(short = 'a', long = "add-server", group = "command")]
    pub add_server: bool,
    /// Edit a real server.
    #[arg(short = 'e', long = "edit-server", group = "command")]
    pub edit_server: bool,
    /// Delete a real server.
    #[arg(short = 'd', long = "delete-server", group = "command")]
    pub delete_server: bool,
    /// List the table (all services, or the one given with -t/-u/-f).
    #[arg(
        short = 'L',
        visible_short_alias = 'l',
        long = "list",
        group = "command"
    )]
    pub list: bool,
    /// Zero the counters and rates of one service or of all.
    #[arg(short = 'Z', long = "zero", group = "command")]
    pub zero: bool,
    /// DPVS: add a FULLNAT local address to a service (`-z ADDR [-F IFACE]`).
    #[arg(short = 'P', long = "add-laddr", group = "command")]
    pub add_laddr: bool,
    /// DPVS: delete a FULLNAT local address of a service (`-z ADDR`).
    #[arg(short = 'Q', long = "del-laddr", group = "command")]
    pub del_laddr: bool,
    /// DPVS: list the local addresses of one service or of all.
    #[arg(short = 'G', long = "get-laddr", group = "command")]
    pub get_laddr: bool,
    /// Set connection timeouts in seconds (0 keeps a value): tcp tcpfin udp.
    #[arg(long = "set", num_args = 3, value_names = ["TCP", "TCPFIN", "UDP"], group = "command")]
    pub set: Option<Vec<String>>,
    /// Start a connection-sync daemon: master or backup.
    #[arg(long = "start-daemon", group = "command", value_name = "STATE")]
    pub start_daemon: Option<String>,
    /// Stop a connection-sync daemon: master or backup.
    #[arg(long = "stop-daemon", group = "command", value_name = "STATE")]
    pub stop_daemon: Option<String>,
    /// Print the help.
    #[arg(short = 'h', long = "help", group = "command")]
    pub help: bool,
    /// Print the version (ipvsadm's -v; -V as most tools).
    #[arg(
        short = 'v',
        visible_short_alias = 'V',
        long = "version",
        group = "command"
    )]
    pub version: bool,

    /// TCP service: host[:port], or [IPv6]:port.
    #[arg(short = 't', long = "tcp-service", value_name = "SERVICE-ADDRESS")]
    pub tcp_service: Option<String>,
    /// UDP service: host[:port], or [IPv6]:port.
    #[arg(short = 'u', long = "udp-service", value_name = "SERVICE-ADDRESS")]
    pub udp_service: Option<String>,
    /// SCTP service (refused).
    #[arg(long = "sctp-service", value_name = "SERVICE-ADDRESS")]
    pub sctp_service: Option<String>,
    /// Service group, ipvsadm's firewall-mark service.
    #[arg(short = 'f', long = "fwmark-service", value_name = "FWMARK")]
    pub fwmark_service: Option<String>,
    /// With -f: an IPv6 service group.
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,
    /// xvs only, with -A/-E -f: traffic the group takes, PROTO:VIP:PORT.
    #[arg(long = "match", value_name = "PROTO:VIP:PORT", action = clap::ArgAction::Append)]
    pub matches: Vec<String>,
    /// Scheduler (default wlc).
    #[arg(short = 's', long = "scheduler", value_name = "SCHEDULER")]
    pub scheduler: Option<String>,
    /// Persistent service, with a timeout in seconds (default 300).
    #[arg(short = 'p', long = "persistent", num_args = 0..=1, default_missing_value = "300", value_name = "TIMEOUT")]
    pub persistent: Option<String>,
    /// Persistence granularity.
    #[arg(short = 'M', long = "netmask", value_name = "NETMASK")]
    pub netmask: Option<String>,
    /// Persistence engine (refused).
    #[arg(long = "pe", value_name = "ENGINE")]
    pub pe: Option<String>,
    /// Scheduler flags on -A/-E; on -a/-e, without a value, FULLNAT (DPVS's `-b`). Empty when
    /// given without a value.
    #[arg(
        short = 'b',
        long = "sched-flags",
        value_name = "FLAGS",
        num_args = 0..=1,
        default_missing_value = ""
    )]
    pub sched_flags: Option<String>,
    /// FULLNAT (DPVS's `--fullnat`, the long form of its `-b`).
    #[arg(long = "fullnat")]
    pub fullnat: bool,
    /// With -P/-Q: the local address (DPVS `--laddr`).
    #[arg(short = 'z', long = "laddr", value_name = "LOCAL-ADDRESS")]
    pub laddr: Option<String>,
    /// With -P: the interface the local address is on (DPVS `--ifname`; informational).
    #[arg(short = 'F', long = "ifname", value_name = "IFNAME")]
    pub ifname: Option<String>,
    /// xvs only, with -P: the source ports handed out on the local address, LO-HI.
    #[arg(long = "laddr-ports", value_name = "LO-HI")]
    pub laddr_ports: Option<String>,
    /// One-packet scheduling (refused).
    #[arg(short = 'o', long = "ops")]
    pub ops: bool,
    /// Real server: host[:port].
    #[arg(short = 'r', long = "real-server", value_name = "SERVER-ADDRESS")]
    pub real_server: Option<String>,
    /// Direct routing (the default).
    #[arg(short = 'g', long = "gatewaying")]
    pub gatewaying: bool,
    /// Tunnelling: encapsulate to the real server, which may be routed (see --tun-type).
    #[arg(short = 'i', long = "ipip")]
    pub ipip: bool,
    /// Masquerading (NAT).
    #[arg(short = 'm', long = "masquerading")]
    pub masquerading: bool,
    /// Tunnel type with -i: ipip (IPIP, IP6IP6, 4in6, 6in4; the default) or gue.
    #[arg(long = "tun-type", value_name = "TYPE")]
    pub tun_type: Option<String>,
    /// GUE destination port on the real server (required with --tun-type gue).
    #[arg(long = "tun-port", value_name = "PORT")]
    pub tun_port: Option<String>,
    /// GUE over IPv4 without an outer UDP checksum (the default, as ipvsadm's).
    #[arg(long = "tun-nocsum")]
    pub tun_nocsum: bool,
    /// GUE over IPv4 with an outer UDP checksum (over IPv6 it is always filled).
    #[arg(long = "tun-csum")]
    pub tun_csum: bool,
    /// GUE remote checksum offload (refused: the decapsulator does not implement it).
    #[arg(long = "tun-remcsum")]
    pub tun_remcsum: bool,
    /// Real server weight, 0..=65535.
    #[arg(
        short = 'w',
        long = "weight",
        value_name = "WEIGHT",
        allow_negative_numbers = true
    )]
    pub weight: Option<String>,
    /// Upper connection threshold.
    #[arg(
        short = 'x',
        long = "u-threshold",
        value_name = "UTHRESHOLD",
        allow_negative_numbers = true
    )]
    pub u_threshold: Option<String>,
    /// Lower connection threshold.
    #[arg(
        short = 'y',
        long = "l-threshold",
        value_name = "LTHRESHOLD",
        allow_negative_numbers = true
    )]
    pub l_threshold: Option<String>,
    /// Numeric output.
    #[arg(short = 'n', long = "numeric")]
    pub numeric: bool,
    /// With -L: list connections.
    #[arg(short = 'c', long = "connection")]
    pub connection: bool,
    /// With -L: show the connection timeouts.
    #[arg(long = "timeout")]
    pub timeout: bool,
    /// With -L: the running sync daemons.
    #[arg(long = "daemon")]
    pub daemon: bool,
    /// With -L: totals.
    #[arg(long = "stats")]
    pub stats: bool,
    /// With -L: rates.
    #[arg(long = "rate")]
    pub rate: bool,
    /// With -L: exact numbers (ipvsadm's hidden short form is -X).
    #[arg(short = 'X', long = "exact")]
    pub exact: bool,
    /// With -L: thresholds.
    #[arg(long = "thresholds")]
    pub thresholds: bool,
    /// With -L: persistence templates.
    #[arg(long = "persistent-conn")]
    pub persistent_conn: bool,
    /// With -L: tunnel information.
    #[arg(long = "tun-info")]
    pub tun_info: bool,
    /// With -L: sort (the default; accepted for compatibility).
    #[arg(long = "sort")]
    pub sort: bool,
    /// With -L: the order services and real servers were added.
    #[arg(long = "nosort")]
    pub nosort: bool,
    /// Sync daemon: the interface it sends from or listens on (default eth0).
    #[arg(long = "mcast-interface", value_name = "INTERFACE")]
    pub mcast_interface: Option<String>,
    /// Sync daemon: the SyncID sent, or the only one taken (0: any), 0-255.
    #[arg(long = "syncid", value_name = "SID")]
    pub syncid: Option<String>,
    /// Sync daemon: the IPv4 or IPv6 multicast group (default 224.0.0.81).
    #[arg(long = "mcast-group", value_name = "ADDRESS")]
    pub mcast_group: Option<String>,
    /// Sync daemon: the UDP port (default 8848).
    #[arg(long = "mcast-port", value_name = "PORT")]
    pub mcast_port: Option<String>,
    /// Sync daemon: the multicast TTL, 1-255 (default 1).
    #[arg(long = "mcast-ttl", value_name = "TTL")]
    pub mcast_ttl: Option<String>,
    /// Sync daemon: the largest message payload (default from the interface's MTU).
    #[arg(long = "sync-maxlen", value_name = "LENGTH")]
    pub sync_maxlen: Option<String>,
    /// Control socket of xvsd.
    #[arg(long, env = "XVS_SOCKET", default_value_os_t = default_socket())]
    pub socket: PathBuf,
    /// JSON instead of ipvsadm's text, for every listing.
    #[arg(long)]
    pub json: bool,
    /// xvs only, with -A/-E (the service's default) and -a/-e: health check type, tcp, http,
    /// https, misc or none (-a/-e: also inherit).
    #[arg(long = "check", value_name = "TYPE")]
    pub check: Option<String>,
    /// Health check port (keepalived connect_port; default the real server's).
    #[arg(long = "check-port", value_name = "PORT")]
    pub check_port: Option<String>,
    /// HTTP(S) check: the path to GET.
    #[arg(long = "check-path", value_name = "PATH")]
    pub check_path: Option<String>,
    /// HTTP(S) check: accepted status codes (default 200-299).
    #[arg(long = "check-status", value_name = "CODES")]
    pub check_status: Option<String>,
    /// HTTP(S) check: MD5 digest of the body (keepalived digest).
    #[arg(long = "check-digest", value_name = "MD5")]
    pub check_digest: Option<String>,
    /// HTTP(S) check: a text the body must contain.
    #[arg(long = "check-body", value_name = "TEXT", allow_hyphen_values = true)]
    pub check_body: Option<String>,
    /// MISC check: the command (program and arguments, shell quoting).
    #[arg(
        long = "check-command",
        value_name = "COMMAND",
        allow_hyphen_values = true
    )]
    pub check_command: Option<String>,
    /// Between checks (keepalived delay_loop).
    #[arg(long = "check-interval", value_name = "DURATION")]
    pub check_interval: Option<String>,
    /// Time limit of a check (keepalived connect_timeout).
    #[arg(long = "check-timeout", value_name = "DURATION")]
    pub check_timeout: Option<String>,
    /// Retries before an up server is down (keepalived retry).
    #[arg(long = "check-retry", value_name = "COUNT")]
    pub check_retry: Option<String>,
    /// Delay before a retry (keepalived delay_before_retry).
    #[arg(long = "check-retry-delay", value_name = "DURATION")]
    pub check_retry_delay: Option<String>,
    /// Successes before a down server is up again.
    #[arg(long = "check-rise", value_name = "COUNT")]
    pub check_rise: Option<String>,
    /// Down: weight 0 instead of removal (keepalived inhibit_on_failure).
    #[arg(long = "check-inhibit", value_name = "yes|no", num_args = 0..=1, default_missing_value = "yes")]
    pub check_inhibit: Option<String>,
    /// xvs only, with -A/-E: the sorry server (keepalived sorry_server), or none.
    #[arg(long = "sorry-server", value_name = "SERVER-ADDRESS")]
    pub sorry_server: Option<String>,
    /// xvs only, with -A/-E: the live weight the service needs (keepalived quorum).
    #[arg(long = "quorum", value_name = "WEIGHT")]
    pub quorum: Option<String>,
    /// xvs only, with -A/-E: the quorum's flap dampener (keepalived hysteresis).
    #[arg(long = "hysteresis", value_name = "WEIGHT")]
    pub hysteresis: Option<String>,
}

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Changes to apply as one transaction.
    Apply(Vec<Change>),
    /// Show the table.
    List {
        /// Layout.
        opts: ListOptions,
        /// Only this service.
        service: Option<ServiceKey>,
        /// JSON instead of a table.
        json: bool,
    },
    /// Start a connection-sync daemon (`--start-daemon`).
    StartDaemon(DaemonConfig),
    /// Stop one (`--stop-daemon`).
    StopDaemon(Role),
    /// Show the running sync daemons (`-L --daemon`).
    ListDaemons {
        /// JSON (with counters) instead of ipvsadm's lines.
        json: bool,
    },
    /// Show the timeouts (`-L --timeout`).
    ListTimeouts {
        /// JSON instead of ipvsadm's line.
        json: bool,
    },
    /// Show live connections (`-L -c`).
    ListConnections {
        /// JSON instead of ipvsadm's table.
        json: bool,
        /// `-n`: numbers, not names.
        numeric: bool,
        /// `--persistent-conn`: ipvsadm's wider title.
        persistent_conn: bool,
    },
    /// Set timeouts in seconds; None keeps a value.
    SetTimeouts {
        /// Established TCP.
        tcp: Option<u64>,
        /// TCP after FIN.
        tcpfin: Option<u64>,
        /// UDP.
        udp: Option<u64>,
    },
    /// Zero counters and rates, of one service or of all.
    Zero {
        /// `-Z -t VIP:port`.
        service: Option<ServiceKey>,
    },
    /// Show the FULLNAT local addresses (`-G`).
    ListLaddrs {
        /// Only this service.
        service: Option<ServiceKey>,
        /// JSON instead of DPVS's table.
        json: bool,
    },
    /// Print the rules in -R's format.
    Save {
        /// `-n`: numbers, not names.
        numeric: bool,
    },
    /// Read rules from standard input.
    Restore,
    /// Print the help.
    Help,
    /// Print the version.
    Version,
}

/// A command line that cannot be carried out.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{0}")]
pub struct CliError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, CliError> {
    Err(CliError(msg.into()))
}

/// ipvsadm's commands, in the order of its commands_v_options table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmd {
    Add,
    Edit,
    Del,
    Flush,
    List,
    AddDest,
    DelDest,
    EditDest,
    Timeout,
    StartDaemon,
    StopDaemon,
    Restore,
    Save,
    Zero,
    AddLaddr,
    DelLaddr,
    GetLaddr,
}

/// ipvsadm's cmdnames, and DPVS's for its local-address commands.
const CMD_NAMES: [&str; 17] = [
    "add-service",
    "edit-service",
    "delete-service",
    "flush",
    "list",
    "add-server",
    "delete-server",
    "edit-server",
    "set",
    "start-daemon",
    "stop-daemon",
    "restore",
    "save",
    "zero",
    "add-laddr",
    "del-laddr",
    "get-laddr",
];

/// ipvsadm's optnames, in the order of the table's columns; then DPVS's local-address and
/// ifname, and xvs's laddr-ports.
const OPT_NAMES: [&str; 37] = [
    "numeric",
    "connection",
    "service-address",
    "scheduler",
    "persistent",
    "netmask",
    "real-server",
    "forwarding-method",
    "weight",
    "u-threshold",
    "l-threshold",
    "mcast-interface",
    "timeout",
    "daemon",
    "stats",
    "rate",
    "thresholds",
    "persistent-conn",
    "nosort",
    "syncid",
    "exact",
    "ops",
    "pe",
    "sched-flags",
    "mcast-group",
    "mcast-port",
    "mcast-ttl",
    "sync-maxlen",
    "tun-info",
    "tun-type",
    "tun-port",
    "tun-nocsum",
    "tun-csum",
    "tun-remcsum",
    "local-address",
    "ifname",
    "laddr-ports",
];

/// ipvsadm.c commands_v_options, one row per command, one character per option of
/// [`OPT_NAMES`]: '+' compulsory, 'x' illegal, '1' at most one of the '1's, ' ' optional.
/// The last three rows and columns are DPVS's local-address commands and options (and xvs's
/// laddr-ports): DPVS makes `-F` compulsory with -P and -Q; xvs takes it as optional (it is
/// informational) and accepts it on -Q for DPVS's scripts, where the address alone names the
/// local address.
///
/// ```text
///              -n -c svc -s -p -M -r fwd -w -x -y -mc tot dmn -st -rt thr -pc srt sid -ex ops -pe -b grp port ttl size tinf type tprt nocs csum remc -z -F lprt
/// ```
const COMMANDS_V_OPTIONS: [&[u8; 37]; 17] = [
    b"xx+   xxxxxxxxxxxxxxx   xxxxxxxxxxxxx", // add-service
    b"xx+   xxxxxxxxxxxxxxx   xxxxxxxxxxxxx", // edit-service
    b"xx+xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", // delete-service
    b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", // flush
    b" 11xxxxxxxxx11       xxxxxxx xxxxxxxx", // list
    b"xx+xxx+    xxxxxxxxxxxxxxxxxx     xxx", // add-server
    b"xx+xxx+xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", // delete-server
    b"xx+xxx+    xxxxxxxxxxxxxxxxxx     xxx", // edit-server
    b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", // set
    b"xxxxxxxxxxx xxxxxxx xxxx    xxxxxxxxx", // start-daemon
    b"xxxxxxxxxxxxxxxxxxx xxxxxxxxxxxxxxxxx", // stop-daemon
    b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", // restore
    b" xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", // save
    b"xx xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", // zero
    b"xx+xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx+  ", // add-laddr
    b"xx+xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx+ x", // del-laddr
    b"xx xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", // get-laddr
];

impl Args {
    /// Turns ipvsadm's flags into an action, refusing what xvs cannot honour.
    pub fn action(&self) -> Result<Action, CliError> {
        if self.help {
            return Ok(Action::Help);
        }
        if self.version {
            return Ok(Action::Version);
        }
        let cmd = self.command()?;
        self.check_options(cmd)?;
        self.refuse_unsupported()?;
        self.check_xvs_options(cmd)?;
        match cmd {
            Cmd::List => self.list_action(),
            Cmd::AddLaddr | Cmd::DelLaddr => self.laddr_action(cmd),
            Cmd::GetLaddr => Ok(Action::ListLaddrs {
                service: self.service_opt()?,
                json: self.json,
            }),
            Cmd::Zero => Ok(Action::Zero {
                service: self.service_opt()?,
            }),
            Cmd::Save => Ok(Action::Save {
                numeric: self.numeric,
            }),
            Cmd::Restore => Ok(Action::Restore),
            Cmd::Timeout => {
                let v = self.set.as_deref().unwrap_or_default();
                let mut t = [None; 3];
                for (i, s) in v.iter().enumerate().take(3) {
                    let n = parse_number(s, 0, MAX_TIMEOUT as i64).ok_or_else(|| {
                        CliError(format!("invalid timeout value `{s}' specified"))
                    })?;
                    t[i] = (n != 0).then_some(n as u64);
                }
                Ok(Action::SetTimeouts {
                    tcp: t[0],
                    tcpfin: t[1],
                    udp: t[2],
                })
            }
            Cmd::Flush => Ok(Action::Apply(vec![Change::Clear])),
            Cmd::StartDaemon => self.start_daemon_action(),
            Cmd::StopDaemon => Ok(Action::StopDaemon(
                match self.stop_daemon.as_deref().unwrap_or_default() {
                    "master" => Role::Master,
                    "backup" => Role::Backup,
                    _ => return err("illegal start_daemon specified"),
                },
            )),
            Cmd::Add | Cmd::Edit | Cmd::Del => self.service_action(cmd),
            Cmd::AddDest | Cmd::EditDest | Cmd::DelDest => self.real_action(cmd),
        }
    }

    fn command(&self) -> Result<Cmd, CliError> {
        let cmds = [
            (self.add_service, Cmd::Add),
            (self.edit_service, Cmd::Edit),
            (self.delete_service, Cmd::Del),
            (self.clear, Cmd::Flush),
            (self.list, Cmd::List),
            (self.add_server, Cmd::AddDest),
            (self.delete_server, Cmd::DelDest),
            (self.edit_server, Cmd::EditDest),
            (self.set.is_some(), Cmd::Timeout),
            (self.start_daemon.is_some(), Cmd::StartDaemon),
            (self.stop_daemon.is_some(), Cmd::StopDaemon),
            (self.restore, Cmd::Restore),
            (self.save, Cmd::Save),
            (self.zero, Cmd::Zero),
            (self.add_laddr, Cmd::AddLaddr),
            (self.del_laddr, Cmd::DelLaddr),
            (self.get_laddr, Cmd::GetLaddr),
        ];
        let mut given = cmds.iter().filter(|(on, _)| *on).map(|(_, c)| *c);
        match (given.next(), given.next()) {
            (Some(c), None) => Ok(c),
            (Some(_), Some(_)) => err("multiple commands specified"),
            (None, _) => err("no command specified: try `xvsadm -h' or 'xvsadm --help'"),
        }
    }

    /// Whether `-b` is DPVS's FULLNAT here (on the real-server commands) rather than
    /// ipvsadm's scheduler flags (everywhere else).
    fn b_is_fullnat(cmd: Cmd) -> bool {
        matches!(cmd, Cmd::AddDest | Cmd::EditDest | Cmd::DelDest)
    }

    /// FULLNAT given: `--fullnat`, or `-b` on a real-server command.
    fn fullnat_given(&self, cmd: Cmd) -> bool {
        self.fullnat || (Self::b_is_fullnat(cmd) && self.sched_flags.is_some())
    }

    /// Which of ipvsadm's options were given, in [`OPT_NAMES`] order.
    fn options_given(&self, cmd: Cmd) -> [bool; 37] {
        let service = self.tcp_service.is_some()
            || self.udp_service.is_some()
            || self.sctp_service.is_some()
            || self.fwmark_service.is_some();
        let forward = self.gatewaying || self.ipip || self.masquerading || self.fullnat_given(cmd);
        [
            self.numeric,
            self.connection,
            service,
            self.scheduler.is_some(),
            self.persistent.is_some(),
            self.netmask.is_some(),
            self.real_server.is_some(),
            forward,
            self.weight.is_some(),
            self.u_threshold.is_some(),
            self.l_threshold.is_some(),
            self.mcast_interface.is_some(),
            self.timeout,
            self.daemon,
            self.stats,
            self.rate,
            self.thresholds,
            self.persistent_conn,
            self.nosort,
            self.syncid.is_some(),
            self.exact,
            self.ops,
            self.pe.is_some(),
            self.sched_flags.is_some() && !Self::b_is_fullnat(cmd),
            self.mcast_group.is_some(),
            self.mcast_port.is_some(),
            self.mcast_ttl.is_some(),
            self.sync_maxlen.is_some(),
            self.tun_info,
            self.tun_type.is_some(),
            self.tun_port.is_some(),
            self.tun_nocsum,
            self.tun_csum,
            self.tun_remcsum,
            self.laddr.is_some(),
            self.ifname.is_some(),
            self.laddr_ports.is_some(),
        ]
    }

    /// ipvsadm.c generic_opt_check, with its messages.
    fn check_options(&self, cmd: Cmd) -> Result<(), CliError> {
        let i = cmd as usize;
        let row = COMMANDS_V_OPTIONS[i];
        let given = self.options_given(cmd);
        let mut exclusive: Option<usize> = None;
        for (j, on) in given.iter().enumerate() {
            match (on, row[j]) {
                (false, b'+') => {
                    return err(format!(
                        "You need to supply the '{}' option for the '{}' command",
                        OPT_NAMES[j], CMD_NAMES[i]
                    ))
                }
                (true, b'x') => {
                    return err(format!(
                        "Illegal '{}' option with the '{}' command",
                        OPT_NAMES[j], CMD_NAMES[i]
                    ))
                }
                (true, b'1') => {
                    if let Some(last) = exclusive {
                        return err(format!(
                            "The option '{}' conflicts with the '{}' option in the '{}' command",
                            OPT_NAMES[j], OPT_NAMES[last], CMD_NAMES[i]
                        ));
                    }
                    exclusive = Some(j);
                }
                _ => {}
            }
        }
        let several = [
            self.tcp_service.is_some(),
            self.udp_service.is_some(),
            self.sctp_service.is_some(),
            self.fwmark_service.is_some(),
        ];
        if several.iter().filter(|g| **g).count() > 1 {
            return err("multiple 'service-address' options specified");
        }
        let forwards = [
            self.gatewaying,
            self.ipip,
            self.masquerading,
            self.fullnat_given(cmd),
        ];
        if forwards.iter().filter(|g| **g).count() > 1 {
            return err("multiple 'forwarding-method' options specified");
        }
        if cmd == Cmd::List
            && ((self.connection || self.timeout || self.daemon)
                && (self.stats || self.rate || self.thresholds)
                || (self.timeout || self.daemon) && self.persistent_conn)
        {
            return err("options conflicts in the list command");
        }
        // Only tunnelling takes tunnel options (process_options).
        let tunnel_opts = self.tun_type.is_some()
            || self.tun_port.is_some()
            || self.tun_nocsum
            || self.tun_csum
            || self.tun_remcsum;
        if tunnel_opts && !self.ipip {
            return err("Tunnel options conflict with forward method");
        }
        Ok(())
    }

    /// Options and features xvs refuses, each with its reason.
    fn refuse_unsupported(&self) -> Result<(), CliError> {
        if self.sctp_service.is_some() {
            return err("--sctp-service: xvs balances TCP and UDP only; SCTP packets pass to the kernel untouched");
        }
        if self.tun_remcsum {
            return err("--tun-remcsum (GUE remote checksum offload) is not supported: the real-server decapsulator does not implement it; use --tun-csum or --tun-nocsum");
        }
        if self.ops {
            return err(
                "-o (one-packet scheduling) is not implemented by xvs: every UDP flow gets a \
                        connection entry, so its datagrams stay on one real server",
            );
        }
        if self.pe.is_some() {
            return err(
                "--pe (persistence engine, e.g. sip) is not supported: xvs does not parse \
                        application payloads such as SIP Call-IDs; persistence by client address \
                        is -p [-M netmask]",
            );
        }
        if self.ipv6 && self.fwmark_service.is_none() {
            return err("-6 applies to -f (firewall-mark service groups) only");
        }
        Ok(())
    }

    /// xvs's own options: --match and --sorry-server with -A/-E, health checks with -A/-E
    /// and -a/-e, --json with listings.
    fn check_xvs_options(&self, cmd: Cmd) -> Result<(), CliError> {
        if !self.matches.is_empty() && !matches!(cmd, Cmd::Add | Cmd::Edit) {
            return err("--match applies to -A and -E only");
        }
        if self.sorry_server.is_some() && !matches!(cmd, Cmd::Add | Cmd::Edit) {
            return err("--sorry-server applies to -A and -E only");
        }
        if (self.quorum.is_some() || self.hysteresis.is_some())
            && !matches!(cmd, Cmd::Add | Cmd::Edit)
        {
            return err("--quorum and --hysteresis apply to -A and -E only");
        }
        if let Some(option) = self.check_options_given().first() {
            if !matches!(cmd, Cmd::Add | Cmd::Edit | Cmd::AddDest | Cmd::EditDest) {
                return err(format!("{option} applies to -A, -E, -a and -e only"));
            }
        }
        if self.json {
            match cmd {
                Cmd::List | Cmd::GetLaddr => {}
                Cmd::Save => {
                    return err("-S writes ipvsadm's rules, which have no JSON form: \
                                `xvsadm -L -n --json` has the same configuration as JSON")
                }
                _ => return err("--json applies to listings (-L, -G) only"),
            }
        }
        Ok(())
    }

    /// `--start-daemon STATE` and its options, ipvsadm's ranges and messages
    /// (ipvsadm.c parse_options).
    fn start_daemon_action(&self) -> Result<Action, CliError> {
        let role = match self.start_daemon.as_deref().unwrap_or_default() {
            "master" => Role::Master,
            "backup" => Role::Backup,
            _ => return err("illegal start-daemon parameter specified"),
        };
        let number = |v: &Option<String>, max: i64, what: &str| -> Result<Option<i64>, CliError> {
            v.as_deref()
                .map(|s| parse_number(s, if what == "syncid" { 0 } else { 1 }, max))
                .map(|n| n.ok_or_else(|| CliError(format!("illegal {what} specified"))))
                .transpose()
        };
        let mut d = DaemonConfig::new(role);
        if let Some(ifn) = &self.mcast_interface {
            d.mcast_ifn = ifn.clone();
        }
        d.syncid = number(&self.syncid, 255, "syncid")?.unwrap_or(0) as u8;
        d.group = self
            .mcast_group
            .as_deref()
            .map(daemon::parse_group)
            .transpose()
            .map_err(CliError)?;
        d.port = number(&self.mcast_port, 65535, "mcast-port")?.map(|n| n as u16);
        d.ttl = number(&self.mcast_ttl, 255, "mcast-ttl")?.map(|n| n as u8);
        d.sync_maxlen = number(
            &self.sync_maxlen,
            daemon::SYNC_MAXLEN_MAX as i64,
            "sync-maxlen",
        )?
        .map(|n| n as u32);
        d.validate().map_err(|e| CliError(e.to_string()))?;
        Ok(Action::StartDaemon(d))
    }

    fn list_action(&self) -> Result<Action, CliError> {
        if self.daemon {
            return Ok(Action::ListDaemons { json: self.json });
        }
        if self.timeout {
            return Ok(Action::ListTimeouts { json: self.json });
        }
        if self.connection {
            return Ok(Action::ListConnections {
                json: self.json,
                numeric: self.numeric,
                persistent_conn: self.persistent_conn,
            });
        }
        // ipvsadm's precedence when several formats are given (print_title).
        let format = if self.stats {
            Format::Stats
        } else if self.rate {
            Format::Rate
        } else if self.thresholds {
            Format::Thresholds
        } else if self.persistent_conn {
            Format::PersistentConn
        } else if self.tun_info {
            Format::TunInfo
        } else {
            Format::Plain
        };
        Ok(Action::List {
            opts: ListOptions {
                format,
                exact: self.exact,
                nosort: self.nosort,
                numeric: self.numeric,
            },
            service: self.service_opt()?,
            json: self.json,
        })
    }

    /// -A, -E and -D. -A and -E set every option of the service, with ipvsadm's defaults for
    /// what is not given (so `-E -s rr` also drops persistence, exactly as ipvsadm does).
    fn service_action(&self, cmd: Cmd) -> Result<Action, CliError> {
        let key = self
            .service_opt()?
            .ok_or_else(|| CliError("You need to supply the 'service-address' option".into()))?;
        if cmd == Cmd::Del {
            return Ok(Action::Apply(vec![Change::DeleteService { key }]));
        }
        let matches = self.matches_opt(&key)?;
        let scheduler = match &self.scheduler {
            Some(s) => s
                .parse::<Scheduler>()
                .map_err(|e| CliError(e.to_string()))?,
            None => crate::model::DEFAULT_SCHEDULER,
        };
        let flags = match self.sched_flags.as_deref() {
            // Given without a value: DPVS's FULLNAT switch, which belongs to real servers.
            Some("") => {
                return err(
                    "-b on -A/-E takes scheduler flags (sh-fallback, sh-port, mh-fallback, \
                     mh-port); -b without a value is FULLNAT, an option of -a/-e",
                )
            }
            Some(f) => parse_sched_flags(scheduler, f)?,
            None => SchedFlags::default(),
        };
        let persistence = self.persistence(&key)?;
        let change = if cmd == Cmd::Add {
            Change::AddService {
                key,
                scheduler,
                flags,
                persistence,
            }
        } else {
            Change::EditService {
                key,
                scheduler: Some(scheduler),
                flags: Some(flags),
                persistence: Some(persistence),
            }
        };
        // The service, its matches, its default check and its sorry server are one
        // transaction: all or nothing.
        let mut changes = vec![change];
        if let Some(matches) = matches {
            changes.push(Change::SetMatches { key, matches });
        }
        if let Some(check) = self.check_spec(false)? {
            changes.push(Change::SetCheck { key, check });
        }
        if let Some(sorry) = &self.sorry_server {
            let sorry_server = match sorry.as_str() {
                "none" => None,
                s => Some(parse_real_addr(s, key.port(), protocol_of(&key))?),
            };
            changes.push(Change::SetSorryServer { key, sorry_server });
        }
        // As the checks: -E without them keeps the quorum; with one, the other is its default.
        if self.quorum.is_some() || self.hysteresis.is_some() {
            let weight = |v: &Option<String>, name: &str, default: u32| match v {
                None => Ok(default),
                Some(v) => v.parse::<u32>().map_err(|_| {
                    CliError(format!("Illegal {name}: {v} (a weight, 0 to 4294967295)"))
                }),
            };
            let quorum = Quorum {
                quorum: weight(&self.quorum, "quorum", Quorum::default().quorum)?,
                hysteresis: weight(&self.hysteresis, "hysteresis", 0)?,
            };
            changes.push(Change::SetQuorum { key, quorum });
        }
        Ok(Action::Apply(changes))
    }

    /// The health-check options given, by name.
    fn check_options_given(&self) -> Vec<&'static str> {
        let given = [
            ("--check", self.check.is_some()),
            ("--check-port", self.check_port.is_some()),
            ("--check-path", self.check_path.is_some()),
            ("--check-status", self.check_status.is_some()),
            ("--check-digest", self.check_digest.is_some()),
            ("--check-body", self.check_body.is_some()),
            ("--check-command", self.check_command.is_some()),
            ("--check-interval", self.check_interval.is_some()),
            ("--check-timeout", self.check_timeout.is_some()),
            ("--check-retry", self.check_retry.is_some()),
            ("--check-retry-delay", self.check_retry_delay.is_some()),
            ("--check-rise", self.check_rise.is_some()),
            ("--check-inhibit", self.check_inhibit.is_some()),
        ];
        given
            .into_iter()
            .filter(|(_, on)| *on)
            .map(|(n, _)| n)
            .collect()
    }

    /// The health check given with `--check...`: None when no such option was given (-E and -e
    /// keep the check, as -E keeps a group's matches); otherwise exactly what was given, the
    /// rest inherited (from the service for a real server, from the defaults for a service).
    fn check_spec(&self, real: bool) -> Result<Option<CheckSpec>, CliError> {
        if self.check_options_given().is_empty() {
            return Ok(None);
        }
        let kind = match self.check.as_deref() {
            None => None,
            Some("inherit") if real => None,
            Some("inherit") => {
                return err("--check inherit applies to real servers (-a/-e): a service's check is its real servers' default")
            }
            Some(k) => Some(k.parse::<CheckKind>().map_err(CliError)?),
        };
        let ms = |v: &Option<String>| -> Result<Option<u64>, CliError> {
            v.as_deref()
                .map(check::parse_duration_ms)
                .transpose()
                .map_err(CliError)
        };
        let count = |v: &Option<String>, what: &str, min: i64| -> Result<Option<u32>, CliError> {
            v.as_deref()
                .map(|s| {
                    parse_number(s, min, 1000)
                        .map(|n| n as u32)
                        .ok_or_else(|| CliError(format!("Illegal {what}: {s} ({min} to 1000)")))
                })
                .transpose()
        };
        let spec = CheckSpec {
            kind,
            port: self
                .check_port
                .as_deref()
                .map(|p| {
                    parse_number(p, 1, 65535)
                        .map(|n| n as u16)
                        .ok_or_else(|| CliError(format!("Illegal check port: {p}")))
                })
                .transpose()?,
            path: self.check_path.clone(),
            status: self
                .check_status
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(CliError)?,
            digest: self.check_digest.as_ref().map(|d| d.to_ascii_lowercase()),
            body: self.check_body.clone(),
            command: self.check_command.clone(),
            interval_ms: ms(&self.check_interval)?,
            timeout_ms: ms(&self.check_timeout)?,
            retry: count(&self.check_retry, "check retry count", 0)?,
            retry_delay_ms: ms(&self.check_retry_delay)?,
            rise: count(&self.check_rise, "check rise count", 1)?,
            inhibit: self
                .check_inhibit
                .as_deref()
                .map(|v| match v {
                    "yes" | "on" | "true" => Ok(true),
                    "no" | "off" | "false" => Ok(false),
                    _ => err(format!("Illegal --check-inhibit value: {v} (yes or no)")),
                })
                .transpose()?,
        };
        // What can be told without the service: values, and options that do not go with the
        // checker given here (inherited checkers are xvsd's to check).
        spec.validate(kind).map_err(CliError)?;
        Ok(Some(spec))
    }

    /// -a, -e and -d, with ipvsadm's defaults: weight 1, no thresholds, direct routing.
    /// -g, -m, or -i with --tun-type/--tun-port/--tun-csum as ipvsadm reads them (-g when
    /// none; ipvsadm's tunnel_opt_check: gue needs --tun-port, ipip takes no tunnel option).
    fn forward_method(&self) -> Result<ForwardMethod, CliError> {
        if let Some(v) = self.sched_flags.as_deref().filter(|v| !v.is_empty()) {
            return err(format!(
                "-b on -a/-e is FULLNAT (as DPVS's ipvsadm) and takes no value, not `{v}': \
                 scheduler flags go with -A/-E"
            ));
        }
        if self.fullnat || self.sched_flags.is_some() {
            return Ok(ForwardMethod::FullNat);
        }
        if self.masquerading {
            return Ok(ForwardMethod::Nat);
        }
        if !self.ipip {
            return Ok(ForwardMethod::Dr);
        }
        if self.tun_csum && self.tun_nocsum {
            return err("The option 'tun-csum' conflicts with the 'tun-nocsum' option in the 'gue' tunnel type");
        }
        let kind = match self.tun_type.as_deref() {
            None | Some("ipip") => TunnelKind::Ipip,
            Some("gue") => TunnelKind::Gue,
            Some("gre") => return err("--tun-type gre is not supported by xvs: use ipip or gue"),
            Some(other) => {
                return err(format!(
                    "Invalid tunnel type specified: {other} (ipip or gue)"
                ))
            }
        };
        let port = match &self.tun_port {
            None => 0,
            Some(p) => parse_number(p, 1, 65535)
                .ok_or_else(|| CliError(format!("Illegal tunnel port specified: {p}")))?
                as u16,
        };
        Ok(ForwardMethod::Tunnel(Tunnel {
            kind,
            port,
            csum: self.tun_csum,
        }))
    }

    fn real_action(&self, cmd: Cmd) -> Result<Action, CliError> {
        let key = self
            .service_opt()?
            .ok_or_else(|| CliError("You need to supply the 'service-address' option".into()))?;
        let real = self
            .real_server
            .as_deref()
            .ok_or_else(|| CliError("You need to supply the 'real-server' option".into()))?;
        // A group has no port: a server given without one keeps port 0 (the client's
        // destination port), as ipvsadm stores it.
        let addr = parse_real_addr(real, key.port(), protocol_of(&key))?;
        if cmd == Cmd::DelDest {
            return Ok(Action::Apply(vec![Change::DeleteReal {
                service: key,
                addr,
            }]));
        }
        let weight = match &self.weight {
            None => 1,
            Some(w) => parse_number(w, 0, crate::model::MAX_WEIGHT as i64).ok_or_else(|| {
                CliError(format!("Illegal weight specified: {w} (must be 0..=65535)"))
            })? as u32,
        };
        let threshold = |v: &Option<String>, which: &str| -> Result<u32, CliError> {
            match v {
                None => Ok(0),
                Some(s) => parse_number(s, 0, i32::MAX as i64)
                    .map(|n| n as u32)
                    .ok_or_else(|| CliError(format!("illegal {which} specified: {s}"))),
            }
        };
        let u_threshold = threshold(&self.u_threshold, "u_threshold")?;
        let l_threshold = threshold(&self.l_threshold, "l_threshold")?;
        let forward = self.forward_method()?;
        let check = self.check_spec(true)?;
        let change = if cmd == Cmd::AddDest {
            Change::AddReal {
                service: key,
                real: RealServer {
                    addr,
                    weight,
                    forward,
                    u_threshold,
                    l_threshold,
                    check: check.unwrap_or_default(),
                },
            }
        } else {
            Change::EditReal {
                service: key,
                addr,
                weight: Some(weight),
                forward: Some(forward),
                u_threshold: Some(u_threshold),
                l_threshold: Some(l_threshold),
                check,
            }
        };
        Ok(Action::Apply(vec![change]))
    }

    /// `-P` and `-Q`: a local address (`-z`, an address without a port), with `-F` and
    /// `--laddr-ports` on `-P`.
    fn laddr_action(&self, cmd: Cmd) -> Result<Action, CliError> {
        let key = self
            .service_opt()?
            .ok_or_else(|| CliError("You need to supply the 'service-address' option".into()))?;
        let given = self
            .laddr
            .as_deref()
            .ok_or_else(|| CliError("You need to supply the 'local-address' option".into()))?;
        let addr = parse_local_addr(given, protocol_of(&key))?;
        if cmd == Cmd::DelLaddr {
            return Ok(Action::Apply(vec![Change::DelLocalAddr {
                service: key,
                addr,
            }]));
        }
        let ports = match &self.laddr_ports {
            None => PortRange::DEFAULT,
            Some(p) => p
                .parse()
                .map_err(|e: crate::model::ConfigError| CliError(e.to_string()))?,
        };
        let iface = match self.ifname.as_deref() {
            None => None,
            Some(i) if crate::model::valid_ifname(i) => Some(i.to_string()),
            Some(i) => {
                return Err(CliError(
                    crate::model::ConfigError::BadInterface(i.to_string()).to_string(),
                ))
            }
        };
        Ok(Action::Apply(vec![Change::AddLocalAddr {
            service: key,
            laddr: LocalAddr { addr, ports, iface },
        }]))
    }

    /// `-p [timeout]` and `-M netmask` for this service.
    fn persistence(&self, key: &ServiceKey) -> Result<Option<Persistence>, CliError> {
        let v4 = key.is_ipv4();
        let Some(timeout) = &self.persistent else {
            if self.netmask.is_some() {
                return err("-M (persistence netmask) needs -p (persistence)");
            }
            return Ok(None);
        };
        let timeout = parse_number(timeout, 1, MAX_TIMEOUT as i64)
            .ok_or_else(|| CliError(format!("invalid timeout value `{timeout}' specified")))?
            as u32;
        let prefix = match &self.netmask {
            None => {
                if v4 {
                    32
                } else {
                    128
                }
            }
            Some(m) => parse_netmask(m, v4)?,
        };
        Ok(Some(Persistence { timeout, prefix }))
    }

    fn service_opt(&self) -> Result<Option<ServiceKey>, CliError> {
        if let Some(mark) = &self.fwmark_service {
            return parse_fwmark(mark).map(|m| Some(ServiceKey::fwmark(m, self.ipv6)));
        }
        let (protocol, s) = match (&self.tcp_service, &self.udp_service) {
            (Some(s), None) => (Protocol::Tcp, s),
            (None, Some(s)) => (Protocol::Udp, s),
            _ => return Ok(None),
        };
        Ok(Some(ServiceKey::new(
            protocol,
            parse_service_addr(s, protocol)?,
        )))
    }

    /// `--match` options: only on -A/-E of a group. None: not given (-E keeps the matches).
    fn matches_opt(&self, key: &ServiceKey) -> Result<Option<Vec<VirtualAddr>>, CliError> {
        if self.matches.is_empty() {
            return Ok(None);
        }
        if !key.is_group() {
            return err(format!(
                "--match applies to service groups (-f) only, not to {key}"
            ));
        }
        if self.matches.len() == 1 && self.matches[0] == "none" {
            return Ok(Some(Vec::new()));
        }
        self.matches
            .iter()
            .map(|m| {
                m.parse::<VirtualAddr>()
                    .map_err(|e| CliError(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

/// ipvsadm's string_to_number: a whole decimal number within `min..=max`.
fn parse_number(s: &str, min: i64, max: i64) -> Option<i64> {
    s.parse::<i64>().ok().filter(|n| (min..=max).contains(n))
}

/// `-b`: ipvsadm's flag names, and its generic `flag-1`/`flag-2` for the scheduler's first and
/// second flag (sh/mh: fallback, port). A flag of another scheduler is "incompatible", as in
/// ipvsadm's parse_sched_flags.
pub fn parse_sched_flags(scheduler: Scheduler, list: &str) -> Result<SchedFlags, CliError> {
    let prefix = match scheduler {
        Scheduler::Sh => Some("sh"),
        Scheduler::Mh => Some("mh"),
        _ => None,
    };
    let mut names = Vec::new();
    for flag in list.split(',').filter(|f| !f.is_empty()) {
        let name = match (flag, prefix) {
            ("flag-1", Some(p)) => format!("{p}-fallback"),
            ("flag-2", Some(p)) => format!("{p}-port"),
            ("flag-1" | "flag-2" | "flag-3", _) => {
                return err(format!(
                    "scheduler flag `{flag}' has no meaning for {scheduler} in xvs"
                ))
            }
            (f, _) => f.to_string(),
        };
        let known = matches!(
            name.as_str(),
            "sh-fallback" | "sh-port" | "mh-fallback" | "mh-port"
        );
        if known && prefix.is_none_or(|p| !name.starts_with(p)) {
            return err(format!("incompatible scheduler flag `{name}'"));
        }
        names.push(name);
    }
    SchedFlags::parse(&names.join(",")).map_err(|e| CliError(e.to_string()))
}

/// The protocol whose port names a service uses (a group's: TCP, as ipvsadm sets it).
fn protocol_of(key: &ServiceKey) -> Protocol {
    match key {
        ServiceKey::Addr { protocol, .. } => *protocol,
        ServiceKey::Fwmark { .. } => Protocol::Tcp,
    }
}

/// Parses `-f`: a mark above 0 (decimal, or 0x-prefixed hex as iptables prints marks).
pub fn parse_fwmark(s: &str) -> Result<u32, CliError> {
    let n = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse::<u32>(),
    };
    match n {
        Ok(n) if n > 0 => Ok(n),
        _ => err(format!(
            "Illegal fwmark: {s} (must be an integer greater than 0)"
        )),
    }
}

/// Parses `-M`: a dotted IPv4 netmask (255.255.255.0) or a prefix length (24, or 64 for IPv6,
/// as ipvsadm takes it).
pub fn parse_netmask(m: &str, v4: bool) -> Result<u8, CliError> {
    let bad = || CliError(format!("Illegal netmask: {m}"));
    if let Ok(n) = m.trim_start_matches('/').parse::<u8>() {
        return if n <= if v4 { 32 } else { 128 } {
            Ok(n)
        } else {
            Err(bad())
        };
    }
    if !v4 {
        return Err(bad());
    }
    let mask = u32::from(m.parse::<std::net::Ipv4Addr>().map_err(|_| bad())?);
    // Contiguous ones only: !mask + 1 must be a power of two (or zero for /32).
    let inv = !mask;
    if inv & inv.wrapping_add(1) != 0 {
        return Err(bad());
    }
    Ok(mask.count_ones() as u8)
}

/// ipvsadm's parse_service: `host[:port]`, `[IPv6]:port` or a bare IPv6 address; the host an
/// address or a name (IPv4 first, as gethostbyname), the port a number or an /etc/services
/// name of `protocol` (`http`). Returns the address and the port, if one was given.
pub fn parse_host_port(s: &str, protocol: Protocol) -> Result<(IpAddr, Option<u16>), CliError> {
    let bad = || CliError(format!("Illegal address: {s}"));
    if s.is_empty() || s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else if s.parse::<Ipv6Addr>().is_ok() {
        (s, None)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let ip = match host.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) if !s.starts_with('[') && is_host_name(host) => {
            names::forward(host).ok_or_else(bad)?
        }
        Err(_) => return Err(bad()),
    };
    let port = match port {
        None => None,
        Some(p) => Some(match p.parse::<u16>() {
            Ok(n) => n,
            Err(_) => names::Services::system()
                .port(p, protocol)
                .ok_or_else(bad)?,
        }),
    };
    Ok((ip, port))
}

/// Whether `s` can be a host name (RFC 1123 letters, digits, '-' and '.', not only digits and
/// dots): anything else is refused without asking a name server.
fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && s.bytes().any(|b| b.is_ascii_alphabetic())
}

/// A service address (`-t`/`-u`): without a port, ipvsadm's port 0, which the model refuses
/// for non-persistent services.
pub fn parse_service_addr(s: &str, protocol: Protocol) -> Result<SocketAddr, CliError> {
    let (ip, port) = parse_host_port(s, protocol)?;
    Ok(SocketAddr::new(ip, port.unwrap_or(0)))
}

/// A local address (`-z`): an address (or host name), with no port (its ports are
/// `--laddr-ports`); an IPv6 address bare or in brackets.
pub fn parse_local_addr(s: &str, protocol: Protocol) -> Result<IpAddr, CliError> {
    match parse_host_port(s, protocol) {
        Ok((ip, None)) => Ok(ip),
        Ok((_, Some(_))) => err(format!(
            "Illegal local address: {s} (an address without a port: the ports it hands out are \
             --laddr-ports LO-HI)"
        )),
        Err(_) => err(format!("Illegal local address: {s}")),
    }
}

/// A real server (`-r`): without a port, the service's port is used.
pub fn parse_real_addr(
    s: &str,
    service_port: u16,
    protocol: Protocol,
) -> Result<SocketAddr, CliError> {
    let (ip, port) = parse_host_port(s, protocol)?;
    Ok(SocketAddr::new(ip, port.unwrap_or(service_port)))
}

/// Parses one line of -R input (ipvsadm's save format) into changes.
pub fn parse_rule_line(line: &str) -> Result<Vec<Change>, CliError> {
    parse_rule_with(&mut <Args as clap::CommandFactory>::command(), line)
}

/// The words of a rule line as ipvsadm's restore reads them (config_stream.c): split on
/// blanks, a word `ipvsadm` dropped (lines may start with it), and from `#` on a comment.
/// A line with quotes (xvs's health-check options, which -S quotes as a shell would) is split
/// as a shell splits words, a `#` starting a word starting the comment.
fn rule_words(line: &str) -> Result<Vec<String>, CliError> {
    let words: Vec<String> = if line.contains(['\'', '"', '\\']) {
        shlex::split(line).ok_or_else(|| CliError(format!("unbalanced quotes: {}", line.trim())))?
    } else {
        let line = line.split('#').next().unwrap_or("");
        line.split_whitespace().map(str::to_string).collect()
    };
    Ok(words.into_iter().filter(|w| w != "ipvsadm").collect())
}

/// parse_rule_line with a prepared clap command: building it is most of the cost of a line,
/// and a restore of 10,000 rules should not pay it 10,000 times.
fn parse_rule_with(cmd: &mut clap::Command, line: &str) -> Result<Vec<Change>, CliError> {
    match parse_restore_line(cmd, line)? {
        Action::Apply(changes) => Ok(changes),
        _ => err(format!("not a rule: {}", line.trim())),
    }
}

/// One line of -R input as a command: a rule, or one of the other commands ipvsadm's restore
/// runs ([`Restore::after`]); anything else is refused.
fn parse_restore_line(cmd: &mut clap::Command, line: &str) -> Result<Action, CliError> {
    let words = rule_words(line)?;
    let argv = std::iter::once("xvsadm").chain(words.iter().map(String::as_str));
    let mut matches = cmd
        .try_get_matches_from_mut(argv)
        .map_err(|e| CliError(e.to_string()))?;
    let args = <Args as clap::FromArgMatches>::from_arg_matches_mut(&mut matches)
        .map_err(|e| CliError(e.to_string()))?;
    match args.action()? {
        a @ (Action::Apply(_)
        | Action::StartDaemon(_)
        | Action::StopDaemon(_)
        | Action::SetTimeouts { .. }) => Ok(a),
        _ => err(format!("not a rule: {}", line.trim())),
    }
}

/// What -R input asks for: its rules, applied as one transaction, then the other commands
/// ipvsadm's restore also runs (`--start-daemon`, `--stop-daemon`, `--set`), in their order,
/// each with its line number.
#[derive(Debug, Clone, PartialEq)]
pub struct Restore {
    /// Every rule line's changes, in line order.
    pub changes: Vec<Change>,
    /// The other commands, by 1-based line number, in line order.
    pub after: Vec<(usize, Action)>,
}

/// Parses -R input: every line with words is a rule (the rules are one transaction) or one of
/// [`Restore::after`]'s commands. Large inputs are parsed in parallel, a block of lines per
/// CPU (clap's parse of a line is most of the time a restore of 10,000 rules takes); the first
/// error in line order is reported, and nothing is applied when there is one.
pub fn parse_restore(text: &str) -> Result<Restore, CliError> {
    const PER_THREAD: usize = 1000;
    let lines: Vec<(usize, &str)> = text.lines().enumerate().collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(lines.len().div_ceil(PER_THREAD))
        .max(1);
    let block = lines.len().div_ceil(threads).max(1);
    let parse_block = |block: &[(usize, &str)]| -> Result<Restore, CliError> {
        let mut cmd = <Args as clap::CommandFactory>::command();
        let mut out = Restore {
            changes: Vec::new(),
            after: Vec::new(),
        };
        for &(n, line) in block {
            let at = |e: CliError| CliError(format!("line {}: {}", n + 1, e.0));
            if rule_words(line).map_err(at)?.is_empty() {
                continue;
            }
            match parse_restore_line(&mut cmd, line).map_err(at)? {
                Action::Apply(changes) => out.changes.extend(changes),
                other => out.after.push((n + 1, other)),
            }
        }
        Ok(out)
    };
    if threads == 1 {
        return parse_block(&lines);
    }
    let results: Vec<Result<Restore, CliError>> = std::thread::scope(|scope| {
        let running: Vec<_> = lines
            .chunks(block)
            .map(|b| scope.spawn(move || parse_block(b)))
            .collect();
        running
            .into_iter()
            .map(|t| t.join().expect("a rule parser panicked"))
            .collect()
    });
    let mut out = Restore {
        changes: Vec::new(),
        after: Vec::new(),
    };
    for r in results {
        let r = r?;
        out.changes.extend(r.changes);
        out.after.extend(r.after);
    }
    Ok(out)
}

/// Parses rule lines only (a restore's rules, for callers that take no other command).
pub fn parse_rules(text: &str) -> Result<Vec<Change>, CliError> {
    let r = parse_restore(text)?;
    match r.after.first() {
        Some((n, _)) => err(format!("line {n}: not a rule")),
        None => Ok(r.changes),
    }
}

/// The options naming a service, as ipvsadm's rule format writes them (its svc_name):
/// `-t VIP:port`, `-u VIP:port`, `-f 1`, `-f 1 -6`.
pub fn service_option(key: &ServiceKey) -> String {
    service_option_named(key, &Numeric)
}

fn service_option_named(key: &ServiceKey, names: &dyn Names) -> String {
    match *key {
        ServiceKey::Addr { protocol, addr } => {
            let flag = match protocol {
                Protocol::Tcp => "-t",
                Protocol::Udp => "-u",
            };
            format!("{flag} {}", names::addr_port(names, addr, protocol))
        }
        ServiceKey::Fwmark { fwmark, ipv6 } => {
            format!("-f {fwmark}{}", if ipv6 { " -6" } else { "" })
        }
    }
}

/// Every address `-S` writes (what needs a name without `-n`).
pub fn addresses(config: &Config) -> Vec<IpAddr> {
    let mut v = Vec::new();
    for s in config.services() {
        if let ServiceKey::Addr { addr, .. } = s.key {
            v.push(addr.ip());
        }
        v.extend(s.reals.iter().map(|r| r.addr.ip()));
        v.extend(s.sorry_server.map(|a| a.ip()));
    }
    v
}

/// A word of a rule as a shell would need it (health-check paths, texts and commands).
fn quoted(s: &str) -> String {
    shlex::try_quote(s).map_or_else(|_| s.to_string(), |q| q.into_owned())
}

/// A service's quorum as xvsadm options, when it is not keepalived's default.
pub fn quorum_options(q: &Quorum) -> String {
    if q.is_default() {
        String::new()
    } else {
        format!(" --quorum {} --hysteresis {}", q.quorum, q.hysteresis)
    }
}

/// The health-check options of a spec, in a fixed order, as -R reads them back.
pub fn check_options(spec: &CheckSpec) -> String {
    let mut out = String::new();
    let mut opt = |name: &str, value: Option<String>| {
        if let Some(v) = value {
            out.push_str(&format!(" --{name} {v}"));
        }
    };
    opt("check", spec.kind.map(|k| k.to_string()));
    opt("check-port", spec.port.map(|p| p.to_string()));
    opt("check-path", spec.path.as_deref().map(quoted));
    opt("check-status", spec.status.as_ref().map(|s| s.to_string()));
    opt("check-digest", spec.digest.clone());
    opt("check-body", spec.body.as_deref().map(quoted));
    opt("check-command", spec.command.as_deref().map(quoted));
    opt("check-interval", spec.interval_ms.map(check::format_ms));
    opt("check-timeout", spec.timeout_ms.map(check::format_ms));
    opt("check-retry", spec.retry.map(|r| r.to_string()));
    opt(
        "check-retry-delay",
        spec.retry_delay_ms.map(check::format_ms),
    );
    opt("check-rise", spec.rise.map(|r| r.to_string()));
    opt(
        "check-inhibit",
        spec.inhibit
            .map(|i| if i { "yes" } else { "no" }.to_string()),
    );
    out
}

/// The `-P` rules of a service's local addresses (`name` is the service's `-t VIP:port`), in
/// the order they were added: `-P -t VIP:port -z ADDR [-F IFACE] [--laddr-ports LO-HI]`.
/// Addresses are written as numbers: they are the director's own, and DPVS lists them so.
pub fn laddr_rules(name: &str, laddrs: &[LocalAddr]) -> String {
    let mut out = String::new();
    for l in laddrs {
        out.push_str(&format!("-P {name} -z {}", l.addr));
        if let Some(i) = &l.iface {
            // Quoted as a shell would (a name may hold a quote or '#'), as -R splits it.
            out.push_str(&format!(" -F {}", quoted(i)));
        }
        if !l.ports.is_default() {
            out.push_str(&format!(" --laddr-ports {}", l.ports));
        }
        out.push('\n');
    }
    out
}

/// Renders the configuration in ipvsadm's save format (`-S -n`).
pub fn save(config: &Config) -> String {
    save_named(config, &Numeric)
}

/// The tunnel options ipvsadm -S writes after `-w` (ipvsadm.c print_tunnel_rule).
fn tunnel_options(t: &Tunnel) -> String {
    match t.kind {
        TunnelKind::Ipip => " --tun-type ipip".to_string(),
        TunnelKind::Gue => format!(
            " --tun-type gue --tun-port {} {}",
            t.port,
            if t.csum { "--tun-csum" } else { "--tun-nocsum" }
        ),
    }
}

/// ipvsadm's save format (print_service_entry with FMT_RULE), names as `names` gives them:
/// `-A -t VIP:port -s sched [-p timeout [-M mask]] [-b flags]`, its local addresses' `-P`
/// lines, then one `-a -t VIP:port -r RIP:port -g -w weight` per real server (`-b` for FULLNAT,
/// as DPVS), sorted as ipvsadm sorts them. Two additions that ipvsadm's -R reads: thresholds, which
/// ipvsadm -S drops, as ` -x N -y N` after the weight, and a group's `--match` options last.
pub fn save_named(config: &Config, names: &dyn Names) -> String {
    let mut services: Vec<&crate::model::Service> = config.services().iter().collect();
    services.sort_by_key(|s| crate::listing::service_order(&s.key));
    let mut out = String::new();
    for svc in services {
        let name = service_option_named(&svc.key, names);
        out.push_str(&format!("-A {name} -s {}", svc.scheduler));
        if let Some(p) = svc.persistence {
            out.push_str(&format!(" -p {}", p.timeout));
            if let Some(m) = crate::listing::netmask_text(svc.key.is_ipv4(), p.prefix) {
                out.push_str(&format!(" -M {m}"));
            }
        }
        if !svc.flags.is_empty() {
            out.push_str(&format!(" -b {}", svc.flags.names().join(",")));
        }
        // xvs's own options last, so the ipvsadm part of the line reads as ipvsadm writes it.
        for m in &svc.matches {
            out.push_str(&format!(" --match {m}"));
        }
        if let Some(sorry) = svc.sorry_server {
            out.push_str(&format!(
                " --sorry-server {}",
                names::addr_port(names, sorry, protocol_of(&svc.key))
            ));
        }
        out.push_str(&quorum_options(&svc.quorum));
        out.push_str(&check_options(&svc.check));
        out.push('\n');
        // Local addresses right after their service and before its real servers: -R adds a
        // FULLNAT real server only to a service that has a local address of its family.
        out.push_str(&laddr_rules(&name, &svc.laddrs));
        let proto = protocol_of(&svc.key);
        let mut reals: Vec<&RealServer> = svc.reals.iter().collect();
        reals.sort_by_key(|r| crate::listing::addr_order(&r.addr));
        for r in reals {
            let (fwd, tun) = match r.forward {
                ForwardMethod::Dr => ("-g", String::new()),
                ForwardMethod::Tunnel(t) => ("-i", tunnel_options(&t)),
                ForwardMethod::Nat => ("-m", String::new()),
                // DPVS's switch for FULLNAT.
                ForwardMethod::FullNat => ("-b", String::new()),
            };
            out.push_str(&format!(
                "-a {name} -r {} {fwd} -w {}{tun}",
                names::addr_port(names, r.addr, proto),
                r.weight
            ));
            if r.u_threshold != 0 {
                out.push_str(&format!(" -x {}", r.u_threshold));
            }
            if r.l_threshold != 0 {
                out.push_str(&format!(" -y {}", r.l_threshold));
            }
            out.push_str(&check_options(&r.check));
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(args: &[&str]) -> Result<Action, CliError> {
        let argv = std::iter::once("xvsadm").chain(args.iter().copied());
        Args::try_parse_from(argv)
            .map_err(|e| CliError(e.to_string()))?
            .action()
    }

    fn one(args: &[&str]) -> Change {
        match action(args).unwrap() {
            Action::Apply(mut c) => c.remove(0),
            other => panic!("{other:?}"),
        }
    }

    fn tcp(s: &str) -> ServiceKey {
        ServiceKey::Addr {
            protocol: Protocol::Tcp,
            addr: s.parse().unwrap(),
        }
    }

    #[test]
    fn ipvsadm_commands_parse() {
        assert_eq!(
            one(&["-A", "-t", "203.0.113.10:80", "-s", "rr"]),
            Change::AddService {
                key: tcp("203.0.113.10:80"),
                scheduler: Scheduler::Rr,
                flags: SchedFlags::default(),
                persistence: None,
            }
        );
        assert_eq!(
            one(&["-E", "-t", "203.0.113.10:80", "-s", "wrr"]),
            Change::EditService {
                key: tcp("203.0.113.10:80"),
                scheduler: Some(Scheduler::Wrr),
                flags: Some(SchedFlags::default()),
                persistence: Some(None),
            }
        );
        assert_eq!(
            one(&[
                "-a",
                "-t",
                "203.0.113.10:80",
                "-r",
                "198.51.100.11:80",
                "-g",
                "-w",
                "3"
            ]),
            Change::AddReal {
                service: tcp("203.0.113.10:80"),
                real: RealServer {
                    addr: "198.51.100.11:80".parse().unwrap(),
                    weight: 3,
                    forward: ForwardMethod::Dr,
                    u_threshold: 0,
                    l_threshold: 0,
                    check: CheckSpec::default(),
                }
            }
        );
        assert_eq!(
            one(&[
                "-e",
                "-t",
                "203.0.113.10:80",
                "-r",
                "198.51.100.11",
                "-w",
                "0"
            ]),
            Change::EditReal {
                service: tcp("203.0.113.10:80"),
                addr: "198.51.100.11:80".parse().unwrap(),
                weight: Some(0),
                forward: Some(ForwardMethod::Dr),
                u_threshold: Some(0),
                l_threshold: Some(0),
                check: None,
            }
        );
        assert_eq!(
            one(&["-d", "-t", "203.0.113.10:80", "-r", "198.51.100.11:80"]),
            Change::DeleteReal {
                service: tcp("203.0.113.10:80"),
                addr: "198.51.100.11:80".parse().unwrap()
            }
        );
        assert_eq!(one(&["-C"]), Change::Clear);
        assert_eq!(
            one(&["-D", "-u", "[2001:db8::10]:53"]),
            Change::DeleteService {
                key: ServiceKey::Addr {
                    protocol: Protocol::Udp,
                    addr: "[2001:db8::10]:53".parse().unwrap()
                }
            }
        );
        // Long options and a bare IPv6 real server.
        assert_eq!(
            one(&[
                "--add-server",
                "--tcp-service",
                "[2001:db8::10]:80",
                "--real-server",
                "2001:db8::11",
                "--weight",
                "2"
            ]),
            Change::AddReal {
                service: tcp("[2001:db8::10]:80"),
                real: RealServer {
                    addr: "[2001:db8::11]:80".parse().unwrap(),
                    weight: 2,
                    forward: ForwardMethod::Dr,
                    u_threshold: 0,
                    l_threshold: 0,
                    check: CheckSpec::default(),
                }
            }
        );
    }

    #[test]
    fn list_options() {
        assert_eq!(
            action(&["-L", "-n"]).unwrap(),
            Action::List {
                opts: ListOptions {
                    numeric: true,
                    ..Default::default()
                },
                service: None,
                json: false
            }
        );
        assert_eq!(
            action(&["-l", "-n", "--stats", "--exact", "--json"]).unwrap(),
            Action::List {
                opts: ListOptions {
                    format: Format::Stats,
                    exact: true,
                    nosort: false,
                    numeric: true,
                },
                service: None,
                json: true
            }
        );
        assert_eq!(
            action(&["-L", "--timeout"]).unwrap(),
            Action::ListTimeouts { json: false }
        );
    }

    #[test]
    fn bad_commands_are_refused_with_reasons() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["-A", "-t", "203.0.113.10:80", "-s", "bogus"],
                "Scheduler not found",
            ),
            (
                &["-A", "-t", "not an address", "-s", "rr"],
                "Illegal address",
            ),
            (
                &[
                    "-a",
                    "-t",
                    "203.0.113.10:80",
                    "-r",
                    "198.51.100.11",
                    "-w",
                    "-1",
                ],
                "Illegal weight",
            ),
            (
                &[
                    "-a",
                    "-t",
                    "203.0.113.10:80",
                    "-r",
                    "198.51.100.11",
                    "-w",
                    "70000",
                ],
                "Illegal weight",
            ),
            (&["-A", "-f", "0", "-s", "rr"], "Illegal fwmark"),
            (
                &["-a", "-t", "203.0.113.10:80"],
                "You need to supply the 'real-server' option for the 'add-server' command",
            ),
            (
                &["-A", "-s", "rr"],
                "You need to supply the 'service-address' option for the 'add-service' command",
            ),
            (
                &["--start-daemon", "primary"],
                "illegal start-daemon parameter specified",
            ),
            (&["--stop-daemon", "both"], "illegal start_daemon specified"),
            (
                &["--start-daemon", "master", "--syncid", "256"],
                "illegal syncid specified",
            ),
            (
                &["--start-daemon", "master", "--mcast-ttl", "0"],
                "illegal mcast-ttl specified",
            ),
            (
                &["--start-daemon", "master", "--mcast-port", "0"],
                "illegal mcast-port specified",
            ),
            (
                &["--start-daemon", "master", "--sync-maxlen", "65508"],
                "illegal sync-maxlen specified",
            ),
            (
                &["--start-daemon", "master", "--mcast-group", "192.0.2.1"],
                "invalid IPv4 mcast-group `192.0.2.1'",
            ),
            (
                &["--stop-daemon", "master", "--mcast-interface", "eth0"],
                "Illegal 'mcast-interface' option with the 'stop-daemon' command",
            ),
            (
                &["-L", "--daemon", "--stats"],
                "options conflicts in the list command",
            ),
            (
                &[
                    "-A",
                    "-t",
                    "203.0.113.10:80",
                    "-s",
                    "rr",
                    "-M",
                    "255.255.255.0",
                ],
                "needs -p",
            ),
            (
                &["-A", "-t", "203.0.113.10:80", "-p", "-M", "255.0.255.0"],
                "Illegal netmask",
            ),
            (
                &["-A", "-t", "203.0.113.10:80", "-b", "sh-bogus"],
                "Invalid scheduler flag",
            ),
        ];
        for (args, needle) in cases {
            let e = action(args).expect_err(&format!("{args:?} accepted"));
            assert!(e.0.contains(needle), "{args:?}: {e}");
        }
        // Two commands at once is a usage error.
        assert!(action(&["-A", "-D", "-t", "203.0.113.10:80"]).is_err());
    }

    #[test]
    fn service_groups_parse() {
        let g = ServiceKey::fwmark(1, false);
        assert_eq!(
            action(&[
                "-A",
                "-f",
                "1",
                "-s",
                "rr",
                "-p",
                "60",
                "--match",
                "tcp:203.0.113.10:80",
                "--match",
                "tcp:203.0.113.10:443",
            ])
            .unwrap(),
            Action::Apply(vec![
                Change::AddService {
                    key: g,
                    scheduler: Scheduler::Rr,
                    flags: SchedFlags::default(),
                    persistence: Some(Persistence {
                        timeout: 60,
                        prefix: 32
                    }),
                },
                Change::SetMatches {
                    key: g,
                    matches: vec![
                        "tcp:203.0.113.10:80".parse().unwrap(),
                        "tcp:203.0.113.10:443".parse().unwrap()
                    ],
                },
            ])
        );
        // -6, a /64 persistence mask, and UDP on every port.
        let g6 = ServiceKey::fwmark(2, true);
        assert_eq!(
            action(&[
                "-A",
                "-f",
                "2",
                "-6",
                "-p",
                "-M",
                "64",
                "--match",
                "udp:[2001:db8::10]:0"
            ])
            .unwrap(),
            Action::Apply(vec![
                Change::AddService {
                    key: g6,
                    scheduler: Scheduler::Wlc,
                    flags: SchedFlags::default(),
                    persistence: Some(Persistence {
                        timeout: 300,
                        prefix: 64
                    }),
                },
                Change::SetMatches {
                    key: g6,
                    matches: vec![VirtualAddr {
                        protocol: Protocol::Udp,
                        addr: "[2001:db8::10]:0".parse().unwrap()
                    }],
                },
            ])
        );
        // -E without --match keeps the matches; --match none drops them.
        assert_eq!(
            action(&["-E", "-f", "1", "-s", "wrr"]).unwrap(),
            Action::Apply(vec![Change::EditService {
                key: g,
                scheduler: Some(Scheduler::Wrr),
                flags: Some(SchedFlags::default()),
                persistence: Some(None),
            }])
        );
        match action(&["-E", "-f", "1", "--match", "none"]).unwrap() {
            Action::Apply(c) => assert_eq!(
                c[1],
                Change::SetMatches {
                    key: g,
                    matches: vec![]
                }
            ),
            other => panic!("{other:?}"),
        }
        // Real servers of a group: no port given is port 0 (the client's destination port).
        assert_eq!(
            one(&["-a", "-f", "1", "-r", "198.51.100.11", "-w", "2"]),
            Change::AddReal {
                service: g,
                real: RealServer::dr("198.51.100.11:0".parse().unwrap(), 2),
            }
        );
        assert_eq!(one(&["-D", "-f", "0x1"]), Change::DeleteService { key: g });
        let cases: &[(&[&str], &str)] = &[
            (&["-A", "-f", "0", "-s", "rr"], "Illegal fwmark"),
            (&["-A", "-f", "-3", "-s", "rr"], ""),
            (&["-A", "-f", "one"], "Illegal fwmark"),
            (
                &[
                    "-A",
                    "-t",
                    "203.0.113.10:80",
                    "--match",
                    "tcp:203.0.113.10:81",
                ],
                "service groups (-f) only",
            ),
            (&["-A", "-t", "203.0.113.10:80", "-6"], "-6 applies to -f"),
            (
                &["-A", "-f", "1", "-t", "203.0.113.10:80"],
                "multiple 'service-address' options specified",
            ),
            (
                &["-A", "-f", "1", "--match", "sctp:203.0.113.10:80"],
                "Illegal match",
            ),
            (
                &["-A", "-f", "1", "--match", "tcp:203.0.113.10"],
                "Illegal match",
            ),
            (
                &[
                    "-a",
                    "-f",
                    "1",
                    "-r",
                    "198.51.100.11",
                    "--match",
                    "tcp:203.0.113.10:80",
                ],
                "-A and -E only",
            ),
        ];
        for (args, needle) in cases {
            let e = action(args).expect_err(&format!("{args:?} accepted"));
            assert!(e.0.contains(needle), "{args:?}: {e}");
        }
    }

    #[test]
    fn group_save_restore_round_trip() {
        // In ipvsadm's order (marks last, ascending), as -S writes it.
        let rules = "\
-A -t 203.0.113.10:25 -s wlc
-A -f 1 -s rr -p 60 --match tcp:203.0.113.10:80 --match tcp:203.0.113.10:443
-a -f 1 -r 198.51.100.11:0 -g -w 1
-a -f 1 -r 198.51.100.12:0 -g -w 1
-A -f 2 -6 -s sh -p 300 -M 64 --match udp:[2001:db8::10]:0
-a -f 2 -6 -r [2001:db8::11]:0 -g -w 3
";
        let mut config = Config::default();
        config.apply_all(&parse_rules(rules).unwrap()).unwrap();
        assert_eq!(save(&config), rules);
        // Written by ipvsadm: no --match. Accepted, listed, and reported as matching nothing.
        let ipvsadm = "-A -f 1 -s rr -p 60\n-a -f 1 -r 198.51.100.11:0 -g -w 1\n";
        let changes = parse_rules(ipvsadm).unwrap();
        let mut config = Config::default();
        config.apply_all(&changes).unwrap();
        assert_eq!(save(&config), ipvsadm);
        assert_eq!(
            config.unmatched_groups(&changes),
            vec![ServiceKey::fwmark(1, false)]
        );
        assert_eq!(service_option(&ServiceKey::fwmark(1, true)), "-f 1 -6");
        // A restore whose group takes a normal service's address is refused as a whole.
        let clash = "-A -t 203.0.113.10:80 -s rr\n-A -f 1 -s rr --match tcp:203.0.113.10:80\n";
        let mut config = Config::default();
        let e = config.apply_all(&parse_rules(clash).unwrap()).unwrap_err();
        assert!(
            e.to_string()
                .contains("already taken by TCP 203.0.113.10:80"),
            "{e}"
        );
        assert!(config.services().is_empty());
    }

    #[test]
    fn a_large_restore_keeps_line_order_and_reports_the_first_error() {
        let rules: String = (0..5000)
            .map(|i| format!("-A -t 203.0.113.{}:{} -s rr\n", 1 + i % 250, 1 + i / 250))
            .collect();
        let changes = parse_rules(&rules).unwrap();
        assert_eq!(changes.len(), 5000);
        for (i, c) in changes.iter().enumerate() {
            let want: SocketAddr = format!("203.0.113.{}:{}", 1 + i % 250, 1 + i / 250)
                .parse()
                .unwrap();
            assert!(
                matches!(c, Change::AddService { key, .. } if key.virtual_addr().unwrap().addr == want),
                "{i}: {c:?}"
            );
        }
        let mut lines: Vec<String> = rules.lines().map(str::to_string).collect();
        lines[3999] = "-A -t 203.0.113.1:1 -s nope".into();
        lines[1499] = "-A -t bogus".into();
        let e = parse_rules(&lines.join("\n")).unwrap_err();
        assert!(e.0.starts_with("line 1500: "), "{e}");
    }

    #[test]
    fn save_restore_round_trip() {
        let mut config = Config::default();
        let rules = "\
-A -t 203.0.113.10:80 -s wrr
-a -t 203.0.113.10:80 -r 198.51.100.11:80 -g -w 1
-a -t 203.0.113.10:80 -r 198.51.100.12:80 -g -w 3
-A -u [2001:db8::10]:53 -s rr
-a -u [2001:db8::10]:53 -r [2001:db8::11]:53 -g -w 0
";
        config.apply_all(&parse_rules(rules).unwrap()).unwrap();
        assert_eq!(save(&config), rules);
        // A file saved by ipvsadm (comments, blank lines, --tun-remcsum refused with its line
        // number).
        let e = parse_rules("# saved\n\n-A -t 203.0.113.10:80 -s rr\n-a -t 203.0.113.10:80 -r 198.51.100.11:80 -i -w 1 --tun-type gue --tun-port 6080 --tun-remcsum\n")
            .unwrap_err();
        assert!(e.0.starts_with("line 4: --tun-remcsum"), "{e}");
    }

    /// ipvsadm.c generic_opt_check: options that do not go with a command are refused with
    /// ipvsadm's messages, not ignored.
    #[test]
    fn commands_v_options_as_ipvsadm() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["-A", "-t", "203.0.113.10:80", "-w", "3"],
                "Illegal 'weight' option with the 'add-service' command",
            ),
            (
                &["-D", "-t", "203.0.113.10:80", "-s", "rr"],
                "Illegal 'scheduler' option with the 'delete-service' command",
            ),
            (
                &["-C", "-t", "203.0.113.10:80"],
                "Illegal 'service-address' option with the 'flush' command",
            ),
            (
                &["-a", "-t", "203.0.113.10:80", "-r", "198.51.100.11", "-p"],
                "Illegal 'persistent' option with the 'add-server' command",
            ),
            (
                &["-d", "-t", "203.0.113.10:80", "-r", "198.51.100.11", "-w", "1"],
                "Illegal 'weight' option with the 'delete-server' command",
            ),
            (&["-Z", "-n"], "Illegal 'numeric' option with the 'zero' command"),
            (&["-S", "--stats"], "Illegal 'stats' option with the 'save' command"),
            (&["-R", "-n"], "Illegal 'numeric' option with the 'restore' command"),
            (
                &["--set", "1", "2", "3", "-n"],
                "Illegal 'numeric' option with the 'set' command",
            ),
            (
                &["-L", "-c", "-t", "203.0.113.10:80"],
                "The option 'service-address' conflicts with the 'connection' option in the 'list' command",
            ),
            (
                &["-L", "--timeout", "-c"],
                "The option 'timeout' conflicts with the 'connection' option in the 'list' command",
            ),
            (&["-L", "-c", "--stats"], "options conflicts in the list command"),
            (&["-L", "--timeout", "--persistent-conn"], "options conflicts in the list command"),
            (&["-L", "-s", "rr"], "Illegal 'scheduler' option with the 'list' command"),
            (&["-L", "-o"], "Illegal 'ops' option with the 'list' command"),
            (
                &["-A", "-t", "203.0.113.10:80", "--mcast-group", "224.0.0.81"],
                "Illegal 'mcast-group' option with the 'add-service' command",
            ),
            (
                &["-A", "-t", "203.0.113.10:80", "-r", "198.51.100.11"],
                "Illegal 'real-server' option with the 'add-service' command",
            ),
            (
                &["-a", "-t", "203.0.113.10:80", "-r", "198.51.100.11", "-g", "-m"],
                "multiple 'forwarding-method' options specified",
            ),
            (&["-A", "-E", "-t", "203.0.113.10:80"], "cannot be used with"),
            (&["-n"], "no command specified"),
            (
                &["--set", "900", "120", "2678401"],
                "invalid timeout value `2678401' specified",
            ),
            (
                &["-A", "-t", "203.0.113.10:80", "-p", "0"],
                "invalid timeout value `0' specified",
            ),
            (
                &["-a", "-t", "203.0.113.10:80", "-r", "198.51.100.11", "-x", "-1"],
                "illegal u_threshold specified",
            ),
            (
                &["-A", "-t", "203.0.113.10:80", "-s", "rr", "-b", "sh-port"],
                "incompatible scheduler flag `sh-port'",
            ),
            (&["-S", "--json"], "-L -n --json"),
            (&["-A", "-t", "203.0.113.10:80", "--json"], "--json applies to listings"),
        ];
        for (args, needle) in cases {
            let e = action(args).expect_err(&format!("{args:?} accepted"));
            assert!(e.0.contains(needle), "{args:?}: {e}");
        }
        // What the table allows.
        assert!(
            action(&["-L", "-n", "--stats", "--rate", "--exact", "--nosort", "--sort"]).is_ok()
        );
        assert!(action(&["-L", "-c", "--persistent-conn", "-n"]).is_ok());
        assert!(action(&["-Z", "-t", "203.0.113.10:80"]).is_ok());
        assert!(action(&["-S", "-n"]).is_ok());
    }

    /// Every ipvsadm option xvs cannot honour is refused with its reason (the e2e test checks
    /// that the daemon's table does not change).
    pub(crate) const REFUSED: &[(&[&str], &str)] = &[
        (
            &[
                "-a",
                "-t",
                "203.0.113.10:80",
                "-r",
                "198.51.100.13",
                "-i",
                "--tun-type",
                "gue",
                "--tun-port",
                "6080",
                "--tun-remcsum",
            ],
            "--tun-remcsum (GUE remote checksum offload) is not supported",
        ),
        (
            &[
                "-a",
                "-t",
                "203.0.113.10:80",
                "-r",
                "198.51.100.13",
                "--tun-type",
                "gue",
            ],
            "Tunnel options conflict with forward method",
        ),
        (
            &["-A", "--sctp-service", "203.0.113.10:80", "-s", "rr"],
            "xvs balances TCP and UDP only",
        ),
        (
            &["-A", "-u", "203.0.113.10:53", "-s", "rr", "-o"],
            "-o (one-packet scheduling) is not implemented by xvs",
        ),
        (
            &[
                "-A",
                "-t",
                "203.0.113.10:5060",
                "-s",
                "rr",
                "-p",
                "--pe",
                "sip",
            ],
            "--pe (persistence engine, e.g. sip) is not supported",
        ),
    ];

    #[test]
    fn refused_options_say_why() {
        for (args, needle) in REFUSED {
            let e = action(args).expect_err(&format!("{args:?} accepted"));
            assert!(e.0.contains(needle), "{args:?}: {e}");
        }
    }

    #[test]
    fn sync_daemon_commands_take_ipvsadms_options_and_defaults() {
        assert_eq!(
            action(&["--start-daemon", "master"]).unwrap(),
            Action::StartDaemon(DaemonConfig::new(Role::Master))
        );
        assert_eq!(
            action(&[
                "--start-daemon",
                "backup",
                "--mcast-interface",
                "br0",
                "--syncid",
                "9",
                "--mcast-group",
                "ff02::81",
                "--mcast-port",
                "9000",
                "--mcast-ttl",
                "2",
                "--sync-maxlen",
                "1400",
            ])
            .unwrap(),
            Action::StartDaemon(DaemonConfig {
                role: Role::Backup,
                mcast_ifn: "br0".into(),
                syncid: 9,
                sync_maxlen: Some(1400),
                group: Some("ff02::81".parse().unwrap()),
                port: Some(9000),
                ttl: Some(2),
            })
        );
        assert_eq!(
            action(&["--stop-daemon", "backup"]).unwrap(),
            Action::StopDaemon(Role::Backup)
        );
        assert_eq!(
            action(&["-L", "--daemon"]).unwrap(),
            Action::ListDaemons { json: false }
        );
        assert_eq!(
            action(&["-L", "--daemon", "--json"]).unwrap(),
            Action::ListDaemons { json: true }
        );
    }

    #[test]
    fn help_version_and_list_shapes() {
        assert_eq!(action(&["-h"]).unwrap(), Action::Help);
        assert_eq!(action(&["--help"]).unwrap(), Action::Help);
        assert_eq!(action(&["-v"]).unwrap(), Action::Version);
        assert_eq!(action(&["-V"]).unwrap(), Action::Version);
        assert_eq!(action(&["--version"]).unwrap(), Action::Version);
        assert_eq!(
            action(&["-L", "-t", "203.0.113.10:80", "--rate", "-X"]).unwrap(),
            Action::List {
                opts: ListOptions {
                    format: Format::Rate,
                    exact: true,
                    nosort: false,
                    numeric: false,
                },
                service: Some(tcp("203.0.113.10:80")),
                json: false
            }
        );
        // One UDP service, one group (IPv6).
        for (args, key) in [
            (
                &["-L", "-u", "[2001:db8::10]:53"][..],
                ServiceKey::new(Protocol::Udp, "[2001:db8::10]:53".parse().unwrap()),
            ),
            (
                &["-l", "-f", "2", "-6", "-n"][..],
                ServiceKey::fwmark(2, true),
            ),
        ] {
            match action(args).unwrap() {
                Action::List { service, .. } => assert_eq!(service, Some(key), "{args:?}"),
                other => panic!("{other:?}"),
            }
        }
        // ipvsadm's precedence: --stats over --rate over --thresholds...
        match action(&["-L", "--rate", "--thresholds", "--stats"]).unwrap() {
            Action::List { opts, .. } => assert_eq!(opts.format, Format::Stats),
            other => panic!("{other:?}"),
        }
        match action(&["-l", "--persistent-conn", "--tun-info"]).unwrap() {
            Action::List { opts, .. } => assert_eq!(opts.format, Format::PersistentConn),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            action(&["-L", "-c", "--persistent-conn", "--json"]).unwrap(),
            Action::ListConnections {
                json: true,
                numeric: false,
                persistent_conn: true
            }
        );
        assert_eq!(
            action(&["-Z", "-u", "[2001:db8::10]:53"]).unwrap(),
            Action::Zero {
                service: Some(ServiceKey::new(
                    Protocol::Udp,
                    "[2001:db8::10]:53".parse().unwrap()
                ))
            }
        );
        assert_eq!(action(&["-Z"]).unwrap(), Action::Zero { service: None });
        assert_eq!(action(&["-S"]).unwrap(), Action::Save { numeric: false });
        assert_eq!(
            action(&["--set", "900", "0", "300"]).unwrap(),
            Action::SetTimeouts {
                tcp: Some(900),
                tcpfin: None,
                udp: Some(300)
            }
        );
    }

    /// ipvsadm's parse_service: `host[:port]` with port names from /etc/services.
    #[test]
    fn addresses_and_port_names() {
        let services = names::Services::system();
        assert_eq!(
            services.name(80, Protocol::Tcp),
            Some("http"),
            "/etc/services is missing or lacks http (Debian: apt-get install netbase)"
        );
        let p = |s: &str| parse_host_port(s, Protocol::Tcp);
        assert_eq!(
            p("203.0.113.10:http").unwrap(),
            ("203.0.113.10".parse().unwrap(), Some(80))
        );
        assert_eq!(p("203.0.113.10:https").unwrap().1, Some(443));
        assert_eq!(p("203.0.113.10").unwrap().1, None);
        assert_eq!(
            p("[2001:db8::10]:80").unwrap(),
            ("2001:db8::10".parse().unwrap(), Some(80))
        );
        assert_eq!(
            p("2001:db8::10").unwrap(),
            ("2001:db8::10".parse().unwrap(), None)
        );
        assert_eq!(p("localhost:80").unwrap().0, IpAddr::from([127, 0, 0, 1]));
        for bad in [
            "80",
            "203.0.113.10:nosuchport",
            "300.1.2.3:80",
            "not an address",
            "[2001:db8::10",
            "[2001:db8::10]80",
            "",
        ] {
            assert!(p(bad).is_err(), "{bad} accepted");
        }
        // A real server without a port takes the service's.
        assert_eq!(
            parse_real_addr("198.51.100.11", 443, Protocol::Tcp).unwrap(),
            "198.51.100.11:443".parse::<SocketAddr>().unwrap()
        );
    }

    /// `ipvsadm -Sn` output, verbatim, from Comcast/Ravel (pkg/system/ipvs_test.go,
    /// "/app # ipvsadm -Sn"): restores into xvs and is written back byte for byte. Its
    /// addresses are kept as ipvsadm printed them; nothing is sent to them.
    #[test]
    fn restores_an_ipvsadm_saved_file() {
        let fixture = include_str!("../tests/fixtures/ravel-ipvsadm-Sn.rules");
        let rules: String = fixture
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        let mut config = Config::default();
        config.apply_all(&parse_rules(fixture).unwrap()).unwrap();
        assert_eq!(config.services().len(), 4);
        assert_eq!(save(&config), rules);
    }

    /// `ipvsadm -S` (without -n) writes names; -R reads them back. The -A line is literal from
    /// alibaba/LVS#15 ("-A -t 10.10.11.77:http -s rr"); the -a line is ipvsadm's DR form.
    #[test]
    fn restores_names_and_saves_them_as_ipvsadm() {
        let fixture = include_str!("../tests/fixtures/ipvsadm-S-names.rules");
        let mut config = Config::default();
        config.apply_all(&parse_rules(fixture).unwrap()).unwrap();
        let numeric = save(&config);
        assert_eq!(
            numeric,
            "-A -t 10.10.11.77:80 -s rr\n-a -t 10.10.11.77:80 -r 10.10.11.66:80 -g -w 100\n"
        );
        // -S without -n: port names from /etc/services, host names where the resolver has them.
        let names = names::Resolved::with(
            std::collections::HashMap::from([("10.10.11.66".parse().unwrap(), "rs1.lab".into())]),
            names::Services::system(),
        );
        assert_eq!(
            save_named(&config, &names),
            "-A -t 10.10.11.77:http -s rr\n-a -t 10.10.11.77:http -r rs1.lab:http -g -w 100\n"
        );
    }

    /// ipvsadm's restore reader (config_stream.c): lines may start with `ipvsadm`, words are
    /// split on blanks and tabs, `#` starts a comment.
    #[test]
    fn restore_reads_lines_as_ipvsadm() {
        let text = "ipvsadm -A -t 203.0.113.10:80 -s rr   # web\n\n# nothing\n\tipvsadm\t-a -t 203.0.113.10:80 -r 198.51.100.11:80 -g -w 2\n";
        let changes = parse_rules(text).unwrap();
        assert_eq!(changes.len(), 2);
        let e = parse_rules("-A -t 203.0.113.10:80 -s rr\n-L -n\n").unwrap_err();
        assert!(e.0.starts_with("line 2: not a rule"), "{e}");
    }

    /// ipvsadm's restore runs every line, so a saved setup may start its sync daemons and
    /// set its timeouts: -R applies the rules as one transaction, then those lines in order.
    #[test]
    fn restore_runs_daemon_and_timeout_lines_after_the_rules() {
        let text = "--start-daemon master --mcast-interface eth1 --syncid 7\n\
                    -A -t 203.0.113.10:80 -s rr\n\
                    --set 900 120 300\n\
                    -a -t 203.0.113.10:80 -r 198.51.100.11:80 -g\n\
                    --stop-daemon backup\n";
        let r = parse_restore(text).unwrap();
        assert_eq!(r.changes.len(), 2);
        let lines: Vec<usize> = r.after.iter().map(|(n, _)| *n).collect();
        assert_eq!(lines, [1, 3, 5]);
        assert!(matches!(&r.after[0].1, Action::StartDaemon(d) if d.syncid == 7));
        assert!(matches!(r.after[1].1, Action::SetTimeouts { .. }));
        assert!(matches!(r.after[2].1, Action::StopDaemon(Role::Backup)));
        // A bad daemon line fails the whole input, with its line.
        let e = parse_restore("-A -t 203.0.113.10:80\n--start-daemon both\n").unwrap_err();
        assert!(e.0.starts_with("line 2: illegal start-daemon"), "{e}");
        // Listing or zeroing in a restore: refused as before (-C is a rule: the transaction
        // starts from an empty table).
        for line in ["-L -n", "-Z", "--help"] {
            let e = parse_restore(line).unwrap_err();
            assert!(e.0.starts_with("line 1:"), "{line}: {e}");
        }
        // parse_rules (rules only) refuses daemon lines.
        let e = parse_rules("--stop-daemon master\n").unwrap_err();
        assert!(e.0.starts_with("line 1: not a rule"), "{e}");
    }

    /// -S writes ipvsadm's option order: -s, then -p and -M, then -b; thresholds (which
    /// ipvsadm -S drops) after the weight, in the options -R reads.
    #[test]
    fn save_order_as_ipvsadm() {
        let rules = "\
-A -t 203.0.113.10:80 -s sh -p 300 -M 255.255.255.0 -b sh-fallback,sh-port
-a -t 203.0.113.10:80 -r 198.51.100.11:80 -g -w 1 -x 1000 -y 800
-a -t 203.0.113.10:80 -r 198.51.100.12:80 -g -w 0
";
        let mut config = Config::default();
        config.apply_all(&parse_rules(rules).unwrap()).unwrap();
        assert_eq!(save(&config), rules);
        // Options in any order, flag-N aliases, a port name: the same rules.
        let mut again = Config::default();
        again
            .apply_all(
                &parse_rules(
                    "-A -b flag-1,flag-2 -M 24 -p -s sh -t 203.0.113.10:80\n\
                     -a -t 203.0.113.10:80 -y 800 -x 1000 -r 198.51.100.11 -w 1\n\
                     -a -r 198.51.100.12 -w 0 -t 203.0.113.10:80\n",
                )
                .unwrap(),
            )
            .unwrap();
        assert_eq!(save(&again), rules);
    }

    #[test]
    fn tunnel_options_as_ipvsadm_reads_and_saves_them() {
        // ipvsadm's save format for tunnels (ipvsadm.c print_tunnel_rule): "--tun-type ipip",
        // "--tun-type gue --tun-port N --tun-nocsum|--tun-csum" after -w; an IPv6 VIP may have
        // an IPv4 server (and the reverse) for tunnels only.
        let rules = "\
-A -t 203.0.113.10:80 -s rr
-a -t 203.0.113.10:80 -r 198.51.100.11:80 -i -w 1 --tun-type ipip
-a -t 203.0.113.10:80 -r 198.51.100.12:80 -i -w 2 --tun-type gue --tun-port 6080 --tun-nocsum
-a -t 203.0.113.10:80 -r 198.51.100.13:80 -i -w 3 --tun-type gue --tun-port 6080 --tun-csum
-a -t 203.0.113.10:80 -r [2001:db8::13]:80 -i -w 1 --tun-type ipip
-A -t [2001:db8::10]:80 -s rr
-a -t [2001:db8::10]:80 -r 198.51.100.14:80 -i -w 1 --tun-type ipip
";
        let mut config = Config::default();
        config.apply_all(&parse_rules(rules).unwrap()).unwrap();
        assert_eq!(save(&config), rules);
        assert_eq!(
            config.services()[0].reals[1].forward,
            ForwardMethod::Tunnel(Tunnel {
                kind: TunnelKind::Gue,
                port: 6080,
                csum: false
            })
        );
        // -i alone is IPIP, as in ipvsadm.
        let c = parse_rules("-A -t 203.0.113.10:80\n-a -t 203.0.113.10:80 -r 198.51.100.11 -i\n")
            .unwrap();
        let mut config = Config::default();
        config.apply_all(&c).unwrap();
        assert_eq!(
            config.services()[0].reals[0].forward,
            ForwardMethod::Tunnel(Tunnel::IPIP)
        );
        for (bad, why) in [
            ("-r 198.51.100.11 -i --tun-type gue", "needs a port"),
            (
                "-r 198.51.100.11 -i --tun-type ipip --tun-port 1",
                "apply to --tun-type gue only",
            ),
            (
                "-r 198.51.100.11 --tun-type gue --tun-port 1",
                "Tunnel options conflict",
            ),
            ("-r 198.51.100.11 -i --tun-type gre", "gre is not supported"),
            (
                "-r 198.51.100.11 -i --tun-type gue --tun-port 0",
                "Illegal tunnel port",
            ),
            ("-r [2001:db8::11] -g", "same address family"),
        ] {
            let text = format!("-A -t 203.0.113.10:80\n-a -t 203.0.113.10:80 {bad}\n");
            let e = parse_rules(&text)
                .map_err(|e| e.to_string())
                .and_then(|c| Config::default().apply_all(&c).map_err(|e| e.to_string()))
                .unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    /// Masquerading as ipvsadm reads and saves it: `-m` on -a/-e, "-m" in -S after the address
    /// (print_service_entry's fwd_switch), the port kept as given (ipvsadm's process_options
    /// sets the service's port for -g and -i only), the service's when none is given; -g, -i
    /// and -m mix in one service.
    #[test]
    fn masquerading_as_ipvsadm_reads_and_saves_it() {
        assert_eq!(
            one(&[
                "-a",
                "-t",
                "203.0.113.10:80",
                "-r",
                "198.51.100.11:8080",
                "-m"
            ]),
            Change::AddReal {
                service: tcp("203.0.113.10:80"),
                real: RealServer {
                    addr: "198.51.100.11:8080".parse().unwrap(),
                    weight: 1,
                    forward: ForwardMethod::Nat,
                    u_threshold: 0,
                    l_threshold: 0,
                    check: CheckSpec::default(),
                }
            }
        );
        assert_eq!(
            one(&[
                "--edit-server",
                "-t",
                "203.0.113.10:80",
                "-r",
                "198.51.100.11:8080",
                "--masquerading",
                "-w",
                "2"
            ]),
            Change::EditReal {
                service: tcp("203.0.113.10:80"),
                addr: "198.51.100.11:8080".parse().unwrap(),
                weight: Some(2),
                forward: Some(ForwardMethod::Nat),
                u_threshold: Some(0),
                l_threshold: Some(0),
                check: None,
            }
        );
        let rules = "\
-A -t 203.0.113.10:80 -s rr
-a -t 203.0.113.10:80 -r 198.51.100.11:80 -g -w 1
-a -t 203.0.113.10:80 -r 198.51.100.12:80 -m -w 2
-a -t 203.0.113.10:80 -r 198.51.100.12:8080 -m -w 3 -x 100
-a -t 203.0.113.10:80 -r 198.51.100.13:80 -i -w 1 --tun-type ipip
-A -t 203.0.113.20:0 -s rr -p 300
-a -t 203.0.113.20:0 -r 198.51.100.14:0 -m -w 1
-A -u [2001:db8::10]:53 -s rr
-a -u [2001:db8::10]:53 -r [2001:db8::11]:5353 -m -w 1
-A -f 1 -s rr
-a -f 1 -r 198.51.100.15:0 -m -w 1
-a -f 1 -r 198.51.100.15:8443 -m -w 1
";
        let mut config = Config::default();
        config.apply_all(&parse_rules(rules).unwrap()).unwrap();
        assert_eq!(save(&config), rules);
        // -R of what -S wrote builds the same configuration.
        let mut again = Config::default();
        again
            .apply_all(&parse_rules(&save(&config)).unwrap())
            .unwrap();
        assert_eq!(again, config);
        // A NAT server without a port takes the service's; one on a port-0 service takes 0.
        let mut c = Config::default();
        c.apply_all(
            &parse_rules(
                "-A -t 203.0.113.10:80\n-a -t 203.0.113.10:80 -r 198.51.100.11 -m\n\
                 -A -t 203.0.113.20:0 -p\n-a -t 203.0.113.20:0 -r 198.51.100.11 -m\n",
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            save(&c),
            "-A -t 203.0.113.10:80 -s wlc\n-a -t 203.0.113.10:80 -r 198.51.100.11:80 -m -w 1\n\
             -A -t 203.0.113.20:0 -s wlc -p 300\n-a -t 203.0.113.20:0 -r 198.51.100.11:0 -m -w 1\n"
        );
        // -e and -d find a NAT server by its port.
        config
            .apply_all(
                &parse_rules(
                    "-e -t 203.0.113.10:80 -r 198.51.100.12:8080 -m -w 5\n\
                     -d -t 203.0.113.10:80 -r 198.51.100.12\n",
                )
                .unwrap(),
            )
            .unwrap();
        let reals = &config.service(&tcp("203.0.113.10:80")).unwrap().reals;
        assert_eq!(reals.len(), 3);
        assert_eq!(reals[1].addr, "198.51.100.12:8080".parse().unwrap());
        assert_eq!(reals[1].weight, 5);
        // One forwarding method per line, tunnel options with -i only, as ipvsadm.
        for (bad, why) in [
            (
                "-r 198.51.100.11 -g -m",
                "multiple 'forwarding-method' options specified",
            ),
            (
                "-r 198.51.100.11 -m -i",
                "multiple 'forwarding-method' options specified",
            ),
            (
                "-r 198.51.100.11 -m --tun-type gue --tun-port 6080",
                "Tunnel options conflict with forward method",
            ),
            (
                "-r [2001:db8::11] -m",
                "Masquerading (NAT) needs the real server 2001:db8::11 in the same address \
                 family as the VIP 203.0.113.10",
            ),
        ] {
            let text = format!("-A -t 203.0.113.10:80\n-a -t 203.0.113.10:80 {bad}\n");
            let e = parse_rules(&text)
                .map_err(|e| e.to_string())
                .and_then(|c| Config::default().apply_all(&c).map_err(|e| e.to_string()))
                .unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let e =
            parse_rules("-A -t 203.0.113.20:0 -p\n-a -t 203.0.113.20:0 -r 198.51.100.11:8080 -m\n")
                .map_err(|e| e.to_string())
                .and_then(|c| Config::default().apply_all(&c).map_err(|e| e.to_string()))
                .unwrap_err();
        assert_eq!(
            e,
            "Illegal port for masquerading real server 198.51.100.11:8080 of TCP 203.0.113.20:0: \
             a service on every port sends each connection to the port it was addressed to, so its \
             NAT real servers take port 0 (198.51.100.11:0, or no port)"
        );
    }

    /// Health checks: keepalived's vocabulary on -A/-E (the real servers' default) and -a/-e
    /// (a real server's own), written by -S after the ipvsadm part of the line, quoted as a
    /// shell would, and read back by -R.
    #[test]
    fn health_checks_parse_save_and_restore() {
        let rules = r#"-A -t 203.0.113.10:80 -s rr --sorry-server 198.51.100.13:80 --check http --check-path /health --check-status 200,204 --check-interval 1s --check-retry 2 --check-retry-delay 500ms
-a -t 203.0.113.10:80 -r 198.51.100.11:80 -g -w 1
-a -t 203.0.113.10:80 -r 198.51.100.12:80 -g -w 2 --check-port 8080 --check-body 'status: ok #1' --check-rise 3 --check-inhibit yes
-a -t 203.0.113.10:80 -r 198.51.100.14:80 -g -w 1 --check misc --check-command "sh -c 'exit 1'" --check-timeout 1.5s
-a -t 203.0.113.10:80 -r 198.51.100.15:80 -g -w 1 --check https --check-digest 9b3a0c85a887a256d6939da88aabd8cd
-a -t 203.0.113.10:80 -r 198.51.100.16:80 -g -w 1 --check none
"#;
        let mut config = Config::default();
        config.apply_all(&parse_rules(rules).unwrap()).unwrap();
        assert_eq!(save(&config), rules);
        let svc = &config.services()[0];
        assert_eq!(svc.sorry_server, Some("198.51.100.13:80".parse().unwrap()));
        assert_eq!(svc.check.kind, Some(CheckKind::Http));
        assert_eq!(svc.check.interval_ms, Some(1000));
        assert_eq!(svc.reals[1].check.body.as_deref(), Some("status: ok #1"));
        assert_eq!(svc.reals[1].check.inhibit, Some(true));
        assert_eq!(
            svc.reals[2].check.command.as_deref(),
            Some("sh -c 'exit 1'")
        );
        let resolved = crate::model::check_of(svc, &svc.reals[2]).unwrap().unwrap();
        assert_eq!(
            resolved.probe,
            check::Probe::Misc {
                argv: vec!["sh".into(), "-c".into(), "exit 1".into()]
            }
        );
        // The unchecked server and an inheriting one.
        assert!(crate::model::check_of(svc, &svc.reals[4])
            .unwrap()
            .is_none());
        let rs1 = crate::model::check_of(svc, &svc.reals[0]).unwrap().unwrap();
        assert_eq!(rs1.retry, 2);
        // -E/-e without check options keep the check; with some, they replace it.
        let edits = parse_rules(
            "-E -t 203.0.113.10:80 -s wrr\n-e -t 203.0.113.10:80 -r 198.51.100.12:80 -w 5\n",
        )
        .unwrap();
        config.apply_all(&edits).unwrap();
        assert_eq!(config.services()[0].check.kind, Some(CheckKind::Http));
        assert_eq!(config.services()[0].reals[1].check.rise, Some(3));
        assert_eq!(
            config.services()[0].sorry_server,
            Some("198.51.100.13:80".parse().unwrap())
        );
        let edits = parse_rules(
            "-e -t 203.0.113.10:80 -r 198.51.100.12:80 -w 5 --check inherit\n\
             -E -t 203.0.113.10:80 -s wrr --sorry-server none --check tcp\n",
        )
        .unwrap();
        // In the other order, the real server's --check-body would not go with tcp.
        let mut refused = config.clone();
        let mut swapped = edits.clone();
        swapped.rotate_left(1);
        assert!(refused.apply_all(&swapped).is_err());
        config.apply_all(&edits).unwrap();
        let svc = &config.services()[0];
        assert_eq!(svc.sorry_server, None);
        assert_eq!(
            svc.check,
            CheckSpec {
                kind: Some(CheckKind::Tcp),
                ..Default::default()
            }
        );
        assert!(svc.reals[1].check.is_empty());
    }

    #[test]
    fn quorum_and_hysteresis_are_set_saved_and_kept() {
        let mut config = Config::default();
        config
            .apply_all(
                &parse_rules(
                    "-A -t 203.0.113.10:80 -s rr --quorum 3 --hysteresis 1
                     -a -t 203.0.113.10:80 -r 198.51.100.11:80 -w 3
",
                )
                .unwrap(),
            )
            .unwrap();
        let q = Quorum {
            quorum: 3,
            hysteresis: 1,
        };
        assert_eq!(config.services()[0].quorum, q);
        // -S writes them after the ipvsadm part, and -R reads them back.
        let saved = save(&config);
        assert!(saved.starts_with("-A -t 203.0.113.10:80 -s rr --quorum 3 --hysteresis 1\n"));
        let mut back = Config::default();
        back.apply_all(&parse_rules(&saved).unwrap()).unwrap();
        assert_eq!(back.services()[0].quorum, q);
        // -E without them keeps them; with one, the other is its default.
        config
            .apply_all(&parse_rules("-E -t 203.0.113.10:80 -s wrr\n").unwrap())
            .unwrap();
        assert_eq!(config.services()[0].quorum, q);
        config
            .apply_all(&parse_rules("-E -t 203.0.113.10:80 -s wrr --quorum 2\n").unwrap())
            .unwrap();
        assert_eq!(
            config.services()[0].quorum,
            Quorum {
                quorum: 2,
                hysteresis: 0
            }
        );
        // Defaults are not written.
        config
            .apply_all(&parse_rules("-E -t 203.0.113.10:80 -s wrr --quorum 1\n").unwrap())
            .unwrap();
        assert!(!save(&config).contains("--quorum"));
        // A hysteresis that reaches the quorum is refused, and changes nothing.
        let before = config.clone();
        let e = config
            .apply_all(
                &parse_rules("-E -t 203.0.113.10:80 -s wrr --quorum 2 --hysteresis 2\n").unwrap(),
            )
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("Hysteresis 2 must be below the quorum 2"),
            "{e}"
        );
        assert_eq!(config, before);
        // Bad values and wrong commands.
        assert_eq!(
            parse_rules("-A -t 203.0.113.11:80 --quorum many\n")
                .unwrap_err()
                .to_string(),
            "line 1: Illegal quorum: many (a weight, 0 to 4294967295)"
        );
        let e = parse_rules("-a -t 203.0.113.10:80 -r 198.51.100.12:80 --quorum 2\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--quorum and --hysteresis apply to -A and -E only"),
            "{e}"
        );
    }

    #[test]
    fn health_check_options_are_refused_with_reasons() {
        for (args, why) in [
            (
                &["-L", "-n", "--check", "tcp"][..],
                "--check applies to -A, -E, -a and -e only",
            ),
            (
                &[
                    "-d",
                    "-t",
                    "203.0.113.10:80",
                    "-r",
                    "198.51.100.11",
                    "--check-rise",
                    "2",
                ],
                "--check-rise applies to",
            ),
            (
                &[
                    "-a",
                    "-t",
                    "203.0.113.10:80",
                    "-r",
                    "198.51.100.11",
                    "--sorry-server",
                    "198.51.100.13",
                ],
                "--sorry-server applies to -A and -E only",
            ),
            (
                &[
                    "-a",
                    "-t",
                    "203.0.113.10:80",
                    "-r",
                    "198.51.100.11",
                    "--check",
                    "ping",
                ],
                "Illegal check type: ping",
            ),
            (
                &[
                    "-a",
                    "-t",
                    "203.0.113.10:80",
                    "-r",
                    "198.51.100.11",
                    "--check",
                    "tcp",
                    "--check-path",
                    "/h",
                ],
                "--check-path does not apply to --check tcp",
            ),
            (
                &[
                    "-a",
                    "-t",
                    "203.0.113.10:80",
                    "-r",
                    "198.51.100.11",
                    "--check",
                    "http",
                    "--check-interval",
                    "soon",
                ],
                "Illegal duration: soon",
            ),
            (
                &[
                    "-a",
                    "-t",
                    "203.0.113.10:80",
                    "-r",
                    "198.51.100.11",
                    "--check",
                    "http",
                    "--check-status",
                    "2xx",
                ],
                "Illegal status code list",
            ),
            (
                &[
                    "-a",
                    "-t",
                    "203.0.113.10:80",
                    "-r",
                    "198.51.100.11",
                    "--check",
                    "http",
                    "--check-digest",
                    "abc",
                ],
                "32 hexadecimal digits",
            ),
            (
                &[
                    "-a",
                    "-t",
                    "203.0.113.10:80",
                    "-r",
                    "198.51.100.11",
                    "--check",
                    "tcp",
                    "--check-port",
                    "0",
                ],
                "Illegal check port: 0",
            ),
            (
                &[
                    "-a",
                    "-t",
                    "203.0.113.10:80",
                    "-r",
                    "198.51.100.11",
                    "--check",
                    "tcp",
                    "--check-inhibit",
                    "maybe",
                ],
                "yes or no",
            ),
            (
                &["-A", "-t", "203.0.113.10:80", "--check", "inherit"],
                "applies to real servers",
            ),
        ] {
            let e = action(args).unwrap_err();
            assert!(e.0.contains(why), "{args:?}: {e}");
        }
        // What needs the service is xvsd's to refuse: nothing changes.
        let mut config = Config::default();
        config
            .apply_all(&parse_rules("-A -t 203.0.113.10:80 -s rr --check tcp\n-a -t 203.0.113.10:80 -r 198.51.100.11\n").unwrap())
            .unwrap();
        let before = config.clone();
        for (rule, why) in [
            (
                "-a -t 203.0.113.10:80 -r 198.51.100.12 --check-path /h",
                "--check-path does not apply to --check tcp",
            ),
            (
                "-a -t 203.0.113.10:80 -r 198.51.100.12 --check misc",
                "needs --check-command",
            ),
            (
                "-E -t 203.0.113.10:80 -s rr --sorry-server 198.51.100.11",
                "is a real server of the service",
            ),
            (
                "-E -t 203.0.113.10:80 -s rr --sorry-server [2001:db8::13]:80",
                "same address family",
            ),
            (
                "-E -t 203.0.113.10:80 -s rr --check misc",
                "needs --check-command",
            ),
        ] {
            let e = config.apply_all(&parse_rules(rule).unwrap()).unwrap_err();
            assert!(e.to_string().contains(why), "{rule}: {e}");
            assert_eq!(config, before, "{rule}");
        }
    }

    fn laddr(addr: &str, ports: Option<(u16, u16)>, iface: Option<&str>) -> LocalAddr {
        LocalAddr {
            addr: addr.parse().unwrap(),
            ports: ports.map_or(PortRange::DEFAULT, |(lo, hi)| PortRange { lo, hi }),
            iface: iface.map(String::from),
        }
    }

    /// DPVS's local-address commands: -P/--add-laddr, -Q/--del-laddr, -G/--get-laddr, with
    /// -z/--laddr and -F/--ifname, and xvs's --laddr-ports.
    #[test]
    fn local_address_commands_parse_as_dpvs() {
        let k = tcp("203.0.113.10:80");
        assert_eq!(
            one(&[
                "-P",
                "-t",
                "203.0.113.10:80",
                "-z",
                "10.0.0.9",
                "-F",
                "eth1"
            ]),
            Change::AddLocalAddr {
                service: k,
                laddr: laddr("10.0.0.9", None, Some("eth1")),
            }
        );
        assert_eq!(
            one(&[
                "--add-laddr",
                "--tcp-service",
                "203.0.113.10:80",
                "--laddr",
                "10.0.0.10",
                "--laddr-ports",
                "40000-40999"
            ]),
            Change::AddLocalAddr {
                service: k,
                laddr: laddr("10.0.0.10", Some((40000, 40999)), None),
            }
        );
        // IPv6, bare or in brackets; a group's.
        assert_eq!(
            one(&["-P", "-f", "1", "-6", "-z", "[2001:db8::9]"]),
            Change::AddLocalAddr {
                service: ServiceKey::fwmark(1, true),
                laddr: laddr("2001:db8::9", None, None),
            }
        );
        assert_eq!(
            one(&["-Q", "-u", "[2001:db8::10]:53", "-z", "2001:db8::9"]),
            Change::DelLocalAddr {
                service: ServiceKey::new(Protocol::Udp, "[2001:db8::10]:53".parse().unwrap()),
                addr: "2001:db8::9".parse().unwrap(),
            }
        );
        // DPVS's scripts give -F with -Q too: accepted; the address names the local address.
        assert_eq!(
            one(&[
                "--del-laddr",
                "-t",
                "203.0.113.10:80",
                "-z",
                "10.0.0.9",
                "-F",
                "eth1"
            ]),
            Change::DelLocalAddr {
                service: k,
                addr: "10.0.0.9".parse().unwrap(),
            }
        );
        assert_eq!(
            action(&["-G"]).unwrap(),
            Action::ListLaddrs {
                service: None,
                json: false
            }
        );
        assert_eq!(
            action(&["--get-laddr", "-t", "203.0.113.10:80", "--json"]).unwrap(),
            Action::ListLaddrs {
                service: Some(k),
                json: true
            }
        );
        let refused: &[(&[&str], &str)] = &[
            (
                &["-P", "-t", "203.0.113.10:80"],
                "You need to supply the 'local-address' option for the 'add-laddr' command",
            ),
            (
                &["-P", "-z", "10.0.0.9"],
                "You need to supply the 'service-address' option for the 'add-laddr' command",
            ),
            (
                &["-Q", "-t", "203.0.113.10:80"],
                "You need to supply the 'local-address' option for the 'del-laddr' command",
            ),
            (
                &[
                    "-Q",
                    "-t",
                    "203.0.113.10:80",
                    "-z",
                    "10.0.0.9",
                    "--laddr-ports",
                    "1-2",
                ],
                "Illegal 'laddr-ports' option with the 'del-laddr' command",
            ),
            (
                &["-P", "-t", "203.0.113.10:80", "-z", "10.0.0.9", "-w", "1"],
                "Illegal 'weight' option with the 'add-laddr' command",
            ),
            (
                &["-G", "-n"],
                "Illegal 'numeric' option with the 'get-laddr' command",
            ),
            (
                &["-G", "-z", "10.0.0.9"],
                "Illegal 'local-address' option with the 'get-laddr' command",
            ),
            (
                &["-L", "-z", "10.0.0.9"],
                "Illegal 'local-address' option with the 'list' command",
            ),
            (
                &["-A", "-t", "203.0.113.10:80", "-F", "eth1"],
                "Illegal 'ifname' option with the 'add-service' command",
            ),
            (
                &[
                    "-a",
                    "-t",
                    "203.0.113.10:80",
                    "-r",
                    "198.51.100.11",
                    "--laddr-ports",
                    "1-2",
                ],
                "Illegal 'laddr-ports' option with the 'add-server' command",
            ),
            (&["-P", "-G"], "cannot be used with"),
            (
                &["-P", "-t", "203.0.113.10:80", "-z", "10.0.0.9:80"],
                "Illegal local address: 10.0.0.9:80 (an address without a port",
            ),
            (
                &["-P", "-t", "203.0.113.10:80", "-z", "999.0.0.1"],
                "Illegal local address: 999.0.0.1",
            ),
            (
                &[
                    "-P",
                    "-t",
                    "203.0.113.10:80",
                    "-z",
                    "10.0.0.9",
                    "--laddr-ports",
                    "2000-1000",
                ],
                "Illegal local port range: 2000-1000",
            ),
            (
                &[
                    "-P",
                    "-t",
                    "203.0.113.10:80",
                    "-z",
                    "10.0.0.9",
                    "--laddr-ports",
                    "0-1000",
                ],
                "Illegal local port range: 0-1000",
            ),
            (
                &["-P", "-t", "203.0.113.10:80", "-z", "10.0.0.9", "-F", "a/b"],
                "Illegal interface name: `a/b'",
            ),
            (
                &["-P", "-t", "203.0.113.10:80", "-z", "10.0.0.9", "--json"],
                "--json applies to listings (-L, -G) only",
            ),
        ];
        for (args, needle) in refused {
            let e = action(args).expect_err(&format!("{args:?} accepted"));
            assert!(e.0.contains(needle), "{args:?}: {e}");
        }
    }

    /// `-b` is DPVS's FULLNAT on -a/-e (no value) and ipvsadm's --sched-flags on -A/-E.
    #[test]
    fn b_is_fullnat_on_real_servers_and_sched_flags_on_services() {
        let k = tcp("203.0.113.10:80");
        let added = |forward| Change::AddReal {
            service: k,
            real: RealServer {
                addr: "198.51.100.11:8080".parse().unwrap(),
                weight: 1,
                forward,
                u_threshold: 0,
                l_threshold: 0,
                check: CheckSpec::default(),
            },
        };
        for args in [
            &[
                "-a",
                "-t",
                "203.0.113.10:80",
                "-r",
                "198.51.100.11:8080",
                "-b",
            ][..],
            &[
                "-a",
                "-t",
                "203.0.113.10:80",
                "-b",
                "-r",
                "198.51.100.11:8080",
            ],
            &[
                "-a",
                "-t",
                "203.0.113.10:80",
                "-r",
                "198.51.100.11:8080",
                "--fullnat",
            ],
        ] {
            assert_eq!(one(args), added(ForwardMethod::FullNat), "{args:?}");
        }
        // -b before another option takes no value.
        assert_eq!(
            one(&[
                "-e",
                "-t",
                "203.0.113.10:80",
                "-r",
                "198.51.100.11:8080",
                "-b",
                "-w",
                "3"
            ]),
            Change::EditReal {
                service: k,
                addr: "198.51.100.11:8080".parse().unwrap(),
                weight: Some(3),
                forward: Some(ForwardMethod::FullNat),
                u_threshold: Some(0),
                l_threshold: Some(0),
                check: None,
            }
        );
        // On -A/-E it stays the scheduler flags.
        assert_eq!(
            one(&["-A", "-t", "203.0.113.10:80", "-s", "sh", "-b", "sh-port"]),
            Change::AddService {
                key: k,
                scheduler: Scheduler::Sh,
                flags: SchedFlags {
                    sh_port: true,
                    ..SchedFlags::default()
                },
                persistence: None,
            }
        );
        let refused: &[(&[&str], &str)] = &[
            (
                &[
                    "-a",
                    "-t",
                    "203.0.113.10:80",
                    "-r",
                    "198.51.100.11",
                    "-b",
                    "sh-port",
                ],
                "-b on -a/-e is FULLNAT (as DPVS's ipvsadm) and takes no value, not `sh-port': \
                 scheduler flags go with -A/-E",
            ),
            (
                &["-A", "-t", "203.0.113.10:80", "-s", "sh", "-b"],
                "-b on -A/-E takes scheduler flags",
            ),
            (
                &["-A", "-t", "203.0.113.10:80", "--fullnat"],
                "Illegal 'forwarding-method' option with the 'add-service' command",
            ),
            (
                &["-d", "-t", "203.0.113.10:80", "-r", "198.51.100.11", "-b"],
                "Illegal 'forwarding-method' option with the 'delete-server' command",
            ),
            (
                &[
                    "-a",
                    "-t",
                    "203.0.113.10:80",
                    "-r",
                    "198.51.100.11",
                    "-b",
                    "-m",
                ],
                "multiple 'forwarding-method' options specified",
            ),
            (
                &[
                    "-a",
                    "-t",
                    "203.0.113.10:80",
                    "-r",
                    "198.51.100.11",
                    "--fullnat",
                    "-g",
                ],
                "multiple 'forwarding-method' options specified",
            ),
            (
                &[
                    "-a",
                    "-t",
                    "203.0.113.10:80",
                    "-r",
                    "198.51.100.11",
                    "-b",
                    "--tun-type",
                    "gue",
                ],
                "Tunnel options conflict with forward method",
            ),
        ];
        for (args, needle) in refused {
            let e = action(args).expect_err(&format!("{args:?} accepted"));
            assert!(e.0.contains(needle), "{args:?}: {e}");
        }
    }

    /// -S writes a service's local addresses right after its -A line, so -R adds them before
    /// the FULLNAT real servers (`-b`, as DPVS) that need them; -R of that builds the same.
    #[test]
    fn fullnat_save_restore_round_trip() {
        let rules = "\
-A -t 203.0.113.10:80 -s rr
-P -t 203.0.113.10:80 -z 10.0.0.9 -F eth1
-P -t 203.0.113.10:80 -z 10.0.0.10 --laddr-ports 40000-40999
-P -t 203.0.113.10:80 -z 2001:db8::9 -F eth1 --laddr-ports 1024-2047
-a -t 203.0.113.10:80 -r 198.51.100.11:80 -g -w 1
-a -t 203.0.113.10:80 -r 198.51.100.12:8080 -b -w 2 -x 100
-a -t 203.0.113.10:80 -r 198.51.100.12:8081 -b -w 3
-A -u [2001:db8::10]:53 -s rr
-P -u [2001:db8::10]:53 -z 2001:db8::9
-a -u [2001:db8::10]:53 -r [2001:db8::11]:5353 -b -w 1
-A -f 1 -s rr
-P -f 1 -z 10.0.0.11
-a -f 1 -r 198.51.100.15:0 -b -w 1
";
        let mut config = Config::default();
        config.apply_all(&parse_rules(rules).unwrap()).unwrap();
        assert_eq!(save(&config), rules);
        let svc = config.service(&tcp("203.0.113.10:80")).unwrap();
        assert_eq!(
            svc.laddrs,
            [
                laddr("10.0.0.9", None, Some("eth1")),
                laddr("10.0.0.10", Some((40000, 40999)), None),
                laddr("2001:db8::9", Some((1024, 2047)), Some("eth1")),
            ]
        );
        assert_eq!(svc.reals[1].forward, ForwardMethod::FullNat);
        let mut again = Config::default();
        again
            .apply_all(&parse_rules(&save(&config)).unwrap())
            .unwrap();
        assert_eq!(again, config);
        // The long forms read the same.
        let long = "-A -t 203.0.113.10:80 -s rr\n\
                    --add-laddr -t 203.0.113.10:80 --laddr 10.0.0.9 --ifname eth1\n\
                    -a -t 203.0.113.10:80 -r 198.51.100.12:8080 --fullnat -w 2\n";
        let mut c = Config::default();
        c.apply_all(&parse_rules(long).unwrap()).unwrap();
        assert_eq!(
            save(&c),
            "-A -t 203.0.113.10:80 -s rr\n-P -t 203.0.113.10:80 -z 10.0.0.9 -F eth1\n\
             -a -t 203.0.113.10:80 -r 198.51.100.12:8080 -b -w 2\n"
        );
        // In the wrong order, -R is refused as a whole, naming the rule that needs -P first.
        let wrong = "-A -t 203.0.113.10:80 -s rr\n\
                     -a -t 203.0.113.10:80 -r 198.51.100.12:8080 -b\n\
                     -P -t 203.0.113.10:80 -z 10.0.0.9\n";
        let mut c = Config::default();
        let e = c.apply_all(&parse_rules(wrong).unwrap()).unwrap_err();
        assert!(
            e.to_string().contains("add one with --add-laddr first"),
            "{e}"
        );
        assert_eq!(c, Config::default());
        // An interface name with a '#' or a quote is quoted, and read back.
        let mut odd = Config::default();
        odd.apply_all(&[
            Change::add_service(tcp("203.0.113.10:80"), Scheduler::Rr),
            Change::AddLocalAddr {
                service: tcp("203.0.113.10:80"),
                laddr: laddr("10.0.0.9", None, Some("eth#1'x")),
            },
        ])
        .unwrap();
        let text = save(&odd);
        assert!(text.contains(r#"-F "eth#1'x""#), "{text}");
        let mut back = Config::default();
        back.apply_all(&parse_rules(&text).unwrap()).unwrap();
        assert_eq!(back, odd);
    }
}
