//! Network namespaces for tests and the lab: create, run commands inside, run code inside,
//! and remove them with every process they hold.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output, Stdio},
};

use anyhow::{bail, Context, Result};

/// Runs a command and fails with its stderr when it fails.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(out)
}

/// `ip ARGS...`.
pub fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args)).map(|_| ())
}

/// A command that runs inside namespace `ns`.
pub fn cmd_in(ns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]);
    c
}

/// Runs a shell command inside `ns`.
pub fn sh(ns: &str, script: &str) -> Result<Output> {
    run(cmd_in(ns, "sh").args(["-c", script]))
}

/// Creates a namespace with loopback up and IPv6 duplicate-address detection off (so addresses
/// are usable at once).
pub fn create(ns: &str) -> Result<()> {
    ip(&["netns", "add", ns])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    sh(
        ns,
        "sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0",
    )?;
    Ok(())
}

/// Namespaces whose name starts with `prefix`.
pub fn list(prefix: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// Kills every process in `ns` and deletes it. Errors are ignored: this runs on cleanup paths.
pub fn destroy(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: plain kill(2).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(Stdio::null())
        .status();
}

/// Removes every namespace whose name starts with `prefix` (leftovers of a crashed run).
pub fn destroy_all(prefix: &str) {
    for ns in list(prefix) {
        destroy(&ns);
    }
}

/// Runs `f` on a thread that has entered namespace `ns`; sockets it opens stay in `ns`.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    std::thread::spawn(move || {
        // SAFETY: setns on this thread only, with a namespace fd we own.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(anyhow::anyhow!(
                "setns: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in {ns} panicked"))?
}

/// Spawns a thread that enters namespace `ns` and runs `f`.
pub fn spawn_in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<std::thread::JoinHandle<Result<T>>> {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    Ok(std::thread::spawn(move || {
        // SAFETY: setns on this thread only, with a namespace fd we own.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(anyhow::anyhow!(
                "setns: {}",
                std::io::Error::last_os_error()
            ));
        }
        f()
    }))
}

/// Mounts a new bpffs instance on `dir` (in this process's mount namespace).
pub fn mount_bpffs(dir: &std::path::Path) -> Result<()> {
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let target = c(&dir.display().to_string());
    // SAFETY: valid NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            c("bpf").as_ptr(),
            target.as_ptr(),
            c("bpf").as_ptr(),
            0,
            c("mode=0700").as_ptr().cast(),
        )
    };
    if rc != 0 {
        bail!(
            "mount -t bpf bpf {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Unmounts everything mounted on `dir` (lazily: a mount still in use goes when it is no
/// longer used). Errors are ignored: this runs on cleanup paths.
pub fn unmount_all(dir: &std::path::Path) {
    let Ok(target) = std::ffi::CString::new(dir.display().to_string()) else {
        return;
    };
    // Stacked mounts come off one at a time; EINVAL once nothing is mounted there.
    for _ in 0..16 {
        // SAFETY: valid NUL-terminated path.
        if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
            break;
        }
    }
}
