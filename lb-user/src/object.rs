//! The eBPF objects, built by `cargo xtask build` and embedded in the binaries.

/// The director object (program `xvs_director` and its maps).
pub static DIRECTOR: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("XVS_EBPF_DIR"), "/xvs-director"));

/// The real-server decapsulator (program `xvs_decap` and its maps).
pub static DECAP: &[u8] = aya::include_bytes_aligned!(concat!(env!("XVS_EBPF_DIR"), "/xvs-decap"));
