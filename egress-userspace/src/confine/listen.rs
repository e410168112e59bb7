//! `listen()` under `egressd exec`: the command's seccomp filter hands each
//! call to egressd (a user notification), which judges the socket and, if
//! it may listen, calls `listen()` on it itself.
//!
//! Why: `listen()` on a socket that was never bound takes a port of the
//! kernel's choosing on every address, and no bind hook sees it. A peer
//! outside then learns which ports listen (silence: the backstop drops the
//! SYN-ACK) and which do not (a reset): a channel of the agent's choosing,
//! however its packets are refused. So an IP socket may listen only where
//! it may bind: on loopback, or on a port a `listen` rule allows; a
//! socket that is not bound is refused (EPERM), unless every port is
//! allowed. Other families (UNIX) listen as before.
//!
//! egressd takes a copy of the socket (`pidfd_getfd`, Linux 5.6), judges
//! that copy, and listens on that copy: another thread of the command
//! that swaps the descriptor meanwhile changes nothing. In audit mode the
//! call goes through and is reported. If egressd cannot take the socket,
//! the call is refused.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use egress_common::{hook, reason, verdict, Event, AF_INET, AF_INET6};

use crate::{
    policy::{Listen, Protocol},
    report::events::Record,
};

/// `struct seccomp_notif`.
#[repr(C)]
#[derive(Default)]
struct Notif {
    id: u64,
    pid: u32,
    flags: u32,
    nr: i32,
    arch: u32,
    ip: u64,
    args: [u64; 6],
}

/// `struct seccomp_notif_resp`.
#[repr(C)]
struct Resp {
    id: u64,
    val: i64,
    error: i32,
    flags: u32,
}

const NOTIF_RECV: libc::c_ulong = 0xc050_2100; // _IOWR('!', 0, struct seccomp_notif)
const NOTIF_SEND: libc::c_ulong = 0xc018_2101; // _IOWR('!', 1, struct seccomp_notif_resp)
const NOTIF_ID_VALID: libc::c_ulong = 0x4008_2102; // _IOW('!', 2, __u64)
const NOTIF_ID_VALID_OLD: libc::c_ulong = 0x8008_2102; // _IOR, before Linux 5.8

/// What a policy says of listening: the ports its `listen` rules allow
/// for TCP, and its mode.
#[derive(Clone)]
pub struct Judge {
    pub ports: Vec<(u16, u16)>,
    pub audit: bool,
    pub policy_id: u32,
}

impl Judge {
    pub fn new(listen: &[Listen], audit: bool, policy_id: u32) -> Judge {
        let ports = listen
            .iter()
            .filter(|l| matches!(l.protocol, Protocol::Tcp | Protocol::Any))
            .flat_map(|l| l.ports.iter().map(|r| (r.lo, r.hi)))
            .collect();
        Judge {
            ports,
            audit,
            policy_id,
        }
    }

    /// Whether an IP socket bound to `local` (port 0: not bound) may listen.
    pub fn allows(&self, local: SocketAddr) -> bool {
        let every_port = self.ports.iter().any(|&(lo, hi)| lo <= 1 && hi == u16::MAX);
        if local.port() == 0 {
            return every_port;
        }
        loopback(local.ip())
            || self
                .ports
                .iter()
                .any(|&(lo, hi)| lo <= local.port() && local.port() <= hi)
    }
}

fn loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_loopback(),
        IpAddr::V6(a) => a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// Answers the command's `listen()` calls on `listener` until `stop` is
/// set or the command's processes are gone; a refused (or audited) call is
/// sent to `events` as a record, hook `listen` (while it has room).
pub fn supervise(
    listener: OwnedFd,
    judge: Judge,
    cgroup_id: u64,
    stop: Arc<AtomicBool>,
    events: tokio::sync::mpsc::Sender<Record>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let mut pfd = libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd we own.
            let n = unsafe { libc::poll(&mut pfd, 1, 200) };
            if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                return;
            }
            if pfd.revents & libc::POLLHUP != 0 {
                return; // no process of the command is left
            }
            if pfd.revents & libc::POLLIN == 0 {
                continue;
            }
            let mut notif = Notif::default();
            // SAFETY: the kernel fills the zeroed struct we own.
            if unsafe { libc::ioctl(listener.as_raw_fd(), NOTIF_RECV, &mut notif) } != 0 {
                continue; // the caller went away (ENOENT), or a signal
            }
            let (result, record) = answer(&listener, &notif, &judge, cgroup_id);
            let resp = Resp {
                id: notif.id,
                val: 0,
                error: match result {
                    Ok(()) => 0,
                    Err(errno) => -errno,
                },
                flags: 0,
            };
            // SAFETY: a response struct we own; a caller gone meanwhile
            // makes this fail, which changes nothing.
            unsafe { libc::ioctl(listener.as_raw_fd(), NOTIF_SEND, &resp) };
            if let Some(r) = record {
                // A flood of refusals: the calls are still refused, and
                // only the events past the queue are dropped.
                let _ = events.try_send(r);
            }
        }
    })
}

/// Judges one `listen(fd, backlog)` and makes it on egressd's copy of the
/// socket if allowed: the errno to return (or success), and what to report.
fn answer(
    listener: &OwnedFd,
    n: &Notif,
    judge: &Judge,
    cgroup_id: u64,
) -> (Result<(), i32>, Option<Record>) {
    let (fd, backlog) = (n.args[0] as i32, n.args[1] as i32);
    let Ok(sock) = take_fd(n.pid, fd) else {
        // Gone, or not ours to take: refused (the caller sees EBADF for a
        // bad descriptor, as listen() would say).
        return (Err(libc::EBADF), None);
    };
    let id = n.id;
    // SAFETY: ioctls on our own listener, with a pointer to the id (the
    // number the kernel took before Linux 5.8 second).
    let valid = unsafe {
        libc::ioctl(listener.as_raw_fd(), NOTIF_ID_VALID, &id) == 0
            || libc::ioctl(listener.as_raw_fd(), NOTIF_ID_VALID_OLD, &id) == 0
    };
    if !valid {
        return (Err(libc::EPERM), None); // the caller died; its pid may be reused
    }
    let record = match local_ip(&sock) {
        // An IP stream socket: judged.
        Ok(Some(local)) if is_stream(&sock) && !judge.allows(local) => {
            Some(refusal(n.pid, local, judge, cgroup_id))
        }
        Ok(_) => None,
        // Not a socket: the kernel's own answer.
        Err(e) if e.raw_os_error() == Some(libc::ENOTSOCK) => None,
        // Not known: refused.
        Err(_) => return (Err(libc::EPERM), None),
    };
    if record.is_some() && !judge.audit {
        return (Err(libc::EPERM), record);
    }
    // SAFETY: listen(2) on our own copy of the socket.
    if unsafe { libc::listen(sock.as_raw_fd(), backlog) } != 0 {
        let errno = io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL);
        return (Err(errno), record);
    }
    (Ok(()), record)
}

/// A copy of descriptor `fd` of thread `tid` (a notification names the
/// calling thread): through a pidfd of the thread itself (Linux 6.9), else
/// of its thread group, checked with kcmp to be the file the thread named
/// (a thread may have a descriptor table of its own).
fn take_fd(tid: u32, fd: i32) -> io::Result<OwnedFd> {
    const PIDFD_THREAD: libc::c_long = libc::O_EXCL as libc::c_long;
    if let Ok(pidfd) = pidfd_open(tid, PIDFD_THREAD) {
        return getfd(&pidfd, fd);
    }
    let tgid = status_field(tid, "Tgid:");
    if tgid == 0 {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    let ours = getfd(&pidfd_open(tgid, 0)?, fd)?;
    if tgid != tid {
        const KCMP_FILE: libc::c_long = 0;
        // SAFETY: kcmp compares two descriptors; no memory is passed.
        let same = unsafe {
            libc::syscall(
                libc::SYS_kcmp,
                libc::getpid() as libc::c_long,
                tid as libc::c_long,
                KCMP_FILE,
                ours.as_raw_fd() as libc::c_long,
                fd as libc::c_long,
            )
        };
        if same != 0 {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
    }
    Ok(ours)
}

fn pidfd_open(pid: u32, flags: libc::c_long) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open returns a new descriptor or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_long, flags) };
    if pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor, now owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(pidfd as i32) })
}

fn getfd(pidfd: &OwnedFd, fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_getfd returns a new descriptor or -1.
    let got = unsafe {
        libc::syscall(
            libc::SYS_pidfd_getfd,
            pidfd.as_raw_fd() as libc::c_long,
            fd as libc::c_long,
            0 as libc::c_long,
        )
    };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor, now owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(got as i32) })
}

/// A number from `/proc/TID/status` (0 if it cannot be read).
fn status_field(tid: u32, name: &str) -> u32 {
    std::fs::read_to_string(format!("/proc/{tid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Whether a socket is a stream socket (only those listen; for others
/// the kernel's own answer is given).
fn is_stream(sock: &OwnedFd) -> bool {
    let mut kind: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into an int we own, with its size.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut kind as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    rc == 0 && kind == libc::SOCK_STREAM
}

/// The local address of an IPv4 or IPv6 socket; None for another family.
fn local_ip(sock: &OwnedFd) -> io::Result<Option<SocketAddr>> {
    // SAFETY: getsockname into storage we own, with its size.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: as above.
    let rc = unsafe {
        libc::getsockname(
            sock.as_raw_fd(),
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in.
            let a: libc::sockaddr_in =
                unsafe { std::ptr::read((&ss as *const libc::sockaddr_storage).cast()) };
            Ok(Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6.
            let a: libc::sockaddr_in6 =
                unsafe { std::ptr::read((&ss as *const libc::sockaddr_storage).cast()) };
            Ok(Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr)),
                u16::from_be(a.sin6_port),
            )))
        }
        _ => Ok(None),
    }
}

/// The record of a refused (or audited) listen of thread `tid`.
fn refusal(tid: u32, local: SocketAddr, judge: &Judge, cgroup_id: u64) -> Record {
    let field = |name: &str| status_field(tid, name);
    let mut comm = [0u8; 16];
    let name = std::fs::read_to_string(format!("/proc/{tid}/comm")).unwrap_or_default();
    let name = name.trim_end().as_bytes();
    comm[..name.len().min(15)].copy_from_slice(&name[..name.len().min(15)]);
    let (family, addr) = match local.ip() {
        IpAddr::V4(a) => {
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&a.octets());
            (AF_INET, addr)
        }
        IpAddr::V6(a) => (AF_INET6, a.octets()),
    };
    Record {
        event: Event {
            cgroup_id,
            pid: tid,
            tgid: field("Tgid:"),
            uid: field("Uid:"),
            gid: field("Gid:"),
            policy_id: judge.policy_id,
            port: local.port(),
            family,
            protocol: libc::IPPROTO_TCP as u8,
            addr,
            comm,
            reason: reason::LISTEN_NOT_ALLOWED,
            verdict: if judge.audit {
                verdict::AUDITED
            } else {
                verdict::DENIED
            },
            hook: hook::LISTEN,
            _pad: [0; 5],
        },
        unix: None,
        presented: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ip_socket_listens_where_it_may_bind() {
        let j = Judge {
            ports: vec![(8443, 8443)],
            audit: false,
            policy_id: 1,
        };
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(j.allows(at("0.0.0.0:8443")));
        assert!(j.allows(at("[::]:8443")));
        assert!(j.allows(at("127.0.0.1:9000")));
        assert!(j.allows(at("[::1]:9000")));
        assert!(j.allows(at("[::ffff:127.0.0.1]:9000")));
        assert!(!j.allows(at("0.0.0.0:9000")));
        assert!(!j.allows(at("198.51.100.1:9000")));
        // Not bound: the kernel would pick a port on every address.
        assert!(!j.allows(at("0.0.0.0:0")));
        assert!(!j.allows(at("[::]:0")));
        let every = Judge {
            ports: vec![(1, u16::MAX)],
            ..j
        };
        assert!(every.allows(at("0.0.0.0:0")));
    }

    #[test]
    fn the_kernel_structs_have_their_abi_sizes() {
        assert_eq!(std::mem::size_of::<Notif>(), 80);
        assert_eq!(std::mem::size_of::<Resp>(), 24);
    }
}
