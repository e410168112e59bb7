//! The record of each TCP socket (`egress_common::SocketRecord`), kept in
//! BPF socket storage: the kernel keeps it with the socket for the
//! socket's whole life and frees it with the socket, so nothing can push
//! it out, and a socket never outlives it.
//!
//! The connect hook writes it at each TCP connect (the socket's peer, judged
//! there; a refused connect removes it). The backstop writes it for a
//! socket that has none once its peer passes: an accepted socket (also one
//! a SYN cookie, Fast Open or a simultaneous open completed), whose peer no
//! hook judged, so each of its segments is judged until one passes. The
//! map is created without `BPF_F_CLONE`: an accepted socket does not
//! inherit its listener's record.
//!
//! A segment of a socket with a live record costs one lookup of the
//! record and one of its policy (see `packet`), and its payload is counted
//! to the record's rule with no allowlist lookup.

use aya_ebpf::{
    bindings::{bpf_map_def, bpf_map_type::BPF_MAP_TYPE_SK_STORAGE, bpf_sock, BPF_F_NO_PREALLOC},
    helpers::{bpf_sk_fullsock, bpf_sk_storage_delete, bpf_sk_storage_get},
    macros::map,
    programs::{SkBuffContext, SockAddrContext},
};
use egress_common::SocketRecord;

/// A socket storage map definition (aya-ebpf 0.2 has none): the legacy
/// map section's layout. The kernel wants BTF for its key and value, so
/// userspace creates the map and the loader reuses it (see
/// `egress-userspace/src/kernel/sockets.rs`).
#[repr(transparent)]
pub struct SkStorage(core::cell::UnsafeCell<bpf_map_def>);

// SAFETY: the definition is read by the loader only; programs pass its
// address to helpers.
unsafe impl Sync for SkStorage {}

impl SkStorage {
    const fn new() -> Self {
        SkStorage(core::cell::UnsafeCell::new(bpf_map_def {
            type_: BPF_MAP_TYPE_SK_STORAGE,
            key_size: 4,
            value_size: core::mem::size_of::<SocketRecord>() as u32,
            max_entries: 0,
            map_flags: BPF_F_NO_PREALLOC,
            id: 0,
            pinning: 0,
        }))
    }

    #[inline(always)]
    fn ptr(&self) -> *mut core::ffi::c_void {
        self.0.get().cast()
    }
}

/// Socket -> its `SocketRecord`. Written by the connect programs and the
/// backstop; read by the backstop and the ingress counter; freed with the
/// socket. Userspace creates it and does not touch it otherwise.
#[map(name = "SOCKETS")]
pub static SOCKETS: SkStorage = SkStorage::new();

/// `BPF_SK_STORAGE_GET_F_CREATE`.
const CREATE: u64 = 1;

/// The full TCP socket a packet belongs to; null for a request socket
/// answering a SYN, a time-wait socket, or anything but TCP. (A pointer,
/// not an `Option`: Linux 5.10's verifier refuses the uninitialised
/// payload an `Option` of a raw pointer leaves on the stack.)
#[inline(always)]
pub fn tcp_socket_of(ctx: &SkBuffContext) -> *mut bpf_sock {
    // SAFETY: `sk` of the context is readable in cgroup_skb programs; it is
    // checked for null and made a full socket before its fields are read.
    unsafe {
        let sk = core::ptr::read_volatile(core::ptr::addr_of!((*ctx.skb.skb).__bindgen_anon_2.sk));
        if sk.is_null() {
            return core::ptr::null_mut();
        }
        let full = bpf_sk_fullsock(sk);
        if full.is_null() {
            return core::ptr::null_mut();
        }
        const SOCK_STREAM: u32 = 1;
        const IPPROTO_TCP: u32 = 6;
        let tcp = core::ptr::read_volatile(core::ptr::addr_of!((*full).type_)) == SOCK_STREAM
            && core::ptr::read_volatile(core::ptr::addr_of!((*full).protocol)) == IPPROTO_TCP;
        if tcp {
            full
        } else {
            core::ptr::null_mut()
        }
    }
}

/// Whether TCP socket `sk` has sent no data yet: none acknowledged (the
/// SYN's one byte aside), none in flight. Its next data is then the
/// first of its stream.
#[inline(always)]
pub fn nothing_sent(sk: *mut bpf_sock) -> bool {
    // SAFETY: `sk` is a full TCP socket from the context.
    let tp = unsafe { aya_ebpf::helpers::bpf_tcp_sock(sk) };
    if tp.is_null() {
        return false;
    }
    // SAFETY: a non-null bpf_tcp_sock from the helper.
    unsafe {
        core::ptr::read_volatile(core::ptr::addr_of!((*tp).bytes_acked)) <= 1
            && core::ptr::read_volatile(core::ptr::addr_of!((*tp).packets_out)) == 0
    }
}

/// The socket a sock_addr program judges (Linux 5.8 exposes it).
#[inline(always)]
fn socket_of_call(ctx: &SockAddrContext) -> *mut bpf_sock {
    // SAFETY: `sk` of bpf_sock_addr is a readable, non-null full socket.
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*ctx.sock_addr).__bindgen_anon_1.sk)) }
}

/// The record of `sk` (a full socket from the context), if it has one.
#[inline(always)]
pub fn get(sk: *mut bpf_sock) -> Option<SocketRecord> {
    // SAFETY: `sk` is a full socket from the context; no value, no flags.
    let p = unsafe { bpf_sk_storage_get(SOCKETS.ptr(), sk.cast(), core::ptr::null_mut(), 0) };
    // SAFETY: the socket's storage, a plain 16-byte value, read whole.
    (!p.is_null()).then(|| unsafe { *(p as *const SocketRecord) })
}

/// Writes `record` as `sk`'s record, making one if it has none (when the
/// kernel cannot, for want of memory, the socket stays without one: its
/// segments are then judged by their peer).
#[inline(always)]
pub fn set(sk: *mut bpf_sock, record: SocketRecord) {
    // SAFETY: as in `get`; the storage is made zeroed, then written whole.
    unsafe {
        let p = bpf_sk_storage_get(SOCKETS.ptr(), sk.cast(), core::ptr::null_mut(), CREATE);
        if !p.is_null() {
            *(p as *mut SocketRecord) = record;
        }
    }
}

/// The connect hook's verdict on the socket it judges: `Some` record, or
/// `None` for a refused connect (its old record, from an earlier connect,
/// goes: the socket's segments are then judged by their peer).
#[inline(always)]
pub fn on_connect(ctx: &SockAddrContext, record: Option<SocketRecord>) {
    let sk = socket_of_call(ctx);
    match record {
        Some(r) => set(sk, r),
        // SAFETY: as in `get`.
        None => unsafe {
            let _ = bpf_sk_storage_delete(SOCKETS.ptr(), sk.cast());
        },
    }
}
