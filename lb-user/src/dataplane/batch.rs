//! Reading a whole hash map in batches (BPF_MAP_LOOKUP_BATCH): one system call per few thousand
//! entries instead of two per entry, so the controller can walk a connection table of millions
//! of entries every recomputation period. aya does not wrap this command yet.

use std::{io, mem::size_of, os::fd::AsRawFd};

use aya::{
    maps::{HashMap as BpfHashMap, IterableMap, MapData},
    Pod,
};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries fetched per system call.
const BATCH: u32 = 4096;

/// The `batch` member of `union bpf_attr` (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Calls `f` for every entry of `map`. Entries inserted or evicted during the walk may or may
/// not be seen (the kernel walks bucket by bucket), which is fine for counting.
pub fn for_each<K: Pod + Default, V: Pod + Default>(
    map: &BpfHashMap<MapData, K, V>,
    mut f: impl FnMut(&K, &V),
) -> io::Result<()> {
    let fd = IterableMap::<K, V>::map(map).fd().as_fd_raw();
    let mut keys = vec![K::default(); BATCH as usize];
    let mut values = vec![V::default(); BATCH as usize];
    // A hash map's batch token is a bucket index (u32).
    let mut token_in: u32 = 0;
    let mut token_out: u32 = 0;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &token_in as *const u32 as u64
            },
            out_batch: &mut token_out as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH,
            map_fd: fd as u32,
            ..Default::default()
        };
        // SAFETY: attr points at buffers of BATCH keys and values of the map's sizes, which
        // outlive the call; the kernel writes at most `count` of each.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as libc::c_uint,
            )
        };
        let err = (rc < 0).then(io::Error::last_os_error);
        for i in 0..attr.count as usize {
            f(&keys[i], &values[i]);
        }
        match err {
            None => {}
            // ENOENT: the walk reached the end.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Some(e) => return Err(e),
        }
        first = false;
        token_in = token_out;
    }
}

trait RawFd {
    fn as_fd_raw(&self) -> i32;
}

impl<T: std::os::fd::AsFd> RawFd for T {
    fn as_fd_raw(&self) -> i32 {
        self.as_fd().as_raw_fd()
    }
}
