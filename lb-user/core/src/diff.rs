//! The difference between two configurations, as the changes that turn one into the other and
//! as ipvsadm rule lines an operator can read (`xvsadm apply`, `xvsadm reload`).
//!
//! Only what differs is changed: a service or real server that is the same in both keeps its
//! data-plane ids, tables and connections. The changes are ordered so that they are valid one
//! after another (the model checks each): removals first, and a group's match is given up
//! before another service or group takes it. A FULLNAT service's local addresses are added
//! before the real servers that need them and deleted after the real servers that used them.

use std::net::{IpAddr, SocketAddr};

use crate::{
    check::{CheckKind, CheckSpec},
    model::Timeouts,
    model::{Change, Config, ConfigError, ForwardMethod, LocalAddr, RealServer, Service},
    rules,
    state::DesiredState,
};

/// What it takes to go from one configuration to another.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// The changes, in an order in which each is valid.
    pub changes: Vec<Change>,
    /// New timeouts, if they differ.
    pub timeouts: Option<Timeouts>,
    /// One ipvsadm rule per added, removed or changed service and real server (`-A`, `-D`,
    /// `-E`, `-a`, `-d`, `-e`, `--set`).
    pub lines: Vec<String>,
}

impl Diff {
    /// Whether the two configurations are the same.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.timeouts.is_none()
    }
}

/// The changes from `current` to `target`. Both are valid configurations (real servers'
/// addresses normalised by the model, as a configuration built by changes has them).
pub fn diff(current: &DesiredState, target: &DesiredState) -> Diff {
    let cur = &current.config;
    let tgt = &target.config;
    let mut changes = Vec::new();
    let kept = || {
        cur.services()
            .iter()
            .filter_map(|s| tgt.service(&s.key).map(|t| (s, t)))
    };
    // How each kept service's local addresses change, and the FULLNAT real servers that must
    // go and come back for it (see `laddr_plan`).
    let plans: Vec<LaddrPlan> = kept().map(|(s, t)| laddr_plan(s, t)).collect();
    // Services that go away, with their real servers.
    for s in cur.services() {
        if tgt.service(&s.key).is_none() {
            changes.push(Change::DeleteService { key: s.key });
        }
    }
    // Real servers that go away, and matches a group gives up (another service may take them).
    for ((s, t), plan) in kept().zip(&plans) {
        for r in &s.reals {
            if !t.reals.iter().any(|x| x.addr == r.addr) || plan.readd.contains(&r.addr) {
                changes.push(Change::DeleteReal {
                    service: s.key,
                    addr: r.addr,
                });
            }
        }
        let remaining = kept_matches(s, t);
        if remaining != s.matches {
            changes.push(Change::SetMatches {
                key: s.key,
                matches: remaining,
            });
        }
    }
    // Services whose options change.
    for ((s, t), plan) in kept().zip(&plans) {
        if options_differ(s, t) {
            changes.push(Change::EditService {
                key: s.key,
                scheduler: Some(t.scheduler),
                flags: Some(t.flags),
                persistence: Some(t.persistence),
            });
        }
        if s.check != t.check {
            // A real server's own check may only be valid with the service's old default or
            // only with its new one: those that change are unchecked (`none`, always valid)
            // while the default changes, and get their new check below.
            for r in s.reals.iter().filter(|r| !plan.readd.contains(&r.addr)) {
                if t.reals
                    .iter()
                    .any(|x| x.addr == r.addr && x.check != r.check)
                {
                    changes.push(Change::EditReal {
                        service: s.key,
                        addr: r.addr,
                        weight: None,
                        forward: None,
                        u_threshold: None,
                        l_threshold: None,
                        check: Some(CheckSpec {
                            kind: Some(CheckKind::None),
                            ..CheckSpec::default()
                        }),
                    });
                }
            }
        }
        health_changes(&mut changes, Some(s), t);
    }
    // New services.
    for t in tgt.services() {
        if cur.service(&t.key).is_none() {
            changes.push(Change::AddService {
                key: t.key,
                scheduler: t.scheduler,
                flags: t.flags,
                persistence: t.persistence,
            });
            if !t.matches.is_empty() {
                changes.push(Change::SetMatches {
                    key: t.key,
                    matches: t.matches.clone(),
                });
            }
            health_changes(&mut changes, None, t);
        }
    }
    // Groups take their new matches once every match given up is free.
    for (s, t) in kept() {
        if s.matches != t.matches && kept_matches(s, t) != t.matches {
            changes.push(Change::SetMatches {
                key: s.key,
                matches: t.matches.clone(),
            });
        }
    }
    // Local addresses, before the real servers that need them.
    for ((s, _), plan) in kept().zip(&plans) {
        for addr in &plan.early_del {
            changes.push(Change::DelLocalAddr {
                service: s.key,
                addr: *addr,
            });
        }
        for laddr in &plan.add {
            changes.push(Change::AddLocalAddr {
                service: s.key,
                laddr: laddr.clone(),
            });
        }
        for laddr in &plan.mid {
            changes.push(Change::DelLocalAddr {
                service: s.key,
                addr: laddr.addr,
            });
            changes.push(Change::AddLocalAddr {
                service: s.key,
                laddr: laddr.clone(),
            });
        }
    }
    for t in tgt.services() {
        if cur.service(&t.key).is_none() {
            for laddr in &t.laddrs {
                changes.push(Change::AddLocalAddr {
                    service: t.key,
                    laddr: laddr.clone(),
                });
            }
        }
    }
    // Real servers that change or are new.
    let readd = |key| {
        kept()
            .zip(&plans)
            .find(|((s, _), _)| s.key == key)
            .map_or(&[][..], |(_, p)| &p.readd[..])
    };
    for t in tgt.services() {
        let s = cur.service(&t.key);
        let again = readd(t.key);
        for r in &t.reals {
            let found = s
                .and_then(|s| s.reals.iter().find(|x| x.addr == r.addr))
                .filter(|_| !again.contains(&r.addr));
            match found {
                Some(c) if c == r => {}
                Some(_) => changes.push(Change::EditReal {
                    service: t.key,
                    addr: r.addr,
                    weight: Some(r.weight),
                    forward: Some(r.forward),
                    u_threshold: Some(r.u_threshold),
                    l_threshold: Some(r.l_threshold),
                    check: Some(r.check.clone()),
                }),
                None => changes.push(Change::AddReal {
                    service: t.key,
                    real: r.clone(),
                }),
            }
        }
    }
    // Local addresses that FULLNAT real servers used until the changes above.
    for ((s, _), plan) in kept().zip(&plans) {
        for addr in &plan.late_del {
            changes.push(Change::DelLocalAddr {
                service: s.key,
                addr: *addr,
            });
        }
    }
    let timeouts = (current.timeouts != target.timeouts).then_some(target.timeouts);
    Diff {
        lines: rules(cur, tgt, timeouts),
        changes,
        timeouts,
    }
}

/// How a kept service's local addresses go from `s`'s to `t`'s, in an order the model accepts
/// at every step: it refuses to delete the last local address of a family that FULLNAT real
/// servers of the service use, and to add a FULLNAT real server without one.
#[derive(Debug, Default)]
struct LaddrPlan {
    /// Deleted first (after the real servers that go away): another address of their family
    /// stays, or no FULLNAT real server of their family is left.
    early_del: Vec<IpAddr>,
    /// Added before the real servers (new ones, and the new settings of changed ones).
    add: Vec<LocalAddr>,
    /// Changed addresses deleted and added again after `add`, when only an address added
    /// there keeps their family covered meanwhile.
    mid: Vec<LocalAddr>,
    /// Deleted last, after the real servers that used them changed or went away.
    late_del: Vec<IpAddr>,
    /// FULLNAT real servers deleted and added again: a changed local address (new ports or
    /// interface) was the only one of their family, and there is no changing it in place.
    readd: Vec<SocketAddr>,
}

fn laddr_plan(s: &Service, t: &Service) -> LaddrPlan {
    let mut plan = LaddrPlan::default();
    let mut have: Vec<IpAddr> = s.laddrs.iter().map(|l| l.addr).collect();
    // FULLNAT real servers of `s` that stay while local addresses are deleted early.
    let users = |v4: bool, readd: &[SocketAddr]| {
        s.reals.iter().any(|r| {
            r.forward == ForwardMethod::FullNat
                && r.addr.is_ipv4() == v4
                && t.reals.iter().any(|x| x.addr == r.addr)
                && !readd.contains(&r.addr)
        })
    };
    let mut mid_addrs = Vec::new();
    for l in s.laddrs.iter().filter(|l| !t.laddrs.contains(l)) {
        let v4 = l.addr.is_ipv4();
        let others = have.iter().any(|a| *a != l.addr && a.is_ipv4() == v4);
        let changed = t.laddrs.iter().any(|x| x.addr == l.addr);
        if others || !users(v4, &plan.readd) {
            plan.early_del.push(l.addr);
            have.retain(|a| *a != l.addr);
        } else if !changed {
            plan.late_del.push(l.addr);
        } else if t
            .laddrs
            .iter()
            .any(|x| x.addr != l.addr && x.addr.is_ipv4() == v4)
        {
            mid_addrs.push(l.addr);
        } else {
            for r in &s.reals {
                if r.forward == ForwardMethod::FullNat
                    && r.addr.is_ipv4() == v4
                    && !plan.readd.contains(&r.addr)
                {
                    plan.readd.push(r.addr);
                }
            }
            plan.early_del.push(l.addr);
            have.retain(|a| *a != l.addr);
        }
    }
    for l in t.laddrs.iter().filter(|l| !s.laddrs.contains(l)) {
        if mid_addrs.contains(&l.addr) {
            plan.mid.push(l.clone());
        } else {
            plan.add.push(l.clone());
        }
    }
    plan
}

/// A service's default health check and sorry server, where they differ from the current ones
/// (`current` None: a new service).
fn health_changes(changes: &mut Vec<Change>, current: Option<&Service>, t: &Service) {
    if current.map_or(!t.check.is_empty(), |s| s.check != t.check) {
        changes.push(Change::SetCheck {
            key: t.key,
            check: t.check.clone(),
        });
    }
    if current.map_or(t.sorry_server.is_some(), |s| {
        s.sorry_server != t.sorry_server
    }) {
        changes.push(Change::SetSorryServer {
            key: t.key,
            sorry_server: t.sorry_server,
        });
    }
    if current.map_or(!t.quorum.is_default(), |s| s.quorum != t.quorum) {
        changes.push(Change::SetQuorum {
            key: t.key,
            quorum: t.quorum,
        });
    }
}

fn options_differ(s: &Service, t: &Service) -> bool {
    s.scheduler != t.scheduler || s.flags != t.flags || s.persistence != t.persistence
}

/// The difference as ipvsadm rules, grouped as `-S` groups them: removed services first, then
/// each service of the target with its real servers.
fn rules(cur: &Config, tgt: &Config, timeouts: Option<Timeouts>) -> Vec<String> {
    let mut lines = Vec::new();
    for s in cur.services() {
        if tgt.service(&s.key).is_none() {
            lines.push(format!("-D {}", rules::service_option(&s.key)));
        }
    }
    for t in tgt.services() {
        let s = cur.service(&t.key);
        match s {
            None => lines.push(service_rule(t)),
            Some(s)
                if options_differ(s, t)
                    || s.matches != t.matches
                    || s.check != t.check
                    || s.sorry_server != t.sorry_server
                    || s.quorum != t.quorum =>
            {
                // -E keeps what it does not name: say what goes away.
                let mut line = edit_line(service_rule(t));
                if t.check.is_empty() && !s.check.is_empty() {
                    line.push_str(" --check none");
                }
                if t.sorry_server.is_none() && s.sorry_server.is_some() {
                    line.push_str(" --sorry-server none");
                }
                if t.quorum.is_default() && !s.quorum.is_default() {
                    line.push_str(" --quorum 1 --hysteresis 0");
                }
                lines.push(line);
            }
            Some(_) => {}
        }
        let name = rules::service_option(&t.key);
        // FULLNAT servers that go and come back around a changed local address.
        let readd = s.map(|s| laddr_plan(s, t).readd).unwrap_or_default();
        for r in s.iter().flat_map(|s| &s.reals) {
            if !t.reals.iter().any(|x| x.addr == r.addr) || readd.contains(&r.addr) {
                lines.push(format!("-d {name} -r {}", r.addr));
            }
        }
        for l in s.iter().flat_map(|s| &s.laddrs) {
            if !t.laddrs.contains(l) {
                lines.push(format!("-Q {name} -z {}", l.addr));
            }
        }
        let added: Vec<LocalAddr> = t
            .laddrs
            .iter()
            .filter(|l| s.is_none_or(|s| !s.laddrs.contains(l)))
            .cloned()
            .collect();
        lines.extend(rules::laddr_rules(&name, &added).lines().map(String::from));
        for r in &t.reals {
            let found = s
                .and_then(|s| s.reals.iter().find(|x| x.addr == r.addr))
                .filter(|_| !readd.contains(&r.addr));
            match found {
                Some(c) if c == r => {}
                Some(c) => {
                    let mut line = edit_line(real_rule(t, r));
                    if r.check.is_empty() && !c.check.is_empty() {
                        line.push_str(" --check inherit");
                    }
                    lines.push(line);
                }
                None => lines.push(real_rule(t, r)),
            }
        }
    }
    if let Some(t) = timeouts {
        lines.push(format!("--set {} {} {}", t.tcp, t.tcpfin, t.udp));
    }
    lines
}

/// The matches of `s` that `t` keeps, in `s`'s order.
fn kept_matches(s: &Service, t: &Service) -> Vec<crate::model::VirtualAddr> {
    s.matches
        .iter()
        .filter(|m| t.matches.contains(m))
        .copied()
        .collect()
}

/// The `-A` rule `-S` writes for the service (its options, no real servers), so the diff
/// reads as the rules `xvsadm -S` prints.
fn service_rule(svc: &Service) -> String {
    let alone = Config::from_services(vec![Service {
        reals: Vec::new(),
        ..svc.clone()
    }]);
    rules::save(&alone)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The `-a` rule `-S` writes for one real server of the service.
fn real_rule(svc: &Service, real: &RealServer) -> String {
    let alone = Config::from_services(vec![Service {
        reals: vec![real.clone()],
        laddrs: Vec::new(),
        ..svc.clone()
    }]);
    rules::save(&alone)
        .lines()
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

/// `-A ...` as `-E ...`, `-a ...` as `-e ...`.
fn edit_line(rule: String) -> String {
    if let Some(rest) = rule.strip_prefix("-A ") {
        format!("-E {rest}")
    } else if let Some(rest) = rule.strip_prefix("-a ") {
        format!("-e {rest}")
    } else {
        rule
    }
}

/// Checks a configuration that did not come from the model's own changes (a file, a client)
/// and returns it as the model builds it: every service and real server validated, real
/// servers' ports normalised.
pub fn normalise(config: &Config) -> Result<Config, ConfigError> {
    let d = diff(
        &DesiredState {
            config: Config::default(),
            ..DesiredState::default()
        },
        &DesiredState {
            config: config.clone(),
            ..DesiredState::default()
        },
    );
    let mut built = Config::default();
    built.apply_all(&d.changes)?;
    Ok(built)
}

/// The configuration in a canonical order (services by key, real servers by address), for
/// comparing configurations that were built in different orders.
pub fn canonical(config: &Config) -> Config {
    let mut services = config.services().to_vec();
    services.sort_by_key(|s| s.key);
    for s in &mut services {
        s.reals.sort_by_key(|r| r.addr);
        s.matches.sort();
        s.laddrs.sort_by_key(|l| l.addr);
    }
    Config::from_services(services)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config_file, state::DEFAULT_TIMEOUTS};

    fn state(text: &str) -> DesiredState {
        config_file::parse(text).unwrap_or_else(|e| panic!("{e:?}\n{text}"))
    }

    const BASE: &str = r#"
[[service]]
tcp = "203.0.113.10:80"
scheduler = "wrr"
  [[service.real]]
  address = "198.51.100.11"
  weight = 1
  [[service.real]]
  address = "198.51.100.12"
  weight = 2

[[service]]
udp = "203.0.113.10:53"
scheduler = "rr"
  [[service.real]]
  address = "198.51.100.11"

[[service]]
fwmark = 1
match = ["tcp:203.0.113.20:80", "tcp:203.0.113.20:443"]
persistent = 60
  [[service.real]]
  address = "198.51.100.13"
"#;

    /// Applies the diff to `from`, checks the result is `to` and that nothing is left to do.
    fn check(from: &DesiredState, to: &DesiredState) -> Diff {
        let d = diff(from, to);
        let mut c = from.config.clone();
        c.apply_all(&d.changes)
            .unwrap_or_else(|e| panic!("{e}: {:#?}", d.changes));
        assert_eq!(canonical(&c), canonical(&to.config), "{:#?}", d.changes);
        let after = DesiredState {
            config: c,
            timeouts: d.timeouts.unwrap_or(from.timeouts),
        };
        assert!(diff(&after, to).is_empty(), "a second diff is empty");
        d
    }

    #[test]
    fn same_configuration_is_no_change() {
        let s = state(BASE);
        let d = diff(&s, &s);
        assert!(d.is_empty() && d.lines.is_empty(), "{d:?}");
        // Order does not matter.
        let reordered = DesiredState {
            config: s.config.clone().map_services(|v| {
                v.reverse();
                v[0].reals.reverse();
            }),
            ..s.clone()
        };
        assert!(diff(&s, &reordered).is_empty());
    }

    /// A change of forwarding method is an edit of the server (`-e ... -m`); a NAT server's
    /// port is part of its identity (IPVS knows a server by address and port, and -e cannot
    /// change it), so a new port, or a NAT server on its own port made DR, is `-d` then `-a`.
    #[test]
    fn forwarding_method_and_nat_port_changes() {
        let from = state(
            r#"
[[service]]
tcp = "203.0.113.10:80"
  [[service.real]]
  address = "198.51.100.11"
  [[service.real]]
  address = "198.51.100.12:8080"
  forward = "nat"
  [[service.real]]
  address = "198.51.100.13:8080"
  forward = "nat"
  [[service.real]]
  address = "198.51.100.14"
  forward = "nat"
"#,
        );
        let to = state(
            r#"
[[service]]
tcp = "203.0.113.10:80"
  [[service.real]]
  address = "198.51.100.11"
  forward = "nat"
  [[service.real]]
  address = "198.51.100.12:8081"
  forward = "nat"
  [[service.real]]
  address = "198.51.100.13"
  [[service.real]]
  address = "198.51.100.14"
  forward = "tunnel"
"#,
        );
        let d = check(&from, &to);
        assert_eq!(
            d.lines,
            [
                "-d -t 203.0.113.10:80 -r 198.51.100.12:8080",
                "-d -t 203.0.113.10:80 -r 198.51.100.13:8080",
                "-e -t 203.0.113.10:80 -r 198.51.100.11:80 -m -w 1",
                "-a -t 203.0.113.10:80 -r 198.51.100.12:8081 -m -w 1",
                "-a -t 203.0.113.10:80 -r 198.51.100.13:80 -g -w 1",
                "-e -t 203.0.113.10:80 -r 198.51.100.14:80 -i -w 1 --tun-type ipip",
            ]
        );
        let k = from.config.services()[0].key;
        let edit = |addr: &str, forward| Change::EditReal {
            service: k,
            addr: addr.parse().unwrap(),
            weight: Some(1),
            forward: Some(forward),
            u_threshold: Some(0),
            l_threshold: Some(0),
            check: Some(CheckSpec::default()),
        };
        assert_eq!(
            d.changes,
            [
                Change::DeleteReal {
                    service: k,
                    addr: "198.51.100.12:8080".parse().unwrap()
                },
                Change::DeleteReal {
                    service: k,
                    addr: "198.51.100.13:8080".parse().unwrap()
                },
                edit("198.51.100.11:80", ForwardMethod::Nat),
                Change::AddReal {
                    service: k,
                    real: to.config.services()[0].reals[1].clone()
                },
                Change::AddReal {
                    service: k,
                    real: to.config.services()[0].reals[2].clone()
                },
                edit(
                    "198.51.100.14:80",
                    ForwardMethod::Tunnel(crate::model::Tunnel::IPIP)
                ),
            ]
        );
    }

    #[test]
    fn only_the_difference_changes() {
        let from = state(BASE);
        let edited = BASE
            // A weight changes, a real server goes, one comes.
            .replace("weight = 2", "weight = 5")
            .replace(
                "udp = \"203.0.113.10:53\"\nscheduler = \"rr\"\n  [[service.real]]\n  address = \"198.51.100.11\"",
                "udp = \"203.0.113.10:53\"\nscheduler = \"rr\"\n  [[service.real]]\n  address = \"198.51.100.14\"",
            )
            + "[timeouts]\nudp = 60\n";
        let to = state(&edited);
        let d = check(&from, &to);
        assert_eq!(
            d.lines,
            [
                "-e -t 203.0.113.10:80 -r 198.51.100.12:80 -g -w 5",
                "-d -u 203.0.113.10:53 -r 198.51.100.11:53",
                "-a -u 203.0.113.10:53 -r 198.51.100.14:53 -g -w 1",
                "--set 900 120 60",
            ]
        );
        assert_eq!(
            d.timeouts,
            Some(Timeouts {
                udp: 60,
                ..DEFAULT_TIMEOUTS
            })
        );
        // Nothing touches the service that did not change, nor the unchanged real server.
        for c in &d.changes {
            let key = match c {
                Change::EditReal { service, addr, .. } | Change::DeleteReal { service, addr } => {
                    assert_ne!(*addr, "198.51.100.11:80".parse().unwrap(), "{c:?}");
                    service
                }
                Change::AddReal { service, .. } => service,
                other => panic!("unexpected {other:?}"),
            };
            assert!(!key.is_group(), "{c:?}");
        }
    }

    #[test]
    fn services_come_and_go_and_change_options() {
        let from = state(BASE);
        let to = state(
            r#"
[[service]]
tcp = "203.0.113.10:80"
scheduler = "sh"
sched-flags = ["sh-port"]
persistent = 300
netmask = "255.255.255.0"
  [[service.real]]
  address = "198.51.100.11"
  weight = 1
  [[service.real]]
  address = "198.51.100.12"
  weight = 2

[[service]]
tcp = "[2001:db8::10]:443"
scheduler = "mh"
  [[service.real]]
  address = "2001:db8::11"
"#,
        );
        let d = check(&from, &to);
        assert_eq!(
            d.lines,
            [
                "-D -u 203.0.113.10:53",
                "-D -f 1",
                "-E -t 203.0.113.10:80 -s sh -p 300 -M 255.255.255.0 -b sh-port",
                "-A -t [2001:db8::10]:443 -s mh",
                "-a -t [2001:db8::10]:443 -r [2001:db8::11]:443 -g -w 1",
            ]
        );
        // And back.
        check(&to, &from);
        // From and to nothing; each service is followed by its real servers, as -S writes them.
        let d = check(&DesiredState::default(), &from);
        assert_eq!(
            d.lines,
            [
                "-A -t 203.0.113.10:80 -s wrr",
                "-a -t 203.0.113.10:80 -r 198.51.100.11:80 -g -w 1",
                "-a -t 203.0.113.10:80 -r 198.51.100.12:80 -g -w 2",
                "-A -u 203.0.113.10:53 -s rr",
                "-a -u 203.0.113.10:53 -r 198.51.100.11:53 -g -w 1",
                "-A -f 1 -s wlc -p 60 --match tcp:203.0.113.20:80 --match tcp:203.0.113.20:443",
                "-a -f 1 -r 198.51.100.13:0 -g -w 1",
            ]
        );
        let d = check(&from, &DesiredState::default());
        assert_eq!(d.lines.len(), 3, "{:?}", d.lines);
    }

    #[test]
    fn matches_move_between_groups_and_services_in_one_transaction() {
        let from = state(BASE);
        // Group 1 gives :443 to a new group 2 and :80 to a new normal service.
        let to = state(
            r#"
[[service]]
fwmark = 1
match = ["tcp:203.0.113.20:8080"]
persistent = 60
  [[service.real]]
  address = "198.51.100.13"

[[service]]
fwmark = 2
match = ["tcp:203.0.113.20:443"]

[[service]]
tcp = "203.0.113.20:80"
scheduler = "rr"
"#,
        );
        let d = check(&from, &to);
        assert!(
            d.lines
                .contains(&"-E -f 1 -s wlc -p 60 --match tcp:203.0.113.20:8080".to_string()),
            "{:?}",
            d.lines
        );
        check(&to, &from);
        // A group real server's port changes: the server is replaced.
        let other_port = state(&BASE.replace(
            "address = \"198.51.100.13\"",
            "address = \"198.51.100.13:8080\"",
        ));
        let d = check(&from, &other_port);
        assert_eq!(
            d.lines,
            [
                "-d -f 1 -r 198.51.100.13:0",
                "-a -f 1 -r 198.51.100.13:8080 -g -w 1"
            ]
        );
    }

    #[test]
    fn normalise_checks_what_the_model_checks() {
        let c = state(BASE).config.map_services(|v| v.push(v[0].clone()));
        assert!(matches!(normalise(&c), Err(ConfigError::ServiceExists(_))));
        // A DR server's port is the service's.
        let c = state(BASE)
            .config
            .map_services(|v| v[0].reals[0].addr = "198.51.100.11:8080".parse().unwrap());
        assert_eq!(
            normalise(&c).unwrap().services()[0].reals[0].addr,
            "198.51.100.11:80".parse().unwrap()
        );
    }

    #[test]
    fn health_checks_and_sorry_servers_change_with_the_rest() {
        let from = state(BASE);
        let checked = BASE.replacen(
            "scheduler = \"wrr\"\n",
            "scheduler = \"wrr\"\nsorry-server = \"198.51.100.19\"\n  [service.health-check]\n  type = \"http\"\n  path = \"/health\"\n",
            1,
        );
        let to = state(&checked);
        let d = check(&from, &to);
        assert_eq!(
            d.lines,
            ["-E -t 203.0.113.10:80 -s wrr --sorry-server 198.51.100.19:80 --check http --check-path /health"]
        );
        assert_eq!(d.changes.len(), 2, "{:#?}", d.changes);
        let d = check(&to, &from);
        assert_eq!(
            d.lines,
            ["-E -t 203.0.113.10:80 -s wrr --check none --sorry-server none"]
        );
        // A real server's own check that only goes with the old default and one that only
        // goes with the new (http's path -> misc's command) change in one transaction.
        let http = state(
            r#"[[service]]
tcp = "203.0.113.10:80"
  [service.health-check]
  type = "http"
  [[service.real]]
  address = "198.51.100.11"
  health-check = { path = "/a" }
  [[service.real]]
  address = "198.51.100.12"
"#,
        );
        let misc = state(
            r#"[[service]]
tcp = "203.0.113.10:80"
  [service.health-check]
  type = "misc"
  command = "/bin/check"
  [[service.real]]
  address = "198.51.100.11"
  health-check = { command = "/bin/check-a" }
  [[service.real]]
  address = "198.51.100.12"
"#,
        );
        let d = check(&http, &misc);
        assert_eq!(
            d.lines,
            [
                "-E -t 203.0.113.10:80 -s wlc --check misc --check-command /bin/check",
                "-e -t 203.0.113.10:80 -r 198.51.100.11:80 -g -w 1 --check-command /bin/check-a",
            ]
        );
        check(&misc, &http);
        // A real server's own check given up: it inherits again.
        let plain = state(
            r#"[[service]]
tcp = "203.0.113.10:80"
  [service.health-check]
  type = "http"
  [[service.real]]
  address = "198.51.100.11"
  [[service.real]]
  address = "198.51.100.12"
"#,
        );
        let d = check(&http, &plain);
        assert_eq!(
            d.lines,
            ["-e -t 203.0.113.10:80 -r 198.51.100.11:80 -g -w 1 --check inherit"]
        );
    }

    fn fullnat_state(laddrs: &str, reals: &[(&str, &str)]) -> DesiredState {
        let mut text = format!("[[service]]\ntcp = \"203.0.113.10:80\"\nladdrs = [{laddrs}]\n");
        for (addr, forward) in reals {
            text.push_str(&format!(
                "  [[service.real]]\n  address = \"{addr}\"\n  forward = \"{forward}\"\n"
            ));
        }
        state(&text)
    }

    fn ops(d: &Diff) -> Vec<String> {
        d.changes
            .iter()
            .map(|c| match c {
                Change::AddLocalAddr { laddr, .. } => {
                    format!("+laddr {} {}", laddr.addr, laddr.ports)
                }
                Change::DelLocalAddr { addr, .. } => format!("-laddr {addr}"),
                Change::AddReal { real, .. } => {
                    format!("+real {} {}", real.addr, real.forward.ipvsadm_name())
                }
                Change::DeleteReal { addr, .. } => format!("-real {addr}"),
                Change::EditReal { addr, forward, .. } => {
                    format!("=real {addr} {}", forward.map_or("-", |f| f.ipvsadm_name()))
                }
                Change::AddService { key, .. } => format!("+service {key}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    /// Local addresses are added before the real servers that need them and deleted after
    /// the ones that used them, whatever the change; `check` applies each diff with the
    /// model's rules.
    #[test]
    fn local_addresses_come_before_and_go_after_their_fullnat_servers() {
        let nat = fullnat_state("", &[("198.51.100.11:8080", "nat")]);
        let one = fullnat_state(r#""10.0.0.9""#, &[("198.51.100.11:8080", "fullnat")]);
        // NAT made FULLNAT with a new local address.
        let d = check(&nat, &one);
        assert_eq!(
            ops(&d),
            [
                "+laddr 10.0.0.9 1024-65535",
                "=real 198.51.100.11:8080 FullNat"
            ]
        );
        assert_eq!(
            d.lines,
            [
                "-P -t 203.0.113.10:80 -z 10.0.0.9",
                "-e -t 203.0.113.10:80 -r 198.51.100.11:8080 -b -w 1",
            ]
        );
        // And back: the local address goes after the server stopped using it.
        assert_eq!(
            ops(&check(&one, &nat)),
            ["=real 198.51.100.11:8080 Masq", "-laddr 10.0.0.9"]
        );
        // The server goes, then its local address.
        let none = fullnat_state("", &[]);
        assert_eq!(
            ops(&check(&one, &none)),
            ["-real 198.51.100.11:8080", "-laddr 10.0.0.9"]
        );
        // A new service: its local addresses, then its servers.
        let empty = DesiredState::default();
        assert_eq!(
            ops(&check(&empty, &one)),
            [
                "+service TCP 203.0.113.10:80",
                "+laddr 10.0.0.9 1024-65535",
                "+real 198.51.100.11:8080 FullNat"
            ]
        );
        // One local address replaced by another: the new one first, the old one last.
        let other = fullnat_state(r#""10.0.0.10""#, &[("198.51.100.11:8080", "fullnat")]);
        assert_eq!(
            ops(&check(&one, &other)),
            ["+laddr 10.0.0.10 1024-65535", "-laddr 10.0.0.9"]
        );
        // One of two goes: at once (another of its family stays).
        let two = fullnat_state(
            r#""10.0.0.9", "10.0.0.10""#,
            &[("198.51.100.11:8080", "fullnat")],
        );
        assert_eq!(ops(&check(&two, &other)), ["-laddr 10.0.0.9"]);
    }

    /// A local address's ports or interface cannot change in place: it is deleted and added
    /// again, while another address of its family covers its servers; when it is the only one,
    /// its FULLNAT servers go and come back around it.
    #[test]
    fn a_changed_local_address_is_replaced_in_an_order_the_model_accepts() {
        let reals = [
            ("198.51.100.11:8080", "fullnat"),
            ("198.51.100.12:80", "nat"),
        ];
        let one = fullnat_state(r#""10.0.0.9""#, &reals);
        let ported = fullnat_state(r#"{ addr = "10.0.0.9", ports = "40000-40999" }"#, &reals);
        let d = check(&one, &ported);
        assert_eq!(
            ops(&d),
            [
                "-real 198.51.100.11:8080",
                "-laddr 10.0.0.9",
                "+laddr 10.0.0.9 40000-40999",
                "+real 198.51.100.11:8080 FullNat"
            ]
        );
        assert_eq!(
            d.lines,
            [
                "-d -t 203.0.113.10:80 -r 198.51.100.11:8080",
                "-Q -t 203.0.113.10:80 -z 10.0.0.9",
                "-P -t 203.0.113.10:80 -z 10.0.0.9 --laddr-ports 40000-40999",
                "-a -t 203.0.113.10:80 -r 198.51.100.11:8080 -b -w 1",
            ]
        );
        // With a new address of its family in the target, the servers stay.
        let ported_and_new = fullnat_state(
            r#"{ addr = "10.0.0.9", iface = "eth1" }, "10.0.0.10""#,
            &reals,
        );
        assert_eq!(
            ops(&check(&one, &ported_and_new)),
            [
                "+laddr 10.0.0.10 1024-65535",
                "-laddr 10.0.0.9",
                "+laddr 10.0.0.9 1024-65535"
            ]
        );
        // Both of two change: the first is replaced at once (the second covers), then the
        // second (the first's new self covers).
        let two = fullnat_state(r#""10.0.0.9", "10.0.0.10""#, &reals);
        let two_ported = fullnat_state(
            r#"{ addr = "10.0.0.9", ports = "2000-2999" }, { addr = "10.0.0.10", ports = "3000-3999" }"#,
            &reals,
        );
        assert_eq!(
            ops(&check(&two, &two_ported)),
            [
                "-laddr 10.0.0.9",
                "+laddr 10.0.0.9 2000-2999",
                "-laddr 10.0.0.10",
                "+laddr 10.0.0.10 3000-3999"
            ]
        );
    }
}
