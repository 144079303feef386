//! The lab: a client, a director running xvsd, and real servers running Debian's apache2, each
//! in its own network namespace, joined by a bridge in a "switch" namespace. Real servers hold the
//! VIPs on loopback with arp_ignore/arp_announce as in LVS-DR; the client routes the VIP
//! networks through the director, as an upstream router would.
//!
//! Addresses (documentation ranges): segment 198.51.100.0/24 and 2001:db8:1::/64; client .1/::1,
//! director .2/::2, real server N .1N/::1N; VIPs 203.0.113.10 and 2001:db8:10::10.
//!
//! The two-arm lab ([`LabOptions::two_arms`]) puts the real servers on a segment of their own,
//! behind the director instead of beside it, for NAT and FULLNAT as an operator of a two-arm
//! director has them: a second bridge (namespace `sw2`) joins the director's eth1 and the real
//! servers; 192.0.2.0/24 and 2001:db8:2::/64, director .1/::1 ([`ARM_DIR4`], [`ARM_DIR6`]), real
//! server N .1N/::1N. xvsd runs with `--iface eth0 --iface eth1`, the director forwards IP, and
//! the real servers have no VIP and no route off their segment (a NAT test gives them a default
//! route through the director with [`Lab::route_via_director`]).
//!
//! ```text
//!  cl 198.51.100.1 ── br0 ── eth0 198.51.100.2  dir  eth1 192.0.2.1 ── br1 ─┬─ rs1 192.0.2.11
//!                   (sw)                                          (sw2)  └─ rs2 192.0.2.12
//! ```
//!
//! xvsd pins its data plane in a bpffs instance the lab mounts in the host's mount namespace
//! (`DIR/bpf`): `ip netns exec` replaces /sys, but mounts elsewhere stay visible inside it, so
//! the pins outlive xvsd (a killed xvsd leaves the director forwarding, as in production) and
//! are all released when the lab unmounts that instance.

use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use aya::{
    programs::{Xdp, XdpMode},
    Ebpf,
};

use crate::{
    netns::{self, cmd_in, create, ip, sh},
    poll,
    xvsd::XvsdProcess,
};

/// IPv4 VIP of the lab.
pub const VIP4: &str = "203.0.113.10";
/// IPv6 VIP of the lab.
pub const VIP6: &str = "2001:db8:10::10";
/// The director's IPv4 address on the real servers' segment of the two-arm lab (eth1).
pub const ARM_DIR4: &str = "192.0.2.1";
/// The director's IPv6 address on the real servers' segment of the two-arm lab (eth1).
pub const ARM_DIR6: &str = "2001:db8:2::1";

/// Lab settings.
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// Short unique tag: namespaces are `xvs-<tag>-<role>`.
    pub tag: String,
    /// Number of real servers.
    pub reals: usize,
    /// Directory holding xvsd and xvsadm.
    pub bin_dir: PathBuf,
    /// Extra arguments for every start of xvsd (e.g. `--metrics`).
    pub xvsd_args: Vec<String>,
    /// Two arms: the real servers on a segment of their own behind the director's eth1 (see
    /// the module's documentation) instead of on the client's segment as DR real servers.
    pub two_arms: bool,
}

/// A two-real-server lab for a test (panics with the reason if it cannot start).
pub fn two_reals(tag: &str) -> Lab {
    two_reals_with(tag, &[])
}

/// A two-real-server lab whose xvsd always gets `xvsd_args` too.
pub fn two_reals_with(tag: &str, xvsd_args: &[&str]) -> Lab {
    Lab::start(LabOptions {
        tag: tag.into(),
        reals: 2,
        bin_dir: default_bin_dir(),
        xvsd_args: xvsd_args.iter().map(|a| a.to_string()).collect(),
        two_arms: false,
    })
    .expect("lab")
}

/// A two-arm lab with two real servers (panics with the reason if it cannot start).
pub fn two_arms(tag: &str) -> Lab {
    Lab::start(LabOptions {
        tag: tag.into(),
        reals: 2,
        bin_dir: default_bin_dir(),
        xvsd_args: Vec::new(),
        two_arms: true,
    })
    .expect("two-arm lab")
}

/// How many times each body (each real server's name) came back.
pub fn tally(bodies: &[String]) -> std::collections::BTreeMap<String, usize> {
    let mut t = std::collections::BTreeMap::new();
    for b in bodies {
        *t.entry(b.clone()).or_default() += 1;
    }
    t
}

/// A running lab; dropping it removes everything it made.
pub struct Lab {
    prefix: String,
    /// Scratch directory (configs, logs, socket).
    pub dir: PathBuf,
    /// xvsd's control socket.
    pub socket: PathBuf,
    reals: usize,
    two_arms: bool,
    /// Mount point of the lab's bpffs instance.
    bpffs: PathBuf,
    xvsd: XvsdProcess,
    /// Running apache2 parents, by real server number.
    apaches: Vec<(usize, Child)>,
    /// The XDP_PASS programs on the director's peers (see build_topology).
    pass: Vec<Ebpf>,
}

/// IPv4 address of real server `i` (1-based).
pub fn rs_ip4(i: usize) -> String {
    format!("198.51.100.{}", 10 + i)
}

/// IPv6 address of real server `i` (1-based).
pub fn rs_ip6(i: usize) -> String {
    format!("2001:db8:1::{}", 10 + i)
}

/// IPv4 address of real server `i` of the two-arm lab (1-based).
pub fn arm_ip4(i: usize) -> String {
    format!("192.0.2.{}", 10 + i)
}

/// IPv6 address of real server `i` of the two-arm lab (1-based).
pub fn arm_ip6(i: usize) -> String {
    format!("2001:db8:2::{}", 10 + i)
}

/// IPv4 address of routed real server `i` (behind the lab's router, see Lab::add_routed_real).
pub fn routed_ip4(i: usize) -> String {
    format!("192.0.2.{}", 10 + i)
}

/// IPv6 address of routed real server `i`.
pub fn routed_ip6(i: usize) -> String {
    format!("2001:db8:2::{}", 10 + i)
}

/// Where the test binaries find xvsd and xvsadm: XVS_BIN_DIR (set by `cargo xtask test`), or
/// target/release next to this crate.
pub fn default_bin_dir() -> PathBuf {
    std::env::var_os("XVS_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release"))
}

impl Lab {
    /// Builds the topology, starts the real servers and xvsd. Leftovers of an earlier run with
    /// the same tag are removed first; on failure everything made so far is removed.
    pub fn start(opts: LabOptions) -> Result<Lab> {
        crate::require_root();
        let prefix = format!("xvs-{}-", opts.tag);
        netns::destroy_all(&prefix);
        let dir = std::env::temp_dir().join(format!("xvs-{}", opts.tag));
        let bpffs = dir.join("bpf");
        // A crashed run's bpffs first: its pins are released with it.
        netns::unmount_all(&bpffs);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&bpffs)?;
        let socket = dir.join("xvsd.sock");
        let mut args: Vec<String> = ["--iface", "eth0", "--xdp-mode", "native", "--socket"]
            .map(String::from)
            .into();
        args.push(socket.display().to_string());
        if opts.two_arms {
            args.extend(["--iface".into(), "eth1".into()]);
        }
        args.push("--pin-dir".into());
        args.push(bpffs.join("eth0").display().to_string());
        // The lab's own state: a restart within a lab restores it, labs never share one.
        args.push("--state-dir".into());
        args.push(dir.join("state").display().to_string());
        args.extend(opts.xvsd_args.iter().cloned());
        let xvsd = XvsdProcess::new(
            &format!("{prefix}dir"),
            &opts.bin_dir,
            &socket,
            &dir.join("xvsd.log"),
            args,
        );
        let mut lab = Lab {
            prefix,
            socket,
            dir,
            reals: opts.reals,
            two_arms: opts.two_arms,
            bpffs,
            xvsd,
            apaches: Vec::new(),
            pass: Vec::new(),
        };
        netns::mount_bpffs(&lab.bpffs).context("mounting the lab's bpffs")?;
        lab.build_topology().context("building the lab topology")?;
        for i in 1..=opts.reals {
            lab.start_apache(i)
                .with_context(|| format!("starting apache2 on rs{i}"))?;
        }
        lab.start_xvsd().context("starting xvsd")?;
        Ok(lab)
    }

    /// Full name of a namespace role (`cl`, `dir`, `sw`, `rs1`...).
    pub fn ns(&self, role: &str) -> String {
        format!("{}{role}", self.prefix)
    }

    fn build_topology(&mut self) -> Result<()> {
        let sw = self.ns("sw");
        create(&sw)?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        let mut hosts = vec![
            (
                "cl".to_string(),
                "198.51.100.1".to_string(),
                "2001:db8:1::1".to_string(),
            ),
            (
                "dir".to_string(),
                "198.51.100.2".to_string(),
                "2001:db8:1::2".to_string(),
            ),
        ];
        let mut arm = Vec::new();
        for i in 1..=self.reals {
            let host = (format!("rs{i}"), self.real_ip4(i), self.real_ip6(i));
            if self.two_arms {
                arm.push(host);
            } else {
                hosts.push(host);
            }
        }
        for (role, v4, v6) in &hosts {
            let ns = self.ns(role);
            create(&ns)?;
            self.plug(&sw, &ns, role, "eth0", v4, v6)?;
        }
        if self.two_arms {
            let sw2 = self.ns("sw2");
            create(&sw2)?;
            ip(&["-n", &sw2, "link", "add", "br1", "type", "bridge"])?;
            ip(&["-n", &sw2, "link", "set", "br1", "up"])?;
            self.plug(&sw2, &self.ns("dir"), "dir", "eth1", ARM_DIR4, ARM_DIR6)?;
            for (role, v4, v6) in &arm {
                let ns = self.ns(role);
                create(&ns)?;
                self.plug(&sw2, &ns, role, "eth0", v4, v6)?;
            }
            // A router between its arms: the data plane's FIB lookups need forwarding on.
            let out = sh(
                &self.ns("dir"),
                "sysctl -qw net.ipv4.conf.all.forwarding=1 net.ipv6.conf.all.forwarding=1",
            )?;
            if !out.status.success() {
                bail!(
                    "director forwarding: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let cl = self.ns("cl");
        ip(&[
            "-n",
            &cl,
            "route",
            "add",
            "203.0.113.0/24",
            "via",
            "198.51.100.2",
        ])?;
        ip(&[
            "-n",
            &cl,
            "-6",
            "route",
            "add",
            "2001:db8:10::/64",
            "via",
            "2001:db8:1::2",
        ])?;
        for i in (1..=self.reals).filter(|_| !self.two_arms) {
            let ns = self.ns(&format!("rs{i}"));
            ip(&["-n", &ns, "addr", "add", &format!("{VIP4}/32"), "dev", "lo"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{VIP6}/128"),
                "dev",
                "lo",
            ])?;
            // LVS-DR real server: never answer ARP for the VIP, never source ARP from it.
            sh(
                &ns,
                "sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2 \
                 net.ipv4.conf.eth0.arp_ignore=1 net.ipv4.conf.eth0.arp_announce=2",
            )?;
        }
        // Native XDP_TX into a veth, and XDP_REDIRECT from one of the director's interfaces
        // into another, deliver only when the peer runs XDP too.
        let bridges: &[&str] = if self.two_arms {
            &["sw", "sw2"]
        } else {
            &["sw"]
        };
        for bridge in bridges {
            let pass = attach_pass(&self.ns(bridge), &["p-dir"])?;
            self.pass.push(pass);
        }
        Ok(())
    }

    /// Connects namespace `ns` to the lab's bridge in `sw` (see [`plug`]).
    fn plug(&self, sw: &str, ns: &str, role: &str, ifname: &str, v4: &str, v6: &str) -> Result<()> {
        let bridge = if sw.ends_with("sw2") { "br1" } else { "br0" };
        plug(sw, bridge, ns, &format!("p-{role}"), ifname, v4, v6)
    }

    /// IPv4 address of real server `i`: on the client's segment ([`rs_ip4`]), or on the
    /// real servers' own in the two-arm lab ([`arm_ip4`]).
    pub fn real_ip4(&self, i: usize) -> String {
        if self.two_arms {
            arm_ip4(i)
        } else {
            rs_ip4(i)
        }
    }

    /// IPv6 address of real server `i` (see [`Lab::real_ip4`]).
    pub fn real_ip6(&self, i: usize) -> String {
        if self.two_arms {
            arm_ip6(i)
        } else {
            rs_ip6(i)
        }
    }

    /// Two-arm lab, NAT: every real server's default routes go through the director's eth1,
    /// so that replies to clients cross it.
    pub fn route_via_director(&self) -> Result<()> {
        for i in 1..=self.reals {
            let script = format!(
                "set -e
                ip route add default via {ARM_DIR4}
                ip -6 route add default via {ARM_DIR6}"
            );
            let out = sh(&self.ns(&format!("rs{i}")), &script)?;
            if !out.status.success() {
                bail!("rs{i} routes: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        Ok(())
    }

    /// Starts apache2 on real server `i` of the segment (again, after stop_apache) and waits
    /// until it answers.
    pub fn start_apache(&mut self, i: usize) -> Result<()> {
        self.start_apache_at(i, &self.real_ip4(i))
    }

    /// Stops apache2 on real server `i` as an operator would (SIGTERM: the parent stops its
    /// workers and closes every connection) and waits until nothing listens on port 80 there.
    pub fn stop_apache(&mut self, i: usize) -> Result<()> {
        let at = self
            .apaches
            .iter()
            .position(|(n, _)| *n == i)
            .with_context(|| format!("apache2 of rs{i} is not running"))?;
        let (_, mut child) = self.apaches.remove(at);
        // SAFETY: plain kill(2) on our child (`ip netns exec` execs, so this is apache2).
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        poll(
            Duration::from_secs(15),
            &format!("apache2 on rs{i} to exit"),
            || child.try_wait().ok().flatten(),
        )?;
        let ns = self.ns(&format!("rs{i}"));
        poll(
            Duration::from_secs(10),
            &format!("port 80 of rs{i} to close"),
            || {
                let out = sh(&ns, "ss -Htln 'sport = :80'").ok()?;
                out.stdout.is_empty().then_some(())
            },
        )
    }

    /// Adds HTTPS on port 443 to real server `i`'s apache2 (mod_ssl, a self-signed certificate
    /// made here with the openssl command) and restarts it.
    pub fn enable_tls(&mut self, i: usize) -> Result<()> {
        let dir = self.dir.join(format!("rs{i}"));
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
            ])
            .arg(format!("/CN=rs{i}"))
            .arg("-keyout")
            .arg(dir.join("key.pem"))
            .arg("-out")
            .arg(dir.join("cert.pem"))
            .stdin(Stdio::null())
            .output()
            .context("running openssl")?;
        if !out.status.success() {
            bail!("openssl req: {}", String::from_utf8_lossy(&out.stderr));
        }
        let d = dir.display();
        fs::write(
            dir.join("extra.conf"),
            format!(
                "LoadModule ssl_module /usr/lib/apache2/modules/mod_ssl.so
                 Listen 443
                 <VirtualHost *:443>
  SSLEngine on
  SSLCertificateFile {d}/cert.pem
                   SSLCertificateKeyFile {d}/key.pem
</VirtualHost>
"
            ),
        )?;
        self.stop_apache(i)?;
        self.start_apache(i)
    }

    fn start_apache_at(&mut self, i: usize, addr: &str) -> Result<()> {
        let child = spawn_apache(&self.ns(&format!("rs{i}")), &self.dir, i, addr)?;
        self.apaches.push((i, child));
        Ok(())
    }

    /// What xvsd logged so far (for failure messages).
    pub fn xvsd_log(&self) -> String {
        self.xvsd.log_text()
    }

    /// Where xvsd pins the director (inside the lab's bpffs).
    pub fn pin_dir(&self) -> PathBuf {
        self.bpffs.join("eth0")
    }

    /// xvsd's pid, while it runs.
    pub fn xvsd_pid(&self) -> Option<u32> {
        self.xvsd.pid()
    }

    /// Starts xvsd in the director namespace and waits until it answers.
    pub fn start_xvsd(&mut self) -> Result<()> {
        self.start_xvsd_with(&[])
    }

    /// Starts xvsd with `extra` arguments for this start only, and waits until it answers.
    pub fn start_xvsd_with(&mut self, extra: &[&str]) -> Result<()> {
        self.xvsd.start(extra)
    }

    /// The interfaces (`--iface`, in this order) of xvsd's next starts, e.g. to take an arm
    /// away from the director or give it back across a restart.
    pub fn set_xvsd_interfaces(&mut self, ifaces: &[&str]) {
        self.xvsd.set_option("--iface", ifaces);
    }

    /// Runs xvsd with `extra` arguments to completion (`--cleanup`, or a start that must be
    /// refused); fails if it is still running after 30 s.
    pub fn xvsd_once(&self, extra: &[&str]) -> Result<Output> {
        self.xvsd.once(extra)
    }

    /// Kills xvsd with SIGKILL and waits for it: nothing of xvsd runs any more, only what it
    /// pinned.
    pub fn kill_xvsd(&mut self) -> Result<()> {
        self.xvsd.kill()
    }

    /// Restores `rules` (`xvsadm -S -n` output) with `xvsadm -R`.
    pub fn xvsadm_restore(&self, rules: &str) -> Result<()> {
        self.xvsd.xvsadm_ok_in(&["-R"], Some(rules)).map(drop)
    }

    /// Stops xvsd with SIGTERM and waits for it (the director stays attached and pinned).
    pub fn stop_xvsd(&mut self) -> Result<()> {
        self.xvsd.stop()
    }

    /// Runs xvsadm against this lab's daemon.
    pub fn xvsadm(&self, args: &[&str]) -> Result<Output> {
        self.xvsd.xvsadm(args)
    }

    /// Runs xvsadm and fails with its stderr when it fails; returns stdout.
    pub fn xvsadm_ok(&self, args: &[&str]) -> Result<String> {
        self.xvsd.xvsadm_ok_in(args, None)
    }

    /// A FULLNAT service as an operator types it: `-A` (`proto` is "-t" or "-u", rr), one
    /// `--add-laddr -z LIP` with `laddr_args` after it (`-F IFACE`, `--laddr-ports LO-HI`),
    /// then `-a ... -b` for each real server.
    pub fn add_fullnat(
        &self,
        proto: &str,
        vip: &str,
        lip: &str,
        laddr_args: &[&str],
        reals: &[String],
    ) -> Result<()> {
        self.xvsadm_ok(&["-A", proto, vip, "-s", "rr"])?;
        let mut args = vec!["--add-laddr", proto, vip, "-z", lip];
        args.extend_from_slice(laddr_args);
        self.xvsadm_ok(&args)?;
        for r in reals {
            self.xvsadm_ok(&["-a", proto, vip, "-r", r, "-b"])?;
        }
        Ok(())
    }

    /// `n` HTTP requests from the client to `url`, each on a new connection; the bodies of the
    /// ones that succeeded, in order.
    pub fn curl_many(&self, url: &str, n: usize) -> Result<Vec<String>> {
        let mut cmd = cmd_in(&self.ns("cl"), "curl");
        cmd.args(["-s", "-m", "5", "-H", "Connection: close"]);
        for _ in 0..n {
            cmd.arg(url);
        }
        let out = cmd.stdin(Stdio::null()).output()?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    }

    /// Opens a TCP connection from the client namespace (it stays in that namespace).
    pub fn connect(&self, addr: SocketAddr) -> Result<HttpConn> {
        HttpConn::connect(&self.ns("cl"), addr)
    }

    /// Adds a router (`rt`: 198.51.100.254 / 2001:db8:1::fe on the lab segment, 192.0.2.254 /
    /// 2001:db8:2::fe on a link of its own) and real server `rs{i}` behind it (routed_ip4(i),
    /// routed_ip6(i)) running apache2; no VIPs or tunnel setup (the test does that, as an
    /// operator would). The router's segment-side MTU is `segment_mtu`: with less than 1500, the
    /// server's large replies to the client need path-MTU discovery, whose ICMP errors go to the
    /// VIP, that is to the director. The director routes 192.0.2.0/24 and 2001:db8:2::/64 via the
    /// router and forwards IP (which TUN forwarding needs).
    pub fn add_routed_real(&mut self, i: usize, segment_mtu: u32) -> Result<()> {
        let sw = self.ns("sw");
        let rt = self.ns("rt");
        let rs = self.ns(&format!("rs{i}"));
        create(&rt)?;
        create(&rs)?;
        ip(&[
            "-n", &sw, "link", "add", "p-rt", "type", "veth", "peer", "name", "eth0", "netns", &rt,
        ])?;
        ip(&[
            "-n",
            &sw,
            "link",
            "set",
            "p-rt",
            "master",
            "br0",
            "mtu",
            &segment_mtu.to_string(),
            "up",
        ])?;
        ip(&[
            "-n", &rt, "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", &rs,
        ])?;
        let (v4, v6) = (routed_ip4(i), routed_ip6(i));
        let script = format!(
            "set -e
            ip link set eth0 mtu {segment_mtu} up
            ip link set eth1 up
            ip addr add 198.51.100.254/24 dev eth0
            ip addr add 2001:db8:1::fe/64 dev eth0 nodad
            ip addr add 192.0.2.254/24 dev eth1
            ip addr add 2001:db8:2::fe/64 dev eth1 nodad
            ip route add 203.0.113.0/24 via 198.51.100.2
            ip -6 route add 2001:db8:10::/64 via 2001:db8:1::2
            sysctl -qw net.ipv4.conf.all.forwarding=1 net.ipv6.conf.all.forwarding=1
            ethtool -K eth0 tx off >/dev/null
            ethtool -K eth1 tx off >/dev/null"
        );
        let out = sh(&rt, &script)?;
        if !out.status.success() {
            bail!("router setup: {}", String::from_utf8_lossy(&out.stderr));
        }
        let script = format!(
            "set -e
            ip link set eth0 up
            ip addr add {v4}/24 dev eth0
            ip addr add {v6}/64 dev eth0 nodad
            ip route add default via 192.0.2.254
            ip -6 route add default via 2001:db8:2::fe
            ethtool -K eth0 tx off >/dev/null"
        );
        let out = sh(&rs, &script)?;
        if !out.status.success() {
            bail!(
                "routed real server setup: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let out = sh(
            &self.ns("dir"),
            "set -e
            ip route add 192.0.2.0/24 via 198.51.100.254
            ip -6 route add 2001:db8:2::/64 via 2001:db8:1::fe
            sysctl -qw net.ipv4.conf.all.forwarding=1 net.ipv6.conf.all.forwarding=1",
        )?;
        if !out.status.success() {
            bail!("director routes: {}", String::from_utf8_lossy(&out.stderr));
        }
        self.start_apache_at(i, &v4)
    }

    /// A UDP echo server in each real server's namespace on port 5353 (both families),
    /// answering "rsN" to every datagram, until the returned guard is dropped.
    pub fn udp_echo(&self) -> UdpEcho {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (1..=self.reals)
            .map(|i| {
                let ns = self.ns(&format!("rs{i}"));
                let stop = stop.clone();
                std::thread::spawn(move || {
                    netns::in_netns(&ns, move || {
                        let sock = std::net::UdpSocket::bind("[::]:5353").expect("bind [::]:5353");
                        sock.set_read_timeout(Some(Duration::from_millis(100)))
                            .unwrap();
                        let mut buf = [0u8; 512];
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            if let Ok((_, from)) = sock.recv_from(&mut buf) {
                                let _ = sock.send_to(format!("rs{i}").as_bytes(), from);
                            }
                        }
                    })
                    .expect("echo server");
                })
            })
            .collect();
        UdpEcho { stop, threads }
    }

    /// `n` datagrams from the client to `target`, each from a socket of its own (a flow of its
    /// own) connected to it, so only answers from `target` count: the answers, "no answer"
    /// where none came after three tries.
    pub fn udp_ask(&self, target: SocketAddr, n: usize) -> Vec<String> {
        netns::in_netns(&self.ns("cl"), move || {
            (0..n)
                .map(|_| {
                    let local = if target.is_ipv4() {
                        "0.0.0.0:0"
                    } else {
                        "[::]:0"
                    };
                    let s = std::net::UdpSocket::bind(local).unwrap();
                    s.connect(target).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    let mut buf = [0u8; 64];
                    // A first datagram may wait for the director's kernel to resolve a neighbour.
                    for _ in 0..3 {
                        s.send(b"ping").unwrap();
                        if let Ok(n) = s.recv(&mut buf) {
                            return String::from_utf8_lossy(&buf[..n]).into_owned();
                        }
                    }
                    String::from("no answer")
                })
                .collect::<Vec<String>>()
        })
        .expect("the client's namespace")
    }

    /// Real server `i`'s apache access log: one line per request, "CLIENT LOCAL_PORT PATH".
    pub fn access_log(&self, i: usize) -> String {
        fs::read_to_string(self.rs_dir(i).join("access.log")).unwrap_or_default()
    }

    /// Path of a real server's apache pid file.
    pub fn rs_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("rs{i}"))
    }

    fn cleanup(&mut self) {
        let _ = self.xvsd.stop_within(Duration::from_secs(5));
        self.pass.clear();
        netns::destroy_all(&self.prefix);
        // The pins (and with them the director's link and maps) go with the bpffs instance.
        netns::unmount_all(&self.bpffs);
        let _ = fs::remove_dir(&self.bpffs);
        for (_, mut c) in self.apaches.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Logs, state and web roots: kept for a failed test to be looked at (the next run with
        // the same tag removes them), removed after a passing one.
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Attaches the XDP_PASS program (native mode) to interfaces `ifaces` of namespace `ns`: the
/// peers of a director's veths, into which native XDP_TX delivers only when they run XDP too.
/// The programs stay attached while the returned object lives.
pub fn attach_pass(ns: &str, ifaces: &[&str]) -> Result<Ebpf> {
    let ifaces: Vec<String> = ifaces.iter().map(|i| i.to_string()).collect();
    netns::in_netns(ns, move || -> Result<Ebpf> {
        let mut ebpf = Ebpf::load(crate::object::AUX)?;
        let prog: &mut Xdp = ebpf
            .program_mut(lb_common::names::PROG_PASS)
            .context("xvs_pass program")?
            .try_into()?;
        prog.load()?;
        for iface in &ifaces {
            prog.attach(iface, XdpMode::Driver)
                .with_context(|| format!("XDP_PASS on {iface}"))?;
        }
        Ok(ebpf)
    })?
}

/// Connects namespace `ns` to `bridge` in namespace `sw` through a veth (`port` on the bridge,
/// `ifname` in `ns`) with these addresses (/24 and /64), checksum offload off.
pub fn plug(
    sw: &str,
    bridge: &str,
    ns: &str,
    port: &str,
    ifname: &str,
    v4: &str,
    v6: &str,
) -> Result<()> {
    ip(&[
        "-n", sw, "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", ns,
    ])?;
    ip(&["-n", sw, "link", "set", port, "master", bridge, "up"])?;
    ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", ifname])?;
    ip(&[
        "-n",
        ns,
        "addr",
        "add",
        &format!("{v6}/64"),
        "dev",
        ifname,
        "nodad",
    ])?;
    ip(&["-n", ns, "link", "set", ifname, "up"])?;
    // XDP_TX'd frames carry no checksum-offload state: senders must fill checksums in.
    netns::run(cmd_in(ns, "ethtool").args(["-K", ifname, "tx", "off"]))?;
    Ok(())
}

/// Starts apache2 as real server `i` in namespace `ns`, its configuration, logs and web root
/// (`/` answers "rsN", `/big` is 1 MiB; keep-alive without limits) in `DIR/rsN`; waits until
/// it answers on `addr`. The caller kills the returned process.
pub fn spawn_apache(ns: &str, lab_dir: &Path, i: usize, addr: &str) -> Result<Child> {
    let dir = lab_dir.join(format!("rs{i}"));
    let www = dir.join("www");
    fs::create_dir_all(&www)?;
    fs::write(www.join("index.html"), format!("rs{i}\n"))?;
    // 1 MiB file for downloads.
    fs::write(www.join("big"), vec![b'x'; 1 << 20])?;
    let d = dir.display();
    let conf = format!(
        "ServerName rs{i}\n\
         Listen 80\n\
         Listen 8080\n\
         PidFile {d}/httpd.pid\n\
         ErrorLog {d}/error.log\n\
         CustomLog {d}/access.log \"%a %{{local}}p %U\"\n\
         DefaultRuntimeDir {d}\n\
         Mutex file:{d}\n\
         LoadModule mpm_event_module /usr/lib/apache2/modules/mod_mpm_event.so\n\
         LoadModule authz_core_module /usr/lib/apache2/modules/mod_authz_core.so\n\
         LoadModule dir_module /usr/lib/apache2/modules/mod_dir.so\n\
         User www-data\nGroup www-data\n\
         DocumentRoot {d}/www\n\
         DirectoryIndex index.html\n\
         KeepAlive On\nKeepAliveTimeout 120\nMaxKeepAliveRequests 0\n\
         <Directory {d}/www>\n  Require all granted\n</Directory>\n\
         IncludeOptional {d}/extra.conf\n"
    );
    let conf_path = dir.join("httpd.conf");
    fs::write(&conf_path, conf)?;
    // www-data must reach the document root.
    for p in [lab_dir, &dir, &www] {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(p, fs::Permissions::from_mode(0o755))?;
    }
    let log = fs::File::create(dir.join("stderr.log"))?;
    let mut child = cmd_in(ns, "apache2")
        .arg("-f")
        .arg(&conf_path)
        .arg("-DFOREGROUND")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("spawning apache2")?;
    let url = format!("http://{addr}/");
    let up = poll(
        Duration::from_secs(15),
        &format!("apache2 on rs{i}"),
        || {
            let out = cmd_in(ns, "curl")
                .args(["-s", "-m", "1", &url])
                .output()
                .ok()?;
            (String::from_utf8_lossy(&out.stdout) == format!("rs{i}\n")).then_some(())
        },
    );
    if let Err(e) = up {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e.context(
            fs::read_to_string(dir.join("error.log")).unwrap_or_default()
                + &fs::read_to_string(dir.join("stderr.log")).unwrap_or_default(),
        ));
    }
    Ok(child)
}

/// A kept-alive HTTP/1.1 connection from the client.
pub struct HttpConn {
    stream: TcpStream,
}

impl HttpConn {
    /// Opens a TCP connection from namespace `ns` (it stays in that namespace); reads time out
    /// after 5 s.
    pub fn connect(ns: &str, addr: SocketAddr) -> Result<HttpConn> {
        let stream = netns::in_netns(ns, move || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        })??;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(HttpConn { stream })
    }

    /// The client's end of the connection (its address and port).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.stream.local_addr()?)
    }

    /// GET / and return the body, trimmed.
    pub fn get(&mut self) -> Result<String> {
        self.stream
            .write_all(b"GET / HTTP/1.1\r\nHost: lab\r\n\r\n")?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                bail!("connection closed");
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if let Some(head_end) = text.find("\r\n\r\n") {
                let len = text[..head_end]
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .context("no Content-Length")?;
                if buf.len() >= head_end + 4 + len {
                    return Ok(text[head_end + 4..head_end + 4 + len].trim().to_string());
                }
            }
        }
    }
}

/// The lab's UDP echo servers (`Lab::udp_echo`), stopped and joined when dropped.
pub struct UdpEcho {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
