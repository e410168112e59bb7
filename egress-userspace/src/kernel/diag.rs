//! The TCP and UDP sockets a cgroup made, through sock_diag (netlink
//! `NETLINK_SOCK_DIAG`): found by the cgroup id the kernel reports for
//! each socket (Linux 5.8), and destroyed with `SOCK_DESTROY` (a kernel
//! built with `CONFIG_INET_DIAG_DESTROY`). Before egressd takes its
//! programs off a cgroup, what the cgroup's sockets still hold must not
//! leave: a socket whose data the backstop refused keeps it queued and TCP
//! sends it again, so once the programs are gone it would reach the peer.
//!
//! Only the calling network namespace is seen: a socket made in another
//! one (the agent's own) reaches only that namespace.

use std::{
    collections::HashSet,
    fs, io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    thread,
    time::{Duration, Instant},
};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const INET_DIAG_INFO: u16 = 2;
const INET_DIAG_CGROUP_ID: u16 = 21;
/// `tcpi_bytes_acked` in `struct tcp_info` (Linux 4.1).
const TCPI_BYTES_ACKED: usize = 120;
/// TCP states but TIME_WAIT (6) and CLOSE (7): a socket that can still send.
const LIVE_STATES: u32 = !((1 << 6) | (1 << 7));
/// The length of `struct inet_diag_sockid`.
const SOCKID_LEN: usize = 48;

/// One socket, as sock_diag reports it.
#[derive(Clone, Debug)]
pub struct Socket {
    pub family: u8,
    pub protocol: u8,
    /// Bytes sent but not acknowledged, or not sent yet (a TCP
    /// connection; 0 for anything else).
    pub unsent: u32,
    /// Bytes the peer acknowledged (a TCP connection; 0 for anything else).
    pub acked: u64,
    pub cgroup: u64,
    /// `struct inet_diag_sockid`: addresses, ports, interface, cookie.
    id: [u8; SOCKID_LEN],
}

fn netlink() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // An answer that never comes is an error, not a hang.
    let timeout = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: setting a socket option from a value we own.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// A request: `nlmsghdr` then `inet_diag_req_v2`.
fn request(kind: u16, flags: u16, family: u8, protocol: u8, states: u32, id: &[u8]) -> Vec<u8> {
    let len = 16 + 8 + SOCKID_LEN;
    let mut m = Vec::with_capacity(len);
    m.extend((len as u32).to_ne_bytes());
    m.extend(kind.to_ne_bytes());
    m.extend(flags.to_ne_bytes());
    m.extend([0u8; 8]); // seq, pid
                        // TCP's `struct tcp_info` is asked for (its bytes acknowledged).
    let ext = if protocol == libc::IPPROTO_TCP as u8 {
        1 << (INET_DIAG_INFO - 1)
    } else {
        0
    };
    m.extend([family, protocol, ext, 0]); // family, protocol, ext, pad
    m.extend(states.to_ne_bytes());
    m.extend(id);
    m
}

fn send(fd: &OwnedFd, msg: &[u8]) -> io::Result<()> {
    // SAFETY: sending our own buffer to the kernel (the default address).
    let n = unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: receiving into our own buffer.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().unwrap())
}

/// The error a `NLMSG_ERROR` message carries (None for an ACK).
fn error_of(msg: &[u8]) -> Option<io::Error> {
    let code = i32::from_ne_bytes(msg.get(16..20)?.try_into().ok()?);
    (code != 0).then(|| io::Error::from_raw_os_error(-code))
}

/// Every socket of `family` and `protocol` in this network namespace.
impl Socket {
    /// The kernel's cookie of the socket (`idiag_cookie`, two native u32s,
    /// low first).
    pub fn cookie(&self) -> u64 {
        u64::from(u32_at(&self.id, 40)) | u64::from(u32_at(&self.id, 44)) << 32
    }
}

fn dump(family: u8, protocol: u8) -> io::Result<Vec<Socket>> {
    let fd = netlink()?;
    let states = if protocol == libc::IPPROTO_TCP as u8 {
        LIVE_STATES
    } else {
        u32::MAX
    };
    let req = request(
        SOCK_DIAG_BY_FAMILY,
        NLM_F_REQUEST | NLM_F_DUMP,
        family,
        protocol,
        states,
        &[0; SOCKID_LEN],
    );
    send(&fd, &req)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = recv(&fd, &mut buf)?;
        let mut off = 0;
        while off + 16 <= n {
            let len = u32_at(&buf, off) as usize;
            if len < 16 || off + len > n {
                break;
            }
            let msg = &buf[off..off + len];
            match u16_at(msg, 4) {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    return Err(error_of(msg).unwrap_or_else(|| io::Error::other("sock_diag")))
                }
                _ => {
                    if let Some(s) = parse(msg, protocol) {
                        out.push(s);
                    }
                }
            }
            off += (len + 3) & !3;
        }
        if n == 0 {
            return Ok(out);
        }
    }
}

/// One `inet_diag_msg` and its attributes.
fn parse(msg: &[u8], protocol: u8) -> Option<Socket> {
    const BODY: usize = 16;
    const MSG_LEN: usize = 4 + SOCKID_LEN + 20;
    let body = msg.get(BODY..BODY + MSG_LEN)?;
    let mut id = [0u8; SOCKID_LEN];
    id.copy_from_slice(&body[4..4 + SOCKID_LEN]);
    let (mut cgroup, mut acked) = (0, 0);
    let mut off = BODY + MSG_LEN;
    while off + 4 <= msg.len() {
        let len = u16_at(msg, off) as usize;
        if len < 4 || off + len > msg.len() {
            break;
        }
        match u16_at(msg, off + 2) {
            INET_DIAG_CGROUP_ID if len >= 12 => {
                cgroup = u64::from_ne_bytes(msg[off + 4..off + 12].try_into().ok()?);
            }
            INET_DIAG_INFO if len >= 4 + TCPI_BYTES_ACKED + 8 => {
                let at = off + 4 + TCPI_BYTES_ACKED;
                acked = u64::from_ne_bytes(msg[at..at + 8].try_into().ok()?);
            }
            _ => {}
        }
        off += (len + 3) & !3;
    }
    // idiag_wqueue: for a TCP connection, bytes not yet acknowledged; for a
    // listener, its backlog; for UDP, memory in flight (nothing to wait for).
    const TCP_LISTEN: u8 = 10;
    let tcp_data = protocol == libc::IPPROTO_TCP as u8 && body[1] != TCP_LISTEN;
    Some(Socket {
        family: body[0],
        protocol,
        unsent: if tcp_data {
            u32_at(body, 4 + SOCKID_LEN + 8)
        } else {
            0
        },
        acked,
        cgroup,
        id,
    })
}

/// The TCP and UDP sockets (IPv4 and IPv6) made in one of `cgroups`.
pub fn sockets_in(cgroups: &HashSet<u64>) -> io::Result<Vec<Socket>> {
    let mut out = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        for protocol in [libc::IPPROTO_TCP as u8, libc::IPPROTO_UDP as u8] {
            match dump(family, protocol) {
                Ok(all) => out.extend(all.into_iter().filter(|s| cgroups.contains(&s.cgroup))),
                // No UDP diag in this kernel: its UDP sockets cannot be
                // listed, but they die with their processes (no orphans).
                Err(_) if protocol == libc::IPPROTO_UDP as u8 => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(out)
}

/// Destroys one socket (TCP: aborted, its queue dropped; the reset it
/// sends is judged by the programs still attached).
pub fn destroy(s: &Socket) -> io::Result<()> {
    let fd = netlink()?;
    let req = request(
        SOCK_DESTROY,
        NLM_F_REQUEST | NLM_F_ACK,
        s.family,
        s.protocol,
        u32::MAX,
        &s.id,
    );
    send(&fd, &req)?;
    let mut buf = [0u8; 512];
    let n = recv(&fd, &mut buf)?;
    match (n >= 20 && u16_at(&buf, 4) == NLMSG_ERROR).then(|| error_of(&buf[..n])) {
        Some(None) => Ok(()),
        Some(Some(e)) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Some(Some(e)) => Err(e),
        None => Err(io::Error::other("sock_diag gave no answer to SOCK_DESTROY")),
    }
}

/// Destroys the TCP sockets (IPv4 and IPv6) whose cookies are in
/// `cookies`, if they are still there: connections refused for the name
/// they presented fail at once for their clients. One dump per family,
/// however many cookies. Returns how many were destroyed.
pub fn destroy_by_cookie(cookies: &HashSet<u64>) -> io::Result<usize> {
    let mut destroyed = 0;
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        for s in dump(family, libc::IPPROTO_TCP as u8)? {
            if cookies.contains(&s.cookie()) {
                destroy(&s)?;
                destroyed += 1;
            }
        }
    }
    Ok(destroyed)
}

/// What `close_leftovers` did.
pub struct Closed {
    /// Sockets destroyed.
    pub destroyed: usize,
    /// Sockets that could not be (and why): their cgroup's programs must stay.
    pub failed: Option<(usize, io::Error)>,
}

/// Once no process is left in `cgroups`: waits up to `wait` for their
/// sockets to send what they hold (an allowed peer gets what was written
/// before exit), then destroys every socket still there, so that nothing
/// the programs refused leaves after them.
pub fn close_leftovers(cgroups: &HashSet<u64>, wait: Duration) -> io::Result<Closed> {
    let deadline = Instant::now() + wait;
    let mut left = sockets_in(cgroups)?;
    while left.iter().any(|s| s.unsent > 0) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
        left = sockets_in(cgroups)?;
    }
    let mut closed = Closed {
        destroyed: 0,
        failed: None,
    };
    for s in &left {
        match destroy(s) {
            Ok(()) => closed.destroyed += 1,
            Err(e) => {
                let n = closed.failed.take().map_or(0, |(n, _)| n);
                closed.failed = Some((n + 1, e));
            }
        }
    }
    Ok(closed)
}

/// How long `cut_stalled` gives a socket to show that it is sending.
pub const LET_GO_WAIT: Duration = Duration::from_secs(2);

/// For a cgroup egressd lets go of while its processes live on (a reload
/// that releases it, `egressd detach`): waits up to `wait` for its TCP
/// sockets' queued data to be acknowledged, then destroys each socket that
/// still holds data and has had none acknowledged meanwhile. Those are
/// what the backstop refused (or held back for a budget), which TCP would
/// send again once the programs are gone; a connection that is sending
/// makes progress and is left alone. Returns how many were destroyed.
///
/// sock_diag sees one network namespace: this is done in egressd's own and
/// in that of each process in `pids` (the cgroups' processes: an agent in
/// a container or pod has its sockets in its own namespace), at once.
pub fn cut_stalled(cgroups: &HashSet<u64>, pids: &[i32], wait: Duration) -> io::Result<usize> {
    let own = fs::metadata("/proc/self/ns/net")?.ino();
    let mut seen = HashSet::from([own]);
    let mut spaces = vec![None];
    for pid in pids {
        let ns = match fs::File::open(format!("/proc/{pid}/ns/net")) {
            Ok(ns) => ns,
            // Exited meanwhile.
            Err(e)
                if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) =>
            {
                continue
            }
            // Not seen is not safe: the caller keeps the programs.
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("opening the network namespace of process {pid}: {e}"),
                ))
            }
        };
        if ns.metadata().is_ok_and(|m| seen.insert(m.ino())) {
            spaces.push(Some(ns));
        }
    }
    thread::scope(|scope| {
        let cuts: Vec<_> = spaces
            .into_iter()
            .map(|ns| {
                std::thread::Builder::new().spawn_scoped(scope, move || {
                    if let Some(ns) = ns {
                        // SAFETY: setns on this thread only, with a
                        // namespace fd we hold.
                        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                            return Err(io::Error::last_os_error());
                        }
                    }
                    cut_stalled_here(cgroups, wait)
                })
            })
            .collect();
        cuts.into_iter().try_fold(0, |n, cut| {
            Ok(n + cut?
                .join()
                .map_err(|_| io::Error::other("sock_diag thread panicked"))??)
        })
    })
}

/// `cut_stalled` in the calling thread's network namespace.
fn cut_stalled_here(cgroups: &HashSet<u64>, wait: Duration) -> io::Result<usize> {
    let holding = |all: Vec<Socket>| -> Vec<Socket> {
        all.into_iter()
            .filter(|s| s.protocol == libc::IPPROTO_TCP as u8 && s.unsent > 0)
            .collect()
    };
    let mut stalled = holding(sockets_in(cgroups)?);
    let deadline = Instant::now() + wait;
    while !stalled.is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        let now = holding(sockets_in(cgroups)?);
        stalled.retain(|s| {
            now.iter()
                .any(|n| n.cookie() == s.cookie() && n.acked == s.acked)
        });
    }
    let mut destroyed = 0;
    for s in &stalled {
        destroy(s)?;
        destroyed += 1;
    }
    Ok(destroyed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_a_header_and_an_inet_diag_req_v2() {
        let r = request(
            SOCK_DESTROY,
            NLM_F_REQUEST,
            10,
            6,
            u32::MAX,
            &[7; SOCKID_LEN],
        );
        assert_eq!(r.len(), 72);
        assert_eq!(u32_at(&r, 0), 72);
        assert_eq!(u16_at(&r, 4), SOCK_DESTROY);
        assert_eq!(&r[16..18], &[10, 6]);
        assert_eq!(&r[24..], &[7; SOCKID_LEN]);
    }

    #[test]
    fn this_process_finds_its_own_socket_by_cgroup() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let Ok(all) = dump(libc::AF_INET as u8, libc::IPPROTO_TCP as u8) else {
            return;
        };
        let port = listener.local_addr().unwrap().port();
        let mine: Vec<_> = all
            .iter()
            .filter(|s| u16::from_be_bytes([s.id[0], s.id[1]]) == port)
            .collect();
        assert_eq!(mine.len(), 1, "{all:?}");
        assert_ne!(mine[0].cgroup, 0);
    }
}
