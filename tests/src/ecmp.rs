//! The ECMP lab (issue 18): several directors side by side behind one router, as operators run
//! them. The router runs BIRD 2 with a BGP session (and BFD) to each director and installs what
//! it learns with `merge paths`, so a VIP announced by every director gets one route with a
//! next hop per director; flows spread over them by their 5-tuple
//! (`fib_multipath_hash_policy=1`). Each director runs xvsd (DR, `--announce-table 100`, native
//! XDP) and a BIRD that exports xvsd's table 100. The real servers run Debian's apache2, hold the
//! VIP on loopback as LVS-DR real servers do, and answer clients through the router directly.
//!
//! ```text
//!  cl 192.0.2.2 ── 192.0.2.1 rt 198.51.100.1 ── br0 (sw) ─┬─ d1 198.51.100.2   xvsd + bird
//!     (client)      (router: bird, AS 65000)               ├─ d2 198.51.100.3   (AS 65010)
//!                                                          ├─ ...
//!                                                          ├─ rs1 198.51.100.11 apache2
//!                                                          └─ rs2 198.51.100.12 ...
//! ```
//!
//! A director "dies" when its port on the bridge goes down ([`EcmpLab::port_down`]): the
//! router's own interface stays up, so only BFD can tell it. Unknown unicast is flooded to the
//! directors as a switch floods it: the port going down flushes its MAC addresses from the
//! bridge, which then floods the frames the router still sends to the cut-off director to every
//! port until BFD acts; the survivors' data planes pass them (pass_not_our_mac) to their
//! kernels, which drop them (the test counts those frames). Like the one-director lab
//! (`lab::Lab`), the directors' pins live in a bpffs instance mounted in the host's mount
//! namespace, and everything the lab made is removed when it is dropped.

use std::{
    fs,
    path::PathBuf,
    process::Child,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aya::Ebpf;

use crate::{
    bird::Bird,
    lab::{rs_ip4, spawn_apache, VIP4},
    netns, poll,
    segment::{self, Seat},
    xvsd::XvsdProcess,
};

/// The kernel table xvsd announces through and the directors' BIRDs export.
pub const ANNOUNCE_TABLE: &str = "100";
pub use crate::segment::{CLIENT4, ROUTER4, ROUTER_CLIENT4};

/// ECMP lab settings.
#[derive(Clone, Debug)]
pub struct EcmpOptions {
    /// Short unique tag: namespaces are `xvs-<tag>-<role>`.
    pub tag: String,
    /// Number of directors (at most 8).
    pub directors: usize,
    /// Number of real servers (at most 9).
    pub reals: usize,
    /// Directory holding xvsd and xvsadm.
    pub bin_dir: PathBuf,
}

/// IPv4 address of director `i` (1-based) on the segment.
pub fn director_ip4(i: usize) -> String {
    format!("198.51.100.{}", 1 + i)
}

/// One director: its namespace, xvsd and BIRD.
pub struct Director {
    /// Its name: `d1`, `d2`...
    pub name: String,
    /// Its namespace.
    pub ns: String,
    /// Its address on the segment.
    pub addr: String,
    /// Its xvsd's control socket.
    pub socket: PathBuf,
    xvsd: XvsdProcess,
    bird: Option<Bird>,
}

impl Director {
    /// Runs xvsadm against this director's xvsd and fails with its stderr when it fails;
    /// returns stdout.
    pub fn xvsadm_ok(&self, args: &[&str]) -> Result<String> {
        self.xvsd.xvsadm_ok_in(args, None)
    }

    /// `xvsadm -L -n --json`, parsed.
    pub fn listing(&self) -> Result<serde_json::Value> {
        Ok(serde_json::from_str(
            &self.xvsadm_ok(&["-L", "-n", "--json"])?,
        )?)
    }

    /// What xvsd logged so far.
    pub fn xvsd_log(&self) -> String {
        self.xvsd.log_text()
    }

    /// Its BIRD's answer to a birdc command (for failure messages).
    pub fn birdc(&self, command: &str) -> String {
        self.bird
            .as_ref()
            .and_then(|b| b.birdc(command).ok())
            .unwrap_or_default()
    }
}

/// A running ECMP lab; dropping it removes everything it made.
pub struct EcmpLab {
    prefix: String,
    /// Scratch directory (configurations, logs, sockets, web roots).
    pub dir: PathBuf,
    bpffs: PathBuf,
    /// The directors, `d1` first.
    pub directors: Vec<Director>,
    reals: usize,
    router_bird: Option<Bird>,
    apaches: Vec<Child>,
    /// The XDP_PASS programs on the directors' bridge ports.
    pass: Option<Ebpf>,
}

impl EcmpLab {
    /// Builds the topology, starts the real servers, every director's xvsd and BIRD, and the
    /// router's BIRD. No service is configured (the caller does that, as an operator would), so
    /// nothing is announced yet. Leftovers of an earlier run with the same tag are removed
    /// first; on failure everything made so far is removed.
    pub fn start(opts: EcmpOptions) -> Result<EcmpLab> {
        crate::require_root();
        if opts.directors == 0 || opts.directors > 8 || opts.reals == 0 || opts.reals > 9 {
            bail!("1 to 8 directors and 1 to 9 real servers");
        }
        let prefix = format!("xvs-{}-", opts.tag);
        netns::destroy_all(&prefix);
        let dir = std::env::temp_dir().join(format!("xvs-{}", opts.tag));
        let bpffs = dir.join("bpf");
        // A crashed run's bpffs first: its pins are released with it.
        netns::unmount_all(&bpffs);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&bpffs)?;
        let directors = (1..=opts.directors)
            .map(|i| {
                let name = format!("d{i}");
                let ns = format!("{prefix}{name}");
                let socket = dir.join(format!("{name}.sock"));
                let args = [
                    "--iface",
                    "eth0",
                    "--xdp-mode",
                    "native",
                    "--announce-table",
                    ANNOUNCE_TABLE,
                    "--socket",
                ]
                .map(String::from)
                .into_iter()
                .chain([
                    socket.display().to_string(),
                    "--pin-dir".into(),
                    bpffs.join(&name).display().to_string(),
                    // Each director's own state: they share nothing but their configuration.
                    "--state-dir".into(),
                    dir.join(format!("{name}-state")).display().to_string(),
                ])
                .collect();
                let xvsd = XvsdProcess::new(
                    &ns,
                    &opts.bin_dir,
                    &socket,
                    &dir.join(format!("{name}-xvsd.log")),
                    args,
                );
                Director {
                    addr: director_ip4(i),
                    socket,
                    name,
                    ns,
                    xvsd,
                    bird: None,
                }
            })
            .collect();
        let mut lab = EcmpLab {
            prefix,
            dir,
            bpffs,
            directors,
            reals: opts.reals,
            router_bird: None,
            apaches: Vec::new(),
            pass: None,
        };
        netns::mount_bpffs(&lab.bpffs).context("mounting the lab's bpffs")?;
        lab.build_topology()
            .context("building the ECMP lab's topology")?;
        for i in 1..=opts.reals {
            let child = spawn_apache(&lab.ns(&format!("rs{i}")), &lab.dir, i, &rs_ip4(i))
                .with_context(|| format!("starting apache2 on rs{i}"))?;
            lab.apaches.push(child);
        }
        for d in &mut lab.directors {
            d.xvsd
                .start(&[])
                .with_context(|| format!("starting xvsd on {}", d.name))?;
        }
        lab.start_birds().context("starting BIRD")?;
        Ok(lab)
    }

    /// Full name of a namespace role (`cl`, `rt`, `sw`, `d1`, `rs1`...).
    pub fn ns(&self, role: &str) -> String {
        format!("{}{role}", self.prefix)
    }

    fn build_topology(&mut self) -> Result<()> {
        let seats: Vec<Seat> = self
            .directors
            .iter()
            .map(|d| Seat {
                ns: &d.ns,
                name: &d.name,
                addr: &d.addr,
            })
            .collect();
        let pass = segment::build(
            |role| self.ns(role),
            &seats,
            self.reals,
            // A router that spreads flows over its next hops by their 5-tuple (the default
            // hashes addresses only: every connection of the one client on one director).
            "sysctl -qw net.ipv4.fib_multipath_hash_policy=1",
        )?;
        self.pass = Some(pass);
        Ok(())
    }

    /// The router's BIRD and every director's, with BGP and BFD at a test's pace.
    fn start_birds(&mut self) -> Result<()> {
        for d in &mut self.directors {
            let config = director_bird(&d.addr);
            d.bird = Some(Bird::start(&d.ns, &self.dir, &d.name, &config)?);
        }
        let config = router_bird(&self.directors);
        self.router_bird = Some(Bird::start(&self.ns("rt"), &self.dir, "router", &config)?);
        Ok(())
    }

    /// The router's route to the IPv4 VIP, as `ip route show` prints it.
    pub fn router_route(&self) -> String {
        netns::cmd_in(&self.ns("rt"), "ip")
            .args(["route", "show", VIP4])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// The next hops of the router's route to the IPv4 VIP (none while it has no route).
    pub fn router_next_hops(&self) -> Vec<String> {
        let text = self.router_route();
        let words: Vec<&str> = text.split_whitespace().collect();
        words
            .windows(2)
            .filter(|w| w[0] == "via")
            .map(|w| w[1].to_string())
            .collect()
    }

    /// Waits until the router's route to the VIP has exactly `n` next hops; returns how long
    /// that took.
    pub fn wait_next_hops(&self, n: usize, timeout: Duration) -> Result<Duration> {
        let t0 = Instant::now();
        poll(
            timeout,
            &format!("the router's route to {VIP4} with {n} next hops"),
            || (self.router_next_hops().len() == n).then_some(()),
        )
        .with_context(|| self.routing_report())?;
        Ok(t0.elapsed())
    }

    /// The router's route and the BGP sessions on both sides (for failure messages).
    pub fn routing_report(&self) -> String {
        let mut s = format!("router's next hops: {:?}\n", self.router_next_hops());
        if let Some(b) = &self.router_bird {
            s += &b.birdc("show protocols").unwrap_or_default();
            s += &b.birdc("show route all").unwrap_or_default();
            s += &b.log_text();
        }
        for d in &self.directors {
            s += &format!(
                "{}: {}\n{}",
                d.name,
                d.birdc("show protocols"),
                d.birdc("show route all")
            );
        }
        s
    }

    /// Takes director `i`'s (0-based) port on the bridge down (segment::set_port).
    pub fn port_down(&self, i: usize) -> Result<()> {
        segment::set_port(&self.ns("sw"), &self.directors[i].name, false)
    }

    /// Brings director `i`'s port back up.
    pub fn port_up(&self, i: usize) -> Result<()> {
        segment::set_port(&self.ns("sw"), &self.directors[i].name, true)
    }

    /// Waits until every director has resolved every real server's MAC address.
    pub fn wait_reals_resolved(&self, timeout: Duration) -> Result<()> {
        segment::wait_reals_resolved(
            timeout,
            self.directors.iter().map(|d| {
                let listing: Box<dyn Fn() -> Result<serde_json::Value>> =
                    Box::new(move || d.listing());
                (d.name.as_str(), listing)
            }),
        )
    }

    fn cleanup(&mut self) {
        for d in &mut self.directors {
            let _ = d.xvsd.stop_within(Duration::from_secs(5));
            d.bird = None;
        }
        self.router_bird = None;
        self.pass = None;
        netns::destroy_all(&self.prefix);
        // The pins (and with them the directors' links and maps) go with the bpffs instance.
        netns::unmount_all(&self.bpffs);
        let _ = fs::remove_dir(&self.bpffs);
        for mut c in self.apaches.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Logs and configurations: kept for a failed test to be looked at (the next run with
        // the same tag removes them), removed after a passing one.
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for EcmpLab {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// BGP and BFD timers at a test's pace: BFD every 100 ms, down after 3 missed; a session that
/// went down reconnects within a second or two.
const TIMERS: &str = "bfd on;
    connect delay time 1; connect retry time 1; error wait time 1, 2;";

/// A director's BIRD: learns xvsd's routes from its table and exports them to the router.
fn director_bird(addr: &str) -> String {
    format!(
        r#"router id {addr};
protocol device {{ scan time 1; }}
protocol kernel xvs {{
    kernel table {ANNOUNCE_TABLE};
    learn;
    scan time 1;
    ipv4 {{ import all; export none; }};
}}
protocol bfd {{ interface "eth0" {{ interval 100 ms; multiplier 3; }}; }}
protocol bgp uplink {{
    local {addr} as 65010;
    neighbor {ROUTER4} as 65000;
    {TIMERS}
    ipv4 {{ import none; export where proto = "xvs"; next hop self; }};
}}
"#
    )
}

/// The router's BIRD: a session per director; equal routes from several directors become one
/// multipath route in the kernel (`merge paths`).
fn router_bird(directors: &[Director]) -> String {
    let mut config = format!(
        r#"router id {ROUTER4};
protocol device {{ scan time 1; }}
protocol kernel {{
    merge paths on;
    ipv4 {{ import none; export all; }};
}}
protocol bfd {{ interface "eth1" {{ interval 100 ms; multiplier 3; }}; }}
"#
    );
    for d in directors {
        config += &format!(
            r#"protocol bgp {name} {{
    local {ROUTER4} as 65000;
    neighbor {addr} as 65010;
    {TIMERS}
    ipv4 {{ import all; export none; }};
}}
"#,
            name = d.name,
            addr = d.addr,
        );
    }
    config
}
