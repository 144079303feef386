//! The VRRP lab (issue 18): two xvs directors in active-backup, as operators run them with
//! keepalived. Both directors run xvsd (DR, native XDP) with the same configuration and
//! keepalived for VRRP only (no virtual_server blocks), on the shipped
//! `examples/keepalived/keepalived.conf`: the master holds the VIP on its eth0, the router
//! reaches the VIP on-link (it ARPs for it), and keepalived's gratuitous ARPs move the router's
//! neighbor entry when another director takes the VIP. The real servers run Debian's apache2,
//! hold the VIP on loopback as LVS-DR real servers do, and answer clients through the router.
//!
//! ```text
//!  cl 192.0.2.2 ── 192.0.2.1 rt 198.51.100.1 ── br0 (sw) ─┬─ d1 198.51.100.2   xvsd + keepalived
//!     (client)       (router)                              ├─ d2 198.51.100.3   (lb1, lb2)
//!                                                          ├─ rs1 198.51.100.11 apache2
//!                                                          └─ ...
//! ```
//!
//! A director "dies" when its port on the bridge goes down ([`VrrpLab::port_down`]): its eth0
//! loses carrier, the other stops hearing its advertisements. The directors' pins live in a
//! bpffs instance mounted in the host's mount namespace, and everything the lab made (namespaces,
//! processes, pins) is removed when it is dropped.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aya::Ebpf;

use crate::{
    lab::{rs_ip4, spawn_apache, VIP4},
    netns::{self, cmd_in},
    poll,
    segment::{self, Seat},
    xvsd::XvsdProcess,
};

pub use crate::segment::{CLIENT4, ROUTER4, ROUTER_CLIENT4};
/// The shipped keepalived configuration the directors run (see [`keepalived_conf`]).
pub const KEEPALIVED_CONF: &str = include_str!("../../examples/keepalived/keepalived.conf");
/// The NAT real servers' gateway the shipped configuration has (commented out) beside the VIP.
pub const NAT_GATEWAY4: &str = "198.51.100.254";
/// How the shipped configuration names xvsadm (where a package would install it).
const SHIPPED_XVSADM: &str = "/usr/local/sbin/xvsadm";

/// VRRP lab settings.
#[derive(Clone, Debug)]
pub struct VrrpOptions {
    /// Short unique tag: namespaces are `xvs-<tag>-<role>`.
    pub tag: String,
    /// Number of real servers (at most 9).
    pub reals: usize,
    /// Directory holding xvsd and xvsadm.
    pub bin_dir: PathBuf,
}

/// IPv4 address of director `i` (1-based) on the segment.
pub fn director_ip4(i: usize) -> String {
    format!("198.51.100.{}", 1 + i)
}

/// The shipped keepalived configuration for a director whose xvsadm is `xvsadm` talking to
/// xvsd's socket `socket`: the track script's command changes (the shipped file names the
/// default socket), and the NAT real servers' gateway line is uncommented; the interface, the
/// VIP and the priorities (`@lb1`/`@lb2` lines, chosen by `keepalived -i`) are the lab's as
/// shipped.
pub fn keepalived_conf(xvsadm: &Path, socket: &Path) -> Result<String> {
    let shipped = format!("\"{SHIPPED_XVSADM} synced\"");
    let gateway = format!("# {NAT_GATEWAY4}/24 dev eth0");
    if !KEEPALIVED_CONF.contains(&shipped)
        || !KEEPALIVED_CONF.contains(VIP4)
        || !KEEPALIVED_CONF.contains(&gateway)
    {
        bail!(
            "examples/keepalived/keepalived.conf no longer has {shipped}, {VIP4} and {gateway:?}"
        );
    }
    Ok(KEEPALIVED_CONF.replace(&gateway, &gateway[2..]).replace(
        &shipped,
        &format!(
            "\"{} --socket {} synced\"",
            xvsadm.display(),
            socket.display()
        ),
    ))
}

/// One director: its namespace, xvsd and keepalived.
pub struct Director {
    /// Its name: `d1`, `d2`.
    pub name: String,
    /// Its keepalived config-id: `lb1`, `lb2` (the shipped configuration's `@lb1` lines).
    pub config_id: String,
    /// Its namespace.
    pub ns: String,
    /// Its address on the segment.
    pub addr: String,
    /// Its xvsd's control socket.
    pub socket: PathBuf,
    xvsd: XvsdProcess,
    keepalived: Option<Child>,
    keepalived_log: PathBuf,
}

impl Director {
    /// Runs xvsadm against this director's xvsd and fails with its stderr when it fails;
    /// returns stdout.
    pub fn xvsadm_ok(&self, args: &[&str]) -> Result<String> {
        self.xvsd.xvsadm_ok_in(args, None)
    }

    /// Runs xvsadm against this director's xvsd; its exit status and output, whatever it is.
    pub fn xvsadm(&self, args: &[&str]) -> Result<std::process::Output> {
        self.xvsd.xvsadm(args)
    }

    /// `xvsadm -L -n --json`, parsed.
    pub fn listing(&self) -> Result<serde_json::Value> {
        Ok(serde_json::from_str(
            &self.xvsadm_ok(&["-L", "-n", "--json"])?,
        )?)
    }

    /// (client, real server) of every TCP connection in `xvsadm -L -n -c`.
    pub fn connections(&self) -> Result<Vec<(String, String)>> {
        Ok(self
            .xvsadm_ok(&["-L", "-n", "-c"])?
            .lines()
            .filter(|l| l.starts_with("TCP"))
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((f.get(3)?.to_string(), f.get(5)?.to_string()))
            })
            .collect())
    }

    /// Starts both sync daemons (master and backup) on eth0 with syncid 1, as the shipped
    /// example asks of every director.
    pub fn start_sync(&self) -> Result<()> {
        for role in ["master", "backup"] {
            self.xvsadm_ok(&[
                "--start-daemon",
                role,
                "--mcast-interface",
                "eth0",
                "--syncid",
                "1",
            ])?;
        }
        Ok(())
    }

    /// Stops both sync daemons.
    pub fn stop_sync(&self) -> Result<()> {
        for role in ["master", "backup"] {
            self.xvsadm_ok(&["--stop-daemon", role])?;
        }
        Ok(())
    }

    /// Whether this director holds the VIP on its eth0 now.
    pub fn holds_vip(&self) -> bool {
        cmd_in(&self.ns, "ip")
            .args(["-4", "-o", "addr", "show", "dev", "eth0"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!(" {VIP4}/32 ")))
            .unwrap_or(false)
    }

    /// What xvsd logged so far.
    pub fn xvsd_log(&self) -> String {
        self.xvsd.log_text()
    }

    /// What keepalived logged so far.
    pub fn keepalived_log(&self) -> String {
        fs::read_to_string(&self.keepalived_log).unwrap_or_default()
    }

    fn stop_keepalived(&mut self) {
        if let Some(mut c) = self.keepalived.take() {
            // SIGTERM: keepalived removes the VIP and stops its VRRP child; the namespace's
            // removal kills what is left.
            // SAFETY: plain kill(2) on our child (`ip netns exec` execs into keepalived).
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let exited = poll(Duration::from_secs(5), "keepalived to exit", || {
                c.try_wait().ok().flatten()
            });
            if exited.is_err() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// A running VRRP lab; dropping it removes everything it made.
pub struct VrrpLab {
    prefix: String,
    /// Scratch directory (configurations, logs, sockets, web roots).
    pub dir: PathBuf,
    bpffs: PathBuf,
    bin_dir: PathBuf,
    /// The directors: `d1` (lb1, priority 150) and `d2` (lb2, priority 100).
    pub directors: Vec<Director>,
    reals: usize,
    apaches: Vec<Child>,
    /// The XDP_PASS programs on the directors' bridge ports.
    pass: Option<Ebpf>,
}

impl VrrpLab {
    /// Builds the topology, starts the real servers and both directors' xvsd. No service, no
    /// sync daemon and no keepalived yet (the caller configures xvs as an operator would, then
    /// calls [`VrrpLab::start_keepalived`]). Fails with the reason when keepalived is not
    /// installed. Leftovers of an earlier run with the same tag are removed first; on failure
    /// everything made so far is removed.
    pub fn start(opts: VrrpOptions) -> Result<VrrpLab> {
        crate::require_root();
        if opts.reals == 0 || opts.reals > 9 {
            bail!("1 to 9 real servers");
        }
        if !Path::new("/usr/sbin/keepalived").exists() {
            bail!(
                "keepalived is not installed (Debian package keepalived; `cargo xtask` installs it)"
            );
        }
        let prefix = format!("xvs-{}-", opts.tag);
        netns::destroy_all(&prefix);
        let dir = std::env::temp_dir().join(format!("xvs-{}", opts.tag));
        let bpffs = dir.join("bpf");
        // A crashed run's bpffs first: its pins are released with it.
        netns::unmount_all(&bpffs);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&bpffs)?;
        let directors = (1..=2)
            .map(|i| {
                let name = format!("d{i}");
                let ns = format!("{prefix}{name}");
                let socket = dir.join(format!("{name}.sock"));
                let args = vec![
                    "--iface".into(),
                    "eth0".into(),
                    "--xdp-mode".into(),
                    "native".into(),
                    "--socket".into(),
                    socket.display().to_string(),
                    "--pin-dir".into(),
                    bpffs.join(&name).display().to_string(),
                    // Each director's own state: they share nothing but their configuration.
                    "--state-dir".into(),
                    dir.join(format!("{name}-state")).display().to_string(),
                ];
                let xvsd = XvsdProcess::new(
                    &ns,
                    &opts.bin_dir,
                    &socket,
                    &dir.join(format!("{name}-xvsd.log")),
                    args,
                );
                Director {
                    addr: director_ip4(i),
                    config_id: format!("lb{i}"),
                    keepalived_log: dir.join(format!("{name}-keepalived.log")),
                    socket,
                    name,
                    ns,
                    xvsd,
                    keepalived: None,
                }
            })
            .collect();
        let mut lab = VrrpLab {
            prefix,
            dir,
            bpffs,
            bin_dir: opts.bin_dir,
            directors,
            reals: opts.reals,
            apaches: Vec::new(),
            pass: None,
        };
        netns::mount_bpffs(&lab.bpffs).context("mounting the lab's bpffs")?;
        lab.build_topology()
            .context("building the VRRP lab's topology")?;
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
        Ok(lab)
    }

    /// Makes the real servers send what leaves from their own address (NAT replies; DR
    /// replies leave from the VIP) through the director holding [`NAT_GATEWAY4`], by a source
    /// rule, so they serve a NAT service beside the DR ones; the directors forward IPv4 and
    /// route the clients (NAT replies, translated back) via the router.
    pub fn route_nat_replies(&self) -> Result<()> {
        for d in &self.directors {
            // xvs forwards NAT traffic only where the kernel would (it warns otherwise).
            let out = cmd_in(&d.ns, "sh")
                .arg("-ec")
                .arg(format!(
                    "ip route add default via {}
                     sysctl -qw net.ipv4.conf.all.forwarding=1 net.ipv4.conf.eth0.forwarding=1",
                    ROUTER4
                ))
                .output()?;
            if !out.status.success() {
                bail!(
                    "{}'s default route: {}",
                    d.name,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        for i in 1..=self.reals {
            let out = cmd_in(&self.ns(&format!("rs{i}")), "sh")
                .arg("-ec")
                .arg(format!(
                    "ip route add 198.51.100.0/24 dev eth0 table 100
                     ip route add default via {NAT_GATEWAY4} table 100
                     ip rule add from {} lookup 100",
                    rs_ip4(i)
                ))
                .output()?;
            if !out.status.success() {
                bail!(
                    "rs{i}'s route for NAT replies: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Ok(())
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
            // The VIP on-link on the directors' segment: the router ARPs for it, and whichever
            // director holds it answers (the real servers hold it too, but never answer ARP
            // for it).
            &format!("ip route add {VIP4}/32 dev eth1"),
        )?;
        self.pass = Some(pass);
        Ok(())
    }

    /// Starts keepalived (VRRP only, in the foreground, logging to the lab's directory) on
    /// both directors with the shipped configuration.
    pub fn start_keepalived(&mut self) -> Result<()> {
        for d in &mut self.directors {
            let conf = self.dir.join(format!("{}-keepalived.conf", d.name));
            fs::write(
                &conf,
                keepalived_conf(&self.bin_dir.join("xvsadm"), &d.socket)?,
            )?;
            let file = |what: &str| self.dir.join(format!("{}-{what}.pid", d.name));
            let log = fs::File::create(&d.keepalived_log)?;
            let child = cmd_in(&d.ns, "/usr/sbin/keepalived")
                // VRRP only, no BFD; in the foreground, logging to stderr (not syslog),
                // in detail; pid files of its own, as two run on one host.
                .args(["-P", "-B", "-n", "-l", "-G", "-D", "-i", &d.config_id])
                .arg("-f")
                .arg(&conf)
                .arg("-p")
                .arg(file("keepalived"))
                .arg("-r")
                .arg(file("vrrp"))
                .arg("-c")
                .arg(file("checkers"))
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("spawning keepalived (Debian package keepalived)")?;
            d.keepalived = Some(child);
        }
        Ok(())
    }

    /// The directors (0-based) holding the VIP now.
    pub fn holders(&self) -> Vec<usize> {
        (0..self.directors.len())
            .filter(|&i| self.directors[i].holds_vip())
            .collect()
    }

    /// Waits until director `i` (0-based), and only it, holds the VIP; returns how long that
    /// took.
    pub fn wait_holder(&self, i: usize, timeout: Duration) -> Result<Duration> {
        let t0 = Instant::now();
        poll(
            timeout,
            &format!("{VIP4} on {} only", self.directors[i].name),
            || (self.holders() == [i]).then_some(()),
        )
        .with_context(|| self.report())?;
        Ok(t0.elapsed())
    }

    /// Waits until a new connection from the client to the VIP is answered (each try gives up
    /// after 300 ms); returns how long that took.
    pub fn wait_answering(&self, timeout: Duration) -> Result<Duration> {
        let t0 = Instant::now();
        let url = format!("http://{VIP4}/");
        poll(timeout, &format!("{url} to answer"), || {
            let out = cmd_in(&self.ns("cl"), "curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
                .args(["--connect-timeout", "0.3", "-m", "0.5", &url])
                .stdin(Stdio::null())
                .output()
                .ok()?;
            (out.stdout == b"200").then_some(())
        })
        .with_context(|| self.report())?;
        Ok(t0.elapsed())
    }

    /// The router's neighbor entry for the VIP, as `ip neigh show` prints it.
    pub fn router_neighbor(&self) -> String {
        cmd_in(&self.ns("rt"), "ip")
            .args(["neigh", "show", VIP4])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }

    /// Who holds the VIP, the router's neighbor entry and the directors' keepalived logs' tails
    /// (for failure messages).
    pub fn report(&self) -> String {
        let mut s = format!(
            "VIP holders: {:?}; router's neighbor entry: {}\n",
            self.holders(),
            self.router_neighbor()
        );
        for d in &self.directors {
            // The track script's verdict: a director whose script fails stays in FAULT.
            let synced = d
                .xvsadm(&["synced"])
                .map(|o| {
                    format!(
                        "exit {:?}: {}{}",
                        o.status.code(),
                        String::from_utf8_lossy(&o.stdout).trim(),
                        String::from_utf8_lossy(&o.stderr).trim()
                    )
                })
                .unwrap_or_else(|e| format!("{e:#}"));
            s += &format!("{}: xvsadm synced: {synced}\n", d.name);
            let log = d.keepalived_log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            s += &format!("--- {} keepalived (last lines):\n", d.name);
            for l in tail.iter().rev() {
                s += l;
                s += "\n";
            }
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
            d.stop_keepalived();
            let _ = d.xvsd.stop_within(Duration::from_secs(5));
        }
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

impl Drop for VrrpLab {
    fn drop(&mut self) {
        self.cleanup();
    }
}
