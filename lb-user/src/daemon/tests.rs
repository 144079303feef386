//! The controller and its request handling on an in-memory data plane: every request a client
//! can send, refused changes that must change nothing, failures at every map write, a failed
//! save, adoption, health. No root, no socket.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use lb_common::{ConnEntry, ConnState, DataplaneConfig, FlowKey, Reason, Stats};

use super::{parse_request, Answer, Controller};
use crate::{
    dataplane::{
        maps::{Maps, StatsMap},
        memory::MemoryDataplane,
        ops::DataplaneOps,
        ConnInfo,
    },
    model::{Config, Protocol, ServiceKey, Timeouts},
    proto::{Command, Request, Response, PROTOCOL_VERSION},
    rules::parse_rules,
    state::{DesiredState, StateFile},
};

type Ctl = Controller<MemoryDataplane>;

fn controller() -> Ctl {
    Controller::new(MemoryDataplane::new(), "eth0")
}

/// A scratch directory of this test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("xvs-ctl-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A request as the socket carries it: serialised, then read back as xvsd reads it.
fn send(c: &mut Ctl, command: Command, config_file: Option<&Path>) -> Answer {
    let line = serde_json::to_string(&Request::new(command)).unwrap();
    let command = parse_request(&line).expect("a well-formed request");
    c.handle(command, config_file)
}

fn rules(c: &mut Ctl, text: &str) -> Answer {
    let changes = parse_rules(text).unwrap();
    send(c, Command::Apply { changes }, None)
}

fn ok(a: Answer) -> Answer {
    if let Response::Error { message } = &a.response {
        panic!("refused: {message}");
    }
    a
}

fn refused(a: Answer) -> String {
    match a.response {
        Response::Error { message } => message,
        other => panic!("accepted: {other:?}"),
    }
}

fn listing(c: &mut Ctl) -> crate::proto::Listing {
    match ok(send(c, Command::List, None)).response {
        Response::Listing(l) => l,
        other => panic!("{other:?}"),
    }
}

/// Every real server gets a MAC, as the neighbour table would give it.
fn resolve(c: &mut Ctl) {
    let table: HashMap<IpAddr, [u8; 6]> = c
        .all_reals()
        .into_iter()
        .enumerate()
        .map(|(i, ip)| (ip, [2, 0, 0, 0, 0, i as u8 + 1]))
        .collect();
    c.update_macs(table).unwrap();
}

/// Everything a refused request must leave as it was.
#[derive(Debug, PartialEq)]
struct Fingerprint {
    config: Config,
    timeouts: Timeouts,
    maps: crate::dataplane::maps::MemoryMaps,
    config_map: DataplaneConfig,
    state_file: Option<String>,
}

fn fingerprint(c: &Ctl, state: Option<&StateFile>) -> Fingerprint {
    Fingerprint {
        config: c.config().clone(),
        timeouts: c.desired().timeouts,
        maps: c.dataplane().maps.contents(),
        config_map: c.dataplane().config,
        state_file: state.and_then(|s| std::fs::read_to_string(s.path()).ok()),
    }
}

fn tcp(addr: &str) -> ServiceKey {
    ServiceKey::new(Protocol::Tcp, addr.parse().unwrap())
}

const TWO_SERVICES: &str = "-A -t 203.0.113.1:80 -s wrr\n\
     -a -t 203.0.113.1:80 -r 10.0.0.1:80 -g -w 2\n\
     -a -t 203.0.113.1:80 -r 10.0.0.2:80 -g -w 1\n\
     -A -u [2001:db8::1]:53 -s mh\n\
     -a -u [2001:db8::1]:53 -r [2001:db8:1::1]:53 -i\n";

#[test]
fn a_request_line_is_read_version_first() {
    let line = serde_json::to_string(&Request::new(Command::List)).unwrap();
    assert_eq!(parse_request(&line).unwrap(), Command::List);
    let message = |line: &str| match parse_request(line) {
        Err(message) => message,
        other => panic!("{other:?}"),
    };
    assert!(message("{not json").starts_with("malformed request: "));
    assert_eq!(
        message(r#"{"command":"List"}"#),
        "malformed request: no protocol version"
    );
    // An old or newer client is told what to do, whatever its command looks like.
    let other = PROTOCOL_VERSION + 1;
    assert_eq!(
        message(&format!(r#"{{"version":{other},"command":{{"Frobnicate":1}}}}"#)),
        format!(
            "protocol version {other} is not supported by this xvsd (it speaks {PROTOCOL_VERSION}); use the xvsadm that came with it"
        )
    );
    let unknown = message(&format!(
        r#"{{"version":{PROTOCOL_VERSION},"command":"Frobnicate"}}"#
    ));
    assert!(unknown.starts_with("malformed request: "), "{unknown}");
    assert!(unknown.contains("Frobnicate"), "{unknown}");
}

#[test]
fn changes_reach_the_tables_and_the_listing() {
    let mut c = controller();
    let a = ok(rules(&mut c, TWO_SERVICES));
    assert!(a.settle, "a change waits for new real servers' MACs");
    // The direct-routing servers have no MAC yet: in the configuration, not in the table.
    let web = tcp("203.0.113.1:80");
    let dp = c.dataplane();
    assert!(dp.service_id(&web).is_some());
    assert!(
        dp.placement()
            .table(&web)
            .unwrap()
            .iter()
            .all(|&b| b == lb_common::NO_BACKEND)
            || dp.placement().table(&web).unwrap().is_empty()
    );
    resolve(&mut c);
    let dp = c.dataplane();
    let a1 = dp.backend_id(&web, "10.0.0.1:80".parse().unwrap()).unwrap();
    let a2 = dp.backend_id(&web, "10.0.0.2:80".parse().unwrap()).unwrap();
    let table = dp.placement().table(&web).unwrap();
    // wrr: weight 2 gets twice the slots of weight 1.
    let n = |id| table.iter().filter(|&&b| b == id).count();
    assert_eq!(n(a1), 2 * n(a2), "{table:?}");

    let l = listing(&mut c);
    assert_eq!(l.services.len(), 2);
    assert_eq!(l.services[0].key, web);
    assert_eq!(l.services[0].reals.len(), 2);
    assert_eq!(l.services[0].reals[0].weight, 2);
    assert!(l.services[0].reals[0].mac.is_some());
    assert_eq!(l.conn_table_size, c.dataplane().conn_capacity());
    assert_eq!(l.reasons.len(), lb_common::reason::REASON_COUNT as usize);
}

#[test]
fn a_refused_change_changes_nothing() {
    let scratch = Scratch::new("refused");
    let state = StateFile::for_iface(&scratch.0, "eth0");
    let mut c = controller().with_state(state.clone());
    ok(rules(&mut c, TWO_SERVICES));
    resolve(&mut c);
    let before = fingerprint(&c, Some(&state));
    assert!(before.state_file.is_some(), "an accepted change is saved");
    // ipvsadm's rules: a service that exists, a real server of a service that does not, and a
    // transaction whose last change fails.
    for (text, why) in [
        ("-A -t 203.0.113.1:80 -s rr", "Service already exists"),
        ("-a -t 203.0.113.9:80 -r 10.0.0.1", "No such service"),
        (
            "-a -t 203.0.113.1:80 -r 10.0.0.3:80\n-D -t 203.0.113.99:80",
            "No such service",
        ),
    ] {
        let message = refused(rules(&mut c, text));
        assert!(message.contains(why), "{text}: {message}");
        assert_eq!(fingerprint(&c, Some(&state)), before, "{text}");
    }
    // Zeroing a service that does not exist is an error, as with ipvsadm.
    let message = refused(send(
        &mut c,
        Command::Zero {
            service: Some(tcp("203.0.113.9:80")),
        },
        None,
    ));
    assert!(message.contains("No such service"), "{message}");
    assert_eq!(fingerprint(&c, Some(&state)), before);
}

#[test]
fn a_change_failing_at_any_map_write_leaves_maps_config_and_state_as_they_were() {
    let scratch = Scratch::new("every-write");
    let state = StateFile::for_iface(&scratch.0, "eth0");
    let mut c = controller().with_state(state.clone());
    ok(rules(&mut c, TWO_SERVICES));
    resolve(&mut c);
    let before = fingerprint(&c, Some(&state));
    // One change that rewrites tables, moves real servers, deletes and adds services.
    let change = "-E -t 203.0.113.1:80 -s rr\n\
                  -d -t 203.0.113.1:80 -r 10.0.0.2:80\n\
                  -e -t 203.0.113.1:80 -r 10.0.0.1:80 -g -w 5\n\
                  -D -u [2001:db8::1]:53\n\
                  -A -t 203.0.113.2:443 -s sh -p 60\n\
                  -a -t 203.0.113.2:443 -r 10.0.0.7:443 -i\n";
    // How many writes the change makes when nothing fails.
    let mut probe = controller();
    ok(rules(&mut probe, TWO_SERVICES));
    resolve(&mut probe);
    let start = probe.dataplane().maps.writes;
    ok(rules(&mut probe, change));
    let writes = probe.dataplane().maps.writes - start;
    assert!(writes > 10, "the change writes {writes} times");
    for n in 0..writes {
        c.dataplane_mut().maps.fail_write(n);
        let message = refused(rules(&mut c, change));
        assert!(message.contains("injected failure"), "write {n}: {message}");
        assert_eq!(fingerprint(&c, Some(&state)), before, "failing write {n}");
    }
    // And then it goes through.
    ok(rules(&mut c, change));
    assert_eq!(c.config(), probe.config());
    assert_eq!(
        c.dataplane().maps.contents(),
        probe.dataplane().maps.contents()
    );
}

#[test]
fn a_change_that_cannot_be_saved_is_nowhere() {
    let scratch = Scratch::new("save");
    let state = StateFile::for_iface(&scratch.0, "eth0");
    let mut c = controller().with_state(state.clone());
    ok(rules(&mut c, TWO_SERVICES));
    resolve(&mut c);
    let before = fingerprint(&c, Some(&state));
    // A directory where the temporary state file goes: saving fails, whatever the change.
    let temp = scratch.0.join(".eth0.json.tmp");
    std::fs::create_dir(&temp).unwrap();
    let mut other = c.desired();
    other
        .config
        .apply_all(&parse_rules("-A -u 203.0.113.12:53").unwrap())
        .unwrap();
    let changes = parse_rules("-A -t 203.0.113.3:80\n-D -t 203.0.113.1:80").unwrap();
    for command in [
        Command::Apply {
            changes: changes[..1].to_vec(),
        },
        Command::Apply {
            changes: changes[1..].to_vec(),
        },
        Command::SetTimeouts {
            tcp: Some(1),
            tcpfin: Some(2),
            udp: Some(3),
        },
        Command::ApplyConfig {
            state: other,
            dry_run: false,
        },
    ] {
        let what = format!("{command:?}");
        let message = refused(send(&mut c, command, None));
        assert!(
            message.starts_with("saving the configuration failed, nothing changed"),
            "{what}: {message}"
        );
        assert_eq!(fingerprint(&c, Some(&state)), before, "{what}");
    }
    // Once the state can be written again, the same change goes through and is saved.
    std::fs::remove_dir(&temp).unwrap();
    ok(rules(&mut c, "-A -t 203.0.113.3:80"));
    let saved = state.load().unwrap().unwrap();
    assert_eq!(&saved.config, c.config());
}

#[test]
fn timeouts_are_set_saved_and_written_in_nanoseconds_and_a_bad_one_is_refused() {
    let scratch = Scratch::new("timeouts");
    let state = StateFile::for_iface(&scratch.0, "eth0");
    let mut c = controller().with_state(state.clone());
    let set = |tcp, tcpfin, udp| Command::SetTimeouts { tcp, tcpfin, udp };
    ok(send(&mut c, set(Some(900), None, Some(60)), None));
    let t = c.desired().timeouts;
    assert_eq!((t.tcp, t.udp), (900, 60));
    assert_eq!(c.dataplane().config.tcp_timeout_ns, 900_000_000_000);
    assert_eq!(c.dataplane().config.udp_timeout_ns, 60_000_000_000);
    assert_eq!(state.load().unwrap().unwrap().timeouts, t);
    assert_eq!(listing(&mut c).timeouts, t);

    let before = fingerprint(&c, Some(&state));
    let message = refused(send(&mut c, set(None, Some(u64::MAX), None), None));
    assert_eq!(message, "tcpfin timeout too large");
    assert_eq!(fingerprint(&c, Some(&state)), before);
    // CONFIG refusing the write: nothing changes either.
    c.dataplane_mut().fail_config = true;
    let message = refused(send(&mut c, set(Some(1), None, None), None));
    assert!(message.contains("injected failure"), "{message}");
    assert_eq!(fingerprint(&c, Some(&state)), before);
}

#[test]
fn counters_are_listed_and_zeroed_per_service_or_all() {
    let mut c = controller();
    ok(rules(&mut c, TWO_SERVICES));
    resolve(&mut c);
    let web = tcp("203.0.113.1:80");
    let dns = ServiceKey::new(Protocol::Udp, "[2001:db8::1]:53".parse().unwrap());
    let real: SocketAddr = "10.0.0.1:80".parse().unwrap();
    let add = Stats {
        conns: 3,
        packets: 10,
        bytes: 1000,
        out_packets: 8,
        out_bytes: 900,
    };
    let dp = c.dataplane_mut();
    let (w, d) = (dp.service_id(&web).unwrap(), dp.service_id(&dns).unwrap());
    let b = dp.backend_id(&web, real).unwrap();
    dp.count(StatsMap::Service, w, add).unwrap();
    dp.count(StatsMap::Service, d, add).unwrap();
    dp.count(StatsMap::Backend, b, add).unwrap();
    dp.reasons[Reason::ALL[0] as usize] = 42;
    let l = listing(&mut c);
    assert_eq!(l.services[0].stats.packets, 10);
    assert_eq!(l.services[0].reals[0].stats.bytes, 1000);
    // Replies (NAT, FULLNAT) have counters of their own, in ipvsadm's Out columns.
    assert_eq!(l.services[0].stats.out_packets, 8);
    assert_eq!(l.services[0].reals[0].stats.out_bytes, 900);

    assert_eq!(l.reasons.get(Reason::ALL[0].name()), Some(&42));

    ok(send(&mut c, Command::Zero { service: Some(web) }, None));
    let l = listing(&mut c);
    assert_eq!(l.services[0].stats, Default::default());
    assert_eq!(l.services[0].reals[0].stats, Default::default());
    assert_eq!(
        l.services[1].stats.conns, 3,
        "another service keeps its counters"
    );
    ok(send(&mut c, Command::Zero { service: None }, None));
    assert_eq!(listing(&mut c).services[1].stats, Default::default());
}

#[test]
fn connections_are_listed_with_their_real_server_and_templates_as_ipvs_shows_them() {
    let mut c = controller();
    ok(rules(
        &mut c,
        "-A -t 203.0.113.1:0 -s rr -p 300\n-a -t 203.0.113.1:0 -r 10.0.0.1 -g\n",
    ));
    resolve(&mut c);
    let web = tcp("203.0.113.1:0");
    let real: SocketAddr = "10.0.0.1:0".parse().unwrap();
    let dp = c.dataplane_mut();
    let service = dp.service_id(&web).unwrap();
    let backend = dp.backend_id(&web, real).unwrap();
    let generation = dp.placement().generations()[&backend];
    let v4 = |a: [u8; 4]| {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&a);
        b
    };
    let conn = |backend, generation| ConnInfo {
        key: FlowKey {
            src: v4([198, 51, 100, 7]),
            dst: v4([203, 0, 113, 1]),
            sport_be: 40000u16.to_be(),
            dport_be: 443u16.to_be(),
            proto: lb_common::PROTO_TCP,
            family: lb_common::FAMILY_V4,
            _pad: [0; 2],
        },
        entry: ConnEntry {
            backend,
            generation,
            service,
            state: ConnState::Established as u8,
            ..Default::default()
        },
        expires_in_ns: 899_500_000_000,
    };
    // One live connection, and one of a slot's earlier generation (a removed server's).
    dp.conns = vec![conn(backend, generation), conn(backend, generation + 1)];
    dp.templates = vec![(
        lb_common::PersistKey {
            client: v4([198, 51, 100, 0]),
            service,
            family: lb_common::FAMILY_V4,
            _pad: [0; 3],
        },
        lb_common::PersistEntry {
            backend,
            generation,
            ..Default::default()
        },
        299_000_000_000,
    )];
    let conns = match ok(send(&mut c, Command::Connections, None)).response {
        Response::Connections { conns } => conns,
        other => panic!("{other:?}"),
    };
    assert_eq!(conns.len(), 2, "{conns:?}");
    assert_eq!(conns[0].client, "198.51.100.7:40000".parse().unwrap());
    // A port-0 service: the real server gets the client's destination port.
    assert_eq!(conns[0].real, "10.0.0.1:443".parse().unwrap());
    assert_eq!(conns[0].state, "ESTABLISHED");
    assert_eq!(conns[0].expires_s, 900);
    assert_eq!(conns[1].state, "NONE");
    assert_eq!(conns[1].client, "198.51.100.0:0".parse().unwrap());
    assert_eq!(conns[1].virtual_addr, "203.0.113.1:0".parse().unwrap());
    assert_eq!(conns[1].expires_s, 299);
}

#[test]
fn a_configuration_applies_as_a_difference_and_a_dry_run_changes_nothing() {
    let scratch = Scratch::new("apply");
    let mut c = controller();
    ok(rules(&mut c, TWO_SERVICES));
    resolve(&mut c);
    let web = tcp("203.0.113.1:80");
    let kept = c.dataplane().service_id(&web);
    let mut target = c.desired();
    target
        .config
        .apply_all(&parse_rules("-D -u [2001:db8::1]:53\n-A -t 203.0.113.5:25").unwrap())
        .unwrap();
    let before = fingerprint(&c, None);
    let a = ok(send(
        &mut c,
        Command::ApplyConfig {
            state: target.clone(),
            dry_run: true,
        },
        None,
    ));
    assert!(!a.settle);
    match a.response {
        Response::Diff { lines, applied, .. } => {
            assert!(!applied);
            assert_eq!(lines.len(), 2, "{lines:?}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fingerprint(&c, None), before);
    let a = ok(send(
        &mut c,
        Command::ApplyConfig {
            state: target.clone(),
            dry_run: false,
        },
        None,
    ));
    assert!(a.settle);
    assert_eq!(c.desired(), target);
    assert_eq!(c.dataplane().service_id(&web), kept, "unchanged: same id");
    // The same again: nothing to do, nothing to wait for.
    let a = ok(send(
        &mut c,
        Command::ApplyConfig {
            state: target,
            dry_run: false,
        },
        None,
    ));
    assert!(!a.settle);

    // reload: without --config it says how to apply a file; with one, it applies it.
    let message = refused(send(&mut c, Command::Reload { dry_run: false }, None));
    assert!(message.contains("without --config"), "{message}");
    let file = scratch.0.join("xvs.toml");
    std::fs::write(&file, "[[service]]\ntcp = \"203.0.113.8:80\"\n").unwrap();
    ok(send(
        &mut c,
        Command::Reload { dry_run: false },
        Some(&file),
    ));
    assert_eq!(c.config().services().len(), 1);
    std::fs::write(&file, "[[service]]\ntcp = \"203.0.113.8:80\"\nbogus = 1\n").unwrap();
    let before = fingerprint(&c, None);
    refused(send(
        &mut c,
        Command::Reload { dry_run: false },
        Some(&file),
    ));
    assert_eq!(fingerprint(&c, None), before);
}

#[test]
fn an_adopted_data_plane_keeps_its_ids_through_the_first_configuration() {
    // A first controller fills the maps, as an xvsd that then exits would leave them pinned.
    let mut first = controller();
    ok(rules(&mut first, TWO_SERVICES));
    resolve(&mut first);
    let web = tcp("203.0.113.1:80");
    let real: SocketAddr = "10.0.0.1:80".parse().unwrap();
    let (service, backend) = (
        first.dataplane().service_id(&web).unwrap(),
        first.dataplane().backend_id(&web, real).unwrap(),
    );
    let pinned = first.dataplane().maps.clone();
    let timeouts = DataplaneConfig {
        tcp_timeout_ns: 123_000_000_000,
        ..Default::default()
    };

    let adopted = MemoryDataplane::adopt(pinned.clone(), timeouts).unwrap();
    let mut c = Controller::new(adopted, "eth0");
    assert!(c.dataplane().adoption_pending());
    // The adopted data plane's timeouts and MACs are the controller's from the start.
    assert_eq!(c.desired().timeouts.tcp, 123);
    assert!(c.unresolved().is_empty());
    // Health and recomputation leave adopted tables alone until a configuration arrives.
    assert!(!c.apply_health().unwrap());
    assert_eq!(c.dataplane().maps.contents(), pinned.contents());

    // A first configuration that fails at its first write: the adopted tables stay.
    let mut target = first.desired();
    target.timeouts.tcp = 123;
    let mut more = target.clone();
    more.config
        .apply_all(&parse_rules("-A -t 203.0.113.9:80").unwrap())
        .unwrap();
    c.dataplane_mut().maps.fail_write(0);
    refused(send(
        &mut c,
        Command::ApplyConfig {
            state: more,
            dry_run: false,
        },
        None,
    ));
    assert!(c.dataplane().adoption_pending());
    assert_eq!(c.dataplane().maps.contents(), pinned.contents());

    // The same configuration, now through: ids kept, so connections and counters are too.
    ok(send(
        &mut c,
        Command::ApplyConfig {
            state: target,
            dry_run: false,
        },
        None,
    ));
    assert!(!c.dataplane().adoption_pending());
    assert_eq!(c.dataplane().service_id(&web), Some(service));
    assert_eq!(c.dataplane().backend_id(&web, real), Some(backend));
    // The same configuration as the previous controller's: the maps are exactly as it left them.
    assert_eq!(c.dataplane().maps.contents(), pinned.contents());
}

#[tokio::test]
async fn a_real_server_whose_check_fails_leaves_the_table_and_returns() {
    // MISC checks (keepalived's MISC_CHECK): each server is up while its file exists.
    let scratch = Scratch::new("health");
    let flag = |n: u8| scratch.0.join(format!("up-{n}"));
    std::fs::write(flag(1), "").unwrap();
    std::fs::write(flag(2), "").unwrap();
    let real = |n: u8| {
        format!(
            "-a -t 203.0.113.1:80 -r 10.0.0.{n}:80 -i --check misc --check-command 'test -e {}' \
             --check-interval 100ms --check-timeout 1s --check-retry 0 --check-rise 1\n",
            flag(n).display()
        )
    };
    let mut c = controller();
    ok(rules(
        &mut c,
        &format!("-A -t 203.0.113.1:80 -s rr\n{}{}", real(1), real(2)),
    ));
    let web = tcp("203.0.113.1:80");
    let (one, two): (SocketAddr, SocketAddr) = (
        "10.0.0.1:80".parse().unwrap(),
        "10.0.0.2:80".parse().unwrap(),
    );
    let kept = c.dataplane().backend_id(&web, one).unwrap();
    assert!(c.dataplane().backend_id(&web, two).is_some());
    let changed = c.health_changed();
    // Polls (with a deadline) until the data plane has server two in its table or not.
    async fn until(c: &mut Ctl, changed: &tokio::sync::Notify, in_table: bool) {
        let web = tcp("203.0.113.1:80");
        let two: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while c.dataplane().backend_id(&web, two).is_some() != in_table {
            assert!(
                tokio::time::Instant::now() < deadline,
                "server two is still {} the table",
                if in_table { "out of" } else { "in" }
            );
            let _ = tokio::time::timeout(Duration::from_millis(200), changed.notified()).await;
            c.apply_health().unwrap();
        }
    }
    std::fs::remove_file(flag(2)).unwrap();
    until(&mut c, &changed, false).await;
    let table = c.dataplane().placement().table(&web).unwrap().to_vec();
    assert!(table.iter().all(|&b| b == kept), "{table:?}");
    let l = listing(&mut c);
    let health = |l: &crate::proto::Listing, i: usize| l.services[0].reals[i].health.clone();
    assert_eq!(
        health(&l, 1).unwrap().state,
        crate::health::HealthState::Down
    );
    assert_eq!(health(&l, 0).unwrap().state, crate::health::HealthState::Up);
    // The configuration is as configured: health changes the tables, not the rules.
    assert_eq!(c.config().services()[0].reals.len(), 2);
    // Server one kept its slot (its connections and counters) through the change.
    assert_eq!(c.dataplane().backend_id(&web, one), Some(kept));

    std::fs::write(flag(2), "").unwrap();
    until(&mut c, &changed, true).await;
    assert_eq!(
        health(&listing(&mut c), 1).unwrap().state,
        crate::health::HealthState::Up
    );
}

#[test]
fn a_state_file_round_trips_through_a_new_controller() {
    // What xvsd does at start: the saved state is the first configuration.
    let scratch = Scratch::new("restart");
    let state = StateFile::for_iface(&scratch.0, "eth0");
    let mut c = controller().with_state(state.clone());
    ok(rules(&mut c, TWO_SERVICES));
    ok(send(
        &mut c,
        Command::SetTimeouts {
            tcp: Some(600),
            tcpfin: None,
            udp: None,
        },
        None,
    ));
    let saved: DesiredState = state.load().unwrap().unwrap();
    let mut again = controller().with_state(state.clone());
    let (d, _) = again.apply_desired(&saved, false).unwrap();
    assert_eq!(d.lines.len(), 6, "{:?}", d.lines);
    assert_eq!(again.desired(), c.desired());
}

#[test]
fn configs_nat_flag_follows_nat_real_servers_and_keeps_the_other_flags() {
    use lb_common::config_flags;
    let mut c = controller();
    let multipath = config_flags::GUE_ROUTE_PER_FLOW4;
    c.dataplane_mut().config.flags = multipath;
    let mut c = Controller::new(std::mem::take(c.dataplane_mut()), "eth0");
    ok(rules(&mut c, TWO_SERVICES));
    assert_eq!(c.dataplane().config.flags, multipath, "no NAT server yet");
    ok(rules(&mut c, "-a -t 203.0.113.1:80 -r 10.0.0.9:8080 -m"));
    assert_eq!(
        c.dataplane().config.flags,
        multipath | config_flags::NAT,
        "a NAT server: replies are looked for"
    );
    let web = tcp("203.0.113.1:80");
    let nat = c
        .dataplane()
        .backend_id(&web, "10.0.0.9:8080".parse().unwrap())
        .expect("in the table without a MAC (routed by the FIB)");
    assert_eq!(
        c.dataplane().maps.backend(nat).unwrap().fwd,
        lb_common::fwd::NAT
    );
    // NAT real servers are poked like tunnelled ones, so the FIB knows their neighbour.
    assert!(c.routed_reals().contains(&"10.0.0.9".parse().unwrap()));
    assert!(!c.unresolved().contains(&"10.0.0.9".parse().unwrap()));
    ok(rules(&mut c, "-d -t 203.0.113.1:80 -r 10.0.0.9:8080"));
    assert_eq!(
        c.dataplane().config.flags,
        multipath,
        "the last NAT server gone"
    );
}

#[test]
fn fullnat_refusals_are_reported_once_each_with_the_service_and_its_pool() {
    let mut c = controller();
    ok(rules(
        &mut c,
        "-A -t 203.0.113.1:80 -s rr\n\
         -P -t 203.0.113.1:80 -z 10.0.9.1 --laddr-ports 2000-2003\n\
         -a -t 203.0.113.1:80 -r 10.0.0.2:8080 -b\n",
    ));
    let web = tcp("203.0.113.1:80");
    let id = c.dataplane().service_id(&web).unwrap();
    // The local address is in the listing (-G) and placed in the data plane's slot 0.
    let l = listing(&mut c);
    assert_eq!(l.services[0].laddrs.len(), 1);
    assert_eq!(
        c.dataplane().local_addr(id, 0),
        Some("10.0.9.1".parse().unwrap())
    );
    assert!(c.fullnat_refusals().unwrap().is_empty());
    c.dataplane_mut().fullnat_exhausted.insert(id, 3);
    let r = c.fullnat_refusals().unwrap();
    assert_eq!(r.len(), 1);
    // Also in the listing, per service (the metric xvs_service_fullnat_refused_total).
    assert_eq!(listing(&mut c).services[0].fullnat_refused, 3);
    assert_eq!((r[0].service, r[0].refused), (web, 3));
    assert_eq!(r[0].pool, "10.0.9.1 ports 2000-2003");
    // Reported once; only what is new next time.
    assert!(c.fullnat_refusals().unwrap().is_empty());
    c.dataplane_mut().fullnat_exhausted.insert(id, 5);
    assert_eq!(c.fullnat_refusals().unwrap()[0].refused, 2);
}

#[test]
fn table_pressure_is_listed_per_service_and_warned_about_once_per_interval() {
    use std::time::Duration;
    let mut c = controller();
    ok(rules(
        &mut c,
        "-A -t 203.0.113.1:80 -s rr\n-a -t 203.0.113.1:80 -r 10.0.0.2:80 -g\n",
    ));
    let id = c.dataplane().service_id(&tcp("203.0.113.1:80")).unwrap();
    // A quiet start: no warning.
    assert_eq!(c.pressure(Duration::from_secs(0)).unwrap(), None);
    // Two seconds later: 8,000 new entries, 40 mid-flow misses, the table 95% live.
    let d = c.dataplane_mut();
    d.reasons[Reason::ConnNew as usize] = 8_000;
    d.reasons[Reason::ConnMidflowMiss as usize] = 40;
    d.midflow_misses.insert(id, 40);
    d.table = crate::dataplane::TableFill {
        entries: 4096,
        live: 3900,
        walks: 1,
    };
    let w = c
        .pressure(Duration::from_secs(2))
        .unwrap()
        .expect("a warning");
    assert_eq!(
        (w.fill_percent, w.new_per_s, w.midflow_miss_per_s),
        (95, 4_000, 20)
    );
    // Still pressed: no second warning within the interval.
    assert_eq!(c.pressure(Duration::from_secs(4)).unwrap(), None);
    // In the listing (-L --json, metrics): the table and the service's misses.
    let l = listing(&mut c);
    assert_eq!(l.services[0].midflow_misses, 40);
    assert_eq!((l.table.entries, l.table.live), (4096, 3900));
    assert_eq!(l.table.midflow_misses, 40);
    // -Z zeroes the service's misses as its other counters.
    ok(send(&mut c, Command::Zero { service: None }, None));
    assert_eq!(listing(&mut c).services[0].midflow_misses, 0);
}

#[test]
fn the_first_interface_names_the_director_and_none_is_given_twice() {
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let one = names(&["eth0"]);
    assert_eq!(super::split_interfaces(&one).unwrap(), ("eth0", &[][..]));
    let two = names(&["eth0", "eth1"]);
    let (first, more) = super::split_interfaces(&two).unwrap();
    assert_eq!((first, more), ("eth0", &two[1..]));
    assert!(super::split_interfaces(&[]).is_err());
    let twice = names(&["eth0", "eth1", "eth0"]);
    let err = super::split_interfaces(&twice).unwrap_err().to_string();
    assert!(err.contains("--iface eth0 is given twice"), "{err}");
}

/// Issue 18: two directors behind ECMP, given the same servers in different orders, and with
/// different backend slot ids (the first director had another service's servers placed first),
/// show the same table digest for every hash-scheduled service, in `-L --json` and the metrics.
#[test]
fn directors_configured_in_other_orders_show_the_same_table_digests() {
    let services = |order: &[usize]| -> String {
        let reals = [
            ("10.0.1.1:80", 1),
            ("10.0.1.2:80", 2),
            ("10.0.1.3:8080", 3),
            ("10.0.1.4:80", 1),
        ];
        let mut text = String::new();
        for (vip, sched) in [
            ("203.0.113.1:80", "mh"),
            ("203.0.113.2:80", "mh -b mh-port,mh-fallback"),
            ("203.0.113.3:80", "sh -b sh-fallback"),
            ("203.0.113.4:80", "dh"),
            ("203.0.113.5:80", "wlc"),
        ] {
            text += &format!("-A -t {vip} -s {sched}\n");
            for &i in order {
                let (addr, w) = reals[i];
                text += &format!("-a -t {vip} -r {addr} -g -w {w}\n");
            }
        }
        text
    };
    let mut a = controller();
    // Another service first: its servers take the first backend slots on this director only.
    ok(rules(
        &mut a,
        "-A -t 198.51.100.1:80 -s rr\n-a -t 198.51.100.1:80 -r 10.0.9.1:80 -g\n\
         -a -t 198.51.100.1:80 -r 10.0.9.2:80 -g\n",
    ));
    resolve(&mut a);
    ok(rules(&mut a, &services(&[0, 1, 2, 3])));
    resolve(&mut a);
    let mut b = controller();
    ok(rules(&mut b, &services(&[3, 1, 0, 2])));
    resolve(&mut b);

    let mh = tcp("203.0.113.1:80");
    let ids = |c: &Ctl| -> Vec<Option<u32>> {
        ["10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:8080", "10.0.1.4:80"]
            .iter()
            .map(|r| c.dataplane().backend_id(&mh, r.parse().unwrap()))
            .collect()
    };
    assert_ne!(
        ids(&a),
        ids(&b),
        "the directors must have given the servers different slot ids"
    );
    assert_ne!(
        a.dataplane().placement().table(&mh),
        b.dataplane().placement().table(&mh),
        "so their tables of slot ids differ"
    );
    let digests = |c: &mut Ctl| -> Vec<(ServiceKey, Option<String>)> {
        listing(c)
            .services
            .iter()
            .filter(|s| s.key != tcp("198.51.100.1:80"))
            .map(|s| (s.key, s.table_digest.map(|d| d.to_string())))
            .collect()
    };
    let (da, db) = (digests(&mut a), digests(&mut b));
    assert_eq!(da, db);
    assert_eq!(da.len(), 5);
    // mh, mh-port, sh, dh have one (and no two are alike); wlc has none.
    for (key, d) in &da[..4] {
        let d = d.as_ref().unwrap_or_else(|| panic!("{key}: no digest"));
        assert_eq!(d.len(), 16, "{d}");
    }
    let mut distinct: Vec<_> = da[..4].iter().map(|(_, d)| d.clone()).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 4);
    assert_eq!(da[4].1, None);

    // In -L --json, as xvsadm prints the listing.
    let json = serde_json::to_string_pretty(&listing(&mut a)).unwrap();
    let line = format!(r#""table_digest": "{}""#, da[0].1.as_ref().unwrap());
    assert!(json.contains(&line), "{json}");
    assert!(json.contains(r#""table_digest": null"#), "{json}");
    // And in the metrics.
    let l = listing(&mut b);
    let text = crate::metrics::render(&crate::metrics::Snapshot {
        listing: &l,
        activity: Default::default(),
        start: "fresh",
        adoption_pending: false,
        uptime: Duration::from_secs(1),
    });
    let sample = format!(
        "xvs_service_table_info{{service=\"TCP 203.0.113.1:80\",scheduler=\"mh\",digest=\"{}\"}} 1",
        da[0].1.as_ref().unwrap()
    );
    assert!(
        text.lines().any(|l| l == sample),
        "{sample} missing:\n{text}"
    );
    assert!(!text.contains("service=\"TCP 203.0.113.5:80\",scheduler=\"wlc\""));

    // A weight changed on one director: its digests differ, for mh and sh (dh ignores
    // weights, as IPVS's does); set back, they agree again.
    for w in [5, 1] {
        for vip in ["203.0.113.1:80", "203.0.113.3:80", "203.0.113.4:80"] {
            ok(rules(
                &mut b,
                &format!("-e -t {vip} -r 10.0.1.4:80 -g -w {w}"),
            ));
        }
        let db = digests(&mut b);
        assert_eq!(da[0] == db[0], w == 1);
        assert_eq!(da[2] == db[2], w == 1);
        assert_eq!(da[3], db[3]);
    }
    assert_eq!(digests(&mut b), da);
    // A server replaced: the backend slot may be reused, the digest still moves.
    ok(rules(
        &mut b,
        "-d -t 203.0.113.1:80 -r 10.0.1.4:80\n-a -t 203.0.113.1:80 -r 10.0.1.5:80 -g -w 1\n",
    ));
    resolve(&mut b);
    assert_ne!(digests(&mut b)[0], da[0]);

    // A director that adopts the first one's pinned maps (an xvsd restarted in place): the
    // maps name no scheduler, so there is no digest until the configuration arrives; then the
    // same one, its tables taken over with their ids.
    let adopted =
        MemoryDataplane::adopt(a.dataplane().maps.clone(), DataplaneConfig::default()).unwrap();
    assert_eq!(adopted.table_digest(&mh), None);
    let mut c = Controller::new(adopted, "eth0");
    ok(send(
        &mut c,
        Command::ApplyConfig {
            state: a.desired(),
            dry_run: false,
        },
        None,
    ));
    resolve(&mut c);
    assert_eq!(digests(&mut c), da);
}

#[test]
fn sync_daemons_start_stop_list_and_survive_a_restart_through_the_state_file() {
    use crate::sync::{daemon::DaemonConfig, Role};
    use lb_common::config_flags::SYNC_MASTER;
    let scratch = Scratch::new("syncd");
    let state = StateFile::for_iface(&scratch.0, "eth0");
    let mut c = controller().with_state(state.clone());
    // "lo" exists in every namespace the tests run in.
    let master = DaemonConfig {
        mcast_ifn: "lo".into(),
        syncid: 5,
        ..DaemonConfig::new(Role::Master)
    };
    ok(send(
        &mut c,
        Command::StartDaemon {
            daemon: master.clone(),
        },
        None,
    ));
    assert_ne!(
        c.dataplane().current_config().unwrap().flags & SYNC_MASTER,
        0
    );
    assert_eq!(
        refused(send(
            &mut c,
            Command::StartDaemon {
                daemon: master.clone()
            },
            None
        )),
        "Daemon has already run"
    );
    // A backup beside it, as IPVS allows.
    let backup = DaemonConfig {
        mcast_ifn: "lo".into(),
        ..DaemonConfig::new(Role::Backup)
    };
    ok(send(
        &mut c,
        Command::StartDaemon {
            daemon: backup.clone(),
        },
        None,
    ));
    let text = crate::sync::daemon::render_daemons(&listing(&mut c).sync_daemons);
    assert!(
        text.starts_with("master sync daemon (mcast=lo, syncid=5, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)\nbackup sync daemon (mcast=lo, syncid=0, maxlen="),
        "{text}"
    );
    // Missing interface: the kernel's ENODEV.
    let mut c2 = controller();
    let e = refused(send(
        &mut c2,
        Command::StartDaemon {
            daemon: DaemonConfig {
                mcast_ifn: "xvs-none0".into(),
                ..DaemonConfig::new(Role::Master)
            },
        },
        None,
    ));
    assert!(e.contains("No such device"), "{e}");
    // Saved: a new controller resumes both.
    let saved = state.load_all().unwrap().unwrap().sync_daemons;
    assert_eq!(saved.master, Some(master));
    assert_eq!(saved.backup, Some(backup));
    ok(send(
        &mut c,
        Command::StopDaemon { role: Role::Master },
        None,
    ));
    assert_eq!(
        c.dataplane().current_config().unwrap().flags & SYNC_MASTER,
        0
    );
    assert_eq!(
        refused(send(
            &mut c,
            Command::StopDaemon { role: Role::Master },
            None
        )),
        "No daemon is running"
    );
    let saved = state.load_all().unwrap().unwrap().sync_daemons;
    assert!(saved.master.is_none() && saved.backup.is_some());
}

#[test]
fn a_synced_connection_is_installed_on_the_same_real_server_and_described_back_alike() {
    use crate::sync::{Addrs, ConnFlags, ConnState as Wire, Forward, Ports, SyncConn, TcpState};
    let mut c = controller();
    ok(rules(
        &mut c,
        "-A -t 192.0.2.10:80 -s rr\n-a -t 192.0.2.10:80 -r 198.51.100.11 -g\n-a -t 192.0.2.10:80 -r 198.51.100.12 -g\n-A -t 192.0.2.20:80 -s rr\n-a -t 192.0.2.20:80 -r 198.51.100.13 -m",
    ));
    let conn = |vip: &str, real: &str| SyncConn {
        protocol: 6,
        flags: ConnFlags::new(Forward::DirectRoute),
        state: Wire::Tcp(TcpState::Established),
        addrs: Addrs::V4 {
            client: "203.0.113.7".parse().unwrap(),
            virt: vip.parse().unwrap(),
            dest: real.parse().unwrap(),
        },
        ports: Ports {
            client: 40000,
            virt: 80,
            dest: 80,
        },
        fwmark: 0,
        timeout_secs: 900,
        seq: None,
        pe: None,
        local: None,
    };
    let done = c.install_synced(&[
        conn("192.0.2.10", "198.51.100.12"),
        conn("192.0.2.99", "198.51.100.12"),
        conn("192.0.2.10", "198.51.100.99"),
        conn("192.0.2.20", "198.51.100.13"),
    ]);
    // The NAT one too (198.51.100.13 is reached by NAT here): with its way back.
    assert_eq!(done.installed, 2);
    assert_eq!(
        done.skipped,
        [("unknown_real", 1), ("unknown_service", 1)].into()
    );
    let conns = match ok(send(&mut c, Command::Connections, None)).response {
        Response::Connections { conns } => conns,
        other => panic!("{other:?}"),
    };
    assert_eq!(conns.len(), 2, "{conns:?}");
    assert_eq!(conns[0].real, "198.51.100.12:80".parse().unwrap());
    assert_eq!(conns[0].state, "ESTABLISHED");
    assert_eq!(
        c.dataplane().nat_replies.len(),
        1,
        "only the NAT one's way back"
    );
    // The master's side of the same entry: its report names the same real server.
    let info = c.dataplane().connections(10).unwrap()[0];
    let ev = lb_common::SyncEvent {
        key: info.key,
        backend: info.entry.backend,
        generation: info.entry.generation,
        service: info.entry.service,
        state: info.entry.state,
        kind: lb_common::sync_event::NEW,
        _pad: [0; 2],
    };
    assert_eq!(
        c.describe_sync_events(&[ev]),
        vec![conn("192.0.2.10", "198.51.100.12")]
    );
}

#[test]
fn a_persistent_services_template_is_sent_with_its_connection_and_installed_by_a_backup() {
    use crate::sync::{Addrs, ConnFlags, ConnState as Wire, Forward, Ports, SyncConn, TcpState};
    let mut master = controller();
    let mut backup = controller();
    let rules_text = "-A -t 192.0.2.10:80 -s rr -p 600 -M 255.255.255.0\n-a -t 192.0.2.10:80 -r 198.51.100.11 -g\n-a -t 192.0.2.10:80 -r 198.51.100.12 -g";
    ok(rules(&mut master, rules_text));
    ok(rules(&mut backup, rules_text));
    let conn = SyncConn {
        protocol: 6,
        flags: ConnFlags::new(Forward::DirectRoute),
        state: Wire::Tcp(TcpState::Established),
        addrs: Addrs::V4 {
            client: "203.0.113.7".parse().unwrap(),
            virt: "192.0.2.10".parse().unwrap(),
            dest: "198.51.100.12".parse().unwrap(),
        },
        ports: Ports {
            client: 40000,
            virt: 80,
            dest: 80,
        },
        fwmark: 0,
        timeout_secs: 900,
        seq: None,
        pe: None,
        local: None,
    };
    // The master's report of the connection (as its table has it, installed here for the
    // test) is sent with the service's template.
    master.install_synced(std::slice::from_ref(&conn));
    let info = master.dataplane().connections(10).unwrap()[0];
    let sent = master.describe_sync_events(&[lb_common::SyncEvent {
        key: info.key,
        backend: info.entry.backend,
        generation: info.entry.generation,
        service: info.entry.service,
        state: info.entry.state,
        kind: lb_common::sync_event::NEW,
        _pad: [0; 2],
    }]);
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent[1].is_template());
    // A peer that asks for the whole table gets the same entries.
    assert_eq!(master.sync_table(), sent);
    // Without a backup daemon this director receives no table.
    match ok(send(
        &mut master,
        Command::SyncedTable { request: false },
        None,
    ))
    .response
    {
        Response::SyncedTable { table } => {
            assert_eq!(table, crate::sync::table::TableStatus::NoBackup);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        sent[1].addrs.client(),
        "203.0.113.0".parse::<IpAddr>().unwrap()
    );
    assert_eq!(sent[1].timeout_secs, 600);
    // The backup installs both: the template lists as IPVS's (state NONE, client port 0).
    let done = backup.install_synced(&sent);
    assert_eq!(done.installed, 2, "{done:?}");
    let conns = match ok(send(&mut backup, Command::Connections, None)).response {
        Response::Connections { conns } => conns,
        other => panic!("{other:?}"),
    };
    let template = conns
        .iter()
        .find(|c| c.state == "NONE")
        .expect("a template");
    assert_eq!(template.client, "203.0.113.0:0".parse().unwrap());
    assert_eq!(template.real, "198.51.100.12:80".parse().unwrap());
}

#[test]
fn nat_and_fullnat_connections_are_sent_with_their_way_back_and_installed_with_it() {
    use crate::sync::{Addrs, ConnFlags, ConnState as Wire, Forward, Ports, SyncConn, TcpState};
    // The same services on both; the backup's pool has the master's local address in another
    // slot (added in another order).
    let mut master = controller();
    let mut backup = controller();
    ok(rules(
        &mut master,
        "-A -t 192.0.2.20:80 -s rr\n-a -t 192.0.2.20:80 -r 10.0.0.13:8080 -m\n\
         -A -t 192.0.2.30:80 -s rr\n-P -t 192.0.2.30:80 -z 10.0.9.1\n\
         -a -t 192.0.2.30:80 -r 10.0.0.14:80 -b",
    ));
    ok(rules(
        &mut backup,
        "-A -t 192.0.2.20:80 -s rr\n-a -t 192.0.2.20:80 -r 10.0.0.13:8080 -m\n\
         -A -t 192.0.2.30:80 -s rr\n-P -t 192.0.2.30:80 -z 10.0.9.2\n\
         -P -t 192.0.2.30:80 -z 10.0.9.1\n-a -t 192.0.2.30:80 -r 10.0.0.14:80 -b",
    ));
    let conn = |vip: &str, real: &str, port: u16, forward, local: Option<&str>| SyncConn {
        protocol: 6,
        flags: ConnFlags::new(forward),
        state: Wire::Tcp(TcpState::Established),
        addrs: Addrs::V4 {
            client: "203.0.113.7".parse().unwrap(),
            virt: vip.parse().unwrap(),
            dest: real.parse().unwrap(),
        },
        ports: Ports {
            client: 40000,
            virt: 80,
            dest: port,
        },
        fwmark: 0,
        timeout_secs: 900,
        seq: None,
        pe: None,
        local: local.map(|l| l.parse().unwrap()),
    };
    let nat = conn("192.0.2.20", "10.0.0.13", 8080, Forward::Masq, None);
    let fnat = conn(
        "192.0.2.30",
        "10.0.0.14",
        80,
        Forward::FullNat,
        Some("10.0.9.1:61000"),
    );
    // The master's table (installed here for the test) is described as it was sent.
    let done = master.install_synced(&[nat.clone(), fnat.clone()]);
    assert_eq!(done.installed, 2, "{done:?}");
    let fnat_entry = master
        .dataplane()
        .conns
        .iter()
        .find(|c| c.key == crate::sync::installer::flow_key(&fnat))
        .unwrap()
        .entry;
    assert_eq!(
        (fnat_entry.local, u16::from_be(fnat_entry.lport_be)),
        (0, 61000)
    );
    let sent = master.sync_table();
    assert_eq!(sent, vec![nat.clone(), fnat.clone()]);
    // The ring's reports name the same: FULLNAT's local address looked up in the table.
    let events: Vec<lb_common::SyncEvent> = master
        .dataplane()
        .conns
        .iter()
        .map(|i| lb_common::SyncEvent {
            key: i.key,
            backend: i.entry.backend,
            generation: i.entry.generation,
            service: i.entry.service,
            state: i.entry.state,
            kind: lb_common::sync_event::STATE,
            _pad: [0; 2],
        })
        .collect();
    assert_eq!(master.describe_sync_events(&events), sent);
    // The backup installs both with their ways back: FULLNAT's local address in its own slot 1.
    let done = backup.install_synced(&sent);
    assert_eq!(done.installed, 2, "{done:?}");
    let dp = backup.dataplane();
    let e = dp
        .conns
        .iter()
        .find(|c| c.key == crate::sync::installer::flow_key(&fnat))
        .unwrap()
        .entry;
    assert_eq!((e.local, u16::from_be(e.lport_be)), (1, 61000));
    assert_eq!(dp.nat_replies.len(), 2);
    for (k, r) in &dp.nat_replies {
        let conn = crate::dataplane::conn_of_reply(k, r);
        assert!(dp
            .conns
            .iter()
            .any(|c| c.key == conn && c.entry.backend == r.backend));
    }
    // Sent again (a refresh): still two, nothing skipped.
    let done = backup.install_synced(&sent);
    assert_eq!((done.installed, done.skipped.len()), (2, 0));
    // A FULLNAT connection whose local address the backup's pool lacks, and one whose local
    // port is another connection's way back here: skipped, counted.
    let stranger = conn(
        "192.0.2.30",
        "10.0.0.14",
        80,
        Forward::FullNat,
        Some("10.0.9.9:61000"),
    );
    let clash = SyncConn {
        ports: Ports {
            client: 40001,
            ..fnat.ports
        },
        ..fnat.clone()
    };
    let done = backup.install_synced(&[stranger, clash]);
    assert_eq!(done.installed, 0);
    assert_eq!(
        done.skipped,
        [("reply_taken", 1), ("unknown_local", 1)].into()
    );
}
