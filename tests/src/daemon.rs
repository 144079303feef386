//! A lone xvsd for control-plane tests: the director on a veth in its own namespace, with no
//! traffic, its socket, state, log and bpffs (pins) in a scratch directory. Everything is
//! removed on drop.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{lab::default_bin_dir, netns, poll};

/// A director namespace and the xvsd running in it (or not, between restarts).
pub struct Xvsd {
    ns: String,
    /// Scratch directory: socket, state, log, files a test writes.
    pub dir: PathBuf,
    /// Control socket.
    pub socket: PathBuf,
    /// `--state-dir`.
    pub state_dir: PathBuf,
    /// Mount point of this daemon's bpffs instance (its pins go with it).
    bpffs: PathBuf,
    bin_dir: PathBuf,
    child: Option<Child>,
}

impl Xvsd {
    /// Creates namespace `xvs-<tag>-d` with a veth pair (xvsd attaches to `d0`) and the scratch
    /// directory `/tmp/xvs-<tag>`; leftovers of an earlier run are removed first. xvsd is not
    /// started yet.
    pub fn new(tag: &str) -> Result<Xvsd> {
        crate::require_root();
        let ns = format!("xvs-{tag}-d");
        netns::destroy(&ns);
        let dir = std::env::temp_dir().join(format!("xvs-{tag}"));
        let bpffs = dir.join("bpf");
        // A crashed run's bpffs first: its pins are released with it.
        netns::unmount_all(&bpffs);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&bpffs)?;
        netns::mount_bpffs(&bpffs)?;
        let x = Xvsd {
            socket: dir.join("xvsd.sock"),
            state_dir: dir.join("state"),
            bpffs,
            dir,
            ns,
            bin_dir: default_bin_dir(),
            child: None,
        };
        netns::create(&x.ns)?;
        netns::ip(&[
            "-n", &x.ns, "link", "add", "d0", "type", "veth", "peer", "name", "d1",
        ])?;
        netns::ip(&["-n", &x.ns, "link", "set", "d0", "up"])?;
        netns::ip(&["-n", &x.ns, "link", "set", "d1", "up"])?;
        netns::ip(&["-n", &x.ns, "addr", "add", "198.51.100.2/24", "dev", "d0"])?;
        Ok(x)
    }

    /// Where xvsd and xvsadm are.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    fn spawn(&mut self, args: &[&str]) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("xvsd.log"))?;
        let child = netns::cmd_in(&self.ns, &self.bin_dir.join("xvsd").display().to_string())
            .args(["--iface", "d0", "--xdp-mode", "generic"])
            .args(["--conn-table-size", "65536", "--socket"])
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--pin-dir")
            .arg(self.bpffs.join("d0"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning xvsd")?;
        self.child = Some(child);
        Ok(())
    }

    /// Starts xvsd with extra arguments and waits until it answers.
    pub fn start(&mut self, args: &[&str]) -> Result<()> {
        self.spawn(args)?;
        poll(Duration::from_secs(20), "xvsd to answer", || {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Some(Err(anyhow::anyhow!("xvsd exited: {status}")));
            }
            self.xvsadm(&["-L", "-n"])
                .ok()
                .filter(|o| o.status.success())
                .map(|_| Ok(()))
        })?
        .with_context(|| self.log())
    }

    /// Starts xvsd with arguments it must refuse; returns its exit status once it stopped.
    pub fn start_refused(&mut self, args: &[&str]) -> Result<ExitStatus> {
        self.spawn(args)?;
        let mut child = self.child.take().expect("spawned");
        poll(Duration::from_secs(20), "xvsd to exit", || {
            child.try_wait().ok().flatten()
        })
        .inspect_err(|_| {
            let _ = child.kill();
            let _ = child.wait();
        })
    }

    /// xvsd's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills xvsd with SIGKILL (no cleanup of any kind) and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops xvsd with SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) on our child (`ip netns exec` execs into xvsd).
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let status = poll(Duration::from_secs(10), "xvsd to exit", || {
                c.try_wait().ok().flatten()
            })?;
            if !status.success() {
                bail!("xvsd exited with {status}");
            }
        }
        Ok(())
    }

    /// What xvsd logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("xvsd.log")).unwrap_or_default()
    }

    /// Runs xvsadm against this daemon.
    pub fn xvsadm(&self, args: &[&str]) -> Result<Output> {
        self.xvsadm_in(args, None)
    }

    /// Runs xvsadm with `stdin` as its standard input.
    pub fn xvsadm_in(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        let mut c = self
            .xvsadm_cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(text) = stdin {
            c.stdin.take().expect("piped").write_all(text.as_bytes())?;
        }
        drop(c.stdin.take());
        Ok(c.wait_with_output()?)
    }

    /// The xvsadm command line for this daemon, not started.
    pub fn xvsadm_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.bin_dir.join("xvsadm"));
        c.arg("--socket").arg(&self.socket).args(args);
        c
    }

    /// Runs xvsadm and fails with its stderr when it fails; returns stdout.
    pub fn xvsadm_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.xvsadm(args)?;
        if !out.status.success() {
            bail!(
                "xvsadm {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Xvsd {
    fn drop(&mut self) {
        self.kill9();
        netns::destroy(&self.ns);
        netns::unmount_all(&self.bpffs);
        let _ = fs::remove_dir_all(&self.dir);
    }
}
