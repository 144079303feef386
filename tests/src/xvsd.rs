//! One xvsd process in a network namespace, and xvsadm against its socket: what the lab
//! (`lab::Lab`) and the lone daemon of the control-plane tests (`daemon::Xvsd`) share. xvsd's
//! output goes to a log file, appended across restarts.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{netns, poll};

/// An xvsd command line in a namespace, and the process while it runs.
pub struct XvsdProcess {
    ns: String,
    bin_dir: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    /// Arguments of every start (interface, socket, pins, state...).
    args: Vec<String>,
    child: Option<Child>,
}

impl XvsdProcess {
    /// xvsd from `bin_dir` in namespace `ns` with `args` (which should name `socket`), logging to
    /// `log`. Not started.
    pub fn new(ns: &str, bin_dir: &Path, socket: &Path, log: &Path, args: Vec<String>) -> Self {
        XvsdProcess {
            ns: ns.to_string(),
            bin_dir: bin_dir.to_path_buf(),
            socket: socket.to_path_buf(),
            log: log.to_path_buf(),
            args,
            child: None,
        }
    }

    /// Replaces every value of the option `name` (`--iface`...) in the arguments of every
    /// start by `values`, given in that order where the option first was (or at the end).
    pub fn set_option(&mut self, name: &str, values: &[&str]) {
        let mut kept = Vec::with_capacity(self.args.len());
        let mut at = None;
        let mut args = std::mem::take(&mut self.args).into_iter();
        while let Some(a) = args.next() {
            if a == name {
                at.get_or_insert(kept.len());
                args.next();
            } else {
                kept.push(a);
            }
        }
        let at = at.unwrap_or(kept.len());
        let new = values
            .iter()
            .flat_map(|v| [name.to_string(), v.to_string()]);
        kept.splice(at..at, new);
        self.args = kept;
    }

    /// Where xvsd and xvsadm are.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The command line with `extra` arguments for one start.
    pub fn command(&self, extra: &[&str]) -> Command {
        let mut cmd = netns::cmd_in(&self.ns, &self.bin_dir.join("xvsd").display().to_string());
        cmd.args(&self.args).args(extra);
        cmd
    }

    /// Starts xvsd, its output appended to the log; does not wait.
    pub fn spawn(&mut self, extra: &[&str]) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = self
            .command(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning xvsd")?;
        self.child = Some(child);
        Ok(())
    }

    /// Starts xvsd and waits until it answers xvsadm (fails with its log if it exits first).
    pub fn start(&mut self, extra: &[&str]) -> Result<()> {
        self.spawn(extra)?;
        poll(Duration::from_secs(20), "xvsd to answer", || {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Some(Err(anyhow::anyhow!("xvsd exited: {status}")));
            }
            self.xvsadm(&["-L", "-n"])
                .ok()
                .filter(|o| o.status.success())
                .map(|_| Ok(()))
        })?
        .with_context(|| self.log_text())
    }

    /// Starts xvsd with arguments it must refuse; its exit status once it stopped.
    pub fn start_refused(&mut self, extra: &[&str]) -> Result<ExitStatus> {
        self.spawn(extra)?;
        let mut child = self.child.take().expect("spawned");
        poll(Duration::from_secs(20), "xvsd to exit", || {
            child.try_wait().ok().flatten()
        })
        .inspect_err(|_| {
            let _ = child.kill();
            let _ = child.wait();
        })
    }

    /// Runs xvsd to completion with its output captured (`--cleanup`, a refused start); fails
    /// if it still runs after 30 s.
    pub fn once(&self, extra: &[&str]) -> Result<Output> {
        let mut child = self
            .command(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("RUST_BACKTRACE", "0")
            .spawn()
            .context("spawning xvsd")?;
        let done = poll(Duration::from_secs(30), "xvsd to exit", || {
            child.try_wait().ok().flatten()
        });
        if done.is_err() {
            let _ = child.kill();
            let _ = child.wait();
            bail!("xvsd {extra:?} did not exit");
        }
        child.wait_with_output().context("reading xvsd's output")
    }

    /// xvsd's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills xvsd with SIGKILL (no cleanup of any kind) and reaps it.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill().context("killing xvsd")?;
            c.wait()?;
        }
        Ok(())
    }

    /// Stops xvsd with SIGTERM and waits up to `within` for a clean exit.
    pub fn stop_within(&mut self, within: Duration) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) on our child (`ip netns exec` execs into xvsd).
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let status = poll(within, "xvsd to exit", || c.try_wait().ok().flatten());
            let status = match status {
                Ok(s) => s,
                Err(e) => {
                    let _ = c.kill();
                    let _ = c.wait();
                    return Err(e);
                }
            };
            if !status.success() {
                bail!("xvsd exited with {status}");
            }
        }
        Ok(())
    }

    /// Stops xvsd with SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) -> Result<()> {
        self.stop_within(Duration::from_secs(10))
    }

    /// What xvsd logged so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The xvsadm command line for this daemon, not started.
    pub fn xvsadm_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.bin_dir.join("xvsadm"));
        c.arg("--socket").arg(&self.socket).args(args);
        c
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
            .spawn()
            .context("running xvsadm")?;
        if let Some(text) = stdin {
            c.stdin.take().expect("piped").write_all(text.as_bytes())?;
        }
        drop(c.stdin.take());
        Ok(c.wait_with_output()?)
    }

    /// Runs xvsadm (with `stdin`, if any) and fails with its stderr when it fails; returns
    /// stdout.
    pub fn xvsadm_ok_in(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let out = self.xvsadm_in(args, stdin)?;
        if !out.status.success() {
            bail!(
                "xvsadm {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for XvsdProcess {
    fn drop(&mut self) {
        let _ = self.stop_within(Duration::from_secs(5));
    }
}
