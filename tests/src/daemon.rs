//! A lone xvsd for control-plane tests: the director on a veth in its own namespace, with no
//! traffic, its socket, state, log and bpffs (pins) in a scratch directory. Everything is
//! removed on drop.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output},
};

use anyhow::Result;

use crate::{lab::default_bin_dir, netns, xvsd::XvsdProcess};

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
    xvsd: XvsdProcess,
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
        let socket = dir.join("xvsd.sock");
        let state_dir = dir.join("state");
        let args = [
            "--iface",
            "d0",
            "--xdp-mode",
            "generic",
            "--conn-table-size",
            "65536",
            "--socket",
        ]
        .map(String::from)
        .into_iter()
        .chain([
            socket.display().to_string(),
            "--state-dir".into(),
            state_dir.display().to_string(),
            "--pin-dir".into(),
            bpffs.join("d0").display().to_string(),
        ])
        .collect();
        let xvsd = XvsdProcess::new(
            &ns,
            &default_bin_dir(),
            &socket,
            &dir.join("xvsd.log"),
            args,
        );
        let x = Xvsd {
            socket,
            state_dir,
            bpffs,
            dir,
            ns,
            xvsd,
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
        self.xvsd.bin_dir()
    }

    /// Starts xvsd with extra arguments and waits until it answers.
    pub fn start(&mut self, args: &[&str]) -> Result<()> {
        self.xvsd.start(args)
    }

    /// Starts xvsd with arguments it must refuse; returns its exit status once it stopped.
    pub fn start_refused(&mut self, args: &[&str]) -> Result<ExitStatus> {
        self.xvsd.start_refused(args)
    }

    /// xvsd's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.xvsd.pid()
    }

    /// Kills xvsd with SIGKILL (no cleanup of any kind) and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.xvsd.kill();
    }

    /// Stops xvsd with SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) -> Result<()> {
        self.xvsd.stop()
    }

    /// Runs xvsd (its usual arguments and `args`) to completion: `--cleanup` and the like.
    pub fn once(&self, args: &[&str]) -> Result<Output> {
        self.xvsd.once(args)
    }

    /// What xvsd logged so far.
    pub fn log(&self) -> String {
        self.xvsd.log_text()
    }

    /// Runs xvsadm against this daemon.
    pub fn xvsadm(&self, args: &[&str]) -> Result<Output> {
        self.xvsd.xvsadm(args)
    }

    /// Runs xvsadm with `stdin` as its standard input.
    pub fn xvsadm_in(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        self.xvsd.xvsadm_in(args, stdin)
    }

    /// The xvsadm command line for this daemon, not started.
    pub fn xvsadm_cmd(&self, args: &[&str]) -> Command {
        self.xvsd.xvsadm_cmd(args)
    }

    /// Runs xvsadm and fails with its stderr when it fails; returns stdout.
    pub fn xvsadm_ok(&self, args: &[&str]) -> Result<String> {
        self.xvsd.xvsadm_ok_in(args, None)
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
