//! Reading maps in batches (BPF_MAP_LOOKUP_BATCH): one system call per few thousand entries
//! instead of two per entry, so the controller can walk a connection table of millions of
//! entries every recomputation period, and read back whole arrays when it adopts pinned maps.
//! aya does not wrap this command yet. Tables are written the same way (BPF_MAP_UPDATE_BATCH):
//! one system call per table instead of one per slot.

use std::{io, mem::size_of, os::fd::AsRawFd};

use aya::{
    maps::{Array, HashMap as BpfHashMap, IterableMap, MapData, PerCpuArray, PerCpuValues},
    Pod,
};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
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
    // A hash map's batch token is a bucket index (u32).
    walk(
        IterableMap::<K, V>::map(map).fd().as_fd_raw(),
        None,
        usize::MAX,
        1,
        |k: &K, v: &[V]| f(k, &v[0]),
    )
}

/// Reads `len` entries of an array map from index `off` on.
pub fn read_array<V: Pod + Default>(
    map: &Array<MapData, V>,
    off: u32,
    len: u32,
) -> io::Result<Vec<V>> {
    let mut out = Vec::with_capacity(len as usize);
    // An array's batch token is the previous index: start after `off - 1`.
    walk(
        IterableMap::<u32, V>::map(map).fd().as_fd_raw(),
        off.checked_sub(1),
        len as usize,
        1,
        |_: &u32, v: &[V]| out.push(v[0]),
    )?;
    Ok(out)
}

/// Writes `values` into an array map from index `off` on with BPF_MAP_UPDATE_BATCH: one system
/// call per run instead of one per entry (the kernel writes entry by entry, each as a single
/// update would). On failure, returns how many entries from `off` were written before it.
pub fn write_array<V: Pod>(
    map: &mut Array<MapData, V>,
    off: u32,
    values: &[V],
) -> Result<(), (usize, io::Error)> {
    let keys: Vec<u32> = (off..off + values.len() as u32).collect();
    write_array_at(map, &keys, values)
}

/// Writes `values[i]` at index `keys[i]` of an array map, in order, with BPF_MAP_UPDATE_BATCH.
/// On failure, returns how many entries were written before it.
pub fn write_array_at<V: Pod>(
    map: &mut Array<MapData, V>,
    keys: &[u32],
    values: &[V],
) -> Result<(), (usize, io::Error)> {
    assert_eq!(keys.len(), values.len());
    let fd = IterableMap::<u32, V>::map(map).fd().as_fd_raw();
    let mut done = 0;
    for (keys, values) in keys
        .chunks(BATCH as usize)
        .zip(values.chunks(BATCH as usize))
    {
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: keys.len() as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        // SAFETY: attr points at `count` keys and `count` values of the map's key and value
        // sizes (u32 indexes, `V` as the map holds it), which outlive the call; the kernel
        // only reads them and writes back `count`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as libc::c_uint,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err((done + (attr.count as usize).min(keys.len()), e));
        }
        done += keys.len();
    }
    Ok(())
}

/// Reads `len` entries of a per-CPU array from index `off` on, flat: `cpus` values per entry.
/// The kernel lays each entry out as one value per possible CPU, each rounded up to 8 bytes:
/// `V` must be a multiple of 8 bytes long.
pub fn read_percpu_array<V: Pod + Default>(
    map: &PerCpuArray<MapData, V>,
    off: u32,
    len: u32,
    cpus: usize,
) -> io::Result<Vec<V>> {
    if !size_of::<V>().is_multiple_of(8) {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let mut out = Vec::with_capacity(len as usize * cpus);
    walk(
        IterableMap::<u32, PerCpuValues<V>>::map(map)
            .fd()
            .as_fd_raw(),
        off.checked_sub(1),
        len as usize,
        cpus,
        |_: &u32, v: &[V]| out.extend_from_slice(v),
    )?;
    Ok(out)
}

/// Walks a map with BPF_MAP_LOOKUP_BATCH, from token `start` (None: the beginning), for at
/// most `limit` entries of `per_entry` values each (the CPU count for a per-CPU map, else 1).
/// Both map kinds used here have 4-byte tokens.
fn walk<K: Pod + Default, V: Pod + Default>(
    fd: i32,
    start: Option<u32>,
    limit: usize,
    per_entry: usize,
    mut f: impl FnMut(&K, &[V]),
) -> io::Result<()> {
    let mut keys = vec![K::default(); BATCH as usize];
    let mut values = vec![V::default(); BATCH as usize * per_entry];
    let mut token_in: u32 = start.unwrap_or(0);
    let mut token_out: u32 = 0;
    let mut first = start.is_none();
    let mut left = limit;
    while left > 0 {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &token_in as *const u32 as u64
            },
            out_batch: &mut token_out as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH.min(left.min(u32::MAX as usize) as u32),
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
            f(&keys[i], &values[i * per_entry..(i + 1) * per_entry]);
        }
        left = left.saturating_sub(attr.count as usize);
        match err {
            None => {}
            // ENOENT: the walk reached the end.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Some(e) => return Err(e),
        }
        first = false;
        token_in = token_out;
    }
    Ok(())
}

/// Reads the next entries of a hash map from bucket token `token` (None: the first bucket) into
/// `keys` and `values` (as many as they hold): how many were read, and the token to go on from
/// (None: the walk reached the end of the table).
pub fn read_chunk<K: Pod + Default, V: Pod + Default>(
    map: &BpfHashMap<MapData, K, V>,
    token: Option<u32>,
    keys: &mut [K],
    values: &mut [V],
) -> io::Result<(usize, Option<u32>)> {
    assert_eq!(keys.len(), values.len());
    let token_in: u32 = token.unwrap_or(0);
    let mut token_out: u32 = 0;
    let mut attr = BatchAttr {
        in_batch: match token {
            None => 0,
            Some(_) => &token_in as *const u32 as u64,
        },
        out_batch: &mut token_out as *mut u32 as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: keys.len().min(u32::MAX as usize) as u32,
        map_fd: IterableMap::<K, V>::map(map).fd().as_fd_raw() as u32,
        ..Default::default()
    };
    // SAFETY: attr points at `count` keys and values of the map's sizes, which outlive the
    // call; the kernel writes at most `count` of each and the tokens.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_BATCH,
            &mut attr as *mut BatchAttr,
            size_of::<BatchAttr>() as libc::c_uint,
        )
    };
    let n = (attr.count as usize).min(keys.len());
    if rc < 0 {
        let e = io::Error::last_os_error();
        // ENOENT: the walk reached the end (with the last entries, if any, read).
        return match e.raw_os_error() {
            Some(libc::ENOENT) => Ok((n, None)),
            _ => Err(e),
        };
    }
    Ok((n, Some(token_out)))
}

/// Deletes `keys` from a hash map with BPF_MAP_DELETE_BATCH; `deleted[i]` tells whether this
/// call removed `keys[i]` (false: it was already gone). The kernel deletes key by key and stops
/// at the first one that is missing, so the batch goes on after it.
pub fn delete_keys<K: Pod, V: Pod>(
    map: &BpfHashMap<MapData, K, V>,
    keys: &[K],
) -> io::Result<Vec<bool>> {
    let fd = IterableMap::<K, V>::map(map).fd().as_fd_raw();
    let mut deleted = vec![false; keys.len()];
    let mut at = 0;
    while at < keys.len() {
        let rest = &keys[at..];
        let mut attr = BatchAttr {
            keys: rest.as_ptr() as u64,
            count: rest.len().min(u32::MAX as usize) as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        // SAFETY: attr points at `count` keys of the map's key size, which outlive the call;
        // the kernel only reads them and writes back `count`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_DELETE_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as libc::c_uint,
            )
        };
        let done = (attr.count as usize).min(rest.len());
        deleted[at..at + done].iter_mut().for_each(|d| *d = true);
        if rc >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOENT) {
            return Err(e);
        }
        // keys[at + done] was missing: skip it.
        at += done + 1;
    }
    Ok(deleted)
}

trait RawFd {
    fn as_fd_raw(&self) -> i32;
}

impl<T: std::os::fd::AsFd> RawFd for T {
    fn as_fd_raw(&self) -> i32 {
        self.as_fd().as_raw_fd()
    }
}
