//! `cargo xtask build | run | test | bench`: builds xvs (bootstrapping the eBPF toolchain it needs),
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
    /// Build, then run xvsd on `--iface IF`, or with no interface the lab demo in namespaces.
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
const EBPF_CRATES: [&str; 2] = ["lb-ebpf", "tests/ebpf"];

/// Builds the eBPF crates for bpfel-unknown-none with the nightly toolchain (core from source,
/// BTF), into one target directory.
fn build_ebpf() -> Result<()> {
    bootstrap::ebpf_toolchain()?;
    eprintln!("xtask: building the eBPF objects");
    for krate in EBPF_CRATES {
        run_cmd(&mut ebpf_cargo(krate, "build"))?;
    }
    Ok(())
}

/// `cargo +nightly SUBCOMMAND` for one eBPF crate, with the target, flags and target directory
/// of the eBPF build.
fn ebpf_cargo(krate: &str, subcommand: &str) -> Command {
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
        .arg(root().join("target/ebpf"))
        .current_dir(root().join(krate))
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTFLAGS");
    cmd
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
        "xvs-tests",
        "--bins",
    ]))
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
