//! Control-plane costs: applying many services through xvsadm, the daemon's memory, and the
//! kernel-reported memory of each map.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::{netns, xvsd::XvsdProcess};

/// A throwaway xvsd on a veth in its own namespace.
pub struct Daemon {
    ns: String,
    xvsd: XvsdProcess,
}

impl Daemon {
    /// Starts xvsd in namespace `xvs-bench-cp`.
    pub fn start(bin_dir: &Path) -> Result<Daemon> {
        let ns = "xvs-bench-cp".to_string();
        netns::destroy(&ns);
        netns::create(&ns)?;
        netns::ip(&[
            "-n", &ns, "link", "add", "d0", "type", "veth", "peer", "name", "d1",
        ])?;
        netns::ip(&["-n", &ns, "link", "set", "d0", "up"])?;
        netns::ip(&["-n", &ns, "link", "set", "d1", "up"])?;
        let socket = std::env::temp_dir().join("xvs-bench-cp.sock");
        // A fresh state directory: the daemon starts empty and saves every change there.
        let state = state_dir();
        let _ = std::fs::remove_dir_all(&state);
        let log = std::env::temp_dir().join("xvs-bench-cp.log");
        let _ = std::fs::remove_file(&log);
        let args = ["--iface", "d0", "--xdp-mode", "native", "--socket"]
            .map(String::from)
            .into_iter()
            .chain([
                socket.display().to_string(),
                "--state-dir".into(),
                state.display().to_string(),
            ])
            .collect();
        let mut d = Daemon {
            ns: ns.clone(),
            xvsd: XvsdProcess::new(&ns, bin_dir, &socket, &log, args),
        };
        d.xvsd.start(&[])?;
        Ok(d)
    }

    /// Runs xvsadm, optionally with standard input; fails on a non-zero exit.
    pub fn xvsadm(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        self.xvsd.xvsadm_ok_in(args, stdin)
    }

    /// xvsd's pid.
    pub fn pid(&self) -> u32 {
        self.xvsd.pid().expect("xvsd runs")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM: xvsd removes its socket (SIGKILL after 5 s).
        let _ = self.xvsd.stop_within(Duration::from_secs(5));
        netns::destroy(&self.ns);
        let _ = std::fs::remove_dir_all(state_dir());
        let _ = std::fs::remove_file(std::env::temp_dir().join("xvs-bench-cp.log"));
    }
}

fn state_dir() -> PathBuf {
    std::env::temp_dir().join("xvs-bench-cp-state")
}

/// `-A` rules for `n` services (no real servers, so nothing waits for address resolution).
pub fn rules(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "-A -t 203.0.{}.{}:{} -s rr\n",
                113,
                1 + i % 250,
                1 + i / 250
            )
        })
        .collect()
}

/// The same `n` services as `rules`, as a configuration file (`xvsadm apply -f`).
pub fn config_file(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "[[service]]\ntcp = \"203.0.113.{}:{}\"\nscheduler = \"rr\"\n\n",
                1 + i % 250,
                1 + i / 250
            )
        })
        .collect()
}

/// Wall time of a closure, ms.
pub fn time_ms(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

/// VmRSS of a process, KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

/// Memory of every BPF map a process holds: (name, max_entries, memlock bytes).
pub fn map_memory(pid: u32) -> Result<Vec<(String, u64, u64)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        let field = |k: &str| {
            text.lines()
                .find(|l| l.starts_with(k))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        };
        let (Some(id), Some(memlock), Some(max)) =
            (field("map_id:"), field("memlock:"), field("max_entries:"))
        else {
            continue;
        };
        let name = Command::new("bpftool")
            .args(["map", "show", "id", &id.to_string(), "--json"])
            .output()
            .ok()
            .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
            .and_then(|v| v["name"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("map {id}"));
        out.push((name, max, memlock));
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// What running many health checks at once cost.
#[derive(Clone, Debug)]
pub struct HealthBench {
    /// Checks running.
    pub checks: usize,
    /// Their interval.
    pub interval: Duration,
    /// How long they ran.
    pub wall: Duration,
    /// Attempts made, and how many failed.
    pub attempts: (u64, u64),
    /// Attempts the schedule asked for in that time.
    pub expected: u64,
    /// Latest start of an attempt after it was due.
    pub max_late: Duration,
    /// Bucket bound under which 99% of the starts were (None: above every bucket).
    pub p99_late: Option<f64>,
    /// Mean lateness.
    pub mean_late: Duration,
    /// CPU time of the checks (the listener's excluded), as a share of one core.
    pub cpu_share: f64,
}

/// CPU time (user + system) of this thread or of the process.
fn cpu_time(who: i32) -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above: `u` is a valid struct for getrusage to fill.
    unsafe { libc::getrusage(who, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Runs `n` TCP health checks every `interval` against one listener on loopback for `run_for`,
/// on a 2-worker tokio runtime as xvsd's, through xvsd's own checker (lb_user::health): how
/// late attempts start (drift), how many ran, and the CPU it took.
pub fn health_checks(n: usize, interval: Duration, run_for: Duration) -> Result<HealthBench> {
    use lb_user::{
        check::{Check, Probe},
        health::{CheckId, Checker},
        model::{Protocol, ServiceKey},
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let target = listener.local_addr()?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The listener accepts and closes on a thread of its own, which measures its own CPU.
    let accepter = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let before = cpu_time(libc::RUSAGE_THREAD);
            for s in listener.incoming() {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                drop(s);
            }
            cpu_time(libc::RUSAGE_THREAD) - before
        })
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let key = ServiceKey::new(Protocol::Tcp, "203.0.113.10:80".parse()?);
    let check = Check {
        probe: Probe::Tcp,
        target,
        interval,
        timeout: Duration::from_secs(1),
        retry: 1,
        retry_delay: Duration::from_secs(1),
        rise: 2,
        inhibit: false,
    };
    let cpu_before = cpu_time(libc::RUSAGE_SELF);
    let started = Instant::now();
    let checker = rt.block_on(async {
        let mut checker = Checker::new();
        checker.reconcile((0..n).map(|i| {
            (
                CheckId {
                    service: key,
                    real: std::net::SocketAddr::new(
                        std::net::Ipv4Addr::from(0xc633_6400u32 + i as u32).into(),
                        80,
                    ),
                },
                check.clone(),
            )
        }));
        tokio::time::sleep(run_for).await;
        checker
    });
    let wall = started.elapsed();
    let attempts = checker.attempts();
    let (max_late, late) = checker.lateness();
    drop(checker);
    let cpu = cpu_time(libc::RUSAGE_SELF) - cpu_before;
    drop(rt);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = std::net::TcpStream::connect(target);
    let listener_cpu = accepter
        .join()
        .map_err(|_| anyhow::anyhow!("listener panicked"))?;
    // One attempt per check and interval (the first ones spread over the first interval).
    let expected = (n as f64 * wall.as_secs_f64() / interval.as_secs_f64()) as u64;
    Ok(HealthBench {
        checks: n,
        interval,
        wall,
        attempts,
        expected,
        max_late,
        p99_late: late.quantile_bound(0.99),
        mean_late: Duration::from_secs_f64(late.sum_s / late.count.max(1) as f64),
        cpu_share: cpu.saturating_sub(listener_cpu).as_secs_f64() / wall.as_secs_f64(),
    })
}

/// What syncing many services in process cost, ms.
#[derive(Clone, Copy, Debug)]
pub struct SyncBulk {
    /// The first sync into empty maps.
    pub first: f64,
    /// Every real server's weight changed (every table rewritten).
    pub reweight: f64,
    /// Every service removed.
    pub clear: f64,
}

/// The configuration `sync_bulk` syncs: `services` wrr TCP services, each with `reals`
/// direct-routing real servers 198.51.100.1.. (weights 1..=reals, or reversed; at most 254),
/// and their MACs.
pub fn wrr_config(
    services: usize,
    reals: usize,
    reversed: bool,
) -> Result<(
    lb_user::model::Config,
    std::collections::HashMap<std::net::IpAddr, [u8; 6]>,
)> {
    use lb_user::model::{Change, Config, Protocol, RealServer, Scheduler, ServiceKey};
    let mut changes = Vec::with_capacity(services * (reals + 1));
    let mut macs = std::collections::HashMap::new();
    for s in 0..services {
        let key = ServiceKey::Addr {
            protocol: Protocol::Tcp,
            addr: std::net::SocketAddr::new(
                std::net::Ipv4Addr::new(203, 0, 113, 1 + (s % 250) as u8).into(),
                1 + (s / 250) as u16,
            ),
        };
        changes.push(Change::AddService {
            key,
            scheduler: Scheduler::Wrr,
            flags: Default::default(),
            persistence: None,
        });
        for r in 0..reals {
            // The same real servers behind every service, as a farm usually is.
            let ip = std::net::IpAddr::from(std::net::Ipv4Addr::new(198, 51, 100, 1 + r as u8));
            macs.insert(ip, [0x02, 0, 0, 0, 0, 1 + r as u8]);
            let weight = if reversed { reals - r } else { r + 1 } as u32;
            changes.push(Change::AddReal {
                service: key,
                real: RealServer::dr(std::net::SocketAddr::new(ip, 80), weight),
            });
        }
    }
    let mut config = Config::default();
    config.apply_all(&changes)?;
    Ok((config, macs))
}

/// `Dataplane::sync` in process on freshly loaded kernel maps (root): `services` wrr services
/// with `reals` DR real servers each (MACs given, so nothing waits for ARP): the first sync,
/// a sync changing every weight, and a sync to the empty configuration.
pub fn sync_bulk(services: usize, reals: usize) -> Result<SyncBulk> {
    use lb_user::dataplane::{Dataplane, Sizes};
    let (config, macs) = wrr_config(services, reals, false)?;
    let (reweighted, _) = wrr_config(services, reals, true)?;
    let empty = lb_user::model::Config::default();
    let mut dp = Dataplane::load_with(Sizes {
        conns: 1 << 16,
        sched_slots: lb_common::DEFAULT_SCHED_SLOTS,
        nat_replies: None,
    })?;
    let first = time_ms(|| Ok(dp.sync(&config, &macs)?))?;
    let reweight = time_ms(|| Ok(dp.sync(&reweighted, &macs)?))?;
    let clear = time_ms(|| Ok(dp.sync(&empty, &macs)?))?;
    Ok(SyncBulk {
        first,
        reweight,
        clear,
    })
}
