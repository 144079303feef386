//! `cargo xtask build | run | test | bench | deb`: builds xvs (bootstrapping the eBPF toolchain it needs),
//! runs it, tests it.

mod bootstrap;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Build, run and test xvs")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing, build the eBPF objects and the binaries (release).
    Build,
    /// Build, then run xvsd on `--iface IF`, or with no interface the lab demo in namespaces
    /// (`-- --directors 3`: three directors behind a BIRD 2 router, ECMP over BGP;
    /// `-- --keepalived`: two directors, keepalived moving the VIP, connection sync).
    Run {
        /// Arguments for xvsd (e.g. `-- --iface eth0`); without --iface the lab runs.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build, then measure the data plane and the control plane into BENCHMARKS.md (root).
    Bench {
        /// Small sizes, for a quick check of the harness.
        #[arg(long)]
        quick: bool,
    },
    /// rustfmt --check and clippy with warnings denied, over every crate (the eBPF ones too).
    Lint,
    /// Build, then the Debian package target/debian/xvs_VERSION-1_amd64.deb (cargo-deb).
    Deb {
        /// Faster, larger compression (the tests' package).
        #[arg(long)]
        fast: bool,
    },
    /// Build, then run every test: host unit tests, program tests, end-to-end tests (root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Build => build(),
        Cmd::Run { args } => run(args),
        Cmd::Test { args } => test(args),
        Cmd::Bench { quick } => bench(quick),
        Cmd::Lint => lint(),
        Cmd::Deb { fast } => {
            build()?;
            deb(fast).map(|path| eprintln!("xtask: built {}", path.display()))
        }
    }
}

/// The workspace root (xtask lives one level below it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent")
        .to_path_buf()
}

/// Where the eBPF objects land.
fn ebpf_dir() -> PathBuf {
    root().join("target/ebpf/bpfel-unknown-none/release")
}

fn run_cmd(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// The eBPF crates, each a workspace of its own: the data plane, and the programs only the tests
/// and benchmarks load (kept out of the production crate).
const EBPF_CRATES: &[&str] = &["lb-ebpf", "tests/ebpf"];

/// `cargo SUBCOMMAND` for an eBPF crate: nightly, bpfel-unknown-none, core from source, BTF.
fn ebpf_cargo(krate: &str, subcommand: &str, target_dir: &str) -> Command {
    let arch = std::env::consts::ARCH;
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
        // BPF ISA v3: atomic fetch-and-add (the shared scheduler cursor), 32-bit jumps.
        "-Ctarget-cpu=v3".into(),
    ]
    .join("\x1f");
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", subcommand, "--release", "--bins"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(root().join(target_dir))
        .current_dir(root().join(krate))
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTFLAGS");
    cmd
}

/// Builds the eBPF crates for bpfel-unknown-none with the nightly toolchain.
fn build_ebpf() -> Result<()> {
    bootstrap::ebpf_toolchain()?;
    eprintln!("xtask: building the eBPF objects");
    for krate in EBPF_CRATES {
        run_cmd(&mut ebpf_cargo(krate, "build", "target/ebpf"))?;
    }
    Ok(())
}

/// Crates of the daemon's I/O that xvsadm must not compile (it builds on lb-core alone).
const DAEMON_ONLY: &[&str] = &["lb-user", "aya", "aya-log", "tokio", "rustls", "rtnetlink"];

/// The layering rule between crates: xvsadm's dependency tree holds none of [`DAEMON_ONLY`].
fn cli_needs_no_daemon() -> Result<()> {
    let out = cargo()
        .args(["tree", "-p", "xvsadm", "-e", "normal", "--prefix", "none"])
        .output()
        .context("cargo tree")?;
    if !out.status.success() {
        bail!(
            "cargo tree -p xvsadm failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tree = String::from_utf8_lossy(&out.stdout);
    let found: Vec<&str> = DAEMON_ONLY
        .iter()
        .copied()
        .filter(|d| tree.lines().any(|l| l.split_whitespace().next() == Some(d)))
        .collect();
    if !found.is_empty() {
        bail!("xvsadm depends on the daemon's crates {found:?}: it must build on lb-core alone");
    }
    eprintln!("xtask: xvsadm builds without the daemon's crates");
    Ok(())
}

/// rustfmt and clippy, warnings denied, over the userspace workspace and every eBPF crate.
fn lint() -> Result<()> {
    bootstrap::lint_components()?;
    // Clippy compiles lb-user, which embeds the eBPF objects.
    build_ebpf()?;
    eprintln!("xtask: rustfmt --check");
    run_cmd(cargo().args(["fmt", "--all", "--check"]))?;
    for krate in EBPF_CRATES {
        let manifest = root().join(krate).join("Cargo.toml");
        run_cmd(
            cargo()
                .args(["fmt", "--check", "--manifest-path"])
                .arg(manifest),
        )?;
    }
    eprintln!("xtask: clippy (warnings denied)");
    run_cmd(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--release",
        "--",
        "-D",
        "warnings",
    ]))?;
    for krate in EBPF_CRATES {
        // A target directory of its own: clippy's check builds of core would otherwise be
        // interleaved with the release objects the tests load.
        let mut cmd = ebpf_cargo(krate, "clippy", "target/ebpf-clippy");
        cmd.args(["--", "-D", "warnings"]);
        run_cmd(&mut cmd)?;
    }
    cli_needs_no_daemon()?;
    eprintln!("xtask: lint passed");
    Ok(())
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root()).env("XVS_EBPF_DIR", ebpf_dir());
    cmd
}

fn build() -> Result<()> {
    build_ebpf()?;
    eprintln!("xtask: building xvsd, xvsadm, xvs-lab");
    run_cmd(cargo().args([
        "build",
        "--release",
        "-p",
        "lb-user",
        "-p",
        "xvsadm",
        "-p",
        "xvs-tests",
        "--bins",
    ]))
}

/// Where `cargo xtask deb` puts the man pages and completions it generates (cargo-deb takes
/// generated assets from under target/release only).
const DEB_GENERATED: &str = "target/release/deb-generated";

/// Runs `binary --generate WHAT` (the hidden flag of xvsd and xvsadm) and returns its output.
fn generated(binary: &str, what: &str) -> Result<Vec<u8>> {
    let out = Command::new(bin(binary))
        .args(["--generate", what])
        .output()
        .with_context(|| format!("running {binary} --generate {what}"))?;
    if !out.status.success() || out.stdout.is_empty() {
        bail!(
            "{binary} --generate {what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// The Debian package (after [`build`]): man pages and completions generated by the binaries
/// from their own clap definitions, then cargo-deb with the assets of lb-user's
/// `[package.metadata.deb]`. Returns the package's path.
fn deb(fast: bool) -> Result<PathBuf> {
    bootstrap::cargo_deb()?;
    let dir = root().join(DEB_GENERATED);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for binary in ["xvsd", "xvsadm"] {
        let page = dir.join(format!("{binary}.8"));
        std::fs::write(&page, generated(binary, "man")?)?;
        // Debian wants man pages compressed, reproducibly (-n: no name or time stamp).
        let _ = std::fs::remove_file(dir.join(format!("{binary}.8.gz")));
        run_cmd(Command::new("gzip").arg("-9n").arg(&page))?;
        for (shell, file) in [
            ("bash", format!("{binary}.bash")),
            ("zsh", format!("_{binary}")),
            ("fish", format!("{binary}.fish")),
        ] {
            std::fs::write(dir.join(file), generated(binary, shell)?)?;
        }
    }
    eprintln!("xtask: building the Debian package (cargo-deb)");
    let mut cmd = cargo();
    cmd.args(["deb", "-p", "lb-user", "--no-build", "--quiet"]);
    if fast {
        cmd.arg("--fast");
    }
    run_cmd(&mut cmd)?;
    let path = root().join(format!(
        "target/debian/xvs_{}-1_amd64.deb",
        env!("CARGO_PKG_VERSION")
    ));
    if !path.exists() {
        bail!("cargo-deb did not write {}", path.display());
    }
    add_md5sums(&path, fast)?;
    Ok(path)
}

/// cargo-deb writes no DEBIAN/md5sums, which `dpkg --verify` and debsums check installed files
/// against: unpack the package, add it, and build the package again with dpkg-deb. /etc holds
/// only conffiles, whose sums dpkg records itself (dh_md5sums leaves them out too).
fn add_md5sums(deb: &Path, fast: bool) -> Result<()> {
    let tree = root().join("target/debian/tree");
    let _ = std::fs::remove_dir_all(&tree);
    run_cmd(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&tree))?;
    run_cmd(
        Command::new("sh")
            .arg("-c")
            .arg(
                "set -e; find . \\( -path ./DEBIAN -o -path ./etc \\) -prune -o -type f -printf '%P\\0' | sort -z \
                 | xargs -0 md5sum > DEBIAN/md5sums",
            )
            .current_dir(&tree),
    )?;
    run_cmd(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Z", if fast { "gzip" } else { "xz" }])
            .arg("--build")
            .arg(&tree)
            .arg(deb)
            .stdout(std::process::Stdio::null()),
    )?;
    std::fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))
}

fn bin(name: &str) -> PathBuf {
    root().join("target/release").join(name)
}

fn run(args: Vec<String>) -> Result<()> {
    let lab = !args
        .iter()
        .any(|a| a == "--iface" || a.starts_with("--iface="));
    if lab {
        bootstrap::lab_packages()?;
    }
    build()?;
    if lab {
        eprintln!("xtask: no --iface given: starting the lab in network namespaces");
        run_cmd(
            Command::new(bin("xvs-lab"))
                .arg("demo")
                .arg("--bin-dir")
                .arg(root().join("target/release"))
                .args(&args),
        )
    } else {
        run_cmd(Command::new(bin("xvsd")).args(&args))
    }
}

fn bench(quick: bool) -> Result<()> {
    bootstrap::lab_packages()?;
    build()?;
    eprintln!("xtask: benchmarking (several minutes)");
    let mut cmd = Command::new(bin("xvs-bench"));
    cmd.arg("--out")
        .arg(root().join("BENCHMARKS.md"))
        .arg("--chart")
        .arg(root().join("docs/bench.png"))
        .arg("--bin-dir")
        .arg(root().join("target/release"));
    if quick {
        cmd.arg("--quick");
    }
    run_cmd(&mut cmd)
}

fn test(args: Vec<String>) -> Result<()> {
    bootstrap::lab_packages()?;
    build()?;
    // tests/tests/package.rs installs it in a Debian root.
    deb(true)?;
    eprintln!("xtask: running the tests");
    // One test at a time: the end-to-end tests share the machine's two cores and bpffs.
    let mut cmd = cargo();
    cmd.args(["test", "--release", "--workspace"])
        .env("XVS_BIN_DIR", root().join("target/release"));
    let (cargo_args, test_args): (Vec<_>, Vec<_>) = {
        let mut it = args.split(|a| a == "--");
        (
            it.next().unwrap_or_default().to_vec(),
            it.next().unwrap_or_default().to_vec(),
        )
    };
    cmd.args(cargo_args)
        .arg("--")
        .arg("--test-threads=1")
        .args(test_args);
    let totals = run_counting(&mut cmd)?;
    // One closing line over every test binary (cargo prints one per binary).
    println!(
        "xtask: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    if totals.failed > 0 {
        bail!("{} tests failed", totals.failed);
    }
    if totals.ignored > 0 {
        bail!("{} tests were skipped: every test must run", totals.ignored);
    }
    if totals.passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

/// Runs `cargo test`, echoing its output, and adds up its "test result:" lines.
fn run_counting(cmd: &mut Command) -> Result<Totals> {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    let mut totals = Totals::default();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        let Some(rest) = line.strip_prefix("test result: ") else {
            continue;
        };
        // "ok. 7 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 2.17s"
        for part in rest.split(';') {
            let words: Vec<&str> = part.split_whitespace().collect();
            if let [.., n, what] = words[..] {
                let n: u64 = n.parse().unwrap_or(0);
                match what {
                    "passed" => totals.passed += n,
                    "failed" => totals.failed += n,
                    "ignored" => totals.ignored += n,
                    _ => {}
                }
            }
        }
    }
    let status = child.wait()?;
    if !status.success() && totals.failed == 0 {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(totals)
}
