//! `probe MODE ADDR [--mapped] [--count N]`: makes one outbound attempt the way an agent
//! (or an attacker steering it) could, with raw syscalls, and prints `ok` or
//! `error: ERRNO`. Exit status 0 on success, 1 on a refused attempt.
//!
//! ADDR is `IP:PORT` or `[IPv6]:PORT`. `--mapped` sends to an IPv4 ADDR as
//! `::ffff:a.b.c.d` from an AF_INET6 socket. `--count N` repeats the attempt
//! N times (a fresh socket each time) and reports the last result.
//!
//! Modes: tcp, udp-connect, udp-sendto, udp-sendmsg, udp-sendmmsg,
//! udp-cmsg (connected, then sendmsg with an IP_TOS/IPV6_TCLASS control
//! message and no address), udp-v4-on-v6 (AF_INET6 socket, AF_INET connect),
//! tfo-sendto (MSG_FASTOPEN), tfo-connect (TCP_FASTOPEN_CONNECT),
//! uring-connect, uring-sendmsg, udp-unspec (connect to `--via VIA`, then
//! sendto ADDR given with family AF_UNSPEC, which udp_sendmsg still uses).

use std::{
    io,
    mem::{size_of, zeroed},
    net::{IpAddr, SocketAddr},
    process::ExitCode,
};

use libc::{c_int, c_void, sockaddr, sockaddr_in, sockaddr_in6, sockaddr_storage, socklen_t};

const PAYLOAD: &[u8] = b"exfiltrated-secret";

#[derive(Clone, Copy)]
struct Target {
    storage: sockaddr_storage,
    len: socklen_t,
    family: c_int,
}

fn target(addr: SocketAddr, mapped: bool) -> Target {
    // SAFETY: sockaddr_storage is plain data; zero is a valid value.
    let mut storage: sockaddr_storage = unsafe { zeroed() };
    let ip6 = match (addr.ip(), mapped) {
        (IpAddr::V4(v4), false) => {
            let sin = sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: addr.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is large enough for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut sockaddr_storage).cast(), sin) };
            return Target {
                storage,
                len: size_of::<sockaddr_in>() as socklen_t,
                family: libc::AF_INET,
            };
        }
        (IpAddr::V4(v4), true) => v4.to_ipv6_mapped(),
        (IpAddr::V6(v6), _) => v6,
    };
    // SAFETY: zero is a valid sockaddr_in6.
    let mut sin6: sockaddr_in6 = unsafe { zeroed() };
    sin6.sin6_family = libc::AF_INET6 as u16;
    sin6.sin6_port = addr.port().to_be();
    sin6.sin6_addr.s6_addr = ip6.octets();
    // SAFETY: sockaddr_storage is large enough for sockaddr_in6.
    unsafe { std::ptr::write((&mut storage as *mut sockaddr_storage).cast(), sin6) };
    Target {
        storage,
        len: size_of::<sockaddr_in6>() as socklen_t,
        family: libc::AF_INET6,
    }
}

fn check(rc: isize) -> io::Result<isize> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Sockets made by the current attempt, closed after it: `--count` would
/// otherwise run out of descriptors (1024 under a systemd unit).
static OPENED: std::sync::Mutex<Vec<c_int>> = std::sync::Mutex::new(Vec::new());

fn socket(family: c_int, ty: c_int) -> io::Result<c_int> {
    // SAFETY: plain syscall.
    let fd = check(unsafe { libc::socket(family, ty, 0) } as isize).map(|fd| fd as c_int)?;
    OPENED.lock().unwrap().push(fd);
    Ok(fd)
}

/// Closes the sockets of the attempt that just ended.
fn close_opened() {
    for fd in OPENED.lock().unwrap().drain(..) {
        // SAFETY: a descriptor this program opened and no longer uses.
        unsafe { libc::close(fd) };
    }
}

fn sa(t: &Target) -> *const sockaddr {
    (&t.storage as *const sockaddr_storage).cast()
}

fn connect(fd: c_int, t: &Target) -> io::Result<()> {
    // SAFETY: t holds a valid sockaddr of t.len bytes.
    check(unsafe { libc::connect(fd, sa(t), t.len) } as isize).map(drop)
}

fn send(fd: c_int) -> io::Result<()> {
    // SAFETY: PAYLOAD is valid for its length.
    check(unsafe { libc::send(fd, PAYLOAD.as_ptr().cast(), PAYLOAD.len(), 0) }).map(drop)
}

fn msghdr(t: Option<&Target>, iov: &mut libc::iovec) -> libc::msghdr {
    // SAFETY: zero is a valid msghdr.
    let mut m: libc::msghdr = unsafe { zeroed() };
    if let Some(t) = t {
        m.msg_name = (&t.storage as *const sockaddr_storage as *mut sockaddr_storage).cast();
        m.msg_namelen = t.len;
    }
    m.msg_iov = iov;
    m.msg_iovlen = 1;
    m
}

fn iov() -> libc::iovec {
    libc::iovec {
        iov_base: PAYLOAD.as_ptr() as *mut c_void,
        iov_len: PAYLOAD.len(),
    }
}

fn run(mode: &str, t: &Target, via: Option<&Target>) -> io::Result<()> {
    match mode {
        "udp-unspec" => {
            let via = via.ok_or_else(|| io::Error::other("udp-unspec needs --via ADDR"))?;
            let fd = socket(via.family, libc::SOCK_DGRAM)?;
            connect(fd, via)?;
            let mut unspec = Target { ..*t };
            // SAFETY: the first field of every sockaddr is its u16 family.
            unsafe {
                *(&mut unspec.storage as *mut sockaddr_storage).cast::<u16>() =
                    libc::AF_UNSPEC as u16
            };
            // SAFETY: valid buffer and address.
            check(unsafe {
                libc::sendto(
                    fd,
                    PAYLOAD.as_ptr().cast(),
                    PAYLOAD.len(),
                    0,
                    sa(&unspec),
                    unspec.len,
                )
            })
            .map(drop)
        }
        "tcp" => {
            let fd = socket(t.family, libc::SOCK_STREAM)?;
            connect(fd, t)?;
            send(fd)
        }
        "udp-connect" => {
            let fd = socket(t.family, libc::SOCK_DGRAM)?;
            connect(fd, t)?;
            send(fd)
        }
        "udp-sendto" => {
            let fd = socket(t.family, libc::SOCK_DGRAM)?;
            // SAFETY: valid buffer and address.
            check(unsafe {
                libc::sendto(fd, PAYLOAD.as_ptr().cast(), PAYLOAD.len(), 0, sa(t), t.len)
            })
            .map(drop)
        }
        "udp-sendmsg" => {
            let fd = socket(t.family, libc::SOCK_DGRAM)?;
            let mut v = iov();
            let m = msghdr(Some(t), &mut v);
            // SAFETY: m points at live buffers.
            check(unsafe { libc::sendmsg(fd, &m, 0) }).map(drop)
        }
        "udp-sendmmsg" => {
            let fd = socket(t.family, libc::SOCK_DGRAM)?;
            let (mut v1, mut v2) = (iov(), iov());
            let mut msgs = [
                libc::mmsghdr {
                    msg_hdr: msghdr(Some(t), &mut v1),
                    msg_len: 0,
                },
                libc::mmsghdr {
                    msg_hdr: msghdr(Some(t), &mut v2),
                    msg_len: 0,
                },
            ];
            // SAFETY: msgs points at live buffers.
            let n = check(unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), 2, 0) } as isize)?;
            if n == 0 {
                return Err(io::Error::other("sendmmsg sent nothing"));
            }
            Ok(())
        }
        "udp-cmsg" => {
            let fd = socket(t.family, libc::SOCK_DGRAM)?;
            connect(fd, t)?;
            let (level, ty) = if t.family == libc::AF_INET {
                (libc::IPPROTO_IP, libc::IP_TOS)
            } else {
                (libc::IPPROTO_IPV6, libc::IPV6_TCLASS)
            };
            // SAFETY: CMSG_SPACE is a pure computation.
            let space = unsafe { libc::CMSG_SPACE(size_of::<c_int>() as u32) } as usize;
            let mut control = vec![0u8; space];
            let mut v = iov();
            let mut m = msghdr(None, &mut v);
            m.msg_control = control.as_mut_ptr().cast();
            m.msg_controllen = space;
            // SAFETY: m.msg_control has room for one int-sized cmsg.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&m);
                (*c).cmsg_level = level;
                (*c).cmsg_type = ty;
                (*c).cmsg_len = libc::CMSG_LEN(size_of::<c_int>() as u32) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<c_int>(), 0x10);
            }
            // SAFETY: m points at live buffers.
            check(unsafe { libc::sendmsg(fd, &m, 0) }).map(drop)
        }
        "udp-v4-on-v6" => {
            let fd = socket(libc::AF_INET6, libc::SOCK_DGRAM)?;
            connect(fd, t)?;
            send(fd)
        }
        "tfo-sendto" => {
            let fd = socket(t.family, libc::SOCK_STREAM)?;
            // SAFETY: valid buffer and address.
            check(unsafe {
                libc::sendto(
                    fd,
                    PAYLOAD.as_ptr().cast(),
                    PAYLOAD.len(),
                    libc::MSG_FASTOPEN,
                    sa(t),
                    t.len,
                )
            })
            .map(drop)
        }
        "tfo-connect" => {
            let fd = socket(t.family, libc::SOCK_STREAM)?;
            let one: c_int = 1;
            // SAFETY: valid option buffer.
            check(unsafe {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_FASTOPEN_CONNECT,
                    (&one as *const c_int).cast(),
                    size_of::<c_int>() as socklen_t,
                )
            } as isize)?;
            connect(fd, t)?;
            send(fd)
        }
        "uring-connect" => {
            let fd = socket(t.family, libc::SOCK_STREAM)?;
            let op = io_uring::opcode::Connect::new(io_uring::types::Fd(fd), sa(t), t.len).build();
            uring(op)
        }
        "uring-sendmsg" => {
            let fd = socket(t.family, libc::SOCK_DGRAM)?;
            let mut v = iov();
            let m = msghdr(Some(t), &mut v);
            let op = io_uring::opcode::SendMsg::new(io_uring::types::Fd(fd), &m).build();
            uring(op)
        }
        _ => Err(io::Error::other(format!("unknown mode {mode}"))),
    }
}

/// Submits one io_uring operation and returns its result.
fn uring(op: io_uring::squeue::Entry) -> io::Result<()> {
    let mut ring = io_uring::IoUring::new(4)?;
    // SAFETY: the operation's buffers outlive the wait below.
    unsafe { ring.submission().push(&op) }.map_err(io::Error::other)?;
    ring.submit_and_wait(1)?;
    let cqe = ring
        .completion()
        .next()
        .ok_or_else(|| io::Error::other("no completion"))?;
    if cqe.result() < 0 {
        return Err(io::Error::from_raw_os_error(-cqe.result()));
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: probe MODE ADDR [--mapped]");
        return ExitCode::from(2);
    }
    let addr: SocketAddr = match args[1].parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("probe: bad address {}: {e}", args[1]);
            return ExitCode::from(2);
        }
    };
    let mapped = args.iter().any(|a| a == "--mapped");
    let count: u32 = args
        .iter()
        .position(|a| a == "--count")
        .and_then(|i| args.get(i + 1))
        .map_or(1, |n| n.parse().expect("--count N"));
    let t = target(addr, mapped);
    let via = args
        .iter()
        .position(|a| a == "--via")
        .and_then(|i| args.get(i + 1))
        .map(|v| target(v.parse().expect("--via IP:PORT"), mapped));
    let mut result = Ok(());
    for _ in 0..count {
        result = run(&args[0], &t, via.as_ref());
        close_opened();
    }
    match result {
        Ok(()) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("error: {}", e.raw_os_error().unwrap_or(0));
            eprintln!("probe {} {}: {e}", args[0], args[1]);
            ExitCode::FAILURE
        }
    }
}
