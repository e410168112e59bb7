//! The seccomp filter `egressd exec` puts on its command: socket families
//! that no cgroup program sees are refused unless the policy names them.
//!
//! The kernel runs the cgroup `sock_create` program only for IPv4 and IPv6
//! sockets. A socket of another family (AF_VSOCK reaches the hypervisor's
//! host from a VM; AF_PACKET and AF_XDP write frames; AF_TIPC, AF_RDS, ...)
//! passes no hook of egressd's at all, so `socket()` and `socketpair()`
//! fail with `EAFNOSUPPORT` for every family but AF_UNIX, AF_INET,
//! AF_INET6, AF_NETLINK and those the policy's `channels.families` lists.
//! `socket(AF_INET, SOCK_PACKET, ...)` is the old spelling of a packet
//! socket (the kernel makes it AF_PACKET), so it is refused as AF_PACKET
//! is. io_uring can make sockets without the `socket()` system call (Linux
//! 5.19), out of a filter's sight, so its system calls fail with `ENOSYS`
//! unless the policy allows io_uring (a ring passed in from outside is
//! useless too). System calls of another ABI (32-bit or x32, where
//! `socketcall` hides the family) fail with `ENOSYS`.
//!
//! Netlink sockets are judged by protocol: `NETLINK_ROUTE` (addresses and
//! routes, which getaddrinfo's `AI_ADDRCONFIG` and getifaddrs read; it
//! reaches no other process without `CAP_NET_ADMIN`) is open, the rest
//! (`NETLINK_USERSOCK` carries messages to processes of any uid) fail with
//! `EPROTONOSUPPORT` unless `channels.families` names `netlink`.
//!
//! `listen()` is handed to egressd (a seccomp user notification, Linux
//! 5.0): see `confine::listen`.
//!
//! New user and network namespaces are refused (`EPERM` from `unshare`,
//! `clone` and `setns`; `clone3`, whose flags a filter cannot read, fails
//! with `ENOSYS`, and the C library falls back to `clone`) unless
//! `channels.namespaces` allows them: in a user namespace of its own the
//! command holds `CAP_NET_ADMIN` over a network namespace of its own.

use crate::policy::Channels;

/// Families always open: IP sockets are judged by destination in the
/// kernel; UNIX and netlink sockets stay on this host.
pub const ALWAYS_OPEN: [i32; 4] = [
    libc::AF_UNIX,
    libc::AF_INET,
    libc::AF_INET6,
    libc::AF_NETLINK,
];

/// `struct sock_filter`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

/// A compiled filter, made before the fork and applied in the child: with
/// `listen()` handed to egressd (see `confine::listen`), and a fallback
/// that refuses `listen()` for a process where egressd cannot take it (a
/// filter above the command's has a supervisor of its own already).
#[derive(Clone)]
pub struct Filter {
    insns: Vec<Insn>,
    fallback: Vec<Insn>,
}

const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
const JA: u16 = 0x05; // BPF_JMP | BPF_JA
const RET_K: u16 = 0x06; // BPF_RET | BPF_K
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_USER_NOTIF: u32 = 0x7fc0_0000;
const RET_ERRNO: u32 = 0x0005_0000;

// Offsets in `struct seccomp_data`.
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARG0_LOW: u32 = 16;
const ARG1_LOW: u32 = 24;
const ARG2_LOW: u32 = 32;
/// `CLONE_NEWUSER | CLONE_NEWNET`.
const NEW_NAMESPACES: u32 = 0x1000_0000 | 0x4000_0000;
/// The netlink protocol open to every command.
const NETLINK_ROUTE: u32 = 0;
/// `SOCK_PACKET`, in the low bits of `socket()`'s type (the rest are flags).
const SOCK_PACKET: u32 = 10;
const SOCK_TYPE_MASK: u32 = 0xf;

#[cfg(target_arch = "x86_64")]
mod arch {
    pub const AUDIT_ARCH: u32 = 0xc000_003e;
    pub const SOCKET: u32 = 41;
    pub const SOCKETPAIR: u32 = 53;
    pub const LISTEN: u32 = 50;
    pub const CLONE: u32 = 56;
    pub const UNSHARE: u32 = 272;
    pub const SETNS: u32 = 308;
    pub const CLONE3: u32 = 435;
    /// io_uring_setup, io_uring_enter and io_uring_register.
    pub const IO_URING: [u32; 3] = [425, 426, 427];
    /// x32 system calls carry this bit (same audit arch).
    pub const FOREIGN_NR: u32 = 0x4000_0000;
}

#[cfg(target_arch = "aarch64")]
mod arch {
    pub const AUDIT_ARCH: u32 = 0xc000_00b7;
    pub const SOCKET: u32 = 198;
    pub const SOCKETPAIR: u32 = 199;
    pub const LISTEN: u32 = 201;
    pub const CLONE: u32 = 220;
    pub const UNSHARE: u32 = 97;
    pub const SETNS: u32 = 268;
    pub const CLONE3: u32 = 435;
    /// io_uring_setup, io_uring_enter and io_uring_register.
    pub const IO_URING: [u32; 3] = [425, 426, 427];
    /// No other ABI shares aarch64's audit arch.
    pub const FOREIGN_NR: u32 = u32::MAX;
}

fn stmt(code: u16, k: u32) -> Insn {
    Insn {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Insn {
    Insn { code, jt, jf, k }
}

/// `unshare` and `clone` with `CLONE_NEWUSER` or `CLONE_NEWNET` fail with
/// `EPERM`, as does `setns` into a user or network namespace (or any: type
/// 0); `clone3` fails with `ENOSYS`. Expects the call's number in A, and
/// leaves it there.
fn no_new_namespaces() -> [Insn; 15] {
    let eperm = stmt(RET_K, RET_ERRNO | libc::EPERM as u32);
    [
        jump(JEQ_K, arch::CLONE3, 0, 1),
        stmt(RET_K, RET_ERRNO | libc::ENOSYS as u32),
        // unshare(flags) and clone(flags, ...): the flags are argument 0.
        jump(JEQ_K, arch::UNSHARE, 1, 0),
        jump(JEQ_K, arch::CLONE, 0, 3),
        stmt(LD_W_ABS, ARG0_LOW),
        jump(JSET_K, NEW_NAMESPACES, 0, 1),
        eperm,
        stmt(LD_W_ABS, NR),
        // setns(fd, nstype).
        jump(JEQ_K, arch::SETNS, 0, 5),
        stmt(LD_W_ABS, ARG1_LOW),
        jump(JEQ_K, 0, 2, 0),
        jump(JSET_K, NEW_NAMESPACES, 1, 0),
        stmt(JA, 1),
        eperm,
        stmt(LD_W_ABS, NR),
    ]
}

impl Filter {
    /// The filter for a policy's channels.
    pub fn new(channels: &Channels) -> Filter {
        let netlink_open = channels
            .families
            .iter()
            .any(|f| i32::from(f.number()) == libc::AF_NETLINK);
        let mut families: Vec<u32> = ALWAYS_OPEN
            .iter()
            .filter(|f| **f != libc::AF_NETLINK)
            .map(|f| *f as u32)
            .chain(channels.families.iter().map(|f| u32::from(f.number())))
            .collect();
        families.sort_unstable();
        families.dedup();
        let errno = |e: i32| stmt(RET_K, RET_ERRNO | e as u32);
        let mut p = vec![
            stmt(LD_W_ABS, ARCH),
            // Another ABI: refuse every call (its socketcall hides the family).
            jump(JEQ_K, arch::AUDIT_ARCH, 1, 0),
            errno(libc::ENOSYS),
            stmt(LD_W_ABS, NR),
            jump(JGE_K, arch::FOREIGN_NR, 0, 1),
            errno(libc::ENOSYS),
            // listen(): to egressd, which judges the port the socket
            // listens on (see `confine::listen`).
            jump(JEQ_K, arch::LISTEN, 0, 1),
            stmt(RET_K, RET_USER_NOTIF),
        ];
        if !channels.io_uring {
            for nr in arch::IO_URING {
                p.push(jump(JEQ_K, nr, 0, 1));
                p.push(errno(libc::ENOSYS));
            }
        }
        if !channels.namespaces {
            p.extend(no_new_namespaces());
        }
        let packet_open = families.contains(&(libc::AF_PACKET as u32));
        if !packet_open {
            // socket(AF_INET, SOCK_PACKET): a packet socket by another name.
            p.push(jump(JEQ_K, arch::SOCKET, 0, 6));
            p.push(stmt(LD_W_ABS, ARG0_LOW));
            p.push(jump(JEQ_K, libc::AF_INET as u32, 0, 4));
            p.push(stmt(LD_W_ABS, ARG1_LOW));
            p.push(stmt(AND_K, SOCK_TYPE_MASK));
            p.push(jump(JEQ_K, SOCK_PACKET, 0, 1));
            p.push(errno(libc::EAFNOSUPPORT));
            p.push(stmt(LD_W_ABS, NR));
        }
        // socket or socketpair: on to the family check; else allowed.
        p.push(jump(JEQ_K, arch::SOCKET, 2, 0));
        p.push(jump(JEQ_K, arch::SOCKETPAIR, 1, 0));
        p.push(stmt(RET_K, RET_ALLOW));
        p.push(stmt(LD_W_ABS, ARG0_LOW));
        // What follows the family checks: netlink by protocol (unless the
        // policy opens netlink), the refusal, the ALLOW they jump to.
        let mut tail = Vec::new();
        if !netlink_open {
            tail.push(jump(JEQ_K, libc::AF_NETLINK as u32, 0, 3));
            tail.push(stmt(LD_W_ABS, ARG2_LOW));
            tail.push(jump(JEQ_K, NETLINK_ROUTE, 2, 0));
            tail.push(errno(libc::EPROTONOSUPPORT));
        }
        tail.push(errno(libc::EAFNOSUPPORT));
        tail.push(stmt(RET_K, RET_ALLOW));
        // Each allowed family jumps to the ALLOW after the last check.
        let n = families.len();
        for (i, f) in families.iter().enumerate() {
            let to_allow = (n - i - 1) + tail.len() - 1;
            p.push(jump(JEQ_K, *f, to_allow as u8, 0));
        }
        p.extend(tail);
        let mut fallback = p.clone();
        let at = fallback
            .iter()
            .position(|i| i.code == RET_K && i.k == RET_USER_NOTIF)
            .expect("the listen() check");
        fallback[at] = errno(libc::EPERM);
        Filter { insns: p, fallback }
    }

    /// Installs the filter on the calling thread: in the child between
    /// fork and exec, after `PR_SET_NO_NEW_PRIVS`, and sends its listener
    /// (the descriptor egressd answers `listen()` on) through `to_egressd`,
    /// a UNIX socket, then closes both. Where the kernel refuses a
    /// listener, the fallback is installed and nothing is sent.
    /// Async-signal-safe.
    pub fn apply(&self, to_egressd: libc::c_int) -> std::io::Result<()> {
        const SET_MODE_FILTER: libc::c_long = 1;
        const FLAG_NEW_LISTENER: libc::c_long = 1 << 3;
        #[repr(C)]
        struct Prog {
            len: u16,
            filter: *const Insn,
        }
        let prog = |insns: &[Insn]| Prog {
            len: insns.len() as u16,
            filter: insns.as_ptr(),
        };
        let with = prog(&self.insns);
        // SAFETY: prog points at instructions that live as long as self.
        let listener = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                SET_MODE_FILTER,
                FLAG_NEW_LISTENER,
                &with as *const Prog,
            )
        };
        if listener < 0 {
            let without = prog(&self.fallback);
            // SAFETY: as above.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    SET_MODE_FILTER,
                    0 as libc::c_long,
                    &without as *const Prog,
                )
            };
            // SAFETY: closing our own descriptor.
            unsafe { libc::close(to_egressd) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            return Ok(());
        }
        let sent = super::handover::send_fd(to_egressd, listener as libc::c_int);
        // SAFETY: closing our own descriptors.
        unsafe {
            libc::close(listener as libc::c_int);
            libc::close(to_egressd);
        }
        sent
    }
}
