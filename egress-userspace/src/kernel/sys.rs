//! The bpf(2) syscall for the few commands aya 0.14 does not offer: cgroup
//! links and pins (see `link`), and batched map writes. The kernel ABI for
//! these is small and stable.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

pub const BPF_OBJ_PIN: libc::c_long = 6;
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

/// One batched command on `keys` (and `values`, for updates); returns how
/// many entries the kernel processed, and its error if it stopped early.
fn batch<K, V>(
    cmd: libc::c_long,
    map: BorrowedFd<'_>,
    keys: &[K],
    values: Option<&[V]>,
) -> (usize, io::Result<()>) {
    let mut attr = [0u64; 16];
    // struct { u64 in_batch; u64 out_batch; u64 keys; u64 values;
    //          u32 count; u32 map_fd; u64 elem_flags; u64 flags; }
    attr[2] = keys.as_ptr() as u64;
    attr[3] = values.map_or(0, |v| v.as_ptr() as u64);
    attr[4] = keys.len() as u64 | (u64::from(map.as_raw_fd() as u32) << 32);
    let result = bpf(cmd, &mut attr).map(drop);
    // The kernel writes back how many it processed.
    let done = (attr[4] & 0xffff_ffff) as usize;
    (if result.is_ok() { keys.len() } else { done }, result)
}

/// Writes `keys[i] -> values[i]` into `map`, many per syscall. `K` and `V`
/// must be laid out exactly as the map's key and value.
pub fn update_batch<K, V>(map: BorrowedFd<'_>, keys: &[K], values: &[V]) -> io::Result<()> {
    assert_eq!(keys.len(), values.len());
    for (k, v) in keys.chunks(BATCH).zip(values.chunks(BATCH)) {
        batch(BPF_MAP_UPDATE_BATCH, map, k, Some(v)).1?;
    }
    Ok(())
}

/// Deletes `keys` from `map`, many per syscall; keys already absent are
/// skipped. Goes on after another failure, and returns the first.
pub fn delete_batch<K>(map: BorrowedFd<'_>, keys: &[K]) -> io::Result<()> {
    let mut first_error = None;
    let mut rest = keys;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(BATCH)];
        let (done, result) = batch::<K, u8>(BPF_MAP_DELETE_BATCH, map, chunk, None);
        match result {
            Ok(()) => rest = &rest[chunk.len()..],
            Err(e) => {
                if e.raw_os_error() != Some(libc::ENOENT) {
                    first_error.get_or_insert(e);
                }
                // Skip the key it stopped at.
                rest = &rest[(done + 1).min(rest.len())..];
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
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
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root (BPF)");
        let mut attr = [0u64; 16];
        // struct { u32 map_type; u32 key_size; u32 value_size; u32 max_entries; u32 map_flags; }
        attr[0] = BPF_MAP_TYPE_LPM_TRIE | (8 << 32);
        attr[1] = 4 | (64 << 32);
        attr[2] = BPF_F_NO_PREALLOC;
        let fd = bpf(BPF_MAP_CREATE, &mut attr).expect("creating an LPM trie");
        // SAFETY: a new descriptor the kernel returned.
        unsafe { OwnedFd::from_raw_fd(fd as i32) }
    }

    fn lookup(map: BorrowedFd<'_>, k: Key) -> Option<u32> {
        let mut value = 0u32;
        let mut attr = [0u64; 16];
        attr[0] = u64::from(map.as_raw_fd() as u32);
        attr[1] = &k as *const Key as u64;
        attr[2] = &mut value as *mut u32 as u64;
        bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).ok().map(|_| value)
    }

    #[test]
    fn batches_write_and_delete_skipping_absent_keys() {
        let map = trie();
        let keys: Vec<Key> = (1..=5).map(key).collect();
        update_batch(map.as_fd(), &keys, &[10u32, 20, 30, 40, 50]).unwrap();
        assert_eq!(lookup(map.as_fd(), key(3)), Some(30));
        // Key 9 was never written: the keys after it are deleted all the same.
        delete_batch(map.as_fd(), &[key(1), key(9), key(2), key(4)]).unwrap();
        let left: Vec<Option<u32>> = (1..=5).map(|i| lookup(map.as_fd(), key(i))).collect();
        assert_eq!(left, [None, None, Some(30), None, Some(50)]);
        // A key the map cannot take is an error, not silently dropped.
        let bad = Key {
            prefix_len: 33,
            addr: [0; 4],
        };
        assert!(update_batch(map.as_fd(), &[key(6), bad], &[1u32, 2]).is_err());
        assert_eq!(lookup(map.as_fd(), key(6)), Some(1));
    }
}
