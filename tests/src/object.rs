//! The test-only eBPF object (tests/ebpf), built by `cargo xtask build` and embedded here.

/// Auxiliary programs: `xvs_pass` (for veth peers), `xvs_floor_tx` (benchmark floor) and
/// `xvs_sink` (counts and drops live benchmark traffic).
pub static AUX: &[u8] = aya::include_bytes_aligned!(concat!(env!("XVS_EBPF_DIR"), "/xvs-aux"));
