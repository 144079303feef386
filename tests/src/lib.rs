//! Shared pieces of xvs's privileged tests and of the lab: packet builders, the director loaded
//! for BPF_PROG_TEST_RUN, and network-namespace topologies.

pub mod bench;
pub mod bird;
pub mod daemon;
pub mod decap;
pub mod ecmp;
pub mod flood;
pub mod lab;
pub mod load;
pub mod netns;
pub mod object;
pub mod packets;
pub mod progtest;
pub mod segment;
pub mod tunnel;
pub mod vrrp;
pub mod xvsd;

/// Fails (never skips) when not root: CI runs as root, so a privileged test that cannot run
/// there is a failure with a reason.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (BPF, network namespaces); run `cargo xtask test` as root"
    );
}

/// Polls `f` every 20 ms until it returns Some or `timeout` passes.
pub fn poll<T>(
    timeout: std::time::Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if std::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
