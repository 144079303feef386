//! Control-plane costs: applying many services through xvsadm, the daemon's memory, and the
//! kernel-reported memory of each map.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{netns, poll};

/// A throwaway xvsd on a veth in its own namespace.
pub struct Daemon {
    ns: String,
    socket: PathBuf,
    xvsadm: PathBuf,
    child: Child,
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
        let state = std::env::temp_dir().join("xvs-bench-cp-state");
        let _ = std::fs::remove_dir_all(&state);
        let child = netns::cmd_in(&ns, &bin_dir.join("xvsd").display().to_string())
            .args(["--iface", "d0", "--xdp-mode", "native", "--socket"])
            .arg(&socket)
            .arg("--state-dir")
            .arg(&state)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let d = Daemon {
            ns,
            socket,
            xvsadm: bin_dir.join("xvsadm"),
            child,
        };
        poll(Duration::from_secs(20), "xvsd", || {
            d.xvsadm(&["-L", "-n"], None).ok()
        })?;
        Ok(d)
    }

    /// Runs xvsadm, optionally with standard input; fails on a non-zero exit.
    pub fn xvsadm(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let mut c = Command::new(&self.xvsadm)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(text) = stdin {
            c.stdin.take().expect("piped").write_all(text.as_bytes())?;
        }
        drop(c.stdin.take());
        let out = c.wait_with_output()?;
        if !out.status.success() {
            bail!("xvsadm {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// xvsd's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        netns::destroy(&self.ns);
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join("xvs-bench-cp-state"));
    }
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
