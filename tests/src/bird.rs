//! BIRD 2 (Debian's bird2) run by a test in one of its namespaces: the BGP speaker beside a
//! director, or the router in front of directors. Each instance has its own configuration,
//! control socket and log in the test's scratch directory, runs in the foreground as the test's
//! child, and is killed when dropped.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::netns::cmd_in;

/// A running BIRD.
pub struct Bird {
    ns: String,
    socket: PathBuf,
    log: PathBuf,
    child: Child,
}

impl Bird {
    /// Writes `config` to `DIR/NAME.conf` and starts BIRD on it in namespace `ns`; waits until
    /// its control socket answers.
    pub fn start(ns: &str, dir: &Path, name: &str, config: &str) -> Result<Bird> {
        let conf = dir.join(format!("{name}.conf"));
        let socket = dir.join(format!("{name}.ctl"));
        let log = dir.join(format!("{name}.log"));
        fs::write(&conf, config)?;
        let _ = fs::remove_file(&socket);
        let child = cmd_in(ns, "bird")
            .arg("-f")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?)
            .spawn()
            .context("starting bird (Debian package bird2)")?;
        let mut bird = Bird {
            ns: ns.to_string(),
            socket,
            log,
            child,
        };
        crate::poll(Duration::from_secs(10), "bird's control socket", || {
            bird.birdc("show status")
                .ok()
                .filter(|s| s.contains("Daemon is up"))
        })
        .with_context(|| format!("bird {name} in {ns}: {}", bird.log_text()))?;
        if let Some(status) = bird.child.try_wait()? {
            bail!("bird {name} exited ({status}): {}", bird.log_text());
        }
        Ok(bird)
    }

    /// Runs a birdc command; returns its output.
    pub fn birdc(&self, command: &str) -> Result<String> {
        let out = cmd_in(&self.ns, "birdc")
            .arg("-s")
            .arg(&self.socket)
            .args(command.split_whitespace())
            .output()?;
        if !out.status.success() {
            bail!("birdc {command}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The process id (to stop it with SIGSTOP, as a hung machine).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What BIRD wrote to stderr.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
