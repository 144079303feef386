//! Adoption at the data-plane level: the director pinned on a veth in a throwaway namespace,
//! dropped (as when xvsd exits) and started again, with crafted packets through the adopted
//! program (BPF_PROG_TEST_RUN). Checks which ids, slots and generations the first sync keeps
//! and frees, the layout refusal, --force-reload and cleanup. Root required.

use std::{collections::HashMap, net::IpAddr, path::PathBuf};

use aya::programs::{TestRun, TestRunOptions};
use lb_user::{
    dataplane::{
        adopt::{PinnedStart, Start},
        pin, AttachMode, Dataplane, DataplaneError, Sizes,
    },
    model::{Change, Config, Protocol, RealServer, Scheduler, ServiceKey, VirtualAddr},
};
use xvs_tests::{
    netns,
    packets::{tcp, ACK, SYN},
    progtest::{pin_to_cpu0, verdict},
};

const NS: &str = "xvspn-adopt";
const MACS: [(&str, [u8; 6]); 6] = [
    ("198.51.100.11", [2, 0, 0, 0, 0, 0x11]),
    ("198.51.100.12", [2, 0, 0, 0, 0, 0x12]),
    ("198.51.100.13", [2, 0, 0, 0, 0, 0x13]),
    ("198.51.100.14", [2, 0, 0, 0, 0, 0x14]),
    ("198.51.100.15", [2, 0, 0, 0, 0, 0x15]),
    ("198.51.100.16", [2, 0, 0, 0, 0, 0x16]),
];

/// The namespace and the bpffs instance, removed on drop.
struct Env {
    bpffs: PathBuf,
}

impl Env {
    fn new() -> Env {
        xvs_tests::require_root();
        let bpffs = std::env::temp_dir().join("xvspn-adopt-bpf");
        netns::destroy(NS);
        netns::unmount_all(&bpffs);
        std::fs::create_dir_all(&bpffs).unwrap();
        netns::mount_bpffs(&bpffs).unwrap();
        netns::create(NS).unwrap();
        netns::ip(&[
            "-n", NS, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
        ])
        .unwrap();
        netns::ip(&["-n", NS, "link", "set", "eth0", "up"]).unwrap();
        netns::ip(&["-n", NS, "link", "set", "eth1", "up"]).unwrap();
        Env { bpffs }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        netns::destroy(NS);
        netns::unmount_all(&self.bpffs);
        let _ = std::fs::remove_dir(&self.bpffs);
    }
}

fn svc(addr: &str) -> ServiceKey {
    ServiceKey::new(Protocol::Tcp, addr.parse().unwrap())
}

fn real(service: ServiceKey, addr: &str) -> Change {
    Change::AddReal {
        service,
        real: RealServer::dr(addr.parse().unwrap(), 1),
    }
}

fn group(matches: &[&str]) -> Vec<Change> {
    let g = ServiceKey::fwmark(1, false);
    vec![
        Change::add_service(g, Scheduler::Rr),
        Change::SetMatches {
            key: g,
            matches: matches.iter().map(|m| m.parse().unwrap()).collect(),
        },
        real(g, "198.51.100.14:0"),
    ]
}

fn config(changes: &[Change]) -> Config {
    let mut c = Config::default();
    c.apply_all(changes).unwrap();
    c
}

fn macs() -> HashMap<IpAddr, [u8; 6]> {
    MACS.iter()
        .map(|(ip, m)| (ip.parse().unwrap(), *m))
        .collect()
}

fn start(
    dir: &std::path::Path,
    conns: u32,
    force_reload: bool,
) -> Result<(Dataplane, Start), DataplaneError> {
    // if_nametoindex asks this thread's network namespace (/sys would be the host's).
    let name = std::ffi::CString::new("eth0").unwrap();
    // SAFETY: valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(ifindex, 0, "eth0 not found");
    Dataplane::start_pinned(&PinnedStart {
        iface: "eth0".into(),
        ifindex,
        more_ifaces: Vec::new(),
        mode: AttachMode::Generic,
        sizes: Sizes {
            conns,
            sched_slots: 1 << 18,
            nat_replies: None,
        },
        dir: dir.to_path_buf(),
        force_reload,
        kernel_log: Default::default(),
    })
}

/// The MAC a packet was sent to (it must be forwarded).
fn dest(dp: &mut Dataplane, pkt: &[u8]) -> [u8; 6] {
    let mut out = vec![0u8; pkt.len() + 512];
    let res = dp
        .program()
        .test_run(TestRunOptions {
            data_in: Some(pkt),
            data_out: Some(&mut out),
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    assert_eq!(res.return_value, verdict::TX, "not forwarded");
    out[0..6].try_into().unwrap()
}

fn published(dp: &Dataplane, m: &str) -> Option<u32> {
    let v: VirtualAddr = m.parse().unwrap();
    dp.published_value(&v).map(|v| v.id)
}

#[test]
fn the_first_sync_after_adoption_keeps_what_the_configuration_names_and_frees_the_rest() {
    let env = Env::new();
    let dir = env.bpffs.join("eth0");
    netns::in_netns(NS, move || {
        pin_to_cpu0();
        let (s1, s2, s3) = (
            svc("203.0.113.10:80"),
            svc("203.0.113.20:80"),
            svc("203.0.113.40:80"),
        );
        let g = ServiceKey::fwmark(1, false);
        let mut a = vec![
            Change::add_service(s1, Scheduler::Rr),
            real(s1, "198.51.100.11:80"),
            real(s1, "198.51.100.12:80"),
            Change::add_service(s2, Scheduler::Rr),
            real(s2, "198.51.100.13:80"),
        ];
        a.extend(group(&["tcp:203.0.113.30:80", "tcp:203.0.113.30:443"]));
        let a = config(&a);

        let (mut dp, how) = start(&dir, 65536, false).unwrap();
        assert_eq!(how, Start::Fresh);
        dp.sync(&a, &macs()).unwrap();
        let flow = tcp("192.0.2.1", 1000, "203.0.113.10", 80, SYN);
        let first = dest(&mut dp, &flow);
        assert_eq!(first, MACS[0].1, "rr starts with the first server");
        let r1 = dp
            .backend_id(&s1, "198.51.100.11:80".parse().unwrap())
            .unwrap();
        let r2 = dp
            .backend_id(&s1, "198.51.100.12:80".parse().unwrap())
            .unwrap();
        let r3 = dp
            .backend_id(&s2, "198.51.100.13:80".parse().unwrap())
            .unwrap();
        let generation = |dp: &Dataplane, id| dp.backend_entry(id).unwrap().generation;
        let (r1_gen, r2_gen, r3_gen) = (
            generation(&dp, r1),
            generation(&dp, r2),
            generation(&dp, r3),
        );
        let ids = (dp.service_id(&s1).unwrap(), dp.service_id(&g).unwrap());
        let conns_before = dp.service_counters(&s1).unwrap().conns;
        let max_gen = [r1, r2, r3]
            .iter()
            .map(|&id| dp.backend_entry(id).unwrap().generation)
            .max()
            .unwrap();
        drop(dp); // as xvsd exiting: the pins keep everything

        let (mut dp, how) = start(&dir, 65536, false).unwrap();
        assert!(
            matches!(
                how,
                Start::Adopted {
                    services: 3,
                    backends: 4,
                    ..
                }
            ),
            "{how:?}"
        );
        assert!(dp.adoption_pending());
        assert_eq!(dp.inherited_macs(), {
            let mut m = macs();
            m.retain(|ip, _| {
                ip.to_string() != "198.51.100.15" && ip.to_string() != "198.51.100.16"
            });
            m
        });
        // Untouched until the first sync: the flow stays, new flows are still balanced.
        let ack = tcp("192.0.2.1", 1000, "203.0.113.10", 80, ACK);
        assert_eq!(dest(&mut dp, &ack), first);
        dest(&mut dp, &tcp("192.0.2.2", 1000, "203.0.113.10", 80, SYN));
        assert_eq!(
            published(&dp, "tcp:203.0.113.20:80"),
            Some(dp.backend_entry(r3).unwrap().service)
        );

        // The configuration comes back changed: s1 loses 198.51.100.12 and gains .15, s2 is
        // gone, the group keeps only :80, s3 is new.
        let mut b = vec![
            Change::add_service(s1, Scheduler::Rr),
            real(s1, "198.51.100.11:80"),
            real(s1, "198.51.100.15:80"),
            Change::add_service(s3, Scheduler::Rr),
            real(s3, "198.51.100.16:80"),
        ];
        b.extend(group(&["tcp:203.0.113.30:80"]));
        dp.sync(&config(&b), &macs()).unwrap();
        assert!(!dp.adoption_pending());
        assert_eq!(
            (dp.service_id(&s1).unwrap(), dp.service_id(&g).unwrap()),
            ids
        );
        assert_eq!(
            dp.backend_id(&s1, "198.51.100.11:80".parse().unwrap()),
            Some(r1)
        );
        assert_eq!(dp.backend_entry(r1).unwrap().generation, r1_gen);
        assert_eq!(dest(&mut dp, &ack), first, "the flow moved");
        // Counters continued: the connections before and during the adoption are counted.
        assert!(dp.service_counters(&s1).unwrap().conns > conns_before);
        // Freed: the removed real server's and the removed service's slots (free, or reused
        // under a new generation, so entries bound to the old servers are recognised), and
        // their keys.
        for (id, old) in [(r2, r2_gen), (r3, r3_gen)] {
            let now = dp.backend_entry(id).unwrap().generation;
            assert!(
                now == 0 || now > max_gen,
                "slot {id}: generation {old} -> {now}"
            );
        }
        assert_eq!(published(&dp, "tcp:203.0.113.20:80"), None);
        assert_eq!(published(&dp, "tcp:203.0.113.30:443"), None);
        assert_eq!(published(&dp, "tcp:203.0.113.30:80"), Some(ids.1));
        // New slots get generations no earlier slot had.
        let r5 = dp
            .backend_id(&s1, "198.51.100.15:80".parse().unwrap())
            .unwrap();
        assert!(dp.backend_entry(r5).unwrap().generation > max_gen);
        assert!(published(&dp, "tcp:203.0.113.40:80").is_some());
        let dp_pins = dp.pin_dir().unwrap().to_path_buf();
        drop(dp);

        // Another capacity is another layout: refused, unless forced.
        let Err(e) = start(&dir, 4096, false) else {
            panic!("a different connection-table size was adopted")
        };
        let msg = e.to_string();
        assert!(
            msg.contains("map CONNS: entries 65536 pinned, 4096 wanted")
                && msg.contains("--force-reload"),
            "{msg}"
        );
        let (dp, how) = start(&dir, 4096, true).unwrap();
        assert!(matches!(how, Start::Reloaded { .. }), "{how:?}");
        assert_eq!(
            published(&dp, "tcp:203.0.113.10:80"),
            None,
            "state survived a reload"
        );
        drop(dp);

        let done = pin::cleanup(&dp_pins).unwrap();
        assert_eq!(done.detached, ["link"]);
        assert!(done.removed.iter().any(|n| n == "link"));
        assert!(done.removed.iter().any(|n| n == "CONNS"));
        assert!(!dp_pins.exists());
        let link =
            netns::run(std::process::Command::new("ip").args(["link", "show", "eth0"])).unwrap();
        assert!(
            !String::from_utf8_lossy(&link.stdout).contains("xdp"),
            "still attached after cleanup"
        );
    })
    .unwrap();
}
