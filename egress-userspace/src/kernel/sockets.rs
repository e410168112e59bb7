//! `SOCKETS`, the socket storage map of each socket's record (see the eBPF
//! crate's `record.rs`). The kernel creates socket storage only with BTF
//! naming its key and value, and the object carries no BTF: so egressd
//! loads a BTF of three types itself, creates the map with it, pins it
//! where the loader is told to find it (aya reuses a map pinned at the path
//! it is given), and removes the pin once the programs hold the map.
//!
//! Needs Linux 5.2 (socket storage); the connect programs reach it from 5.8.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
};

use anyhow::{Context, Result};
use egress_common::SocketRecord;

use super::{link, pins, sys};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_BTF_LOAD: libc::c_long = 18;
const BPF_MAP_TYPE_SK_STORAGE: u32 = 24;
const BPF_F_NO_PREALLOC: u32 = 1;

/// BTF type ids in `btf()`: the key (`int`) and the value (`u8[16]`).
const KEY_TYPE: u32 = 1;
const VALUE_TYPE: u32 = 3;

/// A BTF blob of `int` (the key socket storage requires), `u8`, and an
/// array of `value_size` `u8` (the value: the kernel checks only its size).
fn btf(value_size: u32) -> Vec<u8> {
    const KIND_INT: u32 = 1;
    const KIND_ARRAY: u32 = 3;
    const INT_SIGNED: u32 = 1 << 24;
    let strings = b"\0int\0u8\0";
    let mut types: Vec<u32> = Vec::new();
    // [1] int: name "int", 4 bytes, signed, 32 bits.
    types.extend([1, KIND_INT << 24, 4, INT_SIGNED | 32]);
    // [2] u8: name "u8", 1 byte, 8 bits.
    types.extend([5, KIND_INT << 24, 1, 8]);
    // [3] u8[value_size], indexed by int.
    types.extend([0, KIND_ARRAY << 24, 0, 2, KEY_TYPE, value_size]);
    let type_len = (types.len() * 4) as u32;
    let mut out = Vec::new();
    out.extend(0xeb9f_u16.to_le_bytes());
    out.extend([1u8, 0]); // version, flags
    for v in [24, 0, type_len, type_len, strings.len() as u32] {
        out.extend(v.to_le_bytes()); // hdr_len, type_off, type_len, str_off, str_len
    }
    for t in types {
        out.extend(t.to_le_bytes());
    }
    out.extend(strings);
    out
}

fn load_btf() -> io::Result<OwnedFd> {
    let blob = btf(std::mem::size_of::<SocketRecord>() as u32);
    let mut attr = [0u64; 16];
    // struct { u64 btf; u64 btf_log_buf; u32 btf_size; u32 btf_log_size; ... }
    attr[0] = blob.as_ptr() as u64;
    attr[2] = blob.len() as u64;
    let fd = sys::bpf(BPF_BTF_LOAD, &mut attr)?;
    // SAFETY: the kernel returned a new descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Creates an empty `SOCKETS` map.
fn create() -> io::Result<OwnedFd> {
    let btf = load_btf()?;
    let mut attr = [0u64; 16];
    let bytes: &mut [u8; 128] =
        // SAFETY: [u64; 16] and [u8; 128] have the same size, and u8 has no alignment.
        unsafe { &mut *(attr.as_mut_ptr() as *mut [u8; 128]) };
    let mut put = |off: usize, v: u32| bytes[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    // map_type, key_size, value_size, max_entries, map_flags
    put(0, BPF_MAP_TYPE_SK_STORAGE);
    put(4, 4);
    put(8, std::mem::size_of::<SocketRecord>() as u32);
    put(12, 0);
    put(16, BPF_F_NO_PREALLOC);
    // btf_fd, btf_key_type_id, btf_value_type_id
    put(48, btf.as_raw_fd() as u32);
    put(52, KEY_TYPE);
    put(56, VALUE_TYPE);
    let name = egress_common::map_names::SOCKETS.as_bytes();
    bytes[28..28 + name.len()].copy_from_slice(name);
    let fd = sys::bpf(BPF_MAP_CREATE, &mut attr)?;
    // SAFETY: the kernel returned a new descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A new `SOCKETS` map, pinned under `<bpffs>/egressd` for the loader to
/// find; the pin goes when this is dropped.
pub struct Pinned {
    pub path: PathBuf,
}

impl Pinned {
    pub fn new() -> Result<Pinned> {
        let map = create()
            .context("creating the socket storage map (Linux 5.2 or later, with BTF, is needed)")?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        // bpffs refuses names with a dot; a directory of its own keeps the
        // pin out of the instances' way.
        let dir = pins::root()?.join(format!("loading-{}-{nanos}", std::process::id()));
        pins::make_dirs(&dir)?;
        let path = dir.join(egress_common::map_names::SOCKETS);
        let pinned = Pinned { path };
        link::pin(map.as_fd(), &pinned.path).with_context(|| {
            format!(
                "pinning the socket storage map at {}",
                pinned.path.display()
            )
        })?;
        Ok(pinned)
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_btf_blob_is_laid_out_as_the_kernel_reads_it() {
        let b = btf(16);
        assert_eq!(&b[..4], &[0x9f, 0xeb, 1, 0]);
        let word = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let (type_len, str_off, str_len) = (word(12), word(16), word(20));
        assert_eq!(type_len, 4 * (4 + 4 + 6));
        assert_eq!(str_off, type_len);
        assert_eq!(b.len() as u32, 24 + type_len + str_len);
        // The array's element count is the value's size.
        assert_eq!(word(24 + type_len as usize - 4), 16);
        assert_eq!(&b[24 + str_off as usize..], b"\0int\0u8\0");
    }
}
