//! Installs what a fresh machine lacks, idempotently, saying what it does: the nightly's
//! rust-src, bpf-linker built against the nightly's own LLVM, and the Debian packages the lab
//! and the tests use.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

/// Debian packages the lab and the end-to-end tests need, with a binary each provides.
const PACKAGES: &[(&str, &str)] = &[
    ("apache2", "/usr/sbin/apache2"),
    ("curl", "/usr/bin/curl"),
    ("wrk", "/usr/bin/wrk"),
    ("iproute2", "/usr/sbin/ip"),
    ("ethtool", "/usr/sbin/ethtool"),
    ("bpftool", "/usr/sbin/bpftool"),
    ("tcpdump", "/usr/bin/tcpdump"),
    // The flood test's random-source SYN flood.
    ("hping3", "/usr/sbin/hping3"),
    // The HTTPS health-check test makes its real servers' self-signed certificates.
    ("openssl", "/usr/bin/openssl"),
    // lb-core's tests/sync_tshark.rs checks our IPVS sync messages with its "ipvs" dissector.
    ("tshark", "/usr/bin/tshark"),
    // BGP for the announcement and several-director tests (a speaker beside each director,
    // a router in front).
    ("bird2", "/usr/sbin/bird"),
    // VRRP for the active-backup test: keepalived moves the VIP between two directors; its
    // sample configurations are what `xvsadm import keepalived` is tested on.
    ("keepalived", "/usr/sbin/keepalived"),
    // promtool: tests/tests/observability.rs checks and unit-tests examples/prometheus's
    // alerting rules and the dashboard's PromQL (Debian 12 ships it only in this package: 19 MB
    // download, 96 MB installed, about 10 s; where systemd runs, the package also starts a
    // Prometheus server on :9090 of the host, which no test uses or minds).
    ("prometheus", "/usr/bin/promtool"),
    // /etc/services: xvsadm names ports as ipvsadm does (`http`) and reads them in rules.
    ("netbase", "/etc/services"),
    // tests/tests/package.rs: lintian checks the .deb, mmdebstrap makes the fresh Debian root
    // it is installed in, systemd-container boots that root (systemd-nspawn) to start the unit.
    ("lintian", "/usr/bin/lintian"),
    ("mmdebstrap", "/usr/bin/mmdebstrap"),
    ("systemd-container", "/usr/bin/systemd-nspawn"),
    (
        "fonts-dejavu-core",
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    ),
];

fn quiet_ok(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Adds `component` to `toolchain` when it is missing (a few seconds).
fn ensure_component(toolchain: &str, component: &str) -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        toolchain,
        "--installed",
    ]))
    .with_context(|| format!("the {toolchain} toolchain is needed (rustup toolchain list)"))?;
    if !installed.lines().any(|l| l.starts_with(component)) {
        eprintln!("xtask: installing {component} for the {toolchain} toolchain");
        crate::run_cmd(Command::new("rustup").args([
            "component",
            "add",
            component,
            "--toolchain",
            toolchain,
        ]))?;
    }
    Ok(())
}

/// rustfmt and clippy, for `cargo xtask lint`: stable's for the workspace, nightly's clippy for
/// the eBPF crates.
pub fn lint_components() -> Result<()> {
    ensure_component("stable", "rustfmt")?;
    ensure_component("stable", "clippy")?;
    ensure_component("nightly", "clippy")
}

/// rust-src for the nightly, and bpf-linker.
pub fn ebpf_toolchain() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("the nightly toolchain is needed for the eBPF build (rustup toolchain list)")?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask: installing rust-src for the nightly toolchain");
        crate::run_cmd(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    // rustup run puts the nightly's lib directory (its libLLVM) on the library path.
    if quiet_ok(Command::new("rustup").args(["run", "nightly", "bpf-linker", "--version"])) {
        return Ok(());
    }
    eprintln!("xtask: building bpf-linker against the nightly's LLVM (about a minute)");
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let sysroot = PathBuf::from(sysroot.trim());
    let llvm = std::fs::read_dir(sysroot.join("lib"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") && n.ends_with("-nightly"))
        })
        .context("no libLLVM.so.*-nightly in the nightly's sysroot")?;
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let prefix = cargo_home.join("xvs-llvm");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&llvm, &link)?;
    crate::run_cmd(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--version", "0.13.0", "--locked"])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", &prefix),
    )?;
    if !quiet_ok(Command::new("rustup").args(["run", "nightly", "bpf-linker", "--version"])) {
        bail!("bpf-linker was installed but does not run");
    }
    Ok(())
}

/// The Debian packages of the lab and tests.
pub fn lab_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, path)| !std::path::Path::new(path).exists())
        .map(|(p, _)| *p)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    crate::run_cmd(Command::new("apt-get").args(["update", "-qq"]))?;
    crate::run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// cargo-deb, for `cargo xtask deb` (built from crates.io once, about two minutes).
pub fn cargo_deb() -> Result<()> {
    if quiet_ok(Command::new("cargo").args(["deb", "--version"])) {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-deb 3.8.0 (cargo install, about two minutes)");
    crate::run_cmd(Command::new("cargo").args([
        "install",
        "cargo-deb",
        "--version",
        "3.8.0",
        "--locked",
    ]))?;
    if !quiet_ok(Command::new("cargo").args(["deb", "--version"])) {
        bail!("cargo-deb was installed but `cargo deb --version` fails");
    }
    Ok(())
}
