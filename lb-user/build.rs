//! Locates the eBPF objects that `cargo xtask build` produced, so the daemon can embed them.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=XVS_EBPF_DIR");
    let dir = match std::env::var_os("XVS_EBPF_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/ebpf/bpfel-unknown-none/release"),
    };
    for obj in ["xvs-director", "xvs-decap"] {
        let path = dir.join(obj);
        if !path.exists() {
            panic!(
                "eBPF object {} is missing: build it with `cargo xtask build` (or set XVS_EBPF_DIR)",
                path.display()
            );
        }
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let dir = dir.canonicalize().expect("canonical eBPF object dir");
    println!("cargo:rustc-env=XVS_EBPF_DIR={}", dir.display());
}
