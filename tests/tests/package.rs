//! The Debian package (`cargo xtask deb`, which `cargo xtask test` runs first): lintian finds
//! nothing unexplained; in a fresh Debian 12 root (mmdebstrap) booted with systemd-nspawn, it
//! installs, `systemd-analyze verify` accepts its units, `xvsd@IFACE` starts for real under its
//! hardening on a veth of a network namespace and is driven with the installed xvsadm
//! (`-A`, `-a`, `-L -n`, `systemctl reload`, a refused reload, a restart that adopts), and the
//! package removes (detaching the director) and purges without leftovers.
//!
//! The root is made once and kept as target/package-test/bookworm.tar (mmdebstrap, about a
//! minute, from Debian's mirror as the host's apt knows it); every run unpacks it afresh.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use xvs_tests::{netns, poll, require_root};

/// The network namespace the container runs in.
const NS: &str = "xvs-pkg";
/// The director's interface in it (a veth, so native XDP works).
const IFACE: &str = "xvs0";
/// Machine name of the container.
const MACHINE: &str = "xvs-pkg";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn work_dir() -> PathBuf {
    workspace().join("target/package-test")
}

/// Runs a command, failing with its output when it fails; returns stdout.
fn run(cmd: &mut Command) -> Result<String> {
    let out = netns::run(cmd)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Paths mounted at or below `dir` in this mount namespace.
fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m == &dir || m.starts_with(&format!("{dir}/")))
        .collect()
}

/// Removes the unpacked root, refusing while anything is mounted in it.
fn remove_root(root: &Path) -> Result<()> {
    if !root.exists() {
        return Ok(());
    }
    let mounted = mounts_under(root);
    ensure!(
        mounted.is_empty(),
        "not removing {}: still mounted there: {mounted:?}",
        root.display()
    );
    std::fs::remove_dir_all(root).with_context(|| format!("removing {}", root.display()))
}

/// The booted container, the namespace and the root; all removed on drop, also on failure.
struct Lab {
    root: PathBuf,
    nspawn: Option<Child>,
}

impl Lab {
    /// Stops the container: SIGTERM (systemd halts), then SIGKILL after a deadline.
    fn stop_container(&mut self) {
        let Some(mut child) = self.nspawn.take() else {
            return;
        };
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_container();
        netns::destroy(NS);
        if let Err(e) = remove_root(&self.root) {
            eprintln!("package test cleanup: {e:#}");
        }
    }
}

/// The PID (on the host) of the container's init: nspawn's child.
fn container_init(nspawn: u32) -> Option<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{nspawn}/task/{nspawn}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

/// A command run inside the container (every namespace of its init).
fn inside(init: u32, program: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.args(["-t", &init.to_string(), "-a", program]);
    c
}

/// Runs a shell script inside the container; stdout.
fn sh(init: u32, script: &str) -> Result<String> {
    run(inside(init, "sh").args(["-c", script]))
}

/// Makes (once) and unpacks a fresh Debian 12 root with systemd.
fn fresh_root(root: &Path) -> Result<()> {
    let tar = work_dir().join("bookworm.tar");
    if !tar.exists() {
        eprintln!("making the Debian 12 root (mmdebstrap, about a minute)");
        // A fresh checkout has no target/package-test yet (mmdebstrap needs the parent).
        std::fs::create_dir_all(work_dir())?;
        let partial = work_dir().join("bookworm.tar.partial");
        run(Command::new("mmdebstrap")
            .args(["--quiet", "--variant=apt", "--include=systemd,systemd-sysv"])
            .arg("--format=tar")
            .arg("bookworm")
            .arg(&partial))
        .context("mmdebstrap (needs Debian's mirror)")?;
        std::fs::rename(&partial, &tar)?;
    }
    std::fs::create_dir_all(root)?;
    run(Command::new("tar")
        .args(["--numeric-owner", "-xf"])
        .arg(&tar)
        .arg("-C")
        .arg(root))?;
    Ok(())
}

/// The director's listing, as the installed xvsadm prints it.
fn listing(init: u32) -> Result<String> {
    run(inside(init, "xvsadm").args(["-L", "-n"]))
}

#[test]
fn package_installs_runs_removes_and_purges() -> Result<()> {
    require_root();
    let started = Instant::now();
    let mut phase = Instant::now();
    let mut lap = |what: &str| {
        eprintln!("package test: {what} in {:.1?}", phase.elapsed());
        phase = Instant::now();
    };
    let deb = workspace().join(format!(
        "target/debian/xvs_{}-1_amd64.deb",
        env!("CARGO_PKG_VERSION")
    ));
    ensure!(
        deb.exists(),
        "{} is missing: `cargo xtask test` builds it first (or run `cargo xtask deb`)",
        deb.display()
    );

    // lintian: any tag that the package's overrides do not explain fails.
    let out = Command::new("lintian")
        .args(["--allow-root", "--fail-on", "error,warning,info", "--info"])
        .arg(&deb)
        .output()
        .context("running lintian (xtask installs it)")?;
    ensure!(
        out.status.success(),
        "lintian found tags without an override:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    lap("lintian");

    // Leftovers of a crashed run first: the namespace, then the root.
    netns::destroy(NS);
    let root = work_dir().join("root");
    remove_root(&root)?;
    let mut lab = Lab {
        root: root.clone(),
        nspawn: None,
    };
    fresh_root(&root)?;
    std::fs::copy(&deb, root.join("root/xvs.deb"))?;
    lap("fresh Debian root");

    netns::create(NS)?;
    netns::ip(&[
        "-n", NS, "link", "add", IFACE, "type", "veth", "peer", "name", "xvs0p",
    ])?;
    netns::ip(&["-n", NS, "link", "set", IFACE, "up"])?;
    netns::ip(&["-n", NS, "link", "set", "xvs0p", "up"])?;
    netns::ip(&["-n", NS, "addr", "add", "192.0.2.1/24", "dev", IFACE])?;

    // The capabilities xvsd@.service keeps must exist in the container to be kept, and
    // nspawn's own seccomp filter allows bpf() only when asked.
    let child = Command::new("systemd-nspawn")
        .arg("--directory")
        .arg(&root)
        .args(["--boot", "--console=pipe", "--register=no", "--keep-unit"])
        .args(["--machine", MACHINE])
        .arg(format!("--network-namespace-path=/run/netns/{NS}"))
        .arg("--capability=CAP_BPF,CAP_PERFMON,CAP_NET_ADMIN")
        .arg("--system-call-filter=bpf perf_event_open")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting systemd-nspawn (xtask installs systemd-container)")?;
    let nspawn = child.id();
    lab.nspawn = Some(child);
    let init = poll(Duration::from_secs(30), "the container's systemd", || {
        let init = container_init(nspawn)?;
        let out = inside(init, "systemctl")
            .arg("is-system-running")
            .output()
            .ok()?;
        let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (state == "running" || state == "degraded").then_some(init)
    })
    .context("systemd did not boot in the Debian root (systemd-nspawn --boot)")?;
    lap("container boot");

    // Install, with systemd running (the postinst reloads it).
    run(inside(init, "dpkg").args(["-i", "/root/xvs.deb"]))?;
    for path in [
        "/usr/sbin/xvsd",
        "/usr/sbin/xvsadm",
        "/usr/sbin/xvs-realserver",
        "/lib/systemd/system/xvsd@.service",
        "/lib/systemd/system/xvs-bpffs.service",
        "/etc/xvs/xvs.toml",
        "/usr/share/man/man8/xvsd.8.gz",
        "/usr/share/man/man8/xvsadm.8.gz",
        "/usr/share/bash-completion/completions/xvsadm",
        "/usr/share/zsh/vendor-completions/_xvsd",
        "/usr/share/fish/vendor_completions.d/xvsadm.fish",
    ] {
        ensure!(
            root.join(path.trim_start_matches('/')).exists(),
            "{path} is not installed"
        );
    }
    // Every installed file matches the package's md5sums.
    run(inside(init, "dpkg").args(["--verify", "xvs"]))?;
    let conffiles = run(inside(init, "dpkg-query").args(["-W", "-f=${Conffiles}", "xvs"]))?;
    ensure!(
        conffiles.contains("/etc/xvs/xvs.toml"),
        "/etc/xvs/xvs.toml is not a conffile: {conffiles:?}"
    );
    // The installed man page is what the installed binary generates (it cannot drift).
    let page = sh(init, "zcat /usr/share/man/man8/xvsadm.8.gz")?;
    let generated = run(inside(init, "xvsadm").args(["--generate", "man"]))?;
    ensure!(
        page == generated,
        "xvsadm.8.gz differs from xvsadm --generate man"
    );
    ensure!(
        page.contains("add\\-service") && page.contains(".SH SYNOPSIS"),
        "xvsadm(8) lacks its options"
    );

    // The bash completion loads and completes xvsadm's options.
    let words = run(inside(init, "bash").args([
        "-c",
        ". /usr/share/bash-completion/completions/xvsadm && complete -p xvsadm && \
         COMP_WORDS=(xvsadm --add-s) COMP_CWORD=1 && _xvsadm xvsadm --add-s xvsadm && \
         echo \"${COMPREPLY[@]}\"",
    ]))?;
    ensure!(
        words.contains("--add-service"),
        "the bash completion does not complete --add-s: {words}"
    );

    let verify = inside(init, "systemd-analyze")
        .args(["verify", "--man=no"])
        .args([
            "/lib/systemd/system/xvsd@.service",
            "/lib/systemd/system/xvs-bpffs.service",
        ])
        .output()?;
    ensure!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    lap("install and verify");

    // The unit for real.
    let unit = format!("xvsd@{IFACE}.service");
    let journal = |init: u32| {
        sh(
            init,
            &format!("journalctl -u {unit} --no-pager -o cat | tail -n 30"),
        )
        .unwrap_or_default()
    };
    run(inside(init, "systemctl").args(["start", &unit]))?;
    poll(Duration::from_secs(30), "xvsd@ answering xvsadm", || {
        listing(init).ok()
    })
    .with_context(|| format!("{unit} did not come up:\n{}", journal(init)))?;
    let pid = sh(init, &format!("systemctl show -p MainPID --value {unit}"))?;
    let status = sh(init, &format!("cat /proc/{}/status", pid.trim()))?;
    // CAP_NET_ADMIN (12), CAP_PERFMON (38), CAP_BPF (39), and nothing else.
    let want = (1u64 << 12) | (1 << 38) | (1 << 39);
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16))
        .context("no CapEff in xvsd's status")??;
    ensure!(
        cap_eff == want,
        "xvsd runs with capabilities {cap_eff:#x}, the unit gives {want:#x}"
    );
    ensure!(
        status
            .lines()
            .any(|l| l.starts_with("NoNewPrivs:") && l.ends_with('1')),
        "xvsd runs without NoNewPrivileges"
    );
    let link = run(Command::new("ip").args(["-n", NS, "link", "show", IFACE]))?;
    ensure!(link.contains("xdp"), "no XDP program on {IFACE}: {link}");

    run(inside(init, "xvsadm").args(["-A", "-t", "192.0.2.10:80", "-s", "rr"]))?;
    // The real server is not there to answer ARP: xvsadm warns, the server is added.
    run(inside(init, "xvsadm").args(["-a", "-t", "192.0.2.10:80", "-r", "192.0.2.20", "-g"]))?;
    let l = listing(init)?;
    ensure!(
        l.contains("TCP  192.0.2.10:80 rr") && l.contains("-> 192.0.2.20:80"),
        "xvsadm -L -n after -A and -a:\n{l}"
    );

    // The configuration file is the whole configuration: a reload makes it so.
    let conf = root.join("etc/xvs/xvs.toml");
    let installed_conf = std::fs::read_to_string(&conf)?;
    std::fs::write(
        &conf,
        "[[service]]\ntcp = \"192.0.2.11:80\"\nscheduler = \"wrr\"\n\n  [[service.real]]\n  \
         address = \"192.0.2.21\"\n  weight = 2\n",
    )?;
    run(inside(init, "systemctl").args(["reload", &unit])).with_context(|| journal(init))?;
    let l = listing(init)?;
    ensure!(
        l.contains("TCP  192.0.2.11:80 wrr")
            && l.contains("-> 192.0.2.21:80")
            && !l.contains("192.0.2.10:80"),
        "xvsadm -L -n after systemctl reload:\n{l}"
    );
    // A file with an error: the reload fails, nothing changes.
    std::fs::write(
        &conf,
        "[[service]]\ntcp = \"192.0.2.12:80\"\nscheduler = \"nope\"\n",
    )?;
    let refused = inside(init, "systemctl").args(["reload", &unit]).output()?;
    ensure!(
        !refused.status.success(),
        "systemctl reload accepted an invalid configuration"
    );
    ensure!(
        journal(init).contains("/etc/xvs/xvs.toml:3:"),
        "the journal does not say which line is wrong:\n{}",
        journal(init)
    );
    ensure!(listing(init)? == l, "a refused reload changed the listing");
    std::fs::write(
        &conf,
        format!("{installed_conf}\n[[service]]\ntcp = \"192.0.2.11:80\"\nscheduler = \"wrr\"\n"),
    )?;
    // A restart adopts the pinned data plane: the pins outlived the unit's mount namespace.
    run(inside(init, "systemctl").args(["restart", &unit]))?;
    let l = poll(Duration::from_secs(30), "xvsd@ after a restart", || {
        listing(init).ok()
    })?;
    ensure!(
        l.contains("TCP  192.0.2.11:80 wrr") && !l.contains("192.0.2.21"),
        "xvsadm -L -n after the restart:\n{l}"
    );
    ensure!(
        journal(init).contains("adopted the pinned data plane"),
        "the restarted xvsd did not adopt its pins:\n{}",
        journal(init)
    );
    ensure!(
        root.join(format!("var/lib/xvs/{IFACE}.json")).exists(),
        "no state file in StateDirectory=/var/lib/xvs"
    );
    lap("xvsd@ started, driven, reloaded, restarted");

    // Remove: the director is stopped and detached; the conffile and the state stay.
    run(inside(init, "dpkg").args(["-r", "xvs"]))?;
    let link = run(Command::new("ip").args(["-n", NS, "link", "show", IFACE]))?;
    ensure!(
        !link.contains("xdp"),
        "XDP still attached after dpkg -r: {link}"
    );
    ensure!(
        !sh(
            init,
            &format!("ls /sys/fs/bpf/xvs/{IFACE} 2>/dev/null || true")
        )?
        .contains("link"),
        "pins left after dpkg -r"
    );
    let active = inside(init, "systemctl")
        .args(["is-active", &unit])
        .output()?;
    ensure!(
        !active.status.success(),
        "{unit} still active after dpkg -r"
    );
    for gone in [
        "usr/sbin/xvsd",
        "usr/sbin/xvsadm",
        "lib/systemd/system/xvsd@.service",
    ] {
        ensure!(!root.join(gone).exists(), "/{gone} left after dpkg -r");
    }
    ensure!(conf.exists(), "dpkg -r removed the conffile");
    // Purge: nothing of the package is left.
    run(inside(init, "dpkg").args(["-P", "xvs"]))?;
    for gone in ["etc/xvs", "var/lib/xvs"] {
        ensure!(!root.join(gone).exists(), "/{gone} left after dpkg -P");
    }
    let status = inside(init, "dpkg-query").args(["-W", "xvs"]).output()?;
    ensure!(
        !status.status.success(),
        "dpkg still knows xvs after dpkg -P: {}",
        String::from_utf8_lossy(&status.stdout)
    );
    lap("remove and purge");

    lab.stop_container();
    drop(lab);
    eprintln!("package test: total {:.1?}", started.elapsed());
    if !netns::list(NS).is_empty() {
        bail!("namespace {NS} left behind");
    }
    Ok(())
}
