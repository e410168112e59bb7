//! The bpf(2) syscall for the few commands aya 0.14 does not offer: cgroup
//! links and pins (see `link`), loading the UNIX programs (see `unix`),
//! and batched map writes (one entry per
//! syscall where the kernel has no batches). The kernel ABI for these is
//! small and stable.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
    sync::atomic::{AtomicBool, Ordering},
};

pub const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
pub const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
pub const BPF_PROG_LOAD: libc::c_long = 5;
pub const BPF_OBJ_PIN: libc::c_long = 6;
pub const BPF_OBJ_GET: libc::c_long = 7;
pub const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
pub const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
pub const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
pub const BPF_LINK_CREATE: libc::c_long = 28;

/// Entries one batched call writes or deletes: bounds the copy made for it.
const BATCH: usize = 16 * 1024;

pub fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<i64> {
    // SAFETY: attr is a zero-padded bpf_attr of 128 bytes, which covers
    // every field of the commands used here.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr) as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Whether the kernel took a batch command; cleared the first time one is
/// refused as unknown (batches on LPM tries came in Linux 5.13): entries
/// then go one syscall each.
static BATCHES: AtomicBool = AtomicBool::new(true);

/// Entries that could not be written or deleted: their indices, and the
/// first error.
#[derive(Debug)]
pub struct Failed {
    pub indices: Vec<usize>,
    pub error: io::Error,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} entries failed: {}", self.indices.len(), self.error)
    }
}

impl std::error::Error for Failed {}

/// One command on one entry: `value` for updates, null for deletes.
fn single(
    cmd: libc::c_long,
    map: BorrowedFd<'_>,
    key: *const u8,
    value: *const u8,
) -> io::Result<()> {
    let mut attr = [0u64; 16];
    // struct { u32 map_fd; u64 key; u64 value; u64 flags (BPF_ANY); }
    attr[0] = u64::from(map.as_raw_fd() as u32);
    attr[1] = key as u64;
    attr[2] = value as u64;
    bpf(cmd, &mut attr).map(drop)
}

/// Runs a batch command (`batch_cmd`) or, where the kernel lacks it, the
/// single-entry one (`single_cmd`) over every key; goes on past failures.
/// `skip` says which errors are not failures (a delete of an absent key).
fn each<K, V>(
    batch_cmd: libc::c_long,
    single_cmd: libc::c_long,
    map: BorrowedFd<'_>,
    keys: &[K],
    values: Option<&[V]>,
    skip: impl Fn(&io::Error) -> bool,
) -> Result<(), Failed> {
    let mut failed = Failed {
        indices: Vec::new(),
        error: io::Error::other("none"),
    };
    let mut fail = |i: usize, e: io::Error| {
        if !skip(&e) {
            if failed.indices.is_empty() {
                failed.error = e;
            }
            failed.indices.push(i);
        }
    };
    let mut at = 0;
    while at < keys.len() {
        let end = keys.len().min(at + BATCH);
        if BATCHES.load(Ordering::Relaxed) {
            let mut attr = [0u64; 16];
            // struct { u64 in_batch; u64 out_batch; u64 keys; u64 values;
            //          u32 count; u32 map_fd; u64 elem_flags; u64 flags; }
            attr[2] = keys[at..].as_ptr() as u64;
            attr[3] = values.map_or(0, |v| v[at..].as_ptr() as u64);
            let asked = (end - at) as u64;
            attr[4] = asked | (u64::from(map.as_raw_fd() as u32) << 32);
            match bpf(batch_cmd, &mut attr) {
                Ok(_) => {
                    at = end;
                    continue;
                }
                Err(e) => {
                    // The kernel writes back how many entries it processed
                    // once it has started on them; before that, the count
                    // is still the one asked.
                    let done = attr[4] & 0xffff_ffff;
                    if done < asked {
                        fail(at + done as usize, e);
                        at += done as usize + 1;
                        continue;
                    }
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL | ENOTSUPP | libc::EOPNOTSUPP)
                    ) {
                        BATCHES.store(false, Ordering::Relaxed);
                    }
                }
            }
        }
        // One entry per syscall, for this chunk.
        for i in at..end {
            let key = (&keys[i] as *const K).cast::<u8>();
            let value = values.map_or(std::ptr::null(), |v| (&v[i] as *const V).cast::<u8>());
            if let Err(e) = single(single_cmd, map, key, value) {
                fail(i, e);
            }
        }
        at = end;
    }
    if failed.indices.is_empty() {
        Ok(())
    } else {
        Err(failed)
    }
}

/// The kernel's "operation not supported" (not in libc).
const ENOTSUPP: i32 = 524;

/// Writes `keys[i] -> values[i]` into `map`, many per syscall where the
/// kernel can; every entry is tried. `K` and `V` must be laid out exactly
/// as the map's key and value.
pub fn update_each<K, V>(map: BorrowedFd<'_>, keys: &[K], values: &[V]) -> Result<(), Failed> {
    assert_eq!(keys.len(), values.len());
    each(
        BPF_MAP_UPDATE_BATCH,
        BPF_MAP_UPDATE_ELEM,
        map,
        keys,
        Some(values),
        |_| false,
    )
}

/// Deletes `keys` from `map`, many per syscall where the kernel can; keys
/// already absent are not failures; every key is tried.
pub fn delete_each<K>(map: BorrowedFd<'_>, keys: &[K]) -> Result<(), Failed> {
    each::<K, u8>(
        BPF_MAP_DELETE_BATCH,
        BPF_MAP_DELETE_ELEM,
        map,
        keys,
        None,
        |e| e.raw_os_error() == Some(libc::ENOENT),
    )
}

/// Whether the running kernel is `major.minor` or later (from
/// /proc/sys/kernel/osrelease; 0.0 if unreadable).
pub fn release_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};

    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    const BPF_MAP_TYPE_LPM_TRIE: u64 = 11;
    const BPF_F_NO_PREALLOC: u64 = 1;

    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Key {
        prefix_len: u32,
        addr: [u8; 4],
    }

    fn key(last: u8) -> Key {
        Key {
            prefix_len: 32,
            addr: [203, 0, 113, last],
        }
    }

    fn trie() -> OwnedFd {
        lpm_trie(8, 64)
    }

    /// An LPM trie with u32 values, for tests (needs root).
    pub(crate) fn lpm_trie(key_size: u64, max_entries: u64) -> OwnedFd {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root (BPF)");
        let mut attr = [0u64; 16];
        // struct { u32 map_type; u32 key_size; u32 value_size; u32 max_entries; u32 map_flags; }
        attr[0] = BPF_MAP_TYPE_LPM_TRIE | (key_size << 32);
        attr[1] = 4 | (max_entries << 32);
        attr[2] = BPF_F_NO_PREALLOC;
        let fd = bpf(BPF_MAP_CREATE, &mut attr).expect("creating an LPM trie");
        // SAFETY: a new descriptor the kernel returned.
        unsafe { OwnedFd::from_raw_fd(fd as i32) }
    }

    /// The u32 value a lookup of `k` finds, for tests.
    pub(crate) fn lookup<K>(map: BorrowedFd<'_>, k: K) -> Option<u32> {
        let mut value = 0u32;
        let mut attr = [0u64; 16];
        attr[0] = u64::from(map.as_raw_fd() as u32);
        attr[1] = &k as *const K as u64;
        attr[2] = &mut value as *mut u32 as u64;
        bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).ok().map(|_| value)
    }

    #[test]
    fn batches_write_and_delete_skipping_absent_keys() {
        let map = trie();
        let keys: Vec<Key> = (1..=5).map(key).collect();
        update_each(map.as_fd(), &keys, &[10u32, 20, 30, 40, 50]).unwrap();
        assert_eq!(lookup(map.as_fd(), key(3)), Some(30));
        // Key 9 was never written: the keys after it are deleted all the same.
        delete_each(map.as_fd(), &[key(1), key(9), key(2), key(4)]).unwrap();
        let left: Vec<Option<u32>> = (1..=5).map(|i| lookup(map.as_fd(), key(i))).collect();
        assert_eq!(left, [None, None, Some(30), None, Some(50)]);
        // A key the map cannot take is an error naming it, and the keys
        // after it are written all the same.
        let bad = Key {
            prefix_len: 33,
            addr: [0; 4],
        };
        let e = update_each(map.as_fd(), &[key(6), bad, key(7)], &[1u32, 2, 3]).unwrap_err();
        assert_eq!(e.indices, [1]);
        assert_eq!(lookup(map.as_fd(), key(6)), Some(1));
        assert_eq!(lookup(map.as_fd(), key(7)), Some(3));
        // One entry per syscall (kernels without batches) does the same.
        BATCHES.store(false, Ordering::Relaxed);
        let e = update_each(map.as_fd(), &[bad, key(8)], &[2u32, 4]).unwrap_err();
        delete_each(map.as_fd(), &[key(9), key(8)]).unwrap();
        BATCHES.store(true, Ordering::Relaxed);
        assert_eq!(e.indices, [0]);
        assert_eq!(lookup(map.as_fd(), key(8)), None);
    }
}
