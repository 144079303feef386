//! `xvsadm --help` and `xvsadm -v`: ipvsadm's usage text (ipvsadm.c usage_exit), with a
//! one-line description of every option as ipvsadm(8) describes it, and what xvs adds or
//! refuses.

/// ipvsadm's version that xvsadm's command line and formats follow.
pub const IPVSADM_COMPAT: &str = "1.31";

/// `xvsadm -v`: ipvsadm prints `ipvsadm v1.31 2019/12/24 (compiled with popt and IPVS
/// v1.2.1)`; xvsadm names itself and what it is compatible with in the same shape.
pub fn version() -> String {
    format!(
        "xvsadm v{} (ipvsadm v{IPVSADM_COMPAT} compatible; IPVS v{} listing formats)",
        env!("CARGO_PKG_VERSION"),
        crate::listing::IPVS_VERSION
    )
}

/// Everything after the version line of `xvsadm --help`.
pub const USAGE: &str = "\
Usage:
  xvsadm -A|E virtual-service [-s scheduler] [-p [timeout]] [-M netmask] [-b sched-flags]
                              [--match proto:vip:port]... [--sorry-server server-address]
                              [--quorum weight] [--hysteresis weight] [health-check options]
  xvsadm -D virtual-service
  xvsadm -C
  xvsadm -R
  xvsadm -S [-n]
  xvsadm -a|e virtual-service -r server-address [-g|i|m|b] [-w weight] [-x upper] [-y lower]
                              [health-check options]
  xvsadm -d virtual-service -r server-address
  xvsadm -P virtual-service -z local-address [-F ifname] [--laddr-ports lo-hi]
  xvsadm -Q virtual-service -z local-address
  xvsadm -G [virtual-service] [--json]
  xvsadm -L|l [virtual-service] [options]
  xvsadm -Z [virtual-service]
  xvsadm --set tcp tcpfin udp
  xvsadm --start-daemon {master|backup} [daemon-options]
  xvsadm --stop-daemon {master|backup}
  xvsadm stats [--watch] [--once] [--interval secs] [--json]
  xvsadm top [-d secs] [-n iterations] [-b] [-s column] [-r]
  xvsadm apply -f file [--dry-run]
  xvsadm reload [--dry-run]
  xvsadm export
  xvsadm drain [-t|u|f service-address -r server-address] [--timeout duration] [--cancel]
  xvsadm synced [--request] [--wait duration]
  xvsadm import keepalived file [-o out] [--config-id id]
  xvsadm -h
  xvsadm -v

Commands:
Either long or short options are allowed.
  --add-service     -A        add virtual service with options
  --edit-service    -E        edit virtual service with options (unset options get their defaults)
  --delete-service  -D        delete virtual service, along with its real servers
  --clear           -C        clear the whole table
  --restore         -R        restore rules from stdin, all lines as one transaction
  --save            -S        save rules to stdout, in the format -R reads
  --add-server      -a        add real server with options
  --edit-server     -e        edit real server with options (unset options get their defaults)
  --delete-server   -d        delete real server
  --add-laddr       -P        add a FULLNAT local address to a service (DPVS)
  --del-laddr       -Q        delete a FULLNAT local address of a service (DPVS)
  --get-laddr       -G        list the FULLNAT local addresses of a service or of all (DPVS)
  --list            -L|-l     list the table (all services, or the one given)
  --zero            -Z        zero counters and rates in a service or all services
  --set tcp tcpfin udp        set connection timeout values in seconds (0 keeps a value)
  --start-daemon              start connection sync daemon (IPVS's messages, v1)
  --stop-daemon               stop connection sync daemon
  --help            -h        display this help message
  --version         -v        display the version
  stats                       live per-service and per-real-server rates (xvsadm stats --help)
  top                         services and real servers with rates, connections and health,
                              refreshing in place, sorted by a key (xvsadm top --help)
  apply -f file               make the running configuration the file's (TOML), only the difference,
                              as one transaction (xvsadm apply --help; examples/xvs.toml)
  reload                      make xvsd re-read its --config file and apply the difference
  export                      print the running configuration as a configuration file
  drain                       the director (its announcements) or a real server out of service
                              once its connections ended (xvsadm drain --help)
  synced                      whether the peers' connection tables are held (exit 0), for
                              keepalived's vrrp_script (xvsadm synced --help)
  import keepalived file      print a keepalived.conf's virtual servers as a configuration file,
                              a comment for each setting not carried over (xvsadm import --help)

virtual-service:
  --tcp-service|-t  service-address   service-address is host[:port]; IPv6 as [addr]:port;
                                      port 0 or none: every port (persistent services only)
  --udp-service|-u  service-address   service-address is host[:port]
  --fwmark-service|-f fwmark          a service group: fwmark is an integer greater than zero;
                                      what it takes is given with --match, not iptables

Options:
  --ipv6         -6                   fwmark entry (service group) uses IPv6
  --scheduler    -s scheduler         one of rr|wrr|lc|wlc|lblc|lblcr|dh|sh|sed|nq|fo|ovf|mh|twos,
                                      the default scheduler is wlc.
  --persistent   -p [timeout]         persistent service, timeout in seconds (default 300)
  --netmask      -M netmask           persistent granularity mask: 255.255.255.0, or a prefix
                                      length (IPv6: 1..128)
  --sched-flags  -b flags             -A/-E: scheduler flags (comma-separated): sh-fallback,
                                      sh-port, mh-fallback, mh-port (flag-1, flag-2)
  --match        proto:vip:port       xvs: traffic a service group takes, e.g. tcp:203.0.113.10:443
                                      (repeatable; port 0: every port; -E --match none: no traffic)
  --real-server  -r server-address    server-address is host (and port; masquerading keeps it,
                                      direct routing and tunneling use the service's port)
  --gatewaying   -g                   gatewaying (direct routing) (default)
  --ipip         -i                   ipip encapsulation (tunneling): the server may be routed
  --masquerading -m                   masquerading (NAT): the director rewrites the destination;
                                      real servers route replies back through it
  --fullnat      -b                   -a/-e, no value: FULLNAT (DPVS): the director rewrites both
                                      ends, the client's address becoming a local address of the
                                      service (-P first), so replies need no route; the server
                                      keeps its port as with -m; same address family as the VIP
  --laddr        -z local-address     -P/-Q: a local address (an address, no port)
  --ifname       -F ifname            -P: the interface it is on (informational; -Q accepts it)
  --laddr-ports  lo-hi                xvs, -P: source ports handed out on the local address
                                      (default 1024-65535)
  --tun-type     type                 one of ipip|gue, the default tunnel type is ipip
                                      (ipip: IPIP, IP6IP6, 6in4, 4in6)
  --tun-port     port                 tunnel destination port (gue)
  --tun-nocsum                        tunnel encapsulation without checksum (gue over IPv4;
                                      the default)
  --tun-csum                          tunnel encapsulation with checksum (always over IPv6)
  --weight       -w weight            capacity of real server, 0..65535 (0: no new connections)
  --u-threshold  -x uthreshold        upper threshold of connections (0: none)
  --l-threshold  -y lthreshold        lower threshold of connections (0: 3/4 of the upper)
  --connection   -c                   output of current connections and persistence templates
  --timeout                           output of timeout (tcp tcpfin udp)
  --daemon                            output of daemon information
  --stats                             output of statistics information
  --rate                              output of rate information (IPVS's 2-second estimator)
  --exact        -X                   expand numbers (display exact values)
  --thresholds                        output of thresholds information
  --persistent-conn                   output of persistent connection info
  --tun-info                          output of tunnel information
  --nosort                            disable sorting output of service/server entries
  --sort                              does nothing, for backwards compatibility
  --numeric      -n                   numeric output of addresses and ports
  --json                              xvs: any listing as JSON (-L, --stats, --rate, -c, --timeout,
                                      -G)
  --socket       path                 xvs: xvsd's control socket (env XVS_SOCKET,
                                      default /run/xvs/xvsd.sock)

Health checks (xvs; keepalived's checkers and keywords): on -A/-E the default of the service's
real servers, on -a/-e a real server's own (what it does not give, it inherits); -E and -e
without any of them keep the check. Durations: 1s, 500ms, 1.5s, 2m.
  --check        type                 tcp (TCP_CHECK), http (HTTP_GET), https (SSL_GET, the
                                      certificate is not verified), misc (MISC_CHECK), none;
                                      -a/-e: also inherit (the service's check)
  --check-port   port                 port to check (connect_port; default the server's port)
  --check-path   path                 http, https: the path to GET (default /)
  --check-status codes                http, https: accepted status codes (status_code), e.g.
                                      200 or 200-299,304 (default 200-299)
  --check-digest md5                  http, https: MD5 digest of the body (digest)
  --check-body   text                 http, https: a text the body must contain
  --check-command 'program args'      misc: the command (misc_path); exit 0: up, else down
  --check-interval duration           between checks (delay_loop; default 6s)
  --check-timeout duration            time limit of one check (connect_timeout; default 5s)
  --check-retry  count                failed checks retried before an up server is down
                                      (retry; default 1, misc 0)
  --check-retry-delay duration        before a retry (delay_before_retry; default 1s, http and
                                      https 3s)
  --check-rise   count                successes in a row before a down server is up (default 2)
  --check-inhibit [yes|no]            a down server keeps weight 0 and its connections
                                      (inhibit_on_failure); default: it leaves the tables
  --sorry-server server-address       -A/-E: takes new connections while the service is below
                                      its quorum (sorry_server); none: no sorry server
  --quorum weight                     -A/-E: live weight the service needs to be up: its VIP
                                      announced (xvsd --announce-table), no sorry server
                                      (quorum; default 1)
  --hysteresis weight                 -A/-E: up at quorum + hysteresis, down below quorum -
                                      hysteresis (hysteresis; default 0)

Daemon Options (the sync network must be private: nothing is authenticated):
  --syncid sid                        syncid for connection sync (default=0: a backup takes all)
  --sync-maxlen length                Max sync message length (default from the MTU, 1472)
  --mcast-interface interface         multicast interface for connection sync (default eth0)
  --mcast-group address               IPv4/IPv6 group (default=224.0.0.81)
  --mcast-port port                   UDP port (default=8848)
  --mcast-ttl ttl                     Multicast TTL (default=1)

Refused, with the reason, never ignored (IPVS features without meaning for an XDP director,
or not in xvs yet):
  --tun-type gre, --tun-remcsum       GRE tunnels, GUE remote checksum offload: the real-server
                                      decapsulator does IPIP and GUE
  --sctp-service service-address      SCTP: xvs balances TCP and UDP
  --ops          -o                   one-packet scheduling: every UDP flow has an entry
  --pe           engine               persistence engine (sip): payloads are not parsed

Names: without -n, -L, -c and -S print host names (reverse DNS, at most 2 s for a whole
listing, then numbers) and /etc/services port names, as ipvsadm; -t, -u and -r accept both.
";

/// `xvsadm drain --help`.
pub const DRAIN_USAGE: &str = "\
Usage:
  xvsadm drain [--timeout duration] [--interval duration] [--no-wait] [--socket path]
  xvsadm drain --cancel [--socket path]
  xvsadm drain -t|u|f service-address -r server-address [--timeout duration] [--keep]
               [--interval duration] [--no-wait] [--socket path]

Takes the director, or one real server, out of service without breaking what it carries.
The director withdraws its announcements (xvsd --announce-table) and goes on forwarding what
still arrives; it reports the connections left until none are or the timeout passes; --cancel
announces again. A real server goes to weight 0 (no new connections; established ones stay),
then is removed once its connections (TCP and UDP) ended or the timeout passed (--keep: left
at weight 0). A drained director stays drained until --cancel or xvsd restarts.

  --timeout      duration             how long to wait for the connections to end (default 300s)
  --interval     duration             between two progress lines (default 1s)
  --keep                              a real server: leave it at weight 0, do not remove it
  --no-wait                           start the drain and return
  --cancel                            the director: end the drain, announce again
  --socket       path                 xvsd's control socket (env XVS_SOCKET)
  --help         -h                   display this help message
";

/// `xvsadm synced --help`.
pub const SYNCED_USAGE: &str = "\
Usage:
  xvsadm synced [--request] [--wait duration] [--quiet] [--socket path]

Says whether this director holds its peers' connection tables. Its backup sync daemon
(--start-daemon backup) asks every peer's master for its whole table when it starts and
whenever the sync interface's carrier comes back, and again while an answer is missing or
short. Exit status: 0 the tables are held (or no peer answered three requests: nothing to
wait for), 1 still waiting, 2 no backup sync daemon runs. Made for keepalived's vrrp_script:
a returning director takes the VIP back only once it holds the connections its peer took
over meanwhile.

  --request                           ask the peers for their tables again first
  --wait         duration             wait up to this long for the tables (default: answer at once)
  --quiet        -q                   print nothing; the exit status says it
  --socket       path                 xvsd's control socket (env XVS_SOCKET)
  --help         -h                   display this help message
";

/// `xvsadm stats --help`.
pub const STATS_USAGE: &str = "\
Usage:
  xvsadm stats [--watch] [--once] [--interval secs] [--json] [--socket path]

Live rates of every service and real server: new connections, packets and bytes per second
as IPVS estimates them (2-second samples, averaged over about 8 seconds; the same numbers as
xvsadm -L --rate), with active and inactive connections; above them, the connection table:
live entries against its capacity, new entries and mid-flow misses per second (TCP packets of
connections the table no longer had, which may have moved to another real server).

  --watch                             refresh until interrupted (the default)
  --once                              print one frame and exit
  --interval     secs                 seconds between frames (default 2, the estimator's period)
  --json                              one JSON object per frame, one per line
  --socket       path                 xvsd's control socket (env XVS_SOCKET)
  --help         -h                   display this help message
";

/// `xvsadm top --help`.
pub const TOP_USAGE: &str = "\
Usage:
  xvsadm top [-d secs] [-n iterations] [-b] [-s column] [-r] [--socket path]

Services and real servers, refreshing in place: new connections, packets and bytes per second
(both directions; replies count for NAT and FULLNAT), measured between two listings of the
counters (the first frame has none: -), active and inactive connections, weight and health;
above them the totals and the connection table. On a terminal, keys sort as top's do:

  c  conn/s      p  packets/s   b  bytes/s     a  active      i  inactive    n  name
  r  reverse the order          space  redraw                 q, Esc  quit

When stdout is not a terminal, or with -b, frames are printed one after another as plain text.

  --delay        -d secs              seconds between frames (default 1)
  --iterations   -n iterations        exit after this many frames (default: until q)
  --batch        -b                   plain text frames, no terminal control
  --sort         -s column            conns|packets|bytes|active|inactive|name (default conns)
  --reverse      -r                   lowest first (names: reversed)
  --socket       path                 xvsd's control socket (env XVS_SOCKET)
  --help         -h                   display this help message
";
