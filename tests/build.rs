//! Locates the test-only eBPF object (tests/ebpf, built by `cargo xtask build`) so the tests and
//! the benchmark can embed it.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=XVS_EBPF_DIR");
    let dir = match std::env::var_os("XVS_EBPF_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/ebpf/bpfel-unknown-none/release"),
    };
    let path = dir.join("xvs-aux");
    if !path.exists() {
        panic!(
            "eBPF object {} is missing: build it with `cargo xtask build` (or set XVS_EBPF_DIR)",
            path.display()
        );
    }
    println!("cargo:rerun-if-changed={}", path.display());
    let dir = dir.canonicalize().expect("canonical eBPF object dir");
    println!("cargo:rustc-env=XVS_EBPF_DIR={}", dir.display());
}
