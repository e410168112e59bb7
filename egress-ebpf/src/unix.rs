//! UNIX sockets (Linux 6.7's cgroup UNIX hooks): a connect() or an
//! addressed datagram reaches a path or abstract name only where the
//! policy's `channels.unix` allows it. A local daemon outside the cgroup
//! (a mail server, docker.sock, a resolver) would otherwise carry data out
//! for the agent.
//!
//! Socket pairs and inherited sockets never meet these hooks: they were
//! connected by whoever made them.

use aya_ebpf::{helpers::bpf_probe_read_kernel, maps::lpm_trie::Key, programs::SockAddrContext};
use egress_common::{
    proto_class, reason, unix_entry, UnixEvent, UnixKey, AF_UNIX, TABLE_BITS, UNIX_KEY_LEN,
    UNIX_PATH_MAX,
};

use crate::{
    attempt::{returned, tally, Attempt, RET_ALLOW},
    dest::Dest,
    governing::{governing, released, Caller, Live},
    maps::{bump, EVENTS, UNIX_ALLOW},
};

/// Offsets in the kernel's `struct bpf_sock_addr_kern`, which a cgroup
/// sock_addr program's context really is: `struct sock *sk; struct
/// sockaddr *uaddr; u64 tmp_reg; void *t_ctx; u32 uaddrlen;` (the layout of
/// every kernel with UNIX hooks). `bpf_sock_addr` has no field for a UNIX
/// name; the kernel's selftests reach `uaddr` the same way, through kfuncs.
const UADDR_OFFSET: usize = 8;
const UADDRLEN_OFFSET: usize = 32;
/// `sizeof(sa_family_t)`: `sun_path` follows it.
const FAMILY_BYTES: u32 = 2;

/// A UNIX name as the caller gave it: `raw[..len]` (the kernel checked
/// the address before this hook: `len` is at least 1).
struct Name {
    raw: [u8; UNIX_PATH_MAX],
    len: usize,
}

/// Reads the name the caller aims at out of the kernel's copy of its
/// address; `None` if it cannot be read.
#[inline(always)]
fn read_name(ctx: &SockAddrContext) -> Option<Name> {
    let kern = ctx.sock_addr as *const u8;
    // SAFETY: the context is a `bpf_sock_addr_kern` (see above); the reads
    // are checked by the helper and fail rather than fault.
    unsafe {
        let uaddr = bpf_probe_read_kernel(kern.add(UADDR_OFFSET) as *const *const u8).ok()?;
        let uaddrlen = bpf_probe_read_kernel(kern.add(UADDRLEN_OFFSET) as *const u32).ok()?;
        // The address is a kernel copy in a sockaddr_storage: all of
        // sun_path is readable, what lies past uaddrlen is not the caller's.
        let raw =
            bpf_probe_read_kernel(uaddr.add(FAMILY_BYTES as usize) as *const [u8; UNIX_PATH_MAX])
                .ok()?;
        let len = uaddrlen
            .saturating_sub(FAMILY_BYTES)
            .min(UNIX_PATH_MAX as u32) as usize;
        Some(Name { raw, len })
    }
}

/// The trie key of `name` under `table` (see `egress_common::UnixKey`),
/// and whether a path is not written plainly: `..` (climbing out of a
/// directory), `//` or `/./` (another spelling, which would miss a longer
/// entry, such as a name-service socket's, and match a directory's). No
/// ALLOW covers such a path.
///
/// The loops branch on nothing the caller wrote (only on `i`): each test
/// of a byte or of the length is arithmetic (`eq`, `below`), so that the
/// verifier walks each loop once rather than once per way a name could
/// end or be spelled (this took it 324,000 instructions per program).
#[inline(always)]
fn key_of(table: u32, name: &Name) -> (UnixKey, bool) {
    let mut data: UnixKey = [0; UNIX_KEY_LEN];
    data[..4].copy_from_slice(&table.to_be_bytes());
    let len = opaque(name.len as u64);
    if name.raw[0] == 0 {
        // Abstract: 0, length, name (after its leading 0).
        data[5] = name.len.saturating_sub(1) as u8;
        let mut i = 1;
        while i < UNIX_PATH_MAX {
            data[5 + i] = name.raw[i] & mask(below(i as u64, len));
            i += 1;
        }
        return (data, false);
    }
    // A path: up to its NUL or its length.
    let mut alive = 1u64;
    let mut unplain = 0u64;
    let mut i = 0;
    while i < UNIX_PATH_MAX {
        let b = name.raw[i];
        alive &= ne(b, 0) & below(i as u64, len);
        data[4 + i] = b & mask(alive);
        if i >= 1 {
            // `//`, a `.` or `..` component (`/.x` is a name).
            let next = byte(name, i + 1, len);
            let after = byte(name, i + 2, len);
            let dot = eq(b, b'.');
            let ends = |c: u8| eq(c, b'/') | eq(c, 0);
            let odd = eq(b, b'/') | (dot & ends(next)) | (dot & eq(next, b'.') & ends(after));
            unplain |= alive & eq(name.raw[i - 1], b'/') & odd;
        }
        i += 1;
    }
    (data, unplain != 0)
}

/// A value the compiler knows nothing of, so that it keeps the arithmetic
/// below rather than turning it back into comparisons and branches.
#[inline(always)]
fn opaque(x: u64) -> u64 {
    core::hint::black_box(x)
}

/// 1 if `a == b`, else 0, with no branch.
#[inline(always)]
fn eq(a: u8, b: u8) -> u64 {
    (opaque(u64::from(a ^ b)).wrapping_sub(1) >> 63) & 1
}

/// 1 if `a != b`, else 0, with no branch (`1 - eq` would be compiled to
/// a comparison and a branch).
#[inline(always)]
fn ne(a: u8, b: u8) -> u64 {
    (0u64.wrapping_sub(opaque(u64::from(a ^ b))) >> 63) & 1
}

/// 1 if `i < n` (both below 2^63), else 0, with no branch.
#[inline(always)]
fn below(i: u64, n: u64) -> u64 {
    (i.wrapping_sub(n) >> 63) & 1
}

/// 0xff for 1, 0 for 0.
#[inline(always)]
fn mask(bit: u64) -> u8 {
    (bit as u8).wrapping_neg()
}

/// Byte `i` of a path name, 0 past its length or the buffer.
#[inline(always)]
fn byte(name: &Name, i: usize, len: u64) -> u8 {
    if i < UNIX_PATH_MAX {
        name.raw[i] & mask(below(i as u64, len))
    } else {
        0
    }
}

/// Judges a UNIX connect or addressed send; returns the program's value.
#[inline(always)]
pub fn judge(ctx: &SockAddrContext, hook: u8) -> i32 {
    let caller = Caller::Task;
    let (policy, live) = governing(caller);
    let Some(name) = read_name(ctx) else {
        if released(policy) {
            return RET_ALLOW;
        }
        // Unreadable: judged as a name nothing allows.
        let empty = Name {
            raw: [0; UNIX_PATH_MAX],
            len: 0,
        };
        return conclude(policy, live, reason::UNIX_NOT_ALLOWED, hook, &empty);
    };
    let Some(Live { table, .. }) = live else {
        if released(policy) {
            return RET_ALLOW;
        }
        return conclude(policy, live, reason::NO_POLICY, hook, &name);
    };
    let (data, unplain) = key_of(table, &name);
    let entry = UNIX_ALLOW
        .get(Key::new(TABLE_BITS + 8 * (UNIX_KEY_LEN as u32 - 4), data))
        .copied()
        .unwrap_or(0);
    let why = match entry {
        unix_entry::ALLOW if !unplain => reason::NONE,
        unix_entry::NAME_SERVICE => reason::NAME_SERVICE_SOCKET,
        _ => reason::UNIX_NOT_ALLOWED,
    };
    conclude(policy, live, why, hook, &name)
}

/// Counts the attempt and, unless allowed or a name-service socket,
/// reports it with its name; 1 allows, 0 refuses (audit mode allows).
#[inline(always)]
fn conclude(policy: u32, live: Option<Live>, why: u8, hook: u8, name: &Name) -> i32 {
    let audit = matches!(live, Some(Live { audit: true, .. }));
    let v = tally(policy, audit, why, proto_class::OTHER);
    if let Some(v) = v {
        if why != reason::NAME_SERVICE_SOCKET {
            report(policy, v, why, hook, name);
        }
    }
    returned(v)
}

#[inline(always)]
fn report(policy: u32, v: u8, why: u8, hook: u8, name: &Name) {
    let dest = Dest {
        family: AF_UNIX,
        addr: [0; 16],
        port: 0,
    };
    let Some(mut entry) = EVENTS.reserve::<UnixEvent>(0) else {
        bump(egress_common::lost_index(policy));
        return;
    };
    entry.write(UnixEvent {
        event: Attempt {
            caller: Caller::Task,
            policy,
            hook,
            protocol: 0,
            class: proto_class::OTHER,
            dest,
        }
        .event(v, why),
        name: name.raw,
        len: name.len as u8,
        _pad: [0; 3],
    });
    entry.submit(0);
}
