//! keepalived.conf conversions: snippets with their exact output, errors at their lines,
//! includes and the preprocessor from memory, a round trip to ipvsadm's listing, and every
//! sample configuration Debian's keepalived package ships.

use std::path::Path;

use super::{import, ImportError, Options};
use crate::{
    config_file,
    estimator::Rates,
    import::{Disk, MemoryFiles},
    listing::{self, ListOptions},
    model::Config,
    names::Numeric,
    proto::{Listing, Membership, RealStatus, ServiceStatus},
    stats::Counters,
};

const MAIN: &str = "/etc/keepalived/keepalived.conf";

fn convert_with(files: MemoryFiles, options: &Options) -> Result<String, ImportError> {
    import(&files, Path::new(MAIN), options)
}

fn convert(text: &str) -> Result<String, ImportError> {
    convert_with(MemoryFiles::default().with(MAIN, text), &Options::default())
}

/// The converted file without its header (everything before the first blank line).
fn body(text: &str) -> String {
    let at = text.find("\n\n").expect("a header, then a blank line");
    text[at + 2..].to_string()
}

fn error_of(text: &str) -> String {
    match convert(text) {
        Ok(out) => panic!("converted, but an error was expected:\n{out}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn dr_wrr_with_persistence_and_checks() {
    let out = convert(
        "\
global_defs {
   router_id LB1
}
virtual_server 203.0.113.10 80 {
    delay_loop 2
    lb_algo wrr
    lb_kind DR
    persistence_timeout 600
    persistence_granularity 255.255.255.0
    protocol TCP
    sorry_server 198.51.100.19 80
    real_server 198.51.100.11 80 {
        weight 3
        inhibit_on_failure
        TCP_CHECK {
            connect_port 8080
            connect_timeout 1
            retry 2
            delay_before_retry 0.5
        }
    }
    real_server 198.51.100.12 80 {
        weight 1
        notify_down /usr/local/bin/alert
        HTTP_GET {
            url {
              path /health
              status_code 200-299 304
            }
            url {
              path /other
            }
            nb_get_retry 4
            bindto 192.0.2.1
        }
    }
}
",
    )
    .unwrap();
    assert!(out.starts_with(
        "# xvs configuration converted from /etc/keepalived/keepalived.conf by `xvsadm import keepalived`.\n"
    ));
    assert!(
        out.contains("Left to keepalived, which keeps running VRRP and moving the VIPs to the director that holds them\n#   (see examples/keepalived/ in xvs): global_defs (line 1).\n"),
        "{out}"
    );
    assert_eq!(
        body(&out),
        "\
# virtual_server 203.0.113.10 80 (line 4)
[[service]]
tcp = \"203.0.113.10:80\"
scheduler = \"wrr\"
persistent = 600
netmask = \"255.255.255.0\"
sorry-server = \"198.51.100.19:80\"

  [[service.real]]
  address = \"198.51.100.11:80\"
  weight = 3
  forward = \"dr\"
    [service.real.health-check]
    type = \"tcp\"
    port = 8080
    interval = \"2s\"
    timeout = \"1s\"
    retry = 2
    retry-delay = \"0.5s\"
    rise = 1
    inhibit = true

  [[service.real]]
  address = \"198.51.100.12:80\"
  weight = 1
  forward = \"dr\"
  # line 24: `notify_down /usr/local/bin/alert`: xvs runs no script when a real server changes: it
  #   logs the change and counts it (xvs_real_health_changes_total)
  # line 30: `url` (path /other): xvs checks one URL per real server: the first one is carried
  #   over, not this one
  # line 34: `bindto 192.0.2.1`: xvs checks from the director's own address, as the kernel routes
    [service.real.health-check]
    type = \"http\"
    path = \"/health\"
    status = \"200-299,304\"
    interval = \"2s\"
    retry = 4
    rise = 1
"
    );
}

#[test]
fn nat_udp_tunnels_and_what_cannot_be_carried() {
    let out = convert(
        "\
virtual_server 203.0.113.20 53 {
    lb_algo sh
    sh-port
    flag-1
    ops
    lb_kind NAT
    protocol UDP
    quorum 2
    hysteresis 1
    real_server 10.0.0.11 5353 {
        weight 2
        uthreshold 100
        lthreshold 50
        DNS_CHECK {
            type A
        }
    }
}
virtual_server 203.0.113.30 443 {
    lvs_sched mh
    lvs_method TUN
    tun_type gue
    tun_port 6080
    tun_flags csum
    real_server 192.0.2.21 443 {
        MISC_CHECK {
            misc_path \"/usr/local/bin/check --host 192.0.2.21\"
            misc_timeout 3
            misc_dynamic
        }
    }
    real_server 192.0.2.22 443 {
        lb_kind TUN type gre
    }
}
virtual_server 203.0.113.40 9 {
    protocol SCTP
    real_server 192.0.2.31 9 {
    }
}
",
    )
    .unwrap();
    assert_eq!(
        body(&out),
        "\
# virtual_server 203.0.113.20 53 (line 1)
[[service]]
udp = \"203.0.113.20:53\"
scheduler = \"sh\"
sched-flags = [\"sh-port\", \"sh-fallback\"]
quorum = 2
hysteresis = 1
# line 5: `ops`: one-packet scheduling: xvs schedules UDP by flow, as IPVS without ops

  [[service.real]]
  address = \"10.0.0.11:5353\"
  weight = 2
  forward = \"nat\"
  u-threshold = 100
  l-threshold = 50
  # line 14: `DNS_CHECK`: xvs has no DNS_CHECK: this real server is not checked (check a TCP or
  #   HTTP port of it, or run a command: type = \"misc\")

# virtual_server 203.0.113.30 443 (line 19)
[[service]]
tcp = \"203.0.113.30:443\"
scheduler = \"mh\"

  [[service.real]]
  address = \"192.0.2.21:443\"
  weight = 1
  forward = \"tunnel\"
  tun-type = \"gue\"
  tun-port = 6080
  tun-csum = true
  # line 29: `misc_dynamic`: xvs reads the command's exit status as up (0) or down: exit codes
  #   2-255 do not set the weight
    [service.real.health-check]
    type = \"misc\"
    command = \"/usr/local/bin/check --host 192.0.2.21\"
    interval = \"60s\"
    timeout = \"3s\"
    rise = 1

# line 32: `real_server 192.0.2.22:443` is not carried over: line 33: tunnel type gre: xvs tunnels
#   are IPIP and GUE (the real servers would need to decapsulate another type)

# line 36: `virtual_server 203.0.113.40 9` is not carried over: protocol SCTP: xvs balances TCP
#   and UDP only.
"
    );
}

/// A group is one xvs service per address (ranges expanded) and per fwmark, as keepalived
/// makes one IPVS service of each: `xvsadm -L` lists what `ipvsadm -L` listed.
#[test]
fn groups_expand_into_services() {
    let out = convert(
        "\
virtual_server_group WEB {
    203.0.113.10-12 80
    fwmark 7
}
virtual_server group WEB {
    lb_algo rr
    real_server 198.51.100.11 80 {
        weight 1
    }
}
virtual_server_group WEB6 {
    2001:db8::a-b 80
}
virtual_server group WEB6 {
    real_server 2001:db8:1::11 80 {
    }
}
",
    )
    .unwrap();
    let keys: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("tcp = ") || l.starts_with("fwmark = "))
        .collect();
    assert_eq!(
        keys,
        [
            "tcp = \"203.0.113.10:80\"",
            "tcp = \"203.0.113.11:80\"",
            "tcp = \"203.0.113.12:80\"",
            "fwmark = 7",
            "tcp = \"[2001:db8::a]:80\"",
            "tcp = \"[2001:db8::b]:80\"",
        ]
    );
    assert_eq!(out.matches("address = \"198.51.100.11:80\"").count(), 4);
    assert_eq!(out.matches("address = \"[2001:db8:1::11]:80\"").count(), 2);
    assert!(out.contains("fwmark 7: keepalived's service takes what netfilter marks 7"));
}

/// The IPv6 real server under an IPv4 VIP is refused by DR: xvs itself says so, at the
/// real server's line.
#[test]
fn errors_name_the_file_and_line() {
    let cases = [
        (
            // The `}` closes the real server: the virtual server is the block left open.
            "virtual_server 203.0.113.10 80 {\n  real_server 198.51.100.11 80 {\n    weight 1\n}\n",
            "/etc/keepalived/keepalived.conf:1: the block of `virtual_server 203.0.113.10 80` is never closed (a `}` is missing)",
        ),
        (
            "global_defs {\n}\n}\n",
            "/etc/keepalived/keepalived.conf:3: `}` closes no block (one `}` too many?)",
        ),
        (
            "virtual_server 203.0.113.10 80 {\n  lb_algo fastest\n}\n",
            "/etc/keepalived/keepalived.conf:2: unknown scheduler `fastest`: xvs has rr wrr lc wlc lblc lblcr dh sh sed nq fo ovf mh twos",
        ),
        (
            "virtual_server www.example.com 80 {\n}\n",
            "/etc/keepalived/keepalived.conf:1: `virtual_server`: `www.example.com` is not an IP address (names are not resolved)",
        ),
        (
            "virtual_server group NOPE {\n}\n",
            "/etc/keepalived/keepalived.conf:1: no virtual_server_group `NOPE` is defined",
        ),
        (
            "virtual_server 203.0.113.10 80 {\n  real_server 198.51.100.11 80 {\n    MISC_CHECK {\n      misc_path \"/bin/check\n    }\n  }\n}\n",
            "/etc/keepalived/keepalived.conf:4: a quoted string is not closed (a `\"` is missing)",
        ),
        (
            "virtual_server 203.0.113.10 80 {\n  lb_kind FULLNAT\n}\n",
            "/etc/keepalived/keepalived.conf:2: `lb_kind FULLNAT`: expected NAT, DR or TUN",
        ),
        (
            "virtual_server_group G {\n  203.0.113.9-3 80\n}\nvirtual_server group G {\n}\n",
            "/etc/keepalived/keepalived.conf:2: range `203.0.113.9-3`: it ends before it starts",
        ),
        (
            "virtual_server 203.0.113.10 80 {\n  delay_loop soon\n}\n",
            "/etc/keepalived/keepalived.conf:2: `delay_loop` needs seconds, not `soon`",
        ),
        (
            "virtual_server 203.0.113.10 80 {\n  quorum 2\n  hysteresis 2\n}\n",
            "/etc/keepalived/keepalived.conf:3: xvs cannot take this: ",
        ),
        (
            "virtual_server 203.0.113.10 80 {\n  lb_kind DR\n  real_server 2001:db8::11 80 {\n  }\n}\n",
            "/etc/keepalived/keepalived.conf:3: xvs cannot take this: ",
        ),
    ];
    for (text, expected) in cases {
        let got = error_of(text);
        assert!(
            got.starts_with(expected),
            "for\n{text}\ngot:      {got}\nexpected: {expected}"
        );
    }
}

#[test]
fn includes_follow_glob_patterns_relative_to_the_including_file() {
    let vs = |vip: &str| {
        format!("virtual_server {vip} 80 {{\n  real_server 198.51.100.11 80 {{\n  }}\n}}\n")
    };
    let files = MemoryFiles::default()
        .with(
            MAIN,
            "include conf.d/*.conf\ninclude /etc/other/none-*.conf\n",
        )
        .with("/etc/keepalived/conf.d/b.conf", vs("203.0.113.2"))
        .with("/etc/keepalived/conf.d/a.conf", vs("203.0.113.1"))
        .with("/etc/keepalived/conf.d/c.txt", vs("203.0.113.3"));
    let out = convert_with(files, &Options::default()).unwrap();
    let vips: Vec<&str> = out.lines().filter(|l| l.starts_with("tcp = ")).collect();
    assert_eq!(
        vips,
        ["tcp = \"203.0.113.1:80\"", "tcp = \"203.0.113.2:80\""]
    );
    // Places in an included file keep its name.
    assert!(out.contains("# virtual_server 203.0.113.1 80 (/etc/keepalived/conf.d/a.conf:1)"));
    assert!(out.contains("`include /etc/other/none-*.conf` (line 2) matched no file"));

    // An error in an included file is at its own line.
    let files = MemoryFiles::default()
        .with(MAIN, "include conf.d/*.conf\n")
        .with(
            "/etc/keepalived/conf.d/a.conf",
            "\nvirtual_server 203.0.113.1 80 {\n",
        );
    let e = convert_with(files, &Options::default())
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "/etc/keepalived/conf.d/a.conf:2: the block of `virtual_server 203.0.113.1 80` is never closed (a `}` is missing)"
    );

    // A file including itself ends.
    let files = MemoryFiles::default().with(MAIN, "include keepalived.conf\n");
    let e = convert_with(files, &Options::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("includes nested more than 20 deep"), "{e}");
}

#[test]
fn definitions_and_conditional_lines_are_read_as_keepalived_reads_them() {
    let text = "\
$VIP=203.0.113.10
$PORT=80
virtual_server $VIP ${PORT} {
@lb1    lb_algo wrr
@^lb1   lb_algo rr
    real_server 198.51.100.11 $PORT {
    }
}
";
    // Comments unwrapped.
    let plain = convert(text).unwrap().replace("\n#   ", " ");
    assert!(
        plain.contains("tcp = \"203.0.113.10:80\"\nscheduler = \"rr\"\n"),
        "{plain}"
    );
    assert!(plain.contains("address = \"198.51.100.11:80\""));
    assert!(plain.contains("`$NAME=value` definitions were expanded"));
    assert!(plain.contains("without a config-id"));
    assert!(plain.contains("dropped at line 4."), "{plain}");
    let lb1 = convert_with(
        MemoryFiles::default().with(MAIN, text),
        &Options {
            config_id: Some("lb1".into()),
        },
    )
    .unwrap()
    .replace("\n#   ", " ");
    assert!(lb1.contains("scheduler = \"wrr\"\n"), "{lb1}");
    assert!(
        lb1.contains("with config-id `lb1`: dropped at line 5."),
        "{lb1}"
    );
}

/// A Config as xvsd would list it with nothing checked yet and no traffic.
fn listing_of(config: &Config) -> Listing {
    let real = |r: &crate::model::RealServer| RealStatus {
        addr: r.addr,
        forward: r.forward,
        weight: r.weight,
        u_threshold: r.u_threshold,
        l_threshold: r.l_threshold,
        persist_conns: 0,
        active_conns: 0,
        inactive_conns: 0,
        stats: Counters::default(),
        rates: Rates::default(),
        mac: None,
        check: r.check.clone(),
        table: Membership::Active,
        health: None,
    };
    Listing {
        conn_table_size: 4096,
        services: config
            .services()
            .iter()
            .map(|s| ServiceStatus {
                key: s.key,
                matches: s.matches.clone(),
                scheduler: s.scheduler,
                flags: s.flags,
                persistence: s.persistence,
                stats: Counters::default(),
                rates: Rates::default(),
                reals: s.reals.iter().map(real).collect(),
                check: s.check.clone(),
                sorry_server: None,
                quorum: None,
                laddrs: s.laddrs.clone(),
                fullnat_refused: 0,
                midflow_misses: 0,
                table_digest: None,
            })
            .collect(),
        reasons: Default::default(),
        timeouts: Default::default(),
        table: Default::default(),
        drained: false,
        announce: None,
        sync_daemons: vec![],
    }
}

/// The round trip: keepalived.conf → converted file → config_file's model → ipvsadm's
/// listing, which is what `ipvsadm -L -n` shows for this keepalived.conf (written by hand
/// from IPVS's and ipvsadm's rules: services by fwmark, protocol, address, port; real servers
/// by address; a fwmark service's real servers given without a port listed at port 0).
pub(crate) const ROUND_TRIP_CONF: &str = "\
! Configuration File for keepalived
global_defs {
   router_id LB1
   lvs_timeouts tcp 7200 tcpfin 60 udp 120
}
vrrp_instance VI_1 {
    state MASTER
    interface eth0
    virtual_router_id 51
    priority 150
    virtual_ipaddress {
        203.0.113.10
    }
}
virtual_server 203.0.113.10 80 {
    delay_loop 2
    lb_algo wrr
    lb_kind DR
    persistence_timeout 600
    persistence_granularity 255.255.255.0
    protocol TCP
    real_server 198.51.100.12 80 {
        weight 1
        HTTP_GET {
            url {
                path /health
                status_code 200
            }
            connect_timeout 1
        }
    }
    real_server 198.51.100.11 80 {
        weight 3
        TCP_CHECK {
            connect_timeout 1
        }
    }
}
virtual_server 203.0.113.20 53 {
    lb_algo rr
    lb_kind NAT
    protocol UDP
    real_server 10.0.0.11 5353 {
        weight 1
    }
    real_server 10.0.0.12 5353 {
        weight 2
    }
}
virtual_server fwmark 7 {
    lb_algo rr
    lb_kind DR
    real_server 198.51.100.11 {
        weight 1
    }
    real_server 198.51.100.12 {
        weight 1
    }
}
";

/// What `ipvsadm -L -n` shows for [`ROUND_TRIP_CONF`] under keepalived (libipvs's
/// ipvs_cmp_services sorts by mark first, ascending, so the FWM service, whose mark is above
/// the others' 0, comes last).
pub(crate) const ROUND_TRIP_LISTING: &str = "\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  203.0.113.10:80 wrr persistent 600 mask 255.255.255.0
  -> 198.51.100.11:80             Route   3      0          0         
  -> 198.51.100.12:80             Route   1      0          0         
UDP  203.0.113.20:53 rr
  -> 10.0.0.11:5353               Masq    1      0          0         
  -> 10.0.0.12:5353               Masq    2      0          0         
FWM  7 rr
  -> 198.51.100.11:0              Route   1      0          0         
  -> 198.51.100.12:0              Route   1      0          0         
";

#[test]
fn round_trip_to_the_listing_keepalived_describes() {
    let text = convert(ROUND_TRIP_CONF).unwrap();
    let state = config_file::parse(&text).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    assert_eq!(
        (
            state.timeouts.tcp,
            state.timeouts.tcpfin,
            state.timeouts.udp
        ),
        (7200, 60, 120)
    );
    let shown = listing::render(
        &listing_of(&state.config),
        ListOptions {
            numeric: true,
            ..ListOptions::default()
        },
        &Numeric,
    );
    assert_eq!(
        shown, ROUND_TRIP_LISTING,
        "converted file:\n{text}\nlisted:\n{shown}"
    );
}

/// Where Debian's keepalived package puts its sample configurations.
const SAMPLES: &str = "/usr/share/doc/keepalived/samples";

/// Samples that must fail, with the start of their error: none today (each converts).
const SAMPLES_FAILING: &[(&str, &str)] = &[];

/// Every keepalived.conf.* sample converts into a file xvs's own parser takes (or fails as
/// SAMPLES_FAILING says), and each of its virtual servers is in it, as a service or as a
/// comment saying why not.
#[test]
fn every_sample_debian_ships_converts() {
    let entries = std::fs::read_dir(SAMPLES).unwrap_or_else(|e| {
        panic!(
            "{SAMPLES}: {e}: Debian's keepalived package ships the samples this test reads \
             (apt-get install keepalived; it is in xtask's PACKAGES)"
        )
    });
    let mut samples: Vec<_> = entries
        .map(|e| e.expect("readable directory").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("keepalived.conf."))
        })
        .collect();
    samples.sort();
    assert!(
        samples.len() >= 20,
        "{SAMPLES} has {} keepalived.conf.* samples, keepalived 2.2.7 ships 25",
        samples.len()
    );
    let mut services = 0;
    for path in &samples {
        let name = path.file_name().unwrap().to_str().unwrap();
        let expected = SAMPLES_FAILING.iter().find(|(n, _)| *n == name);
        match (import(&Disk, path, &Options::default()), expected) {
            (Ok(text), None) => {
                if let Err(e) = config_file::parse(&text) {
                    panic!("{name}: xvs refuses the conversion: {e:?}\n{text}");
                }
                let original = std::fs::read_to_string(path).unwrap();
                let declared = original
                    .lines()
                    .filter(|l| l.trim_start().starts_with("virtual_server "))
                    .count();
                let carried = text.matches("\n# virtual_server ").count()
                    + text.matches("is not carried over: protocol").count();
                assert!(
                    carried >= declared,
                    "{name}: {declared} virtual servers, {carried} in the conversion:\n{text}"
                );
                services += text.matches("[[service]]").count();
            }
            (Err(e), Some((_, start))) => {
                assert!(e.to_string().starts_with(start), "{name}: {e}");
            }
            (Ok(_), Some((_, start))) => panic!("{name} converted, expected: {start}"),
            (Err(e), None) => panic!("{name}: {e}"),
        }
    }
    // The samples' virtual servers (the group sample makes 13 services).
    assert_eq!(services, 29, "services from the samples");
}

/// Specific samples, specific settings.
#[test]
fn samples_carry_their_settings() {
    let sample = |name: &str| {
        import(&Disk, &Path::new(SAMPLES).join(name), &Options::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let quorum = sample("keepalived.conf.quorum");
    assert!(quorum.contains("quorum = 7\nhysteresis = 2\n"));
    assert_eq!(quorum.matches("[[service.real]]").count(), 10);
    assert!(quorum.contains("`quorum_up /usr/local/sbin/quorum-up.sh`: xvs runs no script"));
    let group = sample("keepalived.conf.virtual_server_group");
    assert_eq!(group.matches("[[service]]").count(), 13);
    let misc = sample("keepalived.conf.misc_check_arg");
    assert!(misc.contains("command = \"/usr/local/bin/script.sh arg1 arg2\""));
    let sync = sample("keepalived.conf.vrrp.lvs_syncd");
    assert!(sync.contains("xvs runs IPVS's sync daemons itself"));
    let cond = sample("keepalived.conf.conditional_conf");
    assert!(cond.contains("Conditional lines (`@ID`)"));
    assert!(!cond.contains("[[service]]"));
    let status = sample("keepalived.conf.status_code");
    assert!(status.contains("status = \"200-299,400-499,503,505\""));
}

/// keepalived's syntax as written in the wild: blocks on one line, a `{` on its own line,
/// quoted words, `!` and `#` comments after values, a `#` inside a word.
#[test]
fn tokens_and_blocks_as_keepalived_writes_them() {
    use super::source::{tokenize, Token};
    let w = |s: &str| Token::Word(s.into());
    assert_eq!(
        tokenize("  url { path /a#b \"x y\" }  ! a comment").unwrap(),
        [
            w("url"),
            Token::Open,
            w("path"),
            w("/a#b"),
            w("x y"),
            Token::Close
        ]
    );
    assert_eq!(tokenize("# all comment").unwrap(), []);
    let out = convert(
        "\
virtual_server 203.0.113.10 80
{
    lb_algo rr   # round robin
    real_server 198.51.100.11 80 { weight 2 }
    real_server 198.51.100.12 80 {
        HTTP_GET {
            url {
                path \"/health\"
                regex \"all ok\"
            }
        }
    }
    real_server 198.51.100.13 80 {
        HTTP_GET {
            url { regex \"^ok$\" }
        }
    }
}
",
    )
    .unwrap();
    assert!(out.contains("scheduler = \"rr\"\n"), "{out}");
    assert!(
        out.contains("  address = \"198.51.100.11:80\"\n  weight = 2\n"),
        "{out}"
    );
    assert!(
        out.contains("    path = \"/health\"\n    body = \"all ok\"\n"),
        "{out}"
    );
    assert!(
        out.contains(
            "`regex ^ok$`: xvs looks for a plain text in the body, not a regular expression"
        ),
        "{out}"
    );
}
