//! `cargo xtask bench`: per-packet cost of each data-plane path under BPF_PROG_TEST_RUN against a
//! bare XDP_TX floor measured the same way in the same run, and control-plane costs.
//!
//! Methodology that cannot flatter us: the kernel does not restore a packet between repeats, so
//! every measured run is a separate BPF_PROG_TEST_RUN with repeat = 1 and fresh input bytes; the
//! verdict of every run is checked, and the reason counters must have moved by exactly the number
//! of runs, or the figure is rejected. Times are the kernel's own per-run durations.

pub mod chart;
pub mod control;
pub mod counting;
pub mod live;
pub mod nat;
pub mod paths;
pub mod sync;
pub mod tunnel;

use std::fmt::Write;

/// min / median / max of the per-repetition means, ns per packet.
#[derive(Clone, Copy, Debug)]
pub struct Spread {
    /// Fastest repetition.
    pub min: f64,
    /// Median repetition.
    pub median: f64,
    /// Slowest repetition.
    pub max: f64,
}

impl Spread {
    /// From per-repetition means.
    pub fn of(mut v: Vec<f64>) -> Spread {
        v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
        Spread {
            min: v[0],
            median: v[v.len() / 2],
            max: v[v.len() - 1],
        }
    }
}

/// One measured data-plane path.
#[derive(Clone, Debug)]
pub struct PathResult {
    /// What was measured.
    pub name: String,
    /// ns/packet.
    pub ns: Spread,
    /// Runs per repetition.
    pub runs: usize,
}

/// A target from the issue, checked against this run's figures.
#[derive(Clone, Debug)]
pub struct Target {
    /// What is promised.
    pub what: String,
    /// The limit, in words.
    pub limit: String,
    /// The measured figure, in words.
    pub measured: String,
    /// None when it cannot be measured yet.
    pub pass: Option<bool>,
}

/// Machine description for the report.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    // Online CPUs, not this thread's affinity (the harness pins itself to CPU 0).
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| format!("{:.0} GiB", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    format!("{cpus} x {cpu}, {mem} RAM, Linux {kernel}")
}

/// The size of each loaded xvs program as the kernel holds it: BPF instructions after the
/// verifier's rewrites (8 bytes each) and bytes of JIT-compiled machine code. A proxy for the
/// instructions a path executes, which these machines cannot count: their virtual CPUs expose
/// no hardware performance counters (no `cpu` PMU under /sys/bus/event_source/devices).
pub fn program_sizes() -> Vec<(String, String)> {
    let mut seen = std::collections::BTreeMap::new();
    for info in aya::programs::loaded_programs().flatten() {
        let Some(name) = info.name_as_str().map(str::to_owned) else {
            continue;
        };
        if name.starts_with("xvs_") && !seen.contains_key(&name) {
            let insns = info.size_translated().unwrap_or(0) / 8;
            seen.insert(
                name,
                format!(
                    "{insns} BPF instructions, {} bytes of machine code",
                    info.size_jitted()
                ),
            );
        }
    }
    seen.into_iter().collect()
}

/// The Markdown report.
#[allow(clippy::too_many_arguments)]
pub fn report(
    paths: &[PathResult],
    floor: &PathResult,
    live: &[(String, String)],
    control: &[(String, String)],
    maps: &[(String, String)],
    programs: &[(String, String)],
    sync: &sync::SyncBench,
    targets: &[Target],
    setup: &str,
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# xvs benchmarks\n");
    let _ = writeln!(
        md,
        "Produced by `cargo xtask bench` (root). Machine: {}.\n",
        machine()
    );
    let _ = writeln!(md, "{setup}\n");
    let _ = writeln!(md, "## Targets\n");
    let _ = writeln!(
        md,
        "| target | limit | measured | |\n| --- | --- | --- | --- |"
    );
    for t in targets {
        let verdict = match t.pass {
            Some(true) => "pass",
            Some(false) => "MISS",
            None => "not measurable yet",
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {verdict} |",
            t.what, t.limit, t.measured
        );
    }
    let _ = writeln!(
        md,
        "\n## Per-packet cost (BPF_PROG_TEST_RUN, repeat = 1 per run)\n"
    );
    let _ = writeln!(
        md,
        "ns/packet is the median of the per-repetition means; min and max are the fastest and \
         slowest repetition. \"over floor\" subtracts the bare `bounds check + XDP_TX` program's \
         median, measured the same way in the same run; \"ratio\" divides by it. The \
         \"kernel LRU hash alone\" rows are a second floor: the same bounds check plus one lookup \
         (and on a miss one insert) in an LRU hash of the connection table's key and value sizes, \
         capacity and fill, with no xvs code (tests/ebpf `xvs_lru_floor`): what any director \
         keeping its connections in the kernel's LRU hash pays on these paths.\n"
    );
    let _ = writeln!(
        md,
        "| path | ns/packet (median) | min | max | over floor | ratio | runs x reps |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for p in std::iter::once(floor).chain(paths) {
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.1} | {:.1} | {:+.1} | {:.2} | {} |",
            p.name,
            p.ns.median,
            p.ns.min,
            p.ns.max,
            p.ns.median - floor.ns.median,
            p.ns.median / floor.ns.median,
            p.runs
        );
    }
    let _ = writeln!(md, "\n![ns per packet](docs/bench.png)\n");
    let _ = writeln!(
        md,
        "## Live traffic\n\nFrames generated with BPF_PROG_TEST_RUN live frames \
         (`XDP_TEST_RUN live frames`, batch 64) in a generator namespace, sent over a veth to the \
         program under test (native XDP, XDP_TX back) and counted by a sink program on the \
         generator's veth. Packets per second received at the sink. The hairpin and the director \
         are measured in adjacent pairs over several rounds (the host's load drifts): the figures \
         are medians, the target is judged on the median pair's ratio.\n\n| what | figure |\n| --- | --- |"
    );
    for (k, v) in live {
        let _ = writeln!(md, "| {k} | {v} |");
    }
    let _ = writeln!(md, "\n## Control plane\n\n| what | figure |\n| --- | --- |");
    for (k, v) in control {
        let _ = writeln!(md, "| {k} | {v} |");
    }
    let _ = writeln!(
        md,
        "\n## Connection sync throughput\n\n{}\n\n| what | figure |\n| --- | --- |",
        sync.text()
    );
    for (k, v) in sync.rows() {
        let _ = writeln!(md, "| {k} | {v} |");
    }
    let _ = writeln!(
        md,
        "\n## Map memory (kernel-reported memlock)\n\n| map | size |\n| --- | --- |"
    );
    for (k, v) in maps {
        let _ = writeln!(md, "| {k} | {v} |");
    }
    let _ = writeln!(
        md,
        "\n## Program size (as loaded: after the verifier's rewrites, and JIT-compiled)\n\n\
         Subprograms (the new-flow path, NAT's allocation, the encapsulation) are counted in \
         their program. Instructions executed per path cannot be counted here: the virtual CPUs \
         have no hardware performance counters.\n\n| program | size |\n| --- | --- |"
    );
    for (k, v) in programs {
        let _ = writeln!(md, "| {k} | {v} |");
    }
    md
}
